//! The `docker` provider: one container per sandbox on a Docker engine, driven through bollard.
//!
//! - **Image.** Sandboxes run an image made on this machine from our own `shoal-agent` binary: a
//!   root filesystem holding the agent, a shell and basic tools (busybox when it is installed, else
//!   the host's `/bin/sh` and a few coreutils), the shared libraries they link and the dynamic
//!   loader, imported with `docker import` semantics. Nothing is pulled. The provider builds the
//!   image when it is missing; `deploy/docker/build-image.sh` builds the same by hand.
//! - **Containers.** Named `<namespace>-<sandbox>`, labelled `shoal.namespace`, `shoal.tenant`,
//!   `shoal.pool` and `shoal.sandbox`; CPU (`NanoCpus`) and memory (no swap) limits from the
//!   pool's sandbox size; a pids limit; `docker-init` as PID 1 so the agent's orphans are reaped.
//! - **Isolation.** Each tenant has its own bridge network (`<namespace>-tenant-<tenant>`); Docker's
//!   isolation rules drop traffic between bridges, so one tenant's containers cannot reach
//!   another's. A network is removed once no container of its tenant is left.
//! - **The scheduler's URL.** A container cannot reach the host's loopback. When the advertised URL
//!   is a loopback one, the provider listens on the tenant network's gateway address (same port)
//!   and relays to the scheduler; the agent is given the gateway URL. When the port is already
//!   taken there (a scheduler listening on `0.0.0.0`), the scheduler answers itself.
//! - **Lifecycle.** Create is create + start; suspend / resume are pause / unpause; stop / start,
//!   remove. Every call is idempotent. Observations come from the engine's event stream, timed by
//!   the engine's own `timeNano`; `list` answers from a label-filtered container list, so
//!   containers the store does not know are found and collected by label.
//! - **Memory.** A job that goes over the sandbox's memory is killed by the kernel inside the
//!   container's cgroup; the engine's `oom` event is logged and counted per sandbox
//!   ([`DockerProvider::oom_kills`]), and the agent reports the job killed by signal 9.

pub use bollard;

mod config;
mod events;
mod image;
mod relay;
#[cfg(test)]
mod tests;

pub use config::*;
use events::*;
pub use image::*;
use relay::*;

use crate::common::{now_ms, now_nanos};
use crate::{
    Capabilities, Observation, ObservationSink, ObservedState, Provider, ProviderError, SandboxRef,
    SandboxSpec,
};
use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, InspectContainerOptions,
    InspectNetworkOptions, ListContainersOptions, RemoveContainerOptions, RemoveImageOptions,
    StopContainerOptions,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Label naming the Shoal deployment a resource belongs to; `list` and collection look only here.
pub const LABEL_NAMESPACE: &str = "shoal.namespace";
/// Label naming the tenant.
pub const LABEL_TENANT: &str = "shoal.tenant";
/// Label naming the pool.
pub const LABEL_POOL: &str = "shoal.pool";
/// Label naming the sandbox; a container without it is not Shoal's.
pub const LABEL_SANDBOX: &str = "shoal.sandbox";
/// Label on images this provider built.
pub const LABEL_IMAGE: &str = "shoal.image";

/// Where the agent sits in the image.
pub const AGENT_PATH: &str = "/usr/local/bin/shoal-agent";

/// Why the docker provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The `[provider.docker]` table has these mistakes.
    #[error("invalid [provider.docker] settings: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The Docker engine could not be reached.
    #[error("cannot connect to the Docker engine: {0}")]
    Connect(String),
    /// Built outside a tokio runtime.
    #[error("the docker provider must be built inside a tokio runtime")]
    NoRuntime,
}

fn to_provider_error(e: bollard::errors::Error) -> ProviderError {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => ProviderError::NotFound(message),
            409 => ProviderError::Conflict(message),
            429 => ProviderError::RateLimited { retry_after: None },
            500..=599 => ProviderError::Transient(format!("engine {status_code}: {message}")),
            _ => ProviderError::Permanent(format!("engine {status_code}: {message}")),
        },
        E::JsonDataError { .. } | E::JsonSerdeError { .. } | E::APIVersionParseError {} => {
            ProviderError::Permanent(format!("engine answer not understood: {e}"))
        }
        // Connection-level trouble: a dropped socket, a timeout, an engine restarting.
        other => ProviderError::Transient(other.to_string()),
    }
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn summary_state(s: &bollard::models::ContainerSummaryStateEnum) -> Option<ObservedState> {
    use bollard::models::ContainerSummaryStateEnum as S;
    match s {
        S::RUNNING | S::RESTARTING => Some(ObservedState::Running),
        S::PAUSED => Some(ObservedState::Suspended),
        S::CREATED | S::EXITED | S::DEAD | S::STOPPING => Some(ObservedState::Stopped),
        S::REMOVING | S::EMPTY => None,
    }
}

/// A container's state as inspect tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    Running,
    Paused,
    Stopped,
}

fn live_state(c: &bollard::models::ContainerInspectResponse) -> Live {
    let st = c.state.as_ref();
    if st.and_then(|s| s.paused).unwrap_or(false) {
        Live::Paused
    } else if st.and_then(|s| s.running).unwrap_or(false) {
        Live::Running
    } else {
        Live::Stopped
    }
}

#[derive(Default)]
struct Book {
    /// The last state the event stream reported, per container id.
    seen: HashMap<String, ObservedState>,
    /// Memory kills the engine reported, per sandbox.
    ooms: HashMap<String, u32>,
    /// One relay per tenant network whose containers reach a loopback scheduler.
    relays: HashMap<String, Relay>,
}

struct Inner {
    cfg: DockerConfig,
    base: Docker,
    client: tokio::sync::OnceCell<Docker>,
    image: tokio::sync::OnceCell<String>,
    sink: ObservationSink,
    book: Mutex<Book>,
    /// One create at a time per sandbox, so two concurrent creates make one container.
    creating: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Network changes (create, connect a container, remove) one at a time per tenant.
    tenants: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Events before this instant belong to an earlier life of the scheduler.
    started_nanos: i64,
}

/// The `docker` provider. See the module documentation.
pub struct DockerProvider {
    inner: Arc<Inner>,
    follower: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DockerProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerProvider")
            .field("namespace", &self.inner.cfg.namespace)
            .finish()
    }
}

fn connect(cfg: &DockerConfig) -> Result<Docker, DockerError> {
    let secs = cfg.request_timeout.as_secs().max(1);
    let host = cfg
        .host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()));
    let r = match host {
        None => Docker::connect_with_local_defaults(),
        Some(h) if h.starts_with("unix://") => Docker::connect_with_unix(
            h.trim_start_matches("unix://"),
            secs,
            bollard::API_DEFAULT_VERSION,
        ),
        Some(h) => Docker::connect_with_http(&h, secs, bollard::API_DEFAULT_VERSION),
    };
    r.map_err(|e| DockerError::Connect(e.to_string()))
}

impl DockerProvider {
    /// Builds the provider and starts following the engine's events; call inside a tokio runtime.
    /// The engine is first spoken to by the follower and the first call, so a scheduler starts
    /// even while the engine is briefly away.
    pub fn new(cfg: DockerConfig, sink: ObservationSink) -> Result<DockerProvider, DockerError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(DockerError::Config(problems));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DockerError::NoRuntime)?;
        let base = connect(&cfg)?;
        let inner = Arc::new(Inner {
            cfg,
            base,
            client: tokio::sync::OnceCell::new(),
            image: tokio::sync::OnceCell::new(),
            sink,
            book: Mutex::new(Book::default()),
            creating: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
            started_nanos: now_nanos(),
        });
        let follower = runtime.spawn(follow(inner.clone()));
        Ok(DockerProvider { inner, follower })
    }

    /// The settings in force.
    pub fn config(&self) -> &DockerConfig {
        &self.inner.cfg
    }

    /// The engine client, its API version agreed with the engine.
    pub async fn client(&self) -> Result<Docker, ProviderError> {
        self.inner.client().await
    }

    /// Answers when the engine does: its version.
    pub async fn ping(&self) -> Result<String, ProviderError> {
        let d = self.inner.client().await?;
        let v = d.version().await.map_err(to_provider_error)?;
        Ok(v.version.unwrap_or_default())
    }

    /// The sandbox image's name, built first if the engine does not have it.
    pub async fn ensure_image(&self) -> Result<String, ProviderError> {
        self.inner.image().await
    }

    /// Builds the sandbox image now, whether or not the engine has it, and says how long it took.
    pub async fn build_image(&self) -> Result<ImageBuild, ProviderError> {
        let name = self.inner.image_name().await?;
        self.inner.build_image(&name).await
    }

    /// How many times the kernel killed a process of this sandbox for going over its memory.
    pub fn oom_kills(&self, sandbox_id: &str) -> u32 {
        self.inner.book().ooms.get(sandbox_id).copied().unwrap_or(0)
    }

    /// The URL the agents of `tenant` are given for `scheduler_url` (after its network exists).
    pub async fn agent_url(
        &self,
        tenant: &str,
        scheduler_url: &str,
    ) -> Result<String, ProviderError> {
        let lock = self.inner.tenant_lock(tenant);
        let _held = lock.lock().await;
        let net = self.inner.ensure_network(tenant).await?;
        self.inner.agent_url(&net, scheduler_url).await
    }

    /// Removes every container and network of the namespace (for tests and `shoal` clean-ups).
    pub async fn purge(&self) -> Result<usize, ProviderError> {
        let all = self.inner.list().await?;
        let n = all.len();
        for o in all {
            self.inner.destroy(&o.sandbox).await?;
        }
        let d = self.inner.client().await?;
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_NAMESPACE}={}", self.inner.cfg.namespace)],
        );
        let nets = d
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(to_provider_error)?;
        for n in nets {
            if let Some(name) = n.name {
                self.inner.drop_relay(&name);
                match d.remove_network(&name).await {
                    Ok(()) => {}
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => return Err(to_provider_error(e)),
                }
            }
        }
        Ok(n)
    }

    /// Removes the sandbox image (for tests); absent is fine.
    pub async fn remove_image(&self) -> Result<(), ProviderError> {
        let name = self.inner.image_name().await?;
        let d = self.inner.client().await?;
        match d
            .remove_image(
                &name,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(to_provider_error(e)),
        }
    }
}

impl Drop for DockerProvider {
    fn drop(&mut self) {
        self.follower.abort();
        for (_, r) in self.inner.book().relays.drain() {
            if let Some(t) = r.task {
                t.abort();
            }
        }
    }
}

impl Inner {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sandbox_lock(&self, sandbox_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.creating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(sandbox_id.to_string())
            .or_default()
            .clone()
    }

    fn tenant_lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_string())
            .or_default()
            .clone()
    }

    async fn client(&self) -> Result<Docker, ProviderError> {
        self.client
            .get_or_try_init(|| async {
                self.base
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(to_provider_error)
            })
            .await
            .cloned()
    }

    async fn inspect(
        &self,
        name: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, ProviderError> {
        let d = self.client().await?;
        d.inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(to_provider_error)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        crate::common::note_regions_ignored("docker", spec);
        let lock = self.sandbox_lock(&spec.sandbox_id);
        let _held = lock.lock().await;
        let d = self.client().await?;
        let image = self.image().await?;
        let name = container_name(&self.cfg.namespace, &spec.sandbox_id);
        let id = match self.inspect(&name).await {
            Ok(c) => {
                let id = c.id.clone().unwrap_or_default();
                if live_state(&c) == Live::Stopped {
                    self.start_id(&id).await?;
                }
                return Ok(id);
            }
            Err(ProviderError::NotFound(_)) => {
                let tlock = self.tenant_lock(&spec.tenant);
                let _tenant = tlock.lock().await;
                let net = self.ensure_network(&spec.tenant).await?;
                let url = self.agent_url(&net, &spec.scheduler_url).await?;
                let body = self.container_body(spec, &image, &net, &url);
                match d
                    .create_container(
                        Some(CreateContainerOptions {
                            name: Some(name.clone()),
                            ..Default::default()
                        }),
                        body,
                    )
                    .await
                {
                    Ok(r) => r.id,
                    Err(e) if status_of(&e) == Some(409) => {
                        self.inspect(&name).await?.id.unwrap_or_default()
                    }
                    Err(e) => return Err(to_provider_error(e)),
                }
            }
            Err(e) => return Err(e),
        };
        self.start_id(&id).await?;
        Ok(id)
    }

    fn container_body(
        &self,
        spec: &SandboxSpec,
        image: &str,
        net: &Net,
        url: &str,
    ) -> ContainerCreateBody {
        let mut env: Vec<String> = spec
            .agent_env()
            .into_iter()
            .map(|(k, v)| {
                if k == shoal_protocol::env::URL {
                    format!("{k}={url}")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        env.extend(self.cfg.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut labels = HashMap::new();
        labels.insert(LABEL_NAMESPACE.to_string(), self.cfg.namespace.clone());
        labels.insert(LABEL_TENANT.to_string(), spec.tenant.clone());
        labels.insert(LABEL_POOL.to_string(), spec.pool.clone());
        labels.insert(LABEL_SANDBOX.to_string(), spec.sandbox_id.clone());
        let memory = (spec.size.memory_mb as i64) * 1024 * 1024;
        let hostname: String = spec
            .sandbox_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(63)
            .collect();
        ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(env),
            labels: Some(labels),
            hostname: Some(hostname),
            working_dir: Some("/work".into()),
            host_config: Some(HostConfig {
                nano_cpus: Some((spec.size.cpus * 1e9).round() as i64),
                memory: Some(memory),
                memory_swap: Some(memory),
                pids_limit: Some(self.cfg.pids_limit),
                init: Some(self.cfg.init),
                network_mode: Some(net.name.clone()),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn start_id(&self, id: &str) -> Result<(), ProviderError> {
        let d = self.client().await?;
        match d.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(to_provider_error(e)),
        }
    }

    async fn unpause(&self, id: &str) -> Result<(), ProviderError> {
        let d = self.client().await?;
        d.unpause_container(id).await.map_err(to_provider_error)
    }

    /// The container of a sandbox: by its id, else by its name (a provider id the store lost).
    async fn find(
        &self,
        s: &SandboxRef,
    ) -> Result<bollard::models::ContainerInspectResponse, ProviderError> {
        if !s.provider_id.is_empty() {
            match self.inspect(&s.provider_id).await {
                Err(ProviderError::NotFound(_)) => {}
                other => return other,
            }
        }
        self.inspect(&container_name(&self.cfg.namespace, &s.sandbox_id))
            .await
    }

    async fn start(&self, s: &SandboxRef) -> Result<(), ProviderError> {
        let c = self.find(s).await?;
        let id = c.id.clone().unwrap_or_default();
        match live_state(&c) {
            Live::Running => Ok(()),
            Live::Paused => self.unpause(&id).await,
            Live::Stopped => self.start_id(&id).await,
        }
    }

    async fn stop(&self, s: &SandboxRef) -> Result<(), ProviderError> {
        let c = self.find(s).await?;
        let id = c.id.clone().unwrap_or_default();
        match live_state(&c) {
            Live::Stopped => return Ok(()),
            // A frozen agent cannot take its SIGTERM: thaw it first.
            Live::Paused => self.unpause(&id).await?,
            Live::Running => {}
        }
        let d = self.client().await?;
        let t = self.cfg.stop_grace.as_secs().min(i32::MAX as u64) as i32;
        match d
            .stop_container(
                &id,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(to_provider_error(e)),
        }
    }

    async fn suspend(&self, s: &SandboxRef) -> Result<(), ProviderError> {
        let c = self.find(s).await?;
        let id = c.id.clone().unwrap_or_default();
        match live_state(&c) {
            Live::Paused => Ok(()),
            Live::Running => {
                let d = self.client().await?;
                d.pause_container(&id).await.map_err(to_provider_error)
            }
            Live::Stopped => Err(ProviderError::Conflict(format!(
                "{} is not running",
                s.sandbox_id
            ))),
        }
    }

    async fn resume(&self, s: &SandboxRef) -> Result<(), ProviderError> {
        let c = self.find(s).await?;
        let id = c.id.clone().unwrap_or_default();
        match live_state(&c) {
            Live::Running => Ok(()),
            Live::Paused => self.unpause(&id).await,
            Live::Stopped => Err(ProviderError::Conflict(format!(
                "{} is not suspended",
                s.sandbox_id
            ))),
        }
    }

    async fn destroy(&self, s: &SandboxRef) -> Result<(), ProviderError> {
        let c = match self.find(s).await {
            Ok(c) => c,
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let id = c.id.clone().unwrap_or_default();
        let d = self.client().await?;
        match d
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    link: false,
                }),
            )
            .await
        {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(to_provider_error(e)),
        }
        let tenant = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_TENANT).cloned())
            .unwrap_or_else(|| s.tenant.clone());
        self.remove_network_if_empty(&tenant).await;
        Ok(())
    }

    /// Removes the tenant's network once no container of the tenant is left on it.
    async fn remove_network_if_empty(&self, tenant: &str) {
        let lock = self.tenant_lock(tenant);
        let _held = lock.lock().await;
        let Ok(d) = self.client().await else { return };
        let name = network_name(&self.cfg.namespace, tenant);
        let mut filters = HashMap::new();
        filters.insert("network".to_string(), vec![name.clone()]);
        let left = d
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await;
        if !matches!(left, Ok(ref l) if l.is_empty()) {
            return;
        }
        self.drop_relay(&name);
        match d.remove_network(&name).await {
            Ok(()) => tracing::debug!(network = %name, "docker: removed an empty tenant network"),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => {
                tracing::debug!(network = %name, error = %e, "docker: keeping a tenant network")
            }
        }
    }

    async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
        let d = self.client().await?;
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_NAMESPACE}={}", self.cfg.namespace)],
        );
        let listed = d
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(to_provider_error)?;
        let at = now_ms();
        let mut out: Vec<Observation> = listed
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.as_ref()?;
                let state = summary_state(c.state.as_ref()?)?;
                Some(Observation {
                    sandbox: SandboxRef {
                        sandbox_id: labels.get(LABEL_SANDBOX)?.clone(),
                        tenant: labels.get(LABEL_TENANT).cloned().unwrap_or_default(),
                        provider_id: c.id.clone()?,
                    },
                    state,
                    at,
                })
            })
            .collect();
        out.sort_by(|a, b| a.sandbox.sandbox_id.cmp(&b.sandbox.sandbox_id));
        Ok(out)
    }

    async fn shutdown(&self) {
        if !self.cfg.stop_on_shutdown {
            return;
        }
        let Ok(all) = self.list().await else { return };
        let live: Vec<SandboxRef> = all
            .into_iter()
            .filter(|o| o.state != ObservedState::Stopped)
            .map(|o| o.sandbox)
            .collect();
        let stops = live.iter().map(|s| self.stop(s));
        for (s, r) in live.iter().zip(futures::future::join_all(stops).await) {
            if let Err(e) = r {
                tracing::warn!(sandbox = %s.sandbox_id, error = %e, "docker: stopping at shutdown failed");
            }
        }
        // Wait (briefly) for the event stream to report them stopped, so the scheduler's ledger
        // closes them with the engine's own times.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let pending = {
                let book = self.book();
                live.iter()
                    .any(|s| book.seen.get(&s.provider_id) != Some(&ObservedState::Stopped))
            };
            if !pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            suspend: true,
            stop: true,
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        self.inner.create(spec).await
    }

    async fn start(&self, sandbox: &SandboxRef, _spec: &SandboxSpec) -> Result<(), ProviderError> {
        self.inner.start(sandbox).await
    }

    async fn stop(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.stop(sandbox).await
    }

    async fn suspend(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.suspend(sandbox).await
    }

    async fn resume(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.resume(sandbox).await
    }

    async fn destroy(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.destroy(sandbox).await
    }

    async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
        self.inner.list().await
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}
