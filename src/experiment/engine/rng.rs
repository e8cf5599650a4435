//! Randomness for the hot path: one xoshiro256++ generator per thread (seeded once from the OS),
//! and the stable unit-key hash of FIXED allocation.

use std::cell::RefCell;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

thread_local! {
    static RNG: RefCell<Xoshiro256PlusPlus> = RefCell::new(Xoshiro256PlusPlus::from_rng(&mut rand::rng()));
}

/// A uniform number in [0, 1) from this thread's generator.
#[inline]
pub fn uniform() -> f64 {
    RNG.with(|rng| rng.borrow_mut().random::<f64>())
}

/// Runs `f` with this thread's generator.
pub fn with_rng<R>(f: impl FnOnce(&mut Xoshiro256PlusPlus) -> R) -> R {
    RNG.with(|rng| f(&mut rng.borrow_mut()))
}

/// The stable hash of a unit key, as a number in [0, 1): 64-bit FNV-1a over the bytes of
/// `test_id`, one zero byte and the bytes of `unit_key`, passed through the splitmix64 finalizer
/// (Steele, Lea & Flood 2014) so that similar keys spread over the whole range, then the top 53
/// bits scaled by 2⁻⁵³. The same (test id, key) always gives the same number, on every platform
/// and in every version of arbiter; see the test vectors below.
pub fn unit_key_position(test_id: &str, unit_key: &str) -> f64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for &b in test_id
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(unit_key.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors computed independently in Python:
    /// ```python
    /// def pos(t, k):
    ///     h = 0xcbf29ce484222325
    ///     for b in t.encode() + b"\0" + k.encode():
    ///         h = ((h ^ b) * 0x100000001b3) % 2**64
    ///     h = ((h ^ (h >> 30)) * 0xbf58476d1ce4e5b9) % 2**64
    ///     h = ((h ^ (h >> 27)) * 0x94d049bb133111eb) % 2**64
    ///     h ^= h >> 31
    ///     return (h >> 11) / 2**53
    /// ```
    #[test]
    fn unit_key_hash_test_vectors() {
        let vectors = [
            ("t1", "order-1", UNIT_VECTORS[0]),
            ("t1", "order-2", UNIT_VECTORS[1]),
            (
                "signal_comparison_001",
                "AAPL-2026-11-27T09:30:00.000001",
                UNIT_VECTORS[2],
            ),
            ("t1", "", UNIT_VECTORS[3]),
        ];
        for (test_id, key, expected) in vectors {
            assert_eq!(unit_key_position(test_id, key), expected, "{test_id}/{key}");
        }
        // The separator matters: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(unit_key_position("ab", "c"), unit_key_position("a", "bc"));
    }

    const UNIT_VECTORS: [f64; 4] = [
        0.490336999447032,
        0.2270047394733884,
        0.396304563071443,
        0.1487031616502874,
    ];

    #[test]
    fn uniform_is_in_range() {
        for _ in 0..10_000 {
            let u = uniform();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
