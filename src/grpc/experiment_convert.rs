//! Conversions between protobuf and experiment domain types; request conversions validate every
//! field and fill in the documented defaults (`proto/arbiter/v1/experiments.proto`).

use crate::experiment::decision::StopDecision;
use crate::experiment::types::*;
use crate::experiment::{
    ArmResults, Attribution, ComparisonResults, ExperimentError, ResultInput, TestResults, TestView,
};
use crate::pb;
use crate::registry::types::RegistryId;
use crate::text::shown;

use super::convert::timestamp;

/// Default significance level.
pub(super) const DEFAULT_SIGNIFICANCE: f64 = 0.05;

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

fn strategy(raw: i32) -> Result<Strategy, ExperimentError> {
    use pb::AllocationStrategy as P;
    match P::try_from(raw) {
        Ok(P::Unspecified | P::ThompsonSampling) => Ok(Strategy::ThompsonSampling),
        Ok(P::Fixed) => Ok(Strategy::Fixed),
        Ok(P::Ucb) => Ok(Strategy::Ucb),
        Ok(P::EpsilonGreedy) => Ok(Strategy::EpsilonGreedy),
        Err(_) => Err(ExperimentError::invalid(
            "allocation_strategy",
            format!("unknown value {raw}"),
        )),
    }
}

fn drift_action(raw: i32) -> Result<DriftAction, ExperimentError> {
    use pb::DriftAction as P;
    match P::try_from(raw) {
        Ok(P::Unspecified | P::Alert) => Ok(DriftAction::Alert),
        Ok(P::Suspend) => Ok(DriftAction::Suspend),
        Err(_) => Err(ExperimentError::invalid(
            "on_drift",
            format!("unknown value {raw}"),
        )),
    }
}

/// The protobuf value of a drift action.
pub(super) fn pb_drift_action(a: DriftAction) -> pb::DriftAction {
    match a {
        DriftAction::Alert => pb::DriftAction::Alert,
        DriftAction::Suspend => pb::DriftAction::Suspend,
    }
}

fn reward_model(raw: i32) -> Result<RewardModel, ExperimentError> {
    use pb::RewardModel as P;
    match P::try_from(raw) {
        // Gaussian by default: the bandit then optimises the mean return, which is what
        // significance and winners are judged on.
        Ok(P::Bernoulli) => Ok(RewardModel::Bernoulli),
        Ok(P::Unspecified | P::Gaussian) => Ok(RewardModel::Gaussian),
        Err(_) => Err(ExperimentError::invalid(
            "reward_model",
            format!("unknown value {raw}"),
        )),
    }
}

/// Decodes a `TestStatus` filter.
pub(super) fn test_status(field: &'static str, raw: i32) -> Result<TestStatus, ExperimentError> {
    use pb::TestStatus as P;
    match P::try_from(raw) {
        Ok(P::Running) => Ok(TestStatus::Running),
        Ok(P::Paused) => Ok(TestStatus::Paused),
        Ok(P::Completed) => Ok(TestStatus::Completed),
        Ok(P::Cancelled) => Ok(TestStatus::Cancelled),
        Ok(P::Unspecified) => Err(ExperimentError::invalid(field, "must be set")),
        Err(_) => Err(ExperimentError::invalid(
            field,
            format!("unknown value {raw}"),
        )),
    }
}

/// The protobuf value of a status.
pub(super) fn pb_test_status(s: TestStatus) -> pb::TestStatus {
    match s {
        TestStatus::Running => pb::TestStatus::Running,
        TestStatus::Paused => pb::TestStatus::Paused,
        TestStatus::Completed => pb::TestStatus::Completed,
        TestStatus::Cancelled => pb::TestStatus::Cancelled,
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

impl TryFrom<pb::CreateTestRequest> for TestConfig {
    type Error = ExperimentError;

    fn try_from(r: pb::CreateTestRequest) -> Result<Self, Self::Error> {
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
        let strategy = strategy(r.allocation_strategy)?;
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
                "anonymous".into()
            } else {
                created_by
            },
            arms,
            strategy,
            reward_model: reward_model(r.reward_model)?,
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
            on_drift: drift_action(r.on_drift)?,
            settlement_period_secs: match r.settlement_period_seconds {
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

impl From<TestView> for pb::Test {
    fn from(view: TestView) -> Self {
        let r = view.record;
        let c = std::sync::Arc::unwrap_or_clone(r.config);
        pb::Test {
            on_drift: pb_drift_action(c.on_drift) as i32,
            settlement_period_seconds: c.settlement_period_secs,
            test_id: c.test_id.to_string(),
            name: c.name,
            description: c.description,
            created_by: c.created_by,
            allocation_strategy: match c.strategy {
                Strategy::Fixed => pb::AllocationStrategy::Fixed,
                Strategy::ThompsonSampling => pb::AllocationStrategy::ThompsonSampling,
                Strategy::Ucb => pb::AllocationStrategy::Ucb,
                Strategy::EpsilonGreedy => pb::AllocationStrategy::EpsilonGreedy,
            } as i32,
            reward_model: match c.reward_model {
                RewardModel::Bernoulli => pb::RewardModel::Bernoulli,
                RewardModel::Gaussian => pb::RewardModel::Gaussian,
            } as i32,
            epsilon: c.epsilon,
            ucb_exploration: c.ucb_exploration,
            significance_level: c.significance_level,
            minimum_sample_size: c.minimum_sample_size,
            minimum_effect_size: c.minimum_effect_size,
            max_duration_days: c.max_duration_days,
            early_stopping: c.early_stopping,
            stop_loss_threshold: c.stop_loss_threshold,
            min_allocation_per_arm: c.min_allocation_per_arm,
            max_allocation_per_arm: c.max_allocation_per_arm,
            control_arm: c.arms[c.control_arm].arm_id.to_string(),
            status: pb_test_status(r.status) as i32,
            created_at: Some(timestamp(r.created_at)),
            model_registry_ids: c.arms.iter().map(|a| a.model.to_string()).collect(),
            winner: r
                .winner
                .map(|w| c.arms[w].arm_id.to_string())
                .unwrap_or_default(),
            arms: c
                .arms
                .into_iter()
                .map(|a| pb::Arm {
                    arm_id: a.arm_id.to_string(),
                    model_registry_id: a.model.to_string(),
                    weight: a.weight,
                })
                .collect(),
            stop_reason: r.stop_reason,
            stopped_at: r.stopped_at.map(timestamp),
        }
    }
}

impl From<ArmResults> for pb::ArmResults {
    fn from(a: ArmResults) -> Self {
        pb::ArmResults {
            arm_id: a.arm_id,
            model_registry_id: a.model_registry_id,
            total_requests: a.total_requests,
            allocations: a.allocations,
            total_returns: a.total_returns,
            mean_return: a.mean_return,
            std_return: a.std_return,
            confidence_interval: a
                .confidence_interval
                .map(|(low, high)| pb::ConfidenceInterval { low, high }),
            sharpe_ratio: a.sharpe_ratio,
            win_rate: a.win_rate,
            min_return: a.min_return,
            max_return: a.max_return,
            allocation_weight: a.allocation_weight,
            probability_best: Some(a.probability_best),
            suspended: a.suspended,
            additional_metrics: a
                .additional_metrics
                .into_iter()
                .map(|(k, m)| {
                    (
                        k,
                        pb::MetricSummary {
                            count: m.count,
                            mean: m.mean,
                        },
                    )
                })
                .collect(),
            max_drawdown: a.max_drawdown,
            backtest_sharpe: a.backtest_sharpe,
            backtest_max_dd: a.backtest_max_dd,
            sharpe_ci: a
                .sharpe_ci
                .map(|(low, high)| pb::ConfidenceInterval { low, high }),
            drift_detected: a.drift.alarms > 0,
            drift_alarms: a.drift.alarms,
            first_drift_at: a.drift.first_at,
            last_drift_at: a.drift.last_at,
            last_drift_direction: i32::from(a.drift.last_direction),
            drift_statistic: a.drift.statistic,
        }
    }
}

impl From<ComparisonResults> for pb::SignificanceTest {
    fn from(c: ComparisonResults) -> Self {
        pb::SignificanceTest {
            control_arm: c.control_arm,
            treatment_arm: c.treatment_arm,
            significant: c.significant,
            p_value: c.p_value,
            t_statistic: c.t_statistic,
            degrees_of_freedom: c.degrees_of_freedom,
            effect_size: c.effect_size,
            difference: c.difference,
            difference_ci: c
                .difference_ci
                .map(|(low, high)| pb::ConfidenceInterval { low, high }),
            winner: c.winner.unwrap_or_default(),
            leader: c.leader.unwrap_or_default(),
            always_valid_p_value: c.always_valid_p_value,
            adjusted_p_value: c.adjusted_p_value,
        }
    }
}

impl From<TestResults> for pb::TestResults {
    fn from(r: TestResults) -> Self {
        pb::TestResults {
            test_id: r.test_id,
            name: r.name,
            status: pb_test_status(r.status) as i32,
            created_at: Some(timestamp(r.created_at)),
            duration_days: r.duration_days,
            total_requests: r.total_requests,
            total_allocations: r.total_allocations,
            arms: r.arms.into_iter().map(Into::into).collect(),
            significance_test: (r.comparisons.len() == 1).then(|| r.comparisons[0].clone().into()),
            comparisons: r.comparisons.into_iter().map(Into::into).collect(),
            winner: r.winner.unwrap_or_default(),
            stop_reason: r.stop_reason,
            stopped_at: r.stopped_at.map(timestamp),
            srm_p_value: r.srm_p_value,
            settled: r.settled,
            settles_at: r.settles_at.map(timestamp),
            decision: r.decision.map(Into::into),
        }
    }
}

impl From<StopDecision> for pb::StopDecision {
    fn from(d: StopDecision) -> Self {
        pb::StopDecision {
            kind: d.kind,
            reason: d.reason,
            decided_at: Some(timestamp(d.decided_at)),
            winner: d.winner.unwrap_or_default(),
            arms: d
                .arms
                .into_iter()
                .map(|a| pb::DecisionArm {
                    arm_id: a.arm_id,
                    results: a.results,
                    mean_return: a.mean_return,
                    std_return: a.std_return,
                    suspended: a.suspended,
                })
                .collect(),
            comparisons: d
                .comparisons
                .into_iter()
                .map(|c| pb::DecisionComparison {
                    treatment_arm: c.treatment_arm,
                    control_arm: c.control_arm,
                    difference: c.difference,
                    always_valid_p_value: c.always_valid_p_value,
                    adjusted_p_value: c.adjusted_p_value,
                    significant: c.significant,
                })
                .collect(),
        }
    }
}

impl From<pb::ResultRecord> for ResultInput {
    fn from(r: pb::ResultRecord) -> Self {
        use pb::result_record::Attribution as A;
        ResultInput {
            test_id: r.test_id,
            attribution: r.attribution.map(|a| match a {
                A::ArmId(id) => Attribution::Arm(id),
                A::ModelRegistryId(id) => Attribution::Model(id),
                A::DecisionId(id) => Attribution::Decision(id),
            }),
            return_value: r.return_value,
            metrics: r.additional_metrics.into_iter().collect(),
            result_id: r.result_id,
            observed_at: r.observed_at.map(|t| {
                t.seconds
                    .saturating_mul(1_000_000_000)
                    .saturating_add(i64::from(t.nanos))
            }),
        }
    }
}
