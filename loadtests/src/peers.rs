//! Models of the peers' autoscalers, used as baselines: each runs its own control loop on its
//! own period, reads the tenant's queue as its metric, and acts on the sim provider directly.
//! They are not Shoal's planner. `docs/policy.md` cites the documentation and code each rule
//! comes from.
//!
//! Both read the queue as *waiting plus in-flight* jobs (what SQS reports with KEDA's default
//! `scaleOnInFlight: true`, and what a queue-depth gauge exported for fly-autoscaler counts), with
//! a target of one job per sandbox: the configuration most favourable to them, since reading only
//! waiting jobs would stop every busy sandbox as soon as the queue drained.

use crate::engine::{Engine, EngineError};
use crate::workload::Ms;
use shoal_core::SandboxState;
use shoal_fleet::sim::SimId;
use std::collections::VecDeque;

/// The HPA controller's sync period (`--horizontal-pod-autoscaler-sync-period`, default 15 s).
pub const KEDA_HPA_PERIOD_MS: Ms = 15_000;
/// KEDA's `pollingInterval` (default 30 s): how often it checks a scaler for activation.
pub const KEDA_POLLING_MS: Ms = 30_000;
/// KEDA's `cooldownPeriod` (default 300 s): how long after the last active poll it scales to 0.
pub const KEDA_COOLDOWN_MS: Ms = 300_000;
/// The HPA's default scale-down stabilization window (300 s).
pub const HPA_DOWN_WINDOW_MS: Ms = 300_000;
/// The HPA's tolerance (0.1): no change while the usage ratio is within 10% of 1.
pub const HPA_TOLERANCE: f64 = 0.1;
/// fly-autoscaler's reconciliation interval (default 15 s).
pub const FLY_INTERVAL_MS: Ms = 15_000;

/// One tenant's ScaledObject, HPA and ReplicaSet.
#[derive(Debug, Clone, Default)]
pub struct KedaState {
    pub(crate) next_poll: Option<Ms>,
    /// The Deployment's `replicas`.
    replicas: u32,
    last_active: Option<Ms>,
    /// The HPA's recent recommendations, for the scale-down stabilization window.
    recs: VecDeque<(Ms, u32)>,
}

/// One tenant's fly-autoscaler (one app).
#[derive(Debug, Clone, Default)]
pub struct FlyState {
    pub(crate) next_poll: Option<Ms>,
}

/// One tick of the tenant's 15 s HPA loop; every other tick is also KEDA's 30 s poll. Returns
/// whether the loops still have anything to watch.
pub(crate) fn keda_pass(e: &mut Engine<'_>, t: u32) -> Result<bool, EngineError> {
    let now = e.now;
    let m = e.demand(t);
    let phase = e.phase(t, KEDA_HPA_PERIOD_MS);
    let keda_tick =
        ((now - phase) / KEDA_HPA_PERIOD_MS) % (KEDA_POLLING_MS / KEDA_HPA_PERIOD_MS) == 0;
    let st = e.keda_state(t);
    if keda_tick {
        if m > 0 {
            st.last_active = Some(now);
            if st.replicas == 0 {
                // Activation: KEDA scales 0 -> 1 itself; the HPA takes over from 1.
                st.replicas = 1;
                st.recs.clear();
            }
        } else if st.replicas > 0 && st.last_active.is_none_or(|a| now - a >= KEDA_COOLDOWN_MS) {
            st.replicas = 0;
            st.recs.clear();
        }
    }
    if st.replicas > 0 {
        let cur = st.replicas;
        // AverageValue target of 1 job per replica: desired = ceil(metric / 1).
        let ratio = m as f64 / cur as f64;
        let mut raw = if (ratio - 1.0).abs() <= HPA_TOLERANCE {
            cur
        } else {
            m
        };
        // minReplicas is 1 while KEDA holds the workload active.
        raw = raw.max(1);
        // Default scale-up policy: at most +100% or +4 pods per 15 s, whichever is more.
        raw = raw.min((cur * 2).max(cur + 4));
        st.recs.push_back((now, raw));
        while st
            .recs
            .front()
            .is_some_and(|r| r.0 <= now - HPA_DOWN_WINDOW_MS)
        {
            st.recs.pop_front();
        }
        let down = st.recs.iter().map(|r| r.1).max().unwrap_or(raw);
        st.replicas = if raw > cur {
            raw
        } else if cur > down {
            down
        } else {
            cur
        };
    }
    let replicas = st.replicas;
    reconcile_replicaset(e, t, replicas)?;
    Ok(replicas > 0 || m > 0)
}

/// The ReplicaSet controller: create pods up to `replicas`, or delete the surplus, ranked as
/// Kubernetes ranks them (not yet ready first, then the most recently ready), busy or not.
fn reconcile_replicaset(e: &mut Engine<'_>, t: u32, replicas: u32) -> Result<(), EngineError> {
    let pods: Vec<(SandboxState, SimId)> = e
        .sandboxes(t)
        .iter()
        .filter(|s| s.state.is_active())
        .map(|s| (s.state, s.id.parse().unwrap_or(u32::MAX)))
        .collect();
    let n = pods.len() as u32;
    if n < replicas {
        e.create(t, replicas - n);
    } else if n > replicas {
        let mut ranked = pods;
        ranked.sort_by_key(|&(state, id)| {
            let ready = state != SandboxState::Booting;
            (
                ready,
                std::cmp::Reverse(e.sb_ready_at[id as usize]),
                std::cmp::Reverse(id),
            )
        });
        for &(_, id) in ranked.iter().take((n - replicas) as usize) {
            e.halt(t, id, SandboxState::Destroyed)?;
        }
    }
    Ok(())
}

/// One reconciliation of the tenant's fly-autoscaler, configured with
/// `min-created-machine-count` and `started-machine-count` both `queue_depth`. As the real one,
/// it takes at most one action per pass (create, else start, else stop), counts only `started`
/// machines (not those still starting), and picks machines to start or stop in machine-id order,
/// busy or not.
pub(crate) fn fly_pass(e: &mut Engine<'_>, t: u32) -> Result<bool, EngineError> {
    let m = e.demand(t);
    let views = e.sandboxes(t);
    let created = views.len() as u32;
    let any_active = views.iter().any(|s| s.state.is_active());
    // fly-autoscaler never lets the created count fall below 1 (it clones an existing machine).
    let min_created = m.max(1);
    if created < min_created {
        e.create(t, min_created - created);
        return Ok(true);
    }
    let by_id = |e: &Engine<'_>, want: &dyn Fn(SandboxState) -> bool| -> Vec<SimId> {
        let mut v: Vec<SimId> = e
            .sandboxes(t)
            .iter()
            .filter(|s| want(s.state))
            .filter_map(|s| s.id.parse().ok())
            .collect();
        v.sort_by_key(|&id| e.sb_fly_id[id as usize]);
        v
    };
    let started = by_id(e, &|s| {
        matches!(s, SandboxState::Ready | SandboxState::Busy)
    });
    let n = started.len() as u32;
    if n < m {
        let stopped = by_id(e, &|s| s == SandboxState::Stopped);
        for id in stopped.into_iter().take((m - n) as usize) {
            e.wake(t, id, false)?;
        }
    } else if n > m {
        for id in started.into_iter().take((n - m) as usize) {
            e.halt(t, id, SandboxState::Stopped)?;
        }
    }
    Ok(m > 0 || any_active || e.sandboxes(t).iter().any(|s| s.state.is_active()))
}
