//! Changes to registered versions: promotion through the lifecycle and deletion.

use crate::audit::AuditDraft;
use crate::storage::{keys, WriteBatch};
use crate::time;

use super::lifecycle;
use super::types::*;
use super::{Registry, RegistryError, Result};

/// A request to move a version to another status.
#[derive(Debug, Clone)]
pub struct Promotion {
    /// The version.
    pub registry_id: RegistryId,
    /// The status to move to.
    pub target: ModelStatus,
    /// The approver (required for PRODUCTION).
    pub approved_by: String,
    /// Who asks: the actor in the audit log ("anonymous" when nobody put a name to it, never the
    /// model's creator by default).
    pub actor: String,
    /// What the caller may do, checked against the status the promotion finds, under the
    /// registry's lock.
    pub rights: PromotionRights,
    /// Free text recorded in the audit log.
    pub reason: String,
    /// Compare-and-set: the status the caller believes the version has.
    pub expected_status: Option<ModelStatus>,
}

/// Which moves a caller may make: below PRODUCTION (the `publisher` role), to or out of it
/// (`approver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromotionRights {
    /// Moves that neither reach nor leave PRODUCTION.
    pub below_production: bool,
    /// Moves to or out of PRODUCTION.
    pub production: bool,
}

impl PromotionRights {
    /// Every move (no authentication, or an admin).
    pub const ALL: Self = Self {
        below_production: true,
        production: true,
    };
}

/// The answer to a promotion.
#[derive(Debug, Clone)]
pub struct Promoted {
    /// The promoted version as it now is.
    pub view: ModelView,
    /// The version this promotion moved out of PRODUCTION (to DEPRECATED), if any.
    pub demoted: Option<RegistryId>,
}

/// A request to delete a version.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// The version.
    pub registry_id: RegistryId,
    /// Allows deleting PRODUCTION.
    pub force: bool,
}

impl Registry {
    /// Moves a version through the lifecycle. A version promoted to PRODUCTION replaces the
    /// model's previous PRODUCTION version, which becomes DEPRECATED in the same atomic write;
    /// the answer names it.
    pub async fn promote(&self, promotion: Promotion) -> Result<Promoted> {
        if promotion.target == ModelStatus::Production && promotion.approved_by.trim().is_empty() {
            return Err(RegistryError::invalid(
                "approved_by",
                "is required to promote to PRODUCTION",
            ));
        }
        let this = self.clone();
        let (metadata, demoted) =
            tokio::task::spawn_blocking(move || this.commit_promotion(&promotion))
                .await
                .map_err(|e| {
                    RegistryError::io("committing promotion")(std::io::Error::other(e))
                })??;
        self.inner.storage.flush().await?;
        Ok(Promoted {
            view: self.view(metadata)?,
            demoted,
        })
    }

    fn commit_promotion(&self, p: &Promotion) -> Result<(ModelMetadata, Option<RegistryId>)> {
        let _guard = self.inner.write_lock.lock();
        let mut metadata = self.load_existing(&p.registry_id)?;
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
        let touches_production =
            from == ModelStatus::Production || p.target == ModelStatus::Production;
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
        let actor = p.actor.clone();
        let mut batch = WriteBatch::new();
        let mut drafts = Vec::new();
        let mut demoted = None;
        if p.target == ModelStatus::Production {
            if !self.inner.config.allow_self_approval
                && crate::auth::actor::same_person(&p.approved_by, &metadata.created_by)
            {
                return Err(RegistryError::SelfApproval {
                    registry_id: p.registry_id.to_string(),
                    approver: p.approved_by.clone(),
                });
            }
            if self.inner.config.require_signed_production {
                match self.check_signature(&metadata) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(RegistryError::Unsigned {
                            registry_id: p.registry_id.to_string(),
                            why: "it is not signed".into(),
                        })
                    }
                    Err(problem) => {
                        return Err(RegistryError::Unsigned {
                            registry_id: p.registry_id.to_string(),
                            why: problem.to_string(),
                        })
                    }
                }
            }
            metadata.approval_status = ApprovalStatus::Approved;
            metadata.approved_by = p.approved_by.clone();
            metadata.approved_at = Some(time::now());
            for mut previous in self.versions(&p.registry_id.model_id)? {
                if previous.status == ModelStatus::Production
                    && previous.registry_id != p.registry_id
                {
                    previous.status = ModelStatus::Deprecated;
                    batch.put(keys::model(&previous.registry_id.to_string()), &previous)?;
                    drafts.push(
                        AuditDraft::model(&actor, "model.promote", &previous.registry_id)
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
        let mut draft = AuditDraft::model(&actor, "model.promote", &p.registry_id)
            .detail("from", from)
            .detail("to", p.target)
            .detail("reason", &p.reason);
        if !p.approved_by.is_empty() {
            draft = draft.detail("approved_by", &p.approved_by);
        }
        drafts.push(draft);
        self.inner
            .audit
            .commit(&self.inner.storage, batch, drafts)?;
        Ok((metadata, demoted))
    }

    /// Deletes a version: metadata and policy at once, then its file.
    pub async fn delete(&self, deletion: Deletion, actor: &str) -> Result<()> {
        let this = self.clone();
        let actor = actor.to_string();
        let id = deletion.registry_id.clone();
        tokio::task::spawn_blocking(move || this.commit_deletion(&deletion, &actor))
            .await
            .map_err(|e| RegistryError::io("committing deletion")(std::io::Error::other(e)))??;
        self.inner.storage.flush().await?;
        self.remove_files(vec![id]).await;
        Ok(())
    }

    fn commit_deletion(&self, d: &Deletion, actor: &str) -> Result<()> {
        let _guard = self.inner.write_lock.lock();
        let metadata = self.load_existing(&d.registry_id)?;
        if metadata.status == ModelStatus::Production && !d.force {
            return Err(RegistryError::ProductionDelete {
                registry_id: d.registry_id.to_string(),
            });
        }
        if let Some(test_id) = self.active_test_using(&d.registry_id) {
            return Err(RegistryError::InUse {
                registry_id: d.registry_id.to_string(),
                test_id,
            });
        }
        let key = d.registry_id.to_string();
        let mut batch = WriteBatch::new();
        batch.remove(keys::model(&key));
        batch.remove(keys::policy(&key));
        let draft = AuditDraft::model(actor, "model.delete", &d.registry_id)
            .detail("status", metadata.status)
            .detail("force", d.force);
        self.inner
            .audit
            .commit(&self.inner.storage, batch, vec![draft])?;
        Ok(())
    }
}
