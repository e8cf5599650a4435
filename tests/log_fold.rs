//! The store is a deterministic fold of the log: random sequences of audited store batches,
//! folded from the whole log onto an empty store, and from a checkpoint taken in the middle plus
//! the replay of the rest, give exactly the store that served them, audit chain included.

use std::path::Path;

use arbiter::audit::{AuditDraft, AuditLog};
use arbiter::storage::{Storage, WriteBatch, STORE_FILE};
use proptest::prelude::*;

/// One change: keys to put (key index, value) and to remove, audited as one event.
#[derive(Debug, Clone)]
struct Change {
    puts: Vec<(u8, Vec<u8>)>,
    removes: Vec<u8>,
}

fn change() -> impl Strategy<Value = Change> {
    (
        prop::collection::vec((0u8..24, prop::collection::vec(any::<u8>(), 0..40)), 0..5),
        prop::collection::vec(0u8..24, 0..3),
    )
        .prop_map(|(puts, removes)| Change { puts, removes })
}

/// Keys and values, in key order.
type Dump = Vec<(Vec<u8>, Vec<u8>)>;

/// Every key and value in the store, in key order, but the store's own checkpoint stamp.
fn dump(storage: &Storage) -> Dump {
    storage
        .scan_raw(b"")
        .map(|e| e.expect("read"))
        .filter(|(key, _)| key.as_slice() != arbiter::storage::keys::LOG_STAMP)
        .collect()
}

fn wait_released(dir: &Path) {
    assert!(arbiter::storage::wait_until_released(
        dir,
        std::time::Duration::from_secs(5)
    ));
}

/// The store opened on `dir` (replaying the log), and the length of its verified audit chain.
fn folded(dir: &Path) -> (Dump, u64) {
    let storage = Storage::open(dir).expect("open");
    let audit = AuditLog::open(&storage).expect("audit");
    let report = audit.verify(&storage).expect("verify");
    assert!(report.first_bad.is_none(), "{report:?}");
    let state = (dump(&storage), report.events_checked);
    drop((audit, storage));
    wait_released(dir);
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn a_store_folded_from_its_log_or_from_a_checkpoint_is_the_store_that_served(
        changes in prop::collection::vec(change(), 1..40),
        split in 0.0f64..1.0,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = tempfile::tempdir().expect("tempdir");
        let mid = ((changes.len() as f64 * split) as usize).min(changes.len());
        let served = runtime.block_on(async {
            let storage = Storage::open(dir.path()).expect("open");
            let audit = AuditLog::open(&storage).expect("audit");
            for (i, change) in changes.iter().enumerate() {
                if i == mid {
                    // A checkpoint in the middle: the store's file now holds the fold so far.
                    storage.checkpoint().expect("checkpoint");
                    std::fs::copy(dir.path().join(STORE_FILE), snapshot.path().join(STORE_FILE))
                        .expect("copy the checkpointed store");
                }
                let mut batch = WriteBatch::new();
                for (key, value) in &change.puts {
                    batch.put_raw(format!("k/{key:02}"), value.clone());
                }
                for key in &change.removes {
                    batch.remove(format!("k/{key:02}"));
                }
                let draft = AuditDraft::test("prop", "test.change", format!("change-{i}"))
                    .detail("puts", change.puts.len());
                audit.commit(&storage, batch, vec![draft]).expect("commit");
                storage.flush().await.expect("flush");
            }
            let served = dump(&storage);
            drop((audit, storage));
            served
        });
        wait_released(dir.path());
        let events = changes.len() as u64;

        // Served again after a clean restart.
        let restarted = folded(dir.path());
        prop_assert_eq!(&restarted.0, &served);
        prop_assert_eq!(restarted.1, events);

        // The whole log folded onto an empty store (the log was never trimmed).
        let saved = dir.path().join("served.redb");
        std::fs::rename(dir.path().join(STORE_FILE), &saved).expect("set the store aside");
        let from_log = folded(dir.path());
        prop_assert_eq!(&from_log.0, &served);
        prop_assert_eq!(from_log.1, events);

        // The checkpoint from the middle plus the replay of the log after its stamp.
        if mid < changes.len() {
            std::fs::copy(snapshot.path().join(STORE_FILE), dir.path().join(STORE_FILE))
                .expect("restore the checkpoint");
            let from_checkpoint = folded(dir.path());
            prop_assert_eq!(&from_checkpoint.0, &served);
            prop_assert_eq!(from_checkpoint.1, events);
        }
    }
}
