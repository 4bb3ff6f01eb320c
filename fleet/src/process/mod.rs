//! The `process` provider: each sandbox is a `shoal-agent` process on this host, confined by
//! bubblewrap ([`jail`]): its own mount, PID, IPC and UTS namespaces, a read-only view of the
//! system, its own working directory as `/work`, its own user when the scheduler runs as root, and
//! an empty environment plus what the agent needs. Where the host cannot confine it, it runs
//! unconfined and [`ProcessProvider::isolation`] says so (the scheduler then warns and admits one
//! tenant only).
//!
//! Stop is SIGTERM to the agent (SIGKILL to its process group after a grace period), suspend and
//! resume are SIGSTOP and SIGCONT to the group. Sandboxes are started with a parent-death signal,
//! so a scheduler that dies, even by SIGKILL, leaves no agent behind.

pub mod jail;

use crate::common::now_ms;
use crate::{
    Capabilities, Observation, ObservationSink, ObservedState, Provider, ProviderError, SandboxRef,
    SandboxSpec,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Settings of the process provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    /// The `shoal-agent` binary to run.
    pub agent_bin: PathBuf,
    /// Sandboxes' working directories go under here, one per sandbox.
    pub root: PathBuf,
    /// How long a stopping agent may take before it is killed.
    pub stop_grace: Duration,
    /// How sandboxes are confined (decided once by [`jail::Isolation::probe`]).
    pub isolation: jail::Isolation,
    /// When the scheduler runs as root, each live sandbox gets a uid of its own from
    /// `[uid_base, uid_base + 65536)`.
    pub uid_base: u32,
}

/// The default first sandbox uid: above the ranges distributions hand to people and to
/// subordinate-id maps (`/etc/subuid` starts at 100000), below 2^31.
pub const DEFAULT_UID_BASE: u32 = 1_200_000;
const UID_COUNT: u32 = 65_536;

struct Entry {
    spec: SandboxSpec,
    state: ObservedState,
    pid: Option<i32>,
    /// Bumped by the watcher each time the current process exits.
    exited: watch::Receiver<u64>,
    generation: u64,
    /// The sandbox's own uid, while it has one.
    uid: Option<u32>,
}

/// The process provider.
pub struct ProcessProvider {
    cfg: ProcessConfig,
    sink: ObservationSink,
    sandboxes: Arc<Mutex<HashMap<String, Entry>>>,
    uids: Arc<Mutex<jail::UidPool>>,
}

fn provider_id(sandbox_id: &str) -> String {
    format!("proc-{sandbox_id}")
}

#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn signal_group(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group the sandbox leads; it touches
    // no memory of ours.
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// SIGTERM to the agent of the sandbox whose process group is `pgid` (once to each process in
/// `told`), not to bubblewrap, which would end the sandbox at once, before the agent hands its
/// job back.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
fn terminate_agent(pgid: i32, told: &mut std::collections::HashSet<i32>) {
    for pid in jail::group_members_except_bwrap(pgid) {
        if !told.insert(pid) {
            continue;
        }
        // SAFETY: as in `signal_group`, for one process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Variables of the scheduler's environment a sandbox's agent may inherit: its own settings and
/// the log filter. Nothing else (the admin token, database URLs, cloud credentials stay out).
fn inherited_agent_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k == "RUST_LOG" || k.starts_with("SHOAL_AGENT_"))
        .filter(|(k, _)| k != "SHOAL_AGENT_BIN")
        .collect()
}

impl ProcessProvider {
    /// A provider with `cfg`, reporting what it observes to `sink`.
    pub fn new(mut cfg: ProcessConfig, sink: ObservationSink) -> Self {
        // bubblewrap binds the agent by path from inside the sandbox's directory.
        if let Ok(abs) = std::fs::canonicalize(&cfg.agent_bin) {
            cfg.agent_bin = abs;
        }
        let uids = jail::UidPool::new(cfg.uid_base, UID_COUNT);
        ProcessProvider {
            cfg,
            sink,
            sandboxes: Arc::new(Mutex::new(HashMap::new())),
            uids: Arc::new(Mutex::new(uids)),
        }
    }

    /// How this provider's sandboxes are confined.
    pub fn isolation(&self) -> &jail::Isolation {
        &self.cfg.isolation
    }

    fn observe(&self, spec: &SandboxSpec, state: ObservedState) {
        let _ = self.sink.send(Observation {
            sandbox: SandboxRef {
                sandbox_id: spec.sandbox_id.clone(),
                tenant: spec.tenant.clone(),
                provider_id: provider_id(&spec.sandbox_id),
            },
            state,
            at: now_ms(),
        });
    }

    /// The sandbox's own directory: its agent's log, and `work/`, the only part its processes
    /// see.
    fn sandbox_dir(&self, sandbox_id: &str) -> PathBuf {
        self.cfg.root.join(sandbox_id)
    }

    /// The uid sandbox `sandbox_id` runs as, and whether it was newly taken: the one it had, else
    /// a free one; `None` when the scheduler is not root (every sandbox then runs as the
    /// scheduler's user, in namespaces of its own).
    fn sandbox_uid(&self, sandbox_id: &str) -> Result<(Option<u32>, bool), ProviderError> {
        if !jail::is_root() {
            return Ok((None, false));
        }
        if let Some(uid) = self
            .sandboxes
            .lock()
            .unwrap()
            .get(sandbox_id)
            .and_then(|e| e.uid)
        {
            return Ok((Some(uid), false));
        }
        let uid = self.uids.lock().unwrap().take();
        uid.map(|u| (Some(u), true))
            .ok_or_else(|| ProviderError::Capacity("every sandbox uid is in use".into()))
    }

    /// Starts the agent process for `spec`; the caller holds no lock.
    #[allow(unsafe_code)] // libc calls; each block says why it is sound
    fn spawn(&self, spec: &SandboxSpec) -> Result<(), ProviderError> {
        // Inside bubblewrap a missing or non-executable agent would only show as a sandbox that
        // exits at once; say so here, as an unconfined spawn would.
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(&self.cfg.agent_bin) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            _ => {
                return Err(ProviderError::Permanent(format!(
                    "the agent {} is not an executable file",
                    self.cfg.agent_bin.display()
                )));
            }
        }
        let dir = self.sandbox_dir(&spec.sandbox_id);
        let work = dir.join("work");
        std::fs::create_dir_all(&work)
            .map_err(|e| ProviderError::Permanent(format!("creating {}: {e}", work.display())))?;
        let (uid, fresh) = self.sandbox_uid(&spec.sandbox_id)?;
        let give_back = |e: ProviderError| {
            if let Some(u) = uid.filter(|_| fresh) {
                self.uids.lock().unwrap().give_back(u);
            }
            e
        };
        if let Some(uid) = uid {
            // The sandbox's user alone reaches its files.
            let _ = std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700));
            jail::chown(&work, uid).map_err(|e| {
                give_back(ProviderError::Permanent(format!(
                    "chown {}: {e}",
                    work.display()
                )))
            })?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(|e| give_back(ProviderError::Permanent(format!("agent log: {e}"))))?;
        let log2 = log
            .try_clone()
            .map_err(|e| give_back(ProviderError::Permanent(e.to_string())))?;
        let mut cmd = match &self.cfg.isolation {
            jail::Isolation::Bubblewrap { bwrap } => {
                let jail = jail::Jail {
                    bwrap: bwrap.clone(),
                    workdir: work.clone(),
                    agent_bin: self.cfg.agent_bin.clone(),
                    uid,
                };
                let mut cmd = tokio::process::Command::new(bwrap);
                cmd.args(jail.args(&[]));
                cmd
            }
            jail::Isolation::Unconfined { .. } => {
                let mut cmd = tokio::process::Command::new(&self.cfg.agent_bin);
                if let Some(uid) = uid {
                    // Not confined, but not root either: the data directory (0700) stays shut.
                    cmd.uid(uid).gid(uid);
                }
                cmd
            }
        };
        cmd.current_dir(&work)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", jail::WORKDIR_IN_SANDBOX)
            .env("TMPDIR", "/tmp")
            .envs(inherited_agent_env())
            .envs(spec.agent_env())
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only sets a flag on the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            give_back(ProviderError::Permanent(format!(
                "spawning {}: {e}",
                self.cfg.agent_bin.display()
            )))
        })?;
        let pid = child.id().map(|p| p as i32);
        let (tx, rx) = watch::channel(0u64);
        let generation = {
            let mut map = self.sandboxes.lock().unwrap();
            let generation = map.get(&spec.sandbox_id).map_or(0, |e| e.generation + 1);
            map.insert(
                spec.sandbox_id.clone(),
                Entry {
                    spec: spec.clone(),
                    state: ObservedState::Running,
                    pid,
                    exited: rx,
                    generation,
                    uid,
                },
            );
            generation
        };
        self.observe(spec, ObservedState::Running);
        let sandboxes = Arc::clone(&self.sandboxes);
        let sink = self.sink.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            let _ = child.wait().await;
            let at = now_ms();
            let report = {
                let mut map = sandboxes.lock().unwrap();
                match map.get_mut(&spec.sandbox_id) {
                    Some(e) if e.generation == generation => {
                        e.state = ObservedState::Stopped;
                        e.pid = None;
                        true
                    }
                    // Destroyed meanwhile, or restarted: the newer process owns the entry.
                    _ => false,
                }
            };
            if report {
                let _ = sink.send(Observation {
                    sandbox: SandboxRef {
                        sandbox_id: spec.sandbox_id.clone(),
                        tenant: spec.tenant.clone(),
                        provider_id: provider_id(&spec.sandbox_id),
                    },
                    state: ObservedState::Stopped,
                    at,
                });
            }
            let _ = tx.send(generation + 1);
        });
        Ok(())
    }

    /// Stops the agent of `sandbox_id` and waits for it to exit.
    async fn terminate(&self, sandbox_id: &str) -> Result<bool, ProviderError> {
        let (pid, mut exited, state) = {
            let map = self.sandboxes.lock().unwrap();
            let e = map
                .get(sandbox_id)
                .ok_or_else(|| ProviderError::NotFound(sandbox_id.into()))?;
            (e.pid, e.exited.clone(), e.state)
        };
        let Some(pid) = pid else { return Ok(false) };
        if state == ObservedState::Suspended {
            signal_group(pid, libc::SIGCONT);
        }
        let confined = matches!(self.cfg.isolation, jail::Isolation::Bubblewrap { .. });
        if !confined {
            signal_group(pid, libc::SIGTERM);
        }
        let exited_in_time = tokio::time::timeout(self.cfg.stop_grace, async {
            if confined {
                // A sandbox stopped just after it started may not have exec'd its agent yet:
                // until it exits, whatever of it is not bubblewrap is asked again.
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let mut told = std::collections::HashSet::new();
                loop {
                    terminate_agent(pid, &mut told);
                    tokio::select! {
                        _ = exited.wait_for(|g| *g > 0) => break,
                        _ = tick.tick() => {}
                    }
                }
            } else {
                let _ = exited.wait_for(|g| *g > 0).await;
            }
        })
        .await
        .is_ok();
        if !exited_in_time {
            signal_group(pid, libc::SIGKILL);
            let _ = exited.wait_for(|g| *g > 0).await.map(|_| ());
        }
        Ok(true)
    }

    fn entry_state(
        &self,
        sandbox_id: &str,
    ) -> Result<(ObservedState, Option<i32>, SandboxSpec), ProviderError> {
        let map = self.sandboxes.lock().unwrap();
        let e = map
            .get(sandbox_id)
            .ok_or_else(|| ProviderError::NotFound(sandbox_id.into()))?;
        Ok((e.state, e.pid, e.spec.clone()))
    }

    fn set_state(&self, sandbox_id: &str, state: ObservedState) {
        if let Some(e) = self.sandboxes.lock().unwrap().get_mut(sandbox_id) {
            e.state = state;
        }
    }
}

#[async_trait]
impl Provider for ProcessProvider {
    fn name(&self) -> &'static str {
        "process"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            suspend: true,
            stop: true,
        }
    }

    fn isolation_warning(&self) -> Option<String> {
        self.cfg.isolation.warning()
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        crate::common::note_regions_ignored("process", spec);
        if self
            .sandboxes
            .lock()
            .unwrap()
            .contains_key(&spec.sandbox_id)
        {
            return Ok(provider_id(&spec.sandbox_id));
        }
        self.spawn(spec)?;
        Ok(provider_id(&spec.sandbox_id))
    }

    async fn start(&self, sandbox: &SandboxRef, spec: &SandboxSpec) -> Result<(), ProviderError> {
        // A sandbox this process has not seen (the scheduler restarted) starts from its spec.
        let state = self
            .entry_state(&sandbox.sandbox_id)
            .map_or(ObservedState::Gone, |(s, ..)| s);
        match state {
            ObservedState::Running => Ok(()),
            ObservedState::Suspended => self.resume(sandbox).await,
            ObservedState::Stopped | ObservedState::Gone => self.spawn(spec),
        }
    }

    async fn stop(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.terminate(&sandbox.sandbox_id).await.map(|_| ())
    }

    async fn suspend(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        let (state, pid, spec) = self.entry_state(&sandbox.sandbox_id)?;
        match (state, pid) {
            (ObservedState::Suspended, _) => Ok(()),
            (ObservedState::Running, Some(pid)) => {
                signal_group(pid, libc::SIGSTOP);
                self.set_state(&sandbox.sandbox_id, ObservedState::Suspended);
                self.observe(&spec, ObservedState::Suspended);
                Ok(())
            }
            _ => Err(ProviderError::Conflict(format!(
                "{} is not running",
                sandbox.sandbox_id
            ))),
        }
    }

    async fn resume(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        let (state, pid, spec) = self.entry_state(&sandbox.sandbox_id)?;
        match (state, pid) {
            (ObservedState::Running, _) => Ok(()),
            (ObservedState::Suspended, Some(pid)) => {
                signal_group(pid, libc::SIGCONT);
                self.set_state(&sandbox.sandbox_id, ObservedState::Running);
                self.observe(&spec, ObservedState::Running);
                Ok(())
            }
            _ => Err(ProviderError::Conflict(format!(
                "{} is not suspended",
                sandbox.sandbox_id
            ))),
        }
    }

    async fn destroy(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        match self.terminate(&sandbox.sandbox_id).await {
            Ok(_) => {}
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let removed = self.sandboxes.lock().unwrap().remove(&sandbox.sandbox_id);
        let _ = std::fs::remove_dir_all(self.sandbox_dir(&sandbox.sandbox_id));
        if let Some(uid) = removed.as_ref().and_then(|e| e.uid) {
            self.uids.lock().unwrap().give_back(uid);
        }
        if let Some(e) = removed {
            self.observe(&e.spec, ObservedState::Gone);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
        let map = self.sandboxes.lock().unwrap();
        let at = now_ms();
        let mut out: Vec<Observation> = map
            .values()
            .map(|e| Observation {
                sandbox: SandboxRef {
                    sandbox_id: e.spec.sandbox_id.clone(),
                    tenant: e.spec.tenant.clone(),
                    provider_id: provider_id(&e.spec.sandbox_id),
                },
                state: e.state,
                at,
            })
            .collect();
        out.sort_by(|a, b| a.sandbox.sandbox_id.cmp(&b.sandbox.sandbox_id));
        Ok(out)
    }

    async fn shutdown(&self) {
        let ids: Vec<String> = self.sandboxes.lock().unwrap().keys().cloned().collect();
        let stops = ids.iter().map(|id| self.terminate(id));
        futures::future::join_all(stops).await;
    }
}
