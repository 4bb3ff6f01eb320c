//! The SQLite store: one file in the data directory, WAL mode with `synchronous = NORMAL` (a
//! commit appends to the log without waiting for the disk; a power cut may lose the last
//! commits, never corrupt the file), writes in `BEGIN IMMEDIATE` transactions so concurrent
//! writers queue on SQLite's lock instead of failing half-way, and every statement prepared once
//! per connection and kept ([`crate::sql::STATEMENT_CACHE`]). Being the only writer, a transaction needs no
//! row locks; its statements are the shared ones of [`crate::sql`].
//!
//! Writers of one process take turns on an async lock before `BEGIN IMMEDIATE` ([`WriteTx`]):
//! SQLite makes a writer that finds the file locked sleep in steps of 1 to 100 ms (its busy
//! handler), which under load left the file idle between transactions; queued on the lock, the
//! next writer begins the moment the last one commits.

use crate::rows::corrupt;
use crate::{Result, StoreError, TenantRecord};
use shoal_core::{LimitsPatch, Millis, PlanTier};
use sqlx::SqliteConnection;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The SQLite implementation of [`crate::Store`].
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// This process's writers take turns here, in the order they came (tokio's lock is fair).
    writer: Arc<tokio::sync::Mutex<()>>,
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// A writing transaction holding this process's writer turn until it commits, rolls back or
/// is dropped.
pub(crate) struct WriteTx {
    tx: Tx,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    /// Commits, then gives the turn to the next writer.
    pub(crate) async fn commit(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Rolls back, then gives the turn to the next writer.
    pub(crate) async fn rollback(self) -> std::result::Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Tx;
    fn deref(&self) -> &Tx {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Tx {
        &mut self.tx
    }
}

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
            .foreign_keys(true)
            .statement_cache_capacity(crate::sql::STATEMENT_CACHE);
        // An in-memory database lives in one connection; a file is shared by several.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 8 })
            .min_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    async fn write(&self) -> Result<WriteTx> {
        let turn = Arc::clone(&self.writer).lock_owned().await;
        Ok(WriteTx {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _turn: turn,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default's file runs in WAL mode with `synchronous = NORMAL` and foreign keys
    /// on, on every connection of the pool, and a statement run twice is prepared once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_store_uses_wal_normal_sync_and_cached_statements() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(store.pool.acquire().await.unwrap());
        }
        for c in &mut conns {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            assert_eq!(sync, 1, "NORMAL");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&mut **c)
                .await
                .unwrap();
            assert_eq!(fk, 1);
        }
        use sqlx::Connection;
        let c = &mut conns[0];
        let before = c.cached_statements_size();
        for _ in 0..3 {
            crate::tenants::sqlite::get(c, "nobody").await.unwrap();
        }
        assert_eq!(
            c.cached_statements_size(),
            before + 1,
            "prepared once, kept"
        );
    }
}
