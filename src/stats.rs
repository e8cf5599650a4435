//! Pure statistics: no I/O, no async, no knowledge of tests or gRPC. Distributions come from
//! statrs; this module writes only the tests and intervals themselves, each citing its formula.

use statrs::distribution::{ContinuousCDF, StudentsT};

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

/// Two-sided Student t confidence interval of a mean at level `1 − alpha`:
/// `mean ± t_{1−alpha/2, n−1} · s/√n` (e.g. NIST/SEMATECH e-Handbook §7.2.2.1).
/// `None` below two observations, where the interval is undefined.
pub fn mean_confidence_interval(s: Summary, alpha: f64) -> Option<(f64, f64)> {
    if s.n < 2 || !(alpha > 0.0 && alpha < 1.0) {
        return None;
    }
    let df = (s.n - 1) as f64;
    let t = StudentsT::new(0.0, 1.0, df)
        .ok()?
        .inverse_cdf(1.0 - alpha / 2.0);
    let half = t * s.std / (s.n as f64).sqrt();
    Some((s.mean - half, s.mean + half))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from scipy 1.17.1:
    /// `scipy.stats.t.interval(1-alpha, n-1, loc=mean, scale=std/sqrt(n))`.
    #[test]
    fn student_interval_matches_scipy() {
        let cases = [
            // (n, mean, std, alpha, low, high)
            (
                10,
                0.01,
                0.02,
                0.05,
                -0.004307138119413_f64,
                0.024307138119413_f64,
            ),
            (2, 1.0, 1.0, 0.05, -7.984643532093752, 9.984643532093752),
            (
                1000,
                -0.002,
                0.05,
                0.01,
                -0.006080539273598,
                0.002080539273598,
            ),
        ];
        for (n, mean, std, alpha, low, high) in cases {
            let (l, h) =
                mean_confidence_interval(Summary { n, mean, std }, alpha).expect("defined");
            assert!(
                (l - low).abs() <= 1e-9 * low.abs().max(1e-12),
                "n={n}: {l} vs {low}"
            );
            assert!(
                (h - high).abs() <= 1e-9 * high.abs().max(1e-12),
                "n={n}: {h} vs {high}"
            );
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
