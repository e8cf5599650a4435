//! `arbiter.v1.Admin`: the audit log.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::timestamp;
use super::status;
use crate::audit::{AuditEvent, AuditLog};
use crate::pb::{self, admin_server};
use crate::storage::Storage;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    storage: Arc<Storage>,
    audit: Arc<AuditLog>,
}

impl AdminService {
    /// Serves the audit log of `storage`.
    pub fn new(storage: Arc<Storage>, audit: Arc<AuditLog>) -> Self {
        Self { storage, audit }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> admin_server::AdminServer<Self> {
        admin_server::AdminServer::new(self)
    }
}

impl From<AuditEvent> for pb::AuditEvent {
    fn from(e: AuditEvent) -> Self {
        pb::AuditEvent {
            seq: e.seq,
            time: Some(timestamp(e.time)),
            actor: e.actor,
            action: e.action,
            entity_type: e.entity_type,
            entity: e.entity,
            details: e.details.into_iter().collect(),
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    #[tracing::instrument(skip_all)]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(status::invalid("limit", format!("{n} exceeds {MAX_LIMIT}")))
            }
            n => n,
        };
        let (storage, audit) = (self.storage.clone(), self.audit.clone());
        let events = tokio::task::spawn_blocking(move || {
            audit.list(&storage, &request.entity, limit as usize)
        })
        .await
        .map_err(|e| Status::internal(format!("audit scan failed: {e}")))?
        .map_err(|e| status::storage(&e))?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_audit_chain(
        &self,
        _request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let (storage, audit) = (self.storage.clone(), self.audit.clone());
        let report = tokio::task::spawn_blocking(move || audit.verify(&storage))
            .await
            .map_err(|e| Status::internal(format!("audit verification failed: {e}")))?
            .map_err(|e| status::storage(&e))?;
        let (first_bad_seq, message) = match report.first_bad {
            Some((seq, why)) => (Some(seq), why),
            None => (None, String::new()),
        };
        Ok(Response::new(pb::VerifyAuditChainResponse {
            ok: first_bad_seq.is_none(),
            events_checked: report.events_checked,
            first_bad_seq,
            message,
        }))
    }
}
