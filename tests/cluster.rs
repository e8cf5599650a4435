//! Cluster mode with the log in NATS JetStream: real nats-server processes (a 3-node JetStream
//! cluster with 3 replicas, `sync_interval: always`) and the real `arbiter` binary.

mod support;

use arbiter::pb;
use support::nats::NatsCluster;
use support::process::{spawn_binary_until, spawn_binary_with, Binary};
use support::*;

const RESULTS_PER_BATCH: usize = 100;

/// The flags of an arbiter in cluster `name` on `urls`: no limit on changes, a 2 s writer
/// lease.
fn cluster_flags<'a>(urls: &'a str, name: &'a str) -> [&'a str; 8] {
    [
        "--cluster",
        urls,
        "--cluster-name",
        name,
        "--change-rate-limit",
        "0",
        "--cluster-lease-secs",
        "2",
    ]
}

/// Starts the first arbiter of a cluster on `dir` with `flags`, registers two models and
/// creates test "t" over them; returns the arbiter and the models.
async fn writer_with_test(dir: &std::path::Path, flags: &[&str]) -> (Binary, Vec<String>) {
    let node = spawn_binary_with(dir, flags);
    let models = register_models(&mut node.registry().await, 2).await;
    node.experiments()
        .await
        .create_test(test_request("t", &models))
        .await
        .expect("create the test");
    (node, models)
}

/// Batch `b`: results with unique ids, spread over both models.
fn batch(b: usize, models: &[String]) -> pb::ResultBatch {
    let results = (0..RESULTS_PER_BATCH)
        .map(|i| {
            let n = b * RESULTS_PER_BATCH + i;
            pb::ResultRecord {
                test_id: "t".into(),
                attribution: Some(pb::result_record::Attribution::ModelRegistryId(
                    models[n % 2].clone(),
                )),
                return_value: (n % 7) as f64 * 0.001 - 0.002,
                result_id: format!("r{n}"),
                ..Default::default()
            }
        })
        .collect();
    pb::ResultBatch {
        sequence: b as u64,
        results,
        ..Default::default()
    }
}

/// The figures of each arm that results determine.
async fn figures(node: &Binary) -> Vec<(String, u64, f64, f64)> {
    arm_figures_on(node.channel().await).await
}

async fn audit(node: &Binary) -> Vec<pb::AuditEvent> {
    node.admin()
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            entity: String::new(),
            limit: 1000,
        })
        .await
        .expect("audit")
        .into_inner()
        .events
}

/// The name of the NATS server leading the log's stream.
async fn stream_leader(url: &str, stream: &str) -> String {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream
        .get_stream(stream)
        .await
        .expect("the log's stream");
    stream
        .info()
        .await
        .expect("stream info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader")
}

/// The object store `bucket`, once JetStream answers (a node just restarted may not yet).
async fn object_store(url: &str, bucket: &str) -> async_nats::jetstream::object_store::ObjectStore {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match jetstream.get_object_store(bucket).await {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() > deadline => panic!("the artifact bucket: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// The names of the objects in the object store `bucket`.
async fn artifact_objects(url: &str, bucket: &str) -> Vec<String> {
    use tokio_stream::StreamExt;
    let store = object_store(url, bucket).await;
    // A node just restarted may time requests out for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let listed = async {
            let mut list = store.list().await.map_err(|e| e.to_string())?;
            let mut names = Vec::new();
            while let Some(info) = list.next().await {
                names.push(info.map_err(|e| e.to_string())?.name);
            }
            Ok::<_, String>(names)
        };
        match listed.await {
            Ok(names) => return names,
            Err(e) if std::time::Instant::now() > deadline => panic!("listing objects: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// Replaces the bytes of the object of version `registry_id` in `bucket`; returns the version.
async fn replace_object(url: &str, bucket: &str, registry_id: &str) -> String {
    let store = object_store(url, bucket).await;
    let objects = artifact_objects(url, bucket).await;
    let name = objects
        .iter()
        .find(|o| o.starts_with(&format!("{registry_id}@")))
        .expect("the version's object");
    store
        .put(name.as_str(), &mut &b"tampered"[..])
        .await
        .expect("replace the object");
    registry_id.to_string()
}

/// Everything acknowledged goes through the stream: results streamed across the death of the
/// stream's leader are all acknowledged, and a node started on an empty data directory (the
/// first node's disk lost with it) rebuilds the same models, test, results and audit trail from
/// the stream alone, knows every result id, and serves every artifact from the object store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_lost_is_rebuilt_from_the_stream() {
    let Some(mut nats) = NatsCluster::start(3) else {
        return;
    };
    let urls = nats.urls();
    let flags = cluster_flags(&urls, "it");
    let first_disk = tempfile::tempdir().expect("tempdir");
    let first = spawn_binary_with(first_disk.path(), &flags);
    let models = register_models(&mut first.registry().await, 2).await;
    // Artifacts live in the object store: one of several chunks, and one whose version is
    // deleted (its object goes with it).
    let big: Vec<u8> = (0..1_500_000u64).map(|i| (i * 7919 % 251) as u8).collect();
    register(
        &mut first.registry().await,
        header("big", "1.0.0", "alice"),
        &big,
    )
    .await
    .expect("register big");
    register_simple(&mut first.registry().await, "gone", "1.0.0").await;
    let deleted = first
        .registry()
        .await
        .delete_model(pb::DeleteModelRequest {
            registry_id: "gone:1.0.0".into(),
            force: false,
            requested_by: "alice".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert!(deleted.deleted);
    first
        .experiments()
        .await
        .create_test(test_request("t", &models))
        .await
        .expect("create the test");
    let mut allocator = first.allocator().await;
    let batches: Vec<pb::ResultBatch> = (0..20).map(|b| batch(b, &models)).collect();
    let mut killed = None;
    for (b, sent) in batches.iter().enumerate() {
        if b == 5 {
            let leader = stream_leader(&nats.url(0), "ARBITER_it").await;
            let index = nats.index_of(&leader).expect("a node of the cluster");
            nats.kill(index);
            killed = Some(index);
        }
        let acks = ingest(&mut allocator, vec![sent.clone()])
            .await
            .expect("batch acknowledged");
        assert_eq!(acks[0].accepted as usize, RESULTS_PER_BATCH, "batch {b}");
    }
    let figures_before = figures(&first).await;
    assert_eq!(
        figures_before.iter().map(|f| f.1).sum::<u64>(),
        20 * RESULTS_PER_BATCH as u64
    );
    let audit_before = audit(&first).await;
    let model_before = metadata(&mut first.registry().await, &models[0])
        .await
        .expect("model");

    // The first node dies with its disk; the stream's old leader comes back.
    first.signal("-KILL");
    first.wait().await;
    drop(first_disk);
    nats.start_node(killed.expect("a leader was killed"));
    // The object store's copy of one artifact is damaged meanwhile.
    let damaged = replace_object(&nats.url(1), "ARBITER_it_artifacts", "model_1:1.0.0").await;

    let second_disk = tempfile::tempdir().expect("tempdir");
    let second = spawn_binary_with(second_disk.path(), &flags);
    assert_eq!(figures(&second).await, figures_before);
    assert_eq!(audit(&second).await, audit_before);
    let model_after = metadata(&mut second.registry().await, &models[0])
        .await
        .expect("model");
    assert_eq!(model_after, model_before);
    let chain = second
        .admin()
        .await
        .verify_audit_chain(pb::VerifyAuditChainRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(chain.ok, "{chain:?}");
    // The artifacts came from the object store, checked against their digests.
    let (_, bytes) = get_model(&mut second.registry().await, "big", "1.0.0")
        .await
        .expect("download big from the rebuilt node");
    assert!(bytes == big, "the artifact differs after the rebuild");
    let verify = |id: &str| {
        let id = id.to_string();
        let node = &second;
        async move {
            node.registry()
                .await
                .verify_model(pb::ModelRef { registry_id: id })
                .await
                .expect("verify")
                .into_inner()
        }
    };
    let verified = verify(&models[0]).await;
    assert!(verified.ok, "{verified:?}");
    // A damaged copy is never installed nor served.
    let verified = verify(&damaged).await;
    assert!(
        !verified.ok && verified.message.contains("cluster's copy"),
        "{verified:?}"
    );
    assert_status(
        get_model(&mut second.registry().await, "model_1", "1.0.0").await,
        tonic::Code::DataLoss,
        "checksum",
    );
    let mut objects = artifact_objects(&nats.url(1), "ARBITER_it_artifacts").await;
    objects.sort();
    let names: Vec<&str> = objects
        .iter()
        .map(|o| o.split_once('@').expect("version@digest").0)
        .collect();
    assert_eq!(names, ["big:1.0.0", "model_0:1.0.0", "model_1:1.0.0"]);
    // Every result id came through the stream: sending everything again changes nothing.
    let acks = ingest(&mut second.allocator().await, batches)
        .await
        .expect("resent");
    assert!(acks
        .iter()
        .all(|a| a.duplicates as usize == RESULTS_PER_BATCH && a.accepted == 0));
    assert_eq!(figures(&second).await, figures_before);
}

/// Starts an arbiter on `dir` that may have to stand by first: resolves once it serves.
fn spawn_standby(dir: &std::path::Path, flags: &[&str]) -> tokio::task::JoinHandle<Binary> {
    let dir = dir.to_path_buf();
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        spawn_binary_with(&dir, &flags)
    })
}

/// Starts an arbiter on `dir` while another writes: resolves once it follows the log and
/// serves as a standby.
async fn spawn_following(dir: &std::path::Path, flags: &[&str]) -> Binary {
    let dir = dir.to_path_buf();
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        spawn_binary_until(&dir, &flags, "standing by: following")
    })
    .await
    .expect("standby")
}

/// One arbiter writes; another stands by, and takes over with everything
/// acknowledged when the writer is killed; a third takes over from the second when it shuts
/// down cleanly (the lease is handed back at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_writer_stops() {
    let Some(_nats) = NatsCluster::start(3) else {
        return;
    };
    let urls = _nats.urls();
    let flags = cluster_flags(&urls, "standby");
    let disks: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (first, models) = writer_with_test(disks[0].path(), &flags).await;
    let batches: Vec<pb::ResultBatch> = (0..10).map(|b| batch(b, &models)).collect();
    ingest(&mut first.allocator().await, batches[..5].to_vec())
        .await
        .expect("acknowledged by the writer");
    let figures_before = figures(&first).await;

    let second = spawn_standby(disks[1].path(), &flags);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        !second.is_finished(),
        "a second arbiter served while the first held the lease"
    );
    let killed = std::time::Instant::now();
    first.signal("-KILL");
    first.wait().await;
    let second = tokio::time::timeout(std::time::Duration::from_secs(60), second)
        .await
        .expect("the standby took over")
        .expect("standby");
    eprintln!(
        "the standby served {:?} after the writer's kill -9",
        killed.elapsed()
    );
    assert!(second
        .log
        .lock()
        .expect("log")
        .iter()
        .any(|l| l.contains("standing by")));
    assert_eq!(figures(&second).await, figures_before);
    let acks = ingest(&mut second.allocator().await, batches.clone())
        .await
        .expect("the new writer takes results");
    let duplicates: u32 = acks.iter().map(|a| a.duplicates).sum();
    let accepted: u32 = acks.iter().map(|a| a.accepted).sum();
    assert_eq!(
        (duplicates as usize, accepted as usize),
        (5 * RESULTS_PER_BATCH, 5 * RESULTS_PER_BATCH)
    );
    let figures_after = figures(&second).await;

    let third = spawn_standby(disks[2].path(), &flags);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!third.is_finished());
    let stopped = std::time::Instant::now();
    second.signal("-TERM");
    assert_eq!(second.wait().await.code(), Some(0));
    let third = tokio::time::timeout(std::time::Duration::from_secs(60), third)
        .await
        .expect("the standby took over")
        .expect("standby");
    eprintln!(
        "the standby served {:?} after the writer's SIGTERM",
        stopped.elapsed()
    );
    assert_eq!(figures(&third).await, figures_after);
}

async fn storage_health(node: &Binary) -> i32 {
    storage_health_on(node.channel().await).await
}

/// Polls `node`'s storage health until it is `status` (bounded).
async fn wait_for_health(node: &Binary, status: i32, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while storage_health(node).await != status {
        assert!(
            std::time::Instant::now() < deadline,
            "storage health not {status} within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Without a quorum of NATS servers the writer reports NOT_SERVING for writes, even when idle
/// (its lease cannot be refreshed), keeps answering Allocate from memory, and a batch sent
/// meanwhile is acknowledged only once the quorum is back; health then returns to SERVING. A
/// standby, which cannot tell it is current, reports NOT_SERVING for writes too and keeps
/// answering Allocate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_nats_quorum_writes_wait_health_says_so_and_allocate_answers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Some(mut nats) = NatsCluster::start(3) else {
        return;
    };
    let urls = nats.urls();
    let flags = cluster_flags(&urls, "quorum");
    let disk = tempfile::tempdir().expect("tempdir");
    let (node, models) = writer_with_test(disk.path(), &flags).await;
    assert_eq!(storage_health(&node).await, ServingStatus::Serving as i32);
    let standby_disk = tempfile::tempdir().expect("tempdir");
    let standby = spawn_following(standby_disk.path(), &flags).await;
    let (serving, not_serving) = (
        ServingStatus::Serving as i32,
        ServingStatus::NotServing as i32,
    );
    let within = std::time::Duration::from_secs(15);
    wait_for_health(&standby, serving, within).await;

    nats.kill(1);
    nats.kill(2);
    wait_for_health(&node, not_serving, within).await;
    wait_for_health(&standby, not_serving, within).await;
    for arbiter in [&node, &standby] {
        let mut allocator = arbiter.allocator().await;
        for _ in 0..100 {
            let allocation = allocate(&mut allocator, "t").await;
            assert!(models.contains(&allocation.model_registry_id));
        }
    }
    // Sent like a client does: again, to the other arbiter, when one answers UNAVAILABLE (the
    // lease can lapse during the outage, and the standby take over).
    let waiting = {
        let urls = [node.url.clone(), standby.url.clone()];
        tokio::spawn(async move {
            for attempt in 0.. {
                let url = urls[attempt % 2].clone();
                let Ok(channel) = tonic::transport::Channel::from_shared(url)
                    .expect("url")
                    .connect()
                    .await
                else {
                    continue;
                };
                let mut allocator = pb::allocator_client::AllocatorClient::new(channel);
                match ingest(&mut allocator, vec![batch(0, &models)]).await {
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    acknowledged => return acknowledged,
                }
            }
            unreachable!("attempts are unbounded")
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "acknowledged without a quorum");

    nats.start_node(1);
    nats.start_node(2);
    let acks = tokio::time::timeout(std::time::Duration::from_secs(60), waiting)
        .await
        .expect("acknowledged once the quorum is back")
        .expect("ingest task")
        .expect("ingest");
    assert_eq!(
        (acks[0].accepted + acks[0].duplicates) as usize,
        RESULTS_PER_BATCH
    );
    let within = std::time::Duration::from_secs(30);
    wait_for_health(&node, serving, within).await;
    wait_for_health(&standby, serving, within).await;
    assert_eq!(
        figures(&node).await.iter().map(|f| f.1).sum::<u64>(),
        RESULTS_PER_BATCH as u64
    );
}

/// The stream's first and last sequence.
async fn stream_bounds(url: &str, stream: &str) -> (u64, u64) {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream
        .get_stream(stream)
        .await
        .expect("the log's stream");
    let state = stream.info().await.expect("stream info").state.clone();
    (state.first_sequence, state.last_sequence)
}

/// With snapshots beside the stream, the writer trims the stream; a node whose store the
/// stream was trimmed past (it was away) replaces its store from the newest snapshot, and a
/// node on an empty disk starts from it: both show the same figures and know every result id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_start_from_the_snapshot_beside_a_trimmed_stream() {
    let Some(nats) = NatsCluster::start(3) else {
        return;
    };
    let urls = nats.urls();
    let mut flags = cluster_flags(&urls, "snap").to_vec();
    flags.extend(["--cluster-snapshot-secs", "1"]);
    let disks: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (first, models) = writer_with_test(disks[0].path(), &flags).await;
    let batches: Vec<pb::ResultBatch> = (0..15).map(|b| batch(b, &models)).collect();
    ingest(&mut first.allocator().await, batches[..5].to_vec())
        .await
        .expect("acknowledged");
    let (_, left_at) = stream_bounds(&nats.url(0), "ARBITER_snap").await;
    // The first node goes away with its store as it is.
    first.signal("-KILL");
    first.wait().await;

    let second = spawn_standby(disks[1].path(), &flags);
    let second = tokio::time::timeout(std::time::Duration::from_secs(60), second)
        .await
        .expect("the standby took over")
        .expect("standby");
    for sent in &batches[5..] {
        ingest(&mut second.allocator().await, vec![sent.clone()])
            .await
            .expect("acknowledged");
    }
    // Snapshots every second move the stream's start past everything the first node holds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (from, _) = stream_bounds(&nats.url(0), "ARBITER_snap").await;
        if from > left_at + 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream was not trimmed past position {left_at} (it starts at {from})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let figures_before = figures(&second).await;
    assert_eq!(
        figures_before.iter().map(|f| f.1).sum::<u64>(),
        15 * RESULTS_PER_BATCH as u64
    );
    let audit_before = audit(&second).await;
    second.signal("-KILL");
    second.wait().await;

    for disk in [&disks[0], &disks[2]] {
        let node = spawn_standby(disk.path(), &flags);
        let node = tokio::time::timeout(std::time::Duration::from_secs(60), node)
            .await
            .expect("took over")
            .expect("node");
        assert_eq!(figures(&node).await, figures_before);
        assert_eq!(audit(&node).await, audit_before);
        let acks = ingest(&mut node.allocator().await, batches.clone())
            .await
            .expect("resent");
        assert!(
            acks.iter()
                .all(|a| a.duplicates as usize == RESULTS_PER_BATCH && a.accepted == 0),
            "{acks:?}"
        );
        node.signal("-TERM");
        assert_eq!(node.wait().await.code(), Some(0));
    }
    let replaced = disks[0].path().join("store.redb");
    assert!(replaced.exists());
}

/// What `pick` takes from test "t"'s results on the arbiter at `url` (on a new connection).
async fn results_of_t<T>(url: String, pick: impl FnOnce(&pb::TestResults) -> T) -> T {
    let channel = tonic::transport::Channel::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let results = pb::experiments_client::ExperimentsClient::new(channel)
        .get_test_results(pb::GetTestResultsRequest {
            test_id: "t".into(),
        })
        .await
        .expect("results")
        .into_inner();
    pick(&results)
}

/// Polls `read` until it equals `want` (at most `within`); returns how long that took.
async fn until_equal<T, F, Fut>(
    want: &T,
    within: std::time::Duration,
    read: F,
) -> std::time::Duration
where
    T: PartialEq + std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let started = std::time::Instant::now();
    loop {
        let got = read().await;
        if &got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "still {got:?} after {within:?}; wanted {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A standby follows the writer: it answers Allocate from the state the writer's entries make
/// (results, a pause, a new test), with decision ids the writer accepts, serves reads equal to
/// the writer's, forwards changes and results to the writer, and takes over with all of it when
/// the writer dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serves_allocate_and_reads_while_following_the_writer() {
    let Some(_nats) = NatsCluster::start(3) else {
        return;
    };
    let urls = _nats.urls();
    let flags = cluster_flags(&urls, "follow");
    let disks: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (writer, models) = writer_with_test(disks[0].path(), &flags).await;
    let batches: Vec<pb::ResultBatch> = (0..10).map(|b| batch(b, &models)).collect();
    ingest(&mut writer.allocator().await, batches[..3].to_vec())
        .await
        .expect("acknowledged by the writer");
    let standby = spawn_following(disks[1].path(), &flags).await;
    let second = std::time::Duration::from_secs(10);
    // Results acknowledged before and after it started reach it.
    ingest(&mut writer.allocator().await, batches[3..6].to_vec())
        .await
        .expect("acknowledged by the writer");
    let lag = until_equal(&figures(&writer).await, second, || figures(&standby)).await;
    eprintln!("the standby showed the writer's results {lag:?} after their acknowledgement");
    // It writes nothing itself, and takes writes (forwarded) once current.
    assert_eq!(
        health_on(standby.channel().await, "arbiter.v1.Writer").await,
        2
    );
    until_equal(&1, second, || async {
        storage_health_on(standby.channel().await).await
    })
    .await;

    // Allocate answers on the standby with ids the writer accepts for their arms.
    let mut allocator = standby.allocator().await;
    let mut decisions = Vec::new();
    for _ in 0..200 {
        let allocation = allocate(&mut allocator, "t").await;
        assert!(allocation.arm_id == "arm_0" || allocation.arm_id == "arm_1");
        assert_eq!(allocation.test_status, pb::TestStatus::Running as i32);
        decisions.push(allocation);
    }
    let writer_ids: std::collections::HashSet<u64> = {
        let mut writer_allocator = writer.allocator().await;
        let mut ids = std::collections::HashSet::new();
        for _ in 0..200 {
            ids.insert(allocate(&mut writer_allocator, "t").await.decision_id);
        }
        ids
    };
    assert!(
        decisions
            .iter()
            .all(|d| !writer_ids.contains(&d.decision_id)),
        "the standby handed out an id the writer handed out"
    );
    let attributed = pb::ResultBatch {
        sequence: 100,
        results: decisions
            .iter()
            .enumerate()
            .map(|(i, d)| pb::ResultRecord {
                test_id: "t".into(),
                attribution: Some(pb::result_record::Attribution::DecisionId(d.decision_id)),
                return_value: 0.001,
                result_id: format!("by-decision-{i}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let acks = ingest(&mut writer.allocator().await, vec![attributed])
        .await
        .expect("results attributed by the standby's decisions");
    assert_eq!(acks[0].accepted as usize, decisions.len(), "{acks:?}");

    // The standby's decisions reach the writer's allocation counts, and reads on both show them.
    let total_allocations = |node: &Binary| results_of_t(node.url.clone(), |r| r.total_allocations);
    let both = (decisions.len() + writer_ids.len()) as u64;
    until_equal(&both, second, || total_allocations(&writer)).await;
    until_equal(&both, second, || total_allocations(&standby)).await;

    // Results sent to the standby are forwarded to the writer: the acknowledgement is the
    // writer's, and both show them.
    let acks = ingest(&mut standby.allocator().await, batches[6..7].to_vec())
        .await
        .expect("forwarded to the writer");
    assert_eq!(acks[0].accepted as usize, RESULTS_PER_BATCH, "{acks:?}");
    let figures_with_forwarded = figures(&writer).await;
    until_equal(&figures_with_forwarded, second, || figures(&standby)).await;
    // A call already forwarded once is not forwarded again (the writer changed meanwhile).
    let mut looped = tonic::Request::new(test_request("t3", &models));
    looped.metadata_mut().insert(
        "x-arbiter-forwarded",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let refused = standby
        .experiments()
        .await
        .create_test(looped)
        .await
        .expect_err("a forwarded call reaching a standby");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("standby"), "{refused:?}");

    // A pause on the writer, and a new test created through the standby, reach the standby's
    // allocations.
    writer
        .experiments()
        .await
        .pause_test(pb::TestActionRequest {
            test_id: "t".into(),
            reason: "follow".into(),
            ..Default::default()
        })
        .await
        .expect("pause");
    let paused = (pb::TestStatus::Paused as i32, "arm_0".to_string());
    until_equal(&paused, second, || async {
        let a = allocate(&mut standby.allocator().await, "t").await;
        (a.test_status, a.arm_id)
    })
    .await;
    standby
        .experiments()
        .await
        .create_test(test_request("t2", &models))
        .await
        .expect("create t2 through the standby");
    until_equal(&true, second, || async {
        standby
            .allocator()
            .await
            .allocate(pb::AllocateRequest {
                test_id: "t2".into(),
                unit_key: String::new(),
            })
            .await
            .is_ok()
    })
    .await;
    // A test stopped through the standby: the standby writes the same final results file as
    // the writer.
    standby
        .experiments()
        .await
        .stop_test(pb::StopTestRequest {
            test_id: "t2".into(),
            reason: "enough".into(),
            ..Default::default()
        })
        .await
        .expect("stop t2 through the standby");
    let final_file = |disk: &std::path::Path| disk.join("ab_tests/results/t2_final.json");
    let writers_file = std::fs::read(final_file(disks[0].path())).expect("the writer's file");
    until_equal(&Some(writers_file), second, || async {
        std::fs::read(final_file(disks[1].path())).ok()
    })
    .await;
    until_equal(&audit(&writer).await, second, || audit(&standby)).await;
    let figures_before = figures(&writer).await;
    until_equal(&figures_before, second, || figures(&standby)).await;

    // The writer dies: the standby takes over with everything and serves as the writer.
    writer.signal("-KILL");
    writer.wait().await;
    let took_over = std::time::Instant::now();
    until_equal(&true, std::time::Duration::from_secs(60), || async {
        standby
            .log
            .lock()
            .expect("log")
            .iter()
            .any(|l| l.contains("arbiter serving"))
    })
    .await;
    eprintln!(
        "the standby wrote {:?} after the writer's kill -9",
        took_over.elapsed()
    );
    assert_eq!(figures(&standby).await, figures_before);
    let acks = ingest(&mut standby.allocator().await, batches.clone())
        .await
        .expect("the new writer takes results");
    let duplicates: u32 = acks.iter().map(|a| a.duplicates).sum();
    let accepted: u32 = acks.iter().map(|a| a.accepted).sum();
    assert_eq!(
        (duplicates as usize, accepted as usize),
        (7 * RESULTS_PER_BATCH, 3 * RESULTS_PER_BATCH)
    );
    assert_eq!(storage_health_on(standby.channel().await).await, 1);
    assert_eq!(
        health_on(standby.channel().await, "arbiter.v1.Writer").await,
        1
    );
}

/// `authorization: Bearer <name>-token` on `request`.
fn as_principal<T>(mut request: tonic::Request<T>, name: &str) -> tonic::Request<T> {
    let value = format!("Bearer {name}-token")
        .parse()
        .expect("header value");
    request.metadata_mut().insert("authorization", value);
    request
}

/// With authentication, a call a standby forwards is its caller's on the writer: the writer's
/// auth file gives its roles and the audit names it. Only an arbiter of the cluster, proving
/// it with the cluster's key, can name a caller to the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_is_its_callers_on_the_writer() {
    let Some(_nats) = NatsCluster::start(3) else {
        return;
    };
    let urls = _nats.urls();
    let secrets = tempfile::tempdir().expect("tempdir");
    let auth_file = secrets.path().join("auth.toml");
    let mut text = String::new();
    for (name, roles) in [
        ("publisher", "\"publisher\", \"analyst\""),
        ("router", "\"allocator\""),
    ] {
        text.push_str(&format!(
            "[[principal]]\nname = {name:?}\nroles = [{roles}]\ntoken_sha256 = {:?}\n\n",
            arbiter::auth::token_digest(&format!("{name}-token"))
        ));
    }
    std::fs::write(&auth_file, text).expect("auth file");
    let auth_path = auth_file.to_str().expect("utf-8 path");
    let mut flags = cluster_flags(&urls, "forward").to_vec();
    flags.extend(["--auth-file", auth_path]);
    let disks: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let writer = spawn_binary_with(disks[0].path(), &flags);
    let standby = spawn_following(disks[1].path(), &flags).await;
    let registration = |created_by: &str| {
        tokio_stream::iter(registration_messages(
            header("m", "1.0.0", created_by),
            b"weights",
            64 * 1024,
        ))
    };

    // The standby forwards a registration by "publisher"; the writer registers it as theirs.
    let registered = standby
        .registry()
        .await
        .register_model(as_principal(
            tonic::Request::new(registration("publisher")),
            "publisher",
        ))
        .await
        .expect("a registration forwarded to the writer")
        .into_inner();
    let events = writer
        .admin()
        .await
        .list_audit_events(as_principal(
            tonic::Request::new(pb::ListAuditEventsRequest {
                entity: registered.registry_id.clone(),
                limit: 10,
            }),
            "publisher",
        ))
        .await
        .expect("audit")
        .into_inner()
        .events;
    assert_registered_by(&events, "publisher");

    // A caller without the role is refused, naming it.
    let refused = standby
        .registry()
        .await
        .register_model(as_principal(
            tonic::Request::new(registration("router")),
            "router",
        ))
        .await
        .expect_err("a router registers no model");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("publisher"), "{refused:?}");

    // Naming a principal to the writer without the cluster's key gets nothing.
    let mut forged = tonic::Request::new(registration(""));
    for (key, value) in [
        ("x-arbiter-forwarded-principal", "publisher".to_string()),
        ("x-arbiter-forward-key", "0".repeat(64)),
    ] {
        forged
            .metadata_mut()
            .insert(key, value.parse().expect("header value"));
    }
    let refused = writer
        .registry()
        .await
        .register_model(forged)
        .await
        .expect_err("a forged forwarded principal");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("forwarding key"), "{refused:?}");
}

/// A client that decides in its own process follows a standby: the standby streams the tables
/// the writer's results make, the client's decision ids and decision counts reach the writer
/// through the standby, and when the writer dies the client keeps deciding and follows the
/// new writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_deciding_locally_follows_a_standby_and_its_counts_reach_the_writer() {
    let Some(_nats) = NatsCluster::start(3) else {
        return;
    };
    let urls = _nats.urls();
    let flags = cluster_flags(&urls, "local");
    let disks: Vec<_> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (mut writer, models) = writer_with_test(disks[0].path(), &flags).await;
    let standby = spawn_following(disks[1].path(), &flags).await;
    let second = std::time::Duration::from_secs(10);
    until_equal(&1, second, || async {
        storage_health_on(standby.channel().await).await
    })
    .await;

    // The client knows only the standby.
    let endpoint = tonic::transport::Endpoint::from_shared(standby.url.clone()).expect("url");
    let allocator = arbiter_client::LocalAllocator::start(
        vec![endpoint.clone()],
        arbiter_client::WatchOptions::new("router-cluster").tests(["t"]),
    );
    assert!(allocator.ready(second).await, "tables from the standby");
    assert_eq!(allocator.probabilities("t").expect("table"), vec![0.5, 0.5]);
    let reporter = arbiter_client::Reporter::start(
        vec![endpoint],
        Some(allocator.clone()),
        arbiter_client::ReporterOptions::new("router-cluster"),
    );

    // Results acknowledged by the writer move the table the client holds.
    let tilted: Vec<pb::ResultBatch> = (0..4)
        .map(|b| pb::ResultBatch {
            sequence: b,
            results: (0..100)
                .map(|i| pb::ResultRecord {
                    test_id: "t".into(),
                    attribution: Some(pb::result_record::Attribution::ModelRegistryId(
                        models[i % 2].clone(),
                    )),
                    return_value: if i % 2 == 1 { 0.02 } else { -0.01 } + (i % 3) as f64 * 1e-4,
                    result_id: format!("tilt-{b}-{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    ingest(&mut writer.allocator().await, tilted)
        .await
        .expect("acknowledged by the writer");
    assert!(
        allocator
            .wait_for_table("t", second, |_, _, p| p[1] > 0.7)
            .await,
        "the writer's new table never reached the client through the standby: {:?}",
        allocator.probabilities("t")
    );

    // Decisions made in the client: results attributed by their ids, and the counts, reach the
    // writer through the standby.
    let mut counts = [0u64; 2];
    for _ in 0..500 {
        let d = allocator.allocate("t", "").expect("decision");
        counts[d.arm_index()] += 1;
        reporter.report(d.result(0.001, "")).await;
    }
    assert!(reporter.flush(second).await, "acknowledged");
    let stats = reporter.stats();
    assert_eq!((stats.accepted, stats.rejected), (500, 0), "{stats:?}");
    let allocations = |node: &Binary| {
        results_of_t(node.url.clone(), |r| {
            r.arms.iter().map(|a| a.allocations).collect::<Vec<u64>>()
        })
    };
    // The writer's own count is 0: every decision was the client's.
    until_equal(&counts.to_vec(), second, || allocations(&writer)).await;
    until_equal(&counts.to_vec(), second, || allocations(&standby)).await;

    // The writer dies: the client keeps deciding from its table, then the standby takes over
    // and streams again.
    writer.child.kill().expect("kill -9");
    writer.child.wait().expect("reaped");
    for _ in 0..100 {
        allocator
            .allocate("t", "")
            .expect("decision while the writer is gone");
    }
    until_equal(&1, std::time::Duration::from_secs(30), || async {
        health_on(standby.channel().await, "arbiter.v1.Writer").await
    })
    .await;
    let mut waited = std::time::Duration::ZERO;
    while allocator.freshness() != arbiter_client::Freshness::Current {
        assert!(waited < second, "never current again after the handover");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        waited += std::time::Duration::from_millis(20);
    }
    assert!(
        reporter.flush(second).await,
        "the counts reach the new writer"
    );
    let after = allocations(&standby).await;
    assert_eq!(after.iter().sum::<u64>(), 600, "{after:?}");
}
