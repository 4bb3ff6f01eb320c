//! The API against an attacker's inputs, through the real binary (docs/adr/0005-api-hardening.md):
//! cross-site writes with the session cookie, cookies planted through `/?token=`, errors in
//! every shape the HTTP stack can produce, specs and limits that cannot work, key revocation
//! across replicas, results too large to store or too deep to read, lists too large to answer,
//! and `/metrics` behind a token.

use anyhow::Result;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::io::{Read, Write};
use std::time::Duration;

async fn job_count(s: &Server) -> Result<usize> {
    Ok(s.get("/v1/jobs?limit=1000").await?["jobs"]
        .as_array()
        .unwrap()
        .len())
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Status, headers and JSON body of a request built by `r`.
async fn answer(r: reqwest::RequestBuilder) -> Result<(u16, HeaderMap, Value)> {
    let resp = r.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, headers, v))
}

/// The answer is an error of the contract's shape with this status and code.
fn is_error(got: &(u16, HeaderMap, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "wanted {status} {code}: {:?}", got.2);
    assert_eq!(got.2["error"]["code"], code, "{:?}", got.2);
    assert!(
        got.2["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{:?}",
        got.2
    );
    assert_eq!(
        got.1.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{:?}",
        got.1
    );
}

/// A raw HTTP/1.1 exchange, for requests reqwest will not send.
fn raw_http(s: &Server, request: &[u8]) -> String {
    let addr = s.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// With the session cookie, a write must come from the server's own origin with a JSON body;
/// scripts with a bearer token are not asked either. Every answer forbids framing and sniffing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_writes_need_the_own_origin_and_json() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/a", &json!({"plan": "pro"}))
        .await?;
    let job = json!({"tenant": "a", "kind": "agent", "spec": {"command": ["true"]}});
    let body = serde_json::to_vec(&job)?;
    let own = s.url.clone();
    let cookie = format!("shoal_session={}", s.token);
    let by_cookie = |method: Method, path: &str| {
        s.anon(method, path)
            .header("cookie", cookie.clone())
            .body(body.clone())
    };
    let before = job_count(&s).await?;

    // The probe's request: another origin, text/plain. Then each condition alone.
    for (origin, ctype, status, code) in [
        (
            Some("http://evil.example"),
            "text/plain",
            403,
            "cross_origin",
        ),
        (
            Some("http://evil.example"),
            "application/json",
            403,
            "cross_origin",
        ),
        // Another port of the same host is another origin (SameSite does not see that).
        (
            Some("http://127.0.0.1:1"),
            "application/json",
            403,
            "cross_origin",
        ),
        (None, "application/json", 403, "cross_origin"),
        (Some("null"), "application/json", 403, "cross_origin"),
        (
            Some(own.as_str()),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            Some(own.as_str()),
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
    ] {
        let mut r = by_cookie(Method::POST, "/v1/jobs").header("content-type", ctype);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        is_error(&answer(r).await?, status, code);
    }
    // Key creation and drain, the probe's other writes.
    for path in ["/v1/tenants/a/keys", "/v1/tenants/a/drain"] {
        let r = by_cookie(Method::POST, path)
            .header("origin", "http://evil.example")
            .header("content-type", "application/json");
        is_error(&answer(r).await?, 403, "cross_origin");
    }
    assert_eq!(job_count(&s).await?, before, "a refused write stored a job");
    assert!(s.get("/v1/tenants/a").await?["draining"] == false);
    let keys = s.get("/v1/tenants/a/keys").await?;
    assert_eq!(keys["keys"], json!([]), "a refused write made a key");

    // The dashboard's own request: same origin, JSON (a Referer names the origin as well).
    let r = by_cookie(Method::POST, "/v1/jobs")
        .header("origin", own.as_str())
        .header("content-type", "application/json");
    assert_eq!(answer(r).await?.0, 202);
    let r = by_cookie(Method::POST, "/v1/jobs")
        .header("referer", format!("{own}/"))
        .header("content-type", "application/json; charset=utf-8");
    assert_eq!(answer(r).await?.0, 202);
    // Reads with the cookie need no origin.
    let r = s
        .anon(Method::GET, "/v1/jobs")
        .header("cookie", cookie.clone());
    assert_eq!(answer(r).await?.0, 200);

    // Bearer: JSON, no type, or curl's default are read as JSON; another declared type is not.
    for ctype in [
        Some("application/json"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut r = s.req(Method::POST, "/v1/jobs").body(body.clone());
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        assert_eq!(answer(r).await?.0, 202, "{ctype:?}");
    }
    let r = s
        .req(Method::POST, "/v1/jobs")
        .header("content-type", "text/plain")
        .body(body.clone());
    is_error(&answer(r).await?, 415, "unsupported_media_type");
    assert_eq!(job_count(&s).await?, before + 5);

    // Headers on API answers, errors and the dashboard.
    for path in ["/v1/jobs", "/v1/nowhere", "/", "/healthz"] {
        let (_, h, _) = answer(s.req(Method::GET, path)).await?;
        let csp = h["content-security-policy"].to_str()?;
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    Ok(())
}

/// `/?token=` sets the cookie only for a token that signs in, and never writes what it was given
/// into `Set-Cookie` otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_set_only_for_a_real_token() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/a", &json!({"plan": "pro"}))
        .await?;
    let (_, key) = s
        .send(Method::POST, "/v1/tenants/a/keys", &json!({}))
        .await?;
    let key = key["key"].as_str().unwrap().to_string();
    let http = no_redirects();
    let page = |token: &str| {
        http.get(format!("{}/", s.url))
            .query(&[("token", token)])
            .send()
    };
    for bad in [
        "not-a-token".to_string(),
        format!("{};Max-Age=99999;SameSite=None", s.token),
        format!("{key}; Domain=evil.example"),
        String::new(),
    ] {
        let r = page(&bad).await?;
        assert!(r.headers().get("set-cookie").is_none(), "{bad}: {r:?}");
        let status = r.status().as_u16();
        let v: Value = r.json().await?;
        assert!(status == 401 || status == 400, "{bad}: {status} {v}");
        assert!(v["error"]["code"].is_string(), "{v}");
    }
    for good in [&s.token, &key] {
        let r = page(good).await?;
        assert_eq!(r.status().as_u16(), 303);
        assert_eq!(r.headers()["location"], "/");
        assert_eq!(
            r.headers()["set-cookie"].to_str()?,
            format!("shoal_session={good}; HttpOnly; SameSite=Strict; Path=/")
        );
    }
    Ok(())
}

/// Whatever fails, and wherever (a handler, the router, the framework's extractors, hyper
/// itself), the answer is `{"error": {"code", "message"}}` with a fitting status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/a", &json!({"plan": "pro"}))
        .await?;
    let got = answer(s.req(Method::GET, "/v1/events?limit=abc")).await?;
    is_error(&got, 400, "invalid");
    assert_eq!(got.2["error"]["field"], "limit");
    is_error(
        &answer(s.req(Method::GET, "/v1/events?limit=0")).await?,
        400,
        "invalid",
    );
    is_error(
        &answer(s.req(Method::GET, "/v1/tenants/%ff")).await?,
        400,
        "invalid",
    );
    is_error(
        &answer(s.req(Method::PATCH, "/v1/jobs")).await?,
        405,
        "method_not_allowed",
    );
    is_error(
        &answer(s.req(Method::DELETE, "/v1/tenants/a")).await?,
        405,
        "method_not_allowed",
    );
    is_error(
        &answer(s.req(Method::GET, "/v1/no/such/thing")).await?,
        404,
        "not_found",
    );
    is_error(
        &answer(s.req(Method::GET, "/nothing-here")).await?,
        404,
        "not_found",
    );
    let big = vec![b' '; 33 * 1024 * 1024];
    let r = s
        .req(Method::POST, "/v1/tenants/a/drain")
        .header("content-type", "application/json")
        .body(big);
    is_error(&answer(r).await?, 413, "payload_too_large");
    // A long URI past the API's own bound; one past hyper's (which answers by itself) follows.
    let path = format!("/v1/jobs?tenant={}", "a".repeat(20_000));
    is_error(
        &answer(s.req(Method::GET, &path)).await?,
        414,
        "uri_too_long",
    );
    // What reqwest will not send: a URI over 64 KiB, a request line that is not HTTP, headers
    // too large.
    let long = format!(
        "GET /v1/jobs?tenant={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    for (request, status) in [
        (long.into_bytes(), "414"),
        (b"GARBAGE\r\n\r\n".to_vec(), "400"),
        (
            [
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec(),
                vec![b'a'; 500_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            "431",
        ),
    ] {
        let text = raw_http(&s, &request);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let v: Value = serde_json::from_str(body)?;
        assert!(v["error"]["code"].is_string(), "{text}");
    }
    Ok(())
}

/// Specs that could never run and limits that would break arithmetic are refused at admission,
/// with the field named, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unworkable_specs_and_limits_are_refused_at_admission() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/a", &json!({"plan": "pro"}))
        .await?;
    let before = job_count(&s).await?;
    let agent = |spec: Value| json!({"tenant": "a", "kind": "agent", "spec": spec});
    let diff = |options: Value| json!({"tenant": "a", "kind": "semantic_diff", "spec": {"baseline": 1, "candidate": 2, "options": options}});
    for (job, field) in [
        (
            diff(json!({"normalize": [{"pattern": "(unclosed", "replace": ""}]})),
            "spec",
        ),
        (diff(json!({"float_abs_tol": -1.0})), "spec"),
        (diff(json!({"float_rel_tol": -0.5})), "spec"),
        (diff(json!({"ignore_paths": ["no-leading-slash"]})), "spec"),
        (diff(json!({"max_result_bytes": 1u64 << 40})), "spec"),
        (diff(json!([1, 2])), "spec"),
        (
            agent(json!({"command": ["true"], "env": {"A=B": "x"}})),
            "spec",
        ),
        (
            agent(json!({"command": ["true"], "env": {"A\u{0}B": "x"}})),
            "spec",
        ),
        (
            agent(json!({"command": ["true"], "env": {"": "x"}})),
            "spec",
        ),
        (
            agent(json!({"command": ["true"], "env": {"A": "x\u{0}y"}})),
            "spec",
        ),
        (agent(json!({"command": ["echo", "a\u{0}b"]})), "spec"),
        (agent(json!({"command": ["tr\u{0}ue"]})), "spec"),
        (
            agent(json!({"command": ["true"], "workdir": "a\u{0}b"})),
            "spec",
        ),
        (agent(json!({"command": ["true"], "timeout_s": 0})), "spec"),
        (
            agent(json!({"command": ["true"], "timeout_s": u64::MAX})),
            "spec",
        ),
        (agent(json!(["true"])), "spec"),
        (
            json!({"tenant": "a", "kind": "flaky_analysis", "spec": {"runs": [], "options": {"prior_alpha": -1}}}),
            "spec",
        ),
        (
            json!({"tenant": "a", "kind": "agent", "spec": {"command": ["true"]}, "idempotency_key": "a\u{0}b"}),
            "idempotency_key",
        ),
    ] {
        let (st, v) = s.send(Method::POST, "/v1/jobs", &job).await?;
        assert_eq!(
            (st, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{job}: {v}"
        );
    }
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!(["a", "agent", {"command": ["true"]}]),
        )
        .await?;
    assert_eq!(st, 400, "{v}");
    assert_eq!(job_count(&s).await?, before, "a refused job was stored");

    // Limits: each out of its range, as a list, or of the wrong shape.
    let tenant_before = s.get("/v1/tenants/a").await?;
    for (limits, field) in [
        (
            json!({"enqueue_rate_per_s": 1e-300}),
            Some("limits.enqueue_rate_per_s"),
        ),
        (
            json!({"enqueue_rate_per_s": 0}),
            Some("limits.enqueue_rate_per_s"),
        ),
        (
            json!({"idle_timeout_s": u64::MAX}),
            Some("limits.idle_timeout_s"),
        ),
        (
            json!({"jobs_per_month": u64::MAX}),
            Some("limits.jobs_per_month"),
        ),
        (
            json!({"max_sandboxes": u32::MAX}),
            Some("limits.max_sandboxes"),
        ),
        (
            json!({"max_concurrent_jobs": 0}),
            Some("limits.max_concurrent_jobs"),
        ),
        (
            json!({"enqueue_burst": u32::MAX}),
            Some("limits.enqueue_burst"),
        ),
        (
            json!({"sandbox_size": {"cpus": 0, "memory_mb": 512}}),
            Some("limits.sandbox_size"),
        ),
        (json!([null, null]), None),
        (json!({"sandbox_size": [1, 512]}), None),
    ] {
        let (st, v) = s
            .send(
                Method::PUT,
                "/v1/tenants/a",
                &json!({"plan": "pro", "limits": limits}),
            )
            .await?;
        assert_eq!(st, 400, "{limits}: {v}");
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{v}");
        }
    }
    let (st, v) = s
        .send(Method::PUT, "/v1/tenants/a", &json!(["pro"]))
        .await?;
    assert_eq!(st, 400, "{v}");
    let tenant_after = s.get("/v1/tenants/a").await?;
    assert_eq!(tenant_after["limits"], tenant_before["limits"]);
    assert_eq!(tenant_after["updated_at"], tenant_before["updated_at"]);
    // The tenant still takes jobs: nothing above reached its limits.
    let ok = json!({"tenant": "a", "kind": "agent", "spec": {"command": ["true"]}});
    assert_eq!(s.send(Method::POST, "/v1/jobs", &ok).await?.0, 202);

    // A drain body that is not an object; unknown tenants where a tenant is named.
    let (st, v) = s
        .send(Method::POST, "/v1/tenants/a/drain", &json!([]))
        .await?;
    assert_eq!(st, 400, "{v}");
    assert_eq!(s.get("/v1/tenants/a").await?["draining"], false);
    for path in ["/v1/events?tenant=nobody", "/v1/history?tenant=nobody"] {
        let (st, v) = s.send(Method::GET, path, &Value::Null).await?;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    Ok(())
}

/// Keys: created with an id, listed without the key, revoked at once on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_and_revoked_at_once_on_every_replica() -> Result<()> {
    let Some(pg) = shoal_testkit::services::Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    let token = format!("test-admin-{}", rand::random::<u64>());
    let env = [("SHOAL_ADMIN_TOKEN", token.as_str())];
    let a = Server::start(&["--database-url", &url], &env).await?;
    let b = Server::start(&["--database-url", &url], &env).await?;
    a.send(Method::PUT, "/v1/tenants/k", &json!({"plan": "pro"}))
        .await?;
    let (st, first) = a
        .send(Method::POST, "/v1/tenants/k/keys", &json!({}))
        .await?;
    assert_eq!(st, 201);
    let (_, second) = a
        .send(Method::POST, "/v1/tenants/k/keys", &json!({}))
        .await?;
    let (id, key) = (
        first["id"].as_str().unwrap().to_string(),
        first["key"].as_str().unwrap().to_string(),
    );
    // Used on replica b: its last use shows on replica a's list, which never shows a key.
    let use_key = |s: &Server, key: &str| {
        s.anon(Method::GET, "/v1/tenants/k")
            .bearer_auth(key.to_string())
            .send()
    };
    assert_eq!(use_key(&b, &key).await?.status().as_u16(), 200);
    let list = a.get("/v1/tenants/k/keys").await?;
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{list}");
    assert_eq!(keys[0]["id"], first["id"]);
    assert!(
        keys[0]["created_at"].is_string() && keys[0]["last_used_at"].is_string(),
        "{list}"
    );
    assert!(keys[1].get("last_used_at").is_none(), "{list}");
    assert!(!list.to_string().contains(&key), "a key was listed: {list}");
    // A tenant key sees its own tenant's keys.
    let r = b
        .anon(Method::GET, "/v1/tenants/k/keys")
        .bearer_auth(&key)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);

    // Revoked on a; refused on b at once, the other key still works.
    let r = a
        .req(Method::DELETE, &format!("/v1/tenants/k/keys/{id}"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(use_key(&b, &key).await?.status().as_u16(), 401);
    assert_eq!(use_key(&a, &key).await?.status().as_u16(), 401);
    let other = second["key"].as_str().unwrap();
    assert_eq!(use_key(&b, other).await?.status().as_u16(), 200);
    let r = a
        .req(Method::DELETE, &format!("/v1/tenants/k/keys/{id}"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(
        a.get("/v1/tenants/k/keys").await?["keys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    Ok(())
}

/// A semantic diff whose documents hold two large differing strings gives a small result that
/// says what was cut; results in all are paged by bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_bounded_and_lists_page_by_bytes() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(
        Method::PUT,
        "/v1/tenants/d",
        &json!({"plan": "pro", "limits": {"enqueue_rate_per_s": null}}),
    )
    .await?;
    let wait_done = |id: String| {
        let s = &s;
        async move {
            s.wait_for("the job to finish", Duration::from_secs(120), || {
                let id = id.clone();
                async move {
                    let j = s.get(&format!("/v1/jobs/{id}")).await?;
                    Ok((j["state"] != "queued" && j["state"] != "running").then_some(j))
                }
            })
            .await
        }
    };
    // Two 4 MiB strings that differ: the result shows 4 KiB of each, and their sizes.
    let big = 4 * 1024 * 1024;
    let spec = json!({"baseline": {"s": "a".repeat(big)}, "candidate": {"s": "b".repeat(big)}});
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "d", "kind": "semantic_diff", "spec": spec}),
        )
        .await?;
    assert_eq!(st, 202, "{v}");
    let job = wait_done(v["id"].as_str().unwrap().to_string()).await?;
    assert_eq!(job["state"], "succeeded", "{}", job["error"]);
    let c = &job["result"]["changes"][0];
    assert!(c["before"].as_str().unwrap().len() <= 4096);
    assert_eq!(c["before_truncated"]["bytes"], big + 2);
    assert_eq!(c["after_truncated"]["bytes"], big + 2);
    assert!(job["result"].to_string().len() < 16 * 1024);

    // Ten results of about 1 MB each: the first page stops before 8 MiB, the cursor goes on.
    let half = 500_000;
    let mut ids = Vec::new();
    for i in 0..10 {
        let spec = json!({
            "baseline": {"s": format!("{i}{}", "a".repeat(half))},
            "candidate": {"s": format!("{i}{}", "b".repeat(half))},
            "options": {"max_value_bytes": 1_048_576, "max_result_bytes": 2_097_152},
        });
        let (st, v) = s
            .send(
                Method::POST,
                "/v1/jobs",
                &json!({"tenant": "d", "kind": "semantic_diff", "spec": spec}),
            )
            .await?;
        assert_eq!(st, 202, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        assert_eq!(wait_done(id.clone()).await?["state"], "succeeded");
    }
    let r = s
        .req(Method::GET, "/v1/jobs?tenant=d&limit=1000")
        .send()
        .await?;
    let text = r.text().await?;
    assert!(
        text.len() <= 8 * 1024 * 1024 + 64 * 1024,
        "{} bytes",
        text.len()
    );
    let page: Value = serde_json::from_str(&text)?;
    let first = page["jobs"].as_array().unwrap().len();
    assert!((1..11).contains(&first), "{first} jobs on the first page");
    let cursor = page["next_cursor"].as_str().expect("a cursor to go on");
    let rest = s
        .get(&format!("/v1/jobs?tenant=d&limit=1000&cursor={cursor}"))
        .await?;
    let mut seen: Vec<String> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["jobs"].as_array().unwrap())
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert!(rest["next_cursor"].is_null(), "the last page says so");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 11, "every job once, across the pages");
    Ok(())
}

/// The issue's job that could never finish: 125 nested arrays against `1`. Its result is too deep
/// to record, so it fails at once with `result_too_large`, on its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_deep_fails_its_job_on_the_first_try() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/d", &json!({"plan": "pro"}))
        .await?;
    let deep = format!("{}1{}", "[".repeat(125), "]".repeat(125));
    let body = format!(
        r#"{{"tenant": "d", "kind": "semantic_diff", "spec": {{"baseline": {deep}, "candidate": 1}}}}"#
    );
    let r = s
        .req(Method::POST, "/v1/jobs")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await?["id"].as_str().unwrap().to_string();
    let job = s
        .wait_for("the job to end", Duration::from_secs(60), || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok((j["state"] != "queued" && j["state"] != "running").then_some(j))
        })
        .await?;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "result_too_large", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    Ok(())
}

/// `/metrics` is open by default; with a metrics token it wants that token or the admin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() -> Result<()> {
    let open = Server::start(&[], &[]).await?;
    assert_eq!(
        open.anon(Method::GET, "/metrics")
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    assert!(
        open.log().contains("(from SHOAL_ADMIN_TOKEN)"),
        "{}",
        open.log()
    );
    assert!(!open.data_dir.join("admin-token").exists());
    drop(open);

    let s = Server::start(&[], &[("SHOAL_METRICS_TOKEN", "scrape-me")]).await?;
    s.send(Method::PUT, "/v1/tenants/m", &json!({"plan": "pro"}))
        .await?;
    let (_, key) = s
        .send(Method::POST, "/v1/tenants/m/keys", &json!({}))
        .await?;
    let key = key["key"].as_str().unwrap().to_string();
    is_error(
        &answer(s.anon(Method::GET, "/metrics")).await?,
        401,
        "unauthorized",
    );
    for (token, status) in [("wrong", 401), (key.as_str(), 401), ("scrape-me", 200)] {
        let r = s
            .anon(Method::GET, "/metrics")
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), status, "{token}");
    }
    let r = s.req(Method::GET, "/metrics").send().await?;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await?.contains("shoal_"));
    Ok(())
}
