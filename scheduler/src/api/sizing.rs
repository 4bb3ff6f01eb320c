//! `GET /v1/tenants/{id}/recommendation`: the sandbox size a tenant's recent jobs call for, the
//! evidence, and what the change would save.

use super::visible_tenant;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorBody;
use crate::state::{App, now_ms};
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use shoal_core::SandboxSize;
use shoal_core::sizing::{Evidence, Saving};
use std::sync::Arc;
use utoipa::ToSchema;

/// A tenant's right-sizing recommendation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecommendationView {
    /// The tenant.
    pub tenant: String,
    /// The recommended size: `{"cpus", "memory_mb"}`.
    #[schema(value_type = Object)]
    pub sandbox_size: SandboxSize,
    /// The size the tenant's new sandboxes get now (`sandbox_size`, or what `auto_size` gave).
    #[schema(value_type = Object)]
    pub current: SandboxSize,
    /// Whether `limits.auto_size` applies recommendations to new sandboxes.
    pub auto_size: bool,
    /// What it rests on: `jobs_sampled`, `min_samples`, `window_jobs`, `window_days`,
    /// `memory_mb` and `cpu_seconds` and `cpu_cores` (each `{"p50", "p95", "p99", "max"}`),
    /// `oom_kills`, `current` (the configured size) and `reason`.
    #[schema(value_type = Object)]
    pub evidence: Evidence,
    /// A month's saving of the recommended size over the current one (negative: it costs more),
    /// from the last 30 days' billed time: `sandbox_seconds`, `vcpu_seconds`, `gib_seconds`, and
    /// `amount` with `currency` when the provider has a price. Absent when the sizes are the same.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub saving: Option<Saving>,
}

/// The view of `t`'s recommendation at `now`.
pub(crate) async fn recommendation_view(
    app: &App,
    t: &shoal_store::TenantRecord,
) -> Result<RecommendationView, ApiError> {
    let now = now_ms();
    let store = app.store.as_ref();
    let limits = t.limits();
    let current = crate::sizing::effective_size(store, &t.id, &limits).await?;
    let rec = crate::sizing::recommendation(store, &t.id, limits.sandbox_size, now).await?;
    let saving = if crate::sizing::same_size(current, rec.sandbox_size) {
        None
    } else {
        Some(
            crate::sizing::saving(
                store,
                &t.id,
                current,
                rec.sandbox_size,
                &app.cfg.prices,
                app.provider.name(),
                now,
            )
            .await?,
        )
    };
    Ok(RecommendationView {
        tenant: t.id.clone(),
        sandbox_size: rec.sandbox_size,
        current,
        auto_size: limits.auto_size,
        evidence: rec.evidence,
        saving,
    })
}

/// The sandbox size the tenant's recent jobs call for (the admin, or the tenant's own key): the
/// smallest size of the ladder that holds the 99th percentile of their peak memory with a quarter
/// to spare and never less than the largest peak, larger after an OOM kill, the current size
/// while there are too few samples.
#[utoipa::path(get, path = "/v1/tenants/{id}/recommendation", tag = "tenants",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = RecommendationView),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub(crate) async fn recommendation(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RecommendationView>, ApiError> {
    let t = visible_tenant(&app, &caller, &id).await?;
    Ok(Json(recommendation_view(&app, &t).await?))
}
