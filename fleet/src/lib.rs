//! Shoal's fleet: the [`Provider`] trait that every sandbox backend implements (process, docker,
//! fly, kubernetes, sim), the typed errors providers answer with, the retry policy applied to
//! provider calls, and the conformance suite every provider must pass.

#![warn(missing_docs)]

pub mod common;
pub mod conformance;
pub mod docker;
pub mod fly;
pub mod kubernetes;
pub mod orphans;
pub mod process;
pub mod retry;
pub mod sim;

use async_trait::async_trait;
use shoal_core::{Millis, SandboxSize};
use std::time::Duration;

/// The tenant (and pool) a blank sandbox of the shared warm pool is created under: it belongs to
/// no tenant until claimed. Not a valid tenant id, so no tenant can be named so.
pub const BLANK_TENANT: &str = "~warm-pool";

/// Everything a provider needs to bring up one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// Shoal's id for the sandbox; providers tag their resource with it and use it to make
    /// `create` idempotent.
    pub sandbox_id: String,
    /// The tenant the sandbox belongs to.
    pub tenant: String,
    /// The tenant's pool (providers label their resource with it).
    pub pool: String,
    /// The agent's bearer token.
    pub token: String,
    /// The scheduler's URL as the sandbox reaches it.
    pub scheduler_url: String,
    /// The CPUs and memory the sandbox gets.
    pub size: SandboxSize,
    /// The tenant's regions, most preferred first (its `limits.regions`); empty: no preference.
    /// `fly` creates the machine in the first of them with capacity, `kubernetes` requires a
    /// node in one of them; `process` and `docker` run on their one host and ignore it.
    pub regions: Vec<String>,
}

impl SandboxSpec {
    /// The environment the agent inside the sandbox is started with.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        use shoal_protocol::env;
        vec![
            (env::URL.to_string(), self.scheduler_url.clone()),
            (env::SANDBOX_TOKEN.to_string(), self.token.clone()),
            (env::SANDBOX_ID.to_string(), self.sandbox_id.clone()),
        ]
    }
}

/// A sandbox the provider knows, named both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRef {
    /// Shoal's id for the sandbox.
    pub sandbox_id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The provider's own id (a pid, a container id, a machine id, a pod name).
    pub provider_id: String,
}

/// What a provider observed of one sandbox: the state it is in and, where the provider says, when
/// it got there by the provider's own clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The sandbox observed.
    pub sandbox: SandboxRef,
    /// The state it was seen in.
    pub state: ObservedState,
    /// When the provider says the transition happened.
    pub at: Millis,
}

/// The states providers report; fewer than Shoal's own, which also knows whether the agent has
/// called in and holds a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObservedState {
    /// Running: billable from here.
    Running,
    /// Suspended: memory kept, not billed.
    Suspended,
    /// Stopped: not billed.
    Stopped,
    /// Gone (destroyed, or vanished by itself).
    Gone,
}

/// What a provider can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Suspend and resume keep memory (SIGSTOP, docker pause, Fly suspend).
    pub suspend: bool,
    /// Stop and start keep the sandbox (Kubernetes cannot: idle there means delete).
    pub stop: bool,
}

/// A provider call that did not do what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// Too many requests: try again after the given time.
    #[error("rate limited by the provider; retry after {retry_after:?}")]
    RateLimited {
        /// How long the provider asked to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// No capacity for this size or region now.
    #[error("provider out of capacity: {0}")]
    Capacity(String),
    /// The sandbox (its provider id) does not exist at the provider.
    #[error("not found: {0}")]
    NotFound(String),
    /// The resource is in a state that does not allow the call.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Worth retrying: a 5xx, a timeout, a dropped connection.
    #[error("transient provider error: {0}")]
    Transient(String),
    /// Not worth retrying: a bad request, a bad image, no permission.
    #[error("provider error: {0}")]
    Permanent(String),
}

impl ProviderError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. } | ProviderError::Transient(_)
        )
    }
}

/// Where a provider keeps what a successor leader needs to act at once: the lease nonces it
/// holds on its cloud's resources (`fly`: a machine's lease), by the resource's provider id. The
/// scheduler backs it with its store ([`Provider::keep_leases_in`]), so a replica that takes
/// over after a crash can use (or release) the leases its predecessor took instead of waiting for
/// them to lapse. Best effort: a failed write or read only costs the wait it would have saved.
#[async_trait]
pub trait LeaseKeeper: Send + Sync + 'static {
    /// Records the nonce of a lease held on `provider_id` until `expires_at` (ms since the epoch).
    async fn keep(&self, provider_id: &str, nonce: &str, expires_at: Millis);
    /// The nonce last kept for `provider_id` and when its lease expires, if it has not yet.
    async fn recall(&self, provider_id: &str) -> Option<(String, Millis)>;
    /// Forgets `provider_id`'s lease (released, or its resource destroyed).
    async fn forget(&self, provider_id: &str);
}

/// A [`LeaseKeeper`] in memory, shared by the providers given it (tests: a predecessor and its
/// successor in one process).
#[derive(Debug, Default)]
pub struct MemoryLeases(std::sync::Mutex<std::collections::HashMap<String, (String, Millis)>>);

#[async_trait]
impl LeaseKeeper for MemoryLeases {
    async fn keep(&self, provider_id: &str, nonce: &str, expires_at: Millis) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(provider_id.to_string(), (nonce.to_string(), expires_at));
    }
    async fn recall(&self, provider_id: &str) -> Option<(String, Millis)> {
        let now = common::now_ms();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(provider_id)
            .filter(|(_, until)| *until > now)
            .cloned()
    }
    async fn forget(&self, provider_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(provider_id);
    }
}

/// Observations flow from providers to the fleet on this channel.
pub type ObservationSink = tokio::sync::mpsc::UnboundedSender<Observation>;

/// A backend that runs sandboxes. Every call is idempotent: creating a sandbox id that exists,
/// stopping a stopped one, or destroying a missing one succeeds without a second effect.
/// Implementations report what they observe (with the provider's own timestamps) on the
/// [`ObservationSink`] they were built with.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's name, as in `--provider`.
    fn name(&self) -> &'static str;

    /// What this provider can do (suspend, stop), which decides the idle action it gets.
    fn capabilities(&self) -> Capabilities;

    /// This replica has just become the leader: whatever the provider paces or caches on the
    /// assumption that it alone calls the cloud, a predecessor may have used a moment ago
    /// (`fly`: every machine's burst is counted as spent for one refill window). No-op by default.
    fn took_over(&self) {}

    /// Whether this replica leads (`true` when it becomes the leader, after [`took_over`];
    /// `false` at start and when it is deposed). A provider that polls its cloud for state
    /// (`fly`: one list call per poll) polls only while leading, so replicas do not multiply the
    /// calls against a shared rate limit. By default a provider follows as if it led.
    ///
    /// [`took_over`]: Provider::took_over
    fn leading(&self, _leading: bool) {}

    /// Gives the provider a place to keep its lease nonces for a successor leader (see
    /// [`LeaseKeeper`]). Called once, before the control loop starts. No-op by default: only
    /// providers whose cloud locks resources per holder (`fly`) need it.
    fn keep_leases_in(&self, _keeper: std::sync::Arc<dyn LeaseKeeper>) {}

    /// The region a sandbox was placed in, by its provider id, when this provider places by
    /// region and knows it (`fly`: the machine's region). `None` by default.
    fn region_of(&self, _provider_id: &str) -> Option<String> {
        None
    }

    /// Creates and starts a sandbox; returns the provider's id for it.
    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError>;

    /// Whether a blank sandbox of the shared warm pool waits stopped (and a claim starts it with
    /// the tenant's settings, [`Provider::claim`]) rather than running with its agent waiting
    /// for the claim. `false` by default (`process`, `docker`); `fly` keeps its blanks stopped.
    fn blanks_wait_stopped(&self) -> bool {
        false
    }

    /// Claims a stopped blank sandbox for `spec.tenant`: gives it the tenant's settings and
    /// starts it. By default a plain start (the agent's token is the sandbox's own, so nothing
    /// else needs changing).
    async fn claim(&self, sandbox: &SandboxRef, spec: &SandboxSpec) -> Result<(), ProviderError> {
        self.start(sandbox, spec).await
    }

    /// Starts a stopped sandbox.
    async fn start(&self, sandbox: &SandboxRef, spec: &SandboxSpec) -> Result<(), ProviderError>;

    /// Stops a sandbox, keeping it for a later start.
    async fn stop(&self, sandbox: &SandboxRef) -> Result<(), ProviderError>;

    /// Suspends a running sandbox, keeping its memory.
    async fn suspend(&self, sandbox: &SandboxRef) -> Result<(), ProviderError>;

    /// Resumes a suspended sandbox.
    async fn resume(&self, sandbox: &SandboxRef) -> Result<(), ProviderError>;

    /// Removes a sandbox and everything it holds.
    async fn destroy(&self, sandbox: &SandboxRef) -> Result<(), ProviderError>;

    /// Every sandbox this provider runs for Shoal, found by its tags, with its current state.
    async fn list(&self) -> Result<Vec<Observation>, ProviderError>;

    /// Stops everything this provider started, for a clean shutdown of the scheduler.
    async fn shutdown(&self) {}

    /// Why this provider's sandboxes are not isolated from the host and from each other, when
    /// they are not (the `process` provider on a host without bubblewrap). The scheduler shows it
    /// at start and on the dashboard, and admits one tenant only unless told otherwise.
    fn isolation_warning(&self) -> Option<String> {
        None
    }

    /// A tenant's limits, for providers that mirror them (the Kubernetes ResourceQuota); called
    /// when a tenant is first seen and whenever its limits change. Most providers ignore it.
    async fn tenant_limits(
        &self,
        _tenant: &str,
        _max_sandboxes: Option<u32>,
        _size: SandboxSize,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}
