//! `arbiter.v1.Experiments` over [`crate::experiment::Experiments`].

use tonic::{Request, Response, Status};

use super::experiment_convert::test_status;
use super::{authn, status};
use crate::experiment::spec::TestSpec;
use crate::experiment::types::TestConfig;
use crate::experiment::{Experiments, ListCursor};
use crate::pb::{self, experiments_server};

/// The Experiments service.
#[derive(Debug, Clone)]
pub struct ExperimentsService {
    experiments: Experiments,
}

impl ExperimentsService {
    /// Wraps the engine.
    pub fn new(experiments: Experiments) -> Self {
        Self { experiments }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> experiments_server::ExperimentsServer<Self> {
        experiments_server::ExperimentsServer::new(self)
    }
}

/// Tests in a ListTests page when the request sets no size.
pub(super) const DEFAULT_PAGE_SIZE: usize = 100;
/// Most tests in one ListTests page; larger sizes are reduced to it.
pub(super) const MAX_PAGE_SIZE: usize = 1000;

#[tonic::async_trait]
impl experiments_server::Experiments for ExperimentsService {
    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn create_test(
        &self,
        request: Request<pb::CreateTestRequest>,
    ) -> Result<Response<pb::Test>, Status> {
        let identity = authn::identity(&request)?;
        let mut request = request.into_inner();
        let actor = authn::actor(&identity, "created_by", &request.created_by)?;
        request.created_by = actor.into_string();
        let config = TestSpec::try_from(request)
            .and_then(TestConfig::try_from)
            .map_err(status::experiment)?;
        let actor = config.created_by().to_string();
        let view = self
            .experiments
            .create(config, &actor)
            .await
            .map_err(status::experiment)?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn get_test(
        &self,
        request: Request<pb::GetTestRequest>,
    ) -> Result<Response<pb::Test>, Status> {
        let test_id = request.into_inner().test_id;
        let view = self
            .experiments
            .current(&test_id)
            .await
            .map_err(status::experiment)?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tests(
        &self,
        request: Request<pb::ListTestsRequest>,
    ) -> Result<Response<pb::ListTestsResponse>, Status> {
        let request = request.into_inner();
        let filter = request
            .status
            .map(|s| test_status("status", s))
            .transpose()
            .map_err(status::experiment)?;
        let after =
            ListCursor::parse("page_token", &request.page_token).map_err(status::experiment)?;
        // A page of 10k tests of 8 arms would be ~5 MB, beyond a default client's 4 MB.
        let limit = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let (tests, next) = self
            .experiments
            .current_page(filter, after.as_ref(), limit)
            .await
            .map_err(status::experiment)?;
        Ok(Response::new(pb::ListTestsResponse {
            tests: tests.into_iter().map(Into::into).collect(),
            next_page_token: next.map(|c| c.to_token()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn pause_test(
        &self,
        request: Request<pb::TestActionRequest>,
    ) -> Result<Response<pb::Test>, Status> {
        let identity = authn::identity(&request)?;
        let r = request.into_inner();
        let actor = authn::actor(&identity, "requested_by", &r.requested_by)?;
        let view = self
            .experiments
            .pause(&r.test_id, actor.as_str(), &r.reason)
            .await
            .map_err(status::experiment)?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn resume_test(
        &self,
        request: Request<pb::TestActionRequest>,
    ) -> Result<Response<pb::Test>, Status> {
        let identity = authn::identity(&request)?;
        let r = request.into_inner();
        let actor = authn::actor(&identity, "requested_by", &r.requested_by)?;
        let view = self
            .experiments
            .resume(&r.test_id, actor.as_str(), &r.reason)
            .await
            .map_err(status::experiment)?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn stop_test(
        &self,
        request: Request<pb::StopTestRequest>,
    ) -> Result<Response<pb::TestResults>, Status> {
        let identity = authn::identity(&request)?;
        let r = request.into_inner();
        let actor = authn::actor(&identity, "requested_by", &r.requested_by)?;
        let results = self
            .experiments
            .stop_on_request(&r.test_id, actor.as_str(), &r.reason)
            .await
            .map_err(status::experiment)?;
        Ok(Response::new(results.into()))
    }

    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn get_test_results(
        &self,
        request: Request<pb::GetTestResultsRequest>,
    ) -> Result<Response<pb::TestResults>, Status> {
        let test_id = request.into_inner().test_id;
        let results = self
            .experiments
            .current_results(&test_id)
            .await
            .map_err(status::experiment)?;
        Ok(Response::new(results.into()))
    }

    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn get_test_history(
        &self,
        request: Request<pb::GetTestRequest>,
    ) -> Result<Response<pb::TestHistory>, Status> {
        let test_id = request.into_inner().test_id;
        let (arm_ids, points) = self
            .experiments
            .history(&test_id)
            .map_err(status::experiment)?;
        Ok(Response::new(pb::TestHistory {
            test_id,
            arm_ids,
            points: points
                .into_iter()
                .map(|p| pb::HistoryPoint {
                    time: Some(super::convert::timestamp(p.time)),
                    results: p.results,
                    shares: p.shares,
                    adjusted_p_values: p.p_values,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn estimate_sample_size(
        &self,
        request: Request<pb::EstimateSampleSizeRequest>,
    ) -> Result<Response<pb::EstimateSampleSizeResponse>, Status> {
        let r = request.into_inner();
        let (per_arm, total) = self
            .experiments
            .estimate_sample_size(
                r.std,
                r.minimum_effect_size,
                r.significance_level.unwrap_or(0.05),
                r.power.unwrap_or(0.8),
                r.arms.unwrap_or(2),
            )
            .map_err(status::experiment)?;
        Ok(Response::new(pb::EstimateSampleSizeResponse {
            per_arm,
            total,
        }))
    }
}
