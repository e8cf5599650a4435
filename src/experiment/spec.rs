//! What a client asks for when it creates a test ([`TestSpec`], every setting optional) and the
//! one place that fills in the defaults and checks the invariants of a test's configuration
//! ([`TestConfig::try_from`]); the gRPC adapter only decodes the request into a spec.

use super::types::*;
use super::ExperimentError;
use crate::registry::types::RegistryId;
use crate::text::shown;

/// Default significance level.
pub const DEFAULT_SIGNIFICANCE: f64 = 0.05;

/// A test as asked for: unset settings take their defaults (see the `CreateTestRequest` message
/// of the protocol, which documents each).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TestSpec {
    /// Identifier.
    pub test_id: String,
    /// Display name (defaults to the id).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Who creates it (empty: anonymous).
    pub created_by: String,
    /// The arms' model versions, in order.
    pub model_registry_ids: Vec<String>,
    /// FIXED weights, one per arm (empty: equal).
    pub weights: Vec<f64>,
    /// Allocation strategy (default Thompson sampling).
    pub strategy: Option<Strategy>,
    /// Thompson's reward model (default Gaussian).
    pub reward_model: Option<RewardModel>,
    /// Epsilon-greedy's exploration rate.
    pub epsilon: Option<f64>,
    /// UCB's exploration constant.
    pub ucb_exploration: Option<f64>,
    /// Significance level.
    pub significance_level: Option<f64>,
    /// Results per arm before early stopping is considered.
    pub minimum_sample_size: Option<u64>,
    /// Smallest difference of mean return worth stopping for.
    pub minimum_effect_size: Option<f64>,
    /// Maximum duration in days.
    pub max_duration_days: Option<f64>,
    /// Whether the test may stop itself early.
    pub early_stopping: Option<bool>,
    /// Mean return below which an arm is suspended.
    pub stop_loss_threshold: Option<f64>,
    /// Allocation floor per arm.
    pub min_allocation_per_arm: Option<f64>,
    /// Allocation cap per arm.
    pub max_allocation_per_arm: Option<f64>,
    /// Control arm id.
    pub control_arm: Option<String>,
    /// What drift does.
    pub on_drift: Option<DriftAction>,
    /// Settlement period in seconds.
    pub settlement_period_secs: Option<u64>,
}

fn check(field: &'static str, value: f64, ok: bool, rule: &str) -> Result<f64, ExperimentError> {
    if value.is_finite() && ok {
        Ok(value)
    } else {
        Err(ExperimentError::invalid(
            field,
            format!("{value} must be {rule}"),
        ))
    }
}

fn text(field: &'static str, value: String, max: usize) -> Result<String, ExperimentError> {
    if value.len() > max {
        return Err(ExperimentError::invalid(
            field,
            format!("is longer than {max} bytes"),
        ));
    }
    Ok(value)
}

impl TryFrom<TestSpec> for TestConfig {
    type Error = ExperimentError;

    fn try_from(r: TestSpec) -> Result<Self, Self::Error> {
        let test_id = TestId::parse(&r.test_id)?;
        let k = r.model_registry_ids.len();
        if !(2..=MAX_ARMS).contains(&k) {
            return Err(ExperimentError::invalid(
                "model_registry_ids",
                format!("{k} given; a test needs 2 to {MAX_ARMS} model versions"),
            ));
        }
        let mut models: Vec<RegistryId> = Vec::with_capacity(k);
        for raw in &r.model_registry_ids {
            let id = RegistryId::parse("model_registry_ids", raw)
                .map_err(|e| ExperimentError::invalid("model_registry_ids", e.to_string()))?;
            if models.contains(&id) {
                return Err(ExperimentError::invalid(
                    "model_registry_ids",
                    format!("{} is listed twice", shown(raw)),
                ));
            }
            models.push(id);
        }
        let strategy = r.strategy.unwrap_or(Strategy::ThompsonSampling);
        let weights = if r.weights.is_empty() {
            vec![1.0 / k as f64; k]
        } else {
            if strategy != Strategy::Fixed {
                return Err(ExperimentError::invalid(
                    "weights",
                    "only FIXED tests take weights",
                ));
            }
            if r.weights.len() != k {
                return Err(ExperimentError::invalid(
                    "weights",
                    format!("{} weights for {k} models", r.weights.len()),
                ));
            }
            for &w in &r.weights {
                check("weights", w, w > 0.0, "positive")?;
            }
            let total: f64 = r.weights.iter().sum();
            let normalised: Vec<f64> = r.weights.iter().map(|w| w / total).collect();
            // [1e308, 1e308] sums to infinity and would become [0, 0].
            if !total.is_finite() || normalised.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
                return Err(ExperimentError::invalid(
                    "weights",
                    format!("{:?} cannot be normalised to shares of traffic", r.weights),
                ));
            }
            normalised
        };
        // The default floor of 0.05 would swallow all traffic beyond 10 arms; keep floors to at
        // most half of it. FIXED weights are served as given: their floor (where a stop-loss
        // holds an arm) defaults to no more than the smallest weight, their cap to 1, and limits
        // given explicitly must contain every weight.
        let fixed = strategy == Strategy::Fixed;
        let smallest = weights.iter().copied().fold(f64::INFINITY, f64::min);
        let largest = weights.iter().copied().fold(0.0, f64::max);
        let min_default = 0.05f64.min(0.5 / k as f64);
        let min = r.min_allocation_per_arm.unwrap_or(if fixed {
            min_default.min(smallest)
        } else {
            min_default
        });
        let max = r
            .max_allocation_per_arm
            .unwrap_or(if fixed { 1.0 } else { 0.8 });
        check(
            "min_allocation_per_arm",
            min,
            (0.0..=1.0).contains(&min),
            "in [0, 1]",
        )?;
        check(
            "max_allocation_per_arm",
            max,
            max > 0.0 && max <= 1.0,
            "in (0, 1]",
        )?;
        if k as f64 * min > 1.0 + 1e-12 {
            return Err(ExperimentError::invalid(
                "min_allocation_per_arm",
                format!("{k} arms × {min} exceeds 1"),
            ));
        }
        if (k as f64) * max < 1.0 - 1e-12 {
            return Err(ExperimentError::invalid(
                "max_allocation_per_arm",
                format!("{k} arms × {max} is below 1"),
            ));
        }
        if min > max {
            return Err(ExperimentError::invalid(
                "min_allocation_per_arm",
                format!("{min} exceeds max_allocation_per_arm {max}"),
            ));
        }
        if fixed && min > smallest + 1e-12 {
            return Err(ExperimentError::invalid(
                "min_allocation_per_arm",
                format!("{min} is above the smallest FIXED weight {smallest}"),
            ));
        }
        if fixed && max < largest - 1e-12 {
            return Err(ExperimentError::invalid(
                "max_allocation_per_arm",
                format!("{max} is below the largest FIXED weight {largest}"),
            ));
        }
        // Not collected from `models.into_iter()`: that would reuse its larger buffer in place,
        // and the arms live as long as the test.
        let mut arms: Vec<ArmConfig> = Vec::with_capacity(k);
        for (i, (model, weight)) in models.into_iter().zip(weights).enumerate() {
            arms.push(ArmConfig {
                arm_id: ARM_IDS[i].into(),
                model: SharedRegistryId::new(model),
                weight,
            });
        }
        let control_arm = match r.control_arm.as_deref() {
            None | Some("") => 0,
            Some(name) => arms.iter().position(|a| a.arm_id == name).ok_or_else(|| {
                ExperimentError::invalid(
                    "control_arm",
                    format!("{} is not one of arm_0 … arm_{}", shown(name), k - 1),
                )
            })?,
        };
        let epsilon = r.epsilon.unwrap_or(0.1);
        let ucb = r.ucb_exploration.unwrap_or(std::f64::consts::SQRT_2);
        let alpha = r.significance_level.unwrap_or(DEFAULT_SIGNIFICANCE);
        let min_n = r.minimum_sample_size.unwrap_or(1000);
        if min_n < 10 {
            return Err(ExperimentError::invalid(
                "minimum_sample_size",
                format!("{min_n} must be at least 10"),
            ));
        }
        let effect = r.minimum_effect_size.unwrap_or(0.0);
        let days = r.max_duration_days.unwrap_or(30.0);
        let stop_loss = r.stop_loss_threshold.unwrap_or(-0.05);
        let name = text("name", r.name, 1024)?;
        let created_by = text("created_by", r.created_by, 256)?;
        Ok(TestConfig {
            name: if name.is_empty() {
                test_id.to_string()
            } else {
                name
            },
            test_id,
            description: text("description", r.description, 64 * 1024)?,
            created_by: if created_by.is_empty() {
                crate::auth::ANONYMOUS.into()
            } else {
                created_by
            },
            arms,
            strategy,
            // Gaussian by default: the bandit then optimises the mean return, which is what
            // significance and winners are judged on.
            reward_model: r.reward_model.unwrap_or(RewardModel::Gaussian),
            epsilon: check(
                "epsilon",
                epsilon,
                (0.0..=1.0).contains(&epsilon),
                "in [0, 1]",
            )?,
            ucb_exploration: check("ucb_exploration", ucb, ucb > 0.0, "positive")?,
            significance_level: check(
                "significance_level",
                alpha,
                (0.001..=0.2).contains(&alpha),
                "in [0.001, 0.2]",
            )?,
            minimum_sample_size: min_n,
            minimum_effect_size: check("minimum_effect_size", effect, effect >= 0.0, "at least 0")?,
            max_duration_days: check(
                "max_duration_days",
                days,
                days > 0.0 && days <= 3650.0,
                "in (0, 3650]",
            )?,
            early_stopping: r.early_stopping.unwrap_or(true),
            stop_loss_threshold: check("stop_loss_threshold", stop_loss, true, "finite")?,
            min_allocation_per_arm: min,
            max_allocation_per_arm: max,
            control_arm,
            on_drift: r.on_drift.unwrap_or_default(),
            settlement_period_secs: match r.settlement_period_secs {
                None => DEFAULT_SETTLEMENT_SECS,
                Some(s) if s <= MAX_SETTLEMENT_SECS => s,
                Some(s) => {
                    return Err(ExperimentError::invalid(
                        "settlement_period_seconds",
                        format!("{s} exceeds {MAX_SETTLEMENT_SECS} (7 days)"),
                    ))
                }
            },
        })
    }
}
