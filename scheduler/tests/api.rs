//! The API's answers to bad input, wrong credentials and limits, through the real binary: each
//! gets its contract status and error code, and nothing is stored. Also: cancelling reaches the
//! running command within seconds.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::time::{Duration, Instant};

async fn job_count(s: &Server) -> Result<usize> {
    Ok(s.get("/v1/jobs?limit=1000").await?["jobs"]
        .as_array()
        .unwrap()
        .len())
}

async fn raw(
    s: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, Value, reqwest::header::HeaderMap)> {
    let mut r = s
        .anon(method, path)
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let v = resp.json().await.unwrap_or(Value::Null);
    Ok((status, v, headers))
}

fn expect(
    got: (u16, Value, reqwest::header::HeaderMap),
    status: u16,
    code: &str,
    field: Option<&str>,
) -> reqwest::header::HeaderMap {
    assert_eq!(
        got.0, status,
        "wanted {status} {code}, got {} {}",
        got.0, got.1
    );
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
    if let Some(f) = field {
        assert_eq!(got.1["error"]["field"], f, "{}", got.1);
    }
    got.2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_stores_nothing() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    let admin = s.token.clone();
    s.send(Method::PUT, "/v1/tenants/a", &json!({"plan": "pro"}))
        .await?;
    s.send(Method::PUT, "/v1/tenants/b", &json!({"plan": "pro"}))
        .await?;
    let (st, key) = s
        .send(Method::POST, "/v1/tenants/b/keys", &json!({}))
        .await?;
    assert_eq!(st, 201);
    let key_b = key["key"].as_str().unwrap().to_string();
    let good = json!({"tenant": "a", "kind": "agent", "spec": {"command": ["true"]}});
    let body = |v: &Value| serde_json::to_vec(v).unwrap();
    let before = job_count(&s).await?;

    expect(
        raw(
            &s,
            Method::POST,
            "/v1/jobs",
            Some(&admin),
            b"{not json".to_vec(),
        )
        .await?,
        400,
        "malformed_json",
        None,
    );
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("kind");
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&missing)).await?,
        400,
        "invalid",
        Some("kind"),
    );
    let mut unknown = good.clone();
    unknown["colour"] = json!("blue");
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&unknown)).await?,
        400,
        "invalid",
        Some("colour"),
    );
    let mut kind = good.clone();
    kind["kind"] = json!("mining");
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&kind)).await?,
        400,
        "invalid",
        Some("kind"),
    );
    let mut spec = good.clone();
    spec["spec"] = json!({"command": []});
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&spec)).await?,
        400,
        "invalid",
        Some("spec"),
    );
    spec["spec"] = json!({"command": ["true"], "extra": 1});
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&spec)).await?,
        400,
        "invalid",
        Some("spec"),
    );
    let mut attempts = good.clone();
    attempts["max_attempts"] = json!(0);
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&attempts)).await?,
        400,
        "invalid",
        Some("max_attempts"),
    );
    let mut wrong_type = good.clone();
    wrong_type["priority"] = json!("high");
    expect(
        raw(
            &s,
            Method::POST,
            "/v1/jobs",
            Some(&admin),
            body(&wrong_type),
        )
        .await?,
        400,
        "invalid",
        None,
    );
    let mut tenant = good.clone();
    tenant["tenant"] = json!("nobody");
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&tenant)).await?,
        404,
        "not_found",
        Some("tenant"),
    );
    let mut big = good.clone();
    big["spec"]["env"] = json!({"X": "y".repeat(33 * 1024 * 1024)});
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&big)).await?,
        413,
        "payload_too_large",
        None,
    );
    expect(
        raw(&s, Method::POST, "/v1/jobs", None, body(&good)).await?,
        401,
        "unauthorized",
        None,
    );
    expect(
        raw(
            &s,
            Method::POST,
            "/v1/jobs",
            Some("not-a-token"),
            body(&good),
        )
        .await?,
        401,
        "unauthorized",
        None,
    );
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&key_b), body(&good)).await?,
        403,
        "forbidden",
        None,
    );
    // A semantic diff with a bad option and a flaky spec without runs are refused at the door.
    let sd = json!({"tenant": "a", "kind": "semantic_diff", "spec": {"baseline": {}, "candidate": {}, "options": {"ignore_pathz": []}}});
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&sd)).await?,
        400,
        "invalid",
        Some("spec"),
    );
    let fl = json!({"tenant": "a", "kind": "flaky_analysis", "spec": {"reports": []}});
    expect(
        raw(&s, Method::POST, "/v1/jobs", Some(&admin), body(&fl)).await?,
        400,
        "invalid",
        Some("spec"),
    );
    assert_eq!(job_count(&s).await?, before, "a refused job was stored");

    // Tenants: bad plan, bad limits, bad id, tenant keys cannot manage tenants.
    expect(
        raw(
            &s,
            Method::PUT,
            "/v1/tenants/c",
            Some(&admin),
            body(&json!({"plan": "platinum"})),
        )
        .await?,
        400,
        "invalid",
        Some("plan"),
    );
    expect(
        raw(
            &s,
            Method::PUT,
            "/v1/tenants/c",
            Some(&admin),
            body(&json!({"plan": "pro", "limits": {"max_sandboxes": 0}})),
        )
        .await?,
        400,
        "invalid",
        Some("limits.max_sandboxes"),
    );
    expect(
        raw(
            &s,
            Method::PUT,
            "/v1/tenants/c",
            Some(&admin),
            body(&json!({"plan": "pro", "limits": {"max_sandbox": 3}})),
        )
        .await?,
        400,
        "invalid",
        Some("max_sandbox"),
    );
    expect(
        raw(
            &s,
            Method::PUT,
            "/v1/tenants/Bad!",
            Some(&admin),
            body(&json!({"plan": "pro"})),
        )
        .await?,
        400,
        "invalid",
        Some("id"),
    );
    expect(
        raw(
            &s,
            Method::PUT,
            "/v1/tenants/c",
            Some(&key_b),
            body(&json!({"plan": "pro"})),
        )
        .await?,
        403,
        "forbidden",
        None,
    );
    expect(
        raw(&s, Method::GET, "/v1/tenants/c", Some(&admin), vec![]).await?,
        404,
        "not_found",
        None,
    );
    expect(
        raw(&s, Method::GET, "/v1/tenants/a", Some(&key_b), vec![]).await?,
        403,
        "forbidden",
        None,
    );

    // A tenant key reaches its own tenant, and sees only its own jobs.
    let (st, _) = {
        let r = s
            .anon(Method::POST, "/v1/jobs")
            .bearer_auth(&key_b)
            .json(&json!({"tenant": "b", "kind": "agent", "spec": {"command": ["true"]}}))
            .send()
            .await?;
        (r.status().as_u16(), ())
    };
    assert_eq!(st, 202);
    let (st, a_job) = s.send(Method::POST, "/v1/jobs", &good).await?;
    assert_eq!(st, 202);
    let a_id = a_job["id"].as_str().unwrap();
    expect(
        raw(
            &s,
            Method::GET,
            &format!("/v1/jobs/{a_id}"),
            Some(&key_b),
            vec![],
        )
        .await?,
        404,
        "not_found",
        None,
    );
    let (st, listed, _) = raw(&s, Method::GET, "/v1/jobs", Some(&key_b), vec![]).await?;
    assert_eq!(st, 200);
    assert!(
        listed["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["tenant"] == "b"),
        "{listed}"
    );
    expect(
        raw(&s, Method::GET, "/v1/jobs?tenant=a", Some(&key_b), vec![]).await?,
        403,
        "forbidden",
        None,
    );
    expect(
        raw(
            &s,
            Method::GET,
            "/v1/jobs?state=sleeping",
            Some(&admin),
            vec![],
        )
        .await?,
        400,
        "invalid",
        Some("state"),
    );
    expect(
        raw(
            &s,
            Method::GET,
            "/v1/usage?granularity=week",
            Some(&admin),
            vec![],
        )
        .await?,
        400,
        "invalid",
        Some("granularity"),
    );
    expect(
        raw(
            &s,
            Method::GET,
            "/v1/usage?from=yesterday",
            Some(&admin),
            vec![],
        )
        .await?,
        400,
        "invalid",
        Some("from"),
    );
    expect(
        raw(&s, Method::GET, "/v1/nothing-here", Some(&admin), vec![]).await?,
        404,
        "not_found",
        None,
    );

    // Idempotency: the same key gives the first job with 200.
    let mut idem = good.clone();
    idem["idempotency_key"] = json!("order-42");
    let (st1, j1) = s.send(Method::POST, "/v1/jobs", &idem).await?;
    let (st2, j2) = s.send(Method::POST, "/v1/jobs", &idem).await?;
    assert_eq!((st1, st2), (202, 200));
    assert_eq!(j1["id"], j2["id"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_quota_limits_hold() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    let limits = json!({"enqueue_rate_per_s": 0.5, "enqueue_burst": 2, "jobs_per_month": 5});
    s.send(
        Method::PUT,
        "/v1/tenants/r",
        &json!({"plan": "free", "limits": limits}),
    )
    .await?;
    let job = json!({"tenant": "r", "kind": "agent", "spec": {"command": ["true"]}});
    assert_eq!(s.send(Method::POST, "/v1/jobs", &job).await?.0, 202);
    assert_eq!(s.send(Method::POST, "/v1/jobs", &job).await?.0, 202);
    let r = s.req(Method::POST, "/v1/jobs").json(&job).send().await?;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str()?.parse()?;
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["code"], "rate_limited");

    // Quota: lift the rate, keep the quota of 5; at 4 (80%) the tenant is warned; the 6th is refused.
    s.send(
        Method::PUT,
        "/v1/tenants/r",
        &json!({"plan": "free", "limits": {"enqueue_rate_per_s": null, "jobs_per_month": 5}}),
    )
    .await?;
    assert_eq!(s.get("/v1/tenants/r").await?["usage"]["warning"], false);
    assert_eq!(s.send(Method::POST, "/v1/jobs", &job).await?.0, 202);
    assert_eq!(s.send(Method::POST, "/v1/jobs", &job).await?.0, 202);
    let t = s.get("/v1/tenants/r").await?;
    assert_eq!(
        (t["usage"]["jobs"].as_u64(), t["usage"]["warning"].as_bool()),
        (Some(4), Some(true))
    );
    assert_eq!(s.send(Method::POST, "/v1/jobs", &job).await?.0, 202);
    let (st, v) = s.send(Method::POST, "/v1/jobs", &job).await?;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (429, Some("quota_exceeded"))
    );
    let events = s.get("/v1/events?tenant=r").await?;
    assert_eq!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "quota_warning")
            .count(),
        1,
        "warned once: {events}"
    );
    let metrics = s.req(Method::GET, "/metrics").send().await?.text().await?;
    assert!(
        metrics.contains("shoal_quota_warnings_total{tenant=\"r\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_command_within_seconds() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/c", &json!({"plan": "pro"}))
        .await?;
    let marker = s.data_dir.join("still-running");
    let cmd = format!("sleep 30; touch {}", marker.display());
    let (_, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "c", "kind": "agent", "spec": {"command": ["sh", "-c", cmd]}}),
        )
        .await?;
    let id = v["id"].as_str().unwrap().to_string();
    s.wait_for("the job to run", Duration::from_secs(30), || async {
        Ok((s.get(&format!("/v1/jobs/{id}")).await?["state"] == "running").then_some(()))
    })
    .await?;
    let sandbox_dir = s.data_dir.join("sandboxes");
    let t0 = Instant::now();
    let (st, j) = s
        .send(Method::POST, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await?;
    assert_eq!((st, j["state"].as_str()), (200, Some("cancelled")));
    // The command (a `sleep` under the sandbox's directory) is gone within seconds.
    s.wait_for(
        "the command to be killed",
        Duration::from_secs(10),
        || async {
            let left = shoal_testkit::server::processes_under(&sandbox_dir)
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.starts_with("sleep") || c.contains("sleep 30"))
                });
            Ok((left.count() == 0).then_some(()))
        },
    )
    .await?;
    eprintln!("cancel reached the command in {:?}", t0.elapsed());
    // It stays cancelled, and a finished job cannot be cancelled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.get(&format!("/v1/jobs/{id}")).await?["state"],
        "cancelled"
    );
    assert!(!marker.exists());
    let (_, done) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "c", "kind": "agent", "spec": {"command": ["true"]}}),
        )
        .await?;
    let done_id = done["id"].as_str().unwrap().to_string();
    s.wait_for("the second job", Duration::from_secs(30), || async {
        Ok((s.get(&format!("/v1/jobs/{done_id}")).await?["state"] == "succeeded").then_some(()))
    })
    .await?;
    let (st, v) = s
        .send(
            Method::POST,
            &format!("/v1/jobs/{done_id}/cancel"),
            &json!({}),
        )
        .await?;
    assert_eq!((st, v["error"]["code"].as_str()), (409, Some("conflict")));
    Ok(())
}

/// A batch of valid, invalid and repeated jobs: one answer per job in order, each what a single
/// enqueue would have answered, and every admitted job stored (nothing lost, nothing doubled). A
/// batch over 1,000 jobs is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_each_job_and_lose_nothing() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    let open = json!({"enqueue_rate_per_s": null, "jobs_per_month": null});
    s.send(
        Method::PUT,
        "/v1/tenants/b",
        &json!({"plan": "pro", "limits": open}),
    )
    .await?;
    let job = |key: Option<&str>| {
        let mut j = json!({"tenant": "b", "kind": "agent", "spec": {"command": ["true"]}});
        if let Some(k) = key {
            j["idempotency_key"] = json!(k);
        }
        j
    };
    let (st, first) = s.send(Method::POST, "/v1/jobs", &job(Some("k0"))).await?;
    assert_eq!(st, 202, "{first}");
    let batch = json!({"jobs": [
        job(Some("k1")),
        {"tenant": "b", "kind": "nope", "spec": {}},
        job(Some("k1")),
        {"tenant": "nobody", "kind": "agent", "spec": {"command": ["true"]}},
        {"tenant": "b", "kind": "agent"},
        {"tenant": "b", "kind": "agent", "spec": {"command": ["true"]}, "colour": "red"},
        job(None),
        job(Some("k0")),
        {"tenant": "b", "kind": "agent", "spec": {"command": []}},
    ]});
    let (st, v) = s.send(Method::POST, "/v1/jobs/batch", &batch).await?;
    assert_eq!(st, 200, "{v}");
    let answers = v["jobs"].as_array().unwrap();
    let got: Vec<(u64, Option<&str>, Option<&str>)> = answers
        .iter()
        .map(|a| {
            (
                a["status"].as_u64().unwrap(),
                a["error"]["code"].as_str(),
                a["error"]["field"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (202, None, None),
            (400, Some("invalid"), Some("kind")),
            (200, None, None),
            (404, Some("not_found"), Some("tenant")),
            (400, Some("invalid"), Some("spec")),
            (400, Some("invalid"), Some("colour")),
            (202, None, None),
            (200, None, None),
            (400, Some("invalid"), Some("spec")),
        ],
        "{v}"
    );
    for a in answers.iter().filter(|a| a.get("error").is_some()) {
        assert!(
            a["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(a.get("id").is_none(), "{a}");
    }
    // The repeated key answers the job its first use made, in this batch or before it.
    assert_eq!(answers[2]["id"], answers[0]["id"]);
    assert_eq!(answers[7]["id"], first["id"]);
    assert_ne!(answers[0]["id"], answers[6]["id"]);
    for i in [0, 6] {
        assert_eq!(answers[i]["state"], "queued");
        let id = answers[i]["id"].as_str().unwrap();
        let stored = s.get(&format!("/v1/jobs/{id}")).await?;
        assert_eq!(
            (stored["id"].as_str(), stored["tenant"].as_str()),
            (Some(id), Some("b"))
        );
    }
    assert_eq!(job_count(&s).await?, 3, "the first job and the batch's two");

    // Over 1,000: a clear 400 naming `jobs`, and nothing admitted.
    let big = json!({"jobs": vec![job(None); 1001]});
    expect(
        raw(
            &s,
            Method::POST,
            "/v1/jobs/batch",
            Some(&s.token),
            serde_json::to_vec(&big)?,
        )
        .await?,
        400,
        "invalid",
        Some("jobs"),
    );
    expect(
        raw(
            &s,
            Method::POST,
            "/v1/jobs/batch",
            Some(&s.token),
            b"{\"job\": []}".to_vec(),
        )
        .await?,
        400,
        "invalid",
        Some("job"),
    );
    // An entry that is not an object is not a batch: refused whole.
    let odd = json!({"jobs": [job(None), 5]});
    expect(
        raw(
            &s,
            Method::POST,
            "/v1/jobs/batch",
            Some(&s.token),
            serde_json::to_vec(&odd)?,
        )
        .await?,
        400,
        "invalid",
        Some("jobs[1]"),
    );
    assert_eq!(job_count(&s).await?, 3);
    // Exactly 1,000 is a batch.
    let full = json!({"jobs": vec![job(None); 1000]});
    let (st, v) = s.send(Method::POST, "/v1/jobs/batch", &full).await?;
    assert_eq!(st, 200);
    let ids: std::collections::HashSet<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["status"], 202, "{a}");
            a["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(s.get("/v1/tenants/b").await?["usage"]["jobs"], 1003);
    Ok(())
}

/// A batch that crosses the tenant's monthly quota admits exactly up to it, in order; the rest
/// get what a single enqueue would (429 `quota_exceeded` with the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_crossing_the_quota_admits_up_to_it() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    let limits = json!({"enqueue_rate_per_s": null, "jobs_per_month": 5});
    s.send(
        Method::PUT,
        "/v1/tenants/q",
        &json!({"plan": "free", "limits": limits}),
    )
    .await?;
    let job = json!({"tenant": "q", "kind": "agent", "spec": {"command": ["true"]}});
    assert_eq!(s.send(Method::POST, "/v1/jobs", &job).await?.0, 202);
    assert_eq!(s.send(Method::POST, "/v1/jobs", &job).await?.0, 202);
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs/batch",
            &json!({"jobs": vec![job.clone(); 6]}),
        )
        .await?;
    assert_eq!(st, 200, "{v}");
    let answers = v["jobs"].as_array().unwrap();
    let statuses: Vec<u64> = answers
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 202, 202, 429, 429, 429], "{v}");
    for a in &answers[3..] {
        assert_eq!(a["error"]["code"], "quota_exceeded", "{a}");
        assert!(a["retry_after_s"].as_u64().is_some_and(|s| s >= 1), "{a}");
    }
    assert_eq!(s.get("/v1/tenants/q").await?["usage"]["jobs"], 5);
    assert_eq!(job_count(&s).await?, 5);
    Ok(())
}
