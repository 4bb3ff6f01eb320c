//! Jobs: their kinds and the state machine every job moves through.

use serde::{Deserialize, Serialize};

/// A string that names no known value of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownValue {
    /// What the string was meant to name (`job kind`, `plan`, ...).
    pub what: &'static str,
    /// The string as given.
    pub value: String,
}

/// The three kinds of work a sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A command run by the sandbox's agent.
    Agent,
    /// A structural diff of two documents (`shoal-semdiff`).
    SemanticDiff,
    /// A flaky-test analysis of test reports (`shoal-flaky`).
    FlakyAnalysis,
}

impl JobKind {
    /// Every kind, in declaration order.
    pub const ALL: [JobKind; 3] = [
        JobKind::Agent,
        JobKind::SemanticDiff,
        JobKind::FlakyAnalysis,
    ];

    /// The kind's name in the API and the store (`agent`, `semantic_diff`, `flaky_analysis`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Agent => "agent",
            JobKind::SemanticDiff => "semantic_diff",
            JobKind::FlakyAnalysis => "flaky_analysis",
        }
    }
}

text_enum!(JobKind, "job kind");

/// Where a job is in its life. `Succeeded`, `Failed`, `Cancelled` and `Dead` are terminal: a job
/// reaches exactly one of them, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a sandbox to lease it.
    Queued,
    /// Leased by a sandbox, whose agent is running it.
    Running,
    /// Finished with success.
    Succeeded,
    /// Finished with a failure that is not retried.
    Failed,
    /// Cancelled by its tenant or an operator before it finished.
    Cancelled,
    /// Attempts exhausted.
    Dead,
}

impl JobState {
    /// Every state, in the order a job may pass through them.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    /// The state's name in the API and the store (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    /// Whether the job is over (succeeded, failed, cancelled or dead) and never moves again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    /// The job lifecycle's transition table: whether a job in this state may move to `next`.
    /// A queued job is leased (`running`) or cancelled; a running job ends (succeeded, failed,
    /// cancelled, dead: attempts spent) or goes back to the queue (a retry, a lost sandbox, a
    /// lapsed lease, an agent handing it back). A terminal state is final.
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        match self {
            Queued => matches!(next, Running | Cancelled),
            Running => next != Running,
            Succeeded | Failed | Cancelled | Dead => false,
        }
    }
}

text_enum!(JobState, "job state");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_round_trip_through_strings() {
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("nope".parse::<JobKind>().is_err());
        assert!(JobState::Dead.is_terminal() && !JobState::Running.is_terminal());
    }

    #[test]
    fn the_job_table_ends_once() {
        use JobState::*;
        for s in JobState::ALL {
            // Terminal states are final and reached only from running or (cancelled) queued.
            assert_eq!(
                JobState::ALL.iter().any(|&n| s.can_become(n)),
                !s.is_terminal()
            );
            assert!(!s.can_become(s), "{s} -> itself");
        }
        let from_queued: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|&n| Queued.can_become(n))
            .collect();
        assert_eq!(from_queued, [Running, Cancelled]);
        for n in [Queued, Succeeded, Failed, Cancelled, Dead] {
            assert!(Running.can_become(n), "running -> {n}");
        }
        assert!(!Queued.can_become(Succeeded) && !Queued.can_become(Dead));
    }
}
