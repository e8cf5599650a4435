//! The echo baseline: arbiter's Allocator message shapes served by a handler that does nothing but
//! build the response, over the same tonic transport settings as `arbiter serve`.

use std::future::Future;
use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::pb::arbiter::bench::v1::echo_server::{Echo, EchoServer};
use crate::pb::{self, TestStatus};

#[derive(Debug, Clone, Copy)]
struct EchoService;

/// A registry id as long as the ones `arbiter bench` registers; cloned per response, as arbiter does.
const MODEL_REGISTRY_ID: &str = "bench-12345-123456789-m0:1.0.0";

/// An Allocation with the same strings arbiter would return for the benchmark's test.
fn allocation(request: pb::AllocateRequest) -> pb::Allocation {
    pb::Allocation {
        arm_id: "arm_0".to_string(),
        model_registry_id: MODEL_REGISTRY_ID.to_string(),
        test_id: request.test_id,
        decision_id: 1 << 6,
        propensity: 0.5,
        test_status: TestStatus::Running as i32,
    }
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::Allocation>, Status> {
        Ok(Response::new(allocation(request.into_inner())))
    }

    type AllocateStreamStream = Out<pb::Allocation>;

    async fn allocate_stream(
        &self,
        request: Request<Streaming<pb::AllocateRequest>>,
    ) -> Result<Response<Self::AllocateStreamStream>, Status> {
        Ok(Response::new(Box::pin(
            request.into_inner().map(|r| r.map(allocation)),
        )))
    }

    type IngestResultsStream = Out<pb::BatchAck>;

    async fn ingest_results(
        &self,
        request: Request<Streaming<pb::ResultBatch>>,
    ) -> Result<Response<Self::IngestResultsStream>, Status> {
        let acks = request.into_inner().map(|batch| {
            batch.map(|b| pb::BatchAck {
                sequence: b.sequence,
                accepted: b.results.len() as u32,
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

/// Serves the echo on `listener` until `shutdown` resolves.
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
    {
        eprintln!("arbiter bench: echo server failed: {e}");
    }
}
