//! The hot path's other bars, measured from outside (`shoal-loadtests hot-bench`), against a
//! release `shoal serve`:
//!
//! - **embedded**: the default store and provider (SQLite, `process`), one tenant with 8 ready
//!   sandboxes; `jobs` no-op `true` jobs pushed by 8 concurrent clients one request each, then
//!   the same number through `POST /v1/jobs/batch` (1,000 a request): jobs per second from the
//!   first push to the last recorded finish.
//! - **backlog**: `backlog` jobs queued for a drained tenant (admitted through the batch
//!   endpoint; a drained tenant gets no sandbox, so they stay queued), then `rounds` times a job
//!   for another tenant whose only sandbox the idle timeout stopped: the time from its admission
//!   (`created_at`) to the provider's start call (the `start` event the control loop records),
//!   and the scheduler's resident memory (`VmRSS`, peak `VmHWM`) before and after.
//!
//! Both run on SQLite (the embedded default) or, with `--postgres`, on a Postgres of their own.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queuebench::{enqueue_noop, pct};

/// The load of one run (the `hot-bench` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct HotConfig {
    /// Embedded: no-op jobs per phase (0 skips it).
    #[arg(long, default_value_t = 4_000)]
    pub jobs: usize,
    /// Embedded: sandboxes of the tenant (all ready before measuring).
    #[arg(long, default_value_t = 8)]
    pub sandboxes: u32,
    /// Embedded: concurrent clients pushing one job a request.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Backlog: jobs queued for the drained tenant (0 skips the phase).
    #[arg(long, default_value_t = 200_000)]
    pub backlog: usize,
    /// Backlog: wake rounds of the other tenant.
    #[arg(long, default_value_t = 30)]
    pub rounds: usize,
    /// Run on a Postgres of its own instead of the embedded SQLite.
    #[arg(long)]
    pub postgres: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HotFigures {
    pub store: String,
    pub embedded_jobs: usize,
    pub embedded_sandboxes: u32,
    /// One job a request, `clients` clients: end to end, and the pushing alone.
    pub single_jobs_per_s: Option<f64>,
    pub single_enqueue_per_s: Option<f64>,
    /// Through the batch endpoint: end to end, and the admission alone.
    pub batch_jobs_per_s: Option<f64>,
    pub batch_admit_per_s: Option<f64>,
    /// CPU milliseconds per job (scheduler, agents, jobs; the store is in the scheduler).
    pub single_cpu_ms_per_job: Option<crate::cpu::Cpu>,
    pub batch_cpu_ms_per_job: Option<crate::cpu::Cpu>,
    pub backlog: usize,
    pub backlog_admit_per_s: Option<f64>,
    /// Admission to the provider's start call, with the backlog queued (ms, millisecond clock).
    pub wake_p50_ms: Option<f64>,
    pub wake_p99_ms: Option<f64>,
    pub wake_max_ms: Option<f64>,
    pub rss_before_backlog_mib: Option<f64>,
    pub rss_after_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
}

/// A `/proc/PID/status` field in MiB.
fn proc_mib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn ms(v: &Value) -> Result<i64> {
    let s = v.as_str().with_context(|| format!("not a time: {v}"))?;
    Ok(chrono::DateTime::parse_from_rfc3339(s)?.timestamp_millis())
}

async fn put_tenant(s: &Server, id: &str, limits: Value) -> Result<()> {
    let (st, v) = s
        .send(
            Method::PUT,
            &format!("/v1/tenants/{id}"),
            &json!({"plan": "enterprise", "limits": limits}),
        )
        .await?;
    anyhow::ensure!(st == 200 || st == 201, "{st} {v}");
    Ok(())
}

/// Waits until the tenant's pool has nothing queued or running; the last finish time seen is
/// read by the caller from the store.
async fn pool_drained(s: &Server, tenant: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let p = s.get(&format!("/v1/pools/{tenant}")).await?;
        if p["queued"] == 0 && p["running"] == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{tenant}: not drained within {limit:?}: {p}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The latest `finished_at` among the tenant's newest 100 jobs, in ms (with a few sandboxes, the
/// last job to finish is one of the last admitted).
async fn last_finish(s: &Server, tenant: &str) -> Result<i64> {
    let v = s
        .get(&format!(
            "/v1/jobs?tenant={tenant}&state=succeeded&limit=100"
        ))
        .await?;
    let mut last = None;
    for job in v["jobs"].as_array().into_iter().flatten() {
        last = last.max(Some(ms(&job["finished_at"])?));
    }
    last.with_context(|| format!("no finished job: {v}"))
}

/// Pushes `n` no-op jobs through the batch endpoint, 1,000 a request from `clients` clients,
/// the job `i` of request `r` for the tenant `tenant(r, i)`; the seconds it took. Shared with
/// `queue-bench`'s batch phase.
pub(crate) async fn push_batches<F>(
    s: &Arc<Server>,
    n: usize,
    clients: usize,
    tenant: F,
) -> Result<f64>
where
    F: Fn(usize, usize) -> String + Clone + Send + 'static,
{
    let t0 = Instant::now();
    let requests = n.div_ceil(1000);
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let s = Arc::clone(s);
        let tenant = tenant.clone();
        set.spawn(async move {
            for r in (c..requests).step_by(clients) {
                let k = (n - r * 1000).min(1000);
                let batch: Vec<_> = (0..k)
                    .map(|i| json!({"tenant": tenant(r, i), "kind": "agent", "spec": {"command": ["true"]}}))
                    .collect();
                let (st, v) = s
                    .send(Method::POST, "/v1/jobs/batch", &json!({ "jobs": batch }))
                    .await?;
                anyhow::ensure!(st == 200, "{st} {v}");
                let admitted = v["jobs"]
                    .as_array()
                    .map_or(0, |a| a.iter().filter(|j| j["status"] == 202).count());
                anyhow::ensure!(admitted == k, "{admitted} of {k} admitted: {v}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(t0.elapsed().as_secs_f64())
}

async fn embedded(s: &Arc<Server>, cfg: &HotConfig, out: &mut HotFigures) -> Result<()> {
    let n = cfg.sandboxes;
    put_tenant(
        s,
        "bulk",
        json!({"enqueue_rate_per_s": null, "jobs_per_month": null, "max_sandboxes": n, "min_warm": n}),
    )
    .await?;
    s.wait_for("the sandboxes ready", Duration::from_secs(120), || async {
        let p = s.get("/v1/pools/bulk").await?;
        Ok((p["sandboxes"]["ready"].as_u64() == Some(u64::from(n))).then_some(()))
    })
    .await?;

    // One job a request, `clients` clients.
    let pid = s.pid().context("no scheduler pid")?;
    let cpu0 = crate::cpu::Cpu::sample(pid, None, None);
    let t0 = Instant::now();
    let t0_ms = chrono::Utc::now().timestamp_millis();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..cfg.clients {
        let s = Arc::clone(s);
        let k = cfg.jobs / cfg.clients + usize::from(c < cfg.jobs % cfg.clients);
        set.spawn(async move {
            for _ in 0..k {
                enqueue_noop(&s, "bulk").await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    pool_drained(s, "bulk", Duration::from_secs(600)).await?;
    let total_s = (last_finish(s, "bulk").await? - t0_ms).max(1) as f64 / 1000.0;
    out.single_jobs_per_s = Some(cfg.jobs as f64 / total_s);
    out.single_enqueue_per_s = Some(cfg.jobs as f64 / enqueue_s);
    let cpu1 = crate::cpu::Cpu::sample(pid, None, None);
    out.single_cpu_ms_per_job = Some(cpu1.per_job_ms(&cpu0, cfg.jobs));

    // Through the batch endpoint.
    let t0_ms = chrono::Utc::now().timestamp_millis();
    let admit_s = push_batches(s, cfg.jobs, 2, |_, _| "bulk".to_string()).await?;
    pool_drained(s, "bulk", Duration::from_secs(600)).await?;
    let total_s = (last_finish(s, "bulk").await? - t0_ms).max(1) as f64 / 1000.0;
    out.batch_jobs_per_s = Some(cfg.jobs as f64 / total_s);
    out.batch_admit_per_s = Some(cfg.jobs as f64 / admit_s);
    let cpu2 = crate::cpu::Cpu::sample(pid, None, None);
    out.batch_cpu_ms_per_job = Some(cpu2.per_job_ms(&cpu1, cfg.jobs));
    Ok(())
}

async fn backlog(s: &Arc<Server>, cfg: &HotConfig, out: &mut HotFigures) -> Result<()> {
    let pid = s.pid().context("no scheduler pid")?;
    out.rss_before_backlog_mib = proc_mib(pid, "VmRSS:");
    let unlimited = json!({"enqueue_rate_per_s": null, "jobs_per_month": null, "max_sandboxes": 1});
    put_tenant(s, "deep", unlimited.clone()).await?;
    let (st, v) = s
        .send(Method::POST, "/v1/tenants/deep/drain", &json!({}))
        .await?;
    anyhow::ensure!(st == 200, "drain: {st} {v}");
    let admit_s = push_batches(s, cfg.backlog, 2, |_, _| "deep".to_string()).await?;
    out.backlog_admit_per_s = Some(cfg.backlog as f64 / admit_s);
    let p = s.get("/v1/pools/deep").await?;
    anyhow::ensure!(
        p["queued"].as_u64() == Some(cfg.backlog as u64),
        "the backlog is not queued: {p}"
    );

    put_tenant(s, "cold", unlimited).await?;
    let mut wake = Vec::new();
    for round in 0..cfg.rounds {
        // The pool stopped by the idle timeout.
        s.wait_for("the pool stopped", Duration::from_secs(60), || async {
            let p = s.get("/v1/pools/cold").await?;
            let active: u64 = ["booting", "ready", "busy"]
                .iter()
                .map(|k| p["sandboxes"][k].as_u64().unwrap_or(0))
                .sum();
            Ok((active == 0).then_some(()))
        })
        .await?;
        let id = enqueue_noop(s, "cold").await?;
        let job = s
            .wait_for("the cold job done", Duration::from_secs(60), || async {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                Ok((j["state"] == "succeeded").then_some(j))
            })
            .await?;
        let events = s.get("/v1/events?tenant=cold&limit=5").await?;
        let op = if round == 0 { "create" } else { "start" };
        let ev = events["events"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["kind"] == op))
            .with_context(|| format!("no {op} event: {events}"))?;
        wake.push((ms(&ev["at"])? - ms(&job["created_at"])?) as f64);
    }
    wake.sort_by(f64::total_cmp);
    out.wake_p50_ms = Some(pct(&wake, 0.5));
    out.wake_p99_ms = Some(pct(&wake, 0.99));
    out.wake_max_ms = wake.last().copied();
    out.rss_after_mib = proc_mib(pid, "VmRSS:");
    out.rss_peak_mib = proc_mib(pid, "VmHWM:");
    Ok(())
}

/// Runs the phases the config asks for.
pub async fn run(cfg: &HotConfig) -> Result<HotFigures> {
    let pg = if cfg.postgres {
        Some(shoal_testkit::services::Postgres::start()?.context("Postgres is not installed")?)
    } else {
        None
    };
    // A database per scheduler: the two must not see each other's sandboxes.
    let db = || -> Result<Vec<String>> {
        Ok(match &pg {
            Some(pg) => vec!["--database-url".into(), pg.create_database()?],
            None => vec![],
        })
    };
    let mut out = HotFigures {
        store: if cfg.postgres { "postgres" } else { "sqlite" }.into(),
        embedded_jobs: cfg.jobs,
        embedded_sandboxes: cfg.sandboxes,
        backlog: cfg.backlog,
        ..HotFigures::default()
    };
    if cfg.jobs > 0 {
        // Its own scheduler: the idle timeout must not stop the sandboxes between phases.
        let args = db()?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let s = Arc::new(Server::start(&args, &[("RUST_LOG", "warn")]).await?);
        embedded(&s, cfg, &mut out).await?;
    }
    if cfg.backlog > 0 {
        let mut args = db()?;
        args.extend(["--idle-timeout".into(), "1s".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let s = Arc::new(Server::start(&args, &[("RUST_LOG", "warn")]).await?);
        backlog(&s, cfg, &mut out).await?;
    }
    drop(pg);
    Ok(out)
}
