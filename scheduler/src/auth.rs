//! Who is calling: the admin token, a tenant's API key, or a sandbox's agent token, from the
//! `Authorization: Bearer` header (or the dashboard's session cookie).

use crate::error::ApiError;
use crate::state::{App, hash_token};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use shoal_store::SandboxRecord;
use std::sync::Arc;

/// The dashboard's session cookie.
pub const COOKIE: &str = "shoal_session";

/// A caller of the platform API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(String),
}

impl Caller {
    /// Refuses a tenant key reaching another tenant.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(t) if t == tenant => Ok(()),
            Caller::Tenant(_) => Err(ApiError::forbidden()),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "this needs the admin token",
            )),
        }
    }

    /// The tenant a tenant key is bound to; `None` for the admin.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(t) => Some(t),
        }
    }
}

fn bearer(parts: &Parts) -> Option<String> {
    let h = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The session cookie's token, if any.
pub fn cookie_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .or_else(|| cookie_token(parts))
            .ok_or_else(ApiError::unauthorized)?;
        if constant_time_eq(&token, &app.admin_token) {
            return Ok(Caller::Admin);
        }
        match app.store.key_tenant(&hash_token(&token)).await? {
            Some(t) => Ok(Caller::Tenant(t)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// A sandbox's agent, by its token.
pub struct Agent(pub SandboxRecord);

impl FromRequestParts<Arc<App>> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        match app.store.sandbox_by_token(&hash_token(&token)).await? {
            Some(s) => Ok(Agent(s)),
            None => Err(ApiError::unauthorized()),
        }
    }
}
