//! Webhooks as Shoal sends them: the event types, and signing and verification by the Standard
//! Webhooks scheme (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`), where the
//! signature is HMAC-SHA256 over `"{id}.{timestamp}.{body}"` keyed by the base64-decoded part of
//! the endpoint's `whsec_` secret. The scheduler signs with [`sign`]; a receiver (or the Rust
//! client's `verify_webhook`) checks with [`verify`]. No I/O here and no clock: the caller passes
//! the time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every event type an endpoint can ask for.
pub const EVENT_TYPES: [&str; 8] = [
    "job.succeeded",
    "job.failed",
    "job.dead",
    "job.cancelled",
    "quota.warning",
    "quota.exceeded",
    "budget.warning",
    "budget.exceeded",
];

/// The prefix of an endpoint's secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The message's id: the same on every retry of one event.
pub const HEADER_ID: &str = "webhook-id";
/// Unix seconds of the attempt.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a message's timestamp may be from the receiver's clock, either way, by default (the
/// specification's suggestion): older messages are refused as possible replays.
pub const DEFAULT_TOLERANCE_S: i64 = 300;

/// Why a message did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The endpoint's secret is malformed.
    #[error("the secret is not `whsec_` followed by base64")]
    BadSecret,
    /// The timestamp header is not a number.
    #[error("`webhook-timestamp` is not Unix seconds")]
    BadTimestamp,
    /// The message is older or newer than the tolerance allows (seconds off).
    #[error("`webhook-timestamp` is {0} s away from now, more than the tolerance")]
    Stale(i64),
    /// No signature matches: the message was altered or signed with another secret.
    #[error("no `v1` signature in `webhook-signature` matches the message")]
    NoMatch,
}

/// A new random secret: `whsec_` and the base64 of 32 random bytes.
pub fn secret_from_bytes(bytes: &[u8; 32]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The HMAC key a secret stands for: the base64 after `whsec_`.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, WebhookError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    match STANDARD.decode(b64) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(WebhookError::BadSecret),
    }
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value of one message: `v1,<base64 HMAC-SHA256>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Checks a received message: its timestamp within `tolerance_s` of `now_s`, and one of the
/// `v1` signatures in `signatures` (space-separated, as the header carries them) made with
/// `secret` over exactly these bytes. The comparison takes constant time.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), WebhookError> {
    let key = secret_key(secret)?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::BadTimestamp)?;
    let skew = now_s.saturating_sub(ts).saturating_abs();
    if skew > tolerance_s {
        return Err(WebhookError::Stale(skew));
    }
    let expected = mac(&key, id, timestamp.trim(), body);
    let matched = signatures
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(WebhookError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published example.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specification_test_vector() {
        let key = secret_key(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY), SIGNATURE);
    }

    #[test]
    fn verifies_the_specification_test_vector() {
        let ts = TS.to_string();
        verify(SECRET, ID, &ts, SIGNATURE, BODY, TS, 300).unwrap();
        // One good signature among several (a receiver during a key rotation) is enough.
        let several = format!("v1,bm9wZQ== v2,whatever {SIGNATURE}");
        verify(SECRET, ID, &ts, &several, BODY, TS + 299, 300).unwrap();
    }

    #[test]
    fn refuses_what_was_not_signed_so() {
        let ts = TS.to_string();
        let body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(SECRET, ID, &ts, SIGNATURE, body, TS, 300),
            Err(WebhookError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, "msg_other", &ts, SIGNATURE, BODY, TS, 300),
            Err(WebhookError::NoMatch)
        );
        let other = secret_from_bytes(&[7; 32]);
        assert_eq!(
            verify(&other, ID, &ts, SIGNATURE, BODY, TS, 300),
            Err(WebhookError::NoMatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = (TS + 1).to_string();
        assert_eq!(
            verify(SECRET, ID, &moved, SIGNATURE, BODY, TS, 300),
            Err(WebhookError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, ID, &ts, "v2,abc", BODY, TS, 300),
            Err(WebhookError::NoMatch)
        );
    }

    #[test]
    fn refuses_stale_and_malformed_input() {
        let ts = TS.to_string();
        assert_eq!(
            verify(SECRET, ID, &ts, SIGNATURE, BODY, TS + 301, 300),
            Err(WebhookError::Stale(301))
        );
        assert_eq!(
            verify(SECRET, ID, &ts, SIGNATURE, BODY, TS - 301, 300),
            Err(WebhookError::Stale(301))
        );
        assert_eq!(
            verify(SECRET, ID, "yesterday", SIGNATURE, BODY, TS, 300),
            Err(WebhookError::BadTimestamp)
        );
        assert_eq!(
            verify("whsec_!!!", ID, &ts, SIGNATURE, BODY, TS, 300),
            Err(WebhookError::BadSecret)
        );
        // Extreme clocks do not overflow.
        assert!(
            verify(
                SECRET,
                ID,
                &i64::MIN.to_string(),
                SIGNATURE,
                BODY,
                i64::MAX,
                300
            )
            .is_err()
        );
    }

    #[test]
    fn a_new_secret_round_trips() {
        let secret = secret_from_bytes(&[42; 32]);
        assert!(secret.starts_with("whsec_"));
        let key = secret_key(&secret).unwrap();
        assert_eq!(key, vec![42; 32]);
        let sig = sign(&key, "evt_1", 1_700_000_000, b"{}");
        verify(
            &secret,
            "evt_1",
            "1700000000",
            &sig,
            b"{}",
            1_700_000_000,
            300,
        )
        .unwrap();
    }
}
