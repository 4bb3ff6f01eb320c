//! The spine's figures, measured end to end through the real binaries (run with
//! `cargo bench -p shoal-scheduler --bench spine`): enqueue-to-start latency on a warm sandbox,
//! no-op jobs per second, and the time from an enqueue to the provider's start call for a tenant
//! whose sandboxes are all stopped. Results go to stdout; `docs/benchmarks.md` records them.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_loadtests::queuebench::enqueue_noop as enqueue;
use shoal_testkit::server::Server;
use std::time::{Duration, Instant};

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn wait_done(s: &Server, id: &str) -> Result<Value> {
    loop {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        if matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead")) {
            return Ok(j);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let s = Server::start(&["--idle-timeout", "1s"], &[("RUST_LOG", "warn")]).await?;
    let unlimited = json!({"enqueue_rate_per_s": null, "jobs_per_month": null});

    // 1. Warm: one ready sandbox kept by min_warm; jobs one after another.
    let mut warm = unlimited.clone();
    warm["min_warm"] = json!(1);
    warm["max_sandboxes"] = json!(1);
    s.send(
        Method::PUT,
        "/v1/tenants/warm",
        &json!({"plan": "enterprise", "limits": warm}),
    )
    .await?;
    loop {
        let p = s.get("/v1/pools/warm").await?;
        if p["sandboxes"]["ready"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t0 = Instant::now();
        let id = enqueue(&s, "warm").await?;
        let j = wait_done(&s, &id).await?;
        let _ = t0;
        lat.push((ms(&j["started_at"]) - ms(&j["created_at"])) as f64);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "warm enqueue-to-start (ms, server clock, n={}): p50 {:.1}  p99 {:.1}  max {:.1}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // 2. Throughput: 2,000 no-op jobs through 8 sandboxes.
    let mut bulk = unlimited.clone();
    bulk["max_sandboxes"] = json!(8);
    s.send(
        Method::PUT,
        "/v1/tenants/bulk",
        &json!({"plan": "enterprise", "limits": bulk}),
    )
    .await?;
    let n = 2000;
    let t0 = Instant::now();
    // Eight clients enqueue at once, as a platform's workers would.
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = std::sync::Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 8 {
                enqueue(&s, "bulk").await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enq = t0.elapsed();
    loop {
        let p = s.get("/v1/pools/bulk").await?;
        if p["queued"] == 0 && p["running"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = t0.elapsed();
    println!(
        "no-op jobs end to end: {n} in {:.2}s = {:.0} jobs/s (enqueueing alone: {:.0}/s, 8 clients)",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        n as f64 / enq.as_secs_f64()
    );

    // 3. Wake: sandboxes all stopped; enqueue; time to the provider's start call.
    let mut cold = unlimited.clone();
    cold["max_sandboxes"] = json!(1);
    s.send(
        Method::PUT,
        "/v1/tenants/cold",
        &json!({"plan": "enterprise", "limits": cold}),
    )
    .await?;
    let mut wake = Vec::new();
    let mut first_job = Vec::new();
    for round in 0..30 {
        // Let the pool stop (idle timeout 1 s).
        loop {
            let p = s.get("/v1/pools/cold").await?;
            let active: u64 = ["booting", "ready", "busy"]
                .iter()
                .map(|k| p["sandboxes"][k].as_u64().unwrap())
                .sum();
            if active == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let id = enqueue(&s, "cold").await?;
        let j = wait_done(&s, &id).await?;
        let events = s.get("/v1/events?tenant=cold&limit=5").await?;
        let op = if round == 0 { "create" } else { "start" };
        let ev = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == op)
            .cloned()
            .unwrap();
        wake.push((ms(&ev["at"]) - ms(&j["created_at"])) as f64);
        first_job.push((ms(&j["started_at"]) - ms(&j["created_at"])) as f64);
    }
    wake.sort_by(f64::total_cmp);
    first_job.sort_by(f64::total_cmp);
    println!(
        "stopped tenant, enqueue to provider start call (ms, n={}): p50 {:.1}  p99 {:.1}",
        wake.len(),
        pct(&wake, 0.5),
        pct(&wake, 0.99)
    );
    println!(
        "stopped tenant, enqueue to job start incl. process boot (ms): p50 {:.1}  p99 {:.1}",
        pct(&first_job, 0.5),
        pct(&first_job, 0.99)
    );
    let metrics = s.req(Method::GET, "/metrics").send().await?.text().await?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("shoal_wake_latency_seconds_sum")
            || l.starts_with("shoal_wake_latency_seconds_count")
    }) {
        println!("  {line}");
    }
    Ok(())
}
