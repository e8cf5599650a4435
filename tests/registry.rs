//! End-to-end tests of `arbiter.v1.Registry` over real gRPC: every RPC and every error it documents.

mod support;

use arbiter::pb::{self, ModelStatus as S};
use arbiter::registry::RegistryConfig;
use support::*;
use tonic::Code;

#[tokio::test]
async fn multi_chunk_artifact_round_trips_with_matching_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;

    let bytes = artifact_bytes(5 * 1024 * 1024 + 123, 7);
    let mut h = header("signal_lstm", "1.0.0", "alice");
    h.name = "LSTM signal".into();
    h.description = "LSTM-based signal generation".into();
    h.framework = "onnx".into();
    h.input_features = vec!["returns".into(), "volume".into()];
    h.output_schema = [("signal".to_string(), "float".to_string())].into();
    h.backtest_sharpe = Some(1.8);
    h.latency_requirements_ms = Some(0.5);
    h.expected_sha256 = Some(sha256_hex(&bytes).to_uppercase());
    h.policy_config = Some(prost_types::Struct {
        fields: [(
            "position_size".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(0.02)),
            },
        )]
        .into(),
    });
    let registered = register(&mut client, h, &bytes).await.expect("registers");
    assert_eq!(registered.registry_id, "signal_lstm:1.0.0");
    assert_eq!(registered.status, S::Development as i32);
    assert_eq!(registered.model_checksum, sha256_hex(&bytes));
    assert_eq!(registered.artifact_size_bytes, bytes.len() as u64);
    assert_eq!(registered.approval_status, "pending");
    assert_eq!(
        registered.policy_checksum,
        sha256_hex(br#"{"position_size":0.02}"#)
    );

    let (meta, downloaded) = get_model(&mut client, "signal_lstm", "1.0.0")
        .await
        .expect("gets");
    assert_eq!(downloaded.len(), bytes.len());
    assert!(downloaded == bytes, "artifact bytes differ");
    assert_eq!(meta, registered);
    assert_eq!(meta.name, "LSTM signal");
    assert_eq!(meta.backtest_sharpe, Some(1.8));
    assert_eq!(meta.backtest_returns, None);
    assert_eq!(meta.input_features, vec!["returns", "volume"]);

    let fetched = metadata(&mut client, "signal_lstm:1.0.0")
        .await
        .expect("metadata");
    assert_eq!(fetched, registered);

    let verified = client
        .verify_model(pb::ModelRef {
            registry_id: "signal_lstm:1.0.0".into(),
        })
        .await
        .expect("verifies")
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert_eq!(verified.actual_sha256, sha256_hex(&bytes));
    assert_eq!(verified.actual_policy_sha256, registered.policy_checksum);
    server.stop().await;
}

#[tokio::test]
async fn checksum_mismatch_and_oversized_uploads_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RegistryConfig {
        max_artifact_bytes: 1024 * 1024,
        ..RegistryConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut client = server.registry().await;

    let bytes = artifact_bytes(200_000, 3);
    let mut h = header("m", "1.0.0", "alice");
    h.expected_sha256 = Some("0".repeat(64));
    assert_status(
        register(&mut client, h, &bytes).await,
        Code::DataLoss,
        "checksum mismatch",
    );

    let big = artifact_bytes(1024 * 1024 + 1, 4);
    assert_status(
        register(&mut client, header("m", "1.0.0", "alice"), &big).await,
        Code::ResourceExhausted,
        "1048576 bytes",
    );

    let mut h = header("m", "1.0.0", "alice");
    h.expected_sha256 = Some("xyz".into());
    assert_status(
        register(&mut client, h, &bytes).await,
        Code::InvalidArgument,
        "expected_sha256",
    );

    assert_status(
        metadata(&mut client, "m:1.0.0").await,
        Code::NotFound,
        "m:1.0.0",
    );
    assert!(
        dir_entries(&dir.path().join("tmp")).is_empty(),
        "temporary files left"
    );
    assert!(
        dir_entries(&dir.path().join("artifacts/m")).is_empty(),
        "artifact left"
    );

    // Exactly the limit is fine, and the version is still free.
    let limit = artifact_bytes(1024 * 1024, 5);
    register(&mut client, header("m", "1.0.0", "alice"), &limit)
        .await
        .expect("at the limit");
    server.stop().await;
}

#[tokio::test]
async fn a_corrupted_artifact_is_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let bytes = artifact_bytes(600_000, 11);
    let registered = register(&mut client, header("m", "1.0.0", "alice"), &bytes)
        .await
        .expect("registers");

    let path = dir.path().join("artifacts/m/1.0.0.bin");
    let mut corrupted = std::fs::read(&path).expect("artifact file exists");
    corrupted[300_000] ^= 0x01;
    std::fs::write(&path, &corrupted).expect("corrupt");

    // No chunk may arrive: the error comes before the stream starts.
    let result = client
        .get_model(pb::GetModelRequest {
            model_id: "m".into(),
            version: "1.0.0".into(),
        })
        .await;
    assert_status(result.map(|_| ()), Code::DataLoss, "checksum mismatch");
    assert_status(
        get_model(&mut client, "m", "").await,
        Code::DataLoss,
        &registered.model_checksum,
    );

    let verified = client
        .verify_model(pb::ModelRef {
            registry_id: "m:1.0.0".into(),
        })
        .await
        .expect("verify answers")
        .into_inner();
    assert!(!verified.ok);
    assert_eq!(verified.expected_sha256, registered.model_checksum);
    assert_eq!(verified.actual_sha256, sha256_hex(&corrupted));
    assert!(
        verified.message.contains("artifact checksum mismatch"),
        "{verified:?}"
    );

    std::fs::remove_file(&path).expect("remove");
    assert_status(
        get_model(&mut client, "m", "1.0.0").await,
        Code::DataLoss,
        "missing",
    );
    let verified = client
        .verify_model(pb::ModelRef {
            registry_id: "m:1.0.0".into(),
        })
        .await
        .expect("verify answers")
        .into_inner();
    assert!(
        !verified.ok && verified.message.contains("missing"),
        "{verified:?}"
    );
    server.stop().await;
}

const ALL: [S; 6] = [
    S::Development,
    S::Testing,
    S::Staging,
    S::Production,
    S::Deprecated,
    S::Archived,
];

/// The statuses to pass through, from DEVELOPMENT, to reach `status`.
fn path_to(status: S) -> Vec<S> {
    match status {
        S::Development | S::Unspecified => vec![],
        S::Testing => vec![S::Testing],
        S::Staging => vec![S::Testing, S::Staging],
        S::Production => vec![S::Testing, S::Staging, S::Production],
        S::Deprecated => vec![S::Deprecated],
        S::Archived => vec![S::Deprecated, S::Archived],
    }
}

fn allowed(from: S, to: S) -> bool {
    matches!(
        (from, to),
        (S::Development, S::Testing)
            | (S::Testing, S::Staging)
            | (S::Staging, S::Production)
            | (S::Testing, S::Development)
            | (S::Staging, S::Testing)
            | (
                S::Development | S::Testing | S::Staging | S::Production,
                S::Deprecated
            )
            | (S::Production | S::Deprecated, S::Archived)
    )
}

#[tokio::test]
async fn every_allowed_and_forbidden_transition() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 36 registrations and their promotions are more than the default change rate allows.
    let mut config = TestServer::config(dir.path());
    config.security.rate_limits.change = 0;
    let server = TestServer::start_config(config).await;
    let mut client = server.registry().await;
    let (mut allowed_seen, mut forbidden_seen) = (0, 0);
    for (i, from) in ALL.into_iter().enumerate() {
        for (j, to) in ALL.into_iter().enumerate() {
            let model = format!("m{i}{j}");
            let id = register_simple(&mut client, &model, "1.0.0")
                .await
                .registry_id;
            for step in path_to(from) {
                promote(&mut client, &id, step)
                    .await
                    .expect("setup transition");
            }
            let result = promote(&mut client, &id, to).await;
            if allowed(from, to) {
                let m = result.unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e}"));
                assert_eq!(m.status, to as i32, "{from:?} -> {to:?}");
                allowed_seen += 1;
            } else {
                let from_name = from
                    .as_str_name()
                    .trim_start_matches("MODEL_STATUS_")
                    .to_string();
                let to_name = to
                    .as_str_name()
                    .trim_start_matches("MODEL_STATUS_")
                    .to_string();
                let needle = format!("from {from_name} to {to_name}");
                assert_status(result, Code::FailedPrecondition, &needle);
                forbidden_seen += 1;
            }
        }
    }
    assert_eq!((allowed_seen, forbidden_seen), (11, 25));
    server.stop().await;
}

#[tokio::test]
async fn production_needs_a_second_person_and_replaces_the_previous_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    for v in ["1.0.0", "1.1.0"] {
        let id = register_simple(&mut client, "m", v).await.registry_id;
        promote(&mut client, &id, S::Testing)
            .await
            .expect("testing");
        promote(&mut client, &id, S::Staging)
            .await
            .expect("staging");
    }
    let request = |approved_by: &str| pb::PromoteModelRequest {
        registry_id: "m:1.0.0".into(),
        target_status: S::Production as i32,
        approved_by: approved_by.into(),
        reason: "go live".into(),
        expected_status: None,
    };
    assert_status(
        client.promote_model(request("")).await,
        Code::InvalidArgument,
        "approved_by",
    );
    assert_status(
        client.promote_model(request("  ")).await,
        Code::InvalidArgument,
        "approved_by",
    );
    assert_status(
        client.promote_model(request("alice")).await,
        Code::FailedPrecondition,
        "alice",
    );
    assert_eq!(
        metadata(&mut client, "m:1.0.0").await.expect("meta").status,
        S::Staging as i32
    );

    let live = client
        .promote_model(request("lead"))
        .await
        .expect("four eyes")
        .into_inner();
    assert_eq!(live.status, S::Production as i32);
    assert_eq!(live.approval_status, "approved");
    assert_eq!(live.approved_by, "lead");
    assert!(live.approved_at.is_some());
    let (served, _) = get_model(&mut client, "m", "")
        .await
        .expect("latest production");
    assert_eq!(
        served.registry_id, "m:1.0.0",
        "PRODUCTION wins over the higher 1.1.0"
    );

    promote(&mut client, "m:1.1.0", S::Production)
        .await
        .expect("second production");
    let old = metadata(&mut client, "m:1.0.0").await.expect("meta");
    assert_eq!(
        old.status,
        S::Deprecated as i32,
        "previous PRODUCTION is demoted"
    );
    let production = client
        .list_models(pb::ListModelsRequest {
            model_id: "m".into(),
            status: Some(S::Production as i32),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .models;
    assert_eq!(production.len(), 1);
    assert_eq!(production[0].registry_id, "m:1.1.0");

    let events = audit_events(&server, "m:1.0.0", 0).await;
    let last = events.last().expect("events");
    assert_eq!(last.action, "model.promote");
    assert_eq!(last.details["to"], "DEPRECATED");
    assert_eq!(last.details["reason"], "replaced by m:1.1.0");
    server.stop().await;
}

#[tokio::test]
async fn self_approval_can_be_allowed_by_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RegistryConfig {
        allow_self_approval: true,
        ..RegistryConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut client = server.registry().await;
    let id = register_simple(&mut client, "m", "1.0.0").await.registry_id;
    promote(&mut client, &id, S::Testing)
        .await
        .expect("testing");
    promote(&mut client, &id, S::Staging)
        .await
        .expect("staging");
    let m = client
        .promote_model(pb::PromoteModelRequest {
            registry_id: id,
            target_status: S::Production as i32,
            approved_by: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("self approval allowed")
        .into_inner();
    assert_eq!(m.approved_by, "alice");
    server.stop().await;
}

#[tokio::test]
async fn compare_and_set_promotion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let id = register_simple(&mut client, "m", "1.0.0").await.registry_id;
    let cas = |expected: S| pb::PromoteModelRequest {
        registry_id: id.clone(),
        target_status: S::Testing as i32,
        expected_status: Some(expected as i32),
        ..Default::default()
    };
    assert_status(
        client.promote_model(cas(S::Staging)).await,
        Code::Aborted,
        "not the expected STAGING",
    );
    assert_eq!(
        metadata(&mut client, &id).await.expect("meta").status,
        S::Development as i32
    );
    client
        .promote_model(cas(S::Development))
        .await
        .expect("CAS holds");
    // The same request again has lost: the status moved on.
    assert_status(
        client.promote_model(cas(S::Development)).await,
        Code::Aborted,
        "is TESTING",
    );
    server.stop().await;
}

#[tokio::test]
async fn delete_protects_production_and_removes_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let id = register_simple(&mut client, "m", "1.0.0").await.registry_id;
    for step in path_to(S::Production) {
        promote(&mut client, &id, step).await.expect("promote");
    }
    let delete = |force: bool| pb::DeleteModelRequest {
        registry_id: "m:1.0.0".into(),
        force,
        requested_by: "ops".into(),
    };
    assert_status(
        client.delete_model(delete(false)).await,
        Code::FailedPrecondition,
        "requires force",
    );
    assert!(dir.path().join("artifacts/m/1.0.0.bin").exists());
    let deleted = client
        .delete_model(delete(true))
        .await
        .expect("forced")
        .into_inner();
    assert!(deleted.deleted);
    assert_status(
        metadata(&mut client, "m:1.0.0").await,
        Code::NotFound,
        "m:1.0.0",
    );
    assert!(
        !dir.path().join("artifacts/m/1.0.0.bin").exists(),
        "artifact file removed"
    );
    assert_status(
        client.delete_model(delete(true)).await,
        Code::NotFound,
        "m:1.0.0",
    );
    assert_status(
        get_model(&mut client, "m", "").await,
        Code::NotFound,
        "\"m\"",
    );

    let events = audit_events(&server, "m", 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].action.as_str(), events[0].actor.as_str()),
        ("model.delete", "ops")
    );
    assert_eq!(events[0].details["force"], "true");
    server.stop().await;
}

#[tokio::test]
async fn retention_removes_the_oldest_development_or_testing_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = RegistryConfig {
        max_versions_per_model: 3,
        ..RegistryConfig::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut client = server.registry().await;
    // 1.0.0 is STAGING (never removed automatically); 1.1.0 and 1.2.0 stay DEVELOPMENT/TESTING.
    let first = register_simple(&mut client, "m", "1.0.0").await.registry_id;
    promote(&mut client, &first, S::Testing)
        .await
        .expect("testing");
    promote(&mut client, &first, S::Staging)
        .await
        .expect("staging");
    register_simple(&mut client, "m", "1.1.0").await;
    let third = register_simple(&mut client, "m", "1.2.0").await.registry_id;
    promote(&mut client, &third, S::Testing)
        .await
        .expect("testing");
    register_simple(&mut client, "m", "1.3.0").await;
    register_simple(&mut client, "other", "1.0.0").await;

    let versions = |models: Vec<pb::ModelMetadata>| {
        let mut v: Vec<String> = models.into_iter().map(|m| m.version).collect();
        v.sort();
        v
    };
    let list = pb::ListModelsRequest {
        model_id: "m".into(),
        ..Default::default()
    };
    let models = client
        .list_models(list.clone())
        .await
        .expect("list")
        .into_inner()
        .models;
    assert_eq!(versions(models), vec!["1.0.0", "1.2.0", "1.3.0"]);
    assert!(
        !dir.path().join("artifacts/m/1.1.0.bin").exists(),
        "removed version's file is gone"
    );

    register_simple(&mut client, "m", "1.4.0").await;
    let models = client
        .list_models(list)
        .await
        .expect("list")
        .into_inner()
        .models;
    assert_eq!(
        versions(models),
        vec!["1.0.0", "1.3.0", "1.4.0"],
        "TESTING 1.2.0 was next"
    );

    let events = audit_events(&server, "m:1.1.0", 10).await;
    let last = events.last().expect("events");
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("model.retention_delete", "system")
    );
    server.stop().await;
}

#[tokio::test]
async fn eight_clients_register_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let mut client = server.registry().await;
        tasks.push(tokio::spawn(async move {
            let bytes = artifact_bytes(300_000, i + 1);
            let m = register(
                &mut client,
                header(&format!("model{i}"), "1.0.0", "alice"),
                &bytes,
            )
            .await
            .expect("concurrent registration succeeds");
            assert_eq!(m.model_checksum, sha256_hex(&bytes));
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let mut client = server.registry().await;
    let all = client
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.models.len(), 8);
    let chain = server
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify");
    assert_eq!(chain.into_inner().events_checked, 8);
    server.stop().await;
}

#[tokio::test]
async fn versions_order_by_semver_not_by_string() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    for v in ["1.10.0", "2.0.0", "1.9.0", "2.0.0-rc.1"] {
        register_simple(&mut client, "m", v).await;
    }
    // Without a PRODUCTION version the highest semver wins; delete from the top to see the order.
    for expected in ["2.0.0", "2.0.0-rc.1", "1.10.0", "1.9.0"] {
        let (m, _) = get_model(&mut client, "m", "").await.expect("latest");
        assert_eq!(m.version, expected);
        client
            .delete_model(pb::DeleteModelRequest {
                registry_id: m.registry_id,
                ..Default::default()
            })
            .await
            .expect("delete");
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let long_ok = "x".repeat(128);
    register_simple(&mut client, &long_ok, "1.0.0").await;
    for bad in ["", "a b", "a:b", "a/b", "ünïcode", &"x".repeat(129)] {
        assert_status(
            register(&mut client, header(bad, "1.0.0", "alice"), b"x").await,
            Code::InvalidArgument,
            "model_id",
        );
    }
    for bad in ["1.0", "v1.0.0", "01.0.0", ""] {
        assert_status(
            register(&mut client, header("m", bad, "alice"), b"x").await,
            Code::InvalidArgument,
            "version",
        );
    }
    assert_status(
        register(&mut client, header("m", "1.0.0", ""), b"x").await,
        Code::InvalidArgument,
        "created_by",
    );
    let mut h = header("m", "1.0.0", "alice");
    h.model_type = 0;
    assert_status(
        register(&mut client, h, b"x").await,
        Code::InvalidArgument,
        "model_type",
    );
    let mut h = header("m", "1.0.0", "alice");
    h.backtest_sharpe = Some(f64::NAN);
    assert_status(
        register(&mut client, h, b"x").await,
        Code::InvalidArgument,
        "backtest_sharpe",
    );

    // The first message must be the header, and only the first.
    use pb::register_model_request::Part;
    let chunk_first = vec![pb::RegisterModelRequest {
        part: Some(Part::Chunk(vec![1])),
    }];
    assert_status(
        client.register_model(tokio_stream::iter(chunk_first)).await,
        Code::InvalidArgument,
        "header",
    );
    let mut twice = registration_messages(header("m", "1.0.0", "alice"), b"abc", 1);
    twice.push(pb::RegisterModelRequest {
        part: Some(Part::Header(header("m", "1.0.0", "alice"))),
    });
    assert_status(
        client.register_model(tokio_stream::iter(twice)).await,
        Code::InvalidArgument,
        "header",
    );
    assert_status(
        client.register_model(tokio_stream::iter(vec![])).await,
        Code::InvalidArgument,
        "header",
    );

    for bad in ["m", "m:", ":1.0.0", "m:1", "a b:1.0.0"] {
        assert_status(
            metadata(&mut client, bad).await,
            Code::InvalidArgument,
            "registry_id",
        );
    }
    assert_status(
        metadata(&mut client, "m:1.0.0").await,
        Code::NotFound,
        "m:1.0.0",
    );
    assert_status(
        promote(&mut client, "m:1.0.0", S::Unspecified).await,
        Code::InvalidArgument,
        "target_status",
    );
    assert_status(
        promote(&mut client, "m:1.0.0", S::Testing).await,
        Code::NotFound,
        "m:1.0.0",
    );
    assert_status(
        get_model(&mut client, "nope", "").await,
        Code::NotFound,
        "nope",
    );
    assert_status(
        get_model(&mut client, "m", "x").await,
        Code::InvalidArgument,
        "version",
    );
    let bad_filter = pb::ListModelsRequest {
        status: Some(99),
        ..Default::default()
    };
    assert_status(
        client.list_models(bad_filter).await,
        Code::InvalidArgument,
        "status",
    );

    // Nothing but the one valid registration happened.
    let all = client
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.models.len(), 1);
    let chain = server
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify");
    assert_eq!(chain.into_inner().events_checked, 1);
    assert!(dir_entries(&dir.path().join("tmp")).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn duplicate_versions_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let first = register(&mut client, header("m", "1.0.0", "alice"), b"one")
        .await
        .expect("first");
    assert_status(
        register(&mut client, header("m", "1.0.0", "bob"), b"two").await,
        Code::AlreadyExists,
        "m:1.0.0",
    );
    let (m, bytes) = get_model(&mut client, "m", "1.0.0").await.expect("get");
    assert_eq!(
        (m.model_checksum, bytes),
        (first.model_checksum, b"one".to_vec())
    );
    server.stop().await;
}

#[tokio::test]
async fn list_filters_combine_and_sort_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    register(&mut client, header("a", "1.0.0", "alice"), b"1")
        .await
        .expect("a1");
    let mut h = header("b", "1.0.0", "bob");
    h.model_type = pb::ModelType::Risk as i32;
    register(&mut client, h, b"2").await.expect("b1");
    register(&mut client, header("a", "1.1.0", "bob"), b"3")
        .await
        .expect("a2");

    let ids = |r: pb::ListModelsResponse| {
        r.models
            .into_iter()
            .map(|m| m.registry_id)
            .collect::<Vec<_>>()
    };
    let all = client
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(all), vec!["a:1.1.0", "b:1.0.0", "a:1.0.0"]);
    let by_bob = pb::ListModelsRequest {
        created_by: "bob".into(),
        ..Default::default()
    };
    assert_eq!(
        ids(client.list_models(by_bob).await.expect("list").into_inner()),
        vec!["a:1.1.0", "b:1.0.0"]
    );
    let bob_signal = pb::ListModelsRequest {
        created_by: "bob".into(),
        model_type: Some(pb::ModelType::Signal as i32),
        ..Default::default()
    };
    assert_eq!(
        ids(client
            .list_models(bob_signal)
            .await
            .expect("list")
            .into_inner()),
        vec!["a:1.1.0"]
    );
    let none = pb::ListModelsRequest {
        status: Some(S::Production as i32),
        ..Default::default()
    };
    assert!(ids(client.list_models(none).await.expect("list").into_inner()).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn performance_reports_the_highest_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    for (v, sharpe) in [("1.9.0", 1.0), ("1.10.0", 2.5)] {
        let mut h = header("m", v, "alice");
        h.backtest_sharpe = Some(sharpe);
        h.backtest_max_dd = Some(-0.1);
        register(&mut client, h, b"w").await.expect("register");
    }
    let perf = client
        .get_model_performance(pb::GetModelPerformanceRequest {
            model_id: "m".into(),
        })
        .await
        .expect("performance")
        .into_inner();
    assert_eq!(perf.registry_id, "m:1.10.0");
    assert_eq!(perf.backtest_sharpe, Some(2.5));
    assert_eq!(perf.backtest_max_dd, Some(-0.1));
    assert_eq!(perf.status, S::Development as i32);
    let live = perf.live.expect("live figures");
    assert_eq!((live.results, live.tests), (0, 0), "no tests exist yet");
    assert_status(
        client
            .get_model_performance(pb::GetModelPerformanceRequest {
                model_id: "zz".into(),
            })
            .await,
        Code::NotFound,
        "zz",
    );
    server.stop().await;
}
