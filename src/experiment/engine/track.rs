//! What an arm's results say in the order they arrived, beyond its sufficient statistics: the
//! maximum drawdown of its cumulative return and drift (a change of its mean return, found by
//! [`crate::stats::drift`]). Both are folds over the results in order, so a replay of the same
//! results reproduces them exactly; they are stored with the statistics.

use crate::stats::drift::{DriftAlarm, DriftDetector};

/// The path-dependent figures of one arm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmTrack {
    /// Results folded in (counts only those seen since these figures were first kept).
    pub results: u64,
    /// The cumulative return.
    pub cumulative: f64,
    /// The highest cumulative return so far (never below 0, the start).
    pub peak: f64,
    /// The largest fall from a peak of the cumulative return so far (≥ 0, in return units).
    pub max_drawdown: f64,
    /// The change-point detector.
    pub detector: DriftDetector,
    /// What drift has been found, boxed: most arms never raise an alarm, and a track is kept
    /// for every arm of every test (80k of them at 10k tests × 8 arms), so the 48 bytes live
    /// only where an alarm happened.
    drift: Option<Box<DriftHistory>>,
}

/// The drift found in an arm so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriftHistory {
    /// Alarms so far.
    pub alarms: u64,
    /// The result count at the first alarm (0: none).
    pub first_at: u64,
    /// The last alarm: its result count, direction and statistic.
    pub last: Option<DriftRecord>,
    /// Held at the allocation floor because drift was found in a test that suspends on drift.
    pub hold: bool,
}

/// A drift alarm as kept with the arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftRecord {
    /// The arm's result count when it fired.
    pub at: u64,
    /// +1 for a rise of the mean, −1 for a fall.
    pub direction: i8,
    /// The CUSUM that crossed the threshold.
    pub statistic: f64,
}

impl ArmTrack {
    /// A track with these figures and drift history.
    pub fn new(
        results: u64,
        cumulative: f64,
        peak: f64,
        max_drawdown: f64,
        detector: DriftDetector,
        drift: DriftHistory,
    ) -> Self {
        Self {
            results,
            cumulative,
            peak,
            max_drawdown,
            detector,
            drift: (drift != DriftHistory::default()).then(|| Box::new(drift)),
        }
    }

    /// The drift found so far.
    pub fn drift(&self) -> DriftHistory {
        self.drift.as_deref().cloned().unwrap_or_default()
    }

    /// Alarms so far.
    pub fn drift_alarms(&self) -> u64 {
        self.drift.as_ref().map_or(0, |d| d.alarms)
    }

    /// The result count at the first alarm (0: none).
    pub fn first_drift_at(&self) -> u64 {
        self.drift.as_ref().map_or(0, |d| d.first_at)
    }

    /// The last alarm.
    pub fn last_drift(&self) -> Option<DriftRecord> {
        self.drift.as_ref().and_then(|d| d.last)
    }

    /// Whether drift holds the arm at the allocation floor.
    pub fn drift_hold(&self) -> bool {
        self.drift.as_ref().is_some_and(|d| d.hold)
    }

    /// Holds the arm at the allocation floor for drift (called on an alarm of a fall in a test
    /// that suspends on drift).
    pub fn hold_for_drift(&mut self) {
        self.drift.get_or_insert_with(Box::default).hold = true;
    }

    /// Folds in one return; returns the drift alarm it set off, if any.
    pub fn add(&mut self, x: f64) -> Option<DriftAlarm> {
        self.results += 1;
        // Drawdown of the cumulative sum (e.g. Magdon-Ismail & Atiya 2004, "Maximum drawdown",
        // Risk 17(10)): D_t = max_{s ≤ t} C_s − C_t with C_0 = 0; the maximum over t.
        self.cumulative += x;
        self.peak = self.peak.max(self.cumulative);
        self.max_drawdown = self.max_drawdown.max(self.peak - self.cumulative);
        let alarm = self.detector.update(x)?;
        let results = self.results;
        let drift = self.drift.get_or_insert_with(Box::default);
        drift.alarms += 1;
        if drift.first_at == 0 {
            drift.first_at = results;
        }
        drift.last = Some(DriftRecord {
            at: results,
            direction: alarm.direction,
            statistic: alarm.statistic,
        });
        Some(alarm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawdown_follows_the_cumulative_return_in_order() {
        let mut track = ArmTrack::default();
        // Cumulative: 1, 3, 2, -1, 0, 4, 1 → peaks 1, 3, 3, 3, 3, 4, 4 → drawdowns 0 0 1 4 3 0 3.
        for x in [1.0, 2.0, -1.0, -3.0, 1.0, 4.0, -3.0] {
            track.add(x);
        }
        assert_eq!(
            (track.cumulative, track.peak, track.max_drawdown),
            (1.0, 4.0, 4.0)
        );
        // A stream that only falls: the drawdown is measured from the start, 0.
        let mut falling = ArmTrack::default();
        for x in [-0.5, -0.25] {
            falling.add(x);
        }
        assert_eq!(falling.max_drawdown, 0.75);
    }
}
