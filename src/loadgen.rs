//! `arbiter bench`: a load generator that measures arbiter over real gRPC, side by side with a
//! bare tonic echo service that has the same message shapes and does no work (`--baseline echo`).
//! Every claim is a ratio against that baseline measured in the same run, because the machines
//! are noisy and shared.
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

use crate::config::BenchArgs;
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

async fn start_arbiter() -> Result<Local, BenchError> {
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
    let config = ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::new(data_dir.clone())
    };
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
    let mut locals = Vec::new();
    let arbiter_url = match &args.target {
        Some(url) => url.clone(),
        None => {
            let local = start_arbiter().await?;
            let url = format!("http://{}", local.addr);
            locals.push(local);
            url
        }
    };
    let arbiter = Target::prepare(System::Arbiter, &arbiter_url).await?;
    let mut targets = vec![arbiter];
    if args.baseline_echo() {
        let local = start_echo().await?;
        let url = format!("http://{}", local.addr);
        locals.push(local);
        targets.push(Target::prepare(System::Echo, &url).await?);
    }
    let duration = Duration::from_millis(args.duration_ms);
    let mut measurements = Vec::new();
    for scenario in scenarios {
        for target in &targets {
            eprintln!(
                "arbiter bench: {} against {} ({} ms)…",
                scenario.name(),
                target.system.name(),
                args.duration_ms
            );
            measurements.push(scenario.run(target, duration).await?);
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
    create_bench_test(url).await
}

async fn create_bench_test(url: &str) -> Result<String, BenchError> {
    use pb::register_model_request::Part;
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .map_err(|e| BenchError::Start {
            what: "client",
            reason: e.to_string(),
        })?
        .connect()
        .await
        .map_err(|source| BenchError::Connect {
            url: url.to_string(),
            source,
        })?;
    let tag = format!(
        "bench-{}-{}",
        std::process::id(),
        crate::time::now() % 1_000_000_000
    );
    let mut registry = pb::registry_client::RegistryClient::new(channel.clone());
    let mut models = Vec::new();
    for i in 0..2 {
        let header = pb::RegisterModelHeader {
            model_id: format!("{tag}-m{i}"),
            version: "1.0.0".into(),
            model_type: pb::ModelType::Signal as i32,
            created_by: "arbiter-bench".into(),
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
    let mut experiments = pb::experiments_client::ExperimentsClient::new(channel);
    let request = pb::CreateTestRequest {
        test_id: tag.clone(),
        created_by: "arbiter-bench".into(),
        model_registry_ids: models,
        allocation_strategy: pb::AllocationStrategy::ThompsonSampling as i32,
        early_stopping: Some(false),
        stop_loss_threshold: Some(-1e9),
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
