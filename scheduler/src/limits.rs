//! Per-tenant enqueue rate limits with governor (GCRA), rebuilt when a tenant's limits change.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The limits a limiter was built from: the rate's bits and the burst.
type LimiterKey = (u64, u32);

/// One limiter per tenant, keyed by the limits it was built from.
#[derive(Default)]
pub struct RateLimits {
    limiters: Mutex<HashMap<String, (LimiterKey, Arc<DefaultDirectRateLimiter>)>>,
}

impl RateLimits {
    /// Takes one enqueue from `tenant`'s allowance at `rate` per second with `burst`; `Err` with
    /// the wait until the next one is allowed.
    pub fn check(
        &self,
        tenant: &str,
        rate: Option<f64>,
        burst: Option<u32>,
    ) -> Result<(), Duration> {
        let Some(rate) = rate else { return Ok(()) };
        let burst = burst.unwrap_or_else(|| (rate.ceil() as u32).max(1)).max(1);
        let key = (rate.to_bits(), burst);
        let limiter = {
            let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(tenant) {
                Some((k, l)) if *k == key => Arc::clone(l),
                _ => {
                    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
                    let quota = Quota::with_period(period)
                        .expect("non-zero period")
                        .allow_burst(NonZeroU32::new(burst).expect("burst at least 1"));
                    let l = Arc::new(RateLimiter::direct(quota));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
