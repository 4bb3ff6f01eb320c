//! Jobs: admission (with its idempotency key and monthly quota), the reads of the jobs list and
//! the queue, and cancellation. One text for both databases (`$N` placeholders mean the same on
//! SQLite and Postgres); the locks come from [`super::dialect`].

use crate::rows::{JOB_COLS, JOB_LIST_COLS, PageBuilder, job_from_row, retry_col};
use crate::{Admitted, JobFilter, JobPage, JobRecord, NewJob, QueueCounts, Result};
use shoal_core::Millis;
use shoal_core::audit::Actor;

/// The filter of the jobs list; `$4` is the limit.
const LIST_WHERE: &str = " FROM jobs WHERE (CAST($1 AS TEXT) IS NULL OR tenant = $1) \
     AND (CAST($2 AS TEXT) IS NULL OR state = $2) AND (CAST($3 AS BIGINT) IS NULL OR seq < $3) \
     ORDER BY seq DESC LIMIT $4";

macro_rules! for_backend {
    ($db:ty, $backend:ident) => {
        use super::*;
        use crate::rows::sql;
        use crate::sql::dialect::$backend as d;

        type Conn = <$db as sqlx::Database>::Connection;

        /// The one job `query` finds by `keys` (bound in order).
        async fn find(
            conn: &mut Conn,
            query: sqlx::AssertSqlSafe<&'static str>,
            keys: &[&str],
        ) -> Result<Option<JobRecord>> {
            let mut q = sqlx::query(query);
            for key in keys {
                q = q.bind(*key);
            }
            let row = q.fetch_optional(&mut *conn).await?;
            row.as_ref().map(job_from_row).transpose()
        }

        /// The job `id`.
        pub(crate) async fn get(conn: &mut Conn, id: &str) -> Result<Option<JobRecord>> {
            find(conn, sql!("SELECT ", JOB_COLS, " FROM jobs WHERE id = $1"), &[id]).await
        }

        /// The tenant's job admitted under idempotency key `key`.
        pub(crate) async fn by_key(
            conn: &mut Conn,
            tenant: &str,
            key: &str,
        ) -> Result<Option<JobRecord>> {
            let q = sql!("SELECT ", JOB_COLS, " FROM jobs WHERE tenant = $1 AND idempotency_key = $2");
            find(conn, q, &[tenant, key]).await
        }

        /// Admits a job in the caller's transaction (see [`crate::Store::admit`]): a group of
        /// one (see [`admit_group`]).
        pub(crate) async fn admit_in(
            conn: &mut Conn,
            job: &NewJob,
            period_start: Millis,
            limit: Option<u64>,
            actor: &Actor,
        ) -> Result<Admitted> {
            let mut out = admit_group(conn, &[(job, limit)], period_start, actor).await?;
            out.pop().ok_or_else(|| crate::rows::corrupt("an admission without its answer"))
        }

        /// Admits jobs of **one tenant**, in order, in the caller's transaction. The tenant's
        /// quota row of the month (made on first use) is its turn: held, two admissions of one
        /// tenant cannot overrun the quota or make two jobs of one key. The row is taken and
        /// read once for the group, and the group's count added to it once at the end; each
        /// job is checked against the count so far, so the group admits exactly up to its
        /// quota, as the same jobs one at a time would. A key taken by a racing transaction
        /// comes back as the database's `jobs_idempotency` constraint error.
        pub(crate) async fn admit_group(
            conn: &mut Conn,
            jobs: &[(&NewJob, Option<u64>)],
            period_start: Millis,
            actor: &Actor,
        ) -> Result<Vec<Admitted>> {
            let Some((first, _)) = jobs.first() else {
                return Ok(Vec::new());
            };
            let tenant = first.tenant.as_str();
            sqlx::query(
                "INSERT INTO tenant_periods (tenant, period_start, jobs) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(period_start)
            .execute(&mut *conn)
            .await?;
            let used: i64 = sqlx::query_scalar(sql!(
                "SELECT jobs FROM tenant_periods WHERE tenant = $1 AND period_start = $2",
                d::FOR_UPDATE
            ))
            .bind(tenant)
            .bind(period_start)
            .fetch_one(&mut *conn)
            .await?;
            let start = used.max(0) as u64;
            let mut used = start;
            let mut out = Vec::with_capacity(jobs.len());
            for &(job, limit) in jobs {
                debug_assert_eq!(job.tenant, tenant, "a group is one tenant's");
                out.push(admit_one(conn, job, period_start, limit, actor, &mut used).await?);
            }
            if used > start {
                sqlx::query(
                    "UPDATE tenant_periods SET jobs = jobs + $3 WHERE tenant = $1 AND period_start = $2",
                )
                .bind(tenant)
                .bind(period_start)
                .bind((used - start) as i64)
                .execute(&mut *conn)
                .await?;
            }
            Ok(out)
        }

        /// One job of [`admit_group`], with the tenant's turn held and `used` jobs admitted
        /// this period so far (counted up when it is admitted).
        async fn admit_one(
            conn: &mut Conn,
            job: &NewJob,
            period_start: Millis,
            limit: Option<u64>,
            actor: &Actor,
            used: &mut u64,
        ) -> Result<Admitted> {
            // With the turn held, a job admitted under this key elsewhere is visible.
            if let Some(key) = &job.idempotency_key
                && let Some(first) = by_key(conn, &job.tenant, key).await?
            {
                return Ok(Admitted::Existing(first));
            }
            if let Some(limit) = limit
                && *used >= limit
            {
                // No admission reached the quota this period (it was lowered): the refusal says so.
                crate::outbox::$backend::quota_signals(
                    conn,
                    &job.tenant,
                    *used,
                    limit,
                    period_start,
                    job.created_at,
                )
                .await?;
                return Ok(Admitted::QuotaExceeded { used: *used, limit });
            }
            let row = sqlx::query(sql!(
                "INSERT INTO jobs (id, tenant, kind, spec, idempotency_key, priority, max_attempts, \
                 timeout_s, state, created_at, run_at, retry, schedule",
                d::JOB_SEQ_COL,
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', $9, $10, $11, $12",
                d::JOB_SEQ_VALUE,
                ") RETURNING ",
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
            .fetch_one(&mut *conn)
            .await?;
            let stored = job_from_row(&row)?;
            *used += 1;
            let period_jobs = *used;
            let signals = match limit {
                Some(q) => {
                    crate::outbox::$backend::quota_signals(
                        conn,
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
            let e = crate::audit::job_enqueue(actor, &stored);
            crate::audit::$backend::record(conn, &e, Some(&job.tenant)).await?;
            Ok(Admitted::Created {
                job: stored,
                period_jobs,
                signals,
            })
        }

        /// Jobs the tenant had admitted in the period starting at `period_start`.
        pub(crate) async fn period_jobs(
            conn: &mut Conn,
            tenant: &str,
            period_start: Millis,
        ) -> Result<u64> {
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT jobs FROM tenant_periods WHERE tenant = $1 AND period_start = $2",
            )
            .bind(tenant)
            .bind(period_start)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(n.unwrap_or(0).max(0) as u64)
        }

        /// The jobs list, with specs.
        pub(crate) async fn list(conn: &mut Conn, f: &JobFilter) -> Result<Vec<JobRecord>> {
            let rows = sqlx::query(sql!("SELECT ", JOB_COLS, LIST_WHERE))
                .bind(&f.tenant)
                .bind(f.state.map(|s| s.as_str()))
                .bind(f.before_seq)
                .bind(i64::from(f.limit))
                .fetch_all(&mut *conn)
                .await?;
            rows.iter().map(job_from_row).collect()
        }

        /// A page of the jobs list (see [`crate::Store::job_page`]), its rows read one at a time.
        pub(crate) async fn page(conn: &mut Conn, f: &JobFilter, max_bytes: u64) -> Result<JobPage> {
            use futures::TryStreamExt;
            let mut rows = sqlx::query(sql!("SELECT ", JOB_LIST_COLS, LIST_WHERE))
                .bind(&f.tenant)
                .bind(f.state.map(|s| s.as_str()))
                .bind(f.before_seq)
                .bind(i64::from(f.limit) + 1)
                .fetch(&mut *conn);
            let mut page = PageBuilder::new(f.limit, max_bytes);
            while let Some(row) = rows.try_next().await? {
                if !page.push(&row)? {
                    break;
                }
            }
            Ok(page.finish())
        }

        /// Cancels a queued or running job in the caller's transaction; `None` when it was in
        /// neither state. One statement: on Postgres it waits for a lease or completion holding
        /// the row, then re-checks the state. A running job keeps its lease id so the agent's
        /// next heartbeat learns of the cancel.
        pub(crate) async fn cancel(
            conn: &mut Conn,
            id: &str,
            now: Millis,
            actor: &Actor,
        ) -> Result<Option<JobRecord>> {
            let row = sqlx::query(sql!(
                "UPDATE jobs SET state = 'cancelled', finished_at = $1 WHERE id = $2 \
                 AND state IN ('queued', 'running') RETURNING ",
                JOB_COLS
            ))
            .bind(now)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let job = job_from_row(&row)?;
            crate::outbox::$backend::job_event(conn, &job, now).await?;
            let e = crate::audit::job_cancel(actor, &job, now);
            crate::audit::$backend::record(conn, &e, Some(&job.tenant)).await?;
            Ok(Some(job))
        }

        /// Queued and running jobs per tenant, with the queued ones not yet due at `now`. The
        /// counts are `tenant_queue`'s (kept by triggers with every change of a job's state,
        /// migration 0090); of `jobs`, only the delayed ones are read (index `jobs_delayed`),
        /// so the read does not grow with the backlog.
        pub(crate) async fn queue_counts(
            conn: &mut Conn,
            now: Millis,
        ) -> Result<Vec<(String, QueueCounts)>> {
            let rows = sqlx::query(queue_counts_sql()).bind(now).fetch_all(&mut *conn).await?;
            crate::rows::queue_counts_from_rows(&rows)
        }

        /// The statement of [`queue_counts`]; `$1` is now.
        pub(crate) fn queue_counts_sql() -> sqlx::AssertSqlSafe<&'static str> {
            sql!(
                "SELECT q.tenant AS tenant, q.queued AS queued, q.running AS running, \
                 COALESCE(d.waiting, 0) AS waiting, d.next_due AS next_due \
                 FROM tenant_queue q LEFT JOIN (SELECT tenant, COUNT(*) AS waiting, MIN(",
                d::GREATEST,
                "(COALESCE(run_at, 0), COALESCE(next_attempt_at, 0))) AS next_due FROM ",
                d::DELAYED_JOBS,
                " WHERE state = 'queued' AND (run_at IS NOT NULL OR next_attempt_at IS NOT NULL) \
                 AND (run_at > $1 OR next_attempt_at > $1) GROUP BY tenant) d ON d.tenant = q.tenant \
                 WHERE q.queued > 0 OR q.running > 0 ORDER BY q.tenant"
            )
        }

        /// The earliest time after `now` a queued job of `tenant` falls due.
        pub(crate) async fn next_due(
            conn: &mut Conn,
            tenant: &str,
            now: Millis,
        ) -> Result<Option<Millis>> {
            Ok(sqlx::query_scalar(sql!(
                "SELECT MIN(",
                d::GREATEST,
                "(COALESCE(run_at, 0), COALESCE(next_attempt_at, 0))) FROM jobs \
                 WHERE tenant = $1 AND state = 'queued' AND (run_at > $2 OR next_attempt_at > $2)"
            ))
            .bind(tenant)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?)
        }
    };
}

pub(crate) mod sqlite {
    for_backend!(sqlx::Sqlite, sqlite);
}

pub(crate) mod postgres {
    for_backend!(sqlx::Postgres, postgres);
}

#[cfg(test)]
mod tests {
    //! The snapshot's counts do not read the backlog: a tenant with thousands of queued jobs
    //! costs the read one row of `tenant_queue`; of `jobs`, only the delayed ones are read. And
    //! the counts the triggers keep are the ones counting `jobs` gives, through every change of
    //! state.
    use crate::{LeasePolicy, NewJob, NewSandbox, Store};
    use shoal_core::audit::Actor;
    use shoal_core::{LimitsPatch, PlanTier, RetryPolicy};
    use std::sync::Arc;

    /// The backlog: immediate jobs of tenant `a`.
    const BACKLOG: usize = 2000;

    /// The counts as the old statement gave them: a `GROUP BY` over `jobs`.
    const COUNTED: &str = "SELECT tenant, \
         SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), \
         SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END) \
         FROM jobs WHERE state IN ('queued', 'running') GROUP BY tenant ORDER BY tenant";

    fn job(id: String, tenant: &str, run_at: Option<i64>) -> NewJob {
        NewJob {
            id,
            tenant: tenant.into(),
            kind: "agent".into(),
            spec: serde_json::json!({"command": ["true"]}).into(),
            idempotency_key: None,
            priority: 0,
            max_attempts: 1,
            timeout_s: 60,
            created_at: 1,
            run_at,
            retry: RetryPolicy::default(),
            schedule: None,
        }
    }

    /// A backlog for `a`, three delayed jobs for `b`, and every change of state (lease,
    /// completion, cancel of a queued and of a running job); the counts after each step match
    /// the `GROUP BY`.
    async fn fill(store: &Arc<dyn Store>) -> Vec<(String, (u64, u64))> {
        let admin = Actor::admin();
        for t in ["a", "b"] {
            let none = LimitsPatch::default();
            store
                .put_tenant(t, PlanTier::Enterprise, &none, 0, &admin)
                .await
                .unwrap();
        }
        let batch = (0..BACKLOG)
            .map(|i| (job(format!("a{i}"), "a", None), None))
            .collect();
        store.admit_batch(batch, 0, &admin).await.unwrap();
        for i in 0..3 {
            let j = job(format!("b{i}"), "b", Some(1_000_000));
            store.admit(j, 0, None, &admin).await.unwrap();
        }
        for (id, tenant) in [("s1", "a"), ("s2", "a")] {
            let sb = NewSandbox {
                id: id.into(),
                tenant: tenant.into(),
                provider: "process".into(),
                token_hash: format!("h{id}"),
                cpus_milli: 1000,
                memory_mb: 256,
                now: 1,
            };
            store.insert_sandbox(sb).await.unwrap();
        }
        let policy = LeasePolicy {
            max_concurrent_jobs: None,
            draining: false,
            lease_ttl_ms: 60_000,
        };
        let crate::Lease::Job(first) = store.lease("s1", policy, 2).await.unwrap() else {
            panic!("a queued job to lease");
        };
        let crate::Lease::Job(second) = store.lease("s2", policy, 2).await.unwrap() else {
            panic!("a queued job to lease");
        };
        let done = crate::Finish::Succeeded {
            result: serde_json::json!(null).into(),
        };
        let lease = first.lease_id.clone().unwrap();
        store
            .complete("s1", &first.id, &lease, done, 3)
            .await
            .unwrap();
        store.cancel(&second.id, 4, &admin).await.unwrap();
        store.cancel("a100", 4, &admin).await.unwrap();
        // One running job left to count.
        store.lease("s1", policy, 5).await.unwrap();
        let counts = store.queue_counts(10).await.unwrap();
        counts
            .into_iter()
            .map(|(t, c)| {
                assert_eq!(c.waiting, if t == "b" { 3 } else { 0 });
                (t, (c.queued, c.running))
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_counts_read_no_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("q.db").display());
        let store = crate::open(&url).await.unwrap();
        let counts = fill(&store).await;
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let counted: Vec<(String, i64, i64)> =
            sqlx::query_as(COUNTED).fetch_all(&pool).await.unwrap();
        let counted: Vec<_> = counted
            .into_iter()
            .map(|(t, q, r)| (t, (q as u64, r as u64)))
            .collect();
        assert_eq!(counts, counted);
        assert_eq!(counts[0], ("a".to_string(), (BACKLOG as u64 - 4, 1)));
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            super::sqlite::queue_counts_sql().0
        )))
        .bind(10_i64)
        .fetch_all(&pool)
        .await
        .unwrap();
        let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            steps.iter().any(|s| s.contains("jobs_delayed")),
            "the delayed jobs are read by their index: {steps:?}"
        );
        assert!(
            steps
                .iter()
                .filter(|s| s.contains(" jobs "))
                .all(|s| s.contains("INDEX jobs_delayed")),
            "jobs is read only through its partial index of delayed jobs (which holds none of \
             the backlog), never as a table: {steps:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_counts_read_no_backlog() {
        let Some(pg) = shoal_testkit::services::Postgres::start().unwrap() else {
            return;
        };
        let url = pg.create_database().unwrap();
        let store = crate::open(&url).await.unwrap();
        let counts = fill(&store).await;
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let counted: Vec<(String, i64, i64)> =
            sqlx::query_as(COUNTED).fetch_all(&pool).await.unwrap();
        let counted: Vec<_> = counted
            .into_iter()
            .map(|(t, q, r)| (t, (q as u64, r as u64)))
            .collect();
        assert_eq!(counts, counted);
        sqlx::query("ANALYZE jobs").execute(&pool).await.unwrap();
        let plan: (serde_json::Value,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) {}",
            super::postgres::queue_counts_sql().0
        )))
        .bind(10_i64)
        .fetch_one(&pool)
        .await
        .unwrap();
        // Rows of `jobs` the statement touched: returned by its scans, or read and dropped.
        fn jobs_rows(node: &serde_json::Value) -> f64 {
            let own = if node["Relation Name"] == "jobs" {
                [
                    "Actual Rows",
                    "Rows Removed by Filter",
                    "Rows Removed by Index Recheck",
                ]
                .iter()
                .filter_map(|k| node[*k].as_f64())
                .sum::<f64>()
                    * node["Actual Loops"].as_f64().unwrap_or(1.0)
            } else {
                0.0
            };
            let children = node["Plans"]
                .as_array()
                .map_or(0.0, |p| p.iter().map(jobs_rows).sum());
            own + children
        }
        let read = jobs_rows(&plan.0[0]["Plan"]);
        assert!(
            read <= 3.0,
            "only the 3 delayed jobs are read, not the backlog of {BACKLOG}: {read} in {}",
            plan.0
        );
    }
}
