//! The HTTP API v1 (docs/api.md): tenants and keys, jobs, pools, usage, health, metrics, and the
//! agents' `/v1/agent/*` endpoints. Each handler carries its `#[utoipa::path]`, and `routes` mounts
//! it with that same attribute, so `/openapi.json` lists exactly what is served.

use crate::auth::{Agent, COOKIE, Caller};
use crate::error::{ApiError, Body, OptionalBody, RawBody};
use crate::jobwatch::Pulse;
use crate::openapi::{ApiDoc, ErrorBody};
use crate::state::{App, hash_token, new_token, now_ms};
use crate::views::{
    self, Accepted, CompletedView, EventList, JobPage, JobView, KeyList, NewKey, PlanView,
    PoolList, PoolView, SandboxCounts, TenantList, TenantView,
};
use crate::{dashboard, joblive, live, usage};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use shoal_core::audit::Actor;
use shoal_core::limits::ObjectOnly;
use shoal_core::{JobKind, JobState, Limits, LimitsPatch, Millis, PlanTier, SandboxState};
use shoal_protocol::{
    Assignment, Completion, Heartbeat, HeartbeatResponse, LeaseRequest, LeaseResponse, Outcome,
};
use shoal_store::{Admitted, Completed, Finish, JobFilter, Lease, LeasePolicy, NewJob};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
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
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(drain))
        .routes(routes!(enqueue, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(joblive::logs))
        .routes(routes!(cancel_job))
        .routes(routes!(pools))
        .routes(routes!(pool))
        .routes(routes!(events))
        .routes(routes!(dry_run_plan))
        .routes(routes!(usage::usage))
        .routes(routes!(crate::usagefeed::usage_events))
        .routes(routes!(live::overview))
        .routes(routes!(live::history))
        .routes(routes!(live::stream))
        .routes(routes!(crate::webhooks::create, crate::webhooks::list))
        .routes(routes!(crate::webhooks::delete))
        .routes(routes!(crate::webhooks::deliveries))
        .routes(routes!(crate::audit::list))
        .routes(routes!(crate::schedules::put, crate::schedules::delete))
        .routes(routes!(crate::schedules::list))
        .routes(routes!(agent_lease))
        .routes(routes!(agent_heartbeat))
        .routes(routes!(agent_complete))
        .routes(routes!(joblive::agent_log))
}

pub fn router(app: Arc<App>) -> Router {
    let (router, doc) = routes().split_for_parts();
    let doc = Arc::new(
        serde_json::to_string_pretty(&crate::openapi::finish(doc)).unwrap_or_else(|_| "{}".into()),
    );
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
        .layer(axum::middleware::from_fn(crate::guard::layer))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::metrics::http_layer,
        ))
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

/// Prometheus metrics, text exposition format 0.0.4. Open by default; with `metrics_token` (or
/// `metrics_auth = true`) set, a bearer token is required (docs/operators.md).
#[utoipa::path(get, path = "/metrics", tag = "health", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "metrics", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "a token is required and was not given", body = ErrorBody),
    ))]
async fn metrics(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Response {
    if let Err(e) = metrics_allowed(&app, &headers).await {
        return e.into_response();
    }
    app.metrics.job_watchers.set(app.jobs.watchers());
    let mut r = app.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Whether `/metrics` may answer this request: always when it is open, else for the metrics token
/// or the admin token.
async fn metrics_allowed(app: &App, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let cfg = &app.cfg;
    if cfg.metrics_token.is_none() && !cfg.metrics_auth {
        return Ok(());
    }
    let token = crate::auth::bearer_token(headers).ok_or_else(ApiError::unauthorized)?;
    let by_metrics_token = cfg
        .metrics_token
        .as_deref()
        .is_some_and(|t| crate::auth::constant_time_eq(&token, t));
    if by_metrics_token || crate::auth::authenticate(app, &token).await? == Some(Caller::Admin) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
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
    /// (`{"cpus", "memory_mb"}`), `monthly_budget` (in the `[prices]` currency),
    /// `on_budget_exceeded` (`notify` or `block`); `null` is unlimited.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    limits: Option<ObjectOnly<LimitsPatch>>,
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
    Body(req): Body<Value>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let req: PutTenant = crate::error::parse_object_with(
        req,
        &[
            "/limits/max_sandboxes",
            "/limits/max_concurrent_jobs",
            "/limits/jobs_per_month",
            "/limits/enqueue_burst",
            "/limits/min_warm",
            "/limits/idle_timeout_s",
            "/limits/sandbox_size/memory_mb",
        ],
    )?;
    valid_tenant_id(&id)?;
    let plan: PlanTier = req
        .plan
        .parse()
        .map_err(|e| ApiError::invalid("plan", format!("{e}: free, pro, team or enterprise")))?;
    let patch = req.limits.map(|l| l.0).unwrap_or_default();
    if let Some(e) = Limits::resolve(plan, &patch).validate().into_iter().next() {
        return Err(ApiError::invalid(
            format!("limits.{}", e.field),
            e.to_string(),
        ));
    }
    // On a host whose sandboxes are not isolated, a second tenant would share them with the
    // first: refused unless the operator said `--insecure-shared-host`.
    let _gate = app.tenant_gate.lock().await;
    if let Some(warning) = app.shared_host_refusal() {
        let others = app.store.tenants().await?;
        if others.iter().any(|t| t.id != id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "insecure_shared_host",
                format!(
                    "this scheduler admits one tenant only: {warning} (start it with \
                     --insecure-shared-host to admit more anyway)"
                ),
            ));
        }
    }
    let (t, created) = app
        .store
        .put_tenant(&id, plan, &patch, now_ms(), &caller.actor())
        .await?;
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

/// A new API key for the tenant, shown once (admin). The body, if any, is ignored.
#[utoipa::path(post, path = "/v1/tenants/{id}/keys", tag = "tenants",
    params(("id" = String, Path)),
    responses(
        (status = 201, body = NewKey),
        (status = 403, description = "not the admin", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
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
    let key_id = format!("key_{}", uuid::Uuid::now_v7().simple());
    app.store
        .add_key(&id, &key_id, &hash_token(&key), now_ms(), &caller.actor())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewKey {
            id: key_id,
            tenant: id,
            key,
        }),
    )
        .into_response())
}

/// The tenant's API keys, oldest first: ids and times, never a key (the admin, or the tenant's
/// own key).
#[utoipa::path(get, path = "/v1/tenants/{id}/keys", tag = "tenants",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = KeyList),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn list_keys(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyList>, ApiError> {
    let t = visible_tenant(&app, &caller, &id).await?;
    let keys = app.store.keys(&t.id).await?;
    Ok(Json(KeyList {
        keys: keys.iter().map(views::key).collect(),
    }))
}

/// Revokes one of the tenant's keys, at once on every replica (the admin, or the tenant's own
/// key).
#[utoipa::path(delete, path = "/v1/tenants/{id}/keys/{key_id}", tag = "tenants",
    params(("id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 204, description = "revoked"),
        (status = 403, body = ErrorBody),
        (status = 404, description = "no such tenant, or no such key of it", body = ErrorBody),
    ))]
async fn revoke_key(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let t = visible_tenant(&app, &caller, &id).await?;
    if app
        .store
        .revoke_key(&t.id, &key_id, now_ms(), &caller.actor())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("key", &key_id))
    }
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
    responses(
        (status = 200, body = TenantView),
        (status = 400, description = "not an object `{\"draining\"?}`", body = ErrorBody),
        (status = 403, description = "not the admin", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ))]
async fn drain(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalBody(req): OptionalBody<DrainReq>,
) -> Result<Json<TenantView>, ApiError> {
    caller.require_admin()?;
    let draining = req.is_none_or(|r| r.draining);
    if !app
        .store
        .set_draining(&id, draining, now_ms(), &caller.actor())
        .await?
    {
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

/// Admits a job for a tenant.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body = Enqueue,
    responses(
        (status = 202, description = "admitted", body = Accepted),
        (status = 200, description = "the idempotency key was seen: the first job", body = JobView),
        (status = 400, body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody),
        (status = 429, description = "`rate_limited`, `quota_exceeded` or `budget_exceeded`, with Retry-After", body = ErrorBody),
    ))]
async fn enqueue(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(req): Body<Value>,
) -> Result<Response, ApiError> {
    let req: Enqueue = crate::error::parse_object_with(req, ENQUEUE_INTEGERS)?;
    caller.check_tenant(&req.tenant)?;
    if app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    match admit(&app, req, &caller.actor()).await? {
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
        spec: Value,
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
    let checked = check(&req, now)?;
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
    let period = shoal_metering::month_of(now);
    if limits.on_budget_exceeded == shoal_core::BudgetAction::Block
        && let Some(budget) = limits.monthly_budget
        && let Some(spent) = crate::budget::spent(app, &tenant.id, now).await?
        && crate::budget::blocks(&limits, spent)
    {
        app.metrics
            .rejected
            .with_label_values(&[label, "budget_exceeded"])
            .inc();
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exceeded",
            format!(
                "tenant `{}` has spent {spent:.4} {} of its monthly budget of {budget}; new jobs are refused until {}",
                tenant.id,
                app.cfg.prices.currency,
                views::rfc3339(period.1)
            ),
        );
        e.retry_after_s = Some(((period.1 - now) / 1000).max(1) as u64);
        return Err(e);
    }
    let kind = checked.kind;
    let mut new = checked.into_job(&tenant.id, req.spec, req.idempotency_key, now, None);
    new.id = id;
    match app
        .store
        .admit(new, period.0, limits.jobs_per_month, actor)
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
            // A job waiting for its time is not waiting for a sandbox yet.
            if job.run_at.is_none_or(|at| at <= now) {
                app.waiting_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(tenant.id.clone())
                    .or_insert_with(std::time::Instant::now);
            }
            app.work_changed(&tenant.id);
            tracing::Span::current().record("job", job.id.as_str());
            Ok(Admission::Created(job))
        }
    }
}

/// The tenant `id` if the caller's key reaches it (403 otherwise, 404 when there is none).
pub(crate) async fn visible_tenant(
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

/// The tenant a query is about: the one it names (which the caller must be allowed to see, and
/// which must exist, else 403 or 404 naming `tenant`), else a tenant key's own, else none (the
/// admin asking about every tenant).
pub(crate) async fn scoped_tenant(
    app: &App,
    caller: &Caller,
    requested: Option<&str>,
) -> Result<Option<String>, ApiError> {
    match requested {
        Some(t) => Ok(Some(
            visible_tenant(app, caller, t)
                .await
                .map_err(|e| e.field("tenant"))?
                .id,
        )),
        None => Ok(caller.tenant().map(str::to_string)),
    }
}

/// The job `id` if the caller may see it. A tenant key learns nothing of other tenants' jobs, not
/// even that they exist: those are "not found" too.
pub(crate) async fn visible_job(
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

/// The query of `GET /v1/jobs/{id}`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetJob {
    /// Wait up to this many seconds (a whole number from 0 to 60) for the job to end: the answer
    /// comes as soon as it has ended, else after `wait_s` with the job as it is then.
    #[param(value_type = Option<u32>, minimum = 0, maximum = 60)]
    wait_s: Option<String>,
}

/// A job, with its result once it has one; with `wait_s`, once it has ended (or `wait_s` passed).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path), GetJob),
    responses(
        (status = 200, body = JobView),
        (status = 400, description = "`wait_s` is not 0 to 60", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn get_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<GetJob>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobView>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    let wait = joblive::parse_wait_s(q.wait_s.as_deref())?;
    let job = visible_job(&app, &caller, &id).await?;
    let job = joblive::wait_for_end(&app, job, wait).await?;
    Ok(Json(views::job(&job)))
}

/// Most bytes of results and errors one page of `GET /v1/jobs` carries: 8 MiB. A page stops
/// before the job that would pass it (it always holds one), and `next_cursor` goes on from there.
pub const LIST_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// Filters and paging of `GET /v1/jobs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobs {
    tenant: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `dead`.
    state: Option<String>,
    /// 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
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

/// A page of jobs, newest first: at most `limit` jobs, and no more than 8 MiB of results (a page
/// stops before the job that would pass that, holding at least one); `next_cursor` continues.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListJobs),
    responses(
        (status = 200, body = JobPage),
        (status = 400, body = ErrorBody),
        (status = 403, description = "a tenant key asking for another tenant", body = ErrorBody),
    ))]
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
    let page = app
        .store
        .job_page(
            &JobFilter {
                tenant,
                state,
                limit,
                before_seq,
            },
            LIST_MAX_BYTES,
        )
        .await?;
    let next = if page.more {
        page.jobs.last().map(|j| j.seq.to_string())
    } else {
        None
    };
    Ok(Json(JobPage {
        jobs: page.jobs.iter().map(views::job).collect(),
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
        .cancel(&id, now_ms(), &caller.actor())
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
    app.job_changed(&job.id, Pulse::State);
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
        .queue_counts(now_ms())
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
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// One tenant's events; without it (admin only) every tenant's.
    tenant: Option<String>,
    /// At most this many, newest first: 1 to 1000, 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Scaling actions and warnings, newest first.
#[utoipa::path(get, path = "/v1/events", tag = "pools", params(EventsQuery),
    responses(
        (status = 200, body = EventList),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody),
    ))]
async fn events(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    match &q.tenant {
        Some(t) => {
            visible_tenant(&app, &caller, t).await?;
        }
        None => caller.require_admin()?,
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let evs = app.store.events(q.tenant.as_deref(), limit).await?;
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
                // One short span per job handed out (not per poll: idle polls are not news).
                let lease_span = tracing::info_span!(
                    "lease",
                    tenant = %job.tenant,
                    sandbox = %sandbox.id,
                    job = %job.id,
                    attempt = job.attempts
                );
                crate::telemetry::join_job_trace(&lease_span, &job.id);
                crate::telemetry::link_sandbox_trace(&lease_span, &sandbox.id);
                let _lease = lease_span.entered();
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
                    log_max_bytes: Some(app.cfg.max_log_bytes),
                })));
            }
            Lease::Idle => {
                // A job that falls due before the deadline (delayed, scheduled or backing off)
                // is asked for again the moment it does.
                let due = app.store.next_due(&sandbox.tenant, now).await?;
                let wake = due.map_or(deadline, |at| {
                    let ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                    deadline.min(tokio::time::Instant::now() + Duration::from_millis(ms))
                });
                tokio::select! {
                    _ = &mut notified => continue,
                    _ = tokio::time::sleep_until(wake), if wake < deadline => continue,
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

/// The ids of a completion, read without the rest of it: serde skips the fields it does not need
/// without recursing, so they are read from a completion of any depth.
#[derive(Deserialize)]
struct CompletionIds {
    job_id: String,
    lease_id: String,
}

/// Bytes a completion may take beyond its result: the ids, the outcome and an error.
const COMPLETION_OVERHEAD: usize = 64 * 1024;

/// What to record of a completion's body: the outcome, or a failure `result_too_large` when the
/// body is over the result bounds of `shoal_protocol` (a result nests one level inside the body).
fn finish_of(body: &[u8]) -> Result<Finish, ApiError> {
    let depth = shoal_protocol::json_text_depth(body);
    let too_large = if body.len() > shoal_protocol::MAX_RESULT_BYTES + COMPLETION_OVERHEAD {
        Some(format!(
            "the completion is {} bytes, over the {} bytes a result may take",
            body.len(),
            shoal_protocol::MAX_RESULT_BYTES
        ))
    } else if depth > shoal_protocol::MAX_RESULT_DEPTH + 1 {
        Some(format!(
            "the result nests about {} levels deep, over the {} levels a result may take",
            depth - 1,
            shoal_protocol::MAX_RESULT_DEPTH
        ))
    } else {
        None
    };
    if let Some(message) = too_large {
        return Ok(Finish::Failed {
            result: None,
            error: serde_json::json!({"code": shoal_protocol::RESULT_TOO_LARGE, "message": message}),
        });
    }
    let c: Completion = crate::error::parse_object(body)?;
    Ok(match c.outcome {
        Outcome::Succeeded { result } => Finish::Succeeded { result },
        Outcome::Failed { result, error } => Finish::Failed {
            result,
            error: serde_json::to_value(error).unwrap_or_default(),
        },
        Outcome::Retry { error } => Finish::Retry {
            error: serde_json::to_value(error).unwrap_or_default(),
        },
    })
}

/// An agent reports how its job ended. A completion whose result is over the bounds (10 MiB of
/// JSON, 64 levels deep) is recorded as the job failing with `result_too_large`, at once: the
/// answer is final, so the agent does not retry it until the lease lapses.
#[utoipa::path(post, path = "/v1/agent/complete", tag = "agent", security(("bearer" = [])),
    request_body(content = Object, description = "`{\"job_id\", \"lease_id\", \"outcome\"}`"),
    responses(
        (status = 200, body = CompletedView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "the lease is not the job's current one", body = ErrorBody),
        (status = 413, body = ErrorBody),
    ))]
async fn agent_complete(
    State(app): State<Arc<App>>,
    Agent(sandbox): Agent,
    body: RawBody,
) -> Result<Response, ApiError> {
    let body = body.0;
    let ids: CompletionIds = serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not JSON: {e}"),
            )
        } else {
            crate::error::shape_error(&e.to_string())
        }
    })?;
    // The job is known before the span starts, so the span joins the job's trace.
    let span = tracing::info_span!(
        "completion",
        tenant = %sandbox.tenant,
        sandbox = %sandbox.id,
        job = %ids.job_id,
        state = tracing::field::Empty
    );
    crate::telemetry::join_job_trace(&span, &ids.job_id);
    async move {
        let finish = finish_of(&body)?;
        drop(body);
        let done = app
            .store
            .complete(&sandbox.id, &ids.job_id, &ids.lease_id, finish, now_ms())
            .await?;
        app.work_changed(&sandbox.tenant);
        match done {
            Completed::Done(job) => {
                tracing::Span::current().record("state", job.state.as_str());
                if job.state.is_terminal() {
                    tracing::info!(state = %job.state, attempts = job.attempts, "job finished");
                } else {
                    tracing::info!(state = %job.state, attempts = job.attempts, "job attempt ended; it goes back to the queue");
                }
                app.job_changed(&job.id, Pulse::State);
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
                ids.lease_id, ids.job_id
            ))
            .field("lease_id")),
        }
    }
    .instrument(span)
    .await
}

/// A token can be a cookie's value as it is: only the characters RFC 6265 allows there (no
/// space, quote, comma, semicolon or backslash), so nothing can add an attribute.
fn cookie_safe(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e))
}

/// `GET /?token=...`: sets the session cookie to `token` and redirects to `/`, when the token is
/// the admin token or a tenant's key (anything else is refused, so no one can plant a cookie).
pub async fn session_redirect(app: &App, token: &str) -> Result<Response, ApiError> {
    if crate::auth::authenticate(app, token).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is neither the admin token nor a tenant's key",
        )
        .field("token"));
    }
    if !cookie_safe(token) {
        return Err(ApiError::invalid(
            "token",
            "this token has characters a cookie cannot carry; use the API with `Authorization: Bearer` instead",
        ));
    }
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    let v = HeaderValue::from_str(&cookie).map_err(ApiError::internal)?;
    r.headers_mut().insert(header::SET_COOKIE, v);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_tokens_go_into_a_cookie() {
        assert!(cookie_safe("sha_0123abcd"));
        assert!(cookie_safe("test-admin-42"));
        for bad in ["", "a;Max-Age=9", "a b", "a,b", "a\"b", "a\\b", "é"] {
            assert!(!cookie_safe(bad), "{bad}");
        }
    }

    #[test]
    fn a_too_deep_or_too_large_completion_fails_its_job() {
        let deep = format!(
            r#"{{"job_id":"j","lease_id":"l","outcome":"succeeded","result":{}1{}}}"#,
            "[".repeat(125),
            "]".repeat(125)
        );
        let Finish::Failed {
            result: None,
            error,
        } = finish_of(deep.as_bytes()).unwrap()
        else {
            panic!("a deep result was recorded");
        };
        assert_eq!(error["code"], shoal_protocol::RESULT_TOO_LARGE);
        let ok = br#"{"job_id":"j","lease_id":"l","outcome":"succeeded","result":{"a":[[1]]}}"#;
        assert!(matches!(finish_of(ok).unwrap(), Finish::Succeeded { .. }));
    }
}
