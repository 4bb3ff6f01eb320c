//! Dispatch: leasing a sandbox its next job, heartbeats, completions, lapsed leases, and the rule
//! that puts a lost job back or makes it dead. Every transaction here that touches a sandbox and
//! its jobs locks the sandbox first (on Postgres; SQLite's single writer needs no locks), so they
//! cannot deadlock, and decides only after its locks are held.

use crate::rows::sandbox_from_row;
use crate::rows::{JOB_COLS, SANDBOX_COLS, attempt_end, corrupt, history_with, job_from_row};
use crate::{
    Completed, Finish, HeartbeatAnswer, JobRecord, Lease, LeasePolicy, Result, SandboxRecord,
};
use shoal_core::{JobState, Millis, RetryOn, SandboxState};

/// The error a job put back because its sandbox's agent asked for new work while holding it.
fn agent_lost_job() -> serde_json::Value {
    serde_json::json!({"code": "agent_lost_job", "message": "the sandbox's agent asked for new work while holding this job"})
}

/// The error a job put back because its lease lapsed.
fn lease_lapsed() -> serde_json::Value {
    serde_json::json!({"code": "lease_expired", "message": "the agent stopped heartbeating"})
}

/// Whether the job is running on `sandbox_id` under `lease_id`.
fn held(job: &JobRecord, sandbox_id: &str, lease_id: &str) -> bool {
    job.state == JobState::Running
        && job.lease_id.as_deref() == Some(lease_id)
        && job.sandbox_id.as_deref() == Some(sandbox_id)
}

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;
        use crate::rows::sql;
        use crate::sql::dialect::$backend as d;

        type Conn = <$db as sqlx::Database>::Connection;

        /// Reads (and on Postgres locks, for the rest of the transaction) a sandbox row; `None`
        /// when there is no such sandbox.
        pub(crate) async fn lock_sandbox(conn: &mut Conn, id: &str) -> Result<Option<SandboxRecord>> {
            let row = sqlx::query(sql!(
                "SELECT ",
                SANDBOX_COLS,
                " FROM sandboxes WHERE id = $1",
                d::FOR_UPDATE
            ))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(sandbox_from_row).transpose()
        }

        /// The running jobs of a sandbox, locked, by id.
        pub(crate) async fn running_on(conn: &mut Conn, sandbox_id: &str) -> Result<Vec<JobRecord>> {
            let rows = sqlx::query(sql!(
                "SELECT ",
                JOB_COLS,
                " FROM jobs WHERE sandbox_id = $1 AND state = 'running' ORDER BY id",
                d::FOR_UPDATE
            ))
            .bind(sandbox_id)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(job_from_row).collect()
        }

        /// Puts a running job back in the queue (after its retry policy's backoff), or makes it
        /// dead when its policy does not retry a lost attempt or its attempts are spent: the one
        /// place the dead-job rule is applied to a lost attempt. A dead job's event is written
        /// in the same transaction.
        pub(crate) async fn put_back(
            conn: &mut Conn,
            job: &JobRecord,
            error: &serde_json::Value,
            now: Millis,
        ) -> Result<JobRecord> {
            let (next, history) = attempt_end(job, RetryOn::Lost, Some(error), now);
            let dead = next.is_none();
            let state = if dead { JobState::Dead } else { JobState::Queued };
            let row = sqlx::query(sql!(
                "UPDATE jobs SET state = $1, sandbox_id = CASE WHEN $2 THEN sandbox_id ELSE NULL END, \
                 lease_id = NULL, lease_expires_at = NULL, error = $3, \
                 finished_at = CASE WHEN $2 THEN $4 ELSE NULL END, next_attempt_at = $6, \
                 attempt_history = $7 WHERE id = $5 AND state = 'running' RETURNING ",
                JOB_COLS
            ))
            .bind(state.as_str())
            .bind(dead)
            .bind(error.to_string())
            .bind(now)
            .bind(&job.id)
            .bind(next.flatten())
            .bind(history)
            .fetch_optional(&mut *conn)
            .await?;
            let back = match row {
                Some(row) => job_from_row(&row)?,
                None => crate::sql::jobs::$backend::get(conn, &job.id)
                    .await?
                    .unwrap_or_else(|| job.clone()),
            };
            if dead {
                crate::outbox::$backend::job_event(conn, &back, now).await?;
            }
            Ok(back)
        }

        /// A sandbox holding no running job is ready again. The caller holds the sandbox's lock,
        /// so no lease can slip a job onto it between the check and the update.
        pub(crate) async fn settle_sandbox(conn: &mut Conn, sandbox_id: &str, now: Millis) -> Result<()> {
            sqlx::query(
                "UPDATE sandboxes SET state = 'ready', since = $1, idle_since = $1 WHERE id = $2 \
                 AND state = 'busy' AND NOT EXISTS \
                 (SELECT 1 FROM jobs WHERE sandbox_id = $2 AND state = 'running')",
            )
            .bind(now)
            .bind(sandbox_id)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// The sandbox's agent is there and asks for work: a booting or busy sandbox becomes
        /// ready (a busy one's jobs were lost by its agent and go back), a ready one is seen.
        /// `Some` answer when the sandbox gets no job whatever the queue holds.
        async fn check_in(conn: &mut Conn, sandbox: &SandboxRecord, now: Millis) -> Result<Option<Lease>> {
            match sandbox.state {
                // A suspended sandbox's agent is frozen: a request it sent before the freeze must
                // not make the sandbox look ready (resume sets it booting before the provider call).
                SandboxState::Suspended | SandboxState::Suspending => return Ok(Some(Lease::Idle)),
                // An unhealthy sandbox's jobs went back and it is being destroyed: an agent that
                // wakes up there stops.
                SandboxState::Unhealthy
                | SandboxState::Stopping
                | SandboxState::Stopped
                | SandboxState::Destroying
                | SandboxState::Destroyed => return Ok(Some(Lease::Stop)),
                SandboxState::Ready => {
                    sqlx::query("UPDATE sandboxes SET last_seen = $1 WHERE id = $2")
                        .bind(now)
                        .bind(&sandbox.id)
                        .execute(&mut *conn)
                        .await?;
                    return Ok(None);
                }
                SandboxState::Booting => {}
                SandboxState::Busy => {
                    // The agent asks for work while we think it holds some: it lost that job (it
                    // restarted), so the job goes back.
                    let lost = agent_lost_job();
                    for job in running_on(conn, &sandbox.id).await? {
                        put_back(conn, &job, &lost, now).await?;
                    }
                }
            }
            sqlx::query(
                "UPDATE sandboxes SET state = 'ready', since = $1, idle_since = $1, last_seen = $1 \
                 WHERE id = $2",
            )
            .bind(now)
            .bind(&sandbox.id)
            .execute(&mut *conn)
            .await?;
            Ok(None)
        }

        /// The lease of a ready sandbox in one statement, outside a transaction (the statement
        /// is one): what [`lease`] does for a sandbox found `ready` with no concurrency limit
        /// and the tenant not draining, with the same locks in the same order. `None` when the
        /// store has no such statement, the policy needs the full path, or the sandbox is not
        /// ready (or gone): [`lease`] then decides, in its transaction.
        pub(crate) async fn lease_one(
            conn: &mut Conn,
            sandbox_id: &str,
            policy: LeasePolicy,
            now: Millis,
        ) -> Result<Option<Lease>> {
            let Some(one) = d::LEASE_ONE else {
                return Ok(None);
            };
            if policy.draining || policy.max_concurrent_jobs.is_some() {
                return Ok(None);
            }
            let lease_id = uuid::Uuid::now_v7().to_string();
            let audit_id = format!("aud_{}", uuid::Uuid::now_v7().simple());
            let row = sqlx::query(sqlx::AssertSqlSafe(one))
                .bind(sandbox_id)
                .bind(now)
                .bind(&lease_id)
                .bind(now.saturating_add(policy.lease_ttl_ms))
                .bind(audit_id)
                .fetch_optional(&mut *conn)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            use crate::rows::StoreRow;
            if row.text("sandbox_state")? != SandboxState::Ready.as_str() {
                return Ok(None);
            }
            if row.opt_string("id")?.is_none() {
                return Ok(Some(Lease::Idle));
            }
            Ok(Some(Lease::Job(Box::new(job_from_row(&row)?))))
        }

        /// Leases the sandbox its tenant's next due job, in the caller's transaction.
        pub(crate) async fn lease(
            conn: &mut Conn,
            sandbox_id: &str,
            policy: LeasePolicy,
            now: Millis,
        ) -> Result<Lease> {
            let Some(sandbox) = lock_sandbox(conn, sandbox_id).await? else {
                return Ok(Lease::Stop);
            };
            if let Some(answer) = check_in(conn, &sandbox, now).await? {
                return Ok(answer);
            }
            if policy.draining {
                return Ok(Lease::Idle);
            }
            if let Some(max) = policy.max_concurrent_jobs {
                if let Some(turn) = d::TENANT_TURN {
                    sqlx::query(turn).bind(&sandbox.tenant).execute(&mut *conn).await?;
                }
                let running: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND state = 'running'",
                )
                .bind(&sandbox.tenant)
                .fetch_one(&mut *conn)
                .await?;
                if running >= i64::from(max) {
                    return Ok(Lease::Idle);
                }
            }
            let next: Option<String> = sqlx::query_scalar(sql!(
                "SELECT id FROM jobs WHERE tenant = $1 AND state = 'queued' \
                 AND (run_at IS NULL OR run_at <= $2) AND (next_attempt_at IS NULL OR next_attempt_at <= $2) \
                 ORDER BY priority DESC, seq LIMIT 1",
                d::SKIP_LOCKED
            ))
            .bind(&sandbox.tenant)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(job_id) = next else {
                return Ok(Lease::Idle);
            };
            let lease_id = uuid::Uuid::now_v7().to_string();
            let row = sqlx::query(sql!(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, sandbox_id = $1, \
                 lease_id = $2, lease_expires_at = $3, started_at = $4, next_attempt_at = NULL \
                 WHERE id = $5 AND state = 'queued' RETURNING ",
                JOB_COLS
            ))
            .bind(sandbox_id)
            .bind(&lease_id)
            .bind(now.saturating_add(policy.lease_ttl_ms))
            .bind(now)
            .bind(&job_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else {
                return Err(corrupt("a locked queued job changed under its lock"));
            };
            let job = job_from_row(&row)?;
            sqlx::query("UPDATE sandboxes SET state = 'busy', since = $1, idle_since = NULL WHERE id = $2")
                .bind(now)
                .bind(sandbox_id)
                .execute(&mut *conn)
                .await?;
            let e = crate::audit::job_lease(sandbox_id, &job);
            crate::audit::$backend::record(conn, &e, Some(&job.tenant)).await?;
            Ok(Lease::Job(Box::new(job)))
        }

        /// Extends the lease of a running job (see [`crate::Store::heartbeat`]).
        pub(crate) async fn heartbeat(
            conn: &mut Conn,
            job_id: &str,
            lease_id: &str,
            ttl_ms: Millis,
            now: Millis,
        ) -> Result<HeartbeatAnswer> {
            let r = sqlx::query(
                "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_id = $3 AND state = 'running'",
            )
            .bind(now.saturating_add(ttl_ms))
            .bind(job_id)
            .bind(lease_id)
            .execute(&mut *conn)
            .await?;
            if r.rows_affected() == 1 {
                // A heartbeat is a sign of life: the sandbox was running now, which is what
                // billing falls back on when a crash leaves no provider time.
                sqlx::query(
                    "UPDATE sandboxes SET last_seen = $1 WHERE id = (SELECT sandbox_id FROM jobs WHERE id = $2)",
                )
                .bind(now)
                .bind(job_id)
                .execute(&mut *conn)
                .await?;
                return Ok(HeartbeatAnswer {
                    ok: true,
                    cancel: false,
                });
            }
            let cancelled = sqlx::query(
                "SELECT 1 AS one FROM jobs WHERE id = $1 AND lease_id = $2 AND state = 'cancelled'",
            )
            .bind(job_id)
            .bind(lease_id)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(HeartbeatAnswer {
                ok: false,
                cancel: cancelled.is_some(),
            })
        }

        /// Records a terminal outcome of the job whose lease the caller checked under its lock,
        /// with its completion record and its event.
        async fn record_end(
            conn: &mut Conn,
            job_id: &str,
            lease_id: &str,
            state: JobState,
            (result, error): (Option<shoal_protocol::JsonText>, Option<serde_json::Value>),
            history: String,
            now: Millis,
        ) -> Result<Option<JobRecord>> {
            let done = sqlx::query(sql!(
                "UPDATE jobs SET state = $1, result = $2, error = $3, finished_at = $4, lease_id = NULL, \
                 lease_expires_at = NULL, attempt_history = $6 WHERE id = $5 AND lease_id = $7 \
                 AND state = 'running' RETURNING ",
                JOB_COLS
            ))
            .bind(state.as_str())
            .bind(result.map(shoal_protocol::JsonText::into_string))
            .bind(error.map(|e| e.to_string()))
            .bind(now)
            .bind(job_id)
            .bind(history)
            .bind(lease_id)
            .fetch_optional(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO job_completions (job_id, lease_id, state, at) VALUES ($1, $2, $3, $4)",
            )
            .bind(job_id)
            .bind(lease_id)
            .bind(state.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let done = done.as_ref().map(job_from_row).transpose()?;
            if let Some(job) = &done {
                crate::outbox::$backend::job_event(conn, job, now).await?;
            }
            Ok(done)
        }

        /// Applies `finish` to a job the caller found held under its lease; the job after it
        /// (`None` only if it changed under the caller's lock, which the lock rules out).
        async fn end_attempt(
            conn: &mut Conn,
            job: &JobRecord,
            lease_id: &str,
            finish: Finish,
            now: Millis,
        ) -> Result<Option<JobRecord>> {
            let job_id = job.id.as_str();
            match finish {
                Finish::Succeeded { result } => {
                    let h = history_with(job, "succeeded", None, now);
                    let out = (Some(result), None);
                    record_end(conn, job_id, lease_id, JobState::Succeeded, out, h, now).await
                }
                Finish::Failed { result, error } => {
                    let kind = shoal_core::retry::failure_kind(&error);
                    let (next, h) = attempt_end(job, kind, Some(&error), now);
                    let Some(at) = next else {
                        let out = (result, Some(error));
                        return record_end(conn, job_id, lease_id, JobState::Failed, out, h, now).await;
                    };
                    // Tried again after the backoff: back to the queue.
                    let row = sqlx::query(sql!(
                        "UPDATE jobs SET state = 'queued', sandbox_id = NULL, lease_id = NULL, \
                         lease_expires_at = NULL, result = $1, error = $2, next_attempt_at = $3, \
                         attempt_history = $4 WHERE id = $5 AND state = 'running' RETURNING ",
                        JOB_COLS
                    ))
                    .bind(result.map(shoal_protocol::JsonText::into_string))
                    .bind(error.to_string())
                    .bind(at)
                    .bind(h)
                    .bind(job_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                    row.as_ref().map(job_from_row).transpose()
                }
                Finish::Retry { error } => {
                    // A job handed back (its agent is stopping) has not used an attempt.
                    let row = sqlx::query(sql!(
                        "UPDATE jobs SET state = 'queued', attempts = CASE WHEN attempts > 0 \
                         THEN attempts - 1 ELSE 0 END, sandbox_id = NULL, lease_id = NULL, \
                         lease_expires_at = NULL, error = $1 WHERE id = $2 AND state = 'running' \
                         RETURNING ",
                        JOB_COLS
                    ))
                    .bind(error.to_string())
                    .bind(job_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                    row.as_ref().map(job_from_row).transpose()
                }
            }
        }

        /// Records how an attempt ended (see [`crate::Store::complete`]), in the caller's
        /// transaction.
        pub(crate) async fn complete(
            conn: &mut Conn,
            sandbox_id: &str,
            job_id: &str,
            lease_id: &str,
            finish: Finish,
            now: Millis,
        ) -> Result<Completed> {
            // Sandbox first, then the job: the order every transaction here keeps.
            lock_sandbox(conn, sandbox_id).await?;
            let job = sqlx::query(sql!(
                "SELECT ",
                JOB_COLS,
                " FROM jobs WHERE id = $1",
                d::FOR_UPDATE
            ))
            .bind(job_id)
            .fetch_optional(&mut *conn)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()?;
            let out = match job.filter(|j| held(j, sandbox_id, lease_id)) {
                Some(job) => {
                    let done = end_attempt(conn, &job, lease_id, finish, now)
                        .await?
                        .ok_or_else(|| corrupt("a locked running job changed under its lock"))?;
                    let e = crate::audit::job_complete(sandbox_id, &done, lease_id, now);
                    crate::audit::$backend::record(conn, &e, Some(&done.tenant)).await?;
                    Completed::Done(Box::new(done))
                }
                None => Completed::Stale,
            };
            // The attempt counted and the sandbox settled in one statement.
            let ran = i64::from(matches!(out, Completed::Done(_)));
            sqlx::query(
                "UPDATE sandboxes SET jobs_run = jobs_run + $3, \
                 state = CASE WHEN state = 'busy' AND NOT EXISTS (SELECT 1 FROM jobs \
                   WHERE sandbox_id = $2 AND state = 'running') THEN 'ready' ELSE state END, \
                 since = CASE WHEN state = 'busy' AND NOT EXISTS (SELECT 1 FROM jobs \
                   WHERE sandbox_id = $2 AND state = 'running') THEN $1 ELSE since END, \
                 idle_since = CASE WHEN state = 'busy' AND NOT EXISTS (SELECT 1 FROM jobs \
                   WHERE sandbox_id = $2 AND state = 'running') THEN $1 ELSE idle_since END \
                 WHERE id = $2",
            )
            .bind(now)
            .bind(sandbox_id)
            .bind(ran)
            .execute(&mut *conn)
            .await?;
            Ok(out)
        }

        /// Puts back (or kills, when spent) every running job whose lease lapsed before `now`, in
        /// the caller's transaction.
        pub(crate) async fn expire_leases(conn: &mut Conn, now: Millis) -> Result<Vec<JobRecord>> {
            // Find the sandboxes first and lock them (in id order), then re-read their lapsed
            // jobs under the locks: a heartbeat or completion that won the race is respected.
            let sandboxes: Vec<Option<String>> = sqlx::query_scalar(
                "SELECT DISTINCT sandbox_id FROM jobs WHERE state = 'running' AND lease_expires_at < $1 \
                 ORDER BY sandbox_id",
            )
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
            let sandboxes: Vec<String> = sandboxes.into_iter().flatten().collect();
            for sb in &sandboxes {
                lock_sandbox(conn, sb).await?;
            }
            let rows = sqlx::query(sql!(
                "SELECT ",
                JOB_COLS,
                " FROM jobs WHERE state = 'running' AND lease_expires_at < $1 ORDER BY id",
                d::FOR_UPDATE
            ))
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
            let lapsed = lease_lapsed();
            let mut out = Vec::new();
            for row in &rows {
                let job = job_from_row(row)?;
                // A job leased onto a sandbox this pass did not lock waits for the next pass, so
                // the lock order holds.
                if job.sandbox_id.as_ref().is_some_and(|sb| !sandboxes.contains(sb)) {
                    continue;
                }
                let back = put_back(conn, &job, &lapsed, now).await?;
                if let Some(sb) = &job.sandbox_id {
                    settle_sandbox(conn, sb, now).await?;
                }
                let e = crate::audit::job_lapsed(&back, "job.lease_expired", now);
                crate::audit::$backend::record(conn, &e, Some(&back.tenant)).await?;
                out.push(back);
            }
            Ok(out)
        }

        /// Whether `job_id` is running on `sandbox_id` under `lease_id` (on Postgres, its row is
        /// then held until the transaction ends).
        pub(crate) async fn hold_job(
            conn: &mut Conn,
            sandbox_id: &str,
            job_id: &str,
            lease_id: &str,
        ) -> Result<bool> {
            let row = sqlx::query(sql!(
                "SELECT 1 AS one FROM jobs WHERE id = $1 AND state = 'running' AND lease_id = $2 \
                 AND sandbox_id = $3",
                d::HOLD_JOB
            ))
            .bind(job_id)
            .bind(lease_id)
            .bind(sandbox_id)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(row.is_some())
        }
    };
}

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}
