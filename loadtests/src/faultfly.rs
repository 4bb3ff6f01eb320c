//! The Fly side of a fault run ([`crate::faults::FaultConfig::fly`]): the strict Fly emulator
//! whose machines run the real `shoal-agent`, a front for the replicas (the one URL the agents
//! are given, forwarding to any replica that is up, as a load balancer in front of replicas
//! would), and the checks after the last job:
//!
//! - within 40 s of the last job's end no sandbox is still `booting` and no machine is running
//!   (the idle timeout is 3 s);
//! - no unknown machine was collected more than once;
//! - no request went past Fly's rate limits, none broke the spec.

use crate::faults::{FaultError, FlyFigures};
use shoal_testkit::fly::{Emulator, EmulatorConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long after the last job the fleet has to settle.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(40);

/// The emulator, the front and the config file the replicas are started with.
pub struct FlyRun {
    pub emu: Emulator,
    pub front: String,
    pub config: PathBuf,
    front_task: tokio::task::JoinHandle<()>,
}

impl Drop for FlyRun {
    fn drop(&mut self) {
        self.front_task.abort();
    }
}

impl FlyRun {
    /// Starts the emulator and the front (forwarding to `urls`), and writes the config file in
    /// `dir`.
    pub async fn start(
        dir: &Path,
        urls: Arc<RwLock<Vec<Option<String>>>>,
    ) -> anyhow::Result<FlyRun> {
        let agent = shoal_testkit::bins::binary("shoal-agent", "shoal-agent");
        let emu = Emulator::start(EmulatorConfig::default().with_agent(agent).strict()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let front = format!("http://{}", listener.local_addr()?);
        let front_task = tokio::spawn(forward(listener, urls));
        std::fs::create_dir_all(dir)?;
        let config = dir.join("shoal-fly.toml");
        std::fs::write(
            &config,
            format!(
                "[provider]\nname = \"fly\"\n[provider.fly]\napi_url = \"{}\"\napp = \"{}\"\nregions = [\"ams\", \"fra\", \"ord\"]\nimage = \"registry.fly.io/shoal-agent:test\"\npoll_interval = \"2s\"\n",
                emu.url(),
                emu.app()
            ),
        )?;
        Ok(FlyRun {
            emu,
            front,
            config,
            front_task,
        })
    }

    /// After the last job (which ended at `last_job`): waits (up to [`SETTLE_WITHIN`] from then) for no sandbox booting and no machine
    /// running, then checks the collections and the emulator's counters.
    pub async fn check(
        &self,
        last_job: Instant,
        query: impl Fn(&str) -> anyhow::Result<Vec<Vec<String>>>,
        checks: &mut Vec<String>,
    ) -> Result<FlyFigures, FaultError> {
        let t0 = last_job;
        let settled_s = loop {
            let booting = query("SELECT id FROM sandboxes WHERE state = 'booting'")?;
            let running: Vec<_> = self
                .emu
                .machines()
                .into_iter()
                .filter(|m| m.state == "started" || m.state == "starting")
                .collect();
            if booting.is_empty() && running.is_empty() {
                break t0.elapsed().as_secs_f64();
            }
            if t0.elapsed() > SETTLE_WITHIN {
                let states = query("SELECT state, count(*) FROM sandboxes GROUP BY state")?;
                return Err(FaultError::Check(format!(
                    "{SETTLE_WITHIN:?} after the last job, {} sandboxes still booting and {} machines running ({:?}); sandboxes by state {states:?}",
                    booting.len(),
                    running.len(),
                    running.iter().map(|m| &m.id).collect::<Vec<_>>(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        checks.push(format!(
            "{settled_s:.1}s after the last job: no sandbox booting, no machine running"
        ));
        let twice = query(
            "SELECT detail, count(*) FROM events WHERE kind = 'orphan_collected' \
             GROUP BY detail HAVING count(*) > 1",
        )?;
        if !twice.is_empty() {
            return Err(FaultError::Check(format!(
                "machines collected as unknown more than once: {twice:?}"
            )));
        }
        let orphans = query("SELECT detail FROM events WHERE kind = 'orphan_collected'")?.len();
        let adopted = query("SELECT detail FROM events WHERE kind = 'sandbox_adopted'")?.len();
        checks.push(format!(
            "{orphans} unknown machines collected, none twice; {adopted} adopted by their tag"
        ));
        let st = self.emu.stats();
        if st.past_rate_limit != 0 {
            return Err(FaultError::Check(format!(
                "{} requests past Fly's rate limits: {:?}",
                st.past_rate_limit, st.past_rate_limit_by_action
            )));
        }
        if st.spec_violations != 0 {
            return Err(FaultError::Check(format!(
                "requests not in the spec: {:?}",
                st.violation_samples
            )));
        }
        checks.push(format!(
            "{} Fly requests, none past the rate limits or the spec; {:.2} calls per start ({:.2} net of faults)",
            st.requests,
            st.calls_per_start(),
            st.calls_per_start_net_of_faults()
        ));
        Ok(FlyFigures {
            settled_s,
            requests: st.requests,
            past_rate_limit: st.past_rate_limit,
            spec_violations: st.spec_violations,
            early_not_found: st.early_not_found,
            calls_per_start: st.calls_per_start(),
            calls_per_start_net_of_faults: st.calls_per_start_net_of_faults(),
            orphans_collected: orphans,
            adopted,
        })
    }
}

/// Forwards each connection to a replica that is up (the first that accepts, from a rotating
/// start), so agents keep one URL while replicas die and come back on other ports.
async fn forward(listener: tokio::net::TcpListener, urls: Arc<RwLock<Vec<Option<String>>>>) {
    let mut turn = 0usize;
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        turn = turn.wrapping_add(1);
        let targets: Vec<String> = urls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .map(|u| u.trim_start_matches("http://").to_string())
            .collect();
        tokio::spawn(async move {
            let n = targets.len();
            for i in 0..n {
                let addr = &targets[(turn + i) % n];
                if let Ok(mut out) = tokio::net::TcpStream::connect(addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    return;
                }
            }
        });
    }
}
