//! Durability end to end: restart on the same directory, uploads cut off mid-stream, and a
//! tampered audit log.

mod support;

use std::time::Duration;

use arbiter::pb::{self, ModelStatus as S};
use arbiter::storage::WriteBatch;
use support::*;

#[tokio::test]
async fn restart_keeps_metadata_artifacts_and_the_audit_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = artifact_bytes(3 * 1024 * 1024, 21);
    let (registered, promoted) = {
        let server = TestServer::start(dir.path()).await;
        let mut client = server.registry().await;
        let registered = register(&mut client, header("m", "1.0.0", "alice"), &bytes)
            .await
            .expect("register");
        for step in [S::Testing, S::Staging] {
            promote(&mut client, "m:1.0.0", step)
                .await
                .expect("promote");
        }
        let promoted = promote(&mut client, "m:1.0.0", S::Production)
            .await
            .expect("production");
        register_simple(&mut client, "m", "1.1.0").await;
        drop(client);
        server.stop().await;
        (registered, promoted)
    };

    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let (meta, downloaded) = get_model(&mut client, "m", "")
        .await
        .expect("latest production");
    assert_eq!(meta, promoted);
    assert_eq!(meta.model_checksum, registered.model_checksum);
    assert!(downloaded == bytes, "artifact bytes survive a restart");
    let all = client
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.models.len(), 2);

    let mut admin = server.admin().await;
    let chain = admin
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(chain.ok, "{chain:?}");
    assert_eq!(chain.events_checked, 5, "register, 3 promotions, register");
    // The chain continues where it left off.
    promote(&mut client, "m:1.1.0", S::Testing)
        .await
        .expect("promote after restart");
    let chain = admin
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(chain.ok && chain.events_checked == 6, "{chain:?}");
    let events = admin
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .events;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    assert!(events.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    server.stop().await;
}

#[tokio::test]
async fn an_upload_cut_off_mid_stream_leaves_no_trace() {
    use pb::register_model_request::Part;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<pb::RegisterModelRequest>(16);
    let mut client = server.registry().await;
    let call = tokio::spawn(async move {
        client
            .register_model(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(pb::RegisterModelRequest {
        part: Some(Part::Header(header("m", "1.0.0", "alice"))),
    })
    .await
    .expect("send header");
    for i in 0..8 {
        let chunk = artifact_bytes(64 * 1024, i + 1);
        tx.send(pb::RegisterModelRequest {
            part: Some(Part::Chunk(chunk)),
        })
        .await
        .expect("send chunk");
    }
    // Wait until the server has started writing, then drop the client mid-stream.
    let tmp = dir.path().join("tmp");
    for _ in 0..200 {
        if !dir_entries(&tmp).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !dir_entries(&tmp).is_empty(),
        "the upload reached the server"
    );
    // Keep the request stream open (no END_STREAM can follow); the call's abort resets it.
    call.abort();
    let _ = call.await;

    for _ in 0..500 {
        if dir_entries(&tmp).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dir_entries(&tmp).is_empty(), "partial upload removed");
    assert!(
        dir_entries(&dir.path().join("artifacts")).is_empty(),
        "no artifact installed: {:?}",
        dir_entries(&dir.path().join("artifacts"))
    );
    let mut client = server.registry().await;
    assert_status(
        metadata(&mut client, "m:1.0.0").await,
        tonic::Code::NotFound,
        "m:1.0.0",
    );
    let chain = server
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify");
    assert_eq!(
        chain.into_inner().events_checked,
        0,
        "no audit event for an aborted upload"
    );

    drop(tx);
    let bytes = artifact_bytes(100_000, 9);
    let m = register(&mut client, header("m", "1.0.0", "alice"), &bytes)
        .await
        .expect("same version again");
    assert_eq!(m.model_checksum, sha256_hex(&bytes));
    server.stop().await;
}

#[tokio::test]
async fn tampering_with_an_audit_event_is_reported_at_its_sequence_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let server = TestServer::start(dir.path()).await;
        let mut client = server.registry().await;
        for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
            register_simple(&mut client, "m", v).await;
        }
        drop(client);
        server.stop().await;
    }
    // Rewrite the actor of event 3 directly in the store while the server is down.
    let original = {
        let storage = arbiter::state::open_storage(dir.path()).expect("open the store");
        let key = [&b"audit/"[..], &3u64.to_be_bytes()].concat();
        let stored = storage
            .get_raw(&key)
            .expect("read")
            .expect("event 3 exists");
        let text = String::from_utf8(stored[1..].to_vec()).expect("json");
        assert!(text.contains("\"actor\":\"alice\""), "{text}");
        let mut forged = vec![stored[0]];
        forged.extend_from_slice(
            text.replace("\"actor\":\"alice\"", "\"actor\":\"mallory\"")
                .as_bytes(),
        );
        let mut batch = WriteBatch::new();
        batch.put_raw(&key, forged);
        storage.apply(batch).expect("write");
        storage.flush_blocking().expect("flush");
        stored
    };
    let server = TestServer::start(dir.path()).await;
    let chain = verify_audit_chain(&server).await;
    assert!(!chain.ok);
    assert_eq!(chain.first_bad_seq, Some(3));
    assert_eq!(chain.events_checked, 3);
    assert!(chain.message.contains("hash"), "{chain:?}");
    server.stop().await;

    // Restore event 3 and remove the newest event: truncation is caught by the recorded head.
    {
        let storage = arbiter::state::open_storage(dir.path()).expect("open the store");
        let mut batch = WriteBatch::new();
        batch.put_raw([&b"audit/"[..], &3u64.to_be_bytes()].concat(), original);
        batch.remove([&b"audit/"[..], &4u64.to_be_bytes()].concat());
        storage.apply(batch).expect("write");
        storage.flush_blocking().expect("flush");
    }
    let server = TestServer::start(dir.path()).await;
    let chain = verify_audit_chain(&server).await;
    assert!(!chain.ok);
    assert_eq!(chain.first_bad_seq, Some(4), "{chain:?}");
    assert!(chain.message.contains("recorded head is 4"), "{chain:?}");
    server.stop().await;
}

#[tokio::test]
async fn orphaned_artifact_files_are_swept_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let server = TestServer::start(dir.path()).await;
        let mut client = server.registry().await;
        register_simple(&mut client, "m", "1.0.0").await;
        drop(client);
        server.stop().await;
    }
    // A crash between installing a file and committing its metadata leaves a file like this one.
    std::fs::write(dir.path().join("artifacts/m/2.0.0.bin"), b"orphan").expect("write orphan");
    std::fs::write(dir.path().join("tmp/upload-1-1"), b"partial").expect("write partial");
    let server = TestServer::start(dir.path()).await;
    assert!(
        !dir.path().join("artifacts/m/2.0.0.bin").exists(),
        "orphan swept"
    );
    assert!(
        dir.path().join("artifacts/m/1.0.0.bin").exists(),
        "owned file kept"
    );
    assert!(
        dir_entries(&dir.path().join("tmp")).is_empty(),
        "tmp cleared"
    );
    let mut client = server.registry().await;
    register_simple(&mut client, "m", "2.0.0").await;
    server.stop().await;
}

#[tokio::test]
async fn restart_keeps_tests_statuses_posteriors_allocations_and_final_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, paused_before, allocations_before) = {
        let server = TestServer::start(dir.path()).await;
        let mut registry = server.registry().await;
        let models = register_models(&mut registry, 3).await;
        let mut client = server.experiments().await;
        client
            .create_test(test_request("running", &models[..2]))
            .await
            .expect("create");
        client
            .create_test(test_request("paused", &models[1..]))
            .await
            .expect("create");
        client
            .create_test(test_request(
                "done",
                &[models[0].clone(), models[2].clone()],
            ))
            .await
            .expect("create");
        let mut allocator = server.allocator().await;
        for _ in 0..300 {
            allocate(&mut allocator, "running").await;
        }
        let mut batch = Vec::new();
        for i in 0..200 {
            let mut r = result(
                "running",
                if i % 2 == 0 { "arm_0" } else { "arm_1" },
                (i as f64 - 90.0) / 1000.0,
            );
            r.result_id = format!("r{i}");
            batch.push(r);
        }
        batch.push(result("done", "arm_1", 0.5));
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
        client
            .pause_test(pb::TestActionRequest {
                test_id: "paused".into(),
                ..Default::default()
            })
            .await
            .expect("pause");
        client
            .stop_test(pb::StopTestRequest {
                test_id: "done".into(),
                reason: "finished".into(),
                ..Default::default()
            })
            .await
            .expect("stop");
        let results = |id: &str| pb::GetTestResultsRequest { test_id: id.into() };
        let before = client
            .get_test_results(results("running"))
            .await
            .expect("results")
            .into_inner();
        let paused = client
            .get_test(pb::GetTestRequest {
                test_id: "paused".into(),
            })
            .await
            .expect("get")
            .into_inner();
        drop((client, allocator, registry));
        server.stop().await;
        let total = before.total_allocations;
        (before, paused, total)
    };
    assert_eq!(allocations_before, 300);
    let final_file = dir.path().join("ab_tests/results/done_final.json");
    let final_before = std::fs::read(&final_file).expect("final results written");

    let server = TestServer::start(dir.path()).await;
    let mut client = server.experiments().await;
    let after = client
        .get_test_results(pb::GetTestResultsRequest {
            test_id: "running".into(),
        })
        .await
        .expect("results")
        .into_inner();
    assert_eq!(after.total_requests, 200);
    assert_eq!(
        after.total_allocations, 300,
        "allocation counts persisted at shutdown"
    );
    for (a, b) in before.arms.iter().zip(&after.arms) {
        assert_eq!(
            (a.total_requests, a.allocations),
            (b.total_requests, b.allocations)
        );
        assert_eq!(
            (a.mean_return, a.std_return, a.total_returns),
            (b.mean_return, b.std_return, b.total_returns)
        );
        assert_eq!(
            (a.min_return, a.max_return, a.win_rate),
            (b.min_return, b.max_return, b.win_rate)
        );
        // Allocation shares come back from the same posteriors (Monte Carlo: within 4 points).
        assert!(
            (a.allocation_weight - b.allocation_weight).abs() < 0.04,
            "{a:?} vs {b:?}"
        );
    }
    let paused = client
        .get_test(pb::GetTestRequest {
            test_id: "paused".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(paused, paused_before);
    let done = client
        .get_test(pb::GetTestRequest {
            test_id: "done".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (done.status, done.stop_reason.as_str()),
        (pb::TestStatus::Completed as i32, "finished")
    );
    assert_eq!(
        std::fs::read(&final_file).expect("final results kept"),
        final_before
    );

    // The report history survives too: creation and stop points of "done", plus "now".
    let history = client
        .get_test_history(pb::GetTestRequest {
            test_id: "done".into(),
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.arm_ids, vec!["arm_0", "arm_1"]);
    assert_eq!(history.points.len(), 3, "{history:?}");
    assert_eq!(
        history.points[1].results,
        vec![0, 1],
        "the stop point saw the one result"
    );

    // result_id idempotency survives the restart.
    let mut allocator = server.allocator().await;
    let mut again = result("running", "arm_0", 1.0);
    again.result_id = "r0".into();
    assert!(
        allocator
            .record_result(again)
            .await
            .expect("record")
            .into_inner()
            .duplicate
    );
    let a = allocate(&mut allocator, "paused").await;
    assert_eq!(
        (a.arm_id.as_str(), a.propensity),
        ("arm_0", 1.0),
        "a paused test still serves its control"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_missing_final_results_file_is_rewritten_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let server = TestServer::start(dir.path()).await;
        let mut registry = server.registry().await;
        let models = register_models(&mut registry, 2).await;
        let mut client = server.experiments().await;
        client
            .create_test(test_request("t", &models))
            .await
            .expect("create");
        client
            .stop_test(pb::StopTestRequest {
                test_id: "t".into(),
                reason: "done".into(),
                ..Default::default()
            })
            .await
            .expect("stop");
        drop((client, registry));
        server.stop().await;
    }
    // As if the process died between committing the stop and writing the file.
    let file = dir.path().join("ab_tests/results/t_final.json");
    std::fs::remove_file(&file).expect("remove");
    let server = TestServer::start(dir.path()).await;
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("rewritten")).expect("json");
    assert_eq!(json["stop_reason"], "done");
    server.stop().await;
}

#[tokio::test]
async fn series_and_result_ids_of_the_older_layouts_are_still_read() {
    use arbiter::experiment::history::{History, HistoryPoint};
    use arbiter::storage::WriteBatch;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let server = TestServer::start(dir.path()).await;
        let mut registry = server.registry().await;
        let models = register_models(&mut registry, 2).await;
        let mut experiments = server.experiments().await;
        experiments
            .create_test(test_request("old", &models))
            .await
            .expect("create");
        drop((registry, experiments));
        server.stop().await;
    }
    // What an older version wrote: the series as one record, one key per applied result id.
    {
        let storage = arbiter::state::open_storage(dir.path()).expect("open");
        let mut batch = WriteBatch::new();
        let old_point = HistoryPoint {
            time: 1_000,
            results: vec![3, 4],
            shares: vec![0.25, 0.75],
            p_values: Vec::new(),
        };
        batch
            .put(
                b"series/old",
                &History {
                    points: vec![old_point],
                },
            )
            .expect("encode");
        batch.put_raw(b"rid/old/applied-before", Vec::new());
        storage.apply(batch).expect("apply");
        storage.flush().await.expect("flush");
    }
    let server = TestServer::start(dir.path()).await;
    let mut experiments = server.experiments().await;
    let history = experiments
        .get_test_history(pb::GetTestRequest {
            test_id: "old".into(),
        })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.points[0].results, vec![3, 4], "{history:?}");
    assert!(history.points.len() >= 3, "old point, creation, now");
    let mut allocator = server.allocator().await;
    let mut resent = result("old", "arm_0", 0.1);
    resent.result_id = "applied-before".into();
    let ack = allocator
        .record_result(resent)
        .await
        .expect("record")
        .into_inner();
    assert!(
        ack.duplicate,
        "an id of the one-key-per-id layout is still a duplicate"
    );
    server.stop().await;
}

#[tokio::test]
async fn allocation_counts_of_more_tests_than_one_persist_chunk_survive_a_restart() {
    // The persister writes allocation records in chunks of 256 (src/experiment.rs).
    const TESTS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // Creating 300 tests quickly is more than the default change rate allows.
        let mut config = TestServer::config(dir.path());
        config.security.rate_limits.change = 0;
        let server = TestServer::start_config(config).await;
        let mut registry = server.registry().await;
        let models = register_models(&mut registry, 2).await;
        let mut client = server.experiments().await;
        let mut allocator = server.allocator().await;
        for i in 0..TESTS {
            let id = format!("t{i}");
            client
                .create_test(test_request(&id, &models))
                .await
                .expect("create");
            for _ in 0..=i % 3 {
                allocate(&mut allocator, &id).await;
            }
        }
        drop((client, allocator, registry));
        server.stop().await;
    }
    let server = TestServer::start(dir.path()).await;
    let mut client = server.experiments().await;
    for i in 0..TESTS {
        let results = client
            .get_test_results(pb::GetTestResultsRequest {
                test_id: format!("t{i}"),
            })
            .await
            .expect("results")
            .into_inner();
        assert_eq!(results.total_allocations, (i % 3 + 1) as u64, "t{i}");
    }
    server.stop().await;
}

/// Models an older build stored with ids starting with a dot (since refused for new models)
/// keep their artifacts: the first start moves each file from where that build wrote it to its
/// escaped path instead of sweeping it as an orphan, and the models stay reachable.
#[tokio::test]
async fn models_stored_with_a_leading_dot_keep_their_artifacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    for model in ["xfoo", "xdd"] {
        register(
            &mut client,
            header(model, "1.0.0", "alice"),
            model.as_bytes(),
        )
        .await
        .expect("register");
    }
    drop(client);
    server.stop().await;
    // What an older build left: the records under the dotted ids, the files where it wrote them.
    {
        let storage = arbiter::state::open_storage(dir.path()).expect("open the store");
        let mut batch = WriteBatch::new();
        for (old, new) in [("xfoo", ".foo"), ("xdd", "..")] {
            let key = format!("model/{old}:1.0.0");
            let stored = storage
                .get_raw(key.as_bytes())
                .expect("read")
                .expect("stored");
            let text = String::from_utf8(stored[1..].to_vec()).expect("json");
            let mut renamed = vec![stored[0]];
            renamed.extend_from_slice(text.replace(old, new).as_bytes());
            batch.remove(key.as_bytes());
            batch.put_raw(format!("model/{new}:1.0.0"), renamed);
        }
        storage.apply(batch).expect("write");
        storage.flush_blocking().expect("flush");
    }
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir(artifacts.join(".foo")).expect("legacy dir");
    std::fs::rename(
        artifacts.join("xfoo/1.0.0.bin"),
        artifacts.join(".foo/1.0.0.bin"),
    )
    .expect("move");
    std::fs::rename(
        artifacts.join("xdd/1.0.0.bin"),
        dir.path().join("1.0.0.bin"),
    )
    .expect("move");

    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    for (model, bytes) in [(".foo", &b"xfoo"[..]), ("..", &b"xdd"[..])] {
        let (_, fetched) = get_model(&mut client, model, "1.0.0")
            .await
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(fetched, bytes, "{model}");
        let verified = client
            .verify_model(pb::ModelRef {
                registry_id: format!("{model}:1.0.0"),
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(verified.ok, "{model}: {verified:?}");
    }
    assert!(artifacts.join("%2Efoo/1.0.0.bin").exists());
    assert!(artifacts.join("%2E./1.0.0.bin").exists());
    assert!(!dir.path().join("1.0.0.bin").exists());
    // New models may still not start with a dot.
    let err = register(&mut client, header(".bar", "1.0.0", "alice"), b"w")
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

/// A clean stop checkpoints the store and trims the log behind it: the next start replays
/// nothing, and the log holds no entry at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_an_empty_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;
    let mut allocator = server.allocator().await;
    let batch = pb::ResultBatch {
        sequence: 0,
        results: (0..50)
            .map(|i| {
                let mut r = result("t", if i % 2 == 0 { "arm_0" } else { "arm_1" }, 0.001);
                r.result_id = format!("r-{i}");
                r
            })
            .collect(),
        ..Default::default()
    };
    assert_eq!(
        ingest(&mut allocator, vec![batch]).await.expect("ingest")[0].accepted,
        50
    );
    drop(allocator);
    server.stop().await;
    let (_, entries) =
        arbiter::storage::Journal::open(&dir.path().join("journal")).expect("journal");
    assert!(entries.is_empty(), "{} entries left", entries.len());
    let server = TestServer::start(dir.path()).await;
    assert_eq!(test_results(&server, "t").await.total_requests, 50);
    server.stop().await;
}
