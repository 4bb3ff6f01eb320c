//! The SQLite store: one file in the data directory, WAL mode, writes in `BEGIN IMMEDIATE`
//! transactions so concurrent writers queue on SQLite's lock instead of failing half-way.

use crate::rows::{
    JOB_COLS, JOB_LIST_COLS, KEY_COLS, PageBuilder, SANDBOX_COLS, corrupt, job_from_row, json_col,
    key_from_row, sandbox_from_row, sql, tenant_from_row,
};
use crate::rows::{attempt_end, history_with, log_head_from_row, log_slice_from_rows, retry_col};
use crate::schedules;
use crate::*;
use shoal_core::RetryOn;
use shoal_metering::LedgerKind;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// The SQLite implementation of [`Store`].
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

    async fn job_tx(tx: &mut Tx, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(sql!("SELECT ", JOB_COLS, " FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Puts a running job back in the queue (after its retry policy's backoff), or makes it dead
    /// when its policy does not retry a lost attempt or its attempts are spent.
    async fn put_back(
        tx: &mut Tx,
        job: &JobRecord,
        error: &serde_json::Value,
        now: Millis,
    ) -> Result<JobRecord> {
        let (next, history) = attempt_end(job, RetryOn::Lost, Some(error), now);
        let dead = next.is_none();
        sqlx::query(
            "UPDATE jobs SET state = ?, sandbox_id = CASE WHEN ? THEN sandbox_id ELSE NULL END, lease_id = NULL, \
             lease_expires_at = NULL, error = ?, finished_at = CASE WHEN ? THEN ? ELSE NULL END, \
             next_attempt_at = ?, attempt_history = ? WHERE id = ? AND state = 'running'",
        )
        .bind(if dead { JobState::Dead.as_str() } else { JobState::Queued.as_str() })
        .bind(dead)
        .bind(error.to_string())
        .bind(dead)
        .bind(now)
        .bind(next.flatten())
        .bind(history)
        .bind(&job.id)
        .execute(&mut **tx)
        .await?;
        let back = Self::job_tx(tx, &job.id)
            .await?
            .unwrap_or_else(|| job.clone());
        if dead {
            outbox::sqlite::job_event(tx, &back, now).await?;
        }
        Ok(back)
    }

    /// Hands a job whose agent is stopping back to the queue at once; the attempt is not counted.
    async fn hand_back(tx: &mut Tx, job: &JobRecord, error: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), sandbox_id = NULL, lease_id = NULL, \
             lease_expires_at = NULL, error = ? WHERE id = ? AND state = 'running'",
        )
        .bind(error.to_string())
        .bind(&job.id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Admits a job in the caller's transaction (see [`Store::admit`]). On a refusal for quota
    /// the events it wrote are kept only if the caller commits.
    async fn admit_in(
        tx: &mut Tx,
        job: NewJob,
        period_start: Millis,
        limit: Option<u64>,
        actor: &Actor,
    ) -> Result<Admitted> {
        if let Some(key) = &job.idempotency_key {
            let row = sqlx::query(sql!(
                "SELECT ",
                JOB_COLS,
                " FROM jobs WHERE tenant = ? AND idempotency_key = ?"
            ))
            .bind(&job.tenant)
            .bind(key)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(row) = row {
                return Ok(Admitted::Existing(job_from_row(&row)?));
            }
        }
        let used: i64 = sqlx::query_scalar(
            "SELECT jobs FROM tenant_periods WHERE tenant = ? AND period_start = ?",
        )
        .bind(&job.tenant)
        .bind(period_start)
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or(0);
        if let Some(limit) = limit
            && used as u64 >= limit
        {
            // No admission reached the quota this period (it was lowered): the refusal says so.
            outbox::sqlite::quota_signals(
                tx,
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
        sqlx::query(
            "INSERT INTO jobs (id, tenant, kind, spec, idempotency_key, priority, max_attempts, timeout_s, state, \
             created_at, seq, run_at, retry, schedule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, ?, ?)",
        )
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
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO tenant_periods (tenant, period_start, jobs) VALUES (?, ?, 1) \
             ON CONFLICT(tenant, period_start) DO UPDATE SET jobs = jobs + 1",
        )
        .bind(&job.tenant)
        .bind(period_start)
        .execute(&mut **tx)
        .await?;
        let stored = Self::job_tx(tx, &job.id)
            .await?
            .ok_or_else(|| corrupt("inserted job vanished"))?;
        let period_jobs = used as u64 + 1;
        let signals = match limit {
            Some(q) => {
                outbox::sqlite::quota_signals(
                    tx,
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
        audit::sqlite::record(tx, &audit::job_enqueue(actor, &stored), Some(&job.tenant)).await?;
        Ok(Admitted::Created {
            job: stored,
            period_jobs,
            signals,
        })
    }

    /// A sandbox holding no running job is ready again.
    async fn settle_sandbox(tx: &mut Tx, sandbox_id: &str, now: Millis) -> Result<()> {
        sqlx::query(
            "UPDATE sandboxes SET state = 'ready', since = ?, idle_since = ? WHERE id = ? AND state = 'busy' \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE sandbox_id = ? AND state = 'running')",
        )
        .bind(now)
        .bind(now)
        .bind(sandbox_id)
        .bind(sandbox_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn running_on(tx: &mut Tx, sandbox_id: &str) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT ",
            JOB_COLS,
            " FROM jobs WHERE sandbox_id = ? AND state = 'running'"
        ))
        .bind(sandbox_id)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter().map(job_from_row).collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_tenant(
        &self,
        id: &str,
        plan: PlanTier,
        overrides: &LimitsPatch,
        now: Millis,
        actor: &Actor,
    ) -> Result<(TenantRecord, bool)> {
        let mut tx = self.write().await?;
        let existed = sqlx::query("SELECT 1 FROM tenants WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        let overrides = serde_json::to_string(overrides).map_err(corrupt)?;
        sqlx::query(
            "INSERT INTO tenants (id, plan, overrides, created_at, updated_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT(id) DO UPDATE SET plan = excluded.plan, overrides = excluded.overrides, updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(plan.as_str())
        .bind(overrides)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT * FROM tenants WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let t = tenant_from_row(&row)?;
        audit::sqlite::record(&mut tx, &audit::tenant_put(actor, &t, !existed), Some(id)).await?;
        tx.commit().await?;
        Ok((t, !existed))
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>> {
        let row = sqlx::query("SELECT * FROM tenants WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>> {
        let rows = sqlx::query("SELECT * FROM tenants ORDER BY id")
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
        let mut tx = self.write().await?;
        let done = tenants::sqlite::set_draining(&mut tx, id, draining, now, actor).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn mark_quota_warned(&self, id: &str, period_start: Millis, now: Millis) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE tenants SET quota_warned_at = ? WHERE id = ? AND (quota_warned_at IS NULL OR quota_warned_at < ?)",
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
        let mut tx = self.write().await?;
        tenants::sqlite::add_key(&mut tx, tenant, key_id, key_hash, now, actor).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn key_tenant(&self, key_hash: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT tenant FROM api_keys WHERE key_hash = ?")
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn key(&self, key_hash: &str) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(sql!(
            "SELECT ",
            KEY_COLS,
            " FROM api_keys WHERE key_hash = ?"
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
            " FROM api_keys WHERE tenant = ? ORDER BY created_at, id"
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
        let mut tx = self.write().await?;
        let done = tenants::sqlite::revoke_key(&mut tx, tenant, key_id, now, actor).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn touch_key(&self, key_id: &str, now: Millis) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
            .bind(now)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn period_jobs(&self, tenant: &str, period_start: Millis) -> Result<u64> {
        let n: Option<i64> = sqlx::query_scalar(
            "SELECT jobs FROM tenant_periods WHERE tenant = ? AND period_start = ?",
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
        let mut tx = self.write().await?;
        let out = Self::admit_in(&mut tx, job, period_start, limit, actor).await?;
        match &out {
            Admitted::Existing(_) => tx.rollback().await?,
            _ => tx.commit().await?,
        }
        Ok(out)
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>> {
        let row = sqlx::query(sql!("SELECT ", JOB_COLS, " FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn jobs(&self, f: &JobFilter) -> Result<Vec<JobRecord>> {
        let rows = sqlx::query(sql!(
            "SELECT ",
            JOB_COLS,
            " FROM jobs WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR seq < ?3) \
             ORDER BY seq DESC LIMIT ?4"
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
            " FROM jobs WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR seq < ?3) \
             ORDER BY seq DESC LIMIT ?4"
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
        let mut tx = self.write().await?;
        // A running job keeps its lease id so the agent's next heartbeat learns of the cancel.
        let r = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state IN ('queued', 'running')",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let job = Self::job_tx(&mut tx, id).await?;
        if let Some(job) = job.as_ref().filter(|_| r.rows_affected() == 1) {
            outbox::sqlite::job_event(&mut tx, job, now).await?;
            audit::sqlite::record(
                &mut tx,
                &audit::job_cancel(actor, job, now),
                Some(&job.tenant),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(job)
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
        let mut tx = self.write().await?;
        let out = schedules::sqlite::put(&mut tx, s, actor).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn schedule(&self, tenant: &str, name: &str) -> Result<Option<ScheduleRecord>> {
        let mut c = self.pool.acquire().await?;
        schedules::sqlite::get(&mut c, tenant, name).await
    }

    async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRecord>> {
        let mut c = self.pool.acquire().await?;
        schedules::sqlite::list(&mut c, tenant).await
    }

    async fn delete_schedule(
        &self,
        tenant: &str,
        name: &str,
        now: Millis,
        actor: &Actor,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let gone = schedules::sqlite::delete(&mut tx, tenant, name, now, actor).await?;
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
        let mut tx = self.write().await?;
        if !schedules::sqlite::claim(&mut tx, &fire.tenant, &fire.name, fire.claimed, fire.next)
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
        let mut tx = self.write().await?;
        let Some(row) = sqlx::query(sql!(
            "SELECT ",
            SANDBOX_COLS,
            " FROM sandboxes WHERE id = ?"
        ))
        .bind(sandbox_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Lease::Stop);
        };
        let sandbox = sandbox_from_row(&row)?;
        match sandbox.state {
            // A suspended sandbox's agent is frozen: a request it sent before the freeze must not
            // make the sandbox look ready (resume sets it booting before the provider call).
            SandboxState::Suspended | SandboxState::Suspending => {
                tx.commit().await?;
                return Ok(Lease::Idle);
            }
            SandboxState::Booting => {
                sqlx::query("UPDATE sandboxes SET state = 'ready', since = ?, idle_since = ?, last_seen = ? WHERE id = ?")
                    .bind(now)
                    .bind(now)
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
                sqlx::query("UPDATE sandboxes SET state = 'ready', since = ?, idle_since = ?, last_seen = ? WHERE id = ?")
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .bind(sandbox_id)
                    .execute(&mut *tx)
                    .await?;
            }
            SandboxState::Ready => {
                sqlx::query("UPDATE sandboxes SET last_seen = ? WHERE id = ?")
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
            let running: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE tenant = ? AND state = 'running'",
            )
            .bind(&sandbox.tenant)
            .fetch_one(&mut *tx)
            .await?;
            if running >= max as i64 {
                tx.commit().await?;
                return Ok(Lease::Idle);
            }
        }
        let next: Option<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE tenant = ?1 AND state = 'queued' AND (run_at IS NULL OR run_at <= ?2) \
             AND (next_attempt_at IS NULL OR next_attempt_at <= ?2) ORDER BY priority DESC, seq LIMIT 1",
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
        sqlx::query(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, sandbox_id = ?, lease_id = ?, \
             lease_expires_at = ?, started_at = ?, next_attempt_at = NULL WHERE id = ?",
        )
        .bind(sandbox_id)
        .bind(&lease_id)
        .bind(now + policy.lease_ttl_ms)
        .bind(now)
        .bind(&job_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sandboxes SET state = 'busy', since = ?, idle_since = NULL WHERE id = ?",
        )
        .bind(now)
        .bind(sandbox_id)
        .execute(&mut *tx)
        .await?;
        let job = Self::job_tx(&mut tx, &job_id)
            .await?
            .ok_or_else(|| corrupt("leased job vanished"))?;
        audit::sqlite::record(
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
        let r = sqlx::query("UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_id = ? AND state = 'running'")
            .bind(now + ttl_ms)
            .bind(job_id)
            .bind(lease_id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 1 {
            // A heartbeat is a sign of life: the sandbox was running now, which is what billing
            // falls back on when a crash leaves no provider time.
            sqlx::query("UPDATE sandboxes SET last_seen = ? WHERE id = (SELECT sandbox_id FROM jobs WHERE id = ?)")
                .bind(now)
                .bind(job_id)
                .execute(&self.pool)
                .await?;
            return Ok(HeartbeatAnswer {
                ok: true,
                cancel: false,
            });
        }
        let cancelled: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = ? AND lease_id = ? AND state = 'cancelled'",
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
        let mut tx = self.write().await?;
        let job = Self::job_tx(&mut tx, job_id).await?;
        let held = job.as_ref().is_some_and(|j| {
            j.state == JobState::Running
                && j.lease_id.as_deref() == Some(lease_id)
                && j.sandbox_id.as_deref() == Some(sandbox_id)
        });
        let out = match (job, held) {
            (Some(job), true) => {
                let done = match finish {
                    Finish::Succeeded { result } => {
                        let h = history_with(&job, "succeeded", None, now);
                        Some((JobState::Succeeded, Some(result), None, h))
                    }
                    Finish::Failed { result, error } => {
                        let kind = shoal_core::retry::failure_kind(&error);
                        let (next, h) = attempt_end(&job, kind, Some(&error), now);
                        match next {
                            Some(at) => {
                                // Tried again after the backoff: back to the queue.
                                sqlx::query(
                                    "UPDATE jobs SET state = 'queued', sandbox_id = NULL, lease_id = NULL, \
                                     lease_expires_at = NULL, result = ?, error = ?, next_attempt_at = ?, \
                                     attempt_history = ? WHERE id = ? AND state = 'running'",
                                )
                                .bind(result.map(|r| r.to_string()))
                                .bind(error.to_string())
                                .bind(at)
                                .bind(h)
                                .bind(job_id)
                                .execute(&mut *tx)
                                .await?;
                                None
                            }
                            None => Some((JobState::Failed, result, Some(error), h)),
                        }
                    }
                    Finish::Retry { error } => {
                        // A job handed back (its agent is stopping) has not used an attempt.
                        Self::hand_back(&mut tx, &job, &error).await?;
                        None
                    }
                };
                if let Some((state, result, error, history)) = done {
                    sqlx::query(
                        "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, lease_id = NULL, \
                         lease_expires_at = NULL, attempt_history = ? WHERE id = ? AND lease_id = ? AND state = 'running'",
                    )
                    .bind(state.as_str())
                    .bind(result.map(|r| r.to_string()))
                    .bind(error.map(|e| e.to_string()))
                    .bind(now)
                    .bind(history)
                    .bind(job_id)
                    .bind(lease_id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("INSERT INTO job_completions (job_id, lease_id, state, at) VALUES (?, ?, ?, ?)")
                        .bind(job_id)
                        .bind(lease_id)
                        .bind(state.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    let done = Self::job_tx(&mut tx, job_id)
                        .await?
                        .ok_or_else(|| corrupt("completed job vanished"))?;
                    outbox::sqlite::job_event(&mut tx, &done, now).await?;
                }
                sqlx::query("UPDATE sandboxes SET jobs_run = jobs_run + 1 WHERE id = ?")
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
            audit::sqlite::record(&mut tx, &e, Some(&job.tenant)).await?;
        }
        Self::settle_sandbox(&mut tx, sandbox_id, now).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn expire_leases(&self, now: Millis) -> Result<Vec<JobRecord>> {
        let mut tx = self.write().await?;
        let rows = sqlx::query(sql!(
            "SELECT ",
            JOB_COLS,
            " FROM jobs WHERE state = 'running' AND lease_expires_at < ?"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let lapsed = serde_json::json!({"code": "lease_expired", "message": "the agent stopped heartbeating"});
        let mut out = Vec::new();
        for row in &rows {
            let job = job_from_row(row)?;
            let back = Self::put_back(&mut tx, &job, &lapsed, now).await?;
            if let Some(sb) = &job.sandbox_id {
                Self::settle_sandbox(&mut tx, sb, now).await?;
            }
            let e = audit::job_lapsed(&back, "job.lease_expired", now);
            audit::sqlite::record(&mut tx, &e, Some(&back.tenant)).await?;
            out.push(back);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn insert_sandbox(&self, s: NewSandbox) -> Result<SandboxRecord> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO sandboxes (id, tenant, state, provider, token_hash, cpus_milli, memory_mb, since, created_at) \
             VALUES (?, ?, 'booting', ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.tenant)
        .bind(&s.provider)
        .bind(&s.token_hash)
        .bind(s.cpus_milli as i64)
        .bind(s.memory_mb as i64)
        .bind(s.now)
        .bind(s.now)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(sql!(
            "SELECT ",
            SANDBOX_COLS,
            " FROM sandboxes WHERE id = ?"
        ))
        .bind(&s.id)
        .fetch_one(&mut *tx)
        .await?;
        let sb = sandbox_from_row(&row)?;
        audit::sqlite::record(&mut tx, &audit::sandbox_create(&sb), Some(&sb.tenant)).await?;
        tx.commit().await?;
        Ok(sb)
    }

    async fn set_provider_id(&self, id: &str, provider_id: &str) -> Result<()> {
        sqlx::query("UPDATE sandboxes SET provider_id = ? WHERE id = ?")
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
        let mut tx = self.write().await?;
        let cur: Option<String> = sqlx::query_scalar("SELECT state FROM sandboxes WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(cur) = cur else { return Ok(false) };
        let cur = SandboxState::from_str(&cur).map_err(corrupt)?;
        if !from.contains(&cur) {
            return Ok(false);
        }
        sqlx::query("UPDATE sandboxes SET state = ?, since = ?, idle_since = CASE WHEN ? = 'ready' THEN ? ELSE NULL END WHERE id = ?")
            .bind(to.as_str())
            .bind(now)
            .bind(to.as_str())
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let tenant: String = sqlx::query_scalar("SELECT tenant FROM sandboxes WHERE id = ?")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let e = audit::sandbox_state(id, &tenant, to, 0, now);
        audit::sqlite::record(&mut tx, &e, Some(&tenant)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn sandbox_down(
        &self,
        id: &str,
        to: SandboxState,
        now: Millis,
    ) -> Result<Vec<JobRecord>> {
        let mut tx = self.write().await?;
        let lost = serde_json::json!({"code": "sandbox_lost", "message": format!("sandbox {id} went {to} while running the job")});
        let mut back = Vec::new();
        for job in Self::running_on(&mut tx, id).await? {
            let job = Self::put_back(&mut tx, &job, &lost, now).await?;
            let e = audit::job_lapsed(&job, "job.sandbox_lost", now);
            audit::sqlite::record(&mut tx, &e, Some(&job.tenant)).await?;
            back.push(job);
        }
        let r = sqlx::query("UPDATE sandboxes SET state = ?, since = ?, idle_since = NULL WHERE id = ? AND state != 'destroyed'")
            .bind(to.as_str())
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() == 1 {
            let tenant: String = sqlx::query_scalar("SELECT tenant FROM sandboxes WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let e = audit::sandbox_state(id, &tenant, to, back.len(), now);
            audit::sqlite::record(&mut tx, &e, Some(&tenant)).await?;
        }
        tx.commit().await?;
        Ok(back)
    }

    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>> {
        let row = sqlx::query(sql!(
            "SELECT ",
            SANDBOX_COLS,
            " FROM sandboxes WHERE id = ?"
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
            " FROM sandboxes WHERE token_hash = ?"
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
            " FROM sandboxes WHERE state != 'destroyed' AND (?1 IS NULL OR tenant = ?1) ORDER BY tenant, created_at, id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sandbox_from_row).collect()
    }

    async fn append_ledger(&self, e: &LedgerEntry) -> Result<()> {
        let mut tx = self.write().await?;
        crate::usage::sqlite::record(&mut tx, e, &Default::default(), e.at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ledger(&self, tenant: Option<&str>) -> Result<Vec<LedgerEntry>> {
        let rows =
            sqlx::query("SELECT * FROM ledger WHERE (?1 IS NULL OR tenant = ?1) ORDER BY seq")
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
            "SELECT finished_at, state FROM jobs WHERE (?1 IS NULL OR tenant = ?1) AND finished_at >= ?2 AND finished_at < ?3",
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
        sqlx::query("INSERT INTO events (tenant, at, kind, detail) VALUES (?, ?, ?, ?)")
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
            "SELECT * FROM events WHERE (?1 IS NULL OR tenant = ?1) ORDER BY seq DESC LIMIT ?2",
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
        let mut tx = self.write().await?;
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND lease_id = ? AND sandbox_id = ?",
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
            "SELECT start_offset, end_offset, lease_id, lease_pos FROM job_log_heads WHERE job_id = ?",
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
        sqlx::query("INSERT INTO job_logs (job_id, start_offset, data) VALUES (?, ?, ?)")
            .bind(job_id)
            .bind(w.at as i64)
            .bind(&*w.bytes)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM job_logs WHERE job_id = ?1 AND start_offset < ?2 AND start_offset + length(data) <= ?2",
        )
        .bind(job_id)
        .bind(start)
        .execute(&mut *tx)
        .await?;
        // The one chunk the limit cuts through keeps its tail.
        sqlx::query(
            "UPDATE job_logs SET data = substr(data, ?2 - start_offset + 1), start_offset = ?2 \
             WHERE job_id = ?1 AND start_offset < ?2",
        )
        .bind(job_id)
        .bind(start)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO job_log_heads (job_id, start_offset, end_offset, lease_id, lease_pos) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT(job_id) DO UPDATE SET start_offset = ?2, end_offset = ?3, lease_id = ?4, lease_pos = ?5",
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
            sqlx::query_as("SELECT start_offset, end_offset FROM job_log_heads WHERE job_id = ?")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?;
        let head = head.map(|(s, e)| (s as u64, e as u64));
        let from = match joblog::read_from(head, from) {
            Ok(from) => from,
            Err(nothing) => return Ok(nothing),
        };
        let rows = sqlx::query(
            "SELECT start_offset, data FROM job_logs WHERE job_id = ?1 AND start_offset >= \
             COALESCE((SELECT MAX(start_offset) FROM job_logs WHERE job_id = ?1 AND start_offset <= ?2), 0) \
             AND start_offset < ?4 ORDER BY start_offset LIMIT ?3",
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

/// Queued and running jobs per tenant, with the queued ones not yet due at `$1`.
const QUEUE_COUNTS: &str = "SELECT tenant, \
     SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END) AS queued, \
     SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS running, \
     SUM(CASE WHEN state = 'queued' AND (run_at > $1 OR next_attempt_at > $1) THEN 1 ELSE 0 END) AS waiting, \
     MIN(CASE WHEN state = 'queued' AND (run_at > $1 OR next_attempt_at > $1) \
         THEN MAX(COALESCE(run_at, 0), COALESCE(next_attempt_at, 0)) END) AS next_due \
     FROM jobs WHERE state IN ('queued', 'running') GROUP BY tenant";

/// The earliest time after `$2` a queued job of tenant `$1` falls due.
const NEXT_DUE: &str = "SELECT MIN(MAX(COALESCE(run_at, 0), COALESCE(next_attempt_at, 0))) FROM jobs \
     WHERE tenant = $1 AND state = 'queued' AND (run_at > $2 OR next_attempt_at > $2)";

crate::outbox::impl_outbox!(SqliteStore, sqlite, write);
crate::usage::impl_metering!(SqliteStore, sqlite, write);
crate::audit::impl_audit!(SqliteStore, sqlite, write);
crate::retention::impl_retention!(SqliteStore, sqlite, write);
