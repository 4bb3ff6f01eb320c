//! The Postgres store, for several scheduler replicas sharing one database. Same schema meanings
//! and same answers as the SQLite store, from the same statements ([`crate::sql`]); what differs
//! is how races between replicas are settled ([`crate::sql::dialect`]):
//!
//! - Admission locks the tenant's quota row for the month (`tenant_periods`, created on first
//!   use) before it looks up the idempotency key and counts, so two replicas admitting for one
//!   tenant take turns: the quota cannot be overrun and one key cannot make two jobs.
//! - A lease locks the sandbox row, then (with a concurrency limit) the tenant row, then picks the
//!   tenant's next queued job with `FOR UPDATE SKIP LOCKED`, so replicas leasing at once never
//!   wait on each other's jobs and never hand out one job twice.
//! - Every transaction that touches both a sandbox and its jobs locks the sandbox first, so they
//!   cannot deadlock, and decides what to do only after its locks are held (Postgres's
//!   `READ COMMITTED` gives each later statement a fresh view).

use crate::rows::{TENANT_COLS, corrupt, sql, tenant_from_row};
use crate::{Result, StoreError, TenantRecord};
use shoal_core::{LimitsPatch, Millis, PlanTier};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};
use std::str::FromStr;

/// The size of a Postgres connection pool (SQLite keeps its own: one writer, a few readers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a caller waits for a free connection before failing.
    pub acquire_timeout: std::time::Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_connections: 16,
            acquire_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// The Postgres implementation of [`crate::Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…` or `postgresql://…`) and brings its
    /// schema up to date. Replicas starting together are safe: sqlx holds an advisory lock while
    /// it migrates.
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &PoolOptions::default()).await
    }

    /// [`PostgresStore::open`] with a pool of the given size and acquire timeout.
    pub async fn open_with(url: &str, pool: &PoolOptions) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::UnsupportedUrl(url.into()));
        }
        let opts = sqlx::postgres::PgConnectOptions::from_str(url)?
            .statement_cache_capacity(crate::sql::STATEMENT_CACHE);
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections.max(1))
            .min_connections(1)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(opts)
            .await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool, bringing its schema up to date.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// The connection pool, for others sharing the database (the ingress queue, leader election).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }
}

/// Creates or updates a tenant; `true` when it was created. One statement: `xmax = 0` holds for a
/// row it inserted, not for one it updated, so two replicas cannot both report a creation.
pub(crate) async fn upsert_tenant(
    conn: &mut PgConnection,
    id: &str,
    plan: PlanTier,
    overrides: &LimitsPatch,
    now: Millis,
) -> Result<(TenantRecord, bool)> {
    let overrides = serde_json::to_string(overrides).map_err(corrupt)?;
    let row = sqlx::query(sql!(
        "INSERT INTO tenants (id, plan, overrides, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (id) DO UPDATE SET plan = excluded.plan, overrides = excluded.overrides, \
         updated_at = excluded.updated_at RETURNING ",
        TENANT_COLS,
        ", (xmax = 0) AS inserted"
    ))
    .bind(id)
    .bind(plan.as_str())
    .bind(overrides)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let created: bool = row.try_get("inserted")?;
    Ok((tenant_from_row(&row)?, created))
}

crate::sql::impl_store!(PostgresStore, postgres, begin);
