//! Shared end-to-end test support: a real arbiter server on 127.0.0.1:0 with a data directory of
//! the test's choosing (in-process, or the `arbiter` binary as a child process in [`process`]),
//! gRPC clients, and helpers to register models.

#![allow(dead_code)]

pub(crate) mod nats;
pub(crate) mod process;
pub(crate) mod python;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbiter::pb::{
    self, admin_client::AdminClient, allocator_client::AllocatorClient,
    experiments_client::ExperimentsClient, registry_client::RegistryClient,
};
use arbiter::registry::RegistryConfig;
use arbiter::server::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A running server.
pub(crate) struct TestServer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), arbiter::server::ServerError>>>,
}

impl TestServer {
    /// Starts a server with default settings on `data_dir`.
    pub(crate) async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, RegistryConfig::default()).await
    }

    /// Starts a server with the given registry settings on `data_dir`.
    pub(crate) async fn start_with(data_dir: &Path, registry: RegistryConfig) -> Self {
        Self::start_full(data_dir, registry, None).await
    }

    /// Starts a server that also serves Prometheus metrics on `metrics`.
    pub(crate) async fn start_full(
        data_dir: &Path,
        registry: RegistryConfig,
        metrics: Option<std::net::SocketAddr>,
    ) -> Self {
        Self::start_config(ServerConfig {
            registry,
            metrics_listen: metrics,
            ..Self::config(data_dir)
        })
        .await
    }

    /// The configuration of [`TestServer::start`] on `data_dir`, to adjust and pass to
    /// [`TestServer::start_config`].
    pub(crate) fn config(data_dir: &Path) -> ServerConfig {
        ServerConfig {
            shutdown_grace: Duration::from_secs(5),
            ..ServerConfig::new(data_dir)
        }
    }

    /// Starts a server with `config`.
    pub(crate) async fn start_config(config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::start_listening(listener, config).await
    }

    /// Starts a server with `config` on `addr` (a restart on the address a client knows).
    pub(crate) async fn start_on(addr: std::net::SocketAddr, config: ServerConfig) -> Self {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("binding {addr} again: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        Self::start_listening(listener, config).await
    }

    async fn start_listening(listener: tokio::net::TcpListener, config: ServerConfig) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let handle = tokio::spawn(arbiter::server::run(listener, config, async move {
            let _ = rx.await;
        }));
        let mut server = Self {
            addr,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        for _ in 0..800 {
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let outcome = self.handle.take().expect("handle").await;
                panic!(
                    "server on {} stopped during start-up: {outcome:?}",
                    self.addr
                );
            }
            if let Ok(channel) = Channel::from_shared(self.url())
                .expect("url")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                // Health answers from the start; SERVING once the server's state is open.
                let serving = health
                    .check(request)
                    .await
                    .is_ok_and(|answer| answer.into_inner().status == 1);
                if serving {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server on {} did not become ready", self.addr);
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A new connection.
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    /// A Registry client on a new connection.
    pub(crate) async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel().await).max_decoding_message_size(16 << 20)
    }

    /// An Admin client on a new connection.
    pub(crate) async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// An Experiments client on a new connection.
    pub(crate) async fn experiments(&self) -> ExperimentsClient<Channel> {
        ExperimentsClient::new(self.channel().await)
    }

    /// An Allocator client on a new connection.
    pub(crate) async fn allocator(&self) -> AllocatorClient<Channel> {
        AllocatorClient::new(self.channel().await)
    }

    /// Starts a graceful shutdown without waiting for it.
    pub(crate) fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful shutdown that is expected to fail (storage faults): returns the server's error.
    pub(crate) async fn stop_with_error(mut self) -> arbiter::server::ServerError {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().expect("running");
        let outcome = tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("server stops within 30 s")
            .expect("server task did not panic");
        assert!(
            arbiter::storage::wait_until_released(&self.data_dir, Duration::from_secs(5)),
            "data directory still held after shutdown"
        );
        outcome.expect_err("shutdown fails")
    }

    /// Graceful shutdown; returns once the server has flushed and released the data directory.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("server stops within 20 s")
                .expect("server task did not panic")
                .expect("server shut down cleanly");
        }
        // Background threads release the store a moment after the server task ends.
        assert!(
            arbiter::storage::wait_until_released(&self.data_dir, Duration::from_secs(5)),
            "data directory still held after shutdown"
        );
    }
}

/// Lowercase hex SHA-256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (xorshift), so artifacts do not compress to nothing.
pub(crate) fn artifact_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A header with the required fields set.
pub(crate) fn header(model_id: &str, version: &str, created_by: &str) -> pb::RegisterModelHeader {
    pb::RegisterModelHeader {
        model_id: model_id.into(),
        version: version.into(),
        model_type: pb::ModelType::Signal as i32,
        created_by: created_by.into(),
        ..Default::default()
    }
}

/// The request stream of a registration: the header, then `bytes` in chunks of `chunk` bytes.
pub(crate) fn registration_messages(
    header: pb::RegisterModelHeader,
    bytes: &[u8],
    chunk: usize,
) -> Vec<pb::RegisterModelRequest> {
    use pb::register_model_request::Part;
    let mut messages = vec![pb::RegisterModelRequest {
        part: Some(Part::Header(header)),
    }];
    messages.extend(bytes.chunks(chunk).map(|c| pb::RegisterModelRequest {
        part: Some(Part::Chunk(c.to_vec())),
    }));
    messages
}

/// Registers a model with `header` and artifact `bytes`.
pub(crate) async fn register(
    client: &mut RegistryClient<Channel>,
    header: pb::RegisterModelHeader,
    bytes: &[u8],
) -> Result<pb::ModelMetadata, tonic::Status> {
    let messages = registration_messages(header, bytes, 64 * 1024);
    client
        .register_model(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Registers `model_id:version` created by "alice" with a small artifact.
pub(crate) async fn register_simple(
    client: &mut RegistryClient<Channel>,
    model_id: &str,
    version: &str,
) -> pb::ModelMetadata {
    register(client, header(model_id, version, "alice"), b"weights")
        .await
        .unwrap_or_else(|e| panic!("registering {model_id}:{version}: {e}"))
}

/// Promotes `registry_id` to `target` with approver "lead".
pub(crate) async fn promote(
    client: &mut RegistryClient<Channel>,
    registry_id: &str,
    target: pb::ModelStatus,
) -> Result<pb::ModelMetadata, tonic::Status> {
    client
        .promote_model(pb::PromoteModelRequest {
            registry_id: registry_id.into(),
            target_status: target as i32,
            approved_by: "lead".into(),
            reason: "test".into(),
            expected_status: None,
        })
        .await
        .map(|r| r.into_inner())
}

/// Downloads a model: its metadata and the concatenated chunks.
pub(crate) async fn get_model(
    client: &mut RegistryClient<Channel>,
    model_id: &str,
    version: &str,
) -> Result<(pb::ModelMetadata, Vec<u8>), tonic::Status> {
    use pb::get_model_response::Part;
    let mut stream = client
        .get_model(pb::GetModelRequest {
            model_id: model_id.into(),
            version: version.into(),
        })
        .await?
        .into_inner();
    let mut metadata = None;
    let mut bytes = Vec::new();
    while let Some(message) = stream.message().await? {
        match message.part {
            Some(Part::Metadata(m)) => {
                assert!(metadata.is_none(), "metadata sent twice");
                metadata = Some(m);
            }
            Some(Part::Chunk(c)) => {
                assert!(metadata.is_some(), "chunk before metadata");
                bytes.extend_from_slice(&c);
            }
            None => panic!("empty GetModelResponse"),
        }
    }
    Ok((metadata.expect("metadata message"), bytes))
}

/// Metadata of one version.
pub(crate) async fn metadata(
    client: &mut RegistryClient<Channel>,
    registry_id: &str,
) -> Result<pb::ModelMetadata, tonic::Status> {
    client
        .get_model_metadata(pb::ModelRef {
            registry_id: registry_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Asserts `result` failed with `code` and a message containing `needle`.
#[track_caller]
pub(crate) fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match result {
        Ok(v) => panic!("expected {code:?} containing {needle:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            assert!(
                status.message().contains(needle),
                "message {:?} does not contain {needle:?}",
                status.message()
            );
        }
    }
}

/// Entries of a directory (empty when it does not exist).
pub(crate) fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Registers `n` models `model_0:1.0.0` … and returns their registry ids.
pub(crate) async fn register_models(client: &mut RegistryClient<Channel>, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            register_simple(client, &format!("model_{i}"), "1.0.0")
                .await
                .registry_id,
        );
    }
    ids
}

/// A CreateTest request over `models` with everything else at its default.
pub(crate) fn test_request(test_id: &str, models: &[String]) -> pb::CreateTestRequest {
    pb::CreateTestRequest {
        test_id: test_id.into(),
        created_by: "quant".into(),
        model_registry_ids: models.to_vec(),
        ..Default::default()
    }
}

/// Registers two models and creates test `test_id` over them with every setting at its
/// default; returns the models' registry ids.
pub(crate) async fn test_over_two_models(server: &TestServer, test_id: &str) -> Vec<String> {
    let models = register_models(&mut server.registry().await, 2).await;
    server
        .experiments()
        .await
        .create_test(test_request(test_id, &models))
        .await
        .expect("create");
    models
}

/// The answer of `Admin/VerifyAuditChain`.
pub(crate) async fn verify_audit_chain(server: &TestServer) -> pb::VerifyAuditChainResponse {
    server
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner()
}

/// One unary Allocate for `test_id` without a unit key.
pub(crate) async fn allocate(
    client: &mut AllocatorClient<Channel>,
    test_id: &str,
) -> pb::Allocation {
    client
        .allocate(pb::AllocateRequest {
            test_id: test_id.into(),
            unit_key: String::new(),
        })
        .await
        .expect("allocate")
        .into_inner()
}

/// Every page of ListTests (optionally only `status`), following the page tokens.
pub(crate) async fn list_test_pages(
    client: &mut ExperimentsClient<Channel>,
    status: Option<pb::TestStatus>,
    page_size: u32,
) -> Vec<Vec<pb::Test>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_tests(pb::ListTestsRequest {
                status: status.map(|s| s as i32),
                page_size,
                page_token,
            })
            .await
            .expect("list page")
            .into_inner();
        pages.push(page.tests);
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
}

/// A result attributed by arm id.
pub(crate) fn result(test_id: &str, arm_id: &str, value: f64) -> pb::ResultRecord {
    pb::ResultRecord {
        test_id: test_id.into(),
        attribution: Some(pb::result_record::Attribution::ArmId(arm_id.into())),
        return_value: value,
        ..Default::default()
    }
}

/// GetTestResults of `test_id`.
pub(crate) async fn test_results(server: &TestServer, test_id: &str) -> pb::TestResults {
    server
        .experiments()
        .await
        .get_test_results(pb::GetTestResultsRequest {
            test_id: test_id.into(),
        })
        .await
        .expect("results")
        .into_inner()
}

/// Sends batches over one IngestResults stream and returns the acks in order.
pub(crate) async fn ingest(
    client: &mut AllocatorClient<Channel>,
    batches: Vec<pb::ResultBatch>,
) -> Result<Vec<pb::BatchAck>, tonic::Status> {
    let n = batches.len();
    let mut acks = client
        .ingest_results(tokio_stream::iter(batches))
        .await?
        .into_inner();
    let mut out = Vec::with_capacity(n);
    while let Some(ack) = acks.message().await? {
        out.push(ack);
    }
    Ok(out)
}

/// The most recent `limit` audit events about `entity` (0: the server's default of 100).
pub(crate) async fn audit_events(
    server: &TestServer,
    entity: &str,
    limit: u32,
) -> Vec<pb::AuditEvent> {
    server
        .admin()
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            entity: entity.into(),
            limit,
        })
        .await
        .expect("audit")
        .into_inner()
        .events
}

/// Panics unless `events` hold a model registration whose actor is `actor`.
pub(crate) fn assert_registered_by(events: &[pb::AuditEvent], actor: &str) {
    assert!(
        events
            .iter()
            .any(|e| e.action == "model.register" && e.actor == actor),
        "no registration by {actor:?} in {events:?}"
    );
}

/// The status of the health service `arbiter.v1.Storage` on `channel`.
pub(crate) async fn storage_health_on(channel: Channel) -> i32 {
    health_on(channel, "arbiter.v1.Storage").await
}

/// The status of the health service `service` on `channel`.
pub(crate) async fn health_on(channel: Channel, service: &str) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status
}

/// The figures results determine for each arm of test "t" on `channel`: arm, results, sum and
/// standard deviation of returns.
pub(crate) async fn arm_figures_on(channel: Channel) -> Vec<(String, u64, f64, f64)> {
    ExperimentsClient::new(channel)
        .get_test_results(pb::GetTestResultsRequest {
            test_id: "t".into(),
        })
        .await
        .expect("results")
        .into_inner()
        .arms
        .iter()
        .map(|a| {
            (
                a.arm_id.clone(),
                a.total_requests,
                a.total_returns,
                a.std_return,
            )
        })
        .collect()
}
