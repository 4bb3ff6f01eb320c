//! Right-sizing end to end, through the real binaries on the embedded default (SQLite, process
//! sandboxes): jobs that really hold about 60 MiB are measured by their agent, and a tenant on the
//! default 512 MiB size is recommended at most 128 MiB, with the evidence; the tenant's own key
//! reads its recommendation and no other tenant's; `auto_size` applies it, as an event.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::time::Duration;

/// A Python process holding a 52 MiB buffer: with the interpreter, a peak of about 60 MiB.
const ALLOC_60_MIB: &str = "b = bytearray(52 * 1024 * 1024); print(len(b))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_peaking_at_60_mib_on_512_are_recommended_at_most_128() -> Result<()> {
    let s = Server::start(&["--idle-timeout", "30s"], &[]).await?;
    for t in ["lean", "other"] {
        let (status, v) = s
            .send(
                Method::PUT,
                &format!("/v1/tenants/{t}"),
                &json!({"plan": "pro", "limits": {"max_sandboxes": 2}}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{v}");
    }
    // Before any job: the current size, and the evidence says why.
    let r = s.get("/v1/tenants/lean/recommendation").await?;
    assert_eq!(
        r["sandbox_size"],
        json!({"cpus": 1.0, "memory_mb": 512}),
        "{r}"
    );
    assert_eq!(r["evidence"]["jobs_sampled"], 0);
    assert!(
        r["evidence"]["reason"]
            .as_str()
            .unwrap()
            .contains("too few samples"),
        "{r}"
    );
    assert!(r.get("saving").is_none(), "{r}");

    let mut ids = Vec::new();
    for _ in 0..12 {
        let (status, v) = s
            .send(
                Method::POST,
                "/v1/jobs",
                &json!({"tenant": "lean", "kind": "agent",
                        "spec": {"command": ["/usr/bin/python3", "-c", ALLOC_60_MIB]}}),
            )
            .await?;
        anyhow::ensure!(status == 202, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let j = s
            .wait_for(
                &format!("job {id} to finish"),
                Duration::from_secs(120),
                || async {
                    let j = s.get(&format!("/v1/jobs/{id}")).await?;
                    let done = !matches!(j["state"].as_str(), Some("queued" | "running"));
                    Ok(done.then_some(j))
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}: {}", s.log()))?;
        assert_eq!(j["state"], "succeeded", "{j}");
    }

    let r = s.get("/v1/tenants/lean/recommendation").await?;
    eprintln!("recommendation after 12 jobs: {r}");
    let e = &r["evidence"];
    assert_eq!(e["jobs_sampled"], 12, "{r}");
    let max = e["memory_mb"]["max"].as_f64().unwrap();
    assert!(
        (52.0..100.0).contains(&max),
        "the measured peak is {max} MiB: {r}"
    );
    for p in ["p50", "p95", "p99"] {
        let v = e["memory_mb"][p].as_f64().unwrap();
        assert!(v > 50.0 && v <= max, "{p} = {v}: {r}");
    }
    assert!(e["cpu_seconds"]["p50"].as_f64().unwrap() >= 0.0);
    assert_eq!(e["oom_kills"], 0);
    assert_eq!(e["current"]["memory_mb"], 512);
    let rec = r["sandbox_size"]["memory_mb"].as_u64().unwrap();
    assert!(
        rec <= 128 && rec as f64 >= max,
        "recommended {rec} MiB: {r}"
    );
    assert_eq!(r["current"]["memory_mb"], 512);
    assert_eq!(r["auto_size"], false);
    // The saving: (512 - 128) MiB for every second the tenant's sandboxes ran.
    let saving = &r["saving"];
    let secs = saving["sandbox_seconds"].as_f64().unwrap();
    let gib = saving["gib_seconds"].as_f64().unwrap();
    assert!((gib - secs * 384.0 / 1024.0).abs() < 1e-6, "{r}");
    assert_eq!(saving["vcpu_seconds"], 0.0);

    // The tenant's own key reads its recommendation, not another tenant's.
    let (status, key) = s
        .send(Method::POST, "/v1/tenants/lean/keys", &json!({}))
        .await?;
    anyhow::ensure!(status == 201, "{key}");
    let key = key["key"].as_str().unwrap();
    let as_tenant = |path: &str| s.anon(Method::GET, path).bearer_auth(key).send();
    let own = as_tenant("/v1/tenants/lean/recommendation").await?;
    assert_eq!(own.status(), 200);
    let own: Value = own.json().await?;
    assert_eq!(own["sandbox_size"], r["sandbox_size"]);
    let theirs = as_tenant("/v1/tenants/other/recommendation").await?;
    assert_eq!(theirs.status(), 403);
    let unknown = s
        .req(Method::GET, "/v1/tenants/nobody/recommendation")
        .send()
        .await?;
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await?;
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    // Opted in: the leader applies it within its period, as an event on the pool.
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/lean",
            &json!({"plan": "pro", "limits": {"max_sandboxes": 2, "auto_size": true}}),
        )
        .await?;
    anyhow::ensure!(status == 200, "{v}");
    assert_eq!(v["limits"]["auto_size"], true);
    let event = s
        .wait_for("the auto_size event", Duration::from_secs(30), || async {
            let ev = s.get("/v1/events?tenant=lean").await?;
            Ok(ev["events"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["kind"] == "auto_size").cloned()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", s.log()))?;
    assert_eq!(event["detail"]["to"]["memory_mb"], rec, "{event}");
    let r = s.get("/v1/tenants/lean/recommendation").await?;
    assert_eq!(r["current"]["memory_mb"], rec, "{r}");
    assert_eq!(r["auto_size"], true);
    assert!(
        r.get("saving").is_none(),
        "applied: nothing more to save {r}"
    );
    // A bad value is refused before it is stored.
    let (status, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/lean",
            &json!({"plan": "pro", "limits": {"auto_size": "yes"}}),
        )
        .await?;
    assert_eq!(status, 400, "{v}");
    Ok(())
}
