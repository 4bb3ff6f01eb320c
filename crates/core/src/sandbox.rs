//! Sandboxes: the states a tenant's sandbox moves through, as the scheduler records them.

use crate::job::UnknownValue;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The recorded state of one sandbox.
///
/// `Booting`, `Ready` and `Busy` are *active* (they hold capacity and count against the pool);
/// `Stopping`, `Suspending` and `Destroying` are operations in flight; `Suspended` and `Stopped` can
/// be woken; `Destroyed` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Asked of the provider (create, start or resume); its agent has not called in yet.
    Booting,
    /// Its agent is connected and idle.
    Ready,
    /// Its agent holds a job lease.
    Busy,
    Suspending,
    Suspended,
    Stopping,
    Stopped,
    Destroying,
    Destroyed,
}

impl SandboxState {
    pub const ALL: [SandboxState; 9] = [
        SandboxState::Booting,
        SandboxState::Ready,
        SandboxState::Busy,
        SandboxState::Suspending,
        SandboxState::Suspended,
        SandboxState::Stopping,
        SandboxState::Stopped,
        SandboxState::Destroying,
        SandboxState::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Booting => "booting",
            SandboxState::Ready => "ready",
            SandboxState::Busy => "busy",
            SandboxState::Suspending => "suspending",
            SandboxState::Suspended => "suspended",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Destroying => "destroying",
            SandboxState::Destroyed => "destroyed",
        }
    }

    /// Holds capacity: booting, ready or busy.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            SandboxState::Booting | SandboxState::Ready | SandboxState::Busy
        )
    }

    /// Still exists at the provider (everything but destroyed).
    pub fn exists(self) -> bool {
        self != SandboxState::Destroyed
    }

    /// The bucket the pools API shows this state in (`booting`, `ready`, `busy`, `suspended`,
    /// `stopped`); operations in flight are shown as where they are going.
    pub fn pool_bucket(self) -> Option<&'static str> {
        match self {
            SandboxState::Booting => Some("booting"),
            SandboxState::Ready => Some("ready"),
            SandboxState::Busy => Some("busy"),
            SandboxState::Suspending | SandboxState::Suspended => Some("suspended"),
            SandboxState::Stopping | SandboxState::Stopped | SandboxState::Destroying => {
                Some("stopped")
            }
            SandboxState::Destroyed => None,
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "sandbox state",
                value: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_classify() {
        for s in SandboxState::ALL {
            assert_eq!(s.as_str().parse::<SandboxState>().unwrap(), s);
        }
        let active: Vec<_> = SandboxState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        assert_eq!(
            active,
            [
                SandboxState::Booting,
                SandboxState::Ready,
                SandboxState::Busy
            ]
        );
        assert_eq!(SandboxState::Destroyed.pool_bucket(), None);
    }
}
