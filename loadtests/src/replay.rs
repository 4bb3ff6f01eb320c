//! Sim-to-real: plays a workload CSV against a running `shoal serve` (process provider), time
//! compressed by a factor, and compares the cold starts and idle sandbox-seconds it measured
//! through Shoal's own API with the simulator's prediction for the same compressed workload,
//! policy and boot latencies.
//!
//! - Each tenant of the workload is created (`PUT /v1/tenants/{id}`, plan `enterprise`: no cap
//!   on sandboxes, as the simulator's default), then each job is enqueued at `arrival_s / F` with
//!   a spec that sleeps `duration_s / F`.
//! - Once every job has ended and every pool has stopped its sandboxes, the replay reads the jobs
//!   (`created_at`, `started_at`, `finished_at`, `sandbox_id`), each tenant's events (the boots:
//!   `create`, `start`, `resume`; a `claim` of a running blank is counted but is no boot) and the
//!   billed sandbox-seconds (`GET /v1/usage`).
//! - A job is a **cold start** when it is the first job its sandbox started after a boot and it
//!   was enqueued before that boot was over (the simulator's definition: it waited for a boot).
//!   When the boot was over is not evented; it is estimated per kind of boot from the boots a job
//!   provably waited for (the job was enqueued before the boot began): the median time from the
//!   boot to that job's start. Those medians are also the latencies the simulator is given,
//!   unless set by hand.
//! - **Idle** sandbox-seconds are billed sandbox-seconds less the jobs' run time and the boots
//!   (the simulator meters idle from ready, not from the boot). Tenants' idle only: a warm pool's
//!   blanks are the fleet's and not in the usage, so they are left out of the prediction too.

use crate::engine::{Outcome, SimOptions, simulate};
use crate::policy::Policy;
use crate::workload::{Ms, Workload};
use anyhow::{Context, Result, bail};
use chrono::DateTime;
use serde::Serialize;
use serde_json::{Value, json};
use shoal_fleet::sim::SimLatencies;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What to replay and against which scheduler.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The scheduler's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// Its admin token.
    pub token: String,
    /// Time is divided by this (arrivals and durations).
    pub compress: f64,
    /// The policy the scheduler runs, in real (compressed) seconds, as the simulator names it.
    pub policy: Policy,
    /// Boot latencies for the simulator; measured from the replay when `None`.
    pub latencies: Option<SimLatencies>,
    /// Longest wait for the jobs to end and the pools to stop, after the last arrival.
    pub settle: Duration,
    /// The scheduler's `--warm-pool` (running blanks, as the process provider keeps them).
    pub warm_pool: u32,
}

/// What the replay measured through the API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replayed {
    pub jobs: u64,
    pub jobs_succeeded: u64,
    /// Jobs that ran more than one attempt.
    pub jobs_retried: u64,
    pub cold_starts: u64,
    pub cold_start_rate: f64,
    /// Boots seen in the events, by kind.
    pub boots: BTreeMap<String, u64>,
    /// Median boot-to-first-job time of the boots a job waited for, by kind, seconds.
    pub boot_latency_s: BTreeMap<String, f64>,
    pub sandbox_seconds: f64,
    pub busy_seconds: f64,
    pub idle_sandbox_seconds: f64,
    pub wall_s: f64,
}

/// The comparison `replay` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub policy: String,
    pub compress: f64,
    pub replayed: Replayed,
    pub predicted: Outcome,
    /// The simulator's latencies, seconds.
    pub sim_latencies_s: [f64; 3],
    /// (replayed − predicted) / predicted, as a fraction.
    pub cold_starts_diff: f64,
    pub idle_seconds_diff: f64,
    /// `|cold_starts_diff| <= 0.10`.
    pub cold_starts_within_10pct: bool,
}

/// The workload with every time divided by `f`.
pub fn compress(w: &Workload, f: f64) -> Workload {
    let mut c = w.clone();
    for j in &mut c.jobs {
        j.arrival_ms = (j.arrival_ms as f64 / f).round() as Ms;
        j.duration_ms = (j.duration_ms as f64 / f).round() as Ms;
    }
    c
}

fn ms(v: &Value) -> Option<Ms> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn diff(real: f64, pred: f64) -> f64 {
    if pred == 0.0 {
        if real == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        (real - pred) / pred
    }
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn call(&self, m: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut r = self
            .http
            .request(m.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.with_context(|| format!("{m} {path}"))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{m} {path}: {status} {v}");
        }
        Ok(v)
    }
}

/// One job as the replay read it back.
struct JobSeen {
    created: Ms,
    started: Option<Ms>,
    finished: Option<Ms>,
    sandbox: Option<String>,
}

/// Plays `w` (uncompressed) against the scheduler and compares with the simulator.
pub async fn run(w: &Workload, cfg: &ReplayConfig) -> Result<Comparison> {
    if !(cfg.compress.is_finite() && cfg.compress >= 1.0) {
        bail!("--compress must be a number >= 1");
    }
    let cw = compress(w, cfg.compress);
    let api = Api {
        http: reqwest::Client::new(),
        url: cfg.url.trim_end_matches('/').to_string(),
        token: cfg.token.clone(),
    };
    for t in &cw.tenants {
        api.call(
            reqwest::Method::PUT,
            &format!("/v1/tenants/{t}"),
            Some(&json!({"plan": "enterprise"})),
        )
        .await
        .with_context(|| format!("creating tenant {t}"))?;
    }
    // Enqueue every job at its compressed arrival.
    let t0 = tokio::time::Instant::now();
    let wall0 = chrono::Utc::now().timestamp_millis();
    let mut tasks = tokio::task::JoinSet::new();
    let api = std::sync::Arc::new(api);
    for (i, j) in cw.jobs.iter().enumerate() {
        let at = t0 + Duration::from_millis(j.arrival_ms.max(0) as u64);
        let tenant = cw.tenants[j.tenant as usize].clone();
        let secs = format!("{:.3}", j.duration_ms as f64 / 1000.0);
        let api = api.clone();
        tokio::time::sleep_until(at).await;
        tasks.spawn(async move {
            let body = json!({"tenant": tenant, "kind": "agent",
                "spec": {"command": ["sleep", secs]}, "max_attempts": 1});
            let v = api
                .call(reqwest::Method::POST, "/v1/jobs", Some(&body))
                .await?;
            let id = v["id"].as_str().context("job id")?.to_string();
            anyhow::Ok((i, id))
        });
    }
    let mut ids = vec![String::new(); cw.jobs.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, id) = r??;
        ids[i] = id;
    }
    // Wait for every job to end, then for every sandbox to be stopped.
    let deadline = tokio::time::Instant::now() + cfg.settle;
    let mut seen: HashMap<String, JobSeen> = HashMap::new();
    let mut retried = 0;
    let mut succeeded = 0;
    for id in &ids {
        loop {
            let j = api
                .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
                .await?;
            if !matches!(j["state"].as_str(), Some("queued" | "running")) {
                if j["state"] == "succeeded" {
                    succeeded += 1;
                }
                if j["attempts"].as_u64().unwrap_or(0) > 1 {
                    retried += 1;
                }
                seen.insert(
                    id.clone(),
                    JobSeen {
                        created: ms(&j["created_at"]).context("created_at")?,
                        started: ms(&j["started_at"]),
                        finished: ms(&j["finished_at"]),
                        sandbox: j["sandbox_id"].as_str().map(str::to_string),
                    },
                );
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("job {id} did not end in time: {j}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    loop {
        let pools = api.call(reqwest::Method::GET, "/v1/pools", None).await?;
        let live: u64 = pools["pools"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        ["booting", "ready", "busy", "unhealthy"]
                            .iter()
                            .map(|k| p["sandboxes"][k].as_u64().unwrap_or(0))
                            .sum::<u64>()
                    })
                    .sum()
            })
            .unwrap_or(0);
        if live == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{live} sandboxes still running after the settle time: {pools}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall_s = t0.elapsed().as_secs_f64();
    // Boots, per sandbox.
    let mut boots: HashMap<String, Vec<(Ms, String)>> = HashMap::new();
    let mut boot_counts = BTreeMap::new();
    for t in &cw.tenants {
        let v = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/events?tenant={t}&limit=1000"),
                None,
            )
            .await?;
        let evs = v["events"].as_array().cloned().unwrap_or_default();
        if evs.len() >= 1000 {
            bail!("tenant {t} has 1000 events or more: replay a shorter slice");
        }
        for e in evs {
            let kind = e["kind"].as_str().unwrap_or_default();
            // A claim of a running blank (the process provider's) is no boot: the simulator's
            // ready blank, whose job is not a cold start. Claims are counted, not timed.
            if kind == "claim" {
                *boot_counts.entry(kind.to_string()).or_insert(0) += 1;
                continue;
            }
            if !matches!(kind, "create" | "start" | "resume") {
                continue;
            }
            let (Some(at), Some(sb)) = (ms(&e["at"]), e["detail"]["sandbox"].as_str()) else {
                continue;
            };
            *boot_counts.entry(kind.to_string()).or_insert(0) += 1;
            boots
                .entry(sb.to_string())
                .or_default()
                .push((at, kind.to_string()));
        }
    }
    // Jobs per sandbox, by start.
    let mut on: HashMap<&str, Vec<&JobSeen>> = HashMap::new();
    for j in seen.values() {
        if let (Some(sb), Some(_)) = (&j.sandbox, j.started) {
            on.entry(sb.as_str()).or_default().push(j);
        }
    }
    on.values_mut().for_each(|v| v.sort_by_key(|j| j.started));
    // For each boot, the first job its sandbox started after it.
    let mut firsts: Vec<(&str, Ms, &JobSeen)> = Vec::new();
    for (sb, bs) in &mut boots {
        bs.sort();
        let Some(jobs) = on.get(sb.as_str()) else {
            continue;
        };
        for (k, (at, kind)) in bs.iter().enumerate() {
            let next_boot = bs.get(k + 1).map_or(Ms::MAX, |b| b.0);
            if let Some(j) = jobs
                .iter()
                .find(|j| j.started.is_some_and(|s| s >= *at && s < next_boot))
            {
                firsts.push((kind.as_str(), *at, j));
            }
        }
    }
    // The latency of each kind of boot: median boot-to-start of the boots a job waited for.
    let mut lat: BTreeMap<String, Vec<Ms>> = BTreeMap::new();
    for (kind, at, j) in &firsts {
        if j.created <= *at {
            lat.entry(kind.to_string())
                .or_default()
                .push(j.started.unwrap_or(*at) - at);
        }
    }
    let median = |v: &mut Vec<Ms>| -> Option<Ms> {
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let lat: BTreeMap<String, Ms> = lat
        .into_iter()
        .filter_map(|(k, mut v)| median(&mut v).map(|m| (k, m)))
        .collect();
    let boot_of = |kind: &str| -> Ms {
        lat.get(kind)
            .or_else(|| lat.get("create"))
            .copied()
            .unwrap_or(0)
    };
    let cold = firsts
        .iter()
        .filter(|(kind, at, j)| j.created < at + boot_of(kind))
        .count() as u64;
    let boot_ms: Ms = boots
        .values()
        .flatten()
        .map(|(_, kind)| boot_of(kind))
        .sum();
    let busy_ms: Ms = seen
        .values()
        .filter_map(|j| Some(j.finished? - j.started?))
        .sum();
    let to = chrono::Utc::now().timestamp_millis() + 1000;
    let from = DateTime::from_timestamp_millis(wall0 - 60_000)
        .context("clock")?
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let to = DateTime::from_timestamp_millis(to)
        .context("clock")?
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let usage = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/usage?from={from}&to={to}&granularity=month"),
            None,
        )
        .await?;
    let sandbox_s = usage["total"]["sandbox_seconds"]
        .as_f64()
        .context("usage total")?;
    let n = cw.jobs.len() as u64;
    let replayed = Replayed {
        jobs: n,
        jobs_succeeded: succeeded,
        jobs_retried: retried,
        cold_starts: cold,
        cold_start_rate: if n == 0 { 0.0 } else { cold as f64 / n as f64 },
        boots: boot_counts,
        boot_latency_s: lat
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / 1000.0))
            .collect(),
        sandbox_seconds: sandbox_s,
        busy_seconds: busy_ms as f64 / 1000.0,
        idle_sandbox_seconds: (sandbox_s - (busy_ms + boot_ms) as f64 / 1000.0).max(0.0),
        wall_s,
    };
    let latencies = cfg.latencies.unwrap_or(SimLatencies {
        create_ms: boot_of("create"),
        start_ms: lat.get("start").copied().unwrap_or(boot_of("create")),
        resume_ms: lat.get("resume").copied().unwrap_or(boot_of("start")),
    });
    let opts = SimOptions {
        latencies,
        warm_pool: cfg.warm_pool,
        ..SimOptions::default()
    };
    let (predicted, _) = simulate(&cw, cfg.policy, &opts)?;
    Ok(Comparison {
        policy: cfg.policy.to_string(),
        compress: cfg.compress,
        sim_latencies_s: [
            latencies.create_ms as f64 / 1000.0,
            latencies.start_ms as f64 / 1000.0,
            latencies.resume_ms as f64 / 1000.0,
        ],
        cold_starts_diff: diff(replayed.cold_starts as f64, predicted.cold_starts as f64),
        idle_seconds_diff: diff(
            replayed.idle_sandbox_seconds,
            predicted.idle_sandbox_seconds - predicted.warm_pool_idle_seconds,
        ),
        cold_starts_within_10pct: diff(replayed.cold_starts as f64, predicted.cold_starts as f64)
            .abs()
            <= 0.10,
        replayed,
        predicted,
    })
}
