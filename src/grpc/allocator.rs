//! `arbiter.v1.Allocator`: the hot path. Allocate handlers log nothing and do no I/O.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::experiment_convert::pb_test_status;
use super::{authn, status};
use crate::experiment::{AppliedResults, CountsInput, Experiments, RecordOutcome, ResultInput};
use crate::pb::{self, allocator_server};

/// Largest request message (an IngestResults batch).
const MAX_MESSAGE: usize = 16 << 20;

/// Batches of one IngestResults stream applied but not yet acknowledged, at most.
const INGEST_PIPELINE_DEPTH: usize = 8;

/// The Allocator service.
#[derive(Debug, Clone)]
pub struct AllocatorService {
    experiments: Experiments,
    /// A watching client gets a test's table at most once per this.
    watch_coalesce: Duration,
}

impl AllocatorService {
    /// Wraps the engine.
    pub fn new(experiments: Experiments) -> Self {
        Self {
            experiments,
            watch_coalesce: super::watch::DEFAULT_COALESCE,
        }
    }

    /// Sends a watching client a test's table at most once per `window`.
    pub fn with_watch_coalesce(mut self, window: Duration) -> Self {
        self.watch_coalesce = window;
        self
    }

    /// The tonic server for this service. It takes messages of up to 16 MiB: a batch of the
    /// default 100 000 records (~60 bytes each) exceeds tonic's default of 4 MiB.
    pub fn into_server(self) -> allocator_server::AllocatorServer<Self> {
        allocator_server::AllocatorServer::new(self).max_decoding_message_size(MAX_MESSAGE)
    }
}

fn allocate(
    experiments: &Experiments,
    request: pb::AllocateRequest,
) -> Result<pb::Allocation, Status> {
    let allocated = experiments
        .allocate(&request.test_id, &request.unit_key)
        .map_err(status::experiment)?;
    Ok(pb::Allocation {
        test_id: request.test_id,
        arm_id: allocated.arm_id,
        model_registry_id: allocated.model_registry_id,
        decision_id: allocated.decision.decision_id,
        propensity: allocated.decision.propensity,
        test_status: pb_test_status(allocated.decision.status) as i32,
    })
}

fn ack(sequence: u64, outcomes: Vec<RecordOutcome>, counts: Vec<RecordOutcome>) -> pb::BatchAck {
    let mut ack = pb::BatchAck {
        sequence,
        ..Default::default()
    };
    tally(
        outcomes,
        &mut ack.accepted,
        &mut ack.duplicates,
        &mut ack.rejected,
    );
    tally(
        counts,
        &mut ack.counts_accepted,
        &mut ack.counts_duplicates,
        &mut ack.counts_rejected,
    );
    ack
}

/// Counts `outcomes` into an acknowledgement's fields.
fn tally(
    outcomes: Vec<RecordOutcome>,
    accepted: &mut u32,
    duplicates: &mut u32,
    rejected: &mut Vec<pb::RecordRejection>,
) {
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            RecordOutcome::Accepted => *accepted += 1,
            RecordOutcome::Duplicate => *duplicates += 1,
            RecordOutcome::Rejected(e) => {
                let status = status::experiment(e);
                rejected.push(pb::RecordRejection {
                    index: index as u32,
                    code: status.code() as i32,
                    message: status.message().to_string(),
                });
            }
        }
    }
}

type AllocationStream = Pin<Box<dyn Stream<Item = Result<pb::Allocation, Status>> + Send>>;

#[tonic::async_trait]
impl allocator_server::Allocator for AllocatorService {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::Allocation>, Status> {
        allocate(&self.experiments, request.into_inner()).map(Response::new)
    }

    type AllocateStreamStream = AllocationStream;

    async fn allocate_stream(
        &self,
        request: Request<Streaming<pb::AllocateRequest>>,
    ) -> Result<Response<Self::AllocateStreamStream>, Status> {
        let experiments = self.experiments.clone();
        let identity = authn::identity(&request)?;
        // Mapping the inbound stream keeps responses in request order with no extra task or hop.
        let responses = request.into_inner().map(move |request| {
            authn::still_valid(&identity)?;
            request.and_then(|r| allocate(&experiments, r))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    #[tracing::instrument(skip_all, fields(test_id = %request.get_ref().test_id))]
    async fn record_result(
        &self,
        request: Request<pb::ResultRecord>,
    ) -> Result<Response<pb::RecordAck>, Status> {
        let input = ResultInput::from(request.into_inner());
        let mut outcomes = self
            .experiments
            .record_batch(vec![input])
            .await
            .map_err(status::experiment)?;
        match outcomes.pop() {
            Some(RecordOutcome::Accepted) => Ok(Response::new(pb::RecordAck { duplicate: false })),
            Some(RecordOutcome::Duplicate) => Ok(Response::new(pb::RecordAck { duplicate: true })),
            Some(RecordOutcome::Rejected(e)) => Err(status::experiment(e)),
            None => Err(Status::internal("no outcome for the record")),
        }
    }

    type IngestResultsStream = ReceiverStream<Result<pb::BatchAck, Status>>;

    #[tracing::instrument(skip_all)]
    async fn ingest_results(
        &self,
        request: Request<Streaming<pb::ResultBatch>>,
    ) -> Result<Response<Self::IngestResultsStream>, Status> {
        let identity = authn::identity(&request)?;
        let mut inbound = request.into_inner();
        // Two stages: the reader applies batch k+1 while the acknowledger waits for batch k to be
        // durable, so one stream is not limited to one batch per flush; acks stay in order and
        // each is sent only after a flush covering its batch.
        let (applied_tx, mut applied_rx) =
            mpsc::channel::<Result<(u64, AppliedResults), Status>>(INGEST_PIPELINE_DEPTH);
        let experiments = self.experiments.clone();
        tokio::spawn(async move {
            while let Some(batch) = inbound.next().await {
                let applied = match batch.and_then(|b| authn::still_valid(&identity).map(|()| b)) {
                    Err(status) => Err(status),
                    Ok(batch) => {
                        metrics::histogram!("arbiter_ingest_batch_size")
                            .record(batch.results.len() as f64);
                        let inputs = batch.results.into_iter().map(ResultInput::from).collect();
                        let counts = batch
                            .decision_counts
                            .into_iter()
                            .map(CountsInput::from)
                            .collect();
                        experiments
                            .apply_batch(inputs, counts)
                            .await
                            .map(|applied| (batch.sequence, applied))
                            .map_err(status::experiment)
                    }
                };
                let failed = applied.is_err();
                // The acknowledger is gone when the client is: stop reading.
                if applied_tx.send(applied).await.is_err() || failed {
                    return;
                }
            }
        });
        let (tx, rx) = mpsc::channel(16);
        let experiments = self.experiments.clone();
        tokio::spawn(async move {
            while let Some(applied) = applied_rx.recv().await {
                let reply = match applied {
                    Err(status) => Err(status),
                    Ok((sequence, applied)) => experiments
                        .make_batch_durable(applied)
                        .await
                        .map(|(outcomes, counts)| ack(sequence, outcomes, counts))
                        .map_err(status::experiment),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchAllocationsStream = super::watch::UpdateStream;

    async fn watch_allocations(
        &self,
        request: Request<pb::WatchAllocationsRequest>,
    ) -> Result<Response<Self::WatchAllocationsStream>, Status> {
        super::watch::watch_allocations(self.experiments.clone(), request, self.watch_coalesce)
            .await
    }
}
