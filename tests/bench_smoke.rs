//! `arbiter bench` runs end to end with tiny durations and emits a JSON report whose numbers make
//! sense. No timing assertions: figures belong in BENCHMARKS.md, not in tests.

mod support;

use std::process::Command;

use arbiter::pb;

#[test]
fn bench_json_report_parses_and_counts_work() {
    let output = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args([
            "bench",
            "--baseline",
            "echo",
            "--duration-ms",
            "100",
            "--connections",
            "1",
            "--in-flight",
            "2",
            "--json",
        ])
        .output()
        .expect("run arbiter bench");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let measurements = report["measurements"].as_array().expect("measurements");
    assert_eq!(measurements.len(), 16, "8 scenarios × arbiter and echo");
    for m in measurements {
        assert!(m["ops"].as_u64().expect("ops") > 0, "{m}");
        assert!(m["rate"].as_f64().expect("rate") > 0.0, "{m}");
    }
    let unary = measurements
        .iter()
        .find(|m| m["scenario"] == "allocate_unary_sequential" && m["system"] == "arbiter")
        .expect("unary scenario");
    let (p50, p99) = (
        unary["p50_us"].as_f64().expect("p50"),
        unary["p99_us"].as_f64().expect("p99"),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{unary}");
    let ratios = report["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 8);
    assert!(ratios
        .iter()
        .all(|r| r["rate"].as_f64().is_some_and(|x| x > 0.0)));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("allocate_unary_sequential against echo"),
        "progress lines"
    );
}

#[test]
fn only_runs_the_matching_scenarios_and_names_them_when_none_match() {
    let run = |only: &str| {
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["bench", "--duration-ms", "50", "--json", "--only", only])
            .output()
            .expect("run arbiter bench")
    };
    let output = run("ingest_batch100_");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let names: Vec<&str> = report["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .map(|m| m["scenario"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["ingest_batch100_streams1", "ingest_batch100_streams4"]
    );

    let output = run("no-such-scenario");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no-such-scenario") && stderr.contains("allocate_unary_sequential"),
        "{stderr}"
    );
}

#[test]
fn the_cost_of_authentication_is_measured_against_an_arbiter_without_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args([
            "bench",
            "--baseline",
            "unauthenticated",
            "--duration-ms",
            "100",
            "--only",
            "allocate_unary",
            "--json",
        ])
        .output()
        .expect("run arbiter bench");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["authenticated"], true);
    assert_eq!(report["baseline"], "no-auth");
    let systems: Vec<&str> = report["measurements"]
        .as_array()
        .expect("measurements")
        .iter()
        .map(|m| m["system"].as_str().expect("system"))
        .collect();
    assert_eq!(systems, ["arbiter", "no-auth", "arbiter", "no-auth"]);
    let ratios = report["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 2);
    assert!(ratios
        .iter()
        .all(|r| r["p50"].as_f64().is_some_and(|x| x > 0.0)));

    let refused = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args([
            "bench",
            "--baseline",
            "unauthenticated",
            "--target",
            "http://127.0.0.1:1",
        ])
        .output()
        .expect("run arbiter bench");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("leave out --target"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Against a server it did not start, the bench leaves no model behind and its test stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bench_against_a_running_server_cleans_up_after_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = support::TestServer::start(dir.path()).await;
    let url = server.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["bench", "--target", &url, "--duration-ms", "50", "--json"])
            .args(["--only", "allocate_unary_sequential"])
            .output()
    })
    .await
    .expect("join")
    .expect("run arbiter bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let models = server
        .registry()
        .await
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .models;
    assert!(models.is_empty(), "left behind: {models:?}");
    let tests = support::list_test_pages(&mut server.experiments().await, None, 100).await;
    let tests: Vec<&pb::Test> = tests.iter().flatten().collect();
    assert_eq!(tests.len(), 1);
    assert_eq!(tests[0].status, pb::TestStatus::Completed as i32);
    assert!(tests[0].test_id.starts_with("bench-"));
    server.stop().await;
}
