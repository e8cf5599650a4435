//! Cluster mode's snapshots beside the stream: every interval the writer stores a snapshot of
//! its store in the cluster's snapshot bucket, then trims the stream below what that snapshot
//! holds, so that the stream stays bounded and a node without a store starts from the
//! snapshot instead of the whole history.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::cluster::{SnapshotBucket, StreamLog};
use crate::storage::{Log, SnapshotStore, Storage, StorageError};

/// Snapshots kept in the bucket (the newest that reads back serves a restore; the one before
/// covers a damaged newest).
const KEPT: usize = 2;

/// Takes a snapshot every `every` while the store has changed since the last one, until
/// `stopped` or this arbiter is `no_longer_writer`. A node that opens while a stale writer
/// trims anyway refuses to start rather than miss entries (see `Storage::open_on_log`).
pub(super) async fn keep_snapshots(
    storage: Weak<Storage>,
    log: Arc<StreamLog>,
    bucket: Arc<SnapshotBucket>,
    every: Duration,
    mut no_longer_writer: tokio::sync::watch::Receiver<Option<String>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut snapshotted_through = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|&stop| stop) => return,
            // Another arbiter writes (or is about to): only the writer trims the stream.
            _ = no_longer_writer.wait_for(Option::is_some) => return,
        }
        let Some(storage) = storage.upgrade() else {
            return;
        };
        if snapshotted_through == Some(storage.write_mark()) {
            continue;
        }
        let (log, bucket) = (log.clone(), bucket.clone());
        let round = tokio::task::spawn_blocking(move || snapshot_and_trim(&storage, &log, &bucket));
        match round.await {
            Ok(Ok((position, first))) => {
                snapshotted_through = Some(position);
                tracing::debug!(
                    position,
                    stream_from = first,
                    "stored a snapshot beside the stream"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "storing a snapshot beside the stream failed; the stream is not trimmed until one succeeds")
            }
            Err(e) => tracing::warn!(error = %e, "the snapshot round did not finish"),
        }
    }
}

/// Stores a snapshot and trims the stream below it; returns the snapshot's position and the
/// stream's new first position. Blocking.
fn snapshot_and_trim(
    storage: &Storage,
    log: &StreamLog,
    bucket: &SnapshotBucket,
) -> Result<(u64, u64), StorageError> {
    // Read first: every entry below it is in the store, so in the snapshot taken after.
    let folded = log.folded_below();
    let meta = storage.put_snapshot(bucket)?;
    if let Some(why) = log.failure() {
        return Err(StorageError::Replicated(format!(
            "not trimming the stream: {why}"
        )));
    }
    // A store entry at the snapshot's position is in it; one after it is not.
    let first = log.purge_before(folded.min(meta.position + 1))?;
    bucket.retain_newest(KEPT)?;
    Ok((meta.position, first))
}
