//! The `fly` provider under Fly's faults, against the emulator over real HTTP (every machine
//! running the real `shoal-agent`): 10% of calls
//! answering 5xx, bursts of 429, one region out of capacity, and (strict mode) a new machine
//! answering 404 for a moment after its create. Every call still succeeds, the
//! emulator counts no request past Fly's published rate limits (Shoal paces itself), a sandbox
//! start costs at most 3 API calls on average, and the observations follow each machine's life
//! in order, stamped with the machines' own event times.

use futures::future::join_all;
use shoal_fleet::fly::{FlyConfig, FlyProvider};
use shoal_fleet::{ObservedState, Provider, SandboxRef, SandboxSpec};
use shoal_testkit::fly::{Emulator, EmulatorConfig, Faults, Stats, ThrottleBursts};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const PER_TENANT: u32 = 4;

fn spec(tenant: &str, n: u32) -> SandboxSpec {
    SandboxSpec {
        sandbox_id: format!("{tenant}-sb{n}"),
        tenant: tenant.into(),
        pool: format!("{tenant}-pool"),
        token: format!("tok-{tenant}-{n}"),
        scheduler_url: "http://127.0.0.1:9".into(),
        size: shoal_core::SandboxSize {
            cpus: 1.0,
            memory_mb: 512,
        },
        regions: Vec::new(),
    }
}

/// API calls between two snapshots, the app-wide list (observation polling) aside.
fn calls_between(before: &Stats, after: &Stats) -> u64 {
    let list = |s: &Stats| s.action("Machines_list");
    (after.requests - list(after)) - (before.requests - list(before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_calls_succeed_within_limits_and_starts_stay_cheap() -> anyhow::Result<()> {
    let faults = Faults {
        server_error_fraction: 0.10,
        throttle: Some(ThrottleBursts {
            every_ms: 5_000,
            length_ms: 500,
        }),
        no_capacity: vec!["ams".into()],
        ..Default::default()
    };
    let emu = Emulator::start(
        EmulatorConfig {
            faults,
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        }
        // Fly's eventual consistency too: a new machine answers 404 for a moment after its create.
        .strict(),
    )
    .await?;
    let mut cfg = FlyConfig::new(
        emu.app(),
        vec!["ams".into(), "fra".into(), "ord".into()],
        "registry.fly.io/shoal-agent:test",
    );
    cfg.api_url = emu.url();
    cfg.poll_interval = Duration::from_millis(500);
    cfg.state_timeout = Duration::from_secs(60);
    if let Ok(ttl) = std::env::var("FLY_TEST_LEASE_TTL") {
        cfg.lease_ttl = humantime::parse_duration(&ttl)?;
    }
    let (tx, mut rx) = unbounded_channel();
    let provider = FlyProvider::new(cfg, "test-token".into(), tx)?;
    let specs: Vec<SandboxSpec> = TENANTS
        .iter()
        .flat_map(|t| (1..=PER_TENANT).map(move |n| spec(t, n)))
        .collect();
    let n = specs.len() as u64;

    let s0 = emu.stats();
    let ids = join_all(specs.iter().map(|s| provider.create(s))).await;
    let refs: Vec<SandboxRef> = specs
        .iter()
        .zip(ids)
        .map(|(s, id)| {
            Ok(SandboxRef {
                sandbox_id: s.sandbox_id.clone(),
                tenant: s.tenant.clone(),
                provider_id: id?,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let s1 = emu.stats();
    for r in join_all(refs.iter().map(|r| provider.suspend(r))).await {
        r?;
    }
    let s2 = emu.stats();
    for r in join_all(refs.iter().map(|r| provider.resume(r))).await {
        r?;
    }
    let s3 = emu.stats();
    for r in join_all(refs.iter().map(|r| provider.stop(r))).await {
        r?;
    }
    let s4 = emu.stats();
    for r in join_all(refs.iter().zip(&specs).map(|(r, s)| provider.start(r, s))).await {
        r?;
    }
    let s5 = emu.stats();
    for r in join_all(refs.iter().map(|r| provider.destroy(r))).await {
        r?;
    }

    // Every machine's life, as observed, in order.
    let mut lives: HashMap<String, Vec<(ObservedState, i64)>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while lives
        .values()
        .filter(|l| l.last().is_some_and(|(s, _)| *s == ObservedState::Gone))
        .count()
        < refs.len()
    {
        let o = tokio::time::timeout_at(deadline, rx.recv())
            .await?
            .expect("sink open");
        lives
            .entry(o.sandbox.sandbox_id.clone())
            .or_default()
            .push((o.state, o.at));
    }
    use ObservedState::*;
    for r in &refs {
        let life = &lives[&r.sandbox_id];
        let states: Vec<_> = life.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            states,
            [Running, Suspended, Running, Stopped, Running, Gone],
            "{}",
            r.sandbox_id
        );
        assert!(
            life.windows(2).all(|w| w[0].1 <= w[1].1),
            "times go forward: {life:?}"
        );
    }

    let end = emu.stats();
    let (creates, resumes, starts) = (
        calls_between(&s0, &s1),
        calls_between(&s2, &s3),
        calls_between(&s4, &s5),
    );
    let per_start = (creates + resumes + starts) as f64 / (3 * n) as f64;
    println!(
        "faults: {n} sandboxes; calls per start {per_start:.2} (create {:.2}, resume {:.2}, start {:.2}); emulator's count {:.2}; \
         net of faults {:.2}; {} requests, {} list; injected {} 5xx, {} 429, {} capacity refusals, {} early 404s; {} past the rate limits; client waited {:?} for pacing",
        creates as f64 / n as f64,
        resumes as f64 / n as f64,
        starts as f64 / n as f64,
        end.calls_per_start(),
        end.calls_per_start_net_of_faults(),
        end.requests,
        end.action("Machines_list"),
        end.injected_5xx,
        end.injected_429,
        end.capacity_refusals,
        end.early_not_found,
        end.past_rate_limit,
        provider.client().pacer().waited(),
    );
    assert_eq!(end.spec_violations, 0, "{:?}", end.violation_samples);
    assert_eq!(
        end.past_rate_limit, 0,
        "Shoal paces itself under Fly's published limits"
    );
    assert!(
        end.injected_5xx > 0 && end.injected_429 > 0 && end.capacity_refusals > 0,
        "the faults did happen: {end:?}"
    );
    assert!(
        per_start <= 3.0,
        "a sandbox start costs {per_start:.2} API calls on average"
    );
    assert!(
        end.early_not_found > 0,
        "the 404 window after a create was never hit: {end:?}"
    );
    let net = end.calls_per_start_net_of_faults();
    assert!(
        net <= 3.0,
        "a start costs {net:.2} calls besides the injected faults (404 window included): {end:?}"
    );
    // Every machine was destroyed: Fly reports `destroying` at once and `destroyed` after the
    // emulator's destroy latency, which a loaded machine can stretch; nothing else may be left.
    let left: Vec<_> = emu
        .machines()
        .into_iter()
        .filter(|m| m.state != "destroying")
        .collect();
    assert!(left.is_empty(), "machines left: {left:?}");
    Ok(())
}
