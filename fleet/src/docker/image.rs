//! The sandbox image: a root filesystem made on this machine from our own `shoal-agent` binary, a
//! shell and the libraries they link, imported into the engine. Nothing is pulled.

use super::*;

/// How long building the sandbox image took, and what it holds.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    /// The image's tag.
    pub image: String,
    /// How long the build took.
    pub elapsed: Duration,
    /// The size of the root filesystem sent to the engine, in bytes.
    pub rootfs_bytes: usize,
}

/// `name:tag` split at the tag's colon (a registry's port is not a tag).
pub(super) fn split_image(name: &str) -> (&str, &str) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    }
}

/// An executable on the `PATH`.
pub(super) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The shared libraries and loader `bin` needs, as `ldd` lists them (none for a static binary).
pub(super) fn libraries(bin: &Path) -> Result<Vec<PathBuf>, String> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| format!("running ldd on {}: {e}", bin.display()))?;
    // `ldd` fails on a static binary ("not a dynamic executable"): nothing to add.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        for word in line.split_whitespace() {
            if word.starts_with('/') {
                let p = PathBuf::from(word);
                if p.exists() && !libs.contains(&p) {
                    libs.push(p);
                }
            }
        }
    }
    Ok(libs)
}

/// The tools copied from the host when there is no busybox.
pub(super) const HOST_TOOLS: [&str; 22] = [
    "cat", "echo", "ls", "sleep", "head", "tail", "env", "true", "false", "mkdir", "rm", "cp",
    "mv", "wc", "grep", "sed", "id", "dd", "yes", "printf", "uname", "touch",
];

pub(super) struct RootFs {
    pub(super) tar: tar::Builder<Vec<u8>>,
    pub(super) dirs: BTreeSet<String>,
    pub(super) files: BTreeSet<String>,
}

impl RootFs {
    pub(super) fn new() -> Self {
        RootFs {
            tar: tar::Builder::new(Vec::new()),
            dirs: BTreeSet::new(),
            files: BTreeSet::new(),
        }
    }

    pub(super) fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    pub(super) fn dir(&mut self, path: &str, mode: u32) -> Result<(), String> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent, 0o755)?;
        }
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.tar
            .append_data(&mut h, format!("{path}/"), std::io::empty())
            .map_err(|e| e.to_string())?;
        self.dirs.insert(path.to_string());
        Ok(())
    }

    pub(super) fn parent(&mut self, path: &str) -> Result<(), String> {
        match path.trim_start_matches('/').rsplit_once('/') {
            Some((parent, _)) => self.dir(parent, 0o755),
            None => Ok(()),
        }
    }

    pub(super) fn data(&mut self, path: &str, mode: u32, bytes: &[u8]) -> Result<(), String> {
        let rel = path.trim_start_matches('/').to_string();
        if self.files.contains(&rel) {
            return Ok(());
        }
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Regular, mode, bytes.len() as u64);
        self.tar
            .append_data(&mut h, &rel, bytes)
            .map_err(|e| e.to_string())?;
        self.files.insert(rel);
        Ok(())
    }

    /// Copies a host file (following links) to `dest`.
    pub(super) fn host_file(&mut self, src: &Path, dest: &str) -> Result<(), String> {
        let bytes = std::fs::read(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(src)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        self.data(dest, mode, &bytes)
    }

    /// Copies a host program and the libraries it links, each at its own path.
    pub(super) fn program(&mut self, src: &Path, dest: &str) -> Result<(), String> {
        self.host_file(src, dest)?;
        for lib in libraries(src)? {
            let p = lib.to_string_lossy().into_owned();
            self.host_file(&lib, &p)?;
        }
        Ok(())
    }

    pub(super) fn symlink(&mut self, path: &str, target: &str) -> Result<(), String> {
        let rel = path.trim_start_matches('/').to_string();
        if self.files.contains(&rel) {
            return Ok(());
        }
        self.parent(path)?;
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, &rel, target)
            .map_err(|e| e.to_string())?;
        self.files.insert(rel);
        Ok(())
    }
}

/// The sandbox image's root filesystem as a tar: the agent, a shell and tools, their libraries.
pub fn rootfs_tar(agent: &Path, busybox: Option<&Path>) -> Result<Vec<u8>, String> {
    let mut fs = RootFs::new();
    for d in [
        "bin",
        "usr/bin",
        "usr/local/bin",
        "etc",
        "work",
        "root",
        "proc",
        "sys",
        "dev",
    ] {
        fs.dir(d, 0o755)?;
    }
    fs.dir("tmp", 0o1777)?;
    fs.program(agent, AGENT_PATH)?;
    match busybox {
        Some(bb) => {
            fs.program(bb, "/bin/busybox")?;
            let out = std::process::Command::new(bb)
                .arg("--list")
                .output()
                .map_err(|e| format!("running {} --list: {e}", bb.display()))?;
            for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if applet != "busybox" {
                    fs.symlink(&format!("/bin/{applet}"), "busybox")?;
                }
            }
        }
        None => {
            let sh = std::fs::canonicalize("/bin/sh")
                .map_err(|e| format!("no busybox, and no /bin/sh to copy: {e}"))?;
            fs.program(&sh, "/bin/sh")?;
            for tool in HOST_TOOLS {
                if let Some(p) = which(tool) {
                    let p = std::fs::canonicalize(&p).unwrap_or(p);
                    fs.program(&p, &format!("/bin/{tool}"))?;
                }
            }
        }
    }
    fs.data(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs.data("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    fs.tar.into_inner().map_err(|e| e.to_string())
}

impl Inner {
    /// The image name in force: configured, else named for the agent binary's digest.
    pub(super) async fn image_name(&self) -> Result<String, ProviderError> {
        if let Some(i) = &self.cfg.image {
            return Ok(i.clone());
        }
        let agent = self.agent_bin()?;
        let busybox = self.busybox();
        tokio::task::spawn_blocking(move || {
            use sha2::Digest;
            use std::io::Read;
            let mut h = sha2::Sha256::new();
            let mut f = std::fs::File::open(&agent)
                .map_err(|e| ProviderError::Permanent(format!("{}: {e}", agent.display())))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| ProviderError::Permanent(e.to_string()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            h.update(if busybox.is_some() { b"bb" } else { b"sh" });
            Ok(format!(
                "shoal-sandbox:{}",
                &hex::encode(h.finalize())[..12]
            ))
        })
        .await
        .map_err(|e| ProviderError::Permanent(e.to_string()))?
    }

    pub(super) fn agent_bin(&self) -> Result<PathBuf, ProviderError> {
        let p = self.cfg.agent_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("shoal-agent")))
                .unwrap_or_else(|| PathBuf::from("shoal-agent"))
        });
        if p.is_file() {
            Ok(p)
        } else {
            Err(ProviderError::Permanent(format!(
                "the sandbox image is missing and cannot be built: no shoal-agent at {} (set [provider.docker] agent_bin or image)",
                p.display()
            )))
        }
    }

    pub(super) fn busybox(&self) -> Option<PathBuf> {
        if let Some(b) = &self.cfg.busybox {
            return Some(b.clone());
        }
        which("busybox")
    }

    pub(super) async fn image(&self) -> Result<String, ProviderError> {
        self.image
            .get_or_try_init(|| async {
                let name = self.image_name().await?;
                let d = self.client().await?;
                match d.inspect_image(&name).await {
                    Ok(_) => Ok(name),
                    Err(e) if status_of(&e) == Some(404) => {
                        let built = self.build_image(&name).await?;
                        tracing::info!(image = %built.image, elapsed = ?built.elapsed, "docker: built the sandbox image");
                        Ok(name)
                    }
                    Err(e) => Err(to_provider_error(e)),
                }
            })
            .await
            .cloned()
    }

    pub(super) async fn build_image(&self, name: &str) -> Result<ImageBuild, ProviderError> {
        let started = Instant::now();
        let agent = self.agent_bin()?;
        let busybox = self.busybox();
        let tar = tokio::task::spawn_blocking(move || rootfs_tar(&agent, busybox.as_deref()))
            .await
            .map_err(|e| ProviderError::Permanent(e.to_string()))?
            .map_err(ProviderError::Permanent)?;
        let rootfs_bytes = tar.len();
        let (repo, tag) = split_image(name);
        let d = self.client().await?;
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            changes: vec![
                format!("ENTRYPOINT [\"{AGENT_PATH}\"]"),
                "WORKDIR /work".into(),
                "ENV PATH=/usr/local/bin:/usr/bin:/bin".into(),
                format!("LABEL {LABEL_IMAGE}=sandbox"),
            ],
            ..Default::default()
        };
        let mut stream = d.create_image(
            Some(opts),
            Some(bollard::body_full(bytes::Bytes::from(tar))),
            None,
        );
        while let Some(r) = stream.next().await {
            if let Err(e) = r {
                return Err(match e {
                    bollard::errors::Error::DockerStreamError { error } => {
                        ProviderError::Permanent(format!("importing the sandbox image: {error}"))
                    }
                    other => to_provider_error(other),
                });
            }
        }
        Ok(ImageBuild {
            image: name.to_string(),
            elapsed: started.elapsed(),
            rootfs_bytes,
        })
    }
}
