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


/// The `[provider.docker]` table. Every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The engine: `unix:///path`, `tcp://host:port` or `http://host:port`. Default: `DOCKER_HOST`,
    /// else the local socket.
    #[serde(default)]
    pub host: Option<String>,
    /// The sandbox image. Default: `shoal-sandbox:<digest of the agent binary>`. Built from
    /// `agent_bin` when the engine does not have it.
    #[serde(default)]
    pub image: Option<String>,
    /// The `shoal-agent` binary the image is built from. Default: beside the `shoal` binary.
    #[serde(default)]
    pub agent_bin: Option<PathBuf>,
    /// A static busybox for the image's shell and tools. Default: `busybox` on the `PATH`, else the
    /// host's `/bin/sh` and a few coreutils with their libraries.
    #[serde(default)]
    pub busybox: Option<PathBuf>,
    /// Prefix of container and network names and value of the `shoal.namespace` label: one per
    /// Shoal deployment sharing an engine.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Run `docker-init` as PID 1 to reap the agent's orphans.
    #[serde(default = "default_true")]
    pub init: bool,
    /// Tenant networks with no route out of the host (`--internal`); the scheduler stays reachable
    /// through the gateway.
    #[serde(default)]
    pub internal: bool,
    /// Most processes a sandbox may run.
    #[serde(default = "default_pids_limit")]
    pub pids_limit: i64,
    /// How long a stopping container may take before it is killed.
    #[serde(
        default = "default_stop_grace",
        with = "crate::common::duration"
    )]
    pub stop_grace: Duration,
    /// The timeout of one engine request.
    #[serde(
        default = "default_request_timeout",
        with = "crate::common::duration"
    )]
    pub request_timeout: Duration,
    /// Extra environment for the agent, besides what Shoal sets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Stop the namespace's containers when the scheduler shuts down.
    #[serde(default = "default_true")]
    pub stop_on_shutdown: bool,
}

fn default_namespace() -> String {
    "shoal".into()
}
fn default_true() -> bool {
    true
}
fn default_pids_limit() -> i64 {
    1024
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            image: None,
            agent_bin: None,
            busybox: None,
            namespace: default_namespace(),
            init: true,
            internal: false,
            pids_limit: default_pids_limit(),
            stop_grace: default_stop_grace(),
            request_timeout: default_request_timeout(),
            env: BTreeMap::new(),
            stop_on_shutdown: true,
        }
    }
}

impl DockerConfig {
    /// Every problem with the settings, as `key: problem`.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        let ns_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 40
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && self
                .namespace
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric());
        if !ns_ok {
            errs.push(format!(
                "namespace: `{}` must be 1 to 40 letters, digits, `-` or `_`, starting with a letter or digit",
                self.namespace
            ));
        }
        if let Some(image) = &self.image
            && (image.is_empty() || image.chars().any(|c| c.is_whitespace()))
        {
            errs.push(format!("image: `{image}` is not an image name"));
        }
        if let Some(h) = &self.host
            && !["unix://", "tcp://", "http://", "https://"]
                .iter()
                .any(|p| h.starts_with(p))
        {
            errs.push(format!(
                "host: `{h}` is not a unix://, tcp:// or http(s):// address"
            ));
        }
        if self.pids_limit < 16 {
            errs.push(format!(
                "pids_limit: {} leaves no room for the agent and its jobs (at least 16)",
                self.pids_limit
            ));
        }
        if self.stop_grace > Duration::from_secs(600) {
            errs.push("stop_grace: at most 10m".into());
        }
        if self.request_timeout < Duration::from_secs(1) {
            errs.push("request_timeout: at least 1s".into());
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') {
                errs.push(format!("env: `{k}` is not a variable name"));
            }
        }
        errs
    }
}

/// Why the docker provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("invalid [provider.docker] settings: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("cannot connect to the Docker engine: {0}")]
    Connect(String),
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



/// A Docker object name made from `prefix` and a Shoal name: characters Docker does not allow
/// become `-`, and a name that had to change gets a short digest so two never collide.
pub fn object_name(prefix: &str, raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean == raw && !raw.is_empty() {
        format!("{prefix}-{raw}")
    } else {
        use sha2::Digest;
        let d = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
        format!("{prefix}-{clean}-{}", &d[..8])
    }
}

/// The container name of a sandbox.
pub fn container_name(namespace: &str, sandbox_id: &str) -> String {
    object_name(namespace, sandbox_id)
}

/// The network name of a tenant.
pub fn network_name(namespace: &str, tenant: &str) -> String {
    object_name(&format!("{namespace}-tenant"), tenant)
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

fn event_state(action: &str) -> Option<ObservedState> {
    match action {
        "start" | "unpause" => Some(ObservedState::Running),
        "pause" => Some(ObservedState::Suspended),
        "die" => Some(ObservedState::Stopped),
        "destroy" => Some(ObservedState::Gone),
        _ => None,
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

/// A tenant network and where its containers reach the host.
#[derive(Debug, Clone)]
struct Net {
    name: String,
    gateway: IpAddr,
}

struct Relay {
    url: String,
    task: Option<tokio::task::JoinHandle<()>>,
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

/// How long building the sandbox image took, and what it holds.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    pub image: String,
    pub elapsed: Duration,
    pub rootfs_bytes: usize,
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

    /// Removes every container of the namespace whose sandbox `known` does not recognise (the
    /// store's live sandboxes); returns what was removed.
    pub async fn collect_unknown(
        &self,
        known: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<SandboxRef>, ProviderError> {
        let mut collected = Vec::new();
        for o in self.inner.list().await? {
            if !known(&o.sandbox.sandbox_id) {
                tracing::info!(container = %o.sandbox.provider_id, sandbox = %o.sandbox.sandbox_id, "collecting a container the store does not know");
                self.inner.destroy(&o.sandbox).await?;
                collected.push(o.sandbox);
            }
        }
        Ok(collected)
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

/// Follows the namespace's container events until the provider is dropped (which aborts this
/// task), reconnecting from the last event seen.
async fn follow(inner: Arc<Inner>) {
    let mut since_secs = inner.started_nanos / 1_000_000_000;
    let mut last: Option<(i64, String, String)> = None;
    loop {
        let docker = match inner.client().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "docker: the engine does not answer; will retry");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_NAMESPACE}={}", inner.cfg.namespace)],
        );
        let mut stream = docker.events(Some(EventsOptions {
            since: Some(since_secs.to_string()),
            until: None,
            filters: Some(filters),
        }));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(m) => {
                    let nanos = m.time_nano.unwrap_or(0);
                    let key = (
                        nanos,
                        m.actor
                            .as_ref()
                            .and_then(|a| a.id.clone())
                            .unwrap_or_default(),
                        m.action.clone().unwrap_or_default(),
                    );
                    // A reconnect replays the last second: skip what was already handled.
                    if last.as_ref().is_some_and(|l| key <= *l) {
                        continue;
                    }
                    since_secs = nanos / 1_000_000_000;
                    last = Some(key);
                    inner.on_event(&m);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "docker: the event stream broke; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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

    fn on_event(&self, m: &bollard::models::EventMessage) {
        let Some(actor) = &m.actor else { return };
        let Some(attrs) = &actor.attributes else {
            return;
        };
        let (Some(sandbox), Some(tenant), Some(id)) = (
            attrs.get(LABEL_SANDBOX),
            attrs.get(LABEL_TENANT),
            actor.id.as_ref(),
        ) else {
            return;
        };
        let nanos = m
            .time_nano
            .unwrap_or_else(|| m.time.unwrap_or(0) * 1_000_000_000);
        if nanos < self.started_nanos {
            return;
        }
        let action = m.action.as_deref().unwrap_or_default();
        if action == "oom" {
            let n = {
                let mut book = self.book();
                let n = book.ooms.entry(sandbox.clone()).or_default();
                *n += 1;
                *n
            };
            tracing::warn!(%sandbox, %tenant, container = %id, kills = n, "docker: a process of the sandbox was killed for going over its memory limit");
            return;
        }
        let Some(state) = event_state(action) else {
            return;
        };
        {
            let mut book = self.book();
            if state == ObservedState::Gone {
                book.seen.remove(id);
            } else {
                book.seen.insert(id.clone(), state);
            }
        }
        let _ = self.sink.send(Observation {
            sandbox: SandboxRef {
                sandbox_id: sandbox.clone(),
                tenant: tenant.clone(),
                provider_id: id.clone(),
            },
            state,
            at: nanos / 1_000_000,
        });
    }

    /// The image name in force: configured, else named for the agent binary's digest.
    async fn image_name(&self) -> Result<String, ProviderError> {
        if let Some(i) = &self.cfg.image {
            return Ok(i.clone());
        }
        let agent = self.agent_bin()?;
        let busybox = self.busybox();
        tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            use std::io::Read;
            let mut h = sha2::Sha256::new();
            let mut f = std::fs::File::open(&agent)
                .map_err(|e| ProviderError::Permanent(format!("{}: {e}", agent.display())))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| ProviderError::Permanent(e.to_string()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            h.update(if busybox.is_some() { b"bb" } else { b"sh" });
            Ok(format!(
                "shoal-sandbox:{}",
                &hex::encode(h.finalize())[..12]
            ))
        })
        .await
        .map_err(|e| ProviderError::Permanent(e.to_string()))?
    }

    fn agent_bin(&self) -> Result<PathBuf, ProviderError> {
        let p = self.cfg.agent_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
                .unwrap_or_else(|| PathBuf::from("shoal-agent"))
        });
        if p.is_file() {
            Ok(p)
        } else {
            Err(ProviderError::Permanent(format!(
                "the sandbox image is missing and cannot be built: no shoal-agent at {} (set [provider.docker] agent_bin or image)",
                p.display()
            )))
        }
    }

    fn busybox(&self) -> Option<PathBuf> {
        if let Some(b) = &self.cfg.busybox {
            return Some(b.clone());
        }
        which("busybox")
    }

    async fn image(&self) -> Result<String, ProviderError> {
        self.image
            .get_or_try_init(|| async {
                let name = self.image_name().await?;
                let d = self.client().await?;
                match d.inspect_image(&name).await {
                    Ok(_) => Ok(name),
                    Err(e) if status_of(&e) == Some(404) => {
                        let built = self.build_image(&name).await?;
                        tracing::info!(image = %built.image, elapsed = ?built.elapsed, "docker: built the sandbox image");
                        Ok(name)
                    }
                    Err(e) => Err(to_provider_error(e)),
                }
            })
            .await
            .cloned()
    }

    async fn build_image(&self, name: &str) -> Result<ImageBuild, ProviderError> {
        let started = Instant::now();
        let agent = self.agent_bin()?;
        let busybox = self.busybox();
        let tar = tokio::task::spawn_blocking(move || rootfs_tar(&agent, busybox.as_deref()))
            .await
            .map_err(|e| ProviderError::Permanent(e.to_string()))?
            .map_err(ProviderError::Permanent)?;
        let rootfs_bytes = tar.len();
        let (repo, tag) = split_image(name);
        let d = self.client().await?;
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            changes: vec![
                format!("ENTRYPOINT [\"{AGENT_PATH}\"]"),
                "WORKDIR /work".into(),
                "ENV PATH=/usr/local/bin:/usr/bin:/bin".into(),
                format!("LABEL {LABEL_IMAGE}=sandbox"),
            ],
            ..Default::default()
        };
        let mut stream = d.create_image(
            Some(opts),
            Some(bollard::body_full(bytes::Bytes::from(tar))),
            None,
        );
        while let Some(r) = stream.next().await {
            if let Err(e) = r {
                return Err(match e {
                    bollard::errors::Error::DockerStreamError { error } => {
                        ProviderError::Permanent(format!("importing the sandbox image: {error}"))
                    }
                    other => to_provider_error(other),
                });
            }
        }
        Ok(ImageBuild {
            image: name.to_string(),
            elapsed: started.elapsed(),
            rootfs_bytes,
        })
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

    /// The tenant's network, created if missing. The caller holds the tenant's lock.
    async fn ensure_network(&self, tenant: &str) -> Result<Net, ProviderError> {
        let d = self.client().await?;
        let name = network_name(&self.cfg.namespace, tenant);
        let inspect = |d: Docker, name: String| async move {
            d.inspect_network(&name, None::<InspectNetworkOptions>)
                .await
        };
        let found = match inspect(d.clone(), name.clone()).await {
            Ok(n) => n,
            Err(e) if status_of(&e) == Some(404) => {
                let mut labels = HashMap::new();
                labels.insert(LABEL_NAMESPACE.to_string(), self.cfg.namespace.clone());
                labels.insert(LABEL_TENANT.to_string(), tenant.to_string());
                let mut options = HashMap::new();
                options.insert(
                    "com.docker.network.bridge.enable_icc".to_string(),
                    "true".to_string(),
                );
                let req = NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some("bridge".into()),
                    internal: Some(self.cfg.internal),
                    labels: Some(labels),
                    options: Some(options),
                    ..Default::default()
                };
                match d.create_network(req).await {
                    Ok(_) => {}
                    Err(e) if status_of(&e) == Some(409) => {}
                    Err(e) => return Err(to_provider_error(e)),
                }
                inspect(d.clone(), name.clone())
                    .await
                    .map_err(to_provider_error)?
            }
            Err(e) => return Err(to_provider_error(e)),
        };
        let gateway = found
            .ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.iter().find_map(|c| c.gateway.clone()))
            .and_then(|g| g.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                ProviderError::Permanent(format!("network {name} has no gateway address"))
            })?;
        Ok(Net { name, gateway })
    }

    /// The URL the agent on `net` reaches the scheduler at: `url` itself unless it names the
    /// host's loopback, else the network's gateway, relayed to the loopback when needed.
    async fn agent_url(&self, net: &Net, url: &str) -> Result<String, ProviderError> {
        let Some(parsed) = ParsedUrl::parse(url) else {
            return Ok(url.to_string());
        };
        if !parsed.is_local() {
            return Ok(url.to_string());
        }
        if let Some(r) = self.book().relays.get(&net.name) {
            return Ok(r.url.clone());
        }
        let gw = match net.gateway {
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        };
        let agent_url = format!("{}://{gw}:{}{}", parsed.scheme, parsed.port, parsed.path);
        let target = parsed.target();
        let task =
            match tokio::net::TcpListener::bind(SocketAddr::new(net.gateway, parsed.port)).await {
                Ok(listener) => Some(tokio::spawn(relay(listener, target))),
                // The scheduler (on 0.0.0.0) already answers on the gateway.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
                Err(e) => {
                    return Err(ProviderError::Permanent(format!(
                        "cannot listen on {gw}:{} to relay sandboxes to the scheduler: {e}",
                        parsed.port
                    )));
                }
            };
        tracing::info!(network = %net.name, url = %agent_url, relayed = task.is_some(), "docker: sandboxes reach the scheduler through their network's gateway");
        self.book().relays.insert(
            net.name.clone(),
            Relay {
                url: agent_url.clone(),
                task,
            },
        );
        Ok(agent_url)
    }

    fn drop_relay(&self, network: &str) {
        if let Some(r) = self.book().relays.remove(network)
            && let Some(t) = r.task
        {
            t.abort();
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
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

/// Accepts agents' connections on the gateway and pipes each to the scheduler.
async fn relay(listener: tokio::net::TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(&target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "docker relay: the scheduler does not answer")
                }
            }
        });
    }
}

/// The parts of an http(s) URL the relay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParsedUrl {
    scheme: String,
    host: String,
    port: u16,
    /// Everything after the authority, from its `/` (may be empty).
    path: String,
}

impl ParsedUrl {
    fn parse(url: &str) -> Option<ParsedUrl> {
        let (scheme, rest) = url.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), default_port),
            }
        };
        Some(ParsedUrl {
            scheme: scheme.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }

    /// Whether a container could not reach this host as named: the host's loopback.
    fn is_local(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<IpAddr>()
                .is_ok_and(|a| a.is_loopback() || a.is_unspecified())
    }

    /// Where the relay connects on the host.
    fn target(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() => format!("127.0.0.1:{}", self.port),
            Ok(IpAddr::V6(a)) => format!("[{a}]:{}", self.port),
            Ok(a) => format!("{a}:{}", self.port),
            Err(_) => format!("127.0.0.1:{}", self.port),
        }
    }
}

/// `name:tag` split at the tag's colon (a registry's port is not a tag).
fn split_image(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

/// An executable on the `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The shared libraries and loader `bin` needs, as `ldd` lists them (none for a static binary).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("running ldd on {}: {e}", bin.display()))?;
    // `ldd` fails on a static binary ("not a dynamic executable"): nothing to add.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        for word in line.split_whitespace() {
            if word.starts_with('/') {
                let p = PathBuf::from(word);
                if p.exists() && !libs.contains(&p) {
                    libs.push(p);
                }
            }
        }
    }
    Ok(libs)
}

/// The tools copied from the host when there is no busybox.
const HOST_TOOLS: [&str; 22] = [
    "cat", "echo", "ls", "sleep", "head", "tail", "env", "true", "false", "mkdir", "rm", "cp",
    "mv", "wc", "grep", "sed", "id", "dd", "yes", "printf", "uname", "touch",
];

struct RootFs {
    tar: tar::Builder<Vec<u8>>,
    dirs: BTreeSet<String>,
    files: BTreeSet<String>,
}

impl RootFs {
    fn new() -> Self {
        RootFs {
            tar: tar::Builder::new(Vec::new()),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<(), String> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut h, format!("{path}/"), std::io::empty())
            .map_err(|e| e.to_string())?;
        self.dirs.insert(path.to_string());
        Ok(())
    }

    fn parent(&mut self, path: &str) -> Result<(), String> {
        match path.trim_start_matches('/').rsplit_once('/') {
            Some((parent, _)) => self.dir(parent, 0o755),
            None => Ok(()),
        }
    }

    fn data(&mut self, path: &str, mode: u32, bytes: &[u8]) -> Result<(), String> {
        let rel = path.trim_start_matches('/').to_string();
        if self.files.contains(&rel) {
            return Ok(());
        }
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, bytes.len() as u64);
        self.tar
            .append_data(&mut h, &rel, bytes)
            .map_err(|e| e.to_string())?;
        self.files.insert(rel);
        Ok(())
    }

    /// Copies a host file (following links) to `dest`.
    fn host_file(&mut self, src: &Path, dest: &str) -> Result<(), String> {
        let bytes = std::fs::read(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(src)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        self.data(dest, mode, &bytes)
    }

    /// Copies a host program and the libraries it links, each at its own path.
    fn program(&mut self, src: &Path, dest: &str) -> Result<(), String> {
        self.host_file(src, dest)?;
        for lib in libraries(src)? {
            let p = lib.to_string_lossy().into_owned();
            self.host_file(&lib, &p)?;
        }
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), String> {
        let rel = path.trim_start_matches('/').to_string();
        if self.files.contains(&rel) {
            return Ok(());
        }
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, &rel, target)
            .map_err(|e| e.to_string())?;
        self.files.insert(rel);
        Ok(())
    }
}

/// The sandbox image's root filesystem as a tar: the agent, a shell and tools, their libraries.
pub fn rootfs_tar(agent: &Path, busybox: Option<&Path>) -> Result<Vec<u8>, String> {
    let mut fs = RootFs::new();
    for d in [
        "bin",
        "usr/bin",
        "usr/local/bin",
        "etc",
        "work",
        "root",
        "proc",
        "sys",
        "dev",
    ] {
        fs.dir(d, 0o755)?;
    }
    fs.dir("tmp", 0o1777)?;
    fs.program(agent, AGENT_PATH)?;
    match busybox {
        Some(bb) => {
            fs.program(bb, "/bin/busybox")?;
            let out = std::process::Command::new(bb)
                .arg("--list")
                .output()
                .map_err(|e| format!("running {} --list: {e}", bb.display()))?;
            for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if applet != "busybox" {
                    fs.symlink(&format!("/bin/{applet}"), "busybox")?;
                }
            }
        }
        None => {
            let sh = std::fs::canonicalize("/bin/sh")
                .map_err(|e| format!("no busybox, and no /bin/sh to copy: {e}"))?;
            fs.program(&sh, "/bin/sh")?;
            for tool in HOST_TOOLS {
                if let Some(p) = which(tool) {
                    let p = std::fs::canonicalize(&p).unwrap_or(p);
                    fs.program(&p, &format!("/bin/{tool}"))?;
                }
            }
        }
    }
    fs.data(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs.data("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    fs.tar.into_inner().map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_table_parses_with_defaults() {
        let c: DockerConfig = toml::from_str("namespace = \"ci\"\nstop_grace = \"3s\"\n").unwrap();
        assert_eq!(c.namespace, "ci");
        assert_eq!(c.stop_grace, Duration::from_secs(3));
        assert!(c.init && c.stop_on_shutdown && !c.internal);
        assert!(c.validate().is_empty());
        assert!(toml::from_str::<DockerConfig>("nope = 1").is_err());
    }

    #[test]
    fn validation_lists_every_problem() {
        let c = DockerConfig {
            namespace: "bad name".into(),
            image: Some("a b".into()),
            host: Some("ftp://x".into()),
            pids_limit: 1,
            ..Default::default()
        };
        let errs = c.validate();
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn names_are_valid_docker_names_and_never_collide() {
        assert_eq!(container_name("shoal", "sb_01ab"), "shoal-sb_01ab");
        let a = network_name("shoal", "acme corp");
        let b = network_name("shoal", "acme/corp");
        assert!(a.starts_with("shoal-tenant-acme-corp-"));
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn loopback_urls_are_relayed_through_the_gateway() {
        let u = ParsedUrl::parse("http://127.0.0.1:8080/base").unwrap();
        assert!(u.is_local());
        assert_eq!((u.port, u.path.as_str()), (8080, "/base"));
        assert_eq!(u.target(), "127.0.0.1:8080");
        let u = ParsedUrl::parse("http://0.0.0.0:9").unwrap();
        assert_eq!(u.target(), "127.0.0.1:9");
        assert!(ParsedUrl::parse("http://localhost").unwrap().is_local());
        assert_eq!(ParsedUrl::parse("https://[::1]/").unwrap().port, 443);
        assert!(
            !ParsedUrl::parse("https://shoal.example.com:8443")
                .unwrap()
                .is_local()
        );
        assert!(ParsedUrl::parse("shoal.example.com").is_none());
    }

    #[test]
    fn image_names_split_at_the_tag() {
        assert_eq!(split_image("shoal-sandbox:abc"), ("shoal-sandbox", "abc"));
        assert_eq!(
            split_image("registry:5000/shoal"),
            ("registry:5000/shoal", "latest")
        );
        assert_eq!(split_image("plain"), ("plain", "latest"));
    }

    #[test]
    fn engine_events_map_to_states() {
        assert_eq!(event_state("start"), Some(ObservedState::Running));
        assert_eq!(event_state("unpause"), Some(ObservedState::Running));
        assert_eq!(event_state("pause"), Some(ObservedState::Suspended));
        assert_eq!(event_state("die"), Some(ObservedState::Stopped));
        assert_eq!(event_state("destroy"), Some(ObservedState::Gone));
        assert_eq!(event_state("exec_start"), None);
    }

    #[test]
    fn the_root_filesystem_holds_the_agent_a_shell_and_their_libraries() {
        // Any dynamically linked program stands in for the agent.
        let agent = std::fs::canonicalize("/bin/sh").unwrap();
        let tar = rootfs_tar(&agent, None).unwrap();
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(tar.as_slice());
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        for want in ["usr/local/bin/shoal-agent", "bin/sh", "tmp/", "etc/passwd"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            names
                .iter()
                .any(|n| n.contains("ld-linux") || n.contains("ld-musl")),
            "no dynamic loader: {names:?}"
        );
    }
}
