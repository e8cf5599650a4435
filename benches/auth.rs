//! What authentication adds to each call on the server: finding the principal of a bearer token
//! among 100 (a SHA-256 and a constant-time comparison with each digest) and counting a call
//! against its principal's rate limit. `arbiter bench --baseline unauthenticated` measures the
//! whole cost over gRPC.

use std::time::Instant;

use arbiter::auth::{token_digest, AuthTable, CallKind, RateLimiter};
use criterion::{criterion_group, criterion_main, Criterion};

fn auth(c: &mut Criterion) {
    let text: String = (0..100)
        .map(|i| {
            format!(
                "[[principal]]\nname = \"p{i}\"\nroles = [\"allocator\"]\ntoken_sha256 = \"{}\"\n",
                token_digest(&format!("token-{i:058}"))
            )
        })
        .collect();
    let table = AuthTable::parse(&text).expect("valid auth file");
    let token = format!("token-{:058}", 99);
    c.bench_function("auth/authenticate_token_of_100_principals", |b| {
        b.iter(|| table.authenticate(Some(&token), None).expect("known"))
    });
    let mut params = rcgen::CertificateParams::new(vec!["router-ny4".to_string()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "router-ny4");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    c.bench_function("auth/client_certificate_common_name", |b| {
        b.iter(|| arbiter::grpc::tls::common_name(cert.der()).expect("a CN"))
    });
    let limiter = RateLimiter::default();
    c.bench_function("auth/rate_limit_check", |b| {
        b.iter(|| {
            let _ = limiter.check("p99", CallKind::Read, 1_000_000_000, Instant::now());
        })
    });
}

criterion_group!(benches, auth);
criterion_main!(benches);
