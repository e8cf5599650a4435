//! Statistics snapshots and log replay. Results reach a test's statistics through the storage
//! log (`ingest`); every [`SNAPSHOT_INTERVAL`] a writer thread stores the statistics of each test
//! with logged results, together with its unsaved result ids and stamped with the log position
//! they include, checkpoints the store, then trims the log below the round's cut. Start-up
//! replays only the entries after each test's snapshot ([`Experiments::replay_journal`]), so
//! its time is bounded by one interval of results, not by all results ever recorded.
//!
//! Why no logged result is lost: ingestion queues a test ([`Experiments::mark_unsaved`]) and
//! then appends its entry, both under the test's book lock. A round first seals the log at
//! position `cut`; every entry below `cut` was appended before that, so its test was queued
//! before the round takes the queue. The round then stores each queued test's statistics under
//! its lock, which include every entry of the test appended so far, and trims below `cut` only
//! after a checkpoint made those stores (and every store batch below `cut`) durable in the store.
//! Rounds never overlap, and a failed round queues all its tests again.
//!
//! Store batches (a test's creation, a batch of results that changed a suspension) go through the
//! same log, so a result entry is never durable without every change before it: a sync through
//! its position covers them all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::storage::{keys, LogEntry, WriteBatch};

use super::ingest::change_event;
use super::journal_entry;
use super::journal_entry::Change;
use super::result_ids::{PendingIds, ResultIds};
use super::state::{StatsRecord, TestState};
use super::types::TestId;
use super::{ExperimentError, Experiments, Inner, Result};

/// How often journaled statistics are stored in the store and the journal trimmed.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Tests stored between two checkpoints of a round. On ext4 (`data=ordered`) a journal sync can
/// wait for the store's dirty data to be written; smaller syncs keep that wait short.
const SNAPSHOT_FLUSH_CHUNK: usize = 250;

impl Experiments {
    /// Queues `state` for the next snapshot round unless it is queued already.
    pub(super) fn mark_unsaved(&self, state: &Arc<TestState>) {
        if !state.unsaved.swap(true, Ordering::AcqRel) {
            self.inner.unsaved_tests.lock().push(state.clone());
        }
    }

    /// Writes `stats` to the store in one atomic batch with every unsaved result id of the test (and
    /// `extra`), so a crash keeps the ids of every log entry the statistics include, and
    /// with the audit events of `changes` (stop-loss and drift changes the statistics made).
    /// Returns a log position that covers the batch. Called with the test's book and `ids`
    /// locked.
    pub(super) fn store_stats(
        &self,
        state: &TestState,
        stats: &StatsRecord,
        ids: &mut ResultIds,
        extra: PendingIds,
        changes: Vec<Change>,
    ) -> Result<u64> {
        let test_id = state.config.test_id.as_str();
        let storage = &self.inner.storage;
        let mut batch = WriteBatch::new();
        batch.put(keys::test_stats(test_id), stats)?;
        let staged = ids.stage_unsaved(storage, test_id, extra, &mut batch)?;
        if changes.is_empty() {
            storage.apply(batch)?;
        } else {
            let drafts = changes
                .into_iter()
                .map(|change| change_event(&state.config, stats, change))
                .collect();
            self.inner.audit.commit(storage, batch, drafts)?;
        }
        if let Some(staged) = staged {
            ids.commit(staged);
        }
        Ok(storage.write_mark())
    }

    /// One snapshot round: stores every queued test and trims the journal. Returns how many tests
    /// it stored. Blocks on I/O (a store sync): call it off the runtime's workers.
    pub fn snapshot(&self) -> Result<usize> {
        // A round that overlapped another could remove segments holding entries of tests the
        // other has taken from the queue but not stored yet (the shutdown's last round and the
        // thread's, say).
        let _round = self.inner.snapshot_round.lock();
        let storage = &self.inner.storage;
        let cut = storage.log().seal()?;
        let queued = std::mem::take(&mut *self.inner.unsaved_tests.lock());
        if queued.is_empty() {
            // Every result entry below `cut` is in a snapshot an earlier round stored: a test
            // that journals queues itself unless a round had it queued and has yet to read it.
            // The store batches below it are durable in the engine once it is checkpointed.
            storage.checkpoint()?;
            storage.log().trim_before(cut)?;
            return Ok(0);
        }
        let stored = queued.chunks(SNAPSHOT_FLUSH_CHUNK).try_for_each(|chunk| {
            chunk
                .iter()
                .try_for_each(|state| self.store_snapshot(state))?;
            Ok(storage.checkpoint()?)
        });
        if let Err(e) = stored {
            // The journal still holds everything; the next round tries again. Queued directly:
            // tests the failed round did not reach still have their flag set, so `mark_unsaved`
            // would skip them (and so would every later batch).
            for state in &queued {
                state.unsaved.store(true, Ordering::Release);
            }
            self.inner.unsaved_tests.lock().extend(queued);
            return Err(e);
        }
        storage.log().trim_before(cut)?;
        Ok(queued.len())
    }

    fn store_snapshot(&self, state: &Arc<TestState>) -> Result<()> {
        // Cleared before the book is read: results journaled after this queue the test again.
        state.unsaved.store(false, Ordering::Release);
        let book = state.book.lock();
        let mut ids = state.result_ids.lock();
        self.store_stats(
            state,
            &book.stats,
            &mut ids,
            PendingIds::default(),
            Vec::new(),
        )
        .map(|_| ())
    }

    /// Starts the snapshot thread; it ends at shutdown or with the engine.
    pub(super) fn start_snapshot_thread(&self) -> Result<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stop = self.inner.background.stop.clone();
        let thread = std::thread::Builder::new()
            .name("arbiter-snapshot".into())
            .spawn(move || {
                while !stop.sleep(SNAPSHOT_INTERVAL) {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = (Experiments { inner }).snapshot() {
                        tracing::warn!(error = %e, "storing statistics snapshots failed; will retry");
                    }
                }
            })
            .map_err(|source| ExperimentError::Io {
                context: "starting the snapshot thread".into(),
                source,
            })?;
        self.inner.background.thread(thread);
        Ok(())
    }

    /// Applies the journal's entries that each test's stored snapshot does not include, in
    /// journal order, and queues those tests for the first snapshot round. Returns the number of
    /// entries applied. Runs at start-up, before anything is served.
    pub(super) fn replay_journal(
        &self,
        tests: &[(TestId, Arc<TestState>)],
        entries: Vec<LogEntry>,
    ) -> Result<usize> {
        let by_id: std::collections::HashMap<&str, &Arc<TestState>> =
            tests.iter().map(|(id, s)| (id.as_str(), s)).collect();
        let highest_stamp = tests
            .iter()
            .map(|(_, s)| s.book.lock().stats.journal_position)
            .max()
            .unwrap_or(0);
        // A snapshot may have reached the store while a crash cut off the journal entries it includes:
        // new positions must stay above every stamp, or their entries would be skipped.
        self.inner.storage.log().reserve_through(highest_stamp);
        let mut applied = 0;
        for entry in entries {
            let corrupt = |why| journal_entry::corrupt(entry.position, why);
            let decoded = journal_entry::decode(&entry.payload).map_err(corrupt)?;
            let Some(state) = by_id.get(decoded.test_id.as_str()) else {
                tracing::warn!(
                    position = entry.position,
                    test_id = %decoded.test_id,
                    "journal entry of an unknown test skipped"
                );
                continue;
            };
            let mut book = state.book.lock();
            let folded =
                journal_entry::fold_into(&state.config, &mut book, &decoded, entry.position);
            let Some(changes) = folded.map_err(corrupt)? else {
                continue;
            };
            applied += 1;
            // A standby ingests nothing: it needs neither the ids nor a snapshot of its own.
            if self.inner.following {
                continue;
            }
            let mut ids = state.result_ids.lock();
            ids.add_replayed(&decoded.fingerprints);
            if !changes.is_empty() {
                // A suspension ingestion did not see: an unacknowledged batch that went to the store
                // before this entry was lost. Stored now with its audit events, as ingestion would.
                self.store_stats(state, &book.stats, &mut ids, PendingIds::default(), changes)?;
            }
            drop((ids, book));
            self.mark_unsaved(state);
        }
        Ok(applied)
    }
}
