//! How a request stream ended. tonic ends a server's request stream cleanly when the client
//! cancels the call, so a handler cannot tell an upload cut off by its client from a finished
//! one; the request body is wrapped to remember whether it ended in an error.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// A request extension of streamed requests: whether the stream was cut off (reset by the
/// client, or its connection lost) rather than ended by the client.
#[derive(Debug, Clone, Default)]
pub struct StreamEnd(Arc<AtomicBool>);

impl StreamEnd {
    /// Whether the request stream ended in an error.
    pub fn was_cut_off(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A request body that records an error in its [`StreamEnd`], when it has one.
#[derive(Debug)]
pub struct RequestBody<B> {
    inner: B,
    end: Option<StreamEnd>,
}

impl<B> RequestBody<B> {
    /// `inner`, recording how it ends in `end`.
    pub fn new(inner: B, end: Option<StreamEnd>) -> Self {
        Self { inner, end }
    }
}

impl<B: Body + Unpin> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Err(_))), Some(end)) = (&frame, &self.end) {
            end.0.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
