//! Evaluates `flaky_score` and the verdicts on generated histories with known truth (flaky
//! tests, permanent regressions, intermittent regressions, stable tests): ROC AUC of the score
//! (flaky tests vs all others), and per failure the precision and recall of the `flaky` and
//! `failing` verdicts and the share given the right verdict. Seeds 1-5 are the ones the
//! defaults were tuned on; seeds 101-120 are held out. Run with
//! `cargo run --release -p shoal-flaky --example evaluate`.

use std::collections::HashMap;

use shoal_flaky::sim::{SimConfig, roc_auc, simulate};
use shoal_flaky::{Options, Verdict, analyze};

struct Tally {
    aucs: Vec<f64>,
    ceiling: Vec<f64>,
    /// The best any score computed from the history can reach: failed flaky tests first, then
    /// every test that never failed (a flaky one is indistinguishable from a stable one: a tie),
    /// then the regressions that failed.
    best: Vec<f64>,
    /// The AUC over the tests that failed at least once in the window only (flaky tests that
    /// failed against regressions that failed: stable tests never fail).
    failed_aucs: Vec<f64>,
    /// Share of the flaky tests that failed at least once in the window.
    flaky_seen: Vec<f64>,
    // [truth flaky, truth regression] x [said flaky, said failing, other]
    m: [[usize; 3]; 2],
}

fn evaluate(cfg: &SimConfig, seeds: impl Iterator<Item = u64>, opts: &Options) -> Tally {
    let mut t = Tally {
        aucs: Vec::new(),
        ceiling: Vec::new(),
        best: Vec::new(),
        failed_aucs: Vec::new(),
        flaky_seen: Vec::new(),
        m: [[0; 3]; 2],
    };
    for seed in seeds {
        let sim = simulate(&SimConfig {
            seed,
            ..cfg.clone()
        });
        let report = analyze(&sim.runs, opts);
        let by_id: HashMap<&str, _> = report.tests.iter().map(|t| (t.id.as_str(), t)).collect();
        let truth: HashMap<&str, _> = sim.truth.iter().map(|t| (t.id.as_str(), t)).collect();
        let samples: Vec<(f64, bool)> = sim
            .truth
            .iter()
            .map(|tr| (by_id[tr.id.as_str()].flaky_score, tr.flake_p > 0.0))
            .collect();
        t.aucs.push(roc_auc(&samples));
        // The best any score can do: flaky tests that never failed look like stable ones.
        let failed: std::collections::HashSet<&str> =
            report.failures.iter().map(|f| f.test.as_str()).collect();
        let oracle: Vec<(f64, bool)> = sim
            .truth
            .iter()
            .map(|tr| {
                let fl = tr.flake_p > 0.0;
                (
                    f64::from(u8::from(fl && failed.contains(tr.id.as_str()))),
                    fl,
                )
            })
            .collect();
        t.ceiling.push(roc_auc(&oracle));
        let best: Vec<(f64, bool)> = sim
            .truth
            .iter()
            .map(|tr| {
                let fl = tr.flake_p > 0.0;
                let score = match (failed.contains(tr.id.as_str()), fl) {
                    (true, true) => 1.0,
                    (false, _) => 0.5,
                    (true, false) => 0.0,
                };
                (score, fl)
            })
            .collect();
        t.best.push(roc_auc(&best));
        let failed_only: Vec<(f64, bool)> = sim
            .truth
            .iter()
            .filter(|tr| failed.contains(tr.id.as_str()))
            .map(|tr| (by_id[tr.id.as_str()].flaky_score, tr.flake_p > 0.0))
            .collect();
        t.failed_aucs.push(roc_auc(&failed_only));
        let flaky = sim.truth.iter().filter(|tr| tr.flake_p > 0.0);
        let (n, seen) = flaky.fold((0usize, 0usize), |(n, s), tr| {
            (n + 1, s + usize::from(failed.contains(tr.id.as_str())))
        });
        t.flaky_seen.push(seen as f64 / n.max(1) as f64);
        for f in &report.failures {
            let c = usize::from_str_radix(f.commit.trim_start_matches('c'), 16).unwrap();
            let row = usize::from(truth[f.test.as_str()].broken_at(c));
            let col = match f.verdict {
                Verdict::Flaky => 0,
                Verdict::Failing => 1,
                _ => 2,
            };
            t.m[row][col] += 1;
            if std::env::var_os("EVAL_DEBUG").is_some() && (row == 0) != (col == 0) {
                eprintln!(
                    "wrong: truth {row} said {:?} {:?} {}",
                    f.verdict, f.reason, f.test
                );
            }
        }
    }
    t
}

fn main() {
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let d = Options::default();
    let opts = Options {
        change_penalty: env("EVAL_PENALTY", d.change_penalty),
        min_regression_rate: env("EVAL_MIN_RATE", d.min_regression_rate),
        ..d
    };
    for (label, cfg) in [
        ("60 commits, 1 run each", SimConfig::default()),
        (
            "60 commits, 2 runs each",
            SimConfig {
                runs_per_commit: 2,
                ..SimConfig::default()
            },
        ),
        (
            "20 commits, 1 run each",
            SimConfig {
                commits: 20,
                ..SimConfig::default()
            },
        ),
    ] {
        let sets = if std::env::var_os("EVAL_TUNE").is_some() {
            vec![("tuned 1-5", 1..=5u64)]
        } else {
            vec![("tuned 1-5", 1..=5u64), ("held-out 101-120", 101..=120u64)]
        };
        for (set, seeds) in sets {
            let t = evaluate(&cfg, seeds, &opts);
            let mean = t.aucs.iter().sum::<f64>() / t.aucs.len() as f64;
            let min = t.aucs.iter().copied().fold(f64::INFINITY, f64::min);
            let m = t.m;
            let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
            let (p_fl, r_fl) = (
                ratio(m[0][0], m[0][0] + m[1][0]),
                ratio(m[0][0], m[0].iter().sum()),
            );
            let (p_fa, r_fa) = (
                ratio(m[1][1], m[1][1] + m[0][1]),
                ratio(m[1][1], m[1].iter().sum()),
            );
            let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let ceil = avg(&t.ceiling);
            let best = avg(&t.best);
            let failed_auc = avg(&t.failed_aucs);
            let failed_min = t.failed_aucs.iter().copied().fold(f64::INFINITY, f64::min);
            let seen = avg(&t.flaky_seen);
            let total: usize = m.iter().flatten().sum();
            let right = ratio(m[0][0] + m[1][1], total);
            println!(
                "| {label} | {set} | {mean:.3} ({min:.3}) | {ceil:.3} | {best:.3} | {seen:.3} | {failed_auc:.3} ({failed_min:.3}) | {p_fl:.3} / {r_fl:.3} | {p_fa:.3} / {r_fa:.3} | {right:.3} ({total}) |"
            );
        }
    }
}
