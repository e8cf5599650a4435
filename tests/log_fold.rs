//! The store is a deterministic fold of the log: random sequences of audited store batches,
//! folded from the whole log onto an empty store, and from a checkpoint taken in the middle plus
//! the replay of the rest, give exactly the store that served them, audit chain included; and
//! so do random sequences of registry commands, whose outcome the fold computes.

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

/// A runtime for one case's flushes.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The store opened on `dir` (replaying the log, commands included), and the length of its
/// verified audit chain.
fn folded(dir: &Path) -> (Dump, u64) {
    let storage = arbiter::state::open_storage(dir).expect("open");
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
        let runtime = runtime();
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

#[path = "../benches/support/mod.rs"]
mod support;

mod domain_commands {
    //! Registry commands (registrations, promotions, deletions) and test commands (creation,
    //! pause, resume, stop, settlement) are logged as what was asked and applied by the fold:
    //! random sequences of them give the same store (audit chain included) when they are
    //! served, after a clean restart, folded twice from the whole log, folded from a
    //! checkpoint in the middle plus replay, and restored from a snapshot taken while serving
    //! plus replay.

    use std::sync::Arc;

    use super::*;
    use arbiter::experiment::command as test_command;
    use arbiter::experiment::types::{
        DecisionArm, StopDecision, Strategy as TestStrategy, TestRecord, TestStatus,
    };
    use arbiter::registry::command::{self, Command, Delete, Promote, Register, SignatureCheck};
    use arbiter::registry::types::*;
    use arbiter::registry::{Deletion, Promotion, PromotionRights};

    const STATUSES: [ModelStatus; 6] = [
        ModelStatus::Development,
        ModelStatus::Testing,
        ModelStatus::Staging,
        ModelStatus::Production,
        ModelStatus::Deprecated,
        ModelStatus::Archived,
    ];
    const PEOPLE: [&str; 3] = ["", "alice", "bob"];

    #[derive(Debug, Clone)]
    enum Step {
        Command(Command),
        Test(test_command::Command),
    }

    fn registry_id(model: u8, version: u8) -> RegistryId {
        RegistryId::parse("registry_id", &format!("m{model}:{version}.0.0")).expect("valid")
    }

    fn metadata(id: RegistryId, creator: &str, time: i64, sharpe: f64) -> ModelMetadata {
        ModelMetadata {
            name: id.model_id.as_str().to_string(),
            model_type: ModelType::Signal,
            status: ModelStatus::Development,
            created_at: time,
            created_by: creator.to_string(),
            description: String::new(),
            framework: "onnx".into(),
            input_features: vec!["spread".into()],
            output_schema: Default::default(),
            // Arbitrary floats: the fold must see them exactly as they were logged.
            figures: BacktestFigures {
                backtest_sharpe: Some(sharpe),
                backtest_returns: Some(sharpe / 3.0),
                backtest_max_dd: None,
                validation_score: Some(0.1 + sharpe),
            },
            resource_requirements: Default::default(),
            latency_requirements_ms: Some(sharpe.abs() * 7.0),
            approval_status: ApprovalStatus::Pending,
            approved_by: String::new(),
            approved_at: None,
            model_checksum: Sha256Digest::of(id.to_string().as_bytes()),
            policy_checksum: None,
            artifact_size_bytes: 10,
            feature_spec: None,
            signature: None,
            registry_id: id,
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        let id = (0u8..2, 1u8..3).prop_map(|(m, v)| registry_id(m, v));
        prop_oneof![
            3 => (id.clone(), 1usize..3, -5.0f64..5.0, 2usize..5).prop_map(
                |(id, creator, sharpe, max)| {
                    Step::Command(Command::Register(Box::new(Register {
                        metadata: metadata(id, PEOPLE[creator], 1_000 + i64::from(max as u8), sharpe),
                        policy: (max == 3).then(|| "{\"k\":1}".to_string()),
                        max_versions_per_model: max,
                    })))
                }
            ),
            4 => (
                id.clone(),
                0usize..6,
                0usize..3,
                any::<(bool, bool, bool)>(),
                prop::option::of(0usize..6),
                prop::option::of(any::<(bool, bool)>()),
            )
                .prop_map(|(id, target, approver, (production, below, self_ok), expected, signature)| {
                    let checksum = Sha256Digest::of(id.to_string().as_bytes());
                    Step::Command(Command::Promote(Promote {
                        promotion: Promotion {
                            registry_id: id,
                            target: STATUSES[target],
                            approved_by: PEOPLE[approver].to_string(),
                            actor: "carol".into(),
                            rights: PromotionRights {
                                below_production: below,
                                production,
                            },
                            reason: "prop".into(),
                            expected_status: expected.map(|i| STATUSES[i]),
                        },
                        time: 2_000,
                        allow_self_approval: self_ok,
                        signature: signature.map(|(same, good)| SignatureCheck {
                            model_checksum: if same { checksum } else { Sha256Digest::of(b"other") },
                            problem: (!good).then(|| "it is not signed".to_string()),
                        }),
                    }))
                }),
            2 => (id.clone(), any::<bool>()).prop_map(|(id, force)| {
                Step::Command(Command::Delete(Delete {
                    deletion: Deletion {
                        registry_id: id,
                        force,
                    },
                    actor: "dave".into(),
                    time: 3_000,
                }))
            }),
            3 => (id.clone(), id, 0u8..3, any::<bool>()).prop_map(|(a, b, test, settles)| {
                let mut spec = support::spec(
                    &format!("t{test}"),
                    &[a, b],
                    2,
                    TestStrategy::ThompsonSampling,
                );
                spec.settlement_period_secs = Some(if settles { 60 } else { 0 });
                let config = arbiter::experiment::types::TestConfig::try_from(spec);
                // Two arms over one version are refused before they reach the log.
                match config {
                    Ok(config) => Step::Test(test_command::Command::Create(Box::new(
                        test_command::Create {
                            record: TestRecord {
                                config: Arc::new(config),
                                status: TestStatus::Running,
                                created_at: 4_000,
                                winner: None,
                                stop_reason: String::new(),
                                stopped_at: None,
                                decision: None,
                                settled: false,
                            },
                            actor: "erin".into(),
                        },
                    ))),
                    Err(_) => Step::Test(test_command::Command::Pause(transition(test))),
                }
            }),
            4 => (0u8..3, 0u8..4, prop::option::of(0usize..3), -1.0f64..1.0).prop_map(
                |(test, kind, winner, mean)| Step::Test(match kind {
                    0 => test_command::Command::Pause(transition(test)),
                    1 => test_command::Command::Resume(transition(test)),
                    2 => test_command::Command::Stop(Box::new(test_command::Stop {
                        test_id: format!("t{test}"),
                        actor: "system".into(),
                        winner,
                        decision: StopDecision {
                            kind: "manual".into(),
                            reason: "prop".into(),
                            decided_at: 5_000,
                            winner: None,
                            arms: vec![DecisionArm {
                                arm_id: "arm_0".into(),
                                results: 3,
                                // A statistic over extreme returns may not be finite.
                                mean_return: if mean > 0.9 { f64::NAN } else { mean },
                                std_return: mean.abs(),
                                suspended: false,
                            }],
                            comparisons: Vec::new(),
                        },
                        time: 5_000,
                    })),
                    _ => test_command::Command::Settle(test_command::Settle {
                        test_id: format!("t{test}"),
                        results: 7,
                        results_after_decision: Some(2),
                        time: 6_000,
                    }),
                })
            ),
        ]
    }

    fn transition(test: u8) -> test_command::Transition {
        test_command::Transition {
            test_id: format!("t{test}"),
            actor: "frank".into(),
            reason: "prop".into(),
            time: 4_500,
        }
    }

    /// Runs `step` (a refused command changes nothing).
    fn serve(storage: &Storage, step: &Step) {
        match step {
            Step::Command(c) => {
                let entry = command::encode(c).expect("encode");
                let _refused_or_applied = storage.execute(&entry, |store| {
                    command::apply(store, c).map(|batch| (batch, ()))
                });
            }
            Step::Test(c) => {
                let entry = test_command::encode(c).expect("encode");
                let _refused_or_applied = storage.execute(&entry, |store| {
                    test_command::apply(store, c).map(|batch| (batch, ()))
                });
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn domain_commands_fold_to_the_store_that_served_them(
            steps in prop::collection::vec(step(), 1..60),
            split in 0.0f64..1.0,
        ) {
            // Every version registered first, so that more of the tests' commands apply.
            let steps: Vec<Step> = (0..2)
                .flat_map(|m| (1..3).map(move |v| (m, v)))
                .map(|(m, v)| {
                    Step::Command(Command::Register(Box::new(Register {
                        metadata: metadata(registry_id(m, v), "alice", 500, 0.5),
                        policy: None,
                        max_versions_per_model: 4,
                    })))
                })
                .chain(steps)
                .collect();
            let runtime = runtime();
            let dir = tempfile::tempdir().expect("tempdir");
            let snapshot = tempfile::tempdir().expect("tempdir");
            let snapshots = arbiter::storage::DirSnapshots::open(&snapshot.path().join("snapshots"))
                .expect("snapshots");
            let mid = ((steps.len() as f64 * split) as usize).min(steps.len());
            let served = runtime.block_on(async {
                let storage = arbiter::state::open_storage(dir.path()).expect("open");
                for (i, step) in steps.iter().enumerate() {
                    if i == mid {
                        storage.checkpoint().expect("checkpoint");
                        std::fs::copy(dir.path().join(STORE_FILE), snapshot.path().join(STORE_FILE))
                            .expect("copy the checkpointed store");
                    }
                    if i == steps.len() / 2 {
                        // A snapshot taken while serving, without a checkpoint before it.
                        storage.put_snapshot(&snapshots).expect("snapshot");
                    }
                    serve(&storage, step);
                    storage.flush().await.expect("flush");
                }
                let served = dump(&storage);
                drop(storage);
                served
            });
            wait_released(dir.path());

            // After a clean restart (the engine kept everything; nothing is applied twice).
            let restarted = folded(dir.path());
            prop_assert_eq!(&restarted.0, &served);
            let events = restarted.1;

            // The whole log folded onto an empty store, twice.
            let saved = dir.path().join("served.redb");
            std::fs::rename(dir.path().join(STORE_FILE), &saved).expect("set the store aside");
            for _ in 0..2 {
                let from_log = folded(dir.path());
                prop_assert_eq!(&from_log.0, &served);
                prop_assert_eq!(from_log.1, events);
                std::fs::remove_file(dir.path().join(STORE_FILE)).expect("remove the fold");
            }

            // The checkpoint from the middle plus the replay of the log after it.
            std::fs::copy(snapshot.path().join(STORE_FILE), dir.path().join(STORE_FILE))
                .expect("restore the checkpoint");
            let from_checkpoint = folded(dir.path());
            prop_assert_eq!(&from_checkpoint.0, &served);
            prop_assert_eq!(from_checkpoint.1, events);

            // No store: made from the snapshot, then the log after it replayed.
            std::fs::remove_file(dir.path().join(STORE_FILE)).expect("lose the store");
            let storage =
                Storage::open_restoring(dir.path(), &arbiter::state::Fold, &snapshots)
                    .expect("restore");
            prop_assert_eq!(&dump(&storage), &served);
            drop(storage);
            wait_released(dir.path());
        }
    }
}
