//! Unit tests of the docker provider's pure parts.

use super::*;

#[test]
fn the_config_table_parses_with_defaults() {
    let c: DockerConfig = toml::from_str("namespace = \"ci\"\nstop_grace = \"3s\"\n").unwrap();
    assert_eq!(c.namespace, "ci");
    assert_eq!(c.stop_grace, Duration::from_secs(3));
    assert!(c.init && c.stop_on_shutdown && !c.internal);
    assert!(c.validate().is_empty());
    assert!(toml::from_str::<DockerConfig>("nope = 1").is_err());
}

#[test]
fn validation_lists_every_problem() {
    let c = DockerConfig {
        namespace: "bad name".into(),
        image: Some("a b".into()),
        host: Some("ftp://x".into()),
        pids_limit: 1,
        ..Default::default()
    };
    let errs = c.validate();
    assert_eq!(errs.len(), 4, "{errs:?}");
}

#[test]
fn names_are_valid_docker_names_and_never_collide() {
    assert_eq!(container_name("shoal", "sb_01ab"), "shoal-sb_01ab");
    let a = network_name("shoal", "acme corp");
    let b = network_name("shoal", "acme/corp");
    assert!(a.starts_with("shoal-tenant-acme-corp-"));
    assert_ne!(a, b);
    assert!(
        a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    );
}

#[test]
fn loopback_urls_are_relayed_through_the_gateway() {
    let u = ParsedUrl::parse("http://127.0.0.1:8080/base").unwrap();
    assert!(u.is_local());
    assert_eq!((u.port, u.path.as_str()), (8080, "/base"));
    assert_eq!(u.target(), "127.0.0.1:8080");
    let u = ParsedUrl::parse("http://0.0.0.0:9").unwrap();
    assert_eq!(u.target(), "127.0.0.1:9");
    assert!(ParsedUrl::parse("http://localhost").unwrap().is_local());
    assert_eq!(ParsedUrl::parse("https://[::1]/").unwrap().port, 443);
    assert!(
        !ParsedUrl::parse("https://shoal.example.com:8443")
            .unwrap()
            .is_local()
    );
    assert!(ParsedUrl::parse("shoal.example.com").is_none());
}

#[test]
fn image_names_split_at_the_tag() {
    assert_eq!(split_image("shoal-sandbox:abc"), ("shoal-sandbox", "abc"));
    assert_eq!(
        split_image("registry:5000/shoal"),
        ("registry:5000/shoal", "latest")
    );
    assert_eq!(split_image("plain"), ("plain", "latest"));
}

#[test]
fn engine_events_map_to_states() {
    assert_eq!(event_state("start"), Some(ObservedState::Running));
    assert_eq!(event_state("unpause"), Some(ObservedState::Running));
    assert_eq!(event_state("pause"), Some(ObservedState::Suspended));
    assert_eq!(event_state("die"), Some(ObservedState::Stopped));
    assert_eq!(event_state("destroy"), Some(ObservedState::Gone));
    assert_eq!(event_state("exec_start"), None);
}

#[test]
fn the_root_filesystem_holds_the_agent_a_shell_and_their_libraries() {
    // Any dynamically linked program stands in for the agent.
    let agent = std::fs::canonicalize("/bin/sh").unwrap();
    let tar = rootfs_tar(&agent, None).unwrap();
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(tar.as_slice());
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    for want in ["usr/local/bin/shoal-agent", "bin/sh", "tmp/", "etc/passwd"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    assert!(
        names
            .iter()
            .any(|n| n.contains("ld-linux") || n.contains("ld-musl")),
        "no dynamic loader: {names:?}"
    );
}
