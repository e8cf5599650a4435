//! The `arbiter` client subcommands against a real server: output parsed back, exit codes.

mod support;

use std::process::{Command, Output};

use arbiter::pb;
use support::*;

fn arbiter(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .env("ARBITER_SERVER", server.url())
        .output()
        .expect("run arbiter")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_and_audit_subcommands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 2).await;
    server
        .experiments()
        .await
        .create_test(test_request("t1", &models))
        .await
        .expect("create");
    let records = (0..30)
        .flat_map(|i| {
            let x = f64::from(i % 5) * 1e-3;
            [
                result("t1", "arm_0", x - 0.001),
                result("t1", "arm_1", x + 0.002),
            ]
        })
        .collect();
    ingest(
        &mut server.allocator().await,
        vec![pb::ResultBatch {
            sequence: 1,
            results: records,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");

    let table = stdout(&arbiter(&server, &["tests", "results", "t1"]));
    assert!(
        table.lines().next().expect("header").starts_with("arm"),
        "{table}"
    );
    assert!(table.contains("arm_1 vs arm_0"), "{table}");
    assert!(table.contains("status RUNNING"), "{table}");
    // 30 results per arm, below the default minimum of 1000: no p-value placeholder.
    assert!(
        table.contains("not monitored yet (30 of 1000 results per arm)"),
        "{table}"
    );
    assert!(
        table.contains("mean ± 95% CI") && table.contains("Sharpe/r"),
        "{table}"
    );
    assert!(table.contains("leader arm_1"), "{table}");
    let results: serde_json::Value = serde_json::from_str(&stdout(&arbiter(
        &server,
        &["tests", "results", "t1", "--json"],
    )))
    .expect("json");
    assert_eq!(results["total_requests"], 60);
    assert_eq!(results["arms"][1]["results"], 30);
    assert_eq!(results["comparisons"][0]["treatment_arm"], "arm_1");

    // The SVG report: valid XML, one posterior curve and one share series per arm.
    let report_dir = tempfile::tempdir().expect("tempdir");
    let report = report_dir.path().join("report.svg");
    stdout(&arbiter(
        &server,
        &[
            "tests",
            "report",
            "t1",
            "--out",
            report.to_str().expect("utf-8"),
        ],
    ));
    let svg = std::fs::read_to_string(&report).expect("report written");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let paths = |class: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name("path") && n.attribute("class") == Some(class))
            .map(|n| {
                (
                    n.attribute("data-arm").unwrap_or_default().to_string(),
                    n.attribute("d").unwrap_or_default().to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    let posteriors = paths("posterior");
    let shares = paths("share");
    assert_eq!(
        posteriors
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>(),
        vec!["arm_0", "arm_1"]
    );
    assert_eq!(
        shares.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        vec!["arm_0", "arm_1"]
    );
    assert!(
        posteriors
            .iter()
            .all(|(_, d)| d.matches('L').count() == 200),
        "201-point curves"
    );
    assert!(
        shares
            .iter()
            .all(|(_, d)| d.starts_with('M') && d.contains('L')),
        "at least two history points"
    );
    // Significance over time, one line per comparison, against α; overlapping share lines are
    // told apart by their dash patterns too.
    let significance = paths("significance");
    assert_eq!(significance.len(), 1);
    assert_eq!(significance[0].0, "arm_1");
    assert!(significance[0].1.starts_with('M'), "{significance:?}");
    assert!(
        doc.descendants()
            .any(|n| n.has_tag_name("line") && n.attribute("class") == Some("alpha")),
        "the significance level is drawn"
    );
    let dashes: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("path") && n.attribute("class") == Some("share"))
        .filter_map(|n| n.attribute("stroke-dasharray"))
        .collect();
    assert_eq!(dashes.len(), 2);
    assert_ne!(dashes[0], dashes[1]);
    assert!(
        svg.contains("s since start") && svg.contains("per result"),
        "axes have units"
    );

    let models_arg = models.join(",");
    let create = [
        "tests",
        "create",
        "--id",
        "t2",
        "--models",
        &models_arg,
        "--strategy",
        "fixed",
        "--weights",
        "0.7,0.3",
        "--stop-loss-threshold",
        "-0.2",
        "--no-early-stopping",
        "--json",
    ];
    let created: serde_json::Value =
        serde_json::from_str(&stdout(&arbiter(&server, &create))).expect("json");
    assert_eq!(created["status"], "RUNNING");
    let shown: serde_json::Value = serde_json::from_str(&stdout(&arbiter(
        &server,
        &["tests", "show", "t2", "--json"],
    )))
    .expect("json");
    let text = stdout(&arbiter(&server, &["tests", "show", "t2"]));
    for line in [
        "stop_loss_threshold: -0.2",
        "max_duration_days: 30.0",
        "minimum_effect_size: 0.0",
        "epsilon: 0.1",
        "allocation_strategy: FIXED",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    assert_eq!(shown["allocation_strategy"], "FIXED");
    assert_eq!(shown["early_stopping"], false);
    assert_eq!(shown["arms"][0]["weight"], 0.7);
    let bad = arbiter(
        &server,
        &["tests", "create", "--id", "t3", "--models", &models[0]],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("INVALID_ARGUMENT"));

    let list: serde_json::Value =
        serde_json::from_str(&stdout(&arbiter(&server, &["tests", "list", "--json"])))
            .expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    assert!(stdout(&arbiter(&server, &["tests", "pause", "t1"])).contains("PAUSED"));
    assert!(stdout(&arbiter(&server, &["tests", "resume", "t1"])).contains("RUNNING"));
    let stopped: serde_json::Value = serde_json::from_str(&stdout(&arbiter(
        &server,
        &["tests", "stop", "t1", "--reason", "done", "--json"],
    )))
    .expect("json");
    assert_eq!(
        (stopped["status"].as_str(), stopped["stop_reason"].as_str()),
        (Some("COMPLETED"), Some("done"))
    );

    let events: serde_json::Value = serde_json::from_str(&stdout(&arbiter(
        &server,
        &["audit", "list", "--entity", "t1", "--json"],
    )))
    .expect("json");
    let actions: Vec<&str> = events
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec!["test.create", "test.pause", "test.resume", "test.stop"]
    );
    assert!(stdout(&arbiter(&server, &["audit", "verify"])).contains("audit chain ok"));

    // A server error exits 1 and names the gRPC code; a usage error exits 2.
    let missing = arbiter(&server, &["tests", "results", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("NOT_FOUND") && stderr.contains("nope"),
        "{stderr}"
    );
    // Under --json the error is JSON too, with the code.
    let missing = arbiter(&server, &["tests", "results", "nope", "--json"]);
    assert_eq!(missing.status.code(), Some(1));
    let error: serde_json::Value =
        serde_json::from_slice(&missing.stderr).expect("a JSON error on stderr");
    assert_eq!(error["error"]["code"], "NOT_FOUND");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("nope")));
    // A server address without a scheme says what to add.
    let bare = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["audit", "verify", "--server", "127.0.0.1:50051"])
        .output()
        .expect("run arbiter");
    assert_eq!(bare.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert!(stderr.contains("http://127.0.0.1:50051"), "{stderr}");
    assert_eq!(
        arbiter(&server, &["tests", "frobnicate"]).status.code(),
        Some(2)
    );
    assert_eq!(
        arbiter(&server, &["audit", "list", "--limit", "many"])
            .status
            .code(),
        Some(2)
    );
    server.stop().await;
}

#[test]
fn an_unreachable_server_exits_one() {
    let output = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["audit", "verify", "--server", "http://127.0.0.1:1"])
        .output()
        .expect("run arbiter");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_subcommands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let work = tempfile::tempdir().expect("tempdir");
    let artifact = work.path().join("model.bin");
    let bytes = artifact_bytes(3 * 1024 * 1024 + 17, 5);
    std::fs::write(&artifact, &bytes).expect("write artifact");
    let policy = work.path().join("policy.yaml");
    std::fs::write(&policy, "position_size: 0.02\nmax_leverage: 3\n").expect("write policy");
    let features = work.path().join("features.json");
    std::fs::write(
        &features,
        r#"{"window": 20, "inputs": ["returns", "volume"]}"#,
    )
    .expect("write features");

    let a = artifact.to_str().expect("utf-8");
    let p = policy.to_str().expect("utf-8");
    let register = [
        "models",
        "register",
        "--id",
        "sig",
        "--version",
        "1.0.0",
        "--type",
        "signal",
        "--file",
        a,
    ];
    let registered: serde_json::Value = serde_json::from_str(&stdout(&arbiter(
        &server,
        &[
            &register[..],
            &[
                "--policy",
                p,
                "--features",
                features.to_str().expect("utf-8"),
                "--created-by",
                "alice",
                "--json",
            ],
        ]
        .concat(),
    )))
    .expect("json");
    assert_eq!(registered["registry_id"], "sig:1.0.0");
    assert_eq!(registered["model_checksum"], sha256_hex(&bytes));
    assert_eq!(
        registered["policy_checksum"],
        sha256_hex(br#"{"max_leverage":3.0,"position_size":0.02}"#)
    );

    let list: serde_json::Value =
        serde_json::from_str(&stdout(&arbiter(&server, &["models", "list", "--json"])))
            .expect("json");
    assert_eq!(list.as_array().expect("array").len(), 1);
    let shown = stdout(&arbiter(&server, &["models", "show", "sig:1.0.0"]));
    assert!(shown.contains("status: DEVELOPMENT"), "{shown}");
    assert!(
        shown.contains("policy_config:") && shown.contains("\"max_leverage\": 3.0"),
        "{shown}"
    );

    for to in ["testing", "staging"] {
        assert!(stdout(&arbiter(
            &server,
            &["models", "promote", "sig:1.0.0", "--to", to]
        ))
        .contains("sig:1.0.0"));
    }
    let self_approved = arbiter(
        &server,
        &[
            "models",
            "promote",
            "sig:1.0.0",
            "--to",
            "production",
            "--approved-by",
            "alice",
        ],
    );
    assert_eq!(self_approved.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&self_approved.stderr);
    assert!(
        stderr.contains("FAILED_PRECONDITION") && stderr.contains("alice"),
        "{stderr}"
    );
    stdout(&arbiter(
        &server,
        &[
            "models",
            "promote",
            "sig:1.0.0",
            "--to",
            "production",
            "--approved-by",
            "lead",
        ],
    ));

    let out = work.path().join("downloaded.bin");
    stdout(&arbiter(
        &server,
        &[
            "models",
            "get",
            "sig",
            "--out",
            out.to_str().expect("utf-8"),
        ],
    ));
    assert!(
        std::fs::read(&out).expect("downloaded") == bytes,
        "downloaded bytes differ"
    );
    // `id:version`, as every other command takes it.
    std::fs::remove_file(&out).expect("remove");
    stdout(&arbiter(
        &server,
        &[
            "models",
            "get",
            "sig:1.0.0",
            "--out",
            out.to_str().expect("utf-8"),
        ],
    ));
    assert!(std::fs::read(&out).expect("downloaded") == bytes);
    assert!(stdout(&arbiter(&server, &["models", "verify", "sig:1.0.0"])).contains("ok"));

    let delete = arbiter(&server, &["models", "delete", "sig:1.0.0"]);
    assert_eq!(delete.status.code(), Some(1), "PRODUCTION needs --force");
    std::fs::write(dir.path().join("artifacts/sig/1.0.0.bin"), b"tampered").expect("tamper");
    assert_eq!(
        arbiter(&server, &["models", "verify", "sig:1.0.0"])
            .status
            .code(),
        Some(1)
    );
    stdout(&arbiter(
        &server,
        &["models", "delete", "sig:1.0.0", "--force"],
    ));
    assert_eq!(
        arbiter(&server, &["models", "show", "sig:1.0.0"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        arbiter(
            &server,
            &[
                "models",
                "register",
                "--id",
                "x",
                "--version",
                "1.0.0",
                "--type",
                "weird",
                "--file",
                a
            ]
        )
        .status
        .code(),
        Some(2)
    );
    server.stop().await;
}
