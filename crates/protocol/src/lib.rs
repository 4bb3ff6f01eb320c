//! Wire types between the scheduler and `shoal-agent` (`/v1/agent/*`). The agent authenticates with
//! its sandbox token; every call about a job names the job and the lease it holds, so a stale agent
//! cannot touch a job that has moved on. [`webhooks`] is the signing scheme of the webhooks the
//! scheduler sends, shared with the platform's client so both sides agree on it.

#![warn(missing_docs)]

use serde::{Deserialize, Serialize};

pub mod webhooks;

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

/// Largest result the scheduler records, as compact JSON text: 10 MiB. (A `semantic_diff` result
/// is bounded below this by its own `max_result_bytes`, at most 8 MiB.)
pub const MAX_RESULT_BYTES: usize = 10 * 1024 * 1024;

/// Deepest result the scheduler records: 64 levels of arrays and objects, so that the result
/// inside a completion, a stored job or a job view stays well under the 128 levels JSON parsers
/// commonly accept.
pub const MAX_RESULT_DEPTH: usize = 64;

/// The error code of a job whose result is over [`MAX_RESULT_BYTES`] or [`MAX_RESULT_DEPTH`].
pub const RESULT_TOO_LARGE: &str = "result_too_large";

/// Levels of arrays and objects in a JSON text, found by scanning its bytes (strings skipped), so
/// that text of any depth is measured without a recursive parse. Text that is not JSON gives a
/// number all the same; only valid JSON's number is meaningful.
pub fn json_text_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Why a result cannot be recorded, if it cannot: over [`MAX_RESULT_BYTES`] of JSON text or
/// [`MAX_RESULT_DEPTH`] levels deep. `text` is the result's compact JSON text.
pub fn result_too_large(text: &str) -> Option<JobError> {
    let depth = json_text_depth(text.as_bytes());
    if text.len() > MAX_RESULT_BYTES {
        Some(JobError::new(
            RESULT_TOO_LARGE,
            format!(
                "the result is {} bytes of JSON, over the {MAX_RESULT_BYTES} bytes a result may take",
                text.len()
            ),
        ))
    } else if depth > MAX_RESULT_DEPTH {
        Some(JobError::new(
            RESULT_TOO_LARGE,
            format!(
                "the result nests {depth} levels deep, over the {MAX_RESULT_DEPTH} levels a result may take"
            ),
        ))
    } else {
        None
    }
}
/// The most bytes of output an agent sends in one `POST /v1/agent/log`.
pub const LOG_CHUNK_BYTES: usize = 256 * 1024;
/// The largest body `POST /v1/agent/log` accepts (a chunk and room to spare).
pub const LOG_BODY_LIMIT: usize = 1024 * 1024;
/// How often, at the longest, an agent ships the output its job wrote since the last shipment.
pub const LOG_SHIP_EVERY_MS: u64 = 1000;
/// The highest offset a chunk may claim (offsets are stored as signed 64-bit integers; this
/// leaves them room and is far beyond any real output).
pub const LOG_MAX_OFFSET: u64 = 1 << 53;

/// `POST /v1/agent/lease`: ask for the next job of this sandbox's tenant, waiting up to `wait_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LeaseRequest {
    /// The longest the scheduler holds the request open waiting for a job (20 s when absent, at
    /// most 60 s).
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// The answer to a lease request: `{"action": "run", ...the assignment's fields}`,
/// `{"action": "idle"}` or `{"action": "stop"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "snake_case",
    try_from = "FlatLeaseResponse"
)]
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
    /// The job's id.
    pub job_id: String,
    /// The lease under which this attempt runs; every later call about the job names it.
    pub lease_id: String,
    /// The job's kind (`agent`, `semantic_diff`, `flaky_analysis`).
    pub kind: String,
    /// The job's spec as JSON text, so that the agent parses it once into what its kind needs
    /// (a `semantic_diff` job's documents go straight into the engine's compact form instead of
    /// a `serde_json::Value` tree at about 14 bytes per byte of JSON). Shared, so that the
    /// blocking task running an analysis holds it without a copy.
    pub spec: std::sync::Arc<serde_json::value::RawValue>,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// Seconds the job may run.
    pub timeout_s: u64,
    /// Milliseconds between heartbeats the scheduler expects; the lease lapses after a few missed.
    pub heartbeat_ms: u64,
    /// The most bytes of output the scheduler keeps per job: an agent need not hold more than
    /// this of output it has not shipped yet. Absent from an older scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_max_bytes: Option<u64>,
}

/// How a [`LeaseResponse`] is read. serde reads an internally tagged enum by first buffering the
/// whole object, and a buffered value cannot be read back as a `RawValue` (the assignment's
/// spec); so the answer is read as one flat object with the assignment's fields optional.
#[derive(Deserialize)]
struct FlatLeaseResponse {
    action: LeaseAction,
    job_id: Option<String>,
    lease_id: Option<String>,
    kind: Option<String>,
    spec: Option<std::sync::Arc<serde_json::value::RawValue>>,
    attempt: Option<u32>,
    timeout_s: Option<u64>,
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    log_max_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum LeaseAction {
    Run,
    Idle,
    Stop,
}

impl TryFrom<FlatLeaseResponse> for LeaseResponse {
    type Error = String;

    fn try_from(f: FlatLeaseResponse) -> Result<Self, String> {
        fn need<T>(v: Option<T>, field: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("missing field `{field}` in a `run` lease answer"))
        }
        Ok(match f.action {
            LeaseAction::Idle => LeaseResponse::Idle,
            LeaseAction::Stop => LeaseResponse::Stop,
            LeaseAction::Run => LeaseResponse::Run(Assignment {
                job_id: need(f.job_id, "job_id")?,
                lease_id: need(f.lease_id, "lease_id")?,
                kind: need(f.kind, "kind")?,
                spec: need(f.spec, "spec")?,
                attempt: need(f.attempt, "attempt")?,
                timeout_s: need(f.timeout_s, "timeout_s")?,
                heartbeat_ms: need(f.heartbeat_ms, "heartbeat_ms")?,
                log_max_bytes: f.log_max_bytes,
            }),
        })
    }
}

/// `POST /v1/agent/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The job the agent is running.
    pub job_id: String,
    /// The lease it runs under.
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

/// The query of `POST /v1/agent/log`, whose body is the output's bytes (at most
/// [`LOG_BODY_LIMIT`]): the chunk starts at `offset` of this attempt's output (stdout and stderr
/// interleaved as written, counted from 0), so a chunk sent again is stored once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    /// The job whose output this is.
    pub job_id: String,
    /// The lease the attempt runs under.
    pub lease_id: String,
    /// Where in the attempt's output the chunk starts, in bytes.
    pub offset: u64,
}

/// The answer to a shipped chunk: the job's log now holds its output from `start` to `end`.
/// A stale lease is answered 409 instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogStored {
    /// The first byte offset the log holds.
    pub start: u64,
    /// The offset just past the last byte the log holds.
    pub end: u64,
}

/// How a job attempt ended, as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Done and successful.
    Succeeded {
        /// What the job produced (the kind's result).
        result: serde_json::Value,
    },
    /// Done and failed; not worth retrying (a non-zero exit, a bad spec, a timeout).
    Failed {
        /// What the job produced before it failed, if anything.
        result: Option<serde_json::Value>,
        /// Why it failed.
        error: JobError,
    },
    /// This attempt could not finish for a reason that another attempt may not share (the agent is
    /// shutting down, the sandbox ran out of something): put the job back.
    Retry {
        /// Why this attempt could not finish.
        error: JobError,
    },
}

/// Why a job failed, with a machine-readable code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobError {
    /// A short machine-readable code (`exit_code`, `timeout`, `invalid_spec`, ...).
    pub code: String,
    /// What happened, for a person.
    pub message: String,
}

impl JobError {
    /// An error with this code and message.
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
    /// The job the attempt was for.
    pub job_id: String,
    /// The lease it ran under.
    pub lease_id: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Also ask for the sandbox's next job: the answer's `next` is a lease answer, taken at once
    /// without waiting (`idle` when nothing is due now, and the agent asks again by a lease).
    /// A scheduler that does not know the field answers without `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<LeaseRequest>,
    /// What the attempt used, when the agent measured it. Absent from an older agent; one the
    /// scheduler cannot read (a value of the wrong type or out of range) reads as absent, so a
    /// bad measurement never costs the job its completion.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_usage"
    )]
    pub usage: Option<JobUsage>,
}

/// What one job attempt used, as the agent measured it: from the job's cgroup where it has one,
/// else from the kernel's accounting of the job's processes (`wait4`'s resource usage).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobUsage {
    /// The most memory the job held at once, in KiB.
    pub peak_memory_kib: u64,
    /// CPU time the job used (user and system), in milliseconds.
    pub cpu_ms: u64,
    /// How long the job ran, in milliseconds.
    pub wall_ms: u64,
    /// The kernel killed the job for lack of memory.
    #[serde(default)]
    pub oom_killed: bool,
}

/// Reads `usage` as a [`JobUsage`] when it is one, else as absent.
fn lenient_usage<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<JobUsage>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| serde_json::from_value(v).ok()))
}

/// The answer to `POST /v1/agent/complete`: the job's state after it, and the next job when the
/// completion asked for one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompleteResponse {
    /// The job's id.
    pub id: String,
    /// The job's state after the completion (`succeeded`, `failed`, `queued` for a retry, ...).
    pub state: String,
    /// The next job's lease answer, when the completion asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<LeaseResponse>,
}

/// The `agent` job kind's spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// The program and its arguments (run directly, not through a shell).
    pub command: Vec<String>,
    /// Variables added to the command's environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The working directory (a relative path is taken from the agent's directory, and created
    /// if missing); the agent's directory when absent.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Seconds the command may run; the job's timeout when absent.
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// The `agent` job kind's result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentResult {
    /// The command's exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The tail of what it wrote to standard output.
    pub stdout: String,
    /// The tail of what it wrote to standard error.
    pub stderr: String,
    /// How long it ran, in milliseconds.
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
    fn depth_is_counted_outside_strings_only() {
        assert_eq!(json_text_depth(b"1"), 0);
        assert_eq!(json_text_depth(br#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(json_text_depth(br#"["[[[[", "\"{{{"]"#), 1);
        let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        assert_eq!(json_text_depth(deep.as_bytes()), 500);
        assert!(result_too_large(&deep).is_some_and(|e| e.code == RESULT_TOO_LARGE));
        assert!(result_too_large(r#"{"ok": true}"#).is_none());
        let big = format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES));
        assert!(result_too_large(&big).is_some());
    }

    #[test]
    fn completion_wire_shape_is_flat() {
        let c = Completion {
            job_id: "j".into(),
            lease_id: "l".into(),
            outcome: Outcome::Retry {
                error: JobError::new("shutdown", "agent stopping"),
            },
            next: None,
            usage: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert!(
            v.get("next").is_none(),
            "an old scheduler sees the old shape"
        );
        assert_eq!(v["outcome"], "retry");
        assert_eq!(v["error"]["code"], "shutdown");
        let back: Completion = serde_json::from_value(v).unwrap();
        assert!(matches!(back.outcome, Outcome::Retry { .. }));
        let r: LeaseResponse = serde_json::from_str(r#"{"action":"idle"}"#).unwrap();
        assert!(matches!(r, LeaseResponse::Idle));
    }

    #[test]
    fn usage_is_optional_and_a_bad_one_reads_as_absent() {
        let base = r#"{"job_id":"j","lease_id":"l","outcome":"succeeded","result":1"#;
        let old: Completion = serde_json::from_str(&format!("{base}}}")).unwrap();
        assert!(old.usage.is_none());
        let good: Completion = serde_json::from_str(&format!(
            r#"{base},"usage":{{"peak_memory_kib":61440,"cpu_ms":20,"wall_ms":90}}}}"#
        ))
        .unwrap();
        assert_eq!(
            good.usage,
            Some(JobUsage {
                peak_memory_kib: 61440,
                cpu_ms: 20,
                wall_ms: 90,
                oom_killed: false
            })
        );
        for bad in [
            r#"{"peak_memory_kib":-1,"cpu_ms":0,"wall_ms":0}"#,
            r#"{"peak_memory_kib":1e300,"cpu_ms":0,"wall_ms":0}"#,
            r#"{"peak_memory_kib":18446744073709551616,"cpu_ms":0,"wall_ms":0}"#,
            r#""lots""#,
            r#"{"cpu_ms":1}"#,
        ] {
            let c: Completion =
                serde_json::from_str(&format!(r#"{base},"usage":{bad}}}"#)).unwrap();
            assert!(c.usage.is_none(), "{bad}");
            assert!(matches!(c.outcome, Outcome::Succeeded { .. }));
        }
    }

    #[test]
    fn a_completion_may_ask_for_the_next_job() {
        let c: Completion = serde_json::from_str(
            r#"{"job_id":"j","lease_id":"l","outcome":"succeeded","result":1,"next":{}}"#,
        )
        .unwrap();
        assert!(c.next.is_some());
        // An old scheduler's answer has no `next`; a new one's carries a lease answer.
        let old: CompleteResponse =
            serde_json::from_str(r#"{"id":"j","state":"succeeded"}"#).unwrap();
        assert!(old.next.is_none());
        let new: CompleteResponse =
            serde_json::from_str(r#"{"id":"j","state":"succeeded","next":{"action":"stop"}}"#)
                .unwrap();
        assert!(matches!(new.next, Some(LeaseResponse::Stop)));
    }

    #[test]
    fn a_run_answer_round_trips_with_its_spec_as_text() {
        let spec = r#"{"baseline": {"a": [1, 2.50]}, "candidate": {"a": "x"}}"#;
        let run = LeaseResponse::Run(Assignment {
            job_id: "j".into(),
            lease_id: "l".into(),
            kind: "semantic_diff".into(),
            spec: serde_json::value::RawValue::from_string(spec.into())
                .unwrap()
                .into(),
            attempt: 2,
            timeout_s: 60,
            heartbeat_ms: 1000,
            log_max_bytes: Some(4096),
        });
        let text = serde_json::to_string(&run).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["action"], "run");
        assert_eq!(v["spec"]["baseline"]["a"][1], 2.5);
        let LeaseResponse::Run(back) = serde_json::from_str(&text).unwrap() else {
            panic!("a run answer reads back as run: {text}");
        };
        assert_eq!(
            back.spec.get(),
            spec,
            "the spec's text arrives as it was sent"
        );
        assert_eq!(
            (back.attempt, back.timeout_s, back.log_max_bytes),
            (2, 60, Some(4096))
        );
        let e = serde_json::from_str::<LeaseResponse>(r#"{"action":"run","job_id":"j"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lease_id"), "{e}");
        assert!(serde_json::from_str::<LeaseResponse>(r#"{"action":"dance"}"#).is_err());
    }
}
