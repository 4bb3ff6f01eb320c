//! On the default provider (process sandboxes, confined by bubblewrap), a tenant's job probes as
//! an attacker would: it looks for the admin token (its environment, the data directory, every
//! process's environment under `/proc`), reads the database, reads another tenant's sandbox (its
//! files and its agent's token) and tries to complete that tenant's running job with a forged
//! result. It finds nothing and forges nothing. Also: where sandboxes cannot be confined, the
//! scheduler says so and admits one tenant only unless `--insecure-shared-host` is given, and a
//! fresh data directory is private.

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use shoal_testkit::server::Server;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

async fn wait_state(s: &Server, id: &str, want: &[&str]) -> Result<Value> {
    s.wait_for(
        &format!("job {id} to reach {want:?}"),
        Duration::from_secs(60),
        || async {
            let j = s.get(&format!("/v1/jobs/{id}")).await?;
            Ok(want
                .contains(&j["state"].as_str().unwrap_or_default())
                .then_some(j))
        },
    )
    .await
}

async fn tenant(s: &Server, id: &str) -> Result<(u16, Value)> {
    s.send(
        Method::PUT,
        &format!("/v1/tenants/{id}"),
        &json!({"plan": "pro"}),
    )
    .await
}

async fn enqueue(s: &Server, tenant: &str, script: &str, env: Value) -> Result<String> {
    let (status, v) = s
        .send(
            Method::POST,
            "/v1/jobs",
            &json!({"tenant": tenant, "kind": "agent",
                    "spec": {"command": ["sh", "-c", script], "env": env}}),
        )
        .await?;
    anyhow::ensure!(status == 202, "enqueue answered {status}: {v}");
    Ok(v["id"].as_str().context("job id")?.to_string())
}

fn bwrap_present() -> Result<()> {
    let found = std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    anyhow::ensure!(
        found,
        "bubblewrap (bwrap) is not installed: the default provider cannot confine sandboxes here \
         (scripts/test installs it)"
    );
    Ok(())
}

/// The attacker's probe. `$DATA` is the scheduler's data directory on the host, `$VICTIM_SB` the
/// victim's sandbox and `$VICTIM_JOB` its running job: all an attacker could learn or guess.
const PROBE: &str = r#"
echo "== uid $(id -u)"
echo "== env"; env
echo "== proc environ"
for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>/dev/null; done
echo "== processes: $(ls -d /proc/[0-9]* | wc -l)"
for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f" 2>/dev/null | head -c 60; echo; done
echo "== data dir"
for p in "$DATA/admin-token" "$DATA/shoal.db" "$DATA/shoal.db-wal" ../admin-token ../../admin-token \
         ../../../admin-token ../shoal.db ../../shoal.db ../../../shoal.db \
         "$DATA/sandboxes/$VICTIM_SB/work/secret.txt" "$DATA/sandboxes/$VICTIM_SB/agent.log" \
         ../../$VICTIM_SB/work/secret.txt; do
  echo "-- $p"; head -c 4096 "$p" 2>&1
done
ls -la "$DATA" "$DATA/sandboxes" / .. 2>&1
ls -ld /etc /opt /opt/shoal
echo "== search"
find / -xdev \( -path /proc -o -path /usr -o -path /sys \) -prune -o \
  \( -name 'secret.txt' -o -name 'admin-token' -o -name 'shoal.db*' \) -print 2>/dev/null
echo "== forge"
for tok in "$SHOAL_SANDBOX_TOKEN" "$SHOAL_ADMIN_TOKEN" \
    $(for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>/dev/null; done | sed -n 's/^SHOAL_SANDBOX_TOKEN=//p'); do
  curl -s -o /dev/null -w "complete with a found token: %{http_code}\n" -X POST "$SHOAL_URL/v1/agent/complete" \
    -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' \
    -d "{\"job_id\": \"$VICTIM_JOB\", \"lease_id\": \"guess\", \"outcome\": \"succeeded\", \"result\": {\"exit_code\": 0, \"stdout\": \"FORGED\", \"stderr\": \"\", \"duration_ms\": 1}}"
done
curl -s -w " (status %{http_code})\n" -X POST "$SHOAL_URL/v1/agent/complete" \
  -H 'Content-Type: application/json' \
  -d "{\"job_id\": \"$VICTIM_JOB\", \"lease_id\": \"guess\", \"outcome\": \"succeeded\", \"result\": {\"exit_code\": 0, \"stdout\": \"FORGED\", \"stderr\": \"\", \"duration_ms\": 1}}"
echo "== write"
echo FORGED > "$DATA/sandboxes/$VICTIM_SB/work/secret.txt" 2>&1 && echo "wrote the victim's file"
echo "== done"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(unsafe_code)] // libc calls; each block says why it is sound
async fn a_hostile_job_finds_nothing_and_forges_nothing() -> Result<()> {
    bwrap_present()?;
    let s = Server::start(&["--idle-timeout", "60s"], &[]).await?;
    for t in ["victim", "attacker"] {
        let (status, v) = tenant(&s, t).await?;
        anyhow::ensure!(status == 201, "creating {t}: {status} {v}");
    }
    // The victim's job keeps a secret in its environment and in its sandbox's files, and runs
    // until the test lets it finish.
    let victim_env_secret = format!("victim-env-{}", rand_suffix());
    let victim_file_secret = format!("victim-file-{}", rand_suffix());
    let victim = enqueue(
        &s,
        "victim",
        &format!(
            "id -u > uid.txt; echo {victim_file_secret} > secret.txt; \
             i=0; while [ ! -e release ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
             echo victim-finished; cat secret.txt"
        ),
        json!({"VICTIM_SECRET": victim_env_secret}),
    )
    .await?;
    let vjob = wait_state(&s, &victim, &["running"]).await?;
    let victim_sb = vjob["sandbox_id"]
        .as_str()
        .context("victim sandbox")?
        .to_string();
    let victim_work = s.data_dir.join("sandboxes").join(&victim_sb).join("work");
    s.wait_for(
        "the victim's secret file",
        Duration::from_secs(30),
        || async {
            Ok(std::fs::read_to_string(victim_work.join("secret.txt"))
                .ok()
                .filter(|t| t.contains(&victim_file_secret)))
        },
    )
    .await?;

    // The testkit finds a confined sandbox's processes (their working directory reads `/work`),
    // so the tests that check none outlives its scheduler can see them.
    let seen = shoal_testkit::server::processes_under(&s.data_dir.join("sandboxes"));
    assert!(seen.len() >= 3, "only {seen:?} found under the sandboxes");

    let probe = enqueue(
        &s,
        "attacker",
        PROBE,
        json!({
            "DATA": s.data_dir.display().to_string(),
            "VICTIM_SB": victim_sb,
            "VICTIM_JOB": victim,
        }),
    )
    .await?;
    let pjob = wait_state(&s, &probe, &["succeeded", "failed", "dead"]).await?;
    let out = pjob["result"]["stdout"].as_str().unwrap_or_default();
    let err = pjob["result"]["stderr"].as_str().unwrap_or_default();
    let all = format!("{out}\n{err}");
    assert!(out.contains("== done"), "the probe ran to its end: {pjob}");

    // Nothing of the admin token, the database or the victim reached the attacker.
    assert!(!all.contains(&s.token), "the admin token leaked:\n{all}");
    assert!(
        !all.contains(&victim_env_secret),
        "the victim's env leaked:\n{all}"
    );
    assert!(
        !all.contains(&victim_file_secret),
        "the victim's file leaked:\n{all}"
    );
    assert!(
        !all.contains("SQLite format"),
        "the database was read:\n{all}"
    );
    assert!(!all.contains("wrote the victim's file"), "{all}");
    // Its environment is the agent's few variables, not the scheduler's.
    let env_section = out
        .split("== env")
        .nth(1)
        .and_then(|r| r.split("== proc environ").next())
        .unwrap_or_default();
    for line in env_section.lines().filter(|l| l.contains('=')) {
        let key = line.split('=').next().unwrap_or_default();
        assert!(
            [
                "PATH",
                "HOME",
                "TMPDIR",
                "PWD",
                "SHLVL",
                "RUST_LOG",
                "DATA",
                "VICTIM_SB",
                "VICTIM_JOB",
                "_",
                "OLDPWD"
            ]
            .contains(&key)
                || key.starts_with("SHOAL_URL")
                || key.starts_with("SHOAL_SANDBOX_ID")
                || key.starts_with("SHOAL_AGENT_"),
            "unexpected variable in a job's environment: {line}"
        );
    }
    assert!(
        !env_section.contains("SHOAL_SANDBOX_TOKEN"),
        "{env_section}"
    );
    // In its own PID namespace it sees its sandbox's few processes only.
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("== processes: "))
        .and_then(|n| n.trim().parse().ok())
        .context("process count")?;
    assert!(procs <= 8, "the probe saw {procs} processes:\n{out}");
    // No completion it could send was taken.
    assert!(
        !out.contains("token: 200"),
        "a forged completion was accepted:\n{out}"
    );

    // The victim finishes with its own result.
    std::fs::write(victim_work.join("release"), b"")?;
    let vdone = wait_state(&s, &victim, &["succeeded", "failed", "dead"]).await?;
    assert_eq!(vdone["state"], "succeeded", "{vdone}");
    let vout = vdone["result"]["stdout"].as_str().unwrap_or_default();
    assert!(vout.contains("victim-finished"), "{vdone}");
    assert!(vout.contains(&victim_file_secret), "{vdone}");
    assert!(!vout.contains("FORGED"), "{vdone}");

    // As root, each sandbox runs as a user of its own, never root.
    let uid_of = |text: &str| -> Option<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix("== uid "))
            .and_then(|u| u.trim().parse().ok())
    };
    let attacker_uid = uid_of(out).context("the probe's uid")?;
    let victim_uid: u32 = std::fs::read_to_string(victim_work.join("uid.txt"))?
        .trim()
        .parse()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(attacker_uid, 0, "a sandbox ran as root");
        assert_ne!(victim_uid, 0, "a sandbox ran as root");
        assert_ne!(
            attacker_uid, victim_uid,
            "two tenants' sandboxes share a user"
        );
    }
    Ok(())
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_data_dir_and_database_are_private() -> Result<()> {
    let s = Server::start(&[], &[]).await?;
    let mode = |p: &std::path::Path| -> Result<u32> {
        Ok(std::fs::metadata(p)
            .with_context(|| p.display().to_string())?
            .permissions()
            .mode()
            & 0o777)
    };
    assert_eq!(mode(&s.data_dir)?, 0o700);
    assert_eq!(mode(&s.data_dir.join("shoal.db"))?, 0o600);
    for journal in ["shoal.db-wal", "shoal.db-shm"] {
        let p = s.data_dir.join(journal);
        if p.exists() {
            assert_eq!(mode(&p)? & 0o077, 0, "{journal} is readable by others");
        }
    }
    Ok(())
}

/// Where sandboxes are not confined (here forced with `isolation = "none"`), the scheduler warns
/// at start and on the dashboard, and a second tenant is refused with the reason, unless
/// `--insecure-shared-host` is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unisolated_host_warns_and_admits_one_tenant() -> Result<()> {
    let env = [("SHOAL_PROCESS_ISOLATION", "none")];
    let s = Server::start(&[], &env).await?;
    let (status, v) = tenant(&s, "first").await?;
    assert_eq!(status, 201, "{v}");
    // The same tenant may be updated.
    let (status, v) = tenant(&s, "first").await?;
    assert_eq!(status, 200, "{v}");
    let (status, v) = tenant(&s, "second").await?;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "insecure_shared_host", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--insecure-shared-host"),
        "{v}"
    );
    let (status, _) = s
        .send(Method::GET, "/v1/tenants/second", &json!(null))
        .await?;
    assert_eq!(status, 404, "the refused tenant was not stored");
    let err = std::fs::read_to_string(s.data_dir.join("serve.err"))?;
    assert!(err.contains("NOT isolated"), "no warning at start:\n{err}");
    let page = s
        .anon(Method::GET, "/")
        .header("Cookie", format!("shoal_session={}", s.token))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        page.contains("isolation-warning"),
        "no warning on the dashboard"
    );

    let env = [
        ("SHOAL_PROCESS_ISOLATION", "none"),
        ("SHOAL_INSECURE_SHARED_HOST", "true"),
    ];
    let s = Server::start(&[], &env).await?;
    for t in ["first", "second"] {
        let (status, v) = tenant(&s, t).await?;
        assert_eq!(status, 201, "{t}: {v}");
    }
    Ok(())
}

/// With bubblewrap present, the default provider confines: no warning, several tenants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_host_admits_several_tenants_without_a_warning() -> Result<()> {
    bwrap_present()?;
    let s = Server::start(&[], &[]).await?;
    for t in ["one", "two", "three"] {
        let (status, v) = tenant(&s, t).await?;
        assert_eq!(status, 201, "{t}: {v}");
    }
    let err = std::fs::read_to_string(s.data_dir.join("serve.err"))?;
    assert!(!err.contains("NOT isolated"), "{err}");
    Ok(())
}
