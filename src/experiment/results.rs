//! The results of a test: per-arm figures, the comparisons with the control arm, the
//! winner, P(arm is best) and the sample-ratio-mismatch check.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use crate::stats;
use crate::time::{self, UnixNanos};

use super::decision::StopDecision;
use super::posterior::{posteriors, ArmStats, MetricStats};
use super::stopping::{self, Comparison};
use super::track::ArmTrack;
use super::types::{TestConfig, TestStatus};
use super::{Experiments, Result};

const NANOS_PER_DAY: f64 = 86_400e9;

/// Monte Carlo draws behind the reported P(best) when it cannot be integrated
/// (`stats::probability_best`): standard error ≤ 0.5/√draws (0.55 points for 8192). The generator
/// is seeded with a constant, so the same data give the same figures.
fn probability_best_draws(arms: usize) -> usize {
    if arms <= 8 {
        8192
    } else {
        2048
    }
}

/// Figures of one arm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmResults {
    /// `arm_<i>`.
    pub arm_id: String,
    /// The arm's model version.
    pub model_registry_id: String,
    /// Results recorded.
    pub total_requests: u64,
    /// Decisions allocated to the arm.
    pub allocations: u64,
    /// Sum of returns.
    pub total_returns: f64,
    /// Mean return.
    pub mean_return: f64,
    /// Sample standard deviation (n − 1).
    pub std_return: f64,
    /// Student t interval of the mean; `None` below two results.
    pub confidence_interval: Option<(f64, f64)>,
    /// Mean / std; 0 when std is 0.
    pub sharpe_ratio: f64,
    /// Share of returns > 0.
    pub win_rate: f64,
    /// Smallest return (0 when none).
    pub min_return: f64,
    /// Largest return (0 when none).
    pub max_return: f64,
    /// Current probability of allocation.
    pub allocation_weight: f64,
    /// P(arm is best) under the test's reward model.
    pub probability_best: f64,
    /// Held at the floor (stop-loss, or drift in a test that suspends on it).
    pub suspended: bool,
    /// Count and mean per additional metric.
    pub additional_metrics: BTreeMap<String, MetricStats>,
    /// Largest fall of the cumulative return from a running peak, in result order.
    pub max_drawdown: f64,
    /// Interval of the Sharpe ratio at 1 − α (Lo 2002).
    pub sharpe_ci: Option<(f64, f64)>,
    /// The version's registered backtest Sharpe ratio.
    pub backtest_sharpe: Option<f64>,
    /// The version's registered backtest maximum drawdown.
    pub backtest_max_dd: Option<f64>,
    /// Drift found in the arm's returns.
    pub drift: DriftSummary,
}

/// What the drift detector of an arm has found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DriftSummary {
    /// Alarms so far.
    pub alarms: u64,
    /// The arm's result count at the first alarm (0: none).
    pub first_at: u64,
    /// The arm's result count at the last alarm (0: none).
    pub last_at: u64,
    /// The last alarm's direction: +1 a rise of the mean, −1 a fall, 0 none.
    pub last_direction: i8,
    /// The detector's current statistic (an alarm fires above 24).
    pub statistic: f64,
}

impl DriftSummary {
    fn of(track: &ArmTrack) -> Self {
        Self {
            alarms: track.drift_alarms(),
            first_at: track.first_drift_at(),
            last_at: track.last_drift().map_or(0, |d| d.at),
            last_direction: track.last_drift().map_or(0, |d| d.direction),
            statistic: track.detector.statistic(),
        }
    }
}

/// One comparison of a treatment arm with the control (signs: treatment − control).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonResults {
    /// Control arm id.
    pub control_arm: String,
    /// Treatment arm id.
    pub treatment_arm: String,
    /// Holm-adjusted always-valid p ≤ α and |difference| ≥ minimum effect.
    pub significant: bool,
    /// Welch's two-sided p (1 when undefined); valid for a single look only.
    pub p_value: f64,
    /// Welch's t (0 when undefined).
    pub t_statistic: f64,
    /// Welch–Satterthwaite degrees of freedom (0 when undefined).
    pub degrees_of_freedom: f64,
    /// Cohen's d (0 when undefined).
    pub effect_size: f64,
    /// Difference of means.
    pub difference: f64,
    /// Welch interval of the difference at 1 − α.
    pub difference_ci: Option<(f64, f64)>,
    /// Arm with the higher mean, once both arms have two results.
    pub leader: Option<String>,
    /// The leader, only when the comparison is significant.
    pub winner: Option<String>,
    /// Running always-valid p-value (mixture SPRT).
    pub always_valid_p_value: f64,
    /// Holm-adjusted always-valid p-value (tests with several treatment arms).
    pub adjusted_p_value: Option<f64>,
}

/// The results of a test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestResults {
    /// Test id.
    pub test_id: String,
    /// Display name.
    pub name: String,
    /// Status.
    pub status: TestStatus,
    /// Creation time (ns since epoch).
    pub created_at: UnixNanos,
    /// Age, or length once ended, in days.
    pub duration_days: f64,
    /// Results recorded.
    pub total_requests: u64,
    /// Decisions made.
    pub total_allocations: u64,
    /// Per-arm figures.
    pub arms: Vec<ArmResults>,
    /// One per non-control arm.
    pub comparisons: Vec<ComparisonResults>,
    /// The declared winner of an ended test, or the winner the evidence supports so far.
    pub winner: Option<String>,
    /// Why the test ended.
    pub stop_reason: String,
    /// When it ended (ns since epoch).
    pub stopped_at: Option<UnixNanos>,
    /// χ² test of allocation counts against their expected counts; `None` before any allocation.
    pub srm_p_value: Option<f64>,
    /// Ended, and its settlement period closed: these results are final.
    pub settled: bool,
    /// When the settlement period closes (an ended test that is still settling).
    pub settles_at: Option<UnixNanos>,
    /// What the stop was decided on.
    pub decision: Option<StopDecision>,
}

fn comparison_results(config: &TestConfig, c: &Comparison) -> ComparisonResults {
    let name = |i: usize| config.arms[i].arm_id.to_string();
    let e = &c.evidence;
    ComparisonResults {
        control_arm: name(e.control),
        treatment_arm: name(e.treatment),
        significant: e.significant,
        p_value: c.welch.map_or(1.0, |w| w.p),
        t_statistic: c.welch.map_or(0.0, |w| w.t),
        degrees_of_freedom: c.welch.map_or(0.0, |w| w.df),
        effect_size: c.cohens_d.unwrap_or(0.0),
        difference: e.difference,
        difference_ci: c.welch.map(|w| w.ci),
        leader: c.leader.map(name),
        winner: c.winner.map(name),
        always_valid_p_value: e.always_valid_p,
        adjusted_p_value: (config.arms.len() > 2).then_some(e.adjusted_p),
    }
}

fn arm_results(config: &TestConfig, i: usize, a: &ArmStats, track: &ArmTrack) -> ArmResults {
    ArmResults {
        arm_id: config.arms[i].arm_id.to_string(),
        model_registry_id: config.arms[i].model.to_string(),
        total_requests: a.n,
        allocations: 0,
        total_returns: a.total(),
        mean_return: a.mean,
        std_return: a.std(),
        confidence_interval: stats::mean_confidence_interval(
            a.summary(),
            config.significance_level,
        ),
        sharpe_ratio: a.sharpe(),
        win_rate: a.win_rate(),
        min_return: a.min,
        max_return: a.max,
        allocation_weight: 0.0,
        probability_best: 0.0,
        suspended: false,
        additional_metrics: a.metrics.clone(),
        max_drawdown: track.max_drawdown,
        sharpe_ci: (a.std() > 0.0)
            .then(|| stats::sharpe_confidence_interval(a.n, a.sharpe(), config.significance_level))
            .flatten(),
        backtest_sharpe: None,
        backtest_max_dd: None,
        drift: DriftSummary::of(track),
    }
}

impl Experiments {
    /// Current results of a test.
    pub fn results(&self, test_id: &str) -> Result<TestResults> {
        let state = self.state(test_id)?;
        let allocations = self.shown_allocations(&state)?;
        let weights = state.current_probabilities();
        // Read before the book is locked: a store read must not hold up the test's writers.
        let backtests: Vec<_> = state
            .config
            .arms
            .iter()
            .map(|arm| {
                self.inner
                    .registry
                    .metadata(arm.model.id())
                    .ok()
                    .map(|view| view.metadata)
            })
            .collect();
        let book = state.book.lock();
        let (record, st) = (&book.record, &book.stats);
        let config = &record.config;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        let p_best = stats::probability_best(
            &posteriors(config.reward_model, &st.arms),
            probability_best_draws(st.arms.len()),
            &mut rng,
        );
        let arms: Vec<ArmResults> = st
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let backtest = backtests[i].as_ref();
                ArmResults {
                    allocations: allocations.counts[i],
                    allocation_weight: weights[i],
                    probability_best: p_best[i],
                    suspended: st.suspended[i],
                    backtest_sharpe: backtest.and_then(|m| m.figures.backtest_sharpe),
                    backtest_max_dd: backtest.and_then(|m| m.figures.backtest_max_dd),
                    ..arm_results(config, i, a, &st.tracks[i])
                }
            })
            .collect();
        let comparisons = stopping::compare(config, &st.arms, &st.sequential);
        let winner = match record.status {
            s if s.is_ended() => record.winner,
            _ => {
                let evidence: Vec<_> = comparisons.iter().map(|c| c.evidence).collect();
                stopping::decide(config, &st.arms, &evidence)
            }
        };
        let observed: Vec<f64> = allocations.counts.iter().map(|&c| c as f64).collect();
        let srm_p_value = (allocations.counts.iter().sum::<u64>() > 0)
            .then(|| stats::chi_square_goodness_of_fit(&observed, &allocations.expected))
            .flatten()
            .map(|(_, p)| p);
        let end = record.stopped_at.unwrap_or_else(time::now);
        Ok(TestResults {
            test_id: test_id.to_string(),
            name: config.name.clone(),
            status: record.status,
            created_at: record.created_at,
            duration_days: (end - record.created_at) as f64 / NANOS_PER_DAY,
            total_requests: arms.iter().map(|a| a.total_requests).sum(),
            total_allocations: allocations.counts.iter().sum(),
            arms,
            comparisons: comparisons
                .iter()
                .map(|c| comparison_results(config, c))
                .collect(),
            winner: winner.map(|w| config.arms[w].arm_id.to_string()),
            stop_reason: record.stop_reason.clone(),
            stopped_at: record.stopped_at,
            srm_p_value,
            settled: record.status.is_ended() && record.settled,
            settles_at: record
                .settles_at()
                .filter(|_| record.status.is_ended() && !record.settled),
            decision: record.decision.clone(),
        })
    }
}
