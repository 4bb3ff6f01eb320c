//! A Kubernetes API for tests without a cluster: [`KubeEmulator`] runs kmock's
//! `KubernetesEmulator` (from PyPI, installed into `.venv-test` by `scripts/test`) on a loopback
//! port, and [`Kubelet`] is a small kubelet stand-in that makes its pods real: it watches the
//! emulated pods, starts a real process (normally `shoal-agent`) for each new one with the pod's
//! environment (`secretKeyRef`s read from the emulated Secrets, as a kubelet does), sets the pod's
//! status to Running with the container's start time, sets it Failed (or Succeeded) with the
//! finish time when the process dies, and kills the process when the pod is deleted.
//!
//! kmock is used as it is, with two corrections in its launcher (both bugs of kmock 0.8, noted in
//! `docs/providers/kubernetes.md`): its path parser reads `/api/v1/namespaces[/NAME]` as the
//! prefix of a namespaced path, so Namespace objects could not be served; and a conflict or a
//! missing object raised while it records a change came back as a plain-text 500 instead of a
//! `Status` with 409 or 404. What kmock does not do at all: label and field selectors (every list
//! and watch answers all objects), `resourceVersion` (so no optimistic concurrency, and watches
//! start by replaying every object), PUT (replace is not recorded), admission (ResourceQuota is
//! not enforced), NetworkPolicy enforcement, graceful deletion, and cascading namespace deletion.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The launcher: kmock's emulator with the standard resources Shoal uses declared, on a port.
const LAUNCHER: &str = r#"
import asyncio, sys
import kmock
from kmock._internal import parsing

_parse_path = parsing.parse_path

def parse_path(path):
    # kmock 0.8 reads /api/v1/namespaces[/NAME] as a namespaced prefix; it is the Namespace
    # resource itself (cluster-scoped).
    parts = path.strip('/').split('/')
    if parts[:3] == ['api', 'v1', 'namespaces'] and (len(parts) <= 4 or (len(parts) == 5 and parts[4] in ('status', 'finalize'))):
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath('', 'v1', 'namespaces', None, name, sub)
    return _parse_path(path)

parsing.parse_path = parse_path

class Emulator(kmock.KubernetesEmulator):
    async def _handle(self, request):
        # kmock 0.8 raises 409/404 while recording a change outside its error rendering.
        try:
            return await super()._handle(request)
        except kmock.KubernetesError as e:
            return await self._render_error(e)

VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
RESOURCES = {
    "v1/namespaces": ("Namespace", False),
    "v1/pods": ("Pod", True),
    "v1/secrets": ("Secret", True),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True),
    "v1/resourcequotas": ("ResourceQuota", True),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True),
    "coordination.k8s.io/v1/leases": ("Lease", True),
}

async def main():
    emu = Emulator()
    for key, (kind, namespaced) in RESOURCES.items():
        emu.resources[key] = dict(kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=VERBS)
    async with kmock.Server(emu, host='127.0.0.1', port=int(sys.argv[1])):
        print('ready', flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"#;

/// The Python that has kmock: `SHOAL_KMOCK_PYTHON`, else the workspace's `.venv-test`.
pub fn kmock_python() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_KMOCK_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-test/bin/python")
}

/// A running kmock Kubernetes API emulator.
pub struct KubeEmulator {
    child: tokio::process::Child,
    url: String,
    dir: PathBuf,
    http: reqwest::Client,
}

impl KubeEmulator {
    /// Starts the emulator on a spare loopback port and waits until it answers.
    pub async fn start() -> Result<KubeEmulator> {
        let python = kmock_python();
        if !python.exists() {
            bail!(
                "no Python with kmock at {} (scripts/test installs it; or set SHOAL_KMOCK_PYTHON)",
                python.display()
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "shoal-kmock-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("kmock_serve.py");
        std::fs::write(&script, LAUNCHER)?;
        let port = crate::server::free_port();
        let log = std::fs::File::create(dir.join("kmock.log"))?;
        let child = tokio::process::Command::new(&python)
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting kmock with {}", python.display()))?;
        let mut emu = KubeEmulator {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = emu.child.try_wait()? {
                bail!("kmock exited with {status}: {}", emu.log());
            }
            if let Ok(r) = emu.http.get(format!("{}/version", emu.url)).send().await
                && r.status().is_success()
            {
                return Ok(emu);
            }
            if std::time::Instant::now() > deadline {
                bail!("kmock did not answer within 30s: {}", emu.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The API server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What kmock printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kmock.log")).unwrap_or_default()
    }

    /// Writes a kubeconfig for this API server (no credentials: kmock takes none) and answers
    /// its path.
    pub fn write_kubeconfig(&self) -> Result<PathBuf> {
        let path = self.dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: kmock\n  cluster:\n    server: {}\ncontexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: test\nusers:\n- name: test\n  user: {{}}\ncurrent-context: kmock\n",
                self.url
            ),
        )?;
        Ok(path)
    }

    /// GET of an API path, as JSON; `None` for 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>> {
        let r = self.http.get(format!("{}{path}", self.url)).send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status} {v}");
        }
        Ok(Some(v))
    }

    /// The objects of a collection path (`/api/v1/pods`, `/api/v1/namespaces/x/secrets`).
    pub async fn list(&self, path: &str) -> Result<Vec<Value>> {
        Ok(self
            .get(path)
            .await?
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default())
    }

    /// Deletes an object by its path, as `kubectl delete` would.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let r = self
            .http
            .delete(format!("{}{path}", self.url))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("DELETE {path}: {}", r.status());
        }
        Ok(())
    }

    /// Creates an object in a collection path.
    pub async fn create(&self, path: &str, obj: &Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(obj)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::env::var_os("SHOAL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One pod the stand-in runs.
#[derive(Debug, Clone)]
pub struct PodRun {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The process group of the container's process.
    pub pid: u32,
    /// The container's start and finish, as written into the pod's status (RFC 3339, ms).
    pub started_at: String,
    /// When the container's process ended, if it has.
    pub finished_at: Option<String>,
    /// The process's environment, as the pod described it.
    pub env: HashMap<String, String>,
    /// The pod was deleted (its process told to stop).
    pub deleted: bool,
}

/// Every pod run so far, oldest first; a pod made again under the same name is a new run.
type Runs = Arc<Mutex<Vec<PodRun>>>;

fn current<'a>(runs: &'a mut [PodRun], ns: &str, name: &str) -> Option<&'a mut PodRun> {
    runs.iter_mut()
        .rev()
        .find(|r| r.namespace == ns && r.name == name && !r.deleted)
}

/// The kubelet stand-in.
pub struct Kubelet {
    runs: Runs,
    task: tokio::task::JoinHandle<()>,
}

fn rfc3339_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) on the process group of a child this stand-in started.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

struct Ctx {
    api: String,
    http: reqwest::Client,
    command: Vec<String>,
    root: PathBuf,
    runs: Runs,
}

impl Kubelet {
    /// Starts following the pods of the emulator at `api`; each new pod runs `command` (the
    /// image's entrypoint, here a host binary such as `shoal-agent`) in its own directory
    /// under `root`.
    pub fn start(api: &str, command: Vec<String>, root: &Path) -> Kubelet {
        let runs: Runs = Arc::default();
        let ctx = Arc::new(Ctx {
            api: api.to_string(),
            http: reqwest::Client::new(),
            command,
            root: root.to_path_buf(),
            runs: Arc::clone(&runs),
        });
        let task = tokio::spawn(follow(ctx));
        Kubelet { runs, task }
    }

    /// Every pod run so far, oldest first (processes alive or not, pods deleted or not).
    pub fn runs(&self) -> Vec<PodRun> {
        self.runs.lock().unwrap().clone()
    }

    /// The run of a pod that exists now.
    pub fn run(&self, namespace: &str, name: &str) -> Option<PodRun> {
        current(&mut self.runs.lock().unwrap(), namespace, name).cloned()
    }

    /// Kills a pod's process (its whole process group) with SIGKILL, as an OOM kill or a node
    /// failure would; the stand-in then marks the pod Failed.
    pub fn kill(&self, namespace: &str, name: &str) -> bool {
        match self.run(namespace, name) {
            Some(r) if r.finished_at.is_none() => {
                signal_group(r.pid, libc::SIGKILL);
                true
            }
            _ => false,
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        for r in self.runs.lock().unwrap().iter() {
            if r.finished_at.is_none() {
                signal_group(r.pid, libc::SIGKILL);
            }
        }
    }
}

async fn follow(ctx: Arc<Ctx>) {
    loop {
        if let Err(e) = watch_once(&ctx).await {
            tracing::debug!(error = %e, "kubelet stand-in: watch broke");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn watch_once(ctx: &Arc<Ctx>) -> Result<()> {
    let mut resp = ctx
        .http
        .get(format!("{}/api/v1/pods?watch=true", ctx.api))
        .send()
        .await?;
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let ev: Value = serde_json::from_slice(&line)?;
            let pod = &ev["object"];
            let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let key = (ns.to_string(), name.to_string());
            match ev["type"].as_str() {
                Some("ADDED" | "MODIFIED") => {
                    let known = current(&mut ctx.runs.lock().unwrap(), &key.0, &key.1).is_some();
                    let fresh =
                        pod["status"]["phase"].is_null() || pod["status"]["phase"] == "Pending";
                    if !known
                        && fresh
                        && pod["metadata"]["deletionTimestamp"].is_null()
                        && let Err(e) = run_pod(ctx, pod).await
                    {
                        tracing::warn!(error = %e, pod = name, "kubelet stand-in: could not run a pod");
                    }
                }
                Some("DELETED") => {
                    let run = current(&mut ctx.runs.lock().unwrap(), &key.0, &key.1).map(|r| {
                        r.deleted = true;
                        r.clone()
                    });
                    if let Some(r) = run
                        && r.finished_at.is_none()
                    {
                        signal_group(r.pid, libc::SIGTERM);
                        let pid = r.pid;
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            signal_group(pid, libc::SIGKILL);
                        });
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The container's environment, values and `secretKeyRef`s resolved.
async fn pod_env(ctx: &Ctx, ns: &str, container: &Value) -> Result<HashMap<String, String>> {
    let mut env = HashMap::new();
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap_or_default().to_string();
        if let Some(v) = e["value"].as_str() {
            env.insert(name, v.to_string());
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let secret = r["name"].as_str().unwrap_or_default();
            let key = r["key"].as_str().unwrap_or_default();
            let s: Value = ctx
                .http
                .get(format!(
                    "{}/api/v1/namespaces/{ns}/secrets/{secret}",
                    ctx.api
                ))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("secret {ns}/{secret} for {name}"))?
                .json()
                .await?;
            let b64 = s["data"][key]
                .as_str()
                .with_context(|| format!("key {key} in secret {ns}/{secret}"))?;
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD.decode(b64)?;
            env.insert(name, String::from_utf8(raw)?);
        }
    }
    Ok(env)
}

async fn patch_status(ctx: &Ctx, ns: &str, name: &str, status: Value) -> Result<()> {
    ctx.http
        .patch(format!(
            "{}/api/v1/namespaces/{ns}/pods/{name}/status",
            ctx.api
        ))
        .header("content-type", "application/merge-patch+json")
        .body(serde_json::to_vec(&json!({ "status": status }))?)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

#[allow(unsafe_code)] // libc calls; each block says why it is sound
async fn run_pod(ctx: &Arc<Ctx>, pod: &Value) -> Result<()> {
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let container = &pod["spec"]["containers"][0];
    let cname = container["name"].as_str().unwrap_or("main").to_string();
    let image = container["image"].as_str().unwrap_or_default().to_string();
    let env = pod_env(ctx, &ns, container).await?;
    let dir = ctx.root.join(&ns).join(&name);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("container.log"))?;
    let mut cmd = tokio::process::Command::new(&ctx.command[0]);
    cmd.args(&ctx.command[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", &dir)
        .env("HOSTNAME", &name)
        .envs(&env)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag on the child; it is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the pod's process")?;
    let pid = child.id().unwrap_or_default();
    let started_at = rfc3339_now();
    let key = (ns.clone(), name.clone());
    ctx.runs.lock().unwrap().push(PodRun {
        namespace: ns.clone(),
        name: name.clone(),
        pid,
        started_at: started_at.clone(),
        finished_at: None,
        env,
        deleted: false,
    });
    patch_status(
        ctx,
        &ns,
        &name,
        json!({
            "phase": "Running",
            "startTime": started_at,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": started_at}],
            "containerStatuses": [{
                "name": cname, "image": image, "imageID": "", "ready": true, "restartCount": 0,
                "started": true,
                "state": {"running": {"startedAt": started_at}}
            }]
        }),
    )
    .await?;
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move {
        let status = child.wait().await;
        let finished_at = rfc3339_now();
        let still_there = {
            let mut runs = ctx.runs.lock().unwrap();
            match runs.iter_mut().rev().find(|r| r.pid == pid) {
                Some(r) => {
                    r.finished_at = Some(finished_at.clone());
                    !r.deleted
                }
                None => false,
            }
        };
        if !still_there {
            return;
        }
        use std::os::unix::process::ExitStatusExt;
        let (code, signal) = match &status {
            Ok(s) => (
                s.code().unwrap_or(128 + s.signal().unwrap_or(0)),
                s.signal(),
            ),
            Err(_) => (255, None),
        };
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let mut terminated = json!({
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started_at,
            "finishedAt": finished_at,
        });
        if let Some(s) = signal {
            terminated["signal"] = json!(s);
        }
        let r = patch_status(
            &ctx,
            &key.0,
            &key.1,
            json!({
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": finished_at}],
                "containerStatuses": [{
                    "name": cname, "image": image, "imageID": "", "ready": false, "restartCount": 0,
                    "started": false,
                    "state": {"terminated": terminated}
                }]
            }),
        )
        .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "kubelet stand-in: the pod went before its status");
        }
    });
    Ok(())
}
