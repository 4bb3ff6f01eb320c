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

text_enum! {
    /// The three kinds of work a sandbox runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum JobKind("job kind") {
        /// A command run by the sandbox's agent.
        Agent = "agent",
        /// A structural diff of two documents (`shoal-semdiff`).
        SemanticDiff = "semantic_diff",
        /// A flaky-test analysis of test reports (`shoal-flaky`).
        FlakyAnalysis = "flaky_analysis",
    }
}

text_enum! {
    /// Where a job is in its life. `Succeeded`, `Failed`, `Cancelled` and `Dead` are terminal: a
    /// job reaches exactly one of them, once.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum JobState("job state") {
        /// Waiting for a sandbox to lease it.
        Queued = "queued",
        /// Leased by a sandbox, whose agent is running it.
        Running = "running",
        /// Finished with success.
        Succeeded = "succeeded",
        /// Finished with a failure that is not retried.
        Failed = "failed",
        /// Cancelled by its tenant or an operator before it finished.
        Cancelled = "cancelled",
        /// Attempts exhausted.
        Dead = "dead",
    }
}

impl JobState {
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
