//! Stored record formats must keep decoding: these files were written in format version 1 and
//! are never regenerated. A change that breaks them needs a new format version and a migration.

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
