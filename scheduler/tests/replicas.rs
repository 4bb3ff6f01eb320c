//! Several scheduler replicas on one Postgres and one Redis, under faults: replicas (the leader
//! among them) are killed with SIGKILL and restarted again and again while jobs flow in over HTTP
//! and through the apalis ingress queue, and Postgres itself restarts once. At the end every
//! accepted job is in exactly one terminal state, recorded once; no idempotency key made two jobs;
//! and the usage report equals the total computed independently from the ledger.
//!
//! The run and its checks are `shoal_loadtests::faults`; this is its small size. The large run,
//! 20,000 jobs across 100 tenants on release binaries, is `loadtests/faults.sh`.

use anyhow::Result;
use shoal_loadtests::faults::{FaultConfig, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_lose_nothing_and_double_nothing_under_kills() -> Result<()> {
    let mut cfg = FaultConfig::new(240, 8);
    cfg.clients = 2;
    cfg.pace = Duration::from_millis(25);
    cfg.kill_every = Duration::from_millis(1500);
    cfg.min_kills = 6;
    cfg.command = "sleep 0.05; echo {key}".into();
    let Some(report) = run(cfg).await? else {
        return Ok(());
    };
    assert!(report.kills >= 6, "only {} kills", report.kills);
    assert_eq!(report.postgres_restarts, 1);
    assert!(report.via_ingress > 0 && report.via_http > 0);
    eprintln!("{report:#?}");
    Ok(())
}

/// The same run with its sandboxes on the strict Fly emulator (each machine a real agent), kills
/// going on until the last job has finished; then, besides the checks above: within 40 s of the
/// last job no sandbox is booting and no machine running, no unknown machine was collected
/// twice, and no request went past Fly's rate limits. The long run is
/// `loadtests/faults.sh --fly` (docs/providers/fly.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_fly_fail_over_without_a_freeze() -> Result<()> {
    let mut cfg = FaultConfig::new(90, 3);
    cfg.clients = 2;
    cfg.pace = Duration::from_millis(40);
    cfg.kill_every = Duration::from_secs(3);
    cfg.min_kills = 4;
    cfg.max_sandboxes = 2;
    cfg.command = "sleep 0.05; echo {key}".into();
    cfg.fly = true;
    cfg.verbose = true;
    let Some(report) = run(cfg).await? else {
        return Ok(());
    };
    assert!(report.kills >= 4, "only {} kills", report.kills);
    let fly = report.fly.as_ref().expect("fly figures");
    assert_eq!(fly.past_rate_limit, 0);
    eprintln!("{report:#?}");
    Ok(())
}
