//! Placement by region on the `fly` provider, against the emulator over real HTTP: two tenants
//! preferring different regions each get their machines in their first region, in their second
//! when the first is out of capacity, and never in a region outside their list (a create whose
//! regions are all full fails with a capacity error instead); a tenant without a list is placed
//! by the fleet's configured regions.

use shoal_fleet::fly::{FlyConfig, FlyProvider};
use shoal_fleet::{Provider, ProviderError, SandboxSpec};
use shoal_testkit::fly::{Emulator, EmulatorConfig, Faults};
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

fn spec(tenant: &str, n: u32, regions: &[&str]) -> SandboxSpec {
    SandboxSpec {
        sandbox_id: format!("{tenant}-sb{n}"),
        tenant: tenant.into(),
        pool: tenant.into(),
        token: format!("tok-{tenant}-{n}"),
        scheduler_url: "http://127.0.0.1:9".into(),
        size: shoal_core::SandboxSize {
            cpus: 1.0,
            memory_mb: 256,
        },
        regions: regions.iter().map(|r| r.to_string()).collect(),
    }
}

/// The region of the emulator's machine for `sandbox`.
fn region_of(emu: &Emulator, sandbox: &str) -> Option<String> {
    emu.machines()
        .into_iter()
        .find(|m| m.metadata.get("shoal_sandbox").map(String::as_str) == Some(sandbox))
        .map(|m| m.region)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_go_to_their_tenants_regions_in_order_and_never_outside() -> anyhow::Result<()> {
    let emu = Emulator::start(EmulatorConfig {
        regions: vec!["ams".into(), "fra".into(), "ord".into(), "iad".into()],
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    })
    .await?;
    let mut cfg = FlyConfig::new(
        emu.app(),
        vec!["ams".into(), "fra".into(), "ord".into(), "iad".into()],
        "registry.fly.io/shoal-agent:test",
    );
    cfg.api_url = emu.url();
    cfg.poll_interval = Duration::from_millis(500);
    cfg.state_timeout = Duration::from_secs(60);
    let (tx, _rx) = unbounded_channel();
    let provider = FlyProvider::new(cfg, "test-token".into(), tx)?;
    let frankfurt: &[&str] = &["fra", "ams"];
    let chicago: &[&str] = &["ord", "iad"];

    // Capacity everywhere: each tenant's first region.
    for n in 1..=2 {
        for (tenant, regions) in [("frankfurt", frankfurt), ("chicago", chicago)] {
            let s = spec(tenant, n, regions);
            provider.create(&s).await?;
            assert_eq!(
                region_of(&emu, &s.sandbox_id).as_deref(),
                Some(regions[0]),
                "{}",
                s.sandbox_id
            );
        }
    }
    // A tenant without regions: the fleet's first region.
    let plain = spec("plain", 1, &[]);
    provider.create(&plain).await?;
    assert_eq!(region_of(&emu, &plain.sandbox_id).as_deref(), Some("ams"));

    // Both first regions full: each tenant's second, not the fleet's first (`ams` for chicago).
    emu.set_faults(Faults {
        no_capacity: vec!["fra".into(), "ord".into()],
        ..Default::default()
    });
    for n in 3..=4 {
        for (tenant, regions) in [("frankfurt", frankfurt), ("chicago", chicago)] {
            let s = spec(tenant, n, regions);
            provider.create(&s).await?;
            assert_eq!(
                region_of(&emu, &s.sandbox_id).as_deref(),
                Some(regions[1]),
                "{}",
                s.sandbox_id
            );
        }
    }

    // All of frankfurt's regions full: its create fails for capacity, though `ord` and `iad`
    // have room; chicago, with room in `iad`, is placed there.
    emu.set_faults(Faults {
        no_capacity: vec!["fra".into(), "ams".into(), "ord".into()],
        ..Default::default()
    });
    let stuck = spec("frankfurt", 5, frankfurt);
    match provider.create(&stuck).await {
        Err(ProviderError::Capacity(msg)) => {
            assert!(msg.contains("fra") && msg.contains("ams"), "{msg}")
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
    assert_eq!(region_of(&emu, &stuck.sandbox_id), None);
    let s = spec("chicago", 5, chicago);
    provider.create(&s).await?;
    assert_eq!(region_of(&emu, &s.sandbox_id).as_deref(), Some("iad"));

    // Never outside a tenant's list, over every machine made.
    let machines = emu.machines();
    assert_eq!(machines.len(), 10, "{machines:?}");
    for m in machines {
        let tenant = m.metadata.get("shoal_tenant").cloned().unwrap_or_default();
        let allowed: &[&str] = match tenant.as_str() {
            "frankfurt" => frankfurt,
            "chicago" => chicago,
            _ => &["ams", "fra", "ord", "iad"],
        };
        assert!(
            allowed.contains(&m.region.as_str()),
            "{} of {tenant} in {}",
            m.id,
            m.region
        );
    }
    Ok(())
}
