//! `arbiter models register|list|show|get|promote|delete|verify`.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use super::Connection as Channel;
use crate::registry::signing;
use crate::registry::types::{RegistryId, Sha256Digest};
use serde_json::{json, Value};

use super::{time, CliError};
use crate::config::{ModelStatusArg, ModelTypeArg, ModelsAction, ModelsArgs};
use crate::grpc::convert::json_to_struct;
use crate::pb::{self, registry_client::RegistryClient};

/// Bytes per uploaded chunk (below the 4 MiB gRPC message limit).
const CHUNK: usize = 1 << 20;

fn status(arg: ModelStatusArg) -> pb::ModelStatus {
    match arg {
        ModelStatusArg::Development => pb::ModelStatus::Development,
        ModelStatusArg::Testing => pb::ModelStatus::Testing,
        ModelStatusArg::Staging => pb::ModelStatus::Staging,
        ModelStatusArg::Production => pb::ModelStatus::Production,
        ModelStatusArg::Deprecated => pb::ModelStatus::Deprecated,
        ModelStatusArg::Archived => pb::ModelStatus::Archived,
    }
}

fn model_type(arg: ModelTypeArg) -> pb::ModelType {
    match arg {
        ModelTypeArg::Signal => pb::ModelType::Signal,
        ModelTypeArg::Risk => pb::ModelType::Risk,
        ModelTypeArg::Execution => pb::ModelType::Execution,
        ModelTypeArg::Regime => pb::ModelType::Regime,
        ModelTypeArg::Portfolio => pb::ModelType::Portfolio,
    }
}

fn status_name(raw: i32) -> String {
    pb::ModelStatus::try_from(raw)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("MODEL_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| "UNKNOWN".into())
}

fn metadata_json(m: &pb::ModelMetadata) -> Value {
    let object = |s: &Option<prost_types::Struct>| {
        s.clone()
            .and_then(|s| crate::grpc::convert::struct_to_json("document", s).ok())
            .unwrap_or(Value::Null)
    };
    json!({"registry_id": m.registry_id, "model_id": m.model_id, "version": m.version, "name": m.name,
           "model_type": pb::ModelType::try_from(m.model_type).map(|t| t.as_str_name()).unwrap_or("UNKNOWN")
               .trim_start_matches("MODEL_TYPE_"),
           "status": status_name(m.status), "created_at": time(m.created_at.as_ref()), "created_by": m.created_by,
           "description": m.description, "framework": m.framework,
           "approval_status": m.approval_status, "approved_by": m.approved_by,
           "approved_at": m.approved_at.as_ref().map(|t| time(Some(t))),
           "model_checksum": m.model_checksum, "policy_checksum": m.policy_checksum,
           "artifact_size_bytes": m.artifact_size_bytes,
           "backtest_sharpe": m.backtest_sharpe, "backtest_returns": m.backtest_returns,
           "backtest_max_dd": m.backtest_max_dd, "validation_score": m.validation_score,
           "latency_requirements_ms": m.latency_requirements_ms,
           "input_features": m.input_features, "output_schema": m.output_schema,
           "resource_requirements": m.resource_requirements,
           "signer": m.signer, "signature": hex::encode(&m.signature),
           "policy_config": object(&m.policy_config), "feature_spec": object(&m.feature_spec)})
}

/// One version for people: a line per field that is set, documents as indented JSON.
fn metadata_text(m: &pb::ModelMetadata) -> String {
    super::fields_text(&metadata_json(m), &[])
}

fn metadata_line(m: &pb::ModelMetadata) -> String {
    format!(
        "{:<40} {:<12} {:<30} {:>12}  {}\n",
        m.registry_id,
        status_name(m.status),
        time(m.created_at.as_ref()),
        m.artifact_size_bytes,
        m.model_checksum
    )
}

/// The signature of `registry_id` with the artifact `file` and `policy`, by the key in
/// `key_file`: the message is built from the checksums the server will compute (the policy's is
/// over the canonical JSON the server stores).
fn signature(
    registry_id: &str,
    file: &Path,
    policy: Option<prost_types::Struct>,
    key_file: &Path,
) -> Result<[u8; 64], CliError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CliError::File {
            path: path.display().to_string(),
            source,
        })
    };
    let id = RegistryId::parse("registry_id", registry_id)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let artifact = Sha256Digest::of(&read(file)?);
    let policy = policy
        .map(|p| {
            let json = crate::grpc::convert::struct_to_json("policy", p)
                .map_err(|e| CliError::Failed(e.to_string()))?;
            let bytes = serde_json::to_vec(&json).map_err(|e| CliError::Failed(e.to_string()))?;
            Ok::<_, CliError>(Sha256Digest::of(&bytes))
        })
        .transpose()?;
    let key_text = String::from_utf8_lossy(&read(key_file)?).trim().to_string();
    let mut seed = [0u8; 32];
    hex::decode_to_slice(&key_text, &mut seed).map_err(|_| {
        CliError::Failed(format!(
            "{}: a key file holds 64 hexadecimal digits",
            key_file.display()
        ))
    })?;
    let message = signing::signed_message(&id, &artifact, policy.as_ref());
    Ok(signing::sign(&seed, &message))
}

/// Reads a policy or feature file: a YAML mapping or a JSON object (JSON is read as YAML).
fn read_object(path: &Path) -> Result<prost_types::Struct, CliError> {
    let file_error = |source| CliError::File {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(file_error)?;
    let value: Value = serde_norway::from_str(&text).map_err(|e| {
        CliError::Failed(format!("{}: not valid YAML or JSON: {e}", path.display()))
    })?;
    json_to_struct(&value).ok_or_else(|| {
        CliError::Failed(format!("{}: must hold a mapping (object)", path.display()))
    })
}

/// The request stream of a registration: the header, then the file in chunks read by a blocking
/// thread as the upload proceeds (so a large artifact is never held in memory), with a progress
/// line on a terminal.
fn upload(
    header: pb::RegisterModelHeader,
    path: &Path,
) -> Result<tokio_stream::wrappers::ReceiverStream<pb::RegisterModelRequest>, CliError> {
    use pb::register_model_request::Part;
    let file_error = |source| CliError::File {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(file_error)?;
    let total = file.metadata().map_err(file_error)?.len();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.try_send(pb::RegisterModelRequest {
        part: Some(Part::Header(header)),
    })
    .expect("a fresh channel has room for the header");
    let name = path.display().to_string();
    std::thread::spawn(move || {
        let progress = std::io::stderr().is_terminal();
        let mut sent = 0u64;
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    // Dropping the sender without the rest aborts the upload; the server keeps nothing.
                    eprintln!("\nerror: reading {name}: {e}");
                    return;
                }
            };
            chunk.truncate(n);
            if tx
                .blocking_send(pb::RegisterModelRequest {
                    part: Some(Part::Chunk(chunk)),
                })
                .is_err()
            {
                return;
            }
            sent += n as u64;
            if progress {
                eprint!(
                    "\ruploading {name}: {:>3}% of {total} bytes",
                    sent * 100 / total.max(1)
                );
            }
        }
        if progress {
            eprintln!();
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The subcommands that need no server (signing keys and signatures); `None` for the others.
pub(super) fn local(args: &ModelsArgs) -> Result<Option<String>, CliError> {
    Ok(Some(match &args.action {
        ModelsAction::Sign {
            registry_id,
            file,
            policy,
            key,
        } => {
            let policy = policy.as_deref().map(read_object).transpose()?;
            format!(
                "{}\n",
                hex::encode(signature(registry_id, file, policy, key)?)
            )
        }
        ModelsAction::Keygen { out } => {
            let seed: [u8; 32] = rand::random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .map_err(|source| CliError::File {
                    path: out.display().to_string(),
                    source,
                })?;
            std::io::Write::write_all(&mut file, format!("{}\n", hex::encode(seed)).as_bytes())
                .map_err(|source| CliError::File {
                    path: out.display().to_string(),
                    source,
                })?;
            format!("{}\n", signing::public_key_hex(&seed))
        }
        _ => return Ok(None),
    }))
}

pub(super) async fn run(args: &ModelsArgs, channel: Channel) -> Result<String, CliError> {
    let mut client = RegistryClient::new(channel).max_decoding_message_size(16 << 20);
    let as_json = args.client.json;
    match &args.action {
        ModelsAction::Register {
            id,
            version,
            model_type: kind,
            file,
            policy,
            features,
            created_by,
            name,
            description,
            framework,
            sign_key,
            signer,
        } => {
            let mut header = pb::RegisterModelHeader {
                model_id: id.clone(),
                version: version.clone(),
                model_type: model_type(*kind) as i32,
                created_by: args.client.actor(created_by.as_deref()),
                name: name.clone(),
                description: description.clone(),
                framework: framework.clone(),
                policy_config: policy.as_deref().map(read_object).transpose()?,
                feature_spec: features.as_deref().map(read_object).transpose()?,
                ..Default::default()
            };
            if let (Some(key), Some(signer)) = (sign_key, signer) {
                let registry_id = format!("{id}:{version}");
                header.signature =
                    signature(&registry_id, file, header.policy_config.clone(), key)?.to_vec();
                header.signer = signer.clone();
            }
            let messages = upload(header, file)?;
            let m = client.register_model(messages).await?.into_inner();
            Ok(if as_json {
                super::json(&metadata_json(&m))
            } else {
                format!("{} {}\n", m.registry_id, m.model_checksum)
            })
        }
        ModelsAction::Sign { .. } | ModelsAction::Keygen { .. } => {
            unreachable!("answered by `local` without a server")
        }
        ModelsAction::List {
            model_id,
            status: filter,
        } => {
            let request = pb::ListModelsRequest {
                model_id: model_id.clone(),
                status: filter.map(|s| status(s) as i32),
                ..Default::default()
            };
            let models = client.list_models(request).await?.into_inner().models;
            if as_json {
                return Ok(super::json(&Value::Array(
                    models.iter().map(metadata_json).collect(),
                )));
            }
            let mut out = format!(
                "{:<40} {:<12} {:<30} {:>12}  sha256\n",
                "registry id", "status", "created", "bytes"
            );
            models.iter().for_each(|m| out.push_str(&metadata_line(m)));
            Ok(out)
        }
        ModelsAction::Show { registry_id } => {
            let m = client
                .get_model_metadata(pb::ModelRef {
                    registry_id: registry_id.clone(),
                })
                .await?
                .into_inner();
            Ok(if as_json {
                super::json(&metadata_json(&m))
            } else {
                metadata_text(&m)
            })
        }
        ModelsAction::Get {
            model_id,
            version,
            out,
        } => {
            use pb::get_model_response::Part;
            // `id:version`, as every other command takes it, or the id and --version.
            let (model_id, version) = match model_id.split_once(':') {
                Some((_, v)) if !version.is_empty() && v != version => {
                    return Err(CliError::Failed(format!(
                        "{model_id} names version {v} but --version says {version}"
                    )))
                }
                Some((id, v)) => (id.to_string(), v.to_string()),
                None => (model_id.clone(), version.clone()),
            };
            let request = pb::GetModelRequest { model_id, version };
            let mut stream = client.get_model(request).await?.into_inner();
            let file_error = |source| CliError::File {
                path: out.display().to_string(),
                source,
            };
            let tmp = out.with_extension("partial");
            let mut file = std::fs::File::create(&tmp).map_err(file_error)?;
            let mut metadata = None;
            while let Some(message) = stream.message().await? {
                match message.part {
                    Some(Part::Metadata(m)) => metadata = Some(m),
                    Some(Part::Chunk(bytes)) => file.write_all(&bytes).map_err(file_error)?,
                    None => {}
                }
            }
            file.sync_all().map_err(file_error)?;
            std::fs::rename(&tmp, out).map_err(file_error)?;
            let m =
                metadata.ok_or_else(|| CliError::Failed("the server sent no metadata".into()))?;
            Ok(if as_json {
                super::json(&metadata_json(&m))
            } else {
                format!("{} -> {}\n", m.registry_id, out.display())
            })
        }
        ModelsAction::Promote {
            registry_id,
            to,
            approved_by,
            reason,
            expected,
        } => {
            let request = pb::PromoteModelRequest {
                registry_id: registry_id.clone(),
                target_status: status(*to) as i32,
                approved_by: approved_by.clone(),
                reason: reason.clone(),
                expected_status: expected.map(|s| status(s) as i32),
            };
            let promoted = client.promote_model(request).await?.into_inner();
            let demoted = &promoted.demoted_registry_id;
            Ok(if as_json {
                let mut value = metadata_json(&promoted);
                value["demoted_registry_id"] = json!(demoted);
                super::json(&value)
            } else if demoted.is_empty() {
                metadata_line(&promoted)
            } else {
                format!(
                    "{}{demoted} was PRODUCTION and is now DEPRECATED\n",
                    metadata_line(&promoted)
                )
            })
        }
        ModelsAction::Delete { registry_id, force } => {
            let request = pb::DeleteModelRequest {
                registry_id: registry_id.clone(),
                force: *force,
                requested_by: args.client.actor(None),
            };
            client.delete_model(request).await?;
            Ok(if as_json {
                super::json(&json!({"deleted": registry_id}))
            } else {
                format!("deleted {registry_id}\n")
            })
        }
        ModelsAction::Verify { registry_id } => {
            let v = client
                .verify_model(pb::ModelRef {
                    registry_id: registry_id.clone(),
                })
                .await?
                .into_inner();
            let text = if as_json {
                super::json(
                    &json!({"ok": v.ok, "expected_sha256": v.expected_sha256, "actual_sha256": v.actual_sha256,
                                    "expected_policy_sha256": v.expected_policy_sha256,
                                    "actual_policy_sha256": v.actual_policy_sha256, "message": v.message}),
                )
            } else {
                format!("{registry_id}: ok, sha256 {}\n", v.actual_sha256)
            };
            if v.ok {
                Ok(text)
            } else {
                Err(CliError::Failed(format!(
                    "{registry_id} does not verify: {}",
                    v.message
                )))
            }
        }
    }
}
