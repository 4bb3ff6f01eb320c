//! The store conformance suite: every guarantee the scheduler relies on, checked against a real
//! SQLite database file and against a real Postgres server (started by `shoal_testkit::services`).
//! Each check is one function taking a `Store`; [`conformance!`] makes a test of it per backend.

use serde_json::json;
use shoal_core::audit::Actor;
use shoal_core::{JobState, LimitsPatch, PlanTier, RetryOn, RetryPolicy, SandboxState};
use shoal_store::*;
use shoal_testkit::services::Postgres;
use std::sync::Arc;

/// What keeps a test's database alive: its directory or its server.
enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] Postgres),
}

async fn sqlite() -> Option<(Arc<dyn Store>, Db)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    Some((shoal_store::open(&url).await.unwrap(), Db::Sqlite(dir)))
}

/// A fresh Postgres server; `None` (skip) where Postgres is not installed, outside CI.
async fn postgres() -> Option<(Arc<dyn Store>, Db)> {
    let pg = Postgres::start().expect("starting Postgres")?;
    let url = pg.create_database().unwrap();
    Some((shoal_store::open(&url).await.unwrap(), Db::Postgres(pg)))
}

/// One test per backend for each check: `name => check_fn`.
macro_rules! conformance {
    ($($name:ident => $check:ident),+ $(,)?) => {
        mod sqlite_store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let (store, _db) = sqlite().await.unwrap();
                    $check(store).await;
                }
            )+
        }
        mod postgres_store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some((store, _db)) = postgres().await else { return };
                    $check(store).await;
                }
            )+
        }
    };
}

conformance! {
    keeps_every_guarantee => suite,
    concurrent_leases_never_hand_out_a_job_twice => concurrent_leases,
    ledger_and_events_round_trip => ledger_and_events,
    the_period_ledger_keeps_what_bears_on_the_period => period_ledger,
    concurrent_admissions_keep_quota_and_idempotency => concurrent_admissions,
    concurrency_limit_holds_across_concurrent_leases => concurrency_limit_races,
    open_refuses_an_unknown_url => unknown_url,
    keys_are_listed_and_revoked_by_id => keys,
    job_pages_stop_at_their_byte_budget => job_pages,
    job_logs_keep_the_newest_output_of_the_lease_holder => job_logs,
    concurrent_log_appends_store_each_byte_once => concurrent_log_appends,
    terminal_jobs_write_their_events_with_them => outbox_job_events,
    quota_signals_are_written_once_per_period => outbox_quota_signals,
    deliveries_are_leased_retried_and_given_up => outbox_deliveries,
    concurrent_delivery_leases_never_overlap => outbox_concurrent_leases,
    endpoints_are_owned_bounded_and_deletable => outbox_endpoints,
    outbox_appends_are_idempotent_and_ordered => outbox_appends,
    every_change_is_audited_and_sealed_into_one_chain => audit_chain,
    concurrent_sealers_seal_each_record_once => audit_concurrent_sealers,
    retention_takes_only_what_aged_out => retention,
    usage_intervals_close_with_their_events => usage_events,
    usage_cursor_pages_without_gap_or_repeat => usage_cursor_paging,
    concurrent_usage_writers_never_pass_the_cursor => usage_concurrent_writers,
    delayed_jobs_wait_and_retries_back_off_in_the_lease_query => delayed_and_retried,
    a_schedule_fires_each_time_once_and_is_audited => schedules,
    concurrent_fires_of_one_time_make_one_job => concurrent_fires,
    batches_admit_in_order_under_quota_and_keys => batch_admissions,
    a_silent_sandbox_becomes_unhealthy_unless_its_agent_called_in => unhealthy,
    job_usage_is_kept_per_attempt_within_its_window => sizing,
    a_blank_is_claimed_once_with_its_event_and_billing => warm_pool_claims,
    provider_leases_are_kept_for_a_successor_until_they_expire => provider_leases,
}

/// Lease nonces kept for a successor leader (migration 0120): kept, replaced, read only while
/// unexpired, pruned, forgotten.
async fn provider_leases(store: Arc<dyn Store>) {
    store
        .keep_provider_lease("m1", "n1", 5_000, 1_000)
        .await
        .unwrap();
    store
        .keep_provider_lease("m2", "n2", 2_000, 1_000)
        .await
        .unwrap();
    assert_eq!(
        store.provider_lease("m1", 1_500).await.unwrap(),
        Some(("n1".to_string(), 5_000))
    );
    // A new lease on the same machine replaces the old.
    store
        .keep_provider_lease("m1", "n1b", 9_000, 1_600)
        .await
        .unwrap();
    assert_eq!(
        store.provider_lease("m1", 1_700).await.unwrap(),
        Some(("n1b".to_string(), 9_000))
    );
    // Expired: not answered, and pruned by the next write.
    assert_eq!(store.provider_lease("m2", 2_000).await.unwrap(), None);
    store
        .keep_provider_lease("m3", "n3", 9_000, 3_000)
        .await
        .unwrap();
    assert_eq!(store.provider_lease("m2", 0).await.unwrap(), None);
    store.forget_provider_lease("m1").await.unwrap();
    assert_eq!(store.provider_lease("m1", 1_700).await.unwrap(), None);
    assert_eq!(
        store.provider_lease("m3", 3_000).await.unwrap(),
        Some(("n3".to_string(), 9_000))
    );
    assert_eq!(store.provider_lease("unknown", 0).await.unwrap(), None);
}

fn job(id: &str, tenant: &str, key: Option<&str>, priority: i32, at: i64) -> NewJob {
    NewJob {
        id: id.into(),
        tenant: tenant.into(),
        kind: "agent".into(),
        spec: json!({"command": ["true"]}).into(),
        idempotency_key: key.map(str::to_string),
        priority,
        max_attempts: 2,
        timeout_s: 60,
        created_at: at,
        run_at: None,
        // Lost jobs come back at once (no backoff), as the checks below expect.
        retry: RetryPolicy {
            max_attempts: 2,
            on: vec![RetryOn::Lost],
            initial_backoff_s: 0.0,
            max_backoff_s: 0.0,
        },
        schedule: None,
    }
}

const POLICY: LeasePolicy = LeasePolicy {
    max_concurrent_jobs: None,
    draining: false,
    lease_ttl_ms: 10_000,
};

async fn setup(store: &dyn Store) {
    store
        .put_tenant(
            "t",
            PlanTier::Pro,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await
        .unwrap();
    store
        .put_tenant(
            "u",
            PlanTier::Pro,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await
        .unwrap();
    for (id, tenant) in [("sb1", "t"), ("sb2", "t"), ("sbu", "u")] {
        store
            .insert_sandbox(NewSandbox {
                id: id.into(),
                tenant: tenant.into(),
                provider: "process".into(),
                token_hash: format!("h-{id}"),
                cpus_milli: 1000,
                memory_mb: 512,
                now: 0,
            })
            .await
            .unwrap();
    }
}

fn leased(l: Lease) -> JobRecord {
    match l {
        Lease::Job(j) => *j,
        other => panic!("expected a job, got {other:?}"),
    }
}

async fn suite(store: Arc<dyn Store>) {
    setup(&*store).await;

    // Idempotency: the same key gives the first job back and stores nothing new.
    let a = store
        .admit(
            job("j1", "t", Some("k"), 0, 1),
            0,
            Some(100),
            &Actor::admin(),
        )
        .await
        .unwrap();
    assert!(matches!(a, Admitted::Created { period_jobs: 1, .. }));
    let again = store
        .admit(
            job("j1b", "t", Some("k"), 0, 2),
            0,
            Some(100),
            &Actor::admin(),
        )
        .await
        .unwrap();
    assert!(matches!(&again, Admitted::Existing(j) if j.id == "j1"));
    assert!(store.job("j1b").await.unwrap().is_none());
    // The same key under another tenant is another job.
    assert!(matches!(
        store
            .admit(
                job("ju", "u", Some("k"), 0, 3),
                0,
                Some(100),
                &Actor::admin()
            )
            .await
            .unwrap(),
        Admitted::Created { .. }
    ));

    // Priority first, then age; a sandbox only ever gets its own tenant's jobs.
    store
        .admit(job("j2", "t", None, 5, 4), 0, Some(100), &Actor::admin())
        .await
        .unwrap();
    store
        .admit(job("j3", "t", None, 0, 5), 0, Some(100), &Actor::admin())
        .await
        .unwrap();
    let first = leased(store.lease("sb1", POLICY, 10).await.unwrap());
    assert_eq!(
        (first.id.as_str(), first.attempts, first.state),
        ("j2", 1, JobState::Running)
    );
    assert_eq!(
        store.sandbox("sb1").await.unwrap().unwrap().state,
        SandboxState::Busy
    );
    let second = leased(store.lease("sb2", POLICY, 11).await.unwrap());
    assert_eq!(second.id, "j1");
    assert_eq!(
        leased(store.lease("sbu", POLICY, 12).await.unwrap()).id,
        "ju"
    );

    // A stale lease cannot complete; the current one completes once.
    let stale = store
        .complete(
            "sb1",
            "j2",
            "not-the-lease",
            Finish::Succeeded {
                result: json!(1).into(),
            },
            20,
        )
        .await
        .unwrap();
    assert_eq!(stale, Completed::Stale);
    let lease = first.lease_id.clone().unwrap();
    let done = store
        .complete(
            "sb1",
            "j2",
            &lease,
            Finish::Succeeded {
                result: json!({"ok": true}).into(),
            },
            21,
        )
        .await
        .unwrap();
    assert!(
        matches!(&done, Completed::Done(j) if j.state == JobState::Succeeded && j.finished_at == Some(21))
    );
    assert_eq!(
        store
            .complete(
                "sb1",
                "j2",
                &lease,
                Finish::Succeeded {
                    result: json!(2).into()
                },
                22
            )
            .await
            .unwrap(),
        Completed::Stale
    );
    assert_eq!(
        store
            .job("j2")
            .await
            .unwrap()
            .unwrap()
            .result
            .map(|r| r.to_value()),
        Some(json!({"ok": true}))
    );
    let sb1 = store.sandbox("sb1").await.unwrap().unwrap();
    assert_eq!(
        (sb1.state, sb1.jobs_run, sb1.idle_since),
        (SandboxState::Ready, 1, Some(21))
    );

    // A lapsed lease puts the job back with its attempt counted; the old lease is then stale.
    let j1_lease = second.lease_id.clone().unwrap();
    assert!(
        store
            .heartbeat("j1", &j1_lease, 10_000, 15)
            .await
            .unwrap()
            .ok
    );
    assert!(
        store.expire_leases(10_000).await.unwrap().is_empty(),
        "the heartbeat extended the lease"
    );
    let back = store.expire_leases(10_016).await.unwrap();
    let mut back: Vec<_> = back
        .iter()
        .map(|j| (j.id.as_str(), j.state, j.attempts))
        .collect();
    back.sort_by_key(|b| b.0);
    assert_eq!(
        back,
        [("j1", JobState::Queued, 1), ("ju", JobState::Queued, 1)]
    );
    assert_eq!(
        store.sandbox("sb2").await.unwrap().unwrap().state,
        SandboxState::Ready
    );
    assert!(
        !store
            .heartbeat("j1", &j1_lease, 10_000, 10_017)
            .await
            .unwrap()
            .ok
    );
    assert_eq!(
        store
            .complete(
                "sb2",
                "j1",
                &j1_lease,
                Finish::Succeeded {
                    result: json!(0).into()
                },
                10_018
            )
            .await
            .unwrap(),
        Completed::Stale
    );
    // Second attempt lapses too: max_attempts 2 makes it dead.
    let again = leased(store.lease("sb2", POLICY, 10_020).await.unwrap());
    assert_eq!((again.id.as_str(), again.attempts), ("j1", 2));
    let dead = store.expire_leases(30_100).await.unwrap();
    assert_eq!(
        dead.iter()
            .map(|j| (j.id.as_str(), j.state))
            .collect::<Vec<_>>(),
        [("j1", JobState::Dead)]
    );

    // Cancel: a running job is cancelled at once and its agent learns it from the heartbeat.
    let j3 = leased(store.lease("sb1", POLICY, 30_200).await.unwrap());
    let l3 = j3.lease_id.unwrap();
    let c = store
        .cancel("j3", 30_300, &Actor::admin())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.state, JobState::Cancelled);
    assert_eq!(
        store.heartbeat("j3", &l3, 10_000, 30_400).await.unwrap(),
        HeartbeatAnswer {
            ok: false,
            cancel: true
        }
    );
    assert_eq!(
        store
            .complete(
                "sb1",
                "j3",
                &l3,
                Finish::Succeeded {
                    result: json!(0).into()
                },
                30_500
            )
            .await
            .unwrap(),
        Completed::Stale
    );
    assert_eq!(
        store.job("j3").await.unwrap().unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(
        store.sandbox("sb1").await.unwrap().unwrap().state,
        SandboxState::Ready,
        "a refused completion frees the sandbox"
    );
    // A finished job stays as it was.
    assert_eq!(
        store
            .cancel("j2", 30_600, &Actor::admin())
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Succeeded
    );

    // A sandbox that goes down puts its running job back.
    store
        .admit(
            job("j4", "t", None, 0, 40_000),
            0,
            Some(100),
            &Actor::admin(),
        )
        .await
        .unwrap();
    let j4 = leased(store.lease("sb2", POLICY, 40_001).await.unwrap());
    let back = store
        .sandbox_down("sb2", SandboxState::Stopped, 40_002)
        .await
        .unwrap();
    assert_eq!(
        back.iter()
            .map(|j| (j.id.as_str(), j.state))
            .collect::<Vec<_>>(),
        [("j4", JobState::Queued)]
    );
    assert_eq!(
        store
            .complete(
                "sb2",
                "j4",
                j4.lease_id.as_deref().unwrap(),
                Finish::Succeeded {
                    result: json!(0).into()
                },
                40_003
            )
            .await
            .unwrap(),
        Completed::Stale
    );
    assert_eq!(
        store.lease("sb2", POLICY, 40_004).await.unwrap(),
        Lease::Stop,
        "a stopped sandbox's agent is told to stop"
    );

    // Retry outcome: back in the queue without a terminal state.
    let j4 = leased(store.lease("sb1", POLICY, 40_010).await.unwrap());
    let r = store
        .complete(
            "sb1",
            "j4",
            j4.lease_id.as_deref().unwrap(),
            Finish::Retry {
                error: json!({"code": "agent_shutdown"}),
            },
            40_011,
        )
        .await
        .unwrap();
    assert!(matches!(r, Completed::Done(j) if j.state == JobState::Queued));

    // Limits: draining and concurrency hold work back.
    assert_eq!(
        store
            .lease(
                "sb1",
                LeasePolicy {
                    draining: true,
                    ..POLICY
                },
                40_020
            )
            .await
            .unwrap(),
        Lease::Idle
    );
    store
        .admit(
            job("j5", "t", None, 0, 40_030),
            0,
            Some(100),
            &Actor::admin(),
        )
        .await
        .unwrap();
    leased(store.lease("sb1", POLICY, 40_031).await.unwrap());
    store
        .transition(
            "sb2",
            &[SandboxState::Stopped],
            SandboxState::Booting,
            40_032,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .lease(
                "sb2",
                LeasePolicy {
                    max_concurrent_jobs: Some(1),
                    ..POLICY
                },
                40_033
            )
            .await
            .unwrap(),
        Lease::Idle
    );

    // Quota: the limit blocks and stores nothing.
    store
        .put_tenant(
            "q",
            PlanTier::Free,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await
        .unwrap();
    for i in 0..3 {
        assert!(matches!(
            store
                .admit(
                    job(&format!("q{i}"), "q", None, 0, 1),
                    7,
                    Some(3),
                    &Actor::admin()
                )
                .await
                .unwrap(),
            Admitted::Created { .. }
        ));
    }
    assert_eq!(
        store
            .admit(job("q3", "q", None, 0, 1), 7, Some(3), &Actor::admin())
            .await
            .unwrap(),
        Admitted::QuotaExceeded { used: 3, limit: 3 }
    );
    assert!(store.job("q3").await.unwrap().is_none());
    assert_eq!(store.period_jobs("q", 7).await.unwrap(), 3);
    assert!(
        matches!(
            store
                .admit(job("q4", "q", None, 0, 1), 8, Some(3), &Actor::admin())
                .await
                .unwrap(),
            Admitted::Created { period_jobs: 1, .. }
        ),
        "a new period starts afresh"
    );
    assert!(store.mark_quota_warned("q", 7, 100).await.unwrap());
    assert!(
        !store.mark_quota_warned("q", 7, 101).await.unwrap(),
        "warned once per period"
    );

    // A suspended sandbox's frozen agent gets no work and does not make it look ready.
    store
        .admit(
            job("ju2", "u", None, 0, 50_000),
            0,
            Some(100),
            &Actor::admin(),
        )
        .await
        .unwrap();
    assert!(
        store
            .transition(
                "sbu",
                &[
                    SandboxState::Ready,
                    SandboxState::Busy,
                    SandboxState::Booting
                ],
                SandboxState::Suspended,
                50_001
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.lease("sbu", POLICY, 50_002).await.unwrap(),
        Lease::Idle
    );
    assert_eq!(
        store.sandbox("sbu").await.unwrap().unwrap().state,
        SandboxState::Suspended
    );
    assert_eq!(
        store.job("ju2").await.unwrap().unwrap().state,
        JobState::Queued
    );

    // The list pages newest first with a cursor.
    let page1 = store
        .jobs(&JobFilter {
            tenant: Some("q".into()),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["q4", "q2", "q1"]
    );
    let page2 = store
        .jobs(&JobFilter {
            tenant: Some("q".into()),
            limit: 3,
            before_seq: Some(page1[2].seq),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["q0"]
    );
}

/// Many concurrent lease requests for few jobs: each job goes to exactly one sandbox.
async fn concurrent_leases(store: Arc<dyn Store>) {
    store
        .put_tenant(
            "t",
            PlanTier::Enterprise,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await
        .unwrap();
    for i in 0..16 {
        store
            .insert_sandbox(NewSandbox {
                id: format!("s{i}"),
                tenant: "t".into(),
                provider: "process".into(),
                token_hash: format!("h{i}"),
                cpus_milli: 1000,
                memory_mb: 512,
                now: 0,
            })
            .await
            .unwrap();
    }
    for i in 0..40 {
        store
            .admit(
                job(&format!("j{i}"), "t", None, 0, i),
                0,
                None,
                &Actor::admin(),
            )
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for i in 0..16 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                match store.lease(&format!("s{i}"), POLICY, 1).await.unwrap() {
                    Lease::Job(j) => {
                        store
                            .complete(
                                &format!("s{i}"),
                                &j.id,
                                j.lease_id.as_deref().unwrap(),
                                Finish::Succeeded {
                                    result: json!(i).into(),
                                },
                                2,
                            )
                            .await
                            .unwrap();
                        got.push(j.id);
                    }
                    _ => return got,
                }
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (40, 40));
}

async fn ledger_and_events(store: Arc<dyn Store>) {
    store
        .put_tenant(
            "t",
            PlanTier::Pro,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await
        .unwrap();
    use shoal_metering::{LedgerEntry, LedgerKind};
    let e1 = LedgerEntry {
        sandbox_id: "s".into(),
        tenant: "t".into(),
        at: 5,
        kind: LedgerKind::Running {
            cpus_milli: 500,
            memory_mb: 256,
        },
        note: None,
    };
    let e2 = LedgerEntry {
        sandbox_id: "s".into(),
        tenant: "t".into(),
        at: 9,
        kind: LedgerKind::Stopped,
        note: None,
    };
    store.append_ledger(&e1).await.unwrap();
    store.append_ledger(&e2).await.unwrap();
    assert_eq!(store.ledger(Some("t")).await.unwrap(), vec![e1, e2]);
    assert!(store.ledger(Some("other")).await.unwrap().is_empty());
    store
        .record_event(Some("t"), 3, "create", &json!({"sandbox": "s"}))
        .await
        .unwrap();
    let ev = store.events(Some("t"), 10).await.unwrap();
    assert_eq!(
        (ev[0].kind.as_str(), ev[0].detail["sandbox"].as_str()),
        ("create", Some("s"))
    );
}

/// The period's ledger leaves out only sandboxes whose intervals all ended before the period, and
/// other tenants': its total over the period is the whole ledger's.
async fn period_ledger(store: Arc<dyn Store>) {
    use shoal_metering::{LedgerEntry, LedgerKind, intervals, total};
    for t in ["t", "u"] {
        let plan = PlanTier::Pro;
        let patch = LimitsPatch::default();
        store
            .put_tenant(t, plan, &patch, 0, &Actor::admin())
            .await
            .unwrap();
    }
    let entry = |sandbox: &str, tenant: &str, at: i64, running: bool| LedgerEntry {
        sandbox_id: sandbox.into(),
        tenant: tenant.into(),
        at,
        kind: if running {
            LedgerKind::Running {
                cpus_milli: 1000,
                memory_mb: 1024,
            }
        } else {
            LedgerKind::Stopped
        },
        note: None,
    };
    let writes = [
        entry("a", "t", 10, true), // closed before the period: left out
        entry("e", "t", 30, true), // closed, then open again across the period start
        entry("e", "t", 40, false),
        entry("b", "t", 50, true), // open across the period start, closed in it
        entry("c", "t", 60, true), // open across the period start, still running
        entry("e", "t", 70, true),
        entry("a", "t", 20, false),
        entry("d", "t", 120, true), // opened in the period
        entry("x", "u", 130, true), // another tenant's
        entry("b", "t", 150, false),
    ];
    for e in &writes {
        store.append_ledger(e).await.unwrap();
    }
    let whole = store.ledger(Some("t")).await.unwrap();
    let period = store.period_ledger("t", 100).await.unwrap();
    let kept: Vec<LedgerEntry> = whole
        .iter()
        .filter(|e| e.sandbox_id != "a")
        .cloned()
        .collect();
    assert_eq!(
        period, kept,
        "every entry of b, c, d and e, in order; none of a's or u's"
    );
    let spent = |l: &[LedgerEntry]| total(&intervals(l, 200), 100, 200);
    assert_eq!(spent(&period), spent(&whole));
    assert!(store.period_ledger("nobody", 100).await.unwrap().is_empty());
}

/// Many admissions at once, some repeating idempotency keys, against a quota: the quota is never
/// overrun and each key makes exactly one job.
async fn concurrent_admissions(store: Arc<dyn Store>) {
    store
        .put_tenant(
            "t",
            PlanTier::Pro,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..40 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            // Keys k0..k9, each sent four times.
            let key = format!("k{}", i % 10);
            store
                .admit(
                    job(&format!("j{i}"), "t", Some(&key), 0, i),
                    0,
                    Some(6),
                    &Actor::admin(),
                )
                .await
                .unwrap()
        }));
    }
    let mut created = Vec::new();
    let mut existing = 0;
    let mut refused = 0;
    for h in handles {
        match h.await.unwrap() {
            Admitted::Created {
                job, period_jobs, ..
            } => created.push((job, period_jobs)),
            Admitted::Existing(_) => existing += 1,
            Admitted::QuotaExceeded { used, limit } => {
                assert_eq!((used, limit), (6, 6));
                refused += 1;
            }
        }
    }
    assert_eq!(created.len(), 6, "exactly the quota is admitted");
    let mut counts: Vec<u64> = created.iter().map(|(_, n)| *n).collect();
    counts.sort();
    assert_eq!(
        counts,
        [1, 2, 3, 4, 5, 6],
        "each admission saw its own count"
    );
    let mut keys: Vec<_> = created
        .iter()
        .map(|(j, _)| j.idempotency_key.clone().unwrap())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 6, "no key made two jobs");
    // Every repeat of an admitted key got the first job; the other keys' tries were refused.
    assert_eq!(existing + refused, 34);
    assert_eq!(store.period_jobs("t", 0).await.unwrap(), 6);
    let all = store
        .jobs(&JobFilter {
            tenant: Some("t".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    // However the admissions raced, each quota signal was written once, with the admission that
    // crossed it.
    let quota = outbox_events(&*store, "quota.", 100).await;
    // (The outbox is read in its cursor order, by transaction id, which on Postgres is the
    // order transactions began, not committed: compare them by the admission that crossed.)
    let mut kinds: Vec<(&str, u64)> = quota
        .iter()
        .map(|e| (e.topic.as_str(), e.payload["jobs"].as_u64().unwrap()))
        .collect();
    kinds.sort_by_key(|(_, jobs)| *jobs);
    assert_eq!(kinds, [("quota.warning", 5), ("quota.exceeded", 6)]);
}

/// Batches of admissions, four at once over two tenants listed in opposite orders (so their
/// quota rows are wanted in opposite orders): one answer per job in order, each tenant's jobs
/// admitted in order up to its quota, a key repeated within or across batches makes one job.
async fn batch_admissions(store: Arc<dyn Store>) {
    for t in ["a", "b"] {
        store
            .put_tenant(
                t,
                PlanTier::Pro,
                &LimitsPatch::default(),
                0,
                &Actor::admin(),
            )
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for n in 0..4 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let tenants = if n % 2 == 0 { ["a", "b"] } else { ["b", "a"] };
            let mut batch = Vec::new();
            for i in 0..10 {
                let t = tenants[i % 2];
                // Keys repeat within the batch (i and i + 2 share one) and across batches.
                let key = format!("k{}", (i / 4) * 2 + i % 2);
                let limit = if t == "a" { Some(7) } else { None };
                batch.push((job(&format!("j{n}-{i}"), t, Some(&key), 0, i as i64), limit));
            }
            let out = store.admit_batch(batch.clone(), 0, &Actor::admin()).await;
            (batch, out.unwrap())
        }));
    }
    let mut ids = std::collections::HashMap::new();
    for h in handles {
        let (batch, out) = h.await.unwrap();
        assert_eq!(out.len(), batch.len(), "one answer per job");
        for ((job, _), answer) in batch.iter().zip(&out) {
            let (key, tenant) = (job.idempotency_key.clone().unwrap(), job.tenant.clone());
            let id = match answer {
                Admitted::Created { job: stored, .. } => {
                    assert_eq!(stored.id, job.id, "a created answer is its own job");
                    stored.id.clone()
                }
                Admitted::Existing(first) => first.id.clone(),
                Admitted::QuotaExceeded { .. } => panic!("no quota is crossed: {answer:?}"),
            };
            let first = ids.entry((tenant, key)).or_insert(id.clone());
            assert_eq!(
                *first, id,
                "a key answers one job, within and across batches"
            );
        }
    }
    // Keys k0..k5 per tenant: six jobs each, every other answer the first job of its key.
    assert_eq!(ids.len(), 12);
    assert_eq!(store.period_jobs("a", 0).await.unwrap(), 6);
    assert_eq!(store.period_jobs("b", 0).await.unwrap(), 6);

    // A batch crossing a's quota of 7 (6 used) admits one, in order, and refuses the rest.
    let batch: Vec<_> = (0..3)
        .map(|i| (job(&format!("q{i}"), "a", None, 0, 50), Some(7)))
        .collect();
    let out = store.admit_batch(batch, 0, &Actor::admin()).await.unwrap();
    assert!(matches!(&out[0], Admitted::Created { job, period_jobs: 7, .. } if job.id == "q0"));
    for a in &out[1..] {
        assert_eq!(*a, Admitted::QuotaExceeded { used: 7, limit: 7 });
    }
    assert_eq!(store.period_jobs("a", 0).await.unwrap(), 7);
    assert!(
        store
            .admit_batch(Vec::new(), 0, &Actor::admin())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Sandboxes of one tenant leasing at once never run more jobs than its concurrency limit.
async fn concurrency_limit_races(store: Arc<dyn Store>) {
    store
        .put_tenant(
            "t",
            PlanTier::Enterprise,
            &LimitsPatch::default(),
            0,
            &Actor::admin(),
        )
        .await
        .unwrap();
    for i in 0..8 {
        store
            .insert_sandbox(NewSandbox {
                id: format!("s{i}"),
                tenant: "t".into(),
                provider: "process".into(),
                token_hash: format!("h{i}"),
                cpus_milli: 1000,
                memory_mb: 512,
                now: 0,
            })
            .await
            .unwrap();
    }
    for i in 0..20 {
        store
            .admit(
                job(&format!("j{i}"), "t", None, 0, i),
                0,
                None,
                &Actor::admin(),
            )
            .await
            .unwrap();
    }
    let policy = LeasePolicy {
        max_concurrent_jobs: Some(2),
        ..POLICY
    };
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            store.lease(&format!("s{i}"), policy, 1).await.unwrap()
        }));
    }
    let mut leased = 0;
    for h in handles {
        if let Lease::Job(_) = h.await.unwrap() {
            leased += 1;
        }
    }
    assert_eq!(leased, 2);
    let running = store
        .jobs(&JobFilter {
            state: Some(JobState::Running),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.len(), 2);
}

async fn unknown_url(_store: Arc<dyn Store>) {
    assert!(matches!(
        shoal_store::open("mysql://localhost/shoal").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
}

async fn keys(store: Arc<dyn Store>) {
    setup(&*store).await;
    store
        .add_key("t", "key_1", "hash-1", 10, &Actor::admin())
        .await
        .unwrap();
    store
        .add_key("t", "key_2", "hash-2", 20, &Actor::admin())
        .await
        .unwrap();
    store
        .add_key("u", "key_3", "hash-3", 30, &Actor::admin())
        .await
        .unwrap();
    let k = store.key("hash-1").await.unwrap().unwrap();
    assert_eq!(
        (
            k.id.as_str(),
            k.tenant.as_str(),
            k.created_at,
            k.last_used_at
        ),
        ("key_1", "t", 10, None)
    );
    store.touch_key("key_1", 99).await.unwrap();
    assert_eq!(
        store.key("hash-1").await.unwrap().unwrap().last_used_at,
        Some(99)
    );
    let ids = |v: Vec<KeyRecord>| v.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(ids(store.keys("t").await.unwrap()), ["key_1", "key_2"]);
    // A key is revoked only through its own tenant, and then it no longer authenticates.
    assert!(
        !store
            .revoke_key("u", "key_1", 1, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        store
            .revoke_key("t", "key_1", 1, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_key("t", "key_1", 1, &Actor::admin())
            .await
            .unwrap()
    );
    assert_eq!(store.key("hash-1").await.unwrap(), None);
    assert_eq!(store.key_tenant("hash-1").await.unwrap(), None);
    assert_eq!(ids(store.keys("t").await.unwrap()), ["key_2"]);
    assert_eq!(
        store.key_tenant("hash-2").await.unwrap().as_deref(),
        Some("t")
    );
}

async fn job_pages(store: Arc<dyn Store>) {
    setup(&*store).await;
    // Five finished jobs whose results are 10 KB each, newest first: p4 .. p0.
    for i in 0..5 {
        let id = format!("p{i}");
        store
            .admit(job(&id, "t", None, 0, i), 0, None, &Actor::admin())
            .await
            .unwrap();
        let j = leased(store.lease("sb1", POLICY, 10 + i).await.unwrap());
        let result = json!({"stdout": "x".repeat(10_000)});
        store
            .complete(
                "sb1",
                &j.id,
                j.lease_id.as_deref().unwrap(),
                Finish::Succeeded {
                    result: result.into(),
                },
                11 + i,
            )
            .await
            .unwrap();
    }
    let filter = JobFilter {
        tenant: Some("t".into()),
        limit: 10,
        ..Default::default()
    };
    let one = listed_bytes(10_000 + 16, 0);
    // A budget for two and a half jobs holds two; the rest follow from the cursor.
    let page = store.job_page(&filter, one * 5 / 2).await.unwrap();
    let ids: Vec<_> = page.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["p4", "p3"]);
    assert!(page.more);
    assert!(
        page.jobs
            .iter()
            .all(|j| j.spec.is_null() && j.result.is_some())
    );
    let next = JobFilter {
        before_seq: Some(page.jobs[1].seq),
        ..filter.clone()
    };
    let rest = store.job_page(&next, one * 100).await.unwrap();
    assert_eq!(rest.jobs.len(), 3);
    assert!(!rest.more, "the last page says so");
    // A budget below one job still gives one, so a list always moves on.
    let tiny = store.job_page(&filter, 1).await.unwrap();
    assert_eq!((tiny.jobs.len(), tiny.more), (1, true));
    // The count limit holds as before, and `more` is exact at the end.
    let two = store
        .job_page(
            &JobFilter {
                limit: 2,
                ..filter.clone()
            },
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!((two.jobs.len(), two.more), (2, true));
    let all = store
        .job_page(&JobFilter { limit: 5, ..filter }, u64::MAX)
        .await
        .unwrap();
    assert_eq!((all.jobs.len(), all.more), (5, false));
}

/// Reads a job's whole kept log, a few bytes at a time.
async fn read_log(store: &dyn Store, id: &str) -> (u64, u64, Vec<u8>) {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let s = store.job_log(id, from, 3).await.unwrap();
        assert!(s.data.len() <= 3, "a read keeps to its limit");
        if s.data.is_empty() {
            return (s.start, s.end, out);
        }
        if out.is_empty() {
            assert_eq!(
                s.at, s.start,
                "the first read starts at the oldest kept byte"
            );
        }
        out.extend_from_slice(&s.data);
        from = s.at + s.data.len() as u64;
    }
}

/// Output is stored only from the agent holding the job's lease, once however often a chunk is
/// sent, newest `max_bytes` kept; a new attempt continues the log; nothing is added after the end.
async fn job_logs(store: Arc<dyn Store>) {
    setup(&*store).await;
    store
        .admit(job("j", "t", None, 0, 1), 0, None, &Actor::admin())
        .await
        .unwrap();
    let j = leased(store.lease("sb1", POLICY, 2).await.unwrap());
    let lease = j.lease_id.clone().unwrap();
    assert_eq!(
        store.job_log("j", 0, 100).await.unwrap(),
        LogSlice::default()
    );

    let put = |offset: u64, data: &'static [u8]| {
        let (store, lease) = (Arc::clone(&store), lease.clone());
        async move {
            store
                .append_log("sb1", "j", &lease, offset, data, 10)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        put(0, b"hello\n").await,
        LogAppend::Stored { start: 0, end: 6 }
    );
    // The same chunk again (its answer was lost), and one overlapping it: each byte once.
    assert_eq!(
        put(0, b"hello\n").await,
        LogAppend::Stored { start: 0, end: 6 }
    );
    assert_eq!(
        put(3, b"lo\nab").await,
        LogAppend::Stored { start: 0, end: 8 }
    );
    assert_eq!(read_log(&*store, "j").await, (0, 8, b"hello\nab".to_vec()));
    // Past 10 bytes the oldest go first, cutting through a chunk.
    assert_eq!(
        put(8, b"cdef").await,
        LogAppend::Stored { start: 2, end: 12 }
    );
    assert_eq!(
        read_log(&*store, "j").await,
        (2, 12, b"llo\nabcdef".to_vec())
    );
    let s = store.job_log("j", 9, 100).await.unwrap();
    assert_eq!((s.at, s.data.as_slice()), (9, &b"def"[..]));
    // Reading from before the oldest kept byte starts there.
    let s = store.job_log("j", 0, 2).await.unwrap();
    assert_eq!((s.at, s.data.as_slice()), (2, &b"ll"[..]));
    // A chunk longer than the limit keeps its tail.
    assert_eq!(
        put(12, b"0123456789ABCDEF").await,
        LogAppend::Stored { start: 18, end: 28 }
    );
    assert_eq!(
        read_log(&*store, "j").await,
        (18, 28, b"6789ABCDEF".to_vec())
    );

    // Not the lease holder: another lease id, another sandbox, an unknown job.
    assert_eq!(
        store
            .append_log("sb1", "j", "other-lease", 0, b"x", 10)
            .await
            .unwrap(),
        LogAppend::Stale
    );
    assert_eq!(
        store
            .append_log("sb2", "j", &lease, 28, b"x", 10)
            .await
            .unwrap(),
        LogAppend::Stale
    );
    assert_eq!(
        store
            .append_log("sb1", "nope", &lease, 0, b"x", 10)
            .await
            .unwrap(),
        LogAppend::Stale
    );

    // The lease lapses; the next attempt's output (numbered from 0 again) follows.
    let back = store.expire_leases(i64::MAX).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        store
            .append_log("sb1", "j", &lease, 28, b"late", 10)
            .await
            .unwrap(),
        LogAppend::Stale,
        "the lapsed lease ships nothing more"
    );
    let j2 = leased(store.lease("sb2", POLICY, 3).await.unwrap());
    let lease2 = j2.lease_id.clone().unwrap();
    assert_eq!(
        store
            .append_log("sb2", "j", &lease2, 0, b"again", 10)
            .await
            .unwrap(),
        LogAppend::Stored { start: 23, end: 33 }
    );
    assert_eq!(
        read_log(&*store, "j").await,
        (23, 33, b"BCDEFagain".to_vec())
    );
    // Ended: nothing more is added.
    store
        .complete(
            "sb2",
            "j",
            &lease2,
            Finish::Succeeded {
                result: json!(0).into(),
            },
            4,
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .append_log("sb2", "j", &lease2, 5, b"after", 10)
            .await
            .unwrap(),
        LogAppend::Stale
    );
    assert_eq!(read_log(&*store, "j").await.2, b"BCDEFagain".to_vec());
    // Another job's log is its own.
    assert_eq!(
        store.job_log("j1", 0, 100).await.unwrap(),
        LogSlice::default()
    );
}

/// One chunk shipped several times at once (an agent resending while its first send is still in
/// flight, on one replica or several) is stored once: the log is exactly what the agent wrote.
async fn concurrent_log_appends(store: Arc<dyn Store>) {
    setup(&*store).await;
    store
        .admit(job("j", "t", None, 0, 1), 0, None, &Actor::admin())
        .await
        .unwrap();
    let lease = leased(store.lease("sb1", POLICY, 2).await.unwrap())
        .lease_id
        .unwrap();
    let text: Vec<u8> = (0..200u32).map(|i| b'a' + (i % 26) as u8).collect();
    for i in 0..20usize {
        let mut handles = Vec::new();
        for _ in 0..4 {
            let (store, lease) = (Arc::clone(&store), lease.clone());
            let part = text[i * 10..i * 10 + 10].to_vec();
            handles.push(tokio::spawn(async move {
                store
                    .append_log("sb1", "j", &lease, (i * 10) as u64, &part, 1 << 20)
                    .await
                    .unwrap()
            }));
        }
        for h in handles {
            let end = (i as u64 + 1) * 10;
            assert_eq!(h.await.unwrap(), LogAppend::Stored { start: 0, end });
        }
    }
    assert_eq!(read_log(&*store, "j").await, (0, 200, text));
}

fn endpoint(
    id: &str,
    owner: Option<&str>,
    tenant: Option<&str>,
    events: Option<&[&str]>,
) -> NewEndpoint {
    NewEndpoint {
        id: id.into(),
        owner: owner.map(str::to_string),
        tenant: tenant.map(str::to_string),
        url: format!("http://receiver.example/{id}"),
        events: events.map(|e| e.iter().map(|t| t.to_string()).collect()),
        secret: "whsec_AAAA".into(),
        guarded: owner.is_some(),
        created_at: 0,
    }
}

/// The event ids delivered to `destination`, oldest first, with their types.
async fn delivered_to(store: &dyn Store, destination: &str) -> Vec<(String, String)> {
    let mut d = store.deliveries(destination, 1000, None).await.unwrap();
    d.reverse();
    d.into_iter().map(|d| (d.event_id, d.topic)).collect()
}

/// Every way a job ends writes its event in the transaction that ends it, fanned out to the
/// endpoints that want it then (and not to one created later).
async fn outbox_job_events(store: Arc<dyn Store>) {
    setup(&*store).await;
    for e in [
        endpoint("all", None, None, None),
        endpoint("only-t", None, Some("t"), None),
        endpoint(
            "failures",
            Some("u"),
            Some("u"),
            Some(&["job.failed", "job.dead"]),
        ),
    ] {
        assert!(
            store
                .create_endpoint(&e, 10, &Actor::admin())
                .await
                .unwrap()
        );
    }
    // Succeeded and failed, by completion.
    store
        .admit(job("ok", "t", None, 0, 1), 0, None, &Actor::admin())
        .await
        .unwrap();
    let l = leased(store.lease("sb1", POLICY, 10).await.unwrap());
    let r = store
        .complete(
            "sb1",
            "ok",
            l.lease_id.as_deref().unwrap(),
            Finish::Succeeded {
                result: json!({"exit_code": 0}).into(),
            },
            20,
        )
        .await
        .unwrap();
    assert!(matches!(r, Completed::Done(_)));
    store
        .admit(job("bad", "u", None, 0, 2), 0, None, &Actor::admin())
        .await
        .unwrap();
    let l = leased(store.lease("sbu", POLICY, 30).await.unwrap());
    store
        .complete(
            "sbu",
            "bad",
            l.lease_id.as_deref().unwrap(),
            Finish::Failed {
                result: Some(json!({"exit_code": 3}).into()),
                error: json!({"code": "exit"}),
            },
            40,
        )
        .await
        .unwrap();
    // Cancelled while queued; cancelling again writes nothing more.
    store
        .admit(job("gone", "t", None, 0, 3), 0, None, &Actor::admin())
        .await
        .unwrap();
    store.cancel("gone", 50, &Actor::admin()).await.unwrap();
    store.cancel("gone", 51, &Actor::admin()).await.unwrap();
    // Dead: a lease that lapsed on its last attempt (max_attempts is 2).
    store
        .admit(job("lapse", "u", None, 0, 4), 0, None, &Actor::admin())
        .await
        .unwrap();
    for round in 0..2 {
        let at = 100 + round * 100_000;
        leased(store.lease("sbu", POLICY, at).await.unwrap());
        store
            .expire_leases(at + POLICY.lease_ttl_ms + 1)
            .await
            .unwrap();
    }
    // Dead: the sandbox went away under its last attempt.
    store
        .admit(job("lost", "t", None, 0, 5), 0, None, &Actor::admin())
        .await
        .unwrap();
    for at in [300_000, 300_010] {
        leased(store.lease("sb2", POLICY, at).await.unwrap());
        store
            .sandbox_down("sb2", SandboxState::Stopped, at + 1)
            .await
            .unwrap();
        store
            .transition(
                "sb2",
                &[SandboxState::Stopped],
                SandboxState::Booting,
                at + 2,
            )
            .await
            .unwrap();
    }
    // A stale completion of an ended job writes nothing.
    assert_eq!(
        store
            .complete(
                "sb1",
                "ok",
                l.lease_id.as_deref().unwrap(),
                Finish::Succeeded {
                    result: json!({}).into()
                },
                60
            )
            .await
            .unwrap(),
        Completed::Stale
    );

    let events = outbox_events(&*store, "job.", 100).await;
    let got: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.topic.as_str(),
                e.payload["id"].as_str().unwrap(),
                e.payload["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("job.succeeded", "ok", "succeeded"),
            ("job.failed", "bad", "failed"),
            ("job.cancelled", "gone", "cancelled"),
            ("job.dead", "lapse", "dead"),
            ("job.dead", "lost", "dead"),
        ]
    );
    // The payload is the record at that moment, without its spec or lease.
    let ok = serde_json::from_value::<JobRecord>(events[0].payload.clone()).unwrap();
    assert_eq!(
        (ok.result.map(|r| r.to_value()), ok.finished_at, ok.attempts),
        (Some(json!({"exit_code": 0})), Some(20), 1)
    );
    assert_eq!(
        (ok.spec.to_value(), ok.lease_id),
        (serde_json::Value::Null, None)
    );
    assert!(
        events
            .iter()
            .all(|e| e.tenant.as_deref() == e.payload["tenant"].as_str())
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));

    let ids = |topics: &[usize]| -> Vec<(String, String)> {
        topics
            .iter()
            .map(|&i| (events[i].id.clone(), events[i].topic.clone()))
            .collect()
    };
    assert_eq!(delivered_to(&*store, "all").await, ids(&[0, 1, 2, 3, 4]));
    assert_eq!(
        delivered_to(&*store, "only-t").await,
        ids(&[0, 2, 4]),
        "t's events only"
    );
    assert_eq!(
        delivered_to(&*store, "failures").await,
        ids(&[1, 3]),
        "u's failures only"
    );
    let d = store.deliveries("all", 1000, None).await.unwrap();
    assert!(
        d.iter()
            .all(|d| d.state == DeliveryState::Pending && d.attempts == 0)
    );

    // An endpoint created now hears of what happens from now on only.
    assert!(
        store
            .create_endpoint(&endpoint("late", None, None, None), 10, &Actor::admin())
            .await
            .unwrap()
    );
    store
        .admit(job("after", "t", None, 0, 6), 0, None, &Actor::admin())
        .await
        .unwrap();
    store
        .cancel("after", 400_000, &Actor::admin())
        .await
        .unwrap();
    let late = delivered_to(&*store, "late").await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].1, "job.cancelled");
    assert_eq!(delivered_to(&*store, "all").await.len(), 6);
}

/// Admissions crossing 80% and 100% of a quota write `quota.warning` and `quota.exceeded` with
/// the admission, once per period; a refusal under a lowered quota says it once too.
async fn outbox_quota_signals(store: Arc<dyn Store>) {
    setup(&*store).await;
    assert!(
        store
            .create_endpoint(
                &endpoint("t-hook", Some("t"), Some("t"), None),
                10,
                &Actor::admin()
            )
            .await
            .unwrap()
    );
    let mut signals = Vec::new();
    for i in 0..5 {
        match store
            .admit(
                job(&format!("a{i}"), "t", None, 0, 10 + i),
                0,
                Some(5),
                &Actor::admin(),
            )
            .await
            .unwrap()
        {
            Admitted::Created { signals: s, .. } => signals.push(s),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        signals,
        [
            vec![],
            vec![],
            vec![],
            vec![QuotaSignal::Warning],
            vec![QuotaSignal::Exceeded]
        ]
    );
    assert!(matches!(
        store
            .admit(job("a5", "t", None, 0, 20), 0, Some(5), &Actor::admin())
            .await
            .unwrap(),
        Admitted::QuotaExceeded { .. }
    ));
    let ev = outbox_events(&*store, "quota.", 100).await;
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        (
            ev[0].topic.as_str(),
            &ev[0].payload["jobs"],
            &ev[0].payload["quota"]
        ),
        ("quota.warning", &json!(4), &json!(5))
    );
    assert_eq!(ev[1].topic, "quota.exceeded");
    assert_eq!(ev[1].payload["tenant"], "t");
    assert!(
        ev[1].payload["period_start"]
            .as_str()
            .unwrap()
            .starts_with("1970-01-01T00:00:00")
    );
    assert_eq!(delivered_to(&*store, "t-hook").await.len(), 2);
    let kinds: Vec<String> = store
        .events(Some("t"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"quota_warning".to_string())
            && kinds.contains(&"quota_exceeded".to_string())
    );

    // A new period starts afresh.
    let next = 2_678_400_000; // February 1970
    for i in 0..5 {
        store
            .admit(
                job(&format!("b{i}"), "t", None, 0, next + i),
                next,
                Some(5),
                &Actor::admin(),
            )
            .await
            .unwrap();
    }
    assert_eq!(outbox_events(&*store, "quota.", 100).await.len(), 4);

    // u never reached its quota by admission: it was lowered under it. The first refusal says so,
    // once.
    for i in 0..3 {
        store
            .admit(
                job(&format!("u{i}"), "u", None, 0, 30 + i),
                0,
                Some(100),
                &Actor::admin(),
            )
            .await
            .unwrap();
    }
    for i in 3..6 {
        assert!(matches!(
            store
                .admit(
                    job(&format!("u{i}"), "u", None, 0, 40 + i),
                    0,
                    Some(2),
                    &Actor::admin()
                )
                .await
                .unwrap(),
            Admitted::QuotaExceeded { used: 3, limit: 2 }
        ));
    }
    let u: Vec<String> = outbox_events(&*store, "quota.", 100)
        .await
        .into_iter()
        .filter(|e| e.tenant.as_deref() == Some("u"))
        .map(|e| e.topic)
        .collect();
    assert_eq!(u, ["quota.warning", "quota.exceeded"]);
    assert!(
        store.job("u3").await.unwrap().is_none(),
        "a refusal stores no job"
    );
}

/// A delivery is leased for one attempt at a time, retried when its backoff is over or its lease
/// lapses, and given up once its attempts are spent.
async fn outbox_deliveries(store: Arc<dyn Store>) {
    setup(&*store).await;
    assert!(
        store
            .create_endpoint(&endpoint("hook", None, None, None), 10, &Actor::admin())
            .await
            .unwrap()
    );
    assert_eq!(store.next_delivery_due().await.unwrap(), None);
    for (i, at) in [(0, 1_000), (1, 1_001)] {
        store
            .admit(
                job(&format!("c{i}"), "t", None, 0, at),
                0,
                None,
                &Actor::admin(),
            )
            .await
            .unwrap();
        store
            .cancel(&format!("c{i}"), at, &Actor::admin())
            .await
            .unwrap();
    }
    assert_eq!(store.next_delivery_due().await.unwrap(), Some(1_000));
    assert!(
        store
            .lease_deliveries("r1", 10, 500, 3, 999)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    let batch = store
        .lease_deliveries("r1", 1, 500, 3, 2_000)
        .await
        .unwrap();
    assert_eq!(batch.len(), 1, "the limit holds");
    let first = &batch[0];
    assert_eq!(
        (
            first.attempt,
            first.endpoint.id.as_str(),
            first.event.topic.as_str()
        ),
        (1, "hook", "job.cancelled")
    );
    assert_eq!(first.event.payload["id"], "c0", "the oldest due first");
    assert_eq!(first.endpoint.secret, "whsec_AAAA");
    let second = store
        .lease_deliveries("r2", 10, 500, 3, 2_000)
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "a leased delivery is not leased again");
    assert_eq!(second[0].event.payload["id"], "c1");

    // c1 is delivered.
    assert!(
        store
            .finish_delivery(
                &second[0],
                &AttemptOutcome::Delivered { status: 204 },
                2_100
            )
            .await
            .unwrap()
    );
    // c0 fails and is retried after its backoff.
    let failed = AttemptOutcome::Failed {
        status: Some(500),
        error: "the endpoint answered 500".into(),
        retry_at: Some(3_000),
    };
    assert!(store.finish_delivery(first, &failed, 2_100).await.unwrap());
    assert!(
        !store.finish_delivery(first, &failed, 2_100).await.unwrap(),
        "a lease reports once"
    );
    let view = store.deliveries("hook", 10, None).await.unwrap();
    assert_eq!(view.len(), 2);
    assert_eq!(
        (
            view[0].state,
            view[0].attempts,
            view[0].last_status,
            view[0].delivered_at
        ),
        (DeliveryState::Delivered, 1, Some(204), Some(2_100)),
        "newest first"
    );
    assert_eq!(
        (
            view[1].state,
            view[1].attempts,
            view[1].last_status,
            view[1].next_attempt_at
        ),
        (DeliveryState::Pending, 1, Some(500), Some(3_000))
    );
    assert_eq!(
        view[1].last_error.as_deref(),
        Some("the endpoint answered 500")
    );
    let page = store
        .deliveries("hook", 1, Some(view[0].seq))
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].event_id, view[1].event_id, "the cursor pages on");
    assert_eq!(store.next_delivery_due().await.unwrap(), Some(3_000));
    assert!(
        store
            .lease_deliveries("r1", 10, 500, 3, 2_999)
            .await
            .unwrap()
            .is_empty(),
        "backing off"
    );

    // Attempt 2 is leased by a replica that dies: its lease lapses and attempt 3 follows.
    let a2 = store
        .lease_deliveries("r1", 10, 500, 3, 3_000)
        .await
        .unwrap();
    assert_eq!(a2[0].attempt, 2);
    assert!(
        store
            .lease_deliveries("r2", 10, 500, 3, 3_499)
            .await
            .unwrap()
            .is_empty()
    );
    let a3 = store
        .lease_deliveries("r2", 10, 500, 3, 3_500)
        .await
        .unwrap();
    assert_eq!(a3.len(), 1);
    assert_eq!(
        (a3[0].attempt, a3[0].event.id.as_str()),
        (3, a2[0].event.id.as_str())
    );
    assert!(
        !store.finish_delivery(&a2[0], &failed, 3_600).await.unwrap(),
        "the lapsed lease is fenced off"
    );
    // The last attempt's lease lapses too: the delivery is spent, not leased a fourth time.
    assert!(
        store
            .lease_deliveries("r1", 10, 500, 3, 10_000)
            .await
            .unwrap()
            .is_empty()
    );
    let view = store.deliveries("hook", 10, None).await.unwrap();
    assert_eq!(
        (view[1].state, view[1].attempts, view[1].next_attempt_at),
        (DeliveryState::Failed, 3, None)
    );
    assert_eq!(store.next_delivery_due().await.unwrap(), None);

    // A failure with no retry left is final at once.
    store
        .admit(job("c2", "t", None, 0, 20_000), 0, None, &Actor::admin())
        .await
        .unwrap();
    store.cancel("c2", 20_000, &Actor::admin()).await.unwrap();
    let d = store
        .lease_deliveries("r1", 10, 500, 3, 20_000)
        .await
        .unwrap();
    let give_up = AttemptOutcome::Failed {
        status: None,
        error: "connection refused".into(),
        retry_at: None,
    };
    assert!(
        store
            .finish_delivery(&d[0], &give_up, 20_001)
            .await
            .unwrap()
    );
    let view = store.deliveries("hook", 1, None).await.unwrap();
    assert_eq!(
        (view[0].state, view[0].last_status),
        (DeliveryState::Failed, None)
    );
}

/// Replicas leasing deliveries at once never hold the same one.
async fn outbox_concurrent_leases(store: Arc<dyn Store>) {
    setup(&*store).await;
    for h in ["h1", "h2"] {
        assert!(
            store
                .create_endpoint(&endpoint(h, None, None, None), 10, &Actor::admin())
                .await
                .unwrap()
        );
    }
    let events: Vec<OutboxEvent> = (0..100)
        .map(|i| OutboxEvent::new("job.succeeded", Some("t".into()), json!({"n": i}), i))
        .collect();
    assert_eq!(store.append_events(&events).await.unwrap(), 100);
    let mut handles = Vec::new();
    for r in 0..8 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = store
                    .lease_deliveries(&format!("r{r}"), 7, 60_000, 5, 1_000)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|d| (d.event.id, d.endpoint.id)));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (n, all.len()),
        (200, 200),
        "each delivery leased exactly once"
    );
}

/// Endpoints belong to their owner, are bounded per owner, and take their deliveries with them.
async fn outbox_endpoints(store: Arc<dyn Store>) {
    setup(&*store).await;
    assert!(
        store
            .create_endpoint(&endpoint("p1", None, None, None), 2, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        store
            .create_endpoint(
                &endpoint("p2", None, Some("u"), Some(&["job.failed"])),
                2,
                &Actor::admin()
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_endpoint(&endpoint("p3", None, None, None), 2, &Actor::admin())
            .await
            .unwrap(),
        "the platform's bound"
    );
    assert!(
        store
            .create_endpoint(
                &endpoint("t1", Some("t"), Some("t"), None),
                2,
                &Actor::admin()
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .create_endpoint(
                &endpoint("t2", Some("t"), Some("t"), None),
                2,
                &Actor::admin()
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_endpoint(
                &endpoint("t3", Some("t"), Some("t"), None),
                2,
                &Actor::admin()
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .create_endpoint(
                &endpoint("u1", Some("u"), Some("u"), None),
                2,
                &Actor::admin()
            )
            .await
            .unwrap(),
        "bounds are per owner"
    );
    let ids = |v: Vec<EndpointRecord>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(store.endpoints(Some("t")).await.unwrap()), ["t1", "t2"]);
    assert_eq!(ids(store.endpoints(None).await.unwrap()).len(), 5);
    let p2 = store.endpoint("p2").await.unwrap().unwrap();
    assert_eq!(p2, endpoint("p2", None, Some("u"), Some(&["job.failed"])));
    assert!(store.endpoint("t1").await.unwrap().unwrap().guarded);

    store
        .admit(job("x", "t", None, 0, 1), 0, None, &Actor::admin())
        .await
        .unwrap();
    store.cancel("x", 2, &Actor::admin()).await.unwrap();
    assert_eq!(store.deliveries("t1", 10, None).await.unwrap().len(), 1);
    assert!(
        store
            .delete_endpoint("t1", 1, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_endpoint("t1", 1, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(store.endpoint("t1").await.unwrap().is_none());
    assert!(store.deliveries("t1", 10, None).await.unwrap().is_empty());
    let leased = store.lease_deliveries("r", 10, 1000, 3, 10).await.unwrap();
    assert!(
        leased.iter().all(|d| d.endpoint.id != "t1"),
        "a deleted endpoint is sent nothing"
    );
    assert_eq!(leased.len(), 2, "p1 and t2 still hear of it");
}

/// Appends with a given id happen once; topics other than webhook types go to no endpoint; the
/// cursor reads in order.
async fn outbox_appends(store: Arc<dyn Store>) {
    setup(&*store).await;
    assert!(
        store
            .create_endpoint(&endpoint("all", None, None, None), 10, &Actor::admin())
            .await
            .unwrap()
    );
    // The audit records of the calls above leave the outbox when they are sealed.
    store.seal_audit(10_000).await.unwrap();
    let usage = OutboxEvent {
        id: "usage-sb1-0".into(),
        topic: "usage.sandbox".into(),
        tenant: Some("t".into()),
        payload: json!({"seconds": 3600}),
        created_at: 5,
    };
    let warn = OutboxEvent::new("budget.warning", Some("t".into()), json!({"spent": 8}), 6);
    assert_eq!(
        store
            .append_events(&[usage.clone(), warn.clone()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .append_events(std::slice::from_ref(&usage))
            .await
            .unwrap(),
        0,
        "the same id is stored once"
    );
    let all = store
        .outbox_after("", UsageCursor::default(), 10)
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>(),
        [usage.id.as_str(), warn.id.as_str()]
    );
    assert_eq!(all[0].event.payload, json!({"seconds": 3600}));
    assert_eq!(outbox_events(&*store, "usage.", 10).await.len(), 1);
    assert_eq!(
        store.outbox_after("", all[0].cursor, 10).await.unwrap()[0]
            .event
            .id,
        warn.id
    );
    assert!(
        store
            .outbox_after("", all[1].cursor, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        outbox_events(&*store, "%", 10).await.len(),
        2,
        "a wildcard is no pattern"
    );
    assert_eq!(
        delivered_to(&*store, "all").await,
        [(warn.id.clone(), "budget.warning".to_string())],
        "only webhook types fan out"
    );
}

/// On Postgres an outbox row's `seq` is handed out at insert, not at commit: a cursor reader must
/// not move past a row whose transaction is still open, or it would never see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cursor_waits_for_open_transactions() {
    let Some(pg) = Postgres::start().expect("starting Postgres") else {
        return;
    };
    let url = pg.create_database().unwrap();
    let store = shoal_store::open(&url).await.unwrap();
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; INSERT INTO outbox (id, topic, payload, created_at) VALUES ('slow', 'audit.x', '{}', 1)")
        .execute(&mut other)
        .await
        .unwrap();
    let fast = OutboxEvent::new("audit.x", None, json!({}), 2);
    store
        .append_events(std::slice::from_ref(&fast))
        .await
        .unwrap();
    assert!(
        outbox_events(&*store, "", 10).await.is_empty(),
        "the later row waits behind the open transaction's"
    );
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    let ids: Vec<String> = outbox_events(&*store, "", 10)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["slow".to_string(), fast.id]);
}

/// The outbox's events whose topic starts with `prefix`, from the start, in cursor order.
async fn outbox_events(store: &dyn Store, prefix: &str, limit: u32) -> Vec<OutboxRecord> {
    let read = store.outbox_after(prefix, UsageCursor::default(), limit);
    read.await.unwrap().into_iter().map(|r| r.event).collect()
}

/// The sealed log's actions and targets, in order.
async fn audit_log(store: &dyn Store) -> Vec<(String, String, String)> {
    while store.seal_audit(100).await.unwrap() > 0 {}
    store
        .audit_records(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.actor.kind, r.action, r.target))
        .collect()
}

/// Each state change writes its audit record in its own transaction (a refused or idempotent
/// call writes none); sealing chains them from genesis, and the chain verifies.
async fn audit_chain(store: Arc<dyn Store>) {
    let key = Actor::tenant_key("key_1");
    setup(&*store).await;
    store
        .add_key("t", "key_1", "hash-1", 1, &Actor::admin())
        .await
        .unwrap();
    assert!(
        store
            .set_draining("t", true, 2, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        store
            .set_draining("t", false, 3, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_draining("nobody", true, 3, &Actor::admin())
            .await
            .unwrap()
    );
    store
        .admit(job("j1", "t", Some("k"), 0, 4), 0, None, &key)
        .await
        .unwrap();
    // The same idempotency key again changes nothing and records nothing.
    store
        .admit(job("j1b", "t", Some("k"), 0, 5), 0, None, &key)
        .await
        .unwrap();
    store
        .admit(job("j2", "t", None, 0, 6), 0, None, &key)
        .await
        .unwrap();
    let j = leased(store.lease("sb1", POLICY, 7).await.unwrap());
    store
        .complete(
            "sb1",
            &j.id,
            j.lease_id.as_deref().unwrap(),
            Finish::Succeeded {
                result: json!({}).into(),
            },
            8,
        )
        .await
        .unwrap();
    // A stale completion changes nothing.
    store
        .complete(
            "sb1",
            &j.id,
            "not-the-lease",
            Finish::Succeeded {
                result: json!({}).into(),
            },
            9,
        )
        .await
        .unwrap();
    store.cancel("j2", 10, &key).await.unwrap();
    store.cancel("j2", 11, &key).await.unwrap();
    assert!(
        store
            .revoke_key("t", "key_1", 12, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_key("t", "key_1", 13, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        store
            .create_endpoint(&endpoint("we_1", None, None, None), 10, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        store
            .delete_endpoint("we_1", 14, &Actor::admin())
            .await
            .unwrap()
    );
    assert!(
        store
            .transition("sb2", &[SandboxState::Booting], SandboxState::Stopping, 15,)
            .await
            .unwrap()
    );
    store
        .sandbox_down("sb2", SandboxState::Stopped, 16)
        .await
        .unwrap();

    let log = audit_log(&*store).await;
    let actions: Vec<&str> = log.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "tenant.create",
            "sandbox.create",
            "sandbox.create",
            "sandbox.create",
            "key.create",
            "tenant.drain",
            "tenant.undrain",
            "job.enqueue",
            "job.enqueue",
            "job.lease",
            "job.complete",
            "job.cancel",
            "key.revoke",
            "webhook.create",
            "webhook.delete",
            "sandbox.stopping",
            "sandbox.stopped",
        ]
    );
    assert_eq!(
        log[8],
        ("tenant_key".into(), "job.enqueue".into(), "job/j1".into())
    );
    assert_eq!(
        log[10].0, "sandbox",
        "the agent's lease is the sandbox's act"
    );
    assert_eq!(log[16].0, "system");
    let records = store.audit_records(0, 1000).await.unwrap();
    assert_eq!(records[0].prev_hash, shoal_core::audit::GENESIS);
    assert_eq!(
        shoal_core::audit::verify(&records),
        Ok(records.len() as u64)
    );
    // Paging by cursor gives the same records.
    let tail = store.audit_records(5, 3).await.unwrap();
    assert_eq!(tail, records[5..8]);
    // Nothing is sealed twice, and sealed records leave the outbox.
    assert_eq!(store.seal_audit(100).await.unwrap(), 0);
    assert!(outbox_events(&*store, "audit", 10).await.is_empty());
    // No secret reaches the log: not the key's hash, not the endpoint's secret.
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains("hash-1") && !text.contains("whsec_"),
        "{text}"
    );
}

/// Sealers on several connections at once (replicas) give every record one place in one chain.
async fn audit_concurrent_sealers(store: Arc<dyn Store>) {
    setup(&*store).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..25 {
                    let id = format!("j{w}-{i}");
                    store
                        .admit(job(&id, "t", None, 0, i), 0, None, &Actor::admin())
                        .await
                        .unwrap();
                    store.seal_audit(7).await.unwrap();
                }
            })
        })
        .collect();
    let sealers: Vec<_> = (0..3)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..30 {
                    store.seal_audit(5).await.unwrap();
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(sealers) {
        t.await.unwrap();
    }
    while store.seal_audit(100).await.unwrap() > 0 {}
    let records = store.audit_records(0, 1000).await.unwrap();
    // 2 tenants and 3 sandboxes from set-up, 100 admissions.
    assert_eq!(records.len(), 105);
    assert_eq!(shoal_core::audit::verify(&records), Ok(105));
    let mut targets: Vec<&str> = records.iter().map(|r| r.target.as_str()).collect();
    targets.sort();
    targets.dedup();
    assert_eq!(targets.len(), 105, "no record sealed twice");
}

/// Retention takes finished jobs (with their output), events and spent deliveries older than the
/// cutoff, and the outbox events nothing waits on; it keeps live jobs, pending deliveries, usage
/// events, the ledger and the audit log, and records what it did.
async fn retention(store: Arc<dyn Store>) {
    setup(&*store).await;
    let a = Actor::admin();
    assert!(
        store
            .create_endpoint(&endpoint("we_1", None, None, None), 10, &a)
            .await
            .unwrap()
    );
    // Old: one succeeded job (with output), one queued, one running.
    for id in ["old-done", "old-queued"] {
        store
            .admit(job(id, "t", None, 0, 100), 0, None, &a)
            .await
            .unwrap();
    }
    let j = leased(store.lease("sb1", POLICY, 110).await.unwrap());
    assert_eq!(j.id, "old-done");
    let lease = j.lease_id.clone().unwrap();
    store
        .append_log("sb1", &j.id, &lease, 0, b"output", 1 << 20)
        .await
        .unwrap();
    store
        .complete(
            "sb1",
            &j.id,
            &lease,
            Finish::Succeeded {
                result: json!({"ok": 1}).into(),
            },
            120,
        )
        .await
        .unwrap();
    store
        .admit(job("old-running", "u", None, 0, 100), 0, None, &a)
        .await
        .unwrap();
    leased(store.lease("sbu", POLICY, 130).await.unwrap());
    store
        .record_event(Some("t"), 140, "scale.up", &json!({}))
        .await
        .unwrap();
    store
        .append_events(&[OutboxEvent::new(
            "usage.interval",
            Some("t".into()),
            json!({"s": 1}),
            150,
        )])
        .await
        .unwrap();
    store
        .append_ledger(&shoal_metering::LedgerEntry {
            sandbox_id: "sb1".into(),
            tenant: "t".into(),
            at: 150,
            kind: shoal_metering::LedgerKind::Stopped,
            note: None,
        })
        .await
        .unwrap();
    // New: a job that finished after the cutoff.
    store
        .admit(job("new-done", "u", None, 0, 100), 0, None, &a)
        .await
        .unwrap();
    let n = leased(store.lease("sb2", POLICY, 900).await.unwrap());
    assert_eq!(n.id, "old-queued", "the queue is shared by tenant t");
    store.cancel("new-done", 2_000, &a).await.unwrap();

    // The delivery of old-done's event is still pending: it and its event stay.
    let cutoff = 1_000;
    let batch = store.expired(cutoff, 100).await.unwrap();
    let ids: Vec<&str> = batch.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["old-done"]);
    assert_eq!(
        batch.jobs[0].spec.to_value(),
        json!({"command": ["true"]}),
        "exported whole"
    );
    assert_eq!(batch.events.len(), 1);
    assert!(
        batch.deliveries.is_empty() && batch.outbox.is_empty(),
        "{batch:?}"
    );

    let audit = shoal_core::audit::AuditEntry {
        at: 3_000,
        actor: Actor::system("retention"),
        action: "retention.run".into(),
        target: "store".into(),
        detail: json!({}),
    };
    let done = store.delete_expired(&batch, cutoff, &audit).await.unwrap();
    assert_eq!((done.jobs, done.events), (1, 1));
    assert!(store.job("old-done").await.unwrap().is_none());
    assert_eq!(store.job_log("old-done", 0, 100).await.unwrap().data, b"");
    for kept in ["old-queued", "old-running", "new-done"] {
        assert!(store.job(kept).await.unwrap().is_some(), "{kept} is kept");
    }
    assert_eq!(
        store.ledger(Some("t")).await.unwrap().len(),
        1,
        "the ledger is kept"
    );
    assert_eq!(
        outbox_events(&*store, "usage.", 10).await.len(),
        1,
        "usage events are kept"
    );
    let log = audit_log(&*store).await;
    assert_eq!(log.last().unwrap().1, "retention.run");
    assert!(
        log.iter().any(|(_, _, t)| t == "job/old-done"),
        "the audit log keeps the job's records"
    );

    // Once the delivery is spent, it and its event go too.
    let leased_d = store
        .lease_deliveries("w", 10, 1_000, 5, 200)
        .await
        .unwrap();
    assert_eq!(leased_d.len(), 1);
    store
        .finish_delivery(
            &leased_d[0],
            &AttemptOutcome::Delivered { status: 200 },
            210,
        )
        .await
        .unwrap();
    let batch = store.expired(cutoff, 100).await.unwrap();
    assert_eq!((batch.deliveries.len(), batch.outbox.len()), (1, 1));
    assert_eq!(batch.outbox[0].topic, "job.succeeded");
    let done = store.delete_expired(&batch, cutoff, &audit).await.unwrap();
    assert_eq!((done.deliveries, done.outbox), (1, 1));
    assert!(store.expired(cutoff, 100).await.unwrap().is_empty());
    assert_eq!(outbox_events(&*store, "usage.", 10).await.len(), 1);
}

// ---- Usage events ------------------------------------------------------------------------------

const H: i64 = 3_600_000;

fn running(sb: &str, tenant: &str, at: i64) -> shoal_metering::LedgerEntry {
    shoal_metering::LedgerEntry {
        sandbox_id: sb.into(),
        tenant: tenant.into(),
        at,
        kind: shoal_metering::LedgerKind::Running {
            cpus_milli: 2000,
            memory_mb: 1024,
        },
        note: None,
    }
}

fn stopped(sb: &str, tenant: &str, at: i64) -> shoal_metering::LedgerEntry {
    shoal_metering::LedgerEntry {
        sandbox_id: sb.into(),
        tenant: tenant.into(),
        at,
        kind: shoal_metering::LedgerKind::Stopped,
        note: None,
    }
}

fn priced() -> shoal_metering::UsageContext {
    let mut ctx = shoal_metering::UsageContext {
        source: "test".into(),
        ..Default::default()
    };
    ctx.prices.currency = "USD".into();
    ctx.prices.providers.insert(
        "process".into(),
        shoal_metering::Price {
            vcpu_second: 0.001,
            gib_second: 0.0005,
        },
    );
    ctx
}

/// Every usage event there is, read page by page from the start.
async fn all_usage(store: &dyn Store, page: u32) -> Vec<UsageEventRecord> {
    let mut out: Vec<UsageEventRecord> = Vec::new();
    let mut at = UsageCursor::default();
    loop {
        let got = store.usage_events(None, at, page).await.unwrap();
        let Some(last) = got.last() else { break };
        at = last.cursor;
        out.extend(got);
    }
    out
}

/// The exact milliseconds of an event's `[from, to)`.
fn event_ms(e: &serde_json::Value) -> i64 {
    let t = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(e["data"][k].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    t("to") - t("from")
}

async fn usage_events(store: Arc<dyn Store>) {
    setup(&*store).await;
    let ctx = priced();
    let t0 = 100 * H + 30 * 60_000; // half past an hour
    // sb1 runs 2.5 h, cut at both hours it crosses (twice each: idempotent), then stops.
    assert_eq!(
        store
            .record_ledger(&running("sb1", "t", t0), &ctx, t0)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .record_ledger(&running("sb1", "t", t0 + 5), &ctx, t0)
            .await
            .unwrap(),
        0,
        "a repeated running changes nothing"
    );
    assert_eq!(store.cut_usage(101 * H, &ctx, 101 * H).await.unwrap(), 1);
    assert_eq!(
        store.cut_usage(101 * H + 7, &ctx, 101 * H).await.unwrap(),
        0,
        "rounded to the hour, already cut"
    );
    assert_eq!(store.cut_usage(102 * H, &ctx, 102 * H).await.unwrap(), 1);
    let open = store.open_usage().await.unwrap();
    assert_eq!(
        (open.len(), open[0].billed_to, open[0].provider.as_str()),
        (1, 102 * H, "process")
    );
    assert_eq!(
        store
            .record_ledger(&stopped("sb1", "t", 103 * H), &ctx, 103 * H)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .record_ledger(&stopped("sb1", "t", 103 * H + 9), &ctx, 103 * H)
            .await
            .unwrap(),
        0,
        "a repeated stop bills nothing"
    );
    assert!(store.open_usage().await.unwrap().is_empty());

    // sbu: a crash-late provider report says it stopped before the last cut; the ledger keeps the
    // billed time, with a note, so ledger and events agree.
    store
        .record_ledger(&running("sbu", "u", 104 * H - 60_000), &ctx, 0)
        .await
        .unwrap();
    store.cut_usage(104 * H, &ctx, 104 * H).await.unwrap();
    let mut late = stopped("sbu", "u", 104 * H - 30_000);
    late.note =
        Some(json!({"finding": "not listed by the provider; closed at the last heartbeat"}));
    assert_eq!(
        store.record_ledger(&late, &ctx, 104 * H + 5).await.unwrap(),
        0
    );
    let ledger = store.ledger(Some("u")).await.unwrap();
    let last = ledger.last().unwrap();
    assert_eq!(last.at, 104 * H);
    let note = last.note.as_ref().unwrap();
    assert_eq!(note["reported_at"], json!(104 * H - 30_000));
    assert_eq!(
        note["finding"],
        "not listed by the provider; closed at the last heartbeat"
    );

    let evs = all_usage(&*store, 100).await;
    let data: Vec<(String, i64, &str)> = evs
        .iter()
        .map(|e| {
            let p = &e.event.payload;
            (
                p["subject"].as_str().unwrap().to_string(),
                event_ms(p),
                p["data"]["from"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(data.len(), 4, "{data:?}");
    assert_eq!(data[0].1, 30 * 60_000);
    assert_eq!((data[1].1, data[2].1, data[3].1), (H, H, 60_000));
    for e in &evs {
        let p = &e.event.payload;
        assert_eq!(p["specversion"], "1.0");
        assert_eq!(p["type"], "dev.shoal.sandbox.usage");
        assert_eq!(p["source"], "test");
        assert_eq!(e.event.id, p["id"].as_str().unwrap());
        assert_eq!(e.event.topic, "usage.sandbox");
        let from = chrono::DateTime::parse_from_rfc3339(p["data"]["from"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let to = chrono::DateTime::parse_from_rfc3339(p["data"]["to"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            p["id"],
            shoal_metering::usage_event_id(p["data"]["sandbox"].as_str().unwrap(), from, to)
        );
        assert!(from / H == (to - 1) / H, "never across an hour");
        let secs = (to - from) as f64 / 1e3;
        assert_eq!(p["data"]["seconds"].as_f64().unwrap(), secs);
        assert_eq!(p["data"]["vcpu_seconds"].as_f64().unwrap(), secs * 2.0);
        assert_eq!(p["data"]["gib_seconds"].as_f64().unwrap(), secs);
        let cost = secs * 2.0 * 0.001 + secs * 0.0005;
        assert!((p["data"]["cost"].as_f64().unwrap() - cost).abs() < 1e-9);
        assert_eq!(p["data"]["currency"], "USD");
    }
    // Per tenant, the events add up to the ledger's intervals exactly.
    for tenant in ["t", "u"] {
        let ivs = shoal_metering::intervals(&store.ledger(Some(tenant)).await.unwrap(), 200 * H);
        let ledger_ms: i64 = ivs.iter().map(|i| i.end - i.start).sum();
        let event_total: i64 = evs
            .iter()
            .filter(|e| e.event.tenant.as_deref() == Some(tenant))
            .map(|e| event_ms(&e.event.payload))
            .sum();
        assert_eq!(ledger_ms, event_total, "tenant {tenant}");
    }
    // Usage events are not webhook events: no deliveries fan out.
    assert!(evs.iter().all(|e| {
        !OutboxEvent {
            id: e.event.id.clone(),
            topic: e.event.topic.clone(),
            tenant: None,
            payload: json!(null),
            created_at: 0,
        }
        .is_webhook()
    }));

    // One tenant's events alone.
    let u = store
        .usage_events(Some("u"), UsageCursor::default(), 100)
        .await
        .unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].event.tenant.as_deref(), Some("u"));
    // Named cursors persist.
    assert_eq!(store.usage_cursor("sink").await.unwrap(), None);
    store
        .set_usage_cursor("sink", evs[1].cursor, 5)
        .await
        .unwrap();
    store
        .set_usage_cursor("sink", evs[2].cursor, 6)
        .await
        .unwrap();
    assert_eq!(
        store.usage_cursor("sink").await.unwrap(),
        Some(evs[2].cursor)
    );
    assert_eq!(
        evs[2].cursor.to_string().parse::<UsageCursor>().unwrap(),
        evs[2].cursor
    );
    assert!("1".parse::<UsageCursor>().is_err());
    // Budget signals: once per tenant, signal and month, with an operators' event and a webhook
    // event fanned out in the same transaction.
    let p = json!({"tenant": "t", "spent": 8.0, "budget": 10.0});
    assert!(
        store
            .budget_signal("t", "budget.warning", 0, &p, 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .budget_signal("t", "budget.warning", 0, &p, 2)
            .await
            .unwrap()
    );
    assert!(
        store
            .budget_signal("t", "budget.warning", 31 * 86_400_000, &p, 3)
            .await
            .unwrap()
    );
    assert!(
        store
            .budget_signal("u", "budget.warning", 0, &p, 1)
            .await
            .unwrap()
    );
    let warned = store
        .events(Some("t"), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "budget_warning")
        .count();
    assert_eq!(warned, 2);
    let topics: Vec<String> = outbox_events(&*store, "budget.", 100)
        .await
        .into_iter()
        .map(|e| e.topic)
        .collect();
    assert_eq!(topics.len(), 3);
    assert!(topics.iter().all(|t| t == "budget.warning"));
    assert!("-1.2".parse::<UsageCursor>().is_err());
}

async fn usage_cursor_paging(store: Arc<dyn Store>) {
    setup(&*store).await;
    let ctx = priced();
    for i in 0..7 {
        let sb = format!("p{i}");
        store
            .record_ledger(&running(&sb, "t", i * H / 2), &ctx, 0)
            .await
            .unwrap();
        store
            .record_ledger(&stopped(&sb, "t", i * H / 2 + H), &ctx, 0)
            .await
            .unwrap();
    }
    let all = all_usage(&*store, 1000).await;
    let ids: Vec<&str> = all.iter().map(|e| e.event.id.as_str()).collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), ids.len());
    assert_eq!(
        ids.len(),
        10,
        "an hour from the half hour is two pieces, from the hour one"
    );
    for page in [1, 2, 3, 5] {
        let paged = all_usage(&*store, page).await;
        assert_eq!(
            paged
                .iter()
                .map(|e| e.event.id.as_str())
                .collect::<Vec<_>>(),
            ids
        );
        assert!(paged.windows(2).all(|w| w[0].cursor < w[1].cursor));
    }
    // Resuming from any cursor gives exactly the rest.
    for (i, e) in all.iter().enumerate() {
        let rest = store.usage_events(None, e.cursor, 1000).await.unwrap();
        assert_eq!(rest.len(), all.len() - i - 1);
    }
}

/// Many writers close intervals at once while a reader follows the cursor: the reader ends up
/// with every event exactly once, with cursors that only grow.
async fn usage_concurrent_writers(store: Arc<dyn Store>) {
    setup(&*store).await;
    let writers = 8;
    let each = 25;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut at = UsageCursor::default();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let got = store.usage_events(None, at, 7).await.unwrap();
                for e in &got {
                    assert!(e.cursor > at, "the cursor only grows");
                    at = e.cursor;
                    seen.push(e.event.id.clone());
                }
                if got.is_empty() && finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let ctx = priced();
            for i in 0..each {
                let sb = format!("w{w}-{i}");
                let at = (w * each + i) as i64 * 1000;
                store
                    .record_ledger(&running(&sb, "t", at), &ctx, 0)
                    .await
                    .unwrap();
                store
                    .record_ledger(&stopped(&sb, "t", at + 500), &ctx, 0)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.unwrap();
    let mut uniq = seen.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), seen.len(), "no event twice");
    assert_eq!(seen.len(), writers * each, "no event missed");
}

/// The interleaving that defeats a reader ordering by `seq` alone: an older transaction inserts
/// after a younger one and commits first. A `seq` cursor would move past the younger one's row
/// before it commits and never see it; the `(txid, seq)` cursor does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_usage_cursor_survives_out_of_order_commits() {
    let Some(pg) = Postgres::start().expect("starting Postgres") else {
        return;
    };
    let url = pg.create_database().unwrap();
    let store = shoal_store::open(&url).await.unwrap();
    let connect = || async {
        <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap()
    };
    let (mut older, mut younger) = (connect().await, connect().await);
    let insert = |id: &str| {
        format!(
            "INSERT INTO outbox (id, topic, payload, created_at) VALUES ('{id}', 'usage.sandbox', '{{}}', 1)"
        )
    };
    sqlx::raw_sql("BEGIN; SELECT txid_current()")
        .execute(&mut older)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; SELECT txid_current()")
        .execute(&mut younger)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(insert("young")))
        .execute(&mut younger)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(insert("old")))
        .execute(&mut older)
        .await
        .unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut older).await.unwrap();
    let first = store
        .usage_events(None, UsageCursor::default(), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = first.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(
        ids,
        ["old"],
        "the older, committed transaction's row is readable"
    );
    sqlx::raw_sql("COMMIT").execute(&mut younger).await.unwrap();
    let next = store.usage_events(None, first[0].cursor, 10).await.unwrap();
    let ids: Vec<&str> = next.iter().map(|e| e.event.id.as_str()).collect();
    assert_eq!(
        ids,
        ["young"],
        "the row that committed later still comes after the cursor"
    );
    assert!(
        next[0].event.seq < first[0].event.seq,
        "`young` has the lower seq: a `seq > cursor` reader would have passed it"
    );
}

fn failed(code: &str) -> Finish {
    Finish::Failed {
        result: None,
        error: json!({"code": code, "message": "it failed"}),
    }
}

async fn delayed_and_retried(store: Arc<dyn Store>) {
    setup(&*store).await;
    let admin = Actor::admin();
    // A delayed job is not leased before its time, is counted as waiting, and is due then.
    let mut d = job("delayed", "t", None, 5, 1_000);
    d.run_at = Some(10_000);
    store.admit(d, 0, None, &admin).await.unwrap();
    assert_eq!(
        store.lease("sb1", POLICY, 9_999).await.unwrap(),
        Lease::Idle
    );
    let counts: std::collections::HashMap<_, _> = store
        .queue_counts(9_999)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(counts["t"].queued, 1);
    assert_eq!(counts["t"].waiting, 1);
    assert_eq!(counts["t"].next_due, Some(10_000));
    assert_eq!(store.next_due("t", 9_999).await.unwrap(), Some(10_000));
    assert_eq!(store.next_due("u", 9_999).await.unwrap(), None);
    let j = leased(store.lease("sb1", POLICY, 10_000).await.unwrap());
    assert_eq!((j.id.as_str(), j.run_at), ("delayed", Some(10_000)));
    let counts: std::collections::HashMap<_, _> = store
        .queue_counts(10_000)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!((counts["t"].running, counts["t"].waiting), (1, 0));
    store
        .complete(
            "sb1",
            "delayed",
            j.lease_id.as_deref().unwrap(),
            Finish::Succeeded {
                result: json!(1).into(),
            },
            10_500,
        )
        .await
        .unwrap();
    let done = store.job("delayed").await.unwrap().unwrap();
    assert_eq!(done.attempt_history.len(), 1);
    assert_eq!(done.attempt_history[0].outcome, "succeeded");
    assert_eq!(done.attempt_history[0].started_at, Some(10_000));

    // Retry on failure: three attempts, each after its backoff, then `failed` with a history of
    // three. Between attempts the job is queued with `next_attempt_at` and not leased before.
    let mut r = job("retried", "t", None, 0, 20_000);
    r.max_attempts = 3;
    r.retry = RetryPolicy {
        max_attempts: 3,
        on: vec![RetryOn::Failure],
        initial_backoff_s: 1.0,
        max_backoff_s: 60.0,
    };
    store.admit(r, 0, None, &admin).await.unwrap();
    let mut now = 20_000;
    let mut gaps = Vec::new();
    for attempt in 1..=3u32 {
        let j = leased(store.lease("sb1", POLICY, now).await.unwrap());
        assert_eq!((j.id.as_str(), j.attempts), ("retried", attempt));
        now += 100;
        let out = store
            .complete(
                "sb1",
                &j.id,
                j.lease_id.as_deref().unwrap(),
                failed("exit"),
                now,
            )
            .await
            .unwrap();
        let Completed::Done(after) = out else {
            panic!("stale")
        };
        if attempt < 3 {
            assert_eq!(after.state, JobState::Queued);
            let at = after.next_attempt_at.expect("a next attempt time");
            let base = 1000 * (1 << (attempt - 1));
            assert!(
                at - now >= base * 8 / 10 && at - now <= base * 12 / 10,
                "{attempt}: {}",
                at - now
            );
            gaps.push(at - now);
            assert_eq!(
                store.lease("sb1", POLICY, at - 1).await.unwrap(),
                Lease::Idle
            );
            assert_eq!(store.next_due("t", at - 1).await.unwrap(), Some(at));
            now = at;
        } else {
            assert_eq!(after.state, JobState::Failed);
            assert_eq!(after.next_attempt_at, None);
            assert_eq!(after.attempt_history.len(), 3);
            assert!(after.attempt_history.iter().all(|a| a.outcome == "failure"));
            let n: Vec<u32> = after.attempt_history.iter().map(|a| a.attempt).collect();
            assert_eq!(n, [1, 2, 3]);
        }
    }
    assert_eq!(gaps.len(), 2);

    // A failure the policy does not list ends the job at once; a timeout is its own outcome.
    let mut t = job("timeout", "t", None, 0, 40_000);
    t.retry.on = vec![RetryOn::Timeout];
    t.retry.initial_backoff_s = 2.0;
    t.retry.max_backoff_s = 2.0;
    store.admit(t, 0, None, &admin).await.unwrap();
    let j = leased(store.lease("sb1", POLICY, 40_000).await.unwrap());
    store
        .complete(
            "sb1",
            &j.id,
            j.lease_id.as_deref().unwrap(),
            failed("timeout"),
            41_000,
        )
        .await
        .unwrap();
    let j2 = store.job("timeout").await.unwrap().unwrap();
    assert_eq!(j2.state, JobState::Queued);
    assert_eq!(j2.attempt_history[0].outcome, "timeout");
    let j = leased(store.lease("sb1", POLICY, 50_000).await.unwrap());
    store
        .complete(
            "sb1",
            &j.id,
            j.lease_id.as_deref().unwrap(),
            failed("exit"),
            50_100,
        )
        .await
        .unwrap();
    assert_eq!(
        store.job("timeout").await.unwrap().unwrap().state,
        JobState::Failed
    );

    // Lost with backoff: the lapsed lease puts the job back after the backoff, not at once.
    let mut l = job("lost", "t", None, 0, 60_000);
    l.retry.initial_backoff_s = 5.0;
    l.retry.max_backoff_s = 5.0;
    store.admit(l, 0, None, &admin).await.unwrap();
    leased(store.lease("sb2", POLICY, 60_000).await.unwrap());
    let back = store
        .expire_leases(60_000 + POLICY.lease_ttl_ms + 1)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].state, JobState::Queued);
    let at = back[0].next_attempt_at.unwrap();
    assert!(at >= 70_001 + 4_000, "{at}");
    assert_eq!(back[0].attempt_history[0].outcome, "lost");
    assert_eq!(
        store.lease("sb2", POLICY, at - 1).await.unwrap(),
        Lease::Idle
    );
    let j = leased(store.lease("sb2", POLICY, at).await.unwrap());
    assert_eq!(j.next_attempt_at, None);
}

fn schedule(name: &str, next: Option<i64>, now: i64) -> NewSchedule {
    NewSchedule {
        tenant: "t".into(),
        name: name.into(),
        cron: "*/5 * * * * *".into(),
        timezone: "UTC".into(),
        job: json!({"kind": "agent", "spec": {"command": ["true"]}}).into(),
        next_fire_at: next,
        now,
    }
}

fn fire(name: &str) -> ScheduleFire {
    ScheduleFire {
        tenant: "t".into(),
        name: name.into(),
        claimed: 5_000,
        next: Some(10_000),
    }
}

fn fired_job(name: &str, fire: i64) -> NewJob {
    let mut j = job(&format!("{name}-{fire}"), "t", None, 0, fire - 1_000);
    j.idempotency_key = Some(shoal_store::schedules::fire_key(name, fire));
    j.run_at = Some(fire);
    j.schedule = Some(format!("t/{name}"));
    j
}

async fn schedules(store: Arc<dyn Store>) {
    setup(&*store).await;
    let admin = Actor::admin();
    let (s, created) = store
        .put_schedule(&schedule("nightly", Some(5_000), 1), &admin)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(s.next_fire_at, Some(5_000));
    let (_, created) = store
        .put_schedule(&schedule("nightly", Some(5_000), 2), &admin)
        .await
        .unwrap();
    assert!(!created);
    store
        .put_schedule(&schedule("other", Some(7_000), 3), &admin)
        .await
        .unwrap();
    let listed: Vec<String> = store
        .schedules(Some("t"))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, ["nightly", "other"]);
    assert!(store.schedules(Some("u")).await.unwrap().is_empty());

    // Firing claims the time and admits the job with it; a second fire of the same time does
    // nothing, and neither does one with a stale time.
    let out = store
        .fire_schedule(&fire("nightly"), fired_job("nightly", 5_000), 0, None)
        .await
        .unwrap();
    let Some(Admitted::Created { job, .. }) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (job.run_at, job.schedule.as_deref()),
        (Some(5_000), Some("t/nightly"))
    );
    assert_eq!(
        store
            .fire_schedule(&fire("nightly"), fired_job("nightly", 5_000), 0, None)
            .await
            .unwrap(),
        None
    );
    let s = store.schedule("t", "nightly").await.unwrap().unwrap();
    assert_eq!(
        (s.next_fire_at, s.last_fire_at),
        (Some(10_000), Some(5_000))
    );
    // The job is not leased before its fire time.
    assert_eq!(
        store.lease("sb1", POLICY, 4_999).await.unwrap(),
        Lease::Idle
    );
    assert_eq!(
        leased(store.lease("sb1", POLICY, 5_000).await.unwrap()).id,
        job.id
    );

    // Deleting: gone, and audited with the create.
    assert!(
        store
            .delete_schedule("t", "other", 8_000, &admin)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_schedule("t", "other", 8_001, &admin)
            .await
            .unwrap()
    );
    assert!(store.schedule("t", "other").await.unwrap().is_none());
    while store.seal_audit(500).await.unwrap() > 0 {}
    let log = audit_log(&*store).await;
    let actions: Vec<&str> = log
        .iter()
        .map(|(_, a, _)| a.as_str())
        .filter(|a| a.starts_with("schedule."))
        .collect();
    assert_eq!(
        actions,
        [
            "schedule.create",
            "schedule.update",
            "schedule.create",
            "schedule.delete"
        ]
    );
    assert!(
        log.iter()
            .any(|(kind, a, _)| a == "job.enqueue" && kind == "system"),
        "{log:?}"
    );
}

async fn concurrent_fires(store: Arc<dyn Store>) {
    setup(&*store).await;
    store
        .put_schedule(&schedule("s", Some(5_000), 1), &Actor::admin())
        .await
        .unwrap();
    // Eight replicas fire the same time at once: one job.
    let fires = (0..8).map(|i| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut j = fired_job("s", 5_000);
            j.id = format!("s-{i}");
            store.fire_schedule(&fire("s"), j, 0, None).await.unwrap()
        })
    });
    let mut created = 0;
    for f in fires {
        if let Some(Admitted::Created { .. }) = f.await.unwrap() {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    let jobs = store
        .jobs(&JobFilter {
            tenant: Some("t".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
}

/// `sandbox_unhealthy`: heartbeats and lease requests move `last_seen`; a sandbox is marked only
/// while ready or busy and silent since the cutoff, its running job goes back with the attempt
/// used, and its agent is told to stop.
async fn unhealthy(store: Arc<dyn Store>) {
    setup(&*store).await;
    store
        .admit(job("j1", "t", None, 0, 10), 0, None, &Actor::admin())
        .await
        .unwrap();
    let j1 = leased(store.lease("sb1", POLICY, 100).await.unwrap());
    let lease = j1.lease_id.clone().unwrap();
    assert!(store.heartbeat("j1", &lease, 10_000, 400).await.unwrap().ok);
    let sb = store.sandbox("sb1").await.unwrap().unwrap();
    assert_eq!((sb.state, sb.last_seen), (SandboxState::Busy, Some(400)));
    assert_eq!(sb.last_sign(), 400);
    // Heard from after the cutoff: kept.
    assert!(
        store
            .sandbox_unhealthy("sb1", 399, 1_000)
            .await
            .unwrap()
            .is_none()
    );
    // Silent since: marked, its job back with its attempt used.
    let (was, back) = store
        .sandbox_unhealthy("sb1", 400, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(was.state, SandboxState::Busy);
    assert_eq!(
        back.iter()
            .map(|j| (j.id.as_str(), j.state, j.attempts))
            .collect::<Vec<_>>(),
        [("j1", JobState::Queued, 1)]
    );
    let sb = store.sandbox("sb1").await.unwrap().unwrap();
    assert_eq!((sb.state, sb.since), (SandboxState::Unhealthy, 1_000));
    assert_eq!(
        store.job("j1").await.unwrap().unwrap().error.unwrap()["code"],
        "sandbox_unhealthy"
    );
    // Once unhealthy, not again; its agent, waking up, is told to stop; its late heartbeat is
    // refused.
    assert!(
        store
            .sandbox_unhealthy("sb1", i64::MAX, 1_001)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        store.lease("sb1", POLICY, 1_002).await.unwrap(),
        Lease::Stop
    ));
    assert!(
        !store
            .heartbeat("j1", &lease, 10_000, 1_003)
            .await
            .unwrap()
            .ok
    );
    // A booting sandbox is not the health check's (its boot timeout is).
    assert!(
        store
            .sandbox_unhealthy("sb2", i64::MAX, 1_004)
            .await
            .unwrap()
            .is_none()
    );
    // A ready sandbox's lease request is a sign of life too.
    assert!(matches!(
        store.lease("sbu", POLICY, 2_000).await.unwrap(),
        Lease::Idle
    ));
    assert_eq!(
        store.sandbox("sbu").await.unwrap().unwrap().last_seen,
        Some(2_000)
    );
    assert!(
        store
            .sandbox_unhealthy("sbu", 1_999, 3_000)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .sandbox_unhealthy("sbu", 2_000, 3_000)
            .await
            .unwrap()
            .is_some()
    );
}

/// Right-sizing's samples: one per attempt, read back newest first, kept within the window (the
/// newest `WINDOW_JOBS` of the last `WINDOW_MS`); the size `auto_size` gives is changed with its
/// event and audit record, and only when it changes.
async fn sizing(store: Arc<dyn Store>) {
    use shoal_core::SandboxSize;
    use shoal_core::sizing::{Sample, WINDOW_JOBS, WINDOW_MS};
    setup(store.as_ref()).await;
    let sample = |mib: u64| Sample {
        peak_memory_kib: mib * 1024,
        cpu_ms: 250,
        wall_ms: 1000,
        oom_killed: mib > 500,
        memory_mb: 512,
    };
    let rec = |job: &str, attempt: u32, tenant: &str, at: i64, s: Sample| JobUsageRecord {
        job_id: job.into(),
        attempt,
        tenant: tenant.into(),
        at,
        sample: s,
    };
    assert!(
        store
            .record_job_usage(&rec("j1", 1, "t", 10, sample(60)))
            .await
            .unwrap()
    );
    assert!(
        !store
            .record_job_usage(&rec("j1", 1, "t", 11, sample(70)))
            .await
            .unwrap(),
        "an attempt's usage is recorded once"
    );
    assert!(
        store
            .record_job_usage(&rec("j1", 2, "t", 12, sample(600)))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_job_usage(&rec("k1", 1, "u", 12, sample(9)))
            .await
            .unwrap()
    );
    let got = store.job_usage("t", 0, 100).await.unwrap();
    assert_eq!(
        got,
        [sample(600), sample(60)],
        "newest first, of the tenant only"
    );
    assert_eq!(store.job_usage("t", 11, 100).await.unwrap(), [sample(600)]);
    // Past the window's age: a sample 30 days newer drops the old ones.
    let later = 12 + WINDOW_MS + 1;
    store
        .record_job_usage(&rec("j2", 1, "t", later, sample(61)))
        .await
        .unwrap();
    assert_eq!(store.job_usage("t", 0, 100).await.unwrap(), [sample(61)]);
    // Past the window's count: the newest WINDOW_JOBS stay.
    for i in 0..WINDOW_JOBS as i64 + 5 {
        store
            .record_job_usage(&rec(&format!("n{i}"), 1, "u", 100 + i, sample(8)))
            .await
            .unwrap();
    }
    let kept = store.job_usage("u", 0, 10_000).await.unwrap();
    assert_eq!(kept.len(), WINDOW_JOBS);
    // The size auto_size gives: recorded with its event and audit record when it changes.
    let small = SandboxSize {
        cpus: 1.0,
        memory_mb: 128,
    };
    assert!(store.auto_sizes().await.unwrap().is_empty());
    let why = json!({"jobs_sampled": 50});
    assert!(store.set_auto_size("t", small, &why, 20).await.unwrap());
    assert!(!store.set_auto_size("t", small, &why, 21).await.unwrap());
    let big = SandboxSize {
        cpus: 2.0,
        memory_mb: 1024,
    };
    assert!(store.set_auto_size("t", big, &why, 22).await.unwrap());
    assert_eq!(store.auto_sizes().await.unwrap()["t"], big);
    let events: Vec<_> = store
        .events(Some("t"), 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "auto_size")
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].detail["to"]["memory_mb"], 1024);
    assert_eq!(events[0].detail["from"]["memory_mb"], 128);
    while store.seal_audit(1000).await.unwrap() > 0 {}
    let audited = store
        .audit_records(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "tenant.auto_size")
        .count();
    assert_eq!(audited, 2);
}

/// The shared warm pool: a blank is no tenant's (no sandbox, no ledger entry) until claimed; a
/// claim binds it to one tenant with the `claim` event and opens that tenant's billing at the
/// claim, in one transaction; of concurrent claims of one blank exactly one wins; a booting blank
/// cannot be claimed; a claimed blank is gone from the pool for good.
async fn warm_pool_claims(store: Arc<dyn Store>) {
    use shoal_store::{BlankState, NewBlank};
    setup(&*store).await;
    let blank = |id: &str| NewBlank {
        id: id.into(),
        provider: "process".into(),
        token_hash: format!("h-{id}"),
        cpus_milli: 1000,
        memory_mb: 512,
        now: 10,
    };
    let b = store.insert_blank(blank("b1")).await.unwrap();
    assert_eq!(b.state, BlankState::Booting);
    let ctx = shoal_metering::UsageContext::default();
    assert!(
        store
            .claim_blank("b1", "t", &ctx, 20)
            .await
            .unwrap()
            .is_none(),
        "booting"
    );
    assert!(
        store
            .set_blank("b1", BlankState::Ready, Some("pid-1"), None, 30)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .blank_by_token("h-b1")
            .await
            .unwrap()
            .unwrap()
            .provider_id
            .as_deref(),
        Some("pid-1")
    );
    assert!(store.sandbox_by_token("h-b1").await.unwrap().is_none());
    assert!(store.sandbox("b1").await.unwrap().is_none());

    // Eight claims at once, for two tenants: one wins.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (store, ctx) = (Arc::clone(&store), ctx.clone());
        let tenant = if i % 2 == 0 { "t" } else { "u" };
        set.spawn(async move { store.claim_blank("b1", tenant, &ctx, 100).await.unwrap() });
    }
    let mut won = Vec::new();
    while let Some(r) = set.join_next().await {
        won.extend(r.unwrap());
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let sb = &won[0];
    assert_eq!(
        (sb.id.as_str(), sb.state),
        ("b1", shoal_core::SandboxState::Booting)
    );
    assert_eq!(sb.provider_id.as_deref(), Some("pid-1"));
    let by_token = store.sandbox_by_token("h-b1").await.unwrap().unwrap();
    assert_eq!(by_token.tenant, sb.tenant);
    assert!(store.blank_by_token("h-b1").await.unwrap().is_none());
    assert!(store.blanks().await.unwrap().is_empty());
    let ev = store.events(Some(&sb.tenant), 50).await.unwrap();
    assert_eq!(ev.iter().filter(|e| e.kind == "claim").count(), 1);
    let other = if sb.tenant == "t" { "u" } else { "t" };
    let other_ev = store.events(Some(other), 50).await.unwrap();
    assert!(other_ev.iter().all(|e| e.kind != "claim"));
    // Billing opens at the claim, for the claimant only; nobody paid for the blank before.
    let ledger = store.ledger(None).await.unwrap();
    let b1: Vec<_> = ledger.iter().filter(|e| e.sandbox_id == "b1").collect();
    assert_eq!(b1.len(), 1, "{b1:?}");
    assert_eq!((b1[0].tenant.as_str(), b1[0].at), (sb.tenant.as_str(), 100));
    // Never again: a second claim finds nothing.
    assert!(
        store
            .claim_blank("b1", other, &ctx, 200)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.sandbox("b1").await.unwrap().unwrap().tenant,
        sb.tenant
    );

    // A stopped blank is claimed starting, with no billing until the provider says it runs.
    store.insert_blank(blank("b2")).await.unwrap();
    store
        .set_blank("b2", BlankState::Stopped, Some("m-2"), Some("ams"), 40)
        .await
        .unwrap();
    let sb2 = store
        .claim_blank("b2", "u", &ctx, 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sb2.state, shoal_core::SandboxOp::Start.in_flight());
    assert_eq!(sb2.region.as_deref(), Some("ams"));
    assert!(
        store
            .ledger(None)
            .await
            .unwrap()
            .iter()
            .all(|e| e.sandbox_id != "b2")
    );
    // Removal forgets a blank.
    store.insert_blank(blank("b3")).await.unwrap();
    assert!(store.remove_blank("b3").await.unwrap());
    assert!(!store.remove_blank("b3").await.unwrap());
}
