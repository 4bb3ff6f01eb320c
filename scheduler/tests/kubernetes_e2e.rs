//! End to end with `shoal serve --provider kubernetes` against kmock's Kubernetes API emulator,
//! with the kubelet stand-in running the real `shoal-agent` for every pod: three tenants' sixty
//! jobs all succeed, idle pods are deleted and new work makes them again, each tenant's objects
//! live in its own namespace beside its NetworkPolicy and ResourceQuota; and a pod killed
//! mid-job leads to a retry that succeeds, its billed time ending when the pod ended.

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::kubelet::{KubeEmulator, Kubelet};
use shoal_testkit::server::Server;
use std::path::PathBuf;
use std::time::Duration;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

struct Rig {
    emu: KubeEmulator,
    kubelet: Kubelet,
    server: Server,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(tenants: &[(&str, u32)]) -> Result<Rig> {
    let emu = KubeEmulator::start().await?;
    let dir = std::env::temp_dir().join(format!(
        "shoal-k8s-e2e-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(dir.join("nodes"))?;
    let agent = shoal_testkit::bins::binary("shoal-agent", "shoal-agent");
    let kubelet = Kubelet::start(
        emu.url(),
        vec![agent.display().to_string()],
        &dir.join("nodes"),
    );
    let config = dir.join("shoal.toml");
    std::fs::write(
        &config,
        format!(
            "[provider]\nname = \"kubernetes\"\n[provider.kubernetes]\nkubeconfig = {:?}\nimage = \"ghcr.io/shoal/agent:test\"\nstate_timeout = \"20s\"\nrewatch_delay = \"200ms\"\n[provider.kubernetes.quota]\ndefault_max_sandboxes = 5\n[provider.kubernetes.network]\nscheduler_cidrs = [\"127.0.0.1/32\"]\n",
            emu.write_kubeconfig()?
        ),
    )?;
    let server = Server::start(
        &["--config", config.to_str().unwrap(), "--idle-timeout", "2s"],
        &[],
    )
    .await?;
    for (t, max) in tenants {
        let (st, v) = server
            .send(
                Method::PUT,
                &format!("/v1/tenants/{t}"),
                &json!({"plan": "pro", "limits": {"max_sandboxes": max}}),
            )
            .await?;
        anyhow::ensure!(st == 201, "{st} {v}");
    }
    Ok(Rig {
        emu,
        kubelet,
        server,
        dir,
    })
}

async fn wait_done(s: &Server, id: &str) -> Result<Value> {
    s.wait_for(&format!("job {id}"), Duration::from_secs(180), || async {
        let j = s.get(&format!("/v1/jobs/{id}")).await?;
        Ok(matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead")).then_some(j))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", s.log()))
}

async fn run_jobs(s: &Server, per_tenant: usize, tag: &str) -> Result<()> {
    let mut ids = Vec::new();
    for i in 0..per_tenant {
        for t in TENANTS {
            let (st, v) = s
                .send(Method::POST, "/v1/jobs", &json!({"tenant": t, "kind": "agent", "spec": {"command": ["sh", "-c", format!("sleep 0.2; echo {tag}-{t}-{i}")]}}))
                .await?;
            anyhow::ensure!(st == 202, "{st} {v}");
            ids.push((
                v["id"].as_str().unwrap().to_string(),
                format!("{tag}-{t}-{i}\n"),
            ));
        }
    }
    for (id, want) in &ids {
        let j = wait_done(s, id).await?;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(j["result"]["stdout"].as_str(), Some(want.as_str()));
    }
    Ok(())
}

/// The live pods of a tenant's namespace.
async fn pods(emu: &KubeEmulator, tenant: &str) -> Result<Vec<Value>> {
    emu.list(&format!("/api/v1/namespaces/shoal-t-{tenant}/pods"))
        .await
}

fn active(p: &Value) -> u64 {
    ["booting", "ready", "busy"]
        .iter()
        .map(|s| p["sandboxes"][s].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_pools_run_go_idle_and_come_back() -> Result<()> {
    let rig = start(&TENANTS.map(|t| (t, 3))).await?;
    let (s, emu) = (&rig.server, &rig.emu);
    run_jobs(s, 20, "first").await?;

    // Each tenant's objects live in its own namespace, beside its policy and quota.
    for t in TENANTS {
        let ns = format!("shoal-t-{t}");
        let nsobj = emu.get(&format!("/api/v1/namespaces/{ns}")).await?;
        assert!(nsobj.is_some(), "no namespace {ns}");
        for p in pods(emu, t).await? {
            assert_eq!(p["metadata"]["labels"]["shoal.dev/tenant"], t, "{p}");
            assert_eq!(p["metadata"]["labels"]["shoal.dev/pool"], t);
            assert!(p["metadata"]["labels"]["shoal.dev/sandbox"].is_string());
        }
        let all = emu.list("/api/v1/pods").await?;
        for p in &all {
            if p["metadata"]["labels"]["shoal.dev/tenant"] == t {
                assert_eq!(
                    p["metadata"]["namespace"],
                    ns.as_str(),
                    "a pod of {t} outside {ns}"
                );
            }
        }
        let np = emu
            .get(&format!(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/shoal-sandboxes"
            ))
            .await?
            .expect("a NetworkPolicy per tenant");
        assert_eq!(np["spec"]["ingress"], json!([]));
        let q = emu
            .get(&format!(
                "/api/v1/namespaces/{ns}/resourcequotas/shoal-tenant-quota"
            ))
            .await?
            .expect("a ResourceQuota per tenant");
        // The quota mirrors the tenant's plan limit (3), not the config's default (5).
        assert_eq!(q["spec"]["hard"]["pods"], "3");
        let secrets = emu
            .list(&format!("/api/v1/namespaces/{ns}/secrets"))
            .await?;
        assert!(
            secrets
                .iter()
                .all(|x| x["metadata"]["labels"]["shoal.dev/tenant"] == t),
            "another tenant's secret in {ns}"
        );
    }

    // Idle: the pools stop, which on Kubernetes deletes the pods.
    for t in TENANTS {
        s.wait_for(
            &format!("{t}'s pods to be deleted"),
            Duration::from_secs(90),
            || async {
                let p = s.get(&format!("/v1/pools/{t}")).await?;
                let left = pods(emu, t).await?.len();
                Ok((active(&p) == 0 && left == 0).then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", s.log()))?;
    }
    // New work brings them back.
    run_jobs(s, 1, "again").await?;
    for t in TENANTS {
        assert!(
            !pods(emu, t).await?.is_empty(),
            "no pod for {t} after new work"
        );
    }
    let runs = rig.kubelet.runs();
    assert!(runs.len() >= 6, "pods were made again: {}", runs.len());
    drop(rig);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_killed_mid_job_is_retried_and_billed_until_it_ended() -> Result<()> {
    let rig = start(&[("crashy", 1)]).await?;
    let (s, emu) = (&rig.server, &rig.emu);
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "crashy", "kind": "agent", "max_attempts": 3,
                    "spec": {"command": ["sh", "-c", "sleep 4; echo survived"]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let id = v["id"].as_str().unwrap().to_string();
    let sandbox = s
        .wait_for("the job to run", Duration::from_secs(60), || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok((j["state"] == "running")
                .then(|| j["sandbox_id"].as_str().map(str::to_string))
                .flatten())
        })
        .await?;
    let ns = "shoal-t-crashy";
    let pod = pods(emu, "crashy")
        .await?
        .into_iter()
        .find(|p| p["metadata"]["labels"]["shoal.dev/sandbox"] == sandbox.as_str())
        .expect("the busy sandbox's pod");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let pid = rig.kubelet.run(ns, &name).expect("the pod runs").pid;
    assert!(rig.kubelet.kill(ns, &name), "the pod's process was running");
    let killed = s
        .wait_for(
            "the pod to be marked failed",
            Duration::from_secs(30),
            || async {
                Ok(rig
                    .kubelet
                    .runs()
                    .into_iter()
                    .find(|r| r.pid == pid)
                    .and_then(|r| r.finished_at.map(|f| (r.started_at, f))))
            },
        )
        .await?;
    let j = wait_done(s, &id).await?;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["attempts"], 2, "one retry after the kill: {j}");
    assert_eq!(j["result"]["stdout"], "survived\n");

    // Billing runs from the killed container's start to its finish: nothing is billed from then
    // until the next pod of the tenant started, and all of its own life is.
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    let (started, finished) = (ms(&killed.0), ms(&killed.1));
    let next_start = rig
        .kubelet
        .runs()
        .iter()
        .filter(|r| r.namespace == ns)
        .map(|r| ms(&r.started_at))
        .filter(|t| *t > finished)
        .min()
        .expect("a pod ran the retry");
    let at = |m: i64| {
        chrono::DateTime::from_timestamp_millis(m)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let usage = |from: i64, to: i64| {
        let path = format!(
            "/v1/usage?tenant=crashy&granularity=hour&from={}&to={}",
            at(from).replace('+', "%2B"),
            at(to).replace('+', "%2B")
        );
        async move { s.get(&path).await }
    };
    let after = usage(finished, next_start).await?;
    assert_eq!(
        after["total"]["sandbox_seconds"], 0.0,
        "billed after the pod ended: {after}"
    );
    let during = usage(started, finished).await?;
    let billed = during["total"]["sandbox_seconds"].as_f64().unwrap_or(-1.0);
    let lived = (finished - started) as f64 / 1000.0;
    assert!(
        (billed - lived).abs() < 1e-6,
        "billed {billed}s of a pod that ran {lived}s: {during}"
    );
    drop(rig);
    Ok(())
}
