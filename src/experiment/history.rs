//! A compact time series per test (result counts and allocation shares per arm) for reports:
//! a point at creation, every [`HISTORY_INTERVAL_NS`] while the test is not ended and its counts or
//! shares have changed, and at its end.
//!
//! The series lives in the store only, one key per point (`series/<test_id>/<time>`): memory holds
//! two numbers per test however long it runs (a series kept in memory grew to ~190 KB per test of
//! eight arms after three hours). Every [`MAX_POINTS`]/2 appends the test's points are counted
//! and, above [`MAX_POINTS`], thinned by dropping every other one (the first and newest stay), so
//! a test stores at most 1.5 × [`MAX_POINTS`] points. Written without a flush of their own: a
//! crash may lose the points of the last second, never anything else. Older data directories kept
//! the series as one record (`series/<test_id>`); it is read back as the oldest points.

use std::sync::Arc;

use crate::storage::{keys, Storage, WriteBatch};
use crate::time::{self, UnixNanos};

use super::series::values_hash;
pub use super::series::{History, HistoryPoint, SeriesState};
use super::state::TestState;
use super::stopping;
use super::{Experiments, Result};

/// Spacing of the periodic points.
pub const HISTORY_INTERVAL_NS: i64 = 10_000_000_000;
/// Points kept per test after thinning.
pub const MAX_POINTS: usize = 1000;

/// The indices of `len` points that thinning keeps: every other one from the first, and the
/// newest.
fn thinned(len: usize) -> impl Iterator<Item = usize> {
    (0..len).filter(move |&i| i % 2 == 0 || i + 1 == len)
}

/// Writes `point` after the test's newest one and, every [`MAX_POINTS`]/2 appends, thins the
/// stored series when it holds [`MAX_POINTS`] or more points. A `periodic` point equal to the
/// newest is skipped (idle tests write nothing); when the values change after such a pause, the
/// held values are written once more just before the new point, so a chart shows a step, not a
/// slope across the pause.
/// Store operations per batch when sampling every test's history.
const HISTORY_BATCH: usize = 256;

fn append_point(
    storage: &Storage,
    test_id: &str,
    series: &mut SeriesState,
    point: HistoryPoint,
    periodic: bool,
) -> Result<()> {
    let mut batch = WriteBatch::new();
    stage_point(storage, test_id, series, point, periodic, &mut batch)?;
    storage.apply(batch)?;
    Ok(())
}

/// [`append_point`] into `batch`, for the caller to apply.
fn stage_point(
    storage: &Storage,
    test_id: &str,
    series: &mut SeriesState,
    mut point: HistoryPoint,
    periodic: bool,
    batch: &mut WriteBatch,
) -> Result<()> {
    let values = values_hash(&point);
    if periodic && series.last_values == Some(values) {
        series.held = true;
        return Ok(());
    }
    if std::mem::take(&mut series.held) {
        let newest = storage.last::<HistoryPoint>(&keys::test_history_points(test_id))?;
        if let (Some((_, mut hold)), Some(last)) = (newest, series.last_time) {
            hold.time = (point.time - 1).max(last + 1);
            batch.put(keys::test_history_point(test_id, hold.time), &hold)?;
            series.last_time = Some(hold.time);
        }
    }
    // Keys order by time: never write one at or before the previous point.
    if let Some(last) = series.last_time {
        point.time = point.time.max(last + 1);
    }
    batch.put(keys::test_history_point(test_id, point.time), &point)?;
    series.last_values = Some(values);
    series.last_time = Some(point.time);
    series.appended += 1;
    if series.appended >= MAX_POINTS / 2 {
        series.appended = 0;
        let stored: Vec<Vec<u8>> = storage
            .scan_raw(&keys::test_history_points(test_id))
            .map(|entry| entry.map(|(key, _)| key))
            .collect::<std::result::Result<_, _>>()?;
        // The new point is not applied yet: it is the newest, and stays.
        let len = stored.len() + 1;
        if len >= MAX_POINTS {
            let keep: std::collections::HashSet<usize> = thinned(len).collect();
            for (i, key) in stored.iter().enumerate() {
                if !keep.contains(&i) {
                    batch.remove(key);
                }
            }
        }
    }
    Ok(())
}

/// The test's current counts, shares and adjusted always-valid p-values.
pub fn sample(state: &TestState) -> HistoryPoint {
    let shares = state.current_probabilities();
    let book = state.book.lock();
    let stats = &book.stats;
    let results = stats.arms.iter().map(|a| a.n).collect();
    let p_values = stopping::evidence(&state.config, &stats.arms, &stats.sequential)
        .iter()
        .map(|e| e.adjusted_p)
        .collect();
    HistoryPoint {
        time: time::now(),
        results,
        shares,
        p_values,
    }
}

impl Experiments {
    /// Records a point for `test_id` now (creation, end) or, when `periodic`, if the last one is
    /// older than the interval.
    pub(super) fn record_history(&self, test_id: &str, periodic: bool) -> Result<()> {
        let state = self.state(test_id)?;
        let mut series = state.series.lock();
        let now = time::now();
        if periodic
            && series
                .last_time
                .is_some_and(|t| now - t < HISTORY_INTERVAL_NS)
        {
            return Ok(());
        }
        append_point(
            &self.inner.storage,
            test_id,
            &mut series,
            sample(&state),
            periodic,
        )
    }

    /// Adds a periodic point to every test that has not ended and is due, in store batches of
    /// [`HISTORY_BATCH`] operations. Blocks on the store: call it off the runtime's workers.
    pub(super) fn sample_histories(&self) -> Result<()> {
        let now = time::now();
        let due: Vec<Arc<TestState>> = self
            .inner
            .tests
            .iter()
            .filter(|e| !e.value().status().is_ended() && Self::history_due(e.value(), now))
            .map(|e| e.value().clone())
            .collect();
        let storage = &self.inner.storage;
        let mut batch = WriteBatch::new();
        for state in due {
            let mut series = state.series.lock();
            let test_id = state.config.test_id.as_str();
            stage_point(
                storage,
                test_id,
                &mut series,
                sample(&state),
                true,
                &mut batch,
            )?;
            drop(series);
            if batch.len() >= HISTORY_BATCH {
                storage.apply(std::mem::take(&mut batch))?;
            }
        }
        storage.apply(batch)?;
        Ok(())
    }

    /// Whether a periodic point is due for the test (cheap: no allocation).
    pub(super) fn history_due(state: &TestState, now: UnixNanos) -> bool {
        state
            .series
            .lock()
            .last_time
            .is_none_or(|t| now - t >= HISTORY_INTERVAL_NS)
    }

    /// The series of a test (older single-record points first) plus a point for now.
    pub fn history(&self, test_id: &str) -> Result<(Vec<String>, Vec<HistoryPoint>)> {
        let state = self.state(test_id)?;
        let mut points = self
            .inner
            .storage
            .get::<History>(&keys::test_history(test_id))?
            .map(|h| h.points)
            .unwrap_or_default();
        for entry in self
            .inner
            .storage
            .scan::<HistoryPoint>(&keys::test_history_points(test_id))
        {
            points.push(entry?.1);
        }
        points.push(sample(&state));
        let arms = state
            .config
            .arms
            .iter()
            .map(|a| a.arm_id.to_string())
            .collect();
        Ok((arms, points))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_series_stays_bounded_in_storage_and_keeps_its_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut series = SeriesState::default();
        let point = |time| HistoryPoint {
            p_values: Vec::new(),
            time,
            results: vec![1, 2],
            shares: vec![0.5, 0.5],
        };
        let total = 4 * MAX_POINTS as i64;
        for t in 0..total {
            // Equal timestamps still give increasing keys.
            let mut p = point(t / 2);
            p.results[0] = t as u64;
            append_point(&storage, "t", &mut series, p, true).expect("append");
            if t % 25 != 0 {
                continue;
            }
            let stored = storage.scan_raw(&keys::test_history_points("t")).count();
            assert!(stored <= MAX_POINTS + MAX_POINTS / 2, "{stored} points");
        }
        let times: Vec<i64> = storage
            .scan::<HistoryPoint>(&keys::test_history_points("t"))
            .map(|e| e.expect("decode").1.time)
            .collect();
        assert_eq!(times.first(), Some(&0));
        assert_eq!(times.last(), series.last_time.as_ref());
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert!(times.len() >= MAX_POINTS / 2, "{} points", times.len());
        // Another test's points are separate.
        let mut other = SeriesState::default();
        append_point(&storage, "t2", &mut other, point(5), false).expect("append");
        assert_eq!(
            storage.scan_raw(&keys::test_history_points("t2")).count(),
            1
        );
    }

    #[tokio::test]
    async fn idle_periods_write_nothing_and_end_in_a_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut series = SeriesState::default();
        let point = |time, n| HistoryPoint {
            p_values: Vec::new(),
            time,
            results: vec![n, n],
            shares: vec![0.5, 0.5],
        };
        append_point(&storage, "t", &mut series, point(100, 1), false).expect("creation");
        for t in 1..=5 {
            append_point(&storage, "t", &mut series, point(100 + t * 10, 1), true).expect("idle");
        }
        let stored = |storage: &Storage| -> Vec<(i64, u64)> {
            storage
                .scan::<HistoryPoint>(&keys::test_history_points("t"))
                .map(|e| e.expect("decode").1)
                .map(|p| (p.time, p.results[0]))
                .collect()
        };
        assert_eq!(stored(&storage), [(100, 1)], "idle points are skipped");
        append_point(&storage, "t", &mut series, point(200, 7), true).expect("change");
        assert_eq!(stored(&storage), [(100, 1), (199, 1), (200, 7)]);
        // A non-periodic point (creation, end) is written even when nothing changed.
        append_point(&storage, "t", &mut series, point(300, 7), false).expect("end");
        assert_eq!(stored(&storage).len(), 4);
    }

    #[test]
    fn thinning_keeps_the_first_the_newest_and_every_other_point() {
        assert_eq!(thinned(6).collect::<Vec<_>>(), [0, 2, 4, 5]);
        assert_eq!(thinned(5).collect::<Vec<_>>(), [0, 2, 4]);
        assert_eq!(thinned(1).collect::<Vec<_>>(), [0]);
        assert!(thinned(MAX_POINTS + MAX_POINTS / 2).count() <= MAX_POINTS);
    }
}
