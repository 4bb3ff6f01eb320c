//! Per-tenant enqueue rate limits (GCRA). One replica alone uses governor in memory, rebuilt when
//! a tenant's limits change; several replicas share one allowance per tenant in Redis
//! ([`shoal_store::ratelimit::RedisRateLimiter`], the same algorithm and answers). Both sit behind
//! [`TenantRateLimiter`]. Should Redis be unreachable, the shared check falls back to this
//! replica's own limiter: a tenant is then held to its rate per replica instead of overall, never
//! left unlimited, and admission does not fail because of Redis.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use shoal_store::ratelimit::{
    RateLimitError, RedisRateLimiter, TenantRateLimiter, default_burst, period,
};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The limits a limiter was built from: the rate's bits and the burst.
type LimiterKey = (u64, u32);

/// governor's quota for `rate` per second with `burst`.
pub fn quota(rate: f64, burst: u32) -> Quota {
    Quota::with_period(period(rate))
        .expect("non-zero period")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst at least 1"))
}

/// One in-memory governor limiter per tenant, keyed by the limits it was built from.
#[derive(Default)]
pub struct LocalRateLimits {
    limiters: Mutex<HashMap<String, (LimiterKey, Arc<DefaultDirectRateLimiter>)>>,
}

impl LocalRateLimits {
    /// Takes one call from `tenant`'s allowance; `Err` with the wait until the next is allowed.
    pub fn check(&self, tenant: &str, rate: f64, burst: u32) -> Result<(), Duration> {
        let key = (rate.to_bits(), burst);
        let limiter = {
            let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(tenant) {
                Some((k, l)) if *k == key => Arc::clone(l),
                _ => {
                    let l = Arc::new(RateLimiter::direct(quota(rate, burst)));
                    map.insert(tenant.to_string(), (key, Arc::clone(&l)));
                    l
                }
            }
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

type CheckFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Result<(), Duration>, RateLimitError>> + Send + 'a>>;

// The trait is an `async_trait`; this is its signature written out, so the scheduler needs no
// macro for one method that never awaits.
impl TenantRateLimiter for LocalRateLimits {
    fn check<'life0, 'life1, 'async_trait>(
        &'life0 self,
        tenant: &'life1 str,
        rate: f64,
        burst: u32,
    ) -> CheckFuture<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let answer = LocalRateLimits::check(self, tenant, rate, burst);
        Box::pin(async move { Ok(answer) })
    }
}

/// The scheduler's enqueue rate limits: local, or shared through Redis.
#[derive(Default)]
pub struct RateLimits {
    local: LocalRateLimits,
    shared: Option<Arc<dyn TenantRateLimiter>>,
}

impl RateLimits {
    /// Limits shared through the Redis at `redis_url` when given (`--redis-url`), else local.
    pub async fn connect(redis_url: Option<&str>) -> Result<Self, RateLimitError> {
        Ok(match redis_url {
            Some(url) => Self::with_shared(Arc::new(RedisRateLimiter::connect(url).await?)),
            None => Self::default(),
        })
    }

    /// Limits shared through `limiter`, this replica's own as the fallback.
    pub fn with_shared(limiter: Arc<dyn TenantRateLimiter>) -> Self {
        RateLimits {
            local: LocalRateLimits::default(),
            shared: Some(limiter),
        }
    }

    /// This replica's own check (no Redis): takes one enqueue from `tenant`'s allowance at `rate`
    /// per second with `burst`; `Err` with the wait until the next one is allowed.
    pub fn check(
        &self,
        tenant: &str,
        rate: Option<f64>,
        burst: Option<u32>,
    ) -> Result<(), Duration> {
        let Some(rate) = rate else { return Ok(()) };
        self.local.check(tenant, rate, default_burst(rate, burst))
    }

    /// The check every replica shares when Redis is configured (else the same as [`Self::check`]).
    pub async fn acquire(
        &self,
        tenant: &str,
        rate: Option<f64>,
        burst: Option<u32>,
    ) -> Result<(), Duration> {
        let Some(rate) = rate else { return Ok(()) };
        let burst = default_burst(rate, burst);
        let Some(shared) = &self.shared else {
            return self.local.check(tenant, rate, burst);
        };
        match shared.check(tenant, rate, burst).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "shared rate limiter unreachable; limiting on this replica alone");
                self.local.check(tenant, rate, burst)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use shoal_testkit::services::Redis;

    #[test]
    fn burst_then_refuse_with_a_wait() {
        let r = RateLimits::default();
        for _ in 0..3 {
            assert!(r.check("t", Some(1.0), Some(3)).is_ok());
        }
        let wait = r.check("t", Some(1.0), Some(3)).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // Other tenants have their own allowance, and no rate means no limit.
        assert!(r.check("u", Some(1.0), Some(3)).is_ok());
        assert!(r.check("t", None, None).is_ok());
    }

    /// Two replicas' limiters on one Redis draw from one allowance per tenant.
    #[tokio::test]
    async fn replicas_share_one_allowance_in_redis() {
        let Some(redis) = Redis::start().unwrap() else {
            return;
        };
        let a = RateLimits::connect(Some(&redis.url())).await.unwrap();
        let b = RateLimits::connect(Some(&redis.url())).await.unwrap();
        // A slow refill (one per hour) so that no refill can land within the test.
        let rate = Some(1.0 / 3600.0);
        let mut allowed = 0;
        for i in 0..10 {
            let r = if i % 2 == 0 { &a } else { &b };
            if r.acquire("t", rate, Some(4)).await.is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 4, "the burst is shared, not per replica");
        let wait = b.acquire("t", rate, Some(4)).await.unwrap_err();
        assert!(wait > Duration::from_secs(3000) && wait <= Duration::from_secs(3600));
        // Another tenant has its own allowance; no rate means no limit.
        assert!(a.acquire("u", rate, Some(4)).await.is_ok());
        assert!(a.acquire("t", None, None).await.is_ok());
    }

    /// Redis's GCRA answers as governor does, call for call, on a stepped clock.
    #[tokio::test]
    async fn redis_gcra_agrees_with_governor() {
        let Some(redis) = Redis::start().unwrap() else {
            return;
        };
        let shared = RedisRateLimiter::connect(&redis.url()).await.unwrap();
        // Rates whose periods are whole microseconds, bursts from 1 up.
        for (case, (rate, burst)) in [(4.0, 1), (10.0, 3), (1.0, 5), (1000.0, 20)]
            .into_iter()
            .enumerate()
        {
            let clock = FakeRelativeClock::default();
            let local = RateLimiter::direct_with_clock(quota(rate, burst), clock.clone());
            let tenant = format!("t{case}");
            let mut now_us: u64 = 1_000_000;
            // Steps of varying size around the period, deterministic.
            let t_us = (1_000_000.0 / rate) as u64;
            let steps = [
                0,
                0,
                t_us / 3,
                0,
                t_us,
                t_us / 2,
                0,
                3 * t_us,
                0,
                0,
                0,
                t_us / 7,
            ];
            for (i, step) in steps.iter().cycle().take(60).enumerate() {
                clock.advance(Duration::from_micros(*step));
                now_us += step;
                let want = local
                    .check()
                    .map_err(|not_until| not_until.wait_time_from(clock.now()));
                let got = shared.check_at(&tenant, rate, burst, now_us).await.unwrap();
                assert_eq!(got, want, "rate {rate}, burst {burst}, call {i}");
            }
        }
    }
}
