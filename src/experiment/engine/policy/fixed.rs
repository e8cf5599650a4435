//! FIXED: the configured weights, whatever the results.

use rand_xoshiro::Xoshiro256PlusPlus;

use super::Policy;
use crate::experiment::engine::posterior::ArmStats;

/// Constant split.
#[derive(Debug, Clone)]
pub struct Fixed {
    weights: Vec<f64>,
}

impl Fixed {
    /// `weights` are normalised to sum 1.
    pub fn new(weights: Vec<f64>) -> Self {
        let total: f64 = weights.iter().sum();
        Self {
            weights: weights.iter().map(|w| w / total).collect(),
        }
    }
}

impl Policy for Fixed {
    fn probabilities(&self, _arms: &[ArmStats], _rng: &mut Xoshiro256PlusPlus) -> Vec<f64> {
        self.weights.clone()
    }
}
