//! Per-principal rate limits: each principal has a token bucket per kind of call, refilled at
//! the kind's rate (calls per second) and holding at most one second's worth, so a principal
//! may burst up to its rate and then keeps to it. Server-wide rates come from the configuration;
//! a principal of the auth file may override them (`[principal.rate_limits]`). Without
//! authentication all callers share one set of buckets. A rate of 0 means unlimited; the
//! allocation and ingestion hot paths are unlimited unless configured.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use super::CallKind;

/// Calls per second per principal for each kind of call; 0 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Allocate, AllocateStream.
    pub allocate: u32,
    /// RecordResult, IngestResults.
    pub ingest: u32,
    /// Every read.
    pub read: u32,
    /// Registry and test changes.
    pub change: u32,
}

impl RateLimits {
    /// Reads per second per principal unless configured.
    pub const DEFAULT_READ: u32 = 1000;
    /// Changes per second per principal unless configured.
    pub const DEFAULT_CHANGE: u32 = 100;

    /// The rate of `kind`.
    pub fn of(&self, kind: CallKind) -> u32 {
        match kind {
            CallKind::Allocate => self.allocate,
            CallKind::Ingest => self.ingest,
            CallKind::Read => self.read,
            CallKind::Change => self.change,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            allocate: 0,
            ingest: 0,
            read: Self::DEFAULT_READ,
            change: Self::DEFAULT_CHANGE,
        }
    }
}

/// A principal's own rates (`[principal.rate_limits]` in the auth file); unset kinds keep the
/// server's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverrides {
    allocate: Option<u32>,
    ingest: Option<u32>,
    read: Option<u32>,
    change: Option<u32>,
}

impl RateOverrides {
    /// `base` with this principal's overrides applied.
    pub fn apply(&self, base: RateLimits) -> RateLimits {
        RateLimits {
            allocate: self.allocate.unwrap_or(base.allocate),
            ingest: self.ingest.unwrap_or(base.ingest),
            read: self.read.unwrap_or(base.read),
            change: self.change.unwrap_or(base.change),
        }
    }
}

/// A call refused by a rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// The rate that was exceeded, calls per second.
    pub rate: u32,
    /// When the next call of this kind would be allowed.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, rate: u32, now: Instant) -> Result<(), Limited> {
        let capacity = f64::from(rate);
        if self.rate != rate {
            // The rate changed (an auth file reload): keep what was left, within the new size.
            self.rate = rate;
            self.tokens = self.tokens.min(capacity);
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * capacity).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Limited {
                rate,
                retry_after: Duration::from_secs_f64((1.0 - self.tokens) / capacity),
            })
        }
    }
}

/// The buckets of every principal that has called. Principals come from the auth file, so the
/// table is bounded by it (plus one entry for unauthenticated callers).
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, [Option<Bucket>; 4]>>,
}

impl RateLimiter {
    /// Counts one call of `kind` by `principal` at `now` against `rate` (0: unlimited).
    pub fn check(
        &self,
        principal: &str,
        kind: CallKind,
        rate: u32,
        now: Instant,
    ) -> Result<(), Limited> {
        if rate == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock();
        let slots = match buckets.get_mut(principal) {
            Some(slots) => slots,
            None => buckets.entry(principal.to_string()).or_default(),
        };
        let slot = &mut slots[kind as usize];
        let bucket = slot.get_or_insert(Bucket {
            rate,
            tokens: f64::from(rate),
            at: now,
        });
        bucket.take(rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_bursts_to_its_rate_then_keeps_to_it() {
        let limiter = RateLimiter::default();
        let start = Instant::now();
        for _ in 0..10 {
            limiter
                .check("alice", CallKind::Change, 10, start)
                .expect("within the burst");
        }
        let refused = limiter
            .check("alice", CallKind::Change, 10, start)
            .expect_err("burst spent");
        assert_eq!(refused.rate, 10);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        // Other principals and other kinds have buckets of their own.
        limiter
            .check("bob", CallKind::Change, 10, start)
            .expect("bob");
        limiter
            .check("alice", CallKind::Read, 10, start)
            .expect("reads");
        // A tenth of a second refills one call, and only one.
        let later = start + Duration::from_millis(100);
        limiter
            .check("alice", CallKind::Change, 10, later)
            .expect("refilled");
        let again = limiter
            .check("alice", CallKind::Change, 10, later)
            .expect_err("one call refilled");
        assert_eq!(again.retry_after, Duration::from_millis(100));
        // Refills stop at one second's worth.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..10 {
            limiter
                .check("alice", CallKind::Change, 10, much_later)
                .expect("full again");
        }
        assert!(limiter
            .check("alice", CallKind::Change, 10, much_later)
            .is_err());
        // 0 is unlimited.
        for _ in 0..1000 {
            limiter
                .check("alice", CallKind::Allocate, 0, start)
                .expect("unlimited");
        }
    }

    #[test]
    fn a_lower_rate_after_a_reload_takes_effect_at_once() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        limiter.check("a", CallKind::Read, 100, now).expect("first");
        limiter.check("a", CallKind::Read, 2, now).expect("1 of 2");
        limiter.check("a", CallKind::Read, 2, now).expect("2 of 2");
        assert!(limiter.check("a", CallKind::Read, 2, now).is_err());
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let overrides: RateOverrides =
            toml::from_str("read = 5000\nallocate = 20000").expect("toml");
        let limits = overrides.apply(RateLimits::default());
        assert_eq!(
            limits,
            RateLimits {
                allocate: 20000,
                ingest: 0,
                read: 5000,
                change: RateLimits::DEFAULT_CHANGE,
            }
        );
        assert!(toml::from_str::<RateOverrides>("writes = 1").is_err());
    }
}
