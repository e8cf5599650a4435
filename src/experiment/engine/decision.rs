//! The evidence a stop was decided on: the counts and statistics of every arm and comparison at
//! the moment the rule (or the person) decided, stored with the stop. Results applied after that
//! moment (a batch still in flight, late fills during settlement) change the test's results but
//! never this record, so the audit log and the final results file show exactly what the decision
//! saw.

use super::stopping;
use crate::experiment::state::StatsRecord;
use crate::experiment::types::TestConfig;
pub use crate::experiment::types::{DecisionArm, DecisionComparison, StopDecision};
use crate::time::UnixNanos;

impl StopDecision {
    /// The decision, taken at `decided_at`, to stop `config`'s test on `stats`, for `reason`,
    /// declaring `winner`.
    pub fn at(
        config: &TestConfig,
        stats: &StatsRecord,
        kind: &str,
        reason: String,
        winner: Option<usize>,
        decided_at: UnixNanos,
    ) -> Self {
        let name = |i: usize| config.arms[i].arm_id.to_string();
        let arms = stats
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| DecisionArm {
                arm_id: name(i),
                results: a.n,
                mean_return: a.mean,
                std_return: a.std(),
                suspended: stats.suspended.get(i).copied().unwrap_or(false),
            })
            .collect();
        let comparisons = stopping::evidence(config, &stats.arms, &stats.sequential)
            .into_iter()
            .map(|e| DecisionComparison {
                treatment_arm: name(e.treatment),
                control_arm: name(e.control),
                difference: e.difference,
                always_valid_p_value: e.always_valid_p,
                adjusted_p_value: e.adjusted_p,
                significant: e.significant,
            })
            .collect();
        Self {
            kind: kind.to_string(),
            reason,
            decided_at,
            winner: winner.map(name),
            arms,
            comparisons,
        }
    }

    /// The evidence as compact JSON, for the audit event.
    pub fn evidence_json(&self) -> String {
        serde_json::json!({"arms": self.arms, "comparisons": self.comparisons}).to_string()
    }
}
