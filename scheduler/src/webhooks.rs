//! The webhooks API: `POST /v1/webhooks`, `GET /v1/webhooks`, `DELETE /v1/webhooks/{id}` and
//! `GET /v1/webhooks/{id}/deliveries`. The admin token manages the platform's endpoints (every
//! tenant's events, or one tenant's); a tenant key manages its own tenant's endpoints, which may
//! reach public addresses only unless the operator allows private ones (see [`crate::ssrf`]).
//! Sending is [`crate::delivery`]'s.

use crate::auth::Caller;
use crate::error::{ApiError, Body};
use crate::openapi::ErrorBody;
use crate::state::{App, now_ms};
use crate::views::rfc3339;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shoal_protocol::webhooks::{EVENT_TYPES, secret_from_bytes};
use shoal_store::{DeliveryRecord, DeliveryState, EndpointRecord, NewEndpoint};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// Longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most endpoints one owner (the platform, or one tenant) may have.
pub const MAX_ENDPOINTS: u32 = 100;

/// `POST /v1/webhooks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// `http://` or `https://`, at most 2048 characters.
    #[schema(example = "https://platform.example/shoal-events")]
    pub url: String,
    /// Event types to send; every type when absent.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Only this tenant's events. A tenant key's endpoints are always its own tenant's.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A webhook endpoint.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// Only this tenant's events; `null`: every tenant's.
    pub tenant: Option<String>,
    pub created_at: String,
    /// `whsec_<base64>`: shown once, in the answer that creates the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn view(e: &EndpointRecord, with_secret: bool) -> WebhookView {
    WebhookView {
        id: e.id.clone(),
        url: e.url.clone(),
        events: e
            .events
            .clone()
            .unwrap_or_else(|| EVENT_TYPES.iter().map(|t| t.to_string()).collect()),
        tenant: e.tenant.clone(),
        created_at: rfc3339(e.created_at),
        secret: with_secret.then(|| e.secret.clone()),
    }
}

/// The endpoints the caller sees.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// One event's delivery to an endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The event's id: the `webhook-id` header of every attempt.
    pub id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `delivered` or `failed`.
    #[schema(value_type = String, example = "delivered")]
    pub state: DeliveryState,
    /// Attempts made (one is counted when it begins).
    pub attempts: u32,
    /// The HTTP status of the last answer, if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    /// When a pending delivery is tried next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
}

fn delivery_view(d: &DeliveryRecord) -> DeliveryView {
    DeliveryView {
        id: d.event_id.clone(),
        kind: d.topic.clone(),
        state: d.state,
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        last_attempt_at: d.last_attempt_at.map(rfc3339),
        next_attempt_at: d
            .next_attempt_at
            .filter(|_| d.state == DeliveryState::Pending)
            .map(rfc3339),
        created_at: rfc3339(d.created_at),
        delivered_at: d.delivered_at.map(rfc3339),
    }
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Checks an endpoint URL's form: http or https, a host, bounded length.
pub fn parse_url(raw: &str) -> Result<reqwest::Url, ApiError> {
    let bad = |m: String| ApiError::invalid("url", m);
    if raw.len() > MAX_URL_LEN {
        return Err(bad(format!("is longer than {MAX_URL_LEN} characters")));
    }
    let url: reqwest::Url = raw
        .parse()
        .map_err(|e| bad(format!("`{raw}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme `{}` is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host".into()));
    }
    Ok(url)
}

/// Checks an event filter: known types, at least one, each once.
pub fn parse_events(events: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(events) = events else {
        return Ok(None);
    };
    if events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "name at least one event type, or leave `events` out for all of them",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::invalid(
                "events",
                format!(
                    "`{}` is not an event type: {}",
                    e.chars().take(64).collect::<String>(),
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(Some(out))
}

/// Creates a webhook endpoint; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    request_body = NewWebhook,
    responses(
        (status = 201, description = "created, with its secret", body = WebhookView),
        (status = 400, description = "a bad URL or event type, or a private address for a tenant's endpoint", body = ErrorBody),
        (status = 403, description = "a tenant key naming another tenant", body = ErrorBody),
        (status = 404, description = "no such tenant", body = ErrorBody),
        (status = 409, description = "the owner has 100 endpoints already", body = ErrorBody),
    ))]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    Body(req): Body<NewWebhook>,
) -> Result<Response, ApiError> {
    let owner = caller.tenant().map(str::to_string);
    let tenant = match (&owner, req.tenant) {
        (Some(own), Some(t)) if *own != t => return Err(ApiError::forbidden().field("tenant")),
        (Some(own), _) => Some(own.clone()),
        (None, t) => t,
    };
    if let Some(t) = &tenant
        && app.store.tenant(t).await?.is_none()
    {
        return Err(ApiError::not_found("tenant", t).field("tenant"));
    }
    let url = parse_url(&req.url)?;
    let events = parse_events(req.events)?;
    // The platform's own endpoints may go anywhere; a tenant's only to public addresses.
    let guarded = owner.is_some();
    if guarded && !app.cfg.webhook_allow_private {
        crate::ssrf::check_url(&url)
            .await
            .map_err(|e| ApiError::invalid("url", e.to_string()))?;
    }
    let endpoint = NewEndpoint {
        id: format!("whk_{}", uuid::Uuid::now_v7().simple()),
        owner,
        tenant,
        url: url.to_string(),
        events,
        secret: secret_from_bytes(&rand::random()),
        guarded,
        created_at: now_ms(),
    };
    if !app
        .store
        .create_endpoint(&endpoint, MAX_ENDPOINTS, &caller.actor())
        .await?
    {
        return Err(ApiError::conflict(format!(
            "at most {MAX_ENDPOINTS} endpoints per owner; delete one first"
        )));
    }
    Ok((StatusCode::CREATED, Json(view(&endpoint, true))).into_response())
}

/// The endpoints the caller may see: all of them for the admin, a tenant key's own.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> Result<Json<WebhookList>, ApiError> {
    let all = app.store.endpoints(caller.tenant()).await?;
    Ok(Json(WebhookList {
        webhooks: all.iter().map(|e| view(e, false)).collect(),
    }))
}

/// The endpoint `id` if the caller may see it: another owner's is "not found".
async fn visible(app: &App, caller: &Caller, id: &str) -> Result<EndpointRecord, ApiError> {
    app.store
        .endpoint(id)
        .await?
        .filter(|e| caller.tenant().is_none() || caller.tenant() == e.owner.as_deref())
        .ok_or_else(|| ApiError::not_found("webhook", id))
}

/// Deletes an endpoint and its deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    visible(&app, &caller, &id).await?;
    if !app
        .store
        .delete_endpoint(&id, now_ms(), &caller.actor())
        .await?
    {
        return Err(ApiError::not_found("webhook", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Paging of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// 1 to 1000; 100 when absent.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// An endpoint's deliveries, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), DeliveriesQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let Query(q) = q.map_err(|e| crate::error::shape_error(&e.body_text()))?;
    let (limit, before) = crate::api::page(q.limit, q.cursor.as_deref())?;
    visible(&app, &caller, &id).await?;
    let page = app.store.deliveries(&id, limit, before).await?;
    let next_cursor = (page.len() == limit as usize)
        .then(|| page.last().map(|d| d.seq.to_string()))
        .flatten();
    Ok(Json(DeliveryPage {
        deliveries: page.iter().map(delivery_view).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host_and_bounded() {
        assert!(parse_url("https://example.com/hook").is_ok());
        assert!(parse_url("http://10.0.0.1:8080/x?y=1").is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "example.com/hook",
            "http://",
            "",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(
                (e.code, e.field.as_deref()),
                ("invalid", Some("url")),
                "{bad}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(parse_url(&long).is_err());
    }

    #[test]
    fn event_filters_name_known_types_once() {
        assert_eq!(parse_events(None).unwrap(), None);
        assert_eq!(
            parse_events(Some(vec![
                "job.failed".into(),
                "job.failed".into(),
                "job.dead".into()
            ]))
            .unwrap(),
            Some(vec!["job.failed".to_string(), "job.dead".to_string()])
        );
        assert!(parse_events(Some(vec![])).is_err());
        assert!(parse_events(Some(vec!["job.exploded".into()])).is_err());
        assert!(parse_events(Some(vec!["job.%".into()])).is_err());
    }
}
