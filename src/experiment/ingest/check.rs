//! Validation of one result record against its test: the value's magnitude, the attribution
//! (arm id, model version or a decision id the test issued), and the metrics.

use super::super::posterior::{ArmStats, MAX_METRICS_PER_ARM};
use super::super::state::TestState;
use super::super::types::TestConfig;
use super::super::{ExperimentError, Experiments, Result};
use super::{Attribution, CountsInput, ResultInput, MAX_METRIC_NAME_LEN, MAX_RESULT_ID_LEN};
use crate::text::shown;

impl Experiments {
    /// Validates one record against its test and returns its arm index.
    pub(super) fn check(
        &self,
        state: &TestState,
        arms: &[ArmStats],
        r: &ResultInput,
    ) -> Result<usize> {
        let bound = self.inner.limits.max_abs_value;
        if !r.return_value.is_finite() {
            return Err(ExperimentError::invalid(
                "return_value",
                format!("{} is not finite", r.return_value),
            ));
        }
        if r.return_value.abs() > bound {
            return Err(ExperimentError::invalid(
                "return_value",
                format!(
                    "{:e} exceeds the limit of {bound:e} in magnitude",
                    r.return_value
                ),
            ));
        }
        if r.result_id.len() > MAX_RESULT_ID_LEN {
            return Err(ExperimentError::invalid(
                "result_id",
                format!("is longer than {MAX_RESULT_ID_LEN} bytes"),
            ));
        }
        let arm = attributed_arm(state, r)?;
        check_metrics(&state.config, arm, &arms[arm], r, bound)?;
        Ok(arm)
    }
}

/// Most decisions one report may count (per arm): far beyond a day of decisions at any rate,
/// and small enough that no sum overflows.
const MAX_REPORTED_DECISIONS: u64 = 1 << 48;

/// Validates decisions a client reported for `state`'s test: a counts_id, one count and one
/// expected count per arm, the expected counts summing to the decisions (each table's
/// probabilities sum to 1), and no decision for an arm no table gave a probability.
pub(super) fn counts(state: &TestState, c: &CountsInput) -> Result<()> {
    let k = state.config.arms.len();
    let invalid = |field: &'static str, reason: String| ExperimentError::invalid(field, reason);
    if c.counts_id.is_empty() || c.counts_id.len() > MAX_RESULT_ID_LEN {
        return Err(invalid(
            "counts_id",
            format!("must be 1 to {MAX_RESULT_ID_LEN} bytes (it makes a resent report count once)"),
        ));
    }
    if c.counts.len() != k || c.expected.len() != k {
        return Err(invalid(
            "counts",
            format!(
                "{} counts and {} expected counts for test {} of {k} arms",
                c.counts.len(),
                c.expected.len(),
                shown(state.config.test_id.as_str())
            ),
        ));
    }
    if let Some(&n) = c.counts.iter().find(|&&n| n > MAX_REPORTED_DECISIONS) {
        return Err(invalid(
            "counts",
            format!("{n} decisions exceed the limit of {MAX_REPORTED_DECISIONS} per report"),
        ));
    }
    let decisions: u64 = c.counts.iter().sum();
    let expected: f64 = c.expected.iter().sum();
    if c.expected.iter().any(|e| !e.is_finite() || *e < 0.0)
        || (expected - decisions as f64).abs() > 1e-6 * (decisions as f64).max(1.0)
    {
        return Err(invalid(
            "expected",
            format!(
                "{:?} must be finite, non-negative and sum to the {decisions} decisions",
                c.expected
            ),
        ));
    }
    if let Some(arm) = (0..k).find(|&i| c.counts[i] > 0 && c.expected[i] == 0.0) {
        return Err(invalid(
            "counts",
            format!(
                "{} decisions for {}, which had probability 0 in every table reported",
                c.counts[arm], state.config.arms[arm].arm_id
            ),
        ));
    }
    Ok(())
}

/// Whether `r` is attributed to a decision the test issued while it was running (the only
/// results an ended test accepts while it settles).
pub(super) fn made_while_running(state: &TestState, r: &ResultInput) -> bool {
    match &r.attribution {
        Some(Attribution::Decision(id)) => state.check_decision(*id).is_some_and(|d| d.running),
        _ => false,
    }
}

/// The arm a record names.
fn attributed_arm(state: &TestState, r: &ResultInput) -> Result<usize> {
    let config = &state.config;
    let test = || shown(config.test_id.as_str());
    match &r.attribution {
        None => Err(ExperimentError::invalid(
            "attribution",
            "one of arm_id, model_registry_id or decision_id must be set",
        )),
        Some(Attribution::Arm(arm_id)) => config.arm_index(arm_id).ok_or_else(|| {
            ExperimentError::invalid(
                "arm_id",
                format!("test {} has no arm {}", test(), shown(arm_id)),
            )
        }),
        Some(Attribution::Model(model)) => config
            .arms
            .iter()
            .position(|a| a.model.as_str() == model)
            .ok_or_else(|| {
                ExperimentError::invalid(
                    "model_registry_id",
                    format!("{} is not an arm of test {}", shown(model), test()),
                )
            }),
        Some(Attribution::Decision(id)) => state
            .check_decision(*id)
            .map(|decision| decision.arm)
            .ok_or_else(|| {
                ExperimentError::invalid(
                    "decision_id",
                    format!("{id} was not issued by test {}", test()),
                )
            }),
    }
}

/// The record's metrics: finite, within `bound`, named in 1–64 bytes, and not taking the arm
/// past [`MAX_METRICS_PER_ARM`] names (a record is never kept in part).
fn check_metrics(
    config: &TestConfig,
    arm: usize,
    stats: &ArmStats,
    r: &ResultInput,
    bound: f64,
) -> Result<()> {
    let invalid = |reason: String| ExperimentError::invalid("additional_metrics", reason);
    let mut new_names = 0usize;
    for (name, value) in &r.metrics {
        if !value.is_finite() {
            return Err(invalid(format!("{} is {value}, not finite", shown(name))));
        }
        if value.abs() > bound {
            return Err(invalid(format!(
                "{} is {value:e}, beyond the limit of {bound:e} in magnitude",
                shown(name)
            )));
        }
        if name.is_empty() || name.len() > MAX_METRIC_NAME_LEN {
            return Err(invalid(format!(
                "metric name {} must be 1 to {MAX_METRIC_NAME_LEN} bytes",
                shown(name)
            )));
        }
        if !stats.metrics.contains_key(name) {
            new_names += 1;
        }
    }
    let known = stats.metrics.len();
    if known + new_names > MAX_METRICS_PER_ARM {
        return Err(invalid(format!(
            "an arm keeps at most {MAX_METRICS_PER_ARM} metric names; {} has {known} and this \
             record adds {new_names}",
            config.arms[arm].arm_id
        )));
    }
    Ok(())
}
