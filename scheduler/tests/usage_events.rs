//! Usage events end to end, on each store: three tenants' jobs on the process provider, the
//! scheduler SIGKILLed mid-run and restarted, stopped and started again, and a usage sink (an
//! axum server here) that refuses its first batches and then some with 500 and 429. Every closed
//! interval's event reaches the sink, each id always with the same data; the pull API pages
//! through the same events without a gap or a repeat; per tenant the events add up to
//! `GET /v1/usage` exactly, and no sandbox-millisecond is billed twice.

use anyhow::Result;
use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::{Server, processes_under};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the sink saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    refused: usize,
    /// Every event offered, by id (refused batches too): to check an id never changes its data.
    offered: HashMap<String, Value>,
    /// Events of the batches the sink took.
    taken: BTreeMap<String, Value>,
    problems: Vec<String>,
}

/// A CloudEvents batch sink on a loopback port that refuses the first two batches (500) and then
/// every third (429, `Retry-After: 0`).
async fn sink() -> Result<(String, Arc<Mutex<Seen>>)> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/api/v1/events",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = Arc::clone(&state);
            async move {
                let mut s = state.lock().unwrap();
                s.requests += 1;
                let n = s.requests;
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if ct != "application/cloudevents-batch+json" {
                    s.problems.push(format!("content type {ct}"));
                }
                let batch: Vec<Value> = match serde_json::from_str(&body) {
                    Ok(b) => b,
                    Err(e) => {
                        s.problems.push(format!("not a JSON array: {e}"));
                        return (StatusCode::BAD_REQUEST, HeaderMap::new());
                    }
                };
                for ev in &batch {
                    let id = ev["id"].as_str().unwrap_or_default().to_string();
                    if let Some(before) = s.offered.get(&id)
                        && before != ev
                    {
                        s.problems.push(format!("id {id} came with other data"));
                    }
                    s.offered.insert(id, ev.clone());
                }
                if n <= 2 {
                    s.refused += 1;
                    return (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new());
                }
                if n % 3 == 0 {
                    s.refused += 1;
                    let mut h = HeaderMap::new();
                    h.insert("retry-after", "0".parse().unwrap());
                    return (StatusCode::TOO_MANY_REQUESTS, h);
                }
                for ev in batch {
                    s.taken
                        .insert(ev["id"].as_str().unwrap_or_default().to_string(), ev);
                }
                (StatusCode::NO_CONTENT, HeaderMap::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/api/v1/events", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, seen))
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every usage event through the pull API, `limit` at a time.
async fn pull_all(s: &Server, limit: u32) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => format!("/v1/usage/events?limit={limit}"),
            Some(a) => format!("/v1/usage/events?limit={limit}&after={a}"),
        };
        let page = s.get(&path).await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            assert_eq!(
                page["next_cursor"].as_str(),
                after.as_deref().or(Some("0.0")),
                "an empty page keeps the cursor"
            );
            return Ok(out);
        }
        after = page["next_cursor"].as_str().map(str::to_string);
        out.extend(events);
    }
}

const TENANTS: [&str; 3] = ["alpha", "beta", "gamma"];
const VCPU: f64 = 0.000_05;
const GIB: f64 = 0.000_01;

async fn run(database: Option<String>) -> Result<()> {
    let (url, seen) = sink().await?;
    let cfg_dir = tempfile::tempdir()?;
    let cfg = cfg_dir.path().join("shoal.toml");
    std::fs::write(
        &cfg,
        format!(
            "usage_source = \"test-fleet\"\n[prices]\ncurrency = \"EUR\"\n[prices.process]\nvcpu_second = {VCPU}\ngib_second = {GIB}\n"
        ),
    )?;
    let mut args = vec![
        "--idle-timeout".to_string(),
        "1s".into(),
        "--usage-sink".into(),
        url.clone(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    if let Some(db) = &database {
        args.extend(["--database-url".to_string(), db.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let from = (now_ms() / 3_600_000) * 3_600_000;
    let mut s = Server::start(&args, &[("SHOAL_USAGE_SINK_RETRY_INITIAL", "50ms")]).await?;
    for t in TENANTS {
        let (st, v) = s
            .send(
                Method::PUT,
                &format!("/v1/tenants/{t}"),
                &json!({"plan": "pro"}),
            )
            .await?;
        anyhow::ensure!(st == 200 || st == 201, "{st} {v}");
    }
    let mut jobs = Vec::new();
    for t in TENANTS {
        for i in 0..2 {
            let (st, v) = s
                .send(
                    Method::POST,
                    "/v1/jobs",
                    &json!({"tenant": t, "kind": "agent",
                        "spec": {"command": ["sh", "-c", format!("sleep {}; echo ok", 1 + i)]}}),
                )
                .await?;
            anyhow::ensure!(st == 202, "{st} {v}");
            jobs.push(v["id"].as_str().unwrap().to_string());
        }
    }
    // Let the jobs get going, then kill the scheduler outright.
    s.wait_for(
        "a job of every tenant running",
        Duration::from_secs(60),
        || async {
            let mut running = std::collections::HashSet::new();
            for id in &jobs {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                if j["state"] != "queued" {
                    running.insert(j["tenant"].as_str().unwrap_or_default().to_string());
                }
            }
            Ok((running.len() == TENANTS.len()).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.kill()?;
    let dir = s.data_dir.join("sandboxes");
    for _ in 0..400 {
        if processes_under(&dir).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.restart().await?;
    // The first control pass after the restart reconciles; under load it may come a little
    // after the scheduler answers ready.
    s.wait_for(
        "the restart closed the killed run's intervals",
        Duration::from_secs(30),
        || async {
            Ok(s.log()
                .contains("closing the billing of a sandbox the provider no longer lists")
                .then_some(()))
        },
    )
    .await?;
    for id in &jobs {
        s.wait_for(
            &format!("job {id} finished"),
            Duration::from_secs(90),
            || async {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                Ok(["succeeded", "failed", "dead"]
                    .contains(&j["state"].as_str().unwrap_or(""))
                    .then_some(()))
            },
        )
        .await?;
    }
    // A clean stop closes every interval that is still open.
    assert!(s.stop().await?.success());
    let to = now_ms();
    s.restart().await?;

    // The pull API: the same events whatever the page size, no repeat.
    let all = pull_all(&s, 1000).await?;
    assert!(!all.is_empty(), "no usage events at all");
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for limit in [1, 3] {
        let paged = pull_all(&s, limit).await?;
        let paged_ids: Vec<&str> = paged.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(paged_ids, ids, "paging by {limit} gives the same stream");
    }
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), ids.len(), "an event twice in the stream");

    // The sink gets every one of them, each id always with the same data.
    s.wait_for(
        "the sink to have every event",
        Duration::from_secs(60),
        || async {
            let got = seen.lock().unwrap();
            Ok(ids
                .iter()
                .all(|id| got.taken.contains_key(*id))
                .then_some(()))
        },
    )
    .await?;
    {
        let got = seen.lock().unwrap();
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        assert!(got.refused >= 2, "the sink refused batches");
        for e in &all {
            let id = e["id"].as_str().unwrap();
            assert_eq!(&got.taken[id], e, "the pushed event is the pulled one");
        }
        assert_eq!(got.taken.len(), all.len(), "the sink got nothing else");
        eprintln!(
            "{} events; the sink answered {} requests, refused {}",
            all.len(),
            got.requests,
            got.refused
        );
    }

    // Per tenant, the events add up to the usage report exactly; no millisecond twice.
    let mut by_sandbox: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for t in TENANTS {
        let mine: Vec<&Value> = all.iter().filter(|e| e["subject"] == t).collect();
        assert!(!mine.is_empty(), "tenant {t} has usage events");
        let mut event_ms = 0i64;
        let (mut vcpu, mut cost) = (0.0f64, 0.0f64);
        for e in &mine {
            let d = &e["data"];
            assert_eq!(e["type"], "dev.shoal.sandbox.usage");
            assert_eq!(e["source"], "test-fleet");
            assert_eq!(d["tenant"], t);
            assert_eq!(d["provider"], "process");
            assert_eq!(d["currency"], "EUR");
            let (f, to_) = (ms(&d["from"]), ms(&d["to"]));
            assert!(f < to_ && f / 3_600_000 == (to_ - 1) / 3_600_000, "{e}");
            assert_eq!(e["time"], d["to"]);
            event_ms += to_ - f;
            vcpu += d["vcpu_seconds"].as_f64().unwrap();
            let c = d["cost"].as_f64().unwrap();
            let want = d["vcpu_seconds"].as_f64().unwrap() * VCPU
                + d["gib_seconds"].as_f64().unwrap() * GIB;
            assert!((c - want).abs() < 1e-9, "{e}");
            cost += c;
            by_sandbox
                .entry(d["sandbox"].as_str().unwrap().to_string())
                .or_default()
                .push((f, to_));
        }
        let r = s
            .get(&format!(
                "/v1/usage?tenant={t}&granularity=hour&from={}&to={}",
                rfc3339(from),
                rfc3339(to)
            ))
            .await?;
        let report_ms = (r["total"]["sandbox_seconds"].as_f64().unwrap() * 1e3).round() as i64;
        assert_eq!(report_ms, event_ms, "tenant {t}: {r}");
        assert!((r["total"]["vcpu_seconds"].as_f64().unwrap() - vcpu).abs() < 1e-6);
        assert!(
            (r["total"]["cost"].as_f64().unwrap() - cost).abs() < 1e-6,
            "{r}"
        );
        assert_eq!(r["currency"], "EUR");
    }
    for (sb, mut spans) in by_sandbox {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "sandbox {sb} billed twice: {spans:?}");
        }
    }
    s.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_reach_a_flaky_sink_across_a_crash_sqlite() -> Result<()> {
    run(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_reach_a_flaky_sink_across_a_crash_postgres() -> Result<()> {
    let Some(pg) = shoal_testkit::services::Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    run(Some(url)).await
}

/// What `tenant` has spent this month, as `GET /v1/usage` says.
async fn spent(s: &Server, tenant: &str) -> Result<f64> {
    let r = s
        .get(&format!(
            "/v1/usage?tenant={tenant}&to={}",
            rfc3339(now_ms() + 1)
        ))
        .await?;
    Ok(r["total"]["cost"].as_f64().unwrap_or(0.0))
}

/// A tenant with a monthly budget and `block`: admitted while it has spent less than the budget,
/// refused with 429 `budget_exceeded` from the first admission after, and warned at 80% and told
/// at 100% once each, as operators' events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_blocks_new_jobs_once_spent_and_never_before() -> Result<()> {
    let cfg_dir = tempfile::tempdir()?;
    let cfg = cfg_dir.path().join("shoal.toml");
    // One vCPU-second costs 1: a default (1 vCPU) sandbox spends 1 a second.
    std::fs::write(
        &cfg,
        "[prices]\ncurrency = \"USD\"\n[prices.process]\nvcpu_second = 1.0\ngib_second = 0.0\n",
    )?;
    let cfg = cfg.display().to_string();
    let mut s = Server::start(&["--idle-timeout", "60s", "--config", &cfg], &[]).await?;
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/thrifty",
            &json!({"plan": "pro", "limits": {"monthly_budget": 3.0, "on_budget_exceeded": "block", "max_sandboxes": 1}}),
        )
        .await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    let job = json!({"tenant": "thrifty", "kind": "agent", "spec": {"command": ["sh", "-c", "sleep 0.2"]}});
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let refused = loop {
        anyhow::ensure!(std::time::Instant::now() < deadline, "never refused");
        let before = spent(&s, "thrifty").await?;
        let (st, v) = s.send(Method::POST, "/v1/jobs", &job).await?;
        let after = spent(&s, "thrifty").await?;
        match st {
            202 => assert!(before < 3.0, "admitted at {before} spent of 3"),
            429 => {
                assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
                assert!(after >= 3.0, "refused at {after} spent of 3: {v}");
                break v;
            }
            other => anyhow::bail!("{other} {v}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("budget")
    );
    let (st, _) = s.send(Method::POST, "/v1/jobs", &job).await?;
    assert_eq!(st, 429, "still refused");
    s.wait_for("both budget signals", Duration::from_secs(30), || async {
        let ev = s.get("/v1/events?tenant=thrifty").await?;
        let kinds: Vec<String> = ev["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        let n = |k: &str| kinds.iter().filter(|x| *x == k).count();
        Ok((n("budget_warning") == 1 && n("budget_exceeded") == 1).then_some(()))
    })
    .await?;
    // The dashboard's overview shows the spend against the budget.
    s.wait_for("the overview's spend", Duration::from_secs(30), || async {
        let o = s.get("/v1/overview").await?;
        let t = o["tenants"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .find(|t| t["tenant"] == "thrifty");
        Ok(t.filter(|t| t["spend"]["exceeded"] == true)
            .map(|t| t["spend"].clone()))
    })
    .await
    .map(|sp| {
        assert_eq!(sp["budget"], 3.0);
        assert_eq!(sp["currency"], "USD");
        assert!(sp["spent"].as_f64().unwrap() >= 3.0);
    })?;
    let metrics = s.req(Method::GET, "/metrics").send().await?.text().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("shoal_budget_usage_ratio{tenant=\"thrifty\"}")),
        "the budget gauge is exported"
    );
    s.stop().await?;
    Ok(())
}

/// A schedule's fire passes the same budget rule as `POST /v1/jobs`: a tenant blocked by its
/// budget gets no job from its schedule. Each fire time passes without a job, recorded as an event
/// `schedule_skipped` with the code `budget_exceeded`, and the schedule moves on to its next time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_block_refuses_schedule_fires_too() -> Result<()> {
    let cfg_dir = tempfile::tempdir()?;
    let cfg = cfg_dir.path().join("shoal.toml");
    std::fs::write(
        &cfg,
        "[prices]\ncurrency = \"USD\"\n[prices.process]\nvcpu_second = 1.0\ngib_second = 0.0\n",
    )?;
    let cfg = cfg.display().to_string();
    let mut s = Server::start(&["--config", &cfg], &[]).await?;
    // A budget of 0 is spent from the start.
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/broke",
            &json!({"plan": "pro", "limits": {"monthly_budget": 0.0, "on_budget_exceeded": "block"}}),
        )
        .await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    let job = json!({"kind": "agent", "spec": {"command": ["true"]}});
    let mut direct = job.clone();
    direct["tenant"] = json!("broke");
    let (st, v) = s.send(Method::POST, "/v1/jobs", &direct).await?;
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/schedules/broke/tick",
            &json!({"cron": "* * * * * *", "job": job}),
        )
        .await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    let first_next = v["next_fire_at"].as_str().unwrap().to_string();
    let skipped = s
        .wait_for("a skipped fire", Duration::from_secs(30), || async {
            let ev = s.get("/v1/events?tenant=broke").await?;
            Ok(ev["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .find(|e| e["kind"] == "schedule_skipped"))
        })
        .await?;
    assert_eq!(skipped["detail"]["schedule"], "broke/tick", "{skipped}");
    assert_eq!(skipped["detail"]["code"], "budget_exceeded", "{skipped}");
    assert!(
        skipped["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("budget"),
        "{skipped}"
    );
    // The schedule moved on past the refused fire time, and made no job.
    s.wait_for(
        "the schedule to move on",
        Duration::from_secs(30),
        || async {
            let l = s.get("/v1/schedules?tenant=broke").await?;
            let next = l["schedules"][0]["next_fire_at"]
                .as_str()
                .unwrap_or("")
                .to_string();
            Ok((next > first_next).then_some(()))
        },
    )
    .await?;
    let jobs = s.get("/v1/jobs?tenant=broke").await?;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
    s.stop().await?;
    Ok(())
}
