//! Drift and drawdown over real gRPC: the detector fires on an arm whose mean return shifts by
//! half a standard deviation and not on a stationary arm, the alarm is audited and reported in
//! the results and in the model's performance, a test that suspends on drift holds the arm at
//! its floor, both survive a restart, and the maximum drawdown matches a hand-computed series.

mod support;

use arbiter::pb::{self, TestStatus as TS};
use support::*;

/// Deterministic standard normal draws (xorshift64* and Box–Muller).
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A test over two fresh models that never stops by itself and has no stop-loss.
async fn quiet_test(server: &TestServer, id: &str, on_drift: pb::DriftAction) {
    let mut registry = server.registry().await;
    let mut models = Vec::new();
    for i in 0..2 {
        let model = register_simple(&mut registry, &format!("{id}_m{i}"), "1.0.0").await;
        models.push(model.registry_id);
    }
    server
        .experiments()
        .await
        .create_test(pb::CreateTestRequest {
            early_stopping: Some(false),
            stop_loss_threshold: Some(-1e6),
            on_drift: on_drift as i32,
            ..test_request(id, &models)
        })
        .await
        .expect("create");
}

/// Sends `values` for `arm` in batches of 100.
async fn send(server: &TestServer, test_id: &str, arm: &str, values: &[f64]) {
    let batches = values
        .chunks(100)
        .enumerate()
        .map(|(i, chunk)| pb::ResultBatch {
            sequence: i as u64,
            results: chunk.iter().map(|&x| result(test_id, arm, x)).collect(),
            ..Default::default()
        })
        .collect();
    ingest(&mut server.allocator().await, batches)
        .await
        .expect("ingest");
}

/// 2000 stationary returns on arm_0; on arm_1 1000 stationary ones, then 600 shifted by
/// `shift` σ.
async fn feed(server: &TestServer, test_id: &str, shift: f64) {
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let (mean, sd) = (2e-4, 1e-3);
    let stationary: Vec<f64> = (0..2000).map(|_| mean + sd * noise.normal()).collect();
    send(server, test_id, "arm_0", &stationary).await;
    let shifted: Vec<f64> = (0..1600)
        .map(|i| mean + if i < 1000 { 0.0 } else { shift * sd } + sd * noise.normal())
        .collect();
    send(server, test_id, "arm_1", &shifted).await;
}

#[tokio::test]
async fn drift_fires_on_a_shifted_arm_only_and_is_audited_reported_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    quiet_test(&server, "t", pb::DriftAction::Unspecified).await;
    feed(&server, "t", 0.5).await;

    let results = test_results(&server, "t").await;
    let (stable, moved) = (&results.arms[0], &results.arms[1]);
    assert!(!stable.drift_detected, "stationary arm: {stable:?}");
    assert_eq!(stable.drift_alarms, 0);
    assert!(moved.drift_detected, "shifted arm: {moved:?}");
    assert_eq!(moved.last_drift_direction, 1, "a rise");
    assert!(
        (1001..=1400).contains(&moved.first_drift_at),
        "found {} results after the shift at 1000",
        moved.first_drift_at as i64 - 1000
    );
    assert!(!moved.suspended, "ALERT changes nothing");
    assert_eq!(results.status, TS::Running as i32);

    let events = audit_events(&server, "t", 0).await;
    let drift: Vec<_> = events
        .iter()
        .filter(|e| e.action == "test.arm_drift")
        .collect();
    assert_eq!(drift.len() as u64, moved.drift_alarms, "{events:?}");
    assert_eq!(drift[0].details["arm_id"], "arm_1");
    assert_eq!(drift[0].details["direction"], "up");

    let performance = server
        .registry()
        .await
        .get_model_performance(pb::GetModelPerformanceRequest {
            model_id: "t_m1".into(),
        })
        .await
        .expect("performance")
        .into_inner();
    let live = performance.live.expect("live figures");
    assert_eq!(live.drift.len(), 1, "{live:?}");
    assert_eq!(
        (
            live.drift[0].test_id.as_str(),
            live.drift[0].arm_id.as_str()
        ),
        ("t", "arm_1")
    );

    // Replayed or read back from a snapshot, the figures are the same.
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    // The allocation table is the policy's, recomputed at start: compare the folded figures.
    let folded = |arms: &[pb::ArmResults]| -> Vec<pb::ArmResults> {
        arms.iter()
            .map(|a| pb::ArmResults {
                allocation_weight: 0.0,
                ..a.clone()
            })
            .collect()
    };
    let after = test_results(&server, "t").await;
    assert_eq!(
        folded(&after.arms),
        folded(&results.arms),
        "restart keeps drift and drawdown"
    );
    assert!(verify_audit_chain(&server).await.ok);
    server.stop().await;
}

#[tokio::test]
async fn a_test_that_suspends_on_drift_holds_the_arm_at_its_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    quiet_test(&server, "s", pb::DriftAction::Suspend).await;
    let test = server
        .experiments()
        .await
        .get_test(pb::GetTestRequest {
            test_id: "s".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(test.on_drift, pb::DriftAction::Suspend as i32);
    // A fall of the mean is held at the floor…
    feed(&server, "s", -0.5).await;
    let results = test_results(&server, "s").await;
    let moved = &results.arms[1];
    assert!(moved.drift_detected && moved.suspended, "{moved:?}");
    assert_eq!(moved.last_drift_direction, -1);
    // Held as low as the other arm's cap allows: two arms capped at 0.8 leave it 0.2. A batch
    // acknowledged within 2 ms of the last refresh leaves the table to the refresher, which
    // runs every 5 ms, later on a loaded machine: wait for it (bounded).
    let held = test
        .min_allocation_per_arm
        .max(1.0 - test.max_allocation_per_arm);
    let mut moved = moved.clone();
    for _ in 0..200 {
        if (moved.allocation_weight - held).abs() < 1e-12 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        moved = test_results(&server, "s").await.arms[1].clone();
    }
    assert!(
        (moved.allocation_weight - held).abs() < 1e-12,
        "held at {held}: {moved:?}"
    );
    let events = audit_events(&server, "s", 0).await;
    let suspended = events
        .iter()
        .find(|e| e.action == "test.arm_suspended")
        .expect("a suspension event");
    assert_eq!(suspended.details["cause"], "drift");

    // …a rise is only reported.
    quiet_test(&server, "r", pb::DriftAction::Suspend).await;
    feed(&server, "r", 0.5).await;
    let risen = &test_results(&server, "r").await.arms[1];
    assert!(risen.drift_detected && !risen.suspended, "{risen:?}");
    server.stop().await;
}

#[tokio::test]
async fn max_drawdown_follows_the_cumulative_return_in_result_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    quiet_test(&server, "d", pb::DriftAction::Unspecified).await;
    // Cumulative: 0.01, 0.03, 0.02, −0.01, 0, 0.04, 0.01 → the largest fall is 0.03 → −0.01.
    let series = [0.01, 0.02, -0.01, -0.03, 0.01, 0.04, -0.03];
    send(&server, "d", "arm_0", &series).await;
    // Only falls: measured from the start (0).
    send(&server, "d", "arm_1", &[-0.005, -0.0025]).await;
    let results = test_results(&server, "d").await;
    let mut cumulative = 0.0f64;
    let (mut peak, mut deepest) = (0.0f64, 0.0f64);
    for x in series {
        cumulative += x;
        peak = peak.max(cumulative);
        deepest = deepest.max(peak - cumulative);
    }
    assert!(
        (deepest - 0.04).abs() < 1e-15,
        "hand computation: {deepest}"
    );
    assert_eq!(results.arms[0].max_drawdown, deepest);
    assert!((results.arms[1].max_drawdown - 0.0075).abs() < 1e-15);
    server.stop().await;
}
