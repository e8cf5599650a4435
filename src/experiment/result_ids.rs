//! The idempotency index of one test: every `result_id` it has applied, kept exactly.
//!
//! Why not one store key per id: a key costs microseconds to insert and look up in a B-tree, which
//! would cap durable ingestion far below the journal's rate. Here a batch of new ids costs one
//! store value.
//!
//! - **Fingerprints.** An id is stored as the first 128 bits of its SHA-256 (FIPS 180-4). Two
//!   distinct ids collide with probability 2⁻¹²⁸; with `n` ids in one test the chance of any
//!   collision is about n²/2¹²⁹ (birthday bound), 1.5·10⁻¹⁵ at 10¹² ids.
//! - **Durable form.** A batch's new fingerprints first go into its journal entry, with the
//!   results they belong to; until a statistics snapshot stores them they are *unsaved* (held in
//!   memory, replayed from the journal after a crash). A snapshot writes them as a *run*, a store
//!   value under `rib/<test_id>/<seq>` ([`keys::result_id_run`]), in the same atomic batch as the
//!   statistics that include them, so a crash keeps both or neither. Runs hold at most [`MAX_RUN`]
//!   ids and are merged size-tiered inside that same batch (a run's tier is ⌊log₈ len⌋): when
//!   [`FANOUT`] runs share a tier they become one run of a higher tier, so a test holds at most 7
//!   runs in each of the 3 tiers below [`FULL_RUN`] ids plus full runs, and each id is rewritten
//!   at most 3 times (never, when 512 or more are stored at once).
//! - **In memory.** The fingerprints ([`seen::SeenIds`]: a sorted vector up to 1024 ids, then a
//!   hash set), read from the runs on the first batch with result_ids after start (so start-up
//!   reads nothing of it and its time does not grow with the results recorded), and dropped again
//!   after [`IDLE_EVICTION`] without such a batch (never while it holds unsaved ids; those are
//!   also kept, 16 bytes each, until the next snapshot). Memory while loaded: 16 bytes per id, plus the
//!   hash table's slack (≤ 40 bytes per id in all) past 1024 ids.
//! - **Older data directories** kept one `rid/<test_id>/<result_id>` key per id; loading folds
//!   them into a run and removes them in one batch.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::storage::{keys, Storage, StorageError, WriteBatch};
use seen::SeenIds;

mod seen;
mod staging;

pub use staging::StagedRun;

/// Runs of one tier merged into one run of the next.
pub const FANOUT: usize = 8;
/// Runs with at least this many ids are never merged again. Kept small on purpose: a batch of
/// 512 or more ids is written once and never rewritten, and a merged run stays under 64 KiB
/// (larger merges cost more in the store's write path than they save in keys; measured in
/// BENCHMARKS.md).
pub const FULL_RUN: usize = 8usize.pow(3);
/// Most ids in one run: 64 KiB. A snapshot stores a busy test's unsaved ids in runs of this size.
pub const MAX_RUN: usize = 4096;
/// A loaded index unused this long is dropped (and read again when needed).
pub const IDLE_EVICTION: Duration = Duration::from_secs(300);
/// Format byte of a run value.
const RUN_FORMAT_VERSION: u8 = 1;

/// The 128-bit fingerprint of a result_id: the first 16 bytes of its SHA-256, big-endian.
pub fn fingerprint(result_id: &str) -> u128 {
    let digest = Sha256::digest(result_id.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// Fingerprints are uniformly distributed already: hashing them again would only cost time.
#[derive(Debug, Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for types other than u128; fold them in without losing any byte.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, fp: u128) {
        self.0 = fp as u64;
    }
}

type FingerprintSet = HashSet<u128, BuildHasherDefault<FingerprintHasher>>;

/// A run's value: the format byte, then the sorted fingerprints, 16 bytes each, big-endian.
pub fn encode_run(fingerprints: &[u128]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + 16 * fingerprints.len());
    value.push(RUN_FORMAT_VERSION);
    for fp in fingerprints {
        value.extend_from_slice(&fp.to_be_bytes());
    }
    value
}

/// Reads a run's value back.
pub fn decode_run(key: &[u8], value: &[u8]) -> Result<Vec<u128>, StorageError> {
    let bad = |why: String| StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why,
    };
    match value.first() {
        Some(&RUN_FORMAT_VERSION) => {}
        Some(&found) => {
            return Err(StorageError::UnknownFormat {
                key: String::from_utf8_lossy(key).into_owned(),
                found,
                known: RUN_FORMAT_VERSION,
            })
        }
        None => return Err(bad("empty result-id run".into())),
    }
    let body = &value[1..];
    if !body.len().is_multiple_of(16) {
        return Err(bad(format!(
            "result-id run of {} bytes is not a whole number of 16-byte fingerprints",
            body.len()
        )));
    }
    Ok(body
        .chunks_exact(16)
        .map(|c| u128::from_be_bytes(c.try_into().expect("chunks of 16")))
        .collect())
}

/// One stored run.
#[derive(Debug, Clone, Copy)]
struct Run {
    seq: u64,
    len: usize,
}

/// The loaded index.
#[derive(Debug)]
struct Loaded {
    seen: SeenIds,
    /// Stored runs in sequence order.
    runs: Vec<Run>,
    next_seq: u64,
    last_used: Instant,
}

/// The idempotency index of one test; lives behind the test's mutex. Boxed: most tests never
/// load it, and each of 10k tests would otherwise carry its 80 bytes inline.
#[derive(Debug, Default)]
pub struct ResultIds {
    loaded: Option<Box<Loaded>>,
    /// Ids that are durable in the journal but not yet in a stored run: part of the index, and
    /// written as a run with the next statistics snapshot ([`ResultIds::stage_unsaved`]).
    unsaved: Vec<u128>,
}

/// The new ids of one batch, checked against the index but not yet part of it.
#[derive(Debug, Default)]
pub struct PendingIds {
    fresh: FingerprintSet,
    order: Vec<u128>,
}

impl PendingIds {
    /// Whether any id was admitted.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The admitted fingerprints, in admission order.
    pub fn fingerprints(&self) -> &[u128] {
        &self.order
    }
}

impl ResultIds {
    /// Makes sure the index is in memory, reading the test's runs (and folding in keys of the
    /// older one-key-per-id layout) if it is not.
    pub fn load(&mut self, storage: &Storage, test_id: &str) -> Result<(), StorageError> {
        if let Some(loaded) = &mut self.loaded {
            loaded.last_used = Instant::now();
            return Ok(());
        }
        let mut seen = SeenIds::default();
        let mut runs = Vec::new();
        for entry in storage.scan_raw(&keys::result_id_runs(test_id)) {
            let (key, value) = entry?;
            let seq = keys::result_id_run_seq(&key).ok_or_else(|| StorageError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                why: "result-id run key without a sequence number".into(),
            })?;
            let fingerprints = decode_run(&key, &value)?;
            runs.push(Run {
                seq,
                len: fingerprints.len(),
            });
            seen.extend(fingerprints);
        }
        seen.extend(self.unsaved.iter().copied());
        let mut next_seq = runs.last().map_or(0, |r| r.seq + 1);
        // Older layout: one key per id. Fold into one run, atomically.
        let legacy_prefix = keys::legacy_result_ids(test_id);
        let mut legacy = WriteBatch::new();
        let mut folded = Vec::new();
        for entry in storage.scan_raw(&legacy_prefix) {
            let (key, _) = entry?;
            let fp = fingerprint(&String::from_utf8_lossy(&key[legacy_prefix.len()..]));
            if !seen.contains(&fp) {
                folded.push(fp);
            }
            legacy.remove(&key);
        }
        if !legacy.is_empty() {
            folded.sort_unstable();
            folded.dedup();
            // One merge for all of them (inserting one at a time would copy a sorted set each time).
            seen.extend(folded.iter().copied());
            if !folded.is_empty() {
                legacy.put_raw(keys::result_id_run(test_id, next_seq), encode_run(&folded));
                runs.push(Run {
                    seq: next_seq,
                    len: folded.len(),
                });
                next_seq += 1;
            }
            storage.apply(legacy)?;
        }
        self.loaded = Some(Box::new(Loaded {
            seen,
            runs,
            next_seq,
            last_used: Instant::now(),
        }));
        Ok(())
    }

    /// Admits `result_id` into `pending` unless the test or the batch has seen it; returns whether
    /// it was new. The index must be loaded.
    pub fn admit(&self, pending: &mut PendingIds, result_id: &str) -> bool {
        let fp = fingerprint(result_id);
        let loaded = self.loaded.as_ref().expect("index loaded before admitting");
        if loaded.seen.contains(&fp) || !pending.fresh.insert(fp) {
            return false;
        }
        pending.order.push(fp);
        true
    }

    /// Takes a batch's new ids into the index once their journal entry is written: they count as
    /// seen at once and are stored as a run with the next snapshot. The index must be loaded when
    /// `pending` holds any id.
    pub fn commit_journaled(&mut self, pending: PendingIds) {
        if pending.is_empty() {
            return;
        }
        let loaded = self
            .loaded
            .as_mut()
            .expect("index loaded before committing");
        loaded.seen.extend(pending.order.iter().copied());
        self.unsaved.extend(pending.order);
    }

    /// Adds ids read back from the journal at start-up (the index need not be loaded).
    pub fn add_replayed(&mut self, fingerprints: &[u128]) {
        if let Some(loaded) = &mut self.loaded {
            loaded.seen.extend(fingerprints.iter().copied());
        }
        self.unsaved.extend_from_slice(fingerprints);
    }

    /// Ids durable in the journal only.
    pub fn unsaved_len(&self) -> usize {
        self.unsaved.len()
    }

    /// Drops the in-memory index if it has been idle for `idle` and holds no unsaved id (it is
    /// read again when needed).
    pub fn evict_if_idle(&mut self, idle: Duration) -> bool {
        let evict = self.unsaved.is_empty()
            && self
                .loaded
                .as_ref()
                .is_some_and(|l| l.last_used.elapsed() >= idle);
        if evict {
            self.loaded = None;
        }
        evict
    }

    /// Ids held in memory (0 when not loaded).
    pub fn loaded_len(&self) -> usize {
        self.loaded.as_ref().map_or(0, |l| l.seen.len())
    }

    /// The number of ids in each stored run, in sequence order (empty when not loaded).
    pub fn run_lengths(&self) -> Vec<usize> {
        self.loaded
            .as_ref()
            .map_or_else(Vec::new, |l| l.runs.iter().map(|r| r.len).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::staging::tier;
    use super::*;

    /// Admits `ids` as one batch and commits it; returns which were new.
    fn ingest(index: &mut ResultIds, storage: &Storage, ids: &[String]) -> Vec<bool> {
        index.load(storage, "t").expect("load");
        let mut pending = PendingIds::default();
        let fresh: Vec<bool> = ids.iter().map(|id| index.admit(&mut pending, id)).collect();
        if !pending.is_empty() {
            let mut batch = WriteBatch::new();
            let staged = index
                .stage(storage, "t", pending, &mut batch)
                .expect("stage");
            storage.apply(batch).expect("apply");
            index.commit(staged);
        }
        fresh
    }

    fn stored_ids(storage: &Storage) -> Vec<u128> {
        let mut all = Vec::new();
        for entry in storage.scan_raw(&keys::result_id_runs("t")) {
            let (key, value) = entry.expect("scan");
            all.extend(decode_run(&key, &value).expect("decode"));
        }
        all.sort_unstable();
        all
    }

    #[test]
    fn fingerprint_is_the_first_half_of_sha256() {
        // FIPS 180-4 example: SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223 b003...
        assert_eq!(fingerprint("abc"), 0xba7816bf8f01cfea414140de5dae2223);
    }

    #[tokio::test]
    async fn duplicates_within_and_across_batches_and_after_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut index = ResultIds::default();
        let ids = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ingest(&mut index, &storage, &ids(&["a", "b", "a"])),
            [true, true, false]
        );
        assert_eq!(
            ingest(&mut index, &storage, &ids(&["b", "c"])),
            [false, true]
        );
        // A fresh index (as after a restart) reads the same ids back.
        let mut reloaded = ResultIds::default();
        assert_eq!(
            ingest(&mut reloaded, &storage, &ids(&["c", "a", "d"])),
            [false, false, true]
        );
        assert_eq!(reloaded.loaded_len(), 4);
    }

    #[tokio::test]
    async fn staged_ids_count_only_once_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut index = ResultIds::default();
        index.load(&storage, "t").expect("load");
        let mut pending = PendingIds::default();
        assert!(index.admit(&mut pending, "x"));
        let mut batch = WriteBatch::new();
        // Staged but never applied (as when the write fails): the id is still unseen.
        drop(
            index
                .stage(&storage, "t", pending, &mut batch)
                .expect("stage"),
        );
        assert!(index.admit(&mut PendingIds::default(), "x"));
        assert_eq!(index.loaded_len(), 0);
    }

    #[tokio::test]
    async fn merges_keep_every_id_exactly_once_in_few_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut index = ResultIds::default();
        let mut n = 0u32;
        // Batches of 1 to 40 ids: many tiers and cascading merges.
        for round in 0..400u32 {
            let size = 1 + (round * 7) % 40;
            let batch: Vec<String> = (n..n + size).map(|i| format!("id-{i}")).collect();
            n += size;
            assert!(ingest(&mut index, &storage, &batch).iter().all(|&new| new));
        }
        let stored = stored_ids(&storage);
        assert_eq!(stored.len(), n as usize, "every id stored once");
        let mut expected: Vec<u128> = (0..n).map(|i| fingerprint(&format!("id-{i}"))).collect();
        expected.sort_unstable();
        assert_eq!(stored, expected);
        // Size-tiered: fewer than FANOUT runs in each tier below the full one.
        let lengths = index.run_lengths();
        for t in 0..tier(FULL_RUN) {
            let in_tier = lengths.iter().filter(|&&len| tier(len) == t).count();
            assert!(in_tier < FANOUT, "{in_tier} runs in tier {t}: {lengths:?}");
        }
        assert!(lengths.iter().any(|&len| len >= FULL_RUN), "{lengths:?}");
        assert_eq!(lengths.iter().sum::<usize>(), n as usize);
        assert_eq!(
            storage.scan_raw(&keys::result_id_runs("t")).count(),
            lengths.len()
        );
        // Every id is still a duplicate after a reload.
        let mut reloaded = ResultIds::default();
        let again: Vec<String> = (0..n).step_by(97).map(|i| format!("id-{i}")).collect();
        assert!(ingest(&mut reloaded, &storage, &again)
            .iter()
            .all(|&new| !new));
    }

    #[tokio::test]
    async fn older_one_key_per_id_layout_is_folded_into_a_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut batch = WriteBatch::new();
        for id in ["old-1", "old-2"] {
            batch.put_raw(
                [&keys::legacy_result_ids("t")[..], id.as_bytes()].concat(),
                Vec::new(),
            );
        }
        // Another test's marker is left alone.
        batch.put_raw(
            [&keys::legacy_result_ids("t2")[..], b"old-1"].concat(),
            Vec::new(),
        );
        storage.apply(batch).expect("apply");
        let mut index = ResultIds::default();
        let ids = ["old-2".to_string(), "new".to_string(), "old-1".to_string()];
        assert_eq!(ingest(&mut index, &storage, &ids), [false, true, false]);
        assert_eq!(storage.scan_raw(&keys::legacy_result_ids("t")).count(), 0);
        assert_eq!(storage.scan_raw(&keys::legacy_result_ids("t2")).count(), 1);
        assert_eq!(stored_ids(&storage).len(), 3);
    }

    #[tokio::test]
    async fn idle_index_is_dropped_and_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut index = ResultIds::default();
        ingest(&mut index, &storage, &["a".to_string()]);
        assert!(!index.evict_if_idle(IDLE_EVICTION));
        assert!(index.evict_if_idle(Duration::ZERO));
        assert_eq!(index.loaded_len(), 0);
        assert_eq!(ingest(&mut index, &storage, &["a".to_string()]), [false]);
    }

    #[tokio::test]
    async fn unsaved_ids_are_stored_in_runs_of_at_most_max_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path()).expect("open");
        let mut index = ResultIds::default();
        // As replayed from the journal at start-up: not loaded yet.
        let replayed: Vec<u128> = (0..2 * MAX_RUN as u64 + 100)
            .map(|i| fingerprint(&format!("r{i}")))
            .collect();
        index.add_replayed(&replayed);
        assert_eq!(index.unsaved_len(), replayed.len());
        index.load(&storage, "t").expect("load");
        let mut extra = PendingIds::default();
        assert!(!index.admit(&mut extra, "r7"), "replayed ids count as seen");
        assert!(index.admit(&mut extra, "new"));
        let mut batch = WriteBatch::new();
        let staged = index
            .stage_unsaved(&storage, "t", extra, &mut batch)
            .expect("stage")
            .expect("something to store");
        storage.apply(batch).expect("apply");
        index.commit(staged);
        assert_eq!(index.unsaved_len(), 0);
        assert_eq!(index.run_lengths(), [MAX_RUN, MAX_RUN, 101]);
        assert_eq!(stored_ids(&storage).len(), replayed.len() + 1);
        let mut reloaded = ResultIds::default();
        assert_eq!(
            ingest(
                &mut reloaded,
                &storage,
                &["r0".into(), "new".into(), "r8291".into()]
            ),
            [false, false, false]
        );
        // Nothing unsaved: nothing to stage.
        assert!(index
            .stage_unsaved(&storage, "t", PendingIds::default(), &mut WriteBatch::new())
            .expect("stage")
            .is_none());
    }

    #[test]
    fn malformed_runs_are_reported_not_misread() {
        let key = keys::result_id_run("t", 3);
        assert!(matches!(
            decode_run(&key, &[2, 0]),
            Err(StorageError::UnknownFormat { found: 2, .. })
        ));
        let err = decode_run(&key, &[1, 0, 0, 0]).expect_err("3 stray bytes");
        assert!(err.to_string().contains("not a whole number"), "{err}");
        assert!(decode_run(&key, &[]).is_err());
        assert_eq!(
            decode_run(&key, &[1]).expect("empty run"),
            Vec::<u128>::new()
        );
    }
}
