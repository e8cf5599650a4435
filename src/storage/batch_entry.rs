//! The log entry of one store batch: the engine's writes, in order, so that replaying the entry
//! redoes the batch.
//!
//! Layout ([`ByteWriter`]): the tag [`TAG`]; the batch's store sequence number (varint, see
//! [`super::Storage`]); op count; per op: kind (0 put, 1 remove), key, and for a put the
//! value. Entries tagged [`TAG_UNSEQUENCED`] (no sequence number) were written by builds that
//! logged nothing but batches, and are replayed by log position. The owner's own entries share
//! the log and must never begin with either tag (the experiment journal's entries begin with
//! their format version, a small number).

use super::engine::Op;
use super::{ByteReader, ByteWriter};

/// First byte of a store-batch entry.
pub(super) const TAG: u8 = 0xB6;
/// First byte of a store-batch entry without a sequence number.
const TAG_UNSEQUENCED: u8 = 0xB5;

const PUT: u8 = 0;
const REMOVE: u8 = 1;

/// Whether `payload` is a store-batch entry.
pub(super) fn is_batch(payload: &[u8]) -> bool {
    matches!(payload.first(), Some(&TAG | &TAG_UNSEQUENCED))
}

/// The entry of `ops`, the batch with store sequence number `seq`.
pub(super) fn encode(seq: u64, ops: &[Op]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|op| match op {
            Op::Put(k, v) => 12 + k.len() + v.len(),
            Op::Remove(k) => 6 + k.len(),
        })
        .sum();
    let mut out = Vec::with_capacity(18 + size);
    out.push(TAG);
    let mut w = ByteWriter(&mut out);
    w.varint(seq);
    w.len(ops.len());
    for op in ops {
        match op {
            Op::Put(key, value) => {
                w.0.push(PUT);
                w.bytes(key);
                w.bytes(value);
            }
            Op::Remove(key) => {
                w.0.push(REMOVE);
                w.bytes(key);
            }
        }
    }
    out
}

/// The entry of `ops` as builds without sequence numbers wrote it.
#[cfg(test)]
pub(super) fn encode_unsequenced(ops: &[Op]) -> Vec<u8> {
    let mut entry = encode(0, ops);
    // The tag, then the one-byte varint 0 to drop.
    entry.splice(0..2, [TAG_UNSEQUENCED]);
    entry
}

/// The store sequence number of an entry (none in an entry without one), read without its ops.
pub(super) fn sequence(payload: &[u8]) -> Result<Option<u64>, String> {
    match payload.split_first() {
        Some((&TAG, body)) => ByteReader::new(body).varint("sequence number").map(Some),
        Some((&TAG_UNSEQUENCED, _)) => Ok(None),
        _ => Err("not a store batch".into()),
    }
}

/// The store sequence number (none in an entry without one) and ops of an entry; the error
/// names what is malformed.
pub(super) fn decode(payload: &[u8]) -> Result<(Option<u64>, Vec<Op>), String> {
    let (sequenced, body) = match payload.split_first() {
        Some((&TAG, body)) => (true, body),
        Some((&TAG_UNSEQUENCED, body)) => (false, body),
        _ => return Err("not a store batch".into()),
    };
    let mut r = ByteReader::new(body);
    let seq = if sequenced {
        Some(r.varint("sequence number")?)
    } else {
        None
    };
    // An op takes at least two bytes: its kind and an empty key's length.
    let count = r.len("op count", 2)?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = r.take(1, "op kind")?[0];
        let key = r.bytes("key")?.to_vec();
        ops.push(match kind {
            PUT => Op::Put(key, r.bytes("value")?.to_vec()),
            REMOVE => Op::Remove(key),
            other => return Err(format!("op kind {other} is neither put nor remove")),
        });
    }
    r.finish()?;
    Ok((seq, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_every_truncation() {
        let ops = vec![
            Op::Put(b"test/a".to_vec(), vec![1, 2, 3]),
            Op::Remove(b"model/x".to_vec()),
            Op::Put(Vec::new(), Vec::new()),
        ];
        let bytes = encode(300, &ops);
        assert!(is_batch(&bytes));
        assert_eq!(decode(&bytes).expect("decodes"), (Some(300), ops.clone()));
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        // An entry of an older build has no sequence number.
        let mut unsequenced = vec![TAG_UNSEQUENCED];
        unsequenced.extend_from_slice(&bytes[3..]);
        assert_eq!(decode(&unsequenced).expect("decodes"), (None, ops));
        // A result entry of the experiment journal is not a batch.
        assert!(!is_batch(&[1, 0]));
    }
}
