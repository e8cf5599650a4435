//! The client crate (`arbiter-client`) against a real server: its decisions follow the server's
//! tables, FIXED keys get the server's arms, its decision ids attribute results, table changes
//! reach it, and it keeps deciding while the server is away.

mod support;

use std::time::Duration;

use arbiter::pb;
use arbiter_client::{Freshness, LocalAllocator, TestStatus, WatchOptions};
use support::*;

fn endpoint(server: &TestServer) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(server.url()).expect("url")
}

/// A client watching `test_ids` (empty: every test), ready.
async fn watching(server: &TestServer, test_ids: &[&str], options: WatchOptions) -> LocalAllocator {
    let allocator = LocalAllocator::start(vec![endpoint(server)], options.tests(test_ids.to_vec()));
    assert!(
        allocator.ready(Duration::from_secs(10)).await,
        "no tables within 10 s"
    );
    allocator
}

async fn create(server: &TestServer, request: pb::CreateTestRequest) {
    server
        .experiments()
        .await
        .create_test(request)
        .await
        .expect("create");
}

/// χ² statistic of `counts` against `probabilities`.
fn chi_square(counts: &[u64], probabilities: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(probabilities)
        .map(|(&c, &p)| {
            let e = n as f64 * p;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

#[tokio::test]
async fn client_decisions_follow_the_servers_table_and_fixed_keys_get_the_servers_arms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 3).await;
    create(
        &server,
        pb::CreateTestRequest {
            allocation_strategy: pb::AllocationStrategy::Fixed as i32,
            weights: vec![0.6, 0.3, 0.1],
            ..test_request("fixed", &models)
        },
    )
    .await;
    create(&server, test_request("thompson", &models)).await;
    let allocator = watching(&server, &[], WatchOptions::new("router-a")).await;
    assert_eq!(allocator.freshness(), Freshness::Current);

    // 200k draws per test against the table the client holds (a FIXED table and a bandit's):
    // χ² with 2 degrees of freedom; 13.8 is its 0.999 quantile.
    for test_id in ["fixed", "thompson"] {
        let p = allocator.probabilities(test_id).expect("table held");
        let mut counts = [0u64; 3];
        for _ in 0..200_000 {
            let d = allocator.allocate(test_id, "").expect("decision");
            assert_eq!(d.propensity, p[d.arm_index()]);
            assert!(!d.stale && !d.fell_back);
            counts[d.arm_index()] += 1;
        }
        let x2 = chi_square(&counts, &p);
        assert!(x2 < 13.8, "{test_id}: {counts:?} against {p:?}: χ² = {x2}");
    }

    // FIXED unit keys: the client's arm is the server's, key by key.
    let mut server_allocator = server.allocator().await;
    for i in 0..500 {
        let key = format!("order-{i}");
        let local = allocator.allocate("fixed", &key).expect("decision");
        let remote = server_allocator
            .allocate(pb::AllocateRequest {
                test_id: "fixed".into(),
                unit_key: key.clone(),
            })
            .await
            .expect("allocate")
            .into_inner();
        assert_eq!(local.arm_id(), remote.arm_id, "{key}");
        assert_eq!(local.model_registry_id(), remote.model_registry_id, "{key}");
        assert_eq!(local.propensity, remote.propensity, "{key}");
    }

    // The client's decision ids attribute results to their arm; a tampered one is refused.
    let mut sent = [0u64; 3];
    let mut records = Vec::new();
    for i in 0..300 {
        let d = allocator.allocate("thompson", "").expect("decision");
        sent[d.arm_index()] += 1;
        records.push(pb::ResultRecord {
            test_id: "thompson".into(),
            attribution: Some(pb::result_record::Attribution::DecisionId(d.decision_id)),
            return_value: 0.001,
            result_id: format!("r-{i}"),
            ..Default::default()
        });
    }
    let forged = allocator
        .allocate("thompson", "")
        .expect("decision")
        .decision_id
        ^ (1 << 30);
    records.push(pb::ResultRecord {
        test_id: "thompson".into(),
        attribution: Some(pb::result_record::Attribution::DecisionId(forged)),
        return_value: 0.001,
        ..Default::default()
    });
    let acks = ingest(
        &mut server.allocator().await,
        vec![pb::ResultBatch {
            sequence: 1,
            results: records,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    assert_eq!(acks[0].accepted, 300, "{:?}", acks[0]);
    assert_eq!(acks[0].rejected.len(), 1, "{:?}", acks[0]);
    assert_eq!(acks[0].rejected[0].index, 300);
    let results = test_results(&server, "thompson").await;
    let per_arm: Vec<u64> = results.arms.iter().map(|a| a.total_requests).collect();
    assert_eq!(
        per_arm,
        sent.to_vec(),
        "results counted for the arms decided"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_table_change_after_results_reaches_a_watching_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;
    let allocator = watching(&server, &["t"], WatchOptions::new("router-b")).await;
    let (first_version, status) = allocator.table_of("t").expect("table");
    assert_eq!(status, TestStatus::Running);
    assert_eq!(allocator.probabilities("t").expect("p"), vec![0.5, 0.5]);

    // arm_1 returns more: Thompson sampling moves its share towards the floor/cap.
    let mut batch = Vec::new();
    for i in 0..200 {
        batch.push(result("t", "arm_0", -0.01 + (i % 3) as f64 * 1e-4));
        batch.push(result("t", "arm_1", 0.02 + (i % 3) as f64 * 1e-4));
    }
    ingest(
        &mut server.allocator().await,
        vec![pb::ResultBatch {
            sequence: 1,
            results: batch,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    let moved = allocator
        .wait_for_table("t", Duration::from_secs(10), |version, _, p| {
            version > first_version && p[1] > 0.7
        })
        .await;
    assert!(
        moved,
        "the new table never reached the client: {:?} {:?}",
        allocator.table_of("t"),
        allocator.probabilities("t")
    );

    // The end of the test reaches it too: the winner (or control) with propensity 1.
    server
        .experiments()
        .await
        .stop_test(pb::StopTestRequest {
            test_id: "t".into(),
            reason: "enough".into(),
            requested_by: "quant".into(),
        })
        .await
        .expect("stop");
    let ended = allocator
        .wait_for_table("t", Duration::from_secs(10), |_, status, _| {
            status.is_ended()
        })
        .await;
    assert!(ended, "{:?}", allocator.table_of("t"));
    // What the server's Allocate answers for the ended test.
    let answer = allocate(&mut server.allocator().await, "t").await;
    let d = allocator.allocate("t", "").expect("decision");
    assert_eq!((d.arm_id(), d.propensity), (answer.arm_id.as_str(), 1.0));
    assert_eq!(d.test_status(), TestStatus::Completed);
    let winner = allocator.winner("t");
    assert!(
        winner.is_none() || winner.as_deref() == Some(answer.arm_id.as_str()),
        "{winner:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_client_keeps_deciding_while_the_server_is_stopped_and_resumes_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let addr = server.addr;
    test_over_two_models(&server, "t").await;
    let mut options = WatchOptions::new("router-c");
    options.stale_after = Duration::from_millis(1500);
    options.max_age = Some(Duration::from_secs(4));
    options.reconnect_max = Duration::from_millis(200);
    let allocator = watching(&server, &["t"], options).await;
    server.stop().await;

    // Stale after 1.5 s without word, still drawing from the table.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(allocator.freshness(), Freshness::Stale);
    let mut arms = [0u32; 2];
    for _ in 0..1000 {
        let d = allocator
            .allocate("t", "")
            .expect("decision while the server is down");
        assert!(d.stale && !d.fell_back);
        assert_eq!(d.propensity, 0.5);
        arms[d.arm_index()] += 1;
    }
    assert!(arms[0] > 400 && arms[1] > 400, "{arms:?}");
    // Past max_age: the control arm, propensity 1, not an allocation.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(allocator.freshness(), Freshness::Expired);
    let d = allocator.allocate("t", "").expect("decision");
    assert!(d.fell_back && d.stale);
    assert_eq!((d.arm_id(), d.propensity), ("arm_0", 1.0));

    // The server comes back on its address: the client resubscribes and is current again.
    let server = TestServer::start_on(addr, TestServer::config(dir.path())).await;
    let mut waited = Duration::ZERO;
    while allocator.freshness() != Freshness::Current {
        assert!(waited < Duration::from_secs(10), "never current again");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let d = allocator.allocate("t", "").expect("decision");
    assert!(!d.stale && !d.fell_back);
    assert_eq!(d.propensity, 0.5);
    server.stop().await;
}

#[tokio::test]
async fn a_watch_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;
    let mut client = server.allocator().await;
    let status = client
        .watch_allocations(pb::WatchAllocationsRequest {
            test_ids: vec!["t".into()],
            client_id: String::new(),
        })
        .await
        .expect_err("no client id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("client_id"), "{status:?}");
    let status = client
        .watch_allocations(pb::WatchAllocationsRequest {
            test_ids: vec!["t".into(), "nope".into()],
            client_id: "c".into(),
        })
        .await
        .expect_err("unknown test");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("nope"), "{status:?}");
    server.stop().await;
}

#[tokio::test]
async fn reported_decision_counts_make_allocations_and_srm_as_if_the_server_had_decided() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 3).await;
    let weights = [0.6, 0.3, 0.1];
    create(
        &server,
        pb::CreateTestRequest {
            allocation_strategy: pb::AllocationStrategy::Fixed as i32,
            weights: weights.to_vec(),
            ..test_request("t", &models)
        },
    )
    .await;
    let allocator = watching(&server, &["t"], WatchOptions::new("router-d")).await;
    let reporter = arbiter_client::Reporter::start(
        vec![endpoint(&server)],
        Some(allocator.clone()),
        arbiter_client::ReporterOptions::new("router-d"),
    );
    // 3000 decisions here, 2000 on the server, counted by arm on both sides.
    let mut counts = [0u64; 3];
    for i in 0..3000 {
        let d = allocator.allocate("t", &format!("k{i}")).expect("decision");
        counts[d.arm_index()] += 1;
        if i % 10 == 0 {
            reporter.report(d.result(0.001, "")).await;
        }
    }
    let mut remote = server.allocator().await;
    for _ in 0..2000 {
        let a = allocate(&mut remote, "t").await;
        let arm: usize = a.arm_id.trim_start_matches("arm_").parse().expect("arm");
        counts[arm] += 1;
    }
    assert!(reporter.flush(Duration::from_secs(10)).await, "flush");
    let stats = reporter.stats();
    assert_eq!(stats.accepted, 300, "{stats:?}");
    assert!(stats.counts_accepted >= 1, "{stats:?}");
    assert_eq!(reporter.outstanding(), 0);

    let results = test_results(&server, "t").await;
    let allocations: Vec<u64> = results.arms.iter().map(|a| a.allocations).collect();
    assert_eq!(allocations, counts.to_vec(), "every decision counted once");
    assert_eq!(results.total_allocations, 5000);
    // The sample-ratio check as the server computes it for its own decisions: χ² of the counts
    // against n·p (FIXED: p never changes), 2 degrees of freedom.
    let x2: f64 = counts
        .iter()
        .zip(weights)
        .map(|(&c, p)| (c as f64 - 5000.0 * p).powi(2) / (5000.0 * p))
        .sum();
    use statrs::distribution::ContinuousCDF;
    let reference = 1.0
        - statrs::distribution::ChiSquared::new(2.0)
            .expect("df")
            .cdf(x2);
    let srm = results.srm_p_value.expect("srm");
    assert!((srm - reference).abs() < 1e-9, "{srm} against {reference}");

    // Durable: a restart keeps them (they travel in the result log with the batch).
    let addr = server.addr;
    server.stop().await;
    let server = TestServer::start_on(addr, TestServer::config(dir.path())).await;
    let results = test_results(&server, "t").await;
    let allocations: Vec<u64> = results.arms.iter().map(|a| a.allocations).collect();
    assert_eq!(allocations, counts.to_vec(), "after a restart");
    server.stop().await;
}

#[tokio::test]
async fn the_reporter_resends_across_a_crash_and_every_result_and_decision_counts_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = support::process::spawn_binary(dir.path());
    let addr = server.url.trim_start_matches("http://").to_string();
    let models = register_models(&mut server.registry().await, 2).await;
    server
        .experiments()
        .await
        .create_test(test_request("t", &models))
        .await
        .expect("create");
    let endpoint = tonic::transport::Endpoint::from_shared(server.url.clone()).expect("url");
    let mut watch = WatchOptions::new("streamer-e").tests(["t"]);
    watch.reconnect_max = Duration::from_millis(200);
    let allocator = LocalAllocator::start(vec![endpoint.clone()], watch);
    assert!(allocator.ready(Duration::from_secs(10)).await, "tables");
    let mut options = arbiter_client::ReporterOptions::new("streamer-e");
    options.reconnect_max = Duration::from_millis(200);
    options.max_batch = 50;
    options.counts_every = Duration::from_millis(20);
    let reporter =
        arbiter_client::Reporter::start(vec![endpoint], Some(allocator.clone()), options);
    // Decided and reported without pause while the server is killed: batches (results and
    // decision counts) are in flight at the kill.
    let total = 20_000u64;
    let sending = {
        let (reporter, allocator) = (reporter.clone(), allocator.clone());
        tokio::spawn(async move {
            let mut allocations = 0u64;
            for i in 0..total {
                let d = allocator.allocate("t", "").expect("decision");
                assert!(!d.fell_back);
                allocations += u64::from(d.test_status() == TestStatus::Running);
                reporter.report(d.result(0.001, "")).await;
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            allocations
        })
    };
    while reporter.stats().accepted < 2000 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut server = server;
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reaped");
    let server = support::process::spawn_binary_with(dir.path(), &["--listen", &addr]);
    let allocations = sending.await.expect("reported");
    assert!(
        reporter.flush(Duration::from_secs(30)).await,
        "flush after the crash"
    );
    let stats = reporter.stats();
    eprintln!("reporter across the crash: {stats:?}");
    assert_eq!(stats.accepted + stats.duplicates, total, "{stats:?}");
    assert_eq!(stats.rejected, 0, "{stats:?}");
    assert!(
        stats.resent_batches > 0,
        "nothing was in flight at the kill: {stats:?}"
    );
    let results = server
        .experiments()
        .await
        .get_test_results(pb::GetTestResultsRequest {
            test_id: "t".into(),
        })
        .await
        .expect("results")
        .into_inner();
    assert_eq!(
        results.total_requests, total,
        "each result exactly once: {stats:?}"
    );
    assert_eq!(
        results.total_allocations, allocations,
        "each decision counted exactly once: {stats:?}"
    );
}

#[tokio::test]
async fn decision_counts_are_checked_and_counted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;
    let counts = |counts: Vec<u64>, expected: Vec<f64>, id: &str| pb::DecisionCounts {
        test_id: "t".into(),
        table_version: 1,
        counts,
        expected,
        counts_id: id.into(),
    };
    let batch = pb::ResultBatch {
        sequence: 1,
        results: Vec::new(),
        decision_counts: vec![
            counts(vec![10, 30], vec![20.0, 20.0], "ok"),
            counts(vec![10, 30], vec![20.0, 20.0], "ok"), // the same id again
            counts(vec![1], vec![1.0], "short"),
            counts(vec![1, 1], vec![0.7, 0.7], "expected-not-the-decisions"),
            counts(vec![1, 1], vec![1.0, 1.0], ""),
            counts(vec![0, 1], vec![1.0, 0.0], "impossible-arm"),
            pb::DecisionCounts {
                test_id: "nope".into(),
                ..counts(vec![1, 1], vec![1.0, 1.0], "unknown-test")
            },
        ],
    };
    let watching = watching(&server, &["t"], WatchOptions::new("router-g")).await;
    let (version, _) = watching.table_of("t").expect("table");
    let acks = ingest(&mut server.allocator().await, vec![batch])
        .await
        .expect("ingest");
    let ack = &acks[0];
    assert_eq!(
        (ack.counts_accepted, ack.counts_duplicates),
        (1, 1),
        "{ack:?}"
    );
    // Decision counts alone change nothing the policy reads: no new table goes out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(watching.table_of("t"), Some((version, TestStatus::Running)));
    let refused: Vec<(u32, i32)> = ack
        .counts_rejected
        .iter()
        .map(|r| (r.index, r.code))
        .collect();
    let invalid = tonic::Code::InvalidArgument as i32;
    assert_eq!(
        refused,
        vec![
            (2, invalid),
            (3, invalid),
            (4, invalid),
            (5, invalid),
            (6, tonic::Code::NotFound as i32)
        ],
        "{ack:?}"
    );
    for (r, words) in ack.counts_rejected.iter().zip([
        "of 2 arms",
        "sum to the 2 decisions",
        "counts_id",
        "probability 0",
        "nope",
    ]) {
        assert!(r.message.contains(words), "{r:?} should name {words:?}");
    }
    let results = test_results(&server, "t").await;
    let allocations: Vec<u64> = results.arms.iter().map(|a| a.allocations).collect();
    assert_eq!(allocations, vec![10, 30], "added once");
    server.stop().await;
}

#[tokio::test]
async fn a_batch_the_server_refuses_whole_is_split_and_every_result_still_counts_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TestServer::config(dir.path());
    config.ingest.max_batch_records = 10;
    let server = TestServer::start_config(config).await;
    test_over_two_models(&server, "t").await;
    let mut options = arbiter_client::ReporterOptions::new("streamer-f");
    options.max_batch = 25; // over the server's limit of 10 records per batch
    options.linger = Duration::from_millis(50);
    let reporter = arbiter_client::Reporter::start(vec![endpoint(&server)], None, options);
    for i in 0..200u64 {
        reporter
            .report(arbiter_client::pb::ResultRecord {
                test_id: "t".into(),
                attribution: Some(arbiter_client::pb::result_record::Attribution::ArmId(
                    format!("arm_{}", i % 2),
                )),
                return_value: 0.001,
                ..Default::default()
            })
            .await;
    }
    assert!(reporter.flush(Duration::from_secs(20)).await, "flush");
    let stats = reporter.stats();
    assert_eq!(
        (stats.accepted + stats.duplicates, stats.rejected),
        (200, 0),
        "{stats:?}"
    );
    assert!(
        stats.resent_batches > 0,
        "the refused batches went again, split: {stats:?}"
    );
    assert_eq!(test_results(&server, "t").await.total_requests, 200);
    server.stop().await;
}
