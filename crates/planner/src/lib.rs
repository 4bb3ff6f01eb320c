//! Shoal's pure scaling, wake and idle policy.
//!
//! [`plan`] takes a [`Snapshot`] of the pools it should consider and `now`, and returns the
//! [`Plan`]: which sandboxes to wake, create, suspend, stop or destroy. It does no I/O and reads no
//! clock, so production, tests and the simulator run the same decisions.
//!
//! The default policy (docs/design.md): `active = booting + ready + busy`;
//! `desired = clamp(min_warm, ceil((queued + running) / slots_per_sandbox), max_sandboxes)`; when a
//! fleet-wide cap is short, pools share it by weighted max-min fairness. Scale-up wakes the cheapest
//! sandbox first (suspended, then stopped, then a new one). Scale-down takes only ready sandboxes
//! idle past the pool's idle timeout; a busy sandbox is never stopped. Work known in advance
//! (`PoolSnapshot::next_due`) holds a sandbox per job falling due from a boot lead before it; if
//! the work does not come, the sandbox goes back to the usual idle rule.

#![warn(missing_docs)]

pub mod adaptive;
pub mod burst;
pub mod fair;

use serde::Serialize;
use shoal_core::{Millis, SandboxOp, SandboxState};

/// What to do with a sandbox that has been idle past its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleAction {
    /// Suspend it: quick to resume, memory kept by the provider.
    Suspend,
    /// Stop it: slower to start again, nothing kept but its disk.
    Stop,
}

/// The policy knobs of one pool, resolved from the tenant's limits and the scheduler's config.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// Sandboxes kept active even with no work.
    pub min_warm: u32,
    /// The most sandboxes the pool may have active; `None` for no cap.
    pub max_sandboxes: Option<u32>,
    /// The most jobs the pool may run at once; `None` for no cap.
    pub max_concurrent_jobs: Option<u32>,
    /// Jobs one sandbox runs at once.
    pub slots_per_sandbox: u32,
    /// How long a ready sandbox may sit idle before it is suspended or stopped.
    pub idle_timeout_ms: Millis,
    /// What an idle sandbox gets once its idle timeout has passed.
    pub idle_action: IdleAction,
    /// How long a suspended or stopped sandbox is kept before it is destroyed.
    pub retention_ms: Millis,
    /// A sandbox booting longer than this is given up on and destroyed.
    pub boot_timeout_ms: Millis,
    /// Weight in the fleet's fair share.
    pub weight: u32,
    /// How long before work falls due a sandbox is woken for it (the boot lead; the same as the
    /// adaptive policy's [`adaptive::AdaptiveConfig::lead_ms`]).
    pub due_lead_ms: Millis,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            min_warm: 0,
            max_sandboxes: None,
            max_concurrent_jobs: None,
            slots_per_sandbox: 1,
            idle_timeout_ms: 300_000,
            idle_action: IdleAction::Stop,
            retention_ms: 3_600_000,
            boot_timeout_ms: 120_000,
            weight: 1,
            due_lead_ms: adaptive::AdaptiveConfig::default().lead_ms,
        }
    }
}

/// One sandbox as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxView {
    /// The sandbox's id.
    pub id: String,
    /// Its recorded state.
    pub state: SandboxState,
    /// When it entered `state`.
    pub since: Millis,
    /// For a ready sandbox: since when it has had no job.
    pub idle_since: Option<Millis>,
}

/// One tenant's pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSnapshot {
    /// The tenant whose pool it is.
    pub tenant: String,
    /// The pool's policy.
    pub policy: PoolPolicy,
    /// Jobs queued and due now.
    pub queued: u32,
    /// Jobs running now.
    pub running: u32,
    /// A drained pool takes no new work: its idle sandboxes stop now and none is woken.
    pub draining: bool,
    /// Keep at least this many sandboxes warm until the given time (a pre-warm decided by an
    /// adaptive policy); `None` for none.
    pub prewarm: Option<(u32, Millis)>,
    /// The earliest time at which work known in advance falls due: a delayed job's `run_at`, a
    /// retry's next attempt, a schedule's next fire. `queued` counts only work due now; from one
    /// boot lead before this time the pool holds at least one sandbox, so the work starts on a
    /// ready one.
    pub next_due: Option<Millis>,
    /// How many jobs fall due within one boot lead from `next_due` (at least one is assumed when
    /// `next_due` is set): the pool holds a sandbox for each, beside its running and queued jobs.
    pub due_jobs: u32,
    /// The pool's sandboxes that still exist.
    pub sandboxes: Vec<SandboxView>,
}

/// The pools to plan for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// One snapshot per pool.
    pub pools: Vec<PoolSnapshot>,
    /// A cap on active sandboxes across all pools in the snapshot, shared by weighted max-min
    /// fairness; `None` for no cap.
    pub fleet_max_active: Option<u32>,
}

/// One action on one sandbox (or a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    /// Make a new sandbox in the pool.
    Create {
        /// The pool's tenant.
        tenant: String,
    },
    /// Wake a suspended sandbox.
    Resume {
        /// The pool's tenant.
        tenant: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// Wake a stopped sandbox.
    Start {
        /// The pool's tenant.
        tenant: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// Suspend an idle, ready sandbox.
    Suspend {
        /// The pool's tenant.
        tenant: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// Stop an idle, ready sandbox.
    Stop {
        /// The pool's tenant.
        tenant: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// Remove a sandbox for good.
    Destroy {
        /// The pool's tenant.
        tenant: String,
        /// The sandbox's id.
        sandbox: String,
    },
}

impl Step {
    /// The tenant whose pool the step acts on.
    pub fn tenant(&self) -> &str {
        match self {
            Step::Create { tenant }
            | Step::Resume { tenant, .. }
            | Step::Start { tenant, .. }
            | Step::Suspend { tenant, .. }
            | Step::Stop { tenant, .. }
            | Step::Destroy { tenant, .. } => tenant,
        }
    }

    /// The sandbox the step acts on; `None` for a create.
    pub fn sandbox(&self) -> Option<&str> {
        match self {
            Step::Create { .. } => None,
            Step::Resume { sandbox, .. }
            | Step::Start { sandbox, .. }
            | Step::Suspend { sandbox, .. }
            | Step::Stop { sandbox, .. }
            | Step::Destroy { sandbox, .. } => Some(sandbox),
        }
    }

    /// The lifecycle operation this step is; its from-states, in-flight state and result are the
    /// core's table ([`SandboxOp`]).
    pub fn kind(&self) -> SandboxOp {
        match self {
            Step::Create { .. } => SandboxOp::Create,
            Step::Resume { .. } => SandboxOp::Resume,
            Step::Start { .. } => SandboxOp::Start,
            Step::Suspend { .. } => SandboxOp::Suspend,
            Step::Stop { .. } => SandboxOp::Stop,
            Step::Destroy { .. } => SandboxOp::Destroy,
        }
    }

    /// The operation's name (`create`, `resume`, ...).
    pub fn op(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The states the step's sandbox must be in for it to apply (none for a create).
    pub fn from_states(&self) -> &'static [SandboxState] {
        self.kind().from_states()
    }

    /// The state recorded while the provider carries the step out.
    pub fn in_flight(&self) -> SandboxState {
        self.kind().in_flight()
    }

    /// The state the step's sandbox is in once the provider has carried it out.
    pub fn result(&self) -> SandboxState {
        self.kind().result()
    }
}

/// What the planner decided for one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolDecision {
    /// The tenant whose pool it is.
    pub tenant: String,
    /// The active sandboxes the pool should have.
    pub desired: u32,
    /// The active sandboxes it has now.
    pub active: u32,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Plan {
    /// One decision per pool, in snapshot order.
    pub pools: Vec<PoolDecision>,
    /// The steps that move the pools towards their decisions.
    pub steps: Vec<Step>,
}

fn count(pool: &PoolSnapshot, pred: impl Fn(SandboxState) -> bool) -> u32 {
    pool.sandboxes.iter().filter(|s| pred(s.state)).count() as u32
}

/// The pool's size before any fleet-wide cap: what its queue asks for, within its limits.
pub fn wanted(pool: &PoolSnapshot, now: Millis) -> u32 {
    let p = &pool.policy;
    if pool.draining {
        return count(pool, |s| s == SandboxState::Busy);
    }
    let mut demand = pool.queued.saturating_add(pool.running);
    if let Some(c) = p.max_concurrent_jobs {
        demand = demand.min(c);
    }
    let slots = p.slots_per_sandbox.max(1);
    let mut want = demand.div_ceil(slots).max(p.min_warm);
    if let Some((n, until)) = pool.prewarm
        && now < until
    {
        want = want.max(n);
    }
    if due_soon(pool, now) {
        let mut due = demand.saturating_add(pool.due_jobs.max(1));
        if let Some(c) = p.max_concurrent_jobs {
            due = due.min(c);
        }
        want = want.max(due.div_ceil(slots));
    }
    match p.max_sandboxes {
        Some(m) => want.min(m),
        None => want,
    }
}

/// Whether work known in advance falls due within the pool's boot lead of `now` (a drained pool
/// takes none).
pub fn due_soon(pool: &PoolSnapshot, now: Millis) -> bool {
    !pool.draining
        && pool
            .next_due
            .is_some_and(|due| now >= due.saturating_sub(pool.policy.due_lead_ms))
}

/// Plans every pool of the snapshot at `now`.
///
/// With a fleet cap, each pool is first planned on its own; if the pools' resulting active totals
/// fit the cap, that is the plan. Otherwise the cap is divided by weighted max-min fairness (busy
/// and booting sandboxes are a floor of each share) and idle sandboxes beyond a pool's share are
/// reclaimed before their idle timeout.
pub fn plan(snapshot: &Snapshot, now: Millis) -> Plan {
    let wants: Vec<u32> = snapshot.pools.iter().map(|p| wanted(p, now)).collect();
    let mut out = Plan::default();
    for (pool, &want) in snapshot.pools.iter().zip(&wants) {
        plan_pool(pool, want, false, now, &mut out);
    }
    let Some(cap) = snapshot.fleet_max_active else {
        return out;
    };
    let after: u32 = out.pools.iter().map(|d| d.active).sum::<u32>()
        + out
            .steps
            .iter()
            .map(|s| match s {
                Step::Create { .. } | Step::Start { .. } | Step::Resume { .. } => 1,
                _ => 0,
            })
            .sum::<u32>();
    let released = out
        .steps
        .iter()
        .filter(|s| {
            matches!(s, Step::Stop { .. } | Step::Suspend { .. })
                || is_stuck_destroy(snapshot, s, now)
        })
        .count() as u32;
    if after.saturating_sub(released) <= cap {
        return out;
    }
    let claims: Vec<fair::Claim> = snapshot
        .pools
        .iter()
        .zip(&wants)
        .map(|(p, &want)| fair::Claim {
            want,
            weight: p.policy.weight.max(1),
            floor: p
                .sandboxes
                .iter()
                .filter(|s| {
                    s.state == SandboxState::Busy
                        || (s.state == SandboxState::Booting && !is_stuck(s, &p.policy, now))
                })
                .count() as u32,
        })
        .collect();
    let shares = fair::weighted_max_min(&claims, cap);
    let mut out = Plan::default();
    for (pool, share) in snapshot.pools.iter().zip(shares) {
        plan_pool(pool, share, true, now, &mut out);
    }
    out
}

fn is_stuck(s: &SandboxView, p: &PoolPolicy, now: Millis) -> bool {
    s.state == SandboxState::Booting && now - s.since >= p.boot_timeout_ms
}

fn is_stuck_destroy(snapshot: &Snapshot, step: &Step, now: Millis) -> bool {
    let Step::Destroy { tenant, sandbox } = step else {
        return false;
    };
    snapshot
        .pools
        .iter()
        .filter(|p| &p.tenant == tenant)
        .flat_map(|p| p.sandboxes.iter().map(move |s| (s, &p.policy)))
        .any(|(s, policy)| &s.id == sandbox && is_stuck(s, policy, now))
}

/// Plans one pool towards `desired`. When the fleet is `short` of capacity, idle sandboxes beyond
/// the pool's share are reclaimed before their idle timeout.
fn plan_pool(pool: &PoolSnapshot, desired: u32, short: bool, now: Millis, out: &mut Plan) {
    let p = &pool.policy;
    let tenant = || pool.tenant.clone();
    let active = count(pool, SandboxState::is_active);
    out.pools.push(PoolDecision {
        tenant: tenant(),
        desired,
        active,
    });

    let mut touched: Vec<&str> = Vec::new();

    // Give up on sandboxes stuck booting; the next round replaces them.
    let mut stuck = 0;
    for s in &pool.sandboxes {
        if is_stuck(s, p, now) {
            out.steps.push(Step::Destroy {
                tenant: tenant(),
                sandbox: s.id.clone(),
            });
            touched.push(&s.id);
            stuck += 1;
        }
    }
    let active = active - stuck;

    if desired > active {
        let mut need = desired - active;
        // Cheapest first: suspended, then stopped; the most recently used first within each.
        for (state, make) in [
            (
                SandboxState::Suspended,
                step_resume as fn(String, String) -> Step,
            ),
            (SandboxState::Stopped, step_start),
        ] {
            let mut sleeping: Vec<&SandboxView> =
                pool.sandboxes.iter().filter(|s| s.state == state).collect();
            sleeping.sort_by(|a, b| b.since.cmp(&a.since).then_with(|| a.id.cmp(&b.id)));
            for s in sleeping.into_iter().take(need as usize) {
                out.steps.push(make(tenant(), s.id.clone()));
                touched.push(&s.id);
                need -= 1;
            }
        }
        let existing = count(pool, SandboxState::exists) - stuck;
        let room = match p.max_sandboxes {
            Some(m) => m.saturating_sub(existing),
            None => u32::MAX,
        };
        for _ in 0..need.min(room) {
            out.steps.push(Step::Create { tenant: tenant() });
        }
    } else if active > desired {
        let excess = (active - desired) as usize;
        let mut idle: Vec<&SandboxView> = pool
            .sandboxes
            .iter()
            .filter(|s| s.state == SandboxState::Ready)
            .filter(|s| {
                pool.draining || short || now - s.idle_since.unwrap_or(s.since) >= p.idle_timeout_ms
            })
            .collect();
        idle.sort_by(|a, b| {
            a.idle_since
                .unwrap_or(a.since)
                .cmp(&b.idle_since.unwrap_or(b.since))
                .then_with(|| a.id.cmp(&b.id))
        });
        for s in idle.into_iter().take(excess) {
            let step = match p.idle_action {
                IdleAction::Suspend => Step::Suspend {
                    tenant: tenant(),
                    sandbox: s.id.clone(),
                },
                IdleAction::Stop => Step::Stop {
                    tenant: tenant(),
                    sandbox: s.id.clone(),
                },
            };
            out.steps.push(step);
            touched.push(&s.id);
        }
    }

    // Sandboxes kept asleep past retention are destroyed, unless this plan wakes them.
    for s in &pool.sandboxes {
        if matches!(s.state, SandboxState::Suspended | SandboxState::Stopped)
            && now - s.since >= p.retention_ms
            && !touched.contains(&s.id.as_str())
        {
            out.steps.push(Step::Destroy {
                tenant: tenant(),
                sandbox: s.id.clone(),
            });
        }
    }
}

fn step_resume(tenant: String, sandbox: String) -> Step {
    Step::Resume { tenant, sandbox }
}

fn step_start(tenant: String, sandbox: String) -> Step {
    Step::Start { tenant, sandbox }
}

/// The earliest time after `now` at which the plan for `pool` may change though nothing else
/// happens: a ready sandbox's idle timeout, a sleeping one's retention, a booting one's boot
/// timeout, a pre-warm's end, or the boot lead of work falling due. `None` when no such time is
/// ahead. A planning loop that sleeps until then (and wakes on every event) misses no decision.
pub fn next_deadline(pool: &PoolSnapshot, now: Millis) -> Option<Millis> {
    let p = &pool.policy;
    let mut next: Option<Millis> = None;
    let mut consider = |at: Millis| {
        if at > now {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    };
    if let Some(due) = pool.next_due
        && !pool.draining
    {
        consider(due.saturating_sub(p.due_lead_ms));
    }
    if let Some((_, until)) = pool.prewarm
        && until < Millis::MAX
    {
        consider(until);
    }
    for s in &pool.sandboxes {
        match s.state {
            SandboxState::Ready => consider(
                s.idle_since
                    .unwrap_or(s.since)
                    .saturating_add(p.idle_timeout_ms),
            ),
            SandboxState::Stopped | SandboxState::Suspended => {
                consider(s.since.saturating_add(p.retention_ms))
            }
            SandboxState::Booting => consider(s.since.saturating_add(p.boot_timeout_ms)),
            _ => {}
        }
    }
    next
}

/// The snapshot as it would be once every step of `plan` has taken effect at `now`, with new
/// sandboxes named by `new_id`: each step moves its sandbox to the step's result (the core's
/// table), and a step whose sandbox is not in one of its from-states is skipped, as the control
/// loop's store transition would refuse it. The simulator and the property tests use it;
/// production observes the real effects instead.
pub fn apply(
    snapshot: &Snapshot,
    plan: &Plan,
    now: Millis,
    mut new_id: impl FnMut() -> String,
) -> Snapshot {
    let mut next = snapshot.clone();
    for step in &plan.steps {
        let Some(pool) = next.pools.iter_mut().find(|p| p.tenant == step.tenant()) else {
            continue;
        };
        let Some(id) = step.sandbox() else {
            pool.sandboxes.push(SandboxView {
                id: new_id(),
                state: step.result(),
                since: now,
                idle_since: None,
            });
            continue;
        };
        let Some(i) = pool
            .sandboxes
            .iter()
            .position(|s| s.id == id && step.kind().applies_to(s.state))
        else {
            continue;
        };
        let state = step.result();
        if !state.exists() {
            pool.sandboxes.remove(i);
            continue;
        }
        let s = &mut pool.sandboxes[i];
        s.state = state;
        s.since = now;
        s.idle_since = None;
    }
    next
}

#[cfg(test)]
mod tests;
