//! The client against the real `shoal serve` binary, and its push into a real Redis queue.

use anyhow::Result;
use shoal_client::{Client, ClientError, Ingress, JobQuery, NewJob, UsageQuery};
use shoal_testkit::server::Server;
use shoal_testkit::services::Redis;

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

    let got = shoal.job(&first.id).await?;
    assert_eq!((got.tenant.as_str(), got.kind.as_str()), ("acme", "agent"));
    assert_eq!(got.idempotency_key.as_deref(), Some("k1"));

    let page = shoal
        .jobs(&JobQuery {
            tenant: Some("acme".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(page.jobs.len(), 1);

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

#[tokio::test]
async fn push_into_the_ingress_queue() -> Result<()> {
    let Some(redis) = Redis::start()? else {
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
