//! A data directory written by the builds that kept their table in sled
//! (`tests/data/sled-data-dir`, made by that build: three model versions, one promoted to
//! PRODUCTION, a running and a stopped test with results, result ids and metrics) is converted
//! at start and serves everything it held, bit for bit.

mod support;

use std::path::Path;

use arbiter::pb;
use support::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn golden_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sled-data-dir");
    copy_dir(&golden, dir.path());
    dir
}

/// Everything the golden directory holds, as its own build reported it.
async fn assert_golden_contents(server: &TestServer) {
    let mut registry = server.registry().await;
    let expected = [
        (
            "signal_a:1.0.0",
            pb::ModelStatus::Development,
            "02da38c1e06caa38cec39778c5ac82c2f10bc56c8da87702a4c12e0b07dbd45d",
            "5296bb66e0280d88f47cfd757938fdf838acb7cf54568c4d6f6e1bc7eda465d0",
            3000,
        ),
        (
            "signal_b:1.0.0",
            pb::ModelStatus::Production,
            "07ba738df28bf7ff4a608e68661e297a8acae3b2127ce1eb5ceb9a62fd82ce98",
            "",
            5000,
        ),
        (
            "signal_b:1.1.0",
            pb::ModelStatus::Development,
            "ee1e7f0155549e15027caeec08eae4677b29586af4b0105925ec84b8a482c3ee",
            "",
            6000,
        ),
    ];
    for (id, status, sha, policy, size) in expected {
        let m = metadata(&mut registry, id).await.expect(id);
        assert_eq!(m.status, status as i32, "{id}");
        assert_eq!(
            (
                m.model_checksum.as_str(),
                m.policy_checksum.as_str(),
                m.artifact_size_bytes
            ),
            (sha, policy, size),
            "{id}"
        );
        let verified = registry
            .verify_model(pb::ModelRef {
                registry_id: id.into(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(verified.ok, "{id}: {verified:?}");
    }
    let chain = verify_audit_chain(server).await;
    assert!(chain.ok && chain.events_checked >= 9, "{chain:?}");

    let running = test_results(server, "running").await;
    assert_eq!(running.status, pb::TestStatus::Running as i32);
    assert_eq!(
        (running.total_requests, running.total_allocations),
        (375, 40)
    );
    let arms: Vec<(u64, u64, u64, u64)> = running
        .arms
        .iter()
        .map(|a| {
            (
                a.total_requests,
                a.mean_return.to_bits(),
                a.std_return.to_bits(),
                a.additional_metrics["latency_ms"].count,
            )
        })
        .collect();
    assert_eq!(
        arms,
        vec![
            (125, 0x3f67ebaf102363b1, 0x3f741fc68e97ee1d, 40),
            (250, 0x3f67ebaf102363b1, 0x3f741a921fac2ea7, 85)
        ]
    );
    let stopped = test_results(server, "stopped").await;
    assert_eq!(stopped.status, pb::TestStatus::Completed as i32);
    assert_eq!(stopped.total_requests, 125);
}

#[tokio::test]
async fn a_sled_data_directory_is_converted_at_start_and_serves_everything_it_held() {
    let dir = golden_copy();
    let server = TestServer::start(dir.path()).await;
    assert_golden_contents(&server).await;
    // Result ids came across: a resent result is a duplicate.
    let mut resent = result("running", "arm_1", 0.001);
    resent.result_id = "r-0-1".into();
    let acks = ingest(
        &mut server.allocator().await,
        vec![pb::ResultBatch {
            sequence: 1,
            results: vec![resent],
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    assert_eq!((acks[0].accepted, acks[0].duplicates), (0, 1));
    server.stop().await;
    assert!(dir.path().join("store.redb").exists());
    assert!(
        !dir.path().join("db").exists(),
        "the sled directory is moved aside"
    );
    assert!(dir.path().join("db.sled-before-conversion/conf").exists());

    // A second start uses the converted store.
    let server = TestServer::start(dir.path()).await;
    assert_golden_contents(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_conversion_cut_short_is_finished_at_the_next_start() {
    // A crash during the copy leaves a partial file: it is discarded and the copy redone.
    let dir = golden_copy();
    std::fs::write(dir.path().join("store.redb.converting"), b"partial").expect("write");
    let server = TestServer::start(dir.path()).await;
    assert_golden_contents(&server).await;
    server.stop().await;
    assert!(!dir.path().join("store.redb.converting").exists());

    // A crash after the copy was put in place but before the sled directory was moved aside:
    // the copy is kept and only the last step runs.
    let dir = golden_copy();
    let server = TestServer::start(dir.path()).await;
    server.stop().await;
    std::fs::remove_dir_all(dir.path().join("db")).ok();
    std::fs::rename(
        dir.path().join("db.sled-before-conversion"),
        dir.path().join("db"),
    )
    .expect("put sled back");
    let server = TestServer::start(dir.path()).await;
    assert_golden_contents(&server).await;
    server.stop().await;
    assert!(!dir.path().join("db").exists());
    assert!(dir.path().join("db.sled-before-conversion/conf").exists());
}

/// Whether `server::run` refuses to start on `dir`, and with what.
async fn start_error(dir: &Path) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let run = arbiter::server::run(listener, TestServer::config(dir), std::future::pending());
    match tokio::time::timeout(std::time::Duration::from_secs(10), run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("started and stopped"),
        Err(_) => panic!("started"),
    }
}

#[tokio::test]
async fn a_directory_whose_data_is_ambiguous_is_refused_not_guessed() {
    // A store beside a sled database it was not converted from (say, restored next to it).
    let dir = golden_copy();
    {
        let other = tempfile::tempdir().expect("tempdir");
        drop(arbiter::storage::Storage::open(other.path()).expect("a fresh store"));
        std::fs::copy(
            other.path().join("store.redb"),
            dir.path().join("store.redb"),
        )
        .expect("copy");
    }
    let err = start_error(dir.path()).await;
    assert!(err.contains("not converted from"), "{err}");
    assert!(dir.path().join("db/conf").exists(), "nothing was moved");

    // Both the sled database and the copy kept by a conversion.
    let dir = golden_copy();
    copy_dir(
        &dir.path().join("db"),
        &dir.path().join("db.sled-before-conversion"),
    );
    let err = start_error(dir.path()).await;
    assert!(err.contains("which one holds the data"), "{err}");
}
