//! Verifying the webhooks Shoal sends, on the platform's side: the Standard Webhooks headers are
//! checked against the endpoint's secret (shown once, when the endpoint was created) before the
//! body is trusted.
//!
//! ```
//! use shoal_client::verify_webhook;
//! # let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
//! # let headers = reqwest::header::HeaderMap::new();
//! # let body = b"{}";
//! // In the receiver's handler, with the raw body bytes as they arrived:
//! match verify_webhook(secret, &headers, body) {
//!     Ok(event) => println!("{} {}: {}", event.id, event.kind, event.data),
//!     Err(e) => eprintln!("refused: {e}"), // answer 400 or 401
//! }
//! ```

use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use shoal_protocol::webhooks::{
    self, DEFAULT_TOLERANCE_S, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookError,
};

/// A webhook that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// `webhook-id`: the same on every retry of the event; deduplicate on it.
    pub id: String,
    /// `job.succeeded`, `job.failed`, `job.dead`, `job.cancelled`, `quota.warning`, ...
    pub kind: String,
    /// When the event happened (RFC 3339).
    pub timestamp: String,
    /// For job events, the job as `GET /v1/jobs/{id}` shows it.
    pub data: Value,
}

/// Why a webhook was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent or not text (its name).
    #[error("the `{0}` header is missing or not text")]
    MissingHeader(&'static str),
    /// The signature or timestamp did not verify.
    #[error(transparent)]
    Signature(#[from] WebhookError),
    /// The signed body is not a Shoal event.
    #[error("the body is not a Shoal event: {0}")]
    Body(String),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    data: Value,
}

/// Verifies a received webhook against the endpoint's `whsec_` secret (signature, and a
/// timestamp within five minutes of this machine's clock) and reads its body.
pub fn verify_webhook(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<WebhookEvent, VerifyError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    verify_webhook_at(secret, headers, body, now, DEFAULT_TOLERANCE_S)
}

/// [`verify_webhook`] at a given time (Unix seconds) and tolerance (seconds).
pub fn verify_webhook_at(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<WebhookEvent, VerifyError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(VerifyError::MissingHeader(name))
    };
    let id = header(HEADER_ID)?;
    webhooks::verify(
        secret,
        id,
        header(HEADER_TIMESTAMP)?,
        header(HEADER_SIGNATURE)?,
        body,
        now_s,
        tolerance_s,
    )?;
    let e: Envelope = serde_json::from_slice(body).map_err(|e| VerifyError::Body(e.to_string()))?;
    Ok(WebhookEvent {
        id: id.to_string(),
        kind: e.kind,
        timestamp: e.timestamp,
        data: e.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, id.parse().unwrap());
        h.insert(HEADER_TIMESTAMP, ts.parse().unwrap());
        h.insert(HEADER_SIGNATURE, sig.parse().unwrap());
        h
    }

    #[test]
    fn verifies_the_specification_test_vector_and_reads_shoal_bodies() {
        // The Standard Webhooks specification's example message: the signature checks out, but
        // its body is not a Shoal event.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let h = headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        );
        let body = br#"{"test": 2432232314}"#;
        assert!(matches!(
            verify_webhook_at(secret, &h, body, 1614265330, 300),
            Err(VerifyError::Body(_))
        ));
        assert!(matches!(
            verify_webhook_at(secret, &h, body, 1614265330 + 3600, 300),
            Err(VerifyError::Signature(WebhookError::Stale(3600)))
        ));

        let body = br#"{"type":"job.succeeded","timestamp":"2025-01-01T00:00:00.000Z","data":{"id":"job_1"}}"#;
        let key = webhooks::secret_key(secret).unwrap();
        let sig = webhooks::sign(&key, "evt_1", 1_735_689_600, body);
        let ok = verify_webhook_at(
            secret,
            &headers("evt_1", "1735689600", &sig),
            body,
            1_735_689_610,
            300,
        )
        .unwrap();
        assert_eq!(
            (ok.id.as_str(), ok.kind.as_str()),
            ("evt_1", "job.succeeded")
        );
        assert_eq!(ok.data["id"], "job_1");
        assert!(matches!(
            verify_webhook_at(secret, &HeaderMap::new(), body, 0, 300),
            Err(VerifyError::MissingHeader("webhook-id"))
        ));
    }
}
