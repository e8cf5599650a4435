//! `arbiter.v1.Registry` over [`crate::registry::Registry`].

use std::io::Read;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::admission::deadline::{self, Deadline};
use super::admission::stream_end::StreamEnd;
use super::convert::{self, timestamp};
use super::{authn, status};
use crate::auth::{Identity, Role};
use crate::pb::{self, get_model_response, register_model_request, registry_server};
use crate::registry::types::{parse_version, ModelId, NewModel, RegistryId};
use crate::registry::{Deletion, ModelFilter, Promotion, PromotionRights, Registry, RegistryError};

/// Bytes per artifact chunk sent by GetModel (well under the 4 MiB default message limit).
const CHUNK_SIZE: usize = 256 * 1024;

/// The Registry service.
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Registry,
}

impl RegistryService {
    /// Wraps a registry.
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> registry_server::RegistryServer<Self> {
        registry_server::RegistryServer::new(self)
    }
}

fn registry_id(raw: &str) -> Result<RegistryId, Status> {
    RegistryId::parse("registry_id", raw).map_err(status::registry)
}

/// The next message of an upload, or DEADLINE_EXCEEDED after `idle` without one or at the
/// client's deadline: a client that stops sending must not hold a stream, a temporary file and
/// an upload slot for ever.
async fn next_message(
    stream: &mut Streaming<pb::RegisterModelRequest>,
    idle: std::time::Duration,
    deadline: Option<Deadline>,
) -> Result<Option<pb::RegisterModelRequest>, Status> {
    let idle_at = tokio::time::Instant::now() + idle;
    match deadline {
        Some(Deadline(at)) if at < idle_at => tokio::time::timeout_at(at, stream.message())
            .await
            .unwrap_or_else(|_| Err(deadline::exceeded("the upload was complete"))),
        _ => match tokio::time::timeout_at(idle_at, stream.message()).await {
            Ok(message) => message,
            Err(_) => Err(status::registry(RegistryError::UploadIdle { idle })),
        },
    }
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryService {
    #[tracing::instrument(skip_all)]
    async fn register_model(
        &self,
        request: Request<Streaming<pb::RegisterModelRequest>>,
    ) -> Result<Response<pb::ModelMetadata>, Status> {
        let identity = authn::identity(&request)?;
        let deadline = request.extensions().get::<Deadline>().copied();
        let end = request.extensions().get::<StreamEnd>().cloned();
        let mut stream = request.into_inner();
        let idle = self.registry.upload_idle_timeout();
        let header = match next_message(&mut stream, idle, deadline)
            .await?
            .and_then(|m| m.part)
        {
            Some(register_model_request::Part::Header(mut h)) => {
                let actor = authn::actor(&identity, "created_by", &h.created_by)?;
                if let Identity::Principal(_) = identity {
                    h.created_by = actor.into_string();
                }
                h
            }
            _ => {
                return Err(status::registry(RegistryError::invalid(
                    "header",
                    "the first message must carry the header",
                )))
            }
        };
        let model = NewModel::try_from(header).map_err(status::registry)?;
        tracing::info!(registry_id = %model.registry_id, "registering model");
        let mut registration = self
            .registry
            .begin_registration(model)
            .await
            .map_err(status::registry)?;
        // Any early return drops `registration`, which removes the partial upload.
        while let Some(message) = next_message(&mut stream, idle, deadline).await? {
            match message.part {
                Some(register_model_request::Part::Chunk(bytes)) => {
                    registration.write(&bytes).await.map_err(status::registry)?
                }
                Some(register_model_request::Part::Header(_)) => {
                    return Err(status::registry(RegistryError::invalid(
                        "header",
                        "only the first message may carry the header",
                    )))
                }
                None => {}
            }
        }
        if end.is_some_and(|end| end.was_cut_off()) {
            return Err(Status::cancelled(
                "the upload was cut off before the client ended it; nothing was registered",
            ));
        }
        // The whole upload is in: the commit completes even if the client goes away now.
        let view = tokio::spawn(registration.commit())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "a registration's commit failed");
                Status::internal("the registration failed; see the server log")
            })?
            .map_err(status::registry)?;
        Ok(Response::new(view.into()))
    }

    type GetModelStream = ReceiverStream<Result<pb::GetModelResponse, Status>>;

    #[tracing::instrument(skip_all, fields(model_id = %request.get_ref().model_id))]
    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<Self::GetModelStream>, Status> {
        let request = request.into_inner();
        let model_id = ModelId::parse("model_id", &request.model_id).map_err(status::registry)?;
        let version = match request.version.as_str() {
            "" => None,
            v => Some(parse_version("version", v).map_err(status::registry)?),
        };
        let (view, mut file, size) = self
            .registry
            .open_artifact(&model_id, version.as_ref())
            .await
            .map_err(status::registry)?;
        let (tx, rx) = mpsc::channel(4);
        let metadata = get_model_response::Part::Metadata(view.into());
        tx.try_send(Ok(pb::GetModelResponse {
            part: Some(metadata),
        }))
        .expect("a fresh channel has room for the first message");
        tokio::task::spawn_blocking(move || {
            let mut remaining = size;
            while remaining > 0 {
                let mut chunk = vec![0u8; CHUNK_SIZE.min(remaining as usize)];
                let message = match file.read_exact(&mut chunk) {
                    Ok(()) => Ok(pb::GetModelResponse {
                        part: Some(get_model_response::Part::Chunk(chunk)),
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "artifact read failed after verification");
                        Err(Status::data_loss(
                            "artifact changed while it was being sent",
                        ))
                    }
                };
                let failed = message.is_err();
                if tx.blocking_send(message).is_err() || failed {
                    return; // the client went away, or the error was sent
                }
                remaining -= CHUNK_SIZE.min(remaining as usize) as u64;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(registry_id = %request.get_ref().registry_id))]
    async fn get_model_metadata(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::ModelMetadata>, Status> {
        let id = registry_id(&request.into_inner().registry_id)?;
        let view = self.registry.metadata(&id).map_err(status::registry)?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let filter = ModelFilter::try_from(request.into_inner()).map_err(status::registry)?;
        let models = self.registry.list(&filter).map_err(status::registry)?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(registry_id = %request.get_ref().registry_id))]
    async fn promote_model(
        &self,
        request: Request<pb::PromoteModelRequest>,
    ) -> Result<Response<pb::ModelMetadata>, Status> {
        let identity = authn::identity(&request)?;
        let request = request.into_inner();
        let actor = authn::actor(&identity, "approved_by", &request.approved_by)?;
        let mut promotion = Promotion::try_from(request).map_err(status::registry)?;
        match &identity {
            // The approver of a PRODUCTION promotion is whoever authenticated.
            Identity::Principal(p) => {
                promotion.approved_by = p.name.clone();
                promotion.rights = PromotionRights {
                    below_production: p.has(Role::Publisher),
                    production: p.has(Role::Approver),
                };
            }
            Identity::Open => promotion.rights = PromotionRights::ALL,
        }
        promotion.actor = actor.into_string();
        let promoted = self
            .registry
            .promote(promotion)
            .await
            .map_err(status::registry)?;
        let mut answer = pb::ModelMetadata::from(promoted.view);
        answer.demoted_registry_id = promoted
            .demoted
            .map(|id| id.to_string())
            .unwrap_or_default();
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, fields(registry_id = %request.get_ref().registry_id))]
    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let identity = authn::identity(&request)?;
        let request = request.into_inner();
        authn::require(
            &identity,
            Role::for_deletion(request.force),
            "a forced delete",
        )?;
        let actor = authn::actor(&identity, "requested_by", &request.requested_by)?;
        let deletion = Deletion::try_from(request).map_err(status::registry)?;
        self.registry
            .delete(deletion, actor.as_str())
            .await
            .map_err(status::registry)?;
        Ok(Response::new(pb::DeleteModelResponse { deleted: true }))
    }

    #[tracing::instrument(skip_all, fields(registry_id = %request.get_ref().registry_id))]
    async fn verify_model(
        &self,
        request: Request<pb::ModelRef>,
    ) -> Result<Response<pb::VerifyModelResponse>, Status> {
        let id = registry_id(&request.into_inner().registry_id)?;
        let v = self.registry.verify(&id).await.map_err(status::registry)?;
        let hex = |d: Option<crate::registry::types::Sha256Digest>| {
            d.map(|d| d.to_string()).unwrap_or_default()
        };
        Ok(Response::new(pb::VerifyModelResponse {
            ok: v.ok,
            expected_sha256: v.expected.to_string(),
            actual_sha256: hex(v.actual),
            expected_policy_sha256: hex(v.expected_policy),
            actual_policy_sha256: hex(v.actual_policy),
            message: v.message,
            signer: v.signer.unwrap_or_default(),
            signature_ok: v.signature_ok,
        }))
    }

    #[tracing::instrument(skip_all, fields(model_id = %request.get_ref().model_id))]
    async fn get_model_performance(
        &self,
        request: Request<pb::GetModelPerformanceRequest>,
    ) -> Result<Response<pb::GetModelPerformanceResponse>, Status> {
        let model_id =
            ModelId::parse("model_id", &request.into_inner().model_id).map_err(status::registry)?;
        let perf = self
            .registry
            .performance(&model_id)
            .map_err(status::registry)?;
        let m = perf.latest;
        Ok(Response::new(pb::GetModelPerformanceResponse {
            model_id: model_id.to_string(),
            registry_id: m.registry_id.to_string(),
            version: m.registry_id.version.to_string(),
            status: convert::pb_status(m.status) as i32,
            created_at: Some(timestamp(m.created_at)),
            backtest_sharpe: m.figures.backtest_sharpe,
            backtest_returns: m.figures.backtest_returns,
            backtest_max_dd: m.figures.backtest_max_dd,
            validation_score: m.figures.validation_score,
            live: Some(pb::LivePerformance {
                results: perf.live.results,
                mean_return: perf.live.mean_return,
                sharpe_ratio: perf.live.sharpe_ratio,
                win_rate: perf.live.win_rate,
                tests: perf.live.tests,
                drift: perf
                    .live
                    .drift
                    .into_iter()
                    .map(|d| pb::ArmDrift {
                        test_id: d.test_id,
                        arm_id: d.arm_id,
                        registry_id: d.registry_id,
                        alarms: d.alarms,
                        last_drift_at: d.last_at,
                        last_drift_direction: i32::from(d.last_direction),
                    })
                    .collect(),
            }),
        }))
    }
}
