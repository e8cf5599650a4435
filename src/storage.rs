//! Durable storage: an embedded ordered key-value engine ([`engine`], redb underneath) behind
//! typed keys ([`keys`]), versioned record encodings ([`Record`]), atomic write batches, and group
//! commit ([`Storage::flush`]).
//!
//! Everything lives in one table under typed key prefixes, so a single [`WriteBatch`] can change
//! model metadata and append audit events atomically. A write is *applied* by [`Storage::apply`]
//! (visible to readers, atomic) and *durable* once a later [`Storage::flush`] has returned (the
//! engine's commit, fsynced); callers acknowledge a client only after that flush. Concurrent
//! flushes are coalesced: writers that ask while a flush is running share the next one.
//!
//! Result batches, too frequent and too small for the engine, go to the [`journal`] instead: an
//! append-only log of opaque entries with its own group commit, which the owner snapshots into
//! the engine and trims.
//!
//! A data directory written by builds that kept this table in sled is converted once, at open
//! ([`migrate`]).
//!
//! This module knows nothing of models, tests or gRPC.

mod bytes;
mod codec;
pub mod engine;
mod error;
mod group_commit;
pub mod journal;
pub mod keys;
pub mod log;
mod migrate;
mod open_dirs;
pub mod paths;
mod redb_engine;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use bytes::{ByteReader, ByteWriter};
pub use codec::{decode, BodyError, Record};
use engine::{Engine, Op};
pub use error::StorageError;
use group_commit::GroupCommit;
pub use journal::Journal;
pub use log::{Log, LogEntry};
pub use open_dirs::wait_until_released;
use open_dirs::Registered;

/// The engine's file inside the data directory.
pub const STORE_FILE: &str = "store.redb";
/// The engine's page cache. Reads are rare (start-up, first use of a test's result ids,
/// listings), so a small cache serves; the engine's write buffer is part of it.
const CACHE_BYTES: usize = 4 << 20;

/// Result alias of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StorageError::Io {
            context: format!("syncing directory {}", dir.display()),
            source,
        })
}

/// The storage of one data directory: the engine and the result journal.
#[derive(Debug)]
pub struct Storage {
    engine: Arc<dyn Engine>,
    flusher: GroupCommit,
    applied_batches: Arc<AtomicU64>,
    data_dir: PathBuf,
    /// The ordered log: the journal.
    log: Arc<dyn Log>,
    /// Why the store's last write or sync failed, until a sync succeeds again.
    store_fault: parking_lot::Mutex<Option<String>>,
    /// Declared last, so dropped last: the directory counts as released only once the engine
    /// and the journal are closed.
    _registered: Registered,
}

impl Storage {
    /// Opens (or creates) the store `<data_dir>/store.redb` and the journal under
    /// `<data_dir>/journal`, converting a directory written by an older build first.
    ///
    /// Must be called within a tokio runtime: it starts the group-commit task.
    pub fn open(data_dir: &Path) -> Result<Self> {
        if !data_dir.exists() {
            std::fs::create_dir_all(data_dir).map_err(|source| StorageError::Io {
                context: format!("creating data directory {}", data_dir.display()),
                source,
            })?;
            if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        // Released again if the open fails.
        let registered = Registered::claim(data_dir).ok_or_else(|| StorageError::Locked {
            path: data_dir.join(STORE_FILE),
        })?;
        Self::open_registered(data_dir, registered)
    }

    fn open_registered(data_dir: &Path, registered: Registered) -> Result<Self> {
        migrate::from_sled(data_dir, CACHE_BYTES)?;
        let engine: Arc<dyn Engine> = Arc::new(redb_engine::RedbEngine::open(
            &data_dir.join(STORE_FILE),
            CACHE_BYTES,
        )?);
        let applied_batches = Arc::new(AtomicU64::new(0));
        let flusher = GroupCommit::start(Arc::downgrade(&engine), applied_batches.clone());
        // The entries found at open are read again by the owner through `Log::read_from`.
        let (journal, _) = Journal::open(&data_dir.join("journal"))?;
        let journal = Arc::new(journal);
        journal.start()?;
        Ok(Self {
            engine,
            flusher,
            applied_batches,
            data_dir: data_dir.to_path_buf(),
            log: journal,
            store_fault: parking_lot::Mutex::new(None),
            _registered: registered,
        })
    }

    /// The ordered log (the result journal).
    pub fn log(&self) -> &dyn Log {
        &*self.log
    }

    /// The data directory this storage lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Reads and decodes one record.
    pub fn get<T: Record>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.engine.get(key)? {
            Some(bytes) => codec::decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reads the raw bytes stored under `key`.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(key)
    }

    /// Decodes every record whose key starts with `prefix`, in key order.
    pub fn scan<T: Record>(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, T)>> + '_ {
        decoded(self.entries(prefix, false))
    }

    /// Decodes every record whose key starts with `prefix`, in reverse key order.
    pub fn scan_rev<T: Record>(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, T)>> + '_ {
        decoded(self.entries(prefix, true))
    }

    /// Iterates the raw entries whose key starts with `prefix`, in key order.
    pub fn scan_raw(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        self.entries(prefix, false)
    }

    fn entries(&self, prefix: &[u8], reverse: bool) -> engine::Entries<'_> {
        match self.engine.scan(prefix, reverse) {
            Ok(entries) => entries,
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Decodes the last record whose key starts with `prefix`.
    pub fn last<T: Record>(&self, prefix: &[u8]) -> Result<Option<(Vec<u8>, T)>> {
        self.scan_rev(prefix).next().transpose()
    }

    /// Applies a batch atomically: readers see all of it or none of it. Not yet durable; call
    /// [`Storage::flush`] before acknowledging.
    pub fn apply(&self, batch: WriteBatch) -> Result<()> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        self.engine
            .apply(&batch.ops)
            .map_err(|e| self.store_failed(e))?;
        // After the apply: a flush that reads this count covers the batch (group_commit).
        self.applied_batches.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Makes every batch applied before this call durable. Concurrent callers share flushes.
    pub async fn flush(&self) -> Result<()> {
        let synced = self.flusher.flush().await;
        self.synced(synced)
    }

    /// Records a failure of the store (for [`Storage::fault`]) and returns it.
    fn store_failed(&self, e: StorageError) -> StorageError {
        if !matches!(e, StorageError::Closed) {
            *self.store_fault.lock() = Some(e.to_string());
        }
        e
    }

    /// Records the outcome of a sync: a success clears an earlier store fault.
    fn synced(&self, outcome: Result<()>) -> Result<()> {
        match outcome {
            Ok(()) => {
                if let Some(fault) = self.store_fault.lock().take() {
                    tracing::info!(earlier = %fault, "the store syncs again");
                }
                Ok(())
            }
            Err(e) => Err(self.store_failed(e)),
        }
    }

    /// What keeps storage from taking writes, if anything: a failed journal (until restart) or
    /// a store whose last write or sync failed (until one succeeds).
    pub fn fault(&self) -> Option<String> {
        if let Some(e) = self.log.failure() {
            return Some(format!(
                "result journal: {e}; results are refused until restart"
            ));
        }
        self.store_fault.lock().clone()
    }

    /// A mark covering every batch applied so far, for [`Storage::flush_through`].
    pub fn write_mark(&self) -> u64 {
        self.applied_batches.load(Ordering::Acquire)
    }

    /// Makes every batch applied before `mark` was taken durable; free when a flush since then
    /// already covered them (a pipelining writer's earlier wait usually did).
    pub async fn flush_through(&self, mark: u64) -> Result<()> {
        // May return without a sync (an earlier one covered the mark), so a success here says
        // nothing about the store now: it never clears a fault.
        self.flusher
            .flush_through(mark)
            .await
            .map_err(|e| self.store_failed(e))
    }

    /// Syncs the engine and the journal synchronously (for shutdown and tools outside the
    /// request path).
    pub fn flush_blocking(&self) -> Result<()> {
        let synced = self.engine.sync();
        self.synced(synced)?;
        self.log.sync_blocking()
    }

    /// How many flushes of the engine have run through group commit.
    pub fn flush_count(&self) -> u64 {
        self.flusher.flushes()
    }

    /// How many batches have been applied since open.
    pub fn applied_batches(&self) -> u64 {
        self.applied_batches.load(Ordering::Relaxed)
    }

    /// Bytes the engine occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.engine.size_on_disk()
    }
}

fn decoded<'a, T: Record>(
    entries: engine::Entries<'a>,
) -> impl Iterator<Item = Result<(Vec<u8>, T)>> + 'a {
    entries.map(|entry| {
        let (key, value) = entry?;
        let record = codec::decode(&key, &value)?;
        Ok((key, record))
    })
}

/// A set of writes applied atomically by [`Storage::apply`].
#[derive(Debug, Default)]
pub struct WriteBatch {
    ops: Vec<Op>,
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
    pub fn put_raw(&mut self, key: impl AsRef<[u8]>, bytes: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(key.as_ref().to_vec(), bytes.into()));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push(Op::Remove(key.as_ref().to_vec()));
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
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
