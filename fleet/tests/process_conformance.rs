//! The `process` provider (the default) on this machine: the provider conformance suite, confined
//! by bubblewrap and unconfined, and what a confined sandbox is: its own user (when the tests run
//! as root), its own PID namespace, an empty environment but for the agent's variables.

use anyhow::{Context, Result};
use shoal_fleet::conformance::{self, SuiteConfig};
use shoal_fleet::process::jail::{Isolation, IsolationMode};
use shoal_fleet::process::{DEFAULT_UID_BASE, ProcessConfig, ProcessProvider};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;

fn provider(
    root: &Path,
    mode: IsolationMode,
) -> Result<(
    ProcessProvider,
    tokio::sync::mpsc::UnboundedReceiver<shoal_fleet::Observation>,
)> {
    let isolation = Isolation::probe(mode, root)?;
    let (tx, rx) = unbounded_channel();
    let p = ProcessProvider::new(
        ProcessConfig {
            agent_bin: shoal_testkit::bins::binary("shoal-agent", "shoal-agent"),
            root: root.to_path_buf(),
            stop_grace: Duration::from_secs(3),
            isolation,
            uid_base: DEFAULT_UID_BASE + 30_000,
        },
        tx,
    );
    Ok((p, rx))
}

fn suite(tenant: &str) -> SuiteConfig {
    SuiteConfig {
        // Nothing answers there: the agent keeps retrying, which is all the suite needs.
        scheduler_url: "http://127.0.0.1:9".into(),
        timeout: Duration::from_secs(30),
        tenant: format!("{tenant}-{}", std::process::id()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confined_process_sandboxes_pass_the_conformance_suite() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, mut rx) = provider(dir.path(), IsolationMode::Bubblewrap)
        .context("bubblewrap must work here (scripts/test installs it)")?;
    assert!(shoal_fleet::Provider::isolation_warning(&p).is_none());
    conformance::run(&p, &mut rx, &suite("confined")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfined_process_sandboxes_pass_the_conformance_suite_and_say_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (p, mut rx) = provider(dir.path(), IsolationMode::None)?;
    let warning = shoal_fleet::Provider::isolation_warning(&p).context("a warning")?;
    assert!(warning.contains("NOT isolated"), "{warning}");
    conformance::run(&p, &mut rx, &suite("unconfined")).await?;
    Ok(())
}

/// The agent of a confined sandbox, seen from the host: not root (when the host is), another
/// PID namespace than the host's, and an environment of the agent's variables only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(unsafe_code)] // libc calls; each block says why it is sound
async fn a_confined_agent_is_its_own_user_in_its_own_namespaces() -> Result<()> {
    use shoal_fleet::{Provider, SandboxRef};
    // SAFETY: setting a variable before any thread reads the environment in this test process is
    // what the scheduler's own environment would hold; the provider must not pass it on.
    unsafe { std::env::set_var("SHOAL_ADMIN_TOKEN", "must-not-reach-a-sandbox") };
    let dir = tempfile::tempdir()?;
    let (p, _rx) = provider(dir.path(), IsolationMode::Bubblewrap)?;
    let cfg = suite("uid");
    let spec = conformance::sandbox_spec(&cfg, 1);
    let id = p.create(&spec).await?;
    // The agent may still be on its way through bwrap and setpriv.
    let mut agent = None;
    for _ in 0..100 {
        agent = shoal_testkit::server::processes_under(dir.path())
            .into_iter()
            .find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.to_string_lossy().ends_with("shoal-agent"))
            });
        if agent.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = agent.context("the agent's process")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .context("uid")?;
    if shoal_fleet::process::jail::is_root() {
        assert!(uid >= DEFAULT_UID_BASE + 30_000, "the agent runs as {uid}");
    }
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid"));
    assert_ne!(ns(&pid.to_string())?, ns("self")?, "same PID namespace");
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt"))?,
        std::fs::read_link("/proc/self/ns/mnt")?,
        "same mount namespace"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split('=')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for v in &vars {
        assert!(
            ["PATH", "HOME", "TMPDIR", "RUST_LOG", "PWD"].contains(&v.as_str())
                || v.starts_with("SHOAL_"),
            "{v} reached the agent: {vars:?}"
        );
    }
    assert!(!vars.iter().any(|v| v == "SHOAL_ADMIN_TOKEN"), "{vars:?}");
    let sref = SandboxRef {
        sandbox_id: spec.sandbox_id.clone(),
        tenant: spec.tenant.clone(),
        provider_id: id,
    };
    p.destroy(&sref).await?;
    assert!(
        shoal_testkit::server::processes_under(dir.path()).is_empty(),
        "a destroyed sandbox left processes"
    );
    Ok(())
}
