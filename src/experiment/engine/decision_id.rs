//! Decision ids: what `Allocate` hands out, and what a result may name instead of its arm. Only
//! ids this server issued for this test may attribute a result, so each id carries a keyed tag:
//!
//! ```text
//!  63 62 | 61      | 60 ........ 26 | 25 ...... 6 | 5 .. 0
//!  format | running | sequence (35)  | tag (20)    | arm (6)
//! ```
//!
//! - `format` is `01` (ids of other formats are refused);
//! - `running` says whether the decision was drawn from the test's RUNNING table (only those are
//!   allocations of the test);
//! - `sequence` numbers the test's decisions (modulo 2³⁵, about 34 billion);
//! - `tag` is the low 20 bits of SipHash-1-3 (Aumasson & Bernstein 2012, "SipHash: a fast
//!   short-input PRF") of the other 44 bits, keyed with the test's own key. That key is
//!   SHA-256(server secret ‖ 0 ‖ test id) cut to 128 bits, and the server secret is 32 random
//!   bytes created with the data directory. A made-up id, or one from another test, passes the
//!   check with probability 2⁻²⁰ (one in a million).
//!
//! A result attributed by a decision id counts for the id's arm whether the decision was drawn
//! while the test ran or while it was paused (then the arm is the control arm).

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

use sha2::{Digest, Sha256};

const FORMAT: u64 = 0b01;
const FORMAT_SHIFT: u32 = 62;
const RUNNING_BIT: u64 = 1 << 61;
const SEQUENCE_SHIFT: u32 = 26;
/// Decision sequence numbers are kept modulo this.
pub const SEQUENCE_MODULUS: u64 = 1 << 35;
const TAG_SHIFT: u32 = 6;
const TAG_MASK: u64 = (1 << 20) - 1;
const ARM_MASK: u64 = (1 << 6) - 1;

/// The secret behind every test's decision key: 32 random bytes, stored with the data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ServerSecret(pub [u8; 32]);

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(…)")
    }
}

impl ServerSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        Self(rand::random())
    }
}

/// One test's key for minting and checking its decision ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionKey {
    k0: u64,
    k1: u64,
}

/// What a valid decision id says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedDecision {
    /// The decision's sequence number (modulo [`SEQUENCE_MODULUS`]).
    pub sequence: u64,
    /// Its arm index.
    pub arm: usize,
    /// Whether it was drawn from the test's RUNNING table.
    pub running: bool,
}

impl DecisionKey {
    /// The key of `test_id` under `secret`.
    pub fn derive(secret: &ServerSecret, test_id: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(secret.0);
        hasher.update([0u8]);
        hasher.update(test_id.as_bytes());
        let digest = hasher.finalize();
        let word = |i: usize| {
            u64::from_le_bytes(
                digest[i..i + 8]
                    .try_into()
                    .expect("8 bytes of a 32-byte digest"),
            )
        };
        Self {
            k0: word(0),
            k1: word(8),
        }
    }

    fn tag(&self, body: u64) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u64(body);
        h.finish() & TAG_MASK
    }

    /// The id of decision `sequence` for `arm` (< 64).
    #[inline]
    pub fn mint(&self, sequence: u64, arm: usize, running: bool) -> u64 {
        let body = (FORMAT << FORMAT_SHIFT)
            | if running { RUNNING_BIT } else { 0 }
            | ((sequence % SEQUENCE_MODULUS) << SEQUENCE_SHIFT)
            | (arm as u64 & ARM_MASK);
        body | (self.tag(body) << TAG_SHIFT)
    }

    /// What `id` says, if this key minted it.
    pub fn check(&self, id: u64) -> Option<DecodedDecision> {
        if id >> FORMAT_SHIFT != FORMAT {
            return None;
        }
        let tag = (id >> TAG_SHIFT) & TAG_MASK;
        let body = id & !(TAG_MASK << TAG_SHIFT);
        (self.tag(body) == tag).then_some(DecodedDecision {
            sequence: (id >> SEQUENCE_SHIFT) % SEQUENCE_MODULUS,
            arm: (id & ARM_MASK) as usize,
            running: id & RUNNING_BIT != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(test_id: &str) -> DecisionKey {
        DecisionKey::derive(&ServerSecret([7; 32]), test_id)
    }

    #[test]
    fn minted_ids_check_and_say_what_they_were_minted_with() {
        let k = key("t1");
        for (sequence, arm, running) in [
            (0, 0, true),
            (1, 31, false),
            (SEQUENCE_MODULUS - 1, 5, true),
        ] {
            let id = k.mint(sequence, arm, running);
            assert_eq!(
                k.check(id),
                Some(DecodedDecision {
                    sequence,
                    arm,
                    running
                }),
                "{id:#x}"
            );
        }
    }

    #[test]
    fn ids_of_other_tests_other_secrets_or_made_up_are_refused() {
        let (t1, t2) = (key("t1"), key("t2"));
        let other_secret = DecisionKey::derive(&ServerSecret([8; 32]), "t1");
        let mut accepted = 0;
        for sequence in 0..100_000u64 {
            let id = t1.mint(sequence, (sequence % 4) as usize, true);
            accepted += usize::from(t2.check(id).is_some());
            accepted += usize::from(other_secret.check(id).is_some());
        }
        // 200k checks, each passing with probability 2^-20: expected 0.19; P(more than 5) < 1e-6.
        assert!(accepted <= 5, "{accepted} foreign ids passed");
        assert_eq!(t1.check((1 << 40) | 1), None, "the old format is refused");
        let id = t1.mint(42, 1, true);
        assert_eq!(
            t1.check(id ^ (1 << 30)),
            None,
            "a changed sequence breaks the tag"
        );
        assert_eq!(t1.check(id ^ 1), None, "a changed arm breaks the tag");
    }
}
