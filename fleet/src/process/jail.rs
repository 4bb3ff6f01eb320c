//! How the `process` provider confines a sandbox: bubblewrap (mount, PID, IPC and UTS namespaces,
//! a read-only view of the system, the sandbox's own working directory and nothing else of the
//! host), a user of its own when the scheduler runs as root, and an empty environment.
//!
//! bubblewrap is what Flatpak confines applications with; it is packaged everywhere and does the
//! namespace and mount set-up that would otherwise be a few hundred lines of unsafe code here
//! (ADR 0005). Where it is missing or the kernel refuses namespaces, [`Isolation::probe`] says so
//! and the scheduler runs unconfined, loudly, with one tenant only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the agent binary appears inside a confined sandbox.
pub const AGENT_IN_SANDBOX: &str = "/opt/shoal/shoal-agent";
/// The sandbox's working directory as its processes see it.
pub const WORKDIR_IN_SANDBOX: &str = "/work";

/// System paths a sandbox sees read-only (when they exist): programs and libraries, and the few
/// files in `/etc` that name resolution, TLS and `id` need. Nothing else of the host: not its
/// home directories, `/var`, `/run`, `/opt`, the data directory or other sandboxes.
const SYSTEM_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ssl",
    "/etc/passwd",
    "/etc/group",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/nsswitch.conf",
    "/etc/resolv.conf",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
];

/// What the operator asked for (`[provider.process] isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    /// bubblewrap when it works on this host, else unconfined with a warning.
    #[default]
    Auto,
    /// bubblewrap or refuse to start.
    Bubblewrap,
    /// Unconfined on purpose (a single-tenant development box).
    None,
}

impl std::str::FromStr for IsolationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IsolationMode::Auto),
            "bubblewrap" | "bwrap" => Ok(IsolationMode::Bubblewrap),
            "none" => Ok(IsolationMode::None),
            other => Err(format!("`{other}` is not auto, bubblewrap or none")),
        }
    }
}

/// How sandboxes are actually confined on this host, decided once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Each sandbox runs under `bwrap` (this binary).
    Bubblewrap {
        /// The `bwrap` binary.
        bwrap: PathBuf,
    },
    /// Sandboxes run as plain child processes; `reason` says why.
    Unconfined {
        /// Why confinement is not available.
        reason: String,
    },
}

/// Why [`Isolation::probe`] could not give what was required.
#[derive(Debug, thiserror::Error)]
#[error("the process provider cannot confine sandboxes on this host: {0}")]
pub struct IsolationUnavailable(pub String);

impl Isolation {
    /// Decides how to confine sandboxes: with `bwrap` from `PATH` when a trial sandbox built
    /// exactly like the real ones starts, else unconfined (or an error when `mode` requires it).
    pub fn probe(mode: IsolationMode, root: &Path) -> Result<Isolation, IsolationUnavailable> {
        if mode == IsolationMode::None {
            return Ok(Isolation::Unconfined {
                reason: "isolation = \"none\" in the configuration".into(),
            });
        }
        let found = match find_in_path("bwrap") {
            None => Err("bubblewrap (`bwrap`) is not installed".to_string()),
            Some(bwrap) => trial(&bwrap, root).map(|()| bwrap),
        };
        match (found, mode) {
            (Ok(bwrap), _) => Ok(Isolation::Bubblewrap { bwrap }),
            (Err(why), IsolationMode::Bubblewrap) => Err(IsolationUnavailable(why)),
            (Err(reason), _) => Ok(Isolation::Unconfined { reason }),
        }
    }

    /// The warning operators must see, when sandboxes are not confined.
    pub fn warning(&self) -> Option<String> {
        match self {
            Isolation::Bubblewrap { .. } => None,
            Isolation::Unconfined { reason } => Some(format!(
                "process sandboxes are NOT isolated ({reason}): a job can read the data directory, \
                 the database and other sandboxes. Install bubblewrap, or use the docker provider."
            )),
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Starts `true` in a sandbox set up as [`Jail::command`] would set it up.
fn trial(bwrap: &Path, root: &Path) -> Result<(), String> {
    let dir = root.join(".probe");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let uid = is_root().then_some(PROBE_UID);
    if let Some(uid) = uid {
        chown(&dir, uid).map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let jail = Jail {
        bwrap: bwrap.to_path_buf(),
        workdir: dir.clone(),
        agent_bin: Path::new("/bin/true").to_path_buf(),
        uid,
    };
    let out = jail
        .std_command(&[])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", bwrap.display()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "a trial sandbox failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The uid the start-up trial runs as (never a sandbox's).
const PROBE_UID: u32 = 65_534;

/// Whether this process runs as root (and so can give each sandbox a user of its own).
#[allow(unsafe_code)] // libc calls; each block says why it is sound
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Hands `path` to `uid` (its group too), so a sandbox running as `uid` can write there.
pub fn chown(path: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
}

/// One sandbox's confinement: what to run and as whom.
#[derive(Debug, Clone)]
pub struct Jail {
    /// The `bwrap` binary.
    pub bwrap: PathBuf,
    /// The host directory that becomes the sandbox's `/work`.
    pub workdir: PathBuf,
    /// The host's agent binary, shown read-only at [`AGENT_IN_SANDBOX`].
    pub agent_bin: PathBuf,
    /// The sandbox's own user, when the scheduler runs as root.
    pub uid: Option<u32>,
}

impl Jail {
    /// bwrap's arguments, then the agent's command line (dropping to the sandbox's user first).
    pub fn args(&self, agent_args: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--die-with-parent",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "sandbox",
            // Directories bubblewrap would otherwise make 0700 on the way to a bind.
            "--perms",
            "0755",
            "--dir",
            "/etc",
            "--perms",
            "0755",
            "--dir",
            "/opt/shoal",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in SYSTEM_PATHS {
            a.extend(["--ro-bind-try".into(), (*p).into(), (*p).into()]);
        }
        a.extend(
            [
                "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a.push(self.workdir.display().to_string());
        a.push(WORKDIR_IN_SANDBOX.into());
        a.push("--ro-bind".into());
        a.push(self.agent_bin.display().to_string());
        a.push(AGENT_IN_SANDBOX.into());
        a.extend(["--chdir".into(), WORKDIR_IN_SANDBOX.into(), "--".into()]);
        if let Some(uid) = self.uid {
            // bwrap keeps root's capabilities when root starts it without a user namespace;
            // setpriv drops to the sandbox's user with none left and no way back (no_new_privs).
            a.extend([
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
                "--bounding-set=-all".into(),
                "--no-new-privs".into(),
                "--".into(),
            ]);
        }
        a.push(AGENT_IN_SANDBOX.into());
        a.extend(agent_args.iter().map(|s| s.to_string()));
        a
    }

    fn std_command(&self, agent_args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.bwrap);
        cmd.env_clear().args(self.args(agent_args));
        cmd
    }
}

/// Hands out one uid per live sandbox from `[base, base + count)`, lowest free first.
#[derive(Debug)]
pub struct UidPool {
    base: u32,
    count: u32,
    used: BTreeSet<u32>,
}

impl UidPool {
    /// A pool of the `count` uids from `base`.
    pub fn new(base: u32, count: u32) -> Self {
        UidPool {
            base,
            count,
            used: BTreeSet::new(),
        }
    }

    /// A uid no live sandbox has, or `None` when all are taken.
    pub fn take(&mut self) -> Option<u32> {
        let uid = (0..self.count)
            .map(|i| self.base.saturating_add(i))
            .find(|u| !self.used.contains(u))?;
        self.used.insert(uid);
        Some(uid)
    }

    /// Frees `uid` for another sandbox.
    pub fn give_back(&mut self, uid: u32) {
        self.used.remove(&uid);
    }
}

/// The processes of process group `pgid` other than bubblewrap's own (its monitor and the
/// sandbox's init): the agent, to which a polite SIGTERM must go. bubblewrap's monitor dies of a
/// SIGTERM at once and takes the sandbox with it, so it must not receive one.
pub fn group_members_except_bwrap(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            let pgrp = rest.split_whitespace().nth(2).and_then(|p| p.parse().ok());
            pgrp == Some(pgid) && comm != "bwrap"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_unique_among_live_sandboxes_and_reused_after() {
        let mut pool = UidPool::new(1000, 3);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        let c = pool.take().unwrap();
        assert_eq!(
            BTreeSet::from([a, b, c]),
            BTreeSet::from([1000, 1001, 1002])
        );
        assert_eq!(pool.take(), None);
        pool.give_back(b);
        assert_eq!(pool.take(), Some(b));
    }

    #[test]
    fn a_pool_at_the_top_of_the_uid_range_does_not_overflow() {
        let mut pool = UidPool::new(u32::MAX - 1, 5);
        assert_eq!(pool.take(), Some(u32::MAX - 1));
        assert_eq!(pool.take(), Some(u32::MAX));
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn the_sandbox_sees_its_workdir_and_the_agent_but_drops_root_first() {
        let jail = Jail {
            bwrap: "/usr/bin/bwrap".into(),
            workdir: "/data/sandboxes/s1/work".into(),
            agent_bin: "/build/shoal-agent".into(),
            uid: Some(1_200_007),
        };
        let args = jail.args(&["run"]);
        let joined = args.join(" ");
        assert!(joined.contains("--bind /data/sandboxes/s1/work /work"));
        assert!(joined.contains("--ro-bind /build/shoal-agent /opt/shoal/shoal-agent"));
        assert!(joined.contains("--unshare-pid"));
        let setpriv = args.iter().position(|a| a == "setpriv").unwrap();
        let agent = args.iter().rposition(|a| a == AGENT_IN_SANDBOX).unwrap();
        assert!(
            setpriv < agent,
            "privileges are dropped before the agent runs"
        );
        assert!(args.contains(&"--reuid=1200007".to_string()));
        assert_eq!(args.last().unwrap(), "run");
        // Nothing of the data directory but the sandbox's own workdir is bound.
        assert!(!args.iter().any(|a| a == "/data" || a == "/data/sandboxes"));
    }

    #[test]
    fn isolation_modes_parse() {
        assert_eq!("auto".parse(), Ok(IsolationMode::Auto));
        assert_eq!("bubblewrap".parse(), Ok(IsolationMode::Bubblewrap));
        assert_eq!("none".parse(), Ok(IsolationMode::None));
        assert!("chroot".parse::<IsolationMode>().is_err());
    }
}
