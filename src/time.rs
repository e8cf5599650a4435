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
