//! Shoal's domain types and state machines: tenants and their plan limits, jobs and their states,
//! sandboxes and their states with the lifecycle's transition table, sizes, retry policies. Plain data with no I/O, shared by every other crate.

pub mod audit;
pub mod job;
pub mod limits;
pub mod retry;
pub mod sandbox;

pub use job::{JobKind, JobState, UnknownValue};
pub use limits::{BudgetAction, Limits, LimitsPatch, PlanTier, SandboxSize};
pub use retry::{AttemptRecord, RetryOn, RetryPolicy};
pub use sandbox::{SandboxOp, SandboxState};

/// Milliseconds since the Unix epoch, UTC. Every timestamp in Shoal's core is one of these, so
/// arithmetic is exact and the clock is always passed in, never read.
pub type Millis = i64;
