//! The task that keeps a [`crate::LocalAllocator`]'s tables current: subscribes to
//! `WatchAllocations`, applies each update, notes the server's confirmations, and reconnects
//! with exponential backoff (to the next endpoint) when the stream fails or falls silent.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::connection::{request, Backoff};

use crate::allocator::{Shared, Tables};
use crate::pb;
use crate::table::TestTable;

/// Largest update accepted: the first one holds every watched table (10 000 tests of 32 arms
/// take about 15 MiB).
const MAX_UPDATE_BYTES: usize = 64 << 20;

/// How often the freshness is re-read from the time since the last confirmation.
const FRESHNESS_TICK: Duration = Duration::from_millis(50);

/// Aborts the background tasks when dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts the watch and the freshness ticker.
pub(crate) fn spawn(shared: Arc<Shared>, endpoints: Vec<Endpoint>) -> TaskGuard {
    let ticker = {
        let shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FRESHNESS_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match shared.upgrade() {
                    Some(shared) => shared.update_freshness(),
                    None => return,
                }
            }
        })
    };
    let channels = crate::connection::channels(endpoints);
    let watcher = tokio::spawn(watch(Arc::downgrade(&shared), channels));
    TaskGuard(vec![ticker, watcher])
}

/// Subscribes through each channel in turn until the allocator is dropped.
async fn watch(shared: std::sync::Weak<Shared>, channels: Vec<Channel>) {
    let mut backoff = Backoff::default();
    for attempt in 0usize.. {
        let Some(s) = shared.upgrade() else { return };
        let (min, max) = (s.options.reconnect_min, s.options.reconnect_max);
        let channel = channels[attempt % channels.len()].clone();
        drop(s);
        match subscribe(&shared, channel).await {
            Ok(()) => backoff.reset(),
            Err(why) => tracing::warn!(error = %why, "allocation watch ended; reconnecting"),
        }
        backoff.wait(min, max).await;
    }
}

/// One subscription: `Ok` when it delivered tables before it ended (the next one starts from
/// the shortest backoff).
async fn subscribe(shared: &std::sync::Weak<Shared>, channel: Channel) -> Result<(), String> {
    let (watch, token, silence_limit) = {
        let s = shared.upgrade().ok_or("allocator dropped")?;
        let watch = pb::WatchAllocationsRequest {
            test_ids: s.options.test_ids.clone(),
            client_id: s.options.client_id.clone(),
        };
        (watch, s.options.token.clone(), s.options.stale_after)
    };
    let mut client = pb::allocator_client::AllocatorClient::new(channel.clone())
        .max_decoding_message_size(MAX_UPDATE_BYTES);
    let call = request(watch, token.as_deref())?;
    let mut stream = client
        .watch_allocations(call)
        .await
        .map_err(|s| format!("WatchAllocations refused: {s}"))?
        .into_inner();
    let first = tokio::time::timeout(silence_limit, stream.message())
        .await
        .map_err(|_| "no tables within stale_after".to_string())?
        .map_err(|s| format!("WatchAllocations failed: {s}"))?
        .ok_or("WatchAllocations ended before its first tables")?;
    let absent = {
        let s = shared.upgrade().ok_or("allocator dropped")?;
        apply(&s, first, true)
    };
    if let Some(s) = shared.upgrade() {
        not_behind(&s, silence_limit)?;
    }
    if !absent.is_empty() {
        // Watching every test: the first tables hold only tests that have not ended, so the
        // tests held here and missing there ended meanwhile. Their final tables are asked for
        // by name.
        final_tables(shared, channel, absent, token.as_deref()).await?;
    }
    loop {
        let message = tokio::time::timeout(silence_limit, stream.message())
            .await
            .map_err(|_| format!("no word from the server for {silence_limit:?}"))?
            .map_err(|s| format!("WatchAllocations failed: {s}"))?;
        let Some(update) = message else {
            return Ok(()); // the server's state closed (shutdown, role change)
        };
        let s = shared.upgrade().ok_or("allocator dropped")?;
        apply(&s, update, false);
        not_behind(&s, silence_limit)?;
    }
}

/// Fails when the arbiter has sent updates but confirmed none for `limit` (a standby that is
/// not current): the next endpoint may be.
fn not_behind(shared: &Shared, limit: Duration) -> Result<(), String> {
    match shared.silence() {
        Some(silence) if silence > limit => Err(format!(
            "this arbiter's view has not been current for {silence:?}; trying the next"
        )),
        _ => Ok(()),
    }
}

/// Asks for the tables of `test_ids` once and applies them.
async fn final_tables(
    shared: &std::sync::Weak<Shared>,
    channel: Channel,
    test_ids: Vec<String>,
    token: Option<&str>,
) -> Result<(), String> {
    let client_id = shared
        .upgrade()
        .ok_or("allocator dropped")?
        .options
        .client_id
        .clone();
    let call = request(
        pb::WatchAllocationsRequest {
            test_ids,
            client_id,
        },
        token,
    )?;
    let mut client = pb::allocator_client::AllocatorClient::new(channel)
        .max_decoding_message_size(MAX_UPDATE_BYTES);
    let mut stream = client
        .watch_allocations(call)
        .await
        .map_err(|s| format!("WatchAllocations of ended tests refused: {s}"))?
        .into_inner();
    if let Some(update) = stream
        .message()
        .await
        .map_err(|s| format!("WatchAllocations of ended tests failed: {s}"))?
    {
        let s = shared.upgrade().ok_or("allocator dropped")?;
        apply(&s, update, false);
    }
    Ok(())
}

/// Applies an update (a confirmation even when it holds no table). `first`: the first update
/// of a subscription; returns the tests held here that it lacks.
fn apply(shared: &Shared, update: pb::AllocationUpdate, first: bool) -> Vec<String> {
    // Only an arbiter whose view is current confirms the tables.
    if update.current {
        shared.heard();
    }
    let mut absent = Vec::new();
    if update.tables.is_empty() && !first {
        return absent;
    }
    let current = shared.tables.load_full();
    if first && shared.options.test_ids.is_empty() {
        let sent: std::collections::HashSet<&str> =
            update.tables.iter().map(|t| t.test_id.as_str()).collect();
        absent = current
            .iter()
            .filter(|(id, slot)| !sent.contains(&***id) && !slot.load().status.is_ended())
            .map(|(id, _)| id.to_string())
            .collect();
    }
    let mut added = Vec::new();
    for table in update.tables {
        let sequence = current
            .get(table.test_id.as_str())
            .map(|slot| slot.load().sequence.clone())
            .unwrap_or_else(|| Arc::new(AtomicU64::new(start_sequence())));
        match TestTable::from_pb(table, sequence) {
            Ok(table) => shared.replace(&current, &mut added, table),
            Err(bad) => tracing::warn!(reason = %bad.0, "allocation table ignored"),
        }
    }
    if !added.is_empty() {
        // Only the watcher task writes the map: no update can come between the load and this.
        let mut next: Tables = (*current).clone();
        for table in added {
            let id = table.test_id.clone();
            next.insert(id, Arc::new(arc_swap::ArcSwap::from_pointee(table)));
        }
        shared.tables.store(Arc::new(next));
    }
    shared.updates.send_modify(|n| *n += 1);
    absent
}

/// Where a test's decision sequence starts in this process: at random, so a restarted client
/// does not hand out the ids of its previous run again (until the 2²² sequence wraps).
fn start_sequence() -> u64 {
    (crate::draw::uniform() * (1u64 << 22) as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Freshness, LocalAllocator, TestStatus, WatchOptions};

    /// A table of test `t` over two arms at `p`, in `status`, with `version`.
    fn table(version: u64, status: pb::TestStatus, p: [f64; 2]) -> pb::AllocationTable {
        // Walker's table of two arms: column 0 keeps arm 0 below 2·p0 (capped at 1), else arm 1.
        let (accept, alias) = if p[0] <= p[1] {
            (vec![2.0 * p[0], 1.0], vec![1, 1])
        } else {
            (vec![1.0, 2.0 * p[1]], vec![0, 0])
        };
        pb::AllocationTable {
            test_id: "t".into(),
            version,
            status: status as i32,
            arms: (0..2)
                .map(|i| pb::ArmShare {
                    arm_id: format!("arm_{i}"),
                    model_registry_id: format!("m{i}:1"),
                    probability: p[i],
                })
                .collect(),
            alias_accept: accept,
            alias_index: alias,
            decision_key: Some(pb::DecisionKey {
                client_index: 1,
                k0: 2,
                k1: 3,
            }),
            ..Default::default()
        }
    }

    fn update(current: bool, tables: Vec<pb::AllocationTable>) -> pb::AllocationUpdate {
        pb::AllocationUpdate { tables, current }
    }

    /// An allocator whose watcher never reaches a server (nothing listens on port 9).
    fn offline() -> LocalAllocator {
        let endpoint = Endpoint::from_static("http://127.0.0.1:9");
        LocalAllocator::start(vec![endpoint], WatchOptions::new("unit").tests(["t"]))
    }

    #[tokio::test]
    async fn only_an_arbiter_whose_view_is_current_confirms_the_tables() {
        let allocator = offline();
        let shared = &allocator.shared;
        apply(
            shared,
            update(false, vec![table(1, pb::TestStatus::Running, [0.5, 0.5])]),
            true,
        );
        assert_eq!(allocator.freshness(), Freshness::Empty);
        let d = allocator.allocate("t", "").expect("decides from the table");
        assert!(d.stale, "tables nobody current confirmed are stale");
        apply(shared, update(true, Vec::new()), false);
        assert_eq!(allocator.freshness(), Freshness::Current);
        assert!(!allocator.allocate("t", "").expect("decision").stale);
    }

    #[tokio::test]
    async fn an_ended_test_stays_ended_whatever_a_lagging_arbiter_sends() {
        let allocator = offline();
        let shared = &allocator.shared;
        apply(
            shared,
            update(true, vec![table(5, pb::TestStatus::Completed, [0.0, 1.0])]),
            true,
        );
        apply(
            shared,
            update(true, vec![table(3, pb::TestStatus::Running, [0.5, 0.5])]),
            true,
        );
        assert_eq!(allocator.table_of("t"), Some((5, TestStatus::Completed)));
        let d = allocator.allocate("t", "").expect("decision");
        assert_eq!((d.arm_id(), d.propensity), ("arm_1", 1.0));
    }

    #[tokio::test]
    async fn counts_of_replaced_tables_are_folded_per_test_with_their_expected_counts() {
        let allocator = offline();
        let shared = &allocator.shared;
        apply(
            shared,
            update(true, vec![table(1, pb::TestStatus::Running, [0.5, 0.5])]),
            true,
        );
        let mut drawn = [0u64; 2];
        for _ in 0..1000 {
            drawn[allocator.allocate("t", "").expect("decision").arm_index()] += 1;
        }
        apply(
            shared,
            update(true, vec![table(2, pb::TestStatus::Running, [0.2, 0.8])]),
            false,
        );
        for _ in 0..500 {
            drawn[allocator.allocate("t", "").expect("decision").arm_index()] += 1;
        }
        // A paused table's decisions are not allocations.
        apply(
            shared,
            update(true, vec![table(3, pb::TestStatus::Paused, [1.0, 0.0])]),
            false,
        );
        for _ in 0..100 {
            allocator.allocate("t", "").expect("decision");
        }
        let reported = allocator.take_counts();
        assert_eq!(reported.len(), 1, "one entry per test: {reported:?}");
        let c = &reported[0];
        assert_eq!((c.test_id.as_str(), c.table_version), ("t", 2));
        assert_eq!(c.counts, drawn.to_vec());
        // 1000 decisions at 0.5/0.5 and 500 at 0.2/0.8.
        let want = [1000.0 * 0.5 + 500.0 * 0.2, 1000.0 * 0.5 + 500.0 * 0.8];
        for (got, want) in c.expected.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{:?}", c.expected);
        }
        assert!(allocator.take_counts().is_empty(), "taken once");
    }
}
