//! Typed keys. Every record kind has its own prefix so that prefix scans never mix kinds, and
//! numeric parts are big-endian so that key order is numeric order.
//!
//! Identifiers inside keys are restricted to `[A-Za-z0-9._-]` by the domain, so ':' and '/' are
//! unambiguous separators.

/// Prefix of every model version record.
pub const MODEL_PREFIX: &[u8] = b"model/";
/// Prefix of every stored policy document.
pub const POLICY_PREFIX: &[u8] = b"policy/";
/// Prefix of every audit event.
pub const AUDIT_PREFIX: &[u8] = b"audit/";

/// The secret behind every test's decision-id key (32 bytes, see `experiment::decision_id`).
pub const DECISION_SECRET: &[u8] = b"meta/decision_secret";

/// Prefix of every test record.
pub const TEST_PREFIX: &[u8] = b"test/";

/// The record (configuration and status) of a test.
pub fn test(test_id: &str) -> Vec<u8> {
    [TEST_PREFIX, test_id.as_bytes()].concat()
}

/// Prefix of every test's arm statistics.
pub const STATS_PREFIX: &[u8] = b"stats/";

/// The arm statistics of a test.
pub fn test_stats(test_id: &str) -> Vec<u8> {
    [STATS_PREFIX, test_id.as_bytes()].concat()
}

/// Prefix of every test's allocation counters.
pub const ALLOCATIONS_PREFIX: &[u8] = b"alloc/";

/// The allocation counters of a test.
pub fn test_allocations(test_id: &str) -> Vec<u8> {
    [ALLOCATIONS_PREFIX, test_id.as_bytes()].concat()
}

/// The time series of a test as older versions stored it (one record).
pub fn test_history(test_id: &str) -> Vec<u8> {
    [b"series/", test_id.as_bytes()].concat()
}

/// The prefix of every time-series point of a test.
pub fn test_history_points(test_id: &str) -> Vec<u8> {
    [b"series/", test_id.as_bytes(), b"/"].concat()
}

/// The time-series point of a test taken at `time` (ns since the epoch, non-negative).
pub fn test_history_point(test_id: &str, time: i64) -> Vec<u8> {
    [
        &test_history_points(test_id)[..],
        &(time.max(0) as u64).to_be_bytes()[..],
    ]
    .concat()
}

/// The prefix of every result-id run of a test (see `experiment::result_ids`).
pub fn result_id_runs(test_id: &str) -> Vec<u8> {
    [b"rib/", test_id.as_bytes(), b"/"].concat()
}

/// The result-id run `seq` of a test.
pub fn result_id_run(test_id: &str, seq: u64) -> Vec<u8> {
    [&result_id_runs(test_id)[..], &seq.to_be_bytes()[..]].concat()
}

/// The sequence number of a result-id run key.
pub fn result_id_run_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The prefix of the older layout's markers, one key per applied result id:
/// `rid/<test_id>/<result_id>`. Read only to fold them into a run.
pub fn legacy_result_ids(test_id: &str) -> Vec<u8> {
    [b"rid/", test_id.as_bytes(), b"/"].concat()
}

/// The recorded head (last sequence number and hash) of the audit chain.
pub const AUDIT_HEAD: &[u8] = b"meta/audit_head";

/// The log position of the last store batch the engine holds (u64 LE), written by each
/// checkpoint; opening replays the batches after it.
pub const LOG_STAMP: &[u8] = b"meta/log_stamp";

/// The store sequence number (u64 LE) of the last store entry (batch or command) the engine
/// holds, written with each: opening replays only the entries after it.
pub const STORE_SEQ: &[u8] = b"meta/store_seq";

/// The metadata record of `<model_id>:<version>`.
pub fn model(registry_id: &str) -> Vec<u8> {
    [MODEL_PREFIX, registry_id.as_bytes()].concat()
}

/// The prefix covering every version of `model_id`.
pub fn model_versions(model_id: &str) -> Vec<u8> {
    [MODEL_PREFIX, model_id.as_bytes(), b":"].concat()
}

/// The policy document of `<model_id>:<version>`.
pub fn policy(registry_id: &str) -> Vec<u8> {
    [POLICY_PREFIX, registry_id.as_bytes()].concat()
}

/// Prefix of the index of model versions in use: `model_use/<model_id>:<version>/<test_id>`
/// exists while that test is RUNNING or PAUSED with the version as an arm, so that a
/// registry command finds the tests using a version in the store itself.
pub const MODEL_USE_PREFIX: &[u8] = b"model_use/";

/// Set once the index of model versions in use covers every test (builds before the index
/// wrote none; the first open that finds it missing builds it).
pub const MODEL_USE_INDEXED: &[u8] = b"meta/model_use_indexed";

/// The prefix of the index entries of `<model_id>:<version>`.
pub fn model_uses(registry_id: &str) -> Vec<u8> {
    [MODEL_USE_PREFIX, registry_id.as_bytes(), b"/"].concat()
}

/// The index entry saying that `test_id` uses `<model_id>:<version>`.
pub fn model_use(registry_id: &str, test_id: &str) -> Vec<u8> {
    [&model_uses(registry_id)[..], test_id.as_bytes()].concat()
}

/// The audit event with sequence number `seq`.
pub fn audit(seq: u64) -> Vec<u8> {
    [AUDIT_PREFIX, &seq.to_be_bytes()[..]].concat()
}

/// The sequence number of an audit key, if `key` is one.
pub fn audit_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.strip_prefix(AUDIT_PREFIX)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_keys_sort_numerically_and_round_trip() {
        assert!(audit(255) < audit(256));
        assert!(audit(1) < audit(1 << 40));
        assert_eq!(audit_seq(&audit(77)), Some(77));
        assert_eq!(audit_seq(b"model/x"), None);
    }

    #[test]
    fn result_id_runs_sort_numerically_and_stay_within_their_test() {
        assert!(result_id_run("t", 255) < result_id_run("t", 256));
        assert_eq!(
            result_id_run_seq(&result_id_run("t", 1 << 40)),
            Some(1 << 40)
        );
        assert!(result_id_run("t", 0).starts_with(&result_id_runs("t")));
        assert!(!result_id_run("t.2", 0).starts_with(&result_id_runs("t")));
        assert_eq!(result_id_run_seq(b"short"), None);
    }

    #[test]
    fn model_prefix_does_not_match_longer_ids() {
        let prefix = model_versions("abc");
        assert!(model("abc:1.0.0").starts_with(&prefix));
        assert!(!model("abcd:1.0.0").starts_with(&prefix));
    }
}
