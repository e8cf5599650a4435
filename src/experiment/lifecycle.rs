//! Test lifecycle: create, read, pause, resume, stop, and the final results file.

use std::io::Write;
use std::sync::Arc;

use crate::storage::{keys, paths, WriteBatch};
use crate::text::shown;
use crate::time::{self, UnixNanos};

use super::command::{self, Command};
use super::decision::StopDecision;
use super::result_ids::PendingIds;
use super::state::{AllocationRecord, StatsRecord, TestState};
use super::stopping;
use super::types::*;
use super::{ExperimentError, Experiments, Result, TestResults};

/// How long a stop waits for decisions still drawing from the test's RUNNING table (a thread
/// holds a table for well under a microsecond, unless the scheduler preempts it right then).
const ALLOCATION_SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a page of [`Experiments::list_page`] ended: its last test's creation time and id. Clients
/// see it as an opaque token, `<created_at>:<test_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    /// Creation time of the last test of the page.
    pub created_at: UnixNanos,
    /// Its id.
    pub test_id: String,
}

impl ListCursor {
    /// The token handed to clients.
    pub fn to_token(&self) -> String {
        format!("{}:{}", self.created_at, self.test_id)
    }

    /// Reads a token from `field`; `None` for the empty token (the first page).
    pub fn parse(field: &'static str, token: &str) -> Result<Option<Self>> {
        if token.is_empty() {
            return Ok(None);
        }
        let parsed = token.split_once(':').and_then(|(time, id)| {
            Some(Self {
                created_at: time.parse().ok()?,
                test_id: id.to_owned(),
            })
        });
        match parsed {
            Some(cursor) if !cursor.test_id.is_empty() => Ok(Some(cursor)),
            _ => Err(ExperimentError::invalid(
                field,
                format!("{} is not a page token returned by ListTests", shown(token)),
            )),
        }
    }
}

/// A test as shown to clients: its record and current arm weights.
#[derive(Debug, Clone, PartialEq)]
pub struct TestView {
    /// Configuration and status.
    pub record: TestRecord,
}

/// When [`Experiments::write_final_results_when_due`] writes an ended test's final results file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FinalFile {
    /// When there is none, or it still says the test is not settled after its settlement
    /// closed.
    IfMissing,
    /// Only when it still says the test is not settled after its settlement closed.
    IfUnsettled,
    /// In any case (the test's allocation counts changed after its end: the last such write is
    /// its final counts).
    Rewrite,
}

impl Experiments {
    /// Creates a test over registered, non-retired model versions. Creation and DeleteModel
    /// are ordered by the log: whichever comes first decides (a test over a deleted model is
    /// refused; a model an active test uses cannot be deleted).
    pub async fn create(&self, config: TestConfig, actor: &str) -> Result<TestView> {
        let id = config.test_id.clone();
        let record = TestRecord {
            status: TestStatus::Running,
            created_at: time::now(),
            winner: None,
            stop_reason: String::new(),
            stopped_at: None,
            decision: None,
            settled: false,
            config: Arc::new(config),
        };
        {
            let _guard = self.inner.create_lock.lock();
            if self.inner.tests.contains_key(&id) {
                return Err(ExperimentError::AlreadyExists {
                    test_id: id.to_string(),
                });
            }
            let k = record.config.arms.len();
            let state = Arc::new(TestState::new(
                record.clone(),
                StatsRecord::new(k),
                None,
                self.decision_key(id.as_str()),
                self.inner.feed.clone(),
            ));
            let create = command::Create {
                record: record.clone(),
                actor: actor.to_string(),
            };
            // Refused at its position in the log if the test exists or a model is gone; a
            // deletion after it finds the test in the store's index of versions in use.
            self.execute(
                &Command::Create(Box::new(create.clone())),
                record.created_at,
                |store, batch| command::create(store, &create, batch),
            )?;
            // Visible to results only once its record is applied: their log entries follow it,
            // so none is durable without it.
            self.inner.tests.insert(id.clone(), state);
            self.inner.feed.changed(&id);
        }
        self.record_history(id.as_str(), false)?;
        self.inner.storage.flush().await?;
        Ok(TestView { record })
    }

    /// Executes a test command (see [`command`]): `change` computes its writes, answer and
    /// audit event from the store at the command's position; the event is chained at `time`.
    /// Not yet durable.
    fn execute<T>(
        &self,
        command: &Command,
        time: UnixNanos,
        change: impl FnOnce(&crate::storage::Storage, &mut WriteBatch) -> command::Change<T>,
    ) -> Result<T> {
        let entry = command::encode(command)?;
        self.inner
            .audit
            .execute(&self.inner.storage, &entry, time, change)
    }

    /// A test as it is now: one past its maximum duration is ended first, whoever asks.
    pub async fn current(&self, test_id: &str) -> Result<TestView> {
        self.expire_if_due(test_id).await?;
        self.get(test_id)
    }

    /// The results of a test as they are now (see [`Self::current`]).
    pub async fn current_results(&self, test_id: &str) -> Result<TestResults> {
        self.expire_if_due(test_id).await?;
        self.results(test_id)
    }

    /// A page of tests as they are now (see [`Self::list_page`]): every test past its maximum
    /// duration is ended first.
    pub async fn current_page(
        &self,
        status: Option<TestStatus>,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<(Vec<TestView>, Option<ListCursor>)> {
        self.expire_due_tests().await?;
        Ok(self.list_page(status, after, limit))
    }

    /// One test, as last changed (a test past its maximum duration may not be ended yet: see
    /// [`Self::current`]).
    pub fn get(&self, test_id: &str) -> Result<TestView> {
        let state = self.state(test_id)?;
        let record = state.book.lock().record.clone();
        Ok(TestView { record })
    }

    /// Tests (optionally only those in `status`), newest first: at most `limit` after `after`,
    /// and where the next page starts (`None` on the last page). The order (newest first, then
    /// by id) is total, so pages neither repeat nor skip a test; tests created meanwhile sort
    /// before the pages already read.
    pub fn list_page(
        &self,
        status: Option<TestStatus>,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> (Vec<TestView>, Option<ListCursor>) {
        let key = |r: &TestRecord| {
            (
                std::cmp::Reverse(r.created_at),
                r.config.test_id.to_string(),
            )
        };
        let after = after.map(|c| (std::cmp::Reverse(c.created_at), c.test_id.clone()));
        let mut records: Vec<TestRecord> = self
            .inner
            .tests
            .iter()
            .map(|e| e.value().book.lock().record.clone())
            .filter(|r| status.is_none_or(|s| s == r.status))
            .filter(|r| after.as_ref().is_none_or(|a| key(r) > *a))
            .collect();
        records.sort_by_cached_key(key);
        let more = records.len() > limit;
        records.truncate(limit);
        let next = records.last().filter(|_| more).map(|r| ListCursor {
            created_at: r.created_at,
            test_id: r.config.test_id.to_string(),
        });
        let views = records
            .into_iter()
            .map(|record| TestView { record })
            .collect();
        (views, next)
    }

    /// Pauses a RUNNING test: all traffic goes to the control arm.
    pub async fn pause(&self, test_id: &str, actor: &str, reason: &str) -> Result<TestView> {
        self.transition(test_id, actor, reason, TestStatus::Paused)
            .await
    }

    /// Resumes a PAUSED test.
    pub async fn resume(&self, test_id: &str, actor: &str, reason: &str) -> Result<TestView> {
        self.transition(test_id, actor, reason, TestStatus::Running)
            .await
    }

    /// Pauses or resumes (`to`); the fold refuses a test not in the status it leaves.
    async fn transition(
        &self,
        test_id: &str,
        actor: &str,
        reason: &str,
        to: TestStatus,
    ) -> Result<TestView> {
        let state = self.state(test_id)?;
        let record = {
            let mut book = state.book.lock();
            let change = command::Transition {
                test_id: test_id.to_string(),
                actor: actor.to_string(),
                reason: reason.to_string(),
                time: time::now(),
            };
            let (logged, apply): (Command, fn(&_, &_, &mut _) -> command::Change<TestRecord>) =
                if to == TestStatus::Paused {
                    (Command::Pause(change.clone()), command::pause)
                } else {
                    (Command::Resume(change.clone()), command::resume)
                };
            let record = self.execute(&logged, change.time, |store, batch| {
                apply(store, &change, batch)
            })?;
            let record = command::sharing_config(record, &book.record.config);
            book.record = record.clone();
            record
        };
        state.refresh();
        self.inner.storage.flush().await?;
        Ok(TestView { record })
    }

    /// Ends a RUNNING or PAUSED test as COMPLETED on `decision` (what it was decided on, which
    /// the record and the audit event keep), writes its final results file (provisional while
    /// the settlement period runs), and returns the results.
    pub async fn stop(
        &self,
        test_id: &str,
        actor: &str,
        winner: Option<usize>,
        decision: StopDecision,
    ) -> Result<TestResults> {
        let state = self.state(test_id)?;
        {
            let mut book = state.book.lock();
            if book.record.status.is_ended() {
                return Err(ExperimentError::WrongStatus {
                    test_id: test_id.to_string(),
                    status: book.record.status,
                    action: "stop",
                });
            }
            // The statistics at the stop are stored first, so that every journal entry a restart
            // replays onto an ended test's snapshot is a late result (see `journal_entry::replay`).
            let mut ids = state.result_ids.lock();
            self.store_stats(
                &state,
                &book.stats,
                &mut ids,
                PendingIds::default(),
                Vec::new(),
            )?;
            drop(ids);
            let change = command::Stop {
                test_id: test_id.to_string(),
                actor: actor.to_string(),
                winner,
                decision,
                time: time::now(),
            };
            let record = self.execute(
                &Command::Stop(Box::new(change.clone())),
                change.time,
                |store, batch| command::stop(store, &change, batch),
            )?;
            book.record = command::sharing_config(record, &book.record.config);
        }
        state.refresh();
        // The ended table is published; decisions drawn from the RUNNING one may still be
        // counting. The final results hold exactly the decisions answered RUNNING.
        let deadline = tokio::time::Instant::now() + ALLOCATION_SETTLE_TIMEOUT;
        while !state.allocations_settled() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    test_id,
                    "allocations still drawing from the running table after the stop"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_micros(100)).await;
        }
        self.record_history(test_id, false)?;
        // The final results include every batch applied so far and the final allocation
        // counts; the file is written once, so all of them must be durable first (a crash after
        // the file must not bring back older counts than it shows).
        let mut batch = WriteBatch::new();
        batch.put(keys::test_allocations(test_id), &state.allocation_record())?;
        self.inner.storage.apply(batch)?;
        self.inner.storage.flush().await?;
        let results = self.results(test_id)?;
        self.write_final_results_off_runtime(results.clone())
            .await?;
        Ok(results)
    }

    /// [`Self::write_final_results`] on the blocking pool: a file write and two fsyncs must not
    /// hold a runtime thread that answers `Allocate`.
    async fn write_final_results_off_runtime(&self, results: TestResults) -> Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.write_final_results(&results))
            .await
            .map_err(|e| ExperimentError::Io {
                context: "writing the final results file".into(),
                source: std::io::Error::other(e),
            })?
    }

    fn final_results_path(&self, test_id: &str) -> Result<std::path::PathBuf> {
        let name = format!("{}_final.json", paths::file_name(test_id));
        paths::child(&self.inner.results_dir, &name).map_err(|source| ExperimentError::Io {
            context: "locating the final results file".into(),
            source,
        })
    }

    /// Writes `<results_dir>/<test_id>_final.json` atomically (temporary file, fsync, rename).
    fn write_final_results(&self, results: &TestResults) -> Result<()> {
        let path = self.final_results_path(&results.test_id)?;
        let tmp = path.with_extension("json.tmp");
        let io = |context: &str| {
            let context = format!("{context} {}", path.display());
            move |source| ExperimentError::Io { context, source }
        };
        let json = serde_json::to_vec_pretty(results).map_err(|e| ExperimentError::Io {
            context: "encoding final results".into(),
            source: std::io::Error::other(e),
        })?;
        let mut file = std::fs::File::create(&tmp).map_err(io("creating"))?;
        file.write_all(&json).map_err(io("writing"))?;
        file.sync_all().map_err(io("syncing"))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming"))?;
        crate::storage::sync_dir(&self.inner.results_dir)?;
        Ok(())
    }

    /// Whether the test is settled but its final results file still says it was not (a crash
    /// came between closing the settlement and rewriting the file).
    fn final_file_needs_settling(&self, test_id: &str) -> bool {
        let settled = self
            .state(test_id)
            .is_ok_and(|state| state.book.lock().record.settled);
        settled
            && self
                .final_results_path(test_id)
                .ok()
                .and_then(|path| std::fs::read(path).ok())
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                // Files written before settlement existed have no such field: they are final.
                .is_some_and(|file| file["settled"] == serde_json::Value::Bool(false))
    }

    /// After a crash between ending a test and writing its file, the file is written at start;
    /// after one between closing its settlement and rewriting the file, it is rewritten. A
    /// file that cannot be written is logged with its cause and skipped: stored state never
    /// keeps the server from starting, and the next start tries again.
    pub(super) fn write_missing_final_results(&self) {
        let ended: Vec<String> = self
            .inner
            .tests
            .iter()
            .filter(|e| e.value().status().is_ended())
            .map(|e| e.key().to_string())
            .collect();
        for test_id in ended {
            self.write_final_results_when_due(&test_id, FinalFile::IfMissing);
        }
    }

    /// Writes the final results file of `test_id` if the test ended and `when` says it is due.
    /// Failures are logged with their cause.
    pub(super) fn write_final_results_when_due(&self, test_id: &str, when: FinalFile) {
        if !self.state(test_id).is_ok_and(|s| s.status().is_ended()) {
            return;
        }
        let exists = self.final_results_path(test_id).is_ok_and(|p| p.exists());
        let due = match when {
            FinalFile::Rewrite => true,
            FinalFile::IfMissing if !exists => true,
            FinalFile::IfMissing | FinalFile::IfUnsettled => {
                exists && self.final_file_needs_settling(test_id)
            }
        };
        if !due {
            return;
        }
        let written = self
            .results(test_id)
            .and_then(|results| self.write_final_results(&results));
        if let Err(e) = written {
            tracing::error!(
                test_id,
                error = %e,
                "cannot write the final results file of an ended test; serving without it"
            );
        }
    }

    /// Ends a test on request (StopTest). The winner is declared only if the evidence is already
    /// significant (the same rule as early stopping); otherwise the control arm keeps serving.
    pub async fn stop_on_request(
        &self,
        test_id: &str,
        actor: &str,
        reason: &str,
    ) -> Result<TestResults> {
        let (winner, decision) = {
            let state = self.state(test_id)?;
            let book = state.book.lock();
            let stats = &book.stats;
            let evidence = stopping::evidence(&state.config, &stats.arms, &stats.sequential);
            let winner = stopping::decide(&state.config, &stats.arms, &evidence);
            let reason = if reason.is_empty() {
                "stopped manually".to_string()
            } else {
                reason.to_string()
            };
            let decision = StopDecision::at(
                &state.config,
                stats,
                "manual",
                reason,
                winner,
                crate::time::now(),
            );
            (winner, decision)
        };
        self.stop(test_id, actor, winner, decision).await
    }

    /// Completes a RUNNING or PAUSED test whose maximum duration has passed; called lazily on
    /// access and by the periodic sweep. The winner is declared only if significant, after one
    /// final look of the sequential tests.
    pub(super) async fn expire_if_due(&self, test_id: &str) -> Result<()> {
        // A standby's tests end when the writer's stop reaches it.
        if self.inner.following {
            return Ok(());
        }
        let Ok(state) = self.state(test_id) else {
            return Ok(());
        };
        if state.status().is_ended() || time::now() < state.deadline {
            return Ok(());
        }
        let (winner, decision) = {
            let mut book = state.book.lock();
            if book.record.status.is_ended() {
                return Ok(());
            }
            let config = &state.config;
            let mut stats = book.stats.clone();
            stopping::look(config, &stats.arms, &mut stats.sequential);
            let evidence = stopping::evidence(config, &stats.arms, &stats.sequential);
            let winner = stopping::decide(config, &stats.arms, &evidence);
            let mut ids = state.result_ids.lock();
            self.store_stats(&state, &stats, &mut ids, PendingIds::default(), Vec::new())?;
            drop(ids);
            let days = config.max_duration_days;
            let reason = match winner {
                Some(w) => format!(
                    "max duration of {days} days reached; {}",
                    stopping::reason(config, &evidence, w).trim_start_matches("early stop: ")
                ),
                None => format!("max duration of {days} days reached; no significant difference"),
            };
            let decision = StopDecision::at(config, &stats, "expiry", reason, winner, time::now());
            book.stats = stats;
            (winner, decision)
        };
        match self.stop(test_id, "system", winner, decision).await {
            Ok(_) | Err(ExperimentError::WrongStatus { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Closes the settlement of every ended test whose settlement period is over.
    pub async fn settle_due_tests(&self) -> Result<()> {
        let now = time::now();
        let due: Vec<String> = self
            .inner
            .tests
            .iter()
            // The status is an atomic: only ended tests take their lock.
            .filter(|e| e.value().status().is_ended())
            .filter(|e| {
                let book = e.value().book.lock();
                let r = &book.record;
                r.status.is_ended() && !r.settled && r.settles_at().is_some_and(|t| now >= t)
            })
            .map(|e| e.key().to_string())
            .collect();
        let retry: Vec<String> = std::mem::take(&mut *self.inner.settled_files_due.lock())
            .into_iter()
            .collect();
        for test_id in due.into_iter().chain(retry) {
            if let Err(e) = self.close_settlement(&test_id).await {
                tracing::warn!(test_id, error = %e, "closing the settlement failed; will retry");
                self.inner.settled_files_due.lock().insert(test_id);
            }
        }
        Ok(())
    }

    /// Marks an ended test settled (audited): from then on it accepts no result. Then rewrites
    /// its final results file, as settled, once every result it accepted is durable.
    async fn close_settlement(&self, test_id: &str) -> Result<()> {
        let state = self.state(test_id)?;
        {
            let mut book = state.book.lock();
            if !book.record.status.is_ended() {
                return Ok(());
            }
            // A test settled before (its file rewrite failed) needs only the file.
            if !book.record.settled {
                let results: u64 = book.stats.arms.iter().map(|a| a.n).sum();
                let results_after_decision = book.record.decision.as_ref().map(|d| {
                    let decided: u64 = d.arms.iter().map(|a| a.results).sum();
                    results.saturating_sub(decided)
                });
                let change = command::Settle {
                    test_id: test_id.to_string(),
                    results,
                    results_after_decision,
                    time: time::now(),
                };
                let record = self.execute(
                    &Command::Settle(change.clone()),
                    change.time,
                    |store, batch| command::settle(store, &change, batch),
                )?;
                book.record = command::sharing_config(record, &book.record.config);
            }
        }
        self.inner.storage.flush().await?;
        let results = self.results(test_id)?;
        self.write_final_results_off_runtime(results).await
    }

    /// Expires every test whose maximum duration has passed.
    pub(super) async fn expire_due_tests(&self) -> Result<()> {
        let now = time::now();
        let due: Vec<String> = self
            .inner
            .tests
            .iter()
            .filter(|e| !e.value().status().is_ended() && e.value().deadline <= now)
            .map(|e| e.key().to_string())
            .collect();
        for test_id in due {
            self.expire_if_due(&test_id).await?;
        }
        Ok(())
    }

    /// Results per arm (and in total) to detect `effect` with `power` at level `alpha` across
    /// `arms` arms compared with a control.
    pub fn estimate_sample_size(
        &self,
        std: f64,
        effect: f64,
        alpha: f64,
        power: f64,
        arms: u32,
    ) -> Result<(u64, u64)> {
        let per_arm = crate::stats::sample_size_per_arm(std, effect, alpha, power, arms)
            .map_err(|e| ExperimentError::invalid(e.field, e.reason))?;
        Ok((per_arm, per_arm.saturating_mul(u64::from(arms))))
    }

    /// The stored allocation record of a test (for tests and tools).
    pub fn allocation_counts(&self, test_id: &str) -> Result<AllocationRecord> {
        self.shown_allocations(&*self.state(test_id)?)
    }

    /// A copy of a test's statistics as held in memory (for tests and tools).
    pub fn stats_record(&self, test_id: &str) -> Result<StatsRecord> {
        Ok(self.state(test_id)?.book.lock().stats.clone())
    }
}

/// Adds `record` to `batch`, with the index of model versions in use in step with its
/// status. Every write of a test record goes through here.
pub(super) fn put_test_record(
    batch: &mut WriteBatch,
    record: &TestRecord,
) -> crate::storage::Result<()> {
    batch.put(keys::test(record.config.test_id.as_str()), record)?;
    index_model_uses(batch, record);
    Ok(())
}

/// Adds the index entries of `record` ([`keys::model_use`]) to `batch`: one per arm while the
/// test is RUNNING or PAUSED, none once it has ended.
pub(super) fn index_model_uses(batch: &mut WriteBatch, record: &TestRecord) {
    let test_id = record.config.test_id.as_str();
    for arm in &record.config.arms {
        let key = keys::model_use(arm.model.as_str(), test_id);
        if record.status.is_ended() {
            batch.remove(key);
        } else {
            batch.put_raw(key, Vec::new());
        }
    }
}
