//! The scheduler's configuration: one TOML file, then `SHOAL_*` environment variables, then flags,
//! each later source overriding the earlier, resolved and validated in one pass that reports every
//! bad value at once.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `shoal serve`'s flags; each also reads the environment variable of the same meaning.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// A TOML config file.
    #[arg(long, env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve the API and dashboard on [default: 127.0.0.1:8080].
    #[arg(long, env = "SHOAL_LISTEN")]
    pub listen: Option<String>,
    /// Where the embedded database, admin token and sandboxes live [default: ./.shoal].
    #[arg(long, env = "SHOAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The database [default: sqlite://<data-dir>/shoal.db].
    #[arg(long, env = "SHOAL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis, for the ingress queue and rate limits shared by replicas.
    #[arg(long, env = "SHOAL_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Sandbox provider: process, docker, fly or kubernetes [default: process].
    #[arg(long, env = "SHOAL_PROVIDER")]
    pub provider: Option<String>,
    /// Default pool idle timeout (2s, 10m, ...) [default: 5m].
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// How idle sandboxes are kept: `fixed` (the idle timeout), `adaptive` or
    /// `adaptive:SECONDS` (learned per tenant; docs/policy.md) [default: fixed].
    #[arg(long, env = "SHOAL_IDLE_POLICY")]
    pub idle_policy: Option<String>,
    /// The scheduler's URL as sandboxes reach it.
    #[arg(long, env = "SHOAL_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Admit more than one tenant even when sandboxes cannot be isolated from each other (the
    /// process provider on a host without bubblewrap).
    #[arg(long, env = "SHOAL_INSECURE_SHARED_HOST")]
    pub insecure_shared_host: bool,
    /// Push usage events (CloudEvents batches) to this URL, e.g. OpenMeter's
    /// `https://openmeter.cloud/api/v1/events`.
    #[arg(long, env = "SHOAL_USAGE_SINK")]
    pub usage_sink: Option<String>,
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
    fn provider_name(&self) -> Option<String> {
        match &self.provider {
            Some(ProviderField::Name(n)) => Some(n.clone()),
            Some(ProviderField::Table(t)) => t.name.clone(),
            None => None,
        }
    }

    fn tables(&self) -> ProviderTables {
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

/// The resolved configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub provider: String,
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    pub idle_policy: crate::idle::IdlePolicy,
    pub advertise_url: String,
    pub idle_action: String,
    #[serde(with = "humantime_serde_compat")]
    pub sandbox_retention: Duration,
    /// `None`: data is kept for ever.
    #[serde(with = "humantime_serde_compat::option")]
    pub retention: Option<Duration>,
    #[serde(with = "humantime_serde_compat")]
    pub boot_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub lease_ttl: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_interval: Duration,
    pub fleet_max_sandboxes: Option<u32>,
    pub metrics_max_tenants: usize,
    /// `metrics_token` (`SHOAL_METRICS_TOKEN`): a bearer token `/metrics` requires (never printed).
    #[serde(skip)]
    pub metrics_token: Option<String>,
    /// `/metrics` requires a token: `metrics_token` or the admin token.
    pub metrics_auth: bool,
    /// Most bytes of output kept per job, the newest.
    pub max_log_bytes: u64,
    #[serde(with = "humantime_serde_compat")]
    pub job_recheck: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub webhook_retry_initial: Duration,
    pub webhook_max_attempts: u32,
    pub webhook_allow_private: bool,
    pub agent_bin: PathBuf,
    /// How the process provider confines sandboxes.
    pub process_isolation: shoal_fleet::process::jail::IsolationMode,
    /// The process provider's first sandbox uid (when the scheduler runs as root).
    pub process_uid_base: u32,
    /// Admit several tenants even on a host where sandboxes are not isolated.
    pub insecure_shared_host: bool,
    /// The `[provider.fly]` table, when the provider is `fly`.
    pub fly: Option<shoal_fleet::fly::FlyConfig>,
    /// `FLY_API_TOKEN`, when the provider is `fly` (never printed).
    #[serde(skip)]
    pub fly_token: Option<String>,
    /// The `[provider.docker]` table (its defaults when absent), when the provider is `docker`.
    pub docker: Option<shoal_fleet::docker::DockerConfig>,
    /// The `[provider.kubernetes]` table, when the provider is `kubernetes`.
    pub kubernetes: Option<shoal_fleet::kubernetes::KubernetesConfig>,
    /// Where usage events are pushed, if anywhere.
    pub usage_sink: Option<String>,
    /// `usage_sink_token` (`SHOAL_USAGE_SINK_TOKEN`): never printed.
    #[serde(skip)]
    pub usage_sink_token: Option<String>,
    #[serde(with = "humantime_serde_compat")]
    pub usage_sink_retry_initial: Duration,
    /// The CloudEvents `source` of usage events.
    pub usage_source: String,
    /// `[prices]`: what usage costs.
    pub prices: shoal_metering::Prices,
}

impl Config {
    /// What the store needs to render usage events.
    pub fn usage_context(&self) -> shoal_metering::UsageContext {
        shoal_metering::UsageContext {
            source: self.usage_source.clone(),
            prices: self.prices.clone(),
        }
    }
}

/// Durations print as humans write them.
mod humantime_serde_compat {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// An optional duration: `off` when absent.
    pub mod option {
        use serde::Serializer;
        use std::time::Duration;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_str("off"),
            }
        }
    }
}

/// Every problem found while resolving the configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigErrors(pub Vec<String>);

const PROVIDERS: [&str; 4] = ["process", "docker", "fly", "kubernetes"];

fn env_var(key: &str) -> Option<String> {
    std::env::var(format!("SHOAL_{}", key.to_uppercase()))
        .ok()
        .filter(|v| !v.is_empty())
}

/// The scheduler's URL as a sandbox on this host reaches it when no `advertise_url` is given:
/// the listen address, with loopback standing in for an unspecified (`0.0.0.0`, `::`) host.
pub fn advertise_url_for(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", listen.port())
    } else {
        // `SocketAddr`'s display brackets an IPv6 host.
        format!("http://{listen}")
    }
}

impl Config {
    /// Resolves flags (with their environment variables), the config file and `SHOAL_*`
    /// overrides of file-only keys into one validated config.
    pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigErrors> {
        let mut errs = Vec::new();
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => match std::fs::read_to_string(path) {
                Err(e) => {
                    errs.push(format!("config file {}: {e}", path.display()));
                    FileConfig::default()
                }
                Ok(text) => match toml::from_str::<FileConfig>(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        errs.push(format!(
                            "config file {}: {}",
                            path.display(),
                            e.to_string().trim()
                        ));
                        FileConfig::default()
                    }
                },
            },
        };
        // Later sources win: file < SHOAL_<KEY> < flag (clap already folded the flag's own env).
        let pick = |flag: &Option<String>, file: &Option<String>, key: &str| -> Option<String> {
            flag.clone()
                .or_else(|| env_var(key))
                .or_else(|| file.clone())
        };
        let mut duration =
            |key: &str, raw: Option<String>, default: &str, min: Duration| -> Duration {
                let raw = raw.unwrap_or_else(|| default.to_string());
                match humantime::parse_duration(raw.trim()) {
                    Ok(d) if d >= min => d,
                    Ok(_) => {
                        errs.push(format!(
                            "{key}: `{raw}` is shorter than {}",
                            humantime::format_duration(min)
                        ));
                        Duration::ZERO
                    }
                    Err(e) => {
                        errs.push(format!(
                            "{key}: `{raw}` is not a duration (like 2s, 10m): {e}"
                        ));
                        Duration::ZERO
                    }
                }
            };
        let idle_timeout = duration(
            "idle_timeout",
            pick(&args.idle_timeout, &file.idle_timeout, "idle_timeout"),
            "5m",
            Duration::from_millis(100),
        );
        let sandbox_retention = duration(
            "sandbox_retention",
            pick(&None, &file.sandbox_retention, "sandbox_retention"),
            "1h",
            Duration::from_secs(1),
        );
        let retention = match pick(&None, &file.retention, "retention") {
            Some(raw) if raw.trim() == "off" => None,
            raw => Some(duration(
                "retention",
                raw,
                DEFAULT_RETENTION,
                Duration::from_secs(1),
            )),
        };
        let boot_timeout = duration(
            "boot_timeout",
            pick(&None, &file.boot_timeout, "boot_timeout"),
            "2m",
            Duration::from_secs(1),
        );
        let lease_ttl = duration(
            "lease_ttl",
            pick(&None, &file.lease_ttl, "lease_ttl"),
            "15s",
            Duration::from_secs(1),
        );
        let heartbeat_interval = duration(
            "heartbeat_interval",
            pick(&None, &file.heartbeat_interval, "heartbeat_interval"),
            "1s",
            Duration::from_millis(100),
        );
        let job_recheck = duration(
            "job_recheck",
            pick(&None, &file.job_recheck, "job_recheck"),
            "5s",
            Duration::from_millis(100),
        );
        let webhook_retry_initial = duration(
            "webhook_retry_initial",
            pick(&None, &file.webhook_retry_initial, "webhook_retry_initial"),
            "5s",
            Duration::from_millis(10),
        );
        let usage_sink_retry_initial = duration(
            "usage_sink_retry_initial",
            pick(
                &None,
                &file.usage_sink_retry_initial,
                "usage_sink_retry_initial",
            ),
            "1s",
            Duration::from_millis(10),
        );
        if webhook_retry_initial > crate::delivery::MAX_BACKOFF {
            errs.push(format!(
                "webhook_retry_initial: {} is longer than the longest wait between tries (1h)",
                humantime::format_duration(webhook_retry_initial)
            ));
        }
        if heartbeat_interval * 3 > lease_ttl && lease_ttl > Duration::ZERO {
            errs.push(format!(
                "heartbeat_interval: {} must be at most a third of lease_ttl ({})",
                humantime::format_duration(heartbeat_interval),
                humantime::format_duration(lease_ttl)
            ));
        }

        let listen_raw =
            pick(&args.listen, &file.listen, "listen").unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = match listen_raw.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                errs.push(format!(
                    "listen: `{listen_raw}` is not an address like 127.0.0.1:8080"
                ));
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }
        };
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| env_var("data_dir").map(PathBuf::from))
            .or(file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("./.shoal"));
        let database_url = pick(&args.database_url, &file.database_url, "database_url")
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("shoal.db").display()));
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| database_url.starts_with(p))
        {
            errs.push(format!(
                "database_url: `{database_url}` is neither sqlite://PATH nor postgres://..."
            ));
        }
        let redis_url = pick(&args.redis_url, &file.redis_url, "redis_url");
        if let Some(r) = &redis_url
            && !(r.starts_with("redis://") || r.starts_with("rediss://"))
        {
            errs.push(format!("redis_url: `{r}` is not a redis:// URL"));
        }
        let provider = pick(&args.provider, &file.provider_name(), "provider")
            .unwrap_or_else(|| "process".into());
        if !PROVIDERS.contains(&provider.as_str()) {
            errs.push(format!(
                "provider: `{provider}` is not one of {}",
                PROVIDERS.join(", ")
            ));
        } else if !["process", "fly", "docker", "kubernetes"].contains(&provider.as_str()) {
            errs.push(format!(
                "provider: `{provider}` is not available in this build yet (process, docker, fly and kubernetes are)"
            ));
        }
        let advertise_url = match pick(&args.advertise_url, &file.advertise_url, "advertise_url") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => {
                errs.push(format!("advertise_url: `{u}` is not an http(s) URL"));
                u
            }
            None => advertise_url_for(listen),
        };
        // Where the provider can keep memory cheaply, idle sandboxes are suspended by default.
        let default_idle = if provider == "process" {
            "stop"
        } else {
            "suspend"
        };
        let idle_policy = pick(&args.idle_policy, &file.idle_policy, "idle_policy")
            .map_or(Ok(crate::idle::IdlePolicy::Fixed), |p| p.parse())
            .unwrap_or_else(|e| {
                errs.push(format!("idle_policy: {e}"));
                crate::idle::IdlePolicy::Fixed
            });
        let idle_action =
            pick(&None, &file.idle_action, "idle_action").unwrap_or_else(|| default_idle.into());
        if idle_action != "stop" && idle_action != "suspend" {
            errs.push(format!(
                "idle_action: `{idle_action}` is not stop or suspend"
            ));
        }
        let fleet_max_sandboxes = match env_var("fleet_max_sandboxes") {
            Some(v) => v.parse().map(Some).unwrap_or_else(|_| {
                errs.push(format!("SHOAL_FLEET_MAX_SANDBOXES: `{v}` is not a count"));
                None
            }),
            None => file.fleet_max_sandboxes,
        };
        if fleet_max_sandboxes == Some(0) {
            errs.push("fleet_max_sandboxes: must be at least 1".into());
        }
        let metrics_max_tenants = match env_var("metrics_max_tenants") {
            Some(v) => v.parse().unwrap_or_else(|_| {
                errs.push(format!("SHOAL_METRICS_MAX_TENANTS: `{v}` is not a count"));
                0
            }),
            None => file.metrics_max_tenants.unwrap_or(500),
        };
        let metrics_token = env_var("metrics_token")
            .or(file.metrics_token.clone())
            .map(|t| t.trim().to_string());
        if metrics_token.as_deref() == Some("") {
            errs.push("metrics_token: must not be empty".into());
        }
        let metrics_auth = match env_var("metrics_auth") {
            Some(v) => match v.trim() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => {
                    errs.push(format!(
                        "SHOAL_METRICS_AUTH: `{other}` is not true or false"
                    ));
                    false
                }
            },
            None => file.metrics_auth.unwrap_or(false),
        } || metrics_token.is_some();
        let max_log_bytes = match env_var("max_log_bytes")
            .map(ByteCount::Text)
            .or(file.max_log_bytes.clone())
        {
            None => Ok(DEFAULT_MAX_LOG_BYTES),
            Some(ByteCount::Number(n)) => Ok(n),
            Some(ByteCount::Text(t)) => parse_bytes(&t),
        }
        .and_then(|n| {
            if MAX_LOG_BYTES_RANGE.contains(&n) {
                Ok(n)
            } else {
                Err(format!(
                    "{n} is outside {} to {} bytes (1 KiB to 256 MiB)",
                    MAX_LOG_BYTES_RANGE.start(),
                    MAX_LOG_BYTES_RANGE.end()
                ))
            }
        })
        .unwrap_or_else(|e| {
            errs.push(format!("max_log_bytes: {e}"));
            DEFAULT_MAX_LOG_BYTES
        });
        let webhook_max_attempts = match env_var("webhook_max_attempts") {
            Some(v) => v.parse().unwrap_or_else(|_| {
                errs.push(format!("SHOAL_WEBHOOK_MAX_ATTEMPTS: `{v}` is not a count"));
                1
            }),
            None => file.webhook_max_attempts.unwrap_or(12),
        };
        if !(1..=100).contains(&webhook_max_attempts) {
            errs.push(format!(
                "webhook_max_attempts: {webhook_max_attempts} is not between 1 and 100"
            ));
        }
        let webhook_allow_private = match env_var("webhook_allow_private") {
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    errs.push(format!(
                        "SHOAL_WEBHOOK_ALLOW_PRIVATE: `{v}` is not true or false"
                    ));
                    false
                }
            },
            None => file.webhook_allow_private.unwrap_or(false),
        };
        let agent_bin = env_var("agent_bin")
            .map(PathBuf::from)
            .or_else(|| file.tables().process.and_then(|p| p.agent_bin))
            .unwrap_or_else(default_agent_bin);
        if provider == "process" && !agent_bin.exists() {
            errs.push(format!(
                "agent_bin: {} does not exist (build shoal-agent, or set SHOAL_AGENT_BIN)",
                agent_bin.display()
            ));
        }
        let process_table = file.tables().process.unwrap_or_default();
        let process_isolation = env_var("process_isolation")
            .or(process_table.isolation)
            .map_or(Ok(Default::default()), |m| m.parse())
            .unwrap_or_else(|e| {
                errs.push(format!("provider.process.isolation: {e}"));
                Default::default()
            });
        let process_uid_base = match env_var("process_uid_base") {
            Some(v) => v.parse().unwrap_or_else(|_| {
                errs.push(format!("SHOAL_PROCESS_UID_BASE: `{v}` is not a uid"));
                0
            }),
            None => process_table
                .uid_base
                .unwrap_or(shoal_fleet::process::DEFAULT_UID_BASE),
        };
        // Sandboxes never run as root or as a uid that wraps past the top of the range.
        if process_uid_base == 0 || process_uid_base > u32::MAX - 65_536 {
            errs.push(format!(
                "provider.process.uid_base: {process_uid_base} must be between 1 and {}",
                u32::MAX - 65_536
            ));
        }
        let fly = file.tables().fly;
        let fly_token = std::env::var("FLY_API_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        if provider == "fly" {
            match &fly {
                None => errs.push(
                    "provider.fly: the [provider.fly] table is required with the fly provider"
                        .into(),
                ),
                Some(f) => errs.extend(
                    f.validate()
                        .into_iter()
                        .map(|p| format!("provider.fly: {p}")),
                ),
            }
            if fly_token.is_none() {
                errs.push("FLY_API_TOKEN: required with the fly provider".into());
            }
            if pick(&args.advertise_url, &file.advertise_url, "advertise_url").is_none() {
                errs.push("advertise_url: required with the fly provider (the URL machines reach the scheduler at)".into());
            }
        }
        let docker = (provider == "docker").then(|| file.tables().docker.unwrap_or_default());
        if let Some(d) = &docker {
            errs.extend(
                d.validate()
                    .into_iter()
                    .map(|p| format!("provider.docker: {p}")),
            );
            if d.image.is_none() && d.agent_bin.is_none() && !agent_bin.exists() {
                errs.push(format!(
                    "agent_bin: {} does not exist, and the docker provider builds its image from it (build shoal-agent, or set SHOAL_AGENT_BIN or provider.docker.image)",
                    agent_bin.display()
                ));
            }
        }
        let kubernetes = file.tables().kubernetes;
        if provider == "kubernetes" {
            match &kubernetes {
                None => errs.push(
                    "provider.kubernetes: the [provider.kubernetes] table is required with the kubernetes provider"
                        .into(),
                ),
                Some(k) => errs.extend(k.validate()),
            }
            if pick(&args.advertise_url, &file.advertise_url, "advertise_url").is_none() {
                errs.push("advertise_url: required with the kubernetes provider (the URL pods reach the scheduler at)".into());
            }
        }
        let kubernetes = kubernetes.filter(|_| provider == "kubernetes");
        let usage_sink = pick(&args.usage_sink, &file.usage_sink, "usage_sink");
        if let Some(u) = &usage_sink
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            errs.push(format!("usage_sink: `{u}` is not an http(s) URL"));
        }
        let usage_sink_token = env_var("usage_sink_token")
            .or(file.usage_sink_token.clone())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let usage_source = pick(&None, &file.usage_source, "usage_source")
            .unwrap_or_else(|| shoal_metering::UsageContext::DEFAULT_SOURCE.into());
        if usage_source.is_empty() || usage_source.len() > 256 {
            errs.push("usage_source: must be 1 to 256 characters".into());
        }
        let prices = file.prices.clone().unwrap_or_default().resolve(&mut errs);
        if errs.is_empty() {
            Ok(Config {
                kubernetes,
                docker,
                fly,
                fly_token,
                listen,
                data_dir,
                database_url,
                redis_url,
                provider,
                idle_timeout,
                idle_policy,
                advertise_url,
                idle_action,
                sandbox_retention,
                retention,
                boot_timeout,
                lease_ttl,
                heartbeat_interval,
                fleet_max_sandboxes,
                metrics_max_tenants,
                metrics_token,
                metrics_auth,
                max_log_bytes,
                job_recheck,
                webhook_retry_initial,
                webhook_max_attempts,
                webhook_allow_private,
                agent_bin,
                process_isolation,
                process_uid_base,
                insecure_shared_host: args.insecure_shared_host,
                usage_sink,
                usage_sink_token,
                usage_sink_retry_initial,
                usage_source,
                prices,
            })
        } else {
            Err(ConfigErrors(errs))
        }
    }
}

/// `shoal-agent` beside the running `shoal` binary.
fn default_agent_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
        .unwrap_or_else(|| PathBuf::from("shoal-agent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(
            &path,
            "idle_action = \"nap\"\nlease_ttl = \"soon\"\nmax_log_bytes = \"lots\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            listen: Some("nowhere".into()),
            provider: Some("mainframe".into()),
            idle_timeout: Some("10 parsecs".into()),
            idle_policy: Some("sometimes".into()),
            ..Default::default()
        };
        let errs = Config::resolve(&args).unwrap_err().0;
        for key in [
            "max_log_bytes",
            "idle_timeout",
            "idle_policy",
            "lease_ttl",
            "listen",
            "provider",
            "idle_action",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(key)),
                "{key} not reported in {errs:?}"
            );
        }
    }

    #[test]
    fn byte_counts_read_with_units_and_stay_in_range() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes(" 2 MiB "), Ok(2 << 20));
        assert!(parse_bytes("1MB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("shoal-agent");
        std::fs::write(&agent, "").unwrap();
        let resolve = |body: &str| {
            let path = dir.path().join("shoal.toml");
            std::fs::write(
                &path,
                format!("{body}\n[provider.process]\nagent_bin = {agent:?}\n"),
            )
            .unwrap();
            Config::resolve(&ServeArgs {
                config: Some(path),
                ..Default::default()
            })
        };
        assert_eq!(resolve("").unwrap().max_log_bytes, DEFAULT_MAX_LOG_BYTES);
        assert_eq!(resolve("max_log_bytes = 4096").unwrap().max_log_bytes, 4096);
        assert_eq!(
            resolve("max_log_bytes = \"64KiB\"").unwrap().max_log_bytes,
            65536
        );
        for bad in ["max_log_bytes = 10", "max_log_bytes = \"1GiB\""] {
            let errs = resolve(bad).unwrap_err().0;
            assert!(
                errs.iter().any(|e| e.starts_with("max_log_bytes")),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, "idle_timout = \"2s\"\n").unwrap();
        let errs = Config::resolve(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err()
        .0;
        assert!(errs.iter().any(|e| e.contains("idle_timout")), "{errs:?}");
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("shoal-agent");
        std::fs::write(&agent, "").unwrap();
        let path = dir.path().join("shoal.toml");
        std::fs::write(
            &path,
            format!("idle_timeout = \"10m\"\nlisten = \"127.0.0.1:9000\"\n[provider]\nname = \"process\"\n[provider.process]\nagent_bin = {:?}\n", agent),
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            idle_timeout: Some("2s".into()),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.advertise_url, "http://127.0.0.1:9000");
        assert_eq!(c.provider, "process");
        assert!(c.database_url.ends_with("shoal.db"));
    }

    #[test]
    fn webhook_settings_are_read_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("shoal-agent");
        std::fs::write(&agent, "").unwrap();
        let path = dir.path().join("shoal.toml");
        let file = |extra: &str| {
            std::fs::write(
                &path,
                format!(
                    "[provider]\nname = \"process\"\n[provider.process]\nagent_bin = {agent:?}\n"
                )
                .replace("[provider]", &format!("{extra}\n[provider]")),
            )
            .unwrap();
            Config::resolve(&ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
        };
        let c = file("").unwrap();
        assert_eq!(
            (
                c.webhook_retry_initial,
                c.webhook_max_attempts,
                c.webhook_allow_private
            ),
            (Duration::from_secs(5), 12, false),
            "the defaults"
        );
        let c = file("webhook_retry_initial = \"250ms\"\nwebhook_max_attempts = 3\nwebhook_allow_private = true")
            .unwrap();
        assert_eq!(
            (
                c.webhook_retry_initial,
                c.webhook_max_attempts,
                c.webhook_allow_private
            ),
            (Duration::from_millis(250), 3, true)
        );
        let errs = file("webhook_retry_initial = \"2h\"\nwebhook_max_attempts = 0")
            .unwrap_err()
            .0;
        for key in ["webhook_retry_initial", "webhook_max_attempts"] {
            assert!(
                errs.iter().any(|e| e.starts_with(key)),
                "{key} not in {errs:?}"
            );
        }
    }
}
