//! Wall-clock time as nanoseconds since the Unix epoch, the one representation the domain and
//! storage use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (UTC).
pub type UnixNanos = i64;

/// The current time.
pub fn now() -> UnixNanos {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // A clock before 1970 is a misconfigured host; clamp rather than panic.
        Err(_) => 0,
    }
}

/// `t` as RFC 3339 text in UTC (`2026-12-03T15:20:00.5Z`).
pub fn rfc3339(t: UnixNanos) -> String {
    prost_types::Timestamp {
        seconds: t.div_euclid(1_000_000_000),
        nanos: i32::try_from(t.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
    .to_string()
}
