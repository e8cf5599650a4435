//! The result journal seen from the engine: results acknowledged but not yet in a sled snapshot
//! come back after a crash bit for bit, with their result ids, and snapshots trim the journal.

#[path = "../benches/support/mod.rs"]
mod support;

use arbiter::experiment::spec::TestSpec;
use arbiter::experiment::types::{RewardModel, Strategy, TestConfig};
use arbiter::experiment::{RecordOutcome, ResultInput, StatsRecord};
use arbiter::storage::Journal;

/// Batch `b` of test `test_id`: 40 results over `arms` arms with ids `<test_id>-<b>-<i>`, arm 1
/// losing, two metrics on every third result.
fn batch(test_id: &str, b: u32, arms: usize) -> Vec<ResultInput> {
    (0..40u32)
        .map(|i| {
            let arm = (i as usize) % arms;
            let value = if arm == 1 {
                -0.01 - f64::from(i) * 1e-4
            } else {
                0.003 * f64::from((b * 7 + i) % 11) - 0.01
            };
            let mut r = support::result(test_id, arm, value, format!("{test_id}-{b}-{i}"));
            if i % 3 == 0 {
                r.metrics = vec![
                    ("slippage_bps".into(), 0.5 + f64::from(i)),
                    ("fill".into(), 0.9),
                ];
            }
            r
        })
        .collect()
}

async fn record(engine: &support::Engine, batch: Vec<ResultInput>) -> (usize, usize) {
    let outcomes = engine
        .experiments
        .record_batch(batch)
        .await
        .expect("durable");
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, RecordOutcome::Accepted))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, RecordOutcome::Duplicate))
        .count();
    (accepted, duplicates)
}

/// Result entries the log under `dir` holds (opened on its own, as start-up does); its store
/// batches are not counted.
fn journal_entries(dir: &std::path::Path) -> usize {
    Journal::open(&dir.join("journal"))
        .expect("journal")
        .1
        .iter()
        .filter(|e| !arbiter::storage::is_store_entry(&e.payload))
        .count()
}

fn stats(engine: &support::Engine, ids: &[&str]) -> Vec<StatsRecord> {
    ids.iter()
        .map(|id| engine.experiments.stats_record(id).expect("test"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_results_come_back_after_a_crash_bit_for_bit_and_snapshots_trim_the_journal() {
    let engine = support::engine().await;
    let models = support::models(&engine.registry, 3).await;
    let thompson = TestConfig::try_from(TestSpec {
        reward_model: Some(RewardModel::Gaussian),
        ..support::spec("thompson", &models, 3, Strategy::ThompsonSampling)
    })
    .expect("valid");
    // The stop-loss suspends the losing arm 1 after 20 results: that batch goes to sled with its
    // audit event, the batches around it to the journal.
    let guarded = guarded(&models);
    for config in [thompson, guarded] {
        engine
            .experiments
            .create(config, "test")
            .await
            .expect("create");
    }
    let ids = ["thompson", "guarded"];
    for b in 0..30 {
        for id in ids {
            assert_eq!(record(&engine, batch(id, b, 3)).await, (40, 0));
        }
    }
    let before = stats(&engine, &ids);
    assert!(before[1].suspended[1], "the stop-loss suspended arm 1");
    assert!(before.iter().all(|s| s.journal_position > 0));

    // A crash: the engine goes away without a final snapshot.
    let dir = support::close(engine);
    assert!(
        journal_entries(dir.path()) > 0,
        "results waiting in the journal"
    );
    let engine = support::open(dir).await;
    assert_eq!(stats(&engine, &ids), before, "replayed bit for bit");
    // Every id, journaled or stored, is still known.
    for b in [0, 17, 29] {
        assert_eq!(record(&engine, batch("thompson", b, 3)).await, (0, 40));
        assert_eq!(record(&engine, batch("guarded", b, 3)).await, (0, 40));
    }
    assert_eq!(stats(&engine, &ids), before, "duplicates change nothing");

    // A snapshot round stores both tests and leaves no result entry in the log.
    assert_eq!(engine.experiments.snapshot().expect("snapshot"), 2);
    let dir = support::close(engine);
    assert_eq!(journal_entries(dir.path()), 0);
    let engine = support::open(dir).await;
    assert_eq!(stats(&engine, &ids), before, "read back from the snapshots");
    assert_eq!(record(&engine, batch("thompson", 3, 3)).await, (0, 40));

    // New results after the snapshot: only they are replayed.
    assert_eq!(record(&engine, batch("thompson", 30, 3)).await, (40, 0));
    let after = stats(&engine, &ids);
    let dir = support::close(engine);
    assert_eq!(journal_entries(dir.path()), 1);
    let engine = support::open(dir).await;
    assert_eq!(stats(&engine, &ids), after);
    assert_eq!(record(&engine, batch("thompson", 30, 3)).await, (0, 40));
    support::close(engine);
}

/// A FIXED test of three arms whose stop-loss suspends an arm once its mean is below 0.
fn guarded(models: &[arbiter::registry::types::RegistryId]) -> TestConfig {
    TestConfig::try_from(TestSpec {
        stop_loss_threshold: Some(0.0),
        ..support::spec("guarded", models, 3, Strategy::Fixed)
    })
    .expect("valid")
}

/// `n` results of `value` on arm 1 of `test_id`, with ids `<tag>-<i>`.
fn losing(test_id: &str, tag: &str, n: usize, value: f64) -> Vec<ResultInput> {
    (0..n)
        .map(|i| support::result(test_id, 1, value, format!("{tag}-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_batch_replayed_without_a_lost_sled_batch_stores_its_own_suspension() {
    use arbiter::audit::AuditEvent;
    use arbiter::storage::{keys, Storage, WriteBatch};
    let engine = support::engine().await;
    let models = support::models(&engine.registry, 3).await;
    let guarded = guarded(&models);
    engine
        .experiments
        .create(guarded, "test")
        .await
        .expect("create");
    // S: arm 1 reaches 20 results below the threshold and is suspended: a sled batch.
    assert_eq!(
        record(&engine, losing("guarded", "s", 20, -0.02)).await,
        (20, 0)
    );
    // E: more losses on the suspended arm change no suspension: a journal entry.
    assert_eq!(
        record(&engine, losing("guarded", "e", 20, -0.03)).await,
        (20, 0)
    );
    assert!(
        engine
            .experiments
            .stats_record("guarded")
            .expect("test")
            .suspended[1]
    );
    let dir = support::close(engine);

    // The crash state where S never reached the disk (it was not acknowledged yet) but E did:
    // the stored snapshot predates S.
    let suspensions = |storage: &Storage| {
        storage
            .scan::<AuditEvent>(keys::AUDIT_PREFIX)
            .map(|e| e.expect("audit event").1)
            .filter(|e| e.action == "test.arm_suspended")
            .count()
    };
    {
        let storage = arbiter::state::open_storage(dir.path()).expect("storage");
        assert_eq!(suspensions(&storage), 1);
        // S's statistics and result ids were one atomic batch: both are lost.
        let mut batch = WriteBatch::new();
        batch
            .put(keys::test_stats("guarded"), &StatsRecord::new(3))
            .expect("encode");
        for entry in storage.scan_raw(&keys::result_id_runs("guarded")) {
            batch.remove(entry.expect("run").0);
        }
        assert_eq!(batch.len(), 2, "S's one run besides the statistics");
        storage.apply(batch).expect("apply");
        storage.flush_blocking().expect("flush");
    }
    support::wait_unlocked(dir.path());

    // Replaying E alone suspends arm 1 again; start-up stores that with its audit event.
    let engine = support::open(dir).await;
    let stats = engine.experiments.stats_record("guarded").expect("test");
    assert_eq!((stats.arms[1].n, stats.suspended[1]), (20, true));
    let stored: StatsRecord = engine
        .storage
        .get(&keys::test_stats("guarded"))
        .expect("read")
        .expect("stored");
    assert_eq!(
        stored, stats,
        "stored at start-up, before any snapshot round"
    );
    assert_eq!(suspensions(&engine.storage), 2);
    // E's ids were kept; S's were lost with it.
    assert_eq!(
        record(&engine, losing("guarded", "e", 20, -0.03)).await,
        (0, 20)
    );
    assert_eq!(
        record(&engine, losing("guarded", "s", 1, -0.02)).await,
        (1, 0)
    );
    support::close(engine);
}

/// Results whose stop a crash prevented (applied and journaled, the process gone before it
/// stopped the test) stop the test at start-up, not on its next batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_results_that_cross_a_stopping_rule_stop_the_test_at_start() {
    use arbiter::experiment::types::TestStatus;
    let engine = support::engine().await;
    let models = support::models(&engine.registry, 2).await;
    let early = TestConfig::try_from(TestSpec {
        early_stopping: Some(true),
        minimum_sample_size: Some(10),
        ..support::spec("early", &models, 2, Strategy::Fixed)
    })
    .expect("valid");
    let doomed = TestConfig::try_from(TestSpec {
        stop_loss_threshold: Some(0.0),
        ..support::spec("doomed", &models, 2, Strategy::Fixed)
    })
    .expect("valid");
    for config in [early, doomed] {
        engine
            .experiments
            .create(config, "test")
            .await
            .expect("create");
    }
    // Arm 1 of "early" is clearly better; every arm of "doomed" loses.
    let results: Vec<ResultInput> = (0..60)
        .map(|i| {
            let arm = i % 2;
            let noise = f64::from((i * 7 % 13) as u32) * 1e-4;
            let value = if arm == 1 { 0.05 + noise } else { noise };
            support::result("early", arm, value, format!("e{i}"))
        })
        .chain((0..50).map(|i| support::result("doomed", i % 2, -0.01, format!("d{i}"))))
        .collect();
    // Applied and journaled, but the process dies before `make_durable` (which would stop
    // both tests): the stops never happened.
    let applied = engine
        .experiments
        .apply_results(results)
        .await
        .expect("applied");
    engine.storage.flush_blocking().expect("journal synced");
    drop(applied);
    for id in ["early", "doomed"] {
        assert_eq!(
            engine.experiments.get(id).expect("test").record.status,
            TestStatus::Running
        );
    }
    let dir = support::close(engine);
    let engine = support::open(dir).await;
    let early = engine.experiments.get("early").expect("test").record;
    assert_eq!(early.status, TestStatus::Completed);
    assert_eq!(early.winner, Some(1), "{}", early.stop_reason);
    let doomed = engine.experiments.get("doomed").expect("test").record;
    assert_eq!(doomed.status, TestStatus::Completed);
    assert!(
        doomed.stop_reason.contains("stop-loss"),
        "{}",
        doomed.stop_reason
    );
    support::close(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_comes_back_from_a_snapshot_and_the_log_with_every_result() {
    use arbiter::storage::{DirSnapshots, Log, Storage, STORE_FILE};
    let engine = support::engine().await;
    let models = support::models(&engine.registry, 2).await;
    let config = support::config("t", &models, 2, Strategy::ThompsonSampling);
    engine
        .experiments
        .create(config, "quant")
        .await
        .expect("create");
    record(&engine, batch("t", 0, 2)).await;
    // The statistics so far are stored; the next batch is only in the log when the snapshot of
    // the store is taken, and the one after it comes later still.
    engine.experiments.snapshot().expect("statistics");
    record(&engine, batch("t", 1, 2)).await;
    let kept = engine.dir.path().join("snapshots");
    let snapshots = DirSnapshots::open(&kept).expect("snapshots");
    let meta = engine.storage.put_snapshot(&snapshots).expect("snapshot");
    record(&engine, batch("t", 2, 2)).await;
    let served = stats(&engine, &["t"]);
    let dir = support::close(engine);

    std::fs::remove_file(dir.path().join(STORE_FILE)).expect("lose the store");
    let first = Journal::open(&dir.path().join("journal"))
        .expect("journal")
        .0
        .first_position();
    match Storage::open_restoring(dir.path(), &arbiter::state::Fold, &snapshots) {
        Ok(storage) => {
            let engine = support::open_on(dir, storage).await;
            assert_eq!(stats(&engine, &["t"]), served);
            // The resent batches are all duplicates: their ids came back too.
            for b in 0..3 {
                assert_eq!(record(&engine, batch("t", b, 2)).await, (0, 40));
            }
            support::close(engine);
        }
        // A statistics round of the engine's own trimmed the log between the snapshot and
        // the close: restoring would lose results, so it is refused.
        Err(e) => {
            assert!(
                first > meta.position + 1,
                "refused although the log reaches back: {e}"
            );
            assert!(e.to_string().contains("would lose"), "{e}");
        }
    }
}
