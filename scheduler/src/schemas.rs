//! JSON Schemas of request inputs whose Rust types do not say what admission accepts: ranges,
//! patterns, enumerations, and a job's spec by its kind. `openapi::finish` puts them into the
//! document in place of the derived ones, so a schema-valid request is one admission takes and a
//! request admission refuses is schema-invalid (schemathesis checks both ways). Each bound comes
//! from the constant the server checks against, so the two cannot drift apart.

use serde_json::{Value, json};
use shoal_core::limits::range;

/// Text with no NUL (a process can take it as an argument or environment value).
fn no_nul() -> Value {
    json!({"type": "string", "pattern": "^[^\\u0000]*$"})
}

/// `""` or a JSON Pointer pattern (`/a/*/b`, `/**`).
fn pointer_pattern() -> Value {
    json!({"type": "string", "pattern": "^(/[\\s\\S]*)?$"})
}

fn nullable(mut schema: Value) -> Value {
    let ty = schema["type"].clone();
    schema["type"] = match ty {
        Value::String(t) => json!([t, "null"]),
        other => other,
    };
    schema
}

fn int(min: impl Into<Value>, max: impl Into<Value>) -> Value {
    json!({"type": "integer", "minimum": min.into(), "maximum": max.into()})
}

/// The spec of an `agent` job.
fn agent_spec() -> Value {
    let mut program = no_nul();
    program["minLength"] = json!(1);
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["command"],
        "properties": {
            "command": {
                "type": "array",
                "minItems": 1,
                "prefixItems": [program],
                "items": no_nul(),
                "description": "The program and its arguments (no NUL; the program not empty).",
            },
            "env": {
                "type": "object",
                "propertyNames": {"type": "string", "minLength": 1, "pattern": "^[^=\\u0000]*$"},
                "additionalProperties": no_nul(),
            },
            "workdir": nullable(json!({"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*$"})),
            "timeout_s": nullable(int(1, crate::admission::MAX_TIMEOUT_S)),
        },
    })
}

/// The options of a `semantic_diff` job (docs/semdiff.md).
fn semdiff_options() -> Value {
    let tol = json!({"type": "number", "minimum": 0});
    let max = shoal_semdiff::MAX_RESULT_BYTES;
    json!({
        "type": ["object", "null"],
        "additionalProperties": false,
        "properties": {
            "ignore_paths": {"type": "array", "items": pointer_pattern()},
            "ignore_keys": {"type": "array", "items": {"type": "string"}},
            "unordered_arrays": {"oneOf": [
                {"type": "boolean"},
                {"type": "array", "items": pointer_pattern()},
            ]},
            "array_keys": {
                "type": "object",
                "propertyNames": pointer_pattern(),
                "additionalProperties": {"type": "string"},
            },
            "float_abs_tol": nullable(tol.clone()),
            "float_rel_tol": nullable(tol.clone()),
            "normalize": {"type": "array", "items": {
                "type": "object",
                "additionalProperties": false,
                "required": ["pattern", "replace"],
                "properties": {
                    "pattern": {"type": "string", "format": "regex", "description": "Rust `regex` syntax"},
                    "replace": {"type": "string"},
                },
            }},
            "mode": {"type": "string", "enum": ["json", "trace"]},
            "duration_rel_tol": tol.clone(),
            "duration_abs_tol_ms": tol,
            "trace_key_attributes": {"type": "array", "items": {"type": "string"}},
            "max_nodes": int(0, u64::MAX),
            "max_pairwise": int(0, u64::MAX),
            "max_changes": int(1, u64::MAX),
            "max_value_bytes": int(16, max),
            "max_result_bytes": int(1024, max),
        },
    })
}

/// The spec of a `flaky_analysis` job.
fn flaky_spec() -> Value {
    let prior = json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1e9});
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["runs"],
        "properties": {
            "runs": {"type": "array", "items": {
                "type": "object",
                "additionalProperties": false,
                "required": ["run_id", "commit", "junit_xml"],
                "properties": {
                    "run_id": {"type": "string"},
                    "commit": {"type": "string"},
                    "started_at": {"type": ["string", "null"]},
                    "junit_xml": {"type": "string"},
                },
            }},
            "options": {
                "type": ["object", "null"],
                "additionalProperties": false,
                "properties": {
                    "decay_half_life": {"type": "number", "minimum": 0, "maximum": 1e9},
                    "min_runs": int(0, u64::MAX),
                    "min_failing_streak": int(0, u64::MAX),
                    "prior_alpha": prior.clone(),
                    "prior_beta": prior,
                },
            },
        },
    })
}

/// `POST /v1/jobs`: one shape per kind, each with the fields every job has.
/// A job's retry policy: every field optional, each within its range.
fn retry() -> Value {
    let backoff =
        json!({"type": "number", "minimum": 0, "maximum": shoal_core::retry::MAX_BACKOFF_S});
    json!({
        "type": "object",
        "additionalProperties": false,
        "description": "Attempts in all (1-20, the same setting as `max_attempts`), which ends of an attempt are tried again, and the backoff: attempt k+1 waits min(max_backoff_s, initial_backoff_s * 2^(k-1)) after attempt k, give or take 20%. Default: 3 attempts, on `lost`, 1 s doubling up to 300 s.",
        "properties": {
            "max_attempts": nullable(int(1, shoal_core::retry::MAX_RETRY_ATTEMPTS)),
            "on": {
                "type": ["array", "null"],
                "items": {"type": "string", "enum": ["lost", "failure", "timeout"]},
            },
            "initial_backoff_s": nullable(backoff.clone()),
            "max_backoff_s": nullable(backoff),
        },
    })
}

pub fn enqueue() -> Value {
    let branch = |kind: &str, spec: Value| {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["tenant", "kind", "spec"],
            "properties": {
                "tenant": {"type": "string"},
                "kind": {"type": "string", "enum": [kind]},
                "spec": spec,
                "idempotency_key": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
                },
                "priority": nullable(int(-1000, 1000)),
                "max_attempts": nullable(int(1, 100)),
                "timeout_s": nullable(int(1, crate::admission::MAX_TIMEOUT_S)),
                "retry": nullable(retry()),
                "run_at": {"type": ["string", "null"], "format": "date-time"},
                "delay_s": nullable(int(0, crate::admission::MAX_DELAY_S)),
            },
        })
    };
    let diff_spec = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["baseline", "candidate"],
        "properties": {"baseline": {}, "candidate": {}, "options": semdiff_options()},
    });
    json!({
        "description": "`POST /v1/jobs`: the tenant, the kind and its spec (`agent`: `{\"command\", \"env\"?, \"workdir\"?, \"timeout_s\"?}`; `semantic_diff`: `{\"baseline\", \"candidate\", \"options\"?}`; `flaky_analysis`: `{\"runs\", \"options\"?}`), and optionally an idempotency key, a priority, attempts, a retry policy, a timeout and a start time (`run_at` or `delay_s`, not both).",
        "oneOf": [
            branch("agent", agent_spec()),
            branch("semantic_diff", diff_spec),
            branch("flaky_analysis", flaky_spec()),
        ],
    })
}

/// A tenant's limits overrides: each within its range, `null` for unlimited.
pub fn limits_patch() -> Value {
    let r = |(lo, hi): (u32, u32)| nullable(int(lo, hi));
    json!({
        "type": ["object", "null"],
        "description": "Overrides of the plan's limits; an absent field keeps the plan's value, `null` is unlimited. No more than `max_sandboxes` are kept warm, whatever `min_warm` says.",
        "additionalProperties": false,
        "properties": {
            "max_sandboxes": r(range::MAX_SANDBOXES),
            "max_concurrent_jobs": r(range::MAX_CONCURRENT_JOBS),
            "jobs_per_month": nullable(int(range::JOBS_PER_MONTH.0, range::JOBS_PER_MONTH.1)),
            "enqueue_rate_per_s": nullable(json!({
                "type": "number",
                "minimum": range::ENQUEUE_RATE_PER_S.0,
                "maximum": range::ENQUEUE_RATE_PER_S.1,
            })),
            "enqueue_burst": r(range::ENQUEUE_BURST),
            "min_warm": r(range::MIN_WARM),
            "idle_timeout_s": nullable(int(range::IDLE_TIMEOUT_S.0, range::IDLE_TIMEOUT_S.1)),
            "sandbox_size": {
                "type": ["object", "null"],
                "additionalProperties": false,
                "required": ["cpus", "memory_mb"],
                "properties": {
                    "cpus": {"type": "number", "minimum": range::CPUS.0, "maximum": range::CPUS.1},
                    "memory_mb": int(range::MEMORY_MB.0, range::MEMORY_MB.1),
                },
            },
            "auto_size": {
                "type": ["boolean", "null"],
                "description": "Size new sandboxes by `GET /v1/tenants/{id}/recommendation` instead of `sandbox_size` (opt-in; `null`: off).",
            },
        },
    })
}

/// A tenant id as `PUT /v1/tenants/{id}` accepts it.
pub fn tenant_id() -> Value {
    json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"})
}

/// One server-sent event of `GET /v1/stream`: its name and its JSON data.
pub fn stream_event() -> Value {
    json!({
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": ["overview", "event", "sample"]},
            "data": {"type": "string", "description": "JSON: an `Overview`, an `EventView` or a `Point`"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    })
}

/// Query parameters given a closed set of values or a format, by operation and name.
pub fn query_params() -> Vec<(&'static str, &'static str, Value)> {
    let states = json!({"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled", "dead"]});
    vec![
        ("/v1/jobs", "state", states),
        (
            "/v1/jobs",
            "cursor",
            json!({"type": "string", "pattern": "^-?[0-9]{1,18}$"}),
        ),
        (
            "/v1/usage",
            "granularity",
            json!({"type": "string", "enum": ["hour", "day", "month"]}),
        ),
        (
            "/v1/usage",
            "format",
            json!({"type": "string", "enum": ["json", "csv"]}),
        ),
        (
            "/v1/usage",
            "from",
            json!({"type": "string", "format": "date-time"}),
        ),
        (
            "/v1/usage",
            "to",
            json!({"type": "string", "format": "date-time"}),
        ),
        (
            "/v1/audit",
            "after",
            json!({"type": "string", "pattern": "^[0-9]{0,19}$"}),
        ),
        (
            "/v1/webhooks/{id}/deliveries",
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
        (
            "/v1/webhooks/{id}/deliveries",
            "cursor",
            json!({"type": "string", "pattern": "^-?[0-9]{1,18}$"}),
        ),
    ]
}

/// `events` of `POST /v1/webhooks`: absent or null for every type, else at least one known type.
pub fn webhook_events() -> Value {
    json!({
        "type": ["array", "null"],
        "minItems": 1,
        "items": {"type": "string", "enum": shoal_protocol::webhooks::EVENT_TYPES},
    })
}

/// `url` of `POST /v1/webhooks`: http or https, at most 2048 characters (the parser's host rules,
/// IPv4 numbers among them, are checked at creation and are not a pattern).
pub fn webhook_url() -> Value {
    json!({
        "type": "string",
        "format": "uri",
        "pattern": "^[hH][tT][tT][pP][sS]?://",
        "maxLength": crate::webhooks::MAX_URL_LEN,
        "example": "https://platform.example/shoal-events",
    })
}

/// `job` of `PUT /v1/schedules/{tenant}/{name}`: a `POST /v1/jobs` body without the fields the
/// schedule sets (`tenant`, `idempotency_key`, `run_at`, `delay_s`).
pub fn schedule_job() -> Value {
    let mut e = enqueue();
    e["description"] = json!(
        "What each fire enqueues: the body of `POST /v1/jobs` without `tenant`, `idempotency_key`, `run_at` and `delay_s`, which the schedule sets."
    );
    for branch in e["oneOf"].as_array_mut().into_iter().flatten() {
        if let Some(props) = branch["properties"].as_object_mut() {
            for k in ["tenant", "idempotency_key", "run_at", "delay_s"] {
                props.remove(k);
            }
        }
        branch["required"] = json!(["kind", "spec"]);
    }
    e
}

/// `timezone` of a schedule: an IANA name the time zone database knows, or null for UTC.
pub fn schedule_timezone() -> Value {
    let names: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()).collect();
    json!({"type": ["string", "null"], "enum": names.into_iter().map(Value::from).chain([Value::Null]).collect::<Vec<_>>()})
}

/// A schedule's name in its path.
pub fn schedule_name() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"})
}
