//! Snapshots of the store at a log position, kept apart from it: the state a node starts from
//! when it has no store (a lost or wiped disk, a new node), before it replays the log after the
//! snapshot's position. The store itself is the live fold of the log; a snapshot is a copy of
//! it at one position, taken without stopping writes ([`super::Storage::put_snapshot`]) and
//! turned back into a store by [`super::Storage::open_restoring`].
//!
//! [`DirSnapshots`] keeps them as files in a directory; cluster mode adds an implementation on
//! an object store. Every implementation runs the suite in [`conformance`].

#[cfg(test)]
pub(crate) mod conformance;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::engine::{Engine, Entry, Op};
use super::log::Log;
use super::{keys, redb_engine, sync_dir, ByteReader, ByteWriter, Result, StorageError};

/// What a snapshot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The log position of the last store entry the snapshot holds.
    pub position: u64,
    /// The store sequence number of that entry.
    pub seq: u64,
    /// How many keys it holds.
    pub entries: u64,
}

/// A place that keeps snapshots of the store.
pub trait SnapshotStore: Send + Sync + std::fmt::Debug {
    /// Keeps `entries` (every key and value of the store at `at.position`, in key order) as
    /// the snapshot `at` describes (its `entries` count is ignored and counted anew).
    /// Atomic: after a crash the snapshot is whole or absent. Durable when it returns.
    fn put(
        &self,
        at: SnapshotMeta,
        entries: &mut dyn Iterator<Item = Result<Entry>>,
    ) -> Result<SnapshotMeta>;

    /// The newest snapshot that reads back whole (one that does not is skipped, and logged),
    /// with its entries in key order.
    fn latest(&self) -> Result<Option<(SnapshotMeta, Vec<Entry>)>>;

    /// Removes every snapshot but the newest `keep`.
    fn retain_newest(&self, keep: usize) -> Result<()>;
}

/// Snapshots as files `<position, 20 digits>.snapshot` in one directory.
///
/// A file is the magic `ARBSNAP1`, then position, store sequence number and entry count (u64
/// LE each), then each entry as key and value (varint length and bytes), then the SHA-256 of
/// everything before it. It is written under a temporary name of its own, fsynced, renamed and
/// its directory fsynced. One process at a time writes a directory's snapshots: opening clears
/// the temporary files that interrupted writes left.
#[derive(Debug)]
pub struct DirSnapshots {
    dir: PathBuf,
}

const MAGIC: &[u8; 8] = b"ARBSNAP1";
/// The magic and three u64s.
const HEADER: usize = 8 + 24;
const SUFFIX: &str = ".snapshot";

/// Whether `name` is the temporary file of a write: `<20 digits>.snapshot.<n>.tmp`.
fn is_temporary(name: &str) -> bool {
    name.strip_suffix(".tmp")
        .and_then(|rest| rest.split_once(SUFFIX))
        .is_some_and(|(position, n)| {
            position.len() == 20
                && position.bytes().all(|b| b.is_ascii_digit())
                && n.strip_prefix('.')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

/// The files in `dir`, with their names.
fn listing(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let context = || format!("listing {}", dir.display());
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(context()))? {
        let path = entry.map_err(io(context()))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        files.push((name.to_string(), path));
    }
    Ok(files)
}

impl DirSnapshots {
    /// The snapshots in `dir`, created if missing; the temporary files of writes that did not
    /// finish (a crash) are removed.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        for (name, path) in listing(dir)? {
            if is_temporary(&name) {
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The snapshot files, oldest first, with the positions their names give (other files
    /// are left alone).
    fn files(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut files: Vec<(u64, PathBuf)> = listing(&self.dir)?
            .into_iter()
            .filter_map(|(name, path)| {
                let position = name.strip_suffix(SUFFIX)?.parse::<u64>().ok()?;
                Some((position, path))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// The snapshot in `path`, whose name gives `named` as its position.
    fn read(named: u64, path: &Path) -> std::result::Result<(SnapshotMeta, Vec<Entry>), String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        decode(named, &bytes)
    }
}

/// The snapshot encoded in `bytes` (see [`DirSnapshots`] for the format), whose name gives
/// `named` as its position.
pub fn decode(named: u64, bytes: &[u8]) -> std::result::Result<(SnapshotMeta, Vec<Entry>), String> {
    if bytes.len() < HEADER + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a snapshot".into());
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err("its SHA-256 does not match its contents".into());
    }
    let word = |i: usize| {
        let at = MAGIC.len() + 8 * i;
        u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"))
    };
    let meta = SnapshotMeta {
        position: word(0),
        seq: word(1),
        entries: word(2),
    };
    if named != meta.position {
        return Err(format!(
            "it holds the store at position {}, not the one its name gives",
            meta.position
        ));
    }
    let mut r = ByteReader::new(&body[HEADER..]);
    // An entry takes at least two bytes: a count beyond that is refused below, unallocated.
    let capacity = meta.entries.min((body.len() / 2) as u64);
    let mut entries = Vec::with_capacity(capacity as usize);
    for _ in 0..meta.entries {
        let key = r.bytes("key")?.to_vec();
        let value = r.bytes("value")?.to_vec();
        entries.push((key, value));
    }
    r.finish()?;
    Ok((meta, entries))
}

/// Writes the file of a snapshot to `tmp` and syncs it; returns its entry count.
fn write_snapshot(
    tmp: &Path,
    at: &SnapshotMeta,
    entries: &mut dyn Iterator<Item = Result<Entry>>,
) -> Result<u64> {
    let context = || format!("writing snapshot {}", tmp.display());
    let file = std::fs::File::create(tmp).map_err(io(context()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let count = encode(at, entries, &mut out).map_err(|e| match e {
        StorageError::Io { source, .. } => io(context())(source),
        other => other,
    })?;
    let file = out
        .into_inner()
        .map_err(|e| io(context())(e.into_error()))?;
    file.sync_all().map_err(io(context()))?;
    Ok(count)
}

/// Encodes the snapshot `at` of `entries` (in key order) into `out` (see [`DirSnapshots`] for
/// the format); returns its entry count.
pub fn encode(
    at: &SnapshotMeta,
    entries: &mut dyn Iterator<Item = Result<Entry>>,
    out: &mut dyn Write,
) -> Result<u64> {
    // The count precedes the entries, so they are encoded first.
    let mut body = Vec::new();
    let mut count = 0u64;
    for entry in entries {
        let (key, value) = entry?;
        let mut w = ByteWriter(&mut body);
        w.bytes(&key);
        w.bytes(&value);
        count += 1;
    }
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    for word in [at.position, at.seq, count] {
        header.extend_from_slice(&word.to_le_bytes());
    }
    let mut hash = Sha256::new();
    hash.update(&header);
    hash.update(&body);
    out.write_all(&header)
        .and_then(|()| out.write_all(&body))
        .and_then(|()| out.write_all(&hash.finalize()))
        .map_err(io("encoding a snapshot".into()))?;
    Ok(count)
}

impl SnapshotStore for DirSnapshots {
    fn put(
        &self,
        at: SnapshotMeta,
        entries: &mut dyn Iterator<Item = Result<Entry>>,
    ) -> Result<SnapshotMeta> {
        let path = self.dir.join(format!("{:020}{SUFFIX}", at.position));
        // Unique across writers in this process and across processes (by the pid).
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            "{:020}{SUFFIX}.{}{write:06}.tmp",
            at.position,
            std::process::id()
        ));
        let written = write_snapshot(&tmp, &at, entries);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let count = written?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))?;
        sync_dir(&self.dir)?;
        Ok(SnapshotMeta {
            entries: count,
            ..at
        })
    }

    fn latest(&self) -> Result<Option<(SnapshotMeta, Vec<Entry>)>> {
        for (position, path) in self.files()?.into_iter().rev() {
            match Self::read(position, &path) {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(why) => {
                    tracing::warn!(path = %path.display(), %why, "skipping a snapshot that does not read back")
                }
            }
        }
        Ok(None)
    }

    fn retain_newest(&self, keep: usize) -> Result<()> {
        // Only snapshots that read back count as kept: a damaged newer one never costs the
        // newest good one.
        let files = self.files()?;
        let mut good = 0;
        let mut oldest_kept = files.len();
        for (i, (position, path)) in files.iter().enumerate().rev() {
            if good == keep {
                break;
            }
            if Self::read(*position, path).is_ok() {
                good += 1;
                oldest_kept = i;
            }
        }
        if keep == 0 {
            oldest_kept = files.len();
        }
        for (_, path) in &files[..oldest_kept] {
            std::fs::remove_file(path).map_err(io(format!("removing {}", path.display())))?;
        }
        if oldest_kept > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Checks that `log` holds every entry after `position` (0: since its beginning), which a store
/// at `position` needs replayed; the error says what is missing.
pub(super) fn check_log_reaches(log: &dyn Log, position: u64, store: &str) -> Result<()> {
    let (first, next) = (log.first_position(), log.next_position());
    // A log that has not reached the position yet (a new one) lacks what came after it too.
    let reaches = position.checked_add(1).is_some_and(|after| first <= after) && next > position;
    if reaches {
        return Ok(());
    }
    let held = if first >= next {
        format!("the log is empty (its next position is {next})")
    } else {
        format!("the log holds positions {first} to {}", next - 1)
    };
    Err(StorageError::Corrupt {
        key: STORE_NAME.into(),
        why: format!(
            "{store} needs the log from position {}, but {held}; opening it would lose what \
             is missing (restore the data directory from a backup)",
            position.saturating_add(1)
        ),
    })
}

/// The store's file, as errors name it.
const STORE_NAME: &str = "store.redb";

/// Makes the missing store file `path` from the newest of `snapshots`, after checking that `log`
/// still holds every entry after its position; `false` when there is no snapshot. The file
/// appears only once whole and synced. The caller holds the data directory's lock.
pub(super) fn restore(
    path: &Path,
    snapshots: &dyn SnapshotStore,
    log: &dyn Log,
    cache_bytes: usize,
) -> Result<bool> {
    let Some((meta, snapshot)) = snapshots.latest()? else {
        return Ok(false);
    };
    check_log_reaches(
        log,
        meta.position,
        &format!("the newest snapshot (log position {})", meta.position),
    )?;
    let partial = path.with_extension("redb.restoring");
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(io(format!("removing {}", partial.display())))?;
    }
    {
        let engine = redb_engine::RedbEngine::open(&partial, cache_bytes)?;
        let mut ops = snapshot.into_iter().map(|(key, value)| Op::Put(key, value));
        loop {
            let chunk: Vec<Op> = ops.by_ref().take(4096).collect();
            if chunk.is_empty() {
                break;
            }
            engine.apply(&chunk)?;
        }
        engine.apply(&[
            super::put_u64(keys::LOG_STAMP, meta.position),
            super::put_u64(keys::STORE_SEQ, meta.seq),
        ])?;
        engine.sync()?;
    }
    std::fs::rename(&partial, path).map_err(io(format!("renaming {}", partial.display())))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    tracing::info!(
        position = meta.position,
        entries = meta.entries,
        "restored the store from a snapshot"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::conformance::{snapshot_conformance_suite, SnapshotHarness};
    use super::*;

    struct DirHarness(tempfile::TempDir);

    impl SnapshotHarness for DirHarness {
        type Store = DirSnapshots;

        fn new() -> Option<Self> {
            Some(Self(tempfile::tempdir().expect("tempdir")))
        }

        fn open(&self) -> DirSnapshots {
            DirSnapshots::open(self.0.path()).expect("open")
        }

        fn interrupt_next_put(&self, position: u64) {
            // What a crash during a write leaves: a temporary file, part written.
            std::fs::write(
                self.0.path().join(format!("{position:020}.snapshot.0.tmp")),
                b"ARBSNAP1 partial",
            )
            .expect("write");
        }

        fn damage_newest(&self) {
            let mut files: Vec<_> = std::fs::read_dir(self.0.path())
                .expect("list")
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            let newest = files.last().expect("a snapshot");
            let mut bytes = std::fs::read(newest).expect("read");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(newest, bytes).expect("write");
        }
    }

    snapshot_conformance_suite!(DirHarness);

    #[test]
    fn only_its_own_temporary_files_are_cleared_and_names_must_match_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let other = dir.path().join("notes.tmp");
        std::fs::write(&other, b"someone else's").expect("write");
        let stale = dir.path().join(format!("{:020}.snapshot.3.tmp", 7));
        std::fs::write(&stale, b"ARBSNAP1").expect("write");
        let store = DirSnapshots::open(dir.path()).expect("open");
        assert!(other.exists() && !stale.exists());
        let at = SnapshotMeta {
            position: 9,
            seq: 1,
            entries: 0,
        };
        store
            .put(at, &mut std::iter::once(Ok((b"k".to_vec(), b"v".to_vec()))))
            .expect("put");
        // Renamed to another position, it no longer reads back.
        std::fs::rename(
            dir.path().join(format!("{:020}.snapshot", 9)),
            dir.path().join(format!("{:020}.snapshot", 12)),
        )
        .expect("rename");
        assert!(store.latest().expect("latest").is_none());
        assert!(other.exists());
    }
}
