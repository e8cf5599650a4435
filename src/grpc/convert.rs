//! Conversions between generated protobuf types and domain types. Request conversions validate
//! and name the offending field; they are the only place client input enters the domain.

use std::collections::BTreeMap;

use prost_types::value::Kind;

use crate::pb;
use crate::registry::signing::ArtifactSignature;
use crate::registry::types::*;
use crate::registry::{Deletion, ModelFilter, Promotion, PromotionRights, RegistryError};
use crate::time::UnixNanos;

/// Nanoseconds since the epoch as a protobuf timestamp.
pub(crate) fn timestamp(ns: UnixNanos) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).expect("remainder below 1e9"),
    }
}

/// A protobuf `Struct` as a JSON object; non-finite numbers are rejected.
pub(crate) fn struct_to_json(
    field: &'static str,
    s: prost_types::Struct,
) -> Result<serde_json::Value, RegistryError> {
    let map = s
        .fields
        .into_iter()
        .map(|(k, v)| Ok((k, value_to_json(field, v)?)))
        .collect::<Result<serde_json::Map<_, _>, RegistryError>>()?;
    Ok(serde_json::Value::Object(map))
}

fn value_to_json(
    field: &'static str,
    v: prost_types::Value,
) -> Result<serde_json::Value, RegistryError> {
    use serde_json::Value as J;
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(b),
        Some(Kind::StringValue(s)) => J::String(s),
        Some(Kind::NumberValue(n)) => {
            J::Number(serde_json::Number::from_f64(n).ok_or_else(|| {
                RegistryError::invalid(field, format!("contains the non-finite number {n}"))
            })?)
        }
        Some(Kind::StructValue(s)) => struct_to_json(field, s)?,
        Some(Kind::ListValue(l)) => J::Array(
            l.values
                .into_iter()
                .map(|v| value_to_json(field, v))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A JSON object as a protobuf `Struct` (`None` for anything but an object).
pub(crate) fn json_to_struct(v: &serde_json::Value) -> Option<prost_types::Struct> {
    match v {
        serde_json::Value::Object(map) => Some(prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
        _ => None,
    }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        J::Object(_) => Kind::StructValue(json_to_struct(v).expect("an object")),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Decodes a `ModelType` enum field; unspecified or unknown values are rejected.
pub(crate) fn model_type(field: &'static str, raw: i32) -> Result<ModelType, RegistryError> {
    use pb::ModelType as P;
    match P::try_from(raw) {
        Ok(P::Signal) => Ok(ModelType::Signal),
        Ok(P::Risk) => Ok(ModelType::Risk),
        Ok(P::Execution) => Ok(ModelType::Execution),
        Ok(P::Regime) => Ok(ModelType::Regime),
        Ok(P::Portfolio) => Ok(ModelType::Portfolio),
        Ok(P::Unspecified) => Err(RegistryError::invalid(field, "must be set")),
        Err(_) => Err(RegistryError::invalid(
            field,
            format!("unknown value {raw}"),
        )),
    }
}

/// Decodes a `ModelStatus` enum field; unspecified or unknown values are rejected.
pub(crate) fn model_status(field: &'static str, raw: i32) -> Result<ModelStatus, RegistryError> {
    use pb::ModelStatus as P;
    match P::try_from(raw) {
        Ok(P::Development) => Ok(ModelStatus::Development),
        Ok(P::Testing) => Ok(ModelStatus::Testing),
        Ok(P::Staging) => Ok(ModelStatus::Staging),
        Ok(P::Production) => Ok(ModelStatus::Production),
        Ok(P::Deprecated) => Ok(ModelStatus::Deprecated),
        Ok(P::Archived) => Ok(ModelStatus::Archived),
        Ok(P::Unspecified) => Err(RegistryError::invalid(field, "must be set")),
        Err(_) => Err(RegistryError::invalid(
            field,
            format!("unknown value {raw}"),
        )),
    }
}

fn pb_model_type(t: ModelType) -> pb::ModelType {
    match t {
        ModelType::Signal => pb::ModelType::Signal,
        ModelType::Risk => pb::ModelType::Risk,
        ModelType::Execution => pb::ModelType::Execution,
        ModelType::Regime => pb::ModelType::Regime,
        ModelType::Portfolio => pb::ModelType::Portfolio,
    }
}

/// The protobuf value of a status.
pub(crate) fn pb_status(s: ModelStatus) -> pb::ModelStatus {
    match s {
        ModelStatus::Development => pb::ModelStatus::Development,
        ModelStatus::Testing => pb::ModelStatus::Testing,
        ModelStatus::Staging => pb::ModelStatus::Staging,
        ModelStatus::Production => pb::ModelStatus::Production,
        ModelStatus::Deprecated => pb::ModelStatus::Deprecated,
        ModelStatus::Archived => pb::ModelStatus::Archived,
    }
}

fn finite(field: &'static str, v: Option<f64>) -> Result<Option<f64>, RegistryError> {
    match v {
        Some(x) if !x.is_finite() => {
            Err(RegistryError::invalid(field, format!("{x} is not finite")))
        }
        other => Ok(other),
    }
}

fn bounded(field: &'static str, value: String, max: usize) -> Result<String, RegistryError> {
    if value.len() > max {
        return Err(RegistryError::invalid(
            field,
            format!("is longer than {max} bytes"),
        ));
    }
    Ok(value)
}

fn sorted(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

impl TryFrom<pb::RegisterModelHeader> for NewModel {
    type Error = RegistryError;

    fn try_from(h: pb::RegisterModelHeader) -> Result<Self, Self::Error> {
        let model_id = ModelId::new_model("model_id", &h.model_id)?;
        let version = parse_version("version", &h.version)?;
        let created_by = bounded("created_by", h.created_by, 256)?;
        if created_by.trim().is_empty() {
            return Err(RegistryError::invalid("created_by", "must be set"));
        }
        let name = bounded("name", h.name, 1024)?;
        Ok(NewModel {
            name: if name.is_empty() {
                model_id.to_string()
            } else {
                name
            },
            registry_id: RegistryId { model_id, version },
            model_type: model_type("model_type", h.model_type)?,
            created_by,
            description: bounded("description", h.description, 64 * 1024)?,
            framework: bounded("framework", h.framework, 256)?,
            input_features: h.input_features,
            output_schema: sorted(h.output_schema),
            figures: BacktestFigures {
                backtest_sharpe: finite("backtest_sharpe", h.backtest_sharpe)?,
                backtest_returns: finite("backtest_returns", h.backtest_returns)?,
                backtest_max_dd: finite("backtest_max_dd", h.backtest_max_dd)?,
                validation_score: finite("validation_score", h.validation_score)?,
            },
            resource_requirements: sorted(h.resource_requirements),
            latency_requirements_ms: finite("latency_requirements_ms", h.latency_requirements_ms)?,
            policy_config: h
                .policy_config
                .map(|s| struct_to_json("policy_config", s))
                .transpose()?,
            feature_spec: h
                .feature_spec
                .map(|s| struct_to_json("feature_spec", s))
                .transpose()?,
            expected_sha256: h
                .expected_sha256
                .map(|s| Sha256Digest::parse("expected_sha256", &s))
                .transpose()?,
            signature: match (h.signature.is_empty(), h.signer.is_empty()) {
                (true, true) => None,
                (false, false) => Some(ArtifactSignature {
                    signer: bounded("signer", h.signer, 256)?,
                    signature: h.signature,
                }),
                _ => {
                    return Err(RegistryError::invalid(
                        "signature",
                        "signature and signer go together",
                    ))
                }
            },
        })
    }
}

impl From<ModelView> for pb::ModelMetadata {
    fn from(view: ModelView) -> Self {
        let m = view.metadata;
        pb::ModelMetadata {
            registry_id: m.registry_id.to_string(),
            model_id: m.registry_id.model_id.to_string(),
            version: m.registry_id.version.to_string(),
            name: m.name,
            model_type: pb_model_type(m.model_type) as i32,
            status: pb_status(m.status) as i32,
            created_at: Some(timestamp(m.created_at)),
            created_by: m.created_by,
            description: m.description,
            framework: m.framework,
            input_features: m.input_features,
            output_schema: m.output_schema.into_iter().collect(),
            backtest_sharpe: m.figures.backtest_sharpe,
            backtest_returns: m.figures.backtest_returns,
            backtest_max_dd: m.figures.backtest_max_dd,
            validation_score: m.figures.validation_score,
            resource_requirements: m.resource_requirements.into_iter().collect(),
            latency_requirements_ms: m.latency_requirements_ms,
            approval_status: m.approval_status.as_str().to_string(),
            approved_by: m.approved_by,
            approved_at: m.approved_at.map(timestamp),
            model_checksum: m.model_checksum.to_string(),
            policy_checksum: m.policy_checksum.map(|d| d.to_string()).unwrap_or_default(),
            artifact_size_bytes: m.artifact_size_bytes,
            policy_config: view.policy_config.as_ref().and_then(json_to_struct),
            feature_spec: m.feature_spec.as_ref().and_then(json_to_struct),
            signature: m
                .signature
                .as_ref()
                .map(|s| s.signature.clone())
                .unwrap_or_default(),
            signer: m.signature.map(|s| s.signer).unwrap_or_default(),
            demoted_registry_id: String::new(),
        }
    }
}

impl TryFrom<pb::ListModelsRequest> for ModelFilter {
    type Error = RegistryError;

    fn try_from(r: pb::ListModelsRequest) -> Result<Self, Self::Error> {
        Ok(ModelFilter {
            model_type: r
                .model_type
                .map(|t| model_type("model_type", t))
                .transpose()?,
            status: r.status.map(|s| model_status("status", s)).transpose()?,
            created_by: Some(r.created_by).filter(|c| !c.is_empty()),
            model_id: Some(r.model_id)
                .filter(|m| !m.is_empty())
                .map(|m| ModelId::parse("model_id", &m))
                .transpose()?,
        })
    }
}

impl TryFrom<pb::PromoteModelRequest> for Promotion {
    type Error = RegistryError;

    fn try_from(r: pb::PromoteModelRequest) -> Result<Self, Self::Error> {
        Ok(Promotion {
            registry_id: RegistryId::parse("registry_id", &r.registry_id)?,
            target: model_status("target_status", r.target_status)?,
            approved_by: bounded("approved_by", r.approved_by, 256)?,
            // Set by the handler from the caller's identity.
            actor: String::new(),
            rights: PromotionRights {
                below_production: false,
                production: false,
            },
            reason: bounded("reason", r.reason, 4096)?,
            expected_status: r
                .expected_status
                .map(|s| model_status("expected_status", s))
                .transpose()?,
        })
    }
}

impl TryFrom<pb::DeleteModelRequest> for Deletion {
    type Error = RegistryError;

    fn try_from(r: pb::DeleteModelRequest) -> Result<Self, Self::Error> {
        Ok(Deletion {
            registry_id: RegistryId::parse("registry_id", &r.registry_id)?,
            force: r.force,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_seconds_and_nanos() {
        let t = timestamp(1_700_000_000_123_456_789);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_789));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_999_999));
    }

    #[test]
    fn structs_round_trip_through_json_and_reject_nan() {
        let json =
            serde_json::json!({"size": 0.02, "tags": ["a", true, null], "nested": {"x": 1.0}});
        let s = json_to_struct(&json).expect("object");
        assert_eq!(struct_to_json("policy_config", s).expect("finite"), json);
        let bad = prost_types::Struct {
            fields: [(
                "x".to_string(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        let err = struct_to_json("policy_config", bad).expect_err("NaN");
        assert!(err.to_string().contains("policy_config"), "{err}");
    }
}
