//! Admission: every rule a job passes before it is durable, in one place.
//!
//! The rules, in the order they are applied:
//! - **validation** ([`check`]): the kind and its spec, the idempotency key, attempts and retry
//!   policy, timeout, priority, start time;
//! - **rate** ([`rate`]): the tenant's enqueue rate, a token bucket per tenant;
//! - **budget** ([`budget`]): a tenant past its monthly budget with `on_budget_exceeded = "block"`;
//! - **quota and idempotency**: counted and decided by the store in the transaction that makes
//!   the job durable (`Store::admit`, `Store::fire_schedule`); [`quota_refusal`] words the answer.
//!
//! The ways in: `POST /v1/jobs` and the ingress queue go through [`admit`] (every rule); a
//! schedule fire (`crate::schedules`) takes validation, budget, quota and idempotency (its
//! idempotency key is the schedule and the fire time) but not the rate, which is its cron pattern.

use crate::error::ApiError;
use crate::state::{App, now_ms};
use crate::views::{self};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use shoal_core::audit::Actor;
use shoal_core::{JobKind, Limits, Millis};
use shoal_store::{Admitted, NewJob};
use utoipa::ToSchema;

/// `POST /v1/jobs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Enqueue {
    pub tenant: String,
    /// `agent`, `semantic_diff` or `flaky_analysis`.
    #[schema(example = "agent")]
    pub kind: String,
    /// The kind's spec; for `agent`: `{"command": [...], "env"?, "workdir"?, "timeout_s"?}`.
    #[schema(value_type = Object)]
    pub spec: Value,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// When and how often to try again: `{"max_attempts"?: 1..20, "on"?: ["lost", "failure",
    /// "timeout"], "initial_backoff_s"?, "max_backoff_s"?}`; by default 3 attempts, retried when
    /// lost, after 1 s, doubling up to 300 s.
    #[serde(default)]
    pub retry: Option<RetryBody>,
    /// Not started before this time (RFC 3339).
    #[serde(default)]
    pub run_at: Option<String>,
    /// Not started before this many seconds from now (instead of `run_at`).
    #[serde(default)]
    pub delay_s: Option<u64>,
    /// The spec as the request wrote it, when it must be kept so (a `semantic_diff` job's
    /// documents: see [`keep_documents_as_written`]); else the job stores `spec`'s text. Never
    /// read from the body.
    #[serde(skip)]
    #[schema(ignore)]
    pub spec_text: Option<shoal_protocol::JsonText>,
}

/// For a `semantic_diff` job: its spec with `baseline` and `candidate` cut out of the request's
/// own text (`raw_job`, the enqueue body or its entry in a batch), so that their numbers reach
/// the engine as written. `req.spec` is a `serde_json::Value`, which rounds every number beyond
/// a double or a 64-bit integer (`12345678901234567890123` and `...124` would be equal there).
/// The options come from `req.spec` (whole floats already made integers). Any other kind, or a
/// spec this cannot read, keeps `req.spec`.
pub(crate) fn keep_documents_as_written(req: &mut Enqueue, raw_job: &[u8]) {
    use serde_json::value::RawValue;
    #[derive(Deserialize)]
    struct Job<'a> {
        #[serde(borrow)]
        spec: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Documents<'a> {
        #[serde(borrow)]
        baseline: &'a RawValue,
        #[serde(borrow)]
        candidate: &'a RawValue,
    }
    if req.kind != JobKind::SemanticDiff.as_str() {
        return;
    }
    let Ok(job) = serde_json::from_slice::<Job>(raw_job) else {
        return;
    };
    let Ok(docs) = serde_json::from_str::<Documents>(job.spec.get()) else {
        return;
    };
    let mut text = format!(
        r#"{{"baseline":{},"candidate":{}"#,
        docs.baseline.get(),
        docs.candidate.get()
    );
    if let Some(options) = req.spec.get("options") {
        text.push_str(r#","options":"#);
        text.push_str(&options.to_string());
    }
    text.push('}');
    req.spec_text = shoal_protocol::JsonText::from_text(text).ok();
}

/// A job's `retry`, every field optional.
#[derive(Deserialize, ToSchema, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// `lost`, `failure`, `timeout`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub on: Option<Vec<shoal_core::RetryOn>>,
    #[serde(default)]
    pub initial_backoff_s: Option<f64>,
    #[serde(default)]
    pub max_backoff_s: Option<f64>,
}

/// The longest a job may be delayed: a year.
pub(crate) const MAX_DELAY_S: u64 = 366 * 86_400;

/// The JSON Pointers of an enqueue body's integer fields (see `crate::error::whole_numbers`).
pub(crate) const ENQUEUE_INTEGERS: &[&str] = &[
    "/priority",
    "/max_attempts",
    "/timeout_s",
    "/delay_s",
    "/retry/max_attempts",
    "/spec/timeout_s",
    "/spec/options/max_nodes",
    "/spec/options/max_pairwise",
    "/spec/options/max_changes",
    "/spec/options/max_value_bytes",
    "/spec/options/max_result_bytes",
    "/spec/options/min_runs",
    "/spec/options/min_failing_streak",
];

/// Longest a job (or an agent command) may run: a week.
pub(crate) const MAX_TIMEOUT_S: u64 = 7 * 86_400;

/// Checks a job's spec against its kind, so a job that cannot run is refused at the door: the
/// kind's shape, then what the shape alone does not say (a command that names no program, text
/// with NUL that no process can take, an environment name no process can have, options whose
/// patterns or ranges are wrong).
fn validate_spec(kind: JobKind, spec: &Value) -> Result<(), ApiError> {
    let bad = |msg: String| ApiError::invalid("spec", msg);
    match kind {
        JobKind::Agent => {
            if !spec.is_object() {
                return Err(bad("agent spec must be an object".into()));
            }
            let s: shoal_protocol::AgentSpec = serde_json::from_value(spec.clone())
                .map_err(|e| bad(format!("agent spec: {e}")))?;
            if s.command.is_empty() || s.command[0].is_empty() {
                return Err(bad("agent spec: `command` must name a program".into()));
            }
            if let Some(i) = s.command.iter().position(|a| a.contains('\0')) {
                return Err(bad(format!(
                    "agent spec: `command[{i}]` contains a NUL character"
                )));
            }
            for (k, v) in &s.env {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(bad(format!(
                        "agent spec: environment name {k:?} must be non-empty, without `=` or NUL"
                    )));
                }
                if v.contains('\0') {
                    return Err(bad(format!(
                        "agent spec: the value of environment variable `{k}` contains a NUL character"
                    )));
                }
            }
            if let Some(w) = &s.workdir
                && (w.is_empty() || w.contains('\0'))
            {
                return Err(bad(
                    "agent spec: `workdir` must be a non-empty path without NUL".into(),
                ));
            }
            if let Some(t) = s.timeout_s
                && !(1..=MAX_TIMEOUT_S).contains(&t)
            {
                return Err(bad(format!(
                    "agent spec: `timeout_s` must be between 1 and {MAX_TIMEOUT_S}"
                )));
            }
        }
        JobKind::SemanticDiff => {
            let obj = spec
                .as_object()
                .ok_or_else(|| bad("semantic_diff spec must be an object".into()))?;
            for k in ["baseline", "candidate"] {
                if !obj.contains_key(k) {
                    return Err(bad(format!("semantic_diff spec: missing `{k}`")));
                }
            }
            if let Some(k) = obj
                .keys()
                .find(|k| !["baseline", "candidate", "options"].contains(&k.as_str()))
            {
                return Err(bad(format!("semantic_diff spec: unknown field `{k}`")));
            }
            match obj.get("options") {
                None | Some(Value::Null) => {}
                Some(o) if !o.is_object() => {
                    return Err(bad("semantic_diff options must be an object".into()));
                }
                Some(o) => shoal_semdiff::Options::from_value(o)
                    .and_then(|o| o.check())
                    .map_err(|e| bad(format!("semantic_diff {e}")))?,
            }
        }
        JobKind::FlakyAnalysis => {
            let obj = spec
                .as_object()
                .ok_or_else(|| bad("flaky_analysis spec must be an object".into()))?;
            if let Some(o) = obj.get("options")
                && !(o.is_object() || o.is_null())
            {
                return Err(bad("flaky_analysis options must be an object".into()));
            }
            shoal_flaky::parse_spec(spec).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(())
}

/// An enqueue body's fields, each checked against its range.
pub(crate) struct Checked {
    pub kind: JobKind,
    pub priority: i32,
    pub timeout_s: u64,
    pub retry: shoal_core::RetryPolicy,
    pub run_at: Option<Millis>,
}

impl Checked {
    /// The job to store.
    pub fn into_job(
        self,
        tenant: &str,
        spec: shoal_protocol::JsonText,
        idempotency_key: Option<String>,
        now: Millis,
        schedule: Option<String>,
    ) -> NewJob {
        NewJob {
            id: new_job_id(),
            tenant: tenant.to_string(),
            kind: self.kind.as_str().to_string(),
            spec,
            idempotency_key,
            priority: self.priority,
            max_attempts: self.retry.max_attempts,
            timeout_s: self.timeout_s,
            created_at: now,
            run_at: self.run_at,
            retry: self.retry,
            schedule,
        }
    }
}

/// Checks an enqueue body at `now`: its kind and spec, idempotency key, attempts and retry
/// policy, timeout, priority and start time.
pub(crate) fn check(req: &Enqueue, now: Millis) -> Result<Checked, ApiError> {
    let kind: JobKind = req.kind.parse().map_err(|e| {
        ApiError::invalid(
            "kind",
            format!("{e}: agent, semantic_diff or flaky_analysis"),
        )
    })?;
    validate_spec(kind, &req.spec)?;
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.chars().count() > 255 || k.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "idempotency_key",
            "must be 1-255 characters without control characters (NUL, newlines, ...)",
        ));
    }
    if let Some(n) = req.max_attempts
        && !(1..=100).contains(&n)
    {
        return Err(ApiError::invalid(
            "max_attempts",
            "must be between 1 and 100",
        ));
    }
    let body = req.retry.clone().unwrap_or_default();
    if let (Some(a), Some(b)) = (req.max_attempts, body.max_attempts)
        && a != b
    {
        return Err(ApiError::invalid(
            "retry.max_attempts",
            "differs from max_attempts (they are the same setting: give one)",
        ));
    }
    let d = shoal_core::RetryPolicy::default();
    let retry = shoal_core::RetryPolicy {
        max_attempts: body
            .max_attempts
            .or(req.max_attempts)
            .unwrap_or(d.max_attempts),
        on: body.on.unwrap_or(d.on),
        initial_backoff_s: body.initial_backoff_s.unwrap_or(d.initial_backoff_s),
        max_backoff_s: body
            .max_backoff_s
            .unwrap_or_else(|| d.max_backoff_s.max(body.initial_backoff_s.unwrap_or(0.0))),
    };
    // `max_attempts` alone keeps its older range; a retry policy's is 1..20.
    if req.retry.is_some() || retry.max_attempts <= shoal_core::retry::MAX_RETRY_ATTEMPTS {
        retry
            .check()
            .map_err(|e| ApiError::invalid(format!("retry.{}", e.field), e.message))?;
    }
    let timeout_s = req.timeout_s.unwrap_or(3600);
    if !(1..=MAX_TIMEOUT_S).contains(&timeout_s) {
        return Err(ApiError::invalid(
            "timeout_s",
            format!("must be between 1 and {MAX_TIMEOUT_S}"),
        ));
    }
    let priority = req.priority.unwrap_or(0);
    if !(-1000..=1000).contains(&priority) {
        return Err(ApiError::invalid(
            "priority",
            "must be between -1000 and 1000",
        ));
    }
    let run_at = match (&req.run_at, req.delay_s) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "delay_s",
                "give `run_at` or `delay_s`, not both",
            ));
        }
        (Some(t), None) => {
            let at = views::parse_rfc3339(t).ok_or_else(|| {
                ApiError::invalid(
                    "run_at",
                    "must be an RFC 3339 time such as 2026-01-02T03:04:05Z",
                )
            })?;
            if at > now.saturating_add(MAX_DELAY_S as Millis * 1000) {
                return Err(ApiError::invalid(
                    "run_at",
                    "must be within a year from now",
                ));
            }
            Some(at)
        }
        (None, Some(s)) => {
            if s > MAX_DELAY_S {
                return Err(ApiError::invalid(
                    "delay_s",
                    format!("must be between 0 and {MAX_DELAY_S}"),
                ));
            }
            Some(now + s as Millis * 1000)
        }
        (None, None) => None,
    };
    Ok(Checked {
        kind,
        priority,
        timeout_s,
        retry,
        run_at,
    })
}

/// What admitting a job did.
pub enum Admission {
    Created(shoal_store::JobRecord),
    /// Its idempotency key was seen before: the first job.
    Existing(shoal_store::JobRecord),
}

/// Admission, the same for every way in (`POST /v1/jobs`, the ingress queue): validation, the
/// tenant's enqueue rate and monthly quota, idempotency, then the job is durable, recorded in the
/// audit log as `actor`'s.
pub async fn admit(app: &App, req: Enqueue, actor: &Actor) -> Result<Admission, ApiError> {
    use tracing::Instrument;
    // The id comes first, so the span joins the job's trace before it starts (an idempotent
    // replay records the existing job's id instead).
    let id = new_job_id();
    let span = tracing::info_span!("admission", tenant = %req.tenant, kind = %req.kind, job = %id);
    crate::telemetry::join_job_trace(&span, &id);
    admit_as(app, req, actor, id).instrument(span).await
}

/// A fresh job id: `job_` and a UUIDv7 (time-ordered).
pub fn new_job_id() -> String {
    format!("job_{}", uuid::Uuid::now_v7().simple())
}

async fn admit_as(
    app: &App,
    req: Enqueue,
    actor: &Actor,
    id: String,
) -> Result<Admission, ApiError> {
    let now = now_ms();
    let ready = prepare(app, req, id, now, &mut Tenants::default()).await?;
    let period = shoal_metering::month_of(now);
    let admitted = app
        .store
        .admit(ready.job, period.0, ready.meta.limit, actor)
        .await?;
    let out = settle(app, &ready.meta, admitted, now);
    if let Ok(Admission::Created(job)) = &out {
        tracing::Span::current().record("job", job.id.as_str());
    }
    out
}

/// Most jobs one `POST /v1/jobs/batch` takes.
pub const MAX_BATCH: usize = 1000;

/// Admits a batch: each job under every rule of [`admit`] (validation, rate, budget, quota,
/// idempotency), all that pass the rules before the store in one store transaction
/// (`Store::admit_batch`). One answer per job, in order; a job refused does not stop the others.
pub async fn admit_batch(
    app: &App,
    reqs: Vec<Result<Enqueue, ApiError>>,
    actor: &Actor,
) -> Result<Vec<Result<Admission, ApiError>>, ApiError> {
    use tracing::Instrument;
    let span = tracing::info_span!("admission_batch", jobs = reqs.len());
    async move {
        let now = now_ms();
        let mut tenants = Tenants::default();
        let mut out: Vec<Option<Result<Admission, ApiError>>> = Vec::with_capacity(reqs.len());
        let mut ready = Vec::new();
        for (i, req) in reqs.into_iter().enumerate() {
            let prepared = match req {
                Ok(req) => prepare(app, req, new_job_id(), now, &mut tenants).await,
                Err(e) => Err(e),
            };
            match prepared {
                Ok(r) => {
                    ready.push((i, r));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let period = shoal_metering::month_of(now);
        let mut metas = Vec::with_capacity(ready.len());
        let mut jobs = Vec::with_capacity(ready.len());
        for (i, r) in ready {
            jobs.push((r.job, r.meta.limit));
            metas.push((i, r.meta));
        }
        let admitted = app.store.admit_batch(jobs, period.0, actor).await?;
        for ((i, meta), a) in metas.iter().zip(admitted) {
            out[*i] = Some(settle(app, meta, a, now));
        }
        Ok(out.into_iter().flatten().collect())
    }
    .instrument(span)
    .await
}

/// What one admission (or one batch) learnt of each tenant it met: the tenant, or why its jobs
/// are refused; and its budget's refusal, if any, once asked.
#[derive(Default)]
struct Tenants {
    found: std::collections::HashMap<String, Result<shoal_store::TenantRecord, ApiError>>,
    budget: std::collections::HashMap<String, Option<ApiError>>,
}

/// A job past every rule that comes before the store.
struct Ready {
    job: NewJob,
    meta: Meta,
}

/// What [`settle`] needs of an admitted job: its tenant, kind and the tenant's monthly quota.
struct Meta {
    tenant: String,
    kind: JobKind,
    limit: Option<u64>,
}

/// The rules before the store, in order: validation, the tenant, its rate, its budget.
async fn prepare(
    app: &App,
    req: Enqueue,
    id: String,
    now: Millis,
    tenants: &mut Tenants,
) -> Result<Ready, ApiError> {
    let checked = check(&req, now)?;
    if !tenants.found.contains_key(&req.tenant) {
        let found = app
            .store
            .tenant(&req.tenant)
            .await?
            .ok_or_else(|| ApiError::not_found("tenant", &req.tenant).field("tenant"));
        tenants.found.insert(req.tenant.clone(), found);
    }
    let tenant = match &tenants.found[&req.tenant] {
        Ok(t) => t.clone(),
        Err(e) => return Err(e.clone()),
    };
    let limits = tenant.limits();
    let label = app.metrics.tenant(&tenant.id);
    let refuse = |e: ApiError| {
        app.metrics
            .rejected
            .with_label_values(&[label, e.code])
            .inc();
        e
    };
    rate(app, &tenant.id, &limits).await.map_err(refuse)?;
    if !tenants.budget.contains_key(&tenant.id) {
        let b = budget(app, &tenant.id, &limits, now).await?;
        tenants.budget.insert(tenant.id.clone(), b);
    }
    if let Some(e) = &tenants.budget[&tenant.id] {
        return Err(refuse(e.clone()));
    }
    let kind = checked.kind;
    let spec = match req.spec_text {
        Some(text) => text,
        None => shoal_protocol::JsonText::from(&req.spec),
    };
    let mut job = checked.into_job(&tenant.id, spec, req.idempotency_key, now, None);
    job.id = id;
    Ok(Ready {
        job,
        meta: Meta {
            tenant: tenant.id,
            kind,
            limit: limits.jobs_per_month,
        },
    })
}

/// What the store's answer means for the caller, with the metrics, the warnings and the wake-up
/// of a job created.
fn settle(app: &App, meta: &Meta, admitted: Admitted, now: Millis) -> Result<Admission, ApiError> {
    let tenant = meta.tenant.as_str();
    let label = app.metrics.tenant(tenant);
    match admitted {
        Admitted::Existing(job) => Ok(Admission::Existing(job)),
        Admitted::QuotaExceeded { used, limit } => {
            let e = quota_refusal(tenant, used, limit, now);
            app.metrics
                .rejected
                .with_label_values(&[label, e.code])
                .inc();
            Err(e)
        }
        Admitted::Created {
            job,
            period_jobs,
            signals,
        } => {
            app.metrics
                .jobs_enqueued
                .with_label_values(&[label, meta.kind.as_str()])
                .inc();
            // The signals' events were written with the job (see `Store::admit`).
            for signal in signals {
                if signal == shoal_store::QuotaSignal::Warning {
                    app.metrics.quota_warnings.with_label_values(&[label]).inc();
                }
                tracing::warn!(tenant = %tenant, jobs = period_jobs, quota = ?meta.limit, signal = signal.topic(), "tenant reached a monthly quota threshold");
            }
            // A job waiting for its time is not waiting for a sandbox yet.
            if job.run_at.is_none_or(|at| at <= now) {
                app.waiting_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(tenant.to_string())
                    .or_insert_with(std::time::Instant::now);
            }
            app.work_changed(tenant);
            Ok(Admission::Created(job))
        }
    }
}

/// The rate rule: the tenant's enqueue rate (a token bucket of `enqueue_rate_per_s` and
/// `enqueue_burst`), else 429 `rate_limited` with the wait as `Retry-After`. Applies to callers
/// (`POST /v1/jobs`, the ingress queue); a schedule's rate is its cron pattern.
pub(crate) async fn rate(app: &App, tenant: &str, limits: &Limits) -> Result<(), ApiError> {
    let Err(wait) = app
        .rates
        .acquire(tenant, limits.enqueue_rate_per_s, limits.enqueue_burst)
        .await
    else {
        return Ok(());
    };
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("tenant `{tenant}` is over its enqueue rate; retry after {wait:?}"),
    );
    e.retry_after_s = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    Err(e)
}

/// The budget rule: with `on_budget_exceeded = "block"`, a tenant that has spent its
/// `monthly_budget` this month gets no new job until the month ends. `Some` is the refusal (429
/// `budget_exceeded`, `Retry-After` the month's end); every way in applies it, schedule fires
/// included.
pub(crate) async fn budget(
    app: &App,
    tenant: &str,
    limits: &Limits,
    now: Millis,
) -> Result<Option<ApiError>, shoal_store::StoreError> {
    if limits.on_budget_exceeded != shoal_core::BudgetAction::Block {
        return Ok(None);
    }
    let Some(budget) = limits.monthly_budget else {
        return Ok(None);
    };
    let Some(spent) = crate::budget::spent(app, tenant, now).await? else {
        return Ok(None);
    };
    if !crate::budget::blocks(limits, spent) {
        return Ok(None);
    }
    let period = shoal_metering::month_of(now);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "budget_exceeded",
        format!(
            "tenant `{tenant}` has spent {spent:.4} {} of its monthly budget of {budget}; new jobs are refused until {}",
            app.cfg.prices.currency,
            views::rfc3339(period.1)
        ),
    );
    e.retry_after_s = Some(until_month_end(now));
    Ok(Some(e))
}

/// The quota rule's refusal (the store counts and refuses, in the admitting transaction): 429
/// `quota_exceeded`, `Retry-After` the month's end.
pub(crate) fn quota_refusal(tenant: &str, used: u64, limit: u64, now: Millis) -> ApiError {
    let period = shoal_metering::month_of(now);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        format!(
            "tenant `{tenant}` has used its {limit} jobs this month ({used} admitted); the quota resets at {}",
            views::rfc3339(period.1)
        ),
    );
    e.retry_after_s = Some(until_month_end(now));
    e
}

/// Whole seconds (at least 1) from `now` to the end of its month.
fn until_month_end(now: Millis) -> u64 {
    let end = shoal_metering::month_of(now).1;
    (end.saturating_sub(now) / 1000).max(1) as u64
}
