//! Late results and the stop's evidence, over real gRPC: after a stop, results for decisions made
//! while the test ran are accepted until the settlement period closes, others are refused; the
//! final results file is written provisional and rewritten settled; a settled test never
//! changes; a stop records exactly the evidence its rule saw, in the audit event, the results
//! and the final file.

mod support;

use std::time::Duration;

use arbiter::pb::{self, TestStatus as TS};
use support::*;
use tonic::Code;

fn by_decision(test_id: &str, decision_id: u64, value: f64) -> pb::ResultRecord {
    pb::ResultRecord {
        test_id: test_id.into(),
        attribution: Some(pb::result_record::Attribution::DecisionId(decision_id)),
        return_value: value,
        ..Default::default()
    }
}

async fn record(server: &TestServer, r: pb::ResultRecord) -> Result<pb::RecordAck, tonic::Status> {
    server
        .allocator()
        .await
        .record_result(r)
        .await
        .map(|a| a.into_inner())
}

fn final_file(server: &TestServer, test_id: &str) -> serde_json::Value {
    let path = server
        .data_dir
        .join(format!("ab_tests/results/{test_id}_final.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("final file")).expect("json")
}

#[tokio::test]
async fn late_fills_count_until_settlement_closes_and_never_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 2).await;
    let mut experiments = server.experiments().await;
    assert_status(
        experiments
            .create_test(pb::CreateTestRequest {
                settlement_period_seconds: Some(8 * 24 * 3600),
                ..test_request("long", &models)
            })
            .await,
        Code::InvalidArgument,
        "settlement_period_seconds",
    );
    experiments
        .create_test(pb::CreateTestRequest {
            settlement_period_seconds: Some(2),
            early_stopping: Some(false),
            ..test_request("t", &models)
        })
        .await
        .expect("create");
    let mut allocator = server.allocator().await;
    let mut decisions = Vec::new();
    for _ in 0..6 {
        decisions.push(allocate(&mut allocator, "t").await.decision_id);
    }
    for &d in &decisions[..3] {
        record(&server, by_decision("t", d, 0.01))
            .await
            .expect("filled");
    }

    let stopped = experiments
        .stop_test(pb::StopTestRequest {
            test_id: "t".into(),
            reason: "enough".into(),
            requested_by: String::new(),
        })
        .await
        .expect("stop")
        .into_inner();
    assert!(
        !stopped.settled && stopped.settles_at.is_some(),
        "{stopped:?}"
    );
    let decision = stopped.decision.clone().expect("the stop's evidence");
    assert_eq!(decision.kind, "manual");
    assert_eq!(decision.arms.iter().map(|a| a.results).sum::<u64>(), 3);
    assert_eq!(final_file(&server, "t")["settled"], false, "provisional");

    // The report marks the stop and when settlement closes.
    let out = dir.path().join("report.svg");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"));
    command
        .args(["tests", "report", "t", "--server", &server.url(), "--out"])
        .arg(&out);
    // Off the runtime's thread: the server answering it runs there.
    let report = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run arbiter");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let svg = std::fs::read_to_string(&out).expect("report");
    assert!(
        svg.contains(r#"class="stop""#) && svg.contains("stopped (no winner)"),
        "{svg}"
    );
    assert!(svg.contains("completed, settling"), "{svg}");

    // A late fill of a decision made while the test ran counts; by arm, or for a decision the
    // ended test answered, nothing does.
    record(&server, by_decision("t", decisions[3], 0.02))
        .await
        .expect("a late fill");
    assert_status(
        record(&server, result("t", "arm_0", 0.02)).await,
        Code::FailedPrecondition,
        "only results for decisions made while it ran",
    );
    let after_stop = allocate(&mut allocator, "t").await.decision_id;
    assert_status(
        record(&server, by_decision("t", after_stop, 0.02)).await,
        Code::FailedPrecondition,
        "only results for decisions made while it ran",
    );
    let settling = test_results(&server, "t").await;
    assert_eq!(settling.total_requests, 4);
    assert_eq!(
        settling.decision,
        Some(decision.clone()),
        "the decision never changes"
    );

    // The period closes (2 s, then the once-a-second sweep).
    let mut settled = settling;
    for _ in 0..100 {
        if settled.settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = test_results(&server, "t").await;
    }
    assert!(settled.settled, "settlement never closed: {settled:?}");
    assert_eq!(settled.status, TS::Completed as i32);
    // The file is rewritten right after the record says settled (once every late result is
    // durable).
    let mut file = final_file(&server, "t");
    for _ in 0..50 {
        if file["settled"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        file = final_file(&server, "t");
    }
    assert_eq!(file["settled"], true);
    assert_eq!(
        file["total_requests"], 4,
        "the late fill is in the settled file"
    );
    assert_status(
        record(&server, by_decision("t", decisions[4], 0.02)).await,
        Code::FailedPrecondition,
        "settlement has closed",
    );
    let events = audit_events(&server, "t", 0).await;
    let closed = events
        .iter()
        .find(|e| e.action == "test.settled")
        .expect("audited");
    assert_eq!(closed.details["results_after_decision"], "1");

    // Settled is settled, across a restart too.
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let again = test_results(&server, "t").await;
    assert!(again.settled);
    assert_eq!(again.total_requests, 4);
    server.stop().await;
}

#[tokio::test]
async fn an_early_stop_records_exactly_the_evidence_its_rule_saw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 2).await;
    server
        .experiments()
        .await
        .create_test(pb::CreateTestRequest {
            minimum_sample_size: Some(20),
            ..test_request("e", &models)
        })
        .await
        .expect("create");
    // Clearly separated arms, in small batches: the rule stops the test at some batch.
    let batches: Vec<pb::ResultBatch> = (0..40)
        .map(|b| pb::ResultBatch {
            sequence: b,
            results: (0..10)
                .flat_map(|i| {
                    let noise = if i % 2 == 0 { 0.004 } else { -0.004 };
                    [
                        result("e", "arm_0", noise),
                        result("e", "arm_1", 0.01 + noise),
                    ]
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    let acks = ingest(&mut server.allocator().await, batches)
        .await
        .expect("ingest");
    assert!(
        acks.iter().any(|a| !a.rejected.is_empty()),
        "later batches meet the stopped test"
    );

    let results = test_results(&server, "e").await;
    assert_eq!(results.status, TS::Completed as i32);
    let decision = results.decision.expect("evidence");
    assert_eq!(decision.kind, "early_stop");
    assert_eq!(decision.winner, "arm_1");
    let c = &decision.comparisons[0];
    assert!(c.significant && c.adjusted_p_value <= 0.05, "{c:?}");

    // The audit event carries the same numbers, and so does the final file.
    let events = audit_events(&server, "e", 0).await;
    let stop = events
        .iter()
        .find(|e| e.action == "test.stop")
        .expect("stop event");
    let evidence: serde_json::Value =
        serde_json::from_str(&stop.details["evidence"]).expect("evidence json");
    let file = final_file(&server, "e");
    for (i, arm) in decision.arms.iter().enumerate() {
        assert_eq!(evidence["arms"][i]["results"], arm.results);
        assert_eq!(file["decision"]["arms"][i]["results"], arm.results);
        assert_eq!(evidence["arms"][i]["mean_return"], arm.mean_return);
    }
    assert_eq!(
        evidence["comparisons"][0]["adjusted_p_value"],
        c.adjusted_p_value
    );
    assert_eq!(
        file["decision"]["comparisons"][0]["always_valid_p_value"],
        c.always_valid_p_value
    );
    server.stop().await;
}
