//! The registry's error type. `grpc::status` maps each variant to a gRPC code.

use super::types::ModelStatus;
use crate::storage::StorageError;

/// Everything that can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No such model version.
    #[error("model {} not found", crate::text::shown(.registry_id))]
    NotFound {
        /// The registry id asked for.
        registry_id: String,
    },
    /// No version of the model exists.
    #[error("model {} has no versions", crate::text::shown(.model_id))]
    ModelNotFound {
        /// The model id asked for.
        model_id: String,
    },
    /// Every version of the model is DEPRECATED or ARCHIVED, and none was named.
    #[error(
        "model {} has only DEPRECATED or ARCHIVED versions; ask for one by its version",
        crate::text::shown(.model_id)
    )]
    NoCurrentVersion {
        /// The model id asked for.
        model_id: String,
    },
    /// Versions are immutable.
    #[error("model {} already exists; versions are immutable", crate::text::shown(.registry_id))]
    AlreadyExists {
        /// The duplicate.
        registry_id: String,
    },
    /// The lifecycle table forbids the move.
    #[error("model {} cannot move from {from} to {to}", crate::text::shown(.registry_id))]
    InvalidTransition {
        /// The version.
        registry_id: String,
        /// Current status.
        from: ModelStatus,
        /// Requested status.
        to: ModelStatus,
    },
    /// Four-eyes rule: the creator cannot approve their own model.
    #[error("model {} was created by {}, who cannot also approve it for PRODUCTION", crate::text::shown(.registry_id), crate::text::shown(.approver))]
    SelfApproval {
        /// The version.
        registry_id: String,
        /// The approver (= creator).
        approver: String,
    },
    /// The caller lacks the role the change needs (found by the domain, which sees the state).
    #[error("{what} needs the role {role:?}")]
    NotPermitted {
        /// The change.
        what: String,
        /// The role it needs.
        role: &'static str,
    },
    /// PRODUCTION needs a version signed by a trusted signer (`--require-signed-production`).
    #[error("model {} cannot become PRODUCTION: {why}", crate::text::shown(.registry_id))]
    Unsigned {
        /// The version.
        registry_id: String,
        /// Unsigned, or why its signature is not accepted.
        why: String,
    },
    /// A compare-and-set promotion lost.
    #[error("model {} is {actual}, not the expected {expected}", crate::text::shown(.registry_id))]
    StatusChanged {
        /// The version.
        registry_id: String,
        /// The status the client expected.
        expected: ModelStatus,
        /// The status found.
        actual: ModelStatus,
    },
    /// Deleting PRODUCTION requires `force`.
    #[error("model {} is PRODUCTION; deleting it requires force", crate::text::shown(.registry_id))]
    ProductionDelete {
        /// The version.
        registry_id: String,
    },
    /// The version is an arm of a running or paused test.
    #[error("model {} is an arm of active test {}", crate::text::shown(.registry_id), crate::text::shown(.test_id))]
    InUse {
        /// The version.
        registry_id: String,
        /// One active test using it.
        test_id: String,
    },
    /// Stored bytes do not hash to the recorded (or expected) checksum.
    #[error("{what} checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// "artifact" or "policy".
        what: &'static str,
        /// The recorded or client-supplied digest.
        expected: String,
        /// The computed digest.
        actual: String,
    },
    /// The artifact file of a registered version is gone.
    #[error("artifact of model {} is missing", crate::text::shown(.registry_id))]
    ArtifactMissing {
        /// The version.
        registry_id: String,
    },
    /// The upload exceeds the configured maximum.
    #[error("artifact exceeds the maximum size of {limit} bytes")]
    ArtifactTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// As many uploads as allowed are in progress.
    #[error("{limit} uploads are in progress, the most allowed at once; retry later")]
    TooManyUploads {
        /// The configured limit.
        limit: usize,
    },
    /// An upload averaged less than the minimum rate, and was abandoned.
    #[error(
        "the upload averaged {rate} bytes/s, below the minimum of {min} bytes/s; it was abandoned"
    )]
    UploadTooSlow {
        /// What it averaged.
        rate: u64,
        /// The configured minimum.
        min: u64,
    },
    /// The client sent nothing for too long during an upload, which was abandoned.
    #[error("no message for {} s during the upload; it was abandoned", .idle.as_secs_f64())]
    UploadIdle {
        /// The configured idle timeout.
        idle: std::time::Duration,
    },
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading or writing an artifact file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl RegistryError {
    /// Shorthand for [`RegistryError::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
