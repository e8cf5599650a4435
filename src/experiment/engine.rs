//! The decision engine: allocation policies (one file per strategy) and their posteriors, the
//! allocation table with its floors and caps, the seeded generators, the stopping rules, the
//! stop-loss, each arm's drawdown and drift track, the stop's evidence, and decision ids.
//!
//! Functions of a test's configuration and statistics: nothing here reads or writes storage or
//! the clock (a stop's time is passed in), and the same inputs give the same answer, which is
//! what lets the results fold replay a batch bit for bit (policies that draw take the caller's
//! seeded generator).

pub mod decision;
pub mod decision_id;
pub mod policy;
pub mod posterior;
pub(crate) mod risk;
pub mod rng;
#[cfg(test)]
pub(in crate::experiment) mod simulation_tests;
pub mod stopping;
#[cfg(test)]
mod strategy_tests;
pub mod table;
pub mod track;
