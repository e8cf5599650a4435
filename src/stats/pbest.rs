//! P(arm is best) under independent posteriors of each arm's mean reward. Arms with identical
//! posteriors have exactly equal probabilities.
//!
//! - Beta(α, β): the posterior of a success rate.
//! - Normal-Inverse-Gamma(μ, κ, α, β): `σ² ~ InvGamma(α, β)`, `mean | σ² ~ N(μ, σ²/κ)` (Murphy
//!   2007, "Conjugate Bayesian analysis of the Gaussian distribution", §3); the mean's marginal is
//!   t_{2α}(μ, β/(ακ)) (eq. 110), and a draw of it is `μ + z·√(β / (g·κ))` with `z ~ N(0, 1)`,
//!   `g ~ Gamma(α, 1)`.
//!
//! Three methods, in order:
//!
//! 1. Numerical integration ([`quadrature`]): deterministic, within 3·10⁻⁵ of exact integrals,
//!    microseconds per refresh. It declines what it cannot integrate to its tolerance: a shape
//!    below 1 or between 1 and 2, a Student t with fewer than 8 degrees of freedom (under six
//!    results per arm), or arms so different in spread that the grid would be too fine.
//! 2. Once every posterior has shape parameters of at least [`NORMAL_APPROXIMATION_MIN_SHAPE`]
//!    (about 1000 results per arm), each is replaced by the normal with its mean and spread: Beta
//!    by its mean and standard deviation, NIG by the location and scale of the t. Two arms need no
//!    draws (P(X₀ > X₁) = Φ((m₀ − m₁)/√(s₀² + s₁²))); more arms draw one normal per arm. The
//!    approximation ignores skew: against exact integrals (tests/data/pbest_references.py) it is
//!    off by 4·10⁻⁵ for two arms near 12% ("beta_2") and by 1.2·10⁻³ for three near 10%
//!    ("beta_3").
//! 3. Seeded Monte Carlo over the exact posteriors: `draws` joint draws, counting how often each
//!    arm's draw is the largest; the standard error of each probability is at most `0.5/√draws`
//!    (0.78 points for 4096 draws), and estimates of identical posteriors are averaged.

mod quadrature;

use rand::Rng;
use rand_distr::{Beta, Distribution, Gamma, StandardNormal};

/// The posterior of one arm's mean reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Posterior {
    /// Beta(alpha, beta), both > 0.
    Beta {
        /// First shape.
        alpha: f64,
        /// Second shape.
        beta: f64,
    },
    /// Normal-Inverse-Gamma; kappa, alpha, beta > 0.
    NormalInverseGamma {
        /// Location of the mean.
        mu: f64,
        /// Pseudo-observations behind the mean.
        kappa: f64,
        /// Shape of the variance.
        alpha: f64,
        /// Scale of the variance.
        beta: f64,
    },
}

enum Sampler {
    /// Beta(α, β) with both shapes ≥ 1 (every posterior from the uniform prior), drawn as
    /// `X / (X + Y)` with `X ~ Gamma(α, 1)`, `Y ~ Gamma(β, 1)` independent (Devroye 1986,
    /// "Non-Uniform Random Variate Generation", §IX.4.1). Two Marsaglia–Tsang gamma draws
    /// rarely take a logarithm; rand_distr's `Beta` (Cheng 1978) takes a logarithm and an
    /// exponential on every try, and drawing was 3/4 of a refresh's time.
    GammaRatio { alpha: Gamma<f64>, beta: Gamma<f64> },
    /// A shape below 1: both gamma draws could underflow to zero.
    Beta(Beta<f64>),
    Nig {
        mu: f64,
        kappa: f64,
        shape: Gamma<f64>,
        beta: f64,
    },
    /// Invalid parameters: never the best.
    Never,
}

impl Sampler {
    fn new(p: &Posterior) -> Self {
        match *p {
            Posterior::Beta { alpha, beta } if alpha >= 1.0 && beta >= 1.0 => {
                match (Gamma::new(alpha, 1.0), Gamma::new(beta, 1.0)) {
                    (Ok(alpha), Ok(beta)) => Self::GammaRatio { alpha, beta },
                    _ => Self::Never,
                }
            }
            Posterior::Beta { alpha, beta } => {
                Beta::new(alpha, beta).map_or(Self::Never, Self::Beta)
            }
            Posterior::NormalInverseGamma {
                mu,
                kappa,
                alpha,
                beta,
            } => match Gamma::new(alpha, 1.0) {
                Ok(shape) if kappa > 0.0 && beta > 0.0 && mu.is_finite() => Self::Nig {
                    mu,
                    kappa,
                    shape,
                    beta,
                },
                _ => Self::Never,
            },
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> f64 {
        match self {
            Self::GammaRatio { alpha, beta } => {
                let x = alpha.sample(rng);
                x / (x + beta.sample(rng))
            }
            Self::Beta(b) => b.sample(rng),
            Self::Nig {
                mu,
                kappa,
                shape,
                beta,
            } => {
                let variance = beta / shape.sample(rng).max(f64::MIN_POSITIVE);
                let z: f64 = StandardNormal.sample(rng);
                mu + z * (variance / kappa).sqrt()
            }
            Self::Never => f64::NEG_INFINITY,
        }
    }
}

/// Shape parameters (Beta: min(α, β); NIG: α) from which a posterior counts as normal.
pub(super) const NORMAL_APPROXIMATION_MIN_SHAPE: f64 = 500.0;

/// Mean and standard deviation of Beta(α, β).
fn beta_mean_sd(alpha: f64, beta: f64) -> (f64, f64) {
    let n = alpha + beta;
    (alpha / n, (alpha * beta / (n * n * (n + 1.0))).sqrt())
}

/// Scale of the t_{2α}(μ, β/(ακ)) marginal of a Normal-Inverse-Gamma mean (Murphy 2007, eq. 110).
fn nig_mean_scale(kappa: f64, alpha: f64, beta: f64) -> f64 {
    (beta / (alpha * kappa)).sqrt()
}

/// The normal (mean, standard deviation) standing in for a concentrated posterior.
fn normal_form(posterior: &Posterior) -> Option<(f64, f64)> {
    match *posterior {
        Posterior::Beta { alpha, beta } if alpha.min(beta) >= NORMAL_APPROXIMATION_MIN_SHAPE => {
            Some(beta_mean_sd(alpha, beta))
        }
        Posterior::NormalInverseGamma {
            mu,
            kappa,
            alpha,
            beta,
        } if alpha >= NORMAL_APPROXIMATION_MIN_SHAPE
            && kappa > 0.0
            && beta > 0.0
            && mu.is_finite() =>
        {
            Some((mu, nig_mean_scale(kappa, alpha, beta)))
        }
        _ => None,
    }
}

/// Standard normal CDF.
fn phi(x: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-x / std::f64::consts::SQRT_2)
}

/// P(arm i has the largest mean) for each posterior; sums to 1.
pub fn probability_best(posteriors: &[Posterior], draws: usize, rng: &mut impl Rng) -> Vec<f64> {
    // Identical posteriors (every new test) are equally likely best, by symmetry: no draws.
    if posteriors.windows(2).all(|w| w[0] == w[1]) {
        return vec![1.0 / posteriors.len().max(1) as f64; posteriors.len()];
    }
    // Identical posteriors get exactly equal shares: quadrature's products are taken in
    // different orders for different arms, and draws are noisy.
    let mut p = quadrature::probability_best(posteriors)
        .filter(|p| is_distribution(p))
        .unwrap_or_else(|| drawn_or_approximated(posteriors, draws, rng));
    if !is_distribution(&p) {
        // Parameters that are not numbers (statistics of overflowing returns) defeat the normal
        // approximation; the draws treat such an arm as never best and always give fractions.
        p = exact_draws(posteriors, draws, rng);
    }
    symmetrize(posteriors, &mut p);
    p
}

/// Whether `p` holds finite non-negative shares summing to 1 (up to rounding).
fn is_distribution(p: &[f64]) -> bool {
    p.iter().all(|x| x.is_finite() && *x >= 0.0) && (p.iter().sum::<f64>() - 1.0).abs() < 1e-6
}

/// Methods 2 and 3 of the module documentation, for what quadrature declines.
fn drawn_or_approximated(posteriors: &[Posterior], draws: usize, rng: &mut impl Rng) -> Vec<f64> {
    let normals: Option<Vec<(f64, f64)>> = posteriors.iter().map(normal_form).collect();
    match normals {
        Some(n) if n.len() == 2 => {
            let first = phi((n[0].0 - n[1].0) / n[0].1.hypot(n[1].1));
            vec![first, 1.0 - first]
        }
        Some(n) => monte_carlo(n.len(), draws, rng, |i, rng| {
            let z: f64 = StandardNormal.sample(rng);
            n[i].0 + n[i].1 * z
        }),
        None => exact_draws(posteriors, draws, rng),
    }
}

/// Monte Carlo over the exact posteriors.
fn exact_draws(posteriors: &[Posterior], draws: usize, rng: &mut impl Rng) -> Vec<f64> {
    let samplers: Vec<Sampler> = posteriors.iter().map(Sampler::new).collect();
    monte_carlo(samplers.len(), draws, rng, |i, rng| samplers[i].sample(rng))
}

/// Fraction of `draws` joint draws in which each of `arms` arms drew the largest value.
fn monte_carlo<R: Rng>(
    arms: usize,
    draws: usize,
    rng: &mut R,
    mut sample: impl FnMut(usize, &mut R) -> f64,
) -> Vec<f64> {
    let draws = draws.max(1);
    let mut wins = vec![0u32; arms];
    for _ in 0..draws {
        let mut best = 0;
        let mut best_value = f64::NEG_INFINITY;
        let mut ties = 0u32;
        for i in 0..arms {
            let v = sample(i, rng);
            if v > best_value {
                (best, best_value, ties) = (i, v, 1);
            } else if v == best_value {
                // Reservoir choice among exact ties: each tied arm is equally likely.
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        wins[best] += 1;
    }
    wins.iter().map(|&w| f64::from(w) / draws as f64).collect()
}

fn symmetrize(posteriors: &[Posterior], p: &mut [f64]) {
    let mut done = vec![false; posteriors.len()];
    for i in 0..posteriors.len() {
        if done[i] {
            continue;
        }
        let group: Vec<usize> = (i..posteriors.len())
            .filter(|&j| posteriors[j] == posteriors[i])
            .collect();
        let mean = group.iter().map(|&j| p[j]).sum::<f64>() / group.len() as f64;
        for j in group {
            p[j] = mean;
            done[j] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    #[test]
    fn beta_matches_the_closed_form() {
        // P(Beta(3, 2) > Beta(2, 3)) = 0.7571429 exactly (Miller 2015, "Formulas for Bayesian A/B
        // testing"; evaluated with scipy.special.betaln). One draw allowed: integrated, not drawn.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let p = probability_best(
            &[
                Posterior::Beta {
                    alpha: 3.0,
                    beta: 2.0,
                },
                Posterior::Beta {
                    alpha: 2.0,
                    beta: 3.0,
                },
            ],
            1,
            &mut rng,
        );
        assert!((p[0] - 0.7571429).abs() < 1e-4, "{p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn normal_inverse_gamma_matches_the_student_t_integral() {
        // Two NIG posteriors with κ = 100, α = 50, β = 0.5, means 0.01 and 0.0: each mean is
        // t_{100}(μ, 0.01). tests/data/pbest_references.py ("nig_100"): 0.7587410360.
        let nig = |mu| Posterior::NormalInverseGamma {
            mu,
            kappa: 100.0,
            alpha: 50.0,
            beta: 0.5,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
        let p = probability_best(&[nig(0.01), nig(0.0)], 1, &mut rng);
        assert!((p[0] - 0.7587410360).abs() < 1e-4, "{p:?}");
    }

    #[test]
    fn samplers_match_exact_integrals() {
        // tests/data/pbest_references.py ("beta_small_4": the gamma-ratio sampler; "beta_below_1":
        // rand_distr's Beta), drawn even where quadrature would answer. 65536 draws: sd ≤ 0.0020
        // per probability; 5 sd allowed.
        let beta = |alpha, beta| Posterior::Beta { alpha, beta };
        let cases = [
            (
                vec![
                    beta(11.0, 51.0),
                    beta(15.0, 47.0),
                    beta(9.0, 53.0),
                    beta(13.0, 49.0),
                ],
                vec![0.1095701334, 0.5799675166, 0.0334181403, 0.2770442098],
            ),
            (
                vec![beta(0.7, 1.5), beta(1.2, 3.0)],
                vec![0.5094123296, 0.4905876704],
            ),
        ];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        for (posteriors, exact) in cases {
            let p = exact_draws(&posteriors, 65536, &mut rng);
            for (got, want) in p.iter().zip(&exact) {
                assert!((got - want).abs() < 0.01, "{p:?} vs {exact:?}");
            }
        }
    }

    #[test]
    fn normal_approximation_matches_exact_integrals() {
        // References: tests/data/pbest_references.py (scipy numerical integration of the exact
        // Beta and Student-t posteriors). Two arms are computed without draws; the approximation
        // is off by 4e-5 ("beta_2"); 3e-4 allowed.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(10);
        let beta = |alpha, beta| Posterior::Beta { alpha, beta };
        let p = drawn_or_approximated(&[beta(1000.0, 9000.0), beta(1050.0, 8950.0)], 1, &mut rng);
        assert!((p[0] - 0.1218187619).abs() < 3e-4, "{p:?}");
        assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
        let nig = |mu, kappa| Posterior::NormalInverseGamma {
            mu,
            kappa,
            alpha: 1000.0,
            beta: 1.0,
        };
        let p = drawn_or_approximated(
            &[nig(0.011, 2000.0), nig(0.010, 2000.0 / 1.69)],
            1,
            &mut rng,
        );
        assert!((p[0] - 0.8056451632).abs() < 3e-4, "{p:?}");
        // Three arms: normal draws. 16384 draws: sd ≤ 0.0037; 5 sd allowed, plus the
        // approximation's 1.2e-3 here.
        let p = drawn_or_approximated(
            &[
                beta(600.0, 5400.0),
                beta(640.0, 5360.0),
                beta(620.0, 5380.0),
            ],
            16384,
            &mut rng,
        );
        for (got, want) in p.iter().zip([0.0699244689, 0.6789880854, 0.2510874457]) {
            assert!((got - want).abs() < 0.02, "{p:?}");
        }
    }

    #[test]
    fn what_quadrature_declines_is_approximated_once_concentrated() {
        // Beta(500, 500) beside Beta(10⁶, 10⁶): the grid would need ~8600 intervals, so quadrature
        // declines and the normal closed form answers, with one draw. Same means: 1/2 each.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
        let wide = Posterior::Beta {
            alpha: 500.0,
            beta: 500.0,
        };
        let sharp = Posterior::Beta {
            alpha: 1e6,
            beta: 1e6,
        };
        assert!(quadrature::probability_best(&[wide, sharp]).is_none());
        let p = probability_best(&[wide, sharp], 1, &mut rng);
        assert!(
            (p[0] - 0.5).abs() < 1e-12 && (p[1] - 0.5).abs() < 1e-12,
            "{p:?}"
        );
    }

    #[test]
    fn the_normal_path_starts_where_the_drawn_one_agrees_with_it() {
        // Just below and at the threshold the two methods estimate the same probability.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let below = NORMAL_APPROXIMATION_MIN_SHAPE - 1.0;
        let at = NORMAL_APPROXIMATION_MIN_SHAPE;
        let pair = |a: f64| {
            [
                Posterior::Beta {
                    alpha: a,
                    beta: 4.0 * a,
                },
                Posterior::Beta {
                    alpha: a * 1.04,
                    beta: 4.0 * a,
                },
            ]
        };
        let exact = drawn_or_approximated(&pair(below), 16384, &mut rng);
        let normal = drawn_or_approximated(&pair(at), 1, &mut rng);
        // sd of the Monte Carlo estimate ≤ 0.0039; 5 sd (the posteriors differ by one pseudo-count).
        assert!(
            (exact[0] - normal[0]).abs() < 0.02,
            "{exact:?} vs {normal:?}"
        );
    }

    #[test]
    fn identical_arms_among_others_get_exactly_equal_shares_in_any_order() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
        let (a, b, c) = (
            Posterior::Beta {
                alpha: 4.0,
                beta: 3.0,
            },
            Posterior::Beta {
                alpha: 2.0,
                beta: 5.0,
            },
            Posterior::Beta {
                alpha: 6.0,
                beta: 2.0,
            },
        );
        let p = probability_best(&[a, b, a, c], 1, &mut rng);
        assert_eq!(p[0], p[2], "{p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // Reordering the arms reorders the answer (up to rounding).
        let q = probability_best(&[c, a, b, a], 1, &mut rng);
        for (x, y) in [(p[0], q[1]), (p[1], q[2]), (p[3], q[0])] {
            assert!((x - y).abs() < 1e-12, "{p:?} vs {q:?}");
        }
    }

    #[test]
    fn identical_posteriors_split_exactly_and_invalid_ones_never_win() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let same = Posterior::Beta {
            alpha: 1.0,
            beta: 1.0,
        };
        let p = probability_best(&[same, same, same, same], 4096, &mut rng);
        assert!(p.iter().all(|&x| (x - 0.25).abs() < 1e-12), "{p:?}");
        let p = probability_best(
            &[
                same,
                Posterior::Beta {
                    alpha: 0.0,
                    beta: 1.0,
                },
            ],
            1000,
            &mut rng,
        );
        assert_eq!(p, vec![1.0, 0.0]);
    }
}
