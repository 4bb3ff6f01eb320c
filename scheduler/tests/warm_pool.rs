//! The shared warm pool end to end (real binaries, SQLite, process sandboxes): a tenant with no
//! sandbox gets a job and it runs on a claimed blank sandbox (a `claim` event, no create for it),
//! the pool is refilled, and the claimed sandbox never serves another tenant.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::time::Duration;

async fn tenant(s: &Server, id: &str) -> Result<()> {
    let (status, v) = s
        .send(
            Method::PUT,
            &format!("/v1/tenants/{id}"),
            &json!({"plan": "pro"}),
        )
        .await?;
    anyhow::ensure!(status == 201, "creating {id} answered {status}: {v}");
    Ok(())
}

async fn run(s: &Server, tenant: &str, cmd: &str) -> Result<Value> {
    let id = s.enqueue_sh(tenant, cmd).await?;
    let job = s
        .wait_for(&format!("job {id}"), Duration::from_secs(60), || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            let done = !matches!(j["state"].as_str(), Some("queued" | "running"));
            Ok(done.then_some(j))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", s.log()))?;
    anyhow::ensure!(job["state"] == "succeeded", "job ended {job}");
    Ok(job)
}

/// Events of one tenant (or all) of one kind, oldest first.
async fn events(s: &Server, tenant: Option<&str>, kind: &str) -> Result<Vec<Value>> {
    let q = tenant.map_or(String::new(), |t| format!("&tenant={t}"));
    let v = s.get(&format!("/v1/events?limit=1000{q}")).await?;
    let mut out: Vec<Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect();
    out.reverse();
    Ok(out)
}

async fn blanks_made(s: &Server, n: usize) -> Result<Vec<Value>> {
    s.wait_for(
        &format!("{n} blank sandboxes"),
        Duration::from_secs(30),
        || async {
            let b = events(s, None, "warm_pool_blank").await?;
            Ok((b.len() >= n).then_some(b))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}", s.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_on_a_claimed_blank_which_stays_its_tenants() -> Result<()> {
    let s = Server::start(&["--warm-pool", "2", "--idle-timeout", "60s"], &[]).await?;
    tenant(&s, "acme").await?;
    tenant(&s, "globex").await?;
    let first = blanks_made(&s, 2).await?;
    let blank_ids: Vec<&str> = first
        .iter()
        .map(|e| e["detail"]["sandbox"].as_str().unwrap())
        .collect();

    // acme has no sandbox: its job runs on a claimed blank, and no sandbox is created for it.
    let job = run(&s, "acme", "echo hello").await?;
    let claimed = job["sandbox_id"].as_str().unwrap().to_string();
    assert!(
        blank_ids.contains(&claimed.as_str()),
        "{claimed} is one of {blank_ids:?}"
    );
    let claims = events(&s, Some("acme"), "claim").await?;
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0]["detail"]["sandbox"], claimed.as_str());
    assert!(events(&s, Some("acme"), "create").await?.is_empty());

    // The pool is refilled: a third blank.
    let refilled = blanks_made(&s, 3).await?;
    let third = refilled[2]["detail"]["sandbox"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!blank_ids.contains(&third.as_str()));

    // globex claims a blank of its own: never acme's sandbox, whatever it runs.
    for _ in 0..3 {
        let job = run(&s, "globex", "echo there").await?;
        assert_ne!(job["sandbox_id"].as_str().unwrap(), claimed);
    }
    let g = events(&s, Some("globex"), "claim").await?;
    assert_eq!(g.len(), 1, "{g:?}");
    assert_ne!(g[0]["detail"]["sandbox"], claimed.as_str());
    // acme's next job runs on its own (claimed) sandbox, still warm.
    let again = run(&s, "acme", "echo again").await?;
    assert_eq!(again["sandbox_id"].as_str().unwrap(), claimed);
    Ok(())
}
