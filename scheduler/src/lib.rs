//! The Shoal scheduler: HTTP API (axum), admission, dispatcher, the control loop's wiring, and the
//! operator CLI. Thin: it wires the crates (planner, store, fleet, metering) together.

pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod bus;
pub mod cli;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod delivery;
pub mod error;
pub mod guard;
pub mod handover;
pub mod idle;
pub mod jobcli;
pub mod joblive;
pub mod jobwatch;
pub mod leader;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod retention;
pub mod schedules;
pub mod schemas;
pub mod sizing;
pub mod ssrf;
pub mod state;
pub mod telemetry;
pub mod usage;
pub mod usagefeed;
pub mod views;
pub mod waiting;
pub mod webhooks;
pub mod wire;

use anyhow::Context;
use config::Config;
use shoal_fleet::Provider;
use shoal_fleet::process::{ProcessConfig, ProcessProvider};
use shoal_store::Store;
use state::App;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the admin token came from, as the start banner says.
enum TokenSource {
    Environment,
    File(std::path::PathBuf),
    /// Made by this start and written to the file: the only case the banner shows it.
    Generated(std::path::PathBuf),
}

/// The admin token: `SHOAL_ADMIN_TOKEN`, else the one in `<data-dir>/admin-token`, else a new one
/// written there.
fn admin_token(cfg: &Config) -> anyhow::Result<(String, TokenSource)> {
    if let Ok(t) = std::env::var("SHOAL_ADMIN_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok((t.trim().to_string(), TokenSource::Environment));
    }
    let path = cfg.data_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok((t.trim().to_string(), TokenSource::File(path)));
    }
    let t = state::new_token("sha_");
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{t}\n").as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((t, TokenSource::Generated(path)))
}

/// Creates the data directory readable by this user only (0700).
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    // A data dir made by an older version, or by hand, is shut too; one already shut is left
    // alone (a container's read-only root filesystem refuses even a chmod that changes nothing).
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

/// Makes the embedded database readable by this user only (0600) before SQLite opens it; SQLite
/// gives its journal and WAL files the database file's mode.
fn private_sqlite_file(database_url: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(rest) = database_url.strip_prefix("sqlite:") else {
        return Ok(());
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {path}"))?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = format!("{path}{suffix}");
        if std::path::Path::new(&file).exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {file} private"))?;
        }
    }
    Ok(())
}

/// The provider the configuration names, reporting its observations on `sink`.
pub fn build_provider(
    cfg: &Config,
    sink: shoal_fleet::ObservationSink,
) -> anyhow::Result<Arc<dyn Provider>> {
    use config::ProviderKind;
    Ok(match cfg.provider {
        ProviderKind::Process => {
            let root = cfg.data_dir.join("sandboxes");
            std::fs::create_dir_all(&root)
                .with_context(|| format!("creating {}", root.display()))?;
            let isolation =
                shoal_fleet::process::jail::Isolation::probe(cfg.process_isolation, &root)?;
            if matches!(
                isolation,
                shoal_fleet::process::jail::Isolation::Unconfined { .. }
            ) && shoal_fleet::process::jail::is_root()
            {
                // Unconfined sandboxes still run as users of their own, who must pass through
                // (not list) the data directory to reach their working directories; the database
                // and the admin token stay 0600.
                use std::os::unix::fs::PermissionsExt;
                for dir in [&cfg.data_dir, &root] {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                        .with_context(|| format!("chmod {}", dir.display()))?;
                }
            }
            Arc::new(ProcessProvider::new(
                ProcessConfig {
                    agent_bin: cfg.agent_bin.clone(),
                    root,
                    stop_grace: Duration::from_secs(15),
                    isolation,
                    uid_base: cfg.process_uid_base,
                },
                sink,
            ))
        }
        ProviderKind::Fly => {
            let fly = cfg
                .fly
                .clone()
                .context("the [provider.fly] table is required")?;
            let token = cfg.fly_token.clone().context("FLY_API_TOKEN is required")?;
            Arc::new(shoal_fleet::fly::FlyProvider::new(fly, token, sink)?)
        }
        ProviderKind::Docker => {
            let mut docker = cfg.docker.clone().unwrap_or_default();
            if docker.agent_bin.is_none() {
                docker.agent_bin = Some(cfg.agent_bin.clone());
            }
            Arc::new(shoal_fleet::docker::DockerProvider::new(docker, sink)?)
        }
        ProviderKind::Kubernetes => {
            let k8s = cfg
                .kubernetes
                .clone()
                .context("the [provider.kubernetes] table is required")?;
            // Reading the kubeconfig (or in-cluster settings) is async; serve runs on the
            // multi-threaded runtime, so this waits for it in place.
            let provider = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(shoal_fleet::kubernetes::KubernetesProvider::new(k8s, sink))
            })?;
            Arc::new(provider)
        }
    })
}

/// Opens the store with a pool of the given size, for [`waiting::WaitingRoom::until_up`].
async fn shoal_store_open(
    url: &str,
    pool: shoal_store::PoolOptions,
) -> anyhow::Result<Arc<dyn Store>> {
    shoal_store::open_with(url, &pool)
        .await
        .context("opening the store")
}

/// The ingress queue to consume: Redis when `redis_url` is set, else the Postgres database; none
/// on the embedded default.
async fn ingress_queue(cfg: &Config) -> anyhow::Result<Option<shoal_store::ingress::IngressQueue>> {
    use shoal_store::ingress::{DEFAULT_QUEUE, IngressQueue};
    let url = match (&cfg.redis_url, cfg.database_url.starts_with("postgres")) {
        (Some(r), _) => r.clone(),
        (None, true) => cfg.database_url.clone(),
        (None, false) => return Ok(None),
    };
    Ok(Some(
        IngressQueue::connect(&url, DEFAULT_QUEUE)
            .await
            .context("connecting the ingress queue")?,
    ))
}

/// Admits what the platform pushed into the ingress queue, through the same admission as
/// `POST /v1/jobs`, until shutdown.
async fn ingress(app: Arc<App>, queue: shoal_store::ingress::IngressQueue) {
    use shoal_store::ingress::{AdmitError, ConsumerConfig, IngressJob, run_ingress};
    let worker = format!("{}-{}", hostname(), std::process::id());
    let admit_app = Arc::clone(&app);
    let admit = move |job: IngressJob| {
        let app = Arc::clone(&admit_app);
        async move {
            let req = admission::Enqueue {
                tenant: job.tenant,
                kind: job.kind,
                spec: job.spec,
                idempotency_key: job.idempotency_key,
                priority: job.priority,
                max_attempts: job.max_attempts,
                timeout_s: job.timeout_s,
                retry: None,
                run_at: None,
                delay_s: None,
                spec_text: None,
            };
            match admission::admit(&app, req, &shoal_core::audit::Actor::system("ingress")).await {
                Ok(_) => Ok(()),
                Err(e) if e.code == "rate_limited" || e.status.is_server_error() => {
                    Err(AdmitError::Retry {
                        after: e.retry_after_s.map(std::time::Duration::from_secs),
                        message: e.message,
                    })
                }
                Err(e) => Err(AdmitError::Rejected {
                    code: e.code.to_string(),
                    message: e.message,
                }),
            }
        }
    };
    run_ingress(
        queue,
        ConsumerConfig::new(worker),
        admit,
        app.shutdown.clone().cancelled_owned(),
    )
    .await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "shoal".into())
}

/// Runs the scheduler until `stop` resolves, then shuts down cleanly: agents are told to stop,
/// sandboxes are stopped, their last ledger entries written.
pub async fn serve(
    mut cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut stop: waiting::Stop = Box::pin(stop);
    private_data_dir(&cfg.data_dir)?;
    let (token, token_source) = admin_token(&cfg)?;
    private_sqlite_file(&cfg.database_url)?;
    // The port first: while the database or Redis cannot be reached, a waiting room answers
    // there (`/readyz` 503 with the reason) and each connection is retried with backoff.
    let std_listener = std::net::TcpListener::bind(cfg.listen)
        .with_context(|| format!("binding {}", cfg.listen))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    if cfg.listen.port() == 0 && cfg.advertise_url == config::advertise_url_for(cfg.listen) {
        // Listening on a port the system picks: the derived URL names the port actually bound.
        cfg.advertise_url = config::advertise_url_for(addr);
    }
    let room = waiting::WaitingRoom::open(std_listener.try_clone()?)?;
    let main_pool = shoal_store::PoolOptions {
        max_connections: cfg.database_pool,
        ..Default::default()
    };
    let Some(store) = room
        .until_up("database", &mut stop, || {
            shoal_store_open(&cfg.database_url, main_pool.clone())
        })
        .await
    else {
        return Ok(());
    };
    // The control loop's own pool (Postgres): its writes never wait behind API reads.
    let control_store = if cfg.database_url.starts_with("postgres") {
        let pool = shoal_store::PoolOptions {
            max_connections: cfg.control_pool,
            ..Default::default()
        };
        let Some(s) = room
            .until_up("database", &mut stop, || {
                shoal_store_open(&cfg.database_url, pool.clone())
            })
            .await
        else {
            return Ok(());
        };
        s
    } else {
        Arc::clone(&store)
    };
    let Some(rates) = room
        .until_up("Redis server", &mut stop, || async {
            limits::RateLimits::connect(cfg.redis_url.as_deref())
                .await
                .context("connecting the shared rate limits")
        })
        .await
    else {
        return Ok(());
    };
    let Some(ingress_queue) = room
        .until_up("ingress queue", &mut stop, || ingress_queue(&cfg))
        .await
    else {
        return Ok(());
    };
    let (sink, observations) = tokio::sync::mpsc::unbounded_channel();
    let provider = build_provider(&cfg, sink)?;
    // Not leading (yet): a provider that polls its cloud leaves it to the leader.
    provider.leading(false);
    provider.keep_leases_in(Arc::new(handover::StoreLeases::new(Arc::clone(
        &control_store,
    ))));
    // With the kubernetes provider, replicas elect their leader through a Lease.
    let k8s_lease = match &cfg.kubernetes {
        Some(k) if cfg.provider == config::ProviderKind::Kubernetes => {
            let client = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(shoal_fleet::kubernetes::client(k))
            })?;
            Some(shoal_fleet::kubernetes::lease::LeaseLock::new(
                client,
                &k.network.scheduler_namespace,
                "shoal-scheduler",
                &format!("{}-{}", hostname(), std::process::id()),
                Duration::from_secs(15),
            ))
        }
        _ => None,
    };
    let app = Arc::new(App::new(
        cfg,
        store,
        Arc::clone(&provider),
        token.clone(),
        rates,
    ));
    let holder = format!("{}-{}", hostname(), std::process::id());
    let postgres = app.cfg.database_url.starts_with("postgres");
    let (leadership, followers): (Arc<dyn leader::Leadership>, bool) = match &k8s_lease {
        Some(lock) => (Arc::new(leader::K8sLeader::new(lock.clone())), postgres),
        None if postgres => (
            Arc::new(leader::PgLeader::new(&app.cfg.database_url, &holder)),
            true,
        ),
        None => (Arc::new(leader::Solo), false),
    };
    if followers {
        let Some(bus) = room
            .until_up("database", &mut stop, || async {
                bus::PgBus::connect(&app.cfg.database_url)
                    .await
                    .context("connecting the wake-up bus")
            })
            .await
        else {
            return Ok(());
        };
        let _ = app.bus.set(bus.clone());
        tokio::spawn(bus.listen(Arc::downgrade(&app)));
    }
    let mut deps = control::Deps::of(&app);
    deps.store = control_store;
    let control = control::Control::new(deps, leadership);
    // The background tasks, awaited together at shutdown.
    let tasks = TaskTracker::new();
    tasks.spawn(Arc::clone(&control).run(observations, followers));
    tasks.spawn(live::run(Arc::clone(&app)));
    tasks.spawn(delivery::run(Arc::clone(&app), holder.clone()));
    tasks.spawn(audit::run(Arc::clone(&app)));
    tasks.spawn(retention::run(Arc::clone(&app), Arc::clone(&control)));
    tasks.spawn(usagefeed::run(Arc::clone(&app), Arc::clone(&control)));
    tasks.spawn(schedules::run(Arc::clone(&app), Arc::clone(&control)));
    if let Some(queue) = ingress_queue {
        tasks.spawn(ingress(Arc::clone(&app), queue));
    }
    tasks.close();

    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    // The token is shown only when this start made it: one given by the environment or kept in
    // the data directory is the operator's already, and logs travel further than terminals.
    let shown = match &token_source {
        TokenSource::Generated(path) => Some((token.as_str(), path)),
        _ => None,
    };
    let api = format!("http://{host}:{}/v1", addr.port());
    let dashboard = match shown {
        Some((t, _)) => format!("http://{host}:{}/?token={t}", addr.port()),
        None => format!("http://{host}:{}/", addr.port()),
    };
    let token_note = match &token_source {
        TokenSource::Environment => "from SHOAL_ADMIN_TOKEN".to_string(),
        TokenSource::File(path) => format!("in {}", path.display()),
        TokenSource::Generated(path) => format!("new, also in {}", path.display()),
    };
    if telemetry::json() {
        tracing::info!(
            provider = %app.cfg.provider,
            database = %telemetry::redact_url(&app.cfg.database_url),
            api = %api,
            dashboard = %dashboard,
            admin_token = %token_note,
            "Shoal is running"
        );
        if let Some((t, path)) = shown {
            tracing::info!(token = %t, file = %path.display(), "generated the admin token");
        }
    } else {
        println!(
            "Shoal is running ({} provider, {}).",
            app.cfg.provider,
            telemetry::redact_url(&app.cfg.database_url)
        );
        println!("  Dashboard:   {dashboard}");
        println!("  API:         {api}   (Authorization: Bearer <admin token>)");
        match shown {
            Some((t, path)) => {
                println!("  Admin token: {t}   (new, also in {})", path.display())
            }
            None => println!("  Admin token: ({token_note})"),
        }
    }

    if let Some(w) = &app.isolation_warning {
        let rule = if app.cfg.insecure_shared_host {
            "--insecure-shared-host is set: several tenants are admitted anyway"
        } else {
            "one tenant only is admitted (--insecure-shared-host admits more anyway)"
        };
        let line = "!".repeat(78);
        if !telemetry::json() {
            eprintln!("{line}\n  WARNING: {w}\n  {rule}.\n{line}");
        }
        tracing::warn!(warning = %w, insecure_shared_host = app.cfg.insecure_shared_host, "sandboxes are not isolated");
    }

    // The HTTP server outlives the background tasks, so agents can hand their jobs back.
    let http_stop = CancellationToken::new();
    let router = api::router(Arc::clone(&app));
    room.close().await;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let server = tokio::spawn(
        axum::serve(wire::JsonErrors(listener), router)
            .with_graceful_shutdown(http_stop.clone().cancelled_owned())
            .into_future(),
    );
    (&mut stop).await;
    tracing::info!("shutting down: stopping sandboxes");
    // Agents waiting for work are told to stop; busy ones finish or hand their job back while the
    // API still answers them.
    app.shutdown.cancel();
    control.settle(Duration::from_secs(20)).await;
    provider.shutdown().await;
    app.provider_stopped.send_replace(true);
    tasks.wait().await;
    http_stop.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
        Err(_) => tracing::warn!("HTTP server did not stop in time"),
        _ => {}
    }
    if telemetry::json() {
        tracing::info!("Shoal stopped");
    } else {
        println!("Shoal stopped.");
    }
    Ok(())
}
