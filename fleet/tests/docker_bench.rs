//! Latency figures of the `docker` provider on this machine's engine, for
//! `docs/benchmarks.md`: image build, container create and start (raw engine calls and the
//! provider's `create`), pause, unpause, stop and start again. It measures and prints; it asserts
//! nothing about time. Ignored by default; run it with
//!
//! ```text
//! cargo nextest run -p shoal-fleet --test docker_bench --run-ignored only --no-capture
//! ```

use anyhow::Result;
use shoal_fleet::docker::{DockerConfig, DockerProvider, container_name};
use shoal_fleet::{Provider, SandboxRef, SandboxSpec};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::unbounded_channel;

const ROUNDS: usize = 30;
const BUILDS: usize = 5;

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

fn row(name: &str, mut s: Vec<Duration>) {
    let n = s.len();
    let mean = s.iter().map(|d| d.as_secs_f64()).sum::<f64>() / n as f64 * 1000.0;
    println!(
        "| {name} | {n} | {:.1} | {:.1} | {:.1} |",
        pct(&mut s, 0.5),
        pct(&mut s, 0.99),
        mean
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run explicitly, see the module documentation"]
async fn docker_latencies() -> Result<()> {
    let ns = format!("bench-{}", std::process::id());
    let cfg = DockerConfig {
        namespace: ns.clone(),
        image: Some(format!("shoal-sandbox-bench:{ns}")),
        agent_bin: Some(shoal_testkit::bins::binary("shoal-agent", "shoal-agent")),
        stop_grace: Duration::from_secs(5),
        ..Default::default()
    };
    let (tx, _rx) = unbounded_channel();
    let p = DockerProvider::new(cfg, tx)?;
    let version = p.ping().await?;
    let d = p.client().await?;

    let mut builds = Vec::new();
    let mut size = 0;
    for _ in 0..BUILDS {
        p.remove_image().await?;
        let b = p.build_image().await?;
        size = b.rootfs_bytes;
        builds.push(b.elapsed);
    }
    p.ensure_image().await?;

    let spec = |n: usize| SandboxSpec {
        sandbox_id: format!("b{n}"),
        tenant: "bench".into(),
        pool: "bench".into(),
        token: format!("t{n}"),
        scheduler_url: "http://127.0.0.1:9".into(),
        size: shoal_core::SandboxSize {
            cpus: 0.5,
            memory_mb: 256,
        },
        regions: Vec::new(),
    };
    // The tenant's network exists before the rounds, as it does for every sandbox but its first.
    let first = spec(9999);
    let first_id = p.create(&first).await?;

    let (mut create, mut raw_create, mut raw_start) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pause, mut unpause, mut stop, mut start) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut refs = Vec::new();
    for n in 0..ROUNDS {
        let s = spec(n);
        let t = Instant::now();
        let id = p.create(&s).await?;
        create.push(t.elapsed());
        let r = SandboxRef {
            sandbox_id: s.sandbox_id.clone(),
            tenant: s.tenant.clone(),
            provider_id: id,
        };
        let t = Instant::now();
        p.suspend(&r).await?;
        pause.push(t.elapsed());
        let t = Instant::now();
        p.resume(&r).await?;
        unpause.push(t.elapsed());
        let t = Instant::now();
        p.stop(&r).await?;
        stop.push(t.elapsed());
        let t = Instant::now();
        p.start(&r, &s).await?;
        start.push(t.elapsed());
        refs.push(r);
    }
    // The engine's own create and start, without the provider's checks around them: a copy of
    // the first sandbox's container config under another name.
    let template = d.inspect_container(&first_id, None).await?;
    let mut body: shoal_fleet::docker::bollard::models::ContainerCreateBody =
        serde_json::from_value(serde_json::to_value(template.config.clone().unwrap())?)?;
    body.host_config = template.host_config.clone();
    for n in 0..ROUNDS {
        let name = container_name(&ns, &format!("raw{n}"));
        let t = Instant::now();
        let c = d
            .create_container(
                Some(
                    shoal_fleet::docker::bollard::query_parameters::CreateContainerOptions {
                        name: Some(name),
                        ..Default::default()
                    },
                ),
                body.clone(),
            )
            .await?;
        raw_create.push(t.elapsed());
        let t = Instant::now();
        d.start_container(&c.id, None).await?;
        raw_start.push(t.elapsed());
    }

    println!("\nDocker {version}, {ROUNDS} rounds, one at a time\n");
    println!("| operation | n | p50 ms | p99 ms | mean ms |");
    println!("|---|---|---|---|---|");
    row(
        &format!(
            "image build ({:.1} MiB root filesystem)",
            size as f64 / 1048576.0
        ),
        builds,
    );
    row("engine: create container", raw_create);
    row("engine: start container", raw_start);
    row("provider: create (create + start)", create);
    row("provider: suspend (pause)", pause);
    row("provider: resume (unpause)", unpause);
    row("provider: stop", stop);
    row("provider: start (stopped to running)", start);

    p.purge().await?;
    p.remove_image().await?;
    Ok(())
}
