//! Sandbox health end to end, on the process provider with the real binaries: a busy sandbox's
//! agent is frozen (SIGSTOP), so it no longer heartbeats; the scheduler marks the sandbox
//! `unhealthy` once three heartbeat intervals have passed, puts its job back, destroys it and
//! replaces it. The job runs again on the new sandbox and succeeds once, and the frozen sandbox's
//! billing ends at its last heartbeat.

use anyhow::Result;
use chrono::DateTime;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::receiver::count_calls;
use shoal_testkit::server::{Server, processes_under};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The agents' heartbeat interval in this test.
const HEARTBEAT_MS: i64 = 300;
/// The control loop's slow tick, on which the health check runs (`control::TICK`).
const TICK_MS: i64 = 1_000;

/// The pid of the agent of sandbox `sandbox` (not its job's processes, nor a bubblewrap parent).
fn agent_pid(s: &Server, sandbox: &str) -> Option<u32> {
    processes_under(&s.data_dir.join("sandboxes").join(sandbox))
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "shoal-agent")
        })
}

fn millis(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|d| d.timestamp_millis())
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
}

/// The tenant's events of `kind`.
async fn events(s: &Server, kind: &str) -> Result<Vec<Value>> {
    let v = s.get("/v1/events?tenant=t&limit=1000").await?;
    Ok(v["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_found_unhealthy_and_its_job_runs_again_elsewhere() -> Result<()> {
    let hb = format!("{HEARTBEAT_MS}ms");
    // A lease far longer than the health limit: it is the health check, not the lease's lapse,
    // that gives the job back.
    let s = Server::start(
        &[],
        &[
            ("SHOAL_HEARTBEAT_INTERVAL", hb.as_str()),
            ("SHOAL_LEASE_TTL", "120s"),
        ],
    )
    .await?;
    s.send(Method::PUT, "/v1/tenants/t", &json!({"plan": "pro"}))
        .await?;
    let runs = Arc::new(AtomicUsize::new(0));
    let port = count_calls(Arc::clone(&runs)).await?;
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "t", "kind": "agent", "spec": {"command": ["sh", "-c",
                format!("curl -s http://127.0.0.1:{port}/run; sleep 2; echo done")]}}),
        )
        .await?;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    // The job runs (it has called back), and its agent has heartbeated at least once.
    let first = s
        .wait_for(
            "the first attempt to run",
            Duration::from_secs(60),
            || async {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                Ok(
                    (j["state"] == "running" && runs.load(Ordering::SeqCst) == 1)
                        .then(|| j["sandbox_id"].as_str().unwrap().to_string()),
                )
            },
        )
        .await?;
    let pid = s
        .wait_for("the agent's process", Duration::from_secs(10), || async {
            Ok(agent_pid(&s, &first))
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(2 * HEARTBEAT_MS as u64)).await;
    let stopped_at = chrono::Utc::now().timestamp_millis();
    // Freeze the agent of this test's own scheduler (kill(1): no unsafe needed).
    let frozen = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()?;
    assert!(frozen.success(), "kill -STOP {pid}: {frozen}");

    // The sandbox is found unhealthy, its job goes back, and it is destroyed.
    let marked = s
        .wait_for(
            "the sandbox to be unhealthy",
            Duration::from_secs(30),
            || async {
                Ok(events(&s, "sandbox_unhealthy")
                    .await?
                    .into_iter()
                    .find(|e| e["detail"]["sandbox"] == first.as_str()))
            },
        )
        .await?;
    let d = &marked["detail"];
    assert_eq!(d["cause"], "agent_silent", "{marked}");
    assert_eq!(d["was"], "busy", "{marked}");
    assert_eq!(d["jobs_requeued"], 1, "{marked}");
    let last_seen = d["last_seen"].as_i64().unwrap();
    let silent = d["silent_ms"].as_i64().unwrap();
    // Its last sign of life is the last heartbeat before the freeze (one may have been on its
    // way as the agent stopped).
    assert!(
        last_seen <= stopped_at + HEARTBEAT_MS && last_seen >= stopped_at - 3 * HEARTBEAT_MS,
        "last seen at {last_seen}, frozen at {stopped_at}"
    );
    eprintln!(
        "marked unhealthy after {silent} ms of silence (limit {} ms); last heartbeat {} ms before the freeze",
        3 * HEARTBEAT_MS,
        stopped_at - last_seen
    );
    // Not before three heartbeat intervals of silence; within a tick of them (with a tick's
    // slack for a loaded machine).
    assert!(
        (3 * HEARTBEAT_MS..=3 * HEARTBEAT_MS + 2 * TICK_MS).contains(&silent),
        "marked after {silent} ms of silence"
    );

    // The job runs again on another sandbox and succeeds, once.
    let j = s
        .wait_for("the job to finish", Duration::from_secs(60), || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok(["succeeded", "failed", "dead"]
                .contains(&j["state"].as_str().unwrap_or(""))
                .then_some(j))
        })
        .await?;
    assert_eq!(
        (j["state"].as_str(), j["result"]["stdout"].as_str()),
        (Some("succeeded"), Some("done\n")),
        "{j}"
    );
    assert_eq!(j["attempts"], 2, "one attempt lost with the sandbox: {j}");
    assert_ne!(j["sandbox_id"], first.as_str(), "{j}");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "once per attempt");

    // The frozen sandbox was destroyed (its agent with it) and is gone from the pool.
    s.wait_for(
        "the frozen sandbox to go",
        Duration::from_secs(30),
        || async {
            let pool = s.get("/v1/pools/t").await?;
            let list = pool["sandbox_list"].as_array().cloned().unwrap_or_default();
            Ok(list.iter().all(|x| x["id"] != first.as_str()).then_some(()))
        },
    )
    .await?;
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || agent_pid(&s, &first).is_none(),
        "the frozen agent outlived its sandbox"
    );
    let destroyed = events(&s, "destroy").await?;
    assert!(
        destroyed
            .iter()
            .any(|e| e["detail"]["sandbox"] == first.as_str()),
        "{destroyed:?}"
    );
    let pool = s.get("/v1/pools/t").await?;
    assert!(pool["sandboxes"]["unhealthy"].is_u64(), "{pool}");

    // Its billing ends at its last heartbeat: the usage events of the frozen sandbox stop there.
    let usage = s.get("/v1/usage/events?limit=1000").await?;
    let mine: Vec<&Value> = usage["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["sandbox"] == first.as_str())
        .collect();
    assert!(!mine.is_empty(), "{usage}");
    let end = mine
        .iter()
        .map(|e| millis(e["data"]["to"].as_str().unwrap()))
        .max()
        .unwrap();
    assert_eq!(
        end, last_seen,
        "billed to {end}, last heartbeat {last_seen}"
    );
    Ok(())
}
