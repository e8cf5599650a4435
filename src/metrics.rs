//! Prometheus metrics on `--metrics-listen` (off by default), through the `metrics` facade:
//!
//! - `arbiter_rpc_requests_total{method, code}` and `arbiter_rpc_duration_seconds{method}`: every
//!   gRPC call, timed to its response headers. `code` is the status sent in the headers (calls that
//!   fail before any message); a stream that fails later counts as `OK` here.
//! - `arbiter_allocations_total{test, arm}`, `arbiter_results_total{test, arm}`: per arm of the
//!   RUNNING and PAUSED tests (at most [`MAX_LABELLED_TESTS`], so label cardinality stays bounded),
//!   copied from the engine's own counters once a second, so the allocation hot path pays nothing.
//! - `arbiter_tests{status}`, `arbiter_storage_bytes`, `arbiter_ingest_batch_size`,
//!   `arbiter_storage_flush_seconds` (one observation per group-commit flush of sled),
//!   `arbiter_journal_sync_seconds` (one per write and `fdatasync` of the result journal).
//!
//! Without a recorder installed every macro is a no-op.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Tests whose arms get their own labels.
pub const MAX_LABELLED_TESTS: usize = 200;

/// Installs the global Prometheus recorder with its HTTP listener on `addr`.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ])
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| e.to_string())
}

/// A tower layer that counts and times every gRPC call.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| code_name(tonic::Code::from(c))),
                Err(_) => "TRANSPORT_ERROR",
            };
            metrics::histogram!("arbiter_rpc_duration_seconds", "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("arbiter_rpc_requests_total", "method" => method, "code" => code)
                .increment(1);
            response
        })
    }
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}
