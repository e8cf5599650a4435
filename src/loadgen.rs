//! `arbiter bench`: a load generator that measures arbiter over real gRPC, side by side with a
//! bare tonic echo service that has the same message shapes and does no work (`--baseline echo`).
//! Every claim is a ratio against that baseline measured in the same run, because the machines
//! are noisy and shared; the time of each scenario is cut into slices taken alternately (A B,
//! B A, …) so that drift falls on both systems alike. `--baseline unauthenticated` measures the cost of authentication
//! instead: the measured arbiter checks a bearer token on every call, the baseline arbiter runs
//! without an auth file.
//!
//! Scenarios: `Allocate` unary and sequential on one connection (p50/p99/p99.9 and rate);
//! `Allocate` closed loop at N connections × M in flight; `AllocateStream` pipelined; and
//! `IngestResults` at batch sizes 100 and 1000 with 1 and 4 concurrent streams (acknowledged
//! results per second; for arbiter each ack means the batch is durable).

mod echo;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::{Baseline, BenchArgs};
use crate::pb;
use crate::server::ServerConfig;
pub use report::{Measurement, Report};
use scenarios::{Scenario, System, Target};

/// What can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Connecting failed.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The target.
        url: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("{what} failed: {status}")]
    Call {
        /// The call.
        what: &'static str,
        /// The status received.
        status: tonic::Status,
    },
    /// `--only` matched no scenario.
    #[error("no scenario name contains {text:?}; the scenarios are: {names}")]
    NoScenario {
        /// The text given.
        text: String,
        /// Every scenario name.
        names: String,
    },
    /// Starting a server failed.
    #[error("starting the {what} server: {reason}")]
    Start {
        /// Which server.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// A server started for the benchmark, stopped on drop of its handle.
struct Local {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    data_dir: Option<PathBuf>,
    /// The bearer token its calls need, when it authenticates.
    token: Option<String>,
}

impl Local {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn bind() -> Result<tokio::net::TcpListener, BenchError> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Start {
            what: "loopback",
            reason: e.to_string(),
        })
}

/// The principal the benchmark authenticates as (`admin`, so it may also set up its test).
const BENCH_PRINCIPAL: &str = "arbiter-bench";

/// Writes an auth file with one principal, [`BENCH_PRINCIPAL`], into `dir` and returns its
/// path and the principal's (random) token.
fn write_auth_file(dir: &std::path::Path) -> Result<(PathBuf, String), BenchError> {
    let failed = |e: std::io::Error| BenchError::Start {
        what: "arbiter",
        reason: format!("writing the auth file: {e}"),
    };
    let token = hex::encode(rand::random::<[u8; 32]>());
    let text = format!(
        "[[principal]]\nname = \"{BENCH_PRINCIPAL}\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
        crate::auth::token_digest(&token)
    );
    std::fs::create_dir_all(dir).map_err(failed)?;
    let path = dir.join("bench-auth.toml");
    std::fs::write(&path, text).map_err(failed)?;
    Ok((path, token))
}

/// Starts arbiter on a temporary data directory; with `authenticated`, every call needs the
/// returned [`Local::token`].
async fn start_arbiter(authenticated: bool) -> Result<Local, BenchError> {
    let listener = bind().await?;
    let addr = listener.local_addr().map_err(|e| BenchError::Start {
        what: "arbiter",
        reason: e.to_string(),
    })?;
    let data_dir = std::env::temp_dir().join(format!(
        "arbiter-bench-{}-{}",
        std::process::id(),
        addr.port()
    ));
    let mut config = ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::new(data_dir.clone())
    };
    let mut token = None;
    if authenticated {
        let (path, secret) = write_auth_file(&data_dir)?;
        config.security.auth_file = Some(path);
        token = Some(secret);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Err(e) = crate::server::run(listener, config, async move {
            let _ = stopped.await;
        })
        .await
        {
            eprintln!("arbiter bench: in-process server failed: {e}");
        }
    });
    Ok(Local {
        addr,
        stop: Some(stop),
        task,
        data_dir: Some(data_dir),
        token,
    })
}

async fn start_echo() -> Result<Local, BenchError> {
    let listener = bind().await?;
    let addr = listener.local_addr().map_err(|e| BenchError::Start {
        what: "echo",
        reason: e.to_string(),
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(echo::serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok(Local {
        addr,
        stop: Some(stop),
        task,
        data_dir: None,
        token: None,
    })
}

/// Runs every scenario against the target (and the echo baseline when asked) and reports.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let all = Scenario::all(args.connections as usize, args.in_flight as usize);
    let scenarios: Vec<Scenario> = match &args.only {
        None => all,
        Some(text) => {
            let names: Vec<String> = all.iter().map(Scenario::name).collect();
            let chosen: Vec<Scenario> = all
                .into_iter()
                .filter(|s| s.name().contains(text.as_str()))
                .collect();
            if chosen.is_empty() {
                return Err(BenchError::NoScenario {
                    text: text.clone(),
                    names: names.join(", "),
                });
            }
            chosen
        }
    };
    let authenticated = args.baseline == Baseline::Unauthenticated;
    if authenticated && args.target.is_some() {
        return Err(BenchError::Start {
            what: "arbiter",
            reason: "--baseline unauthenticated starts both arbiters in this process; \
                     leave out --target"
                .into(),
        });
    }
    let mut locals = Vec::new();
    let arbiter = match &args.target {
        Some(url) => match &args.prepare_url {
            Some(writer) => Target::prepare_on(System::Arbiter, url, writer).await?,
            None => Target::prepare(System::Arbiter, url, None).await?,
        },
        None => {
            let local = start_arbiter(authenticated).await?;
            let url = format!("http://{}", local.addr);
            let token = local.token.clone();
            locals.push(local);
            Target::prepare(System::Arbiter, &url, token).await?
        }
    };
    let mut targets = vec![arbiter];
    let baseline = match args.baseline {
        Baseline::None => None,
        Baseline::Echo => Some((System::Echo, start_echo().await?)),
        Baseline::Unauthenticated => Some((System::Unauthenticated, start_arbiter(false).await?)),
        Baseline::Arbiter => None,
    };
    if let Some((system, local)) = baseline {
        let url = format!("http://{}", local.addr);
        locals.push(local);
        targets.push(Target::prepare(system, &url, None).await?);
    }
    if let (Baseline::Arbiter, Some(url)) = (args.baseline, &args.baseline_url) {
        targets.push(Target::prepare(System::Baseline, url, None).await?);
    }
    let duration = Duration::from_millis(args.duration_ms);
    let mut measurements = Vec::new();
    for scenario in scenarios {
        measurements.extend(scenario.run(&targets, duration).await?);
    }
    // A server the bench did not start keeps only its audit events (append-only).
    for target in targets.iter().filter(|t| {
        (t.system == System::Arbiter && args.target.is_some()) || t.system == System::Baseline
    }) {
        if let Err(e) = target.clean_up().await {
            eprintln!("arbiter bench: could not remove what it created on a server: {e}");
        }
    }
    for local in locals {
        local.shutdown().await;
    }
    Ok(Report::new(args, measurements))
}

/// Registers two model versions on the arbiter at `url` and creates a Thompson test over them
/// (early stopping and stop-loss off); returns its id. Used by `arbiter bench` and the benches.
pub async fn create_test_on(url: &str) -> Result<String, BenchError> {
    create_bench_test(url, None).await
}

/// Registers `n` model versions `<tag>-m<i>:1.0.0` (a 5-byte artifact each) on the arbiter at
/// `url`, where the tag names this process and moment; returns their registry ids.
pub async fn register_bench_models(url: &str, n: usize) -> Result<Vec<String>, BenchError> {
    let channel = scenarios::connect_as(url, None).await?;
    register_models(channel, &bench_tag(), n).await
}

/// A tag no earlier bench run on the same server used.
fn bench_tag() -> String {
    format!(
        "bench-{}-{}",
        std::process::id(),
        crate::time::now() % 1_000_000_000
    )
}

/// See [`register_bench_models`].
async fn register_models(
    channel: scenarios::Connection,
    tag: &str,
    n: usize,
) -> Result<Vec<String>, BenchError> {
    use pb::register_model_request::Part;
    let mut registry = pb::registry_client::RegistryClient::new(channel);
    let mut models = Vec::new();
    for i in 0..n {
        let header = pb::RegisterModelHeader {
            model_id: format!("{tag}-m{i}"),
            version: "1.0.0".into(),
            model_type: pb::ModelType::Signal as i32,
            created_by: BENCH_PRINCIPAL.into(),
            ..Default::default()
        };
        let messages = vec![
            pb::RegisterModelRequest {
                part: Some(Part::Header(header)),
            },
            pb::RegisterModelRequest {
                part: Some(Part::Chunk(b"bench".to_vec())),
            },
        ];
        let m = registry
            .register_model(tokio_stream::iter(messages))
            .await
            .map_err(|status| BenchError::Call {
                what: "RegisterModel",
                status,
            })?
            .into_inner();
        models.push(m.registry_id);
    }
    Ok(models)
}

/// [`create_test_on`] as the principal whose token is `token`, if any.
async fn create_bench_test(url: &str, token: Option<&str>) -> Result<String, BenchError> {
    let channel = scenarios::connect_as(url, token).await?;
    let tag = bench_tag();
    let models = register_models(channel.clone(), &tag, 2).await?;
    let mut experiments = pb::experiments_client::ExperimentsClient::new(channel);
    let request = pb::CreateTestRequest {
        test_id: tag.clone(),
        created_by: BENCH_PRINCIPAL.into(),
        model_registry_ids: models,
        allocation_strategy: pb::AllocationStrategy::ThompsonSampling as i32,
        early_stopping: Some(false),
        stop_loss_threshold: Some(-1e9),
        // Settled at its stop: nothing of it waits for late results after the clean-up.
        settlement_period_seconds: Some(0),
        ..Default::default()
    };
    experiments
        .create_test(request)
        .await
        .map_err(|status| BenchError::Call {
            what: "CreateTest",
            status,
        })?;
    Ok(tag)
}
