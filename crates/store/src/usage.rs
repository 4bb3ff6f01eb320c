//! Usage events in the store: the billing interval each running sandbox has open, closed (and cut
//! at every hour boundary) in the transaction of the ledger entry or cut that closes it, with one
//! usage event per closed interval written to the outbox in that same transaction; and a cursor
//! over those events that never moves past one that has yet to appear.
//!
//! The cursor: SQLite commits one writer at a time, so `seq` order is commit order. Postgres hands
//! out `seq` at insert, not at commit, so `seq` order is not commit order: a reader ordering by
//! `seq` alone could hand out a cursor past a row whose transaction commits later. Here a reader
//! takes only rows whose writing transaction (`txid`) is older than every transaction still running
//! (the snapshot's `xmin`), ordered by `(txid, seq)`: every row that can still appear belongs to a
//! transaction at or above that `xmin`, so it sorts after every row already handed out.

use crate::Result;
use crate::outbox::OutboxRecord;
use serde::Serialize;
use shoal_core::Millis;
use shoal_metering::{LedgerEntry, UsageContext};
use std::fmt;
use std::str::FromStr;

/// A position in the stream of usage events: `(txid, seq)` of the last event read (`txid` is 0
/// on SQLite). Its text form `txid.seq` is the API's opaque cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct UsageCursor {
    /// The writing transaction of the last event read (0 on SQLite).
    pub txid: i64,
    /// The `seq` of the last event read.
    pub seq: i64,
}

impl fmt::Display for UsageCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.txid, self.seq)
    }
}

impl FromStr for UsageCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a usage cursor (a `next_cursor` of this API)");
        let (t, q) = s.split_once('.').ok_or_else(bad)?;
        let txid: i64 = t.parse().map_err(|_| bad())?;
        let seq: i64 = q.parse().map_err(|_| bad())?;
        if txid < 0 || seq < 0 {
            return Err(bad());
        }
        Ok(UsageCursor { txid, seq })
    }
}

/// A usage event as read, with the cursor that points just past it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEventRecord {
    /// The cursor just past this event.
    pub cursor: UsageCursor,
    /// The event.
    pub event: OutboxRecord,
}

/// A sandbox's open billing interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenUsage {
    /// The running sandbox.
    pub sandbox_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its provider.
    pub provider: String,
    /// When the interval opened (its ledger entry's time).
    pub start: Millis,
    /// The time up to which it was billed (the last hour boundary cut, or `start`).
    pub billed_to: Millis,
    /// Its vCPUs, in thousandths.
    pub cpus_milli: u64,
    /// Its memory, in MiB.
    pub memory_mb: u64,
}

/// The usage part of the store.
#[async_trait::async_trait]
pub trait Metering: Send + Sync {
    /// Appends `entry` to the ledger. A `Running` opens the sandbox's billing interval (unless
    /// one is open); a `Stopped` closes it, writing a usage event for each hour piece not yet
    /// billed, in the same transaction. A `Stopped` earlier than what was already billed (an hour
    /// cut that went before a late provider report) is recorded at the billed time, with a note,
    /// so the ledger and the events always agree. Returns how many events were written.
    async fn record_ledger(
        &self,
        entry: &LedgerEntry,
        ctx: &UsageContext,
        now: Millis,
    ) -> Result<usize>;
    /// Cuts every open billing interval at `boundary` (rounded down to the hour): each gets a
    /// usage event per hour piece up to it, in one transaction. Idempotent. Returns how many
    /// events were written.
    async fn cut_usage(&self, boundary: Millis, ctx: &UsageContext, now: Millis) -> Result<usize>;
    /// The open billing intervals, by sandbox.
    async fn open_usage(&self) -> Result<Vec<OpenUsage>>;
    /// Usage events after `after` (of one tenant, or all), at most `limit`, in a stable order in
    /// which an event never appears behind a cursor already handed out.
    async fn usage_events(
        &self,
        tenant: Option<&str>,
        after: UsageCursor,
        limit: u32,
    ) -> Result<Vec<UsageEventRecord>>;
    /// Where the reader `name` got to.
    async fn usage_cursor(&self, name: &str) -> Result<Option<UsageCursor>>;
    /// Records where the reader `name` got to.
    async fn set_usage_cursor(&self, name: &str, at: UsageCursor, now: Millis) -> Result<()>;
    /// Sends the budget signal `topic` (`budget.warning`, `budget.exceeded`) of `tenant` for the
    /// month starting at `period_start`, unless it was sent already: the mark, the operators'
    /// event and the outbox event (fanned out to webhooks) in one transaction. `true` when sent.
    async fn budget_signal(
        &self,
        tenant: &str,
        topic: &str,
        period_start: Millis,
        payload: &serde_json::Value,
        now: Millis,
    ) -> Result<bool>;
}

/// Implements [`Metering`] for a store with a `pool` and a method `$begin` that opens a writing
/// transaction, with the SQL of the backend module `$backend`.
macro_rules! impl_metering {
    ($store:ty, $backend:ident, $begin:ident) => {
        #[async_trait::async_trait]
        impl crate::usage::Metering for $store {
            async fn record_ledger(
                &self,
                entry: &shoal_metering::LedgerEntry,
                ctx: &shoal_metering::UsageContext,
                now: shoal_core::Millis,
            ) -> crate::Result<usize> {
                let mut tx = self.$begin().await?;
                let n = crate::usage::$backend::record(&mut tx, entry, ctx, now).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn cut_usage(
                &self,
                boundary: shoal_core::Millis,
                ctx: &shoal_metering::UsageContext,
                now: shoal_core::Millis,
            ) -> crate::Result<usize> {
                let mut tx = self.$begin().await?;
                let n = crate::usage::$backend::cut(&mut tx, boundary, ctx, now).await?;
                tx.commit().await?;
                Ok(n)
            }

            async fn open_usage(&self) -> crate::Result<Vec<crate::usage::OpenUsage>> {
                let mut c = self.pool.acquire().await?;
                crate::usage::$backend::open_rows(&mut c, "").await
            }

            async fn usage_events(
                &self,
                tenant: Option<&str>,
                after: crate::usage::UsageCursor,
                limit: u32,
            ) -> crate::Result<Vec<crate::usage::UsageEventRecord>> {
                let mut c = self.pool.acquire().await?;
                crate::usage::$backend::events_after(&mut c, tenant, after, limit).await
            }

            async fn usage_cursor(
                &self,
                name: &str,
            ) -> crate::Result<Option<crate::usage::UsageCursor>> {
                let mut c = self.pool.acquire().await?;
                crate::usage::$backend::cursor(&mut c, name).await
            }

            async fn set_usage_cursor(
                &self,
                name: &str,
                at: crate::usage::UsageCursor,
                now: shoal_core::Millis,
            ) -> crate::Result<()> {
                let mut tx = self.$begin().await?;
                crate::usage::$backend::set_cursor(&mut tx, name, at, now).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn budget_signal(
                &self,
                tenant: &str,
                topic: &str,
                period_start: shoal_core::Millis,
                payload: &serde_json::Value,
                now: shoal_core::Millis,
            ) -> crate::Result<bool> {
                let mut tx = self.$begin().await?;
                let sent = crate::usage::$backend::budget_signal(
                    &mut tx,
                    tenant,
                    topic,
                    period_start,
                    payload,
                    now,
                )
                .await?;
                tx.commit().await?;
                Ok(sent)
            }
        }
    };
}
pub(crate) use impl_metering;

/// The SQL for one backend: `$db` the database, `$backend` its outbox module, `$lock` a statement (bound to the sandbox id)
/// that makes ledger writes of one sandbox take turns if the backend's writes do not already,
/// `$for_update` what a read of open intervals appends to lock them. The cursor read is the
/// backend's [`crate::sql::dialect`].
macro_rules! for_backend {
    ($db:ty, $backend:ident, $lock:expr, $for_update:expr) => {
        use super::*;
        use crate::outbox::cursor_record_from_row;
        use crate::rows::{StoreRow, corrupt, sql};
        use shoal_metering::{
            Closed, HOUR_MS, LedgerKind, USAGE_TOPIC, hour_pieces, interval_event,
        };

        type Conn = <$db as sqlx::Database>::Connection;

        const OPEN_COLS: &str =
            "sandbox_id, tenant, provider, start, billed_to, cpus_milli, memory_mb";

        fn open_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<OpenUsage> {
            Ok(OpenUsage {
                sandbox_id: row.string("sandbox_id")?,
                tenant: row.string("tenant")?,
                provider: row.string("provider")?,
                start: row.int("start")?,
                billed_to: row.int("billed_to")?,
                cpus_milli: row.int("cpus_milli")?.max(0) as u64,
                memory_mb: row.int("memory_mb")?.max(0) as u64,
            })
        }

        /// Open intervals of one sandbox (`sandbox` non-empty) or all, locked where the backend
        /// locks rows.
        pub(crate) async fn open_rows(conn: &mut Conn, sandbox: &str) -> Result<Vec<OpenUsage>> {
            let rows = sqlx::query(sql!(
                "SELECT ", OPEN_COLS, " FROM usage_open WHERE ($1 = '' OR sandbox_id = $1) \
                 ORDER BY sandbox_id", $for_update
            ))
            .bind(sandbox)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(open_from_row).collect()
        }

        /// Writes the usage events of `[from, to)` of `o`, one per hour piece.
        async fn emit(
            conn: &mut Conn,
            ctx: &UsageContext,
            o: &OpenUsage,
            from: Millis,
            to: Millis,
            now: Millis,
        ) -> Result<usize> {
            let mut n = 0;
            for (f, t) in hour_pieces(from, to) {
                let closed = Closed {
                    sandbox: o.sandbox_id.clone(),
                    tenant: o.tenant.clone(),
                    provider: o.provider.clone(),
                    from: f,
                    to: t,
                    cpus_milli: o.cpus_milli,
                    memory_mb: o.memory_mb,
                };
                let payload = interval_event(ctx, &closed);
                let ev = crate::OutboxEvent {
                    id: payload["id"].as_str().unwrap_or_default().to_string(),
                    topic: USAGE_TOPIC.to_string(),
                    tenant: Some(o.tenant.clone()),
                    payload,
                    created_at: now,
                };
                n += usize::from(crate::outbox::$backend::append(conn, &ev).await?);
            }
            Ok(n)
        }

        pub(crate) async fn record(
            conn: &mut Conn,
            e: &LedgerEntry,
            ctx: &UsageContext,
            now: Millis,
        ) -> Result<usize> {
            let lock: Option<&'static str> = $lock;
            if let Some(lock) = lock {
                sqlx::query(lock).bind(&e.sandbox_id).execute(&mut *conn).await?;
            }
            let mut at = e.at;
            let mut note = e.note.clone();
            let mut n = 0;
            let (kind, cpus, mem) = match e.kind {
                LedgerKind::Running {
                    cpus_milli,
                    memory_mb,
                } => {
                    let cpus = i64::try_from(cpus_milli).unwrap_or(i64::MAX);
                    let mem = i64::try_from(memory_mb).unwrap_or(i64::MAX);
                    sqlx::query(
                        "INSERT INTO usage_open (sandbox_id, tenant, provider, start, billed_to, cpus_milli, memory_mb) \
                         VALUES ($1, $2, COALESCE((SELECT provider FROM sandboxes WHERE id = $1), 'unknown'), $3, $3, $4, $5) \
                         ON CONFLICT (sandbox_id) DO NOTHING",
                    )
                    .bind(&e.sandbox_id)
                    .bind(&e.tenant)
                    .bind(at)
                    .bind(cpus)
                    .bind(mem)
                    .execute(&mut *conn)
                    .await?;
                    ("running", Some(cpus), Some(mem))
                }
                LedgerKind::Stopped => {
                    if let Some(o) = open_rows(conn, &e.sandbox_id).await?.pop() {
                        if at < o.billed_to {
                            let mut v = note.take().unwrap_or_else(|| serde_json::json!({}));
                            if !v.is_object() {
                                v = serde_json::json!({ "finding": v });
                            }
                            v["already_billed_to"] = serde_json::json!(o.billed_to);
                            v["reported_at"] = serde_json::json!(at);
                            note = Some(v);
                            at = o.billed_to;
                        }
                        n = emit(conn, ctx, &o, o.billed_to, at, now).await?;
                        sqlx::query("DELETE FROM usage_open WHERE sandbox_id = $1")
                            .bind(&e.sandbox_id)
                            .execute(&mut *conn)
                            .await?;
                    }
                    ("stopped", None, None)
                }
            };
            sqlx::query(
                "INSERT INTO ledger (sandbox_id, tenant, at, kind, cpus_milli, memory_mb, note) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&e.sandbox_id)
            .bind(&e.tenant)
            .bind(at)
            .bind(kind)
            .bind(cpus)
            .bind(mem)
            .bind(note.map(|n| n.to_string()))
            .execute(&mut *conn)
            .await?;
            Ok(n)
        }

        pub(crate) async fn cut(
            conn: &mut Conn,
            boundary: Millis,
            ctx: &UsageContext,
            now: Millis,
        ) -> Result<usize> {
            let boundary = boundary.div_euclid(HOUR_MS).saturating_mul(HOUR_MS);
            let mut n = 0;
            for o in open_rows(conn, "").await? {
                if o.billed_to >= boundary {
                    continue;
                }
                n += emit(conn, ctx, &o, o.billed_to, boundary, now).await?;
                sqlx::query("UPDATE usage_open SET billed_to = $1 WHERE sandbox_id = $2")
                    .bind(boundary)
                    .bind(&o.sandbox_id)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(n)
        }

        pub(crate) async fn events_after(
            conn: &mut Conn,
            tenant: Option<&str>,
            after: UsageCursor,
            limit: u32,
        ) -> Result<Vec<UsageEventRecord>> {
            use crate::sql::dialect::$backend as d;
            // The topic is a constant: the partial index `outbox_usage_order` serves it.
            let rows = sqlx::query(sql!(
                "SELECT ", d::CURSOR_COLS, " FROM outbox WHERE topic LIKE 'usage.%' AND ",
                d::CURSOR_AFTER, " AND ($4 = '' OR tenant = $4) ORDER BY ", d::CURSOR_ORDER,
                " LIMIT $3"
            ))
            .bind(after.txid)
            .bind(after.seq)
            .bind(i64::from(limit))
            .bind(tenant.unwrap_or_default())
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(cursor_record_from_row).collect()
        }

        pub(crate) async fn budget_signal(
            conn: &mut Conn,
            tenant: &str,
            topic: &str,
            period_start: Millis,
            payload: &serde_json::Value,
            now: Millis,
        ) -> Result<bool> {
            let r = sqlx::query(
                "INSERT INTO budget_signals (tenant, signal, period_start, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant, signal, period_start) DO NOTHING",
            )
            .bind(tenant)
            .bind(topic)
            .bind(period_start)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query("INSERT INTO events (tenant, at, kind, detail) VALUES ($1, $2, $3, $4)")
                .bind(tenant)
                .bind(now)
                .bind(topic.replace('.', "_"))
                .bind(payload.to_string())
                .execute(&mut *conn)
                .await?;
            let ev = crate::OutboxEvent {
                id: format!("bgt_{tenant}_{topic}_{period_start}"),
                topic: topic.to_string(),
                tenant: Some(tenant.to_string()),
                payload: payload.clone(),
                created_at: now,
            };
            crate::outbox::$backend::append(conn, &ev).await?;
            Ok(true)
        }

        pub(crate) async fn cursor(conn: &mut Conn, name: &str) -> Result<Option<UsageCursor>> {
            let pos: Option<String> =
                sqlx::query_scalar("SELECT position FROM usage_cursors WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await?;
            pos.map(|p| p.parse().map_err(corrupt)).transpose()
        }

        pub(crate) async fn set_cursor(
            conn: &mut Conn,
            name: &str,
            at: UsageCursor,
            now: Millis,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO usage_cursors (name, position, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(at.to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    };
}

pub(crate) mod sqlite {
    // Writes are `BEGIN IMMEDIATE`: one at a time, in `seq` order.
    for_backend!(sqlx::Sqlite, sqlite, None, "");
}

pub(crate) mod postgres {
    for_backend!(
        sqlx::Postgres,
        postgres,
        Some("SELECT pg_advisory_xact_lock(hashtext('shoal_usage'), hashtext($1))"),
        " FOR UPDATE"
    );
}
