//! Finding the workspace's binaries from a test, building them first when they are missing, so a
//! test of one crate can run another crate's binary (the scheduler's tests run `shoal-agent`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static BUILD: Mutex<()> = Mutex::new(());

/// The target directory the running test binary was built into (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/test-xxxx -> target/debug
    let deps = exe.parent().expect("deps dir");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The path of workspace binary `name` from package `package`, built with cargo if it is not there.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let path = target_dir().join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        build(package, name, &path);
    }
    path
}

fn build(package: &str, name: &str, path: &Path) {
    let profile = target_dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", package, "--bin", name]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success() && path.exists(),
        "building {name} failed; expected it at {}",
        path.display()
    );
}
