//! End-to-end tests of `arbiter.v1.Experiments` and `arbiter.v1.Allocator` over real gRPC:
//! every RPC and every error they document.

mod support;

use arbiter::pb::{self, TestStatus as TS};
use support::*;
use tonic::Code;

#[tokio::test]
async fn create_fills_defaults_and_rejects_every_bad_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 3).await;
    let mut client = server.experiments().await;

    let created = client
        .create_test(test_request("t1", &models[..2]))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.name, "t1");
    assert_eq!(created.status, TS::Running as i32);
    assert_eq!(
        created.allocation_strategy,
        pb::AllocationStrategy::ThompsonSampling as i32
    );
    assert_eq!(created.reward_model, pb::RewardModel::Gaussian as i32);
    assert_eq!((created.epsilon, created.significance_level), (0.1, 0.05));
    assert!((created.ucb_exploration - 2f64.sqrt()).abs() < 1e-15);
    assert_eq!(
        (created.minimum_sample_size, created.max_duration_days),
        (1000, 30.0)
    );
    assert!(created.early_stopping);
    assert_eq!(created.stop_loss_threshold, -0.05);
    assert_eq!(
        (
            created.min_allocation_per_arm,
            created.max_allocation_per_arm
        ),
        (0.05, 0.8)
    );
    assert_eq!(created.control_arm, "arm_0");
    let arms: Vec<(String, String, f64)> = created
        .arms
        .iter()
        .map(|a| (a.arm_id.clone(), a.model_registry_id.clone(), a.weight))
        .collect();
    assert_eq!(
        arms,
        vec![
            ("arm_0".into(), models[0].clone(), 0.5),
            ("arm_1".into(), models[1].clone(), 0.5)
        ]
    );

    let fetched = client
        .get_test(pb::GetTestRequest {
            test_id: "t1".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched, created);
    assert_status(
        client.create_test(test_request("t1", &models[..2])).await,
        Code::AlreadyExists,
        "t1",
    );

    type Edit = fn(&mut pb::CreateTestRequest);
    let cases: Vec<(&str, Edit)> = vec![
        ("test_id", |r| r.test_id = "bad id".into()),
        ("test_id", |r| r.test_id = String::new()),
        ("model_registry_ids", |r| r.model_registry_ids.truncate(1)),
        ("model_registry_ids", |r| {
            r.model_registry_ids = vec!["model_0:1.0.0".into(); 2]
        }),
        ("model_registry_ids", |r| {
            r.model_registry_ids.push("nocolon".into())
        }),
        ("model_registry_ids", |r| {
            r.model_registry_ids = (0..33).map(|i| format!("m{i}:1.0.0")).collect()
        }),
        ("weights", |r| r.weights = vec![0.5, 0.5]),
        ("weights", |r| {
            r.allocation_strategy = pb::AllocationStrategy::Fixed as i32;
            r.weights = vec![1.0];
        }),
        ("weights", |r| {
            r.allocation_strategy = pb::AllocationStrategy::Fixed as i32;
            r.weights = vec![1.0, -1.0];
        }),
        ("allocation_strategy", |r| r.allocation_strategy = 42),
        ("reward_model", |r| r.reward_model = 42),
        ("epsilon", |r| r.epsilon = Some(1.5)),
        ("epsilon", |r| r.epsilon = Some(f64::NAN)),
        ("ucb_exploration", |r| r.ucb_exploration = Some(0.0)),
        ("significance_level", |r| r.significance_level = Some(0.5)),
        ("significance_level", |r| {
            r.significance_level = Some(0.0001)
        }),
        ("minimum_sample_size", |r| r.minimum_sample_size = Some(9)),
        ("minimum_effect_size", |r| {
            r.minimum_effect_size = Some(-0.1)
        }),
        ("max_duration_days", |r| r.max_duration_days = Some(0.0)),
        ("stop_loss_threshold", |r| {
            r.stop_loss_threshold = Some(f64::INFINITY)
        }),
        ("min_allocation_per_arm", |r| {
            r.min_allocation_per_arm = Some(0.6)
        }),
        ("min_allocation_per_arm", |r| {
            r.min_allocation_per_arm = Some(-0.1)
        }),
        ("max_allocation_per_arm", |r| {
            r.max_allocation_per_arm = Some(0.4)
        }),
        ("max_allocation_per_arm", |r| {
            r.max_allocation_per_arm = Some(1.5)
        }),
        ("control_arm", |r| r.control_arm = Some("arm_7".into())),
    ];
    for (field, edit) in cases {
        let mut request = test_request("t2", &models[..2]);
        edit(&mut request);
        assert_status(
            client.create_test(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        client
            .create_test(test_request(
                "t2",
                &[models[0].clone(), "ghost:1.0.0".into()],
            ))
            .await,
        Code::NotFound,
        "ghost:1.0.0",
    );
    promote(&mut registry, &models[2], pb::ModelStatus::Deprecated)
        .await
        .expect("deprecate");
    assert_status(
        client
            .create_test(test_request("t2", &[models[0].clone(), models[2].clone()]))
            .await,
        Code::FailedPrecondition,
        "DEPRECATED",
    );
    let listed = client
        .list_tests(pb::ListTestsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tests;
    assert_eq!(listed.len(), 1, "no rejected test was created");

    // FIXED weights are normalised; a chosen control arm is kept.
    let mut fixed = test_request("fixed", &models[..2]);
    fixed.allocation_strategy = pb::AllocationStrategy::Fixed as i32;
    fixed.weights = vec![7.0, 3.0];
    fixed.control_arm = Some("arm_1".into());
    let fixed = client.create_test(fixed).await.expect("fixed").into_inner();
    assert_eq!(fixed.arms[0].weight, 0.7);
    assert_eq!(fixed.control_arm, "arm_1");
    server.stop().await;
}

#[tokio::test]
async fn pause_resume_stop_and_what_allocate_returns_in_each_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut client = server.experiments().await;
    let mut request = test_request("t", &models);
    request.control_arm = Some("arm_1".into());
    client.create_test(request).await.expect("create");
    let mut allocator = server.allocator().await;
    let allocate = pb::AllocateRequest {
        test_id: "t".into(),
        unit_key: String::new(),
    };

    let a = allocator
        .allocate(allocate.clone())
        .await
        .expect("allocate")
        .into_inner();
    assert_eq!(a.test_status, TS::Running as i32);
    assert!(
        (a.propensity - 0.5).abs() < 1e-12,
        "even split before any result: {a:?}"
    );

    let action = |requested_by: &str| pb::TestActionRequest {
        test_id: "t".into(),
        requested_by: requested_by.into(),
        reason: "investigating".into(),
    };
    assert_status(
        client.resume_test(action("ops")).await,
        Code::FailedPrecondition,
        "RUNNING",
    );
    let paused = client
        .pause_test(action("ops"))
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.status, TS::Paused as i32);
    for _ in 0..20 {
        let a = allocator
            .allocate(allocate.clone())
            .await
            .expect("allocate")
            .into_inner();
        assert_eq!(
            (a.arm_id.as_str(), a.propensity, a.test_status),
            ("arm_1", 1.0, TS::Paused as i32)
        );
    }
    let mut recorder = server.allocator().await;
    let ack = recorder
        .record_result(result("t", "arm_0", 0.01))
        .await
        .expect("paused tests accept results");
    assert!(!ack.into_inner().duplicate);
    assert_status(
        client.pause_test(action("ops")).await,
        Code::FailedPrecondition,
        "PAUSED",
    );
    client.resume_test(action("ops")).await.expect("resume");

    let stopped = client
        .stop_test(pb::StopTestRequest {
            test_id: "t".into(),
            reason: "enough".into(),
            requested_by: "lead".into(),
        })
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(stopped.status, TS::Completed as i32);
    assert_eq!(stopped.stop_reason, "enough");
    assert!(stopped.stopped_at.is_some());
    assert_eq!(stopped.total_requests, 1);

    let file = dir.path().join("ab_tests/results/t_final.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("final results file")).expect("json");
    assert_eq!(json["stop_reason"], "enough");
    assert_eq!(json["status"], "COMPLETED");
    assert!(json["stopped_at"].as_i64().is_some());
    assert_eq!(json["arms"][0]["total_requests"], 1);

    let a = allocator
        .allocate(allocate.clone())
        .await
        .expect("allocate after stop")
        .into_inner();
    assert_eq!(
        (a.arm_id.as_str(), a.propensity, a.test_status),
        ("arm_1", 1.0, TS::Completed as i32)
    );
    assert_status(
        recorder.record_result(result("t", "arm_0", 0.01)).await,
        Code::FailedPrecondition,
        "has ended",
    );
    assert_status(
        client
            .stop_test(pb::StopTestRequest {
                test_id: "t".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "COMPLETED",
    );
    assert_status(
        client.pause_test(action("ops")).await,
        Code::FailedPrecondition,
        "COMPLETED",
    );
    let results = client
        .get_test_results(pb::GetTestResultsRequest {
            test_id: "t".into(),
        })
        .await
        .expect("results");
    assert_eq!(
        results.into_inner().status,
        TS::Completed as i32,
        "ended tests stay queryable"
    );
    let completed = client
        .list_tests(pb::ListTestsRequest {
            status: Some(TS::Completed as i32),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(completed.tests.len(), 1);

    let events = audit_events(&server, "t", 0).await;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec!["test.create", "test.pause", "test.resume", "test.stop"]
    );
    assert_eq!(events[3].actor, "lead");
    assert_eq!(events[3].details["kind"], "manual");
    server.stop().await;
}

#[tokio::test]
async fn unknown_tests_are_not_found_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.experiments().await;
    let mut allocator = server.allocator().await;
    let missing = "no-such-test";
    assert_status(
        client
            .get_test(pb::GetTestRequest {
                test_id: missing.into(),
            })
            .await,
        Code::NotFound,
        missing,
    );
    assert_status(
        client
            .get_test_results(pb::GetTestResultsRequest {
                test_id: missing.into(),
            })
            .await,
        Code::NotFound,
        missing,
    );
    let action = pb::TestActionRequest {
        test_id: missing.into(),
        ..Default::default()
    };
    assert_status(
        client.pause_test(action.clone()).await,
        Code::NotFound,
        missing,
    );
    assert_status(client.resume_test(action).await, Code::NotFound, missing);
    assert_status(
        client
            .stop_test(pb::StopTestRequest {
                test_id: missing.into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        missing,
    );
    assert_status(
        allocator
            .allocate(pb::AllocateRequest {
                test_id: missing.into(),
                unit_key: String::new(),
            })
            .await,
        Code::NotFound,
        missing,
    );
    assert_status(
        allocator.record_result(result(missing, "arm_0", 0.1)).await,
        Code::NotFound,
        missing,
    );
    assert_status(
        client
            .list_tests(pb::ListTestsRequest {
                status: Some(17),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "status",
    );
    server.stop().await;
}

#[tokio::test]
async fn results_report_every_per_arm_figure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut client = server.experiments().await;
    let mut request = test_request("t", &models);
    request.allocation_strategy = pb::AllocationStrategy::Fixed as i32;
    request.significance_level = Some(0.1);
    client.create_test(request).await.expect("create");

    let mut allocator = server.allocator().await;
    for _ in 0..40 {
        allocate(&mut allocator, "t").await;
    }
    let arm0 = [0.02, -0.01, 0.035, 0.0, -0.004, 0.011];
    let mut records: Vec<pb::ResultRecord> = arm0
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let mut r = result("t", "arm_0", x);
            r.additional_metrics = [("latency_ms".to_string(), 10.0 + i as f64)].into();
            r
        })
        .collect();
    records.push(result("t", "arm_1", 0.05));
    let acks = ingest(
        &mut allocator,
        vec![pb::ResultBatch {
            sequence: 1,
            results: records,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    assert_eq!(
        (acks[0].accepted, acks[0].duplicates, acks[0].rejected.len()),
        (7, 0, 0)
    );

    let results = test_results(&server, "t").await;
    assert_eq!((results.total_requests, results.total_allocations), (7, 40));
    assert_eq!(results.status, TS::Running as i32);
    let a = &results.arms[0];
    // Reference: numpy 2 / scipy 1.17.1 on the six returns above —
    // x.sum() 0.052000000000000005, x.mean() 0.008666666666666668, x.std(ddof=1)
    // 0.01680079363204806, scipy.stats.t.interval(0.9, 5, loc=mean, scale=std/sqrt(6))
    // (-0.0051543391075791825, 0.022487672440912508), mean/std 0.5158486471814474.
    assert_eq!(a.total_requests, 6);
    assert!(
        (a.total_returns - 0.052000000000000005).abs() < 1e-15,
        "{}",
        a.total_returns
    );
    assert!((a.mean_return - 0.008666666666666668).abs() < 1e-15);
    assert!(
        (a.std_return - 0.01680079363204806).abs() < 1e-15,
        "{}",
        a.std_return
    );
    let ci = a.confidence_interval.as_ref().expect("interval");
    assert!((ci.low - (-0.0051543391075791825)).abs() < 1e-12, "{ci:?}");
    assert!((ci.high - 0.022487672440912508).abs() < 1e-12, "{ci:?}");
    assert!((a.sharpe_ratio - 0.5158486471814474).abs() < 1e-12);
    assert!((a.win_rate - 0.5).abs() < 1e-15);
    assert_eq!((a.min_return, a.max_return), (-0.01, 0.035));
    assert_eq!(a.additional_metrics["latency_ms"].count, 6);
    assert!((a.additional_metrics["latency_ms"].mean - 12.5).abs() < 1e-12);
    assert!((a.allocation_weight - 0.5).abs() < 1e-12);
    assert_eq!(
        results.arms[0].allocations + results.arms[1].allocations,
        40
    );
    let b = &results.arms[1];
    assert_eq!(
        (b.total_requests, b.std_return, b.sharpe_ratio),
        (1, 0.0, 0.0)
    );
    assert!(
        b.confidence_interval.is_none(),
        "no interval from one result"
    );
    server.stop().await;
}

#[tokio::test]
async fn ingestion_attributes_rejects_and_deduplicates_per_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut client = server.experiments().await;
    client
        .create_test(test_request("t", &models))
        .await
        .expect("create");
    let mut allocator = server.allocator().await;
    let decision = allocate(&mut allocator, "t").await;

    use pb::result_record::Attribution as A;
    let with = |attribution: Option<A>, value: f64, result_id: &str| pb::ResultRecord {
        test_id: "t".into(),
        attribution,
        return_value: value,
        result_id: result_id.into(),
        ..Default::default()
    };
    let batch1 = vec![
        with(Some(A::ArmId("arm_0".into())), 0.01, "r1"), // 0 ok
        with(Some(A::ModelRegistryId(models[1].clone())), 0.02, "r2"), // 1 ok
        with(Some(A::DecisionId(decision.decision_id)), 0.03, "r3"), // 2 ok
        with(Some(A::ArmId("arm_9".into())), 0.01, ""),   // 3 unknown arm
        with(Some(A::ArmId("arm_0".into())), f64::NAN, ""), // 4 not finite
        with(None, 0.01, ""),                             // 5 no attribution
        with(Some(A::ModelRegistryId("other:1.0.0".into())), 0.01, ""), // 6 not an arm
        with(Some(A::DecisionId(63)), 0.01, ""),          // 7 arm 63
        with(Some(A::ArmId("arm_0".into())), 0.04, "r1"), // 8 duplicate in batch
        pb::ResultRecord {
            test_id: "nope".into(),
            ..with(Some(A::ArmId("arm_0".into())), 0.01, "")
        }, // 9
    ];
    let mut bad_metric = with(Some(A::ArmId("arm_0".into())), 0.01, "");
    bad_metric.additional_metrics = [("latency_ms".to_string(), f64::INFINITY)].into();
    let batch2 = vec![
        with(Some(A::ArmId("arm_0".into())), 0.05, "r1"), // duplicate of an earlier batch
        bad_metric,
        with(Some(A::ArmId("arm_1".into())), -0.02, "r4"),
    ];
    let acks = ingest(
        &mut allocator,
        vec![
            pb::ResultBatch {
                sequence: 10,
                results: batch1,
                ..Default::default()
            },
            pb::ResultBatch {
                sequence: 11,
                results: batch2,
                ..Default::default()
            },
            pb::ResultBatch {
                sequence: 12,
                results: vec![],
                ..Default::default()
            },
        ],
    )
    .await
    .expect("the stream survives bad records");
    assert_eq!(acks.len(), 3);
    assert_eq!(
        (acks[0].sequence, acks[0].accepted, acks[0].duplicates),
        (10, 3, 1)
    );
    let rejected: Vec<(u32, i32, &str)> = acks[0]
        .rejected
        .iter()
        .map(|r| (r.index, r.code, r.message.as_str()))
        .collect();
    let expect = [
        (3, Code::InvalidArgument, "arm_9"),
        (4, Code::InvalidArgument, "return_value"),
        (5, Code::InvalidArgument, "attribution"),
        (6, Code::InvalidArgument, "other:1.0.0"),
        (7, Code::InvalidArgument, "decision_id"),
        (9, Code::NotFound, "nope"),
    ];
    assert_eq!(rejected.len(), expect.len(), "{rejected:?}");
    for ((index, code, message), (e_index, e_code, needle)) in rejected.iter().zip(expect) {
        assert_eq!((*index, *code), (e_index, e_code as i32), "{message}");
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    assert_eq!(
        (acks[1].sequence, acks[1].accepted, acks[1].duplicates),
        (11, 1, 1)
    );
    assert_eq!(acks[1].rejected[0].index, 1);
    assert!(acks[1].rejected[0].message.contains("latency_ms"));
    assert_eq!((acks[2].sequence, acks[2].accepted), (12, 0));

    let dup = allocator
        .record_result(with(Some(A::ArmId("arm_1".into())), 0.5, "r4"))
        .await
        .expect("dup");
    assert!(dup.into_inner().duplicate);
    assert_status(
        allocator
            .record_result(with(Some(A::ArmId("arm_1".into())), f64::NEG_INFINITY, ""))
            .await,
        Code::InvalidArgument,
        "return_value",
    );

    let results = test_results(&server, "t").await;
    let arm = |i: usize| {
        (
            results.arms[i].total_requests,
            results.arms[i].total_returns,
        )
    };
    let decided = if decision.arm_id == "arm_0" { 0 } else { 1 };
    let mut expected = [(1u64, 0.01f64), (2, 0.0)];
    expected[decided].0 += 1;
    expected[decided].1 += 0.03;
    for (i, (n, total)) in expected.into_iter().enumerate() {
        assert_eq!(arm(i).0, n, "arm {i}");
        assert!((arm(i).1 - total).abs() < 1e-12, "arm {i}: {:?}", arm(i));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_stream_of_overlapping_batches_is_acknowledged_in_order_and_counted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut client = server.experiments().await;
    let mut request = test_request("t", &models);
    request.early_stopping = Some(false);
    client.create_test(request).await.expect("create");
    let mut allocator = server.allocator().await;
    // 60 batches sent at once (the server applies ahead of its acknowledgements); each batch
    // repeats the last 5 ids of the one before, so deduplication must see batches that are
    // applied but not yet durable.
    const BATCHES: u64 = 60;
    let batches: Vec<pb::ResultBatch> = (0..BATCHES)
        .map(|b| pb::ResultBatch {
            sequence: 1000 + b,
            results: ((b * 20).saturating_sub(5)..b * 20 + 20)
                .map(|n| {
                    let mut r = result("t", if n % 2 == 0 { "arm_0" } else { "arm_1" }, 0.01);
                    r.result_id = format!("id-{n}");
                    r
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let acks = ingest(&mut allocator, batches).await.expect("ingest");
    let seen: Vec<(u64, u32, u32)> = acks
        .iter()
        .map(|a| (a.sequence, a.accepted, a.duplicates))
        .collect();
    let expected: Vec<(u64, u32, u32)> = (0..BATCHES)
        .map(|b| (1000 + b, 20, if b == 0 { 0 } else { 5 }))
        .collect();
    assert_eq!(seen, expected);
    let results = test_results(&server, "t").await;
    assert_eq!(results.total_requests, BATCHES * 20);
}

#[tokio::test]
async fn allocate_stream_answers_in_order_and_unit_keys_are_sticky() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 3).await;
    let mut client = server.experiments().await;
    let mut fixed = test_request("fixed", &models);
    fixed.allocation_strategy = pb::AllocationStrategy::Fixed as i32;
    fixed.min_allocation_per_arm = Some(0.0);
    client.create_test(fixed).await.expect("fixed");
    client
        .create_test(test_request("bandit", &models[..2]))
        .await
        .expect("bandit");

    let requests: Vec<pb::AllocateRequest> = (0..500)
        .map(|i| pb::AllocateRequest {
            test_id: if i % 3 == 0 {
                "bandit".into()
            } else {
                "fixed".into()
            },
            unit_key: format!("order-{}", i % 7),
        })
        .collect();
    let mut allocator = server.allocator().await;
    let mut responses = allocator
        .allocate_stream(tokio_stream::iter(requests.clone()))
        .await
        .expect("stream")
        .into_inner();
    let mut got = Vec::new();
    while let Some(a) = responses.message().await.expect("response") {
        got.push(a);
    }
    assert_eq!(got.len(), 500);
    let mut arm_of_key = std::collections::HashMap::new();
    for (request, response) in requests.iter().zip(&got) {
        assert_eq!(
            request.test_id, response.test_id,
            "responses are in request order"
        );
        if response.test_id == "fixed" {
            let arm = arm_of_key
                .entry(request.unit_key.clone())
                .or_insert(response.arm_id.clone());
            assert_eq!(*arm, response.arm_id, "unit key {} moved", request.unit_key);
        }
    }
    // The same key 1000 times over unary calls: always the same arm.
    let first = allocator
        .allocate(pb::AllocateRequest {
            test_id: "fixed".into(),
            unit_key: "AAPL-42".into(),
        })
        .await
        .expect("allocate")
        .into_inner();
    for _ in 0..1000 {
        let again = allocator
            .allocate(pb::AllocateRequest {
                test_id: "fixed".into(),
                unit_key: "AAPL-42".into(),
            })
            .await
            .expect("allocate")
            .into_inner();
        assert_eq!(again.arm_id, first.arm_id);
        assert!((again.propensity - 1.0 / 3.0).abs() < 1e-12);
    }
    // Distinct keys spread over the arms.
    let mut seen = std::collections::HashSet::new();
    for k in 0..200 {
        let a = allocator
            .allocate(pb::AllocateRequest {
                test_id: "fixed".into(),
                unit_key: format!("key-{k}"),
            })
            .await
            .expect("allocate")
            .into_inner();
        seen.insert(a.arm_id);
    }
    assert_eq!(seen.len(), 3);
    // An unknown test ends the stream with NOT_FOUND.
    let bad = vec![pb::AllocateRequest {
        test_id: "nope".into(),
        unit_key: String::new(),
    }];
    let mut responses = allocator
        .allocate_stream(tokio_stream::iter(bad))
        .await
        .expect("stream")
        .into_inner();
    assert_status(responses.message().await, Code::NotFound, "nope");
    server.stop().await;
}

#[tokio::test]
async fn results_move_allocations_and_feed_model_performance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut client = server.experiments().await;
    let mut request = test_request("t", &models);
    request.min_allocation_per_arm = Some(0.0);
    request.max_allocation_per_arm = Some(1.0);
    client.create_test(request).await.expect("create");
    let mut allocator = server.allocator().await;
    let mut batch = Vec::new();
    for _ in 0..50 {
        batch.push(result("t", "arm_0", 0.02));
        batch.push(result("t", "arm_1", -0.01));
    }
    ingest(
        &mut allocator,
        vec![pb::ResultBatch {
            sequence: 1,
            results: batch,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    // Reflected in allocations right after the acknowledgement.
    let mut to_arm0 = 0;
    for _ in 0..1000 {
        let a = allocate(&mut allocator, "t").await;
        if a.arm_id == "arm_0" {
            to_arm0 += 1;
            assert!(a.propensity > 0.9);
        }
    }
    // P(arm_0 best) ≈ 1 (Beta(51,1) vs Beta(1,51)); 900 of 1000 fails with probability < 1e-40.
    assert!(to_arm0 > 900, "{to_arm0}");

    let perf = registry
        .get_model_performance(pb::GetModelPerformanceRequest {
            model_id: "model_0".into(),
        })
        .await
        .expect("performance")
        .into_inner()
        .live
        .expect("live");
    assert_eq!((perf.results, perf.tests), (50, 1));
    assert!((perf.mean_return - 0.02).abs() < 1e-12 && (perf.win_rate - 1.0).abs() < 1e-12);

    // Arms of a running test cannot be deleted, even with force.
    assert_status(
        registry
            .delete_model(pb::DeleteModelRequest {
                registry_id: models[0].clone(),
                force: true,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "active test \"t\"",
    );
    client
        .stop_test(pb::StopTestRequest {
            test_id: "t".into(),
            ..Default::default()
        })
        .await
        .expect("stop");
    registry
        .delete_model(pb::DeleteModelRequest {
            registry_id: models[0].clone(),
            ..Default::default()
        })
        .await
        .expect("deletable once the test ended");
    server.stop().await;
}

#[tokio::test]
async fn list_tests_pages_through_every_test_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut client = server.experiments().await;
    for i in 0..5 {
        client
            .create_test(test_request(&format!("t{i}"), &models))
            .await
            .expect("create");
    }
    client
        .stop_test(pb::StopTestRequest {
            test_id: "t1".into(),
            ..Default::default()
        })
        .await
        .expect("stop");
    let ids = |tests: &[pb::Test]| tests.iter().map(|t| t.test_id.clone()).collect::<Vec<_>>();
    let everything = client
        .list_tests(pb::ListTestsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(everything.tests.len(), 5);
    assert!(everything.next_page_token.is_empty());

    for (status, want) in [
        (None, ids(&everything.tests)),
        (Some(TS::Running), {
            let mut running = ids(&everything.tests);
            running.retain(|id| id != "t1");
            running
        }),
    ] {
        let pages: Vec<Vec<String>> = list_test_pages(&mut client, status, 2)
            .await
            .iter()
            .map(|page| ids(page))
            .collect();
        assert!(pages.iter().all(|page| page.len() <= 2));
        assert_eq!(pages.concat(), want, "pages of {status:?}: {pages:?}");
        assert_eq!(pages.len(), want.len().div_ceil(2));
    }

    for bad in ["nonsense", "12:", ":t1", "x:t1"] {
        assert_status(
            client
                .list_tests(pb::ListTestsRequest {
                    page_token: bad.into(),
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "page_token",
        );
    }
    server.stop().await;
}
