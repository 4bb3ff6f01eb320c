//! The SQLite store: one file in the data directory, WAL mode, writes in `BEGIN IMMEDIATE`
//! transactions so concurrent writers queue on SQLite's lock instead of failing half-way. Being
//! the only writer, a transaction needs no row locks; its statements are the shared ones of
//! [`crate::sql`].

use crate::rows::corrupt;
use crate::{Result, StoreError, TenantRecord};
use shoal_core::{LimitsPatch, Millis, PlanTier};
use sqlx::SqliteConnection;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite implementation of [`crate::Store`].
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH` or `sqlite::memory:`) and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        let Some(path) = path else {
            return Err(StoreError::UnsupportedUrl(url.into()));
        };
        let memory = path == ":memory:" || path.is_empty();
        let opts = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
        };
        let opts = opts
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        // An in-memory database lives in one connection; a file is shared by several.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 8 })
            .min_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    async fn write(&self) -> Result<Tx> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Creates or updates a tenant; `true` when it was created (the writer is alone, so the row it
/// saw missing is the row it inserts).
pub(crate) async fn upsert_tenant(
    conn: &mut SqliteConnection,
    id: &str,
    plan: PlanTier,
    overrides: &LimitsPatch,
    now: Millis,
) -> Result<(TenantRecord, bool)> {
    let existed = crate::tenants::sqlite::get(conn, id).await?.is_some();
    let overrides = serde_json::to_string(overrides).map_err(corrupt)?;
    sqlx::query(
        "INSERT INTO tenants (id, plan, overrides, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT(id) DO UPDATE SET plan = excluded.plan, overrides = excluded.overrides, \
         updated_at = excluded.updated_at",
    )
    .bind(id)
    .bind(plan.as_str())
    .bind(overrides)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let t = crate::tenants::sqlite::get(conn, id)
        .await?
        .ok_or_else(|| corrupt("stored tenant vanished"))?;
    Ok((t, !existed))
}

crate::sql::impl_store!(SqliteStore, sqlite, write);
