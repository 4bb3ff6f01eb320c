//! The OpenAPI document at `/openapi.json`. Its paths come from the `#[utoipa::path]` attribute on
//! each handler and are registered with the router in the same call (`utoipa_axum::routes!`), and
//! its schemas are derived from the handlers' own request and answer types, so the document cannot
//! drift from what the server does.

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The document's fixed parts; `api::router` adds every path.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Shoal API",
        description = "Job scheduler and managed sandbox fleet orchestrator. `Authorization: Bearer TOKEN`: the admin token reaches everything, a tenant key its own tenant only; the dashboard's session cookie counts as its token.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "tenants", description = "Tenants, plans, keys, drain"),
        (name = "jobs", description = "Enqueue, read, list and cancel jobs"),
        (name = "pools", description = "Pools, events and the planner's dry run"),
        (name = "usage", description = "Compute usage per tenant, and usage events (CloudEvents) by cursor"),
        (name = "webhooks", description = "Endpoints that hear of finished jobs and quota signals, and their deliveries"),
        (name = "schedules", description = "Cron schedules: one job per fire time"),
        (name = "audit", description = "The audit log of every state-changing call, hash-chained"),
        (name = "operators", description = "Live view for the dashboard"),
        (name = "agent", description = "Used by shoal-agent inside a sandbox, with its sandbox token"),
        (name = "health", description = "Liveness, readiness and metrics"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::COOKIE))),
        );
    }
}

/// Every error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid`, `malformed_json`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `rate_limited`, `quota_exceeded`, `not_ready`, ...
    pub code: String,
    pub message: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The whole document, as `/openapi.json` serves it.
pub fn document() -> Value {
    finish(crate::api::routes().split_for_parts().1)
}

/// The document once every path is in: each operation answers any error it does not list in the
/// one error shape (its `default` response; the guard in front of every route answers 405, 414,
/// 415 and the cross-origin 403 in that shape too), and the request inputs whose Rust types say
/// less than admission checks get their precise schemas ([`crate::schemas`]).
pub fn finish(doc: utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    let error = json!({
        "description": "an error: `{\"error\": {\"code\", \"message\", \"field\"?}}` with a fitting status",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (_, op) in item.iter_mut() {
                if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                    responses.entry("default").or_insert_with(|| error.clone());
                }
            }
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["Enqueue"] = crate::schemas::enqueue();
    schemas["PutTenant"]["properties"]["limits"] = crate::schemas::limits_patch();
    schemas["NewWebhook"]["properties"]["events"] = crate::schemas::webhook_events();
    schemas["NewWebhook"]["properties"]["url"] = crate::schemas::webhook_url();
    schemas["PutSchedule"]["properties"]["job"] = crate::schemas::schedule_job();
    schemas["PutSchedule"]["properties"]["timezone"] = crate::schemas::schedule_timezone();
    schemas["PutTenant"]["properties"]["plan"]["enum"] =
        json!(["free", "pro", "team", "enterprise"]);
    for param in doc["paths"]["/v1/tenants/{id}"]["put"]["parameters"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if param["name"] == "id" {
            param["schema"] = crate::schemas::tenant_id();
        }
    }
    for method in ["put", "delete"] {
        for param in doc["paths"]["/v1/schedules/{tenant}/{name}"][method]["parameters"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if param["name"] == "name" {
                param["schema"] = crate::schemas::schedule_name();
            }
        }
    }
    doc["paths"]["/v1/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"] =
        crate::schemas::stream_event();
    for (path, name, schema) in crate::schemas::query_params() {
        for param in doc["paths"][path]["get"]["parameters"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if param["name"] == name {
                param["schema"] = schema.clone();
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn error_schema_matches_what_errors_render() {
        let e = crate::error::ApiError::invalid("tenant", "bad");
        let resp = e.into_response();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let body = rt
            .block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
            .expect("body");
        let got: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let schema = serde_json::to_value(ErrorBody {
            error: ErrorDetail {
                code: "invalid".into(),
                message: "bad".into(),
                field: Some("tenant".into()),
            },
        })
        .expect("json");
        assert_eq!(got, schema);
    }

    #[test]
    fn document_covers_the_contract() {
        let doc = document();
        for (path, method) in [
            ("/v1/tenants", "get"),
            ("/v1/tenants/{id}", "put"),
            ("/v1/tenants/{id}", "get"),
            ("/v1/tenants/{id}/keys", "post"),
            ("/v1/tenants/{id}/keys", "get"),
            ("/v1/tenants/{id}/keys/{key_id}", "delete"),
            ("/v1/tenants/{id}/drain", "post"),
            ("/v1/jobs", "post"),
            ("/v1/jobs", "get"),
            ("/v1/jobs/{id}", "get"),
            ("/v1/jobs/{id}/cancel", "post"),
            ("/v1/pools", "get"),
            ("/v1/pools/{tenant}", "get"),
            ("/v1/usage", "get"),
            ("/v1/usage/events", "get"),
            ("/v1/events", "get"),
            ("/v1/plan", "get"),
            ("/v1/webhooks", "post"),
            ("/v1/webhooks", "get"),
            ("/v1/webhooks/{id}", "delete"),
            ("/v1/webhooks/{id}/deliveries", "get"),
            ("/v1/schedules", "get"),
            ("/v1/schedules/{tenant}/{name}", "put"),
            ("/v1/schedules/{tenant}/{name}", "delete"),
            ("/v1/overview", "get"),
            ("/v1/history", "get"),
            ("/v1/stream", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
        ] {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is not documented"
            );
        }
        assert!(
            doc["paths"]["/v1/jobs"]["post"]["responses"]["default"].is_object(),
            "errors are documented on every operation"
        );
        assert_eq!(
            doc["components"]["schemas"]["Enqueue"]["oneOf"]
                .as_array()
                .map(Vec::len),
            Some(3),
            "a spec's schema follows its kind"
        );
        for schema in [
            "KeyList",
            "NewKey",
            "JobView",
            "TenantView",
            "PoolView",
            "UsageReport",
            "UsageEventsPage",
            "WebhookView",
            "DeliveryPage",
            "ScheduleView",
            "ScheduleList",
            "AttemptView",
            "ErrorBody",
        ] {
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "schema {schema} missing"
            );
        }
    }
}
