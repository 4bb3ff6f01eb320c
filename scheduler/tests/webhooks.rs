//! Webhooks end to end through the real binary.
//!
//! - The crash run, on SQLite and on Postgres: a receiver refuses the first two attempts of every
//!   event; 50 jobs of two tenants succeed, fail or are cancelled while the scheduler is
//!   SIGKILLed twice and restarted on the same data. Every terminal job's event reaches every
//!   endpoint that wants it, signed; retries of one event carry one `webhook-id`; the body's data
//!   is the job as the API shows it; the deliveries view shows the attempts; endpoints filtered
//!   to one tenant or one type hear nothing else.
//! - The API: validation, who sees and deletes which endpoint, and the refusal of private
//!   addresses for endpoints a tenant key creates.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_protocol::webhooks::verify;
use shoal_testkit::receiver::{Received, Receiver};
use shoal_testkit::server::Server;
use shoal_testkit::services::Postgres;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WEBHOOK_ENV: [(&str, &str); 2] = [
    ("SHOAL_WEBHOOK_RETRY_INITIAL", "100ms"),
    // The receiver is on loopback; a tenant key's endpoint may reach it only with this.
    ("SHOAL_WEBHOOK_ALLOW_PRIVATE", "true"),
];

async fn put_tenant(s: &Server, id: &str) -> Result<String> {
    let limits = json!({"enqueue_rate_per_s": null, "jobs_per_month": null, "max_sandboxes": 4});
    let (st, v) = s
        .send(
            Method::PUT,
            &format!("/v1/tenants/{id}"),
            &json!({"plan": "pro", "limits": limits}),
        )
        .await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    let (st, v) = s
        .send(Method::POST, &format!("/v1/tenants/{id}/keys"), &json!({}))
        .await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    Ok(v["key"].as_str().context("key")?.to_string())
}

/// `POST /v1/webhooks` with `token`; status and answer.
async fn create_webhook(s: &Server, token: &str, body: &Value) -> Result<(u16, Value)> {
    let r = s
        .anon(Method::POST, "/v1/webhooks")
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

async fn get_as(s: &Server, token: &str, path: &str) -> Result<(u16, Value)> {
    let r = s.anon(Method::GET, path).bearer_auth(token).send().await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

/// An endpoint as the test knows it: where its requests arrive and its secret.
struct Endpoint {
    id: String,
    path: String,
    secret: String,
}

async fn endpoint(
    s: &Server,
    token: &str,
    rx: &Receiver,
    path: &str,
    extra: Value,
) -> Result<Endpoint> {
    let mut body = json!({"url": format!("{}{path}", rx.url)});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    let (st, v) = create_webhook(s, token, &body).await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    Ok(Endpoint {
        id: v["id"].as_str().context("id")?.into(),
        path: path.into(),
        secret: v["secret"].as_str().context("secret")?.into(),
    })
}

async fn enqueue(s: &Server, tenant: &str, cmd: &str) -> Result<String> {
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": tenant, "kind": "agent", "spec": {"command": ["sh", "-c", cmd]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    Ok(v["id"].as_str().context("id")?.to_string())
}

/// Every delivery of an endpoint, through the paged deliveries view.
async fn deliveries(s: &Server, id: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let v = s
            .get(&format!("/v1/webhooks/{id}/deliveries?limit=7{cursor}"))
            .await?;
        out.extend(v["deliveries"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return Ok(out),
        }
    }
}

/// Waits for something to hold on the receiver, through restarts and retries.
async fn wait_received(
    rx: &Receiver,
    what: &str,
    done: impl FnMut(&[Received]) -> bool,
) -> Result<()> {
    anyhow::ensure!(
        rx.wait_until(Duration::from_secs(120), done).await,
        "timed out waiting for {what}"
    );
    Ok(())
}

async fn crash_run(db_args: &[&str]) -> Result<()> {
    let rx = Receiver::start(2).await?;
    let mut s = Server::start(db_args, &WEBHOOK_ENV).await?;
    let admin = s.token.clone();
    put_tenant(&s, "alpha").await?;
    let beta_key = put_tenant(&s, "beta").await?;
    let all = endpoint(&s, &admin, &rx, "/all", json!({})).await?;
    let alpha = endpoint(&s, &admin, &rx, "/alpha", json!({"tenant": "alpha"})).await?;
    // Created with beta's key: beta's events only, whatever it asks.
    let beta = endpoint(&s, &beta_key, &rx, "/beta", json!({})).await?;
    let failures = endpoint(
        &s,
        &admin,
        &rx,
        "/failures",
        json!({"events": ["job.failed"]}),
    )
    .await?;

    let mut jobs = Vec::new();
    let mut cancel = None;
    for i in 0..50 {
        let tenant = if i % 2 == 0 { "alpha" } else { "beta" };
        let cmd = match i {
            7 => "sleep 60",
            i if i % 3 == 0 => "echo no; exit 3",
            _ => "sleep 0.1; echo yes",
        };
        let id = enqueue(&s, tenant, cmd).await?;
        if i == 7 {
            cancel = Some(id.clone());
        }
        jobs.push(id);
        if i == 19 {
            // Kill while events of the first jobs are being refused and retried.
            wait_received(&rx, "the first attempts", |r| r.len() >= 6).await?;
            s.kill()?;
            s.restart().await?;
        }
        if i == 34 {
            let id = cancel.as_deref().unwrap();
            let (st, v) = s
                .send(Method::POST, &format!("/v1/jobs/{id}/cancel"), &json!({}))
                .await?;
            anyhow::ensure!(st == 200 && v["state"] == "cancelled", "{st} {v}");
            let seen = rx.received().len();
            wait_received(&rx, "more attempts", |r| r.len() >= seen + 6).await?;
            s.kill()?;
            s.restart().await?;
        }
    }

    // Every job ends; then every event it caused arrives where it should.
    let mut views = BTreeMap::new();
    for id in &jobs {
        let j = s
            .wait_for(
                &format!("job {id} to end"),
                Duration::from_secs(120),
                || async {
                    let j = s.get(&format!("/v1/jobs/{id}")).await?;
                    let end = ["succeeded", "failed", "dead", "cancelled"]
                        .contains(&j["state"].as_str().unwrap_or(""));
                    Ok(end.then_some(j))
                },
            )
            .await?;
        views.insert(id.clone(), j);
    }
    assert_eq!(views[cancel.as_deref().unwrap()]["state"], "cancelled");
    let wanted = |e: &Endpoint, j: &Value| match e.path.as_str() {
        "/all" => true,
        "/alpha" => j["tenant"] == "alpha",
        "/beta" => j["tenant"] == "beta",
        _ => j["state"] == "failed",
    };
    let endpoints = [&all, &alpha, &beta, &failures];
    let expected: BTreeSet<(String, String)> = endpoints
        .iter()
        .flat_map(|e| {
            views
                .iter()
                .filter(|(_, j)| wanted(e, j))
                .map(|(id, _)| (e.path.clone(), id.clone()))
        })
        .collect();
    assert!(
        expected.len() > 100,
        "{} deliveries expected",
        expected.len()
    );
    let accepted = |r: &[Received]| -> BTreeSet<(String, String)> {
        r.iter()
            .filter(|r| r.status == 204)
            .filter_map(|r| {
                let v: Value = serde_json::from_slice(&r.body).ok()?;
                Some((r.path.clone(), v["data"]["id"].as_str()?.to_string()))
            })
            .collect()
    };
    wait_received(&rx, "every event at every endpoint", |r| {
        accepted(r).is_superset(&expected)
    })
    .await?;
    let received = rx.received();
    assert_eq!(
        accepted(&received),
        expected,
        "nothing arrives that was not wanted"
    );

    // Every request is signed with its endpoint's secret; each event keeps one webhook-id across
    // its retries, and was refused twice before it was taken.
    let mut attempts: BTreeMap<(String, String), Vec<&Received>> = BTreeMap::new();
    for r in &received {
        let e = endpoints
            .iter()
            .find(|e| e.path == r.path)
            .context("unknown path")?;
        let now: i64 = r.timestamp.parse()?;
        verify(
            &e.secret,
            &r.id,
            &r.timestamp,
            &r.signature,
            &r.body,
            now,
            5,
        )
        .with_context(|| format!("signature of {} at {}", r.id, r.path))?;
        let v: Value = serde_json::from_slice(&r.body)?;
        let job = v["data"]["id"].as_str().context("data.id")?.to_string();
        attempts.entry((r.path.clone(), job)).or_default().push(r);
    }
    for ((path, job), tries) in &attempts {
        let ids: BTreeSet<&str> = tries.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), 1, "{path} {job}: retries carried {ids:?}");
        assert!(tries.len() >= 3, "{path} {job}: {} attempts", tries.len());
        assert_eq!(
            tries.iter().map(|r| r.status).take(3).collect::<Vec<_>>(),
            [503, 500, 204],
            "{path} {job}"
        );
        // The body: the event's type, and the job exactly as the API shows it.
        let v: Value = serde_json::from_slice(&tries[2].body)?;
        let view = &views[job];
        assert_eq!(
            v["type"],
            format!("job.{}", view["state"].as_str().unwrap())
        );
        assert_eq!(&v["data"], view, "{path} {job}");
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    // One event per job: every endpoint got the same webhook-id for it.
    for job in views.keys() {
        let ids: BTreeSet<&str> = attempts
            .iter()
            .filter(|((_, j), _)| j == job)
            .map(|(_, t)| t[0].id.as_str())
            .collect();
        assert_eq!(ids.len(), 1, "job {job}: {ids:?}");
    }

    // The deliveries view shows each event delivered after its attempts.
    for e in endpoints {
        // A delivery is recorded as delivered just after its endpoint answered 204, so the last
        // few may still read `pending` for a moment after the receiver has them all.
        let d = s
            .wait_for(
                &format!("every delivery to {} recorded", e.path),
                Duration::from_secs(30),
                || async {
                    let d = deliveries(&s, &e.id).await?;
                    Ok(d.iter().all(|d| d["state"] == "delivered").then_some(d))
                },
            )
            .await?;
        let mine: Vec<&(String, String)> = expected.iter().filter(|(p, _)| *p == e.path).collect();
        assert_eq!(d.len(), mine.len(), "{}: {d:?}", e.path);
        for d in &d {
            assert_eq!(d["state"], "delivered", "{d}");
            assert!(d["attempts"].as_u64().unwrap() >= 3, "{d}");
            assert_eq!(d["last_status"], 204, "{d}");
            assert!(d.get("next_attempt_at").is_none(), "{d}");
            let tries = attempts
                .values()
                .find(|t| t[0].id == d["id"].as_str().unwrap() && t[0].path == e.path)
                .with_context(|| format!("{d} was never received"))?;
            assert_eq!(
                d["type"],
                serde_json::from_slice::<Value>(&tries[0].body)?["type"]
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_lose_no_webhook_on_sqlite() -> Result<()> {
    crash_run(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_lose_no_webhook_on_postgres() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    crash_run(&["--database-url", &url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_validates_scopes_and_refuses_private_targets() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    let admin = s.token.clone();
    let a = put_tenant(&s, "a").await?;
    let b = put_tenant(&s, "b").await?;
    let expect = |got: (u16, Value), status: u16, code: &str, field: Option<&str>| {
        assert_eq!(got.0, status, "{}", got.1);
        assert_eq!(got.1["error"]["code"], code, "{}", got.1);
        if let Some(f) = field {
            assert_eq!(got.1["error"]["field"], f, "{}", got.1);
        }
    };

    // The platform's endpoint: every tenant, every type, any address; the secret shown once.
    let (st, p) = create_webhook(&s, &admin, &json!({"url": "http://127.0.0.1:9/hook"})).await?;
    assert_eq!(st, 201, "{p}");
    assert!(p["id"].as_str().unwrap().starts_with("whk_"));
    assert!(p["secret"].as_str().unwrap().starts_with("whsec_"));
    assert!(
        shoal_protocol::webhooks::secret_key(p["secret"].as_str().unwrap())
            .unwrap()
            .len()
            >= 24
    );
    assert_eq!(p["tenant"], Value::Null);
    assert_eq!(p["events"].as_array().unwrap().len(), 8);
    let (st, pa) = create_webhook(
        &s,
        &admin,
        &json!({"url": "http://10.0.0.1/x", "tenant": "a", "events": ["job.failed", "quota.warning"]}),
    )
    .await?;
    assert_eq!(
        (st, &pa["tenant"], &pa["events"]),
        (201, &json!("a"), &json!(["job.failed", "quota.warning"]))
    );

    // Bad input: a clear 400 (or 404 for an unknown tenant) and nothing stored.
    for (body, field) in [
        (json!({"url": "ftp://example.com/"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "http://"}), "url"),
        (
            json!({"url": format!("https://example.com/{}", "a".repeat(2100))}),
            "url",
        ),
        (
            json!({"url": "https://example.com/", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "events": ["job.exploded"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com/", "colour": "red"}),
            "colour",
        ),
        (json!({"events": ["job.failed"]}), "url"),
    ] {
        expect(
            create_webhook(&s, &admin, &body).await?,
            400,
            "invalid",
            Some(field),
        );
    }
    expect(
        create_webhook(
            &s,
            &admin,
            &json!({"url": "https://example.com/", "tenant": "nobody"}),
        )
        .await?,
        404,
        "not_found",
        Some("tenant"),
    );
    expect(
        create_webhook(&s, "wrong", &json!({"url": "https://example.com/"})).await?,
        401,
        "unauthorized",
        None,
    );

    // A tenant key: its own tenant only, and public addresses only.
    expect(
        create_webhook(
            &s,
            &a,
            &json!({"url": "https://93.184.215.14/hook", "tenant": "b"}),
        )
        .await?,
        403,
        "forbidden",
        Some("tenant"),
    );
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.0.0.1/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://0x7f000001/hook",
        "http://192.168.1.10/hook",
    ] {
        expect(
            create_webhook(&s, &a, &json!({"url": url})).await?,
            400,
            "invalid",
            Some("url"),
        );
    }
    let (st, ta) = create_webhook(&s, &a, &json!({"url": "https://93.184.215.14/hook"})).await?;
    assert_eq!((st, &ta["tenant"]), (201, &json!("a")), "{ta}");
    let (st, tb) = create_webhook(
        &s,
        &b,
        &json!({"url": "https://93.184.215.14/b", "tenant": "b"}),
    )
    .await?;
    assert_eq!(st, 201, "{tb}");

    // Who sees what: the admin all, a tenant its own; never a secret.
    let ids = |v: &Value| -> Vec<String> {
        v["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, list) = get_as(&s, &admin, "/v1/webhooks").await?;
    assert_eq!(
        ids(&list).len(),
        4,
        "the refused requests stored nothing: {list}"
    );
    assert!(
        list["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w.get("secret").is_none())
    );
    let (_, list) = get_as(&s, &a, "/v1/webhooks").await?;
    assert_eq!(ids(&list), [ta["id"].as_str().unwrap()]);
    let (_, list) = get_as(&s, &b, "/v1/webhooks").await?;
    assert_eq!(ids(&list), [tb["id"].as_str().unwrap()]);

    // Another owner's endpoint is not found, to read or to delete.
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    for (token, other) in [(&a, id(&tb)), (&a, id(&p)), (&b, id(&ta)), (&b, id(&pa))] {
        expect(
            get_as(&s, token, &format!("/v1/webhooks/{other}/deliveries")).await?,
            404,
            "not_found",
            None,
        );
        let r = s
            .anon(Method::DELETE, &format!("/v1/webhooks/{other}"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(r.status(), 404);
    }
    let (st, d) = get_as(&s, &a, &format!("/v1/webhooks/{}/deliveries", id(&ta))).await?;
    assert_eq!((st, &d["deliveries"]), (200, &json!([])));
    for q in ["limit=0", "limit=1001", "cursor=abc", "colour=red"] {
        let (st, v) = get_as(
            &s,
            &admin,
            &format!("/v1/webhooks/{}/deliveries?{q}", id(&p)),
        )
        .await?;
        assert_eq!(
            (st, &v["error"]["code"]),
            (400, &json!("invalid")),
            "{q}: {v}"
        );
    }
    let r = s
        .anon(Method::DELETE, &format!("/v1/webhooks/{}", id(&ta)))
        .bearer_auth(&a)
        .send()
        .await?;
    assert_eq!(r.status(), 204);
    let r = s
        .req(Method::DELETE, &format!("/v1/webhooks/{}", id(&ta)))
        .send()
        .await?;
    assert_eq!(r.status(), 404, "deleted once");
    let r = s
        .req(Method::DELETE, &format!("/v1/webhooks/{}", id(&tb)))
        .send()
        .await?;
    assert_eq!(r.status(), 204, "the admin deletes any endpoint");
    let (_, list) = get_as(&s, &admin, "/v1/webhooks").await?;
    assert_eq!(ids(&list), [id(&p), id(&pa)]);
    Ok(())
}

/// Runs the `shoal` CLI against `s` with the admin token.
async fn cli(s: &Server, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(shoal_testkit::bins::binary("shoal-scheduler", "shoal"))
        .args(args)
        .env("SHOAL_URL", &s.url)
        .env("SHOAL_TOKEN", &s.token)
        .output()
        .await?;
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "shoal {}: {stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// An endpoint a tenant created while private addresses were allowed is checked again at every
/// delivery: once the operator forbids them, nothing reaches it (the platform's own endpoint on
/// the same address still hears of the job). Also the CLI's view of endpoints and deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_endpoint_is_checked_again_at_delivery() -> Result<()> {
    let rx = Receiver::start(0).await?;
    let mut s = Server::start(
        &[],
        &[
            WEBHOOK_ENV[0],
            WEBHOOK_ENV[1],
            ("SHOAL_WEBHOOK_MAX_ATTEMPTS", "2"),
        ],
    )
    .await?;
    let admin = s.token.clone();
    let key = put_tenant(&s, "a").await?;
    let tenant = endpoint(&s, &key, &rx, "/tenant", json!({})).await?;
    let platform = endpoint(&s, &admin, &rx, "/platform", json!({"tenant": "a"})).await?;
    s.stop().await?;
    s.set_env("SHOAL_WEBHOOK_ALLOW_PRIVATE", "false");
    s.restart().await?;

    let job = enqueue(&s, "a", "exit 0").await?;
    wait_received(&rx, "the platform's delivery", |r| {
        r.iter().any(|r| r.path == "/platform")
    })
    .await?;
    let failed = s
        .wait_for(
            "the tenant's delivery to fail",
            Duration::from_secs(60),
            || async {
                let d = deliveries(&s, &tenant.id).await?;
                Ok(d.first().filter(|d| d["state"] == "failed").cloned())
            },
        )
        .await?;
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert!(failed.get("last_status").is_none(), "{failed}");
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("non-public")),
        "{failed}"
    );
    assert!(
        rx.received().iter().all(|r| r.path != "/tenant"),
        "a request reached the tenant's private endpoint"
    );

    // Quota signals are events too: a tenant reaching 80% and 100% of its month's jobs.
    let (st, v) = s
        .send(
            Method::PUT,
            "/v1/tenants/q",
            &json!({"plan": "pro", "limits": {"jobs_per_month": 2}}),
        )
        .await?;
    assert_eq!(st, 201, "{v}");
    endpoint(
        &s,
        &admin,
        &rx,
        "/quota",
        json!({"events": ["quota.warning", "quota.exceeded"]}),
    )
    .await?;
    enqueue(&s, "q", "true").await?;
    enqueue(&s, "q", "true").await?;
    wait_received(&rx, "both quota signals", |r| {
        r.iter().filter(|r| r.path == "/quota").count() == 2
    })
    .await?;
    // Deliveries run side by side: in any order.
    let mut signals: Vec<Value> = rx
        .received()
        .iter()
        .filter(|r| r.path == "/quota")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    signals.sort_by_key(|v| v["type"] != "quota.warning");
    assert_eq!(
        signals
            .iter()
            .map(|v| v["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["quota.warning", "quota.exceeded"]
    );
    assert_eq!(
        (
            &signals[1]["data"]["tenant"],
            &signals[1]["data"]["jobs"],
            &signals[1]["data"]["quota"]
        ),
        (&json!("q"), &json!(2), &json!(2))
    );

    // The CLI: endpoints, and one's deliveries, as tables and as JSON.
    let table = cli(&s, &["webhooks"]).await?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows.iter().all(|r| r.len() == 4), "{table}");
    assert_eq!(rows.iter().filter(|r| r[1] == "a").count(), 2, "{table}");
    assert!(rows.iter().any(|r| r[0] == platform.id), "{table}");
    let table = cli(&s, &["webhooks", "deliveries", &platform.id]).await?;
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .context("a delivery row")?
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[1..5],
        ["job.succeeded", "delivered", "1", "204"],
        "{table}"
    );
    let v: Value =
        serde_json::from_str(&cli(&s, &["webhooks", "deliveries", &platform.id, "--json"]).await?)?;
    let received: Value = serde_json::from_slice(&rx.received()[0].body)?;
    assert_eq!(received["data"]["id"], job.as_str());
    assert_eq!(
        v["deliveries"][0]["id"].as_str(),
        Some(rx.received()[0].id.as_str())
    );
    let created = cli(
        &s,
        &[
            "webhooks",
            "create",
            &format!("{}/more", rx.url),
            "--event",
            "job.failed",
            "--tenant",
            "a",
        ],
    )
    .await?;
    assert!(created.contains("whsec_"), "{created}");
    assert!(created.contains("job.failed"), "{created}");
    let v: Value = serde_json::from_str(&cli(&s, &["webhooks", "--json"]).await?)?;
    assert_eq!(v["webhooks"].as_array().map(Vec::len), Some(4));
    cli(&s, &["webhooks", "delete", &tenant.id]).await?;
    let v: Value = serde_json::from_str(&cli(&s, &["webhooks", "list", "--json"]).await?)?;
    assert_eq!(v["webhooks"].as_array().map(Vec::len), Some(3));
    Ok(())
}
