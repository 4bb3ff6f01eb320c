//! The dashboard's session cookie, set by `/?token=` for a token that authenticates.

use crate::auth::COOKIE;
use crate::error::ApiError;
use crate::state::App;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A token can be a cookie's value as it is: only the characters RFC 6265 allows there (no
/// space, quote, comma, semicolon or backslash), so nothing can add an attribute.
fn cookie_safe(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e))
}

/// `GET /?token=...`: sets the session cookie to `token` and redirects to `/`, when the token is
/// the admin token or a tenant's key (anything else is refused, so no one can plant a cookie).
pub async fn session_redirect(app: &App, token: &str) -> Result<Response, ApiError> {
    if crate::auth::authenticate(app, token).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is neither the admin token nor a tenant's key",
        )
        .field("token"));
    }
    if !cookie_safe(token) {
        return Err(ApiError::invalid(
            "token",
            "this token has characters a cookie cannot carry; use the API with `Authorization: Bearer` instead",
        ));
    }
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    let v = HeaderValue::from_str(&cookie).map_err(ApiError::internal)?;
    r.headers_mut().insert(header::SET_COOKIE, v);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_tokens_go_into_a_cookie() {
        assert!(cookie_safe("sha_0123abcd"));
        assert!(cookie_safe("test-admin-42"));
        for bad in ["", "a;Max-Age=9", "a b", "a,b", "a\"b", "a\\b", "é"] {
            assert!(!cookie_safe(bad), "{bad}");
        }
    }
}
