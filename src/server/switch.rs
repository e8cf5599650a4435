//! One server for the process's whole life, whose arbiter services are those of the current
//! phase: a cluster's standby (following the log), the writer, or none while one phase closes
//! and the next opens. Connections are never dropped when an arbiter changes role: a call that
//! arrives between phases waits for the next one (up to [`PHASE_WAIT`]), and calls of a phase
//! that ends get a grace period, after which they end UNAVAILABLE, so that nothing keeps the
//! phase's state (its store) open. A standby forwards changes and results to the writer
//! ([`Forwarder`]).
//!
//! Health and reflection are served by the server itself, whatever the phase.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use tokio::sync::watch;
use tonic::codegen::Bytes;
use tonic::service::Routes;
use tonic::Status;
use tower::ServiceExt;

use super::forward::Forwarder;
use crate::auth::{CallKind, Role};
use crate::grpc::admission::STREAMED_RESPONSES;

/// How long a call that arrives between phases waits for the next one.
pub(super) const PHASE_WAIT: Duration = Duration::from_secs(10);
/// The prefix of every arbiter method (health and reflection are not switched).
const ARBITER_METHODS: &str = "/arbiter.v1.";

/// The response of a streamed call, emptied when its phase ends.
type StreamSlot = parking_lot::Mutex<Option<tonic::body::Body>>;

/// The streamed responses of a phase still open.
type OpenStreams = Arc<parking_lot::Mutex<Vec<std::sync::Weak<StreamSlot>>>>;

/// The services of one phase.
struct Phase {
    routes: Routes,
    /// A standby's: changes and results go to the writer through it.
    forwarder: Option<Arc<Forwarder>>,
    /// Set when the phase's calls must end.
    ended: watch::Receiver<bool>,
    streams: OpenStreams,
}

/// Installs phases; see the module documentation.
#[derive(Clone)]
pub(super) struct Switch {
    current: Arc<watch::Sender<Option<Arc<Phase>>>>,
}

impl Switch {
    /// A switch with no phase installed: arbiter calls wait.
    pub(super) fn new() -> Self {
        Self {
            current: Arc::new(watch::channel(None).0),
        }
    }

    /// The layer that routes the server's arbiter calls to the current phase.
    pub(super) fn layer(&self) -> SwitchLayer {
        SwitchLayer {
            current: self.current.subscribe(),
        }
    }

    /// Serves `routes` from now on until the returned phase ends; a standby's (`forwarder`
    /// given) sends changes and results to the writer.
    pub(super) fn install(&self, routes: Routes, forwarder: Option<Arc<Forwarder>>) -> Installed {
        let (end, ended) = watch::channel(false);
        let streams = OpenStreams::default();
        let phase = Arc::new(Phase {
            routes: routes.prepare(),
            forwarder,
            ended,
            streams: streams.clone(),
        });
        self.current.send_replace(Some(phase.clone()));
        Installed {
            switch: self.clone(),
            phase: Arc::downgrade(&phase),
            end,
            streams,
        }
    }
}

/// A phase being served.
pub(super) struct Installed {
    switch: Switch,
    /// Upgradable while a call of the phase is under way (until its response begins).
    phase: std::sync::Weak<Phase>,
    end: watch::Sender<bool>,
    streams: OpenStreams,
}

impl Installed {
    /// Stops routing calls to the phase (new ones wait for the next), gives the calls under
    /// way `grace` to finish, and then ends the rest UNAVAILABLE.
    pub(super) async fn end(self, grace: Duration) {
        self.switch.current.send_if_modified(|current| {
            let ours = current
                .as_ref()
                .is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), self.phase.as_ptr()));
            if ours {
                *current = None;
            }
            ours
        });
        let deadline = tokio::time::Instant::now() + grace;
        while self.phase.strong_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.end.send_replace(true);
        // A stream whose client stopped reading is not polled, so it would not notice: its
        // response (and the state it holds) goes now, and it ends when it is polled again.
        let open = std::mem::take(&mut *self.streams.lock());
        for stream in open.iter().filter_map(std::sync::Weak::upgrade) {
            drop(stream.lock().take());
        }
    }
}

/// See [`Switch::layer`].
#[derive(Clone)]
pub(super) struct SwitchLayer {
    current: watch::Receiver<Option<Arc<Phase>>>,
}

impl<S> tower::Layer<S> for SwitchLayer {
    type Service = Switched<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Switched {
            inner,
            current: self.current.clone(),
        }
    }
}

/// See [`Switch`].
#[derive(Clone)]
pub(super) struct Switched<S> {
    inner: S,
    current: watch::Receiver<Option<Arc<Phase>>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Switched<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !path.starts_with(ARBITER_METHODS) {
            return Box::pin(self.inner.call(request));
        }
        let kind = Role::kind_of(path);
        let writes = matches!(kind, Some(CallKind::Change | CallKind::Ingest));
        let streamed = STREAMED_RESPONSES.contains(&path);
        // A unary Allocate answers in microseconds: it is not watched for its phase's end.
        let quick = kind == Some(CallKind::Allocate) && !streamed;
        let mut current = self.current.clone();
        Box::pin(async move {
            let Some(phase) = next_phase(&mut current).await else {
                return Ok(Status::unavailable(
                    "this arbiter is changing role (opening its state); retry",
                )
                .into_http());
            };
            if quick {
                let call = phase.routes.clone().oneshot(request);
                return Ok(call.await.unwrap_or_else(|never| match never {}));
            }
            let call: BoxFuture<http::Response<tonic::body::Body>> = match &phase.forwarder {
                Some(forwarder) if writes => {
                    let forwarder = forwarder.clone();
                    Box::pin(async move { forwarder.forward(request).await })
                }
                _ => {
                    let call = phase.routes.clone().oneshot(request);
                    Box::pin(async move { call.await.unwrap_or_else(|never| match never {}) })
                }
            };
            let mut ended = phase.ended.clone();
            let response = tokio::select! {
                response = call => response,
                _ = ended.wait_for(|&end| end) => return Ok(role_changed().into_http()),
            };
            if !streamed {
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(EndingBody::new(body, &phase))))
        })
    }
}

/// The phase being served, waiting up to [`PHASE_WAIT`] for one.
async fn next_phase(current: &mut watch::Receiver<Option<Arc<Phase>>>) -> Option<Arc<Phase>> {
    if let Some(phase) = current.borrow_and_update().clone() {
        return Some(phase);
    }
    let waited = tokio::time::timeout(PHASE_WAIT, current.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(phase)) => phase.clone(),
        _ => None,
    }
}

/// What a call of a phase that ended gets.
fn role_changed() -> Status {
    Status::unavailable("this arbiter changed role (standby or writer) during the call; retry")
}

/// A streamed response that ends (UNAVAILABLE in its trailers) when its phase does; its
/// phase can take the response away ([`Installed::end`]).
struct EndingBody {
    inner: Arc<StreamSlot>,
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl EndingBody {
    fn new(inner: tonic::body::Body, phase: &Phase) -> Self {
        let inner = Arc::new(parking_lot::Mutex::new(Some(inner)));
        let mut streams = phase.streams.lock();
        streams.retain(|s| s.strong_count() > 0);
        streams.push(Arc::downgrade(&inner));
        drop(streams);
        let mut ended = phase.ended.clone();
        Self {
            inner,
            ended: Box::pin(async move {
                let _ = ended.wait_for(|&end| end).await;
            }),
            done: false,
        }
    }

    /// The trailers of a stream its phase ended.
    fn role_changed_trailers(&mut self) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        drop(self.inner.lock().take());
        let mut trailers = http::HeaderMap::new();
        role_changed().add_header(&mut trailers)?;
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl http_body::Body for EndingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = {
            let mut inner = self.inner.lock();
            inner.as_mut().map(|body| Pin::new(body).poll_frame(cx))
        };
        match polled {
            // Taken away by the phase's end.
            None => return self.role_changed_trailers(),
            Some(Poll::Ready(frame)) => {
                let is_trailers = matches!(&frame, Some(Ok(f)) if f.is_trailers());
                if frame.is_none() || is_trailers {
                    self.done = true;
                }
                return Poll::Ready(frame);
            }
            Some(Poll::Pending) => {}
        }
        if self.ended.as_mut().poll(cx).is_ready() {
            return self.role_changed_trailers();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    /// A response body that never yields (its client stopped reading) and holds `_state`.
    struct Stalled {
        _state: Arc<()>,
    }

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn an_ended_phase_lets_go_of_its_streams_even_unpolled_and_they_end_unavailable() {
        let switch = Switch::new();
        let (_, health) = tonic_health::server::health_reporter();
        let installed = switch.install(Routes::new(health), None);
        let phase = switch.current.borrow().clone().expect("installed");
        let state = Arc::new(());
        let mut stream = EndingBody::new(
            tonic::body::Body::new(Stalled {
                _state: state.clone(),
            }),
            &phase,
        );
        drop(phase);
        assert_eq!(Arc::strong_count(&state), 2);
        installed.end(Duration::ZERO).await;
        assert!(
            switch.current.borrow().is_none(),
            "new calls wait for the next phase"
        );
        assert_eq!(Arc::strong_count(&state), 1, "the stream's state is gone");
        let frame = std::future::poll_fn(|cx| Pin::new(&mut stream).poll_frame(cx))
            .await
            .expect("a last frame")
            .expect("trailers");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"14"[..]),
            "UNAVAILABLE"
        );
        assert!(
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_frame(cx))
                .await
                .is_none()
        );
    }
}
