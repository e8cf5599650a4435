//! Entries larger than one NATS message (`max_payload`, 1 MiB by default): a statistics
//! snapshot that stores a busy second's result ids can take tens of megabytes. Such an entry is
//! published as consecutive messages, each with the header `Arbiter-Part: i/k`; its position is
//! its last part's. A reader joins parts found at consecutive positions, 1 through k, and drops
//! a group that is not complete: the parts of an entry whose writer stopped before publishing
//! all of them (never acknowledged, and never completed, since the next writer's entries follow
//! them), on every reader alike.

use std::collections::BTreeMap;

use async_nats::HeaderMap;

use crate::storage::LogEntry;

/// The header naming a part: `i/k`, 1 ≤ i ≤ k, k ≥ 2.
pub(super) const HEADER: &str = "Arbiter-Part";
/// Most parts of one entry (64 MiB at the default `max_payload`, the journal's limit too).
pub(super) const MAX_PARTS: usize = 64;

/// One message read from the stream.
#[derive(Debug)]
pub(super) struct Message {
    /// `Some((i, k))` for part `i` of `k`.
    pub(super) part: Option<(u32, u32)>,
    pub(super) payload: Vec<u8>,
    /// The writer that published it (from its message id).
    pub(super) writer: Option<String>,
    /// A writer's first message ([`super::chain`]), not an entry.
    pub(super) marker: bool,
}

impl Message {
    /// A message with `headers` (a part's header that does not parse makes it a part of no
    /// complete group, so it is dropped).
    pub(super) fn new(headers: Option<&HeaderMap>, payload: Vec<u8>) -> Self {
        let part = headers.and_then(|h| h.get(HEADER)).map(|value| {
            let parsed = value.as_str().split_once('/').and_then(|(i, k)| {
                let (i, k) = (i.parse::<u32>().ok()?, k.parse::<u32>().ok()?);
                (1 <= i && i <= k && k >= 2).then_some((i, k))
            });
            parsed.unwrap_or((0, 0))
        });
        let writer = headers
            .and_then(|h| h.get("Nats-Msg-Id"))
            .and_then(|id| id.as_str().rsplit_once(':'))
            .map(|(writer, _)| writer.to_string());
        let marker = headers.is_some_and(|h| h.get(super::chain::MARKER).is_some());
        Message {
            part,
            payload,
            writer,
            marker,
        }
    }
}

/// The header value of part `i` of `k`.
pub(super) fn header(i: usize, k: usize) -> String {
    format!("{i}/{k}")
}

/// The parts of `payload`, each at most `max` bytes (one for a payload that fits).
pub(super) fn split(payload: &[u8], max: usize) -> Vec<&[u8]> {
    if payload.len() <= max {
        return vec![payload];
    }
    payload.chunks(max.max(1)).collect()
}

/// The earliest position a read must begin at to see the whole entry whose part is at
/// `position` (its first part's).
pub(super) fn group_start(position: u64, message: &Message) -> u64 {
    match message.part {
        Some((i, _)) if i > 1 => position.saturating_sub(u64::from(i) - 1),
        _ => position,
    }
}

/// The entries of messages read at their positions: whole messages as they are, complete
/// groups of parts joined; incomplete groups dropped (and counted).
pub(super) fn assemble(read: BTreeMap<u64, Message>) -> (Vec<LogEntry>, usize) {
    let mut entries = Vec::new();
    let mut dropped = 0;
    // (parts in the group, next part expected, position of the last part joined, bytes)
    let mut group: Option<(u32, u32, u64, Vec<u8>)> = None;
    for (position, message) in read {
        match message.part {
            None => {
                dropped += usize::from(group.take().is_some());
                entries.push(LogEntry {
                    position,
                    payload: message.payload,
                });
            }
            Some((1, k)) => {
                dropped += usize::from(group.take().is_some());
                group = Some((k, 2, position, message.payload));
            }
            Some((i, k)) => match group.take() {
                Some((gk, next, last, mut bytes))
                    if gk == k && next == i && last + 1 == position =>
                {
                    bytes.extend_from_slice(&message.payload);
                    if i == k {
                        entries.push(LogEntry {
                            position,
                            payload: bytes,
                        });
                    } else {
                        group = Some((k, i + 1, position, bytes));
                    }
                }
                other => dropped += 1 + usize::from(other.is_some()),
            },
        }
    }
    dropped += usize::from(group.is_some());
    (entries, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(i: u32, k: u32, bytes: &[u8]) -> Message {
        Message {
            part: Some((i, k)),
            payload: bytes.to_vec(),
            writer: None,
            marker: false,
        }
    }

    fn whole(bytes: &[u8]) -> Message {
        Message {
            part: None,
            payload: bytes.to_vec(),
            writer: None,
            marker: false,
        }
    }

    #[test]
    fn complete_groups_are_joined_and_incomplete_ones_dropped() {
        let read = BTreeMap::from([
            (1, whole(b"a")),
            (2, part(1, 3, b"x")),
            (3, part(2, 3, b"y")),
            (4, part(3, 3, b"z")),
            // A writer stopped after one part of two; the next writer's entry follows.
            (5, part(1, 2, b"lost")),
            (6, whole(b"b")),
            // A part missing in the middle (removed).
            (7, part(1, 3, b"p")),
            (9, part(3, 3, b"r")),
            (10, whole(b"c")),
            // An unfinished group at the end.
            (11, part(1, 2, b"tail")),
        ]);
        let (entries, dropped) = assemble(read);
        let got: Vec<(u64, &[u8])> = entries
            .iter()
            .map(|e| (e.position, e.payload.as_slice()))
            .collect();
        assert_eq!(got, [(1, &b"a"[..]), (4, b"xyz"), (6, b"b"), (10, b"c")]);
        assert_eq!(dropped, 4);
    }

    #[test]
    fn headers_parse_and_payloads_split() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, header(2, 5).as_str());
        assert_eq!(Message::new(Some(&headers), vec![]).part, Some((2, 5)));
        let mut bad = HeaderMap::new();
        bad.insert(HEADER, "6/5");
        assert_eq!(Message::new(Some(&bad), vec![]).part, Some((0, 0)));
        assert_eq!(Message::new(None, vec![]).part, None);
        assert_eq!(split(b"abcde", 2), [&b"ab"[..], b"cd", b"e"]);
        assert_eq!(split(b"abc", 3), [&b"abc"[..]]);
        assert_eq!(group_start(10, &part(3, 4, b"")), 8);
        assert_eq!(group_start(10, &whole(b"")), 10);
    }
}
