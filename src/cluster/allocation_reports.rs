//! Allocation counts of decisions made on standbys, sent to the writer: a standby counts its
//! own decisions per test and arm, and about once a second sends what it counted since its last
//! acknowledged report to the writer (a NATS request on [`ClusterOptions::allocation_subject`]).
//! The writer adds them to the test's counts, which it stores with its own, so allocation
//! counts and the sample-ratio check cover every arbiter's decisions.
//!
//! A report is acknowledged once the writer added it; one not acknowledged (no writer during a
//! failover, NATS out of reach) is sent again as it is, and what was counted meanwhile goes in
//! the next one. Reports carry the standby's run id and a sequence number, and a writer adds
//! each report of a run once. What can be lost: what a writer added and had not stored when it
//! crashed (as its own counts of that second), and what a standby counted after its last
//! acknowledged report when it stops following (killed, or taking over). What can count twice:
//! a report a writer added and stored whose acknowledgement was lost, sent again to the next
//! writer (which does not know the run's numbers).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::ClusterOptions;

/// How often a standby reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a standby waits for the writer's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Decisions of one test counted since the last acknowledged report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestAllocations {
    /// The test.
    pub test_id: String,
    /// Decisions per arm.
    pub counts: Vec<u64>,
    /// Expected decisions per arm (the sum of the probability each arm had).
    pub expected: Vec<f64>,
}

/// One report of a standby.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    /// The standby's run: unique to one following of the log.
    run: String,
    /// Numbers the run's reports.
    seq: u64,
    tests: Vec<TestAllocations>,
}

/// A standby's side: every [`REPORT_INTERVAL`] takes the decisions counted since the last
/// acknowledged report from `counted` (cumulative counts per test since this run began), and
/// sends them, until `stop` is set (then once more).
pub async fn report(
    options: &ClusterOptions,
    counted: impl Fn() -> Vec<TestAllocations>,
    mut stop: watch::Receiver<bool>,
) {
    let client = tokio::select! {
        client = options.connect() => match client {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot report allocation counts to the writer");
                return;
            }
        },
        _ = stop.wait_for(|&s| s) => return,
    };
    let run = format!("{:032x}", rand::random::<u128>());
    let subject = options.allocation_subject();
    // What the writer acknowledged, per test (cumulative since this run began).
    let mut reported: HashMap<String, TestAllocations> = HashMap::new();
    let mut seq = 0u64;
    let mut failing = false;
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The report sent and not acknowledged yet, with the totals it brings the writer to: sent
    // again as it is (same number) until it is, so that the writer adds it once.
    let mut pending: Option<(Report, Vec<TestAllocations>)> = None;
    let mut last = false;
    while !last {
        tokio::select! {
            _ = tick.tick() => {}
            // One last report: what was counted since the previous one.
            _ = stop.wait_for(|&s| s) => last = true,
        }
        if pending.is_none() {
            let now = counted();
            let tests: Vec<TestAllocations> = now
                .iter()
                .filter_map(|total| since(total, reported.get(&total.test_id)))
                .collect();
            if tests.is_empty() {
                continue;
            }
            seq += 1;
            let report = Report {
                run: run.clone(),
                seq,
                tests,
            };
            pending = Some((report, now));
        }
        let Some((report, totals)) = &pending else {
            continue;
        };
        let Ok(body) = serde_json::to_vec(report) else {
            pending = None;
            continue;
        };
        let request = client.request(subject.clone(), Bytes::from(body));
        match tokio::time::timeout(ACK_TIMEOUT, request).await {
            Ok(Ok(_)) => {
                if failing {
                    failing = false;
                    tracing::info!("allocation counts reach the writer again");
                }
                for total in totals {
                    reported.insert(total.test_id.clone(), total.clone());
                }
                pending = None;
            }
            outcome => {
                if !failing {
                    failing = true;
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {ACK_TIMEOUT:?}"),
                    };
                    tracing::warn!(error = %why, "allocation counts not acknowledged by the writer; sending them again");
                }
            }
        }
    }
}

/// What `total` adds to `reported` (nothing: `None`).
fn since(total: &TestAllocations, reported: Option<&TestAllocations>) -> Option<TestAllocations> {
    let (counts, expected) = match reported {
        Some(before) if before.counts.len() == total.counts.len() => (
            total
                .counts
                .iter()
                .zip(&before.counts)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect::<Vec<_>>(),
            total
                .expected
                .iter()
                .zip(&before.expected)
                .map(|(now, then)| (now - then).max(0.0))
                .collect(),
        ),
        _ => (total.counts.clone(), total.expected.clone()),
    };
    counts.iter().any(|&c| c > 0).then(|| TestAllocations {
        test_id: total.test_id.clone(),
        counts,
        expected,
    })
}

/// The writer's side: adds every standby's reports with `add`, each once, until `stop` is set.
pub async fn collect(
    options: &ClusterOptions,
    add: impl Fn(&TestAllocations),
    mut stop: watch::Receiver<bool>,
) {
    let subscribed = async {
        let client = options.connect().await?;
        let subscriber = client
            .subscribe(options.allocation_subject())
            .await
            .map_err(|e| crate::storage::StorageError::Replicated(e.to_string()))?;
        Ok::<_, crate::storage::StorageError>((client, subscriber))
    };
    let (client, mut subscriber) = tokio::select! {
        subscribed = subscribed => match subscribed {
            Ok(subscribed) => subscribed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot receive the standbys' allocation counts");
                return;
            }
        },
        _ = stop.wait_for(|&s| s) => return,
    };
    // The last report added, per standby run.
    let mut added: HashMap<String, u64> = HashMap::new();
    loop {
        let message = tokio::select! {
            message = subscriber.next() => match message {
                Some(message) => message,
                None => return,
            },
            _ = stop.wait_for(|&s| s) => return,
        };
        let report: Report = match serde_json::from_slice(&message.payload) {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "an allocation report that does not decode; ignored");
                continue;
            }
        };
        let last = added.entry(report.run.clone()).or_insert(0);
        if report.seq > *last {
            *last = report.seq;
            for test in &report.tests {
                add(test);
            }
        }
        if let Some(reply) = message.reply {
            if let Err(e) = client.publish(reply, Bytes::new()).await {
                tracing::debug!(error = %e, "acknowledging an allocation report failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(counts: &[u64], expected: &[f64]) -> TestAllocations {
        TestAllocations {
            test_id: "t".into(),
            counts: counts.to_vec(),
            expected: expected.to_vec(),
        }
    }

    #[test]
    fn a_report_holds_what_was_counted_since_the_last_acknowledged_one() {
        let first = counted(&[3, 1], &[2.0, 2.0]);
        assert_eq!(since(&first, None), Some(first.clone()));
        let later = counted(&[5, 1], &[3.0, 3.0]);
        assert_eq!(
            since(&later, Some(&first)),
            Some(counted(&[2, 0], &[1.0, 1.0]))
        );
        assert_eq!(since(&later, Some(&later)), None);
    }
}
