//! The statistics behind results and early stopping: Welch's test, one look of the mixture SPRT,
//! and P(best) (numerical integration, or the normal approximation and Monte Carlo it falls back to).
//!
//! `cargo bench --bench stats`

use std::hint::black_box;

use arbiter::stats::{self, Posterior, Summary};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

fn statistics(c: &mut Criterion) {
    let control = Summary {
        n: 5000,
        mean: 0.001,
        std: 0.02,
    };
    let treatment = Summary {
        n: 4800,
        mean: 0.0015,
        std: 0.021,
    };
    c.bench_function("welch_t_test", |b| {
        b.iter(|| {
            black_box(stats::welch_t_test(
                black_box(control),
                black_box(treatment),
                0.05,
            ))
        })
    });
    c.bench_function("msprt_look", |b| {
        b.iter(|| {
            let log_lr = stats::mixture_log_likelihood_ratio(
                black_box(5e-4),
                black_box(1.7e-7),
                black_box(1.6e-5),
            );
            black_box(stats::always_valid_p_value(black_box(1.0), log_lr))
        })
    });
    // "small": ~100 results per arm; "large": ~10k results per arm. All are integrated
    // numerically (src/stats/pbest/quadrature.rs); before, "small" drew 4096 Monte Carlo samples
    // and "large" used the normal approximation.
    let beta = |scale: f64| {
        [
            Posterior::Beta {
                alpha: 52.0 * scale,
                beta: 48.0 * scale,
            },
            Posterior::Beta {
                alpha: 50.5 * scale,
                beta: 49.5 * scale,
            },
        ]
    };
    let nig4 = |scale: f64| {
        let nig = |mu| Posterior::NormalInverseGamma {
            mu,
            kappa: 100.0 * scale + 1.0,
            alpha: 50.0 * scale + 1.0,
            beta: 0.02 * scale,
        };
        [nig(0.001), nig(0.0012), nig(0.0008), nig(0.0011)]
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    // Eight Bernoulli arms with two results each: a new Thompson test's refresh.
    let beta8: Vec<Posterior> = (0..8)
        .map(|i| Posterior::Beta {
            alpha: 1.0 + (i % 3) as f64,
            beta: 3.0 - (i % 3) as f64,
        })
        .collect();
    c.bench_function("probability_best/beta_8_arms_tiny", |b| {
        b.iter(|| black_box(stats::probability_best(black_box(&beta8), 4096, &mut rng)))
    });
    for (size, scale) in [("small", 1.0), ("large", 100.0)] {
        let (beta, nig4) = (beta(scale), nig4(scale));
        c.bench_function(&format!("probability_best/beta_2_arms_{size}"), |b| {
            b.iter(|| black_box(stats::probability_best(black_box(&beta), 4096, &mut rng)))
        });
        c.bench_function(&format!("probability_best/nig_4_arms_{size}"), |b| {
            b.iter(|| black_box(stats::probability_best(black_box(&nig4), 4096, &mut rng)))
        });
    }
}

criterion_group!(benches, statistics);
criterion_main!(benches);
