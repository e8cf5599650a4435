//! The one mapping from domain errors to gRPC status codes.

use tonic::{Code, Status};

use crate::registry::RegistryError;
use crate::storage::StorageError;

/// Maps a registry error to its status, logging internal causes (the client gets a generic
/// message for those).
pub fn registry(err: RegistryError) -> Status {
    use RegistryError as E;
    let code = match &err {
        E::InvalidArgument { .. } => Code::InvalidArgument,
        E::NotFound { .. } | E::ModelNotFound { .. } | E::NoCurrentVersion { .. } => Code::NotFound,
        E::AlreadyExists { .. } => Code::AlreadyExists,
        E::InvalidTransition { .. }
        | E::SelfApproval { .. }
        | E::Unsigned { .. }
        | E::ProductionDelete { .. }
        | E::InUse { .. } => Code::FailedPrecondition,
        E::StatusChanged { .. } => Code::Aborted,
        E::NotPermitted { .. } => Code::PermissionDenied,
        E::ChecksumMismatch { .. } | E::ArtifactMissing { .. } => Code::DataLoss,
        E::ArtifactTooLarge { .. } | E::TooManyUploads { .. } => Code::ResourceExhausted,
        E::UploadIdle { .. } | E::UploadTooSlow { .. } => Code::DeadlineExceeded,
        E::Storage(inner) => return storage(inner),
        E::Io { source, .. } if io_disk_full(source) => return disk_full(&err),
        E::Io { .. } => return internal(&err),
    };
    Status::new(code, capped(err.to_string()))
}

/// The answer to any request that failed because the server's disk is full.
fn disk_full(err: &dyn std::error::Error) -> Status {
    tracing::error!(error = %err, "disk full");
    Status::resource_exhausted("the server's disk is full; nothing of this request was stored")
}

/// Whether an I/O error means a full disk.
fn io_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Maps a storage error: RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE during shutdown or
/// while a failed part refuses writes, DATA_LOSS for corrupt records, else INTERNAL with the
/// cause logged.
pub fn storage(err: &StorageError) -> Status {
    if err.is_disk_full() {
        return disk_full(err);
    }
    match err {
        StorageError::Closed => Status::unavailable("server is shutting down"),
        StorageError::Standby => Status::unavailable(err.to_string()),
        StorageError::Failed { .. } | StorageError::Replicated(_) => {
            tracing::error!(error = %err, "storage refuses writes");
            Status::unavailable(err.to_string())
        }
        StorageError::Corrupt { .. } | StorageError::Decode { .. } => {
            tracing::error!(error = %err, "stored data is corrupt");
            Status::data_loss(err.to_string())
        }
        StorageError::Shared(inner) => storage(inner),
        StorageError::Store { .. }
        | StorageError::Locked { .. }
        | StorageError::UnknownFormat { .. }
        | StorageError::Io { .. }
        | StorageError::Encode(_) => internal(err),
    }
}

fn internal(err: &dyn std::error::Error) -> Status {
    tracing::error!(error = %err, "internal error");
    Status::internal("internal storage error; see the server log")
}

/// INVALID_ARGUMENT for a malformed request field found by an adapter (outside any domain).
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(capped(format!("invalid {field}: {reason}")))
}

/// Longest status message sent. Client values in messages are already cut to 64 characters
/// ([`crate::text::shown`]); this bounds whatever else a message may hold, so that it always fits
/// a client's metadata limit.
const MAX_MESSAGE: usize = 1024;

fn capped(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// Maps an experiment error to its status.
pub fn experiment(err: crate::experiment::ExperimentError) -> Status {
    use crate::experiment::ExperimentError as E;
    let code = match &err {
        E::InvalidArgument { .. } => Code::InvalidArgument,
        E::NotFound { .. } | E::ModelNotFound { .. } => Code::NotFound,
        E::AlreadyExists { .. } => Code::AlreadyExists,
        E::ModelUnavailable { .. } | E::WrongStatus { .. } | E::Settling { .. } => {
            Code::FailedPrecondition
        }
        E::LimitExceeded { .. } => Code::ResourceExhausted,
        E::Storage(inner) => return storage(inner),
        E::Io { source, .. } if io_disk_full(source) => return disk_full(&err),
        E::Io { .. } => return internal(&err),
        // Mapped by the registry's own rules below.
        E::Registry(_) => Code::Internal,
    };
    match err {
        E::Registry(inner) => registry(inner),
        other => Status::new(code, capped(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_capped_on_a_character_boundary() {
        let status = invalid("x", "é".repeat(5000));
        assert!(status.message().len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(status.message().ends_with('…'));
        assert_eq!(capped("short".into()), "short");
    }
}
