//! Storage faults: a full disk under the journal, the store and artifact uploads. The affected
//! calls fail with a clear status and nothing unacknowledged is reported durable; allocations are
//! still answered; health and metrics show the fault; a restart on the freed disk serves every
//! acknowledged write. Needs root to mount a small tmpfs; skipped with a message otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbiter::pb;
use support::*;
use tonic::Code;

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .output()
            .is_ok_and(|o| o.status.success());
        mounted.then_some(Self { mount, _dir: dir })
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.mount.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let mut byte = [0u8; 1];
        while file.write_all(&byte[..]).is_ok() {
            byte[0] = byte[0].wrapping_add(1);
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

fn batch(sequence: u64) -> pb::ResultBatch {
    pb::ResultBatch {
        sequence,
        results: (0..100)
            .map(|i| {
                let mut r = result("t", if i % 2 == 0 { "arm_0" } else { "arm_1" }, 0.001);
                r.result_id = format!("r-{sequence}-{i}");
                r
            })
            .collect(),
        ..Default::default()
    }
}

async fn storage_health(server: &TestServer) -> i32 {
    storage_health_on(server.channel().await).await
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_keeps_allocating_and_loses_nothing_acknowledged() {
    let Some(disk) = SmallDisk::mount("24m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let data = disk.mount.join("data");
    let server = TestServer::start(&data).await;
    let models = register_models(&mut server.registry().await, 2).await;
    server
        .experiments()
        .await
        .create_test(pb::CreateTestRequest {
            early_stopping: Some(false),
            ..test_request("t", &models)
        })
        .await
        .expect("create");
    let mut allocator = server.allocator().await;
    assert_eq!(
        ingest(&mut allocator, vec![batch(0)])
            .await
            .expect("ingest")[0]
            .accepted,
        100
    );
    assert_eq!(storage_health(&server).await, 1, "SERVING");

    let filler = disk.fill();

    // An upload fails with RESOURCE_EXHAUSTED and leaves no temporary file.
    let mut registry = server.registry().await;
    let err = register(
        &mut registry,
        header("big", "1.0.0", "alice"),
        &artifact_bytes(512 * 1024, 1),
    )
    .await
    .expect_err("disk full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("disk is full"), "{err:?}");
    assert_eq!(entries(&data.join("tmp")), 0);

    // Test creation (a log entry, fsynced) fails clearly too: RESOURCE_EXHAUSTED when its own
    // write met the full disk, UNAVAILABLE naming it when a background write (a statistics
    // snapshot) met it first and the log already refuses writes.
    let mut experiments = server.experiments().await;
    // Larger than a page, so that it cannot fit in the slack of the log file's last page.
    let err = experiments
        .create_test(pb::CreateTestRequest {
            description: "x".repeat(16 * 1024),
            ..test_request("while-full", &models)
        })
        .await
        .expect_err("disk full");
    match err.code() {
        Code::ResourceExhausted => assert!(err.message().contains("disk is full"), "{err:?}"),
        Code::Unavailable => assert!(err.message().contains("No space left"), "{err:?}"),
        _ => panic!("{err:?}"),
    }

    // Results: every batch either is acknowledged (durable) or fails the stream.
    let mut acked = 100;
    let mut failure = None;
    let mut last_sent = 0;
    for sequence in 1..200 {
        last_sent = sequence;
        match ingest(&mut allocator, vec![batch(sequence)]).await {
            Ok(acks) => acked += acks[0].accepted,
            Err(status) => {
                failure = Some(status);
                break;
            }
        }
    }
    let failure = failure.expect("a full disk fails ingestion");
    assert!(
        matches!(failure.code(), Code::ResourceExhausted | Code::Unavailable),
        "{failure:?}"
    );
    // Allocations are answered from memory.
    assert_eq!(
        allocate(&mut allocator, "t").await.test_status,
        pb::TestStatus::Running as i32
    );
    let mut not_serving = false;
    for _ in 0..30 {
        if storage_health(&server).await == 2 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_serving, "health reports the fault");

    // The journal refuses results until restart, even once the disk has room again.
    std::fs::remove_file(&filler).expect("free the disk");
    let err = ingest(&mut allocator, vec![batch(500)])
        .await
        .expect_err("refused until restart");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("restart"), "{err:?}");
    // So does every other write: they all go through the log.
    let err = experiments
        .create_test(test_request("after-full", &models))
        .await
        .expect_err("refused until restart");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("log failed") && err.message().contains("restart"),
        "{err:?}"
    );
    // Allocations and acknowledged-early batches keep flowing; the fault stays reported until
    // the restart, however many of them succeed.
    for _ in 0..20 {
        allocate(&mut allocator, "t").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(storage_health(&server).await, 2, "still NOT_SERVING");
    drop((allocator, registry, experiments));
    // Shutdown cannot store its last snapshot, and says so (the journal still holds those
    // results for the next start).
    let shutdown = server.stop_with_error().await;
    assert!(shutdown.to_string().contains("restart"), "{shutdown}");

    // A restart serves every acknowledged result and takes new ones.
    let server = TestServer::start(&data).await;
    let results = test_results(&server, "t").await;
    assert!(
        results.total_requests >= u64::from(acked),
        "{} results after restart, {acked} acknowledged",
        results.total_requests
    );
    // Nothing of the refused creations exists.
    for id in ["while-full", "after-full"] {
        let err = server
            .experiments()
            .await
            .get_test(pb::GetTestRequest { test_id: id.into() })
            .await
            .expect_err("never created");
        assert_eq!(err.code(), Code::NotFound);
    }
    // Resending every batch counts each result exactly once.
    let mut allocator = server.allocator().await;
    let resent: Vec<pb::ResultBatch> = (0..=last_sent).map(batch).collect();
    ingest(&mut allocator, resent).await.expect("resend");
    let results = test_results(&server, "t").await;
    assert_eq!(results.total_requests, 100 * (last_sent + 1));
    let acks = ingest(&mut allocator, vec![batch(1000)])
        .await
        .expect("ingest");
    assert_eq!(acks[0].accepted, 100);
    assert_eq!(storage_health(&server).await, 1, "SERVING again");
    server.stop().await;
}
