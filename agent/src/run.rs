//! The agent's work loop: lease a job, run it while heartbeating, report, repeat; exit when the
//! scheduler says stop. On SIGTERM an idle agent exits at once and a busy one lets its job finish
//! within a grace period, else stops it and hands the job back.

use crate::client::{Client, CompleteAnswer};
use crate::logship::{self, LogBuffer};
use crate::tail::Tail;
use anyhow::{Context, Result};
use shoal_protocol::{
    AgentResult, AgentSpec, Assignment, Completion, Heartbeat, JobError, JobUsage, LeaseRequest,
    LeaseResponse, OUTPUT_TAIL_BYTES, Outcome,
};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// The scheduler's URL.
    #[arg(long, env = shoal_protocol::env::URL)]
    url: String,
    /// This sandbox's token.
    #[arg(long, env = shoal_protocol::env::SANDBOX_TOKEN, hide_env_values = true)]
    token: String,
    /// How long a lease request waits on the scheduler for work.
    #[arg(long, env = "SHOAL_AGENT_POLL", default_value = "20s", value_parser = humantime_secs)]
    poll: Duration,
    /// How long a running job may go on after SIGTERM before it is stopped and handed back.
    #[arg(long, env = "SHOAL_AGENT_GRACE", default_value = "10s", value_parser = humantime_secs)]
    grace: Duration,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>()
        .map(|v| Duration::from_secs_f64(v * mult))
        .map_err(|e| format!("bad duration `{s}`: {e}"))
}

impl RunArgs {
    /// The arguments when no subcommand was given: everything comes from the environment.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        <Only as clap::Parser>::parse_from(["shoal-agent"]).args
    }
}

pub fn main(args: RunArgs) -> i32 {
    hide_own_memory();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-agent: {e}");
            return 2;
        }
    };
    match rt.block_on(work(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shoal-agent: {e:#}");
            1
        }
    }
}

/// Makes this process undumpable, so the jobs it runs (same user) cannot read its environment,
/// which holds the sandbox token, through `/proc/<agent>/environ`, nor attach to it. The job's
/// own processes are dumpable again: exec resets the flag.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn hide_own_memory() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "shoal-agent: could not make the agent undumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

async fn shutdown_signal(tx: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tx.send_replace(true);
}

async fn work(args: RunArgs) -> Result<()> {
    let client = Client::new(&args.url, &args.token)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(shutdown_signal(stop_tx));
    let mut backoff = Duration::from_millis(100);
    // The next job, when the last completion's answer carried it.
    let mut next: Option<LeaseResponse> = None;
    loop {
        if *stop_rx.borrow() {
            return Ok(());
        }
        let mut stop = stop_rx.clone();
        let lease = match next.take() {
            // `idle` there was taken without waiting: ask again by a (waiting) lease.
            Some(answer) if !matches!(answer, LeaseResponse::Idle) => Ok(answer),
            _ => tokio::select! {
                r = client.lease(args.poll) => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            },
        };
        match lease {
            Ok(LeaseResponse::Stop) => return Ok(()),
            Ok(LeaseResponse::Idle) => backoff = Duration::from_millis(100),
            Ok(LeaseResponse::Run(a)) => {
                backoff = Duration::from_millis(100);
                let ran = execute(&client, &a, stop_rx.clone(), args.grace).await;
                if let Some(ran) = ran {
                    let ask_next = !*stop_rx.borrow();
                    next = report(&client, &a, ran, ask_next).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot reach the scheduler; retrying");
                let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                let mut stop = stop_rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The outcome as it can be recorded: a result over the scheduler's size or depth bound becomes
/// a failure with the code `result_too_large`, so the job ends at once instead of being refused
/// on every try until its lease lapses.
pub fn recordable(outcome: Outcome) -> Outcome {
    let result = match &outcome {
        Outcome::Succeeded { result }
        | Outcome::Failed {
            result: Some(result),
            ..
        } => result,
        _ => return outcome,
    };
    let text = serde_json::to_string(result).unwrap_or_default();
    match shoal_protocol::result_too_large(&text) {
        Some(error) => Outcome::Failed {
            result: None,
            error,
        },
        None => outcome,
    }
}

/// Reports an outcome, retrying while the scheduler cannot be reached. One the scheduler refuses
/// as it is (too large, malformed) is reported once more as a failure saying why, without its
/// result. With `ask_next`, the completion also asks for the sandbox's next job, and the answer
/// to that is returned (a scheduler that does not know how answers without it: `None`).
async fn report(
    client: &Client,
    a: &Assignment,
    ran: Ran,
    ask_next: bool,
) -> Option<LeaseResponse> {
    let mut c = Completion {
        job_id: a.job_id.clone(),
        lease_id: a.lease_id.clone(),
        outcome: recordable(ran.outcome),
        next: ask_next.then(LeaseRequest::default),
        usage: ran.usage,
    };
    let mut wait = Duration::from_millis(100);
    let mut refused_before = false;
    for _ in 0..40 {
        match client.complete(&c).await {
            Ok(CompleteAnswer::Recorded(next)) => return next,
            Ok(CompleteAnswer::Stale) => {
                tracing::info!(job = %a.job_id, "completion refused: the lease moved on");
                return None;
            }
            Ok(CompleteAnswer::Refused { status, message }) => {
                tracing::warn!(job = %a.job_id, status, %message, "completion refused");
                if refused_before {
                    return None;
                }
                refused_before = true;
                let code = if status == 413 {
                    shoal_protocol::RESULT_TOO_LARGE
                } else {
                    "completion_refused"
                };
                c.outcome = Outcome::Failed {
                    result: None,
                    error: JobError::new(
                        code,
                        format!("the scheduler refused the job's completion ({status}): {message}"),
                    ),
                };
            }
            Err(e) => {
                tracing::warn!(job = %a.job_id, error = %format!("{e:#}"), "reporting failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    None
}

/// Why a running job was interrupted.
enum Interrupt {
    Cancelled,
    LeaseLost,
    Shutdown,
}

/// Heartbeats until the job is cancelled or its lease is lost; returns why it stopped.
async fn heartbeat_until_interrupted(client: &Client, a: &Assignment) -> Interrupt {
    let hb = Heartbeat {
        job_id: a.job_id.clone(),
        lease_id: a.lease_id.clone(),
    };
    let every = Duration::from_millis(a.heartbeat_ms.max(100));
    let mut failures = 0;
    loop {
        tokio::time::sleep(every).await;
        match client.heartbeat(&hb).await {
            Ok(r) if r.cancel => return Interrupt::Cancelled,
            Ok(r) if !r.ok => return Interrupt::LeaseLost,
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(job = %a.job_id, failures, error = %format!("{e:#}"), "heartbeat failed");
            }
        }
    }
}

/// How long a finished job's last output may take to ship before its outcome is reported anyway.
const LAST_OUTPUT_WAIT: Duration = Duration::from_secs(30);

/// Runs one job while its output is shipped; `None` when there is nothing to report (cancelled,
/// or the lease was lost).
async fn execute(
    client: &Client,
    a: &Assignment,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> Option<Ran> {
    let log = LogBuffer::new(a.log_max_bytes);
    let mut shipper = tokio::spawn(logship::ship(
        client.clone(),
        a.job_id.clone(),
        a.lease_id.clone(),
        Arc::clone(&log),
    ));
    let outcome = supervise(client, a, stop, grace, Arc::clone(&log)).await;
    if outcome.is_some() {
        // The job's output is all in before its end is reported, so that whoever reads the log
        // once the job has ended reads all of it.
        log.close();
        if tokio::time::timeout(LAST_OUTPUT_WAIT, &mut shipper)
            .await
            .is_err()
        {
            tracing::warn!(job = %a.job_id, "the last output could not be shipped in time");
        }
    }
    shipper.abort();
    outcome
}

/// Runs the job's work against heartbeats and the agent's own shutdown.
async fn supervise(
    client: &Client,
    a: &Assignment,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    log: Arc<LogBuffer>,
) -> Option<Ran> {
    let work = run_kind(a, log);
    tokio::pin!(work);
    let interrupt = tokio::select! {
        outcome = &mut work => return Some(outcome.0),
        i = heartbeat_until_interrupted(client, a) => i,
        _ = stop.wait_for(|s| *s) => Interrupt::Shutdown,
    };
    match interrupt {
        Interrupt::Cancelled | Interrupt::LeaseLost => {
            // Dropping the work kills the command's process group (see `Running`).
            None
        }
        Interrupt::Shutdown => {
            let finished = tokio::select! {
                outcome = &mut work => Some(outcome.0),
                _ = tokio::time::sleep(grace) => None,
                _ = heartbeat_until_interrupted(client, a) => return None,
            };
            Some(finished.unwrap_or_else(|| Ran {
                outcome: Outcome::Retry {
                    error: JobError::new(
                        "agent_shutdown",
                        "the sandbox is stopping; the job goes back to the queue",
                    ),
                },
                usage: None,
            }))
        }
    }
}

/// How a job's attempt ended and what it used.
pub struct Ran {
    /// How it ended.
    outcome: Outcome,
    /// What it used, when it was measured.
    usage: Option<JobUsage>,
}

/// The outcome of running a job, wrapped so that dropping the future kills its process.
struct Done(Ran);

async fn run_kind(a: &Assignment, log: Arc<LogBuffer>) -> Done {
    if a.kind == "agent" {
        return Done(match serde_json::from_str::<AgentSpec>(a.spec.get()) {
            Ok(spec) => run_command(&spec, a.timeout_s, log).await,
            Err(e) => Ran {
                outcome: Outcome::Failed {
                    result: None,
                    error: JobError::new("invalid_spec", e.to_string()),
                },
                usage: None,
            },
        });
    }
    // The analyses run in the agent's own process: measured by the cgroup, where there is one.
    let meter = crate::usage::CgroupMeter::start();
    let started = Instant::now();
    let outcome = match a.kind.as_str() {
        "semantic_diff" => {
            analysis(a.spec.clone(), |s| {
                shoal_semdiff::run_spec(s.get()).map_err(|e| e.to_string())
            })
            .await
        }
        "flaky_analysis" => {
            analysis(a.spec.clone(), |s| {
                let spec = serde_json::from_str(s.get()).map_err(|e| e.to_string())?;
                shoal_flaky::run_spec(&spec).map_err(|e| e.to_string())
            })
            .await
        }
        other => Outcome::Failed {
            result: None,
            error: JobError::new(
                "unsupported_kind",
                format!("this agent cannot run `{other}` jobs"),
            ),
        },
    };
    let usage = crate::usage::measure(meter, None, started.elapsed(), false);
    Done(Ran { outcome, usage })
}

async fn analysis(
    spec: std::sync::Arc<serde_json::value::RawValue>,
    f: impl FnOnce(std::sync::Arc<serde_json::value::RawValue>) -> Result<serde_json::Value, String>
    + Send
    + 'static,
) -> Outcome {
    match tokio::task::spawn_blocking(move || f(spec)).await {
        Ok(Ok(result)) => Outcome::Succeeded { result },
        Ok(Err(e)) => Outcome::Failed {
            result: None,
            error: JobError::new("invalid_spec", e),
        },
        Err(e) => Outcome::Failed {
            result: None,
            error: JobError::new("engine_panicked", e.to_string()),
        },
    }
}

/// Kills a command's whole process group when dropped, so an interrupted job leaves nothing behind.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    #[allow(unsafe_code)] // libc calls; each block says why it is sound
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the process group the command leads.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

fn resolve_workdir(dir: Option<&str>) -> Result<PathBuf> {
    let base = std::env::current_dir().context("sandbox directory")?;
    let Some(dir) = dir else { return Ok(base) };
    let p = Path::new(dir);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::fs::create_dir_all(&p).with_context(|| format!("creating workdir {}", p.display()))?;
    Ok(p)
}

/// Reads one of the command's pipes to its end: into its own tail (for the result) and into the
/// job's shipped output, interleaved with the other pipe as the reads come.
async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, log: Arc<LogBuffer>) -> Tail {
    let mut tail = Tail::new(OUTPUT_TAIL_BYTES);
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.push(&buf[..n]);
        log.push(&buf[..n]);
    }
    tail
}

#[allow(unsafe_code)] // libc calls; each block says why it is sound
async fn run_command(spec: &AgentSpec, job_timeout_s: u64, log: Arc<LogBuffer>) -> Ran {
    let failed = |code: &str, message: String| Ran {
        outcome: Outcome::Failed {
            result: None,
            error: JobError::new(code, message),
        },
        usage: None,
    };
    let Some((program, args)) = spec.command.split_first() else {
        return failed("invalid_spec", "command is empty".into());
    };
    let workdir = match resolve_workdir(spec.workdir.as_deref()) {
        Ok(d) => d,
        Err(e) => return failed("invalid_spec", format!("{e:#}")),
    };
    // A std command, waited for by `wait4` (which also gives the processes' resource usage);
    // its pipes are read by tokio.
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .current_dir(workdir)
        .env_remove(shoal_protocol::env::SANDBOX_TOKEN)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on the child; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let ooms_before = oom_kills();
    let meter = crate::usage::CgroupMeter::start();
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed("spawn_failed", format!("cannot run `{program}`: {e}")),
    };
    let pid = child.id() as i32;
    let mut guard = GroupGuard(Some(pid));
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let out = tokio::spawn(pump_std(stdout, Arc::clone(&log)));
    let err = tokio::spawn(pump_std(stderr, log));
    // Reaps the command whatever happens to this future: a dropped job's group is killed by the
    // guard, and this thread then collects it.
    let mut waited = tokio::task::spawn_blocking(move || crate::usage::wait_for(pid));
    let timeout = Duration::from_secs(spec.timeout_s.unwrap_or(job_timeout_s).max(1));
    let (waited, timed_out) = match tokio::time::timeout(timeout, &mut waited).await {
        Ok(w) => (w, false),
        Err(_) => {
            drop(guard);
            guard = GroupGuard(None);
            (waited.await, true)
        }
    };
    let wall = started.elapsed();
    // The command is done; anything it left in its group goes too.
    drop(guard);
    drop(child);
    let (status, rusage) = match waited {
        Ok(Ok((status, rusage))) => (Some(status), Some(rusage)),
        _ => (None, None),
    };
    let (out, err) = (
        out.await.unwrap_or_else(|_| Tail::new(0)),
        err.await.unwrap_or_else(|_| Tail::new(0)),
    );
    use std::os::unix::process::ExitStatusExt;
    let result = AgentResult {
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout: out.text(),
        stderr: err.text(),
        duration_ms: wall.as_millis() as u64,
        truncated: out.truncated() || err.truncated(),
    };
    // SIGKILL while the sandbox's cgroup counted a new OOM kill: the kernel killed it for memory.
    let oom_killed = result.signal == Some(libc::SIGKILL) && oom_kills() > ooms_before;
    let usage = crate::usage::measure(meter, rusage, wall, oom_killed);
    let value = serde_json::to_value(&result).unwrap_or_default();
    let outcome = if timed_out {
        Outcome::Failed {
            result: Some(value),
            error: JobError::new(
                "timeout",
                format!("the command ran past {}s and was killed", timeout.as_secs()),
            ),
        }
    } else {
        match result.exit_code {
            Some(0) => Outcome::Succeeded { result: value },
            Some(code) => Outcome::Failed {
                result: Some(value),
                error: JobError::new("exit_code", format!("the command exited with {code}")),
            },
            None if oom_killed => Outcome::Failed {
                result: Some(value),
                error: JobError::new(
                    "oom_killed",
                    "the command used more memory than the sandbox has and was killed (out of memory)",
                ),
            },
            None => Outcome::Failed {
                result: Some(value),
                error: JobError::new(
                    "signal",
                    format!(
                        "the command was killed by signal {}",
                        result.signal.unwrap_or(0)
                    ),
                ),
            },
        }
    };
    Ran { outcome, usage }
}

/// [`pump`] for one of a std child's pipes (none: an empty tail).
async fn pump_std<R>(r: Option<R>, log: Arc<LogBuffer>) -> Tail
where
    R: Into<std::os::fd::OwnedFd>,
{
    let Some(r) = r else { return Tail::new(0) };
    let fd: std::os::fd::OwnedFd = r.into();
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(pipe) => pump(pipe, log).await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the command's output");
            Tail::new(0)
        }
    }
}

/// OOM kills the sandbox's memory cgroup has counted (cgroup v2 `memory.events`, else v1
/// `memory.oom_control`); 0 where neither is readable (a process sandbox outside a cgroup limit).
pub(crate) fn oom_kills() -> u64 {
    [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .find_map(|text| {
        text.lines().find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse().ok())
        })
    })
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_result_too_deep_or_too_large_ends_the_job_as_result_too_large() {
        let mut deep = json!(1);
        for _ in 0..125 {
            deep = json!([deep]);
        }
        let big = json!({"s": "x".repeat(shoal_protocol::MAX_RESULT_BYTES)});
        for result in [deep, big] {
            match recordable(Outcome::Succeeded { result }) {
                Outcome::Failed {
                    result: None,
                    error,
                } => {
                    assert_eq!(
                        error.code,
                        shoal_protocol::RESULT_TOO_LARGE,
                        "{}",
                        error.message
                    )
                }
                other => panic!("kept: {:?}", std::mem::discriminant(&other)),
            }
        }
        let ok =
            json!({"equal": false, "changes": [{"op": "added", "path": "/a", "after": [[1]]}]});
        match recordable(Outcome::Succeeded { result: ok.clone() }) {
            Outcome::Succeeded { result } => assert_eq!(result, ok),
            _ => panic!("a small result was refused"),
        }
    }
}
