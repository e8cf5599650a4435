//! Result ingestion: validate each record, skip duplicates by `result_id`, update the arm
//! statistics, and write statistics and result-id markers in one atomic batch per test; the
//! caller acknowledges after [`Experiments::record_batch`] returns, which is after the flush.

use std::collections::HashSet;

use crate::storage::{keys, WriteBatch};
use crate::time::UnixNanos;

use super::state::StatsRecord;
use super::types::MAX_ARMS;
use super::{ExperimentError, Experiments, Result, INLINE_REFRESH_NS};

/// Longest accepted `result_id`.
pub const MAX_RESULT_ID_LEN: usize = 256;

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

impl Experiments {
    /// Applies a batch of results, one outcome per record in order. Bad records are rejected
    /// individually; an `Err` means storage failed and nothing of the batch may be assumed durable.
    pub async fn record_batch(&self, records: Vec<ResultInput>) -> Result<Vec<RecordOutcome>> {
        let mut outcomes: Vec<Option<RecordOutcome>> = (0..records.len()).map(|_| None).collect();
        // Group record indices by test, keeping their order.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match groups.iter_mut().find(|(t, _)| *t == r.test_id) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((r.test_id.clone(), vec![i])),
            }
        }
        let mut touched = Vec::new();
        let mut wrote = false;
        for (test_id, indices) in groups {
            let state = match self.state(&test_id) {
                Ok(s) => s,
                Err(_) => {
                    for i in indices {
                        outcomes[i] = Some(RecordOutcome::Rejected(ExperimentError::NotFound {
                            test_id: test_id.clone(),
                        }));
                    }
                    continue;
                }
            };
            let mut book = state.book.lock();
            if book.record.status.is_ended() {
                for &i in &indices {
                    outcomes[i] = Some(RecordOutcome::Rejected(ExperimentError::WrongStatus {
                        test_id: test_id.clone(),
                        status: book.record.status,
                        action: "accept results",
                    }));
                }
                continue;
            }
            let mut arms = book.arms.clone();
            let mut batch = WriteBatch::new();
            let mut seen = HashSet::new();
            let mut applied = 0usize;
            for i in indices {
                let r = &records[i];
                let outcome = match self.check(&state.config, &arms, r) {
                    Err(e) => RecordOutcome::Rejected(e),
                    Ok(arm) => {
                        let duplicate = !r.result_id.is_empty()
                            && (!seen.insert(r.result_id.as_str())
                                || self
                                    .inner
                                    .storage
                                    .contains(&keys::result_id(&test_id, &r.result_id))?);
                        if duplicate {
                            RecordOutcome::Duplicate
                        } else {
                            arms[arm].add(r.return_value);
                            for (name, value) in &r.metrics {
                                arms[arm].add_metric(name, *value);
                            }
                            if !r.result_id.is_empty() {
                                batch.put_raw(keys::result_id(&test_id, &r.result_id), Vec::new());
                            }
                            applied += 1;
                            RecordOutcome::Accepted
                        }
                    }
                };
                outcomes[i] = Some(outcome);
            }
            if applied > 0 {
                batch.put(
                    keys::test_stats(&test_id),
                    &StatsRecord { arms: arms.clone() },
                )?;
                self.inner.storage.apply(batch)?;
                book.arms = arms;
                wrote = true;
                drop(book);
                touched.push(state);
            }
        }
        if wrote {
            self.inner.storage.flush().await?;
        }
        for state in touched {
            state.refresh_soon(INLINE_REFRESH_NS);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every record gets an outcome"))
            .collect())
    }

    /// Validates one record against its test and returns its arm index.
    fn check(
        &self,
        config: &super::types::TestConfig,
        arms: &[super::posterior::ArmStats],
        r: &ResultInput,
    ) -> Result<usize> {
        if !r.return_value.is_finite() {
            return Err(ExperimentError::invalid(
                "return_value",
                format!("{} is not finite", r.return_value),
            ));
        }
        if r.result_id.len() > MAX_RESULT_ID_LEN {
            return Err(ExperimentError::invalid(
                "result_id",
                format!("is longer than {MAX_RESULT_ID_LEN} bytes"),
            ));
        }
        let arm = match &r.attribution {
            None => {
                return Err(ExperimentError::invalid(
                    "attribution",
                    "one of arm_id, model_registry_id or decision_id must be set",
                ))
            }
            Some(Attribution::Arm(arm_id)) => config.arm_index(arm_id).ok_or_else(|| {
                ExperimentError::invalid(
                    "arm_id",
                    format!("test {:?} has no arm {arm_id:?}", config.test_id.as_str()),
                )
            })?,
            Some(Attribution::Model(model)) => config
                .arms
                .iter()
                .position(|a| a.model.to_string() == *model)
                .ok_or_else(|| {
                    ExperimentError::invalid(
                        "model_registry_id",
                        format!(
                            "{model:?} is not an arm of test {:?}",
                            config.test_id.as_str()
                        ),
                    )
                })?,
            Some(Attribution::Decision(id)) => {
                let arm = (id & (MAX_ARMS as u64 * 2 - 1)) as usize;
                if arm >= config.arms.len() {
                    return Err(ExperimentError::invalid(
                        "decision_id",
                        format!("{id} was not issued by test {:?}", config.test_id.as_str()),
                    ));
                }
                arm
            }
        };
        for (name, value) in &r.metrics {
            if !value.is_finite() {
                return Err(ExperimentError::invalid(
                    "additional_metrics",
                    format!("{name:?} is {value}, not finite"),
                ));
            }
            if name.is_empty() || name.len() > 64 {
                return Err(ExperimentError::invalid(
                    "additional_metrics",
                    format!("metric name {name:?} must be 1 to 64 bytes"),
                ));
            }
            if !arms[arm].accepts_metric(name) {
                return Err(ExperimentError::invalid(
                    "additional_metrics",
                    format!(
                        "arm already has {} metrics; {name:?} would exceed the limit",
                        arms[arm].metrics.len()
                    ),
                ));
            }
        }
        Ok(arm)
    }
}
