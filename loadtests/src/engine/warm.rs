//! The shared warm pool in the simulator (`--warm-pool N`): N blank sandboxes that belong to no
//! tenant ([`shoal_fleet::sim::BLANK`]).
//!
//! - They are created at the start of the run (a create each) and kept as [`BlankState`] says:
//!   running and idle (`ready`, the default: the agent is up and waits for its claim, billed to
//!   the fleet) or stopped (`stopped`: not billed; a claim has to start it).
//! - When the planner asks a tenant's pool to grow (a create, or a wake that is no quicker than a
//!   claim), the tenant claims a blank instead, if one is available: the blank is bound to the
//!   tenant for the rest of its life (it joins the tenant's pool, never returns) and a new blank
//!   is created at once to refill the pool (in the background: nobody waits for it).
//! - A ready blank's claim costs no boot: the job it takes is not a cold start (it is counted in
//!   `warm_pool_claims`). A stopped blank's claim costs a start, like the tenant's own stopped
//!   sandbox: its job is a cold start, only with a start's wait instead of a create's.
//! - The blanks' idle time is the fleet's: it is in the run's `idle_sandbox_seconds` and is
//!   reported on its own as `warm_pool_idle_seconds`. Blanks left at the end of the run are
//!   stopped as of the moment the last tenant sandbox stopped running, so their idle runs for the
//!   whole run (and not on through the stopped sandboxes' retention).

use super::{Engine, EngineError, Kind};
use shoal_core::SandboxState;
use shoal_fleet::sim::{BLANK, Boot, BootOutcome, SimId};
use shoal_planner::SandboxView;

/// How blank sandboxes wait for their claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BlankState {
    /// Running, agent up, waiting: a claim is immediate; idle is billed to the fleet.
    #[default]
    Ready,
    /// Stopped: a claim starts it (the start latency); nothing billed while it waits.
    Stopped,
}

/// The warm pool's state in a run.
#[derive(Debug, Default)]
pub(super) struct WarmPool {
    /// How many blanks the pool keeps (0: no warm pool).
    pub(super) target: u32,
    pub(super) state: BlankState,
    /// Blanks ready to be claimed (ready or stopped, as `state` says).
    pub(super) available: Vec<SimId>,
    /// Claims made.
    pub(super) claims: u64,
    /// When a tenant's sandbox last stopped running (or finished a job): the run's end, for the
    /// blanks, which would otherwise wait on until the last stopped sandbox's retention ends.
    pub(super) tenants_quiet_at: i64,
}

impl Engine<'_> {
    /// Creates the pool's blanks (at the start of the run).
    pub(super) fn warm_fill(&mut self) {
        for _ in 0..self.warm.target {
            self.new_blank();
        }
    }

    fn new_blank(&mut self) {
        let boot = self.fleet.create(BLANK, self.now);
        self.slots(boot.id);
        self.push(boot.ready_at, Kind::Ready, boot.id, boot.seq);
    }

    /// A blank's boot ended: it joins the available blanks (stopped first if blanks wait
    /// stopped); a failed create is made again.
    pub(super) fn blank_ready(&mut self, boot: Boot) -> Result<(), EngineError> {
        match self.fleet.boot_done(boot, self.now) {
            BootOutcome::Stale => {}
            BootOutcome::Failed => self.new_blank(),
            BootOutcome::Ready => {
                if self.warm.state == BlankState::Stopped {
                    self.fleet.stop(boot.id, self.now)?;
                }
                self.sb_ready_at[boot.id as usize] = self.now;
                self.warm.available.push(boot.id);
            }
        }
        Ok(())
    }

    /// Would a claim serve tenant `t` no slower than the step `own_ms` long it was to take?
    pub(super) fn claim_worth(&self, own_ms: i64) -> bool {
        if self.warm.available.is_empty() {
            return false;
        }
        match self.warm.state {
            BlankState::Ready => true,
            BlankState::Stopped => self.opts.latencies.start_ms <= own_ms,
        }
    }

    /// Tenant `t` claims an available blank (the caller checked [`Engine::claim_worth`]): it is
    /// the tenant's from now on, and a new blank is created to take its place.
    pub(super) fn claim(&mut self, t: u32) -> Result<(), EngineError> {
        // The most recently readied first (any would do; this keeps runs reproducible).
        let Some(sb) = self.warm.available.pop() else {
            return Ok(());
        };
        let now = self.now;
        self.fleet.claim(sb, t, now)?;
        self.warm.claims += 1;
        let ready = self.warm.state == BlankState::Ready;
        let list = &mut self.tenants[t as usize].pool_mut().sandboxes;
        self.sb_pos[sb as usize] = list.len() as u32;
        list.push(SandboxView {
            id: sb.to_string(),
            state: if ready {
                SandboxState::Ready
            } else {
                SandboxState::Stopped
            },
            since: now,
            idle_since: ready.then_some(now),
        });
        if ready {
            self.tenants[t as usize].idle.push(sb);
            self.dispatch_idle(t)?;
        } else {
            self.wake(t, sb, false)?;
        }
        self.new_blank();
        self.mark(t);
        Ok(())
    }

    /// At the end of the run: stops the blanks still waiting, closing the fleet's idle.
    pub(super) fn warm_retire(&mut self) -> Result<(), EngineError> {
        for sb in std::mem::take(&mut self.warm.available) {
            if self.warm.state == BlankState::Ready {
                let since = self.fleet.since(sb).unwrap_or(self.now);
                self.fleet.stop(sb, self.warm.tenants_quiet_at.max(since))?;
            }
        }
        Ok(())
    }
}
