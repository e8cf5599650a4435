//! Writing ids as runs: a batch's (or a snapshot's) new fingerprints become one run, merged
//! size-tiered with the runs of its tier, or runs of at most [`MAX_RUN`] ids for many at once.

use crate::storage::{keys, Storage, StorageError, WriteBatch};

use super::{
    decode_run, encode_run, FingerprintSet, PendingIds, ResultIds, Run, FANOUT, FULL_RUN, MAX_RUN,
};

/// The tier of a run of `len` ids: runs of one tier differ in size by less than a factor of 8.
pub(super) fn tier(len: usize) -> u32 {
    len.max(1).ilog2() / 3
}

/// What [`ResultIds::stage`] put into a write batch, to be taken over once it is applied.
#[derive(Debug)]
pub struct StagedRun {
    ids: PendingIds,
    /// Sequence numbers of the runs merged into this one.
    merged: Vec<u64>,
    /// The runs written, in sequence order: full runs of [`MAX_RUN`] ids, then the rest.
    runs: Vec<Run>,
    /// How many of the unsaved ids it holds (they leave `unsaved` on commit).
    saves_unsaved: usize,
}

impl ResultIds {
    /// Writes `pending` into `batch` as a new run, merged with the runs of its tier when that
    /// makes [`FANOUT`] of them. Nothing changes in memory until [`ResultIds::commit`].
    pub fn stage(
        &self,
        storage: &Storage,
        test_id: &str,
        pending: PendingIds,
        batch: &mut WriteBatch,
    ) -> Result<StagedRun, StorageError> {
        let next_seq = self
            .loaded
            .as_ref()
            .expect("index loaded before staging")
            .next_seq;
        self.stage_at(storage, test_id, pending, batch, next_seq)
    }

    /// [`ResultIds::stage`] with the new run at sequence number `seq`.
    fn stage_at(
        &self,
        storage: &Storage,
        test_id: &str,
        pending: PendingIds,
        batch: &mut WriteBatch,
        seq: u64,
    ) -> Result<StagedRun, StorageError> {
        let loaded = self.loaded.as_ref().expect("index loaded before staging");
        let mut fingerprints = pending.order.clone();
        let mut merged = Vec::new();
        // Invariant: fewer than FANOUT runs per tier below the full one. Only the new run's tier
        // can reach FANOUT; merging it lifts the result at least one tier (FANOUT runs of at
        // least 8^t ids make at least 8^(t+1)), where the same may repeat.
        loop {
            let t = tier(fingerprints.len());
            if fingerprints.len() >= FULL_RUN {
                break;
            }
            let same_tier: Vec<Run> = loaded
                .runs
                .iter()
                .filter(|r| tier(r.len) == t && !merged.contains(&r.seq))
                .copied()
                .collect();
            if same_tier.len() + 1 < FANOUT {
                break;
            }
            for run in same_tier {
                let key = keys::result_id_run(test_id, run.seq);
                let value = storage
                    .get_raw(&key)?
                    .ok_or_else(|| StorageError::Corrupt {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        why: "result-id run listed in memory is missing".into(),
                    })?;
                fingerprints.extend(decode_run(&key, &value)?);
                batch.remove(&key);
                merged.push(run.seq);
            }
        }
        fingerprints.sort_unstable();
        let run = Run {
            seq,
            len: fingerprints.len(),
        };
        batch.put_raw(
            keys::result_id_run(test_id, run.seq),
            encode_run(&fingerprints),
        );
        Ok(StagedRun {
            ids: pending,
            merged,
            runs: vec![run],
            saves_unsaved: 0,
        })
    }

    /// Stages the unsaved ids, and `extra` (a batch's new ids), as one run in `batch`, loading the
    /// index if needed; `None` when there is nothing to store. Commit with [`ResultIds::commit`]
    /// once the batch is applied, without releasing the lock in between.
    pub fn stage_unsaved(
        &mut self,
        storage: &Storage,
        test_id: &str,
        extra: PendingIds,
        batch: &mut WriteBatch,
    ) -> Result<Option<StagedRun>, StorageError> {
        if self.unsaved.is_empty() && extra.is_empty() {
            return Ok(None);
        }
        self.load(storage, test_id)?;
        let saves_unsaved = self.unsaved.len();
        let mut order = Vec::with_capacity(saves_unsaved + extra.order.len());
        order.extend_from_slice(&self.unsaved);
        order.extend_from_slice(&extra.order);
        // A second of ids of a busy test can be a million: stored as runs of at most MAX_RUN ids,
        // which are full and never merged again, and the rest as an ordinary run.
        let loaded = self.loaded.as_ref().expect("loaded above");
        let mut seq = loaded.next_seq;
        let mut full = Vec::new();
        let whole = order.len() / MAX_RUN * MAX_RUN;
        for chunk in order[..whole].chunks(MAX_RUN) {
            let mut sorted = chunk.to_vec();
            sorted.sort_unstable();
            batch.put_raw(keys::result_id_run(test_id, seq), encode_run(&sorted));
            full.push(Run {
                seq,
                len: sorted.len(),
            });
            seq += 1;
        }
        let rest = PendingIds {
            fresh: FingerprintSet::default(),
            order: order[whole..].to_vec(),
        };
        let mut staged = if rest.is_empty() {
            StagedRun {
                ids: rest,
                merged: Vec::new(),
                runs: Vec::new(),
                saves_unsaved: 0,
            }
        } else {
            self.stage_at(storage, test_id, rest, batch, seq)?
        };
        full.append(&mut staged.runs);
        staged.runs = full;
        staged.ids = PendingIds {
            fresh: extra.fresh,
            order,
        };
        staged.saves_unsaved = saves_unsaved;
        Ok(Some(staged))
    }

    /// Takes a staged run over once its write batch has been applied.
    pub fn commit(&mut self, staged: StagedRun) {
        let loaded = self
            .loaded
            .as_mut()
            .expect("index loaded before committing");
        loaded.runs.retain(|r| !staged.merged.contains(&r.seq));
        loaded.runs.extend_from_slice(&staged.runs);
        loaded.next_seq = staged.runs.last().map_or(loaded.next_seq, |r| r.seq + 1);
        loaded.seen.extend(staged.ids.order);
        self.unsaved.drain(..staged.saves_unsaved);
        if self.unsaved.is_empty() {
            self.unsaved = Vec::new();
        }
    }
}
