//! Sandbox health: a sandbox whose agent has gone silent (no heartbeat, lease request or
//! completion for three heartbeat intervals), or whose provider reports it stopped or failed by
//! itself, is `unhealthy`. Its running jobs go back as lost (one attempt used, their retry policy
//! applies), its billing ends at its last sign of life, and it is destroyed; the planner, which
//! does not count it as active, replaces it by its usual rules.
//!
//! The check itself is pure ([`silent`]): the sandboxes a store read returned, the limits and the
//! time. The store re-checks each under the sandbox's lock, so an agent that calls in between the
//! read and the mark keeps its sandbox.

use super::Control;
use crate::jobwatch::Pulse;
use serde_json::json;
use shoal_core::{Millis, SandboxSize, SandboxState};
use shoal_metering::{LedgerEntry, LedgerKind};
use shoal_planner::Step;
use shoal_store::{SandboxRecord, StoreError};
use std::sync::Arc;

/// The longest an agent's lease request (a long poll) waits for work.
pub const MAX_LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How many heartbeat intervals an agent may miss before its sandbox is unhealthy.
pub const MISSED_HEARTBEATS: Millis = 3;

/// How long a sandbox's agent may stay silent, by what it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// A busy sandbox's agent heartbeats its job every heartbeat interval: three of them.
    pub busy_ms: Millis,
    /// A ready sandbox's agent sits in a lease request (a long poll of at most
    /// [`MAX_LEASE_WAIT`]) and asks again when it ends: the longest poll
    /// plus three heartbeat intervals.
    pub ready_ms: Millis,
}

impl HealthLimits {
    /// The limits for agents heartbeating every `heartbeat_ms`.
    pub fn of(heartbeat_ms: Millis) -> Self {
        let busy_ms = heartbeat_ms.max(0).saturating_mul(MISSED_HEARTBEATS);
        let poll = Millis::try_from(MAX_LEASE_WAIT.as_millis()).unwrap_or(Millis::MAX);
        HealthLimits {
            busy_ms,
            ready_ms: busy_ms.saturating_add(poll),
        }
    }

    /// The silence allowed a sandbox in `state`; `None` for states whose agent is not expected to
    /// call in (booting sandboxes have the planner's boot timeout; asleep ones have no agent).
    pub fn allowed(&self, state: SandboxState) -> Option<Millis> {
        match state {
            SandboxState::Busy => Some(self.busy_ms),
            SandboxState::Ready => Some(self.ready_ms),
            _ => None,
        }
    }
}

/// One sandbox found silent: the time its last sign of life must be at or before for the store
/// to mark it (its limit back from `now`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silent {
    pub id: String,
    pub silent_since: Millis,
}

/// The sandboxes silent past their limit at `now`. Silence counts from `watching_since` at the
/// earliest (when this replica began to lead): agents that could not reach a scheduler while none
/// led, or while it restarted, get a full limit to call in again.
pub fn silent(
    sandboxes: &[SandboxRecord],
    limits: HealthLimits,
    watching_since: Millis,
    now: Millis,
) -> Vec<Silent> {
    sandboxes
        .iter()
        .filter_map(|s| {
            let allowed = limits.allowed(s.state)?;
            let cutoff = now.saturating_sub(allowed);
            (s.last_sign().max(watching_since) < cutoff).then(|| Silent {
                id: s.id.clone(),
                silent_since: cutoff,
            })
        })
        .collect()
}

/// Why a sandbox was marked unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Its agent went silent: billing ends at its last sign of life.
    Silent,
    /// The provider reported it stopped or failed by itself (billing ended at the provider's
    /// time, with the observation).
    Provider,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Silent => "agent_silent",
            Cause::Provider => "provider_stopped",
        }
    }
}

impl Control {
    /// The health check of one tick: marks the silent sandboxes unhealthy, then destroys every
    /// unhealthy sandbox (those just marked, and any a failed destroy left).
    pub(super) async fn health(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = self.now();
        let sandboxes = self.store.sandboxes(None).await?;
        let limits = HealthLimits::of(self.settings.heartbeat_interval_ms);
        let watching = self.leading_since.load(std::sync::atomic::Ordering::SeqCst);
        for s in silent(&sandboxes, limits, watching, now) {
            self.mark_unhealthy(&s.id, s.silent_since, Cause::Silent, now)
                .await?;
        }
        for s in &sandboxes {
            if s.state == SandboxState::Unhealthy {
                self.destroy_unhealthy(s.tenant.clone(), s.id.clone(), now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Marks `id` unhealthy if it is still ready or busy and silent since `silent_since`; its jobs
    /// go back, its billing is closed (for a silent agent, at its last sign of life) and it is
    /// destroyed. `true` if it was marked.
    pub(super) async fn mark_unhealthy(
        self: &Arc<Self>,
        id: &str,
        silent_since: Millis,
        cause: Cause,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let Some((was, back)) = self.store.sandbox_unhealthy(id, silent_since, now).await? else {
            return Ok(false);
        };
        let last_sign = was.last_sign().min(now);
        tracing::warn!(sandbox = %id, was = %was.state, cause = cause.as_str(), last_sign, requeued = back.len(), "sandbox unhealthy");
        if cause == Cause::Silent {
            let note = json!({
                "finding": "unhealthy",
                "reason": "the sandbox's agent went silent",
                "closed_at": "last_seen",
                "state_was": was.state,
                "marked_at": now,
            });
            let entry = LedgerEntry {
                sandbox_id: was.id.clone(),
                tenant: was.tenant.clone(),
                at: last_sign,
                kind: LedgerKind::Stopped,
                note: Some(note),
            };
            if self
                .store
                .record_ledger(&entry, &self.settings.usage, now)
                .await?
                > 0
            {
                self.signals.usage_written();
            }
        }
        self.store
            .record_event(
                Some(&was.tenant),
                now,
                "sandbox_unhealthy",
                &json!({
                    "sandbox": was.id,
                    "was": was.state,
                    "cause": cause.as_str(),
                    "last_seen": last_sign,
                    "silent_ms": now.saturating_sub(last_sign),
                    "jobs_requeued": back.len(),
                }),
            )
            .await?;
        self.metrics
            .sandboxes_unhealthy
            .with_label_values(&[self.metrics.tenant(&was.tenant), cause.as_str()])
            .inc();
        for j in back.iter().filter(|j| j.state.is_terminal()) {
            self.count_finished(j);
        }
        self.signals.work_changed(&was.tenant);
        for j in &back {
            self.signals.job_changed(&j.id, Pulse::State);
        }
        self.destroy_unhealthy(was.tenant, was.id, now).await?;
        Ok(true)
    }

    /// Destroys an unhealthy sandbox through the lifecycle's `destroy` (a failed call leaves it
    /// unhealthy, for the next tick).
    async fn destroy_unhealthy(
        self: &Arc<Self>,
        tenant: String,
        sandbox: String,
        now: Millis,
    ) -> Result<(), StoreError> {
        if !self.leads() {
            return Ok(());
        }
        self.apply(
            Step::Destroy { tenant, sandbox },
            SandboxSize::default(),
            now,
        )
        .await
    }
}
