//! [`WriterLease`]: which arbiter of a cluster writes the log.
//!
//! The lease is one key in a JetStream key-value bucket whose entries expire after the lease's
//! time to live (the bucket's maximum age, kept by the NATS servers, so no arbiter's clock is
//! involved). An arbiter takes the lease by creating the key, which fails while another holds
//! it, and keeps it by updating the key at the revision it last wrote, well within the time to
//! live. An arbiter that cannot refresh in time, or finds the key rewritten, has lost it.
//!
//! The lease decides who *should* write; the log's own fence (each entry names the position it
//! follows) decides who *can*. An arbiter paused past its lease (SIGSTOP, a long GC-like stall)
//! that wakes up still holding stale state cannot append after the new writer's entries.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;

use super::ClusterOptions;
use crate::storage::StorageError;

/// The key holding the writer's name.
const KEY: &str = "writer";

/// Who holds the writer lease, as the lease's value says: a name unique to one run of one
/// arbiter, and the address the others forward changes and results to (`None` when the
/// writer has none to give).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// Unique to one run of one arbiter.
    pub name: String,
    /// A URL (`http://host:port` or `https://…`) its gRPC server is reached at.
    pub address: Option<String>,
}

/// The writer as a standby last saw it in the lease.
#[derive(Debug, Clone)]
pub struct SeenWriter {
    /// Who holds the lease (an empty name when the key could not be read).
    pub holder: LeaseHolder,
    /// The key's revision, which every refresh advances.
    revision: u64,
    /// When a refresh was last seen (first seen, at first). Refreshes are written on a quorum
    /// of NATS servers: a writer seen refreshing is alive and has a quorum within reach.
    pub refreshed: std::time::Instant,
}

/// Updates `known` with the lease as just read (`None`: not readable); whether it changed.
fn seen(known: &mut Option<SeenWriter>, read: Option<(LeaseHolder, u64)>) -> bool {
    match (known.as_mut(), read) {
        (Some(known), Some((holder, revision))) => {
            if known.revision == revision && known.holder == holder {
                return false;
            }
            *known = SeenWriter {
                holder,
                revision,
                refreshed: std::time::Instant::now(),
            };
            true
        }
        (None, read) => {
            let (holder, revision) = read.unwrap_or((
                LeaseHolder {
                    name: String::new(),
                    address: None,
                },
                0,
            ));
            *known = Some(SeenWriter {
                holder,
                revision,
                refreshed: std::time::Instant::now(),
            });
            true
        }
        // Unreadable (NATS out of reach): what was seen stays, ageing.
        (Some(_), None) => false,
    }
}

impl LeaseHolder {
    /// The lease's value: the name, then the address on a line of its own.
    fn encode(&self) -> Bytes {
        match &self.address {
            Some(address) => Bytes::from(format!("{}\n{address}", self.name)),
            None => Bytes::from(self.name.clone()),
        }
    }

    /// See [`LeaseHolder::encode`].
    fn decode(value: &[u8]) -> Self {
        let text = String::from_utf8_lossy(value);
        match text.split_once('\n') {
            Some((name, address)) => LeaseHolder {
                name: name.to_string(),
                address: Some(address.to_string()).filter(|a| !a.is_empty()),
            },
            None => LeaseHolder {
                name: text.into_owned(),
                address: None,
            },
        }
    }
}

/// The lease of the log's writer, held by this arbiter.
#[derive(Debug)]
pub struct WriterLease {
    store: kv::Store,
    /// The lease's value while this arbiter holds it.
    value: Bytes,
    revision: u64,
    ttl: Duration,
}

fn replicated(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Replicated(format!("{what}: {e}"))
}

impl WriterLease {
    /// Waits until this arbiter (`holder` to the others) holds the lease of `options`'s
    /// cluster: at once when nobody does, else once the holder stops refreshing it.
    /// `held_elsewhere` says which other arbiter holds it, as last seen (it is checked every
    /// quarter of the lease's time to live). The lease is taken only while `may_take` says
    /// so: a standby that cannot tell its view is current (NATS electing the log's leader)
    /// leaves a lapsed lease to the writer, which takes it back once it can.
    pub async fn acquire(
        options: &ClusterOptions,
        holder: &LeaseHolder,
        held_elsewhere: &tokio::sync::watch::Sender<Option<SeenWriter>>,
        may_take: &(dyn Fn() -> bool + Sync),
    ) -> Result<Self, StorageError> {
        let client = options.connect().await?;
        let context = async_nats::jetstream::new(client);
        let bucket = options.lease_bucket();
        let config = kv::Config {
            bucket: bucket.clone(),
            history: 1,
            max_age: options.lease_ttl,
            storage: StorageType::File,
            num_replicas: options.replicas,
            ..Default::default()
        };
        let store = loop {
            let store = match context.get_key_value(&bucket).await {
                Ok(store) => Ok(store),
                Err(_) => context.create_key_value(config.clone()).await,
            };
            match store {
                Ok(store) => break store,
                Err(e) => {
                    tracing::info!(error = %e, %bucket, "waiting for JetStream to accept the writer lease");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let mut announced = false;
        let mut failing = false;
        let value = holder.encode();
        let revision = loop {
            // Not taken while this arbiter could not write at once (its view of the log is not
            // known to be current): only looked at.
            let tried = may_take();
            if tried {
                match store.create(KEY, value.clone()).await {
                    Ok(revision) => break revision,
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => failing = false,
                    Err(e) => {
                        // Once per outage: a standby tries every quarter of the lease.
                        if !failing {
                            tracing::warn!(error = %e, "cannot take the writer lease; retrying");
                            failing = true;
                        }
                        tokio::time::sleep(options.lease_ttl / 4).await;
                        continue;
                    }
                }
            }
            let current = store.entry(KEY).await;
            if current.is_ok() {
                failing = false;
            }
            match current.ok().flatten() {
                // An earlier attempt whose answer was lost went through.
                Some(entry) if entry.value == value => break entry.revision,
                // Lapsed, while this arbiter may not take it.
                None if !tried => {}
                current => {
                    let writer = current
                        .as_ref()
                        .map(|e| (LeaseHolder::decode(&e.value), e.revision));
                    if !announced {
                        let name = writer.as_ref().map(|w| w.0.name.as_str()).unwrap_or("");
                        tracing::info!(writer = %name, ttl = ?options.lease_ttl, "standing by: another arbiter writes the log; taking over when its lease lapses");
                        announced = true;
                    }
                    held_elsewhere.send_if_modified(|known| seen(known, writer));
                }
            }
            tokio::time::sleep(options.lease_ttl / 4).await;
        };
        tracing::info!(holder = %holder.name, address = holder.address.as_deref().unwrap_or("none"), "holding the writer lease");
        Ok(WriterLease {
            store,
            value,
            revision,
            ttl: options.lease_ttl,
        })
    }

    /// Keeps the lease until another arbiter holds it; returns why. Refreshes every third of
    /// its time to live. A refresh that cannot get through (a NATS leader election takes
    /// seconds) is retried rather than taken for a loss: whoever else took the lease meanwhile
    /// cannot write, since the log refuses entries that do not follow its own, and this arbiter
    /// learns of it at its next refresh. A lease that lapsed with nobody taking it is taken
    /// again.
    ///
    /// `unreachable` says why refreshes fail while they do (NATS out of reach: writes would
    /// wait too), and is cleared once one succeeds.
    pub async fn keep(
        &mut self,
        unreachable: &tokio::sync::watch::Sender<Option<String>>,
    ) -> String {
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            let value = self.value.clone();
            let update = self.store.update(KEY, value.clone(), self.revision);
            let error = match tokio::time::timeout(self.ttl, update).await {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    if let Some(since) = failing_since.take() {
                        tracing::info!(after = ?since.elapsed(), "writer lease refreshed again");
                        unreachable.send_replace(None);
                    }
                    continue;
                }
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    match self.after_wrong_revision(value).await {
                        Ok(Some(revision)) => {
                            self.revision = revision;
                            if let Some(since) = failing_since.take() {
                                tracing::info!(after = ?since.elapsed(), "writer lease refreshed again");
                                unreachable.send_replace(None);
                            }
                            continue;
                        }
                        Ok(None) => return "another arbiter took the writer lease".into(),
                        Err(e) => e,
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
            if failing_since.is_none() {
                tracing::warn!(%error, "cannot refresh the writer lease; retrying");
                failing_since = Some(Instant::now());
                unreachable.send_replace(Some(format!(
                    "cannot refresh the writer lease in NATS ({error}); writes may wait"
                )));
            }
        }
    }

    /// What a refresh refused for its revision means: the key's revision when it still names
    /// this arbiter (a refresh whose answer was lost went through) or once it is taken again
    /// (it lapsed), `None` when another arbiter holds it, `Err` when that cannot be told yet.
    async fn after_wrong_revision(&self, value: Bytes) -> Result<Option<u64>, String> {
        match self.store.entry(KEY).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                return Ok((entry.value == value).then_some(entry.revision));
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        match self.store.create(KEY, value).await {
            Ok(revision) => {
                tracing::warn!("the writer lease had lapsed; taken again");
                Ok(Some(revision))
            }
            // Whose it is, the next refresh finds out.
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                Err("the lapsed writer lease was taken meanwhile".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Gives the lease up, so that a standby takes over at once instead of after the time to
    /// live.
    pub async fn release(self) -> Result<(), StorageError> {
        self.store
            .delete_expect_revision(KEY, Some(self.revision))
            .await
            .map_err(|e| replicated("releasing the writer lease", e))
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseHolder;

    #[test]
    fn the_lease_value_names_the_writer_and_where_to_reach_it() {
        let with = LeaseHolder {
            name: "10.0.0.5:50051 (pid 7, 00ff)".into(),
            address: Some("https://arbiter-1.internal:50051".into()),
        };
        assert_eq!(LeaseHolder::decode(&with.encode()), with);
        let without = LeaseHolder {
            name: "0.0.0.0:50051 (pid 7, 00ff)".into(),
            address: None,
        };
        assert_eq!(LeaseHolder::decode(&without.encode()), without);
    }
}
