//! The control loop: on every relevant event (debounced by milliseconds) and on a slow tick, it
//! takes a snapshot from the store, asks the pure planner for a plan, and applies it through the
//! provider; it also turns the provider's observations into sandbox states and ledger entries,
//! expires lapsed leases, and collects provider resources the store does not know.
//!
//! It takes what it uses, each as a narrow handle ([`Deps`]): the store, the provider, the
//! metrics, a clock, leadership, the few settings it reads ([`Settings`]), and the scheduler's
//! signals ([`Signals`]: work changed, a job changed, a wake, readiness). So its tests run it on a
//! real SQLite store, a recording fake provider and tokio's paused clock.
//!
//! - [`pass`]: one planning pass (snapshot, plan, apply) and the tenant limits given to the
//!   provider.
//! - [`apply`]: a step's store side and its provider call, by the core's lifecycle table.
//! - [`observe`]: the provider's observations, and reconciling with what it lists (orphans).
//! - [`health`]: sandboxes whose agent went silent or whose provider reports them failed become
//!   unhealthy, give their jobs back and are destroyed.
//! - [`snapshot`]: the snapshot the planner sees, and the dry run.
//! - [`sizing`]: right-sizing applied to tenants with `limits.auto_size`.
//!
//! A provider call is made once per step: the providers' own clients retry what is worth
//! retrying; a call that still fails is left for a later pass (a failed create holds off its
//! tenant's creates, [`CreateBackoff`]).

mod apply;
pub mod health;
mod observe;
mod pass;
mod sizing;
mod snapshot;
#[cfg(test)]
mod tests;
mod warm;

pub use snapshot::{PoolReader, dry_run};

use crate::jobwatch::Pulse;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::state::{App, now_ms};
use shoal_core::{Millis, SandboxSize};
use shoal_fleet::{Observation, Provider};
use shoal_store::{Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long events are gathered before a planning pass.
const DEBOUNCE: Duration = Duration::from_millis(2);
/// Under a steady stream of events, a pass waits this many times as long as the last pass's
/// snapshot took to read (every tenant's queue counts and sandboxes: it grows with the backlog),
/// so reading takes at most a fifth of the loop's time. Provider calls do not count, so a pass
/// that stopped sandboxes does not delay the next wake; an event after a quiet spell is planned
/// after `DEBOUNCE` alone.
const PASS_GAP_FACTOR: u32 = 4;
/// The longest such wait.
const MAX_PASS_GAP: Duration = Duration::from_millis(100);
/// The slow tick: timeouts, lease expiry, sandbox health, retention.
const TICK: Duration = Duration::from_secs(1);
/// How often the provider is checked for resources the store does not know.
const COLLECT_EVERY: Duration = Duration::from_secs(60);
/// How often the leader applies right-sizing to tenants with `limits.auto_size`.
const AUTO_SIZE_EVERY: Duration = Duration::from_secs(10);
/// How often a leader confirms it still leads (and so how long a deposed one may act at most).
const LEADER_CHECK: Duration = Duration::from_secs(1);

/// The time the control loop stamps on what it records.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        now_ms()
    }
}

/// What the control loop tells the rest of the scheduler.
pub trait Signals: Send + Sync + 'static {
    /// A tenant's work or sandboxes changed: wake its waiting agents (here and on other replicas).
    fn work_changed(&self, tenant: &str);
    /// Something about one job changed.
    fn job_changed(&self, id: &str, pulse: Pulse);
    /// A usage event may have been written.
    fn usage_written(&self);
    /// The pools' desired sizes of the last plan.
    fn planned(&self, desired: &[(String, u32)]);
    /// A sandbox is being woken for `tenant`: how long its work has waited for one, if it has.
    fn woken(&self, tenant: &str) -> Option<Duration>;
    /// This replica is ready to serve (it has reconciled, or need not lead to serve).
    fn ready(&self);
    /// A blank sandbox of the warm pool was claimed: wake the blanks' waiting agents (each looks
    /// whether it is the one). No-op by default.
    fn blank_claimed(&self) {}
}

impl Signals for App {
    fn work_changed(&self, tenant: &str) {
        App::work_changed(self, tenant);
    }

    fn job_changed(&self, id: &str, pulse: Pulse) {
        App::job_changed(self, id, pulse);
    }

    fn usage_written(&self) {
        self.usage_kick.notify_one();
    }

    fn planned(&self, desired: &[(String, u32)]) {
        let mut map = self.desired.write().unwrap_or_else(|e| e.into_inner());
        for (tenant, n) in desired {
            map.insert(tenant.clone(), *n);
        }
    }

    fn woken(&self, tenant: &str) -> Option<Duration> {
        self.waiting_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant)
            .map(|t0| t0.elapsed())
    }

    fn ready(&self) {
        self.ready.send_replace(true);
    }

    fn blank_claimed(&self) {
        App::work_changed(self, shoal_fleet::BLANK_TENANT);
    }
}

/// The settings the control loop reads, resolved from the scheduler's config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The secret sandbox tokens are derived from.
    pub secret: String,
    /// The scheduler's URL as sandboxes reach it.
    pub advertise_url: String,
    /// Idle sandboxes are suspended (when the provider can) rather than stopped.
    pub suspend_idle: bool,
    pub idle_timeout_ms: Millis,
    pub retention_ms: Millis,
    pub boot_timeout_ms: Millis,
    /// How often agents heartbeat a running job; three missed make a sandbox unhealthy.
    pub heartbeat_interval_ms: Millis,
    pub fleet_max_sandboxes: Option<u32>,
    /// How long before work falls due a sandbox is woken for it.
    pub due_lead_ms: Millis,
    pub usage: shoal_metering::UsageContext,
    /// Blank sandboxes the shared warm pool keeps (0: none).
    pub warm_pool: u32,
}

impl Settings {
    /// The settings of `app`'s config.
    pub fn of(app: &App) -> Self {
        let cfg = &app.cfg;
        Settings {
            secret: app.admin_token.clone(),
            advertise_url: cfg.advertise_url.clone(),
            suspend_idle: cfg.idle_action == shoal_planner::IdleAction::Suspend,
            idle_timeout_ms: cfg.idle_timeout.as_millis() as Millis,
            retention_ms: cfg.sandbox_retention.as_millis() as Millis,
            boot_timeout_ms: cfg.boot_timeout.as_millis() as Millis,
            heartbeat_interval_ms: Millis::try_from(cfg.heartbeat_interval.as_millis())
                .unwrap_or(Millis::MAX),
            fleet_max_sandboxes: cfg.fleet_max_sandboxes,
            due_lead_ms: app.due_lead_ms(),
            usage: cfg.usage_context(),
            warm_pool: cfg.warm_pool,
        }
    }
}

/// Everything the control loop uses.
pub struct Deps {
    pub store: Arc<dyn Store>,
    pub provider: Arc<dyn Provider>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub signals: Arc<dyn Signals>,
    /// Wakes the loop for a pass (the loop also wakes itself: a create's hold-off ended, it
    /// became the leader).
    pub kick: Arc<Notify>,
    /// Cancelled when the scheduler shuts down.
    pub shutdown: CancellationToken,
    /// Becomes true once the provider has stopped every sandbox at shutdown.
    pub provider_stopped: watch::Receiver<bool>,
    /// The adaptive idle policy, when it is the scheduler's.
    pub adaptive: Option<Arc<crate::idle::AdaptiveIdle>>,
    pub settings: Settings,
}

impl Deps {
    /// The scheduler's own: `app`'s store, provider, metrics and signals, the system clock.
    pub fn of(app: &Arc<App>) -> Self {
        Deps {
            store: Arc::clone(&app.store),
            provider: Arc::clone(&app.provider),
            metrics: Arc::clone(&app.metrics),
            clock: Arc::new(SystemClock),
            signals: Arc::clone(app) as Arc<dyn Signals>,
            kick: Arc::clone(&app.kick),
            shutdown: app.shutdown.clone(),
            provider_stopped: app.provider_stopped.subscribe(),
            adaptive: app.adaptive.clone(),
            settings: Settings::of(app),
        }
    }
}

/// Per-tenant hold-off after a failed create, so a failing create never spins.
#[derive(Default)]
struct CreateBackoff {
    until: HashMap<String, (Instant, u32)>,
}

impl CreateBackoff {
    fn blocked(&self, tenant: &str) -> bool {
        self.until
            .get(tenant)
            .is_some_and(|(t, _)| Instant::now() < *t)
    }

    fn failed(&mut self, tenant: &str) -> Duration {
        let n = self.until.get(tenant).map_or(0, |(_, n)| *n) + 1;
        let wait = Duration::from_secs(1 << n.min(6)).min(Duration::from_secs(60));
        self.until
            .insert(tenant.to_string(), (Instant::now() + wait, n));
        wait
    }

    fn succeeded(&mut self, tenant: &str) {
        self.until.remove(tenant);
    }
}

/// The control loop's own state.
pub struct Control {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    signals: Arc<dyn Signals>,
    kick: Arc<Notify>,
    shutdown: CancellationToken,
    provider_stopped: watch::Receiver<bool>,
    settings: Settings,
    pools: PoolReader,
    backoff: Mutex<CreateBackoff>,
    /// When each sandbox started running, for the compute-seconds metric.
    running_since: Mutex<HashMap<String, Millis>>,
    leadership: Arc<dyn Leadership>,
    /// The fencing epoch while this replica leads; 0 while it does not.
    epoch: AtomicU64,
    /// When this replica last began to lead (the clock's milliseconds): the health check counts
    /// an agent's silence from here at the earliest.
    leading_since: AtomicI64,
    /// The tenant limits last given to the provider.
    limits_sent: Mutex<HashMap<String, (Option<u32>, SandboxSize)>>,
    /// Provider calls in flight, so a shutdown can let them finish before stopping sandboxes.
    inflight: Mutex<tokio::task::JoinSet<()>>,
    /// Provider ids of the unknown sandboxes this replica has collected (their destroy
    /// answered), so none is collected twice.
    collected: Mutex<std::collections::HashSet<String>>,
}

/// The token of a sandbox: derived from the scheduler's secret and the sandbox id, so it need not
/// be stored and can be given again when a sandbox restarts.
pub fn sandbox_token(secret: &str, sandbox_id: &str) -> String {
    use sha2::{Digest, Sha256};
    // HMAC would be the textbook choice; a hash over a fixed-layout, length-prefixed input has no
    // length-extension exposure here because the secret comes first and the id is bounded.
    let mut h = Sha256::new();
    h.update((secret.len() as u64).to_be_bytes());
    h.update(secret.as_bytes());
    h.update(b"/sandbox/");
    h.update(sandbox_id.as_bytes());
    format!("sbt_{}", hex::encode(h.finalize()))
}

impl Control {
    pub fn new(deps: Deps, leadership: Arc<dyn Leadership>) -> Arc<Self> {
        let pools = PoolReader {
            store: Arc::clone(&deps.store),
            caps: deps.provider.capabilities(),
            metrics: Arc::clone(&deps.metrics),
            adaptive: deps.adaptive,
            settings: deps.settings.clone(),
        };
        Arc::new(Control {
            store: deps.store,
            provider: deps.provider,
            metrics: deps.metrics,
            clock: deps.clock,
            signals: deps.signals,
            kick: deps.kick,
            shutdown: deps.shutdown,
            provider_stopped: deps.provider_stopped,
            settings: deps.settings,
            pools,
            backoff: Mutex::new(CreateBackoff::default()),
            running_since: Mutex::new(HashMap::new()),
            leadership,
            epoch: AtomicU64::new(0),
            leading_since: AtomicI64::new(0),
            limits_sent: Mutex::new(HashMap::new()),
            inflight: Mutex::new(tokio::task::JoinSet::new()),
            collected: Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Runs a provider call in the background, tracked for [`Control::settle`].
    fn track(&self, call: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        while set.try_join_next().is_some() {}
        set.spawn(call);
    }

    /// Waits (at most `limit`) for the provider calls in flight, so that a sandbox being started
    /// at shutdown is running, and so stopped, rather than left starting.
    pub async fn settle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.drain()).await;
    }

    /// Waits for the provider calls in flight (and any they start in turn).
    async fn drain(&self) {
        loop {
            let mut set =
                std::mem::take(&mut *self.inflight.lock().unwrap_or_else(|e| e.into_inner()));
            if set.is_empty() {
                return;
            }
            while set.join_next().await.is_some() {}
        }
    }

    /// Whether this replica leads now (checked every second by the leadership task).
    pub fn leads(&self) -> bool {
        self.epoch.load(Ordering::SeqCst) != 0
    }

    /// Contends for leadership until shutdown; while leading, reconciles once and keeps
    /// confirming the lease on leadership.
    async fn lead(self: Arc<Self>) {
        loop {
            let epoch = tokio::select! {
                e = self.leadership.acquire() => e,
                _ = self.shutdown.cancelled() => return,
            };
            // A predecessor may have just used the provider's rate budget: pace as if it had,
            // before this replica's provider starts polling.
            self.provider.took_over();
            self.provider.leading(true);
            if let Err(e) = self.reconcile(true).await {
                tracing::error!(error = %e, "reconciling with the provider failed");
            }
            self.leading_since.store(self.now(), Ordering::SeqCst);
            self.epoch.store(epoch, Ordering::SeqCst);
            self.metrics.leader.set(1);
            self.signals.ready();
            self.kick.notify_one();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LEADER_CHECK) => {}
                    _ = self.shutdown.cancelled() => return,
                }
                if !self.leadership.check(epoch).await {
                    self.epoch.store(0, Ordering::SeqCst);
                    self.metrics.leader.set(0);
                    self.provider.leading(false);
                    tracing::warn!(epoch, "deposed: this replica stops planning");
                    break;
                }
            }
        }
    }

    /// Runs until shutdown: planning passes (while leading) and observation handling.
    pub async fn run(
        self: Arc<Self>,
        mut obs: UnboundedReceiver<Observation>,
        follower_ready: bool,
    ) {
        if follower_ready {
            // Any replica serves the API and agents; only planning waits for leadership.
            self.signals.ready();
        }
        // Not leading yet: a provider that polls leaves it to the leader.
        self.provider.leading(false);
        tokio::spawn(Arc::clone(&self).lead());
        let this = Arc::clone(&self);
        let mut provider_done = self.provider_stopped.clone();
        let observer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    o = obs.recv() => match o {
                        Some(o) => this.observe(o).await,
                        None => return,
                    },
                    // The provider has stopped every sandbox: what it reported is all queued.
                    _ = async { let _ = provider_done.wait_for(|s| *s).await; } => break,
                }
            }
            while let Ok(o) = obs.try_recv() {
                this.observe(o).await;
            }
        });
        let mut last_collect = Instant::now();
        let mut last_sized: Option<Instant> = None;
        let mut next_pass = Instant::now();
        loop {
            tokio::select! {
                _ = self.kick.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    tokio::time::sleep_until(next_pass).await;
                }
                _ = tokio::time::sleep(TICK) => {
                    if self.leads() && let Err(e) = self.expire().await {
                        tracing::warn!(error = %e, "expiring leases failed");
                    }
                    if self.leads() && let Err(e) = self.health().await {
                        tracing::warn!(error = %e, "checking sandbox health failed");
                    }
                    if self.leads() && last_sized.is_none_or(|at| at.elapsed() >= AUTO_SIZE_EVERY) {
                        last_sized = Some(Instant::now());
                        if let Err(e) = self.auto_size().await {
                            tracing::warn!(error = %e, "applying right-sizing failed");
                        }
                    }
                }
                _ = self.shutdown.cancelled() => break,
            }
            if !self.leads() {
                continue;
            }
            match self
                .pass()
                .instrument(tracing::info_span!("planning_pass"))
                .await
            {
                Ok(read) => next_pass = Instant::now() + (read * PASS_GAP_FACTOR).min(MAX_PASS_GAP),
                Err(e) => tracing::warn!(error = %e, "planning pass failed"),
            }
            if last_collect.elapsed() >= COLLECT_EVERY {
                last_collect = Instant::now();
                if let Err(e) = self.reconcile(false).await {
                    tracing::warn!(error = %e, "collecting orphans failed");
                }
            }
        }
        let _ = observer.await;
    }

    async fn expire(&self) -> Result<(), StoreError> {
        for job in self.store.expire_leases(self.now()).await? {
            tracing::info!(job = %job.id, state = %job.state, attempts = job.attempts, "lease lapsed");
            if job.state.is_terminal() {
                self.count_finished(&job);
            }
            self.signals.work_changed(&job.tenant);
            self.signals.job_changed(&job.id, Pulse::State);
        }
        Ok(())
    }

    fn count_finished(&self, job: &shoal_store::JobRecord) {
        self.metrics
            .jobs_finished
            .with_label_values(&[self.metrics.tenant(&job.tenant), job.state.as_str()])
            .inc();
    }
}
