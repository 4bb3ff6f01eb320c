//! Several scheduler replicas on one Postgres, under faults: replicas (the leader among them) are
//! killed with SIGKILL and restarted again and again while jobs flow, and Postgres itself restarts
//! once. At the end every accepted job is in exactly one terminal state, recorded once; no
//! idempotency key made two jobs; and the usage report equals the total computed independently from
//! the ledger. (The larger run, 20,000 jobs across 100 tenants, is `loadtests/faults.sh`.)

use anyhow::{Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use shoal_testkit::services::Postgres;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const TENANTS: usize = 8;
const JOBS: usize = 240;
const TOKEN: &str = "replicas-test-admin-token";

/// Sends until some replica answers; the idempotency key makes retries safe.
async fn enqueue(replicas: &[Server], start: usize, body: &Value) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = start;
    loop {
        let s = &replicas[i % replicas.len()];
        if let Ok(r) = s
            .req(Method::POST, "/v1/jobs")
            .json(body)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if status == 202 || status == 200 {
                return Ok(v["id"].as_str().unwrap().to_string());
            }
            if status == 400 || status == 404 || status == 403 {
                bail!("refused: {status} {v}");
            }
        }
        if Instant::now() > deadline {
            bail!("no replica accepted {body}");
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn psql_rows(pg: &Postgres, db: &str, sql: &str) -> Result<Vec<Vec<String>>> {
    let out = pg.query(db, &format!("COPY ({sql}) TO STDOUT"))?;
    Ok(out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_lose_nothing_and_double_nothing_under_kills() -> Result<()> {
    let Some(mut pg) = Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    let db = url.rsplit('/').next().unwrap().to_string();
    let env = [("SHOAL_ADMIN_TOKEN", TOKEN), ("RUST_LOG", "warn")];
    let args = ["--database-url", url.as_str(), "--idle-timeout", "3s"];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Server::start(&args, &env).await?);
    }
    for t in 0..TENANTS {
        let (st, v) = replicas[t % 3].send(Method::PUT, &format!("/v1/tenants/t{t}"), &json!({"plan": "team", "limits": {"max_sandboxes": 2, "enqueue_rate_per_s": null}})).await?;
        anyhow::ensure!(st == 201, "{st} {v}");
    }

    // Jobs flow in while replicas are killed one after another, leader included.
    let mut accepted: HashMap<String, String> = HashMap::new();
    let mut next_kill = Instant::now() + Duration::from_millis(1500);
    let mut killed = 0;
    let mut pg_restarted = false;
    for n in 0..JOBS {
        let key = format!("k{n}");
        let body = json!({"tenant": format!("t{}", n % TENANTS), "kind": "agent", "idempotency_key": key,
            "max_attempts": 50, "spec": {"command": ["sh", "-c", format!("sleep 0.05; echo {key}")]}});
        let id = enqueue(&replicas, n, &body).await?;
        // The same key again, through another replica: the same job.
        if n % 5 == 0 {
            let again = enqueue(&replicas, n + 1, &body).await?;
            assert_eq!(again, id, "idempotency key {key} made two jobs");
        }
        accepted.insert(id, key);
        tokio::time::sleep(Duration::from_millis(25)).await;
        if Instant::now() >= next_kill {
            let i = killed % 3;
            replicas[i].kill()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            replicas[i].restart().await?;
            killed += 1;
            next_kill = Instant::now() + Duration::from_millis(1500);
        }
        if n == JOBS / 2 && !pg_restarted {
            pg.restart()?;
            pg_restarted = true;
        }
    }
    assert!(killed >= 3, "only {killed} kills happened while enqueueing");

    // Everything accepted finishes, exactly once.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let rows = psql_rows(&pg, &db, "SELECT state, count(*) FROM jobs GROUP BY state")?;
        let open: i64 = rows
            .iter()
            .filter(|r| r[0] == "queued" || r[0] == "running")
            .map(|r| r[1].parse::<i64>().unwrap())
            .sum();
        if open == 0 {
            break;
        }
        // Keep killing while the queue drains, until every replica has died at least twice.
        if killed < 6 && Instant::now() >= next_kill {
            let i = killed % 3;
            replicas[i].kill()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            replicas[i].restart().await?;
            killed += 1;
            next_kill = Instant::now() + Duration::from_millis(1500);
        }
        if Instant::now() > deadline {
            bail!("jobs still open: {rows:?}\n{}", replicas[0].log());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let jobs = psql_rows(
        &pg,
        &db,
        "SELECT id, state, idempotency_key, result::text FROM jobs",
    )?;
    assert_eq!(
        jobs.len(),
        accepted.len(),
        "the store holds {} jobs for {} accepted",
        jobs.len(),
        accepted.len()
    );
    for row in &jobs {
        let key = accepted
            .get(&row[0])
            .unwrap_or_else(|| panic!("job {} was never accepted", row[0]));
        assert_eq!(&row[2], key);
        assert_eq!(row[1], "succeeded", "job {} ended {}", row[0], row[1]);
        // COPY's text format escapes backslashes.
        let result: Value = serde_json::from_str(&row[3].replace("\\\\", "\\"))?;
        assert_eq!(result["stdout"], format!("{key}\n"));
    }
    let keys: HashSet<&String> = jobs.iter().map(|r| &r[2]).collect();
    assert_eq!(keys.len(), jobs.len(), "an idempotency key made two jobs");

    // One recorded completion per job: the audit of completions the store accepted.
    let doubles = psql_rows(
        &pg,
        &db,
        "SELECT job_id, count(*) FROM job_completions GROUP BY job_id HAVING count(*) > 1",
    )?;
    assert!(doubles.is_empty(), "jobs completed twice: {doubles:?}");
    let completions = psql_rows(&pg, &db, "SELECT count(*) FROM job_completions")?;
    assert_eq!(completions[0][0].parse::<usize>()?, jobs.len());

    // The usage report equals the ledger's total computed here, independently.
    let ledger = psql_rows(
        &pg,
        &db,
        "SELECT sandbox_id, at, kind FROM ledger ORDER BY seq",
    )?;
    let live = replicas.iter().find(|r| r.pid().is_some()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let from = now - 3_600_000;
    let to = now - 1;
    let mut open: HashMap<&str, i64> = HashMap::new();
    let mut total_ms: i64 = 0;
    for r in &ledger {
        let at: i64 = r[1].parse()?;
        match r[2].as_str() {
            "running" => {
                open.entry(r[0].as_str()).or_insert(at);
            }
            _ => {
                if let Some(start) = open.remove(r[0].as_str()) {
                    total_ms += (at.min(to) - start.max(from)).max(0);
                }
            }
        }
    }
    for start in open.values() {
        total_ms += (to - start.max(&from)).max(0);
    }
    let fmt = |t: i64| {
        chrono::DateTime::from_timestamp_millis(t)
            .unwrap()
            .to_rfc3339()
            .replace('+', "%2B")
    };
    let u = live
        .get(&format!(
            "/v1/usage?granularity=hour&from={}&to={}",
            fmt(from),
            fmt(to)
        ))
        .await?;
    let reported = u["total"]["sandbox_seconds"].as_f64().unwrap();
    // Sandboxes still running at the report's end are counted to `to` by both.
    assert!(
        (reported - total_ms as f64 / 1000.0).abs() < 0.002,
        "usage {reported} s, ledger {} s",
        total_ms as f64 / 1000.0
    );
    Ok(())
}
