//! End to end through the real binaries on the embedded default (SQLite, process sandboxes): a
//! tenant's pool grows with its queue within its limit, every job runs with its own output, idle
//! sandboxes stop and new work wakes them, a killed agent's job is retried, usage adds up, and a
//! SIGTERM leaves no agent behind.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::{Server, processes_under};
use std::collections::HashMap;
use std::time::Duration;

fn active(p: &Value) -> u64 {
    ["booting", "ready", "busy"]
        .iter()
        .map(|s| p["sandboxes"][s].as_u64().unwrap_or(0))
        .sum()
}

async fn pool(s: &Server, tenant: &str) -> Result<Value> {
    s.get(&format!("/v1/pools/{tenant}")).await
}

async fn wait_job(s: &Server, id: &str, timeout: Duration) -> Result<Value> {
    s.wait_for(&format!("job {id} to finish"), timeout, || async {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        let done = matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "dead" | "cancelled")
        );
        Ok(done.then_some(j))
    })
    .await
}

async fn enqueue(s: &Server, tenant: &str, cmd: &str) -> Result<String> {
    s.enqueue_sh(tenant, cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(unsafe_code)] // libc calls; each block says why it is sound
async fn pool_grows_runs_stops_wakes_and_bills() -> Result<()> {
    let mut s = Server::start(&["--idle-timeout", "2s"], &[]).await?;
    pro_tenant(&s, "acme", json!({"max_sandboxes": 4})).await?;

    // 50 jobs, each printing its own number.
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push((
            i,
            enqueue(&s, "acme", &format!("sleep 0.1; echo job-{i}")).await?,
        ));
    }
    let max_active = std::sync::atomic::AtomicU64::new(0);
    let mut results = HashMap::new();
    s.wait_for("50 jobs to finish", Duration::from_secs(120), || async {
        let p = pool(&s, "acme").await?;
        max_active.fetch_max(active(&p), std::sync::atomic::Ordering::SeqCst);
        let jobs = s.get("/v1/jobs?tenant=acme&limit=1000").await?;
        let done = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["state"] != "queued" && j["state"] != "running")
            .count();
        Ok((done == 50).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}", s.log()))?;
    let max_active = max_active.into_inner();
    for (i, id) in &ids {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        assert_eq!(j["state"], "succeeded", "job {i}: {j}");
        assert_eq!(j["result"]["stdout"], format!("job-{i}\n"));
        assert_eq!(j["result"]["exit_code"], 0);
        results.insert(j["sandbox_id"].as_str().unwrap().to_string(), ());
    }
    assert!(max_active > 1, "the pool never grew past one sandbox");
    assert!(
        max_active <= 4,
        "the pool grew to {max_active}, past its limit of 4"
    );
    assert!(
        results.len() > 1 && results.len() <= 4,
        "jobs ran on {} sandboxes",
        results.len()
    );

    // Idle past the timeout: every sandbox stops.
    s.wait_for("the pool to stop", Duration::from_secs(30), || async {
        let p = pool(&s, "acme").await?;
        Ok((active(&p) == 0 && p["sandboxes"]["stopped"].as_u64() > Some(0)).then_some(()))
    })
    .await?;

    // One more job wakes a stopped sandbox (no new one is created) and succeeds.
    let before: Vec<String> = pool(&s, "acme").await?["sandbox_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    let id = enqueue(&s, "acme", "echo awake").await?;
    let j = wait_job(&s, &id, Duration::from_secs(30)).await?;
    assert_eq!(
        (j["state"].as_str(), j["result"]["stdout"].as_str()),
        (Some("succeeded"), Some("awake\n"))
    );
    assert!(
        before.contains(&j["sandbox_id"].as_str().unwrap().to_string()),
        "a new sandbox was created instead of waking one"
    );

    // A killed agent mid-job: the job is retried and succeeds.
    let id = enqueue(&s, "acme", "sleep 2; echo survived").await?;
    let sandbox = s
        .wait_for("the job to start", Duration::from_secs(30), || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok((j["state"] == "running").then(|| j["sandbox_id"].as_str().unwrap().to_string()))
        })
        .await?;
    let agent_dir = s.data_dir.join("sandboxes").join(&sandbox);
    let pids = processes_under(&agent_dir);
    assert!(
        !pids.is_empty(),
        "no process runs in {}",
        agent_dir.display()
    );
    for pid in pids {
        // SAFETY: signalling a process of this test's own scheduler.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let j = wait_job(&s, &id, Duration::from_secs(60)).await?;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"]["stdout"], "survived\n");
    assert_eq!(j["attempts"], 2);

    // Usage: the hour buckets add up to the total; job counts match.
    let u = s
        .get("/v1/usage?tenant=acme&granularity=hour&from=1900-01-01T00:00:00Z")
        .await;
    assert!(u.is_err(), "a range of too many hour buckets is refused");
    let today = chrono::Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let from = (today - chrono::Duration::days(1)).to_rfc3339();
    let to = (today + chrono::Duration::days(1)).to_rfc3339();
    let u = s
        .get(&format!(
            "/v1/usage?tenant=acme&granularity=hour&from={}&to={}",
            urlenc(&from),
            urlenc(&to)
        ))
        .await?;
    let buckets = u["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 48);
    let sum: f64 = buckets
        .iter()
        .map(|b| b["sandbox_seconds"].as_f64().unwrap())
        .sum();
    let total = u["total"]["sandbox_seconds"].as_f64().unwrap();
    assert!(total > 0.0);
    assert!((sum - total).abs() < 1e-6, "buckets {sum} != total {total}");
    assert_eq!(u["total"]["jobs_succeeded"], 52);
    let vcpu = u["total"]["vcpu_seconds"].as_f64().unwrap();
    let gib = u["total"]["gib_seconds"].as_f64().unwrap();
    assert!(
        (vcpu - total).abs() < 1e-6 && (gib - total / 2.0).abs() < 1e-6,
        "1 vCPU and 512 MiB priced: {u}"
    );
    let csv = s
        .req(
            Method::GET,
            &format!(
                "/v1/usage?tenant=acme&granularity=day&format=csv&from={}&to={}",
                urlenc(&from),
                urlenc(&to)
            ),
        )
        .send()
        .await?
        .text()
        .await?;
    assert!(csv.starts_with("tenant,start,end,sandbox_seconds"), "{csv}");
    assert_eq!(csv.lines().count(), 3);

    // SIGTERM: a clean exit and no agent left.
    let status = s.stop().await?;
    assert!(status.success(), "shoal serve exited with {status}");
    let left = processes_under(&s.data_dir.join("sandboxes"));
    assert!(left.is_empty(), "processes left behind: {left:?}");
    Ok(())
}

fn urlenc(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// Creates `tenant` on the pro plan, with these limits overridden.
async fn pro_tenant(s: &Server, tenant: &str, limits: Value) -> Result<()> {
    let (status, v) = s
        .send(
            Method::PUT,
            &format!("/v1/tenants/{tenant}"),
            &json!({"plan": "pro", "limits": limits}),
        )
        .await?;
    anyhow::ensure!(status == 201, "creating {tenant} answered {status}: {v}");
    Ok(())
}

/// Enqueues `cmd` for `tenant` and waits for it to succeed; answers the job.
async fn run_to_success(s: &Server, tenant: &str, cmd: &str) -> Result<Value> {
    let id = enqueue(s, tenant, cmd).await?;
    let job = wait_job(s, &id, Duration::from_secs(60)).await?;
    anyhow::ensure!(job["state"] == "succeeded", "{job}");
    Ok(job)
}

/// Started as a user would, without an advertise URL, on a port the system picks
/// (`--listen 127.0.0.1:0`): the agents are told the port actually bound, so jobs run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_on_a_port_the_system_picks_runs_jobs() -> Result<()> {
    let mut s = Server::start(&["--listen", "127.0.0.1:0"], &[]).await?;
    assert!(
        !s.url.ends_with(":0"),
        "the printed API address names the bound port: {}",
        s.url
    );
    pro_tenant(&s, "anyport", json!({})).await?;
    let job = run_to_success(&s, "anyport", "echo reached").await?;
    assert_eq!(job["result"]["stdout"], "reached\n");
    s.stop().await?;
    Ok(())
}

/// `--idle-policy adaptive`: the adaptive idle policy runs in the scheduler itself. With no
/// history yet, a tenant's idle sandbox is kept for the policy's fallback keep-alive (a minute),
/// not stopped after the 1 s idle timeout a `fixed` scheduler would apply; jobs run as usual. A
/// tenant with an idle timeout of its own keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_idle_policy_runs_in_the_scheduler() -> Result<()> {
    let mut s = Server::start(&["--idle-timeout", "1s", "--idle-policy", "adaptive"], &[]).await?;
    pro_tenant(&s, "learner", json!({})).await?;
    pro_tenant(&s, "own-timeout", json!({"idle_timeout_s": 1})).await?;
    let job = run_to_success(&s, "learner", "echo one").await?;
    run_to_success(&s, "own-timeout", "echo mine").await?;
    // Three idle timeouts later the learner's sandbox is still warm ...
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = pool(&s, "learner").await?;
    assert_eq!(p["sandboxes"]["ready"], 1, "{p}");
    // ... while the tenant with its own 1 s timeout has had its sandbox stopped.
    let own = pool(&s, "own-timeout").await?;
    assert_eq!(active(&own), 0, "{own}");
    // ... and the next job runs on it.
    let second = run_to_success(&s, "learner", "echo two").await?;
    assert_eq!(
        second["sandbox_id"], job["sandbox_id"],
        "the same warm sandbox"
    );
    s.stop().await?;
    Ok(())
}

/// The agent reports a job's end and gets its next job in the same request: one sandbox runs a
/// batch of 30 queued jobs, each recorded with its own output, with 30 completions and fewer
/// lease requests than jobs (a lease request is needed only when nothing was waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_hands_the_agent_its_next_job() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    pro_tenant(&s, "n", json!({"max_sandboxes": 1, "min_warm": 1})).await?;
    s.wait_for("the warm sandbox", Duration::from_secs(60), || async {
        Ok((pool(&s, "n").await?["sandboxes"]["ready"] == 1).then_some(()))
    })
    .await?;
    let lease_metric = |text: &str, route: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("shoal_http_requests_total")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains("status=\"200\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = s.req(Method::GET, "/metrics").send().await?.text().await?;
    let jobs: Vec<Value> = (0..30)
        .map(|i| json!({"tenant": "n", "kind": "agent", "spec": {"command": ["echo", format!("out{i}")]}}))
        .collect();
    let (st, v) = s
        .send(Method::POST, "/v1/jobs/batch", &json!({ "jobs": jobs }))
        .await?;
    assert_eq!(st, 200, "{v}");
    let ids: Vec<String> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let job = wait_job(&s, id, Duration::from_secs(120)).await?;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
        let out = job["result"]["stdout"].as_str().unwrap_or_default();
        assert!(out.contains(&format!("out{i}")), "{job}");
    }
    let after = s.req(Method::GET, "/metrics").send().await?.text().await?;
    let delta = |route| lease_metric(&after, route) - lease_metric(&before, route);
    assert_eq!(delta("/v1/agent/complete"), 30);
    let leases = delta("/v1/agent/lease");
    assert!(
        leases < 30,
        "{leases} lease requests for 30 jobs: the completions handed out none"
    );
    Ok(())
}
