//! Client deadlines: the `grpc-timeout` header (gRPC over HTTP/2: at most 8 digits and a unit,
//! `H`, `M`, `S`, `m`, `u` or `n`), and a response body that ends a stream with
//! DEADLINE_EXCEEDED when its deadline passes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use tokio::time::{Instant, Sleep};
use tonic::codegen::Bytes;
use tonic::Status;

/// A call's deadline, as a request extension for handlers that wait on their client (uploads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// The timeout a request's `grpc-timeout` header asks for; `None` when there is none or it is
/// malformed (a malformed header is ignored, as other gRPC servers do).
pub fn requested_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The status of a call whose deadline passed.
pub fn exceeded(what: &str) -> Status {
    Status::deadline_exceeded(format!("the client's deadline passed before {what}"))
}

/// A streamed response that ends with DEADLINE_EXCEEDED once its deadline passes.
pub struct DeadlineBody {
    inner: tonic::body::Body,
    deadline: Pin<Box<Sleep>>,
    ended: bool,
}

impl DeadlineBody {
    /// Streams `inner` until `deadline`.
    pub fn new(inner: tonic::body::Body, deadline: Instant) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            ended: false,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            let is_trailers = matches!(&frame, Some(Ok(f)) if f.is_trailers());
            if frame.is_none() || is_trailers {
                self.ended = true;
            }
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let mut trailers = http::HeaderMap::new();
            exceeded("the stream ended").add_header(&mut trailers)?;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("header value"));
        requested_timeout(&headers)
    }

    #[test]
    fn the_header_follows_the_grpc_wire_format() {
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(
            timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(timeout("0m"), Some(Duration::ZERO));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "10"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(requested_timeout(&http::HeaderMap::new()), None);
    }
}
