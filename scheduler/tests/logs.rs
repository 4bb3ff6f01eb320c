//! Waiting on a job and reading its output while it runs, through the real binaries: a followed
//! log shows a line the job printed while the job is still running and ends when the job ends;
//! `wait_s` answers when the job ends (or after its seconds); bad `wait_s` values are refused;
//! another tenant's key sees neither the log nor the wait; waiters and followers that hang up are
//! forgotten; a job printing more than `max_log_bytes` keeps the newest bytes; a job printing
//! 200 MB grows neither the scheduler's memory nor the agent's by more than a few MiB; and on
//! Postgres, a replica's waiters and followers are woken by a job that runs against another.
//!
//! No timing assertions: each job waits for a flag file that the test creates only after it has
//! seen what it wants to see.

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::{Server, processes_under};
use std::time::Duration;

async fn tenant_with_key(s: &Server, id: &str) -> Result<String> {
    let (st, v) = s
        .send(
            Method::PUT,
            &format!("/v1/tenants/{id}"),
            &json!({"plan": "pro"}),
        )
        .await?;
    anyhow::ensure!(st == 201, "tenant {id}: {st} {v}");
    let (st, v) = s
        .send(Method::POST, &format!("/v1/tenants/{id}/keys"), &json!({}))
        .await?;
    anyhow::ensure!(st == 201, "key of {id}: {st} {v}");
    Ok(v["key"].as_str().context("key")?.to_string())
}

async fn enqueue(s: &Server, tenant: &str, script: &str) -> Result<String> {
    let (st, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": tenant, "kind": "agent", "spec": {"command": ["sh", "-c", script]}}),
        )
        .await?;
    anyhow::ensure!(st == 202, "enqueue: {st} {v}");
    Ok(v["id"].as_str().context("id")?.to_string())
}

/// A script that prints `before`, waits for file `flag` to exist in its working directory (the
/// test writes it there with `Server::write_in_job_sandbox`), then prints `after`.
fn gated(before: &str, flag: &str, after: &str) -> String {
    format!("echo {before}; while [ ! -e '{flag}' ]; do sleep 0.05; done; {after}")
}

async fn get_as(s: &Server, token: &str, path: &str) -> Result<(u16, Value)> {
    let r = s.anon(Method::GET, path).bearer_auth(token).send().await?;
    let st = r.status().as_u16();
    Ok((st, r.json().await.unwrap_or(Value::Null)))
}

/// Requests waiting on one job, as `/metrics` counts them.
async fn watchers(s: &Server) -> Result<i64> {
    let text = s.req(Method::GET, "/metrics").send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix("shoal_job_watchers "))
        .and_then(|v| v.trim().parse().ok())
        .context("no shoal_job_watchers in /metrics")
}

async fn wait_watchers(s: &Server, what: &str, ok: impl Fn(i64) -> bool) -> Result<()> {
    s.wait_for(what, Duration::from_secs(30), || async {
        Ok(ok(watchers(s).await?).then_some(()))
    })
    .await
}

/// Reads a followed log until `want` appears in it; what was read so far.
async fn read_until(resp: &mut reqwest::Response, seen: &mut Vec<u8>, want: &str) -> Result<()> {
    while !String::from_utf8_lossy(seen).contains(want) {
        match tokio::time::timeout(Duration::from_secs(60), resp.chunk()).await?? {
            Some(c) => seen.extend_from_slice(&c),
            None => bail!(
                "the log ended before `{want}`: {}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_and_wait_see_the_job_as_it_runs_and_ends() -> Result<()> {
    let s = Server::start(&["--idle-timeout", "60s"], &[]).await?;
    let acme = tenant_with_key(&s, "acme").await?;
    let globex = tenant_with_key(&s, "globex").await?;

    let id = enqueue(
        &s,
        "acme",
        &gated("started", "go", "echo finished; echo to-stderr >&2"),
    )
    .await?;

    // Bad `wait_s` values are refused in the contract's shape, naming the field.
    for bad in ["61", "-1", "soon", "1.5", "", "99999999999999999999999"] {
        let (st, v) = s
            .send(
                Method::GET,
                &format!("/v1/jobs/{id}?wait_s={bad}"),
                &json!(null),
            )
            .await?;
        assert_eq!(
            (
                st,
                v["error"]["code"].as_str(),
                v["error"]["field"].as_str()
            ),
            (400, Some("invalid"), Some("wait_s")),
            "wait_s={bad}: {v}"
        );
    }
    let (st, v) = s
        .send(Method::GET, &format!("/v1/jobs/{id}?wait=5"), &json!(null))
        .await?;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{v}"
    );
    let (st, _) = s
        .send(Method::GET, "/v1/jobs/job_nope?wait_s=5", &json!(null))
        .await?;
    assert_eq!(st, 404);
    let (st, v) = s
        .send(
            Method::GET,
            &format!("/v1/jobs/{id}/logs?follow=maybe"),
            &json!(null),
        )
        .await?;
    assert_eq!(st, 400, "{v}");

    // Another tenant's key learns nothing of the job: not its log, not its end.
    for path in [
        format!("/v1/jobs/{id}/logs"),
        format!("/v1/jobs/{id}/logs?follow=true"),
        format!("/v1/jobs/{id}?wait_s=1"),
    ] {
        let (st, v) = get_as(&s, &globex, &path).await?;
        assert_eq!(st, 404, "{path} as globex: {v}");
        let r = s.anon(Method::GET, &path).send().await?;
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
    }

    // Follow the job's log as its own tenant: `started` shows while it still runs.
    let mut follow = s
        .anon(Method::GET, &format!("/v1/jobs/{id}/logs?follow=true"))
        .bearer_auth(&acme)
        .send()
        .await?;
    assert_eq!(follow.status().as_u16(), 200);
    assert!(
        follow.headers()["content-type"]
            .to_str()?
            .starts_with("text/plain"),
        "{:?}",
        follow.headers()
    );
    let mut seen = Vec::new();
    read_until(&mut follow, &mut seen, "started\n").await?;
    let job = s.get(&format!("/v1/jobs/{id}")).await?;
    assert_eq!(job["state"], "running", "the job waits for its flag: {job}");
    // A short wait answers with the job still running.
    let (st, job) = get_as(&s, &acme, &format!("/v1/jobs/{id}?wait_s=1")).await?;
    assert_eq!((st, job["state"].as_str()), (200, Some("running")), "{job}");
    // The plain log is the output so far.
    let (st, _) = get_as(&s, &globex, &format!("/v1/jobs/{id}/logs")).await?;
    assert_eq!(st, 404);
    let so_far = s
        .req(Method::GET, &format!("/v1/jobs/{id}/logs"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(so_far, "started\n");

    // A wait in flight answers once the job ends: it is waiting (with the follower) before the
    // flag is created.
    let waiter = {
        let (url, token) = (format!("{}/v1/jobs/{id}?wait_s=60", s.url), acme.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await?;
            anyhow::Ok(r.json::<Value>().await?)
        })
    };
    wait_watchers(&s, "the follower and the waiter", |n| n >= 2).await?;
    assert!(s.write_in_job_sandbox(&id, "go").await?);
    let ended = waiter.await??;
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert_eq!(ended["result"]["stdout"], "started\nfinished\n");

    // The follower gets the rest and its answer ends with the job.
    let rest = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(c) = follow.chunk().await? {
            seen.extend_from_slice(&c);
        }
        anyhow::Ok(())
    })
    .await;
    rest.context("the followed log did not end with the job")??;
    let text = String::from_utf8(seen)?;
    assert!(text.starts_with("started\n"), "{text}");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["finished", "started", "to-stderr"], "{text}");
    // Once ended, the plain log is the same and a wait answers at once.
    let after = s
        .req(Method::GET, &format!("/v1/jobs/{id}/logs"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(after, text);
    let (_, job) = get_as(&s, &acme, &format!("/v1/jobs/{id}?wait_s=60")).await?;
    assert_eq!(job["state"], "succeeded");

    // A cancel ends a wait too.
    let long = enqueue(&s, "acme", &gated("long", "never", "true")).await?;
    let waiter = {
        let url = format!("{}/v1/jobs/{long}?wait_s=60", s.url);
        let token = s.token.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await?;
            anyhow::Ok(r.json::<Value>().await?)
        })
    };
    wait_watchers(&s, "the waiter on the long job", |n| n >= 1).await?;
    let (st, _) = s
        .send(Method::POST, &format!("/v1/jobs/{long}/cancel"), &json!({}))
        .await?;
    assert_eq!(st, 200);
    assert_eq!(waiter.await??["state"], "cancelled");

    // Many waiters and followers that hang up are forgotten: nothing stays behind for them.
    let busy = enqueue(&s, "acme", &gated("busy", "also-never", "true")).await?;
    let mut hung = Vec::new();
    for i in 0..40 {
        let path = if i % 2 == 0 {
            format!("{}/v1/jobs/{busy}?wait_s=60", s.url)
        } else {
            format!("{}/v1/jobs/{busy}/logs?follow=true", s.url)
        };
        let token = s.token.clone();
        hung.push(tokio::spawn(async move {
            let mut r = reqwest::Client::new()
                .get(path)
                .bearer_auth(token)
                .send()
                .await?;
            while r.chunk().await?.is_some() {}
            anyhow::Ok(())
        }));
    }
    wait_watchers(&s, "40 waiters and followers", |n| n >= 40).await?;
    for h in &hung {
        h.abort();
    }
    wait_watchers(&s, "the hung-up waiters to be forgotten", |n| n == 0).await?;
    s.send(Method::POST, &format!("/v1/jobs/{busy}/cancel"), &json!({}))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_longer_than_max_log_bytes_keeps_its_newest_bytes() -> Result<()> {
    let s = Server::start(&[], &[("SHOAL_MAX_LOG_BYTES", "4KiB")]).await?;
    tenant_with_key(&s, "acme").await?;
    // 100,000 bytes in numbered lines. (On one stream: two pipes are read as their bytes come,
    // and a pipe that the command fills faster than it is read holds its bytes back a while.)
    let id = enqueue(
        &s,
        "acme",
        "i=0; while [ $i -lt 5000 ]; do printf 'line %013d\\n' $i; i=$((i+1)); done; echo last",
    )
    .await?;
    let job = s.get(&format!("/v1/jobs/{id}?wait_s=60")).await?;
    assert_eq!(job["state"], "succeeded", "{job}");
    let log = s
        .req(Method::GET, &format!("/v1/jobs/{id}/logs"))
        .send()
        .await?
        .bytes()
        .await?;
    let mut all = String::new();
    for i in 0..5000 {
        all.push_str(&format!("line {i:013}\n"));
    }
    all.push_str("last\n");
    assert_eq!(log.len(), 4096);
    assert_eq!(
        String::from_utf8_lossy(&log),
        all[all.len() - 4096..],
        "the newest 4 KiB, in order"
    );
    Ok(())
}

/// `VmRSS` or `VmHWM` (the peak) of a process, in bytes.
fn memory(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for {pid}"))?;
    Ok(kb * 1024)
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_printing_200_mb_keeps_memory_bounded() -> Result<()> {
    let s = Server::start(&["--idle-timeout", "60s"], &[]).await?;
    tenant_with_key(&s, "acme").await?;
    // Warm the scheduler up (a sandbox, an agent, a job and its log) before measuring.
    let warm = enqueue(&s, "acme", "echo warm").await?;
    assert_eq!(
        s.get(&format!("/v1/jobs/{warm}?wait_s=60")).await?["state"],
        "succeeded"
    );
    let pid = s.pid().context("scheduler pid")?;
    let before = memory(pid, "VmRSS")?;

    let id = enqueue(
        &s,
        "acme",
        "head -c 200000000 /dev/zero | tr '\\0' x; echo; echo the-end",
    )
    .await?;
    // Followed all the way (the in-memory fan-out to a follower is part of what is measured).
    let mut follow = s
        .req(Method::GET, &format!("/v1/jobs/{id}/logs?follow=true"))
        .send()
        .await?;
    let (mut streamed, mut tail) = (0u64, Vec::new());
    while let Some(c) = tokio::time::timeout(Duration::from_secs(300), follow.chunk()).await?? {
        streamed += c.len() as u64;
        tail.extend_from_slice(&c);
        let keep = tail.len().saturating_sub(64);
        tail.drain(..keep);
    }
    assert!(
        String::from_utf8_lossy(&tail).ends_with("x\nthe-end\n"),
        "{}",
        String::from_utf8_lossy(&tail)
    );
    let job = s.get(&format!("/v1/jobs/{id}?wait_s=60")).await?;
    assert_eq!(job["state"], "succeeded", "{job}");

    let peak = memory(pid, "VmHWM")?;
    let agent = processes_under(&s.data_dir)
        .into_iter()
        .find(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .is_ok_and(|e| e.file_name().is_some_and(|n| n == "shoal-agent"))
        })
        .context("the agent is still up (idle timeout 60 s)")?;
    let agent_peak = memory(agent, "VmHWM")?;
    let kept = s
        .req(Method::GET, &format!("/v1/jobs/{id}/logs"))
        .send()
        .await?
        .bytes()
        .await?;
    eprintln!(
        "200 MB job: scheduler RSS before {} MiB, peak {} MiB; agent peak {} MiB; {} MiB streamed \
         to the follower, {} bytes kept",
        before / MIB,
        peak / MIB,
        agent_peak / MIB,
        streamed / MIB,
        kept.len()
    );
    assert_eq!(kept.len() as u64, MIB, "the newest 1 MiB is kept");
    assert!(kept.ends_with(b"x\nthe-end\n"));
    assert!(
        peak < before + 32 * MIB,
        "the scheduler's peak RSS grew from {before} to {peak} bytes"
    );
    assert!(
        agent_peak < 64 * MIB,
        "the agent's peak RSS was {agent_peak} bytes"
    );
    Ok(())
}

/// Two replicas on one Postgres, their slow re-read turned off (`job_recheck` 10 min): a job's
/// waiters and followers on both replicas see its output and its end, so the replica its agent
/// does not talk to is woken by the other's notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_wake_each_others_waiters_and_followers() -> Result<()> {
    let Some(pg) = shoal_testkit::services::Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    let env = [
        ("SHOAL_ADMIN_TOKEN", "replicas-token"),
        ("SHOAL_JOB_RECHECK", "10m"),
    ];
    let args = ["--database-url", url.as_str(), "--idle-timeout", "60s"];
    let a = Server::start(&args, &env).await?;
    let b = Server::start(&args, &env).await?;
    tenant_with_key(&a, "acme").await?;
    let id = enqueue(&a, "acme", &gated("started", "go", "echo finished")).await?;

    let mut followers = Vec::new();
    let mut waiters = Vec::new();
    for s in [&a, &b] {
        let mut f = s
            .req(Method::GET, &format!("/v1/jobs/{id}/logs?follow=true"))
            .send()
            .await?;
        let mut seen = Vec::new();
        read_until(&mut f, &mut seen, "started\n").await?;
        followers.push((f, seen));
        let (u, t) = (format!("{}/v1/jobs/{id}?wait_s=60", s.url), s.token.clone());
        waiters.push(tokio::spawn(async move {
            let r = reqwest::Client::new().get(u).bearer_auth(t).send().await?;
            anyhow::Ok(r.json::<Value>().await?)
        }));
    }
    wait_watchers(&a, "replica a's follower and waiter", |n| n >= 2).await?;
    wait_watchers(&b, "replica b's follower and waiter", |n| n >= 2).await?;
    let mut released = false;
    for s in [&a, &b] {
        released |= s.write_in_job_sandbox(&id, "go").await?;
    }
    assert!(released, "the job's sandbox is on one of the replicas");
    for w in waiters {
        let job = w.await??;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    for (mut f, mut seen) in followers {
        read_until(&mut f, &mut seen, "finished\n").await?;
        let end = tokio::time::timeout(Duration::from_secs(60), f.chunk()).await??;
        assert!(end.is_none(), "the followed log ends with the job");
        assert_eq!(String::from_utf8(seen)?, "started\nfinished\n");
    }
    Ok(())
}
