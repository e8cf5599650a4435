//! What a call to an arbiter service passes after authentication: its principal's rate limit
//! for the kind of call (RESOURCE_EXHAUSTED with a retry delay when over it), and its client's
//! deadline (`grpc-timeout`): a call not answered by then ends with DEADLINE_EXCEEDED, a stream
//! ends with it in its trailers, and a call whose deadline has already passed is not started.
//!
//! Changes (promotions, deletions, test changes) run to completion once started, in a task of
//! their own: a client that gives up, by its deadline or by going away, never leaves one
//! half-made. It learns the outcome by reading the model or test back. A registration is the
//! exception while its upload streams in: a client that goes away mid-upload must abort it, and
//! an abandoned request stream can look like a finished one to a task that outlives the call,
//! so the handler runs as part of the call and only its commit, once the whole upload is in,
//! runs to completion.

pub mod deadline;
pub mod stream_end;

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{CallKind, Identity, RateLimiter, RateLimits, Role};

/// The arbiter methods whose requests are streams.
const STREAMED_REQUESTS: [&str; 3] = [
    "/arbiter.v1.Allocator/AllocateStream",
    "/arbiter.v1.Allocator/IngestResults",
    "/arbiter.v1.Registry/RegisterModel",
];

/// The arbiter methods whose responses are streams (ended at the deadline by a trailer).
pub const STREAMED_RESPONSES: [&str; 4] = [
    "/arbiter.v1.Allocator/AllocateStream",
    "/arbiter.v1.Allocator/IngestResults",
    "/arbiter.v1.Allocator/WatchAllocations",
    "/arbiter.v1.Registry/GetModel",
];

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    rates: RateLimits,
    limiter: Arc<RateLimiter>,
}

impl AdmissionLayer {
    /// Admits calls at `rates` per principal (each principal of the auth file may override
    /// them).
    pub fn new(rates: RateLimits) -> Self {
        Self {
            rates,
            limiter: Arc::default(),
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Debug, Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl AdmissionLayer {
    /// Counts the call against its principal's limit for `kind`.
    fn admit<B>(&self, request: &http::Request<B>, kind: CallKind) -> Result<(), Status> {
        let (name, rate) = match request.extensions().get::<Identity>() {
            Some(Identity::Principal(p)) => (p.name.as_str(), p.rate_limits.apply(self.rates)),
            _ => ("", self.rates),
        };
        let limited = self
            .limiter
            .check(name, kind, rate.of(kind), std::time::Instant::now());
        let Err(limited) = limited else {
            return Ok(());
        };
        let who = if name.is_empty() {
            "callers (without authentication all share one limit) are".to_string()
        } else {
            format!("principal {name:?} is")
        };
        let message = format!(
            "{who} over the limit of {} {} calls per second; retry in {} ms",
            limited.rate,
            kind.name(),
            limited.retry_after.as_millis().max(1)
        );
        Err(Status::with_error_details(
            tonic::Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(limited.retry_after)),
        ))
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

fn answer<E: Send + 'static>(
    status: Status,
) -> BoxFuture<Result<http::Response<tonic::body::Body>, E>> {
    Box::pin(std::future::ready(Ok(status.into_http())))
}

impl<S, B> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<
        http::Request<stream_end::RequestBody<B>>,
        Response = http::Response<tonic::body::Body>,
    >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let end = STREAMED_REQUESTS
            .contains(&path)
            .then(stream_end::StreamEnd::default);
        let mut request = request.map(|body| stream_end::RequestBody::new(body, end.clone()));
        if let Some(end) = end {
            request.extensions_mut().insert(end);
        }
        let path = request.uri().path();
        let Some(kind) = Role::kind_of(path) else {
            return Box::pin(self.inner.call(request));
        };
        if let Err(status) = self.layer.admit(&request, kind) {
            return answer(status);
        }
        let streamed = STREAMED_RESPONSES.contains(&path);
        let runs_to_completion = kind == CallKind::Change && !STREAMED_REQUESTS.contains(&path);
        let deadline = deadline::requested_timeout(request.headers())
            .map(|timeout| tokio::time::Instant::now() + timeout);
        if let Some(d) = deadline {
            if d <= tokio::time::Instant::now() {
                return answer(deadline::exceeded("the call started"));
            }
            request.extensions_mut().insert(deadline::Deadline(d));
        }
        let call = self.inner.call(request);
        match (runs_to_completion, deadline) {
            (true, deadline) => Box::pin(async move {
                let change = tokio::spawn(call);
                let joined = match deadline {
                    None => change.await,
                    Some(d) => match tokio::time::timeout_at(d, change).await {
                        Ok(joined) => joined,
                        Err(_) => {
                            return Ok(deadline::exceeded(
                                "the change was answered; it still completes, so read it back \
                                 to see its outcome",
                            )
                            .into_http())
                        }
                    },
                };
                joined.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "a change's task failed");
                    Ok(Status::internal("the change failed; see the server log").into_http())
                })
            }),
            (_, None) => Box::pin(call),
            (_, Some(d)) => Box::pin(async move {
                match tokio::time::timeout_at(d, call).await {
                    Ok(Ok(response)) if streamed => Ok(response
                        .map(|body| tonic::body::Body::new(deadline::DeadlineBody::new(body, d)))),
                    Ok(answered) => answered,
                    Err(_) => Ok(deadline::exceeded("the call was answered").into_http()),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths of the methods `streams` says yes to, sorted.
    fn methods_where(streams: impl Fn(&prost_types::MethodDescriptorProto) -> bool) -> Vec<String> {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in service.method.iter().filter(|m| streams(m)) {
                    let (package, service) = (file.package(), service.name());
                    paths.push(format!("/{package}.{service}/{}", method.name()));
                }
            }
        }
        paths.sort();
        paths
    }

    #[test]
    fn the_streamed_lists_are_exactly_the_streaming_methods() {
        let sorted = |list: &[&str]| {
            let mut list: Vec<String> = list.iter().map(|p| p.to_string()).collect();
            list.sort();
            list
        };
        assert_eq!(
            methods_where(|m| m.server_streaming()),
            sorted(&STREAMED_RESPONSES)
        );
        assert_eq!(
            methods_where(|m| m.client_streaming()),
            sorted(&STREAMED_REQUESTS)
        );
    }
}
