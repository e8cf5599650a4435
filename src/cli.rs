//! The client subcommands of the `arbiter` binary: gRPC calls to a running server, printed as
//! aligned tables or, with `--json`, as JSON for scripts. Exit codes: 0 ok, 1 the server returned
//! an error (printed with its gRPC code), 2 usage (clap).

mod audit;
mod models;
pub mod report;
mod tests;

use tonic::transport::Channel;

use crate::config::{AuditArgs, ClientArgs, ModelsArgs, TestsArgs};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server could not be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The address given.
        server: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The server answered with an error.
    #[error("{}: {}", crate::metrics::code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The command ran but found a problem (e.g. a broken audit chain).
    #[error("{0}")]
    Failed(String),
}

/// Runs `arbiter models …` and returns what to print.
pub async fn models(args: &ModelsArgs) -> Result<String, CliError> {
    models::run(args, connect(&args.client).await?).await
}

/// Runs `arbiter tests …` and returns what to print.
pub async fn tests(args: &TestsArgs) -> Result<String, CliError> {
    tests::run(args, connect(&args.client).await?).await
}

/// Runs `arbiter audit …` and returns what to print.
pub async fn audit(args: &AuditArgs) -> Result<String, CliError> {
    audit::run(args, connect(&args.client).await?).await
}

async fn connect(client: &ClientArgs) -> Result<Channel, CliError> {
    let connect_error = |source| CliError::Connect {
        server: client.server.clone(),
        source,
    };
    Channel::from_shared(client.server.clone())
        .map_err(|e| CliError::Failed(format!("invalid --server {:?}: {e}", client.server)))?
        .connect()
        .await
        .map_err(connect_error)
}

/// Pretty JSON of a value built for output.
fn json(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values always encode");
    text.push('\n');
    text
}

/// RFC 3339 of a protobuf timestamp (UTC, seconds precision), or "-".
fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_string())
}
