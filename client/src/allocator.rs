//! [`LocalAllocator`]: decisions drawn in this process from the tables the server streams.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tonic::transport::Endpoint;

use crate::table::{TestStatus, TestTable};

/// How to watch the server and when to stop trusting the last tables.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Names this client (1–128 bytes). Its decision ids are minted in a space derived from it:
    /// give each router process its own (e.g. host and process name).
    pub client_id: String,
    /// The tests to watch; empty: every test that has not ended, and every test created later.
    pub test_ids: Vec<String>,
    /// Sent as `authorization: Bearer <token>` when the server has an auth file (the principal
    /// needs the `allocator` role).
    pub token: Option<String>,
    /// The tables count as stale ([`Decision::stale`]) once the server has not confirmed them
    /// for this long. The server confirms every second while its view is current, so the
    /// default, 3 s, is three missed confirmations. A silent stream is also dropped after this
    /// long and the next endpoint tried.
    pub stale_after: Duration,
    /// Once the tables have not been confirmed for this long, every test is decided as if
    /// paused: its fallback arm (the control arm, or the winner of an ended test) with
    /// propensity 1, and the decision is not an allocation of the test
    /// ([`Decision::fell_back`]). `None`: keep deciding from the last tables however old.
    /// Default 60 s.
    pub max_age: Option<Duration>,
    /// First wait before reconnecting; doubles up to `reconnect_max` while connecting fails.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl WatchOptions {
    /// The defaults for client `client_id`, watching every test.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            test_ids: Vec::new(),
            token: None,
            stale_after: Duration::from_secs(3),
            max_age: Some(Duration::from_secs(60)),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// Watches only `test_ids`.
    pub fn tests<S: Into<String>>(mut self, test_ids: impl IntoIterator<Item = S>) -> Self {
        self.test_ids = test_ids.into_iter().map(Into::into).collect();
        self
    }

    /// Authenticates with a bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// How far the client trusts its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No table yet.
    Empty = 0,
    /// Confirmed by the server within `stale_after`.
    Current = 1,
    /// Not confirmed within `stale_after`; decisions still come from the tables.
    Stale = 2,
    /// Not confirmed within `max_age`: every test serves its fallback arm.
    Expired = 3,
}

impl Freshness {
    fn from_u8(x: u8) -> Self {
        match x {
            1 => Self::Current,
            2 => Self::Stale,
            3 => Self::Expired,
            _ => Self::Empty,
        }
    }
}

/// Why [`LocalAllocator::allocate`] has no decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocateError {
    /// The client holds no table for the test: not watched, unknown to the server, or not
    /// received yet (see [`LocalAllocator::ready`]).
    UnknownTest(String),
}

impl std::fmt::Display for AllocateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownTest(id) => write!(
                f,
                "no allocation table for test {id:?}: it is not watched, not known to the \
                 server, or its table has not arrived yet"
            ),
        }
    }
}

impl std::error::Error for AllocateError {}

/// One decision.
#[derive(Debug, Clone)]
pub struct Decision {
    table: Arc<TestTable>,
    arm: u8,
    /// Attributes the decision's results (`ResultRecord.decision_id`); the server accepts it.
    pub decision_id: u64,
    /// The probability with which the arm was chosen (1 when the test is not running or the
    /// client fell back).
    pub propensity: f64,
    /// The table was not confirmed by the server within `stale_after`.
    pub stale: bool,
    /// The tables were older than `max_age`: the fallback arm was served, propensity 1, and the
    /// decision is not an allocation of the test.
    pub fell_back: bool,
}

impl Decision {
    /// `arm_<i>`.
    pub fn arm_id(&self) -> &str {
        &self.table.arm_ids[self.arm as usize]
    }

    /// The arm's model version, `<model_id>:<version>`.
    pub fn model_registry_id(&self) -> &str {
        &self.table.models[self.arm as usize]
    }

    /// The arm's index in the test.
    pub fn arm_index(&self) -> usize {
        self.arm as usize
    }

    /// The version of the table the decision was drawn from.
    pub fn table_version(&self) -> u64 {
        self.table.version
    }

    /// The test's status in that table.
    pub fn test_status(&self) -> TestStatus {
        self.table.status
    }

    /// A result of this decision, attributed by its decision id, for a [`crate::Reporter`].
    /// `result_id` (optional, may be empty) makes it count once however often it is sent; the
    /// reporter assigns one when it is empty.
    pub fn result(
        &self,
        return_value: f64,
        result_id: impl Into<String>,
    ) -> crate::pb::ResultRecord {
        crate::pb::ResultRecord {
            test_id: self.table.test_id.to_string(),
            attribution: Some(crate::pb::result_record::Attribution::DecisionId(
                self.decision_id,
            )),
            return_value,
            result_id: result_id.into(),
            ..Default::default()
        }
    }
}

/// Hashes test ids for the table map: 8 bytes at a time with one multiply (the keys come from
/// the server, so flooding is not a concern, and std's SipHash would be a third of a decision).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let mut tail = 0u64;
        for (i, &b) in chunks.remainder().iter().enumerate() {
            tail |= u64::from(b) << (8 * i);
        }
        self.0 = (self.0.rotate_left(5) ^ tail ^ bytes.len() as u64).wrapping_mul(K);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// The tests held, each in a slot of its own: a new table of a known test replaces the slot's
/// content and leaves the map alone (10 000 watched tests must not mean a map copy per update);
/// only a new test copies the map.
pub(crate) type Tables = HashMap<Box<str>, Arc<ArcSwap<TestTable>>, BuildHasherDefault<IdHasher>>;

/// What the allocator, its watcher and a reporter share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) options: WatchOptions,
    pub(crate) tables: ArcSwap<Tables>,
    freshness: AtomicU8,
    /// When the server last confirmed the tables, in ms since `epoch` (`u64::MAX`: never).
    heard_at: AtomicU64,
    epoch: Instant,
    /// Replaced RUNNING tables that some thread may still draw from; folded into `unreported`
    /// once none can.
    retired: Mutex<Vec<Arc<TestTable>>>,
    /// Per test, decisions of replaced tables not yet taken by a reporter. Bounded by the tests
    /// held, however many tables come and go.
    unreported: Mutex<HashMap<Box<str>, Unreported>>,
    /// Counts the updates applied (0: no tables yet).
    pub(crate) updates: tokio::sync::watch::Sender<u64>,
}

/// A test's decisions not yet reported: per arm the decisions and their expected number (each
/// table's decisions times the arm's probability in it), and the latest table version.
#[derive(Debug, Default)]
struct Unreported {
    counts: Vec<u64>,
    expected: Vec<f64>,
    version: u64,
}

impl Unreported {
    /// Takes what `table` counted since the last take.
    fn take_from(&mut self, table: &TestTable) {
        let counts = table.take_counts();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return;
        }
        let k = counts.len();
        self.counts.resize(k, 0);
        self.expected.resize(k, 0.0);
        for (total, c) in self.counts.iter_mut().zip(&counts) {
            *total = total.saturating_add(*c);
        }
        for (total, p) in self.expected.iter_mut().zip(table.probabilities.iter()) {
            *total += n as f64 * p;
        }
        self.version = self.version.max(table.version);
    }
}

impl Shared {
    /// The server confirmed the tables now.
    pub(crate) fn heard(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heard_at.store(ms, Ordering::Release);
        self.freshness
            .store(Freshness::Current as u8, Ordering::Relaxed);
    }

    /// How long since the server last confirmed the tables (`None`: never).
    pub(crate) fn silence(&self) -> Option<Duration> {
        let at = self.heard_at.load(Ordering::Acquire);
        (at != u64::MAX).then(|| {
            self.epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(at))
        })
    }

    /// Re-reads the freshness from the time since the server last confirmed the tables.
    pub(crate) fn update_freshness(&self) {
        let heard_at = self.heard_at.load(Ordering::Acquire);
        let state = match self.silence() {
            None => Freshness::Empty,
            Some(s) if self.options.max_age.is_some_and(|max| s > max) => Freshness::Expired,
            Some(s) if s > self.options.stale_after => Freshness::Stale,
            Some(_) => Freshness::Current,
        };
        self.freshness.store(state as u8, Ordering::Relaxed);
        // A confirmation that came while this was computed wins.
        if self.heard_at.load(Ordering::Acquire) != heard_at {
            self.freshness
                .store(Freshness::Current as u8, Ordering::Relaxed);
        }
    }

    /// The table held for `test_id`.
    #[inline]
    pub(crate) fn table(&self, test_id: &str) -> Option<Arc<TestTable>> {
        self.tables.load().get(test_id).map(|slot| slot.load_full())
    }

    /// Puts `table` in its test's slot (or a new slot, in `added`, for a test not held yet).
    /// An ended test stays ended: a table that says otherwise (from an arbiter that has not yet
    /// applied the end) is ignored.
    pub(crate) fn replace(&self, tables: &Tables, added: &mut Vec<TestTable>, table: TestTable) {
        let Some(slot) = tables.get(&*table.test_id) else {
            added.push(table);
            return;
        };
        if slot.load().status.is_ended() && !table.status.is_ended() {
            return;
        }
        let old = slot.swap(Arc::new(table));
        if old.status == TestStatus::Running {
            let mut retired = self.retired.lock().expect("retired tables");
            retired.push(old);
            self.fold_retired(&mut retired);
        }
    }

    /// Folds the retired tables no thread can draw from any more into `unreported`.
    fn fold_retired(&self, retired: &mut Vec<Arc<TestTable>>) {
        let mut unreported = self.unreported.lock().expect("unreported counts");
        retired.retain(|table| {
            // Checked before taking: once only this list holds the table, nothing can draw from
            // it any more, so what is taken now is all it will ever count.
            let last = Arc::strong_count(table) == 1;
            if last {
                unreported
                    .entry(table.test_id.clone())
                    .or_default()
                    .take_from(table);
            }
            !last
        });
    }
}

/// Decides allocations in this process from the allocation tables a server streams
/// (`WatchAllocations`), with the server's propensities and decision ids it accepts.
///
/// [`LocalAllocator::allocate`] takes no lock and allocates nothing on the heap: an atomic load
/// of the table map and of the test's slot (which takes a reference to the table, shared by
/// every thread deciding on the test), a hash lookup, a uniform draw, two relaxed atomic
/// increments and a SipHash of eight bytes. A background task (on the tokio runtime it was started on) keeps the
/// tables current, reconnects with backoff, and tries the next endpoint when one fails or
/// falls silent. Cheap to clone; the task stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct LocalAllocator {
    pub(crate) shared: Arc<Shared>,
    _task: Arc<crate::watcher::TaskGuard>,
}

impl LocalAllocator {
    /// Starts watching through `endpoints` (the arbiters of one cluster, or a single server),
    /// in turn. Must be called within a tokio runtime. Decisions are available once the first
    /// tables have arrived ([`LocalAllocator::ready`]).
    ///
    /// # Panics
    ///
    /// When `endpoints` is empty or no tokio runtime is running.
    pub fn start(endpoints: Vec<Endpoint>, options: WatchOptions) -> Self {
        assert!(
            !endpoints.is_empty(),
            "LocalAllocator::start needs an endpoint"
        );
        let shared = Arc::new(Shared {
            options,
            tables: ArcSwap::from_pointee(Tables::default()),
            freshness: AtomicU8::new(Freshness::Empty as u8),
            heard_at: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            retired: Mutex::new(Vec::new()),
            unreported: Mutex::default(),
            updates: tokio::sync::watch::channel(0).0,
        });
        let task = crate::watcher::spawn(shared.clone(), endpoints);
        Self {
            shared,
            _task: Arc::new(task),
        }
    }

    /// Waits until the first tables have arrived, at most `timeout`; `false` if they have not.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut updates = self.shared.updates.subscribe();
        tokio::time::timeout(timeout, updates.wait_for(|&n| n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Chooses an arm of `test_id`. `unit_key` (optional) pins a FIXED test's key to an arm, the
    /// same arm the server's `Allocate` gives it.
    #[inline]
    pub fn allocate(&self, test_id: &str, unit_key: &str) -> Result<Decision, AllocateError> {
        let Some(table) = self.shared.table(test_id) else {
            return Err(AllocateError::UnknownTest(test_id.to_string()));
        };
        let freshness = Freshness::from_u8(self.shared.freshness.load(Ordering::Relaxed));
        let fell_back = freshness == Freshness::Expired;
        let (arm, propensity, running) = if fell_back {
            (table.fallback_arm as usize, 1.0, false)
        } else {
            let arm = table.pick(table.position(unit_key));
            let running = table.status == TestStatus::Running;
            if running {
                table.count(arm);
            }
            (arm, table.probabilities[arm], running)
        };
        Ok(Decision {
            decision_id: table.mint(arm, running),
            table,
            arm: arm as u8,
            propensity,
            stale: freshness != Freshness::Current,
            fell_back,
        })
    }

    /// How far the tables are trusted now.
    pub fn freshness(&self) -> Freshness {
        Freshness::from_u8(self.shared.freshness.load(Ordering::Relaxed))
    }

    /// The version and status of the table held for `test_id`.
    pub fn table_of(&self, test_id: &str) -> Option<(u64, TestStatus)> {
        self.shared.table(test_id).map(|t| (t.version, t.status))
    }

    /// The winner of `test_id`, once the table held says it ended with one.
    pub fn winner(&self, test_id: &str) -> Option<String> {
        let table = self.shared.table(test_id)?;
        table.winner.map(|w| table.arm_ids[w as usize].to_string())
    }

    /// The probabilities of the table held for `test_id`, per arm.
    pub fn probabilities(&self, test_id: &str) -> Option<Vec<f64>> {
        self.shared.table(test_id).map(|t| t.probabilities.to_vec())
    }

    /// Takes the decisions drawn from RUNNING tables since the last call: one entry per test
    /// with any (what a [`crate::Reporter`] sends), its `counts_id` left for the caller.
    pub(crate) fn take_counts(&self) -> Vec<crate::pb::DecisionCounts> {
        let shared = &self.shared;
        let mut retired = shared.retired.lock().expect("retired tables");
        shared.fold_retired(&mut retired);
        let mut unreported = shared.unreported.lock().expect("unreported counts");
        // Tables still held by a drawing thread: what they counted so far.
        for table in retired.iter() {
            unreported
                .entry(table.test_id.clone())
                .or_default()
                .take_from(table);
        }
        drop(retired);
        for slot in shared.tables.load().values() {
            let table = slot.load();
            if table.status == TestStatus::Running {
                unreported
                    .entry(table.test_id.clone())
                    .or_default()
                    .take_from(&table);
            }
        }
        unreported
            .drain()
            .filter(|(_, u)| !u.counts.is_empty())
            .map(|(test_id, u)| crate::pb::DecisionCounts {
                test_id: test_id.into(),
                table_version: u.version,
                counts: u.counts,
                expected: u.expected,
                counts_id: String::new(),
            })
            .collect()
    }

    /// Waits until the table of `test_id` satisfies `pred` (version, status, probabilities),
    /// at most `timeout`; whether it did.
    pub async fn wait_for_table(
        &self,
        test_id: &str,
        timeout: Duration,
        mut pred: impl FnMut(u64, TestStatus, &[f64]) -> bool,
    ) -> bool {
        let mut updates = self.shared.updates.subscribe();
        let wait = async {
            loop {
                updates.borrow_and_update();
                if let Some(t) = self.shared.table(test_id) {
                    if pred(t.version, t.status, &t.probabilities) {
                        return true;
                    }
                }
                if updates.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}
