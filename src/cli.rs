//! The client subcommands of the `arbiter` binary: gRPC calls to a running server, printed as
//! aligned tables or, with `--json`, as JSON for scripts. Exit codes: 0 ok, 1 the server returned
//! an error (printed with its gRPC code), 2 usage (clap).

mod audit;
mod models;
pub mod report;
mod tests;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::{AuditArgs, ClientArgs, ModelsArgs, TestsArgs};

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server could not be reached.
    #[error("cannot connect to {server}: {}", chain(.source))]
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

/// An error and its causes, `a: b: c` (tonic's transport error alone says only "transport
/// error").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl CliError {
    /// A code for scripts: the gRPC code's name for a server's answer, `UNAVAILABLE` when the
    /// server could not be reached, `FILE` for a local file, `FAILED` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            CliError::Status(status) => crate::metrics::code_name(status.code()),
            CliError::Connect { .. } => "UNAVAILABLE",
            CliError::File { .. } => "FILE",
            CliError::Failed(_) => "FAILED",
        }
    }

    /// The error as JSON, for `--json`: `{"error": {"code": …, "message": …}}`.
    pub fn to_json(&self) -> String {
        let message = match self {
            CliError::Status(status) => status.message().to_string(),
            other => other.to_string(),
        };
        serde_json::json!({"error": {"code": self.code(), "message": message}}).to_string()
    }
}

/// Runs `arbiter models …` and returns what to print.
pub async fn models(args: &ModelsArgs) -> Result<String, CliError> {
    if let Some(output) = models::local(args)? {
        return Ok(output);
    }
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

/// A connection that sends the bearer token, if any, with every call.
pub(crate) type Connection = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub(crate) struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// Sends `token`, or nothing for `None`; `None` when the token cannot be a header value.
    pub(crate) fn new(token: Option<&str>) -> Option<Self> {
        match token {
            Some(token) => format!("Bearer {token}")
                .parse()
                .ok()
                .map(|v| Self(Some(v))),
            None => Some(Self(None)),
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

async fn connect(client: &ClientArgs) -> Result<Connection, CliError> {
    let connect_error = |source| CliError::Connect {
        server: client.server.clone(),
        source,
    };
    if !client.server.contains("://") {
        return Err(CliError::Failed(format!(
            "--server {:?} has no scheme: use http://{0} (or https://{0} for a server with TLS)",
            client.server
        )));
    }
    let mut endpoint = Endpoint::from_shared(client.server.clone())
        .map_err(|e| CliError::Failed(format!("invalid --server {:?}: {e}", client.server)))?;
    if client.server.starts_with("https://") {
        let tls = match &client.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| CliError::File {
                    path: path.display().to_string(),
                    source,
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(connect_error)?;
    }
    let channel = endpoint.connect().await.map_err(connect_error)?;
    let token = BearerToken::new(client.token.as_deref())
        .ok_or_else(|| CliError::Failed("--token holds characters a header cannot".into()))?;
    Ok(InterceptedService::new(channel, token))
}

/// A JSON object for people: `key: value` per field that is set (`skip` left out), in key
/// order; strings bare, nested objects as indented JSON.
fn fields_text(value: &serde_json::Value, skip: &[&str]) -> String {
    use serde_json::Value;
    let Value::Object(fields) = value else {
        return String::new();
    };
    let mut out = String::new();
    for (key, value) in fields {
        let shown = match value {
            _ if skip.contains(&key.as_str()) => continue,
            Value::Null => continue,
            Value::String(s) if s.is_empty() => continue,
            Value::Array(a) if a.is_empty() => continue,
            Value::Object(o) if o.is_empty() => continue,
            Value::String(s) => s.clone(),
            Value::Object(_) => {
                let text = serde_json::to_string_pretty(value).unwrap_or_default();
                format!("\n  {}", text.replace('\n', "\n  "))
            }
            other => other.to_string(),
        };
        out.push_str(&format!("{key}: {shown}\n"));
    }
    out
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
