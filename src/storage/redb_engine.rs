//! The embedded engine: one redb file, `<data-dir>/store.redb`, one table of byte keys.
//!
//! redb is a copy-on-write B-tree whose commits are checksummed; after a crash it opens on the
//! newest commit whose checksums hold. A batch is a write transaction committed with
//! `Durability::None`: visible to readers at once, durable only with the next commit of
//! `Durability::Immediate`, which [`RedbEngine::sync`] makes (write the dirty pages, flip the
//! commit slot, `fdatasync`). redb creates no other files, so the directory entry of its one file
//! needs one directory fsync, at creation.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Durability, ReadableDatabase, TableDefinition};

use super::engine::{prefix_end, Engine, Entries, Op};
use super::{Result, StorageError};

/// The one table.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// See the module documentation.
#[derive(Debug)]
pub(super) struct RedbEngine {
    db: redb::Database,
    path: PathBuf,
    /// The first I/O error of a write: after one, redb refuses every write until the database
    /// is opened again (the process restarts), and that refusal names this cause.
    first_failure: Mutex<Option<Arc<std::io::Error>>>,
}

fn err<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> StorageError {
    move |e| StorageError::Store {
        what,
        source: e.into(),
    }
}

impl RedbEngine {
    /// Opens (or creates) the database file at `path` with a page cache of `cache_bytes`.
    pub(super) fn open(path: &Path, cache_bytes: usize) -> Result<Self> {
        let db = redb::Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Locked {
                    path: path.to_path_buf(),
                },
                other => err("opening the database")(other),
            })?;
        // The table exists from here on, so readers never meet a missing table.
        let txn = db.begin_write().map_err(err("creating the table"))?;
        txn.open_table(KV).map_err(err("creating the table"))?;
        txn.commit().map_err(err("creating the table"))?;
        // Every open, not only the one that created the file: a crash right after the creation
        // would otherwise leave a directory entry that no later open makes durable.
        super::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            first_failure: Mutex::new(None),
        })
    }

    /// Maps an error, remembering the first I/O failure and naming it when redb refuses later
    /// reads and writes because of it (after an I/O error redb answers only from its cache).
    fn write_err<E: Into<redb::Error>>(
        &self,
        what: &'static str,
    ) -> impl FnOnce(E) -> StorageError + '_ {
        move |e| {
            let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
            match e.into() {
                redb::Error::Io(io) => {
                    if first.is_none() {
                        *first = Some(Arc::new(std::io::Error::new(io.kind(), io.to_string())));
                    }
                    StorageError::Store {
                        what,
                        source: redb::Error::Io(io),
                    }
                }
                redb::Error::PreviousIo => StorageError::Failed {
                    part: "store",
                    source: first.clone().unwrap_or_else(|| {
                        Arc::new(std::io::Error::other("an earlier write failed"))
                    }),
                },
                other => StorageError::Store {
                    what,
                    source: other,
                },
            }
        }
    }

    fn table(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>> {
        let txn = self.db.begin_read().map_err(self.write_err("reading"))?;
        txn.open_table(KV).map_err(self.write_err("reading"))
    }
}

impl Engine for RedbEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .table()?
            .get(key)
            .map_err(self.write_err("reading"))?
            .map(|v| v.value().to_vec()))
    }

    fn scan(&self, prefix: &[u8], reverse: bool) -> Result<Entries<'_>> {
        let end = prefix_end(prefix);
        let upper = match &end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        let range = self
            .table()?
            .range::<&[u8]>((Bound::Included(prefix), upper))
            .map_err(self.write_err("scanning"))?;
        let entry = move |item: Result<_, redb::StorageError>| {
            let (k, v): (redb::AccessGuard<&[u8]>, redb::AccessGuard<&[u8]>) =
                item.map_err(self.write_err("scanning"))?;
            Ok((k.value().to_vec(), v.value().to_vec()))
        };
        Ok(if reverse {
            Box::new(range.rev().map(entry))
        } else {
            Box::new(range.map(entry))
        })
    }

    fn apply(&self, ops: &[Op]) -> Result<Vec<Op>> {
        let mut txn = self.db.begin_write().map_err(self.write_err("writing"))?;
        txn.set_durability(Durability::None)
            .map_err(self.write_err("writing"))?;
        let mut undo = Vec::with_capacity(ops.len());
        {
            let mut table = txn.open_table(KV).map_err(self.write_err("writing"))?;
            for op in ops {
                let (key, old) = match op {
                    Op::Put(k, v) => (
                        k,
                        table
                            .insert(k.as_slice(), v.as_slice())
                            .map_err(self.write_err("writing"))?
                            .map(|old| old.value().to_vec()),
                    ),
                    Op::Remove(k) => (
                        k,
                        table
                            .remove(k.as_slice())
                            .map_err(self.write_err("writing"))?
                            .map(|old| old.value().to_vec()),
                    ),
                };
                undo.push(match old {
                    Some(value) => Op::Put(key.clone(), value),
                    None => Op::Remove(key.clone()),
                });
            }
        }
        txn.commit().map_err(self.write_err("writing"))?;
        // Later ops of the batch may touch a key an earlier one did: undo newest first.
        undo.reverse();
        Ok(undo)
    }

    fn sync(&self) -> Result<()> {
        // An empty commit of the default durability, Immediate, writes out and fsyncs every
        // non-durable commit before it.
        let txn = self.db.begin_write().map_err(self.write_err("syncing"))?;
        txn.commit().map_err(self.write_err("syncing"))
    }

    fn size_on_disk(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|source| StorageError::Io {
                context: format!("reading the size of {}", self.path.display()),
                source,
            })
    }
}
