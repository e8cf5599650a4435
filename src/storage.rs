//! Durable storage on sled: typed keys ([`keys`]), versioned record encodings ([`Record`]), atomic
//! write batches, and group commit ([`Storage::flush`]).
//!
//! Everything lives in one sled tree under typed key prefixes, so a single [`WriteBatch`] can change
//! model metadata and append audit events atomically. A write is *applied* by [`Storage::apply`]
//! (visible to readers, atomic) and *durable* once a later [`Storage::flush`] has returned; callers
//! acknowledge a client only after that flush. Concurrent flushes are coalesced: writers that ask
//! while a flush is running share the next one.
//!
//! Result batches, too frequent and too small for sled, go to the [`journal`] instead: an
//! append-only log of opaque entries with its own group commit, which the owner snapshots into
//! sled and trims.
//!
//! This module knows nothing of models, tests or gRPC.

mod bytes;
mod codec;
mod group_commit;
pub mod journal;
pub mod keys;
pub mod paths;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use bytes::{ByteReader, ByteWriter};
pub use codec::{decode, BodyError, Record};
use group_commit::GroupCommit;
pub use journal::{Entry as JournalEntry, Journal};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled reported an error (I/O, corruption, or a lock held by another process).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record could not be decoded.
    #[error("record {key} could not be decoded: {source}")]
    Decode {
        /// The key, printed lossily.
        key: String,
        /// The decoder's error.
        source: serde_json::Error,
    },
    /// A stored record carries a format version this build does not know.
    #[error("record {key} has format version {found}; this build reads version {known}")]
    UnknownFormat {
        /// The key, printed lossily.
        key: String,
        /// The version byte found.
        found: u8,
        /// The version this build writes and reads.
        known: u8,
    },
    /// A stored value is malformed.
    #[error("record {key} is corrupt: {why}")]
    Corrupt {
        /// The key, printed lossily.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A record could not be encoded.
    #[error("record could not be encoded: {0}")]
    Encode(serde_json::Error),
    /// The background flusher is gone (the storage is shutting down).
    #[error("storage is shutting down")]
    Closed,
    /// A file system operation around the database failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result alias of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The sled database of one data directory.
#[derive(Debug)]
pub struct Storage {
    db: sled::Db,
    flusher: GroupCommit,
    applied_batches: Arc<AtomicU64>,
    data_dir: PathBuf,
    journal: Arc<Journal>,
    /// The journal's entries as found at open, until the owner takes them to replay.
    journal_tail: parking_lot::Mutex<Option<Vec<JournalEntry>>>,
}

impl Storage {
    /// Opens (or creates) the database under `<data_dir>/db` and the journal under
    /// `<data_dir>/journal`.
    ///
    /// Must be called within a tokio runtime: it starts the group-commit task.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|source| StorageError::Io {
            context: format!("creating data directory {}", data_dir.display()),
            source,
        })?;
        let db = sled::Config::new()
            .path(data_dir.join("db"))
            // Durability comes from explicit flushes before every acknowledgement; sled's own
            // periodic flush only bounds what an unacknowledged write may lose.
            .flush_every_ms(Some(1000))
            // Reads are rare (start-up, first use of a test's result ids, listings); 4 MiB rather
            // than 8 kept 10k tests with results ~4 MiB smaller (BENCHMARKS.md).
            .cache_capacity(4 << 20)
            .open()?;
        let applied_batches = Arc::new(AtomicU64::new(0));
        let flusher = GroupCommit::start(db.clone(), applied_batches.clone());
        let (journal, tail) = Journal::open(&data_dir.join("journal"))?;
        let journal = Arc::new(journal);
        journal.start()?;
        Ok(Self {
            db,
            flusher,
            applied_batches,
            data_dir: data_dir.to_path_buf(),
            journal,
            journal_tail: parking_lot::Mutex::new(Some(tail)),
        })
    }

    /// The result journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The journal's entries as found at open (empty after the first call).
    pub fn take_journal_tail(&self) -> Vec<JournalEntry> {
        self.journal_tail.lock().take().unwrap_or_default()
    }

    /// The data directory this storage lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Reads and decodes one record.
    pub fn get<T: Record>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get(key)? {
            Some(bytes) => codec::decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the raw bytes stored under `key`.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    /// Decodes every record whose key starts with `prefix`, in key order.
    pub fn scan<T: Record>(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, T)>> {
        self.db.scan_prefix(prefix).map(|entry| {
            let (key, value) = entry?;
            let record = codec::decode(&key, &value)?;
            Ok((key.to_vec(), record))
        })
    }

    /// Decodes every record whose key starts with `prefix`, in reverse key order.
    pub fn scan_rev<T: Record>(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, T)>> {
        self.db.scan_prefix(prefix).rev().map(|entry| {
            let (key, value) = entry?;
            let record = codec::decode(&key, &value)?;
            Ok((key.to_vec(), record))
        })
    }

    /// Iterates the raw entries whose key starts with `prefix`, in key order.
    pub fn scan_raw(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> {
        self.db.scan_prefix(prefix).map(|entry| {
            entry
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(Into::into)
        })
    }

    /// Decodes the last record whose key starts with `prefix`.
    pub fn last<T: Record>(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, T)>> {
        match self.db.scan_prefix(prefix).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some((key.to_vec(), codec::decode(&key, &value)?)))
            }
            None => Ok(None),
        }
    }

    /// Applies a batch atomically: readers see all of it or none of it. Not yet durable; call
    /// [`Storage::flush`] before acknowledging.
    pub fn apply(&self, batch: WriteBatch) -> Result<()> {
        self.db.apply_batch(batch.inner)?;
        // After the apply: a flush that reads this count covers the batch (group_commit).
        self.applied_batches.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Makes every batch applied before this call durable. Concurrent callers share flushes.
    pub async fn flush(&self) -> Result<()> {
        self.flusher.flush().await
    }

    /// A mark covering every batch applied so far, for [`Storage::flush_through`].
    pub fn write_mark(&self) -> u64 {
        self.applied_batches.load(Ordering::Acquire)
    }

    /// Makes every batch applied before `mark` was taken durable; free when a flush since then
    /// already covered them (a pipelining writer's earlier wait usually did).
    pub async fn flush_through(&self, mark: u64) -> Result<()> {
        self.flusher.flush_through(mark).await
    }

    /// Flushes the database and syncs the journal synchronously (for shutdown and tools outside
    /// the request path).
    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        self.journal.sync_blocking()
    }

    /// How many flushes of the database have run through group commit.
    pub fn flush_count(&self) -> u64 {
        self.flusher.flushes()
    }

    /// How many batches have been applied since open.
    pub fn applied_batches(&self) -> u64 {
        self.applied_batches.load(Ordering::Relaxed)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

/// A set of writes applied atomically by [`Storage::apply`].
#[derive(Debug, Default)]
pub struct WriteBatch {
    inner: sled::Batch,
    len: usize,
}

impl WriteBatch {
    /// Creates an empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `record` and stores it under `key`.
    pub fn put<T: Record>(&mut self, key: impl AsRef<[u8]>, record: &T) -> Result<()> {
        let bytes = codec::encode(record)?;
        self.put_raw(key, bytes);
        Ok(())
    }

    /// Stores raw bytes under `key`.
    pub fn put_raw(&mut self, key: impl AsRef<[u8]>, bytes: impl Into<sled::IVec>) {
        self.inner.insert(key.as_ref(), bytes.into());
        self.len += 1;
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.inner.remove(key.as_ref());
        self.len += 1;
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Counter {
        n: u64,
    }

    impl Record for Counter {
        const FORMAT_VERSION: u8 = 1;
    }

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = std::sync::Arc::new(Storage::open(dir.path()).expect("open"));
        let writers: Vec<_> = (0..64u64)
            .map(|n| {
                let storage = storage.clone();
                tokio::spawn(async move {
                    let mut batch = WriteBatch::new();
                    batch
                        .put(format!("k/{n:03}"), &Counter { n })
                        .expect("encode");
                    storage.apply(batch).expect("apply");
                    storage.flush().await.expect("flush");
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        // On this single-threaded runtime all 64 requests queue behind the first flush.
        assert!(
            storage.flush_count() < 8,
            "{} flushes for 64 writers",
            storage.flush_count()
        );
        let all: Vec<_> = storage
            .scan::<Counter>(b"k/")
            .collect::<Result<_>>()
            .expect("scan");
        assert_eq!(all.len(), 64);
        assert_eq!(all[63].1, Counter { n: 63 });
        assert_eq!(storage.applied_batches(), 64);
    }

    #[tokio::test]
    async fn a_flush_after_the_mark_makes_a_later_wait_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let write = |n: u64| {
            let mut batch = WriteBatch::new();
            batch.put(format!("k/{n}"), &Counter { n }).expect("encode");
            storage.apply(batch).expect("apply");
            storage.write_mark()
        };
        let first = write(1);
        let second = write(2);
        assert!(second > first);
        storage.flush_through(first).await.expect("flush");
        let flushes = storage.flush_count();
        assert!(flushes >= 1);
        // The flush for the first mark started after the second batch was applied: it covers it.
        storage.flush_through(second).await.expect("covered");
        assert_eq!(storage.flush_count(), flushes);
        // A batch applied after that flush needs one of its own.
        let third = write(3);
        storage.flush_through(third).await.expect("flush");
        assert_eq!(storage.flush_count(), flushes + 1);
    }

    #[tokio::test]
    async fn last_and_reverse_scans_follow_key_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut batch = WriteBatch::new();
        for n in [3u64, 1, 2] {
            batch.put(format!("k/{n}"), &Counter { n }).expect("encode");
        }
        batch.put("l/9", &Counter { n: 9 }).expect("encode");
        assert_eq!(batch.len(), 4);
        storage.apply(batch).expect("apply");
        let (_, last) = storage.last::<Counter>(b"k/").expect("read").expect("some");
        assert_eq!(last.n, 3);
        let rev: Vec<u64> = storage
            .scan_rev::<Counter>(b"k/")
            .map(|e| e.expect("decode").1.n)
            .collect();
        assert_eq!(rev, vec![3, 2, 1]);
        assert!(storage.get::<Counter>(b"k/4").expect("read").is_none());
    }
}
