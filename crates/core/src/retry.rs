//! A job's retry policy and its attempt history: which ends of an attempt are tried again, how
//! long to wait before the next attempt (exponential backoff with jitter, capped), and the record
//! of each attempt. Pure: the store asks [`RetryPolicy::after`] what to do when an attempt ends and
//! keeps the answer as the job's `next_attempt_at`, which the lease query respects.

use crate::Millis;
use serde::{Deserialize, Serialize};

/// How an attempt ended, for the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The sandbox or its agent went away, or the lease lapsed.
    Lost,
    /// The job ran and failed.
    Failure,
    /// The job ran past its timeout and was killed.
    Timeout,
}

impl RetryOn {
    /// The outcome's name in a policy's `on` list (`lost`, `failure`, `timeout`).
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::Lost => "lost",
            RetryOn::Failure => "failure",
            RetryOn::Timeout => "timeout",
        }
    }
}

/// The largest number of attempts a retry policy may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 20;
/// The longest backoff, initial or capped: a day.
pub const MAX_BACKOFF_S: f64 = 86_400.0;
/// The jitter around each backoff: give or take this fraction.
pub const JITTER: f64 = 0.2;

/// A job's retry policy (`retry` on `POST /v1/jobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Which ends of an attempt are tried again.
    pub on: Vec<RetryOn>,
    /// The wait after the first attempt, in seconds; doubled after each further one.
    pub initial_backoff_s: f64,
    /// The longest wait between attempts, in seconds.
    pub max_backoff_s: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            on: vec![RetryOn::Lost],
            initial_backoff_s: 1.0,
            max_backoff_s: 300.0,
        }
    }
}

/// What is wrong with a retry policy: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadPolicy {
    /// The policy field at fault (`max_attempts`, `initial_backoff_s`, ...).
    pub field: &'static str,
    /// Why its value is refused.
    pub message: String,
}

impl RetryPolicy {
    /// Checks every field's range.
    pub fn check(&self) -> Result<(), BadPolicy> {
        let bad = |field, message: String| Err(BadPolicy { field, message });
        if !(1..=MAX_RETRY_ATTEMPTS).contains(&self.max_attempts) {
            return bad(
                "max_attempts",
                format!("must be between 1 and {MAX_RETRY_ATTEMPTS}"),
            );
        }
        for (field, v) in [
            ("initial_backoff_s", self.initial_backoff_s),
            ("max_backoff_s", self.max_backoff_s),
        ] {
            if !v.is_finite() || !(0.0..=MAX_BACKOFF_S).contains(&v) {
                return bad(field, format!("must be between 0 and {MAX_BACKOFF_S}"));
            }
        }
        if self.max_backoff_s < self.initial_backoff_s {
            return bad("max_backoff_s", "must be at least initial_backoff_s".into());
        }
        Ok(())
    }

    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) ended, before
    /// jitter: `min(max_backoff_s, initial_backoff_s * 2^(attempt-1))`, in milliseconds.
    pub fn base_backoff_ms(&self, attempt: u32) -> Millis {
        let doublings = attempt.saturating_sub(1).min(62) as i32;
        let s = (self.initial_backoff_s * 2f64.powi(doublings)).min(self.max_backoff_s);
        (s * 1000.0).round().clamp(0.0, MAX_BACKOFF_S * 1000.0) as Millis
    }

    /// The wait with jitter: the base backoff scaled by a factor in `[1 - JITTER, 1 + JITTER]`
    /// drawn from `salt` (the job's id) and the attempt, so every replica and every retry of the
    /// same computation agree, while jobs that failed together spread out.
    pub fn backoff_ms(&self, attempt: u32, salt: &str) -> Millis {
        let base = self.base_backoff_ms(attempt) as f64;
        let u = unit_hash(salt, attempt);
        let factor = 1.0 - JITTER + 2.0 * JITTER * u;
        (base * factor).round() as Millis
    }

    /// When attempt `attempt` ended at `now` with `outcome`: the time the next attempt may
    /// start, or `None` when the job is done trying.
    pub fn after(&self, attempt: u32, outcome: RetryOn, now: Millis, salt: &str) -> Option<Millis> {
        (self.on.contains(&outcome) && attempt < self.max_attempts)
            .then(|| now.saturating_add(self.backoff_ms(attempt, salt)))
    }
}

/// A number in `[0, 1)` from `salt` and `n` (FNV-1a, then the top 53 bits).
fn unit_hash(salt: &str, n: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain(n.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Mix the low bits up so that nearby salts differ in the top bits too.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// One attempt of a job, as its history shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// When a sandbox leased it, if it got that far.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub finished_at: Millis,
    /// `succeeded`, `failure`, `timeout` or `lost`.
    pub outcome: String,
    /// The error the attempt ended with, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// How a failed attempt's error is classed: `timeout` when the agent killed it for running too
/// long (its error code is `timeout`), `failure` otherwise.
pub fn failure_kind(error: &serde_json::Value) -> RetryOn {
    if error.get("code").and_then(|c| c.as_str()) == Some("timeout") {
        RetryOn::Timeout
    } else {
        RetryOn::Failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_within_the_jitter() {
        let p = RetryPolicy {
            max_attempts: 20,
            on: vec![RetryOn::Failure],
            initial_backoff_s: 1.0,
            max_backoff_s: 10.0,
        };
        assert_eq!(p.base_backoff_ms(1), 1000);
        assert_eq!(p.base_backoff_ms(2), 2000);
        assert_eq!(p.base_backoff_ms(4), 8000);
        assert_eq!(p.base_backoff_ms(5), 10_000);
        assert_eq!(p.base_backoff_ms(u32::MAX), 10_000);
        let mut seen = std::collections::HashSet::new();
        for i in 0..500 {
            let salt = format!("job_{i}");
            for k in 1..=6 {
                let b = p.base_backoff_ms(k) as f64;
                let j = p.backoff_ms(k, &salt) as f64;
                assert!(j >= b * 0.8 - 1.0 && j <= b * 1.2 + 1.0, "{k} {b} {j}");
            }
            seen.insert(p.backoff_ms(1, &salt) / 50);
        }
        // The jitter spreads: 400 ms of range in 50 ms buckets, nearly all of them used.
        assert!(seen.len() >= 7, "{seen:?}");
    }

    #[test]
    fn only_listed_outcomes_retry_and_only_while_attempts_remain() {
        let p = RetryPolicy {
            max_attempts: 3,
            on: vec![RetryOn::Failure],
            initial_backoff_s: 1.0,
            max_backoff_s: 60.0,
        };
        assert!(p.after(1, RetryOn::Failure, 0, "j").is_some());
        assert!(p.after(2, RetryOn::Failure, 0, "j").is_some());
        assert_eq!(p.after(3, RetryOn::Failure, 0, "j"), None);
        assert_eq!(p.after(1, RetryOn::Lost, 0, "j"), None);
        assert_eq!(p.after(1, RetryOn::Timeout, 0, "j"), None);
        assert_eq!(
            failure_kind(&serde_json::json!({"code": "timeout"})),
            RetryOn::Timeout
        );
        assert_eq!(
            failure_kind(&serde_json::json!({"code": "exit"})),
            RetryOn::Failure
        );
    }

    #[test]
    fn policies_out_of_range_are_refused() {
        let ok = RetryPolicy::default();
        assert!(ok.check().is_ok());
        for bad in [
            RetryPolicy {
                max_attempts: 0,
                ..ok.clone()
            },
            RetryPolicy {
                max_attempts: 21,
                ..ok.clone()
            },
            RetryPolicy {
                initial_backoff_s: f64::NAN,
                ..ok.clone()
            },
            RetryPolicy {
                initial_backoff_s: -1.0,
                ..ok.clone()
            },
            RetryPolicy {
                max_backoff_s: 1e12,
                ..ok.clone()
            },
            RetryPolicy {
                initial_backoff_s: 10.0,
                max_backoff_s: 5.0,
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
