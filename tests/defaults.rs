//! Defaults that do what users mean, over real gRPC: Thompson sampling optimises the mean return
//! unless told otherwise, FIXED weights are served exactly, a comparison names a winner only when
//! it is significant (and always its leader), "latest" never resolves to a retired version, and a
//! promotion says which version it moved out of PRODUCTION.

mod support;

use arbiter::pb::{self, ModelStatus as S};
use support::*;
use tonic::Code;

#[tokio::test]
async fn thompson_sampling_defaults_to_the_gaussian_reward_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    test_over_two_models(&server, "t").await;
    let test = server
        .experiments()
        .await
        .get_test(pb::GetTestRequest {
            test_id: "t".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        test.allocation_strategy,
        pb::AllocationStrategy::ThompsonSampling as i32
    );
    assert_eq!(test.reward_model, pb::RewardModel::Gaussian as i32);
    server.stop().await;
}

#[tokio::test]
async fn fixed_weights_are_served_exactly_and_contradicting_limits_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 2).await;
    let mut experiments = server.experiments().await;
    let fixed = |id: &str, min: Option<f64>, max: Option<f64>| pb::CreateTestRequest {
        allocation_strategy: pb::AllocationStrategy::Fixed as i32,
        weights: vec![0.9, 0.1],
        min_allocation_per_arm: min,
        max_allocation_per_arm: max,
        ..test_request(id, &models)
    };
    experiments
        .create_test(fixed("f", None, None))
        .await
        .expect("0.9/0.1 with default limits");
    let mut allocator = server.allocator().await;
    let mut counts = [0u32; 2];
    for i in 0..2000 {
        let a = allocator
            .allocate(pb::AllocateRequest {
                test_id: "f".into(),
                unit_key: format!("order-{i}"),
            })
            .await
            .expect("allocate")
            .into_inner();
        let (arm, propensity) = match a.arm_id.as_str() {
            "arm_0" => (0, 0.9),
            _ => (1, 0.1),
        };
        assert!(
            (a.propensity - propensity).abs() < 1e-12,
            "{a:?}: the weight itself is the propensity"
        );
        counts[arm] += 1;
    }
    // 2000 draws at 0.9: the count of arm_0 has sd 13.4; ±80 is six of them.
    assert!((1720..=1880).contains(&counts[0]), "{counts:?}");
    let results = test_results(&server, "f").await;
    let shares: Vec<f64> = results.arms.iter().map(|a| a.allocation_weight).collect();
    assert_eq!(shares, [0.9, 0.1]);

    assert_status(
        experiments.create_test(fixed("g", None, Some(0.8))).await,
        Code::InvalidArgument,
        "max_allocation_per_arm",
    );
    assert_status(
        experiments.create_test(fixed("h", Some(0.2), None)).await,
        Code::InvalidArgument,
        "min_allocation_per_arm",
    );
    experiments
        .create_test(fixed("i", Some(0.1), Some(0.9)))
        .await
        .expect("limits that contain the weights");
    server.stop().await;
}

#[tokio::test]
async fn a_comparison_names_its_leader_always_and_its_winner_only_when_significant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let models = register_models(&mut server.registry().await, 2).await;
    server
        .experiments()
        .await
        .create_test(pb::CreateTestRequest {
            minimum_sample_size: Some(10),
            early_stopping: Some(false),
            ..test_request("t", &models)
        })
        .await
        .expect("create");
    let mut allocator = server.allocator().await;
    // Noisy, barely different arms: arm_1 leads, nothing is significant.
    let noisy = |arm: &str, shift: f64| -> Vec<pb::ResultRecord> {
        (0..12)
            .map(|i| result("t", arm, shift + if i % 2 == 0 { 0.05 } else { -0.05 }))
            .collect()
    };
    let mut records = noisy("arm_0", 0.0);
    records.extend(noisy("arm_1", 0.001));
    ingest(
        &mut allocator,
        vec![pb::ResultBatch {
            sequence: 1,
            results: records,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    let c = &test_results(&server, "t").await.comparisons[0];
    assert!(!c.significant, "{c:?}");
    assert_eq!((c.leader.as_str(), c.winner.as_str()), ("arm_1", ""));

    // A large, clear difference: significant, and the leader is the winner.
    let clear: Vec<pb::ResultRecord> = (0..400)
        .flat_map(|i| {
            let noise = if i % 2 == 0 { 0.01 } else { -0.01 };
            [
                result("t", "arm_0", noise),
                result("t", "arm_1", 0.05 + noise),
            ]
        })
        .collect();
    ingest(
        &mut allocator,
        vec![pb::ResultBatch {
            sequence: 2,
            results: clear,
            ..Default::default()
        }],
    )
    .await
    .expect("ingest");
    let c = &test_results(&server, "t").await.comparisons[0];
    assert!(c.significant, "{c:?}");
    assert_eq!((c.leader.as_str(), c.winner.as_str()), ("arm_1", "arm_1"));
    server.stop().await;
}

#[tokio::test]
async fn latest_never_resolves_to_a_retired_version_and_a_promotion_names_what_it_demoted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        register_simple(&mut registry, "m", version).await;
    }
    for target in [S::Testing, S::Staging, S::Production] {
        let answer = promote(&mut registry, "m:3.0.0", target)
            .await
            .expect("promote 3.0.0");
        assert_eq!(answer.demoted_registry_id, "", "nothing was PRODUCTION");
    }
    for target in [S::Testing, S::Staging] {
        promote(&mut registry, "m:2.0.0", target)
            .await
            .expect("promote 2.0.0");
    }
    let answer = promote(&mut registry, "m:2.0.0", S::Production)
        .await
        .expect("2.0.0 replaces 3.0.0");
    assert_eq!(answer.demoted_registry_id, "m:3.0.0");
    assert_eq!(
        metadata(&mut registry, "m:3.0.0").await.expect("3").status,
        S::Deprecated as i32
    );
    promote(&mut registry, "m:2.0.0", S::Archived)
        .await
        .expect("archive 2.0.0");

    // 3.0.0 DEPRECATED, 2.0.0 ARCHIVED: latest is the highest current version, 1.0.0.
    let (latest, _) = get_model(&mut registry, "m", "").await.expect("latest");
    assert_eq!(latest.registry_id, "m:1.0.0");
    let (retired, _) = get_model(&mut registry, "m", "3.0.0")
        .await
        .expect("by version");
    assert_eq!(retired.status, S::Deprecated as i32);

    // Only retired versions left: latest is NOT_FOUND, saying how to get one.
    registry
        .delete_model(pb::DeleteModelRequest {
            registry_id: "m:1.0.0".into(),
            force: false,
            requested_by: String::new(),
        })
        .await
        .expect("delete 1.0.0");
    assert_status(
        get_model(&mut registry, "m", "").await,
        Code::NotFound,
        "only DEPRECATED or ARCHIVED versions",
    );
    server.stop().await;
}
