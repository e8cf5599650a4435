//! Result batches folded from the log are deterministic: random sequences of batches (regime
//! shifts that raise drift alarms and stop-loss suspensions included), appended to a real
//! journal, folded twice from the start and once from a snapshot in the middle plus the replay of
//! the rest, give the same statistics bit for bit and the same audit chain, hashes included.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::ingest::change_event;
use super::journal_entry;
use super::spec::TestSpec;
use super::state::StatsRecord;
use super::types::{DriftAction, Strategy, TestConfig};
use crate::audit::{self, AuditEvent, ChainHead};
use crate::storage::{Journal, Log, LogEntry, Record};

/// The state the fold carries: the test's statistics and the audit chain it extended.
#[derive(Debug, Clone)]
struct Folded {
    stats: StatsRecord,
    head: ChainHead,
    events: Vec<AuditEvent>,
}

/// Applies `entries` in order, as start-up replay does, auditing what each batch changed at a
/// time taken from the entry's position (never the wall clock).
fn fold(config: &TestConfig, mut state: Folded, entries: &[LogEntry]) -> Folded {
    for entry in entries {
        let decoded = journal_entry::decode(&entry.payload).expect("decodes");
        let changes =
            journal_entry::replay(config, &mut state.stats, &decoded, entry.position, false)
                .expect("replays");
        let drafts = changes
            .into_iter()
            .map(|change| change_event(config, &state.stats, change))
            .collect();
        let time = 1_700_000_000_000_000_000 + entry.position as i64 * 1_000;
        let (events, head) = audit::chain(&state.head, drafts, time).expect("chains");
        state.head = head;
        state.events.extend(events);
    }
    state
}

fn stats_bytes(stats: &StatsRecord) -> Vec<u8> {
    let mut bytes = Vec::new();
    stats.encode_body(&mut bytes).expect("encodes");
    bytes
}

fn config(arms: usize, stop_loss: f64, suspend_on_drift: bool, min_n: u64) -> TestConfig {
    TestConfig::try_from(TestSpec {
        test_id: "fold".into(),
        model_registry_ids: (0..arms).map(|i| format!("m{i}:1.0.0")).collect(),
        strategy: Some(Strategy::ThompsonSampling),
        stop_loss_threshold: Some(stop_loss),
        minimum_sample_size: Some(min_n),
        on_drift: Some(if suspend_on_drift {
            DriftAction::Suspend
        } else {
            DriftAction::Alert
        }),
        ..TestSpec::default()
    })
    .expect("valid test")
}

/// One journaled result: arm, return, metrics.
type Journaled<'a> = (usize, f64, &'a [(String, f64)]);

/// Appends `batches` random result batches to `log`: each arm's mean shifts once, somewhere in
/// the sequence, and a few returns are far out.
fn append_batches(log: &dyn Log, arms: usize, batches: usize, seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let shift_at: Vec<usize> = (0..arms).map(|_| rng.random_range(0..batches)).collect();
    let metrics = vec![("slippage_bps".to_string(), 0.5)];
    for b in 0..batches {
        let size = rng.random_range(1..60);
        let results: Vec<Journaled<'_>> = (0..size)
            .map(|_| {
                let arm = rng.random_range(0..arms);
                let mean = if b >= shift_at[arm] { -0.03 } else { 0.01 };
                let noise: f64 = rng.random_range(-0.02..0.02);
                let value = if rng.random_ratio(1, 200) {
                    1e6 * noise
                } else {
                    mean + noise
                };
                let m: &[(String, f64)] = if rng.random_ratio(1, 4) {
                    &metrics
                } else {
                    &[]
                };
                (arm, value, m)
            })
            .collect();
        let fingerprints: Vec<u128> = (0..size).map(|_| rng.random()).collect();
        let mut payload = Vec::new();
        journal_entry::encode(
            "fold",
            results.into_iter(),
            &fingerprints,
            &Default::default(),
            &mut payload,
        );
        log.append(&payload).expect("append");
    }
    log.sync_blocking().expect("sync");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn folding_the_same_log_twice_or_from_a_snapshot_gives_the_same_state_and_audit_chain(
        arms in 2usize..5,
        batches in 2usize..80,
        stop_loss in -0.02f64..0.0,
        suspend_on_drift in any::<bool>(),
        min_n in 10u64..60,
        seed in any::<u64>(),
        split in 0.0f64..1.0,
    ) {
        let config = config(arms, stop_loss, suspend_on_drift, min_n);
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        append_batches(&journal, arms, batches, seed);
        let entries = Log::read_from(&journal, 0).expect("read");
        prop_assert_eq!(entries.len(), batches);
        let start = Folded {
            stats: StatsRecord::new(arms),
            head: ChainHead::genesis(),
            events: Vec::new(),
        };
        let once = fold(&config, start.clone(), &entries);
        let twice = fold(&config, start.clone(), &entries);
        prop_assert_eq!(stats_bytes(&once.stats), stats_bytes(&twice.stats));
        prop_assert_eq!(&once.events, &twice.events);
        prop_assert_eq!(&once.head, &twice.head);

        // A snapshot of the fold in the middle, stored and read back as start-up reads it, then
        // the entries after its stamp.
        let mid = ((batches as f64 * split) as usize).min(batches - 1);
        let at_mid = fold(&config, start, &entries[..mid]);
        let stored = stats_bytes(&at_mid.stats);
        let restored = StatsRecord::decode_body(StatsRecord::FORMAT_VERSION, &stored)
            .expect("decodes");
        prop_assert_eq!(&stats_bytes(&restored), &stored);
        let tail = Log::read_from(&journal, restored.journal_position + 1).expect("read");
        prop_assert_eq!(tail.len(), batches - mid);
        let resumed = fold(
            &config,
            Folded { stats: restored, head: at_mid.head, events: at_mid.events },
            &tail,
        );
        prop_assert_eq!(stats_bytes(&resumed.stats), stats_bytes(&once.stats));
        prop_assert_eq!(&resumed.events, &once.events);
        prop_assert_eq!(&resumed.head, &once.head);
    }
}

/// The generator reaches what the property is about: suspensions and drift alarms happen, so
/// the audit chain the fold builds is not empty.
#[test]
fn the_generated_batches_suspend_arms_and_raise_drift_alarms() {
    let config = config(3, -0.005, true, 10);
    let dir = tempfile::tempdir().expect("tempdir");
    let (journal, _) = Journal::open(dir.path()).expect("open");
    append_batches(&journal, 3, 80, 7);
    let entries = Log::read_from(&journal, 0).expect("read");
    let folded = fold(
        &config,
        Folded {
            stats: StatsRecord::new(3),
            head: ChainHead::genesis(),
            events: Vec::new(),
        },
        &entries,
    );
    let actions: Vec<&str> = folded.events.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"test.arm_suspended"), "{actions:?}");
    assert!(actions.contains(&"test.arm_drift"), "{actions:?}");
}
