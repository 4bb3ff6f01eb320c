//! The fault run: several `shoal serve` replicas on one Postgres and one Redis, with jobs flowing
//! in from concurrent clients (over HTTP and through the apalis ingress queue) while replicas, the
//! leader among them, are killed with SIGKILL and restarted every few seconds, and Postgres itself
//! restarts once mid-run. When every job has finished, [`run`] checks from the database itself:
//!
//! - every accepted job is stored once and is in exactly one terminal state (`succeeded`: every
//!   command succeeds, and attempts lost to kills are retried), with its own output;
//! - no job has two recorded completions (the store's `job_completions` audit);
//! - no idempotency key made two jobs (HTTP retries and repeats, ingress redeliveries);
//! - the usage report equals the total computed here, independently, from the ledger.
//!
//! One function serves both sizes: `scheduler/tests/replicas.rs` runs it small in the test suite,
//! `shoal-loadtests faults` (see `loadtests/faults.sh`) runs 20,000 jobs across 100 tenants on
//! release binaries. The binaries are the ones next to the running executable
//! ([`shoal_testkit::bins`]): `target/debug` for the test, `target/release` for the load test.

use anyhow::Context;
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use shoal_client::{Ingress, NewJob};
use shoal_testkit::server::Server;
use shoal_testkit::services::{Postgres, Redis};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const TOKEN: &str = "faults-admin-token";

/// What a fault run does.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Scheduler replicas.
    pub replicas: usize,
    pub jobs: usize,
    pub tenants: usize,
    /// Concurrent enqueueing clients.
    pub clients: usize,
    /// One replica is killed (SIGKILL) and restarted this often; every other kill aims at the
    /// leader.
    pub kill_every: Duration,
    /// How long a killed replica stays down.
    pub down_for: Duration,
    /// Every `ingress_every`-th job is pushed into the apalis ingress queue instead of
    /// `POST /v1/jobs` (0: none).
    pub ingress_every: usize,
    /// Every `repeat_every`-th HTTP job is enqueued a second time through another replica with
    /// the same idempotency key (0: none).
    pub repeat_every: usize,
    /// Kills go on until every job is finished, and until this many at the least.
    pub min_kills: usize,
    /// Restart Postgres once, when half the jobs are in.
    pub restart_postgres: bool,
    /// The pause of each client between two of its jobs (a test's gentler pace).
    pub pace: Duration,
    /// The shell command of job `key` (`{key}` is replaced); it must print `key`.
    pub command: String,
    /// Each tenant's `max_sandboxes`.
    pub max_sandboxes: u32,
    /// How long the queue may take to drain after the last enqueue.
    pub drain_timeout: Duration,
    /// Print progress to stderr.
    pub verbose: bool,
    /// Run the sandboxes on the Fly emulator (strict: 404s after creates, Fly's rate limits
    /// enforced, leases refused to another nonce) instead of the process provider, and check
    /// the fleet after the last job as well (see [`crate::faults`]).
    pub fly: bool,
}

impl FaultConfig {
    /// The given size with the defaults of the load test.
    pub fn new(jobs: usize, tenants: usize) -> Self {
        FaultConfig {
            replicas: 3,
            jobs,
            tenants,
            clients: 8,
            kill_every: Duration::from_secs(3),
            down_for: Duration::from_millis(300),
            ingress_every: 10,
            repeat_every: 5,
            min_kills: 6,
            restart_postgres: true,
            pace: Duration::ZERO,
            command: "echo {key}".into(),
            max_sandboxes: 2,
            drain_timeout: Duration::from_secs(240 + jobs as u64 / 50),
            verbose: false,
            fly: false,
        }
    }
}

/// What a fault run measured; every check in it passed.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub replicas: usize,
    pub tenants: usize,
    pub jobs: usize,
    pub via_http: usize,
    pub via_ingress: usize,
    /// Repeated enqueues with a known idempotency key (each answered with the first job).
    pub repeats: usize,
    pub kills: usize,
    /// Kills of the replica that was leading at the time.
    pub leader_kills: usize,
    pub postgres_restarts: usize,
    /// Leaders elected over the run (the leadership epoch).
    pub leader_epochs: u64,
    /// First enqueue to the last enqueue answered.
    pub enqueue_s: f64,
    /// First enqueue to the last job finished.
    pub total_s: f64,
    pub jobs_per_s: f64,
    /// Attempts beyond the first, summed over all jobs (leases lost to kills).
    pub extra_attempts: u64,
    pub completions: usize,
    pub usage_sandbox_s: f64,
    pub ledger_sandbox_s: f64,
    /// With `fly`: what the emulator saw.
    pub fly: Option<FlyFigures>,
    pub checks: Vec<String>,
}

/// What the Fly emulator saw over a fault run on it.
#[derive(Debug, Clone, Serialize)]
pub struct FlyFigures {
    /// Seconds from the last job's end until no sandbox was booting and no machine running.
    pub settled_s: f64,
    pub requests: u64,
    pub past_rate_limit: u64,
    pub spec_violations: u64,
    pub early_not_found: u64,
    pub calls_per_start: f64,
    pub calls_per_start_net_of_faults: f64,
    /// Unknown machines collected (each once).
    pub orphans_collected: usize,
    /// Machines whose id was adopted by its tag after it could not be recorded.
    pub adopted: usize,
}

/// Why a fault run failed.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// An invariant did not hold.
    #[error("check failed: {0}")]
    Check(String),
    /// The harness itself could not run (a server would not start, a query failed).
    #[error(transparent)]
    Harness(#[from] anyhow::Error),
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(FaultError::Check(format!($($fmt)+)));
        }
    };
}

/// The replicas' current URLs, `None` while one is down.
type Urls = Arc<RwLock<Vec<Option<String>>>>;

pub(crate) fn rows(pg: &Postgres, db: &str, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let out = pg.query(db, &format!("COPY ({sql}) TO STDOUT"))?;
    Ok(out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect())
}

/// Sends until some replica answers 200/202 and answers the job's id; the idempotency key makes
/// retries safe.
async fn enqueue(
    http: &reqwest::Client,
    urls: &Urls,
    start: usize,
    body: &Value,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = start;
    loop {
        let url = {
            let urls = urls.read().unwrap_or_else(|e| e.into_inner());
            urls[i % urls.len()].clone()
        };
        if let Some(url) = url
            && let Ok(r) = http
                .post(format!("{url}/v1/jobs"))
                .bearer_auth(TOKEN)
                .json(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await
        {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if status == 202 || status == 200 {
                return v["id"]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("no id in {v}"));
            }
            if matches!(status, 400 | 403 | 404) {
                anyhow::bail!("refused: {status} {v}");
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no replica accepted {body}");
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one client enqueued: job key to id (HTTP) or `None` (ingress), and its repeats.
struct Sent {
    jobs: Vec<(String, Option<String>)>,
    repeats: usize,
}

async fn client(
    cfg: Arc<FaultConfig>,
    me: usize,
    urls: Urls,
    ingress: Ingress,
    done: Arc<AtomicUsize>,
) -> Result<Sent, FaultError> {
    let http = reqwest::Client::new();
    let mut sent = Sent {
        jobs: Vec::new(),
        repeats: 0,
    };
    for n in (me..cfg.jobs).step_by(cfg.clients) {
        let key = format!("k{n}");
        let tenant = format!("t{}", n % cfg.tenants);
        let command = cfg.command.replace("{key}", &key);
        let job = NewJob::agent(&tenant, ["sh", "-c", command.as_str()])
            .idempotency_key(&key)
            .max_attempts(50);
        if cfg.ingress_every > 0 && n % cfg.ingress_every == 0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match ingress.push(job.clone()).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(anyhow::anyhow!("ingress push of {key}: {e}").into());
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            sent.jobs.push((key, None));
        } else {
            let body = serde_json::to_value(&job).context("encoding a job")?;
            let id = enqueue(&http, &urls, n, &body).await?;
            // The same key again, through another replica: the same job.
            if cfg.repeat_every > 0 && n % cfg.repeat_every == 1 {
                let again = enqueue(&http, &urls, n + 1, &body).await?;
                check!(
                    again == id,
                    "idempotency key {key} made two jobs: {id}, {again}"
                );
                sent.repeats += 1;
            }
            sent.jobs.push((key, Some(id)));
        }
        done.fetch_add(1, Ordering::Relaxed);
        if !cfg.pace.is_zero() {
            tokio::time::sleep(cfg.pace).await;
        }
    }
    Ok(sent)
}

/// The key of the scheduler's leadership advisory lock (`LOCK_KEY` in `scheduler/src/leader.rs`,
/// which this harness does not link).
const LEADER_LOCK_KEY: i64 = 0x73_68_6f_61_6c;

/// The pid of the replica holding the leadership lock now, if any.
fn leader_pid(pg: &Postgres, db: &str) -> Option<u32> {
    // `pg_locks` shows a bigint advisory key as class id (high 32 bits) and object id (low).
    let sql = format!(
        "SELECT l.holder FROM shoal_leader l WHERE EXISTS (SELECT 1 FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND classid = {} AND objid = {})",
        LEADER_LOCK_KEY >> 32,
        LEADER_LOCK_KEY & 0xffff_ffff
    );
    let held = rows(pg, db, &sql).ok()?;
    held.first()?.first()?.rsplit('-').next()?.parse().ok()
}

/// Runs the fault run `cfg`; `Ok(None)` when Postgres or Redis is not installed (outside CI).
pub async fn run(cfg: FaultConfig) -> Result<Option<FaultReport>, FaultError> {
    let cfg = Arc::new(cfg);
    let say = |m: String| {
        if cfg.verbose {
            eprintln!("[faults] {m}");
        }
    };
    let Some(mut pg) = Postgres::start()? else {
        return Ok(None);
    };
    let Some(redis) = Redis::start()? else {
        return Ok(None);
    };
    let url = pg.create_database()?;
    let db = url.rsplit('/').next().unwrap_or_default().to_string();
    let redis_url = redis.url();
    let mut env = vec![("SHOAL_ADMIN_TOKEN", TOKEN), ("RUST_LOG", "warn")];
    let mut args = vec![
        "--database-url",
        url.as_str(),
        "--redis-url",
        redis_url.as_str(),
        "--idle-timeout",
        "3s",
    ];
    let urls: Urls = Arc::new(RwLock::new(Vec::new()));
    let scratch = std::env::temp_dir().join(format!(
        "shoal-faults-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let fly = if cfg.fly {
        Some(crate::faultfly::FlyRun::start(&scratch, Arc::clone(&urls)).await?)
    } else {
        None
    };
    let fly_args: Vec<String> = match &fly {
        Some(f) => vec![
            "--config".into(),
            f.config.to_string_lossy().into_owned(),
            // The agents reach the replicas through the front: one URL whichever is up.
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--advertise-url".into(),
            f.front.clone(),
        ],
        None => Vec::new(),
    };
    if fly.is_some() {
        args.extend(fly_args.iter().map(String::as_str));
        env.push(("FLY_API_TOKEN", "fault-run-token"));
    }
    let mut replicas = Vec::new();
    for _ in 0..cfg.replicas {
        replicas.push(Server::start(&args, &env).await?);
    }
    let limits = json!({"max_sandboxes": cfg.max_sandboxes, "enqueue_rate_per_s": null,
        "jobs_per_month": null});
    for t in 0..cfg.tenants {
        let (st, v) = replicas[t % cfg.replicas]
            .send(
                Method::PUT,
                &format!("/v1/tenants/t{t}"),
                &json!({"plan": "enterprise", "limits": limits}),
            )
            .await?;
        check!(st == 201, "creating tenant t{t}: {st} {v}");
    }
    say(format!(
        "{} replicas up; {} tenants; enqueueing {} jobs with {} clients",
        cfg.replicas, cfg.tenants, cfg.jobs, cfg.clients
    ));

    *urls.write().unwrap_or_else(|e| e.into_inner()) =
        replicas.iter().map(|r| Some(r.url.clone())).collect();
    let ingress = Ingress::connect(&redis_url)
        .await
        .context("connecting the ingress queue")?;
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for me in 0..cfg.clients {
        clients.spawn(client(
            Arc::clone(&cfg),
            me,
            Arc::clone(&urls),
            ingress.clone(),
            Arc::clone(&done),
        ));
    }

    // Chaos while jobs flow and while the queue drains, until every job is finished and the
    // kills are done.
    let mut sent = Vec::new();
    let mut enqueue_s = None;
    let mut kills = 0;
    let mut leader_kills = 0;
    let mut pg_restarts = 0;
    let mut next_kill = Instant::now() + cfg.kill_every;
    let mut next_drain_check = Instant::now();
    let mut drain_deadline = None;
    let mut last_report = Instant::now();
    let total_s = loop {
        while let Some(r) = clients.try_join_next() {
            sent.push(r.context("a client task panicked")??);
        }
        let enqueued_all = sent.len() == cfg.clients;
        if enqueued_all && enqueue_s.is_none() {
            let s = t0.elapsed().as_secs_f64();
            enqueue_s = Some(s);
            drain_deadline = Some(Instant::now() + cfg.drain_timeout);
            say(format!("all {} jobs in after {s:.1}s", cfg.jobs));
        }
        if cfg.restart_postgres && pg_restarts == 0 && done.load(Ordering::Relaxed) >= cfg.jobs / 2
        {
            say(format!(
                "restarting Postgres at {} jobs",
                done.load(Ordering::Relaxed)
            ));
            tokio::task::block_in_place(|| pg.restart())?;
            pg_restarts += 1;
        }
        if Instant::now() >= next_kill {
            // Every other kill aims at the leader; the rest go round.
            let leader = tokio::task::block_in_place(|| leader_pid(&pg, &db));
            let i = leader
                .filter(|_| kills % 2 == 1)
                .and_then(|pid| replicas.iter().position(|r| r.pid() == Some(pid)))
                .unwrap_or(kills % cfg.replicas);
            let was_leader = leader.is_some() && leader == replicas[i].pid();
            urls.write().unwrap_or_else(|e| e.into_inner())[i] = None;
            replicas[i].kill()?;
            tokio::time::sleep(cfg.down_for).await;
            replicas[i].restart().await?;
            urls.write().unwrap_or_else(|e| e.into_inner())[i] = Some(replicas[i].url.clone());
            kills += 1;
            leader_kills += usize::from(was_leader);
            next_kill = Instant::now() + cfg.kill_every;
        }
        if enqueued_all && Instant::now() >= next_drain_check {
            next_drain_check = Instant::now() + Duration::from_millis(500);
            let states = tokio::task::block_in_place(|| {
                rows(&pg, &db, "SELECT state, count(*) FROM jobs GROUP BY state")
            })?;
            let open: i64 = states
                .iter()
                .filter(|r| r[0] == "queued" || r[0] == "running")
                .map(|r| r[1].parse::<i64>().unwrap_or(0))
                .sum();
            let stored: i64 = states
                .iter()
                .map(|r| r[1].parse::<i64>().unwrap_or(0))
                .sum();
            if cfg.verbose && last_report.elapsed() > Duration::from_secs(5) {
                last_report = Instant::now();
                say(format!(
                    "{:.0}s: {stored} stored, {open} open, {kills} kills",
                    t0.elapsed().as_secs_f64()
                ));
            }
            // Ingress messages still waiting are not stored yet: all must be.
            if open == 0 && stored as usize >= cfg.jobs && kills >= cfg.min_kills {
                break t0.elapsed().as_secs_f64();
            }
            if drain_deadline.is_some_and(|d| Instant::now() > d) {
                return Err(FaultError::Check(format!(
                    "jobs still open after {:?}: {states:?}\n{}",
                    cfg.drain_timeout,
                    replicas[0].log()
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last_job = Instant::now();
    say(format!("drained after {total_s:.1}s; checking"));
    let enqueue_s = enqueue_s.unwrap_or(total_s);

    let mut checks = Vec::new();
    // Every accepted job is stored once, terminal, with its own output.
    let jobs = tokio::task::block_in_place(|| {
        rows(
            &pg,
            &db,
            "SELECT id, state, idempotency_key, result::text, attempts FROM jobs",
        )
    })?;
    let accepted: Vec<&(String, Option<String>)> = sent.iter().flat_map(|s| &s.jobs).collect();
    check!(
        jobs.len() == accepted.len(),
        "the store holds {} jobs for {} accepted",
        jobs.len(),
        accepted.len()
    );
    let by_key: HashMap<&str, &Vec<String>> = jobs.iter().map(|r| (r[2].as_str(), r)).collect();
    check!(
        by_key.len() == jobs.len(),
        "an idempotency key made two jobs"
    );
    let mut extra_attempts = 0;
    for (key, id) in &accepted {
        let row = by_key
            .get(key.as_str())
            .ok_or_else(|| FaultError::Check(format!("accepted job {key} is not stored")))?;
        if let Some(id) = id {
            check!(
                &row[0] == id,
                "job {key} is {} but was accepted as {id}",
                row[0]
            );
        }
        check!(row[1] == "succeeded", "job {key} ended {}", row[1]);
        // COPY's text format escapes backslashes.
        let result: Value =
            serde_json::from_str(&row[3].replace("\\\\", "\\")).context("a job's result")?;
        check!(
            result["stdout"] == format!("{key}\n"),
            "job {key} has another's output: {result}"
        );
        extra_attempts += row[4].parse::<u64>().unwrap_or(1).saturating_sub(1);
    }
    let ids: HashSet<&str> = jobs.iter().map(|r| r[0].as_str()).collect();
    check!(ids.len() == jobs.len(), "a job id is stored twice");
    checks.push(format!(
        "all {} accepted jobs stored once, each succeeded with its own output",
        jobs.len()
    ));
    checks.push(format!(
        "{} idempotency keys, {} jobs: no key made two jobs",
        by_key.len(),
        jobs.len()
    ));

    // One recorded completion per job.
    let doubles = tokio::task::block_in_place(|| {
        rows(
            &pg,
            &db,
            "SELECT job_id, count(*) FROM job_completions GROUP BY job_id HAVING count(*) > 1",
        )
    })?;
    check!(doubles.is_empty(), "jobs completed twice: {doubles:?}");
    let completions = tokio::task::block_in_place(|| {
        rows(
            &pg,
            &db,
            "SELECT count(DISTINCT job_id), count(*) FROM job_completions",
        )
    })?;
    let completions: usize = completions[0][1].parse().context("a count")?;
    check!(
        completions == jobs.len(),
        "{completions} completions recorded for {} jobs",
        jobs.len()
    );
    checks.push(format!("{completions} completions recorded, one per job"));

    // The usage report equals the ledger's total computed here, independently. Sandboxes may
    // still stop (idle) while the two are read: the pair counts only when the ledger did not
    // move in between.
    let fmt = |t: i64| {
        chrono::DateTime::from_timestamp_millis(t)
            .map(|d| d.to_rfc3339().replace('+', "%2B"))
            .unwrap_or_default()
    };
    let live = replicas
        .iter()
        .find(|r| r.pid().is_some())
        .context("no replica is running")?;
    let read_ledger = || {
        tokio::task::block_in_place(|| {
            rows(
                &pg,
                &db,
                "SELECT sandbox_id, at, kind FROM ledger ORDER BY seq",
            )
        })
    };
    let mut tries = 0;
    let (ledger, reported, ledger_s) = loop {
        tries += 1;
        let ledger = read_ledger()?;
        let now = chrono::Utc::now().timestamp_millis();
        let (from, to) = (now - 3_600_000, now - 1);
        let mut open: HashMap<&str, i64> = HashMap::new();
        let mut total_ms: i64 = 0;
        for r in &ledger {
            let at: i64 = r[1].parse().context("a ledger time")?;
            if r[2] == "running" {
                open.entry(r[0].as_str()).or_insert(at);
            } else if let Some(start) = open.remove(r[0].as_str()) {
                total_ms += (at.min(to) - start.max(from)).max(0);
            }
        }
        // Sandboxes still running at the report's end are counted to `to` by both.
        for start in open.values() {
            total_ms += (to - start.max(&from)).max(0);
        }
        let u = live
            .get(&format!(
                "/v1/usage?granularity=hour&from={}&to={}",
                fmt(from),
                fmt(to)
            ))
            .await?;
        let reported = u["total"]["sandbox_seconds"]
            .as_f64()
            .context("no total in the usage report")?;
        let ledger_s = total_ms as f64 / 1000.0;
        if read_ledger()?.len() == ledger.len() || tries >= 20 {
            break (ledger, reported, ledger_s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let equal = (reported - ledger_s).abs() < 0.002;
    check!(equal, "usage {reported} s, ledger {ledger_s} s");
    checks.push(format!(
        "usage report {reported:.3} sandbox-s = ledger {ledger_s:.3} sandbox-s ({} ledger rows)",
        ledger.len()
    ));

    let fly_figures = match &fly {
        Some(f) => Some(
            f.check(
                last_job,
                |sql| tokio::task::block_in_place(|| rows(&pg, &db, sql)),
                &mut checks,
            )
            .await?,
        ),
        None => None,
    };
    drop(fly);
    let _ = std::fs::remove_dir_all(&scratch);

    let epochs = tokio::task::block_in_place(|| rows(&pg, &db, "SELECT epoch FROM shoal_leader"))?;
    let via_ingress = accepted.iter().filter(|(_, id)| id.is_none()).count();
    Ok(Some(FaultReport {
        replicas: cfg.replicas,
        tenants: cfg.tenants,
        jobs: jobs.len(),
        via_http: jobs.len() - via_ingress,
        via_ingress,
        repeats: sent.iter().map(|s| s.repeats).sum(),
        kills,
        leader_kills,
        postgres_restarts: pg_restarts,
        leader_epochs: epochs
            .first()
            .and_then(|r| r.first())
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        enqueue_s,
        total_s,
        jobs_per_s: jobs.len() as f64 / total_s,
        extra_attempts,
        completions,
        usage_sandbox_s: reported,
        ledger_sandbox_s: ledger_s,
        fly: fly_figures,
        checks,
    }))
}
