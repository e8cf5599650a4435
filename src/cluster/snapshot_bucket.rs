//! [`SnapshotBucket`]: snapshots of the store beside the stream, in a JetStream object store
//! (`ARBITER_<name>_snapshots`, file storage, as many replicas as the log), so that a node
//! without a store starts from the newest one and replays only the stream after it, and the
//! stream can be trimmed below it.
//!
//! Each snapshot is one object named `<position, 20 digits>.snapshot` holding the same bytes as
//! a snapshot file ([`storage::snapshot_store`](crate::storage::snapshot_store)), SHA-256 at the
//! end included. An object appears only once its description is stored, after all its chunks:
//! a put cut short leaves chunks no object names, never a partial snapshot.

use std::time::Duration;

use async_nats::jetstream::object_store::{DeleteErrorKind, ObjectStore};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;

use super::stream_log::{client_runtime, wait_on};
use super::ClusterOptions;
use crate::storage::engine::Entry;
use crate::storage::snapshot_store::{self, SnapshotMeta, SnapshotStore};
use crate::storage::{Result, StorageError};

const SUFFIX: &str = ".snapshot";

/// How long opening the bucket may take (JetStream answers within seconds once it has a
/// leader).
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster's snapshot bucket. Its calls block the calling thread (the store's snapshot and
/// restore paths are blocking); the NATS client runs on a runtime of its own.
pub struct SnapshotBucket {
    store: ObjectStore,
    bucket: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for SnapshotBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBucket")
            .field("bucket", &self.bucket)
            .finish()
    }
}

fn replicated(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Replicated(format!("{what}: {e}"))
}

/// The object name of the snapshot at `position`.
fn object_name(position: u64) -> String {
    format!("{position:020}{SUFFIX}")
}

impl SnapshotBucket {
    /// Opens the snapshot bucket of `options`'s cluster, creating it on first use. Blocking.
    pub fn open(options: &ClusterOptions) -> Result<Self> {
        let runtime = client_runtime("arbiter-snapshots")?;
        let options = options.clone();
        let bucket = options.snapshot_bucket();
        let name = bucket.clone();
        let opened = wait_on(&runtime, async move {
            let description = format!("snapshots of the store of arbiter cluster {}", options.name);
            super::open_object_store(&options, &name, description, OPEN_TIMEOUT).await
        });
        match opened {
            Ok(store) => Ok(SnapshotBucket {
                store,
                bucket,
                runtime: Some(runtime),
            }),
            Err(e) => {
                // Dropping a runtime blocks, which an async caller may not do.
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("present until drop")
    }

    /// The positions of the snapshots in the bucket, oldest first.
    fn positions(&self) -> Result<Vec<u64>> {
        let store = self.store.clone();
        let names = wait_on(self.runtime(), async move {
            let mut list = store.list().await.map_err(|e| e.to_string())?;
            let mut names = Vec::new();
            while let Some(info) = list.next().await {
                names.push(info.map_err(|e| e.to_string())?.name);
            }
            Ok::<_, String>(names)
        })
        .map_err(|e| replicated("listing snapshots", e))?;
        let mut positions: Vec<u64> = names
            .iter()
            .filter_map(|name| name.strip_suffix(SUFFIX)?.parse().ok())
            .collect();
        positions.sort_unstable();
        Ok(positions)
    }

    /// The snapshot at `position`: the inner `Err` says why it does not read back (damaged),
    /// the outer one that the bucket could not be read (it is not skipped for an older one:
    /// the stream may have been trimmed for this one).
    #[allow(clippy::type_complexity)]
    fn read(
        &self,
        position: u64,
    ) -> Result<std::result::Result<(SnapshotMeta, Vec<Entry>), String>> {
        let mut attempts = 0;
        let bytes = loop {
            let store = self.store.clone();
            let fetched = wait_on(self.runtime(), async move {
                let object = store
                    .get(object_name(position))
                    .await
                    .map_err(|e| e.to_string())?;
                read_whole(object).await
            });
            match fetched {
                Ok(bytes) => break bytes,
                Err(e) if attempts < 5 => {
                    attempts += 1;
                    tracing::warn!(bucket = %self.bucket, position, error = %e, "reading a snapshot failed; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(replicated(
                        &format!("reading the snapshot at {position}"),
                        e,
                    ))
                }
            }
        };
        Ok(snapshot_store::decode(position, &bytes))
    }

    fn delete(&self, position: u64) -> Result<()> {
        let store = self.store.clone();
        wait_on(self.runtime(), async move {
            match store.delete(object_name(position)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == DeleteErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| replicated(&format!("removing snapshot {position}"), e))
    }
}

impl SnapshotStore for SnapshotBucket {
    fn put(
        &self,
        at: SnapshotMeta,
        entries: &mut dyn Iterator<Item = Result<Entry>>,
    ) -> Result<SnapshotMeta> {
        let mut bytes = Vec::new();
        let count = snapshot_store::encode(&at, entries, &mut bytes)?;
        let store = self.store.clone();
        let size = bytes.len();
        wait_on(self.runtime(), async move {
            store
                .put(object_name(at.position).as_str(), &mut bytes.as_slice())
                .await
        })
        .map_err(|e| {
            replicated(
                &format!(
                    "storing the snapshot at position {} ({size} bytes)",
                    at.position
                ),
                e,
            )
        })?;
        Ok(SnapshotMeta {
            entries: count,
            ..at
        })
    }

    fn latest(&self) -> Result<Option<(SnapshotMeta, Vec<Entry>)>> {
        for position in self.positions()?.into_iter().rev() {
            match self.read(position)? {
                Ok(snapshot) => return Ok(Some(snapshot)),
                Err(why) => {
                    tracing::warn!(bucket = %self.bucket, position, %why, "skipping a snapshot that does not read back")
                }
            }
        }
        Ok(None)
    }

    fn retain_newest(&self, keep: usize) -> Result<()> {
        // Only snapshots that read back count as kept: a damaged newer one never costs the
        // newest good one.
        let positions = self.positions()?;
        let mut good = 0;
        let mut oldest_kept = positions.len();
        if keep > 0 {
            for (i, &position) in positions.iter().enumerate().rev() {
                if self.read(position)?.is_ok() {
                    good += 1;
                    oldest_kept = i;
                    if good == keep {
                        break;
                    }
                }
            }
        }
        for &position in &positions[..oldest_kept] {
            self.delete(position)?;
        }
        Ok(())
    }
}

impl Drop for SnapshotBucket {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Every byte of `object`. Read in chunks: the object store's reader can hand over bytes
/// together with an error (a copy removed while it is read), which `read_to_end` does not
/// expect.
async fn read_whole(
    mut object: impl tokio::io::AsyncRead + Unpin,
) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match object.read(&mut chunk).await.map_err(|e| e.to_string())? {
            0 => return Ok(bytes),
            n => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::nats_cluster::NatsCluster;
    use crate::storage::snapshot_store::conformance::{
        snapshot_conformance_suite, SnapshotHarness,
    };

    /// A bucket on a single JetStream server of its own (replication is JetStream's business;
    /// what is checked here is what a restore relies on).
    struct BucketHarness {
        options: ClusterOptions,
        _server: NatsCluster,
    }

    impl SnapshotHarness for BucketHarness {
        type Store = SnapshotBucket;

        fn new() -> Option<Self> {
            let server = NatsCluster::start(1)?;
            let mut options = ClusterOptions::new(vec![server.url(0)], "conformance");
            options.replicas = 1;
            Some(BucketHarness {
                options,
                _server: server,
            })
        }

        fn open(&self) -> SnapshotBucket {
            SnapshotBucket::open(&self.options).expect("open the bucket")
        }

        /// What a crash during a put leaves: chunks that no object names.
        fn interrupt_next_put(&self, position: u64) {
            let bucket = self.open();
            let subject = format!("$O.{}.C.interrupted{position}", bucket.bucket);
            let store = bucket.store.clone();
            let client = async_nats::connect(self.options.servers[0].clone());
            wait_on(bucket.runtime(), async move {
                let context = async_nats::jetstream::new(client.await.expect("connect"));
                context
                    .publish(subject, bytes::Bytes::from_static(b"ARBSNAP1 partial"))
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
                drop(store);
            });
        }

        fn damage_newest(&self) {
            let bucket = self.open();
            let newest = *bucket
                .positions()
                .expect("list")
                .last()
                .expect("a snapshot");
            let store = bucket.store.clone();
            wait_on(bucket.runtime(), async move {
                let name = object_name(newest);
                let mut bytes = Vec::new();
                store
                    .get(name.as_str())
                    .await
                    .expect("get")
                    .read_to_end(&mut bytes)
                    .await
                    .expect("read");
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x40;
                store
                    .put(name.as_str(), &mut bytes.as_slice())
                    .await
                    .expect("put");
            });
        }
    }

    snapshot_conformance_suite!(BucketHarness);
}
