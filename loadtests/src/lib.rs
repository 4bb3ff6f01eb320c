//! Shoal's load generator and policy simulator.
//!
//! - [`workload`]: the contract's workload CSV.
//! - [`generate`]: seeded multi-tenant workloads, and one derived from the Azure LLM trace.
//! - [`cpu`]: CPU time of a benchmark's processes, from `/proc`.
//! - [`engine`]: the simulator (virtual clock, `sim` provider, Shoal's planner or a peer's loop).
//! - [`peers`]: the KEDA and fly-autoscaler baselines.
//! - [`report`]: every policy on every workload, as a table and a plot.
//! - [`faults`]: the fault run: replicas on Postgres and Redis killed while jobs flow, then checked.
//! - [`pgstat`]: a benchmark's Postgres statements by time (`pg_stat_statements`).
//! - [`faultfly`]: the same run with its sandboxes on the strict Fly emulator, and the fleet's checks.
//! - [`queuebench`]: Shoal against a bare apalis worker loop on the same Postgres and Redis.
//! - [`hotbench`]: the hot path's bars: the embedded default's rate, a wake under a deep backlog.
//! - [`logbench`]: waiting on jobs (`wait_s`) and following their output, measured.
//! - [`replay`]: a workload played against a running `shoal serve`, compared with the simulator.

pub mod cpu;
pub mod engine;
pub mod faultfly;
pub mod faults;
pub mod generate;
pub mod hotbench;
pub mod logbench;
pub mod peers;
pub mod pgstat;
pub mod policy;
pub mod queuebench;
pub mod replay;
pub mod report;
pub mod workload;

pub use engine::{JobResult, Outcome, RunStats, SimOptions, simulate, simulate_detailed};
pub use policy::Policy;
pub use workload::{Job, Workload};
