//! Prometheus metrics: after some traffic, `/metrics` holds the counters an operator expects.
//! (One test per binary: the recorder is process-global.)

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use arbiter::pb;
use arbiter::registry::RegistryConfig;
use support::*;

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).expect("response");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rpcs_allocations_results_and_flushes() {
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server =
        TestServer::start_full(dir.path(), RegistryConfig::default(), Some(metrics_addr)).await;
    let models = register_models(&mut server.registry().await, 2).await;
    server
        .experiments()
        .await
        .create_test(test_request("t", &models))
        .await
        .expect("create");
    let mut allocator = server.allocator().await;
    for _ in 0..25 {
        allocate(&mut allocator, "t").await;
    }
    let _ = allocator
        .allocate(pb::AllocateRequest {
            test_id: "nope".into(),
            unit_key: String::new(),
        })
        .await;
    let records = (0..10)
        .map(|i| result("t", if i % 2 == 0 { "arm_0" } else { "arm_1" }, 0.01))
        .collect();
    ingest(
        &mut allocator,
        vec![pb::ResultBatch {
            sequence: 1,
            results: records,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    // Calls to methods the server does not serve all share one label value.
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    for i in 0..50 {
        raw.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::try_from(format!("/made.up.Service{i}/Method{i}"))
            .expect("path");
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let status = raw
            .unary(tonic::Request::new(()), path, codec)
            .await
            .expect_err("not served");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
    // The engine copies its counters once a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let text = scrape(metrics_addr);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} missing from:\n{text}"))
    };
    assert_eq!(
        value(r#"arbiter_rpc_requests_total{method="/arbiter.v1.Allocator/Allocate",code="OK"}"#),
        25.0
    );
    assert_eq!(
        value(
            r#"arbiter_rpc_requests_total{method="/arbiter.v1.Allocator/Allocate",code="NOT_FOUND"}"#
        ),
        1.0
    );
    assert!(
        value(r#"arbiter_rpc_duration_seconds_count{method="/arbiter.v1.Allocator/Allocate"}"#)
            >= 26.0
    );
    let allocations = value(r#"arbiter_allocations_total{test="t",arm="arm_0"}"#)
        + value(r#"arbiter_allocations_total{test="t",arm="arm_1"}"#);
    assert_eq!(allocations, 25.0);
    assert_eq!(value(r#"arbiter_results_total{test="t",arm="arm_1"}"#), 5.0);
    assert_eq!(value(r#"arbiter_tests{status="RUNNING"}"#), 1.0);
    assert!(value("arbiter_storage_bytes") > 0.0);
    assert!(value("arbiter_storage_flush_seconds_count") >= 1.0);
    assert!(value("arbiter_journal_sync_seconds_count") >= 1.0);
    assert_eq!(value("arbiter_ingest_batch_size_count"), 1.0);
    assert_eq!(
        value(r#"arbiter_rpc_requests_total{method="unknown",code="UNIMPLEMENTED"}"#),
        50.0
    );
    assert!(!text.contains("made.up"), "made-up paths are not labels");
    server.stop().await;
}
