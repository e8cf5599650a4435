//! The durable statistical state of a test ([`StatsRecord`]) and its stored encodings
//! ([`codec`]): what results are folded into, what snapshots store and replay resumes from.

pub mod codec;

use serde::{Deserialize, Serialize};

use super::posterior::ArmStats;
use super::stopping::SequentialState;
use super::track::ArmTrack;
use crate::storage::{BodyError, Record};

/// The durable statistical state of a test: sufficient statistics, stop-loss suspensions and the
/// sequential tests. Results reach it through the journal; the store holds snapshots of it, each
/// stamped with the last journal entry it includes ([`StatsRecord::journal_position`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsRecord {
    /// One entry per arm.
    pub arms: Vec<ArmStats>,
    /// Arms held at the floor by the stop-loss.
    #[serde(default)]
    pub suspended: Vec<bool>,
    /// One sequential test per non-control arm.
    #[serde(default)]
    pub sequential: Vec<SequentialState>,
    /// The position of the last journal entry applied (0: none). Start-up replays only entries
    /// after it.
    #[serde(default)]
    pub journal_position: u64,
    /// Per arm: drawdown and drift, folded over the results in order.
    #[serde(skip)]
    pub tracks: Vec<ArmTrack>,
    /// Decisions clients drew in their own process and reported with their results, per arm
    /// ([`ClientCounts`]).
    #[serde(skip)]
    pub client: ClientCounts,
}

/// Allocations that clients decided in their own process (from streamed tables) and reported:
/// they travel with result batches, so they are as durable as results, and they add to the
/// test's allocation counts and the sample-ratio check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientCounts {
    /// Decisions per arm (empty: none yet).
    pub counts: Vec<u64>,
    /// Expected decisions per arm: per reported table, its decisions times the arm's
    /// probability in it.
    pub expected: Vec<f64>,
}

impl ClientCounts {
    /// Adds `counts` and `expected` counts per arm (saturating: reports are bounded, their sum
    /// is not).
    pub fn add(&mut self, counts: &[u64], expected: &[f64]) {
        let k = counts.len();
        if self.counts.len() < k {
            self.counts.resize(k, 0);
            self.expected.resize(k, 0.0);
        }
        for (total, c) in self.counts.iter_mut().zip(counts) {
            *total = total.saturating_add(*c);
        }
        for (total, e) in self.expected.iter_mut().zip(expected) {
            *total += e;
        }
    }

    /// Whether no decision was added.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

impl StatsRecord {
    /// The state of a test with `arms` arms and no results.
    pub fn new(arms: usize) -> Self {
        Self {
            arms: vec![ArmStats::default(); arms],
            suspended: vec![false; arms],
            sequential: vec![SequentialState::default(); arms.saturating_sub(1)],
            journal_position: 0,
            tracks: vec![ArmTrack::default(); arms],
            client: ClientCounts::default(),
        }
    }

    /// Folds one accepted result into arm `arm`: its statistics, metrics and track. Returns the
    /// drift alarm the result set off, if any. Ingestion and replay both call it.
    pub fn add_result(
        &mut self,
        arm: usize,
        value: f64,
        metrics: &[(String, f64)],
    ) -> Option<crate::stats::drift::DriftAlarm> {
        let stats = &mut self.arms[arm];
        stats.add(value);
        for (name, metric) in metrics {
            stats.add_metric(name, *metric);
        }
        self.tracks[arm].add(value)
    }

    /// Fills fields that records written before they existed lack.
    pub fn normalized(mut self, arms: usize) -> Self {
        self.arms.resize(arms, ArmStats::default());
        self.suspended.resize(arms, false);
        self.tracks.resize(arms, ArmTrack::default());
        self.sequential
            .resize(arms.saturating_sub(1), SequentialState::default());
        self
    }
}

/// Version 1: JSON. Version 2: the binary body of [`codec`]. Version 3: the
/// journal position as a varint, then the version 2 body. Version 4: version 3 and the arms'
/// tracks. Version 5: version 4 and the client counts. Older versions read as position 0,
/// tracks that start at their next result, and no client counts.
impl Record for StatsRecord {
    const FORMAT_VERSION: u8 = 5;

    fn encode_body(&self, out: &mut Vec<u8>) -> crate::storage::Result<()> {
        codec::encode_counted(self, out);
        Ok(())
    }

    fn decode_body(version: u8, body: &[u8]) -> Result<Self, BodyError> {
        match version {
            1 => serde_json::from_slice::<StatsRecord>(body)
                .map(|mut r| {
                    r.tracks = vec![ArmTrack::default(); r.arms.len()];
                    r
                })
                .map_err(BodyError::Json),
            2 => codec::decode(body).map_err(BodyError::Malformed),
            3 => codec::decode_positioned(body).map_err(BodyError::Malformed),
            4 => codec::decode_tracked(body).map_err(BodyError::Malformed),
            5 => codec::decode_counted(body).map_err(BodyError::Malformed),
            _ => Err(BodyError::UnknownVersion),
        }
    }
}
