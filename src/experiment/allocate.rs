//! The hot path: one allocation decision.

use super::state::Decision;
use super::{ExperimentError, Experiments, Result};

/// A decision together with the strings a response needs.
#[derive(Debug, Clone)]
pub struct Allocated {
    /// The decision.
    pub decision: Decision,
    /// `arm_<i>`.
    pub arm_id: String,
    /// The arm's registry id.
    pub model_registry_id: String,
}

impl Experiments {
    /// Chooses an arm of `test_id`. Reads one shard of the test map and the test's table; takes
    /// no lock, touches no disk and logs nothing.
    #[inline]
    pub fn allocate(&self, test_id: &str, unit_key: &str) -> Result<Allocated> {
        let entry = self
            .inner
            .tests
            .get(test_id)
            .ok_or_else(|| ExperimentError::NotFound {
                test_id: test_id.to_string(),
            })?;
        let state = entry.value();
        let decision = state.decide(unit_key);
        Ok(Allocated {
            arm_id: state.arm_ids[decision.arm].clone(),
            model_registry_id: state.model_ids[decision.arm].clone(),
            decision,
        })
    }

    /// Chooses an arm without building response strings (for benchmarks and embedding).
    #[inline]
    pub fn decide(&self, test_id: &str, unit_key: &str) -> Result<Decision> {
        let entry = self
            .inner
            .tests
            .get(test_id)
            .ok_or_else(|| ExperimentError::NotFound {
                test_id: test_id.to_string(),
            })?;
        Ok(entry.value().decide(unit_key))
    }
}
