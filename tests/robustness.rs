//! Hostile and careless input over real gRPC: nothing a client sends may crash the server, brick
//! its data directory, or be silently changed; every refusal names what was wrong.

mod support;

use arbiter::experiment::IngestLimits;
use arbiter::pb;
use support::*;
use tonic::Code;

/// A running two-arm test `t` (FIXED, no early stop) on `server`.
async fn two_arm_test(server: &TestServer, test_id: &str) {
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    server
        .experiments()
        .await
        .create_test(pb::CreateTestRequest {
            allocation_strategy: pb::AllocationStrategy::Fixed as i32,
            early_stopping: Some(false),
            ..test_request(test_id, &models)
        })
        .await
        .expect("create");
}

/// One batch over one IngestResults stream.
async fn ingest_one(server: &TestServer, results: Vec<pb::ResultRecord>) -> pb::BatchAck {
    let mut client = server.allocator().await;
    let batch = pb::ResultBatch {
        sequence: 1,
        results,
    };
    let mut acks = ingest(&mut client, vec![batch]).await.expect("ingest");
    assert_eq!(acks.len(), 1);
    acks.remove(0)
}

#[tokio::test]
async fn returns_beyond_the_magnitude_limit_are_rejected_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    two_arm_test(&server, "t").await;
    let mut with_metric = result("t", "arm_1", 0.5);
    with_metric
        .additional_metrics
        .insert("slippage".into(), -2e9);
    let ack = ingest_one(
        &server,
        vec![
            result("t", "arm_0", 1e308),
            result("t", "arm_0", -1e308),
            result("t", "arm_0", 1.0),
            with_metric,
            result("t", "arm_1", 1e9),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 2, "{ack:?}");
    let rejected: Vec<(u32, i32)> = ack.rejected.iter().map(|r| (r.index, r.code)).collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(rejected, vec![(0, invalid), (1, invalid), (3, invalid)]);
    assert!(
        ack.rejected[0].message.contains("exceeds the limit of 1e9"),
        "{:?}",
        ack.rejected[0]
    );
    assert!(
        ack.rejected[2].message.contains("slippage"),
        "{:?}",
        ack.rejected[2]
    );
    let results = test_results(&server, "t").await;
    assert_eq!(results.arms[0].total_requests, 1);
    assert_eq!(results.arms[1].total_requests, 1);
    assert!(
        results.arms[1].additional_metrics.is_empty(),
        "a rejected record changes nothing"
    );
    server.stop().await;
}

/// Statistics poisoned by overflowing returns, as a server configured with a huge limit (or a
/// build without one) stores them: every read answers, the stop writes its final file, and the
/// server starts again on that directory.
#[tokio::test]
async fn poisoned_statistics_never_panic_a_read_a_stop_or_a_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lax = arbiter::server::ServerConfig {
        ingest: IngestLimits {
            max_abs_value: f64::MAX,
            ..IngestLimits::default()
        },
        ..TestServer::config(dir.path())
    };
    let server = TestServer::start_config(lax.clone()).await;
    two_arm_test(&server, "t").await;
    let ack = ingest_one(
        &server,
        vec![
            result("t", "arm_0", 1e308),
            result("t", "arm_0", -1e308),
            result("t", "arm_0", 1.0),
            result("t", "arm_1", 0.01),
            result("t", "arm_1", 0.02),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 5, "{ack:?}");
    let results = test_results(&server, "t").await;
    assert_eq!(results.arms[0].total_requests, 3);
    let comparison = results.significance_test.expect("two arms");
    assert!(!comparison.significant);
    assert_eq!(
        comparison.p_value, 1.0,
        "Welch's test is absent: {comparison:?}"
    );
    let stopped = server
        .experiments()
        .await
        .stop_test(pb::StopTestRequest {
            test_id: "t".into(),
            reason: "poisoned".into(),
            ..Default::default()
        })
        .await
        .expect("stop answers")
        .into_inner();
    assert_eq!(stopped.status, pb::TestStatus::Completed as i32);
    let final_file = dir.path().join("ab_tests/results/t_final.json");
    assert!(final_file.exists(), "the stop wrote its final file");
    server.stop().await;

    // The final file is lost and cannot be written again (a directory stands in the way of its
    // temporary file): the server starts anyway and serves the test.
    std::fs::remove_file(&final_file).expect("remove final file");
    std::fs::create_dir(dir.path().join("ab_tests/results/t_final.json.tmp")).expect("block");
    let server = TestServer::start(dir.path()).await;
    let results = test_results(&server, "t").await;
    assert_eq!(results.status, pb::TestStatus::Completed as i32);
    assert_eq!(results.arms[0].total_requests, 3);
    server.stop().await;

    // Once the way is clear, the next start writes it.
    std::fs::remove_dir(dir.path().join("ab_tests/results/t_final.json.tmp")).expect("unblock");
    let server = TestServer::start(dir.path()).await;
    assert!(final_file.exists(), "written at start");
    server.stop().await;
}

#[tokio::test]
async fn a_record_with_too_many_metric_names_is_rejected_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    two_arm_test(&server, "t").await;
    let with_metrics = |names: std::ops::Range<usize>| {
        let mut r = result("t", "arm_0", 0.1);
        r.additional_metrics = names.map(|i| (format!("m{i:02}"), 1.0)).collect();
        r
    };
    let ack = ingest_one(&server, vec![with_metrics(0..33)]).await;
    assert_eq!((ack.accepted, ack.rejected.len()), (0, 1), "{ack:?}");
    assert_eq!(ack.rejected[0].code, Code::InvalidArgument as i32);
    assert!(
        ack.rejected[0].message.contains("at most 32"),
        "{:?}",
        ack.rejected[0]
    );

    // 20 names known; a record adding 13 more would exceed 32 and is refused, not cut.
    let ack = ingest_one(&server, vec![with_metrics(0..20), with_metrics(20..33)]).await;
    assert_eq!((ack.accepted, ack.rejected.len()), (1, 1), "{ack:?}");
    assert_eq!(ack.rejected[0].index, 1);
    let ack = ingest_one(&server, vec![with_metrics(20..32)]).await;
    assert_eq!(ack.accepted, 1, "exactly 32 names fit: {ack:?}");
    let results = test_results(&server, "t").await;
    let metrics = &results.arms[0].additional_metrics;
    assert_eq!(metrics.len(), 32);
    assert_eq!(metrics["m00"].count, 1);
    assert_eq!(metrics["m25"].count, 1);
    server.stop().await;
}

#[tokio::test]
async fn batches_beyond_their_limits_are_refused_whole_with_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = arbiter::server::ServerConfig {
        ingest: IngestLimits {
            max_batch_records: 1000,
            max_batch_tests: 100,
            ..IngestLimits::default()
        },
        ..TestServer::config(dir.path())
    };
    let server = TestServer::start_config(config).await;
    two_arm_test(&server, "t").await;
    let mut client = server.allocator().await;

    let too_many_records = (0..1001).map(|i| result("t", "arm_0", i as f64)).collect();
    let batch = pb::ResultBatch {
        sequence: 1,
        results: too_many_records,
    };
    let err = ingest(&mut client, vec![batch]).await.expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("1000 records per batch"), "{err:?}");

    let spread = |tests: usize| pb::ResultBatch {
        sequence: 2,
        results: (0..tests)
            .map(|i| result(&format!("unknown-{i}"), "arm_0", 0.1))
            .collect(),
    };
    let err = ingest(&mut client, vec![spread(101)])
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("100 distinct tests"), "{err:?}");

    // At the limits, each record gets its own answer.
    let acks = ingest(&mut client, vec![spread(100)])
        .await
        .expect("at the limit");
    assert_eq!(acks[0].rejected.len(), 100);
    assert!(acks[0]
        .rejected
        .iter()
        .all(|r| r.code == Code::NotFound as i32));
    assert_eq!(test_results(&server, "t").await.total_requests, 0);
    server.stop().await;
}
