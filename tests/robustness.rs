//! Hostile and careless input over real gRPC: nothing a client sends may crash the server, brick
//! its data directory, or be silently changed; every refusal names what was wrong.

mod support;

use arbiter::experiment::IngestLimits;
use arbiter::pb;
use support::*;
use tonic::Code;

/// A running two-arm test (FIXED, no early stop) on `server`, over two new models; returns them.
async fn two_arm_test(server: &TestServer, test_id: &str) -> Vec<String> {
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
    models
}

/// One batch over one IngestResults stream.
async fn ingest_one(server: &TestServer, results: Vec<pb::ResultRecord>) -> pb::BatchAck {
    let mut client = server.allocator().await;
    let batch = pb::ResultBatch {
        sequence: 1,
        results,
        ..Default::default()
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
        ..Default::default()
    };
    let err = ingest(&mut client, vec![batch]).await.expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("1000 records per batch"), "{err:?}");

    let spread = |tests: usize| pb::ResultBatch {
        sequence: 2,
        results: (0..tests)
            .map(|i| result(&format!("unknown-{i}"), "arm_0", 0.1))
            .collect(),
        ..Default::default()
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

#[tokio::test]
async fn dot_ids_are_rejected_and_no_file_lands_outside_artifacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    for id in [".", "..", ".hidden"] {
        let err = register(&mut registry, header(id, "1.0.0", "alice"), b"weights")
            .await
            .expect_err(id);
        assert_eq!(err.code(), Code::InvalidArgument, "{id}: {err:?}");
        assert!(err.message().contains("model_id"), "{id}: {err:?}");
    }
    let models = register_models(&mut registry, 2).await;
    for id in [".", "..", ".t"] {
        let err = server
            .experiments()
            .await
            .create_test(test_request(id, &models))
            .await
            .expect_err(id);
        assert_eq!(err.code(), Code::InvalidArgument, "{id}: {err:?}");
    }
    let mut top: Vec<String> = dir_entries(dir.path())
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".bin"))
        .collect();
    top.sort();
    assert!(top.is_empty(), "artifacts outside artifacts/: {top:?}");
    server.stop().await;
}

#[tokio::test]
async fn long_values_are_cut_in_messages_and_long_versions_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let huge = "x".repeat(100_000);
    let err = server
        .experiments()
        .await
        .get_test(pb::GetTestRequest {
            test_id: huge.clone(),
        })
        .await
        .expect_err("unknown");
    // The real error arrives (not RESOURCE_EXHAUSTED for oversized metadata), with the id cut.
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().len() < 200, "{} bytes", err.message().len());
    assert!(
        err.message().contains("(100000 bytes)"),
        "{}",
        err.message()
    );

    let mut registry = server.registry().await;
    let version = format!("1.0.0-{}", "a".repeat(300));
    let err = register(&mut registry, header("m", &version, "alice"), b"w")
        .await
        .expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most 128"), "{err:?}");
    server.stop().await;
}

/// Sends raw bytes as the request message of a unary method.
#[derive(Debug, Default, Clone)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    let cases: [(&str, &str, Vec<u8>); 2] = [
        // test_id (field 1, a string) holding invalid UTF-8.
        (
            "invalid UTF-8",
            "/arbiter.v1.Experiments/GetTest",
            vec![0x0a, 0x02, 0xff, 0xfe],
        ),
        // Field 1 with a varint of eleven continuation bytes.
        (
            "bad varint",
            "/arbiter.v1.Allocator/Allocate",
            vec![
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
    ];
    for (what, path, bytes) in cases {
        raw.ready().await.expect("ready");
        let err = raw
            .unary(
                tonic::Request::new(bytes),
                http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("could not be decoded"),
            "{what}: {err:?}"
        );
    }

    // A policy nested beyond prost's recursion limit, in a client stream.
    let mut policy = prost_types::Struct::default();
    for _ in 0..150 {
        let value = prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(policy)),
        };
        policy = prost_types::Struct {
            fields: [("x".to_string(), value)].into(),
        };
    }
    let mut deep = header("deep", "1.0.0", "alice");
    deep.policy_config = Some(policy);
    let err = register(&mut server.registry().await, deep, b"w")
        .await
        .expect_err("too deep");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn list_tests_pages_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 2).await;
    let mut client = server.experiments().await;
    for i in 0..101 {
        client
            .create_test(test_request(&format!("t{i:03}"), &models))
            .await
            .expect("create");
    }
    let first = client
        .list_tests(pb::ListTestsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.tests.len(), 100, "page_size 0 is the default page");
    assert!(!first.next_page_token.is_empty());
    let huge = client
        .list_tests(pb::ListTestsRequest {
            page_size: u32::MAX,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        huge.tests.len(),
        101,
        "reduced to the maximum, which holds them all"
    );
    server.stop().await;
}

#[tokio::test]
async fn only_decision_ids_issued_for_the_test_attribute_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = two_arm_test(&server, "t").await;
    server
        .experiments()
        .await
        .create_test(test_request("other", &models))
        .await
        .expect("create");
    let mut allocator = server.allocator().await;
    let ours = allocate(&mut allocator, "t").await;
    let theirs = allocate(&mut allocator, "other").await;
    let by_decision = |decision_id: u64| pb::ResultRecord {
        test_id: "t".into(),
        attribution: Some(pb::result_record::Attribution::DecisionId(decision_id)),
        return_value: 0.01,
        ..Default::default()
    };
    let ack = ingest_one(
        &server,
        vec![
            by_decision(ours.decision_id),
            by_decision(theirs.decision_id),
            by_decision((1 << 40) | 1),
            by_decision(ours.decision_id ^ (1 << 30)),
        ],
    )
    .await;
    assert_eq!(ack.accepted, 1, "{ack:?}");
    let rejected: Vec<u32> = ack.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, vec![1, 2, 3]);
    assert!(ack
        .rejected
        .iter()
        .all(|r| r.code == Code::InvalidArgument as i32 && r.message.contains("not issued")));
    let arm = &test_results(&server, "t").await.arms;
    let credited: Vec<u64> = arm.iter().map(|a| a.total_requests).collect();
    let expected_arm: usize = ours.arm_id.trim_start_matches("arm_").parse().expect("arm");
    assert_eq!(credited[expected_arm], 1, "{credited:?}");
    server.stop().await;

    // Ids stay valid across a restart.
    let server = TestServer::start(dir.path()).await;
    let ack = ingest_one(&server, vec![by_decision(ours.decision_id)]).await;
    assert_eq!(ack.accepted, 1, "{ack:?}");
    server.stop().await;
}

#[tokio::test]
async fn weights_and_sample_sizes_that_cannot_be_computed_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 2).await;
    let mut client = server.experiments().await;
    let err = client
        .create_test(pb::CreateTestRequest {
            allocation_strategy: pb::AllocationStrategy::Fixed as i32,
            weights: vec![1e308, 1e308],
            ..test_request("t", &models)
        })
        .await
        .expect_err("cannot be normalised");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("weights"), "{err:?}");
    let estimate = client
        .estimate_sample_size(pb::EstimateSampleSizeRequest {
            std: 1e-300,
            minimum_effect_size: 0.01,
            ..Default::default()
        })
        .await
        .expect("estimate")
        .into_inner();
    assert_eq!((estimate.per_arm, estimate.total), (1, 2));
    server.stop().await;
}

/// Allocations racing a stop: the final counts hold exactly the decisions answered RUNNING, and
/// an ended test's counts never move again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_racing_a_stop_are_counted_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    two_arm_test(&server, "t").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let mut client = server.allocator().await;
        let stop = stop.clone();
        callers.push(tokio::spawn(async move {
            let (mut running, mut ended) = (0u64, 0u64);
            // Keep allocating until the stop has been answered and a few ended answers came.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || ended < 20 {
                let a = allocate(&mut client, "t").await;
                if a.test_status == pb::TestStatus::Running as i32 {
                    running += 1;
                } else {
                    ended += 1;
                }
            }
            running
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stopped = server
        .experiments()
        .await
        .stop_test(pb::StopTestRequest {
            test_id: "t".into(),
            reason: "race".into(),
            ..Default::default()
        })
        .await
        .expect("stop")
        .into_inner();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut running = 0;
    for caller in callers {
        running += caller.await.expect("caller");
    }
    assert!(running > 0);
    assert_eq!(stopped.total_allocations, running, "the stop's answer");
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("ab_tests/results/t_final.json")).expect("final file"),
    )
    .expect("json");
    assert_eq!(file["total_allocations"], running, "the final file");
    let mut client = server.allocator().await;
    for _ in 0..200 {
        allocate(&mut client, "t").await;
    }
    let results = test_results(&server, "t").await;
    assert_eq!(
        results.total_allocations, running,
        "unchanged after the end"
    );
    server.stop().await;
}

#[tokio::test]
async fn stalled_uploads_are_bounded_and_abandoned_after_their_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry_config = arbiter::registry::RegistryConfig {
        max_concurrent_uploads: 3,
        upload_idle_timeout: std::time::Duration::from_millis(600),
        ..Default::default()
    };
    let server = TestServer::start_config(arbiter::server::ServerConfig {
        registry: registry_config,
        ..TestServer::config(dir.path())
    })
    .await;
    // Three uploads send their header and one chunk, then stall (their senders stay open).
    let mut stalled = Vec::new();
    for i in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        for message in registration_messages(header(&format!("m{i}"), "1.0.0", "alice"), b"w", 1) {
            tx.send(message).await.expect("queue");
        }
        let mut client = server.registry().await;
        let call = tokio::spawn(async move {
            client
                .register_model(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        stalled.push((tx, call));
    }
    // Each holds its temporary file once its header has arrived.
    let tmp = dir.path().join("tmp");
    for _ in 0..100 {
        if dir_entries(&tmp).len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(dir_entries(&tmp).len(), 3, "three uploads in progress");
    let mut client = server.registry().await;
    let err = register(&mut client, header("late", "1.0.0", "alice"), b"w")
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("3 uploads"), "{err:?}");

    // After the idle timeout each stalled upload fails and leaves nothing behind.
    for (tx, call) in stalled {
        let err = call.await.expect("join").expect_err("abandoned");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        drop(tx);
    }
    assert!(dir_entries(&tmp).is_empty(), "{:?}", dir_entries(&tmp));
    register(&mut client, header("late", "1.0.0", "alice"), b"w")
        .await
        .expect("room again");
    server.stop().await;
}

#[tokio::test]
async fn an_upload_trickling_below_the_minimum_rate_is_abandoned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry_config = arbiter::registry::RegistryConfig {
        upload_idle_timeout: std::time::Duration::from_millis(300),
        upload_min_bytes_per_sec: 1 << 20,
        ..Default::default()
    };
    let server = TestServer::start_config(arbiter::server::ServerConfig {
        registry: registry_config,
        ..TestServer::config(dir.path())
    })
    .await;
    // One byte every 200 ms: never idle long enough for the idle timeout, far below 1 MiB/s.
    let messages = registration_messages(header("slow", "1.0.0", "alice"), &[7u8; 20], 1);
    let trickle = tokio_stream::StreamExt::throttle(
        tokio_stream::iter(messages),
        std::time::Duration::from_millis(200),
    );
    let err = server
        .registry()
        .await
        .register_model(trickle)
        .await
        .expect_err("too slow");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("below the minimum"), "{err:?}");
    assert!(dir_entries(&dir.path().join("tmp")).is_empty());
    server.stop().await;
}
