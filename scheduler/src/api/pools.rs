//! Pools as the API shows them, the operators' events, and the planner's dry run.

use super::visible_tenant;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::{App, now_ms};
use crate::views::{self, EventList, PlanView, PoolList, PoolView, SandboxCounts};
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

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
pub(crate) async fn pools(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<PoolList>, ApiError> {
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
pub(crate) async fn pool(
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
pub(crate) async fn events(
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
pub(crate) async fn dry_run_plan(
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
