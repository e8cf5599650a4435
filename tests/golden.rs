//! Stored record formats must keep decoding: these files were written once, by older builds or by
//! the scripts next to them, and are never regenerated. A change that breaks them needs a new
//! format version and a migration.

use arbiter::audit::AuditEvent;
use arbiter::registry::types::{ApprovalStatus, ModelMetadata, ModelStatus, ModelType};
use arbiter::storage::decode;

#[test]
fn model_metadata_v1_decodes() {
    let bytes = std::fs::read("tests/data/model_metadata.v1.bin").expect("golden file");
    let m: ModelMetadata = decode(b"model/signal_lstm:1.10.0-rc.1", &bytes).expect("decodes");
    assert_eq!(m.registry_id.to_string(), "signal_lstm:1.10.0-rc.1");
    assert_eq!(m.registry_id.version.pre.as_str(), "rc.1");
    assert_eq!(
        (m.model_type, m.status),
        (ModelType::Signal, ModelStatus::Production)
    );
    assert_eq!(m.approval_status, ApprovalStatus::Approved);
    assert_eq!(m.approved_at, Some(1_764_205_200_000_000_000));
    assert_eq!(m.figures.backtest_sharpe, Some(1.8));
    assert_eq!(m.figures.backtest_max_dd, None);
    assert_eq!(
        m.model_checksum.to_string(),
        "941304acd14c20080c631d550b8fb8aa5106a544f3fdd4d2350073d63651010f"
    );
    assert_eq!(m.policy_checksum, None);
    assert_eq!(m.artifact_size_bytes, 16);
    assert_eq!(m.feature_spec, Some(serde_json::json!({"window": 20})));
}

#[test]
fn audit_event_v1_decodes() {
    let bytes = std::fs::read("tests/data/audit_event.v1.bin").expect("golden file");
    let key = [&b"audit/"[..], &7u64.to_be_bytes()].concat();
    let e: AuditEvent = decode(&key, &bytes).expect("decodes");
    assert_eq!(
        (e.seq, e.action.as_str(), e.actor.as_str()),
        (7, "model.promote", "lead_quant")
    );
    assert_eq!(e.details["to"], "PRODUCTION");
}

#[test]
fn result_id_run_v1_decodes() {
    use arbiter::experiment::result_ids::{decode_run, encode_run, fingerprint};
    let bytes = std::fs::read("tests/data/result_id_run.v1.bin").expect("golden file");
    let key = [&b"rib/t/"[..], &0u64.to_be_bytes()].concat();
    let run = decode_run(&key, &bytes).expect("decodes");
    // Reference fingerprints printed by tests/data/result_id_run.py (Python's hashlib).
    assert_eq!(
        run,
        vec![
            0x0bafe22156d2698c143b86040446d366,
            0x3d5e3106cd72ba03fededf6dbb9fc336,
            0x56095c330119f86a29c93362dfc3187e,
        ]
    );
    assert_eq!(fingerprint("order-1"), run[0]);
    assert_eq!(fingerprint("fill/2026-11-27T10:00:00Z#42"), run[2]);
    assert_eq!(encode_run(&run), bytes, "the encoder writes the same bytes");
}

#[test]
fn stats_record_v1_json_v2_to_v5_binary_decode_to_the_same_record() {
    use arbiter::experiment::stats_record::codec;
    use arbiter::experiment::StatsRecord;
    use arbiter::storage::Record;
    // All written by tests/data/stats_record.py, independently of the Rust encoder.
    let v1 = std::fs::read("tests/data/stats_record.v1.bin").expect("golden file");
    let v2 = std::fs::read("tests/data/stats_record.v2.bin").expect("golden file");
    let v3 = std::fs::read("tests/data/stats_record.v3.bin").expect("golden file");
    let key = b"stats/t";
    let old: StatsRecord = decode(key, &v1).expect("v1 decodes");
    let new: StatsRecord = decode(key, &v2).expect("v2 decodes");
    assert_eq!(format!("{old:?}"), format!("{new:?}"));
    assert_eq!((old.journal_position, new.journal_position), (0, 0));
    let positioned: StatsRecord = decode(key, &v3).expect("v3 decodes");
    assert_eq!(positioned.journal_position, 300);
    assert_eq!(
        StatsRecord {
            journal_position: 0,
            ..positioned.clone()
        },
        new
    );
    // Version 4 adds the tracks; earlier versions read as tracks that start afresh.
    assert_eq!(positioned.tracks, vec![Default::default(); 2]);
    let v4 = std::fs::read("tests/data/stats_record.v4.bin").expect("golden file");
    let tracked: StatsRecord = decode(key, &v4).expect("v4 decodes");
    assert_eq!(
        StatsRecord {
            tracks: positioned.tracks.clone(),
            ..tracked.clone()
        },
        positioned
    );
    let (t0, t1) = (&tracked.tracks[0], &tracked.tracks[1]);
    assert_eq!(
        (t0.max_drawdown, t0.last_drift(), t0.drift_hold()),
        (0.004, None, false)
    );
    assert_eq!(
        (t1.detector.n, t1.detector.frozen, t1.drift_alarms()),
        (70, true, 1)
    );
    let last = t1.last_drift().expect("an alarm");
    assert_eq!((last.at, last.direction, last.statistic), (2, -1, 24.5));
    assert!(t1.drift_hold());
    // Version 5 adds the decisions clients reported; earlier versions read as none.
    assert!(tracked.client.is_empty());
    let v5 = std::fs::read("tests/data/stats_record.v5.bin").expect("golden file");
    let counted: StatsRecord = decode(key, &v5).expect("v5 decodes");
    assert_eq!(
        (
            counted.client.counts.clone(),
            counted.client.expected.clone()
        ),
        (vec![700, 300], vec![680.5, 319.5])
    );
    assert_eq!(
        StatsRecord {
            client: Default::default(),
            ..counted.clone()
        },
        tracked
    );
    let mut body = vec![StatsRecord::FORMAT_VERSION];
    counted.encode_body(&mut body).expect("encode");
    assert_eq!(body, v5, "the encoder writes the same bytes");
    assert_eq!((new.arms[0].n, new.arms[0].wins), (2, 1));
    assert_eq!(new.arms[0].total(), 0.008);
    assert_eq!(new.arms[1].metrics["slippage_bps"].count, 3);
    assert_eq!(new.suspended, vec![false, true]);
    assert_eq!((new.sequential[0].tau2, new.sequential[0].p), (0.3, 0.04));
    let mut body = vec![2];
    codec::encode(&new, &mut body);
    assert_eq!(body, v2, "the encoder writes the same bytes");

    // Errors name the key and what is wrong.
    let truncated = decode::<StatsRecord>(key, &v2[..v2.len() - 3]).unwrap_err();
    assert!(
        matches!(truncated, arbiter::storage::StorageError::Corrupt { .. }),
        "{truncated:?}"
    );
    assert!(truncated.to_string().contains("stats/t"), "{truncated}");
    let mut future = v2.clone();
    future[0] = 6;
    let unknown = decode::<StatsRecord>(key, &future).unwrap_err().to_string();
    assert!(unknown.contains("format version 6"), "{unknown}");
}
