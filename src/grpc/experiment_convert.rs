//! Conversions between protobuf and experiment domain types. Requests are only decoded (enums
//! checked) into domain values such as [`TestSpec`]; the domain fills in defaults and checks
//! invariants ([`crate::experiment::spec`]).

use crate::experiment::engine::decision::StopDecision;
use crate::experiment::spec::TestSpec;
use crate::experiment::types::*;
use crate::experiment::{
    ArmResults, Attribution, ComparisonResults, ExperimentError, ResultInput, TestResults, TestView,
};
use crate::pb;

use super::convert::timestamp;

fn strategy(raw: i32) -> Result<Option<Strategy>, ExperimentError> {
    use pb::AllocationStrategy as P;
    match P::try_from(raw) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::ThompsonSampling) => Ok(Some(Strategy::ThompsonSampling)),
        Ok(P::Fixed) => Ok(Some(Strategy::Fixed)),
        Ok(P::Ucb) => Ok(Some(Strategy::Ucb)),
        Ok(P::EpsilonGreedy) => Ok(Some(Strategy::EpsilonGreedy)),
        Err(_) => Err(ExperimentError::invalid(
            "allocation_strategy",
            format!("unknown value {raw}"),
        )),
    }
}

fn drift_action(raw: i32) -> Result<Option<DriftAction>, ExperimentError> {
    use pb::DriftAction as P;
    match P::try_from(raw) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::Alert) => Ok(Some(DriftAction::Alert)),
        Ok(P::Suspend) => Ok(Some(DriftAction::Suspend)),
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

fn reward_model(raw: i32) -> Result<Option<RewardModel>, ExperimentError> {
    use pb::RewardModel as P;
    match P::try_from(raw) {
        Ok(P::Unspecified) => Ok(None),
        Ok(P::Bernoulli) => Ok(Some(RewardModel::Bernoulli)),
        Ok(P::Gaussian) => Ok(Some(RewardModel::Gaussian)),
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

/// Decodes a CreateTest request into a spec: enums checked, nothing else decided here.
impl TryFrom<pb::CreateTestRequest> for TestSpec {
    type Error = ExperimentError;

    fn try_from(r: pb::CreateTestRequest) -> Result<Self, Self::Error> {
        Ok(TestSpec {
            strategy: strategy(r.allocation_strategy)?,
            reward_model: reward_model(r.reward_model)?,
            on_drift: drift_action(r.on_drift)?,
            test_id: r.test_id,
            name: r.name,
            description: r.description,
            created_by: r.created_by,
            model_registry_ids: r.model_registry_ids,
            weights: r.weights,
            epsilon: r.epsilon,
            ucb_exploration: r.ucb_exploration,
            significance_level: r.significance_level,
            minimum_sample_size: r.minimum_sample_size,
            minimum_effect_size: r.minimum_effect_size,
            max_duration_days: r.max_duration_days,
            early_stopping: r.early_stopping,
            stop_loss_threshold: r.stop_loss_threshold,
            min_allocation_per_arm: r.min_allocation_per_arm,
            max_allocation_per_arm: r.max_allocation_per_arm,
            control_arm: r.control_arm,
            settlement_period_secs: r.settlement_period_seconds,
        })
    }
}

impl From<TestView> for pb::Test {
    fn from(view: TestView) -> Self {
        let r = view.record;
        let c = &*r.config;
        let arm_id = |i: usize| c.arms()[i].arm_id.to_string();
        pb::Test {
            on_drift: pb_drift_action(c.on_drift()) as i32,
            settlement_period_seconds: c.settlement_period_secs(),
            test_id: c.test_id().to_string(),
            name: c.name().to_string(),
            description: c.description().to_string(),
            created_by: c.created_by().to_string(),
            allocation_strategy: match c.strategy() {
                Strategy::Fixed => pb::AllocationStrategy::Fixed,
                Strategy::ThompsonSampling => pb::AllocationStrategy::ThompsonSampling,
                Strategy::Ucb => pb::AllocationStrategy::Ucb,
                Strategy::EpsilonGreedy => pb::AllocationStrategy::EpsilonGreedy,
            } as i32,
            reward_model: match c.reward_model() {
                RewardModel::Bernoulli => pb::RewardModel::Bernoulli,
                RewardModel::Gaussian => pb::RewardModel::Gaussian,
            } as i32,
            epsilon: c.epsilon(),
            ucb_exploration: c.ucb_exploration(),
            significance_level: c.significance_level(),
            minimum_sample_size: c.minimum_sample_size(),
            minimum_effect_size: c.minimum_effect_size(),
            max_duration_days: c.max_duration_days(),
            early_stopping: c.early_stopping(),
            stop_loss_threshold: c.stop_loss_threshold(),
            min_allocation_per_arm: c.min_allocation_per_arm(),
            max_allocation_per_arm: c.max_allocation_per_arm(),
            control_arm: arm_id(c.control_arm()),
            status: pb_test_status(r.status) as i32,
            created_at: Some(timestamp(r.created_at)),
            model_registry_ids: c.arms().iter().map(|a| a.model.to_string()).collect(),
            winner: r.winner.map(arm_id).unwrap_or_default(),
            arms: c
                .arms()
                .iter()
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

impl From<pb::DecisionCounts> for crate::experiment::CountsInput {
    fn from(c: pb::DecisionCounts) -> Self {
        Self {
            test_id: c.test_id,
            table_version: c.table_version,
            counts: c.counts,
            expected: c.expected,
            counts_id: c.counts_id,
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
