//! `Allocator.WatchAllocations`: streams allocation tables to clients that decide in their own
//! process. The first update holds every watched table; after it, the tables that changed,
//! coalesced (a test's table goes out at most once per coalescing window), and every second an
//! empty update while this arbiter's view is current, so a client can tell a quiet stream from
//! a stale one. Every update says whether the view was current when it was sent.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::experiment_convert::pb_test_status;
use super::{authn, status};
use crate::auth::Identity;
use crate::experiment::types::TestId;
use crate::experiment::watch::{check_client_id, WatchedTable};
use crate::experiment::{ExperimentError, Experiments};
use crate::pb;

/// How often, at most, a watching client gets a test's table by default.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(10);

/// How often a watcher hears from a current arbiter when no table changes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Most tests one watch may name.
const MAX_NAMED_TESTS: usize = 10_000;

/// Updates waiting for a slow client; beyond this, changes pile up as test ids (coalesced).
const UPDATES_IN_FLIGHT: usize = 4;

/// The stream of updates.
pub type UpdateStream = ReceiverStream<Result<pb::AllocationUpdate, Status>>;

/// Which tests a watch follows.
enum Watched {
    /// These, by name.
    Named(BTreeSet<String>),
    /// Every test (those ended when the watch started excepted).
    All,
}

impl Watched {
    fn includes(&self, test_id: &str) -> bool {
        match self {
            Watched::Named(ids) => ids.contains(test_id),
            Watched::All => true,
        }
    }
}

/// One watch: what it follows, for whom, and its feed.
struct Watch {
    experiments: Experiments,
    identity: Identity,
    client_id: String,
    watched: Watched,
    changes: broadcast::Receiver<TestId>,
    coalesce: Duration,
}

/// Starts a watch; the first update (every watched table) is built before this returns, so a
/// watch of an unknown test fails with NOT_FOUND instead of an empty stream.
pub async fn watch_allocations(
    experiments: Experiments,
    request: Request<pb::WatchAllocationsRequest>,
    coalesce: Duration,
) -> Result<Response<UpdateStream>, Status> {
    let identity = authn::identity(&request)?;
    let request = request.into_inner();
    check_client_id(&request.client_id).map_err(status::experiment)?;
    if request.test_ids.len() > MAX_NAMED_TESTS {
        return Err(Status::invalid_argument(format!(
            "test_ids names {} tests; one watch may name at most {MAX_NAMED_TESTS} (or none, to \
             watch every test)",
            request.test_ids.len()
        )));
    }
    // Subscribed before the first tables are read: a table published in between is sent again
    // rather than missed.
    let changes = experiments.table_changes();
    let (watched, first_ids) = if request.test_ids.is_empty() {
        (Watched::All, experiments.unended_tests())
    } else {
        let ids: BTreeSet<String> = request.test_ids.into_iter().collect();
        (Watched::Named(ids.clone()), ids.into_iter().collect())
    };
    let mut tables = Vec::with_capacity(first_ids.len());
    for test_id in &first_ids {
        match experiments.watched_table(test_id, &request.client_id) {
            Ok(table) => tables.push(pb_table(table)),
            // Listed a moment ago: tests are never removed, so only a named one can be missing.
            Err(e) => return Err(status::experiment(e)),
        }
    }
    let watch = Watch {
        experiments,
        identity,
        client_id: request.client_id,
        watched,
        changes,
        coalesce,
    };
    let (tx, rx) = mpsc::channel(UPDATES_IN_FLIGHT);
    let sent = tables.iter().map(|t| t.test_id.clone()).collect();
    let first = pb::AllocationUpdate {
        tables,
        current: watch.experiments.view_current(),
    };
    tokio::spawn(watch.run(first, sent, tx));
    Ok(Response::new(ReceiverStream::new(rx)))
}

impl Watch {
    /// Sends `first`, then changes and heartbeats until the client leaves, its credentials are
    /// revoked or this arbiter's state closes. `sent`: the tests of `first`; every test this watch sends is kept in it, so a watch that
    /// falls behind the feed can send them all again (the end of a test among them).
    async fn run(
        mut self,
        first: pb::AllocationUpdate,
        mut sent: BTreeSet<String>,
        tx: mpsc::Sender<Result<pb::AllocationUpdate, Status>>,
    ) {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut last_sent = Instant::now();
        let mut pending: BTreeSet<String> = BTreeSet::new();
        loop {
            let heartbeat_due = last_sent + HEARTBEAT;
            tokio::select! {
                change = self.changes.recv() => {
                    if !self.take(change, &mut pending, &sent) {
                        return;
                    }
                    if pending.is_empty() {
                        continue; // a test this watch does not follow
                    }
                }
                () = tokio::time::sleep_until(heartbeat_due) => {
                    if let Err(revoked) = authn::still_valid(&self.identity) {
                        let _ = tx.send(Err(revoked)).await;
                        return;
                    }
                    if self.experiments.view_current() {
                        let heartbeat = pb::AllocationUpdate {
                            tables: Vec::new(),
                            current: true,
                        };
                        if tx.send(Ok(heartbeat)).await.is_err() {
                            return;
                        }
                    }
                    // Else silence tells the client its tables may be stale.
                    last_sent = Instant::now();
                    continue;
                }
                () = tx.closed() => return,
            }
            // At most one update per window: changes arriving meanwhile join this one.
            tokio::time::sleep_until(last_sent + self.coalesce).await;
            loop {
                use broadcast::error::{RecvError, TryRecvError};
                let change = match self.changes.try_recv() {
                    Ok(id) => Ok(id),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                };
                if !self.take(change, &mut pending, &sent) {
                    return;
                }
            }
            if let Err(revoked) = authn::still_valid(&self.identity) {
                let _ = tx.send(Err(revoked)).await;
                return;
            }
            let update = self.update(std::mem::take(&mut pending));
            sent.extend(update.tables.iter().map(|t| t.test_id.clone()));
            if tx.send(Ok(update)).await.is_err() {
                return;
            }
            last_sent = Instant::now();
        }
    }

    /// Notes a change; `false` when the feed has closed (this arbiter's state is closing).
    fn take(
        &self,
        change: Result<TestId, broadcast::error::RecvError>,
        pending: &mut BTreeSet<String>,
        sent: &BTreeSet<String>,
    ) -> bool {
        match change {
            Ok(id) => {
                if self.watched.includes(id.as_str()) {
                    pending.insert(id.as_str().to_string());
                }
                true
            }
            // Fell behind the feed: every watched table goes out again, including those of
            // tests that ended meanwhile (all were sent before) and new ones.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                match &self.watched {
                    Watched::Named(ids) => pending.extend(ids.iter().cloned()),
                    Watched::All => {
                        pending.extend(sent.iter().cloned());
                        pending.extend(self.experiments.unended_tests());
                    }
                }
                true
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    /// The current tables of `test_ids`.
    fn update(&self, test_ids: BTreeSet<String>) -> pb::AllocationUpdate {
        let tables = test_ids
            .iter()
            .filter_map(
                |test_id| match self.experiments.watched_table(test_id, &self.client_id) {
                    Ok(table) => Some(pb_table(table)),
                    // Tests are never removed; nothing else can fail here.
                    Err(ExperimentError::NotFound { .. }) => None,
                    Err(e) => {
                        tracing::warn!(test_id, error = %e, "allocation table not sent");
                        None
                    }
                },
            )
            .collect();
        pb::AllocationUpdate {
            tables,
            current: self.experiments.view_current(),
        }
    }
}

/// The wire form of a watched table.
fn pb_table(table: WatchedTable) -> pb::AllocationTable {
    let winner_arm_id = table
        .winner
        .map(|w| table.arms[w].0.clone())
        .unwrap_or_default();
    pb::AllocationTable {
        test_id: table.test_id,
        version: table.version,
        status: pb_test_status(table.status) as i32,
        arms: table
            .arms
            .into_iter()
            .map(|(arm_id, model_registry_id, probability)| pb::ArmShare {
                arm_id,
                model_registry_id,
                probability,
            })
            .collect(),
        alias_accept: table.accept,
        alias_index: table.alias,
        sticky_unit_keys: table.sticky_unit_keys,
        fallback_arm: table.fallback_arm as u32,
        winner_arm_id,
        decision_key: Some(pb::DecisionKey {
            client_index: table.client_index,
            k0: table.client_key.0,
            k1: table.client_key.1,
        }),
    }
}
