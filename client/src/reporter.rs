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
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

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
    /// `linger`), so the server's allocation counts and sample-ratio check include them. Must
    /// be called within a tokio runtime.
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
        let shared = Arc::new(Shared {
            room: Semaphore::new(options.capacity),
            options,
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            outstanding: tokio::sync::watch::channel(0).0,
            counts_asked: AtomicU64::new(0),
            counts_taken: AtomicU64::new(0),
            stats: Mutex::default(),
            rejections: Mutex::default(),
            next_id: AtomicU64::new(0),
            run: (crate::draw::uniform() * (1u64 << 53) as f64) as u64,
        });
        if let Some(allocator) = &allocator {
            // From now on replaced tables are kept until their decisions are reported.
            allocator.start_counting();
        }
        let channels: Vec<Channel> = endpoints
            .into_iter()
            .map(|e| {
                e.http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true)
                    .connect_lazy()
            })
            .collect();
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
            queue.push_back(result);
            queue.len() >= self.shared.options.max_batch
        };
        if full {
            self.shared.wake.notify_one();
        }
    }

    /// Sends what is queued and the allocator's decision counts now, and waits until the server
    /// has acknowledged everything reported so far, at most `timeout`; whether it did.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let asked = self.shared.counts_asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.wake.notify_one();
        let mut outstanding = self.shared.outstanding.subscribe();
        let done = async {
            // The counts are taken by the sender after this call: wait until it has.
            while self.shared.counts_taken.load(Ordering::Acquire) < asked {
                self.shared.wake.notify_one();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            outstanding.wait_for(|&n| n == 0).await.is_ok()
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
    let mut backoff: Option<Duration> = None;
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
            Ok(()) => backoff = None,
            Err(why) => tracing::debug!(error = %why, "result stream ended"),
        }
        let (min, max) = (s.options.reconnect_min, s.options.reconnect_max);
        drop(s);
        let wait = backoff.map_or(min, |b| (b * 2).min(max));
        backoff = Some(wait);
        tokio::time::sleep(wait / 2 + wait.mul_f64(0.5 * crate::draw::uniform())).await;
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
) -> Result<(), String> {
    let options = &shared.options;
    let (tx, rx) = mpsc::channel::<pb::ResultBatch>(options.max_in_flight.max(1));
    let mut call = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &options.token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| format!("the token cannot be sent in a header: {e}"))?;
        call.metadata_mut().insert("authorization", value);
    }
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
        .map_err(|s| format!("IngestResults refused: {s}"))?
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
                        Err("the server ended the stream".into())
                    },
                    Err(status) => return Err(format!("IngestResults failed: {status}")),
                };
                let Some(front) = unacknowledged.front() else {
                    return Err(format!("acknowledgement {} of no batch", ack.sequence));
                };
                if front.sequence != ack.sequence {
                    return Err(format!(
                        "acknowledgement {} where {} was due",
                        ack.sequence, front.sequence
                    ));
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
    shared.room.add_permits(results);
    shared
        .outstanding
        .send_modify(|n| *n -= (results + counts) as u64);
}
