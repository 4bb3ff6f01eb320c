//! CPU time of the processes a benchmark runs, from `/proc` (Linux): the scheduler itself, its
//! sandboxes' agents, the jobs the agents ran, Postgres (the postmaster and its backends) and
//! Redis, so a phase's cost can be divided by its jobs and broken down by process.
//!
//! A process tree's time is its own user and system time, plus its exited children's (the
//! kernel adds a child's times to its parent's when the parent reaps it), plus its live
//! children's trees, so no process is counted twice.

use serde::Serialize;
use std::path::Path;

/// Clock ticks a second, as `getconf CLK_TCK` says (100 when it cannot be asked).
fn ticks_per_s() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// (parent pid, own ticks, reaped children's ticks) of `pid`.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // Fields 4 (ppid) and 14..17 (utime, stime, cutime, cstime), counted from 1 with the pid
    // and the name as 1 and 2.
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Every live process's parent.
fn parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?.0)))
        .collect()
}

/// Ticks of `pid`'s whole tree: its own, its reaped children's, its live children's trees.
fn tree(pid: u32, all: &[(u32, u32)]) -> u64 {
    let Some((_, own, reaped)) = stat(pid) else {
        return 0;
    };
    own + reaped
        + all
            .iter()
            .filter(|(_, p)| *p == pid)
            .map(|(c, _)| tree(*c, all))
            .sum::<u64>()
}

/// CPU seconds used so far, by part.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    /// The scheduler process (all its threads).
    pub scheduler: f64,
    /// The sandboxes' agents (the scheduler's live descendants, without what they ran).
    pub agents: f64,
    /// What the agents ran (the jobs' processes, and wrappers such as `bwrap`).
    pub jobs: f64,
    /// The Postgres server: postmaster, backends, background workers.
    pub postgres: f64,
    /// The Redis server.
    pub redis: f64,
}

impl Cpu {
    /// A sample now. `scheduler` is the scheduler's pid; its descendants are the agents, and
    /// theirs the jobs.
    pub fn sample(scheduler: u32, postgres: Option<u32>, redis: Option<u32>) -> Cpu {
        let all = parents();
        let hz = ticks_per_s();
        let s = |t: u64| t as f64 / hz;
        let (_, own, reaped) = stat(scheduler).unwrap_or_default();
        // The scheduler's children: the agents (or a wrapper holding one).
        let mut agents = 0;
        let mut jobs = reaped;
        for (child, _) in all.iter().filter(|(_, p)| *p == scheduler) {
            let whole = tree(*child, &all);
            let mine = agent_own(*child, &all);
            agents += mine;
            jobs += whole.saturating_sub(mine);
        }
        Cpu {
            scheduler: s(own),
            agents: s(agents),
            jobs: s(jobs),
            postgres: postgres.map_or(0.0, |p| s(tree(p, &all))),
            redis: redis.map_or(0.0, |p| s(tree(p, &all))),
        }
    }

    /// What was used from `before` to `self`, per job (milliseconds).
    pub fn per_job_ms(&self, before: &Cpu, jobs: usize) -> Cpu {
        let d = |a: f64, b: f64| (a - b).max(0.0) * 1000.0 / jobs.max(1) as f64;
        Cpu {
            scheduler: d(self.scheduler, before.scheduler),
            agents: d(self.agents, before.agents),
            jobs: d(self.jobs, before.jobs),
            postgres: d(self.postgres, before.postgres),
            redis: d(self.redis, before.redis),
        }
    }

    /// The sum of the parts.
    pub fn total(&self) -> f64 {
        self.scheduler + self.agents + self.jobs + self.postgres + self.redis
    }
}

/// The own time of the agent under `pid`: `pid` itself when it is `shoal-agent`, else the
/// first `shoal-agent` below it (a wrapper such as `bwrap` between).
fn agent_own(pid: u32, all: &[(u32, u32)]) -> u64 {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "shoal-agent" {
        return stat(pid).map_or(0, |(_, own, _)| own);
    }
    all.iter()
        .filter(|(_, p)| *p == pid)
        .map(|(c, _)| agent_own(*c, all))
        .sum()
}

/// Whether `/proc` can be read here (Linux).
pub fn available() -> bool {
    Path::new("/proc/self/stat").exists()
}
