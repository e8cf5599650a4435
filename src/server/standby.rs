//! Cluster mode, until this arbiter holds the writer lease: it follows the cluster's log and
//! serves `Allocate` and every read from the state folded from it, as the writer appends it. It
//! forwards changes and results to the writer (at the address the writer lease names). Its
//! health says `arbiter.v1.Writer` NOT_SERVING, and `arbiter.v1.Storage` SERVING while it is
//! current (at most [`MAX_LAG`] behind the stream) and knows where the writer is.
//!
//! A tail thread receives the stream's messages from one ordered consumer as they are stored
//! ([`StreamLog::follow`]), applies each entry to the store ([`Storage::follow`]) and then to
//! the tests in memory ([`Experiments::follow`]). Allocations are that lag behind the writer:
//! a delivery and the apply.
//!
//! Once the lease is this arbiter's, the standby stops: new calls wait for the writer, calls
//! under way get a moment to finish (the rest end UNAVAILABLE), and the state is dropped. The
//! writer then opens the same data directory, whose store is current (only the entries since
//! its last checkpoint are replayed), and serves the same connections.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::forward::Forwarder;
use super::held_lease::HeldLease;
use super::{Domain, Phases, ServerConfig, ServerError};
use crate::audit::AuditLog;
use crate::cluster::allocation_reports::{self, TestAllocations};
use crate::cluster::{
    ArtifactBucket, ClusterOptions, FollowError, LeaseHolder, SnapshotBucket, StreamLog,
    WriterLease,
};
use crate::experiment::Experiments;
use crate::registry::replica::ArtifactReplica;
use crate::registry::{ModelUsage, Registry, RegistryConfig};
use crate::storage::{Log, Storage, StorageError};

/// How long the tail thread waits for new entries at a time (between its checks for a stop).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long it waits after a failed read (NATS out of reach, an election).
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How long the tail thread waits without entries before it checks that the stream did not
/// move on without it.
const QUIET_CHECK: Duration = Duration::from_secs(2);
/// How far behind the stream a standby may be and still report that it takes writes. A quiet
/// stream is checked every [`QUIET_CHECK`], so this must be well above it.
const MAX_LAG: Duration = Duration::from_secs(5);
/// How often a standby checkpoints its store, so that taking over replays little.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a standby that cannot open waits before trying again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// How long calls under way may take once the lease is this arbiter's.
pub(super) const HANDOVER_GRACE: Duration = Duration::from_secs(1);
/// How long the standby's state may take to be released before the writer opens.
pub(super) const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a standby needs from the server.
pub(super) struct Standby<'a> {
    pub(super) cluster: &'a ClusterOptions,
    /// This arbiter in the writer lease.
    pub(super) holder: &'a LeaseHolder,
    pub(super) phases: &'a Phases<'a>,
}

impl Standby<'_> {
    /// Follows the log and serves until the writer lease is this arbiter's (`Some`) or
    /// `shutdown` resolves (`None`).
    pub(super) async fn run<S: Future<Output = ()> + Unpin>(
        &self,
        shutdown: &mut S,
    ) -> Result<Option<HeldLease>, ServerError> {
        let (held_elsewhere_tx, mut held_elsewhere) = tokio::sync::watch::channel(None);
        // While a follower runs, the lease is taken only when its view is known current: one
        // that took it during a NATS election would open slowly (Allocate waiting meanwhile)
        // where the writer could simply have kept it.
        let following: parking_lot::Mutex<Option<Arc<Freshness>>> = Default::default();
        let may_take = || {
            following
                .lock()
                .as_ref()
                .is_none_or(|view| view.behind().is_some_and(|behind| behind <= MAX_LAG))
        };
        let acquire =
            WriterLease::acquire(self.cluster, self.holder, &held_elsewhere_tx, &may_take);
        tokio::pin!(acquire);
        // Nothing to follow until another arbiter writes: the lease is then this one's.
        tokio::select! {
            lease = &mut acquire => return Ok(Some(HeldLease::keep(lease?))),
            () = &mut *shutdown => return Ok(None),
            _ = held_elsewhere.wait_for(Option::is_some) => {}
        }
        let forwarder = Forwarder::new(
            held_elsewhere.clone(),
            self.phases.cluster_key.clone(),
            self.phases.peer_tls.cloned().unwrap_or_default(),
        );
        let mut last_error = None;
        loop {
            let opening = Follower::open(self.cluster, self.phases.config, self.phases.registry);
            tokio::pin!(opening);
            let opened = tokio::select! {
                lease = &mut acquire => {
                    let held = HeldLease::keep(lease?);
                    // The opening holds the data directory until it is done with it.
                    if let Ok(follower) = opening.await {
                        if let Err(e) = follower.close().await {
                            held.release().await;
                            return Err(e);
                        }
                    }
                    return Ok(Some(held));
                }
                () = &mut *shutdown => return Ok(None),
                opened = &mut opening => opened,
            };
            let follower = match opened {
                Ok(follower) => follower,
                Err(e) => {
                    let why = e.to_string();
                    if last_error.as_ref() != Some(&why) {
                        tracing::warn!(error = %why, "cannot follow the cluster's log yet; retrying every second");
                        last_error = Some(why);
                    }
                    tokio::select! {
                        lease = &mut acquire => return Ok(Some(HeldLease::keep(lease?))),
                        () = &mut *shutdown => return Ok(None),
                        () = tokio::time::sleep(REOPEN_INTERVAL) => continue,
                    }
                }
            };
            last_error = None;
            let installed = self.phases.switch.install(
                follower.domain.routes(self.phases.config),
                Some(forwarder.clone()),
            );
            super::report_status(self.phases.health, tonic_health::ServingStatus::Serving).await;
            super::report_writer(self.phases.health, tonic_health::ServingStatus::NotServing).await;
            // Writes (forwarded) only once it is known to be current and where the writer is.
            super::report_storage(self.phases.health, tonic_health::ServingStatus::NotServing)
                .await;
            *following.lock() = Some(follower.freshness.clone());
            let reporting = tokio::spawn(report_writes(
                self.phases.health.clone(),
                follower.domain.experiments.clone(),
                follower.freshness.clone(),
                forwarder.clone(),
                self.cluster.lease_ttl,
                self.phases.config.security.auth_file.is_some(),
            ));
            tracing::info!(
                addr = %self.phases.local,
                "standing by: following the cluster's log and serving Allocate and reads"
            );
            let mut broken = follower.broken.clone();
            let outcome = tokio::select! {
                // Kept from now on: closing the standby's state may take a while.
                lease = &mut acquire => Some(lease.map(|lease| Some(HeldLease::keep(lease)))),
                () = &mut *shutdown => Some(Ok(None)),
                _ = broken.wait_for(Option::is_some) => None,
            };
            reporting.abort();
            let _ = reporting.await;
            *following.lock() = None;
            super::report_storage(self.phases.health, tonic_health::ServingStatus::NotServing)
                .await;
            installed.end(HANDOVER_GRACE).await;
            if let Err(e) = follower.close().await {
                if let Some(Ok(Some(held))) = outcome {
                    held.release().await;
                }
                return Err(e);
            }
            if let Some(outcome) = outcome {
                return Ok(outcome?);
            }
        }
    }
}

/// A standby's state: the store following the log, and the domain over it.
struct Follower {
    domain: Domain,
    /// Kept while the registry reads live performance from the tests.
    _usage: Arc<dyn ModelUsage>,
    /// Why the tail thread stopped following, once it has (the standby then opens again).
    broken: tokio::sync::watch::Receiver<Option<String>>,
    /// How far behind the stream the tail thread may be.
    freshness: Arc<Freshness>,
    stop: Arc<AtomicBool>,
    tail: Option<std::thread::JoinHandle<()>>,
    /// Ends the task that reports this standby's allocation counts to the writer.
    stop_reporting: tokio::sync::watch::Sender<bool>,
    reporting: Option<tokio::task::JoinHandle<()>>,
}

impl Follower {
    /// Opens the data directory's store over the cluster's log (restored from the newest
    /// snapshot beside it when needed), the registry and the tests, and starts following.
    async fn open(
        cluster: &ClusterOptions,
        config: &ServerConfig,
        registry: &RegistryConfig,
    ) -> Result<Self, ServerError> {
        let (storage, log) = {
            let cluster = cluster.clone();
            let data_dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
                let log = Arc::new(StreamLog::open_reader(&cluster)?);
                let snapshots = SnapshotBucket::open(&cluster)?;
                let storage = Storage::open_following(
                    &data_dir,
                    log.clone(),
                    &crate::state::Fold,
                    Some(&snapshots),
                )?;
                Ok((Arc::new(storage), log))
            })
            .await
            .map_err(|e| StorageError::Replicated(format!("opening the cluster's log: {e}")))??
        };
        let audit = Arc::new(AuditLog::open(&storage)?);
        let bucket: Arc<dyn ArtifactReplica> = Arc::new(ArtifactBucket::open(cluster).await?);
        let registry = Registry::open_replicated(
            storage.clone(),
            audit.clone(),
            registry.clone(),
            Some(bucket),
        )?;
        let experiments = Experiments::open_following(
            storage.clone(),
            audit.clone(),
            registry.clone(),
            config.ingest,
        )?;
        let usage: Arc<dyn ModelUsage> = Arc::new(experiments.clone());
        registry.set_usage(&usage);
        let (broken_tx, broken) = tokio::sync::watch::channel(None);
        let stop = Arc::new(AtomicBool::new(false));
        let freshness = Arc::new(Freshness::new());
        let tail = Tailing {
            storage: storage.clone(),
            experiments: experiments.clone(),
            log,
            stop: stop.clone(),
            freshness: freshness.clone(),
        };
        let tail = std::thread::Builder::new()
            .name("arbiter-follow".into())
            .spawn(move || {
                let why = tail.run();
                broken_tx.send_replace(why);
            })
            .map_err(|e| StorageError::Io {
                context: "starting the thread that follows the cluster's log".into(),
                source: e,
            })?;
        let (stop_reporting, stopped) = tokio::sync::watch::channel(false);
        let reporting = {
            let cluster = cluster.clone();
            let experiments = experiments.clone();
            tokio::spawn(async move {
                let counted = || {
                    experiments
                        .counted_here()
                        .into_iter()
                        .map(|(test_id, record)| TestAllocations {
                            test_id,
                            counts: record.counts,
                            expected: record.expected,
                        })
                        .collect()
                };
                allocation_reports::report(&cluster, counted, stopped).await;
            })
        };
        Ok(Self {
            domain: Domain {
                storage,
                audit,
                registry,
                experiments,
            },
            _usage: usage,
            broken,
            freshness,
            stop,
            tail: Some(tail),
            stop_reporting,
            reporting: Some(reporting),
        })
    }

    /// Stops following and drops the state; returns once the data directory is free for the
    /// next opening.
    async fn close(mut self) -> Result<(), ServerError> {
        // A last report first: the counts since the previous one reach the writer if it is
        // there (the report task sends what it has before it stops).
        self.stop_reporting.send_replace(true);
        if let Some(reporting) = self.reporting.take() {
            let _ = reporting.await;
        }
        self.stop.store(true, Ordering::Release);
        if let Some(tail) = self.tail.take() {
            let _ = tokio::task::spawn_blocking(move || tail.join()).await;
        }
        self.domain.experiments.shutdown().await;
        let data_dir = self.domain.storage.data_dir().to_path_buf();
        let storage = self.domain.storage.clone();
        drop(self);
        // A last checkpoint, so that the next opening replays little; then the store closes.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = storage.checkpoint() {
                tracing::warn!(error = %e, "checkpointing the standby's store failed");
            }
            drop(storage);
            crate::storage::wait_until_released(&data_dir, RELEASE_TIMEOUT)
        })
        .await
        .ok()
        .filter(|&released| released)
        .map(|_| ())
        .ok_or_else(|| {
            ServerError::Storage(StorageError::Replicated(format!(
                "the standby's store was not released within {RELEASE_TIMEOUT:?}"
            )))
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // Also when an opening step after this one fails: the tail thread ends.
        self.stop.store(true, Ordering::Release);
    }
}

/// The tail thread's state.
struct Tailing {
    storage: Arc<Storage>,
    experiments: Experiments,
    log: Arc<StreamLog>,
    stop: Arc<AtomicBool>,
    freshness: Arc<Freshness>,
}

impl Tailing {
    /// Follows the stream until stopped (`None`) or until it cannot go on (why).
    fn run(self) -> Option<String> {
        // From the stream's start, as the opening read it: entries the store holds are passed
        // over, and the writer whose entries count is learned the same way.
        let held_through = self.log.read_through();
        let mut following = self
            .log
            .follow(self.log.first_position(), held_through, None);
        let mut failing = false;
        let mut checkpointed = Instant::now();
        let mut quiet_since = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            if checkpointed.elapsed() >= CHECKPOINT_INTERVAL {
                checkpointed = Instant::now();
                if let Err(e) = self.storage.checkpoint() {
                    tracing::warn!(error = %e, "checkpointing the standby's store failed");
                }
            }
            let entries = match following.next(POLL_INTERVAL) {
                Ok(entries) if entries.is_empty() => {
                    // Quiet: whether the stream holds nothing more is asked of JetStream every
                    // QUIET_CHECK (without a quorum it cannot answer, and the standby is not
                    // current). A consumer that went quiet while the stream moved on is replaced.
                    if quiet_since.elapsed() >= QUIET_CHECK {
                        quiet_since = Instant::now();
                        // Parts of an entry its writer never completed (it died while
                        // publishing them) may be all there is: nothing more to apply.
                        match self.log.last_position() {
                            Ok(last) if last > following.received_through() => {
                                let from = following.resume_from();
                                tracing::warn!(
                                    from,
                                    "the log's consumer went quiet behind the stream; following again"
                                );
                                following = self.log.follow(from, held_through, following.writer());
                            }
                            Ok(_) => self.freshness.current(),
                            Err(_) => {}
                        }
                    }
                    continue;
                }
                Ok(entries) => {
                    quiet_since = Instant::now();
                    if failing {
                        failing = false;
                        tracing::info!("reading the cluster's log again");
                    }
                    entries
                }
                Err(FollowError::Trimmed { missing }) => {
                    return Some(format!(
                        "the stream was trimmed past positions {} to {} before this standby \
                         read them",
                        missing.0,
                        missing.1 - 1
                    ))
                }
                Err(FollowError::Failed(why)) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %why, "reading the cluster's log failed; serving the last state read while retrying");
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                    following =
                        self.log
                            .follow(following.resume_from(), held_through, following.writer());
                    continue;
                }
            };
            for entry in entries {
                let position = entry.position;
                let followed = self
                    .storage
                    .follow(entry, &crate::state::Fold)
                    .map_err(|e| e.to_string())
                    .and_then(|f| self.experiments.follow(f).map_err(|e| e.to_string()));
                if let Err(why) = followed {
                    tracing::error!(position, error = %why, "cannot apply the cluster's log entry; opening again");
                    return Some(why);
                }
            }
            if following.caught_up() {
                self.freshness.current();
            }
        }
        None
    }
}

/// Reports whether the standby takes writes (`arbiter.v1.Storage`): SERVING while it is at most
/// [`MAX_LAG`] behind the stream and can forward to the writer (seen refreshing its lease
/// within `lease_ttl`), NOT_SERVING otherwise (NATS out of reach, writer down); logs each
/// change. Runs until aborted.
async fn report_writes(
    health: tonic_health::server::HealthReporter,
    experiments: Experiments,
    freshness: Arc<Freshness>,
    forwarder: Arc<Forwarder>,
    lease_ttl: Duration,
    needs_key: bool,
) {
    let mut reported: Option<Result<(), String>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = match freshness.behind() {
            Some(behind) if behind <= MAX_LAG => forwarder.ready(lease_ttl, needs_key),
            Some(behind) => Err(format!(
                "{:.1} s behind the cluster's log (NATS out of reach, or the log arrives slower \
                 than it is applied)",
                behind.as_secs_f64()
            )),
            None => Err("not yet caught up with the cluster's log".into()),
        };
        // Watching clients hear heartbeats only while the tables here are current.
        experiments.set_view_current(now.is_ok());
        // The lag's figure changes every tick: only a change of state is reported.
        if reported.as_ref().map(Result::is_ok) == Some(now.is_ok()) {
            continue;
        }
        let status = match &now {
            Ok(()) => {
                tracing::info!("standby takes writes (forwarded to the writer)");
                tonic_health::ServingStatus::Serving
            }
            Err(why) if reported.is_some() => {
                tracing::warn!(reason = %why, "standby does not take writes");
                tonic_health::ServingStatus::NotServing
            }
            Err(_) => tonic_health::ServingStatus::NotServing,
        };
        super::report_storage(&health, status).await;
        reported = Some(now);
    }
}

/// When a standby last knew it had applied everything the stream held: its lag behind the
/// writer is at most the time since.
#[derive(Debug)]
pub(super) struct Freshness {
    start: Instant,
    /// Milliseconds from `start`; `u64::MAX`: never.
    current_at: std::sync::atomic::AtomicU64,
}

impl Freshness {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            current_at: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// Everything the stream held is applied now.
    fn current(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.current_at.store(now, Ordering::Release);
    }

    /// How long since everything was applied (`None`: never yet).
    fn behind(&self) -> Option<Duration> {
        let at = self.current_at.load(Ordering::Acquire);
        (at != u64::MAX).then(|| {
            self.start
                .elapsed()
                .saturating_sub(Duration::from_millis(at))
        })
    }
}
