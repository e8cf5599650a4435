//! Durable storage: one ordered log ([`log`], the [`journal`] on a single node) that every
//! change goes through, folded into an embedded ordered key-value engine ([`engine`], redb
//! underneath) behind typed keys ([`keys`]) and versioned record encodings ([`Record`]).
//!
//! A [`WriteBatch`] is *applied* by [`Storage::apply`]: the engine applies it atomically (visible
//! to readers at once, not yet durable) and its ops are appended to the log as one entry, both
//! under one lock, so log order is apply order. A domain command is *executed* by
//! [`Storage::execute`]: the same, except that the log holds the command, and its batch is
//! computed from the command and the store by the domain's [`CommandFold`]. Each such store
//! entry carries a sequence number that the engine records in the same commit, so the engine
//! always says exactly which entries it holds. A change is *durable* once the log has synced its
//! entry ([`Storage::flush`], [`Storage::flush_through`]); callers acknowledge a client only
//! after that. Concurrent flushes share syncs (the log's group commit). The owner appends its own
//! entries to the same log (result batches), so there is one order for everything.
//!
//! The engine is a snapshot of the log: a [`Storage::checkpoint`] stamps it with the position of
//! the last batch it holds and syncs it, after which the owner may trim the log below its own
//! snapshots' positions. Opening replays the batches and commands the engine does not hold
//! (a crash loses the engine's unsynced writes, never the log's synced entries), then hands
//! the owner its entries to replay ([`Storage::take_owner_entries`]).
//!
//! A data directory written by builds that kept this table in sled is converted once, at open
//! ([`migrate`]); one written by builds that made every batch durable in the engine itself (no
//! stamp, no batch entries in the journal) opens as it is.
//!
//! This module knows nothing of models, tests or gRPC.

mod batch_entry;
mod bytes;
mod codec;
mod command;
pub mod engine;
mod error;
pub mod journal;
pub mod keys;
pub mod log;
mod migrate;
mod open_dirs;
pub mod paths;
mod redb_engine;
pub mod snapshot_store;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use bytes::{ByteReader, ByteWriter};
pub use codec::{decode, encode, BodyError, Record};
pub use command::{encode_command, replay_command, CommandFold, NoCommands};
use engine::{Engine, Op};
pub use error::StorageError;
pub use journal::Journal;
pub use log::{Log, LogEntry};
pub use open_dirs::wait_until_released;
use open_dirs::Registered;
pub use snapshot_store::{DirSnapshots, SnapshotMeta, SnapshotStore};

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

/// Whether a log entry is the store's (a batch or a command), as opposed to one of the
/// owner's own entries.
pub fn is_store_entry(payload: &[u8]) -> bool {
    batch_entry::is_batch(payload) || command::is_command(payload)
}

/// What a log entry is, by its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A store batch: the writes of a change.
    Batch,
    /// A store command, folded into writes on replay.
    Command,
    /// One of the owner's own entries (a batch of results).
    Owner,
}

impl EntryKind {
    /// The kind of the entry with `payload`.
    pub fn of(payload: &[u8]) -> Self {
        if batch_entry::is_batch(payload) {
            EntryKind::Batch
        } else if command::is_command(payload) {
            EntryKind::Command
        } else {
            EntryKind::Owner
        }
    }
}

/// What [`Storage::follow`] did with an entry.
#[derive(Debug)]
pub enum Followed {
    /// A store batch or command applied: the keys it wrote or removed, in its order.
    Store(Vec<Vec<u8>>),
    /// An entry the store already held (applied before, or folded into its snapshot).
    Held,
    /// The owner's entry, for the owner to fold.
    Owner(LogEntry),
}

/// A batch the engine applied and the log may not hold durably yet.
#[derive(Debug)]
struct Unsynced {
    position: u64,
    undo: Vec<Op>,
}

/// The storage of one data directory: the log and the engine it is folded into.
#[derive(Debug)]
pub struct Storage {
    engine: Arc<dyn Engine>,
    /// Held while a batch is applied and appended, and while a checkpoint stamps the engine: log
    /// order is apply order, and a stamp covers exactly the batches applied before it.
    order: parking_lot::Mutex<()>,
    /// What undoes each batch the engine applied whose log entry may not be durable yet, oldest
    /// first: if the log fails, those are undone, so that no later engine commit (redb makes
    /// the last one durable when it closes) keeps a batch the log lost. Its own lock (taken
    /// after `order`, and briefly), so that an acknowledgement that prunes it never waits for
    /// a checkpoint's syncs.
    unsynced: parking_lot::Mutex<VecDeque<Unsynced>>,
    /// The log position of the last batch applied (0: none since the log began).
    last_batch: AtomicU64,
    /// The store sequence number of the last batch or command applied: each store entry
    /// carries the next one, and the engine records it in the same commit
    /// ([`keys::STORE_SEQ`]), so that whatever state the engine comes back with (its last
    /// checkpoint after a crash, everything after a clean close) says exactly which entries
    /// it holds. Replaying a command onto a store that already holds it would refuse it.
    /// Changed only under `order`.
    seq: AtomicU64,
    /// The position the engine's newest stamp names (what a checkpoint has covered).
    checkpointed: AtomicU64,
    /// Checkpoints that synced the engine.
    checkpoints: AtomicU64,
    data_dir: PathBuf,
    /// The ordered log: the journal.
    log: Arc<dyn Log>,
    /// The owner's entries found at open, until the owner takes them to replay.
    owner_entries: parking_lot::Mutex<Vec<LogEntry>>,
    /// Why the store's last write or sync failed, until a sync succeeds again.
    store_fault: parking_lot::Mutex<Option<String>>,
    /// Set for a store that follows a log another process writes ([`Storage::open_following`]):
    /// every write is refused, and entries arrive through [`Storage::follow`].
    following: bool,
    /// Declared last, so dropped last: the directory counts as released only once the engine
    /// and the journal are closed.
    _registered: Registered,
}

impl Storage {
    /// Opens (or creates) the store `<data_dir>/store.redb` and the journal under
    /// `<data_dir>/journal`, converting a directory written by an older build first, for a
    /// caller that executes no commands (a log holding commands after the last checkpoint
    /// does not open: see [`Storage::open_with`]).
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, &NoCommands)
    }

    /// Opens the storage of `data_dir`, replaying the log's batches and commands after the
    /// engine's last checkpoint (commands through `fold`) before it returns.
    pub fn open_with(data_dir: &Path, fold: &dyn CommandFold) -> Result<Self> {
        Self::open_inner(data_dir, fold, None)
    }

    /// Like [`Storage::open_with`]; a data directory without a store first gets one made from
    /// the newest of `snapshots`, onto which the log after the snapshot's position is then
    /// replayed. Refused when the log no longer reaches back to that position.
    pub fn open_restoring(
        data_dir: &Path,
        fold: &dyn CommandFold,
        snapshots: &dyn SnapshotStore,
    ) -> Result<Self> {
        Self::open_inner(data_dir, fold, Some(snapshots))
    }

    /// Opens the store of `data_dir` over `log`, an ordered log kept outside the data directory
    /// (cluster mode's replicated stream): replays what the engine lacks from it. A data
    /// directory without a store gets one made from the newest of `snapshots` (kept beside the
    /// log) and the log after it, or from the whole log. The store here is only a copy of the
    /// log's fold: one the log has been trimmed past (a node that was away while snapshots
    /// moved on) is replaced the same way. Refused when the log does not reach back to what
    /// the store or snapshot needs.
    pub fn open_on_log(
        data_dir: &Path,
        log: Arc<dyn Log>,
        fold: &dyn CommandFold,
        snapshots: Option<&dyn SnapshotStore>,
    ) -> Result<Self> {
        let registered = Self::claim(data_dir)?;
        let store_path = data_dir.join(STORE_FILE);
        let open_engine = || -> Result<Arc<dyn Engine>> {
            Ok(Arc::new(redb_engine::RedbEngine::open(
                &store_path,
                CACHE_BYTES,
            )?))
        };
        let mut engine = store_path.exists().then(open_engine).transpose()?;
        if let (Some(kept), Some(_)) = (&engine, snapshots) {
            // Only a store behind the log's start: one ahead of its end is refused below.
            let stamp = read_u64(&**kept, keys::LOG_STAMP)?;
            let first = log.first_position();
            if stamp.saturating_add(1) < first {
                tracing::warn!(
                    store_through = stamp,
                    log_from = first,
                    "the log was trimmed past this node's store; replacing it from the newest snapshot"
                );
                engine = None;
                // Kept aside until the next replacement, in case the restore cannot be done.
                let aside = data_dir.join(format!("{STORE_FILE}.stale"));
                std::fs::rename(&store_path, &aside).map_err(|source| StorageError::Io {
                    context: format!("moving {} aside", store_path.display()),
                    source,
                })?;
                sync_dir(data_dir)?;
            }
        }
        let engine = match engine {
            Some(engine) => engine,
            None => {
                let restored = match snapshots {
                    Some(snapshots) => {
                        snapshot_store::restore(&store_path, snapshots, &*log, CACHE_BYTES)?
                    }
                    None => false,
                };
                if !restored {
                    snapshot_store::check_log_reaches(&*log, 0, "a new store")?;
                }
                open_engine()?
            }
        };
        // Only acknowledged positions are stamped, so a store ahead of the log was folded from
        // another log (or one since lost): never move this one past it.
        let stamp = read_u64(&*engine, keys::LOG_STAMP)?;
        if stamp >= log.next_position() {
            return Err(StorageError::Corrupt {
                key: STORE_FILE.into(),
                why: format!(
                    "the store holds the log up to position {stamp}, but the log ends at {}: \
                     it was folded from another log; start on an empty data directory",
                    log.next_position() - 1
                ),
            });
        }
        let entries = log.read_from(0)?;
        // The log may have been trimmed while it was read (a writer that has not yet noticed
        // it lost the lease): the read must still have begun right after the store's stamp.
        snapshot_store::check_log_reaches(&*log, stamp, "this node's store")?;
        Self::assemble(data_dir, registered, engine, log, entries, fold)
    }

    /// Like [`Storage::open_on_log`], for a process that only follows `log` while another one
    /// writes it (a cluster's standby): every write is refused ([`StorageError::Standby`]), and
    /// the entries appended after the open are applied one by one through [`Storage::follow`].
    pub fn open_following(
        data_dir: &Path,
        log: Arc<dyn Log>,
        fold: &dyn CommandFold,
        snapshots: Option<&dyn SnapshotStore>,
    ) -> Result<Self> {
        let mut storage = Self::open_on_log(data_dir, log, fold, snapshots)?;
        storage.following = true;
        Ok(storage)
    }

    /// Applies `entry`, the log's next entry after those applied so far, as opening would
    /// replay it, for a storage that follows a log another process writes. Returns the keys a
    /// store batch or command wrote, or the owner's entry for the owner to fold.
    pub fn follow(&self, entry: LogEntry, fold: &dyn CommandFold) -> Result<Followed> {
        if !is_store_entry(&entry.payload) {
            return Ok(Followed::Owner(entry));
        }
        let _order = self.order.lock();
        // Every writer of a replicated log numbers its entries.
        let entry_seq = store_entry_sequence(&entry)?.ok_or_else(|| {
            corrupt_entry(&entry, "a store entry without a sequence number".into())
        })?;
        if entry_seq <= self.seq.load(Ordering::Acquire) {
            return Ok(Followed::Held);
        }
        let mut ops = self.store_entry_ops(&entry, fold)?;
        let keys = ops
            .iter()
            .map(|op| match op {
                Op::Put(key, _) | Op::Remove(key) => key.clone(),
            })
            .collect();
        ops.push(put_u64(keys::STORE_SEQ, entry_seq));
        self.engine.apply(&ops).map_err(|e| self.store_failed(e))?;
        self.seq.store(entry_seq, Ordering::Release);
        self.last_batch.store(entry.position, Ordering::Release);
        Ok(Followed::Store(keys))
    }

    /// Creates `data_dir` if needed and takes it for this process: registered in it and its
    /// `lock` file held, before anything in it is read or repaired.
    fn claim(data_dir: &Path) -> Result<Registered> {
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
        let mut registered = Registered::claim(data_dir).ok_or_else(|| StorageError::Locked {
            path: data_dir.join(STORE_FILE),
        })?;
        registered.lock(data_dir)?;
        Ok(registered)
    }

    fn open_inner(
        data_dir: &Path,
        fold: &dyn CommandFold,
        snapshots: Option<&dyn SnapshotStore>,
    ) -> Result<Self> {
        let registered = Self::claim(data_dir)?;
        migrate::from_sled(data_dir, CACHE_BYTES)?;
        let (journal, entries) = Journal::open(&data_dir.join("journal"))?;
        let store_path = data_dir.join(STORE_FILE);
        if !store_path.exists() {
            let restored = match snapshots {
                Some(snapshots) => {
                    snapshot_store::restore(&store_path, snapshots, &journal, CACHE_BYTES)?
                }
                None => false,
            };
            // A new store is the fold of the whole log: the log must still hold all of it.
            if !restored {
                snapshot_store::check_log_reaches(&journal, 0, "a new store")?;
            }
        }
        let engine: Arc<dyn Engine> =
            Arc::new(redb_engine::RedbEngine::open(&store_path, CACHE_BYTES)?);
        let journal = Arc::new(journal);
        journal.start()?;
        Self::assemble(data_dir, registered, engine, journal, entries, fold)
    }

    /// The storage of `engine` and `log`, whose entries at open are `entries`: replays the store
    /// batches and commands after the engine's checkpoint, in log order.
    fn assemble(
        data_dir: &Path,
        registered: Registered,
        engine: Arc<dyn Engine>,
        log: Arc<dyn Log>,
        entries: Vec<LogEntry>,
        fold: &dyn CommandFold,
    ) -> Result<Self> {
        let stamp = read_u64(&*engine, keys::LOG_STAMP)?;
        let engine_seq = read_u64(&*engine, keys::STORE_SEQ)?;
        // The engine may hold batches whose entries a crash cut off the log: their positions
        // must not be handed out again.
        log.reserve_through(stamp);
        let storage = Self {
            engine,
            order: parking_lot::Mutex::new(()),
            unsynced: parking_lot::Mutex::new(VecDeque::new()),
            last_batch: AtomicU64::new(stamp),
            seq: AtomicU64::new(engine_seq),
            checkpointed: AtomicU64::new(stamp),
            checkpoints: AtomicU64::new(0),
            data_dir: data_dir.to_path_buf(),
            log,
            owner_entries: parking_lot::Mutex::new(Vec::new()),
            store_fault: parking_lot::Mutex::new(None),
            following: false,
            _registered: registered,
        };
        let mut owner_entries = Vec::new();
        let mut last_batch = stamp;
        let mut seq = engine_seq;
        let mut replayed = 0usize;
        for entry in entries {
            if !is_store_entry(&entry.payload) {
                owner_entries.push(entry);
                continue;
            }
            last_batch = last_batch.max(entry.position);
            let entry_seq = store_entry_sequence(&entry)?;
            // Sequenced entries the engine holds are skipped by number. Entries of a build
            // without sequence numbers (and without commands) are replayed by position after
            // the checkpoint's stamp, which moves with each, so that an engine closed before
            // its next checkpoint does not redo them over newer entries.
            let (due, marker) = match entry_seq {
                Some(entry_seq) => {
                    seq = seq.max(entry_seq);
                    (entry_seq > engine_seq, put_u64(keys::STORE_SEQ, entry_seq))
                }
                None => (
                    entry.position > stamp,
                    put_u64(keys::LOG_STAMP, entry.position),
                ),
            };
            if !due {
                continue;
            }
            let mut ops = storage.store_entry_ops(&entry, fold)?;
            ops.push(marker);
            storage.engine.apply(&ops)?;
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(
                entries = replayed,
                "replayed store batches and commands from the log"
            );
        }
        storage.last_batch.store(last_batch, Ordering::Release);
        storage.seq.store(seq, Ordering::Release);
        *storage.owner_entries.lock() = owner_entries;
        Ok(storage)
    }

    /// The writes of the store entry `entry`: its batch, or what `fold` makes of its command
    /// on the store as it is now.
    fn store_entry_ops(&self, entry: &LogEntry, fold: &dyn CommandFold) -> Result<Vec<Op>> {
        if command::is_command(&entry.payload) {
            let (_, body) =
                command::decode(&entry.payload).map_err(|why| corrupt_entry(entry, why))?;
            Ok(fold
                .replay(self, body)
                .map_err(|why| corrupt_entry(entry, format!("command not replayed: {why}")))?
                .ops)
        } else {
            Ok(batch_entry::decode(&entry.payload)
                .map_err(|why| corrupt_entry(entry, why))?
                .1)
        }
    }

    /// The ordered log, for the owner's own entries (see [`Storage::take_owner_entries`]).
    pub fn log(&self) -> &dyn Log {
        &*self.log
    }

    /// The owner's entries (not store batches) the log held at open, in position order, for
    /// the owner to replay; empty after the first call. They were read once, when the log was
    /// opened and checked.
    pub fn take_owner_entries(&self) -> Vec<LogEntry> {
        std::mem::take(&mut *self.owner_entries.lock())
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

    /// Applies a batch atomically: readers see all of it or none of it, and its entry is in the
    /// log. Not yet durable; call [`Storage::flush`] (or [`Storage::flush_through`] with the
    /// [`Storage::write_mark`] taken after it) before acknowledging. Returns the batch's log
    /// position (0 for an empty batch, which changes nothing).
    pub fn apply(&self, batch: WriteBatch) -> Result<u64> {
        if batch.ops.is_empty() {
            return Ok(0);
        }
        self.apply_with(|_| Ok((batch, ())))
            .map(|(position, ())| position)
    }

    /// Like [`Storage::apply`], with the batch made by `decide` from the store as every earlier
    /// entry left it, while no other change can come between (for a write that depends on what
    /// it reads, such as the next link of the audit chain). Nothing is applied when `decide`
    /// fails. An empty batch is not logged (position 0).
    pub fn apply_with<T, E: From<StorageError>>(
        &self,
        decide: impl FnOnce(&Self) -> std::result::Result<(WriteBatch, T), E>,
    ) -> std::result::Result<(u64, T), E> {
        self.commit_entry(decide, |seq, batch| {
            (!batch.ops.is_empty()).then(|| batch_entry::encode(seq, &batch.ops))
        })
    }

    /// Runs `decide` against the store under the order lock, applies its batch to the engine
    /// and appends the entry `entry` makes of it with the next store sequence number (none:
    /// nothing is logged, and the batch must be empty). Returns the entry's position (0
    /// without one).
    fn commit_entry<T, E: From<StorageError>>(
        &self,
        decide: impl FnOnce(&Self) -> std::result::Result<(WriteBatch, T), E>,
        entry: impl FnOnce(u64, &WriteBatch) -> Option<Vec<u8>>,
    ) -> std::result::Result<(u64, T), E> {
        if self.following {
            return Err(StorageError::Standby.into());
        }
        // A failed log refuses the append; checked first, so the engine is not changed either.
        if let Some(why) = self.log.failure() {
            self.roll_back_unsynced();
            return Err(StorageError::Failed {
                part: "log",
                source: Arc::new(std::io::Error::other(why)),
            }
            .into());
        }
        let _order = self.order.lock();
        let (mut batch, answer) = decide(self)?;
        let seq = self.seq.load(Ordering::Acquire) + 1;
        let Some(entry) = entry(seq, &batch) else {
            return Ok((0, answer));
        };
        if entry.len() > journal::MAX_ENTRY {
            return Err(StorageError::Corrupt {
                key: "log entry".into(),
                why: format!(
                    "{} bytes exceed the log's limit of {}",
                    entry.len(),
                    journal::MAX_ENTRY
                ),
            }
            .into());
        }
        batch.ops.push(put_u64(keys::STORE_SEQ, seq));
        let undo = self
            .engine
            .apply(&batch.ops)
            .map_err(|e| self.store_failed(e))?;
        match self.log.append(&entry) {
            Ok(position) => {
                self.unsynced.lock().push_back(Unsynced { position, undo });
                self.last_batch.store(position, Ordering::Release);
                self.seq.store(seq, Ordering::Release);
                Ok((position, answer))
            }
            // The log failed since the check above.
            Err(e) => {
                self.undo(&undo, "a batch the log refused");
                Err(e.into())
            }
        }
    }

    /// Undoes, newest first, every batch the engine applied whose log entry is not durable:
    /// after the log failed, the engine must not keep what the log lost.
    fn roll_back_unsynced(&self) {
        let _order = self.order.lock();
        let mut unsynced = self.unsynced.lock();
        let durable = self.log.durable_through();
        while let Some(batch) = unsynced.pop_back() {
            if batch.position <= durable {
                break;
            }
            self.undo(&batch.undo, "a batch the log lost");
        }
        unsynced.clear();
    }

    /// Applies the undo of `what`. If even that fails, the engine holds a change the log does
    /// not, and closing the engine would make it durable (a change its writer was told failed,
    /// and a store ahead of its log): the process aborts instead, which leaves the engine at
    /// its last checkpoint, and a restart replays the log onto it.
    fn undo(&self, undo: &[Op], what: &str) {
        if let Err(e) = self.engine.apply(undo) {
            tracing::error!(error = %e, "undoing {what} failed; aborting so that a restart recovers the store from its checkpoint and the log");
            eprintln!("arbiter: undoing {what} failed ({e}); aborting so that a restart recovers the store from its checkpoint and the log");
            std::process::abort();
        }
    }

    /// Forgets the undo of every batch whose log entry is durable through `position`.
    fn synced_through(&self, position: u64) {
        let mut unsynced = self.unsynced.lock();
        while unsynced.front().is_some_and(|b| b.position <= position) {
            unsynced.pop_front();
        }
    }

    /// Makes every batch applied and every entry appended before this call durable. Concurrent
    /// callers share syncs.
    pub async fn flush(&self) -> Result<()> {
        self.flush_through(self.log.next_position() - 1).await
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

    /// What keeps storage from taking writes, if anything: a failed log (until restart), a
    /// log whose entries wait for its replicas (until they answer), or an engine whose last
    /// write or sync failed (until one succeeds).
    pub fn fault(&self) -> Option<String> {
        if let Some(e) = self.log.failure() {
            return Some(format!("log: {e}; writes are refused until restart"));
        }
        if let Some(e) = self.log.stalled() {
            return Some(format!("log: {e}; writes wait"));
        }
        self.store_fault.lock().clone()
    }

    /// A mark covering every batch applied so far, for [`Storage::flush_through`]: the log
    /// position of the last one.
    pub fn write_mark(&self) -> u64 {
        self.last_batch.load(Ordering::Acquire)
    }

    /// Makes every batch applied before `mark` was taken durable; free when a sync since then
    /// already covered them (a pipelining writer's earlier wait usually did).
    pub async fn flush_through(&self, mark: u64) -> Result<()> {
        if mark == 0 {
            return Ok(());
        }
        match self.log.sync_through(mark).await {
            Ok(()) => {
                self.synced_through(mark);
                Ok(())
            }
            Err(e) => {
                self.roll_back_unsynced();
                Err(e)
            }
        }
    }

    /// Makes everything applied or appended so far durable, on the calling thread, without a
    /// checkpoint: frees the log's buffer and the batches' undo, for a writer of many batches
    /// that would otherwise hold them all until one sync at its end.
    pub fn sync_blocking(&self) -> Result<()> {
        match self.log.sync_blocking() {
            Ok(()) => {
                self.synced_through(self.log.durable_through());
                Ok(())
            }
            Err(e) => {
                self.roll_back_unsynced();
                Err(e)
            }
        }
    }

    /// Makes everything applied or appended so far durable and checkpoints the engine, on the
    /// calling thread (shutdown, tools outside the request path).
    pub fn flush_blocking(&self) -> Result<()> {
        self.checkpoint()
    }

    /// Stamps the engine with the position of the last batch applied and syncs it, so that
    /// opening replays only the batches after it; the log may then be trimmed below that
    /// position (as far as the owner's entries allow). Does nothing when no batch was applied
    /// since the last checkpoint. Blocks on I/O.
    ///
    /// The log is synced first and batches wait meanwhile, so the engine never makes durable a
    /// batch the log does not hold durably: after a crash, or a log that failed (refusing every
    /// write and checkpoint until restart), the engine's state is always the fold of a prefix of
    /// the log, and a batch whose writer was told it failed never comes back.
    pub fn checkpoint(&self) -> Result<()> {
        // Most of the log's sync happens before batches are held up.
        if let Err(e) = self.log.sync_blocking() {
            self.roll_back_unsynced();
            return Err(e);
        }
        let order = self.order.lock();
        let through = self.last_batch.load(Ordering::Acquire);
        if through == self.checkpointed.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Err(e) = self.log.sync_blocking() {
            drop(order);
            self.roll_back_unsynced();
            return Err(e);
        }
        // Every batch applied so far was applied under `order`: all are durable in the log.
        self.unsynced.lock().clear();
        let stamp = [put_u64(keys::LOG_STAMP, through)];
        self.engine
            .apply(&stamp)
            .map_err(|e| self.store_failed(e))?;
        let started = std::time::Instant::now();
        let synced = self.engine.sync();
        metrics::histogram!("arbiter_storage_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        self.synced(synced)?;
        self.checkpointed.store(through, Ordering::Release);
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The position the engine's newest durable stamp names: every batch at or below it is in
    /// the engine's synced state.
    pub fn checkpointed_through(&self) -> u64 {
        self.checkpointed.load(Ordering::Acquire)
    }

    /// How many checkpoints synced the engine since open.
    pub fn checkpoint_count(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    /// Puts a snapshot of the store into `snapshots`: the state after every store entry
    /// applied so far, read from one consistent view of the engine (writes go on meanwhile),
    /// and made durable in the log before it is kept, so that a snapshot never holds a change
    /// the log could lose. Blocks on I/O.
    pub fn put_snapshot(&self, snapshots: &dyn SnapshotStore) -> Result<SnapshotMeta> {
        let (at, entries) = {
            let _order = self.order.lock();
            let at = SnapshotMeta {
                position: self.last_batch.load(Ordering::Acquire),
                seq: self.seq.load(Ordering::Acquire),
                entries: 0,
            };
            (at, self.engine.scan(b"", false)?)
        };
        self.sync_blocking()?;
        // The stamp is the engine's own; a restored store is stamped with the position.
        let mut entries = entries
            .filter(|entry| !matches!(entry, Ok((key, _)) if key.as_slice() == keys::LOG_STAMP));
        snapshots.put(at, &mut entries)
    }

    /// Bytes the engine occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.engine.size_on_disk()
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // The engine makes its last commit durable when it closes, so the log must hold every
        // batch applied first; a batch it cannot hold (it failed) is undone instead, whether or
        // not a writer noticed the failure.
        if self.log.sync_blocking().is_err() {
            self.roll_back_unsynced();
        }
    }
}

/// The write of `value` (u64 LE) under `key`, as [`read_u64`] reads it.
/// The store sequence number of the store entry `entry` (`None`: written by a build without
/// them).
fn store_entry_sequence(entry: &LogEntry) -> Result<Option<u64>> {
    if command::is_command(&entry.payload) {
        Ok(Some(
            command::decode(&entry.payload)
                .map_err(|why| corrupt_entry(entry, why))?
                .0,
        ))
    } else {
        batch_entry::sequence(&entry.payload).map_err(|why| corrupt_entry(entry, why))
    }
}

/// The error for a log entry that does not decode or apply.
fn corrupt_entry(entry: &LogEntry, why: String) -> StorageError {
    StorageError::Corrupt {
        key: format!("log entry {}", entry.position),
        why,
    }
}

pub(super) fn put_u64(key: &[u8], value: u64) -> Op {
    Op::Put(key.to_vec(), value.to_le_bytes().to_vec())
}

/// A u64 (LE) the engine holds under `key`; 0 when absent.
fn read_u64(engine: &dyn Engine, key: &[u8]) -> Result<u64> {
    match engine.get(key)? {
        None => Ok(0),
        Some(bytes) => Ok(u64::from_le_bytes(bytes.as_slice().try_into().map_err(
            |_| StorageError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                why: format!("{} bytes, not 8", bytes.len()),
            },
        )?)),
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
mod rollback_tests;

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

    fn put(storage: &Storage, n: u64) -> u64 {
        let mut batch = WriteBatch::new();
        batch
            .put(format!("k/{n:03}"), &Counter { n })
            .expect("encode");
        let position = storage.apply(batch).expect("apply");
        assert!(storage.write_mark() >= position);
        position
    }

    fn counters(storage: &Storage) -> Vec<u64> {
        storage
            .scan::<Counter>(b"k/")
            .map(|e| e.expect("decode").1.n)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_get_increasing_marks_and_all_become_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(Storage::open(dir.path()).expect("open"));
        let writers: Vec<_> = (0..64u64)
            .map(|n| {
                let storage = storage.clone();
                tokio::spawn(async move {
                    let mark = put(&storage, n);
                    storage.flush_through(mark).await.expect("flush");
                    mark
                })
            })
            .collect();
        let mut marks = Vec::new();
        for writer in writers {
            marks.push(writer.await.expect("writer"));
        }
        marks.sort_unstable();
        marks.dedup();
        assert_eq!(marks.len(), 64, "two batches share a log position");
        assert_eq!(counters(&storage), (0..64).collect::<Vec<_>>());
        // Nothing was checkpointed: the engine's copy is not durable, the log's is.
        assert_eq!(storage.checkpoint_count(), 0);
        drop(storage);
        std::fs::remove_file(dir.path().join(STORE_FILE)).expect("engine lost");
        let storage = Storage::open(dir.path()).expect("reopen");
        assert_eq!(counters(&storage), (0..64).collect::<Vec<_>>());
    }

    /// Rewinds the engine under `dir` to what it held at its last checkpoint, as a crash before
    /// its next sync would: `undo` restores the keys later batches changed.
    fn rewind_engine(dir: &Path, undo: &[Op]) {
        let engine =
            redb_engine::RedbEngine::open(&dir.join(STORE_FILE), CACHE_BYTES).expect("engine");
        engine.apply(undo).expect("rewind");
        engine.sync().expect("sync");
    }

    /// A fold that is not idempotent: each command adds its byte to a sum, and a command that
    /// would take the sum past 60 is refused.
    struct Sums;

    fn add(store: &Storage, command: &[u8]) -> Result<WriteBatch> {
        let sum = store.get::<Counter>(b"sum")?.map_or(0, |c| c.n) + u64::from(command[0]);
        if sum > 60 {
            return Err(StorageError::Corrupt {
                key: "sum".into(),
                why: format!("{sum} is past 60"),
            });
        }
        let mut batch = WriteBatch::new();
        batch.put(b"sum", &Counter { n: sum })?;
        Ok(batch)
    }

    impl CommandFold for Sums {
        fn replay(
            &self,
            store: &Storage,
            command: &[u8],
        ) -> std::result::Result<WriteBatch, String> {
            add(store, command).map_err(|e| e.to_string())
        }
    }

    fn execute(storage: &Storage, by: u8) -> Result<u64> {
        storage
            .execute(&[by], |store| add(store, &[by]).map(|b| (b, ())))
            .map(|(position, ())| position)
    }

    fn sum(dir: &Path) -> u64 {
        let storage = Storage::open_with(dir, &Sums).expect("open");
        let sum = storage
            .get::<Counter>(b"sum")
            .expect("read")
            .map_or(0, |c| c.n);
        close(storage);
        sum
    }

    /// Drops `storage` and waits until its directory may be opened again.
    fn close(storage: Storage) {
        let dir = storage.data_dir().to_path_buf();
        drop(storage);
        assert!(wait_until_released(&dir, std::time::Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn commands_are_replayed_exactly_once_whatever_the_engine_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checkpoint = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open_with(dir.path(), &Sums).expect("open");
        execute(&storage, 10).expect("execute");
        storage.checkpoint().expect("checkpoint");
        std::fs::copy(
            dir.path().join(STORE_FILE),
            checkpoint.path().join(STORE_FILE),
        )
        .expect("copy the checkpoint");
        execute(&storage, 20).expect("execute");
        put(&storage, 7);
        execute(&storage, 30).expect("execute");
        // Refused: nothing applied, nothing logged.
        let before = storage.log.next_position();
        assert!(execute(&storage, 5).is_err());
        assert_eq!(storage.log.next_position(), before);
        storage.flush().await.expect("flush");
        close(storage);

        // A clean close kept every command in the engine, past its checkpoint's stamp: none
        // is applied again (the first would be refused, and the open fail).
        assert_eq!(sum(dir.path()), 60);
        // A crash leaves the engine at its checkpoint: the commands after it are replayed.
        std::fs::copy(
            checkpoint.path().join(STORE_FILE),
            dir.path().join(STORE_FILE),
        )
        .expect("restore the checkpoint");
        assert_eq!(sum(dir.path()), 60);
        // Without its engine, the log alone gives the same.
        std::fs::remove_file(dir.path().join(STORE_FILE)).expect("remove the engine");
        assert_eq!(sum(dir.path()), 60);
        // A storage opened without the fold refuses commands it cannot apply.
        std::fs::remove_file(dir.path().join(STORE_FILE)).expect("remove the engine");
        let err = Storage::open(dir.path()).expect_err("commands need their fold");
        assert!(err.to_string().contains("command not replayed"), "{err}");
    }

    #[tokio::test]
    async fn entries_of_an_older_build_are_replayed_once_before_newer_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A batch an older build logged (no sequence number) that its store never got.
        let storage = Storage::open_with(dir.path(), &Sums).expect("open");
        let mut old = WriteBatch::new();
        old.put(b"sum", &Counter { n: 5 }).expect("encode");
        storage
            .log
            .append(&batch_entry::encode_unsequenced(&old.ops))
            .expect("append");
        storage.log.sync_blocking().expect("sync");
        close(storage);
        // Replayed at open; then a command changes the same key and the storage closes
        // before any checkpoint.
        let storage = Storage::open_with(dir.path(), &Sums).expect("open");
        assert_eq!(
            storage.get::<Counter>(b"sum").expect("read"),
            Some(Counter { n: 5 })
        );
        execute(&storage, 10).expect("execute");
        storage.flush().await.expect("flush");
        close(storage);
        // The old batch is not redone over the command.
        assert_eq!(sum(dir.path()), 15);
    }

    #[tokio::test]
    async fn a_lost_store_is_restored_from_a_snapshot_only_while_the_log_reaches_back_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = tempfile::tempdir().expect("tempdir");
        let snapshots = DirSnapshots::open(kept.path()).expect("snapshots");
        let storage = Storage::open_with(dir.path(), &Sums).expect("open");
        execute(&storage, 10).expect("execute");
        put(&storage, 1);
        let meta = storage.put_snapshot(&snapshots).expect("snapshot");
        assert_eq!(meta.position, storage.write_mark());
        execute(&storage, 20).expect("execute");
        storage.flush().await.expect("flush");
        close(storage);

        // The store is lost: made from the snapshot, then the command after it replayed.
        std::fs::remove_file(dir.path().join(STORE_FILE)).expect("lose the store");
        let storage = Storage::open_restoring(dir.path(), &Sums, &snapshots).expect("restore");
        assert_eq!(
            storage.get::<Counter>(b"sum").expect("read"),
            Some(Counter { n: 30 })
        );
        assert_eq!(counters(&storage), [1]);
        // Entries after the snapshot are trimmed away once a checkpoint holds them.
        let cut = storage.log.seal().expect("seal");
        storage.checkpoint().expect("checkpoint");
        storage.log.trim_before(cut).expect("trim");
        close(storage);

        // With the store present, the snapshot is not used.
        assert_eq!(sum(dir.path()), 30);
        // Lost again: the snapshot is older than the log, and restoring it would lose a change.
        std::fs::remove_file(dir.path().join(STORE_FILE)).expect("lose the store");
        let err = Storage::open_restoring(dir.path(), &Sums, &snapshots).expect_err("refused");
        assert!(err.to_string().contains("would lose"), "{err}");
        assert!(!dir.path().join(STORE_FILE).exists());
        // Nor is a new store made from what is left of the log.
        let err = Storage::open_with(dir.path(), &Sums).expect_err("refused");
        assert!(
            err.to_string().contains("needs the log from position 1"),
            "{err}"
        );
        assert!(!dir.path().join(STORE_FILE).exists());
    }

    #[tokio::test]
    async fn batches_after_the_checkpoint_are_replayed_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        put(&storage, 1);
        storage.flush_blocking().expect("checkpoint");
        let stamp = storage.checkpointed_through();
        assert!(stamp > 0);
        let mut batch = WriteBatch::new();
        batch.remove("k/001");
        batch.put("k/002", &Counter { n: 2 }).expect("encode");
        storage.apply(batch).expect("apply");
        let mark = storage.write_mark();
        assert!(mark > stamp);
        storage.flush_through(mark).await.expect("flush");
        drop(storage);
        // The engine lost the second batch (and kept its stamp and the first batch's sequence
        // number); the log has it.
        let mut one = Vec::new();
        Counter { n: 1 }.encode_body(&mut one).expect("encode");
        let mut record = vec![Counter::FORMAT_VERSION];
        record.extend(one);
        rewind_engine(
            dir.path(),
            &[
                Op::Put(b"k/001".to_vec(), record),
                Op::Remove(b"k/002".to_vec()),
                put_u64(keys::STORE_SEQ, 1),
            ],
        );
        let storage = Storage::open(dir.path()).expect("reopen");
        assert_eq!(counters(&storage), [2]);
        assert_eq!(storage.write_mark(), mark);
        // New batches go after everything the log and the engine hold.
        assert!(put(&storage, 3) > mark);
    }

    #[tokio::test]
    async fn a_checkpointed_engine_opens_without_its_log_and_positions_stay_above_its_stamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        for n in 0..5 {
            put(&storage, n);
        }
        storage.flush_blocking().expect("checkpoint");
        let stamp = storage.checkpointed_through();
        drop(storage);
        std::fs::remove_dir_all(dir.path().join("journal")).expect("log lost");
        let storage = Storage::open(dir.path()).expect("reopen");
        assert_eq!(counters(&storage), [0, 1, 2, 3, 4]);
        assert!(put(&storage, 5) > stamp);
        storage.flush().await.expect("flush");
        drop(storage);
        let storage = Storage::open(dir.path()).expect("reopen");
        assert_eq!(counters(&storage), [0, 1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn the_owner_reads_only_its_own_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        put(&storage, 1);
        let own = storage.log().append(&[1, 42]).expect("append");
        put(&storage, 2);
        storage.flush().await.expect("flush");
        drop(storage);
        let storage = Storage::open(dir.path()).expect("reopen");
        let entries = storage.take_owner_entries();
        assert_eq!(
            entries,
            [LogEntry {
                position: own,
                payload: vec![1, 42]
            }]
        );
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
