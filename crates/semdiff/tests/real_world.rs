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
