//! A machine's process: starting it (after the emulated boot time), and waiting for it to exit
//! when the machine stops.

use super::*;

impl Shared {
    /// Moves a machine to `starting`, and to `started` after the latency, running (or thawing)
    /// its process.
    pub(super) fn begin_start(self: &Arc<Self>, id: &str) {
        let (generation, resume) = {
            let mut world = lock(&self.world);
            let Some(m) = world.machines.get_mut(id) else {
                return;
            };
            let resume = m.state == "suspended" && m.pid.is_some();
            m.generation += 1;
            m.set_state("starting", None);
            (m.generation, resume)
        };
        let latency = if resume {
            self.cfg.latencies.resume
        } else {
            self.cfg.latencies.start
        };
        let sh = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            let mut world = lock(&sh.world);
            let Some(m) = world.machines.get_mut(&id) else {
                return;
            };
            if m.generation != generation {
                return;
            }
            match (resume, m.pid) {
                (true, Some(pgid)) => signal(pgid, libc::SIGCONT),
                _ => {
                    if let Err(e) = sh.spawn_process(m) {
                        tracing::warn!(machine = %id, error = %e, "fly emulator: the machine's command did not start");
                        m.set_state("failed", Some(("exit", "failed", "flyd")));
                        return;
                    }
                }
            }
            m.set_state("started", Some(("start", "started", "user")));
            drop(world);
            lock(&sh.stats).started_transitions += 1;
        });
    }

    pub(super) fn spawn_process(self: &Arc<Self>, m: &mut Machine) -> std::io::Result<()> {
        let Some((program, args)) = self.cfg.command.split_first() else {
            return Ok(());
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).env_clear();
        for var in ["PATH", "HOME", "TMPDIR", "RUST_LOG"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(m.env())
            .env("FLY_APP_NAME", &self.cfg.app)
            .env("FLY_MACHINE_ID", &m.id)
            .env("FLY_REGION", &m.region)
            .env("FLY_PRIVATE_IP", &m.private_ip)
            .env(
                "FLY_IMAGE_REF",
                m.config
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if !self.cfg.process_output {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
        }
        let mut child = cmd.spawn()?;
        let pgid = child.id().unwrap_or_default();
        m.pid = Some(pgid);
        lock(&self.pgids).insert(pgid);
        let sh = self.clone();
        let id = m.id.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::debug!(machine = %id, ?status, "fly emulator: machine process exited");
            lock(&sh.pgids).remove(&pgid);
            let mut world = lock(&sh.world);
            let Some(m) = world.machines.get_mut(&id) else {
                return;
            };
            if m.pid != Some(pgid) {
                return;
            }
            m.pid = None;
            if m.state == "started" {
                // The main process ended by itself: the machine stops, as on Fly.
                m.generation += 1;
                m.set_state("stopped", Some(("exit", "stopped", "flyd")));
            }
        });
        Ok(())
    }

    /// Waits until the machine's process `pgid` has exited; false on timeout.
    pub(super) async fn wait_exit(&self, id: &str, pgid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let running = lock(&self.world)
                .machines
                .get(id)
                .is_some_and(|m| m.pid == Some(pgid));
            if !running {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
