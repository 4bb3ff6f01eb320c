//! Shoal's domain types and state machines: tenants and their plan limits, jobs and their states,
//! sandboxes and their states with the lifecycle's transition table, sizes, retry policies. Plain data with no I/O, shared by every other crate.
#![warn(missing_docs)]

/// Gives an enum with `ALL` and `as_str` its `Display` (the name) and `FromStr` (the name back, or
/// [`UnknownValue`] naming `$what`).
///
/// The second form declares the enum too, each variant with its name: `ALL` (every variant, in
/// declaration order) and `as_str` come with it, so the list of variants is written once.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $ty:ident($what:literal) {
            $($(#[doc = $doc:literal])+ $var:ident = $name:literal,)+
        }
    ) => {
        $(#[$meta])*
        pub enum $ty {
            $($(#[doc = $doc])+ $var,)+
        }

        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: [$ty; [$(stringify!($var)),+].len()] = [$($ty::$var),+];

            /// The value's name, as the API, the store and the config spell it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$var => $name,)+
                }
            }
        }

        text_enum!($ty, $what);
    };
    ($ty:ident, $what:literal) => {
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::ALL
                    .into_iter()
                    .find(|k| k.as_str() == s)
                    .ok_or_else(|| $crate::UnknownValue {
                        what: $what,
                        value: s.to_string(),
                    })
            }
        }
    };
}

pub mod audit;
pub mod job;
pub mod limits;
pub mod retry;
pub mod sandbox;
pub mod sizing;

pub use job::{JobKind, JobState, UnknownValue};
pub use limits::{BudgetAction, Limits, LimitsPatch, PlanTier, SandboxSize};
pub use retry::{AttemptRecord, RetryOn, RetryPolicy};
pub use sandbox::{SandboxOp, SandboxState};

/// Milliseconds since the Unix epoch, UTC. Every timestamp in Shoal's core is one of these, so
/// arithmetic is exact and the clock is always passed in, never read.
pub type Millis = i64;
