//! Evaluates `flaky_score` and the verdicts on generated histories with known truth:
//! ROC AUC of the score (flaky tests vs stable and regressed ones) and the precision and
//! recall of the `flaky` and `failing` verdicts. Run with
//! `cargo run --release -p shoal-flaky --example evaluate`.

use std::collections::HashMap;

use shoal_flaky::sim::{SimConfig, roc_auc, simulate};
use shoal_flaky::{Options, Verdict, analyze};

fn main() {
    for (label, cfg) in [
        ("1 run per commit, 60 commits", SimConfig::default()),
        (
            "2 runs per commit, 60 commits",
            SimConfig {
                runs_per_commit: 2,
                ..SimConfig::default()
            },
        ),
        (
            "1 run per commit, 20 commits",
            SimConfig {
                commits: 20,
                ..SimConfig::default()
            },
        ),
    ] {
        let mut aucs = Vec::new();
        let (mut tp_f, mut fp_f, mut fn_f) = (0, 0, 0);
        let (mut tp_r, mut fp_r, mut fn_r) = (0, 0, 0);
        for seed in 1..=5 {
            let sim = simulate(&SimConfig {
                seed,
                ..cfg.clone()
            });
            let report = analyze(&sim.runs, &Options::default());
            let by_id: HashMap<&str, _> = report.tests.iter().map(|t| (t.id.as_str(), t)).collect();
            let mut samples = Vec::new();
            for t in &sim.truth {
                let r = by_id[t.id.as_str()];
                let flaky = t.flake_p > 0.0;
                samples.push((r.flaky_score, flaky));
                let said_flaky = r.verdict == Verdict::Flaky;
                match (flaky, said_flaky) {
                    (true, true) => tp_f += 1,
                    (false, true) => fp_f += 1,
                    (true, false) => fn_f += 1,
                    _ => {}
                }
                // a currently broken regression should be `failing`
                let broken_now = t
                    .regression
                    .is_some_and(|(_, fix)| fix.is_none_or(|f| f >= cfg.commits));
                let said_failing = r.verdict == Verdict::Failing;
                match (broken_now, said_failing) {
                    (true, true) => tp_r += 1,
                    (false, true) => fp_r += 1,
                    (true, false) => fn_r += 1,
                    _ => {}
                }
            }
            aucs.push(roc_auc(&samples));
        }
        let mean = aucs.iter().sum::<f64>() / aucs.len() as f64;
        let min = aucs.iter().copied().fold(f64::INFINITY, f64::min);
        let pr = |tp: i32, fp: i32, fn_: i32| {
            (
                tp as f64 / (tp + fp).max(1) as f64,
                tp as f64 / (tp + fn_).max(1) as f64,
            )
        };
        let (pf, rf) = pr(tp_f, fp_f, fn_f);
        let (pr_, rr) = pr(tp_r, fp_r, fn_r);
        println!(
            "{label} (500 tests, seeds 1-5): AUC mean {mean:.3} (min {min:.3}); \
             verdict flaky precision {pf:.3} recall {rf:.3}; verdict failing precision {pr_:.3} recall {rr:.3}"
        );
    }
}
