//! Sandboxes: their rows, their state changes (each with its audit record), and a sandbox going
//! down with the jobs it was running. One text for both databases; the sandbox row is locked (on
//! Postgres) before anything is decided, as in [`super::dispatch`].

use crate::rows::{SANDBOX_COLS, sandbox_from_row};
use crate::{JobRecord, NewSandbox, Result, SandboxRecord};
use shoal_core::{Millis, SandboxState};

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;
        use crate::rows::sql;
        use crate::sql::dispatch::$backend::{lock_sandbox, put_back, running_on};

        type Conn = <$db as sqlx::Database>::Connection;

        /// Records a new sandbox, booting, with its audit record.
        pub(crate) async fn insert(conn: &mut Conn, s: &NewSandbox) -> Result<SandboxRecord> {
            let row = sqlx::query(sql!(
                "INSERT INTO sandboxes (id, tenant, state, provider, token_hash, cpus_milli, memory_mb, \
                 since, created_at) VALUES ($1, $2, 'booting', $3, $4, $5, $6, $7, $7) RETURNING ",
                SANDBOX_COLS
            ))
            .bind(&s.id)
            .bind(&s.tenant)
            .bind(&s.provider)
            .bind(&s.token_hash)
            .bind(s.cpus_milli as i64)
            .bind(s.memory_mb as i64)
            .bind(s.now)
            .fetch_one(&mut *conn)
            .await?;
            let sb = sandbox_from_row(&row)?;
            let e = crate::audit::sandbox_create(&sb);
            crate::audit::$backend::record(conn, &e, Some(&sb.tenant)).await?;
            Ok(sb)
        }

        pub(crate) async fn set_provider_id(conn: &mut Conn, id: &str, provider_id: &str) -> Result<()> {
            sqlx::query("UPDATE sandboxes SET provider_id = $1 WHERE id = $2")
                .bind(provider_id)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// Keeps a provider lease's nonce (upsert), pruning the expired ones.
        pub(crate) async fn keep_lease(
            conn: &mut Conn,
            provider_id: &str,
            nonce: &str,
            expires_at: Millis,
            now: Millis,
        ) -> Result<()> {
            sqlx::query("DELETE FROM provider_leases WHERE expires_at < $1")
                .bind(now)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "INSERT INTO provider_leases (provider_id, nonce, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (provider_id) DO UPDATE SET nonce = excluded.nonce, expires_at = excluded.expires_at",
            )
            .bind(provider_id)
            .bind(nonce)
            .bind(expires_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// A provider lease's nonce and expiry, unless it has expired.
        pub(crate) async fn provider_lease(
            conn: &mut Conn,
            provider_id: &str,
            now: Millis,
        ) -> Result<Option<(String, Millis)>> {
            Ok(sqlx::query_as(
                "SELECT nonce, expires_at FROM provider_leases WHERE provider_id = $1 AND expires_at > $2",
            )
            .bind(provider_id)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?)
        }

        pub(crate) async fn forget_lease(conn: &mut Conn, provider_id: &str) -> Result<()> {
            sqlx::query("DELETE FROM provider_leases WHERE provider_id = $1")
                .bind(provider_id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        pub(crate) async fn set_sandbox_region(conn: &mut Conn, id: &str, region: &str) -> Result<()> {
            sqlx::query("UPDATE sandboxes SET region = $1 WHERE id = $2")
                .bind(region)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        pub(crate) async fn sandbox_regions(
            conn: &mut Conn,
            tenant: Option<&str>,
        ) -> Result<std::collections::HashMap<String, String>> {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, region FROM sandboxes WHERE region IS NOT NULL \
                 AND (CAST($1 AS TEXT) IS NULL OR tenant = $1)",
            )
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
            Ok(rows.into_iter().collect())
        }

        /// Moves a sandbox to `to` if it is in one of `from`; `true` if it moved. The state it
        /// checks is the state it changes: the row is locked (or the writer alone) in between.
        pub(crate) async fn transition(
            conn: &mut Conn,
            id: &str,
            from: &[SandboxState],
            to: SandboxState,
            now: Millis,
        ) -> Result<bool> {
            let Some(sb) = lock_sandbox(conn, id).await? else {
                return Ok(false);
            };
            if !from.contains(&sb.state) {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE sandboxes SET state = $1, since = $2, \
                 idle_since = CASE WHEN $1 = 'ready' THEN $2 ELSE NULL END WHERE id = $3",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
            let e = crate::audit::sandbox_state(id, &sb.tenant, to, 0, now);
            crate::audit::$backend::record(conn, &e, Some(&sb.tenant)).await?;
            Ok(true)
        }

        /// The sandbox stopped or vanished: records `to` and puts its running jobs back (see
        /// [`crate::Store::sandbox_down`]).
        pub(crate) async fn down(
            conn: &mut Conn,
            id: &str,
            to: SandboxState,
            now: Millis,
        ) -> Result<Vec<JobRecord>> {
            lock_sandbox(conn, id).await?;
            let lost = serde_json::json!({"code": "sandbox_lost", "message": format!("sandbox {id} went {to} while running the job")});
            let mut back = Vec::new();
            for job in running_on(conn, id).await? {
                let job = put_back(conn, &job, &lost, now).await?;
                let e = crate::audit::job_lapsed(&job, "job.sandbox_lost", now);
                crate::audit::$backend::record(conn, &e, Some(&job.tenant)).await?;
                back.push(job);
            }
            let tenant: Option<String> = sqlx::query_scalar(
                "UPDATE sandboxes SET state = $1, since = $2, idle_since = NULL \
                 WHERE id = $3 AND state != 'destroyed' RETURNING tenant",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(tenant) = tenant {
                let e = crate::audit::sandbox_state(id, &tenant, to, back.len(), now);
                crate::audit::$backend::record(conn, &e, Some(&tenant)).await?;
            }
            Ok(back)
        }

        /// The sandbox's agent went silent or its provider reported it failed: a ready or busy
        /// sandbox whose last sign of life is at or before `silent_since` becomes unhealthy, and
        /// its running jobs go back as lost (see [`crate::Store::sandbox_unhealthy`]).
        pub(crate) async fn unhealthy(
            conn: &mut Conn,
            id: &str,
            silent_since: Millis,
            now: Millis,
        ) -> Result<Option<(SandboxRecord, Vec<JobRecord>)>> {
            let Some(sb) = lock_sandbox(conn, id).await? else {
                return Ok(None);
            };
            if !matches!(sb.state, SandboxState::Ready | SandboxState::Busy)
                || sb.last_sign() > silent_since
            {
                // It moved on, or its agent called in since the check read it.
                return Ok(None);
            }
            let lost = serde_json::json!({"code": "sandbox_unhealthy", "message": format!("sandbox {id} became unhealthy while running the job")});
            let mut back = Vec::new();
            for job in running_on(conn, id).await? {
                let job = put_back(conn, &job, &lost, now).await?;
                let e = crate::audit::job_lapsed(&job, "job.sandbox_lost", now);
                crate::audit::$backend::record(conn, &e, Some(&job.tenant)).await?;
                back.push(job);
            }
            sqlx::query(
                "UPDATE sandboxes SET state = 'unhealthy', since = $1, idle_since = NULL WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?;
            let e = crate::audit::sandbox_state(id, &sb.tenant, SandboxState::Unhealthy, back.len(), now);
            crate::audit::$backend::record(conn, &e, Some(&sb.tenant)).await?;
            Ok(Some((sb, back)))
        }

        /// The one sandbox `query` finds by `key`.
        async fn find(
            conn: &mut Conn,
            query: sqlx::AssertSqlSafe<&'static str>,
            key: &str,
        ) -> Result<Option<SandboxRecord>> {
            let row = sqlx::query(query).bind(key).fetch_optional(&mut *conn).await?;
            row.as_ref().map(sandbox_from_row).transpose()
        }

        /// The sandbox `id`.
        pub(crate) async fn by_id(conn: &mut Conn, id: &str) -> Result<Option<SandboxRecord>> {
            find(conn, sql!("SELECT ", SANDBOX_COLS, " FROM sandboxes WHERE id = $1"), id).await
        }

        /// The sandbox whose agent token hashes to `token_hash`.
        pub(crate) async fn by_token(conn: &mut Conn, token_hash: &str) -> Result<Option<SandboxRecord>> {
            let q = sql!("SELECT ", SANDBOX_COLS, " FROM sandboxes WHERE token_hash = $1");
            find(conn, q, token_hash).await
        }

        /// Sandboxes that still exist, of one tenant or all.
        pub(crate) async fn list(conn: &mut Conn, tenant: Option<&str>) -> Result<Vec<SandboxRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                SANDBOX_COLS,
                " FROM sandboxes WHERE state != 'destroyed' AND (CAST($1 AS TEXT) IS NULL OR tenant = $1) \
                 ORDER BY tenant, created_at, id"
            ))
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(sandbox_from_row).collect()
        }
    };
}

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}
