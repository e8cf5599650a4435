//! Pipelining clients are never disconnected for being slow to read their answers: flow control
//! makes them wait. Two clients: a raw HTTP/2 client that sends each request in its own small
//! DATA frame and reads nothing until flow control stops it (deterministic), and grpcio's sync
//! Python client (the client this was first seen with).

mod support;

use std::time::Duration;

use prost::bytes::Bytes;
use support::*;

/// One `AllocateRequest{test_id: "t"}` as a gRPC message: 5-byte prefix, then 3 bytes.
const REQUEST: [u8; 8] = [0, 0, 0, 0, 3, 0x0a, 0x01, b't'];

/// An AllocateStream call on a raw HTTP/2 connection of its own: the connection's task (it ends
/// when the connection does), the response, and the request body to send frames on.
async fn allocate_stream(
    server: &TestServer,
) -> (
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!(
        "http://{}/arbiter.v1.Allocator/AllocateStream",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let (response, send) = client.send_request(request, false).expect("send");
    (connection, response, send)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_whose_answers_back_up_waits_instead_of_being_disconnected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;

    let (connection, response, mut send) = allocate_stream(&server).await;

    // 30k requests, one DATA frame each. Nothing is read for a second, so the answers back up
    // and the server stops reading: its flow control must stop us, not a GOAWAY.
    const N: usize = 30_000;
    let sender = tokio::spawn(async move {
        for _ in 0..N {
            send.send_data(Bytes::from_static(&REQUEST), false)?;
        }
        send.send_data(Bytes::new(), true)?;
        Ok::<_, h2::Error>(send)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !connection.is_finished(),
        "the server closed the connection"
    );

    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("headers in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = 0usize;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.data())
        .await
        .expect("data in time")
    {
        let chunk = chunk.unwrap_or_else(|e| panic!("after {bytes} bytes of answers: {e}"));
        bytes += chunk.len();
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release");
    }
    let trailers = body.trailers().await.expect("trailers").expect("some");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    sender.await.expect("sender").expect("every request sent");
    // Each answer is one gRPC message: count them by walking the 5-byte prefixes would need the
    // bytes kept; their total size is N times one answer's size instead.
    assert_eq!(bytes % N, 0, "{bytes} bytes for {N} answers");
    assert!(!connection.is_finished(), "the connection is still open");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sync_clients_pipelining_allocate_stream_are_all_answered() {
    let Some(python) = python::python_with_grpcio() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;
    let script = python::script("pipeline_allocate.py");
    // A reader that pauses lets the requests run ahead of the answers; several runs, because
    // how grpcio frames its writes depends on timing.
    for (requests, pause_every, pause) in [
        ("50000", "0", "0"),
        ("50000", "2000", "0.05"),
        ("30000", "100", "0.005"),
    ] {
        let args: Vec<String> = [
            &script,
            &server.addr.to_string(),
            "t",
            requests,
            pause_every,
            pause,
        ]
        .map(String::from)
        .to_vec();
        let python = python.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(python).args(args).output()
        })
        .await
        .expect("join")
        .expect("python runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{requests} requests, pause {pause} s every {pause_every}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    server.stop().await;
}

/// Log lines written by the server, captured for the test that checks them.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_empty_frames_is_still_refused_and_the_close_is_logged() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let (connection, _response, mut send) = allocate_stream(&server).await;
    for _ in 0..500 {
        if send.send_data(Bytes::new(), false).is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server closes the connection");
    let err = closed.expect("join").expect_err("closed with an error");
    // The client sees the GOAWAY, or, when the server closes the socket while the client is
    // still writing its flood, the broken pipe; the server's log below says which reason it
    // sent either way.
    if err.is_go_away() {
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    } else {
        assert!(err.is_io(), "neither a GOAWAY nor a closed socket: {err}");
    }
    // The server logs the close on its connection task, which may run after the client has
    // seen the GOAWAY: wait for the line (bounded).
    let logged = |text: &str| {
        text.contains("closing connection (GOAWAY)") && text.contains("ENHANCE_YOUR_CALM")
    };
    let mut text = String::new();
    for _ in 0..100 {
        text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
        if logged(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged(&text), "{text}");
    server.stop().await;
}
