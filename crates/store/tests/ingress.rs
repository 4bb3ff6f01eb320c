//! The ingress queue against real servers: jobs pushed while no consumer runs are admitted once it
//! starts, exactly once per idempotency key, bad ones are recorded as rejected and not retried,
//! finished messages are cleaned away, and the consumer recovers from a Redis restart.

use anyhow::{Result, bail};
use serde_json::json;
use shoal_core::audit::Actor;
use shoal_core::{LimitsPatch, PlanTier};
use shoal_store::ingress::{
    AdmitError, ConsumerConfig, DEFAULT_QUEUE, IngressJob, IngressQueue, QueueStats, run_ingress,
};
use shoal_store::{Admitted, JobFilter, NewJob, PostgresStore, Store};
use shoal_testkit::services::{Postgres, Redis};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A stand-in for the scheduler's admission: the kind is checked, the tenant must exist, and the
/// store admits with its idempotency key and quota.
async fn admit(
    store: Arc<dyn Store>,
    calls: Arc<AtomicU32>,
    job: IngressJob,
) -> Result<(), AdmitError> {
    calls.fetch_add(1, Ordering::SeqCst);
    if !["agent", "semantic_diff", "flaky_analysis"].contains(&job.kind.as_str()) {
        return Err(AdmitError::Rejected {
            code: "invalid".into(),
            message: format!("unknown kind `{}`", job.kind),
        });
    }
    let retry = |e: shoal_store::StoreError| AdmitError::Retry {
        after: None,
        message: e.to_string(),
    };
    if store.tenant(&job.tenant).await.map_err(retry)?.is_none() {
        return Err(AdmitError::Rejected {
            code: "not_found".into(),
            message: format!("no tenant `{}`", job.tenant),
        });
    }
    let new = NewJob {
        id: format!("job_{}", uuid::Uuid::now_v7().simple()),
        tenant: job.tenant,
        kind: job.kind,
        spec: job.spec.into(),
        idempotency_key: job.idempotency_key,
        priority: job.priority.unwrap_or(0),
        max_attempts: job.max_attempts.unwrap_or(3),
        timeout_s: job.timeout_s.unwrap_or(3600),
        created_at: 1,
        run_at: None,
        retry: Default::default(),
        schedule: None,
    };
    match store
        .admit(new, 0, None, &Actor::admin())
        .await
        .map_err(retry)?
    {
        Admitted::Created { .. } | Admitted::Existing(_) => Ok(()),
        Admitted::QuotaExceeded { used, limit } => Err(AdmitError::Rejected {
            code: "quota_exceeded".into(),
            message: format!("{used} of {limit}"),
        }),
    }
}

fn agent_job(key: Option<&str>) -> IngressJob {
    IngressJob {
        tenant: "t".into(),
        kind: "agent".into(),
        spec: json!({"command": ["true"]}),
        idempotency_key: key.map(str::to_string),
        priority: None,
        max_attempts: None,
        timeout_s: None,
    }
}

/// Polls `check` until it holds; fails after a generous bound (a hang, not a timing check).
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn job_keys(store: &Arc<dyn Store>) -> Result<Vec<String>> {
    let jobs = store
        .jobs(&JobFilter {
            tenant: Some("t".into()),
            limit: 1000,
            ..Default::default()
        })
        .await?;
    let mut keys: Vec<String> = jobs
        .into_iter()
        .map(|j| j.idempotency_key.unwrap_or_default())
        .collect();
    keys.sort();
    Ok(keys)
}

struct Consumer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    calls: Arc<AtomicU32>,
}

fn start_consumer(queue: IngressQueue, store: Arc<dyn Store>) -> Consumer {
    let calls = Arc::new(AtomicU32::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut config = ConsumerConfig::new("test-replica");
    config.health_interval = Duration::from_millis(300);
    config.janitor_interval = Duration::from_millis(300);
    let c = Arc::clone(&calls);
    let task = tokio::spawn(run_ingress(
        queue,
        config,
        move |job| admit(Arc::clone(&store), Arc::clone(&c), job),
        async move {
            let _ = stopped.await;
        },
    ));
    Consumer { stop, task, calls }
}

async fn shoal_store(pg: &Postgres) -> Result<(Arc<dyn Store>, PostgresStore)> {
    let url = pg.create_database()?;
    let store = PostgresStore::open(&url).await?;
    store
        .put_tenant(
            "t",
            PlanTier::Enterprise,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await?;
    Ok((Arc::new(store.clone()), store))
}

/// Pushes while no consumer runs; then the consumer admits everything once and cleans up.
async fn push_then_admit(queue: &IngressQueue, store: &Arc<dyn Store>) -> Result<Consumer> {
    queue.push(agent_job(Some("a"))).await?;
    // The same key twice: one job.
    queue.push(agent_job(Some("dup"))).await?;
    queue.push(agent_job(Some("dup"))).await?;
    // No key: the queue gives it one, so it too is admitted once.
    let keyless = queue.push(agent_job(None)).await?;
    let keyless = keyless.idempotency_key.unwrap();
    assert!(keyless.starts_with("ingress-"));
    // Bad input: rejected for good.
    queue
        .push(IngressJob {
            kind: "no_such_kind".into(),
            ..agent_job(Some("bad"))
        })
        .await?;
    assert!(
        job_keys(store).await?.is_empty(),
        "nothing admitted without a consumer"
    );

    let consumer = start_consumer(queue.clone(), Arc::clone(store));
    let mut want = vec!["a".to_string(), "dup".into(), keyless];
    want.sort();
    eventually("the pushed jobs to be admitted", || async {
        Ok(job_keys(store).await? == want)
    })
    .await?;
    eventually(
        "finished messages to be cleaned and the bad one recorded",
        || async {
            let s = queue.stats().await?;
            Ok(s == QueueStats {
                stored: 1,
                done: 0,
                rejected: 1,
            })
        },
    )
    .await?;
    // Five messages, each handled once: the rejected one was not retried.
    assert_eq!(consumer.calls.load(Ordering::SeqCst), 5);
    assert_eq!(job_keys(store).await?, want);
    Ok(consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_ingress_admits_once_and_survives_a_restart() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let Some(mut redis) = Redis::start_persistent()? else {
        return Ok(());
    };
    let (store, _) = shoal_store(&pg).await?;
    let queue = IngressQueue::connect(&redis.url(), DEFAULT_QUEUE).await?;
    let consumer = push_then_admit(&queue, &store).await?;

    // Redis crashes and comes back: the consumer notices, rebuilds its worker, and admits what
    // is pushed afterwards.
    redis.restart()?;
    let queue = IngressQueue::connect(&redis.url(), DEFAULT_QUEUE).await?;
    queue.push(agent_job(Some("after-restart"))).await?;
    eventually("a job pushed after the restart to be admitted", || async {
        Ok(job_keys(&store)
            .await?
            .contains(&"after-restart".to_string()))
    })
    .await?;

    // Redis down for a while, with a message pushed just before: admitted once it is back.
    queue.push(agent_job(Some("before-outage"))).await?;
    redis.stop();
    redis.resume()?;
    eventually(
        "the message pushed before the outage to be admitted",
        || async {
            Ok(job_keys(&store)
                .await?
                .contains(&"before-outage".to_string()))
        },
    )
    .await?;
    assert_eq!(job_keys(&store).await?.len(), 5, "no job admitted twice");

    let _ = consumer.stop.send(());
    consumer.task.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_ingress_admits_once() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let (store, pg_store) = shoal_store(&pg).await?;
    // The queue in Shoal's own database (apalis keeps to its `apalis` schema).
    let queue = IngressQueue::postgres(pg_store.pool().clone(), DEFAULT_QUEUE).await?;
    let consumer = push_then_admit(&queue, &store).await?;
    let _ = consumer.stop.send(());
    consumer.task.await?;
    Ok(())
}

/// A message that cannot be admitted yet (the store is unreachable) is retried, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried() -> Result<()> {
    let Some(redis) = Redis::start()? else {
        return Ok(());
    };
    let queue = IngressQueue::connect(&redis.url(), "retry-test").await?;
    queue.push(agent_job(Some("k"))).await?;
    let tries = Arc::new(AtomicU32::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut config = ConsumerConfig::new("retry-replica");
    config.max_retry_wait = Duration::from_millis(20);
    let t = Arc::clone(&tries);
    let task = tokio::spawn(run_ingress(
        queue.clone(),
        config,
        move |_job| {
            let t = Arc::clone(&t);
            async move {
                if t.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(AdmitError::Retry {
                        after: None,
                        message: "store unavailable".into(),
                    })
                } else {
                    Ok(())
                }
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    eventually("the fourth try to succeed", || async {
        Ok(tries.load(Ordering::SeqCst) >= 4 && queue.stats().await?.rejected == 0)
    })
    .await?;
    eventually("the message to finish", || async {
        let s = queue.stats().await?;
        Ok(s.stored == 0 || s.done == 1)
    })
    .await?;
    assert_eq!(tries.load(Ordering::SeqCst), 4);
    let _ = stop.send(());
    task.await?;
    Ok(())
}
