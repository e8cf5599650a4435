//! Cluster mode's connection to NATS JetStream: where the replicated log lives and how to reach
//! it ([`ClusterOptions`]), and the log itself ([`StreamLog`]), an implementation of
//! [`storage::Log`](crate::storage::Log) over one JetStream stream.
//!
//! The stream holds every entry of the log in one total order, replicated and fsynced on a
//! quorum of NATS servers before a publish is acknowledged (nats-server 2.12 or newer with
//! `jetstream { sync_interval: always }`). One arbiter at a time writes it: each entry is
//! published with the stream sequence it must follow (`Nats-Expected-Last-Sequence`), so a
//! writer whose view of the stream is stale cannot append, and every entry was decided on the
//! state that all entries before it fold into. Which arbiter that is, the [`WriterLease`]
//! decides; the others stand by until its holder stops refreshing it.
//!
//! Beside the stream, two JetStream object stores: the [`SnapshotBucket`] (snapshots of the
//! store, so that the stream can be trimmed and a new node starts from the newest) and the
//! [`ArtifactBucket`] (every model artifact, so that any node serves any version).

pub mod allocation_reports;
pub mod artifact_bucket;
pub mod lease;
pub mod snapshot_bucket;
pub mod stream_log;
pub mod trust;

/// Real NATS clusters for tests.
#[cfg(test)]
#[path = "../tests/support/nats.rs"]
mod nats_cluster;

use std::path::PathBuf;
use std::time::Duration;

pub use artifact_bucket::ArtifactBucket;
pub use lease::{LeaseHolder, SeenWriter, WriterLease};
pub use snapshot_bucket::SnapshotBucket;
pub use stream_log::{FollowError, Following, StreamLog};

use crate::storage::StorageError;

/// Opens the object store `bucket` of `options`'s cluster (file storage, as many replicas as the
/// log), creating it on first use, waiting up to `timeout` for JetStream to answer; refuses one
/// with a limit under which JetStream removes objects by itself.
async fn open_object_store(
    options: &ClusterOptions,
    bucket: &str,
    description: String,
    timeout: Duration,
) -> Result<async_nats::jetstream::object_store::ObjectStore, StorageError> {
    use async_nats::jetstream::{object_store, stream::StorageType};
    let client = options.connect().await?;
    let context = async_nats::jetstream::new(client);
    let config = object_store::Config {
        bucket: bucket.to_string(),
        description: Some(description),
        storage: StorageType::File,
        num_replicas: options.replicas,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    loop {
        let store = match context.get_object_store(bucket).await {
            Ok(store) => Ok(store),
            Err(_) => context.create_object_store(config.clone()).await,
        };
        match store {
            Ok(store) => {
                check_bucket_limits(&context, bucket).await?;
                return Ok(store);
            }
            Err(e) if started.elapsed() >= timeout => {
                return Err(StorageError::Replicated(format!(
                    "opening the object store {bucket}: {e}"
                )))
            }
            Err(e) => {
                tracing::info!(error = %e, %bucket, "waiting for JetStream to open an object store");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Refuses the object store `bucket` when its stream has a limit under which JetStream removes
/// objects by itself.
async fn check_bucket_limits(
    context: &async_nats::jetstream::Context,
    bucket: &str,
) -> Result<(), StorageError> {
    let mut stream = context
        .get_stream(format!("OBJ_{bucket}"))
        .await
        .map_err(|e| StorageError::Replicated(format!("reading bucket {bucket}: {e}")))?;
    let info = stream
        .info()
        .await
        .map_err(|e| StorageError::Replicated(format!("reading bucket {bucket}: {e}")))?;
    match stream_log::dropping_limit(&info.config) {
        Some(limit) => Err(StorageError::Replicated(format!(
            "object store {bucket} has {limit}, under which JetStream removes what arbiter \
             stored in it; remove it"
        ))),
        None => Ok(()),
    }
}

/// Where the replicated log is and how to reach it.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://host:port`); the client reconnects to any of them.
    pub servers: Vec<String>,
    /// The cluster's name: arbiters with the same name share one log. Letters, digits, `-` and
    /// `_`.
    pub name: String,
    /// How many NATS servers hold a copy of each entry (JetStream replicas: 1, 3 or 5).
    pub replicas: usize,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// CA certificates (PEM) to verify the NATS servers with; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// How long to wait for a publish acknowledgement before publishing the entry again.
    pub ack_timeout: Duration,
    /// How long the writer's lease lasts without a refresh: a standby takes over at most this
    /// long after the writer stops.
    pub lease_ttl: Duration,
    /// How often the writer stores a snapshot of the store in the snapshot bucket and trims the
    /// stream below it (`None`: never).
    pub snapshot_interval: Option<Duration>,
    /// The URL other arbiters reach this one's gRPC server at (`http://host:port`, or
    /// `https://` when it serves TLS): standbys forward changes and results there while this
    /// arbiter writes the log. `None`: the listening address, unless that is unspecified
    /// (`0.0.0.0`), in which case standbys cannot forward to this arbiter.
    pub advertise: Option<String>,
    /// CA certificates (PEM) other arbiters' TLS certificates chain to, for forwarding to a
    /// writer over `https://` (`None`: the web PKI's roots).
    pub peer_ca: Option<PathBuf>,
}

impl ClusterOptions {
    /// Options for the cluster `name` on `servers`, with 3 replicas, no credentials and no TLS.
    pub fn new(servers: Vec<String>, name: &str) -> Self {
        ClusterOptions {
            servers,
            name: name.to_string(),
            replicas: 3,
            credentials: None,
            tls_ca: None,
            tls_client: None,
            ack_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(5),
            snapshot_interval: Some(Duration::from_secs(60)),
            advertise: None,
            peer_ca: None,
        }
    }

    /// Checks the options, naming the first thing wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("no NATS server URL given".into());
        }
        if let Some(bad) = self.servers.iter().find(|s| s.trim().is_empty()) {
            return Err(format!("an empty NATS server URL in {:?}", bad));
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!(
                "cluster name {:?}: use 1 to 64 letters, digits, '-' or '_'",
                self.name
            ));
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(format!(
                "{} replicas: JetStream keeps 1, 3 or 5 copies (3 survives one server's loss)",
                self.replicas
            ));
        }
        if self.ack_timeout.is_zero() {
            return Err("a publish acknowledgement timeout of zero".into());
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(format!(
                "a writer lease of {:?}: at least 1 s, so that a writer can refresh it in time",
                self.lease_ttl
            ));
        }
        if let Some(url) = &self.advertise {
            check_advertised(url)?;
        }
        Ok(())
    }

    /// The JetStream stream that holds the log.
    pub fn stream_name(&self) -> String {
        format!("ARBITER_{}", self.name)
    }

    /// The key-value bucket holding the writer's lease.
    pub fn lease_bucket(&self) -> String {
        format!("ARBITER_{}_writer", self.name)
    }

    /// The key-value bucket holding the key arbiters prove forwarded calls with.
    pub fn trust_bucket(&self) -> String {
        format!("ARBITER_{}_trust", self.name)
    }

    /// The object store holding the model artifacts.
    pub fn artifact_bucket(&self) -> String {
        format!("ARBITER_{}_artifacts", self.name)
    }

    /// The object store holding snapshots of the store.
    pub fn snapshot_bucket(&self) -> String {
        format!("ARBITER_{}_snapshots", self.name)
    }

    /// The subjects of the log's entries (the stream's subject filter): one per kind of entry,
    /// [`ClusterOptions::entry_subject`].
    pub fn log_subject(&self) -> String {
        format!("arbiter.{}.log.>", self.name)
    }

    /// The subject of the log's entries of `kind` (`batch`, `command`, `results`, `marker`).
    pub fn entry_subject(&self, kind: &str) -> String {
        format!("arbiter.{}.log.{kind}", self.name)
    }

    /// The subject standbys send their allocation counts on, to the writer.
    pub fn allocation_subject(&self) -> String {
        format!("arbiter.{}.allocations", self.name)
    }

    /// Connects to the NATS servers (waiting for the first to answer, for as long as it takes;
    /// reconnecting without limit afterwards).
    pub async fn connect(&self) -> Result<async_nats::Client, StorageError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("arbiter {}", self.name))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5));
        if let Some(path) = &self.credentials {
            options = options.credentials_file(path.clone()).await.map_err(|e| {
                StorageError::Replicated(format!(
                    "reading NATS credentials {}: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options
                .require_tls(true)
                .add_client_certificate(cert.clone(), key.clone());
        }
        let servers: Vec<&str> = self.servers.iter().map(|s| s.trim()).collect();
        options.connect(servers).await.map_err(|e| {
            StorageError::Replicated(format!(
                "connecting to NATS at {}: {e}",
                self.servers.join(",")
            ))
        })
    }
}

/// Refuses an advertised address other arbiters could not call: it must be an `http` or
/// `https` URL with a host and a port, and nothing after them.
fn check_advertised(url: &str) -> Result<(), String> {
    let bad =
        |why: &str| format!("advertised address {url:?}: {why}; give e.g. http://10.0.0.5:50051");
    let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("the scheme must be http or https"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.port_u16().is_none() {
        return Err(bad("no port"));
    }
    let host = authority.host();
    if host.is_empty() || host == "0.0.0.0" || host == "[::]" {
        return Err(bad("the host must be one other arbiters can reach"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("nothing may follow the port"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertised_address_must_be_callable() {
        let mut options = ClusterOptions::new(vec!["nats://127.0.0.1:4222".into()], "prod-1");
        for good in ["http://10.0.0.5:50051", "https://arbiter-1.internal:443"] {
            options.advertise = Some(good.into());
            assert_eq!(options.validate(), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("10.0.0.5:50051", "scheme"),
            ("grpc://10.0.0.5:50051", "scheme"),
            ("http://10.0.0.5", "no port"),
            ("http://0.0.0.0:50051", "reach"),
            ("http://10.0.0.5:50051/arbiter", "follow the port"),
        ] {
            options.advertise = Some(bad.into());
            let error = options.validate().expect_err(bad);
            assert!(error.contains(why) && error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn options_name_what_is_wrong() {
        let ok = ClusterOptions::new(vec!["nats://127.0.0.1:4222".into()], "prod-1");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.stream_name(), "ARBITER_prod-1");
        assert_eq!(ok.log_subject(), "arbiter.prod-1.log.>");
        assert_eq!(ok.entry_subject("results"), "arbiter.prod-1.log.results");
        let mut bad = ok.clone();
        bad.name = "a.b".into();
        assert!(bad.validate().unwrap_err().contains("\"a.b\""));
        let mut bad = ok.clone();
        bad.replicas = 2;
        assert!(bad.validate().unwrap_err().contains("2 replicas"));
        let mut bad = ok.clone();
        bad.servers.clear();
        assert!(bad.validate().unwrap_err().contains("no NATS server"));
        let mut bad = ok.clone();
        bad.ack_timeout = Duration::ZERO;
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.lease_ttl = Duration::from_millis(500);
        assert!(bad.validate().unwrap_err().contains("writer lease"));
    }
}
