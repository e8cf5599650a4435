//! The numbers a decision is drawn with: this thread's uniform generator, and for FIXED tests the
//! stable position of a unit key (the server computes the same, so a key gets the same arm here
//! and from `Allocate`).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    /// wyrand state (0: not seeded yet).
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// A uniform number in [0, 1) from this thread's generator: wyrand (Wang Yi 2019, the
/// generator of wyhash's reference implementation), a 64-bit state stepped by a Weyl
/// increment and mixed by one 128-bit multiply; the top 53 bits scaled by 2⁻⁵³. Each thread
/// seeds from the process's random hasher keys.
#[inline]
pub(crate) fn uniform() -> f64 {
    STATE.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = seed();
        }
        s = s.wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        let x = (t >> 64) as u64 ^ t as u64;
        (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    })
}

#[cold]
fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

/// The stable position of `unit_key` in a FIXED test, in [0, 1): 64-bit FNV-1a over the bytes
/// of `test_id`, one zero byte and the bytes of `unit_key`, through the SplitMix64 finalizer
/// (Steele, Lea & Flood 2014), top 53 bits scaled by 2⁻⁵³. The server's `Allocate` uses the same
/// function; the test vectors below are the server's.
#[inline]
pub(crate) fn unit_key_position(test_id: &str, unit_key: &str) -> f64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for &b in test_id.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h = h.wrapping_mul(FNV_PRIME); // the zero byte: h ^ 0 = h
    for &b in unit_key.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's vectors (computed independently in Python there).
    #[test]
    fn unit_key_positions_are_the_servers() {
        let vectors = [
            ("t1", "order-1", 0.490336999447032),
            ("t1", "order-2", 0.2270047394733884),
            (
                "signal_comparison_001",
                "AAPL-2026-11-27T09:30:00.000001",
                0.396304563071443,
            ),
            ("t1", "", 0.1487031616502874),
        ];
        for (test_id, key, expected) in vectors {
            assert_eq!(unit_key_position(test_id, key), expected, "{test_id}/{key}");
        }
    }

    #[test]
    fn uniform_is_in_range_and_spread() {
        let n = 200_000;
        let mut bins = [0u32; 10];
        for _ in 0..n {
            let u = uniform();
            assert!((0.0..1.0).contains(&u), "{u}");
            bins[(u * 10.0) as usize] += 1;
        }
        // Each bin expects 20 000 (sd ≈ 134); 6 sd either way.
        for b in bins {
            assert!((19_200..=20_800).contains(&b), "{bins:?}");
        }
    }
}
