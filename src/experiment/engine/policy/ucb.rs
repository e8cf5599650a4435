//! UCB1 (Auer, Cesa-Bianchi & Fischer 2002, "Finite-time analysis of the multiarmed bandit
//! problem", Fig. 1): choose the arm maximising `x̄_i + c·√(ln N / n_i)`, with `c = √2` giving the
//! paper's `√(2 ln N / n_i)`. UCB1 assumes rewards in [0, 1], so mean returns are rescaled by the
//! range of returns observed so far in the test, `(x̄_i − min) / (max − min)`; without that, a
//! bonus of order 1 swamps returns of order 1e-2 and the policy degenerates into round-robin.
//! Arms without results come first (their index is infinite), ties split evenly.

use rand_xoshiro::Xoshiro256PlusPlus;

use super::{split_ties, Policy};
use crate::experiment::engine::posterior::ArmStats;

/// UCB1 on range-rescaled returns.
#[derive(Debug, Clone)]
pub struct Ucb {
    exploration: f64,
}

impl Ucb {
    /// `exploration` is the constant `c` (> 0).
    pub fn new(exploration: f64) -> Self {
        Self { exploration }
    }
}

impl Policy for Ucb {
    fn probabilities(&self, arms: &[ArmStats], _rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
        let total: u64 = arms.iter().map(|a| a.n).sum();
        let played = arms.iter().filter(|a| a.n > 0);
        let lo = played.clone().map(|a| a.min).fold(f64::INFINITY, f64::min);
        let hi = played.map(|a| a.max).fold(f64::NEG_INFINITY, f64::max);
        let range = hi - lo;
        let ln_n = (total.max(1) as f64).ln();
        let scores: Vec<f64> = arms
            .iter()
            .map(|a| {
                if a.n == 0 {
                    return f64::INFINITY;
                }
                let scaled = if range > 0.0 {
                    (a.mean - lo) / range
                } else {
                    0.5
                };
                scaled + self.exploration * (ln_n / a.n as f64).sqrt()
            })
            .collect();
        split_ties(&scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn unplayed_arms_come_first_then_the_index_decides() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let ucb = Ucb::new(2f64.sqrt());
        let mut arms = vec![ArmStats::default(), ArmStats::default()];
        assert_eq!(ucb.probabilities(&arms, &mut rng), vec![0.5, 0.5]);
        arms[0].add(0.01);
        assert_eq!(ucb.probabilities(&arms, &mut rng), vec![0.0, 1.0]);
        // Equal counts: the higher mean has the higher index.
        arms[1].add(-0.01);
        assert_eq!(ucb.probabilities(&arms, &mut rng), vec![1.0, 0.0]);
    }

    #[test]
    fn the_bonus_is_on_the_rescaled_scale() {
        // Means 0.02 and 0.01 with range [-0.05, 0.05]: rescaled 0.7 and 0.6. With 100 and 10
        // results of N = 110, the bonuses are √2·√(ln 110/100) = 0.307 and 0.970, so the
        // less-explored arm wins: 0.6 + 0.970 > 0.7 + 0.307.
        let mut arms = vec![ArmStats::default(), ArmStats::default()];
        for i in 0..100 {
            arms[0].add(if i == 0 {
                -0.05
            } else if i == 1 {
                0.05
            } else {
                0.02
            });
        }
        for _ in 0..10 {
            arms[1].add(0.01);
        }
        let p =
            Ucb::new(2f64.sqrt()).probabilities(&arms, &mut Xoshiro256PlusPlus::seed_from_u64(1));
        assert_eq!(p, vec![0.0, 1.0]);
    }
}
