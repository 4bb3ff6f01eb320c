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
//! - Objects the store does not know are collected by label (sandboxes by
//!   [`crate::orphans::collect_unknown`], namespaces by
//!   [`KubernetesProvider::collect_unknown_namespaces`]); leadership among replicas is a Lease
//!   ([`lease`]).

mod config;
pub mod lease;
pub mod objects;
mod tenants;
#[cfg(test)]
mod tests;
mod watch;

pub use config::*;
use watch::*;

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

/// The provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The `[provider.kubernetes]` table has these mistakes.
    #[error("invalid [provider.kubernetes] config: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The kubeconfig could not be read.
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(String),
    /// The Kubernetes client failed.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// Built outside a tokio runtime.
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
