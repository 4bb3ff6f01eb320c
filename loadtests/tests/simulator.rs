//! The simulator checked against answers known by hand, and one test per policy invariant.

use shoal_fleet::sim::SimLatencies;
use shoal_loadtests::generate::{self, Profile};
use shoal_loadtests::{Policy, SimOptions, Workload, simulate, simulate_detailed};

const DURATION_MS: i64 = 10_000;

/// One tenant, one job at a time: each job starts `gap` after the previous one ended.
/// Returns the workload and, for `fixed:T`, the answer computed by hand.
fn sequential(gaps_s: &[i64], t_s: i64, lat: SimLatencies) -> (Workload, u64, f64) {
    let mut rows = vec![("t".to_string(), 0i64, DURATION_MS)];
    // The first job waits for a create.
    let mut end = lat.create_ms + DURATION_MS;
    let mut cold = 1u64;
    let mut idle_ms = 0i64;
    for &g in gaps_s {
        let arrival = end + g * 1000;
        rows.push(("t".to_string(), arrival, DURATION_MS));
        if g > t_s {
            // Stopped after T idle; the job waits for a start.
            cold += 1;
            idle_ms += t_s * 1000;
            end = arrival + lat.start_ms + DURATION_MS;
        } else {
            idle_ms += g * 1000;
            end = arrival + DURATION_MS;
        }
    }
    // The idle tail: the last sandbox idles T, then is stopped.
    idle_ms += t_s * 1000;
    (Workload::from_rows(rows), cold, idle_ms as f64 / 1000.0)
}

#[test]
fn fixed_timeout_matches_the_hand_computed_answer() {
    let lat = SimLatencies::default();
    // Gaps in seconds; 60 is exactly the timeout and stays warm.
    let gaps = [5, 50, 100, 60, 200, 30, 500, 61, 59, 1_000];
    for t in [30, 60, 120, 600] {
        let (w, cold, idle) = sequential(&gaps, t, lat);
        let (o, _) = simulate(&w, Policy::Fixed(t as f64), &SimOptions::default()).unwrap();
        let by_hand = 1 + gaps.iter().filter(|&&g| g > t).count() as u64;
        assert_eq!(cold, by_hand);
        assert_eq!(o.jobs, gaps.len() as u64 + 1);
        assert_eq!(
            o.cold_starts, cold,
            "fixed:{t}: cold starts are the gaps longer than T, plus the first"
        );
        assert_eq!(
            o.idle_sandbox_seconds, idle,
            "fixed:{t}: idle is min(gap, T) per gap plus the tail T"
        );
        assert_eq!(
            o.sandbox_seconds,
            idle + 10.0 * o.jobs as f64,
            "billed = idle + busy, boot excluded"
        );
        assert_eq!(o.interrupted_jobs, 0);
        // One create, a stop and a start per cold start after the first, the final stop, and
        // the destroy when the stopped sandbox outlives its retention (1 h) after the last job.
        assert_eq!(o.provider_calls, 1 + 2 * (cold - 1) + 1 + 1);
        let wait_p99 = if cold > 1 { 3.0 } else { 0.0 };
        assert_eq!(o.wait_p99_s, wait_p99);
    }
}

fn small(seed: u64) -> Workload {
    let mut p: Profile = generate::profile("saas-mix").unwrap();
    p.tenants = 25;
    p.jobs = 1_500.0;
    p.days = 0.5;
    generate::generate(&p, seed)
}

fn all_policies() -> Vec<Policy> {
    vec![
        Policy::Fixed(60.0),
        Policy::Fixed(600.0),
        Policy::Adaptive(None),
        Policy::Keda,
        Policy::FlyAutoscaler,
    ]
}

#[test]
fn every_policy_finishes_every_job_and_stops_every_sandbox() {
    let w = small(11);
    let busy_s: f64 = w.jobs.iter().map(|j| j.duration_ms as f64 / 1000.0).sum();
    for p in all_policies() {
        // `simulate` fails if a job is left or a sandbox is still running at the end.
        let (o, s) = simulate(&w, p, &SimOptions::default()).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(o.jobs, w.jobs.len() as u64);
        assert!(o.cold_starts <= o.jobs && o.cold_starts > 0, "{p}");
        assert!(o.idle_sandbox_seconds <= o.sandbox_seconds, "{p}");
        assert!(
            o.sandbox_seconds + 1e-6 >= busy_s + o.idle_sandbox_seconds,
            "{p}: every job's run is billed"
        );
        assert!(s.end_s * 1000.0 >= w.span_ms() as f64, "{p}");
    }
}

#[test]
fn shoals_planner_never_stops_a_busy_sandbox_and_bills_exactly_busy_plus_idle() {
    let w = small(12);
    let busy_ms: i64 = w.jobs.iter().map(|j| j.duration_ms).sum();
    for p in [
        Policy::Fixed(30.0),
        Policy::Fixed(1200.0),
        Policy::Adaptive(None),
        Policy::Adaptive(Some(60.0)),
    ] {
        let (o, _) = simulate(&w, p, &SimOptions::default()).unwrap();
        assert_eq!(o.interrupted_jobs, 0, "{p}");
        let billed_ms = (o.sandbox_seconds * 1000.0).round() as i64;
        let idle_ms = (o.idle_sandbox_seconds * 1000.0).round() as i64;
        assert_eq!(billed_ms, busy_ms + idle_ms, "{p}");
    }
}

#[test]
fn a_longer_fixed_timeout_trades_idle_time_for_cold_starts() {
    let (w, _, _) = sequential(
        &[5, 50, 100, 60, 200, 30, 500, 61, 59, 1_000, 300, 900],
        60,
        SimLatencies::default(),
    );
    let mut last: Option<(u64, f64)> = None;
    for t in [0.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0] {
        let (o, _) = simulate(&w, Policy::Fixed(t), &SimOptions::default()).unwrap();
        if let Some((cold, idle)) = last {
            assert!(
                o.cold_starts <= cold && o.idle_sandbox_seconds >= idle,
                "fixed:{t}"
            );
        }
        last = Some((o.cold_starts, o.idle_sandbox_seconds));
    }
}

#[test]
fn adaptive_decides_from_the_past_only() {
    // Two workloads equal up to a point and different after it: every job before the point
    // must fare exactly the same, so nothing after it leaked into the decisions.
    let a = small(13);
    let cut = a.span_ms() / 2;
    let mut b = a.clone();
    b.jobs.retain(|j| j.arrival_ms < cut);
    let kept = b.jobs.len();
    for j in a.jobs.iter().filter(|j| j.arrival_ms >= cut).step_by(3) {
        b.jobs.push(shoal_loadtests::Job {
            arrival_ms: j.arrival_ms + 7_777,
            ..*j
        });
    }
    b.sort();
    let opts = SimOptions::default();
    let (_, _, ra) = simulate_detailed(&a, Policy::Adaptive(None), &opts).unwrap();
    let (_, _, rb) = simulate_detailed(&b, Policy::Adaptive(None), &opts).unwrap();
    // Jobs whose whole life ended before the cut cannot be affected by what comes after.
    let early = a
        .jobs
        .iter()
        .take(kept)
        .filter(|j| j.arrival_ms + j.duration_ms + 60_000 < cut)
        .count();
    assert!(early > 100);
    assert_eq!(ra[..early], rb[..early]);
}

#[test]
fn adaptive_prewarms_a_cron_tenant_after_a_few_runs() {
    // Every 30 minutes, one 20 s job, a second of jitter.
    let rows: Vec<(String, i64, i64)> = (0..40)
        .map(|i| {
            (
                "cron".to_string(),
                i * 1_800_000 + (i * 7 % 3) * 400,
                20_000,
            )
        })
        .collect();
    let w = Workload::from_rows(rows);
    let (a, _, jobs) =
        simulate_detailed(&w, Policy::Adaptive(None), &SimOptions::default()).unwrap();
    let (f, _) = simulate(&w, Policy::Fixed(600.0), &SimOptions::default()).unwrap();
    assert_eq!(
        f.cold_starts, 40,
        "fixed:600 is cold on every run of a 30-minute cron"
    );
    assert!(
        jobs[6..].iter().all(|j| !j.cold),
        "warm once the period is learned: {jobs:?}"
    );
    assert!(
        a.idle_sandbox_seconds < f.idle_sandbox_seconds / 10.0,
        "{} vs {}",
        a.idle_sandbox_seconds,
        f.idle_sandbox_seconds
    );
}

#[test]
fn keda_waits_out_its_cooldown_and_fly_stops_within_a_pass() {
    let w = Workload::from_rows([("t", 0i64, 10_000i64)]);
    let (k, _) = simulate(&w, Policy::Keda, &SimOptions::default()).unwrap();
    assert_eq!(k.cold_starts, 1);
    // Activation waits for a 30 s poll; scale to zero waits 300 s after the last active poll.
    assert!(
        k.wait_p50_s > 3.0 && k.wait_p50_s <= 33.0,
        "{}",
        k.wait_p50_s
    );
    assert!(
        k.idle_sandbox_seconds >= 270.0 && k.idle_sandbox_seconds <= 360.0,
        "{}",
        k.idle_sandbox_seconds
    );
    let (f, _) = simulate(&w, Policy::FlyAutoscaler, &SimOptions::default()).unwrap();
    assert_eq!(f.cold_starts, 1);
    assert!(
        f.wait_p50_s > 3.0 && f.wait_p50_s <= 18.0,
        "{}",
        f.wait_p50_s
    );
    assert!(f.idle_sandbox_seconds <= 15.0, "{}", f.idle_sandbox_seconds);
}

#[test]
fn the_peers_are_not_busy_aware() {
    let w = small(14);
    for p in [Policy::Keda, Policy::FlyAutoscaler] {
        let (o, _) = simulate(&w, p, &SimOptions::default()).unwrap();
        assert!(
            o.interrupted_jobs > 0,
            "{p} stops busy sandboxes when it picks by id or age"
        );
    }
}

#[test]
fn scripted_failures_are_retried_and_runs_are_reproducible() {
    let w = small(15);
    let opts = SimOptions {
        failure_rate: 0.3,
        seed: 9,
        ..SimOptions::default()
    };
    for p in all_policies() {
        let a = simulate(&w, p, &opts).unwrap_or_else(|e| panic!("{p}: {e}"));
        let b = simulate(&w, p, &opts).unwrap();
        assert_eq!(a.0, b.0, "{p}");
        let clean = simulate(&w, p, &SimOptions::default()).unwrap();
        assert!(
            a.0.provider_calls > clean.0.provider_calls,
            "{p}: failed boots cost calls"
        );
    }
}

#[test]
fn max_sandboxes_caps_each_tenant() {
    let rows: Vec<(String, i64, i64)> = (0..20).map(|i| ("t".to_string(), i, 60_000)).collect();
    let w = Workload::from_rows(rows);
    let opts = SimOptions {
        max_sandboxes: Some(3),
        ..SimOptions::default()
    };
    let (o, s) = simulate(&w, Policy::Fixed(60.0), &opts).unwrap();
    assert_eq!(s.sandboxes_created, 3);
    assert_eq!(o.cold_starts, 3);
    assert!(o.wait_p99_s >= 360.0);
}

/// Knowing the future: on the shipped cron-heavy workload's cron tenants (every job `due`), the
/// planner told when each job arrives has at least 90% fewer cold starts than `adaptive`, at no
/// more idle time.
#[test]
fn due_aware_prewarming_beats_adaptive_on_cron_tenants() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/workloads/ci-cron.csv"
    ))
    .unwrap();
    let mut w = Workload::parse_csv(&text).unwrap();
    let cron: Vec<bool> = w.tenants.iter().map(|t| t.starts_with("cron-")).collect();
    w.jobs.retain(|j| cron[j.tenant as usize]);
    assert!(w.jobs.iter().all(|j| j.due), "cron rows are marked due");
    let opts = SimOptions::default();
    let (base, _) = simulate(&w, Policy::Adaptive(None), &opts).unwrap();
    let due = SimOptions {
        due_aware: true,
        ..SimOptions::default()
    };
    let (known, _) = simulate(&w, Policy::Adaptive(None), &due).unwrap();
    assert!(
        known.cold_starts * 10 <= base.cold_starts,
        "{} vs {}",
        known.cold_starts,
        base.cold_starts
    );
    assert!(known.idle_sandbox_seconds <= base.idle_sandbox_seconds);
}

/// Burst scale-out: one tenant, quiet for one to five hours (irregularly), then a burst of five
/// two-minute jobs at 0, 10, 20, 30 and 40 s. Without it every job of every burst waits for its
/// own boot (the quiet spells are too long and irregular to keep anything warm at a worth of
/// 3,000 s). With it, once three bursts are on record, the four extra levels are woken on the
/// first job, each one boot lead (5 s) before the time it was reached before: only the first
/// job of each burst is cold, and each woken sandbox idles 2 s (woken 5 s early, a 3 s create).
#[test]
fn burst_scale_out_wakes_a_bursts_sandboxes_on_its_first_job() {
    let mut rows = Vec::new();
    let mut start = 0i64;
    let bursts = 20i64;
    for b in 0..bursts {
        for k in 0..5 {
            rows.push(("burst-1".to_string(), start + k * 10_000, 120_000));
        }
        start += 3_600_000 + (b * 7_919 % 5) * 3_600_000 + b * 1_000;
    }
    let w = Workload::from_rows(rows);
    let off = SimOptions {
        adaptive: shoal_planner::adaptive::AdaptiveConfig {
            burst_horizon_ms: 0,
            ..Default::default()
        },
        ..SimOptions::default()
    };
    let (without, _) = simulate(&w, Policy::Adaptive(Some(3_000.0)), &off).unwrap();
    let (with, _) = simulate(&w, Policy::Adaptive(Some(3_000.0)), &SimOptions::default()).unwrap();
    assert_eq!(without.cold_starts, 5 * bursts as u64);
    // Bursts 1-3: five cold each; from the fourth on: one.
    assert_eq!(with.cold_starts, 3 * 5 + (bursts as u64 - 3));
    assert_eq!(with.interrupted_jobs, 0);
    // The woken sandboxes wait at least 2 s each (woken one lead, 5 s, before their job, with a
    // 3 s create) and the rest of the idle time moves only as the jobs' ends move (they start
    // 3 s sooner): within one lead per woken level.
    let extra = with.idle_sandbox_seconds - without.idle_sandbox_seconds;
    assert!(
        (4.0 * 2.0 * 17.0..=4.0 * 5.0 * 17.0).contains(&extra),
        "{extra}"
    );
}

/// The shared warm pool by hand: one tenant, two one-second jobs at 10 s and 1,000 s, `fixed:60`,
/// one blank (created at 0, ready at 3 s). The first job claims the blank and starts at once
/// (no cold start); a new blank is created at 10 s (ready at 13 s). The tenant's sandbox stops
/// at 71 s; at 1,000 s the planner would start it, and the tenant claims the second blank
/// instead. The third blank (ready at 1,003 s) idles until the run ends at 1,061 s, when the
/// tenant's sandbox has stopped. Blank idle, the fleet's: 7 + 987 + 58 s; the tenant's: 60 + 60 s.
/// With blanks kept stopped, each claim waits for a start (1.5 s) and is a cold start, at no
/// blank idle.
#[test]
fn a_warm_pool_turns_a_tenants_boots_into_claims() {
    let w = Workload::from_rows([("t", 10_000, 1_000), ("t", 1_000_000, 1_000)]);
    let ready = SimOptions {
        warm_pool: 1,
        ..SimOptions::default()
    };
    let (o, s) = simulate(&w, Policy::Fixed(60.0), &ready).unwrap();
    assert_eq!(o.cold_starts, 0);
    assert_eq!(o.warm_pool_claims, 2);
    assert_eq!(s.sandboxes_created, 3, "every sandbox is a blank");
    assert_eq!(o.warm_pool_idle_seconds, 7.0 + 987.0 + 58.0);
    assert_eq!(o.idle_sandbox_seconds, 7.0 + 987.0 + 58.0 + 120.0);
    assert_eq!(s.idle_ms_by_tenant, [120_000]);

    let stopped = SimOptions {
        blank_state: shoal_loadtests::engine::BlankState::Stopped,
        ..ready
    };
    let (o, _) = simulate(&w, Policy::Fixed(60.0), &stopped).unwrap();
    assert_eq!(o.warm_pool_claims, 2);
    assert_eq!(o.cold_starts, 2);
    assert_eq!(o.wait_p99_s, 1.5, "a claim waits for a start, not a create");
    assert_eq!(o.warm_pool_idle_seconds, 0.0);
}

/// The bar for the warm pool, on the shipped long-tail workload: with four blanks, rare
/// tenants' cold starts fall by at least half, under `fixed:600` and under `adaptive`, and the
/// blanks' idle time (billed to the fleet) is below what `fixed:600` alone spends idling on the
/// rare tenants. No job is interrupted, and the fleet's idle total includes the blanks'.
#[test]
fn a_warm_pool_of_four_halves_rare_tenants_cold_starts_for_less_than_fixed_600_spends() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/workloads/agents-long-tail.csv"
    ))
    .unwrap();
    let w = Workload::parse_csv(&text).unwrap();
    let rare = |opts: &SimOptions, p: Policy| {
        let (o, s, jobs) = simulate_detailed(&w, p, opts).unwrap();
        let cold: Vec<bool> = jobs.iter().map(|j| j.cold).collect();
        let kinds = shoal_loadtests::report::by_kind(&w, &cold, &s.idle_ms_by_tenant);
        let k = kinds.into_iter().find(|k| k.kind == "rare").unwrap();
        assert_eq!(o.interrupted_jobs, 0);
        let tenants_idle: i64 = s.idle_ms_by_tenant.iter().sum();
        assert!(
            (o.idle_sandbox_seconds - tenants_idle as f64 / 1000.0 - o.warm_pool_idle_seconds)
                .abs()
                < 1e-6
        );
        (o, k)
    };
    let none = SimOptions::default();
    let four = SimOptions {
        warm_pool: 4,
        ..SimOptions::default()
    };
    let (_, fixed600) = rare(&none, Policy::Fixed(600.0));
    for p in [Policy::Fixed(600.0), Policy::Adaptive(None)] {
        let (_, base) = rare(&none, p);
        let (o, with) = rare(&four, p);
        assert!(
            with.cold_starts * 2 <= base.cold_starts,
            "{p}: rare cold starts {} with the pool vs {} without",
            with.cold_starts,
            base.cold_starts
        );
        assert!(o.warm_pool_claims > 0);
        assert!(
            o.warm_pool_idle_seconds < fixed600.idle_sandbox_seconds,
            "{p}: blanks idled {} s, fixed:600 idles {} s on rare tenants",
            o.warm_pool_idle_seconds,
            fixed600.idle_sandbox_seconds
        );
    }
}
