//! After the log fails, the store keeps nothing the log lost: batches whose entries were not
//! durable are undone, so neither a later checkpoint nor the engine's own commit when it closes
//! (redb makes its last commit durable) brings back a change its writer was told had failed.
//! The failure is injected through a [`Log`] that wraps the journal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::log::SyncFuture;
use super::*;

/// The journal, failing every append and sync once `fail` is set (as after a write error).
#[derive(Debug)]
struct FailingLog {
    journal: Arc<Journal>,
    fail: AtomicBool,
}

fn failure() -> StorageError {
    StorageError::Failed {
        part: "log",
        source: Arc::new(std::io::Error::other("injected")),
    }
}

impl Log for FailingLog {
    fn append(&self, payload: &[u8]) -> Result<u64> {
        if self.fail.load(Ordering::Acquire) {
            return Err(failure());
        }
        Log::append(&*self.journal, payload)
    }

    fn sync_through(&self, position: u64) -> SyncFuture<'_> {
        if self.fail.load(Ordering::Acquire) {
            return Box::pin(async { Err(failure()) });
        }
        Log::sync_through(&*self.journal, position)
    }

    fn sync_blocking(&self) -> Result<()> {
        if self.fail.load(Ordering::Acquire) {
            return Err(failure());
        }
        Log::sync_blocking(&*self.journal)
    }

    fn durable_through(&self) -> u64 {
        Log::durable_through(&*self.journal)
    }

    fn next_position(&self) -> u64 {
        Log::next_position(&*self.journal)
    }

    fn first_position(&self) -> u64 {
        Log::first_position(&*self.journal)
    }

    fn reserve_through(&self, position: u64) {
        Log::reserve_through(&*self.journal, position)
    }

    fn read_from(&self, from: u64) -> Result<Vec<LogEntry>> {
        Log::read_from(&*self.journal, from)
    }

    fn seal(&self) -> Result<u64> {
        Log::seal(&*self.journal)
    }

    fn trim_before(&self, cut: u64) -> Result<()> {
        Log::trim_before(&*self.journal, cut)
    }

    fn failure(&self) -> Option<String> {
        self.fail
            .load(Ordering::Acquire)
            .then(|| "injected".to_string())
    }
}

/// Storage on `dir` over `log`, whose entries at open are `entries`.
fn storage_over(dir: &Path, log: Arc<dyn Log>, entries: Vec<LogEntry>) -> Storage {
    let registered = open_dirs::Registered::claim(dir).expect("unclaimed");
    let engine: Arc<dyn Engine> = Arc::new(
        redb_engine::RedbEngine::open(&dir.join(STORE_FILE), CACHE_BYTES).expect("engine"),
    );
    Storage::assemble(dir, registered, engine, log, entries, &NoCommands).expect("open")
}

/// The journal of `dir`, started, and the entries it holds.
fn journal(dir: &Path) -> (Arc<Journal>, Vec<LogEntry>) {
    let (journal, entries) = Journal::open(&dir.join("journal")).expect("journal");
    let journal = Arc::new(journal);
    journal.start().expect("start");
    (journal, entries)
}

/// Storage on `dir` over a journal that fails on demand.
fn open_failing(dir: &Path) -> (Storage, Arc<FailingLog>) {
    let (journal, entries) = journal(dir);
    let log = Arc::new(FailingLog {
        journal,
        fail: AtomicBool::new(false),
    });
    (storage_over(dir, log.clone(), entries), log)
}

/// Storage on `dir` over the real journal, kept to make its writes fail.
fn open_with_journal(dir: &Path) -> (Storage, Arc<Journal>) {
    let (journal, entries) = journal(dir);
    (storage_over(dir, journal.clone(), entries), journal)
}

/// Applies a batch writing `key` and waits until it is durable.
async fn put_acked(storage: &Storage, key: &str) {
    let position = put(storage, key).expect("apply");
    storage.flush_through(position).await.expect("durable");
}

fn put(storage: &Storage, key: &str) -> Result<u64> {
    let mut batch = WriteBatch::new();
    batch.put_raw(key, b"v".to_vec());
    storage.apply(batch)
}

fn keys_in(dir: &Path) -> Vec<String> {
    assert!(wait_until_released(dir, std::time::Duration::from_secs(5)));
    let storage = Storage::open(dir).expect("reopen");
    storage
        .scan_raw(b"k/")
        .map(|e| String::from_utf8(e.expect("read").0).expect("utf-8"))
        .collect()
}

#[tokio::test]
async fn a_batch_whose_sync_failed_is_gone_after_a_clean_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (storage, log) = open_failing(dir.path());
        put_acked(&storage, "k/acked").await;
        let b = put(&storage, "k/failed").expect("apply");
        log.fail.store(true, Ordering::Release);
        storage.flush_through(b).await.expect_err("the log failed");
        // Refused from now on, and nothing of the refused batch is applied.
        put(&storage, "k/refused").expect_err("refused");
        assert!(storage.get_raw(b"k/refused").expect("read").is_none());
        assert!(
            storage.get_raw(b"k/failed").expect("read").is_none(),
            "undone at once"
        );
        storage
            .checkpoint()
            .expect_err("no checkpoint after a log failure");
    }
    assert_eq!(keys_in(dir.path()), ["k/acked"]);
}

#[tokio::test]
async fn batches_nobody_waited_for_are_undone_when_the_storage_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (storage, log) = open_failing(dir.path());
        put_acked(&storage, "k/acked").await;
        put(&storage, "k/pending-1").expect("apply");
        put(&storage, "k/pending-2").expect("apply");
        log.fail.store(true, Ordering::Release);
        // Nobody asks for a sync: the storage notices at close.
    }
    assert_eq!(keys_in(dir.path()), ["k/acked"]);
}

#[tokio::test]
async fn an_undone_batch_restores_the_values_it_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (storage, log) = open_failing(dir.path());
        let mut batch = WriteBatch::new();
        batch.put_raw("k/kept", b"old".to_vec());
        batch.put_raw("k/removed", b"old".to_vec());
        let a = storage.apply(batch).expect("apply");
        storage.flush_through(a).await.expect("durable");
        // One batch that overwrites, removes, and writes one key twice.
        let mut batch = WriteBatch::new();
        batch.put_raw("k/kept", b"new".to_vec());
        batch.remove("k/removed");
        batch.put_raw("k/new", b"1".to_vec());
        batch.put_raw("k/new", b"2".to_vec());
        let b = storage.apply(batch).expect("apply");
        log.fail.store(true, Ordering::Release);
        storage.flush_through(b).await.expect_err("the log failed");
        assert_eq!(
            storage.get_raw(b"k/kept").expect("read").as_deref(),
            Some(&b"old"[..])
        );
        assert_eq!(
            storage.get_raw(b"k/removed").expect("read").as_deref(),
            Some(&b"old"[..])
        );
        assert!(storage.get_raw(b"k/new").expect("read").is_none());
    }
    assert_eq!(keys_in(dir.path()), ["k/kept", "k/removed"]);
}

#[tokio::test]
async fn a_failed_journal_write_undoes_its_batches_and_later_syncs_do_not_cover_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (storage, journal) = open_with_journal(dir.path());
        put_acked(&storage, "k/acked").await;
        put(&storage, "k/unwaited").expect("apply");
        let b = put(&storage, "k/failed").expect("apply");
        journal.fail_writes.store(true, Ordering::Release);
        let err = storage.flush_through(b).await.expect_err("the write fails");
        assert!(err.is_disk_full(), "{err}");
        // The disk works again; the journal still refuses, and nothing it lost comes back.
        journal.fail_writes.store(false, Ordering::Release);
        storage.sync_blocking().expect_err("refused");
        storage.checkpoint().expect_err("refused");
        assert!(storage.get_raw(b"k/failed").expect("read").is_none());
        assert!(storage.get_raw(b"k/unwaited").expect("read").is_none());
    }
    assert_eq!(keys_in(dir.path()), ["k/acked"]);
}
