//! [`Reporter`]: sends results, and the decisions a [`LocalAllocator`] drew, over
//! `IngestResults`, pipelined, resending what was not acknowledged after a reconnect.
//!
//! Exactly once: every result carries a `result_id` (the reporter assigns one when the caller
//! left it empty) and every decision count a `counts_id`, so a batch sent again after a lost
//! acknowledgement is counted once by the server. Nothing is dropped: a result leaves the
//! buffer only once the server acknowledged it (accepted, duplicate or rejected).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::connection::{request, Backoff};

use crate::pb;
use crate::LocalAllocator;

/// How a [`Reporter`] batches and how much it holds.
#[derive(Debug, Clone)]
pub struct ReporterOptions {
    /// Names the client in the ids the reporter assigns (results without a `result_id`, decision
    /// counts). Use the allocator's client id.
    pub client_id: String,
    /// Sent as `authorization: Bearer <token>` (the principal needs the `streamer` role).
    pub token: Option<String>,
    /// Most results per batch.
    pub max_batch: usize,
    /// A batch goes out once it is full or at most this long after its first result.
    pub linger: Duration,
    /// The allocator's decision counts go out this often (and at every flush). Each report
    /// is remembered by the server for deduplication, so seconds, not milliseconds.
    pub counts_every: Duration,
    /// Batches sent and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Results held (waiting or sent, not yet acknowledged), at most. When it is full,
    /// [`Reporter::try_report`] hands the result back and [`Reporter::report`] waits for room.
    pub capacity: usize,
    /// First wait before reconnecting; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl ReporterOptions {
    /// The defaults for client `client_id`: batches of up to 1000 results, 5 ms linger,
    /// decision counts every second, 8 batches in flight, room for 100 000 results.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            token: None,
            max_batch: 1000,
            linger: Duration::from_millis(5),
            counts_every: Duration::from_secs(1),
            max_in_flight: 8,
            capacity: 100_000,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// Authenticates with a bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// The buffer was full: the result is handed back, not sent.
#[derive(Debug)]
pub struct Full(pub Box<pb::ResultRecord>);

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the reporter's buffer is full (the server is slow or out of reach)")
    }
}

impl std::error::Error for Full {}

/// A record (or decision count) the server refused, with its reason.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The refused result (`None` for a decision count).
    pub result: Option<pb::ResultRecord>,
    /// The refused decision count (`None` for a result).
    pub counts: Option<pb::DecisionCounts>,
    /// gRPC status code number.
    pub code: i32,
    /// The server's reason.
    pub message: String,
}

/// What a reporter has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReporterStats {
    /// Results the server applied.
    pub accepted: u64,
    /// Results the server had applied before (resent after a lost acknowledgement).
    pub duplicates: u64,
    /// Results the server refused ([`Reporter::take_rejections`]).
    pub rejected: u64,
    /// Decision counts the server added.
    pub counts_accepted: u64,
    /// Batches sent again after a reconnect.
    pub resent_batches: u64,
}

/// Most rejections kept for [`Reporter::take_rejections`].
const MAX_KEPT_REJECTIONS: usize = 1000;

#[derive(Debug)]
struct Shared {
    options: ReporterOptions,
    /// Results waiting to be sent.
    queue: Mutex<VecDeque<pb::ResultRecord>>,
    /// Wakes the sender: a batch is full, or a flush was asked for.
    wake: Notify,
    /// One permit per result the buffer has room for.
    room: Semaphore,
    /// Results and decision counts not yet acknowledged (queued, taken, in flight).
    outstanding: tokio::sync::watch::Sender<u64>,
    /// Results queued so far, and results acknowledged so far (in the same order).
    results_queued: AtomicU64,
    results_settled: AtomicU64,
    /// Decision counts taken so far, and acknowledged so far (in the same order).
    counts_queued: AtomicU64,
    counts_settled: AtomicU64,
    /// Bumped at every acknowledgement: wakes flushes.
    progress: tokio::sync::watch::Sender<()>,
    /// Flushes asked for so far: each wants the decision counts taken after it was asked.
    counts_asked: AtomicU64,
    /// The flushes whose decision counts are taken (and outstanding until acknowledged).
    counts_taken: AtomicU64,
    stats: Mutex<ReporterStats>,
    rejections: Mutex<VecDeque<Rejection>>,
    /// Numbers the ids this reporter assigns.
    next_id: AtomicU64,
    /// Makes this process's ids unlike those of the client's earlier runs.
    run: u64,
}

impl Shared {
    fn assign_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}/{:016x}/{prefix}{n}", self.options.client_id, self.run)
    }
}

/// Sends results and decision counts to the server (see the module documentation). Cheap to
/// clone; the background task stops when the last clone is dropped (what is not acknowledged
/// by then is not sent: [`Reporter::flush`] first).
#[derive(Debug, Clone)]
pub struct Reporter {
    shared: Arc<Shared>,
    _task: Arc<crate::watcher::TaskGuard>,
}

impl Reporter {
    /// Starts reporting through `endpoints` (the arbiters of a cluster, or one server), in turn
    /// after each failure. With `allocator`, the decisions it draws are reported too (every
    /// `counts_every`, one entry per test), so the server's allocation counts and sample-ratio
    /// check include them. Must be called within a tokio runtime.
    ///
    /// # Panics
    ///
    /// When `endpoints` is empty or no tokio runtime is running.
    pub fn start(
        endpoints: Vec<Endpoint>,
        allocator: Option<LocalAllocator>,
        options: ReporterOptions,
    ) -> Self {
        assert!(!endpoints.is_empty(), "Reporter::start needs an endpoint");
        // Settings that would stall or panic the sender are taken at their nearest sane value.
        let mut options = options;
        options.max_batch = options.max_batch.max(1);
        options.max_in_flight = options.max_in_flight.max(1);
        options.linger = options.linger.max(Duration::from_millis(1));
        options.counts_every = options.counts_every.max(Duration::from_millis(10));
        options.capacity = options.capacity.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            room: Semaphore::new(options.capacity),
            options,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            outstanding: tokio::sync::watch::channel(0).0,
            results_queued: AtomicU64::new(0),
            results_settled: AtomicU64::new(0),
            counts_queued: AtomicU64::new(0),
            counts_settled: AtomicU64::new(0),
            progress: tokio::sync::watch::channel(()).0,
            counts_asked: AtomicU64::new(0),
            counts_taken: AtomicU64::new(0),
            stats: Mutex::default(),
            rejections: Mutex::default(),
            next_id: AtomicU64::new(0),
            run: (crate::draw::uniform() * (1u64 << 53) as f64) as u64,
        });
        let channels = crate::connection::channels(endpoints);
        let task = tokio::spawn(run(Arc::downgrade(&shared), allocator, channels));
        Self {
            shared,
            _task: Arc::new(crate::watcher::TaskGuard(vec![task])),
        }
    }

    /// Queues `result` if the buffer has room; else hands it back.
    pub fn try_report(&self, result: pb::ResultRecord) -> Result<(), Full> {
        match self.shared.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.enqueue(result);
                Ok(())
            }
            Err(_) => Err(Full(Box::new(result))),
        }
    }

    /// Queues `result`, waiting for room in the buffer.
    pub async fn report(&self, result: pb::ResultRecord) {
        self.shared
            .room
            .acquire()
            .await
            .expect("the reporter never closes its buffer")
            .forget();
        self.enqueue(result);
    }

    fn enqueue(&self, mut result: pb::ResultRecord) {
        if result.result_id.is_empty() {
            result.result_id = self.shared.assign_id("r");
        }
        self.shared.outstanding.send_modify(|n| *n += 1);
        let full = {
            let mut queue = self.shared.queue.lock().expect("queue");
            self.shared.results_queued.fetch_add(1, Ordering::AcqRel);
            queue.push_back(result);
            queue.len() >= self.shared.options.max_batch
        };
        if full {
            self.shared.wake.notify_one();
        }
    }

    /// Sends what is queued and the allocator's decision counts now, and waits until the server
    /// has acknowledged every result reported before this call and those counts, at most
    /// `timeout`; whether it did. Results reported meanwhile by other tasks are not waited for.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let shared = &self.shared;
        let results = shared.results_queued.load(Ordering::Acquire);
        let asked = shared.counts_asked.fetch_add(1, Ordering::AcqRel) + 1;
        shared.wake.notify_one();
        let mut progress = shared.progress.subscribe();
        let done = async {
            // The counts are taken by the sender after this call: wait until it has.
            while shared.counts_taken.load(Ordering::Acquire) < asked {
                shared.wake.notify_one();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let counts = shared.counts_queued.load(Ordering::Acquire);
            loop {
                progress.borrow_and_update();
                if shared.results_settled.load(Ordering::Acquire) >= results
                    && shared.counts_settled.load(Ordering::Acquire) >= counts
                {
                    return true;
                }
                if progress.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, done).await.unwrap_or(false)
    }

    /// What the reporter has done so far.
    pub fn stats(&self) -> ReporterStats {
        *self.shared.stats.lock().expect("stats")
    }

    /// Results and decision counts not yet acknowledged.
    pub fn outstanding(&self) -> u64 {
        *self.shared.outstanding.borrow()
    }

    /// The refusals since the last call (the latest 1000 at most).
    pub fn take_rejections(&self) -> Vec<Rejection> {
        self.shared
            .rejections
            .lock()
            .expect("rejections")
            .drain(..)
            .collect()
    }
}

/// A batch sent and not yet acknowledged.
struct InFlight {
    sequence: u64,
    batch: pb::ResultBatch,
}

/// Streams batches through each channel in turn until the reporter is dropped.
async fn run(
    shared: std::sync::Weak<Shared>,
    allocator: Option<LocalAllocator>,
    channels: Vec<Channel>,
) {
    let mut unacknowledged: VecDeque<InFlight> = VecDeque::new();
    let mut backoff = Backoff::default();
    let mut next_sequence = 1u64;
    for attempt in 0usize.. {
        let Some(s) = shared.upgrade() else { return };
        let channel = channels[attempt % channels.len()].clone();
        match stream(
            &s,
            allocator.as_ref(),
            channel,
            &mut unacknowledged,
            &mut next_sequence,
        )
        .await
        {
            Ok(()) => backoff.reset(),
            Err(StreamEnd::Refused(status)) if refuses_the_batch(&status) => {
                // The server refused the first unacknowledged batch as a whole (over its
                // limits, say): sent again unchanged it would be refused forever.
                tracing::warn!(error = %status, "a result batch was refused whole; splitting it");
                split_front(&s, &mut unacknowledged, &status);
                backoff.reset();
                continue;
            }
            Err(StreamEnd::Refused(status)) => {
                tracing::warn!(error = %status, "result stream ended; reconnecting")
            }
            Err(StreamEnd::Failed(why)) => {
                tracing::warn!(error = %why, "result stream ended; reconnecting")
            }
        }
        let (min, max) = (s.options.reconnect_min, s.options.reconnect_max);
        drop(s);
        backoff.wait(min, max).await;
    }
}

/// How a result stream ended.
enum StreamEnd {
    /// The server answered with this status.
    Refused(tonic::Status),
    /// The connection or the exchange failed.
    Failed(String),
}

impl From<String> for StreamEnd {
    fn from(why: String) -> Self {
        Self::Failed(why)
    }
}

impl From<&str> for StreamEnd {
    fn from(why: &str) -> Self {
        Self::Failed(why.to_string())
    }
}

/// Whether `status` refuses a batch for what it holds (sending it again would fail again).
fn refuses_the_batch(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument | tonic::Code::OutOfRange
    )
}

/// Splits the first unacknowledged batch in two; one that holds a single item is given up,
/// kept as a rejection.
fn split_front(shared: &Shared, unacknowledged: &mut VecDeque<InFlight>, status: &tonic::Status) {
    let Some(InFlight { batch, .. }) = unacknowledged.pop_front() else {
        return;
    };
    let items = batch.results.len() + batch.decision_counts.len();
    if items <= 1 {
        let mut stats = shared.stats.lock().expect("stats");
        stats.rejected += batch.results.len() as u64;
        drop(stats);
        let mut kept = shared.rejections.lock().expect("rejections");
        kept.push_back(Rejection {
            result: batch.results.first().cloned(),
            counts: batch.decision_counts.first().cloned(),
            code: status.code() as i32,
            message: status.message().to_string(),
        });
        while kept.len() > MAX_KEPT_REJECTIONS {
            kept.pop_front();
        }
        drop(kept);
        release(shared, batch.results.len(), batch.decision_counts.len());
        return;
    }
    let pb::ResultBatch {
        mut results,
        mut decision_counts,
        ..
    } = batch;
    let (second_results, second_counts) = if results.len() >= 2 {
        (results.split_off(results.len() / 2), Vec::new())
    } else if decision_counts.len() >= 2 {
        (
            Vec::new(),
            decision_counts.split_off(decision_counts.len() / 2),
        )
    } else {
        // One result and one count.
        (Vec::new(), std::mem::take(&mut decision_counts))
    };
    let halves = [(results, decision_counts), (second_results, second_counts)];
    for (results, decision_counts) in halves.into_iter().rev() {
        unacknowledged.push_front(InFlight {
            sequence: 0, // numbered when sent again
            batch: pb::ResultBatch {
                sequence: 0,
                results,
                decision_counts,
            },
        });
    }
}

/// One `IngestResults` stream: resends `unacknowledged` first, then sends new batches until the
/// stream fails. `Ok` when it had acknowledgements before it ended.
async fn stream(
    shared: &Shared,
    allocator: Option<&LocalAllocator>,
    channel: Channel,
    unacknowledged: &mut VecDeque<InFlight>,
    next_sequence: &mut u64,
) -> Result<(), StreamEnd> {
    let options = &shared.options;
    // Room for every batch to resend (a split may have added one) and the new ones.
    let (tx, rx) =
        mpsc::channel::<pb::ResultBatch>(options.max_in_flight.max(unacknowledged.len()));
    let call = request(ReceiverStream::new(rx), options.token.as_deref())?;
    // Resent first, in order, under new sequence numbers (they number this stream's batches).
    for sent in unacknowledged.iter_mut() {
        sent.sequence = *next_sequence;
        *next_sequence += 1;
        sent.batch.sequence = sent.sequence;
        tx.try_send(sent.batch.clone())
            .map_err(|_| "more batches to resend than may be in flight".to_string())?;
    }
    if !unacknowledged.is_empty() {
        shared.stats.lock().expect("stats").resent_batches += unacknowledged.len() as u64;
    }
    let mut client =
        pb::allocator_client::AllocatorClient::new(channel).max_decoding_message_size(16 << 20);
    let mut acks = client
        .ingest_results(call)
        .await
        .map_err(StreamEnd::Refused)?
        .into_inner();
    let mut acknowledged_any = false;
    let mut linger = tokio::time::interval(options.linger);
    linger.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted_at = tokio::time::Instant::now();
    loop {
        let room = unacknowledged.len() < options.max_in_flight;
        tokio::select! {
            ack = acks.message() => {
                let ack = match ack {
                    Ok(Some(ack)) => ack,
                    Ok(None) => return if acknowledged_any { Ok(()) } else {
                        Err(StreamEnd::Failed("the server ended the stream".into()))
                    },
                    Err(status) => return Err(StreamEnd::Refused(status)),
                };
                let Some(front) = unacknowledged.front() else {
                    return Err(format!("acknowledgement {} of no batch", ack.sequence).into());
                };
                if front.sequence != ack.sequence {
                    return Err(format!(
                        "acknowledgement {} where {} was due",
                        ack.sequence, front.sequence
                    )
                    .into());
                }
                let sent = unacknowledged.pop_front().expect("front exists");
                settle(shared, sent.batch, ack);
                acknowledged_any = true;
            }
            () = shared.wake.notified(), if room => {}
            _ = linger.tick(), if room => {}
        }
        if unacknowledged.len() < options.max_in_flight {
            let asked = shared.counts_asked.load(Ordering::Acquire);
            let counts_due = asked > shared.counts_taken.load(Ordering::Acquire)
                || counted_at.elapsed() >= options.counts_every;
            if counts_due {
                counted_at = tokio::time::Instant::now();
            }
            let batch = Outgoing {
                counts_of: allocator.filter(|_| counts_due),
                flushes: counts_due.then_some(asked),
            };
            send_batch(shared, batch, &tx, unacknowledged, next_sequence).await?;
        }
    }
}

/// What the next batch takes besides queued results.
struct Outgoing<'a> {
    /// The allocator whose decision counts go with it.
    counts_of: Option<&'a LocalAllocator>,
    /// The flushes asked for before the counts were taken (they wait for this batch).
    flushes: Option<u64>,
}

/// Sends one batch of what is queued, with the decision counts when due.
async fn send_batch(
    shared: &Shared,
    outgoing: Outgoing<'_>,
    tx: &mpsc::Sender<pb::ResultBatch>,
    unacknowledged: &mut VecDeque<InFlight>,
    next_sequence: &mut u64,
) -> Result<(), String> {
    let results: Vec<pb::ResultRecord> = {
        let mut queue = shared.queue.lock().expect("queue");
        let n = queue.len().min(shared.options.max_batch);
        queue.drain(..n).collect()
    };
    let mut decision_counts = outgoing
        .counts_of
        .map(LocalAllocator::take_counts)
        .unwrap_or_default();
    for c in &mut decision_counts {
        c.counts_id = shared.assign_id("c");
    }
    shared
        .outstanding
        .send_modify(|n| *n += decision_counts.len() as u64);
    shared
        .counts_queued
        .fetch_add(decision_counts.len() as u64, Ordering::AcqRel);
    if let Some(asked) = outgoing.flushes {
        // Only now: a flush waiting for this reads `outstanding` next, which includes them.
        shared.counts_taken.fetch_max(asked, Ordering::AcqRel);
    }
    if results.is_empty() && decision_counts.is_empty() {
        return Ok(());
    }
    let sequence = *next_sequence;
    *next_sequence += 1;
    let batch = pb::ResultBatch {
        sequence,
        results,
        decision_counts,
    };
    unacknowledged.push_back(InFlight {
        sequence,
        batch: batch.clone(),
    });
    tx.send(batch)
        .await
        .map_err(|_| "the result stream closed".to_string())?;
    // More may be queued already: let the loop come back for it.
    if !shared.queue.lock().expect("queue").is_empty() {
        shared.wake.notify_one();
    }
    Ok(())
}

/// Takes an acknowledged batch off the books.
fn settle(shared: &Shared, batch: pb::ResultBatch, ack: pb::BatchAck) {
    let results = batch.results.len();
    let counts = batch.decision_counts.len();
    {
        let mut stats = shared.stats.lock().expect("stats");
        stats.accepted += u64::from(ack.accepted);
        stats.duplicates += u64::from(ack.duplicates);
        stats.rejected += ack.rejected.len() as u64;
        stats.counts_accepted += u64::from(ack.counts_accepted);
    }
    if !ack.rejected.is_empty() || !ack.counts_rejected.is_empty() {
        let mut kept = shared.rejections.lock().expect("rejections");
        for r in &ack.rejected {
            tracing::warn!(code = r.code, message = %r.message, "result refused by the server");
            kept.push_back(Rejection {
                result: batch.results.get(r.index as usize).cloned(),
                counts: None,
                code: r.code,
                message: r.message.clone(),
            });
        }
        for r in &ack.counts_rejected {
            tracing::warn!(code = r.code, message = %r.message, "decision counts refused by the server");
            kept.push_back(Rejection {
                result: None,
                counts: batch.decision_counts.get(r.index as usize).cloned(),
                code: r.code,
                message: r.message.clone(),
            });
        }
        while kept.len() > MAX_KEPT_REJECTIONS {
            kept.pop_front();
        }
    }
    release(shared, results, counts);
}

/// Takes `results` results and `counts` decision counts off the books (acknowledged, or given
/// up as refused).
fn release(shared: &Shared, results: usize, counts: usize) {
    shared.room.add_permits(results);
    shared
        .results_settled
        .fetch_add(results as u64, Ordering::AcqRel);
    shared
        .counts_settled
        .fetch_add(counts as u64, Ordering::AcqRel);
    shared
        .outstanding
        .send_modify(|n| *n -= (results + counts) as u64);
    shared.progress.send_replace(());
}
