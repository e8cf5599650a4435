//! Command-line configuration (clap derive). Every flag has an `ARBITER_…` environment override;
//! `arbiter serve --config arbiter.toml` reads a file whose keys are the flags' long names
//! (`listen = "127.0.0.1:50051"`, `data-dir = "/var/lib/arbiter"`, …). Precedence, highest first:
//! flag, environment, file, built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::builder::TypedValueParser;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::auth::RateLimits;
use crate::cluster::ClusterOptions;
use crate::experiment::limits::{self, IngestLimits};
use crate::registry::RegistryConfig;
use crate::server::ServerConfig;

/// arbiter: model registry and A/B testing server for trading systems.
#[derive(Debug, Parser)]
#[command(name = "arbiter", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Measure Allocate and IngestResults over gRPC, optionally against an echo baseline.
    Bench(BenchArgs),
    /// Register, read, promote and delete model versions on a server.
    Models(ModelsArgs),
    /// Read and control A/B tests on a server.
    Tests(TestsArgs),
    /// Read and verify the audit log of a server.
    Audit(AuditArgs),
}

/// How client subcommands reach the server and print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The arbiter server.
    #[arg(
        long,
        env = "ARBITER_SERVER",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// Print JSON for scripts instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Bearer token, for a server with an auth file (the file holds its SHA-256).
    #[arg(long, env = "ARBITER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate that an https:// server's certificate chains to (default: the public
    /// web roots).
    #[arg(long, env = "ARBITER_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

impl ClientArgs {
    /// The actor to send in a change (`created_by`, `requested_by`): `explicit` if given; with a
    /// token, empty, because a server with an auth file records the token's principal and refuses
    /// any other name; without one, the local user.
    pub fn actor(&self, explicit: Option<&str>) -> String {
        match (explicit, &self.token) {
            (Some(actor), _) => actor.to_string(),
            (None, Some(_)) => String::new(),
            (None, None) => std::env::var("USER").unwrap_or_else(|_| "cli".to_string()),
        }
    }
}

/// A model type on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelTypeArg {
    /// Produces trading signals.
    Signal,
    /// Sizes or limits risk.
    Risk,
    /// Decides how orders are worked.
    Execution,
    /// Classifies market regimes.
    Regime,
    /// Allocates across positions.
    Portfolio,
}

/// A model status on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelStatusArg {
    /// Registered, not yet tested.
    Development,
    /// Under test.
    Testing,
    /// Ready for approval.
    Staging,
    /// Approved (needs an approver other than the creator).
    Production,
    /// Retired, still fetchable by version.
    Deprecated,
    /// Retired for good.
    Archived,
}

/// `arbiter models …`.
#[derive(Debug, Clone, Args)]
pub struct ModelsArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: ModelsAction,
}

/// Actions on model versions.
#[derive(Debug, Clone, Subcommand)]
pub enum ModelsAction {
    /// Upload an artifact as a new version; prints its registry id and checksum.
    Register {
        /// Model id, `[A-Za-z0-9._-]{1,128}`.
        #[arg(long)]
        id: String,
        /// Semantic version.
        #[arg(long)]
        version: String,
        /// Model type.
        #[arg(long = "type", value_enum)]
        model_type: ModelTypeArg,
        /// The artifact file.
        #[arg(long)]
        file: PathBuf,
        /// Trading policy stored beside the model (a YAML mapping or JSON object).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Feature specification (a YAML mapping or JSON object).
        #[arg(long)]
        features: Option<PathBuf>,
        /// Who registers it. Default: with --token, the token's principal (which a server with an
        /// auth file records anyway); without, $USER.
        #[arg(long)]
        created_by: Option<String>,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Framework, e.g. onnx.
        #[arg(long, default_value = "")]
        framework: String,
        /// Sign the version with this key (a file holding the hex of a 32-byte ed25519 seed, as
        /// `arbiter models keygen` writes); needs --signer.
        #[arg(long, requires = "signer")]
        sign_key: Option<PathBuf>,
        /// The signer's name in the server's trusted signers.
        #[arg(long, requires = "sign_key")]
        signer: Option<String>,
    },
    /// Print the ed25519 signature (hex) of a version for its artifact and policy, as
    /// `RegisterModelHeader.signature` expects it.
    Sign {
        /// `<model_id>:<version>`.
        registry_id: String,
        /// The artifact file.
        #[arg(long)]
        file: PathBuf,
        /// The policy file registered with it, if any.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The signing key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Make a signing key: writes its seed (hex) to --out and prints the public key for the
    /// server's trusted signers.
    Keygen {
        /// Where to write the key (created; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// List versions, newest first.
    List {
        /// Only versions of this model.
        #[arg(long, default_value = "")]
        model_id: String,
        /// Only versions in this status.
        #[arg(long, value_enum)]
        status: Option<ModelStatusArg>,
    },
    /// Show one version's metadata.
    Show {
        /// `<model_id>:<version>`.
        registry_id: String,
    },
    /// Download an artifact (checksum verified by the server before sending).
    Get {
        /// `<model_id>:<version>`, or a model id alone for its latest version.
        model_id: String,
        /// Version (instead of `:<version>`); default: the highest PRODUCTION version, else the
        /// highest one that is not DEPRECATED or ARCHIVED.
        #[arg(long, default_value = "")]
        version: String,
        /// Where to write the artifact.
        #[arg(long)]
        out: PathBuf,
    },
    /// Move a version through the lifecycle.
    Promote {
        /// `<model_id>:<version>`.
        registry_id: String,
        /// Target status.
        #[arg(long, value_enum)]
        to: ModelStatusArg,
        /// Approver (required for production; must not be the creator).
        #[arg(long, default_value = "")]
        approved_by: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Fail unless the version is currently in this status.
        #[arg(long, value_enum)]
        expected: Option<ModelStatusArg>,
    },
    /// Delete a version.
    Delete {
        /// `<model_id>:<version>`.
        registry_id: String,
        /// Allow deleting a PRODUCTION version.
        #[arg(long)]
        force: bool,
    },
    /// Recompute a version's checksums; exits 1 when they do not match.
    Verify {
        /// `<model_id>:<version>`.
        registry_id: String,
    },
}

/// `arbiter tests …`.
#[derive(Debug, Clone, Args)]
pub struct TestsArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: TestsAction,
}

/// An allocation strategy on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Configured weights (--weights), sticky by unit key.
    Fixed,
    /// Thompson sampling (the default).
    Thompson,
    /// UCB1.
    Ucb,
    /// Epsilon-greedy (--epsilon).
    EpsilonGreedy,
}

/// A reward model on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RewardArg {
    /// Optimise the win rate (return > 0).
    Bernoulli,
    /// Optimise the mean return (the default).
    Gaussian,
}

/// The options of `arbiter tests create` (unset ones take the server's defaults).
#[derive(Debug, Clone, Args)]
pub struct CreateTestArgs {
    /// Test id.
    #[arg(long)]
    pub id: String,
    /// Registry ids of the arms, in order: `a:1.0.0,b:1.0.0`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// Allocation strategy.
    #[arg(long, value_enum, default_value_t = StrategyArg::Thompson)]
    pub strategy: StrategyArg,
    /// Reward model of Thompson sampling: gaussian (the mean return; the server's default) or
    /// bernoulli (the win rate).
    #[arg(long, value_enum)]
    pub reward: Option<RewardArg>,
    /// FIXED weights, one per model: `0.7,0.3` (served exactly; default equal).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<f64>,
    /// Display name.
    #[arg(long, default_value = "")]
    pub name: String,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Results per arm before early stopping is considered (default 1000, at least 10).
    #[arg(long)]
    pub minimum_sample_size: Option<u64>,
    /// Smallest absolute difference of mean return worth acting on (default 0).
    #[arg(long)]
    pub minimum_effect_size: Option<f64>,
    /// Significance level (default 0.05, in [0.001, 0.2]).
    #[arg(long)]
    pub significance_level: Option<f64>,
    /// The test completes by itself after this many days (default 30).
    #[arg(long)]
    pub max_duration_days: Option<f64>,
    /// Never stop early (by default a test stops once a comparison is significant).
    #[arg(long)]
    pub no_early_stopping: bool,
    /// Mean return per result below which an arm is suspended (default -0.05).
    #[arg(long, allow_hyphen_values = true)]
    pub stop_loss_threshold: Option<f64>,
    /// Allocation floor per arm (bandits: min(0.05, 0.5/arms); FIXED: where a stop-loss holds an
    /// arm, at most the smallest weight).
    #[arg(long)]
    pub min_allocation_per_arm: Option<f64>,
    /// Allocation cap per arm (bandits: 0.8; FIXED: 1, at least the largest weight).
    #[arg(long)]
    pub max_allocation_per_arm: Option<f64>,
    /// Exploration rate of epsilon-greedy (default 0.1).
    #[arg(long)]
    pub epsilon: Option<f64>,
    /// Exploration constant of UCB (default sqrt(2)).
    #[arg(long)]
    pub ucb_exploration: Option<f64>,
    /// Control arm id (default arm_0).
    #[arg(long)]
    pub control_arm: Option<String>,
    /// What drift in an arm's returns does: alert (report it; the default) or suspend (also hold
    /// the arm at the floor for the rest of the test).
    #[arg(long, value_enum)]
    pub on_drift: Option<DriftArg>,
    /// Seconds after the end during which late results for decisions made while the test ran
    /// are accepted (default 3600, at most 604800).
    #[arg(long = "settlement-period-seconds")]
    pub settlement_period_secs: Option<u64>,
}

/// What drift does, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriftArg {
    /// Report drift (the default).
    Alert,
    /// Also hold an arm whose mean fell at its floor.
    Suspend,
}

/// Actions on tests.
#[derive(Debug, Clone, Subcommand)]
pub enum TestsAction {
    /// Create a test over registered model versions.
    Create(Box<CreateTestArgs>),
    /// List tests, newest first.
    List,
    /// Show a test's configuration and status.
    Show {
        /// The test id.
        test_id: String,
    },
    /// Show the results of a test: per-arm figures, then the significance line and status.
    Results {
        /// The test id.
        test_id: String,
    },
    /// Write an SVG report: each arm's posterior mean return and allocation share over time.
    Report {
        /// The test id.
        test_id: String,
        /// Where to write the SVG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Pause a running test (all traffic to the control arm).
    Pause {
        /// The test id.
        test_id: String,
    },
    /// Resume a paused test.
    Resume {
        /// The test id.
        test_id: String,
    },
    /// Stop a test.
    Stop {
        /// The test id.
        test_id: String,
        /// Why (recorded in the audit log and the final results).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// `arbiter audit …`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Connection and output.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: AuditAction,
}

/// Actions on the audit log.
#[derive(Debug, Clone, Subcommand)]
pub enum AuditAction {
    /// The most recent events, oldest first.
    List {
        /// Only events about this entity (a test id, a registry id or a model id).
        #[arg(long, default_value = "")]
        entity: String,
        /// How many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Recompute the hash chain; exits 1 when it does not verify.
    Verify,
}

/// The baseline `arbiter bench` compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// No baseline.
    None,
    /// A bare tonic echo service with the same message shapes, started in the same process.
    Echo,
    /// arbiter without authentication: two arbiters start in this process, the one measured
    /// with token authentication and this one without, so the ratios are the cost of
    /// authentication.
    Unauthenticated,
    /// Another running arbiter, at `--baseline-url` (a single-node server, to compare a
    /// cluster's arbiter with, say).
    Arbiter,
}

/// Flags of `arbiter bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// arbiter to measure (e.g. http://127.0.0.1:50051); default: start one in this process on a
    /// temporary data directory.
    #[arg(long, env = "ARBITER_BENCH_TARGET")]
    pub target: Option<String>,
    /// Also measure this baseline and report arbiter/baseline ratios.
    #[arg(long, value_enum, default_value_t = Baseline::None)]
    pub baseline: Baseline,
    /// Milliseconds per scenario and system.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_ms: u64,
    /// Connections of the closed-loop scenario.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub connections: u32,
    /// Concurrent callers per connection in the closed-loop scenario.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub in_flight: u32,
    /// Run only the scenarios whose name contains this text (e.g. `ingest`, `unary`).
    #[arg(long, value_name = "TEXT")]
    pub only: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The arbiter `--baseline arbiter` measures.
    #[arg(long, value_name = "URL", required_if_eq("baseline", "arbiter"))]
    pub baseline_url: Option<String>,
    /// Where the bench creates (and afterwards stops) its test for `--target`: the cluster's
    /// writer when the target is a standby, which takes no changes. The target allocates from
    /// the test once it has followed its creation.
    #[arg(long, value_name = "URL", requires = "target")]
    pub prepare_url: Option<String>,
}

impl BenchArgs {
    /// Whether the echo baseline runs.
    pub fn baseline_echo(&self) -> bool {
        self.baseline == Baseline::Echo
    }

    /// The system name of the baseline's measurements, if one runs.
    pub fn baseline_system(&self) -> Option<&'static str> {
        match self.baseline {
            Baseline::None => None,
            Baseline::Echo => Some("echo"),
            Baseline::Unauthenticated => Some("no-auth"),
            Baseline::Arbiter => Some("baseline"),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Flags of `arbiter serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file whose keys mirror these flags; flags and environment variables override it.
    #[arg(long, env = "ARBITER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print the effective settings and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Address to listen on.
    #[arg(long, env = "ARBITER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory holding the database, artifacts and test results.
    #[arg(long, env = "ARBITER_DATA_DIR", default_value = "./arbiter-data")]
    pub data_dir: PathBuf,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, env = "ARBITER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Largest accepted model artifact, in bytes.
    #[arg(long, env = "ARBITER_MAX_ARTIFACT_BYTES", default_value_t = 1 << 30)]
    pub max_artifact_bytes: u64,
    /// Versions kept per model before the oldest DEVELOPMENT/TESTING ones are removed.
    #[arg(long, env = "ARBITER_MAX_VERSIONS_PER_MODEL", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_versions_per_model: u32,
    /// Let a model's creator approve it for PRODUCTION (relaxes the four-eyes rule).
    #[arg(long, env = "ARBITER_ALLOW_SELF_APPROVAL")]
    pub allow_self_approval: bool,
    /// Seconds a shutdown waits for in-flight calls and open connections before closing them.
    #[arg(long, env = "ARBITER_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// A client watching allocation tables (WatchAllocations) gets a test's new table at most
    /// once per this many milliseconds; changes in between are coalesced.
    #[arg(long, env = "ARBITER_WATCH_COALESCE_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub watch_coalesce_ms: u64,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464); off when unset.
    #[arg(long, env = "ARBITER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// TOML file of the principals allowed to call, with their roles and token digests or
    /// certificate names (reloaded on SIGHUP). Without it the server serves only on loopback.
    #[arg(long, env = "ARBITER_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// PEM certificate chain to serve TLS with (needs --tls-key).
    #[arg(long, env = "ARBITER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ARBITER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate that client certificates must chain to; makes them required (mutual
    /// TLS) and maps their subject CN to a principal of the auth file.
    #[arg(long, env = "ARBITER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// TOML file of the keys artifact signatures are checked against: `[[signer]]` with `name`
    /// and `public_key` (hex of the 32-byte ed25519 key).
    #[arg(long, env = "ARBITER_TRUSTED_SIGNERS")]
    pub trusted_signers: Option<PathBuf>,
    /// Only versions signed by a trusted signer may be promoted to PRODUCTION.
    #[arg(
        long,
        env = "ARBITER_REQUIRE_SIGNED_PRODUCTION",
        requires = "trusted_signers"
    )]
    pub require_signed_production: bool,
    /// Serve without an auth file on a non-loopback address (anyone who reaches the port may
    /// do everything).
    #[arg(long, env = "ARBITER_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,
    /// Read calls per second each principal may make (bursts up to the same number); 0 is
    /// unlimited. A principal of the auth file may have its own (`[principal.rate_limits]`).
    #[arg(long, env = "ARBITER_READ_RATE_LIMIT", default_value_t = RateLimits::DEFAULT_READ)]
    pub read_rate_limit: u32,
    /// Registry and test changes per second each principal may make; 0 is unlimited.
    #[arg(long, env = "ARBITER_CHANGE_RATE_LIMIT", default_value_t = RateLimits::DEFAULT_CHANGE)]
    pub change_rate_limit: u32,
    /// Allocate and AllocateStream calls per second each principal may make
    /// (a stream counts once); 0, the default, is unlimited.
    #[arg(long, env = "ARBITER_ALLOCATE_RATE_LIMIT", default_value_t = 0)]
    pub allocate_rate_limit: u32,
    /// RecordResult and IngestResults calls per second each principal may make (a stream
    /// counts once); 0, the default, is unlimited.
    #[arg(long, env = "ARBITER_INGEST_RATE_LIMIT", default_value_t = 0)]
    pub ingest_rate_limit: u32,
    /// Model uploads (RegisterModel streams) in progress at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "ARBITER_MAX_CONCURRENT_UPLOADS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_concurrent_uploads: usize,
    /// Seconds an upload may wait for its client's next message before it is abandoned.
    #[arg(long, env = "ARBITER_UPLOAD_IDLE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_idle_timeout_secs: u64,
    /// Bytes per second an upload must average once it has run for the idle timeout.
    #[arg(long, env = "ARBITER_UPLOAD_MIN_BYTES_PER_SEC", default_value_t = 16 * 1024)]
    pub upload_min_bytes_per_sec: u64,
    /// Largest accepted |return| and |metric value| of a result; larger ones are rejected with
    /// INVALID_ARGUMENT (their squares would overflow the statistics).
    #[arg(long, env = "ARBITER_MAX_RESULT_MAGNITUDE", default_value_t = limits::DEFAULT_MAX_ABS_VALUE,
          value_parser = parse_magnitude)]
    pub max_result_magnitude: f64,
    /// Most records in one IngestResults batch; a larger batch ends the stream with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "ARBITER_MAX_BATCH_RECORDS", default_value_t = limits::DEFAULT_MAX_BATCH_RECORDS,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_batch_records: usize,
    /// Most distinct tests one IngestResults batch may name; more end the stream with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "ARBITER_MAX_BATCH_TESTS", default_value_t = limits::DEFAULT_MAX_BATCH_TESTS,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_batch_tests: usize,
    /// Cluster mode: keep the log in NATS JetStream on these servers (comma-separated
    /// `nats://host:port` URLs) instead of under the data directory, so that a node whose disk
    /// is lost rebuilds everything from the stream. Needs nats-server 2.12 or newer with
    /// `jetstream { sync_interval: always }`.
    #[arg(long, env = "ARBITER_CLUSTER", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// The cluster's name: arbiters with the same name share one log (stream
    /// `ARBITER_<name>`).
    #[arg(long, env = "ARBITER_CLUSTER_NAME", default_value = "arbiter")]
    pub cluster_name: String,
    /// NATS servers that keep a copy of each log entry (1, 3 or 5).
    #[arg(long, env = "ARBITER_CLUSTER_REPLICAS", default_value_t = 3)]
    pub cluster_replicas: usize,
    /// Seconds the writer's lease lasts without a refresh: a standby arbiter takes over at most
    /// this long after the writer stops (at once when it shuts down cleanly).
    #[arg(long, env = "ARBITER_CLUSTER_LEASE_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cluster_lease_secs: u64,
    /// Seconds between snapshots of the store in the cluster's object store; the stream is
    /// trimmed below each, and a node without a store starts from the newest. 0: never (the
    /// stream then grows for ever).
    #[arg(long, env = "ARBITER_CLUSTER_SNAPSHOT_SECS", default_value_t = 60)]
    pub cluster_snapshot_secs: u64,
    /// NATS credentials file (JWT and NKey seed) for cluster mode.
    #[arg(long, env = "ARBITER_CLUSTER_CREDENTIALS")]
    pub cluster_credentials: Option<PathBuf>,
    /// PEM CA certificate to verify the NATS servers with (requires TLS to them).
    #[arg(long, env = "ARBITER_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients (needs
    /// --cluster-tls-key).
    #[arg(long, env = "ARBITER_CLUSTER_TLS_CERT", requires = "cluster_tls_key")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// PEM private key of --cluster-tls-cert.
    #[arg(long, env = "ARBITER_CLUSTER_TLS_KEY", requires = "cluster_tls_cert")]
    pub cluster_tls_key: Option<PathBuf>,
    /// The URL other arbiters of the cluster reach this one at (`http://host:port`, or
    /// `https://host:port` when it serves TLS): standby arbiters forward changes and results
    /// there while this one writes the log. Default: the listening address, unless that is
    /// 0.0.0.0 or [::] (then standbys cannot forward to this arbiter).
    #[arg(long, env = "ARBITER_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// PEM CA certificate the other arbiters' TLS certificates chain to, for forwarding to the
    /// writer over https (default: the web PKI's roots). With --tls-cert, this arbiter
    /// presents its own certificate to the writer.
    #[arg(long, env = "ARBITER_CLUSTER_PEER_CA")]
    pub cluster_peer_ca: Option<PathBuf>,
}

/// A magnitude limit: a positive finite number at most 1e100, so that squares (1e200) and their
/// sums over any number of results a server could ever hold stay finite.
fn parse_magnitude(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if value.is_finite() && value > 0.0 && value <= 1e100 {
        Ok(value)
    } else {
        Err(format!("{text} must be a positive number at most 1e100"))
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line itself is wrong (clap prints its own message and usage).
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// The configuration file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid.
    #[error("invalid configuration file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its location.
        reason: String,
    },
}

/// The keys of `arbiter.toml`: the long names of `arbiter serve`'s flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    max_artifact_bytes: Option<u64>,
    max_versions_per_model: Option<u32>,
    allow_self_approval: Option<bool>,
    shutdown_grace_secs: Option<u64>,
    watch_coalesce_ms: Option<u64>,
    metrics_listen: Option<SocketAddr>,
    auth_file: Option<PathBuf>,
    trusted_signers: Option<PathBuf>,
    require_signed_production: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    insecure_allow_unauthenticated: Option<bool>,
    read_rate_limit: Option<u32>,
    change_rate_limit: Option<u32>,
    allocate_rate_limit: Option<u32>,
    ingest_rate_limit: Option<u32>,
    max_concurrent_uploads: Option<usize>,
    upload_idle_timeout_secs: Option<u64>,
    upload_min_bytes_per_sec: Option<u64>,
    max_result_magnitude: Option<f64>,
    max_batch_records: Option<usize>,
    max_batch_tests: Option<usize>,
    cluster: Option<Vec<String>>,
    cluster_name: Option<String>,
    cluster_replicas: Option<usize>,
    cluster_lease_secs: Option<u64>,
    cluster_snapshot_secs: Option<u64>,
    cluster_credentials: Option<PathBuf>,
    cluster_tls_ca: Option<PathBuf>,
    cluster_tls_cert: Option<PathBuf>,
    cluster_tls_key: Option<PathBuf>,
    cluster_advertise: Option<String>,
    cluster_peer_ca: Option<PathBuf>,
}

impl FileConfig {
    /// Reads and validates a configuration file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: Self = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string().trim().to_string(),
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if file.max_versions_per_model == Some(0) {
            return Err(invalid("max-versions-per-model must be at least 1".into()));
        }
        if let Some(m) = file.max_result_magnitude {
            parse_magnitude(&m.to_string())
                .map_err(|e| invalid(format!("max-result-magnitude: {e}")))?;
        }
        let zero = [
            ("max-batch-records", file.max_batch_records == Some(0)),
            ("max-batch-tests", file.max_batch_tests == Some(0)),
            (
                "max-concurrent-uploads",
                file.max_concurrent_uploads == Some(0),
            ),
            (
                "upload-idle-timeout-secs",
                file.upload_idle_timeout_secs == Some(0),
            ),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(invalid(format!("{key} must be at least 1")));
        }
        if file.tls_cert.is_some() != file.tls_key.is_some() {
            return Err(invalid("tls-cert and tls-key go together".into()));
        }
        if file.cluster_lease_secs == Some(0) {
            return Err(invalid("cluster-lease-secs must be at least 1".into()));
        }
        if file.cluster_tls_cert.is_some() != file.cluster_tls_key.is_some() {
            return Err(invalid(
                "cluster-tls-cert and cluster-tls-key go together".into(),
            ));
        }
        if file.tls_client_ca.is_some() && file.tls_cert.is_none() {
            return Err(invalid("tls-client-ca needs tls-cert and tls-key".into()));
        }
        Ok(file)
    }
}

impl Cli {
    /// Parses the process's command line and applies the configuration file, if any.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    /// Parses `args` (program name first) and applies the configuration file under flags and
    /// environment variables.
    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let Command::Serve(serve) = &mut cli.command {
            if let (Some(path), Some(sub)) =
                (serve.config.clone(), matches.subcommand_matches("serve"))
            {
                let file = FileConfig::read(&path)?;
                serve.apply_file(file, |id| {
                    sub.value_source(id) == Some(ValueSource::DefaultValue)
                });
            }
        }
        Ok(cli)
    }
}

impl ServeArgs {
    /// Takes each value of `file` whose flag was left at its default (`is_default(flag id)`).
    fn apply_file(&mut self, file: FileConfig, is_default: impl Fn(&str) -> bool) {
        macro_rules! take {
            ($field:ident) => {
                if let Some(value) = file.$field {
                    if is_default(stringify!($field)) {
                        self.$field = value;
                    }
                }
            };
        }
        take!(listen);
        take!(data_dir);
        take!(log_format);
        take!(max_artifact_bytes);
        take!(max_versions_per_model);
        take!(allow_self_approval);
        take!(shutdown_grace_secs);
        take!(watch_coalesce_ms);
        take!(insecure_allow_unauthenticated);
        take!(require_signed_production);
        take!(read_rate_limit);
        take!(change_rate_limit);
        take!(allocate_rate_limit);
        take!(ingest_rate_limit);
        take!(max_concurrent_uploads);
        take!(upload_idle_timeout_secs);
        take!(upload_min_bytes_per_sec);
        take!(max_result_magnitude);
        take!(max_batch_records);
        take!(max_batch_tests);
        take!(cluster_name);
        take!(cluster_replicas);
        take!(cluster_lease_secs);
        take!(cluster_snapshot_secs);
        if let Some(url) = file.cluster_advertise {
            if self.cluster_advertise.is_none() || is_default("cluster_advertise") {
                self.cluster_advertise = Some(url);
            }
        }
        if let Some(servers) = file.cluster {
            if self.cluster.is_empty() {
                self.cluster = servers;
            }
        }
        for (flag, from_file, value) in [
            ("auth_file", file.auth_file, &mut self.auth_file),
            (
                "trusted_signers",
                file.trusted_signers,
                &mut self.trusted_signers,
            ),
            ("tls_cert", file.tls_cert, &mut self.tls_cert),
            ("tls_key", file.tls_key, &mut self.tls_key),
            ("tls_client_ca", file.tls_client_ca, &mut self.tls_client_ca),
            (
                "cluster_credentials",
                file.cluster_credentials,
                &mut self.cluster_credentials,
            ),
            (
                "cluster_tls_ca",
                file.cluster_tls_ca,
                &mut self.cluster_tls_ca,
            ),
            (
                "cluster_tls_cert",
                file.cluster_tls_cert,
                &mut self.cluster_tls_cert,
            ),
            (
                "cluster_tls_key",
                file.cluster_tls_key,
                &mut self.cluster_tls_key,
            ),
            (
                "cluster_peer_ca",
                file.cluster_peer_ca,
                &mut self.cluster_peer_ca,
            ),
        ] {
            if value.is_none() || is_default(flag) {
                if let Some(path) = from_file {
                    *value = Some(path);
                }
            }
        }
        if let Some(addr) = file.metrics_listen {
            if is_default("metrics_listen") || self.metrics_listen.is_none() {
                self.metrics_listen = Some(addr);
            }
        }
    }

    /// The effective settings, one `key = value` line each (for `--check-config`).
    pub fn describe(&self) -> String {
        let log_format = match self.log_format {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        };
        let mut lines = vec![
            format!("listen = \"{}\"", self.listen),
            format!("data-dir = {:?}", self.data_dir.display().to_string()),
            format!("log-format = \"{log_format}\""),
            format!("max-artifact-bytes = {}", self.max_artifact_bytes),
            format!("max-versions-per-model = {}", self.max_versions_per_model),
            format!("allow-self-approval = {}", self.allow_self_approval),
            format!("shutdown-grace-secs = {}", self.shutdown_grace_secs),
            format!("watch-coalesce-ms = {}", self.watch_coalesce_ms),
            format!("max-concurrent-uploads = {}", self.max_concurrent_uploads),
            format!(
                "upload-idle-timeout-secs = {}",
                self.upload_idle_timeout_secs
            ),
            format!(
                "upload-min-bytes-per-sec = {}",
                self.upload_min_bytes_per_sec
            ),
            format!("max-result-magnitude = {:e}", self.max_result_magnitude),
            format!("max-batch-records = {}", self.max_batch_records),
            format!("max-batch-tests = {}", self.max_batch_tests),
            format!("read-rate-limit = {}", self.read_rate_limit),
            format!("change-rate-limit = {}", self.change_rate_limit),
            format!("allocate-rate-limit = {}", self.allocate_rate_limit),
            format!("ingest-rate-limit = {}", self.ingest_rate_limit),
        ];
        if let Some(addr) = self.metrics_listen {
            lines.push(format!("metrics-listen = \"{addr}\""));
        }
        for (key, path) in [
            ("auth-file", &self.auth_file),
            ("trusted-signers", &self.trusted_signers),
            ("tls-cert", &self.tls_cert),
            ("tls-key", &self.tls_key),
            ("tls-client-ca", &self.tls_client_ca),
        ] {
            if let Some(path) = path {
                lines.push(format!("{key} = {:?}", path.display().to_string()));
            }
        }
        if !self.cluster.is_empty() {
            lines.push(format!("cluster = {:?}", self.cluster));
            lines.push(format!("cluster-name = {:?}", self.cluster_name));
            lines.push(format!("cluster-replicas = {}", self.cluster_replicas));
            lines.push(format!("cluster-lease-secs = {}", self.cluster_lease_secs));
            lines.push(format!(
                "cluster-snapshot-secs = {}",
                self.cluster_snapshot_secs
            ));
            for (key, path) in [
                ("cluster-credentials", &self.cluster_credentials),
                ("cluster-tls-ca", &self.cluster_tls_ca),
                ("cluster-tls-cert", &self.cluster_tls_cert),
                ("cluster-tls-key", &self.cluster_tls_key),
                ("cluster-peer-ca", &self.cluster_peer_ca),
            ] {
                if let Some(path) = path {
                    lines.push(format!("{key} = {:?}", path.display().to_string()));
                }
            }
            if let Some(url) = &self.cluster_advertise {
                lines.push(format!("cluster-advertise = {url:?}"));
            }
        }
        lines.push(format!(
            "insecure-allow-unauthenticated = {}",
            self.insecure_allow_unauthenticated
        ));
        lines.push(format!(
            "require-signed-production = {}",
            self.require_signed_production
        ));
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Cluster mode's options, when `--cluster` names servers.
    pub fn cluster_options(&self) -> Option<ClusterOptions> {
        if self.cluster.is_empty() {
            return None;
        }
        let mut options = ClusterOptions::new(self.cluster.clone(), &self.cluster_name);
        options.replicas = self.cluster_replicas;
        options.lease_ttl = std::time::Duration::from_secs(self.cluster_lease_secs);
        options.snapshot_interval = (self.cluster_snapshot_secs > 0)
            .then(|| std::time::Duration::from_secs(self.cluster_snapshot_secs));
        options.credentials = self.cluster_credentials.clone();
        options.tls_ca = self.cluster_tls_ca.clone();
        options.tls_client = self
            .cluster_tls_cert
            .clone()
            .zip(self.cluster_tls_key.clone());
        options.advertise = self.cluster_advertise.clone();
        options.peer_ca = self.cluster_peer_ca.clone();
        Some(options)
    }

    /// The server configuration these flags describe.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            cluster: self.cluster_options(),
            data_dir: self.data_dir.clone(),
            registry: RegistryConfig {
                max_artifact_bytes: self.max_artifact_bytes,
                max_versions_per_model: self.max_versions_per_model as usize,
                allow_self_approval: self.allow_self_approval,
                max_concurrent_uploads: self.max_concurrent_uploads,
                upload_idle_timeout: std::time::Duration::from_secs(self.upload_idle_timeout_secs),
                upload_min_bytes_per_sec: self.upload_min_bytes_per_sec,
                // Loaded by the server from `security.trusted_signers`.
                trusted_signers: Default::default(),
                require_signed_production: self.require_signed_production,
            },
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace_secs),
            watch_coalesce: std::time::Duration::from_millis(self.watch_coalesce_ms),
            metrics_listen: self.metrics_listen,
            security: crate::server::SecurityConfig {
                auth_file: self.auth_file.clone(),
                tls: match (&self.tls_cert, &self.tls_key) {
                    (Some(cert), Some(key)) => Some(crate::server::TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: self.tls_client_ca.clone(),
                    }),
                    _ => None,
                },
                insecure_allow_unauthenticated: self.insecure_allow_unauthenticated,
                trusted_signers: self.trusted_signers.clone(),
                rate_limits: RateLimits {
                    allocate: self.allocate_rate_limit,
                    ingest: self.ingest_rate_limit,
                    read: self.read_rate_limit,
                    change: self.change_rate_limit,
                },
            },
            ingest: IngestLimits {
                max_abs_value: self.max_result_magnitude,
                max_batch_records: self.max_batch_records,
                max_batch_tests: self.max_batch_tests,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_on_a_laptop() {
        let cli = Cli::try_parse_from(["arbiter", "serve"]).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(args.data_dir, PathBuf::from("./arbiter-data"));
        let config = args.server_config();
        assert_eq!(config.registry.max_artifact_bytes, 1 << 30);
        assert_eq!(config.registry.max_versions_per_model, 10);
        assert!(!config.registry.allow_self_approval);
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "arbiter",
            "bench",
            "--baseline",
            "echo",
            "--connections",
            "3",
        ])
        .expect("parses");
        let Command::Bench(args) = cli.command else {
            panic!("bench expected");
        };
        assert!(args.baseline_echo());
        assert_eq!(
            (args.connections, args.in_flight, args.duration_ms),
            (3, 16, 3000)
        );
        // Another arbiter as the baseline needs its address; a test prepared elsewhere needs a
        // target.
        let parse = |flags: &[&str]| Cli::try_parse_from([&["arbiter", "bench"], flags].concat());
        let missing = parse(&["--baseline", "arbiter"]).expect_err("no --baseline-url");
        assert!(missing.to_string().contains("--baseline-url"), "{missing}");
        let missing = parse(&["--prepare-url", "http://w"]).expect_err("no --target");
        assert!(missing.to_string().contains("--target"), "{missing}");
        let Command::Bench(args) = parse(&[
            "--target",
            "http://standby",
            "--prepare-url",
            "http://writer",
            "--baseline",
            "arbiter",
            "--baseline-url",
            "http://single",
        ])
        .expect("parses")
        .command
        else {
            panic!("bench expected");
        };
        assert_eq!(args.baseline_system(), Some("baseline"));
        assert_eq!(args.prepare_url.as_deref(), Some("http://writer"));
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match Cli::load_from(args.iter().copied()).expect("loads").command {
            Command::Serve(serve) => serve,
            _ => panic!("serve expected"),
        }
    }

    #[test]
    fn the_file_fills_in_below_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arbiter.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:6000\"\ndata-dir = \"/srv/arbiter\"\nmax-versions-per-model = 3\nlog-format = \"json\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8");
        let from_file = serve(&["arbiter", "serve", "--config", p]);
        assert_eq!(from_file.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(from_file.data_dir, PathBuf::from("/srv/arbiter"));
        assert_eq!(from_file.max_versions_per_model, 3);
        assert_eq!(from_file.log_format, LogFormat::Json);
        assert_eq!(
            from_file.max_artifact_bytes,
            1 << 30,
            "unset keys keep their defaults"
        );
        let flag_wins = serve(&[
            "arbiter",
            "serve",
            "--config",
            p,
            "--max-versions-per-model",
            "7",
        ]);
        assert_eq!(flag_wins.max_versions_per_model, 7);
        assert_eq!(flag_wins.listen.to_string(), "127.0.0.1:6000");
        assert!(from_file.describe().contains("max-versions-per-model = 3"));
    }

    #[test]
    fn where_standbys_forward_to_comes_from_flags_or_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arbiter.toml");
        std::fs::write(
            &path,
            "cluster = [\"nats://10.0.0.1:4222\"]\ncluster-advertise = \"http://10.0.0.5:50051\"\ncluster-peer-ca = \"/etc/arbiter/peers.pem\"\n",
        )
        .expect("write");
        let p = path.to_str().expect("utf-8");
        let from_file = serve(&["arbiter", "serve", "--config", p]);
        let options = from_file.cluster_options().expect("cluster mode");
        assert_eq!(options.advertise.as_deref(), Some("http://10.0.0.5:50051"));
        assert_eq!(
            options.peer_ca,
            Some(PathBuf::from("/etc/arbiter/peers.pem"))
        );
        assert!(from_file
            .describe()
            .contains("cluster-advertise = \"http://10.0.0.5:50051\""));
        let flag_wins = serve(&[
            "arbiter",
            "serve",
            "--config",
            p,
            "--cluster-advertise",
            "https://arbiter-2.internal:50051",
        ]);
        let options = flag_wins.cluster_options().expect("cluster mode");
        assert_eq!(
            options.advertise.as_deref(),
            Some("https://arbiter-2.internal:50051")
        );
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("arbiter.toml");
        for (text, needle) in [
            ("listen = \"not an address\"", "listen"),
            ("no-such-key = 1", "no-such-key"),
            ("max-versions-per-model = 0", "at least 1"),
            ("max-artifact-bytes = \"big\"", "max-artifact-bytes"),
        ] {
            std::fs::write(&path, text).expect("write");
            let p = path.to_str().expect("utf-8");
            let err = Cli::load_from(["arbiter", "serve", "--config", p]).expect_err(text);
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        let err = Cli::load_from(["arbiter", "serve", "--config", "/nonexistent/arbiter.toml"])
            .expect_err("missing");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn zero_retention_is_rejected() {
        let err = Cli::try_parse_from(["arbiter", "serve", "--max-versions-per-model", "0"])
            .expect_err("0 is not allowed");
        assert!(err.to_string().contains("max-versions-per-model"), "{err}");
    }
}
