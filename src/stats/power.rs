//! Sample size for comparing two means (normal approximation; e.g. Chow, Shao & Wang 2008,
//! "Sample Size Calculations in Clinical Research", §3.2.1):
//! `n per arm = 2σ²·(z_{1−α/2} + z_{1−β})² / δ²`, rounded up. With K arms each compared with the
//! control, α is split Bonferroni-style over the K − 1 comparisons (conservative for Holm).

use statrs::distribution::{ContinuousCDF, Normal};

/// Why a sample size cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct SampleSizeError {
    /// The offending input.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn require(field: &'static str, ok: bool, reason: &str) -> Result<(), SampleSizeError> {
    if ok {
        Ok(())
    } else {
        Err(SampleSizeError {
            field,
            reason: reason.to_string(),
        })
    }
}

/// The unrounded per-arm sample size for a two-sided test at level `alpha` with `power`.
pub(super) fn sample_size_unrounded(
    std: f64,
    effect: f64,
    alpha: f64,
    power: f64,
) -> Result<f64, SampleSizeError> {
    require(
        "std",
        std.is_finite() && std > 0.0,
        "must be a positive number",
    )?;
    require(
        "minimum_effect_size",
        effect.is_finite() && effect > 0.0,
        "must be a positive number",
    )?;
    require(
        "significance_level",
        alpha > 0.0 && alpha < 1.0,
        "must be in (0, 1)",
    )?;
    require("power", power > 0.0 && power < 1.0, "must be in (0, 1)")?;
    let z = Normal::new(0.0, 1.0).expect("standard normal");
    let total = z.inverse_cdf(1.0 - alpha / 2.0) + z.inverse_cdf(power);
    Ok(2.0 * std * std * total * total / (effect * effect))
}

/// Results needed per arm for `arms` arms, each compared with the control.
pub fn sample_size_per_arm(
    std: f64,
    effect: f64,
    alpha: f64,
    power: f64,
    arms: u32,
) -> Result<u64, SampleSizeError> {
    require("arms", (2..=32).contains(&arms), "must be between 2 and 32")?;
    let n = sample_size_unrounded(std, effect, alpha / f64::from(arms - 1), power)?;
    require(
        "minimum_effect_size",
        n < 1e15,
        "is too small relative to std",
    )?;
    // A spread tiny against the effect needs fewer than one result in theory; a comparison needs
    // at least one per arm (and `n` may have underflowed to 0).
    Ok((n.ceil() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::super::assert_close;
    use super::*;

    /// `2 * s**2 * (norm.ppf(1 - alpha / 2) + norm.ppf(power))**2 / d**2` with
    /// `scipy.stats.norm` (`tests/data/stats_references.py`).
    #[test]
    fn sample_size_matches_scipy() {
        let cases: [(f64, f64, f64, f64, f64); 10] = [
            (
                0.028223965404627443,
                0.008272411680313754,
                0.05,
                0.8,
                182.72983168751963,
            ),
            (
                0.014452442836780363,
                0.002188635159531052,
                0.01,
                0.9,
                1297.6298203380873,
            ),
            (
                0.0322389353525735,
                0.0034102551118161133,
                0.1,
                0.95,
                1934.3370315667757,
            ),
            (
                0.028519109940036085,
                0.001023833077144517,
                0.001,
                0.5,
                16802.52167976724,
            ),
            (
                0.015067934149115596,
                0.007322256340661727,
                0.2,
                0.99,
                110.24436840932232,
            ),
            (
                0.04506967742018528,
                0.003676322124760157,
                0.05,
                0.8,
                2359.2798244071305,
            ),
            (
                0.015735898606779743,
                0.001588850812920573,
                0.01,
                0.9,
                2918.985221885127,
            ),
            (
                0.02077159314173252,
                0.008453151619946597,
                0.1,
                0.95,
                130.69133606117563,
            ),
            (
                0.021262569073743652,
                0.0008628422214156002,
                0.001,
                0.5,
                13150.114690890263,
            ),
            (
                0.007396034651378811,
                0.004145939592506609,
                0.2,
                0.99,
                82.84966917522914,
            ),
        ];
        for (std, effect, alpha, power, n) in cases {
            assert_close(
                sample_size_unrounded(std, effect, alpha, power).expect("valid"),
                n,
                1e-9,
                "n",
            );
            assert_eq!(
                sample_size_per_arm(std, effect, alpha, power, 2).expect("valid"),
                n.ceil() as u64
            );
        }
    }

    #[test]
    fn textbook_value_and_errors() {
        // d = 0.2 at α = 0.05 and 80% power: 392.4 → 393 per arm (the classic figure).
        assert_eq!(
            sample_size_per_arm(1.0, 0.2, 0.05, 0.8, 2).expect("valid"),
            393
        );
        assert!(sample_size_per_arm(1.0, 0.2, 0.05, 0.8, 3).expect("valid") > 393);
        assert_eq!(
            sample_size_per_arm(0.0, 0.2, 0.05, 0.8, 2)
                .unwrap_err()
                .field,
            "std"
        );
        assert_eq!(
            sample_size_per_arm(1.0, 0.0, 0.05, 0.8, 2)
                .unwrap_err()
                .field,
            "minimum_effect_size"
        );
        assert_eq!(
            sample_size_per_arm(1.0, 0.2, 1.0, 0.8, 2)
                .unwrap_err()
                .field,
            "significance_level"
        );
        assert_eq!(
            sample_size_per_arm(1.0, 0.2, 0.05, 1.0, 2)
                .unwrap_err()
                .field,
            "power"
        );
        assert_eq!(
            sample_size_per_arm(1.0, 0.2, 0.05, 0.8, 1)
                .unwrap_err()
                .field,
            "arms"
        );
    }
}
