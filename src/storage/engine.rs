//! The seam between [`super::Storage`] and the embedded key-value engine underneath: point reads,
//! ordered prefix scans, atomic batches that are visible at once, and a sync that makes every
//! batch applied before it durable. One implementation, [`super::redb_engine`]; the choice of
//! engine and why is in docs/operations.md.

use super::Result;

/// One write of a [`super::WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Stores `value` under `key`.
    Put(Vec<u8>, Vec<u8>),
    /// Removes `key`.
    Remove(Vec<u8>),
}

/// A raw key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries of a scan, in key order or reverse key order.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<Entry>> + Send + 'a>;

/// An ordered key-value engine with atomic batches and explicit durability.
pub trait Engine: Send + Sync + std::fmt::Debug {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Every entry whose key starts with `prefix`, in key order (reverse key order when
    /// `reverse`). The iterator reads a consistent snapshot taken when it is created.
    fn scan(&self, prefix: &[u8], reverse: bool) -> Result<Entries<'_>>;

    /// Applies `ops` atomically: readers see all of them or none. Not durable until
    /// [`Engine::sync`]. Returns the ops that undo them (applied in order, they restore every
    /// key the batch touched).
    fn apply(&self, ops: &[Op]) -> Result<Vec<Op>>;

    /// Makes every batch applied before this call durable (fsync).
    fn sync(&self) -> Result<()>;

    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> Result<u64>;
}

/// The first key after every key that starts with `prefix` (`None`: no such key, the prefix is
/// all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_sort_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"test/"), Some(b"test0".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
