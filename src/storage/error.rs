//! The storage layer's error type, and what callers need to tell of it (a full disk).

use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The embedded engine reported an error (I/O, corruption).
    #[error("store: {what}: {source}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The engine's error.
        source: redb::Error,
    },
    /// Another process (or this one) has the data directory open.
    #[error("{} is in use by another arbiter process", .path.display())]
    Locked {
        /// The file that is locked.
        path: PathBuf,
    },
    /// A failure shared by several waiters (a failed group sync).
    #[error("{0}")]
    Shared(Arc<StorageError>),
    /// A part of storage failed earlier and refuses writes until the server restarts: after a
    /// failed write or fsync the kernel may have dropped unsynced data, so nothing written since
    /// can be trusted durable.
    #[error("the {part} failed ({source}); it refuses writes until the server restarts")]
    Failed {
        /// Which part.
        part: &'static str,
        /// The failure.
        source: Arc<std::io::Error>,
    },
    /// A stored record could not be decoded.
    #[error("record {key} could not be decoded: {source}")]
    Decode {
        /// The key, printed lossily.
        key: String,
        /// The decoder's error.
        source: serde_json::Error,
    },
    /// A stored record carries a format version this build does not know.
    #[error("record {key} has format version {found}; this build reads version {known}")]
    UnknownFormat {
        /// The key, printed lossily.
        key: String,
        /// The version byte found.
        found: u8,
        /// The version this build writes and reads.
        known: u8,
    },
    /// A stored value is malformed.
    #[error("record {key} is corrupt: {why}")]
    Corrupt {
        /// The key, printed lossily.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// A record could not be encoded.
    #[error("record could not be encoded: {0}")]
    Encode(serde_json::Error),
    /// The replicated log (a NATS JetStream stream) failed or refused an operation.
    #[error("replicated log: {0}")]
    Replicated(String),
    /// The background flusher is gone (the storage is shutting down).
    #[error("storage is shutting down")]
    Closed,
    /// This storage follows a log another process writes (a cluster's standby): it takes no
    /// writes of its own.
    #[error(
        "this arbiter is a standby: it answers Allocate and reads from the cluster's log; \
         changes and results go to the arbiter that holds the writer lease"
    )]
    Standby,
    /// A file system operation around the database failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl StorageError {
    /// Whether the cause is a full disk (ENOSPC, or a quota).
    pub fn is_disk_full(&self) -> bool {
        let full = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        };
        match self {
            Self::Store {
                source: redb::Error::Io(e),
                ..
            } => full(e),
            Self::Io { source, .. } => full(source),
            Self::Shared(inner) => inner.is_disk_full(),
            _ => false,
        }
    }
}
