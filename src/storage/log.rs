//! The ordered log the domain writes its changes to, as a trait: today's single-node
//! implementation is the [`Journal`](super::Journal) (segment files with group commit); a
//! replicated implementation plugs in behind the same calls.
//!
//! What the domain relies on, and what [`conformance`] checks of every implementation:
//!
//! - **Positions**: each appended entry gets a position greater than that of every entry appended
//!   before it, in this process or an earlier one; a durable position is never handed out again.
//! - **Durability**: an entry is durable once [`Log::sync_through`] has returned for its position
//!   (or [`Log::sync_blocking`] after its append); only then may it be acknowledged. Concurrent
//!   waiters share syncs (group commit). A crash keeps every durable entry and may keep entries
//!   that were not yet durable, but never a torn or partial one.
//! - **Reading**: [`Log::read_from`] returns the durable entries from a position on, in position
//!   order, with exactly the bytes appended.
//! - **Trimming**: the owner keeps snapshots of the state the log folds into, stamped with the
//!   position they include; [`Log::seal`] returns a cut below which every entry appended so far
//!   lies, and [`Log::trim_before`] may then drop entries below that cut (it may keep some).
//! - **Snapshots ahead of the log**: a snapshot can reach its store while a crash cuts off the log
//!   entries it includes; [`Log::reserve_through`] keeps new positions above such a stamp.
//! - **Failure**: after a failed write or sync an implementation refuses every further append
//!   and sync ([`Log::failure`] says why) until it is reopened: nothing written after the
//!   failure can be trusted durable.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use super::Result;

#[cfg(test)]
pub(crate) mod conformance;

/// One entry read back from a log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its position.
    pub position: u64,
    /// The bytes that were appended.
    pub payload: Vec<u8>,
}

/// A future returned by [`Log::sync_through`].
pub type SyncFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// An append-only, ordered, group-committed log of opaque entries.
pub trait Log: Send + Sync + Debug {
    /// Buffers `payload` as the next entry and returns its position. Never blocks on I/O; the
    /// entry is durable only once [`Log::sync_through`] has returned for the position.
    fn append(&self, payload: &[u8]) -> Result<u64>;

    /// Returns once every entry up to `position` is durable, sharing the sync with every other
    /// waiter. An error means the log failed: nothing unsynced may be acknowledged.
    fn sync_through(&self, position: u64) -> SyncFuture<'_>;

    /// Makes everything appended so far durable, on the calling thread.
    fn sync_blocking(&self) -> Result<()>;

    /// Every entry up to this position is durable.
    fn durable_through(&self) -> u64;

    /// The position the next append gets at least; every position below it is taken.
    fn next_position(&self) -> u64;

    /// The oldest position the log still holds: every durable entry at or after it is kept
    /// (trimming raises it; at most [`Log::next_position`]).
    fn first_position(&self) -> u64;

    /// Makes sure future positions exceed `position` (a snapshot's stamp, which a crash may have
    /// left ahead of the log).
    fn reserve_through(&self, position: u64);

    /// Every durable entry at or after `from`, in position order. Blocks on I/O.
    fn read_from(&self, from: u64) -> Result<Vec<LogEntry>>;

    /// Makes everything appended so far durable and returns a cut: every entry appended before
    /// the call lies below it. Blocks on I/O.
    fn seal(&self) -> Result<u64>;

    /// Drops entries below `cut`, which the owner's snapshots now hold (a cut [`Log::seal`]
    /// returned, or any position below it); an implementation may keep some of them. Blocks on
    /// I/O.
    fn trim_before(&self, cut: u64) -> Result<()>;

    /// Why the log refuses appends, if it does.
    fn failure(&self) -> Option<String>;

    /// Why appended entries are waiting to become durable without the log having failed (a
    /// replicated log out of reach of its quorum), if they are.
    fn stalled(&self) -> Option<String> {
        None
    }
}
