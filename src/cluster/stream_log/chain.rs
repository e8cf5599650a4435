//! Which writer's entries count. The stream's fence is a position: an entry is stored only
//! after the position it names. A writer paused (SIGSTOP, a partition) with entries already
//! sent can resume after another arbiter took over, and one of its entries can then be stored
//! where the positions happen to line up, after the new writer's entries: decided on a state
//! that lacks them.
//!
//! So every writer's first message is a marker (the header `Arbiter-Writer-Start`), and every
//! message names its writer (the message id `<writer>:<position>`). Reading in stream order,
//! the writer of the last marker is the current one; a message of another writer is stale and
//! skipped, by every reader alike. Markers themselves are not entries. A read that begins after
//! the stream was trimmed takes the writer of its first message as current: trimming cuts
//! below the current writer's snapshots, which lie after any stale message.

use std::collections::BTreeMap;

use super::parts::Message;

/// The header of a writer's first message.
pub(super) const MARKER: &str = "Arbiter-Writer-Start";

/// Removes markers and stale messages from `read` (messages by position); returns how many
/// stale ones it removed. `current` is the writer whose messages count before `read` (`None`:
/// unknown, the writer of the first message), and is left at the one that counts after it.
pub(super) fn drop_stale(read: &mut BTreeMap<u64, Message>, current: &mut Option<String>) -> usize {
    let mut stale = 0;
    // `retain` visits in key order: stream order.
    read.retain(|_, message| {
        if message.marker {
            *current = message.writer.clone();
            return false;
        }
        match (&*current, &message.writer) {
            (None, writer) => {
                *current = writer.clone();
                true
            }
            (Some(current), Some(writer)) if current != writer => {
                stale += 1;
                false
            }
            _ => true,
        }
    });
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(writer: &str, marker: bool) -> Message {
        Message {
            part: None,
            payload: writer.as_bytes().to_vec(),
            writer: Some(writer.to_string()),
            marker,
        }
    }

    #[test]
    fn a_writers_messages_after_another_writers_marker_are_skipped() {
        let mut read = BTreeMap::from([
            (1, message("a", true)),
            (2, message("a", false)),
            (3, message("b", true)),
            (4, message("a", false)), // a's, in flight while b took over
            (5, message("b", false)),
            (6, message("a", false)),
            (7, message("c", true)),
            (8, message("c", false)),
        ]);
        assert_eq!(drop_stale(&mut read, &mut None), 2);
        let kept: Vec<(u64, &[u8])> = read
            .iter()
            .map(|(p, m)| (*p, m.payload.as_slice()))
            .collect();
        assert_eq!(kept, [(2, &b"a"[..]), (5, b"b"), (8, b"c")]);
    }

    #[test]
    fn a_read_that_begins_without_a_marker_follows_its_first_writer() {
        let mut read = BTreeMap::from([
            (10, message("b", false)),
            (11, message("b", false)),
            (12, message("c", true)),
            (13, message("c", false)),
        ]);
        assert_eq!(drop_stale(&mut read, &mut None), 0);
        assert_eq!(read.keys().copied().collect::<Vec<_>>(), [10, 11, 13]);
    }

    #[test]
    fn a_reader_that_carries_the_writer_across_reads_skips_a_stale_first_message() {
        let mut writer = None;
        let mut first = BTreeMap::from([(1, message("a", true)), (2, message("b", true))]);
        drop_stale(&mut first, &mut writer);
        assert_eq!(writer.as_deref(), Some("b"));
        // The next read begins with a's entry, stored after b took over.
        let mut second = BTreeMap::from([(3, message("a", false)), (4, message("b", false))]);
        assert_eq!(drop_stale(&mut second, &mut writer), 1);
        assert_eq!(second.keys().copied().collect::<Vec<_>>(), [4]);
    }
}
