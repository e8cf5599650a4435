//! Registration: stream an artifact into a temporary file, then commit file, policy, metadata,
//! retention and audit events together.

use crate::time;

use super::artifacts::{FinishedUpload, Upload};
use super::command::{self, Command, Register};
use super::types::*;
use super::{Registry, RegistryError, Result};

/// A registration in progress: the header is validated and the artifact is being received.
/// Dropping it (for example because the client went away) leaves nothing behind.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    model: NewModel,
    upload: Upload,
    /// Held until the registration ends, so uploads in progress stay within the limit.
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// When the upload began, for its average rate.
    started: std::time::Instant,
    /// Bytes received so far.
    received: u64,
}

impl Registry {
    /// Starts registering `model`. Fails early when the version already exists, or when as
    /// many uploads as allowed are in progress.
    pub async fn begin_registration(&self, model: NewModel) -> Result<Registration> {
        if self.load(&model.registry_id)?.is_some() {
            return Err(RegistryError::AlreadyExists {
                registry_id: model.registry_id.to_string(),
            });
        }
        let permit = self
            .inner
            .uploads
            .clone()
            .try_acquire_owned()
            .map_err(|_| RegistryError::TooManyUploads {
                limit: self.inner.config.max_concurrent_uploads,
            })?;
        let upload = self
            .inner
            .artifacts
            .begin(self.inner.config.max_artifact_bytes)
            .await?;
        Ok(Registration {
            registry: self.clone(),
            model,
            upload,
            _permit: permit,
            started: std::time::Instant::now(),
            received: 0,
        })
    }
}

impl Registration {
    /// Appends a chunk of the artifact. Once the upload has run for the idle timeout it must
    /// average the configured minimum rate.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.received += chunk.len() as u64;
        let config = &self.registry.inner.config;
        let elapsed = self.started.elapsed();
        if elapsed > config.upload_idle_timeout {
            let rate = (self.received as f64 / elapsed.as_secs_f64()) as u64;
            if rate < config.upload_min_bytes_per_sec {
                return Err(RegistryError::UploadTooSlow {
                    rate,
                    min: config.upload_min_bytes_per_sec,
                });
            }
        }
        self.upload.write(chunk).await
    }

    /// Checks the checksum and commits the version durably.
    pub async fn commit(self) -> Result<ModelView> {
        let Registration {
            registry,
            model,
            upload,
            ..
        } = self;
        let finished = upload.finish().await?;
        if let Some(expected) = model.expected_sha256 {
            if expected != finished.digest {
                tracing::warn!(
                    registry_id = %model.registry_id,
                    %expected,
                    actual = %finished.digest,
                    "upload refused: its SHA-256 is not the expected one"
                );
                return Err(RegistryError::ChecksumMismatch {
                    what: "artifact",
                    expected: expected.to_string(),
                    actual: finished.digest.to_string(),
                });
            }
        }
        let policy = match &model.policy_config {
            // serde_json's map is ordered by key, so this is a canonical encoding.
            Some(policy) => Some(serde_json::to_string(policy).map_err(|e| {
                RegistryError::invalid("policy_config", format!("cannot be encoded: {e}"))
            })?),
            None => None,
        };
        if let Some(signature) = &model.signature {
            let message = super::signing::signed_message(
                &model.registry_id,
                &finished.digest,
                policy
                    .as_deref()
                    .map(|p| Sha256Digest::of(p.as_bytes()))
                    .as_ref(),
            );
            registry
                .inner
                .config
                .trusted_signers
                .verify(signature, &message)
                .map_err(|e| RegistryError::invalid("signature", e.to_string()))?;
        }
        // Cluster mode: the bytes are in the object store before the log names them.
        let replicated = match registry.inner.replica {
            Some(_) => {
                let serial = registry.replica_lock().await;
                if registry.load(&model.registry_id)?.is_some() {
                    return Err(RegistryError::AlreadyExists {
                        registry_id: model.registry_id.to_string(),
                    });
                }
                registry
                    .replicate_upload(&model.registry_id, &finished)
                    .await?;
                Some((serial, model.registry_id.clone()))
            }
            None => None,
        };
        let this = registry.clone();
        let committed =
            tokio::task::spawn_blocking(move || this.commit_registration(model, finished, policy))
                .await
                .map_err(|e| RegistryError::io("committing registration")(std::io::Error::other(e)))
                .and_then(|committed| committed);
        let (view, retired) = match (committed, replicated) {
            (Ok(committed), _) => committed,
            (Err(e), Some((serial, id))) => {
                drop(serial);
                // Nothing names the object: take it back (else a writer's start does).
                if let Err(cleanup) = registry.reconcile_replica(Some(&[id])).await {
                    tracing::warn!(error = %cleanup, "an unregistered artifact stays in the object store until a writer starts");
                }
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        registry.inner.storage.flush().await?;
        registry.remove_files(retired).await;
        Ok(view)
    }
}

impl Registry {
    /// The check-then-write part of a registration. Blocking.
    fn commit_registration(
        &self,
        model: NewModel,
        upload: FinishedUpload,
        policy: Option<String>,
    ) -> Result<(ModelView, Vec<RegistryId>)> {
        let _guard = self.inner.write_lock.lock();
        let id = model.registry_id.clone();
        // Checked before the file is installed, which would replace the existing version's.
        if self.load(&id)?.is_some() {
            return Err(RegistryError::AlreadyExists {
                registry_id: id.to_string(),
            });
        }
        let metadata = ModelMetadata {
            registry_id: id.clone(),
            name: model.name,
            model_type: model.model_type,
            status: ModelStatus::Development,
            created_at: time::now(),
            created_by: model.created_by,
            description: model.description,
            framework: model.framework,
            input_features: model.input_features,
            output_schema: model.output_schema,
            figures: model.figures,
            resource_requirements: model.resource_requirements,
            latency_requirements_ms: model.latency_requirements_ms,
            approval_status: ApprovalStatus::Pending,
            approved_by: String::new(),
            approved_at: None,
            model_checksum: upload.digest,
            policy_checksum: policy.as_deref().map(|p| Sha256Digest::of(p.as_bytes())),
            artifact_size_bytes: upload.size,
            feature_spec: model.feature_spec,
            signature: model.signature,
        };
        let change = Register {
            metadata,
            policy,
            max_versions_per_model: self.inner.config.max_versions_per_model,
        };
        let logged = Command::Register(Box::new(change.clone()));
        self.inner.artifacts.install(upload, &id)?;
        let registered = self.execute(&logged, change.metadata.created_at, |store, batch| {
            command::register(store, &change, batch)
        });
        match registered {
            Ok((metadata, retired)) => {
                let view = ModelView {
                    metadata,
                    policy_config: change
                        .policy
                        .as_deref()
                        .and_then(|p| serde_json::from_str(p).ok()),
                };
                Ok((view, retired))
            }
            Err(e) => {
                // Nothing refers to the file yet; take it back so the failure leaves no trace.
                let _ = self.inner.artifacts.remove(&id);
                Err(e)
            }
        }
    }

    /// Deletes the files of versions whose records are gone (already durable). A failure only
    /// leaves an orphan that the next start-up sweeps.
    pub(super) async fn remove_files(&self, ids: Vec<RegistryId>) {
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.reconcile_replica(Some(&ids)).await {
            tracing::warn!(error = %e, "artifacts of removed versions stay in the object store until a writer starts");
        }
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in ids {
                if let Err(e) = this.inner.artifacts.remove(&id) {
                    tracing::warn!(registry_id = %id, error = %e, "artifact file left for the start-up sweep");
                }
            }
        })
        .await;
    }
}
