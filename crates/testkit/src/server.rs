//! Runs the real `shoal serve` binary for end-to-end tests: a fresh data directory, a spare
//! loopback port, a known admin token, and helpers to call its API and wait for conditions.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running scheduler.
pub struct Server {
    /// The scheduler's base URL.
    pub url: String,
    /// Its admin token.
    pub token: String,
    /// Its data directory (database, logs).
    pub data_dir: PathBuf,
    child: Option<Child>,
    _dir: Option<tempfile_dir::TempDir>,
    http: reqwest::Client,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Where `shoal` and `shoal-agent` are taken from; the running binary's target directory
    /// when `None`.
    bins: Option<PathBuf>,
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

mod tempfile_dir {
    //! A directory removed on drop (kept when `SHOAL_KEEP_TEST_DIRS` is set, for debugging).
    use std::path::PathBuf;

    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            let base = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&base)?;
            Ok(TempDir(base))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            if std::env::var_os("SHOAL_KEEP_TEST_DIRS").is_none() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

/// Set in a [`Server`]'s environment by [`Server::start_unready`]: wait for `/healthz` only.
const UNREADY: &str = "SHOAL_TEST_START_UNREADY";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Server {
    /// Starts `shoal serve` with the given extra flags and environment.
    pub async fn start(extra_args: &[&str], env: &[(&str, &str)]) -> Result<Server> {
        Self::start_from(None, extra_args, env).await
    }

    /// Starts `shoal serve` as [`Server::start`] does, with the `shoal` and `shoal-agent` binaries
    /// of directory `bins` when given (a benchmark comparing two builds in one run).
    pub async fn start_from(
        bins: Option<&Path>,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server> {
        let dir = tempfile_dir::TempDir::new("shoal-e2e")?;
        // Replicas share one admin token: a caller may pass it in `env`.
        let token = env
            .iter()
            .find(|(k, _)| *k == "SHOAL_ADMIN_TOKEN")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| format!("test-admin-{}", rand::random::<u64>()));
        let mut s = Server {
            url: String::new(),
            token,
            data_dir: dir.0.clone(),
            child: None,
            _dir: Some(dir),
            http: reqwest::Client::new(),
            args: extra_args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bins: bins.map(Path::to_path_buf),
        };
        s.spawn().await?;
        Ok(s)
    }

    /// Starts `shoal serve` like [`Server::start`], but answers as soon as the process is alive
    /// (`/healthz`), ready or not: for a scheduler started while its database is down.
    pub async fn start_unready(extra_args: &[&str], env: &[(&str, &str)]) -> Result<Server> {
        let mut env = env.to_vec();
        env.push((UNREADY, "1"));
        Server::start(extra_args, &env).await
    }

    /// Starts the scheduler again on the same data directory and token (after [`Server::stop`]
    /// or [`Server::kill`]), on a new port.
    pub async fn restart(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "still running");
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<()> {
        let (shoal, agent) = match &self.bins {
            Some(dir) => (dir.join("shoal"), dir.join("shoal-agent")),
            None => (
                crate::bins::binary("shoal-scheduler", "shoal"),
                crate::bins::binary("shoal-agent", "shoal-agent"),
            ),
        };
        // A caller that passes its own `--listen` (say `127.0.0.1:0`) gets no advertise URL
        // either, as a user starting `shoal serve` would; the URL is then read from what the
        // scheduler prints.
        let own_listen = !self.args.iter().any(|a| a == "--listen");
        let port = free_port();
        let mut cmd = Command::new(shoal);
        cmd.arg("serve");
        if own_listen {
            cmd.args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--advertise-url", &format!("http://127.0.0.1:{port}")]);
        }
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("SHOAL_ADMIN_TOKEN", &self.token)
            .env("SHOAL_AGENT_BIN", agent)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(append(&self.data_dir.join("serve.log"))?)
            .stderr(append(&self.data_dir.join("serve.err"))?);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log_start = std::fs::metadata(self.data_dir.join("serve.log")).map_or(0, |m| m.len());
        self.child = Some(cmd.spawn().context("starting shoal serve")?);
        self.url = if own_listen {
            format!("http://127.0.0.1:{port}")
        } else {
            String::new()
        };
        self.wait_ready(log_start as usize).await
    }

    /// The API's base URL as the scheduler printed it at start (`  API:  http://ADDR/v1 ...`),
    /// in what it wrote to `serve.log` past `from`.
    fn printed_url(&self, from: usize) -> Option<String> {
        let log = std::fs::read_to_string(self.data_dir.join("serve.log")).ok()?;
        let line = log
            .get(from..)?
            .lines()
            .find(|l| l.trim_start().starts_with("API:"))?;
        let url = line.split_whitespace().nth(1)?;
        Some(url.trim_end_matches("/v1").to_string())
    }

    /// Sets an environment variable for the next [`Server::restart`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Kills the scheduler with SIGKILL: no clean shutdown.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("not running")
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    async fn wait_ready(&mut self, log_start: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.url.is_empty() {
                self.url = self.printed_url(log_start).unwrap_or_default();
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("shoal serve exited with {status}: {}", self.log());
            }
            let probe = if self.env.iter().any(|(k, _)| k == UNREADY) {
                "healthz"
            } else {
                "readyz"
            };
            if !self.url.is_empty()
                && let Ok(r) = self.http.get(format!("{}/{probe}", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("shoal serve not ready within 30s: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's stdout and stderr so far.
    /// Writes `name` into the working directory of job `job_id`'s sandbox, when that sandbox is
    /// one of this scheduler's process sandboxes (a confined job sees only its own `/work`, so a
    /// test hands it a flag there); `false` when the sandbox is not here.
    pub async fn write_in_job_sandbox(&self, job_id: &str, name: &str) -> Result<bool> {
        let job = self.get(&format!("/v1/jobs/{job_id}")).await?;
        let sandbox = job["sandbox_id"]
            .as_str()
            .with_context(|| format!("job {job_id} has no sandbox yet: {job}"))?;
        let work = self.data_dir.join("sandboxes").join(sandbox).join("work");
        if !work.is_dir() {
            return Ok(false);
        }
        std::fs::write(work.join(name), b"")?;
        Ok(true)
    }

    /// The scheduler's output so far (stdout and stderr), for a failing test's message.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.data_dir.join(n)).unwrap_or_default();
        format!("{}\n{}", read("serve.log"), read("serve.err"))
    }

    /// A request with the admin token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// A request with no token.
    pub fn anon(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// GET with the admin token, expecting 2xx JSON.
    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self.req(reqwest::Method::GET, path).send().await?;
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {v}");
        }
        Ok(v)
    }

    /// Sends `body` with the admin token; returns status and JSON.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value)> {
        let r = self.req(method, path).json(body).send().await?;
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// Enqueues an `agent` job of `tenant` running `sh -c cmd`; its id, or an error unless the
    /// scheduler admitted it (202).
    pub async fn enqueue_sh(&self, tenant: &str, cmd: &str) -> Result<String> {
        let body = serde_json::json!({"tenant": tenant, "kind": "agent",
            "spec": {"command": ["sh", "-c", cmd]}});
        let (status, v) = self.send(reqwest::Method::POST, "/v1/jobs", &body).await?;
        anyhow::ensure!(status == 202, "enqueue answered {status}: {v}");
        v["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no job id in {v}"))
    }

    /// Polls `check` every 50 ms until it gives `Some`, for at most `timeout`.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pid of the scheduler process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends SIGTERM and waits for a clean exit.
    #[allow(unsafe_code)] // libc calls; each block says why it is sound
    pub async fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("already stopped")
        };
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "shoal serve did not stop within 90s after SIGTERM: {}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pids of live processes whose working directory is under `dir` (sandbox agents and their jobs).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie has exited; it is only waiting to be reaped.
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie
                && (std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(&dir))
                    || confined_under(*pid, &dir))
        })
        .collect()
}

/// Whether process `pid` runs in a bubblewrap sandbox whose `/work` is bound from under `dir`:
/// such a process's working directory reads `/work`, so it is found by its mounts instead. A
/// mount's root is its path within its own filesystem, so the host path under `dir` ends with it:
/// it matches when it starts with some trailing part of `dir` (all of it, when the filesystem is
/// the root one).
fn confined_under(pid: u32, dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return false;
    };
    let tails: Vec<PathBuf> = (0..dir.components().count())
        .map(|skip| dir.components().skip(skip).collect::<PathBuf>())
        .map(|tail| Path::new("/").join(tail))
        .filter(|tail| tail != Path::new("/"))
        .collect();
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            return false;
        };
        *point == "/work" && tails.iter().any(|t| Path::new(root).starts_with(t))
    })
}
