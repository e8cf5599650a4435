//! Artifacts kept outside this node: in cluster mode every registered artifact is also stored,
//! replicated, in the cluster's object store ([`ArtifactReplica`]), so that an arbiter whose
//! disk is lost (or a new one) serves every version the log names.
//!
//! An artifact is stored there before its registration is logged, under a name made of the
//! version and its SHA-256 ([`object_name`]): a version the log holds always has its bytes in
//! the object store, and a name never stands for other bytes. Files here are a cache of it:
//! a version whose file is missing is fetched (and checked against its recorded digest) the
//! first time it is read. Objects of deleted or retired versions are removed after the
//! deletion is durable; objects a crash left without a version are removed when a writer
//! starts ([`Registry::reconcile_replica`]).
//!
//! Registrations put their artifact and commit one at a time, and deletions of objects take
//! the same lock, so a deletion never removes an object a registration of the same version and
//! bytes is about to commit.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::artifacts::FinishedUpload;
use super::types::{ModelMetadata, RegistryId, Sha256Digest};
use super::{Registry, RegistryError, Result};
use crate::storage::StorageError;

/// What an [`ArtifactReplica`] call returns: an error says what failed, for the client.
pub type ReplicaFuture<'a, T> =
    Pin<Box<dyn Future<Output = std::result::Result<T, String>> + Send + 'a>>;

/// The bytes of a stored object, as they arrive.
pub type ObjectReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// A replicated store of named objects (the cluster's JetStream object store).
pub trait ArtifactReplica: Send + Sync + std::fmt::Debug {
    /// Stores the file at `file` as `name`, replacing an object of that name; returns once
    /// the store holds it durably.
    fn put<'a>(&'a self, name: &'a str, file: &'a Path) -> ReplicaFuture<'a, ()>;
    /// The object `name`, or `None` when there is none.
    fn get<'a>(&'a self, name: &'a str) -> ReplicaFuture<'a, Option<ObjectReader>>;
    /// Removes the object `name` (fine when there is none).
    fn delete<'a>(&'a self, name: &'a str) -> ReplicaFuture<'a, ()>;
    /// The names of every object.
    fn names(&self) -> ReplicaFuture<'_, Vec<String>>;
}

/// The object that holds the artifact `digest` of version `id`.
pub fn object_name(id: &RegistryId, digest: &Sha256Digest) -> String {
    format!("{id}@{digest}")
}

/// The version and digest an [`object_name`] was made of.
fn parse_object_name(name: &str) -> Option<(RegistryId, Sha256Digest)> {
    let (id, digest) = name.rsplit_once('@')?;
    let id = RegistryId::try_from(id.to_string()).ok()?;
    let digest = Sha256Digest::parse("object name", digest).ok()?;
    Some((id, digest))
}

/// How long a failing object store call is retried (a NATS leader election takes seconds).
const RETRY_FOR: Duration = Duration::from_secs(20);
/// How long a fetch may wait for the next bytes of an object.
const READ_STALL: Duration = Duration::from_secs(30);

fn unavailable(what: String) -> RegistryError {
    RegistryError::Storage(StorageError::Replicated(what))
}

/// Runs `call` until it succeeds or [`RETRY_FOR`] has passed, then names `what` failed.
async fn retried<'a, T>(what: &str, mut call: impl FnMut() -> ReplicaFuture<'a, T>) -> Result<T> {
    let started = std::time::Instant::now();
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if started.elapsed() >= RETRY_FOR => {
                return Err(unavailable(format!(
                    "{what} in the cluster's object store: {e}"
                )))
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} in the cluster's object store failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The error for a copy in the object store that is not the version's artifact (`actual`:
/// what it is instead).
fn damaged_copy(metadata: &ModelMetadata, actual: String) -> RegistryError {
    tracing::error!(registry_id = %metadata.registry_id, expected = %metadata.model_checksum, %actual, "the object store's copy of an artifact fails its checksum; not installed");
    RegistryError::ChecksumMismatch {
        what: "artifact (the cluster's copy)",
        expected: metadata.model_checksum.to_string(),
        actual,
    }
}

impl Registry {
    fn replica(&self) -> Option<&dyn ArtifactReplica> {
        self.inner.replica.as_deref()
    }

    /// Stores a finished upload's bytes in the object store, for the version `id` about to be
    /// registered; a no-op outside cluster mode. The caller holds
    /// [`Registry::replica_lock`]'s guard until the registration has committed or failed.
    pub(super) async fn replicate_upload(
        &self,
        id: &RegistryId,
        upload: &FinishedUpload,
    ) -> Result<()> {
        let Some(replica) = self.replica() else {
            return Ok(());
        };
        let name = object_name(id, &upload.digest);
        let path = upload.path();
        retried(&format!("storing the artifact of {id}"), || {
            replica.put(&name, path)
        })
        .await
    }

    /// Serializes object-store puts with the commits they precede and with object deletions.
    pub(super) async fn replica_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.replica_ops.lock().await
    }

    /// Makes sure the file of `metadata`'s version is here, fetching it from the object store
    /// when it is not (a node whose disk was replaced): the bytes are checked against the
    /// recorded digest before the file is installed. Returns whether it fetched; outside
    /// cluster mode, or when the file is here, nothing happens.
    pub(super) async fn ensure_local(&self, metadata: &ModelMetadata) -> Result<bool> {
        let Some(replica) = self.replica() else {
            return Ok(false);
        };
        let id = &metadata.registry_id;
        if self.inner.artifacts.path(id)?.exists() {
            return Ok(false);
        }
        let _fetching = self.inner.fetching.lock().await;
        if self.inner.artifacts.path(id)?.exists() {
            return Ok(false);
        }
        let name = object_name(id, &metadata.model_checksum);
        let what = format!("fetching the artifact of {id}");
        let Some(mut reader) = retried(&what, || replica.get(&name)).await? else {
            return Err(RegistryError::ArtifactMissing {
                registry_id: id.to_string(),
            });
        };
        let mut upload = self
            .inner
            .artifacts
            .begin(metadata.artifact_size_bytes)
            .await?;
        let mut buf = vec![0u8; 1 << 17];
        loop {
            let n = tokio::time::timeout(READ_STALL, reader.read(&mut buf))
                .await
                .map_err(|_| unavailable(format!("{what}: no bytes for {READ_STALL:?}")))?
                .map_err(|e| unavailable(format!("{what}: {e}")))?;
            if n == 0 {
                break;
            }
            match upload.write(&buf[..n]).await {
                Ok(()) => {}
                Err(RegistryError::ArtifactTooLarge { limit }) => {
                    return Err(damaged_copy(metadata, format!("more than {limit} bytes")))
                }
                Err(e) => return Err(e),
            }
        }
        let finished = upload.finish().await?;
        if finished.digest != metadata.model_checksum {
            return Err(damaged_copy(metadata, finished.digest.to_string()));
        }
        let this = self.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || this.inner.artifacts.install(finished, &id))
            .await
            .map_err(|e| {
                RegistryError::io("installing a fetched artifact")(std::io::Error::other(e))
            })??;
        tracing::info!(registry_id = %metadata.registry_id, "fetched an artifact from the cluster's object store");
        Ok(true)
    }

    /// Fetches the artifact of every stored version whose file is not here (a node on a new
    /// disk), so that it serves them even when the object store is out of reach later.
    /// Failures are logged; a version is fetched again when it is read.
    pub async fn fetch_missing_artifacts(&self) -> usize {
        if self.replica().is_none() {
            return 0;
        }
        let stored: Vec<ModelMetadata> = match self
            .inner
            .storage
            .scan::<ModelMetadata>(crate::storage::keys::MODEL_PREFIX)
            .map(|entry| entry.map(|(_, metadata)| metadata))
            .collect()
        {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "listing versions to fetch their artifacts failed");
                return 0;
            }
        };
        let mut fetched = 0;
        for metadata in stored {
            match self.ensure_local(&metadata).await {
                Ok(true) => fetched += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(registry_id = %metadata.registry_id, error = %e, "artifact not fetched; fetched again when read")
                }
            }
        }
        fetched
    }

    /// Removes the objects no stored version names: of the versions `only` when given (after
    /// their deletion became durable), else of every version (when a writer starts, for
    /// objects a crash left between storing an artifact and logging its registration).
    pub async fn reconcile_replica(&self, only: Option<&[RegistryId]>) -> Result<usize> {
        let Some(replica) = self.replica() else {
            return Ok(0);
        };
        let _serial = self.replica_lock().await;
        let names = retried("listing artifacts", || replica.names()).await?;
        let mut removed = 0;
        for name in names {
            let Some((id, digest)) = parse_object_name(&name) else {
                tracing::warn!(object = %name, "an object store entry that names no artifact; left alone");
                continue;
            };
            if only.is_some_and(|ids| !ids.contains(&id)) {
                continue;
            }
            if self
                .load(&id)?
                .is_some_and(|stored| stored.model_checksum == digest)
            {
                continue;
            }
            retried(&format!("removing the artifact of {id}"), || {
                replica.delete(&name)
            })
            .await?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_hold_the_version_and_the_digest() {
        let id = RegistryId::try_from("strategy-a:1.2.3-rc.1".to_string()).unwrap();
        let digest = Sha256Digest::of(b"model bytes");
        let name = object_name(&id, &digest);
        assert_eq!(parse_object_name(&name), Some((id, digest)));
        assert_eq!(parse_object_name("no-digest:1.0.0"), None);
        assert_eq!(parse_object_name("m:1.0.0@not-hex"), None);
    }
}
