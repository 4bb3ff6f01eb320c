//! The HTTP API v1 (see CONTRACT.md): tenants and keys, jobs, pools, usage, health, metrics, and the
//! agents' `/v1/agent/*` endpoints.

use crate::auth::{Agent, COOKIE, Caller};
use crate::error::{ApiError, Body};
use crate::state::{App, hash_token, new_token, now_ms};
use crate::{dashboard, views};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use shoal_core::{JobKind, JobState, Limits, LimitsPatch, PlanTier, SandboxState};
use shoal_protocol::{
    Assignment, Completion, Heartbeat, HeartbeatResponse, LeaseRequest, LeaseResponse, Outcome,
};
use shoal_store::{Admitted, Completed, Finish, JobFilter, Lease, LeasePolicy, NewJob};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body: 32 MiB.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/tenants", get(list_tenants))
        .route("/v1/tenants/{id}", put(put_tenant).get(get_tenant))
        .route("/v1/tenants/{id}/keys", post(create_key))
        .route("/v1/tenants/{id}/drain", post(drain))
        .route("/v1/jobs", post(enqueue).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/pools", get(pools))
        .route("/v1/pools/{tenant}", get(pool))
        .route("/v1/events", get(events))
        .route("/v1/plan", get(dry_run_plan))
        .route("/v1/usage", get(crate::usage::usage))
        .route("/v1/agent/lease", post(agent_lease))
        .route("/v1/agent/heartbeat", post(agent_heartbeat))
        .route("/v1/agent/complete", post(agent_complete))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutTenant {
    plan: String,
    #[serde(default)]
    limits: Option<LimitsPatch>,
}

async fn tenant_view(app: &App, t: &shoal_store::TenantRecord) -> Result<Value, ApiError> {
    let period = shoal_metering::month_of(now_ms());
    let jobs = app.store.period_jobs(&t.id, period.0).await?;
    Ok(views::tenant(t, period, jobs))
}

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

async fn get_tenant(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.check_tenant(&id)?;
    let t = app
        .store
        .tenant(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    Ok(Json(tenant_view(&app, &t).await?))
}

async fn list_tenants(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for t in app.store.tenants().await? {
        if caller.check_tenant(&t.id).is_ok() {
            out.push(tenant_view(&app, &t).await?);
        }
    }
    Ok(Json(json!({ "tenants": out })))
}

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
    Ok((StatusCode::CREATED, Json(json!({"tenant": id, "key": key}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainReq {
    #[serde(default = "yes")]
    draining: bool,
}

fn yes() -> bool {
    true
}

async fn drain(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
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
            &json!({}),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enqueue {
    tenant: String,
    kind: String,
    spec: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout_s: Option<u64>,
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

async fn enqueue(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(req): Body<Enqueue>,
) -> Result<Response, ApiError> {
    caller.check_tenant(&req.tenant)?;
    if app.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
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
        .check(&tenant.id, limits.enqueue_rate_per_s, limits.enqueue_burst)
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
        Admitted::Existing(job) => Ok((StatusCode::OK, Json(views::job(&job))).into_response()),
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
        Admitted::Created { job, period_jobs } => {
            app.metrics
                .jobs_enqueued
                .with_label_values(&[label, kind.as_str()])
                .inc();
            if let Some(q) = limits.jobs_per_month
                && period_jobs * 5 >= q * 4
                && app
                    .store
                    .mark_quota_warned(&tenant.id, period.0, now)
                    .await?
            {
                app.metrics.quota_warnings.with_label_values(&[label]).inc();
                let detail = json!({"jobs": period_jobs, "quota": q, "period_start": views::rfc3339(period.0)});
                app.store
                    .record_event(Some(&tenant.id), now, "quota_warning", &detail)
                    .await?;
                tracing::warn!(tenant = %tenant.id, jobs = period_jobs, quota = q, "tenant passed 80% of its monthly quota");
            }
            app.waiting_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(tenant.id.clone())
                .or_insert_with(std::time::Instant::now);
            app.work_changed(&tenant.id);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"id": job.id, "state": "queued"})),
            )
                .into_response())
        }
    }
}

async fn get_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = app
        .store
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    // A tenant key learns nothing of other tenants' jobs, not even that they exist.
    caller
        .check_tenant(&job.tenant)
        .map_err(|_| ApiError::not_found("job", &id))?;
    Ok(Json(views::job(&job)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListJobs {
    tenant: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

async fn list_jobs(
    State(app): State<Arc<App>>,
    caller: Caller,
    q: Result<Query<ListJobs>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let before_seq = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from a previous page"))
        })
        .transpose()?;
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
    Ok(Json(
        json!({"jobs": jobs.iter().map(views::job).collect::<Vec<_>>(), "next_cursor": next}),
    ))
}

async fn cancel_job(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = app
        .store
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    caller
        .check_tenant(&job.tenant)
        .map_err(|_| ApiError::not_found("job", &id))?;
    if job.state.is_terminal() && job.state != JobState::Cancelled {
        return Err(ApiError::conflict(format!(
            "job `{id}` already {}",
            job.state
        )));
    }
    let job = app
        .store
        .cancel(&id, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("job", &id))?;
    if job.state == JobState::Cancelled && job.finished_at.is_some() {
        app.metrics
            .jobs_finished
            .with_label_values(&[app.metrics.tenant(&job.tenant), "cancelled"])
            .inc();
    }
    app.work_changed(&job.tenant);
    Ok(Json(views::job(&job)))
}

/// One tenant's pool as the API shows it.
async fn pool_view(app: &App, tenant: &str, with_sandboxes: bool) -> Result<Value, ApiError> {
    let counts = app
        .store
        .queue_counts()
        .await?
        .into_iter()
        .find(|(t, _)| t == tenant)
        .map(|(_, c)| c)
        .unwrap_or_default();
    let sandboxes = app.store.sandboxes(Some(tenant)).await?;
    let mut by_state = json!({"booting": 0, "ready": 0, "busy": 0, "suspended": 0, "stopped": 0});
    for s in &sandboxes {
        if let Some(b) = s.state.pool_bucket() {
            by_state[b] = json!(by_state[b].as_u64().unwrap_or(0) + 1);
        }
    }
    let desired = app
        .desired
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(tenant)
        .copied()
        .unwrap_or(0);
    let mut v = json!({
        "tenant": tenant,
        "desired": desired,
        "queued": counts.queued,
        "running": counts.running,
        "sandboxes": by_state,
    });
    if with_sandboxes {
        v["sandbox_list"] = json!(sandboxes.iter().map(views::sandbox).collect::<Vec<_>>());
    }
    Ok(v)
}

async fn pools(State(app): State<Arc<App>>, caller: Caller) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for t in app.store.tenants().await? {
        if caller.check_tenant(&t.id).is_ok() {
            let mut v = pool_view(&app, &t.id, false).await?;
            v["plan"] = json!(t.plan);
            v["draining"] = json!(t.draining);
            out.push(v);
        }
    }
    Ok(Json(json!({"pools": out})))
}

async fn pool(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.check_tenant(&tenant)?;
    let t = app
        .store
        .tenant(&tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &tenant))?;
    // `sandboxes` keeps the counts, as in the list of pools; each sandbox is in `sandbox_list`
    // (docs/adr/0001).
    let mut v = pool_view(&app, &tenant, true).await?;
    v["plan"] = json!(t.plan);
    v["draining"] = json!(t.draining);
    v["events"] = json!(
        app.store
            .events(Some(&tenant), 50)
            .await?
            .iter()
            .map(|e| json!({"at": views::rfc3339(e.at), "kind": e.kind, "detail": e.detail}))
            .collect::<Vec<_>>()
    );
    Ok(Json(v))
}

#[derive(Deserialize)]
struct EventsQuery {
    tenant: Option<String>,
    limit: Option<u32>,
}

async fn events(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(t) = &q.tenant {
        caller.check_tenant(t)?;
    } else {
        caller.require_admin()?;
    }
    let evs = app
        .store
        .events(q.tenant.as_deref(), q.limit.unwrap_or(100).min(1000))
        .await?;
    Ok(Json(
        json!({"events": evs.iter().map(|e| json!({"tenant": e.tenant, "at": views::rfc3339(e.at), "kind": e.kind, "detail": e.detail})).collect::<Vec<_>>()}),
    ))
}

async fn dry_run_plan(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let plan = crate::control::dry_run(&app).await?;
    Ok(Json(
        json!({"dry_run": true, "pools": plan.pools, "steps": plan.steps}),
    ))
}

// The agents' endpoints.

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
                return Ok(Json(LeaseResponse::Run(Assignment {
                    job_id: job.id,
                    lease_id: job.lease_id.unwrap_or_default(),
                    kind: job.kind,
                    spec: job.spec,
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
            Ok(Json(json!({"id": job.id, "state": job.state})).into_response())
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
