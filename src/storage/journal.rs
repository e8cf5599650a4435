//! An append-only, group-committed journal of opaque entries: the single-node [`Log`], which every
//! change goes through (store batches and result batches). Each entry gets a *position*
//! (increasing; a durable one is never reused), is buffered in memory by [`Journal::append`], and
//! is durable once [`Journal::sync_through`] has returned for its position. One background thread
//! writes and `fdatasync`s the buffer on behalf of every waiter, so concurrent writers share syncs.
//!
//! Why a journal in front of the store: results spread over 10k tests make a B-tree rewrite a page
//! (kilobytes) per updated key, far more than the ~25 bytes of a result, which capped durable
//! ingestion near 50k results/s. Here a result costs its own bytes, written sequentially. The
//! owner checkpoints the store and snapshots its state to it periodically, stamped with the
//! position they include, and then removes segments they cover ([`Journal::rotate`],
//! [`Journal::remove_before`]), so the journal stays short and start-up replays only its tail.
//!
//! Files: `<dir>/<first position, 20 digits>.journal`, each starting with [`MAGIC`]. Entry: payload
//! length (u32 LE), CRC-32 (IEEE, via `crc32fast`) of position and payload, position (u64 LE),
//! payload. A torn or corrupt entry at the end of the newest segment is the tail of a write a
//! crash cut short (never acknowledged: its sync had not returned); it is cut off at open. Damage
//! anywhere else is reported and the journal does not open.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::log::{Log, SyncFuture};
use super::{Result, StorageError};
pub use segment::MAGIC;
use segment::{checksum, create_segment, io_error, segment_path, sync_dir, Recovered};

#[cfg(test)]
mod model_tests;
mod segment;

/// Largest payload accepted (a result batch is far smaller).
pub const MAX_ENTRY: usize = 64 << 20;

/// What the sync thread has made durable.
#[derive(Debug, Clone, Default)]
struct Durable {
    /// Every entry up to this position is on disk.
    through: u64,
    /// Set once a write or sync failed: nothing after it can be trusted durable.
    failed: Option<Arc<std::io::Error>>,
}

/// Entries appended but not yet written.
#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    /// Position of the next entry.
    next: u64,
    /// Copy of `Durable::failed`, checked by appenders.
    failed: Option<Arc<std::io::Error>>,
}

/// The files, owned by whoever writes.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    current: File,
    /// First positions of the segments, oldest first; the last is `current`.
    segments: Vec<u64>,
    /// Whether `current` holds any entry.
    current_has_entries: bool,
}

/// The journal of one directory. Appends are cheap and never block on I/O.
#[derive(Debug)]
pub struct Journal {
    pending: Mutex<Pending>,
    files: Mutex<Files>,
    durable: watch::Sender<Durable>,
    wake: Mutex<Option<mpsc::Sender<()>>>,
    /// The sync thread, joined when the journal is dropped.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Test builds make every write fail while this is set, as a full or failing disk would.
    #[cfg(test)]
    pub(crate) fail_writes: std::sync::atomic::AtomicBool,
    /// Writes of buffered entries that reached the disk (each with its `fdatasync`).
    syncs: std::sync::atomic::AtomicU64,
}

/// One entry read back.
pub use super::log::LogEntry as Entry;

impl Journal {
    /// Opens (or creates) the journal in `dir`: checks every segment, cuts a torn tail off the
    /// newest, and starts the sync thread. Returns the journal and every entry it holds, in
    /// position order, for the owner to replay.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Entry>)> {
        let Recovered {
            segments,
            entries,
            current,
            next,
            current_has_entries,
        } = segment::recover(dir)?;
        let (durable, _) = watch::channel(Durable {
            through: next - 1,
            failed: None,
        });
        let journal = Self {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                next,
                failed: None,
            }),
            files: Mutex::new(Files {
                dir: dir.to_path_buf(),
                current,
                segments,
                current_has_entries,
            }),
            durable,
            wake: Mutex::new(None),
            thread: Mutex::new(None),
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicBool::new(false),
            syncs: std::sync::atomic::AtomicU64::new(0),
        };
        Ok((journal, entries))
    }

    /// Starts the sync thread; dropping the journal ends and joins it.
    pub fn start(self: &std::sync::Arc<Self>) -> Result<()> {
        let (wake, requests) = mpsc::channel::<()>();
        *self.wake.lock() = Some(wake);
        let journal = std::sync::Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("arbiter-journal".into())
            .spawn(move || {
                while requests.recv().is_ok() {
                    while requests.try_recv().is_ok() {}
                    let Some(journal) = journal.upgrade() else {
                        return;
                    };
                    journal.write_pending();
                }
            })
            .map_err(io_error("starting the journal thread".into()))?;
        *self.thread.lock() = Some(thread);
        Ok(())
    }

    /// Positions below this one are taken; the next entry gets at least this.
    pub fn next_position(&self) -> u64 {
        self.pending.lock().next
    }

    /// Makes sure future positions exceed `position` (one the owner has seen stamped on a
    /// snapshot, which may be ahead of what a crash left in the journal).
    pub fn reserve_through(&self, position: u64) {
        let mut pending = self.pending.lock();
        pending.next = pending.next.max(position + 1);
    }

    /// Buffers an entry and returns its position. Not durable until [`Journal::sync_through`]
    /// has returned for that position.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        if payload.len() > MAX_ENTRY {
            return Err(StorageError::Corrupt {
                key: "journal entry".into(),
                why: format!("{} bytes exceed the limit of {MAX_ENTRY}", payload.len()),
            });
        }
        let mut pending = self.pending.lock();
        if let Some(why) = &pending.failed {
            return Err(failed(why));
        }
        let position = pending.next;
        pending.next += 1;
        let buf = &mut pending.buf;
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(position, payload).to_le_bytes());
        buf.extend_from_slice(&position.to_le_bytes());
        buf.extend_from_slice(payload);
        Ok(position)
    }

    /// Returns once every entry up to `position` is durable, sharing the sync with every other
    /// waiter. An error means the journal failed: nothing unsynced may be acknowledged.
    /// A wait that sees the failure happen gets the I/O error itself (a full disk is told as
    /// such); one that begins after it gets the refusal. Entries made durable before a failure
    /// are reported durable: their writers must not be told they failed, since they come back.
    pub async fn sync_through(&self, position: u64) -> Result<()> {
        let mut durable = self.durable.subscribe();
        let mut waited = false;
        loop {
            {
                let now = durable.borrow_and_update();
                if now.through >= position {
                    return Ok(());
                }
                if let Some(why) = &now.failed {
                    return Err(if waited {
                        StorageError::Io {
                            context: "writing the log".into(),
                            source: std::io::Error::new(why.kind(), why.to_string()),
                        }
                    } else {
                        failed(why)
                    });
                }
            }
            waited = true;
            self.request_sync()?;
            durable.changed().await.map_err(|_| StorageError::Closed)?;
        }
    }

    /// Writes and syncs everything appended so far on the calling thread.
    pub fn sync_blocking(&self) -> Result<()> {
        self.write_pending();
        match &self.durable.borrow().failed {
            Some(why) => Err(failed(why)),
            None => Ok(()),
        }
    }

    fn request_sync(&self) -> Result<()> {
        match &*self.wake.lock() {
            Some(wake) => wake.send(()).map_err(|_| StorageError::Closed),
            // Not started (tools and tests that open storage without a runtime): sync inline.
            None => {
                self.write_pending();
                Ok(())
            }
        }
    }

    /// Writes the buffered entries to the current segment and syncs it.
    fn write_pending(&self) {
        // Published before the files are released: no other write or sync may run between a
        // failed write and the failure becoming visible.
        let mut files = self.files.lock();
        let (outcome, next) = self.write_buffered(&mut files);
        self.publish(next - 1, outcome);
    }

    /// Takes the buffered entries and writes and syncs them to the current segment. Returns the
    /// outcome and the next position when the buffer was taken: every entry below it is covered.
    /// After a failure it writes nothing: the failed entries are never written later.
    fn write_buffered(&self, files: &mut Files) -> (std::io::Result<()>, u64) {
        let (buf, next) = {
            let mut pending = self.pending.lock();
            if pending.failed.is_some() {
                return (Ok(()), pending.next);
            }
            (std::mem::take(&mut pending.buf), pending.next)
        };
        if buf.is_empty() {
            return (Ok(()), next);
        }
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        files.current_has_entries = true;
        let started = std::time::Instant::now();
        let before = files.current.stream_position();
        let written = self
            .injected_write_failure()
            .and_then(|()| files.current.write_all(&buf))
            .and_then(|()| files.current.sync_data());
        if written.is_err() {
            // A write cut short (a full disk) may have left whole entries of the buffer in the
            // file, which a restart would read back although their writers were told they
            // failed: cut them off. Best effort; the journal refuses writes from here on anyway.
            if let Ok(before) = before {
                let cut = files
                    .current
                    .set_len(before)
                    .and_then(|()| files.current.seek(std::io::SeekFrom::Start(before)))
                    .and_then(|_| files.current.sync_data());
                if let Err(e) = cut {
                    tracing::error!(error = %e, "cutting a failed write off the journal failed");
                }
            }
        }
        metrics::histogram!("arbiter_journal_sync_seconds").record(started.elapsed().as_secs_f64());
        (written, next)
    }

    /// A failure test builds inject before a write (see `fail_writes`).
    fn injected_write_failure(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::Acquire) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected write failure",
            ));
        }
        Ok(())
    }

    /// Makes the outcome of a write visible to waiters. Called with the files locked. After a
    /// failure `through` never moves again: nothing written since can be trusted durable.
    fn publish(&self, through: u64, outcome: std::io::Result<()>) {
        match outcome {
            Ok(()) => self.durable.send_modify(|d| {
                if d.failed.is_none() {
                    d.through = d.through.max(through);
                }
            }),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "journal write failed; refusing further results until the server restarts"
                );
                let why = Arc::new(e);
                self.pending.lock().failed = Some(why.clone());
                self.durable.send_modify(|d| d.failed = Some(why));
            }
        }
    }

    /// Why the journal refuses results, if it does.
    pub fn failure(&self) -> Option<Arc<std::io::Error>> {
        self.pending.lock().failed.clone()
    }

    /// Syncs what is buffered and starts a new segment (unless the current one is still empty);
    /// returns a position such that every entry appended before the call lies below it, in
    /// segments [`Journal::remove_before`] may remove once snapshots cover them. Blocks on I/O.
    pub fn rotate(&self) -> Result<u64> {
        let mut files = self.files.lock();
        if let Some(why) = &self.pending.lock().failed {
            return Err(failed(why));
        }
        let (written, cut) = self.write_buffered(&mut files);
        if let Err(e) = written {
            self.publish(cut - 1, Err(e));
            return Err(self
                .failure()
                .map_or(StorageError::Closed, |why| failed(&why)));
        }
        self.publish(cut - 1, Ok(()));
        if files.current_has_entries {
            files.current = create_segment(&files.dir, cut)?;
            files.segments.push(cut);
            files.current_has_entries = false;
        }
        Ok(cut)
    }

    /// Removes every segment whose entries all lie below `cut` (never the current one).
    pub fn remove_before(&self, cut: u64) -> Result<usize> {
        let mut files = self.files.lock();
        let mut removed = 0;
        while files.segments.len() > 1 && files.segments[1] <= cut {
            let path = segment_path(&files.dir, files.segments[0]);
            std::fs::remove_file(&path)
                .map_err(io_error(format!("removing {}", path.display())))?;
            // Each removal durable before the next: after a crash the log may begin later than
            // it did, never have a hole in it.
            sync_dir(&files.dir)?;
            files.segments.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    /// How many writes with a sync the journal has made (for tests and metrics).
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.files.lock().segments.len()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the channel ends the thread's wait; it holds the journal only weakly, so it
        // cannot be inside a write unless it is the thread dropping the journal.
        self.wake.get_mut().take();
        if let Some(thread) = self.thread.get_mut().take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Log for Journal {
    fn append(&self, payload: &[u8]) -> Result<u64> {
        Journal::append(self, payload)
    }

    fn sync_through(&self, position: u64) -> SyncFuture<'_> {
        Box::pin(Journal::sync_through(self, position))
    }

    fn sync_blocking(&self) -> Result<()> {
        Journal::sync_blocking(self)
    }

    fn durable_through(&self) -> u64 {
        self.durable.borrow().through
    }

    fn next_position(&self) -> u64 {
        Journal::next_position(self)
    }

    fn first_position(&self) -> u64 {
        // Segments are removed whole, oldest first, and named by their first position.
        let oldest = self.files.lock().segments.first().copied();
        oldest.unwrap_or_else(|| Journal::next_position(self))
    }

    fn reserve_through(&self, position: u64) {
        Journal::reserve_through(self, position)
    }

    fn read_from(&self, from: u64) -> Result<Vec<Entry>> {
        // Under the files lock nothing is being written, rotated or removed, and what the
        // segment files hold is exactly what was synced (a write and its sync happen under it).
        let files = self.files.lock();
        let mut entries = Vec::new();
        for (i, &first) in files.segments.iter().enumerate() {
            if files.segments.get(i + 1).is_some_and(|&next| next <= from) {
                continue;
            }
            let path = segment_path(&files.dir, first);
            let (read, _, damage) = segment::read_segment(&path)?;
            // Nothing is torn while the journal is open: damage came from outside.
            if let Some(why) = damage {
                return Err(StorageError::Corrupt {
                    key: path.display().to_string(),
                    why,
                });
            }
            entries.extend(read.into_iter().filter(|e| e.position >= from));
        }
        Ok(entries)
    }

    fn seal(&self) -> Result<u64> {
        self.rotate()
    }

    fn trim_before(&self, cut: u64) -> Result<()> {
        self.remove_before(cut).map(|_| ())
    }

    fn failure(&self) -> Option<String> {
        Journal::failure(self).map(|e| e.to_string())
    }
}

fn failed(why: &Arc<std::io::Error>) -> StorageError {
    StorageError::Failed {
        part: "log",
        source: why.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::log::conformance::{log_conformance_suite, LogHarness};

    /// The journal in a temporary directory.
    struct JournalHarness(tempfile::TempDir);

    impl LogHarness for JournalHarness {
        type Log = Journal;

        fn new() -> Option<Self> {
            Some(Self(tempfile::tempdir().expect("tempdir")))
        }

        fn open(&self) -> Arc<Journal> {
            let journal = Arc::new(Journal::open(self.0.path()).expect("open").0);
            journal.start().expect("start");
            journal
        }

        fn tear_newest_entry(&self) {
            let mut segments: Vec<_> = std::fs::read_dir(self.0.path())
                .expect("list")
                .map(|e| e.expect("entry").path())
                .collect();
            segments.sort();
            let newest = segments.last().expect("a segment");
            let len = std::fs::metadata(newest).expect("stat").len();
            OpenOptions::new()
                .write(true)
                .open(newest)
                .and_then(|f| f.set_len(len - 3))
                .expect("truncate");
        }
    }

    log_conformance_suite!(JournalHarness);

    #[tokio::test]
    async fn after_a_failed_write_nothing_more_counts_as_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Arc::new(Journal::open(dir.path()).expect("open").0);
        journal.start().expect("start");
        let a = journal.append(b"a").expect("append");
        journal.sync_through(a).await.expect("sync");
        let b = journal.append(b"b").expect("append");
        journal
            .fail_writes
            .store(true, std::sync::atomic::Ordering::Release);
        let err = journal.sync_through(b).await.expect_err("the write fails");
        assert!(err.is_disk_full(), "{err}");
        journal
            .fail_writes
            .store(false, std::sync::atomic::Ordering::Release);
        // Later syncs (with nothing left to write, or a disk that works again) neither succeed
        // nor move the durable position over the failed entry.
        journal.sync_blocking().expect_err("refused");
        journal.rotate().expect_err("refused");
        journal.append(b"c").expect_err("refused");
        assert_eq!(Log::durable_through(&*journal), a);
        journal.sync_through(b).await.expect_err("still failed");
        // What was durable before the failure is still reported durable.
        journal
            .sync_through(a)
            .await
            .expect("durable before the failure");
        drop(journal);
        let (_, entries) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(payloads(&entries), [&b"a"[..]]);
    }
    use std::fs::OpenOptions;
    use std::sync::Arc;

    fn payloads(entries: &[Entry]) -> Vec<&[u8]> {
        entries.iter().map(|e| e.payload.as_slice()).collect()
    }

    #[tokio::test]
    async fn entries_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, replayed) = Journal::open(dir.path()).expect("open");
        assert!(replayed.is_empty());
        let journal = Arc::new(journal);
        journal.start().expect("start");
        let a = journal.append(b"first").expect("append");
        let b = journal.append(b"").expect("append");
        let c = journal.append(b"third").expect("append");
        assert!(a < b && b < c);
        journal.sync_through(c).await.expect("sync");
        drop(journal);
        let (journal, replayed) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(payloads(&replayed), [&b"first"[..], b"", b"third"]);
        assert_eq!(replayed[2].position, c);
        assert_eq!(journal.next_position(), c + 1);
    }

    #[tokio::test]
    async fn concurrent_waiters_share_syncs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Arc::new(Journal::open(dir.path()).expect("open").0);
        journal.start().expect("start");
        let writers: Vec<_> = (0..64u32)
            .map(|n| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let at = journal.append(&n.to_le_bytes()).expect("append");
                    journal.sync_through(at).await.expect("sync");
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        // On this single-threaded runtime the writers queue up behind the first sync.
        assert!(
            journal.sync_count() < 64,
            "{} syncs for 64 writers",
            journal.sync_count()
        );
        drop(journal);
        let (_, replayed) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(replayed.len(), 64);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        journal.append(b"kept").expect("append");
        journal.append(b"torn entry").expect("append");
        journal.sync_blocking().expect("sync");
        drop(journal);
        let path = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&path).expect("stat").len();
        // Cut the second entry short, as a crash mid-write would.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len - 3))
            .expect("truncate");
        let (journal, replayed) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(payloads(&replayed), [&b"kept"[..]]);
        journal.append(b"after").expect("append");
        journal.sync_blocking().expect("sync");
        drop(journal);
        let (_, replayed) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(payloads(&replayed), [&b"kept"[..], b"after"]);
        assert!(replayed[1].position > replayed[0].position);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        journal.append(b"one").expect("append");
        journal.append(b"two").expect("append");
        journal.sync_blocking().expect("sync");
        drop(journal);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        // In the newest segment: treated as a torn tail.
        let (journal, replayed) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(payloads(&replayed), [&b"one"[..]]);
        // In an older segment: reported, the journal does not open.
        journal.append(b"three").expect("append");
        journal.rotate().expect("rotate");
        drop(journal);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let err = Journal::open(dir.path()).expect_err("damage before the newest segment");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_rotation_that_never_completed_leaves_the_segment_before_it_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        journal.append(b"kept").expect("append");
        journal.append(b"torn").expect("append");
        journal.sync_blocking().expect("sync");
        let next = journal.next_position();
        drop(journal);
        // A crash inside `create_segment` (no complete header), then a torn tail in the segment
        // appends went on in.
        std::fs::write(segment_path(dir.path(), next), [0u8; 5]).expect("write");
        let path = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&path).expect("stat").len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len - 1))
            .expect("truncate");
        let (journal, replayed) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(payloads(&replayed), [&b"kept"[..]]);
        assert_eq!(journal.segment_count(), 1);
        assert!(!segment_path(dir.path(), next).exists());
        assert!(journal.append(b"after").expect("append") >= next);
        // A newest segment of zeros alone is empty too.
        drop(journal);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(segment_path(dir.path(), 7), [0u8; 40]).expect("write");
        let (journal, replayed) = Journal::open(dir.path()).expect("open zeros");
        assert!(replayed.is_empty());
        assert_eq!(journal.append(b"x").expect("append"), 7);
    }

    #[test]
    fn rotation_and_removal_keep_exactly_what_is_not_yet_covered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        let a = journal.append(b"a").expect("append");
        let cut = journal.rotate().expect("rotate");
        assert!(cut > a);
        // Nothing appended since: no new segment.
        assert_eq!(journal.rotate().expect("rotate"), cut);
        assert_eq!(journal.segment_count(), 2);
        let b = journal.append(b"b").expect("append");
        assert!(b >= cut);
        assert_eq!(journal.remove_before(cut).expect("remove"), 1);
        assert_eq!(journal.segment_count(), 1);
        journal.sync_blocking().expect("sync");
        drop(journal);
        let (journal, replayed) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(payloads(&replayed), [&b"b"[..]]);
        // Every segment removed but the current: positions still go on.
        assert!(journal.next_position() > b);
        journal.reserve_through(1000);
        assert_eq!(journal.append(b"c").expect("append"), 1001);
    }

    #[test]
    fn positions_continue_after_an_empty_current_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        journal.append(b"a").expect("append");
        journal.append(b"b").expect("append");
        let cut = journal.rotate().expect("rotate");
        journal.remove_before(cut).expect("remove");
        drop(journal);
        let (journal, replayed) = Journal::open(dir.path()).expect("reopen");
        assert!(replayed.is_empty());
        assert_eq!(journal.next_position(), cut);
    }
}
