//! A compact time series per test (result counts and allocation shares per arm) for reports:
//! a point at creation, every [`HISTORY_INTERVAL_NS`] while the test is not ended, and at its end;
//! at most [`MAX_POINTS`] points, thinned by dropping every other one. Persisted best-effort with
//! sled's periodic flush: a crash may lose the last points, never anything else.

use serde::{Deserialize, Serialize};

use crate::storage::{keys, Record, WriteBatch};
use crate::time::{self, UnixNanos};

use super::state::TestState;
use super::{Experiments, Result};

/// Spacing of the periodic points.
pub const HISTORY_INTERVAL_NS: i64 = 10_000_000_000;
/// Most points kept per test.
pub const MAX_POINTS: usize = 1000;

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// When.
    pub time: UnixNanos,
    /// Results per arm.
    pub results: Vec<u64>,
    /// Allocation share per arm.
    pub shares: Vec<f64>,
}

/// The stored series of a test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Points, oldest first.
    pub points: Vec<HistoryPoint>,
}

impl Record for History {
    const FORMAT_VERSION: u8 = 1;
}

impl History {
    /// Appends a point, thinning the series when it is full (first and newest points stay).
    pub fn push(&mut self, point: HistoryPoint) {
        self.points.push(point);
        if self.points.len() > MAX_POINTS {
            let last = self.points.pop().expect("not empty");
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.points.push(last);
        }
    }

    /// When the newest point was taken.
    pub fn last_time(&self) -> Option<UnixNanos> {
        self.points.last().map(|p| p.time)
    }
}

/// The test's current counts and shares.
pub fn sample(state: &TestState) -> HistoryPoint {
    let shares = state.current_probabilities();
    let results = state.book.lock().stats.arms.iter().map(|a| a.n).collect();
    HistoryPoint {
        time: time::now(),
        results,
        shares,
    }
}

impl Experiments {
    /// Records a point for `test_id` now (creation, end) or when the last one is older than the
    /// interval (`periodic`), and stores the series.
    pub(super) fn record_history(&self, test_id: &str, periodic: bool) -> Result<()> {
        let state = self.state(test_id)?;
        let point = sample(&state);
        let mut history = state.history.lock();
        if periodic
            && history
                .last_time()
                .is_some_and(|t| point.time - t < HISTORY_INTERVAL_NS)
        {
            return Ok(());
        }
        history.push(point);
        let mut batch = WriteBatch::new();
        batch.put(keys::test_history(test_id), &*history)?;
        drop(history);
        self.inner.storage.apply(batch)?;
        Ok(())
    }

    /// The series of a test plus a point for now.
    pub fn history(&self, test_id: &str) -> Result<(Vec<String>, Vec<HistoryPoint>)> {
        let state = self.state(test_id)?;
        let mut points = state.history.lock().points.clone();
        points.push(sample(&state));
        let arms = state.config.arms.iter().map(|a| a.arm_id.clone()).collect();
        Ok((arms, points))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_first_and_newest_points() {
        let mut h = History::default();
        for t in 0..2500 {
            h.push(HistoryPoint {
                time: t,
                results: vec![],
                shares: vec![],
            });
        }
        assert!(h.points.len() <= MAX_POINTS);
        assert_eq!(h.points.first().map(|p| p.time), Some(0));
        assert_eq!(h.last_time(), Some(2499));
        assert!(h.points.windows(2).all(|w| w[0].time < w[1].time));
    }
}
