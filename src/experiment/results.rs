//! Per-arm figures of SPEC §3 (counts, total and mean return, sample std, Student t interval,
//! Sharpe, win rate, extremes, allocations, current weight, additional metric means).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stats;
use crate::time::{self, UnixNanos};

use super::posterior::MetricStats;
use super::types::{Strategy, TestStatus};
use super::{Experiments, Result};

const NANOS_PER_DAY: f64 = 86_400e9;

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
    /// P(arm is best), where the strategy computes it.
    pub probability_best: Option<f64>,
    /// Suspended by the stop-loss.
    pub suspended: bool,
    /// Count and mean per additional metric.
    pub additional_metrics: BTreeMap<String, MetricStats>,
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
    /// Winning arm id, if decided.
    pub winner: Option<String>,
    /// Why the test ended.
    pub stop_reason: String,
    /// When it ended (ns since epoch).
    pub stopped_at: Option<UnixNanos>,
}

impl Experiments {
    /// Current results of a test.
    pub fn results(&self, test_id: &str) -> Result<TestResults> {
        let state = self.state(test_id)?;
        let allocations = state.allocation_record();
        let weights = state.current_probabilities();
        let raw = state.raw_vector();
        let book = state.book.lock();
        let record = &book.record;
        let config = &record.config;
        let arms: Vec<ArmResults> = book
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| ArmResults {
                arm_id: config.arms[i].arm_id.clone(),
                model_registry_id: config.arms[i].model.to_string(),
                total_requests: a.n,
                allocations: allocations.counts[i],
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
                allocation_weight: weights[i],
                probability_best: (config.strategy == Strategy::ThompsonSampling).then(|| raw[i]),
                suspended: false,
                additional_metrics: a.metrics.clone(),
            })
            .collect();
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
            winner: record.winner.map(|w| config.arms[w].arm_id.clone()),
            stop_reason: record.stop_reason.clone(),
            stopped_at: record.stopped_at,
        })
    }
}
