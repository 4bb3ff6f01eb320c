//! The `fly` provider against the Fly emulator over real HTTP: the provider conformance suite
//! with the real `shoal-agent` in every machine, the agent's settings reaching its process, eventual consistency after a
//! create, a create that cannot succeed not spinning, and orphans being collected.

use shoal_fleet::conformance::{self, SuiteConfig};
use shoal_fleet::fly::{FlyConfig, FlyProvider, TAG_SANDBOX};
use shoal_fleet::{Provider, ProviderError, SandboxRef, SandboxSpec};
use shoal_testkit::fly::{Emulator, EmulatorConfig, Faults};
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

/// The emulator's config: started machines run the real `shoal-agent`, which keeps trying to
/// reach its (absent) scheduler.
fn with_agent() -> EmulatorConfig {
    EmulatorConfig::default().with_agent(shoal_testkit::bins::binary("shoal-agent", "shoal-agent"))
}

fn provider_config(emu: &Emulator, regions: &[&str]) -> FlyConfig {
    let mut cfg = FlyConfig::new(
        emu.app(),
        regions.iter().map(|r| r.to_string()).collect(),
        "registry.fly.io/shoal-agent:test",
    );
    cfg.api_url = emu.url();
    cfg.poll_interval = Duration::from_millis(500);
    cfg.state_timeout = Duration::from_secs(30);
    cfg
}

fn spec(tenant: &str, n: u32) -> SandboxSpec {
    SandboxSpec {
        sandbox_id: format!("{tenant}-sb{n}"),
        tenant: tenant.into(),
        pool: tenant.into(),
        token: format!("tok-{tenant}-{n}"),
        scheduler_url: "http://127.0.0.1:9".into(),
        size: shoal_core::SandboxSize {
            cpus: 0.5,
            memory_mb: 256,
        },
        regions: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_provider_passes_the_conformance_suite() -> anyhow::Result<()> {
    let emu = Emulator::start(with_agent()).await?;
    let (tx, mut rx) = unbounded_channel();
    let provider = FlyProvider::new(
        provider_config(&emu, &["ams", "fra"]),
        "test-token".into(),
        tx,
    )?;
    let suite = SuiteConfig {
        scheduler_url: "http://127.0.0.1:9/".into(),
        timeout: Duration::from_secs(60),
        tenant: "fly-conf".into(),
    };
    conformance::run(&provider, &mut rx, &suite).await?;
    let stats = emu.stats();
    println!(
        "conformance: {} requests, {} starts, {:.2} calls per start, {} past the rate limits, by action {:?}",
        stats.requests,
        stats.starts,
        stats.calls_per_start(),
        stats.past_rate_limit,
        stats.by_action
    );
    assert_eq!(stats.spec_violations, 0, "{:?}", stats.violation_samples);
    assert_eq!(
        stats.past_rate_limit, 0,
        "Shoal paces itself under Fly's limits"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_in_its_machine_with_the_sandboxs_settings() -> anyhow::Result<()> {
    let emu = Emulator::start(with_agent()).await?;
    let (tx, _rx) = unbounded_channel();
    let provider = FlyProvider::new(provider_config(&emu, &["ams"]), "t".into(), tx)?;
    let s = spec("agent", 1);
    let id = provider.create(&s).await?;
    let machine = emu
        .machines()
        .into_iter()
        .find(|m| m.id == id)
        .expect("the machine exists");
    assert_eq!(machine.state, "started");
    assert_eq!(machine.metadata.get("shoal_tenant"), Some(&s.tenant));
    assert_eq!(machine.metadata.get("shoal_pool"), Some(&s.pool));
    let pid = machine.pid.expect("a started machine runs the agent");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    assert!(exe.ends_with("shoal-agent"), "{exe:?}");
    let env = shoal_testkit::procfs::environ_with(pid, "FLY_MACHINE_ID").await;
    for (k, v) in s.agent_env() {
        assert_eq!(env.get(&k), Some(&v), "{k} in the agent's environment");
    }
    assert_eq!(env.get("FLY_MACHINE_ID"), Some(&id));
    let sandbox = SandboxRef {
        sandbox_id: s.sandbox_id.clone(),
        tenant: s.tenant.clone(),
        provider_id: id,
    };
    provider.destroy(&sandbox).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_just_after_create_is_not_absence() -> anyhow::Result<()> {
    let faults = Faults {
        not_found_after_create_ms: 1500,
        ..Default::default()
    };
    let emu = Emulator::start(EmulatorConfig {
        faults,
        ..Default::default()
    })
    .await?;
    let (tx, mut rx) = unbounded_channel();
    let provider = FlyProvider::new(provider_config(&emu, &["ams"]), "t".into(), tx)?;
    let id = provider.create(&spec("ec", 1)).await?;
    let obs = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await?
        .unwrap();
    assert_eq!(
        (obs.sandbox.provider_id.as_str(), obs.state),
        (id.as_str(), shoal_fleet::ObservedState::Running)
    );
    let stats = emu.stats();
    assert!(
        stats.early_not_found > 0,
        "the emulator did answer 404s: {stats:?}"
    );
    assert_eq!(
        stats.action("Machines_create"),
        1,
        "the create was not repeated"
    );
    assert_eq!(stats.spec_violations + stats.past_rate_limit, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_cannot_succeed_does_not_spin() -> anyhow::Result<()> {
    let faults = Faults {
        no_capacity: vec!["ams".into(), "fra".into(), "ord".into()],
        ..Default::default()
    };
    let emu = Emulator::start(EmulatorConfig {
        faults,
        ..Default::default()
    })
    .await?;
    let (tx, _rx) = unbounded_channel();
    let provider = FlyProvider::new(
        provider_config(&emu, &["ams", "fra", "ord"]),
        "t".into(),
        tx,
    )?;
    let s = spec("full", 1);
    let first = provider.create(&s).await;
    assert!(
        matches!(first, Err(ProviderError::Capacity(_))),
        "{first:?}"
    );
    assert_eq!(
        emu.stats().action("Machines_create"),
        3,
        "each region tried once"
    );
    // Asked again at once (a planner in a tight loop): no new call.
    for _ in 0..20 {
        assert!(provider.create(&s).await.is_err());
    }
    assert_eq!(
        emu.stats().action("Machines_create"),
        3,
        "a failing create must never spin"
    );

    // A bad image is permanent: one call, then the backoff.
    let emu2 = Emulator::start(EmulatorConfig::default()).await?;
    let (tx, _rx) = unbounded_channel();
    let mut cfg = provider_config(&emu2, &["mars"]);
    cfg.regions = vec!["mars".into()];
    let provider = FlyProvider::new(cfg, "t".into(), tx)?;
    let r = provider.create(&spec("bad", 1)).await;
    assert!(matches!(r, Err(ProviderError::Permanent(_))), "{r:?}");
    let _ = provider.create(&spec("bad", 1)).await;
    assert_eq!(emu2.stats().action("Machines_create"), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_the_store_does_not_know_are_collected() -> anyhow::Result<()> {
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    let (tx, _rx) = unbounded_channel();
    let provider = FlyProvider::new(provider_config(&emu, &["ams"]), "t".into(), tx)?;
    let keep = provider.create(&spec("orph", 1)).await?;
    let lost = provider.create(&spec("orph", 2)).await?;
    let collected =
        shoal_fleet::orphans::collect_unknown(&provider, |sandbox: &str| sandbox == "orph-sb1")
            .await?;
    assert_eq!(
        collected
            .iter()
            .map(|c| c.sandbox.provider_id.as_str())
            .collect::<Vec<_>>(),
        vec![lost.as_str()]
    );
    let left: Vec<_> = provider
        .list()
        .await?
        .into_iter()
        .map(|o| o.sandbox.provider_id)
        .collect();
    assert_eq!(left, vec![keep]);
    let tags: Vec<_> = emu
        .machines()
        .into_iter()
        .map(|m| m.metadata[TAG_SANDBOX].clone())
        .collect();
    assert!(tags.contains(&"orph-sb1".to_string()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_sandbox_make_one_machine() -> anyhow::Result<()> {
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    let (tx, _rx) = unbounded_channel();
    let provider = FlyProvider::new(provider_config(&emu, &["ams"]), "t".into(), tx)?;
    let s = spec("twice", 1);
    let (a, b) = tokio::join!(provider.create(&s), provider.create(&s));
    assert_eq!(a?, b?);
    assert_eq!(emu.stats().action("Machines_create"), 1);
    assert_eq!(emu.machines().len(), 1);
    Ok(())
}
