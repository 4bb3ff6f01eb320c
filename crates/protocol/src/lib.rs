//! Wire types between the scheduler and `shoal-agent` (`/v1/agent/*`). The agent authenticates with
//! its sandbox token; every call about a job names the job and the lease it holds, so a stale agent
//! cannot touch a job that has moved on.

use serde::{Deserialize, Serialize};

/// Environment variables a provider sets for the agent it starts.
pub mod env {
    /// The scheduler's base URL as the sandbox reaches it.
    pub const URL: &str = "SHOAL_URL";
    /// The sandbox's bearer token for `/v1/agent/*`.
    pub const SANDBOX_TOKEN: &str = "SHOAL_SANDBOX_TOKEN";
    /// The sandbox's id (informational; the token is what authenticates).
    pub const SANDBOX_ID: &str = "SHOAL_SANDBOX_ID";
}

/// Most bytes of stdout and of stderr kept in a result: the tail.
pub const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// `POST /v1/agent/lease`: ask for the next job of this sandbox's tenant, waiting up to `wait_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LeaseRequest {
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// The answer to a lease request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum LeaseResponse {
    /// Run this job.
    Run(Assignment),
    /// Nothing to do yet; ask again.
    Idle,
    /// The scheduler is stopping this sandbox: exit.
    Stop,
}

/// A job handed to an agent under a lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: String,
    pub lease_id: String,
    pub kind: String,
    pub spec: serde_json::Value,
    pub attempt: u32,
    /// Seconds the job may run.
    pub timeout_s: u64,
    /// Milliseconds between heartbeats the scheduler expects; the lease lapses after a few missed.
    pub heartbeat_ms: u64,
}

/// `POST /v1/agent/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub job_id: String,
    pub lease_id: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The lease is still held.
    pub ok: bool,
    /// The job was cancelled: stop running it.
    pub cancel: bool,
}

/// How a job attempt ended, as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Done and successful.
    Succeeded { result: serde_json::Value },
    /// Done and failed; not worth retrying (a non-zero exit, a bad spec, a timeout).
    Failed {
        result: Option<serde_json::Value>,
        error: JobError,
    },
    /// This attempt could not finish for a reason that another attempt may not share (the agent is
    /// shutting down, the sandbox ran out of something): put the job back.
    Retry { error: JobError },
}

/// Why a job failed, with a machine-readable code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl JobError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// `POST /v1/agent/complete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Completion {
    pub job_id: String,
    pub lease_id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The `agent` job kind's spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// The `agent` job kind's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentResult {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    /// Set when the output was cut to its tail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The signal that ended the command, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_wire_shape_is_flat() {
        let c = Completion {
            job_id: "j".into(),
            lease_id: "l".into(),
            outcome: Outcome::Retry {
                error: JobError::new("shutdown", "agent stopping"),
            },
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["outcome"], "retry");
        assert_eq!(v["error"]["code"], "shutdown");
        let back: Completion = serde_json::from_value(v).unwrap();
        assert!(matches!(back.outcome, Outcome::Retry { .. }));
        let r: LeaseResponse = serde_json::from_str(r#"{"action":"idle"}"#).unwrap();
        assert!(matches!(r, LeaseResponse::Idle));
    }
}
