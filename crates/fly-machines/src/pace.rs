//! Pacing: Fly limits each action to 1 request/s per machine with bursts of 3 (`get`: 5/s, burst
//! 10); calls without a machine (create, list) are limited per app. The client waits for a
//! governor token per (machine or app, action) before every request, retries included, so it never
//! goes past the limits instead of learning them from 429s.
//!
//! A replica that takes over from another ([`Pacer::assume_spent`]) cannot know what its
//! predecessor just sent, so for one refill window every scope it touches starts as if its burst
//! had just been used: it paces at the steady rate until the predecessor's tokens are surely back.

use governor::{Quota, RateLimiter};
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The API's actions, each paced on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create a machine.
    Create,
    /// List machines.
    List,
    /// Get one machine.
    Get,
    /// Start a machine.
    Start,
    /// Stop a machine.
    Stop,
    /// Suspend a machine.
    Suspend,
    /// Wait for a machine's state.
    Wait,
    /// Destroy a machine.
    Destroy,
    /// Acquire a machine's lease.
    LeaseAcquire,
    /// Read a machine's lease.
    LeaseGet,
    /// Release a machine's lease.
    LeaseRelease,
    /// List a machine's events.
    Events,
}

impl Action {
    /// The action's name, as in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::List => "list",
            Action::Get => "get",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Suspend => "suspend",
            Action::Wait => "wait",
            Action::Destroy => "destroy",
            Action::LeaseAcquire => "lease_acquire",
            Action::LeaseGet => "lease_get",
            Action::LeaseRelease => "lease_release",
            Action::Events => "events",
        }
    }
}

/// One rate: a request every `period`, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// The time between requests at the sustained rate.
    pub period: Duration,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

/// The limits to pace by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Every action but `get`.
    pub action: Rate,
    /// `get` (show machine).
    pub get: Rate,
}

impl Limits {
    /// Fly's published limits.
    pub const FLY: Limits = Limits {
        action: Rate {
            period: Duration::from_secs(1),
            burst: 3,
        },
        get: Rate {
            period: Duration::from_millis(200),
            burst: 10,
        },
    };

    /// These limits with a safety margin: periods 15% longer and bursts one smaller, so that
    /// requests bunched up on the way (network jitter, a slow connection) still arrive within
    /// the limits.
    pub fn with_margin(self) -> Limits {
        let m = |r: Rate| Rate {
            period: r.period.mul_f64(1.15),
            burst: r.burst.saturating_sub(1).max(1),
        };
        Limits {
            action: m(self.action),
            get: m(self.get),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::FLY.with_margin()
    }
}

/// A pacing scope: a machine id (or the app) and an action.
type Key = (String, Action);

type Keyed =
    RateLimiter<Key, governor::state::keyed::HashMapStateStore<Key>, governor::clock::DefaultClock>;

/// Per-(machine or app, action) governors.
pub struct Pacer {
    limits: Limits,
    actions: Keyed,
    gets: Keyed,
    waited_us: AtomicU64,
    paced: AtomicU64,
    /// After [`Pacer::assume_spent`]: until when, and the scopes already drained since.
    spent: Mutex<Option<(Instant, HashSet<Key>)>>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("waited", &self.waited())
            .finish()
    }
}

fn quota(r: Rate) -> Quota {
    let burst = NonZeroU32::new(r.burst.max(1)).expect("burst is at least 1");
    Quota::with_period(r.period.max(Duration::from_micros(1)))
        .expect("period is positive")
        .allow_burst(burst)
}

impl Pacer {
    /// A pacer with a full allowance for every action.
    pub fn new(limits: Limits) -> Self {
        Pacer {
            limits,
            actions: RateLimiter::hashmap(quota(limits.action)),
            gets: RateLimiter::hashmap(quota(limits.get)),
            waited_us: AtomicU64::new(0),
            paced: AtomicU64::new(0),
            spent: Mutex::new(None),
        }
    }

    /// Paces as if another client had just spent every scope's burst: for the time a burst
    /// takes to refill, the first request of each (scope, action) finds its bucket empty and
    /// waits a period. For a replica that has just become the leader, whose predecessor may
    /// have used a machine's burst a moment ago.
    pub fn assume_spent(&self) {
        let refill = |r: Rate| r.period.saturating_mul(r.burst.max(1));
        let window = refill(self.limits.action).max(refill(self.limits.get));
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        *spent = Some((Instant::now() + window, HashSet::new()));
    }

    /// Empties `key`'s bucket if a takeover window is open and `key` was not drained yet.
    fn drain_if_new(&self, limiter: &Keyed, key: &Key, burst: u32) {
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let Some((until, drained)) = spent.as_mut() else {
            return;
        };
        if Instant::now() >= *until {
            *spent = None;
            return;
        }
        if drained.insert(key.clone()) {
            for _ in 0..burst {
                let _ = limiter.check_key(key);
            }
        }
    }

    /// Waits until a request for `action` on `scope` (a machine id, or the app for create and
    /// list) is within the limits, and takes its token.
    pub async fn pace(&self, scope: &str, action: Action) {
        let (limiter, rate) = if action == Action::Get {
            (&self.gets, self.limits.get)
        } else {
            (&self.actions, self.limits.action)
        };
        let key = (scope.to_string(), action);
        self.drain_if_new(limiter, &key, rate.burst);
        if limiter.check_key(&key).is_ok() {
            return;
        }
        let started = Instant::now();
        limiter.until_key_ready(&key).await;
        let waited = started.elapsed();
        self.waited_us
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.paced.fetch_add(1, Ordering::Relaxed);
        if self.paced.load(Ordering::Relaxed).is_multiple_of(1024) {
            self.actions.retain_recent();
            self.gets.retain_recent();
        }
    }

    /// How long requests have waited for their turn, in all.
    pub fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_us.load(Ordering::Relaxed))
    }

    /// How many requests had to wait for their turn.
    pub fn delayed_requests(&self) -> u64 {
        self.paced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_keeps_under_flys_limits() {
        let l = Limits::FLY.with_margin();
        assert!(l.action.period > Duration::from_secs(1) && l.action.burst == 2);
        assert!(l.get.period > Duration::from_millis(200) && l.get.burst == 9);
    }

    #[tokio::test]
    async fn a_burst_passes_at_once_and_scopes_are_apart() {
        let p = Pacer::new(Limits {
            action: Rate {
                period: Duration::from_secs(3600),
                burst: 2,
            },
            ..Limits::FLY
        });
        p.pace("m1", Action::Start).await;
        p.pace("m1", Action::Start).await;
        // Other machines and other actions have their own budgets.
        p.pace("m2", Action::Start).await;
        p.pace("m1", Action::Stop).await;
        assert_eq!(p.delayed_requests(), 0);
        // A third start of m1 would wait an hour.
        let third =
            tokio::time::timeout(Duration::from_millis(20), p.pace("m1", Action::Start)).await;
        assert!(third.is_err());
    }

    /// After a takeover the first request of a scope already waits (its burst counted as
    /// spent), as does a scope first touched later in the window; without one, a burst passes.
    #[tokio::test]
    async fn a_new_leader_paces_as_if_the_burst_were_spent() {
        let limits = Limits {
            action: Rate {
                period: Duration::from_secs(3600),
                burst: 2,
            },
            ..Limits::FLY
        };
        let fresh = Pacer::new(limits);
        fresh.pace("m1", Action::Start).await;
        fresh.pace("m1", Action::Start).await;
        assert_eq!(fresh.delayed_requests(), 0);

        let heir = Pacer::new(limits);
        heir.assume_spent();
        for scope in ["m1", "m2"] {
            let first =
                tokio::time::timeout(Duration::from_millis(20), heir.pace(scope, Action::Start))
                    .await;
            assert!(first.is_err(), "{scope}'s first start went at once");
        }
    }
}
