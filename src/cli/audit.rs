//! `arbiter audit list|verify`.

use super::Connection as Channel;
use serde_json::json;

use super::{time, CliError};
use crate::config::{AuditAction, AuditArgs};
use crate::pb::{self, admin_client::AdminClient};

pub(super) async fn run(args: &AuditArgs, channel: Channel) -> Result<String, CliError> {
    let mut admin = AdminClient::new(channel);
    match &args.action {
        AuditAction::List { entity, limit } => {
            let events = admin
                .list_audit_events(pb::ListAuditEventsRequest {
                    entity: entity.clone(),
                    limit: *limit,
                })
                .await?
                .into_inner()
                .events;
            if args.client.json {
                let rows: Vec<_> = events
                    .iter()
                    .map(|e| {
                        json!({"seq": e.seq, "time": time(e.time.as_ref()), "actor": e.actor,
                               "action": e.action, "entity_type": e.entity_type, "entity": e.entity,
                               "details": e.details, "prev_hash": e.prev_hash, "hash": e.hash})
                    })
                    .collect();
                return Ok(super::json(&json!(rows)));
            }
            let mut out = format!(
                "{:>6}  {:<30}  {:<14}  {:<26}  {:<30}  details\n",
                "seq", "time", "actor", "action", "entity"
            );
            for e in &events {
                let mut details: Vec<String> =
                    e.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
                details.sort();
                out.push_str(&format!(
                    "{:>6}  {:<30}  {:<14}  {:<26}  {:<30}  {}\n",
                    e.seq,
                    time(e.time.as_ref()),
                    e.actor,
                    e.action,
                    e.entity,
                    details.join(" ")
                ));
            }
            Ok(out)
        }
        AuditAction::Verify => {
            let report = admin
                .verify_audit_chain(pb::VerifyAuditChainRequest {})
                .await?
                .into_inner();
            let text = if args.client.json {
                super::json(
                    &json!({"ok": report.ok, "events_checked": report.events_checked,
                                    "first_bad_seq": report.first_bad_seq, "message": report.message}),
                )
            } else if report.ok {
                format!(
                    "audit chain ok: {} events verified\n",
                    report.events_checked
                )
            } else {
                String::new()
            };
            if report.ok {
                Ok(text)
            } else {
                Err(CliError::Failed(format!(
                    "audit chain broken at event {}: {}",
                    report.first_bad_seq.unwrap_or_default(),
                    report.message
                )))
            }
        }
    }
}
