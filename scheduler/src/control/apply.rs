//! A step applied: its store side now (so the next pass sees it), its provider call in the
//! background, and the store's final state from the call's answer. The states come from the
//! core's lifecycle table ([`shoal_core::SandboxOp`]): a step moves its sandbox from one of its
//! from-states to its in-flight state, and a call that succeeds moves it on to its result; one
//! that fails moves it back. Each call is made once: a failure is left to a later pass.

use super::{Control, sandbox_token};
use serde_json::json;
use shoal_core::{Millis, SandboxOp, SandboxSize};
use shoal_fleet::{ProviderError, SandboxRef, SandboxSpec};
use shoal_planner::Step;
use shoal_store::{NewSandbox, SandboxRecord, StoreError};
use std::sync::Arc;
use tracing::Instrument;

impl Control {
    /// Applies one step: the store's side now (so the next pass sees it), the provider call in the
    /// background.
    pub(super) async fn apply(
        self: &Arc<Self>,
        step: Step,
        size: SandboxSize,
        now: Millis,
    ) -> Result<(), StoreError> {
        let tenant = step.tenant().to_string();
        let op = step.kind();
        let Some(id) = step.sandbox().map(str::to_string) else {
            return self.apply_create(tenant, size, now).await;
        };
        let Some(rec) = self.store.sandbox(&id).await? else {
            return Ok(());
        };
        // A start of the tenant's own stopped sandbox is slower than a running blank's claim.
        if op == SandboxOp::Start && self.claim_for(&tenant, size, false, now).await? {
            return Ok(());
        }
        let prev = rec.state;
        if !self
            .store
            .transition(&id, op.from_states(), op.in_flight(), now)
            .await?
        {
            // It changed since the snapshot (it took a job, say): the next pass decides again.
            return Ok(());
        }
        if op.wakes() {
            self.note_wake(&tenant, op);
        }
        self.store
            .record_event(Some(&tenant), now, op.as_str(), &json!({"sandbox": id}))
            .await?;
        let this = Arc::clone(self);
        self.track(async move { this.call(op, rec, prev).await });
        Ok(())
    }

    /// A create: a new sandbox record, booting, unless the tenant's creates are held off.
    async fn apply_create(
        self: &Arc<Self>,
        tenant: String,
        size: SandboxSize,
        now: Millis,
    ) -> Result<(), StoreError> {
        if self
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocked(&tenant)
        {
            return Ok(());
        }
        // A pool that must grow claims a blank of the shared warm pool first.
        if self.claim_for(&tenant, size, true, now).await? {
            return Ok(());
        }
        let id = format!("sb_{}", uuid::Uuid::now_v7().simple());
        let token = sandbox_token(&self.settings.secret, &id);
        let rec = self
            .store
            .insert_sandbox(NewSandbox {
                id,
                tenant: tenant.clone(),
                provider: self.provider.name().to_string(),
                token_hash: crate::state::hash_token(&token),
                cpus_milli: size.millicpus(),
                memory_mb: size.memory_mb,
                now,
            })
            .await?;
        self.note_wake(&tenant, SandboxOp::Create);
        self.store
            .record_event(Some(&tenant), now, "create", &json!({"sandbox": rec.id}))
            .await?;
        let this = Arc::clone(self);
        self.track(async move { this.create(rec).await });
        Ok(())
    }

    async fn create(self: Arc<Self>, rec: SandboxRecord) {
        if !self.leads() {
            // Deposed since the plan: the new leader decides again.
            let _ = self
                .store
                .sandbox_down(&rec.id, SandboxOp::Destroy.result(), self.now())
                .await;
            return;
        }
        let mut spec = self.spec(&rec);
        // The tenant's regions as they are now: read here, not in the pass, so a create never
        // lands by an older list.
        let r = match self.store.tenant(&rec.tenant).await {
            Ok(t) => {
                spec.regions = t.map(|t| t.limits().regions).unwrap_or_default();
                self.provider
                    .create(&spec)
                    .instrument(self.call_span("create", &rec.tenant, &rec.id))
                    .await
            }
            Err(e) => Err(ProviderError::Transient(format!(
                "reading the tenant's regions: {e}"
            ))),
        };
        self.count_call("create", &r);
        match r {
            Ok(pid) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .succeeded(&rec.tenant);
                self.record_provider_id(&rec.id, &pid).await;
                if let Some(region) = self.provider.region_of(&pid)
                    && let Err(e) = self.store.set_sandbox_region(&rec.id, &region).await
                {
                    tracing::warn!(error = %e, "recording a sandbox's region failed");
                }
            }
            Err(e) => {
                let wait = self
                    .backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failed(&rec.tenant);
                tracing::warn!(tenant = %rec.tenant, sandbox = %rec.id, error = %e, ?wait, "create failed; holding off this tenant's creates");
                let now = self.now();
                let _ = self
                    .store
                    .sandbox_down(&rec.id, SandboxOp::Destroy.result(), now)
                    .await;
                let _ = self
                    .store
                    .record_event(
                        Some(&rec.tenant),
                        now,
                        "create_failed",
                        &create_failed(&rec.id, &spec.regions, &e),
                    )
                    .await;
                let kick = Arc::clone(&self.kick);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    kick.notify_one();
                });
            }
        }
        self.kick.notify_one();
    }

    /// Records a created sandbox's provider id, retrying with backoff: a machine whose id is
    /// lost cannot be woken, suspended or destroyed by it. Should every try fail (the database
    /// down for long), the next reconcile adopts the machine by its `shoal_sandbox` tag
    /// ([`Control::adopt_unrecorded`]).
    async fn record_provider_id(&self, id: &str, provider_id: &str) {
        use backon::Retryable;
        let r = (|| self.store.set_provider_id(id, provider_id))
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(100))
                    .with_max_delay(std::time::Duration::from_secs(5))
                    .with_max_times(6)
                    .with_jitter(),
            )
            .sleep(tokio::time::sleep)
            .notify(|e, wait| tracing::warn!(sandbox = id, provider_id, error = %e, ?wait, "recording a provider id failed; retrying"))
            .await;
        if let Err(e) = r {
            tracing::error!(sandbox = id, provider_id, error = %e, "recording a provider id failed; the next reconcile adopts the machine by its tag");
        }
    }

    /// The provider side of an operation on an existing sandbox, then the store's final state.
    async fn call(
        self: Arc<Self>,
        op: SandboxOp,
        rec: SandboxRecord,
        prev: shoal_core::SandboxState,
    ) {
        if !self.leads() {
            let _ = self
                .store
                .transition(&rec.id, &[op.in_flight()], prev, self.now())
                .await;
            return;
        }
        let spec = self.spec(&rec);
        let sref = SandboxRef {
            sandbox_id: rec.id.clone(),
            tenant: rec.tenant.clone(),
            provider_id: rec.provider_id.clone().unwrap_or_default(),
        };
        let p = &self.provider;
        let r = async {
            match op {
                SandboxOp::Resume => p.resume(&sref).await,
                SandboxOp::Start => p.start(&sref, &spec).await,
                SandboxOp::Suspend => p.suspend(&sref).await,
                SandboxOp::Stop => p.stop(&sref).await,
                SandboxOp::Destroy => p.destroy(&sref).await,
                SandboxOp::Create => Ok(()),
            }
        }
        .instrument(self.call_span(op.as_str(), &rec.tenant, &rec.id))
        .await;
        self.count_call(op.as_str(), &r);
        let store = &self.store;
        let now = self.now();
        let res = match r {
            // Down (stopped, destroyed): any job it still held goes back. A suspend is a
            // compare-and-set from its in-flight state. A woken sandbox stays booting until its
            // agent calls in.
            Ok(()) => match op {
                SandboxOp::Stop | SandboxOp::Destroy => store
                    .sandbox_down(&rec.id, op.result(), now)
                    .await
                    .map(|_| ()),
                SandboxOp::Suspend => store
                    .transition(&rec.id, &[op.in_flight()], op.result(), now)
                    .await
                    .map(|_| ()),
                SandboxOp::Create | SandboxOp::Resume | SandboxOp::Start => Ok(()),
            },
            Err(ProviderError::NotFound(e)) => {
                tracing::warn!(sandbox = %rec.id, error = %e, "the provider no longer has this sandbox");
                store
                    .sandbox_down(&rec.id, SandboxOp::Destroy.result(), now)
                    .await
                    .map(|_| ())
            }
            Err(e) => {
                tracing::warn!(sandbox = %rec.id, op = op.as_str(), error = %e, "provider call failed; reverting");
                let _ = store
                    .record_event(
                        Some(&rec.tenant),
                        now,
                        "provider_error",
                        &json!({"sandbox": rec.id, "op": op.as_str(), "error": e.to_string()}),
                    )
                    .await;
                store
                    .transition(&rec.id, &[op.in_flight()], prev, now)
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "recording a provider call's result failed");
        }
        self.signals.work_changed(&rec.tenant);
    }

    pub(super) fn spec(&self, s: &SandboxRecord) -> SandboxSpec {
        SandboxSpec {
            sandbox_id: s.id.clone(),
            tenant: s.tenant.clone(),
            pool: s.tenant.clone(),
            token: sandbox_token(&self.settings.secret, &s.id),
            scheduler_url: self.settings.advertise_url.clone(),
            size: SandboxSize {
                cpus: s.cpus_milli as f64 / 1000.0,
                memory_mb: s.memory_mb,
            },
            regions: Vec::new(),
        }
    }

    pub(super) fn note_wake(&self, tenant: &str, op: SandboxOp) {
        if let Some(waited) = self.signals.woken(tenant) {
            self.metrics
                .wake_latency
                .with_label_values(&[op.as_str()])
                .observe(waited.as_secs_f64());
        }
    }

    /// The span of one provider call: `provider_call`.
    /// It belongs to the sandbox's trace (`crate::telemetry::join_sandbox_trace`).
    pub(super) fn call_span(&self, op: &str, tenant: &str, sandbox: &str) -> tracing::Span {
        let span = tracing::info_span!(
            "provider_call",
            provider = self.provider.name(),
            operation = op,
            tenant = tenant,
            sandbox = sandbox
        );
        if !sandbox.is_empty() {
            crate::telemetry::join_sandbox_trace(&span, sandbox);
        }
        span
    }

    pub(super) fn count_call(&self, op: &str, r: &Result<impl Sized, ProviderError>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(ProviderError::RateLimited { .. }) => "rate_limited",
            Err(ProviderError::Capacity(_)) => "capacity",
            Err(ProviderError::NotFound(_)) => "not_found",
            Err(ProviderError::Conflict(_)) => "conflict",
            Err(ProviderError::Transient(_)) => "transient",
            Err(ProviderError::Permanent(_)) => "permanent",
        };
        self.metrics
            .provider_calls
            .with_label_values(&[self.provider.name(), op, outcome])
            .inc();
    }
}

/// The `create_failed` event's details. A create that found no capacity says so, with the
/// regions it was allowed (empty: the provider's own), so a tenant whose regions are all full
/// sees why its sandboxes do not come.
fn create_failed(sandbox: &str, regions: &[String], e: &ProviderError) -> serde_json::Value {
    let mut v = json!({"sandbox": sandbox, "error": e.to_string()});
    if let ProviderError::Capacity(_) = e {
        v["reason"] = json!("no_capacity");
        v["regions"] = json!(regions);
    }
    v
}
