//! The log entry of one store batch: the engine's writes, in order, so that replaying the entry
//! onto the engine's last checkpoint redoes the batch.
//!
//! Layout ([`ByteWriter`]): the tag [`TAG`]; op count; per op: kind (0 put, 1 remove), key,
//! and for a put the value. The owner's own entries share the log and must never begin with
//! [`TAG`] (the experiment journal's entries begin with their format version, a small number).

use super::engine::Op;
use super::{ByteReader, ByteWriter};

/// First byte of a store-batch entry.
pub(super) const TAG: u8 = 0xB5;

const PUT: u8 = 0;
const REMOVE: u8 = 1;

/// Whether `payload` is a store-batch entry.
pub(super) fn is_batch(payload: &[u8]) -> bool {
    payload.first() == Some(&TAG)
}

/// The entry of `ops`.
pub(super) fn encode(ops: &[Op]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|op| match op {
            Op::Put(k, v) => 12 + k.len() + v.len(),
            Op::Remove(k) => 6 + k.len(),
        })
        .sum();
    let mut out = Vec::with_capacity(8 + size);
    out.push(TAG);
    let mut w = ByteWriter(&mut out);
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

/// The ops of an entry; the error names what is malformed.
pub(super) fn decode(payload: &[u8]) -> Result<Vec<Op>, String> {
    let body = match payload.split_first() {
        Some((&TAG, body)) => body,
        _ => return Err("not a store batch".into()),
    };
    let mut r = ByteReader::new(body);
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
    Ok(ops)
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
        let bytes = encode(&ops);
        assert!(is_batch(&bytes));
        assert_eq!(decode(&bytes).expect("decodes"), ops);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        // A result entry of the experiment journal is not a batch.
        assert!(!is_batch(&[1, 0]));
    }
}
