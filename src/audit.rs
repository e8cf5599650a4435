//! The append-only, hash-chained audit log.
//!
//! Every change that must be audited is committed through [`AuditLog::commit`] (a batch) or
//! [`AuditLog::execute`] (a command, whose fold chains its events with [`fold`]); either way
//! the events are in the same [`WriteBatch`] as the change, so the change and its record appear
//! together or not at all. Each event stores `prev_hash` and `hash = SHA-256(prev_hash ‖ "\n" ‖ canonical JSON
//! of {seq, time, actor, action, entity_type, entity, details})`, where the canonical JSON has
//! fields in that order and `details` sorted by key. The chain's head is also recorded under
//! [`keys::AUDIT_HEAD`], so truncating the tail is detected too.
//!
//! Depends on `storage` only.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::storage::{self, keys, Record, Storage, StorageError, WriteBatch};
use crate::time::{self, UnixNanos};

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When the change was committed; never earlier than the event before it.
    pub time: UnixNanos,
    /// Who made the change ("system" for automatic actions).
    pub actor: String,
    /// What happened, e.g. `model.promote`.
    pub action: String,
    /// "model" or "test".
    pub entity_type: String,
    /// The registry id or test id.
    pub entity: String,
    /// Action-specific facts.
    pub details: BTreeMap<String, String>,
    /// Hash of the previous event.
    pub prev_hash: String,
    /// Hash of this event (see the module docs).
    pub hash: String,
}

impl Record for AuditEvent {
    const FORMAT_VERSION: u8 = 1;
}

/// An event to be appended; the log assigns sequence number, time and hashes.
#[derive(Debug, Clone)]
pub struct AuditDraft {
    /// Who made the change.
    pub actor: String,
    /// What happened.
    pub action: &'static str,
    /// "model" or "test".
    pub entity_type: &'static str,
    /// The registry id or test id.
    pub entity: String,
    /// Action-specific facts.
    pub details: BTreeMap<String, String>,
}

impl AuditDraft {
    /// Starts a draft about a model version.
    pub fn model(
        actor: impl Into<String>,
        action: &'static str,
        registry_id: impl ToString,
    ) -> Self {
        Self {
            actor: actor.into(),
            action,
            entity_type: "model",
            entity: registry_id.to_string(),
            details: BTreeMap::new(),
        }
    }

    /// Starts a draft about a test.
    pub fn test(actor: impl Into<String>, action: &'static str, test_id: impl ToString) -> Self {
        Self {
            actor: actor.into(),
            action,
            entity_type: "test",
            entity: test_id.to_string(),
            details: BTreeMap::new(),
        }
    }

    /// Adds one detail.
    pub fn detail(mut self, key: &str, value: impl ToString) -> Self {
        self.details.insert(key.to_string(), value.to_string());
        self
    }
}

/// The newest event of a chain: what the next event links to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Its sequence number (0 before the first event).
    pub seq: u64,
    /// Its hash ([`GENESIS_HASH`] before the first event).
    pub hash: String,
}

impl ChainHead {
    /// The head of an empty chain.
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// Links `drafts` after `head`, all stamped `time`: the events with their sequence numbers and
/// hashes, and the new head. Pure: the same head, drafts and time give the same events, hashes
/// included, on any machine.
pub fn chain(
    head: &ChainHead,
    drafts: Vec<AuditDraft>,
    time: UnixNanos,
) -> storage::Result<(Vec<AuditEvent>, ChainHead)> {
    let mut next = head.clone();
    let mut events = Vec::with_capacity(drafts.len());
    for draft in drafts {
        let mut event = AuditEvent {
            seq: next.seq + 1,
            time,
            actor: draft.actor,
            action: draft.action.to_string(),
            entity_type: draft.entity_type.to_string(),
            entity: draft.entity,
            details: draft.details,
            prev_hash: next.hash.clone(),
            hash: String::new(),
        };
        event.hash = event_hash(&event)?;
        next = ChainHead {
            seq: event.seq,
            hash: event.hash.clone(),
        };
        events.push(event);
    }
    Ok((events, next))
}

impl Record for ChainHead {
    const FORMAT_VERSION: u8 = 1;
}

/// The outcome of [`AuditLog::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChainReport {
    /// How many events were checked (up to and including the first bad one).
    pub events_checked: u64,
    /// The first event that does not verify, and why.
    pub first_bad: Option<(u64, String)>,
}

/// Links `drafts` after the chain head `store` holds, stamped `time` (or the time of the event
/// before them, if later), and adds the events and the new head to `batch`. Deterministic: the
/// same store, drafts and time give the same events.
pub fn append(
    store: &Storage,
    batch: &mut WriteBatch,
    drafts: Vec<AuditDraft>,
    time: UnixNanos,
) -> storage::Result<Vec<AuditEvent>> {
    if drafts.is_empty() {
        return Ok(Vec::new());
    }
    let head = store
        .get::<ChainHead>(keys::AUDIT_HEAD)?
        .unwrap_or_else(ChainHead::genesis);
    // A command carries the time it was taken, which may precede the event another writer
    // chained meanwhile, and a wall clock can step back: events keep their order in time.
    let time = match head.seq {
        0 => time,
        seq => store
            .get::<AuditEvent>(&keys::audit(seq))?
            .map_or(time, |previous| time.max(previous.time)),
    };
    let (events, next) = chain(&head, drafts, time)?;
    for event in &events {
        batch.put(keys::audit(event.seq), event)?;
    }
    batch.put(keys::AUDIT_HEAD, &next)?;
    Ok(events)
}

/// The batch of one command: what `change` writes and answers, with its audit drafts chained
/// at `time` after the head `store` holds; the events are returned with the answer. A domain's
/// fold computes a command's batch with it, when the command is executed and when it is
/// replayed.
pub fn fold<T, E: From<StorageError>>(
    store: &Storage,
    time: UnixNanos,
    change: impl FnOnce(&mut WriteBatch) -> std::result::Result<(T, Vec<AuditDraft>), E>,
) -> std::result::Result<(WriteBatch, (T, Vec<AuditEvent>)), E> {
    let mut batch = WriteBatch::new();
    let (answer, drafts) = change(&mut batch)?;
    let events = append(store, &mut batch, drafts, time)?;
    Ok((batch, (answer, events)))
}

/// Logs committed events: every lifecycle change is audited, so this is the one place that
/// logs them all.
pub fn log_events(events: &[AuditEvent]) {
    for event in events {
        let details = serde_json::to_string(&event.details).unwrap_or_default();
        if event.action.contains("suspend") || event.action.contains("drift") {
            tracing::warn!(seq = event.seq, action = %event.action, entity = %event.entity, actor = %event.actor, %details, "audit");
        } else {
            tracing::info!(seq = event.seq, action = %event.action, entity = %event.entity, actor = %event.actor, %details, "audit");
        }
    }
}

/// The audit log of one storage. The chain's head lives in the store; appends read it where
/// they commit, so a change written as a batch and one executed as a command link in log order.
#[derive(Debug)]
pub struct AuditLog {
    /// Held by every append and by [`AuditLog::verify`], so a walk sees a whole chain.
    appends: Mutex<()>,
}

impl AuditLog {
    /// The audit log of `storage`, checking that its chain head decodes.
    pub fn open(storage: &Storage) -> storage::Result<Self> {
        storage.get::<ChainHead>(keys::AUDIT_HEAD)?;
        Ok(Self {
            appends: Mutex::new(()),
        })
    }

    /// Appends `drafts` to `batch`, stamped now, and applies it atomically. The caller must
    /// still [`Storage::flush`] before acknowledging.
    pub fn commit(
        &self,
        storage: &Storage,
        batch: WriteBatch,
        drafts: Vec<AuditDraft>,
    ) -> storage::Result<Vec<AuditEvent>> {
        let _appending = self.appends.lock();
        let (_, events) = storage.apply_with(|store| {
            let mut batch = batch;
            let events = append(store, &mut batch, drafts, time::now())?;
            Ok::<_, StorageError>((batch, events))
        })?;
        log_events(&events);
        Ok(events)
    }

    /// Executes a command (`command`, its log entry; see [`Storage::execute`]): `change`
    /// computes its writes, answer and audit drafts from the store at the command's position,
    /// and the drafts are chained at `time` ([`fold`]). Returns the answer. Not yet durable.
    pub fn execute<T, E: From<StorageError>>(
        &self,
        storage: &Storage,
        command: &[u8],
        time: UnixNanos,
        change: impl FnOnce(&Storage, &mut WriteBatch) -> std::result::Result<(T, Vec<AuditDraft>), E>,
    ) -> std::result::Result<T, E> {
        let _appending = self.appends.lock();
        let (_, (answer, events)) = storage.execute(command, |store| {
            fold(store, time, |batch| change(store, batch))
        })?;
        log_events(&events);
        Ok(answer)
    }

    /// The most recent `limit` events about `entity` (all when empty), oldest first. An event
    /// matches when its entity equals `entity` or starts with `entity` followed by ':'.
    pub fn list(
        &self,
        storage: &Storage,
        entity: &str,
        limit: usize,
    ) -> storage::Result<Vec<AuditEvent>> {
        let mut events = Vec::new();
        for entry in storage.scan_rev::<AuditEvent>(keys::AUDIT_PREFIX) {
            let (_, event) = entry?;
            if entity_matches(&event.entity, entity) {
                events.push(event);
                if events.len() >= limit {
                    break;
                }
            }
        }
        events.reverse();
        Ok(events)
    }

    /// Recomputes the whole chain and reports the first event that does not verify.
    pub fn verify(&self, storage: &Storage) -> storage::Result<ChainReport> {
        // Hold appends off so that the walk and the head agree.
        let _appending = self.appends.lock();
        let head = storage
            .get::<ChainHead>(keys::AUDIT_HEAD)?
            .unwrap_or_else(ChainHead::genesis);
        let mut expected_prev = GENESIS_HASH.to_string();
        let mut expected_seq = 1u64;
        let mut checked = 0u64;
        for entry in storage.scan_raw(keys::AUDIT_PREFIX) {
            let (key, bytes) = entry?;
            checked += 1;
            let key_seq = keys::audit_seq(&key);
            let bad = |why: String| ChainReport {
                events_checked: checked,
                first_bad: Some((key_seq.unwrap_or(expected_seq), why)),
            };
            if key_seq != Some(expected_seq) {
                return Ok(bad(format!(
                    "expected event {expected_seq}, found key {key_seq:?}"
                )));
            }
            let event = match storage::decode::<AuditEvent>(&key, &bytes) {
                Ok(event) => event,
                Err(err) => return Ok(bad(format!("undecodable: {err}"))),
            };
            if event.seq != expected_seq {
                return Ok(bad(format!("event says seq {}", event.seq)));
            }
            if event.prev_hash != expected_prev {
                return Ok(bad("prev_hash does not match the previous event".into()));
            }
            if event_hash(&event)? != event.hash {
                return Ok(bad("hash does not match the event's contents".into()));
            }
            expected_prev = event.hash;
            expected_seq += 1;
        }
        let last = expected_seq - 1;
        if last != head.seq || expected_prev != head.hash {
            return Ok(ChainReport {
                events_checked: checked,
                first_bad: Some((
                    last + 1,
                    format!("chain ends at {last} but its recorded head is {}", head.seq),
                )),
            });
        }
        Ok(ChainReport {
            events_checked: checked,
            first_bad: None,
        })
    }
}

fn entity_matches(entity: &str, filter: &str) -> bool {
    filter.is_empty()
        || entity == filter
        || entity
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// The canonical form that is hashed; field order is part of the chain format.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    time: UnixNanos,
    actor: &'a str,
    action: &'a str,
    entity_type: &'a str,
    entity: &'a str,
    details: &'a BTreeMap<String, String>,
}

fn event_hash(event: &AuditEvent) -> storage::Result<String> {
    let canonical = serde_json::to_vec(&Canonical {
        seq: event.seq,
        time: event.time,
        actor: &event.actor,
        action: &event.action,
        entity_type: &event.entity_type,
        entity: &event.entity,
        details: &event.details,
    })
    .map_err(StorageError::Encode)?;
    let mut hasher = Sha256::new();
    hasher.update(event.prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(&canonical);
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_filter_matches_exact_and_model_prefix() {
        assert!(entity_matches("m:1.0.0", ""));
        assert!(entity_matches("m:1.0.0", "m"));
        assert!(entity_matches("m:1.0.0", "m:1.0.0"));
        assert!(!entity_matches("mm:1.0.0", "m"));
        assert!(!entity_matches("m:1.0.0", "m:1.0"));
    }

    #[test]
    fn hash_covers_every_field() {
        let event = AuditEvent {
            seq: 1,
            time: 5,
            actor: "a".into(),
            action: "model.register".into(),
            entity_type: "model".into(),
            entity: "m:1.0.0".into(),
            details: BTreeMap::from([("k".to_string(), "v".to_string())]),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let base = event_hash(&event).expect("hashes");
        let mut changed = event.clone();
        changed.actor = "b".into();
        assert_ne!(event_hash(&changed).expect("hashes"), base);
        let mut changed = event.clone();
        changed.details.insert("k".into(), "w".into());
        assert_ne!(event_hash(&changed).expect("hashes"), base);
        let mut changed = event;
        changed.prev_hash = "1".repeat(64);
        assert_ne!(event_hash(&changed).expect("hashes"), base);
    }
}
