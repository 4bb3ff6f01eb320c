//! The idle policy a running scheduler follows: a fixed idle timeout (the default), or the
//! adaptive policy of `shoal_planner::adaptive`, the one `shoal-loadtests simulate --policy
//! adaptive` measures (`docs/policy.md`).
//!
//! The adaptive policy learns each tenant's gaps from its demand (queued plus running jobs). The
//! leader sees every tenant's demand in each planning pass (after every enqueue and completion,
//! and at least once a second), so [`AdaptiveIdle::advise`] feeds the change since the last pass
//! as arrivals and finishes, then sets the pool's pre-warm hold and an idle timeout of zero:
//! every idle sandbox beyond the hold stops at once. Changes that cancel out between two passes
//! (a job finished and another enqueued within the same few milliseconds) are not seen; they
//! are gaps too short to matter to a keep-alive. The history lives in the leader's memory: a new
//! leader starts with none and keeps sandboxes for the fallback keep-alive until each level has
//! seen a few gaps again.

use serde::{Deserialize, Serialize};
use shoal_core::Millis;
use shoal_planner::PoolSnapshot;
use shoal_planner::adaptive::{AdaptiveConfig, TenantAdaptive};
use std::collections::HashMap;
use std::sync::Mutex;

/// How idle sandboxes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum IdlePolicy {
    /// Each pool's idle timeout (`idle_timeout`, or the tenant's `idle_timeout_s`).
    Fixed,
    /// The adaptive policy; `worth_s` is the idle time one cold start is judged to be worth
    /// (`adaptive:SECONDS`), else the policy's default.
    Adaptive { worth_s: Option<u32> },
}

impl std::str::FromStr for IdlePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "fixed" => Ok(IdlePolicy::Fixed),
            "adaptive" => Ok(IdlePolicy::Adaptive { worth_s: None }),
            other => match other.strip_prefix("adaptive:").map(str::parse::<u32>) {
                Some(Ok(w)) => Ok(IdlePolicy::Adaptive { worth_s: Some(w) }),
                _ => Err(format!(
                    "`{s}` is not fixed, adaptive or adaptive:SECONDS (a whole number of seconds)"
                )),
            },
        }
    }
}

impl std::fmt::Display for IdlePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdlePolicy::Fixed => f.write_str("fixed"),
            IdlePolicy::Adaptive { worth_s: None } => f.write_str("adaptive"),
            IdlePolicy::Adaptive { worth_s: Some(w) } => write!(f, "adaptive:{w}"),
        }
    }
}

impl From<IdlePolicy> for String {
    fn from(p: IdlePolicy) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for IdlePolicy {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The adaptive policy's per-tenant histories, fed from planning passes.
#[derive(Debug)]
pub struct AdaptiveIdle {
    cfg: AdaptiveConfig,
    tenants: Mutex<HashMap<String, TenantAdaptive>>,
}

impl AdaptiveIdle {
    /// The policy with its default knobs, `worth_s` overriding the worth of a cold start.
    pub fn new(worth_s: Option<u32>) -> Self {
        let mut cfg = AdaptiveConfig::default();
        if let Some(w) = worth_s {
            cfg.cold_start_worth_ms = Millis::from(w) * 1000;
        }
        AdaptiveIdle {
            cfg,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// How long before a predicted (or known) arrival a sandbox is woken.
    pub fn lead_ms(&self) -> Millis {
        self.cfg.lead_ms
    }

    /// Sets `pool`'s pre-warm hold at `now` and an idle timeout of zero (the caller passes only
    /// pools of tenants without an idle timeout of their own). With `record`, the pool's demand
    /// is first recorded: its change since the last recorded pass is fed to the history as
    /// arrivals and finishes. Without (a dry run), the advice is the same but computed on a copy,
    /// so looking does not teach the policy anything.
    pub fn advise(&self, pool: &mut PoolSnapshot, now: Millis, record: bool) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let demand = pool.queued + pool.running;
        let advice = if record {
            let t = tenants.entry(pool.tenant.clone()).or_default();
            t.observe_demand(demand, now, &self.cfg);
            t.prewarm(now, &self.cfg)
        } else {
            let mut t = tenants.get(&pool.tenant).cloned().unwrap_or_default();
            t.observe_demand(demand, now, &self.cfg);
            t.prewarm(now, &self.cfg)
        };
        pool.prewarm = advice.prewarm();
        pool.policy.idle_timeout_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::SandboxState;
    use shoal_planner::{PoolPolicy, SandboxView, Snapshot, Step, plan};

    #[test]
    fn policies_parse_and_print_back() {
        for s in ["fixed", "adaptive", "adaptive:1500", "adaptive:0"] {
            let p: IdlePolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        for bad in [
            "",
            "sometimes",
            "adaptive:",
            "adaptive:1.5x",
            "adaptive:-3",
            "fixed:60",
        ] {
            let e = bad.parse::<IdlePolicy>().unwrap_err();
            assert!(e.contains("adaptive:SECONDS"), "{bad}: {e}");
        }
    }

    fn pool(tenant: &str, queued: u32, running: u32, sandboxes: Vec<SandboxView>) -> PoolSnapshot {
        PoolSnapshot {
            tenant: tenant.into(),
            policy: PoolPolicy::default(),
            queued,
            running,
            draining: false,
            prewarm: None,
            next_due: None,
            due_jobs: 0,
            sandboxes,
        }
    }

    fn idle_sandbox(since: Millis) -> SandboxView {
        SandboxView {
            id: "sb1".into(),
            state: SandboxState::Ready,
            since,
            idle_since: Some(since),
        }
    }

    /// The pool advised at `now` (recording its demand), as a one-pool snapshot to plan.
    fn advised(adaptive: &AdaptiveIdle, mut p: PoolSnapshot, now: Millis) -> Snapshot {
        adaptive.advise(&mut p, now, true);
        assert_eq!(
            p.policy.idle_timeout_ms, 0,
            "beyond the hold, idle stops at once"
        );
        Snapshot {
            pools: vec![p],
            fleet_max_active: None,
        }
    }

    /// A tenant whose jobs come every 40 s, each running 5 s. With too little history its idle
    /// sandbox is kept for the fallback keep-alive; once a few gaps are known the policy stops it
    /// at once and wakes one again just before the next job is due, so a sandbox is warm when the
    /// job comes and sits idle for only the wake's lead.
    #[test]
    fn a_regular_tenant_is_stopped_between_jobs_and_woken_in_time() {
        let adaptive = AdaptiveIdle::new(None);
        let lead = AdaptiveConfig::default().lead_ms;
        for round in 0..8 {
            let start = round * 40_000;
            advised(&adaptive, pool("regular", 0, 1, vec![]), start);
            let done = start + 5_000;
            let idle = advised(
                &adaptive,
                pool("regular", 0, 0, vec![idle_sandbox(done)]),
                done,
            );
            let stops_now = plan(&idle, done)
                .steps
                .iter()
                .any(|s| matches!(s, Step::Stop { .. }));
            // Just before the next job is due: is a sandbox held warm for it?
            let due = start + 40_000;
            let before = advised(&adaptive, pool("regular", 0, 0, vec![]), due - lead / 2);
            let warm_for_next = before.pools[0].prewarm.is_some_and(|(hold, _)| hold >= 1);
            if round < 2 {
                assert!(
                    !stops_now,
                    "round {round}: the fallback keep-alive holds it"
                );
            }
            if round >= 4 {
                assert!(stops_now, "round {round}: stopped between jobs");
                assert!(warm_for_next, "round {round}: woken before the next job");
                let wakes = plan(&before, due - lead / 2).steps;
                assert!(
                    wakes.iter().any(|s| matches!(s, Step::Create { .. })),
                    "round {round}: {wakes:?}"
                );
            }
        }
    }

    /// A tenant with one job and then nothing for hours: after the fallback keep-alive its
    /// sandbox is stopped.
    #[test]
    fn with_no_history_the_fallback_keep_alive_applies() {
        let adaptive = AdaptiveIdle::new(None);
        advised(&adaptive, pool("once", 1, 0, vec![]), 0);
        let s = advised(
            &adaptive,
            pool("once", 0, 0, vec![idle_sandbox(10_000)]),
            10_000,
        );
        assert_eq!(s.pools[0].prewarm.map(|(hold, _)| hold), Some(1));
        let fallback = AdaptiveConfig::default().fallback_keep_alive_ms;
        let late = 10_000 + fallback + 1;
        let s = advised(
            &adaptive,
            pool("once", 0, 0, vec![idle_sandbox(10_000)]),
            late,
        );
        assert_eq!(s.pools[0].prewarm, None, "the keep-alive has lapsed");
        let steps = plan(&s, late).steps;
        assert!(
            steps.iter().any(|st| matches!(st, Step::Stop { .. })),
            "{steps:?}"
        );
    }

    /// A dry run gets the advice a pass would, and leaves the history as it was: a job seen
    /// only by a dry run is not an arrival.
    #[test]
    fn a_dry_run_advises_without_recording() {
        let adaptive = AdaptiveIdle::new(None);
        advised(&adaptive, pool("t", 1, 0, vec![]), 0);
        advised(&adaptive, pool("t", 0, 0, vec![idle_sandbox(5_000)]), 5_000);
        let history = || adaptive.tenants.lock().unwrap().get("t").cloned();
        let before = history();
        let mut looked = pool("t", 1, 0, vec![]);
        adaptive.advise(&mut looked, 6_000, false);
        assert_eq!(history(), before, "the dry run recorded nothing");
        let mut passed = pool("t", 1, 0, vec![]);
        adaptive.advise(&mut passed, 6_000, true);
        assert_eq!(looked.prewarm, passed.prewarm, "the same advice");
        assert_eq!(looked.policy.idle_timeout_ms, 0);
        assert_ne!(history(), before, "a pass records the arrival");
    }
}
