//! A seeded generator of test histories with known truth (flaky probabilities and injected
//! regressions), and ROC AUC, to evaluate the score. Used by the tests, the benchmark and
//! `examples/evaluate.rs`.

use std::fmt::Write as _;

use crate::Run;

/// A small deterministic PRNG (xorshift64*), so results do not depend on a crate version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of tests.
    pub tests: usize,
    /// Number of commits, in order.
    pub commits: usize,
    /// Runs of each commit.
    pub runs_per_commit: usize,
    /// Share of tests that are flaky (failure probability drawn log-uniformly in
    /// [`min_flake_p`, `max_flake_p`]).
    pub flaky_fraction: f64,
    /// Share of tests with an injected permanent regression (fail on every run from a commit
    /// on; half are fixed some commits later).
    pub regression_fraction: f64,
    /// Share of tests with an injected intermittent regression: from a commit on (until a fix,
    /// for half of them) each attempt fails with a probability drawn uniformly in
    /// [`min_regression_p`, 1).
    pub intermittent_fraction: f64,
    /// Smallest failure probability of an intermittent regression.
    pub min_regression_p: f64,
    /// Smallest flake probability.
    pub min_flake_p: f64,
    /// Largest flake probability.
    pub max_flake_p: f64,
    /// Chance a failing run is retried once in the same run, Surefire style.
    pub rerun_probability: f64,
    /// The seed.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            tests: 500,
            commits: 60,
            runs_per_commit: 1,
            flaky_fraction: 0.15,
            regression_fraction: 0.05,
            intermittent_fraction: 0.05,
            min_regression_p: 0.5,
            min_flake_p: 0.02,
            max_flake_p: 0.3,
            rerun_probability: 0.2,
            seed: 42,
        }
    }
}

/// The truth about one generated test.
#[derive(Debug, Clone, PartialEq)]
pub struct Truth {
    /// Test id, as the analysis names it.
    pub id: String,
    /// Chance that a run fails regardless of the code (0 for stable tests).
    pub flake_p: f64,
    /// The commit from which the code makes it fail, and the commit that fixes it.
    pub regression: Option<(usize, Option<usize>)>,
    /// The chance an attempt fails while the regression is in (1 for a permanent one).
    pub regression_p: f64,
}

impl Truth {
    /// Whether the code makes the test fail at commit `c`.
    pub fn broken_at(&self, c: usize) -> bool {
        self.regression
            .is_some_and(|(s, fix)| c >= s && fix.is_none_or(|f| c < f))
    }
}

/// Generated runs and the truth behind them.
#[derive(Debug, Clone)]
pub struct Simulated {
    /// The runs, in order, one JUnit report each.
    pub runs: Vec<Run>,
    /// One entry per test.
    pub truth: Vec<Truth>,
}

/// Generates a history.
pub fn simulate(cfg: &SimConfig) -> Simulated {
    let mut rng = Rng::new(cfg.seed);
    let truth: Vec<Truth> = (0..cfg.tests)
        .map(|t| {
            let u = rng.unit();
            let class = format!("com.example.module{}.Suite{}Test", t % 7, t % 31);
            let id = format!("{class}::test_{t}");
            if u < cfg.flaky_fraction {
                let (lo, hi) = (cfg.min_flake_p.ln(), cfg.max_flake_p.ln());
                Truth {
                    id,
                    flake_p: (lo + rng.unit() * (hi - lo)).exp(),
                    regression: None,
                    regression_p: 0.0,
                }
            } else if u < cfg.flaky_fraction + cfg.regression_fraction + cfg.intermittent_fraction {
                let start = cfg.commits / 4
                    + (rng.next_u64() as usize) % (cfg.commits - cfg.commits / 4).max(1);
                let fixed = (rng.unit() < 0.5).then(|| start + 3 + (rng.next_u64() as usize) % 8);
                let regression_p = if u < cfg.flaky_fraction + cfg.regression_fraction {
                    1.0
                } else {
                    cfg.min_regression_p + rng.unit() * (1.0 - cfg.min_regression_p)
                };
                Truth {
                    id,
                    flake_p: 0.0,
                    regression: Some((start, fixed)),
                    regression_p,
                }
            } else {
                Truth {
                    id,
                    flake_p: 0.0,
                    regression: None,
                    regression_p: 0.0,
                }
            }
        })
        .collect();
    let mut runs = Vec::with_capacity(cfg.commits * cfg.runs_per_commit);
    for c in 0..cfg.commits {
        for k in 0..cfg.runs_per_commit {
            let mut xml = String::with_capacity(cfg.tests * 120);
            xml.push_str(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"sim\" tests=\"",
            );
            let _ = writeln!(xml, "{}\" errors=\"0\" skipped=\"0\">", cfg.tests);
            for t in &truth {
                let (class, name) = t.id.split_once("::").unwrap_or(("", &t.id));
                let p_fail = if t.broken_at(c) {
                    t.regression_p
                } else {
                    t.flake_p
                };
                let _ = write!(
                    xml,
                    "  <testcase classname=\"{class}\" name=\"{name}\" time=\"0.01\""
                );
                let (msg, ty) = if t.broken_at(c) {
                    ("expected 2 but was 3", "AssertionError")
                } else {
                    ("timeout", "java.net.SocketTimeoutException")
                };
                if rng.unit() < p_fail {
                    // Failed; maybe retried once in the same run, Surefire style.
                    if rng.unit() < cfg.rerun_probability {
                        if rng.unit() < p_fail {
                            let _ = writeln!(
                                xml,
                                "><failure message=\"{msg}\" type=\"{ty}\">at Foo.java:12</failure><rerunFailure message=\"{msg}\" type=\"{ty}\"/></testcase>"
                            );
                        } else {
                            let _ = writeln!(
                                xml,
                                "><flakyFailure message=\"{msg}\" type=\"{ty}\"><stackTrace>at Net.read</stackTrace></flakyFailure></testcase>"
                            );
                        }
                    } else {
                        let _ = writeln!(
                            xml,
                            "><failure message=\"{msg}\" type=\"{ty}\">at Foo.java:12</failure></testcase>"
                        );
                    }
                } else {
                    xml.push_str("/>\n");
                }
            }
            xml.push_str("</testsuite>\n");
            runs.push(Run {
                run_id: format!("run-{c}-{k}"),
                commit: format!("c{c:04x}"),
                started_at: Some(format!(
                    "2024-05-{:02}T{:02}:{:02}:00Z",
                    1 + (c * cfg.runs_per_commit + k) / 1440 % 28,
                    (c * cfg.runs_per_commit + k) / 60 % 24,
                    (c * cfg.runs_per_commit + k) % 60
                )),
                junit_xml: xml,
            });
        }
    }
    Simulated { runs, truth }
}

/// ROC AUC of `(score, is_positive)` pairs (Mann–Whitney U, ties count half); 0.5 when a
/// class is empty.
pub fn roc_auc(samples: &[(f64, bool)]) -> f64 {
    let mut v: Vec<(f64, bool)> = samples.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos, mut i) = (0.0, 0usize, 0usize);
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0; // ranks i+1..=j
        for s in &v[i..j] {
            if s.1 {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j;
    }
    let neg = v.len() - pos;
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_basics() {
        assert_eq!(roc_auc(&[(0.1, false), (0.9, true)]), 1.0);
        assert_eq!(roc_auc(&[(0.9, false), (0.1, true)]), 0.0);
        assert_eq!(roc_auc(&[(0.5, false), (0.5, true)]), 0.5);
        assert_eq!(roc_auc(&[(0.5, true)]), 0.5);
    }
}
