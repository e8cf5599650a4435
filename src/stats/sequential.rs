//! An always-valid test for the difference of two means: the mixture sequential probability ratio
//! test (mSPRT) of Johari, Koomen, Pekelis & Walsh (2017), "Peeking at A/B Tests: Why it matters,
//! and what to do about it" (KDD '17, §4; Operations Research 70(3), 2022).
//!
//! With an estimate `d` of the difference whose variance is `V` (here `s₁²/n₁ + s₂²/n₂`, plugged
//! in from the data) and a normal mixing distribution `θ ~ N(0, τ²)` over the alternative, the
//! mixture likelihood ratio against `θ = 0` has the closed form
//!
//! `Λ = √(V / (V + τ²)) · exp(τ²·d² / (2V·(V + τ²)))`,
//!
//! which for equal group sizes `n` and common variance `σ²` (`V = 2σ²/n`) is the paper's eq. (11).
//! `Λ` is a non-negative martingale under the null, so by Ville's inequality
//! `P(sup Λ ≥ 1/α) ≤ α`: the always-valid p-value `p_n = min(p_{n−1}, 1/Λ_n)` may be monitored
//! after every batch and the test stopped the first time `p_n ≤ α` without inflating the
//! false-positive rate (asymptotically, with plug-in variances).

/// `ln Λ` for the observed `difference` with sampling variance `variance` and mixing variance
/// `tau2` (both > 0). Inputs outside that domain, or not finite, carry no evidence: `ln Λ = 0`.
pub fn mixture_log_likelihood_ratio(difference: f64, variance: f64, tau2: f64) -> f64 {
    if !super::all_finite(&[difference, variance, tau2]) || variance <= 0.0 || tau2 <= 0.0 {
        return 0.0;
    }
    let total = variance + tau2;
    let log_lr =
        0.5 * (variance / total).ln() + tau2 * difference * difference / (2.0 * variance * total);
    if log_lr.is_nan() {
        0.0
    } else {
        log_lr
    }
}

/// The always-valid p-value after one more look: `min(previous, 1/Λ)`, within [0, 1]. A previous
/// value that is not a number counts as 1 (no evidence yet).
pub fn always_valid_p_value(previous: f64, log_likelihood_ratio: f64) -> f64 {
    let previous = if previous.is_nan() { 1.0 } else { previous };
    let inverse = (-log_likelihood_ratio).exp();
    let inverse = if inverse.is_nan() { 1.0 } else { inverse };
    previous.min(inverse).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::super::assert_close;
    use super::*;

    /// Λ computed independently by numerical integration of the likelihood ratio over the mixing
    /// density (scipy 1.17.1; the whole script is `tests/data/msprt_reference.py`):
    /// ```python
    /// f = lambda th: norm.pdf(d, th, sqrt(V)) / norm.pdf(d, 0, sqrt(V)) * norm.pdf(th, 0, sqrt(tau2))
    /// quad(f, -40*sqrt(tau2), 40*sqrt(tau2), points=[0, d], limit=500, epsabs=0, epsrel=1e-13)
    /// ```
    #[test]
    fn closed_form_matches_numerical_integration() {
        let cases = [
            (0.002, 1e-06, 4e-06, 2.2150634391416135),
            (0.0005, 2.5e-07, 1e-06, 0.6671642868877901),
            (-0.01, 4e-05, 0.0001, 1.30535581477294),
            (0.0, 1e-06, 1e-06, 0.7071067811865477),
            (0.03, 0.0001, 2.5e-05, 2.1999359016867657),
            (0.001, 1e-06, 1e-08, 0.9999753299272323),
        ];
        for (d, v, tau2, lambda) in cases {
            assert_close(
                mixture_log_likelihood_ratio(d, v, tau2).exp(),
                lambda,
                1e-9,
                "lambda",
            );
        }
    }

    #[test]
    fn p_values_only_fall_and_stay_in_range() {
        let p = always_valid_p_value(1.0, mixture_log_likelihood_ratio(0.0, 1e-6, 1e-6));
        assert_eq!(p, 1.0, "Λ < 1 leaves p at 1");
        let p2 = always_valid_p_value(0.3, mixture_log_likelihood_ratio(0.01, 1e-6, 1e-6));
        assert!(p2 < 1e-10);
        assert_eq!(always_valid_p_value(0.01, 0.0), 0.01, "never rises again");
        assert_eq!(always_valid_p_value(1.0, 1e6), 0.0);
    }
}
