//! The config file's shape (`FileConfig` and its tables, read with serde from TOML) and the
//! closed sets of names the configuration takes (`ProviderKind`, the idle action).

use serde::{Deserialize, Serialize};
use shoal_planner::IdleAction;
use std::path::PathBuf;

/// The sandbox providers this build has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Process,
    Docker,
    Fly,
    Kubernetes,
}

impl ProviderKind {
    /// Every provider, in the order errors list them.
    pub const ALL: [ProviderKind; 4] = [
        ProviderKind::Process,
        ProviderKind::Docker,
        ProviderKind::Fly,
        ProviderKind::Kubernetes,
    ];

    /// The name the config, the metrics and `[prices]` use.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Process => "process",
            ProviderKind::Docker => "docker",
            ProviderKind::Fly => "fly",
            ProviderKind::Kubernetes => "kubernetes",
        }
    }

    /// What an idle sandbox becomes when the config does not say: stopped for `process` (a
    /// stopped process costs nothing to start again), suspended where the provider can keep
    /// memory cheaply.
    pub fn default_idle_action(self) -> IdleAction {
        match self {
            ProviderKind::Process => shoal_planner::PoolPolicy::default().idle_action,
            _ => IdleAction::Suspend,
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ProviderKind::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = ProviderKind::ALL.iter().map(|p| p.as_str()).collect();
                format!("`{s}` is not one of {}", all.join(", "))
            })
    }
}

/// `stop` or `suspend` as an [`IdleAction`].
pub fn parse_idle_action(s: &str) -> Result<IdleAction, String> {
    match s {
        "stop" => Ok(IdleAction::Stop),
        "suspend" => Ok(IdleAction::Suspend),
        other => Err(format!("`{other}` is not stop or suspend")),
    }
}

/// The config file's shape. Every key is optional; `SHOAL_<KEY>` overrides a top-level key.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// The provider's name (`provider = "fly"`), or its table (`[provider]` with `name = "fly"`
    /// and per-provider tables such as `[provider.fly]`).
    pub provider: Option<ProviderField>,
    pub idle_timeout: Option<String>,
    /// `fixed`, `adaptive` or `adaptive:SECONDS`: how idle sandboxes are kept.
    pub idle_policy: Option<String>,
    pub advertise_url: Option<String>,
    /// `stop` or `suspend`: what an idle sandbox becomes.
    pub idle_action: Option<String>,
    /// How long a stopped or suspended sandbox is kept before it is destroyed.
    pub sandbox_retention: Option<String>,
    /// How long finished jobs, operators' events and spent webhook deliveries are kept before
    /// they are exported to `<data-dir>/export/` and deleted; `off` keeps them for ever.
    pub retention: Option<String>,
    /// A sandbox booting longer than this is given up on.
    pub boot_timeout: Option<String>,
    /// A job's lease lapses after this long without a heartbeat.
    pub lease_ttl: Option<String>,
    /// How often agents heartbeat.
    pub heartbeat_interval: Option<String>,
    /// Cap on active sandboxes across all tenants, shared fairly.
    pub fleet_max_sandboxes: Option<u32>,
    /// Most tenants named in metric labels; the rest are counted as `other`.
    pub metrics_max_tenants: Option<usize>,
    /// Postgres connections of the main pool (API, delivery, ...): 2 to 500, default 16.
    pub database_pool: Option<u32>,
    /// Postgres connections of the control loop's own pool: 1 to 64, default 4.
    pub control_pool: Option<u32>,
    /// `/metrics` requires `Authorization: Bearer` with this token (or the admin token).
    pub metrics_token: Option<String>,
    /// `/metrics` requires the admin token (or `metrics_token`); open when false and no token.
    pub metrics_auth: Option<bool>,
    /// Most bytes of output kept per job (the newest): a count, or with `KiB` / `MiB`.
    pub max_log_bytes: Option<ByteCount>,
    /// How often a request waiting on a job (`wait_s`, a followed log) looks at the job again
    /// though nothing woke it: a safety net for a wake-up lost between replicas.
    pub job_recheck: Option<String>,
    /// The wait before a failed webhook delivery's first retry; it doubles up to an hour.
    pub webhook_retry_initial: Option<String>,
    /// Tries of one webhook delivery before it is given up as failed.
    pub webhook_max_attempts: Option<u32>,
    /// Let endpoints created with a tenant key reach loopback, private and link-local addresses.
    pub webhook_allow_private: Option<bool>,
    /// Where usage events are pushed (CloudEvents batch mode).
    pub usage_sink: Option<String>,
    /// Sent as `Authorization: Bearer` to the usage sink (an OpenMeter API token).
    pub usage_sink_token: Option<String>,
    /// The wait before the first retry of a refused usage batch; it doubles up to 5 minutes.
    pub usage_sink_retry_initial: Option<String>,
    /// The CloudEvents `source` of usage events [default: shoal].
    pub usage_source: Option<String>,
    /// `[prices]`: `currency` and one table per provider (`[prices.fly]`).
    pub prices: Option<PricesTable>,
    /// The shared warm pool: `warm_pool = 4` (whichever provider), or a table with one count
    /// per provider (`[warm_pool]` with `fly = 4`, `process = 2`).
    pub warm_pool: Option<WarmPoolField>,
}

/// `warm_pool = N` or a `[warm_pool]` table of counts by provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum WarmPoolField {
    Count(u32),
    PerProvider(WarmPoolTable),
}

/// The `[warm_pool]` table: blank sandboxes kept per provider (the running provider's applies).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarmPoolTable {
    pub process: Option<u32>,
    pub docker: Option<u32>,
    pub fly: Option<u32>,
    pub kubernetes: Option<u32>,
}

impl WarmPoolField {
    /// The count that applies to `provider`.
    pub fn for_provider(&self, provider: ProviderKind) -> u32 {
        match self {
            WarmPoolField::Count(n) => *n,
            WarmPoolField::PerProvider(t) => match provider {
                ProviderKind::Process => t.process,
                ProviderKind::Docker => t.docker,
                ProviderKind::Fly => t.fly,
                ProviderKind::Kubernetes => t.kubernetes,
            }
            .unwrap_or(0),
        }
    }
}

/// The `[prices]` table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PricesTable {
    /// An ISO 4217 code [default: USD].
    pub currency: Option<String>,
    pub process: Option<shoal_metering::Price>,
    pub docker: Option<shoal_metering::Price>,
    pub fly: Option<shoal_metering::Price>,
    pub kubernetes: Option<shoal_metering::Price>,
}

/// The highest price per vCPU-second or GiB-second accepted: a guard against a typo.
pub const MAX_PRICE: f64 = 1_000.0;

impl PricesTable {
    /// The price list, with every problem found.
    pub fn resolve(&self, errs: &mut Vec<String>) -> shoal_metering::Prices {
        let currency = self.currency.clone().unwrap_or_else(|| "USD".into());
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            errs.push(format!(
                "prices.currency: `{currency}` is not a three-letter currency code like USD"
            ));
        }
        let mut providers = std::collections::BTreeMap::new();
        for (name, p) in [
            ("process", self.process),
            ("docker", self.docker),
            ("fly", self.fly),
            ("kubernetes", self.kubernetes),
        ] {
            let Some(p) = p else { continue };
            for (k, v) in [("vcpu_second", p.vcpu_second), ("gib_second", p.gib_second)] {
                if !v.is_finite() || !(0.0..=MAX_PRICE).contains(&v) {
                    errs.push(format!(
                        "prices.{name}.{k}: {v} is not a price between 0 and {MAX_PRICE}"
                    ));
                }
            }
            providers.insert(name.to_string(), p);
        }
        shoal_metering::Prices {
            currency,
            providers,
        }
    }
}

/// A number of bytes in the config file: `1048576` or `"1MiB"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ByteCount {
    Number(u64),
    Text(String),
}

/// The default `retention`: finished jobs and their events are kept 30 days.
pub const DEFAULT_RETENTION: &str = "30d";

/// The default `max_log_bytes`: 1 MiB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 1024 * 1024;
/// The range `max_log_bytes` may take.
pub const MAX_LOG_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=256 * 1024 * 1024;

/// `1048576`, `512KiB`, `1MiB`, `1GiB` as a number of bytes.
pub fn parse_bytes(raw: &str) -> Result<u64, String> {
    let t = raw.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| (&t[..i], t[i..].trim()));
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{raw}`: unknown unit `{other}` (a number of bytes, or with KiB, MiB or GiB)"
            ));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{raw}` is not a number of bytes"))
}

/// `provider = "NAME"` or a `[provider]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ProviderField {
    Name(String),
    Table(Box<ProviderTables>),
}

/// The `[provider]` table: the provider's name and one table per provider (`[provider.process]`,
/// `[provider.fly]`, ...).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderTables {
    pub name: Option<String>,
    pub process: Option<ProcessTable>,
    /// `[provider.fly]`: see `docs/providers/fly.md`.
    pub fly: Option<shoal_fleet::fly::FlyConfig>,
    /// `[provider.docker]`: see `docs/providers/docker.md`.
    pub docker: Option<shoal_fleet::docker::DockerConfig>,
    /// `[provider.kubernetes]`: see `docs/providers/kubernetes.md`.
    pub kubernetes: Option<shoal_fleet::kubernetes::KubernetesConfig>,
}

impl FileConfig {
    pub(super) fn provider_name(&self) -> Option<String> {
        match &self.provider {
            Some(ProviderField::Name(n)) => Some(n.clone()),
            Some(ProviderField::Table(t)) => t.name.clone(),
            None => None,
        }
    }

    pub(super) fn tables(&self) -> ProviderTables {
        match &self.provider {
            Some(ProviderField::Table(t)) => (**t).clone(),
            _ => ProviderTables::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessTable {
    /// The `shoal-agent` binary [default: beside the `shoal` binary].
    pub agent_bin: Option<PathBuf>,
    /// `auto` (bubblewrap when it works here, else unconfined with a warning), `bubblewrap`
    /// (refuse to start without it) or `none` [default: auto; `SHOAL_PROCESS_ISOLATION`].
    pub isolation: Option<String>,
    /// The first of the 65,536 uids sandboxes run as when the scheduler is root
    /// [default: 1200000; `SHOAL_PROCESS_UID_BASE`].
    pub uid_base: Option<u32>,
}
