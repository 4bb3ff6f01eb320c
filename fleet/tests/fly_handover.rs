//! Failover on the `fly` provider, against the strict emulator over real HTTP: a leader creates
//! machines (each create takes a 60 s lease) and dies without releasing anything; a successor
//! that did not keep the nonces is refused with 409 ("lease currently held") and must look the
//! lease up, while one given the same [`LeaseKeeper`] (the store, in the scheduler) suspends and
//! destroys every machine at once, without a refused call, a lookup or a new lease.

use shoal_fleet::fly::{FlyConfig, FlyProvider};
use shoal_fleet::{LeaseKeeper, MemoryLeases, Provider, SandboxRef, SandboxSpec};
use shoal_testkit::fly::{Emulator, EmulatorConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

fn spec(n: u32) -> SandboxSpec {
    SandboxSpec {
        sandbox_id: format!("acme-sb{n}"),
        tenant: "acme".into(),
        pool: "acme".into(),
        token: format!("tok-{n}"),
        scheduler_url: "http://127.0.0.1:9".into(),
        size: shoal_core::SandboxSize {
            cpus: 1.0,
            memory_mb: 256,
        },
        regions: Vec::new(),
    }
}

fn provider(emu: &Emulator, keeper: Option<Arc<dyn LeaseKeeper>>) -> anyhow::Result<FlyProvider> {
    let mut cfg = FlyConfig::new(
        emu.app(),
        vec!["ams".into()],
        "registry.fly.io/shoal-agent:test",
    );
    cfg.api_url = emu.url();
    cfg.poll_interval = Duration::from_millis(500);
    cfg.state_timeout = Duration::from_secs(60);
    cfg.lease_ttl = Duration::from_secs(60);
    let (tx, _rx) = unbounded_channel();
    let p = FlyProvider::new(cfg, "test-token".into(), tx)?;
    if let Some(k) = keeper {
        p.keep_leases_in(k);
    }
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_uses_the_kept_leases_and_is_never_refused() -> anyhow::Result<()> {
    let emu = Emulator::start(
        EmulatorConfig {
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        }
        .strict(),
    )
    .await?;
    let keeper: Arc<dyn LeaseKeeper> = Arc::new(MemoryLeases::default());
    let leader = provider(&emu, Some(Arc::clone(&keeper)))?;
    let mut refs = Vec::new();
    for n in 1..=3 {
        let s = spec(n);
        let id = leader.create(&s).await?;
        refs.push(SandboxRef {
            sandbox_id: s.sandbox_id,
            tenant: s.tenant,
            provider_id: id,
        });
    }
    // The keeper's writes run in the background of the calls: let them land.
    for r in &refs {
        for _ in 0..100 {
            if keeper.recall(&r.provider_id).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(keeper.recall(&r.provider_id).await.is_some(), "{r:?}");
    }
    // The leader dies (SIGKILL: nothing released, nothing said).
    drop(leader);

    // A successor without the kept nonces is refused (409) and must look the lease up first.
    let leases = |s: &shoal_testkit::fly::Stats| {
        (
            s.action("Machines_create_lease"),
            s.action("Machines_show_lease"),
        )
    };
    let before = emu.stats();
    let blind = provider(&emu, None)?;
    blind.took_over();
    blind.suspend(&refs[0]).await?;
    let after = emu.stats();
    let (taken, shown) = (leases(&before), leases(&after));
    assert!(
        shown.0 > taken.0 && shown.1 > taken.1,
        "a successor without the nonces was not refused first: {after:?}"
    );
    drop(blind);

    // A successor with them acts on every machine at once: no lease taken, none looked up.
    let before = emu.stats();
    let successor = provider(&emu, Some(Arc::clone(&keeper)))?;
    successor.took_over();
    successor.suspend(&refs[1]).await?;
    successor.destroy(&refs[2]).await?;
    let after = emu.stats();
    assert_eq!(
        leases(&after),
        leases(&before),
        "the successor took or looked up leases instead of using the kept ones: {after:?}"
    );
    let states: Vec<(String, String)> = emu
        .machines()
        .into_iter()
        .map(|m| (m.id, m.state))
        .collect();
    for r in &refs[..2] {
        assert!(
            states
                .iter()
                .any(|(id, st)| *id == r.provider_id && (st == "suspended" || st == "suspending")),
            "{r:?} not suspended: {states:?}"
        );
    }
    assert!(
        keeper.recall(&refs[2].provider_id).await.is_none(),
        "a destroyed machine's lease is forgotten"
    );
    Ok(())
}
