//! End to end with `shoal serve --provider fly` against the Fly Machines emulator, whose machines
//! run the real `shoal-agent`: three tenants' jobs all succeed, idle pools suspend and wake for new
//! work; under Fly's faults (5xx, 429 bursts, a region out of capacity) every job still succeeds,
//! Shoal never goes past Fly's rate limits, and no machine is left running or unknown at the end.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::fly::{Emulator, EmulatorConfig, Faults, ThrottleBursts};
use shoal_testkit::server::Server;
use std::time::Duration;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

fn active(p: &Value) -> u64 {
    ["booting", "ready", "busy"]
        .iter()
        .map(|s| p["sandboxes"][s].as_u64().unwrap_or(0))
        .sum()
}

async fn start(faults: Faults) -> Result<(Emulator, Server, std::path::PathBuf)> {
    start_with(faults, &[]).await
}

/// [`start`] with more flags for `shoal serve`.
async fn start_with(
    faults: Faults,
    extra: &[&str],
) -> Result<(Emulator, Server, std::path::PathBuf)> {
    let agent = shoal_testkit::bins::binary("shoal-agent", "shoal-agent");
    // Strict: new machines answer 404 for a moment after their create, as on Fly.
    let emu = Emulator::start(
        EmulatorConfig {
            faults,
            ..EmulatorConfig::default().with_agent(agent)
        }
        .strict(),
    )
    .await?;
    let dir = std::env::temp_dir().join(format!(
        "shoal-fly-e2e-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("shoal.toml");
    std::fs::write(
        &config,
        format!(
            "[provider]\nname = \"fly\"\n[provider.fly]\napi_url = \"{}\"\napp = \"{}\"\nregions = [\"ams\", \"fra\", \"ord\"]\nimage = \"registry.fly.io/shoal-agent:test\"\npoll_interval = \"500ms\"\n",
            emu.url(),
            emu.app()
        ),
    )?;
    let mut args = vec!["--config", config.to_str().unwrap(), "--idle-timeout", "2s"];
    args.extend_from_slice(extra);
    let server = Server::start(&args, &[("FLY_API_TOKEN", "test-token")]).await?;
    for t in TENANTS {
        let (st, v) = server
            .send(
                Method::PUT,
                &format!("/v1/tenants/{t}"),
                &json!({"plan": "pro", "limits": {"max_sandboxes": 3}}),
            )
            .await?;
        anyhow::ensure!(st == 201, "{st} {v}");
    }
    Ok((emu, server, dir))
}

async fn run_jobs(s: &Server, per_tenant: usize, tag: &str) -> Result<Vec<(String, String)>> {
    let mut ids = Vec::new();
    for i in 0..per_tenant {
        for t in TENANTS {
            let (st, v) = s
                .send(Method::POST, "/v1/jobs", &json!({"tenant": t, "kind": "agent", "spec": {"command": ["sh", "-c", format!("sleep 0.2; echo {tag}-{t}-{i}")]}}))
                .await?;
            anyhow::ensure!(st == 202, "{st} {v}");
            ids.push((
                v["id"].as_str().unwrap().to_string(),
                format!("{tag}-{t}-{i}\n"),
            ));
        }
    }
    for (id, want) in &ids {
        let j = s
            .wait_for(&format!("job {id}"), Duration::from_secs(180), || async {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                Ok(
                    matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead"))
                        .then_some(j),
                )
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", s.log()))?;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"]["stdout"].as_str(), Some(want.as_str()));
    }
    Ok(ids)
}

async fn wait_idle(s: &Server, t: &str, state: &str) -> Result<()> {
    s.wait_for(
        &format!("{t}'s pool to go {state}"),
        // Long enough for jobs lost in a SIGKILL to wait out their lease and backoff first.
        Duration::from_secs(180),
        || async {
            let p = s.get(&format!("/v1/pools/{t}")).await?;
            Ok((active(&p) == 0 && p["sandboxes"][state].as_u64() > Some(0)).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_pools_run_suspend_and_wake() -> Result<()> {
    let (emu, mut s, dir) = start(Faults::default()).await?;
    run_jobs(&s, 20, "first").await?;
    for t in TENANTS {
        wait_idle(&s, t, "suspended").await?;
    }
    let suspended: Vec<String> = emu
        .machines()
        .into_iter()
        .filter(|m| m.state == "suspended")
        .map(|m| m.id)
        .collect();
    assert!(
        !suspended.is_empty(),
        "idle machines were not suspended: {:?}",
        emu.machines()
    );
    let machines_before = emu.machines().len();
    // New work wakes the suspended machines rather than creating new ones.
    run_jobs(&s, 1, "again").await?;
    assert_eq!(
        emu.machines().len(),
        machines_before,
        "new work created machines instead of waking suspended ones"
    );
    let stats = emu.stats();
    assert_eq!(
        stats.past_rate_limit, 0,
        "requests past Fly's limits: {stats:?}"
    );
    assert_eq!(
        stats.spec_violations, 0,
        "requests not in the spec: {:?}",
        stats.violation_samples
    );
    assert!(s.stop().await?.success());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_under_faults_loses_no_job_and_leaves_no_machine() -> Result<()> {
    let faults = Faults {
        server_error_fraction: 0.10,
        throttle: Some(ThrottleBursts {
            every_ms: 5_000,
            length_ms: 500,
        }),
        no_capacity: vec!["ams".into()],
        ..Default::default()
    };
    let (emu, mut s, dir) = start(faults).await?;
    run_jobs(&s, 20, "faulty").await?;
    let stats = emu.stats();
    assert_eq!(
        stats.past_rate_limit, 0,
        "Shoal went past Fly's rate limits: {stats:?}"
    );
    assert_eq!(stats.spec_violations, 0, "{:?}", stats.violation_samples);
    assert!(
        stats.capacity_refusals > 0,
        "the out-of-capacity region was never tried"
    );
    assert!(
        emu.machines().iter().all(|m| m.region != "ams"),
        "a machine landed in the region without capacity"
    );
    // The gross figure swings with how many of the random 5xx and 429 answers landed on starts
    // in this short run (a handful of starts); the bound is on what Shoal itself chose to call.
    let net = stats.calls_per_start_net_of_faults();
    eprintln!(
        "API calls per machine start under faults: {:.2} ({net:.2} without the calls answered by an injected fault; {stats:?})",
        stats.calls_per_start()
    );
    assert!(
        net <= 3.0,
        "a start cost {net:.2} calls on average besides the injected faults: {stats:?}"
    );
    // Every machine belongs to a sandbox the scheduler knows.
    let known: Vec<String> = {
        let mut ids = Vec::new();
        for t in TENANTS {
            for sb in s.get(&format!("/v1/pools/{t}")).await?["sandbox_list"]
                .as_array()
                .unwrap()
            {
                ids.push(sb["id"].as_str().unwrap().to_string());
            }
        }
        ids
    };
    for m in emu.machines() {
        let sandbox = m.metadata.get("shoal_sandbox").cloned().unwrap_or_default();
        assert!(
            known.contains(&sandbox),
            "machine {} ({sandbox}) is unknown to the scheduler",
            m.id
        );
    }
    // A clean shutdown leaves no machine running.
    assert!(s.stop().await?.success());
    let running: Vec<_> = emu
        .machines()
        .into_iter()
        .filter(|m| m.state == "started" || m.state == "starting")
        .collect();
    assert!(running.is_empty(), "machines left running: {running:?}");
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Billing against the emulator's own record, under Fly's faults (5xx answers, 429 bursts, a
/// region out of capacity): three tenants' jobs, the scheduler SIGKILLed while machines run and
/// restarted, more jobs, the pools left to suspend; per tenant, the billed seconds are within 2%
/// of the time the emulator's machines ran (from `started` until down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_billing_matches_the_emulators_running_time_across_a_crash() -> Result<()> {
    // One address across the restart, so the machines' agents find the scheduler again.
    let port = shoal_testkit::server::free_port();
    let listen = format!("127.0.0.1:{port}");
    let advertise = format!("http://127.0.0.1:{port}");
    let faults = Faults {
        server_error_fraction: 0.10,
        throttle: Some(ThrottleBursts {
            every_ms: 5_000,
            length_ms: 500,
        }),
        no_capacity: vec!["ams".into()],
        ..Default::default()
    };
    let (emu, mut s, dir) = start_with(
        faults,
        &["--listen", &listen, "--advertise-url", &advertise],
    )
    .await?;
    let from = chrono::Utc::now() - chrono::Duration::hours(1);
    run_jobs(&s, 4, "before").await?;
    s.kill()?;
    // The machines keep running while the scheduler is down: that is billable time too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.restart().await?;
    run_jobs(&s, 4, "after").await?;
    for t in TENANTS {
        wait_idle(&s, t, "suspended").await?;
    }
    let to = chrono::Utc::now() + chrono::Duration::seconds(1);
    let record = emu.running_ms_by("shoal_tenant");
    for t in TENANTS {
        let r = s
            .get(&format!(
                "/v1/usage?tenant={t}&from={}&to={}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ))
            .await?;
        let billed = r["total"]["sandbox_seconds"].as_f64().unwrap() * 1e3;
        let ran = record.get(t).copied().unwrap_or(0) as f64;
        assert!(ran > 0.0, "{t}'s machines never ran: {record:?}");
        let off = (billed - ran).abs() / ran;
        eprintln!(
            "{t}: billed {billed} ms, the emulator ran {ran} ms ({:.3}%)",
            off * 100.0
        );
        assert!(off <= 0.02, "{t}: billed {billed} ms, ran {ran} ms: {r}");
    }
    s.stop().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Placement through the whole scheduler: `limits.regions` per tenant. With `fra` out of
/// capacity, a tenant preferring `fra` then `ord` gets its machines in `ord`, one preferring `ams`
/// gets them in `ams` (never in the fleet's other regions), and one whose only region is full
/// gets none, with a `create_failed` event saying `no_capacity`. The pool view shows each
/// sandbox's region and `GET /v1/usage?group_by=region` splits the usage by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_places_each_tenant_in_its_regions() -> Result<()> {
    let faults = Faults {
        no_capacity: vec!["fra".into()],
        ..Default::default()
    };
    let (emu, mut s, dir) = start(faults).await?;
    let prefs = [
        ("acme", json!(["fra", "ord"]), "ord"),
        ("globex", json!(["ams"]), "ams"),
    ];
    for (t, regions, _) in &prefs {
        let (st, v) = s
            .send(
                Method::PUT,
                &format!("/v1/tenants/{t}"),
                &json!({"plan": "pro", "limits": {"max_sandboxes": 3, "regions": regions}}),
            )
            .await?;
        anyhow::ensure!(st == 200, "{st} {v}");
    }
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/initech",
            &json!({"plan": "pro", "limits": {"regions": ["fra"]}}),
        )
        .await?;
    anyhow::ensure!(st == 200, "{st} {v}");
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/initech",
            &json!({"plan": "pro", "limits": {"regions": ["FRA"]}}),
        )
        .await?;
    assert_eq!(st, 400, "a bad region code is refused: {v}");

    let mut ids = Vec::new();
    for i in 0..4 {
        for (t, _, _) in &prefs {
            let (st, v) = s
                .send(Method::POST, "/v1/jobs", &json!({"tenant": t, "kind": "agent", "spec": {"command": ["sh", "-c", format!("sleep 0.3; echo {t}-{i}")]}}))
                .await?;
            anyhow::ensure!(st == 202, "{st} {v}");
            ids.push(v["id"].as_str().unwrap().to_string());
        }
    }
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "initech", "kind": "agent", "spec": {"command": ["true"]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    for id in &ids {
        let j = s
            .wait_for(&format!("job {id}"), Duration::from_secs(180), || async {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                Ok(
                    matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead"))
                        .then_some(j),
                )
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", s.log()))?;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    s.wait_for(
        "initech's no_capacity event",
        Duration::from_secs(60),
        || async {
            let ev = s.get("/v1/events?tenant=initech").await?;
            Ok(ev["events"]
                .as_array()
                .and_then(|es| {
                    es.iter().find(|e| {
                        e["kind"] == "create_failed" && e["detail"]["reason"] == "no_capacity"
                    })
                })
                .cloned())
        },
    )
    .await
    .map(|e| assert_eq!(e["detail"]["regions"], json!(["fra"]), "{e}"))?;

    // Every machine in its tenant's region; none for initech.
    let machines = emu.machines();
    for m in &machines {
        let tenant = m.metadata.get("shoal_tenant").cloned().unwrap_or_default();
        let want = prefs.iter().find(|(t, _, _)| *t == tenant).map(|p| p.2);
        assert_eq!(Some(m.region.as_str()), want, "{} of {tenant}", m.id);
    }
    for (t, _, region) in &prefs {
        assert!(
            machines
                .iter()
                .any(|m| m.metadata.get("shoal_tenant").map(String::as_str) == Some(*t)),
            "{t} has machines"
        );
        // The region is recorded once the machine is made: every sandbox with a region has its
        // tenant's, and those that ran jobs have one.
        let p = s.get(&format!("/v1/pools/{t}")).await?;
        let list = p["sandbox_list"].as_array().cloned().unwrap_or_default();
        for sb in &list {
            if !sb["region"].is_null() {
                assert_eq!(sb["region"], *region, "{sb}");
            }
            if sb["jobs_run"].as_u64() > Some(0) {
                assert_eq!(sb["region"], *region, "{sb}");
            }
        }
        assert!(list.iter().any(|sb| sb["region"] == *region), "{p}");
        let u = s
            .get(&format!("/v1/usage?tenant={t}&group_by=region"))
            .await?;
        let by = u["by_region"].as_array().cloned().unwrap_or_default();
        assert_eq!(by.len(), 1, "{u}");
        assert_eq!(by[0]["region"], *region, "{u}");
        assert!(by[0]["sandbox_seconds"].as_f64() > Some(0.0), "{u}");
        assert_eq!(
            by[0]["sandbox_seconds"], u["total"]["sandbox_seconds"],
            "{u}"
        );
    }
    let (st, v) = s
        .send(Method::GET, "/v1/usage?group_by=colour", &json!(null))
        .await?;
    assert_eq!(st, 400, "{v}");
    assert!(s.stop().await?.success());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// The shared warm pool on Fly: the blank machine is created in the provider's first region
/// (`ams`) and stopped; a tenant limited to `ord` cannot claim it and creates its own, a tenant
/// in `ams` claims it (a `claim` event, no create; the claim starts the machine) and the pool is
/// refilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_a_tenant_claims_a_blank_machine_in_its_region() -> Result<()> {
    let (emu, mut s, dir) = start_with(Faults::default(), &["--warm-pool", "1"]).await?;
    for (t, regions) in [("acme", json!(["ord"])), ("globex", json!(["ams"]))] {
        let (st, v) = s
            .send(
                Method::PUT,
                &format!("/v1/tenants/{t}"),
                &json!({"plan": "pro", "limits": {"max_sandboxes": 3, "regions": regions}}),
            )
            .await?;
        anyhow::ensure!(st == 200, "{st} {v}");
    }
    let blanks = |n: usize| {
        let s = &s;
        async move {
            s.wait_for(&format!("{n} blanks"), Duration::from_secs(60), || async {
                let v = s.get("/v1/events?limit=1000").await?;
                let b: Vec<Value> = v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["kind"] == "warm_pool_blank")
                    .cloned()
                    .collect();
                Ok((b.len() >= n).then_some(b))
            })
            .await
        }
    };
    let first = blanks(1).await?;
    let blank = first[0]["detail"]["sandbox"].as_str().unwrap().to_string();
    assert_eq!(first[0]["detail"]["region"], "ams", "{first:?}");
    // It waits stopped, billed by nobody; the claim starts it.
    assert_eq!(first[0]["detail"]["state"], "stopped", "{first:?}");
    assert!(
        emu.machines().iter().any(|m| m.state == "stopped"),
        "{:?}",
        emu.machines()
    );
    let run = |t: &'static str| {
        let s = &s;
        async move {
            let (st, v) = s
                .send(Method::POST, "/v1/jobs", &json!({"tenant": t, "kind": "agent", "spec": {"command": ["sh", "-c", "echo hi"]}}))
                .await?;
            anyhow::ensure!(st == 202, "{st} {v}");
            let id = v["id"].as_str().unwrap().to_string();
            s.wait_for(&format!("job {id}"), Duration::from_secs(120), || async {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                Ok((j["state"] == "succeeded").then_some(j))
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", s.log()))
        }
    };
    let kinds = |t: &'static str| {
        let s = &s;
        async move {
            let v = s.get(&format!("/v1/events?tenant={t}&limit=1000")).await?;
            Ok::<Vec<(String, Value)>, anyhow::Error>(
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        (
                            e["kind"].as_str().unwrap_or("").to_string(),
                            e["detail"]["sandbox"].clone(),
                        )
                    })
                    .collect(),
            )
        }
    };
    let a = run("acme").await?;
    assert_ne!(
        a["sandbox_id"].as_str(),
        Some(blank.as_str()),
        "acme is limited to ord"
    );
    let ak = kinds("acme").await?;
    assert!(ak.iter().all(|(k, _)| k != "claim"), "{ak:?}");
    assert!(ak.iter().any(|(k, _)| k == "create"), "{ak:?}");
    let g = run("globex").await?;
    assert_eq!(g["sandbox_id"].as_str(), Some(blank.as_str()));
    let gk = kinds("globex").await?;
    assert!(
        gk.iter()
            .any(|(k, sb)| k == "claim" && sb == blank.as_str()),
        "{gk:?}"
    );
    assert!(gk.iter().all(|(k, _)| k != "create"), "{gk:?}");
    // Refilled: a second blank machine.
    let both = blanks(2).await?;
    assert!(
        both.iter()
            .any(|e| e["detail"]["sandbox"] != blank.as_str())
    );
    assert_eq!(emu.stats().spec_violations, 0);
    assert!(s.stop().await?.success());
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
