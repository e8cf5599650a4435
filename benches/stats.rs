//! The statistics behind results and early stopping: Welch's test, one look of the mixture SPRT,
//! and P(best) by Monte Carlo.
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
    let beta = [
        Posterior::Beta {
            alpha: 520.0,
            beta: 480.0,
        },
        Posterior::Beta {
            alpha: 505.0,
            beta: 495.0,
        },
    ];
    let nig = |mu| Posterior::NormalInverseGamma {
        mu,
        kappa: 1001.0,
        alpha: 501.0,
        beta: 0.2,
    };
    let nig4 = [nig(0.001), nig(0.0012), nig(0.0008), nig(0.0011)];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    c.bench_function("probability_best/beta_2_arms_4096_draws", |b| {
        b.iter(|| black_box(stats::probability_best(black_box(&beta), 4096, &mut rng)))
    });
    c.bench_function("probability_best/nig_4_arms_4096_draws", |b| {
        b.iter(|| black_box(stats::probability_best(black_box(&nig4), 4096, &mut rng)))
    });
}

criterion_group!(benches, statistics);
criterion_main!(benches);
