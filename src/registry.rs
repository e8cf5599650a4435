//! The model registry: versioned artifacts with SHA-256 integrity, metadata, the approval-gated
//! lifecycle and retention.
//!
//! Main types: [`Registry`] (the operations), [`types::ModelMetadata`] (the stored record),
//! [`artifacts::ArtifactStore`] (files), [`RegistryError`]. Registrations, promotions and
//! deletions are logged as commands whose outcome is folded from the store at their position
//! ([`command`]); they are serialized by one in-process lock (never held across an `.await`),
//! then made durable by a shared flush before the caller acknowledges. Depends on `storage` and `audit`;
//! knows nothing of gRPC. Which tests use a version comes from the store's index (see
//! [`command`]); live figures of tests through [`ModelUsage`].

pub mod artifacts;
mod change;
pub use change::{Deletion, Promotion, PromotionRights};
pub mod command;
mod error;
pub mod lifecycle;
mod register;
pub mod replica;
pub mod signing;
pub mod types;

use std::fs::File;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

pub use error::RegistryError;
pub use register::Registration;
use types::*;

use crate::audit::AuditLog;
use crate::storage::{keys, Storage, WriteBatch};
use artifacts::ArtifactStore;

/// Result alias of the registry.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// What the registry needs to know about tests (implemented by the experiment layer).
pub trait ModelUsage: Send + Sync + std::fmt::Debug {
    /// Live figures of every version of `model_id` across all tests.
    fn live_performance(&self, model_id: &ModelId) -> LivePerformance;
}

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// Retention: versions kept per model before old DEVELOPMENT/TESTING ones are removed.
    pub max_versions_per_model: usize,
    /// Relaxes the four-eyes rule (approver may equal creator).
    pub allow_self_approval: bool,
    /// Uploads (RegisterModel streams past their header) in progress at once; beyond it,
    /// RESOURCE_EXHAUSTED. Each holds a temporary file, so this bounds open files too.
    pub max_concurrent_uploads: usize,
    /// How long an upload may wait for its client's next message before it is abandoned
    /// (DEADLINE_EXCEEDED; its temporary file is removed).
    pub upload_idle_timeout: std::time::Duration,
    /// The keys artifact signatures are checked against.
    pub trusted_signers: Arc<signing::TrustedSigners>,
    /// Only signed versions (by a signer still trusted) may become PRODUCTION.
    pub require_signed_production: bool,
    /// The average rate, in bytes per second, an upload must keep once it has run for
    /// `upload_idle_timeout`: a client trickling a byte now and then must not hold an upload
    /// slot for ever.
    pub upload_min_bytes_per_sec: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_artifact_bytes: 1 << 30,
            max_versions_per_model: 10,
            allow_self_approval: false,
            max_concurrent_uploads: 64,
            upload_idle_timeout: std::time::Duration::from_secs(30),
            upload_min_bytes_per_sec: 16 * 1024,
            trusted_signers: Arc::default(),
            require_signed_production: false,
        }
    }
}

/// The model registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<Storage>,
    audit: Arc<AuditLog>,
    artifacts: ArtifactStore,
    config: RegistryConfig,
    /// Weak: the experiment layer holds the registry, so a strong reference would be a cycle.
    usage: OnceLock<Weak<dyn ModelUsage>>,
    /// Serializes check-then-write sequences (existence, CAS, retention).
    write_lock: Mutex<()>,
    /// One permit per upload in progress.
    uploads: Arc<tokio::sync::Semaphore>,
    /// Cluster mode: the object store every artifact is also kept in.
    replica: Option<Arc<dyn replica::ArtifactReplica>>,
    /// Held from storing an artifact in `replica` until its registration commits, and while
    /// objects are removed (see [`replica`]).
    replica_ops: tokio::sync::Mutex<()>,
    /// Held while an artifact is fetched from `replica`, so that it is fetched once.
    fetching: tokio::sync::Mutex<()>,
}

impl Registry {
    /// Opens the registry on `storage` and sweeps artifact files that no record owns (left by a
    /// crash between installing a file and committing its metadata, or after a delete).
    pub fn open(
        storage: Arc<Storage>,
        audit: Arc<AuditLog>,
        config: RegistryConfig,
    ) -> Result<Self> {
        Self::open_replicated(storage, audit, config, None)
    }

    /// Like [`Registry::open`], keeping every artifact also in `replica` (cluster mode).
    pub fn open_replicated(
        storage: Arc<Storage>,
        audit: Arc<AuditLog>,
        config: RegistryConfig,
        replica: Option<Arc<dyn replica::ArtifactReplica>>,
    ) -> Result<Self> {
        let artifacts = ArtifactStore::open(storage.data_dir())?;
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads));
        let registry = Self {
            inner: Arc::new(Inner {
                storage,
                audit,
                artifacts,
                config,
                usage: OnceLock::new(),
                write_lock: Mutex::new(()),
                uploads,
                replica,
                replica_ops: tokio::sync::Mutex::new(()),
                fetching: tokio::sync::Mutex::new(()),
            }),
        };
        registry.sweep_orphans()?;
        Ok(registry)
    }

    /// Connects the experiment layer; until then (and after it is dropped) no version counts as
    /// in use. The caller keeps `usage` alive.
    pub fn set_usage(&self, usage: &Arc<dyn ModelUsage>) {
        let _ = self.inner.usage.set(Arc::downgrade(usage));
    }

    /// How long an upload may wait for its client (see [`RegistryConfig`]).
    pub fn upload_idle_timeout(&self) -> std::time::Duration {
        self.inner.config.upload_idle_timeout
    }

    fn usage(&self) -> Option<Arc<dyn ModelUsage>> {
        self.inner.usage.get()?.upgrade()
    }

    /// Moves the artifacts of models stored with a leading dot by older builds to their escaped
    /// paths, before the sweep could mistake them for orphans.
    fn adopt_legacy_artifacts(&self) -> Result<()> {
        let dotted: Vec<RegistryId> = self
            .inner
            .storage
            .scan::<ModelMetadata>(keys::MODEL_PREFIX)
            .map(|entry| entry.map(|(_, m)| m.registry_id))
            .filter(|id| {
                id.as_ref()
                    .map_or(true, |id| id.model_id.as_str().starts_with('.'))
            })
            .collect::<Result<_, _>>()?;
        for id in dotted {
            if self.inner.artifacts.adopt_legacy(&id)? {
                tracing::info!(registry_id = %id, "moved an artifact to its escaped path");
            }
        }
        Ok(())
    }

    fn sweep_orphans(&self) -> Result<()> {
        self.adopt_legacy_artifacts()?;
        for (model, stem, path) in self.inner.artifacts.files()? {
            // Lenient parse: ids stored by older builds may start with a dot.
            let owned = match RegistryId::try_from(format!("{model}:{stem}")) {
                Ok(id) if self.load(&id)?.is_some() => {
                    if self.inner.artifacts.path(&id).is_ok_and(|p| p != path) {
                        // Never delete a file a stored version names, wherever it lies.
                        tracing::error!(
                            path = %path.display(),
                            registry_id = %id,
                            "artifact file of a stored version is not at its path; left in place"
                        );
                    }
                    true
                }
                _ => false,
            };
            if !owned {
                tracing::warn!(path = %path.display(), "removing artifact file without metadata");
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(RegistryError::io(format!("removing {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Executes a registry command: `change` computes its writes and audit drafts from the
    /// store at the command's position (see [`command`]); the events are chained at `time`.
    /// Not yet durable. Blocking.
    fn execute<T>(
        &self,
        command: &command::Command,
        time: crate::time::UnixNanos,
        change: impl FnOnce(&Storage, &mut WriteBatch) -> command::Change<T>,
    ) -> Result<T> {
        let entry = command::encode(command)?;
        self.inner
            .audit
            .execute(&self.inner.storage, &entry, time, change)
    }

    pub(crate) fn load(&self, id: &RegistryId) -> Result<Option<ModelMetadata>> {
        command::load(&self.inner.storage, id)
    }

    fn load_existing(&self, id: &RegistryId) -> Result<ModelMetadata> {
        self.load(id)?.ok_or_else(|| RegistryError::NotFound {
            registry_id: id.to_string(),
        })
    }

    fn policy_bytes(&self, id: &RegistryId) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.storage.get_raw(&keys::policy(&id.to_string()))?)
    }

    fn view(&self, metadata: ModelMetadata) -> Result<ModelView> {
        let policy_config = match self.policy_bytes(&metadata.registry_id)? {
            // The policy is stored as canonical JSON; a record that fails to parse is reported
            // by VerifyModel, so reading metadata still works.
            Some(bytes) => serde_json::from_slice(&bytes).ok(),
            None => None,
        };
        Ok(ModelView {
            metadata,
            policy_config,
        })
    }

    /// Every version of `model_id`, in key order.
    fn versions(&self, model_id: &ModelId) -> Result<Vec<ModelMetadata>> {
        command::versions(&self.inner.storage, model_id)
    }

    /// The metadata of one version.
    pub fn metadata(&self, id: &RegistryId) -> Result<ModelView> {
        let metadata = self.load_existing(id)?;
        self.view(metadata)
    }

    /// Versions matching every given filter, newest `created_at` first.
    pub fn list(&self, filter: &ModelFilter) -> Result<Vec<ModelView>> {
        let prefix = match &filter.model_id {
            Some(id) => keys::model_versions(id.as_str()),
            None => keys::MODEL_PREFIX.to_vec(),
        };
        let mut found = Vec::new();
        for entry in self.inner.storage.scan::<ModelMetadata>(&prefix) {
            let (_, m) = entry?;
            let keep = filter.model_type.is_none_or(|t| t == m.model_type)
                && filter.status.is_none_or(|s| s == m.status)
                && filter
                    .created_by
                    .as_ref()
                    .is_none_or(|c| *c == m.created_by);
            if keep {
                found.push(m);
            }
        }
        found.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| b.registry_id.version.cmp(&a.registry_id.version))
        });
        found.into_iter().map(|m| self.view(m)).collect()
    }

    /// Resolves `version` of `model_id`, or, when `None`, its "latest": the highest-semver
    /// PRODUCTION version, else the highest-semver version that is neither DEPRECATED nor
    /// ARCHIVED (retired versions are fetched only by name).
    pub fn resolve(
        &self,
        model_id: &ModelId,
        version: Option<&semver::Version>,
    ) -> Result<ModelMetadata> {
        if let Some(version) = version {
            return self.load_existing(&RegistryId {
                model_id: model_id.clone(),
                version: version.clone(),
            });
        }
        let versions = self.versions(model_id)?;
        let production = versions
            .iter()
            .filter(|m| m.status == ModelStatus::Production)
            .max_by(|a, b| a.registry_id.version.cmp(&b.registry_id.version));
        let current = || {
            versions
                .iter()
                .filter(|m| !matches!(m.status, ModelStatus::Deprecated | ModelStatus::Archived))
                .max_by(|a, b| a.registry_id.version.cmp(&b.registry_id.version))
        };
        match production.or_else(current) {
            Some(m) => Ok(m.clone()),
            None if versions.is_empty() => Err(RegistryError::ModelNotFound {
                model_id: model_id.to_string(),
            }),
            None => Err(RegistryError::NoCurrentVersion {
                model_id: model_id.to_string(),
            }),
        }
    }

    /// Resolves a version and opens its artifact after verifying its checksum (DATA_LOSS on a
    /// mismatch): no byte is handed out before the whole file has been checked.
    pub async fn open_artifact(
        &self,
        model_id: &ModelId,
        version: Option<&semver::Version>,
    ) -> Result<(ModelView, File, u64)> {
        let metadata = self.resolve(model_id, version)?;
        self.ensure_local(&metadata).await?;
        let this = self.clone();
        let id = metadata.registry_id.clone();
        let expected = metadata.model_checksum;
        let (file, size) =
            tokio::task::spawn_blocking(move || this.inner.artifacts.open_verified(&id, expected))
                .await
                .map_err(|e| RegistryError::io("verifying artifact")(std::io::Error::other(e)))??;
        Ok((self.view(metadata)?, file, size))
    }

    /// Recomputes the artifact and policy checksums of a version.
    pub async fn verify(&self, id: &RegistryId) -> Result<Verification> {
        let metadata = self.load_existing(id)?;
        // A copy that cannot be fetched is reported like a local file that is missing or
        // damaged; an object store out of reach is an error.
        let fetch_problem = match self.ensure_local(&metadata).await {
            Ok(_) => None,
            Err(e @ RegistryError::ChecksumMismatch { .. }) => Some(e.to_string()),
            Err(RegistryError::ArtifactMissing { .. }) => None,
            Err(e) => return Err(e),
        };
        let this = self.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || this.verify_blocking(&id, &metadata, fetch_problem))
            .await
            .map_err(|e| RegistryError::io("verifying artifact")(std::io::Error::other(e)))?
    }

    fn verify_blocking(
        &self,
        id: &RegistryId,
        metadata: &ModelMetadata,
        fetch_problem: Option<String>,
    ) -> Result<Verification> {
        let mut problems: Vec<String> = fetch_problem.into_iter().collect();
        let actual = match self.inner.artifacts.hash(id) {
            Ok((digest, _)) => Some(digest),
            Err(RegistryError::ArtifactMissing { .. }) => {
                problems.push("artifact file is missing".to_string());
                None
            }
            Err(e) => return Err(e),
        };
        if actual.is_some_and(|a| a != metadata.model_checksum) {
            problems.push("artifact checksum mismatch".to_string());
        }
        let actual_policy = self.policy_bytes(id)?.map(|b| Sha256Digest::of(&b));
        if actual_policy != metadata.policy_checksum {
            problems.push("policy checksum mismatch".to_string());
        }
        let signature_ok = match self.check_signature(metadata) {
            Ok(signed) => signed,
            Err(problem) => {
                problems.push(problem.to_string());
                false
            }
        };
        if !problems.is_empty() {
            tracing::warn!(registry_id = %id, problems = %problems.join("; "), "model verification failed");
        }
        Ok(Verification {
            signer: metadata.signature.as_ref().map(|s| s.signer.clone()),
            signature_ok,
            ok: problems.is_empty(),
            expected: metadata.model_checksum,
            actual,
            expected_policy: metadata.policy_checksum,
            actual_policy,
            message: problems.join("; "),
        })
    }

    /// Whether `metadata` is signed by a currently trusted key over its recorded checksums
    /// (`Ok(false)`: unsigned).
    pub(crate) fn check_signature(
        &self,
        metadata: &ModelMetadata,
    ) -> std::result::Result<bool, signing::SignatureProblem> {
        let Some(signature) = &metadata.signature else {
            return Ok(false);
        };
        let message = signing::signed_message(
            &metadata.registry_id,
            &metadata.model_checksum,
            metadata.policy_checksum.as_ref(),
        );
        self.inner
            .config
            .trusted_signers
            .verify(signature, &message)?;
        Ok(true)
    }

    /// Backtest figures of the highest version and live figures from tests.
    pub fn performance(&self, model_id: &ModelId) -> Result<ModelPerformance> {
        let latest = self
            .versions(model_id)?
            .into_iter()
            .max_by(|a, b| a.registry_id.version.cmp(&b.registry_id.version))
            .ok_or_else(|| RegistryError::ModelNotFound {
                model_id: model_id.to_string(),
            })?;
        let live = self
            .usage()
            .map(|u| u.live_performance(model_id))
            .unwrap_or_default();
        Ok(ModelPerformance { latest, live })
    }
}

/// Filters of [`Registry::list`]; unset fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ModelFilter {
    /// Only this model type.
    pub model_type: Option<ModelType>,
    /// Only this status.
    pub status: Option<ModelStatus>,
    /// Only versions by this creator.
    pub created_by: Option<String>,
    /// Only versions of this model.
    pub model_id: Option<ModelId>,
}

/// The outcome of [`Registry::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// Artifact and policy both match.
    pub ok: bool,
    /// The recorded artifact checksum.
    pub expected: Sha256Digest,
    /// The computed one (`None` when the file is missing).
    pub actual: Option<Sha256Digest>,
    /// The recorded policy checksum.
    pub expected_policy: Option<Sha256Digest>,
    /// The computed one.
    pub actual_policy: Option<Sha256Digest>,
    /// What is wrong; empty when ok.
    pub message: String,
    /// The signer, when the version is signed.
    pub signer: Option<String>,
    /// Whether the signature verifies under the signer's currently trusted key.
    pub signature_ok: bool,
}
