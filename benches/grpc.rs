//! Allocate through the real gRPC service on loopback: one client, one call at a time.
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
    let (mut client, stop) = runtime.block_on(async {
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
        let client = AllocatorClient::connect(url).await.expect("connect");
        ((client, test_id), stop)
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
    let _ = stop.send(());
}

criterion_group!(benches, grpc);
criterion_main!(benches);
