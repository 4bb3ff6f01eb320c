//! The Postgres store, for several scheduler replicas sharing one database. Same schema meanings
//! and same answers as the SQLite store; what differs is how races between replicas are settled:
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

use crate::rows::{
    JOB_COLS, JOB_LIST_COLS, KEY_COLS, PageBuilder, SANDBOX_COLS, corrupt, job_from_row, json_col,
    key_from_row, sandbox_from_row, sql, tenant_from_row,
};
use crate::rows::{attempt_end, history_with, retry_col};
use crate::rows::{log_head_from_row, log_slice_from_rows};
use crate::schedules;
use crate::*;
use shoal_core::RetryOn;
use shoal_metering::LedgerKind;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};
use std::str::FromStr;
use std::time::Duration;

/// The Postgres implementation of [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

const TENANT_COLS: &str = "id, plan, overrides, draining, quota_warned_at, created_at, updated_at";

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…` or `postgresql://…`) and brings its
    /// schema up to date. Replicas starting together are safe: sqlx holds an advisory lock while
    /// it migrates.
    pub async fn open(url: &str) -> Result<Self> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::UnsupportedUrl(url.into()));
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
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

    async fn job_tx(tx: &mut PgConnection, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(sql!("SELECT ", JOB_COLS, " FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Locks a sandbox row for the rest of the transaction; `None` when there is no such sandbox.
    async fn lock_sandbox(tx: &mut PgConnection, id: &str) -> Result<Option<SandboxRecord>> {
        let row = sqlx::query(sql!(
            "SELECT ",
            SANDBOX_COLS,
            " FROM sandboxes WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        row.as_ref().map(sandbox_from_row).transpose()
    }

    /// Puts a running job back in the queue (after its retry policy's backoff), or makes it dead
    /// when its policy does not retry a lost attempt or its attempts are spent.
    async fn put_back(
        tx: &mut PgConnection,
        job: &JobRecord,
        error: &serde_json::Value,
        now: Millis,
    ) -> Result<JobRecord> {
        let (next, history) = attempt_end(job, RetryOn::Lost, Some(error), now);
        let dead = next.is_none();
        sqlx::query(
            "UPDATE jobs SET state = $1, sandbox_id = CASE WHEN $2 THEN sandbox_id ELSE NULL END, lease_id = NULL, \
             lease_expires_at = NULL, error = $3, finished_at = CASE WHEN $2 THEN $4 ELSE NULL END, \
             next_attempt_at = $6, attempt_history = $7 WHERE id = $5 AND state = 'running'",
        )
        .bind(if dead { JobState::Dead.as_str() } else { JobState::Queued.as_str() })
        .bind(dead)
        .bind(error.to_string())
        .bind(now)
        .bind(&job.id)
        .bind(next.flatten())
        .bind(history)
        .execute(&mut *tx)
        .await?;
        let back = Self::job_tx(tx, &job.id)
            .await?
            .unwrap_or_else(|| job.clone());
        if dead {
            outbox::postgres::job_event(tx, &back, now).await?;
        }
        Ok(back)
    }

    /// A sandbox holding no running job is ready again. The caller holds the sandbox's lock, so
    /// no lease can slip a job onto it between the check and the update.
    async fn settle_sandbox(tx: &mut PgConnection, sandbox_id: &str, now: Millis) -> Result<()> {
        sqlx::query(
            "UPDATE sandboxes SET state = 'ready', since = $1, idle_since = $1 WHERE id = $2 AND state = 'busy' \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE sandbox_id = $2 AND state = 'running')",
        )
        .bind(now)
        .bind(sandbox_id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// The running jobs of a sandbox, locked.
    async fn running_on(tx: &mut PgConnection, sandbox_id: &str) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT ",
            JOB_COLS,
            " FROM jobs WHERE sandbox_id = $1 AND state = 'running' ORDER BY id FOR UPDATE"
        ))
        .bind(sandbox_id)
        .fetch_all(&mut *tx)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn begin(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn put_tenant(
        &self,
        id: &str,
        plan: PlanTier,
        overrides: &LimitsPatch,
        now: Millis,
        actor: &Actor,
    ) -> Result<(TenantRecord, bool)> {
        let mut tx = self.begin().await?;
        let overrides = serde_json::to_string(overrides).map_err(corrupt)?;
        // `xmax = 0` holds for a row this statement inserted, not for one it updated.
        let row = sqlx::query(sql!(
            "INSERT INTO tenants (id, plan, overrides, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET plan = excluded.plan, overrides = excluded.overrides, updated_at = excluded.updated_at \
             RETURNING ",
            TENANT_COLS,
            ", (xmax = 0) AS inserted"
        ))
        .bind(id)
        .bind(plan.as_str())
        .bind(overrides)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let created: bool = row.try_get("inserted")?;
        let t = tenant_from_row(&row)?;
        audit::postgres::record(&mut tx, &audit::tenant_put(actor, &t, created), Some(id)).await?;
        tx.commit().await?;
        Ok((t, created))
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>> {
        let row = sqlx::query(sql!("SELECT ", TENANT_COLS, " FROM tenants WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>> {
        let rows = sqlx::query(sql!("SELECT ", TENANT_COLS, " FROM tenants ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    async fn set_draining(
        &self,
        id: &str,
        draining: bool,
        now: Millis,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = tenants::postgres::set_draining(&mut tx, id, draining, now, actor).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn mark_quota_warned(&self, id: &str, period_start: Millis, now: Millis) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE tenants SET quota_warned_at = $1 WHERE id = $2 AND (quota_warned_at IS NULL OR quota_warned_at < $3)",
        )
        .bind(now)
        .bind(id)
        .bind(period_start)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn add_key(
        &self,
        tenant: &str,
        key_id: &str,
        key_hash: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        tenants::postgres::add_key(&mut tx, tenant, key_id, key_hash, now, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn key_tenant(&self, key_hash: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT tenant FROM api_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn key(&self, key_hash: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(sql!(
            "SELECT ",
            KEY_COLS,
            " FROM api_keys WHERE key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn keys(&self, tenant: &str) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT ",
            KEY_COLS,
            " FROM api_keys WHERE tenant = $1 ORDER BY created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(
        &self,
        tenant: &str,
        key_id: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let done = tenants::postgres::revoke_key(&mut tx, tenant, key_id, now, actor).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn touch_key(&self, key_id: &str, now: Millis) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn period_jobs(&self, tenant: &str, period_start: Millis) -> Result<u64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT jobs FROM tenant_periods WHERE tenant = $1 AND period_start = $2",
        )
        .bind(tenant)
        .bind(period_start)
        .fetch_optional(&self.pool)
        .await?;
        Ok(n.unwrap_or(0) as u64)
    }

    async fn admit(
        &self,
        job: NewJob,
        period_start: Millis,
        limit: Option<u64>,
        actor: &Actor,
    ) -> Result<Admitted> {
        let mut tx = self.begin().await?;
        let tenant = job.tenant.clone();
        let key = job.idempotency_key.clone();
        match Self::admit_in(&mut tx, job, period_start, limit, actor).await {
            Ok(out) => {
                tx.commit().await?;
                Ok(out)
            }
            // The key was taken under another month's turn in the meantime (a request racing
            // across the month boundary): the first job stands.
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if e.constraint() == Some("jobs_idempotency") =>
            {
                tx.rollback().await?;
                let row = sqlx::query(sql!(
                    "SELECT ",
                    JOB_COLS,
                    " FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
                ))
                .bind(&tenant)
                .bind(key.unwrap_or_default())
                .fetch_one(&self.pool)
                .await?;
                Ok(Admitted::Existing(job_from_row(&row)?))
            }
            Err(e) => Err(e),
        }
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(sql!("SELECT ", JOB_COLS, " FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn jobs(&self, f: &JobFilter) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT ",
            JOB_COLS,
            " FROM jobs WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR state = $2) \
             AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq DESC LIMIT $4"
        ))
        .bind(&f.tenant)
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.before_seq)
        .bind(f.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    async fn job_page(&self, f: &JobFilter, max_bytes: u64) -> Result<JobPage> {
        use futures::TryStreamExt;
        let mut rows = sqlx::query(sql!(
            "SELECT ",
            JOB_LIST_COLS,
            " FROM jobs WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR state = $2) \
             AND ($3::bigint IS NULL OR seq < $3) ORDER BY seq DESC LIMIT $4"
        ))
        .bind(&f.tenant)
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.before_seq)
        .bind(i64::from(f.limit) + 1)
        .fetch(&self.pool);
        let mut page = PageBuilder::new(f.limit, max_bytes);
        while let Some(row) = rows.try_next().await? {
            if !page.push(&row)? {
                break;
            }
        }
        Ok(page.finish())
    }

    async fn cancel(&self, id: &str, now: Millis, actor: &Actor) -> Result<Option<JobRecord>> {
        // One statement: it waits for a lease or completion holding the row, then re-checks the
        // state. A running job keeps its lease id so the agent's next heartbeat learns of it.
        let mut tx = self.begin().await?;
        let updated = sqlx::query(sql!(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1 WHERE id = $2 AND state IN ('queued', 'running') \
             RETURNING ",
            JOB_COLS
        ))
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match updated {
            Some(row) => {
                let job = job_from_row(&row)?;
                outbox::postgres::job_event(&mut tx, &job, now).await?;
                audit::postgres::record(
                    &mut tx,
                    &audit::job_cancel(actor, &job, now),
                    Some(&job.tenant),
                )
                .await?;
                tx.commit().await?;
                Ok(Some(job))
            }
            None => {
                tx.commit().await?;
                self.job(id).await
            }
        }
    }

    async fn queue_counts(&self, now: Millis) -> Result<Vec<(String, QueueCounts)>> {
        let rows = sqlx::query(QUEUE_COUNTS)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        crate::rows::queue_counts_from_rows(&rows)
    }

    async fn next_due(&self, tenant: &str, now: Millis) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(NEXT_DUE)
            .bind(tenant)
            .bind(now)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn put_schedule(&self, s: &NewSchedule, actor: &Actor) -> Result<(ScheduleRecord, bool)> {
        let mut tx = self.begin().await?;
        let out = schedules::postgres::put(&mut tx, s, actor).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn schedule(&self, tenant: &str, name: &str) -> Result<Option<ScheduleRecord>> {
        let mut c = self.pool.acquire().await?;
        schedules::postgres::get(&mut c, tenant, name).await
    }

    async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRecord>> {
        let mut c = self.pool.acquire().await?;
        schedules::postgres::list(&mut c, tenant).await
    }

    async fn delete_schedule(
        &self,
        tenant: &str,
        name: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let gone = schedules::postgres::delete(&mut tx, tenant, name, now, actor).await?;
        tx.commit().await?;
        Ok(gone)
    }

    async fn fire_schedule(
        &self,
        fire: &ScheduleFire,
        job: NewJob,
        period_start: Millis,
        limit: Option<u64>,
    ) -> Result<Option<Admitted>> {
        let mut tx = self.begin().await?;
        if !schedules::postgres::claim(&mut tx, &fire.tenant, &fire.name, fire.claimed, fire.next)
            .await?
        {
            return Ok(None);
        }
        let actor = Actor::system("schedule");
        let out = Self::admit_in(&mut tx, job, period_start, limit, &actor).await?;
        tx.commit().await?;
        Ok(Some(out))
    }

    async fn lease(&self, sandbox_id: &str, policy: LeasePolicy, now: Millis) -> Result<Lease> {
        let mut tx = self.begin().await?;
        let Some(sandbox) = Self::lock_sandbox(&mut tx, sandbox_id).await? else {
            return Ok(Lease::Stop);
        };
        match sandbox.state {
            // A suspended sandbox's agent is frozen: a request it sent before the freeze must not
            // make the sandbox look ready (resume sets it booting before the provider call).
            SandboxState::Suspended | SandboxState::Suspending => {
                tx.commit().await?;
                return Ok(Lease::Idle);
            }
            SandboxState::Booting => {
                sqlx::query("UPDATE sandboxes SET state = 'ready', since = $1, idle_since = $1, last_seen = $1 WHERE id = $2")
                    .bind(now)
                    .bind(sandbox_id)
                    .execute(&mut *tx)
                    .await?;
            }
            SandboxState::Busy => {
                // The agent asks for work while we think it holds some: it lost that job (it
                // restarted), so the job goes back.
                let lost = serde_json::json!({"code": "agent_lost_job", "message": "the sandbox's agent asked for new work while holding this job"});
                for job in Self::running_on(&mut tx, sandbox_id).await? {
                    Self::put_back(&mut tx, &job, &lost, now).await?;
                }
                sqlx::query("UPDATE sandboxes SET state = 'ready', since = $1, idle_since = $1, last_seen = $1 WHERE id = $2")
                    .bind(now)
                    .bind(sandbox_id)
                    .execute(&mut *tx)
                    .await?;
            }
            SandboxState::Ready => {
                sqlx::query("UPDATE sandboxes SET last_seen = $1 WHERE id = $2")
                    .bind(now)
                    .bind(sandbox_id)
                    .execute(&mut *tx)
                    .await?;
            }
            SandboxState::Stopping
            | SandboxState::Stopped
            | SandboxState::Destroying
            | SandboxState::Destroyed => {
                tx.commit().await?;
                return Ok(Lease::Stop);
            }
        }
        if policy.draining {
            tx.commit().await?;
            return Ok(Lease::Idle);
        }
        if let Some(max) = policy.max_concurrent_jobs {
            // Leases of one tenant with a concurrency limit take turns on the tenant row, so
            // two replicas cannot both see one free slot. (`NO KEY UPDATE` leaves admissions'
            // foreign-key checks on the tenant unblocked.)
            sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
                .bind(&sandbox.tenant)
                .execute(&mut *tx)
                .await?;
            let running: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND state = 'running'",
            )
            .bind(&sandbox.tenant)
            .fetch_one(&mut *tx)
            .await?;
            if running >= max as i64 {
                tx.commit().await?;
                return Ok(Lease::Idle);
            }
        }
        // Jobs another replica is leasing right now are skipped, not waited for.
        let next: Option<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE tenant = $1 AND state = 'queued' AND (run_at IS NULL OR run_at <= $2) \
             AND (next_attempt_at IS NULL OR next_attempt_at <= $2) ORDER BY priority DESC, seq \
             LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&sandbox.tenant)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(job_id) = next else {
            tx.commit().await?;
            return Ok(Lease::Idle);
        };
        let lease_id = uuid::Uuid::now_v7().to_string();
        let row = sqlx::query(sql!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, sandbox_id = $1, lease_id = $2, \
             lease_expires_at = $3, started_at = $4, next_attempt_at = NULL WHERE id = $5 AND state = 'queued' RETURNING ",
            JOB_COLS
        ))
        .bind(sandbox_id)
        .bind(&lease_id)
        .bind(now + policy.lease_ttl_ms)
        .bind(now)
        .bind(&job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(corrupt("a locked queued job changed under its lock"));
        };
        let job = job_from_row(&row)?;
        sqlx::query(
            "UPDATE sandboxes SET state = 'busy', since = $1, idle_since = NULL WHERE id = $2",
        )
        .bind(now)
        .bind(sandbox_id)
        .execute(&mut *tx)
        .await?;
        audit::postgres::record(
            &mut tx,
            &audit::job_lease(sandbox_id, &job),
            Some(&job.tenant),
        )
        .await?;
        tx.commit().await?;
        Ok(Lease::Job(Box::new(job)))
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        ttl_ms: Millis,
        now: Millis,
    ) -> Result<HeartbeatAnswer> {
        let r = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_id = $3 AND state = 'running'",
        )
        .bind(now + ttl_ms)
        .bind(job_id)
        .bind(lease_id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            // A heartbeat is a sign of life: the sandbox was running now, which is what billing
            // falls back on when a crash leaves no provider time.
            sqlx::query("UPDATE sandboxes SET last_seen = $1 WHERE id = (SELECT sandbox_id FROM jobs WHERE id = $2)")
                .bind(now)
                .bind(job_id)
                .execute(&self.pool)
                .await?;
            return Ok(HeartbeatAnswer {
                ok: true,
                cancel: false,
            });
        }
        let cancelled: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = $1 AND lease_id = $2 AND state = 'cancelled'",
        )
        .bind(job_id)
        .bind(lease_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(HeartbeatAnswer {
            ok: false,
            cancel: cancelled.is_some(),
        })
    }

    async fn complete(
        &self,
        sandbox_id: &str,
        job_id: &str,
        lease_id: &str,
        finish: Finish,
        now: Millis,
    ) -> Result<Completed> {
        let mut tx = self.begin().await?;
        // Sandbox first, then the job: the order every transaction here keeps.
        Self::lock_sandbox(&mut tx, sandbox_id).await?;
        let job = sqlx::query(sql!(
            "SELECT ",
            JOB_COLS,
            " FROM jobs WHERE id = $1 FOR UPDATE"
        ))
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(job_from_row)
        .transpose()?;
        let held = job.as_ref().is_some_and(|j| {
            j.state == JobState::Running
                && j.lease_id.as_deref() == Some(lease_id)
                && j.sandbox_id.as_deref() == Some(sandbox_id)
        });
        let out = match (job, held) {
            (Some(job), true) => {
                match finish {
                    Finish::Succeeded { result } => {
                        let h = history_with(&job, "succeeded", None, now);
                        Self::finish(
                            &mut tx,
                            job_id,
                            lease_id,
                            JobState::Succeeded,
                            Some(result),
                            None,
                            h,
                            now,
                        )
                        .await?
                    }
                    Finish::Failed { result, error } => {
                        let kind = shoal_core::retry::failure_kind(&error);
                        let (next, h) = attempt_end(&job, kind, Some(&error), now);
                        match next {
                            Some(at) => {
                                // Tried again after the backoff: back to the queue.
                                sqlx::query(
                                    "UPDATE jobs SET state = 'queued', sandbox_id = NULL, lease_id = NULL, \
                                     lease_expires_at = NULL, result = $1, error = $2, next_attempt_at = $3, \
                                     attempt_history = $4 WHERE id = $5 AND state = 'running'",
                                )
                                .bind(result.map(|r| r.to_string()))
                                .bind(error.to_string())
                                .bind(at)
                                .bind(h)
                                .bind(job_id)
                                .execute(&mut *tx)
                                .await?;
                            }
                            None => {
                                Self::finish(
                                    &mut tx,
                                    job_id,
                                    lease_id,
                                    JobState::Failed,
                                    result,
                                    Some(error),
                                    h,
                                    now,
                                )
                                .await?
                            }
                        }
                    }
                    Finish::Retry { error } => {
                        // A job handed back (its agent is stopping) has not used an attempt.
                        sqlx::query(
                            "UPDATE jobs SET state = 'queued', attempts = GREATEST(attempts - 1, 0), sandbox_id = NULL, \
                             lease_id = NULL, lease_expires_at = NULL, error = $1 WHERE id = $2 AND state = 'running'",
                        )
                        .bind(error.to_string())
                        .bind(job_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                sqlx::query("UPDATE sandboxes SET jobs_run = jobs_run + 1 WHERE id = $1")
                    .bind(sandbox_id)
                    .execute(&mut *tx)
                    .await?;
                Completed::Done(Box::new(
                    Self::job_tx(&mut tx, job_id)
                        .await?
                        .ok_or_else(|| corrupt("completed job vanished"))?,
                ))
            }
            _ => Completed::Stale,
        };
        if let Completed::Done(job) = &out {
            let e = audit::job_complete(sandbox_id, job, lease_id, now);
            audit::postgres::record(&mut tx, &e, Some(&job.tenant)).await?;
        }
        Self::settle_sandbox(&mut tx, sandbox_id, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn expire_leases(&self, now: Millis) -> Result<Vec<JobRecord>> {
        let mut tx = self.begin().await?;
        // Find the sandboxes first and lock them (in id order), then re-read their lapsed jobs
        // under the locks: a heartbeat or completion that won the race is respected.
        let sandboxes: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT DISTINCT sandbox_id FROM jobs WHERE state = 'running' AND lease_expires_at < $1 \
             ORDER BY sandbox_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for sb in sandboxes.iter().flatten() {
            Self::lock_sandbox(&mut tx, sb).await?;
        }
        let rows = sqlx::query(sql!(
            "SELECT ",
            JOB_COLS,
            " FROM jobs WHERE state = 'running' AND lease_expires_at < $1 ORDER BY id FOR UPDATE"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let lapsed = serde_json::json!({"code": "lease_expired", "message": "the agent stopped heartbeating"});
        let mut out = Vec::new();
        for row in &rows {
            let job = job_from_row(row)?;
            // A job leased onto a sandbox this pass did not lock waits for the next pass, so the
            // lock order holds.
            if job
                .sandbox_id
                .as_ref()
                .is_some_and(|sb| !sandboxes.iter().flatten().any(|s| s == sb))
            {
                continue;
            }
            let back = Self::put_back(&mut tx, &job, &lapsed, now).await?;
            if let Some(sb) = &job.sandbox_id {
                Self::settle_sandbox(&mut tx, sb, now).await?;
            }
            let e = audit::job_lapsed(&back, "job.lease_expired", now);
            audit::postgres::record(&mut tx, &e, Some(&back.tenant)).await?;
            out.push(back);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn insert_sandbox(&self, s: NewSandbox) -> Result<SandboxRecord> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(sql!(
            "INSERT INTO sandboxes (id, tenant, state, provider, token_hash, cpus_milli, memory_mb, since, created_at) \
             VALUES ($1, $2, 'booting', $3, $4, $5, $6, $7, $7) RETURNING ",
            SANDBOX_COLS
        ))
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.provider)
        .bind(&s.token_hash)
        .bind(s.cpus_milli as i64)
        .bind(s.memory_mb as i64)
        .bind(s.now)
        .fetch_one(&mut *tx)
        .await?;
        let sb = sandbox_from_row(&row)?;
        audit::postgres::record(&mut tx, &audit::sandbox_create(&sb), Some(&sb.tenant)).await?;
        tx.commit().await?;
        Ok(sb)
    }

    async fn set_provider_id(&self, id: &str, provider_id: &str) -> Result<()> {
        sqlx::query("UPDATE sandboxes SET provider_id = $1 WHERE id = $2")
            .bind(provider_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn transition(
        &self,
        id: &str,
        from: &[SandboxState],
        to: SandboxState,
        now: Millis,
    ) -> Result<bool> {
        // One statement: the state it checks is the state it changes.
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let mut tx = self.begin().await?;
        let tenant: Option<String> = sqlx::query_scalar(
            "UPDATE sandboxes SET state = $1, since = $2, idle_since = CASE WHEN $1 = 'ready' THEN $2 ELSE NULL END \
             WHERE id = $3 AND state = ANY($4) RETURNING tenant",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(id)
        .bind(&from)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(tenant) = tenant else {
            return Ok(false);
        };
        let e = audit::sandbox_state(id, &tenant, to, 0, now);
        audit::postgres::record(&mut tx, &e, Some(&tenant)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn sandbox_down(
        &self,
        id: &str,
        to: SandboxState,
        now: Millis,
    ) -> Result<Vec<JobRecord>> {
        let mut tx = self.begin().await?;
        Self::lock_sandbox(&mut tx, id).await?;
        let lost = serde_json::json!({"code": "sandbox_lost", "message": format!("sandbox {id} went {to} while running the job")});
        let mut back = Vec::new();
        for job in Self::running_on(&mut tx, id).await? {
            let job = Self::put_back(&mut tx, &job, &lost, now).await?;
            let e = audit::job_lapsed(&job, "job.sandbox_lost", now);
            audit::postgres::record(&mut tx, &e, Some(&job.tenant)).await?;
            back.push(job);
        }
        let tenant: Option<String> = sqlx::query_scalar(
            "UPDATE sandboxes SET state = $1, since = $2, idle_since = NULL WHERE id = $3 AND state != 'destroyed' \
             RETURNING tenant",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(tenant) = tenant {
            let e = audit::sandbox_state(id, &tenant, to, back.len(), now);
            audit::postgres::record(&mut tx, &e, Some(&tenant)).await?;
        }
        tx.commit().await?;
        Ok(back)
    }

    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        let row = sqlx::query(sql!(
            "SELECT ",
            SANDBOX_COLS,
            " FROM sandboxes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(sandbox_from_row).transpose()
    }

    async fn sandbox_by_token(&self, token_hash: &str) -> Result<Option<SandboxRecord>> {
        let row = sqlx::query(sql!(
            "SELECT ",
            SANDBOX_COLS,
            " FROM sandboxes WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(sandbox_from_row).transpose()
    }

    async fn sandboxes(&self, tenant: Option<&str>) -> Result<Vec<SandboxRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT ",
            SANDBOX_COLS,
            " FROM sandboxes WHERE state != 'destroyed' AND ($1::text IS NULL OR tenant = $1) \
             ORDER BY tenant, created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sandbox_from_row).collect()
    }

    async fn append_ledger(&self, e: &LedgerEntry) -> Result<()> {
        let mut tx = self.begin().await?;
        crate::usage::postgres::record(&mut tx, e, &Default::default(), e.at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ledger(&self, tenant: Option<&str>) -> Result<Vec<LedgerEntry>> {
        let rows = sqlx::query(
            "SELECT sandbox_id, tenant, at, kind, cpus_milli, memory_mb, note FROM ledger \
             WHERE ($1::text IS NULL OR tenant = $1) ORDER BY seq",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let kind = match kind.as_str() {
                    "running" => LedgerKind::Running {
                        cpus_milli: row.try_get::<Option<i64>, _>("cpus_milli")?.unwrap_or(0)
                            as u64,
                        memory_mb: row.try_get::<Option<i64>, _>("memory_mb")?.unwrap_or(0) as u64,
                    },
                    "stopped" => LedgerKind::Stopped,
                    other => return Err(corrupt(format!("ledger kind {other}"))),
                };
                Ok(LedgerEntry {
                    sandbox_id: row.try_get("sandbox_id")?,
                    tenant: row.try_get("tenant")?,
                    at: row.try_get("at")?,
                    kind,
                    note: json_col(row, "note")?,
                })
            })
            .collect()
    }

    async fn finished_jobs(
        &self,
        tenant: Option<&str>,
        from: Millis,
        to: Millis,
    ) -> Result<Vec<Finished>> {
        let rows = sqlx::query(
            "SELECT finished_at, state FROM jobs WHERE ($1::text IS NULL OR tenant = $1) \
             AND finished_at >= $2 AND finished_at < $3",
        )
        .bind(tenant)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Finished {
                    at: r.try_get("finished_at")?,
                    state: JobState::from_str(r.try_get("state")?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn record_event(
        &self,
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
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn events(&self, tenant: Option<&str>, limit: u32) -> Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT seq, tenant, at, kind, detail FROM events WHERE ($1::text IS NULL OR tenant = $1) \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(tenant)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRecord {
                    seq: r.try_get("seq")?,
                    tenant: r.try_get("tenant")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    detail: json_col(r, "detail")?.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn append_log(
        &self,
        sandbox_id: &str,
        job_id: &str,
        lease_id: &str,
        offset: u64,
        data: &[u8],
        max_bytes: u64,
    ) -> Result<LogAppend> {
        let mut tx = self.begin().await?;
        // The job's row, locked: appends to one job take turns, and a completion (which locks the
        // row to end the job) waits for an append in flight, so nothing is added after the end.
        let held: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = $1 AND state = 'running' AND lease_id = $2 AND sandbox_id = $3 \
             FOR NO KEY UPDATE",
        )
        .bind(job_id)
        .bind(lease_id)
        .bind(sandbox_id)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Ok(LogAppend::Stale);
        }
        let head = sqlx::query(
            "SELECT start_offset, end_offset, lease_id, lease_pos FROM job_log_heads WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(log_head_from_row)
        .transpose()?;
        let Some(w) = joblog::plan_append(head.as_ref(), lease_id, offset, data, max_bytes) else {
            tx.commit().await?;
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
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM job_logs WHERE job_id = $1 AND start_offset < $2 AND start_offset + octet_length(data) <= $2",
        )
        .bind(job_id)
        .bind(start)
        .execute(&mut *tx)
        .await?;
        // The one chunk the limit cuts through keeps its tail.
        sqlx::query(
            "UPDATE job_logs SET data = substring(data from ($2 - start_offset + 1)::int), start_offset = $2 \
             WHERE job_id = $1 AND start_offset < $2",
        )
        .bind(job_id)
        .bind(start)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO job_log_heads (job_id, start_offset, end_offset, lease_id, lease_pos) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (job_id) DO UPDATE SET start_offset = $2, end_offset = $3, lease_id = $4, lease_pos = $5",
        )
        .bind(job_id)
        .bind(start)
        .bind(w.head.end as i64)
        .bind(&w.head.lease_id)
        .bind(w.head.lease_pos as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(LogAppend::Stored {
            start: w.head.start,
            end: w.head.end,
        })
    }

    async fn job_log(&self, job_id: &str, from: u64, limit: usize) -> Result<LogSlice> {
        let head: Option<(i64, i64)> =
            sqlx::query_as("SELECT start_offset, end_offset FROM job_log_heads WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        log_slice_from_rows(&rows, head.unwrap_or_default(), from, limit)
    }
}

impl PostgresStore {
    /// Admits a job in the caller's transaction (see [`Store::admit`]). A racing idempotency key
    /// comes back as the database's `jobs_idempotency` constraint error.
    async fn admit_in(
        tx: &mut PgConnection,
        job: NewJob,
        period_start: Millis,
        limit: Option<u64>,
        actor: &Actor,
    ) -> Result<Admitted> {
        // Take the tenant's turn first: the quota row of this month, made on first use.
        sqlx::query(
            "INSERT INTO tenant_periods (tenant, period_start, jobs) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
        )
        .bind(&job.tenant)
        .bind(period_start)
        .execute(&mut *tx)
        .await?;
        let used: i64 = sqlx::query_scalar(
            "SELECT jobs FROM tenant_periods WHERE tenant = $1 AND period_start = $2 FOR UPDATE",
        )
        .bind(&job.tenant)
        .bind(period_start)
        .fetch_one(&mut *tx)
        .await?;
        // With the turn held, a job admitted under this key by another replica is visible.
        if let Some(key) = &job.idempotency_key {
            let row = sqlx::query(sql!(
                "SELECT ",
                JOB_COLS,
                " FROM jobs WHERE tenant = $1 AND idempotency_key = $2"
            ))
            .bind(&job.tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                return Ok(Admitted::Existing(job_from_row(&row)?));
            }
        }
        if let Some(limit) = limit
            && used as u64 >= limit
        {
            // No admission reached the quota this period (it was lowered): the refusal says so.
            outbox::postgres::quota_signals(
                &mut *tx,
                &job.tenant,
                used as u64,
                limit,
                period_start,
                job.created_at,
            )
            .await?;
            return Ok(Admitted::QuotaExceeded {
                used: used as u64,
                limit,
            });
        }
        let row = sqlx::query(sql!(
            "INSERT INTO jobs (id, tenant, kind, spec, idempotency_key, priority, max_attempts, timeout_s, state, created_at, \
             run_at, retry, schedule) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $11, $12) RETURNING ",
            JOB_COLS
        ))
        .bind(&job.id)
        .bind(&job.tenant)
        .bind(&job.kind)
        .bind(job.spec.to_string())
        .bind(&job.idempotency_key)
        .bind(job.priority)
        .bind(job.max_attempts as i64)
        .bind(job.timeout_s as i64)
        .bind(job.created_at)
        .bind(job.run_at)
        .bind(retry_col(&job.retry))
        .bind(&job.schedule)
        .fetch_one(&mut *tx)
        .await?;
        let stored = job_from_row(&row)?;
        sqlx::query(
            "UPDATE tenant_periods SET jobs = jobs + 1 WHERE tenant = $1 AND period_start = $2",
        )
        .bind(&job.tenant)
        .bind(period_start)
        .execute(&mut *tx)
        .await?;
        let period_jobs = used as u64 + 1;
        let signals = match limit {
            Some(q) => {
                outbox::postgres::quota_signals(
                    &mut *tx,
                    &job.tenant,
                    period_jobs,
                    q,
                    period_start,
                    job.created_at,
                )
                .await?
            }
            None => Vec::new(),
        };
        audit::postgres::record(
            &mut *tx,
            &audit::job_enqueue(actor, &stored),
            Some(&job.tenant),
        )
        .await?;
        Ok(Admitted::Created {
            job: stored,
            period_jobs,
            signals,
        })
    }

    /// Records a terminal outcome of the job whose lease the caller checked under its lock.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        tx: &mut PgConnection,
        job_id: &str,
        lease_id: &str,
        state: JobState,
        result: Option<serde_json::Value>,
        error: Option<serde_json::Value>,
        history: String,
        now: Millis,
    ) -> Result<()> {
        let done = sqlx::query(sql!(
            "UPDATE jobs SET state = $1, result = $2, error = $3, finished_at = $4, lease_id = NULL, \
             lease_expires_at = NULL, attempt_history = $6 WHERE id = $5 AND state = 'running' RETURNING ",
            JOB_COLS
        ))
        .bind(state.as_str())
        .bind(result.map(|r| r.to_string()))
        .bind(error.map(|e| e.to_string()))
        .bind(now)
        .bind(job_id)
        .bind(history)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO job_completions (job_id, lease_id, state, at) VALUES ($1, $2, $3, $4)",
        )
        .bind(job_id)
        .bind(lease_id)
        .bind(state.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(row) = done {
            outbox::postgres::job_event(tx, &job_from_row(&row)?, now).await?;
        }
        Ok(())
    }
}

/// Queued and running jobs per tenant, with the queued ones not yet due at `$1`.
const QUEUE_COUNTS: &str = "SELECT tenant, \
     SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END) AS queued, \
     SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS running, \
     SUM(CASE WHEN state = 'queued' AND (run_at > $1 OR next_attempt_at > $1) THEN 1 ELSE 0 END) AS waiting, \
     MIN(CASE WHEN state = 'queued' AND (run_at > $1 OR next_attempt_at > $1) \
         THEN GREATEST(COALESCE(run_at, 0), COALESCE(next_attempt_at, 0)) END) AS next_due \
     FROM jobs WHERE state IN ('queued', 'running') GROUP BY tenant ORDER BY tenant";

/// The earliest time after `$2` a queued job of tenant `$1` falls due.
const NEXT_DUE: &str = "SELECT MIN(GREATEST(COALESCE(run_at, 0), COALESCE(next_attempt_at, 0))) FROM jobs \
     WHERE tenant = $1 AND state = 'queued' AND (run_at > $2 OR next_attempt_at > $2)";

crate::outbox::impl_outbox!(PostgresStore, postgres, begin);
crate::usage::impl_metering!(PostgresStore, postgres, begin);
crate::audit::impl_audit!(PostgresStore, postgres, begin);
crate::retention::impl_retention!(PostgresStore, postgres, begin);
