//! Waiting on jobs and following their output, measured against the real binaries
//! (`shoal-loadtests log-bench`):
//!
//! - **wait wake-up**: a `GET /v1/jobs/{id}?wait_s=60` is in flight when the job ends; the time
//!   from the job's end as the store recorded it (`finished_at`) to the waiter holding the answer.
//!   With `--replicas`, the same for a waiter on a second replica (same Postgres) that is not the
//!   one the job's agent reports to, so its wake-up crosses replicas by `NOTIFY`.
//! - **follow delay**: a job prints its clock every 50 ms; a follower (`/logs?follow=true`)
//!   reads each line and compares it with its own clock (the agent ships at least once a second).
//! - **a big job's memory**: a job prints `--big-mb` MB with a follower attached; the scheduler's
//!   RSS before and its peak (`VmHWM`) after, and the agent's peak.

use crate::queuebench::pct;
use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use shoal_testkit::server::{Server, processes_under};
use std::time::Duration;

/// The measurements to make (the `log-bench` command's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct LogBenchConfig {
    /// Waits measured (one job each).
    #[arg(long, default_value_t = 50)]
    pub waits: usize,
    /// Lines the follow-delay job prints, every 50 ms.
    #[arg(long, default_value_t = 100)]
    pub lines: usize,
    /// MB the big job prints.
    #[arg(long, default_value_t = 200)]
    pub big_mb: u64,
    /// Also measure waits across two replicas on Postgres (needs Postgres installed).
    #[arg(long)]
    pub replicas: bool,
}

/// p50, p99 and the largest of a sample, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        v.sort_by(f64::total_cmp);
        Spread {
            n: v.len(),
            p50_ms: pct(&v, 0.5),
            p99_ms: pct(&v, 0.99),
            max_ms: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// What `log-bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct LogFigures {
    pub wait_wake: Spread,
    pub replica_wait_wake: Option<Spread>,
    pub follow_delay: Spread,
    pub big_job_mb: u64,
    pub big_job_streamed_mb: f64,
    pub scheduler_rss_before_mib: f64,
    pub scheduler_peak_mib: f64,
    pub agent_peak_mib: f64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ms_of(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// `VmRSS` or `VmHWM` of a process, in MiB.
fn memory_mib(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for {pid}"))?;
    Ok(kb / 1024.0)
}

async fn enqueue(s: &Server, tenant: &str, script: &str) -> Result<String> {
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": tenant, "kind": "agent", "spec": {"command": ["sh", "-c", script]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "enqueue: {st} {v}");
    v["id"].as_str().map(str::to_string).context("no job id")
}

async fn watchers(s: &Server) -> Result<i64> {
    let text = s.req(Method::GET, "/metrics").send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix("shoal_job_watchers "))
        .and_then(|v| v.trim().parse().ok())
        .context("no shoal_job_watchers in /metrics")
}

/// Waits on job `id` at `on` (from before its end); the ms from its recorded end to the answer.
async fn one_wait(on: &Server, id: &str, flag: &std::path::Path) -> Result<f64> {
    let (url, token) = (
        format!("{}/v1/jobs/{id}?wait_s=60", on.url),
        on.token.clone(),
    );
    let waiter = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await?;
        let job: Value = r.json().await?;
        anyhow::Ok((job, now_ms()))
    });
    on.wait_for("the waiter", Duration::from_secs(30), || async {
        Ok((watchers(on).await? >= 1).then_some(()))
    })
    .await?;
    std::fs::write(flag, "")?;
    let (job, at) = waiter.await??;
    if job["state"] != "succeeded" {
        bail!("the job did not succeed: {job}");
    }
    let ended = ms_of(&job["finished_at"]).context("finished_at")?;
    Ok((at - ended) as f64)
}

async fn wait_wakes(
    jobs_at: &Server,
    wait_at: &Server,
    n: usize,
    dir: &std::path::Path,
) -> Result<Spread> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let flag = dir.join(format!("wait-{}-{i}", rand::random::<u32>()));
        let id = enqueue(
            jobs_at,
            "bench",
            &format!("while [ ! -e '{}' ]; do sleep 0.01; done", flag.display()),
        )
        .await?;
        out.push(one_wait(wait_at, &id, &flag).await?);
    }
    Ok(Spread::of(out))
}

async fn follow_delay(s: &Server, lines: usize) -> Result<Spread> {
    let id = enqueue(
        s,
        "bench",
        &format!("i=0; while [ $i -lt {lines} ]; do date +%s%3N; sleep 0.05; i=$((i+1)); done"),
    )
    .await?;
    let mut r = s
        .req(Method::GET, &format!("/v1/jobs/{id}/logs?follow=true"))
        .send()
        .await?;
    let (mut buf, mut delays) = (Vec::new(), Vec::new());
    while let Some(c) = r.chunk().await? {
        let at = now_ms();
        buf.extend_from_slice(&c);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let printed: i64 = String::from_utf8_lossy(&line)
                .trim()
                .parse()
                .context("a line of the clock job")?;
            delays.push((at - printed) as f64);
        }
    }
    anyhow::ensure!(delays.len() == lines, "{} of {lines} lines", delays.len());
    Ok(Spread::of(delays))
}

async fn setup(s: &Server) -> Result<()> {
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/bench",
            &json!({"plan": "enterprise", "limits": {"max_sandboxes": 1, "min_warm": 1}}),
        )
        .await?;
    anyhow::ensure!(st == 201 || st == 200, "tenant: {st} {v}");
    // A sandbox up before anything is measured.
    let id = enqueue(s, "bench", "true").await?;
    let j = s.get(&format!("/v1/jobs/{id}?wait_s=60")).await?;
    anyhow::ensure!(j["state"] == "succeeded", "warm-up job: {j}");
    Ok(())
}

/// Runs every measurement.
pub async fn run(cfg: &LogBenchConfig) -> Result<LogFigures> {
    let dir = tempfile_dir()?;
    let s = Server::start(&["--idle-timeout", "10m"], &[("RUST_LOG", "warn")]).await?;
    setup(&s).await?;
    eprintln!("wait wake-ups ({} jobs)", cfg.waits);
    let wait_wake = wait_wakes(&s, &s, cfg.waits, &dir).await?;
    eprintln!("follow delay ({} lines)", cfg.lines);
    let follow = follow_delay(&s, cfg.lines).await?;

    eprintln!("a {} MB job", cfg.big_mb);
    let pid = s.pid().context("scheduler pid")?;
    let before = memory_mib(pid, "VmRSS")?;
    let id = enqueue(
        &s,
        "bench",
        &format!(
            "head -c {} /dev/zero | tr '\\0' x; echo; echo the-end",
            cfg.big_mb * 1_000_000
        ),
    )
    .await?;
    let mut r = s
        .req(Method::GET, &format!("/v1/jobs/{id}/logs?follow=true"))
        .send()
        .await?;
    let mut streamed = 0u64;
    while let Some(c) = r.chunk().await? {
        streamed += c.len() as u64;
    }
    let j = s.get(&format!("/v1/jobs/{id}?wait_s=60")).await?;
    anyhow::ensure!(j["state"] == "succeeded", "the big job: {j}");
    let peak = memory_mib(pid, "VmHWM")?;
    let agent = processes_under(&s.data_dir)
        .into_iter()
        .find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e.file_name().is_some_and(|n| n == "shoal-agent"))
        })
        .context("no agent running")?;
    let agent_peak = memory_mib(agent, "VmHWM")?;
    drop(s);

    let replica_wait_wake = if cfg.replicas {
        let Some(pg) = shoal_testkit::services::Postgres::start()? else {
            bail!("--replicas needs Postgres installed");
        };
        let url = pg.create_database()?;
        let env = [("SHOAL_ADMIN_TOKEN", "log-bench"), ("RUST_LOG", "info")];
        let args = ["--database-url", url.as_str(), "--idle-timeout", "10m"];
        let a = Server::start(&args, &env).await?;
        let b = Server::start(&args, &env).await?;
        setup(&a).await?;
        // Agents report to the replica that created their sandbox: the leader.
        let (leader, other) = if a.log().contains("this replica leads") {
            (&a, &b)
        } else {
            (&b, &a)
        };
        eprintln!("wait wake-ups across replicas ({} jobs)", cfg.waits);
        Some(wait_wakes(leader, other, cfg.waits, &dir).await?)
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(LogFigures {
        wait_wake,
        replica_wait_wake,
        follow_delay: follow,
        big_job_mb: cfg.big_mb,
        big_job_streamed_mb: streamed as f64 / 1e6,
        scheduler_rss_before_mib: before,
        scheduler_peak_mib: peak,
        agent_peak_mib: agent_peak,
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("shoal-log-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The figures as a table.
pub fn table(f: &LogFigures) -> String {
    let row = |name: &str, s: &Spread| {
        format!(
            "{name:<34} {:>5} {:>9.1} {:>9.1} {:>9.1}\n",
            s.n, s.p50_ms, s.p99_ms, s.max_ms
        )
    };
    let mut out = format!(
        "{:<34} {:>5} {:>9} {:>9} {:>9}\n",
        "measure", "n", "p50 ms", "p99 ms", "max ms"
    );
    out.push_str(&row("wait_s wake-up, same replica", &f.wait_wake));
    if let Some(r) = &f.replica_wait_wake {
        out.push_str(&row("wait_s wake-up, across replicas", r));
    }
    out.push_str(&row("output printed -> follower", &f.follow_delay));
    out.push_str(&format!(
        "{} MB job: scheduler RSS {:.0} MiB before, peak {:.0} MiB; agent peak {:.0} MiB; {:.1} MB streamed to the follower\n",
        f.big_job_mb,
        f.scheduler_rss_before_mib,
        f.scheduler_peak_mib,
        f.agent_peak_mib,
        f.big_job_streamed_mb
    ));
    out
}
