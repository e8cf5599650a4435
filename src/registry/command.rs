//! The registry's commands, as the log holds them, and their fold.
//!
//! A registration, promotion or deletion is logged as what was asked, with everything its
//! outcome depends on that is not in the store: who asked, when, and the settings and checks
//! of the node that took it (retention, four-eyes, the artifact signature it verified). Its
//! outcome (refused or not, what it changes, the audit events it chains) is computed by
//! [`apply`] from the command and the store as the log's earlier entries left it, the same way
//! when it is executed and when it is replayed: the registry's state is a fold of the log.
//! Which tests use a version comes from the store's index of model versions in use, which every
//! write of a test record keeps in step.
//!
//! Replay runs the fold of the build that opens the data directory over the commands logged
//! since the last checkpoint (none after a clean stop). A change to how a command is applied
//! (its checks, the records or audit details it writes) must therefore keep applying commands
//! of the current [`Command`] format version as before, and take effect under a new version.

use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditDraft};
use crate::storage::{self, keys, Record, Storage, WriteBatch};
use crate::time::UnixNanos;

use super::lifecycle;
use super::types::*;
use super::{Deletion, Promotion, RegistryError, Result};

/// The first byte of the registry's commands in the log (the state fold dispatches on it).
pub const DOMAIN: u8 = b'R';

/// A change to the registry, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A new version whose artifact is installed.
    Register(Box<Register>),
    /// A move through the lifecycle.
    Promote(Promote),
    /// The removal of a version.
    Delete(Delete),
}

impl Record for Command {
    const FORMAT_VERSION: u8 = 1;
}

/// A registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    /// The version's record as the node that took the upload made it; its `created_at` is the
    /// command's time.
    pub metadata: ModelMetadata,
    /// The canonical JSON of its policy document, if any.
    pub policy: Option<String>,
    /// Retention on the node that took it: versions kept per model.
    pub max_versions_per_model: usize,
}

/// A promotion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Promote {
    /// What was asked.
    pub promotion: Promotion,
    /// When.
    pub time: UnixNanos,
    /// Whether the node that took it lets an approver approve their own version.
    pub allow_self_approval: bool,
    /// For a move to PRODUCTION on a node that requires signed versions: the signature check
    /// it made.
    pub signature: Option<SignatureCheck>,
}

/// The outcome of checking a version's signature against the trusted signers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignatureCheck {
    /// The artifact checksum of the version checked.
    pub model_checksum: Sha256Digest,
    /// What was wrong (none: signed by a trusted signer).
    pub problem: Option<String>,
}

/// A deletion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delete {
    /// What was asked.
    pub deletion: Deletion,
    /// Who asked.
    pub actor: String,
    /// When.
    pub time: UnixNanos,
}

/// What applying a change gives: its answer and the audit events to chain; or why it is
/// refused.
pub(super) type Change<T> = Result<(T, Vec<AuditDraft>)>;

/// The log entry of `command`: [`DOMAIN`], then the versioned record.
pub fn encode(command: &Command) -> storage::Result<Vec<u8>> {
    storage::encode_command(DOMAIN, command)
}

/// The batch of a command (without [`DOMAIN`]) replayed from the log: see [`apply`].
pub fn replay(store: &Storage, bytes: &[u8]) -> std::result::Result<WriteBatch, String> {
    storage::replay_command(store, bytes, "registry command", apply)
}

/// Applies `command` to the store as the log's earlier entries left it: the batch that makes
/// the change, with its audit events chained; or why it is refused. Deterministic.
pub fn apply(store: &Storage, command: &Command) -> Result<WriteBatch> {
    let batch = match command {
        Command::Register(c) => {
            audit::fold(store, c.metadata.created_at, |b| register(store, c, b))?.0
        }
        Command::Promote(c) => audit::fold(store, c.time, |b| promote(store, c, b))?.0,
        Command::Delete(c) => audit::fold(store, c.time, |b| delete(store, c, b))?.0,
    };
    Ok(batch)
}

/// A registration: the new version, and the versions retention removed to make room.
pub(super) fn register(
    store: &Storage,
    c: &Register,
    batch: &mut WriteBatch,
) -> Change<(ModelMetadata, Vec<RegistryId>)> {
    let metadata = &c.metadata;
    let id = &metadata.registry_id;
    if load(store, id)?.is_some() {
        return Err(RegistryError::AlreadyExists {
            registry_id: id.to_string(),
        });
    }
    let key = id.to_string();
    batch.put(keys::model(&key), metadata)?;
    if let Some(policy) = &c.policy {
        batch.put_raw(keys::policy(&key), policy.as_bytes());
    }
    let mut drafts = vec![
        AuditDraft::model(&metadata.created_by, "model.register", id)
            .detail(
                "model_type",
                format!("{:?}", metadata.model_type).to_uppercase(),
            )
            .detail("model_checksum", metadata.model_checksum)
            .detail("artifact_size_bytes", metadata.artifact_size_bytes),
    ];
    let retired = retention_victims(store, id, c.max_versions_per_model)?;
    for victim in &retired {
        let victim_key = victim.registry_id.to_string();
        batch.remove(keys::model(&victim_key));
        batch.remove(keys::policy(&victim_key));
        drafts.push(
            AuditDraft::model("system", "model.retention_delete", &victim.registry_id)
                .detail("status", victim.status)
                .detail("max_versions_per_model", c.max_versions_per_model),
        );
    }
    let retired = retired.into_iter().map(|m| m.registry_id).collect();
    Ok(((metadata.clone(), retired), drafts))
}

/// Retention: while the model has more versions than allowed (counting `new`), its oldest
/// DEVELOPMENT or TESTING version that no active test uses.
fn retention_victims(store: &Storage, new: &RegistryId, max: usize) -> Result<Vec<ModelMetadata>> {
    let mut versions = versions(store, &new.model_id)?;
    let mut count = versions.len() + 1;
    let mut candidates = Vec::new();
    for m in versions.drain(..) {
        if matches!(m.status, ModelStatus::Development | ModelStatus::Testing)
            && test_using(store, &m.registry_id)?.is_none()
        {
            candidates.push(m);
        }
    }
    candidates.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.registry_id.version.cmp(&b.registry_id.version))
    });
    let mut victims = Vec::new();
    for candidate in candidates {
        if count <= max {
            break;
        }
        victims.push(candidate);
        count -= 1;
    }
    Ok(victims)
}

/// A promotion: the version as it now is, and the version it moved out of PRODUCTION.
pub(super) fn promote(
    store: &Storage,
    c: &Promote,
    batch: &mut WriteBatch,
) -> Change<(ModelMetadata, Option<RegistryId>)> {
    let p = &c.promotion;
    if p.target == ModelStatus::Production && p.approved_by.trim().is_empty() {
        return Err(RegistryError::invalid(
            "approved_by",
            "is required to promote to PRODUCTION",
        ));
    }
    let mut metadata = load_existing(store, &p.registry_id)?;
    let from = metadata.status;
    if let Some(expected) = p.expected_status {
        if expected != from {
            return Err(RegistryError::StatusChanged {
                registry_id: p.registry_id.to_string(),
                expected,
                actual: from,
            });
        }
    }
    if !lifecycle::is_allowed(from, p.target) {
        return Err(RegistryError::InvalidTransition {
            registry_id: p.registry_id.to_string(),
            from,
            to: p.target,
        });
    }
    let touches_production = from == ModelStatus::Production || p.target == ModelStatus::Production;
    let (allowed, role) = if touches_production {
        (p.rights.production, "approver")
    } else {
        (p.rights.below_production, "publisher")
    };
    if !allowed {
        return Err(RegistryError::NotPermitted {
            what: format!("moving {} from {from} to {}", p.registry_id, p.target),
            role,
        });
    }
    let mut drafts = Vec::new();
    let mut demoted = None;
    if p.target == ModelStatus::Production {
        if !c.allow_self_approval
            && crate::auth::actor::same_person(&p.approved_by, &metadata.created_by)
        {
            return Err(RegistryError::SelfApproval {
                registry_id: p.registry_id.to_string(),
                approver: p.approved_by.clone(),
            });
        }
        if let Some(check) = &c.signature {
            let why = if check.model_checksum != metadata.model_checksum {
                Some("its artifact changed after its signature was checked".to_string())
            } else {
                check.problem.clone()
            };
            if let Some(why) = why {
                return Err(RegistryError::Unsigned {
                    registry_id: p.registry_id.to_string(),
                    why,
                });
            }
        }
        metadata.approval_status = ApprovalStatus::Approved;
        metadata.approved_by = p.approved_by.clone();
        metadata.approved_at = Some(c.time);
        for mut previous in versions(store, &p.registry_id.model_id)? {
            if previous.status == ModelStatus::Production && previous.registry_id != p.registry_id {
                previous.status = ModelStatus::Deprecated;
                batch.put(keys::model(&previous.registry_id.to_string()), &previous)?;
                drafts.push(
                    AuditDraft::model(&p.actor, "model.promote", &previous.registry_id)
                        .detail("from", ModelStatus::Production)
                        .detail("to", ModelStatus::Deprecated)
                        .detail("reason", format!("replaced by {}", p.registry_id)),
                );
                demoted = Some(previous.registry_id.clone());
            }
        }
    }
    metadata.status = p.target;
    batch.put(keys::model(&p.registry_id.to_string()), &metadata)?;
    let mut draft = AuditDraft::model(&p.actor, "model.promote", &p.registry_id)
        .detail("from", from)
        .detail("to", p.target)
        .detail("reason", &p.reason);
    if !p.approved_by.is_empty() {
        draft = draft.detail("approved_by", &p.approved_by);
    }
    drafts.push(draft);
    Ok(((metadata, demoted), drafts))
}

/// A deletion: the version as it was.
pub(super) fn delete(store: &Storage, c: &Delete, batch: &mut WriteBatch) -> Change<ModelMetadata> {
    let d = &c.deletion;
    let metadata = load_existing(store, &d.registry_id)?;
    if metadata.status == ModelStatus::Production && !d.force {
        return Err(RegistryError::ProductionDelete {
            registry_id: d.registry_id.to_string(),
        });
    }
    if let Some(test_id) = test_using(store, &d.registry_id)? {
        return Err(RegistryError::InUse {
            registry_id: d.registry_id.to_string(),
            test_id,
        });
    }
    let key = d.registry_id.to_string();
    batch.remove(keys::model(&key));
    batch.remove(keys::policy(&key));
    let draft = AuditDraft::model(&c.actor, "model.delete", &d.registry_id)
        .detail("status", metadata.status)
        .detail("force", d.force);
    Ok((metadata, vec![draft]))
}

/// The stored record of `id` (also read by the fold of test creation).
pub fn load(store: &Storage, id: &RegistryId) -> Result<Option<ModelMetadata>> {
    Ok(store.get(&keys::model(&id.to_string()))?)
}

fn load_existing(store: &Storage, id: &RegistryId) -> Result<ModelMetadata> {
    load(store, id)?.ok_or_else(|| RegistryError::NotFound {
        registry_id: id.to_string(),
    })
}

/// Every version of `model_id`, in key order.
pub(super) fn versions(store: &Storage, model_id: &ModelId) -> Result<Vec<ModelMetadata>> {
    store
        .scan::<ModelMetadata>(&keys::model_versions(model_id.as_str()))
        .map(|entry| entry.map(|(_, m)| m).map_err(Into::into))
        .collect()
}

/// One RUNNING or PAUSED test that has `id` as an arm (the first in key order), from the
/// store's index of model versions in use.
pub(super) fn test_using(store: &Storage, id: &RegistryId) -> Result<Option<String>> {
    let prefix = keys::model_uses(&id.to_string());
    match store.scan_raw(&prefix).next() {
        None => Ok(None),
        Some(entry) => {
            let (key, _) = entry?;
            Ok(Some(
                String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
            ))
        }
    }
}
