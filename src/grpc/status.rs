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
        E::NotFound { .. } | E::ModelNotFound { .. } => Code::NotFound,
        E::AlreadyExists { .. } => Code::AlreadyExists,
        E::InvalidTransition { .. }
        | E::SelfApproval { .. }
        | E::ProductionDelete { .. }
        | E::InUse { .. } => Code::FailedPrecondition,
        E::StatusChanged { .. } => Code::Aborted,
        E::ChecksumMismatch { .. } | E::ArtifactMissing { .. } => Code::DataLoss,
        E::ArtifactTooLarge { .. } | E::TooManyUploads { .. } => Code::ResourceExhausted,
        E::UploadIdle { .. } => Code::DeadlineExceeded,
        E::Storage(inner) => return storage(inner),
        E::Io { .. } => return internal(&err),
    };
    Status::new(code, err.to_string())
}

/// Maps a storage error: INTERNAL with the cause logged, or UNAVAILABLE during shutdown.
pub fn storage(err: &StorageError) -> Status {
    match err {
        StorageError::Closed => Status::unavailable("server is shutting down"),
        StorageError::Corrupt { .. } | StorageError::Decode { .. } => {
            tracing::error!(error = %err, "stored data is corrupt");
            Status::data_loss(err.to_string())
        }
        _ => internal(err),
    }
}

fn internal(err: &dyn std::error::Error) -> Status {
    tracing::error!(error = %err, "internal error");
    Status::internal("internal storage error; see the server log")
}

/// INVALID_ARGUMENT for a malformed request field found by an adapter (outside any domain).
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {reason}"))
}

/// Maps an experiment error to its status.
pub fn experiment(err: crate::experiment::ExperimentError) -> Status {
    use crate::experiment::ExperimentError as E;
    let code = match &err {
        E::InvalidArgument { .. } => Code::InvalidArgument,
        E::NotFound { .. } | E::ModelNotFound { .. } => Code::NotFound,
        E::AlreadyExists { .. } => Code::AlreadyExists,
        E::ModelUnavailable { .. } | E::WrongStatus { .. } => Code::FailedPrecondition,
        E::LimitExceeded { .. } => Code::ResourceExhausted,
        E::Storage(inner) => return storage(inner),
        E::Io { .. } => return internal(&err),
        // Mapped by the registry's own rules below.
        E::Registry(_) => Code::Internal,
    };
    match err {
        E::Registry(inner) => registry(inner),
        other => Status::new(code, other.to_string()),
    }
}
