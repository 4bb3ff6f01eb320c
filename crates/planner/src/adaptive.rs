//! The adaptive idle policy: per tenant, learn how long the gaps between its jobs are and keep
//! sandboxes warm (or pre-warm them) only where that history says a warm sandbox will be used.
//!
//! It is pure: the caller reports what happened ([`TenantAdaptive::arrival`] when a job is
//! enqueued, [`TenantAdaptive::finished`] when one ends) with the time it happened, and asks
//! [`TenantAdaptive::prewarm`] at decision time for the number of sandboxes to hold and until when.
//! The answer goes into [`crate::PoolSnapshot::prewarm`]; the pool's own idle timeout is then `0`,
//! so every idle sandbox beyond the hold is stopped at once. Only the past is used: gaps that have
//! ended, never the next arrival.
//!
//! # The model
//!
//! A tenant's demand `d(t)` is its queued plus running jobs; with one job per sandbox, sandbox
//! number `k` of the pool is needed exactly while `d(t) >= k`. So each *level* `k` has its own
//! history: the gaps between `d` falling below `k` and rising back to `k`. Level 1's gaps are the
//! quiet periods between the tenant's busy periods; higher levels' gaps are how long extra
//! concurrency stays away. A tenant that runs a steady 5 jobs at once has short gaps on levels
//! 1 to 5 and long ones above; a cron tenant has one sharp peak on level 1 at its period.
//!
//! For each level, two [`GapHistogram`]s keep the last [`AdaptiveConfig::history`] idle gaps
//! (fall to next rise) and inter-arrival times (rise to next rise), and the level chooses,
//! by minimising `cold starts × worth + idle time` over that sample (with `worth` =
//! [`AdaptiveConfig::cold_start_worth_ms`], the idle time one cold start is judged to cost), one of:
//!
//! - keep-alive `K` after the level falls (`K = 0` stops at once), or
//! - a pre-warm window `[s, e]` after the level falls, or after it last rose (for scheduled
//!   work, whose next start is due a period after the last start however long that run took):
//!   stop at once, wake the sandbox at `s`
//!   (one [`AdaptiveConfig::lead_ms`] before the earliest gap it covers, so the boot ends in
//!   time), stop it at `e` if no job came. A window must cover at least `min_samples` gaps of
//!   the history, so one odd gap never buys a window of its own.
//!
//! While a level has fewer than [`AdaptiveConfig::min_samples`] gaps it keeps a sandbox for the
//! fixed [`AdaptiveConfig::fallback_keep_alive_ms`].
//!
//! Bursts are the one thing a level's own gaps cannot see coming: between bursts every level is
//! cold for hours. [`crate::burst`] learns what follows a rise from zero (when each level was
//! first reached in past bursts) and, while a burst is open, holds each level not yet reached in
//! it inside the window its history pays for, under the same cost.
//!
//! [`TenantAdaptive::prewarm`] holds the running jobs plus one sandbox per level above them whose
//! decision says "warm now" (sandboxes are interchangeable, so a warm level above a cold one costs
//! one sandbox, not every one in between).
//!
//! `worth` is one number for every tenant and level, so warm time goes wherever it saves the most
//! cold starts. [`IdleBudget`] sets it: instead of a fixed knob, it is revised so that the fleet's
//! idle time tracks a share of what a fixed timeout would have spent on the same past gaps.
//!
//! # Relation to "Serverless in the Wild"
//!
//! Shahrad et al. (USENIX ATC 2020) keep, per application, a histogram of idle times in one-minute
//! bins, pre-warm at its 5th percentile and keep alive to its 99th, and fall back to a fixed
//! keep-alive when the histogram is not representative. Three things differ here, each for a
//! reason of this setting: (1) windows come from minimising a stated cost rather than fixed
//! percentiles, so a tenant whose jobs are rare and unpredictable gets no keep-alive at all and
//! the idle time goes where it buys cold starts; (2) gaps are exact recent samples, not
//! one-minute bins, because sandbox jobs with a cron period recur to the second and a minute of
//! margin per job is a minute of billed idle time; (3) a pool holds many sandboxes, so the
//! history is kept per concurrency level rather than per application.

use crate::burst::BurstHistory;
use shoal_core::Millis;

/// The knobs of the adaptive policy.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// Keep-alive for a level with too little history.
    pub fallback_keep_alive_ms: Millis,
    /// Gaps a level needs before its own history is used.
    pub min_samples: usize,
    /// Gaps kept per level (the most recent ones).
    pub history: usize,
    /// The idle time one cold start is worth: a warm second is bought when it saves at least
    /// `1 / worth` cold starts on the history.
    pub cold_start_worth_ms: Millis,
    /// How long before a predicted arrival a pre-warmed sandbox is woken (at least the slowest
    /// boot).
    pub lead_ms: Millis,
    /// The longest keep-alive or window end, whatever the history.
    pub max_keep_alive_ms: Millis,
    /// A pre-warm window starts at least this long after the level falls (shorter gaps are
    /// served by a keep-alive rather than a stop and a start).
    pub min_window_start_ms: Millis,
    /// Levels beyond this are not tracked: their sandboxes stop as soon as they are idle.
    pub max_levels: u32,
    /// How long after demand rises from zero a burst is watched, and the longest a sandbox woken
    /// for it is kept waiting for its job ([`crate::burst`]); `0` turns burst scale-out off.
    pub burst_horizon_ms: Millis,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            fallback_keep_alive_ms: 60_000,
            min_samples: 3,
            history: 64,
            cold_start_worth_ms: 3_000_000,
            lead_ms: 5_000,
            max_keep_alive_ms: 4 * 3_600_000,
            min_window_start_ms: 30_000,
            max_levels: 256,
            burst_horizon_ms: 60_000,
        }
    }
}

/// What a level's history is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// From the moment demand fell below the level (the idle gap).
    Fall,
    /// From the moment demand last rose to the level (the inter-arrival time): sharper for
    /// scheduled work, whose next run is due a period after the last one started, however long
    /// that one ran.
    Rise,
}

/// What one level does after it falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Stay warm for this long after the fall (0: stop at once).
    KeepAlive(Millis),
    /// Stop at once; be warm from `from` to `until` after the anchor.
    Window {
        /// What the window is measured from.
        anchor: Anchor,
        /// The window's start, after the anchor.
        from: Millis,
        /// The window's end, after the anchor.
        until: Millis,
    },
}

impl Decision {
    /// Whether a sandbox of this level should be warm at `now`, and the next instant at which that
    /// answer changes, given when the level fell and last rose.
    pub(crate) fn at(
        self,
        now: Millis,
        fell: Millis,
        rose: Option<Millis>,
    ) -> (bool, Option<Millis>) {
        let (base, from, until) = match self {
            Decision::KeepAlive(k) => (fell, 0, k),
            Decision::Window {
                anchor: Anchor::Fall,
                from,
                until,
            } => (fell, from, until),
            Decision::Window {
                anchor: Anchor::Rise,
                from,
                until,
            } => match rose {
                Some(r) => (r, from, until),
                None => return (false, None),
            },
        };
        let after = now - base;
        if after < from {
            (false, Some(base + from))
        } else if after < until {
            (true, Some(base + until))
        } else {
            (false, None)
        }
    }
}

/// The recent gaps of one kind for one level.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GapHistogram {
    /// A ring of the most recent gaps, in ms.
    gaps: Vec<u32>,
    next: usize,
}

impl GapHistogram {
    /// Records one gap.
    pub fn observe(&mut self, gap_ms: Millis, cfg: &AdaptiveConfig) {
        let g = gap_ms.clamp(0, u32::MAX as Millis) as u32;
        if self.gaps.len() < cfg.history.max(1) {
            self.gaps.push(g);
        } else {
            self.gaps[self.next] = g;
            self.next = (self.next + 1) % self.gaps.len();
        }
    }

    /// Gaps held.
    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    /// Whether no gap is held yet.
    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty()
    }

    /// The gaps held, oldest first once the ring has wrapped.
    pub fn samples(&self) -> &[u32] {
        &self.gaps
    }
}

/// The best decision on a sample and its cost per sample (`cold × worth + idle`, in ms).
/// Keep-alives are only considered measured from the fall (they start there).
pub fn choose(sample: &[u32], anchor: Anchor, cfg: &AdaptiveConfig) -> (f64, Decision) {
    let mut g: Vec<i64> = sample.iter().map(|&x| x as i64).collect();
    g.sort_unstable();
    let n = g.len();
    if n == 0 {
        return (f64::INFINITY, Decision::KeepAlive(0));
    }
    let cap = cfg.max_keep_alive_ms;
    let worth = cfg.cold_start_worth_ms.max(1) as i128;
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0i128);
    for &x in &g {
        prefix.push(prefix.last().copied().unwrap_or(0) + x as i128);
    }
    // Cost of being warm on [s, e] after the anchor (s = 0 is a keep-alive of e): gaps lo..=hi
    // are warm, gaps beyond cost a cold start and the whole window, gaps before a cold start.
    let cost = |lo: usize, hi: usize, s: i64, e: i64| -> i128 {
        let warm = (hi + 1 - lo) as i128;
        let after = (n - hi - 1) as i128;
        let cold = n as i128 - warm;
        let idle = (prefix[hi + 1] - prefix[lo]) - warm * s as i128 + after * (e - s) as i128;
        cold * worth + idle
    };
    let mut best = (i128::MAX, Decision::KeepAlive(0));
    if anchor == Anchor::Fall {
        best = (n as i128 * worth, Decision::KeepAlive(0));
        for j in 0..n {
            if g[j] > cap {
                break;
            }
            // Take the last index of a run of equal gaps, so all of them are counted warm.
            if j + 1 < n && g[j + 1] == g[j] {
                continue;
            }
            let c = cost(0, j, 0, g[j]);
            if c < best.0 {
                best = (c, Decision::KeepAlive(g[j]));
            }
        }
    }
    for i in 0..n {
        if i > 0 && g[i - 1] == g[i] {
            continue;
        }
        // Woken `lead` before the earliest gap it covers; a gap that ends while the sandbox
        // boots is still a cold start, so it counts as one.
        let s = g[i] - cfg.lead_ms;
        if s < cfg.min_window_start_ms {
            continue; // Stopping and waking again so soon is churn; the keep-alive covers it.
        }
        for j in (i + cfg.min_samples.max(1) - 1)..n {
            if g[j] > cap {
                break;
            }
            if j + 1 < n && g[j + 1] == g[j] {
                continue;
            }
            let c = cost(i, j, s, g[j]);
            if c < best.0 {
                best = (
                    c,
                    Decision::Window {
                        anchor,
                        from: s,
                        until: g[j],
                    },
                );
            }
        }
    }
    let d = match best.1 {
        // Arrivals exactly at the edge are warm: stay up one more millisecond.
        Decision::KeepAlive(k) if k > 0 => Decision::KeepAlive(k + 1),
        Decision::Window {
            anchor,
            from,
            until,
        } => Decision::Window {
            anchor,
            from,
            until: until + 1,
        },
        d => d,
    };
    (best.0 as f64 / n as f64, d)
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Level {
    /// When demand last fell below this level, while it is below.
    fell_at: Option<Millis>,
    /// When demand last rose to this level.
    rose_at: Option<Millis>,
    /// Idle gaps: fall to next rise.
    idle: GapHistogram,
    /// Inter-arrival times: rise to next rise.
    iat: GapHistogram,
    /// Rises since the decision was last computed.
    fresh: usize,
    decision: Option<Decision>,
    /// The [`AdaptiveConfig::cold_start_worth_ms`] the decision was computed with.
    worth: Millis,
}

impl Level {
    /// The level's decision, recomputed when enough new gaps have come in (every gap while the
    /// history is short, then every `len / 8`), so its cost per job stays constant.
    fn decision(&mut self, cfg: &AdaptiveConfig) -> Decision {
        if self.idle.len() < cfg.min_samples.max(1) {
            return Decision::KeepAlive(cfg.fallback_keep_alive_ms);
        }
        let stale =
            self.fresh >= (self.idle.len() / 8).max(1) || self.worth != cfg.cold_start_worth_ms;
        match self.decision {
            Some(d) if !stale => d,
            _ => {
                let by_fall = choose(self.idle.samples(), Anchor::Fall, cfg);
                let by_rise = choose(self.iat.samples(), Anchor::Rise, cfg);
                let d = if by_rise.0 < by_fall.0 {
                    by_rise.1
                } else {
                    by_fall.1
                };
                self.decision = Some(d);
                self.fresh = 0;
                self.worth = cfg.cold_start_worth_ms;
                d
            }
        }
    }
}

/// What [`TenantAdaptive::prewarm`] advises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advice {
    /// Sandboxes to keep (or make) warm now, busy ones included.
    pub hold: u32,
    /// When the advice next changes; plan again then.
    pub next_change: Option<Millis>,
}

impl Advice {
    /// The value for [`crate::PoolSnapshot::prewarm`].
    pub fn prewarm(&self) -> Option<(u32, Millis)> {
        (self.hold > 0).then(|| (self.hold, self.next_change.unwrap_or(Millis::MAX)))
    }
}

/// One tenant's history, per concurrency level. See the module doc.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantAdaptive {
    demand: u32,
    levels: Vec<Level>,
    /// What follows a rise from zero ([`crate::burst`]).
    burst: BurstHistory,
}

impl TenantAdaptive {
    /// A tenant with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queued plus running jobs, as reported.
    pub fn demand(&self) -> u32 {
        self.demand
    }

    /// A job was enqueued at `at`. Returns the idle gap this closed at its level, if any (for
    /// an [`IdleBudget`]).
    pub fn arrival(&mut self, at: Millis, cfg: &AdaptiveConfig) -> Option<Millis> {
        self.demand += 1;
        let k = self.demand;
        self.burst.arrival(at, k, cfg);
        if k > cfg.max_levels {
            return None;
        }
        if self.levels.len() < k as usize {
            self.levels.push(Level::default());
        }
        let level = &mut self.levels[k as usize - 1];
        let gap = level.fell_at.take().map(|fell| at - fell);
        if let Some(g) = gap {
            level.idle.observe(g, cfg);
        }
        if let Some(rose) = level.rose_at {
            level.iat.observe(at - rose, cfg);
        }
        level.rose_at = Some(at);
        level.fresh += 1;
        gap
    }

    /// A job ended (succeeded, failed or cancelled) at `at`.
    pub fn finished(&mut self, at: Millis) {
        if self.demand == 0 {
            return;
        }
        if let Some(level) = self.levels.get_mut(self.demand as usize - 1) {
            level.fell_at = Some(at);
        }
        self.demand -= 1;
    }

    /// Demand is `demand` at `now`, as counted by a caller that sees counts rather than each
    /// job (the scheduler's planning passes): each unit it rose by is an arrival and each unit it
    /// fell by a finish, all at `now`. Levels above [`AdaptiveConfig::max_levels`] are not
    /// tracked, so a change up there is a count, not a walk through every level, however deep
    /// the backlog.
    pub fn observe_demand(&mut self, demand: u32, now: Millis, cfg: &AdaptiveConfig) {
        let cap = cfg.max_levels;
        self.demand = self.demand.min(cap.max(demand));
        while self.demand < demand.min(cap) {
            self.arrival(now, cfg);
        }
        while self.demand > demand {
            self.finished(now);
        }
        self.demand = self.demand.max(demand);
    }

    /// The idle-gap history of level `k` (1-based), if tracked.
    pub fn level(&self, k: u32) -> Option<&GapHistogram> {
        self.levels
            .get((k as usize).checked_sub(1)?)
            .map(|l| &l.idle)
    }

    /// The decision level `k` (1-based) currently follows, if tracked.
    pub fn decision(&mut self, k: u32, cfg: &AdaptiveConfig) -> Option<Decision> {
        let i = (k as usize).checked_sub(1)?;
        self.levels.get_mut(i).map(|l| l.decision(cfg))
    }

    /// How many sandboxes to hold warm at `now`, and when that changes.
    pub fn prewarm(&mut self, now: Millis, cfg: &AdaptiveConfig) -> Advice {
        let mut hold = 0;
        let mut next: Option<Millis> = None;
        let mut soonest = |c: Option<Millis>| {
            if let Some(c) = c {
                next = Some(next.map_or(c, |n| n.min(c)));
            }
        };
        let first = self.demand as usize;
        for (i, level) in self.levels.iter_mut().enumerate().skip(first) {
            // A level not yet reached in the burst in progress may be woken for it.
            let k = (i + 1).min(u32::MAX as usize) as u32;
            let (burst_warm, burst_change) = self.burst.warm(k, now, cfg);
            soonest(burst_change);
            let (warm, change) = match level.fell_at {
                Some(fell) => level.decision(cfg).at(now, fell, level.rose_at),
                None => (false, None),
            };
            soonest(change);
            if warm || burst_warm {
                hold = hold.max(self.demand) + 1;
            }
        }
        Advice {
            hold,
            next_change: next,
        }
    }
}

/// An idle budget shared by every tenant: instead of a fixed [`AdaptiveConfig::cold_start_worth_ms`],
/// the worth of a cold start is revised so that the fleet's idle time tracks `ratio` times what a
/// fixed idle timeout of `reference_timeout_ms` would have spent on the same past gaps.
///
/// One worth for all tenants is what makes the budget go where it buys most cold starts: every
/// level keeps a warm second only if it saves at least `1 / worth` cold starts, so the marginal
/// price of a cold start is equal everywhere (the Lagrangian of "fewest cold starts for this much
/// idle time"). The reference is computed from gaps that have ended ([`TenantAdaptive::arrival`]
/// returns them), so the budget, like the rest of the policy, uses only the past.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleBudget {
    /// The fixed timeout whose idle time is the reference.
    pub reference_timeout_ms: Millis,
    /// The share of the reference to spend.
    pub ratio: f64,
    /// How often the worth is revised.
    pub step_ms: Millis,
    /// Reference idle time so far: `min(gap, reference_timeout_ms)` over every closed gap.
    reference_ms: i64,
}

impl Default for IdleBudget {
    fn default() -> Self {
        IdleBudget {
            reference_timeout_ms: 600_000,
            ratio: 1.0,
            step_ms: 3_600_000,
            reference_ms: 0,
        }
    }
}

impl IdleBudget {
    /// The smallest and largest worth the budget sets.
    pub const WORTH_RANGE_MS: (Millis, Millis) = (10_000, 86_400_000);

    /// A level's idle gap of `gap_ms` ended.
    pub fn gap_closed(&mut self, gap_ms: Millis) {
        self.reference_ms += gap_ms.clamp(0, self.reference_timeout_ms);
    }

    /// The reference idle time so far.
    pub fn reference_ms(&self) -> i64 {
        self.reference_ms
    }

    /// The worth to use from now on, given the idle time actually spent so far and the worth in
    /// use. Moves by at most a factor of 1.25 per step, on a grid of quarter powers of two so
    /// levels recompute their decisions only when it really changes; unchanged until the
    /// reference is an hour of idle time.
    pub fn revise(&self, spent_idle_ms: i64, worth_ms: Millis) -> Millis {
        if self.reference_ms < 3_600_000 {
            return worth_ms;
        }
        let target = self.ratio * self.reference_ms as f64;
        let factor = (target / spent_idle_ms.max(1) as f64).clamp(0.9, 1.12);
        let q = ((worth_ms.max(1) as f64 * factor).log2() * 4.0).round() / 4.0;
        let (lo, hi) = Self::WORTH_RANGE_MS;
        (q.exp2().round() as Millis).clamp(lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Counting demand in bulk leaves the history exactly as job-by-job arrivals and
        /// finishes would, including past the tracked levels.
        #[test]
        fn observed_demand_is_job_by_job(steps in proptest::collection::vec((0u32..12, 1i64..5_000), 1..60)) {
            let cfg = AdaptiveConfig { max_levels: 4, ..AdaptiveConfig::default() };
            let (mut bulk, mut one_by_one) = (TenantAdaptive::new(), TenantAdaptive::new());
            let mut now = 0;
            for (demand, dt) in steps {
                now += dt;
                bulk.observe_demand(demand, now, &cfg);
                while one_by_one.demand() < demand {
                    one_by_one.arrival(now, &cfg);
                }
                while one_by_one.demand() > demand {
                    one_by_one.finished(now);
                }
                prop_assert_eq!(&bulk, &one_by_one);
            }
        }
    }

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig {
            cold_start_worth_ms: 60_000,
            lead_ms: 5_000,
            ..AdaptiveConfig::default()
        }
    }

    #[test]
    fn short_gaps_get_a_keep_alive_covering_them() {
        let sample: Vec<u32> = (0..40).map(|i| 2_000 + (i % 5) * 1_000).collect();
        assert_eq!(
            choose(&sample, Anchor::Fall, &cfg()).1,
            Decision::KeepAlive(6_001)
        );
    }

    #[test]
    fn rare_unpredictable_gaps_get_no_keep_alive() {
        let sample: Vec<u32> = (0..40).map(|i| 3_600_000 + i * 97_000).collect();
        assert_eq!(
            choose(&sample, Anchor::Fall, &cfg()).1,
            Decision::KeepAlive(0)
        );
    }

    #[test]
    fn a_sharp_period_gets_a_prewarm_window() {
        let sample: Vec<u32> = (0..30).map(|i| 3_600_000 + (i % 3) * 1_000).collect();
        let want = Decision::Window {
            anchor: Anchor::Rise,
            from: 3_595_000,
            until: 3_602_001,
        };
        assert_eq!(choose(&sample, Anchor::Rise, &cfg()).1, want);
    }

    #[test]
    fn too_little_history_falls_back() {
        let c = cfg();
        let mut t = TenantAdaptive::new();
        t.arrival(0, &c);
        t.finished(10);
        t.arrival(20, &c);
        t.finished(30);
        assert_eq!(
            t.decision(1, &c),
            Some(Decision::KeepAlive(c.fallback_keep_alive_ms))
        );
        for i in 0..3 {
            t.arrival(40 + i * 20, &c);
            t.finished(50 + i * 20);
        }
        assert_eq!(t.decision(1, &c), Some(Decision::KeepAlive(11)));
    }

    #[test]
    fn scheduled_work_is_predicted_from_its_starts_whatever_it_ran() {
        let c = cfg();
        let mut t = TenantAdaptive::new();
        // Hourly, two jobs at once, running anywhere from 1 to 20 minutes.
        let mut now = 0;
        for i in 0..12 {
            let run = 60_000 + (i * 7 % 20) * 60_000;
            t.arrival(now, &c);
            t.arrival(now, &c);
            t.finished(now + run);
            t.finished(now + run);
            now += 3_600_000;
        }
        let last = now - 3_600_000;
        let d = t.decision(1, &c).expect("level 1");
        assert_eq!(
            d,
            Decision::Window {
                anchor: Anchor::Rise,
                from: 3_595_000,
                until: 3_600_001
            }
        );
        let quiet = t.prewarm(last + 1_500_000, &c);
        assert_eq!(quiet.hold, 0);
        assert_eq!(quiet.next_change, Some(now - 5_000));
        assert_eq!(t.prewarm(now - 5_000, &c).hold, 2);
        assert_eq!(t.prewarm(now + 1, &c).hold, 0);
    }

    #[test]
    fn the_budget_moves_the_worth_towards_the_reference_idle_time() {
        let mut b = IdleBudget::default();
        assert_eq!(b.revise(0, 3_000_000), 3_000_000, "no reference yet");
        for _ in 0..100 {
            b.gap_closed(1_000_000); // counts 600 s each
            b.gap_closed(10_000);
        }
        assert_eq!(b.reference_ms(), 100 * 610_000);
        let under = b.revise(b.reference_ms() / 2, 3_000_000);
        let over = b.revise(b.reference_ms() * 2, 3_000_000);
        assert!((3_000_001..=3_750_000).contains(&under), "{under}");
        assert!((2_400_000..3_000_000).contains(&over), "{over}");
    }

    #[test]
    fn hold_counts_warm_levels_not_the_highest_one() {
        let c = cfg();
        let mut t = TenantAdaptive::new();
        // Level 1 comes back after long, irregular gaps (no keep-alive, no window); level 2
        // comes back within a second half the time (a short keep-alive).
        let mut now = 0;
        let mut last = 0;
        for i in 0..12 {
            last = now;
            t.arrival(now, &c);
            t.arrival(now + 1_000, &c);
            t.finished(now + 2_000);
            t.arrival(now + 3_000, &c);
            t.finished(now + 4_000);
            t.finished(now + 4_500);
            now += 900_000 + (i * i * 530_000) % 2_700_000;
        }
        assert_eq!(t.decision(1, &c), Some(Decision::KeepAlive(0)));
        assert_eq!(t.decision(2, &c), Some(Decision::KeepAlive(1_001)));
        // Nothing running, level 2 still within its keep-alive, level 1 not: one warm sandbox
        // (counting up to the highest warm level would hold two).
        assert_eq!(t.prewarm(last + 4_600, &c).hold, 1);
    }
}
