//! Webhook figures, measured end to end through the real binaries (run with
//! `cargo bench -p shoal-scheduler --bench webhooks`), on SQLite and, where it is installed, on
//! Postgres:
//!
//! 1. **Latency on an idle system**: from a job's event being written (its `timestamp`) to the
//!    local receiver holding the request, for jobs run one after another.
//! 2. **Delivery throughput**: a backlog of cancelled jobs' events is built against an endpoint
//!    that refuses connections (each tried once, the next try an hour away); then the endpoint is
//!    pointed at the receiver and the backlog made due, and the figure is events delivered per
//!    second from the first arrival to the last.
//! 3. **The outbox's cost per job**: two tenants run no-op jobs in alternating rounds in one
//!    run, one with an endpoint that hears of every job and one with none; jobs per second each.
//!
//! Results go to stdout; `docs/benchmarks.md` records them.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_loadtests::queuebench::enqueue_noop as enqueue;
use shoal_testkit::receiver::Receiver;
use shoal_testkit::server::Server;
use shoal_testkit::services::Postgres;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

async fn tenant(s: &Server, id: &str, sandboxes: u32) -> Result<()> {
    let limits = json!({"enqueue_rate_per_s": null, "jobs_per_month": null, "max_sandboxes": sandboxes, "min_warm": sandboxes});
    let (st, v) = s
        .send(
            Method::PUT,
            &format!("/v1/tenants/{id}"),
            &json!({"plan": "enterprise", "limits": limits}),
        )
        .await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    Ok(())
}

async fn webhook(s: &Server, url: &str, tenant: Option<&str>) -> Result<String> {
    let mut body = json!({"url": url});
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    let (st, v) = s.send(Method::POST, "/v1/webhooks", &body).await?;
    anyhow::ensure!(st == 201, "{st} {v}");
    Ok(v["id"].as_str().context("id")?.to_string())
}

/// Runs `n` closures' worth of work on `clients` concurrent tasks.
async fn fan<F, Fut>(n: usize, clients: usize, f: F) -> Result<Vec<String>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String>> + Send,
{
    let f = Arc::new(f);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let f = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (c..n).step_by(clients) {
                out.push(f(i).await?);
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

async fn wait_idle(s: &Server, tenant: &str) -> Result<()> {
    loop {
        let p = s.get(&format!("/v1/pools/{tenant}")).await?;
        if p["queued"] == 0 && p["running"] == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How the bench reaches the database behind the scheduler, to stage the backlog.
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    async fn exec(&self, sql: &'static str, bind: Option<&str>) -> Result<()> {
        match self {
            Db::Sqlite(p) => {
                let mut q = sqlx::query(sql);
                if let Some(b) = bind {
                    q = q.bind(b);
                }
                q.execute(p).await?;
            }
            Db::Postgres(p) => {
                let mut q = sqlx::query(sql);
                if let Some(b) = bind {
                    q = q.bind(b);
                }
                q.execute(p).await?;
            }
        }
        Ok(())
    }

    async fn count(&self, sql: &'static str) -> Result<i64> {
        Ok(match self {
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        })
    }
}

/// `SHOAL_BENCH_QUICK=1` runs a tenth of the sizes, to check the bench itself.
fn scaled(n: usize) -> usize {
    if std::env::var_os("SHOAL_BENCH_QUICK").is_some() {
        (n / 10).max(1)
    } else {
        n
    }
}

async fn bench(label: &str, s: Server, db: Db) -> Result<()> {
    let s = Arc::new(s);
    let rx = Receiver::start(0).await?;
    println!("== {label}");

    // 1. Latency on an idle system.
    tenant(&s, "idle", 1).await?;
    webhook(&s, &format!("{}/idle", rx.url), Some("idle")).await?;
    loop {
        if s.get("/v1/pools/idle").await?["sandboxes"]["ready"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::new();
    for i in 0..scaled(200) {
        let id = enqueue(&s, "idle").await?;
        let n = i + 1;
        anyhow::ensure!(
            rx.wait_until(Duration::from_secs(30), |r| r.len() >= n)
                .await,
            "job {id}'s event did not arrive"
        );
        let r = rx.received()[i].clone();
        let body: Value = serde_json::from_slice(&r.body)?;
        lat.push((r.at_ms - ms(&body["timestamp"])) as f64);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "job end to event received, idle (ms, n={}): p50 {:.0}  p99 {:.0}  max {:.0}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // 2. Delivery throughput from a backlog.
    let n = scaled(5000);
    tenant(&s, "backlog", 1).await?;
    let (st, _) = s
        .send(Method::POST, "/v1/tenants/backlog/drain", &json!({}))
        .await?;
    anyhow::ensure!(st == 200);
    let ids = fan(n, 8, {
        let s = Arc::clone(&s);
        move |_| {
            let s = Arc::clone(&s);
            async move { enqueue(&s, "backlog").await }
        }
    })
    .await?;
    // Port 1 on loopback refuses at once: every event is tried once and put off for an hour.
    let hook = webhook(&s, "http://127.0.0.1:1/closed", Some("backlog")).await?;
    let ids = Arc::new(ids);
    fan(n, 8, {
        let (s, ids) = (Arc::clone(&s), Arc::clone(&ids));
        move |i| {
            let (s, ids) = (Arc::clone(&s), Arc::clone(&ids));
            async move {
                let (st, v) = s
                    .send(
                        Method::POST,
                        &format!("/v1/jobs/{}/cancel", ids[i]),
                        &json!({}),
                    )
                    .await?;
                anyhow::ensure!(st == 200, "{st} {v}");
                Ok(String::new())
            }
        }
    })
    .await?;
    loop {
        let tried = db
            .count(
                "SELECT COUNT(*) FROM outbox_deliveries WHERE attempts >= 1 AND lease_id IS NULL AND state = 'pending'",
            )
            .await?;
        if tried >= n as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = rx.received().len();
    let target = format!("{}/backlog", rx.url);
    db.exec(
        "UPDATE webhook_endpoints SET url = $1 WHERE url LIKE '%/closed'",
        Some(&target),
    )
    .await?;
    db.exec(
        "UPDATE outbox_deliveries SET next_attempt_at = 0 WHERE state = 'pending'",
        None,
    )
    .await?;
    let _ = hook;
    anyhow::ensure!(
        rx.wait_until(Duration::from_secs(600), |r| r.len() >= before + n)
            .await,
        "the backlog did not drain"
    );
    let got = rx.received();
    let first = got[before].at;
    let last = got[before + n - 1].at;
    println!(
        "backlog of {n} events delivered: {:.2}s = {:.0} events/s",
        (last - first).as_secs_f64(),
        n as f64 / (last - first).as_secs_f64()
    );

    // 3. Jobs per second with and without an endpoint, alternating rounds in one run.
    tenant(&s, "plain", 4).await?;
    tenant(&s, "hooked", 4).await?;
    webhook(&s, &format!("{}/hooked", rx.url), Some("hooked")).await?;
    let per_round = scaled(500);
    let (mut plain, mut hooked) = (Vec::new(), Vec::new());
    for round in 0..6 {
        let order = if round % 2 == 0 {
            ["plain", "hooked"]
        } else {
            ["hooked", "plain"]
        };
        for t in order {
            let t0 = Instant::now();
            fan(per_round, 8, {
                let s = Arc::clone(&s);
                move |_| {
                    let s = Arc::clone(&s);
                    async move { enqueue(&s, t).await }
                }
            })
            .await?;
            wait_idle(&s, t).await?;
            let rate = per_round as f64 / t0.elapsed().as_secs_f64();
            (if t == "plain" {
                &mut plain
            } else {
                &mut hooked
            })
            .push(rate);
        }
    }
    let hooked_jobs = 6 * per_round;
    anyhow::ensure!(
        rx.wait_until(Duration::from_secs(120), |r| {
            r.iter().filter(|r| r.path == "/hooked").count() >= hooked_jobs
        })
        .await,
        "not every hooked job's event arrived"
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "no-op jobs/s, {per_round} per round x 6 alternating rounds, 8 clients, 4 sandboxes: without an endpoint {:.0} ({}), with one {:.0} ({})",
        mean(&plain),
        plain
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" "),
        mean(&hooked),
        hooked
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    // A failed try waits half an hour or more: the backlog stays put until it is made due.
    let env = [("RUST_LOG", "warn"), ("SHOAL_WEBHOOK_RETRY_INITIAL", "1h")];
    let s = Server::start(&["--idle-timeout", "10m"], &env).await?;
    let file = s.data_dir.join("shoal.db");
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&file)
                .busy_timeout(Duration::from_secs(30)),
        )
        .await?;
    bench("SQLite (the embedded default)", s, Db::Sqlite(db)).await?;

    if let Some(pg) = Postgres::start()? {
        let url = pg.create_database()?;
        let s = Server::start(&["--idle-timeout", "10m", "--database-url", &url], &env).await?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await?;
        bench("Postgres", s, Db::Postgres(db)).await?;
    }
    Ok(())
}
