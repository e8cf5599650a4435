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
//! Clients that decide in their own process (`WatchAllocations`) mint ids of a second format,
//! each in its own space:
//!
//! ```text
//!  63 62 | 61      | 60 ...... 48 | 47 ...... 26 | 25 ...... 6 | 5 .. 0
//!  format | running | client (13)  | sequence (22)| tag (20)    | arm (6)
//! ```
//!
//! - `format` is `10`;
//! - `client` is the client's index for the test, derived from its client id
//!   ([`DecisionKey::client_index`]);
//! - `tag` is computed as above, keyed with the client's key for the test: SipHash-1-3 of the
//!   index (with a domain byte) under the test's key ([`DecisionKey::for_client`]). A client holds
//!   only its own key, so it can mint ids in its own space and no other.
//!
//! A result attributed by a decision id counts for the id's arm whether the decision was drawn
//! while the test ran or while it was paused (then the arm is the control arm).

use siphasher::sip::SipHasher13;
use std::hash::Hasher;

use sha2::{Digest, Sha256};

const FORMAT: u64 = 0b01;
const CLIENT_FORMAT: u64 = 0b10;
const CLIENT_SHIFT: u32 = 48;
/// Client indices are below this.
pub const CLIENT_INDICES: u32 = 1 << 13;
/// Client-minted decision sequence numbers are kept modulo this.
pub const CLIENT_SEQUENCE_MODULUS: u64 = 1 << 22;
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

    /// What `id` says, if this key minted it, or the key of the client whose index it names.
    pub fn check(&self, id: u64) -> Option<DecodedDecision> {
        let tag = (id >> TAG_SHIFT) & TAG_MASK;
        let body = id & !(TAG_MASK << TAG_SHIFT);
        let (key, sequence) = match id >> FORMAT_SHIFT {
            FORMAT => (*self, (id >> SEQUENCE_SHIFT) % SEQUENCE_MODULUS),
            CLIENT_FORMAT => {
                let index = ((id >> CLIENT_SHIFT) as u32) & (CLIENT_INDICES - 1);
                let sequence = (id >> SEQUENCE_SHIFT) % CLIENT_SEQUENCE_MODULUS;
                (self.for_client(index), sequence)
            }
            _ => return None,
        };
        (key.tag(body) == tag).then_some(DecodedDecision {
            sequence,
            arm: (id & ARM_MASK) as usize,
            running: id & RUNNING_BIT != 0,
        })
    }

    /// The index of the client named `client_id` for this test: the low 13 bits of SipHash-1-3
    /// of the name (after a domain byte) under the test's key. Two clients share an index (and so
    /// a key and an id space) with probability 2⁻¹³ per pair; their ids then may coincide,
    /// which only matters to whoever reads ids as unique: attribution is by the arm inside.
    pub fn client_index(&self, client_id: &str) -> u32 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u8(1);
        h.write(client_id.as_bytes());
        (h.finish() as u32) & (CLIENT_INDICES - 1)
    }

    /// The key of client `index` (< [`CLIENT_INDICES`]): two SipHash-1-3 words of the index
    /// under the test's key, with domain bytes 2 and 3.
    pub fn for_client(&self, index: u32) -> DecisionKey {
        let word = |domain: u8| {
            let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
            h.write_u8(domain);
            h.write_u32(index);
            h.finish()
        };
        DecisionKey {
            k0: word(2),
            k1: word(3),
        }
    }

    /// The key's two words, as a client receives its own.
    pub fn words(&self) -> (u64, u64) {
        (self.k0, self.k1)
    }

    /// The id a client with key `self` and index `index` mints for its decision `sequence`.
    /// Clients compute this themselves; the server uses it in tests.
    pub fn mint_as_client(&self, index: u32, sequence: u64, arm: usize, running: bool) -> u64 {
        let body = (CLIENT_FORMAT << FORMAT_SHIFT)
            | if running { RUNNING_BIT } else { 0 }
            | (u64::from(index & (CLIENT_INDICES - 1)) << CLIENT_SHIFT)
            | ((sequence % CLIENT_SEQUENCE_MODULUS) << SEQUENCE_SHIFT)
            | (arm as u64 & ARM_MASK);
        body | (self.tag(body) << TAG_SHIFT)
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

    #[test]
    fn a_clients_ids_check_under_the_test_key_and_no_other_clients_key_mints_them() {
        let t1 = key("t1");
        let index = t1.client_index("router-a");
        assert_eq!(index, t1.client_index("router-a"), "stable");
        let client = t1.for_client(index);
        let id = client.mint_as_client(index, 12345, 3, true);
        assert_eq!(
            t1.check(id),
            Some(DecodedDecision {
                sequence: 12345,
                arm: 3,
                running: true
            })
        );
        let paused = client.mint_as_client(index, 7, 0, false);
        assert_eq!(t1.check(paused).map(|d| d.running), Some(false));
        // Another client's key, the test key itself, or another test's key: refused.
        let other_index = (index + 1) % CLIENT_INDICES;
        let mut accepted = 0;
        for sequence in 0..50_000u64 {
            let forged = t1
                .for_client(other_index)
                .mint_as_client(index, sequence, 1, true);
            accepted += usize::from(t1.check(forged).is_some());
            let as_server = t1.mint_as_client(index, sequence, 1, true);
            accepted += usize::from(t1.check(as_server).is_some());
            let other_test = key("t2")
                .for_client(index)
                .mint_as_client(index, sequence, 1, true);
            accepted += usize::from(t1.check(other_test).is_some());
        }
        // 150k checks at 2^-20 each: expected 0.14; P(more than 5) < 1e-6.
        assert!(accepted <= 5, "{accepted} forged client ids passed");
        assert_eq!(
            t1.check(id ^ (1 << 50)),
            None,
            "a changed index breaks the tag"
        );
        assert_eq!(t1.check(id | (0b11 << 62)), None, "format 11 is refused");
    }

    /// Pinned values (secret [7; 32], test "t1", client "router-a"): a change to the derivation
    /// or the layout breaks every client's ids. The client crate checks its minting against the
    /// same id.
    #[test]
    fn client_id_vectors() {
        let t1 = key("t1");
        let index = t1.client_index("router-a");
        let client = t1.for_client(index);
        let (k0, k1) = client.words();
        let id = client.mint_as_client(index, 1, 2, true);
        assert_eq!(
            (index, k0, k1, id),
            CLIENT_VECTOR,
            "({index}, {k0:#x}, {k1:#x}, {id:#x})"
        );
    }

    const CLIENT_VECTOR: (u32, u64, u64, u64) = (
        7078,
        0xe90d_f8dd_6b3a_9801,
        0x1885_320f_0ac6_3d0c,
        0xbba6_0000_0460_9142,
    );
}
