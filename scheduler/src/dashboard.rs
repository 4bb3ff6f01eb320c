//! The operators' dashboard at `/`: one self-contained page (`dashboard.html`: no CDN, no build
//! step, charts drawn as inline SVG) that reads the API with the session cookie and follows
//! `/v1/stream` (server-sent events) to update live. It shows the fleet overview, a page per
//! tenant, charts of queue depth and pool size over the last hour and compute hours per day, a
//! page per job (reached from a tenant's job list) whose output streams in live while the job runs
//! (`/v1/jobs/{id}/logs?follow=true`), and lets an operator drain a tenant or cancel a job.

use crate::api::session_redirect;
use crate::auth::cookie_token;
use crate::state::App;
use axum::extract::{Query, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::IntoParams;

/// The page itself.
const PAGE: &str = include_str!("dashboard.html");

/// `text` made safe to place between HTML tags.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The query of `GET /`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Sets the session cookie to this token and redirects to `/`.
    token: Option<String>,
}

/// The operators' dashboard (HTML).
#[utoipa::path(get, path = "/", tag = "operators", security(), params(PageQuery),
    responses(
        (status = 200, description = "the dashboard", body = String, content_type = "text/html"),
        (status = 303, description = "with `token`: sets the session cookie, redirects to `/`"),
        (status = 400, description = "a token a cookie cannot carry", body = crate::openapi::ErrorBody),
        (status = 401, description = "a token that is neither the admin token nor a key", body = crate::openapi::ErrorBody),
    ))]
pub async fn page(
    State(app): State<Arc<App>>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    parts: Parts,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return crate::error::shape_error(&e.body_text()).into_response(),
    };
    if let Some(t) = q.token {
        return session_redirect(&app, &t)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let signed_in = cookie_token(&parts).is_some();
    let html = if signed_in {
        match &app.isolation_warning {
            Some(w) => PAGE.replace(
                "<!--warning-->",
                &format!(
                    "<p class=\"notice warning\" id=isolation-warning><strong>Warning:</strong> {}</p>",
                    html_escape(w)
                ),
            ),
            None => PAGE.to_string(),
        }
    } else {
        PAGE.replace(
            "<!--signin-->",
            "<p class=notice>Open <code>/?token=</code> followed by the admin token (the link the scheduler printed when it generated the token) to sign in.</p>",
        )
    };
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            ),
        ],
        Html(html),
    )
        .into_response()
}
