//! A result is bounded whatever the input: each `before`/`after` value by `max_value_bytes`, the
//! whole result by `max_result_bytes`; what was cut says so.

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_semdiff::bound::json_len;
use shoal_semdiff::{DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_VALUE_BYTES, Options, diff, run_spec};

/// The case: a 31 MiB spec whose two 15 MiB strings differ gives a result of a few KiB,
/// not one that repeats both.
#[test]
fn two_huge_differing_strings_give_a_small_marked_result() {
    let a = "a".repeat(15 * 1024 * 1024);
    let b = "b".repeat(15 * 1024 * 1024);
    let spec =
        serde_json::to_string(&json!({"baseline": {"s": a}, "candidate": {"s": b}})).unwrap();
    assert!(spec.len() > 30 * 1024 * 1024);
    let result: Value = serde_json::from_str(run_spec(&spec).unwrap().get()).unwrap();
    let size = json_len(&result);
    assert!(size < 3 * DEFAULT_MAX_VALUE_BYTES as u64, "{size} bytes");
    let c = &result["changes"][0];
    assert_eq!(
        (c["op"].as_str(), c["path"].as_str()),
        (Some("changed"), Some("/s"))
    );
    let before = c["before"].as_str().unwrap();
    assert!(before.len() <= DEFAULT_MAX_VALUE_BYTES && before.starts_with("aaaa"));
    assert_eq!(c["before_truncated"]["bytes"], 15 * 1024 * 1024 + 2);
    assert_eq!(c["after_truncated"]["bytes"], 15 * 1024 * 1024 + 2);
    assert_eq!(result["equal"], false);
}

/// Many small changes stop at `max_result_bytes`, with `truncated`.
#[test]
fn many_changes_stop_at_the_result_budget() {
    let n = 200_000;
    let a: Vec<Value> = (0..n).map(|i| json!(format!("value-{i}"))).collect();
    let b: Vec<Value> = (0..n).map(|i| json!(format!("other-{i}"))).collect();
    let o = Options::from_value(&json!({"max_changes": 1_000_000})).unwrap();
    let r = diff(&Value::Array(a), &Value::Array(b), &o).unwrap();
    assert!(r.truncated && !r.equal);
    let size = json_len(&r);
    assert!(size <= DEFAULT_MAX_RESULT_BYTES as u64, "{size}");
    assert!(
        size > DEFAULT_MAX_RESULT_BYTES as u64 * 9 / 10,
        "{size}: the budget is used"
    );
}

#[test]
fn limits_out_of_range_are_refused() {
    for bad in [
        json!({"max_value_bytes": 0}),
        json!({"max_value_bytes": 1u64 << 40}),
        json!({"max_result_bytes": 10}),
        json!({"max_result_bytes": 1u64 << 40}),
        json!({"normalize": [{"pattern": "(", "replace": ""}]}),
        json!({"float_abs_tol": -1.0}),
        json!({"ignore_paths": ["no-slash"]}),
    ] {
        let o = Options::from_value(&bad).unwrap();
        assert!(o.check().is_err(), "{bad} passed");
    }
    assert!(Options::default().check().is_ok());
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<i32>().prop_map(|n| json!(n)),
        "[a-z\"\\\\\u{1}é]{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Whatever the documents and limits: every value fits its limit, the result fits
    /// its budget, and the changes are the unbounded diff's first changes, at the same paths.
    #[test]
    fn results_respect_their_bounds(
        a in arb_json(),
        b in arb_json(),
        value_bytes in 16usize..200,
        result_bytes in 1024usize..4096,
    ) {
        let o = Options::from_value(&json!({"max_value_bytes": value_bytes, "max_result_bytes": result_bytes})).unwrap();
        let r = diff(&a, &b, &o).unwrap();
        prop_assert!(json_len(&r) <= result_bytes as u64);
        let max = shoal_semdiff::MAX_RESULT_BYTES;
        let unbounded = Options::from_value(&json!({"max_value_bytes": max, "max_result_bytes": max})).unwrap();
        let full = diff(&a, &b, &unbounded).unwrap();
        prop_assert!(r.changes.len() <= full.changes.len());
        prop_assert_eq!(r.equal, full.equal);
        for (c, f) in r.changes.iter().zip(&full.changes) {
            prop_assert_eq!((&c.op, &c.path), (&f.op, &f.path));
            for (shown, cut, orig) in [
                (&c.before, c.before_truncated, &f.before),
                (&c.after, c.after_truncated, &f.after),
            ] {
                if let Some(v) = shown {
                    prop_assert!(json_len(v) <= value_bytes as u64);
                    match cut {
                        None => prop_assert_eq!(Some(v), orig.as_ref()),
                        Some(cut) => {
                            prop_assert_eq!(cut.bytes, json_len(orig.as_ref().unwrap()));
                            prop_assert!(v.to_value().is_string());
                        }
                    }
                }
            }
        }
        if r.changes.len() < full.changes.len() {
            prop_assert!(r.truncated);
        }
    }
}
