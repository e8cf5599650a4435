//! Registry value types: identifiers (validated newtypes), model type and status, and the stored
//! metadata record of one model version.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RegistryError;
use crate::storage::Record;
use crate::text::shown;
use crate::time::UnixNanos;

/// What is wrong with `value` as a new identifier, or `None` when it is valid. Model ids and test
/// ids share the grammar `[A-Za-z0-9._-]{1,128}`, not starting with a dot: `.` and `..` would
/// name directories, and file names starting with a dot are hidden.
pub fn identifier_problem(value: &str) -> Option<String> {
    if let Some(problem) = stored_identifier_problem(value) {
        return Some(problem);
    }
    if value.starts_with('.') {
        return Some(format!("{} must not start with a dot", shown(value)));
    }
    None
}

/// What is wrong with `value` as an identifier read from storage. Older builds accepted ids
/// starting with a dot; records holding them must still decode, or the data directory would
/// not start.
pub fn stored_identifier_problem(value: &str) -> Option<String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > 128 || !value.chars().all(valid_char) {
        return Some(format!(
            "{} must match [A-Za-z0-9._-]{{1,128}}",
            shown(value)
        ));
    }
    None
}

/// Checks the identifier grammar, naming `field` on failure.
pub fn validate_identifier(field: &'static str, value: &str) -> Result<(), RegistryError> {
    match identifier_problem(value) {
        Some(reason) => Err(RegistryError::invalid(field, reason)),
        None => Ok(()),
    }
}

/// A model identifier, e.g. `signal_lstm`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelId(String);

impl ModelId {
    /// Reads `value` as the id of a model that may exist: the grammar ids have always had,
    /// so models an older build stored with a leading dot stay reachable. New models must
    /// pass [`ModelId::new_model`].
    pub fn parse(field: &'static str, value: &str) -> Result<Self, RegistryError> {
        match stored_identifier_problem(value) {
            Some(reason) => Err(RegistryError::invalid(field, reason)),
            None => Ok(Self(value.to_string())),
        }
    }

    /// Validates `value` as the id of a model being registered (no leading dot).
    pub fn new_model(field: &'static str, value: &str) -> Result<Self, RegistryError> {
        validate_identifier(field, value)?;
        Ok(Self(value.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Decodes stored ids (see [`stored_identifier_problem`]).
impl TryFrom<String> for ModelId {
    type Error = RegistryError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("model_id", &value)
    }
}

impl From<ModelId> for String {
    fn from(id: ModelId) -> Self {
        id.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest accepted version text: a version names a file (`<version>.bin`), and file names are
/// limited to 255 bytes.
pub const MAX_VERSION_LEN: usize = 128;

/// Parses a semantic version of at most [`MAX_VERSION_LEN`] bytes, naming `field` on failure.
pub fn parse_version(field: &'static str, value: &str) -> Result<semver::Version, RegistryError> {
    if value.len() > MAX_VERSION_LEN {
        return Err(RegistryError::invalid(
            field,
            format!(
                "{} is {} bytes; a version has at most {MAX_VERSION_LEN}",
                shown(value),
                value.len()
            ),
        ));
    }
    parse_stored_version(field, value)
}

/// Parses a semantic version of any length (stored records).
fn parse_stored_version(
    field: &'static str,
    value: &str,
) -> Result<semver::Version, RegistryError> {
    semver::Version::parse(value).map_err(|e| {
        RegistryError::invalid(
            field,
            format!("{} is not a semantic version: {e}", shown(value)),
        )
    })
}

/// `<model_id>:<version>`, the identity of one model version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegistryId {
    /// The model.
    pub model_id: ModelId,
    /// Its version.
    pub version: semver::Version,
}

impl RegistryId {
    /// Parses `<model_id>:<version>`, naming `field` on failure.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, RegistryError> {
        let Some((model, version)) = value.split_once(':') else {
            return Err(RegistryError::invalid(
                field,
                format!("{} is not of the form <model_id>:<version>", shown(value)),
            ));
        };
        Ok(Self {
            model_id: ModelId::parse(field, model)?,
            version: parse_version(field, version)?,
        })
    }
}

/// Decodes stored ids leniently, like [`ModelId`]'s `TryFrom`.
impl TryFrom<String> for RegistryId {
    type Error = RegistryError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        let Some((model, version)) = value.split_once(':') else {
            return Err(RegistryError::invalid(
                "registry_id",
                format!("{} is not of the form <model_id>:<version>", shown(&value)),
            ));
        };
        Ok(Self {
            model_id: ModelId::try_from(model.to_string())?,
            version: parse_stored_version("registry_id", version)?,
        })
    }
}

impl From<RegistryId> for String {
    fn from(id: RegistryId) -> Self {
        id.to_string()
    }
}

impl fmt::Display for RegistryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.model_id, self.version)
    }
}

/// A SHA-256 digest, shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses 64 hex digits (either case), naming `field` on failure.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, RegistryError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(value, &mut bytes).map_err(|_| {
            RegistryError::invalid(
                field,
                format!("{} is not 64 hexadecimal digits", shown(value)),
            )
        })?;
        Ok(Self(bytes))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = RegistryError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("sha256", &value)
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> Self {
        d.to_string()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// What a model does in the trading stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelType {
    /// Produces trading signals.
    Signal,
    /// Sizes or limits risk.
    Risk,
    /// Decides how orders are worked.
    Execution,
    /// Classifies market regimes.
    Regime,
    /// Allocates across positions.
    Portfolio,
}

/// Lifecycle state of a model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelStatus {
    /// Registered, not yet tested.
    Development,
    /// Under test.
    Testing,
    /// Ready for approval.
    Staging,
    /// Approved; at most one version per model.
    Production,
    /// Retired, still fetchable by version.
    Deprecated,
    /// Retired for good.
    Archived,
}

impl ModelStatus {
    /// The upper-case name used in messages and the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Development => "DEVELOPMENT",
            Self::Testing => "TESTING",
            Self::Staging => "STAGING",
            Self::Production => "PRODUCTION",
            Self::Deprecated => "DEPRECATED",
            Self::Archived => "ARCHIVED",
        }
    }
}

impl fmt::Display for ModelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Development,
            Self::Testing,
            Self::Staging,
            Self::Production,
            Self::Deprecated,
            Self::Archived,
        ]
        .into_iter()
        .find(|status| status.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("unknown model status {s:?}"))
    }
}

/// Whether a version has been approved for PRODUCTION.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    /// Not approved for PRODUCTION (yet).
    Pending,
    /// Approved for PRODUCTION by someone other than its creator.
    Approved,
}

impl ApprovalStatus {
    /// "pending" or "approved".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
        }
    }
}

/// Everything a client supplies when registering a version (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct NewModel {
    /// The version being registered.
    pub registry_id: RegistryId,
    /// Display name; defaults to the model id.
    pub name: String,
    /// Model type.
    pub model_type: ModelType,
    /// Who registers it (needed for the four-eyes rule).
    pub created_by: String,
    /// Free text.
    pub description: String,
    /// e.g. "onnx".
    pub framework: String,
    /// Feature names the model reads.
    pub input_features: Vec<String>,
    /// Output name → type.
    pub output_schema: BTreeMap<String, String>,
    /// Backtest and validation figures.
    pub figures: BacktestFigures,
    /// Resource name → requirement.
    pub resource_requirements: BTreeMap<String, String>,
    /// Latency budget.
    pub latency_requirements_ms: Option<f64>,
    /// The trading policy stored beside the model.
    pub policy_config: Option<serde_json::Value>,
    /// Feature specification.
    pub feature_spec: Option<serde_json::Value>,
    /// When set, the artifact must hash to this digest.
    pub expected_sha256: Option<Sha256Digest>,
    /// A signature over the version (see `signing`).
    pub signature: Option<super::signing::ArtifactSignature>,
}

/// Optional backtest and validation figures of a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BacktestFigures {
    /// Backtest Sharpe ratio.
    pub backtest_sharpe: Option<f64>,
    /// Backtest return.
    pub backtest_returns: Option<f64>,
    /// Backtest maximum drawdown.
    pub backtest_max_dd: Option<f64>,
    /// Validation score.
    pub validation_score: Option<f64>,
}

/// The stored metadata of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// `<model_id>:<version>`.
    pub registry_id: RegistryId,
    /// Display name.
    pub name: String,
    /// Model type.
    pub model_type: ModelType,
    /// Lifecycle state.
    pub status: ModelStatus,
    /// Registration time.
    pub created_at: UnixNanos,
    /// Who registered it.
    pub created_by: String,
    /// Free text.
    pub description: String,
    /// e.g. "onnx".
    pub framework: String,
    /// Feature names the model reads.
    pub input_features: Vec<String>,
    /// Output name → type.
    pub output_schema: BTreeMap<String, String>,
    /// Backtest and validation figures.
    pub figures: BacktestFigures,
    /// Resource name → requirement.
    pub resource_requirements: BTreeMap<String, String>,
    /// Latency budget.
    pub latency_requirements_ms: Option<f64>,
    /// Approval for PRODUCTION.
    pub approval_status: ApprovalStatus,
    /// Who approved it (empty until approved).
    pub approved_by: String,
    /// When it was approved.
    pub approved_at: Option<UnixNanos>,
    /// SHA-256 of the artifact.
    pub model_checksum: Sha256Digest,
    /// SHA-256 of the stored policy document, if any.
    pub policy_checksum: Option<Sha256Digest>,
    /// Artifact size.
    pub artifact_size_bytes: u64,
    /// Feature specification.
    pub feature_spec: Option<serde_json::Value>,
    /// The signature given at registration, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<super::signing::ArtifactSignature>,
}

impl Record for ModelMetadata {
    const FORMAT_VERSION: u8 = 1;
}

/// Metadata plus the stored policy document, as returned to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    /// The stored metadata.
    pub metadata: ModelMetadata,
    /// The policy document, parsed.
    pub policy_config: Option<serde_json::Value>,
}

/// Live figures of a model from the tests it takes part in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LivePerformance {
    /// Results recorded for any version of the model.
    pub results: u64,
    /// Mean return per result.
    pub mean_return: f64,
    /// Mean over sample standard deviation; 0 when undefined.
    pub sharpe_ratio: f64,
    /// Share of returns above zero.
    pub win_rate: f64,
    /// Tests in which a version is an arm.
    pub tests: u32,
    /// Arms of the model's versions in which drift was found.
    pub drift: Vec<ArmDrift>,
}

/// Drift found in one arm of a test.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmDrift {
    /// The test.
    pub test_id: String,
    /// The arm.
    pub arm_id: String,
    /// The arm's model version.
    pub registry_id: String,
    /// Alarms so far.
    pub alarms: u64,
    /// The arm's result count at the last alarm.
    pub last_at: u64,
    /// +1 a rise of the mean, −1 a fall.
    pub last_direction: i8,
}

/// The answer of `GetModelPerformance`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPerformance {
    /// The highest-semver version.
    pub latest: ModelMetadata,
    /// Live figures across all versions.
    pub live: LivePerformance,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_grammar() {
        for ok in ["a", "signal_v1", "A.b-C_9", &"x".repeat(128)] {
            assert!(validate_identifier("model_id", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a:b",
            "a/b",
            "é",
            &"x".repeat(129),
            ".",
            "..",
            ".hidden",
        ] {
            let err = validate_identifier("model_id", bad).expect_err(bad);
            assert!(err.to_string().contains("model_id"), "{err}");
        }
        // Ids an older build stored still decode, so their data directory starts.
        let stored: ModelId = serde_json::from_str("\".hidden\"").expect("lenient");
        assert_eq!(stored.as_str(), ".hidden");
        let stored: RegistryId = serde_json::from_str("\"..:1.0.0\"").expect("lenient");
        assert_eq!(stored.model_id.as_str(), "..");
        assert!(ModelId::new_model("model_id", ".hidden").is_err());
        assert!(
            ModelId::parse("model_id", ".hidden").is_ok(),
            "existing models stay reachable"
        );
    }

    #[test]
    fn versions_are_bounded_in_length() {
        let long = format!("1.0.0-{}", "a".repeat(300));
        let err = parse_version("version", &long).expect_err("too long");
        assert!(err.to_string().contains("at most 128"), "{err}");
        assert!(
            err.to_string().len() < 200,
            "the value is not echoed whole: {err}"
        );
        assert!(parse_version("version", &format!("1.0.0-{}", "a".repeat(100))).is_ok());
    }

    #[test]
    fn semver_orders_numerically_and_pre_releases_first() {
        let v = |s| parse_version("version", s).expect("valid");
        assert!(v("1.9.0") < v("1.10.0"));
        assert!(v("1.10.0") < v("2.0.0-rc.1"));
        assert!(v("2.0.0-rc.1") < v("2.0.0"));
        assert!(parse_version("version", "1.0").is_err());
    }

    #[test]
    fn registry_ids_round_trip() {
        let id = RegistryId::parse("registry_id", "m:1.2.3-rc.1").expect("valid");
        assert_eq!(id.to_string(), "m:1.2.3-rc.1");
        assert!(RegistryId::parse("registry_id", "m").is_err());
        assert!(RegistryId::parse("registry_id", "m:x").is_err());
    }
}
