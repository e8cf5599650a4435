//! The composition root: opens storage, builds the domain and the gRPC services (plus health and
//! reflection), serves on an already-bound listener until `shutdown` resolves, then drains
//! in-flight calls and flushes storage.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::audit::AuditLog;
use crate::cluster::allocation_reports::{self, TestAllocations};
use crate::cluster::{ArtifactBucket, ClusterOptions, SnapshotBucket, StreamLog};
use crate::experiment::{ExperimentError, Experiments, IngestLimits};
use crate::grpc::{AdminService, AllocatorService, ExperimentsService, RegistryService};
use crate::pb;
use crate::registry::replica::ArtifactReplica;
use crate::registry::{ModelUsage, Registry, RegistryConfig, RegistryError};
use crate::storage::{Storage, StorageError};

mod connection;
mod forward;
mod held_lease;
pub mod security;
mod snapshots;
mod standby;
mod switch;

pub use security::{SecurityConfig, TlsFiles};

/// Receive window of one HTTP/2 stream: the protocol's default size.
const STREAM_WINDOW: u32 = 64 * 1024;
/// Receive window of one connection. h2 closes a connection (GOAWAY ENHANCE_YOUR_CALM,
/// "too_many_data_frames") once the small DATA frames it holds unread cost more than half of
/// this window in framing overhead, 256 − size bytes each. A pipelining client whose responses
/// back up is stopped by flow control after one stream window: with 64 KiB, even 5-byte
/// messages one per frame (the smallest gRPC message) cost 3.3 MB, under the 4 MiB budget, so
/// such a client waits instead of being disconnected; real floods (frames beyond flow control,
/// empty frames) are still refused.
const CONNECTION_WINDOW: u32 = 8 << 20;
/// Streams one connection may have open at once (clients queue beyond it).
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// An idle connection is pinged this often, and closed when a ping is not answered in
/// [`KEEPALIVE_TIMEOUT`]: dead peers do not hold streams, uploads and memory for ever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory (the store, artifacts, results).
    pub data_dir: PathBuf,
    /// Registry settings.
    pub registry: RegistryConfig,
    /// How long shutdown waits for in-flight calls and open connections before closing them.
    pub shutdown_grace: Duration,
    /// Where to serve Prometheus metrics (`None`: no metrics).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What result ingestion accepts.
    pub ingest: IngestLimits,
    /// Authentication and TLS.
    pub security: SecurityConfig,
    /// Cluster mode: the log in NATS JetStream (`None`: the journal under the data directory).
    pub cluster: Option<ClusterOptions>,
    /// A client watching allocation tables gets a test's new table at most once per this.
    pub watch_coalesce: Duration,
}

impl ServerConfig {
    /// The defaults on `data_dir`: what `arbiter serve --data-dir <dir>` runs with.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            registry: RegistryConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            metrics_listen: None,
            ingest: IngestLimits::default(),
            security: SecurityConfig::default(),
            cluster: None,
            watch_coalesce: crate::grpc::watch::DEFAULT_COALESCE,
        }
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Opening or flushing storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Cluster mode: this arbiter stopped writing (lost lease, failed log) and could not go
    /// back to following the log.
    #[error("cluster: {0}; exiting")]
    LeaseLost(String),
    /// Opening the registry failed.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// Opening the experiment engine failed.
    #[error("experiments: {0}")]
    Experiments(#[from] ExperimentError),
    /// The metrics exporter could not start.
    #[error("metrics: {0}")]
    Metrics(String),
    /// Building the reflection service failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The auth file or TLS settings cannot be used, or the server would be open to the network.
    #[error("security: {0}")]
    Security(String),
    /// Shutdown's final flush did not finish in time.
    #[error("the final flush did not finish within {} s", .0.as_secs())]
    ShutdownTimeout(Duration),
}

/// Cluster mode's log and the snapshots kept beside it.
type Replicated = (Arc<StreamLog>, Arc<SnapshotBucket>);

/// Opens the storage `config` asks for: the data directory's own journal, or in cluster mode
/// the JetStream stream (and its snapshot bucket), folded into the data directory's store.
async fn open_storage(
    config: &ServerConfig,
) -> Result<(Storage, Option<Replicated>), StorageError> {
    let Some(cluster) = config.cluster.clone() else {
        return crate::state::open_storage(&config.data_dir).map(|storage| (storage, None));
    };
    let data_dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let log = Arc::new(StreamLog::open(&cluster)?);
        let bucket = Arc::new(SnapshotBucket::open(&cluster)?);
        let storage =
            Storage::open_on_log(&data_dir, log.clone(), &crate::state::Fold, Some(&*bucket))?;
        Ok((storage, Some((log, bucket))))
    })
    .await
    .map_err(|e| StorageError::Replicated(format!("opening the cluster's log: {e}")))?
}

/// Cluster mode, while serving: removes objects a crash left in the artifact bucket without a
/// version, and fetches the artifacts this node's disk lacks.
async fn prepare_artifacts(registry: &Registry) {
    match registry.reconcile_replica(None).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(
            removed,
            "removed artifacts no version names from the object store"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not check the object store for unregistered artifacts")
        }
    }
    let fetched = registry.fetch_missing_artifacts().await;
    if fetched > 0 {
        tracing::info!(
            fetched,
            "fetched artifacts this node lacked from the object store"
        );
    }
}

/// How every phase of serving takes calls: authentication, TLS, limits and metrics.
struct Transport {
    auth: Option<Arc<crate::auth::Authenticator>>,
    /// Cluster mode: the key that makes calls forwarded by other arbiters their callers'.
    cluster_key: crate::grpc::forwarded::ClusterKey,
    tls: Option<tonic::transport::ServerTlsConfig>,
    rate_limits: crate::auth::RateLimits,
    rpc_metrics: Option<crate::metrics::RpcMetricsLayer>,
}

/// The state one phase serves.
struct Domain {
    storage: Arc<Storage>,
    audit: Arc<AuditLog>,
    registry: Registry,
    experiments: Experiments,
}

impl Transport {
    /// The server on `listener`, until `shutdown` resolves: then it answers no new call and
    /// waits for the calls under way. It serves health and reflection itself, and the arbiter
    /// services of whatever phase `switch` holds.
    fn serve<H: tonic_health::pb::health_server::Health>(
        &self,
        switch: &switch::Switch,
        health: tonic_health::pb::health_server::HealthServer<H>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, ServerError> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)))
            .map(|accepted| accepted.map(connection::LoggedConnection::new));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls.clone() {
            builder = builder.tls_config(tls)?;
        }
        Ok(builder
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .layer(tower::util::option_layer(self.rpc_metrics.clone()))
            .layer(crate::grpc::authn::AuthLayer::new(
                self.auth.clone(),
                self.cluster_key.clone(),
            ))
            .layer(crate::grpc::admission::AdmissionLayer::new(
                self.rate_limits,
            ))
            .layer(switch.layer())
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, shutdown))
    }
}

impl Domain {
    /// The arbiter services over this state.
    fn routes(&self, config: &ServerConfig) -> tonic::service::Routes {
        tonic::service::Routes::new(RegistryService::new(self.registry.clone()).into_server())
            .add_service(AdminService::new(self.storage.clone(), self.audit.clone()).into_server())
            .add_service(ExperimentsService::new(self.experiments.clone()).into_server())
            .add_service(
                AllocatorService::new(self.experiments.clone())
                    .with_watch_coalesce(config.watch_coalesce)
                    .into_server(),
            )
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if let Some(addr) = config.metrics_listen {
        crate::metrics::install(addr).map_err(ServerError::Metrics)?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let auth = config.security.authenticator()?;
    let tls = config.security.tls()?;
    let bound = listener
        .local_addr()
        .map_err(|e| ServerError::Security(format!("reading the listening address: {e}")))?;
    config.security.check_exposure(auth.is_some(), bound)?;
    if let Some(auth) = &auth {
        config
            .security
            .warn_about(auth, config.registry.allow_self_approval);
    }
    let mut registry_config = config.registry.clone();
    if let Some(signers) = config.security.trusted_signers()? {
        registry_config.trusted_signers = Arc::new(signers);
    } else if registry_config.require_signed_production {
        return Err(ServerError::Security(
            "--require-signed-production needs --trusted-signers".into(),
        ));
    }
    let cluster_key = crate::grpc::forwarded::ClusterKey::default();
    let transport = Transport {
        auth: auth.clone(),
        cluster_key: cluster_key.clone(),
        tls,
        rate_limits: config.security.rate_limits,
        rpc_metrics: match config.metrics_listen {
            Some(_) => Some(rpc_metrics_layer()?),
            None => None,
        },
    };
    // The server's own background tasks end on this signal and are awaited at shutdown.
    let (stop_tasks, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(auth) = &auth {
        tasks.push(tokio::spawn(security::reload_on_sighup(
            Arc::downgrade(auth),
            stopped.clone(),
        )));
    }
    if let Some(cluster) = &config.cluster {
        tasks.push(tokio::spawn(read_cluster_key(
            cluster.clone(),
            cluster_key.clone(),
            stopped.clone(),
        )));
    }
    // The signal, as a flag every phase can wait for (a standby stops at once on SIGTERM).
    let signal_tx = Arc::new(tokio::sync::watch::channel(false).0);
    let signal = signal_tx.subscribe();
    {
        let signal_tx = signal_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal_tx.send_replace(true);
        });
    }
    // Cluster mode: one arbiter writes the log; the others follow it and serve reads until
    // they take over, and a writer that loses the lease follows again. One server serves
    // throughout: connections stay open while the phases change.
    let listener =
        TcpListener::from_std(listener.into_std().map_err(|e| {
            ServerError::Security(format!("taking the listening socket over: {e}"))
        })?)
        .map_err(|e| ServerError::Security(format!("listening: {e}")))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let switch = switch::Switch::new();
    let (health, health_service) = tonic_health::server::health_reporter();
    // Nothing is served until the first phase opens.
    report_status(&health, tonic_health::ServingStatus::NotServing).await;
    let grace = config.shutdown_grace;
    let (shutdown, drain_deadline) =
        draining(signalled(signal.clone()), health.clone(), move || grace);
    let serve = transport.serve(&switch, health_service, listener, shutdown)?;
    // Set once the server stopped after the signal: its calls are done, or the grace is over.
    let (drained_tx, drained) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let served = tokio::select! {
            served = serve => served,
            () = drain_deadline => {
                tracing::warn!(grace_secs = grace.as_secs_f64(), "drain grace period over; closing remaining connections");
                Ok(())
            }
        };
        drained_tx.send_replace(true);
        served
    });
    let peer_tls = match &config.cluster {
        Some(cluster) => Some(forward::peer_tls(
            cluster.peer_ca.as_deref(),
            config.security.tls.as_ref(),
        )?),
        None => None,
    };
    let phases = Phases {
        config: &config,
        registry: &registry_config,
        local: &local,
        bound,
        cluster_key: &cluster_key,
        peer_tls: peer_tls.as_ref(),
        switch: &switch,
        health: &health,
        drained,
    };
    let outcome = loop {
        let lease = match &config.cluster {
            Some(cluster) => match phases.stand_by(cluster, signal.clone()).await {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => {
                    tracing::info!("stopped while standing by");
                    break Ok(());
                }
                Err(e) => break Err(e),
            },
            None => None,
        };
        match phases.write(lease, signal.clone()).await {
            Ok(Written::Stopped(finished)) => break finished,
            Ok(Written::LeaseLost(why)) => {
                tracing::warn!(reason = %why, "stopped writing; following the cluster's log again");
            }
            Err(e) => break Err(e),
        }
    };
    stop_tasks.send_replace(true);
    for task in tasks {
        let _ = task.await;
    }
    // An error before the signal (a phase that could not open) stops the server too.
    signal_tx.send_replace(true);
    let served = server.await;
    match (outcome, served) {
        (Err(e), _) => Err(e),
        (Ok(()), Ok(Err(e))) => Err(e.into()),
        (Ok(()), _) => Ok(()),
    }
}

/// Cluster mode: reads the cluster's forwarding key into `key` (made on first use), retrying
/// every second while NATS is out of reach, until `stopped`.
async fn read_cluster_key(
    cluster: ClusterOptions,
    key: crate::grpc::forwarded::ClusterKey,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut warned = false;
    loop {
        let read = tokio::select! {
            read = crate::cluster::trust::shared_key(&cluster) => read,
            _ = stopped.wait_for(|&stop| stop) => return,
        };
        match read {
            Ok(read) => {
                key.set(read);
                return;
            }
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot read the cluster's forwarding key yet: standbys cannot forward calls to or from this arbiter; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.wait_for(|&stop| stop) => return,
        }
    }
}

/// Resolves once `signal` is set.
async fn signalled(mut signal: tokio::sync::watch::Receiver<bool>) {
    let _ = signal.wait_for(|&set| set).await;
}

/// How a writing phase ended.
enum Written {
    /// On the signal: how its final steps went.
    Stopped(Result<(), ServerError>),
    /// The writer lease was lost, or the replicated log failed (why): the arbiter stands by.
    LeaseLost(String),
}

/// What every phase of one server shares.
struct Phases<'a> {
    config: &'a ServerConfig,
    registry: &'a RegistryConfig,
    /// The address served, for the log.
    local: &'a str,
    bound: std::net::SocketAddr,
    /// Cluster mode: the key forwarded calls carry.
    cluster_key: &'a crate::grpc::forwarded::ClusterKey,
    /// Cluster mode: how to reach the writer over https.
    peer_tls: Option<&'a tonic::transport::ClientTlsConfig>,
    switch: &'a switch::Switch,
    health: &'a tonic_health::server::HealthReporter,
    /// Set once the server stopped after the signal.
    drained: tokio::sync::watch::Receiver<bool>,
}

impl Phases<'_> {
    /// Cluster mode: follows the log and serves reads until the writer lease is this arbiter's
    /// (`Some`), or until the signal (`None`).
    async fn stand_by(
        &self,
        cluster: &ClusterOptions,
        signal: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<held_lease::HeldLease>, ServerError> {
        // Unique even across containers that share an address and a pid: a refresh must
        // never take another arbiter's lease for its own.
        let holder = crate::cluster::LeaseHolder {
            name: format!(
                "{} (pid {}, {:016x})",
                self.bound,
                std::process::id(),
                rand::random::<u64>()
            ),
            address: self.advertised(cluster),
        };
        if holder.address.is_none() {
            tracing::warn!(listen = %self.bound, "no address to advertise (listening on an unspecified address without --cluster-advertise): while this arbiter writes, the others cannot forward changes and results to it");
        }
        let standby = standby::Standby {
            cluster,
            holder: &holder,
            phases: self,
        };
        standby.run(&mut Box::pin(signalled(signal))).await
    }

    /// The URL other arbiters forward calls to this one at: `--cluster-advertise`, else the
    /// listening address unless it is unspecified.
    fn advertised(&self, cluster: &ClusterOptions) -> Option<String> {
        if let Some(url) = &cluster.advertise {
            return Some(url.clone());
        }
        if self.bound.ip().is_unspecified() {
            return None;
        }
        let scheme = match self.config.security.tls {
            Some(_) => "https",
            None => "http",
        };
        Some(format!("{scheme}://{}", self.bound))
    }

    /// Opens the data directory (over the cluster's log in cluster mode): its storage, the
    /// cluster's log and snapshots, the audit log, the registry and the tests.
    async fn open_writer(
        &self,
    ) -> Result<
        (
            Arc<Storage>,
            Option<Replicated>,
            Arc<AuditLog>,
            Registry,
            Experiments,
        ),
        ServerError,
    > {
        let config = self.config;
        let (storage, replicated) = open_storage(config).await?;
        let storage = Arc::new(storage);
        let audit = Arc::new(AuditLog::open(&storage)?);
        let artifact_bucket = match &config.cluster {
            Some(cluster) => {
                let bucket: Arc<dyn ArtifactReplica> =
                    Arc::new(ArtifactBucket::open(cluster).await?);
                Some(bucket)
            }
            None => None,
        };
        let registry = Registry::open_replicated(
            storage.clone(),
            audit.clone(),
            self.registry.clone(),
            artifact_bucket,
        )?;
        let experiments = Experiments::open(
            storage.clone(),
            audit.clone(),
            registry.clone(),
            config.ingest,
        )
        .await?;
        Ok((storage, replicated, audit, registry, experiments))
    }

    /// Opens the data directory (over the cluster's log when `lease` is held) and serves every
    /// call until the signal, or until the lease is lost.
    async fn write(
        &self,
        lease: Option<held_lease::HeldLease>,
        signal: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Written, ServerError> {
        let config = self.config;
        // This phase's background tasks end on this signal and are awaited at its end.
        let (stop_tasks, stopped) = tokio::sync::watch::channel(false);
        // Cluster mode: why this arbiter must stop writing (lost lease, failed log), once it
        // must, and whether the lease can be refreshed (NATS within reach). Never, without one.
        let (mut lease_lost, lease_unreachable) = match &lease {
            Some(held) => (held.lost.clone(), held.unreachable.clone()),
            None => (
                tokio::sync::watch::channel(None).1,
                tokio::sync::watch::channel(None).1,
            ),
        };
        let (storage, replicated, audit, registry, experiments) = match self.open_writer().await {
            Ok(opened) => opened,
            Err(e) => {
                if let Some(held) = lease {
                    held.release().await;
                }
                return Err(e);
            }
        };
        if let Some(held) = &lease {
            held.opened(&storage, replicated.as_ref().map(|(log, _)| log.clone()));
        }
        let usage: Arc<dyn ModelUsage> = Arc::new(experiments.clone());
        registry.set_usage(&usage);
        let domain = Domain {
            storage: storage.clone(),
            audit,
            registry: registry.clone(),
            experiments: experiments.clone(),
        };
        let installed = self.switch.install(domain.routes(config), None);
        drop(domain);
        let health_reporter = self.health.clone();
        report_status(&health_reporter, tonic_health::ServingStatus::Serving).await;

        let mut tasks = vec![tokio::spawn(watch_storage(
            Arc::downgrade(&storage),
            lease_unreachable,
            health_reporter.clone(),
            stopped.clone(),
        ))];
        let stream_log = replicated.as_ref().map(|(log, _)| log.clone());
        let snapshot_interval = config.cluster.as_ref().and_then(|c| c.snapshot_interval);
        if let (Some((log, bucket)), Some(every)) = (replicated, snapshot_interval) {
            tasks.push(tokio::spawn(snapshots::keep_snapshots(
                Arc::downgrade(&storage),
                log,
                bucket,
                every,
                lease_lost.clone(),
                stopped.clone(),
            )));
        }
        if let Some(cluster) = &config.cluster {
            let cluster = cluster.clone();
            let experiments = experiments.clone();
            let stopping = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let add = |counted: &TestAllocations| {
                    if let Err(e) = experiments.add_counted_elsewhere(
                        &counted.test_id,
                        &counted.counts,
                        &counted.expected,
                    ) {
                        tracing::debug!(test_id = %counted.test_id, error = %e, "a standby's allocation counts not added");
                    }
                };
                allocation_reports::collect(&cluster, add, stopping).await;
            }));
        }
        if config.cluster.is_some() {
            let registry = registry.clone();
            let mut stopping = stopped.clone();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    () = prepare_artifacts(&registry) => {}
                    _ = stopping.wait_for(|&stop| stop) => {}
                }
            }));
        }
        tracing::info!(addr = %self.local, data_dir = %config.data_dir.display(), "arbiter serving");

        {
            let mut lost = lease_lost.clone();
            let lease_lost_now = async move { lost.wait_for(Option::is_some).await.is_ok() };
            tokio::select! {
                () = signalled(signal) => {
                    // The server drains the calls under way (this phase's) first.
                    let mut drained = self.drained.clone();
                    let _ = drained.wait_for(|&done| done).await;
                    installed.end(Duration::ZERO).await;
                }
                // Without a lease (or once its keeper ends unlost) nothing is ever lost.
                true = lease_lost_now => {
                    // The log takes nothing more (the lease's keeper stopped it): background
                    // work ends now, and calls move on quickly.
                    stop_tasks.send_replace(true);
                    report_storage(&health_reporter, tonic_health::ServingStatus::NotServing).await;
                    report_writer(&health_reporter, tonic_health::ServingStatus::NotServing).await;
                    installed.end(standby::HANDOVER_GRACE).await;
                }
            }
        }

        stop_tasks.send_replace(true);
        for task in tasks {
            let _ = task.await;
        }
        experiments.shutdown().await;
        drop(usage);
        drop(registry);
        let data_dir = storage.data_dir().to_path_buf();
        let lost_now = lease_lost.borrow().clone();
        let finished = match (lost_now, stream_log) {
            // Nothing more is appended: another arbiter may write the log already, and entries
            // of this one landing after its start would fail its log. What the stream has not
            // acknowledged is undone in the store (the stream has the last word when it is
            // followed again).
            (Some(why), Some(log)) => {
                log.stop_writing(&why);
                drop(experiments);
                let closed = tokio::task::spawn_blocking(move || drop(storage)).await;
                closed.map_err(|e| {
                    ServerError::Storage(StorageError::Io {
                        context: "closing the store".into(),
                        source: std::io::Error::other(e),
                    })
                })
            }
            _ => final_steps(experiments, storage).await,
        };
        // Given up only once the log is synced and closed: a standby then takes over at once.
        if let Some(held) = lease {
            held.release().await;
        }
        let lost = lease_lost.borrow_and_update().clone();
        let Some(why) = lost else {
            return Ok(Written::Stopped(finished));
        };
        if let Err(e) = finished {
            tracing::warn!(error = %e, "the final steps after losing the lease failed");
        }
        // The store must be closed before it is followed.
        let released = tokio::task::spawn_blocking(move || {
            crate::storage::wait_until_released(&data_dir, standby::RELEASE_TIMEOUT)
        })
        .await
        .unwrap_or(false);
        if !released {
            return Err(ServerError::LeaseLost(format!(
                "{why}; and the store was not released within {:?}",
                standby::RELEASE_TIMEOUT
            )));
        }
        Ok(Written::LeaseLost(why))
    }
}

/// The shutdown signal the transport waits for (it first reports every service NOT_SERVING),
/// and a deadline that resolves `grace` after it: clients that keep idle connections open would
/// otherwise hold a graceful shutdown for ever.
fn draining(
    shutdown: impl Future<Output = ()> + Send + 'static,
    reporter: tonic_health::server::HealthReporter,
    grace: impl Fn() -> Duration + Send + 'static,
) -> (
    impl Future<Output = ()> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight calls");
        report_status(&reporter, tonic_health::ServingStatus::NotServing).await;
        let _ = draining_tx.send(());
    };
    let deadline = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(grace()).await,
            Err(_) => std::future::pending().await,
        }
    };
    (shutdown, deadline)
}

/// Every arbiter service and the storage reported as `status`.
async fn report_status(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Whether this arbiter is the writer, reported as `status`.
async fn report_writer(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status(WRITER_HEALTH, status).await;
}

/// The storage reported as `status` (whether this arbiter takes writes).
async fn report_storage(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status(STORAGE_HEALTH, status).await;
}

/// The health services the server reports: the server as a whole, each arbiter service, and
/// the storage.
const HEALTH_SERVICES: [&str; 7] = [
    "",
    "arbiter.v1.Registry",
    "arbiter.v1.Admin",
    "arbiter.v1.Experiments",
    "arbiter.v1.Allocator",
    STORAGE_HEALTH,
    WRITER_HEALTH,
];

/// Counts and times calls, labelled by the methods the server serves.
fn rpc_metrics_layer() -> Result<crate::metrics::RpcMetricsLayer, ServerError> {
    let known = crate::metrics::method_paths(&[
        pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
    .map_err(|e| ServerError::Metrics(format!("reading the served methods: {e}")))?;
    Ok(crate::metrics::RpcMetricsLayer::new(known))
}

/// After the last call: allocation counters and a last snapshot round (every journaled result
/// into the store, so the next start replays nothing), then everything is flushed. Bounded: a
/// failing disk or a data directory removed underneath must not keep the process from exiting.
async fn final_steps(experiments: Experiments, storage: Arc<Storage>) -> Result<(), ServerError> {
    let final_steps = tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
        experiments.persist_allocations_blocking()?;
        experiments.snapshot()?;
        // The round's own store batches are in the log after its cut; a second round, with
        // nothing queued, checkpoints and trims them, so a clean stop leaves an empty log.
        experiments.snapshot()?;
        drop(experiments);
        storage.flush_blocking()?;
        Ok(())
    });
    match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, final_steps).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!("storage flushed; bye");
            Ok(())
        }
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "final flush failed; what was acknowledged is durable, the rest is not");
            Err(e)
        }
        Ok(Err(join)) => Err(StorageError::Io {
            context: "final snapshot and flush".into(),
            source: std::io::Error::other(join),
        }
        .into()),
        Err(_) => {
            tracing::error!(
                timeout_secs = FINAL_FLUSH_TIMEOUT.as_secs(),
                "final flush did not finish in time; exiting without it"
            );
            Err(ServerError::ShutdownTimeout(FINAL_FLUSH_TIMEOUT))
        }
    }
}

/// The health service name that reports whether storage takes writes (on a cluster's standby:
/// whether it is current and can forward them to the writer).
pub const STORAGE_HEALTH: &str = "arbiter.v1.Storage";

/// The health service name that reports whether this arbiter writes the log: SERVING on a
/// single node and on a cluster's writer, NOT_SERVING on its standbys.
pub const WRITER_HEALTH: &str = "arbiter.v1.Writer";

/// How long shutdown waits for its final snapshot and flush.
pub const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// Reports storage faults every second (in cluster mode also a log whose entries JetStream
/// does not acknowledge, and a writer lease that cannot be refreshed: no NATS quorum within
/// reach): health `arbiter.v1.Storage` NOT_SERVING and the gauge
/// `arbiter_storage_fault` at 1 while one lasts (allocations keep being answered from memory),
/// and a log line when one starts or ends.
async fn watch_storage(
    storage: std::sync::Weak<Storage>,
    lease_unreachable: tokio::sync::watch::Receiver<Option<String>>,
    reporter: tonic_health::server::HealthReporter,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut current: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|&stop| stop) => return,
        }
        let Some(storage) = storage.upgrade() else {
            return;
        };
        let fault = storage
            .fault()
            .or_else(|| lease_unreachable.borrow().clone());
        drop(storage);
        if fault == current {
            continue;
        }
        let status = match &fault {
            Some(why) => {
                tracing::error!(fault = %why, "storage fault: writes fail; allocations are still answered");
                tonic_health::ServingStatus::NotServing
            }
            None => {
                tracing::info!("storage fault cleared");
                tonic_health::ServingStatus::Serving
            }
        };
        metrics::gauge!("arbiter_storage_fault").set(if fault.is_some() { 1.0 } else { 0.0 });
        reporter.set_service_status(STORAGE_HEALTH, status).await;
        current = fault;
    }
}
