//! Shared set-up of the benches: an in-process engine on a temporary data directory with models
//! and tests created through the public domain API.

#![allow(dead_code)]

use std::sync::Arc;

use arbiter::audit::AuditLog;
use arbiter::experiment::spec::TestSpec;
use arbiter::experiment::types::*;
use arbiter::experiment::Experiments;
use arbiter::registry::types::{ModelType, NewModel, RegistryId};
use arbiter::registry::{Registry, RegistryConfig};
use arbiter::storage::Storage;

/// An engine and the directory it lives in.
pub(crate) struct Engine {
    pub(crate) storage: Arc<Storage>,
    pub(crate) registry: Registry,
    pub(crate) experiments: Experiments,
    pub(crate) dir: tempfile::TempDir,
}

/// Opens storage, audit log, registry and experiments on a fresh temporary directory.
pub(crate) async fn engine() -> Engine {
    let dir = tempfile::tempdir().expect("tempdir");
    open(dir).await
}

/// Opens the engine on an existing directory.
pub(crate) async fn open(dir: tempfile::TempDir) -> Engine {
    let storage = arbiter::state::open_storage(dir.path()).expect("storage");
    open_on(dir, storage).await
}

/// Opens the engine on `storage`, opened on `dir`.
pub(crate) async fn open_on(dir: tempfile::TempDir, storage: Storage) -> Engine {
    let storage = Arc::new(storage);
    let audit = Arc::new(AuditLog::open(&storage).expect("audit"));
    let registry = Registry::open(storage.clone(), audit.clone(), RegistryConfig::default())
        .expect("registry");
    let experiments =
        Experiments::open(storage.clone(), audit, registry.clone(), Default::default())
            .await
            .expect("experiments");
    Engine {
        storage,
        registry,
        experiments,
        dir,
    }
}

/// Drops the engine and waits until its database is released; returns its directory.
pub(crate) fn close(engine: Engine) -> tempfile::TempDir {
    let Engine {
        storage,
        registry,
        experiments,
        dir,
    } = engine;
    drop((experiments, registry, storage));
    wait_unlocked(dir.path());
    dir
}

/// Waits until the storage under `dir` is released by every background task of a dropped engine.
pub(crate) fn wait_unlocked(dir: &std::path::Path) {
    assert!(
        arbiter::storage::wait_until_released(dir, std::time::Duration::from_secs(2)),
        "database still held"
    );
}

/// Registers `n` models `m0:1.0.0` … and returns their ids.
pub(crate) async fn models(registry: &Registry, n: usize) -> Vec<RegistryId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = RegistryId::parse("registry_id", &format!("m{i}:1.0.0")).expect("valid");
        let model = NewModel {
            registry_id: id.clone(),
            name: format!("m{i}"),
            model_type: ModelType::Signal,
            created_by: "bench".into(),
            description: String::new(),
            framework: String::new(),
            input_features: Vec::new(),
            output_schema: Default::default(),
            figures: Default::default(),
            resource_requirements: Default::default(),
            latency_requirements_ms: None,
            policy_config: None,
            feature_spec: None,
            expected_sha256: None,
            signature: None,
        };
        let mut registration = registry.begin_registration(model).await.expect("begin");
        registration.write(b"weights").await.expect("write");
        registration.commit().await.expect("commit");
        ids.push(id);
    }
    ids
}

/// A test over the first `arms` models with the given strategy, early stopping off.
pub(crate) fn config(
    test_id: &str,
    models: &[RegistryId],
    arms: usize,
    strategy: Strategy,
) -> TestConfig {
    // Through the same validation as CreateTest.
    TestConfig::try_from(spec(test_id, models, arms, strategy)).expect("a valid bench test")
}

/// The settings of [`config`], to change before validating them.
pub(crate) fn spec(
    test_id: &str,
    models: &[RegistryId],
    arms: usize,
    strategy: Strategy,
) -> TestSpec {
    TestSpec {
        test_id: test_id.into(),
        created_by: "bench".into(),
        model_registry_ids: models[..arms].iter().map(|m| m.to_string()).collect(),
        strategy: Some(strategy),
        reward_model: Some(RewardModel::Bernoulli),
        early_stopping: Some(false),
        stop_loss_threshold: Some(-1e9),
        min_allocation_per_arm: Some(0.5 / arms as f64 * 0.1),
        max_allocation_per_arm: Some(1.0),
        settlement_period_secs: Some(0),
        ..Default::default()
    }
}

/// A result for `test_id` on `arm`.
pub(crate) fn result(
    test_id: &str,
    arm: usize,
    value: f64,
    result_id: String,
) -> arbiter::experiment::ResultInput {
    arbiter::experiment::ResultInput {
        test_id: test_id.into(),
        attribution: Some(arbiter::experiment::Attribution::Arm(format!("arm_{arm}"))),
        return_value: value,
        metrics: Vec::new(),
        result_id,
        observed_at: None,
    }
}
