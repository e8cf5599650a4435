//! Prometheus metrics on `--metrics-listen` (off by default), through the `metrics` facade:
//!
//! - `arbiter_rpc_requests_total{method, code}` and `arbiter_rpc_duration_seconds{method}`: every
//!   gRPC call, timed to its response headers. `method` is the full path of a method the server
//!   serves (`/arbiter.v1.Allocator/Allocate`), or `unknown` for any other path, so made-up
//!   paths cannot grow the label set. `code` is the status sent in the headers (calls that fail
//!   before any message); a stream that fails later counts as `OK` here.
//! - `arbiter_allocations_total{test, arm}`, `arbiter_results_total{test, arm}`: per arm of the
//!   RUNNING and PAUSED tests (at most [`MAX_LABELLED_TESTS`], so label cardinality stays bounded),
//!   copied from the engine's own counters once a second, so the allocation hot path pays nothing.
//! - `arbiter_tests{status}`, `arbiter_storage_bytes`, `arbiter_ingest_batch_size`,
//!   `arbiter_storage_flush_seconds` (one observation per checkpoint sync of the store),
//!   `arbiter_journal_sync_seconds` (one per write and `fdatasync` of the log).
//!
//! Without a recorder installed every macro is a no-op.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusBuilder;
use prost::Message;

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

/// The label of every path that is not a served method.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The full paths (`/package.Service/Method`) of every method in the encoded file descriptor
/// sets: the label values [`RpcMetricsLayer`] may use.
pub fn method_paths(descriptor_sets: &[&[u8]]) -> Result<HashSet<String>, prost::DecodeError> {
    let mut paths = HashSet::new();
    for encoded in descriptor_sets {
        for file in prost_types::FileDescriptorSet::decode(*encoded)?.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let service = match package {
                        "" => service.name().to_string(),
                        p => format!("{p}.{}", service.name()),
                    };
                    paths.insert(format!("/{service}/{}", method.name()));
                }
            }
        }
    }
    Ok(paths)
}

/// A tower layer that counts and times every gRPC call, labelled by method when the method is
/// one of `known` and as [`UNKNOWN_METHOD`] otherwise.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    known: Arc<HashSet<&'static str>>,
}

impl RpcMetricsLayer {
    /// Labels the methods in `known` (see [`method_paths`]). The paths are leaked once, a few
    /// KB for the process, so that labelling a call allocates nothing.
    pub fn new(known: HashSet<String>) -> Self {
        let known = known
            .into_iter()
            .map(|path| &*Box::leak(path.into_boxed_str()))
            .collect();
        Self {
            known: Arc::new(known),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            known: self.known.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    known: Arc<HashSet<&'static str>>,
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
        let path = request.uri().path();
        let method: &'static str = self.known.get(path).copied().unwrap_or(UNKNOWN_METHOD);
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
            metrics::histogram!("arbiter_rpc_duration_seconds", "method" => method)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_known() {
        let known = method_paths(&[
            crate::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ])
        .expect("descriptor sets decode");
        for path in [
            "/arbiter.v1.Allocator/Allocate",
            "/arbiter.v1.Allocator/IngestResults",
            "/arbiter.v1.Registry/RegisterModel",
            "/arbiter.v1.Admin/VerifyAuditChain",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(known.contains(path), "{path} missing from {known:?}");
        }
        assert!(!known.contains("/arbiter.v1.Allocator/Nope"));
    }
}
