//! The server's standard services: health and reflection (v1 and v1alpha), and the audit API's
//! input checks.

mod support;

use arbiter::pb;
use support::*;
use tonic_reflection::pb::{v1, v1alpha};

const EXPECTED: [&str; 3] = [
    "arbiter.v1.Admin",
    "arbiter.v1.Registry",
    "grpc.health.v1.Health",
];

#[tokio::test]
async fn reflection_lists_every_service_in_both_protocol_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;

    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("v1 answer")
        .expect("one message");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected v1 response {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in EXPECTED {
        assert!(
            names.iter().any(|n| n == expected),
            "v1 lacks {expected}: {names:?}"
        );
    }

    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    // grpcurl resolves a symbol to its file before calling it; do the same for the health service.
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "grpc.health.v1.Health".into(),
            ),
        ),
    };
    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request, list]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let first = responses.message().await.expect("answer").expect("message");
    assert!(
        matches!(
            first.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
                if !f.file_descriptor_proto.is_empty()
        ),
        "health descriptors are registered: {first:?}"
    );
    let second = responses.message().await.expect("answer").expect("message");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        second.message_response
    else {
        panic!("unexpected v1alpha response {second:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in EXPECTED {
        assert!(
            names.iter().any(|n| n == expected),
            "v1alpha lacks {expected}: {names:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving_for_each_service() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "arbiter.v1.Registry", "arbiter.v1.Admin"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_status(unknown, tonic::Code::NotFound, "");
    server.stop().await;
}

#[tokio::test]
async fn audit_listing_filters_by_entity_and_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let mut client = server.registry().await;
    register_simple(&mut client, "m", "1.0.0").await;
    register_simple(&mut client, "m", "1.1.0").await;
    register_simple(&mut client, "mm", "1.0.0").await;
    let mut admin = server.admin().await;
    let list = |entity: &str, limit: u32| pb::ListAuditEventsRequest {
        entity: entity.into(),
        limit,
    };
    let entities =
        |r: pb::ListAuditEventsResponse| r.events.into_iter().map(|e| e.entity).collect::<Vec<_>>();
    let all = admin
        .list_audit_events(list("", 0))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(entities(all), vec!["m:1.0.0", "m:1.1.0", "mm:1.0.0"]);
    let m = admin
        .list_audit_events(list("m", 0))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(entities(m), vec!["m:1.0.0", "m:1.1.0"]);
    let newest = admin
        .list_audit_events(list("", 1))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(entities(newest), vec!["mm:1.0.0"]);
    assert_status(
        admin.list_audit_events(list("", 10_001)).await,
        tonic::Code::InvalidArgument,
        "limit",
    );
    server.stop().await;
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start(dir.path()).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "arbiter.v1.Allocator".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("status").expect("message");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.begin_stop();
    let next = watch.message().await.expect("status").expect("message");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop((watch, health));
    server.stop().await;
}
