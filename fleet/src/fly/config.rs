//! The `[provider.fly]` table: the app, regions, image and guest sizes, the pacing and timeouts,
//! their defaults and validation.

use super::*;

/// The machine size used for sandboxes (`fly.MachineGuest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestConfig {
    /// `shared` or `performance`.
    #[serde(default = "default_cpu_kind")]
    pub cpu_kind: String,
    /// Virtual CPUs per machine.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Memory per machine, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
}

pub(super) fn default_cpu_kind() -> String {
    "shared".into()
}
pub(super) fn default_cpus() -> u32 {
    1
}
pub(super) fn default_memory_mb() -> u32 {
    256
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            cpu_kind: default_cpu_kind(),
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
        }
    }
}

/// What an idle sandbox becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleMode {
    /// Suspend when the guest's memory allows it on Fly (2 GB at most), else stop.
    #[default]
    Auto,
    /// Always suspend.
    Suspend,
    /// Always stop.
    Stop,
}

/// The `[provider.fly]` table. The API token is not here: it comes from `FLY_API_TOKEN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlyConfig {
    /// The Machines API, without `/v1`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The Fly app the machines live in.
    pub app: String,
    /// Regions to create machines in, in order of preference.
    pub regions: Vec<String>,
    /// The sandbox image; its entrypoint is `shoal-agent`.
    pub image: String,
    /// The size of every machine.
    #[serde(default)]
    pub guest: GuestConfig,
    /// What an idle machine becomes.
    #[serde(default)]
    pub idle: IdleMode,
    /// Extra environment for the agent, besides what Shoal sets.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How often machine states are polled (one list call for the whole app).
    #[serde(default = "default_poll_interval", with = "crate::common::duration")]
    pub poll_interval: Duration,
    /// How long a lease taken for a mutation is held (and reused).
    #[serde(default = "default_lease_ttl", with = "crate::common::duration")]
    pub lease_ttl: Duration,
    /// How long a machine may take to reach the state asked of it.
    #[serde(default = "default_state_timeout", with = "crate::common::duration")]
    pub state_timeout: Duration,
    /// The timeout of one API request.
    #[serde(default = "default_request_timeout", with = "crate::common::duration")]
    pub request_timeout: Duration,
    /// How long a region that answered `insufficient_capacity` is skipped.
    #[serde(
        default = "default_capacity_cooldown",
        with = "crate::common::duration"
    )]
    pub capacity_cooldown: Duration,
    /// How long after a create a 404 for the new machine is taken for eventual consistency.
    #[serde(default = "default_create_grace", with = "crate::common::duration")]
    pub create_grace: Duration,
    /// Stop the machines this scheduler created when it shuts down.
    #[serde(default = "default_true")]
    pub stop_on_shutdown: bool,
}

pub(super) fn default_api_url() -> String {
    "https://api.machines.dev".into()
}
pub(super) fn default_poll_interval() -> Duration {
    Duration::from_secs(2)
}
pub(super) fn default_lease_ttl() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_state_timeout() -> Duration {
    Duration::from_secs(120)
}
pub(super) fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_capacity_cooldown() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_create_grace() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_true() -> bool {
    true
}

impl FlyConfig {
    /// A config with every default, for the given app, regions and image.
    pub fn new(app: impl Into<String>, regions: Vec<String>, image: impl Into<String>) -> Self {
        FlyConfig {
            api_url: default_api_url(),
            app: app.into(),
            regions,
            image: image.into(),
            guest: GuestConfig::default(),
            idle: IdleMode::default(),
            env: BTreeMap::new(),
            poll_interval: default_poll_interval(),
            lease_ttl: default_lease_ttl(),
            state_timeout: default_state_timeout(),
            request_timeout: default_request_timeout(),
            capacity_cooldown: default_capacity_cooldown(),
            create_grace: default_create_grace(),
            stop_on_shutdown: true,
        }
    }

    /// Every problem with the config, described; empty when it is good.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let url_ok = (self.api_url.starts_with("https://") || self.api_url.starts_with("http://"))
            && self
                .api_url
                .split("://")
                .nth(1)
                .is_some_and(|h| !h.is_empty());
        if !url_ok {
            p.push(format!(
                "provider.fly.api_url `{}` is not an http(s) URL",
                self.api_url
            ));
        }
        if self.app.is_empty()
            || !self
                .app
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            p.push(format!(
                "provider.fly.app `{}` must be a Fly app name (lowercase letters, digits, dashes)",
                self.app
            ));
        }
        if self.regions.is_empty() {
            p.push("provider.fly.regions must name at least one region".into());
        }
        let mut seen = HashSet::new();
        for r in &self.regions {
            if r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                p.push(format!(
                    "provider.fly.regions: `{r}` is not a region code such as `ams`"
                ));
            }
            if !seen.insert(r) {
                p.push(format!("provider.fly.regions: `{r}` is listed twice"));
            }
        }
        if self.image.trim().is_empty() {
            p.push("provider.fly.image must name the sandbox image".into());
        }
        let g = &self.guest;
        let per_cpu = match g.cpu_kind.as_str() {
            "shared" => Some((256, 2048)),
            "performance" => Some((2048, 8192)),
            other => {
                p.push(format!(
                    "provider.fly.guest.cpu_kind `{other}` must be `shared` or `performance`"
                ));
                None
            }
        };
        if ![1, 2, 4, 8, 16].contains(&g.cpus) {
            p.push(format!(
                "provider.fly.guest.cpus {} must be 1, 2, 4, 8 or 16",
                g.cpus
            ));
        }
        if g.memory_mb == 0 || !g.memory_mb.is_multiple_of(256) {
            p.push(format!(
                "provider.fly.guest.memory_mb {} must be a positive multiple of 256",
                g.memory_mb
            ));
        } else if let Some((lo, hi)) = per_cpu {
            let (lo, hi) = (lo * g.cpus.max(1), hi * g.cpus.max(1));
            if g.memory_mb < lo || g.memory_mb > hi {
                p.push(format!(
                    "provider.fly.guest.memory_mb {} is outside {lo}..={hi} for {} {} CPU(s)",
                    g.memory_mb, g.cpus, g.cpu_kind
                ));
            }
        }
        if self.idle == IdleMode::Suspend && g.memory_mb > SUSPEND_MAX_MEMORY_MB {
            p.push(format!("provider.fly.idle = \"suspend\" needs guest.memory_mb <= {SUSPEND_MAX_MEMORY_MB} on Fly"));
        }
        for (name, d, min) in [
            (
                "poll_interval",
                self.poll_interval,
                Duration::from_millis(100),
            ),
            ("lease_ttl", self.lease_ttl, Duration::from_secs(5)),
            ("state_timeout", self.state_timeout, Duration::from_secs(1)),
            (
                "request_timeout",
                self.request_timeout,
                Duration::from_secs(1),
            ),
        ] {
            if d < min {
                p.push(format!("provider.fly.{name} {d:?} is below {min:?}"));
            }
        }
        for k in self.env.keys() {
            if k.starts_with("SHOAL_") {
                p.push(format!(
                    "provider.fly.env.{k}: SHOAL_* variables are set by Shoal"
                ));
            }
        }
        p
    }

    /// The guest for a sandbox of `size`: the configured one, grown to fit the size and kept
    /// within Fly's memory-per-CPU bounds.
    pub fn guest_for(&self, size: &SandboxSize) -> Guest {
        let (lo, hi) = if self.guest.cpu_kind == "performance" {
            (2048, 8192)
        } else {
            (256, 2048)
        };
        let memory = (size.memory_mb.div_ceil(256) * 256) as u32;
        let memory = self.guest.memory_mb.max(memory);
        let mut cpus = self
            .guest
            .cpus
            .max(size.cpus.ceil().max(1.0) as u32)
            .max(memory.div_ceil(hi));
        cpus = [1, 2, 4, 8, 16]
            .into_iter()
            .find(|c| *c >= cpus)
            .unwrap_or(16);
        let memory = memory.max(lo * cpus).min(hi * cpus);
        Guest {
            cpu_kind: self.guest.cpu_kind.clone(),
            cpus,
            memory_mb: memory,
        }
    }

    pub(super) fn suspends(&self) -> bool {
        match self.idle {
            IdleMode::Auto => self.guest.memory_mb <= SUSPEND_MAX_MEMORY_MB,
            IdleMode::Suspend => true,
            IdleMode::Stop => false,
        }
    }
}
