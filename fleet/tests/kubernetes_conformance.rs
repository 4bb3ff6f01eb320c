//! The `kubernetes` provider against kmock's Kubernetes API emulator over real HTTP, with the
//! kubelet stand-in running the real `shoal-agent` for every pod: the provider conformance suite;
//! idle as pod deletion and wake as its re-creation; the pod's environment with the token from
//! its Secret; each tenant's namespace with its NetworkPolicy and ResourceQuota; a killed pod
//! reported stopped at its container's finish time; unknown objects collected by label; and
//! leadership through a Lease.

use shoal_fleet::conformance::{self, SuiteConfig};
use shoal_fleet::kubernetes::lease::LeaseLock;
use shoal_fleet::kubernetes::{KubernetesConfig, KubernetesProvider, TenantLimits};
use shoal_fleet::{Observation, ObservedState, Provider, SandboxRef, SandboxSpec};
use shoal_testkit::kubelet::{KubeEmulator, Kubelet};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

struct Env {
    emu: KubeEmulator,
    kubelet: Kubelet,
    _root: TempRoot,
}

struct TempRoot(std::path::PathBuf);

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn env() -> anyhow::Result<Env> {
    let emu = KubeEmulator::start().await?;
    let root = std::env::temp_dir().join(format!(
        "shoal-kubelet-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&root)?;
    let agent = shoal_testkit::bins::binary("shoal-agent", "shoal-agent");
    let kubelet = Kubelet::start(emu.url(), vec![agent.display().to_string()], &root);
    Ok(Env {
        emu,
        kubelet,
        _root: TempRoot(root),
    })
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn provider_config(emu: &KubeEmulator) -> anyhow::Result<KubernetesConfig> {
    let mut cfg = KubernetesConfig::new("ghcr.io/shoal/agent:test");
    cfg.kubeconfig = Some(emu.write_kubeconfig()?);
    cfg.state_timeout = Duration::from_secs(20);
    cfg.rewatch_delay = Duration::from_millis(200);
    cfg.network.scheduler_cidrs = vec!["127.0.0.1/32".into()];
    Ok(cfg)
}

async fn provider(
    emu: &KubeEmulator,
) -> anyhow::Result<(KubernetesProvider, UnboundedReceiver<Observation>)> {
    let (tx, rx) = unbounded_channel();
    let p = KubernetesProvider::new(provider_config(emu)?, tx).await?;
    Ok((p, rx))
}

fn spec(tenant: &str, n: u32) -> SandboxSpec {
    SandboxSpec {
        sandbox_id: format!("sb_{tenant}_{n}"),
        tenant: tenant.into(),
        pool: tenant.into(),
        token: format!("tok-{tenant}-{n}"),
        scheduler_url: "http://127.0.0.1:9".into(),
        size: shoal_core::SandboxSize {
            cpus: 0.5,
            memory_mb: 256,
        },
        regions: Vec::new(),
    }
}

fn sref(s: &SandboxSpec, provider_id: &str) -> SandboxRef {
    SandboxRef {
        sandbox_id: s.sandbox_id.clone(),
        tenant: s.tenant.clone(),
        provider_id: provider_id.into(),
    }
}

async fn next(
    rx: &mut UnboundedReceiver<Observation>,
    sandbox_id: &str,
    want: ObservedState,
) -> anyhow::Result<Observation> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(o)) if o.sandbox.sandbox_id == sandbox_id && o.state == want => return Ok(o),
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("observations closed"),
            Err(_) => anyhow::bail!("no {want:?} for {sandbox_id}"),
        }
    }
}

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

async fn listed(p: &KubernetesProvider, sandbox_id: &str) -> anyhow::Result<Option<ObservedState>> {
    Ok(p.list()
        .await?
        .into_iter()
        .find(|o| o.sandbox.sandbox_id == sandbox_id)
        .map(|o| o.state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_provider_passes_the_conformance_suite() -> anyhow::Result<()> {
    let env = env().await?;
    let (p, mut rx) = provider(&env.emu).await?;
    assert_eq!(
        (p.capabilities().stop, p.capabilities().suspend),
        (false, false),
        "idle on Kubernetes is deleting the pod"
    );
    let suite = SuiteConfig {
        scheduler_url: "http://127.0.0.1:9/".into(),
        timeout: Duration::from_secs(60),
        tenant: "k8s-conf".into(),
    };
    conformance::run(&p, &mut rx, &suite)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", env.emu.log()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_deletes_the_pod_and_wake_makes_it_again() -> anyhow::Result<()> {
    let env = env().await?;
    let (p, mut rx) = provider(&env.emu).await?;
    let s = spec("idle", 1);
    let id = p.create(&s).await?;
    let running = next(&mut rx, &s.sandbox_id, ObservedState::Running).await?;
    let ns = "shoal-t-idle";
    let first = env.kubelet.run(ns, &id).expect("the pod runs");
    assert_eq!(
        running.at,
        millis(&first.started_at),
        "billing starts at the container's start"
    );
    let r = sref(&s, &id);

    p.stop(&r).await?;
    let stopped = next(&mut rx, &s.sandbox_id, ObservedState::Stopped).await?;
    assert!(stopped.at >= running.at);
    assert!(
        env.emu
            .get(&format!("/api/v1/namespaces/{ns}/pods/{id}"))
            .await?
            .is_none(),
        "the idle sandbox's pod is deleted"
    );
    let secret = format!("/api/v1/namespaces/{ns}/secrets/{id}-token");
    assert!(env.emu.get(&secret).await?.is_some(), "its Secret is kept");
    assert_eq!(
        listed(&p, &s.sandbox_id).await?,
        Some(ObservedState::Stopped)
    );
    p.stop(&r).await?; // idempotent

    p.start(&r, &s).await?;
    let again = next(&mut rx, &s.sandbox_id, ObservedState::Running).await?;
    assert!(again.at >= stopped.at);
    assert_eq!(
        listed(&p, &s.sandbox_id).await?,
        Some(ObservedState::Running)
    );
    let second = env.kubelet.run(ns, &id).expect("the pod runs again");
    assert_ne!(second.pid, first.pid, "a new pod, a new process");
    assert_eq!(second.env.get("SHOAL_SANDBOX_TOKEN"), Some(&s.token));
    p.start(&r, &s).await?; // idempotent
    p.destroy(&r).await?;
    next(&mut rx, &s.sandbox_id, ObservedState::Gone).await?;
    assert!(
        env.emu.get(&secret).await?.is_none(),
        "destroy removes the Secret"
    );
    Ok(())
}

/// A tenant's regions become a required node affinity on `topology.kubernetes.io/region`, in its
/// order; a tenant without regions gets no affinity at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_regions_are_a_required_node_affinity() -> anyhow::Result<()> {
    let env = env().await?;
    let (p, _rx) = provider(&env.emu).await?;
    let mut placed = spec("frankfurt", 1);
    placed.regions = vec!["eu-central-1".into(), "eu-west-1".into()];
    let anywhere = spec("anywhere", 1);
    let placed_id = p.create(&placed).await?;
    let anywhere_id = p.create(&anywhere).await?;
    let pod = env
        .emu
        .get(&format!(
            "/api/v1/namespaces/shoal-t-frankfurt/pods/{placed_id}"
        ))
        .await?
        .expect("the pod");
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(terms.as_array().map(Vec::len), Some(1), "{pod}");
    let expr = &terms[0]["matchExpressions"][0];
    assert_eq!(expr["key"], "topology.kubernetes.io/region");
    assert_eq!(expr["operator"], "In");
    assert_eq!(
        expr["values"],
        serde_json::json!(["eu-central-1", "eu-west-1"])
    );
    let other = env
        .emu
        .get(&format!(
            "/api/v1/namespaces/shoal-t-anywhere/pods/{anywhere_id}"
        ))
        .await?
        .expect("the pod");
    assert!(other["spec"]["affinity"].is_null(), "{other}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_runs_the_agent_with_its_settings_in_the_tenants_namespace() -> anyhow::Result<()> {
    let env = env().await?;
    let (p, mut rx) = provider(&env.emu).await?;
    p.set_tenant_limits(
        "acme",
        TenantLimits {
            max_sandboxes: Some(4),
            size: shoal_core::SandboxSize {
                cpus: 0.5,
                memory_mb: 256,
            },
        },
    )
    .await?;
    let s = spec("acme", 1);
    let id = p.create(&s).await?;
    next(&mut rx, &s.sandbox_id, ObservedState::Running).await?;
    let ns = "shoal-t-acme";
    let pod = env
        .emu
        .get(&format!("/api/v1/namespaces/{ns}/pods/{id}"))
        .await?
        .expect("the pod");
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["shoal.dev/tenant"], "acme");
    assert_eq!(labels["shoal.dev/pool"], "acme");
    assert_eq!(labels["shoal.dev/sandbox"], s.sandbox_id.as_str());
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "500m");
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    let token_env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SHOAL_SANDBOX_TOKEN")
        .unwrap();
    assert!(
        token_env["value"].is_null(),
        "the token is not in the pod spec"
    );
    assert_eq!(
        token_env["valueFrom"]["secretKeyRef"]["name"],
        format!("{id}-token")
    );
    // The process really runs the agent, with the sandbox's settings.
    let run = env.kubelet.run(ns, &id).unwrap();
    let exe = std::fs::read_link(format!("/proc/{}/exe", run.pid))?;
    assert!(exe.ends_with("shoal-agent"), "{exe:?}");
    for (k, v) in s.agent_env() {
        assert_eq!(run.env.get(&k), Some(&v), "{k} in the agent's environment");
    }
    // The tenant's namespace, policy and quota.
    let nsobj = env
        .emu
        .get(&format!("/api/v1/namespaces/{ns}"))
        .await?
        .unwrap();
    assert_eq!(nsobj["metadata"]["labels"]["shoal.dev/tenant"], "acme");
    let np = env
        .emu
        .get(&format!(
            "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/shoal-sandboxes"
        ))
        .await?
        .expect("a NetworkPolicy");
    assert_eq!(np["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(np["spec"]["ingress"], serde_json::json!([]));
    let q = env
        .emu
        .get(&format!(
            "/api/v1/namespaces/{ns}/resourcequotas/shoal-tenant-quota"
        ))
        .await?
        .expect("a ResourceQuota");
    assert_eq!(q["spec"]["hard"]["pods"], "4");
    assert_eq!(q["spec"]["hard"]["requests.cpu"], "2000m");
    // New limits reach the quota at once.
    p.set_tenant_limits(
        "acme",
        TenantLimits {
            max_sandboxes: Some(2),
            size: shoal_core::SandboxSize {
                cpus: 0.5,
                memory_mb: 256,
            },
        },
    )
    .await?;
    let q = env
        .emu
        .get(&format!(
            "/api/v1/namespaces/{ns}/resourcequotas/shoal-tenant-quota"
        ))
        .await?
        .unwrap();
    assert_eq!(q["spec"]["hard"]["pods"], "2");
    p.destroy(&sref(&s, &id)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_is_stopped_at_its_containers_finish() -> anyhow::Result<()> {
    let env = env().await?;
    let (p, mut rx) = provider(&env.emu).await?;
    let s = spec("crash", 1);
    let id = p.create(&s).await?;
    next(&mut rx, &s.sandbox_id, ObservedState::Running).await?;
    let ns = "shoal-t-crash";
    assert!(env.kubelet.kill(ns, &id));
    let stopped = next(&mut rx, &s.sandbox_id, ObservedState::Stopped).await?;
    let finished = env
        .kubelet
        .run(ns, &id)
        .and_then(|r| r.finished_at)
        .expect("the stand-in recorded the finish");
    assert_eq!(
        stopped.at,
        millis(&finished),
        "billing ends when the pod ended"
    );
    assert_eq!(
        listed(&p, &s.sandbox_id).await?,
        Some(ObservedState::Stopped)
    );
    let pod = env
        .emu
        .get(&format!("/api/v1/namespaces/{ns}/pods/{id}"))
        .await?
        .unwrap();
    assert_eq!(pod["status"]["phase"], "Failed");
    // Waking it replaces the failed pod.
    p.start(&sref(&s, &id), &s).await?;
    next(&mut rx, &s.sandbox_id, ObservedState::Running).await?;
    assert!(env.kubelet.run(ns, &id).unwrap().finished_at.is_none());
    // A pod deleted behind Shoal's back is a lost sandbox too.
    env.emu
        .delete(&format!("/api/v1/namespaces/{ns}/pods/{id}"))
        .await?;
    next(&mut rx, &s.sandbox_id, ObservedState::Stopped).await?;
    p.destroy(&sref(&s, &id)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_the_store_does_not_know_are_collected_by_label() -> anyhow::Result<()> {
    let env = env().await?;
    let (p, _rx) = provider(&env.emu).await?;
    let keep = spec("orph", 1);
    let lost = spec("orph", 2);
    p.create(&keep).await?;
    p.create(&lost).await?;
    p.create(&spec("gone-tenant", 1)).await?;
    let collected =
        shoal_fleet::orphans::collect_unknown(&p, |sandbox: &str| sandbox == keep.sandbox_id)
            .await?;
    let mut ids: Vec<_> = collected
        .iter()
        .map(|c| c.sandbox.sandbox_id.clone())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec!["sb_gone-tenant_1".to_string(), lost.sandbox_id.clone()]
    );
    let left: Vec<_> = p
        .list()
        .await?
        .into_iter()
        .map(|o| o.sandbox.sandbox_id)
        .collect();
    assert_eq!(left, vec![keep.sandbox_id.clone()]);
    let namespaces = p
        .collect_unknown_namespaces(&|tenant: &str| tenant == "orph")
        .await?;
    assert_eq!(namespaces, vec!["shoal-t-gone-tenant".to_string()]);
    assert!(
        env.emu
            .get("/api/v1/namespaces/shoal-t-gone-tenant")
            .await?
            .is_none()
    );
    assert!(
        env.emu
            .get("/api/v1/namespaces/shoal-t-orph")
            .await?
            .is_some()
    );
    // Objects without Shoal's labels, or outside its namespaces, are never touched.
    env.emu
        .create(
            "/api/v1/namespaces/shoal-t-orph/pods",
            &serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "someone-elses", "namespace": "shoal-t-orph"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await?;
    shoal_fleet::orphans::collect_unknown(&p, |_| false).await?;
    assert!(
        env.emu
            .get("/api/v1/namespaces/shoal-t-orph/pods/someone-elses")
            .await?
            .is_some()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_through_a_lease() -> anyhow::Result<()> {
    let env = env().await?;
    let (p, _rx) = provider(&env.emu).await?;
    let ttl = Duration::from_secs(15);
    let a = LeaseLock::new(p.client(), "shoal", "shoal-leader", "replica-a", ttl);
    let b = LeaseLock::new(p.client(), "shoal", "shoal-leader", "replica-b", ttl);
    let t0: i64 = 1_800_000_000_000;
    let la = a.try_acquire(t0).await?.expect("a free lease is taken");
    assert_eq!(
        b.try_acquire(t0 + 1_000).await?,
        None,
        "a held lease is not"
    );
    let renewed = a.renew(t0 + 10_000).await?.expect("the holder renews");
    assert_eq!(renewed.token, la.token, "renewing keeps the fencing token");
    assert_eq!(
        b.try_acquire(t0 + 20_000).await?,
        None,
        "renewed: still held"
    );
    let lb = b
        .try_acquire(t0 + 10_000 + 15_000)
        .await?
        .expect("an expired lease is taken over");
    assert!(
        lb.token > la.token,
        "the fencing token grows with each holder"
    );
    assert_eq!(
        a.renew(t0 + 26_000).await?,
        None,
        "the deposed leader knows it"
    );
    b.release().await?;
    let la2 = a
        .try_acquire(t0 + 27_000)
        .await?
        .expect("a released lease is free");
    assert!(la2.token > lb.token);
    let lease = env
        .emu
        .get("/apis/coordination.k8s.io/v1/namespaces/shoal/leases/shoal-leader")
        .await?
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    Ok(())
}

/// With `tenant_role`, each tenant namespace gets a RoleBinding of the sandbox ClusterRole to the
/// scheduler's service account, and the provider finds stopped sandboxes by listing Secrets
/// namespace by namespace rather than across the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_namespaces_bind_the_scheduler_role_and_are_listed_one_by_one() -> anyhow::Result<()>
{
    let env = env().await?;
    let mut cfg = provider_config(&env.emu)?;
    cfg.tenant_role = Some(shoal_fleet::kubernetes::TenantRoleConfig {
        cluster_role: "shoal-tenant".into(),
        service_account: "shoal".into(),
        namespace: "shoal".into(),
    });
    let (tx, mut rx) = unbounded_channel();
    let p = KubernetesProvider::new(cfg, tx).await?;
    let s = spec("bound", 1);
    let id = p.create(&s).await?;
    next(&mut rx, &s.sandbox_id, ObservedState::Running).await?;
    let rb = env
        .emu
        .get(
            "/apis/rbac.authorization.k8s.io/v1/namespaces/shoal-t-bound/rolebindings/shoal-tenant",
        )
        .await?
        .expect("the tenant namespace's RoleBinding");
    assert_eq!(rb["roleRef"]["kind"], "ClusterRole");
    assert_eq!(rb["roleRef"]["name"], "shoal-tenant");
    assert_eq!(rb["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(rb["subjects"][0]["name"], "shoal");
    assert_eq!(rb["subjects"][0]["namespace"], "shoal");
    assert_eq!(
        rb["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "shoal"
    );
    // Stopped: the pod goes, the token Secret stays; the per-namespace listing still finds it.
    p.stop(&sref(&s, &id)).await?;
    next(&mut rx, &s.sandbox_id, ObservedState::Stopped).await?;
    assert_eq!(
        listed(&p, &s.sandbox_id).await?,
        Some(ObservedState::Stopped)
    );
    p.destroy(&sref(&s, &id)).await?;
    assert_eq!(listed(&p, &s.sandbox_id).await?, None);
    drop(env);
    Ok(())
}
