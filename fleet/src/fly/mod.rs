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
use crate::retry::{RetryPolicy, honour_retry_after};
use crate::{
    Capabilities, LeaseKeeper, Observation, ObservationSink, ObservedState, Provider,
    ProviderError, SandboxRef, SandboxSpec,
};
use async_trait::async_trait;
use backon::Retryable;
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

mod config;
mod leases;
mod observe;
#[cfg(test)]
mod tests;

pub use config::*;
use observe::*;
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

/// The first wait after a 404 for a machine just created: long enough for Fly's view of the
/// machine to catch up in one go (it shows within a second in practice, and the machine is still
/// booting meanwhile), so a create costs the create, at most one 404 and one `wait`.
pub const NOT_FOUND_FIRST_WAIT: Duration = Duration::from_secs(1);

/// The wait before the next try after the `n`-th (from 0) 404 of a machine just created:
/// [`NOT_FOUND_FIRST_WAIT`], doubling, at most 4 s; the whole is bounded by `create_grace`.
fn not_found_wait(n: u32) -> Duration {
    NOT_FOUND_FIRST_WAIT * (1u32 << n.min(2))
}

/// The provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FlyError {
    /// The `[provider.fly]` table has these mistakes.
    #[error("invalid [provider.fly] config: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The Machines API client could not be made.
    #[error("fly client: {0}")]
    Client(#[from] fly_machines::Error),
    /// Built outside a tokio runtime.
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

#[derive(Default)]
struct Book {
    machines: HashMap<String, Tracked>,
    by_sandbox: HashMap<String, String>,
    leases: HashMap<String, (String, Instant)>,
    cold_regions: HashMap<String, Instant>,
    /// The region of each machine seen, by machine id.
    placed: HashMap<String, String>,
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
    /// Where lease nonces are kept for a successor leader ([`Provider::keep_leases_in`]).
    keeper: Mutex<Option<Arc<dyn LeaseKeeper>>>,
    /// Set while another replica leads ([`Provider::leading`]): the follower does not poll.
    standby: std::sync::atomic::AtomicBool,
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
            keeper: Mutex::new(None),
            standby: std::sync::atomic::AtomicBool::new(false),
        });
        let follower = runtime.spawn(follow(inner.clone()));
        Ok(FlyProvider { inner, follower })
    }

    /// The API client (for its request counters and pacing figures).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

impl Drop for FlyProvider {
    fn drop(&mut self) {
        self.follower.abort();
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
        f: F,
    ) -> Result<T, fly_machines::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, fly_machines::Error>>,
    {
        let mut tries = 1u32;
        let mut not_found = 0u32;
        f.retry(self.retry.builder().without_max_times())
            .sleep(tokio::time::sleep)
            .when(|e: &fly_machines::Error| {
                let retry = match e.kind {
                    ErrorKind::Timeout => timeouts,
                    ErrorKind::NotFound => machine.is_some_and(|m| self.in_grace(m)),
                    _ => e.is_retryable(),
                };
                // A machine just created may 404 for a moment: that wait is bounded by the
                // grace period, not by the number of tries.
                let grace = e.kind == ErrorKind::NotFound;
                let again = retry && (grace || tries < self.retry.max_tries);
                tries = tries.saturating_add(1);
                again
            })
            .adjust(|e, wait| {
                if e.kind == ErrorKind::NotFound {
                    // Not a fault to hammer: the machine shows up once Fly's view catches up,
                    // and it is still booting meanwhile, so a longer wait costs no start time.
                    let w = not_found_wait(not_found);
                    not_found = not_found.saturating_add(1);
                    wait.map(|_| w)
                } else {
                    honour_retry_after(e.retry_after, wait)
                }
            })
            .notify(|e, wait| tracing::debug!(?wait, error = %e, "fly: retrying"))
            .await
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

    async fn get(&self, id: &str) -> Result<Machine, fly_machines::Error> {
        self.call(Some(id), true, || self.client.get(id)).await
    }

    /// The regions a sandbox may be created in, most preferred first: its tenant's list when it
    /// has one (never a region outside it), else the fleet's configured `regions`.
    fn regions_for<'a>(&'a self, spec: &'a SandboxSpec) -> &'a [String] {
        if spec.regions.is_empty() {
            &self.cfg.regions
        } else {
            &spec.regions
        }
    }

    /// The region for the next create try: the first of `regions` not tried yet and not known
    /// to be out of capacity, else the first not tried yet.
    fn pick_region(&self, regions: &[String], tried: &HashSet<String>) -> String {
        let now = Instant::now();
        let book = self.book();
        let untried = || regions.iter().filter(|r| !tried.contains(*r));
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
                let wait = self
                    .retry
                    .delay_after(failures + 1, &ProviderError::Transient(String::new()));
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
        let regions = self.regions_for(spec);
        let mut tried = HashSet::new();
        let mut attempt = 1;
        let mut waits = self.retry.backoff();
        while tried.len() < regions.len() {
            let mut region = String::new();
            let created = self
                .client
                .create_with(|| {
                    region = self.pick_region(regions, &tried);
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
                    let at = if m.region.is_empty() {
                        region.clone()
                    } else {
                        m.region.clone()
                    };
                    self.book().placed.insert(m.id.clone(), at);
                    if let Some(nonce) = m.nonce.filter(|n| !n.is_empty()) {
                        self.hold_lease(&m.id, &nonce).await;
                    }
                    self.finish_create(&m.id).await?;
                    return Ok(m.id);
                }
                Err(e) if e.kind == ErrorKind::InsufficientCapacity => {
                    tracing::info!(%region, error = %e, "fly: region out of capacity; trying the next one");
                    let until = Instant::now() + self.cfg.capacity_cooldown;
                    self.book().cold_regions.insert(region.clone(), until);
                    tried.insert(region);
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
                    let wait = honour_retry_after(e.retry_after, waits.next())
                        .unwrap_or(self.retry.max_delay);
                    tracing::debug!(attempt, ?wait, error = %e, "fly: retrying create");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(to_provider_error(e)),
            }
        }
        tracing::warn!(tenant = %spec.tenant, sandbox = %spec.sandbox_id, regions = ?regions, "fly: none of the sandbox's regions has capacity");
        Err(ProviderError::Capacity(format!(
            "no capacity in any of the regions {}",
            regions.join(", ")
        )))
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
        if r.is_ok()
            && let Some(keeper) = self.keeper()
        {
            keeper.forget(id).await;
        }
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

    fn took_over(&self) {
        self.inner.client.pacer().assume_spent();
        // What this replica remembers of leases may be stale: a leader since may have renewed
        // them or taken new ones. The store's (kept by every leader) is read on first use.
        self.inner.book().leases.clear();
    }

    fn leading(&self, leading: bool) {
        self.inner
            .standby
            .store(!leading, std::sync::atomic::Ordering::SeqCst);
        if leading {
            self.inner.nudge.notify_one();
        }
    }

    fn keep_leases_in(&self, keeper: Arc<dyn LeaseKeeper>) {
        *self.inner.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(keeper);
    }

    fn region_of(&self, provider_id: &str) -> Option<String> {
        self.inner.book().placed.get(provider_id).cloned()
    }

    /// A blank machine of the warm pool waits stopped (a stopped machine is billed for its root
    /// file system only); a claim starts it. Its agent's token is the sandbox's own, so the
    /// machine's environment needs no change at the claim.
    fn blanks_wait_stopped(&self) -> bool {
        true
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
        // A replica that does not lead leaves the machines to the one that does.
        let standby = self.inner.standby.load(std::sync::atomic::Ordering::SeqCst);
        if self.inner.cfg.stop_on_shutdown && !standby {
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
