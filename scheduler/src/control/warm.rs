//! The shared warm pool (`--warm-pool N`): blank sandboxes that belong to no tenant, claimed by a
//! tenant whose pool must grow before it creates (or starts) one of its own, and refilled in the
//! background. See `docs/adr/0025-shared-warm-pool.md`.
//!
//! - **Refill** (each pass, while leading): blanks of this provider below `warm_pool` are
//!   recorded ([`shoal_store::WarmPool::insert_blank`]) and created under
//!   [`shoal_fleet::BLANK_TENANT`] with a token derived from their own id, at the default
//!   sandbox size. A provider whose blanks wait stopped (`fly`) has each one stopped once it is
//!   up.
//! - **Claim**: a create step (or a start step, when a running blank is at hand) of a tenant
//!   whose sandbox size matches a blank's, and whose `limits.regions` (if any) hold the blank's
//!   region, claims the blank in the tenant's first region that has one. The store binds it in
//!   one transaction with the `claim` event ([`shoal_store::WarmPool::claim_blank`]). A running
//!   blank's agent, long-polling the lease endpoint with its own token, is woken and from then on
//!   leases the tenant's jobs; a stopped blank is started by [`shoal_fleet::Provider::claim`].
//! - **Billing**: a blank has no ledger entries, so no tenant's usage holds it; its time is the
//!   fleet's. The tenant's billing opens at the claim (or at the start of a stopped blank).

use super::{Control, sandbox_token};
use serde_json::json;
use shoal_core::{Millis, SandboxOp, SandboxSize};
use shoal_fleet::{BLANK_TENANT, ProviderError, SandboxRef, SandboxSpec};
use shoal_store::{BlankRecord, BlankState, NewBlank, SandboxRecord, StoreError};
use std::sync::Arc;
use tracing::Instrument;

impl Control {
    /// Tenant `tenant` (sandboxes of `size`) must grow: claims a blank instead if one fits.
    /// `stopped_too`: a stopped blank will do (for a create; a start of the tenant's own stopped
    /// sandbox is no slower than a stopped blank's). `true` when a blank was claimed.
    pub(super) async fn claim_for(
        self: &Arc<Self>,
        tenant: &str,
        size: SandboxSize,
        stopped_too: bool,
        now: Millis,
    ) -> Result<bool, StoreError> {
        if self.settings.warm_pool == 0 {
            return Ok(false);
        }
        let blanks = self.store.blanks().await?;
        let regions = match self.store.tenant(tenant).await? {
            Some(t) => t.limits().regions,
            None => return Ok(false),
        };
        let fits = |b: &&BlankRecord| {
            b.provider == self.provider.name()
                && b.provider_id.is_some()
                && (b.state == BlankState::Ready || (stopped_too && b.state == BlankState::Stopped))
                && b.cpus_milli == size.millicpus()
                && b.memory_mb == size.memory_mb
        };
        let mut candidates: Vec<&BlankRecord> = blanks.iter().filter(fits).collect();
        if !regions.is_empty() {
            // In the tenant's order of regions: the first region that has a blank.
            let rank = |b: &&BlankRecord| {
                b.region
                    .as_ref()
                    .and_then(|r| regions.iter().position(|x| x == r))
            };
            candidates.retain(|b| rank(b).is_some());
            candidates.sort_by_key(|b| rank(b));
        }
        for b in candidates {
            let Some(sb) = self
                .store
                .claim_blank(&b.id, tenant, &self.settings.usage, now)
                .await?
            else {
                continue; // Claimed by another pass, or gone: try the next.
            };
            tracing::info!(tenant, sandbox = %sb.id, blank_state = b.state.as_str(), "claimed a blank sandbox of the warm pool");
            self.note_wake(tenant, SandboxOp::Create);
            if b.state == BlankState::Stopped {
                let this = Arc::clone(self);
                self.track(async move { this.start_claimed(sb).await });
            } else {
                // Its agent waits on the blank signal; from now on its token leases the tenant's
                // jobs.
                self.signals.blank_claimed();
                self.signals.work_changed(tenant);
            }
            self.kick.notify_one();
            return Ok(true);
        }
        Ok(false)
    }

    /// Starts a claimed stopped blank with its tenant's settings; one that fails to start is
    /// given up (destroyed), and the tenant's pool decides again.
    async fn start_claimed(self: Arc<Self>, rec: SandboxRecord) {
        let mut spec = self.spec(&rec);
        if let Ok(Some(t)) = self.store.tenant(&rec.tenant).await {
            spec.regions = t.limits().regions;
        }
        let sref = SandboxRef {
            sandbox_id: rec.id.clone(),
            tenant: BLANK_TENANT.to_string(),
            provider_id: rec.provider_id.clone().unwrap_or_default(),
        };
        let r = self
            .provider
            .claim(&sref, &spec)
            .instrument(self.call_span("claim", &rec.tenant, &rec.id))
            .await;
        self.count_call("claim", &r);
        if let Err(e) = r {
            tracing::warn!(sandbox = %rec.id, error = %e, "starting a claimed blank failed; destroying it");
            let now = self.now();
            let _ = self
                .store
                .record_event(
                    Some(&rec.tenant),
                    now,
                    "provider_error",
                    &json!({"sandbox": rec.id, "op": "claim", "error": e.to_string()}),
                )
                .await;
            let _ = self.provider.destroy(&sref).await;
            let _ = self
                .store
                .sandbox_down(&rec.id, SandboxOp::Destroy.result(), now)
                .await;
        }
        self.signals.work_changed(&rec.tenant);
        self.kick.notify_one();
    }

    /// Creates blanks until this provider's warm pool holds `warm_pool` of them.
    pub(super) async fn refill(self: &Arc<Self>, now: Millis) -> Result<(), StoreError> {
        let want = self.settings.warm_pool as usize;
        if want == 0 || self.is_shutting_down() {
            return Ok(());
        }
        let have = self
            .store
            .blanks()
            .await?
            .iter()
            .filter(|b| b.provider == self.provider.name())
            .count();
        if have >= want
            || self
                .backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .blocked(BLANK_TENANT)
        {
            return Ok(());
        }
        let size = SandboxSize::default();
        for _ in have..want {
            let id = format!("sb_{}", uuid::Uuid::now_v7().simple());
            let token = sandbox_token(&self.settings.secret, &id);
            let b = self
                .store
                .insert_blank(NewBlank {
                    id,
                    provider: self.provider.name().to_string(),
                    token_hash: crate::state::hash_token(&token),
                    cpus_milli: size.millicpus(),
                    memory_mb: size.memory_mb,
                    now,
                })
                .await?;
            let this = Arc::clone(self);
            self.track(async move { this.create_blank(b, token, size).await });
        }
        Ok(())
    }

    async fn create_blank(self: Arc<Self>, b: BlankRecord, token: String, size: SandboxSize) {
        let spec = SandboxSpec {
            sandbox_id: b.id.clone(),
            tenant: BLANK_TENANT.to_string(),
            pool: BLANK_TENANT.to_string(),
            token,
            scheduler_url: self.settings.advertise_url.clone(),
            size,
            regions: Vec::new(),
        };
        let r = self
            .provider
            .create(&spec)
            .instrument(self.call_span("create", BLANK_TENANT, &b.id))
            .await;
        self.count_call("create", &r);
        let pid = match r {
            Ok(pid) => pid,
            Err(e) => {
                let wait = self
                    .backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .failed(BLANK_TENANT);
                tracing::warn!(sandbox = %b.id, error = %e, ?wait, "creating a blank sandbox failed");
                let _ = self.store.remove_blank(&b.id).await;
                return;
            }
        };
        self.backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .succeeded(BLANK_TENANT);
        let region = self.provider.region_of(&pid);
        let mut state = BlankState::Ready;
        if self.provider.blanks_wait_stopped() {
            let sref = SandboxRef {
                sandbox_id: b.id.clone(),
                tenant: BLANK_TENANT.to_string(),
                provider_id: pid.clone(),
            };
            let r = self.provider.stop(&sref).await;
            self.count_call("stop", &r);
            if let Err(e) = r {
                tracing::warn!(sandbox = %b.id, error = %e, "stopping a new blank sandbox failed; destroying it");
                let _ = self.provider.destroy(&sref).await;
                let _ = self.store.remove_blank(&b.id).await;
                return;
            }
            state = BlankState::Stopped;
        }
        let now = self.now();
        match self
            .store
            .set_blank(&b.id, state, Some(&pid), region.as_deref(), now)
            .await
        {
            Ok(true) => {
                let detail = json!({"sandbox": b.id, "state": state.as_str(), "region": region});
                if let Err(e) = self
                    .store
                    .record_event(None, now, "warm_pool_blank", &detail)
                    .await
                {
                    tracing::warn!(error = %e, "recording a blank sandbox's event failed");
                }
            }
            // Forgotten meanwhile (a reconcile): the provider's sandbox is an orphan now and is
            // collected as one.
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "recording a blank sandbox failed"),
        }
    }

    /// The provider reported a blank stopped or gone by itself: it is forgotten (and destroyed
    /// if it is still there), and the pool refills.
    pub(super) async fn blank_lost(&self, b: &BlankRecord, gone: bool) -> Result<(), StoreError> {
        if self.provider.blanks_wait_stopped() && !gone {
            return Ok(()); // It waits stopped (and was stopped by the refill itself).
        }
        if !gone {
            let sref = SandboxRef {
                sandbox_id: b.id.clone(),
                tenant: BLANK_TENANT.to_string(),
                provider_id: b.provider_id.clone().unwrap_or_default(),
            };
            let r: Result<(), ProviderError> = self.provider.destroy(&sref).await;
            self.count_call("destroy", &r);
        }
        self.store.remove_blank(&b.id).await?;
        self.kick.notify_one();
        Ok(())
    }
}
