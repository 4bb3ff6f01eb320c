//! The HTTP API v1 (see CONTRACT.md): tenants and keys, jobs, pools, usage, health, metrics, and the
//! agents' `/v1/agent/*` endpoints. Each handler carries its `#[utoipa::path]`, and `routes` mounts
//! it with that same attribute, so `/openapi.json` lists exactly what is served.

use crate::auth::{Agent, COOKIE, Caller};
use crate::error::{ApiError, Body};
use crate::openapi::{ApiDoc, ErrorBody};
use crate::state::{App, hash_token, new_token, now_ms};
use crate::views::{
    self, Accepted, CompletedView, EventList, JobPage, JobView, NewKey, PlanView, PoolList,
    PoolView, SandboxCounts, TenantList, TenantView,
};
use crate::{dashboard, live, usage};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use shoal_core::{JobKind, JobState, Limits, LimitsPatch, PlanTier, SandboxState};
use shoal_protocol::{
    Assignment, Completion, Heartbeat, HeartbeatResponse, LeaseRequest, LeaseResponse, Outcome,
};
use shoal_store::{Admitted, Completed, Finish, JobFilter, Lease, LeasePolicy, NewJob};
use std::sync::Arc;
use std::time::Duration;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body: 32 MiB.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// Every documented route, each mounted from its handler's own `#[utoipa::path]`.
pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dashboard::page))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(list_tenants))
        .routes(routes!(put_tenant, get_tenant))
        .routes(routes!(create_key))
        .routes(routes!(drain))
        .routes(routes!(enqueue, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(pools))
        .routes(routes!(pool))
        .routes(routes!(events))
        .routes(routes!(dry_run_plan))
        .routes(routes!(usage::usage))
        .routes(routes!(live::overview))
        .routes(routes!(live::history))
        .routes(routes!(live::stream))
        .routes(routes!(crate::webhooks::create, crate::webhooks::list))
        .routes(routes!(crate::webhooks::delete))
        .routes(routes!(crate::webhooks::deliveries))
        .routes(routes!(agent_lease))
        .routes(routes!(agent_heartbeat))
        .routes(routes!(agent_complete))
}

pub fn router(app: Arc<App>) -> Router {
    let (router, doc) = routes().split_for_parts();
    let doc = Arc::new(doc.to_pretty_json().unwrap_or_else(|_| "{}".into()));
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_string(),
                    )
                }
            }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Alive.
#[utoipa::path(get, path = "/healthz", tag = "health", security(),
    responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Ready: reconciled with the provider, the store answering, not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health", security(),
    responses(
        (status = 200, description = "ready", body = String, content_type = "text/plain"),
        (status = 503, description = "not ready", body = ErrorBody),
    ))]
async fn readyz(State(app): State<Arc<App>>) -> Result<&'static str, ApiError> {
    if app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    if !*app.ready.borrow() {
        return Err(ApiError::unavailable("reconciling with the provider"));
    }
    app.store.tenants().await?;
    Ok("ready")
}

/// Prometheus metrics, text exposition format 0.0.4.
#[utoipa::path(get, path = "/metrics", tag = "health", security(),
    responses((status = 200, description = "metrics", body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut r = app.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn valid_tenant_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "id",
            format!(
                "tenant id `{id}` must be 1-63 of a-z, 0-9, - and _, starting with a letter or digit"
            ),
        ))
    }
}

/// `PUT /v1/tenants/{id}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutTenant {
    /// `free`, `pro`, `team` or `enterprise`.
    #[schema(example = "pro")]
    plan: String,
    /// Overrides of the plan's limits: `max_sandboxes`, `max_concurrent_jobs`, `jobs_per_month`,
    /// `enqueue_rate_per_s`, `enqueue_burst`, `min_warm`, `idle_timeout_s`, `sandbox_size`
    /// (`{"cpus", "memory_mb"}`); `null` is unlimited.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    limits: Option<LimitsPatch>,
}

pub(crate) async fn tenant_view(
    app: &App,
    t: &shoal_store::TenantRecord,
) -> Result<TenantView, ApiError> {
    let period = shoal_metering::month_of(now_ms());
    let jobs = app.store.period_jobs(&t.id, period.0).await?;
    Ok(views::tenant(t, period, jobs))
}

/// Creates or updates a tenant (admin).
#[utoipa::path(put, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "1-63 of a-z, 0-9, - and _")),
    request_body = PutTenant,
    responses(
        (status = 201, description = "created", body = TenantView),
        (status = 200, description = "updated", body = TenantView),
        (status = 400, description = "invalid", body = ErrorBody),
        (status = 403, description = "not the admin", body = ErrorBody),
    ))]
async fn put_tenant(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PutTenant>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    valid_tenant_id(&id)?;
    let plan: PlanTier = req
        .plan
        .parse()
        .map_err(|e| ApiError::invalid("plan", format!("{e}: free, pro, team or enterprise")))?;
    let patch = req.limits.unwrap_or_default();
    if let Some(e) = Limits::resolve(plan, &patch).validate().into_iter().next() {
        return Err(ApiError::invalid(
            format!("limits.{}", e.field),
            e.to_string(),
        ));
    }
    let (t, created) = app.store.put_tenant(&id, plan, &patch, now_ms()).await?;
    app.kick.notify_one();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(tenant_view(&app, &t).await?)).into_response())
}

/// A tenant, its limits and this period's usage against its quota.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = TenantView),
        (status = 404, body = ErrorBody),
    ))]
async fn get_tenant(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let t = visible_tenant(&app, &caller, &id).await?;
    Ok(Json(tenant_view(&app, &t).await?))
}

/// The tenants the caller reaches.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = TenantList), (status = 401, body = ErrorBody)))]
async fn list_tenants(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<TenantList>, ApiError> {
    let mut out = Vec::new();
    for t in app.store.tenants().await? {
        if caller.check_tenant(&t.id).is_ok() {
            out.push(tenant_view(&app, &t).await?);
        }
    }
    Ok(Json(TenantList { tenants: out }))
}

/// A new API key for the tenant, shown once (admin).
#[utoipa::path(post, path = "/v1/tenants/{id}/keys", tag = "tenants",
    params(("id" = String, Path)),
    responses((status = 201, body = NewKey), (status = 404, body = ErrorBody)))]
async fn create_key(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    app.store
        .tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    let key = new_token("shk_");
    app.store.add_key(&id, &hash_token(&key), now_ms()).await?;
    Ok((StatusCode::CREATED, Json(NewKey { tenant: id, key })).into_response())
}

/// `POST /v1/tenants/{id}/drain`; an empty body drains.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainReq {
    /// `false` resumes the tenant.
    #[serde(default = "yes")]
    #[schema(default = true)]
    draining: bool,
}

fn yes() -> bool {
    true
}

/// Drains a tenant: its sandboxes get no new work and idle ones stop (admin).
#[utoipa::path(post, path = "/v1/tenants/{id}/drain", tag = "tenants",
    params(("id" = String, Path)),
    request_body(content = Option<DrainReq>, description = "optional; an empty body drains"),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)))]
async fn drain(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<TenantView>, ApiError> {
    caller.require_admin()?;
    let draining = if body.iter().all(u8::is_ascii_whitespace) {
        true
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not JSON: {e}"),
            )
        })?;
        serde_json::from_value::<DrainReq>(v)
            .map_err(|e| crate::error::shape_error(&e.to_string()))?
            .draining
    };
    if !app.store.set_draining(&id, draining, now_ms()).await? {
        return Err(ApiError::not_found("tenant", &id));
    }
    app.store
        .record_event(
            Some(&id),
            now_ms(),
            if draining { "drained" } else { "undrained" },
            &serde_json::json!({}),
        )
        .await?;
    app.work_changed(&id);
    let t = app
        .store
        .tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    Ok(Json(tenant_view(&app, &t).await?))
}

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
}

/// Checks a job's spec against its kind, so a job that cannot run is refused at the door.
fn validate_spec(kind: JobKind, spec: &Value) -> Result<(), ApiError> {
    let bad = |msg: String| ApiError::invalid("spec", msg);
    match kind {
        JobKind::Agent => {
            let s: shoal_protocol::AgentSpec = serde_json::from_value(spec.clone())
                .map_err(|e| bad(format!("agent spec: {e}")))?;
            if s.command.is_empty() || s.command[0].is_empty() {
                return Err(bad("agent spec: `command` must name a program".into()));
            }
            if s.timeout_s == Some(0) {
                return Err(bad("agent spec: `timeout_s` must be at least 1".into()));
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
            if let Some(o) = obj.get("options") {
                serde_json::from_value::<shoal_semdiff::Options>(o.clone())
                    .map_err(|e| bad(format!("semantic_diff options: {e}")))?;
            }
        }
        JobKind::FlakyAnalysis => {
            let obj = spec
                .as_object()
                .ok_or_else(|| bad("flaky_analysis spec must be an object".into()))?;
            let runs = obj
                .get("runs")
                .ok_or_else(|| bad("flaky_analysis spec: missing `runs`".into()))?;
            serde_json::from_value::<Vec<shoal_flaky::Run>>(runs.clone())
                .map_err(|e| bad(format!("flaky_analysis runs: {e}")))?;
            if let Some(k) = obj
                .keys()
                .find(|k| !["runs", "options"].contains(&k.as_str()))
            {
                return Err(bad(format!("flaky_analysis spec: unknown field `{k}`")));
            }
            if let Some(o) = obj.get("options") {
                serde_json::from_value::<shoal_flaky::Options>(o.clone())
                    .map_err(|e| bad(format!("flaky_analysis options: {e}")))?;
            }
        }
    }
    Ok(())
}

/// Admits a job for a tenant.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = Enqueue,
    responses(
        (status = 202, description = "admitted", body = Accepted),
        (status = 200, description = "the idempotency key was seen: the first job", body = JobView),
        (status = 400, body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody),
        (status = 429, description = "`rate_limited` or `quota_exceeded`, with Retry-After", body = ErrorBody),
    ))]
async fn enqueue(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(req): Body<Enqueue>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&req.tenant)?;
    if app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    match admit(&app, req).await? {
        Admission::Existing(job) => Ok((StatusCode::OK, Json(views::job(&job))).into_response()),
        Admission::Created(job) => Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                id: job.id,
                state: "queued".into(),
            }),
        )
            .into_response()),
    }
}

/// What admitting a job did.
pub enum Admission {
    Created(shoal_store::JobRecord),
    /// Its idempotency key was seen before: the first job.
    Existing(shoal_store::JobRecord),
}

/// Admission, the same for every way in (`POST /v1/jobs`, the ingress queue): validation, the
/// tenant's enqueue rate and monthly quota, idempotency, then the job is durable.
pub async fn admit(app: &App, req: Enqueue) -> Result<Admission, ApiError> {
    let kind: JobKind = req.kind.parse().map_err(|e| {
        ApiError::invalid(
            "kind",
            format!("{e}: agent, semantic_diff or flaky_analysis"),
        )
    })?;
    validate_spec(kind, &req.spec)?;
    if let Some(k) = &req.idempotency_key
        && (k.is_empty() || k.len() > 255)
    {
        return Err(ApiError::invalid(
            "idempotency_key",
            "must be 1-255 characters",
        ));
    }
    let max_attempts = req.max_attempts.unwrap_or(3);
    if !(1..=100).contains(&max_attempts) {
        return Err(ApiError::invalid(
            "max_attempts",
            "must be between 1 and 100",
        ));
    }
    let timeout_s = req.timeout_s.unwrap_or(3600);
    if !(1..=7 * 86_400).contains(&timeout_s) {
        return Err(ApiError::invalid(
            "timeout_s",
            "must be between 1 and 604800",
        ));
    }
    let priority = req.priority.unwrap_or(0);
    if !(-1000..=1000).contains(&priority) {
        return Err(ApiError::invalid(
            "priority",
            "must be between -1000 and 1000",
        ));
    }
    let tenant = app
        .store
        .tenant(&req.tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &req.tenant).field("tenant"))?;
    let limits = tenant.limits();
    let label = app.metrics.tenant(&tenant.id);
    if let Err(wait) = app
        .rates
        .acquire(&tenant.id, limits.enqueue_rate_per_s, limits.enqueue_burst)
        .await
    {
        app.metrics
            .rejected
            .with_label_values(&[label, "rate_limited"])
            .inc();
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "tenant `{}` is over its enqueue rate; retry after {wait:?}",
                tenant.id
            ),
        );
        e.retry_after_s = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        return Err(e);
    }
    let now = now_ms();
    let period = shoal_metering::month_of(now);
    let new = NewJob {
        id: format!("job_{}", uuid::Uuid::now_v7().simple()),
        tenant: tenant.id.clone(),
        kind: kind.as_str().to_string(),
        spec: req.spec,
        idempotency_key: req.idempotency_key,
        priority,
        max_attempts,
        timeout_s,
        created_at: now,
    };
    match app
        .store
        .admit(new, period.0, limits.jobs_per_month)
        .await?
    {
        Admitted::Existing(job) => Ok(Admission::Existing(job)),
        Admitted::QuotaExceeded { used, limit } => {
            app.metrics
                .rejected
                .with_label_values(&[label, "quota_exceeded"])
                .inc();
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!(
                    "tenant `{}` has used its {limit} jobs this month ({used} admitted); the quota resets at {}",
                    tenant.id,
                    views::rfc3339(period.1)
                ),
            );
            e.retry_after_s = Some(((period.1 - now) / 1000).max(1) as u64);
            Err(e)
        }
        Admitted::Created {
            job,
            period_jobs,
            signals,
        } => {
            app.metrics
                .jobs_enqueued
                .with_label_values(&[label, kind.as_str()])
                .inc();
            // The signals' events were written with the job (see `Store::admit`).
            for signal in signals {
                if signal == shoal_store::QuotaSignal::Warning {
                    app.metrics.quota_warnings.with_label_values(&[label]).inc();
                }
                tracing::warn!(tenant = %tenant.id, jobs = period_jobs, quota = ?limits.jobs_per_month, signal = signal.topic(), "tenant reached a monthly quota threshold");
            }
            app.waiting_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(tenant.id.clone())
                .or_insert_with(std::time::Instant::now);
            app.work_changed(&tenant.id);
            Ok(Admission::Created(job))
        }
    }
}

/// The tenant `id` if the caller's key reaches it (403 otherwise, 404 when there is none).
async fn visible_tenant(
    app: &App,
    caller: &Caller,
    id: &str,
) -> Result<shoal_store::TenantRecord, ApiError> {
    caller.check_tenant(id)?;
    app.store
        .tenant(id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", id))
}

/// The job `id` if the caller may see it. A tenant key learns nothing of other tenants' jobs, not
/// even that they exist: those are "not found" too.
async fn visible_job(
    app: &App,
    caller: &Caller,
    id: &str,
) -> Result<shoal_store::JobRecord, ApiError> {
    let job = app
        .store
        .job(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", id))?;
    caller
        .check_tenant(&job.tenant)
        .map_err(|_| ApiError::not_found("job", id))?;
    Ok(job)
}

/// A job, with its result once it has one.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = visible_job(&app, &caller, &id).await?;
    Ok(Json(views::job(&job)))
}

/// Filters and paging of `GET /v1/jobs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobs {
    tenant: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `dead`.
    state: Option<String>,
    /// 1 to 1000; 100 when absent.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page's `limit` (1 to 1000, 100 when absent) and the `seq` its `cursor` stands for.
pub(crate) fn page(
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<(u32, Option<i64>), ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let before = cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from a previous page"))
        })
        .transpose()?;
    Ok((limit, before))
}

/// A page of jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListJobs),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody)))]
async fn list_jobs(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<ListJobs>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    if let Some(t) = &q.tenant {
        caller.check_tenant(t)?;
    }
    let tenant = q.tenant.or_else(|| caller.tenant().map(str::to_string));
    let state = q
        .state
        .as_deref()
        .map(|s| {
            s.parse::<JobState>()
                .map_err(|e| ApiError::invalid("state", e.to_string()))
        })
        .transpose()?;
    let (limit, before_seq) = page(q.limit, q.cursor.as_deref())?;
    let jobs = app
        .store
        .jobs(&JobFilter {
            tenant,
            state,
            limit,
            before_seq,
        })
        .await?;
    let next = if jobs.len() == limit as usize {
        jobs.last().map(|j| j.seq.to_string())
    } else {
        None
    };
    Ok(Json(JobPage {
        jobs: jobs.iter().map(views::job).collect(),
        next_cursor: next,
    }))
}

/// Cancels a queued or running job.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = JobView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the job already succeeded or failed", body = ErrorBody),
    ))]
async fn cancel_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = visible_job(&app, &caller, &id).await?;
    if job.state.is_terminal() && job.state != JobState::Cancelled {
        return Err(ApiError::conflict(format!(
            "job `{id}` already {}",
            job.state
        )));
    }
    let was = job.state;
    let job = app
        .store
        .cancel(&id, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    // Counted once: cancelling a cancelled job again changes nothing.
    if was != JobState::Cancelled && job.state == JobState::Cancelled {
        app.metrics
            .jobs_finished
            .with_label_values(&[app.metrics.tenant(&job.tenant), "cancelled"])
            .inc();
    }
    app.work_changed(&job.tenant);
    Ok(Json(views::job(&job)))
}

/// One tenant's pool as the API shows it.
async fn pool_view(
    app: &App,
    t: &shoal_store::TenantRecord,
    with_sandboxes: bool,
) -> Result<PoolView, ApiError> {
    let counts = app
        .store
        .queue_counts()
        .await?
        .into_iter()
        .find(|(id, _)| id == &t.id)
        .map(|(_, c)| c)
        .unwrap_or_default();
    let sandboxes = app.store.sandboxes(Some(&t.id)).await?;
    let mut by_state = SandboxCounts::default();
    for s in &sandboxes {
        by_state.add(s.state);
    }
    let desired = app
        .desired
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&t.id)
        .copied()
        .unwrap_or(0);
    Ok(PoolView {
        tenant: t.id.clone(),
        plan: t.plan,
        draining: t.draining,
        desired,
        queued: counts.queued,
        running: counts.running,
        sandboxes: by_state,
        sandbox_list: with_sandboxes.then(|| sandboxes.iter().map(views::sandbox).collect()),
        events: None,
    })
}

/// Per tenant: sandboxes by state against desired, queued and running jobs.
#[utoipa::path(get, path = "/v1/pools", tag = "pools",
    responses((status = 200, body = PoolList), (status = 401, body = ErrorBody)))]
async fn pools(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<PoolList>, ApiError> {
    let mut out = Vec::new();
    for t in app.store.tenants().await? {
        if caller.check_tenant(&t.id).is_ok() {
            out.push(pool_view(&app, &t, false).await?);
        }
    }
    Ok(Json(PoolList { pools: out }))
}

/// One pool with each sandbox and the tenant's recent events.
#[utoipa::path(get, path = "/v1/pools/{tenant}", tag = "pools",
    params(("tenant" = String, Path)),
    responses((status = 200, body = PoolView), (status = 404, body = ErrorBody)))]
async fn pool(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<PoolView>, ApiError> {
    let t = visible_tenant(&app, &caller, &tenant).await?;
    // `sandboxes` keeps the counts, as in the list of pools; each sandbox is in `sandbox_list`
    // (docs/adr/0001).
    let mut v = pool_view(&app, &t, true).await?;
    v.events = Some(
        app.store
            .events(Some(&tenant), 50)
            .await?
            .iter()
            .map(views::event)
            .collect(),
    );
    Ok(Json(v))
}

/// Filters of `GET /v1/events`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// One tenant's events; without it (admin only) every tenant's.
    tenant: Option<String>,
    /// At most this many, newest first (100 when absent, at most 1000).
    limit: Option<u32>,
}

/// Scaling actions and warnings, newest first.
#[utoipa::path(get, path = "/v1/events", tag = "pools", params(EventsQuery),
    responses((status = 200, body = EventList), (status = 403, body = ErrorBody)))]
async fn events(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    if let Some(t) = &q.tenant {
        caller.check_tenant(t)?;
    } else {
        caller.require_admin()?;
    }
    let evs = app
        .store
        .events(q.tenant.as_deref(), q.limit.unwrap_or(100).min(1000))
        .await?;
    Ok(Json(EventList {
        events: evs.iter().map(views::event).collect(),
    }))
}

/// What the planner would do now, without doing it (admin).
#[utoipa::path(get, path = "/v1/plan", tag = "pools",
    responses((status = 200, body = PlanView), (status = 403, body = ErrorBody)))]
async fn dry_run_plan(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<PlanView>, ApiError> {
    caller.require_admin()?;
    let plan = crate::control::dry_run(&app).await?;
    Ok(Json(PlanView {
        dry_run: true,
        pools: plan.pools,
        steps: plan.steps,
    }))
}

// The agents' endpoints.

/// An agent asks for its sandbox's next job (long poll, at most 60 s).
#[utoipa::path(post, path = "/v1/agent/lease", tag = "agent", security(("bearer" = [])),
    request_body(content = Object, description = "`{\"wait_ms\"?}`"),
    responses(
        (status = 200, description = "`run` with an assignment, `idle` or `stop`", body = Object),
        (status = 401, body = ErrorBody),
    ))]
async fn agent_lease(
    State(app): State<Arc<App>>,
    Agent(sandbox): Agent,
    Body(req): Body<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(20_000).min(60_000));
    let deadline = tokio::time::Instant::now() + wait;
    let signal = app.tenant_signal(&sandbox.tenant);
    let mut shutdown = app.shutdown.subscribe();
    let mut was_booting = sandbox.state == SandboxState::Booting;
    loop {
        if app.is_shutting_down() {
            return Ok(Json(LeaseResponse::Stop));
        }
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let tenant = app.store.tenant(&sandbox.tenant).await?;
        let policy = LeasePolicy {
            max_concurrent_jobs: tenant.as_ref().and_then(|t| t.limits().max_concurrent_jobs),
            draining: tenant.as_ref().is_none_or(|t| t.draining),
            lease_ttl_ms: app.cfg.lease_ttl.as_millis() as i64,
        };
        let now = now_ms();
        let lease = app.store.lease(&sandbox.id, policy, now).await?;
        if was_booting {
            // The sandbox came up: the planner's view changed.
            app.metrics
                .boot_latency
                .with_label_values(&[app.provider.name()])
                .observe((now - sandbox.since).max(0) as f64 / 1000.0);
            app.kick.notify_one();
            was_booting = false;
        }
        match lease {
            Lease::Stop => return Ok(Json(LeaseResponse::Stop)),
            Lease::Job(job) => {
                let label = app.metrics.tenant(&job.tenant);
                app.metrics.jobs_started.with_label_values(&[label]).inc();
                if job.attempts == 1 {
                    app.metrics
                        .start_latency
                        .with_label_values(&[label])
                        .observe((now - job.created_at).max(0) as f64 / 1000.0);
                }
                app.kick.notify_one();
                let spec = serde_json::value::to_raw_value(&job.spec)
                    .expect("a stored spec is JSON and serialises")
                    .into();
                return Ok(Json(LeaseResponse::Run(Assignment {
                    job_id: job.id,
                    lease_id: job.lease_id.unwrap_or_default(),
                    kind: job.kind,
                    spec,
                    attempt: job.attempts,
                    timeout_s: job.timeout_s,
                    heartbeat_ms: app.cfg.heartbeat_interval.as_millis() as u64,
                })));
            }
            Lease::Idle => {
                tokio::select! {
                    _ = &mut notified => continue,
                    _ = tokio::time::sleep_until(deadline) => return Ok(Json(LeaseResponse::Idle)),
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Ok(Json(LeaseResponse::Stop)),
                }
            }
        }
    }
}

/// An agent extends its job's lease and learns of a cancel.
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agent", security(("bearer" = [])),
    request_body(content = Object, description = "`{\"job_id\", \"lease_id\"}`"),
    responses((status = 200, description = "`{\"ok\", \"cancel\"}`", body = Object), (status = 401, body = ErrorBody)))]
async fn agent_heartbeat(
    State(app): State<Arc<App>>,
    Agent(sandbox): Agent,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let job = app.store.job(&hb.job_id).await?;
    if job.as_ref().and_then(|j| j.sandbox_id.as_deref()) != Some(sandbox.id.as_str()) {
        return Ok(Json(HeartbeatResponse {
            ok: false,
            cancel: false,
        }));
    }
    let a = app
        .store
        .heartbeat(
            &hb.job_id,
            &hb.lease_id,
            app.cfg.lease_ttl.as_millis() as i64,
            now_ms(),
        )
        .await?;
    Ok(Json(HeartbeatResponse {
        ok: a.ok,
        cancel: a.cancel,
    }))
}

/// An agent reports how its job ended.
#[utoipa::path(post, path = "/v1/agent/complete", tag = "agent", security(("bearer" = [])),
    request_body(content = Object, description = "`{\"job_id\", \"lease_id\", \"outcome\"}`"),
    responses(
        (status = 200, body = CompletedView),
        (status = 409, description = "the lease is not the job's current one", body = ErrorBody),
    ))]
async fn agent_complete(
    State(app): State<Arc<App>>,
    Agent(sandbox): Agent,
    Body(c): Body<Completion>,
) -> Result<Response, ApiError> {
    let finish = match c.outcome {
        Outcome::Succeeded { result } => Finish::Succeeded { result },
        Outcome::Failed { result, error } => Finish::Failed {
            result,
            error: serde_json::to_value(error).unwrap_or_default(),
        },
        Outcome::Retry { error } => Finish::Retry {
            error: serde_json::to_value(error).unwrap_or_default(),
        },
    };
    let done = app
        .store
        .complete(&sandbox.id, &c.job_id, &c.lease_id, finish, now_ms())
        .await?;
    app.work_changed(&sandbox.tenant);
    match done {
        Completed::Done(job) => {
            if job.state.is_terminal() {
                app.metrics
                    .jobs_finished
                    .with_label_values(&[app.metrics.tenant(&job.tenant), job.state.as_str()])
                    .inc();
            }
            Ok(Json(CompletedView {
                id: job.id,
                state: job.state,
            })
            .into_response())
        }
        Completed::Stale => Err(ApiError::conflict(format!(
            "lease `{}` is not the current lease of job `{}`",
            c.lease_id, c.job_id
        ))
        .field("lease_id")),
    }
}

/// `GET /?token=...` sets the session cookie and redirects to `/`.
pub fn session_redirect(token: &str) -> Response {
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
