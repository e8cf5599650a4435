//! The one-time conversion of a data directory whose table lives in sled (`<data-dir>/db/`, builds
//! before the move to redb) into `<data-dir>/store.redb`.
//!
//! Every step leaves a directory that the next start finishes converting:
//!
//! 1. copy every entry from sled into `store.redb.converting`, in batches, and commit durably;
//! 2. read both back and compare them entry by entry;
//! 3. rename the copy to `store.redb` and fsync the directory: from here on the store is used;
//! 4. rename `db/` to `db.sled-before-conversion` (kept for a rollback; see docs/operations.md)
//!    and fsync the directory.
//!
//! A start that finds `store.redb` and `db/` together resumes at step 4; one that finds only
//! `db/` (perhaps with a partial copy, which it deletes) starts at step 1.

use std::path::Path;

use super::engine::{Engine, Op};
use super::redb_engine::RedbEngine;
use super::{sync_dir, Result, StorageError, STORE_FILE};

/// The sled directory of older builds.
const SLED_DIR: &str = "db";
/// Where the sled directory is kept after the conversion.
pub(super) const SLED_KEPT: &str = "db.sled-before-conversion";
const CONVERTING: &str = "store.redb.converting";
/// Entries per write transaction of the copy.
const BATCH: usize = 4096;
/// Written into a verified copy: how many entries it took over from sled.
pub(super) const CONVERTED: &[u8] = b"meta/converted_from_sled";

fn refuse(why: String) -> StorageError {
    StorageError::Io {
        context: "converting from sled".into(),
        source: std::io::Error::other(why),
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

fn sled_err(context: &'static str) -> impl FnOnce(sled::Error) -> StorageError {
    move |e| StorageError::Io {
        context: format!("converting from sled: {context}"),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Converts `data_dir` if it still holds a sled table; does nothing otherwise.
pub(super) fn from_sled(data_dir: &Path, cache_bytes: usize) -> Result<()> {
    let sled_dir = data_dir.join(SLED_DIR);
    if !sled_dir.join("conf").exists() {
        return Ok(());
    }
    let kept = data_dir.join(SLED_KEPT);
    if kept.exists() {
        return Err(refuse(format!(
            "both {} and {} exist: which one holds the data is not clear; move one of them out \
             of the data directory",
            sled_dir.display(),
            kept.display()
        )));
    }
    let store = data_dir.join(STORE_FILE);
    if store.exists() {
        // A start that stopped between steps 3 and 4, or a store that has nothing to do with
        // this sled directory (restored beside it): only the first may go on.
        let converted = RedbEngine::open(&store, cache_bytes)?.get(CONVERTED)?;
        if converted.is_none() {
            return Err(refuse(format!(
                "{} exists beside a sled database {} that it was not converted from; move one \
                 of them out of the data directory",
                store.display(),
                sled_dir.display()
            )));
        }
    } else {
        copy(data_dir, cache_bytes)?;
    }
    std::fs::rename(&sled_dir, &kept).map_err(io(format!(
        "renaming {} to {}",
        sled_dir.display(),
        kept.display()
    )))?;
    sync_dir(data_dir)?;
    tracing::info!(
        kept = %kept.display(),
        "conversion from sled complete; the old database is kept for a rollback and can be deleted"
    );
    Ok(())
}

/// Steps 1 to 3.
fn copy(data_dir: &Path, cache_bytes: usize) -> Result<()> {
    let sled_dir = data_dir.join(SLED_DIR);
    let converting = data_dir.join(CONVERTING);
    if converting.exists() {
        std::fs::remove_file(&converting)
            .map_err(io(format!("removing {}", converting.display())))?;
    }
    // sled recreates a missing blobs directory only when it writes one.
    std::fs::create_dir_all(sled_dir.join("blobs"))
        .map_err(io(format!("opening {}", sled_dir.display())))?;
    tracing::info!(from = %sled_dir.display(), "converting the sled database to redb");
    let sled = sled::Config::new()
        .path(&sled_dir)
        .open()
        .map_err(sled_err("opening the sled database"))?;
    let target = RedbEngine::open(&converting, cache_bytes)?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut copied = 0usize;
    for entry in sled.iter() {
        let (k, v) = entry.map_err(sled_err("reading"))?;
        batch.push(Op::Put(k.to_vec(), v.to_vec()));
        if batch.len() == BATCH {
            target.apply(&batch)?;
            copied += batch.len();
            batch.clear();
        }
    }
    target.apply(&batch)?;
    copied += batch.len();
    target.sync()?;
    // Step 2: the copy holds exactly what sled holds.
    let mut theirs = sled.iter();
    let mut ours = target.scan(b"", false)?;
    loop {
        match (theirs.next(), ours.next()) {
            (None, None) => break,
            (Some(a), Some(b)) => {
                let (ka, va) = a.map_err(sled_err("reading"))?;
                let (kb, vb) = b?;
                if ka.as_ref() != kb.as_slice() || va.as_ref() != vb.as_slice() {
                    return Err(mismatch(&kb));
                }
            }
            (Some(_), None) | (None, Some(_)) => return Err(mismatch(b"<end>")),
        }
    }
    drop(ours);
    target.apply(&[Op::Put(CONVERTED.to_vec(), copied.to_string().into_bytes())])?;
    target.sync()?;
    drop(target);
    drop(sled);
    let store = data_dir.join(STORE_FILE);
    std::fs::rename(&converting, &store).map_err(io(format!(
        "renaming {} to {}",
        converting.display(),
        store.display()
    )))?;
    sync_dir(data_dir)?;
    tracing::info!(entries = copied, "sled database copied and verified");
    Ok(())
}

fn mismatch(key: &[u8]) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why: "the converted copy differs from the sled database; nothing was changed".into(),
    }
}
