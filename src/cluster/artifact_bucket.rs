//! [`ArtifactBucket`]: the cluster's model artifacts, in a JetStream object store
//! (`ARBITER_<name>_artifacts`, file storage, as many replicas as the log). The object store
//! splits each artifact into chunks, publishes them one after another and acknowledges the
//! object once its description is stored, so with `sync_interval: always` a stored artifact
//! is on a quorum's disks. It checks the SHA-256 of what it reads back; the registry checks
//! the recorded one too.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::object_store::{DeleteErrorKind, GetErrorKind, ObjectStore};
use tokio_stream::StreamExt;

use super::ClusterOptions;
use crate::registry::replica::{ArtifactReplica, ObjectReader, ReplicaFuture};
use crate::storage::StorageError;

/// The cluster's artifact bucket.
#[derive(Clone)]
pub struct ArtifactBucket {
    store: ObjectStore,
    bucket: String,
}

impl std::fmt::Debug for ArtifactBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactBucket")
            .field("bucket", &self.bucket)
            .finish()
    }
}

/// How long opening the bucket may take (JetStream answers within seconds once it has a
/// leader).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

impl ArtifactBucket {
    /// Opens the artifact bucket of `options`'s cluster, creating it on first use.
    pub async fn open(options: &ClusterOptions) -> Result<Self, StorageError> {
        let bucket = options.artifact_bucket();
        let description = format!("model artifacts of arbiter cluster {}", options.name);
        let store = super::open_object_store(options, &bucket, description, OPEN_TIMEOUT).await?;
        Ok(ArtifactBucket { store, bucket })
    }
}

impl ArtifactReplica for ArtifactBucket {
    fn put<'a>(&'a self, name: &'a str, file: &'a Path) -> ReplicaFuture<'a, ()> {
        Box::pin(async move {
            let mut file = tokio::fs::File::open(file)
                .await
                .map_err(|e| format!("opening {}: {e}", file.display()))?;
            self.store
                .put(name, &mut file)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> ReplicaFuture<'a, Option<ObjectReader>> {
        Box::pin(async move {
            match self.store.get(name).await {
                Ok(object) => Ok(Some(Box::new(object) as ObjectReader)),
                Err(e) if e.kind() == GetErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> ReplicaFuture<'a, ()> {
        Box::pin(async move {
            match self.store.delete(name).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == DeleteErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn names(&self) -> ReplicaFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut list = self.store.list().await.map_err(|e| e.to_string())?;
            let mut names = Vec::new();
            while let Some(info) = list.next().await {
                names.push(info.map_err(|e| e.to_string())?.name);
            }
            Ok(names)
        })
    }
}
