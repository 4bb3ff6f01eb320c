//! The simulator's results: the figures of a run ([`Outcome`]), how the run went ([`RunStats`]),
//! each job's fate ([`JobResult`]), and how they are read off a finished [`Engine`].

use super::Engine;
use crate::workload::Ms;

/// The contract's figures (plus jobs interrupted by a policy that stopped a busy sandbox).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub jobs: u64,
    pub cold_starts: u64,
    pub cold_start_rate: f64,
    pub wait_p50_s: f64,
    pub wait_p99_s: f64,
    pub sandbox_seconds: f64,
    pub idle_sandbox_seconds: f64,
    pub provider_calls: u64,
    /// Jobs whose sandbox was stopped under them (they ran again); always 0 for Shoal's planner.
    pub interrupted_jobs: u64,
    /// Blank sandboxes of the shared warm pool claimed by a tenant (0 without `--warm-pool`).
    pub warm_pool_claims: u64,
    /// The blanks' idle time, billed to the fleet (already part of `idle_sandbox_seconds`).
    pub warm_pool_idle_seconds: f64,
}

/// How the run went, for the scale figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RunStats {
    /// Events handled (arrivals, completions, boots, timers, polls).
    pub events: u64,
    /// Planner calls (one per touched pool per instant).
    pub plans: u64,
    /// Planning time per call, in nanoseconds (when measured).
    pub plan_ns_p50: u64,
    pub plan_ns_p99: u64,
    pub plan_ns_max: u64,
    /// Largest pool a planner call saw.
    pub max_pool: usize,
    /// Sandboxes ever created.
    pub sandboxes_created: u64,
    /// Most sandboxes active (booting, ready or busy) at once.
    pub peak_active: u64,
    /// Virtual time at which the run ended.
    pub end_s: f64,
    /// Idle milliseconds per tenant (workload order), for the report's split by kind.
    #[serde(skip)]
    pub idle_ms_by_tenant: Vec<i64>,
}

/// One job's fate, for tests and per-job analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobResult {
    pub cold: bool,
    pub wait_ms: Ms,
    pub interrupted: bool,
}

impl Engine<'_> {
    pub(super) fn finish(mut self) -> (Outcome, RunStats, Vec<JobResult>) {
        let n = self.w.jobs.len() as u64;
        let cold = self.jobs.iter().filter(|j| j.cold).count() as u64;
        self.waits.sort_unstable();
        let pct = |v: &[Ms], q: f64| -> Ms {
            if v.is_empty() {
                return 0;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        let meter = self.fleet.meter(self.now);
        let outcome = Outcome {
            jobs: n,
            cold_starts: cold,
            cold_start_rate: if n == 0 { 0.0 } else { cold as f64 / n as f64 },
            wait_p50_s: pct(&self.waits, 0.50) as f64 / 1000.0,
            wait_p99_s: pct(&self.waits, 0.99) as f64 / 1000.0,
            sandbox_seconds: meter.sandbox_ms as f64 / 1000.0,
            idle_sandbox_seconds: meter.idle_ms as f64 / 1000.0,
            provider_calls: self.fleet.calls().total(),
            interrupted_jobs: self.interrupted,
            warm_pool_claims: self.warm.claims,
            warm_pool_idle_seconds: self.fleet.blank_idle_ms(self.now) as f64 / 1000.0,
        };
        self.plan_ns.sort_unstable();
        let p = |q: f64| -> u64 {
            if self.plan_ns.is_empty() {
                return 0;
            }
            let i =
                ((q * self.plan_ns.len() as f64).ceil() as usize).clamp(1, self.plan_ns.len()) - 1;
            self.plan_ns[i] as u64
        };
        let mut stats = self.stats.clone();
        stats.plan_ns_p50 = p(0.50);
        stats.plan_ns_p99 = p(0.99);
        stats.plan_ns_max = self.plan_ns.last().copied().unwrap_or(0) as u64;
        stats.sandboxes_created = self.fleet.created() as u64;
        stats.end_s = self.now as f64 / 1000.0;
        stats.idle_ms_by_tenant = self.fleet.idle_by_tenant(self.now);
        let jobs = self
            .jobs
            .iter()
            .map(|j| JobResult {
                cold: j.cold,
                wait_ms: j.wait_ms,
                interrupted: j.interrupted,
            })
            .collect();
        (outcome, stats, jobs)
    }
}
