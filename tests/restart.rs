//! Durability end to end: restart on the same directory, uploads cut off mid-stream, and a
//! tampered audit log.

mod support;

use std::time::Duration;

use arbiter::pb::{self, ModelStatus as S};
use support::*;

#[tokio::test]
async fn restart_keeps_metadata_artifacts_and_the_audit_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = artifact_bytes(3 * 1024 * 1024, 21);
    let (registered, promoted) = {
        let server = TestServer::start(dir.path()).await;
        let mut client = server.registry().await;
        let registered = register(&mut client, header("m", "1.0.0", "alice"), &bytes)
            .await
            .expect("register");
        for step in [S::Testing, S::Staging] {
            promote(&mut client, "m:1.0.0", step)
                .await
                .expect("promote");
        }
        let promoted = promote(&mut client, "m:1.0.0", S::Production)
            .await
            .expect("production");
        register_simple(&mut client, "m", "1.1.0").await;
        drop(client);
        server.stop().await;
        (registered, promoted)
    };

    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    let (meta, downloaded) = get_model(&mut client, "m", "")
        .await
        .expect("latest production");
    assert_eq!(meta, promoted);
    assert_eq!(meta.model_checksum, registered.model_checksum);
    assert!(downloaded == bytes, "artifact bytes survive a restart");
    let all = client
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.models.len(), 2);

    let mut admin = server.admin().await;
    let chain = admin
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(chain.ok, "{chain:?}");
    assert_eq!(chain.events_checked, 5, "register, 3 promotions, register");
    // The chain continues where it left off.
    promote(&mut client, "m:1.1.0", S::Testing)
        .await
        .expect("promote after restart");
    let chain = admin
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(chain.ok && chain.events_checked == 6, "{chain:?}");
    let events = admin
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .events;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    assert!(events.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    server.stop().await;
}

#[tokio::test]
async fn an_upload_cut_off_mid_stream_leaves_no_trace() {
    use pb::register_model_request::Part;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<pb::RegisterModelRequest>(16);
    let mut client = server.registry().await;
    let call = tokio::spawn(async move {
        client
            .register_model(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(pb::RegisterModelRequest {
        part: Some(Part::Header(header("m", "1.0.0", "alice"))),
    })
    .await
    .expect("send header");
    for i in 0..8 {
        let chunk = artifact_bytes(64 * 1024, i + 1);
        tx.send(pb::RegisterModelRequest {
            part: Some(Part::Chunk(chunk)),
        })
        .await
        .expect("send chunk");
    }
    // Wait until the server has started writing, then drop the client mid-stream.
    let tmp = dir.path().join("tmp");
    for _ in 0..200 {
        if !dir_entries(&tmp).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !dir_entries(&tmp).is_empty(),
        "the upload reached the server"
    );
    call.abort();
    let _ = call.await;
    drop(tx);

    for _ in 0..500 {
        if dir_entries(&tmp).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dir_entries(&tmp).is_empty(), "partial upload removed");
    assert!(
        dir_entries(&dir.path().join("artifacts")).is_empty(),
        "no artifact installed"
    );
    let mut client = server.registry().await;
    assert_status(
        metadata(&mut client, "m:1.0.0").await,
        tonic::Code::NotFound,
        "m:1.0.0",
    );
    let chain = server
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify");
    assert_eq!(
        chain.into_inner().events_checked,
        0,
        "no audit event for an aborted upload"
    );

    let bytes = artifact_bytes(100_000, 9);
    let m = register(&mut client, header("m", "1.0.0", "alice"), &bytes)
        .await
        .expect("same version again");
    assert_eq!(m.model_checksum, sha256_hex(&bytes));
    server.stop().await;
}

#[tokio::test]
async fn tampering_with_an_audit_event_is_reported_at_its_sequence_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let server = TestServer::start(dir.path()).await;
        let mut client = server.registry().await;
        for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
            register_simple(&mut client, "m", v).await;
        }
        drop(client);
        server.stop().await;
    }
    // Rewrite the actor of event 3 directly in sled while the server is down.
    let original = {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open sled");
        let key = [&b"audit/"[..], &3u64.to_be_bytes()].concat();
        let stored = db
            .get(&key)
            .expect("read")
            .expect("event 3 exists")
            .to_vec();
        let text = String::from_utf8(stored[1..].to_vec()).expect("json");
        assert!(text.contains("\"actor\":\"alice\""), "{text}");
        let mut forged = vec![stored[0]];
        forged.extend_from_slice(
            text.replace("\"actor\":\"alice\"", "\"actor\":\"mallory\"")
                .as_bytes(),
        );
        db.insert(&key, forged).expect("write");
        db.flush().expect("flush");
        stored
    };
    let server = TestServer::start(dir.path()).await;
    let chain = server
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(!chain.ok);
    assert_eq!(chain.first_bad_seq, Some(3));
    assert_eq!(chain.events_checked, 3);
    assert!(chain.message.contains("hash"), "{chain:?}");
    server.stop().await;

    // Restore event 3 and remove the newest event: truncation is caught by the recorded head.
    {
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open sled");
        db.insert([&b"audit/"[..], &3u64.to_be_bytes()].concat(), original)
            .expect("restore");
        db.remove([&b"audit/"[..], &4u64.to_be_bytes()].concat())
            .expect("remove");
        db.flush().expect("flush");
    }
    let server = TestServer::start(dir.path()).await;
    let chain = server
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(!chain.ok);
    assert_eq!(chain.first_bad_seq, Some(4), "{chain:?}");
    assert!(chain.message.contains("recorded head is 4"), "{chain:?}");
    server.stop().await;
}

#[tokio::test]
async fn orphaned_artifact_files_are_swept_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let server = TestServer::start(dir.path()).await;
        let mut client = server.registry().await;
        register_simple(&mut client, "m", "1.0.0").await;
        drop(client);
        server.stop().await;
    }
    // A crash between installing a file and committing its metadata leaves a file like this one.
    std::fs::write(dir.path().join("artifacts/m/2.0.0.bin"), b"orphan").expect("write orphan");
    std::fs::write(dir.path().join("tmp/upload-1-1"), b"partial").expect("write partial");
    let server = TestServer::start(dir.path()).await;
    assert!(
        !dir.path().join("artifacts/m/2.0.0.bin").exists(),
        "orphan swept"
    );
    assert!(
        dir.path().join("artifacts/m/1.0.0.bin").exists(),
        "owned file kept"
    );
    assert!(
        dir_entries(&dir.path().join("tmp")).is_empty(),
        "tmp cleared"
    );
    let mut client = server.registry().await;
    register_simple(&mut client, "m", "2.0.0").await;
    server.stop().await;
}
