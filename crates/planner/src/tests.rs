//! Unit and property tests of the default policy.

use super::*;
use proptest::prelude::*;

const NOW: Millis = 10_000_000;

fn sb(id: &str, state: SandboxState, since: Millis, idle_since: Option<Millis>) -> SandboxView {
    SandboxView {
        id: id.into(),
        state,
        since,
        idle_since,
    }
}

fn pool(tenant: &str, queued: u32, running: u32, sandboxes: Vec<SandboxView>) -> PoolSnapshot {
    PoolSnapshot {
        tenant: tenant.into(),
        policy: PoolPolicy {
            max_sandboxes: Some(5),
            ..PoolPolicy::default()
        },
        queued,
        running,
        draining: false,
        prewarm: None,
        next_due: None,
        due_jobs: 0,
        sandboxes,
    }
}

fn one(p: PoolSnapshot) -> Snapshot {
    Snapshot {
        pools: vec![p],
        fleet_max_active: None,
    }
}

#[test]
fn queue_grows_the_pool_counting_booting_sandboxes() {
    let p = pool("t", 4, 0, vec![sb("a", SandboxState::Booting, NOW, None)]);
    let plan = plan(&one(p), NOW);
    assert_eq!(plan.pools[0].desired, 4);
    assert_eq!(
        plan.steps
            .iter()
            .filter(|s| matches!(s, Step::Create { .. }))
            .count(),
        3
    );
}

#[test]
fn max_sandboxes_caps_the_pool() {
    let p = pool("t", 50, 0, vec![]);
    let plan = plan(&one(p), NOW);
    assert_eq!(plan.steps.len(), 5);
}

#[test]
fn wakes_suspended_then_stopped_then_creates() {
    let p = pool(
        "t",
        4,
        0,
        vec![
            sb("stopped", SandboxState::Stopped, NOW - 10, None),
            sb("suspended", SandboxState::Suspended, NOW - 10, None),
        ],
    );
    let plan = plan(&one(p), NOW);
    assert_eq!(
        plan.steps,
        vec![
            Step::Resume {
                tenant: "t".into(),
                sandbox: "suspended".into()
            },
            Step::Start {
                tenant: "t".into(),
                sandbox: "stopped".into()
            },
            Step::Create { tenant: "t".into() },
            Step::Create { tenant: "t".into() },
        ]
    );
}

#[test]
fn idle_sandboxes_stop_only_after_the_timeout() {
    let p = pool(
        "t",
        0,
        0,
        vec![sb(
            "a",
            SandboxState::Ready,
            NOW - 1_000_000,
            Some(NOW - 299_999),
        )],
    );
    assert!(plan(&one(p.clone()), NOW).steps.is_empty());
    let plan2 = plan(&one(p), NOW + 1);
    assert_eq!(
        plan2.steps,
        vec![Step::Stop {
            tenant: "t".into(),
            sandbox: "a".into()
        }]
    );
}

#[test]
fn min_warm_keeps_idle_sandboxes() {
    let mut p = pool("t", 0, 0, vec![sb("a", SandboxState::Ready, 0, Some(0))]);
    p.policy.min_warm = 1;
    assert!(plan(&one(p), NOW).steps.is_empty());
}

#[test]
fn draining_stops_idle_sandboxes_now_and_wakes_none() {
    let mut p = pool(
        "t",
        3,
        1,
        vec![
            sb("idle", SandboxState::Ready, NOW, Some(NOW)),
            sb("busy", SandboxState::Busy, NOW, None),
            sb("asleep", SandboxState::Stopped, NOW, None),
        ],
    );
    p.draining = true;
    let plan = plan(&one(p), NOW);
    assert_eq!(
        plan.steps,
        vec![Step::Stop {
            tenant: "t".into(),
            sandbox: "idle".into()
        }]
    );
}

#[test]
fn retention_destroys_long_stopped_sandboxes_and_boot_timeout_gives_up() {
    let p = pool(
        "t",
        0,
        0,
        vec![
            sb("old", SandboxState::Stopped, NOW - 3_600_000, None),
            sb("stuck", SandboxState::Booting, NOW - 120_000, None),
        ],
    );
    let plan = plan(&one(p), NOW);
    assert_eq!(
        plan.steps,
        vec![
            Step::Destroy {
                tenant: "t".into(),
                sandbox: "stuck".into()
            },
            Step::Destroy {
                tenant: "t".into(),
                sandbox: "old".into()
            },
        ]
    );
}

#[test]
fn fleet_cap_is_shared_by_weight() {
    let mut a = pool("a", 20, 0, vec![]);
    let mut b = pool("b", 20, 0, vec![]);
    a.policy.max_sandboxes = None;
    b.policy.max_sandboxes = None;
    b.policy.weight = 3;
    let plan = plan(
        &Snapshot {
            pools: vec![a, b],
            fleet_max_active: Some(8),
        },
        NOW,
    );
    let per = |t: &str| plan.steps.iter().filter(|s| s.tenant() == t).count();
    assert_eq!((per("a"), per("b")), (2, 6));
}

fn arb_state() -> impl Strategy<Value = SandboxState> {
    prop::sample::select(
        SandboxState::ALL
            .into_iter()
            .filter(|s| *s != SandboxState::Destroyed)
            .collect::<Vec<_>>(),
    )
}

prop_compose! {
    fn arb_pool(tenant: &'static str)(
        states in prop::collection::vec((arb_state(), 0..2_000_000i64, 0..2_000_000i64), 0..12),
        queued in 0..40u32,
        max in prop::option::of(1..10u32),
        min_warm in 0..3u32,
        idle_timeout_ms in 1..1_000_000i64,
        suspend in any::<bool>(),
        draining in any::<bool>(),
        max_conc in prop::option::of(1..10u32),
        weight in 1..5u32,
    ) -> PoolSnapshot {
        let busy = states.iter().filter(|s| s.0 == SandboxState::Busy).count() as u32;
        let sandboxes = states.into_iter().enumerate().map(|(i, (state, ago, idle))| SandboxView {
            id: format!("{tenant}-{i}"),
            state,
            since: NOW - ago,
            idle_since: (state == SandboxState::Ready).then_some(NOW - idle.min(ago)),
        }).collect();
        PoolSnapshot {
            tenant: tenant.into(),
            policy: PoolPolicy {
                min_warm: max.map_or(min_warm, |m| min_warm.min(m)),
                max_sandboxes: max,
                max_concurrent_jobs: max_conc,
                idle_timeout_ms,
                idle_action: if suspend { IdleAction::Suspend } else { IdleAction::Stop },
                weight,
                ..PoolPolicy::default()
            },
            queued,
            running: busy,
            draining,
            prewarm: None,
            next_due: None,
            due_jobs: 0,
            sandboxes,
        }
    }
}

prop_compose! {
    fn arb_snapshot()(a in arb_pool("a"), b in arb_pool("b"), cap in prop::option::of(0..12u32)) -> Snapshot {
        Snapshot { pools: vec![a, b], fleet_max_active: cap }
    }
}

fn fresh_ids() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("new-{n}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the planner adds never takes a pool past max_sandboxes, active or in all.
    #[test]
    fn never_above_max_sandboxes(snap in arb_snapshot()) {
        let plan = plan(&snap, NOW);
        let next = apply(&snap, &plan, NOW, fresh_ids());
        for (before, after) in snap.pools.iter().zip(&next.pools) {
            if let Some(m) = before.policy.max_sandboxes {
                let active_after = after.sandboxes.iter().filter(|s| s.state.is_active()).count() as u32;
                let active_before = before.sandboxes.iter().filter(|s| s.state.is_active()).count() as u32;
                // The planner may not fix a pool already over its limit at once (busy ones stay),
                // but never grows one past it.
                prop_assert!(active_after <= m.max(active_before));
                let creates = plan.steps.iter().filter(|s| s.tenant() == before.tenant && matches!(s, Step::Create { .. })).count() as u32;
                if creates > 0 {
                    prop_assert!(after.sandboxes.len() as u32 <= m);
                }
            }
        }
    }

    /// A busy sandbox is never suspended, stopped or destroyed.
    #[test]
    fn never_stops_a_busy_sandbox(snap in arb_snapshot()) {
        let plan = plan(&snap, NOW);
        for step in &plan.steps {
            if let Some(id) = step.sandbox() {
                let s = snap.pools.iter().flat_map(|p| &p.sandboxes).find(|s| s.id == id).unwrap();
                if matches!(step, Step::Suspend { .. } | Step::Stop { .. } | Step::Destroy { .. }) {
                    prop_assert_ne!(s.state, SandboxState::Busy);
                }
            }
        }
    }

    /// Planning again on the plan's result, at the same instant, changes nothing.
    #[test]
    fn converges(snap in arb_snapshot()) {
        let plan1 = plan(&snap, NOW);
        let next = apply(&snap, &plan1, NOW, fresh_ids());
        let plan2 = plan(&next, NOW);
        prop_assert!(plan2.steps.is_empty(), "second plan {:?} after {:?}", plan2.steps, plan1.steps);
    }

    /// No pool gets a new sandbox while one of its suspended or stopped ones is left asleep.
    #[test]
    fn wakes_before_it_creates(snap in arb_snapshot()) {
        let plan = plan(&snap, NOW);
        for pool in &snap.pools {
            let creates = plan.steps.iter().any(|s| s.tenant() == pool.tenant && matches!(s, Step::Create { .. }));
            if creates {
                for s in pool.sandboxes.iter().filter(|s| matches!(s.state, SandboxState::Suspended | SandboxState::Stopped)) {
                    let woken = plan.steps.iter().any(|st| st.sandbox() == Some(&s.id) && matches!(st, Step::Resume { .. } | Step::Start { .. }));
                    prop_assert!(woken, "created while {} slept", s.id);
                }
            }
        }
    }

    /// Every step on an existing sandbox finds it in one of the step's from-states (the core's
    /// lifecycle table), and no sandbox gets two steps in one plan.
    #[test]
    fn every_step_is_allowed_by_the_lifecycle_table(snap in arb_snapshot()) {
        let plan = plan(&snap, NOW);
        let mut seen = std::collections::HashSet::new();
        for step in &plan.steps {
            let Some(id) = step.sandbox() else {
                prop_assert!(step.from_states().is_empty());
                continue;
            };
            prop_assert!(seen.insert(id.to_string()), "{id} stepped twice");
            let s = snap.pools.iter().flat_map(|p| &p.sandboxes).find(|s| s.id == id).unwrap();
            prop_assert!(step.kind().applies_to(s.state), "{} of a {} sandbox", step.op(), s.state);
        }
    }

    /// Between now and the pool's next deadline nothing changes a quiet pool's plan: a snapshot
    /// with nothing to do now has nothing to do until just before its first deadline.
    #[test]
    fn nothing_changes_before_the_next_deadline(snap in arb_snapshot()) {
        if !plan(&snap, NOW).steps.is_empty() {
            return Ok(());
        }
        let deadline = snap.pools.iter().filter_map(|p| next_deadline(p, NOW)).min();
        let before = deadline.map_or(NOW + 1_000_000_000, |d| d - 1);
        prop_assert!(before >= NOW);
        prop_assert!(plan(&snap, before).steps.is_empty(), "a step before the deadline {deadline:?}");
        if let Some(d) = deadline {
            // At the deadline itself, some pool's plan has a reason to be made again; at least
            // the instant is one where a rule's clock ran out.
            prop_assert!(d > NOW);
        }
    }

    /// With a fleet cap, the active total after the plan stays within it (or within the busy floor).
    #[test]
    fn fleet_cap_holds(snap in arb_snapshot()) {
        let Some(cap) = snap.fleet_max_active else { return Ok(()) };
        let plan = plan(&snap, NOW);
        let next = apply(&snap, &plan, NOW, fresh_ids());
        let active = |s: &Snapshot| s.pools.iter().flat_map(|p| &p.sandboxes).filter(|s| s.state.is_active()).count() as u32;
        let held = snap.pools.iter().flat_map(|p| &p.sandboxes)
            .filter(|s| matches!(s.state, SandboxState::Busy | SandboxState::Booting)).count() as u32;
        let created = plan.steps.iter().filter(|s| matches!(s, Step::Create { .. } | Step::Start { .. } | Step::Resume { .. })).count();
        if created > 0 {
            prop_assert!(active(&next) <= cap.max(held), "{} active past cap {}", active(&next), cap);
        }
    }
}

#[test]
fn work_due_later_wakes_a_sandbox_one_boot_lead_before_it() {
    let lead = PoolPolicy::default().due_lead_ms;
    let due = NOW + 60_000;
    let stopped = vec![sb("s1", SandboxState::Stopped, NOW - 600_000, None)];
    let mut p = pool("t", 0, 0, stopped.clone());
    p.next_due = Some(due);
    // Too early: nothing.
    assert!(plan(&one(p.clone()), due - lead - 1).steps.is_empty());
    // One lead before: the stopped sandbox is started (the cheapest wake).
    let woke = plan(&one(p.clone()), due - lead);
    assert_eq!(
        woke.steps,
        [Step::Start {
            tenant: "t".into(),
            sandbox: "s1".into()
        }]
    );
    assert_eq!(woke.pools[0].desired, 1);
    // A ready sandbox idle past its timeout is kept while the work is due soon.
    let mut ready = pool(
        "t",
        0,
        0,
        vec![sb(
            "s1",
            SandboxState::Ready,
            NOW - 600_000,
            Some(NOW - 600_000),
        )],
    );
    ready.next_due = Some(NOW + 1_000);
    assert!(plan(&one(ready.clone()), NOW).steps.is_empty());
    // The work did not come (cancelled: nothing due any more): the usual idle rule stops it.
    ready.next_due = None;
    assert_eq!(plan(&one(ready), NOW).steps.len(), 1);
}

#[test]
fn work_due_later_respects_draining_and_max_sandboxes() {
    let mut p = pool("t", 0, 0, vec![]);
    p.next_due = Some(NOW);
    p.draining = true;
    assert!(plan(&one(p.clone()), NOW).steps.is_empty());
    p.draining = false;
    p.policy.max_sandboxes = Some(0);
    assert!(plan(&one(p.clone()), NOW).steps.is_empty());
    p.policy.max_sandboxes = Some(3);
    // One sandbox for work due, however far in the past the due time is.
    assert_eq!(plan(&one(p), NOW + 3_600_000).steps.len(), 1);
}

#[test]
fn a_burst_falling_due_gets_a_sandbox_per_job_beside_the_running_ones() {
    let mut p = pool(
        "t",
        0,
        1,
        vec![sb("b1", SandboxState::Busy, NOW - 1_000, None)],
    );
    p.next_due = Some(NOW + 1_000);
    p.due_jobs = 3;
    let out = plan(&one(p.clone()), NOW);
    assert_eq!(out.pools[0].desired, 4);
    assert_eq!(out.steps.len(), 3);
    // Within max_sandboxes (5 here) and max_concurrent_jobs.
    p.policy.max_concurrent_jobs = Some(2);
    assert_eq!(plan(&one(p), NOW).pools[0].desired, 2);
}

#[test]
fn the_next_deadline_is_the_earliest_rule_to_run_out() {
    let p = PoolPolicy::default();
    let mut pool = pool(
        "t",
        0,
        0,
        vec![
            sb(
                "ready",
                SandboxState::Ready,
                NOW - 10_000,
                Some(NOW - 10_000),
            ),
            sb("stopped", SandboxState::Stopped, NOW - 1_000, None),
            sb("busy", SandboxState::Busy, NOW - 10, None),
        ],
    );
    // The ready sandbox's idle timeout comes first.
    assert_eq!(
        next_deadline(&pool, NOW),
        Some(NOW - 10_000 + p.idle_timeout_ms)
    );
    // A booting one's boot timeout, when sooner.
    pool.sandboxes.push(sb(
        "boot",
        SandboxState::Booting,
        NOW - p.boot_timeout_ms + 5,
        None,
    ));
    assert_eq!(next_deadline(&pool, NOW), Some(NOW + 5));
    // Work falling due: one boot lead before it.
    pool.next_due = Some(NOW + p.due_lead_ms + 2);
    assert_eq!(next_deadline(&pool, NOW), Some(NOW + 2));
    // ...unless the pool drains.
    pool.draining = true;
    assert_eq!(next_deadline(&pool, NOW), Some(NOW + 5));
    // A pre-warm's end; one without an end sets no deadline.
    pool.prewarm = Some((2, NOW + 1));
    assert_eq!(next_deadline(&pool, NOW), Some(NOW + 1));
    pool.prewarm = Some((2, Millis::MAX));
    assert_eq!(next_deadline(&pool, NOW), Some(NOW + 5));
    // Deadlines already past are not ahead; the stopped one's retention is what is left.
    assert_eq!(
        next_deadline(&pool, NOW + p.idle_timeout_ms),
        Some(NOW - 1_000 + p.retention_ms)
    );
    // A pool of busy sandboxes has nothing on a clock.
    let busy = self::pool("b", 0, 1, vec![sb("x", SandboxState::Busy, NOW, None)]);
    assert_eq!(next_deadline(&busy, NOW), None);
}

#[test]
fn apply_moves_each_sandbox_to_its_steps_result_and_skips_a_step_the_table_refuses() {
    let snap = one(pool(
        "t",
        0,
        0,
        vec![
            sb("r", SandboxState::Ready, NOW, Some(NOW)),
            sb("s", SandboxState::Suspended, NOW, None),
            sb("b", SandboxState::Busy, NOW, None),
        ],
    ));
    let t = || "t".to_string();
    let steps = vec![
        Step::Suspend {
            tenant: t(),
            sandbox: "r".into(),
        },
        Step::Resume {
            tenant: t(),
            sandbox: "s".into(),
        },
        // Not allowed from busy: skipped.
        Step::Stop {
            tenant: t(),
            sandbox: "b".into(),
        },
        Step::Create { tenant: t() },
    ];
    let next = apply(
        &snap,
        &Plan {
            pools: vec![],
            steps,
        },
        NOW + 1,
        fresh_ids(),
    );
    let state = |id: &str| {
        next.pools[0]
            .sandboxes
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.state)
    };
    assert_eq!(state("r"), Some(SandboxState::Suspended));
    assert_eq!(state("s"), Some(SandboxState::Booting));
    assert_eq!(state("b"), Some(SandboxState::Busy));
    assert_eq!(state("new-1"), Some(SandboxState::Booting));
    // Destroy applies to a suspended (r) and a booting (s) sandbox and removes them; not to a
    // busy one (b).
    let d = |id: &str| Step::Destroy {
        tenant: t(),
        sandbox: id.into(),
    };
    let destroy = Plan {
        pools: vec![],
        steps: vec![d("r"), d("s"), d("b")],
    };
    let after = apply(&next, &destroy, NOW + 2, fresh_ids());
    let ids: Vec<_> = after.pools[0]
        .sandboxes
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(ids, ["b", "new-1"]);
}
