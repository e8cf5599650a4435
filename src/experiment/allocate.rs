//! The hot path: one allocation decision.

use std::sync::atomic::Ordering;

use super::state::{Decision, TestState};
use super::types::{TestStatus, ARM_IDS};
use super::{coarse_now, ExperimentError, Experiments, Result};

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
        if state.deadline <= coarse_now() {
            self.schedule_expiry(state, decision.status);
        }
        Ok(Allocated {
            arm_id: ARM_IDS[decision.arm].to_string(),
            model_registry_id: state.config.arms[decision.arm].model.as_str().to_owned(),
            decision,
        })
    }

    /// Expires the test in the background (once), so the decision path never waits for it.
    #[cold]
    fn schedule_expiry(&self, state: &TestState, status: TestStatus) {
        // A standby's tests end when the writer's stop reaches it.
        if self.inner.following || status.is_ended() || state.expiring.swap(true, Ordering::Relaxed)
        {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let this = self.clone();
            let test_id = state.config.test_id.to_string();
            runtime.spawn(async move {
                if let Err(e) = this.expire_if_due(&test_id).await {
                    tracing::warn!(test_id, error = %e, "expiring test failed");
                }
            });
        }
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
