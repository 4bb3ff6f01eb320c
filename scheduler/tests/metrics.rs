//! `/metrics` of a real scheduler after real work: every metric the operators' issue names is
//! there with its labels, tenant labels stay within their bound, `promtool check metrics` passes,
//! and every metric that the Grafana dashboards and the alert rules in `deploy/` query is one the
//! scheduler exposes (`promtool check rules` and `promtool test rules` pass too). Under `CI=true`
//! a missing promtool fails the test instead of skipping its part.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// promtool, or `None` when it is missing outside CI.
fn promtool() -> Option<&'static str> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "promtool is required under CI=true (apt-get install prometheus)"
    );
    eprintln!("promtool not found: skipping the promtool checks (install Debian's `prometheus`)");
    None
}

async fn enqueue(s: &Server, tenant: &str, cmd: &str) -> Result<String> {
    let (status, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": tenant, "kind": "agent", "spec": {"command": ["sh", "-c", cmd]}}),
        )
        .await?;
    anyhow::ensure!(status == 202, "enqueue answered {status}: {v}");
    Ok(v["id"].as_str().unwrap_or_default().to_string())
}

async fn metrics(s: &Server) -> Result<String> {
    let r = s.anon(Method::GET, "/metrics").send().await?;
    anyhow::ensure!(r.status().is_success(), "/metrics answered {}", r.status());
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    Ok(r.text().await?)
}

/// The metric families (`# TYPE` lines) of an exposition.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The sample lines of `name` (exactly that series name).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

/// Every `shoal_*` name an expression in `text` mentions, histogram suffixes folded.
fn referenced(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"shoal_[a-z_]+").expect("regex");
    re.find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_conventions_and_cover_what_deploy_queries() -> Result<()> {
    // Two tenants get labels of their own; the third is counted as `other`.
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("shoal.toml");
    std::fs::write(&cfg, "metrics_max_tenants = 2\n")?;
    let cfg = cfg.to_string_lossy().into_owned();
    let s = Server::start(&["--config", &cfg, "--idle-timeout", "1s"], &[]).await?;
    s.send(
        Method::PUT,
        "/v1/tenants/acme",
        &json!({"plan": "pro", "limits": {"jobs_per_month": 5}}),
    )
    .await?;
    s.send(Method::PUT, "/v1/tenants/globex", &json!({"plan": "free"}))
        .await?;
    s.send(
        Method::PUT,
        "/v1/tenants/initech",
        &json!({"plan": "free", "limits": {"jobs_per_month": 1}}),
    )
    .await?;
    let mut ids = vec![
        enqueue(&s, "acme", "echo ok").await?,
        enqueue(&s, "acme", "exit 4").await?,
        enqueue(&s, "acme", "echo ok").await?,
        enqueue(&s, "acme", "echo ok").await?,
    ];
    ids.push(enqueue(&s, "globex", "echo ok").await?);
    ids.push(enqueue(&s, "initech", "echo ok").await?);
    // initech's second job is over its quota: refused, and counted.
    let (status, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "initech", "kind": "agent", "spec": {"command": ["true"]}}),
        )
        .await?;
    assert_eq!(
        (status, &v["error"]["code"]),
        (429, &json!("quota_exceeded"))
    );
    for id in &ids {
        s.wait_for(
            &format!("job {id} to finish"),
            Duration::from_secs(60),
            || async {
                let j = s.get(&format!("/v1/jobs/{id}")).await?;
                Ok(matches!(j["state"].as_str(), Some("succeeded" | "failed")).then_some(()))
            },
        )
        .await?;
    }
    // Idle past the timeout, the sandboxes stop (compute seconds are counted then); the live
    // view's sampler has set the quota gauge (4 of 5 jobs: 80%).
    let text = s
        .wait_for(
            "sandboxes to stop and the quota gauge",
            Duration::from_secs(60),
            || async {
                let t = metrics(&s).await?;
                let stopped = samples(&t, "shoal_compute_seconds_total").len() >= 2;
                let quota = samples(&t, "shoal_quota_usage_ratio")
                    .iter()
                    .any(|l| l.starts_with("shoal_quota_usage_ratio{tenant=\"acme\"} 0.8"));
                Ok((stopped && quota).then_some(t))
            },
        )
        .await?;

    let fams = families(&text);
    for name in [
        "shoal_jobs_enqueued_total",
        "shoal_jobs_started_total",
        "shoal_jobs_finished_total",
        "shoal_queue_depth",
        "shoal_jobs_running",
        "shoal_sandboxes",
        "shoal_sandboxes_desired",
        "shoal_sandboxes_leaked",
        "shoal_wake_latency_seconds",
        "shoal_boot_latency_seconds",
        "shoal_job_start_latency_seconds",
        "shoal_provider_calls_total",
        "shoal_compute_seconds_total",
        "shoal_quota_usage_ratio",
        "shoal_quota_warnings_total",
    ] {
        assert!(fams.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let has = |line: &str| text.lines().any(|l| l.starts_with(line));
    assert!(has(
        r#"shoal_jobs_finished_total{outcome="failed",tenant="acme"} 1"#
    ));
    assert!(has(
        r#"shoal_jobs_finished_total{outcome="succeeded",tenant="acme"} 3"#
    ));
    assert!(has(
        r#"shoal_provider_calls_total{operation="create",outcome="ok",provider="process"}"#
    ));
    assert!(has(r#"shoal_sandboxes{state="stopped",tenant="acme"}"#));
    assert!(has(r#"shoal_sandboxes_leaked{provider="process"} 0"#));
    assert!(has(r#"shoal_quota_warnings_total{tenant="acme"} 1"#));
    assert!(has(
        r#"shoal_boot_latency_seconds_bucket{provider="process",le="+Inf"}"#
    ));
    assert!(has(
        r#"shoal_wake_latency_seconds_bucket{operation="create",le="+Inf"}"#
    ));
    // The label bound: acme and globex by name, initech as `other`.
    assert!(has(
        r#"shoal_jobs_enqueued_total{kind="agent",tenant="other"} 1"#
    ));
    assert!(has(
        r#"shoal_jobs_rejected_total{reason="quota_exceeded",tenant="other"} 1"#
    ));
    assert!(!text.contains(r#"tenant="initech""#), "{text}");

    // What Grafana and the alert rules query is what the scheduler exposes.
    let mut queried = BTreeSet::new();
    for dir in ["deploy/grafana", "deploy/prometheus"] {
        for e in std::fs::read_dir(repo().join(dir))? {
            let path = e?.path();
            let Some(ext) = path.extension().and_then(|x| x.to_str()) else {
                continue;
            };
            let body = std::fs::read_to_string(&path)?;
            match ext {
                "json" => {
                    let v: Value = serde_json::from_str(&body)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    assert!(
                        v["panels"].as_array().is_some_and(|p| p.len() > 5),
                        "{}: no panels",
                        path.display()
                    );
                }
                "yml" | "yaml" => {}
                _ => continue,
            }
            queried.extend(referenced(&body));
        }
    }
    let missing: Vec<&String> = queried.iter().filter(|n| !fams.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "deploy/ queries metrics /metrics lacks: {missing:?}"
    );
    assert!(queried.len() >= 10, "{queried:?}");

    if let Some(promtool) = promtool() {
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && report.trim().is_empty(),
            "promtool check metrics: {report}"
        );
        let rules: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/prometheus"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yml"))
            .collect();
        assert!(!rules.is_empty());
        let out = std::process::Command::new(promtool)
            .args(["check", "rules"])
            .args(&rules)
            .output()?;
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(promtool)
            .args(["test", "rules"])
            .arg(repo().join("deploy/prometheus/tests/shoal-alerts-test.yml"))
            .output()?;
        assert!(
            out.status.success(),
            "promtool test rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served_and_lists_the_api() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    let r = s.anon(Method::GET, "/openapi.json").send().await?;
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().context("paths")?;
    for p in [
        "/v1/jobs",
        "/v1/jobs/{id}/cancel",
        "/v1/pools/{tenant}",
        "/v1/usage",
        "/v1/stream",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    // Every documented path is served: none answers the fallback's 404 "no such endpoint".
    for (path, item) in paths {
        let concrete = path.replace("{id}", "nope").replace("{tenant}", "nope");
        for method in item.as_object().context("item")?.keys() {
            let m: Method = method.to_uppercase().parse()?;
            let r = s
                .req(m, &concrete)
                .header("content-type", "application/json")
                .body("{}")
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            // The stream and the agents' long poll may hold the request open: that is served.
            let Ok(r) = r else { continue };
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            assert!(
                !(status == 404 && body.contains("no such endpoint")),
                "{method} {path} is documented but not served"
            );
        }
    }
    Ok(())
}
