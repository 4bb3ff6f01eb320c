//! The API's errors: one type that renders as the contract's `{"error": {"code", "message",
//! "field"?}}` with a fitting status, and the JSON body extractor that turns every malformed
//! request into a 400 (or 413) instead of a 500.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// An error answer of the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after_s: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message).field(field)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} `{id}`"),
        )
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer TOKEN` is required",
        )
    }

    pub fn forbidden() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this key does not reach that tenant",
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the scheduler's log",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }
}

impl From<shoal_store::StoreError> for ApiError {
    fn from(e: shoal_store::StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::unavailable(format!("the database is not available: {e}"))
        } else {
            ApiError::internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let Some(f) = &self.field {
            body["error"]["field"] = serde_json::Value::String(f.clone());
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A JSON body whose every failure is a clear API error: not JSON, not an object, the wrong
/// shape, an unknown or missing field, too large.
pub struct Body<T>(pub T);

/// [`Body`], or nothing when the body is empty (only whitespace) or JSON `null`.
pub struct OptionalBody<T>(pub Option<T>);

/// The body's bytes, with a body over the limit refused as 413.
async fn read_bytes<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is over 32 MiB",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("cannot read the body: {r}"),
                )
            }
        })
}

/// A body's bytes, with a body over the limit refused as 413 in the API's shape.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_bytes(req, state).await.map(RawBody)
    }
}

/// A JSON object read as `T`. (serde reads a struct from a list of its fields too; no caller
/// means that, so anything but an object is refused.)
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|e| shape_error(&e.to_string()))
}

/// Integers written as whole floats (`3.0`), which JSON Schema counts as integers, made integers at
/// these JSON Pointers, so that serde reads them into integer fields. Only fields the API defines
/// are named: a job's own documents keep their numbers as written.
pub fn whole_numbers(v: &mut serde_json::Value, pointers: &[&str]) {
    for p in pointers {
        if let Some(n) = v.pointer_mut(p)
            && let Some(f) = n.as_f64().filter(|_| n.is_f64())
            && f.fract() == 0.0
        {
            if f >= 0.0 && f <= u64::MAX as f64 {
                *n = serde_json::Value::from(f as u64);
            } else if f < 0.0 && f >= i64::MIN as f64 {
                *n = serde_json::Value::from(f as i64);
            }
        }
    }
}

/// A JSON object read as `T`, with [`whole_numbers`] at `pointers` first.
pub fn parse_object_with<T: DeserializeOwned>(
    mut value: serde_json::Value,
    pointers: &[&str],
) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the body must be a JSON object",
        ));
    }
    whole_numbers(&mut value, pointers);
    serde_json::from_value(value).map_err(|e| shape_error(&e.to_string()))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_bytes(req, state).await?;
        parse_object(&bytes).map(Body)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_bytes(req, state).await?;
        let blank = bytes.iter().all(u8::is_ascii_whitespace);
        if blank || bytes.trim_ascii() == b"null" {
            return Ok(OptionalBody(None));
        }
        parse_object(&bytes).map(|v| OptionalBody(Some(v)))
    }
}

/// A serde error as an API error, naming the field where serde says which.
pub fn shape_error(msg: &str) -> ApiError {
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| {
            let rest = &msg[msg.find(p)? + p.len()..];
            Some(rest[..rest.find('`')?].to_string())
        })
        .or_else(|| query_field(msg));
    let err = ApiError::new(StatusCode::BAD_REQUEST, "invalid", msg.to_string());
    match field {
        Some(f) => err.field(f),
        None => err,
    }
}

/// The query parameter a framework message names, as in `Failed to deserialize query string:
/// limit: invalid digit found in string`.
pub fn query_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("Failed to deserialize query string: ")?;
    let (field, _) = rest.split_once(": ")?;
    (!field.is_empty()
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then(|| field.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_their_field() {
        assert_eq!(
            shape_error("unknown field `colour`, expected one of `a`")
                .field
                .as_deref(),
            Some("colour")
        );
        assert_eq!(
            shape_error("missing field `kind`").field.as_deref(),
            Some("kind")
        );
        assert_eq!(shape_error("invalid type: string").field, None);
        assert_eq!(
            shape_error("Failed to deserialize query string: limit: invalid digit found in string")
                .field
                .as_deref(),
            Some("limit")
        );
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Two {
        a: Option<bool>,
        b: Option<bool>,
    }

    #[test]
    fn whole_floats_become_integers_where_named() {
        let mut v = serde_json::json!({"a": 3.0, "b": -2.0, "c": 1.5, "d": {"e": 4.0}, "f": 5.0});
        whole_numbers(&mut v, &["/a", "/b", "/c", "/d/e", "/missing"]);
        assert_eq!(
            v,
            serde_json::json!({"a": 3, "b": -2, "c": 1.5, "d": {"e": 4}, "f": 5.0})
        );
        assert!(v["f"].is_f64(), "an unnamed number keeps its form");
    }

    #[test]
    fn only_an_object_is_read_as_a_struct() {
        assert!(parse_object::<Two>(br#"{"a": true}"#).is_ok());
        for bad in [&b"[null, null]"[..], b"[]", b"true", b"\"x\""] {
            let e = parse_object::<Two>(bad).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid"));
        }
        assert_eq!(
            parse_object::<Two>(b"{").unwrap_err().code,
            "malformed_json"
        );
    }
}
