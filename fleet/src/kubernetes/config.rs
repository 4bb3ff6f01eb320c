//! The `[provider.kubernetes]` table: image, resources, workspace volume, network policy, tenant
//! roles and quotas, their defaults and validation.

use super::*;

/// How a pod's requests and limits follow from the pool's sandbox size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// Limits are the size times these factors (requests are the size).
    #[serde(default = "one")]
    pub cpu_limit_factor: f64,
    /// The memory limit is the size's memory times this.
    #[serde(default = "one")]
    pub memory_limit_factor: f64,
    /// Ephemeral storage requested and capped per pod (`"2Gi"`).
    #[serde(default)]
    pub ephemeral_storage: Option<String>,
}

pub(super) fn one() -> f64 {
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
    /// The volume's requested size (`"1Gi"`).
    #[serde(default = "default_workspace_size")]
    pub size: String,
    /// The StorageClass; the cluster's default when absent.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Where the volume is mounted in the agent's container.
    #[serde(default = "default_mount_path")]
    pub mount_path: String,
    /// The volume's access mode (`ReadWriteOnce`).
    #[serde(default = "default_access_mode")]
    pub access_mode: String,
}

pub(super) fn default_workspace_size() -> String {
    "1Gi".into()
}
pub(super) fn default_mount_path() -> String {
    "/workspace".into()
}
pub(super) fn default_access_mode() -> String {
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

pub(super) fn default_scheduler_namespace() -> String {
    "shoal".into()
}
pub(super) fn default_scheduler_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_string(), "shoal".to_string())])
}
pub(super) fn default_scheduler_port() -> u16 {
    8080
}
pub(super) fn yes() -> bool {
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
    /// The ClusterRole bound in each tenant namespace.
    #[serde(default = "default_tenant_role")]
    pub cluster_role: String,
    /// The scheduler's service account the role is bound to.
    #[serde(default = "default_scheduler_account")]
    pub service_account: String,
    /// The namespace of that service account.
    #[serde(default = "default_role_namespace")]
    pub namespace: String,
}

pub(super) fn default_tenant_role() -> String {
    "shoal-tenant".into()
}
pub(super) fn default_scheduler_account() -> String {
    "shoal".into()
}
pub(super) fn default_role_namespace() -> String {
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
    /// The pods' `imagePullPolicy`; the cluster's default when absent.
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// The container's command, when the image's entrypoint is not `shoal-agent`.
    #[serde(default)]
    pub command: Vec<String>,
    /// CPU and memory limits and ephemeral storage of sandbox pods.
    #[serde(default)]
    pub resources: ResourcesConfig,
    /// A RuntimeClass for stronger isolation (`gvisor`, `kata`).
    #[serde(default)]
    pub runtime_class_name: Option<String>,
    /// A per-sandbox workspace volume; absent: an `emptyDir`, gone with the pod.
    #[serde(default)]
    pub workspace: Option<WorkspaceConfig>,
    /// The NetworkPolicy written in each tenant namespace.
    #[serde(default)]
    pub network: NetworkConfig,
    /// The ResourceQuota written in each tenant namespace.
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
    /// The pods' `nodeSelector`.
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

pub(super) fn default_prefix() -> String {
    "shoal-t-".into()
}
pub(super) fn default_pod_security() -> Option<String> {
    Some("restricted".into())
}
pub(super) fn default_run_as_user() -> Option<i64> {
    Some(65532)
}
pub(super) fn default_grace() -> u32 {
    30
}
pub(super) fn default_state_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_rewatch() -> Duration {
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
