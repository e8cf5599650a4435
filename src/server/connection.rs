//! Every accepted connection, wrapped so that the server says when and why it closes one.
//!
//! hyper and h2 close a connection by sending GOAWAY (a protocol error, a flood protection such
//! as `too_many_data_frames`, shutdown) and log it, if at all, at debug level inside tonic. The
//! wrapper reads the HTTP/2 frame headers the server writes (nine bytes per frame; payloads are
//! skipped unread) and logs each GOAWAY with the peer, the error code and h2's debug text: at
//! warn for errors, at debug for a graceful NO_ERROR. It also counts them in
//! `arbiter_connections_closed_total{reason}`. The scan costs a few comparisons per frame; it
//! gives up on bytes that are not HTTP/2 frames (it would see ciphertext under TLS).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
/// Frame types of RFC 9113 (DATA … CONTINUATION); anything above means the stream is not
/// plain HTTP/2 frames.
const HIGHEST_FRAME_TYPE: u8 = 0x9;
/// The largest frame length a peer may allow (2²⁴ − 1).
const MAX_FRAME_LEN: usize = (1 << 24) - 1;
/// GOAWAY payload kept for the log: last stream id, error code, and up to 120 bytes of debug data.
const GOAWAY_KEPT: usize = 8 + 120;

/// A TCP connection whose outgoing GOAWAY frames are logged.
#[derive(Debug)]
pub(super) struct LoggedConnection {
    stream: TcpStream,
    peer: Option<SocketAddr>,
    scanner: Option<FrameScanner>,
}

impl LoggedConnection {
    /// Wraps an accepted stream.
    pub(super) fn new(stream: TcpStream) -> Self {
        let peer = stream.peer_addr().ok();
        Self {
            stream,
            peer,
            scanner: Some(FrameScanner::default()),
        }
    }

    fn scan(&mut self, written: &[u8]) {
        let Some(scanner) = &mut self.scanner else {
            return;
        };
        match scanner.feed(written) {
            Ok(goaways) => {
                for goaway in goaways {
                    goaway.log(self.peer);
                }
            }
            Err(()) => self.scanner = None,
        }
    }
}

impl Connected for LoggedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for LoggedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LoggedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.scan(&buf[..n]);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for buf in bufs {
                let take = n.min(buf.len());
                self.scan(&buf[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A GOAWAY the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GoAway {
    /// The HTTP/2 error code.
    pub code: u32,
    /// The debug data (h2 puts its reason there, e.g. `too_many_data_frames`), lossily as text.
    pub debug: String,
}

impl GoAway {
    fn log(&self, peer: Option<SocketAddr>) {
        let reason = error_code_name(self.code);
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        metrics::counter!("arbiter_connections_closed_total", "reason" => reason).increment(1);
        if self.code == 0 {
            tracing::debug!(%peer, reason, debug = %self.debug, "closing connection (GOAWAY)");
        } else {
            tracing::warn!(%peer, reason, debug = %self.debug, "closing connection (GOAWAY)");
        }
    }
}

/// The name of an HTTP/2 error code (RFC 9113 §7).
fn error_code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN_ERROR_CODE",
    }
}

/// Follows the frame boundaries of the bytes a server writes.
#[derive(Debug, Default)]
struct FrameScanner {
    header: [u8; FRAME_HEADER],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// The payload of the current frame, when it is a GOAWAY (capped at [`GOAWAY_KEPT`]).
    goaway: Option<Vec<u8>>,
    /// Whether the first frame, the server's SETTINGS preface, has been seen.
    started: bool,
}

impl FrameScanner {
    /// Consumes written bytes; returns the GOAWAY frames completed in them, or `Err` when the
    /// bytes are not HTTP/2 frames.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<GoAway>, ()> {
        let mut done = Vec::new();
        while !bytes.is_empty() {
            if self.remaining == 0 && self.goaway.is_none() {
                let take = (FRAME_HEADER - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < FRAME_HEADER {
                    break;
                }
                self.header_len = 0;
                let h = self.header;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                // A server's first frame is its SETTINGS (type 4, stream 0, entries of 6 bytes).
                let preface = h[3] == SETTINGS && h[5..9] == [0; 4] && len.is_multiple_of(6);
                if h[3] > HIGHEST_FRAME_TYPE || len > MAX_FRAME_LEN || !(self.started || preface) {
                    return Err(());
                }
                self.started = true;
                self.remaining = len;
                if h[3] == GOAWAY {
                    self.goaway = Some(Vec::with_capacity(len.min(GOAWAY_KEPT)));
                }
            } else {
                let take = self.remaining.min(bytes.len());
                if let Some(kept) = &mut self.goaway {
                    let room = GOAWAY_KEPT.saturating_sub(kept.len()).min(take);
                    kept.extend_from_slice(&bytes[..room]);
                }
                self.remaining -= take;
                bytes = &bytes[take..];
            }
            if self.remaining == 0 {
                if let Some(payload) = self.goaway.take() {
                    done.push(parse_goaway(&payload));
                }
            }
        }
        Ok(done)
    }
}

fn parse_goaway(payload: &[u8]) -> GoAway {
    let code = payload
        .get(4..8)
        .map_or(0x2, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    GoAway {
        code,
        debug: String::from_utf8_lossy(payload.get(8..).unwrap_or_default()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let stream = u8::from(kind != SETTINGS && kind != GOAWAY);
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            stream,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_goaway_frames_across_any_split_of_the_writes() {
        let mut goaway = vec![0, 0, 0, 3, 0, 0, 0, 0xb];
        goaway.extend_from_slice(b"too_many_data_frames");
        let bytes = [
            frame(0x4, &[0; 6]),
            frame(0x0, &[7; 300]),
            frame(GOAWAY, &goaway),
            frame(0x1, &[1; 20]),
        ]
        .concat();
        let expected = GoAway {
            code: 0xb,
            debug: "too_many_data_frames".into(),
        };
        for chunk in [1, 2, 7, 9, 10, 64, bytes.len()] {
            let mut scanner = FrameScanner::default();
            let found: Vec<GoAway> = bytes
                .chunks(chunk)
                .flat_map(|c| scanner.feed(c).expect("frames"))
                .collect();
            assert_eq!(found, vec![expected.clone()], "chunks of {chunk}");
        }
        assert_eq!(error_code_name(0xb), "ENHANCE_YOUR_CALM");
    }

    #[test]
    fn gives_up_on_bytes_that_are_not_frames() {
        let mut scanner = FrameScanner::default();
        // A TLS ServerHello record: not a SETTINGS frame.
        assert!(scanner
            .feed(&[0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0, 0, 0x76])
            .is_err());
    }
}
