//! Inputs from issue 19: deep nesting, exact numbers, in-place changes among repeated values,
//! JSON Lines, byte order marks and the text format's root.

use serde_json::{Value, json};
use shoal_semdiff::{Doc, Op, Options, diff, diff_docs};

fn nested(depth: usize, v: u32) -> String {
    let mut s = String::new();
    for _ in 0..depth {
        s.push_str(r#"{"name":"n","children":["#);
    }
    s.push_str(&format!(r#"{{"name":"leaf","v":{v}}}"#));
    for _ in 0..depth {
        s.push_str("]}");
    }
    s
}

fn ops(r: &shoal_semdiff::DiffResult) -> Vec<(Op, String)> {
    r.changes.iter().map(|c| (c.op, c.path.clone())).collect()
}

#[test]
fn a_leaf_fifteen_levels_down_is_one_change_not_degraded() {
    let a: Value = serde_json::from_str(&nested(15, 1)).unwrap();
    let b: Value = serde_json::from_str(&nested(15, 2)).unwrap();
    let r = diff(&a, &b, &Options::default()).unwrap();
    let path = format!("{}/v", "/children/0".repeat(15));
    assert_eq!(ops(&r), vec![(Op::Changed, path)]);
    assert_eq!(r.degraded, None);
    assert!(!r.equal);
}

#[test]
fn pure_nested_arrays_forty_levels_deep() {
    let a = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let b = format!("{}2{}", "[".repeat(40), "]".repeat(40));
    let (a, b) = (
        Doc::parse(a.as_bytes()).unwrap(),
        Doc::parse(b.as_bytes()).unwrap(),
    );
    let r = diff_docs(&a, &b, &Options::default()).unwrap();
    assert_eq!(ops(&r), vec![(Op::Changed, "/0".repeat(40))]);
    assert_eq!(r.degraded, None);
}

#[test]
fn a_leaf_fifteen_levels_down_with_a_tolerance() {
    // With a tolerance every number hashes alike, so hashes cannot tell the sides apart.
    let a: Value = serde_json::from_str(&nested(15, 1)).unwrap();
    let b: Value = serde_json::from_str(&nested(15, 2)).unwrap();
    let o = Options::from_value(&json!({"float_abs_tol": 0.5})).unwrap();
    let r = diff(&a, &b, &o).unwrap();
    assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
    assert_eq!(r.degraded, None);
}

#[test]
fn a_value_replaced_in_place_among_repeats_is_a_change() {
    let r = diff(
        &json!([0, 1, 0, 0]),
        &json!([7, 1, 0, 8]),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        ops(&r),
        vec![(Op::Changed, "/0".into()), (Op::Changed, "/3".into())]
    );
}

#[test]
fn far_apart_edits_that_exchange_values_are_changes_not_moves() {
    let mut a: Vec<Value> = (0..100).map(|i| json!(i % 3 == 0)).collect();
    let mut b = a.clone();
    a[10] = json!(true);
    b[10] = json!(false);
    a[80] = json!(false);
    b[80] = json!(true);
    let r = diff(&json!(a), &json!(b), &Options::default()).unwrap();
    assert_eq!(
        ops(&r),
        vec![(Op::Changed, "/10".into()), (Op::Changed, "/80".into())]
    );
}

/// A deterministic pseudo-random sequence (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A run log of over 10 MB with many repeated small values (the case that used to turn edits
/// into moves): records with ids, timestamps, log messages, repeated status strings, small
/// counters, flags and tags.
fn big_document(rng: &mut Rng) -> Value {
    let statuses = ["ok", "failed", "skipped", "ok", "ok"];
    let messages = [
        "GET /api/v1/orders?page=2 answered 200 after the cache missed and the replica caught up",
        "worker pool resized: 8 busy, 2 idle, queue depth 14, oldest task waiting 1.2 s",
        "retrying upload of chunk to object storage (attempt 2 of 5) after a connection reset",
    ];
    let records: Vec<Value> = (0..36_000)
        .map(|i| {
            json!({
                "id": i,
                "at": format!("2026-12-01T{:02}:{:02}:{:02}.{:03}Z", i / 3600 % 24, i / 60 % 60, i % 60, rng.below(1000)),
                "host": format!("web-{}.eu-west-1.internal.example.com", rng.below(12)),
                "message": messages[rng.below(3) as usize],
                "status": statuses[rng.below(5) as usize],
                "count": rng.below(4),
                "flag": rng.below(2) == 0,
                "score": (rng.below(1000) as f64) / 8.0,
                "tags": (0..rng.below(4)).map(|t| format!("t{}", (t + rng.below(3)) % 3)).collect::<Vec<_>>(),
                "meta": {"owner": format!("team-{}", rng.below(7)), "levels": [rng.below(3), rng.below(3), rng.below(3)]},
            })
        })
        .collect();
    // Long arrays of a few repeated values (a time series, a matrix of small counts).
    let series: Vec<u64> = (0..200_000).map(|_| rng.below(10)).collect();
    let matrix: Vec<Vec<u64>> = (0..2_000)
        .map(|_| (0..40).map(|_| rng.below(5)).collect())
        .collect();
    json!({"version": 3, "records": records, "series": series, "matrix": matrix})
}

/// Every scalar of `v` (its JSON Pointer), in document order.
fn scalar_paths(v: &Value, path: &mut String, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                scalar_paths(e, path, out);
                path.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, e) in m {
                let len = path.len();
                path.push('/');
                path.push_str(k);
                scalar_paths(e, path, out);
                path.truncate(len);
            }
        }
        _ => out.push(path.clone()),
    }
}

#[test]
fn three_hundred_scattered_scalar_edits_are_three_hundred_changes() {
    let mut rng = Rng(19);
    let a = big_document(&mut rng);
    let mut paths = Vec::new();
    scalar_paths(&a, &mut String::new(), &mut paths);
    let mut b = a.clone();
    let mut edited = std::collections::BTreeSet::new();
    while edited.len() < 300 {
        let p = &paths[rng.below(paths.len() as u64) as usize];
        if !edited.insert(p.clone()) {
            continue;
        }
        // Edits to values that occur elsewhere in the document too.
        let slot = b.pointer_mut(p).unwrap();
        *slot = match slot.take() {
            Value::Bool(x) => Value::Bool(!x),
            Value::String(s) if s == "ok" => json!("failed"),
            Value::String(s) => json!(format!("{s}x")),
            Value::Number(n) if n.is_u64() => json!((n.as_u64().unwrap() + 1) % 4),
            Value::Number(n) => json!(n.as_f64().unwrap() + 0.125),
            other => other,
        };
    }
    let text_a = serde_json::to_vec(&a).unwrap();
    let text_b = serde_json::to_vec(&b).unwrap();
    assert!(text_a.len() > 10_000_000, "{} bytes", text_a.len());
    let (da, db) = (Doc::parse(&text_a).unwrap(), Doc::parse(&text_b).unwrap());
    let r = diff_docs(&da, &db, &Options::default()).unwrap();
    assert_eq!(r.degraded, None);
    let got: std::collections::BTreeSet<String> = r
        .changes
        .iter()
        .map(|c| {
            assert_eq!(c.op, Op::Changed, "{c:?}");
            c.path.clone()
        })
        .collect();
    assert_eq!(r.changes.len(), 300);
    assert_eq!(got, edited);
}

fn parsed(a: &str, b: &str) -> shoal_semdiff::DiffResult {
    let (a, b) = (
        Doc::parse(a.as_bytes()).unwrap(),
        Doc::parse(b.as_bytes()).unwrap(),
    );
    diff_docs(&a, &b, &Options::default()).unwrap()
}

#[test]
fn numbers_are_compared_exactly_as_written() {
    for (a, b) in [
        ("12345678901234567890123", "12345678901234567890124"),
        ("18446744073709551616", "18446744073709551615"),
        ("1.4405737774410001", "1.440573777441"),
        ("[-59.879722999999956]", "[-59.87972299999995]"),
    ] {
        let r = parsed(a, b);
        assert_eq!(r.changes.len(), 1, "{a} vs {b}: {r:?}");
        assert!(!r.equal);
    }
    // The same value written differently is equal.
    for (a, b) in [
        ("1.50", "1.5"),
        ("15e-1", "1.5"),
        ("-0", "0"),
        ("1E2", "100"),
    ] {
        assert!(parsed(a, b).equal, "{a} vs {b}");
    }
    // Through a job spec too.
    let v: serde_json::Value = serde_json::from_str(
        shoal_semdiff::run_spec(
            r#"{"baseline": {"n": 18446744073709551616}, "candidate": {"n": 18446744073709551615}}"#,
        )
        .unwrap()
        .get(),
    )
    .unwrap();
    assert_eq!(v["equal"], json!(false));
    // With a tolerance numbers are compared as floats.
    let o = Options::from_value(&json!({"float_abs_tol": 0.001})).unwrap();
    let (a, b) = (
        Doc::parse(b"1.4405737774410001").unwrap(),
        Doc::parse(b"1.440573777441").unwrap(),
    );
    assert!(diff_docs(&a, &b, &o).unwrap().equal);
}

/// Issue 19 item 2, printing: `before`/`after` carry a number exactly as written, however many
/// digits it has and whatever its spelling, in the result, its JSON text (what a job records)
/// and the text format; a `serde_json::Value` would print the nearest double instead.
#[test]
fn before_and_after_print_numbers_exactly_as_written() {
    for (a, b) in [
        ("12345678901234567890123", "12345678901234567890124"),
        ("18446744073709551616", "18446744073709551615"),
        ("1.4405737774410001", "1.440573777441"),
        ("-59.879722999999956", "-59.87972299999995"),
        ("1.50", "2.50"),
        ("1e2", "2E3"),
        ("-0", "1"),
    ] {
        let r = parsed(a, b);
        let c = &r.changes[0];
        assert_eq!(
            (
                c.before.as_ref().map(|v| v.get()),
                c.after.as_ref().map(|v| v.get())
            ),
            (Some(a), Some(b)),
            "{r:?}"
        );
        assert_eq!(
            shoal_semdiff::cli::render_text(&r),
            format!("changed      (root): {a} -> {b}\n")
        );
        // Inside a job's result text, nested in a changed array element and an added object.
        let spec = format!(
            r#"{{"baseline": {{"x": [{a}, 0]}}, "candidate": {{"x": [{b}, 0], "y": {{"n": [{b}]}}}}}}"#
        );
        let text = shoal_semdiff::run_spec(&spec).unwrap();
        assert_eq!(
            text.get(),
            format!(
                r#"{{"equal":false,"changes":[{{"op":"changed","path":"/x/0","before":{a},"after":{b}}},{{"op":"added","path":"/y","after":{{"n":[{b}]}}}}]}}"#
            )
        );
    }
    // A large value is still cut to max_value_bytes, its size counted from the exact text.
    let big: Vec<&str> = std::iter::repeat_n("12345678901234567890123", 400).collect();
    let spec = format!(
        r#"{{"baseline": {{"a": 1}}, "candidate": {{"a": [{}]}}, "options": {{"max_value_bytes": 64}}}}"#,
        big.join(",")
    );
    let v: serde_json::Value =
        serde_json::from_str(shoal_semdiff::run_spec(&spec).unwrap().get()).unwrap();
    let c = &v["changes"][0];
    assert_eq!(c["after_truncated"]["bytes"], 400 * 24 + 1);
    assert!(
        c["after"]
            .as_str()
            .unwrap()
            .starts_with("[12345678901234567890123,")
    );
    assert!(c["after"].as_str().unwrap().len() <= 62, "{c}");
}

#[test]
fn a_byte_order_mark_is_accepted_and_one_json_line_is_an_array() {
    let dir = std::env::temp_dir().join(format!("semdiff-rw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bom = dir.join("bom.json");
    std::fs::write(&bom, b"\xef\xbb\xbf{\"a\": 1}").unwrap();
    let d = shoal_semdiff::cli::read_doc(&bom).unwrap();
    assert_eq!(d.to_value(), json!({"a": 1}));
    let one = dir.join("one.jsonl");
    std::fs::write(&one, "{\"a\": 1}\n").unwrap();
    let d = shoal_semdiff::cli::read_doc(&one).unwrap();
    assert_eq!(d.to_value(), json!([{"a": 1}]));
    assert_eq!(d.line_count(), 1);
    let bom_lines = dir.join("bom.ndjson");
    std::fs::write(&bom_lines, b"\xef\xbb\xbf{\"a\": 1}\n{\"a\": 2}\n").unwrap();
    let d = shoal_semdiff::cli::read_doc(&bom_lines).unwrap();
    assert_eq!(d.to_value(), json!([{"a": 1}, {"a": 2}]));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_text_format_tells_the_root_from_the_empty_key() {
    let r = diff(&json!(1), &json!(2), &Options::default()).unwrap();
    assert_eq!(
        shoal_semdiff::cli::render_text(&r),
        "changed      (root): 1 -> 2\n"
    );
    let r = diff(&json!({"": 1}), &json!({"": 2}), &Options::default()).unwrap();
    assert_eq!(
        shoal_semdiff::cli::render_text(&r),
        "changed      /: 1 -> 2\n"
    );
}

#[test]
fn a_leaf_fifty_levels_down_in_a_hundred_thousand_nodes_is_one_change() {
    // The shape the bench `semdiff_deep` times: siblings at every level around the spine.
    let tree = |leaf: u32| {
        let mut s = String::new();
        for level in 0..50 {
            s.push_str(r#"{"name":"n","children":["#);
            for i in 0..333 {
                s.push_str(&format!(r#"{{"name":"s{level}-{i}","v":{}}},"#, i % 7));
            }
        }
        s.push_str(&format!(r#"{{"name":"leaf","v":{leaf}}}"#));
        for level in (0..50).rev() {
            for i in 333..666 {
                s.push_str(&format!(r#",{{"name":"s{level}-{i}","v":{}}}"#, i % 7));
            }
            s.push_str("]}");
        }
        s
    };
    let (a, b) = (
        Doc::parse(tree(1).as_bytes()).unwrap(),
        Doc::parse(tree(2).as_bytes()).unwrap(),
    );
    assert!(a.node_count() >= 100_000, "{}", a.node_count());
    let r = diff_docs(&a, &b, &Options::default()).unwrap();
    let path = format!("{}/v", "/children/333".repeat(50));
    assert_eq!(ops(&r), vec![(Op::Changed, path)]);
    assert_eq!(r.degraded, None);
}
