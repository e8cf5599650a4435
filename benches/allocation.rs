//! Allocation decision time in process (no transport), per strategy at 2, 4, 8 and 32 arms, on one
//! thread, and on two threads deciding for the same test or for different tests.
//!
//! `cargo bench --bench allocation`

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use arbiter::experiment::types::Strategy;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const STRATEGIES: [(&str, Strategy); 4] = [
    ("fixed", Strategy::Fixed),
    ("thompson", Strategy::ThompsonSampling),
    ("ucb", Strategy::Ucb),
    ("epsilon_greedy", Strategy::EpsilonGreedy),
];

fn two_threads(
    experiments: &arbiter::experiment::Experiments,
    tests: [&str; 2],
    iters: u64,
) -> Duration {
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let handles: Vec<_> = tests
            .iter()
            .map(|test| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(experiments.decide(black_box(test), "").expect("decides"));
                    }
                    started.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .max()
            .expect("two threads")
    })
}

fn allocation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = runtime.block_on(async {
        let engine = support::engine().await;
        let models = support::models(&engine.registry, 32).await;
        for (name, strategy) in STRATEGIES {
            for arms in [2, 4, 8, 32] {
                let id = format!("{name}-{arms}");
                let config = support::config(&id, &models, arms, strategy);
                engine
                    .experiments
                    .create(config, "bench")
                    .await
                    .expect("create");
            }
        }
        engine
    });
    let experiments = &engine.experiments;

    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for (name, _) in STRATEGIES {
        for arms in [2, 4, 8, 32] {
            let id = format!("{name}-{arms}");
            group.bench_with_input(BenchmarkId::new(name, arms), &id, |b, id| {
                b.iter(|| black_box(experiments.decide(black_box(id), "").expect("decides")))
            });
        }
    }
    group.bench_function("fixed_unit_key/2", |b| {
        b.iter(|| {
            black_box(
                experiments
                    .decide(black_box("fixed-2"), black_box("order-42"))
                    .expect("decides"),
            )
        })
    });
    group.finish();

    let mut group = c.benchmark_group("decide_two_threads");
    group.throughput(Throughput::Elements(1));
    group.bench_function("same_test/thompson-4", |b| {
        b.iter_custom(|iters| two_threads(experiments, ["thompson-4", "thompson-4"], iters))
    });
    group.bench_function("different_tests/thompson-4+fixed-4", |b| {
        b.iter_custom(|iters| two_threads(experiments, ["thompson-4", "fixed-4"], iters))
    });
    group.finish();

    let mut group = c.benchmark_group("allocate_with_response_strings");
    group.throughput(Throughput::Elements(1));
    group.bench_function("thompson-4", |b| {
        b.iter(|| {
            black_box(
                experiments
                    .allocate(black_box("thompson-4"), "")
                    .expect("allocates"),
            )
        })
    });
    group.finish();
    drop(engine);
    drop(runtime);
}

criterion_group!(benches, allocation);
criterion_main!(benches);
