//! The real `arbiter` binary: start-up on a kernel-chosen port, graceful shutdown on SIGTERM with
//! exit code 0, and no acknowledged write lost to `kill -9`.

mod support;

use std::time::Duration;

use arbiter::pb;
use support::process::spawn_binary;
use support::*;

#[tokio::test]
async fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn_binary(dir.path());
    let mut client = server.registry().await;
    register_simple(&mut client, "m", "1.0.0").await;
    // The open, idle connection must not keep the server from stopping.
    server.signal("-TERM");
    let status = server.wait().await;
    assert_eq!(status.code(), Some(0), "{status:?}");

    let server = spawn_binary(dir.path());
    let mut client = server.registry().await;
    metadata(&mut client, "m:1.0.0")
        .await
        .expect("survives a graceful restart");
    server.signal("-INT");
    assert_eq!(server.wait().await.code(), Some(0));
}

/// A second server on a data directory in use refuses to start, naming it, and touches nothing:
/// the running server's log files are unchanged and it keeps serving what it acknowledged.
#[tokio::test]
async fn a_second_server_on_the_same_directory_refuses_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn_binary(dir.path());
    let mut client = server.registry().await;
    register_simple(&mut client, "m", "1.0.0").await;
    let journal = |dir: &std::path::Path| {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.join("journal"))
            .expect("journal")
            .map(|e| {
                let e = e.expect("entry");
                let len = e.metadata().expect("stat").len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        files.sort();
        files
    };
    let before = journal(dir.path());
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run a second server");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another arbiter process"),
        "{stderr}"
    );
    // The running server may rotate and trim its log meanwhile, and only ever appends.
    for (name, len) in journal(dir.path()) {
        if let Some((_, was)) = before.iter().find(|(n, _)| *n == name) {
            assert!(len >= *was, "{name} was cut from {was} to {len} bytes");
        }
    }
    metadata(&mut client, "m:1.0.0")
        .await
        .expect("the first server still serves");
    server.signal("-TERM");
    assert_eq!(server.wait().await.code(), Some(0));
}

/// A data directory removed underneath a running server: SIGTERM still ends the process, within
/// the drain grace period plus the bounded final flush, with a non-zero code and the cause logged.
#[tokio::test]
async fn sigterm_ends_the_process_even_when_the_data_directory_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = spawn_binary(&data);
    let mut client = server.registry().await;
    let models = vec![
        register_simple(&mut client, "a", "1.0.0").await.registry_id,
        register_simple(&mut client, "b", "1.0.0").await.registry_id,
    ];
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    pb::experiments_client::ExperimentsClient::new(channel.clone())
        .create_test(test_request("t", &models))
        .await
        .expect("create");
    let mut allocator = pb::allocator_client::AllocatorClient::new(channel);
    let batch = pb::ResultBatch {
        sequence: 1,
        results: vec![result("t", "arm_0", 0.01)],
        ..Default::default()
    };
    ingest(&mut allocator, vec![batch]).await.expect("ingest");
    std::fs::remove_dir_all(&data).expect("remove the data directory");
    let started = std::time::Instant::now();
    server.signal("-TERM");
    let log = server.log.clone();
    let status = server.wait().await;
    let bound =
        Duration::from_secs(3) + arbiter::server::FINAL_FLUSH_TIMEOUT + Duration::from_secs(5);
    assert!(started.elapsed() < bound, "{:?} to exit", started.elapsed());
    assert_ne!(status.code(), Some(0), "{status:?}");
    let log = log.lock().expect("log").join("\n");
    assert!(log.contains("exiting with an error"), "{log}");
}

#[tokio::test]
async fn kill_dash_nine_loses_no_acknowledged_registration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn_binary(dir.path());
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = server.registry().await;
        let acked = acked_tx.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..1000u64 {
                let bytes = artifact_bytes(4096, i + 1);
                match register(
                    &mut client,
                    header(&format!("w{w}_{i}"), "1.0.0", "alice"),
                    &bytes,
                )
                .await
                {
                    Ok(m) => {
                        let _ = acked.send((m.registry_id, m.model_checksum));
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    drop(acked_tx);
    // Distinct model ids, so retention (10 versions per model) never removes one.
    // Let some registrations be acknowledged, then kill the process without warning.
    let mut acked = Vec::new();
    while acked.len() < 40 {
        acked.push(acked_rx.recv().await.expect("acks arrive"));
    }
    server.signal("-KILL");
    let _ = server.wait().await;
    for writer in writers {
        let _ = writer.await;
    }
    while let Ok(ack) = acked_rx.try_recv() {
        acked.push(ack);
    }

    let server = spawn_binary(dir.path());
    let mut client = server.registry().await;
    for (registry_id, checksum) in &acked {
        let m = metadata(&mut client, registry_id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {registry_id} lost: {e}"));
        assert_eq!(&m.model_checksum, checksum);
        let verified = client
            .verify_model(pb::ModelRef {
                registry_id: registry_id.clone(),
            })
            .await
            .expect("verify")
            .into_inner();
        assert!(verified.ok, "{registry_id}: {verified:?}");
    }
    let mut admin = arbiter::pb::admin_client::AdminClient::connect(server.url.clone())
        .await
        .expect("admin");
    let chain = admin
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify chain")
        .into_inner();
    assert!(chain.ok, "{chain:?}");
    assert!(chain.events_checked >= acked.len() as u64);
    assert!(
        dir_entries(&dir.path().join("tmp")).is_empty(),
        "partial uploads swept"
    );
    server.signal("-TERM");
    assert_eq!(server.wait().await.code(), Some(0));
}

/// Result `n` of the durability test: alternating arms, a deterministic return, a unique id.
fn numbered_result(n: u64) -> pb::ResultRecord {
    let mut r = result(
        "durable",
        if n.is_multiple_of(2) {
            "arm_0"
        } else {
            "arm_1"
        },
        ((n % 201) as f64 - 100.0) / 10_000.0,
    );
    r.result_id = format!("r{n}");
    r
}

fn numbered_batch(sequence: u64, size: u64) -> pb::ResultBatch {
    pb::ResultBatch {
        sequence,
        results: (sequence * size..(sequence + 1) * size)
            .map(numbered_result)
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn kill_dash_nine_mid_stream_loses_no_acknowledged_result_and_counts_none_twice() {
    const BATCHES: u64 = 100;
    const SIZE: u64 = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn_binary(dir.path());
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut experiments =
        arbiter::pb::experiments_client::ExperimentsClient::connect(server.url.clone())
            .await
            .expect("connect");
    let mut request = test_request("durable", &models);
    request.allocation_strategy = pb::AllocationStrategy::Fixed as i32;
    request.early_stopping = Some(false);
    experiments.create_test(request).await.expect("create");

    // Stream every batch at once; kill the server after a seeded-random number of acks.
    let kill_after = {
        let mut x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos() as u64
            | 1;
        x ^= x << 13;
        x ^= x >> 7;
        10 + x % 80
    };
    eprintln!("killing after {kill_after} acknowledged batches");
    let mut allocator = arbiter::pb::allocator_client::AllocatorClient::connect(server.url.clone())
        .await
        .expect("connect");
    let batches: Vec<pb::ResultBatch> = (0..BATCHES).map(|s| numbered_batch(s, SIZE)).collect();
    let mut acks = allocator
        .ingest_results(tokio_stream::iter(batches))
        .await
        .expect("stream")
        .into_inner();
    let mut acked = std::collections::BTreeSet::new();
    while let Ok(Some(ack)) = acks.message().await {
        assert_eq!((ack.accepted, ack.duplicates), (SIZE as u32, 0), "{ack:?}");
        acked.insert(ack.sequence);
        if acked.len() as u64 == kill_after {
            server.signal("-KILL");
            break;
        }
    }
    let _ = server.wait().await;
    drop((acks, allocator, experiments, registry));
    assert_eq!(acked.len() as u64, kill_after);

    let server = spawn_binary(dir.path());
    let mut experiments =
        arbiter::pb::experiments_client::ExperimentsClient::connect(server.url.clone())
            .await
            .expect("connect");
    let results =
        |e: &mut arbiter::pb::experiments_client::ExperimentsClient<tonic::transport::Channel>| {
            let mut e = e.clone();
            async move {
                e.get_test_results(pb::GetTestResultsRequest {
                    test_id: "durable".into(),
                })
                .await
                .expect("results")
                .into_inner()
            }
        };
    let after_crash = results(&mut experiments).await;
    assert!(
        after_crash.total_requests >= kill_after * SIZE,
        "{} results survived, {} were acknowledged",
        after_crash.total_requests,
        kill_after * SIZE
    );
    assert_eq!(
        after_crash.total_requests % SIZE,
        0,
        "batches are applied whole"
    );

    // Resend everything that was not acknowledged: applied ones come back as duplicates.
    let mut allocator = arbiter::pb::allocator_client::AllocatorClient::connect(server.url.clone())
        .await
        .expect("connect");
    let resend: Vec<pb::ResultBatch> = (0..BATCHES)
        .filter(|s| !acked.contains(s))
        .map(|s| numbered_batch(s, SIZE))
        .collect();
    let acks = ingest(&mut allocator, resend).await.expect("resend");
    let duplicates: u64 = acks.iter().map(|a| u64::from(a.duplicates)).sum();
    assert!(acks
        .iter()
        .all(|a| u64::from(a.accepted + a.duplicates) == SIZE && a.rejected.is_empty()));
    assert_eq!(duplicates, after_crash.total_requests - kill_after * SIZE);

    let last = results(&mut experiments).await;
    assert_eq!(
        last.total_requests,
        BATCHES * SIZE,
        "every result exactly once"
    );
    let mut expected = [
        arbiter::experiment::engine::posterior::ArmStats::default(),
        Default::default(),
    ];
    for n in 0..BATCHES * SIZE {
        expected[(n % 2) as usize].add(numbered_result(n).return_value);
    }
    for (arm, e) in last.arms.iter().zip(&expected) {
        assert_eq!(arm.total_requests, e.n);
        assert!(
            (arm.total_returns - e.total()).abs() < 1e-9,
            "{} vs {}",
            arm.total_returns,
            e.total()
        );
        assert!((arm.mean_return - e.mean).abs() < 1e-12);
        assert!((arm.std_return - e.std()).abs() < 1e-12);
    }
    server.signal("-TERM");
    assert_eq!(server.wait().await.code(), Some(0));
}
