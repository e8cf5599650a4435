//! The in-memory set of a test's applied fingerprints. Most tests see few ids, and a hash set of 16
//! fingerprints takes ~560 bytes (32 buckets plus control bytes), so small sets are a sorted
//! vector of exactly their size (16 bytes per id, binary search) and become a hash set once they
//! pass [`SORTED_MAX`].

use super::FingerprintSet;

/// Largest set kept sorted: a lookup is at most 11 comparisons, a batch's merge copies at most
/// 16 KiB.
pub(super) const SORTED_MAX: usize = 1024;

/// Applied fingerprints of one test.
#[derive(Debug)]
pub(super) enum SeenIds {
    /// Ascending, no duplicates, capacity equal to length.
    Sorted(Vec<u128>),
    /// Past [`SORTED_MAX`].
    Hashed(FingerprintSet),
}

impl Default for SeenIds {
    fn default() -> Self {
        Self::Sorted(Vec::new())
    }
}

impl SeenIds {
    /// Whether `fp` is in the set.
    pub(super) fn contains(&self, fp: &u128) -> bool {
        match self {
            Self::Sorted(v) => v.binary_search(fp).is_ok(),
            Self::Hashed(h) => h.contains(fp),
        }
    }

    /// Number of fingerprints.
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Sorted(v) => v.len(),
            Self::Hashed(h) => h.len(),
        }
    }

    /// Adds `fps` (in any order, duplicates allowed).
    pub(super) fn extend(&mut self, fps: impl IntoIterator<Item = u128>) {
        match self {
            Self::Hashed(h) => h.extend(fps),
            Self::Sorted(v) => {
                let mut new: Vec<u128> = fps.into_iter().collect();
                new.sort_unstable();
                let mut merged = Vec::with_capacity(v.len() + new.len());
                let (mut i, mut j) = (0, 0);
                while i < v.len() || j < new.len() {
                    let take_old = j == new.len() || (i < v.len() && v[i] <= new[j]);
                    let fp = if take_old {
                        i += 1;
                        v[i - 1]
                    } else {
                        j += 1;
                        new[j - 1]
                    };
                    if merged.last() != Some(&fp) {
                        merged.push(fp);
                    }
                }
                if merged.len() > SORTED_MAX {
                    *self = Self::Hashed(merged.into_iter().collect());
                } else {
                    merged.shrink_to_fit();
                    *v = merged;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_set_on_both_sides_of_the_switch() {
        let mut seen = SeenIds::default();
        let mut reference = std::collections::HashSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15_u128;
        for round in 0..40 {
            // Batches with repeats within and across them.
            let batch: Vec<u128> = (0..50)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if i % 7 == 0 {
                        round as u128
                    } else {
                        x >> 64
                    }
                })
                .collect();
            seen.extend(batch.iter().copied());
            reference.extend(batch.iter().copied());
            assert_eq!(seen.len(), reference.len());
            assert!(batch.iter().all(|fp| seen.contains(fp)));
            assert!(!seen.contains(&(u128::MAX - round as u128)));
            let sorted = matches!(seen, SeenIds::Sorted(_));
            assert_eq!(
                sorted,
                reference.len() <= SORTED_MAX,
                "at {}",
                reference.len()
            );
            if let SeenIds::Sorted(v) = &seen {
                assert!(v.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(v.capacity(), v.len());
            }
        }
    }
}
