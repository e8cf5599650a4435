//! Result ingestion: validate each record ([`check`]), skip duplicates by `result_id`, update the
//! arm statistics, and write one journal entry per test and batch (its accepted results and new
//! result ids, [`super::journal_entry`]); the snapshot writer later stores the statistics in the
//! store ([`Experiments::snapshot`]). A batch that changes a suspension or finds drift goes to
//! the store directly, with its audit events, in one atomic batch. The caller acknowledges after
//! [`Experiments::make_durable`] has returned, which is after a sync that covers the batch.
//! [`Experiments::record_batch`] does both.

mod check;

use std::collections::HashMap;
use std::sync::Arc;

use crate::time::UnixNanos;

use crate::audit::AuditDraft;

use super::decision::StopDecision;
use super::journal_entry::{self, Change};
use super::result_ids::{PendingIds, ResultIds};
use super::state::{StatsRecord, TestState};
use super::stats_record::ClientCounts;
use super::types::{DriftAction, TestConfig};
use super::{stopping, ExperimentError, Experiments, Result, INLINE_REFRESH_NS};

/// The audit event of a change a batch caused: a suspension or reinstatement (with its cause),
/// or drift found in an arm's returns.
pub(super) fn change_event(config: &TestConfig, stats: &StatsRecord, change: Change) -> AuditDraft {
    match change {
        Change::Suspension { arm, suspended } => {
            let action = if suspended {
                "test.arm_suspended"
            } else {
                "test.arm_reinstated"
            };
            let cause = if stats.tracks[arm].drift_hold() {
                "drift"
            } else {
                "stop_loss"
            };
            AuditDraft::test("system", action, &config.test_id)
                .detail("arm_id", &config.arms[arm].arm_id)
                .detail("cause", cause)
                .detail("mean_return", stats.arms[arm].mean)
                .detail("results", stats.arms[arm].n)
                .detail("stop_loss_threshold", config.stop_loss_threshold)
        }
        Change::Drift { arm, at, alarm } => {
            AuditDraft::test("system", "test.arm_drift", &config.test_id)
                .detail("arm_id", &config.arms[arm].arm_id)
                .detail("model_registry_id", config.arms[arm].model.to_string())
                .detail("direction", if alarm.direction > 0 { "up" } else { "down" })
                .detail("statistic", alarm.statistic)
                .detail("reference_mean", alarm.reference_mean)
                .detail("reference_scale", alarm.reference_scale)
                .detail("at_result", at)
                .detail(
                    "on_drift",
                    match config.on_drift {
                        DriftAction::Alert => "alert",
                        DriftAction::Suspend => "suspend",
                    },
                )
        }
    }
}

/// The result-id under which a test remembers a decision-counts id: longer than any result_id
/// may be, so the two never collide.
fn counts_key(counts_id: &str) -> String {
    let mut key = String::with_capacity(MAX_RESULT_ID_LEN + 8 + counts_id.len());
    key.extend(std::iter::repeat_n('~', MAX_RESULT_ID_LEN + 1));
    key.push_str("counts:");
    key.push_str(counts_id);
    key
}

/// Longest accepted `result_id`.
pub(super) const MAX_RESULT_ID_LEN: usize = 256;
/// Longest accepted metric name.
pub(super) const MAX_METRIC_NAME_LEN: usize = 64;

/// How a result names its arm.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribution {
    /// `arm_<i>`.
    Arm(String),
    /// `<model_id>:<version>` of an arm.
    Model(String),
    /// A decision id returned by Allocate.
    Decision(u64),
}

/// One result as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultInput {
    /// The test.
    pub test_id: String,
    /// Which arm (`None` when the client set none).
    pub attribution: Option<Attribution>,
    /// Realised return.
    pub return_value: f64,
    /// Additional metrics.
    pub metrics: Vec<(String, f64)>,
    /// Idempotency key (empty: none).
    pub result_id: String,
    /// When it was observed.
    pub observed_at: Option<UnixNanos>,
}

/// Decisions a client drew in its own process from a test's allocation tables, reported with a
/// batch: allocations of the test.
#[derive(Debug, Clone, PartialEq)]
pub struct CountsInput {
    /// The test.
    pub test_id: String,
    /// The version of the latest table the decisions were drawn from (informational).
    pub table_version: u64,
    /// Decisions per arm, in the test's arm order.
    pub counts: Vec<u64>,
    /// Expected decisions per arm: over the tables they were drawn from, each table's decisions
    /// times the arm's probability in it.
    pub expected: Vec<f64>,
    /// Idempotency key (required): counts whose key the test has seen are not added again.
    pub counts_id: String,
}

/// What happened to one record.
#[derive(Debug)]
pub enum RecordOutcome {
    /// Applied and durable.
    Accepted,
    /// Its result_id was seen before; not applied again.
    Duplicate,
    /// Rejected; nothing changed.
    Rejected(ExperimentError),
}

/// What one test accepted from a batch: `(arm, record index)` pairs, and the new result ids.
struct Written<'a> {
    accepted: &'a [(usize, usize)],
    records: &'a [ResultInput],
    new_ids: PendingIds,
    /// Decisions clients reported, weighed.
    client: &'a ClientCounts,
}

/// A stop decided while applying results, carried out once they are durable.
struct PendingStop {
    test_id: String,
    winner: Option<usize>,
    /// The evidence at the batch that decided it.
    decision: StopDecision,
}

/// The indices of one test's records and decision counts in a batch.
#[derive(Default)]
struct Group {
    records: Vec<usize>,
    counts: Vec<usize>,
}

/// A batch's records and decision counts grouped by test, in order of first appearance.
struct Grouped {
    records: Vec<ResultInput>,
    counts: Vec<CountsInput>,
    groups: Vec<(String, Group)>,
    /// Tests past their deadline that must expire before the batch is applied.
    due: Vec<String>,
}

/// The group of `test_id` in `groups`, opened on its first appearance; at most `limit` groups.
fn group_of<'a>(
    index: &mut HashMap<&'a str, usize>,
    groups: &mut Vec<(String, Group)>,
    test_id: &'a str,
    limit: usize,
) -> Result<usize> {
    let next = groups.len();
    let g = *index.entry(test_id).or_insert(next);
    if g == next {
        if next == limit {
            return Err(ExperimentError::LimitExceeded {
                what: format!("a batch naming more than {limit} tests"),
                limit: format!("{limit} distinct tests per batch"),
            });
        }
        groups.push((test_id.to_string(), Group::default()));
    }
    Ok(g)
}

/// What the blocking part of [`Experiments::apply_results`] got to.
enum Step {
    Applied(AppliedResults),
    Expire(Grouped),
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ExperimentError::Io {
            context: "ingestion worker".into(),
            source: std::io::Error::other(e),
        })?
}

/// Results applied (in memory and in the store, visible to readers) but not yet known to be durable.
/// Nothing may be acknowledged before [`Experiments::make_durable`] has returned it.
#[must_use = "results are acknowledged only after make_durable"]
pub struct AppliedResults {
    outcomes: Vec<Option<RecordOutcome>>,
    count_outcomes: Vec<Option<RecordOutcome>>,
    touched: Vec<Arc<TestState>>,
    stops: Vec<PendingStop>,
    /// The log position the batch is durable through once synced: its last entry, or for
    /// duplicates everything appended before (`None`: it wrote nothing).
    durable_through: Option<u64>,
}

impl Experiments {
    /// Applies a batch of results and makes it durable: one outcome per record in order. Bad
    /// records are rejected individually; an `Err` means storage failed and nothing of the batch
    /// may be assumed durable. After the batch is durable, tests whose stop-loss or sequential
    /// test says so are stopped.
    pub async fn record_batch(&self, records: Vec<ResultInput>) -> Result<Vec<RecordOutcome>> {
        let applied = self.apply_results(records).await?;
        self.make_durable(applied).await
    }

    /// Waits until `applied` is durable (sharing flushes with every batch applied before it),
    /// then lets allocations see it and carries out the stops it decided; returns its outcomes.
    /// A stream may apply its next batch while this waits: acknowledgements stay in order and
    /// each still follows its own flush.
    pub async fn make_durable(&self, applied: AppliedResults) -> Result<Vec<RecordOutcome>> {
        self.make_batch_durable(applied)
            .await
            .map(|(records, _)| records)
    }

    /// [`Experiments::make_durable`] for a batch with decision counts: the outcomes of its
    /// records and of its decision counts.
    pub async fn make_batch_durable(
        &self,
        applied: AppliedResults,
    ) -> Result<(Vec<RecordOutcome>, Vec<RecordOutcome>)> {
        let AppliedResults {
            outcomes,
            count_outcomes,
            touched,
            stops,
            durable_through,
        } = applied;
        // One log holds the batch's entries and every change they build on (the test's
        // creation, earlier suspensions): one sync through the last of them covers all.
        if let Some(position) = durable_through {
            self.inner.storage.flush_through(position).await?;
        }
        // Refreshed before the acknowledgement (reflected in allocations within 10 ms
        // of it). A Thompson refresh of eight arms is ~10 µs of numerical integration, ~1 ms when
        // it falls back to Monte Carlo.
        for state in touched {
            if state.refresh_soon(INLINE_REFRESH_NS) {
                self.inner.dirty_tests.lock().push(state);
            }
        }
        self.carry_out(stops).await?;
        let every = |outcomes: Vec<Option<RecordOutcome>>| -> Vec<RecordOutcome> {
            outcomes
                .into_iter()
                .map(|o| o.expect("every record gets an outcome"))
                .collect()
        };
        Ok((every(outcomes), every(count_outcomes)))
    }

    /// Validates the records, skips duplicates, and writes one journal entry per test (or, when a
    /// stop-loss suspension changes, one atomic store batch of statistics, result ids and audit
    /// events). Not durable yet: see [`Experiments::make_durable`].
    ///
    /// The work (grouping, validation, statistics, loading result ids, encoding) runs on the
    /// blocking pool: a batch of 100k records must not hold a runtime worker that answers
    /// `Allocate`. A batch over the limits is refused whole before anything is applied.
    pub async fn apply_results(&self, records: Vec<ResultInput>) -> Result<AppliedResults> {
        self.apply_batch(records, Vec::new()).await
    }

    /// [`Experiments::apply_results`] for a batch that also reports decisions clients drew in
    /// their own process (`counts`, each counted at most once by its `counts_id`).
    pub async fn apply_batch(
        &self,
        records: Vec<ResultInput>,
        counts: Vec<CountsInput>,
    ) -> Result<AppliedResults> {
        let limits = self.inner.limits;
        if records.len() + counts.len() > limits.max_batch_records {
            return Err(ExperimentError::LimitExceeded {
                what: format!(
                    "a batch of {} records and {} decision counts",
                    records.len(),
                    counts.len()
                ),
                limit: format!("{} records per batch", limits.max_batch_records),
            });
        }
        let this = self.clone();
        let grouped = match blocking(move || this.group_and_apply(records, counts)).await? {
            Step::Applied(applied) => return Ok(applied),
            Step::Expire(grouped) => grouped,
        };
        // An expired test completes before it could take more results (rare: only the first
        // batch after a deadline gets here).
        for test_id in &grouped.due {
            self.expire_if_due(test_id).await?;
        }
        let this = self.clone();
        blocking(move || this.apply_groups(grouped)).await
    }

    /// Groups the records by test; applies them at once unless some test is due to expire.
    fn group_and_apply(&self, records: Vec<ResultInput>, counts: Vec<CountsInput>) -> Result<Step> {
        let grouped = self.group(records, counts)?;
        if grouped.due.is_empty() {
            self.apply_groups(grouped).map(Step::Applied)
        } else {
            Ok(Step::Expire(grouped))
        }
    }

    /// Groups record indices by test in order of first appearance (linear: one hash lookup per
    /// record), enforcing the limit on distinct tests, and lists the tests past their deadline.
    fn group(&self, records: Vec<ResultInput>, counts: Vec<CountsInput>) -> Result<Grouped> {
        let limit = self.inner.limits.max_batch_tests;
        let mut groups: Vec<(String, Group)> = Vec::new();
        {
            let mut index: HashMap<&str, usize> = HashMap::new();
            for (i, r) in records.iter().enumerate() {
                let g = group_of(&mut index, &mut groups, &r.test_id, limit)?;
                groups[g].1.records.push(i);
            }
            for (i, c) in counts.iter().enumerate() {
                let g = group_of(&mut index, &mut groups, &c.test_id, limit)?;
                groups[g].1.counts.push(i);
            }
        }
        let now = crate::time::now();
        let due = groups
            .iter()
            .filter(|(test_id, _)| {
                self.state(test_id)
                    .is_ok_and(|s| !s.status().is_ended() && now >= s.deadline)
            })
            .map(|(test_id, _)| test_id.clone())
            .collect();
        Ok(Grouped {
            records,
            counts,
            groups,
            due,
        })
    }

    /// Applies grouped records (see [`Experiments::apply_results`]). Blocks on storage reads
    /// (result ids) and journal appends.
    fn apply_groups(&self, grouped: Grouped) -> Result<AppliedResults> {
        let Grouped {
            records,
            counts,
            groups,
            ..
        } = grouped;
        let mut outcomes: Vec<Option<RecordOutcome>> = (0..records.len()).map(|_| None).collect();
        let mut count_outcomes: Vec<Option<RecordOutcome>> =
            (0..counts.len()).map(|_| None).collect();
        let mut touched = Vec::new();
        let mut stops = Vec::new();
        let mut through = 0u64;
        for (test_id, group) in groups {
            let Group {
                records: indices,
                counts: count_indices,
            } = group;
            let state = match self.state(&test_id) {
                Ok(s) => s,
                Err(_) => {
                    let not_found = || {
                        Some(RecordOutcome::Rejected(ExperimentError::NotFound {
                            test_id: test_id.clone(),
                        }))
                    };
                    for i in indices {
                        outcomes[i] = not_found();
                    }
                    for i in count_indices {
                        count_outcomes[i] = not_found();
                    }
                    continue;
                }
            };
            let mut book = state.book.lock();
            // An ended test accepts late results (for decisions made while it ran) until its
            // settlement closes; after that, nothing.
            let settling = book.record.settling(crate::time::now());
            if book.record.status.is_ended() && !settling {
                let refused = || {
                    Some(RecordOutcome::Rejected(ExperimentError::WrongStatus {
                        test_id: test_id.clone(),
                        status: book.record.status,
                        action: if book.record.settled {
                            "accept results: its settlement has closed"
                        } else {
                            "accept results"
                        },
                    }))
                };
                for &i in &indices {
                    outcomes[i] = refused();
                }
                for &i in &count_indices {
                    count_outcomes[i] = refused();
                }
                continue;
            }
            let settles_at = book.record.settles_at().unwrap_or(0);
            let config = state.config.clone();
            let mut stats = book.stats.clone();
            let mut result_ids = state.result_ids.lock();
            if !count_indices.is_empty()
                || indices.iter().any(|&i| !records[i].result_id.is_empty())
            {
                result_ids.load(&self.inner.storage, &test_id)?;
            }
            let mut new_ids = PendingIds::default();
            let mut accepted = Vec::with_capacity(indices.len());
            let mut alarms = Vec::new();
            for i in indices {
                let r = &records[i];
                let checked = self.check(&state, &stats.arms, r).and_then(|arm| {
                    if settling && !check::made_while_running(&state, r) {
                        return Err(ExperimentError::Settling {
                            test_id: test_id.clone(),
                            settles_at,
                        });
                    }
                    Ok(arm)
                });
                let outcome = match checked {
                    Err(e) => RecordOutcome::Rejected(e),
                    Ok(arm) => {
                        let duplicate = !r.result_id.is_empty()
                            && !result_ids.admit(&mut new_ids, &r.result_id);
                        if duplicate {
                            RecordOutcome::Duplicate
                        } else {
                            journal_entry::add(
                                &mut stats,
                                &mut alarms,
                                arm,
                                r.return_value,
                                &r.metrics,
                            );
                            accepted.push((arm, i));
                            RecordOutcome::Accepted
                        }
                    }
                };
                outcomes[i] = Some(outcome);
            }
            let mut client = ClientCounts::default();
            for i in count_indices {
                let c = &counts[i];
                let outcome = match check::counts(&state, c) {
                    Err(e) => RecordOutcome::Rejected(e),
                    Ok(()) if !result_ids.admit(&mut new_ids, &counts_key(&c.counts_id)) => {
                        RecordOutcome::Duplicate
                    }
                    Ok(()) => {
                        client.add(&c.counts, &c.expected);
                        RecordOutcome::Accepted
                    }
                };
                count_outcomes[i] = Some(outcome);
            }
            if accepted.is_empty() && client.is_empty() {
                continue;
            }
            journal_entry::add_client(&mut stats.client, &client);
            // A batch of decision counts alone changes no statistic the stopping rules look at
            // (replay does the same).
            let changes = if accepted.is_empty() {
                Vec::new()
            } else {
                journal_entry::settle(&config, &mut stats, alarms, settling)
            };
            let drifts = changes
                .iter()
                .filter(|c| matches!(c, Change::Drift { .. }))
                .count();
            if drifts > 0 {
                metrics::counter!("arbiter_drift_detected_total").increment(drifts as u64);
            }
            if settling || accepted.is_empty() {
                // Late results change the figures, not the decision already taken.
            } else if let Some(stop) = self.stop_decision(&config, &stats) {
                stops.push(stop);
            }
            let written = Written {
                accepted: &accepted,
                records: &records,
                new_ids,
                client: &client,
            };
            let position =
                self.write_group(&state, &mut stats, changes, written, &mut result_ids)?;
            through = through.max(position);
            drop(result_ids);
            book.stats = stats;
            drop(book);
            if !accepted.is_empty() {
                // Decision counts alone change no statistic the policy reads: no new table.
                touched.push(state);
            }
        }
        if outcomes
            .iter()
            .chain(&count_outcomes)
            .any(|o| matches!(o, Some(RecordOutcome::Duplicate)))
        {
            // The first copy of a duplicate may still be on its way to the disk: a duplicate is
            // acknowledged as recorded only once everything applied before it is durable.
            through = self.inner.storage.log().next_position() - 1;
        }
        Ok(AppliedResults {
            outcomes,
            count_outcomes,
            touched,
            stops,
            durable_through: (through > 0).then_some(through),
        })
    }

    /// Writes one test's share of a batch: one result entry in the log (the common case), or,
    /// when a stop-loss suspension changed, statistics, every unsaved result id and the audit
    /// events in one atomic store batch, as the audit chain requires. Returns the log position
    /// that covers what it wrote. Called with the test's book and result ids locked; `stats` is
    /// the test's new state.
    fn write_group(
        &self,
        state: &Arc<TestState>,
        stats: &mut StatsRecord,
        changes: Vec<Change>,
        written: Written<'_>,
        result_ids: &mut ResultIds,
    ) -> Result<u64> {
        let config = &state.config;
        let test_id = config.test_id.as_str();
        if changes.is_empty() {
            let mut payload = Vec::with_capacity(64 + 24 * written.accepted.len());
            journal_entry::encode(
                test_id,
                written.accepted.iter().map(|&(arm, i)| {
                    let r = &written.records[i];
                    (arm, r.return_value, r.metrics.as_slice())
                }),
                written.new_ids.fingerprints(),
                written.client,
                &mut payload,
            );
            // Queued before the append: a snapshot that rotates the journal after this entry
            // then finds the test in its queue (see `snapshot`).
            self.mark_unsaved(state);
            let position = self.inner.storage.log().append(&payload)?;
            stats.journal_position = position;
            result_ids.commit_journaled(written.new_ids);
            return Ok(position);
        }
        self.store_stats(state, stats, result_ids, written.new_ids, changes)
    }

    /// Stops the tests the statistics call for.
    async fn carry_out(&self, stops: Vec<PendingStop>) -> Result<()> {
        for stop in stops {
            tracing::info!(test_id = %stop.test_id, kind = %stop.decision.kind, reason = %stop.decision.reason, "stopping test");
            match self
                .stop(&stop.test_id, "system", stop.winner, stop.decision)
                .await
            {
                // Someone else ended it meanwhile.
                Ok(_) | Err(ExperimentError::WrongStatus { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes, at start-up, the stops that the stored and replayed statistics call for: results
    /// whose stop a crash prevented, and replayed results that cross a stopping rule, stop
    /// their test now rather than on its next batch. A stop that fails is logged and left to the
    /// test's next batch: stored state never keeps the server from starting.
    pub(super) async fn take_stored_decisions(&self) {
        let stops: Vec<PendingStop> = self
            .inner
            .tests
            .iter()
            .filter_map(|entry| {
                let state = entry.value();
                let book = state.book.lock();
                if book.record.status.is_ended() {
                    return None;
                }
                self.stop_decision(&state.config, &book.stats)
            })
            .collect();
        for stop in stops {
            let test_id = stop.test_id.clone();
            if let Err(e) = self.carry_out(vec![stop]).await {
                tracing::error!(test_id, error = %e, "stopping a test at start-up failed; serving it");
            }
        }
    }

    /// Whether the test must stop after this batch: every arm suspended by the stop-loss, or
    /// (with early stopping) the sequential tests justify a winner.
    fn stop_decision(&self, config: &TestConfig, stats: &StatsRecord) -> Option<PendingStop> {
        let test_id = config.test_id.to_string();
        if stats.suspended.iter().all(|&s| s) {
            let drift = stats.tracks.iter().any(|t| t.drift_hold());
            let (kind, reason) = if drift {
                let causes: Vec<String> = stats
                    .tracks
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let cause = if t.drift_hold() { "drift" } else { "stop-loss" };
                        format!("{} ({cause})", config.arms[i].arm_id)
                    })
                    .collect();
                (
                    "suspended",
                    format!("every arm is held at its floor: {}", causes.join(", ")),
                )
            } else {
                (
                    "stop_loss",
                    format!(
                        "stop-loss: every arm's mean return is below {}",
                        config.stop_loss_threshold
                    ),
                )
            };
            return Some(PendingStop {
                test_id,
                winner: None,
                decision: StopDecision::at(config, stats, kind, reason, None, crate::time::now()),
            });
        }
        if !config.early_stopping || !stopping::monitoring(config, &stats.arms) {
            return None;
        }
        let evidence = stopping::evidence(config, &stats.arms, &stats.sequential);
        let winner = stopping::decide(config, &stats.arms, &evidence)?;
        let reason = stopping::reason(config, &evidence, winner);
        Some(PendingStop {
            test_id,
            winner: Some(winner),
            decision: StopDecision::at(
                config,
                stats,
                "early_stop",
                reason,
                Some(winner),
                crate::time::now(),
            ),
        })
    }
}
