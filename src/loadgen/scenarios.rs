//! The load shapes, each run for a fixed duration against one target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{create_bench_test, BenchError, Measurement};
use crate::cli::BearerToken;
use crate::pb::arbiter::bench::v1::echo_client::EchoClient;
use crate::pb::{self, allocator_client::AllocatorClient};

/// Which server a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum System {
    /// arbiter itself.
    Arbiter,
    /// The echo baseline.
    Echo,
    /// arbiter without authentication, the baseline of an authenticated arbiter.
    Unauthenticated,
    /// Another running arbiter (`--baseline arbiter`).
    Baseline,
}

impl System {
    /// "arbiter" or "echo".
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Arbiter => "arbiter",
            Self::Echo => "echo",
            Self::Unauthenticated => "no-auth",
            Self::Baseline => "baseline",
        }
    }
}

/// A server ready to be measured.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Which server.
    pub system: System,
    url: String,
    /// Where its test was created and is stopped (its own URL unless it is a standby).
    prepared_on: String,
    test_id: String,
    token: Option<String>,
}

impl Target {
    /// Connects once to check the target and, for arbiter, creates the test to allocate from
    /// (as the principal whose token is `token`, when it authenticates).
    pub(super) async fn prepare(
        system: System,
        url: &str,
        token: Option<String>,
    ) -> Result<Self, BenchError> {
        let test_id = match system {
            System::Arbiter | System::Unauthenticated | System::Baseline => {
                retry_until_up(|| create_bench_test(url, token.as_deref())).await?
            }
            System::Echo => {
                retry_until_up(|| async { connect(url).await.map(|_| ()) }).await?;
                "bench-echo".to_string()
            }
        };
        Ok(Self {
            system,
            url: url.to_string(),
            prepared_on: url.to_string(),
            test_id,
            token,
        })
    }

    /// An arbiter at `url` (a cluster's standby) whose test is created at `writer`: ready once
    /// `url` allocates from it (at most 10 s after its creation).
    pub(super) async fn prepare_on(
        system: System,
        url: &str,
        writer: &str,
    ) -> Result<Self, BenchError> {
        let mut target = Self::prepare(system, writer, None).await?;
        target.url = url.to_string();
        let probe = target.clone();
        retry_until_up(|| {
            let probe = probe.clone();
            async move {
                AllocatorClient::new(connect(&probe.url).await?)
                    .allocate(probe.request())
                    .await
                    .map(|_| ())
                    .map_err(|status| BenchError::Call {
                        what: "Allocate on the target",
                        status,
                    })
            }
        })
        .await?;
        Ok(target)
    }

    /// Stops the test [`Target::prepare`] created and deletes its two model versions (`<test>-m0`
    /// and `<test>-m1`, version 1.0.0). Only arbiter targets have any.
    pub(super) async fn clean_up(&self) -> Result<(), BenchError> {
        if self.system == System::Echo {
            return Ok(());
        }
        let channel = connect_as(&self.prepared_on, self.token.as_deref()).await?;
        pb::experiments_client::ExperimentsClient::new(channel.clone())
            .stop_test(pb::StopTestRequest {
                test_id: self.test_id.clone(),
                reason: "arbiter bench finished".into(),
                requested_by: String::new(),
            })
            .await
            .map_err(|status| BenchError::Call {
                what: "StopTest",
                status,
            })?;
        let mut registry = pb::registry_client::RegistryClient::new(channel);
        for i in 0..2 {
            registry
                .delete_model(pb::DeleteModelRequest {
                    registry_id: format!("{}-m{i}:1.0.0", self.test_id),
                    force: false,
                    requested_by: String::new(),
                })
                .await
                .map_err(|status| BenchError::Call {
                    what: "DeleteModel",
                    status,
                })?;
        }
        Ok(())
    }

    fn request(&self) -> pb::AllocateRequest {
        pb::AllocateRequest {
            test_id: self.test_id.clone(),
            unit_key: String::new(),
        }
    }
}

async fn retry_until_up<T, F, Fut>(mut attempt: F) -> Result<T, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>>,
{
    let mut last = None;
    for _ in 0..100 {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last.expect("at least one attempt"))
}

async fn connect(url: &str) -> Result<Channel, BenchError> {
    Channel::from_shared(url.to_string())
        .map_err(|e| BenchError::Start {
            what: "client",
            reason: e.to_string(),
        })?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| BenchError::Connect {
            url: url.to_string(),
            source,
        })
}

/// A channel that sends the bench principal's token, if any.
pub(super) type Connection = InterceptedService<Channel, BearerToken>;

/// A connection to an arbiter at `url` that sends `token`, if any, with every call.
pub(super) async fn connect_as(url: &str, token: Option<&str>) -> Result<Connection, BenchError> {
    let bearer = BearerToken::new(token).ok_or_else(|| BenchError::Start {
        what: "client",
        reason: "the token cannot be a header value".into(),
    })?;
    Ok(InterceptedService::new(connect(url).await?, bearer))
}

/// One client over either service: both expose the same three calls.
#[derive(Debug, Clone)]
enum Client {
    Arbiter(AllocatorClient<InterceptedService<Channel, BearerToken>>),
    Echo(EchoClient<Channel>),
}

impl Client {
    async fn new(target: &Target) -> Result<Self, BenchError> {
        Ok(match target.system {
            System::Arbiter | System::Unauthenticated | System::Baseline => Self::Arbiter(
                AllocatorClient::new(connect_as(&target.url, target.token.as_deref()).await?),
            ),
            System::Echo => Self::Echo(EchoClient::new(connect(&target.url).await?)),
        })
    }

    async fn allocate(&mut self, request: pb::AllocateRequest) -> Result<(), BenchError> {
        let outcome = match self {
            Self::Arbiter(c) => c.allocate(request).await.map(drop),
            Self::Echo(c) => c.allocate(request).await.map(drop),
        };
        outcome.map_err(|status| BenchError::Call {
            what: "Allocate",
            status,
        })
    }

    async fn allocate_stream(
        &mut self,
        requests: ReceiverStream<pb::AllocateRequest>,
    ) -> Result<tonic::Streaming<pb::Allocation>, BenchError> {
        let outcome = match self {
            Self::Arbiter(c) => c.allocate_stream(requests).await,
            Self::Echo(c) => c.allocate_stream(requests).await,
        };
        outcome
            .map(tonic::Response::into_inner)
            .map_err(|status| BenchError::Call {
                what: "AllocateStream",
                status,
            })
    }

    async fn ingest(
        &mut self,
        batches: ReceiverStream<pb::ResultBatch>,
    ) -> Result<tonic::Streaming<pb::BatchAck>, BenchError> {
        let outcome = match self {
            Self::Arbiter(c) => c.ingest_results(batches).await,
            Self::Echo(c) => c.ingest_results(batches).await,
        };
        outcome
            .map(tonic::Response::into_inner)
            .map_err(|status| BenchError::Call {
                what: "IngestResults",
                status,
            })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// A load shape.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scenario {
    /// Unary Allocate, one call at a time on one connection.
    UnarySequential,
    /// Unary Allocate from `connections` × `in_flight` concurrent callers.
    UnaryClosedLoop {
        /// Connections.
        connections: usize,
        /// Callers per connection.
        in_flight: usize,
    },
    /// AllocateStream with up to 512 requests in flight.
    StreamPipelined,
    /// IngestResults with `streams` concurrent streams of `batch`-result batches.
    Ingest {
        /// Results per batch.
        batch: usize,
        /// Concurrent streams.
        streams: usize,
        /// Whether each result carries a result_id (idempotency costs a lookup and a key each).
        ids: bool,
    },
}

impl Scenario {
    /// Every scenario of the benchmark, in order.
    pub(super) fn all(connections: usize, in_flight: usize) -> Vec<Self> {
        let ingest = |batch, streams, ids| Self::Ingest {
            batch,
            streams,
            ids,
        };
        vec![
            Self::UnarySequential,
            Self::UnaryClosedLoop {
                connections,
                in_flight,
            },
            Self::StreamPipelined,
            ingest(100, 1, true),
            ingest(100, 4, true),
            ingest(1000, 1, true),
            ingest(1000, 4, true),
            ingest(1000, 4, false),
        ]
    }

    /// A stable name for tables and JSON.
    pub(super) fn name(&self) -> String {
        match self {
            Self::UnarySequential => "allocate_unary_sequential".into(),
            Self::UnaryClosedLoop {
                connections,
                in_flight,
            } => {
                format!("allocate_unary_closed_loop_{connections}x{in_flight}")
            }
            Self::StreamPipelined => "allocate_stream_pipelined".into(),
            Self::Ingest {
                batch,
                streams,
                ids: true,
            } => format!("ingest_batch{batch}_streams{streams}"),
            Self::Ingest {
                batch,
                streams,
                ids: false,
            } => format!("ingest_batch{batch}_streams{streams}_no_ids"),
        }
    }

    /// Runs the scenario against each of `targets` for `duration`. With more than one target
    /// the time is cut into [`ROUNDS`] slices taken in the order A B, B A, A B, B A…, so that
    /// drift in the machine's speed (other load, CPU frequency, warm caches) falls on every
    /// target alike; each target's slices are merged into one measurement.
    pub(super) async fn run(
        &self,
        targets: &[Target],
        duration: Duration,
    ) -> Result<Vec<Measurement>, BenchError> {
        let rounds = if targets.len() > 1 { ROUNDS } else { 1 };
        let slice = duration / rounds;
        let mut merged: Vec<Option<Outcome>> = vec![None; targets.len()];
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let target = &targets[i];
                eprintln!(
                    "arbiter bench: {} against {} ({} ms, round {} of {rounds})…",
                    self.name(),
                    target.system.name(),
                    slice.as_millis(),
                    round + 1
                );
                let outcome = self.measure(target, slice).await?;
                merged[i] = Some(match merged[i].take() {
                    None => outcome,
                    Some(before) => merge(before, outcome),
                });
            }
        }
        Ok(targets
            .iter()
            .zip(merged)
            .map(|(target, outcome)| {
                let (ops, elapsed, latencies) = outcome.expect("every target measured");
                Measurement::new(self.name(), target.system.name(), ops, elapsed, latencies)
            })
            .collect())
    }

    async fn measure(&self, target: &Target, duration: Duration) -> Result<Outcome, BenchError> {
        Ok(match *self {
            Self::UnarySequential => unary(target, 1, 1, duration).await?,
            Self::UnaryClosedLoop {
                connections,
                in_flight,
            } => unary(target, connections, in_flight, duration).await?,
            Self::StreamPipelined => pipelined(target, duration).await?,
            Self::Ingest {
                batch,
                streams,
                ids,
            } => ingest(target, batch, streams, ids, duration).await?,
        })
    }
}

/// Slices per scenario and target when a baseline runs.
pub(super) const ROUNDS: u32 = 4;

fn merge(a: Outcome, b: Outcome) -> Outcome {
    let latencies = match (a.2, b.2) {
        (Some(mut x), Some(y)) => {
            x.add(&y).expect("histograms of the same bounds");
            Some(x)
        }
        (x, y) => x.or(y),
    };
    (a.0 + b.0, a.1 + b.1, latencies)
}

type Outcome = (u64, Duration, Option<Histogram<u64>>);

async fn unary(
    target: &Target,
    connections: usize,
    in_flight: usize,
    duration: Duration,
) -> Result<Outcome, BenchError> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut client = Client::new(target).await?;
        for _ in 0..200 {
            client.allocate(target.request()).await?; // warm-up
        }
        clients.push(client);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for client in &clients {
        for _ in 0..in_flight {
            let mut client = client.clone();
            let request = target.request();
            tasks.push(tokio::spawn(async move {
                let mut latencies = histogram();
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    client.allocate(request.clone()).await?;
                    latencies.saturating_record(t0.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                Ok::<_, BenchError>((ops, latencies))
            }));
        }
    }
    let mut total = 0;
    let mut merged = histogram();
    for task in tasks {
        let (ops, latencies) = task.await.map_err(|e| BenchError::Start {
            what: "caller",
            reason: e.to_string(),
        })??;
        total += ops;
        merged.add(&latencies).expect("histograms share bounds");
    }
    Ok((total, started.elapsed(), Some(merged)))
}

const STREAM_WINDOW: usize = 512;

async fn pipelined(target: &Target, duration: Duration) -> Result<Outcome, BenchError> {
    let mut client = Client::new(target).await?;
    let (tx, rx) = mpsc::channel(STREAM_WINDOW);
    let window = Arc::new(Semaphore::new(STREAM_WINDOW));
    let mut responses = client.allocate_stream(ReceiverStream::new(rx)).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let sender_window = window.clone();
    let request = target.request();
    let sender = tokio::spawn(async move {
        while Instant::now() < deadline {
            let Ok(permit) = sender_window.acquire().await else {
                return;
            };
            permit.forget();
            if tx.send(request.clone()).await.is_err() {
                return;
            }
        }
    });
    let mut ops = 0u64;
    while let Some(response) = responses
        .message()
        .await
        .map_err(|status| BenchError::Call {
            what: "AllocateStream",
            status,
        })?
    {
        drop(response);
        ops += 1;
        window.add_permits(1);
    }
    let elapsed = started.elapsed();
    let _ = sender.await;
    Ok((ops, elapsed, None))
}

const BATCH_WINDOW: usize = 4;

async fn ingest(
    target: &Target,
    batch: usize,
    streams: usize,
    ids: bool,
    duration: Duration,
) -> Result<Outcome, BenchError> {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for stream in 0..streams {
        let mut client = Client::new(target).await?;
        let test_id = target.test_id.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(BATCH_WINDOW);
            let window = Arc::new(Semaphore::new(BATCH_WINDOW));
            let mut acks = client.ingest(ReceiverStream::new(rx)).await?;
            let sender_window = window.clone();
            let sender = tokio::spawn(async move {
                let mut sequence = 0u64;
                while Instant::now() < deadline {
                    let Ok(permit) = sender_window.acquire().await else {
                        return;
                    };
                    permit.forget();
                    let results = (0..batch)
                        .map(|i| pb::ResultRecord {
                            test_id: test_id.clone(),
                            attribution: Some(pb::result_record::Attribution::ArmId(
                                if i % 2 == 0 { "arm_0" } else { "arm_1" }.to_string(),
                            )),
                            return_value: ((i % 17) as f64 - 8.0) * 1e-3,
                            result_id: if ids {
                                format!("{run}-{stream}-{sequence}-{i}")
                            } else {
                                String::new()
                            },
                            ..Default::default()
                        })
                        .collect();
                    if tx
                        .send(pb::ResultBatch {
                            sequence,
                            results,
                            ..Default::default()
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sequence += 1;
                }
            });
            let mut accepted = 0u64;
            while let Some(ack) = acks.message().await.map_err(|status| BenchError::Call {
                what: "IngestResults",
                status,
            })? {
                accepted += u64::from(ack.accepted);
                window.add_permits(1);
            }
            let _ = sender.await;
            Ok::<_, BenchError>(accepted)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.map_err(|e| BenchError::Start {
            what: "stream",
            reason: e.to_string(),
        })??;
    }
    Ok((total, started.elapsed(), None))
}
