//! The allocation table: a policy's probability vector after allocation limits, prepared for an
//! O(1) draw with Walker's alias method (Vose 1991, "A linear algorithm for generating random
//! numbers with a given distribution"). One uniform number picks an arm, so a FIXED test can use
//! a hash of the unit key as that number and always give the same key the same arm; and the
//! propensity of every decision is exactly the table's probability for the chosen arm.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::experiment::types::{Strategy, TestConfig, TestStatus};

/// The shares a test serves for its policy's vector `raw`: FIXED weights exactly as configured
/// ([`fixed_shares`]), every other strategy's vector after the floor and cap ([`apply_limits`]).
pub fn limited_shares(config: &TestConfig, raw: &[f64], suspended: &[bool]) -> Vec<f64> {
    if config.strategy == Strategy::Fixed {
        fixed_shares(raw, config.min_allocation_per_arm, suspended)
    } else {
        apply_limits(
            raw,
            config.min_allocation_per_arm,
            config.max_allocation_per_arm,
            suspended,
        )
    }
}

/// FIXED weights as served: unchanged, except that stop-loss `suspended` arms are held at the
/// floor `min` (at most their own weight) and the other arms share what they give up in
/// proportion to their weights. With every arm suspended (the test is then stopping) the weights
/// stay as they are. Weights are positive and sum to 1 (checked at test creation).
pub fn fixed_shares(weights: &[f64], min: f64, suspended: &[bool]) -> Vec<f64> {
    let active: f64 = weights
        .iter()
        .zip(suspended)
        .filter(|(_, &s)| !s)
        .map(|(w, _)| w)
        .sum();
    if active <= 0.0 || suspended.iter().all(|&s| !s) {
        return weights.to_vec();
    }
    let held: Vec<f64> = weights
        .iter()
        .zip(suspended)
        .map(|(&w, &s)| if s { min.min(w) } else { 0.0 })
        .collect();
    let freed: f64 = weights
        .iter()
        .zip(&held)
        .zip(suspended)
        .filter(|(_, &s)| s)
        .map(|((w, h), _)| w - h)
        .sum();
    weights
        .iter()
        .zip(&held)
        .zip(suspended)
        .map(|((&w, &h), &s)| if s { h } else { w + freed * w / active })
        .collect()
}

/// Applies allocation limits to a probability vector, for every strategy but FIXED:
/// an additive floor `p ← min + (1 − K·min)·p` (keeps the order of arms and the sum), then
/// a cap: mass above `max` is moved to the arms below the cap in proportion to their headroom,
/// repeatedly, until none exceeds it. Requires `K·min ≤ 1 ≤ K·max` (checked at test creation);
/// `suspended` arms (stop-loss) are held at the floor, or as close to it as the other arms' caps
/// allow (caps win: with two arms and a cap of 0.8, a suspended arm keeps 0.2).
pub fn apply_limits(p: &[f64], min: f64, max: f64, suspended: &[bool]) -> Vec<f64> {
    let k = p.len();
    let mut out: Vec<f64> = p
        .iter()
        .map(|&x| if x.is_finite() { x.max(0.0) } else { 0.0 })
        .collect();
    for (x, &s) in out.iter_mut().zip(suspended) {
        if s {
            *x = 0.0;
        }
    }
    let total: f64 = out.iter().sum();
    if total > 0.0 {
        out.iter_mut().for_each(|x| *x /= total);
    } else {
        let active = suspended.iter().filter(|&&s| !s).count();
        for (x, &s) in out.iter_mut().zip(suspended) {
            *x = if active == 0 || !s {
                1.0 / active.max(1) as f64
            } else {
                0.0
            };
        }
        if active == 0 {
            out.iter_mut().for_each(|x| *x = 1.0 / k as f64);
        }
    }
    let spare = 1.0 - k as f64 * min;
    out.iter_mut().for_each(|x| *x = min + spare * *x);
    for _ in 0..k {
        let excess: f64 = out.iter().map(|&x| (x - max).max(0.0)).sum();
        if excess <= 1e-15 {
            break;
        }
        let headroom: f64 = out.iter().map(|&x| (max - x).max(0.0)).sum();
        for x in out.iter_mut() {
            if *x > max {
                *x = max;
            } else {
                *x += excess * (max - *x) / headroom;
            }
        }
    }
    out
}

/// An immutable alias table, the test status it serves under, and the decisions drawn from it.
///
/// Only decisions drawn from a RUNNING table are allocations of the test: they are counted here,
/// per arm, and folded into the test's tallies once no thread can draw from the table any more.
/// A decision answered with another status (paused, ended) is counted nowhere, so an ended
/// test's allocation counts never change again.
#[derive(Debug)]
pub struct AllocationTable {
    /// The probability of each arm.
    pub probabilities: Vec<f64>,
    /// The test's status while this table serves.
    pub status: TestStatus,
    /// Numbers the test's tables from 1 (0: not published); set before the table is.
    pub version: u64,
    accept: Vec<f64>,
    alias: Vec<u8>,
    /// Allocations per arm drawn from this table (RUNNING tables only).
    counts: Vec<AtomicU64>,
}

impl AllocationTable {
    /// Builds the alias table of `probabilities` (which must sum to 1) for a test in `status`.
    pub fn new(probabilities: Vec<f64>, status: TestStatus) -> Self {
        let k = probabilities.len();
        let mut accept: Vec<f64> = probabilities.iter().map(|p| p * k as f64).collect();
        let mut alias: Vec<u8> = (0..k as u8).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..k).partition(|&i| accept[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u8;
            accept[l] -= 1.0 - accept[s];
            if accept[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers are 1 up to rounding.
        for i in small.into_iter().chain(large) {
            accept[i] = 1.0;
        }
        let counting = if status == TestStatus::Running { k } else { 0 };
        Self {
            probabilities,
            status,
            version: 0,
            accept,
            alias,
            counts: (0..counting).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// A table that always picks `arm`.
    pub fn single(arms: usize, arm: usize, status: TestStatus) -> Self {
        let mut p = vec![0.0; arms];
        p[arm] = 1.0;
        Self::new(p, status)
    }

    /// The arm selected by `u` uniform in [0, 1); counts it as an allocation when the table is
    /// RUNNING.
    #[inline]
    pub fn pick(&self, u: f64) -> usize {
        let k = self.accept.len();
        let scaled = u * k as f64;
        let i = (scaled as usize).min(k - 1);
        let coin = scaled - i as f64;
        let arm = if coin < self.accept[i] {
            i
        } else {
            self.alias[i] as usize
        };
        if let Some(count) = self.counts.get(arm) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        arm
    }

    /// Walker's acceptance thresholds, one per arm: [`AllocationTable::pick`] keeps column `i`
    /// when the fraction of `u·K` is below `accept[i]`.
    pub fn accept(&self) -> &[f64] {
        &self.accept
    }

    /// Walker's aliases: the arm column `i` picks otherwise.
    pub fn alias(&self) -> &[u8] {
        &self.alias
    }

    /// Allocations drawn from this table so far, per arm (empty unless RUNNING).
    pub fn counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed))
    }

    /// Allocations drawn from this table so far.
    pub fn decisions(&self) -> u64 {
        self.counts().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_table_reproduces_the_distribution_exactly_on_a_grid() {
        let p = vec![0.5, 0.3, 0.15, 0.05];
        let table = AllocationTable::new(p.clone(), TestStatus::Running);
        // A fine uniform grid over [0, 1) hits each arm in proportion to its probability.
        let n = 1_000_000;
        let mut counts = [0usize; 4];
        for i in 0..n {
            counts[table.pick((i as f64 + 0.5) / n as f64)] += 1;
        }
        for (c, q) in counts.iter().zip(&p) {
            assert!((*c as f64 / n as f64 - q).abs() < 1e-5, "{counts:?}");
        }
        assert_eq!(table.decisions(), n as u64);
    }

    #[test]
    fn limits_hold_and_keep_the_sum() {
        let cases: [(&[f64], f64, f64); 4] = [
            (&[1.0, 0.0, 0.0, 0.0], 0.05, 0.8),
            (&[0.97, 0.03], 0.05, 0.8),
            (&[0.25; 4], 0.1, 0.3),
            (&[0.9, 0.1, 0.0], 0.0, 0.5),
        ];
        for (p, min, max) in cases {
            let q = apply_limits(p, min, max, &vec![false; p.len()]);
            assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{q:?}");
            assert!(
                q.iter().all(|&x| x >= min - 1e-12 && x <= max + 1e-12),
                "{p:?} -> {q:?}"
            );
        }
        let q = apply_limits(&[1.0, 0.0], 0.05, 0.8, &[false, false]);
        assert!(
            (q[0] - 0.8).abs() < 1e-12 && (q[1] - 0.2).abs() < 1e-12,
            "{q:?}"
        );
    }

    #[test]
    fn suspended_arms_sit_at_the_floor() {
        let q = apply_limits(&[0.7, 0.2, 0.1], 0.05, 1.0, &[true, false, false]);
        assert!((q[0] - 0.05).abs() < 1e-12, "{q:?}");
        assert!((q.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn fixed_weights_are_served_exactly_and_suspensions_keep_the_proportions() {
        assert_eq!(fixed_shares(&[0.9, 0.1], 0.05, &[false, false]), [0.9, 0.1]);
        // arm_0 held at 0.05; arms 1 and 2 share its 0.45 as 0.3 : 0.2.
        let q = fixed_shares(&[0.5, 0.3, 0.2], 0.05, &[true, false, false]);
        for (got, want) in q.iter().zip([0.05, 0.57, 0.38]) {
            assert!((got - want).abs() < 1e-12, "{q:?}");
        }
        // The floor never raises a suspended arm above its own weight.
        let q = fixed_shares(&[0.98, 0.02], 0.05, &[false, true]);
        assert_eq!(q, [0.98, 0.02]);
        assert_eq!(fixed_shares(&[0.6, 0.4], 0.05, &[true, true]), [0.6, 0.4]);
    }
}

#[cfg(test)]
mod counting_tests {
    use super::*;

    #[test]
    fn only_running_tables_count_allocations() {
        let running = AllocationTable::new(vec![0.5, 0.5], TestStatus::Running);
        let paused = AllocationTable::single(2, 0, TestStatus::Paused);
        let ended = AllocationTable::single(2, 1, TestStatus::Completed);
        for u in [0.1, 0.6, 0.9] {
            running.pick(u);
            assert_eq!(paused.pick(u), 0);
            assert_eq!(ended.pick(u), 1);
        }
        assert_eq!(running.counts().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(running.decisions(), 3);
        assert_eq!((paused.decisions(), ended.decisions()), (0, 0));
    }
}
