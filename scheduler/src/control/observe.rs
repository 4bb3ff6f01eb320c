//! What the provider reports: its observations turned into sandbox states and ledger entries, and
//! reconciling the store with what it lists (closing sandboxes it no longer has, collecting the
//! orphans it has that the store does not know).

use super::Control;
use crate::jobwatch::Pulse;
use serde_json::json;
use shoal_core::{Millis, SandboxState};
use shoal_fleet::{Observation, ObservedState};
use shoal_metering::{LedgerEntry, LedgerKind};
use shoal_store::{SandboxRecord, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument;

impl Control {
    /// Turns what the provider observed into sandbox states and ledger entries.
    pub(super) async fn observe(self: &Arc<Self>, o: Observation) {
        if let Err(e) = self.try_observe(&o).await {
            tracing::warn!(error = %e, sandbox = %o.sandbox.sandbox_id, "recording an observation failed");
        }
    }

    async fn try_observe(self: &Arc<Self>, o: &Observation) -> Result<(), StoreError> {
        let store = &self.store;
        let Some(rec) = store.sandbox(&o.sandbox.sandbox_id).await? else {
            // A blank of the warm pool: billed to no tenant; one that went down is replaced.
            if !matches!(o.state, ObservedState::Running)
                && let Some(b) = store
                    .blanks()
                    .await?
                    .into_iter()
                    .find(|b| b.id == o.sandbox.sandbox_id)
            {
                self.blank_lost(&b, o.state == ObservedState::Gone).await?;
            }
            return Ok(());
        };
        let entry = |kind| LedgerEntry {
            sandbox_id: rec.id.clone(),
            tenant: rec.tenant.clone(),
            at: o.at,
            kind,
            note: None,
        };
        let usage = &self.settings.usage;
        match o.state {
            ObservedState::Running => {
                store
                    .record_ledger(
                        &entry(LedgerKind::Running {
                            cpus_milli: rec.cpus_milli,
                            memory_mb: rec.memory_mb,
                        }),
                        usage,
                        self.now(),
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
                    .record_ledger(&entry(LedgerKind::Stopped), usage, self.now())
                    .await?
                    > 0
                {
                    self.signals.usage_written();
                }
                if let Some(t0) = self
                    .running_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&rec.id)
                {
                    self.metrics
                        .compute_seconds
                        .with_label_values(&[self.metrics.tenant(&rec.tenant)])
                        .inc_by((o.at - t0).max(0) as f64 / 1000.0);
                }
            }
        }
        let now = self.now();
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
            // A ready or busy sandbox the provider saw stop (or fail) by itself is unhealthy:
            // its jobs go back, and it is destroyed and replaced rather than woken again.
            ObservedState::Stopped
                if matches!(rec.state, SandboxState::Ready | SandboxState::Busy)
                    && self
                        .mark_unhealthy(&rec.id, Millis::MAX, super::health::Cause::Provider, now)
                        .await? => {}
            ObservedState::Stopped
                if rec.state != SandboxState::Destroying
                    && rec.state != SandboxState::Stopped
                    && rec.state != SandboxState::Unhealthy =>
            {
                let back = store
                    .sandbox_down(&rec.id, SandboxState::Stopped, now)
                    .await?;
                if rec.state != SandboxState::Stopping {
                    tracing::warn!(sandbox = %rec.id, state = %rec.state, requeued = back.len(), "sandbox stopped by itself");
                    store.record_event(Some(&rec.tenant), now, "sandbox_lost", &json!({"sandbox": rec.id, "was": rec.state, "jobs_requeued": back.len()})).await?;
                }
                for j in back.iter().filter(|j| j.state.is_terminal()) {
                    self.count_finished(j);
                }
                self.signals.work_changed(&rec.tenant);
                for j in &back {
                    self.signals.job_changed(&j.id, Pulse::State);
                }
            }
            ObservedState::Gone => {
                let back = store
                    .sandbox_down(&rec.id, SandboxState::Destroyed, now)
                    .await?;
                self.signals.work_changed(&rec.tenant);
                for j in &back {
                    self.signals.job_changed(&j.id, Pulse::State);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Aligns the store with what the provider has. At start-up (`full`), sandboxes the provider
    /// no longer has are closed in the ledger and marked destroyed; always, resources the store
    /// does not know (or knows as destroyed) are destroyed.
    pub(super) async fn reconcile(self: &Arc<Self>, full: bool) -> Result<(), StoreError> {
        let listed = match self.provider.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing the provider's sandboxes failed");
                return Ok(());
            }
        };
        let known: HashMap<String, SandboxRecord> = self
            .store
            .sandboxes(None)
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let blanks = self.store.blanks().await?;
        self.adopt_unrecorded(&listed, &known).await;
        self.collect_orphans(&listed, &known, &blanks).await;
        if full {
            self.close_unlisted(&listed, &known).await?;
            // Blanks the provider no longer has (a restart stopped them all) are forgotten; the
            // pool refills.
            for b in blanks.iter().filter(|b| b.provider == self.provider.name()) {
                if !listed.iter().any(|o| o.sandbox.sandbox_id == b.id) {
                    self.store.remove_blank(&b.id).await?;
                }
            }
            self.settle_in_flight(&listed, &known).await?;
        }
        Ok(())
    }

    /// At a takeover: the calls a dead predecessor had in flight (a sandbox left `suspending`,
    /// `stopping` or `destroying`) will never answer. Each such sandbox is settled by what the
    /// provider lists: suspended or stopped, it is recorded so; still running, it goes back to
    /// `ready` (the planner suspends it again when it is idle); being destroyed, the destroy is
    /// made again (it is idempotent).
    async fn settle_in_flight(
        self: &Arc<Self>,
        listed: &[Observation],
        known: &HashMap<String, SandboxRecord>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        for (id, rec) in known {
            let stuck = matches!(
                rec.state,
                SandboxState::Suspending | SandboxState::Stopping | SandboxState::Destroying
            );
            if !stuck {
                continue;
            }
            let Some(o) = listed.iter().find(|o| &o.sandbox.sandbox_id == id) else {
                continue;
            };
            tracing::info!(sandbox = %id, state = %rec.state, seen = ?o.state, "settling a call a predecessor left in flight");
            match (rec.state, o.state) {
                (SandboxState::Destroying, _) => {
                    let this = Arc::clone(self);
                    let (sref, id) = (o.sandbox.clone(), id.clone());
                    self.track(async move {
                        let r = this.provider.destroy(&sref).await;
                        this.count_call("destroy", &r);
                        if r.is_ok() || matches!(r, Err(shoal_fleet::ProviderError::NotFound(_))) {
                            let _ = this
                                .store
                                .sandbox_down(&id, SandboxState::Destroyed, this.now())
                                .await;
                        }
                    });
                }
                (_, ObservedState::Suspended) => {
                    self.store
                        .transition(id, &[rec.state], SandboxState::Suspended, now)
                        .await?;
                }
                (_, ObservedState::Stopped) => {
                    self.store
                        .sandbox_down(id, SandboxState::Stopped, now)
                        .await?;
                }
                (_, ObservedState::Running) => {
                    self.store
                        .transition(id, &[rec.state], SandboxState::Ready, now)
                        .await?;
                    self.signals.work_changed(&rec.tenant);
                }
                (_, ObservedState::Gone) => {}
            }
        }
        Ok(())
    }

    /// Records the provider id of each listed sandbox the store knows without one (its create
    /// answered but recording the id failed, or the leader died in between): the machine is
    /// found by its `shoal_sandbox` tag and adopted, once, instead of being lost or collected.
    async fn adopt_unrecorded(
        &self,
        listed: &[Observation],
        known: &HashMap<String, SandboxRecord>,
    ) {
        for o in listed {
            let Some(rec) = known.get(&o.sandbox.sandbox_id) else {
                continue;
            };
            if rec.provider_id.is_some() || o.state == ObservedState::Gone {
                continue;
            }
            let pid = &o.sandbox.provider_id;
            match self.store.set_provider_id(&rec.id, pid).await {
                Ok(()) => {
                    tracing::info!(sandbox = %rec.id, provider_id = %pid, "adopted a machine whose id had not been recorded");
                    if let Some(region) = self.provider.region_of(pid) {
                        let _ = self.store.set_sandbox_region(&rec.id, &region).await;
                    }
                    let _ = self
                        .store
                        .record_event(
                            Some(&rec.tenant),
                            self.now(),
                            "sandbox_adopted",
                            &json!({"sandbox": rec.id, "provider_id": pid}),
                        )
                        .await;
                }
                Err(e) => {
                    tracing::warn!(sandbox = %rec.id, error = %e, "adopting a machine failed")
                }
            }
        }
    }

    /// Destroys what the provider lists and the store does not know, each machine once: one
    /// this replica has already collected (its destroy answered) is not destroyed again while
    /// the provider still lists it on its way out.
    async fn collect_orphans(
        &self,
        listed: &[Observation],
        known: &HashMap<String, SandboxRecord>,
        blanks: &[shoal_store::BlankRecord],
    ) {
        let done: std::collections::HashSet<String> = {
            let mut collected = self.collected.lock().unwrap_or_else(|e| e.into_inner());
            // A machine the provider no longer lists is gone for good: forget it.
            collected.retain(|pid| listed.iter().any(|o| &o.sandbox.provider_id == pid));
            collected.clone()
        };
        let collected = shoal_fleet::orphans::collect_listed(&*self.provider, listed, |id| {
            known.contains_key(id)
                || blanks.iter().any(|b| b.id == id)
                || listed
                    .iter()
                    .any(|o| o.sandbox.sandbox_id == id && done.contains(&o.sandbox.provider_id))
        })
        .instrument(tracing::info_span!("collect_orphans"))
        .await;
        for c in collected {
            self.count_call("destroy", &c.result);
            if c.result.is_err() {
                // Tried again on the next pass; only a collection that happened is recorded.
                continue;
            }
            self.collected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(c.sandbox.provider_id.clone());
            let _ = self
                .store
                .record_event(
                    Some(&c.sandbox.tenant),
                    self.now(),
                    "orphan_collected",
                    &json!({"sandbox": c.sandbox.sandbox_id, "provider_id": c.sandbox.provider_id}),
                )
                .await;
        }
    }

    /// Closes the billing of, and marks destroyed, the sandboxes the store knows and the provider
    /// no longer lists.
    async fn close_unlisted(
        &self,
        listed: &[Observation],
        known: &HashMap<String, SandboxRecord>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        for (id, rec) in known {
            if listed.iter().any(|o| &o.sandbox.sandbox_id == id) {
                continue;
            }
            // No provider time for a sandbox the provider no longer lists: the last sign of
            // life stands in (an agent's heartbeat, lease or call), else the last state change.
            // The same last sign as the health check's.
            let at = rec.last_sign().min(now);
            let basis = if rec.last_seen.is_some_and(|seen| seen >= rec.since) {
                "last_seen"
            } else {
                "since"
            };
            let note = json!({
                "finding": "reconcile",
                "reason": "the provider no longer lists this sandbox",
                "closed_at": basis,
                "state_was": rec.state,
                "reconciled_at": now,
            });
            tracing::warn!(sandbox = %id, at, basis, "closing the billing of a sandbox the provider no longer lists");
            self.store
                .record_ledger(
                    &LedgerEntry {
                        sandbox_id: id.clone(),
                        tenant: rec.tenant.clone(),
                        at,
                        kind: LedgerKind::Stopped,
                        note: Some(note),
                    },
                    &self.settings.usage,
                    now,
                )
                .await?;
            self.signals.usage_written();
            self.store
                .sandbox_down(id, SandboxState::Destroyed, now)
                .await?;
        }
        Ok(())
    }
}
