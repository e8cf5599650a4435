//! The binary body (format version 2) of a test's statistics record, rewritten on every result
//! batch that touches the test. Version 1 was JSON: 1445 bytes for eight arms with a few results,
//! against 531 here, and the store rewrites a value's page on every change.
//!
//! Layout, in order ([`crate::storage::ByteWriter`]: varints, little-endian f64 bits, byte strings):
//! - arm count; per arm: `n`, `mean`, `m2`, `sum`, `sum_compensation`, `wins`, `min`, `max`, metric
//!   count, and per metric (ascending names): name, `count`, `mean`;
//! - suspended flags: count, one byte each (0 or 1);
//! - sequential tests: count; per test: `tau2`, `p`.
//!
//! Version 3 ([`encode_positioned`]) puts the journal position (a varint) before that body.
//! Version 4 ([`encode_tracked`]) appends the arms' tracks to version 3: count; per arm:
//! `results`, `cumulative`, `peak`, `max_drawdown`; the drift detector (`n`, `mean`, `sum_abs`,
//! `up`, `down`, `frozen` as one byte); `drift_alarms`, `first_drift_at`; the last alarm (one
//! byte: 0 none, 1 rise, 2 fall; then `at` and `statistic` when present); `drift_hold` (one byte).
//! Version 5 ([`encode_counted`]) appends the client counts to version 4: count (0 or the arm
//! count); per arm the decisions (varint), then per arm the expected decisions (f64).

use std::collections::BTreeMap;

use super::StatsRecord;
use crate::experiment::engine::posterior::{ArmStats, MetricStats, MAX_METRICS_PER_ARM};
use crate::experiment::engine::stopping::SequentialState;
use crate::experiment::engine::track::{ArmTrack, DriftHistory, DriftRecord};
use crate::stats::drift::DriftDetector;
use crate::storage::{ByteReader, ByteWriter};

/// Smallest encoded arm: varints of one byte and six floats.
const MIN_ARM_BYTES: usize = 3 + 6 * 8;

/// Appends the version 2 body of `record` to `out`.
pub fn encode(record: &StatsRecord, out: &mut Vec<u8>) {
    let mut w = ByteWriter(out);
    w.len(record.arms.len());
    for arm in &record.arms {
        w.varint(arm.n);
        [arm.mean, arm.m2, arm.sum, arm.sum_compensation]
            .into_iter()
            .for_each(|x| w.f64(x));
        w.varint(arm.wins);
        w.f64(arm.min);
        w.f64(arm.max);
        w.len(arm.metrics.len());
        for (name, metric) in &arm.metrics {
            w.bytes(name.as_bytes());
            w.varint(metric.count);
            w.f64(metric.mean);
        }
    }
    w.len(record.suspended.len());
    record.suspended.iter().for_each(|&s| w.0.push(u8::from(s)));
    w.len(record.sequential.len());
    for s in &record.sequential {
        w.f64(s.tau2);
        w.f64(s.p);
    }
}

/// Appends the version 3 body: the journal position, then the version 2 body.
pub fn encode_positioned(record: &StatsRecord, out: &mut Vec<u8>) {
    ByteWriter(out).varint(record.journal_position);
    encode(record, out);
}

/// Reads a version 3 body.
pub fn decode_positioned(body: &[u8]) -> Result<StatsRecord, String> {
    let mut r = ByteReader::new(body);
    let position = r.varint("journal position")?;
    let mut record = read(&mut r)?;
    r.finish()?;
    record.journal_position = position;
    Ok(record)
}

/// Appends the version 4 body: version 3, then the tracks.
pub fn encode_tracked(record: &StatsRecord, out: &mut Vec<u8>) {
    encode_positioned(record, out);
    let mut w = ByteWriter(out);
    w.len(record.tracks.len());
    for t in &record.tracks {
        w.varint(t.results);
        [t.cumulative, t.peak, t.max_drawdown]
            .into_iter()
            .for_each(|x| w.f64(x));
        let d = &t.detector;
        w.varint(d.n);
        [d.mean, d.sum_abs, d.up, d.down]
            .into_iter()
            .for_each(|x| w.f64(x));
        w.0.push(u8::from(d.frozen));
        let drift = t.drift();
        w.varint(drift.alarms);
        w.varint(drift.first_at);
        match drift.last {
            None => w.0.push(0),
            Some(last) => {
                w.0.push(if last.direction > 0 { 1 } else { 2 });
                w.varint(last.at);
                w.f64(last.statistic);
            }
        }
        w.0.push(u8::from(drift.hold));
    }
}

/// Appends the version 5 body: version 4, then the client counts.
pub fn encode_counted(record: &StatsRecord, out: &mut Vec<u8>) {
    encode_tracked(record, out);
    let mut w = ByteWriter(out);
    w.len(record.client.counts.len());
    record.client.counts.iter().for_each(|&c| w.varint(c));
    record.client.expected.iter().for_each(|&e| w.f64(e));
}

/// Reads a version 5 body.
pub fn decode_counted(body: &[u8]) -> Result<StatsRecord, String> {
    let mut r = ByteReader::new(body);
    let mut record = read_tracked(&mut r)?;
    let count = r.len("client count", 9)?;
    if count != 0 && count != record.arms.len() {
        return Err(format!(
            "client counts for {count} arms in a test of {}",
            record.arms.len()
        ));
    }
    record.client.counts = (0..count)
        .map(|_| r.varint("client count"))
        .collect::<Result<_, _>>()?;
    record.client.expected = (0..count)
        .map(|_| r.f64("client expected count"))
        .collect::<Result<_, _>>()?;
    r.finish()?;
    Ok(record)
}

/// Reads a version 4 body.
pub fn decode_tracked(body: &[u8]) -> Result<StatsRecord, String> {
    let mut r = ByteReader::new(body);
    let record = read_tracked(&mut r)?;
    r.finish()?;
    Ok(record)
}

fn read_tracked(r: &mut ByteReader<'_>) -> Result<StatsRecord, String> {
    let r = &mut *r;
    let position = r.varint("journal position")?;
    let mut record = read(r)?;
    record.journal_position = position;
    let count = r.len("track count", 1 + 3 * 8 + 1 + 4 * 8 + 5)?;
    if count != record.arms.len() {
        return Err(format!("{count} tracks for {} arms", record.arms.len()));
    }
    record.tracks = (0..count)
        .map(|_| read_track(r))
        .collect::<Result<_, _>>()?;
    Ok(record)
}

fn flag(r: &mut ByteReader<'_>, what: &str) -> Result<bool, String> {
    match r.take(1, what)?[0] {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(format!("{what} {b} is neither 0 nor 1")),
    }
}

fn read_track(r: &mut ByteReader<'_>) -> Result<ArmTrack, String> {
    let results = r.varint("track results")?;
    let cumulative = r.f64("cumulative return")?;
    let peak = r.f64("peak")?;
    let max_drawdown = r.f64("max drawdown")?;
    let detector = DriftDetector {
        n: r.varint("detector n")?,
        mean: r.f64("detector mean")?,
        sum_abs: r.f64("detector sum_abs")?,
        up: r.f64("detector up")?,
        down: r.f64("detector down")?,
        frozen: flag(r, "detector frozen")?,
    };
    let drift_alarms = r.varint("drift alarms")?;
    let first_drift_at = r.varint("first drift")?;
    let last_drift = match r.take(1, "last drift")?[0] {
        0 => None,
        b @ (1 | 2) => Some(DriftRecord {
            direction: if b == 1 { 1 } else { -1 },
            at: r.varint("last drift at")?,
            statistic: r.f64("last drift statistic")?,
        }),
        b => return Err(format!("last drift tag {b} is not 0, 1 or 2")),
    };
    let drift = DriftHistory {
        alarms: drift_alarms,
        first_at: first_drift_at,
        last: last_drift,
        hold: flag(r, "drift hold")?,
    };
    Ok(ArmTrack::new(
        results,
        cumulative,
        peak,
        max_drawdown,
        detector,
        drift,
    ))
}

/// Reads a version 2 body; the error says which field is malformed.
pub fn decode(body: &[u8]) -> Result<StatsRecord, String> {
    let mut r = ByteReader::new(body);
    let record = read(&mut r)?;
    r.finish()?;
    Ok(record)
}

fn read(r: &mut ByteReader<'_>) -> Result<StatsRecord, String> {
    let arm_count = r.len("arm count", MIN_ARM_BYTES)?;
    let mut arms = Vec::with_capacity(arm_count);
    for _ in 0..arm_count {
        arms.push(read_arm(r)?);
    }
    let suspended_count = r.len("suspended count", 1)?;
    let suspended = r
        .take(suspended_count, "suspended flags")?
        .iter()
        .map(|&b| match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("suspended flag {b} is neither 0 nor 1")),
        })
        .collect::<Result<Vec<bool>, String>>()?;
    let sequential_count = r.len("sequential test count", 16)?;
    let mut sequential = Vec::with_capacity(sequential_count);
    for _ in 0..sequential_count {
        sequential.push(SequentialState {
            tau2: r.f64("tau2")?,
            p: r.f64("p")?,
        });
    }
    let tracks = vec![ArmTrack::default(); arms.len()];
    Ok(StatsRecord {
        arms,
        suspended,
        sequential,
        journal_position: 0,
        tracks,
        client: Default::default(),
    })
}

fn read_arm(r: &mut ByteReader<'_>) -> Result<ArmStats, String> {
    let n = r.varint("n")?;
    let mean = r.f64("mean")?;
    let m2 = r.f64("m2")?;
    let sum = r.f64("sum")?;
    let sum_compensation = r.f64("sum_compensation")?;
    let wins = r.varint("wins")?;
    if wins > n {
        return Err(format!("{wins} wins of {n} results"));
    }
    let min = r.f64("min")?;
    let max = r.f64("max")?;
    let metric_count = r.len("metric count", 10)?;
    if metric_count > MAX_METRICS_PER_ARM {
        return Err(format!(
            "{metric_count} metrics exceed the limit of {MAX_METRICS_PER_ARM}"
        ));
    }
    let mut metrics = BTreeMap::new();
    for _ in 0..metric_count {
        let name = std::str::from_utf8(r.bytes("metric name")?)
            .map_err(|e| format!("metric name is not UTF-8: {e}"))?
            .to_owned();
        // The encoder writes names in ascending order; anything else is corruption.
        if metrics
            .last_key_value()
            .is_some_and(|(last, _): (&String, _)| *last >= name)
        {
            return Err(format!("metric name {name:?} is out of order or repeated"));
        }
        let metric = MetricStats {
            count: r.varint("metric count")?,
            mean: r.f64("metric mean")?,
        };
        metrics.insert(name, metric);
    }
    Ok(ArmStats {
        n,
        mean,
        m2,
        sum,
        sum_compensation,
        wins,
        min,
        max,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatsRecord {
        let mut record = StatsRecord::new(3);
        for (i, x) in [0.012, -0.004, 0.1 + 0.2, -0.0, 5e-324].iter().enumerate() {
            record.arms[i % 3].add(*x);
        }
        record.arms[1].add_metric("slippage_bps", 1.25);
        record.arms[1].add_metric("fill_rate", 0.97);
        record.suspended[2] = true;
        record.sequential[0] = SequentialState { tau2: 0.3, p: 0.04 };
        record
    }

    #[test]
    fn round_trips_bit_for_bit_in_under_two_fifths_of_the_json() {
        let record = sample();
        let mut body = Vec::new();
        encode(&record, &mut body);
        let back = decode(&body).expect("decodes");
        assert_eq!(format!("{back:?}"), format!("{record:?}"));
        for (a, b) in record.arms.iter().zip(&back.arms) {
            assert_eq!(a.mean.to_bits(), b.mean.to_bits());
            assert_eq!(a.min.to_bits(), b.min.to_bits());
        }
        // Eight arms with a few results each: full-precision floats, as in a live test.
        let mut eight = StatsRecord::new(8);
        for (i, arm) in eight.arms.iter_mut().enumerate() {
            [0.0123, -0.0071, 0.0049]
                .iter()
                .for_each(|x| arm.add(x * i as f64));
        }
        let mut binary = Vec::new();
        encode(&eight, &mut binary);
        let json = serde_json::to_vec(&eight).expect("json");
        // 531 bytes against 1445 when written.
        assert!(
            binary.len() * 5 < json.len() * 2,
            "{} vs {}",
            binary.len(),
            json.len()
        );
    }

    #[test]
    fn metrics_must_be_few_ascending_and_unique() {
        let with_metrics = |names: &[String]| {
            let mut record = StatsRecord::new(2);
            // Set directly: `add_metric` itself never exceeds the limit.
            record.arms[0].metrics = names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        MetricStats {
                            count: 1,
                            mean: 1.0,
                        },
                    )
                })
                .collect();
            let mut body = Vec::new();
            encode(&record, &mut body);
            body
        };
        let body = with_metrics(&["a".into(), "c".into()]);
        assert!(decode(&body).is_ok());
        // Names are the only `a`/`c` bytes after their one-byte length prefix (1).
        let second = body
            .windows(2)
            .position(|w| w == [1, b'c'])
            .expect("name c")
            + 1;
        let mut repeated = body.clone();
        repeated[second] = b'a';
        let err = decode(&repeated).unwrap_err();
        assert!(err.contains("out of order or repeated"), "{err}");
        let mut descending = body.clone();
        descending[second] = b'0';
        assert!(decode(&descending).is_err());
        let names: Vec<String> = (0..=MAX_METRICS_PER_ARM)
            .map(|i| format!("m{i:02}"))
            .collect();
        let err = decode(&with_metrics(&names)).unwrap_err();
        assert!(err.contains("exceed the limit"), "{err}");
    }

    #[test]
    fn every_truncation_and_bad_flag_is_an_error() {
        let mut body = Vec::new();
        encode(&sample(), &mut body);
        for len in 0..body.len() {
            assert!(decode(&body[..len]).is_err(), "truncated to {len}");
        }
        let mut extra = body.clone();
        extra.push(0);
        assert!(decode(&extra).unwrap_err().contains("left over"));
        // The flag of the third arm (flags come before the sequential tests' 1 + 2 × 16 bytes).
        let flag = body.len() - 1 - 2 * 16 - 1;
        assert_eq!(body[flag], 1);
        body[flag] = 7;
        assert!(decode(&body).unwrap_err().contains("neither 0 nor 1"));
    }
}
