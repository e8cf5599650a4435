//! Limits that protect the server, over real gRPC: per-principal rate limits (with a principal's
//! own rates from the auth file, RESOURCE_EXHAUSTED with a retry delay, and the hot paths
//! unlimited unless configured), and client deadlines (a call past its deadline is not
//! started, a stalled upload and a stream end at it with DEADLINE_EXCEEDED).

mod support;

use std::path::Path;
use std::time::Duration;

use arbiter::auth::token_digest;
use arbiter::pb;
use prost::bytes::Bytes;
use support::*;
use tonic::metadata::MetadataValue;
use tonic::Code;
use tonic_types::StatusExt;

fn auth_file(dir: &Path) -> std::path::PathBuf {
    let entry = |name: &str, roles: &str, extra: &str| {
        format!(
            "[[principal]]\nname = \"{name}\"\nroles = [{roles}]\ntoken_sha256 = \"{}\"\n{extra}\n",
            token_digest(&format!("{name}-token"))
        )
    };
    let text = [
        entry(
            "alice",
            "\"analyst\", \"experimenter\"",
            "[principal.rate_limits]\nread = 3\n",
        ),
        entry("bob", "\"analyst\"", ""),
        entry("router", "\"allocator\"", ""),
    ]
    .concat();
    let path = dir.join("auth.toml");
    std::fs::write(&path, text).expect("write auth file");
    path
}

fn as_<T>(name: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {name}-token").parse().expect("header");
    request.metadata_mut().insert("authorization", value);
    request
}

fn get_test(name: &str) -> tonic::Request<pb::GetTestRequest> {
    as_(
        name,
        pb::GetTestRequest {
            test_id: "missing".into(),
        },
    )
}

/// Calls until the first RESOURCE_EXHAUSTED (at most `max` calls) and returns the number of
/// calls let through before it, and its status.
async fn until_limited<F, Fut>(max: usize, mut call: F) -> (usize, tonic::Status)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = tonic::Status>,
{
    for passed in 0..max {
        let status = call().await;
        if status.code() == Code::ResourceExhausted {
            return (passed, status);
        }
    }
    panic!("{max} calls and none was limited");
}

#[tokio::test]
async fn each_principal_keeps_to_its_rate_and_learns_when_to_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TestServer::config(&dir.path().join("data"));
    config.security.auth_file = Some(auth_file(dir.path()));
    config.security.rate_limits.change = 2;
    let server = TestServer::start_config(config).await;
    let mut experiments = server.experiments().await;

    // alice's own read rate (3 per second) holds, whatever connection she uses. (Calls let
    // through answer NOT_FOUND: the limit counts calls, not successes.)
    let (passed, status) = until_limited(100, || {
        let mut client = experiments.clone();
        async move {
            client
                .get_test(get_test("alice"))
                .await
                .expect_err("no such test")
        }
    })
    .await;
    assert!(passed >= 3, "the burst is the rate: {passed} let through");
    assert!(status.message().contains("\"alice\""), "{status:?}");
    assert!(
        status.message().contains("3 read calls per second"),
        "{status:?}"
    );
    assert!(status.message().contains("retry in"), "{status:?}");
    let retry = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a retry delay in the status details");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(334),
        "{retry:?}"
    );

    // bob has the server's read rate, in buckets of his own; alice's changes are counted apart.
    for _ in 0..20 {
        let err = experiments
            .get_test(get_test("bob"))
            .await
            .expect_err("no such test");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    let (passed, status) = until_limited(100, || {
        let mut client = experiments.clone();
        async move {
            client
                .pause_test(as_(
                    "alice",
                    pb::TestActionRequest {
                        test_id: "missing".into(),
                        ..Default::default()
                    },
                ))
                .await
                .expect_err("no such test")
        }
    })
    .await;
    assert!(passed >= 2, "{passed}");
    assert!(
        status.message().contains("2 change calls per second"),
        "{status:?}"
    );

    // After the delay it was told, alice may read again.
    tokio::time::sleep(retry).await;
    let err = experiments
        .get_test(get_test("alice"))
        .await
        .expect_err("no such test");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // The allocation hot path is unlimited unless configured.
    let mut allocator = server.allocator().await;
    for _ in 0..300 {
        let err = allocator
            .allocate(as_(
                "router",
                pb::AllocateRequest {
                    test_id: "missing".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("no such test");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn without_authentication_callers_share_one_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TestServer::config(dir.path());
    config.security.rate_limits.read = 2;
    let server = TestServer::start_config(config).await;
    let (first, second) = (server.experiments().await, server.experiments().await);
    let mut calls = 0;
    let (passed, status) = until_limited(100, || {
        calls += 1;
        let mut client = if calls % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        async move {
            client
                .get_test(pb::GetTestRequest {
                    test_id: "missing".into(),
                })
                .await
                .expect_err("no such test")
        }
    })
    .await;
    assert!(passed >= 2, "{passed}");
    assert!(
        status.message().contains("all share one limit"),
        "{status:?}"
    );
    server.stop().await;
}

/// A gRPC call on a raw HTTP/2 connection, which (unlike gRPC client libraries) does not
/// enforce the deadline it sends: what happens at the deadline is the server's doing. Returns
/// the response and the request body to send messages on.
async fn raw_call(
    server: &TestServer,
    path: &str,
    grpc_timeout: Option<&str>,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let mut request = http::Request::post(format!("http://{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = grpc_timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let request = request.body(()).expect("request");
    client.send_request(request, false).expect("send")
}

/// `message` framed as one gRPC message.
fn framed(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

/// The grpc-status of a response: in its headers (an error with no messages) or its trailers.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> (Code, Vec<Bytes>) {
    let code = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .map(|v| Code::from_bytes(v.as_bytes()))
    };
    if let Some(code) = code(response.headers()) {
        return (code, Vec::new());
    }
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        body.flow_control()
            .release_capacity(chunk.len())
            .expect("release");
        data.push(chunk);
    }
    let trailers = body.trailers().await.expect("trailers").expect("some");
    (code(&trailers).expect("grpc-status"), data)
}

#[tokio::test]
async fn the_server_ends_calls_at_their_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TestServer::config(dir.path());
    config.registry.max_concurrent_uploads = 1;
    let server = TestServer::start_config(config).await;
    let models = register_models(&mut server.registry().await, 2).await;

    // A deadline already passed: the change is not started.
    let (response, mut send) =
        raw_call(&server, "/arbiter.v1.Experiments/CreateTest", Some("0m")).await;
    send.send_data(framed(&test_request("late", &models)), true)
        .expect("send");
    let (code, _) = grpc_status(response.await.expect("response")).await;
    assert_eq!(code, Code::DeadlineExceeded);
    let mut experiments = server.experiments().await;
    let err = experiments
        .get_test(pb::GetTestRequest {
            test_id: "late".into(),
        })
        .await
        .expect_err("never created");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // With time to spare it is.
    let (response, mut send) =
        raw_call(&server, "/arbiter.v1.Experiments/CreateTest", Some("30S")).await;
    send.send_data(framed(&test_request("t", &models)), true)
        .expect("send");
    let (code, _) = grpc_status(response.await.expect("response")).await;
    assert_eq!(code, Code::Ok);

    // An upload that stalls ends at its deadline, not at the server's 30 s idle timeout, and
    // gives its upload slot back (the server allows one) with nothing registered.
    let started = std::time::Instant::now();
    let (response, mut send) =
        raw_call(&server, "/arbiter.v1.Registry/RegisterModel", Some("300m")).await;
    let header = pb::RegisterModelRequest {
        part: Some(pb::register_model_request::Part::Header(header(
            "stalled", "1.0.0", "alice",
        ))),
    };
    send.send_data(framed(&header), false).expect("send");
    let (code, _) = grpc_status(response.await.expect("response")).await;
    assert_eq!(code, Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(20));
    let mut registry = server.registry().await;
    register(&mut registry, header_of("next"), b"w")
        .await
        .expect("the stalled upload's slot is free");
    let err = registry
        .get_model_metadata(pb::ModelRef {
            registry_id: "stalled:1.0.0".into(),
        })
        .await
        .expect_err("nothing registered");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    drop(send);

    // A stream ends with DEADLINE_EXCEEDED at its deadline, after what it answered in time.
    let (response, mut send) = raw_call(
        &server,
        "/arbiter.v1.Allocator/AllocateStream",
        Some("500m"),
    )
    .await;
    let request = pb::AllocateRequest {
        test_id: "t".into(),
        ..Default::default()
    };
    send.send_data(framed(&request), false).expect("send");
    let (code, data) = grpc_status(response.await.expect("response")).await;
    assert_eq!(code, Code::DeadlineExceeded);
    let answered: usize = data.iter().map(Bytes::len).sum();
    assert!(answered > 5, "the allocation made in time was sent first");
    drop(send);
    server.stop().await;
}

fn header_of(model_id: &str) -> pb::RegisterModelHeader {
    header(model_id, "1.0.0", "alice")
}

#[tokio::test]
async fn an_upload_its_client_cancels_is_never_registered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    // A RST_STREAM(CANCEL) after part of the artifact: what a client sends when its call is
    // cancelled or times out. However long the server has to see the stream's end as final,
    // nothing is registered.
    let (response, mut send) = raw_call(&server, "/arbiter.v1.Registry/RegisterModel", None).await;
    let header = pb::RegisterModelRequest {
        part: Some(pb::register_model_request::Part::Header(header_of("cut"))),
    };
    let chunk = pb::RegisterModelRequest {
        part: Some(pb::register_model_request::Part::Chunk(vec![7; 1000])),
    };
    send.send_data(framed(&header), false).expect("send");
    send.send_data(framed(&chunk), false).expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    send.send_reset(h2::Reason::CANCEL);
    drop(response);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = server
        .registry()
        .await
        .get_model_metadata(pb::ModelRef {
            registry_id: "cut:1.0.0".into(),
        })
        .await
        .expect_err("nothing registered");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        dir_entries(&dir.path().join("tmp")).is_empty(),
        "the partial upload is removed"
    );
    server.stop().await;
}
