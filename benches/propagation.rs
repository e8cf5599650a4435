//! Table propagation: from the `BatchAck` of a result batch that changes a test's allocation
//! table to the moment a watching `LocalAllocator` (client crate) holds the new table, on
//! loopback, in one process with the server. Prints percentiles for batches spaced 30 ms apart
//! (each change travels alone) and 2 ms apart (changes coalesce, one update per 10 ms window).
//!
//! `cargo bench --bench propagation`

use std::time::{Duration, Instant};

use arbiter::pb::{self, allocator_client::AllocatorClient};
use arbiter::server::ServerConfig;

const BATCHES: usize = 400;

fn main() {
    // `cargo bench` passes `--bench`; a filter that names nothing here skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"propagation".contains(a.as_str()))
    {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let config = ServerConfig {
        shutdown_grace: Duration::from_secs(5),
        ..ServerConfig::new(dir.path().to_path_buf())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(arbiter::server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let test_id = arbiter::loadgen::create_test_on(&url)
        .await
        .expect("bench test");
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).expect("url");
    let local = arbiter_client::LocalAllocator::start(
        vec![endpoint],
        arbiter_client::WatchOptions::new("propagation").tests([test_id.clone()]),
    );
    assert!(local.ready(Duration::from_secs(10)).await, "tables");

    let mut allocator = AllocatorClient::connect(url).await.expect("connect");
    for spacing in [Duration::from_millis(30), Duration::from_millis(2)] {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut acks = allocator
            .ingest_results(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        let mut after_ack = Vec::with_capacity(BATCHES);
        let mut after_send = Vec::with_capacity(BATCHES);
        for i in 0..BATCHES {
            let (version, _) = local.table_of(&test_id).expect("table");
            let results = (0..20)
                .map(|j| pb::ResultRecord {
                    test_id: test_id.clone(),
                    attribution: Some(pb::result_record::Attribution::ArmId(format!(
                        "arm_{}",
                        (i + j) % 2
                    ))),
                    return_value: 0.001 * ((i * 7 + j) % 5) as f64 - 0.001,
                    ..Default::default()
                })
                .collect();
            let sent = Instant::now();
            tx.send(pb::ResultBatch {
                sequence: i as u64,
                results,
                ..Default::default()
            })
            .await
            .expect("send");
            acks.message().await.expect("ack").expect("ack");
            let acked = Instant::now();
            let updated = local
                .wait_for_table(&test_id, Duration::from_secs(5), |v, _, _| v > version)
                .await;
            let now = Instant::now();
            assert!(updated, "no new table within 5 s of batch {i}");
            after_ack.push(now.saturating_duration_since(acked));
            after_send.push(now - sent);
            tokio::time::sleep(spacing.saturating_sub(sent.elapsed())).await;
        }
        drop(tx);
        report("ack → client update", spacing, &mut after_ack);
        report("send → client update", spacing, &mut after_send);
    }
    let _ = stop.send(());
    let _ = server.await;
}

fn report(what: &str, spacing: Duration, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "propagation {what}, batches every {} ms ({} batches): p50 {:.2} ms, p90 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms",
        spacing.as_millis(),
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}
