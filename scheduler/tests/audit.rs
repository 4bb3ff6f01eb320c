//! The audit log and retention through the real binary (docs/adr/0011-audit-log-and-retention.md):
//! calls leave records naming the right actor and no secret, `shoal audit verify` holds on an
//! honest log and fails on one edited in the database, and retention exports finished jobs to
//! `<data-dir>/export/` before it deletes them, keeping the audit log.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::time::Duration;

/// Every record of the log, read page by page with the admin token.
async fn all_records(s: &Server) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = "0".to_string();
    loop {
        let page = s.get(&format!("/v1/audit?after={after}&limit=7")).await?;
        let records = page["records"].as_array().context("records")?.clone();
        if records.is_empty() {
            return Ok(out);
        }
        after = page["next_cursor"]
            .as_str()
            .context("next_cursor")?
            .to_string();
        out.extend(records);
    }
}

/// Runs `shoal audit verify` against `s`; its exit code and output.
async fn verify(s: &Server) -> Result<(i32, String)> {
    let out = tokio::process::Command::new(shoal_testkit::bins::binary("shoal-scheduler", "shoal"))
        .args(["audit", "verify"])
        .env("SHOAL_URL", &s.url)
        .env("SHOAL_TOKEN", &s.token)
        .env_remove("SHOAL_ADMIN_TOKEN")
        .output()
        .await?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

async fn wait_state(s: &Server, id: &str, want: &str) -> Result<()> {
    s.wait_for(&format!("{id} {want}"), Duration::from_secs(60), || async {
        let j = s.get(&format!("/v1/jobs/{id}?wait_s=5")).await?;
        Ok((j["state"] == want).then_some(()))
    })
    .await
}

fn find<'a>(records: &'a [Value], action: &str, target: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r["action"] == action && r["target"] == target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_recorded_with_their_actor_and_the_chain_detects_an_edit() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    let (st, _) = s
        .send(Method::PUT, "/v1/tenants/acme", &json!({"plan": "pro"}))
        .await?;
    assert_eq!(st, 201);
    let (st, key) = s
        .send(Method::POST, "/v1/tenants/acme/keys", &json!({}))
        .await?;
    assert_eq!(st, 201, "{key}");
    let secret = key["key"].as_str().context("key")?.to_string();
    let key_id = key["id"].as_str().context("key id")?.to_string();

    // The tenant enqueues with its key, a job carrying a secret in its environment.
    let http = reqwest::Client::new();
    let job = http
        .post(format!("{}/v1/jobs", s.url))
        .bearer_auth(&secret)
        .json(&json!({"tenant": "acme", "kind": "agent",
            "spec": {"command": ["true"], "env": {"API_PASSWORD": "hunter2-secret"}}}))
        .send()
        .await?;
    assert_eq!(job.status().as_u16(), 202);
    let job: Value = job.json().await?;
    let job_id = job["id"].as_str().context("id")?.to_string();
    wait_state(&s, &job_id, "succeeded").await?;
    let (st, _) = s
        .send(Method::POST, "/v1/tenants/acme/drain", &json!({}))
        .await?;
    assert_eq!(st, 200);
    let (st, _) = s
        .send(
            Method::DELETE,
            &format!("/v1/tenants/acme/keys/{key_id}"),
            &json!(null),
        )
        .await?;
    assert_eq!(st, 204);

    // A tenant key cannot read the log (the key was just revoked: a fresh one).
    let (_, key2) = s
        .send(Method::POST, "/v1/tenants/acme/keys", &json!({}))
        .await?;
    let denied = http
        .get(format!("{}/v1/audit", s.url))
        .bearer_auth(key2["key"].as_str().context("key")?)
        .send()
        .await?;
    assert_eq!(denied.status().as_u16(), 403);

    let records = all_records(&s).await?;
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>());
    let by = |action: &str, target: &str| {
        find(&records, action, target)
            .unwrap_or_else(|| panic!("no {action} of {target} in {records:#?}"))
            .clone()
    };
    let put = by("tenant.create", "tenant/acme");
    assert_eq!(put["actor"], json!({"kind": "admin", "id": "admin"}));
    assert_eq!(
        by("key.create", &format!("key/{key_id}"))["actor"]["kind"],
        "admin"
    );
    let enq = by("job.enqueue", &format!("job/{job_id}"));
    assert_eq!(
        enq["actor"],
        json!({"kind": "tenant_key", "id": key_id}),
        "{enq}"
    );
    let lease = by("job.lease", &format!("job/{job_id}"));
    assert_eq!(lease["actor"]["kind"], "sandbox");
    let sandbox = lease["actor"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        by("job.complete", &format!("job/{job_id}"))["actor"],
        json!({"kind": "sandbox", "id": sandbox})
    );
    assert_eq!(
        by("sandbox.create", &format!("sandbox/{sandbox}"))["actor"]["kind"],
        "system"
    );
    assert_eq!(by("tenant.drain", "tenant/acme")["actor"]["kind"], "admin");
    assert_eq!(
        by("key.revoke", &format!("key/{key_id}"))["actor"]["kind"],
        "admin"
    );
    // Lease before completion, enqueue before lease.
    let pos = |a: &str| {
        records
            .iter()
            .position(|r| r["action"] == a && r["target"] == format!("job/{job_id}"))
            .unwrap()
    };
    assert!(pos("job.enqueue") < pos("job.lease") && pos("job.lease") < pos("job.complete"));
    for r in &records {
        let text = r.to_string();
        for secret in [&secret, &s.token, "hunter2-secret"] {
            assert!(!text.contains(secret), "a secret in {text}");
        }
        assert_eq!(r["hash"].as_str().unwrap().len(), 64);
    }

    let (code, out) = verify(&s).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("the audit log holds: "), "{out}");

    // Someone with the database rewrites what the tenant's job was said to be.
    s.stop().await?;
    let db = s.data_dir.join("shoal.db");
    let edited = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             n=c.execute(\"UPDATE audit_log SET detail='{}' WHERE action='job.enqueue'\").rowcount; \
             c.commit(); print(n)",
        )
        .arg(&db)
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&edited.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    s.restart().await?;
    let (code, out) = verify(&s).await?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("record {}", enq["seq"])),
        "verify should name the edited record {}: {out}",
        enq["seq"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_exports_finished_jobs_then_deletes_them_keeping_the_audit_log() -> Result<()> {
    let s = Server::start(&[], &[("SHOAL_RETENTION", "2s")]).await?;
    s.send(Method::PUT, "/v1/tenants/t", &json!({"plan": "pro"}))
        .await?;
    let (st, job) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "t", "kind": "agent", "spec": {"command": ["echo", "kept"]}}),
        )
        .await?;
    assert_eq!(st, 202, "{job}");
    let id = job["id"].as_str().context("id")?.to_string();
    wait_state(&s, &id, "succeeded").await?;
    // A job still queued is never deleted, however old: a tenant drained so it waits.
    s.send(Method::POST, "/v1/tenants/t/drain", &json!({}))
        .await?;
    let (_, waiting) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": "t", "kind": "agent", "spec": {"command": ["true"]}}),
        )
        .await?;

    s.wait_for("the job deleted", Duration::from_secs(60), || async {
        let r = s.req(Method::GET, &format!("/v1/jobs/{id}")).send().await?;
        Ok((r.status().as_u16() == 404).then_some(()))
    })
    .await?;

    let export = s.data_dir.join("export");
    let mut lines = Vec::new();
    for f in std::fs::read_dir(&export)? {
        let f = f?;
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(
            name.len() == "2026-12-07.ndjson".len() && name.ends_with(".ndjson"),
            "{name}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(f.metadata()?.permissions().mode() & 0o777, 0o600);
        for l in std::fs::read_to_string(f.path())?.lines() {
            lines.push(serde_json::from_str::<Value>(l)?);
        }
    }
    let exported = lines
        .iter()
        .find(|l| l["type"] == "job" && l["id"] == id.as_str())
        .with_context(|| format!("job {id} not in the export: {lines:#?}"))?;
    assert_eq!(exported["record"]["state"], "succeeded");
    assert!(
        lines.iter().any(|l| l["type"] == "event"),
        "no event exported: {lines:#?}"
    );

    // The queued job is still there; the audit log still tells the deleted job's story, and the
    // pass itself is in it.
    let w = s
        .get(&format!("/v1/jobs/{}", waiting["id"].as_str().unwrap()))
        .await?;
    assert_eq!(w["state"], "queued");
    let records = all_records(&s).await?;
    assert!(find(&records, "job.enqueue", &format!("job/{id}")).is_some());
    assert!(find(&records, "job.complete", &format!("job/{id}")).is_some());
    let run = records
        .iter()
        .find(|r| r["action"] == "retention.run")
        .context("no retention.run record")?;
    assert_eq!(run["actor"], json!({"kind": "system", "id": "retention"}));
    let (code, out) = verify(&s).await?;
    assert_eq!(code, 0, "{out}");
    Ok(())
}
