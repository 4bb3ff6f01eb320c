//! The HTTP API v1 (docs/api.md): routing, health and metrics, and who may see what. The
//! handlers live by concern: [`tenants`] (tenants, keys, drain), [`jobs`], [`pools`] (pools,
//! events, the dry-run plan), [`agent`] (the agents' `/v1/agent/*` protocol) and [`session`]
//! (the dashboard's cookie); the admission rules every job passes are in [`crate::admission`].
//! Each handler carries its `#[utoipa::path]`, and `routes` mounts it with that same attribute,
//! so `/openapi.json` lists exactly what is served.

mod agent;
mod jobs;
mod pools;
mod session;
pub(crate) mod sizing;
mod tenants;

pub(crate) use jobs::page;
pub use session::session_redirect;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::{ApiDoc, ErrorBody};
use crate::state::App;
use crate::{dashboard, joblive, live, usage};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The longest a request may take to answer (its head; a streamed body may go on): two minutes,
/// twice the longest wait a request may ask for (a 60 s long poll).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The span every request's logs carry: its method, path and `x-request-id` (the caller's, or a
/// new UUID; the answer carries it back).
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
}

/// Largest request body: 32 MiB.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// Every documented route, each mounted from its handler's own `#[utoipa::path]`.
pub fn routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(dashboard::page))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(tenants::list_tenants))
        .routes(routes!(tenants::put_tenant, tenants::get_tenant))
        .routes(routes!(tenants::create_key, tenants::list_keys))
        .routes(routes!(tenants::revoke_key))
        .routes(routes!(tenants::drain))
        .routes(routes!(sizing::recommendation))
        .routes(routes!(jobs::enqueue, jobs::list_jobs))
        .routes(routes!(jobs::enqueue_batch))
        .routes(routes!(jobs::get_job))
        .routes(routes!(joblive::logs))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(pools::pools))
        .routes(routes!(pools::pool))
        .routes(routes!(pools::events))
        .routes(routes!(pools::dry_run_plan))
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
        .routes(routes!(agent::agent_lease))
        .routes(routes!(agent::agent_heartbeat))
        .routes(routes!(agent::agent_complete))
        .routes(routes!(joblive::agent_log))
}

/// The API with `/openapi.json`, the JSON 404 fallback and the request layers.
pub fn router(app: Arc<App>) -> Router {
    let (router, doc) = routes().split_for_parts();
    let doc = Arc::new(
        serde_json::to_string_pretty(&crate::openapi::finish(doc)).unwrap_or_else(|_| "{}".into()),
    );
    let router = router
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
        .layer(DefaultBodyLimit::max(MAX_BODY));
    let bounded = guarded(router, REQUEST_TIMEOUT).layer(axum::middleware::from_fn_with_state(
        Arc::clone(&app),
        crate::metrics::http_layer,
    ));
    with_request_ids(bounded).with_state(app)
}

/// The guard in front of every route (`crate::guard`), and inside it the request's time bound, so
/// a timeout's 408 is answered in the JSON error shape (`timeout`) like every other error.
fn guarded<S: Clone + Send + Sync + 'static>(router: Router<S>, timeout: Duration) -> Router<S> {
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(axum::middleware::from_fn(crate::guard::layer))
}

/// The outermost layers: `x-request-id` set (the caller's, else a new UUID), carried by the
/// request's span (`TraceLayer`) and sent back on the answer.
fn with_request_ids<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// A handler slower than the bound, behind the API's own layers, on a paused clock.
    fn slow() -> Router {
        let r = Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }),
        );
        with_request_ids(guarded(r, Duration::from_secs(1)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_time_gets_a_json_408() {
        let r = slow()
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        let id = r.headers().get("x-request-id").expect("a request id");
        assert_eq!(id.len(), 36, "a UUID: {id:?}");
        let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "timeout", "{v}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_request_id_comes_back() {
        let r = slow()
            .oneshot(
                Request::get("/nowhere")
                    .header("x-request-id", "req-42")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["x-request-id"], "req-42");
    }

    /// docs/api.md's route table is the router's: every served operation, and nothing else.
    #[test]
    fn the_route_table_in_docs_is_the_routers() {
        let doc = crate::openapi::document();
        let mut served: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
                    .map(move |m| format!("{} {path}", m.to_uppercase()))
            })
            .collect();
        served.push("GET /openapi.json".into());
        served.sort();
        let text = include_str!("../../../docs/api.md");
        let mut listed: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let method = *cells.get(1)?;
                let path = cells.get(2)?.trim_matches('`');
                ["GET", "PUT", "POST", "DELETE", "PATCH"]
                    .contains(&method)
                    .then(|| format!("{method} {path}"))
            })
            .collect();
        listed.sort();
        assert_eq!(listed, served);
    }
}
