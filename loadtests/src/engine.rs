//! The simulator: replays a [`Workload`] on a virtual clock against the `sim` provider
//! ([`shoal_fleet::sim::SimFleet`]) under one [`Policy`], and measures cold starts, waits, billed
//! and idle sandbox-seconds.
//!
//! # Events
//!
//! The clock jumps from event to event: job arrivals (from the workload), job completions, boot
//! completions, policy timers and the peers' polling passes. Events at the same millisecond are
//! handled in that order: completions, boots, arrivals, timers and polls; so a job arriving at the
//! very instant an idle timeout expires finds its sandbox still warm. A job goes to an idle ready
//! sandbox of its tenant at once if there is one (the most recently idle first, as an agent that
//! has just finished asks again first), otherwise it queues (first in, first out) until a
//! sandbox is free or finishes booting.
//!
//! A **cold start** is a job handed to a sandbox at the instant that sandbox finished a create,
//! start or resume: it waited for a boot. A job's **wait** is the time from its arrival to its
//! first start.
//!
//! # Policies
//!
//! - `fixed:T` and `adaptive` run Shoal's own planner, [`shoal_planner::plan`]. After every
//!   instant that touched a tenant (the planner's debounce, at its finest), the simulator builds a
//!   [`Snapshot`] holding that tenant's pool only and applies the plan's steps to the sim
//!   provider, each step as the core's lifecycle table ([`shoal_core::SandboxOp`]) says. Timers
//!   wake a pool exactly at the planner's [`shoal_planner::next_deadline`] (its next idle timeout,
//!   retention, boot timeout or pre-warm boundary) or when the adaptive advice changes
//!   (production uses a slow tick; exact timers are its limit). So planning
//!   work per event is one pool's, never the fleet's.
//! - `keda` and `fly-autoscaler` are models of those projects' own control loops (see
//!   [`crate::peers`] and `docs/policy.md`); they poll on their own periods and do not use the
//!   planner.
//!
//! The run ends when no event is left: every job is done and every sandbox has gone idle and
//! been stopped by the policy, so the idle tail after the last job is counted.

use crate::peers::{FlyState, KedaState};
use crate::policy::Policy;
use crate::workload::{Ms, Workload};
use shoal_core::{SandboxOp, SandboxState};
use shoal_fleet::sim::{
    Boot, BootOutcome, Halted, SimConfig, SimError, SimFleet, SimId, SimLatencies,
};
use shoal_planner::adaptive::{AdaptiveConfig, IdleBudget, TenantAdaptive};
use shoal_planner::{IdleAction, PoolPolicy, PoolSnapshot, SandboxView, Snapshot};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

mod polls;
mod results;
mod warm;
pub use results::{JobResult, Outcome, RunStats};
pub use warm::BlankState;

const NONE: u32 = u32::MAX;

/// How a simulation is run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub latencies: SimLatencies,
    /// Probability that a boot fails (the provider's scripted failures).
    pub failure_rate: f64,
    pub seed: u64,
    /// Per-tenant cap on sandboxes; `None` for unlimited.
    pub max_sandboxes: Option<u32>,
    /// The adaptive policy's knobs (its `lead_ms` is raised to the slowest boot).
    pub adaptive: AdaptiveConfig,
    /// The idle budget `adaptive` (without an explicit worth) revises its worth by.
    pub budget: IdleBudget,
    /// Time every planning call (for the scale figures).
    pub measure: bool,
    /// Tell the planner when due jobs (the workload's `due` rows) will arrive, as the scheduler
    /// knows its delayed jobs and schedules: it wakes a sandbox one boot lead before each.
    pub due_aware: bool,
    /// The shared warm pool: how many blank sandboxes it keeps (0: none), and how they wait.
    pub warm_pool: u32,
    pub blank_state: BlankState,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            latencies: SimLatencies::default(),
            failure_rate: 0.0,
            seed: 1,
            max_sandboxes: None,
            adaptive: AdaptiveConfig::default(),
            budget: IdleBudget::default(),
            measure: false,
            due_aware: false,
            warm_pool: 0,
            blank_state: BlankState::Ready,
        }
    }
}

/// A simulation that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("sim provider refused a call: {0}")]
    Provider(#[from] SimError),
    #[error("the run ended with {0} sandboxes still active")]
    LeftActive(u64),
    #[error("the run ended with {0} jobs not done")]
    JobsLeft(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Complete = 0,
    Ready = 1,
    Arrival = 2,
    Timer = 3,
    Poll = 4,
    Budget = 5,
}

/// (time, kind, seq, a, b): completion (sandbox, run), ready (sandbox, boot seq), timer (tenant),
/// poll (tenant), budget (none).
type Ev = (Ms, Kind, u64, u32, u32);

#[derive(Debug, Default)]
struct Tenant {
    queue: VecDeque<u32>,
    running: u32,
    /// Ready idle sandboxes, least recently idle first.
    idle: Vec<SimId>,
    /// The tenant's pool as the planner sees it (all policies keep it: it is the list of the
    /// tenant's sandboxes).
    snap: Snapshot,
    adaptive: TenantAdaptive,
    timer_at: Option<Ms>,
    dirty: bool,
    keda: KedaState,
    fly: FlyState,
    /// Arrival times of the tenant's due jobs (sorted), and how many have arrived.
    due: Vec<Ms>,
    due_pos: usize,
    /// Every job of the tenant is due (known in advance).
    all_due: bool,
}

impl Tenant {
    fn pool(&self) -> &PoolSnapshot {
        &self.snap.pools[0]
    }
    fn pool_mut(&mut self) -> &mut PoolSnapshot {
        &mut self.snap.pools[0]
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct JobRec {
    wait_ms: Ms,
    started: bool,
    cold: bool,
    done: bool,
    interrupted: bool,
}

/// The running simulation. `pub(crate)` so the peers' models can act on it.
pub(crate) struct Engine<'w> {
    pub(crate) w: &'w Workload,
    pub(crate) policy: Policy,
    pub(crate) opts: SimOptions,
    pub(crate) now: Ms,
    pub(crate) fleet: SimFleet,
    tenants: Vec<Tenant>,
    heap: BinaryHeap<Reverse<Ev>>,
    seq: u64,
    jobs: Vec<JobRec>,
    waits: Vec<Ms>,
    /// Per sandbox: the job it runs, its run counter, its position in its pool's view list.
    sb_job: Vec<u32>,
    sb_run: Vec<u32>,
    sb_pos: Vec<u32>,
    /// Per sandbox: when it last became ready (for the ReplicaSet's ranking), and a random
    /// machine id (fly-autoscaler orders by id).
    pub(crate) sb_ready_at: Vec<Ms>,
    pub(crate) sb_fly_id: Vec<u64>,
    rng: u64,
    dirty: Vec<u32>,
    stats: RunStats,
    plan_ns: Vec<u32>,
    done_jobs: u64,
    interrupted: u64,
    /// Arrivals not yet replayed (the budget stops revising after the last one).
    arrivals_left: usize,
    warm: warm::WarmPool,
}

fn idle_timeout_ms(policy: Policy) -> Ms {
    match policy {
        Policy::Fixed(s) => (s * 1000.0).round() as Ms,
        _ => 0,
    }
}

/// Runs one simulation.
pub fn simulate(
    w: &Workload,
    policy: Policy,
    opts: &SimOptions,
) -> Result<(Outcome, RunStats), EngineError> {
    simulate_detailed(w, policy, opts).map(|(o, s, _)| (o, s))
}

/// Runs one simulation and also returns each job's fate, in workload order.
pub fn simulate_detailed(
    w: &Workload,
    policy: Policy,
    opts: &SimOptions,
) -> Result<(Outcome, RunStats, Vec<JobResult>), EngineError> {
    let mut opts = opts.clone();
    let l = opts.latencies;
    opts.adaptive.lead_ms = opts
        .adaptive
        .lead_ms
        .max(l.create_ms.max(l.start_ms).max(l.resume_ms));
    if let Policy::Adaptive(Some(worth_s)) = policy {
        opts.adaptive.cold_start_worth_ms = (worth_s * 1000.0).round() as Ms;
    }
    let pool_policy = PoolPolicy {
        max_sandboxes: opts.max_sandboxes,
        idle_timeout_ms: idle_timeout_ms(policy),
        idle_action: IdleAction::Stop,
        due_lead_ms: opts.adaptive.lead_ms,
        ..PoolPolicy::default()
    };
    let mut due: Vec<Vec<Ms>> = vec![Vec::new(); w.tenants.len()];
    let mut all_due = vec![true; w.tenants.len()];
    for j in &w.jobs {
        if j.due {
            due[j.tenant as usize].push(j.arrival_ms);
        } else {
            all_due[j.tenant as usize] = false;
        }
    }
    if !opts.due_aware {
        due.iter_mut().for_each(Vec::clear);
    }
    let tenants = (0..w.tenants.len())
        .zip(due)
        .map(|(i, due)| Tenant {
            all_due: all_due[i],
            due,
            snap: Snapshot {
                pools: vec![PoolSnapshot {
                    tenant: i.to_string(),
                    policy: pool_policy.clone(),
                    queued: 0,
                    running: 0,
                    draining: false,
                    prewarm: None,
                    next_due: None,
                    due_jobs: 0,
                    sandboxes: Vec::new(),
                }],
                fleet_max_active: None,
            },
            ..Tenant::default()
        })
        .collect();
    let fleet = SimFleet::new(SimConfig {
        latencies: opts.latencies,
        failure_rate: opts.failure_rate,
        seed: opts.seed,
    });
    let mut e = Engine {
        w,
        policy,
        now: 0,
        fleet,
        tenants,
        heap: BinaryHeap::new(),
        seq: 0,
        jobs: vec![JobRec::default(); w.jobs.len()],
        waits: Vec::with_capacity(w.jobs.len()),
        sb_job: Vec::new(),
        sb_run: Vec::new(),
        sb_pos: Vec::new(),
        sb_ready_at: Vec::new(),
        sb_fly_id: Vec::new(),
        rng: opts.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1,
        dirty: Vec::new(),
        stats: RunStats::default(),
        plan_ns: Vec::new(),
        done_jobs: 0,
        interrupted: 0,
        arrivals_left: w.jobs.len(),
        warm: warm::WarmPool {
            target: opts.warm_pool,
            state: opts.blank_state,
            ..Default::default()
        },
        opts,
    };
    e.warm_fill();
    // The first due job of each tenant is known before anything happens to the tenant: plan it
    // when its boot lead begins.
    for t in 0..e.tenants.len() {
        if let Some(&first) = e.tenants[t].due.first() {
            let at = first.saturating_sub(e.opts.adaptive.lead_ms).max(0);
            e.tenants[t].timer_at = Some(at);
            e.push(at, Kind::Timer, t as u32, 0);
        }
    }
    if policy == Policy::Adaptive(None) {
        let step = e.opts.budget.step_ms.max(1);
        e.push(step, Kind::Budget, 0, 0);
    }
    e.run()?;
    Ok(e.finish())
}

impl<'w> Engine<'w> {
    fn uses_planner(&self) -> bool {
        matches!(self.policy, Policy::Fixed(_) | Policy::Adaptive(_))
    }

    pub(crate) fn next_random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn push(&mut self, at: Ms, kind: Kind, a: u32, b: u32) {
        self.seq += 1;
        self.heap.push(Reverse((at, kind, self.seq, a, b)));
    }

    fn run(&mut self) -> Result<(), EngineError> {
        let mut next_job = 0usize;
        loop {
            let arrival = self
                .w
                .jobs
                .get(next_job)
                .map(|j| (j.arrival_ms, Kind::Arrival));
            let top = self.heap.peek().map(|Reverse(e)| (e.0, e.1));
            let take_arrival = match (arrival, top) {
                (None, None) => {
                    // Plans made at the last instant may still set timers.
                    self.flush()?;
                    if self.heap.is_empty() {
                        break;
                    }
                    continue;
                }
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(t)) => a <= t,
            };
            let at = if take_arrival {
                arrival.map(|a| a.0)
            } else {
                top.map(|t| t.0)
            }
            .unwrap_or(self.now);
            if at > self.now {
                if !self.dirty.is_empty() {
                    // The instant is over: plan the pools it touched, then look again (the plans
                    // may have set earlier events).
                    self.flush()?;
                    continue;
                }
                self.now = at;
            }
            self.stats.events += 1;
            if take_arrival {
                self.arrival(next_job as u32)?;
                next_job += 1;
                continue;
            }
            let Some(Reverse((_, kind, _, a, b))) = self.heap.pop() else {
                break;
            };
            match kind {
                Kind::Complete => self.complete(a, b)?,
                Kind::Ready => self.ready(Boot {
                    id: a,
                    ready_at: self.now,
                    seq: b,
                })?,
                Kind::Timer => {
                    let t = &mut self.tenants[a as usize];
                    if t.timer_at == Some(self.now) {
                        t.timer_at = None;
                        self.mark(a);
                    }
                }
                Kind::Poll => self.poll(a)?,
                Kind::Budget => self.revise_budget(),
                Kind::Arrival => {}
            }
            let active = self.fleet.active();
            if active > self.stats.peak_active {
                self.stats.peak_active = active;
            }
        }
        self.flush()?;
        self.warm_retire()?;
        if self.done_jobs != self.w.jobs.len() as u64 {
            return Err(EngineError::JobsLeft(
                self.w.jobs.len() as u64 - self.done_jobs,
            ));
        }
        if self.fleet.active() > 0 {
            return Err(EngineError::LeftActive(self.fleet.active()));
        }
        Ok(())
    }

    /// Plans every pool touched at this instant (planner policies only).
    fn flush(&mut self) -> Result<(), EngineError> {
        while let Some(t) = self.dirty.pop() {
            self.tenants[t as usize].dirty = false;
            self.plan_tenant(t)?;
        }
        Ok(())
    }

    fn mark(&mut self, t: u32) {
        if !self.uses_planner() {
            return;
        }
        let ten = &mut self.tenants[t as usize];
        if !ten.dirty {
            ten.dirty = true;
            self.dirty.push(t);
        }
    }

    // ----- jobs -----

    fn arrival(&mut self, j: u32) -> Result<(), EngineError> {
        let t = self.w.jobs[j as usize].tenant;
        let now = self.now;
        let cfg = &self.opts.adaptive;
        let ten = &mut self.tenants[t as usize];
        if let Some(gap) = ten.adaptive.arrival(now, cfg) {
            self.opts.budget.gap_closed(gap);
        }
        self.arrivals_left -= 1;
        let ten = &mut self.tenants[t as usize];
        ten.queue.push_back(j);
        self.dispatch_idle(t)?;
        self.mark(t);
        self.ensure_poll(t);
        Ok(())
    }

    /// Hands queued jobs to idle ready sandboxes (warm starts).
    fn dispatch_idle(&mut self, t: u32) -> Result<(), EngineError> {
        loop {
            let ten = &mut self.tenants[t as usize];
            if ten.queue.is_empty() || ten.idle.is_empty() {
                return Ok(());
            }
            let (Some(sb), Some(j)) = (ten.idle.pop(), ten.queue.pop_front()) else {
                return Ok(());
            };
            self.start_job(j, sb, false)?;
        }
    }

    fn start_job(&mut self, j: u32, sb: SimId, cold: bool) -> Result<(), EngineError> {
        let now = self.now;
        self.fleet.assign(sb, now)?;
        let job = self.w.jobs[j as usize];
        let rec = &mut self.jobs[j as usize];
        if !rec.started {
            rec.started = true;
            rec.wait_ms = now - job.arrival_ms;
            self.waits.push(now - job.arrival_ms);
        }
        rec.cold |= cold;
        self.sb_job[sb as usize] = j;
        self.sb_run[sb as usize] += 1;
        let run = self.sb_run[sb as usize];
        let ten = &mut self.tenants[job.tenant as usize];
        ten.running += 1;
        let pos = self.sb_pos[sb as usize] as usize;
        let v = &mut ten.pool_mut().sandboxes[pos];
        v.state = SandboxState::Busy;
        v.since = now;
        v.idle_since = None;
        self.push(now + job.duration_ms, Kind::Complete, sb, run);
        Ok(())
    }

    fn complete(&mut self, sb: SimId, run: u32) -> Result<(), EngineError> {
        if self.sb_run[sb as usize] != run || self.sb_job[sb as usize] == NONE {
            return Ok(()); // The job was interrupted; this completion never happens.
        }
        let j = self.sb_job[sb as usize];
        self.sb_job[sb as usize] = NONE;
        let t = self.w.jobs[j as usize].tenant;
        self.jobs[j as usize].done = true;
        self.done_jobs += 1;
        self.warm.tenants_quiet_at = self.now;
        self.fleet.release(sb, self.now)?;
        let now = self.now;
        let ten = &mut self.tenants[t as usize];
        ten.running -= 1;
        ten.adaptive.finished(now);
        self.became_idle(t, sb);
        self.dispatch_idle(t)?;
        self.mark(t);
        Ok(())
    }

    fn became_idle(&mut self, t: u32, sb: SimId) {
        let now = self.now;
        let ten = &mut self.tenants[t as usize];
        let pos = self.sb_pos[sb as usize] as usize;
        let v = &mut ten.pool_mut().sandboxes[pos];
        v.state = SandboxState::Ready;
        v.since = now;
        v.idle_since = Some(now);
        ten.idle.push(sb);
    }

    fn ready(&mut self, boot: Boot) -> Result<(), EngineError> {
        let Some(t) = self.fleet.tenant(boot.id) else {
            return Ok(());
        };
        if t == shoal_fleet::sim::BLANK {
            return self.blank_ready(boot);
        }
        match self.fleet.boot_done(boot, self.now) {
            BootOutcome::Stale => return Ok(()),
            BootOutcome::Failed => {
                let state = self.fleet.state(boot.id);
                match state {
                    Some(shoal_fleet::sim::SimState::Stopped) => {
                        self.set_view(t, boot.id, SandboxState::Stopped)
                    }
                    Some(shoal_fleet::sim::SimState::Suspended) => {
                        self.set_view(t, boot.id, SandboxState::Suspended)
                    }
                    _ => self.remove_view(t, boot.id),
                }
            }
            BootOutcome::Ready => {
                self.sb_ready_at[boot.id as usize] = self.now;
                let ten = &mut self.tenants[t as usize];
                if let Some(j) = ten.queue.pop_front() {
                    self.start_job(j, boot.id, true)?;
                } else {
                    self.became_idle(t, boot.id);
                }
            }
        }
        self.mark(t);
        Ok(())
    }

    // ----- sandboxes, as the policies change them -----

    fn set_view(&mut self, t: u32, sb: SimId, state: SandboxState) {
        let now = self.now;
        let pos = self.sb_pos[sb as usize] as usize;
        let v = &mut self.tenants[t as usize].pool_mut().sandboxes[pos];
        v.state = state;
        v.since = now;
        v.idle_since = None;
    }

    fn remove_view(&mut self, t: u32, sb: SimId) {
        let pos = self.sb_pos[sb as usize] as usize;
        let list = &mut self.tenants[t as usize].pool_mut().sandboxes;
        list.swap_remove(pos);
        if let Some(moved) = list.get(pos) {
            let id: SimId = moved.id.parse().unwrap_or(NONE);
            if let Some(p) = self.sb_pos.get_mut(id as usize) {
                *p = pos as u32;
            }
        }
        self.sb_pos[sb as usize] = NONE;
    }

    /// The per-sandbox slots of a new sandbox (its view position unset).
    fn slots(&mut self, id: SimId) {
        debug_assert_eq!(id as usize, self.sb_job.len());
        self.sb_job.push(NONE);
        self.sb_run.push(0);
        let r = self.next_random();
        self.sb_fly_id.push(r);
        self.sb_ready_at.push(Ms::MIN);
        self.sb_pos.push(NONE);
    }

    fn new_sandbox(&mut self, t: u32) {
        let boot = self.fleet.create(t, self.now);
        self.slots(boot.id);
        let now = self.now;
        let list = &mut self.tenants[t as usize].pool_mut().sandboxes;
        self.sb_pos[boot.id as usize] = list.len() as u32;
        list.push(SandboxView {
            id: boot.id.to_string(),
            state: SandboxOp::Create.result(),
            since: now,
            idle_since: None,
        });
        self.push(boot.ready_at, Kind::Ready, boot.id, boot.seq);
    }

    /// Creates `n` sandboxes for tenant `t`.
    pub(crate) fn create(&mut self, t: u32, n: u32) {
        for _ in 0..n {
            self.new_sandbox(t);
        }
    }

    /// Starts (or resumes) a sleeping sandbox.
    pub(crate) fn wake(&mut self, t: u32, sb: SimId, resume: bool) -> Result<(), EngineError> {
        let boot = if resume {
            self.fleet.resume(sb, self.now)?
        } else {
            self.fleet.start(sb, self.now)?
        };
        let op = if resume {
            SandboxOp::Resume
        } else {
            SandboxOp::Start
        };
        self.set_view(t, sb, op.result());
        self.push(boot.ready_at, Kind::Ready, boot.id, boot.seq);
        Ok(())
    }

    /// Stops, suspends or destroys a sandbox, busy or not; a job it was running goes back to the
    /// front of its tenant's queue.
    pub(crate) fn halt(&mut self, t: u32, sb: SimId, to: SandboxState) -> Result<(), EngineError> {
        let now = self.now;
        if self
            .fleet
            .state(sb)
            .is_some_and(|s| s.is_running_or_booting())
        {
            self.warm.tenants_quiet_at = now;
        }
        let halted = match to {
            SandboxState::Suspended => self.fleet.suspend(sb, now)?,
            SandboxState::Destroyed => self.fleet.destroy(sb, now)?,
            _ => self.fleet.stop(sb, now)?,
        };
        let ten = &mut self.tenants[t as usize];
        if let Some(i) = ten.idle.iter().position(|&x| x == sb) {
            ten.idle.remove(i);
        }
        if halted == Halted::InterruptedJob {
            let j = self.sb_job[sb as usize];
            self.sb_job[sb as usize] = NONE;
            self.sb_run[sb as usize] += 1;
            ten.running -= 1;
            ten.queue.push_front(j);
            let rec = &mut self.jobs[j as usize];
            if !rec.interrupted {
                rec.interrupted = true;
                self.interrupted += 1;
            }
        }
        if to == SandboxState::Destroyed {
            self.remove_view(t, sb);
        } else {
            self.set_view(t, sb, to);
        }
        if halted == Halted::InterruptedJob {
            self.dispatch_idle(t)?;
        }
        Ok(())
    }

    // ----- the planner -----

    fn plan_tenant(&mut self, t: u32) -> Result<(), EngineError> {
        let now = self.now;
        let started = self.opts.measure.then(Instant::now);
        let cfg = &self.opts.adaptive;
        let adaptive = matches!(self.policy, Policy::Adaptive(_));
        let ten = &mut self.tenants[t as usize];
        // A tenant whose every job is known in advance needs no guess about its next one.
        let known = self.opts.due_aware && ten.all_due;
        let advice = (adaptive && !known).then(|| ten.adaptive.prewarm(now, cfg));
        let (queued, running) = (ten.queue.len() as u32, ten.running);
        while ten.due.get(ten.due_pos).is_some_and(|&at| at <= now) {
            ten.due_pos += 1;
        }
        let next_due = ten.due.get(ten.due_pos).copied();
        // The due jobs within one boot lead of the next: a burst of one firing.
        let lead = ten.pool().policy.due_lead_ms;
        let due_jobs = next_due.map_or(0, |d| {
            ten.due[ten.due_pos..]
                .iter()
                .take_while(|&&at| at < d.saturating_add(lead))
                .count()
                .min(u32::MAX as usize) as u32
        });
        let pool = ten.pool_mut();
        pool.due_jobs = due_jobs;
        pool.queued = queued;
        pool.running = running;
        pool.prewarm = advice.and_then(|a| a.prewarm());
        pool.next_due = next_due;
        let plan = shoal_planner::plan(&ten.snap, now);
        if let Some(s) = started {
            self.plan_ns
                .push(s.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        }
        self.stats.plans += 1;
        self.stats.max_pool = self
            .stats
            .max_pool
            .max(self.tenants[t as usize].pool().sandboxes.len());
        // Each step goes to the sim provider as the lifecycle table says: a create makes a
        // sandbox, a wake boots one, the rest halt one into the step's result.
        for step in plan.steps {
            let id = step
                .sandbox()
                .and_then(|s| s.parse::<SimId>().ok())
                .unwrap_or(NONE);
            let l = self.opts.latencies;
            let own_ms = match step.kind() {
                SandboxOp::Create => l.create_ms,
                SandboxOp::Start => l.start_ms,
                SandboxOp::Resume => l.resume_ms,
                _ => -1,
            };
            // A pool that must grow claims a blank of the shared warm pool first.
            if own_ms >= 0 && self.claim_worth(own_ms) {
                self.claim(t)?;
                continue;
            }
            match step.kind() {
                SandboxOp::Create => self.new_sandbox(t),
                op if op.wakes() => self.wake(t, id, op == SandboxOp::Resume)?,
                op => self.halt(t, id, op.result())?,
            }
        }
        // When must this pool be planned again if nothing happens? At the planner's own next
        // deadline, or when the adaptive advice changes.
        let advised = advice.and_then(|a| a.next_change).filter(|&x| x > now);
        let deadline = shoal_planner::next_deadline(self.tenants[t as usize].pool(), now);
        let next = advised.into_iter().chain(deadline).min();
        if let Some(x) = next {
            let ten = &mut self.tenants[t as usize];
            if ten.timer_at.is_none_or(|cur| x < cur || cur <= now) {
                ten.timer_at = Some(x);
                self.push(x, Kind::Timer, t, 0);
            }
        }
        Ok(())
    }

    /// `adaptive`'s shared idle budget: revise the worth of a cold start from the idle time
    /// spent so far against the reference, while arrivals remain.
    fn revise_budget(&mut self) {
        let spent = self.fleet.meter(self.now).idle_ms;
        let w = &mut self.opts.adaptive.cold_start_worth_ms;
        *w = self.opts.budget.revise(spent, *w);
        if self.arrivals_left > 0 {
            let step = self.opts.budget.step_ms.max(1);
            self.push(self.now + step, Kind::Budget, 0, 0);
        }
    }
}
