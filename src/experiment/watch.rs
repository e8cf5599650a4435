//! Allocation tables for clients that decide in their own process (`WatchAllocations`): the
//! feed that tells watchers which tests published a new table, and the table as a client needs
//! it, with the client's own decision-id key.

use tokio::sync::broadcast;

use super::table::AllocationTable;
use super::types::{Strategy, TestId, TestStatus};
use super::{ExperimentError, Experiments, Result};

/// Changes a watcher may fall behind by before it starts over from every table it watches.
const FEED_CAPACITY: usize = 4096;

/// Longest accepted client id.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Tells watchers which tests published a new table. Publishing costs nothing while nobody
/// watches.
#[derive(Debug, Clone)]
pub struct TableFeed(broadcast::Sender<TestId>);

impl TableFeed {
    /// A feed nobody watches yet.
    pub fn new() -> Self {
        Self(broadcast::channel(FEED_CAPACITY).0)
    }

    /// `test_id` published a table (or appeared).
    pub(super) fn changed(&self, test_id: &TestId) {
        if self.0.receiver_count() > 0 {
            // Fails only when the last watcher left meanwhile.
            let _ = self.0.send(test_id.clone());
        }
    }
}

impl Default for TableFeed {
    fn default() -> Self {
        Self::new()
    }
}

/// A test's allocation table as a watching client needs it.
#[derive(Debug, Clone)]
pub struct WatchedTable {
    /// The test.
    pub test_id: String,
    /// The table's version (from 1, per test, on this arbiter).
    pub version: u64,
    /// The test's status while the table serves.
    pub status: TestStatus,
    /// Per arm: arm id, model registry id, probability.
    pub arms: Vec<(String, String, f64)>,
    /// Walker's acceptance thresholds.
    pub accept: Vec<f64>,
    /// Walker's aliases.
    pub alias: Vec<u32>,
    /// A FIXED test: a unit key always gets the same arm.
    pub sticky_unit_keys: bool,
    /// The arm served when the test is not running (control, or the winner once ended).
    pub fallback_arm: usize,
    /// The winner, once the test has ended with one.
    pub winner: Option<usize>,
    /// The client's index for the test.
    pub client_index: u32,
    /// The client's key for the test (two SipHash words).
    pub client_key: (u64, u64),
}

/// Validates a watching client's id.
pub fn check_client_id(client_id: &str) -> Result<()> {
    let reason = if client_id.is_empty() {
        "must not be empty: name the client, e.g. after its host and process".to_string()
    } else if client_id.len() > MAX_CLIENT_ID_LEN {
        format!(
            "is {} bytes long; the limit is {MAX_CLIENT_ID_LEN}",
            client_id.len()
        )
    } else {
        return Ok(());
    };
    Err(ExperimentError::InvalidArgument {
        field: "client_id",
        reason,
    })
}

impl Experiments {
    /// Tells of every test that publishes a table from now on.
    pub fn table_changes(&self) -> broadcast::Receiver<TestId> {
        self.inner.feed.0.subscribe()
    }

    /// Whether the tables here are known to be current: always on the writer; on a standby,
    /// while it has applied the cluster's log up to a few seconds ago and sees the writer.
    pub fn view_current(&self) -> bool {
        self.inner
            .view_current
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A standby says whether its tables are current ([`Experiments::view_current`]).
    pub fn set_view_current(&self, current: bool) {
        self.inner
            .view_current
            .store(current, std::sync::atomic::Ordering::Relaxed);
    }

    /// The tests that have not ended (what a watch of no named tests starts with).
    pub fn unended_tests(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .inner
            .tests
            .iter()
            .filter(|entry| !entry.value().status().is_ended())
            .map(|entry| entry.key().as_str().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// `test_id`'s current table for client `client_id` (checked with [`check_client_id`]).
    pub fn watched_table(&self, test_id: &str, client_id: &str) -> Result<WatchedTable> {
        let state = self.state(test_id)?;
        let table: std::sync::Arc<AllocationTable> = state.table();
        let config = &state.config;
        let (winner, fallback_arm) = {
            let book = state.book.lock();
            let winner = book.record.winner.filter(|_| table.status.is_ended());
            (winner, winner.unwrap_or(config.control_arm))
        };
        let key = state.decision_key();
        let client_index = key.client_index(client_id);
        Ok(WatchedTable {
            test_id: test_id.to_string(),
            version: table.version,
            status: table.status,
            arms: config
                .arms
                .iter()
                .zip(&table.probabilities)
                .map(|(arm, &p)| (arm.arm_id.to_string(), arm.model.as_str().to_owned(), p))
                .collect(),
            accept: table.accept().to_vec(),
            alias: table.alias().iter().map(|&a| u32::from(a)).collect(),
            sticky_unit_keys: config.strategy == Strategy::Fixed,
            fallback_arm,
            winner,
            client_index,
            client_key: key.for_client(client_index).words(),
        })
    }
}
