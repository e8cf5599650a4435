//! The experiment layer's error type. `grpc::status` maps each variant to a gRPC code.

use super::types::TestStatus;
use crate::registry::RegistryError;
use crate::storage::StorageError;

/// Everything that can go wrong with tests, allocations and results.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No such test.
    #[error("test {} not found", crate::text::shown(.test_id))]
    NotFound {
        /// The test id asked for.
        test_id: String,
    },
    /// Test ids are unique.
    #[error("test {} already exists", crate::text::shown(.test_id))]
    AlreadyExists {
        /// The duplicate.
        test_id: String,
    },
    /// A model version named by the request does not exist.
    #[error("model {} in {field} not found", crate::text::shown(.registry_id))]
    ModelNotFound {
        /// The field naming it.
        field: &'static str,
        /// The missing version.
        registry_id: String,
    },
    /// A model version cannot take part in a test in its current status.
    #[error("model {} is {status} and cannot be an arm", crate::text::shown(.registry_id))]
    ModelUnavailable {
        /// The version.
        registry_id: String,
        /// Its status.
        status: String,
    },
    /// A result for an ended test that is still settling, not for a decision made while it ran.
    #[error(
        "test {} has ended; until its settlement closes at {} only results for decisions made while it ran (by decision_id) are accepted",
        crate::text::shown(.test_id),
        crate::time::rfc3339(*.settles_at)
    )]
    Settling {
        /// The test.
        test_id: String,
        /// When settlement closes.
        settles_at: crate::time::UnixNanos,
    },
    /// The test is not in a status that allows the action.
    #[error("test {} is {status}; cannot {action}", crate::text::shown(.test_id))]
    WrongStatus {
        /// The test.
        test_id: String,
        /// Its current status.
        status: TestStatus,
        /// What was attempted.
        action: &'static str,
    },
    /// A request exceeds a documented limit (batch size, tests per batch).
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What was too large, with its size.
        what: String,
        /// The limit.
        limit: String,
    },
    /// Reading registry metadata failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Writing a results file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ExperimentError {
    /// Shorthand for [`ExperimentError::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}
