//! A replica started while its database or Redis is unreachable waits for them: it stays up,
//! `/readyz` answers 503 with the reason, and once the dependency answers it becomes ready and
//! runs jobs. It never exits for an unreachable dependency (it used to: `database migration
//! failed`).

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use shoal_testkit::services::{Postgres, Redis};
use std::time::Duration;

/// `/readyz`'s status and body.
async fn readyz(s: &Server) -> Result<(u16, Value)> {
    let r = reqwest::get(format!("{}/readyz", s.url)).await?;
    let st = r.status().as_u16();
    Ok((st, r.json().await.unwrap_or(Value::Null)))
}

/// Waits until `/readyz` answers 200. A request cut off while the waiting room hands the
/// socket to the API counts as not ready yet, as a load balancer's probe would take it.
async fn ready(s: &Server) -> Result<()> {
    s.wait_for("ready", Duration::from_secs(60), || async {
        Ok(matches!(readyz(s).await, Ok((200, _))).then_some(()))
    })
    .await
}

async fn runs_a_job(s: &Server) -> Result<()> {
    let (st, v) = s
        .send(Method::PUT, "/v1/tenants/acme", &json!({"plan": "pro"}))
        .await?;
    anyhow::ensure!(st == 201 || st == 200, "{st} {v}");
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "acme", "kind": "agent", "spec": {"command": ["echo", "waited"]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "{st} {v}");
    let id = v["id"].as_str().unwrap_or_default().to_string();
    let j = s
        .wait_for("the job", Duration::from_secs(60), || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok(matches!(j["state"].as_str(), Some("succeeded" | "failed" | "dead")).then_some(j))
        })
        .await?;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["result"]["stdout"], "waited\n");
    Ok(())
}

/// Asserts the replica is alive, not ready, and says why (`reason` in the message).
async fn waits_for(s: &Server, reason: &str) -> Result<()> {
    // Not ready from the start; once a try has failed (each is bounded), it says why.
    let v = s
        .wait_for(reason, Duration::from_secs(30), || async {
            let (st, v) = readyz(s).await?;
            assert_eq!(st, 503, "{v}");
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            Ok(msg.contains(reason).then_some(v))
        })
        .await?;
    eprintln!("not ready, as it should be: {v}");
    let alive = reqwest::get(format!("{}/healthz", s.url)).await?;
    assert_eq!(alive.status().as_u16(), 200);
    // Every other path says it is not ready rather than failing to connect.
    let r = s.req(Method::GET, "/v1/jobs").send().await?;
    assert_eq!(r.status().as_u16(), 503);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_postgres_is_down_waits_and_then_serves() -> Result<()> {
    let Some(mut pg) = Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    pg.stop();
    let mut s = Server::start_unready(&["--database-url", &url], &[]).await?;
    waits_for(&s, "database is unreachable").await?;
    pg.resume()?;
    ready(&s).await?;
    runs_a_job(&s).await?;
    assert!(s.stop().await?.success(), "{}", s.log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_waits_and_then_serves() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let Some(mut redis) = Redis::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    let redis_url = redis.url();
    redis.stop();
    let mut s =
        Server::start_unready(&["--database-url", &url, "--redis-url", &redis_url], &[]).await?;
    waits_for(&s, "Redis server is unreachable").await?;
    redis.resume()?;
    ready(&s).await?;
    runs_a_job(&s).await?;
    assert!(s.stop().await?.success(), "{}", s.log());
    Ok(())
}
