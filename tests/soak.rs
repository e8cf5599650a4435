//! A soak: the release binary under steady mixed load for ten minutes, about half of what it
//! saturates at on the 2-core reference machine. Allocations at a fixed rate on 8 connections,
//! results with ids over 2 streams, a model registered and promoted every 2 s, a test created
//! and another stopped every 10 s. Prints, per minute, the allocations answered, their p50 and
//! p99 latency and the server's RSS, then the first and the last minute side by side. Fails on
//! any error answer. Not part of the suite:
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! SOAK_SECS=120 SOAK_ALLOC_RATE=15000 SOAK_RESULT_RATE=40000 SOAK_RESULT_IDS=0 \
//!     cargo test --release --test soak -- --ignored --nocapture
//! ```

mod support;

/// The load here is many clients without authentication, which share one rate limit: limits are
/// not what this test is about.
const UNLIMITED: &[&str] = &["--change-rate-limit", "0", "--read-rate-limit", "0"];

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbiter::pb;
use hdrhistogram::Histogram;
use support::process::spawn_binary_with;
use support::*;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size of `pid` in MiB, from /proc.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One minute's figures.
struct Minute {
    latency: Histogram<u64>,
    rss: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "ten minutes; run by hand (see the module documentation)"]
async fn ten_minutes_of_mixed_load() {
    let secs = env_u64("SOAK_SECS", 600);
    let alloc_rate = env_u64("SOAK_ALLOC_RATE", 10_000);
    let result_rate = env_u64("SOAK_RESULT_RATE", 20_000);
    // Result ids make every result exactly-once, and each running test keeps its ids in memory
    // (16–40 bytes each); SOAK_RESULT_IDS=0 sends results without them.
    let with_ids = env_u64("SOAK_RESULT_IDS", 1) != 0;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = spawn_binary_with(dir.path(), UNLIMITED);
    let pid = server.child.id();

    let mut registry = server.registry().await;
    let mut models = Vec::new();
    for m in 0..4 {
        let id = register(
            &mut registry,
            header(&format!("model{m}"), "1.0.0", "alice"),
            b"w",
        )
        .await
        .expect("register")
        .registry_id;
        models.push(id);
    }
    let mut experiments = server.experiments().await;
    const TESTS: usize = 20;
    for t in 0..TESTS {
        experiments
            .create_test(pb::CreateTestRequest {
                early_stopping: Some(false),
                ..test_request(&format!("soak{t}"), &models[t % 3..t % 3 + 2])
            })
            .await
            .expect("create");
    }

    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let minutes = (secs as usize).div_ceil(60);
    let per_minute: Arc<Vec<Mutex<Histogram<u64>>>> = Arc::new(
        (0..minutes)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("hdr")))
            .collect(),
    );
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Allocations: 8 connections, each paced to an eighth of the rate.
    const CONNECTIONS: u64 = 8;
    let period = Duration::from_secs_f64(CONNECTIONS as f64 / alloc_rate as f64);
    for c in 0..CONNECTIONS {
        let mut client = server.allocator().await;
        let per_minute = per_minute.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut next = tokio::time::Instant::now();
            let mut i = c as usize;
            while Instant::now() < end {
                next += period;
                tokio::time::sleep_until(next).await;
                let sent = Instant::now();
                let answer = client
                    .allocate(pb::AllocateRequest {
                        test_id: format!("soak{}", i % TESTS),
                        unit_key: String::new(),
                    })
                    .await;
                i += 1;
                let minute = (sent.duration_since(started).as_secs() / 60) as usize;
                match answer {
                    Ok(_) => {
                        let micros = sent.elapsed().as_micros() as u64;
                        if let Some(h) = per_minute.get(minute) {
                            let _ = h.lock().expect("histogram").record(micros.max(1));
                        }
                    }
                    // A test stopped by the churn below answers with its status, not an error.
                    Err(e) => {
                        eprintln!("allocate: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // Results: 2 streams of batches of 500 with unique ids, paced to the rate.
    const BATCH: u64 = 500;
    for s in 0..2u64 {
        let mut client = server.allocator().await;
        let errors = errors.clone();
        let batch_period = Duration::from_secs_f64(2.0 * BATCH as f64 / result_rate as f64);
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::ResultBatch>(4);
            let acks = tokio::spawn(async move {
                let mut stream = client
                    .ingest_results(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .expect("stream")
                    .into_inner();
                let mut accepted = 0u64;
                while let Some(ack) = stream.message().await.expect("ack") {
                    accepted += u64::from(ack.accepted);
                }
                accepted
            });
            let mut next = tokio::time::Instant::now();
            let mut sequence = 0u64;
            while Instant::now() < end {
                next += batch_period;
                tokio::time::sleep_until(next).await;
                let results = (0..BATCH)
                    .map(|i| {
                        let n = sequence * BATCH + i;
                        let mut r = result(
                            &format!("soak{}", n % TESTS as u64),
                            if n.is_multiple_of(2) {
                                "arm_0"
                            } else {
                                "arm_1"
                            },
                            ((n % 41) as f64 - 18.0) / 2000.0,
                        );
                        if with_ids {
                            r.result_id = format!("s{s}-{n}");
                        }
                        r
                    })
                    .collect();
                if tx
                    .send(pb::ResultBatch {
                        sequence,
                        results,
                        ..Default::default()
                    })
                    .await
                    .is_err()
                {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                sequence += 1;
            }
            drop(tx);
            let accepted = acks.await.expect("acks");
            eprintln!("stream {s}: {accepted} results accepted in {sequence} batches");
        }));
    }

    // Churn: a new model version every 2 s, promoted; a new test every 10 s, an old one stopped.
    {
        let mut registry = server.registry().await;
        let mut experiments = server.experiments().await;
        let models = models.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                let version = format!("1.{n}.0");
                let ok = register(&mut registry, header("churn", &version, "alice"), b"w")
                    .await
                    .is_ok()
                    && promote(
                        &mut registry,
                        &format!("churn:{version}"),
                        pb::ModelStatus::Testing,
                    )
                    .await
                    .is_ok();
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if n.is_multiple_of(5) {
                    let created = experiments
                        .create_test(test_request(&format!("churn{n}"), &models[..2]))
                        .await;
                    let stopped = if n >= 10 {
                        experiments
                            .stop_test(pb::StopTestRequest {
                                test_id: format!("churn{}", n - 5),
                                ..Default::default()
                            })
                            .await
                            .map(drop)
                    } else {
                        Ok(())
                    };
                    if created.is_err() || stopped.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // RSS once a second; the figure of each minute is its last sample.
    let mut rss = vec![0.0; minutes];
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let minute = (started.elapsed().as_secs() / 60) as usize;
        if let Some(slot) = rss.get_mut(minute) {
            *slot = rss_mib(pid);
        }
    }
    for task in tasks {
        task.await.expect("load task");
    }

    let figures: Vec<Minute> = per_minute
        .iter()
        .zip(&rss)
        .map(|(h, &rss)| Minute {
            latency: h.lock().expect("histogram").clone(),
            rss,
        })
        .collect();
    println!("minute  allocations  p50 µs  p99 µs  RSS MiB");
    for (i, m) in figures.iter().enumerate() {
        println!(
            "{:>6}  {:>11}  {:>6}  {:>6}  {:>7.1}",
            i + 1,
            m.latency.len(),
            m.latency.value_at_quantile(0.5),
            m.latency.value_at_quantile(0.99),
            m.rss
        );
    }
    let (first, last) = (&figures[0], &figures[figures.len() - 1]);
    println!(
        "first minute: p99 {} µs, RSS {:.1} MiB; last minute: p99 {} µs, RSS {:.1} MiB",
        first.latency.value_at_quantile(0.99),
        first.rss,
        last.latency.value_at_quantile(0.99),
        last.rss
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "error answers during the soak"
    );
    server.signal("-TERM");
    assert_eq!(server.wait().await.code(), Some(0));
}
