//! Errors of Fly Machines API calls, typed from the HTTP status and Fly's error body, each keeping
//! the `fly-request-id` Fly answered with so a failure can be traced on Fly's side.

use std::fmt;
use std::time::Duration;

/// What kind of failure a call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fly's body said `insufficient_capacity`: the region (or host) cannot fit the machine.
    InsufficientCapacity,
    /// 429: past Fly's rate limit.
    RateLimited,
    /// 404.
    NotFound,
    /// 409: most often a lease held by someone else.
    Conflict,
    /// 412: the machine is not in a state that allows the call.
    Precondition,
    /// 400 or 422: the request itself is wrong.
    BadRequest,
    /// 401 or 403.
    Unauthorized,
    /// 408 from Fly (a `wait` that timed out) or the client's own timeout.
    Timeout,
    /// 5xx.
    Server,
    /// The request never got an HTTP answer: connection refused, reset, DNS.
    Transport,
    /// An answer whose body did not parse.
    Decode,
    /// Any other status.
    Other,
}

/// A failed Fly Machines API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    /// What kind of failure it was (decides whether a retry may help).
    pub kind: ErrorKind,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// Fly's `error` text, or what went wrong locally.
    pub message: String,
    /// The `fly-request-id` response header.
    pub request_id: Option<String>,
    /// The `Retry-After` header of a 429.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fly machines API: {:?}", self.kind)?;
        if let Some(s) = self.status {
            write!(f, " ({s})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " [fly-request-id {id}]")?;
        }
        Ok(())
    }
}

impl Error {
    pub(crate) fn local(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            status: None,
            message: message.into(),
            request_id: None,
            retry_after: None,
        }
    }

    /// Types an error answer from its status, headers and body.
    pub(crate) fn from_answer(
        status: u16,
        request_id: Option<String>,
        retry_after: Option<Duration>,
        body: &str,
    ) -> Self {
        let parsed: Option<crate::types::ErrorBody> = serde_json::from_str(body).ok();
        let message = match &parsed {
            Some(b) if !b.error.is_empty() => b.error.clone(),
            _ => body.chars().take(500).collect(),
        };
        let capacity =
            parsed.as_ref().and_then(|b| b.status.as_deref()) == Some("insufficient_capacity");
        let kind = if capacity {
            ErrorKind::InsufficientCapacity
        } else {
            match status {
                429 => ErrorKind::RateLimited,
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                412 => ErrorKind::Precondition,
                400 | 422 => ErrorKind::BadRequest,
                401 | 403 => ErrorKind::Unauthorized,
                408 => ErrorKind::Timeout,
                500..=599 => ErrorKind::Server,
                _ => ErrorKind::Other,
            }
        };
        Error {
            kind,
            status: Some(status),
            message,
            request_id,
            retry_after,
        }
    }

    /// Whether repeating an idempotent call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited | ErrorKind::Timeout | ErrorKind::Server | ErrorKind::Transport
        )
    }

    /// Whether the request surely had no effect (Fly refused it before acting), so that even a
    /// call that is not idempotent, such as create, can be sent again as it is.
    pub fn surely_not_applied(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited
                | ErrorKind::InsufficientCapacity
                | ErrorKind::BadRequest
                | ErrorKind::Unauthorized
                | ErrorKind::NotFound
                | ErrorKind::Conflict
                | ErrorKind::Precondition
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_typed_from_the_body_whatever_the_status() {
        let e = Error::from_answer(
            412,
            Some("req-1".into()),
            None,
            r#"{"error":"insufficient memory available","status":"insufficient_capacity"}"#,
        );
        assert_eq!(e.kind, ErrorKind::InsufficientCapacity);
        assert_eq!(e.request_id.as_deref(), Some("req-1"));
        assert!(e.to_string().contains("req-1"));
    }

    #[test]
    fn statuses_map_to_kinds() {
        let e = Error::from_answer(
            429,
            None,
            Some(Duration::from_secs(2)),
            r#"{"error":"slow down"}"#,
        );
        assert_eq!(
            (e.kind, e.retry_after, e.message.as_str()),
            (
                ErrorKind::RateLimited,
                Some(Duration::from_secs(2)),
                "slow down"
            )
        );
        assert!(e.is_retryable());
        assert_eq!(
            Error::from_answer(503, None, None, "oops").kind,
            ErrorKind::Server
        );
        assert_eq!(
            Error::from_answer(404, None, None, "{}").kind,
            ErrorKind::NotFound
        );
        assert!(!Error::from_answer(400, None, None, "{}").is_retryable());
    }
}
