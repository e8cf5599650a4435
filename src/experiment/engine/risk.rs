//! The stop-loss: an arm whose mean return per result falls below
//! `stop_loss_threshold`, once it has at least [`STOP_LOSS_MIN_RESULTS`] results, is suspended to
//! the allocation floor; the suspension is lifted when its mean recovers. In a test that suspends
//! on drift, an arm whose returns drifted is held at the floor for the rest of the test. Floors and caps are
//! applied to every strategy's vector in [`super::table::limited_shares`].

use crate::experiment::state::StatsRecord;
use crate::experiment::types::TestConfig;

/// Results an arm needs before the stop-loss can suspend it.
pub(in crate::experiment) const STOP_LOSS_MIN_RESULTS: u64 = 20;

/// Updates the suspensions from the statistics; returns the arms whose state changed (with the
/// new state).
pub(in crate::experiment) fn update_suspensions(
    config: &TestConfig,
    stats: &mut StatsRecord,
) -> Vec<(usize, bool)> {
    let mut changes = Vec::new();
    for (i, ((arm, suspended), track)) in stats
        .arms
        .iter()
        .zip(stats.suspended.iter_mut())
        .zip(&stats.tracks)
        .enumerate()
    {
        let below = arm.n >= STOP_LOSS_MIN_RESULTS && arm.mean < config.stop_loss_threshold;
        let held = below || track.drift_hold();
        if held != *suspended {
            *suspended = held;
            changes.push((i, held));
        }
    }
    changes
}
