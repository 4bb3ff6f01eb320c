//! Unit tests of the fly provider's pure parts.

use super::*;
use fly_machines::MachineEvent;

fn cfg() -> FlyConfig {
    FlyConfig::new(
        "shoal-test",
        vec!["ams".into(), "fra".into()],
        "registry.fly.io/shoal-agent:1",
    )
}

#[test]
fn validation_lists_every_problem() {
    assert!(cfg().validate().is_empty(), "{:?}", cfg().validate());
    let mut bad = cfg();
    bad.api_url = "ftp://x".into();
    bad.app = "Bad App".into();
    bad.regions = vec!["ams".into(), "ams".into(), "A!".into()];
    bad.image = " ".into();
    bad.guest = GuestConfig {
        cpu_kind: "gpu".into(),
        cpus: 3,
        memory_mb: 300,
    };
    bad.poll_interval = Duration::ZERO;
    bad.env.insert("SHOAL_URL".into(), "x".into());
    let problems = bad.validate();
    for needle in [
        "api_url",
        "app",
        "twice",
        "`A!`",
        "image",
        "cpu_kind",
        "cpus",
        "memory_mb",
        "poll_interval",
        "SHOAL_URL",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no problem about {needle} in {problems:?}"
        );
    }
}

#[test]
fn the_config_table_parses_with_defaults() {
    let c: FlyConfig = toml::from_str(
        r#"
        app = "shoal-sandboxes"
        regions = ["ams", "fra"]
        image = "registry.fly.io/shoal-agent:latest"
        guest = { cpu_kind = "shared", cpus = 1, memory_mb = 512 }
        poll_interval = "1s"
        "#,
    )
    .unwrap();
    assert_eq!(c.api_url, "https://api.machines.dev");
    assert_eq!(c.poll_interval, Duration::from_secs(1));
    assert_eq!(c.lease_ttl, Duration::from_secs(60));
    assert!(c.validate().is_empty());
    assert!(
        toml::from_str::<FlyConfig>("app = \"a\"\nregions = []\nimage = \"i\"\ncolour = 1")
            .is_err()
    );
    let again: FlyConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(again, c, "the resolved config prints back as it reads");
}

#[test]
fn guests_fit_the_sandbox_and_flys_bounds() {
    let c = cfg();
    let g = c.guest_for(&SandboxSize {
        cpus: 0.5,
        memory_mb: 256,
    });
    assert_eq!((g.cpus, g.memory_mb), (1, 256));
    let g = c.guest_for(&SandboxSize {
        cpus: 1.0,
        memory_mb: 3000,
    });
    assert_eq!((g.cpus, g.memory_mb), (2, 3072));
    let g = c.guest_for(&SandboxSize {
        cpus: 3.0,
        memory_mb: 512,
    });
    assert_eq!((g.cpus, g.memory_mb), (4, 1024));
}

#[test]
fn idle_mode_decides_suspend() {
    let mut c = cfg();
    assert!(c.suspends());
    c.guest.memory_mb = 4096;
    c.guest.cpus = 2;
    assert!(!c.suspends());
    c.idle = IdleMode::Stop;
    c.guest.memory_mb = 256;
    assert!(!c.suspends());
}

fn machine(state: MachineState, events: &[(&str, i64)]) -> Machine {
    Machine {
        id: "m1".into(),
        state,
        updated_at: "2025-01-01T00:00:09Z".into(),
        events: events
            .iter()
            .rev()
            .map(|(status, ts)| MachineEvent {
                status: status.to_string(),
                timestamp: *ts,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn observations_follow_events_with_flys_timestamps() {
    let sandbox = SandboxRef {
        sandbox_id: "s".into(),
        tenant: "t".into(),
        provider_id: "m1".into(),
    };
    let mut t = Tracked {
        sandbox,
        last: None,
        last_event_ts: 0,
        created_here: None,
    };
    let m = machine(MachineState::Started, &[("created", 1), ("started", 2)]);
    let o = observe(&mut t, &m, 99);
    assert_eq!(
        o.iter().map(|o| (o.state, o.at)).collect::<Vec<_>>(),
        vec![(ObservedState::Running, 2)]
    );
    assert!(
        observe(&mut t, &m, 99).is_empty(),
        "nothing new, nothing reported"
    );
    // Between two looks it was suspended and woken: both are reported, in order.
    let m = machine(
        MachineState::Started,
        &[
            ("created", 1),
            ("started", 2),
            ("suspended", 5),
            ("started", 7),
        ],
    );
    let o = observe(&mut t, &m, 99);
    assert_eq!(
        o.iter().map(|o| (o.state, o.at)).collect::<Vec<_>>(),
        vec![(ObservedState::Suspended, 5), (ObservedState::Running, 7)]
    );
    // Events trimmed away: the state still tells, at the machine's update time.
    let m = machine(MachineState::Stopped, &[]);
    let o = observe(&mut t, &m, 99);
    assert_eq!(
        o.iter().map(|o| (o.state, o.at)).collect::<Vec<_>>(),
        vec![(ObservedState::Stopped, 1_735_689_609_000)]
    );
    // An unknown state reports nothing new.
    let m = machine(MachineState::Other("hibernating".into()), &[]);
    assert!(observe(&mut t, &m, 99).is_empty());
}

#[test]
fn machine_names_are_valid() {
    assert_eq!(machine_name("conf-T_1"), "shoal-conf-t-1");
    assert!(machine_name(&"x".repeat(100)).len() <= 63);
}

#[test]
fn transitions_list_as_where_billing_stands() {
    assert_eq!(
        listed_state(&MachineState::Stopping, None),
        Some(ObservedState::Running)
    );
    assert_eq!(
        listed_state(&MachineState::Starting, Some(ObservedState::Suspended)),
        Some(ObservedState::Suspended)
    );
    assert_eq!(
        listed_state(&MachineState::Destroying, Some(ObservedState::Running)),
        None
    );
}
