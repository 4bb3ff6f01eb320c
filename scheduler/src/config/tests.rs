//! The configuration's resolution: sources, defaults, every error at once.

use super::*;

#[test]
fn every_bad_value_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.toml");
    std::fs::write(
        &path,
        "idle_action = \"nap\"\nlease_ttl = \"soon\"\nmax_log_bytes = \"lots\"\n",
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path),
        listen: Some("nowhere".into()),
        provider: Some("mainframe".into()),
        idle_timeout: Some("10 parsecs".into()),
        idle_policy: Some("sometimes".into()),
        ..Default::default()
    };
    let errs = Config::resolve(&args).unwrap_err().0;
    for key in [
        "max_log_bytes",
        "idle_timeout",
        "idle_policy",
        "lease_ttl",
        "listen",
        "provider",
        "idle_action",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(key)),
            "{key} not reported in {errs:?}"
        );
    }
}

#[test]
fn byte_counts_read_with_units_and_stay_in_range() {
    assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
    assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
    assert_eq!(parse_bytes(" 2 MiB "), Ok(2 << 20));
    assert!(parse_bytes("1MB").is_err());
    assert!(parse_bytes("-1").is_err());
    assert!(parse_bytes("99999999999999999999GiB").is_err());
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("shoal-agent");
    std::fs::write(&agent, "").unwrap();
    let resolve = |body: &str| {
        let path = dir.path().join("shoal.toml");
        std::fs::write(
            &path,
            format!("{body}\n[provider.process]\nagent_bin = {agent:?}\n"),
        )
        .unwrap();
        Config::resolve(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
    };
    assert_eq!(resolve("").unwrap().max_log_bytes, DEFAULT_MAX_LOG_BYTES);
    assert_eq!(resolve("max_log_bytes = 4096").unwrap().max_log_bytes, 4096);
    assert_eq!(
        resolve("max_log_bytes = \"64KiB\"").unwrap().max_log_bytes,
        65536
    );
    for bad in ["max_log_bytes = 10", "max_log_bytes = \"1GiB\""] {
        let errs = resolve(bad).unwrap_err().0;
        assert!(
            errs.iter().any(|e| e.starts_with("max_log_bytes")),
            "{bad}: {errs:?}"
        );
    }
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.toml");
    std::fs::write(&path, "idle_timout = \"2s\"\n").unwrap();
    let errs = Config::resolve(&ServeArgs {
        config: Some(path),
        ..Default::default()
    })
    .unwrap_err()
    .0;
    assert!(errs.iter().any(|e| e.contains("idle_timout")), "{errs:?}");
}

#[test]
fn flags_override_the_file_and_defaults_fill_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("shoal-agent");
    std::fs::write(&agent, "").unwrap();
    let path = dir.path().join("shoal.toml");
    std::fs::write(
        &path,
        format!("idle_timeout = \"10m\"\nlisten = \"127.0.0.1:9000\"\n[provider]\nname = \"process\"\n[provider.process]\nagent_bin = {:?}\n", agent),
    )
    .unwrap();
    let args = ServeArgs {
        config: Some(path),
        idle_timeout: Some("2s".into()),
        ..Default::default()
    };
    let c = Config::resolve(&args).unwrap();
    assert_eq!(c.idle_timeout, Duration::from_secs(2));
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.advertise_url, "http://127.0.0.1:9000");
    assert_eq!(c.provider, ProviderKind::Process);
    assert!(c.database_url.ends_with("shoal.db"));
}

#[test]
fn webhook_settings_are_read_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("shoal-agent");
    std::fs::write(&agent, "").unwrap();
    let path = dir.path().join("shoal.toml");
    let file = |extra: &str| {
        std::fs::write(
            &path,
            format!("[provider]\nname = \"process\"\n[provider.process]\nagent_bin = {agent:?}\n")
                .replace("[provider]", &format!("{extra}\n[provider]")),
        )
        .unwrap();
        Config::resolve(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
    };
    let c = file("").unwrap();
    assert_eq!(
        (
            c.webhook_retry_initial,
            c.webhook_max_attempts,
            c.webhook_allow_private
        ),
        (Duration::from_secs(5), 12, false),
        "the defaults"
    );
    let c = file(
        "webhook_retry_initial = \"250ms\"\nwebhook_max_attempts = 3\nwebhook_allow_private = true",
    )
    .unwrap();
    assert_eq!(
        (
            c.webhook_retry_initial,
            c.webhook_max_attempts,
            c.webhook_allow_private
        ),
        (Duration::from_millis(250), 3, true)
    );
    let errs = file("webhook_retry_initial = \"2h\"\nwebhook_max_attempts = 0")
        .unwrap_err()
        .0;
    for key in ["webhook_retry_initial", "webhook_max_attempts"] {
        assert!(
            errs.iter().any(|e| e.starts_with(key)),
            "{key} not in {errs:?}"
        );
    }
}

#[test]
fn names_become_enums_with_errors_that_list_the_choices() {
    assert_eq!("fly".parse::<ProviderKind>(), Ok(ProviderKind::Fly));
    assert_eq!(
        "mainframe".parse::<ProviderKind>().unwrap_err(),
        "`mainframe` is not one of process, docker, fly, kubernetes"
    );
    assert_eq!(parse_idle_action("suspend"), Ok(IdleAction::Suspend));
    assert_eq!(
        parse_idle_action("nap").unwrap_err(),
        "`nap` is not stop or suspend"
    );
    assert_eq!(
        ProviderKind::Process.default_idle_action(),
        IdleAction::Stop
    );
    assert_eq!(ProviderKind::Fly.default_idle_action(), IdleAction::Suspend);
}

#[test]
fn pool_defaults_are_the_planners() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("shoal-agent");
    std::fs::write(&agent, "").unwrap();
    let path = dir.path().join("shoal.toml");
    std::fs::write(
        &path,
        format!("[provider.process]\nagent_bin = {agent:?}\n"),
    )
    .unwrap();
    let c = Config::resolve(&ServeArgs {
        config: Some(path),
        ..Default::default()
    })
    .unwrap();
    let p = PoolPolicy::default();
    assert_eq!(c.idle_timeout.as_millis() as i64, p.idle_timeout_ms);
    assert_eq!(c.sandbox_retention.as_millis() as i64, p.retention_ms);
    assert_eq!(c.boot_timeout.as_millis() as i64, p.boot_timeout_ms);
    assert_eq!(c.idle_action, p.idle_action);
    assert_eq!(c.provider, ProviderKind::Process);
}

#[test]
fn the_warm_pool_is_read_per_provider_and_checked_with_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("shoal-agent");
    std::fs::write(&agent, "").unwrap();
    let resolve = |body: &str, flag: Option<&str>| {
        let path = dir.path().join("shoal.toml");
        std::fs::write(
            &path,
            format!("{body}\n[provider.process]\nagent_bin = {agent:?}\n"),
        )
        .unwrap();
        Config::resolve(&ServeArgs {
            config: Some(path),
            warm_pool: flag.map(str::to_string),
            ..Default::default()
        })
    };
    assert_eq!(resolve("", None).unwrap().warm_pool, 0);
    assert_eq!(resolve("warm_pool = 3", None).unwrap().warm_pool, 3);
    // The running provider's count (process), not another's.
    let table = "[warm_pool]\nfly = 5\nprocess = 2";
    assert_eq!(resolve(table, None).unwrap().warm_pool, 2);
    assert_eq!(resolve(table, Some("4")).unwrap().warm_pool, 4);
    let errs = resolve("fleet_max_sandboxes = 2\nlease_ttl = \"soon\"", Some("2"))
        .unwrap_err()
        .0;
    assert!(errs.iter().any(|e| e.starts_with("warm_pool")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("lease_ttl")), "{errs:?}");
    let errs = resolve("", Some("many")).unwrap_err().0;
    assert!(errs.iter().any(|e| e.starts_with("warm_pool")), "{errs:?}");
    assert!(resolve("[warm_pool]\nprocess = 2\nvms = 1", None).is_err());
}

#[test]
fn database_pools_are_read_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("shoal-agent");
    std::fs::write(&agent, "").unwrap();
    let path = dir.path().join("shoal.toml");
    let write = |pools: &str| {
        std::fs::write(
            &path,
            format!("{pools}[provider.process]\nagent_bin = {agent:?}\n"),
        )
        .unwrap()
    };
    let args = ServeArgs {
        config: Some(path.clone()),
        ..Default::default()
    };
    write("database_pool = 24\ncontrol_pool = 6\n");
    let c = Config::resolve(&args).unwrap();
    assert_eq!((c.database_pool, c.control_pool), (24, 6));
    write("");
    let c = Config::resolve(&args).unwrap();
    assert_eq!((c.database_pool, c.control_pool), (16, 4));
    write("database_pool = 1\ncontrol_pool = 0\n");
    let errs = Config::resolve(&args).unwrap_err().0;
    for key in ["database_pool", "control_pool"] {
        assert!(
            errs.iter().any(|e| e.starts_with(key)),
            "{key} not reported in {errs:?}"
        );
    }
}
