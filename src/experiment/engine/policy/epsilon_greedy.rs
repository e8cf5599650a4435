//! EPSILON_GREEDY: with probability ε an arm uniformly at random, otherwise the best mean return
//! (ties split evenly, i.e. broken at random). The best arm gets 1 − ε + ε/K. Arms without results
//! are only explored; with no results anywhere the split is uniform.

use rand_xoshiro::Xoshiro256PlusPlus;

use super::{split_ties, Policy};
use crate::experiment::engine::posterior::ArmStats;

/// ε-greedy.
#[derive(Debug, Clone)]
pub struct EpsilonGreedy {
    epsilon: f64,
}

impl EpsilonGreedy {
    /// `epsilon` in [0, 1].
    pub fn new(epsilon: f64) -> Self {
        Self { epsilon }
    }
}

impl Policy for EpsilonGreedy {
    fn probabilities(&self, arms: &[ArmStats], _rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
        let k = arms.len() as f64;
        if arms.iter().all(|a| a.n == 0) {
            return vec![1.0 / k; arms.len()];
        }
        let means: Vec<f64> = arms
            .iter()
            .map(|a| if a.n > 0 { a.mean } else { f64::NEG_INFINITY })
            .collect();
        split_ties(&means)
            .into_iter()
            .map(|greedy| self.epsilon / k + (1.0 - self.epsilon) * greedy)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn best_arm_gets_one_minus_epsilon_plus_share() {
        let mut arms = vec![
            ArmStats::default(),
            ArmStats::default(),
            ArmStats::default(),
        ];
        arms[0].add(0.01);
        arms[1].add(0.03);
        let p =
            EpsilonGreedy::new(0.1).probabilities(&arms, &mut Xoshiro256PlusPlus::seed_from_u64(1));
        assert!((p[1] - (0.9 + 0.1 / 3.0)).abs() < 1e-12);
        assert!((p[0] - 0.1 / 3.0).abs() < 1e-12 && (p[2] - 0.1 / 3.0).abs() < 1e-12);
        arms[0].add(0.05); // now arm 0 and arm 1 tie at mean 0.03
        let p =
            EpsilonGreedy::new(0.1).probabilities(&arms, &mut Xoshiro256PlusPlus::seed_from_u64(1));
        assert!((p[0] - p[1]).abs() < 1e-12, "{p:?}");
    }
}
