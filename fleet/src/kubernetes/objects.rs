//! The Kubernetes objects the provider keeps for tenants and sandboxes, built from the config and
//! a sandbox's spec without any I/O: the tenant's Namespace, NetworkPolicy and ResourceQuota, and
//! each sandbox's Secret, optional workspace PersistentVolumeClaim and Pod. Also the naming
//! rules (DNS labels, label values) and reading a pod's state back.

use super::{KubernetesConfig, TenantLimits, TenantRoleConfig};
use crate::{ObservedState, SandboxSpec};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities as LinuxCapabilities, Container, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, Namespace, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, ResourceQuota, ResourceQuotaSpec, ResourceRequirements,
    SeccompProfile, Secret, SecretKeySelector, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use shoal_core::{Millis, SandboxSize};
use std::collections::BTreeMap;

/// Label naming the tenant of a namespace, pod, secret or volume.
pub const LABEL_TENANT: &str = "shoal.dev/tenant";
/// Label naming the pool.
pub const LABEL_POOL: &str = "shoal.dev/pool";
/// Label naming the sandbox; a pod, secret or volume without it is not a sandbox's.
pub const LABEL_SANDBOX: &str = "shoal.dev/sandbox";
/// The standard label saying Shoal manages the object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "shoal";
/// Annotations carrying the exact ids, where a label value would have to be shortened.
pub const ANNOTATION_TENANT: &str = "shoal.dev/tenant-id";
/// The annotation carrying the exact pool id.
pub const ANNOTATION_POOL: &str = "shoal.dev/pool-id";
/// The annotation carrying the exact sandbox id.
pub const ANNOTATION_SANDBOX: &str = "shoal.dev/sandbox-id";
/// The agent's container in every sandbox pod.
pub const CONTAINER: &str = "agent";
/// The key of the token in a sandbox's Secret.
pub const TOKEN_KEY: &str = "token";
/// The names of the per-tenant policy objects.
pub const NETWORK_POLICY: &str = "shoal-sandboxes";
/// The name of the ResourceQuota in each tenant namespace.
pub const RESOURCE_QUOTA: &str = "shoal-tenant-quota";

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// `s` as an RFC 1123 DNS label of at most `max` characters: lowercase letters, digits and
/// dashes, starting and ending alphanumeric. Names that had to change or be cut keep a hash of
/// the original, so two ids never share a name.
pub fn dns_label(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let changed = out != s;
    out = out.trim_matches('-').to_string();
    if out.is_empty() {
        out = "x".into();
    }
    if out.len() > max || (changed && s.chars().any(|c| c.is_ascii_uppercase())) {
        let keep = max.saturating_sub(9);
        out.truncate(keep);
        let out = out.trim_end_matches('-');
        return format!("{out}-{}", short_hash(s));
    }
    out
}

/// `s` as a label value: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn label_value(s: &str) -> String {
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        s.to_string()
    } else {
        dns_label(s, 63)
    }
}

/// The object names of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNames {
    /// The tenant's namespace.
    pub namespace: String,
    /// The sandbox's pod.
    pub pod: String,
    /// The Secret holding the sandbox's token.
    pub secret: String,
    /// The sandbox's workspace volume claim.
    pub workspace: String,
}

impl KubernetesConfig {
    /// The namespace a tenant's sandboxes live in.
    pub fn namespace_for(&self, tenant: &str) -> String {
        let room = 63usize.saturating_sub(self.namespace_prefix.len()).max(10);
        format!("{}{}", self.namespace_prefix, dns_label(tenant, room))
    }

    /// The names of a sandbox's objects.
    pub fn names(&self, tenant: &str, sandbox_id: &str) -> SandboxNames {
        let base = dns_label(sandbox_id, 52);
        SandboxNames {
            namespace: self.namespace_for(tenant),
            secret: format!("{base}-token"),
            workspace: format!("{base}-workspace"),
            pod: base,
        }
    }
}

fn sandbox_meta(cfg: &KubernetesConfig, spec: &SandboxSpec, name: &str) -> ObjectMeta {
    let labels = BTreeMap::from([
        (LABEL_TENANT.to_string(), label_value(&spec.tenant)),
        (LABEL_POOL.to_string(), label_value(&spec.pool)),
        (LABEL_SANDBOX.to_string(), label_value(&spec.sandbox_id)),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]);
    let annotations = BTreeMap::from([
        (ANNOTATION_TENANT.to_string(), spec.tenant.clone()),
        (ANNOTATION_POOL.to_string(), spec.pool.clone()),
        (ANNOTATION_SANDBOX.to_string(), spec.sandbox_id.clone()),
    ]);
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(cfg.namespace_for(&spec.tenant)),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}

fn tenant_meta(cfg: &KubernetesConfig, tenant: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(cfg.namespace_for(tenant)),
        labels: Some(BTreeMap::from([
            (LABEL_TENANT.to_string(), label_value(tenant)),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        ])),
        annotations: Some(BTreeMap::from([(
            ANNOTATION_TENANT.to_string(),
            tenant.to_string(),
        )])),
        ..Default::default()
    }
}

/// CPU as a quantity in millicores.
pub fn cpu_quantity(cpus: f64) -> Quantity {
    Quantity(format!("{}m", (cpus * 1000.0).round().max(1.0) as u64))
}

/// Memory as a quantity in MiB.
pub fn memory_quantity(mb: f64) -> Quantity {
    Quantity(format!("{}Mi", mb.round().max(1.0) as u64))
}

/// Requests and limits for a sandbox of `size`: the requests are the size; the limits are the
/// size times the configured factors.
pub fn resources(cfg: &KubernetesConfig, size: &SandboxSize) -> ResourceRequirements {
    let r = &cfg.resources;
    let mut requests = BTreeMap::from([
        ("cpu".to_string(), cpu_quantity(size.cpus)),
        ("memory".to_string(), memory_quantity(size.memory_mb as f64)),
    ]);
    let mut limits = BTreeMap::from([
        (
            "cpu".to_string(),
            cpu_quantity(size.cpus * r.cpu_limit_factor),
        ),
        (
            "memory".to_string(),
            memory_quantity(size.memory_mb as f64 * r.memory_limit_factor),
        ),
    ]);
    if let Some(e) = &r.ephemeral_storage {
        requests.insert("ephemeral-storage".into(), Quantity(e.clone()));
        limits.insert("ephemeral-storage".into(), Quantity(e.clone()));
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..Default::default()
    }
}

/// The tenant's namespace.
pub fn namespace(cfg: &KubernetesConfig, tenant: &str) -> Namespace {
    let mut meta = tenant_meta(cfg, tenant, &cfg.namespace_for(tenant));
    meta.namespace = None;
    if let Some(level) = &cfg.pod_security {
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(
            "pod-security.kubernetes.io/enforce".into(),
            level.to_string(),
        );
    }
    Namespace {
        metadata: meta,
        ..Default::default()
    }
}

/// The RoleBinding that grants the scheduler its sandbox rules in one tenant namespace.
pub fn tenant_role_binding(
    cfg: &KubernetesConfig,
    tenant: &str,
    role: &TenantRoleConfig,
) -> k8s_openapi::api::rbac::v1::RoleBinding {
    use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
    RoleBinding {
        metadata: tenant_meta(cfg, tenant, &role.cluster_role),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: role.service_account.clone(),
            namespace: Some(role.namespace.clone()),
            ..Default::default()
        }]),
    }
}

fn port(n: u16, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(n as i32)),
        protocol: Some(protocol.to_string()),
        ..Default::default()
    }
}

/// The tenant's NetworkPolicy: every pod of the namespace accepts no connection, and may open
/// connections only to the scheduler (its pods in its namespace, or the configured CIDRs), to
/// the cluster DNS, and to the configured egress CIDRs; so nothing of another tenant is reachable.
pub fn network_policy(cfg: &KubernetesConfig, tenant: &str) -> NetworkPolicy {
    let n = &cfg.network;
    let mut egress = Vec::new();
    let mut to_scheduler = vec![NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                n.scheduler_namespace.clone(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(n.scheduler_pod_labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }];
    for cidr in &n.scheduler_cidrs {
        to_scheduler.push(NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..Default::default()
        });
    }
    egress.push(NetworkPolicyEgressRule {
        to: Some(to_scheduler),
        ports: Some(vec![port(n.scheduler_port, "TCP")]),
    });
    if n.allow_dns {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        "kube-system".to_string(),
                    )])),
                    ..Default::default()
                }),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "k8s-app".to_string(),
                        "kube-dns".to_string(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![port(53, "UDP"), port(53, "TCP")]),
        });
    }
    if !n.egress_cidrs.is_empty() {
        egress.push(NetworkPolicyEgressRule {
            to: Some(
                n.egress_cidrs
                    .iter()
                    .map(|c| NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: c.clone(),
                            except: (!n.egress_except.is_empty()).then(|| n.egress_except.clone()),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: None,
        });
    }
    NetworkPolicy {
        metadata: tenant_meta(cfg, tenant, NETWORK_POLICY),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![]),
            egress: Some(egress),
        }),
    }
}

/// The tenant's ResourceQuota: its plan's sandbox count, and that many sandboxes' requests and
/// limits. Unlimited plans get a quota with nothing hard, kept so the object is always there.
pub fn resource_quota(
    cfg: &KubernetesConfig,
    tenant: &str,
    limits: &TenantLimits,
) -> ResourceQuota {
    let mut hard = BTreeMap::new();
    if let Some(max) = limits.max_sandboxes {
        let m = max as f64;
        let s = &limits.size;
        hard.insert("pods".to_string(), Quantity(max.to_string()));
        hard.insert("requests.cpu".to_string(), cpu_quantity(m * s.cpus));
        hard.insert(
            "requests.memory".to_string(),
            memory_quantity(m * s.memory_mb as f64),
        );
        hard.insert(
            "limits.cpu".to_string(),
            cpu_quantity(m * s.cpus * cfg.resources.cpu_limit_factor),
        );
        hard.insert(
            "limits.memory".to_string(),
            memory_quantity(m * s.memory_mb as f64 * cfg.resources.memory_limit_factor),
        );
        if cfg.workspace.is_some() {
            hard.insert(
                "persistentvolumeclaims".to_string(),
                Quantity(max.to_string()),
            );
        }
    }
    let mut meta = tenant_meta(cfg, tenant, RESOURCE_QUOTA);
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(
        "shoal.dev/max-sandboxes".into(),
        limits
            .max_sandboxes
            .map_or("unlimited".to_string(), |m| m.to_string()),
    );
    ResourceQuota {
        metadata: meta,
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The sandbox's Secret holding its agent token.
pub fn token_secret(cfg: &KubernetesConfig, spec: &SandboxSpec) -> Secret {
    let names = cfg.names(&spec.tenant, &spec.sandbox_id);
    Secret {
        metadata: sandbox_meta(cfg, spec, &names.secret),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(spec.token.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The sandbox's workspace volume claim, when the config asks for one.
pub fn workspace_claim(
    cfg: &KubernetesConfig,
    spec: &SandboxSpec,
) -> Option<PersistentVolumeClaim> {
    let w = cfg.workspace.as_ref()?;
    let names = cfg.names(&spec.tenant, &spec.sandbox_id);
    Some(PersistentVolumeClaim {
        metadata: sandbox_meta(cfg, spec, &names.workspace),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![w.access_mode.clone()]),
            storage_class_name: w.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(w.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The well-known node label naming the cloud region a node runs in.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// A required node affinity to the tenant's regions (by [`REGION_LABEL`]); none without a list.
/// Kubernetes has no order among the terms of a required affinity, so every listed region is
/// equally acceptable here; the list only bounds where the pod may run.
fn region_affinity(regions: &[String]) -> Option<Affinity> {
    (!regions.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: REGION_LABEL.into(),
                        operator: "In".into(),
                        values: Some(regions.to_vec()),
                    }]),
                    match_fields: None,
                }],
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Default::default()
    })
}

/// The sandbox's Pod: the agent with its environment (the token from the Secret), requests and
/// limits from the pool's size, the workspace mounted, and a locked-down security context.
pub fn pod(cfg: &KubernetesConfig, spec: &SandboxSpec) -> Pod {
    let names = cfg.names(&spec.tenant, &spec.sandbox_id);
    let mut env: Vec<EnvVar> = spec
        .agent_env()
        .into_iter()
        .map(|(name, value)| {
            if name == shoal_protocol::env::SANDBOX_TOKEN {
                EnvVar {
                    name,
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: names.secret.clone(),
                            key: TOKEN_KEY.into(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                }
            } else {
                EnvVar {
                    name,
                    value: Some(value),
                    value_from: None,
                }
            }
        })
        .collect();
    for (k, v) in &cfg.env {
        env.push(EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            value_from: None,
        });
    }
    let mount_path = cfg
        .workspace
        .as_ref()
        .map_or("/workspace".to_string(), |w| w.mount_path.clone());
    let volume = match &cfg.workspace {
        Some(_) => Volume {
            name: "workspace".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names.workspace.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        },
        None => Volume {
            name: "workspace".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    };
    let container = Container {
        name: CONTAINER.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        command: (!cfg.command.is_empty()).then(|| cfg.command.clone()),
        env: Some(env),
        resources: Some(resources(cfg, &spec.size)),
        working_dir: Some(mount_path.clone()),
        volume_mounts: Some(vec![VolumeMount {
            name: "workspace".into(),
            mount_path,
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(LinuxCapabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Pod {
        metadata: sandbox_meta(cfg, spec, &names.pod),
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            service_account_name: cfg.service_account.clone(),
            runtime_class_name: cfg.runtime_class_name.clone(),
            node_selector: (!cfg.node_selector.is_empty()).then(|| cfg.node_selector.clone()),
            affinity: region_affinity(&spec.regions),
            termination_grace_period_seconds: Some(cfg.termination_grace_s as i64),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(cfg.run_as_user.is_some_and(|u| u != 0)),
                run_as_user: cfg.run_as_user,
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            volumes: Some(vec![volume]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The tenant, pool and sandbox an object belongs to, from its annotations (else labels).
pub fn owner(meta: &ObjectMeta) -> Option<(String, String, String)> {
    let get = |annotation: &str, label: &str| {
        meta.annotations
            .as_ref()
            .and_then(|a| a.get(annotation))
            .or_else(|| meta.labels.as_ref().and_then(|l| l.get(label)))
            .cloned()
    };
    Some((
        get(ANNOTATION_TENANT, LABEL_TENANT)?,
        get(ANNOTATION_POOL, LABEL_POOL).unwrap_or_default(),
        get(ANNOTATION_SANDBOX, LABEL_SANDBOX)?,
    ))
}

fn millis(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Millis {
    t.0.as_millisecond()
}

/// Where a pod stands for billing, by its agent container's own timestamps: `Running` from the
/// container's start, `Stopped` at its finish (or when the pod failed); `None` while it boots.
pub fn pod_state(pod: &Pod) -> Option<(ObservedState, Option<Millis>)> {
    let status = pod.status.as_ref()?;
    let container = status.container_statuses.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| c.name == CONTAINER)
            .or_else(|| cs.first())
    });
    let state = container.and_then(|c| c.state.as_ref());
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        return Some((ObservedState::Stopped, t.finished_at.as_ref().map(millis)));
    }
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
        return Some((ObservedState::Stopped, None));
    }
    if let Some(r) = state.and_then(|s| s.running.as_ref()) {
        return Some((ObservedState::Running, r.started_at.as_ref().map(millis)));
    }
    None
}

/// The finish time of the agent container, if it has one.
pub fn finished_at(pod: &Pod) -> Option<Millis> {
    match pod_state(pod) {
        Some((ObservedState::Stopped, at)) => at,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KubernetesConfig {
        KubernetesConfig::new("ghcr.io/shoal/agent:1")
    }

    fn spec() -> SandboxSpec {
        SandboxSpec {
            sandbox_id: "sb_0193ABCdef".into(),
            tenant: "acme".into(),
            pool: "acme".into(),
            token: "secret-token".into(),
            scheduler_url: "http://shoal.shoal.svc:8080".into(),
            size: SandboxSize {
                cpus: 0.5,
                memory_mb: 512,
            },
            regions: Vec::new(),
        }
    }

    #[test]
    fn names_are_dns_labels_and_distinct() {
        assert_eq!(dns_label("conf-k8s-1", 63), "conf-k8s-1");
        let a = dns_label("sb_0193ABCdef", 63);
        let b = dns_label("sb_0193abcdef", 63);
        assert_ne!(a, b, "case-folded ids keep a hash");
        let long = dns_label(&"x".repeat(200), 52);
        assert!(long.len() <= 52, "{long}");
        for n in [&a, &b, &long] {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            assert!(!n.starts_with('-') && !n.ends_with('-'));
        }
        assert_eq!(label_value("sb_0193ABCdef"), "sb_0193ABCdef");
        assert!(label_value(&"y".repeat(80)).len() <= 63);
        assert_eq!(cfg().namespace_for("acme"), "shoal-t-acme");
    }

    #[test]
    fn the_pod_carries_labels_env_and_resources() {
        let c = cfg();
        let p = pod(&c, &spec());
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_TENANT], "acme");
        assert_eq!(labels[LABEL_POOL], "acme");
        assert_eq!(labels[LABEL_SANDBOX], "sb_0193ABCdef");
        assert_eq!(p.metadata.namespace.as_deref(), Some("shoal-t-acme"));
        let ps = p.spec.unwrap();
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        assert_eq!(ps.automount_service_account_token, Some(false));
        let ctr = &ps.containers[0];
        let env = ctr.env.clone().unwrap();
        let token = env
            .iter()
            .find(|e| e.name == shoal_protocol::env::SANDBOX_TOKEN)
            .unwrap();
        assert!(token.value.is_none(), "the token is never inline");
        let r = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(r.name, c.names("acme", "sb_0193ABCdef").secret);
        for (k, v) in spec().agent_env() {
            if k != shoal_protocol::env::SANDBOX_TOKEN {
                assert!(
                    env.iter()
                        .any(|e| e.name == k && e.value.as_ref() == Some(&v))
                );
            }
        }
        let res = ctr.resources.clone().unwrap();
        assert_eq!(res.requests.unwrap()["cpu"].0, "500m");
        assert_eq!(res.limits.unwrap()["memory"].0, "512Mi");
        let secret = token_secret(&c, &spec());
        assert_eq!(secret.data.unwrap()[TOKEN_KEY].0, b"secret-token");
    }

    #[test]
    fn runtime_class_and_workspace_are_optional() {
        let mut c = cfg();
        assert!(pod(&c, &spec()).spec.unwrap().runtime_class_name.is_none());
        assert!(workspace_claim(&c, &spec()).is_none());
        c.runtime_class_name = Some("gvisor".into());
        c.workspace = Some(super::super::WorkspaceConfig::default());
        let ps = pod(&c, &spec()).spec.unwrap();
        assert_eq!(ps.runtime_class_name.as_deref(), Some("gvisor"));
        let claim = ps.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap()
            .claim_name;
        assert_eq!(
            workspace_claim(&c, &spec()).unwrap().metadata.name,
            Some(claim)
        );
    }

    #[test]
    fn the_quota_mirrors_the_plan() {
        let c = cfg();
        let q = resource_quota(
            &c,
            "acme",
            &TenantLimits {
                max_sandboxes: Some(3),
                size: SandboxSize {
                    cpus: 0.5,
                    memory_mb: 256,
                },
            },
        );
        let hard = q.spec.unwrap().hard.unwrap();
        assert_eq!(hard["pods"].0, "3");
        assert_eq!(hard["requests.cpu"].0, "1500m");
        assert_eq!(hard["requests.memory"].0, "768Mi");
        let q = resource_quota(
            &c,
            "big",
            &TenantLimits {
                max_sandboxes: None,
                size: SandboxSize::default(),
            },
        );
        assert!(q.spec.unwrap().hard.unwrap().is_empty());
    }

    #[test]
    fn the_network_policy_denies_ingress_and_limits_egress() {
        let np = network_policy(&cfg(), "acme");
        let s = np.spec.unwrap();
        assert_eq!(s.ingress, Some(vec![]));
        let egress = s.egress.unwrap();
        assert_eq!(egress.len(), 2, "scheduler and DNS only");
        assert!(
            egress
                .iter()
                .all(|r| r.to.as_ref().is_some_and(|t| !t.is_empty()))
        );
    }

    #[test]
    fn pod_states_come_from_the_containers_timestamps() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        assert_eq!(pod_state(&p), None);
        let p: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "status": {"phase": "Running", "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2025-01-01T00:00:01.250Z"}}}]}
        }))
        .unwrap();
        assert_eq!(
            pod_state(&p),
            Some((ObservedState::Running, Some(1_735_689_601_250)))
        );
        let p: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "agent", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "startedAt": "2025-01-01T00:00:01Z", "finishedAt": "2025-01-01T00:00:09Z"}}}]}
        }))
        .unwrap();
        assert_eq!(
            pod_state(&p),
            Some((ObservedState::Stopped, Some(1_735_689_609_000)))
        );
    }
}
