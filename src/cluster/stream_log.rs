//! [`StreamLog`]: the ordered log as one NATS JetStream stream, written by one arbiter at a time.
//!
//! **Positions are stream sequences.** The writer hands out the next sequence itself and
//! publishes each entry with `Nats-Expected-Last-Sequence` set to the position before it, so the
//! stream stores an entry only at the position it was given: a second writer, or a writer that
//! missed an entry, is refused, and its log fails (it must reopen and fold what it missed).
//! Publishes are pipelined: entries go out in order on one connection and their acknowledgements
//! are awaited together (the stream checks each expectation against the entries proposed before
//! it, so an unbroken pipeline passes).
//!
//! **Durable means acknowledged**: JetStream acknowledges a publish once a quorum of its
//! replicas stored it (fsynced, with `sync_interval: always`). An acknowledgement that does not
//! come is not a failure: the entry and every one after it are published again, in order, with
//! the same message ids (unique to this writer and position), and the stream answers a copy of
//! a stored entry with the original's position. A publish refused for a wrong last sequence
//! makes the writer ask the stream what it holds at that position: its own entry there counts
//! as acknowledged, nothing there means publishing again, another writer's entry fails the log.
//! Any other refusal fails the log. While no NATS server answers, entries wait (and so do their
//! writers).
//!
//! **Trimming** waits for a snapshot beside the stream: [`Log::trim_before`] only records the
//! owner's cut, and [`StreamLog::purge_before`] removes entries once a snapshot in the
//! cluster's snapshot bucket holds what they fold into (never part of an entry).
//!
//! The log owns a small runtime for its NATS client, so that its blocking calls
//! ([`Log::read_from`], [`Log::seal`], …) work from any thread, inside a runtime or not.

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType, Stream};
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;

mod chain;
mod follow;
mod parts;

pub use follow::{FollowError, Following};

use super::ClusterOptions;
use crate::storage::log::{Log, LogEntry, SyncFuture};
use crate::storage::{Result, StorageError};

/// The header JetStream deduplicates publishes by.
const MSG_ID: &str = "Nats-Msg-Id";
/// How long opening waits for the NATS cluster to accept the stream (a fresh cluster elects its
/// JetStream leader first; a restarted one may be electing).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a blocking sync waits for acknowledgements.
const SYNC_BLOCKING_LIMIT: Duration = Duration::from_secs(30);
/// How long a read keeps trying while the stream does not answer.
const READ_RETRY_LIMIT: Duration = Duration::from_secs(30);
/// How long a read waits for the stream's next entry before fetching what is missing one by
/// one.
const READ_IDLE_LIMIT: Duration = Duration::from_secs(2);
/// Publish acknowledgements awaited at once.
const MAX_IN_FLIGHT: usize = 4096;

/// What a message of the log is, which names its subject: one subject per kind, so that a
/// consumer can take only the kinds it needs (the stream keeps one order across them).
#[derive(Debug, Clone, Copy)]
enum MessageKind {
    /// A store batch (or a part of one).
    Batch,
    /// A store command.
    Command,
    /// A batch of results (the owner's entries).
    Results,
    /// A writer's first message ([`chain`]).
    Marker,
}

impl MessageKind {
    fn of(payload: &[u8]) -> Self {
        match crate::storage::EntryKind::of(payload) {
            crate::storage::EntryKind::Batch => MessageKind::Batch,
            crate::storage::EntryKind::Command => MessageKind::Command,
            crate::storage::EntryKind::Owner => MessageKind::Results,
        }
    }
}

/// The subject of each [`MessageKind`].
struct Subjects([String; 4]);

impl Subjects {
    fn new(options: &ClusterOptions) -> Self {
        Subjects(["batch", "command", "results", "marker"].map(|k| options.entry_subject(k)))
    }

    fn of(&self, kind: MessageKind) -> &str {
        &self.0[kind as usize]
    }
}

/// An entry appended and not yet known to be stored.
struct Unacked {
    position: u64,
    payload: Bytes,
    /// What it is, which names the subject it is published on.
    kind: MessageKind,
    /// Part `i` of `k` of a larger entry ([`parts`]).
    part: Option<(usize, usize)>,
    /// This writer's first message ([`chain`]), before its first entry.
    marker: bool,
}

/// What appenders share with the publishing task.
#[derive(Debug)]
struct Shared {
    /// Hands out positions; held while an entry is queued, so queue order is position order.
    writer: parking_lot::Mutex<Writer>,
    /// Every position up to this is stored on a quorum.
    durable: watch::Sender<u64>,
    /// Why the log refuses appends.
    failure: parking_lot::Mutex<Option<String>>,
    /// The oldest position the stream holds (moved only by [`Log::reserve_through`]).
    first: AtomicU64,
    /// The largest entry the NATS servers take.
    max_entry: usize,
    /// The owner's newest cut ([`Log::trim_before`]): every entry below it is folded into the
    /// writer's store. Entries leave the stream only below a snapshot beside it
    /// ([`StreamLog::purge_before`]).
    folded_below: AtomicU64,
    /// Since when the oldest unacknowledged entry has gone unanswered (none: acknowledgements
    /// come).
    unanswered_since: parking_lot::Mutex<Option<std::time::Instant>>,
    /// The last position a whole read of the log ([`Log::read_from`]) went through.
    read_through: AtomicU64,
}

#[derive(Debug)]
struct Writer {
    next: u64,
    queue: mpsc::UnboundedSender<Unacked>,
    /// Whether this writer's marker ([`chain`]) is queued.
    marked: bool,
}

impl Shared {
    fn fail(&self, why: String) {
        tracing::error!(error = %why, "replicated log failed");
        self.failure.lock().get_or_insert(why);
        // Wakes every waiter, which then sees the failure.
        self.durable.send_modify(|_| {});
    }

    fn failed(&self) -> Option<StorageError> {
        self.failure.lock().clone().map(|why| {
            StorageError::Replicated(format!(
                "{why}; the log refuses writes until it is reopened"
            ))
        })
    }
}

impl std::fmt::Debug for Unacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {} ({} bytes)", self.position, self.payload.len())
    }
}

/// The ordered log on a JetStream stream (see the module documentation).
pub struct StreamLog {
    shared: Arc<Shared>,
    /// Opened to follow another arbiter's writes ([`StreamLog::open_reader`]): appends are
    /// refused and nothing is ever removed from the stream.
    reader: bool,
    stream: Stream,
    subject: String,
    description: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("stream", &self.description)
            .field("next", &self.shared.writer.lock().next)
            .finish()
    }
}

/// A one-thread runtime named `name` for a NATS client whose owner offers blocking calls.
pub(super) fn client_runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|source| StorageError::Io {
            context: format!("starting the runtime {name}"),
            source,
        })
}

/// Runs `future` on `runtime` and waits for it on the calling thread (which may belong to
/// another runtime: it only blocks).
pub(super) fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .expect("the log's runtime runs until the log is dropped")
}

fn replicated(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Replicated(format!("{what}: {e}"))
}

impl StreamLog {
    /// Connects to the cluster's NATS servers and opens its stream, creating it when it does not
    /// exist yet; refuses a stream whose storage or replica count differ from `options`.
    /// Blocking: waits until the NATS cluster accepts the stream (at most a minute).
    pub fn open(options: &ClusterOptions) -> Result<Self> {
        Self::open_as(options, false)
    }

    /// Like [`StreamLog::open`], for an arbiter that only reads the stream while another one
    /// writes it (a standby): appends are refused and the stream is never trimmed or moved.
    pub fn open_reader(options: &ClusterOptions) -> Result<Self> {
        Self::open_as(options, true)
    }

    fn open_as(options: &ClusterOptions, reader: bool) -> Result<Self> {
        options.validate().map_err(StorageError::Replicated)?;
        let runtime = client_runtime("arbiter-nats")?;
        let opening = options.clone();
        let opened = wait_on(&runtime, async move {
            let client = opening.connect().await?;
            let context = jetstream::ContextBuilder::new()
                .timeout(opening.ack_timeout)
                .ack_timeout(opening.ack_timeout)
                // Acknowledgements dropped by a resend hold their slot until they time out.
                .max_ack_inflight(2 * MAX_IN_FLIGHT)
                .backpressure_on_inflight(true)
                .build(client);
            let mut stream = open_stream(&context, &opening).await?;
            // Known once a server has answered (the stream is open now); NATS's default if
            // the server did not say.
            let max_payload = match context.client().server_info().max_payload {
                0 => 1 << 20,
                n => n,
            };
            let state = stream
                .info()
                .await
                .map_err(|e| replicated("reading the stream's state", e))?
                .state
                .clone();
            Ok::<_, StorageError>((
                context,
                stream,
                state.last_sequence,
                state.first_sequence,
                max_payload,
            ))
        });
        let (context, stream, last, first, max_payload) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // Dropping a runtime blocks, which an async caller may not do.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let (queue, entries) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            writer: parking_lot::Mutex::new(Writer {
                next: last + 1,
                queue,
                marked: false,
            }),
            // Headers (message id, expectation) take well under a kilobyte.
            max_entry: max_payload.saturating_sub(1024),
            durable: watch::channel(last).0,
            failure: parking_lot::Mutex::new(None),
            first: AtomicU64::new(first.max(1)),
            unanswered_since: parking_lot::Mutex::new(None),
            folded_below: AtomicU64::new(0),
            read_through: AtomicU64::new(0),
        });
        let publisher = Publisher {
            context,
            stream: stream.clone(),
            subjects: Subjects::new(options),
            // Unique to this writer: a position another writer published is never taken for
            // this one's entry.
            writer_id: format!("{:032x}", rand::random::<u128>()),
            shared: shared.clone(),
            unacked: VecDeque::new(),
            in_flight: VecDeque::new(),
            resends: 0,
        };
        runtime.spawn(publisher.run(entries));
        tracing::info!(stream = %options.stream_name(), servers = %options.servers.join(","), last_position = last, "replicated log open");
        Ok(StreamLog {
            shared,
            reader,
            stream,
            subject: options.log_subject(),
            description: options.stream_name(),
            runtime: Some(runtime),
        })
    }

    /// Stops this writer's appends for good (another arbiter writes the log now): every write
    /// and sync is refused from now on, so that its owner undoes what the stream has not
    /// acknowledged instead of waiting for it.
    pub fn stop_writing(&self, why: &str) {
        self.shared
            .fail(format!("this arbiter stopped writing: {why}"));
    }

    /// The stream's last position now.
    pub fn last_position(&self) -> Result<u64> {
        Ok(self.bounds()?.1)
    }

    /// The last position a whole read of the log went through: a reader that opened the store
    /// with it has applied every entry up to there.
    pub fn read_through(&self) -> u64 {
        self.shared.read_through.load(Ordering::Acquire)
    }

    /// The owner's newest cut: every entry below it is folded into this writer's store (so a
    /// snapshot of the store taken after reading it holds them all).
    pub fn folded_below(&self) -> u64 {
        self.shared.folded_below.load(Ordering::Acquire)
    }

    /// Removes the entries below `cut` from the stream (moved back to the first part of an
    /// entry it would split); returns the stream's new first position. The caller has a
    /// snapshot beside the stream that holds what they fold into. Blocking.
    pub fn purge_before(&self, cut: u64) -> Result<u64> {
        if self.reader {
            return Err(StorageError::Standby);
        }
        // A writer that stopped writing (its lease lost) trims nothing either.
        if let Some(failed) = self.shared.failed() {
            return Err(failed);
        }
        let first = self.first_position();
        let cut = cut.min(self.durable_through() + 1);
        if cut <= first {
            return Ok(first);
        }
        let stream = self.stream.clone();
        let (first, _) = wait_on(self.runtime(), async move {
            let cut = match stream.get_raw_message(cut).await {
                Ok(message) => {
                    let headers = Some(&message.headers);
                    let part = parts::Message::new(headers, Vec::new());
                    parts::group_start(cut, &part)
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => cut,
                Err(e) => return Err(replicated("reading the stream before trimming it", e)),
            };
            stream
                .purge()
                .sequence(cut)
                .await
                .map_err(|e| replicated("trimming the stream", e))?;
            let info = stream
                .get_info()
                .await
                .map_err(|e| replicated("reading the stream's state", e))?;
            Ok((info.state.first_sequence, info.state.last_sequence))
        })?;
        self.shared.first.fetch_max(first.max(1), Ordering::AcqRel);
        Ok(self.first_position())
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("present until drop")
    }

    /// The stream's first and last sequence now.
    fn bounds(&self) -> Result<(u64, u64)> {
        let stream = self.stream.clone();
        wait_on(self.runtime(), async move {
            let info = stream
                .get_info()
                .await
                .map_err(|e| replicated("reading the stream's state", e))?;
            Ok((info.state.first_sequence, info.state.last_sequence))
        })
    }

    /// One attempt of [`Log::read_from`].
    fn read_once(&self, from: u64) -> Result<Vec<LogEntry>> {
        let Some((read, last)) = self.read_messages(from, self.bounds()?)? else {
            return Ok(Vec::new());
        };
        self.shared.read_through.fetch_max(last, Ordering::AcqRel);
        let entries = entries_of(read, &mut None);
        Ok(entries.into_iter().filter(|e| e.position >= from).collect())
    }

    /// Every message stored from `from` to `last` (with the earlier parts of an entry that
    /// begins before `from`), the stream's bounds being `(first, last)`, and `last`; `None`
    /// when nothing is stored from `from` on.
    fn read_messages(
        &self,
        from: u64,
        (first, last): (u64, u64),
    ) -> Result<Option<(BTreeMap<u64, parts::Message>, u64)>> {
        let start = from.max(first).max(1);
        if start > last {
            return Ok(None);
        }
        let stream = self.stream.clone();
        let subject = self.subject.clone();
        wait_on(self.runtime(), async move {
            let mut messages = delivered_from(&stream, subject, start)
                .await
                .map_err(|e| replicated("reading the log", e))?;
            // Read up to `last` itself: a delivery's count of messages still pending can say 0
            // before the last one. A quiet consumer (the tail removed) ends the read too; what
            // it left out is then fetched one by one.
            let mut read = BTreeMap::new();
            while let Ok(Some(message)) =
                tokio::time::timeout(READ_IDLE_LIMIT, messages.next()).await
            {
                let message = message.map_err(|e| replicated("reading the log", e))?;
                let position = message
                    .info()
                    .map_err(|e| replicated("reading the log", e))?
                    .stream_sequence;
                // A consumer that restarts before its first delivery may begin at the start of
                // the stream instead of `start`.
                if (start..=last).contains(&position) {
                    let payload = message.payload.to_vec();
                    read.insert(
                        position,
                        parts::Message::new(message.headers.as_ref(), payload),
                    );
                }
                if position >= last {
                    break;
                }
            }
            fill_gaps(&stream, start, last, &mut read, true).await?;
            // An entry whose last parts are at or after `start` begins before it.
            if let Some((&position, message)) = read.first_key_value() {
                let group_start = parts::group_start(position, message);
                fill_gaps(&stream, group_start, position, &mut read, false).await?;
            }
            Ok(Some((read, last)))
        })
    }
}

/// The entries `read` (messages by position) holds, without markers and stale messages (`writer`
/// is the writer that counts, carried from read to read, see `chain`) and with their parts
/// joined.
fn entries_of(
    mut read: BTreeMap<u64, parts::Message>,
    writer: &mut Option<String>,
) -> Vec<LogEntry> {
    let stale = chain::drop_stale(&mut read, writer);
    if stale > 0 {
        tracing::warn!(
            stale,
            "skipped entries a paused writer published after another took over"
        );
    }
    let (entries, dropped) = parts::assemble(read);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "skipped parts of log entries that were never completed"
        );
    }
    entries
}

/// The messages of `subject` in `stream` from position `start` on, as an ordered consumer
/// delivers them.
async fn delivered_from(
    stream: &Stream,
    subject: String,
    start: u64,
) -> std::result::Result<async_nats::jetstream::consumer::pull::Ordered, String> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// The stream of `options`, created if missing, checked if not.
async fn open_stream(context: &Context, options: &ClusterOptions) -> Result<Stream> {
    let config = Config {
        name: options.stream_name(),
        subjects: vec![options.log_subject()],
        storage: StorageType::File,
        num_replicas: options.replicas,
        allow_direct: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    let mut stream = loop {
        match context.get_or_create_stream(config.clone()).await {
            Ok(stream) => break stream,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, stream = %config.name, "waiting for JetStream to accept the stream");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(replicated(&format!("opening stream {}", config.name), e)),
        }
    };
    let found = &stream
        .info()
        .await
        .map_err(|e| replicated("reading the stream's configuration", e))?
        .config;
    if found.num_replicas != options.replicas {
        return Err(StorageError::Replicated(format!(
            "stream {} keeps {} replicas, not the {} asked for; change one to match",
            config.name, found.num_replicas, options.replicas
        )));
    }
    if found.storage != StorageType::File {
        return Err(StorageError::Replicated(format!(
            "stream {} is kept in memory; the log needs file storage",
            config.name
        )));
    }
    if !found.subjects.contains(&config.subjects[0]) {
        return Err(StorageError::Replicated(format!(
            "stream {} does not take subject {} (it takes {:?})",
            config.name, config.subjects[0], found.subjects
        )));
    }
    if let Some(limit) = dropping_limit(found) {
        return Err(StorageError::Replicated(format!(
            "stream {} has {limit}, under which JetStream removes log entries on its own; \
             remove it (arbiter trims the stream itself, below its snapshots)",
            config.name
        )));
    }
    Ok(stream)
}

/// A setting of a stream's configuration under which JetStream removes entries by itself
/// (the log would lose acknowledged entries no snapshot holds yet), if it has one.
pub(super) fn dropping_limit(config: &Config) -> Option<String> {
    use async_nats::jetstream::stream::RetentionPolicy;
    if !config.max_age.is_zero() {
        return Some(format!("a maximum age ({:?})", config.max_age));
    }
    for (what, value) in [
        ("max_msgs", config.max_messages),
        ("max_bytes", config.max_bytes),
        ("max_msgs_per_subject", config.max_messages_per_subject),
    ] {
        if value > 0 {
            return Some(format!("a limit {what} = {value}"));
        }
    }
    if config.retention != RetentionPolicy::Limits {
        return Some(format!("retention {:?}", config.retention));
    }
    None
}

/// A publish acknowledgement being awaited.
type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// What the stream holds at a position where a publish was refused.
enum Found {
    /// This writer's entry: it is stored.
    Ours,
    /// Nothing yet: publish it (and everything after it) again.
    Nothing,
}

/// The task that publishes entries in order and advances the durable position.
struct Publisher {
    context: Context,
    stream: Stream,
    subjects: Subjects,
    writer_id: String,
    shared: Arc<Shared>,
    /// Every entry not yet known stored, oldest first.
    unacked: VecDeque<Unacked>,
    /// The acknowledgements of the oldest `in_flight.len()` entries of `unacked`.
    in_flight: VecDeque<AckFuture>,
    /// Publishes of the oldest entry since its last acknowledgement came.
    resends: u32,
}

impl Publisher {
    async fn run(mut self, mut entries: mpsc::UnboundedReceiver<Unacked>) {
        loop {
            let can_send = self.in_flight.len() < MAX_IN_FLIGHT;
            tokio::select! {
                biased;
                ack = async { self.in_flight.front_mut().expect("awaited only when some are in flight").as_mut().await }, if !self.in_flight.is_empty() => {
                    if let Err(why) = self.acknowledged(ack).await {
                        self.shared.fail(why);
                        return;
                    }
                }
                entry = entries.recv(), if can_send => match entry {
                    Some(entry) => {
                        self.unacked.push_back(entry);
                        let last = self.unacked.len() - 1;
                        let ack = self.send(last).await;
                        self.in_flight.push_back(ack);
                    }
                    // Not while the log exists (it holds the sender); dropping it shuts this
                    // task's runtime down, abandoning what is queued, as a crash would.
                    None => return,
                },
            }
        }
    }

    /// Publishes `unacked[index]`, expecting the stream to end just before it.
    fn send(&self, index: usize) -> impl Future<Output = AckFuture> + Send + 'static {
        let entry = &self.unacked[index];
        let mut publish = PublishMessage::build()
            .payload(entry.payload.clone())
            .message_id(message_id(&self.writer_id, entry.position))
            .expected_last_sequence(entry.position - 1);
        if let Some((i, k)) = entry.part {
            publish = publish.header(parts::HEADER, parts::header(i, k).as_str());
        }
        if entry.marker {
            publish = publish.header(chain::MARKER, "1");
        }
        let subject = self.subjects.of(entry.kind).to_string();
        send(self.context.clone(), subject, publish)
    }

    /// Handles the oldest acknowledgement: advances the durable position, or finds out what
    /// happened to an entry whose acknowledgement failed. `Err`: the log must fail.
    async fn acknowledged(&mut self, ack: Result<PublishAck, PublishError>) -> Result<(), String> {
        self.in_flight.pop_front();
        let position = self
            .unacked
            .front()
            .expect("an entry per acknowledgement")
            .position;
        match ack {
            Ok(ack) if ack.sequence == position => {}
            Ok(ack) => {
                return Err(format!(
                    "entry {position} was stored at position {} (duplicate: {})",
                    ack.sequence, ack.duplicate
                ))
            }
            // No answer (a leader election, a lost connection), or a copy still being
            // replicated: publishing the same entries again is safe, since the stream answers
            // a copy of a stored entry with the original's position (message ids are kept by
            // every replica).
            Err(e) if is_unanswered(&e) => {
                // Once per outage at warning level (a leader election lasts seconds).
                if self.resends.is_multiple_of(50) {
                    tracing::warn!(position, error = %e, attempts = self.resends + 1, "publish not acknowledged; publishing again");
                }
                self.shared
                    .unanswered_since
                    .lock()
                    .get_or_insert_with(std::time::Instant::now);
                self.resends += 1;
                self.resend().await;
                return Ok(());
            }
            Err(e) if e.kind() != PublishErrorKind::WrongLastSequence => {
                return Err(format!(
                    "the stream refused entry {position} ({} bytes): {e}",
                    self.unacked.front().map_or(0, |u| u.payload.len())
                ));
            }
            Err(e) => {
                tracing::warn!(position, error = %e, "publish refused; asking the stream");
                match find(&self.stream, &self.writer_id, position).await? {
                    Found::Ours => {}
                    Found::Nothing => {
                        self.resend().await;
                        return Ok(());
                    }
                }
            }
        }
        let unanswered_since = self.shared.unanswered_since.lock().take();
        if self.resends > 0 {
            tracing::info!(
                position,
                attempts = self.resends + 1,
                unanswered_for = ?unanswered_since.map(|since| since.elapsed()),
                "publishes acknowledged again"
            );
            self.resends = 0;
        }
        self.unacked.pop_front();
        self.shared.durable.send_replace(position);
        Ok(())
    }
}

/// The message id of this writer's entry at `position`.
fn message_id(writer_id: &str, position: u64) -> String {
    format!("{writer_id}:{position}")
}

/// Whether a publish went unanswered (timed out, no stream leader, connection lost) or was
/// refused because a copy with its message id is still being replicated (JetStream error
/// 10158): either way, publishing it again is the answer.
fn is_unanswered(e: &PublishError) -> bool {
    use std::error::Error as _;
    let in_process = || {
        e.source()
            .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|js| {
                js.error_code()
                    == async_nats::jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
            })
    };
    matches!(
        e.kind(),
        PublishErrorKind::TimedOut
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::BrokenPipe
    ) || in_process()
}

/// Fetches, one by one, every position from `start` through `last` missing from `read` (a
/// consumer that went quiet, which is `unexpected`, or the first parts of an entry before a
/// read's start); a position the stream no longer holds (removed) stays out.
async fn fill_gaps(
    stream: &Stream,
    start: u64,
    last: u64,
    read: &mut std::collections::BTreeMap<u64, parts::Message>,
    unexpected: bool,
) -> Result<()> {
    let missing: Vec<u64> = (start..=last).filter(|p| !read.contains_key(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if unexpected {
        tracing::warn!(
            missing = missing.len(),
            first = missing[0],
            "the stream's consumer did not deliver every entry; fetching the rest one by one"
        );
    }
    for position in missing {
        match stream.get_raw_message(position).await {
            Ok(message) => {
                let payload = message.payload.to_vec();
                read.insert(
                    position,
                    parts::Message::new(Some(&message.headers), payload),
                );
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(replicated(&format!("reading log entry {position}"), e)),
        }
    }
    Ok(())
}

/// What `stream` holds at `position` (where `writer_id`'s publish was refused for a wrong last
/// sequence), asking until a server answers.
async fn find(stream: &Stream, writer_id: &str, position: u64) -> Result<Found, String> {
    let mut pause = Duration::from_millis(50);
    loop {
        // The stream's end first: an entry stored after this read is then found below, and
        // one not found below was not stored when the end was read.
        let last = match stream.get_info().await {
            Ok(info) => info.state.last_sequence,
            Err(e) => {
                tracing::warn!(position, error = %e, "cannot read the stream's state; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if last < position {
            return Ok(Found::Nothing);
        }
        match stream.get_raw_message(position).await {
            Ok(message) => {
                let id = message.headers.get(MSG_ID).map(|v| v.as_str().to_string());
                let ours = message_id(writer_id, position);
                return if id.as_deref() == Some(ours.as_str()) {
                    Ok(Found::Ours)
                } else {
                    Err(format!(
                        "another writer's entry is at position {position}: this arbiter no longer writes the log"
                    ))
                };
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Err(format!(
                    "position {position} is empty but the stream goes on to {last}: a removal"
                ));
            }
            Err(e) => tracing::warn!(position, error = %e, "cannot read the stream; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

impl Publisher {
    /// Publishes every unacknowledged entry again, in order, after a pause; acknowledgements
    /// still awaited for earlier attempts are dropped (the same ids make a second copy a
    /// duplicate). At most [`MAX_IN_FLIGHT`] go out: an entry is taken only with a free slot.
    async fn resend(&mut self) {
        self.in_flight.clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
        for index in 0..self.unacked.len() {
            let ack = self.send(index).await;
            self.in_flight.push_back(ack);
        }
    }
}

/// Publishes `message` on `subject` and returns its acknowledgement (a failed send becomes a
/// failed acknowledgement).
async fn send(context: Context, subject: String, message: PublishMessage) -> AckFuture {
    match context.send_publish(subject, message).await {
        Ok(ack) => ack.into_future(),
        Err(e) => Box::pin(async move { Err(e) }),
    }
}

impl Log for StreamLog {
    fn append(&self, payload: &[u8]) -> Result<u64> {
        if self.reader {
            return Err(StorageError::Standby);
        }
        if let Some(failed) = self.shared.failed() {
            return Err(failed);
        }
        // An entry over one message's limit goes out in parts; one too large even for
        // that is refused before it takes a position.
        let chunks = parts::split(payload, self.shared.max_entry);
        if chunks.len() > parts::MAX_PARTS {
            return Err(StorageError::Replicated(format!(
                "an entry of {} bytes is over {} parts of the NATS servers' max_payload ({} bytes)",
                payload.len(),
                parts::MAX_PARTS,
                self.shared.max_entry
            )));
        }
        let k = chunks.len();
        let kind = MessageKind::of(payload);
        let mut writer = self.shared.writer.lock();
        // A writer's first message says that its entries follow from here on.
        if !writer.marked {
            writer.marked = true;
            let position = writer.next;
            writer
                .queue
                .send(Unacked {
                    position,
                    payload: Bytes::new(),
                    kind: MessageKind::Marker,
                    part: None,
                    marker: true,
                })
                .map_err(|_| self.shared.failed().unwrap_or(StorageError::Closed))?;
            writer.next += 1;
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            let position = writer.next;
            writer
                .queue
                .send(Unacked {
                    position,
                    payload: Bytes::copy_from_slice(chunk),
                    kind,
                    part: (k > 1).then_some((i + 1, k)),
                    marker: false,
                })
                .map_err(|_| self.shared.failed().unwrap_or(StorageError::Closed))?;
            writer.next += 1;
        }
        // An entry's position is its last part's: durable once that part is.
        Ok(writer.next - 1)
    }

    fn sync_through(&self, position: u64) -> SyncFuture<'_> {
        let mut durable = self.shared.durable.subscribe();
        Box::pin(async move {
            loop {
                if let Some(failed) = self.shared.failed() {
                    return Err(failed);
                }
                if *durable.borrow_and_update() >= position {
                    return Ok(());
                }
                durable.changed().await.map_err(|_| StorageError::Closed)?;
            }
        })
    }

    /// Waits at most [`SYNC_BLOCKING_LIMIT`]: a caller that blocks (a snapshot's seal, the
    /// store's close at shutdown) must not hang for as long as no NATS server answers. The
    /// entries stay queued and the log stays usable.
    fn sync_blocking(&self) -> Result<()> {
        let last = self.next_position() - 1;
        let shared = self.shared.clone();
        wait_on(self.runtime(), async move {
            let mut durable = shared.durable.subscribe();
            let waited = tokio::time::timeout(SYNC_BLOCKING_LIMIT, async {
                loop {
                    if let Some(failed) = shared.failed() {
                        return Err(failed);
                    }
                    if *durable.borrow_and_update() >= last {
                        return Ok(());
                    }
                    durable.changed().await.map_err(|_| StorageError::Closed)?;
                }
            })
            .await;
            waited.unwrap_or_else(|_| {
                Err(StorageError::Replicated(format!(
                    "entries up to position {last} not acknowledged within {SYNC_BLOCKING_LIMIT:?}"
                )))
            })
        })
    }

    fn durable_through(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    fn next_position(&self) -> u64 {
        self.shared.writer.lock().next
    }

    fn first_position(&self) -> u64 {
        self.shared
            .first
            .load(Ordering::Acquire)
            .min(self.next_position())
    }

    fn reserve_through(&self, position: u64) {
        // A reader never moves the stream: its writer does, if anyone must.
        if self.reader || self.next_position() > position {
            return;
        }
        // The stream's next sequence moves only by removing everything before it: what it
        // holds is older than the snapshot that is ahead of it anyway.
        let outcome = self.sync_blocking().and_then(|()| {
            let stream = self.stream.clone();
            wait_on(self.runtime(), async move {
                stream
                    .purge()
                    .sequence(position + 1)
                    .await
                    .map_err(|e| replicated("moving the stream past a snapshot", e))
            })
        });
        match outcome.and_then(|_| self.bounds()) {
            Ok((first, last)) => {
                let mut writer = self.shared.writer.lock();
                writer.next = writer.next.max(last + 1);
                self.shared.durable.send_replace(last);
                self.shared.first.store(first.max(1), Ordering::Release);
            }
            Err(e) => self.shared.fail(e.to_string()),
        }
    }

    /// Retried for up to [`READ_RETRY_LIMIT`] while the stream does not answer (a leader
    /// election, a server catching up after a restart).
    /// Afterwards [`Log::first_position`] is the stream's first position as of the end of the
    /// read: entries another arbiter trimmed meanwhile show there, so that a caller can tell
    /// whether the read still began where it needed.
    fn read_from(&self, from: u64) -> Result<Vec<LogEntry>> {
        let deadline = std::time::Instant::now() + READ_RETRY_LIMIT;
        loop {
            match self.read_once(from).and_then(|entries| {
                let (first, _) = self.bounds()?;
                self.shared.first.fetch_max(first.max(1), Ordering::AcqRel);
                Ok(entries)
            }) {
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, from, "reading the log failed; retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                read => return read,
            }
        }
    }

    fn seal(&self) -> Result<u64> {
        self.sync_blocking()?;
        Ok(self.next_position())
    }

    /// Keeps every entry: the stream is the only copy of the log a node whose store is lost
    /// (or a new node) can rebuild from, until snapshots are kept beside it.
    /// Only remembers the cut: the stream is every node's log, so entries leave it only once a
    /// snapshot beside it holds what they fold into ([`StreamLog::purge_before`]).
    fn trim_before(&self, cut: u64) -> Result<()> {
        self.shared.folded_below.fetch_max(cut, Ordering::AcqRel);
        Ok(())
    }

    fn failure(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }

    fn stalled(&self) -> Option<String> {
        // No duration in the text: it is compared to tell a new stall from the same one.
        self.shared.unanswered_since.lock().as_ref()?;
        Some(format!(
            "JetStream does not acknowledge entry {} (no stream leader, or a quorum of NATS \
             servers out of reach); entries are published again until it does",
            self.durable_through() + 1,
        ))
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Stops the publisher and the NATS connection; queued entries are abandoned, as a
            // crash would abandon them.
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::nats_cluster::NatsCluster;
    use crate::storage::log::conformance::{log_conformance_suite, LogHarness};

    /// A stream on a 3-node JetStream cluster of its own, with 3 replicas.
    struct StreamHarness {
        options: ClusterOptions,
        _cluster: NatsCluster,
    }

    impl LogHarness for StreamHarness {
        type Log = StreamLog;

        fn new() -> Option<Self> {
            let cluster = NatsCluster::start(3)?;
            let servers = cluster.urls().split(',').map(String::from).collect();
            Some(StreamHarness {
                options: ClusterOptions::new(servers, "conformance"),
                _cluster: cluster,
            })
        }

        fn open(&self) -> Arc<StreamLog> {
            Arc::new(StreamLog::open(&self.options).expect("open the stream"))
        }

        /// A stream has no torn writes; the closest a medium comes is losing its newest entry.
        fn tear_newest_entry(&self) {
            let log = self.open();
            let (_, last) = log.bounds().expect("bounds");
            let stream = log.stream.clone();
            let removed = wait_on(
                log.runtime(),
                async move { stream.delete_message(last).await },
            )
            .expect("remove the newest entry");
            assert!(removed);
        }
    }

    log_conformance_suite!(StreamHarness);

    fn options(cluster: &NatsCluster, name: &str) -> ClusterOptions {
        ClusterOptions::new(cluster.urls().split(',').map(String::from).collect(), name)
    }

    fn payloads(log: &StreamLog) -> Vec<Vec<u8>> {
        let entries = log.read_from(0).expect("read");
        assert!(entries.windows(2).all(|w| w[0].position < w[1].position));
        entries.into_iter().map(|e| e.payload).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_cannot_append_after_entries_it_has_not_folded() {
        let Some(cluster) = NatsCluster::start(3) else {
            return;
        };
        let options = options(&cluster, "fenced");
        let a = StreamLog::open(&options).expect("open a");
        // An entry the NATS servers would refuse for ever is refused before it takes a position.
        let too_big = a
            .append(&vec![0u8; (parts::MAX_PARTS + 1) * a.shared.max_entry])
            .expect_err("over max_payload");
        assert!(too_big.to_string().contains("max_payload"), "{too_big}");
        assert!(a.failure().is_none());
        let b = StreamLog::open(&options).expect("open b");
        let p = a.append(b"a1").expect("append");
        a.sync_through(p).await.expect("a1 stored");
        // b has not seen a1: its entry would follow a state that lacks it.
        let q = b.append(b"b1").expect("append");
        assert_eq!(q, p, "both writers start from the same empty stream");
        let refused = b.sync_through(q).await.expect_err("b is fenced");
        assert!(refused.to_string().contains("another writer"), "{refused}");
        assert!(b.failure().is_some());
        assert!(b.append(b"b2").is_err(), "a failed log refuses appends");
        // a goes on; a writer that opens now sees everything, and then a is the stale one.
        let p = a.append(b"a2").expect("append");
        a.sync_through(p).await.expect("a2 stored");
        let c = StreamLog::open(&options).expect("open c");
        let r = c.append(b"c1").expect("append");
        c.sync_through(r).await.expect("c1 stored");
        let p = a.append(b"a3").expect("append");
        assert!(a.sync_through(p).await.is_err(), "a is fenced by c");
        assert_eq!(
            payloads(&c),
            [b"a1".to_vec(), b"a2".to_vec(), b"c1".to_vec()]
        );
    }

    /// Without a quorum of NATS servers nothing is acknowledged and the log says it is stalled
    /// (health reports it), without failing; once the servers are back it catches up and the
    /// stall clears.
    /// A writer paused with an entry in flight while another took over: the entry can land
    /// where the positions line up, after the new writer's, but no reader folds it; the new
    /// writer's log fails at it (and its arbiter hands the lease back), and the next writer
    /// goes on after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_writers_entry_stored_after_a_takeover_is_skipped_by_every_reader() {
        let Some(cluster) = NatsCluster::start(3) else {
            return;
        };
        let options = options(&cluster, "chain");
        let open = |options: &ClusterOptions| {
            let options = options.clone();
            tokio::task::spawn_blocking(move || StreamLog::open(&options).expect("open"))
        };
        let first = open(&options).await.expect("open");
        let a = first.append(b"a").expect("append");
        first.sync_through(a).await.expect("stored");
        let second = open(&options).await.expect("open");
        let b = second.append(b"b").expect("append");
        second.sync_through(b).await.expect("stored");
        // What the first writer had in flight: its position is free, so the stream takes it.
        let client = async_nats::connect(cluster.url(0)).await.expect("connect");
        let stale = PublishMessage::build()
            .payload(Bytes::from_static(b"stale"))
            .message_id(format!("paused-writer:{}", b + 1))
            .expected_last_sequence(b);
        async_nats::jetstream::new(client)
            .send_publish(options.entry_subject("results"), stale)
            .await
            .expect("sent")
            .await
            .expect("the position was free");
        let refused = second.append(b"b2").expect("append");
        let error = second.sync_through(refused).await.expect_err("fenced");
        assert!(error.to_string().contains("another writer"), "{error}");
        let third = open(&options).await.expect("open");
        assert_eq!(payloads(&third), [b"a".to_vec(), b"b".to_vec()]);
        let c = third.append(b"c").expect("append");
        third.sync_through(c).await.expect("stored");
        assert_eq!(
            payloads(&third),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn limits_under_which_jetstream_drops_entries_are_named() {
        use async_nats::jetstream::stream::RetentionPolicy;
        let ok = Config {
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            ..Default::default()
        };
        assert_eq!(dropping_limit(&ok), None);
        assert_eq!(dropping_limit(&Config::default()), None);
        let aged = Config {
            max_age: Duration::from_secs(3600),
            ..ok.clone()
        };
        assert!(dropping_limit(&aged).unwrap().contains("maximum age"));
        let counted = Config {
            max_messages: 1_000_000,
            ..ok.clone()
        };
        assert!(dropping_limit(&counted)
            .unwrap()
            .contains("max_msgs = 1000000"));
        let queue = Config {
            retention: RetentionPolicy::WorkQueue,
            ..ok
        };
        assert!(dropping_limit(&queue).unwrap().contains("WorkQueue"));
    }

    /// A stream someone created with limits is refused by name: JetStream would drop entries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_with_limits_that_drop_entries_is_refused() {
        let Some(cluster) = NatsCluster::start(1) else {
            return;
        };
        let mut options = options(&cluster, "limited");
        options.replicas = 1;
        let client = async_nats::connect(cluster.url(0)).await.expect("connect");
        async_nats::jetstream::new(client)
            .create_stream(Config {
                name: options.stream_name(),
                subjects: vec![options.log_subject()],
                max_age: Duration::from_secs(86_400),
                ..Default::default()
            })
            .await
            .expect("create the stream");
        let refused = tokio::task::spawn_blocking(move || StreamLog::open(&options))
            .await
            .expect("open");
        let error = refused.expect_err("refused").to_string();
        assert!(error.contains("maximum age"), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_without_its_quorum_says_it_is_stalled_until_the_quorum_returns() {
        let Some(mut cluster) = NatsCluster::start(3) else {
            return;
        };
        let log = Arc::new(StreamLog::open(&options(&cluster, "stall")).expect("open"));
        let first = log.append(b"before").expect("append");
        log.sync_through(first).await.expect("stored");
        assert_eq!(log.stalled(), None);
        cluster.kill(1);
        cluster.kill(2);
        let waiting = log.append(b"during").expect("append");
        let stalled = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(why) = log.stalled() {
                    return why;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the log reports the stall");
        assert!(stalled.contains(&format!("entry {waiting}")), "{stalled}");
        assert_eq!(log.failure(), None, "a stall is not a failure");
        assert!(log.durable_through() < waiting);
        cluster.start_node(1);
        cluster.start_node(2);
        tokio::time::timeout(Duration::from_secs(60), log.sync_through(waiting))
            .await
            .expect("acknowledged once the quorum is back")
            .expect("stored");
        assert_eq!(log.stalled(), None);
        let payloads = payloads(&log);
        assert_eq!(payloads, [b"before".to_vec(), b"during".to_vec()]);
    }

    /// Pipelined writers keep writing while the stream's leader is killed: every acknowledged
    /// entry survives, at the position it was given, exactly once, and writes resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_entries_survive_killing_the_stream_leader() {
        let Some(mut cluster) = NatsCluster::start(3) else {
            return;
        };
        let log = Arc::new(StreamLog::open(&options(&cluster, "failover")).expect("open"));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(parking_lot::Mutex::new(Vec::<(
            u64,
            Vec<u8>,
            std::time::Instant,
        )>::new()));
        let writers: Vec<_> = (0..8u32)
            .map(|w| {
                let (log, stop, acked) = (log.clone(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut k = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let payload = [w.to_le_bytes(), k.to_le_bytes()].concat();
                        let position = log.append(&payload).expect("append");
                        log.sync_through(position).await.expect("stored");
                        acked
                            .lock()
                            .push((position, payload, std::time::Instant::now()));
                        k += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let stream = log.stream.clone();
        let leader = wait_on(log.runtime(), async move { stream.get_info().await })
            .expect("stream info")
            .cluster
            .and_then(|c| c.leader)
            .expect("the stream has a leader");
        let index = cluster.index_of(&leader).expect("a node of the cluster");
        let before = acked.lock().len();
        let killed_at = std::time::Instant::now();
        cluster.kill(index);
        // Writes resume on the new leader (bounded: an election takes seconds).
        let resumed = tokio::time::timeout(Duration::from_secs(30), async {
            while acked.lock().iter().filter(|a| a.2 > killed_at).count() < 200 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.expect("writer");
        }
        assert!(
            resumed.is_ok(),
            "writes did not resume within 30 s of the leader's death"
        );
        cluster.start_node(index);
        let acked = acked.lock().clone();
        let mut times: Vec<_> = acked.iter().map(|a| a.2).collect();
        times.sort();
        let stall = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        eprintln!(
            "{} entries acknowledged ({before} before the kill of {leader}); longest pause between acknowledgements {stall:?}",
            acked.len()
        );
        let stored = log.read_from(0).expect("read");
        let positions: Vec<u64> = stored.iter().map(|e| e.position).collect();
        // Position 1 is the writer's marker.
        assert_eq!(
            positions,
            (2..=positions.len() as u64 + 1).collect::<Vec<_>>(),
            "one entry per position, no gaps"
        );
        let unique: std::collections::HashSet<&[u8]> =
            stored.iter().map(|e| e.payload.as_slice()).collect();
        assert_eq!(unique.len(), stored.len(), "an entry stored twice");
        for (position, payload, _) in &acked {
            assert_eq!(
                &stored[*position as usize - 2].payload,
                payload,
                "acknowledged entry {position}"
            );
        }
    }

    /// Every read returns every entry through the stream's end, however the consumer paces its
    /// deliveries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_return_every_entry_through_the_last() {
        let Some(cluster) = NatsCluster::start(3) else {
            return;
        };
        let log = StreamLog::open(&options(&cluster, "reads")).expect("open");
        for n in 0..300u32 {
            log.append(&n.to_le_bytes()).expect("append");
        }
        log.sync_blocking().expect("stored");
        // Position 1 is the writer's marker; the entries are at 2 to 301.
        for from in [0, 1, 2, 151, 300, 301] {
            for _ in 0..40 {
                let read = log.read_from(from).expect("read");
                let positions: Vec<u64> = read.iter().map(|e| e.position).collect();
                assert_eq!(
                    positions,
                    (from.max(2)..=301).collect::<Vec<_>>(),
                    "from {from}"
                );
            }
        }
    }

    /// Each message is published on the subject of its kind, under the stream's filter.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_go_out_on_the_subject_of_their_kind() {
        let Some(cluster) = NatsCluster::start(1) else {
            return;
        };
        let mut options = options(&cluster, "kinds");
        options.replicas = 1;
        let log = StreamLog::open(&options).expect("open");
        for n in 0..3u32 {
            log.append(&n.to_le_bytes()).expect("append");
        }
        log.sync_blocking().expect("stored");
        let stream = log.stream.clone();
        let subjects = wait_on(log.runtime(), async move {
            let mut subjects = Vec::new();
            for position in 1..=4 {
                let message = stream
                    .get_raw_message(position)
                    .await
                    .map_err(|e| replicated("reading a message", e))?;
                subjects.push(message.subject.to_string());
            }
            Ok::<_, StorageError>(subjects)
        })
        .expect("messages");
        assert_eq!(
            subjects,
            [
                "arbiter.kinds.log.marker",
                "arbiter.kinds.log.results",
                "arbiter.kinds.log.results",
                "arbiter.kinds.log.results"
            ]
        );
    }

    /// An entry larger than a NATS message goes out in parts and reads back whole at the
    /// position `append` gave, from any start within it, also after a reopen; the parts of an
    /// entry that was never completed are skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_larger_than_a_message_read_back_whole() {
        let Some(cluster) = NatsCluster::start(3) else {
            return;
        };
        let options = options(&cluster, "parts");
        let log = StreamLog::open(&options).expect("open");
        let big: Vec<u8> = (0..3 * log.shared.max_entry + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let a = log.append(b"before").expect("append");
        let b = log.append(&big).expect("append the large entry");
        let c = log.append(b"after").expect("append");
        assert_eq!(
            (a, b, c),
            (2, 6, 7),
            "after the writer's marker at 1, four parts take positions 3 to 6"
        );
        log.sync_through(c).await.expect("stored");
        let expected = vec![
            LogEntry {
                position: a,
                payload: b"before".to_vec(),
            },
            LogEntry {
                position: b,
                payload: big.clone(),
            },
            LogEntry {
                position: c,
                payload: b"after".to_vec(),
            },
        ];
        assert_eq!(log.read_from(0).expect("read"), expected);
        for from in 3..=6 {
            assert_eq!(
                log.read_from(from).expect("read"),
                expected[1..],
                "from {from}"
            );
        }
        drop(log);
        let log = StreamLog::open(&options).expect("reopen");
        assert_eq!(log.read_from(0).expect("read"), expected);
        // A part lost from the middle: the entry is incomplete, and skipped.
        let stream = log.stream.clone();
        wait_on(log.runtime(), async move { stream.delete_message(4).await })
            .expect("remove a part");
        let read = log.read_from(0).expect("read");
        assert_eq!(read, [expected[0].clone(), expected[2].clone()]);
    }
}
