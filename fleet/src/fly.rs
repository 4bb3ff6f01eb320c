//! The `fly` provider: one Fly Machine per sandbox, driven through the typed, paced
//! [`fly_machines`] client.
//!
//! - A sandbox's machine is tagged with metadata `shoal_tenant`, `shoal_pool` and `shoal_sandbox`;
//!   the agent's settings (scheduler URL, sandbox token) go in `config.env`, the image's
//!   entrypoint being `shoal-agent`.
//! - Create tries the configured regions in order; a region that answers `insufficient_capacity`
//!   is skipped for a while (`capacity_cooldown`) and the next one is tried. A create that fails
//!   is never repeated at once: the failure is remembered per sandbox with a growing backoff.
//! - Wake is `start` (it also resumes a suspended machine); idle is `suspend` where Fly allows it
//!   (memory up to 2 GB), else `stop`. Mutations hold a Fly lease, reused while it is valid, so a
//!   start costs a create (or a lease and a start) plus one `wait`.
//! - Calls are retried with [`RetryPolicy`] when that is safe: idempotent ones on 5xx, timeouts and
//!   429 (honouring `Retry-After`); a create only after an answer that proves it did nothing, or
//!   after checking that the machine does not exist. A 404 just after a create is Fly's eventual
//!   consistency, retried for `create_grace`.
//! - Observations come from a follower that lists the app's machines (one call for all of them)
//!   every `poll_interval`, and at once after each call that changed a machine; their times are
//!   the machines' own event timestamps.

use crate::common::now_ms;
use crate::retry::RetryPolicy;
use crate::{
    Capabilities, Observation, ObservationSink, ObservedState, Provider, ProviderError, SandboxRef,
    SandboxSpec,
};
use async_trait::async_trait;
use fly_machines::{
    Client, ClientConfig, CreateLeaseRequest, CreateMachineRequest, ErrorKind, Guest, ListOptions,
    Machine, MachineConfig, MachineState, Restart, StopRequest, WaitState,
};
use serde::{Deserialize, Serialize};
use shoal_core::{Millis, SandboxSize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Metadata key naming the tenant a machine belongs to.
pub const TAG_TENANT: &str = "shoal_tenant";
/// Metadata key naming the pool.
pub const TAG_POOL: &str = "shoal_pool";
/// Metadata key naming the sandbox; a machine without it is not Shoal's.
pub const TAG_SANDBOX: &str = "shoal_sandbox";

/// The description of the leases Shoal takes, so that a restarted scheduler recognises its own.
pub const LEASE_DESCRIPTION: &str = "shoal fleet";

/// Fly lets machines with at most this much memory be suspended.
pub const SUSPEND_MAX_MEMORY_MB: u32 = 2048;

/// The machine size used for sandboxes (`fly.MachineGuest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// `shared` or `performance`.
    #[serde(default = "default_cpu_kind")]
    pub cpu_kind: String,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
}

fn default_cpu_kind() -> String {
    "shared".into()
}
fn default_cpus() -> u32 {
    1
}
fn default_memory_mb() -> u32 {
    256
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            cpu_kind: default_cpu_kind(),
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
        }
    }
}

/// What an idle sandbox becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleMode {
    /// Suspend when the guest's memory allows it on Fly (2 GB at most), else stop.
    #[default]
    Auto,
    Suspend,
    Stop,
}

/// The `[provider.fly]` table. The API token is not here: it comes from `FLY_API_TOKEN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlyConfig {
    /// The Machines API, without `/v1`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The Fly app the machines live in.
    pub app: String,
    /// Regions to create machines in, in order of preference.
    pub regions: Vec<String>,
    /// The sandbox image; its entrypoint is `shoal-agent`.
    pub image: String,
    #[serde(default)]
    pub guest: GuestConfig,
    #[serde(default)]
    pub idle: IdleMode,
    /// Extra environment for the agent, besides what Shoal sets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How often machine states are polled (one list call for the whole app).
    #[serde(default = "default_poll_interval", with = "crate::common::duration")]
    pub poll_interval: Duration,
    /// How long a lease taken for a mutation is held (and reused).
    #[serde(default = "default_lease_ttl", with = "crate::common::duration")]
    pub lease_ttl: Duration,
    /// How long a machine may take to reach the state asked of it.
    #[serde(default = "default_state_timeout", with = "crate::common::duration")]
    pub state_timeout: Duration,
    /// The timeout of one API request.
    #[serde(default = "default_request_timeout", with = "crate::common::duration")]
    pub request_timeout: Duration,
    /// How long a region that answered `insufficient_capacity` is skipped.
    #[serde(
        default = "default_capacity_cooldown",
        with = "crate::common::duration"
    )]
    pub capacity_cooldown: Duration,
    /// How long after a create a 404 for the new machine is taken for eventual consistency.
    #[serde(default = "default_create_grace", with = "crate::common::duration")]
    pub create_grace: Duration,
    /// Stop the machines this scheduler created when it shuts down.
    #[serde(default = "default_true")]
    pub stop_on_shutdown: bool,
}

fn default_api_url() -> String {
    "https://api.machines.dev".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_state_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_capacity_cooldown() -> Duration {
    Duration::from_secs(60)
}
fn default_create_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_true() -> bool {
    true
}

impl FlyConfig {
    /// A config with every default, for the given app, regions and image.
    pub fn new(app: impl Into<String>, regions: Vec<String>, image: impl Into<String>) -> Self {
        FlyConfig {
            api_url: default_api_url(),
            app: app.into(),
            regions,
            image: image.into(),
            guest: GuestConfig::default(),
            idle: IdleMode::default(),
            env: BTreeMap::new(),
            poll_interval: default_poll_interval(),
            lease_ttl: default_lease_ttl(),
            state_timeout: default_state_timeout(),
            request_timeout: default_request_timeout(),
            capacity_cooldown: default_capacity_cooldown(),
            create_grace: default_create_grace(),
            stop_on_shutdown: true,
        }
    }

    /// Every problem with the config, described; empty when it is good.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let url_ok = (self.api_url.starts_with("https://") || self.api_url.starts_with("http://"))
            && self
                .api_url
                .split("://")
                .nth(1)
                .is_some_and(|h| !h.is_empty());
        if !url_ok {
            p.push(format!(
                "provider.fly.api_url `{}` is not an http(s) URL",
                self.api_url
            ));
        }
        if self.app.is_empty()
            || !self
                .app
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            p.push(format!(
                "provider.fly.app `{}` must be a Fly app name (lowercase letters, digits, dashes)",
                self.app
            ));
        }
        if self.regions.is_empty() {
            p.push("provider.fly.regions must name at least one region".into());
        }
        let mut seen = HashSet::new();
        for r in &self.regions {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                p.push(format!(
                    "provider.fly.regions: `{r}` is not a region code such as `ams`"
                ));
            }
            if !seen.insert(r) {
                p.push(format!("provider.fly.regions: `{r}` is listed twice"));
            }
        }
        if self.image.trim().is_empty() {
            p.push("provider.fly.image must name the sandbox image".into());
        }
        let g = &self.guest;
        let per_cpu = match g.cpu_kind.as_str() {
            "shared" => Some((256, 2048)),
            "performance" => Some((2048, 8192)),
            other => {
                p.push(format!(
                    "provider.fly.guest.cpu_kind `{other}` must be `shared` or `performance`"
                ));
                None
            }
        };
        if ![1, 2, 4, 8, 16].contains(&g.cpus) {
            p.push(format!(
                "provider.fly.guest.cpus {} must be 1, 2, 4, 8 or 16",
                g.cpus
            ));
        }
        if g.memory_mb == 0 || !g.memory_mb.is_multiple_of(256) {
            p.push(format!(
                "provider.fly.guest.memory_mb {} must be a positive multiple of 256",
                g.memory_mb
            ));
        } else if let Some((lo, hi)) = per_cpu {
            let (lo, hi) = (lo * g.cpus.max(1), hi * g.cpus.max(1));
            if g.memory_mb < lo || g.memory_mb > hi {
                p.push(format!(
                    "provider.fly.guest.memory_mb {} is outside {lo}..={hi} for {} {} CPU(s)",
                    g.memory_mb, g.cpus, g.cpu_kind
                ));
            }
        }
        if self.idle == IdleMode::Suspend && g.memory_mb > SUSPEND_MAX_MEMORY_MB {
            p.push(format!("provider.fly.idle = \"suspend\" needs guest.memory_mb <= {SUSPEND_MAX_MEMORY_MB} on Fly"));
        }
        for (name, d, min) in [
            (
                "poll_interval",
                self.poll_interval,
                Duration::from_millis(100),
            ),
            ("lease_ttl", self.lease_ttl, Duration::from_secs(5)),
            ("state_timeout", self.state_timeout, Duration::from_secs(1)),
            (
                "request_timeout",
                self.request_timeout,
                Duration::from_secs(1),
            ),
        ] {
            if d < min {
                p.push(format!("provider.fly.{name} {d:?} is below {min:?}"));
            }
        }
        for k in self.env.keys() {
            if k.starts_with("SHOAL_") {
                p.push(format!(
                    "provider.fly.env.{k}: SHOAL_* variables are set by Shoal"
                ));
            }
        }
        p
    }

    /// The guest for a sandbox of `size`: the configured one, grown to fit the size and kept
    /// within Fly's memory-per-CPU bounds.
    pub fn guest_for(&self, size: &SandboxSize) -> Guest {
        let (lo, hi) = if self.guest.cpu_kind == "performance" {
            (2048, 8192)
        } else {
            (256, 2048)
        };
        let memory = (size.memory_mb.div_ceil(256) * 256) as u32;
        let memory = self.guest.memory_mb.max(memory);
        let mut cpus = self
            .guest
            .cpus
            .max(size.cpus.ceil().max(1.0) as u32)
            .max(memory.div_ceil(hi));
        cpus = [1, 2, 4, 8, 16]
            .into_iter()
            .find(|c| *c >= cpus)
            .unwrap_or(16);
        let memory = memory.max(lo * cpus).min(hi * cpus);
        Guest {
            cpu_kind: self.guest.cpu_kind.clone(),
            cpus,
            memory_mb: memory,
        }
    }

    fn suspends(&self) -> bool {
        match self.idle {
            IdleMode::Auto => self.guest.memory_mb <= SUSPEND_MAX_MEMORY_MB,
            IdleMode::Suspend => true,
            IdleMode::Stop => false,
        }
    }
}

/// The provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FlyError {
    #[error("invalid [provider.fly] config: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("fly client: {0}")]
    Client(#[from] fly_machines::Error),
    #[error("the fly provider must be built inside a tokio runtime")]
    NoRuntime,
}

fn to_provider_error(e: fly_machines::Error) -> ProviderError {
    let msg = e.to_string();
    match e.kind {
        ErrorKind::InsufficientCapacity => ProviderError::Capacity(msg),
        ErrorKind::RateLimited => ProviderError::RateLimited {
            retry_after: e.retry_after,
        },
        ErrorKind::NotFound => ProviderError::NotFound(msg),
        ErrorKind::Conflict | ErrorKind::Precondition => ProviderError::Conflict(msg),
        ErrorKind::Timeout | ErrorKind::Server | ErrorKind::Transport => {
            ProviderError::Transient(msg)
        }
        ErrorKind::BadRequest | ErrorKind::Unauthorized | ErrorKind::Decode | ErrorKind::Other => {
            ProviderError::Permanent(msg)
        }
    }
}

/// The state a machine's event status means, for the ones that matter to billing.
fn event_state(status: &str) -> Option<ObservedState> {
    match status {
        "started" => Some(ObservedState::Running),
        "stopped" | "failed" => Some(ObservedState::Stopped),
        "suspended" => Some(ObservedState::Suspended),
        "destroyed" => Some(ObservedState::Gone),
        _ => None,
    }
}

/// The settled state a machine state is, if it is one.
fn settled_state(s: &MachineState) -> Option<ObservedState> {
    match s {
        MachineState::Started => Some(ObservedState::Running),
        MachineState::Stopped | MachineState::Failed => Some(ObservedState::Stopped),
        MachineState::Suspended => Some(ObservedState::Suspended),
        MachineState::Destroyed => Some(ObservedState::Gone),
        _ => None,
    }
}

/// What `list` reports for a machine in any state: transitions count as where they come from
/// as far as billing goes (a stopping machine still runs; a starting one does not yet).
fn listed_state(s: &MachineState, last: Option<ObservedState>) -> Option<ObservedState> {
    match s {
        MachineState::Destroying | MachineState::Destroyed => None,
        MachineState::Stopping
        | MachineState::Suspending
        | MachineState::Replacing
        | MachineState::Updating => Some(ObservedState::Running),
        MachineState::Created | MachineState::Starting => {
            Some(last.unwrap_or(ObservedState::Stopped))
        }
        MachineState::Other(_) => Some(last.unwrap_or(ObservedState::Stopped)),
        settled => settled_state(settled),
    }
}

fn parse_time(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A Fly machine name for a sandbox: lowercase letters, digits and dashes.
pub fn machine_name(sandbox_id: &str) -> String {
    let clean: String = sandbox_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("shoal-{clean}").chars().take(63).collect()
}

/// One machine the provider follows.
#[derive(Debug, Clone)]
struct Tracked {
    sandbox: SandboxRef,
    last: Option<ObservedState>,
    /// The newest event already turned into observations.
    last_event_ts: i64,
    created_here: Option<Instant>,
}

/// What one look at a machine reported, given what was known of it before. Pure, so it is
/// tested on its own.
fn observe(t: &mut Tracked, m: &Machine, fallback_now: Millis) -> Vec<Observation> {
    let mut out = Vec::new();
    let mut events: Vec<_> = m
        .events
        .iter()
        .filter(|e| e.timestamp > t.last_event_ts)
        .collect();
    events.sort_by_key(|e| e.timestamp);
    for e in events {
        if let Some(s) = event_state(&e.status)
            && t.last != Some(s)
        {
            t.last = Some(s);
            out.push(Observation {
                sandbox: t.sandbox.clone(),
                state: s,
                at: e.timestamp,
            });
        }
        t.last_event_ts = t.last_event_ts.max(e.timestamp);
    }
    // Events can be trimmed; the state itself is the last word.
    if let Some(s) = settled_state(&m.state)
        && t.last != Some(s)
    {
        t.last = Some(s);
        let at = parse_time(&m.updated_at).unwrap_or(fallback_now);
        out.push(Observation {
            sandbox: t.sandbox.clone(),
            state: s,
            at,
        });
    }
    out
}

fn state_time(m: &Machine, state: ObservedState) -> Option<Millis> {
    m.events
        .iter()
        .filter(|e| event_state(&e.status) == Some(state))
        .map(|e| e.timestamp)
        .max()
}

#[derive(Default)]
struct Book {
    machines: HashMap<String, Tracked>,
    by_sandbox: HashMap<String, String>,
    leases: HashMap<String, (String, Instant)>,
    cold_regions: HashMap<String, Instant>,
    /// Sandboxes whose create failed: no new try before the instant; failures so far.
    create_backoff: HashMap<String, (Instant, u32, ProviderError)>,
    synced: bool,
}

struct Inner {
    cfg: FlyConfig,
    client: Client,
    sink: ObservationSink,
    retry: RetryPolicy,
    book: Mutex<Book>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// One create at a time per sandbox, so two concurrent creates make one machine.
    creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    nudge: Notify,
}

/// The `fly` provider. See the module documentation.
pub struct FlyProvider {
    inner: Arc<Inner>,
    follower: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FlyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlyProvider")
            .field("app", &self.inner.cfg.app)
            .finish()
    }
}

impl FlyProvider {
    /// Builds the provider and starts its follower; call inside a tokio runtime. `token` is the
    /// Fly API token (from `FLY_API_TOKEN`).
    pub fn new(
        cfg: FlyConfig,
        token: String,
        sink: ObservationSink,
    ) -> Result<FlyProvider, FlyError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(FlyError::Config(problems));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FlyError::NoRuntime)?;
        let mut client_cfg = ClientConfig::new(cfg.api_url.clone(), cfg.app.clone(), token);
        client_cfg.request_timeout = cfg.request_timeout;
        let client = Client::new(client_cfg)?;
        let inner = Arc::new(Inner {
            cfg,
            client,
            sink,
            retry: RetryPolicy::default(),
            book: Mutex::new(Book::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
            creating: Mutex::new(HashMap::new()),
            nudge: Notify::new(),
        });
        let follower = runtime.spawn(follow(inner.clone()));
        Ok(FlyProvider { inner, follower })
    }

    /// The API client (for its request counters and pacing figures).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Destroys every Shoal machine of the app whose sandbox `known` does not recognise (the
    /// store's list of live sandboxes); returns what was destroyed.
    pub async fn collect_unknown(
        &self,
        known: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<SandboxRef>, ProviderError> {
        let listed = self.inner.refresh().await?;
        let mut collected = Vec::new();
        for o in listed {
            if !known(&o.sandbox.sandbox_id) {
                tracing::info!(machine = %o.sandbox.provider_id, sandbox = %o.sandbox.sandbox_id, "collecting a fly machine the store does not know");
                self.inner.destroy(&o.sandbox.provider_id).await?;
                collected.push(o.sandbox);
            }
        }
        Ok(collected)
    }
}

impl Drop for FlyProvider {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Follows the app's machines until the provider is dropped (which aborts this task).
async fn follow(inner: Arc<Inner>) {
    loop {
        if let Err(e) = inner.refresh().await {
            tracing::warn!(error = %e, "fly: following machine states failed; will retry");
        }
        // Wait for the poll interval, or less when a call has just changed a machine.
        let _ = tokio::time::timeout(inner.cfg.poll_interval, inner.nudge.notified()).await;
    }
}

impl Inner {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_grace(&self, machine: &str) -> bool {
        self.book()
            .machines
            .get(machine)
            .and_then(|t| t.created_here)
            .is_some_and(|at| at.elapsed() < self.cfg.create_grace)
    }

    /// Runs an idempotent call, retrying what is worth retrying: 5xx, 429 (after its
    /// `Retry-After`), timeouts when `timeouts` says so, and a 404 of a machine just created.
    async fn call<T, F, Fut>(
        &self,
        machine: Option<&str>,
        timeouts: bool,
        mut f: F,
    ) -> Result<T, fly_machines::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, fly_machines::Error>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let retry = match e.kind {
                        ErrorKind::Timeout => timeouts,
                        ErrorKind::NotFound => machine.is_some_and(|m| self.in_grace(m)),
                        _ => e.is_retryable(),
                    };
                    let grace = e.kind == ErrorKind::NotFound;
                    if !retry || (attempt >= self.retry.max_tries && !grace) {
                        return Err(e);
                    }
                    let wait = self.retry.delay(
                        attempt,
                        &to_provider_error(e.clone()),
                        rand::random::<f64>(),
                    );
                    tracing::debug!(attempt, ?wait, error = %e, "fly: retrying");
                    tokio::time::sleep(if grace {
                        wait.min(Duration::from_millis(500))
                    } else {
                        wait
                    })
                    .await;
                    attempt += 1;
                }
            }
        }
    }

    /// Waits until the machine is in `state`, looping over Fly's 60-second waits.
    async fn wait_for(&self, id: &str, state: WaitState) -> Result<(), fly_machines::Error> {
        let deadline = Instant::now() + self.cfg.state_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fly_machines::Error {
                    kind: ErrorKind::Timeout,
                    status: None,
                    message: format!(
                        "machine {id} did not reach {} within {:?}",
                        state.as_str(),
                        self.cfg.state_timeout
                    ),
                    request_id: None,
                    retry_after: None,
                });
            }
            match self
                .call(Some(id), false, || {
                    self.client
                        .wait_once(id, state, left.min(fly_machines::MAX_WAIT))
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind == ErrorKind::Timeout => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The lease held on the machine: its nonce, and whether it is still good for a while.
    fn held_lease(&self, id: &str) -> Option<(String, bool)> {
        let margin = Duration::from_secs(5).min(self.cfg.lease_ttl / 4);
        let book = self.book();
        book.leases
            .get(id)
            .map(|(n, until)| (n.clone(), *until > Instant::now() + margin))
    }

    /// A lease on the machine: the one held if still good, else that one refreshed (or a new
    /// one, if it lapsed).
    async fn lease(&self, id: &str) -> Result<String, fly_machines::Error> {
        let held = self.held_lease(id);
        if let Some((nonce, true)) = &held {
            return Ok(nonce.clone());
        }
        let previous = held.map(|(n, _)| n);
        let req = CreateLeaseRequest {
            description: Some(LEASE_DESCRIPTION.to_string()),
            ttl: Some(self.cfg.lease_ttl.as_secs().max(1)),
        };
        let got = match self
            .call(Some(id), true, || {
                self.client.acquire_lease(id, &req, previous.as_deref())
            })
            .await
        {
            Ok(l) => l,
            Err(e) if e.kind == ErrorKind::Conflict => {
                // Held: ours if an earlier try (or an earlier run of the scheduler) took it.
                let held = self
                    .call(Some(id), true, || self.client.get_lease(id))
                    .await
                    .map_err(|_| e.clone())?;
                if held.description != LEASE_DESCRIPTION || held.nonce.is_empty() {
                    return Err(e);
                }
                held
            }
            Err(e) => return Err(e),
        };
        let until = Instant::now() + self.cfg.lease_ttl;
        self.book()
            .leases
            .insert(id.to_string(), (got.nonce.clone(), until));
        Ok(got.nonce)
    }

    /// Runs a mutation under the machine's lease, taking a new lease once if Fly says the one
    /// held is no longer good.
    async fn leased<F, Fut>(&self, id: &str, f: F) -> Result<(), fly_machines::Error>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), fly_machines::Error>>,
    {
        let mut nonce = self.lease(id).await?;
        let mut renewed = false;
        loop {
            match self.call(Some(id), true, || f(nonce.clone())).await {
                Err(e) if e.kind == ErrorKind::Conflict && !renewed => {
                    // Our lease lapsed (or was taken over): refresh or retake it, once.
                    if let Some(l) = self.book().leases.get_mut(id) {
                        l.1 = Instant::now();
                    }
                    nonce = self.lease(id).await?;
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Machine, fly_machines::Error> {
        self.call(Some(id), true, || self.client.get(id)).await
    }

    /// The region for the next create try: the first configured one not tried yet and not
    /// known to be out of capacity, else the first not tried yet.
    fn pick_region(&self, tried: &HashSet<String>) -> String {
        let now = Instant::now();
        let book = self.book();
        let untried = || self.cfg.regions.iter().filter(|r| !tried.contains(*r));
        untried()
            .find(|r| book.cold_regions.get(*r).is_none_or(|until| *until <= now))
            .or_else(|| untried().next())
            .cloned()
            .unwrap_or_default()
    }

    fn track(&self, sandbox: SandboxRef, created_here: bool) {
        let mut book = self.book();
        book.by_sandbox
            .insert(sandbox.sandbox_id.clone(), sandbox.provider_id.clone());
        book.machines
            .entry(sandbox.provider_id.clone())
            .or_insert(Tracked {
                sandbox,
                last: None,
                last_event_ts: 0,
                created_here: created_here.then(Instant::now),
            });
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        let gate = {
            let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            creating.entry(spec.sandbox_id.clone()).or_default().clone()
        };
        let result = {
            let _one = gate.lock().await;
            self.create_once(spec).await
        };
        let mut creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if creating
            .get(&spec.sandbox_id)
            .is_some_and(|g| Arc::strong_count(g) <= 2)
        {
            creating.remove(&spec.sandbox_id);
        }
        result
    }

    async fn create_once(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        if !self.book().synced {
            self.refresh().await?;
        }
        let existing = self.book().by_sandbox.get(&spec.sandbox_id).cloned();
        if let Some(id) = existing {
            return Ok(id);
        }
        let backoff = self.book().create_backoff.get(&spec.sandbox_id).cloned();
        if let Some((until, _, err)) = backoff
            && until > Instant::now()
        {
            return Err(err);
        }
        let result = self.create_in_regions(spec).await;
        let mut book = self.book();
        match &result {
            Ok(_) => {
                book.create_backoff.remove(&spec.sandbox_id);
            }
            Err(e) => {
                let failures = book
                    .create_backoff
                    .get(&spec.sandbox_id)
                    .map(|(_, n, _)| *n)
                    .unwrap_or(0)
                    + 1;
                let wait = self.retry.delay(
                    failures + 1,
                    &ProviderError::Transient(String::new()),
                    rand::random::<f64>(),
                );
                book.create_backoff.insert(
                    spec.sandbox_id.clone(),
                    (Instant::now() + wait, failures, e.clone()),
                );
            }
        }
        result
    }

    fn create_request(&self, spec: &SandboxSpec, region: &str) -> CreateMachineRequest {
        let mut env: BTreeMap<String, String> = self.cfg.env.clone();
        env.extend(spec.agent_env());
        let metadata = BTreeMap::from([
            (TAG_TENANT.to_string(), spec.tenant.clone()),
            (TAG_POOL.to_string(), spec.pool.clone()),
            (TAG_SANDBOX.to_string(), spec.sandbox_id.clone()),
        ]);
        CreateMachineRequest {
            name: Some(machine_name(&spec.sandbox_id)),
            region: Some(region.to_string()),
            config: MachineConfig {
                image: self.cfg.image.clone(),
                env,
                metadata,
                guest: Some(self.cfg.guest_for(&spec.size)),
                // An agent that exits leaves its machine stopped; Shoal sees that and decides.
                restart: Some(Restart {
                    policy: Some("no".into()),
                    max_retries: None,
                }),
                stop_config: None,
                auto_destroy: Some(false),
            },
            lease_ttl: Some(self.cfg.lease_ttl.as_secs().max(1)),
            skip_launch: None,
        }
    }

    async fn create_in_regions(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        let mut tried = HashSet::new();
        let mut last = ProviderError::Capacity("no region configured".into());
        let mut attempt = 1;
        while tried.len() < self.cfg.regions.len() {
            let mut region = String::new();
            let created = self
                .client
                .create_with(|| {
                    region = self.pick_region(&tried);
                    self.create_request(spec, &region)
                })
                .await;
            match created {
                Ok(m) => {
                    let sandbox = SandboxRef {
                        sandbox_id: spec.sandbox_id.clone(),
                        tenant: spec.tenant.clone(),
                        provider_id: m.id.clone(),
                    };
                    self.track(sandbox, true);
                    if let Some(nonce) = m.nonce.filter(|n| !n.is_empty()) {
                        self.book()
                            .leases
                            .insert(m.id.clone(), (nonce, Instant::now() + self.cfg.lease_ttl));
                    }
                    self.finish_create(&m.id).await?;
                    return Ok(m.id);
                }
                Err(e) if e.kind == ErrorKind::InsufficientCapacity => {
                    tracing::info!(%region, error = %e, "fly: region out of capacity; trying the next one");
                    let until = Instant::now() + self.cfg.capacity_cooldown;
                    self.book().cold_regions.insert(region.clone(), until);
                    tried.insert(region);
                    last = to_provider_error(e);
                }
                Err(e) if e.is_retryable() && attempt < self.retry.max_tries => {
                    if !e.surely_not_applied() {
                        // The create may have happened: look before trying again.
                        self.refresh().await?;
                        let existing = self.book().by_sandbox.get(&spec.sandbox_id).cloned();
                        if let Some(id) = existing {
                            return self.finish_create(&id).await.map(|_| id);
                        }
                    }
                    let wait = self.retry.delay(
                        attempt,
                        &to_provider_error(e.clone()),
                        rand::random::<f64>(),
                    );
                    tracing::debug!(attempt, ?wait, error = %e, "fly: retrying create");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(to_provider_error(e)),
            }
        }
        Err(last)
    }

    async fn finish_create(&self, id: &str) -> Result<(), ProviderError> {
        let r = self
            .wait_for(id, WaitState::Started)
            .await
            .map_err(to_provider_error);
        self.nudge.notify_one();
        r
    }

    /// Starts (or resumes) a machine and waits until it runs.
    async fn wake(&self, id: &str) -> Result<(), ProviderError> {
        let started = self.leased(id, |n| {
            let client = self.client.clone();
            let id = id.to_string();
            async move { client.start(&id, Some(&n)).await }
        });
        match started.await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Precondition => {
                let m = self.get(id).await.map_err(to_provider_error)?;
                match m.state {
                    MachineState::Started | MachineState::Starting => {}
                    MachineState::Stopping | MachineState::Suspending => {
                        // Let the transition end, then start.
                        let target = if m.state == MachineState::Stopping {
                            WaitState::Stopped
                        } else {
                            WaitState::Suspended
                        };
                        self.wait_for(id, target).await.map_err(to_provider_error)?;
                        let n = self.lease(id).await.map_err(to_provider_error)?;
                        self.call(Some(id), true, || self.client.start(id, Some(&n)))
                            .await
                            .map_err(to_provider_error)?;
                    }
                    MachineState::Destroying | MachineState::Destroyed => {
                        return Err(ProviderError::NotFound(format!(
                            "machine {id} is destroyed"
                        )));
                    }
                    _ => return Err(to_provider_error(e)),
                }
            }
            Err(e) => return Err(to_provider_error(e)),
        }
        let r = self
            .wait_for(id, WaitState::Started)
            .await
            .map_err(to_provider_error);
        self.nudge.notify_one();
        r
    }

    async fn stop(&self, id: &str) -> Result<(), ProviderError> {
        let stopped = self.leased(id, |n| {
            let client = self.client.clone();
            let id = id.to_string();
            async move { client.stop(&id, &StopRequest::default(), Some(&n)).await }
        });
        match stopped.await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Precondition => {
                let m = self.get(id).await.map_err(to_provider_error)?;
                if m.state.is_gone() {
                    return Err(ProviderError::NotFound(format!(
                        "machine {id} is destroyed"
                    )));
                }
                if !matches!(
                    m.state,
                    MachineState::Stopped | MachineState::Stopping | MachineState::Failed
                ) {
                    return Err(to_provider_error(e));
                }
            }
            Err(e) => return Err(to_provider_error(e)),
        }
        let r = self
            .wait_for(id, WaitState::Stopped)
            .await
            .map_err(to_provider_error);
        self.nudge.notify_one();
        r
    }

    async fn suspend(&self, id: &str) -> Result<(), ProviderError> {
        if !self.cfg.suspends() {
            return self.stop(id).await;
        }
        let suspended = self.leased(id, |n| {
            let client = self.client.clone();
            let id = id.to_string();
            async move { client.suspend(&id, Some(&n)).await }
        });
        match suspended.await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Precondition => {
                let m = self.get(id).await.map_err(to_provider_error)?;
                match m.state {
                    MachineState::Suspended | MachineState::Suspending => {}
                    // Already not running: nothing to keep in memory.
                    MachineState::Stopped | MachineState::Stopping | MachineState::Failed => {
                        return Ok(());
                    }
                    MachineState::Destroying | MachineState::Destroyed => {
                        return Err(ProviderError::NotFound(format!(
                            "machine {id} is destroyed"
                        )));
                    }
                    // Running but Fly will not suspend it: stop it instead.
                    MachineState::Started => {
                        tracing::info!(machine = %id, error = %e, "fly: suspend refused; stopping instead");
                        return self.stop(id).await;
                    }
                    _ => return Err(to_provider_error(e)),
                }
            }
            Err(e) => return Err(to_provider_error(e)),
        }
        let r = self
            .wait_for(id, WaitState::Suspended)
            .await
            .map_err(to_provider_error);
        self.nudge.notify_one();
        r
    }

    async fn destroy(&self, id: &str) -> Result<(), ProviderError> {
        let destroyed = self.leased(id, |n| {
            let client = self.client.clone();
            let id = id.to_string();
            async move { client.destroy(&id, true, Some(&n)).await }
        });
        let r = match destroyed.await {
            Ok(()) => Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(to_provider_error(e)),
        };
        {
            let mut book = self.book();
            book.leases.remove(id);
            if let Some(t) = book.machines.get(id) {
                let sandbox_id = t.sandbox.sandbox_id.clone();
                book.by_sandbox.remove(&sandbox_id);
            }
        }
        self.nudge.notify_one();
        r
    }

    /// Lists the app's machines once, reports what changed on the sink, and answers the Shoal
    /// machines that are not gone with their current state.
    async fn refresh(&self) -> Result<Vec<Observation>, ProviderError> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let opts = ListOptions {
            include_deleted: true,
            ..Default::default()
        };
        let machines = self
            .call(None, true, || self.client.list(&opts))
            .await
            .map_err(to_provider_error)?;
        let now = now_ms();
        let mut listed = Vec::new();
        let mut report = Vec::new();
        let mut book = self.book();
        let mut seen = HashSet::new();
        for m in &machines {
            let Some(md) = m.metadata() else { continue };
            let Some(sandbox_id) = md.get(TAG_SANDBOX) else {
                continue;
            };
            seen.insert(m.id.clone());
            let sandbox = SandboxRef {
                sandbox_id: sandbox_id.clone(),
                tenant: md.get(TAG_TENANT).cloned().unwrap_or_default(),
                provider_id: m.id.clone(),
            };
            if !book.machines.contains_key(&m.id) {
                if m.state.is_gone() {
                    continue;
                }
                // First sight of a machine made elsewhere (or before a restart): report where it
                // is now, not its history.
                let last_event_ts = m.events.iter().map(|e| e.timestamp).max().unwrap_or(0);
                let current = settled_state(&m.state);
                if let Some(s) = current {
                    let at = state_time(m, s)
                        .or_else(|| parse_time(&m.updated_at))
                        .unwrap_or(now);
                    report.push(Observation {
                        sandbox: sandbox.clone(),
                        state: s,
                        at,
                    });
                }
                book.by_sandbox.insert(sandbox_id.clone(), m.id.clone());
                book.machines.insert(
                    m.id.clone(),
                    Tracked {
                        sandbox: sandbox.clone(),
                        last: current,
                        last_event_ts,
                        created_here: None,
                    },
                );
            } else if let Some(t) = book.machines.get_mut(&m.id) {
                report.extend(observe(t, m, now));
            }
            let last = book.machines.get(&m.id).and_then(|t| t.last);
            if m.state.is_gone() {
                if last != Some(ObservedState::Gone) {
                    report.push(Observation {
                        sandbox: sandbox.clone(),
                        state: ObservedState::Gone,
                        at: now,
                    });
                }
                book.machines.remove(&m.id);
                if book.by_sandbox.get(sandbox_id) == Some(&m.id) {
                    book.by_sandbox.remove(sandbox_id);
                }
                book.leases.remove(&m.id);
                continue;
            }
            if let Some(state) = listed_state(&m.state, last) {
                let at = state_time(m, state)
                    .or_else(|| parse_time(&m.updated_at))
                    .unwrap_or(now);
                listed.push(Observation { sandbox, state, at });
            }
        }
        // Followed machines missing from the answer are gone, unless just created (Fly's list
        // may not show them yet).
        let missing: Vec<String> = book
            .machines
            .iter()
            .filter(|(id, t)| {
                !seen.contains(*id)
                    && t.created_here
                        .is_none_or(|at| at.elapsed() >= self.cfg.create_grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in missing {
            if let Some(t) = book.machines.remove(&id) {
                if t.last != Some(ObservedState::Gone) {
                    report.push(Observation {
                        sandbox: t.sandbox.clone(),
                        state: ObservedState::Gone,
                        at: now,
                    });
                }
                if book.by_sandbox.get(&t.sandbox.sandbox_id) == Some(&id) {
                    book.by_sandbox.remove(&t.sandbox.sandbox_id);
                }
                book.leases.remove(&id);
            }
        }
        book.synced = true;
        drop(book);
        for o in report {
            tracing::debug!(sandbox = %o.sandbox.sandbox_id, state = ?o.state, at = o.at, "fly: observed");
            let _ = self.sink.send(o);
        }
        Ok(listed)
    }
}

#[async_trait]
impl Provider for FlyProvider {
    fn name(&self) -> &'static str {
        "fly"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            suspend: self.inner.cfg.suspends(),
            stop: true,
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        self.inner.create(spec).await
    }

    async fn start(&self, sandbox: &SandboxRef, _spec: &SandboxSpec) -> Result<(), ProviderError> {
        self.inner.wake(&sandbox.provider_id).await
    }

    async fn stop(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.stop(&sandbox.provider_id).await
    }

    async fn suspend(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.suspend(&sandbox.provider_id).await
    }

    async fn resume(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.wake(&sandbox.provider_id).await
    }

    async fn destroy(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.destroy(&sandbox.provider_id).await
    }

    async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
        self.inner.refresh().await
    }

    async fn shutdown(&self) {
        if self.inner.cfg.stop_on_shutdown {
            // Ask Fly first: a machine whose start just finished may not be in the book yet.
            let running_now: std::collections::HashSet<String> = match self.inner.refresh().await {
                Ok(listed) => listed
                    .into_iter()
                    .filter(|o| o.state == ObservedState::Running)
                    .map(|o| o.sandbox.provider_id)
                    .collect(),
                Err(_) => Default::default(),
            };
            let mine: Vec<String> = {
                let book = self.inner.book();
                book.machines
                    .iter()
                    .filter(|(id, t)| {
                        t.created_here.is_some()
                            && (t.last == Some(ObservedState::Running) || running_now.contains(*id))
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            let stops = mine.iter().map(|id| self.inner.stop(id));
            for (id, r) in mine.iter().zip(futures::future::join_all(stops).await) {
                if let Err(e) = r {
                    tracing::warn!(machine = %id, error = %e, "fly: stopping at shutdown failed");
                }
            }
        }
        self.follower.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fly_machines::MachineEvent;

    fn cfg() -> FlyConfig {
        FlyConfig::new(
            "shoal-test",
            vec!["ams".into(), "fra".into()],
            "registry.fly.io/shoal-agent:1",
        )
    }

    #[test]
    fn validation_lists_every_problem() {
        assert!(cfg().validate().is_empty(), "{:?}", cfg().validate());
        let mut bad = cfg();
        bad.api_url = "ftp://x".into();
        bad.app = "Bad App".into();
        bad.regions = vec!["ams".into(), "ams".into(), "A!".into()];
        bad.image = " ".into();
        bad.guest = GuestConfig {
            cpu_kind: "gpu".into(),
            cpus: 3,
            memory_mb: 300,
        };
        bad.poll_interval = Duration::ZERO;
        bad.env.insert("SHOAL_URL".into(), "x".into());
        let problems = bad.validate();
        for needle in [
            "api_url",
            "app",
            "twice",
            "`A!`",
            "image",
            "cpu_kind",
            "cpus",
            "memory_mb",
            "poll_interval",
            "SHOAL_URL",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "no problem about {needle} in {problems:?}"
            );
        }
    }

    #[test]
    fn the_config_table_parses_with_defaults() {
        let c: FlyConfig = toml::from_str(
            r#"
            app = "shoal-sandboxes"
            regions = ["ams", "fra"]
            image = "registry.fly.io/shoal-agent:latest"
            guest = { cpu_kind = "shared", cpus = 1, memory_mb = 512 }
            poll_interval = "1s"
            "#,
        )
        .unwrap();
        assert_eq!(c.api_url, "https://api.machines.dev");
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.lease_ttl, Duration::from_secs(60));
        assert!(c.validate().is_empty());
        assert!(
            toml::from_str::<FlyConfig>("app = \"a\"\nregions = []\nimage = \"i\"\ncolour = 1")
                .is_err()
        );
        let again: FlyConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c, "the resolved config prints back as it reads");
    }

    #[test]
    fn guests_fit_the_sandbox_and_flys_bounds() {
        let c = cfg();
        let g = c.guest_for(&SandboxSize {
            cpus: 0.5,
            memory_mb: 256,
        });
        assert_eq!((g.cpus, g.memory_mb), (1, 256));
        let g = c.guest_for(&SandboxSize {
            cpus: 1.0,
            memory_mb: 3000,
        });
        assert_eq!((g.cpus, g.memory_mb), (2, 3072));
        let g = c.guest_for(&SandboxSize {
            cpus: 3.0,
            memory_mb: 512,
        });
        assert_eq!((g.cpus, g.memory_mb), (4, 1024));
    }

    #[test]
    fn idle_mode_decides_suspend() {
        let mut c = cfg();
        assert!(c.suspends());
        c.guest.memory_mb = 4096;
        c.guest.cpus = 2;
        assert!(!c.suspends());
        c.idle = IdleMode::Stop;
        c.guest.memory_mb = 256;
        assert!(!c.suspends());
    }

    fn machine(state: MachineState, events: &[(&str, i64)]) -> Machine {
        Machine {
            id: "m1".into(),
            state,
            updated_at: "2025-01-01T00:00:09Z".into(),
            events: events
                .iter()
                .rev()
                .map(|(status, ts)| MachineEvent {
                    status: status.to_string(),
                    timestamp: *ts,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn observations_follow_events_with_flys_timestamps() {
        let sandbox = SandboxRef {
            sandbox_id: "s".into(),
            tenant: "t".into(),
            provider_id: "m1".into(),
        };
        let mut t = Tracked {
            sandbox,
            last: None,
            last_event_ts: 0,
            created_here: None,
        };
        let m = machine(MachineState::Started, &[("created", 1), ("started", 2)]);
        let o = observe(&mut t, &m, 99);
        assert_eq!(
            o.iter().map(|o| (o.state, o.at)).collect::<Vec<_>>(),
            vec![(ObservedState::Running, 2)]
        );
        assert!(
            observe(&mut t, &m, 99).is_empty(),
            "nothing new, nothing reported"
        );
        // Between two looks it was suspended and woken: both are reported, in order.
        let m = machine(
            MachineState::Started,
            &[
                ("created", 1),
                ("started", 2),
                ("suspended", 5),
                ("started", 7),
            ],
        );
        let o = observe(&mut t, &m, 99);
        assert_eq!(
            o.iter().map(|o| (o.state, o.at)).collect::<Vec<_>>(),
            vec![(ObservedState::Suspended, 5), (ObservedState::Running, 7)]
        );
        // Events trimmed away: the state still tells, at the machine's update time.
        let m = machine(MachineState::Stopped, &[]);
        let o = observe(&mut t, &m, 99);
        assert_eq!(
            o.iter().map(|o| (o.state, o.at)).collect::<Vec<_>>(),
            vec![(ObservedState::Stopped, 1_735_689_609_000)]
        );
        // An unknown state reports nothing new.
        let m = machine(MachineState::Other("hibernating".into()), &[]);
        assert!(observe(&mut t, &m, 99).is_empty());
    }

    #[test]
    fn machine_names_are_valid() {
        assert_eq!(machine_name("conf-T_1"), "shoal-conf-t-1");
        assert!(machine_name(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn transitions_list_as_where_billing_stands() {
        assert_eq!(
            listed_state(&MachineState::Stopping, None),
            Some(ObservedState::Running)
        );
        assert_eq!(
            listed_state(&MachineState::Starting, Some(ObservedState::Suspended)),
            Some(ObservedState::Suspended)
        );
        assert_eq!(
            listed_state(&MachineState::Destroying, Some(ObservedState::Running)),
            None
        );
    }
}
