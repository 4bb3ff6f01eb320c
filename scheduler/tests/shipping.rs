//! How Shoal ships (docs/adr/0008-shipping.md), checked from outside:
//!
//! - the Kubernetes overlays and components render with kustomize and validate strictly against
//!   the Kubernetes 1.33 schemas (`deploy/kubernetes/check.py`);
//! - `--log-format json` writes JSON lines only, without ANSI codes, and never the admin token it
//!   was given; a Postgres replica that does not lead stays quiet;
//! - with `OTEL_EXPORTER_OTLP_ENDPOINT` set, one job's spans (admission, lease, completion) reach
//!   an OTLP/HTTP receiver run by the test in one trace, and the provider call that made its
//!   sandbox in the sandbox's trace, which the lease links to;
//! - both images build from the Dockerfile on a base made from this host, and `shoal serve` runs
//!   from the image, as a non-root user, on Postgres on the host, running a job on the docker
//!   provider with JSON logs that hold no ANSI code and no admin token.
//!
//! With `CI=true` a missing tool (Docker, kustomize, the Python tools, Postgres) fails the test
//! that needs it instead of skipping it.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `Ok(false)` (skip) when something the test needs is missing, an error under CI.
fn missing(what: &str) -> Result<bool> {
    if ci() {
        bail!("{what}, and CI=true needs it");
    }
    eprintln!("skipping: {what}");
    Ok(false)
}

#[test]
fn kubernetes_overlays_render_and_validate() -> Result<()> {
    let python = repo().join(".venv-test/bin/python");
    if !python.exists() {
        missing("no .venv-test (scripts/test makes it)")?;
        return Ok(());
    }
    let out = Command::new(&python)
        .arg(repo().join("deploy/kubernetes/check.py"))
        .output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check.py: {report}");
    if report.contains("skipping:") {
        missing("no kustomize (kubectl or kustomize)")?;
        return Ok(());
    }
    // Both overlays and every component rendered: well over a handful of objects.
    let line = report
        .lines()
        .find(|l| l.ends_with(" failed"))
        .context("no summary")?;
    let passed: usize = line.split_whitespace().next().unwrap_or("0").parse()?;
    assert!(passed >= 20, "{report}");
    Ok(())
}

/// Every line of `log` is a JSON object with the usual fields, none holds an ANSI escape, and
/// `secret` appears nowhere.
fn assert_json_log(log: &str, secret: &str) -> Vec<Value> {
    assert!(!log.contains('\u{1b}'), "ANSI escape in the log:\n{log}");
    assert!(
        !log.contains(secret),
        "the admin token is in the log:\n{log}"
    );
    let mut lines = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\nwhole log:\n{log}"));
        for field in ["timestamp", "level", "fields", "target"] {
            assert!(v.get(field).is_some(), "no `{field}` in {line}");
        }
        lines.push(v);
    }
    assert!(!lines.is_empty(), "no log lines");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_hold_no_token_and_no_colour() -> Result<()> {
    let token = format!("given-token-{}", rand::random::<u64>());
    let s = Server::start(
        &[],
        &[
            ("SHOAL_ADMIN_TOKEN", token.as_str()),
            ("SHOAL_LOG_FORMAT", "json"),
        ],
    )
    .await?;
    s.send(Method::PUT, "/v1/tenants/logs", &json!({"plan": "pro"}))
        .await?;
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "logs", "kind": "agent", "spec": {"command": ["true"]}}),
        )
        .await?;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    s.wait_for("the job", Duration::from_secs(60), || async {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        Ok((j["state"] == "succeeded").then_some(()))
    })
    .await?;
    // The end is logged just after the store has it, so the log may lag the job's state a moment.
    s.wait_for(
        "the job's end in the log",
        Duration::from_secs(10),
        || async { Ok(s.log().contains("job finished").then_some(())) },
    )
    .await?;
    let lines = assert_json_log(&s.log(), &token);
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Shoal is running")
        .expect("the start banner as a log event");
    assert_eq!(start["fields"]["admin_token"], "from SHOAL_ADMIN_TOKEN");
    assert!(
        start["fields"]["api"]
            .as_str()
            .is_some_and(|u| u.ends_with("/v1")),
        "{start}"
    );
    // Span fields ride along: the job's end is logged inside its completion span, which names
    // the tenant, the job and the sandbox.
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job finished")
        .expect("the job's end is logged");
    assert_eq!(done["span"]["name"], "completion", "{done}");
    assert_eq!(done["span"]["tenant"], "logs", "{done}");
    assert_eq!(done["span"]["job"], id.as_str(), "{done}");
    assert!(done["span"]["sandbox"].is_string(), "{done}");
    assert_eq!(done["fields"]["state"], "succeeded", "{done}");

    // Text to a file: no colour either, and a generated token is shown once, as it is new.
    drop(s);
    let dir = std::env::temp_dir().join(format!("shoal-textlog-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    let port = shoal_testkit::server::free_port();
    let mut child = Command::new(shoal_testkit::bins::binary("shoal-scheduler", "shoal"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("SHOAL_ADMIN_TOKEN")
        .env(
            "SHOAL_AGENT_BIN",
            shoal_testkit::bins::binary("shoal-agent", "shoal-agent"),
        )
        .stdout(std::fs::File::create(dir.join("out.log"))?)
        .stderr(std::fs::File::create(dir.join("err.log"))?)
        .spawn()?;
    let generated = dir.join("admin-token");
    let mut waited = 0;
    let log = loop {
        let log = std::fs::read_to_string(dir.join("out.log")).unwrap_or_default();
        if log.contains("API:") || waited > 300 {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    };
    let _ = child.kill();
    let _ = child.wait();
    let made = std::fs::read_to_string(&generated)?.trim().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape in a log written to a file:\n{log}"
    );
    assert_eq!(
        log.matches(made.as_str()).count(),
        2,
        "a generated token is shown in the dashboard link and once more:\n{log}"
    );
    Ok(())
}

/// A follower replica on Postgres contends for leadership twice a second without logging the
/// database's `already exists, skipping` notice each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_on_postgres_is_quiet() -> Result<()> {
    let Some(pg) = shoal_testkit::services::Postgres::start()? else {
        missing("no Postgres server binaries")?;
        return Ok(());
    };
    let db = pg.create_database()?;
    let token = format!("replica-{}", rand::random::<u64>());
    let env = [
        ("SHOAL_DATABASE_URL", db.as_str()),
        ("SHOAL_ADMIN_TOKEN", token.as_str()),
    ];
    let leader = Server::start(&[], &env).await?;
    let follower = Server::start(&[], &env).await?;
    let metrics = |s: &Server| {
        let url = format!("{}/metrics", s.url);
        async move { reqwest::get(url).await?.text().await }
    };
    // A tenant, so the fleet gauges have a series; both replicas' samplers see it.
    leader
        .send(Method::PUT, "/v1/tenants/quiet", &json!({"plan": "pro"}))
        .await?;
    // At least two seconds: four attempts at leadership by the follower.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lm = leader
        .wait_for(
            "the leader's fleet gauges",
            Duration::from_secs(20),
            || async {
                let m = metrics(&leader).await?;
                Ok(m.contains(r#"shoal_sandboxes_desired{tenant="quiet"}"#)
                    .then_some(m))
            },
        )
        .await?;
    let fm = metrics(&follower).await?;
    assert!(lm.contains("shoal_leader 1"), "{lm}");
    assert!(fm.contains("shoal_leader 0"), "{fm}");
    // Fleet gauges come from the leader only, so sums over replicas count them once.
    assert!(!fm.contains("shoal_sandboxes_desired"), "{fm}");
    assert!(!fm.contains("shoal_queue_depth"), "{fm}");
    assert!(fm.contains("shoal_build_info{"), "{fm}");
    let log = follower.log();
    assert!(!log.contains("already exists"), "{log}");
    assert!(!log.contains(&token), "{log}");
    drop(follower);
    drop(leader);
    Ok(())
}

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: Vec<u8>,
    /// The trace ids of the spans it links to.
    links: Vec<Vec<u8>>,
    attrs: HashMap<String, String>,
}

/// A small OTLP/HTTP receiver: `POST /v1/traces` with an `ExportTraceServiceRequest` in protobuf.
async fn otlp_receiver() -> Result<(String, Arc<Mutex<Vec<Span>>>)> {
    use axum::body::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;

    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let sink = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let mut got = sink.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            let attrs = s
                                .attributes
                                .iter()
                                .filter_map(|kv| {
                                    let v = match kv.value.as_ref()?.value.as_ref()? {
                                        Any::StringValue(s) => s.clone(),
                                        Any::IntValue(i) => i.to_string(),
                                        Any::BoolValue(b) => b.to_string(),
                                        Any::DoubleValue(d) => d.to_string(),
                                        _ => return None,
                                    };
                                    Some((kv.key.clone(), v))
                                })
                                .collect();
                            got.push(Span {
                                name: s.name,
                                trace: s.trace_id,
                                links: s.links.into_iter().map(|l| l.trace_id).collect(),
                                attrs,
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, spans))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_jobs_spans_reach_an_otlp_receiver() -> Result<()> {
    let (endpoint, spans) = otlp_receiver().await?;
    let s = Server::start(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            // Export every 200 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await?;
    s.send(Method::PUT, "/v1/tenants/traced", &json!({"plan": "pro"}))
        .await?;
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "traced", "kind": "agent", "spec": {"command": ["echo", "hi"]}}),
        )
        .await?;
    assert_eq!(st, 202, "{v}");
    let job = v["id"].as_str().unwrap().to_string();
    s.wait_for("the job", Duration::from_secs(60), || async {
        let j = s.get(&format!("/v1/jobs/{job}")).await?;
        Ok((j["state"] == "succeeded").then_some(()))
    })
    .await?;
    let find = |name: &str, key: &str, value: &str| {
        spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name && s.attrs.get(key).is_some_and(|v| v == value))
            .cloned()
    };
    let got = s
        .wait_for("the job's spans", Duration::from_secs(30), || async {
            Ok((|| {
                Some((
                    find("admission", "job", &job)?,
                    find("provider_call", "tenant", "traced")?,
                    find("lease", "job", &job)?,
                    find("completion", "job", &job)?,
                    spans
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|s| s.name == "planning_pass")
                        .cloned()?,
                ))
            })())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; received: {:?}", spans.lock().unwrap()))?;
    let (admission, call, lease, completion, _pass) = got;
    assert_eq!(admission.attrs["tenant"], "traced");
    assert_eq!(call.attrs["operation"], "create", "{call:?}");
    assert_eq!(call.attrs["provider"], "process", "{call:?}");
    assert_eq!(lease.attrs["sandbox"], completion.attrs["sandbox"]);
    assert_eq!(call.attrs["sandbox"], lease.attrs["sandbox"]);
    assert_eq!(completion.attrs["state"], "succeeded");
    assert_eq!(admission.trace.len(), 16);
    // One trace per job, whatever replica made each span: admission, lease and completion share
    // the trace derived from the job's id; the provider calls about its sandbox are in the
    // sandbox's trace, which the lease links to.
    let job_trace = shoal_scheduler::telemetry::trace_ids(&job).0.to_vec();
    assert_eq!(admission.trace, job_trace);
    assert_eq!(lease.trace, job_trace);
    assert_eq!(completion.trace, job_trace);
    let sandbox_trace = shoal_scheduler::telemetry::trace_ids(&lease.attrs["sandbox"])
        .0
        .to_vec();
    assert_eq!(call.trace, sandbox_trace);
    assert!(lease.links.contains(&sandbox_trace), "{lease:?}");
    drop(s);
    Ok(())
}

/// Runs a command, failing with its output when it fails.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{cmd:?} failed: {text}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes what the image test made, whatever happens to it.
struct DockerLeftovers {
    container: String,
    images: Vec<String>,
    namespace: String,
}

impl Drop for DockerLeftovers {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.container])
            .output();
        // The sandboxes the scheduler in the image made.
        if let Ok(out) = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=shoal.namespace={}", self.namespace),
            ])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        if let Ok(out) = Command::new("docker")
            .args([
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("label=shoal.namespace={}", self.namespace),
            ])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["network", "rm", id]).output();
            }
        }
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
        // The builder stage the legacy builder keeps, untagged.
        let _ = Command::new("docker")
            .args([
                "image",
                "prune",
                "-f",
                "--filter",
                "label=shoal.stage=builder",
            ])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_build_and_serve_jobs_on_the_docker_provider() -> Result<()> {
    if !Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        missing("no Docker engine answers")?;
        return Ok(());
    }
    let Some(pg) = shoal_testkit::services::Postgres::start()? else {
        missing("no Postgres server binaries")?;
        return Ok(());
    };
    let db = pg.create_database()?;
    let shoal = shoal_testkit::bins::binary("shoal-scheduler", "shoal");
    let agent = shoal_testkit::bins::binary("shoal-agent", "shoal-agent");
    let run_id = format!("{:08x}", rand::random::<u32>());
    let base = format!("shoal-base:e2e-{run_id}");
    let prefix = format!("shoal-e2e-{run_id}/");
    let mut leftovers = DockerLeftovers {
        container: format!("shoal-e2e-{run_id}"),
        images: vec![base.clone()],
        namespace: format!("img{run_id}"),
    };

    // The base from this host's files, then both images with the binaries cargo built.
    let started = std::time::Instant::now();
    run(Command::new(repo().join("deploy/docker/base-image.sh"))
        .args(["--image", &base, "--bin"])
        .arg(&shoal)
        .arg("--bin")
        .arg(&agent))?;
    let prebuilt = tempdir("shoal-prebuilt")?;
    std::fs::copy(&shoal, prebuilt.join("shoal"))?;
    std::fs::copy(&agent, prebuilt.join("shoal-agent"))?;
    let tags = run(Command::new(repo().join("deploy/docker/build.sh"))
        .args(["--base", &base, "--prefix", &prefix, "--prebuilt"])
        .arg(&prebuilt))?;
    let _ = std::fs::remove_dir_all(&prebuilt);
    let tags: Vec<String> = tags.lines().map(str::to_string).collect();
    leftovers.images.extend(tags.iter().cloned());
    eprintln!("images built in {:?}: {tags:?}", started.elapsed());
    let version = env!("CARGO_PKG_VERSION");
    let server_image = format!("{prefix}shoal:{version}");
    let agent_image = format!("{prefix}shoal-agent:{version}");
    assert!(tags.contains(&server_image), "{tags:?}");
    assert!(tags.contains(&agent_image), "{tags:?}");
    // The version tag and a version-revision tag for each image.
    assert_eq!(tags.len(), 4, "{tags:?}");
    assert!(
        tags.iter()
            .any(|t| t.starts_with(&format!("{server_image}-")) && t.len() > server_image.len() + 7),
        "{tags:?}"
    );

    // `shoal serve` from the image: host network (Postgres and the sandboxes' relay on the
    // host), the engine's socket for the docker provider, the sandbox image the agent image.
    let port = shoal_testkit::server::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let token = format!("image-admin-{}", rand::random::<u64>());
    let conf_dir = tempdir("shoal-image-conf")?;
    std::fs::write(
        conf_dir.join("shoal.toml"),
        format!(
            "[provider]\nname = \"docker\"\n[provider.docker]\nnamespace = \"{}\"\nimage = \"{agent_image}\"\nstop_grace = \"2s\"\n",
            leftovers.namespace
        ),
    )?;
    set_mode(&conf_dir, 0o755)?;
    set_mode(&conf_dir.join("shoal.toml"), 0o644)?;
    let socket = "/var/run/docker.sock";
    let socket_gid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(socket)?.gid()
    };
    run(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &leftovers.container,
        "--network",
        "host",
        "--group-add",
        &socket_gid.to_string(),
        "-v",
        &format!("{socket}:{socket}"),
        "-v",
        &format!("{}:/etc/shoal:ro", conf_dir.display()),
        "-e",
        "SHOAL_CONFIG=/etc/shoal/shoal.toml",
        "-e",
        &format!("SHOAL_LISTEN=127.0.0.1:{port}"),
        "-e",
        &format!("SHOAL_ADVERTISE_URL={url}"),
        "-e",
        &format!("SHOAL_DATABASE_URL={db}"),
        "-e",
        &format!("SHOAL_ADMIN_TOKEN={token}"),
        &server_image,
    ]))?;

    let http = reqwest::Client::new();
    let logs = |c: &str| -> String {
        Command::new("docker")
            .args(["logs", c])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if http
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the image's scheduler is not ready: {}",
                logs(&leftovers.container)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let call = |m: Method, path: &str, body: Value| {
        http.request(m, format!("{url}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let r = call(Method::PUT, "/v1/tenants/img", json!({"plan": "pro"})).await?;
    assert!(r.status().is_success(), "{}", r.text().await?);
    let r = call(
        Method::POST,
        "/v1/jobs",
        json!({"tenant": "img", "kind": "agent", "spec": {"command": ["sh", "-c", "echo from-$(id -u)"]}}),
    )
    .await?;
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await?["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let job = loop {
        let j: Value = http
            .get(format!("{url}/v1/jobs/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if matches!(
            j["state"].as_str(),
            Some("succeeded" | "failed" | "dead" | "cancelled")
        ) {
            break j;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "job {id} did not finish: {j}\n{}",
                logs(&leftovers.container)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        job["state"],
        "succeeded",
        "{job}\n{}",
        logs(&leftovers.container)
    );
    // The sandbox runs the agent image, as its non-root user too.
    assert_eq!(job["result"]["stdout"], "from-65532\n", "{job}");

    // The scheduler's container runs as a non-root user.
    let uid = run(Command::new("docker").args(["exec", &leftovers.container, "id", "-u"]))?;
    assert_eq!(uid.trim(), "65532");
    let user = run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{.Config.User}}",
        &leftovers.container,
    ]))?;
    assert_eq!(user.trim(), "65532:65532");
    // Its HEALTHCHECK (`shoal healthcheck`) passes.
    let health = run(Command::new("docker").args([
        "exec",
        &leftovers.container,
        "/usr/local/bin/shoal",
        "healthcheck",
        "--addr",
        &format!("127.0.0.1:{port}"),
    ]));
    assert!(health.is_ok(), "{health:?}");
    // And the engine runs it as the image's HEALTHCHECK (every 10 s, after 10 s of grace).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = run(Command::new("docker").args([
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &leftovers.container,
        ]))?;
        match status.trim() {
            "healthy" => break,
            "starting" if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => bail!("the container's health is {other}"),
        }
    }

    let log = logs(&leftovers.container);
    let lines = assert_json_log(&log, &token);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "Shoal is running"),
        "{log}"
    );
    // A clean stop within the grace period.
    run(Command::new("docker").args(["stop", "-t", "30", &leftovers.container]))?;
    let code = run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &leftovers.container,
    ]))?;
    assert_eq!(code.trim(), "0", "{}", logs(&leftovers.container));
    let _ = std::fs::remove_dir_all(&conf_dir);
    drop(leftovers);
    drop(pg);
    Ok(())
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `deploy/fly/fly.toml` is TOML, and the scheduler accepts the configuration it carries with the
/// variables it sets (`shoal config check`).
#[test]
fn the_fly_app_config_is_accepted() -> Result<()> {
    use base64::Engine;
    let text = std::fs::read_to_string(repo().join("deploy/fly/fly.toml"))?;
    let fly: toml::Table = toml::from_str(&text)?;
    let env = fly["env"].as_table().context("[env]")?;
    assert_eq!(env["SHOAL_LISTEN"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(env["SHOAL_LOG_FORMAT"].as_str(), Some("json"));
    assert_eq!(
        fly["http_service"]["internal_port"].as_integer(),
        Some(8080)
    );
    let file = fly["files"]
        .as_array()
        .and_then(|f| f.first())
        .context("[[files]]")?;
    let conf = base64::engine::general_purpose::STANDARD
        .decode(file["raw_value"].as_str().context("raw_value")?)?;
    let dir = tempdir("shoal-fly-conf")?;
    let path = dir.join("shoal.toml");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new(shoal_testkit::bins::binary("shoal-scheduler", "shoal"));
    cmd.args(["config", "check", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(&dir)
        .env("FLY_API_TOKEN", "FlyV1 test")
        .env_remove("SHOAL_CONFIG");
    for (k, v) in env {
        if k != "SHOAL_CONFIG" {
            cmd.env(k, v.as_str().context("a string")?);
        }
    }
    let out = run(&mut cmd);
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    assert!(out.contains("shoal-sandboxes"), "{out}");
    Ok(())
}

/// The `shoal.toml` of the Kubernetes base passes `shoal config check`, the tenant RoleBinding
/// included.
#[test]
fn the_kubernetes_config_is_accepted() -> Result<()> {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/base/configmap.yaml"))?;
    // The ConfigMap is YAML; its one data key is a TOML block scalar, indented by four spaces.
    let start =
        text.find("shoal.toml: |\n").context("no shoal.toml key")? + "shoal.toml: |\n".len();
    let conf: String = text[start..]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempdir("shoal-k8s-conf")?;
    let path = dir.join("shoal.toml");
    std::fs::write(&path, conf)?;
    let out = run(
        Command::new(shoal_testkit::bins::binary("shoal-scheduler", "shoal"))
            .args(["config", "check", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("SHOAL_CONFIG")
            .env_remove("SHOAL_PROVIDER"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    assert!(out.contains("cluster_role = \"shoal-tenant\""), "{out}");
    assert!(out.contains("namespace_prefix = \"shoal-t-\""), "{out}");
    Ok(())
}
