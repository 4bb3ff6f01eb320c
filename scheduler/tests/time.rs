//! Time, end to end on the real binary: retries wait out their backoff (also across a SIGKILL of
//! the scheduler between attempts), a delayed job starts on time on a sandbox woken for it one
//! boot lead before, and a cron schedule makes one job per fire time, each started on time, also
//! across a restart. The timings asserted are the ones the feature promises, with margin.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::time::Duration;

/// The boot lead: the adaptive idle policy's default (5 s).
const LEAD_MS: i64 = 5_000;

fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

async fn tenant(s: &Server, id: &str, limits: Value) -> Result<()> {
    let (st, v) = s
        .send(
            Method::PUT,
            &format!("/v1/tenants/{id}"),
            &json!({"plan": "pro", "limits": limits}),
        )
        .await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    Ok(())
}

async fn enqueue(s: &Server, body: Value) -> Result<String> {
    let (st, v) = s.send(Method::POST, "/v1/jobs", &body).await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    Ok(v["id"].as_str().unwrap().to_string())
}

async fn wait_job(
    s: &Server,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    s.wait_for(what, Duration::from_secs(90), || async {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        Ok(pred(&j).then_some(j))
    })
    .await
}

fn terminal(j: &Value) -> bool {
    ["succeeded", "failed", "dead", "cancelled"].contains(&j["state"].as_str().unwrap_or(""))
}

/// The history of a job that failed three times, with the gaps between attempts checked.
fn check_three_failures(j: &Value) {
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(j["attempts"], 3, "{j}");
    let h = j["attempt_history"].as_array().unwrap();
    assert_eq!(h.len(), 3, "{j}");
    for (i, a) in h.iter().enumerate() {
        assert_eq!(a["attempt"], i as u64 + 1);
        assert_eq!(a["outcome"], "failure", "{a}");
    }
    let gap = |k: usize| ms(&h[k + 1]["started_at"]) - ms(&h[k]["finished_at"]);
    eprintln!("retry gaps: {} ms, {} ms", gap(0), gap(1));
    assert!(gap(0) >= 800, "the first backoff was {} ms: {j}", gap(0));
    assert!(gap(1) >= 1_600, "the second backoff was {} ms: {j}", gap(1));
    assert!(j.get("next_attempt_at").is_none(), "{j}");
}

fn failing(tenant: &str) -> Value {
    json!({
        "tenant": tenant, "kind": "agent",
        "spec": {"command": ["sh", "-c", "exit 1"]},
        "retry": {"max_attempts": 3, "on": ["failure"], "initial_backoff_s": 1},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_after_its_backoff() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    tenant(&s, "t", json!({})).await?;
    let id = enqueue(&s, failing("t")).await?;
    // Between attempts the job is queued with its next attempt's time.
    let between = wait_job(&s, &id, "the first attempt failed", |j| {
        j["attempt_history"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
    })
    .await?;
    if between["state"] == "queued" {
        let next = ms(&between["next_attempt_at"]);
        let ended = ms(&between["attempt_history"][0]["finished_at"]);
        assert!((800..=1_200).contains(&(next - ended)), "{between}");
    }
    let j = wait_job(&s, &id, "the job ended", terminal).await?;
    check_three_failures(&j);
    assert_eq!(j["retry"]["on"], json!(["failure"]));
    s.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_backoff_survives_a_sigkill_of_the_scheduler() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    tenant(&s, "t", json!({})).await?;
    let id = enqueue(&s, failing("t")).await?;
    wait_job(&s, &id, "the first attempt failed", |j| {
        j["attempt_history"]
            .as_array()
            .is_some_and(|h| h.len() == 1)
    })
    .await?;
    s.kill()?;
    s.restart().await?;
    let j = wait_job(&s, &id, "the job ended", terminal).await?;
    check_three_failures(&j);
    s.stop().await?;
    Ok(())
}

/// The wakes (`create`, `start`, `resume`) the control loop recorded for `tenant`, as times.
async fn wakes(s: &Server, tenant: &str) -> Result<Vec<i64>> {
    let ev = s
        .get(&format!("/v1/events?tenant={tenant}&limit=500"))
        .await?;
    let list = ev["events"].as_array().cloned().unwrap_or_default();
    Ok(list
        .iter()
        .filter(|e| ["create", "start", "resume"].contains(&e["kind"].as_str().unwrap_or("")))
        .map(|e| ms(&e["at"]))
        .collect())
}

async fn active(s: &Server, tenant: &str) -> Result<u64> {
    let p = s.get(&format!("/v1/pools/{tenant}")).await?;
    Ok(["booting", "ready", "busy"]
        .iter()
        .map(|k| p["sandboxes"][k].as_u64().unwrap_or(0))
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_starts_on_time_on_a_sandbox_woken_for_it() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    // Idle sandboxes stop after a second: the pool goes cold between jobs.
    tenant(&s, "cold", json!({"idle_timeout_s": 1})).await?;
    let first = enqueue(
        &s,
        json!({"tenant": "cold", "kind": "agent", "spec": {"command": ["true"]}}),
    )
    .await?;
    wait_job(&s, &first, "the first job ran", terminal).await?;
    s.wait_for("every sandbox stopped", Duration::from_secs(30), || async {
        Ok((active(&s, "cold").await? == 0).then_some(()))
    })
    .await?;
    let before = wakes(&s, "cold").await?.len();
    let id = enqueue(
        &s,
        json!({"tenant": "cold", "kind": "agent", "spec": {"command": ["true"]}, "delay_s": 5}),
    )
    .await?;
    let queued = s.get(&format!("/v1/jobs/{id}")).await?;
    assert_eq!(queued["state"], "queued");
    let run_at = ms(&queued["run_at"]);
    let j = wait_job(&s, &id, "the delayed job ran", terminal).await?;
    assert_eq!(j["state"], "succeeded", "{j}");
    let started = ms(&j["started_at"]);
    // Never before its time; how soon after is a benchmark figure (printed), not asserted:
    // the warm-when-due check below is structural (the wake came before `run_at`).
    assert!(
        started >= run_at,
        "started {} ms before its run_at",
        run_at - started
    );
    eprintln!("delayed job: started {} ms after run_at", started - run_at);
    let all = wakes(&s, "cold").await?;
    // Events come newest first: the wakes since the delayed job was enqueued.
    let new: Vec<i64> = all[..all.len() - before].to_vec();
    assert!(!new.is_empty(), "no sandbox was woken for the job");
    let woke = *new.iter().min().unwrap();
    eprintln!(
        "delayed job: sandbox woken {} ms before run_at",
        run_at - woke
    );
    assert!(woke < run_at, "woken {} ms after run_at", woke - run_at);
    assert!(
        woke >= run_at - LEAD_MS - 2_000,
        "woken {} ms before run_at",
        run_at - woke
    );
    s.stop().await?;
    Ok(())
}

/// The jobs the schedule `name` of tenant `t` made, oldest fire first.
async fn schedule_jobs(s: &Server, name: &str) -> Result<Vec<Value>> {
    let list = s.get("/v1/jobs?tenant=t&limit=100").await?;
    let mut jobs: Vec<Value> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["schedule"] == format!("t/{name}").as_str())
        .cloned()
        .collect();
    jobs.sort_by_key(|j| ms(&j["run_at"]));
    Ok(jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_time_on_time_across_a_restart() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    tenant(&s, "t", json!({"idle_timeout_s": 1})).await?;
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/schedules/t/every5",
            &json!({"cron": "*/5 * * * * *", "job": {"kind": "agent", "spec": {"command": ["true"]}}}),
        )
        .await?;
    assert_eq!(st, 201, "{v}");
    let created = ms(&v["created_at"]);
    let first_fire = ms(&v["next_fire_at"]);
    assert!(first_fire > created && first_fire <= created + 5_000, "{v}");
    let listed = s.get("/v1/schedules?tenant=t").await?;
    assert_eq!(listed["schedules"][0]["name"], "every5", "{listed}");
    // Two fires, then a restart right after the second job started.
    s.wait_for("two jobs started", Duration::from_secs(30), || async {
        let jobs = schedule_jobs(&s, "every5").await?;
        Ok((jobs
            .iter()
            .filter(|j| j.get("started_at").is_some())
            .count()
            >= 2)
            .then_some(()))
    })
    .await?;
    s.stop().await?;
    s.restart().await?;
    // Until 20 s after the schedule was made: four fire times.
    let end = created + 20_000;
    let wait = end - chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    let (st, _) = s
        .send(Method::DELETE, "/v1/schedules/t/every5", &json!(null))
        .await?;
    assert_eq!(st, 204);
    s.wait_for("the four jobs ended", Duration::from_secs(30), || async {
        let jobs = schedule_jobs(&s, "every5").await?;
        Ok((jobs.len() >= 4 && jobs.iter().all(terminal)).then_some(jobs))
    })
    .await?;
    let jobs = schedule_jobs(&s, "every5").await?;
    assert_eq!(jobs.len(), 4, "{jobs:#?}");
    let fires: Vec<i64> = jobs.iter().map(|j| ms(&j["run_at"])).collect();
    for (i, w) in fires.windows(2).enumerate() {
        assert_eq!(w[1] - w[0], 5_000, "fire {i} and the next: {fires:?}");
    }
    assert_eq!(fires[0], first_fire);
    for (i, j) in jobs.iter().enumerate() {
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["attempts"], 1, "ran once: {j}");
        let late = ms(&j["started_at"]) - ms(&j["run_at"]);
        eprintln!("schedule: fire {i} started {late} ms after its fire time");
        assert!(late >= 0, "{j}");
        // Each fire ran in its own period (before the next fire time); the latency itself
        // is printed above, a figure rather than an assertion.
        assert!(late < 5_000, "fire {i} started {late} ms late: {j}");
    }
    s.stop().await?;
    Ok(())
}

/// Bad times and policies get the contract's error shape, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_times_and_policies_are_refused() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    tenant(&s, "t", json!({})).await?;
    let base = json!({"tenant": "t", "kind": "agent", "spec": {"command": ["true"]}});
    for (patch, field) in [
        (json!({"delay_s": -1}), None),
        (json!({"delay_s": 1e12}), Some("delay_s")),
        (json!({"run_at": "tomorrow"}), Some("run_at")),
        (
            json!({"run_at": "2026-01-01T00:00:00Z", "delay_s": 1}),
            Some("delay_s"),
        ),
        (
            json!({"retry": {"max_attempts": 21}}),
            Some("retry.max_attempts"),
        ),
        (json!({"retry": {"on": ["sometimes"]}}), None),
        (
            json!({"retry": {"initial_backoff_s": -1}}),
            Some("retry.initial_backoff_s"),
        ),
        (
            json!({"retry": {"initial_backoff_s": 10, "max_backoff_s": 5}}),
            Some("retry.max_backoff_s"),
        ),
        (
            json!({"retry": {"max_attempts": 2}, "max_attempts": 3}),
            Some("retry.max_attempts"),
        ),
    ] {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (st, v) = s.send(Method::POST, "/v1/jobs", &body).await?;
        assert_eq!(st, 400, "{patch}: {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{patch}: {v}");
        }
    }
    for (body, field) in [
        (
            json!({"cron": "* * * *", "job": {"kind": "agent", "spec": {"command": ["true"]}}}),
            "cron",
        ),
        (
            json!({"cron": "* * * * *", "timezone": "Nowhere/Land", "job": {"kind": "agent", "spec": {"command": ["true"]}}}),
            "timezone",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kind": "agent", "spec": {"command": []}}}),
            "spec",
        ),
        (
            json!({"cron": "* * * * *", "job": {"kind": "agent", "spec": {"command": ["true"]}, "delay_s": 3}}),
            "job",
        ),
    ] {
        let (st, v) = s.send(Method::PUT, "/v1/schedules/t/s", &body).await?;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (st, _) = s
        .send(
            Method::PUT,
            "/v1/schedules/t/bad%20name",
            &json!({"cron": "* * * * *", "job": {"kind": "agent", "spec": {"command": ["true"]}}}),
        )
        .await?;
    assert_eq!(st, 400);
    let (st, _) = s
        .send(Method::DELETE, "/v1/schedules/t/none", &json!(null))
        .await?;
    assert_eq!(st, 404);
    s.stop().await?;
    Ok(())
}
