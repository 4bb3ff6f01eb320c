//! Jobs: their kinds and the state machine every job moves through.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A string that names no known value of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

/// The three kinds of work a sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Agent,
    SemanticDiff,
    FlakyAnalysis,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [
        JobKind::Agent,
        JobKind::SemanticDiff,
        JobKind::FlakyAnalysis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Agent => "agent",
            JobKind::SemanticDiff => "semantic_diff",
            JobKind::FlakyAnalysis => "flaky_analysis",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "job kind",
                value: s.to_string(),
            })
    }
}

/// Where a job is in its life. `Succeeded`, `Failed`, `Cancelled` and `Dead` are terminal: a job
/// reaches exactly one of them, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Attempts exhausted.
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Dead,
    ];

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

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "job state",
                value: s.to_string(),
            })
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
