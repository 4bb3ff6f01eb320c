//! Shoal's load generator and policy simulator.
//!
//! - [`workload`]: the contract's workload CSV.
//! - [`generate`]: seeded multi-tenant workloads, and one derived from the Azure LLM trace.
//! - [`engine`]: the simulator (virtual clock, `sim` provider, Shoal's planner or a peer's loop).
//! - [`peers`]: the KEDA and fly-autoscaler baselines.
//! - [`report`]: every policy on every workload, as a table and a plot.
//! - [`faults`]: the fault run: replicas on Postgres and Redis killed while jobs flow, then checked.
//! - [`queuebench`]: Shoal against a bare apalis worker loop on the same Postgres and Redis.
//! - [`logbench`]: waiting on jobs (`wait_s`) and following their output, measured.
//! - [`replay`]: a workload played against a running `shoal serve`, compared with the simulator.

pub mod engine;
pub mod faults;
pub mod generate;
pub mod logbench;
pub mod peers;
pub mod policy;
pub mod queuebench;
pub mod replay;
pub mod report;
pub mod workload;

pub use engine::{JobResult, Outcome, RunStats, SimOptions, simulate, simulate_detailed};
pub use policy::Policy;
pub use workload::{Job, Workload};
