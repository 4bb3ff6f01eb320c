//! The audit log from the outside: `GET /v1/audit` (admin), the sealer every replica runs, and
//! `shoal audit [list|verify]`. The store writes each record in the transaction of the change it
//! reports and seals it into the hash chain later (`shoal_store::audit`); reading the log first
//! seals what is pending, so a change is listed as soon as its call has answered.

use crate::auth::Caller;
use crate::cli::{Conn, call, s, table};
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::App;
use crate::views::{parse_rfc3339, rfc3339};
use axum::Json;
use axum::extract::{Query, State};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_core::audit::{Actor, AuditRecord, verify};
use shoal_store::audit::SEAL_BATCH;
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};

/// How often each replica seals what is pending when nobody reads the log.
const SEAL_EVERY: Duration = Duration::from_secs(1);

/// Seals pending records until there are none left (at most `rounds` batches).
pub async fn seal(app: &App, rounds: u32) -> Result<u64, shoal_store::StoreError> {
    let mut total = 0;
    for _ in 0..rounds {
        let n = app.store.seal_audit(SEAL_BATCH).await?;
        total += n;
        if n < u64::from(SEAL_BATCH) {
            break;
        }
    }
    Ok(total)
}

/// Seals pending records every second until shutdown. Every replica runs it; the store makes
/// sealers take turns, so each record is sealed once.
pub async fn run(app: Arc<App>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SEAL_EVERY) => {}
            _ = app.shutdown.cancelled() => break,
        }
        if let Err(e) = seal(&app, 20).await {
            tracing::warn!(error = %e, "sealing the audit log failed");
        }
    }
    // What the last moments recorded is sealed before the process goes.
    if let Err(e) = seal(&app, 20).await {
        tracing::warn!(error = %e, "sealing the audit log failed");
    }
}

/// `GET /v1/audit`'s query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records after this cursor (a `next_cursor`); from the first record when absent.
    after: Option<String>,
    /// At most this many records: 1 to 1000, 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Who did it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActorView {
    /// `admin`, `tenant_key`, `sandbox` or `system`.
    pub kind: String,
    /// The key's id, the sandbox's id, `admin`, or the part of Shoal (`scheduler`, `ingress`,
    /// `retention`). Never a token.
    pub id: String,
}

/// One sealed record of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditRecordView {
    pub seq: u64,
    /// RFC 3339, milliseconds.
    pub at: String,
    pub actor: ActorView,
    /// A dotted verb: `tenant.create`, `key.revoke`, `job.enqueue`, `job.cancel`, `job.lease`,
    /// `job.complete`, `sandbox.create`, `sandbox.stopped`, `webhook.create`, `retention.run`, ...
    pub action: String,
    /// What it was done to: `tenant/ID`, `key/ID`, `job/ID`, `sandbox/ID`, `webhook/ID`.
    pub target: String,
    #[schema(value_type = Object)]
    pub detail: Value,
    /// The hash of the record before (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) over `prev_hash` and this record's content.
    pub hash: String,
}

impl AuditRecordView {
    fn of(r: &AuditRecord) -> Self {
        AuditRecordView {
            seq: r.seq,
            at: rfc3339(r.at),
            actor: ActorView {
                kind: r.actor.kind.clone(),
                id: r.actor.id.clone(),
            },
            action: r.action.clone(),
            target: r.target.clone(),
            detail: r.detail.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }

    /// The record as the chain hashed it; `None` when its time does not parse.
    fn record(&self) -> Option<AuditRecord> {
        Some(AuditRecord {
            seq: self.seq,
            at: parse_rfc3339(&self.at)?,
            actor: Actor {
                kind: self.actor.kind.clone(),
                id: self.actor.id.clone(),
            },
            action: self.action.clone(),
            target: self.target.clone(),
            detail: self.detail.clone(),
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// A page of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditRecordView>,
    /// Pass as `after` for the records that follow (the same cursor again when there are none
    /// yet: poll with it).
    pub next_cursor: String,
}

/// Every state-changing call and operator action, oldest first, each chained to the one before
/// by its hash (admin).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, body = AuditPage),
        (status = 400, body = ErrorBody),
        (status = 403, description = "not the admin", body = ErrorBody),
    ))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    caller.require_admin()?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse::<u64>().map_err(|_| {
            ApiError::invalid("after", "not a cursor of this log (a `next_cursor`)")
        })?,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    seal(&app, 4).await?;
    let records = app.store.audit_records(after, limit).await?;
    let next = records.last().map_or(after, |r| r.seq);
    Ok(Json(AuditPage {
        records: records.iter().map(AuditRecordView::of).collect(),
        next_cursor: next.to_string(),
    }))
}

/// `shoal audit`.
#[derive(Subcommand, Clone)]
pub enum AuditCommand {
    /// Records after a cursor (the default: the first 50).
    List {
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Reads the whole log and checks its hash chain; exits 1 when it does not hold.
    Verify,
}

pub(crate) fn command(conn: &Conn, cmd: Option<AuditCommand>) -> Result<String, String> {
    use reqwest::Method;
    match cmd.unwrap_or(AuditCommand::List {
        after: None,
        limit: 50,
    }) {
        AuditCommand::List { after, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(a) = after {
                q.push(("after", a));
            }
            let (v, _) = call(conn, Method::GET, "/v1/audit", &q, None)?;
            if conn.json {
                return Ok(crate::cli::pretty(&v));
            }
            let rows: Vec<Vec<String>> = v["records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    vec![
                        s(&r["seq"]),
                        s(&r["at"]),
                        format!("{}:{}", s(&r["actor"]["kind"]), s(&r["actor"]["id"])),
                        s(&r["action"]),
                        s(&r["target"]),
                    ]
                })
                .collect();
            let mut out = table(&["SEQ", "AT", "ACTOR", "ACTION", "TARGET"], &rows);
            out.push_str(&format!("\nnext cursor: {}\n", s(&v["next_cursor"])));
            Ok(out)
        }
        AuditCommand::Verify => {
            let mut records = Vec::new();
            let mut after = "0".to_string();
            loop {
                let q = [("after", after.clone()), ("limit", "1000".to_string())];
                let (v, _) = call(conn, Method::GET, "/v1/audit", &q, None)?;
                let page: AuditPage = serde_json::from_value(v)
                    .map_err(|e| format!("the scheduler answered an unexpected page: {e}"))?;
                if page.records.is_empty() {
                    break;
                }
                for r in &page.records {
                    records.push(r.record().ok_or_else(|| {
                        format!("record {}: its time `{}` does not parse", r.seq, r.at)
                    })?);
                }
                after = page.next_cursor;
            }
            match records.first() {
                Some(first) if first.seq != 1 => {
                    return Err(format!(
                        "the audit log does not hold: it starts at record {}, not 1",
                        first.seq
                    ));
                }
                _ => {}
            }
            let n = verify(&records).map_err(|e| format!("the audit log does not hold: {e}"))?;
            if conn.json {
                let last = records.last().map(|r| r.hash.clone());
                return Ok(format!(
                    "{}\n",
                    serde_json::json!({"holds": true, "records": n, "last_hash": last})
                ));
            }
            match records.last() {
                Some(last) => Ok(format!(
                    "the audit log holds: {n} records, the last sealed as {}\n",
                    last.hash
                )),
                None => Ok("the audit log holds: it is empty\n".into()),
            }
        }
    }
}
