//! The conformance suite every [`SnapshotStore`] implementation runs: what a restore relies on,
//! including the crash cases (a write cut short, a snapshot damaged at rest).
//!
//! An implementation provides a [`SnapshotHarness`] and invokes [`snapshot_conformance_suite!`]
//! with it.

use super::{SnapshotMeta, SnapshotStore};
use crate::storage::engine::Entry;

/// What the suite needs of an implementation.
pub(crate) trait SnapshotHarness: Sized {
    /// The implementation under test.
    type Store: SnapshotStore;

    /// A fresh, empty place for snapshots (`None`: the service it needs is not installed, and
    /// the test is skipped).
    fn new() -> Option<Self>;

    /// Opens the snapshots at this place: what a (re)started process sees.
    fn open(&self) -> Self::Store;

    /// Leaves what a crash while putting the snapshot at `position` leaves behind.
    fn interrupt_next_put(&self, position: u64);

    /// Flips a bit in the middle of the newest snapshot at rest.
    fn damage_newest(&self);
}

/// Generates the suite's tests for a [`SnapshotHarness`].
macro_rules! snapshot_conformance_suite {
    ($harness:ty) => {
        mod snapshot_conformance {
            use super::*;
            use $crate::storage::snapshot_store::conformance as suite;

            #[test]
            fn a_snapshot_reads_back_whole_and_the_newest_wins() {
                suite::a_snapshot_reads_back_whole_and_the_newest_wins::<$harness>();
            }

            #[test]
            fn an_empty_store_and_no_snapshot_are_told_apart() {
                suite::an_empty_store_and_no_snapshot_are_told_apart::<$harness>();
            }

            #[test]
            fn a_put_cut_short_leaves_the_previous_snapshot() {
                suite::a_put_cut_short_leaves_the_previous_snapshot::<$harness>();
            }

            #[test]
            fn a_damaged_snapshot_is_skipped_for_the_one_before() {
                suite::a_damaged_snapshot_is_skipped_for_the_one_before::<$harness>();
            }

            #[test]
            fn retention_keeps_the_newest() {
                suite::retention_keeps_the_newest::<$harness>();
            }

            #[test]
            fn a_failing_source_leaves_no_snapshot() {
                suite::a_failing_source_leaves_no_snapshot::<$harness>();
            }
        }
    };
}
pub(crate) use snapshot_conformance_suite;

/// Entries `0..n` of a store whose values carry `tag`, in key order, with empty and long values.
fn entries(n: usize, tag: u8) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let value = match i % 3 {
                0 => Vec::new(),
                1 => vec![tag; 3],
                _ => vec![tag; 5000],
            };
            (format!("key/{i:05}").into_bytes(), value)
        })
        .collect()
}

fn at(position: u64) -> SnapshotMeta {
    SnapshotMeta {
        position,
        seq: position * 2,
        entries: 0,
    }
}

fn put<S: SnapshotStore>(store: &S, position: u64, entries: &[Entry]) -> SnapshotMeta {
    store
        .put(at(position), &mut entries.iter().cloned().map(Ok))
        .expect("put")
}

pub(crate) fn a_snapshot_reads_back_whole_and_the_newest_wins<H: SnapshotHarness>() {
    let Some(harness) = H::new() else {
        return;
    };
    let store = harness.open();
    let old = entries(50, 1);
    let new = entries(70, 2);
    let meta = put(&store, 10, &old);
    assert_eq!(
        meta,
        SnapshotMeta {
            entries: 50,
            ..at(10)
        }
    );
    put(&store, 25, &new);
    drop(store);
    let (meta, read) = harness
        .open()
        .latest()
        .expect("latest")
        .expect("a snapshot");
    assert_eq!(
        meta,
        SnapshotMeta {
            entries: 70,
            ..at(25)
        }
    );
    assert_eq!(read, new);
}

pub(crate) fn an_empty_store_and_no_snapshot_are_told_apart<H: SnapshotHarness>() {
    let Some(harness) = H::new() else {
        return;
    };
    let store = harness.open();
    assert!(store.latest().expect("latest").is_none());
    put(&store, 3, &[]);
    let (meta, read) = store.latest().expect("latest").expect("a snapshot");
    assert_eq!((meta.position, meta.entries), (3, 0));
    assert!(read.is_empty());
}

pub(crate) fn a_put_cut_short_leaves_the_previous_snapshot<H: SnapshotHarness>() {
    let Some(harness) = H::new() else {
        return;
    };
    let store = harness.open();
    let kept = entries(20, 7);
    put(&store, 5, &kept);
    drop(store);
    harness.interrupt_next_put(9);
    let store = harness.open();
    let (meta, read) = store.latest().expect("latest").expect("a snapshot");
    assert_eq!(meta.position, 5);
    assert_eq!(read, kept);
    // And the next put at that position succeeds.
    put(&store, 9, &entries(3, 8));
    assert_eq!(
        store
            .latest()
            .expect("latest")
            .expect("a snapshot")
            .0
            .position,
        9
    );
}

pub(crate) fn a_damaged_snapshot_is_skipped_for_the_one_before<H: SnapshotHarness>() {
    let Some(harness) = H::new() else {
        return;
    };
    let store = harness.open();
    let kept = entries(40, 3);
    put(&store, 100, &kept);
    put(&store, 200, &entries(40, 4));
    drop(store);
    harness.damage_newest();
    let (meta, read) = harness
        .open()
        .latest()
        .expect("latest")
        .expect("a snapshot");
    assert_eq!(meta.position, 100);
    assert_eq!(read, kept);
}

pub(crate) fn retention_keeps_the_newest<H: SnapshotHarness>() {
    let Some(harness) = H::new() else {
        return;
    };
    let store = harness.open();
    for position in [1, 2, 3, 4] {
        put(&store, position, &entries(2, position as u8));
    }
    store.retain_newest(2).expect("retain");
    drop(store);
    harness.damage_newest();
    // Only 3 and 4 were kept: with 4 damaged, 3 is the newest that reads back.
    let store = harness.open();
    let (meta, read) = store.latest().expect("latest").expect("a snapshot");
    assert_eq!(meta.position, 3);
    assert_eq!(read, entries(2, 3));
    store.retain_newest(0).expect("retain none");
    assert!(store.latest().expect("latest").is_none());
}

pub(crate) fn a_failing_source_leaves_no_snapshot<H: SnapshotHarness>() {
    let Some(harness) = H::new() else {
        return;
    };
    let store = harness.open();
    let mut failing = entries(5, 1)
        .into_iter()
        .map(Ok)
        .chain(std::iter::once(Err(crate::storage::StorageError::Closed)));
    assert!(store.put(at(8), &mut failing).is_err());
    drop(store);
    assert!(harness.open().latest().expect("latest").is_none());
}
