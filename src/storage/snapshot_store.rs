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
use super::log::{Log, LogEntry};
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
    /// Keeps `entries` (every key and value of the store at `position`, in key order) as the
    /// snapshot at `position`. Atomic: after a crash the snapshot is whole or absent. Durable
    /// when it returns.
    fn put(
        &self,
        position: u64,
        seq: u64,
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
/// everything before it. It is written under a temporary name, fsynced, renamed and its
/// directory fsynced.
#[derive(Debug)]
pub struct DirSnapshots {
    dir: PathBuf,
}

const MAGIC: &[u8; 8] = b"ARBSNAP1";
const SUFFIX: &str = ".snapshot";

fn io(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

impl DirSnapshots {
    /// The snapshots in `dir`, created if missing.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The snapshot files, oldest first, with their positions; leftovers of interrupted
    /// writes are removed.
    fn files(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut files = Vec::new();
        let listing =
            std::fs::read_dir(&self.dir).map_err(io(format!("listing {}", self.dir.display())))?;
        for entry in listing {
            let path = entry
                .map_err(io(format!("listing {}", self.dir.display())))?
                .path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                // Never renamed: the write did not finish.
                let _ = std::fs::remove_file(&path);
            } else if let Some(position) = name
                .strip_suffix(SUFFIX)
                .and_then(|stem| stem.parse::<u64>().ok())
            {
                files.push((position, path));
            }
        }
        files.sort();
        Ok(files)
    }

    fn read(path: &Path) -> std::result::Result<(SnapshotMeta, Vec<Entry>), String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        if bytes.len() < MAGIC.len() + 24 + 32 || &bytes[..MAGIC.len()] != MAGIC {
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
        let mut r = ByteReader::new(&body[MAGIC.len() + 24..]);
        let mut entries = Vec::with_capacity(meta.entries.min(1 << 20) as usize);
        for _ in 0..meta.entries {
            let key = r.bytes("key")?.to_vec();
            let value = r.bytes("value")?.to_vec();
            entries.push((key, value));
        }
        r.finish()?;
        Ok((meta, entries))
    }
}

/// Writes the file of a snapshot to `tmp` and syncs it; returns its entry count.
fn write_snapshot(
    tmp: &Path,
    position: u64,
    seq: u64,
    entries: &mut dyn Iterator<Item = Result<Entry>>,
) -> Result<u64> {
    let context = || format!("writing snapshot {}", tmp.display());
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
    let mut header = Vec::with_capacity(MAGIC.len() + 24);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&position.to_le_bytes());
    header.extend_from_slice(&seq.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    let mut hash = Sha256::new();
    hash.update(&header);
    hash.update(&body);
    let file = std::fs::File::create(tmp).map_err(io(context()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&header)
        .and_then(|()| out.write_all(&body))
        .and_then(|()| out.write_all(&hash.finalize()))
        .map_err(io(context()))?;
    let file = out
        .into_inner()
        .map_err(|e| io(context())(e.into_error()))?;
    file.sync_all().map_err(io(context()))?;
    Ok(count)
}

impl SnapshotStore for DirSnapshots {
    fn put(
        &self,
        position: u64,
        seq: u64,
        entries: &mut dyn Iterator<Item = Result<Entry>>,
    ) -> Result<SnapshotMeta> {
        let path = self.dir.join(format!("{position:020}{SUFFIX}"));
        let tmp = path.with_extension("snapshot.tmp");
        let written = write_snapshot(&tmp, position, seq, entries);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let count = written?;
        std::fs::rename(&tmp, &path).map_err(io(format!("renaming {}", tmp.display())))?;
        sync_dir(&self.dir)?;
        Ok(SnapshotMeta {
            position,
            seq,
            entries: count,
        })
    }

    fn latest(&self) -> Result<Option<(SnapshotMeta, Vec<Entry>)>> {
        for (_, path) in self.files()?.into_iter().rev() {
            match Self::read(&path) {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(why) => {
                    tracing::warn!(path = %path.display(), %why, "skipping a snapshot that does not read back")
                }
            }
        }
        Ok(None)
    }

    fn retain_newest(&self, keep: usize) -> Result<()> {
        let files = self.files()?;
        let excess = files.len().saturating_sub(keep);
        for (_, path) in &files[..excess] {
            std::fs::remove_file(path).map_err(io(format!("removing {}", path.display())))?;
        }
        if excess > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Makes the store file `path` from the newest of `snapshots`, if there is one, after checking
/// that `log` (whose entries are `entries`) still holds every entry after its position. The
/// file appears only once whole and synced.
pub(super) fn restore(
    path: &Path,
    snapshots: &dyn SnapshotStore,
    log: &dyn Log,
    entries: &[LogEntry],
    cache_bytes: usize,
) -> Result<()> {
    let Some((meta, snapshot)) = snapshots.latest()? else {
        return Ok(());
    };
    let reaches_back = match entries.first() {
        Some(first) => first.position <= meta.position + 1,
        None => log.next_position() <= meta.position + 1,
    };
    if !reaches_back {
        return Err(StorageError::Corrupt {
            key: "snapshot".into(),
            why: format!(
                "the newest snapshot holds the store at log position {}, but the log no longer \
                 holds the entries after it (it begins at {}); restoring it would lose them",
                meta.position,
                entries.first().map_or(log.next_position(), |e| e.position)
            ),
        });
    }
    let partial = path.with_extension("redb.restoring");
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(|source| StorageError::Io {
            context: format!("removing {}", partial.display()),
            source,
        })?;
    }
    {
        let engine = redb_engine::RedbEngine::open(&partial, cache_bytes)?;
        for chunk in snapshot.chunks(4096) {
            let ops: Vec<Op> = chunk
                .iter()
                .map(|(key, value)| Op::Put(key.clone(), value.clone()))
                .collect();
            engine.apply(&ops)?;
        }
        engine.apply(&[
            Op::Put(
                keys::LOG_STAMP.to_vec(),
                meta.position.to_le_bytes().to_vec(),
            ),
            Op::Put(keys::STORE_SEQ.to_vec(), meta.seq.to_le_bytes().to_vec()),
        ])?;
        engine.sync()?;
    }
    std::fs::rename(&partial, path).map_err(|source| StorageError::Io {
        context: format!("renaming {}", partial.display()),
        source,
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    tracing::info!(
        position = meta.position,
        entries = meta.entries,
        "restored the store from a snapshot"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::conformance::{snapshot_conformance_suite, SnapshotHarness};
    use super::*;

    struct DirHarness(tempfile::TempDir);

    impl SnapshotHarness for DirHarness {
        type Store = DirSnapshots;

        fn new() -> Self {
            Self(tempfile::tempdir().expect("tempdir"))
        }

        fn open(&self) -> DirSnapshots {
            DirSnapshots::open(self.0.path()).expect("open")
        }

        fn interrupt_next_put(&self, position: u64) {
            // What a crash during a write leaves: a temporary file, part written.
            std::fs::write(
                self.0.path().join(format!("{position:020}.snapshot.tmp")),
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
}
