//! Who is calling: the admin token, a tenant's API key, or a sandbox's agent token, from the
//! `Authorization: Bearer` header (or the dashboard's session cookie).

use crate::error::ApiError;
use crate::state::{App, hash_token, now_ms};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use shoal_core::audit::Actor;
use shoal_store::SandboxRecord;
use std::sync::Arc;

/// The dashboard's session cookie.
pub const COOKIE: &str = "shoal_session";

/// A caller of the platform API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A tenant's key: the tenant and the key's id (not a secret; the audit log names it).
    Tenant {
        tenant: String,
        key: String,
    },
}

impl Caller {
    /// Who this caller is in the audit log.
    pub fn actor(&self) -> Actor {
        match self {
            Caller::Admin => Actor::admin(),
            Caller::Tenant { key, .. } => Actor::tenant_key(key),
        }
    }

    /// Refuses a tenant key reaching another tenant.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { tenant: t, .. } if t == tenant => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::forbidden()),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::new(
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
            Caller::Tenant { tenant, .. } => Some(tenant),
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if any.
pub fn bearer_token(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The session cookie's token, if any.
pub fn session_token(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

/// The session cookie's token, if any.
pub fn cookie_token(parts: &Parts) -> Option<String> {
    session_token(&parts.headers)
}

pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// How often a key's `last_used_at` is written: at most once a minute per key, so that checking a
/// key stays a read.
const TOUCH_EVERY_MS: i64 = 60_000;

/// Who `token` is: the admin, a tenant's key, or nobody (`None`). Keys are read from the store on
/// every call (no cache), so a revoked key stops working at once on every replica.
pub async fn authenticate(app: &App, token: &str) -> Result<Option<Caller>, ApiError> {
    if constant_time_eq(token, &app.admin_token) {
        return Ok(Some(Caller::Admin));
    }
    let Some(key) = app.store.key(&hash_token(token)).await? else {
        return Ok(None);
    };
    let now = now_ms();
    if key.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY_MS)
        && let Err(e) = app.store.touch_key(&key.id, now).await
    {
        // Only the key's last use is lost; the call itself goes on.
        tracing::warn!(key = %key.id, error = %e, "cannot record a key's use");
    }
    Ok(Some(Caller::Tenant {
        tenant: key.tenant,
        key: key.id,
    }))
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)
            .or_else(|| cookie_token(parts))
            .ok_or_else(ApiError::unauthorized)?;
        authenticate(app, &token)
            .await?
            .ok_or_else(ApiError::unauthorized)
    }
}

/// A sandbox's agent, by its token.
pub struct Agent(pub SandboxRecord);

/// An agent asking for work: a sandbox's, or a blank sandbox's of the warm pool (by its token's
/// hash), which waits for its claim.
pub enum AgentOrBlank {
    /// A sandbox of a tenant.
    Sandbox(SandboxRecord),
    /// A blank sandbox, not claimed yet: the hash of its token.
    Blank(String),
}

impl FromRequestParts<Arc<App>> for AgentOrBlank {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let hash = hash_token(&token);
        if let Some(s) = app.store.sandbox_by_token(&hash).await? {
            return Ok(AgentOrBlank::Sandbox(s));
        }
        match app.store.blank_by_token(&hash).await? {
            Some(_) => Ok(AgentOrBlank::Blank(hash)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

impl FromRequestParts<Arc<App>> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        match app.store.sandbox_by_token(&hash_token(&token)).await? {
            Some(s) => Ok(Agent(s)),
            None => Err(ApiError::unauthorized()),
        }
    }
}
