//! Continuous monitoring, simulated: many two-arm tests checked after every batch of 50
//! results per arm, up to 5000 per arm, through the same `look` / `evidence` / `decide` functions
//! the server runs after each applied batch.
//!
//! To keep the default suite fast, a batch is drawn as its exact sufficient statistics instead of
//! 50 separate returns: for normal returns the batch mean is N(μ, σ²/50) and the sum of squared
//! deviations is σ²·χ²₄₉, independently (Cochran's theorem), which is what 50 draws would give.

use rand::SeedableRng;
use rand_distr::{ChiSquared, Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::posterior::ArmStats;
use super::stopping::{self, SequentialState};
use crate::experiment::types::*;
use crate::registry::types::RegistryId;
use crate::stats::{self, Summary};

const BATCH: u64 = 50;
const MAX_PER_ARM: u64 = 5000;
const SD: f64 = 0.01;

/// A two-arm FIXED Gaussian test without allocation limits.
pub(in crate::experiment) fn config(minimum_sample_size: u64, alpha: f64) -> TestConfig {
    let arm = |i: usize| ArmConfig {
        arm_id: crate::experiment::types::ARM_IDS[i].into(),
        model: SharedRegistryId::new(
            RegistryId::parse("registry_id", &format!("m{i}:1.0.0")).expect("valid"),
        ),
        weight: 0.5,
    };
    TestConfig {
        test_id: TestId::parse("sim").expect("valid"),
        name: "sim".into(),
        description: String::new(),
        created_by: "sim".into(),
        arms: vec![arm(0), arm(1)],
        strategy: Strategy::Fixed,
        reward_model: RewardModel::Gaussian,
        epsilon: 0.1,
        ucb_exploration: 2f64.sqrt(),
        significance_level: alpha,
        minimum_sample_size,
        minimum_effect_size: 0.0,
        max_duration_days: 30.0,
        early_stopping: true,
        stop_loss_threshold: -1.0,
        min_allocation_per_arm: 0.0,
        max_allocation_per_arm: 1.0,
        control_arm: 0,
        on_drift: Default::default(),
        settlement_period_secs: 0,
    }
}

struct Outcome {
    /// Results per arm when the always-valid test stopped.
    sequential_stop: Option<u64>,
    /// Whether a Welch test at the same looks ever rejected (naive peeking).
    naive_rejected: bool,
}

fn simulate(config: &TestConfig, effect: f64, rng: &mut Xoshiro256PlusPlus) -> Outcome {
    let batch_mean = |mu: f64| Normal::new(mu, SD / (BATCH as f64).sqrt()).expect("valid");
    let means = [batch_mean(0.0), batch_mean(effect)];
    let m2 = ChiSquared::new((BATCH - 1) as f64).expect("valid");
    let mut arms = vec![ArmStats::default(), ArmStats::default()];
    let mut sequential = vec![SequentialState::default()];
    let mut outcome = Outcome {
        sequential_stop: None,
        naive_rejected: false,
    };
    while arms[0].n < MAX_PER_ARM {
        for (arm, mean) in arms.iter_mut().zip(&means) {
            arm.merge(&ArmStats::from_moments(
                BATCH,
                mean.sample(rng),
                SD * SD * m2.sample(rng),
            ));
        }
        if !stopping::monitoring(config, &arms) {
            continue;
        }
        if outcome.sequential_stop.is_none() {
            stopping::look(config, &arms, &mut sequential);
            let evidence = stopping::evidence(config, &arms, &sequential);
            if stopping::decide(config, &arms, &evidence).is_some() {
                outcome.sequential_stop = Some(arms[0].n);
            }
        }
        if !outcome.naive_rejected {
            let (a, b): (Summary, Summary) = (arms[0].summary(), arms[1].summary());
            outcome.naive_rejected = stats::welch_t_test(a, b, config.significance_level)
                .is_some_and(|w| w.p <= config.significance_level);
        }
        if outcome.sequential_stop.is_some() && outcome.naive_rejected {
            break;
        }
    }
    outcome
}

#[test]
fn a_a_tests_monitored_after_every_batch_keep_the_false_positive_rate() {
    let alpha = 0.05;
    let config = config(100, alpha);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(20261127);
    let runs = 2000;
    let (mut sequential, mut naive) = (0, 0);
    for _ in 0..runs {
        let outcome = simulate(&config, 0.0, &mut rng);
        sequential += usize::from(outcome.sequential_stop.is_some());
        naive += usize::from(outcome.naive_rejected);
    }
    let (seq_rate, naive_rate) = (sequential as f64 / runs as f64, naive as f64 / runs as f64);
    println!(
        "A/A, {runs} tests, a look every {BATCH} results per arm from 100 to {MAX_PER_ARM}: \
         always-valid stops {seq_rate:.4}, naive repeated Welch t-test stops {naive_rate:.4} (α = {alpha})"
    );
    // The bar is α + 1.5 points. Seeded, so deterministic; with a true rate at α the binomial sd
    // over 2000 runs is 0.49 points, so the bar sits 3 sd above α.
    assert!(
        seq_rate <= alpha + 0.015,
        "always-valid false-positive rate {seq_rate}"
    );
    // Peeking inflates the naive test's error several-fold; that is the bug this replaces.
    assert!(naive_rate > 2.0 * alpha, "naive rate {naive_rate}");
}

#[test]
fn a_b_tests_with_a_real_effect_stop_early() {
    let alpha = 0.05;
    let config = config(100, alpha);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let runs = 500;
    let mut stops: Vec<u64> = (0..runs)
        .filter_map(|_| simulate(&config, 0.2 * SD, &mut rng).sequential_stop)
        .collect();
    stops.sort_unstable();
    let share = stops.len() as f64 / runs as f64;
    let median = stops.get(stops.len() / 2).copied().unwrap_or(0);
    let fixed = stats::sample_size_per_arm(SD, 0.2 * SD, alpha, 0.8, 2).expect("valid");
    println!(
        "A/B with d = 0.2, {runs} tests: {:.1}% stopped by {MAX_PER_ARM} per arm; median results per arm at \
         the stop {median}; fixed-horizon sample size (80% power) {fixed}",
        share * 100.0
    );
    assert!(share > 0.9, "only {share} of A/B tests stopped");
    assert!(median < MAX_PER_ARM);
}

#[test]
fn zero_variance_never_stops_a_test() {
    let config = config(10, 0.05);
    let mut arms = vec![ArmStats::default(), ArmStats::default()];
    let mut sequential = vec![SequentialState::default()];
    for _ in 0..1000 {
        arms[0].add(0.01);
        arms[1].add(0.02);
        stopping::look(&config, &arms, &mut sequential);
    }
    let evidence = stopping::evidence(&config, &arms, &sequential);
    assert_eq!(sequential[0].p, 1.0);
    assert_eq!(stopping::decide(&config, &arms, &evidence), None);
}
