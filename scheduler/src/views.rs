//! How records are shown in the API: RFC 3339 times, the contract's field names. Every answer is a
//! typed struct that also derives its OpenAPI schema, so `/openapi.json` is generated from the
//! very types the handlers return and cannot drift from them.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;
use shoal_core::Millis;
use shoal_store::{EventRecord, JobRecord, SandboxRecord, TenantRecord};
use utoipa::ToSchema;

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

/// A job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub tenant: String,
    /// `agent`, `semantic_diff` or `flaky_analysis`.
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `dead`.
    #[schema(value_type = String, example = "queued")]
    pub state: shoal_core::JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub priority: i32,
    pub timeout_s: u64,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The kind's result (for `agent`: `exit_code`, `stdout`, `stderr`, `duration_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Its retry policy.
    pub retry: RetryView,
    /// Not started before this time (a delayed or scheduled job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// A queued job whose last attempt will be tried again: not before this time (the backoff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// One entry per attempt that ended, oldest first.
    pub attempt_history: Vec<AttemptView>,
    /// The schedule that made it (`TENANT/NAME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// A job's retry policy.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RetryView {
    pub max_attempts: u32,
    /// Which ends of an attempt are tried again: `lost`, `failure`, `timeout`.
    #[schema(value_type = Vec<String>)]
    pub on: Vec<shoal_core::RetryOn>,
    pub initial_backoff_s: f64,
    pub max_backoff_s: f64,
}

/// One ended attempt of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub finished_at: String,
    /// `succeeded`, `failure`, `timeout` or `lost`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

pub fn job(j: &JobRecord) -> JobView {
    JobView {
        id: j.id.clone(),
        tenant: j.tenant.clone(),
        kind: j.kind.clone(),
        state: j.state,
        attempts: j.attempts,
        max_attempts: j.max_attempts,
        priority: j.priority,
        timeout_s: j.timeout_s,
        created_at: rfc3339(j.created_at),
        idempotency_key: j.idempotency_key.clone(),
        sandbox_id: j.sandbox_id.clone(),
        result: j.result.clone(),
        error: j.error.clone(),
        started_at: j.started_at.map(rfc3339),
        finished_at: j.finished_at.map(rfc3339),
        retry: RetryView {
            max_attempts: j.max_attempts,
            on: j.retry.on.clone(),
            initial_backoff_s: j.retry.initial_backoff_s,
            max_backoff_s: j.retry.max_backoff_s,
        },
        run_at: j.run_at.map(rfc3339),
        next_attempt_at: j
            .next_attempt_at
            .filter(|_| j.state == shoal_core::JobState::Queued)
            .map(rfc3339),
        attempt_history: j
            .attempt_history
            .iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                started_at: a.started_at.map(rfc3339),
                finished_at: rfc3339(a.finished_at),
                outcome: a.outcome.clone(),
                error: a.error.clone(),
            })
            .collect(),
        schedule: j.schedule.clone(),
    }
}

/// A sandbox's size.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SizeView {
    pub cpus: f64,
    pub memory_mb: u64,
}

/// One sandbox of a pool.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SandboxView {
    pub id: String,
    /// `booting`, `ready`, `busy`, `unhealthy`, `suspending`, `suspended`, `stopping`, `stopped`,
    /// `destroying`.
    #[schema(value_type = String, example = "ready")]
    pub state: shoal_core::SandboxState,
    pub provider_id: Option<String>,
    /// The region it runs in, where its provider places by region and has said (`fly`);
    /// absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// When it entered its current state.
    pub since: String,
    pub jobs_run: u64,
    pub size: SizeView,
    pub created_at: String,
}

pub fn sandbox(s: &SandboxRecord) -> SandboxView {
    SandboxView {
        id: s.id.clone(),
        state: s.state,
        provider_id: s.provider_id.clone(),
        region: s.region.clone(),
        since: rfc3339(s.since),
        jobs_run: s.jobs_run,
        size: SizeView {
            cpus: s.cpus_milli as f64 / 1000.0,
            memory_mb: s.memory_mb,
        },
        created_at: rfc3339(s.created_at),
    }
}

/// A tenant's use of its monthly job quota.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct QuotaUsage {
    pub period_start: String,
    pub period_end: String,
    /// Jobs admitted this period.
    pub jobs: u64,
    /// The monthly quota; `null` is unlimited.
    pub quota: Option<u64>,
    /// `jobs / quota`; `null` when unlimited.
    pub fraction: Option<f64>,
    /// At or past 80% of the quota.
    pub warning: bool,
    /// At or past the quota: enqueues answer 429 `quota_exceeded`.
    pub exceeded: bool,
}

/// This period's use of `quota` with `jobs` admitted.
pub fn quota_usage(period: (Millis, Millis), jobs: u64, quota: Option<u64>) -> QuotaUsage {
    QuotaUsage {
        period_start: rfc3339(period.0),
        period_end: rfc3339(period.1),
        jobs,
        quota,
        fraction: quota.map(|q| if q == 0 { 1.0 } else { jobs as f64 / q as f64 }),
        warning: quota.is_some_and(|q| jobs.saturating_mul(5) >= q.saturating_mul(4)),
        exceeded: quota.is_some_and(|q| jobs >= q),
    }
}

/// A tenant with its resolved limits and this period's use of its quota.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    /// `free`, `pro`, `team` or `enterprise`.
    #[schema(value_type = String, example = "pro")]
    pub plan: shoal_core::PlanTier,
    /// The plan's limits with the tenant's overrides; `null` is unlimited.
    #[schema(value_type = Object)]
    pub limits: shoal_core::Limits,
    /// The overrides alone.
    #[schema(value_type = Object)]
    pub overrides: shoal_core::LimitsPatch,
    pub draining: bool,
    pub usage: QuotaUsage,
    pub quota_warning: bool,
    pub created_at: String,
    pub updated_at: String,
}

pub fn tenant(t: &TenantRecord, period: (Millis, Millis), jobs: u64) -> TenantView {
    let limits = t.limits();
    let usage = quota_usage(period, jobs, limits.jobs_per_month);
    TenantView {
        id: t.id.clone(),
        plan: t.plan,
        quota_warning: usage.warning,
        limits,
        overrides: t.overrides.clone(),
        draining: t.draining,
        usage,
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
    }
}

/// Sandboxes of a pool by state (`suspending` counts as suspended, `stopping` and `destroying`
/// as stopped).
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema, PartialEq, Eq)]
pub struct SandboxCounts {
    pub booting: u64,
    pub ready: u64,
    pub busy: u64,
    /// Its agent went silent or its provider reported it failed; being destroyed and replaced.
    pub unhealthy: u64,
    pub suspended: u64,
    pub stopped: u64,
}

impl SandboxCounts {
    pub fn add(&mut self, state: shoal_core::SandboxState) {
        match state.pool_bucket() {
            Some("booting") => self.booting += 1,
            Some("ready") => self.ready += 1,
            Some("busy") => self.busy += 1,
            Some("unhealthy") => self.unhealthy += 1,
            Some("suspended") => self.suspended += 1,
            Some("stopped") => self.stopped += 1,
            _ => {}
        }
    }

    /// Booting, ready and busy: what the planner counts as the pool's size.
    pub fn active(&self) -> u64 {
        self.booting + self.ready + self.busy
    }
}

/// An operator-facing event: a scaling action, a warning, a drain.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct EventView {
    /// Increases with every event; a client that has seen `seq` has seen every earlier one.
    pub seq: i64,
    pub tenant: Option<String>,
    pub at: String,
    /// `create`, `start`, `resume`, `suspend`, `stop`, `destroy`, `create_failed`,
    /// `provider_error`, `sandbox_lost`, `sandbox_unhealthy`, `orphan_collected`, `quota_warning`,
    /// `drained`, `auto_size` (right-sizing changed the size of new sandboxes), ...
    pub kind: String,
    #[schema(value_type = Object)]
    pub detail: Value,
}

pub fn event(e: &EventRecord) -> EventView {
    EventView {
        seq: e.seq,
        tenant: e.tenant.clone(),
        at: rfc3339(e.at),
        kind: e.kind.clone(),
        detail: e.detail.clone(),
    }
}

/// One tenant's pool.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolView {
    pub tenant: String,
    #[schema(value_type = String, example = "pro")]
    pub plan: shoal_core::PlanTier,
    pub draining: bool,
    /// The size the planner last wanted.
    pub desired: u32,
    pub queued: u64,
    pub running: u64,
    pub sandboxes: SandboxCounts,
    /// Each sandbox (`GET /v1/pools/{tenant}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_list: Option<Vec<SandboxView>>,
    /// The tenant's recent events, newest first (`GET /v1/pools/{tenant}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventView>>,
}

/// `GET /v1/tenants`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
}

/// `GET /v1/pools`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/events`, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
}

/// The answer to an accepted enqueue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    #[schema(example = "queued")]
    pub state: String,
}

/// A new tenant API key, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewKey {
    /// The key's id, to list and revoke it by.
    pub id: String,
    pub tenant: String,
    /// The key itself: `Authorization: Bearer KEY`. Shown this once.
    pub key: String,
}

/// One of a tenant's API keys (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

/// `GET /v1/tenants/{id}/keys`, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

pub fn key(k: &shoal_store::KeyRecord) -> KeyView {
    KeyView {
        id: k.id.clone(),
        created_at: rfc3339(k.created_at),
        last_used_at: k.last_used_at.map(rfc3339),
    }
}

/// `GET /v1/plan`: what the planner would do now, without doing it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanView {
    /// Always `true`: nothing was applied.
    pub dry_run: bool,
    /// Per pool: `{"tenant", "desired", "active"}`.
    #[schema(value_type = Vec<Object>)]
    pub pools: Vec<shoal_planner::PoolDecision>,
    /// Steps: `{"op": "create"|"resume"|"start"|"suspend"|"stop"|"destroy", "tenant", "sandbox"?}`.
    #[schema(value_type = Vec<Object>)]
    pub steps: Vec<shoal_planner::Step>,
}

/// An agent's completion, as recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletedView {
    pub id: String,
    #[schema(value_type = String)]
    pub state: shoal_core::JobState,
    /// When the completion asked for it: the sandbox's next job as `POST /v1/agent/lease`
    /// answers (`{"action": "run", ...}`, `idle` or `stop`), taken without waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub next: Option<shoal_protocol::LeaseResponse>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_warning_starts_at_80_percent() {
        let p = (0, 1000);
        assert!(!quota_usage(p, 79, Some(100)).warning);
        let u = quota_usage(p, 80, Some(100));
        assert!(u.warning && !u.exceeded);
        assert_eq!(u.fraction, Some(0.8));
        assert!(quota_usage(p, 100, Some(100)).exceeded);
        let unlimited = quota_usage(p, 1_000_000, None);
        assert!(!unlimited.warning && unlimited.fraction.is_none());
    }
}
