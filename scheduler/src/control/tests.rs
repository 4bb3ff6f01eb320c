//! The control loop's unit tests: a real SQLite store in a temporary directory, the testkit's
//! recording fake provider, and tokio's paused clock (the loop's clock reads it), so each runs in
//! milliseconds and waits for nothing real.

use super::*;
use serde_json::json;
use shoal_core::audit::Actor;
use shoal_core::{JobState, LimitsPatch, PlanTier, RetryOn, RetryPolicy, SandboxState};
use shoal_fleet::{ObservedState, ProviderError, SandboxRef};
use shoal_store::{LeasePolicy, NewJob, NewSandbox};
use shoal_testkit::fake_provider::FakeProvider;
use std::sync::OnceLock;
use tokio::sync::mpsc::unbounded_channel;

const T: &str = "acme";
const IDLE_MS: Millis = 60_000;
const HEARTBEAT_MS: Millis = 1_000;
const LEASE: LeasePolicy = LeasePolicy {
    max_concurrent_jobs: None,
    draining: false,
    lease_ttl_ms: 3_600_000,
};

/// Epoch milliseconds that follow tokio's (paused) clock.
struct PausedClock {
    base: Millis,
    start: Instant,
}

impl Clock for PausedClock {
    fn now_ms(&self) -> Millis {
        self.base + self.start.elapsed().as_millis() as Millis
    }
}

/// Records what the loop signals; can depose the loop when it wakes a sandbox.
#[derive(Default)]
struct Recorder {
    work: Mutex<Vec<String>>,
    jobs: Mutex<Vec<String>>,
    depose_on_wake: OnceLock<std::sync::Weak<Control>>,
}

impl Signals for Recorder {
    fn work_changed(&self, tenant: &str) {
        self.work.lock().unwrap().push(tenant.to_string());
    }
    fn job_changed(&self, id: &str, _pulse: Pulse) {
        self.jobs.lock().unwrap().push(id.to_string());
    }
    fn usage_written(&self) {}
    fn planned(&self, _desired: &[(String, u32)]) {}
    fn woken(&self, _tenant: &str) -> Option<Duration> {
        if let Some(c) = self.depose_on_wake.get().and_then(std::sync::Weak::upgrade) {
            // Another replica took over while this one was applying its plan.
            c.epoch.store(0, Ordering::SeqCst);
        }
        None
    }
    fn ready(&self) {}
}

struct Harness {
    control: Arc<Control>,
    store: Arc<dyn Store>,
    fake: Arc<FakeProvider>,
    signals: Arc<Recorder>,
    clock: Arc<PausedClock>,
    obs: UnboundedReceiver<Observation>,
    _shutdown: CancellationToken,
    _dir: tempfile::TempDir,
    _frozen: std::sync::mpsc::Sender<()>,
}

/// Stops tokio's paused clock from moving by itself for as long as the returned sender lives.
/// A paused clock auto-advances whenever the runtime idles, and waiting on SQLite's worker thread
/// looks idle: the clock would jump to the pool's acquire timeout. Tokio does not auto-advance
/// while a blocking task runs, so one is held open; time moves only by the test's `advance`.
fn freeze_clock() -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        let _ = rx.recv();
    });
    tx
}

async fn harness() -> Harness {
    let frozen = freeze_clock();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shoal.db").display());
    let store = shoal_store::open(&url).await.unwrap();
    let clock = Arc::new(PausedClock {
        base: 1_800_000_000_000,
        start: Instant::now(),
    });
    let (tx, obs) = unbounded_channel();
    let c = Arc::clone(&clock);
    let fake = Arc::new(FakeProvider::new(tx).with_clock(move || c.now_ms()));
    let signals = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let deps = Deps {
        store: Arc::clone(&store),
        provider: Arc::clone(&fake) as Arc<dyn Provider>,
        metrics: Arc::new(Metrics::new(16)),
        clock: Arc::clone(&clock) as Arc<dyn Clock>,
        signals: Arc::clone(&signals) as Arc<dyn Signals>,
        kick: Arc::new(Notify::new()),
        shutdown: shutdown.clone(),
        provider_stopped: watch::channel(false).1,
        adaptive: None,
        settings: Settings {
            secret: "secret".into(),
            advertise_url: "http://127.0.0.1:9".into(),
            suspend_idle: false,
            idle_timeout_ms: IDLE_MS,
            retention_ms: 24 * 3_600_000,
            boot_timeout_ms: 120_000,
            heartbeat_interval_ms: HEARTBEAT_MS,
            fleet_max_sandboxes: None,
            due_lead_ms: 10_000,
            usage: Default::default(),
            warm_pool: 0,
        },
    };
    let control = Control::new(deps, Arc::new(crate::leader::Solo));
    // It leads (as the leadership task would have it after acquiring).
    control.epoch.store(1, Ordering::SeqCst);
    let now = clock.now_ms();
    store
        .put_tenant(
            T,
            PlanTier::Team,
            &LimitsPatch::default(),
            now,
            &Actor::system("test"),
        )
        .await
        .unwrap();
    Harness {
        control,
        store,
        fake,
        signals,
        clock,
        obs,
        _shutdown: shutdown,
        _dir: dir,
        _frozen: frozen,
    }
}

impl Harness {
    fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    async fn enqueue(&self, id: &str) {
        let job = NewJob {
            id: id.into(),
            tenant: T.into(),
            kind: "agent".into(),
            spec: json!({"command": ["true"]}),
            idempotency_key: None,
            priority: 0,
            max_attempts: 3,
            timeout_s: 60,
            created_at: self.now(),
            run_at: None,
            retry: RetryPolicy {
                max_attempts: 3,
                on: vec![RetryOn::Lost],
                initial_backoff_s: 0.0,
                max_backoff_s: 0.0,
            },
            schedule: None,
        };
        self.store
            .admit(job, 0, None, &Actor::system("test"))
            .await
            .unwrap();
    }

    /// A sandbox the store and the fake both hold, running; `None` leaves it booting, else its
    /// agent asks for work (ready, or busy when a job is queued) or it is put to sleep.
    async fn sandbox(&self, id: &str, to: Option<SandboxState>) -> SandboxRef {
        self.store
            .insert_sandbox(NewSandbox {
                id: id.into(),
                tenant: T.into(),
                provider: "fake".into(),
                token_hash: format!("hash-{id}"),
                cpus_milli: 1000,
                memory_mb: 256,
                now: self.now(),
            })
            .await
            .unwrap();
        let sref = self.fake.plant(id, T);
        self.store
            .set_provider_id(id, &sref.provider_id)
            .await
            .unwrap();
        match to {
            None => {}
            Some(SandboxState::Ready | SandboxState::Busy) => {
                self.store.lease(id, LEASE, self.now()).await.unwrap();
            }
            Some(state) => {
                let observed = match state {
                    SandboxState::Suspended => ObservedState::Suspended,
                    _ => ObservedState::Stopped,
                };
                self.fake.lose(id, observed);
                assert!(
                    self.store
                        .transition(id, &[SandboxState::Booting], state, self.now())
                        .await
                        .unwrap()
                );
            }
        }
        sref
    }

    async fn state(&self, id: &str) -> SandboxState {
        self.store.sandbox(id).await.unwrap().unwrap().state
    }

    /// One planning pass and every provider call it started.
    async fn pass(&self) {
        self.control.pass().await.unwrap();
        self.control.drain().await;
    }

    /// The provider calls since `from`, as `op sandbox`, `list`s left out.
    fn calls_since(&self, from: usize) -> Vec<String> {
        self.fake.calls()[from..]
            .iter()
            .filter(|c| c.op != "list" && c.op != "tenant_limits")
            .map(|c| format!("{} {}", c.op, c.sandbox))
            .collect()
    }

    async fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        self.store
            .events(Some(T), 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.detail)
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn wakes_suspended_then_the_most_recent_stopped_then_creates() {
    let h = harness().await;
    h.sandbox("old-stopped", Some(SandboxState::Stopped)).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    h.sandbox("suspended", Some(SandboxState::Suspended)).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    h.sandbox("new-stopped", Some(SandboxState::Stopped)).await;
    for j in ["j1", "j2", "j3", "j4"] {
        h.enqueue(j).await;
    }
    let from = h.fake.calls().len();
    h.pass().await;
    let calls = h.calls_since(from);
    assert_eq!(
        calls[..3],
        ["resume suspended", "start new-stopped", "start old-stopped"],
        "{calls:?}"
    );
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[3].starts_with("create sb_"), "{calls:?}");
    for id in ["suspended", "new-stopped", "old-stopped"] {
        assert_eq!(h.state(id).await, SandboxState::Booting, "{id}");
    }
}

#[tokio::test(start_paused = true)]
async fn never_stops_a_busy_sandbox() {
    let h = harness().await;
    h.sandbox("idle-1", Some(SandboxState::Ready)).await;
    h.sandbox("idle-2", Some(SandboxState::Ready)).await;
    h.enqueue("j1").await;
    h.sandbox("busy", Some(SandboxState::Busy)).await;
    assert_eq!(h.state("busy").await, SandboxState::Busy);
    // Well past the idle timeout of every sandbox, the busy one included.
    tokio::time::advance(Duration::from_millis(IDLE_MS as u64 * 10)).await;
    let from = h.fake.calls().len();
    h.pass().await;
    let mut calls = h.calls_since(from);
    calls.sort();
    assert_eq!(calls, ["stop idle-1", "stop idle-2"]);
    assert_eq!(h.state("busy").await, SandboxState::Busy);
    assert_eq!(h.state("idle-1").await, SandboxState::Stopped);
    let job = h.store.job("j1").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Running);
    // And again: nothing more to do.
    let from = h.fake.calls().len();
    h.pass().await;
    assert!(h.calls_since(from).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_is_not_retried_in_the_pass_and_holds_off_the_tenant() {
    let h = harness().await;
    h.enqueue("j1").await;
    h.fake
        .fail_next("create", ProviderError::Transient("503".into()));
    h.pass().await;
    // One call: no retry stacked on the provider's own.
    let created = h.fake.calls_of("create");
    assert_eq!(created.len(), 1);
    assert_eq!(h.state(&created[0]).await, SandboxState::Destroyed);
    assert_eq!(h.events("create_failed").await.len(), 1);
    // The next pass, at once, does not create: the tenant is held off (2 s after a first
    // failure).
    h.pass().await;
    assert_eq!(h.fake.calls_of("create").len(), 1);
    tokio::time::advance(Duration::from_millis(1_999)).await;
    h.pass().await;
    assert_eq!(h.fake.calls_of("create").len(), 1);
    tokio::time::advance(Duration::from_millis(2)).await;
    h.pass().await;
    let created = h.fake.calls_of("create");
    assert_eq!(created.len(), 2);
    let rec = h.store.sandbox(&created[1]).await.unwrap().unwrap();
    assert_eq!(rec.state, SandboxState::Booting);
    assert!(rec.provider_id.is_some_and(|p| p.starts_with("fake-")));
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_the_provider_saw_stop_by_itself_is_unhealthy_and_replaced() {
    let mut h = harness().await;
    h.enqueue("j1").await;
    h.sandbox("sb", Some(SandboxState::Busy)).await;
    assert_eq!(
        h.store.job("j1").await.unwrap().unwrap().state,
        JobState::Running
    );
    // The machine failed (Fly's `failed`, a pod's `Failed`, a container that died: each
    // provider reports it stopped).
    h.fake.lose("sb", ObservedState::Stopped);
    let o = h.obs.recv().await.unwrap();
    assert_eq!(o.state, ObservedState::Stopped);
    h.control.observe(o).await;
    h.control.drain().await;
    // Unhealthy, then destroyed rather than woken again.
    assert_eq!(h.fake.calls_of("destroy"), ["sb"]);
    assert_eq!(h.state("sb").await, SandboxState::Destroyed);
    let job = h.store.job("j1").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.sandbox_id, None);
    assert_eq!(job.attempts, 1);
    let marked = h.events("sandbox_unhealthy").await;
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert_eq!(marked[0]["cause"], "provider_stopped");
    assert_eq!(marked[0]["was"], "busy");
    assert_eq!(marked[0]["jobs_requeued"], 1);
    assert!(h.signals.work.lock().unwrap().contains(&T.to_string()));
    assert_eq!(*h.signals.jobs.lock().unwrap(), ["j1"]);
    // The next pass replaces it for the job it gave back.
    let from = h.fake.calls().len();
    h.pass().await;
    let calls = h.calls_since(from);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].starts_with("create sb_"), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_sandbox_that_stops_while_booting_is_woken_again() {
    let mut h = harness().await;
    h.enqueue("j1").await;
    h.sandbox("sb", None).await;
    h.fake.lose("sb", ObservedState::Stopped);
    let o = h.obs.recv().await.unwrap();
    h.control.observe(o).await;
    h.control.drain().await;
    assert_eq!(h.state("sb").await, SandboxState::Stopped);
    assert!(h.events("sandbox_unhealthy").await.is_empty());
    let from = h.fake.calls().len();
    h.pass().await;
    assert_eq!(h.calls_since(from), ["start sb"]);
}

/// The running job of sandbox `id` and its lease.
async fn lease_of(h: &Harness, job: &str) -> String {
    h.store
        .job(job)
        .await
        .unwrap()
        .unwrap()
        .lease_id
        .expect("the job is leased")
}

/// One tick's health check and the provider calls it started.
async fn health(h: &Harness) {
    h.control.health().await.unwrap();
    h.control.drain().await;
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_stops_heartbeating_is_unhealthy_after_three_intervals_and_not_before() {
    let h = harness().await;
    h.enqueue("j1").await;
    let sref = h.sandbox("sb", Some(SandboxState::Busy)).await;
    // It is billed from its start.
    h.control
        .observe(Observation {
            sandbox: sref,
            state: ObservedState::Running,
            at: h.now(),
        })
        .await;
    let lease = lease_of(&h, "j1").await;
    // Heartbeats move the sandbox's last sign of life.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_millis(HEARTBEAT_MS as u64)).await;
        let a = h
            .store
            .heartbeat("j1", &lease, LEASE.lease_ttl_ms, h.now())
            .await
            .unwrap();
        assert!(a.ok);
        let rec = h.store.sandbox("sb").await.unwrap().unwrap();
        assert_eq!(rec.last_seen, Some(h.now()));
        health(&h).await;
        assert_eq!(h.state("sb").await, SandboxState::Busy);
    }
    let last_heartbeat = h.now();
    // Then the agent hangs. Three intervals of silence are allowed, to the millisecond.
    tokio::time::advance(Duration::from_millis(3 * HEARTBEAT_MS as u64)).await;
    health(&h).await;
    assert_eq!(h.state("sb").await, SandboxState::Busy);
    assert!(h.fake.calls_of("destroy").is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    health(&h).await;
    // Unhealthy, its job back with one attempt used, destroyed.
    let marked = h.events("sandbox_unhealthy").await;
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert_eq!(marked[0]["cause"], "agent_silent");
    assert_eq!(marked[0]["was"], "busy");
    assert_eq!(marked[0]["last_seen"], last_heartbeat);
    assert_eq!(marked[0]["silent_ms"], 3 * HEARTBEAT_MS + 1);
    let job = h.store.job("j1").await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.sandbox_id, None);
    assert_eq!(job.error.unwrap()["code"], "sandbox_unhealthy");
    assert_eq!(h.fake.calls_of("destroy"), ["sb"]);
    assert_eq!(h.state("sb").await, SandboxState::Destroyed);
    // A late heartbeat of the hung agent is refused.
    let late = h
        .store
        .heartbeat("j1", &lease, LEASE.lease_ttl_ms, h.now())
        .await
        .unwrap();
    assert!(!late.ok);
    // Its billing ends at its last heartbeat, not when it was found out or destroyed.
    let ledger = h.store.ledger(Some(T)).await.unwrap();
    let intervals = shoal_metering::intervals(&ledger, h.now());
    assert_eq!(intervals.len(), 1, "{intervals:?}");
    assert_eq!(intervals[0].end, last_heartbeat);
    assert_eq!(intervals[0].end - intervals[0].start, 3 * HEARTBEAT_MS);
    // The next pass replaces it.
    let from = h.fake.calls().len();
    h.pass().await;
    let calls = h.calls_since(from);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].starts_with("create sb_"), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_busy_sandbox_that_heartbeats_is_never_marked() {
    let h = harness().await;
    h.enqueue("j1").await;
    h.sandbox("sb", Some(SandboxState::Busy)).await;
    let lease = lease_of(&h, "j1").await;
    // Two minutes of a long job, heartbeating a little late every time.
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(HEARTBEAT_MS as u64 * 6 / 5)).await;
        let a = h
            .store
            .heartbeat("j1", &lease, LEASE.lease_ttl_ms, h.now())
            .await
            .unwrap();
        assert!(a.ok);
        health(&h).await;
    }
    assert_eq!(h.state("sb").await, SandboxState::Busy);
    assert!(h.events("sandbox_unhealthy").await.is_empty());
    assert!(h.fake.calls_of("destroy").is_empty());
    assert_eq!(
        h.store.job("j1").await.unwrap().unwrap().state,
        JobState::Running
    );
}

#[tokio::test(start_paused = true)]
async fn a_ready_sandbox_is_allowed_its_long_poll() {
    let h = harness().await;
    h.sandbox("sb", Some(SandboxState::Ready)).await;
    let limits = health::HealthLimits::of(HEARTBEAT_MS);
    // An idle agent sits in a lease request for up to a minute: not silent yet.
    tokio::time::advance(Duration::from_millis(limits.ready_ms as u64)).await;
    health(&h).await;
    assert_eq!(h.state("sb").await, SandboxState::Ready);
    // Asking again is a sign of life.
    h.store.lease("sb", LEASE, h.now()).await.unwrap();
    tokio::time::advance(Duration::from_millis(limits.ready_ms as u64)).await;
    health(&h).await;
    assert_eq!(h.state("sb").await, SandboxState::Ready);
    tokio::time::advance(Duration::from_millis(1)).await;
    health(&h).await;
    assert_eq!(h.state("sb").await, SandboxState::Destroyed);
    let marked = h.events("sandbox_unhealthy").await;
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0]["was"], "ready");
    assert_eq!(marked[0]["jobs_requeued"], 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_gives_agents_a_full_interval_to_call_in() {
    let h = harness().await;
    h.enqueue("j1").await;
    h.sandbox("sb", Some(SandboxState::Busy)).await;
    // No leader for a while (its agent could not heartbeat anyone), then this replica leads.
    tokio::time::advance(Duration::from_secs(10)).await;
    h.control.leading_since.store(h.now(), Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(3 * HEARTBEAT_MS as u64)).await;
    health(&h).await;
    assert_eq!(h.state("sb").await, SandboxState::Busy);
    tokio::time::advance(Duration::from_millis(1)).await;
    health(&h).await;
    assert_eq!(h.state("sb").await, SandboxState::Destroyed);
}

#[test]
fn the_silence_check_is_pure() {
    let limits = health::HealthLimits::of(500);
    assert_eq!(limits.busy_ms, 1_500);
    assert_eq!(limits.ready_ms, 61_500);
    let sb = |id: &str, state, since, last_seen| shoal_store::SandboxRecord {
        id: id.into(),
        tenant: T.into(),
        state,
        provider: "fake".into(),
        provider_id: None,
        cpus_milli: 1000,
        memory_mb: 256,
        since,
        idle_since: None,
        last_seen,
        jobs_run: 0,
        created_at: 0,
        region: None,
    };
    let now = 100_000;
    let all = [
        sb("busy-quiet", SandboxState::Busy, 0, Some(now - 1_501)),
        sb("busy-heard", SandboxState::Busy, 0, Some(now - 1_500)),
        // A lease or a completion (its state's start) counts as a sign of life too.
        sb("busy-new", SandboxState::Busy, now - 10, Some(0)),
        sb("ready-polling", SandboxState::Ready, 0, Some(now - 61_500)),
        sb("ready-gone", SandboxState::Ready, 0, Some(now - 61_501)),
        sb("booting", SandboxState::Booting, 0, None),
        sb("stopped", SandboxState::Stopped, 0, None),
    ];
    let found: Vec<_> = health::silent(&all, limits, 0, now)
        .into_iter()
        .map(|s| (s.id, s.silent_since))
        .collect();
    assert_eq!(
        found,
        [
            ("busy-quiet".to_string(), now - 1_500),
            ("ready-gone".to_string(), now - 61_500)
        ]
    );
    // Counting from when the replica began to lead, no one is silent yet.
    assert!(health::silent(&all, limits, now - 1_000, now).is_empty());
}

#[tokio::test(start_paused = true)]
async fn orphans_are_collected_and_known_sandboxes_kept() {
    let h = harness().await;
    h.sandbox("known", Some(SandboxState::Ready)).await;
    let orphan = h.fake.plant("sb_orphan", T);
    h.control.reconcile(false).await.unwrap();
    assert_eq!(h.fake.calls_of("destroy"), ["sb_orphan"]);
    assert_eq!(h.fake.state("sb_orphan"), None);
    assert_eq!(h.fake.state("known"), Some(ObservedState::Running));
    assert_eq!(h.state("known").await, SandboxState::Ready);
    let collected = h.events("orphan_collected").await;
    assert_eq!(collected.len(), 1);
    assert_eq!(collected[0]["provider_id"], orphan.provider_id.as_str());
}

#[tokio::test(start_paused = true)]
async fn a_pass_that_loses_leadership_stops_changing_things() {
    let h = harness().await;
    for j in ["j1", "j2", "j3"] {
        h.enqueue(j).await;
    }
    let _ = h.signals.depose_on_wake.set(Arc::downgrade(&h.control));
    h.pass().await;
    // The plan had three creates: the first was recorded before the pass learned it was
    // deposed, and then undone without a provider call; the other two never happened.
    assert!(h.fake.calls_of("create").is_empty());
    let created = h.events("create").await;
    assert_eq!(created.len(), 1, "{created:?}");
    let first = created[0]["sandbox"].as_str().unwrap();
    assert_eq!(h.state(first).await, SandboxState::Destroyed);
    let sandboxes = h.store.sandboxes(Some(T)).await.unwrap();
    assert!(sandboxes.iter().all(|s| s.state == SandboxState::Destroyed));
    assert!(!h.control.leads());
    // While it does not lead, a pass asks nothing of the provider.
    h.pass().await;
    assert!(h.fake.calls_of("create").is_empty());
}

/// `limits.auto_size`: a tenant whose jobs peak at 60 MiB gets 128 MiB sandboxes from the next
/// create on (a running sandbox keeps its size), the change is an event and an audit record, and
/// it is applied once; an OOM kill at the new size moves it up again. Off, nothing changes.
#[tokio::test(start_paused = true)]
async fn auto_size_applies_the_recommendation_to_new_sandboxes() {
    use shoal_core::sizing::Sample;
    use shoal_store::JobUsageRecord;
    let h = harness().await;
    let sample = |mib: u64, oom: bool, memory_mb: u64| Sample {
        peak_memory_kib: mib * 1024,
        cpu_ms: 100,
        wall_ms: 1000,
        oom_killed: oom,
        memory_mb,
    };
    for i in 0..20 {
        let r = JobUsageRecord {
            job_id: format!("past-{i}"),
            attempt: 1,
            tenant: T.into(),
            at: h.now(),
            sample: sample(58 + i % 3, false, 512),
        };
        h.store.record_job_usage(&r).await.unwrap();
    }
    // Not opted in: the recommendation is there, but nothing is applied.
    assert_eq!(h.control.auto_size().await.unwrap(), 0);
    assert!(h.store.auto_sizes().await.unwrap().is_empty());
    let opt_in: LimitsPatch = serde_json::from_value(json!({"auto_size": true})).unwrap();
    h.store
        .put_tenant(T, PlanTier::Team, &opt_in, h.now(), &Actor::admin())
        .await
        .unwrap();
    h.sandbox("running", Some(SandboxState::Busy)).await;
    assert_eq!(h.control.auto_size().await.unwrap(), 1);
    assert_eq!(h.control.auto_size().await.unwrap(), 0, "applied once");
    let applied = h.store.auto_sizes().await.unwrap()[T];
    assert_eq!((applied.memory_mb, applied.cpus), (128, 1.0));
    let events = h.events("auto_size").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["from"], serde_json::Value::Null);
    assert_eq!(events[0]["to"]["memory_mb"], 128);
    assert_eq!(events[0]["evidence"]["jobs_sampled"], 20);
    // New work: the new sandbox is created at the applied size; the running one keeps its own.
    h.enqueue("j1").await;
    h.enqueue("j2").await;
    h.pass().await;
    let sandboxes = h.store.sandboxes(Some(T)).await.unwrap();
    let created: Vec<_> = sandboxes.iter().filter(|s| s.id != "running").collect();
    assert!(!created.is_empty(), "{sandboxes:?}");
    assert!(created.iter().all(|s| s.memory_mb == 128), "{created:?}");
    let running = sandboxes.iter().find(|s| s.id == "running").unwrap();
    assert_eq!(running.memory_mb, 256);
    // A job killed for lack of memory at 128 MiB: a step up, once.
    let oom = JobUsageRecord {
        job_id: "killed".into(),
        attempt: 1,
        tenant: T.into(),
        at: h.now(),
        sample: sample(127, true, 128),
    };
    h.store.record_job_usage(&oom).await.unwrap();
    assert_eq!(h.control.auto_size().await.unwrap(), 1);
    assert_eq!(h.store.auto_sizes().await.unwrap()[T].memory_mb, 256);
    assert_eq!(h.control.auto_size().await.unwrap(), 0);
    while h.store.seal_audit(1000).await.unwrap() > 0 {}
    let audited = h
        .store
        .audit_records(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "tenant.auto_size")
        .count();
    assert_eq!(audited, 2);
}
