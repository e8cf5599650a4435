//! TLS over real gRPC, with certificates made in the test (rcgen): a TLS server with bearer
//! tokens, mutual TLS mapping a client certificate's CN to a principal, clients that present no
//! certificate or one from a CA the server does not trust, and the command line over https.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbiter::auth::token_digest;
use arbiter::pb::{self, allocator_client::AllocatorClient, registry_client::RegistryClient};
use arbiter::server::{ServerConfig, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

/// A CA, and what it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate (PEM) and its key (PEM) for `names` (SANs), with subject CN `cn`.
    fn sign(&self, names: &[&str], cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// What [`start`] returns: the server's URL, the sender that stops it, and its task.
type Started = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// A server on 127.0.0.1 with TLS (and client certificates required when `client_ca`), with
/// principals "analyst" (token `analyst-token`), "router-ny4" (certificate CN, allocator) and
/// "publisher-1" (certificate CN, publisher and analyst).
async fn start(dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> Started {
    start_with(dir, ca, client_ca, None).await
}

/// [`start`], in `cluster` when given.
async fn start_with(
    dir: &Path,
    ca: &Ca,
    client_ca: Option<&Ca>,
    cluster: Option<arbiter::cluster::ClusterOptions>,
) -> Started {
    let (cert, key) = ca.sign(&["localhost", "127.0.0.1"], "arbiter");
    let auth = format!(
        "[[principal]]\nname = \"analyst\"\nroles = [\"analyst\"]\ntoken_sha256 = {:?}\n\n\
         [[principal]]\nname = \"router-ny4\"\nroles = [\"allocator\"]\ncert_subject_cn = \"router-ny4\"\n\n\
         [[principal]]\nname = \"publisher-1\"\nroles = [\"publisher\", \"analyst\"]\ncert_subject_cn = \"publisher-1\"\n",
        token_digest("analyst-token")
    );
    let mut config = ServerConfig {
        shutdown_grace: Duration::from_secs(2),
        ..ServerConfig::new(dir.join("data"))
    };
    config.security.auth_file = Some(write(dir, "auth.toml", &auth));
    config.cluster = cluster;
    config.security.tls = Some(TlsFiles {
        cert: write(dir, "server.pem", &cert),
        key: write(dir, "server.key", &key),
        client_ca: client_ca.map(|ca| write(dir, "client-ca.pem", &ca.pem())),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().expect("addr").port()
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        arbiter::server::run(listener, config, async move {
            let _ = rx.await;
        })
        .await
        .expect("server");
    });
    // Ready once the TLS port answers a handshake.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(
            url.trim_start_matches("https://")
                .replace("localhost", "127.0.0.1"),
        )
        .await
        .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (url, tx, handle)
}

async fn channel(url: &str, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(url.to_string())
        .expect("url")
        .tls_config(tls)?
        .connect()
        .await
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

#[tokio::test]
async fn tls_with_bearer_tokens_and_the_command_line_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test ca");
    let (url, stop, handle) = start(dir.path(), &ca, None).await;
    let trusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    let mut registry = RegistryClient::new(channel(&url, trusted.clone()).await.expect("connect"));
    registry
        .list_models(with_token(
            pb::ListModelsRequest::default(),
            "analyst-token",
        ))
        .await
        .expect("a token over TLS");
    let err = registry
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    // A server certificate from an unknown CA is refused by the client.
    let stranger = Ca::new("stranger");
    let untrusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(stranger.pem()));
    let refused = match channel(&url, untrusted).await {
        Err(_) => true,
        Ok(ch) => RegistryClient::new(ch)
            .list_models(with_token(
                pb::ListModelsRequest::default(),
                "analyst-token",
            ))
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a client that does not trust the server's CA must not talk to it"
    );

    // The command line: https:// with --ca-cert and --token.
    let ca_path = write(dir.path(), "ca.pem", &ca.pem());
    let server_url = url.clone();
    let cli = move |token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args([
                "models",
                "list",
                "--server",
                &server_url,
                "--json",
                "--ca-cert",
            ])
            .arg(&ca_path)
            .args(["--token", token])
            .output()
            .expect("run the cli")
    };
    let (good, bad) = tokio::task::spawn_blocking(move || (cli("analyst-token"), cli("wrong")))
        .await
        .expect("join");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("UNAUTHENTICATED"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let _ = stop.send(());
    handle.await.expect("server task");
}

#[tokio::test]
async fn mutual_tls_maps_the_certificate_to_a_principal_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test ca");
    let clients = Ca::new("client ca");
    let (url, stop, handle) = start(dir.path(), &ca, Some(&clients)).await;
    let server_ca = Certificate::from_pem(ca.pem());

    let (cert, key) = clients.sign(&[], "router-ny4");
    let router = ClientTlsConfig::new()
        .ca_certificate(server_ca.clone())
        .identity(Identity::from_pem(cert, key));
    let ch = channel(&url, router)
        .await
        .expect("connect with a certificate");
    let err = AllocatorClient::new(ch.clone())
        .allocate(pb::AllocateRequest {
            test_id: "none".into(),
            unit_key: String::new(),
        })
        .await
        .expect_err("no such test");
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the router may allocate: {err:?}"
    );
    let err = RegistryClient::new(ch)
        .list_models(pb::ListModelsRequest::default())
        .await
        .expect_err("not an analyst");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // No certificate, a certificate from another CA, a certificate naming nobody.
    let stranger = Ca::new("stranger");
    let (other_cert, other_key) = stranger.sign(&[], "router-ny4");
    let (nobody_cert, nobody_key) = clients.sign(&[], "nobody");
    for (what, tls, refused_codes) in [
        (
            "no certificate",
            ClientTlsConfig::new().ca_certificate(server_ca.clone()),
            &[Code::Unavailable, Code::Unknown, Code::Internal][..],
        ),
        (
            "a certificate from an untrusted CA",
            ClientTlsConfig::new()
                .ca_certificate(server_ca.clone())
                .identity(Identity::from_pem(other_cert, other_key)),
            &[Code::Unavailable, Code::Unknown, Code::Internal][..],
        ),
        (
            "a certificate naming no principal",
            ClientTlsConfig::new()
                .ca_certificate(server_ca.clone())
                .identity(Identity::from_pem(nobody_cert, nobody_key)),
            &[Code::Unauthenticated][..],
        ),
    ] {
        let answer = match channel(&url, tls).await {
            // The handshake failed at connect: refused, unless the certificate was trusted.
            Err(e) => {
                assert!(refused_codes != [Code::Unauthenticated], "{what}: {e}");
                continue;
            }
            Ok(ch) => {
                AllocatorClient::new(ch)
                    .allocate(pb::AllocateRequest {
                        test_id: "none".into(),
                        unit_key: String::new(),
                    })
                    .await
            }
        };
        let err = answer.expect_err(what);
        assert!(refused_codes.contains(&err.code()), "{what}: {err:?}");
    }
    let _ = stop.send(());
    handle.await.expect("server task");
}

/// The status of the health service `service` at `url`.
async fn health(url: &str, tls: ClientTlsConfig, service: &str) -> Option<i32> {
    let channel = channel(url, tls).await.ok()?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    Some(answer.into_inner().status)
}

/// Waits (bounded) until the health service `service` at `url` is SERVING.
async fn until_serving(url: &str, tls: &ClientTlsConfig, service: &str) {
    for _ in 0..600 {
        if health(url, tls.clone(), service).await == Some(1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{service} at {url} not SERVING within 30 s");
}

/// In cluster mode with mutual TLS, a standby forwards a change to the writer over https: it
/// checks the writer's certificate against `--cluster-peer-ca`, presents its own certificate
/// (the writer requires one), and the writer records the principal the standby authenticated
/// by its client's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_forwards_to_the_writer_over_mutual_tls() {
    let Some(nats) = support::nats::NatsCluster::start(1) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("arbiters and their clients");
    let mut cluster = arbiter::cluster::ClusterOptions::new(vec![nats.url(0)], "tls");
    cluster.replicas = 1;
    cluster.lease_ttl = Duration::from_secs(2);
    cluster.peer_ca = Some(write(dir.path(), "peers.pem", &ca.pem()));
    let (cert, key) = ca.sign(&[], "publisher-1");
    let publisher = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .identity(Identity::from_pem(cert, key));

    let mut servers = Vec::new();
    for name in ["first", "second"] {
        let own = dir.path().join(name);
        std::fs::create_dir_all(&own).expect("dir");
        let started = start_with(&own, &ca, Some(&ca), Some(cluster.clone())).await;
        // The first writes; the second follows it and takes writes by forwarding them.
        let service = match name {
            "first" => "arbiter.v1.Writer",
            _ => "arbiter.v1.Storage",
        };
        until_serving(&started.0, &publisher, service).await;
        servers.push(started);
    }
    let (writer, standby) = (servers[0].0.clone(), servers[1].0.clone());
    assert_eq!(
        health(&standby, publisher.clone(), "arbiter.v1.Writer").await,
        Some(2),
        "the second is a standby"
    );

    let registered = support::register(
        &mut RegistryClient::new(channel(&standby, publisher.clone()).await.expect("connect")),
        support::header("m", "1.0.0", "publisher-1"),
        b"weights",
    )
    .await
    .expect("a registration forwarded over mutual TLS");
    let events = arbiter::pb::admin_client::AdminClient::new(
        channel(&writer, publisher.clone()).await.expect("connect"),
    )
    .list_audit_events(pb::ListAuditEventsRequest {
        entity: registered.registry_id.clone(),
        limit: 10,
    })
    .await
    .expect("audit")
    .into_inner()
    .events;
    support::assert_registered_by(&events, "publisher-1");
    for (stop, handle) in servers
        .into_iter()
        .rev()
        .map(|(_, stop, handle)| (stop, handle))
    {
        let _ = stop.send(());
        handle.await.expect("server task");
    }
}

/// Runs `tests/python/tls_calls.py` (grpcio) against `url`'s port and returns each call's status.
async fn grpcio_calls(
    python: PathBuf,
    url: &str,
    ca: &Path,
    calls: serde_json::Value,
) -> Vec<String> {
    let port = url.rsplit(':').next().expect("port");
    let spec = serde_json::json!({
        "addr": format!("127.0.0.1:{port}"),
        "ca": ca,
        "calls": calls,
    });
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(python)
            .arg(support::python::script("tls_calls.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(spec.to_string().as_bytes())
            .expect("spec");
        child.wait_with_output().expect("python ends")
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// What a client in another language sees, as grpcurl would: grpcio over TLS with bearer tokens
/// (and, against a mutual-TLS server, with a client certificate).
#[tokio::test]
async fn grpcio_over_tls_with_a_token_and_with_a_client_certificate() {
    let Some(python) = support::python::python_with_grpcio() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("test ca");
    let ca_path = write(dir.path(), "ca.pem", &ca.pem());
    let (url, stop, handle) = start(dir.path(), &ca, None).await;
    let codes = grpcio_calls(
        python.clone(),
        &url,
        &ca_path,
        serde_json::json!([
            {"method": "/arbiter.v1.Registry/ListModels", "token": "analyst-token"},
            {"method": "/arbiter.v1.Registry/ListModels"},
            {"method": "/arbiter.v1.Registry/ListModels", "token": "analyst-token-"},
            {"method": "/arbiter.v1.Registry/PromoteModel", "token": "analyst-token"},
            {"method": "/grpc.health.v1.Health/Check"},
        ]),
    )
    .await;
    assert_eq!(
        codes,
        [
            "OK",
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "OK"
        ],
        "a token, none, a wrong one, a role the token lacks, health (open)"
    );
    let _ = stop.send(());
    handle.await.expect("server task");

    let dir = tempfile::tempdir().expect("tempdir");
    let clients = Ca::new("client ca");
    let (url, stop, handle) = start(dir.path(), &ca, Some(&clients)).await;
    let (cert, key) = clients.sign(&[], "router-ny4");
    let cert = write(dir.path(), "router.pem", &cert);
    let key = write(dir.path(), "router.key", &key);
    let stranger = Ca::new("stranger");
    let (other_cert, other_key) = stranger.sign(&[], "router-ny4");
    let other_cert = write(dir.path(), "other.pem", &other_cert);
    let other_key = write(dir.path(), "other.key", &other_key);
    let codes = grpcio_calls(
        python,
        &url,
        &ca_path,
        serde_json::json!([
            // Authenticated as router-ny4: past authentication, the (empty) test is not found.
            {"method": "/arbiter.v1.Allocator/Allocate", "cert": cert, "key": key},
            {"method": "/arbiter.v1.Registry/ListModels", "cert": cert, "key": key},
            {"method": "/arbiter.v1.Allocator/Allocate", "cert": other_cert, "key": other_key},
            {"method": "/arbiter.v1.Allocator/Allocate"},
        ]),
    )
    .await;
    assert_eq!(codes[..2], ["NOT_FOUND", "PERMISSION_DENIED"]);
    for (what, code) in [
        ("a certificate from an untrusted CA", &codes[2]),
        ("no certificate", &codes[3]),
    ] {
        assert_eq!(code, "UNAVAILABLE", "{what}: the handshake fails");
    }
    let _ = stop.send(());
    handle.await.expect("server task");
}
