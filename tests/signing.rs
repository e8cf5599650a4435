//! Signed artifacts over real gRPC: with `--require-signed-production`, unsigned versions and
//! versions whose signature no trusted key verifies cannot become PRODUCTION; forged, misattributed
//! and half-given signatures are refused at registration; metadata and VerifyModel report the
//! signature; and the command line's keygen, `register --sign-key` and `sign` agree with the server.

mod support;

use std::path::Path;

use arbiter::pb::{self, ModelStatus as S};
use arbiter::registry::signing;
use arbiter::registry::types::{RegistryId, Sha256Digest};
use support::*;
use tonic::Code;

const SEED: [u8; 32] = [42; 32];

fn signers_file(dir: &Path, public_key: &str) -> std::path::PathBuf {
    let path = dir.join("signers.toml");
    std::fs::write(
        &path,
        format!("[[signer]]\nname = \"release\"\npublic_key = \"{public_key}\"\n"),
    )
    .expect("write");
    path
}

async fn start(dir: &Path, public_key: &str) -> TestServer {
    let mut config = TestServer::config(&dir.join("data"));
    config.security.trusted_signers = Some(signers_file(dir, public_key));
    config.registry.require_signed_production = true;
    TestServer::start_config(config).await
}

fn signed_header(
    version: &str,
    bytes: &[u8],
    signer: &str,
    seed: &[u8; 32],
) -> pb::RegisterModelHeader {
    let id = RegistryId::parse("registry_id", &format!("m:{version}")).expect("id");
    let message = signing::signed_message(&id, &Sha256Digest::of(bytes), None);
    pb::RegisterModelHeader {
        signature: signing::sign(seed, &message).to_vec(),
        signer: signer.into(),
        ..header("m", version, "alice")
    }
}

async fn to_staging(
    registry: &mut pb::registry_client::RegistryClient<tonic::transport::Channel>,
    id: &str,
) {
    for target in [S::Testing, S::Staging] {
        promote(registry, id, target).await.expect("promote");
    }
}

#[tokio::test]
async fn only_versions_signed_by_a_trusted_key_become_production() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &signing::public_key_hex(&SEED)).await;
    let mut registry = server.registry().await;

    register(&mut registry, header("m", "1.0.0", "alice"), b"v1")
        .await
        .expect("unsigned versions may be registered");
    to_staging(&mut registry, "m:1.0.0").await;
    let err = promote(&mut registry, "m:1.0.0", S::Production)
        .await
        .expect_err("unsigned");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not signed"), "{err:?}");

    let signed = register(
        &mut registry,
        signed_header("1.1.0", b"v2", "release", &SEED),
        b"v2",
    )
    .await
    .expect("signed");
    assert_eq!(signed.signer, "release");
    assert_eq!(signed.signature.len(), 64);
    let verified = registry
        .verify_model(pb::ModelRef {
            registry_id: "m:1.1.0".into(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.ok && verified.signature_ok, "{verified:?}");
    assert_eq!(verified.signer, "release");
    to_staging(&mut registry, "m:1.1.0").await;
    promote(&mut registry, "m:1.1.0", S::Production)
        .await
        .expect("signed versions become PRODUCTION");

    // Refused at registration: a signature over other bytes, an unknown signer, half a signature.
    for (what, header) in [
        (
            "forged",
            signed_header("1.2.0", b"other bytes", "release", &SEED),
        ),
        (
            "unknown signer",
            signed_header("1.2.0", b"v3", "mallory", &SEED),
        ),
        (
            "another key",
            signed_header("1.2.0", b"v3", "release", &[1; 32]),
        ),
        (
            "no signer",
            pb::RegisterModelHeader {
                signer: String::new(),
                ..signed_header("1.2.0", b"v3", "release", &SEED)
            },
        ),
    ] {
        let err = register(&mut registry, header, b"v3")
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    server.stop().await;

    // The signer's key is rotated out: its versions no longer verify, nor may become PRODUCTION.
    let other = signing::public_key_hex(&[9; 32]);
    let server = start(dir.path(), &other).await;
    let mut registry = server.registry().await;
    let verified = registry
        .verify_model(pb::ModelRef {
            registry_id: "m:1.1.0".into(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(!verified.ok && !verified.signature_ok, "{verified:?}");
    assert!(verified.message.contains("does not verify"), "{verified:?}");
    server.stop().await;
}

#[tokio::test]
async fn the_command_line_makes_keys_and_signs_what_the_server_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("release.key");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(args)
            .output()
            .expect("run the cli");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let key_path = key.to_str().expect("utf-8").to_string();
    let public_key = run(&["models", "keygen", "--out", &key_path]);
    let server = start(dir.path(), public_key.trim()).await;
    let artifact = dir.path().join("model.bin");
    std::fs::write(&artifact, b"weights").expect("write");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "position_size: 0.02\nmax_leverage: 3\n").expect("write");
    let url = server.url();
    let (artifact, policy) = (
        artifact.to_str().expect("utf-8").to_string(),
        policy.to_str().expect("utf-8").to_string(),
    );
    let registered = tokio::task::spawn_blocking({
        let (url, artifact, policy, key_path) = (
            url.clone(),
            artifact.clone(),
            policy.clone(),
            key_path.clone(),
        );
        move || {
            run(&[
                "models",
                "register",
                "--server",
                &url,
                "--id",
                "m",
                "--version",
                "1.0.0",
                "--type",
                "signal",
                "--file",
                &artifact,
                "--policy",
                &policy,
                "--sign-key",
                &key_path,
                "--signer",
                "release",
            ]);
            run(&[
                "models", "sign", "m:1.0.0", "--file", &artifact, "--policy", &policy, "--key",
                &key_path,
            ])
        }
    })
    .await
    .expect("join");
    let mut registry = server.registry().await;
    let m = metadata(&mut registry, "m:1.0.0").await.expect("metadata");
    assert_eq!(m.signer, "release");
    assert_eq!(
        hex::encode(&m.signature),
        registered.trim(),
        "sign agrees with register"
    );
    assert!(!m.policy_checksum.is_empty());
    let verified = registry
        .verify_model(pb::ModelRef {
            registry_id: "m:1.0.0".into(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.ok && verified.signature_ok, "{verified:?}");
    server.stop().await;
}
