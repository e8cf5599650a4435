//! Command-line configuration (clap derive). Every flag has an `ARBITER_…` environment override.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
}

/// The baseline `arbiter bench` compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// No baseline.
    None,
    /// A bare tonic echo service with the same message shapes, started in the same process.
    Echo,
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
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// Whether the echo baseline runs.
    pub fn baseline_echo(&self) -> bool {
        self.baseline == Baseline::Echo
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Flags of `arbiter serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
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
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.clone(),
            registry: RegistryConfig {
                max_artifact_bytes: self.max_artifact_bytes,
                max_versions_per_model: self.max_versions_per_model as usize,
                allow_self_approval: self.allow_self_approval,
            },
            shutdown_grace: std::time::Duration::from_secs(self.shutdown_grace_secs),
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
    }

    #[test]
    fn zero_retention_is_rejected() {
        let err = Cli::try_parse_from(["arbiter", "serve", "--max-versions-per-model", "0"])
            .expect_err("0 is not allowed");
        assert!(err.to_string().contains("max-versions-per-model"), "{err}");
    }
}
