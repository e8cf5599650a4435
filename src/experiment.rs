//! A/B tests and bandits: test lifecycle, allocation policies (one file per strategy), exact
//! sufficient statistics, the allocation table, and durable result ingestion.
//!
//! Parts: [`engine`] decides (policies, posteriors, tables, stopping rules, stop-loss, drift
//! tracks, decision ids; no storage, no clock); [`types`], [`spec`] and [`limits`] are the
//! domain's data and invariants; [`command`] (the lifecycle commands and their fold),
//! `journal_entry` (the result entry and the results fold), [`stats_record`], [`result_ids`],
//! `snapshot` and `history` persist it; `lifecycle`, `ingest`, `allocate` and `results` serve
//! the calls; `state` holds a test in memory.
//!
//! Hot state lives in a sharded map (`DashMap<TestId, Arc<TestState>>`): an allocation reads one
//! shard without any global lock, loads the test's table through `ArcSwap`, draws with the
//! thread's xoshiro generator and bumps atomic counters; no disk, no logging, no heap allocation.
//! Results go to the storage log, one entry per test and batch, and are acknowledged after a
//! (shared) sync; every second the statistics of tests with new results are stored in the store,
//! stamped with the log position they include, and the log is trimmed (`snapshot`). Creating,
//! pausing, resuming and stopping a test and closing its settlement are commands in the same
//! log, whose outcome the fold computes from the store at their position ([`command`]);
//! suspensions, drift alarms and allocation counts are store batches in it: one order for
//! everything.
//! Start-up reads one statistics record per test and replays at most about a second of log.
//! Allocation counters are persisted every
//! [`ALLOCATION_PERSIST_INTERVAL`] and at shutdown: a crash can lose at most that interval of
//! allocation counts, never a result.
//!
//! Depends on `registry` (arms are model versions), `audit`, `storage` and `stats`; knows nothing
//! of gRPC.

mod allocate;
mod background;
pub mod command;
pub mod engine;
mod error;
#[cfg(test)]
mod fold_tests;
mod follow;
pub mod history;
mod ingest;
mod journal_entry;
mod lifecycle;
pub mod limits;
pub mod result_ids;
mod results;
mod series;
mod shared_id;
mod snapshot;
pub mod spec;
mod state;
pub mod stats_record;
pub mod types;
pub mod watch;

// The engine's modules under the names the rest of the experiment module uses.
use engine::{decision, decision_id, policy, posterior, risk, rng, stopping, table, track};

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;

pub use allocate::Allocated;
pub use error::ExperimentError;
pub use ingest::{AppliedResults, Attribution, CountsInput, RecordOutcome, ResultInput};
pub use lifecycle::{ListCursor, TestView};
pub use limits::IngestLimits;
pub use results::{ArmResults, ComparisonResults, TestResults};
pub use snapshot::SNAPSHOT_INTERVAL;
use state::TestState;
pub use state::{AllocationRecord, Decision, StatsRecord};
use types::*;

use crate::audit::AuditLog;
use crate::registry::types::{ArmDrift, LivePerformance, ModelId};
use crate::registry::{ModelUsage, Registry};
use crate::storage::{keys, Storage, WriteBatch};

/// Result alias of the experiment layer.
pub type Result<T, E = ExperimentError> = std::result::Result<T, E>;

/// How often allocation counters are written to storage.
pub const ALLOCATION_PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// Allocation records per store batch when persisting them.
const ALLOCATION_PERSIST_CHUNK: usize = 256;
/// Store batches of allocation records between two log syncs when persisting them.
const ALLOCATION_PERSIST_SYNC_CHUNKS: usize = 8;
/// How often tests with new results get their tables recomputed (when not done inline).
const REFRESH_INTERVAL: Duration = Duration::from_millis(5);
/// Inline table refreshes of one test happen at most this often; the rest wait for the refresher
/// thread.
const INLINE_REFRESH_NS: i64 = 2_000_000;

/// The wall clock as of the background ticker's last tick (every [`REFRESH_INTERVAL`]): lets the
/// hot path notice an expired test with one relaxed load instead of a clock read.
static COARSE_NOW: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// [`COARSE_NOW`].
fn coarse_now() -> i64 {
    COARSE_NOW.load(std::sync::atomic::Ordering::Relaxed)
}

/// The experiment engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Experiments {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<Storage>,
    audit: Arc<AuditLog>,
    registry: Registry,
    tests: DashMap<TestId, Arc<TestState>>,
    /// Tests marked dirty since the refresher's last pass (it visits only these, not every test).
    dirty_tests: Mutex<Vec<Arc<TestState>>>,
    /// Tests with journaled results that no snapshot in the store holds yet (see `snapshot`).
    unsaved_tests: Mutex<Vec<Arc<TestState>>>,
    /// Held for a whole snapshot round: rounds must not overlap (see `snapshot`).
    snapshot_round: Mutex<()>,
    /// Serializes test creation (existence check then write).
    create_lock: Mutex<()>,
    /// The background threads and tasks, their stop signal and join handles.
    background: background::Background,
    /// Settled tests whose final results file could not be rewritten yet (retried every second).
    settled_files_due: Mutex<std::collections::HashSet<String>>,
    results_dir: PathBuf,
    limits: IngestLimits,
    /// Keys every test's decision ids.
    secret: decision_id::ServerSecret,
    /// Tells watchers of every table published.
    feed: watch::TableFeed,
    /// Whether the tests in memory are known to be current (always, unless following).
    view_current: std::sync::atomic::AtomicBool,
    /// The storage follows a log another arbiter writes (a cluster's standby): tests change
    /// only as its entries arrive ([`Experiments::follow`]), and nothing is written here.
    following: bool,
}

impl Experiments {
    /// Loads every test from storage (one record per test for configuration, statistics and
    /// allocations), replays the journal entries their statistics do not include yet, takes
    /// the stops the statistics call for (early stop, every arm suspended: a crash may have
    /// come between the results and their stop), writes missing final results files, and
    /// starts the background refresher, snapshot writer and allocation persister. Must run
    /// inside a tokio runtime.
    pub async fn open(
        storage: Arc<Storage>,
        audit: Arc<AuditLog>,
        registry: Registry,
        limits: IngestLimits,
    ) -> Result<Self> {
        let experiments = Self::load(storage, audit, registry, limits, false)?;
        experiments.start_background_tasks()?;
        experiments.start_snapshot_thread()?;
        experiments.take_stored_decisions().await;
        if let Err(e) = experiments.settle_due_tests().await {
            tracing::error!(error = %e, "closing due settlements at start failed; will retry");
        }
        experiments.write_missing_final_results();
        Ok(experiments)
    }

    /// Loads every test from storage and replays the journal entries their statistics do not
    /// include yet. `following`: the storage follows a log another arbiter writes, and nothing
    /// is written here (see `follow`).
    fn load(
        storage: Arc<Storage>,
        audit: Arc<AuditLog>,
        registry: Registry,
        limits: IngestLimits,
        following: bool,
    ) -> Result<Self> {
        let results_dir = storage.data_dir().join("ab_tests").join("results");
        std::fs::create_dir_all(&results_dir).map_err(|source| ExperimentError::Io {
            context: format!("creating {}", results_dir.display()),
            source,
        })?;
        let secret = Self::decision_secret(&storage, following)?;
        let feed = watch::TableFeed::new();
        // Data written before the index of model versions in use has none: built here, in
        // batches, before any registry command can read it (by the writer, when following).
        let indexed = following || storage.get_raw(keys::MODEL_USE_INDEXED)?.is_some();
        let mut index = WriteBatch::new();
        let mut loaded = Vec::new();
        for entry in storage.scan::<TestRecord>(keys::TEST_PREFIX) {
            let (_, record) = entry?;
            if !indexed {
                lifecycle::index_model_uses(&mut index, &record);
                if index.len() >= 10_000 {
                    storage.apply(std::mem::take(&mut index))?;
                }
            }
            let id = record.config.test_id.clone();
            let k = record.config.arms.len();
            let stats = storage
                .get::<StatsRecord>(&keys::test_stats(id.as_str()))?
                .unwrap_or_else(|| StatsRecord::new(k));
            let mut allocations =
                storage.get::<AllocationRecord>(&keys::test_allocations(id.as_str()))?;
            if following {
                // A standby counts only its own decisions (it reports them to the writer).
                allocations = allocations.map(follow::own_counts_only);
            }
            let key = decision_id::DecisionKey::derive(&secret, id.as_str());
            let state = TestState::restored(record, stats, allocations, key, feed.clone());
            if following {
                follow::mint_apart(&state);
            }
            loaded.push((id, Arc::new(state)));
        }
        if !indexed {
            index.put_raw(keys::MODEL_USE_INDEXED, Vec::new());
            storage.apply(index)?;
        }
        let experiments = Self {
            inner: Arc::new(Inner {
                storage: storage.clone(),
                audit,
                registry,
                tests: DashMap::new(),
                dirty_tests: Mutex::new(Vec::new()),
                unsaved_tests: Mutex::new(Vec::new()),
                snapshot_round: Mutex::new(()),
                create_lock: Mutex::new(()),
                settled_files_due: Mutex::default(),
                background: Default::default(),
                results_dir,
                limits,
                secret,
                feed,
                view_current: std::sync::atomic::AtomicBool::new(!following),
                following,
            }),
        };
        let replayed = experiments.replay_journal(&loaded, storage.take_owner_entries())?;
        if replayed > 0 {
            tracing::info!(entries = replayed, "replayed result entries from the log");
        }
        let mut dirty = experiments.inner.dirty_tests.lock();
        for (id, state) in loaded {
            *state.series.lock() = history::SeriesState::resumed(&history::sample(&state));
            if state.is_dirty() {
                dirty.push(state.clone());
            }
            experiments.inner.tests.insert(id, state);
        }
        drop(dirty);
        Ok(experiments)
    }

    /// The data directory's decision-id secret, created (and made durable) on first use.
    /// `following`: the storage follows a log another arbiter writes, which must have made it.
    fn decision_secret(storage: &Storage, following: bool) -> Result<decision_id::ServerSecret> {
        match storage.get_raw(keys::DECISION_SECRET)? {
            Some(bytes) => {
                let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    crate::storage::StorageError::Corrupt {
                        key: String::from_utf8_lossy(keys::DECISION_SECRET).into_owned(),
                        why: format!("{} bytes, not 32", bytes.len()),
                    }
                })?;
                Ok(decision_id::ServerSecret(bytes))
            }
            None if following => Err(crate::storage::StorageError::Replicated(
                "the cluster's log holds no decision-id secret yet: no arbiter has written it"
                    .into(),
            )
            .into()),
            None => {
                let secret = decision_id::ServerSecret::generate();
                let mut batch = WriteBatch::new();
                batch.put_raw(keys::DECISION_SECRET, secret.0.to_vec());
                storage.apply(batch)?;
                storage.flush_blocking()?;
                Ok(secret)
            }
        }
    }

    /// The decision-id key of `test_id`.
    fn decision_key(&self, test_id: &str) -> decision_id::DecisionKey {
        decision_id::DecisionKey::derive(&self.inner.secret, test_id)
    }

    fn start_background_tasks(&self) -> Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stop = self.inner.background.stop.clone();
        // Tables are recomputed on a thread of their own: a pass over many dirty Thompson tests
        // takes milliseconds per test and must not stall a runtime worker serving requests.
        let refresher = std::thread::Builder::new()
            .name("arbiter-refresh".into())
            .spawn(move || {
                while !stop.sleep(REFRESH_INTERVAL) {
                    // The engine is held only to take the queue, so dropping it is never
                    // delayed by a long pass.
                    let dirty = match weak.upgrade() {
                        Some(inner) => std::mem::take(&mut *inner.dirty_tests.lock()),
                        None => return,
                    };
                    for state in dirty {
                        // Refreshed inline meanwhile, or queued twice: nothing to do.
                        if state.is_dirty() {
                            state.refresh();
                        }
                    }
                }
            })
            .map_err(|source| ExperimentError::Io {
                context: "starting the table refresher thread".into(),
                source,
            })?;
        self.inner.background.thread(refresher);
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let mut stopped = self.inner.background.stop.subscribe();
        let ticker = tokio::spawn(async move {
            let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut persist_at = tokio::time::Instant::now() + ALLOCATION_PERSIST_INTERVAL;
            loop {
                tokio::select! {
                    _ = refresh.tick() => {}
                    _ = stopped.wait_for(|&stop| stop) => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let this = Experiments { inner };
                COARSE_NOW.store(crate::time::now(), std::sync::atomic::Ordering::Relaxed);
                if tokio::time::Instant::now() >= persist_at {
                    persist_at += ALLOCATION_PERSIST_INTERVAL;
                    this.tick().await;
                }
            }
        });
        self.inner.background.task(ticker);
        Ok(())
    }

    /// The once-a-second work: allocation counters, expiry, settlement, histories, metrics.
    async fn tick(&self) {
        if self.inner.following {
            self.export_metrics();
            return;
        }
        if let Err(e) = self.persist_allocations(false).await {
            tracing::warn!(error = %e, "persisting allocation counts failed");
        }
        if let Err(e) = self.expire_due_tests().await {
            tracing::warn!(error = %e, "expiring tests failed");
        }
        if let Err(e) = self.settle_due_tests().await {
            tracing::warn!(error = %e, "closing settlements failed");
        }
        let sampler = self.clone();
        let sampled = tokio::task::spawn_blocking(move || sampler.sample_histories());
        if let Ok(Err(e)) = sampled.await {
            tracing::warn!(error = %e, "recording test histories failed");
        }
        self.export_metrics();
        self.evict_idle_result_ids();
    }

    /// Writes allocation counters of every test that allocated since the last call (or of every
    /// test when `all`), and flushes. The writes run on the blocking pool: the store may be
    /// busy with a sync.
    pub async fn persist_allocations(&self, all: bool) -> Result<()> {
        let this = self.clone();
        let written = tokio::task::spawn_blocking(move || this.write_allocations(all))
            .await
            .map_err(|e| ExperimentError::Io {
                context: "persisting allocation counts".into(),
                source: std::io::Error::other(e),
            })??;
        if written > 0 {
            self.inner.storage.flush().await?;
        }
        Ok(())
    }

    /// [`Experiments::persist_allocations`] of every test on the calling thread (shutdown).
    pub fn persist_allocations_blocking(&self) -> Result<()> {
        if self.write_allocations(true)? > 0 {
            self.inner.storage.flush_blocking()?;
        }
        Ok(())
    }

    /// Applies the allocation records of the tests that allocated since the last call (or of
    /// every test when `all`); returns how many. Blocks on the store.
    fn write_allocations(&self, all: bool) -> Result<usize> {
        // Records are independent, so they are applied in chunks: one store batch of 10k
        // records (every test allocating) made a transient peak of ~20 MB that the allocator
        // kept. For the same reason the log is synced every few chunks: until then it buffers
        // each chunk's entry and the store keeps what undoes it.
        // The tests are listed first: a log sync must not run while the map's shard locks are
        // held (a test creation would wait for it on a runtime thread).
        let tests: Vec<Arc<TestState>> = self
            .inner
            .tests
            .iter()
            .map(|entry| entry.value().clone())
            .collect();
        let mut batch = WriteBatch::new();
        let mut written = 0usize;
        let mut chunks = 0usize;
        for state in tests {
            if state.take_allocations_dirty() || all {
                batch.put(
                    keys::test_allocations(state.config.test_id.as_str()),
                    &state.allocation_record(),
                )?;
                written += 1;
                if batch.len() >= ALLOCATION_PERSIST_CHUNK {
                    self.inner.storage.apply(std::mem::take(&mut batch))?;
                    chunks += 1;
                    if chunks.is_multiple_of(ALLOCATION_PERSIST_SYNC_CHUNKS) {
                        self.inner.storage.sync_blocking()?;
                    }
                }
            }
        }
        self.inner.storage.apply(batch)?;
        Ok(written)
    }

    /// Copies the engine's counters into the metrics facade (a no-op without a recorder): per-arm
    /// allocations and results of at most `MAX_LABELLED_TESTS` active tests, tests by status, and
    /// the database size.
    fn export_metrics(&self) {
        let mut by_status = [0u64; 4];
        let mut labelled = 0;
        for entry in self.inner.tests.iter() {
            let state = entry.value();
            let status = state.status();
            by_status[status as usize] += 1;
            if status.is_ended() || labelled >= crate::metrics::MAX_LABELLED_TESTS {
                continue;
            }
            labelled += 1;
            let mut allocations = state.allocation_record().counts;
            let results: Vec<u64> = {
                let book = state.book.lock();
                // Decisions clients drew in their own process count too, as in the results.
                for (total, c) in allocations.iter_mut().zip(&book.stats.client.counts) {
                    *total = total.saturating_add(*c);
                }
                book.stats.arms.iter().map(|a| a.n).collect()
            };
            for (i, arm) in state.config.arms.iter().enumerate() {
                let labels = [
                    ("test", entry.key().to_string()),
                    ("arm", arm.arm_id.to_string()),
                ];
                metrics::counter!("arbiter_allocations_total", &labels).absolute(allocations[i]);
                metrics::counter!("arbiter_results_total", &labels).absolute(results[i]);
            }
        }
        for status in [
            TestStatus::Running,
            TestStatus::Paused,
            TestStatus::Completed,
            TestStatus::Cancelled,
        ] {
            metrics::gauge!("arbiter_tests", "status" => status.name())
                .set(by_status[status as usize] as f64);
        }
        if let Ok(bytes) = self.inner.storage.size_on_disk() {
            metrics::gauge!("arbiter_storage_bytes").set(bytes as f64);
        }
    }

    /// Drops in-memory result-id indexes no batch has used for [`result_ids::IDLE_EVICTION`]; a
    /// test's index is skipped while a writer holds it.
    fn evict_idle_result_ids(&self) {
        for entry in self.inner.tests.iter() {
            if let Some(mut ids) = entry.value().result_ids.try_lock() {
                ids.evict_if_idle(result_ids::IDLE_EVICTION);
            }
        }
    }

    fn state(&self, test_id: &str) -> Result<Arc<TestState>> {
        self.inner
            .tests
            .get(test_id)
            .map(|e| e.value().clone())
            .ok_or_else(|| ExperimentError::NotFound {
                test_id: test_id.to_string(),
            })
    }
}

impl ModelUsage for Experiments {
    fn live_performance(&self, model_id: &ModelId) -> LivePerformance {
        let mut pooled = posterior::ArmStats::default();
        let mut tests = 0;
        let mut drift = Vec::new();
        for entry in self.inner.tests.iter() {
            let state = entry.value();
            let arms: Vec<usize> = (0..state.config.arms.len())
                .filter(|&i| &state.config.arms[i].model.id().model_id == model_id)
                .collect();
            if arms.is_empty() {
                continue;
            }
            tests += 1;
            let book = state.book.lock();
            for i in arms {
                pooled.merge(&book.stats.arms[i]);
                let track = &book.stats.tracks[i];
                if let Some(last) = track.last_drift() {
                    drift.push(ArmDrift {
                        test_id: state.config.test_id.to_string(),
                        arm_id: state.config.arms[i].arm_id.to_string(),
                        registry_id: state.config.arms[i].model.to_string(),
                        alarms: track.drift_alarms(),
                        last_at: last.at,
                        last_direction: last.direction,
                    });
                }
            }
        }
        drift.sort_by(|a, b| (&a.test_id, &a.arm_id).cmp(&(&b.test_id, &b.arm_id)));
        LivePerformance {
            results: pooled.n,
            mean_return: pooled.mean,
            sharpe_ratio: pooled.sharpe(),
            win_rate: pooled.win_rate(),
            tests,
            drift,
        }
    }
}
