//! Faults of the scheduler itself on the embedded default: a clean SIGTERM hands running jobs back
//! (the agent gets its grace period) and a restart finishes them; a SIGKILL mid-job loses nothing
//! either: the restarted scheduler finds the sandbox gone, puts the job back, and runs it to one
//! recorded completion; the ledger closes the dead sandbox's billing.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::receiver::count_calls;
use shoal_testkit::server::{Server, processes_under};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

async fn enqueue(s: &Server, cmd: &str) -> Result<String> {
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "t", "kind": "agent", "spec": {"command": ["sh", "-c", cmd]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    Ok(v["id"].as_str().unwrap().to_string())
}

async fn wait_state(s: &Server, id: &str, states: &[&str], timeout: Duration) -> Result<Value> {
    s.wait_for(&format!("job {id} in {states:?}"), timeout, || async {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        Ok(states
            .contains(&j["state"].as_str().unwrap_or(""))
            .then_some(j))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_back_and_restart_finishes() -> Result<()> {
    let mut s = Server::start(&[], &[("SHOAL_AGENT_GRACE", "1s")]).await?;
    s.send(Method::PUT, "/v1/tenants/t", &json!({"plan": "pro"}))
        .await?;
    // Each run calls the test back (a sandbox sees nothing of the host's files to count in).
    let runs = Arc::new(AtomicUsize::new(0));
    let port = count_calls(Arc::clone(&runs)).await?;
    let id = enqueue(
        &s,
        &format!("curl -s http://127.0.0.1:{port}/run; sleep 4; echo done"),
    )
    .await?;
    wait_state(&s, &id, &["running"], Duration::from_secs(30)).await?;
    assert!(s.stop().await?.success());
    assert!(
        processes_under(&s.data_dir.join("sandboxes")).is_empty(),
        "agents left behind"
    );
    assert!(
        s.log().contains("shutting down"),
        "the first run shut down cleanly"
    );
    s.restart().await?;
    let j = wait_state(
        &s,
        &id,
        &["succeeded", "failed", "dead"],
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(
        (j["state"].as_str(), j["result"]["stdout"].as_str()),
        (Some("succeeded"), Some("done\n"))
    );
    assert_eq!(
        j["attempts"], 1,
        "the hand-back at shutdown did not use an attempt: {j}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "ran once before the stop, once after"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_job_loses_nothing() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/t", &json!({"plan": "pro"}))
        .await?;
    let id = enqueue(&s, "sleep 3; echo finished").await?;
    let j = wait_state(&s, &id, &["running"], Duration::from_secs(30)).await?;
    let sandbox = j["sandbox_id"].as_str().unwrap().to_string();
    s.kill()?;
    // The agent dies with its scheduler (parent-death signal), and so does its job.
    let dir = s.data_dir.join("sandboxes");
    for _ in 0..100 {
        if processes_under(&dir).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        processes_under(&dir).is_empty(),
        "agents outlived a killed scheduler"
    );
    s.restart().await?;
    let j = wait_state(
        &s,
        &id,
        &["succeeded", "failed", "dead"],
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(
        (j["state"].as_str(), j["result"]["stdout"].as_str()),
        (Some("succeeded"), Some("finished\n")),
        "{j}"
    );
    assert_eq!(j["attempts"], 2);
    // The dead sandbox is closed in the ledger: usage is finite and counts it.
    let pool = s.get("/v1/pools/t").await?;
    assert!(
        pool["sandbox_list"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["id"] != sandbox.as_str()),
        "the dead sandbox is gone from the pool"
    );
    let u = s.get("/v1/usage?tenant=t").await?;
    let total = u["total"]["sandbox_seconds"].as_f64().unwrap();
    assert!(total > 0.0 && total < 600.0, "{u}");
    Ok(())
}
