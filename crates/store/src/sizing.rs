//! Right-sizing's storage: what each job attempt used (the samples of
//! [`shoal_core::sizing::recommend`]), kept per tenant within a bounded window, and the size
//! `limits.auto_size` gave a tenant's new sandboxes, changed together with its operators' event
//! and audit record.

use crate::Result;
use crate::rows::{StoreRow, corrupt};
use shoal_core::Millis;
use shoal_core::SandboxSize;
use shoal_core::audit::Actor;
use shoal_core::sizing::{Sample, WINDOW_JOBS, WINDOW_MS};
use std::collections::HashMap;

/// One job attempt's usage, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct JobUsageRecord {
    /// The job.
    pub job_id: String,
    /// Its attempt, from 1.
    pub attempt: u32,
    /// The tenant it ran for.
    pub tenant: String,
    /// When the attempt ended.
    pub at: Millis,
    /// What it used (checked: [`Sample::checked`]), and the memory of the sandbox it ran in.
    pub sample: Sample,
}

/// Right-sizing's part of the store.
#[async_trait::async_trait]
pub trait Sizing: Send + Sync {
    /// Records an attempt's usage, once (`false`: that attempt has one already), and drops the
    /// tenant's samples that fell out of the window ([`WINDOW_JOBS`] newest, [`WINDOW_MS`]).
    async fn record_job_usage(&self, r: &JobUsageRecord) -> Result<bool>;
    /// The tenant's samples of attempts that ended at `since` or later, newest first, at most
    /// `limit`.
    async fn job_usage(&self, tenant: &str, since: Millis, limit: u32) -> Result<Vec<Sample>>;
    /// Every tenant's size given by `auto_size`.
    async fn auto_sizes(&self) -> Result<HashMap<String, SandboxSize>>;
    /// Gives `tenant`'s new sandboxes `size` (by `auto_size`); when that changes its size, the
    /// operators' event `auto_size` and the audit record `tenant.auto_size` (with `detail`) are
    /// written in the same transaction. `true` when the size changed.
    async fn set_auto_size(
        &self,
        tenant: &str,
        size: SandboxSize,
        detail: &serde_json::Value,
        now: Millis,
    ) -> Result<bool>;
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;
        use crate::rows::sql;
        use crate::sql::dialect::$backend::FOR_UPDATE;

        type Conn = <$db as sqlx::Database>::Connection;

        pub(crate) async fn record(conn: &mut Conn, r: &JobUsageRecord) -> Result<bool> {
            let inserted = sqlx::query(
                "INSERT INTO job_usage (job_id, attempt, tenant, at, peak_memory_kib, cpu_ms, \
                 wall_ms, oom_killed, memory_mb) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (job_id, attempt) DO NOTHING",
            )
            .bind(&r.job_id)
            .bind(i64::from(r.attempt))
            .bind(&r.tenant)
            .bind(r.at)
            .bind(to_i64(r.sample.peak_memory_kib))
            .bind(to_i64(r.sample.cpu_ms))
            .bind(to_i64(r.sample.wall_ms))
            .bind(r.sample.oom_killed)
            .bind(to_i64(r.sample.memory_mb))
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            // The window: nothing older than WINDOW_MS, and only the newest WINDOW_JOBS.
            sqlx::query(
                "DELETE FROM job_usage WHERE tenant = $1 AND (at < $2 OR at <= (SELECT at FROM \
                 job_usage WHERE tenant = $1 ORDER BY at DESC LIMIT 1 OFFSET $3))",
            )
            .bind(&r.tenant)
            .bind(r.at.saturating_sub(WINDOW_MS))
            .bind(WINDOW_JOBS as i64)
            .execute(&mut *conn)
            .await?;
            Ok(inserted)
        }

        pub(crate) async fn samples(
            conn: &mut Conn,
            tenant: &str,
            since: Millis,
            limit: u32,
        ) -> Result<Vec<Sample>> {
            let rows = sqlx::query(
                "SELECT peak_memory_kib, cpu_ms, wall_ms, oom_killed, memory_mb FROM job_usage \
                 WHERE tenant = $1 AND at >= $2 ORDER BY at DESC LIMIT $3",
            )
            .bind(tenant)
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Sample {
                        peak_memory_kib: to_u64(r.int("peak_memory_kib")?),
                        cpu_ms: to_u64(r.int("cpu_ms")?),
                        wall_ms: to_u64(r.int("wall_ms")?),
                        oom_killed: r.boolean("oom_killed")?,
                        memory_mb: to_u64(r.int("memory_mb")?),
                    })
                })
                .collect()
        }

        fn size_of<'r, R: StoreRow<'r>>(r: &'r R) -> Result<SandboxSize> {
            Ok(SandboxSize {
                cpus: r.int("cpus_milli")? as f64 / 1000.0,
                memory_mb: u64::try_from(r.int("memory_mb")?).map_err(corrupt)?,
            })
        }

        pub(crate) async fn auto_sizes(conn: &mut Conn) -> Result<HashMap<String, SandboxSize>> {
            let rows =
                sqlx::query("SELECT tenant, cpus_milli, memory_mb FROM tenant_auto_sizes")
                    .fetch_all(&mut *conn)
                    .await?;
            rows.iter()
                .map(|r| Ok((r.string("tenant")?, size_of(r)?)))
                .collect()
        }

        pub(crate) async fn set_auto_size(
            conn: &mut Conn,
            tenant: &str,
            size: SandboxSize,
            detail: &serde_json::Value,
            now: Millis,
        ) -> Result<bool> {
            let before = sqlx::query(sql!(
                "SELECT cpus_milli, memory_mb FROM tenant_auto_sizes WHERE tenant = $1",
                FOR_UPDATE
            ))
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| size_of(&r))
            .transpose()?;
            if before.is_some_and(|b| b.millicpus() == size.millicpus() && b.memory_mb == size.memory_mb) {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO tenant_auto_sizes (tenant, cpus_milli, memory_mb, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO UPDATE SET \
                 cpus_milli = excluded.cpus_milli, memory_mb = excluded.memory_mb, \
                 updated_at = excluded.updated_at",
            )
            .bind(tenant)
            .bind(to_i64(size.millicpus()))
            .bind(to_i64(size.memory_mb))
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let detail = serde_json::json!({
                "from": before,
                "to": size,
                "evidence": detail,
            });
            crate::sql::records::$backend::record_event(
                conn,
                Some(tenant),
                now,
                "auto_size",
                &detail,
            )
            .await?;
            let entry = crate::audit::entry(
                &Actor::system("control"),
                "tenant.auto_size",
                format!("tenant/{tenant}"),
                detail,
                now,
            );
            crate::audit::$backend::record(conn, &entry, Some(tenant)).await?;
            Ok(true)
        }
    };
}

/// Implements [`Sizing`] for a store with a `pool` and a method `$begin` that opens a writing
/// transaction, with the SQL of the backend module `$backend`.
macro_rules! impl_sizing {
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::sizing::Sizing for $store {
            async fn record_job_usage(
                &self,
                r: &crate::sizing::JobUsageRecord,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let n = crate::sizing::$backend::record(&mut tx, r).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn job_usage(
                &self,
                tenant: &str,
                since: shoal_core::Millis,
                limit: u32,
            ) -> crate::Result<Vec<shoal_core::sizing::Sample>> {
                let mut c = self.pool.acquire().await?;
                crate::sizing::$backend::samples(&mut c, tenant, since, limit).await
            }

            async fn auto_sizes(
                &self,
            ) -> crate::Result<std::collections::HashMap<String, shoal_core::SandboxSize>> {
                let mut c = self.pool.acquire().await?;
                crate::sizing::$backend::auto_sizes(&mut c).await
            }

            async fn set_auto_size(
                &self,
                tenant: &str,
                size: shoal_core::SandboxSize,
                detail: &serde_json::Value,
                now: shoal_core::Millis,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let changed =
                    crate::sizing::$backend::set_auto_size(&mut tx, tenant, size, detail, now)
                        .await?;
                tx.commit().await?;
                Ok(changed)
            }
        }
    };
}
pub(crate) use impl_sizing;

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}
