//! The lifecycle commands of tests, as the log holds them, and their fold.
//!
//! Creating, pausing, resuming and stopping a test and closing its settlement are logged as
//! what was asked, with everything the outcome depends on that is not in the store: who asked,
//! when, and for a stop the decision taken on the statistics the node held (its evidence is
//! recorded as it was decided). The outcome (refused or not, the test's new record, the audit
//! event) is computed by [`apply`] from the command and the store as the log's earlier entries
//! left it, the same way when it is executed and when it is replayed: a test that exists
//! already, a model that was deleted or retired before the creation's position, or a status
//! that changed before a pause are refused at the command's position in the log.
//!
//! Statistics and result ids are not commands: they are folded from the result entries
//! (`journal_entry`) and stored by snapshots.
//!
//! Replay runs the fold of the build that opens the data directory over the commands logged
//! since the last checkpoint (none after a clean stop). A change to how a command is applied
//! (its checks, the records or audit details it writes) must therefore keep applying commands
//! of the current [`Command`] format version as before, and take effect under a new version.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditDraft};
use crate::registry::types::ModelStatus;
use crate::storage::{self, keys, Record, Storage, WriteBatch};
use crate::time::UnixNanos;

use super::decision::StopDecision;
use super::lifecycle::put_test_record;
use super::state::StatsRecord;
use super::types::*;
use super::{ExperimentError, Result};

/// The first byte of the tests' commands in the log (the state fold dispatches on it).
pub const DOMAIN: u8 = b'T';

/// A change to a test's lifecycle, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A new test.
    Create(Box<Create>),
    /// RUNNING to PAUSED.
    Pause(Transition),
    /// PAUSED to RUNNING.
    Resume(Transition),
    /// The end of a RUNNING or PAUSED test.
    Stop(Box<Stop>),
    /// The close of an ended test's settlement period.
    Settle(Settle),
}

impl Record for Command {
    const FORMAT_VERSION: u8 = 1;
}

/// A creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Create {
    /// The new test's record (RUNNING, created at the command's time).
    pub record: TestRecord,
    /// Who asked.
    pub actor: String,
}

/// A pause or a resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    /// The test.
    pub test_id: String,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub time: UnixNanos,
}

/// A stop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stop {
    /// The test.
    pub test_id: String,
    /// Who asked ("system" for a rule or the maximum duration).
    pub actor: String,
    /// The winning arm, if any.
    pub winner: Option<usize>,
    /// What the stop was decided on.
    pub decision: StopDecision,
    /// When.
    pub time: UnixNanos,
}

/// The close of a settlement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settle {
    /// The test.
    pub test_id: String,
    /// Results the test holds at the close.
    pub results: u64,
    /// Of those, results that arrived after its decision (unknown for tests stopped by builds
    /// that did not store the decision).
    pub results_after_decision: Option<u64>,
    /// When.
    pub time: UnixNanos,
}

/// The log entry of `command`: [`DOMAIN`], then the versioned record.
pub fn encode(command: &Command) -> storage::Result<Vec<u8>> {
    storage::encode_command(DOMAIN, command)
}

/// The batch of a command (without [`DOMAIN`]) replayed from the log: see [`apply`].
pub fn replay(store: &Storage, bytes: &[u8]) -> std::result::Result<WriteBatch, String> {
    storage::replay_command(store, bytes, "test command", apply)
}

/// Applies `command` to the store as the log's earlier entries left it: the batch that makes
/// the change, with its audit event chained; or why it is refused. Deterministic.
pub fn apply(store: &Storage, command: &Command) -> Result<WriteBatch> {
    let batch = match command {
        Command::Create(c) => audit::fold(store, c.record.created_at, |b| create(store, c, b))?.0,
        Command::Pause(c) => audit::fold(store, c.time, |b| pause(store, c, b))?.0,
        Command::Resume(c) => audit::fold(store, c.time, |b| resume(store, c, b))?.0,
        Command::Stop(c) => audit::fold(store, c.time, |b| stop(store, c, b))?.0,
        Command::Settle(c) => audit::fold(store, c.time, |b| settle(store, c, b))?.0,
    };
    Ok(batch)
}

/// What applying a change gives: its answer and the audit events to chain; or why it is
/// refused.
pub(super) type Change<T> = Result<(T, Vec<AuditDraft>)>;

/// A creation: its record, empty statistics and audit event. Refused when the test exists or
/// an arm's model does not, or is DEPRECATED or ARCHIVED.
pub(super) fn create(store: &Storage, c: &Create, batch: &mut WriteBatch) -> Change<()> {
    let record = &c.record;
    let id = record.config.test_id.as_str();
    if store.get_raw(&keys::test(id))?.is_some() {
        return Err(ExperimentError::AlreadyExists {
            test_id: id.to_string(),
        });
    }
    for arm in &record.config.arms {
        match crate::registry::command::load(store, arm.model.id())? {
            None => {
                return Err(ExperimentError::ModelNotFound {
                    field: "model_registry_ids",
                    registry_id: arm.model.to_string(),
                })
            }
            Some(m) if matches!(m.status, ModelStatus::Deprecated | ModelStatus::Archived) => {
                return Err(ExperimentError::ModelUnavailable {
                    registry_id: arm.model.to_string(),
                    status: m.status.to_string(),
                })
            }
            Some(_) => {}
        }
    }
    put_test_record(batch, record)?;
    batch.put(
        keys::test_stats(id),
        &StatsRecord::new(record.config.arms.len()),
    )?;
    let models: Vec<String> = record
        .config
        .arms
        .iter()
        .map(|a| a.model.to_string())
        .collect();
    let draft = AuditDraft::test(&c.actor, "test.create", id)
        .detail("models", models.join(","))
        .detail("strategy", format!("{:?}", record.config.strategy));
    Ok(((), vec![draft]))
}

/// A pause: the record as it now is.
pub(super) fn pause(store: &Storage, c: &Transition, batch: &mut WriteBatch) -> Change<TestRecord> {
    transition(store, c, batch, TestStatus::Running, TestStatus::Paused)
}

/// A resume: the record as it now is.
pub(super) fn resume(
    store: &Storage,
    c: &Transition,
    batch: &mut WriteBatch,
) -> Change<TestRecord> {
    transition(store, c, batch, TestStatus::Paused, TestStatus::Running)
}

fn transition(
    store: &Storage,
    c: &Transition,
    batch: &mut WriteBatch,
    from: TestStatus,
    to: TestStatus,
) -> Change<TestRecord> {
    let (action, audit_action) = if to == TestStatus::Paused {
        ("pause", "test.pause")
    } else {
        ("resume", "test.resume")
    };
    let mut record = load(store, &c.test_id)?;
    if record.status != from {
        return Err(ExperimentError::WrongStatus {
            test_id: c.test_id.clone(),
            status: record.status,
            action,
        });
    }
    record.status = to;
    put_test_record(batch, &record)?;
    let draft = AuditDraft::test(&c.actor, audit_action, &c.test_id).detail("reason", &c.reason);
    Ok((record, vec![draft]))
}

/// A stop: the record as it now is (COMPLETED, with its decision).
pub(super) fn stop(store: &Storage, c: &Stop, batch: &mut WriteBatch) -> Change<TestRecord> {
    let mut record = load(store, &c.test_id)?;
    if record.status.is_ended() {
        return Err(ExperimentError::WrongStatus {
            test_id: c.test_id.clone(),
            status: record.status,
            action: "stop",
        });
    }
    let winner = match c.winner {
        Some(w) if w >= record.config.arms.len() => {
            return Err(ExperimentError::invalid(
                "winner",
                format!("arm {w} of a test with {} arms", record.config.arms.len()),
            ))
        }
        w => w,
    };
    let decision = &c.decision;
    record.status = TestStatus::Completed;
    record.winner = winner;
    record.stop_reason = decision.reason.clone();
    record.stopped_at = Some(c.time);
    record.settled = record.config.settlement_period_secs == 0;
    let mut draft = AuditDraft::test(&c.actor, "test.stop", &c.test_id)
        .detail("kind", &decision.kind)
        .detail("reason", &record.stop_reason)
        .detail("evidence", decision.evidence_json());
    if let Some(w) = winner {
        draft = draft.detail("winner", &record.config.arms[w].arm_id);
    }
    match record.settles_at().filter(|_| !record.settled) {
        Some(at) => draft = draft.detail("settles_at", crate::time::rfc3339(at)),
        None => draft = draft.detail("settled", "true"),
    }
    record.decision = Some(decision.clone());
    put_test_record(batch, &record)?;
    Ok((record, vec![draft]))
}

/// The close of a settlement: the record as it now is (settled). Refused unless the test has
/// ended and is not settled yet.
pub(super) fn settle(store: &Storage, c: &Settle, batch: &mut WriteBatch) -> Change<TestRecord> {
    let mut record = load(store, &c.test_id)?;
    if !record.status.is_ended() || record.settled {
        return Err(ExperimentError::WrongStatus {
            test_id: c.test_id.clone(),
            status: record.status,
            action: "close the settlement of",
        });
    }
    record.settled = true;
    put_test_record(batch, &record)?;
    let mut draft =
        AuditDraft::test("system", "test.settled", &c.test_id).detail("results", c.results);
    if let Some(after) = c.results_after_decision {
        draft = draft.detail("results_after_decision", after);
    }
    Ok((record, vec![draft]))
}

/// The stored record of `test_id`.
fn load(store: &Storage, test_id: &str) -> Result<TestRecord> {
    store
        .get::<TestRecord>(&keys::test(test_id))?
        .ok_or_else(|| ExperimentError::NotFound {
            test_id: test_id.to_string(),
        })
}

/// A record with its configuration shared: the in-memory state keeps the configuration it
/// was created with (it never changes), and the store's copy decodes to an equal one.
pub(super) fn sharing_config(mut record: TestRecord, config: &Arc<TestConfig>) -> TestRecord {
    debug_assert_eq!(&*record.config, &**config);
    record.config = Arc::clone(config);
    record
}
