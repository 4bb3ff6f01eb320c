//! The scheduler's configuration: one TOML file, then `SHOAL_*` environment variables, then flags,
//! each later source overriding the earlier, resolved and validated in one pass that reports every
//! bad value at once.

mod file;

pub use file::{
    ByteCount, DEFAULT_MAX_LOG_BYTES, DEFAULT_RETENTION, FileConfig, MAX_LOG_BYTES_RANGE,
    MAX_PRICE, PricesTable, ProcessTable, ProviderField, ProviderKind, ProviderTables, parse_bytes,
    parse_idle_action,
};
use serde::Serialize;
use shoal_planner::{IdleAction, PoolPolicy};
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
    /// Blank sandboxes kept in the shared warm pool, claimed by tenants whose pool must grow
    /// (docs/policy.md, "Shared warm pool") [default: 0, none].
    #[arg(long, env = "SHOAL_WARM_POOL")]
    pub warm_pool: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub provider: ProviderKind,
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    pub idle_policy: crate::idle::IdlePolicy,
    pub advertise_url: String,
    pub idle_action: IdleAction,
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
    /// Blank sandboxes the shared warm pool keeps for the chosen provider (0: none).
    pub warm_pool: u32,
    pub metrics_max_tenants: usize,
    /// Postgres connections for the API and everything else but the control loop.
    pub database_pool: u32,
    /// Postgres connections of the control loop's own pool (its bookkeeping: recording a
    /// created machine, state changes, the lease nonces kept for a successor), so that it never
    /// waits behind API reads.
    pub control_pool: u32,
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
        // The pools' defaults are the planner's own, written once in `PoolPolicy::default()`.
        let pool = PoolPolicy::default();
        let written = |ms: shoal_core::Millis| {
            humantime::format_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
                .to_string()
        };
        let (default_idle_timeout, default_sandbox_retention, default_boot_timeout) = (
            written(pool.idle_timeout_ms),
            written(pool.retention_ms),
            written(pool.boot_timeout_ms),
        );
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
            &default_idle_timeout,
            Duration::from_millis(100),
        );
        let sandbox_retention = duration(
            "sandbox_retention",
            pick(&None, &file.sandbox_retention, "sandbox_retention"),
            &default_sandbox_retention,
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
            &default_boot_timeout,
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
            .map_or(Ok(ProviderKind::Process), |p| p.parse())
            .unwrap_or_else(|e| {
                errs.push(format!("provider: {e}"));
                ProviderKind::Process
            });
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
        let idle_policy = pick(&args.idle_policy, &file.idle_policy, "idle_policy")
            .map_or(Ok(crate::idle::IdlePolicy::Fixed), |p| p.parse())
            .unwrap_or_else(|e| {
                errs.push(format!("idle_policy: {e}"));
                crate::idle::IdlePolicy::Fixed
            });
        let idle_action = pick(&None, &file.idle_action, "idle_action")
            .map_or(Ok(provider.default_idle_action()), |a| {
                parse_idle_action(&a)
            })
            .unwrap_or_else(|e| {
                errs.push(format!("idle_action: {e}"));
                provider.default_idle_action()
            });
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
        let warm_pool = match &args.warm_pool {
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                errs.push(format!("warm_pool: `{v}` is not a count"));
                0
            }),
            None => file
                .warm_pool
                .as_ref()
                .map_or(0, |w| w.for_provider(provider)),
        };
        if warm_pool > MAX_WARM_POOL {
            errs.push(format!(
                "warm_pool: {warm_pool} is more than {MAX_WARM_POOL} blank sandboxes"
            ));
        }
        if warm_pool > 0 && provider == ProviderKind::Kubernetes {
            errs.push(
                "warm_pool: the kubernetes provider has no shared warm pool (a pod cannot be \
                 handed to another tenant's namespace); set it to 0"
                    .into(),
            );
        }
        if warm_pool > 0 && provider == ProviderKind::Docker {
            // Each tenant's containers share a network of their own; a claimed blank would stay
            // on the blanks' network, beside other tenants' claimed blanks.
            errs.push(
                "warm_pool: the docker provider has no shared warm pool yet (a claimed container \
                 would have to move to its tenant's network); set it to 0"
                    .into(),
            );
        }
        if let (Some(max), true) = (fleet_max_sandboxes, warm_pool > 0)
            && warm_pool >= max
        {
            errs.push(format!(
                "warm_pool: {warm_pool} blank sandboxes leave no room under fleet_max_sandboxes = {max}"
            ));
        }
        let metrics_max_tenants = match env_var("metrics_max_tenants") {
            Some(v) => v.parse().unwrap_or_else(|_| {
                errs.push(format!("SHOAL_METRICS_MAX_TENANTS: `{v}` is not a count"));
                0
            }),
            None => file.metrics_max_tenants.unwrap_or(500),
        };
        let count =
            |key: &str, file: Option<u32>, default: u32, errs: &mut Vec<String>| match env_var(key)
            {
                Some(v) => v.trim().parse().unwrap_or_else(|_| {
                    errs.push(format!(
                        "SHOAL_{}: `{v}` is not a count",
                        key.to_uppercase()
                    ));
                    default
                }),
                None => file.unwrap_or(default),
            };
        let database_pool = count("database_pool", file.database_pool, 16, &mut errs);
        let control_pool = count("control_pool", file.control_pool, 4, &mut errs);
        if !(2..=500).contains(&database_pool) {
            errs.push(format!(
                "database_pool: {database_pool} must be between 2 and 500"
            ));
        }
        if !(1..=64).contains(&control_pool) {
            errs.push(format!(
                "control_pool: {control_pool} must be between 1 and 64"
            ));
        }
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
        if provider == ProviderKind::Process && !agent_bin.exists() {
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
        if provider == ProviderKind::Fly {
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
        let docker =
            (provider == ProviderKind::Docker).then(|| file.tables().docker.unwrap_or_default());
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
        if provider == ProviderKind::Kubernetes {
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
        let kubernetes = kubernetes.filter(|_| provider == ProviderKind::Kubernetes);
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
                warm_pool,
                metrics_max_tenants,
                database_pool,
                control_pool,
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

/// The most blank sandboxes a warm pool may keep: a guard against a typo.
pub const MAX_WARM_POOL: u32 = 1_000;

/// `shoal-agent` beside the running `shoal` binary.
fn default_agent_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
        .unwrap_or_else(|| PathBuf::from("shoal-agent"))
}

#[cfg(test)]
mod tests;
