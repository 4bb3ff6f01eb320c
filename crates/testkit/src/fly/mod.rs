//! A Fly Machines API emulator for tests, in-process or as the `fly-emulator` binary.
//!
//! It serves the machine endpoints Shoal uses on 127.0.0.1, behaving like the published API:
//! machine states and their transitions take time; Fly's rate limits are enforced per (machine or
//! app, action) and answered with 429 past them; errors have the spec's `ErrorResponse` shape and
//! every answer a `fly-request-id`; and every request is checked against
//! `shared/specs/fly-machines-openapi.yaml`, a request that does not match being answered 400 and
//! counted as a spec violation. Faults can be injected: a fraction of 5xx answers, bursts of 429,
//! regions without capacity, slow creates, and 404s for a while after a create (eventual
//! consistency).
//!
//! A machine that reaches `started` runs a real process (the configured command, normally
//! `shoal-agent`) with the machine's `config.env`; stop sends it its stop signal, suspend freezes it
//! (SIGSTOP) and start thaws it, destroy kills it, and a process that exits by itself stops its
//! machine, as on Fly.

mod machines;
mod server;
pub mod spec;

pub use spec::{Spec, SpecError, spec_path};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long machine transitions take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// From created or stopped to started.
    pub start: Duration,
    /// From suspended to started.
    pub resume: Duration,
    /// The least time from stopping to stopped (the process's own exit may take longer).
    pub stop: Duration,
    /// The least time from suspending to suspended.
    pub suspend: Duration,
    /// The least time from destroying to destroyed.
    pub destroy: Duration,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            start: Duration::from_millis(300),
            resume: Duration::from_millis(100),
            stop: Duration::from_millis(150),
            suspend: Duration::from_millis(150),
            destroy: Duration::from_millis(100),
        }
    }
}

/// Bursts of 429: for `length_ms` out of every `every_ms`, every request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleBursts {
    /// The period of the bursts, in milliseconds.
    pub every_ms: u64,
    /// How long each burst lasts, in milliseconds.
    pub length_ms: u64,
}

/// Injectable faults; they can be changed while the emulator runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The fraction of requests (past spec and rate checks) answered with a 5xx instead.
    pub server_error_fraction: f64,
    /// Bursts in which every request is answered 429.
    pub throttle: Option<ThrottleBursts>,
    /// Regions whose creates answer `insufficient_capacity`.
    pub no_capacity: Vec<String>,
    /// Extra time before a create answers.
    pub slow_create_ms: u64,
    /// For this long after a create, the new machine answers 404 (Fly's eventual consistency).
    pub not_found_after_create_ms: u64,
}

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The address to listen on (port 0: any free port).
    pub bind: SocketAddr,
    /// The one app it serves.
    pub app: String,
    /// The bearer token it accepts; any token when `None` (one must still be sent).
    pub token: Option<String>,
    /// Known regions; a create in another answers 400. The first is the default.
    pub regions: Vec<String>,
    /// How long machine transitions take.
    pub latencies: Latencies,
    /// The faults injected from the start.
    pub faults: Faults,
    /// The command run in a started machine, with the machine's `config.env`; none when empty.
    pub command: Vec<String>,
    /// Let the machines' processes write to the emulator's stdout and stderr.
    pub process_output: bool,
    /// How long a stopping machine's process has between its stop signal and SIGKILL.
    pub kill_timeout: Duration,
    /// Machines with more memory cannot be suspended, as on Fly.
    pub suspend_max_memory_mb: u64,
    /// Enforce Fly's rate limits (429 past them).
    pub enforce_rate_limits: bool,
    /// The OpenAPI spec every request and answer is checked against.
    pub spec_path: PathBuf,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            app: "shoal-test".into(),
            token: None,
            regions: vec!["ams".into(), "fra".into(), "ord".into()],
            latencies: Latencies::default(),
            faults: Faults::default(),
            command: Vec::new(),
            process_output: false,
            kill_timeout: Duration::from_secs(5),
            suspend_max_memory_mb: 2048,
            enforce_rate_limits: true,
            spec_path: spec_path(),
        }
    }
}

/// How long a machine answers 404 after its create in [`EmulatorConfig::strict`] mode: Fly's
/// eventual consistency as seen from outside (a `GET` or `wait` right after a create may miss the
/// machine for a few hundred milliseconds).
pub const STRICT_NOT_FOUND_AFTER_CREATE_MS: u64 = 800;

impl EmulatorConfig {
    /// Strict mode: behaves as the real API does where tests would otherwise be spared, i.e. a
    /// new machine answers 404 for [`STRICT_NOT_FOUND_AFTER_CREATE_MS`] after its create (unless
    /// the faults already set a window). Leases held by another nonce answer 409 in every mode.
    pub fn strict(mut self) -> Self {
        if self.faults.not_found_after_create_ms == 0 {
            self.faults.not_found_after_create_ms = STRICT_NOT_FOUND_AFTER_CREATE_MS;
        }
        self
    }

    /// Runs `agent` (the `shoal-agent` binary) in started machines.
    pub fn with_agent(mut self, agent: impl Into<PathBuf>) -> Self {
        self.command = vec![agent.into().to_string_lossy().into_owned()];
        self
    }
}

/// What the emulator saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request, admin ones aside.
    pub requests: u64,
    /// Requests by operation id (`Machines_start`, ...).
    pub by_action: BTreeMap<String, u64>,
    /// Requests by scope (machine id, or the app for create and list) and operation id.
    pub by_scope_action: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests refused for going past Fly's rate limits (injected 429s not included).
    pub past_rate_limit: u64,
    /// Of those, by operation id.
    #[serde(default)]
    pub past_rate_limit_by_action: BTreeMap<String, u64>,
    /// Requests that did not match the spec.
    pub spec_violations: u64,
    /// The last few spec violations, described.
    pub violation_samples: Vec<String>,
    /// Requests answered with an injected 5xx.
    pub injected_5xx: u64,
    /// Requests answered with an injected or rate-limit 429.
    pub injected_429: u64,
    /// Creates refused with `insufficient_capacity`.
    pub capacity_refusals: u64,
    /// 404s answered for machines not yet visible after their create.
    pub early_not_found: u64,
    /// Requests for operations the emulator does not implement.
    pub unimplemented: u64,
    /// Creates and starts accepted (each begins a machine start).
    pub starts: u64,
    /// Transitions into `started`.
    pub started_transitions: u64,
    /// API calls spent on starts: every create try (failed ones included), and on each machine
    /// every start call, the lease taken just before it, and the calls made after it until the
    /// next stop, suspend or destroy.
    pub start_calls: u64,
    /// Of `start_calls`, those the emulator answered with an injected 5xx or 429 (a fault of
    /// the emulated Fly, not a call Shoal chose to make; each costs one retry by design).
    pub start_calls_faulted: u64,
}

impl Stats {
    /// API calls per accepted start (create or start), on average.
    pub fn calls_per_start(&self) -> f64 {
        if self.starts == 0 {
            0.0
        } else {
            self.start_calls as f64 / self.starts as f64
        }
    }

    /// API calls per accepted start, not counting the calls answered by an injected fault: a 5xx,
    /// a 429, or a create refused for want of capacity in a region the run made full.
    ///
    /// The gross figure ([`Stats::calls_per_start`]) moves with how many random faults happened
    /// to land on starts in a run; this one is what Shoal's own choices cost (leases, waits, the
    /// call that takes the place of one a fault answered), so a bound on it holds however the
    /// dice fall.
    pub fn calls_per_start_net_of_faults(&self) -> f64 {
        if self.starts == 0 {
            0.0
        } else {
            let faulted = self
                .start_calls_faulted
                .saturating_add(self.capacity_refusals);
            self.start_calls.saturating_sub(faulted) as f64 / self.starts as f64
        }
    }

    /// Requests of one operation, all scopes together.
    pub fn action(&self, op: &str) -> u64 {
        self.by_action.get(op).copied().unwrap_or(0)
    }
}

/// The emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The spec could not be loaded.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// A machine as a test may want to inspect it.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineView {
    /// The machine's id.
    pub id: String,
    /// Its state as the API shows it (`created`, `started`, `stopped`, ...).
    pub state: String,
    /// The region it was created in.
    pub region: String,
    /// Its `config.env`.
    pub env: BTreeMap<String, String>,
    /// Its `config.metadata`.
    pub metadata: BTreeMap<String, String>,
    /// The process group of the machine's running process.
    pub pid: Option<u32>,
    /// Milliseconds the machine has run (from `started` until it is down), by the emulator's clock.
    pub running_ms: u64,
}

/// A running emulator; dropping it stops the server and kills the machines' processes.
pub struct Emulator {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Emulator {
    /// Starts serving on `cfg.bind` (127.0.0.1 on a spare port by default).
    pub async fn start(cfg: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let spec = Spec::load(&cfg.spec_path)?;
        let listener = tokio::net::TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let shared = Arc::new(server::Shared::new(cfg, spec));
        let app = server::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fly emulator stopped");
            }
        });
        Ok(Emulator {
            shared,
            addr,
            server,
        })
    }

    /// The base URL to give a client as its `api_url` (no `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The one app it serves.
    pub fn app(&self) -> &str {
        &self.shared.cfg.app
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the faults in force.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Every machine not destroyed, in creation order.
    pub fn machines(&self) -> Vec<MachineView> {
        self.shared.machine_views()
    }

    /// Milliseconds every machine (destroyed ones too) has run, added up by the value
    /// of its metadata `key` (`shoal_tenant`: per tenant): the emulator's own record.
    pub fn running_ms_by(&self, key: &str) -> BTreeMap<String, u64> {
        self.shared.running_ms_by(key)
    }

    /// Serves until the task is cancelled (the binary's main loop).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
        self.shared.kill_all();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.abort();
        self.shared.kill_all();
    }
}
