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
