//! Following the stream while another arbiter writes it (a standby): one ordered consumer
//! delivers every message from a position on, as it is stored, and [`Following::next`] hands
//! out the complete entries, skipping markers and stale messages as every reader does
//! (`chain`) and holding back an entry whose last parts are not stored yet.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;

use tokio_stream::StreamExt;

use super::{parts, StreamLog};
use crate::storage::LogEntry;

/// Messages handed to the caller per call at most (the rest wait for the next one).
const MESSAGES_PER_CALL: usize = 4096;
/// Messages received and not yet handed to the caller, at most: a caller that applies them
/// slower than JetStream delivers (a standby catching up) holds the consumer back instead of
/// buffering the stream in memory.
const MESSAGES_BUFFERED: usize = 1024;

/// Why [`Following::next`] cannot go on.
#[derive(Debug)]
pub enum FollowError {
    /// The consumer failed (NATS out of reach, say): follow again from
    /// [`Following::resume_from`].
    Failed(String),
    /// Positions `missing.0..missing.1` were removed from the stream before they were read.
    Trimmed {
        /// The positions missed.
        missing: (u64, u64),
    },
}

/// See the module documentation.
pub struct Following {
    /// Each message with its position and how many were stored after it when it was sent.
    messages: mpsc::Receiver<Result<(u64, u64, parts::Message), String>>,
    /// The log's runtime, which the consumer runs on (the caller's thread waits on it).
    runtime: tokio::runtime::Handle,
    /// Messages of an entry whose last parts are not stored yet.
    held: BTreeMap<u64, parts::Message>,
    /// The next position expected.
    expected: u64,
    /// Positions below this (and above `expected`) may be missing: the caller holds them.
    held_by_caller: u64,
    /// The writer whose messages count (see `chain`), carried from call to call.
    writer: Option<String>,
    /// How many messages the stream held beyond the last one received, when it was sent
    /// (`None` before the first).
    pending: Option<u64>,
    consumer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Following {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Following")
            .field("expected", &self.expected)
            .field("held", &self.held.len())
            .finish()
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.consumer.abort();
    }
}

impl StreamLog {
    /// Follows the stream from position `from`. `held_through`: the caller already applied
    /// every entry up to there (a trim up to it is no gap). `writer`: the writer whose messages
    /// count before `from` (`None`: the first message's).
    pub fn follow(&self, from: u64, held_through: u64, writer: Option<String>) -> Following {
        let (tx, messages) = mpsc::channel(MESSAGES_BUFFERED);
        let stream = self.stream.clone();
        let subject = self.subject.clone();
        let start = from.max(1);
        let consumer = self.runtime().spawn(async move {
            let mut delivered = match super::delivered_from(&stream, subject, start).await {
                Ok(delivered) => delivered,
                Err(e) => {
                    let _ = tx.send(Err(format!("following the log: {e}"))).await;
                    return;
                }
            };
            while let Some(message) = delivered.next().await {
                let sent = match message {
                    Ok(message) => match message.info() {
                        Ok(info) => {
                            let position = info.stream_sequence;
                            let payload = message.payload.to_vec();
                            Ok((
                                position,
                                info.pending,
                                parts::Message::new(message.headers.as_ref(), payload),
                            ))
                        }
                        Err(e) => Err(format!("following the log: {e}")),
                    },
                    Err(e) => Err(format!("following the log: {e}")),
                };
                // Waits while the caller is behind: the consumer pulls no more meanwhile.
                if tx.send(sent).await.is_err() {
                    return;
                }
            }
            let _ = tx
                .send(Err("following the log: the consumer ended".into()))
                .await;
        });
        Following {
            messages,
            runtime: self.runtime().handle().clone(),
            held: BTreeMap::new(),
            expected: start,
            held_by_caller: held_through,
            writer,
            pending: None,
            consumer,
        }
    }
}

impl Following {
    /// The entries completed by the messages stored since the last call, waiting up to `wait`
    /// for the first one (none: nothing new). Blocking: not to be called on a runtime.
    pub fn next(&mut self, wait: Duration) -> Result<Vec<LogEntry>, FollowError> {
        let messages = &mut self.messages;
        let received = self
            .runtime
            .block_on(async { tokio::time::timeout(wait, messages.recv()).await });
        let first = match received {
            Ok(Some(received)) => received,
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(FollowError::Failed("the log's consumer stopped".into())),
        };
        let mut received = vec![first];
        while received.len() < MESSAGES_PER_CALL {
            match self.messages.try_recv() {
                Ok(more) => received.push(more),
                Err(_) => break,
            }
        }
        let mut read = std::mem::take(&mut self.held);
        for message in received {
            let (position, pending, message) = message.map_err(FollowError::Failed)?;
            self.pending = Some(pending);
            if position < self.expected {
                continue; // delivered again after the consumer reset itself
            }
            if position > self.expected {
                if position > self.held_by_caller + 1 {
                    return Err(FollowError::Trimmed {
                        missing: (self.expected, position),
                    });
                }
                // Removed, but applied by the caller already: as after a trim, the first
                // message's writer counts.
                self.writer = None;
            }
            read.insert(position, message);
            self.expected = position + 1;
        }
        // An entry's parts are published in one run: its last ones come with a later call.
        if let Some((&position, message)) = read.last_key_value() {
            if message.part.is_some_and(|(i, k)| i < k) {
                self.held = read.split_off(&parts::group_start(position, message));
            }
        }
        Ok(super::entries_of(read, &mut self.writer))
    }

    /// The position after the last message received (held back or handed out).
    pub fn received_through(&self) -> u64 {
        self.expected - 1
    }

    /// Where to follow from again after a failure: the first message not yet handed out.
    pub fn resume_from(&self) -> u64 {
        self.held.keys().next().copied().unwrap_or(self.expected)
    }

    /// Whether everything the stream held when the last message was sent has been handed out:
    /// the consumer said nothing was pending after it, and no entry waits for its last parts.
    /// `false` before the first message.
    pub fn caught_up(&self) -> bool {
        self.pending == Some(0) && self.held.is_empty()
    }

    /// The writer whose messages count, as of the messages handed out.
    pub fn writer(&self) -> Option<String> {
        self.writer.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::MESSAGES_BUFFERED;
    use crate::cluster::nats_cluster::NatsCluster;
    use crate::cluster::{ClusterOptions, StreamLog};
    use crate::storage::Log;

    /// A single NATS server, and the options of cluster `name` on it (one replica).
    fn one_server(name: &str) -> Option<(NatsCluster, ClusterOptions)> {
        let cluster = NatsCluster::start(1)?;
        let mut options = ClusterOptions::new(vec![cluster.url(0)], name);
        options.replicas = 1;
        Some((cluster, options))
    }

    /// A follower that does not keep up holds the consumer back: at most
    /// [`MESSAGES_BUFFERED`] messages wait for it, and it still gets every entry, in order.
    #[test]
    fn a_slow_follower_holds_the_consumer_back_and_misses_nothing() {
        let Some((_cluster, options)) = one_server("slow") else {
            return;
        };
        let log = StreamLog::open(&options).expect("open");
        let n = 3 * MESSAGES_BUFFERED as u32;
        for i in 0..n {
            log.append(&i.to_le_bytes()).expect("append");
        }
        log.sync_blocking().expect("stored");
        let reader = StreamLog::open_reader(&options).expect("open a reader");
        let mut following = reader.follow(1, 0, None);
        std::thread::sleep(Duration::from_secs(1));
        let waiting = following.messages.len();
        assert!(
            (1..=MESSAGES_BUFFERED).contains(&waiting),
            "{waiting} messages wait"
        );
        let mut read = Vec::new();
        while read.len() < n as usize {
            let entries = following.next(Duration::from_secs(5)).expect("next");
            assert!(!entries.is_empty(), "stalled after {} entries", read.len());
            read.extend(entries.into_iter().map(|e| e.payload));
        }
        let written: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(read, written);
        assert!(following.caught_up());
    }

    /// A stream that ends in the first parts of an entry whose writer never published the rest
    /// (it died meanwhile): the follower hands out what is complete, holds the parts back, and
    /// has received through the stream's last position, so a standby knows that nothing more
    /// is coming rather than taking itself for behind.
    #[test]
    fn a_stream_ending_in_an_incomplete_entry_is_received_through_its_end() {
        let Some((cluster, options)) = one_server("torn") else {
            return;
        };
        let log = StreamLog::open(&options).expect("open");
        let before = log.append(b"before").expect("append");
        log.sync_blocking().expect("stored");
        // Two parts of three, after the writer's entry.
        let subject = options.entry_subject("results");
        let published = super::super::wait_on(log.runtime(), async move {
            let client = async_nats::connect(cluster.url(0)).await.expect("connect");
            let context = async_nats::jetstream::new(client);
            for i in 1..=2 {
                let part = async_nats::jetstream::message::PublishMessage::build()
                    .payload(vec![i as u8; 8].into())
                    .header(super::parts::HEADER, super::parts::header(i, 3).as_str())
                    .expected_last_sequence(before + i as u64 - 1);
                context
                    .send_publish(subject.clone(), part)
                    .await
                    .expect("sent")
                    .await
                    .expect("stored");
            }
            cluster
        });
        let reader = StreamLog::open_reader(&options).expect("open a reader");
        let mut following = reader.follow(1, 0, None);
        // Everything stored is received (bounded in time), and only the complete entry is
        // handed out.
        let last = reader.last_position().expect("last");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut payloads = Vec::new();
        while following.received_through() < last {
            assert!(
                std::time::Instant::now() < deadline,
                "received through {} of {last}",
                following.received_through()
            );
            let entries = following.next(Duration::from_millis(100)).expect("next");
            payloads.extend(entries.into_iter().map(|e| e.payload));
        }
        assert_eq!(following.received_through(), last);
        assert_eq!(payloads, [b"before".to_vec()]);
        assert!(!following.caught_up(), "an entry is held back");
        drop(published);
    }
}
