//! When a test may stop itself, and the comparisons it reports.
//!
//! Every non-control arm is compared with the control arm. Reported per comparison: Welch's
//! fixed-horizon test (t, df, p, interval of the difference), Cohen's d, and the always-valid
//! p-value of the mixture SPRT ([`crate::stats::mixture_log_likelihood_ratio`]). Only the latter
//! decides anything: Welch's p is valid for a single look, and re-running it after every batch is
//! exactly the peeking that made the original system's early stops mostly false alarms.
//!
//! Monitoring starts once every arm has `minimum_sample_size` results; from then on each applied
//! batch is one look. The mixing variance τ² is fixed at the first look as
//! `max(minimum_effect_size, 0.2·s)²`, with `s` the pooled standard deviation of the two arms then
//! (tuned to detect differences of about 0.2 standard deviations, or the smallest effect the user
//! cares about). A comparison is *significant* when its Holm-adjusted always-valid p-value is at
//! most `significance_level` and |difference| ≥ `minimum_effect_size`. The test stops with a
//! winner when some treatment is significantly better than the control (the best such treatment
//! wins), or when the control is significantly better than every treatment.

use serde::{Deserialize, Serialize};

use super::posterior::ArmStats;
use crate::experiment::types::TestConfig;
use crate::stats::{self, Welch};

/// Mixing standard deviation relative to the pooled standard deviation.
const TAU_PER_SD: f64 = 0.2;

/// The persisted state of one comparison's sequential test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialState {
    /// Mixing variance; 0 until monitoring starts.
    pub tau2: f64,
    /// Running always-valid p-value (1 until the first informative look).
    pub p: f64,
}

impl Default for SequentialState {
    fn default() -> Self {
        Self { tau2: 0.0, p: 1.0 }
    }
}

/// What the sequential tests say about one treatment arm: all that stopping decisions use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Control arm index.
    pub control: usize,
    /// Treatment arm index.
    pub treatment: usize,
    /// Difference of means, treatment − control.
    pub difference: f64,
    /// Running always-valid p-value.
    pub always_valid_p: f64,
    /// Holm-adjusted always-valid p-value across all comparisons.
    pub adjusted_p: f64,
    /// Adjusted p ≤ α and |difference| ≥ minimum effect.
    pub significant: bool,
}

/// The full comparison reported to clients: the evidence plus the fixed-horizon figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The sequential evidence.
    pub evidence: Evidence,
    /// Welch's test; `None` below two results per arm or with (near) zero variance.
    pub welch: Option<Welch>,
    /// Cohen's d.
    pub cohens_d: Option<f64>,
    /// The arm with the higher mean, once both arms have two results.
    pub leader: Option<usize>,
    /// The leader, when the comparison is significant; else `None`.
    pub winner: Option<usize>,
}

/// Whether monitoring has started: every arm has `minimum_sample_size` results.
pub fn monitoring(config: &TestConfig, arms: &[ArmStats]) -> bool {
    arms.iter().all(|a| a.n >= config.minimum_sample_size)
}

/// One look of every comparison's sequential test at the current data. Comparisons whose
/// variance is (near) zero are skipped, so nothing stops on a rounding artefact.
pub fn look(config: &TestConfig, arms: &[ArmStats], sequential: &mut [SequentialState]) {
    let c = config.control_arm;
    for (state, t) in sequential.iter_mut().zip(treatments(config)) {
        let (a, b) = (&arms[c], &arms[t]);
        if a.n < 2 || b.n < 2 {
            continue;
        }
        let variance = a.variance() / a.n as f64 + b.variance() / b.n as f64;
        if stats::welch_degenerate(variance.sqrt(), a.mean, b.mean) {
            continue;
        }
        if state.tau2 == 0.0 {
            let mut pooled = a.clone();
            pooled.merge(b);
            state.tau2 = config
                .minimum_effect_size
                .max(TAU_PER_SD * pooled.std())
                .powi(2);
        }
        let log_lr = stats::mixture_log_likelihood_ratio(b.mean - a.mean, variance, state.tau2);
        state.p = stats::always_valid_p_value(state.p, log_lr);
    }
}

/// The non-control arm indices, in order (one comparison each).
pub fn treatments(config: &TestConfig) -> impl Iterator<Item = usize> + '_ {
    (0..config.arms.len()).filter(move |&i| i != config.control_arm)
}

/// The sequential evidence for every treatment at the current data.
pub fn evidence(
    config: &TestConfig,
    arms: &[ArmStats],
    sequential: &[SequentialState],
) -> Vec<Evidence> {
    let c = config.control_arm;
    let adjusted = stats::holm_adjust(&sequential.iter().map(|s| s.p).collect::<Vec<_>>());
    treatments(config)
        .zip(sequential.iter().zip(adjusted))
        .map(|(t, (state, adjusted_p))| {
            let difference = arms[t].mean - arms[c].mean;
            Evidence {
                control: c,
                treatment: t,
                difference,
                always_valid_p: state.p,
                adjusted_p,
                significant: adjusted_p <= config.significance_level
                    && difference.abs() >= config.minimum_effect_size,
            }
        })
        .collect()
}

/// The comparisons of every treatment with the control at the current data.
pub fn compare(
    config: &TestConfig,
    arms: &[ArmStats],
    sequential: &[SequentialState],
) -> Vec<Comparison> {
    evidence(config, arms, sequential)
        .into_iter()
        .map(|e| {
            let (a, b) = (arms[e.control].summary(), arms[e.treatment].summary());
            let leader = (a.n >= 2 && b.n >= 2).then_some(if e.difference > 0.0 {
                e.treatment
            } else {
                e.control
            });
            Comparison {
                welch: stats::welch_t_test(a, b, config.significance_level),
                cohens_d: stats::cohens_d(a, b),
                leader,
                winner: leader.filter(|_| e.significant),
                evidence: e,
            }
        })
        .collect()
}

/// The winner the evidence justifies stopping for, if any.
pub fn decide(config: &TestConfig, arms: &[ArmStats], evidence: &[Evidence]) -> Option<usize> {
    let better = evidence
        .iter()
        .filter(|e| e.significant && e.difference > 0.0)
        .map(|e| e.treatment);
    if let Some(best) = better.max_by(|&x, &y| arms[x].mean.total_cmp(&arms[y].mean)) {
        return Some(best);
    }
    let control_wins_all =
        !evidence.is_empty() && evidence.iter().all(|e| e.significant && e.difference < 0.0);
    control_wins_all.then_some(config.control_arm)
}

/// The stop reason naming the evidence.
pub fn reason(config: &TestConfig, evidence: &[Evidence], winner: usize) -> String {
    let name = |i: usize| &*config.arms[i].arm_id;
    let evidence = evidence
        .iter()
        .filter(|c| c.significant && (c.treatment == winner || winner == config.control_arm))
        .map(|c| {
            format!(
                "{} vs {}: always-valid p = {:.3e} (Holm-adjusted)",
                name(c.treatment),
                name(c.control),
                c.adjusted_p
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "early stop: {} wins; {evidence} ≤ significance level {}",
        name(winner),
        config.significance_level
    )
}
