//! The in-memory state of one test: immutable configuration, the current allocation table (read
//! lock-free through `ArcSwap`), per-arm allocation counters, and the mutable "book" (record and
//! arm statistics) behind a per-test mutex that only writers take.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::decision_id::{DecisionKey, DecodedDecision};
use super::policy::{self, Policy};
use super::rng;
pub use super::stats_record::StatsRecord;
use super::table::{limited_shares, AllocationTable};
use super::types::{Strategy, TestConfig, TestRecord, TestStatus};
use super::watch::TableFeed;
use crate::storage::Record;

/// Allocation counters, persisted periodically (a crash loses at most one interval of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocationRecord {
    /// Decisions per arm.
    pub counts: Vec<u64>,
    /// Expected decisions per arm: the sum over decisions of the probability each arm had.
    pub expected: Vec<f64>,
    /// Next decision sequence number.
    pub next_decision: u64,
    /// The allocation table when written: what a restarted server serves until its refresher
    /// has recomputed the policy (empty in records written before this field existed).
    #[serde(default)]
    pub probabilities: Vec<f64>,
}

impl Record for AllocationRecord {
    const FORMAT_VERSION: u8 = 1;
}

/// What writers change under the test's lock.
#[derive(Debug)]
pub struct Book {
    /// The stored record.
    pub record: TestRecord,
    /// Statistics, suspensions and sequential tests.
    pub stats: StatsRecord,
}

/// One test in memory.
#[derive(Debug)]
pub struct TestState {
    /// The configuration (never changes).
    pub config: Arc<TestConfig>,
    status: AtomicU8,
    table: ArcSwap<AllocationTable>,
    /// Tables replaced while some thread may still draw from them; folded into `tallies` once
    /// none does.
    retired: Mutex<Vec<Arc<AllocationTable>>>,
    /// Allocations and expected allocations of every table folded so far.
    tallies: Mutex<Tallies>,
    next_decision: AtomicU64,
    /// Mints and checks the test's decision ids.
    decision_key: DecisionKey,
    policy: Box<dyn Policy>,
    last_refresh: AtomicI64,
    /// Held while a table is computed and published.
    refreshing: Mutex<()>,
    /// The version of the last table published.
    table_version: AtomicU64,
    /// Told of every table published.
    feed: TableFeed,
    dirty: AtomicBool,
    /// The decision sequence the last persisted allocation record held: decisions since then
    /// (running or not; every one moves the sequence) make the record due again.
    persisted_decisions: AtomicU64,
    /// Set when decisions counted elsewhere (a cluster's standbys) were added since the last
    /// persisted allocation record.
    counted_elsewhere: AtomicBool,
    /// When the test expires (ns since epoch).
    pub deadline: i64,
    /// Set once an expiry has been scheduled from the hot path.
    pub expiring: AtomicBool,
    /// Record and statistics.
    pub book: Mutex<Book>,
    /// What memory keeps of the report series (the points are in the store).
    pub series: Mutex<super::series::SeriesState>,
    /// The result_ids applied so far (loaded on first use; taken after `book` when both are).
    pub result_ids: Mutex<super::result_ids::ResultIds>,
    /// Set when journaled results are not yet in a snapshot in the store, and the test is queued for the
    /// snapshot writer.
    pub unsaved: AtomicBool,
}

/// Allocation counts per arm and their expected counts (SRM), of the tables folded so far.
#[derive(Debug)]
struct Tallies {
    counts: Vec<u64>,
    expected: Vec<f64>,
}

impl Tallies {
    /// Adds what was drawn from `table`.
    fn fold(&mut self, table: &AllocationTable) {
        let n = table.decisions() as f64;
        for (e, p) in self.expected.iter_mut().zip(&table.probabilities) {
            *e += n * p;
        }
        for (c, drawn) in self.counts.iter_mut().zip(table.counts()) {
            *c += drawn;
        }
    }
}

/// How far a restored test's decision sequence moves ahead: further than a second of decisions
/// at any rate measured (1.2M/s), so ids handed out after the last persisted count, before a
/// crash, are never handed out again.
const RESTORED_SEQUENCE_GAP: u64 = 1 << 22;

/// A decision of [`TestState::decide`].
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    /// Arm index.
    pub arm: usize,
    /// Probability the arm had.
    pub propensity: f64,
    /// The id handed to the client ([`super::decision_id`]).
    pub decision_id: u64,
    /// Test status of the table the decision was drawn from; only RUNNING decisions are
    /// allocations of the test.
    pub status: TestStatus,
}

impl TestState {
    /// Builds the state of a test, its table computed now.
    pub fn new(
        record: TestRecord,
        stats: StatsRecord,
        allocations: Option<AllocationRecord>,
        decision_key: DecisionKey,
        feed: TableFeed,
    ) -> Self {
        let state = Self::unrefreshed(record, stats, allocations, decision_key, feed);
        state.refresh();
        state
    }

    /// Builds the state of a test read at start-up without running its policy: a RUNNING test
    /// serves the table stored with its allocation counters (or the limits applied to an even
    /// split when none is stored) and is marked dirty, so the caller queues it for the refresher.
    /// A policy may take milliseconds per test (Thompson sampling's Monte Carlo fallback); 10k
    /// tests must not delay serving by that much.
    pub fn restored(
        record: TestRecord,
        stats: StatsRecord,
        allocations: Option<AllocationRecord>,
        decision_key: DecisionKey,
        feed: TableFeed,
    ) -> Self {
        let stored = allocations
            .as_ref()
            .map(|a| a.probabilities.clone())
            .unwrap_or_default();
        let state = Self::unrefreshed(record, stats, allocations, decision_key, feed);
        state
            .next_decision
            .fetch_add(RESTORED_SEQUENCE_GAP, Ordering::Relaxed);
        if state.status() != TestStatus::Running {
            state.refresh(); // a single arm: nothing to compute
            return state;
        }
        let k = state.config.arms.len();
        let probabilities = if is_distribution(&stored, k) {
            stored
        } else {
            let suspended = state.book.lock().stats.suspended.clone();
            // The configured weights: FIXED's, else the equal initial shares.
            let weights: Vec<f64> = state.config.arms.iter().map(|a| a.weight).collect();
            limited_shares(&state.config, &weights, &suspended)
        };
        let mut table = AllocationTable::new(probabilities, TestStatus::Running);
        table.version = state.table_version.fetch_add(1, Ordering::Relaxed) + 1;
        state.table.store(Arc::new(table));
        state.dirty.store(true, Ordering::Relaxed);
        state
    }

    fn unrefreshed(
        record: TestRecord,
        stats: StatsRecord,
        allocations: Option<AllocationRecord>,
        decision_key: DecisionKey,
        feed: TableFeed,
    ) -> Self {
        let config = record.config.clone();
        let k = config.arms.len();
        let alloc = allocations.unwrap_or(AllocationRecord {
            counts: vec![0; k],
            expected: vec![0.0; k],
            next_decision: 0,
            probabilities: Vec::new(),
        });
        Self {
            status: AtomicU8::new(record.status.to_u8()),
            table: ArcSwap::from_pointee(AllocationTable::single(
                k,
                config.control_arm,
                record.status,
            )),
            retired: Mutex::new(Vec::new()),
            tallies: Mutex::new(Tallies {
                counts: alloc.counts,
                expected: alloc.expected,
            }),
            next_decision: AtomicU64::new(alloc.next_decision),
            decision_key,
            policy: policy::for_config(&config),
            last_refresh: AtomicI64::new(0),
            refreshing: Mutex::new(()),
            table_version: AtomicU64::new(0),
            feed,
            dirty: AtomicBool::new(false),
            persisted_decisions: AtomicU64::new(alloc.next_decision),
            counted_elsewhere: AtomicBool::new(false),
            deadline: record
                .created_at
                .saturating_add((record.config.max_duration_days * 86_400e9) as i64),
            expiring: AtomicBool::new(false),
            series: Mutex::new(super::series::SeriesState::default()),
            result_ids: Mutex::new(super::result_ids::ResultIds::default()),
            unsaved: AtomicBool::new(false),
            book: Mutex::new(Book {
                stats: stats.normalized(k),
                record,
            }),
            config,
        }
    }

    /// The current status.
    pub fn status(&self) -> TestStatus {
        TestStatus::from_u8(self.status.load(Ordering::Acquire))
    }

    /// Allocates one decision. `unit_key` pins FIXED tests to an arm; otherwise the thread's
    /// generator draws. Lock-free: one atomic load of the table and two counter increments.
    /// The decision's status is the status of the table it was drawn from, and only a RUNNING
    /// table counts it as an allocation, so the counts match the RUNNING answers exactly.
    #[inline]
    pub fn decide(&self, unit_key: &str) -> Decision {
        let table = self.table.load();
        let u = if !unit_key.is_empty() && self.config.strategy == Strategy::Fixed {
            rng::unit_key_position(self.config.test_id.as_str(), unit_key)
        } else {
            rng::uniform()
        };
        let arm = table.pick(u);
        let running = table.status == TestStatus::Running;
        let sequence = self.next_decision.fetch_add(1, Ordering::Relaxed);
        Decision {
            arm,
            propensity: table.probabilities[arm],
            decision_id: self.decision_key.mint(sequence, arm, running),
            status: table.status,
        }
    }

    /// What `decision_id` says, if this test issued it.
    pub fn check_decision(&self, decision_id: u64) -> Option<DecodedDecision> {
        self.decision_key
            .check(decision_id)
            .filter(|d| d.arm < self.config.arms.len())
    }

    /// Recomputes the allocation table from the book: the policy's vector with limits while
    /// RUNNING, the control arm while PAUSED, the winner (or control) once ended. Waits for a
    /// refresh already under way, so the last table published reflects the latest book.
    pub fn refresh(&self) {
        self.publish(self.refreshing.lock());
    }

    /// Refreshes now if the last refresh is older than `min_interval_ns` and none is under way,
    /// else marks the test dirty for the periodic refresher. Never waits. Returns whether the
    /// test became dirty by this call (the caller then queues it for the refresher).
    #[must_use = "a test that became dirty must be queued for the refresher"]
    pub fn refresh_soon(&self, min_interval_ns: i64) -> bool {
        let since = crate::time::now() - self.last_refresh.load(Ordering::Relaxed);
        match self.refreshing.try_lock() {
            Some(guard) if since >= min_interval_ns => {
                self.publish(guard);
                false
            }
            _ => !self.dirty.swap(true, Ordering::AcqRel),
        }
    }

    /// Hands out the test's next decision ids from sequence number `sequence` on.
    pub fn start_decisions_at(&self, sequence: u64) {
        self.next_decision.store(sequence, Ordering::Relaxed);
    }

    /// Computes and swaps in a new table. The book is locked only to copy what the policy needs
    /// (a policy may take hundreds of microseconds; writers must not wait for it);
    /// `_publishing` orders concurrent refreshes.
    fn publish(&self, _publishing: parking_lot::MutexGuard<'_, ()>) {
        // Cleared before reading: results applied after this point mark the test dirty again.
        self.dirty.store(false, Ordering::Relaxed);
        let (status, winner, arms, suspended) = {
            let book = self.book.lock();
            let running = book.record.status == TestStatus::Running;
            (
                book.record.status,
                book.record.winner,
                running.then(|| book.stats.arms.clone()),
                book.stats.suspended.clone(),
            )
        };
        let k = self.config.arms.len();
        let mut table = match (status, arms) {
            (TestStatus::Running, Some(arms)) => {
                let raw = rng::with_rng(|r| self.policy.probabilities(&arms, r));
                let limited = limited_shares(&self.config, &raw, &suspended);
                AllocationTable::new(limited, status)
            }
            (TestStatus::Completed | TestStatus::Cancelled, _) => {
                AllocationTable::single(k, winner.unwrap_or(self.config.control_arm), status)
            }
            // Paused (Running always comes with its statistics).
            _ => AllocationTable::single(k, self.config.control_arm, status),
        };
        table.version = self.table_version.fetch_add(1, Ordering::Relaxed) + 1;
        self.status.store(status.to_u8(), Ordering::Release);
        // Swapped under the tallies' locks: `allocation_record` must never see the old table in
        // neither `retired` nor the current slot.
        let mut tallies = self.tallies.lock();
        let mut retired = self.retired.lock();
        let old = self.table.swap(Arc::new(table));
        retired.push(old);
        fold_unreferenced(&mut tallies, &mut retired);
        drop((tallies, retired));
        self.last_refresh
            .store(crate::time::now(), Ordering::Relaxed);
        self.feed.changed(&self.config.test_id);
    }

    /// The table served now.
    pub fn table(&self) -> Arc<AllocationTable> {
        self.table.load_full()
    }

    /// The key of this test's decision ids.
    pub fn decision_key(&self) -> &DecisionKey {
        &self.decision_key
    }

    /// Whether results arrived since the last refresh.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// The current allocation probabilities.
    pub fn current_probabilities(&self) -> Vec<f64> {
        self.table.load().probabilities.clone()
    }

    /// Allocation counters and expected counts, folding retired tables nobody holds any more.
    pub fn allocation_record(&self) -> AllocationRecord {
        let mut tallies = self.tallies.lock();
        let mut retired = self.retired.lock();
        fold_unreferenced(&mut tallies, &mut retired);
        let mut total = Tallies {
            counts: tallies.counts.clone(),
            expected: tallies.expected.clone(),
        };
        for table in retired.iter() {
            total.fold(table);
        }
        total.fold(&self.table.load());
        AllocationRecord {
            counts: total.counts,
            expected: total.expected,
            next_decision: self.next_decision.load(Ordering::Relaxed),
            probabilities: self.current_probabilities(),
        }
    }

    /// Whether no thread can still draw from a replaced RUNNING table: once a stop has published
    /// the ended table, the allocation counts are final when this holds. A drawing thread holds
    /// a table for well under a microsecond unless it is descheduled.
    pub fn allocations_settled(&self) -> bool {
        let mut tallies = self.tallies.lock();
        let mut retired = self.retired.lock();
        fold_unreferenced(&mut tallies, &mut retired);
        retired.iter().all(|t| t.status != TestStatus::Running)
    }

    /// Whether decisions were made since the last call, which then counts as persisting them.
    pub fn take_allocations_dirty(&self) -> bool {
        let next = self.next_decision.load(Ordering::Relaxed);
        let elsewhere = self.counted_elsewhere.swap(false, Ordering::Relaxed);
        self.persisted_decisions.swap(next, Ordering::Relaxed) != next || elsewhere
    }

    /// Adds decisions counted elsewhere (`counts` and `expected` per arm) to the test's counts.
    pub fn add_counted(&self, counts: &[u64], expected: &[f64]) {
        let mut tallies = self.tallies.lock();
        for (total, added) in tallies.counts.iter_mut().zip(counts) {
            *total += added;
        }
        for (total, added) in tallies.expected.iter_mut().zip(expected) {
            *total += added;
        }
        drop(tallies);
        self.counted_elsewhere.store(true, Ordering::Relaxed);
    }
}

/// Whether `p` is a probability vector over `k` arms (a stored table worth serving again).
fn is_distribution(p: &[f64], k: usize) -> bool {
    p.len() == k
        && p.iter().all(|x| x.is_finite() && *x >= 0.0)
        && (p.iter().sum::<f64>() - 1.0).abs() < 1e-9
}

/// Folds the retired tables no thread can still draw from into `tallies` and forgets them.
/// Every thread that held a table when it was replaced holds a strong reference to it
/// (`ArcSwap` pays its debts on swap), so a count of one means only `retired` holds it.
fn fold_unreferenced(tallies: &mut Tallies, retired: &mut Vec<Arc<AllocationTable>>) {
    retired.retain(|table| {
        if Arc::strong_count(table) == 1 {
            tallies.fold(table);
            false
        } else {
            true
        }
    });
    if retired.is_empty() {
        // Usually every retired table is folded at once; 10k idle tests need not keep the
        // vector's buffer.
        *retired = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::types::RewardModel;

    fn test_key() -> DecisionKey {
        DecisionKey::derive(
            &crate::experiment::engine::decision_id::ServerSecret([1; 32]),
            "t",
        )
    }

    /// A RUNNING two-arm Bernoulli Thompson test where arm 1 wins 50 of 60 and arm 0 10 of 60.
    fn lopsided() -> (TestRecord, StatsRecord) {
        let mut config = crate::experiment::engine::simulation_tests::config(100, 0.05);
        config.strategy = Strategy::ThompsonSampling;
        config.reward_model = RewardModel::Bernoulli;
        config.min_allocation_per_arm = 0.05;
        config.max_allocation_per_arm = 0.95;
        let record = TestRecord {
            config: Arc::new(config),
            status: TestStatus::Running,
            created_at: crate::time::now(),
            winner: None,
            stop_reason: String::new(),
            stopped_at: None,
            decision: None,
            settled: false,
        };
        let mut stats = StatsRecord::new(2);
        for i in 0..60 {
            stats.arms[0].add(if i < 10 { 1.0 } else { -1.0 });
            stats.arms[1].add(if i < 50 { 1.0 } else { -1.0 });
        }
        (record, stats)
    }

    #[test]
    fn a_restored_test_serves_its_stored_table_until_the_refresher_recomputes_it() {
        let (record, stats) = lopsided();
        let stored = AllocationRecord {
            counts: vec![3, 7],
            expected: vec![3.0, 7.0],
            next_decision: 10,
            probabilities: vec![0.3, 0.7],
        };
        let state = TestState::restored(record, stats, Some(stored), test_key(), TableFeed::new());
        assert_eq!(state.current_probabilities(), vec![0.3, 0.7]);
        assert!(state.is_dirty(), "queued for the refresher");
        state.refresh();
        assert!(!state.is_dirty());
        let p = state.current_probabilities();
        assert!(p[1] > 0.9, "the policy's table once refreshed: {p:?}");
        assert_eq!(state.allocation_record().probabilities, p);
    }

    #[test]
    fn a_restored_test_without_a_usable_stored_table_starts_from_an_even_split() {
        for stored in [
            None,
            Some(Vec::new()),          // written before the field existed
            Some(vec![0.5, 0.4]),      // does not sum to 1
            Some(vec![1.0]),           // wrong arm count
            Some(vec![f64::NAN, 1.0]), // not a number
        ] {
            let (record, stats) = lopsided();
            let allocations = stored.clone().map(|probabilities| AllocationRecord {
                counts: vec![0, 0],
                expected: vec![0.0, 0.0],
                next_decision: 0,
                probabilities,
            });
            let state =
                TestState::restored(record, stats, allocations, test_key(), TableFeed::new());
            assert_eq!(state.current_probabilities(), vec![0.5, 0.5], "{stored:?}");
            assert!(state.is_dirty(), "{stored:?}");
        }
    }

    #[test]
    fn a_restored_ended_test_serves_its_winner_at_once() {
        let (mut record, stats) = lopsided();
        record.status = TestStatus::Completed;
        record.winner = Some(1);
        let state = TestState::restored(record, stats, None, test_key(), TableFeed::new());
        assert_eq!(state.current_probabilities(), vec![0.0, 1.0]);
        assert!(!state.is_dirty());
    }
}
