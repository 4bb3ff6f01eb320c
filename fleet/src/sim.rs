//! The `sim` provider: sandboxes as records on a virtual clock, for the policy simulator.
//!
//! [`SimFleet`] keeps one record per sandbox and answers provider calls (create, start, resume,
//! stop, suspend, destroy) at a virtual time the caller passes in. Boots take a scripted latency
//! ([`SimLatencies`]) and may fail with a scripted, seeded probability; the caller learns when a
//! boot ends from the returned [`Boot`] and reports it back with [`SimFleet::boot_done`].
//!
//! It is also the meter the simulator's figures come from, following the architecture's metering
//! rule: a sandbox is billed from the moment it is running (its boot finished) to the moment it is
//! stopped, suspended or destroyed; boot time is never billed. Idle time is the billed time during
//! which the sandbox was ready but held no job.
//!
//! # Why a synchronous model and not the async [`crate::Provider`] trait
//!
//! The simulator replays up to a million jobs and a hundred thousand sandboxes; its clock is its
//! event queue, not tokio's. Driving an `async` provider would put a future, a lock and a channel
//! message on every call and tie the run to a runtime's timer, for no gain in fidelity: the
//! behaviour being measured is the planner's, which is pure. So the hot loop calls this plain
//! state machine, which returns the virtual time at which each boot completes. The provider
//! semantics it models are the trait's: calls are idempotent (stopping a stopped sandbox or
//! destroying a missing one is a no-op that still counts as a call), errors are typed
//! ([`SimError`]), and every call is counted.

use std::fmt;

/// Virtual milliseconds.
pub type SimMillis = i64;

/// Index of a sandbox in the [`SimFleet`]; never reused.
pub type SimId = u32;

/// The tenant of a blank sandbox of the shared warm pool: it belongs to no tenant until a
/// [`SimFleet::claim`] binds it to one, and its idle time is the fleet's
/// ([`SimFleet::blank_idle_ms`]).
pub const BLANK: u32 = u32::MAX;

/// Scripted boot latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimLatencies {
    /// How long a create takes to boot.
    pub create_ms: SimMillis,
    /// How long a start takes to boot.
    pub start_ms: SimMillis,
    /// How long a resume takes to boot.
    pub resume_ms: SimMillis,
}

impl Default for SimLatencies {
    /// The contract's defaults: create 3 s, start 1.5 s, resume 0.3 s.
    fn default() -> Self {
        SimLatencies {
            create_ms: 3_000,
            start_ms: 1_500,
            resume_ms: 300,
        }
    }
}

/// The sim provider's script.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// How long each kind of boot takes.
    pub latencies: SimLatencies,
    /// Probability in [0, 1] that a create, start or resume fails when its latency has passed.
    pub failure_rate: f64,
    /// Seed of the failure draws, so a run is reproducible.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latencies: SimLatencies::default(),
            failure_rate: 0.0,
            seed: 0,
        }
    }
}

/// The states a simulated sandbox moves through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimState {
    /// A create, start or resume is in flight.
    Booting(BootOp),
    /// Running with no job: billed and idle.
    Ready,
    /// Running a job: billed.
    Busy,
    /// Suspended: not billed, quick to resume.
    Suspended,
    /// Stopped: not billed.
    Stopped,
    /// Destroyed; final.
    Destroyed,
}

/// The provider call that started a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOp {
    /// A new sandbox.
    Create,
    /// A stopped sandbox started.
    Start,
    /// A suspended sandbox resumed.
    Resume,
}

/// A call the sim provider refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No sandbox has this id.
    #[error("sandbox {0} not found")]
    NotFound(SimId),
    /// The sandbox's state does not allow the call.
    #[error("sandbox {id} is {state:?}, which does not allow {call}")]
    Conflict {
        /// The sandbox.
        id: SimId,
        /// The state it is in.
        state: SimState,
        /// The call refused.
        call: &'static str,
    },
}

/// A boot in flight: when it ends, and whether it will fail then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// The sandbox booting.
    pub id: SimId,
    /// When the boot ends.
    pub ready_at: SimMillis,
    /// Bumped on every boot of the sandbox, so a stale completion can be recognised.
    pub seq: u32,
}

/// How a boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOutcome {
    /// The sandbox is running and idle.
    Ready,
    /// The call failed; the sandbox is back where it was (stopped, suspended, or gone for a create).
    Failed,
    /// Not the sandbox's current boot (it was destroyed or re-booted since): nothing happened.
    Stale,
}

/// What a stop, suspend or destroy did to a sandbox that held a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halted {
    /// The sandbox was not running a job.
    Idle,
    /// The sandbox was running a job, which is lost (the caller requeues it).
    InterruptedJob,
}

/// Counts of provider calls, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCalls {
    /// Creates.
    pub create: u64,
    /// Starts.
    pub start: u64,
    /// Resumes.
    pub resume: u64,
    /// Stops.
    pub stop: u64,
    /// Suspends.
    pub suspend: u64,
    /// Destroys.
    pub destroy: u64,
    /// Boots that failed.
    pub failed: u64,
}

impl SimCalls {
    /// Every call made (a failed boot counts once, as its create, start or resume).
    pub fn total(&self) -> u64 {
        self.create + self.start + self.resume + self.stop + self.suspend + self.destroy
    }
}

/// Billed and idle time, in virtual milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimMeter {
    /// Running time of every sandbox (ready or busy), boot excluded.
    pub sandbox_ms: i64,
    /// Running time with no job.
    pub idle_ms: i64,
}

#[derive(Debug, Clone)]
struct Record {
    tenant: u32,
    state: SimState,
    /// When the current state began.
    since: SimMillis,
    /// When billing began (the last boot's end), while running.
    running_since: SimMillis,
    boot_seq: u32,
    boot_fails: bool,
}

/// Sandboxes on a virtual clock. See the module doc.
#[derive(Debug, Clone)]
pub struct SimFleet {
    config: SimConfig,
    records: Vec<Record>,
    calls: SimCalls,
    meter: SimMeter,
    /// Closed idle time per tenant (index: tenant).
    tenant_idle_ms: Vec<i64>,
    /// Closed idle time of blank sandboxes (the shared warm pool's, billed to the fleet).
    blank_idle_ms: i64,
    rng: u64,
    active: u64,
}

impl SimFleet {
    /// An empty fleet following `config`.
    pub fn new(config: SimConfig) -> Self {
        let rng = config.seed ^ 0x9E37_79B9_7F4A_7C15;
        SimFleet {
            config,
            records: Vec::new(),
            calls: SimCalls::default(),
            meter: SimMeter::default(),
            tenant_idle_ms: Vec::new(),
            blank_idle_ms: 0,
            rng,
            active: 0,
        }
    }

    /// The script it follows.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// SplitMix64: small, seeded, and enough for failure draws.
    fn draw(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn record(&self, id: SimId) -> Result<&Record, SimError> {
        self.records.get(id as usize).ok_or(SimError::NotFound(id))
    }

    fn boot(&mut self, id: SimId, op: BootOp, now: SimMillis) -> Boot {
        let latency = match op {
            BootOp::Create => self.config.latencies.create_ms,
            BootOp::Start => self.config.latencies.start_ms,
            BootOp::Resume => self.config.latencies.resume_ms,
        };
        let fails = self.config.failure_rate > 0.0 && self.draw() < self.config.failure_rate;
        let r = &mut self.records[id as usize];
        r.state = SimState::Booting(op);
        r.since = now;
        r.boot_seq += 1;
        r.boot_fails = fails;
        self.active += 1;
        Boot {
            id,
            ready_at: now + latency,
            seq: r.boot_seq,
        }
    }

    /// Creates a sandbox for `tenant`; it boots for the create latency.
    pub fn create(&mut self, tenant: u32, now: SimMillis) -> Boot {
        self.calls.create += 1;
        let id = self.records.len() as SimId;
        self.records.push(Record {
            tenant,
            state: SimState::Destroyed,
            since: now,
            running_since: now,
            boot_seq: 0,
            boot_fails: false,
        });
        self.boot(id, BootOp::Create, now)
    }

    /// Starts a stopped sandbox.
    pub fn start(&mut self, id: SimId, now: SimMillis) -> Result<Boot, SimError> {
        self.calls.start += 1;
        match self.record(id)?.state {
            SimState::Stopped => Ok(self.boot(id, BootOp::Start, now)),
            state => Err(SimError::Conflict {
                id,
                state,
                call: "start",
            }),
        }
    }

    /// Resumes a suspended sandbox.
    pub fn resume(&mut self, id: SimId, now: SimMillis) -> Result<Boot, SimError> {
        self.calls.resume += 1;
        match self.record(id)?.state {
            SimState::Suspended => Ok(self.boot(id, BootOp::Resume, now)),
            state => Err(SimError::Conflict {
                id,
                state,
                call: "resume",
            }),
        }
    }

    /// Ends a boot: the sandbox is running and idle (billing starts), or the call failed.
    pub fn boot_done(&mut self, boot: Boot, now: SimMillis) -> BootOutcome {
        let Some(r) = self.records.get_mut(boot.id as usize) else {
            return BootOutcome::Stale;
        };
        let SimState::Booting(op) = r.state else {
            return BootOutcome::Stale;
        };
        if r.boot_seq != boot.seq {
            return BootOutcome::Stale;
        }
        r.since = now;
        if r.boot_fails {
            r.state = match op {
                BootOp::Create => SimState::Destroyed,
                BootOp::Start => SimState::Stopped,
                BootOp::Resume => SimState::Suspended,
            };
            self.active -= 1;
            self.calls.failed += 1;
            return BootOutcome::Failed;
        }
        r.state = SimState::Ready;
        r.running_since = now;
        BootOutcome::Ready
    }

    /// A ready sandbox takes a job.
    pub fn assign(&mut self, id: SimId, now: SimMillis) -> Result<(), SimError> {
        let r = self
            .records
            .get_mut(id as usize)
            .ok_or(SimError::NotFound(id))?;
        if r.state != SimState::Ready {
            return Err(SimError::Conflict {
                id,
                state: r.state,
                call: "assign",
            });
        }
        self.meter.idle_ms += now - r.since;
        add_idle(
            &mut self.tenant_idle_ms,
            &mut self.blank_idle_ms,
            r.tenant,
            now - r.since,
        );
        r.state = SimState::Busy;
        r.since = now;
        Ok(())
    }

    /// A busy sandbox finished its job and is idle again.
    pub fn release(&mut self, id: SimId, now: SimMillis) -> Result<(), SimError> {
        let r = self
            .records
            .get_mut(id as usize)
            .ok_or(SimError::NotFound(id))?;
        if r.state != SimState::Busy {
            return Err(SimError::Conflict {
                id,
                state: r.state,
                call: "release",
            });
        }
        r.state = SimState::Ready;
        r.since = now;
        Ok(())
    }

    /// Takes a sandbox out of the running set into `to`, closing its billing.
    fn halt(&mut self, id: SimId, to: SimState, now: SimMillis) -> Result<Halted, SimError> {
        let r = self
            .records
            .get_mut(id as usize)
            .ok_or(SimError::NotFound(id))?;
        let halted = match r.state {
            SimState::Ready => {
                self.meter.idle_ms += now - r.since;
                add_idle(
                    &mut self.tenant_idle_ms,
                    &mut self.blank_idle_ms,
                    r.tenant,
                    now - r.since,
                );
                self.meter.sandbox_ms += now - r.running_since;
                self.active -= 1;
                Halted::Idle
            }
            SimState::Busy => {
                self.meter.sandbox_ms += now - r.running_since;
                self.active -= 1;
                Halted::InterruptedJob
            }
            SimState::Booting(_) => {
                // Boot is never billed; a boot cut short simply ends.
                self.active -= 1;
                Halted::Idle
            }
            SimState::Suspended | SimState::Stopped | SimState::Destroyed => {
                if to == SimState::Destroyed || r.state == to || r.state == SimState::Destroyed {
                    // Idempotent: nothing to close.
                    if to == SimState::Destroyed {
                        r.state = to;
                        r.since = now;
                    }
                    return Ok(Halted::Idle);
                }
                return Err(SimError::Conflict {
                    id,
                    state: r.state,
                    call: "halt",
                });
            }
        };
        r.state = to;
        r.since = now;
        Ok(halted)
    }

    /// Stops a sandbox (keeping it for a later start). Stopping a busy sandbox loses its job.
    pub fn stop(&mut self, id: SimId, now: SimMillis) -> Result<Halted, SimError> {
        self.calls.stop += 1;
        self.halt(id, SimState::Stopped, now)
    }

    /// Suspends a sandbox (keeping its memory for a resume).
    pub fn suspend(&mut self, id: SimId, now: SimMillis) -> Result<Halted, SimError> {
        self.calls.suspend += 1;
        self.halt(id, SimState::Suspended, now)
    }

    /// Destroys a sandbox, whatever its state.
    pub fn destroy(&mut self, id: SimId, now: SimMillis) -> Result<Halted, SimError> {
        self.calls.destroy += 1;
        self.halt(id, SimState::Destroyed, now)
    }

    /// The sandbox's state; `None` for an unknown id.
    pub fn state(&self, id: SimId) -> Option<SimState> {
        self.records.get(id as usize).map(|r| r.state)
    }

    /// The tenant the sandbox belongs to; `None` for an unknown id.
    pub fn tenant(&self, id: SimId) -> Option<u32> {
        self.records.get(id as usize).map(|r| r.tenant)
    }

    /// When the sandbox entered its current state.
    pub fn since(&self, id: SimId) -> Option<SimMillis> {
        self.records.get(id as usize).map(|r| r.since)
    }

    /// Sandboxes booting, ready or busy.
    pub fn active(&self) -> u64 {
        self.active
    }

    /// Sandboxes ever created.
    pub fn created(&self) -> usize {
        self.records.len()
    }

    /// The calls made so far.
    pub fn calls(&self) -> SimCalls {
        self.calls
    }

    /// The meter as of `now`: closed intervals plus the open ones of running sandboxes.
    pub fn meter(&self, now: SimMillis) -> SimMeter {
        let mut m = self.meter;
        if self.active > 0 {
            for r in &self.records {
                match r.state {
                    SimState::Ready => {
                        m.idle_ms += now - r.since;
                        m.sandbox_ms += now - r.running_since;
                    }
                    SimState::Busy => m.sandbox_ms += now - r.running_since,
                    _ => {}
                }
            }
        }
        m
    }

    /// Idle time per tenant as of `now` (index: tenant; tenants that never idled may be
    /// missing at the end): the meter's `idle_ms`, split by whose sandbox idled.
    pub fn idle_by_tenant(&self, now: SimMillis) -> Vec<i64> {
        let mut v = self.tenant_idle_ms.clone();
        for r in &self.records {
            if r.state == SimState::Ready && r.tenant != BLANK {
                add_idle(&mut v, &mut 0, r.tenant, now - r.since);
            }
        }
        v
    }

    /// Idle time of blank sandboxes as of `now`: the shared warm pool's cost, billed to the
    /// fleet (it is part of the meter's `idle_ms`, and of no tenant's).
    pub fn blank_idle_ms(&self, now: SimMillis) -> i64 {
        let mut ms = self.blank_idle_ms;
        for r in &self.records {
            if r.state == SimState::Ready && r.tenant == BLANK {
                ms += now - r.since;
            }
        }
        ms
    }

    /// Binds a blank sandbox to `tenant` for the rest of its life. Its idle time so far is closed
    /// to the fleet's account; from `now` on it is the tenant's. Not a provider call (the token is
    /// handed to an agent that is already there). Refused for a sandbox that is not blank.
    pub fn claim(&mut self, id: SimId, tenant: u32, now: SimMillis) -> Result<(), SimError> {
        let r = self
            .records
            .get_mut(id as usize)
            .ok_or(SimError::NotFound(id))?;
        if r.tenant != BLANK || tenant == BLANK {
            return Err(SimError::Conflict {
                id,
                state: r.state,
                call: "claim",
            });
        }
        if r.state == SimState::Ready {
            self.meter.idle_ms += now - r.since;
            self.blank_idle_ms += now - r.since;
            r.since = now;
        }
        r.tenant = tenant;
        Ok(())
    }
}

fn add_idle(v: &mut Vec<i64>, blank: &mut i64, tenant: u32, ms: i64) {
    if tenant == BLANK {
        *blank += ms;
        return;
    }
    let i = tenant as usize;
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += ms;
}

impl SimState {
    /// Booting, ready or busy: counted as active.
    pub fn is_running_or_booting(self) -> bool {
        matches!(
            self,
            SimState::Booting(_) | SimState::Ready | SimState::Busy
        )
    }
}

impl fmt::Display for SimState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_runs_from_ready_to_stop_and_idle_excludes_jobs() {
        let mut f = SimFleet::new(SimConfig::default());
        let b = f.create(7, 0);
        assert_eq!(b.ready_at, 3_000);
        assert_eq!(f.meter(2_000), SimMeter::default(), "boot is not billed");
        assert_eq!(f.boot_done(b, 3_000), BootOutcome::Ready);
        f.assign(b.id, 4_000).unwrap();
        f.release(b.id, 10_000).unwrap();
        assert_eq!(f.stop(b.id, 12_000).unwrap(), Halted::Idle);
        assert_eq!(
            f.meter(50_000),
            SimMeter {
                sandbox_ms: 9_000,
                idle_ms: 3_000
            }
        );
        let b2 = f.start(b.id, 60_000).unwrap();
        assert_eq!(b2.ready_at, 61_500);
        assert_eq!(
            f.boot_done(b, 61_500),
            BootOutcome::Stale,
            "an old boot's completion is ignored"
        );
        assert_eq!(f.boot_done(b2, 61_500), BootOutcome::Ready);
        f.assign(b.id, 61_500).unwrap();
        assert_eq!(f.destroy(b.id, 62_000).unwrap(), Halted::InterruptedJob);
        assert_eq!(
            f.meter(70_000),
            SimMeter {
                sandbox_ms: 9_500,
                idle_ms: 3_000
            }
        );
        assert_eq!(
            f.destroy(b.id, 63_000).unwrap(),
            Halted::Idle,
            "destroy is idempotent"
        );
        assert_eq!(f.calls().total(), 5);
        assert_eq!(f.active(), 0);
    }

    #[test]
    fn failed_boots_return_to_rest_and_are_seeded() {
        let cfg = SimConfig {
            failure_rate: 0.5,
            seed: 42,
            ..SimConfig::default()
        };
        let run = |cfg: SimConfig| {
            let mut f = SimFleet::new(cfg);
            (0..100)
                .map(|i| {
                    let b = f.create(0, i);
                    f.boot_done(b, b.ready_at)
                })
                .collect::<Vec<_>>()
        };
        let a = run(cfg.clone());
        assert_eq!(a, run(cfg));
        let failed = a.iter().filter(|o| **o == BootOutcome::Failed).count();
        assert!((20..80).contains(&failed), "{failed}");
    }

    #[test]
    fn start_of_a_running_sandbox_is_a_conflict() {
        let mut f = SimFleet::new(SimConfig::default());
        let b = f.create(0, 0);
        assert!(matches!(f.start(b.id, 1), Err(SimError::Conflict { .. })));
        assert_eq!(f.start(99, 1), Err(SimError::NotFound(99)));
    }
}
