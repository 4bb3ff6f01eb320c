//! The scoring model: per-test flip rate and entropy with exponential decay across versions
//! (after Kowalczyk et al., "Modeling and Ranking Flaky Tests at Apple", ICSE-SEIP 2020),
//! a Beta-Binomial estimate of the chance that a failure is not caused by the code, a
//! change-point model of the failure rate over commits (regressions vs flakiness), and the
//! per-failure and per-test verdicts. See `docs/flaky.md` for the formulas.

use serde::Serialize;

use crate::Options;

/// One test in one run.
#[derive(Debug, Clone)]
pub(crate) struct Obs {
    /// Index of the run (in analysis order).
    pub run: usize,
    /// Index of the version (commit) the run tested.
    pub version: usize,
    pub failed_attempts: u32,
    pub passed_attempts: u32,
    pub message: Option<String>,
}

impl Obs {
    fn failed(&self) -> bool {
        self.failed_attempts > 0
    }
    fn passed(&self) -> bool {
        self.passed_attempts > 0
    }
}

/// A verdict on a test or on one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fails and passes on the same code.
    Flaky,
    /// Fails consistently from some commit on: likely a real regression.
    Failing,
    /// Passes.
    Passing,
    /// Too few runs to tell.
    InsufficientData,
}

/// Why a failure got its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A rerun in the same run passed (Surefire `flakyFailure`, or the test passed again).
    PassedOnRerun,
    /// Another run of the same commit passed.
    PassedOnSameCommit,
    /// It fails on every run of at least `min_failing_streak` consecutive commits.
    ConsistentFailure,
    /// A short failing streak followed by passes on later commits.
    Isolated,
    /// The latest commits fail and the test has no history of flakiness.
    NewFailure,
    /// The latest commits fail and the test has flaked before.
    FlakyHistory,
    /// Fewer than `min_runs` runs of this test.
    TooFewRuns,
    /// The test's failure rate jumped at a commit (from about 0 to `failure_rate_since`) and
    /// stayed there (until `passed_again_at_commit`, when fixed): a regression, even when a
    /// rerun or another run of the same commit passed.
    RateJump,
    /// A run of failing commits that the test's steady failure rate explains (no change in
    /// rate over its history): flaky.
    SteadyRate,
}

/// A stretch of versions where the failure rate is raised: the best split of the test's
/// ordered history into "outside" and "inside" rates, kept when it beats one steady rate by
/// the BIC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Regime {
    /// First position (in the test's versions) of the raised rate.
    pub start: usize,
    /// Position after the last one (`versions.len()` when still raised).
    pub end: usize,
    /// Failure rate (per attempt) outside the stretch.
    pub rate_out: f64,
    /// Failure rate (per attempt) inside it.
    pub rate_in: f64,
}

/// Log-likelihood of `k` failures in `n` Bernoulli trials at the maximum-likelihood rate.
fn bernoulli_ll(k: f64, n: f64) -> f64 {
    if n <= 0.0 || k <= 0.0 || k >= n {
        return 0.0;
    }
    let p = k / n;
    k * p.ln() + (n - k) * (1.0 - p).ln()
}

/// Most candidate boundaries tried per test (longer histories are scanned with a stride), so
/// the search costs at most `MAX_BOUNDARIES²` steps whatever the history length.
const MAX_BOUNDARIES: usize = 256;

/// Finds the stretch of raised failure rate, if the data support one. `counts[i]` is
/// (failed attempts, attempts) at the test's `i`-th version. Compares one Bernoulli rate over
/// the whole history (1 parameter) against a rate inside `[start, end)` and one outside
/// (2 rates + 1 or 2 change points) by BIC, `penalty` scaling the BIC's `ln n` per parameter.
pub(crate) fn find_regime(counts: &[(f64, f64)], penalty: f64, min_rate: f64) -> Option<Regime> {
    let v = counts.len();
    if v < 2 {
        return None;
    }
    let mut pk = vec![0.0; v + 1];
    let mut pn = vec![0.0; v + 1];
    for (i, &(k, n)) in counts.iter().enumerate() {
        pk[i + 1] = pk[i] + k;
        pn[i + 1] = pn[i] + n;
    }
    let (k_all, n_all) = (pk[v], pn[v]);
    if n_all <= 0.0 || k_all <= 0.0 {
        return None;
    }
    let ll0 = bernoulli_ll(k_all, n_all);
    let ln_n = n_all.max(1.0).ln();
    // The best stretch starts at a version with a failure and ends right after one (moving a
    // boundary over versions without failures only lowers the inside rate), or at the end.
    let failing: Vec<usize> = (0..v).filter(|&i| counts[i].0 > 0.0).collect();
    let stride = failing.len().div_ceil(MAX_BOUNDARIES).max(1);
    let starts: Vec<usize> = failing
        .iter()
        .copied()
        .filter(|&i| i >= 1)
        .step_by(stride)
        .collect();
    let mut ends: Vec<usize> = failing.iter().map(|&i| i + 1).step_by(stride).collect();
    if ends.last() != Some(&v) {
        ends.push(v);
    }
    let mut best: Option<(f64, Regime)> = None;
    for &a in &starts {
        // Something must have run before the jump: a test broken from its first run has no
        // "before" to compare with.
        if pn[a] <= 0.0 {
            continue;
        }
        for &b in ends.iter().filter(|&&b| b > a) {
            let (k_in, n_in) = (pk[b] - pk[a], pn[b] - pn[a]);
            let (k_out, n_out) = (k_all - k_in, n_all - n_in);
            if n_in <= 0.0 || k_in <= 0.0 {
                continue;
            }
            let rate_in = k_in / n_in;
            let rate_out = if n_out > 0.0 { k_out / n_out } else { 0.0 };
            if rate_in < min_rate || rate_in <= 2.0 * rate_out {
                continue;
            }
            let extra = if b == v { 2.0 } else { 3.0 };
            let gain = 2.0 * (bernoulli_ll(k_in, n_in) + bernoulli_ll(k_out, n_out) - ll0)
                - penalty * extra * ln_n;
            if gain > 0.0 && best.as_ref().is_none_or(|(g, _)| gain > *g) {
                best = Some((
                    gain,
                    Regime {
                        start: a,
                        end: b,
                        rate_out,
                        rate_in,
                    },
                ));
            }
        }
    }
    best.map(|(_, r)| r)
}

/// The verdict on one failure, with evidence.
#[derive(Debug, Clone)]
pub(crate) struct FailureVerdict {
    pub obs: usize,
    pub verdict: Verdict,
    pub reason: Reason,
    pub streak_start: Option<usize>,
    pub streak_len: usize,
    pub fixed_at: Option<usize>,
    pub passed_runs: Vec<usize>,
    /// (rate before, rate since) for a `RateJump` failure.
    pub rates: Option<(f64, f64)>,
}

/// The scores and verdicts of one test.
#[derive(Debug, Clone)]
pub(crate) struct TestScore {
    pub runs: usize,
    pub failures: usize,
    pub commits: usize,
    pub flip_rate: f64,
    pub entropy: f64,
    pub failure_rate: f64,
    pub p_not_code: f64,
    pub flaky_score: f64,
    pub verdict: Verdict,
    pub failures_detail: Vec<FailureVerdict>,
}

fn binary_entropy(p: f64) -> f64 {
    if p <= 0.0 || p >= 1.0 || p.is_nan() {
        0.0
    } else {
        -(p * p.log2() + (1.0 - p) * (1.0 - p).log2())
    }
}

fn finite01(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Scores one test from its observations (sorted by run order). `last_version` is the
/// newest version of the whole analysis; `version_known[v]` says whether version `v` is a
/// real commit (runs of unknown commits are never "the same commit").
pub(crate) fn score(
    obs: &[Obs],
    last_version: usize,
    version_known: &[bool],
    opts: &Options,
) -> TestScore {
    let half_life = if opts.decay_half_life > 0.0 {
        opts.decay_half_life
    } else {
        f64::INFINITY
    };
    let weight = |v: usize| 0.5f64.powf((last_version.saturating_sub(v)) as f64 / half_life);

    // Versions this test ran on, in order, with pass/fail presence.
    let mut versions: Vec<(usize, bool, bool)> = Vec::new(); // (version, any pass, any fail)
    for o in obs {
        match versions.iter_mut().rev().find(|v| v.0 == o.version) {
            Some(v) => {
                v.1 |= o.passed();
                v.2 |= o.failed();
            }
            None => versions.push((o.version, o.passed(), o.failed())),
        }
    }
    versions.sort_by_key(|v| v.0);
    let vpos = |v: usize| versions.binary_search_by_key(&v, |x| x.0).unwrap_or(0);
    // A failing version: it failed and nothing passed on it. Streaks of consecutive ones.
    let failing: Vec<bool> = versions.iter().map(|v| v.2 && !v.1).collect();
    let mut streak_of = vec![(0usize, 0usize); versions.len()]; // (start pos, length)
    let mut k = 0;
    while k < versions.len() {
        if failing[k] {
            let start = k;
            while k < versions.len() && failing[k] {
                k += 1;
            }
            for s in streak_of.iter_mut().take(k).skip(start) {
                *s = (start, k - start);
            }
        } else {
            k += 1;
        }
    }

    // The change-point model over the ordered versions (attempt counts per version).
    let mut counts = vec![(0.0f64, 0.0f64); versions.len()];
    for o in obs {
        let c = &mut counts[vpos(o.version)];
        c.0 += f64::from(o.failed_attempts);
        c.1 += f64::from(o.failed_attempts) + f64::from(o.passed_attempts);
    }
    let regime = find_regime(&counts, opts.change_penalty, opts.min_regression_rate);
    let in_regime = |version: usize| {
        regime.is_some_and(|r| {
            let p = vpos(version);
            p >= r.start && p < r.end
        })
    };

    // Flip rate and failure rate, decayed by version age (over the given observations).
    let rates = |keep: &dyn Fn(&Obs) -> bool| {
        let mut statuses: Vec<(bool, f64)> = Vec::with_capacity(obs.len() + 4);
        let (mut fail_w, mut all_w) = (0.0, 0.0);
        for o in obs.iter().filter(|o| keep(o)) {
            let w = weight(o.version);
            all_w += w;
            if o.failed() {
                fail_w += w;
                statuses.push((true, w));
            }
            if o.passed() {
                statuses.push((false, w));
            }
        }
        let (mut flip_w, mut trans_w) = (0.0, 0.0);
        for pair in statuses.windows(2) {
            trans_w += pair[1].1;
            if pair[0].0 != pair[1].0 {
                flip_w += pair[1].1;
            }
        }
        let flip_rate = if trans_w > 0.0 { flip_w / trans_w } else { 0.0 };
        let failure_rate = if all_w > 0.0 { fail_w / all_w } else { 0.0 };
        (flip_rate, failure_rate, binary_entropy(failure_rate))
    };
    let (flip_rate, failure_rate, entropy) = rates(&|_| true);
    // The score's erratic-ness is measured outside a regression: failures the code caused do
    // not make a test flaky.
    let (flip_out, _, entropy_out) = rates(&|o| !in_regime(o.version));

    // Per-failure verdicts and the Beta evidence.
    let (mut alpha, mut beta) = (opts.prior_alpha, opts.prior_beta);
    let mut details = Vec::new();
    let mut flaked_before = false;
    let runs = obs.len();
    let enough = runs >= opts.min_runs;
    for (i, o) in obs.iter().enumerate() {
        if !o.failed() {
            continue;
        }
        let w = weight(o.version);
        let p = vpos(o.version);
        let same_commit_passes: Vec<usize> =
            if version_known.get(o.version).copied().unwrap_or(false) {
                obs.iter()
                    .filter(|x| x.version == o.version && x.passed() && x.run != o.run)
                    .map(|x| x.run)
                    .take(5)
                    .collect()
            } else {
                Vec::new()
            };
        let (start, len) = streak_of[p];
        let mut d = FailureVerdict {
            obs: i,
            verdict: Verdict::Flaky,
            reason: Reason::PassedOnRerun,
            streak_start: None,
            streak_len: 0,
            fixed_at: None,
            passed_runs: Vec::new(),
            rates: None,
        };
        if let Some(r) = regime.filter(|r| p >= r.start && p < r.end) {
            // Inside a stretch of raised failure rate: the code's doing, whatever reruns say.
            beta += w;
            d.verdict = Verdict::Failing;
            d.streak_start = Some(versions[r.start].0);
            d.streak_len = r.end - r.start;
            d.fixed_at = versions.get(r.end).map(|v| v.0);
            if failing[r.start..r.end].iter().all(|&f| f)
                && r.end - r.start >= opts.min_failing_streak.max(1)
            {
                // Every commit since the jump fails on every run: the plain case.
                d.reason = Reason::ConsistentFailure;
            } else {
                d.reason = Reason::RateJump;
                d.passed_runs = same_commit_passes;
                d.rates = Some((r.rate_out, r.rate_in));
            }
        } else if o.passed() {
            alpha += w;
        } else if !same_commit_passes.is_empty() {
            alpha += w;
            d.reason = Reason::PassedOnSameCommit;
            d.passed_runs = same_commit_passes;
        } else {
            let fixed_at = versions.get(start + len).map(|v| v.0);
            d.streak_start = Some(versions[start].0);
            d.streak_len = len;
            d.fixed_at = fixed_at;
            if len >= opts.min_failing_streak.max(1) && start == 0 {
                // From the test's first commit: nothing to compare with, the streak itself
                // is the evidence.
                beta += w;
                d.verdict = Verdict::Failing;
                d.reason = Reason::ConsistentFailure;
            } else if len >= opts.min_failing_streak.max(1) {
                // A streak after passing commits that the change-point model does not see as
                // a change in rate: the test's steady rate explains it.
                alpha += 0.75 * w;
                beta += 0.25 * w;
                d.reason = Reason::SteadyRate;
            } else if fixed_at.is_some() {
                alpha += 0.75 * w;
                beta += 0.25 * w;
                d.reason = Reason::Isolated;
            } else {
                alpha += 0.5 * w;
                beta += 0.5 * w;
                if flaked_before {
                    d.reason = Reason::FlakyHistory;
                } else {
                    d.verdict = Verdict::Failing;
                    d.reason = Reason::NewFailure;
                }
            }
        }
        if !enough
            && !matches!(
                d.reason,
                Reason::PassedOnRerun | Reason::PassedOnSameCommit | Reason::RateJump
            )
        {
            d.verdict = Verdict::InsufficientData;
            d.reason = Reason::TooFewRuns;
        }
        flaked_before |= d.verdict == Verdict::Flaky;
        details.push(d);
    }
    let p_not_code = finite01(alpha / (alpha + beta));
    let intensity = 0.5 * (2.0 * flip_out).min(1.0) + 0.5 * entropy_out;
    // No failure outside a regression (or none at all): nothing flaky.
    let flaky_score = if details.iter().all(|d| in_regime(obs[d.obs].version)) {
        0.0
    } else {
        finite01(p_not_code * intensity)
    };

    let hard = details
        .iter()
        .any(|d| matches!(d.reason, Reason::PassedOnRerun | Reason::PassedOnSameCommit));
    let last_failed_now = obs.last().is_some_and(|o| o.failed() && !o.passed());
    let current_failing = (last_failed_now
        && details
            .last()
            .is_some_and(|d| d.verdict == Verdict::Failing))
        || regime.is_some_and(|r| r.end == versions.len());
    let verdict = if runs == 0 {
        Verdict::InsufficientData
    } else if current_failing && enough {
        Verdict::Failing
    } else if hard {
        Verdict::Flaky
    } else if !enough {
        Verdict::InsufficientData
    } else if details.iter().any(|d| d.verdict == Verdict::Flaky) {
        Verdict::Flaky
    } else {
        Verdict::Passing
    };
    TestScore {
        runs,
        failures: details.len(),
        commits: versions.len(),
        flip_rate: finite01(flip_rate),
        entropy: finite01(entropy),
        failure_rate: finite01(failure_rate),
        p_not_code,
        flaky_score,
        verdict,
        failures_detail: details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(seq: &[(usize, u32, u32)]) -> Vec<Obs> {
        seq.iter()
            .enumerate()
            .map(|(run, &(version, f, p))| Obs {
                run,
                version,
                failed_attempts: f,
                passed_attempts: p,
                message: None,
            })
            .collect()
    }

    #[test]
    fn regime_found_for_a_jump_not_for_a_steady_rate() {
        // 20 versions of 1 attempt: 0% then 60% from version 10 on.
        let jump: Vec<(f64, f64)> = (0..20)
            .map(|i| {
                (
                    f64::from(u8::from(i >= 10 && i % 5 != 0 && i % 3 != 0)),
                    1.0,
                )
            })
            .collect();
        let r = find_regime(&jump, 1.5, 0.4).expect("a jump");
        assert_eq!((r.start, r.end), (11, 20));
        assert_eq!(r.rate_out, 0.0);
        // The same number of failures spread evenly: no change in rate.
        let steady: Vec<(f64, f64)> = (0..20)
            .map(|i| (f64::from(u8::from(i % 3 == 1)), 1.0))
            .collect();
        assert_eq!(find_regime(&steady, 1.5, 0.4), None);
        assert_eq!(find_regime(&[], 1.5, 0.4), None);
        assert_eq!(
            find_regime(&[(1.0, 1.0); 5], 1.5, 0.4),
            None,
            "broken from the start"
        );
    }

    #[test]
    fn entropy_bounds() {
        assert_eq!(binary_entropy(0.0), 0.0);
        assert!((binary_entropy(0.5) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn regression_vs_flake() {
        let known = vec![true; 20];
        let o = Options::default();
        // passes on 0..10, fails from 10 on
        let reg: Vec<_> = (0..20)
            .map(|v| (v, u32::from(v >= 10), u32::from(v < 10)))
            .collect();
        let s = score(&obs(&reg), 19, &known, &o);
        assert_eq!(s.verdict, Verdict::Failing);
        assert!(s.flaky_score < 0.1, "{}", s.flaky_score);
        // fails every third commit
        let fl: Vec<_> = (0..20)
            .map(|v| (v, u32::from(v % 3 == 1), u32::from(v % 3 != 1)))
            .collect();
        let s2 = score(&obs(&fl), 19, &known, &o);
        assert_eq!(s2.verdict, Verdict::Flaky);
        assert!(s2.flaky_score > 0.4, "{}", s2.flaky_score);
        // a rerun pass is hard evidence
        let s3 = score(&obs(&[(0, 0, 1), (1, 1, 1), (2, 0, 1)]), 2, &known, &o);
        assert_eq!(s3.verdict, Verdict::Flaky);
        assert_eq!(s3.failures_detail[0].reason, Reason::PassedOnRerun);
    }
}
