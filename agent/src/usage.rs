//! What a job used: its peak memory and CPU time, reported with its completion so the scheduler
//! can size the tenant's sandboxes (docs/adr/0024-right-sizing.md).
//!
//! Two sources. Where the sandbox has a cgroup v2 of its own with a memory limit (a container, a
//! pod) and the kernel lets a reader reset `memory.peak` (Linux 6.12 and later: the reset holds for the
//! file descriptor that wrote it), the peak is the cgroup's since the job started and the CPU time
//! the growth of `cpu.stat`'s `usage_usec`: everything the job's processes did, the agent's own
//! small share included. Elsewhere (a process sandbox), `wait4` on the job's command gives the
//! kernel's accounting of it and of the descendants it waited for: the largest resident set of
//! any of them, and their CPU time.

use shoal_protocol::JobUsage;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What `wait4` says a command used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rusage {
    /// The largest resident set of the command or a descendant it waited for, in KiB.
    pub max_rss_kib: u64,
    /// User and system CPU time, in milliseconds.
    pub cpu_ms: u64,
}

/// Waits for process `pid` (a child of this one) to end: its exit status and resource usage.
#[allow(unsafe_code)] // libc calls; each block says why it is sound
pub fn wait_for(pid: i32) -> std::io::Result<(ExitStatus, Rusage)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 writes only into the two locals passed by pointer, which outlive the call.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if rc == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ms = |t: libc::timeval| {
        (t.tv_sec.max(0) as u64)
            .saturating_mul(1000)
            .saturating_add(t.tv_usec.max(0) as u64 / 1000)
    };
    Ok((
        ExitStatus::from_raw(status),
        Rusage {
            max_rss_kib: ru.ru_maxrss.max(0) as u64,
            cpu_ms: ms(ru.ru_utime).saturating_add(ms(ru.ru_stime)),
        },
    ))
}

/// The sandbox's cgroup, measured from a job's start: `memory.peak` reset through a descriptor of
/// its own, and `cpu.stat` as it was.
pub struct CgroupMeter {
    peak: File,
    dir: PathBuf,
    cpu_usec_before: u64,
}

impl CgroupMeter {
    /// Starts measuring, where this process's cgroup v2 allows it; `None` elsewhere.
    pub fn start() -> Option<CgroupMeter> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let dir = PathBuf::from("/sys/fs/cgroup").join(cgroup_v2_path(&own)?);
        // Only a cgroup with a memory limit is a sandbox's own (a container's, a pod's): an
        // unlimited one may be a whole host session's, whose peak says nothing of the job.
        let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
        if !is_limited(&max) {
            return None;
        }
        let mut peak = File::options()
            .read(true)
            .write(true)
            .open(dir.join("memory.peak"))
            .ok()?;
        // Any write resets the peak seen through this descriptor (Linux 6.12+); an older kernel
        // refuses it, and the lifetime peak would say nothing of this job.
        peak.write_all(b"reset\n").ok()?;
        let cpu_usec_before = cpu_usage_usec(&std::fs::read_to_string(dir.join("cpu.stat")).ok()?)?;
        Some(CgroupMeter {
            peak,
            dir,
            cpu_usec_before,
        })
    }

    /// The peak memory (KiB) and CPU time (ms) since [`CgroupMeter::start`].
    fn read(mut self) -> Option<(u64, u64)> {
        let mut text = String::new();
        self.peak.rewind().ok()?;
        self.peak.read_to_string(&mut text).ok()?;
        let peak_bytes: u64 = text.trim().parse().ok()?;
        let after = cpu_usage_usec(&std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?)?;
        Some((
            peak_bytes / 1024,
            after.saturating_sub(self.cpu_usec_before) / 1000,
        ))
    }
}

/// The cgroup v2 path (relative to the hierarchy's root) in `/proc/self/cgroup`'s text.
fn cgroup_v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/').to_string())
}

/// Whether a `memory.max` text sets a limit (`max` is none).
fn is_limited(memory_max: &str) -> bool {
    memory_max.trim().parse::<u64>().is_ok()
}

/// `usage_usec` in a `cpu.stat` text.
fn cpu_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

/// The job's usage from the cgroup where it was measured, else from `wait4`'s accounting; `None`
/// when neither is known (an analysis kind outside a cgroup).
pub fn measure(
    meter: Option<CgroupMeter>,
    rusage: Option<Rusage>,
    wall: Duration,
    oom_killed: bool,
) -> Option<JobUsage> {
    let (peak_memory_kib, cpu_ms) = meter
        .and_then(CgroupMeter::read)
        .or(rusage.map(|r| (r.max_rss_kib, r.cpu_ms)))?;
    Some(JobUsage {
        peak_memory_kib,
        cpu_ms,
        wall_ms: wall.as_millis().min(u128::from(u64::MAX)) as u64,
        oom_killed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_are_read() {
        assert_eq!(
            cgroup_v2_path("4:memory:/x\n0::/system.slice/shoal.service\n").as_deref(),
            Some("system.slice/shoal.service")
        );
        assert_eq!(cgroup_v2_path("0::/\n").as_deref(), Some(""));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
        assert_eq!(
            cpu_usage_usec("usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n"),
            Some(123456)
        );
        assert_eq!(cpu_usage_usec("user_usec 1\n"), None);
        assert!(is_limited("536870912\n"));
        assert!(!is_limited("max\n"));
    }

    /// A real command that holds about 60 MiB: `wait4` sees its peak and its CPU time.
    #[test]
    #[allow(clippy::zombie_processes)] // reaped by `wait_for`, which clippy cannot see
    fn wait4_measures_a_command() {
        let child = std::process::Command::new("python3")
            .args(["-c", "b = bytearray(60 * 1024 * 1024)"])
            .spawn()
            .expect("python3 runs the test's allocation");
        let (status, ru) = wait_for(child.id() as i32).unwrap();
        assert!(status.success());
        assert!(
            (60 * 1024..200 * 1024).contains(&ru.max_rss_kib),
            "peak {} KiB",
            ru.max_rss_kib
        );
        let u = measure(None, Some(ru), Duration::from_millis(5), false).unwrap();
        assert_eq!(u.peak_memory_kib, ru.max_rss_kib);
        assert_eq!(u.wall_ms, 5);
    }
}
