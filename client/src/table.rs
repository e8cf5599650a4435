//! One test's allocation table as the client holds it: arms, Walker's alias table, the client's
//! decision-id key, and the decisions drawn from it (counted for the server's allocation counts).

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use siphasher::sip::SipHasher13;

use crate::pb;

/// Most arms a test has (decision ids hold the arm in 6 bits).
const MAX_ARMS: usize = 64;

/// A test's status, as the table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestStatus {
    /// Decisions are allocations of the test.
    Running,
    /// Paused: the fallback (control) arm serves.
    Paused,
    /// Ended with a winner (or none): the fallback arm serves.
    Completed,
    /// Cancelled: the fallback (control) arm serves.
    Cancelled,
}

impl TestStatus {
    fn from_pb(status: i32) -> Option<Self> {
        Some(match pb::TestStatus::try_from(status).ok()? {
            pb::TestStatus::Running => Self::Running,
            pb::TestStatus::Paused => Self::Paused,
            pb::TestStatus::Completed => Self::Completed,
            pb::TestStatus::Cancelled => Self::Cancelled,
            pb::TestStatus::Unspecified => return None,
        })
    }

    /// Whether the test has ended (completed or cancelled).
    pub fn is_ended(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

/// One version of a test's allocation table.
#[derive(Debug)]
pub(crate) struct TestTable {
    pub(crate) test_id: Box<str>,
    pub(crate) version: u64,
    pub(crate) status: TestStatus,
    pub(crate) arm_ids: Box<[Box<str>]>,
    pub(crate) models: Box<[Box<str>]>,
    pub(crate) probabilities: Box<[f64]>,
    accept: Box<[f64]>,
    alias: Box<[u8]>,
    sticky_unit_keys: bool,
    pub(crate) fallback_arm: u8,
    pub(crate) winner: Option<u8>,
    client_index: u32,
    key: (u64, u64),
    /// The test's decision sequence, shared by all its table versions.
    pub(crate) sequence: Arc<AtomicU64>,
    /// Decisions drawn from this table while RUNNING, per arm, not yet reported.
    counts: Box<[AtomicU64]>,
}

/// Why a table from the server cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadTable(pub(crate) String);

impl TestTable {
    /// Checks and takes a table from the wire. `sequence`: the test's decision sequence (kept
    /// from its previous table).
    pub(crate) fn from_pb(
        table: pb::AllocationTable,
        sequence: Arc<AtomicU64>,
    ) -> Result<Self, BadTable> {
        let bad = |why: String| BadTable(format!("table of test {:?}: {why}", table.test_id));
        let k = table.arms.len();
        if k == 0 || k > MAX_ARMS {
            return Err(bad(format!("{k} arms; 1 to {MAX_ARMS} expected")));
        }
        if table.alias_accept.len() != k || table.alias_index.len() != k {
            return Err(bad(format!(
                "{} acceptance thresholds and {} aliases for {k} arms",
                table.alias_accept.len(),
                table.alias_index.len()
            )));
        }
        if let Some(a) = table.alias_index.iter().find(|&&a| a as usize >= k) {
            return Err(bad(format!("alias {a} beyond its {k} arms")));
        }
        if table.fallback_arm as usize >= k {
            return Err(bad(format!("fallback arm {} of {k}", table.fallback_arm)));
        }
        let probabilities: Box<[f64]> = table.arms.iter().map(|a| a.probability).collect();
        let total: f64 = probabilities.iter().sum();
        if probabilities.iter().any(|p| !p.is_finite() || *p < 0.0) || (total - 1.0).abs() > 1e-6 {
            return Err(bad(format!(
                "probabilities {probabilities:?} do not sum to 1"
            )));
        }
        let status = TestStatus::from_pb(table.status)
            .ok_or_else(|| bad(format!("status {}", table.status)))?;
        let key = table
            .decision_key
            .ok_or_else(|| bad("no decision key".into()))?;
        let winner = if table.winner_arm_id.is_empty() {
            None
        } else {
            let w = table
                .arms
                .iter()
                .position(|a| a.arm_id == table.winner_arm_id)
                .ok_or_else(|| bad(format!("winner {:?} is not an arm", table.winner_arm_id)))?;
            Some(w as u8)
        };
        let counting = if status == TestStatus::Running { k } else { 0 };
        Ok(Self {
            version: table.version,
            status,
            arm_ids: table
                .arms
                .iter()
                .map(|a| a.arm_id.as_str().into())
                .collect(),
            models: table
                .arms
                .iter()
                .map(|a| a.model_registry_id.as_str().into())
                .collect(),
            probabilities,
            accept: table.alias_accept.into(),
            alias: table.alias_index.iter().map(|&a| a as u8).collect(),
            sticky_unit_keys: table.sticky_unit_keys,
            fallback_arm: table.fallback_arm as u8,
            winner,
            client_index: key.client_index,
            key: (key.k0, key.k1),
            sequence,
            counts: (0..counting).map(|_| AtomicU64::new(0)).collect(),
            test_id: table.test_id.into(),
        })
    }

    /// The arm `u` (uniform in [0, 1)) selects: Walker's alias method (Vose 1991), exactly as
    /// the server's table picks.
    #[inline]
    pub(crate) fn pick(&self, u: f64) -> usize {
        let k = self.accept.len();
        let scaled = u * k as f64;
        let i = (scaled as usize).min(k - 1);
        let coin = scaled - i as f64;
        if coin < self.accept[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }

    /// The uniform number a decision for `unit_key` draws with: the key's stable position in a
    /// FIXED test, else this thread's generator.
    #[inline]
    pub(crate) fn position(&self, unit_key: &str) -> f64 {
        if self.sticky_unit_keys && !unit_key.is_empty() {
            crate::draw::unit_key_position(&self.test_id, unit_key)
        } else {
            crate::draw::uniform()
        }
    }

    /// Counts a decision for `arm` drawn from this RUNNING table.
    #[inline]
    pub(crate) fn count(&self, arm: usize) {
        if let Some(c) = self.counts.get(arm) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the decisions counted since the last call, per arm (empty unless RUNNING).
    pub(crate) fn take_counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect()
    }

    /// Mints the id of the client's next decision for `arm`.
    #[inline]
    pub(crate) fn mint(&self, arm: usize, running: bool) -> u64 {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        mint(self.key, self.client_index, sequence, arm, running)
    }
}

/// A client-minted decision id (format `10`): bit 61 running, bits 60–48 the client index,
/// bits 47–26 the sequence (mod 2²²), bits 25–6 the low 20 bits of SipHash-1-3 (Aumasson &
/// Bernstein 2012) under the client's key of the id with its tag bits zero, bits 5–0 the arm.
#[inline]
pub(crate) fn mint(key: (u64, u64), index: u32, sequence: u64, arm: usize, running: bool) -> u64 {
    let body = (0b10u64 << 62)
        | if running { 1 << 61 } else { 0 }
        | (u64::from(index & 0x1fff) << 48)
        | ((sequence & ((1 << 22) - 1)) << 26)
        | (arm as u64 & 0x3f);
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    h.write_u64(body);
    body | ((h.finish() & ((1 << 20) - 1)) << 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's pinned client id (secret [7; 32], test "t1", client "router-a").
    #[test]
    fn mints_the_servers_pinned_id() {
        let key = (0xe90d_f8dd_6b3a_9801, 0x1885_320f_0ac6_3d0c);
        assert_eq!(mint(key, 7078, 1, 2, true), 0xbba6_0000_0460_9142);
    }

    fn table(probabilities: &[f64]) -> pb::AllocationTable {
        // The alias table of the server for these probabilities is rebuilt here only for the
        // test; clients take the server's.
        let k = probabilities.len();
        let mut accept: Vec<f64> = probabilities.iter().map(|p| p * k as f64).collect();
        let mut alias: Vec<u32> = (0..k as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..k).partition(|&i| accept[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            accept[l] -= 1.0 - accept[s];
            if accept[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in small.into_iter().chain(large) {
            accept[i] = 1.0;
        }
        pb::AllocationTable {
            test_id: "t".into(),
            version: 1,
            status: pb::TestStatus::Running as i32,
            arms: probabilities
                .iter()
                .enumerate()
                .map(|(i, &probability)| pb::ArmShare {
                    arm_id: format!("arm_{i}"),
                    model_registry_id: format!("m:{i}"),
                    probability,
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

    #[test]
    fn picks_each_arm_with_its_probability_on_a_grid() {
        let p = [0.5, 0.3, 0.15, 0.05];
        let t = TestTable::from_pb(table(&p), Arc::default()).expect("valid");
        let n = 1_000_000;
        let mut counts = [0usize; 4];
        for i in 0..n {
            counts[t.pick((i as f64 + 0.5) / n as f64)] += 1;
        }
        for (c, q) in counts.iter().zip(&p) {
            assert!((*c as f64 / n as f64 - q).abs() < 1e-5, "{counts:?}");
        }
    }

    #[test]
    fn malformed_tables_are_refused_with_the_reason() {
        let mut t = table(&[0.5, 0.5]);
        t.alias_index[0] = 7;
        let e = TestTable::from_pb(t, Arc::default()).unwrap_err();
        assert!(e.0.contains("alias 7"), "{e:?}");
        let mut t = table(&[0.5, 0.5]);
        t.arms[0].probability = f64::NAN;
        let e = TestTable::from_pb(t, Arc::default()).unwrap_err();
        assert!(e.0.contains("do not sum to 1"), "{e:?}");
        let mut t = table(&[0.5, 0.5]);
        t.decision_key = None;
        let e = TestTable::from_pb(t, Arc::default()).unwrap_err();
        assert!(e.0.contains("no decision key"), "{e:?}");
        let mut t = table(&[0.5, 0.5]);
        t.winner_arm_id = "arm_9".into();
        let e = TestTable::from_pb(t, Arc::default()).unwrap_err();
        assert!(e.0.contains("winner"), "{e:?}");
    }
}
