//! The `process` provider: each sandbox is a `shoal-agent` child process with its own working
//! directory under the data directory. Development only: it isolates nothing.
//!
//! Stop is SIGTERM to the agent's process group (SIGKILL after a grace period), suspend and resume
//! are SIGSTOP and SIGCONT. Agents are started with a parent-death signal, so a scheduler that
//! dies, even by SIGKILL, leaves no agent behind.

use crate::{
    Capabilities, Observation, ObservationSink, ObservedState, Provider, ProviderError, SandboxRef,
    SandboxSpec,
};
use async_trait::async_trait;
use shoal_core::Millis;
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
}

struct Entry {
    spec: SandboxSpec,
    state: ObservedState,
    pid: Option<i32>,
    /// Bumped by the watcher each time the current process exits.
    exited: watch::Receiver<u64>,
    generation: u64,
}

/// The process provider.
pub struct ProcessProvider {
    cfg: ProcessConfig,
    sink: ObservationSink,
    sandboxes: Arc<Mutex<HashMap<String, Entry>>>,
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

fn provider_id(sandbox_id: &str) -> String {
    format!("proc-{sandbox_id}")
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group the agent leads; it touches no
    // memory of ours.
    unsafe {
        libc::kill(-pid, sig);
    }
}

impl ProcessProvider {
    pub fn new(cfg: ProcessConfig, sink: ObservationSink) -> Self {
        ProcessProvider {
            cfg,
            sink,
            sandboxes: Arc::new(Mutex::new(HashMap::new())),
        }
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

    fn workdir(&self, sandbox_id: &str) -> PathBuf {
        self.cfg.root.join(sandbox_id)
    }

    /// Starts the agent process for `spec`; the caller holds no lock.
    fn spawn(&self, spec: &SandboxSpec) -> Result<(), ProviderError> {
        let dir = self.workdir(&spec.sandbox_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ProviderError::Permanent(format!("creating {}: {e}", dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(|e| ProviderError::Permanent(format!("agent log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| ProviderError::Permanent(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.agent_bin);
        cmd.current_dir(&dir)
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
            ProviderError::Permanent(format!("spawning {}: {e}", self.cfg.agent_bin.display()))
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
        signal_group(pid, libc::SIGTERM);
        let exited_in_time = tokio::time::timeout(self.cfg.stop_grace, async {
            let _ = exited.wait_for(|g| *g > 0).await;
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

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
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
        let _ = std::fs::remove_dir_all(self.workdir(&sandbox.sandbox_id));
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
