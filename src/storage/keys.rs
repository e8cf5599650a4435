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

/// Prefix of every test record.
pub const TEST_PREFIX: &[u8] = b"test/";

/// The record (configuration and status) of a test.
pub fn test(test_id: &str) -> Vec<u8> {
    [TEST_PREFIX, test_id.as_bytes()].concat()
}

/// The arm statistics of a test.
pub fn test_stats(test_id: &str) -> Vec<u8> {
    [b"stats/", test_id.as_bytes()].concat()
}

/// The allocation counters of a test.
pub fn test_allocations(test_id: &str) -> Vec<u8> {
    [b"alloc/", test_id.as_bytes()].concat()
}

/// The compact time series of a test.
pub fn test_history(test_id: &str) -> Vec<u8> {
    [b"series/", test_id.as_bytes()].concat()
}

/// The marker of a result id already applied to a test.
pub fn result_id(test_id: &str, result_id: &str) -> Vec<u8> {
    [b"rid/", test_id.as_bytes(), b"/", result_id.as_bytes()].concat()
}

/// The recorded head (last sequence number and hash) of the audit chain.
pub const AUDIT_HEAD: &[u8] = b"meta/audit_head";

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
    fn model_prefix_does_not_match_longer_ids() {
        let prefix = model_versions("abc");
        assert!(model("abc:1.0.0").starts_with(&prefix));
        assert!(!model("abcd:1.0.0").starts_with(&prefix));
    }
}
