//! The records the store keeps beside jobs and sandboxes: the metering ledger, finished jobs for
//! usage reports, operators' events, and jobs' output. One text for both databases; only the
//! output's append checks its lease under a row lock on Postgres.

use crate::rows::{StoreRow, corrupt, json_col, log_head_from_row, log_slice_from_rows};
use crate::{EventRecord, Finished, LogAppend, LogSlice, Result, joblog};
use shoal_core::{JobState, Millis};
use shoal_metering::{LedgerEntry, LedgerKind};
use std::str::FromStr;

/// A `ledger` row.
fn ledger_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<LedgerEntry> {
    let kind = match row.text("kind")? {
        "running" => LedgerKind::Running {
            cpus_milli: row.opt_int("cpus_milli")?.unwrap_or(0) as u64,
            memory_mb: row.opt_int("memory_mb")?.unwrap_or(0) as u64,
        },
        "stopped" => LedgerKind::Stopped,
        other => return Err(corrupt(format!("ledger kind {other}"))),
    };
    Ok(LedgerEntry {
        sandbox_id: row.string("sandbox_id")?,
        tenant: row.string("tenant")?,
        at: row.int("at")?,
        kind,
        note: json_col(row, "note")?,
    })
}

/// An `events` row.
pub(crate) fn operator_event_from_row<'r, R: StoreRow<'r>>(r: &'r R) -> Result<EventRecord> {
    Ok(EventRecord {
        seq: r.int("seq")?,
        tenant: r.opt_string("tenant")?,
        at: r.int("at")?,
        kind: r.string("kind")?,
        detail: json_col(r, "detail")?.unwrap_or_default(),
    })
}

const LEDGER_COLS: &str = "sandbox_id, tenant, at, kind, cpus_milli, memory_mb, note";

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;
        use crate::rows::sql;

        type Conn = <$db as sqlx::Database>::Connection;

        /// The ledger of one tenant or all, in order.
        pub(crate) async fn ledger(conn: &mut Conn, tenant: Option<&str>) -> Result<Vec<LedgerEntry>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                LEDGER_COLS,
                " FROM ledger WHERE (CAST($1 AS TEXT) IS NULL OR tenant = $1) ORDER BY seq"
            ))
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(ledger_from_row).collect()
        }

        /// See [`crate::Store::period_ledger`]. A sandbox running now has its interval in
        /// `usage_open` (kept in the transaction of each ledger entry), so the sandboxes read are
        /// those of the period's entries (index `ledger_tenant_at`) and the open ones, each read
        /// whole (index `ledger_sandbox`).
        pub(crate) async fn period_ledger(
            conn: &mut Conn,
            tenant: &str,
            from: Millis,
        ) -> Result<Vec<LedgerEntry>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                LEDGER_COLS,
                " FROM ledger WHERE tenant = $1 AND sandbox_id IN \
                 (SELECT sandbox_id FROM ledger WHERE tenant = $1 AND at >= $2 \
                 UNION SELECT sandbox_id FROM usage_open WHERE tenant = $1) ORDER BY seq"
            ))
            .bind(tenant)
            .bind(from)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(ledger_from_row).collect()
        }

        /// Jobs that finished in `from..to`, of one tenant or all.
        pub(crate) async fn finished_jobs(
            conn: &mut Conn,
            tenant: Option<&str>,
            from: Millis,
            to: Millis,
        ) -> Result<Vec<Finished>> {
            let rows = sqlx::query(
                "SELECT finished_at, state FROM jobs WHERE (CAST($1 AS TEXT) IS NULL OR tenant = $1) \
                 AND finished_at >= $2 AND finished_at < $3",
            )
            .bind(tenant)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Finished {
                        at: r.int("finished_at")?,
                        state: JobState::from_str(r.text("state")?).map_err(corrupt)?,
                    })
                })
                .collect()
        }

        /// Records an operators' event.
        pub(crate) async fn record_event(
            conn: &mut Conn,
            tenant: Option<&str>,
            at: Millis,
            kind: &str,
            detail: &serde_json::Value,
        ) -> Result<()> {
            sqlx::query("INSERT INTO events (tenant, at, kind, detail) VALUES ($1, $2, $3, $4)")
                .bind(tenant)
                .bind(at)
                .bind(kind)
                .bind(detail.to_string())
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// The newest `limit` operators' events, of one tenant or all.
        pub(crate) async fn events(
            conn: &mut Conn,
            tenant: Option<&str>,
            limit: u32,
        ) -> Result<Vec<EventRecord>> {
            let rows = sqlx::query(
                "SELECT seq, tenant, at, kind, detail FROM events \
                 WHERE (CAST($1 AS TEXT) IS NULL OR tenant = $1) ORDER BY seq DESC LIMIT $2",
            )
            .bind(tenant)
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(operator_event_from_row).collect()
        }

        /// Stores a chunk of a job's output (see [`crate::Store::append_log`]), in the caller's
        /// transaction.
        pub(crate) async fn append_log(
            conn: &mut Conn,
            (sandbox_id, job_id, lease_id): (&str, &str, &str),
            offset: u64,
            data: &[u8],
            max_bytes: u64,
        ) -> Result<LogAppend> {
            if !crate::sql::dispatch::$backend::hold_job(conn, sandbox_id, job_id, lease_id).await? {
                return Ok(LogAppend::Stale);
            }
            let head = sqlx::query(
                "SELECT start_offset, end_offset, lease_id, lease_pos FROM job_log_heads WHERE job_id = $1",
            )
            .bind(job_id)
            .fetch_optional(&mut *conn)
            .await?
            .as_ref()
            .map(log_head_from_row)
            .transpose()?;
            let Some(w) = joblog::plan_append(head.as_ref(), lease_id, offset, data, max_bytes) else {
                return Ok(LogAppend::Stored {
                    start: head.as_ref().map_or(0, |h| h.start),
                    end: head.as_ref().map_or(0, |h| h.end),
                });
            };
            let start = w.head.start as i64;
            sqlx::query("INSERT INTO job_logs (job_id, start_offset, data) VALUES ($1, $2, $3)")
                .bind(job_id)
                .bind(w.at as i64)
                .bind(&*w.bytes)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "DELETE FROM job_logs WHERE job_id = $1 AND start_offset < $2 \
                 AND start_offset + length(data) <= $2",
            )
            .bind(job_id)
            .bind(start)
            .execute(&mut *conn)
            .await?;
            // The one chunk the limit cuts through keeps its tail.
            sqlx::query(
                "UPDATE job_logs SET data = substr(data, CAST($2 - start_offset + 1 AS INTEGER)), \
                 start_offset = $2 WHERE job_id = $1 AND start_offset < $2",
            )
            .bind(job_id)
            .bind(start)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO job_log_heads (job_id, start_offset, end_offset, lease_id, lease_pos) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job_id) DO UPDATE SET start_offset = $2, \
                 end_offset = $3, lease_id = $4, lease_pos = $5",
            )
            .bind(job_id)
            .bind(start)
            .bind(w.head.end as i64)
            .bind(&w.head.lease_id)
            .bind(w.head.lease_pos as i64)
            .execute(&mut *conn)
            .await?;
            Ok(LogAppend::Stored {
                start: w.head.start,
                end: w.head.end,
            })
        }

        /// At most `limit` bytes of the job's kept output from `from` on.
        pub(crate) async fn job_log(
            conn: &mut Conn,
            job_id: &str,
            from: u64,
            limit: usize,
        ) -> Result<LogSlice> {
            let head: Option<(i64, i64)> =
                sqlx::query_as("SELECT start_offset, end_offset FROM job_log_heads WHERE job_id = $1")
                    .bind(job_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            let head = head.map(|(s, e)| (s as u64, e as u64));
            let from = match joblog::read_from(head, from) {
                Ok(from) => from,
                Err(nothing) => return Ok(nothing),
            };
            let rows = sqlx::query(
                "SELECT start_offset, data FROM job_logs WHERE job_id = $1 AND start_offset >= \
                 COALESCE((SELECT MAX(start_offset) FROM job_logs WHERE job_id = $1 AND start_offset <= $2), 0) \
                 AND start_offset < $4 ORDER BY start_offset LIMIT $3",
            )
            .bind(job_id)
            .bind(from as i64)
            .bind(joblog::READ_CHUNKS)
            // Only the chunks that reach into the bytes asked for.
            .bind(from.saturating_add(limit.max(1) as u64) as i64)
            .fetch_all(&mut *conn)
            .await?;
            log_slice_from_rows(&rows, head.unwrap_or_default(), from, limit)
        }
    };
}

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}
