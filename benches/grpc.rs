//! Allocate through the real gRPC service on loopback (one client, one call at a time), and in
//! the same run the client crate's `LocalAllocator::allocate` on tables the same server streams:
//! 2, 8 and 32 arms (Thompson sampling), and a FIXED test with a unit key.
//!
//! `cargo bench --bench grpc`

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use arbiter::pb::{self, allocator_client::AllocatorClient};
use arbiter::server::ServerConfig;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn grpc(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut client, stop, url) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let config = ServerConfig {
            shutdown_grace: Duration::from_secs(5),
            ..ServerConfig::new(dir.path().to_path_buf())
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(arbiter::server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let test_id = arbiter::loadgen::create_test_on(&url)
            .await
            .expect("bench test");
        let client = AllocatorClient::connect(url.clone())
            .await
            .expect("connect");
        ((client, test_id), stop, url)
    });
    let (ref mut allocator, ref test_id) = client;
    let mut group = c.benchmark_group("grpc");
    group.throughput(Throughput::Elements(1));
    group.bench_function("allocate_unary_loopback", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    allocator
                        .allocate(pb::AllocateRequest {
                            test_id: test_id.clone(),
                            unit_key: String::new(),
                        })
                        .await
                        .expect("allocate");
                }
                started.elapsed()
            })
        })
    });
    group.finish();

    // The same server's tables, decided in this process.
    let local = runtime.block_on(local_allocator_on(&url));
    let mut group = c.benchmark_group("client");
    group.throughput(Throughput::Elements(1));
    for (test_id, unit_key, name) in [
        ("local-2", "", "local_allocate/2_arms"),
        ("local-8", "", "local_allocate/8_arms"),
        ("local-32", "", "local_allocate/32_arms"),
        (
            "local-fixed-8",
            "order-20261204-000042",
            "local_allocate_fixed_unit_key/8_arms",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                local
                    .allocate(
                        std::hint::black_box(test_id),
                        std::hint::black_box(unit_key),
                    )
                    .expect("decision")
            })
        });
    }
    group.finish();
    drop(local);
    let _ = stop.send(());
}

/// Registers 32 models on `url`, creates the tests the local benches decide on, and returns a
/// client-side allocator holding their tables.
async fn local_allocator_on(url: &str) -> arbiter_client::LocalAllocator {
    let models = arbiter::loadgen::register_bench_models(url, 32)
        .await
        .expect("register");
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut experiments = pb::experiments_client::ExperimentsClient::new(channel);
    for (test_id, arms, fixed) in [
        ("local-2", 2, false),
        ("local-8", 8, false),
        ("local-32", 32, false),
        ("local-fixed-8", 8, true),
    ] {
        experiments
            .create_test(pb::CreateTestRequest {
                test_id: test_id.into(),
                created_by: "bench".into(),
                model_registry_ids: models[..arms].to_vec(),
                allocation_strategy: if fixed {
                    pb::AllocationStrategy::Fixed as i32
                } else {
                    pb::AllocationStrategy::Unspecified as i32
                },
                ..Default::default()
            })
            .await
            .expect("create");
    }
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).expect("url");
    let local = arbiter_client::LocalAllocator::start(
        vec![endpoint],
        arbiter_client::WatchOptions::new("bench"),
    );
    assert!(local.ready(Duration::from_secs(10)).await, "tables");
    local
}

criterion_group!(benches, grpc);
criterion_main!(benches);
