//! Durable result ingestion in process: a batch of 1, 100 or 1000 results (each with a result_id)
//! applied and made durable, as `IngestResults` does before acknowledging; and recovery time
//! (opening the whole engine on a data directory holding 100 000 results, after a crash with all
//! of them still in the journal and after a shutdown with all of them in snapshots; and the first
//! batch after that, which reads the test's 100 000 result ids).
//!
//! `cargo bench --bench storage`

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use arbiter::experiment::types::Strategy;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn storage(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = runtime.block_on(async {
        let engine = support::engine().await;
        let models = support::models(&engine.registry, 2).await;
        // "t" takes the timed batches; "fill" holds exactly the 100k results recovery reads.
        for test_id in ["t", "fill"] {
            let config = support::config(test_id, &models, 2, Strategy::ThompsonSampling);
            engine
                .experiments
                .create(config, "bench")
                .await
                .expect("create");
        }
        engine
    });
    let mut next_id = 0u64;
    let mut group = c.benchmark_group("durable_batch");
    for size in [1usize, 100, 1000] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, &size| {
            b.iter_custom(|iters| {
                let batches: Vec<Vec<_>> = (0..iters)
                    .map(|_| {
                        (0..size)
                            .map(|i| {
                                next_id += 1;
                                support::result(
                                    "t",
                                    i % 2,
                                    ((i % 13) as f64 - 6.0) * 1e-3,
                                    format!("r{next_id}"),
                                )
                            })
                            .collect()
                    })
                    .collect();
                runtime.block_on(async {
                    let started = Instant::now();
                    for batch in batches {
                        engine
                            .experiments
                            .record_batch(batch)
                            .await
                            .expect("durable");
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();

    // Fill a directory with 100k results, then measure opening it.
    runtime.block_on(async {
        for chunk in 0..100 {
            let batch = (0..1000)
                .map(|i| support::result("fill", i % 2, 1e-3, format!("fill-{chunk}-{i}")))
                .collect();
            engine.experiments.record_batch(batch).await.expect("fill");
        }
    });
    // As a crash leaves it: the 100k results are in the journal, no snapshot holds them, and
    // opening replays them. (Each timed open closes again well before its first snapshot round.)
    let mut dir = Some(support::close(engine));
    c.bench_function("recovery/open_engine_replaying_100k_results", |b| {
        time_opens(b, &runtime, &mut dir)
    });
    // As a shutdown leaves it: everything in snapshots, nothing to replay.
    let engine = runtime.block_on(support::open(dir.take().expect("dir")));
    engine.experiments.snapshot().expect("snapshot");
    let mut dir = Some(support::close(engine));
    c.bench_function("recovery/open_engine_100k_results", |b| {
        time_opens(b, &runtime, &mut dir)
    });
    // The first batch with result ids after opening reads the test's idempotency index (100k ids
    // here); a resent id must come back as a duplicate.
    c.bench_function("recovery/first_batch_reads_100k_result_ids", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let engine = runtime.block_on(support::open(dir.take().expect("dir")));
                let resent = vec![support::result("fill", 0, 1e-3, "fill-7-7".to_string())];
                let started = Instant::now();
                let outcomes = runtime
                    .block_on(engine.experiments.record_batch(resent))
                    .expect("durable");
                total += started.elapsed();
                assert!(matches!(
                    outcomes[0],
                    arbiter::experiment::RecordOutcome::Duplicate
                ));
                dir = Some(support::close(engine));
            }
            total
        })
    });
}

/// Times opening the whole engine on `dir` (closing it again after each open, untimed).
fn time_opens(
    b: &mut criterion::Bencher<'_>,
    runtime: &tokio::runtime::Runtime,
    dir: &mut Option<tempfile::TempDir>,
) {
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let started = Instant::now();
            let engine = runtime.block_on(support::open(dir.take().expect("dir")));
            total += started.elapsed();
            *dir = Some(support::close(engine));
        }
        total
    })
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = storage
}
criterion_main!(benches);
