//! The data of a test's time series (its points, and what memory keeps of the series), apart
//! from the code that samples and stores it (the `history` module), so that a test's in-memory
//! state can hold its series without depending on that code.

use serde::{Deserialize, Serialize};

use crate::storage::Record;
use crate::time::UnixNanos;

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// When.
    pub time: UnixNanos,
    /// Results per arm.
    pub results: Vec<u64>,
    /// Allocation share per arm.
    pub shares: Vec<f64>,
    /// Per comparison (treatment arms in order): the Holm-adjusted always-valid p-value
    /// (empty in points stored before it was kept).
    #[serde(default)]
    pub p_values: Vec<f64>,
}

impl Record for HistoryPoint {
    const FORMAT_VERSION: u8 = 1;
}

/// The series of a test as older versions stored it: one record under `series/<test_id>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Points, oldest first.
    pub points: Vec<HistoryPoint>,
}

impl Record for History {
    const FORMAT_VERSION: u8 = 1;
}

/// What memory keeps of a test's series.
#[derive(Debug, Default)]
pub struct SeriesState {
    /// Time of the newest point written since start (`None`: none yet).
    pub(super) last_time: Option<UnixNanos>,
    /// Hash of the newest point's counts and shares.
    pub(super) last_values: Option<u64>,
    /// Whether periodic points were skipped since the newest point (its values held).
    pub(super) held: bool,
    /// Points written since the last count.
    pub(super) appended: usize,
}

impl SeriesState {
    /// The series of a test loaded at start: nothing changed while the server was down, so the
    /// next periodic point is written only once the test's values differ from `current` (and the
    /// newest stored point is then repeated just before it, as after any pause). Without this, a
    /// restart would write a point for every test at once.
    pub fn resumed(current: &HistoryPoint) -> Self {
        Self {
            last_time: Some(current.time),
            last_values: Some(values_hash(current)),
            held: true,
            appended: 0,
        }
    }
}

/// A hash of a point's counts and shares (exact: shares by their bits).
pub(super) fn values_hash(point: &HistoryPoint) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    point.results.hash(&mut hasher);
    for x in point.shares.iter().chain(&point.p_values) {
        x.to_bits().hash(&mut hasher);
    }
    hasher.finish()
}
