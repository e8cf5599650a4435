//! The journal entry of one result batch of one test: the accepted results in the order they were
//! applied, and the fingerprints of their new result_ids. Start-up replays an entry onto the
//! test's statistics snapshot when the snapshot predates it ([`replay`]), through the same
//! [`settle`] that ingestion ran, so the statistics come out bit for bit the same.
//!
//! Layout ([`ByteWriter`]): format byte [`FORMAT_VERSION`]; test id; result count; per result: arm
//! index, return (f64), metric count, per metric: name, value; fingerprint count; fingerprints,
//! 16 bytes each, big-endian. Format 2 appends the decisions clients reported with the batch
//! ([`ClientCounts`]): arm count (0: none), per arm the decisions (varint), per arm the expected
//! decisions (f64). Format 1 entries read as reporting none.

use crate::storage::{ByteReader, ByteWriter};

use super::state::{Book, StatsRecord};
use super::stats_record::ClientCounts;
use super::types::{DriftAction, TestConfig, MAX_ARMS};
use super::{risk, stopping};
use crate::stats::drift::DriftAlarm;

/// Format byte of an entry.
const FORMAT_VERSION: u8 = 2;

/// One accepted result, as journaled.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct JournaledResult {
    /// Arm index.
    pub arm: usize,
    /// Realised return.
    pub value: f64,
    /// Additional metrics.
    pub metrics: Vec<(String, f64)>,
}

/// A decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResultEntry {
    /// The test.
    pub test_id: String,
    /// Accepted results, in the order they were applied.
    pub results: Vec<JournaledResult>,
    /// Fingerprints of the batch's new result_ids (and decision counts' ids).
    pub fingerprints: Vec<u128>,
    /// Decisions clients reported with the batch.
    pub client: ClientCounts,
}

/// Encodes an entry from borrowed parts (the ingestion path builds no [`ResultEntry`]).
pub(super) fn encode<'a>(
    test_id: &str,
    results: impl ExactSizeIterator<Item = (usize, f64, &'a [(String, f64)])>,
    fingerprints: &[u128],
    client: &ClientCounts,
    out: &mut Vec<u8>,
) {
    // Format 1 while there is nothing of format 2's to write: arbiters that read only format 1
    // (an older standby during a rolling upgrade) keep following.
    out.push(if client.is_empty() { 1 } else { FORMAT_VERSION });
    let mut w = ByteWriter(out);
    w.bytes(test_id.as_bytes());
    w.len(results.len());
    for (arm, value, metrics) in results {
        w.varint(arm as u64);
        w.f64(value);
        w.len(metrics.len());
        for (name, x) in metrics {
            w.bytes(name.as_bytes());
            w.f64(*x);
        }
    }
    w.len(fingerprints.len());
    for fp in fingerprints {
        w.0.extend_from_slice(&fp.to_be_bytes());
    }
    if !client.is_empty() {
        let mut w = ByteWriter(out);
        w.len(client.counts.len());
        client.counts.iter().for_each(|&c| w.varint(c));
        client.expected.iter().for_each(|&e| w.f64(e));
    }
}

/// Decodes an entry; the error names what is malformed.
pub(super) fn decode(bytes: &[u8]) -> Result<ResultEntry, String> {
    let (&version, body) = bytes.split_first().ok_or("empty journal entry")?;
    if version != 1 && version != FORMAT_VERSION {
        return Err(format!(
            "journal entry format {version}; this build reads 1 and {FORMAT_VERSION}"
        ));
    }
    let mut r = ByteReader::new(body);
    let test_id = std::str::from_utf8(r.bytes("test id")?)
        .map_err(|e| format!("test id is not UTF-8: {e}"))?
        .to_owned();
    // A result takes at least 10 bytes: arm, value, metric count.
    let count = r.len("result count", 10)?;
    let mut results = Vec::with_capacity(count);
    for _ in 0..count {
        let arm = r.varint("arm")?;
        if arm >= MAX_ARMS as u64 {
            return Err(format!("arm {arm} is beyond the limit of {MAX_ARMS}"));
        }
        let value = r.f64("return")?;
        let metric_count = r.len("metric count", 9)?;
        let mut metrics = Vec::with_capacity(metric_count);
        for _ in 0..metric_count {
            let name = std::str::from_utf8(r.bytes("metric name")?)
                .map_err(|e| format!("metric name is not UTF-8: {e}"))?
                .to_owned();
            metrics.push((name, r.f64("metric value")?));
        }
        results.push(JournaledResult {
            arm: arm as usize,
            value,
            metrics,
        });
    }
    let fp_count = r.len("fingerprint count", 16)?;
    let fingerprints = (0..fp_count)
        .map(|_| {
            r.take(16, "fingerprint")
                .map(|b| u128::from_be_bytes(b.try_into().expect("16 bytes")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = ClientCounts::default();
    if version >= 2 {
        let arms = r.len("client count", 9)?;
        if arms > MAX_ARMS {
            return Err(format!(
                "client counts for {arms} arms; the limit is {MAX_ARMS}"
            ));
        }
        client.counts = (0..arms)
            .map(|_| r.varint("client count"))
            .collect::<Result<_, _>>()?;
        client.expected = (0..arms)
            .map(|_| r.f64("client expected count"))
            .collect::<Result<_, _>>()?;
    }
    r.finish()?;
    Ok(ResultEntry {
        test_id,
        results,
        fingerprints,
        client,
    })
}

/// A change a batch of results caused that the audit log records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Change {
    /// An arm was suspended (held at the floor) or reinstated.
    Suspension {
        /// The arm.
        arm: usize,
        /// Whether it is now suspended.
        suspended: bool,
    },
    /// Drift was found in an arm's returns.
    Drift {
        /// The arm.
        arm: usize,
        /// The arm's result count at the alarm.
        at: u64,
        /// What the detector saw.
        alarm: DriftAlarm,
    },
}

/// A drift alarm raised by one result of a batch: the arm, its result count, the alarm.
pub(super) type Alarm = (usize, u64, DriftAlarm);

/// What a batch of results does after they are added: its drift alarms (a fall of the mean holds
/// the arm at the floor in a test that suspends on drift), stop-loss suspensions, and one look of
/// the sequential tests. Ingestion and replay both run it, so a replayed batch ends in the same
/// state; the changes it returns are what the audit log must record. An `ended` test's results
/// (late fills while it settles) still move its figures and report drift, but suspensions stay
/// as they were at the stop and the sequential tests no longer look.
pub(super) fn settle(
    config: &TestConfig,
    stats: &mut StatsRecord,
    alarms: Vec<Alarm>,
    ended: bool,
) -> Vec<Change> {
    let mut changes: Vec<Change> = alarms
        .into_iter()
        .map(|(arm, at, alarm)| {
            if !ended && config.on_drift == DriftAction::Suspend && alarm.direction < 0 {
                stats.tracks[arm].hold_for_drift();
            }
            Change::Drift { arm, at, alarm }
        })
        .collect();
    if ended {
        return changes;
    }
    changes.extend(
        risk::update_suspensions(config, stats)
            .into_iter()
            .map(|(arm, suspended)| Change::Suspension { arm, suspended }),
    );
    if stopping::monitoring(config, &stats.arms) {
        stopping::look(config, &stats.arms, &mut stats.sequential);
    }
    changes
}

/// Folds one accepted result into `stats` and notes the drift alarm it raised, if any.
pub(super) fn add(
    stats: &mut StatsRecord,
    alarms: &mut Vec<Alarm>,
    arm: usize,
    value: f64,
    metrics: &[(String, f64)],
) {
    if let Some(alarm) = stats.add_result(arm, value, metrics) {
        alarms.push((arm, stats.tracks[arm].results, alarm));
    }
}

/// Adds counts already weighed (`expected` computed) to `total`.
pub(super) fn add_client(total: &mut ClientCounts, added: &ClientCounts) {
    if added.is_empty() {
        return;
    }
    if total.counts.len() < added.counts.len() {
        total.counts.resize(added.counts.len(), 0);
        total.expected.resize(added.counts.len(), 0.0);
    }
    for (t, a) in total.counts.iter_mut().zip(&added.counts) {
        *t = t.saturating_add(*a);
    }
    for (t, a) in total.expected.iter_mut().zip(&added.expected) {
        *t += a;
    }
}

/// Applies a journaled batch to `stats` as ingestion did, and returns the changes it made that
/// the audit log records. Ingestion journals only batches that made none, so with the state
/// ingestion saw this is empty; it is not when a crash lost an unacknowledged batch that went to
/// the store between this entry's snapshot and this entry (the caller then stores the new state
/// with its audit events). `ended`: the test had ended when the entry was written (a stop stores
/// the statistics first, so every entry replayed onto an ended test's snapshot came after it).
pub(super) fn replay(
    config: &TestConfig,
    stats: &mut StatsRecord,
    entry: &ResultEntry,
    position: u64,
    ended: bool,
) -> Result<Vec<Change>, String> {
    let mut next = stats.clone();
    let mut alarms = Vec::new();
    if entry.client.counts.len() > next.arms.len() {
        return Err(format!(
            "client counts for {} arms of a test with {} arms",
            entry.client.counts.len(),
            config.arms.len()
        ));
    }
    add_client(&mut next.client, &entry.client);
    for r in &entry.results {
        if r.arm >= next.arms.len() {
            return Err(format!(
                "arm {} of a test with {} arms",
                r.arm,
                config.arms.len()
            ));
        }
        add(&mut next, &mut alarms, r.arm, r.value, &r.metrics);
    }
    // A batch of decision counts alone changes no statistic the stopping rules look at.
    let changes = if entry.results.is_empty() {
        Vec::new()
    } else {
        settle(config, &mut next, alarms, ended)
    };
    next.journal_position = position;
    *stats = next;
    Ok(changes)
}

/// Folds `entry`, stored at `position`, into `book` as start-up replays it ([`replay`]; the
/// test counts as ended if its record says so). `None`: its statistics include it already.
pub(super) fn fold_into(
    config: &TestConfig,
    book: &mut Book,
    entry: &ResultEntry,
    position: u64,
) -> Result<Option<Vec<Change>>, String> {
    if position <= book.stats.journal_position {
        return Ok(None);
    }
    let ended = book.record.status.is_ended();
    replay(config, &mut book.stats, entry, position, ended).map(Some)
}

/// The error for a journal entry at `position` that does not decode or replay.
pub(super) fn corrupt(position: u64, why: String) -> super::ExperimentError {
    crate::storage::StorageError::Corrupt {
        key: format!("journal entry {position}"),
        why,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_every_truncation() {
        let metrics = vec![
            ("slippage_bps".to_string(), 1.5),
            ("fill".to_string(), -0.0),
        ];
        let results = [(0usize, 0.012, &[][..]), (3, -5e-324, &metrics[..])];
        let fps = [1u128, u128::MAX];
        let mut bytes = Vec::new();
        let mut client = ClientCounts::default();
        client.add(&[3, 0, 1, 6], &[2.5, 2.5, 2.5, 2.5]);
        encode("t-1", results.iter().copied(), &fps, &client, &mut bytes);
        let entry = decode(&bytes).expect("decodes");
        assert_eq!(entry.client, client);
        assert_eq!(entry.test_id, "t-1");
        assert_eq!(entry.results.len(), 2);
        assert_eq!(entry.results[1].arm, 3);
        assert_eq!(entry.results[1].value.to_bits(), (-5e-324f64).to_bits());
        assert_eq!(entry.results[1].metrics, metrics);
        assert_eq!(entry.fingerprints, fps);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).unwrap_err().contains("left over"));
        // Without client counts the entry is written, and read, in format 1.
        let mut old = Vec::new();
        encode(
            "t-1",
            results.iter().copied(),
            &fps,
            &ClientCounts::default(),
            &mut old,
        );
        assert_eq!(old[0], 1);
        let entry = decode(&old).expect("format 1 decodes");
        assert!(entry.client.is_empty());
        assert_eq!(entry.fingerprints, fps);
        let mut future = bytes;
        future[0] = 3;
        assert!(decode(&future).unwrap_err().contains("format 3"));
    }
}
