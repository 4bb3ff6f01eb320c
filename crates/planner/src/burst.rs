//! Burst scale-out for the adaptive idle policy: learn, per tenant, how far demand climbs in the
//! first minute or so after it rises from zero, and on the first job of such a burst wake the
//! sandboxes that history says are worth it, before the jobs that need them arrive.
//!
//! It is pure, like the rest of [`crate::adaptive`]: [`BurstHistory::arrival`] is told each job's
//! enqueue time and the demand it brought, and [`BurstHistory::warm`] answers whether level `k`
//! should be warm at `now`.
//!
//! # The model
//!
//! A *burst* starts with a job that finds the tenant's demand at zero while no burst is open, and
//! lasts [`AdaptiveConfig::burst_horizon_ms`]. Its record is, for each level `k >= 2`, how long
//! after the burst's start demand first reached `k` (or never, within the horizon): the burst's
//! peak and how fast it got there. The last [`AdaptiveConfig::history`] records are kept.
//!
//! For each level `k`, the same cost as the level's own decision (`cold starts × worth + idle
//! time`, [`crate::adaptive::choose`]) picks a window `[from, until]` after the burst's start, or
//! none: a sandbox woken at `from` idles until its job comes (at most until `until`, at most the
//! horizon), and a level reached before `from + lead` is still a cold start (the sandbox was
//! booting). Without a window, every burst that reaches `k` costs a cold start. So a tenant whose
//! bursts reliably climb to 12 over 40 seconds gets 11 sandboxes woken on the first job; one whose
//! jobs come one at a time, or whose bursts land within a boot time, gets none.
//!
//! A level is governed by its burst window only until demand first reaches it in the current
//! burst; after that its own history (keep-alive, pre-warm window) decides, and when the window
//! ends the surplus is stopped at once (the adaptive pool's idle timeout is zero).

use crate::adaptive::{AdaptiveConfig, Anchor, Decision, choose};
use shoal_core::Millis;

/// Time to reach a level that the burst never reached within the horizon.
const NEVER: u32 = u32::MAX;

/// The burst in progress.
#[derive(Debug, Clone, Default, PartialEq)]
struct Open {
    start: Millis,
    /// `reached[i]`: ms after `start` at which demand first reached level `i + 2`.
    reached: Vec<u32>,
}

/// One tenant's bursts: the one in progress, the recent ones, and the windows they give.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BurstHistory {
    open: Option<Open>,
    /// A ring of closed bursts' `reached` lists.
    records: Vec<Vec<u32>>,
    next: usize,
    /// Per level `k >= 2` (index `k - 2`): the window after a burst's start, if any.
    windows: Vec<Option<(Millis, Millis)>>,
    /// The worth the windows were chosen with.
    worth: Millis,
}

impl BurstHistory {
    /// A job arrived at `at`, bringing demand to `demand` (queued plus running, this job
    /// included). Opens a burst when demand rose from zero and none is open; otherwise records
    /// the first time the open burst reaches this level.
    pub fn arrival(&mut self, at: Millis, demand: u32, cfg: &AdaptiveConfig) {
        let horizon = cfg.burst_horizon_ms;
        if horizon <= 0 {
            return;
        }
        let within = |o: &Open| at.saturating_sub(o.start) < horizon;
        match &mut self.open {
            Some(o) if within(o) => {
                let k = demand as usize;
                if k >= 2 && k - 2 == o.reached.len() && demand <= cfg.max_levels {
                    o.reached
                        .push(at.saturating_sub(o.start).clamp(0, NEVER as Millis - 1) as u32);
                }
            }
            _ if demand == 1 => {
                if let Some(done) = self.open.take() {
                    self.close(done.reached, cfg);
                }
                self.open = Some(Open {
                    start: at,
                    reached: Vec::new(),
                });
            }
            _ => {}
        }
    }

    fn close(&mut self, reached: Vec<u32>, cfg: &AdaptiveConfig) {
        if self.records.len() < cfg.history.max(1) {
            self.records.push(reached);
        } else {
            self.records[self.next] = reached;
            self.next = (self.next + 1) % self.records.len();
        }
        self.choose(cfg);
    }

    /// Chooses every level's window from the closed bursts.
    fn choose(&mut self, cfg: &AdaptiveConfig) {
        self.worth = cfg.cold_start_worth_ms;
        let peak = self.records.iter().map(Vec::len).max().unwrap_or(0);
        self.windows.clear();
        if self.records.len() < cfg.min_samples.max(1) {
            return;
        }
        let burst_cfg = AdaptiveConfig {
            // From the burst's start: waking at once is the point.
            min_window_start_ms: 0,
            max_keep_alive_ms: cfg.burst_horizon_ms,
            ..cfg.clone()
        };
        let mut sample = Vec::with_capacity(self.records.len());
        for i in 0..peak {
            sample.clear();
            sample.extend(
                self.records
                    .iter()
                    .map(|r| r.get(i).copied().unwrap_or(NEVER)),
            );
            self.windows.push(window(&sample, &burst_cfg));
        }
        // Nothing above the last level worth a window.
        while self.windows.last() == Some(&None) {
            self.windows.pop();
        }
    }

    /// The window of level `k` (1-based; level 1 is the burst's own first job), if any.
    pub fn window(&mut self, k: u32, cfg: &AdaptiveConfig) -> Option<(Millis, Millis)> {
        if self.worth != cfg.cold_start_worth_ms && !self.records.is_empty() {
            self.choose(cfg);
        }
        let i = (k as usize).checked_sub(2)?;
        self.windows.get(i).copied().flatten()
    }

    /// Whether level `k` should be warm at `now` for the burst in progress, and the next instant
    /// that answer changes.
    pub fn warm(&mut self, k: u32, now: Millis, cfg: &AdaptiveConfig) -> (bool, Option<Millis>) {
        let Some((from, until)) = self.window(k, cfg) else {
            return (false, None);
        };
        let Some(o) = &self.open else {
            return (false, None);
        };
        if (k as usize) < o.reached.len() + 2 {
            return (false, None); // Reached in this burst: its own history governs it now.
        }
        Decision::Window {
            anchor: Anchor::Rise,
            from,
            until,
        }
        .at(now, o.start, Some(o.start))
    }

    /// Levels above which no burst window is held.
    pub fn levels(&self) -> u32 {
        (self.windows.len() + 1).min(u32::MAX as usize) as u32
    }

    /// Bursts on record.
    pub fn bursts(&self) -> usize {
        self.records.len()
    }
}

/// The window for one level's times-to-reach ([`NEVER`] for bursts that did not reach it), or
/// none when no window beats leaving the level cold.
fn window(sample: &[u32], cfg: &AdaptiveConfig) -> Option<(Millis, Millis)> {
    let (cost, d) = choose(sample, Anchor::Rise, cfg);
    // `choose` counts every uncovered sample as a cold start: with no window, that is every one.
    let cold_all = cfg.cold_start_worth_ms.max(1) as f64;
    match d {
        Decision::Window { from, until, .. } if cost < cold_all => Some((from, until)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig {
            cold_start_worth_ms: 60_000,
            lead_ms: 5_000,
            burst_horizon_ms: 60_000,
            ..AdaptiveConfig::default()
        }
    }

    /// Feeds one burst: arrivals at `start + t` for each `t`, every job running past the horizon.
    fn burst(h: &mut BurstHistory, start: Millis, times: &[Millis], c: &AdaptiveConfig) {
        for (i, t) in times.iter().enumerate() {
            h.arrival(start + t, i as u32 + 1, c);
        }
    }

    #[test]
    fn a_burst_that_always_climbs_gets_every_level_woken_at_its_start() {
        let c = cfg();
        let mut h = BurstHistory::default();
        // Four bursts, each: the first job, then three more at 10 s, 20 s and 30 s.
        for b in 0..4 {
            burst(&mut h, b * 3_600_000, &[0, 10_000, 20_000, 30_000], &c);
        }
        // Three closed (the fourth is open). Level 2 is reached at 10 s every time: a sandbox
        // woken at 5 s idles 5 s per burst, against a cold start (60 s) each: window [5 s, 10 s].
        assert_eq!(h.bursts(), 3);
        assert_eq!(h.window(2, &c), Some((5_000, 10_001)));
        assert_eq!(h.window(3, &c), Some((15_000, 20_001)));
        assert_eq!(h.window(4, &c), Some((25_000, 30_001)));
        assert_eq!(h.window(5, &c), None);
        // The open burst started at 3 h and has reached level 4 already: nothing more to warm.
        let start = 3 * 3_600_000;
        assert_eq!(h.warm(4, start + 31_000, &c), (false, None));
        // A new burst: at its first job, level 2 is due to be woken at 5 s.
        let next = 4 * 3_600_000;
        h.arrival(next, 1, &c);
        assert_eq!(h.warm(2, next, &c), (false, Some(next + 5_000)));
        assert_eq!(h.warm(2, next + 5_000, &c), (true, Some(next + 10_001)));
        assert_eq!(h.warm(3, next + 15_000, &c), (true, Some(next + 20_001)));
        // Level 2 reached: its burst window no longer holds it.
        h.arrival(next + 9_000, 2, &c);
        assert_eq!(h.warm(2, next + 9_500, &c), (false, None));
        // Past the window, the surplus is not held.
        assert_eq!(h.warm(3, next + 20_001, &c), (false, None));
    }

    #[test]
    fn a_level_rarely_reached_at_scattered_times_is_not_worth_a_window() {
        let c = cfg();
        let mut h = BurstHistory::default();
        // Twelve bursts; level 2 is reached in three, at 10 s, 35 s and 59 s. The only window
        // covering three is [5 s, 59 s]: idle 5 + 30 + 54 s for those three and 54 s for each of
        // the nine others, 575 s, to save three cold starts (180 s at a worth of 60 s).
        for b in 0..13 {
            let times: &[Millis] = match b {
                0 => &[0, 10_000],
                4 => &[0, 35_000],
                8 => &[0, 59_000],
                _ => &[0],
            };
            burst(&mut h, b * 3_600_000, times, &c);
        }
        assert_eq!(h.bursts(), 12);
        assert_eq!(h.window(2, &c), None);
        // When a cold start is worth an hour, 575 s of idle for three of them pays.
        let dear = AdaptiveConfig {
            cold_start_worth_ms: 3_600_000,
            ..c
        };
        assert_eq!(h.window(2, &dear), Some((5_000, 59_001)));
    }

    #[test]
    fn the_cheapest_window_is_chosen_by_hand() {
        let c = AdaptiveConfig {
            cold_start_worth_ms: 20_000,
            ..cfg()
        };
        let mut h = BurstHistory::default();
        // Level 2 reached at 10 s, 12 s, 14 s and never, in four bursts (plus one open).
        for (b, t) in [Some(10_000), Some(12_000), Some(14_000), None, Some(1)]
            .into_iter()
            .enumerate()
        {
            let start = b as Millis * 3_600_000;
            h.arrival(start, 1, &c);
            if let Some(t) = t {
                h.arrival(start + t, 2, &c);
            }
        }
        // Window [5 s, 14 s]: idle 5 + 7 + 9 + 9 = 30 s and one cold start (the burst that never
        // came counts as one for every option), cost 50 s; no window: four, 80 s. A window from
        // 7 s or 9 s covers fewer than three bursts.
        assert_eq!(h.window(2, &c), Some((5_000, 14_001)));
        // Worth 5 s: 30 s of idle to save 3 × 5 s is not worth it.
        let cheap = AdaptiveConfig {
            cold_start_worth_ms: 5_000,
            ..c.clone()
        };
        assert_eq!(h.window(2, &cheap), None);
    }

    #[test]
    fn jobs_that_land_within_a_boot_get_no_window_and_other_jobs_open_no_burst() {
        let c = cfg();
        let mut h = BurstHistory::default();
        // A fan-out within 2 s: every extra job arrives while a sandbox woken at the first
        // would still be booting (lead 5 s), so nothing is gained.
        for b in 0..5 {
            burst(&mut h, b * 3_600_000, &[0, 500, 1_000, 2_000], &c);
        }
        assert_eq!(h.window(2, &c), None);
        assert_eq!(h.levels(), 1);
        // A job arriving while demand is already up opens no burst.
        let mut h = BurstHistory::default();
        h.arrival(0, 3, &c);
        assert_eq!(h, BurstHistory::default());
        // Disabled: no record at all.
        let off = AdaptiveConfig {
            burst_horizon_ms: 0,
            ..c
        };
        h.arrival(0, 1, &off);
        assert_eq!(h, BurstHistory::default());
    }
}
