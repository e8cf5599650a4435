//! Experiment value types: identifiers, strategies, the validated test configuration and the
//! stored test record.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::registry::types::{identifier_problem, stored_identifier_problem};
use crate::storage::Record;
use crate::time::UnixNanos;

pub use super::shared_id::SharedRegistryId;
use super::ExperimentError;

/// Most arms a test may have; decision ids reserve 6 bits for the arm index.
pub const MAX_ARMS: usize = 32;

/// The arm ids, `arm_0` … `arm_31`, shared by every test (arms are always named by position).
pub const ARM_IDS: [&str; MAX_ARMS] = [
    "arm_0", "arm_1", "arm_2", "arm_3", "arm_4", "arm_5", "arm_6", "arm_7", "arm_8", "arm_9",
    "arm_10", "arm_11", "arm_12", "arm_13", "arm_14", "arm_15", "arm_16", "arm_17", "arm_18",
    "arm_19", "arm_20", "arm_21", "arm_22", "arm_23", "arm_24", "arm_25", "arm_26", "arm_27",
    "arm_28", "arm_29", "arm_30", "arm_31",
];

/// A test identifier, `[A-Za-z0-9._-]{1,128}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TestId(String);

impl TestId {
    /// Validates `value` as a test id.
    pub fn parse(value: &str) -> Result<Self, ExperimentError> {
        match identifier_problem(value) {
            Some(reason) => Err(ExperimentError::invalid("test_id", reason)),
            None => Ok(Self(value.to_string())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Lets the test map be queried with a `&str` without allocating; the derived `Hash` and `Eq`
// delegate to the inner `String`, so they agree with `str`'s.
impl std::borrow::Borrow<str> for TestId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Decodes stored ids, which older builds let start with a dot; requests go through
/// [`TestId::parse`].
impl TryFrom<String> for TestId {
    type Error = ExperimentError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match stored_identifier_problem(&value) {
            Some(reason) => Err(ExperimentError::invalid("test_id", reason)),
            None => Ok(Self(value)),
        }
    }
}

impl From<TestId> for String {
    fn from(id: TestId) -> Self {
        id.0
    }
}

impl fmt::Display for TestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How traffic is split between arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// Configured weights; sticky by unit key.
    Fixed,
    /// Thompson sampling under the reward model.
    ThompsonSampling,
    /// UCB1 on range-rescaled returns.
    Ucb,
    /// The best mean with probability 1 − ε, else uniform.
    EpsilonGreedy,
}

/// The reward model of Thompson sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RewardModel {
    /// Win iff return > 0; Beta(1 + wins, 1 + losses).
    Bernoulli,
    /// Normal-Inverse-Gamma posterior over the mean return.
    Gaussian,
}

/// Where a test is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TestStatus {
    /// Allocating and accepting results.
    Running,
    /// Serving the control arm; results still accepted.
    Paused,
    /// Ended by a stop, a rule or its maximum duration.
    Completed,
    /// Ended without a result.
    Cancelled,
}

impl TestStatus {
    /// Whether the test has ended (no more results accepted).
    pub fn is_ended(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }

    /// The upper-case name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub(super) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Running,
            1 => Self::Paused,
            2 => Self::Completed,
            _ => Self::Cancelled,
        }
    }
}

impl fmt::Display for TestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One arm: a model version and its configured weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmConfig {
    /// `arm_<index>`: one of [`ARM_IDS`], shared by every test (no string per arm in memory).
    #[serde(deserialize_with = "static_arm_id")]
    pub arm_id: std::borrow::Cow<'static, str>,
    /// The model version it serves, shared with every other arm serving it.
    pub model: SharedRegistryId,
    /// FIXED weight (normalised), else the equal initial share.
    pub weight: f64,
}

/// Reads a stored arm id as the matching entry of [`ARM_IDS`].
fn static_arm_id<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::borrow::Cow<'static, str>, D::Error> {
    let id = String::deserialize(d)?;
    ARM_IDS
        .iter()
        .find(|&&a| a == id)
        .map(|&a| std::borrow::Cow::Borrowed(a))
        .ok_or_else(|| {
            serde::de::Error::custom(format!("{id:?} is not an arm id (arm_0 … arm_31)"))
        })
}

/// A validated test configuration with every default filled in. Only
/// [`TestConfig::try_from`] a [`super::spec::TestSpec`] (or a stored record) makes one, so every
/// configuration the engine runs has passed the same checks; readers use the accessors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestConfig {
    /// Identifier.
    pub(super) test_id: TestId,
    /// Display name.
    pub(super) name: String,
    /// Free text.
    pub(super) description: String,
    /// Who created it.
    pub(super) created_by: String,
    /// The arms, in order.
    pub(super) arms: Vec<ArmConfig>,
    /// Allocation strategy.
    pub(super) strategy: Strategy,
    /// Thompson reward model.
    pub(super) reward_model: RewardModel,
    /// Exploration rate of EPSILON_GREEDY.
    pub(super) epsilon: f64,
    /// Exploration constant of UCB.
    pub(super) ucb_exploration: f64,
    /// Significance level of the statistics.
    pub(super) significance_level: f64,
    /// Results per arm before early stopping is considered.
    pub(super) minimum_sample_size: u64,
    /// Smallest absolute difference of mean return worth stopping for.
    pub(super) minimum_effect_size: f64,
    /// The test completes by itself after this many days.
    pub(super) max_duration_days: f64,
    /// Whether the test may stop itself early.
    pub(super) early_stopping: bool,
    /// Mean return per result below which an arm is suspended.
    pub(super) stop_loss_threshold: f64,
    /// Allocation floor per arm.
    pub(super) min_allocation_per_arm: f64,
    /// Allocation cap per arm.
    pub(super) max_allocation_per_arm: f64,
    /// Index of the control arm.
    pub(super) control_arm: usize,
    /// What drift in an arm's returns does.
    #[serde(default)]
    pub(super) on_drift: DriftAction,
    /// Seconds after the test ends during which results for decisions made while it ran are
    /// still accepted (late fills). 0 in tests stored before settlement existed.
    #[serde(default)]
    pub(super) settlement_period_secs: u64,
}

/// The default settlement period: an hour.
pub const DEFAULT_SETTLEMENT_SECS: u64 = 3600;
/// The longest settlement period: a week.
pub const MAX_SETTLEMENT_SECS: u64 = 7 * 24 * 3600;

/// What a test does when drift is found in an arm's returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriftAction {
    /// Report it (results, audit, metric) and change nothing.
    #[default]
    Alert,
    /// Also hold the arm at the allocation floor for the rest of the test, as the stop-loss
    /// does.
    Suspend,
}

impl TestConfig {
    /// Identifier.
    pub fn test_id(&self) -> &TestId {
        &self.test_id
    }

    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free text.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Who created it.
    pub fn created_by(&self) -> &str {
        &self.created_by
    }

    /// The arms, in order.
    pub fn arms(&self) -> &[ArmConfig] {
        &self.arms
    }

    /// Allocation strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Thompson reward model.
    pub fn reward_model(&self) -> RewardModel {
        self.reward_model
    }

    /// Exploration rate of EPSILON_GREEDY.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// Exploration constant of UCB.
    pub fn ucb_exploration(&self) -> f64 {
        self.ucb_exploration
    }

    /// Significance level of the statistics.
    pub fn significance_level(&self) -> f64 {
        self.significance_level
    }

    /// Results per arm before early stopping is considered.
    pub fn minimum_sample_size(&self) -> u64 {
        self.minimum_sample_size
    }

    /// Smallest absolute difference of mean return worth stopping for.
    pub fn minimum_effect_size(&self) -> f64 {
        self.minimum_effect_size
    }

    /// The test completes by itself after this many days.
    pub fn max_duration_days(&self) -> f64 {
        self.max_duration_days
    }

    /// Whether the test may stop itself early.
    pub fn early_stopping(&self) -> bool {
        self.early_stopping
    }

    /// Mean return per result below which an arm is suspended.
    pub fn stop_loss_threshold(&self) -> f64 {
        self.stop_loss_threshold
    }

    /// Allocation floor per arm.
    pub fn min_allocation_per_arm(&self) -> f64 {
        self.min_allocation_per_arm
    }

    /// Allocation cap per arm.
    pub fn max_allocation_per_arm(&self) -> f64 {
        self.max_allocation_per_arm
    }

    /// Index of the control arm.
    pub fn control_arm(&self) -> usize {
        self.control_arm
    }

    /// What drift in an arm's returns does.
    pub fn on_drift(&self) -> DriftAction {
        self.on_drift
    }

    /// Seconds after the test ends during which results for decisions made while it ran are
    /// still accepted (late fills). 0 in tests stored before settlement existed.
    pub fn settlement_period_secs(&self) -> u64 {
        self.settlement_period_secs
    }

    /// The arm index named `arm_id`.
    pub fn arm_index(&self, arm_id: &str) -> Option<usize> {
        self.arms.iter().position(|a| a.arm_id == arm_id)
    }
}

/// The stored state of a test besides its results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    /// The configuration, shared with the in-memory state (it never changes).
    pub config: std::sync::Arc<TestConfig>,
    /// Current status.
    pub status: TestStatus,
    /// Creation time.
    pub created_at: UnixNanos,
    /// Winning arm index, once decided.
    pub winner: Option<usize>,
    /// Why the test ended.
    pub stop_reason: String,
    /// When the test ended.
    pub stopped_at: Option<UnixNanos>,
    /// What the stop was decided on (absent before the test ends, and in tests stored before
    /// decisions were recorded).
    #[serde(default)]
    pub decision: Option<StopDecision>,
    /// Whether the settlement period after the end has closed: the results never change again.
    /// Records stored before settlement existed read as settled.
    #[serde(default = "settled_by_default")]
    pub settled: bool,
}

fn settled_by_default() -> bool {
    true
}

impl TestRecord {
    /// When the settlement period closes (for an ended test).
    pub fn settles_at(&self) -> Option<UnixNanos> {
        let period = i64::try_from(self.config.settlement_period_secs).unwrap_or(i64::MAX);
        self.stopped_at
            .map(|at| at.saturating_add(period.saturating_mul(1_000_000_000)))
    }

    /// Whether late results (for decisions made while the test ran) are accepted at `now`.
    pub fn settling(&self, now: UnixNanos) -> bool {
        self.status.is_ended() && !self.settled && self.settles_at().is_some_and(|t| now < t)
    }
}

impl Record for TestRecord {
    const FORMAT_VERSION: u8 = 1;
}

/// What a stop was decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopDecision {
    /// "manual", "early_stop", "stop_loss", "suspended" or "expiry".
    pub kind: String,
    /// Why, in words.
    pub reason: String,
    /// When it was decided.
    pub decided_at: UnixNanos,
    /// The declared winner, if any.
    pub winner: Option<String>,
    /// Every arm as the decision saw it.
    pub arms: Vec<DecisionArm>,
    /// Every comparison with the control as the decision saw it.
    pub comparisons: Vec<DecisionComparison>,
}

/// One arm at the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionArm {
    /// `arm_<i>`.
    pub arm_id: String,
    /// Results recorded.
    pub results: u64,
    /// Mean return.
    #[serde(with = "any_f64")]
    pub mean_return: f64,
    /// Sample standard deviation.
    #[serde(with = "any_f64")]
    pub std_return: f64,
    /// Held at the floor.
    pub suspended: bool,
}

/// One comparison at the decision (signs: treatment − control).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionComparison {
    /// Treatment arm id.
    pub treatment_arm: String,
    /// Control arm id.
    pub control_arm: String,
    /// Difference of mean returns.
    #[serde(with = "any_f64")]
    pub difference: f64,
    /// The running always-valid p-value.
    #[serde(with = "any_f64")]
    pub always_valid_p_value: f64,
    /// Holm-adjusted across comparisons (equal to the above with one comparison): what
    /// `significant` was judged on.
    #[serde(with = "any_f64")]
    pub adjusted_p_value: f64,
    /// Adjusted p ≤ α and |difference| ≥ the minimum effect.
    pub significant: bool,
}

/// A figure of a decision as JSON: a number when finite, else `null` (JSON has no such numbers,
/// and a statistic over extreme returns can be one), as in the rest of the results. `null`
/// reads back as NaN: an infinite figure comes back without its sign.
mod any_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            s.serialize_f64(*value)
        } else {
            s.serialize_none()
        }
    }

    /// A figure as stored: a number, `null`, or the text some builds wrote for a non-finite
    /// one.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Number(f64),
        Text(String),
        Null(()),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Stored::deserialize(d)? {
            Stored::Number(value) => Ok(value),
            Stored::Null(()) => Ok(f64::NAN),
            Stored::Text(text) => match text.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?} is not a figure"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::types::RegistryId;

    #[test]
    fn decision_figures_read_back_exactly_and_non_finite_ones_as_nan() {
        let arm = |mean: f64| DecisionArm {
            arm_id: "arm_0".into(),
            results: 3,
            mean_return: mean,
            std_return: 0.5,
            suspended: false,
        };
        for mean in [1e308, -0.0, 0.1, 5e-324] {
            let json = serde_json::to_string(&arm(mean)).expect("encode");
            let back: DecisionArm = serde_json::from_str(&json).expect("decode");
            assert_eq!(back.mean_return.to_bits(), mean.to_bits(), "{json}");
        }
        for mean in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let json = serde_json::to_string(&arm(mean)).expect("encode");
            assert!(json.contains("\"mean_return\":null"), "{json}");
            let back: DecisionArm = serde_json::from_str(&json).expect("decode");
            assert!(back.mean_return.is_nan());
            // Encoded again, the same bytes: replaying a stop writes what executing it wrote.
            assert_eq!(serde_json::to_string(&back).expect("encode"), json);
        }
        let text = serde_json::to_string(&arm(0.5))
            .expect("encode")
            .replace("0.5", "\"-inf\"");
        let back: DecisionArm = serde_json::from_str(&text).expect("decode text");
        assert_eq!(back.mean_return, f64::NEG_INFINITY);
        let bad = text.replace("-inf", "lots");
        let err = serde_json::from_str::<DecisionArm>(&bad).expect_err("not a figure");
        assert!(err.to_string().contains("lots"), "{err}");
    }

    #[test]
    fn stored_arm_ids_are_read_as_the_shared_ones_and_others_are_refused() {
        let arm = ArmConfig {
            arm_id: ARM_IDS[3].into(),
            model: SharedRegistryId::new(
                RegistryId::parse("registry_id", "m:1.0.0").expect("valid"),
            ),
            weight: 0.25,
        };
        let mut json = serde_json::to_value(&arm).expect("encode");
        let back: ArmConfig = serde_json::from_value(json.clone()).expect("decode");
        assert_eq!(back, arm);
        assert!(matches!(back.arm_id, std::borrow::Cow::Borrowed("arm_3")));
        json["arm_id"] = "arm_32".into();
        let err = serde_json::from_value::<ArmConfig>(json).expect_err("not an arm id");
        assert!(err.to_string().contains("arm_32"), "{err}");
    }
}
