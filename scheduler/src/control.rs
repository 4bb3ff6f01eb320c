//! The control loop: on every relevant event (debounced by milliseconds) and on a slow tick, it
//! takes a snapshot from the store, asks the pure planner for a plan, and applies it through the
//! provider; it also turns the provider's observations into sandbox states and ledger entries,
//! expires lapsed leases, and collects provider resources the store does not know.

use crate::jobwatch::Pulse;
use crate::leader::Leadership;
use crate::state::{App, now_ms};
use serde_json::json;
use shoal_core::{Millis, PlanTier, SandboxSize, SandboxState};
use shoal_fleet::retry::RetryPolicy;
use shoal_fleet::{Observation, ObservedState, ProviderError, SandboxRef, SandboxSpec};
use shoal_metering::{LedgerEntry, LedgerKind};
use shoal_planner::{IdleAction, PoolPolicy, PoolSnapshot, SandboxView, Snapshot, Step};
use shoal_store::{NewSandbox, SandboxRecord, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
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
/// The slow tick: timeouts, lease expiry, retention.
const TICK: Duration = Duration::from_secs(1);
/// How often the provider is checked for resources the store does not know.
const COLLECT_EVERY: Duration = Duration::from_secs(60);

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
    app: Arc<App>,
    backoff: Mutex<CreateBackoff>,
    retry: RetryPolicy,
    /// When each sandbox started running, for the compute-seconds metric.
    running_since: Mutex<HashMap<String, Millis>>,
    leadership: Arc<dyn Leadership>,
    /// The fencing epoch while this replica leads; 0 while it does not.
    epoch: AtomicU64,
    /// The tenant limits last given to the provider.
    limits_sent: Mutex<HashMap<String, (Option<u32>, SandboxSize)>>,
    /// Provider calls in flight, so a shutdown can let them finish before stopping sandboxes.
    inflight: Mutex<tokio::task::JoinSet<()>>,
}

/// How often a leader confirms it still leads (and so how long a deposed one may act at most).
const LEADER_CHECK: Duration = Duration::from_secs(1);

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

fn weight(plan: PlanTier) -> u32 {
    plan.fair_share_weight()
}

impl Control {
    pub fn new(app: Arc<App>, leadership: Arc<dyn Leadership>) -> Arc<Self> {
        Arc::new(Control {
            app,
            backoff: Mutex::new(CreateBackoff::default()),
            retry: RetryPolicy::default(),
            running_since: Mutex::new(HashMap::new()),
            leadership,
            epoch: AtomicU64::new(0),
            limits_sent: Mutex::new(HashMap::new()),
            inflight: Mutex::new(tokio::task::JoinSet::new()),
        })
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
        let mut set = std::mem::take(&mut *self.inflight.lock().unwrap_or_else(|e| e.into_inner()));
        let _ =
            tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} }).await;
    }

    /// Whether this replica leads now (checked every second by the leadership task).
    pub fn leads(&self) -> bool {
        self.epoch.load(Ordering::SeqCst) != 0
    }

    /// Contends for leadership until shutdown; while leading, reconciles once and keeps
    /// confirming the lease on leadership.
    async fn lead(self: Arc<Self>) {
        let mut shutdown = self.app.shutdown.subscribe();
        loop {
            let epoch = tokio::select! {
                e = self.leadership.acquire() => e,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            };
            if let Err(e) = self.reconcile(true).await {
                tracing::error!(error = %e, "reconciling with the provider failed");
            }
            self.epoch.store(epoch, Ordering::SeqCst);
            self.app.metrics.leader.set(1);
            self.app.ready.send_replace(true);
            self.app.kick.notify_one();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LEADER_CHECK) => {}
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                }
                if !self.leadership.check(epoch).await {
                    self.epoch.store(0, Ordering::SeqCst);
                    self.app.metrics.leader.set(0);
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
            self.app.ready.send_replace(true);
        }
        tokio::spawn(Arc::clone(&self).lead());
        let this = Arc::clone(&self);
        let mut provider_done = self.app.provider_stopped.subscribe();
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
        let mut shutdown = self.app.shutdown.subscribe();
        let mut next_pass = Instant::now();
        loop {
            tokio::select! {
                _ = self.app.kick.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    tokio::time::sleep_until(next_pass.into()).await;
                }
                _ = tokio::time::sleep(TICK) => {
                    if self.leads() && let Err(e) = self.expire().await {
                        tracing::warn!(error = %e, "expiring leases failed");
                    }
                }
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
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
        for job in self.app.store.expire_leases(now_ms()).await? {
            tracing::info!(job = %job.id, state = %job.state, attempts = job.attempts, "lease lapsed");
            if job.state.is_terminal() {
                self.app
                    .metrics
                    .jobs_finished
                    .with_label_values(&[self.app.metrics.tenant(&job.tenant), job.state.as_str()])
                    .inc();
            }
            self.app.work_changed(&job.tenant);
            self.app.job_changed(&job.id, Pulse::State);
        }
        Ok(())
    }

    /// One planning pass: snapshot, plan, apply. Answers how long the snapshot took to read.
    async fn pass(self: &Arc<Self>) -> Result<Duration, StoreError> {
        if self.app.is_shutting_down() {
            return Ok(Duration::ZERO);
        }
        let now = now_ms();
        let reading = Instant::now();
        let (snap, sizes) = snapshot(&self.app, now, true).await?;
        let read = reading.elapsed();
        self.send_limits(&snap, &sizes);
        let plan = shoal_planner::plan(&snap, now);
        {
            let mut desired = self.app.desired.write().unwrap_or_else(|e| e.into_inner());
            for d in &plan.pools {
                desired.insert(d.tenant.clone(), d.desired);
            }
        }
        for step in plan.steps {
            let size = sizes.get(step.tenant()).copied().unwrap_or_default();
            if let Err(e) = self.apply(step, size, now).await {
                tracing::warn!(error = %e, "applying a step failed");
            }
        }
        Ok(read)
    }

    /// Gives the provider the limits of tenants it has not seen or whose limits changed.
    fn send_limits(self: &Arc<Self>, snap: &Snapshot, sizes: &HashMap<String, SandboxSize>) {
        let mut sent = self.limits_sent.lock().unwrap_or_else(|e| e.into_inner());
        for pool in &snap.pools {
            let now = (
                pool.policy.max_sandboxes,
                sizes.get(&pool.tenant).copied().unwrap_or_default(),
            );
            if sent.get(&pool.tenant) == Some(&now) {
                continue;
            }
            sent.insert(pool.tenant.clone(), now);
            let (this, tenant) = (Arc::clone(self), pool.tenant.clone());
            tokio::spawn(async move {
                if let Err(e) = this.app.provider.tenant_limits(&tenant, now.0, now.1).await {
                    tracing::warn!(tenant, error = %e, "giving the provider a tenant's limits failed");
                    // Try again on the next pass.
                    this.limits_sent
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&tenant);
                }
            });
        }
    }

    fn spec(&self, s: &SandboxRecord) -> SandboxSpec {
        SandboxSpec {
            sandbox_id: s.id.clone(),
            tenant: s.tenant.clone(),
            pool: s.tenant.clone(),
            token: sandbox_token(&self.app.admin_token, &s.id),
            scheduler_url: self.app.cfg.advertise_url.clone(),
            size: SandboxSize {
                cpus: s.cpus_milli as f64 / 1000.0,
                memory_mb: s.memory_mb,
            },
        }
    }

    fn note_wake(&self, tenant: &str, op: &str) {
        if let Some(t0) = self
            .app
            .waiting_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(tenant)
        {
            self.app
                .metrics
                .wake_latency
                .with_label_values(&[op])
                .observe(t0.elapsed().as_secs_f64());
        }
    }

    /// The span of one provider call (with its retries): `provider_call`.
    /// It belongs to the sandbox's trace (`crate::telemetry::join_sandbox_trace`).
    fn call_span(&self, op: &str, tenant: &str, sandbox: &str) -> tracing::Span {
        let span = tracing::info_span!(
            "provider_call",
            provider = self.app.provider.name(),
            operation = op,
            tenant = tenant,
            sandbox = sandbox
        );
        if !sandbox.is_empty() {
            crate::telemetry::join_sandbox_trace(&span, sandbox);
        }
        span
    }

    fn count_call(&self, op: &str, r: &Result<impl Sized, ProviderError>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(ProviderError::RateLimited { .. }) => "rate_limited",
            Err(ProviderError::Capacity(_)) => "capacity",
            Err(ProviderError::NotFound(_)) => "not_found",
            Err(ProviderError::Conflict(_)) => "conflict",
            Err(ProviderError::Transient(_)) => "transient",
            Err(ProviderError::Permanent(_)) => "permanent",
        };
        self.app
            .metrics
            .provider_calls
            .with_label_values(&[self.app.provider.name(), op, outcome])
            .inc();
    }

    /// Applies one step: the store's side now (so the next pass sees it), the provider call in the
    /// background.
    async fn apply(
        self: &Arc<Self>,
        step: Step,
        size: SandboxSize,
        now: Millis,
    ) -> Result<(), StoreError> {
        let store = &self.app.store;
        let tenant = step.tenant().to_string();
        let op = step.op();
        let (from, to): (&[SandboxState], SandboxState) = match &step {
            Step::Create { .. } => {
                if self
                    .backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .blocked(&tenant)
                {
                    return Ok(());
                }
                let id = format!("sb_{}", uuid::Uuid::now_v7().simple());
                let token = sandbox_token(&self.app.admin_token, &id);
                let rec = store
                    .insert_sandbox(NewSandbox {
                        id,
                        tenant: tenant.clone(),
                        provider: self.app.provider.name().to_string(),
                        token_hash: crate::state::hash_token(&token),
                        cpus_milli: size.millicpus(),
                        memory_mb: size.memory_mb,
                        now,
                    })
                    .await?;
                self.note_wake(&tenant, op);
                store
                    .record_event(Some(&tenant), now, "create", &json!({"sandbox": rec.id}))
                    .await?;
                let this = Arc::clone(self);
                self.track(async move { this.create(rec).await });
                return Ok(());
            }
            Step::Resume { .. } => (&[SandboxState::Suspended], SandboxState::Booting),
            Step::Start { .. } => (&[SandboxState::Stopped], SandboxState::Booting),
            Step::Suspend { .. } => (&[SandboxState::Ready], SandboxState::Suspending),
            Step::Stop { .. } => (&[SandboxState::Ready], SandboxState::Stopping),
            Step::Destroy { .. } => (
                &[
                    SandboxState::Stopped,
                    SandboxState::Suspended,
                    SandboxState::Booting,
                ],
                SandboxState::Destroying,
            ),
        };
        let id = step.sandbox().unwrap_or_default().to_string();
        let Some(rec) = store.sandbox(&id).await? else {
            return Ok(());
        };
        let prev = rec.state;
        if !store.transition(&id, from, to, now).await? {
            // It changed since the snapshot (it took a job, say): the next pass decides again.
            return Ok(());
        }
        if matches!(step, Step::Resume { .. } | Step::Start { .. }) {
            self.note_wake(&tenant, op);
        }
        store
            .record_event(Some(&tenant), now, op, &json!({"sandbox": id}))
            .await?;
        let this = Arc::clone(self);
        self.track(async move { this.call(step, rec, prev).await });
        Ok(())
    }

    async fn create(self: Arc<Self>, rec: SandboxRecord) {
        if !self.leads() {
            // Deposed since the plan: the new leader decides again.
            let _ = self
                .app
                .store
                .sandbox_down(&rec.id, SandboxState::Destroyed, now_ms())
                .await;
            return;
        }
        let spec = self.spec(&rec);
        let provider = Arc::clone(&self.app.provider);
        let r = self
            .retry
            .run(|| provider.create(&spec))
            .instrument(self.call_span("create", &rec.tenant, &rec.id))
            .await;
        self.count_call("create", &r);
        let store = &self.app.store;
        match r {
            Ok(pid) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .succeeded(&rec.tenant);
                if let Err(e) = store.set_provider_id(&rec.id, &pid).await {
                    tracing::warn!(error = %e, "recording a provider id failed");
                }
            }
            Err(e) => {
                let wait = self
                    .backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failed(&rec.tenant);
                tracing::warn!(tenant = %rec.tenant, sandbox = %rec.id, error = %e, ?wait, "create failed; holding off this tenant's creates");
                let now = now_ms();
                let _ = store
                    .sandbox_down(&rec.id, SandboxState::Destroyed, now)
                    .await;
                let _ = store
                    .record_event(
                        Some(&rec.tenant),
                        now,
                        "create_failed",
                        &json!({"sandbox": rec.id, "error": e.to_string()}),
                    )
                    .await;
                let this = Arc::clone(&self);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    this.app.kick.notify_one();
                });
            }
        }
        self.app.kick.notify_one();
    }

    /// The provider side of a step on an existing sandbox, then the store's final state.
    async fn call(self: Arc<Self>, step: Step, rec: SandboxRecord, prev: SandboxState) {
        if !self.leads() {
            let mid = match step {
                Step::Resume { .. } | Step::Start { .. } => SandboxState::Booting,
                Step::Suspend { .. } => SandboxState::Suspending,
                Step::Stop { .. } => SandboxState::Stopping,
                _ => SandboxState::Destroying,
            };
            let _ = self
                .app
                .store
                .transition(&rec.id, &[mid], prev, now_ms())
                .await;
            return;
        }
        let provider = Arc::clone(&self.app.provider);
        let spec = self.spec(&rec);
        let sref = SandboxRef {
            sandbox_id: rec.id.clone(),
            tenant: rec.tenant.clone(),
            provider_id: rec.provider_id.clone().unwrap_or_default(),
        };
        let op = step.op();
        let r = self
            .retry
            .run(|| {
                let (p, sref, spec, step) =
                    (Arc::clone(&provider), sref.clone(), spec.clone(), &step);
                async move {
                    match step {
                        Step::Resume { .. } => p.resume(&sref).await,
                        Step::Start { .. } => p.start(&sref, &spec).await,
                        Step::Suspend { .. } => p.suspend(&sref).await,
                        Step::Stop { .. } => p.stop(&sref).await,
                        Step::Destroy { .. } => p.destroy(&sref).await,
                        Step::Create { .. } => Ok(()),
                    }
                }
            })
            .instrument(self.call_span(op, &rec.tenant, &rec.id))
            .await;
        self.count_call(op, &r);
        let store = &self.app.store;
        let now = now_ms();
        let res = match (&step, r) {
            (Step::Stop { .. }, Ok(())) => store
                .sandbox_down(&rec.id, SandboxState::Stopped, now)
                .await
                .map(|_| ()),
            (Step::Destroy { .. }, Ok(())) => store
                .sandbox_down(&rec.id, SandboxState::Destroyed, now)
                .await
                .map(|_| ()),
            (Step::Suspend { .. }, Ok(())) => store
                .transition(
                    &rec.id,
                    &[SandboxState::Suspending],
                    SandboxState::Suspended,
                    now,
                )
                .await
                .map(|_| ()),
            (_, Ok(())) => Ok(()),
            (_, Err(ProviderError::NotFound(e))) => {
                tracing::warn!(sandbox = %rec.id, error = %e, "the provider no longer has this sandbox");
                store
                    .sandbox_down(&rec.id, SandboxState::Destroyed, now)
                    .await
                    .map(|_| ())
            }
            (_, Err(e)) => {
                tracing::warn!(sandbox = %rec.id, op, error = %e, "provider call failed; reverting");
                let _ = store
                    .record_event(
                        Some(&rec.tenant),
                        now,
                        "provider_error",
                        &json!({"sandbox": rec.id, "op": op, "error": e.to_string()}),
                    )
                    .await;
                let mid = match step {
                    Step::Resume { .. } | Step::Start { .. } => SandboxState::Booting,
                    Step::Suspend { .. } => SandboxState::Suspending,
                    Step::Stop { .. } => SandboxState::Stopping,
                    _ => SandboxState::Destroying,
                };
                store
                    .transition(&rec.id, &[mid], prev, now)
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "recording a provider call's result failed");
        }
        self.app.work_changed(&rec.tenant);
    }

    /// Turns what the provider observed into sandbox states and ledger entries.
    async fn observe(&self, o: Observation) {
        if let Err(e) = self.try_observe(&o).await {
            tracing::warn!(error = %e, sandbox = %o.sandbox.sandbox_id, "recording an observation failed");
        }
    }

    async fn try_observe(&self, o: &Observation) -> Result<(), StoreError> {
        let store = &self.app.store;
        let Some(rec) = store.sandbox(&o.sandbox.sandbox_id).await? else {
            return Ok(());
        };
        let entry = |kind| LedgerEntry {
            sandbox_id: rec.id.clone(),
            tenant: rec.tenant.clone(),
            at: o.at,
            kind,
            note: None,
        };
        let usage = self.app.cfg.usage_context();
        match o.state {
            ObservedState::Running => {
                store
                    .record_ledger(
                        &entry(LedgerKind::Running {
                            cpus_milli: rec.cpus_milli,
                            memory_mb: rec.memory_mb,
                        }),
                        &usage,
                        now_ms(),
                    )
                    .await?;
                self.running_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(rec.id.clone())
                    .or_insert(o.at);
                return Ok(());
            }
            ObservedState::Suspended | ObservedState::Stopped | ObservedState::Gone => {
                if store
                    .record_ledger(&entry(LedgerKind::Stopped), &usage, now_ms())
                    .await?
                    > 0
                {
                    self.app.usage_kick.notify_one();
                }
                if let Some(t0) = self
                    .running_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&rec.id)
                {
                    self.app
                        .metrics
                        .compute_seconds
                        .with_label_values(&[self.app.metrics.tenant(&rec.tenant)])
                        .inc_by((o.at - t0).max(0) as f64 / 1000.0);
                }
            }
        }
        let now = now_ms();
        match o.state {
            ObservedState::Suspended => {
                store
                    .transition(
                        &rec.id,
                        &[SandboxState::Suspending, SandboxState::Ready],
                        SandboxState::Suspended,
                        now,
                    )
                    .await?;
            }
            ObservedState::Stopped
                if rec.state != SandboxState::Destroying && rec.state != SandboxState::Stopped =>
            {
                let back = store
                    .sandbox_down(&rec.id, SandboxState::Stopped, now)
                    .await?;
                if rec.state != SandboxState::Stopping {
                    tracing::warn!(sandbox = %rec.id, state = %rec.state, requeued = back.len(), "sandbox stopped by itself");
                    store.record_event(Some(&rec.tenant), now, "sandbox_lost", &json!({"sandbox": rec.id, "was": rec.state, "jobs_requeued": back.len()})).await?;
                }
                for j in back.iter().filter(|j| j.state.is_terminal()) {
                    self.app
                        .metrics
                        .jobs_finished
                        .with_label_values(&[self.app.metrics.tenant(&j.tenant), j.state.as_str()])
                        .inc();
                }
                self.app.work_changed(&rec.tenant);
                for j in &back {
                    self.app.job_changed(&j.id, Pulse::State);
                }
            }
            ObservedState::Gone => {
                let back = store
                    .sandbox_down(&rec.id, SandboxState::Destroyed, now)
                    .await?;
                self.app.work_changed(&rec.tenant);
                for j in &back {
                    self.app.job_changed(&j.id, Pulse::State);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Aligns the store with what the provider has. At start-up (`full`), sandboxes the provider
    /// no longer has are closed in the ledger and marked destroyed; always, resources the store
    /// does not know (or knows as destroyed) are destroyed.
    async fn reconcile(&self, full: bool) -> Result<(), StoreError> {
        let store = &self.app.store;
        let listed = match self.app.provider.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing the provider's sandboxes failed");
                return Ok(());
            }
        };
        let known: HashMap<String, SandboxRecord> = store
            .sandboxes(None)
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let collected = shoal_fleet::orphans::collect_listed(&*self.app.provider, &listed, |id| {
            known.contains_key(id)
        })
        .instrument(tracing::info_span!("collect_orphans"))
        .await;
        for c in collected {
            self.count_call("destroy", &c.result);
            let _ = store
                .record_event(
                    Some(&c.sandbox.tenant),
                    now_ms(),
                    "orphan_collected",
                    &json!({"sandbox": c.sandbox.sandbox_id, "provider_id": c.sandbox.provider_id}),
                )
                .await;
        }
        if full {
            let now = now_ms();
            for (id, rec) in &known {
                if listed.iter().any(|o| &o.sandbox.sandbox_id == id) {
                    continue;
                }
                // No provider time for a sandbox the provider no longer lists: the last sign of
                // life stands in (an agent's heartbeat, lease or call), else the last state change.
                let (at, basis) = match rec.last_seen {
                    Some(seen) if seen >= rec.since => (seen.min(now), "last_seen"),
                    _ => (rec.since.min(now), "since"),
                };
                let note = json!({
                    "finding": "reconcile",
                    "reason": "the provider no longer lists this sandbox",
                    "closed_at": basis,
                    "state_was": rec.state,
                    "reconciled_at": now,
                });
                tracing::warn!(sandbox = %id, at, basis, "closing the billing of a sandbox the provider no longer lists");
                store
                    .record_ledger(
                        &LedgerEntry {
                            sandbox_id: id.clone(),
                            tenant: rec.tenant.clone(),
                            at,
                            kind: LedgerKind::Stopped,
                            note: Some(note),
                        },
                        &self.app.cfg.usage_context(),
                        now,
                    )
                    .await?;
                self.app.usage_kick.notify_one();
                store.sandbox_down(id, SandboxState::Destroyed, now).await?;
            }
        }
        Ok(())
    }
}

/// Builds the snapshot the planner sees at `now`, with each tenant's sandbox size; updates the
/// pool gauges on the way. Under the adaptive idle policy, the pools of tenants without an idle
/// timeout of their own get the policy's advice (`crate::idle`), and with `record` (a planning
/// pass, not a dry run) their demand goes into its history.
pub async fn snapshot(
    app: &App,
    now: Millis,
    record: bool,
) -> Result<(Snapshot, HashMap<String, SandboxSize>), StoreError> {
    let tenants = app.store.tenants().await?;
    let counts: HashMap<String, shoal_store::QueueCounts> =
        app.store.queue_counts(now).await?.into_iter().collect();
    // Work known in advance: each tenant's schedules' next fires (delayed jobs and retries are
    // in the queue counts).
    let mut fires: HashMap<String, Millis> = HashMap::new();
    for s in app.store.schedules(None).await? {
        if let Some(at) = s.next_fire_at {
            let e = fires.entry(s.tenant).or_insert(at);
            *e = (*e).min(at);
        }
    }
    let mut by_tenant: HashMap<String, Vec<SandboxRecord>> = HashMap::new();
    for s in app.store.sandboxes(None).await? {
        by_tenant.entry(s.tenant.clone()).or_default().push(s);
    }
    let caps = app.provider.capabilities();
    let mut sizes = HashMap::new();
    let mut pools = Vec::with_capacity(tenants.len());
    let mut depth: HashMap<String, i64> = HashMap::new();
    let mut running: HashMap<String, i64> = HashMap::new();
    let mut sandbox_gauge: HashMap<(String, &str), i64> = HashMap::new();
    for t in tenants {
        let limits = t.limits();
        let c = counts.get(&t.id).copied().unwrap_or_default();
        let sandboxes = by_tenant.remove(&t.id).unwrap_or_default();
        // Tenants past the label bound share `other`: their gauges add up, set once below.
        let label = app.metrics.tenant(&t.id).to_string();
        *depth.entry(label.clone()).or_default() += c.queued as i64;
        *running.entry(label.clone()).or_default() += c.running as i64;
        for b in ["booting", "ready", "busy", "suspended", "stopped"] {
            sandbox_gauge.entry((label.clone(), b)).or_default();
        }
        for s in &sandboxes {
            if let Some(b) = s.state.pool_bucket() {
                *sandbox_gauge.entry((label.clone(), b)).or_default() += 1;
            }
        }
        sizes.insert(t.id.clone(), limits.sandbox_size);
        let idle_action = if app.cfg.idle_action == "suspend" && caps.suspend {
            IdleAction::Suspend
        } else {
            IdleAction::Stop
        };
        let mut pool = PoolSnapshot {
            tenant: t.id.clone(),
            policy: PoolPolicy {
                min_warm: limits.min_warm,
                max_sandboxes: limits.max_sandboxes,
                max_concurrent_jobs: limits.max_concurrent_jobs,
                slots_per_sandbox: 1,
                idle_timeout_ms: limits.idle_timeout_s.map_or(
                    app.cfg.idle_timeout.as_millis() as Millis,
                    |s| {
                        // Validated to a year at most; saturating all the same.
                        Millis::try_from(s)
                            .unwrap_or(Millis::MAX)
                            .saturating_mul(1000)
                    },
                ),
                idle_action,
                retention_ms: app.cfg.sandbox_retention.as_millis() as Millis,
                boot_timeout_ms: app.cfg.boot_timeout.as_millis() as Millis,
                weight: weight(t.plan),
                due_lead_ms: app.due_lead_ms(),
            },
            // Jobs waiting for their time are not demand yet: they are `next_due`.
            queued: c.queued.saturating_sub(c.waiting).min(u64::from(u32::MAX)) as u32,
            running: c.running.min(u64::from(u32::MAX)) as u32,
            draining: t.draining,
            prewarm: None,
            next_due: match (c.next_due, fires.get(&t.id).copied()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            // One job per delayed job, retry or fire as far as the snapshot knows.
            due_jobs: 1,
            sandboxes: sandboxes
                .iter()
                .map(|s| SandboxView {
                    id: s.id.clone(),
                    state: s.state,
                    since: s.since,
                    idle_since: s.idle_since,
                })
                .collect(),
        };
        if let Some(adaptive) = &app.adaptive
            && limits.idle_timeout_s.is_none()
        {
            adaptive.advise(&mut pool, now, record);
        }
        pools.push(pool);
    }
    for (label, v) in depth {
        app.metrics.queue_depth.with_label_values(&[&label]).set(v);
    }
    for (label, v) in running {
        app.metrics.jobs_running.with_label_values(&[&label]).set(v);
    }
    for ((label, state), v) in sandbox_gauge {
        app.metrics
            .sandboxes
            .with_label_values(&[&label, state])
            .set(v);
    }
    Ok((
        Snapshot {
            pools,
            fleet_max_active: app.cfg.fleet_max_sandboxes,
        },
        sizes,
    ))
}

/// The plan the planner would make now, without applying it.
pub async fn dry_run(app: &App) -> Result<shoal_planner::Plan, StoreError> {
    let now = now_ms();
    let (snap, _) = snapshot(app, now, false).await?;
    Ok(shoal_planner::plan(&snap, now))
}
