//! Measurements too slow for the default suite (run them in release):
//!
//! `cargo test --release --test scale -- --ignored --nocapture`
//!
//! They print figures for the notes; correctness at scale is asserted, timing is only reported.

mod support;

use std::time::{Duration, Instant};

use arbiter::pb;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn restart_after_a_million_results() {
    const BATCHES: u64 = 1000;
    const SIZE: u64 = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    let models = register_models(&mut registry, 2).await;
    let mut experiments = server.experiments().await;
    let mut request = test_request("big", &models);
    request.early_stopping = Some(false);
    experiments.create_test(request).await.expect("create");

    let started = Instant::now();
    let accepted = ingest_on_streams(&server.url(), 2, |stream| {
        let stream = stream as u64;
        (0..BATCHES / 2)
            .map(|b| {
                let sequence = stream * BATCHES / 2 + b;
                pb::ResultBatch {
                    sequence,
                    results: (0..SIZE)
                        .map(|i| {
                            let n = sequence * SIZE + i;
                            let mut r = result(
                                "big",
                                if n.is_multiple_of(2) {
                                    "arm_0"
                                } else {
                                    "arm_1"
                                },
                                (n % 97) as f64 / 1e4,
                            );
                            r.result_id = format!("r{n}");
                            r
                        })
                        .collect(),
                    ..Default::default()
                }
            })
            .collect()
    })
    .await;
    let ingest_secs = started.elapsed().as_secs_f64();
    assert_eq!(accepted, BATCHES * SIZE);
    println!(
        "ingested {accepted} results with result_ids in {ingest_secs:.2} s over 2 streams: {:.0} durable results/s",
        accepted as f64 / ingest_secs
    );
    drop((registry, experiments));
    server.stop().await;
    let db_bytes = std::fs::metadata(dir.path().join("store.redb")).map_or(0, |m| m.len());
    println!("store size: {:.1} MiB", db_bytes as f64 / (1 << 20) as f64);

    let started = Instant::now();
    let server = TestServer::start(dir.path()).await;
    let ready = started.elapsed();
    let mut experiments = server.experiments().await;
    let results = experiments
        .get_test_results(pb::GetTestResultsRequest {
            test_id: "big".into(),
        })
        .await
        .expect("results")
        .into_inner();
    assert_eq!(results.total_requests, BATCHES * SIZE);
    println!(
        "restart to a serving server with {} results on disk: {ready:?}",
        results.total_requests
    );
    assert!(ready < Duration::from_secs(60));

    // The first batch with result ids after the restart reads the test's idempotency index.
    let mut allocator = server.allocator().await;
    let resend = |sequence: u64, first: u64| pb::ResultBatch {
        sequence,
        results: (first..first + SIZE)
            .map(|n| {
                let mut r = result("big", "arm_0", 0.0);
                r.result_id = format!("r{n}");
                r
            })
            .collect(),
        ..Default::default()
    };
    let started = Instant::now();
    let acks = ingest(&mut allocator, vec![resend(0, 0)])
        .await
        .expect("resend");
    let first_batch = started.elapsed();
    assert_eq!((acks[0].accepted, acks[0].duplicates), (0, SIZE as u32));
    let started = Instant::now();
    let acks = ingest(&mut allocator, vec![resend(1, BATCHES * SIZE)])
        .await
        .expect("new batch");
    let next_batch = started.elapsed();
    assert_eq!((acks[0].accepted, acks[0].duplicates), (SIZE as u32, 0));
    println!(
        "after restart: first batch of {SIZE} resent ids (reads the index of {} ids) acknowledged \
         in {first_batch:?}, all duplicates; the next batch of new ids in {next_batch:?}",
        BATCHES * SIZE
    );
    server.stop().await;
}

/// Runs `streams` IngestResults streams at once, each on a connection of its own, sending the
/// batches `batches(stream)` builds (inside the stream's task, so building runs in parallel and
/// within the caller's timing as well); returns the results accepted.
async fn ingest_on_streams<F>(url: &str, streams: usize, batches: F) -> u64
where
    F: Fn(usize) -> Vec<pb::ResultBatch> + Clone + Send + 'static,
{
    let mut tasks = Vec::new();
    for stream in 0..streams {
        let (url, build) = (url.to_string(), batches.clone());
        tasks.push(tokio::spawn(async move {
            let batches = build(stream);
            let mut allocator = pb::allocator_client::AllocatorClient::connect(url)
                .await
                .expect("connect");
            let acks = ingest(&mut allocator, batches).await.expect("ingest");
            acks.iter().map(|a| u64::from(a.accepted)).sum::<u64>()
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.expect("stream");
    }
    accepted
}

/// `arbiter serve` on `port` and `data_dir`, as a child process.
fn spawn_server(port: u16, data_dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        // Creating 10k tests is far beyond the default change rate limit.
        .env("ARBITER_CHANGE_RATE_LIMIT", "0")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn memory_with_ten_thousand_tests_of_eight_arms() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut child = spawn_server(port, dir.path());
    let url = format!("http://127.0.0.1:{port}");
    let mut registry = loop {
        match pb::registry_client::RegistryClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let models = register_models(&mut registry, 8).await;
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .expect("VmRSS")
    };
    let before = rss(child.id());
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let url = url.clone();
        let models = models.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::experiments_client::ExperimentsClient::connect(url)
                .await
                .expect("connect");
            for i in (worker..10_000).step_by(8) {
                client
                    .create_test(test_request(&format!("t{i}"), &models))
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(child.id());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let later = rss(child.id());
    let mib = |kb: u64| kb as f64 / 1024.0;
    println!(
        "RSS with 8 models: {:.1} MiB; 2 s after creating 10 000 tests × 8 arms: {:.1} MiB; \
         30 s later: {:.1} MiB",
        mib(before),
        mib(after),
        mib(later)
    );
    // One allocation per test: the next persist writes 10k allocation records (and the tests
    // now hold allocation state).
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut allocator = pb::allocator_client::AllocatorClient::connect(url)
                .await
                .expect("connect");
            for i in (worker..10_000).step_by(8) {
                allocator
                    .allocate(pb::AllocateRequest {
                        test_id: format!("t{i}"),
                        unit_key: String::new(),
                    })
                    .await
                    .expect("allocate");
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "3 s after one allocation per test: {:.1} MiB",
        mib(rss(child.id()))
    );
    // Traffic: two results per arm for every test, with result ids (each test then also holds
    // its idempotency index, for five minutes after its last batch, and a report series).
    let started = Instant::now();
    let accepted = ingest_on_streams(&url, 8, |worker| {
        let tests: Vec<usize> = (worker..10_000).step_by(8).collect();
        tests
            .chunks(6)
            .enumerate()
            .map(|(sequence, chunk)| pb::ResultBatch {
                sequence: sequence as u64,
                results: chunk
                    .iter()
                    .flat_map(|&t| {
                        (0..16).map(move |j| {
                            let mut r = result(
                                &format!("t{t}"),
                                &format!("arm_{}", j % 8),
                                ((t + j) % 7) as f64 / 1e3 - 0.002,
                            );
                            r.result_id = format!("t{t}-{j}");
                            r
                        })
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    })
    .await;
    assert_eq!(accepted, 160_000);
    println!(
        "160 000 results over 10 000 tests (8 streams, batches of 96): {:.0} durable results/s",
        160_000.0 / started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_results = rss(child.id());
    tokio::time::sleep(Duration::from_secs(30)).await;
    println!(
        "after 16 results per test (with result ids): {:.1} MiB; 30 s later: {:.1} MiB",
        mib(with_results),
        mib(rss(child.id()))
    );
    // The same state read back by a fresh process (what a restarted server holds).
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let mut child = spawn_server(port, dir.path());
    let mut experiments = loop {
        match pb::experiments_client::ExperimentsClient::connect(url.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    // Connecting can succeed before the server has loaded its state; an answer cannot.
    let started = std::time::Instant::now();
    experiments
        .get_test(pb::GetTestRequest {
            test_id: "t9999".into(),
        })
        .await
        .expect("serving");
    println!(
        "restart: serving {:.2} s after connecting",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "RSS of a restarted server holding the 10 000 tests: {:.1} MiB",
        mib(rss(child.id()))
    );
    // CPU of the idle server (background refresher, persister, sampler over 10 000 tests).
    let cpu_ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit(") ")
            .next()
            .expect("fields")
            .split(' ')
            .collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    // The first seconds after start are spent recomputing every running test's table in the
    // background (each serves its stored table meanwhile); then the server is idle.
    let mut ticks = cpu_ticks(child.id());
    for phase in ["recomputing tables after start", "idle"] {
        tokio::time::sleep(Duration::from_secs(15)).await;
        let now = cpu_ticks(child.id());
        println!(
            "CPU of that server, {phase}: {:.1}% of one core over 15 s",
            (now - ticks) as f64 / 15.0 // 100 ticks per second (USER_HZ)
        );
        ticks = now;
    }
    // 10 000 tests in one answer are ~5 MB, above tonic's default 4 MiB limit: pages of 1000.
    let listed: std::collections::HashSet<String> = list_test_pages(&mut experiments, None, 1000)
        .await
        .into_iter()
        .flatten()
        .map(|t| t.test_id)
        .collect();
    assert_eq!(listed.len(), 10_000);
    let _ = child.kill();
    let _ = child.wait();
}

/// A batch of 100k records naming 10k distinct tests (the default limit; none of them exists)
/// while another connection allocates: the batch's time and the allocations' latency meanwhile.
/// Grouping was quadratic in the tests of a batch and ran on the runtime threads that answer
/// Allocate: such a batch (with 100k tests) took 20–29 s and stalled every Allocate as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn a_batch_spread_over_ten_thousand_tests_beside_allocations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut client = server.allocator().await;
    let stop = done.clone();
    let allocations = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut n = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let sent = Instant::now();
            allocate(&mut client, "t").await;
            worst = worst.max(sent.elapsed());
            n += 1;
        }
        (n, worst)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let batch = pb::ResultBatch {
        sequence: 1,
        results: (0..100_000)
            .map(|i| result(&format!("unknown-{}", i % 10_000), "arm_0", 0.01))
            .collect(),
        ..Default::default()
    };
    let started = Instant::now();
    let acks = ingest(&mut server.allocator().await, vec![batch])
        .await
        .expect("ingest");
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (n, worst) = allocations.await.expect("allocations");
    assert_eq!(acks[0].rejected.len(), 100_000);
    println!(
        "100k records over 10k unknown tests: answered in {took:?}; meanwhile {n} allocations \
         on another connection, the slowest {worst:?}"
    );
    server.stop().await;
}
