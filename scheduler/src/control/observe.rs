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
    pub(super) async fn reconcile(&self, full: bool) -> Result<(), StoreError> {
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
        }
        Ok(())
    }

    /// Destroys what the provider lists and the store does not know.
    async fn collect_orphans(
        &self,
        listed: &[Observation],
        known: &HashMap<String, SandboxRecord>,
        blanks: &[shoal_store::BlankRecord],
    ) {
        let collected = shoal_fleet::orphans::collect_listed(&*self.provider, listed, |id| {
            known.contains_key(id) || blanks.iter().any(|b| b.id == id)
        })
        .instrument(tracing::info_span!("collect_orphans"))
        .await;
        for c in collected {
            self.count_call("destroy", &c.result);
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
