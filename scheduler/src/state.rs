//! The scheduler's shared state: the store, the provider, metrics, limits, and the signals that
//! wake the control loop and waiting agents.

use crate::config::Config;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use shoal_core::Millis;
use shoal_fleet::Provider;
use shoal_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Everything the handlers and background tasks share.
pub struct App {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    pub provider: Arc<dyn Provider>,
    pub metrics: Arc<Metrics>,
    pub rates: RateLimits,
    pub admin_token: String,
    /// Wakes the control loop.
    pub kick: Arc<Notify>,
    /// Wakes the webhook delivery worker: an event may have been written.
    pub outbox_kick: Notify,
    /// Wakes the usage sink pusher: a usage event may have been written.
    pub usage_kick: Notify,
    /// Wakes agents of a tenant waiting for work.
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// The last plan's desired size per tenant.
    pub desired: RwLock<HashMap<String, u32>>,
    /// When each tenant with no ready sandbox first had work waiting, for the wake latency.
    pub waiting_since: Mutex<HashMap<String, std::time::Instant>>,
    /// Cancelled when the scheduler is shutting down: every background loop and long poll ends.
    pub shutdown: CancellationToken,
    /// Set once the control loop has reconciled with the provider.
    pub ready: watch::Sender<bool>,
    /// Set once the provider has stopped every sandbox at shutdown.
    pub provider_stopped: watch::Sender<bool>,
    /// Wake-ups to and from other replicas, when there can be any (Postgres).
    pub bus: std::sync::OnceLock<crate::bus::PgBus>,
    /// The operators' live view: overview, history, event feed.
    pub live: crate::live::Live,
    /// The adaptive idle policy's histories, when `idle_policy` is adaptive.
    pub adaptive: Option<Arc<crate::idle::AdaptiveIdle>>,
    /// Why sandboxes are not isolated on this host, when they are not (shown at start and on the
    /// dashboard).
    pub isolation_warning: Option<String>,
    /// Serializes tenant creation while the one-tenant rule of an unisolated host applies.
    pub tenant_gate: tokio::sync::Mutex<()>,
    /// Callers waiting on one job: its end, its new output.
    pub jobs: crate::jobwatch::JobWatch,
}

impl App {
    /// How long before work falls due a sandbox is woken for it: the adaptive idle policy's boot
    /// lead (its default when the policy is fixed).
    pub fn due_lead_ms(&self) -> shoal_core::Millis {
        self.adaptive.as_ref().map_or_else(
            || shoal_planner::adaptive::AdaptiveConfig::default().lead_ms,
            |a| a.lead_ms(),
        )
    }

    pub fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        provider: Arc<dyn Provider>,
        admin_token: String,
        rates: RateLimits,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(cfg.metrics_max_tenants));
        let adaptive = match cfg.idle_policy {
            crate::idle::IdlePolicy::Adaptive { worth_s } => {
                Some(Arc::new(crate::idle::AdaptiveIdle::new(worth_s)))
            }
            crate::idle::IdlePolicy::Fixed => None,
        };
        App {
            isolation_warning: provider.isolation_warning(),
            tenant_gate: tokio::sync::Mutex::new(()),
            cfg,
            store,
            provider,
            metrics,
            rates,
            admin_token,
            kick: Arc::new(Notify::new()),
            outbox_kick: Notify::new(),
            usage_kick: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            desired: RwLock::new(HashMap::new()),
            waiting_since: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            ready: watch::channel(false).0,
            provider_stopped: watch::channel(false).0,
            bus: std::sync::OnceLock::new(),
            live: crate::live::Live::default(),
            adaptive,
            jobs: crate::jobwatch::JobWatch::default(),
        }
    }

    /// The reason a second tenant is refused: sandboxes are not isolated here and the operator
    /// did not pass `--insecure-shared-host`.
    pub fn shared_host_refusal(&self) -> Option<&str> {
        self.isolation_warning
            .as_deref()
            .filter(|_| !self.cfg.insecure_shared_host)
    }

    /// The notifier agents of `tenant` wait on.
    pub fn tenant_signal(&self, tenant: &str) -> Arc<Notify> {
        let mut map = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(tenant.to_string()).or_default())
    }

    /// Work changed for `tenant`: wake its waiting agents and the control loop, here and on the
    /// other replicas.
    pub fn work_changed(&self, tenant: &str) {
        self.wake_local(tenant);
        if let Some(bus) = self.bus.get() {
            bus.publish(tenant);
        }
    }

    /// Something about job `id` changed (`pulse`): wake whoever waits on it, here and on the
    /// other replicas.
    pub fn job_changed(&self, id: &str, pulse: crate::jobwatch::Pulse) {
        self.jobs.pulse(id, pulse);
        if let Some(bus) = self.bus.get() {
            bus.publish_job(id, pulse);
        }
    }

    /// Wakes this replica's waiting agents of `tenant`, its control loop and its webhook delivery
    /// worker (whatever changed a tenant's work may have written an event: a job ended, a quota
    /// was reached).
    pub fn wake_local(&self, tenant: &str) {
        self.tenant_signal(tenant).notify_waiters();
        self.kick.notify_one();
        self.outbox_kick.notify_one();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// Now, as the store and planner count time.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// SHA-256 of a token, as tokens are stored.
pub fn hash_token(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token with a readable prefix.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}
