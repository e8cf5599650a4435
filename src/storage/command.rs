//! Command entries: changes logged as what was asked (a typed domain command, encoded by the
//! domain), not as the writes it made. The store batch of a command is computed by the domain's
//! [`CommandFold`] from the command and the store as the log's earlier entries left it, both
//! when the command is executed ([`Storage::execute`]) and when it is replayed at open, so the
//! outcome of a command (refused or not, what it changed, the audit events it chained) is a
//! function of its position in the log.
//!
//! Layout: the tag [`TAG`], the command's store sequence number (varint, see
//! [`super::Storage`]), then the domain's bytes. The owner's own entries share the log and
//! never begin with [`TAG`] (see [`super::batch_entry`]).

use super::{ByteReader, ByteWriter, Record, Storage, StorageError, WriteBatch};

/// First byte of a command entry.
pub(super) const TAG: u8 = 0xC3;

/// Whether `payload` is a command entry.
pub(super) fn is_command(payload: &[u8]) -> bool {
    payload.first() == Some(&TAG)
}

/// The entry of `command`, with store sequence number `seq`.
fn encode(seq: u64, command: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(11 + command.len());
    entry.push(TAG);
    ByteWriter(&mut entry).varint(seq);
    entry.extend_from_slice(command);
    entry
}

/// The store sequence number and the domain's bytes of a command entry.
pub(super) fn decode(payload: &[u8]) -> Result<(u64, &[u8]), String> {
    let body = match payload.split_first() {
        Some((&TAG, body)) => body,
        _ => return Err("not a command".into()),
    };
    let mut r = ByteReader::new(body);
    let seq = r.varint("sequence number")?;
    let consumed = body.len() - r.remaining();
    Ok((seq, &body[consumed..]))
}

/// A domain's command as its entry carries it (what [`Storage::execute`] takes): the domain's
/// byte, then the versioned record.
pub fn encode_command<T: Record>(domain: u8, command: &T) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![domain];
    bytes.extend(super::encode(command)?);
    Ok(bytes)
}

/// The batch of a domain's command replayed from the log (`bytes`: after the domain's byte):
/// decodes it (named `what` in errors) and applies it with `apply`.
pub fn replay_command<T: Record, E: std::fmt::Display>(
    store: &Storage,
    bytes: &[u8],
    what: &str,
    apply: impl FnOnce(&Storage, &T) -> Result<WriteBatch, E>,
) -> Result<WriteBatch, String> {
    let command: T = super::decode(what.as_bytes(), bytes).map_err(|e| e.to_string())?;
    apply(store, &command).map_err(|e| e.to_string())
}

/// How the domain applies its commands.
///
/// `replay` must be deterministic: the same store and the same command give the same batch on
/// any machine at any time (no clock, no randomness, no configuration that is not in the
/// command), and it must accept every command [`Storage::execute`] accepted at the same
/// position.
pub trait CommandFold: Send + Sync {
    /// The store batch of `command` (the domain's bytes), applied to `store` as every earlier
    /// entry left it; `Err` names what is wrong (a command that does not decode, or one refused
    /// on replay although it was accepted).
    fn replay(&self, store: &Storage, command: &[u8]) -> Result<WriteBatch, String>;
}

/// The fold of a storage opened without a domain: it replays no command.
#[derive(Debug, Clone, Copy)]
pub struct NoCommands;

impl CommandFold for NoCommands {
    fn replay(&self, _: &Storage, _: &[u8]) -> Result<WriteBatch, String> {
        Err("the storage was opened without the fold that applies commands".into())
    }
}

impl Storage {
    /// Executes a command: `decide` computes its batch and answer from the store as every
    /// earlier entry left it, with no other change in between; the batch is applied and the
    /// command (`command`, the domain's bytes) appended to the log, whose position is
    /// returned. Refused (`decide` fails): nothing is applied or logged, which is the fold's
    /// own outcome for a refused command. Not yet durable (see [`Storage::flush_through`]).
    ///
    /// `decide` must compute what the [`CommandFold`] this storage replays with computes for
    /// `command`.
    pub fn execute<T, E: From<StorageError>>(
        &self,
        command: &[u8],
        decide: impl FnOnce(&Self) -> Result<(WriteBatch, T), E>,
    ) -> Result<(u64, T), E> {
        self.commit_entry(decide, |seq, _| Some(encode(seq, command)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_what_is_not_a_command() {
        let entry = encode(300, b"Rbody");
        assert!(is_command(&entry));
        assert_eq!(decode(&entry), Ok((300, &b"Rbody"[..])));
        assert!(decode(&entry[..1]).is_err(), "no sequence number");
        assert!(decode(&[0xB6, 1]).is_err());
        assert!(!is_command(&[1, 0]));
    }
}
