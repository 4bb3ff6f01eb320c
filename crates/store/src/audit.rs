//! The audit log's storage. A state change records who did it as an `audit` row of the outbox,
//! written with [`record`]-style helpers in the change's own transaction, so a change and its
//! record commit together or not at all. The sealer ([`AuditLog::seal_audit`]) then moves pending
//! rows into `audit_log`, one sealer at a time, giving each the next sequence number and chaining
//! it to the record before with [`shoal_core::audit::seal`]; it deletes the outbox row in the same
//! transaction, so a row is sealed exactly once. Sealing apart from the change keeps the chain's
//! tail (one row every writer would have to lock) off the path of every job and API call.

use crate::Result;
use crate::outbox::OutboxEvent;
use crate::rows::{StoreRow, corrupt};
use shoal_core::Millis;
use shoal_core::audit::{Actor, AuditEntry, AuditRecord, GENESIS, seal};

/// The outbox topic audit records wait under until they are sealed.
pub const TOPIC: &str = "audit";

/// How many pending records one sealing transaction takes at most.
pub const SEAL_BATCH: u32 = 500;

/// The outbox row that carries `entry` until it is sealed. `tenant` is the tenant the change
/// concerns, if any.
pub fn event(entry: &AuditEntry, tenant: Option<&str>) -> Result<OutboxEvent> {
    let payload = serde_json::to_value(entry).map_err(corrupt)?;
    Ok(OutboxEvent {
        id: format!("aud_{}", uuid::Uuid::now_v7().simple()),
        topic: TOPIC.into(),
        tenant: tenant.map(str::to_string),
        payload,
        created_at: entry.at,
    })
}

/// An entry made of its parts (a shorthand for the stores' methods).
pub fn entry(
    actor: &Actor,
    action: &str,
    target: impl Into<String>,
    detail: serde_json::Value,
    at: Millis,
) -> AuditEntry {
    AuditEntry {
        at,
        actor: actor.clone(),
        action: action.into(),
        target: target.into(),
        detail,
    }
}

/// `tenant.create` or `tenant.update` of `t`, by `actor`.
pub fn tenant_put(actor: &Actor, t: &crate::TenantRecord, created: bool) -> AuditEntry {
    let action = if created {
        "tenant.create"
    } else {
        "tenant.update"
    };
    let detail = serde_json::json!({ "plan": t.plan.as_str(), "limits": t.overrides });
    entry(
        actor,
        action,
        format!("tenant/{}", t.id),
        detail,
        t.updated_at,
    )
}

/// `job.enqueue` of `job` (its spec is not recorded: it may carry the tenant's secrets).
pub fn job_enqueue(actor: &Actor, job: &crate::JobRecord) -> AuditEntry {
    let detail = serde_json::json!({
        "tenant": job.tenant,
        "kind": job.kind,
        "priority": job.priority,
        "idempotency_key": job.idempotency_key,
    });
    entry(
        actor,
        "job.enqueue",
        format!("job/{}", job.id),
        detail,
        job.created_at,
    )
}

/// `job.cancel` of `job` (its state before the cancel is not kept; the job's own events show it).
pub fn job_cancel(actor: &Actor, job: &crate::JobRecord, now: Millis) -> AuditEntry {
    let detail = serde_json::json!({ "tenant": job.tenant });
    entry(actor, "job.cancel", format!("job/{}", job.id), detail, now)
}

/// `job.lease`: the agent of `sandbox_id` took `job` (its attempt and lease in the detail).
pub fn job_lease(sandbox_id: &str, job: &crate::JobRecord) -> AuditEntry {
    let detail = serde_json::json!({
        "tenant": job.tenant,
        "attempt": job.attempts,
        "lease_id": job.lease_id,
    });
    let at = job.started_at.unwrap_or(job.created_at);
    entry(
        &Actor::sandbox(sandbox_id),
        "job.lease",
        format!("job/{}", job.id),
        detail,
        at,
    )
}

/// `job.complete`: the agent of `sandbox_id` reported the attempt under `lease_id`; `job` is the
/// job after it (finished, or queued again when it was handed back).
pub fn job_complete(
    sandbox_id: &str,
    job: &crate::JobRecord,
    lease_id: &str,
    now: Millis,
) -> AuditEntry {
    let detail = serde_json::json!({
        "tenant": job.tenant,
        "state": job.state.as_str(),
        "lease_id": lease_id,
    });
    entry(
        &Actor::sandbox(sandbox_id),
        "job.complete",
        format!("job/{}", job.id),
        detail,
        now,
    )
}

/// A running job the scheduler took back (`action`: `job.lease_expired`, `job.sandbox_lost`);
/// `job` is the job after it, queued again or dead.
pub fn job_lapsed(job: &crate::JobRecord, action: &str, now: Millis) -> AuditEntry {
    let detail = serde_json::json!({ "tenant": job.tenant, "state": job.state.as_str() });
    entry(
        &Actor::system("scheduler"),
        action,
        format!("job/{}", job.id),
        detail,
        now,
    )
}

/// `sandbox.create` of `sb`.
pub fn sandbox_create(sb: &crate::SandboxRecord) -> AuditEntry {
    let detail = serde_json::json!({
        "tenant": sb.tenant,
        "provider": sb.provider,
        "cpus_milli": sb.cpus_milli,
        "memory_mb": sb.memory_mb,
    });
    entry(
        &Actor::system("scheduler"),
        "sandbox.create",
        format!("sandbox/{}", sb.id),
        detail,
        sb.created_at,
    )
}

/// `sandbox.<state>`: the scheduler moved sandbox `id` to `to`, putting `jobs_back` jobs back.
pub fn sandbox_state(
    id: &str,
    tenant: &str,
    to: shoal_core::SandboxState,
    jobs_back: usize,
    now: Millis,
) -> AuditEntry {
    let mut detail = serde_json::json!({ "tenant": tenant });
    if jobs_back > 0 {
        detail["jobs_put_back"] = jobs_back.into();
    }
    entry(
        &Actor::system("scheduler"),
        &format!("sandbox.{}", to.as_str()),
        format!("sandbox/{id}"),
        detail,
        now,
    )
}

/// `url` without its user information, query and fragment.
fn public_url(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// `webhook.create` of `e`: its URL without query or fragment (where secrets hide), never its
/// signing secret.
pub fn endpoint_create(actor: &Actor, e: &crate::NewEndpoint) -> AuditEntry {
    let url = public_url(&e.url);
    let detail = serde_json::json!({ "url": url, "tenant": e.tenant, "events": e.events });
    entry(
        actor,
        "webhook.create",
        format!("webhook/{}", e.id),
        detail,
        e.created_at,
    )
}

/// The audit log's part of the store.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync {
    /// Seals up to `limit` pending records into the chain; returns how many. Safe to call from
    /// every replica at once (sealers take turns).
    async fn seal_audit(&self, limit: u32) -> Result<u64>;
    /// Sealed records after `after` (a record's `seq`; 0 for the first), in order, at most `limit`.
    async fn audit_records(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>>;
    /// Records `entry` on its own, for actions that change no other row (a retention pass).
    async fn record_audit(&self, entry: &AuditEntry, tenant: Option<&str>) -> Result<()>;
}

fn record_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: u64::try_from(row.int("seq")?).map_err(corrupt)?,
        at: row.int("at")?,
        actor: Actor {
            kind: row.string("actor_kind")?,
            id: row.string("actor_id")?,
        },
        action: row.string("action")?,
        target: row.string("target")?,
        detail: serde_json::from_str(row.text("detail")?).map_err(corrupt)?,
        prev_hash: row.string("prev_hash")?,
        hash: row.string("hash")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_recorded_url_keeps_no_credentials() {
        assert_eq!(
            super::public_url("https://u:p@hooks.example/x/y?token=s#f"),
            "https://hooks.example/x/y"
        );
        assert_eq!(super::public_url("http://h:8080"), "http://h:8080");
    }
}

const RECORD_COLS: &str = "seq, at, actor_kind, actor_id, action, target, detail, prev_hash, hash";

/// The audit log's SQL for one backend: `$db` the database, `$turn` a statement that makes
/// sealers take turns, if the backend's writing transactions do not already.
macro_rules! for_backend {
    ($db:ty, $outbox:ident, $turn:expr) => {
        use super::*;
        use crate::rows::sql;

        type Conn = <$db as sqlx::Database>::Connection;

        /// Records `entry` in the caller's transaction.
        pub(crate) async fn record(
            conn: &mut Conn,
            entry: &AuditEntry,
            tenant: Option<&str>,
        ) -> Result<()> {
            crate::outbox::$outbox::append(conn, &event(entry, tenant)?).await?;
            Ok(())
        }

        /// Seals up to `limit` pending records, in the caller's transaction.
        pub(crate) async fn seal_pending(conn: &mut Conn, limit: u32) -> Result<u64> {
            let turn: Option<&'static str> = $turn;
            if let Some(turn) = turn {
                sqlx::query(turn).execute(&mut *conn).await?;
            }
            let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
            let (mut seq, mut prev) = match &last {
                Some(row) => (
                    u64::try_from(row.int("seq")?).map_err(corrupt)?,
                    row.string("hash")?,
                ),
                None => (0, GENESIS.to_string()),
            };
            // Every pending row, whatever its place behind rows already sealed: a row that
            // committed late is sealed in a later pass, never skipped.
            let pending = sqlx::query(
                "SELECT seq, payload FROM outbox WHERE topic = $1 ORDER BY seq LIMIT $2",
            )
            .bind(TOPIC)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
            let mut sealed = 0;
            for row in &pending {
                let outbox_seq = row.int("seq")?;
                let entry: AuditEntry =
                    serde_json::from_str(row.text("payload")?).map_err(corrupt)?;
                seq += 1;
                let r = seal(seq, &prev, entry);
                sqlx::query(sql!(
                    "INSERT INTO audit_log (outbox_seq, ",
                    RECORD_COLS,
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ))
                .bind(outbox_seq)
                .bind(i64::try_from(r.seq).map_err(corrupt)?)
                .bind(r.at)
                .bind(&r.actor.kind)
                .bind(&r.actor.id)
                .bind(&r.action)
                .bind(&r.target)
                .bind(r.detail.to_string())
                .bind(&r.prev_hash)
                .bind(&r.hash)
                .execute(&mut *conn)
                .await?;
                sqlx::query("DELETE FROM outbox WHERE seq = $1")
                    .bind(outbox_seq)
                    .execute(&mut *conn)
                    .await?;
                prev = r.hash;
                sealed += 1;
            }
            Ok(sealed)
        }

        pub(crate) async fn records(
            conn: &mut Conn,
            after: u64,
            limit: u32,
        ) -> Result<Vec<AuditRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                RECORD_COLS,
                " FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(record_from_row).collect()
        }
    };
}

/// Implements [`AuditLog`] for a store with a `pool` and a method `$begin` that opens a writing
/// transaction, with the SQL of the backend module `$backend`.
macro_rules! impl_audit {
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::audit::AuditLog for $store {
            async fn seal_audit(&self, limit: u32) -> crate::Result<u64> {
                let mut tx = self.$begin().await?;
                let n = crate::audit::$backend::seal_pending(&mut tx, limit).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn audit_records(
                &self,
                after: u64,
                limit: u32,
            ) -> crate::Result<Vec<shoal_core::audit::AuditRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::audit::$backend::records(&mut c, after, limit).await
            }

            async fn record_audit(
                &self,
                entry: &shoal_core::audit::AuditEntry,
                tenant: Option<&str>,
            ) -> crate::Result<()> {
                let mut tx = self.$begin().await?;
                crate::audit::$backend::record(&mut tx, entry, tenant).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}
pub(crate) use impl_audit;

pub(crate) mod sqlite {
    // Writes are `BEGIN IMMEDIATE`: sealers already take turns.
    for_backend!(sqlx::Sqlite, sqlite, None);
}

pub(crate) mod postgres {
    for_backend!(
        sqlx::Postgres,
        postgres,
        Some("SELECT pg_advisory_xact_lock(hashtext('shoal_audit_seal'))")
    );
}
