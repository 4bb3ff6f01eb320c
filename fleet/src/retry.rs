//! Retrying provider calls, the one retry layer: the provider (or its API client) retries the
//! errors worth another try (5xx, timeouts, 429 after its `Retry-After`) with exponential backoff
//! and jitter from `backon`; the control loop above does not retry within a pass (ADR 0015).
//! Sleeps on tokio's clock, so tests with a paused clock run it instantly.

use crate::ProviderError;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

/// How provider calls are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_tries: u32,
    /// The wait before the second try is between half of this and this.
    pub base: Duration,
    /// No wait (but a `Retry-After`) is longer.
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

/// The wait before the next try when the provider said when to come back: its `Retry-After`
/// plus a quarter of the backoff's wait, so that many callers do not return at once. `None`
/// (no try left) stays `None`.
pub fn honour_retry_after(
    retry_after: Option<Duration>,
    backoff: Option<Duration>,
) -> Option<Duration> {
    backoff.map(|d| retry_after.map_or(d, |after| after.saturating_add(d / 4)))
}

impl RetryPolicy {
    /// The backoff as a `backon` builder: doubling waits with jitter, the k-th wait between
    /// `base·2^(k-1)/2` and `base·2^(k-1)` and never over `max_delay`, `max_tries - 1` waits.
    pub fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.base / 2)
            .with_max_delay(self.max_delay / 2)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(usize::try_from(self.max_tries.saturating_sub(1)).unwrap_or(usize::MAX))
    }

    /// The waits between tries, in order ([`RetryPolicy::builder`]).
    pub fn backoff(&self) -> ExponentialBackoff {
        self.builder().build()
    }

    /// The wait after the `failures`-th failure in a row of something retried across calls (a
    /// sandbox's create): the backoff's wait for that try, `max_delay` once past the last.
    pub fn delay_after(&self, failures: u32, err: &ProviderError) -> Duration {
        let nth = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
        let wait = self
            .builder()
            .without_max_times()
            .build()
            .nth(nth)
            .unwrap_or(self.max_delay);
        let after = match err {
            ProviderError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        honour_retry_after(after, Some(wait)).unwrap_or(wait)
    }

    /// Runs `call` until it succeeds, fails with an error not worth retrying, or runs out of
    /// tries; returns the last result.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        call.retry(self.builder())
            .sleep(tokio::time::sleep)
            .when(ProviderError::is_retryable)
            .adjust(|e, wait| match e {
                ProviderError::RateLimited { retry_after } => {
                    honour_retry_after(*retry_after, wait)
                }
                _ => wait,
            })
            .notify(|e, wait| tracing::debug!(?wait, error = %e, "retrying provider call"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_and_honour_retry_after() {
        let p = RetryPolicy::default();
        let waits: Vec<Duration> = p.backoff().collect();
        assert_eq!(waits.len(), 5, "six tries, five waits");
        for (k, w) in waits.iter().enumerate() {
            let window = p.base * (1 << k);
            assert!(*w >= window / 2 && *w <= window, "wait {k}: {w:?}");
        }
        let t = ProviderError::Transient("503".into());
        assert!(p.delay_after(1, &t) <= Duration::from_millis(200));
        assert!(p.delay_after(4, &t) >= Duration::from_millis(800));
        assert!(p.delay_after(30, &t) <= p.max_delay);
        let rl = ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(p.delay_after(1, &rl) >= Duration::from_secs(3));
        assert_eq!(honour_retry_after(Some(Duration::from_secs(3)), None), None);
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
