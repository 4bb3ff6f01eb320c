//! Retrying provider calls: exponential backoff with full jitter, honouring a provider's
//! `Retry-After`, for the errors that are worth another try. Sleeps on tokio's clock, so tests with
//! a paused clock run it instantly.

use crate::ProviderError;
use std::future::Future;
use std::time::Duration;

/// How provider calls are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_tries: u32,
    pub base: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_tries: 6,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// The wait before try number `attempt + 1` (attempt counts from 1) after `err`: the
    /// provider's `Retry-After` when it gave one (plus a little jitter so that many callers do
    /// not return at once), else full jitter over an exponentially growing window.
    pub fn delay(&self, attempt: u32, err: &ProviderError, unit_random: f64) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        match err {
            ProviderError::RateLimited {
                retry_after: Some(after),
            } => *after + window.mul_f64(unit_random * 0.25),
            _ => window.mul_f64(0.5 + unit_random * 0.5),
        }
    }

    /// Runs `call` until it succeeds, fails with an error not worth retrying, or runs out of
    /// tries; returns the last result.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.max_tries => {
                    let wait = self.delay(attempt, &e, rand::random::<f64>());
                    tracing::debug!(attempt, ?wait, error = %e, "retrying provider call");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_and_honour_retry_after() {
        let p = RetryPolicy::default();
        let t = ProviderError::Transient("503".into());
        assert!(p.delay(1, &t, 1.0) <= Duration::from_millis(200));
        assert!(p.delay(4, &t, 0.0) >= Duration::from_millis(800));
        assert!(p.delay(30, &t, 1.0) <= p.max_delay);
        let rl = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(p.delay(1, &rl, 0.5) >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_and_stops_on_permanent_ones() {
        let calls = AtomicU32::new(0);
        let r = RetryPolicy::default()
            .run(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err(ProviderError::Transient("500".into()))
                } else {
                    Ok(n)
                }
            })
            .await;
        assert_eq!(r, Ok(3));

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = RetryPolicy::default()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ProviderError::Permanent("bad image".into()))
            })
            .await;
        assert!(matches!(r, Err(ProviderError::Permanent(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = RetryPolicy {
            max_tries: 4,
            ..Default::default()
        }
        .run(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(ProviderError::RateLimited { retry_after: None })
        })
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "a failing call must not spin"
        );
    }
}
