//! The Fly emulator behaves like the published API: spec-checked requests, Fly's rate limits, the
//! error shapes, state transitions that drive real processes, and the injectable faults. Driven
//! over real HTTP with the `fly-machines` client and plain reqwest.

use fly_machines::{
    Client, ClientConfig, CreateLeaseRequest, CreateMachineRequest, ErrorKind, Limits, ListOptions,
    MachineConfig, MachineState, Rate, StopRequest, WaitState,
};
use shoal_testkit::fly::{Emulator, EmulatorConfig, Faults};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn client(emu: &Emulator) -> Client {
    Client::new(ClientConfig::new(emu.url(), emu.app(), "token")).unwrap()
}

/// A client that does not pace itself, to see the emulator enforce the limits.
fn unpaced(emu: &Emulator) -> Client {
    let fast = Rate {
        period: Duration::from_micros(1),
        burst: 1000,
    };
    let mut cfg = ClientConfig::new(emu.url(), emu.app(), "token");
    cfg.limits = Limits {
        action: fast,
        get: fast,
    };
    Client::new(cfg).unwrap()
}

fn machine_request(region: &str, env: &[(&str, &str)]) -> CreateMachineRequest {
    CreateMachineRequest {
        region: Some(region.into()),
        config: MachineConfig {
            image: "registry.fly.io/shoal-agent:test".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metadata: BTreeMap::from([("shoal_sandbox".to_string(), "s1".to_string())]),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim().chars().next()
}

#[tokio::test]
async fn machines_run_their_env_and_follow_stop_suspend_start_destroy() -> anyhow::Result<()> {
    let cfg = EmulatorConfig {
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    };
    let emu = Emulator::start(cfg).await?;
    let c = client(&emu);

    let m = c
        .create(&machine_request(
            "fra",
            &[
                ("SHOAL_URL", "http://127.0.0.1:9"),
                ("SHOAL_SANDBOX_TOKEN", "tok"),
            ],
        ))
        .await?;
    assert_eq!(m.state, MachineState::Created);
    assert_eq!(m.region, "fra");
    c.wait(&m.id, WaitState::Started, WAIT).await?;
    let view = emu.machines().into_iter().find(|v| v.id == m.id).unwrap();
    let pid = view.pid.expect("a started machine runs its process");
    let env = shoal_testkit::procfs::environ_with(pid, "FLY_MACHINE_ID").await;
    assert_eq!(
        env.get("SHOAL_SANDBOX_TOKEN").map(String::as_str),
        Some("tok")
    );
    assert_eq!(env.get("FLY_MACHINE_ID"), Some(&m.id));

    c.suspend(&m.id, None).await?;
    c.wait(&m.id, WaitState::Suspended, WAIT).await?;
    assert_eq!(
        process_state(pid),
        Some('T'),
        "a suspended machine's process is frozen"
    );
    c.start(&m.id, None).await?;
    c.wait(&m.id, WaitState::Started, WAIT).await?;
    assert_ne!(
        process_state(pid),
        Some('T'),
        "resumed, the same process runs on"
    );
    assert_eq!(emu.machines()[0].pid, Some(pid));

    // Starting a started machine is refused, as on Fly.
    let e = c.start(&m.id, None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Precondition);
    assert!(
        e.request_id.is_some(),
        "every error keeps its fly-request-id"
    );

    c.stop(&m.id, &StopRequest::default(), None).await?;
    c.wait(&m.id, WaitState::Stopped, WAIT).await?;
    assert_eq!(
        process_state(pid),
        None,
        "a stopped machine's process is gone"
    );
    let events = c.events(&m.id, None).await?;
    let statuses: Vec<&str> = events.iter().rev().map(|e| e.status.as_str()).collect();
    assert_eq!(
        statuses,
        ["created", "started", "suspended", "started", "stopped"]
    );
    assert!(
        events.windows(2).all(|w| w[0].timestamp >= w[1].timestamp),
        "newest first"
    );

    c.destroy(&m.id, false, None).await?;
    c.wait(&m.id, WaitState::Destroyed, WAIT).await?;
    assert!(c.list(&ListOptions::default()).await?.is_empty());
    assert_eq!(
        c.list(&ListOptions {
            include_deleted: true,
            ..Default::default()
        })
        .await?
        .len(),
        1
    );
    assert_eq!(emu.stats().spec_violations, 0);
    Ok(())
}

#[tokio::test]
async fn a_process_that_exits_stops_its_machine() -> anyhow::Result<()> {
    let cfg = EmulatorConfig {
        command: vec!["true".into()],
        ..Default::default()
    };
    let emu = Emulator::start(cfg).await?;
    let c = client(&emu);
    let m = c.create(&machine_request("ams", &[])).await?;
    c.wait(&m.id, WaitState::Stopped, WAIT).await?;
    let events = c.events(&m.id, None).await?;
    assert_eq!(events[0].kind, "exit");
    Ok(())
}

#[tokio::test]
async fn leases_guard_mutations() -> anyhow::Result<()> {
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    let c = client(&emu);
    let mut req = machine_request("ams", &[]);
    req.lease_ttl = Some(30);
    let m = c.create(&req).await?;
    let nonce = m
        .nonce
        .clone()
        .expect("create with lease_ttl answers the lease's nonce");
    c.wait(&m.id, WaitState::Started, WAIT).await?;
    let e = c
        .stop(&m.id, &StopRequest::default(), None)
        .await
        .unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::Conflict,
        "a mutation without the nonce is refused"
    );
    let e = c
        .acquire_lease(&m.id, &CreateLeaseRequest::default(), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    let refreshed = c
        .acquire_lease(
            &m.id,
            &CreateLeaseRequest {
                ttl: Some(60),
                ..Default::default()
            },
            Some(&nonce),
        )
        .await?;
    assert_eq!(refreshed.nonce, nonce);
    c.stop(&m.id, &StopRequest::default(), Some(&nonce)).await?;
    c.release_lease(&m.id, &nonce).await?;
    c.wait(&m.id, WaitState::Stopped, WAIT).await?;
    c.start(&m.id, None).await?;
    Ok(())
}

#[tokio::test]
async fn past_the_rate_limit_answers_429_with_retry_after() -> anyhow::Result<()> {
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    let fast = unpaced(&emu);
    let m = fast.create(&machine_request("ams", &[])).await?;
    let mut limited = None;
    for _ in 0..8 {
        if let Err(e) = fast.events(&m.id, None).await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("eight calls of one action in a row go past 3 per burst");
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert!(e.retry_after.is_some_and(|d| d >= Duration::from_secs(1)));
    assert!(emu.stats().past_rate_limit >= 1);

    // Get has its own, larger budget: ten in a row pass.
    for _ in 0..10 {
        fast.get(&m.id).await?;
    }
    assert_eq!(emu.stats().by_action["Machines_show"], 10);

    // The same calls, paced by the client, never go past.
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    let paced = client(&emu);
    let m = paced.create(&machine_request("ams", &[])).await?;
    for _ in 0..5 {
        paced.events(&m.id, None).await?;
    }
    for _ in 0..12 {
        paced.get(&m.id).await?;
    }
    assert_eq!(emu.stats().past_rate_limit, 0);
    Ok(())
}

#[tokio::test]
async fn requests_off_the_spec_answer_400_and_are_counted() -> anyhow::Result<()> {
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/apps/{}/machines", emu.url(), emu.app());
    let bad = http
        .post(&url)
        .bearer_auth("t")
        .json(&serde_json::json!({"config": {"image": "i", "guest": {"cpus": "two"}}}))
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);
    assert!(bad.headers().contains_key("fly-request-id"));
    let body: serde_json::Value = bad.json().await?;
    assert!(body["error"].as_str().unwrap().contains("cpus"), "{body}");

    let unknown = http
        .post(format!("{url}/abc/explode"))
        .bearer_auth("t")
        .send()
        .await?;
    assert_eq!(unknown.status().as_u16(), 400);
    let no_token = http.get(&url).send().await?;
    assert_eq!(no_token.status().as_u16(), 401);
    let stats = emu.stats();
    assert_eq!(stats.spec_violations, 2, "{:?}", stats.violation_samples);
    Ok(())
}

#[tokio::test]
async fn faults_answer_in_flys_shapes() -> anyhow::Result<()> {
    let faults = Faults {
        no_capacity: vec!["ams".into()],
        not_found_after_create_ms: 60_000,
        ..Default::default()
    };
    let emu = Emulator::start(EmulatorConfig {
        faults,
        ..Default::default()
    })
    .await?;
    let c = client(&emu);
    let e = c.create(&machine_request("ams", &[])).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InsufficientCapacity);
    assert!(e.request_id.is_some());
    let m = c.create(&machine_request("fra", &[])).await?;
    assert_eq!(
        c.get(&m.id).await.unwrap_err().kind,
        ErrorKind::NotFound,
        "not visible yet"
    );

    emu.set_faults(Faults {
        server_error_fraction: 1.0,
        ..Default::default()
    });
    let e = c.get(&m.id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Server);
    emu.set_faults(Faults {
        throttle: Some(shoal_testkit::fly::ThrottleBursts {
            every_ms: 60_000,
            length_ms: 59_000,
        }),
        ..Default::default()
    });
    let e = c.get(&m.id).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    let stats = emu.stats();
    assert_eq!((stats.capacity_refusals, stats.injected_5xx), (1, 1));
    assert!(stats.injected_429 >= 1);
    assert_eq!(
        stats.past_rate_limit, 0,
        "injected 429s are not counted as going past the limits"
    );
    Ok(())
}
