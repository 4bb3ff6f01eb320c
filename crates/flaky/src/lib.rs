//! Flaky-test analysis over JUnit reports across runs and commits.
//!
//! Each [`Run`] is one JUnit XML report of one commit. [`analyze`] parses them (plain JUnit,
//! Maven Surefire with reruns, pytest, go-junit-report, jest-junit), follows every test
//! (id `classname::name`) across runs and commits and scores how flaky it is: flip rate and
//! entropy with exponential decay across versions (Kowalczyk et al., ICSE-SEIP 2020) and a
//! Beta-Binomial estimate of the chance that a failure is not caused by the code, combined
//! into `flaky_score` in [0, 1]. A change-point model (one failure rate over the ordered
//! history against a raised rate on a stretch of commits, by BIC) finds regressions, also
//! intermittent ones. Every failure gets a verdict (`flaky`: the same code also passed at a
//! steady rate; `failing`: its failure rate jumped at a commit) with its evidence.
//!
//! [`run_spec`] is the `flaky_analysis` job kind of the Shoal contract, [`cli`] is
//! `shoal-agent flaky`, and [`sim`] generates histories with known truth for evaluation.
//! See `docs/flaky.md`.
#![warn(missing_docs)]

pub mod cli;
pub mod junit;
mod model;
pub mod sim;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use model::{Reason, Verdict};

/// One test run: a JUnit XML report of one commit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Names the run in the result (and in parse errors).
    pub run_id: String,
    /// The commit tested; empty means unknown (every such run is its own version).
    pub commit: String,
    /// RFC 3339 start time; when every run has one, runs are ordered by it, else input order.
    #[serde(default)]
    pub started_at: Option<String>,
    /// The report.
    pub junit_xml: String,
}

/// Analysis options; every field is optional in JSON and unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Versions after which evidence weighs half as much (exponential decay; 0 = no decay).
    pub decay_half_life: f64,
    /// Runs of a test below which verdicts are `insufficient_data` (unless a rerun or the
    /// same commit passed).
    pub min_runs: usize,
    /// Consecutive failing commits that make a failure `failing` (a real regression).
    pub min_failing_streak: usize,
    /// Beta prior pseudo-count for "failures of this test are not caused by the code".
    pub prior_alpha: f64,
    /// Beta prior pseudo-count for "failures of this test are caused by the code".
    pub prior_beta: f64,
    /// Scales the BIC penalty (`ln n` per extra parameter) a change in failure rate must beat
    /// to count as a regression (higher = fewer regressions found).
    pub change_penalty: f64,
    /// Lowest failure rate after a jump that can make a regression.
    pub min_regression_rate: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            decay_half_life: 30.0,
            min_runs: 3,
            min_failing_streak: 3,
            prior_alpha: 1.0,
            prior_beta: 1.0,
            change_penalty: 1.5,
            min_regression_rate: 0.4,
        }
    }
}

impl Options {
    /// Every option within its range: the half-life finite and not negative, the priors finite
    /// and positive (a score is a probability only then).
    pub fn check(&self) -> Result<(), FlakyError> {
        let bad = |m: String| Err(FlakyError::Spec(format!("options: {m}")));
        if !(self.decay_half_life >= 0.0 && self.decay_half_life <= 1e9) {
            return bad(format!(
                "decay_half_life must be between 0 and 1e9, got {}",
                self.decay_half_life
            ));
        }
        for (name, v) in [
            ("prior_alpha", self.prior_alpha),
            ("prior_beta", self.prior_beta),
        ] {
            if !(v > 0.0 && v <= 1e9) {
                return bad(format!("{name} must be above 0 and at most 1e9, got {v}"));
            }
        }
        if !(self.change_penalty >= 0.0 && self.change_penalty <= 1e3) {
            return bad(format!(
                "change_penalty must be between 0 and 1000, got {}",
                self.change_penalty
            ));
        }
        if !(self.min_regression_rate > 0.0 && self.min_regression_rate <= 1.0) {
            return bad(format!(
                "min_regression_rate must be above 0 and at most 1, got {}",
                self.min_regression_rate
            ));
        }
        Ok(())
    }
}

/// One test across all runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestReport {
    /// `classname::name`.
    pub id: String,
    /// Runs in which the test ran (skipped runs not counted).
    pub runs: usize,
    /// Runs in which at least one attempt failed.
    pub failures: usize,
    /// How flaky, in [0, 1].
    pub flaky_score: f64,
    /// The test's verdict.
    pub verdict: Verdict,
    /// Distinct commits the test ran on.
    pub commits: usize,
    /// Decayed share of consecutive outcomes that differ.
    pub flip_rate: f64,
    /// Binary entropy (bits) of the decayed failure rate.
    pub entropy: f64,
    /// Decayed failure rate.
    pub failure_rate: f64,
    /// Posterior mean of the chance a failure of this test is not caused by the code.
    pub p_not_code: f64,
}

/// One failure (a test that failed at least once in a run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureReport {
    /// The test id.
    pub test: String,
    /// The run.
    pub run_id: String,
    /// `flaky`, `failing` or `insufficient_data`.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The run's commit (empty when unknown).
    pub commit: String,
    /// The first failure message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Other runs of the same commit where the test passed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passed_in_runs: Vec<String>,
    /// First commit of the failing streak this failure belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since_commit: Option<String>,
    /// Length of that streak, in commits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failing_commits: Option<usize>,
    /// The first later commit on which the test passed again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed_again_at_commit: Option<String>,
    /// For `rate_jump`: the test's failure rate (per attempt) outside the regression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate_before: Option<f64>,
    /// For `rate_jump`: its failure rate from `failing_since_commit` on (until
    /// `passed_again_at_commit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate_since: Option<f64>,
}

/// A report that could not be parsed; the others are still analysed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileError {
    /// The run id (or file name).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

/// The analysis result, serialised as the contract's `flaky_analysis` result plus `errors`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Every test, most flaky first.
    pub tests: Vec<TestReport>,
    /// Every failure, in run order.
    pub failures: Vec<FailureReport>,
    /// Reports that could not be parsed.
    pub errors: Vec<FileError>,
}

/// Everything that can go wrong outside per-file parse errors.
#[derive(Debug, thiserror::Error)]
pub enum FlakyError {
    /// The job spec is not `{"runs": [...], "options"?}`.
    #[error("invalid flaky_analysis spec: {0}")]
    Spec(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn parse_time(s: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
    t.timestamp_nanos_opt()
        .or(Some(t.timestamp().saturating_mul(1_000_000_000)))
}

/// Analyses the runs. Reports that fail to parse are listed in `errors`; the rest are used.
pub fn analyze(runs: &[Run], options: &Options) -> Report {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    let times: Vec<Option<i64>> = runs
        .iter()
        .map(|r| r.started_at.as_deref().and_then(parse_time))
        .collect();
    if !runs.is_empty() && times.iter().all(Option::is_some) {
        order.sort_by_key(|&i| times[i]);
    }
    let mut version_known: Vec<bool> = Vec::new();
    let mut commit_version: HashMap<&str, usize> = HashMap::new();
    let mut run_version = vec![0usize; runs.len()];
    for &r in &order {
        let c = runs[r].commit.as_str();
        run_version[r] = if c.is_empty() {
            version_known.push(false);
            version_known.len() - 1
        } else {
            *commit_version.entry(c).or_insert_with(|| {
                version_known.push(true);
                version_known.len() - 1
            })
        };
    }
    let mut version_commit = vec![String::new(); version_known.len()];
    for (c, &v) in &commit_version {
        version_commit[v] = (*c).to_string();
    }

    let mut errors = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut ids: Vec<String> = Vec::new();
    let mut obs: Vec<Vec<model::Obs>> = Vec::new();
    for (pos, &r) in order.iter().enumerate() {
        match junit::parse_report(&runs[r].junit_xml) {
            Err(e) => errors.push(FileError {
                file: runs[r].run_id.clone(),
                line: e.line,
                message: e.message,
            }),
            Ok((cases, bad)) => {
                errors.extend(bad.into_iter().map(|e| FileError {
                    file: runs[r].run_id.clone(),
                    line: e.line,
                    message: e.message,
                }));
                for c in cases {
                    if c.failed_attempts == 0 && c.passed_attempts == 0 {
                        continue;
                    }
                    let t = match index.get(&c.id) {
                        Some(&t) => t,
                        None => {
                            index.insert(c.id.clone(), ids.len());
                            ids.push(c.id);
                            obs.push(Vec::new());
                            ids.len() - 1
                        }
                    };
                    obs[t].push(model::Obs {
                        run: pos,
                        version: run_version[r],
                        failed_attempts: c.failed_attempts,
                        passed_attempts: c.passed_attempts,
                        message: c.message,
                    });
                }
            }
        }
    }
    let last_version = version_known.len().saturating_sub(1);
    let commit_of = |v: usize| version_commit.get(v).cloned().unwrap_or_default();
    let mut tests = Vec::with_capacity(ids.len());
    let mut failures: Vec<(usize, FailureReport)> = Vec::new();
    for (t, id) in ids.iter().enumerate() {
        let s = model::score(&obs[t], last_version, &version_known, options);
        for d in &s.failures_detail {
            let o = &obs[t][d.obs];
            let run = &runs[order[o.run]];
            let streak = d.streak_start.is_some() && d.rates.is_none();
            failures.push((
                o.run,
                FailureReport {
                    test: id.clone(),
                    run_id: run.run_id.clone(),
                    verdict: d.verdict,
                    reason: d.reason,
                    commit: run.commit.clone(),
                    message: o.message.clone(),
                    passed_in_runs: d
                        .passed_runs
                        .iter()
                        .map(|&p| runs[order[p]].run_id.clone())
                        .collect(),
                    failing_since_commit: d.streak_start.map(commit_of).filter(|c| !c.is_empty()),
                    consecutive_failing_commits: streak.then_some(d.streak_len),
                    passed_again_at_commit: d.fixed_at.map(commit_of).filter(|c| !c.is_empty()),
                    failure_rate_before: d.rates.map(|r| round4(r.0)),
                    failure_rate_since: d.rates.map(|r| round4(r.1)),
                },
            ));
        }
        tests.push(TestReport {
            id: id.clone(),
            runs: s.runs,
            failures: s.failures,
            flaky_score: s.flaky_score,
            verdict: s.verdict,
            commits: s.commits,
            flip_rate: s.flip_rate,
            entropy: s.entropy,
            failure_rate: s.failure_rate,
            p_not_code: s.p_not_code,
        });
    }
    tests.sort_by(|a, b| {
        b.flaky_score
            .total_cmp(&a.flaky_score)
            .then_with(|| a.id.cmp(&b.id))
    });
    failures.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.test.cmp(&b.1.test)));
    Report {
        tests,
        failures: failures.into_iter().map(|(_, f)| f).collect(),
        errors,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    runs: Vec<Run>,
    #[serde(default)]
    options: Option<Options>,
}

/// Parses a `{"runs": [...], "options"?}` document (the job spec and `--runs` file).
pub fn parse_spec(spec: &Value) -> Result<(Vec<Run>, Options), FlakyError> {
    let s = Spec::deserialize(spec).map_err(|e| FlakyError::Spec(e.to_string()))?;
    let options = s.options.unwrap_or_default();
    options.check()?;
    Ok((s.runs, options))
}

/// Runs a `flaky_analysis` job: `{"runs": [{"run_id", "commit", "started_at"?, "junit_xml"}],
/// "options"?}`.
pub fn run_spec(spec: &Value) -> Result<Value, FlakyError> {
    let (runs, options) = parse_spec(spec)?;
    Ok(serde_json::to_value(analyze(&runs, &options)).expect("a report always serialises"))
}
