//! Row mapping shared by the SQLite and Postgres stores. Both keep the same columns with the same
//! encodings (times as integer milliseconds, JSON as text, states as their names), so one mapper,
//! generic over the database's row type, serves both.

use crate::{JobRecord, Result, SandboxRecord, ScheduleRecord, StoreError, TenantRecord};
use shoal_core::{AttemptRecord, JobState, Millis, PlanTier, RetryOn, RetryPolicy, SandboxState};
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::str::FromStr;

pub(crate) const JOB_COLS: &str = "id, tenant, kind, spec, idempotency_key, priority, max_attempts, timeout_s, state, attempts, \
     sandbox_id, lease_id, lease_expires_at, result, error, created_at, started_at, finished_at, seq, \
     run_at, next_attempt_at, retry, attempt_history, schedule";
/// The job columns of a list: the spec left out (a list never shows it, and it may be 32 MiB).
pub(crate) const JOB_LIST_COLS: &str = "id, tenant, kind, CAST(NULL AS TEXT) AS spec, idempotency_key, priority, max_attempts, timeout_s, state, attempts, \
     sandbox_id, lease_id, lease_expires_at, result, error, created_at, started_at, finished_at, seq, \
     run_at, next_attempt_at, retry, attempt_history, schedule";
pub(crate) const TENANT_COLS: &str =
    "id, plan, overrides, draining, quota_warned_at, created_at, updated_at";
pub(crate) const KEY_COLS: &str = "id, tenant, created_at, last_used_at";
pub(crate) const SANDBOX_COLS: &str = "id, tenant, state, provider, provider_id, cpus_milli, memory_mb, since, idle_since, last_seen, jobs_run, created_at, region";

/// Builds a query from constant parts: the column lists above and the statement around them.
macro_rules! sql {
    ($($part:expr),+ $(,)?) => {
        sqlx::AssertSqlSafe(const_format::concatcp!($($part),+))
    };
}
pub(crate) use sql;

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// What a row type must decode for the mappers: text, optional text, integers, booleans.
pub(crate) trait StoreRow<'r>: Row {
    fn text(&'r self, col: &'r str) -> Result<&'r str>;
    fn string(&'r self, col: &'r str) -> Result<String>;
    fn opt_string(&'r self, col: &'r str) -> Result<Option<String>>;
    fn opt_text(&'r self, col: &'r str) -> Result<Option<&'r str>>;
    fn int(&'r self, col: &'r str) -> Result<i64>;
    fn opt_int(&'r self, col: &'r str) -> Result<Option<i64>>;
    fn int32(&'r self, col: &'r str) -> Result<i32>;
    fn boolean(&'r self, col: &'r str) -> Result<bool>;
    fn bytes(&'r self, col: &'r str) -> Result<Vec<u8>>;
}

impl<'r, R> StoreRow<'r> for R
where
    R: Row,
    &'r str: ColumnIndex<R> + Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    i32: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&'r self, col: &'r str) -> Result<&'r str> {
        Ok(self.try_get(col)?)
    }
    fn string(&'r self, col: &'r str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_string(&'r self, col: &'r str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&'r self, col: &'r str) -> Result<Option<&'r str>> {
        Ok(self.try_get(col)?)
    }
    fn int(&'r self, col: &'r str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&'r self, col: &'r str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn int32(&'r self, col: &'r str) -> Result<i32> {
        Ok(self.try_get(col)?)
    }
    fn boolean(&'r self, col: &'r str) -> Result<bool> {
        Ok(self.try_get(col)?)
    }
    fn bytes(&'r self, col: &'r str) -> Result<Vec<u8>> {
        Ok(self.try_get(col)?)
    }
}

/// A JSON column stored as text.
pub(crate) fn json_col<'r, R: StoreRow<'r>>(
    row: &'r R,
    col: &'r str,
) -> Result<Option<serde_json::Value>> {
    row.opt_string(col)?
        .map(|s| serde_json::from_str(&s).map_err(corrupt))
        .transpose()
}

/// A JSON column kept as its text.
pub(crate) fn json_text_col<'r, R: StoreRow<'r>>(
    row: &'r R,
    col: &'r str,
) -> Result<Option<shoal_protocol::JsonText>> {
    row.opt_string(col)?
        .map(|s| shoal_protocol::JsonText::from_text(s).map_err(corrupt))
        .transpose()
}

pub(crate) fn job_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<JobRecord> {
    Ok(JobRecord {
        id: row.string("id")?,
        tenant: row.string("tenant")?,
        kind: row.string("kind")?,
        spec: json_text_col(row, "spec")?.unwrap_or_else(shoal_protocol::JsonText::null),
        idempotency_key: row.opt_string("idempotency_key")?,
        priority: row.int32("priority")?,
        max_attempts: row.int("max_attempts")? as u32,
        timeout_s: row.int("timeout_s")? as u64,
        state: JobState::from_str(row.text("state")?).map_err(corrupt)?,
        attempts: row.int("attempts")? as u32,
        sandbox_id: row.opt_string("sandbox_id")?,
        lease_id: row.opt_string("lease_id")?,
        lease_expires_at: row.opt_int("lease_expires_at")?,
        result: json_text_col(row, "result")?,
        error: json_col(row, "error")?,
        created_at: row.int("created_at")?,
        started_at: row.opt_int("started_at")?,
        finished_at: row.opt_int("finished_at")?,
        seq: row.int("seq")?,
        run_at: row.opt_int("run_at")?,
        next_attempt_at: row.opt_int("next_attempt_at")?,
        retry: retry_from_col(row.opt_text("retry")?, row.int("max_attempts")? as u32)?,
        attempt_history: serde_json::from_str(row.text("attempt_history")?).map_err(corrupt)?,
        schedule: row.opt_string("schedule")?,
    })
}

/// The retry column: the policy without `max_attempts`, which is its own column.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRetry {
    on: Vec<RetryOn>,
    initial_backoff_s: f64,
    max_backoff_s: f64,
}

/// The retry column's text for `policy`.
pub(crate) fn retry_col(policy: &RetryPolicy) -> String {
    serde_json::to_string(&StoredRetry {
        on: policy.on.clone(),
        initial_backoff_s: policy.initial_backoff_s,
        max_backoff_s: policy.max_backoff_s,
    })
    .unwrap_or_else(|_| "null".into())
}

fn retry_from_col(col: Option<&str>, max_attempts: u32) -> Result<RetryPolicy> {
    Ok(match col {
        // A job admitted before retry policies: put back at once when lost, as it was then.
        None => RetryPolicy {
            max_attempts,
            on: vec![RetryOn::Lost],
            initial_backoff_s: 0.0,
            max_backoff_s: 0.0,
        },
        Some(text) => {
            let r: StoredRetry = serde_json::from_str(text).map_err(corrupt)?;
            RetryPolicy {
                max_attempts,
                on: r.on,
                initial_backoff_s: r.initial_backoff_s,
                max_backoff_s: r.max_backoff_s,
            }
        }
    })
}

/// What happens to a job whose attempt ended `outcome` at `now`: `None` when there are no more
/// attempts, else the next attempt's earliest start (`Some(None)`: at once, no backoff); and the
/// history with this attempt added.
pub(crate) fn attempt_end(
    job: &JobRecord,
    outcome: RetryOn,
    error: Option<&serde_json::Value>,
    now: Millis,
) -> (Option<Option<Millis>>, String) {
    let next = job
        .retry
        .after(job.attempts, outcome, now, &job.id)
        .map(|at| Some(at).filter(|&at| at > now));
    (next, history_with(job, outcome.as_str(), error, now))
}

/// The job's attempt history with its current attempt ended `outcome` at `now`, as the column
/// keeps it.
pub(crate) fn history_with(
    job: &JobRecord,
    outcome: &str,
    error: Option<&serde_json::Value>,
    now: Millis,
) -> String {
    let mut h = job.attempt_history.clone();
    h.push(AttemptRecord {
        attempt: job.attempts,
        started_at: job.started_at,
        finished_at: now,
        outcome: outcome.into(),
        error: error.cloned(),
    });
    serde_json::to_string(&h).unwrap_or_else(|_| "[]".into())
}

pub(crate) const SCHEDULE_COLS: &str =
    "tenant, name, cron, timezone, job, next_fire_at, last_fire_at, created_at, updated_at";

pub(crate) fn schedule_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        tenant: row.string("tenant")?,
        name: row.string("name")?,
        cron: row.string("cron")?,
        timezone: row.string("timezone")?,
        job: json_text_col(row, "job")?.unwrap_or_else(shoal_protocol::JsonText::null),
        next_fire_at: row.opt_int("next_fire_at")?,
        last_fire_at: row.opt_int("last_fire_at")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

/// Builds a [`crate::JobPage`] from the rows of a list, read one at a time: at most `limit` jobs
/// (the query asks for one more, to know whether there is a next page), stopping before the job
/// that would take the page over `max_bytes`.
pub(crate) struct PageBuilder {
    page: crate::JobPage,
    bytes: u64,
    limit: usize,
    max_bytes: u64,
}

impl PageBuilder {
    pub(crate) fn new(limit: u32, max_bytes: u64) -> Self {
        PageBuilder {
            page: crate::JobPage::default(),
            bytes: 0,
            limit: limit as usize,
            max_bytes,
        }
    }

    /// Adds the job of `row`; `false` when the page is full (the row is not added).
    pub(crate) fn push<'r, R: StoreRow<'r>>(&mut self, row: &'r R) -> Result<bool> {
        let len = |c| -> Result<usize> { Ok(row.opt_text(c)?.map_or(0, str::len)) };
        let size = crate::listed_bytes(len("result")?, len("error")?);
        let full = self.page.jobs.len() == self.limit
            || (!self.page.jobs.is_empty() && self.bytes + size > self.max_bytes);
        if full {
            self.page.more = true;
            return Ok(false);
        }
        self.bytes += size;
        self.page.jobs.push(job_from_row(row)?);
        Ok(true)
    }

    pub(crate) fn finish(self) -> crate::JobPage {
        self.page
    }
}

pub(crate) fn key_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<crate::KeyRecord> {
    Ok(crate::KeyRecord {
        id: row.string("id")?,
        tenant: row.string("tenant")?,
        created_at: row.int("created_at")?,
        last_used_at: row.opt_int("last_used_at")?,
    })
}

pub(crate) fn sandbox_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<SandboxRecord> {
    Ok(SandboxRecord {
        id: row.string("id")?,
        tenant: row.string("tenant")?,
        state: SandboxState::from_str(row.text("state")?).map_err(corrupt)?,
        provider: row.string("provider")?,
        provider_id: row.opt_string("provider_id")?,
        cpus_milli: row.int("cpus_milli")? as u64,
        memory_mb: row.int("memory_mb")? as u64,
        since: row.int("since")?,
        idle_since: row.opt_int("idle_since")?,
        last_seen: row.opt_int("last_seen")?,
        jobs_run: row.int("jobs_run")? as u64,
        created_at: row.int("created_at")?,
        region: row.opt_string("region")?,
    })
}

pub(crate) fn tenant_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<TenantRecord> {
    Ok(TenantRecord {
        id: row.string("id")?,
        plan: PlanTier::from_str(row.text("plan")?).map_err(corrupt)?,
        overrides: serde_json::from_str(row.text("overrides")?).map_err(corrupt)?,
        draining: row.boolean("draining")?,
        quota_warned_at: row.opt_int("quota_warned_at")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
    })
}

/// A `job_log_heads` row.
pub(crate) fn log_head_from_row<'r, R: StoreRow<'r>>(row: &'r R) -> Result<crate::joblog::LogHead> {
    Ok(crate::joblog::LogHead {
        start: row.int("start_offset")? as u64,
        end: row.int("end_offset")? as u64,
        lease_id: row.string("lease_id")?,
        lease_pos: row.int("lease_pos")? as u64,
    })
}

/// At most `limit` bytes from `from` on, out of `job_logs` rows (`start_offset`, `data`) in offset
/// order, in a log holding `start..end`.
pub(crate) fn log_slice_from_rows<'r, R: StoreRow<'r>>(
    rows: &'r [R],
    (start, end): (u64, u64),
    from: u64,
    limit: usize,
) -> Result<crate::LogSlice> {
    let chunks = rows
        .iter()
        .map(|r| Ok((r.int("start_offset")? as u64, r.bytes("data")?)))
        .collect::<Result<Vec<_>>>()?;
    let (at, data) = crate::joblog::join_chunks(chunks, from, limit.max(1));
    Ok(crate::LogSlice {
        start,
        end,
        at,
        data,
    })
}

/// The queue counts of the backends' `QUEUE_COUNTS` query: one row per tenant.
pub(crate) fn queue_counts_from_rows<R>(rows: &[R]) -> Result<Vec<(String, crate::QueueCounts)>>
where
    for<'r> R: StoreRow<'r>,
{
    rows.iter()
        .map(|row| {
            let n = |col| row.opt_int(col).map(|v| v.unwrap_or(0).max(0) as u64);
            Ok((
                row.string("tenant")?,
                crate::QueueCounts {
                    queued: n("queued")?,
                    running: n("running")?,
                    waiting: n("waiting")?,
                    next_due: row.opt_int("next_due")?,
                },
            ))
        })
        .collect()
}
