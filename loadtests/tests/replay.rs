//! The `replay` command's engine against a real `shoal serve` (process provider, SQLite): a small
//! workload of three tenants is played compressed, every job runs exactly once, and the comparison
//! with the simulator is computed from what Shoal's API reports. No figure is asserted against a
//! time: how close the two land is measured in docs/policy.md, not here.

use anyhow::Result;
use shoal_loadtests::replay::{self, ReplayConfig};
use shoal_loadtests::{Policy, Workload};
use shoal_testkit::server::Server;
use std::time::Duration;

/// Three tenants, 25 jobs over 80 seconds: bursts, gaps longer and shorter than the idle timeout.
fn workload() -> Workload {
    let mut rows = Vec::new();
    for k in 0..10i64 {
        // acme: a job every 8 s (gaps shorter and longer than the compressed idle timeout).
        rows.push(("acme", k * 8_000, 1_500));
        // globex: bursts of three at 0, 40 and 70 s.
        if k < 3 {
            for b in 0..3i64 {
                rows.push(("globex", [0, 40_000, 70_000][k as usize] + b * 200, 2_000));
            }
        }
        // initech: one every 20 s, longer jobs.
        if k < 4 {
            rows.push(("initech", 5_000 + k * 20_000, 4_000));
        }
    }
    // One more for acme inside a busy spell, so two of its jobs overlap.
    rows.push(("acme", 8_500, 1_500));
    rows.push(("acme", 9_000, 1_500));
    Workload::from_rows(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_runs_every_job_once_and_compares_with_the_simulator() -> Result<()> {
    let w = workload();
    assert_eq!(w.jobs.len(), 25);
    let s = Server::start(&["--idle-timeout", "2s"], &[]).await?;
    let cfg = ReplayConfig {
        url: s.url.clone(),
        token: s.token.clone(),
        compress: 4.0,
        policy: Policy::Fixed(2.0),
        latencies: None,
        settle: Duration::from_secs(90),
        warm_pool: 0,
    };
    let cmp = replay::run(&w, &cfg)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}: {}", s.log()))?;
    let r = &cmp.replayed;
    // Every job ran, once.
    assert_eq!(r.jobs, 25);
    assert_eq!(r.jobs_succeeded, 25, "{cmp:?}");
    assert_eq!(r.jobs_retried, 0, "{cmp:?}");
    // Each job's start on a sandbox shows in the jobs Shoal reports: the API counted the jobs'
    // run time, the sandboxes' billed time covers it, and at least each tenant's first job
    // waited for a boot (no sandbox existed before it).
    assert!(
        r.busy_seconds > 0.0 && r.sandbox_seconds >= r.busy_seconds,
        "{r:?}"
    );
    assert!(r.cold_starts >= 3 && r.cold_starts <= 25, "{r:?}");
    assert!(r.boots.get("create").copied().unwrap_or(0) >= 3, "{r:?}");
    assert!(r.boot_latency_s.contains_key("create"), "{r:?}");
    // The simulator ran the same compressed workload under the same policy and latencies.
    assert_eq!(cmp.predicted.jobs, 25);
    assert!(cmp.predicted.cold_starts >= 3, "{cmp:?}");
    assert_eq!(cmp.policy, "fixed:2");
    assert!(
        (cmp.sim_latencies_s[0] - r.boot_latency_s["create"]).abs() < 1e-9,
        "{cmp:?}"
    );
    let expect = (r.cold_starts as f64 - cmp.predicted.cold_starts as f64)
        / cmp.predicted.cold_starts as f64;
    assert!((cmp.cold_starts_diff - expect).abs() < 1e-9, "{cmp:?}");
    assert_eq!(
        cmp.cold_starts_within_10pct,
        cmp.cold_starts_diff.abs() <= 0.10
    );
    assert!(cmp.idle_seconds_diff.is_finite(), "{cmp:?}");
    // The JSON the command prints carries both sides.
    let v = serde_json::to_value(&cmp)?;
    assert!(v["replayed"]["cold_starts"].is_u64() && v["predicted"]["cold_starts"].is_u64());
    Ok(())
}

#[test]
fn compression_divides_arrivals_and_durations() {
    let w = Workload::from_rows([("a", 10_000i64, 4_000i64), ("b", 2_000, 1_000)]);
    let c = replay::compress(&w, 4.0);
    assert_eq!(
        c.jobs
            .iter()
            .map(|j| (j.arrival_ms, j.duration_ms))
            .collect::<Vec<_>>(),
        vec![(500, 250), (2_500, 1_000)]
    );
}
