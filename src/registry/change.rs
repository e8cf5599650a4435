//! Changes to registered versions: promotion through the lifecycle and deletion.

use serde::{Deserialize, Serialize};

use crate::time;

use super::command::{self, Command, Delete, Promote, SignatureCheck};
use super::types::*;
use super::{Registry, RegistryError, Result};

/// A request to move a version to another status.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
        let this = self.clone();
        let (metadata, demoted) =
            tokio::task::spawn_blocking(move || this.commit_promotion(promotion))
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

    fn commit_promotion(
        &self,
        promotion: Promotion,
    ) -> Result<(ModelMetadata, Option<RegistryId>)> {
        let _guard = self.inner.write_lock.lock();
        let config = &self.inner.config;
        // The signature is checked here, against this node's trusted signers; the fold
        // refuses the move if the check failed or the artifact changed since.
        let signature =
            if promotion.target == ModelStatus::Production && config.require_signed_production {
                match self.load(&promotion.registry_id)? {
                    Some(metadata) => Some(SignatureCheck {
                        model_checksum: metadata.model_checksum,
                        problem: match self.check_signature(&metadata) {
                            Ok(true) => None,
                            Ok(false) => Some("it is not signed".into()),
                            Err(problem) => Some(problem.to_string()),
                        },
                    }),
                    // The fold reports the missing version.
                    None => None,
                }
            } else {
                None
            };
        let change = Promote {
            promotion,
            time: time::now(),
            allow_self_approval: config.allow_self_approval,
            signature,
        };
        self.execute(
            &Command::Promote(change.clone()),
            change.time,
            |store, batch| command::promote(store, &change, batch),
        )
    }

    /// Deletes a version: metadata and policy at once, then its file.
    pub async fn delete(&self, deletion: Deletion, actor: &str) -> Result<()> {
        let this = self.clone();
        let actor = actor.to_string();
        let id = deletion.registry_id.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = this.inner.write_lock.lock();
            let change = Delete {
                deletion,
                actor,
                time: time::now(),
            };
            this.execute(
                &Command::Delete(change.clone()),
                change.time,
                |store, batch| command::delete(store, &change, batch),
            )
        })
        .await
        .map_err(|e| RegistryError::io("committing deletion")(std::io::Error::other(e)))??;
        self.inner.storage.flush().await?;
        self.remove_files(vec![id]).await;
        Ok(())
    }
}
