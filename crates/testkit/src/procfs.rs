//! Reading a test process's environment from `/proc`, without racing its `execve`.
//!
//! `Command::spawn` returns once the child has closed its close-on-exec descriptors, which the
//! kernel does early in `execve`, before it has written the new program's arguments and
//! environment. In that window `/proc/PID/exe` already names the new binary while
//! `/proc/PID/environ` reads empty, so a test that reads it at once fails now and then. This
//! waits until the environment holds the variable the caller expects.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The environment of process `pid` as `/proc/PID/environ` shows it now (empty when it cannot
/// be read, for example after the process exited).
pub fn environ_now(pid: u32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let (k, v) = std::str::from_utf8(kv).ok()?.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The environment of process `pid` once it holds `key` (the new program's environment is laid
/// out), or as it stands after five seconds, for the caller's assertion to report.
pub async fn environ_with(pid: u32, key: &str) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let env = environ_now(pid);
        if env.contains_key(key) || Instant::now() >= deadline {
            return env;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
