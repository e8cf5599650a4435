//! Authentication and roles over real gRPC: every RPC under every role (allowed, or
//! PERMISSION_DENIED naming the role), calls without or with wrong credentials, a token revoked by
//! reloading the auth file on SIGHUP, actor fields that are not the caller, the four-eyes rule
//! with the creator's own token, and, without an auth file, actor fields that could impersonate.

mod support;

use std::path::Path;

use arbiter::auth::token_digest;
use arbiter::pb::{self, ModelStatus as S};
use support::*;
use tonic::metadata::MetadataValue;
use tonic::Code;

/// One principal per role, named after it, with the token `<role>-token`; and "alice"
/// (publisher, approver), "bob" (approver).
fn auth_file(dir: &Path, without: &[&str]) -> std::path::PathBuf {
    let mut text = String::new();
    let principals: [(&str, &[&str]); 9] = [
        ("allocator", &["allocator"]),
        ("streamer", &["streamer"]),
        ("analyst", &["analyst"]),
        ("experimenter", &["experimenter"]),
        ("publisher", &["publisher"]),
        ("approver", &["approver"]),
        ("admin", &["admin"]),
        ("alice", &["publisher", "approver", "analyst"]),
        ("bob", &["approver", "analyst"]),
    ];
    for (name, roles) in principals {
        if without.contains(&name) {
            continue;
        }
        let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
        text.push_str(&format!(
            "[[principal]]\nname = {name:?}\nroles = [{}]\ntoken_sha256 = {:?}\n\n",
            roles.join(", "),
            token_digest(&format!("{name}-token"))
        ));
    }
    let path = dir.join("auth.toml");
    std::fs::write(&path, text).expect("write auth file");
    path
}

async fn start_with_auth(dir: &Path) -> TestServer {
    let mut config = TestServer::config(&dir.join("data"));
    config.security.auth_file = Some(auth_file(dir, &[]));
    TestServer::start_config(config).await
}

/// Sends SIGHUP to this process: every in-process server reloads its auth file.
#[cfg(unix)]
#[allow(unsafe_code)] // one FFI call to kill(2)
fn reload_auth_files() {
    // SAFETY: sends a signal to this process, whose SIGHUP handler the server installed.
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
}

/// `message` as a request carrying `name`'s token (none for `None`).
fn as_<T>(name: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(name) = name {
        let value: MetadataValue<_> = format!("Bearer {name}-token").parse().expect("header");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Sends raw protobuf bytes (empty: every field at its default) to a method path.
#[derive(Debug, Default, Clone)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// The row of every arbiter RPC, as the role table has it.
const ROWS: [(&str, &str); 23] = [
    ("Allocator/Allocate", "allocator"),
    ("Allocator/AllocateStream", "allocator"),
    ("Allocator/RecordResult", "streamer"),
    ("Allocator/IngestResults", "streamer"),
    ("Registry/GetModel", "analyst"),
    ("Registry/GetModelMetadata", "analyst"),
    ("Registry/ListModels", "analyst"),
    ("Registry/VerifyModel", "analyst"),
    ("Registry/GetModelPerformance", "analyst"),
    ("Experiments/GetTest", "analyst"),
    ("Experiments/ListTests", "analyst"),
    ("Experiments/GetTestResults", "analyst"),
    ("Experiments/GetTestHistory", "analyst"),
    ("Experiments/EstimateSampleSize", "analyst"),
    ("Admin/ListAuditEvents", "analyst"),
    ("Admin/VerifyAuditChain", "analyst"),
    ("Experiments/CreateTest", "experimenter"),
    ("Experiments/PauseTest", "experimenter"),
    ("Experiments/ResumeTest", "experimenter"),
    ("Experiments/StopTest", "experimenter"),
    ("Registry/RegisterModel", "publisher"),
    ("Registry/PromoteModel", "publisher"),
    ("Registry/DeleteModel", "publisher"),
];

#[tokio::test]
async fn every_rpc_under_every_role_is_allowed_exactly_by_its_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_auth(dir.path()).await;
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    let roles = [
        "allocator",
        "streamer",
        "analyst",
        "experimenter",
        "publisher",
        "approver",
        "admin",
    ];
    for (method, row) in ROWS {
        let path = format!("/arbiter.v1.{method}");
        for role in roles {
            raw.ready().await.expect("ready");
            let answer = raw
                .unary(
                    as_(Some(role), Vec::new()),
                    http::uri::PathAndQuery::try_from(path.as_str()).expect("path"),
                    RawCodec,
                )
                .await;
            let code = answer.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            let allowed = role == row
                || role == "admin"
                || (method == "Registry/PromoteModel" && role == "approver");
            if allowed {
                assert_ne!(
                    code,
                    Code::PermissionDenied,
                    "{role} on {method}: {answer:?}"
                );
                assert_ne!(
                    code,
                    Code::Unauthenticated,
                    "{role} on {method}: {answer:?}"
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{role} on {method}: {answer:?}"
                );
                let message = answer.expect_err("denied").message().to_string();
                assert!(
                    message.contains(&format!("role {row:?}")),
                    "{method}: {message}"
                );
            }
        }
        // Without credentials, nothing.
        raw.ready().await.expect("ready");
        let err = raw
            .unary(
                as_(None, Vec::new()),
                http::uri::PathAndQuery::try_from(path.as_str()).expect("path"),
                RawCodec,
            )
            .await
            .expect_err("unauthenticated");
        assert_eq!(err.code(), Code::Unauthenticated, "{method}");
    }
    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no credentials");
    server.stop().await;
}

#[tokio::test]
async fn promotions_and_deletions_need_the_role_of_what_they_touch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_auth(dir.path()).await;
    let mut registry = server.registry().await;
    registry
        .register_model(as_(
            Some("publisher"),
            tokio_stream::iter(registration_messages(header("m", "1.0.0", ""), b"w", 64)),
        ))
        .await
        .expect("register");
    let promote = |who: &'static str, target: S| {
        as_(
            Some(who),
            pb::PromoteModelRequest {
                registry_id: "m:1.0.0".into(),
                target_status: target as i32,
                ..Default::default()
            },
        )
    };
    for target in [S::Testing, S::Staging] {
        registry
            .promote_model(promote("publisher", target))
            .await
            .expect("publisher promotes up to STAGING");
    }
    let err = registry
        .promote_model(promote("publisher", S::Production))
        .await
        .expect_err("publisher cannot promote to PRODUCTION");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("approver"), "{err:?}");
    let production = registry
        .promote_model(promote("approver", S::Production))
        .await
        .expect("approver promotes")
        .into_inner();
    assert_eq!(production.approved_by, "approver");
    assert_eq!(production.created_by, "publisher");
    let err = registry
        .promote_model(promote("publisher", S::Deprecated))
        .await
        .expect_err("out of PRODUCTION needs the approver");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let delete = |who: &'static str, force: bool| {
        as_(
            Some(who),
            pb::DeleteModelRequest {
                registry_id: "m:1.0.0".into(),
                force,
                ..Default::default()
            },
        )
    };
    let err = registry
        .delete_model(delete("publisher", true))
        .await
        .expect_err("a forced delete needs admin");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = registry
        .delete_model(delete("publisher", false))
        .await
        .expect_err("PRODUCTION without force");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    registry
        .delete_model(delete("admin", true))
        .await
        .expect("admin deletes");
    // The audit names the principals.
    let events = server
        .admin()
        .await
        .list_audit_events(as_(
            Some("analyst"),
            pb::ListAuditEventsRequest {
                entity: "m:1.0.0".into(),
                limit: 0,
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .events;
    let actors: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        actors,
        vec![
            ("model.register", "publisher"),
            ("model.promote", "publisher"),
            ("model.promote", "publisher"),
            ("model.promote", "approver"),
            ("model.delete", "admin"),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn actors_are_the_caller_and_the_creator_can_never_approve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_auth(dir.path()).await;
    let mut registry = server.registry().await;
    // Claiming to be someone else.
    let err = registry
        .register_model(as_(
            Some("alice"),
            tokio_stream::iter(registration_messages(header("m", "1.0.0", "bob"), b"w", 64)),
        ))
        .await
        .expect_err("not alice");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("created_by"), "{err:?}");
    registry
        .register_model(as_(
            Some("alice"),
            tokio_stream::iter(registration_messages(
                header("m", "1.0.0", "alice"),
                b"w",
                64,
            )),
        ))
        .await
        .expect("alice registers as herself");
    for target in [S::Testing, S::Staging] {
        registry
            .promote_model(as_(
                Some("alice"),
                pb::PromoteModelRequest {
                    registry_id: "m:1.0.0".into(),
                    target_status: target as i32,
                    ..Default::default()
                },
            ))
            .await
            .expect("promote");
    }
    // Alice holds the approver role, but she created the model: her own token cannot approve it,
    // whatever approved_by says.
    for approved_by in ["", "alice", "Alice"] {
        let err = registry
            .promote_model(as_(
                Some("alice"),
                pb::PromoteModelRequest {
                    registry_id: "m:1.0.0".into(),
                    target_status: S::Production as i32,
                    approved_by: approved_by.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("four eyes");
        assert!(
            matches!(
                err.code(),
                Code::FailedPrecondition | Code::PermissionDenied
            ),
            "{approved_by:?}: {err:?}"
        );
    }
    let err = registry
        .promote_model(as_(
            Some("alice"),
            pb::PromoteModelRequest {
                registry_id: "m:1.0.0".into(),
                target_status: S::Production as i32,
                approved_by: "bob".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("alice cannot sign as bob");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    registry
        .promote_model(as_(
            Some("bob"),
            pb::PromoteModelRequest {
                registry_id: "m:1.0.0".into(),
                target_status: S::Production as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("bob approves");

    // Test changes name their actor too: only as the caller.
    let mut experiments = server.experiments().await;
    let err = experiments
        .create_test(as_(
            Some("experimenter"),
            pb::CreateTestRequest {
                created_by: "alice".into(),
                ..test_request("t", &["m:1.0.0".to_string(), "m:1.0.0".to_string()])
            },
        ))
        .await
        .expect_err("not alice");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("created_by"), "{err:?}");
    let err = experiments
        .pause_test(as_(
            Some("experimenter"),
            pb::TestActionRequest {
                test_id: "t".into(),
                requested_by: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("not alice");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("requested_by"), "{err:?}");
    let err = experiments
        .stop_test(as_(
            Some("experimenter"),
            pb::StopTestRequest {
                test_id: "t".into(),
                requested_by: "alice".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("not alice");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("requested_by"), "{err:?}");
    let mut registry = server.registry().await;
    let err = registry
        .delete_model(as_(
            Some("alice"),
            pb::DeleteModelRequest {
                registry_id: "m:1.0.0".into(),
                requested_by: "bob".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("not bob");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_token_removed_from_the_auth_file_stops_working_after_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_auth(dir.path()).await;
    let list = || as_(Some("analyst"), pb::ListModelsRequest::default());
    let mut registry = server.registry().await;
    registry.list_models(list()).await.expect("valid token");
    let err = registry
        .list_models({
            let mut r = list();
            r.metadata_mut()
                .insert("authorization", "Bearer wrong".parse().expect("header"));
            r
        })
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // A broken file keeps the old table.
    std::fs::write(dir.path().join("auth.toml"), "[[principal]]\nname = 3").expect("write");
    reload_auth_files();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    registry.list_models(list()).await.expect("still valid");

    auth_file(dir.path(), &["analyst"]);
    reload_auth_files();
    let mut revoked = false;
    for _ in 0..50 {
        if registry.list_models(list()).await.is_err() {
            revoked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(revoked, "the revoked token still works");
    let err = registry.list_models(list()).await.expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn without_authentication_actor_fields_cannot_impersonate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut registry = server.registry().await;
    register_simple(&mut registry, "m", "1.0.0").await; // created by "alice"
    for target in [S::Testing, S::Staging] {
        // No approved_by on a move below PRODUCTION: audited as anonymous, not as the creator.
        registry
            .promote_model(pb::PromoteModelRequest {
                registry_id: "m:1.0.0".into(),
                target_status: target as i32,
                ..Default::default()
            })
            .await
            .expect("promote");
    }
    for approver in ["Alice", "ALICE"] {
        let err = promote_as(&mut registry, approver).await;
        assert_eq!(
            err.code(),
            Code::FailedPrecondition,
            "{approver:?}: {err:?}"
        );
    }
    for approver in [" alice", "alice\u{200b}", "bob\r\nactor=system"] {
        let err = promote_as(&mut registry, approver).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{approver:?}: {err:?}");
    }
    let events = audit_events(&server, "m:1.0.0", 0).await;
    let actors: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, vec!["alice", "anonymous", "anonymous"]);
    server.stop().await;
}

async fn promote_as(
    registry: &mut pb::registry_client::RegistryClient<tonic::transport::Channel>,
    approver: &str,
) -> tonic::Status {
    registry
        .promote_model(pb::PromoteModelRequest {
            registry_id: "m:1.0.0".into(),
            target_status: S::Production as i32,
            approved_by: approver.into(),
            ..Default::default()
        })
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn without_authentication_the_server_stays_on_loopback_unless_told() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let run = arbiter::server::run(
        listener,
        TestServer::config(dir.path()),
        std::future::pending(),
    );
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .expect("refuses at once")
        .expect_err("refused");
    assert!(err.to_string().contains("without authentication"), "{err}");
    assert!(
        err.to_string().contains("--insecure-allow-unauthenticated"),
        "{err}"
    );

    let listener = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let mut config = TestServer::config(dir.path());
    config.security.insecure_allow_unauthenticated = true;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(arbiter::server::run(listener, config, async move {
        let _ = rx.await;
    }));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!serving.is_finished(), "serves when told to");
    let _ = tx.send(());
    serving.await.expect("join").expect("clean stop");
}

/// The command line with `--token` acts as the token's principal: it sends no actor of its own
/// (not `$USER`), so a registration, a test and a stop are recorded under the principal.
#[tokio::test]
async fn the_command_line_with_a_token_acts_as_its_principal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_auth(dir.path()).await;
    let url = format!("http://{}", server.addr);
    let artifact = dir.path().join("model.bin");
    std::fs::write(&artifact, b"weights").expect("artifact");
    let cli = move |who: &str, args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(args)
            .args(["--server", &url, "--token", &format!("{who}-token")])
            .env("USER", "someone-else")
            .output()
            .expect("run the cli");
        assert!(
            output.status.success(),
            "{who} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let artifact = artifact.display().to_string();
    let script = move || {
        for version in ["1.0.0", "2.0.0"] {
            cli(
                "publisher",
                &[
                    "models",
                    "register",
                    "--id",
                    "m",
                    "--version",
                    version,
                    "--type",
                    "signal",
                ]
                .into_iter()
                .chain(["--file", &artifact])
                .collect::<Vec<_>>(),
            );
        }
        cli(
            "experimenter",
            &[
                "tests",
                "create",
                "--id",
                "t",
                "--models",
                "m:1.0.0,m:2.0.0",
            ],
        );
        cli("experimenter", &["tests", "stop", "t", "--reason", "done"]);
    };
    tokio::task::spawn_blocking(script).await.expect("join");

    let mut registry = server.registry().await;
    let metadata = registry
        .get_model_metadata(as_(
            Some("analyst"),
            pb::ModelRef {
                registry_id: "m:1.0.0".into(),
            },
        ))
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(metadata.created_by, "publisher");
    let events = server
        .admin()
        .await
        .list_audit_events(as_(
            Some("analyst"),
            pb::ListAuditEventsRequest {
                entity: "t".into(),
                limit: 10,
            },
        ))
        .await
        .expect("audit")
        .into_inner()
        .events;
    let actors: Vec<&str> = events.iter().map(|e| e.actor.as_str()).collect();
    assert!(
        !actors.is_empty() && actors.iter().all(|a| *a == "experimenter"),
        "{actors:?}"
    );
    server.stop().await;
}

/// A stream opened before a reload that removes its principal ends at its next message.
#[cfg(unix)]
#[tokio::test]
async fn streams_of_a_revoked_principal_end_at_their_next_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_auth(dir.path()).await;
    let mut registry = server.registry().await;
    let mut models = Vec::new();
    for i in 0..2 {
        let header = pb::RegisterModelHeader {
            created_by: String::new(),
            ..header(&format!("m{i}"), "1.0.0", "")
        };
        let messages = registration_messages(header, b"weights", 1024);
        let mut request = tonic::Request::new(tokio_stream::iter(messages));
        request.metadata_mut().insert(
            "authorization",
            "Bearer publisher-token".parse().expect("header"),
        );
        models.push(
            registry
                .register_model(request)
                .await
                .expect("register")
                .into_inner()
                .registry_id,
        );
    }
    server
        .experiments()
        .await
        .create_test(as_(
            Some("experimenter"),
            pb::CreateTestRequest {
                created_by: String::new(),
                ..test_request("t", &models)
            },
        ))
        .await
        .expect("create");

    let mut allocator = server.allocator().await;
    let (alloc_tx, alloc_rx) = tokio::sync::mpsc::channel(4);
    let mut allocations = allocator
        .allocate_stream(as_(
            Some("allocator"),
            tokio_stream::wrappers::ReceiverStream::new(alloc_rx),
        ))
        .await
        .expect("open AllocateStream")
        .into_inner();
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(4);
    let mut acks = allocator
        .ingest_results(as_(
            Some("streamer"),
            tokio_stream::wrappers::ReceiverStream::new(batch_rx),
        ))
        .await
        .expect("open IngestResults")
        .into_inner();
    let request = || pb::AllocateRequest {
        test_id: "t".into(),
        unit_key: String::new(),
    };
    let batch = |sequence| pb::ResultBatch {
        sequence,
        results: vec![result("t", "arm_0", 0.01)],
        ..Default::default()
    };
    alloc_tx.send(request()).await.expect("send");
    allocations
        .message()
        .await
        .expect("answer")
        .expect("an allocation");
    batch_tx.send(batch(1)).await.expect("send");
    acks.message().await.expect("ack").expect("an ack");

    auth_file(dir.path(), &["allocator", "streamer"]);
    reload_auth_files();
    // The reload is asynchronous: wait until a new call is refused.
    let mut reloaded = false;
    for _ in 0..100 {
        let answer = allocator.allocate(as_(Some("allocator"), request())).await;
        if answer.is_err_and(|e| e.code() == Code::Unauthenticated) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reloaded, "the reload did not take effect");
    alloc_tx.send(request()).await.expect("send");
    let err = allocations.message().await.expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
    batch_tx.send(batch(2)).await.expect("send");
    let err = acks.message().await.expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    server.stop().await;
}

/// An authorization header decides, and must be one well-formed `Bearer <token>`.
#[tokio::test]
async fn malformed_or_empty_authorization_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_with_auth(dir.path()).await;
    let mut registry = server.registry().await;
    for (what, values) in [
        ("an empty token", &["Bearer "][..]),
        ("another scheme", &["Basic YW5hbHlzdDp4"][..]),
        ("no scheme", &["analyst-token"][..]),
        (
            "two headers",
            &["Bearer analyst-token", "Bearer admin-token"][..],
        ),
    ] {
        let mut request = tonic::Request::new(pb::ListModelsRequest::default());
        for value in values {
            request
                .metadata_mut()
                .append("authorization", value.parse().expect("header"));
        }
        let err = registry.list_models(request).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }
    server.stop().await;
}
