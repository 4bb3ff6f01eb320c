//! Sandboxes: the states a tenant's sandbox moves through, as the scheduler records them, and the
//! lifecycle's one transition table ([`SandboxOp`]): which operation applies to a sandbox in which
//! states, the state recorded while the provider carries it out, and the state that results. The
//! control loop, the planner's `apply` and the simulator all read it from here.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The recorded state of one sandbox.
///
/// `Booting`, `Ready` and `Busy` are *active* (they hold capacity and count against the pool);
/// `Stopping`, `Suspending` and `Destroying` are operations in flight; `Suspended` and `Stopped` can
/// be woken; `Unhealthy` is on its way out (its agent went silent, or the provider reported it
/// failed): it holds no capacity, is never woken and is only destroyed; `Destroyed` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Asked of the provider (create, start or resume); its agent has not called in yet.
    Booting,
    /// Its agent is connected and idle.
    Ready,
    /// Its agent holds a job lease.
    Busy,
    /// Its agent went silent (no heartbeat or lease request for three heartbeat intervals) or
    /// the provider reported it failed: its jobs went back, and it is destroyed and replaced.
    Unhealthy,
    /// Being suspended by the provider (memory kept, no CPU billed).
    Suspending,
    /// Suspended: resumable, holds no capacity.
    Suspended,
    /// Being stopped by the provider.
    Stopping,
    /// Stopped: can be started again, holds no capacity.
    Stopped,
    /// Being destroyed by the provider.
    Destroying,
    /// Gone at the provider; final.
    Destroyed,
}

impl SandboxState {
    /// Every state, in declaration order.
    pub const ALL: [SandboxState; 10] = [
        SandboxState::Booting,
        SandboxState::Ready,
        SandboxState::Busy,
        SandboxState::Unhealthy,
        SandboxState::Suspending,
        SandboxState::Suspended,
        SandboxState::Stopping,
        SandboxState::Stopped,
        SandboxState::Destroying,
        SandboxState::Destroyed,
    ];

    /// The state's name in the API and the store (`booting`, `ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Booting => "booting",
            SandboxState::Ready => "ready",
            SandboxState::Busy => "busy",
            SandboxState::Unhealthy => "unhealthy",
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

    /// The bucket the pools API shows this state in (`booting`, `ready`, `busy`, `unhealthy`,
    /// `suspended`, `stopped`); operations in flight are shown as where they are going.
    pub fn pool_bucket(self) -> Option<&'static str> {
        match self {
            SandboxState::Booting => Some("booting"),
            SandboxState::Ready => Some("ready"),
            SandboxState::Busy => Some("busy"),
            SandboxState::Unhealthy => Some("unhealthy"),
            SandboxState::Suspending | SandboxState::Suspended => Some("suspended"),
            SandboxState::Stopping | SandboxState::Stopped | SandboxState::Destroying => {
                Some("stopped")
            }
            SandboxState::Destroyed => None,
        }
    }
}

text_enum!(SandboxState, "sandbox state");

/// One operation on a sandbox's lifecycle: what the planner asks for and the control loop carries
/// out through the provider.
///
/// | op        | from                           | in flight    | result      |
/// |-----------|--------------------------------|--------------|-------------|
/// | `create`  | (a new sandbox)                | `booting`    | `booting`   |
/// | `resume`  | `suspended`                    | `booting`    | `booting`   |
/// | `start`   | `stopped`                      | `booting`    | `booting`   |
/// | `suspend` | `ready`                        | `suspending` | `suspended` |
/// | `stop`    | `ready`                        | `stopping`   | `stopped`   |
/// | `destroy` | `stopped`, `suspended`, `booting`, `unhealthy` | `destroying` | `destroyed` |
///
/// A woken sandbox stays `booting` once the provider has done its part: its agent calling in makes
/// it `ready` (and a lease makes it `busy`), which no operation does. A `busy` sandbox is in no
/// operation's from-states: nothing the planner asks for stops one.
///
/// `unhealthy` is reached by no operation either: the control loop's health check marks a `ready`
/// or `busy` sandbox so when its agent has gone silent, or the provider reports it stopped or
/// failed by itself. Its one way on is `destroy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxOp {
    /// Make a new sandbox at the provider.
    Create,
    /// Wake a suspended sandbox.
    Resume,
    /// Wake a stopped sandbox.
    Start,
    /// Suspend an idle, ready sandbox.
    Suspend,
    /// Stop an idle, ready sandbox.
    Stop,
    /// Remove a sandbox at the provider for good.
    Destroy,
}

impl SandboxOp {
    /// Every operation.
    pub const ALL: [SandboxOp; 6] = [
        SandboxOp::Create,
        SandboxOp::Resume,
        SandboxOp::Start,
        SandboxOp::Suspend,
        SandboxOp::Stop,
        SandboxOp::Destroy,
    ];

    /// The operation's name, as in metrics labels and events.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxOp::Create => "create",
            SandboxOp::Resume => "resume",
            SandboxOp::Start => "start",
            SandboxOp::Suspend => "suspend",
            SandboxOp::Stop => "stop",
            SandboxOp::Destroy => "destroy",
        }
    }

    /// The states a sandbox must be in for the operation to apply to it; empty for `create`,
    /// which makes a new sandbox.
    pub fn from_states(self) -> &'static [SandboxState] {
        match self {
            SandboxOp::Create => &[],
            SandboxOp::Resume => &[SandboxState::Suspended],
            SandboxOp::Start => &[SandboxState::Stopped],
            SandboxOp::Suspend | SandboxOp::Stop => &[SandboxState::Ready],
            SandboxOp::Destroy => &[
                SandboxState::Stopped,
                SandboxState::Suspended,
                SandboxState::Booting,
                SandboxState::Unhealthy,
            ],
        }
    }

    /// Whether the operation applies to a sandbox in `state`.
    pub fn applies_to(self, state: SandboxState) -> bool {
        self.from_states().contains(&state)
    }

    /// The state recorded while the provider carries the operation out (a failed call goes back
    /// from here to the state before).
    pub fn in_flight(self) -> SandboxState {
        match self {
            SandboxOp::Create | SandboxOp::Resume | SandboxOp::Start => SandboxState::Booting,
            SandboxOp::Suspend => SandboxState::Suspending,
            SandboxOp::Stop => SandboxState::Stopping,
            SandboxOp::Destroy => SandboxState::Destroying,
        }
    }

    /// The state once the provider has carried the operation out.
    pub fn result(self) -> SandboxState {
        match self {
            SandboxOp::Create | SandboxOp::Resume | SandboxOp::Start => SandboxState::Booting,
            SandboxOp::Suspend => SandboxState::Suspended,
            SandboxOp::Stop => SandboxState::Stopped,
            SandboxOp::Destroy => SandboxState::Destroyed,
        }
    }

    /// Brings a sandbox up (create, resume, start): it counts as active from the call on.
    pub fn wakes(self) -> bool {
        self.result().is_active()
    }
}

impl fmt::Display for SandboxOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SandboxState {
    /// Whether a sandbox in this state may move to `next`: by an operation ([`SandboxOp`]: its
    /// start, its end, or its failure back to where it was) or by what the agent and the provider
    /// report: an agent calling in makes a booting sandbox ready, a lease makes it
    /// busy and the job's end ready again; the health check makes a ready or busy sandbox
    /// unhealthy; a provider seen suspending or stopping a sandbox, or losing it, moves any
    /// existing sandbox there (an unhealthy one only to destroyed).
    pub fn can_become(self, next: SandboxState) -> bool {
        use SandboxState::*;
        // An operation begins (from-state to in-flight), ends (in-flight to result) or fails
        // (in-flight back to a from-state).
        let by_op = SandboxOp::ALL.into_iter().any(|op| {
            (op.applies_to(self) && op.in_flight() == next)
                || (self == op.in_flight() && (op.result() == next || op.applies_to(next)))
        });
        let by_report = match (self, next) {
            (Booting, Ready) | (Ready, Busy) | (Busy, Ready) => true,
            (Ready | Busy, Unhealthy) => true,
            // Observed: a suspend seen (also of a ready sandbox suspended by the provider), a
            // stop or a loss seen of any sandbox not already there.
            (Ready | Suspending, Suspended) => true,
            (from, Stopped) => from.exists() && !matches!(from, Stopped | Destroying | Unhealthy),
            (from, Destroyed) => from.exists(),
            _ => false,
        };
        by_op || by_report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_lifecycle() {
        use SandboxState::*;
        for op in SandboxOp::ALL {
            // Every operation's in-flight state leads to its result (or is it), and from-states
            // lead to the in-flight state.
            for &from in op.from_states() {
                assert!(from.can_become(op.in_flight()), "{op}: {from} -> in flight");
                assert!(from.exists());
            }
            assert!(
                op.in_flight() == op.result() || op.in_flight().can_become(op.result()),
                "{op}"
            );
            assert_eq!(
                op.wakes(),
                matches!(op, SandboxOp::Create | SandboxOp::Resume | SandboxOp::Start)
            );
        }
        // Nothing the planner asks for touches a busy sandbox, or one with an operation in flight.
        for op in SandboxOp::ALL {
            for s in [Busy, Suspending, Stopping, Destroying, Destroyed] {
                assert!(!op.applies_to(s), "{op} applies to {s}");
            }
        }
        assert!(SandboxOp::Stop.applies_to(Ready));
        assert!(SandboxOp::Destroy.applies_to(Booting));
        assert!(!SandboxOp::Destroy.applies_to(Ready));
        assert!(!SandboxOp::Resume.applies_to(Stopped));
        assert_eq!(SandboxOp::Suspend.in_flight(), Suspending);
        assert_eq!(SandboxOp::Stop.result(), Stopped);
        assert_eq!(SandboxOp::Start.result(), Booting);
        // The final state is final; a busy sandbox leaves only by its job's end or a loss.
        for s in SandboxState::ALL {
            assert!(!Destroyed.can_become(s), "destroyed -> {s}");
        }
        let from_busy: Vec<_> = SandboxState::ALL
            .into_iter()
            .filter(|&s| Busy.can_become(s))
            .collect();
        assert_eq!(from_busy, [Ready, Unhealthy, Stopped, Destroyed]);
        assert!(Booting.can_become(Ready) && !Ready.can_become(Booting));
        // Unhealthy: from ready or busy (a failed destroy goes back to it), and on only to its
        // destruction.
        let into: Vec<_> = SandboxState::ALL
            .into_iter()
            .filter(|&s| s.can_become(Unhealthy))
            .collect();
        assert_eq!(into, [Ready, Busy, Destroying]);
        let out: Vec<_> = SandboxState::ALL
            .into_iter()
            .filter(|&s| Unhealthy.can_become(s))
            .collect();
        assert_eq!(out, [Destroying, Destroyed]);
        assert!(!Unhealthy.is_active() && Unhealthy.exists());
        for op in SandboxOp::ALL {
            assert_eq!(op.applies_to(Unhealthy), op == SandboxOp::Destroy, "{op}");
        }
    }

    #[test]
    fn ops_have_distinct_names() {
        let names: std::collections::HashSet<_> =
            SandboxOp::ALL.into_iter().map(SandboxOp::as_str).collect();
        assert_eq!(names.len(), SandboxOp::ALL.len());
        assert_eq!(
            serde_json::to_value(SandboxOp::Destroy).unwrap(),
            SandboxOp::Destroy.as_str()
        );
    }

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
