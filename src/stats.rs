//! Pure statistics: no I/O, no async, no knowledge of tests or gRPC. Distributions (Student t,
//! normal, χ²) come from statrs; this module writes only the tests and intervals themselves, each
//! citing its formula. Reference values in the tests come from scipy 1.17.1 / statsmodels 0.15
//! (the generating script is quoted next to them) and must match to 1e-9 relative.

pub mod drift;
mod holm;
mod pbest;
mod power;
mod sequential;
mod srm;
#[cfg(test)]
mod totality_tests;
mod welch;

use statrs::distribution::{ContinuousCDF, StudentsT};

pub use holm::holm_adjust;
pub use pbest::{probability_best, Posterior};
pub use power::{sample_size_per_arm, SampleSizeError};
pub use sequential::{always_valid_p_value, mixture_log_likelihood_ratio};
pub use srm::chi_square_goodness_of_fit;
pub use welch::{cohens_d, degenerate as welch_degenerate, welch_t_test, Welch};

/// Summary of a sample: size, mean and sample standard deviation (n − 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Sample size.
    pub n: u64,
    /// Sample mean.
    pub mean: f64,
    /// Sample standard deviation with Bessel's correction.
    pub std: f64,
}

/// Confidence interval of a Sharpe ratio (mean over standard deviation of single returns) at
/// level `1 − alpha`, for independent, identically distributed returns: `SR ± z_{1−alpha/2} ·
/// √((1 + SR²/2)/n)` (Lo 2002, "The Statistics of Sharpe Ratios", Financial Analysts Journal
/// 58(4), eq. 9). `None` below two observations or for inputs that are not finite.
pub fn sharpe_confidence_interval(n: u64, sharpe: f64, alpha: f64) -> Option<(f64, f64)> {
    if n < 2 || !sharpe.is_finite() || !(alpha > 0.0 && alpha < 1.0) {
        return None;
    }
    let z = statrs::distribution::Normal::standard().inverse_cdf(1.0 - alpha / 2.0);
    let half = z * ((1.0 + sharpe * sharpe / 2.0) / n as f64).sqrt();
    all_finite(&[half]).then_some((sharpe - half, sharpe + half))
}

/// Two-sided Student t confidence interval of a mean at level `1 − alpha`:
/// `mean ± t_{1−alpha/2, n−1} · s/√n` (e.g. NIST/SEMATECH e-Handbook §7.2.2.1).
/// `None` below two observations, where the interval is undefined, and for inputs that are not
/// finite numbers (no figure is better than a wrong one).
pub fn mean_confidence_interval(s: Summary, alpha: f64) -> Option<(f64, f64)> {
    if s.n < 2 || !(alpha > 0.0 && alpha < 1.0) || !all_finite(&[s.mean, s.std]) || s.std < 0.0 {
        return None;
    }
    let df = (s.n - 1) as f64;
    let t = t_quantile(df, 1.0 - alpha / 2.0)?;
    let half = t * s.std / (s.n as f64).sqrt();
    finite_pair(s.mean - half, s.mean + half)
}

/// Degrees of freedom from which [`t_quantile`] uses its expansion instead of statrs, whose
/// inverse of the regularized incomplete beta function fails to converge (runs for minutes,
/// holding the caller) for millions of degrees of freedom.
const LARGE_DF: f64 = 1e4;

/// The `p` quantile of Student's t distribution with `df` degrees of freedom (`0 < p < 1`).
/// From [`LARGE_DF`] on: the Cornish–Fisher expansion around the normal quantile `z`,
/// `z + (z³+z)/(4ν) + (5z⁵+16z³+3z)/(96ν²) + (3z⁷+19z⁵+17z³−15z)/(384ν³)` (Abramowitz and
/// Stegun 1964, eq. 26.7.5), whose next term is below 1e-14 there.
pub(crate) fn t_quantile(df: f64, p: f64) -> Option<f64> {
    if !(df > 0.0 && p > 0.0 && p < 1.0 && all_finite(&[df, p])) {
        return None;
    }
    if df < LARGE_DF {
        return Some(StudentsT::new(0.0, 1.0, df).ok()?.inverse_cdf(p));
    }
    let z = statrs::distribution::Normal::standard().inverse_cdf(p);
    let (z2, v) = (z * z, df);
    let t = z
        + (z2 * z + z) / (4.0 * v)
        + (5.0 * z2 * z2 * z + 16.0 * z2 * z + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z2 * z2 * z2 * z + 19.0 * z2 * z2 * z + 17.0 * z2 * z - 15.0 * z)
            / (384.0 * v * v * v);
    t.is_finite().then_some(t)
}

/// Whether every value is a finite number. Every function of this module checks its inputs with
/// it before they reach statrs, whose special functions panic on NaN.
pub(crate) fn all_finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// `Some((low, high))` when both ends are finite.
pub(crate) fn finite_pair(low: f64, high: f64) -> Option<(f64, f64)> {
    all_finite(&[low, high]).then_some((low, high))
}

/// Asserts `actual` is within `rel` relative error of `expected` (absolute below 1e-300).
#[cfg(test)]
pub(crate) fn assert_close(actual: f64, expected: f64, rel: f64, what: &str) {
    let tolerance = rel * expected.abs().max(1e-300);
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual:e} vs reference {expected:e} (relative error {:e})",
        ((actual - expected) / expected).abs()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Student t quantiles for millions of degrees of freedom come back at once and agree with
    /// statrs where statrs still converges: at the switch the two differ by under 1e-9, and
    /// t_{0.975} is within 1e-12 of the expansion's own terms summed by hand
    /// (z = 1.959963984540054: z + (z³+z)/4ν + (5z⁵+16z³+3z)/96ν² for ν = 10⁴ is 1.9602012...).
    #[test]
    fn t_quantiles_for_huge_samples_are_fast_and_continuous() {
        let below = StudentsT::new(0.0, 1.0, LARGE_DF - 1e-6)
            .expect("t")
            .inverse_cdf(0.975);
        let at = t_quantile(LARGE_DF, 0.975).expect("quantile");
        assert!((below - at).abs() < 1e-9, "{below} vs {at}");
        assert!((at - 1.960_201_2).abs() < 1e-6, "{at}");
        let z = 1.959_963_984_540_054;
        // 14876351.49780253: statrs did not return from it.
        for df in [1e5, 1.3e6, 14_876_351.497_802_53, 1e9] {
            let t = t_quantile(df, 0.975).expect("quantile");
            let first = z + (z * z * z + z) / (4.0 * df);
            assert!((t - first).abs() < 1e-8 && t > z, "{df}: {t}");
        }
        assert_eq!(t_quantile(0.0, 0.975), None);
        assert_eq!(t_quantile(10.0, 1.0), None);
    }

    /// Lo (2002) eq. 9 by hand: n = 100, SR = 0.5, α = 0.05 (z = 1.959963984540054, from
    /// `scipy.stats.norm.ppf(0.975)`): SE = √(1.125/100), interval SR ± z·SE.
    #[test]
    fn sharpe_interval_matches_lo_2002() {
        let (low, high) = sharpe_confidence_interval(100, 0.5, 0.05).expect("interval");
        assert!((low - 0.292_114_426_347_548_36).abs() < 1e-12, "{low}");
        assert!((high - 0.707_885_573_652_451_6).abs() < 1e-12, "{high}");
        assert_eq!(sharpe_confidence_interval(1, 0.5, 0.05), None);
        assert_eq!(sharpe_confidence_interval(100, f64::NAN, 0.05), None);
    }

    /// `scipy.stats.t.interval(1 - alpha, n - 1, loc=mean, scale=std / sqrt(n))`, from
    /// `tests/data/stats_references.py` (seed 20261127).
    #[test]
    fn student_interval_matches_scipy() {
        let cases: [(u64, f64, f64, f64, f64, f64); 10] = [
            (
                650,
                0.012755041759647527,
                0.0485595984763514,
                0.05,
                0.009014993766600202,
                0.016495089752694852,
            ),
            (
                1262,
                -0.006767276156525366,
                0.046052988044457496,
                0.01,
                -0.010111559216187296,
                -0.0034229930968634357,
            ),
            (
                532,
                0.00024215861323473393,
                0.015203349193583848,
                0.1,
                -0.0008439394849117223,
                0.0013282567113811897,
            ),
            (
                238,
                0.0035150711657897294,
                0.03993525236939645,
                0.2,
                0.00018835067610233286,
                0.0068417916554771255,
            ),
            (
                6,
                0.007701505847395511,
                0.09061686852245807,
                0.001,
                -0.24640511415167574,
                0.2618081258464729,
            ),
            (
                1101,
                0.010854954259585917,
                0.07293086811968578,
                0.05,
                0.006542307011262868,
                0.015167601507908966,
            ),
            (
                750,
                -0.007207869055337171,
                0.025251978223359874,
                0.01,
                -0.009589035970541128,
                -0.0048267021401332145,
            ),
            (
                46,
                -0.002199029202311974,
                0.016199165454050334,
                0.1,
                -0.006210235125546007,
                0.0018121767209220573,
            ),
            (
                1065,
                0.007427225198880283,
                0.043958871230097056,
                0.2,
                0.005699886366904468,
                0.009154564030856098,
            ),
            (
                1796,
                0.009312441176105133,
                0.0786390957500928,
                0.001,
                0.0031964526800100394,
                0.015428429672200285,
            ),
        ];
        for (n, mean, std, alpha, low, high) in cases {
            let (l, h) =
                mean_confidence_interval(Summary { n, mean, std }, alpha).expect("defined");
            assert_close(l, low, 1e-9, "low");
            assert_close(h, high, 1e-9, "high");
        }
        assert_eq!(
            mean_confidence_interval(
                Summary {
                    n: 1,
                    mean: 0.0,
                    std: 0.0
                },
                0.05
            ),
            None
        );
    }
}
