//! Tenants and their keys: create, read, list, drain; keys made, listed and revoked.

use super::visible_tenant;
use crate::auth::Caller;
use crate::error::{ApiError, Body, OptionalBody};
use crate::openapi::ErrorBody;
use crate::state::{App, hash_token, new_token, now_ms};
use crate::views::{self, KeyList, NewKey, TenantList, TenantView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use shoal_core::limits::ObjectOnly;
use shoal_core::{Limits, LimitsPatch, PlanTier};
use std::sync::Arc;
use utoipa::ToSchema;

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
    /// `on_budget_exceeded` (`notify` or `block`), `regions` (region codes, most preferred first,
    /// at most 8: where `fly` and `kubernetes` place the tenant's sandboxes); `null` is
    /// unlimited.
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
pub(crate) async fn put_tenant(
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
pub(crate) async fn get_tenant(
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
pub(crate) async fn list_tenants(
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
pub(crate) async fn create_key(
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
pub(crate) async fn list_keys(
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
pub(crate) async fn revoke_key(
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
pub(crate) async fn drain(
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
