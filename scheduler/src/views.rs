//! How records are shown in the API: RFC 3339 times, the contract's field names.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};
use shoal_core::Millis;
use shoal_store::{JobRecord, SandboxRecord, TenantRecord};

pub fn rfc3339(t: Millis) -> String {
    Utc.timestamp_millis_opt(t)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn insert_opt(v: &mut Value, key: &str, val: Option<Value>) {
    if let Some(x) = val {
        v[key] = x;
    }
}

pub fn job(j: &JobRecord) -> Value {
    let mut v = json!({
        "id": j.id,
        "tenant": j.tenant,
        "kind": j.kind,
        "state": j.state,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "priority": j.priority,
        "timeout_s": j.timeout_s,
        "created_at": rfc3339(j.created_at),
    });
    insert_opt(
        &mut v,
        "idempotency_key",
        j.idempotency_key.clone().map(Value::String),
    );
    insert_opt(
        &mut v,
        "sandbox_id",
        j.sandbox_id.clone().map(Value::String),
    );
    insert_opt(&mut v, "result", j.result.clone());
    insert_opt(&mut v, "error", j.error.clone());
    insert_opt(
        &mut v,
        "started_at",
        j.started_at.map(|t| Value::String(rfc3339(t))),
    );
    insert_opt(
        &mut v,
        "finished_at",
        j.finished_at.map(|t| Value::String(rfc3339(t))),
    );
    v
}

pub fn sandbox(s: &SandboxRecord) -> Value {
    json!({
        "id": s.id,
        "state": s.state,
        "provider_id": s.provider_id,
        "since": rfc3339(s.since),
        "jobs_run": s.jobs_run,
        "size": {"cpus": s.cpus_milli as f64 / 1000.0, "memory_mb": s.memory_mb},
        "created_at": rfc3339(s.created_at),
    })
}

/// A tenant with its resolved limits and this period's use of its quota.
pub fn tenant(t: &TenantRecord, period: (Millis, Millis), jobs: u64) -> Value {
    let limits = t.limits();
    let quota = limits.jobs_per_month;
    let warning = quota.is_some_and(|q| jobs * 5 >= q * 4);
    json!({
        "id": t.id,
        "plan": t.plan,
        "limits": limits,
        "overrides": t.overrides,
        "draining": t.draining,
        "usage": {
            "period_start": rfc3339(period.0),
            "period_end": rfc3339(period.1),
            "jobs": jobs,
            "quota": quota,
            "fraction": quota.map(|q| if q == 0 { 1.0 } else { jobs as f64 / q as f64 }),
            "warning": warning,
            "exceeded": quota.is_some_and(|q| jobs >= q),
        },
        "quota_warning": warning,
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
    })
}
