//! A cluster's standby: its tests follow the log another arbiter writes, entry by entry, so it
//! can answer `Allocate` and reads while that arbiter takes every change.
//!
//! What changes a test in memory is what a restart would read: a store entry that writes a
//! test's record (creation, pause, resume, stop, settlement) reloads the record, one that writes
//! its statistics replaces them (the writer stores them under the test's lock, so they hold
//! exactly the test's entries before that position), and a result entry is folded as start-up
//! replays it. The decisions that happen once (early stop, expiry, stop-loss) are the writer's:
//! they reach a standby as the entries the writer logged for them.

use std::sync::Arc;

use super::lifecycle::FinalFile;
use super::state::{AllocationRecord, StatsRecord, TestState};
use super::types::TestRecord;
use super::{
    command, decision_id, history, journal_entry, ExperimentError, Experiments, Result,
    INLINE_REFRESH_NS,
};
use crate::audit::AuditLog;
use crate::registry::Registry;
use crate::storage::{keys, Followed, LogEntry, Storage};

/// `stored` without its counts: what a standby's own counting starts from (its table is kept).
pub(super) fn own_counts_only(stored: AllocationRecord) -> AllocationRecord {
    let k = stored.counts.len();
    AllocationRecord {
        counts: vec![0; k],
        expected: vec![0.0; k],
        ..stored
    }
}

/// Where a standby's decision sequences begin: in the upper half of the sequence space (the
/// writer counts up from the bottom), at a random point, so that ids a standby hands out are
/// not ids the writer or another standby hands out for the same test (unless one of them
/// makes billions of decisions).
pub(super) fn mint_apart(state: &TestState) {
    let half = decision_id::SEQUENCE_MODULUS / 2;
    state.start_decisions_at(half + rand::random::<u64>() % half);
}

impl Experiments {
    /// The tests of `storage`, a store that follows a log another arbiter writes
    /// ([`Storage::open_following`]), kept current by [`Experiments::follow`]. Serves
    /// allocations and reads; writes nothing (ingestion and changes are refused by the storage),
    /// and runs only the table refresher. Must run inside a tokio runtime.
    pub fn open_following(
        storage: Arc<Storage>,
        audit: Arc<AuditLog>,
        registry: Registry,
        limits: super::IngestLimits,
    ) -> Result<Self> {
        let experiments = Self::load(storage, audit, registry, limits, true)?;
        experiments.start_background_tasks()?;
        Ok(experiments)
    }

    /// A standby's own decisions per test since it began following (what it reports to the
    /// writer).
    pub fn counted_here(&self) -> Vec<(String, AllocationRecord)> {
        self.inner
            .tests
            .iter()
            .map(|entry| (entry.key().to_string(), entry.value().allocation_record()))
            .collect()
    }

    /// The writer: adds decisions a standby counted (`counts` and `expected` per arm) to
    /// `test_id`'s counts. Refused for a test that ended (its final counts are taken) or whose
    /// arms differ.
    pub fn add_counted_elsewhere(
        &self,
        test_id: &str,
        counts: &[u64],
        expected: &[f64],
    ) -> Result<()> {
        let state = self.state(test_id)?;
        let k = state.config.arms.len();
        if counts.len() != k || expected.len() != k {
            return Err(ExperimentError::InvalidArgument {
                field: "counts",
                reason: format!(
                    "{} counts and {} expected counts for a test with {k} arms",
                    counts.len(),
                    expected.len()
                ),
            });
        }
        if state.status().is_ended() {
            return Err(ExperimentError::WrongStatus {
                test_id: test_id.to_string(),
                status: state.status(),
                action: "count allocations of",
            });
        }
        state.add_counted(counts, expected);
        Ok(())
    }

    /// The allocation counts reads show for `state`: a standby's own count only its decisions,
    /// so it shows the writer's, as stored with every arbiter's decisions.
    /// Decisions clients drew in their own process and reported are added (they are kept with
    /// the test's statistics, not its allocation counters).
    pub(super) fn shown_allocations(&self, state: &TestState) -> Result<AllocationRecord> {
        let mut shown = if self.inner.following {
            let test_id = state.config.test_id.as_str();
            let stored = self
                .inner
                .storage
                .get::<AllocationRecord>(&keys::test_allocations(test_id))?;
            stored.unwrap_or_else(|| own_counts_only(state.allocation_record()))
        } else {
            state.allocation_record()
        };
        let book = state.book.lock();
        let client = &book.stats.client;
        for (total, c) in shown.counts.iter_mut().zip(&client.counts) {
            *total = total.saturating_add(*c);
        }
        for (total, e) in shown.expected.iter_mut().zip(&client.expected) {
            *total += e;
        }
        Ok(shown)
    }

    /// Applies to the tests in memory what the storage did with the log's next entry.
    pub fn follow(&self, followed: Followed) -> Result<()> {
        match followed {
            Followed::Held => Ok(()),
            Followed::Owner(entry) => self.follow_results(&entry),
            Followed::Store(written) => {
                // Records first: a test's statistics may come in the batch that creates it.
                for key in &written {
                    if let Some(test_id) = key_test_id(key, keys::TEST_PREFIX) {
                        self.follow_record(test_id)?;
                    }
                }
                for key in &written {
                    if let Some(test_id) = key_test_id(key, keys::STATS_PREFIX) {
                        self.follow_stats(test_id)?;
                    }
                }
                // Final results files, as the writer writes them: with each allocation count
                // stored after a test's end (the periodic store of counts can come between the
                // end and the final counts, which come last), and again when its settlement
                // closes.
                for key in &written {
                    if let Some(test_id) = key_test_id(key, keys::ALLOCATIONS_PREFIX) {
                        self.write_final_results_when_due(test_id, FinalFile::Rewrite);
                    } else if let Some(test_id) = key_test_id(key, keys::TEST_PREFIX) {
                        self.write_final_results_when_due(test_id, FinalFile::IfUnsettled);
                    }
                }
                Ok(())
            }
        }
    }

    /// A test whose record the writer created or changed.
    fn follow_record(&self, test_id: &str) -> Result<()> {
        let storage = &self.inner.storage;
        let Some(record) = storage.get::<TestRecord>(&keys::test(test_id))? else {
            return Ok(());
        };
        let existing = self.inner.tests.get(test_id).map(|e| e.value().clone());
        match existing {
            Some(state) => {
                {
                    let mut book = state.book.lock();
                    book.record = command::sharing_config(record, &book.record.config);
                }
                state.refresh();
            }
            None => {
                let k = record.config.arms.len();
                let stats = storage
                    .get::<StatsRecord>(&keys::test_stats(test_id))?
                    .unwrap_or_else(|| StatsRecord::new(k));
                let id = record.config.test_id.clone();
                // A standby counts only its own decisions.
                let state = TestState::new(
                    record,
                    stats,
                    None,
                    self.decision_key(test_id),
                    self.inner.feed.clone(),
                );
                mint_apart(&state);
                *state.series.lock() = history::SeriesState::resumed(&history::sample(&state));
                self.inner.tests.insert(id.clone(), Arc::new(state));
                self.inner.feed.changed(&id);
            }
        }
        Ok(())
    }

    /// A test whose statistics the writer stored: they replace the ones in memory.
    fn follow_stats(&self, test_id: &str) -> Result<()> {
        let Ok(state) = self.state(test_id) else {
            return Ok(());
        };
        let Some(stats) = self
            .inner
            .storage
            .get::<StatsRecord>(&keys::test_stats(test_id))?
        else {
            return Ok(());
        };
        state.book.lock().stats = stats;
        self.refresh_followed(state);
        Ok(())
    }

    /// A batch of results the writer logged.
    fn follow_results(&self, entry: &LogEntry) -> Result<()> {
        let corrupt = |why| journal_entry::corrupt(entry.position, why);
        let decoded = journal_entry::decode(&entry.payload).map_err(corrupt)?;
        let Ok(state) = self.state(&decoded.test_id) else {
            tracing::warn!(
                position = entry.position,
                test_id = %decoded.test_id,
                "results of an unknown test skipped"
            );
            return Ok(());
        };
        // What the results change (suspensions, drift alarms) the writer audits and stores.
        let folded = journal_entry::fold_into(
            &state.config,
            &mut state.book.lock(),
            &decoded,
            entry.position,
        );
        if folded.map_err(corrupt)?.is_none() || decoded.results.is_empty() {
            // Decision counts alone change no statistic the policy reads.
            return Ok(());
        }
        self.refresh_followed(state);
        Ok(())
    }

    /// Recomputes the table of a test whose statistics changed, now or soon.
    fn refresh_followed(&self, state: Arc<TestState>) {
        if state.refresh_soon(INLINE_REFRESH_NS) {
            self.inner.dirty_tests.lock().push(state);
        }
    }
}

/// The test id of a key under `prefix`.
fn key_test_id<'a>(key: &'a [u8], prefix: &[u8]) -> Option<&'a str> {
    std::str::from_utf8(key.strip_prefix(prefix)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ids_are_read_from_record_and_statistics_keys_only() {
        assert_eq!(
            key_test_id(&keys::test("t-1"), keys::TEST_PREFIX),
            Some("t-1")
        );
        assert_eq!(
            key_test_id(&keys::test_stats("t-1"), keys::STATS_PREFIX),
            Some("t-1")
        );
        assert_eq!(
            key_test_id(&keys::test_allocations("t-1"), keys::TEST_PREFIX),
            None
        );
        assert_eq!(
            key_test_id(&keys::test_stats("t-1"), keys::TEST_PREFIX),
            None
        );
    }
}
