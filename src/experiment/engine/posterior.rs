//! Sufficient statistics of one arm's results, updated exactly.
//!
//! The mean and the sum of squared deviations use Welford's online update (Welford 1962,
//! "Note on a method for calculating corrected sums of squares and products"; Knuth TAOCP vol. 2,
//! §4.2.2), which does not drift the way `Σx² − n·x̄²` does; the total uses Neumaier's compensated
//! summation. Two summaries combine with Chan, Golub & LeVeque (1979), "Updating formulae and a
//! pairwise algorithm for computing sample variances".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::experiment::types::RewardModel;
use crate::stats::{Posterior, Summary};

/// The posterior of each arm's mean reward under `model`:
///
/// - BERNOULLI: win iff return > 0, Beta(1 + wins, 1 + losses).
/// - GAUSSIAN: Normal-Inverse-Gamma over (mean, variance) of the returns, with the conjugate
///   update of Murphy (2007), "Conjugate Bayesian analysis of the Gaussian distribution",
///   eqs. 85–89: `κn = κ0 + n`, `μn = (κ0·μ0 + n·x̄)/κn`, `αn = α0 + n/2`,
///   `βn = β0 + ½·Σ(x − x̄)² + κ0·n·(x̄ − μ0)² / (2κn)`. The prior is empirical-Bayes and
///   scale-free: `μ0` is the pooled mean of the test's results, `κ0 = 1` (one pseudo-observation),
///   `α0 = 1`, `β0` the pooled sample variance, so the policy behaves the same whether returns are
///   fractions, basis points or dollars.
pub fn posteriors(model: RewardModel, arms: &[ArmStats]) -> Vec<Posterior> {
    match model {
        RewardModel::Bernoulli => arms
            .iter()
            .map(|a| Posterior::Beta {
                alpha: 1.0 + a.wins as f64,
                beta: 1.0 + (a.n - a.wins) as f64,
            })
            .collect(),
        RewardModel::Gaussian => {
            let mut pooled = ArmStats::default();
            arms.iter().for_each(|a| pooled.merge(a));
            let (mu0, kappa0, alpha0) = (pooled.mean, 1.0, 1.0);
            // A test whose returns are all equal has no scale; any positive β0 keeps it proper.
            let beta0 = pooled.variance().max(f64::MIN_POSITIVE.sqrt());
            arms.iter()
                .map(|a| {
                    let n = a.n as f64;
                    let kappa = kappa0 + n;
                    Posterior::NormalInverseGamma {
                        mu: (kappa0 * mu0 + n * a.mean) / kappa,
                        kappa,
                        alpha: alpha0 + n / 2.0,
                        beta: beta0
                            + 0.5 * a.m2
                            + kappa0 * n * (a.mean - mu0).powi(2) / (2.0 * kappa),
                    }
                })
                .collect()
        }
    }
}

/// Most distinct additional metric names kept per arm (bounds memory per test).
pub const MAX_METRICS_PER_ARM: usize = 32;

/// Count and running mean of one additional metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricStats {
    /// Observations.
    pub count: u64,
    /// Running mean.
    pub mean: f64,
}

/// Sufficient statistics of an arm: count, compensated sum, Welford mean and M2, wins, extremes
/// and per-metric means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmStats {
    /// Results.
    pub n: u64,
    /// Welford running mean.
    pub mean: f64,
    /// Welford sum of squared deviations from the mean.
    pub m2: f64,
    /// Neumaier-compensated sum of returns (with the next field; read through `total`).
    pub(crate) sum: f64,
    /// The compensation term of the sum.
    pub(crate) sum_compensation: f64,
    /// Results with return > 0.
    pub wins: u64,
    /// Smallest return (0 when empty; JSON has no infinities).
    pub min: f64,
    /// Largest return (0 when empty).
    pub max: f64,
    /// Additional metrics by name.
    pub metrics: BTreeMap<String, MetricStats>,
}

impl Default for ArmStats {
    fn default() -> Self {
        Self {
            n: 0,
            mean: 0.0,
            m2: 0.0,
            sum: 0.0,
            sum_compensation: 0.0,
            wins: 0,
            min: 0.0,
            max: 0.0,
            metrics: BTreeMap::new(),
        }
    }
}

impl ArmStats {
    /// Statistics with the given count, mean and sum of squared deviations (for simulations that
    /// draw a batch's sufficient statistics directly; wins and extremes are not tracked).
    pub fn from_moments(n: u64, mean: f64, m2: f64) -> Self {
        Self {
            n,
            mean,
            m2,
            sum: n as f64 * mean,
            ..Self::default()
        }
    }

    /// Adds one finite return.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        // Neumaier's variant of Kahan summation.
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.sum_compensation += (self.sum - t) + x;
        } else {
            self.sum_compensation += (x - t) + self.sum;
        }
        self.sum = t;
        if x > 0.0 {
            self.wins += 1;
        }
        if self.n == 1 {
            (self.min, self.max) = (x, x);
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
    }

    /// Whether `name` can be recorded (it is known, or there is room for a new metric).
    pub fn accepts_metric(&self, name: &str) -> bool {
        self.metrics.contains_key(name) || self.metrics.len() < MAX_METRICS_PER_ARM
    }

    /// Adds one observation of an additional metric (call [`ArmStats::accepts_metric`] first).
    pub fn add_metric(&mut self, name: &str, value: f64) {
        if !self.accepts_metric(name) {
            return;
        }
        let m = self.metrics.entry(name.to_string()).or_default();
        m.count += 1;
        m.mean += (value - m.mean) / m.count as f64;
    }

    /// The compensated total of returns.
    pub fn total(&self) -> f64 {
        self.sum + self.sum_compensation
    }

    /// Sample variance (n − 1); 0 below two results.
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).max(0.0)
        }
    }

    /// Sample standard deviation (n − 1); 0 below two results.
    pub fn std(&self) -> f64 {
        self.variance().sqrt()
    }

    /// Share of returns > 0; 0 when empty.
    pub fn win_rate(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.wins as f64 / self.n as f64
        }
    }

    /// Mean over standard deviation per result; 0 when the deviation is 0.
    pub fn sharpe(&self) -> f64 {
        let std = self.std();
        if std > 0.0 {
            self.mean / std
        } else {
            0.0
        }
    }

    /// Size, mean and sample standard deviation.
    pub fn summary(&self) -> Summary {
        Summary {
            n: self.n,
            mean: self.mean,
            std: self.std(),
        }
    }

    /// Combines two summaries as if all results had been added to one (Chan et al. 1979).
    pub fn merge(&mut self, other: &ArmStats) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = other.clone();
            return;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        let mean = self.mean + delta * other.n as f64 / n as f64;
        self.m2 += other.m2 + delta * delta * (self.n as f64 * other.n as f64) / n as f64;
        self.mean = mean;
        let total = self.total() + other.total();
        self.sum = total;
        self.sum_compensation = 0.0;
        self.n = n;
        self.wins += other.wins;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        for (name, m) in &other.metrics {
            let mine = self.metrics.entry(name.clone()).or_default();
            let count = mine.count + m.count;
            mine.mean += (m.mean - mine.mean) * m.count as f64 / count as f64;
            mine.count = count;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welford_matches_the_two_pass_formula() {
        let xs = [0.02, -0.01, 0.035, 0.0, -0.004, 0.011];
        let mut s = ArmStats::default();
        xs.iter().for_each(|&x| s.add(x));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
        assert!((s.mean - mean).abs() < 1e-15);
        assert!((s.variance() - var).abs() < 1e-15);
        assert_eq!((s.n, s.wins, s.min, s.max), (6, 3, -0.01, 0.035));
        assert!((s.win_rate() - 0.5).abs() < 1e-15);
        assert!((s.sharpe() - mean / var.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn no_drift_with_a_large_offset_and_many_results() {
        // 10^7 results alternating 1e6 ± 0.01: the naive Σx² − n·x̄² loses every digit here.
        let mut s = ArmStats::default();
        for i in 0..10_000_000u64 {
            s.add(if i % 2 == 0 { 1e6 + 0.01 } else { 1e6 - 0.01 });
        }
        assert!((s.mean - 1e6).abs() < 1e-6, "{}", s.mean);
        let expected_var = 0.0001 * 1e7 / (1e7 - 1.0);
        assert!(
            (s.variance() - expected_var).abs() / expected_var < 1e-6,
            "{}",
            s.variance()
        );
        assert!((s.total() - 1e13).abs() < 1e-3, "{}", s.total());
    }

    #[test]
    fn merge_equals_sequential() {
        let (mut a, mut b, mut all) = (
            ArmStats::default(),
            ArmStats::default(),
            ArmStats::default(),
        );
        for i in 0..100 {
            let x = ((i * 37) % 11) as f64 / 100.0 - 0.05;
            if i < 30 {
                a.add(x)
            } else {
                b.add(x)
            }
            all.add(x);
        }
        a.merge(&b);
        assert_eq!((a.n, a.wins), (all.n, all.wins));
        assert!((a.mean - all.mean).abs() < 1e-15);
        assert!((a.variance() - all.variance()).abs() < 1e-15);
        assert!((a.total() - all.total()).abs() < 1e-12);
    }

    #[test]
    fn statistics_survive_their_storage_encoding() {
        let empty = ArmStats::default();
        let json = serde_json::to_string(&empty).expect("encodes");
        assert_eq!(
            serde_json::from_str::<ArmStats>(&json).expect("decodes"),
            empty
        );
        let one = arm_of(&[-0.5]);
        assert_eq!((one.min, one.max), (-0.5, -0.5));
        let json = serde_json::to_string(&one).expect("encodes");
        assert_eq!(
            serde_json::from_str::<ArmStats>(&json).expect("decodes"),
            one
        );
    }

    fn arm_of(xs: &[f64]) -> ArmStats {
        let mut a = ArmStats::default();
        xs.iter().for_each(|&x| a.add(x));
        a
    }

    #[test]
    fn metric_names_are_bounded() {
        let mut s = ArmStats::default();
        for i in 0..MAX_METRICS_PER_ARM {
            s.add_metric(&format!("m{i}"), 1.0);
        }
        assert!(!s.accepts_metric("one_too_many"));
        assert!(s.accepts_metric("m0"));
        s.add_metric("m0", 3.0);
        assert_eq!(
            s.metrics["m0"],
            MetricStats {
                count: 2,
                mean: 2.0
            }
        );
    }
}
