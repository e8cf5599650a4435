//! A shutdown owns the background work: when the server has stopped, the engine's threads have
//! been joined, not left to notice on their own (alone in its binary, so that no other test's
//! server shares the process).

mod support;

use support::*;

/// Names of this process's threads (Linux truncates them to 15 bytes).
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn stopping_the_server_joins_the_engine_threads() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("skipped: no /proc to list threads");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    // A new thread names itself once it runs: until then it shows its parent's name.
    let wanted = ["arbiter-refresh", "arbiter-snapsho"];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let running = threads();
        if wanted.iter().all(|name| running.iter().any(|t| t == name)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{wanted:?} not all in {running:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.stop().await;
    // Right after the stop: the snapshot thread sleeps a second between rounds, so it is gone
    // only if the shutdown woke and joined it.
    let left = threads();
    for name in ["arbiter-refresh", "arbiter-snapsho", "arbiter-journal"] {
        assert!(
            !left.iter().any(|t| t == name),
            "{name} still runs: {left:?}"
        );
    }
}
