//! End to end with `shoal serve --provider docker` on this machine's real Docker engine, the
//! scheduler on loopback and its sandboxes reaching it through their networks' gateways:
//! three tenants' 60 jobs all succeed in containers, idle containers are paused and new work
//! unpauses them; a job of one tenant cannot reach another tenant's container nor read its files,
//! and a job that uses more memory than its sandbox has is killed and reported.
//!
//! With `CI=true` a missing engine fails these tests. Each run has its own namespace and image,
//! removed at the end.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_fleet::docker::{DockerConfig, DockerError, DockerProvider, LABEL_SANDBOX, bollard};
use shoal_fleet::{ObservedState, Provider};
use shoal_testkit::server::Server;
use std::time::Duration;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// Removes a namespace's containers, networks and image when dropped, so a test that panics
/// leaves nothing behind either.
struct Cleanup(Option<DockerConfig>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(cfg) = self.0.take() else { return };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                let p = DockerProvider::new(cfg, tx)?;
                p.purge().await?;
                p.remove_image().await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
    }
}

/// A scheduler with the docker provider, and a provider of the same namespace for the test's own
/// look at the engine and the clean-up.
struct Rig {
    server: Server,
    docker: DockerProvider,
    dir: std::path::PathBuf,
    /// After the server, which is dropped (killed) first.
    _cleanup: Cleanup,
}

impl Rig {
    async fn start(test: &str, idle_action: &str, idle_timeout: &str) -> Result<Option<Rig>> {
        let ns = format!(
            "e2e{test}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        let image = format!("shoal-sandbox-e2e:{ns}");
        let cfg = DockerConfig {
            namespace: ns.clone(),
            image: Some(image.clone()),
            agent_bin: Some(shoal_testkit::bins::binary("shoal-agent", "shoal-agent")),
            ..Default::default()
        };
        let cleanup = Cleanup(Some(cfg.clone()));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let no_engine = |e: String| {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("no Docker engine answers, and CI=true needs one: {e}");
            }
            eprintln!("skipping: no Docker engine answers ({e})");
            Ok(None)
        };
        let docker = match DockerProvider::new(cfg, tx) {
            Ok(d) => d,
            Err(DockerError::Connect(e)) => return no_engine(e),
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = docker.ping().await {
            return no_engine(e.to_string());
        }
        let dir = std::env::temp_dir().join(format!("shoal-{ns}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("shoal.toml");
        std::fs::write(
            &config,
            format!(
                "idle_action = \"{idle_action}\"\n[provider]\nname = \"docker\"\n[provider.docker]\nnamespace = \"{ns}\"\nimage = \"{image}\"\nstop_grace = \"5s\"\n"
            ),
        )?;
        let server = Server::start(
            &[
                "--config",
                config.to_str().unwrap(),
                "--idle-timeout",
                idle_timeout,
            ],
            &[],
        )
        .await?;
        Ok(Some(Rig {
            server,
            docker,
            dir,
            _cleanup: cleanup,
        }))
    }

    async fn tenant(&self, t: &str, limits: Value) -> Result<()> {
        let (st, v) = self
            .server
            .send(
                Method::PUT,
                &format!("/v1/tenants/{t}"),
                &json!({"plan": "pro", "limits": limits}),
            )
            .await?;
        anyhow::ensure!(st == 201 || st == 200, "{st} {v}");
        Ok(())
    }

    async fn enqueue(&self, body: Value) -> Result<String> {
        let (st, v) = self.server.send(Method::POST, "/v1/jobs", &body).await?;
        anyhow::ensure!(st == 202, "{st} {v}");
        Ok(v["id"].as_str().unwrap().to_string())
    }

    async fn finished(&self, id: &str) -> Result<Value> {
        let s = &self.server;
        s.wait_for(&format!("job {id}"), Duration::from_secs(240), || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok(matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "dead" | "cancelled")
            )
            .then_some(j))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", s.log()))
    }

    /// Stops the scheduler and removes every container, network and the image of this run.
    async fn finish(mut self) -> Result<()> {
        let stopped = self.server.stop().await;
        let purged = self.docker.purge().await;
        let removed = self.docker.remove_image().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        anyhow::ensure!(stopped?.success(), "shoal serve did not exit cleanly");
        purged?;
        removed?;
        Ok(())
    }
}

fn active(p: &Value) -> u64 {
    ["booting", "ready", "busy"]
        .iter()
        .map(|s| p["sandboxes"][s].as_u64().unwrap_or(0))
        .sum()
}

async fn run_jobs(rig: &Rig, per_tenant: usize, tag: &str) -> Result<()> {
    let mut ids = Vec::new();
    for i in 0..per_tenant {
        for t in TENANTS {
            let id = rig
                .enqueue(json!({"tenant": t, "kind": "agent", "spec": {"command": ["sh", "-c", format!("sleep 0.2; echo {tag}-{t}-{i}")]}}))
                .await?;
            ids.push((id, format!("{tag}-{t}-{i}\n")));
        }
    }
    for (id, want) in &ids {
        let j = rig.finished(id).await?;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"]["stdout"].as_str(), Some(want.as_str()), "{j}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pools_run_stop_and_wake() -> Result<()> {
    pools_idle_and_wake("stop").await
}

/// Idle containers are paused and new work unpauses them (a paused agent's in-flight lease request
/// does not make its sandbox look ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pools_run_pause_and_wake() -> Result<()> {
    pools_idle_and_wake("suspend").await
}

/// 60 jobs of 3 tenants, every pool left idle until its containers are paused (`suspend`) or
/// stopped (`stop`), then new work that wakes them rather than creating containers.
async fn pools_idle_and_wake(idle_action: &str) -> Result<()> {
    let (pool_state, engine_state) = match idle_action {
        "stop" => ("stopped", ObservedState::Stopped),
        _ => ("suspended", ObservedState::Suspended),
    };
    let Some(rig) = Rig::start(&format!("wake{idle_action}"), idle_action, "2s").await? else {
        return Ok(());
    };
    let r = async {
        for t in TENANTS {
            rig.tenant(
                t,
                json!({"max_sandboxes": 3, "sandbox_size": {"cpus": 0.5, "memory_mb": 256}}),
            )
            .await?;
        }
        run_jobs(&rig, 20, "first").await?;
        let s = &rig.server;
        for t in TENANTS {
            s.wait_for(
                &format!("{t}'s pool to go {pool_state}"),
                Duration::from_secs(120),
                || async {
                    let p = s.get(&format!("/v1/pools/{t}")).await?;
                    Ok(
                        (active(&p) == 0 && p["sandboxes"][pool_state].as_u64() > Some(0))
                            .then_some(()),
                    )
                },
            )
            .await?;
        }
        // The engine agrees (the pool counts a sandbox being paused or stopped as such already).
        let listed = s
            .wait_for(
                &format!("the engine to show every container {engine_state:?}"),
                Duration::from_secs(60),
                || async {
                    let listed = rig.docker.list().await?;
                    Ok(
                        (!listed.is_empty() && listed.iter().all(|o| o.state == engine_state))
                            .then_some(listed),
                    )
                },
            )
            .await?;
        let before: Vec<String> = listed
            .iter()
            .map(|o| o.sandbox.provider_id.clone())
            .collect();
        // New work unpauses or starts them rather than creating containers.
        run_jobs(&rig, 1, "again").await?;
        let after: Vec<String> = rig
            .docker
            .list()
            .await?
            .into_iter()
            .map(|o| o.sandbox.provider_id)
            .collect();
        assert_eq!(after.len(), before.len(), "new work created containers");
        assert!(after.iter().all(|id| before.contains(id)));
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let log = rig.server.log();
    let docker = rig.docker.client().await;
    let ns = rig.docker.config().namespace.clone();
    // A clean shutdown leaves no container running.
    let mut server = rig;
    let stopped = server.server.stop().await;
    if let Ok(d) = docker {
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_string(), vec![format!("shoal.namespace={ns}")]);
        let running = d
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: false,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        assert!(running.is_empty(), "containers left running: {running:?}");
    }
    let purged = server.docker.purge().await;
    let removed = server.docker.remove_image().await;
    let _ = std::fs::remove_dir_all(&server.dir);
    r.map_err(|e| anyhow::anyhow!("{e}\n{log}"))?;
    anyhow::ensure!(stopped?.success());
    purged?;
    removed?;
    Ok(())
}

/// The address of a sandbox's container on its tenant's network.
async fn container_ip(docker: &DockerProvider, sandbox: &str) -> Result<String> {
    let d = docker.client().await?;
    let id = docker
        .list()
        .await?
        .into_iter()
        .find(|o| o.sandbox.sandbox_id == sandbox)
        .context("the sandbox's container")?
        .sandbox
        .provider_id;
    let c = d.inspect_container(&id, None).await?;
    let labels = c
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    anyhow::ensure!(labels.get(LABEL_SANDBOX).map(String::as_str) == Some(sandbox));
    c.network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.into_values().find_map(|e| e.ip_address))
        .filter(|ip| !ip.is_empty())
        .context("the container's address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_memory_is_limited() -> Result<()> {
    // B's server job needs busybox's `httpd` and `timeout`: without busybox on the host the image
    // holds only a shell and a few tools, and the job could never run.
    let busybox = std::process::Command::new("busybox")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !busybox {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!(
                "busybox is not installed, and CI=true needs it (scripts/test installs busybox-static)"
            );
        }
        eprintln!("skipping: busybox is not installed (scripts/test installs busybox-static)");
        return Ok(());
    }
    let Some(rig) = Rig::start("iso", "suspend", "5m").await? else {
        return Ok(());
    };
    let r = async {
        let size = json!({"cpus": 0.5, "memory_mb": 128});
        rig.tenant("ta", json!({"max_sandboxes": 2, "sandbox_size": size})).await?;
        rig.tenant("tb", json!({"max_sandboxes": 2, "sandbox_size": size})).await?;
        // Tenant B serves a secret file from its container for a while.
        let server_job = rig
            .enqueue(json!({"tenant": "tb", "kind": "agent", "spec": {"command": ["sh", "-c", "echo secret-of-b > /work/b-secret; timeout 40 httpd -f -p 8000 -h /work; true"]}}))
            .await?;
        let s = &rig.server;
        let sandbox = s
            .wait_for("B's server job to run", Duration::from_secs(120), || async {
                let j = s.get(&format!("/v1/jobs/{server_job}")).await?;
                Ok((j["state"] == "running")
                    .then(|| j["sandbox_id"].as_str().map(String::from))
                    .flatten())
            })
            .await?;
        let ip = container_ip(&rig.docker, &sandbox).await?;
        // busybox's nc speaks the HTTP by hand (its static wget cannot resolve even an address).
        let get = format!("printf 'GET /b-secret HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8000 | grep secret-of-b");
        let fetch = format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do {get} && exit 0; sleep 1; done; exit 1"
        );
        // Control: B's own second sandbox reaches it.
        let own = rig
            .enqueue(json!({"tenant": "tb", "kind": "agent", "spec": {"command": ["sh", "-c", fetch]}}))
            .await?;
        let j = rig.finished(&own).await?;
        assert_eq!(j["state"], "succeeded", "B cannot reach its own server: {j}");
        assert_eq!(j["result"]["stdout"], "secret-of-b\n");
        // Tenant A can neither reach B's container nor read B's file.
        let probe = rig
            .enqueue(json!({"tenant": "ta", "kind": "agent", "max_attempts": 1, "spec": {"command": ["sh", "-c", get]}}))
            .await?;
        let j = rig.finished(&probe).await?;
        assert_eq!(j["state"], "failed", "A reached B's container: {j}");
        assert!(!j.to_string().contains("secret-of-b"), "{j}");
        let read = rig
            .enqueue(json!({"tenant": "ta", "kind": "agent", "max_attempts": 1, "spec": {"command": ["cat", "/work/b-secret"]}}))
            .await?;
        let j = rig.finished(&read).await?;
        assert_eq!(j["state"], "failed", "A read B's file: {j}");
        assert!(!j.to_string().contains("secret-of-b"), "{j}");

        // A job that wants 512 MiB in a 128 MiB sandbox is killed, and the sandbox lives on.
        let hog = rig
            .enqueue(json!({"tenant": "ta", "kind": "agent", "max_attempts": 1, "spec": {"command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=512M", "count=1"]}}))
            .await?;
        let j = rig.finished(&hog).await?;
        assert_eq!(j["state"], "failed", "{j}");
        assert_eq!(j["error"]["code"], "oom_killed", "not reported as a memory kill: {j}");
        eprintln!("the memory hog ended: {j}");
        let hog_sandbox = j["sandbox_id"].as_str().unwrap_or_default().to_string();
        s.wait_for("the scheduler to log the memory kill", Duration::from_secs(30), || async {
            let log = s.log();
            Ok(log
                .lines()
                .any(|l| l.contains("over its memory limit") && l.contains(&hog_sandbox))
                .then_some(()))
        })
        .await?;
        let after = rig
            .enqueue(json!({"tenant": "ta", "kind": "agent", "spec": {"command": ["echo", "still here"]}}))
            .await?;
        let j = rig.finished(&after).await?;
        assert_eq!(j["state"], "succeeded", "{j}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let log = rig.server.log();
    let finished = rig.finish().await;
    r.map_err(|e| anyhow::anyhow!("{e}\n{log}"))?;
    finished
}
