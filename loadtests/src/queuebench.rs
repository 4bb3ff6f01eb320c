//! Shoal against a bare apalis worker loop, side by side on the same Postgres and Redis servers
//! (`shoal-loadtests queue-bench`). The bare loop is the floor of what a queue costs: no-op jobs
//! pushed by concurrent clients into apalis (Postgres, then Redis) and taken by one worker whose
//! handler only records when it started. Shoal then runs the same shape of load end to end:
//! release `shoal serve` on the same Postgres (its store) and Redis (its shared rate limits and
//! ingress queue), no-op `true` agent jobs across several tenants through `POST /v1/jobs`, with
//! admission, quotas and rate limits, fairness between tenants, leases and completions.
//!
//! Each system is measured twice:
//! - **burst**: `jobs` jobs pushed by `clients` concurrent clients as fast as they go; jobs per
//!   second from the first push to the last job recorded done (apalis: its row `Done` / its id in
//!   the `done` set; Shoal: `succeeded` in the store), and enqueue-to-start p50/p99 over all jobs
//!   (a queue that builds up shows here);
//! - **sequential**: `sequential` jobs one after another, each pushed once the previous one
//!   started: enqueue-to-start on an idle system.
//!
//! Enqueue-to-start is push time to handler start for apalis (microsecond clock, in process), and
//! the job's `started_at - created_at` for Shoal (the store's millisecond clock), as in the spine
//! benchmark (`scheduler/benches/spine.rs`).

use anyhow::{Context, Result, bail};
use apalis_core::backend::TaskSink;
use apalis_core::backend::ext::poll_strategy::{IntervalStrategy, PollWith, Strategy};
use apalis_core::error::{BoxDynError, WorkerError};
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_postgres::{PostgresStorage, Pubsub};
use apalis_redis::RedisStorage;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shoal_testkit::server::Server;
use shoal_testkit::services::{Postgres, Redis};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The load of one run (also the `queue-bench` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchConfig {
    /// Jobs of the burst.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Concurrent clients of the burst.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Jobs of the sequential run.
    #[arg(long, default_value_t = 300)]
    pub sequential: usize,
    /// Shoal: messages pushed one at a time into the ingress queue.
    #[arg(long, default_value_t = 30)]
    pub ingress: usize,
    /// Shoal: tenants.
    #[arg(long, default_value_t = 8)]
    pub tenants: usize,
    /// Shoal: ready sandboxes per tenant.
    #[arg(long, default_value_t = 2)]
    pub sandboxes_per_tenant: u32,
    /// Shoal: jobs admitted through `POST /v1/jobs/batch` (1,000 a request, 4 clients) after
    /// the burst; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    pub batch_jobs: usize,
    /// Also run Shoal's phases with the `shoal` and `shoal-agent` binaries of this directory (a
    /// build from before a change), in the same run, on the same servers, before the current
    /// build's.
    #[arg(long)]
    pub baseline_bins: Option<std::path::PathBuf>,
    /// Leave out the bare loops (only Shoal's phases).
    #[arg(long)]
    pub shoal_only: bool,
    /// Progress on stderr.
    #[arg(skip = true)]
    pub verbose: bool,
}

/// One system's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub system: String,
    pub jobs: usize,
    pub clients: usize,
    pub seconds: f64,
    pub jobs_per_s: f64,
    /// Pushing alone: the clients' rate.
    pub enqueue_per_s: f64,
    pub burst_start_p50_ms: f64,
    pub burst_start_p99_ms: f64,
    pub sequential_start_p50_ms: f64,
    pub sequential_start_p99_ms: f64,
    /// Shoal only: a job pushed into the apalis ingress queue of an idle scheduler, from the
    /// push to its admission (`created_at`), one message at a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_admit_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress_admit_p99_ms: Option<f64>,
    /// Shoal only: jobs admitted per second through `POST /v1/jobs/batch` (first request sent
    /// to last answer), and then run end to end (first request to last finish).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_admit_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_jobs_per_s: Option<f64>,
    /// Shoal only: CPU milliseconds per job of the burst, by process (from `/proc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_cpu_ms_per_job: Option<crate::cpu::Cpu>,
    /// Shoal only: the same for the batch phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_cpu_ms_per_job: Option<crate::cpu::Cpu>,
    /// Shoal only, with `SHOAL_PG_STAT_STATEMENTS` set: the burst's statements by total time
    /// (calls per job, mean ms, total ms, the statement).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub burst_statements: Vec<crate::pgstat::Statement>,
}

impl Figures {
    /// Figures from the latencies of the burst and of the sequential run (sorted here).
    fn new(
        system: &str,
        cfg: &BenchConfig,
        seconds: f64,
        enqueue_s: f64,
        mut burst: Vec<f64>,
        mut sequential: Vec<f64>,
    ) -> Self {
        burst.sort_by(f64::total_cmp);
        sequential.sort_by(f64::total_cmp);
        Figures {
            system: system.into(),
            jobs: cfg.jobs,
            clients: cfg.clients,
            seconds,
            jobs_per_s: cfg.jobs as f64 / seconds,
            enqueue_per_s: cfg.jobs as f64 / enqueue_s,
            burst_start_p50_ms: pct(&burst, 0.5),
            burst_start_p99_ms: pct(&burst, 0.99),
            sequential_start_p50_ms: pct(&sequential, 0.5),
            sequential_start_p99_ms: pct(&sequential, 0.99),
            ingress_admit_p50_ms: None,
            ingress_admit_p99_ms: None,
            batch_admit_per_s: None,
            batch_jobs_per_s: None,
            burst_cpu_ms_per_job: None,
            batch_cpu_ms_per_job: None,
            burst_statements: Vec::new(),
        }
    }
}

/// The `p` quantile of sorted figures.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The bare loop's job: when it was pushed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    pushed_us: i64,
}

/// What the handler records.
#[derive(Clone, Default)]
struct Seen {
    /// Push-to-start of every job, in milliseconds.
    lat_ms: Arc<Mutex<Vec<f64>>>,
    started: Arc<tokio::sync::Notify>,
}

async fn handle(job: Probe, seen: Data<Seen>) -> Result<(), BoxDynError> {
    let lat = (now_us() - job.pushed_us) as f64 / 1000.0;
    seen.lat_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(lat);
    seen.started.notify_one();
    Ok(())
}

/// One apalis backend: a sink to push into and a count of jobs done.
#[derive(Clone)]
enum Bare {
    Postgres {
        pool: PgPool,
        storage: PostgresStorage<Probe>,
    },
    Redis {
        url: String,
        storage: RedisStorage<Probe>,
        config: apalis_redis::Config,
    },
}

impl Bare {
    fn name(&self) -> &'static str {
        match self {
            Bare::Postgres { .. } => "bare apalis-postgres",
            Bare::Redis { .. } => "bare apalis-redis",
        }
    }

    async fn push(&self) -> Result<()> {
        let job = Probe {
            pushed_us: now_us(),
        };
        match self {
            Bare::Postgres { storage, .. } => storage.clone().push(job).await?,
            Bare::Redis { storage, .. } => storage.clone().push(job).await?,
        }
        Ok(())
    }

    /// Whether the backend holds no job that is not done. Cheap while a backlog remains (the
    /// poll must not load the server it measures): Postgres stops at the first row not `Done`,
    /// Redis compares the `done` set's size (O(1)) with `total`.
    async fn all_done(&self, total: usize) -> Result<bool> {
        Ok(match self {
            Bare::Postgres { pool, .. } => !sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM apalis.jobs WHERE job_type = 'bench' AND status <> 'Done')",
            )
            .fetch_one(pool)
            .await?,
            Bare::Redis { url, config, .. } => {
                let mut conn = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                let n: usize = redis::cmd("SCARD")
                    .arg(config.done_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                n >= total
            }
        })
    }

    /// Runs the worker until `stop` fires.
    fn spawn_worker(
        &self,
        seen: Seen,
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let signal = async move {
            let _ = stop.await;
            Ok::<(), WorkerError>(())
        };
        match self {
            Bare::Postgres { pool, storage } => {
                // LISTEN/NOTIFY wakes the worker on a push, and it polls every millisecond
                // besides: alone, the notification is sometimes missed and the worker sleeps to
                // its next heartbeat (30 s by default).
                let strategy = Strategy::new()
                    .stream(Pubsub::new(pool.clone(), "bench".into()))
                    .interval(Duration::from_millis(1));
                let worker = WorkerBuilder::new("bench-pg")
                    .backend(PollWith::new(storage.clone(), strategy))
                    .data(seen)
                    .build(handle);
                tokio::spawn(async move {
                    if let Err(e) = worker.run_until(signal).await {
                        eprintln!("apalis-postgres worker: {e}");
                    }
                })
            }
            Bare::Redis { storage, .. } => {
                // apalis-redis has no push notification: poll every millisecond when idle.
                let backend = PollWith::new(
                    storage.clone(),
                    IntervalStrategy::new(Duration::from_millis(1)),
                );
                let worker = WorkerBuilder::new("bench-redis")
                    .backend(backend)
                    .data(seen)
                    .build(handle);
                tokio::spawn(async move {
                    if let Err(e) = worker.run_until(signal).await {
                        eprintln!("apalis-redis worker: {e}");
                    }
                })
            }
        }
    }
}

async fn bench_bare(bare: Bare, cfg: &BenchConfig) -> Result<Figures> {
    let seen = Seen::default();
    let (stop_tx, stop) = tokio::sync::oneshot::channel();
    let worker = bare.spawn_worker(seen.clone(), stop);

    // Sequential: each job pushed once the previous one started.
    for _ in 0..cfg.sequential {
        let started = seen.started.notified();
        bare.push().await?;
        tokio::time::timeout(Duration::from_secs(30), started)
            .await
            .context("a job did not start within 30 s")?;
    }
    let sequential = std::mem::take(&mut *seen.lat_ms.lock().unwrap_or_else(|e| e.into_inner()));

    // Burst.
    let t0 = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..cfg.clients {
        let bare = bare.clone();
        let n = cfg.jobs / cfg.clients + usize::from(c < cfg.jobs % cfg.clients);
        clients.spawn(async move {
            for _ in 0..n {
                bare.push().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = clients.join_next().await {
        r??;
    }
    let enqueue = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    // Every job started (counted in memory), then every one recorded done.
    let started = |seen: &Seen| seen.lat_ms.lock().unwrap_or_else(|e| e.into_inner()).len();
    while started(&seen) < cfg.jobs || !bare.all_done(cfg.sequential + cfg.jobs).await? {
        if Instant::now() > deadline {
            bail!("{}: jobs not done within 600 s", bare.name());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    let burst = std::mem::take(&mut *seen.lat_ms.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Figures::new(
        bare.name(),
        cfg,
        seconds,
        enqueue,
        burst,
        sequential,
    ))
}

/// Enqueues a no-op `true` agent job for `tenant` over HTTP; the job's id.
pub async fn enqueue_noop(s: &Server, tenant: &str) -> Result<String> {
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": tenant, "kind": "agent", "spec": {"command": ["true"]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    v["id"].as_str().map(str::to_string).context("no job id")
}

async fn bench_shoal(
    pg: &Postgres,
    redis: &Redis,
    cfg: &BenchConfig,
    bins: Option<&std::path::Path>,
) -> Result<Figures> {
    let url = pg.create_database()?;
    // A fresh Redis database per run: the ingress queue and rate limits start empty.
    redis::cmd("FLUSHALL")
        .query_async::<()>(
            &mut redis::Client::open(redis.url().as_str())?
                .get_multiplexed_async_connection()
                .await?,
        )
        .await?;
    let redis_url = redis.url();
    let s = Server::start_from(
        bins,
        &[
            "--database-url",
            url.as_str(),
            "--redis-url",
            redis_url.as_str(),
            "--idle-timeout",
            "10m",
        ],
        &[("RUST_LOG", "warn")],
    )
    .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let per = cfg.sandboxes_per_tenant;
    let limits = json!({"enqueue_rate_per_s": null, "jobs_per_month": null,
        "max_sandboxes": per, "min_warm": per});
    for t in 0..cfg.tenants {
        let (st, v) = s
            .send(
                Method::PUT,
                &format!("/v1/tenants/b{t}"),
                &json!({"plan": "enterprise", "limits": limits}),
            )
            .await?;
        anyhow::ensure!(st == 201, "{st} {v}");
    }
    // Every sandbox ready (min_warm) before measuring: boots are not the queue's cost.
    let deadline = Instant::now() + Duration::from_secs(120);
    for t in 0..cfg.tenants {
        loop {
            let p = s.get(&format!("/v1/pools/b{t}")).await?;
            if p["sandboxes"]["ready"].as_u64() == Some(u64::from(per)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("sandboxes of b{t} not ready: {p}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let lat = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let v: Vec<f64> = sqlx::query_scalar::<_, i64>(sql)
                .fetch_all(&pool)
                .await?
                .into_iter()
                .map(|ms| ms as f64)
                .collect();
            anyhow::Ok(v)
        }
    };

    // Sequential: each job enqueued once the previous one started, round the tenants.
    for i in 0..cfg.sequential {
        let id = enqueue_noop(&s, &format!("b{}", i % cfg.tenants)).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let started: Option<Option<i64>> =
                sqlx::query_scalar("SELECT started_at FROM jobs WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&pool)
                    .await?;
            if started.flatten().is_some() {
                break;
            }
            if Instant::now() > deadline {
                bail!("job {id} did not start within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let sequential =
        lat("SELECT started_at - created_at FROM jobs WHERE started_at IS NOT NULL").await?;
    let ingress = ingress_admissions(&pool, &redis_url, cfg).await?;
    let (before,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await?;
    // Wait for the sequential jobs to finish, so the burst starts on an idle system.
    loop {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
                .fetch_one(&pool)
                .await?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Burst.
    let s = Arc::new(s);
    let pids = (s.pid().unwrap_or(0), Some(pg.pid()), Some(redis.pid()));
    let cpu0 = crate::cpu::Cpu::sample(pids.0, pids.1, pids.2);
    let statements_on = crate::pgstat::reset(&pool).await;
    let t0 = Instant::now();
    let t0_ms = chrono::Utc::now().timestamp_millis();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..cfg.clients {
        let s = Arc::clone(&s);
        let tenants = cfg.tenants;
        let n = cfg.jobs / cfg.clients + usize::from(c < cfg.jobs % cfg.clients);
        clients.spawn(async move {
            for i in 0..n {
                enqueue_noop(&s, &format!("b{}", (c + i * 7) % tenants)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = clients.join_next().await {
        r??;
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    // The poll stops at the first open job (the index on state), so it costs little while a
    // backlog remains; the end is the last job's recorded finish.
    while sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued', 'running'))",
    )
    .fetch_one(&pool)
    .await?
    {
        if Instant::now() > deadline {
            bail!("shoal: jobs not done within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let burst_cpu = crate::cpu::Cpu::sample(pids.0, pids.1, pids.2).per_job_ms(&cpu0, cfg.jobs);
    let burst_statements = if statements_on {
        crate::pgstat::statements(&pool, cfg.jobs).await?
    } else {
        Vec::new()
    };
    let (done, last): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(finished_at) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await?;
    anyhow::ensure!(
        done as usize == before as usize + cfg.jobs,
        "{done} jobs succeeded of {}",
        before as usize + cfg.jobs
    );
    let seconds = (last.unwrap_or(t0_ms) - t0_ms) as f64 / 1000.0;
    let burst: Vec<f64> = sqlx::query_scalar::<_, i64>(
        "SELECT started_at - created_at FROM jobs WHERE created_at >= $1",
    )
    .bind(t0_ms)
    .fetch_all(&pool)
    .await?
    .into_iter()
    .map(|ms| ms as f64)
    .collect();
    anyhow::ensure!(burst.len() == cfg.jobs, "{} burst jobs found", burst.len());
    let mut figures = Figures::new(
        if bins.is_some() {
            "shoal baseline (postgres store, redis limits)"
        } else {
            "shoal (postgres store, redis limits)"
        },
        cfg,
        seconds,
        enqueue_s,
        burst,
        sequential,
    );
    figures.burst_cpu_ms_per_job = Some(burst_cpu);
    figures.burst_statements = burst_statements;
    figures.ingress_admit_p50_ms = Some(pct(&ingress, 0.5));
    figures.ingress_admit_p99_ms = Some(pct(&ingress, 0.99));
    if cfg.batch_jobs > 0 {
        drained(&pool, Duration::from_secs(600)).await?;
        let cpu0 = crate::cpu::Cpu::sample(pids.0, pids.1, pids.2);
        let (admit, total) = batch_phase(&s, &pool, cfg).await?;
        let cpu = crate::cpu::Cpu::sample(pids.0, pids.1, pids.2);
        figures.batch_cpu_ms_per_job = Some(cpu.per_job_ms(&cpu0, cfg.batch_jobs));
        figures.batch_admit_per_s = Some(admit);
        figures.batch_jobs_per_s = Some(total);
    }
    Ok(figures)
}

/// Waits until no job is queued or running (at most `limit`).
async fn drained(pool: &PgPool, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued', 'running'))",
    )
    .fetch_one(pool)
    .await?
    {
        if Instant::now() > deadline {
            bail!("shoal: jobs not done within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// `cfg.batch_jobs` no-op jobs through `POST /v1/jobs/batch`, 1,000 a request from 4 clients,
/// round the tenants, on an idle system: (admitted per second, run end to end per second).
async fn batch_phase(s: &Arc<Server>, pool: &PgPool, cfg: &BenchConfig) -> Result<(f64, f64)> {
    drained(pool, Duration::from_secs(600)).await?;
    let t0_ms = chrono::Utc::now().timestamp_millis();
    let tenants = cfg.tenants;
    let admit_s = crate::hotbench::push_batches(s, cfg.batch_jobs, 4, move |r, i| {
        format!("b{}", (r + i) % tenants)
    })
    .await?;
    drained(pool, Duration::from_secs(600)).await?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT max(finished_at) FROM jobs WHERE created_at >= $1")
            .bind(t0_ms)
            .fetch_one(pool)
            .await?;
    let total_s = (last.unwrap_or(t0_ms) - t0_ms).max(1) as f64 / 1000.0;
    Ok((
        cfg.batch_jobs as f64 / admit_s,
        cfg.batch_jobs as f64 / total_s,
    ))
}

/// Pushes `cfg.ingress` jobs into the ingress queue one at a time, each once the previous one
/// was admitted, and answers each one's push-to-admission time in ms (sorted): how soon an idle
/// scheduler's ingress consumer sees a message.
async fn ingress_admissions(pool: &PgPool, redis_url: &str, cfg: &BenchConfig) -> Result<Vec<f64>> {
    let ingress = shoal_client::Ingress::connect(redis_url)
        .await
        .context("connecting the ingress queue")?;
    let mut out = Vec::with_capacity(cfg.ingress);
    for i in 0..cfg.ingress {
        let key = format!("ingress-bench-{i}");
        // Idle between messages, as a platform's occasional push finds it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pushed = chrono::Utc::now().timestamp_millis();
        ingress
            .push(shoal_client::NewJob {
                tenant: format!("b{}", i % cfg.tenants),
                kind: "agent".into(),
                spec: json!({"command": ["true"]}),
                idempotency_key: Some(key.clone()),
                priority: None,
                max_attempts: None,
                timeout_s: None,
            })
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let created = loop {
            let created: Option<i64> =
                sqlx::query_scalar("SELECT created_at FROM jobs WHERE idempotency_key = $1")
                    .bind(&key)
                    .fetch_optional(pool)
                    .await?;
            if let Some(c) = created {
                break c;
            }
            if Instant::now() > deadline {
                bail!("ingress message {key} not admitted within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        out.push((created - pushed) as f64);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Runs the comparison on one Postgres and one Redis of its own; `Ok(None)` when either is not
/// installed.
pub async fn run(cfg: &BenchConfig) -> Result<Option<Vec<Figures>>> {
    let Some(pg) = Postgres::start()? else {
        return Ok(None);
    };
    let Some(redis) = Redis::start()? else {
        return Ok(None);
    };
    let say = |m: &str| {
        if cfg.verbose {
            eprintln!("[queue-bench] {m}");
        }
    };
    let mut out = Vec::new();
    if !cfg.shoal_only {
        bare_loops(&pg, &redis, cfg, &mut out).await?;
    }
    if let Some(bins) = &cfg.baseline_bins {
        say("shoal (baseline binaries)");
        out.push(bench_shoal(&pg, &redis, cfg, Some(bins)).await?);
    }
    say("shoal");
    out.push(bench_shoal(&pg, &redis, cfg, None).await?);
    Ok(Some(out))
}

/// The bare apalis-postgres and apalis-redis loops, one after the other.
async fn bare_loops(
    pg: &Postgres,
    redis: &Redis,
    cfg: &BenchConfig,
    out: &mut Vec<Figures>,
) -> Result<()> {
    let say = |m: &str| {
        if cfg.verbose {
            eprintln!("[queue-bench] {m}");
        }
    };
    say("bare apalis-postgres");
    let url = pg.create_database()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await?;
    PostgresStorage::setup(&pool).await?;
    let storage =
        PostgresStorage::new(&pool).with_config(apalis_postgres::Config::default().queue("bench"));
    out.push(bench_bare(Bare::Postgres { pool, storage }, cfg).await?);

    say("bare apalis-redis");
    let config = apalis_redis::Config::default().queue("bench");
    let conn = apalis_redis::connect(redis.url()).await?;
    let storage = RedisStorage::new(conn).with_config(config.clone());
    out.push(
        bench_bare(
            Bare::Redis {
                url: redis.url(),
                storage,
                config,
            },
            cfg,
        )
        .await?,
    );
    Ok(())
}

/// The figures as a Markdown table.
pub fn table(figures: &[Figures]) -> String {
    let mut s = String::from(
        "| system | jobs | clients | jobs/s end to end | enqueue/s | burst enqueue-to-start p50 / p99 | sequential enqueue-to-start p50 / p99 |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} ms / {:.1} ms | {:.2} ms / {:.2} ms |\n",
            f.system,
            f.jobs,
            f.clients,
            f.jobs_per_s,
            f.enqueue_per_s,
            f.burst_start_p50_ms,
            f.burst_start_p99_ms,
            f.sequential_start_p50_ms,
            f.sequential_start_p99_ms
        ));
    }
    for f in figures {
        if let (Some(p50), Some(p99)) = (f.ingress_admit_p50_ms, f.ingress_admit_p99_ms) {
            s.push_str(&format!(
                "\n{}: ingress push to admission, one message at a time: p50 {p50:.0} ms, p99 {p99:.0} ms\n",
                f.system
            ));
        }
        if let (Some(admit), Some(total)) = (f.batch_admit_per_s, f.batch_jobs_per_s) {
            s.push_str(&format!(
                "\n{}: through `POST /v1/jobs/batch`: {admit:.0} jobs/s admitted, {total:.0} jobs/s end to end\n",
                f.system
            ));
        }
        for (phase, cpu) in [
            ("burst", f.burst_cpu_ms_per_job),
            ("batch", f.batch_cpu_ms_per_job),
        ] {
            if let Some(c) = cpu {
                s.push_str(&format!(
                    "\n{}: CPU per job, {phase}: {:.2} ms = scheduler {:.2} + agents {:.2} + jobs {:.2} + postgres {:.2} + redis {:.2}\n",
                    f.system,
                    c.total(),
                    c.scheduler,
                    c.agents,
                    c.jobs,
                    c.postgres,
                    c.redis
                ));
            }
        }
    }
    s
}
