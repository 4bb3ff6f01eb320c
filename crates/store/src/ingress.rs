//! The ingress queue: the platform pushes jobs into apalis (Redis or Postgres) even while no
//! scheduler runs, and a scheduler admits them when it is up, through the same admission code as
//! `POST /v1/jobs` (a callback the scheduler passes to [`run_ingress`]).
//!
//! Delivery is at least once (apalis re-enqueues a message whose worker vanished mid-way), and
//! admission is idempotent: [`IngressQueue::push`] gives every message without an idempotency key
//! a fresh one, so a message delivered twice is admitted once.
//!
//! How each outcome is handled:
//! - admitted (or already admitted under its key): acknowledged, and then deleted (below);
//! - [`AdmitError::Rejected`] (bad input, unknown tenant, quota used up): the message is aborted,
//!   which apalis records as `Killed` (Redis: the queue's `dead` set with the reason in its
//!   metadata; Postgres: the row's status and result). It is never retried;
//! - [`AdmitError::Retry`] (store unreachable, rate limited): retried in place with capped
//!   backoff until it goes through or the consumer stops; then apalis retries it later.
//!
//! Guards against apalis's known weak spots:
//! - Finished messages piling up. apalis-redis keeps every finished message's id in the queue's
//!   `done` set, its payload in the data hash and its metadata hash, and its own `vacuum` neither
//!   empties the `done` set nor spares a failed message still waiting for its retry. So a janitor
//!   (every [`ConsumerConfig::janitor_interval`]) pops ids from the `done` set and deletes exactly
//!   those messages' payload and metadata, in one Lua script, in batches. Rejected (`Killed`)
//!   messages are kept as the record of what was refused. On Postgres the janitor deletes the
//!   queue's `Done` rows.
//! - Workers sleeping on an idle queue. After an empty fetch an apalis 1.0 worker waits to be
//!   woken, and with no poll strategy only its heartbeat wakes it: a message pushed into an idle
//!   queue waited about 2.8 s (the 3 s heartbeat) before it was admitted, measured by
//!   `shoal-loadtests queue-bench`. So the worker polls the backend every
//!   [`ConsumerConfig::idle_poll`] while idle (Postgres: woken by `LISTEN/NOTIFY` too, which
//!   alone misses wake-ups). An idle poll is one cheap query per replica.
//! - Workers dying silently after a Redis restart. A worker whose backend errors ends its stream
//!   and nobody hears of it; a restarted Redis also forgets the worker's registration. So the
//!   consumer is a supervisor: it runs the worker as a task and, every
//!   [`ConsumerConfig::health_interval`], probes the backend on a connection of its own (Redis:
//!   `INFO server`'s `run_id`; Postgres: the postmaster's start time). If the worker ended, the
//!   probe fails, or the server's identity changed (it restarted), the worker is stopped, the
//!   supervisor waits (with backoff) until the backend answers again, and a new worker is built
//!   on fresh connections. The worker keeps its name across restarts, so on registering again
//!   apalis re-enqueues the messages it held in flight.

use apalis_core::backend::TaskSink;
use apalis_core::backend::ext::poll_strategy::{IntervalStrategy, PollWith, Strategy};
use apalis_core::error::{AbortError, BoxDynError, WorkerError};
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_postgres::{PostgresStorage, Pubsub};
use apalis_redis::{ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The queue's name when none is given.
pub const DEFAULT_QUEUE: &str = "shoal-ingress";

/// A job to admit: the fields of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngressJob {
    /// The tenant admitting it.
    pub tenant: String,
    /// What the agent runs it with.
    pub kind: String,
    /// Its input.
    pub spec: serde_json::Value,
    /// The tenant's key that makes a repeated admission return the first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Higher leases first; the default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Attempts allowed in all; the default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// How long one attempt may run; the default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

/// Why a message could not be admitted, as the admission callback says.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmitError {
    /// It never will be (bad input, unknown tenant, quota used up): recorded, not retried.
    #[error("rejected ({code}): {message}")]
    Rejected {
        /// The error code the API would answer.
        code: String,
        /// What was wrong.
        message: String,
    },
    /// Not now (store unreachable, rate limited): tried again, after `after` when given.
    #[error("not admitted yet: {message}")]
    Retry {
        /// The earliest time to try again, if the refusal says.
        after: Option<Duration>,
        /// Why not now.
        message: String,
    },
}

/// What went wrong with the queue itself.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// Redis refused or failed a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Postgres refused or failed a statement.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The queue library failed.
    #[error("apalis: {0}")]
    Queue(String),
    /// The URL names no queue backend.
    #[error("unsupported ingress URL `{0}` (redis://… or postgres://…)")]
    UnsupportedUrl(String),
}

/// Where the queue lives.
#[derive(Clone)]
pub enum IngressQueue {
    /// A Redis list.
    Redis {
        /// The server's URL.
        url: String,
        /// The queue's name.
        queue: String,
        /// The queue's storage.
        storage: RedisStorage<IngressJob>,
    },
    /// A Postgres table.
    Postgres {
        /// The database's pool.
        pool: PgPool,
        /// The queue's name.
        queue: String,
        /// The queue's storage.
        storage: PostgresStorage<IngressJob>,
    },
}

fn redis_config(queue: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(queue)
        // Short heartbeats: a consumer that died is noticed, and its messages re-enqueued, in
        // seconds rather than minutes.
        .heartbeat_interval(Duration::from_secs(3))
        .missed_heartbeats(3)
}

fn postgres_config(queue: &str) -> apalis_postgres::Config {
    apalis_postgres::Config::default()
        .queue(queue)
        .heartbeat_interval(Duration::from_secs(3))
        .missed_heartbeats(3)
}

impl IngressQueue {
    /// The queue at `url`: `redis://…` for apalis-redis, `postgres://…` for apalis-postgres
    /// (whose tables live in the `apalis` schema, apart from Shoal's).
    pub async fn connect(url: &str, queue: &str) -> Result<Self, IngressError> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            let conn = apalis_redis::connect(url).await?;
            Ok(IngressQueue::Redis {
                url: url.to_string(),
                queue: queue.to_string(),
                storage: RedisStorage::new(conn).with_config(redis_config(queue)),
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Self::postgres(pool, queue).await
        } else {
            Err(IngressError::UnsupportedUrl(url.into()))
        }
    }

    /// The queue in the database `pool` reaches (Shoal's own, say), set up if needed.
    pub async fn postgres(pool: PgPool, queue: &str) -> Result<Self, IngressError> {
        PostgresStorage::setup(&pool)
            .await
            .map_err(|e| IngressError::Queue(e.to_string()))?;
        Ok(IngressQueue::Postgres {
            storage: PostgresStorage::new(&pool).with_config(postgres_config(queue)),
            pool,
            queue: queue.to_string(),
        })
    }

    /// Pushes a job for a scheduler to admit. A job without an idempotency key is given a fresh
    /// one (`ingress-<uuid>`), so a redelivered message is not admitted twice; the job as pushed
    /// is answered.
    pub async fn push(&self, mut job: IngressJob) -> Result<IngressJob, IngressError> {
        if job.idempotency_key.is_none() {
            job.idempotency_key = Some(format!("ingress-{}", uuid::Uuid::now_v7().simple()));
        }
        match self {
            IngressQueue::Redis { storage, .. } => storage
                .clone()
                .push(job.clone())
                .await
                .map_err(|e| IngressError::Queue(e.to_string()))?,
            IngressQueue::Postgres { storage, .. } => storage
                .clone()
                .push(job.clone())
                .await
                .map_err(|e| IngressError::Queue(e.to_string()))?,
        }
        Ok(job)
    }

    /// Messages waiting or in flight, and finished ones not yet cleaned up: for tests and metrics.
    pub async fn stats(&self) -> Result<QueueStats, IngressError> {
        match self {
            IngressQueue::Redis { url, queue, .. } => {
                let cfg = redis_config(queue);
                let mut conn = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                let (stored, done, dead): (u64, u64, u64) = redis::pipe()
                    .hlen(cfg.job_data_hash())
                    .scard(cfg.done_jobs_set())
                    .scard(cfg.dead_jobs_set())
                    .query_async(&mut conn)
                    .await?;
                Ok(QueueStats {
                    stored,
                    done,
                    rejected: dead,
                })
            }
            IngressQueue::Postgres { pool, queue, .. } => {
                let (stored, done, dead): (i64, i64, i64) = sqlx::query_as(
                    "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'Done'), \
                     COUNT(*) FILTER (WHERE status = 'Killed') FROM apalis.jobs WHERE job_type = $1",
                )
                .bind(queue)
                .fetch_one(pool)
                .await?;
                Ok(QueueStats {
                    stored: stored as u64,
                    done: done as u64,
                    rejected: dead as u64,
                })
            }
        }
    }

    /// Deletes finished messages; answers how many. See the module's notes.
    pub async fn clean_finished(&self) -> Result<u64, IngressError> {
        match self {
            IngressQueue::Redis { url, queue, .. } => {
                let cfg = redis_config(queue);
                let mut conn = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                let script = redis::Script::new(CLEAN_DONE_LUA);
                let mut total = 0;
                loop {
                    let n: u64 = script
                        .key(cfg.done_jobs_set())
                        .key(cfg.job_data_hash())
                        .key(cfg.job_meta_hash())
                        .arg(CLEAN_BATCH)
                        .invoke_async(&mut conn)
                        .await?;
                    total += n;
                    if n < CLEAN_BATCH {
                        return Ok(total);
                    }
                }
            }
            IngressQueue::Postgres { pool, queue, .. } => {
                let r =
                    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'")
                        .bind(queue)
                        .execute(pool)
                        .await?;
                Ok(r.rows_affected())
            }
        }
    }

    /// Who the backend is now: changes when the server restarts.
    async fn identity(&self) -> Result<String, IngressError> {
        match self {
            IngressQueue::Redis { url, .. } => {
                let mut conn = redis::Client::open(url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await?;
                Ok(info
                    .lines()
                    .find_map(|l| l.strip_prefix("run_id:"))
                    .unwrap_or_default()
                    .trim()
                    .to_string())
            }
            IngressQueue::Postgres { pool, .. } => Ok(sqlx::query_scalar(
                "SELECT pg_postmaster_start_time()::text",
            )
            .fetch_one(pool)
            .await?),
        }
    }

    /// The same queue on fresh connections (after a restart of the backend).
    async fn reconnect(&self) -> Result<Self, IngressError> {
        match self {
            IngressQueue::Redis { url, queue, .. } => {
                let conn: ConnectionManager = apalis_redis::connect(url.as_str()).await?;
                Ok(IngressQueue::Redis {
                    url: url.clone(),
                    queue: queue.clone(),
                    storage: RedisStorage::new(conn).with_config(redis_config(queue)),
                })
            }
            // The pool replaces broken connections by itself.
            IngressQueue::Postgres { .. } => Ok(self.clone()),
        }
    }
}

/// Counts of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Messages stored (waiting, in flight, finished but not cleaned, rejected).
    pub stored: u64,
    /// Finished messages not yet cleaned up.
    pub done: u64,
    /// Messages refused for good.
    pub rejected: u64,
}

const CLEAN_BATCH: u64 = 500;

/// KEYS[1]: the done set, KEYS[2]: the data hash, KEYS[3]: the metadata key prefix. ARGV[1]: the
/// batch size. Pops finished ids and deletes their payload, result and metadata.
const CLEAN_DONE_LUA: &str = r#"
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3] .. ':result', id)
  redis.call('DEL', KEYS[3] .. ':' .. id)
end
return #ids
"#;

/// How the consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The worker's name: stable for one replica (its messages in flight are re-enqueued when it
    /// registers again), distinct between replicas.
    pub worker_name: String,
    /// How often the supervisor probes the backend (and restarts the worker if it ended, the
    /// probe failed or the server restarted).
    pub health_interval: Duration,
    /// How often the janitor deletes finished messages.
    pub janitor_interval: Duration,
    /// The longest wait between tries of a message that could not be admitted yet.
    pub max_retry_wait: Duration,
    /// How often an idle worker asks the backend for new messages.
    pub idle_poll: Duration,
}

impl ConsumerConfig {
    /// The defaults for a worker named `worker_name`.
    pub fn new(worker_name: impl Into<String>) -> Self {
        ConsumerConfig {
            worker_name: worker_name.into(),
            health_interval: Duration::from_secs(2),
            janitor_interval: Duration::from_secs(10),
            max_retry_wait: Duration::from_secs(10),
            idle_poll: Duration::from_millis(20),
        }
    }
}

type AdmitFuture = Pin<Box<dyn Future<Output = Result<(), AdmitError>> + Send>>;
type AdmitFn = Arc<dyn Fn(IngressJob) -> AdmitFuture + Send + Sync>;

/// What the worker's handler needs.
#[derive(Clone)]
struct Handler {
    admit: AdmitFn,
    max_retry_wait: Duration,
    stopping: tokio::sync::watch::Receiver<bool>,
}

async fn handle(job: IngressJob, h: Data<Handler>) -> Result<(), BoxDynError> {
    let mut wait = Duration::from_millis(200);
    let mut stopping = h.stopping.clone();
    loop {
        match (h.admit)(job.clone()).await {
            Ok(()) => return Ok(()),
            Err(AdmitError::Rejected { code, message }) => {
                tracing::warn!(tenant = %job.tenant, %code, %message, "ingress message rejected");
                return Err(AbortError::new(format!("{code}: {message}")).into());
            }
            Err(AdmitError::Retry { after, message }) => {
                if *stopping.borrow() {
                    // apalis keeps it and tries again later.
                    return Err(message.into());
                }
                let pause = after.unwrap_or(wait).min(h.max_retry_wait);
                tracing::debug!(tenant = %job.tenant, %message, ?pause, "ingress message not admitted yet");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopping.changed() => {}
                }
                wait = (wait * 2).min(h.max_retry_wait);
            }
        }
    }
}

/// Why the supervisor replaces its worker.
#[derive(Debug, thiserror::Error)]
enum Restart {
    #[error("the worker ended: {0}")]
    WorkerEnded(String),
    #[error("the backend does not answer: {0}")]
    Unhealthy(String),
    #[error("the backend restarted")]
    BackendRestarted,
}

/// Runs the ingress consumer until `shutdown` completes: every message is handed to `admit`,
/// which should run the same admission as `POST /v1/jobs` (validation, rate limit, quota,
/// idempotency). Survives backend restarts; returns only at shutdown.
pub async fn run_ingress<F, Fut>(
    queue: IngressQueue,
    config: ConsumerConfig,
    admit: F,
    shutdown: impl Future<Output = ()> + Send,
) where
    F: Fn(IngressJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), AdmitError>> + Send + 'static,
{
    let admit: AdmitFn = Arc::new(move |job| Box::pin(admit(job)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handler = Handler {
        admit,
        max_retry_wait: config.max_retry_wait,
        stopping: stop_rx,
    };
    tokio::pin!(shutdown);
    let mut queue = queue;
    let mut backoff = Duration::from_millis(100);
    loop {
        // Wait until the backend answers; remember who it is.
        let identity = loop {
            match queue.identity().await {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "ingress queue unreachable; waiting");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        match queue.reconnect().await {
            Ok(q) => queue = q,
            Err(e) => {
                tracing::warn!(error = %e, "ingress queue reconnect failed; retrying");
                continue;
            }
        }
        let (worker_stop_tx, worker_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut worker = spawn_worker(&queue, &config, handler.clone(), worker_stop_rx);
        let mut health = tokio::time::interval(config.health_interval);
        let mut janitor = tokio::time::interval(config.janitor_interval);
        let restart = loop {
            tokio::select! {
                _ = &mut shutdown => {
                    let _ = stop_tx.send(true);
                    let _ = worker_stop_tx.send(());
                    let _ = tokio::time::timeout(Duration::from_secs(30), &mut worker).await;
                    worker.abort();
                    return;
                }
                ended = &mut worker => {
                    break Restart::WorkerEnded(match ended {
                        Ok(Ok(())) => "stopped".into(),
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    });
                }
                _ = health.tick() => match queue.identity().await {
                    Ok(id) if id == identity => backoff = Duration::from_millis(100),
                    Ok(_) => break Restart::BackendRestarted,
                    Err(e) => break Restart::Unhealthy(e.to_string()),
                },
                _ = janitor.tick() => match queue.clean_finished().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(n, "ingress: deleted finished messages"),
                    Err(e) => tracing::warn!(error = %e, "ingress: cleaning finished messages failed"),
                },
            }
        };
        tracing::warn!(reason = %restart, "ingress worker restarting");
        // A worker that ended has been awaited already; one still running is asked to stop.
        if !matches!(restart, Restart::WorkerEnded(_)) {
            let _ = worker_stop_tx.send(());
            if tokio::time::timeout(Duration::from_secs(5), &mut worker)
                .await
                .is_err()
            {
                worker.abort();
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn spawn_worker(
    queue: &IngressQueue,
    config: &ConsumerConfig,
    handler: Handler,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<(), WorkerError>> {
    let signal = async move {
        let _ = stop.await;
        Ok::<(), WorkerError>(())
    };
    match queue {
        IngressQueue::Redis { storage, .. } => {
            // apalis-redis has no notification of a push: poll while idle.
            let backend = PollWith::new(storage.clone(), IntervalStrategy::new(config.idle_poll));
            let worker = WorkerBuilder::new(config.worker_name.as_str())
                .backend(backend)
                .data(handler)
                .build(handle);
            tokio::spawn(worker.run_until(signal))
        }
        IngressQueue::Postgres {
            pool,
            queue,
            storage,
        } => {
            let strategy = Strategy::new()
                .stream(Pubsub::new(pool.clone(), queue.clone()))
                .interval(config.idle_poll);
            let worker = WorkerBuilder::new(config.worker_name.as_str())
                .backend(PollWith::new(storage.clone(), strategy))
                .data(handler)
                .build(handle);
            tokio::spawn(worker.run_until(signal))
        }
    }
}
