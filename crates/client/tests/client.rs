//! The client against the real `shoal serve` binary (waiting for a job, following its output
//! while it runs), and (feature `ingress`) its push into a real Redis queue.

use anyhow::{Context, Result};
use shoal_client::{Client, ClientError, JobQuery, NewJob, UsageQuery};
use shoal_testkit::server::Server;
use std::time::Duration;

#[tokio::test]
async fn client_covers_the_api() -> Result<()> {
    let server = Server::start(&[], &[]).await?;
    let shoal = Client::new(&server.url, &server.token)?;

    let tenant = shoal.put_tenant("acme", "pro", None).await?;
    assert_eq!(tenant["id"], "acme");

    let job = NewJob::agent("acme", ["sleep", "30"]).idempotency_key("k1");
    let first = shoal.enqueue(&job).await?;
    assert!(first.created);
    let again = shoal.enqueue(&job).await?;
    assert_eq!(
        (again.id.as_str(), again.created),
        (first.id.as_str(), false)
    );

    // A batch: one entry per job, in order; the seen key answers the first job.
    let batch = [
        NewJob::agent("acme", ["true"]),
        NewJob::new("acme", "nope", serde_json::json!({})),
        job.clone(),
    ];
    let entries = shoal.enqueue_batch(&batch).await?;
    let statuses: Vec<u16> = entries.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [202, 400, 200]);
    assert_eq!(entries[2].id.as_deref(), Some(first.id.as_str()));
    let refused = entries[1].error.as_ref().context("the refusal's error")?;
    assert_eq!(
        (refused.code.as_str(), refused.field.as_deref()),
        ("invalid", Some("kind"))
    );
    let batched = entries[0].id.clone().context("the admitted job's id")?;
    assert_eq!(shoal.job(&batched).await?.tenant, "acme");

    let got = shoal.job(&first.id).await?;
    assert_eq!((got.tenant.as_str(), got.kind.as_str()), ("acme", "agent"));
    assert_eq!(got.idempotency_key.as_deref(), Some("k1"));

    let page = shoal
        .jobs(&JobQuery {
            tenant: Some("acme".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(page.jobs.len(), 2, "the first job and the batch's");

    let cancelled = shoal.cancel(&first.id).await?;
    assert!(
        ["cancelled", "succeeded", "failed"].contains(&cancelled.state.as_str()),
        "{}",
        cancelled.state
    );

    let usage = shoal
        .usage(&UsageQuery {
            tenant: Some("acme".into()),
            ..Default::default()
        })
        .await?;
    assert!(usage.is_object());

    // Errors carry Shoal's code and field.
    match shoal
        .enqueue(&NewJob::new("acme", "nope", serde_json::json!({})))
        .await
    {
        Err(ClientError::Api {
            status: 400, field, ..
        }) => assert_eq!(field.as_deref(), Some("kind")),
        other => panic!("expected a 400, got {other:?}"),
    }
    match shoal.job("job_missing").await {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
    Ok(())
}

#[cfg(feature = "ingress")]
#[tokio::test]
async fn push_into_the_ingress_queue() -> Result<()> {
    use shoal_client::Ingress;
    let Some(redis) = shoal_testkit::services::Redis::start()? else {
        return Ok(());
    };
    let ingress = Ingress::connect(&redis.url()).await?;
    let pushed = ingress
        .push(NewJob::agent("acme", ["true"]).idempotency_key("p1"))
        .await?;
    assert_eq!(pushed.idempotency_key.as_deref(), Some("p1"));
    let keyless = ingress.push(NewJob::agent("acme", ["true"])).await?;
    assert!(keyless.idempotency_key.is_some());
    let stats = shoal_store::ingress::IngressQueue::connect(
        &redis.url(),
        shoal_store::ingress::DEFAULT_QUEUE,
    )
    .await?
    .stats()
    .await?;
    assert_eq!(stats.stored, 2);
    Ok(())
}

/// Submit and wait; follow a job's output line by line while it runs (the job waits for a flag
/// the test creates only once it has read the first line), to the end; bounded waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_jobs_and_follows_their_output() -> Result<()> {
    let server = Server::start(&["--idle-timeout", "60s"], &[]).await?;
    let shoal = Client::new(&server.url, &server.token)?;
    shoal.put_tenant("acme", "pro", None).await?;

    let done = shoal
        .submit_and_wait(&NewJob::agent("acme", ["sh", "-c", "echo hi; exit 3"]))
        .await?;
    assert!(done.is_finished());
    assert_eq!(done.state, "failed");
    assert_eq!(done.result.as_ref().context("result")?["exit_code"], 3);
    assert_eq!(shoal.logs(&done.id).await?, b"hi\n");

    // The job waits for a flag in its own working directory, where the test writes it.
    let script = "echo one; while [ ! -e go ]; do sleep 0.05; done; echo two; printf three";
    let queued = shoal
        .enqueue(&NewJob::agent("acme", ["sh", "-c", script]))
        .await?;
    let mut log = shoal.follow_logs(&queued.id).await?;
    assert_eq!(log.next_line().await?.as_deref(), Some("one\n"));
    // Still running: it waits for the flag. A short wait says so.
    let now = shoal.wait_for(&queued.id, Duration::from_secs(1)).await?;
    assert_eq!(now.state, "running");
    assert!(server.write_in_job_sandbox(&queued.id, "go").await?);
    assert_eq!(log.next_line().await?.as_deref(), Some("two\n"));
    assert_eq!(log.next_line().await?.as_deref(), Some("three"));
    assert_eq!(log.next_line().await?, None, "the log ends with the job");
    assert_eq!(log.next_chunk().await?, None);
    let job = shoal.wait(&queued.id).await?;
    assert_eq!(job.state, "succeeded");

    match shoal.wait("job_missing").await {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
    Ok(())
}
