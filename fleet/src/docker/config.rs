//! The `[provider.docker]` table, its defaults and validation, and the Docker object names made
//! from it.

use super::*;

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
    #[serde(default = "default_stop_grace", with = "crate::common::duration")]
    pub stop_grace: Duration,
    /// The timeout of one engine request.
    #[serde(default = "default_request_timeout", with = "crate::common::duration")]
    pub request_timeout: Duration,
    /// Extra environment for the agent, besides what Shoal sets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Stop the namespace's containers when the scheduler shuts down.
    #[serde(default = "default_true")]
    pub stop_on_shutdown: bool,
}

pub(super) fn default_namespace() -> String {
    "shoal".into()
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_pids_limit() -> i64 {
    1024
}
pub(super) fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_request_timeout() -> Duration {
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
