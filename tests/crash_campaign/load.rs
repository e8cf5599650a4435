//! The load of one trial: its tasks, each on its own connection with its own seeded RNG, and the
//! [`Ledger`] of everything they sent and every answer they got. A failure or a wrong answer
//! before the kill goes into the ledger as unexpected; after it, failures are what a crash
//! looks like and end the task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use arbiter::pb::{self, ModelStatus, TestStatus};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus as Seeded;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::process::Binary;
use crate::support::{artifact_bytes, header, promote, register, sha256_hex};

/// Tests that receive results; none of them is ever stopped, so no result is rejected.
pub(crate) const RESULT_TESTS: usize = 20;
/// Models registered before the load; the arms of every test.
pub(crate) const BASE_MODELS: usize = 3;
const INGEST_STREAMS: u64 = 4;
/// Unacknowledged batches per stream: enough to keep the group commit busy, few enough that a
/// trial's resend stays small.
const WINDOW: usize = 4;
const MAX_BATCH: usize = 64;
const REGISTRARS: usize = 2;
const LIFECYCLE_WORKERS: usize = 2;

/// Everything the clients sent and every answer they got.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Every batch handed to an IngestResults stream, by its campaign-unique sequence.
    pub(crate) sent: BTreeMap<u64, pb::ResultBatch>,
    /// Sequences of the acknowledged batches.
    pub(crate) acked: BTreeSet<u64>,
    /// Acknowledged registrations by registry id.
    pub(crate) models: BTreeMap<String, Model>,
    pub(crate) promotions: u64,
    /// Acknowledged creations: test id → the registry ids of its arms.
    pub(crate) created: BTreeMap<String, Vec<String>>,
    pub(crate) stopped: BTreeSet<String>,
    pub(crate) allocations: u64,
    /// Failures and wrong answers while the server was up: each one a bug a client would see.
    pub(crate) unexpected: Vec<String>,
}

pub(crate) struct Model {
    pub(crate) checksum: String,
    /// The status of the last acknowledged promotion (DEVELOPMENT when none).
    pub(crate) acked: ModelStatus,
    /// The furthest status ever requested, acknowledged or not.
    pub(crate) requested: ModelStatus,
}

/// State shared by the load's tasks.
pub(crate) struct Load {
    pub(crate) ledger: Mutex<Ledger>,
    /// Set just before the SIGKILL: failures after it are expected.
    pub(crate) killed: AtomicBool,
    /// Arm count of each result test `t0` …
    pub(crate) arms: Vec<usize>,
    /// Registry ids of the models every test uses as arms.
    pub(crate) base: Vec<String>,
}

impl Load {
    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    fn unexpected(&self, what: String) {
        self.ledger().unexpected.push(what);
    }

    /// Notes a failed call: expected once the kill is under way, a bug before.
    fn failed(&self, what: &str, status: &tonic::Status) {
        if !self.killed.load(SeqCst) {
            self.unexpected(format!("{what}: {status}"));
        }
    }
}

impl Ledger {
    pub(crate) fn every_kind_acked(&self) -> bool {
        !self.acked.is_empty()
            && self.models.len() > BASE_MODELS
            && self.created.len() > RESULT_TESTS
    }
}

/// Registers the base models and creates the result tests `t0` … with 2 or 3 arms each.
pub(crate) async fn setup(server: &Binary, rng: &mut Seeded) -> Load {
    let mut ledger = Ledger::default();
    let mut registry = server.registry().await;
    let base = crate::support::register_models(&mut registry, BASE_MODELS).await;
    for id in &base {
        ledger.models.insert(
            id.clone(),
            Model {
                checksum: sha256_hex(b"weights"),
                acked: ModelStatus::Development,
                requested: ModelStatus::Development,
            },
        );
    }
    let strategies = [
        pb::AllocationStrategy::Fixed,
        pb::AllocationStrategy::ThompsonSampling,
        pb::AllocationStrategy::Ucb,
        pb::AllocationStrategy::EpsilonGreedy,
    ];
    let mut experiments = server.experiments().await;
    let arms: Vec<usize> = (0..RESULT_TESTS)
        .map(|_| rng.random_range(2..=BASE_MODELS))
        .collect();
    for (t, &k) in arms.iter().enumerate() {
        let test_id = format!("t{t}");
        let mut request = crate::support::test_request(&test_id, &base[..k]);
        request.allocation_strategy = strategies[t % strategies.len()] as i32;
        // A stopped test rejects results; neither the statistics nor the stop-loss may stop one.
        request.early_stopping = Some(false);
        request.stop_loss_threshold = Some(-1.0);
        experiments.create_test(request).await.expect("create");
        ledger.created.insert(test_id, base[..k].to_vec());
    }
    Load {
        ledger: Mutex::new(ledger),
        killed: AtomicBool::new(false),
        arms,
        base,
    }
}

/// Starts every load task, each with its own seeded RNG and connection.
pub(crate) async fn start_load(
    server: &Binary,
    load: &Arc<Load>,
    rng: &mut Seeded,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for stream in 0..INGEST_STREAMS {
        let client = server.allocator().await;
        let task = ingest_stream(
            load.clone(),
            client,
            stream,
            Seeded::seed_from_u64(rng.random()),
        );
        tasks.push(tokio::spawn(task));
    }
    for w in 0..REGISTRARS {
        let client = server.registry().await;
        let task = registrar(load.clone(), client, w, Seeded::seed_from_u64(rng.random()));
        tasks.push(tokio::spawn(task));
    }
    for w in 0..LIFECYCLE_WORKERS {
        let client = server.experiments().await;
        let task = lifecycle(load.clone(), client, w, Seeded::seed_from_u64(rng.random()));
        tasks.push(tokio::spawn(task));
    }
    let client = server.allocator().await;
    let task = allocator(load.clone(), client, Seeded::seed_from_u64(rng.random()));
    tasks.push(tokio::spawn(task));
    tasks
}

/// A batch of 1 to [`MAX_BATCH`] results spread over random result tests and arms.
fn random_batch(load: &Load, rng: &mut Seeded, sequence: u64) -> pb::ResultBatch {
    let size = rng.random_range(1..=MAX_BATCH);
    let results = (0..size)
        .map(|i| {
            let t = rng.random_range(0..load.arms.len());
            let arm = rng.random_range(0..load.arms[t]);
            // Multiples of 2⁻²⁰ below 0.01: any sum of them is exact in f64, in any order, so
            // the server's totals can be compared for equality.
            let value = f64::from(rng.random_range(-10_000..=10_000)) / f64::from(1 << 20);
            let mut r = crate::support::result(&format!("t{t}"), &format!("arm_{arm}"), value);
            r.result_id = format!("{sequence}.{i}");
            r
        })
        .collect();
    pb::ResultBatch {
        sequence,
        results,
        ..Default::default()
    }
}

/// One IngestResults stream with at most [`WINDOW`] unacknowledged batches, until the kill.
async fn ingest_stream(
    load: Arc<Load>,
    mut client: pb::allocator_client::AllocatorClient<Channel>,
    stream: u64,
    rng: Seeded,
) {
    let window = Arc::new(Semaphore::new(WINDOW));
    let (tx, rx) = mpsc::channel(1);
    let producer = tokio::spawn(produce(load.clone(), window.clone(), tx, stream, rng));
    let what = format!("IngestResults stream {stream}");
    let mut acks = match client.ingest_results(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return load.failed(&what, &status),
    };
    loop {
        match acks.message().await {
            Ok(Some(ack)) => {
                let mut ledger = load.ledger();
                let size = ledger.sent.get(&ack.sequence).map(|b| b.results.len());
                // Every result id is new and every result test running: the whole batch counts.
                if size != Some(ack.accepted as usize)
                    || ack.duplicates > 0
                    || !ack.rejected.is_empty()
                {
                    let wrong = format!("{what}: {ack:?} for a batch of {size:?}");
                    ledger.unexpected.push(wrong);
                }
                ledger.acked.insert(ack.sequence);
                window.add_permits(1);
            }
            Ok(None) if load.killed.load(SeqCst) => break,
            Ok(None) => break load.unexpected(format!("{what} ended with batches pending")),
            Err(status) => break load.failed(&what, &status),
        }
    }
    producer.abort();
}

/// Feeds random batches to a stream whenever `window` has room; sequences are
/// `stream · 10⁶ + n`, unique in the trial.
async fn produce(
    load: Arc<Load>,
    window: Arc<Semaphore>,
    tx: mpsc::Sender<pb::ResultBatch>,
    stream: u64,
    mut rng: Seeded,
) {
    for n in 0.. {
        let Ok(permit) = window.acquire().await else {
            return;
        };
        // Given back by the acknowledgement, not by the send.
        permit.forget();
        let batch = random_batch(&load, &mut rng, stream * 1_000_000 + n);
        // Recorded before it can reach the server: whatever may have been sent is resent later.
        load.ledger().sent.insert(batch.sequence, batch.clone());
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Registers `r<w>_<i>:1.0.0` models with random artifacts and promotes some of them up to 3
/// steps (DEVELOPMENT → TESTING → STAGING → PRODUCTION), until the kill.
async fn registrar(
    load: Arc<Load>,
    mut client: pb::registry_client::RegistryClient<Channel>,
    w: usize,
    mut rng: Seeded,
) {
    // Distinct model ids, so retention (10 versions per model) never removes one.
    for i in 0.. {
        // Up to three 64 KiB chunks, so some kills land in the middle of an upload.
        let bytes = artifact_bytes(rng.random_range(1..=160 * 1024), rng.random());
        let model = format!("r{w}_{i}");
        let registered = register(&mut client, header(&model, "1.0.0", "alice"), &bytes).await;
        let m = match registered {
            Ok(m) => m,
            Err(status) => return load.failed(&format!("register {model}"), &status),
        };
        let id = m.registry_id.clone();
        if m.model_checksum != sha256_hex(&bytes) || m.status() != ModelStatus::Development {
            load.unexpected(format!("registered {m:?}"));
        }
        let entry = Model {
            checksum: m.model_checksum,
            acked: ModelStatus::Development,
            requested: ModelStatus::Development,
        };
        load.ledger().models.insert(id.clone(), entry);
        let steps = rng.random_range(0..=3);
        for target in [
            ModelStatus::Testing,
            ModelStatus::Staging,
            ModelStatus::Production,
        ]
        .into_iter()
        .take(steps)
        {
            set_model(&load, &id, |m| m.requested = target);
            // `promote` approves as "lead", not the creator "alice": the four-eyes rule holds.
            match promote(&mut client, &id, target).await {
                Ok(m) if m.status() == target => {
                    set_model(&load, &id, |m| m.acked = target);
                    load.ledger().promotions += 1;
                }
                Ok(m) => load.unexpected(format!("promoted {id} to {target:?}: {m:?}")),
                Err(status) => return load.failed(&format!("promote {id}"), &status),
            }
        }
    }
}

/// Changes the ledger entry of the acknowledged registration `id`.
fn set_model(load: &Load, id: &str, change: impl FnOnce(&mut Model)) {
    change(load.ledger().models.get_mut(id).expect("registered"));
}

/// Creates tests `x<w>_<i>` over two base models and stops about half of them, until the kill.
/// They receive no results, so their stops reject nothing.
async fn lifecycle(
    load: Arc<Load>,
    mut client: pb::experiments_client::ExperimentsClient<Channel>,
    w: usize,
    mut rng: Seeded,
) {
    for i in 0.. {
        let test_id = format!("x{w}_{i}");
        let models = load.base[..2].to_vec();
        let request = crate::support::test_request(&test_id, &models);
        if let Err(status) = client.create_test(request).await {
            return load.failed(&format!("create {test_id}"), &status);
        }
        load.ledger().created.insert(test_id.clone(), models);
        if rng.random_bool(0.5) {
            let request = pb::StopTestRequest {
                test_id: test_id.clone(),
                reason: "campaign".into(),
                requested_by: "quant".into(),
            };
            match client.stop_test(request).await {
                Ok(r) if r.get_ref().status() == TestStatus::Completed => {
                    load.ledger().stopped.insert(test_id);
                }
                Ok(r) => load.unexpected(format!("stopped {test_id}: {:?}", r.get_ref())),
                Err(status) => return load.failed(&format!("stop {test_id}"), &status),
            }
        }
    }
}

/// Allocates on random created tests (result tests and lifecycle tests, stopped or not) and
/// checks that each answer names an arm of the test, until the kill.
async fn allocator(
    load: Arc<Load>,
    mut client: pb::allocator_client::AllocatorClient<Channel>,
    mut rng: Seeded,
) {
    loop {
        let (test_id, models) = {
            let ledger = load.ledger();
            let pick = rng.random_range(0..ledger.created.len());
            let (id, models) = ledger.created.iter().nth(pick).expect("in range");
            (id.clone(), models.clone())
        };
        let request = pb::AllocateRequest {
            test_id: test_id.clone(),
            unit_key: rng.random::<u32>().to_string(),
        };
        let a = match client.allocate(request).await {
            Ok(a) => a.into_inner(),
            Err(status) => return load.failed(&format!("allocate {test_id}"), &status),
        };
        let arm = a
            .arm_id
            .strip_prefix("arm_")
            .and_then(|k| k.parse::<usize>().ok());
        if a.test_id != test_id || arm.and_then(|k| models.get(k)) != Some(&a.model_registry_id) {
            load.unexpected(format!("allocated {a:?} for {test_id} over {models:?}"));
        }
        load.ledger().allocations += 1;
    }
}
