//! The `kubernetes` provider: one Pod per sandbox, in a namespace per tenant, through kube-rs.
//!
//! - A tenant's namespace (`<namespace_prefix><tenant>`) is made on its first sandbox, with a
//!   NetworkPolicy (no ingress; egress only to the scheduler, the cluster DNS and configured
//!   CIDRs) and a ResourceQuota mirroring the tenant's plan limits ([`TenantLimits`], given by
//!   [`KubernetesProvider::set_tenant_limits`], else `quota.default_max_sandboxes`).
//! - A sandbox is a Secret holding its agent token, an optional workspace PersistentVolumeClaim,
//!   and a Pod running the agent, its token read from the Secret (`secretKeyRef`), requests and
//!   limits from the pool's size, an optional `runtimeClassName` (gVisor, Kata). Every object is
//!   labelled `shoal.dev/tenant`, `shoal.dev/pool`, `shoal.dev/sandbox`.
//! - Kubernetes cannot stop a pod and keep it, so [`Capabilities::stop`] is false and the
//!   planner's idle step maps onto deletion: `stop` deletes the Pod and keeps the Secret and the
//!   workspace volume; `start` makes the Pod again from the spec. A sandbox whose Secret remains
//!   but has no Pod lists as `Stopped`.
//! - Observations come from a watch on the pods (re-listed whenever the watch ends), with the
//!   agent container's own `startedAt` and `finishedAt` as times: running once the container
//!   runs, stopped when it terminates, the pod fails, or the pod vanishes.
//! - Objects the store does not know are collected by label ([`KubernetesProvider::collect_unknown`],
//!   [`KubernetesProvider::collect_unknown_namespaces`]); leadership among replicas is a Lease
//!   ([`lease`]).

pub mod lease;
pub mod objects;

use crate::common::now_ms;
use crate::{
    Capabilities, Observation, ObservationSink, ObservedState, Provider, ProviderError, SandboxRef,
    SandboxSpec,
};
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use objects::{LABEL_MANAGED_BY, LABEL_SANDBOX, LABEL_TENANT, MANAGED_BY};
use serde::{Deserialize, Serialize};
use shoal_core::{Millis, SandboxSize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a pod's requests and limits follow from the pool's sandbox size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// Limits are the size times these factors (requests are the size).
    #[serde(default = "one")]
    pub cpu_limit_factor: f64,
    #[serde(default = "one")]
    pub memory_limit_factor: f64,
    /// Ephemeral storage requested and capped per pod (`"2Gi"`).
    #[serde(default)]
    pub ephemeral_storage: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            cpu_limit_factor: 1.0,
            memory_limit_factor: 1.0,
            ephemeral_storage: None,
        }
    }
}

/// A workspace volume per sandbox that outlives its pod (so a stopped sandbox keeps its files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    #[serde(default = "default_workspace_size")]
    pub size: String,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default = "default_mount_path")]
    pub mount_path: String,
    #[serde(default = "default_access_mode")]
    pub access_mode: String,
}

fn default_workspace_size() -> String {
    "1Gi".into()
}
fn default_mount_path() -> String {
    "/workspace".into()
}
fn default_access_mode() -> String {
    "ReadWriteOnce".into()
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        WorkspaceConfig {
            size: default_workspace_size(),
            storage_class: None,
            mount_path: default_mount_path(),
            access_mode: default_access_mode(),
        }
    }
}

/// What a tenant's NetworkPolicy lets its pods reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The namespace the scheduler runs in.
    #[serde(default = "default_scheduler_namespace")]
    pub scheduler_namespace: String,
    /// The labels of the scheduler's pods.
    #[serde(default = "default_scheduler_labels")]
    pub scheduler_pod_labels: BTreeMap<String, String>,
    /// The port agents reach the scheduler on.
    #[serde(default = "default_scheduler_port")]
    pub scheduler_port: u16,
    /// Where the scheduler runs outside the cluster: its addresses.
    #[serde(default)]
    pub scheduler_cidrs: Vec<String>,
    /// Let pods resolve names through the cluster DNS.
    #[serde(default = "yes")]
    pub allow_dns: bool,
    /// Further destinations sandboxes may reach (package mirrors, the internet: `0.0.0.0/0`).
    #[serde(default)]
    pub egress_cidrs: Vec<String>,
    /// Taken out of `egress_cidrs` (the cluster's pod and service ranges, say).
    #[serde(default)]
    pub egress_except: Vec<String>,
}

fn default_scheduler_namespace() -> String {
    "shoal".into()
}
fn default_scheduler_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_string(), "shoal".to_string())])
}
fn default_scheduler_port() -> u16 {
    8080
}
fn yes() -> bool {
    true
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            scheduler_namespace: default_scheduler_namespace(),
            scheduler_pod_labels: default_scheduler_labels(),
            scheduler_port: default_scheduler_port(),
            scheduler_cidrs: vec![],
            allow_dns: true,
            egress_cidrs: vec![],
            egress_except: vec![],
        }
    }
}

/// The RoleBinding made in each tenant namespace: `cluster_role` bound to the scheduler's service
/// account `service_account` of namespace `namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRoleConfig {
    #[serde(default = "default_tenant_role")]
    pub cluster_role: String,
    #[serde(default = "default_scheduler_account")]
    pub service_account: String,
    #[serde(default = "default_role_namespace")]
    pub namespace: String,
}

fn default_tenant_role() -> String {
    "shoal-tenant".into()
}
fn default_scheduler_account() -> String {
    "shoal".into()
}
fn default_role_namespace() -> String {
    "shoal".into()
}

/// The ResourceQuota of tenants whose plan limits the provider was not told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Sandboxes allowed when the tenant's limits are unknown; none: no hard limit.
    #[serde(default)]
    pub default_max_sandboxes: Option<u32>,
}

/// The `[provider.kubernetes]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file. Absent: the in-cluster service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context [default: its current one].
    #[serde(default)]
    pub context: Option<String>,
    /// Tenant namespaces are this followed by the tenant id.
    #[serde(default = "default_prefix")]
    pub namespace_prefix: String,
    /// Make tenant namespaces (false: they are made beforehand, by a platform's own tooling).
    #[serde(default = "yes")]
    pub create_namespaces: bool,
    /// The sandbox image; it runs `shoal-agent`.
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// The container's command, when the image's entrypoint is not `shoal-agent`.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub resources: ResourcesConfig,
    /// A RuntimeClass for stronger isolation (`gvisor`, `kata`).
    #[serde(default)]
    pub runtime_class_name: Option<String>,
    /// A per-sandbox workspace volume; absent: an `emptyDir`, gone with the pod.
    #[serde(default)]
    pub workspace: Option<WorkspaceConfig>,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub quota: QuotaConfig,
    /// The Pod Security Standard enforced on tenant namespaces (`restricted`, `baseline`).
    #[serde(default = "default_pod_security")]
    pub pod_security: Option<String>,
    /// The agent's user id (non-root).
    #[serde(default = "default_run_as_user")]
    pub run_as_user: Option<i64>,
    /// A service account for sandbox pods (no API token is mounted either way).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Bind this ClusterRole to the scheduler's service account in each tenant namespace (a
    /// RoleBinding made with the namespace), so the scheduler needs no cluster-wide grant on
    /// Secrets and sandbox pods; Secrets are then listed namespace by namespace
    /// (docs/providers/kubernetes.md, "RBAC"). Unset: the scheduler's grants are cluster-wide.
    #[serde(default)]
    pub tenant_role: Option<TenantRoleConfig>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Extra environment for the agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The pod's grace period when it is deleted.
    #[serde(default = "default_grace")]
    pub termination_grace_s: u32,
    /// How long `stop` waits for the pod to be gone.
    #[serde(default = "default_state_timeout", with = "crate::common::duration")]
    pub state_timeout: Duration,
    /// How long the watch waits before it lists again after it broke.
    #[serde(default = "default_rewatch", with = "crate::common::duration")]
    pub rewatch_delay: Duration,
}

fn default_prefix() -> String {
    "shoal-t-".into()
}
fn default_pod_security() -> Option<String> {
    Some("restricted".into())
}
fn default_run_as_user() -> Option<i64> {
    Some(65532)
}
fn default_grace() -> u32 {
    30
}
fn default_state_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_rewatch() -> Duration {
    Duration::from_secs(1)
}

impl KubernetesConfig {
    /// A config with every default, for the given image.
    pub fn new(image: impl Into<String>) -> Self {
        KubernetesConfig {
            kubeconfig: None,
            context: None,
            namespace_prefix: default_prefix(),
            create_namespaces: true,
            image: image.into(),
            image_pull_policy: None,
            command: vec![],
            resources: ResourcesConfig::default(),
            runtime_class_name: None,
            workspace: None,
            network: NetworkConfig::default(),
            quota: QuotaConfig::default(),
            pod_security: default_pod_security(),
            run_as_user: default_run_as_user(),
            service_account: None,
            tenant_role: None,
            node_selector: BTreeMap::new(),
            env: BTreeMap::new(),
            termination_grace_s: default_grace(),
            state_timeout: default_state_timeout(),
            rewatch_delay: default_rewatch(),
        }
    }

    /// Every problem with the config, described; empty when it is good.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let prefix_ok = self
            .namespace_prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && self
                .namespace_prefix
                .starts_with(|c: char| c.is_ascii_lowercase())
            && self.namespace_prefix.len() <= 40;
        if !prefix_ok {
            p.push(format!(
                "provider.kubernetes.namespace_prefix `{}` must be lowercase letters, digits and dashes, start with a letter, at most 40 long",
                self.namespace_prefix
            ));
        }
        if self.image.trim().is_empty() {
            p.push("provider.kubernetes.image must name the sandbox image".into());
        }
        if let Some(pp) = &self.image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&pp.as_str())
        {
            p.push(format!(
                "provider.kubernetes.image_pull_policy `{pp}` must be Always, IfNotPresent or Never"
            ));
        }
        for (name, f) in [
            ("cpu_limit_factor", self.resources.cpu_limit_factor),
            ("memory_limit_factor", self.resources.memory_limit_factor),
        ] {
            if !(f >= 1.0 && f.is_finite()) {
                p.push(format!(
                    "provider.kubernetes.resources.{name} {f} must be at least 1 (limits are never below requests)"
                ));
            }
        }
        if let Some(rc) = &self.runtime_class_name
            && (rc.is_empty() || objects::dns_label(rc, 63) != *rc)
        {
            p.push(format!(
                "provider.kubernetes.runtime_class_name `{rc}` is not a RuntimeClass name"
            ));
        }
        if let Some(w) = &self.workspace {
            if !w.mount_path.starts_with('/') {
                p.push(format!(
                    "provider.kubernetes.workspace.mount_path `{}` must be absolute",
                    w.mount_path
                ));
            }
            if !["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"]
                .contains(&w.access_mode.as_str())
            {
                p.push(format!(
                    "provider.kubernetes.workspace.access_mode `{}` is not a volume access mode",
                    w.access_mode
                ));
            }
        }
        if let Some(level) = &self.pod_security
            && !["privileged", "baseline", "restricted"].contains(&level.as_str())
        {
            p.push(format!(
                "provider.kubernetes.pod_security `{level}` must be privileged, baseline or restricted"
            ));
        }
        if self.pod_security.as_deref() == Some("restricted")
            && self.run_as_user.is_none_or(|u| u == 0)
        {
            p.push("provider.kubernetes.run_as_user must be a non-root uid under the restricted pod security level".into());
        }
        for cidr in self
            .network
            .scheduler_cidrs
            .iter()
            .chain(&self.network.egress_cidrs)
            .chain(&self.network.egress_except)
        {
            let ok = cidr.split_once('/').is_some_and(|(ip, bits)| {
                ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok()
            });
            if !ok {
                p.push(format!(
                    "provider.kubernetes.network: `{cidr}` is not a CIDR such as 10.0.0.0/8"
                ));
            }
        }
        for k in self.env.keys() {
            if k.starts_with("SHOAL_") {
                p.push(format!(
                    "provider.kubernetes.env.{k}: SHOAL_* variables are set by Shoal"
                ));
            }
        }
        if self.state_timeout < Duration::from_secs(1) {
            p.push("provider.kubernetes.state_timeout must be at least 1s".into());
        }
        p
    }
}

/// A tenant's plan limits, as far as its ResourceQuota mirrors them.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    /// Most sandboxes at once; `None`: unlimited.
    pub max_sandboxes: Option<u32>,
    /// The size of each sandbox.
    pub size: SandboxSize,
}

/// The provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("invalid [provider.kubernetes] config: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("the kubernetes provider must be built inside a tokio runtime")]
    NoRuntime,
}

/// A kube-rs error as the provider error it means.
pub fn to_provider_error(e: kube::Error) -> ProviderError {
    match &e {
        kube::Error::Api(s) => {
            let msg = format!("{} ({}): {}", s.reason, s.code, s.message);
            match s.code {
                404 | 410 => ProviderError::NotFound(msg),
                409 => ProviderError::Conflict(msg),
                429 => ProviderError::RateLimited { retry_after: None },
                403 if s.message.contains("exceeded quota") => ProviderError::Capacity(msg),
                500..=599 => ProviderError::Transient(msg),
                _ => ProviderError::Permanent(msg),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            ProviderError::Transient(e.to_string())
        }
        _ => ProviderError::Permanent(e.to_string()),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// `Api::get`, `None` for a 404 (by its code: not every server words the reason `NotFound`).
pub(crate) async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(e) if is_code(&e, 404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What Shoal last asked of a sandbox's pod, so its disappearance reads right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Run,
    Stop,
    Destroy,
}

#[derive(Debug, Clone)]
struct Tracked {
    sandbox: SandboxRef,
    last: Option<ObservedState>,
    intent: Intent,
    pod_present: bool,
}

#[derive(Default)]
struct Book {
    sandboxes: HashMap<String, Tracked>,
}

struct Inner {
    cfg: KubernetesConfig,
    client: kube::Client,
    sink: ObservationSink,
    book: Mutex<Book>,
    /// Bumped on every change of the book, for calls waiting on the watch.
    changed: tokio::sync::watch::Sender<u64>,
    /// Tenants whose namespace, policy and quota are in place.
    tenants_ready: Mutex<HashSet<String>>,
    limits: Mutex<HashMap<String, TenantLimits>>,
    /// One tenant set-up at a time.
    setup: tokio::sync::Mutex<()>,
}

/// The kubernetes provider. Cheap to clone: clones share the client, the watch and the book.
#[derive(Clone)]
pub struct KubernetesProvider {
    inner: Arc<Inner>,
    follower: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("namespace_prefix", &self.inner.cfg.namespace_prefix)
            .finish_non_exhaustive()
    }
}

/// A kube client from the config: its kubeconfig file, or whatever the environment offers
/// (in-cluster first).
pub async fn client(cfg: &KubernetesConfig) -> Result<kube::Client, KubernetesError> {
    let opts = kube::config::KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubernetesError::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| KubernetesError::Kubeconfig(e.to_string()))?
        }
        None if cfg.context.is_some() => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| KubernetesError::Kubeconfig(e.to_string()))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Kubeconfig(e.to_string()))?,
    };
    Ok(kube::Client::try_from(config)?)
}

impl KubernetesProvider {
    /// Builds the provider on `client` and starts following the pods; observations go to `sink`.
    pub fn with_client(
        cfg: KubernetesConfig,
        client: kube::Client,
        sink: ObservationSink,
    ) -> Result<Self, KubernetesError> {
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(KubernetesError::Config(problems));
        }
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| KubernetesError::NoRuntime)?;
        let inner = Arc::new(Inner {
            cfg,
            client,
            sink,
            book: Mutex::new(Book::default()),
            changed: tokio::sync::watch::channel(0).0,
            tenants_ready: Mutex::new(HashSet::new()),
            limits: Mutex::new(HashMap::new()),
            setup: tokio::sync::Mutex::new(()),
        });
        let follower = handle.spawn(follow(Arc::clone(&inner)));
        Ok(KubernetesProvider {
            inner,
            follower: Arc::new(follower),
        })
    }

    /// Builds the provider from its config (reading the kubeconfig, or in-cluster settings).
    pub async fn new(
        cfg: KubernetesConfig,
        sink: ObservationSink,
    ) -> Result<Self, KubernetesError> {
        let c = client(&cfg).await?;
        Self::with_client(cfg, c, sink)
    }

    /// The kube client, for the [`lease`] of the same cluster.
    pub fn client(&self) -> kube::Client {
        self.inner.client.clone()
    }

    /// The config the provider runs with.
    pub fn config(&self) -> &KubernetesConfig {
        &self.inner.cfg
    }

    /// Tells the provider a tenant's plan limits; its ResourceQuota mirrors them from now on
    /// (updated at once when its namespace exists).
    pub async fn set_tenant_limits(
        &self,
        tenant: &str,
        limits: TenantLimits,
    ) -> Result<(), ProviderError> {
        let changed = self
            .inner
            .limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string(), limits.clone())
            != Some(limits);
        let ready = self
            .inner
            .tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant);
        if changed && ready {
            self.inner.apply_quota(tenant).await?;
        }
        Ok(())
    }

    /// Destroys the sandboxes whose id `is_known` does not recognise; answers those it removed.
    pub async fn collect_unknown(
        &self,
        is_known: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<SandboxRef>, ProviderError> {
        let mut removed = Vec::new();
        for o in self.list().await? {
            if !is_known(&o.sandbox.sandbox_id) {
                tracing::warn!(sandbox = %o.sandbox.sandbox_id, "kubernetes: collecting an unknown sandbox");
                self.destroy(&o.sandbox).await?;
                removed.push(o.sandbox);
            }
        }
        Ok(removed)
    }

    /// Deletes the tenant namespaces (found by label) of tenants `is_known` does not recognise;
    /// answers the namespaces deleted.
    pub async fn collect_unknown_namespaces(
        &self,
        is_known: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<String>, ProviderError> {
        let api: Api<Namespace> = Api::all(self.inner.client.clone());
        let lp = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
        let list = api.list(&lp).await.map_err(to_provider_error)?;
        let mut removed = Vec::new();
        for ns in list.items {
            let Some(name) = ns.metadata.name.clone() else {
                continue;
            };
            if !self.inner.ours(&ns.metadata, &name) || ns.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let tenant = ns
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(objects::ANNOTATION_TENANT))
                .or_else(|| {
                    ns.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_TENANT))
                })
                .cloned()
                .unwrap_or_default();
            if is_known(&tenant) {
                continue;
            }
            tracing::warn!(namespace = %name, tenant = %tenant, "kubernetes: collecting an unknown tenant's namespace");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 404) => {}
                Err(e) => return Err(to_provider_error(e)),
            }
            self.inner
                .tenants_ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&tenant);
            removed.push(name);
        }
        Ok(removed)
    }
}

/// Follows the pods: list, then watch from there; when the watch ends or breaks, list again.
async fn follow(inner: Arc<Inner>) {
    let pods: Api<Pod> = Api::all(inner.client.clone());
    loop {
        match inner.relist(&pods).await {
            Ok(version) => {
                let wp = WatchParams::default().labels(LABEL_SANDBOX).timeout(290);
                match pods.watch(&wp, &version).await {
                    Ok(stream) => {
                        let mut stream = std::pin::pin!(stream);
                        while let Some(ev) = stream.next().await {
                            match ev {
                                Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => {
                                    inner.on_pod(&p)
                                }
                                Ok(WatchEvent::Deleted(p)) => inner.on_pod_gone(&p, now_ms()),
                                Ok(WatchEvent::Bookmark(_)) => {}
                                Ok(WatchEvent::Error(s)) => {
                                    tracing::debug!(code = s.code, message = %s.message, "kubernetes: watch ended");
                                    break;
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "kubernetes: watch broke");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "kubernetes: watching pods failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "kubernetes: listing pods failed"),
        }
        tokio::time::sleep(inner.cfg.rewatch_delay).await;
    }
}

impl Inner {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    fn emit(&self, sandbox: &SandboxRef, state: ObservedState, at: Millis) {
        tracing::debug!(sandbox = %sandbox.sandbox_id, ?state, at, "kubernetes: observed");
        let _ = self.sink.send(Observation {
            sandbox: sandbox.clone(),
            state,
            at,
        });
    }

    /// Whether an object is one of this provider's: in a namespace with our prefix.
    fn ours(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        name: &str,
    ) -> bool {
        let ns = meta.namespace.as_deref().unwrap_or(name);
        ns.starts_with(&self.cfg.namespace_prefix)
    }

    /// The sandbox a pod (or secret) belongs to, if it is one of ours. Filtering happens here too,
    /// as not every API server honours label selectors.
    fn sandbox_of(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Option<SandboxRef> {
        if !meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_SANDBOX))
        {
            return None;
        }
        if meta.name.is_none() || !self.ours(meta, "") {
            return None;
        }
        let (tenant, _pool, sandbox_id) = objects::owner(meta)?;
        Some(SandboxRef {
            provider_id: self.cfg.names(&tenant, &sandbox_id).pod,
            sandbox_id,
            tenant,
        })
    }

    fn on_pod(&self, pod: &Pod) {
        let Some(sandbox) = self.sandbox_of(&pod.metadata) else {
            return;
        };
        let state = objects::pod_state(pod);
        let mut book = self.book();
        let t = book
            .sandboxes
            .entry(sandbox.sandbox_id.clone())
            .or_insert_with(|| Tracked {
                sandbox: sandbox.clone(),
                last: None,
                intent: Intent::Run,
                pod_present: true,
            });
        t.pod_present = true;
        if let Some((s, at)) = state
            && t.last != Some(s)
        {
            t.last = Some(s);
            let sandbox = t.sandbox.clone();
            drop(book);
            self.emit(&sandbox, s, at.unwrap_or_else(now_ms));
        } else {
            drop(book);
        }
        self.bump();
    }

    fn on_pod_gone(&self, pod: &Pod, now: Millis) {
        let Some(sandbox) = self.sandbox_of(&pod.metadata) else {
            return;
        };
        self.sandbox_gone(&sandbox, objects::finished_at(pod), now);
    }

    /// The pod of `sandbox` is no more: gone when Shoal destroyed it, else stopped (asked or
    /// not), at the container's finish time where it said.
    fn sandbox_gone(&self, sandbox: &SandboxRef, finished: Option<Millis>, now: Millis) {
        let mut book = self.book();
        let t = book
            .sandboxes
            .entry(sandbox.sandbox_id.clone())
            .or_insert_with(|| Tracked {
                sandbox: sandbox.clone(),
                last: None,
                intent: Intent::Run,
                pod_present: true,
            });
        if !t.pod_present && t.intent != Intent::Destroy {
            return;
        }
        t.pod_present = false;
        let report = match t.intent {
            Intent::Destroy => {
                let r = (t.last != Some(ObservedState::Gone)).then_some(ObservedState::Gone);
                let s = t.sandbox.clone();
                book.sandboxes.remove(&sandbox.sandbox_id);
                r.map(|st| (s, st))
            }
            Intent::Run | Intent::Stop => {
                let r = (t.last != Some(ObservedState::Stopped)).then_some(ObservedState::Stopped);
                if t.intent == Intent::Run {
                    tracing::warn!(sandbox = %sandbox.sandbox_id, "kubernetes: a sandbox's pod vanished");
                }
                t.last = Some(ObservedState::Stopped);
                t.intent = Intent::Run;
                r.map(|st| (t.sandbox.clone(), st))
            }
        };
        drop(book);
        if let Some((s, state)) = report {
            self.emit(&s, state, finished.unwrap_or(now));
        }
        self.bump();
    }

    /// Lists the pods, reports what changed since the book last saw them, and answers the list's
    /// resource version to watch from.
    async fn relist(&self, pods: &Api<Pod>) -> Result<String, kube::Error> {
        let list = pods
            .list(&ListParams::default().labels(LABEL_SANDBOX))
            .await?;
        let now = now_ms();
        let mut seen = HashSet::new();
        for p in &list.items {
            if let Some(s) = self.sandbox_of(&p.metadata) {
                seen.insert(s.sandbox_id.clone());
                self.on_pod(p);
            }
        }
        let vanished: Vec<SandboxRef> = self
            .book()
            .sandboxes
            .values()
            .filter(|t| t.pod_present && !seen.contains(&t.sandbox.sandbox_id))
            .map(|t| t.sandbox.clone())
            .collect();
        for s in vanished {
            self.sandbox_gone(&s, None, now);
        }
        Ok(list
            .metadata
            .resource_version
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "0".into()))
    }

    fn set_intent(&self, sandbox: &SandboxRef, intent: Intent) {
        let mut book = self.book();
        let t = book
            .sandboxes
            .entry(sandbox.sandbox_id.clone())
            .or_insert_with(|| Tracked {
                sandbox: sandbox.clone(),
                last: None,
                intent,
                pod_present: false,
            });
        t.intent = intent;
    }

    fn limits_for(&self, tenant: &str) -> TenantLimits {
        self.limits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .cloned()
            .unwrap_or(TenantLimits {
                max_sandboxes: self.cfg.quota.default_max_sandboxes,
                size: SandboxSize::default(),
            })
    }

    async fn apply_quota(&self, tenant: &str) -> Result<(), ProviderError> {
        let ns = self.cfg.namespace_for(tenant);
        let quota = objects::resource_quota(&self.cfg, tenant, &self.limits_for(tenant));
        upsert(
            &Api::<ResourceQuota>::namespaced(self.client.clone(), &ns),
            &quota,
        )
        .await
    }

    /// The tenant's namespace, NetworkPolicy and ResourceQuota, made once per tenant per run.
    async fn ensure_tenant(
        &self,
        tenant: &str,
        size: &SandboxSize,
    ) -> Result<String, ProviderError> {
        let ns = self.cfg.namespace_for(tenant);
        if self
            .tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant)
        {
            return Ok(ns);
        }
        let _one = self.setup.lock().await;
        if self
            .tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(tenant)
        {
            return Ok(ns);
        }
        {
            // Without limits from the scheduler, the quota counts sandboxes of the size in use.
            let mut l = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            l.entry(tenant.to_string()).or_insert(TenantLimits {
                max_sandboxes: self.cfg.quota.default_max_sandboxes,
                size: *size,
            });
        }
        if self.cfg.create_namespaces {
            let api: Api<Namespace> = Api::all(self.client.clone());
            let obj = objects::namespace(&self.cfg, tenant);
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 409) => {}
                Err(e) => return Err(to_provider_error(e)),
            }
        }
        if let Some(role) = &self.cfg.tenant_role {
            create_if_missing(
                &Api::<RoleBinding>::namespaced(self.client.clone(), &ns),
                &objects::tenant_role_binding(&self.cfg, tenant, role),
            )
            .await?;
        }
        // A RoleBinding just made can take a moment to reach the API server's authorizer.
        let policy = objects::network_policy(&self.cfg, tenant);
        let policies = Api::<NetworkPolicy>::namespaced(self.client.clone(), &ns);
        let mut tries = 0;
        loop {
            match upsert(&policies, &policy).await {
                Err(ProviderError::Permanent(m))
                    if self.cfg.tenant_role.is_some() && m.contains("(403)") && tries < 20 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        }
        self.apply_quota(tenant).await?;
        self.tenants_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.to_string());
        Ok(ns)
    }

    /// Makes whatever of the sandbox is missing: tenant set-up, Secret, workspace, Pod.
    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        let ns = self.ensure_tenant(&spec.tenant, &spec.size).await?;
        let names = self.cfg.names(&spec.tenant, &spec.sandbox_id);
        let sandbox = SandboxRef {
            sandbox_id: spec.sandbox_id.clone(),
            tenant: spec.tenant.clone(),
            provider_id: names.pod.clone(),
        };
        self.set_intent(&sandbox, Intent::Run);
        create_if_missing(
            &Api::<Secret>::namespaced(self.client.clone(), &ns),
            &objects::token_secret(&self.cfg, spec),
        )
        .await?;
        if let Some(claim) = objects::workspace_claim(&self.cfg, spec) {
            create_if_missing(
                &Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), &ns),
                &claim,
            )
            .await?;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match pods
            .create(&PostParams::default(), &objects::pod(&self.cfg, spec))
            .await
        {
            Ok(_) => Ok(names.pod),
            Err(e) if is_code(&e, 409) => {
                // Made already (a retried or concurrent create): the same sandbox, unless it
                // is on its way out.
                match get_opt(&pods, &names.pod)
                    .await
                    .map_err(to_provider_error)?
                {
                    Some(p) if p.metadata.deletion_timestamp.is_some() => Err(
                        ProviderError::Transient(format!("pod {} is still terminating", names.pod)),
                    ),
                    _ => Ok(names.pod),
                }
            }
            Err(e) => Err(to_provider_error(e)),
        }
    }

    /// Waits until the watch has seen the pod of `sandbox_id` go, for at most `state_timeout`.
    async fn wait_pod_gone(&self, sandbox_id: &str) {
        let mut rx = self.changed.subscribe();
        let gone = |_: &u64| {
            self.book()
                .sandboxes
                .get(sandbox_id)
                .is_none_or(|t| !t.pod_present)
        };
        let _ = tokio::time::timeout(self.cfg.state_timeout, rx.wait_for(gone)).await;
    }

    async fn delete_pod(&self, sandbox: &SandboxRef, grace: u32) -> Result<bool, ProviderError> {
        let names = self.cfg.names(&sandbox.tenant, &sandbox.sandbox_id);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &names.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(grace),
            ..DeleteParams::background()
        };
        match pods.delete(&names.pod, &dp).await {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 404) => Ok(false),
            Err(e) => Err(to_provider_error(e)),
        }
    }

    async fn stop(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        let names = self.cfg.names(&sandbox.tenant, &sandbox.sandbox_id);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &names.namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &names.namespace);
        let pod = get_opt(&pods, &names.pod)
            .await
            .map_err(to_provider_error)?;
        if pod.is_none() {
            // No pod: stopped already if its Secret is there, else there is no such sandbox.
            return match get_opt(&secrets, &names.secret)
                .await
                .map_err(to_provider_error)?
            {
                Some(_) => Ok(()),
                None => Err(ProviderError::NotFound(format!(
                    "sandbox {} has no pod or secret in {}",
                    sandbox.sandbox_id, names.namespace
                ))),
            };
        }
        self.set_intent(sandbox, Intent::Stop);
        if self
            .delete_pod(sandbox, self.cfg.termination_grace_s)
            .await?
        {
            self.wait_pod_gone(&sandbox.sandbox_id).await;
        }
        Ok(())
    }

    async fn start(&self, sandbox: &SandboxRef, spec: &SandboxSpec) -> Result<(), ProviderError> {
        let names = self.cfg.names(&sandbox.tenant, &sandbox.sandbox_id);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &names.namespace);
        if let Some(p) = get_opt(&pods, &names.pod)
            .await
            .map_err(to_provider_error)?
        {
            if p.metadata.deletion_timestamp.is_some() {
                return Err(ProviderError::Transient(format!(
                    "pod {} is still terminating",
                    names.pod
                )));
            }
            match objects::pod_state(&p) {
                // A failed or finished pod is not restarted in place: it is replaced.
                Some((ObservedState::Stopped, _)) => {
                    self.set_intent(sandbox, Intent::Stop);
                    self.delete_pod(sandbox, 0).await?;
                    self.wait_pod_gone(&sandbox.sandbox_id).await;
                }
                _ => return Ok(()),
            }
        }
        self.create(spec).await.map(|_| ())
    }

    async fn destroy(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        let names = self.cfg.names(&sandbox.tenant, &sandbox.sandbox_id);
        self.set_intent(sandbox, Intent::Destroy);
        let had_pod = self
            .delete_pod(sandbox, self.cfg.termination_grace_s)
            .await?;
        let dp = DeleteParams::background();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &names.namespace);
        match secrets.delete(&names.secret, &dp).await {
            Ok(_) => {}
            Err(e) if is_code(&e, 404) => {}
            Err(e) => return Err(to_provider_error(e)),
        }
        if self.cfg.workspace.is_some() {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), &names.namespace);
            match claims.delete(&names.workspace, &dp).await {
                Ok(_) => {}
                Err(e) if is_code(&e, 404) => {}
                Err(e) => return Err(to_provider_error(e)),
            }
        }
        if had_pod {
            self.wait_pod_gone(&sandbox.sandbox_id).await;
        }
        // No pod to watch go (it was stopped, or never made): report it gone here.
        let left = {
            let mut book = self.book();
            match book.sandboxes.get(&sandbox.sandbox_id) {
                Some(t) if !t.pod_present => book.sandboxes.remove(&sandbox.sandbox_id),
                _ => None,
            }
        };
        if let Some(t) = left
            && t.last.is_some()
            && t.last != Some(ObservedState::Gone)
        {
            self.emit(&t.sandbox, ObservedState::Gone, now_ms());
        }
        self.bump();
        Ok(())
    }

    /// Every sandbox with a pod or a token Secret: the pod's state, `Stopped` for a Secret alone.
    async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
        let lp = ListParams::default().labels(LABEL_SANDBOX);
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(to_provider_error)?;
        let secrets = if self.cfg.tenant_role.is_some() {
            // Granted in tenant namespaces only: list each of them.
            let namespaces = Api::<Namespace>::all(self.client.clone())
                .list(&ListParams::default())
                .await
                .map_err(to_provider_error)?;
            let mut items = Vec::new();
            for ns in namespaces.items {
                let Some(name) = ns.metadata.name else {
                    continue;
                };
                if !name.starts_with(&self.cfg.namespace_prefix) {
                    continue;
                }
                match Api::<Secret>::namespaced(self.client.clone(), &name)
                    .list(&lp)
                    .await
                {
                    Ok(l) => items.extend(l.items),
                    // A namespace going away, or not bound yet: nothing of ours to see there.
                    Err(e) if is_code(&e, 403) || is_code(&e, 404) => {}
                    Err(e) => return Err(to_provider_error(e)),
                }
            }
            items
        } else {
            Api::<Secret>::all(self.client.clone())
                .list(&lp)
                .await
                .map_err(to_provider_error)?
                .items
        };
        let now = now_ms();
        let mut out: BTreeMap<String, Observation> = BTreeMap::new();
        let mut with_secret = HashSet::new();
        for s in &secrets {
            if let Some(sandbox) = self.sandbox_of(&s.metadata) {
                with_secret.insert(sandbox.sandbox_id.clone());
                out.insert(
                    sandbox.sandbox_id.clone(),
                    Observation {
                        sandbox,
                        state: ObservedState::Stopped,
                        at: now,
                    },
                );
            }
        }
        for p in &pods.items {
            let Some(sandbox) = self.sandbox_of(&p.metadata) else {
                continue;
            };
            if p.metadata.deletion_timestamp.is_some() && !with_secret.contains(&sandbox.sandbox_id)
            {
                continue;
            }
            let (state, at) = match objects::pod_state(p) {
                Some((s, at)) => (s, at.unwrap_or(now)),
                // Still booting: not billable yet.
                None => (ObservedState::Stopped, now),
            };
            out.insert(
                sandbox.sandbox_id.clone(),
                Observation { sandbox, state, at },
            );
        }
        Ok(out.into_values().collect())
    }
}

/// Creates `obj`, or leaves the one already there.
async fn create_if_missing<K>(api: &Api<K>, obj: &K) -> Result<(), ProviderError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(e) if is_code(&e, 409) => Ok(()),
        Err(e) => Err(to_provider_error(e)),
    }
}

/// Creates `obj`, or brings the one already there in line with it (a merge patch).
async fn upsert<K>(api: &Api<K>, obj: &K) -> Result<(), ProviderError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(e) if is_code(&e, 409) => {
            let name = obj.meta().name.clone().unwrap_or_default();
            api.patch(&name, &PatchParams::default(), &Patch::Merge(obj))
                .await
                .map(|_| ())
                .map_err(to_provider_error)
        }
        Err(e) => Err(to_provider_error(e)),
    }
}

#[async_trait]
impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            suspend: false,
            stop: false,
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<String, ProviderError> {
        self.inner.create(spec).await
    }

    /// Makes the sandbox's pod again from its spec (its Secret and workspace were kept).
    async fn start(&self, sandbox: &SandboxRef, spec: &SandboxSpec) -> Result<(), ProviderError> {
        self.inner.start(sandbox, spec).await
    }

    /// Deletes the sandbox's pod, keeping its Secret and workspace for a later `start`.
    async fn stop(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.stop(sandbox).await
    }

    async fn suspend(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        Err(ProviderError::Permanent(format!(
            "kubernetes cannot suspend a pod ({})",
            sandbox.sandbox_id
        )))
    }

    async fn resume(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        Err(ProviderError::Permanent(format!(
            "kubernetes cannot resume a pod ({})",
            sandbox.sandbox_id
        )))
    }

    async fn destroy(&self, sandbox: &SandboxRef) -> Result<(), ProviderError> {
        self.inner.destroy(sandbox).await
    }

    async fn list(&self) -> Result<Vec<Observation>, ProviderError> {
        self.inner.list().await
    }

    /// Leaves the pods running: another replica (or this one, restarted) takes them over, and
    /// idle ones are deleted by the planner as usual.
    async fn tenant_limits(
        &self,
        tenant: &str,
        max_sandboxes: Option<u32>,
        size: SandboxSize,
    ) -> Result<(), ProviderError> {
        self.set_tenant_limits(
            tenant,
            TenantLimits {
                max_sandboxes,
                size,
            },
        )
        .await
    }

    async fn shutdown(&self) {
        self.follower.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_table_parses_with_defaults_and_validates() {
        let c: KubernetesConfig = toml::from_str(
            r#"
            image = "ghcr.io/acme/shoal-agent:1"
            runtime_class_name = "gvisor"
            [resources]
            memory_limit_factor = 1.5
            [workspace]
            size = "5Gi"
            [quota]
            default_max_sandboxes = 3
            "#,
        )
        .unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.namespace_prefix, "shoal-t-");
        assert_eq!(c.workspace.as_ref().unwrap().mount_path, "/workspace");
        assert_eq!(c.state_timeout, Duration::from_secs(60));
        let again: KubernetesConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c, "the resolved config prints back as it reads");
        assert!(toml::from_str::<KubernetesConfig>("image = \"i\"\ncolour = 1").is_err());
    }

    #[test]
    fn validation_lists_every_problem() {
        let mut c = KubernetesConfig::new(" ");
        c.namespace_prefix = "Bad_".into();
        c.image_pull_policy = Some("Sometimes".into());
        c.resources.cpu_limit_factor = 0.5;
        c.runtime_class_name = Some("G Visor".into());
        c.workspace = Some(WorkspaceConfig {
            mount_path: "work".into(),
            ..Default::default()
        });
        c.run_as_user = Some(0);
        c.network.egress_cidrs = vec!["everywhere".into()];
        c.env.insert("SHOAL_URL".into(), "x".into());
        let problems = c.validate();
        for needle in [
            "namespace_prefix",
            "image must",
            "image_pull_policy",
            "cpu_limit_factor",
            "runtime_class_name",
            "mount_path",
            "run_as_user",
            "everywhere",
            "SHOAL_URL",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "no problem about {needle} in {problems:?}"
            );
        }
    }

    #[test]
    fn api_errors_map_to_provider_errors() {
        let api = |code: u16, message: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: message.into(),
                ..Default::default()
            }))
        };
        assert!(matches!(
            to_provider_error(api(404, "")),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            to_provider_error(api(409, "")),
            ProviderError::Conflict(_)
        ));
        assert!(matches!(
            to_provider_error(api(429, "")),
            ProviderError::RateLimited { .. }
        ));
        assert!(matches!(
            to_provider_error(api(403, "pods \"x\" is forbidden: exceeded quota: q")),
            ProviderError::Capacity(_)
        ));
        assert!(matches!(
            to_provider_error(api(403, "forbidden")),
            ProviderError::Permanent(_)
        ));
        assert!(matches!(
            to_provider_error(api(503, "")),
            ProviderError::Transient(_)
        ));
    }
}
