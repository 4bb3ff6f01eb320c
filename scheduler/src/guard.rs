//! What every request and answer passes through (docs/adr/0005-api-hardening.md):
//!
//! - CSRF: a state-changing request authenticated by the dashboard's session cookie must come from
//!   the server's own origin (`Origin`, else `Referer`, naming the request's `Host`) and carry its
//!   body as `application/json`. A bearer token is never sent by a browser on its own, so
//!   bearer-authenticated requests need neither check; their body may come as JSON, without a
//!   content type, or as `application/x-www-form-urlencoded` (what `curl -d` declares when told
//!   nothing else; the body is still read as JSON). Any other declared type is refused (415),
//!   except on the agents' own endpoints (`/v1/agent/*`, sandbox tokens only).
//! - Headers: `Content-Security-Policy` (none of anything, `frame-ancestors 'none'`, unless the
//!   answer sets its own, as the dashboard does), `X-Frame-Options: DENY`,
//!   `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`.
//! - Errors: whatever the framework answers on its own (a query or path it cannot read, a method
//!   not allowed, a body over the limit) is rewritten into the contract's JSON error shape, and a
//!   URI longer than [`MAX_URI`] is refused with 414 in the same shape.

use crate::auth;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Longest request URI (path and query) answered: 16 KiB.
pub const MAX_URI: usize = 16 * 1024;

/// The policy of every answer that is not the dashboard: nothing may load, nothing may frame it.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

fn state_changing(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The request carries a body (a length above zero, or one sent in chunks).
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// The media type of a `Content-Type`, lowercased, without parameters.
fn mime(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `application/json` or `application/<anything>+json`, with any parameters.
fn is_json(content_type: &str) -> bool {
    let mime = mime(content_type);
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// What `curl -d` declares by default.
fn is_curl_default(content_type: &str) -> bool {
    mime(content_type) == "application/x-www-form-urlencoded"
}

/// The `host[:port]` of an origin or URL (`http://host:port/...`), with the scheme's default
/// port spelled out, lowercased.
fn authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let auth = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    if auth.is_empty() || auth.contains('@') {
        return None;
    }
    Some(with_port(&auth, scheme))
}

/// `host` with `scheme`'s default port added when it names none.
fn with_port(host: &str, scheme: &str) -> String {
    let has_port = match host.rfind(']') {
        // `[v6]` or `[v6]:port`
        Some(i) => host[i..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host.to_string()
    } else if scheme.eq_ignore_ascii_case("https") {
        format!("{host}:443")
    } else {
        format!("{host}:80")
    }
}

/// The request comes from a page of this server: its `Origin` (else its `Referer`) names the host
/// the request was sent to. The scheme is not compared, as TLS may end at a proxy in front.
fn same_origin(h: &HeaderMap) -> bool {
    let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let from = h
        .get(header::ORIGIN)
        .or_else(|| h.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(authority);
    let Some(from) = from else { return false };
    let scheme_port = from.rsplit(':').next().unwrap_or("");
    let host = host.trim().to_ascii_lowercase();
    // `Host` omits a default port; compare with the port the origin's scheme implies.
    from == host
        || from == with_port(&host, "http")
        || (scheme_port == "443" && from == with_port(&host, "https"))
}

/// Refuses what must not reach a handler: a cross-origin or non-JSON cookie-authenticated write,
/// a body declared as something other than JSON, a URI too long.
fn refuse(req: &Request) -> Option<ApiError> {
    if req.uri().to_string().len() > MAX_URI {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is over {MAX_URI} bytes"),
        ));
    }
    let h = req.headers();
    if !state_changing(req.method()) {
        return None;
    }
    let by_cookie = auth::bearer_token(h).is_none() && auth::session_token(h).is_some();
    if by_cookie && !same_origin(h) {
        return Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a request signed in by the session cookie must come from this server's own pages (its Origin must name this host)",
        ));
    }
    // The agents' endpoints answer sandbox tokens only (never the session cookie), and one of
    // them takes raw output (`POST /v1/agent/log`, `application/octet-stream`).
    let agent_call = req.uri().path().starts_with("/v1/agent/");
    if has_body(h) && !agent_call {
        let declared = h
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or(""));
        let ok = match declared {
            Some(ct) => is_json(ct) || (!by_cookie && is_curl_default(ct)),
            // Scripts with a bearer token may leave the type out; a page must declare it.
            None => !by_cookie,
        };
        if !ok {
            return Some(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be JSON: send `Content-Type: application/json`{}",
                    declared.map_or(String::new(), |d| format!(" (not `{d}`)"))
                ),
            ));
        }
    }
    None
}

/// The error code of a status the framework answered with on its own.
fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        409 => "conflict",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "not_ready",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// An error answer not in the JSON shape, rewritten into it (its status and headers kept).
async fn as_json_error(resp: Response, method: &Method) -> Response {
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        match parts.status {
            StatusCode::METHOD_NOT_ALLOWED => format!(
                "this endpoint does not take {method}; the `Allow` header lists what it takes"
            ),
            s => s.canonical_reason().unwrap_or("error").to_string(),
        }
    } else {
        text
    };
    let mut err = ApiError::new(parts.status, code_of(parts.status), message.clone());
    if parts.status == StatusCode::PAYLOAD_TOO_LARGE {
        err.message = format!(
            "the body is over {} MiB",
            crate::api::MAX_BODY / (1024 * 1024)
        );
    }
    if let Some(f) = crate::error::query_field(&message) {
        err = err.field(f);
    }
    let fresh = err.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}

fn is_json_response(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json)
}

/// The middleware: refuse, answer, then shape the answer's headers and errors.
pub async fn layer(req: Request<Body>, next: Next) -> Response {
    let method = req.method().clone();
    let resp = match refuse(&req) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    };
    let mut resp = if resp.status().as_u16() >= 400 && !is_json_response(&resp) {
        as_json_error(resp, &method).await
    } else {
        resp
    };
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CSP),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        for (host, origin, same) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080", true),
            ("127.0.0.1:8080", "http://127.0.0.1:9999", false),
            ("127.0.0.1:8080", "http://evil.example", false),
            ("shoal.example", "https://shoal.example", true),
            ("shoal.example", "http://shoal.example", true),
            ("shoal.example", "https://shoal.example:8443", false),
            ("SHOAL.example:80", "http://shoal.example", true),
            ("[::1]:8080", "http://[::1]:8080", true),
            ("[::1]:8080", "http://[::1]", false),
            ("127.0.0.1:8080", "null", false),
            ("127.0.0.1:8080", "http://user@127.0.0.1:8080", false),
        ] {
            let h = headers(&[("host", host), ("origin", origin)]);
            assert_eq!(same_origin(&h), same, "{host} vs {origin}");
        }
        let referer = headers(&[
            ("host", "127.0.0.1:8080"),
            ("referer", "http://127.0.0.1:8080/page?x=1"),
        ]);
        assert!(same_origin(&referer));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080")])));
    }

    #[test]
    fn json_types() {
        for (ct, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("", false),
        ] {
            assert_eq!(is_json(ct), ok, "{ct}");
        }
    }
}
