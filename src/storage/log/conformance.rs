//! The conformance suite every [`Log`] implementation runs (in the manner of Quickwit's
//! `metastore_test_suite!`): what the domain relies on, including the crash cases a restart
//! must handle — a torn tail, entries that were never synced, a snapshot ahead of the log, a log
//! without its snapshot.
//!
//! An implementation provides a [`LogHarness`] and invokes [`log_conformance_suite!`] with it.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Log, LogEntry};

/// What the suite needs of an implementation.
pub(crate) trait LogHarness: Sized {
    /// The implementation under test.
    type Log: Log + 'static;

    /// A fresh, empty place for a log; `None` skips the test (a service it needs is not
    /// installed here, and the harness has said so).
    fn new() -> Option<Self>;

    /// Opens the log at this place: what a (re)started process sees. Dropping the returned log
    /// without a sync is a crash.
    fn open(&self) -> Arc<Self::Log>;

    /// Damages the newest entry on the medium as a write that a crash cut short would. Called
    /// with no log open.
    fn tear_newest_entry(&self);
}

/// Generates the suite's tests for a [`LogHarness`].
macro_rules! log_conformance_suite {
    ($harness:ty) => {
        mod log_conformance {
            use super::*;
            use $crate::storage::log::conformance as suite;

            #[tokio::test]
            async fn positions_increase_and_entries_read_back_in_order() {
                suite::positions_increase_and_entries_read_back_in_order::<$harness>().await;
            }

            #[tokio::test]
            async fn durable_entries_survive_reopening_and_positions_go_on() {
                suite::durable_entries_survive_reopening_and_positions_go_on::<$harness>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_appenders_get_distinct_positions_and_all_become_durable() {
                suite::concurrent_appenders_get_distinct_positions_and_all_become_durable::<
                                                                                    $harness,
                                                                                >()
                                                                                .await;
            }

            #[tokio::test]
            async fn a_crash_keeps_every_synced_entry_and_no_partial_one() {
                suite::a_crash_keeps_every_synced_entry_and_no_partial_one::<$harness>().await;
            }

            #[tokio::test]
            async fn a_torn_tail_is_dropped_whole_and_appends_continue_after_it() {
                suite::a_torn_tail_is_dropped_whole_and_appends_continue_after_it::<$harness>()
                    .await;
            }

            #[tokio::test]
            async fn trimming_keeps_every_entry_at_or_after_the_cut() {
                suite::trimming_keeps_every_entry_at_or_after_the_cut::<$harness>().await;
            }

            #[tokio::test]
            async fn a_snapshot_ahead_of_the_log_keeps_new_positions_above_its_stamp() {
                suite::a_snapshot_ahead_of_the_log_keeps_new_positions_above_its_stamp::<$harness>(
                )
                .await;
            }

            #[tokio::test]
            async fn snapshot_plus_replay_folds_to_the_same_state_as_the_whole_log() {
                suite::snapshot_plus_replay_folds_to_the_same_state_as_the_whole_log::<$harness>()
                    .await;
            }
        }
    };
}
pub(crate) use log_conformance_suite;

fn payloads(entries: &[LogEntry]) -> Vec<&[u8]> {
    entries.iter().map(|e| e.payload.as_slice()).collect()
}

async fn append_synced(log: &dyn Log, payload: &[u8]) -> u64 {
    let position = log.append(payload).expect("append");
    log.sync_through(position).await.expect("sync");
    position
}

pub(crate) async fn positions_increase_and_entries_read_back_in_order<H: LogHarness>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    assert!(log.read_from(0).expect("read").is_empty());
    assert!(log.first_position() <= log.next_position());
    let a = log.append(b"first").expect("append");
    assert!(log.first_position() <= a);
    let b = log.append(b"").expect("append");
    let c = log.append(&[0xff; 1000]).expect("append");
    assert!(a < b && b < c, "positions {a}, {b}, {c}");
    assert!(log.next_position() > c);
    log.sync_through(c).await.expect("sync");
    let read = log.read_from(0).expect("read");
    assert_eq!(payloads(&read), [&b"first"[..], b"", &[0xff; 1000]]);
    assert_eq!(
        read.iter().map(|e| e.position).collect::<Vec<_>>(),
        [a, b, c]
    );
    let from_b = log.read_from(b).expect("read");
    assert_eq!(
        from_b.iter().map(|e| e.position).collect::<Vec<_>>(),
        [b, c]
    );
    assert!(log.read_from(c + 1).expect("read").is_empty());
    assert!(log.failure().is_none());
}

pub(crate) async fn durable_entries_survive_reopening_and_positions_go_on<H: LogHarness>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    let a = log.append(b"a").expect("append");
    let b = append_synced(&*log, b"b").await;
    drop(log);
    let log = harness.open();
    let read = log.read_from(0).expect("read");
    assert_eq!(payloads(&read), [&b"a"[..], b"b"]);
    assert_eq!(read[0].position, a);
    assert_eq!(read[1].position, b);
    let c = log.append(b"c").expect("append");
    assert!(c > b, "position {c} reused after {b}");
    log.sync_blocking().expect("sync");
    drop(log);
    let read = harness.open().read_from(0).expect("read");
    assert_eq!(payloads(&read), [&b"a"[..], b"b", b"c"]);
}

pub(crate) async fn concurrent_appenders_get_distinct_positions_and_all_become_durable<
    H: LogHarness,
>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    let writers: Vec<_> = (0..64u32)
        .map(|n| {
            let log = log.clone();
            tokio::spawn(async move { (append_synced(&*log, &n.to_le_bytes()).await, n) })
        })
        .collect();
    let mut acked = Vec::new();
    for writer in writers {
        acked.push(writer.await.expect("writer"));
    }
    drop(log);
    let read = harness.open().read_from(0).expect("read");
    assert_eq!(read.len(), 64);
    let positions: BTreeSet<u64> = read.iter().map(|e| e.position).collect();
    assert_eq!(positions.len(), 64, "positions repeat");
    for (position, n) in acked {
        let entry = read
            .iter()
            .find(|e| e.position == position)
            .expect("acked entry");
        assert_eq!(entry.payload, n.to_le_bytes(), "entry {position}");
    }
}

pub(crate) async fn a_crash_keeps_every_synced_entry_and_no_partial_one<H: LogHarness>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    let a = append_synced(&*log, b"synced").await;
    let b = log.append(b"never synced").expect("append");
    drop(log);
    let log = harness.open();
    let read = log.read_from(0).expect("read");
    assert_eq!(
        read[0],
        LogEntry {
            position: a,
            payload: b"synced".to_vec()
        }
    );
    // The unsynced entry may have reached the medium, but only whole.
    match read.get(1) {
        None => {}
        Some(e) => assert_eq!(
            (e.position, e.payload.as_slice()),
            (b, &b"never synced"[..])
        ),
    }
    assert!(read.len() <= 2);
    let c = log.append(b"after").expect("append");
    assert!(read.iter().all(|e| e.position < c), "position {c} reused");
}

pub(crate) async fn a_torn_tail_is_dropped_whole_and_appends_continue_after_it<H: LogHarness>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    let a = append_synced(&*log, b"kept").await;
    append_synced(&*log, b"cut short by a crash").await;
    drop(log);
    harness.tear_newest_entry();
    let log = harness.open();
    let read = log.read_from(0).expect("read");
    assert_eq!(payloads(&read), [&b"kept"[..]]);
    let c = append_synced(&*log, b"after").await;
    assert!(c > a);
    drop(log);
    let read = harness.open().read_from(0).expect("read");
    assert_eq!(payloads(&read), [&b"kept"[..], b"after"]);
}

pub(crate) async fn trimming_keeps_every_entry_at_or_after_the_cut<H: LogHarness>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    let a = log.append(b"a").expect("append");
    log.append(b"b").expect("append");
    let cut = log.seal().expect("seal");
    assert!(
        cut > a + 1,
        "cut {cut} does not cover what was appended before it"
    );
    // Sealing made what came before it durable.
    let c = log.append(b"c").expect("append");
    assert!(c >= cut);
    log.sync_through(c).await.expect("sync");
    log.trim_before(cut).expect("trim");
    let check = |read: Vec<LogEntry>| {
        let kept: Vec<&[u8]> = read
            .iter()
            .filter(|e| e.position >= cut)
            .map(|e| e.payload.as_slice())
            .collect();
        assert_eq!(kept, [&b"c"[..]]);
        assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    };
    check(log.read_from(0).expect("read"));
    let first = log.first_position();
    assert!(
        first <= cut,
        "the log starts at {first}, after the cut {cut}"
    );
    assert!(log
        .read_from(0)
        .expect("read")
        .iter()
        .all(|e| e.position >= first));
    // Everything trimmed: positions still go on after a reopen.
    let cut = log.seal().expect("seal");
    log.trim_before(cut).expect("trim");
    drop(log);
    let log = harness.open();
    assert!(log.read_from(cut).expect("read").is_empty());
    assert!(log.first_position() <= log.next_position());
    let d = append_synced(&*log, b"d").await;
    assert!(d >= cut && d > c);
}

pub(crate) async fn a_snapshot_ahead_of_the_log_keeps_new_positions_above_its_stamp<
    H: LogHarness,
>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    append_synced(&*log, b"a").await;
    // A snapshot stamped 1000 reached its store; the log entries it includes did not survive.
    let stamp = 1000;
    log.reserve_through(stamp);
    assert!(log.next_position() > stamp);
    let b = append_synced(&*log, b"b").await;
    assert!(b > stamp);
    drop(log);
    let log = harness.open();
    log.reserve_through(stamp);
    let read = log.read_from(stamp + 1).expect("read");
    assert_eq!(
        read,
        [LogEntry {
            position: b,
            payload: b"b".to_vec()
        }]
    );
    assert!(append_synced(&*log, b"c").await > b);
}

/// The state the suite folds entries into: order-sensitive, so a reordered, repeated or missing
/// entry changes it.
fn fold(state: u64, entry: &LogEntry) -> u64 {
    entry.payload.iter().fold(
        state.wrapping_mul(31).wrapping_add(entry.position),
        |h, &b| h.wrapping_mul(257).wrapping_add(u64::from(b)),
    )
}

pub(crate) async fn snapshot_plus_replay_folds_to_the_same_state_as_the_whole_log<H: LogHarness>() {
    let Some(harness) = H::new() else { return };
    let log = harness.open();
    let mut whole = 0u64;
    let mut appended = Vec::new();
    for n in 0..40u32 {
        let position = log.append(&n.to_be_bytes()).expect("append");
        appended.push(LogEntry {
            position,
            payload: n.to_be_bytes().to_vec(),
        });
    }
    log.sync_blocking().expect("sync");
    for entry in &appended {
        whole = fold(whole, entry);
    }
    // A log without its snapshot: folding everything from the start.
    let from_start = log.read_from(0).expect("read").iter().fold(0, fold);
    assert_eq!(from_start, whole);
    // A snapshot of the fold through the 25th entry, then a seal and trim as its owner would.
    let stamp = appended[24].position;
    let snapshot = appended[..25].iter().fold(0, fold);
    let cut = log.seal().expect("seal");
    log.trim_before(stamp + 1).expect("trim");
    assert!(cut > stamp);
    drop(log);
    // A restart replays what the snapshot does not include.
    let log = harness.open();
    log.reserve_through(stamp);
    let replayed = log
        .read_from(stamp + 1)
        .expect("read")
        .iter()
        .fold(snapshot, fold);
    assert_eq!(replayed, whole);
}
