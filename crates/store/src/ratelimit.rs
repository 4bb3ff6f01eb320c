//! Per-tenant enqueue rate limits shared by every scheduler replica: the GCRA (generic cell rate
//! algorithm) with governor's exact semantics, run atomically in Redis by one Lua script.
//!
//! A quota is a rate per second and a burst. As in governor, the emission interval is
//! `t = 1 / rate` and the tolerance `tau = t * (burst - 1)`; a tenant's state is its theoretical
//! arrival time `tat` (absent means "allowance full"). A call at `now` is allowed when
//! `now >= tat - tau`, and then `tat = max(tat, now) + t`; refused, it answers the wait
//! `tat - tau - now`. Redis keeps `tat` in microseconds (exact in Lua's doubles for millennia), so
//! periods are rounded to whole microseconds; "now" is the Redis server's clock, so replicas with
//! skewed clocks still share one allowance. The key expires once the allowance is full again,
//! when "absent" and the stored value mean the same, so idle tenants cost no memory.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// What went wrong asking the shared limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("redis: {0}")]
    /// Redis refused or failed a command, or could not be reached.
    Redis(#[from] redis::RedisError),
}

/// A per-tenant GCRA limiter: the local governor one and the Redis one answer alike.
#[async_trait]
pub trait TenantRateLimiter: Send + Sync {
    /// Takes one call from `tenant`'s allowance at `rate` per second with `burst`: `Ok(Ok(()))`
    /// when allowed, `Ok(Err(wait))` with the wait until the next call is allowed.
    async fn check(
        &self,
        tenant: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Result<(), Duration>, RateLimitError>;
}

/// The burst a quota gets when none is set: one second's worth, at least one (as governor's
/// limiter in the scheduler does).
pub fn default_burst(rate: f64, burst: Option<u32>) -> u32 {
    burst.unwrap_or_else(|| (rate.ceil() as u32).max(1)).max(1)
}

/// The longest emission interval: one day. The API only accepts rates whose interval is at most
/// 1,000 s; anything else (zero, negative, NaN, tiny) is clamped here instead of panicking.
pub const MAX_PERIOD: Duration = Duration::from_secs(86_400);

/// The emission interval of `rate` per second, as governor builds it (at least 1 ns, at most
/// [`MAX_PERIOD`]).
pub fn period(rate: f64) -> Duration {
    Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(MAX_PERIOD)
        .clamp(Duration::from_nanos(1), MAX_PERIOD)
}

/// KEYS[1]: the tenant's key. ARGV[1]: t (µs), ARGV[2]: tau (µs), ARGV[3]: now (µs), or empty for
/// the server's clock. Answers {1, 0} when allowed, {0, wait in µs} when not.
const GCRA_LUA: &str = r#"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local now
if ARGV[3] ~= nil and ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local earliest = tat - tau
if now < earliest then
  return {0, earliest - now}
end
local next_tat = math.max(tat, now) + t
local ttl_ms = math.ceil((next_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', ttl_ms)
return {1, 0}
"#;

/// The GCRA limiter in Redis, shared by every replica using the same Redis and prefix.
#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl RedisRateLimiter {
    /// Connects to `url` (`redis://HOST:PORT/DB`). The connection manager reconnects by itself
    /// after Redis restarts; a call while Redis is down fails with [`RateLimitError`].
    pub async fn connect(url: &str) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url)?;
        let conn = client.get_connection_manager().await?;
        Ok(Self::new(conn))
    }

    /// A limiter on an open Redis connection.
    pub fn new(conn: ConnectionManager) -> Self {
        RedisRateLimiter {
            conn,
            // `Script` runs EVALSHA, and loads the script on NOSCRIPT (a restarted Redis).
            script: redis::Script::new(GCRA_LUA),
            prefix: "shoal:rate".into(),
        }
    }

    /// Keys under another prefix (tests sharing one Redis).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The check at an explicit `now` (microseconds since any fixed origin) instead of the Redis
    /// server's clock: for tests that step time.
    pub async fn check_at(
        &self,
        tenant: &str,
        rate: f64,
        burst: u32,
        now_us: u64,
    ) -> Result<Result<(), Duration>, RateLimitError> {
        self.run(tenant, rate, burst, Some(now_us)).await
    }

    async fn run(
        &self,
        tenant: &str,
        rate: f64,
        burst: u32,
        now_us: Option<u64>,
    ) -> Result<Result<(), Duration>, RateLimitError> {
        let t_us = (period(rate).as_nanos().div_ceil(1000) as u64).max(1);
        let burst = burst.max(1);
        let tau_us = t_us * u64::from(burst - 1);
        // A change of limits starts a fresh allowance, as the local limiter rebuilt on change.
        let key = format!("{}:{{{tenant}}}:{t_us}:{burst}", self.prefix);
        let mut conn = self.conn.clone();
        let (allowed, wait_us): (i64, i64) = self
            .script
            .key(key)
            .arg(t_us)
            .arg(tau_us)
            .arg(now_us.map(|n| n.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            Err(Duration::from_micros(wait_us.max(0) as u64))
        })
    }
}

#[async_trait]
impl TenantRateLimiter for RedisRateLimiter {
    async fn check(
        &self,
        tenant: &str,
        rate: f64,
        burst: u32,
    ) -> Result<Result<(), Duration>, RateLimitError> {
        self.run(tenant, rate, burst, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_rate_has_a_period_without_panicking() {
        for rate in [
            1e-300,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            1e300,
        ] {
            let p = period(rate);
            assert!(
                p >= Duration::from_nanos(1) && p <= MAX_PERIOD,
                "{rate}: {p:?}"
            );
        }
        assert_eq!(period(4.0), Duration::from_millis(250));
    }
}
