//! Allocation policies. Each strategy turns the arms' statistics into a probability vector over
//! arms ([`Policy::probabilities`]); allocation limits and the O(1) draw are applied afterwards by
//! [`super::table`], the same way for every strategy.

mod epsilon_greedy;
mod fixed;
mod thompson;
mod ucb;

use rand_xoshiro::Xoshiro256PlusPlus;

use super::posterior::ArmStats;
use crate::experiment::types::{Strategy, TestConfig};

pub use epsilon_greedy::EpsilonGreedy;
pub use fixed::Fixed;
pub use thompson::Thompson;
pub use ucb::Ucb;

/// A strategy's view of the arms: the probability of allocating to each.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// A probability vector (non-negative, summing to 1) with one entry per arm.
    fn probabilities(&self, arms: &[ArmStats], rng: &mut Xoshiro256PlusPlus) -> Vec<f64>;
}

/// The policy a test's configuration asks for.
pub fn for_config(config: &TestConfig) -> Box<dyn Policy> {
    match config.strategy {
        Strategy::Fixed => Box::new(Fixed::new(config.arms.iter().map(|a| a.weight).collect())),
        Strategy::ThompsonSampling => Box::new(Thompson::new(config.reward_model)),
        Strategy::Ucb => Box::new(Ucb::new(config.ucb_exploration)),
        Strategy::EpsilonGreedy => Box::new(EpsilonGreedy::new(config.epsilon)),
    }
}

/// A vector that puts all mass on the highest scores, split evenly between exact ties (the same
/// allocation as breaking ties uniformly at random).
pub(crate) fn split_ties(scores: &[f64]) -> Vec<f64> {
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let winners = scores.iter().filter(|&&s| s == best).count().max(1);
    scores
        .iter()
        .map(|&s| if s == best { 1.0 / winners as f64 } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_the_mass() {
        assert_eq!(split_ties(&[1.0, 3.0, 3.0]), vec![0.0, 0.5, 0.5]);
        assert_eq!(split_ties(&[2.0, 1.0]), vec![1.0, 0.0]);
    }
}
