//! Ephemeral Postgres and Redis servers for tests: each on a spare 127.0.0.1 port with its files
//! in a temporary directory, stopped and removed on drop.
//!
//! Postgres is started with `initdb` and `postgres` from `/usr/lib/postgresql/*/bin` (or `PATH`).
//! Postgres refuses to run as root, so under root the server runs as the `postgres` OS user that
//! Debian's package creates (or a `shoal-pg` system user made on first use). Redis runs
//! `redis-server` with persistence off unless asked for.
//!
//! A missing server binary makes [`Postgres::start`] and [`Redis::start`] answer `Ok(None)`, so a
//! developer without the server sees the test skip with a message; under `CI=true` it is an error,
//! so CI can never pass by skipping.

use anyhow::{Context, Result, bail};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `Ok(None)` with a note when a server is not installed, an error under CI.
fn missing<T>(what: &str) -> Result<Option<T>> {
    if in_ci() {
        bail!("{what} is not installed, and CI=true requires it (scripts/test installs it)");
    }
    eprintln!("skipping: {what} is not installed (scripts/test installs it)");
    Ok(None)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A fresh directory under the system's temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("SHOAL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Waits until something accepts TCP connections on `port`, or the child exits.
fn wait_for_port(child: &mut Child, port: u16, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{what} exited with {status} before accepting connections:\n{tail}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not accept connections on port {port} in {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a child: SIGTERM, a grace period, then SIGKILL.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn stop_child(child: &mut Child, signal: libc::c_int) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The OS user Postgres runs as when we are root: (uid, gid).
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn postgres_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let lookup = |name: &str| -> Option<(u32, u32)> {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, name]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        Some((id("-u")?, id("-g")?))
    };
    if let Some(ids) = lookup("postgres") {
        return Ok(Some(ids));
    }
    if let Some(ids) = lookup("shoal-pg") {
        return Ok(Some(ids));
    }
    let status = Command::new("useradd")
        .args(["--system", "--no-create-home", "--user-group", "shoal-pg"])
        .status()
        .context("running useradd")?;
    if !status.success() && lookup("shoal-pg").is_none() {
        bail!("could not create the shoal-pg user to run Postgres as");
    }
    lookup("shoal-pg")
        .map(Some)
        .context("the shoal-pg user vanished")
}

/// The directory holding `initdb` and `postgres`: the newest `/usr/lib/postgresql/*/bin`, else
/// wherever `PATH` has them.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let initdb = find_on_path("initdb")?;
    let dir = initdb.parent()?.to_path_buf();
    dir.join("postgres").is_file().then_some(dir)
}

/// A Postgres server of its own, with trust authentication for the `postgres` role.
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    child: Child,
    next_db: std::sync::atomic::AtomicU32,
    data: PathBuf,
    log: PathBuf,
    user: Option<(u32, u32)>,
    _dir: Scratch,
}

/// The `postgres` command for a test server: no fsync (the tests crash the server, never the
/// machine), but commits wait for their WAL write, so a crashed server keeps every transaction it
/// acknowledged; enough connections for several pools; run as `user` when we are root.
fn server_command(
    bin: &Path,
    data: &Path,
    port: u16,
    socket_dir: &Path,
    log: &Path,
    user: Option<(u32, u32)>,
) -> Result<Command> {
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-h", "127.0.0.1"])
        .arg("-k")
        .arg(socket_dir)
        .args([
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]);
    // A benchmark that breaks a job's cost down by statement asks for `pg_stat_statements`.
    if std::env::var_os("SHOAL_PG_STAT_STATEMENTS").is_some() {
        cmd.args(["-c", "shared_preload_libraries=pg_stat_statements"]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(
        std::fs::OpenOptions::new()
            .append(true)
            .open(log)
            .context("opening the Postgres log")?,
    );
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
    }
    Ok(cmd)
}

impl Postgres {
    /// The server's (postmaster's) process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a server; `Ok(None)` if Postgres is not installed (an error under `CI=true`).
    pub fn start() -> Result<Option<Postgres>> {
        let Some(bin) = postgres_bin_dir() else {
            return missing("Postgres (initdb, postgres)");
        };
        let dir = Scratch::new("shoal-pg")?;
        let data = dir.0.join("data");
        let log = dir.0.join("postgres.log");
        let user = postgres_user()?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid))?;
        }
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                use std::os::unix::process::CommandExt;
                cmd.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        as_user(&mut initdb);
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
        }
        let status = initdb.status().context("running initdb")?;
        if !status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("initdb failed ({status}):\n{tail}");
        }
        let port = crate::server::free_port();
        let mut child = server_command(&bin, &data, port, &dir.0, &log, user)?
            .spawn()
            .context("starting postgres")?;
        if let Err(e) = wait_for_port(&mut child, port, "postgres", &log) {
            stop_child(&mut child, libc::SIGKILL);
            return Err(e);
        }
        let pg = Postgres {
            port,
            bin,
            child,
            next_db: std::sync::atomic::AtomicU32::new(0),
            data,
            log,
            user,
            _dir: dir,
        };
        pg.wait_queries()?;
        Ok(Some(pg))
    }

    /// Restarts the server as an outage would: an immediate shutdown (no checkpoint, connections
    /// cut), then a start on the same data and port.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.resume().context("restarting postgres")
    }

    /// Stops the server (an immediate shutdown) until [`Postgres::resume`]; its port stays
    /// reserved for it but nothing listens there meanwhile.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, libc::SIGQUIT);
    }

    /// Starts a stopped server again on the same data and port, and waits until it answers.
    pub fn resume(&mut self) -> Result<()> {
        self.child = server_command(
            &self.bin,
            &self.data,
            self.port,
            &self._dir.0,
            &self.log,
            self.user,
        )?
        .spawn()
        .context("resuming postgres")?;
        wait_for_port(&mut self.child, self.port, "postgres", &self.log)?;
        self.wait_queries()
    }

    fn wait_queries(&self) -> Result<()> {
        let pg = self;
        // Accepting TCP is not quite ready for queries while it starts up: wait for a query.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = pg.psql("postgres", "SELECT 1")?;
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not answer queries: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn psql(&self, db: &str, sql: &str) -> Result<std::process::Output> {
        let psql = [self.bin.join("psql"), PathBuf::from("psql")]
            .into_iter()
            .find(|p| p.is_file() || find_on_path(&p.to_string_lossy()).is_some())
            .context("psql not found")?;
        Command::new(psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt"])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")
    }

    /// Runs SQL against database `db` and answers its output.
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        let out = self.psql(db, sql)?;
        if !out.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The port Postgres listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new empty database and answers its URL.
    pub fn create_database(&self) -> Result<String> {
        let n = self
            .next_db
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("test_{n}");
        self.query("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown; the data is thrown away anyway.
        stop_child(&mut self.child, libc::SIGQUIT);
    }
}

/// A Redis server of its own.
pub struct Redis {
    port: u16,
    persistent: bool,
    child: Child,
    dir: Scratch,
}

impl Redis {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a server with persistence off; `Ok(None)` if Redis is not installed (an error
    /// under `CI=true`).
    pub fn start() -> Result<Option<Redis>> {
        Self::start_with(false)
    }

    /// Starts a server that keeps its data across [`Redis::restart`] (append-only file, synced on
    /// every write), as a production ingress queue should be run.
    pub fn start_persistent() -> Result<Option<Redis>> {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Result<Option<Redis>> {
        if find_on_path("redis-server").is_none() {
            return missing("redis-server");
        }
        let dir = Scratch::new("shoal-redis")?;
        let port = crate::server::free_port();
        let child = Self::spawn(&dir.0, port, persistent)?;
        Ok(Some(Redis {
            port,
            persistent,
            child,
            dir,
        }))
    }

    fn spawn(dir: &Path, port: u16, persistent: bool) -> Result<Child> {
        let log = dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"]);
        if persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null());
        let mut child = cmd.spawn().context("starting redis-server")?;
        if let Err(e) = wait_for_port(&mut child, port, "redis-server", &log) {
            stop_child(&mut child, libc::SIGKILL);
            return Err(e);
        }
        Ok(child)
    }

    /// The port Redis listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (as a crash would) and starts it again on the same port. Without
    /// persistence it comes back empty.
    pub fn restart(&mut self) -> Result<()> {
        stop_child(&mut self.child, libc::SIGKILL);
        self.child = Self::spawn(&self.dir.0, self.port, self.persistent)?;
        Ok(())
    }

    /// Stops the server until [`Redis::resume`].
    pub fn stop(&mut self) {
        stop_child(&mut self.child, libc::SIGKILL);
    }

    /// Starts a stopped server again on the same port.
    pub fn resume(&mut self) -> Result<()> {
        self.child = Self::spawn(&self.dir.0, self.port, self.persistent)?;
        Ok(())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGKILL);
    }
}
