//! The operators' CLI against a running scheduler (the real `shoal serve`): every subcommand's
//! table for people and `--json` for scripts, `usage` as CSV, cancel and drain acting on the
//! scheduler, `plan --dry-run` showing a step it did not take, clear failures, and `jobs submit
//! --wait` exiting with the job's exit code, `jobs logs` printing its output.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::time::Duration;

/// What one run of `shoal` did.
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {}", self.stdout))
    }

    /// The table's data rows (header skipped), split on runs of spaces.
    fn rows(&self) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    }
}

async fn shoal_as(s: &Server, token: Option<&str>, args: &[&str]) -> Result<Run> {
    let bin = shoal_testkit::bins::binary("shoal-scheduler", "shoal");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env("SHOAL_URL", &s.url)
        .env_remove("SHOAL_ADMIN_TOKEN")
        .env_remove("SHOAL_TOKEN");
    if let Some(t) = token {
        cmd.env("SHOAL_TOKEN", t);
    }
    let out = cmd.output().await?;
    Ok(Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

async fn shoal(s: &Server, args: &[&str]) -> Result<Run> {
    let r = shoal_as(s, Some(&s.token), args).await?;
    anyhow::ensure!(
        r.ok,
        "shoal {} failed: {}{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    Ok(r)
}

async fn enqueue(s: &Server, tenant: &str, cmd: &str) -> Result<String> {
    s.enqueue_sh(tenant, cmd).await
}

async fn wait_state(s: &Server, id: &str, state: &str) -> Result<Value> {
    s.wait_for(
        &format!("job {id} to be {state}"),
        Duration::from_secs(60),
        || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok((j["state"] == state).then_some(j))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}", s.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_running_scheduler() -> Result<()> {
    let s = Server::start(&["--idle-timeout", "30s"], &[]).await?;

    // tenants: create with a plan and limits, list as a table and as JSON, show one.
    let r = shoal(
        &s,
        &[
            "tenants",
            "acme",
            "--plan",
            "pro",
            "--limits",
            r#"{"max_sandboxes": 2}"#,
        ],
    )
    .await?;
    assert_eq!(r.rows()[0][..3], ["acme", "pro", "2"], "{}", r.stdout);
    shoal(&s, &["tenants", "globex", "--plan", "free"]).await?;
    let r = shoal(&s, &["tenants"]).await?;
    assert!(r.stdout.starts_with("TENANT"), "{}", r.stdout);
    let names: Vec<String> = r.rows().iter().map(|row| row[0].clone()).collect();
    assert_eq!(names, ["acme", "globex"], "{}", r.stdout);
    // TENANT PLAN MAX-SANDBOXES JOBS/QUOTA QUOTA STATE: no blank cell.
    assert_eq!(
        r.rows()[0][3..],
        ["0/1000", "ok", "serving"],
        "{}",
        r.stdout
    );
    let v = shoal(&s, &["tenants", "--json"]).await?.json()?;
    assert_eq!(v["tenants"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["tenants"][0]["limits"]["max_sandboxes"], 2);
    let v = shoal(&s, &["tenants", "globex", "--json"]).await?.json()?;
    assert_eq!(v["usage"]["quota"], 100, "{v}");

    // Jobs: one that succeeds, one that fails, one that runs until cancelled.
    let ok = enqueue(&s, "acme", "echo from-cli").await?;
    let bad = enqueue(&s, "acme", "echo oops >&2; exit 3").await?;
    wait_state(&s, &ok, "succeeded").await?;
    wait_state(&s, &bad, "failed").await?;
    let long = enqueue(&s, "acme", "sleep 600").await?;
    wait_state(&s, &long, "running").await?;

    let r = shoal(&s, &["jobs", "list", "--tenant", "acme"]).await?;
    for id in [&ok, &bad, &long] {
        assert!(r.stdout.contains(id.as_str()), "{id} missing: {}", r.stdout);
    }
    let v = shoal(
        &s,
        &[
            "jobs", "list", "--tenant", "acme", "--state", "failed", "--json",
        ],
    )
    .await?
    .json()?;
    let failed: Vec<&str> = v["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(failed, [bad.as_str()]);
    let r = shoal(&s, &["jobs", "show", &ok]).await?;
    assert!(
        r.rows()
            .iter()
            .any(|row| row[0] == "state" && row[1] == "succeeded"),
        "{}",
        r.stdout
    );
    let v = shoal(&s, &["jobs", "show", &bad, "--json"]).await?.json()?;
    assert_eq!(v["result"]["exit_code"], 3);
    assert_eq!(v["result"]["stderr"], "oops\n");

    // pools: the list with the running job, one pool with its sandboxes.
    let r = shoal(&s, &["pools"]).await?;
    let acme = r
        .rows()
        .into_iter()
        .find(|row| row[0] == "acme")
        .context("no acme row")?;
    // TENANT PLAN STATE DESIRED QUEUED RUNNING ...
    assert_eq!(
        (acme[1].as_str(), acme[2].as_str(), acme[5].as_str()),
        ("pro", "serving", "1"),
        "{acme:?}"
    );
    let r = shoal(&s, &["pools", "acme"]).await?;
    assert!(r.stdout.contains("SANDBOX"), "{}", r.stdout);
    let v = shoal(&s, &["pools", "acme", "--json"]).await?.json()?;
    let sandbox = v["sandbox_list"][0]["id"].as_str().unwrap_or_default();
    assert!(
        sandbox.starts_with("sb_") && r.stdout.contains(sandbox),
        "{v}"
    );
    assert_eq!(v["running"], 1);

    // jobs cancel: the running job is cancelled; a finished one cannot be.
    let r = shoal(&s, &["jobs", "cancel", &long]).await?;
    assert!(
        r.rows()
            .iter()
            .any(|row| row[0] == "state" && row[1] == "cancelled"),
        "{}",
        r.stdout
    );
    assert_eq!(
        s.get(&format!("/v1/jobs/{long}")).await?["state"],
        "cancelled"
    );
    let r = shoal_as(&s, Some(&s.token), &["jobs", "cancel", &ok]).await?;
    assert!(!r.ok && r.stderr.contains("409"), "{}", r.stderr);

    // usage: a table with a total, CSV, JSON.
    let r = shoal(&s, &["usage", "--tenant", "acme"]).await?;
    assert!(r.stdout.starts_with("START"), "{}", r.stdout);
    let total = r.rows().pop().context("no rows")?;
    assert_eq!(total[0], "total");
    // total SANDBOX S VCPU S GIB S SUCCEEDED FAILED COST: one success and one failure this
    // month, and no cost without `[prices]`.
    assert_eq!(total[4..], ["1", "1", "-"], "{}", r.stdout);
    let r = shoal(&s, &["usage", "--tenant", "acme", "--csv"]).await?;
    let mut lines = r.stdout.lines();
    assert_eq!(
        lines.next(),
        Some(
            "tenant,start,end,sandbox_seconds,vcpu_seconds,gib_seconds,jobs_succeeded,jobs_failed,cost"
        )
    );
    let rows: Vec<&str> = lines.collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|l| l.starts_with("acme,")),
        "{}",
        r.stdout
    );
    let v = shoal(
        &s,
        &[
            "usage",
            "--tenant",
            "acme",
            "--granularity",
            "hour",
            "--json",
        ],
    )
    .await?
    .json()?;
    assert_eq!(v["granularity"], "hour");
    assert_eq!(v["total"]["jobs_succeeded"], 1);

    // drain and undo.
    let r = shoal(&s, &["drain", "acme"]).await?;
    assert_eq!(r.stdout.trim(), "tenant acme draining");
    assert_eq!(s.get("/v1/tenants/acme").await?["draining"], true);
    let r = shoal(&s, &["pools"]).await?;
    assert!(
        r.rows()
            .iter()
            .any(|row| row[0] == "acme" && row[2] == "draining"),
        "{}",
        r.stdout
    );
    let v = shoal(&s, &["drain", "acme", "--undo", "--json"])
        .await?
        .json()?;
    assert_eq!(v["draining"], false);
    assert_eq!(s.get("/v1/tenants/acme").await?["draining"], false);

    // plan --dry-run: a table and JSON; without --dry-run it refuses.
    let r = shoal(&s, &["plan", "--dry-run"]).await?;
    assert!(r.stdout.starts_with("TENANT"), "{}", r.stdout);
    assert!(r.rows().iter().any(|row| row[0] == "acme"), "{}", r.stdout);
    let v = shoal(&s, &["plan", "--dry-run", "--json"]).await?.json()?;
    assert_eq!(v["dry_run"], true);
    let r = shoal_as(&s, Some(&s.token), &["plan"]).await?;
    assert!(!r.ok && r.stderr.contains("--dry-run"), "{}", r.stderr);

    // Failures are clear: no token, a wrong token, an unknown job, an unreachable scheduler.
    let r = shoal_as(&s, None, &["pools"]).await?;
    assert!(!r.ok && r.stderr.contains("401"), "{}", r.stderr);
    let r = shoal_as(&s, Some("wrong"), &["tenants"]).await?;
    assert!(!r.ok && r.stderr.contains("401"), "{}", r.stderr);
    let r = shoal_as(&s, Some(&s.token), &["jobs", "show", "job_nope"]).await?;
    assert!(
        !r.ok && r.stderr.contains("404") && r.stderr.contains("job_nope"),
        "{}",
        r.stderr
    );
    let r = shoal_as(
        &s,
        Some(&s.token),
        &["pools", "--url", "http://127.0.0.1:9"],
    )
    .await?;
    assert!(
        !r.ok && r.stderr.contains("cannot reach the scheduler"),
        "{}",
        r.stderr
    );
    Ok(())
}

/// With sandboxes that cannot be created (the agent binary is not executable, so every create
/// fails and the tenant's creates are held off), the planner keeps wanting one: the dry run shows
/// the create step, and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_dry_run_shows_what_the_planner_would_do() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let agent = dir.path().join("not-executable-agent");
    std::fs::write(&agent, "not a program")?;
    let agent = agent.to_string_lossy().into_owned();
    let s = Server::start(&[], &[("SHOAL_AGENT_BIN", &agent)]).await?;
    s.send(Method::PUT, "/v1/tenants/acme", &json!({"plan": "pro"}))
        .await?;
    enqueue(&s, "acme", "true").await?;
    let creates = |v: &Value| {
        v["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter(|st| st["op"] == "create" && st["tenant"] == "acme")
                    .count()
            })
            .unwrap_or(0)
    };
    let v = s
        .wait_for(
            "a dry run with a create step",
            Duration::from_secs(60),
            || async {
                let v = shoal(&s, &["plan", "--dry-run", "--json"]).await?.json()?;
                Ok((creates(&v) > 0).then_some(v))
            },
        )
        .await?;
    assert_eq!(v["dry_run"], true);
    assert!(
        v["pools"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["tenant"] == "acme" && p["desired"] == 1)),
        "{v}"
    );
    // The table names the step too.
    let r = s
        .wait_for(
            "a table with the create step",
            Duration::from_secs(60),
            || async {
                let r = shoal(&s, &["plan", "--dry-run"]).await?;
                Ok(r.rows()
                    .iter()
                    .any(|row| row.len() >= 2 && row[0] == "create" && row[1] == "acme")
                    .then_some(r))
            },
        )
        .await?;
    assert!(r.stdout.contains("STEP"), "{}", r.stdout);
    // Nothing ran: the job is still queued.
    let jobs = s.get("/v1/jobs?tenant=acme").await?;
    assert_eq!(jobs["jobs"][0]["state"], "queued", "{jobs}");
    Ok(())
}

/// `shoal` with the admin token and `stdin` as its standard input.
async fn shoal_with_stdin(s: &Server, args: &[&str], stdin: &str) -> Result<Run> {
    use tokio::io::AsyncWriteExt;
    let bin = shoal_testkit::bins::binary("shoal-scheduler", "shoal");
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env("SHOAL_URL", &s.url)
        .env("SHOAL_TOKEN", &s.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().context("stdin")?;
    input.write_all(stdin.as_bytes()).await?;
    drop(input);
    let out = child.wait_with_output().await?;
    Ok(Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_waits_and_exits_with_the_jobs_exit_code() -> Result<()> {
    let s = Server::start(&["--idle-timeout", "60s"], &[]).await?;
    shoal(&s, &["tenants", "acme", "--plan", "pro"]).await?;
    fn submit<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["jobs", "submit", "--tenant", "acme"];
        args.extend_from_slice(extra);
        args
    }

    // Without --wait: the id, at once.
    let r = shoal(&s, &submit(&["--", "sh", "-c", "echo queued"])).await?;
    let id = r.stdout.trim().to_string();
    assert!(id.starts_with("job_") && !id.contains('\n'), "{}", r.stdout);
    assert_eq!(s.get(&format!("/v1/jobs/{id}")).await?["tenant"], "acme");
    let v = shoal(&s, &submit(&["--json", "--", "true"]))
        .await?
        .json()?;
    assert_eq!(v["state"], "queued", "{v}");

    // With --wait: the id first, then the job's own exit code.
    let r = shoal_as(
        &s,
        Some(&s.token),
        &submit(&["--wait", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]),
    )
    .await?;
    assert_eq!(r.code, Some(7), "{} {}", r.stdout, r.stderr);
    let id = r.stdout.lines().next().context("no id")?.to_string();
    assert!(r.stderr.contains("failed (exit 7)"), "{}", r.stderr);
    let j = s.get(&format!("/v1/jobs/{id}")).await?;
    assert_eq!(
        (j["state"].as_str(), j["result"]["exit_code"].as_i64()),
        (Some("failed"), Some(7))
    );
    // jobs logs prints its output; --follow on an ended job prints it and ends.
    let r = shoal(&s, &["jobs", "logs", &id]).await?;
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["err", "out"], "{}", r.stdout);
    let r = shoal(&s, &["jobs", "logs", &id, "--follow"]).await?;
    assert_eq!(r.stdout.len(), "out\nerr\n".len(), "{}", r.stdout);

    let r = shoal_as(&s, Some(&s.token), &submit(&["--wait", "--", "true"])).await?;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let r = shoal_as(
        &s,
        Some(&s.token),
        &submit(&["--wait", "--", "sh", "-c", "kill -9 $$"]),
    )
    .await?;
    assert_eq!(r.code, Some(128 + 9), "{}", r.stderr);
    let r = shoal_as(
        &s,
        Some(&s.token),
        &submit(&["--wait", "--timeout-s", "1", "--", "sleep", "30"]),
    )
    .await?;
    assert_eq!(r.code, Some(124), "{}", r.stderr);

    // Other kinds take their spec from a file or standard input; a semantic diff that finds a
    // difference exits 1, as diff(1) does.
    let dir = tempfile::tempdir()?;
    let spec = dir.path().join("diff.json");
    std::fs::write(&spec, r#"{"baseline": {"a": 1}, "candidate": {"a": 2}}"#)?;
    let spec = spec.to_string_lossy().into_owned();
    let r = shoal_as(
        &s,
        Some(&s.token),
        &[
            "jobs",
            "submit",
            "--tenant",
            "acme",
            "--kind",
            "semantic_diff",
            "--spec",
            &spec,
            "--wait",
        ],
    )
    .await?;
    assert_eq!(r.code, Some(1), "{} {}", r.stdout, r.stderr);
    let r = shoal_with_stdin(
        &s,
        &[
            "jobs",
            "submit",
            "--tenant",
            "acme",
            "--kind",
            "semantic_diff",
            "--spec",
            "-",
            "--wait",
        ],
        r#"{"baseline": [1, 2], "candidate": [1, 2]}"#,
    )
    .await?;
    assert_eq!(r.code, Some(0), "{} {}", r.stdout, r.stderr);

    // Refused before anything is stored: no spec, both a spec and a command, a bad spec.
    let before = s.get("/v1/jobs?tenant=acme&limit=1000").await?["jobs"]
        .as_array()
        .map_or(0, Vec::len);
    for (args, says) in [
        (submit(&["--kind", "semantic_diff", "--wait"]), "--spec"),
        (submit(&["--spec", &spec, "--", "true"]), "not both"),
        (submit(&["--wait"]), "after `--`"),
        (
            submit(&["--kind", "flaky_analysis", "--spec", &spec]),
            "400",
        ),
    ] {
        let r = shoal_as(&s, Some(&s.token), &args).await?;
        assert!(
            r.code == Some(1) && r.stderr.contains(says),
            "{args:?}: {:?} {}",
            r.code,
            r.stderr
        );
    }
    let after = s.get("/v1/jobs?tenant=acme&limit=1000").await?["jobs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(before, after, "a refused submission stores nothing");

    // A job cancelled while `submit --wait` waits: 130.
    let bin = shoal_testkit::bins::binary("shoal-scheduler", "shoal");
    let mut child = tokio::process::Command::new(bin)
        .args(submit(&["--wait", "--", "sleep", "600"]))
        .env("SHOAL_URL", &s.url)
        .env("SHOAL_TOKEN", &s.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().context("stdout")?);
    let mut id = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut id).await?;
    let id = id.trim().to_string();
    wait_state(&s, &id, "running").await?;
    let (st, _) = s
        .send(Method::POST, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await?;
    assert_eq!(st, 200);
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await??;
    assert_eq!(status.code(), Some(130));
    Ok(())
}

/// `shoal schedules`: put one (a command, in a time zone), list it with its next fire time (as a
/// table and as JSON), refuse a bad pattern with the API's message, delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_put_listed_with_their_next_fire_and_deleted() -> Result<()> {
    let mut s = Server::start(&[], &[]).await?;
    s.send(Method::PUT, "/v1/tenants/t", &json!({"plan": "pro"}))
        .await?;
    let put = shoal(
        &s,
        &[
            "schedules",
            "put",
            "t",
            "nightly",
            "--cron",
            "30 2 * * *",
            "--timezone",
            "Europe/Berlin",
            "--",
            "echo",
            "hi",
        ],
    )
    .await?;
    assert!(put.stdout.contains("NEXT FIRE"), "{}", put.stdout);
    let list = shoal(&s, &["schedules"]).await?;
    let rows = list.rows();
    assert_eq!(rows.len(), 1, "{}", list.stdout);
    assert_eq!(rows[0][0..2], ["t", "nightly"]);
    let v = shoal(&s, &["schedules", "list", "--tenant", "t", "--json"])
        .await?
        .json()?;
    let next = v["schedules"][0]["next_fire_at"].as_str().unwrap();
    // 02:30 in Berlin is 00:30 or 01:30 UTC.
    assert!(
        next.ends_with("T00:30:00.000Z") || next.ends_with("T01:30:00.000Z"),
        "{v}"
    );
    assert_eq!(
        v["schedules"][0]["job"]["spec"]["command"],
        json!(["echo", "hi"])
    );
    let bad = shoal_as(
        &s,
        Some(&s.token),
        &[
            "schedules",
            "put",
            "t",
            "x",
            "--cron",
            "* * *",
            "--",
            "true",
        ],
    )
    .await?;
    assert!(!bad.ok && bad.stderr.contains("5 fields"), "{}", bad.stderr);
    shoal(&s, &["schedules", "delete", "t", "nightly"]).await?;
    assert!(shoal(&s, &["schedules"]).await?.rows().is_empty());
    s.stop().await?;
    Ok(())
}
