//! Unit and property tests of intervals and bucketing.

use super::*;
use proptest::prelude::*;

fn ts(s: &str) -> Millis {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn run(id: &str, at: Millis) -> LedgerEntry {
    LedgerEntry {
        sandbox_id: id.into(),
        tenant: "t".into(),
        at,
        kind: LedgerKind::Running {
            cpus_milli: 2000,
            memory_mb: 2048,
        },
        note: None,
    }
}

fn stop(id: &str, at: Millis) -> LedgerEntry {
    LedgerEntry {
        sandbox_id: id.into(),
        tenant: "t".into(),
        at,
        kind: LedgerKind::Stopped,
        note: None,
    }
}

#[test]
fn an_interval_across_an_hour_is_split_exactly() {
    let from = ts("2026-01-01T00:00:00Z");
    let ledger = [
        run("a", ts("2026-01-01T00:59:30Z")),
        stop("a", ts("2026-01-01T01:00:45Z")),
    ];
    let ivs = intervals(&ledger, from + 86_400_000);
    let b = bucketize(&ivs, from, from + 2 * 3_600_000, Granularity::Hour);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].usage.sandbox_ms, 30_000);
    assert_eq!(b[1].usage.sandbox_ms, 45_000);
    assert_eq!(b[1].usage.vcpu_seconds(), 90.0);
    assert_eq!(b[1].usage.gib_seconds(), 90.0);
}

#[test]
fn repeats_are_ignored_and_open_intervals_close_at_until() {
    let ledger = [
        run("a", 1000),
        run("a", 2000),
        stop("a", 5000),
        stop("a", 9000),
        run("b", 7000),
    ];
    let ivs = intervals(&ledger, 10_000);
    assert_eq!(
        ivs.iter()
            .map(|i| (i.sandbox_id.as_str(), i.start, i.end))
            .collect::<Vec<_>>(),
        [("a", 1000, 5000), ("b", 7000, 10_000)]
    );
}

#[test]
fn month_buckets_follow_the_calendar() {
    let from = ts("2026-01-15T00:00:00Z");
    let to = ts("2026-03-10T00:00:00Z");
    let b = bucketize(&[], from, to, Granularity::Month);
    let starts: Vec<_> = b.iter().map(|b| b.start).collect();
    assert_eq!(
        starts,
        [from, ts("2026-02-01T00:00:00Z"), ts("2026-03-01T00:00:00Z")]
    );
    assert_eq!(b[1].end - b[1].start, 28 * 86_400_000);
    assert_eq!(
        month_of(ts("2026-12-31T23:59:59Z")),
        (ts("2026-12-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
    );
}

#[test]
fn usage_event_ids_are_stable() {
    let b = Bucket {
        start: 0,
        end: 3_600_000,
        usage: Usage::default(),
    };
    let e1 = usage_event("shoal", "t", Granularity::Hour, &b);
    let e2 = usage_event("shoal", "t", Granularity::Hour, &b);
    assert_eq!(e1["id"], e2["id"]);
    assert_ne!(
        e1["id"],
        usage_event("shoal", "u", Granularity::Hour, &b)["id"]
    );
}

fn arb_ledger() -> impl Strategy<Value = Vec<LedgerEntry>> {
    // Times span about three months from a year's end so hour, day, month and year boundaries are
    // all crossed.
    let base = 1_798_675_200_000i64; // 2026-12-31T00:00:00Z
    prop::collection::vec(
        (
            0..4usize,
            any::<bool>(),
            0..(90 * 86_400_000i64),
            1..4000u64,
            1..9000u64,
        ),
        0..60,
    )
    .prop_map(move |raw| {
        let mut v: Vec<LedgerEntry> = raw
            .into_iter()
            .map(|(sb, is_run, off, c, m)| LedgerEntry {
                sandbox_id: format!("s{sb}"),
                tenant: "t".into(),
                at: base - 40 * 86_400_000 + off,
                kind: if is_run {
                    LedgerKind::Running {
                        cpus_milli: c,
                        memory_mb: m,
                    }
                } else {
                    LedgerKind::Stopped
                },
                note: None,
            })
            .collect();
        v.sort_by_key(|e| e.at);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Whatever the history and the granularity, the buckets add up to the total.
    #[test]
    fn buckets_add_up_to_the_lifetime_total(ledger in arb_ledger(), g in prop::sample::select(vec![Granularity::Hour, Granularity::Day, Granularity::Month]), cut in 0..(30 * 86_400_000i64)) {
        let until = 1_798_675_200_000i64 + 60 * 86_400_000;
        let ivs = intervals(&ledger, until);
        let from = 1_798_675_200_000i64 - 45 * 86_400_000 + cut;
        let buckets = bucketize(&ivs, from, until, g);
        let mut sum = Usage::default();
        for b in &buckets {
            prop_assert!(b.start < b.end);
            sum.add(&b.usage);
        }
        prop_assert_eq!(sum, total(&ivs, from, until));
        // Contiguous and covering.
        prop_assert_eq!(buckets.first().map(|b| b.start), Some(from));
        prop_assert_eq!(buckets.last().map(|b| b.end), Some(until));
        for w in buckets.windows(2) {
            prop_assert_eq!(w[0].end, w[1].start);
        }
        // Recomputing gives the same numbers.
        prop_assert_eq!(bucketize(&intervals(&ledger, until), from, until, g), buckets);
    }
}
