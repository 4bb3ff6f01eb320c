//! Unit tests of every op and option of the JSON mode, through the public API.

use serde_json::{Value, json};
use shoal_semdiff::{Op, Options, diff, run_spec};

fn opts(v: Value) -> Options {
    Options::from_value(&v).expect("valid options")
}

fn ops(a: Value, b: Value, o: &Options) -> Vec<(String, String)> {
    diff(&a, &b, o)
        .unwrap()
        .changes
        .into_iter()
        .map(|c| (c.op.as_str().to_string(), c.path))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn equal_documents() {
    let r = diff(
        &json!({"a": [1, {"b": null}]}),
        &json!({"a": [1, {"b": null}]}),
        &Options::default(),
    )
    .unwrap();
    assert!(r.equal);
    assert!(r.changes.is_empty());
}

#[test]
fn changed_leaf_at_deepest_path() {
    let r = diff(
        &json!({"a": {"b": [1, 2, 3]}}),
        &json!({"a": {"b": [1, 5, 3]}}),
        &Options::default(),
    )
    .unwrap();
    assert!(!r.equal);
    assert_eq!(r.changes.len(), 1);
    let c = &r.changes[0];
    assert_eq!((c.op, c.path.as_str()), (Op::Changed, "/a/b/1"));
    assert_eq!(c.before.as_ref().map(|v| v.get()), Some("2"));
    assert_eq!(c.after.as_ref().map(|v| v.get()), Some("5"));
}

#[test]
fn added_and_removed_keys() {
    let got = ops(
        json!({"a": 1, "b": 2}),
        json!({"a": 1, "c": 3}),
        &Options::default(),
    );
    assert_eq!(got, pairs(&[("removed", "/b"), ("added", "/c")]));
    let r = diff(&json!({"a": 1}), &json!({}), &Options::default()).unwrap();
    assert_eq!(r.changes[0].before.as_ref().map(|v| v.get()), Some("1"));
    assert!(r.changes[0].after.is_none());
}

#[test]
fn type_changed() {
    let got = ops(json!({"a": 1}), json!({"a": "1"}), &Options::default());
    assert_eq!(got, pairs(&[("type_changed", "/a")]));
    let got = ops(json!({"a": {}}), json!({"a": []}), &Options::default());
    assert_eq!(got, pairs(&[("type_changed", "/a")]));
}

#[test]
fn integers_and_floats_compare_numerically() {
    assert!(
        diff(&json!(1), &json!(1.0), &Options::default())
            .unwrap()
            .equal
    );
    assert!(
        !diff(&json!(1), &json!(2), &Options::default())
            .unwrap()
            .equal
    );
}

#[test]
fn array_insert_and_delete() {
    let got = ops(
        json!([1, 2, 3, 4]),
        json!([1, 2, 9, 3, 4]),
        &Options::default(),
    );
    assert_eq!(got, pairs(&[("added", "/2")]));
    let got = ops(json!([1, 2, 3, 4]), json!([1, 3, 4]), &Options::default());
    assert_eq!(got, pairs(&[("removed", "/1")]));
}

#[test]
fn moved_array_element() {
    let r = diff(
        &json!([{"n": "a"}, {"n": "b"}, {"n": "c"}, {"n": "d"}]),
        &json!([{"n": "b"}, {"n": "c"}, {"n": "d"}, {"n": "a"}]),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(r.changes.len(), 1);
    let c = &r.changes[0];
    assert_eq!(c.op, Op::Moved);
    assert_eq!(c.path, "/3");
    assert_eq!(c.from.as_deref(), Some("/0"));
}

#[test]
fn an_element_left_where_it_was_is_not_moved() {
    // Reversed: one element can stay; it is the one still at its own index.
    let r = diff(&json!([1, 2, 3]), &json!([3, 2, 1]), &Options::default()).unwrap();
    let moved: Vec<(&str, Option<&str>)> = r
        .changes
        .iter()
        .map(|c| {
            assert_eq!(c.op, Op::Moved);
            (c.path.as_str(), c.from.as_deref())
        })
        .collect();
    assert_eq!(moved, vec![("/2", Some("/0")), ("/0", Some("/2"))]);
    // A swap around a fixed middle, inside a longer array.
    let r = diff(
        &json!(["a", "b", "c", "d", "e"]),
        &json!(["a", "d", "c", "b", "e"]),
        &Options::default(),
    )
    .unwrap();
    let mut paths: Vec<&str> = r.changes.iter().map(|c| c.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, vec!["/1", "/3"], "{:?}", r.changes);
}

#[test]
fn changed_element_inside_array_of_objects() {
    let got = ops(
        json!({"items": [{"id": 1, "v": "x"}, {"id": 2, "v": "y"}, {"id": 3, "v": "z"}]}),
        json!({"items": [{"id": 1, "v": "x"}, {"id": 2, "v": "Y"}, {"id": 3, "v": "z"}]}),
        &Options::default(),
    );
    assert_eq!(got, pairs(&[("changed", "/items/1/v")]));
}

#[test]
fn pointer_escaping_in_paths() {
    let got = ops(
        json!({"a/b": {"c~d": 1}}),
        json!({"a/b": {"c~d": 2}}),
        &Options::default(),
    );
    assert_eq!(got, pairs(&[("changed", "/a~1b/c~0d")]));
}

#[test]
fn ignore_paths_with_wildcards() {
    let o = opts(json!({"ignore_paths": ["/runs/*/id", "/meta/**"]}));
    let a =
        json!({"runs": [{"id": 1, "x": 1}, {"id": 2, "x": 2}], "meta": {"t": 1, "deep": {"z": 1}}});
    let b = json!({"runs": [{"id": 7, "x": 1}, {"id": 8, "x": 2}], "meta": {"t": 2, "deep": {"z": 3}, "new": 1}});
    assert!(diff(&a, &b, &o).unwrap().equal);
    let c = json!({"runs": [{"id": 7, "x": 1}, {"id": 8, "x": 3}], "meta": {}});
    assert_eq!(ops(a, c, &o), pairs(&[("changed", "/runs/1/x")]));
}

#[test]
fn ignore_keys_at_any_depth() {
    let o = opts(json!({"ignore_keys": ["id", "timestamp"]}));
    let a = json!({"id": 1, "x": {"timestamp": "t1", "y": [{"id": 3, "z": 1}]}});
    let b = json!({"id": 2, "x": {"timestamp": "t2", "y": [{"id": 4, "z": 1}]}});
    assert!(diff(&a, &b, &o).unwrap().equal);
    let b2 = json!({"x": {"y": [{"z": 1}]}});
    assert!(
        diff(&a, &b2, &o).unwrap().equal,
        "ignored keys may also be absent"
    );
}

#[test]
fn unordered_arrays_everywhere_and_at_paths() {
    let a = json!({"items": [1, 2, 3, 2], "order": [1, 2]});
    let b = json!({"items": [2, 3, 2, 1], "order": [2, 1]});
    let all = opts(json!({"unordered_arrays": true}));
    assert!(diff(&a, &b, &all).unwrap().equal);
    let some = opts(json!({"unordered_arrays": ["/items"]}));
    let got = ops(a.clone(), b.clone(), &some);
    assert!(got.iter().all(|(_, p)| p.starts_with("/order")), "{got:?}");
    assert!(!got.is_empty());
    // multiset: counts matter
    let got = ops(json!([1, 2, 2]), json!([2, 1, 1]), &all);
    assert_eq!(got, pairs(&[("changed", "/2")]));
    // objects are paired by similarity so the change lands deep
    let got = ops(
        json!([{"k": "a", "v": 1}, {"k": "b", "v": 2}]),
        json!([{"k": "b", "v": 3}, {"k": "a", "v": 1}]),
        &all,
    );
    assert_eq!(got, pairs(&[("changed", "/1/v")]));
    let wild = opts(json!({"unordered_arrays": ["/runs/*/tags"]}));
    assert!(
        diff(
            &json!({"runs": [{"tags": ["a", "b"]}]}),
            &json!({"runs": [{"tags": ["b", "a"]}]}),
            &wild
        )
        .unwrap()
        .equal
    );
    assert!(!diff(&json!([]), &json!([1]), &all).unwrap().equal);
}

#[test]
fn array_keys_match_by_field() {
    let o = opts(json!({"array_keys": {"/items": "name"}}));
    let a = json!({"items": [{"name": "a", "v": 1}, {"name": "b", "v": 2}, {"name": "c", "v": 3}]});
    let b =
        json!({"items": [{"name": "b", "v": 2}, {"name": "c", "v": 30}, {"name": "d", "v": 4}]});
    let got = ops(a, b, &o);
    assert_eq!(
        got,
        pairs(&[
            ("changed", "/items/2/v"),
            ("removed", "/items/0"),
            ("added", "/items/2")
        ])
    );
    // reordering by key is a move; with unordered_arrays it is nothing
    let a = json!({"items": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
    let b = json!({"items": [{"name": "c"}, {"name": "a"}, {"name": "b"}]});
    assert_eq!(
        ops(a.clone(), b.clone(), &o),
        pairs(&[("moved", "/items/0")])
    );
    let o2 = opts(json!({"array_keys": {"/items": "name"}, "unordered_arrays": ["/items"]}));
    assert!(diff(&a, &b, &o2).unwrap().equal);
}

#[test]
fn float_tolerances() {
    let abs = opts(json!({"float_abs_tol": 1e-6}));
    assert!(
        diff(&json!({"x": 1.0}), &json!({"x": 1.0000001}), &abs)
            .unwrap()
            .equal
    );
    assert!(
        !diff(&json!({"x": 1.0}), &json!({"x": 1.001}), &abs)
            .unwrap()
            .equal
    );
    let rel = opts(json!({"float_rel_tol": 0.01}));
    assert!(
        diff(&json!([1000.0]), &json!([1009.0]), &rel)
            .unwrap()
            .equal
    );
    assert!(
        !diff(&json!([1000.0]), &json!([1011.0]), &rel)
            .unwrap()
            .equal
    );
    let either =
        opts(json!({"float_abs_tol": 0.5, "float_rel_tol": 0.001, "unordered_arrays": true}));
    assert!(
        diff(&json!([0.1, 1000.0]), &json!([1000.9, 0.4]), &either)
            .unwrap()
            .equal
    );
}

#[test]
fn normalize_rewrites_strings() {
    let o = opts(json!({"normalize": [
        {"pattern": "\\d{4}-\\d{2}-\\d{2}T[0-9:.]+Z", "replace": "<ts>"},
        {"pattern": "req-[0-9a-f]+", "replace": "req-*"}
    ]}));
    let a = json!({"log": "at 2024-01-01T10:00:00Z handled req-abc", "n": 1});
    let b = json!({"log": "at 2025-02-03T11:11:11.5Z handled req-f00", "n": 1});
    assert!(diff(&a, &b, &o).unwrap().equal);
    let c = json!({"log": "at 2025-02-03T11:11:11.5Z failed req-f00", "n": 1});
    let r = diff(&a, &c, &o).unwrap();
    assert_eq!(r.changes.len(), 1);
    assert_eq!(
        r.changes[0].before.as_ref().map(|v| v.to_value()),
        Some(json!("at 2024-01-01T10:00:00Z handled req-abc")),
        "reports original text"
    );
}

#[test]
fn unknown_options_are_rejected_clearly() {
    let e = Options::from_value(&json!({"ignore_path": ["/x"]}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `ignore_path`"), "{e}");
    let e = Options::from_value(&json!({"unordered_arrays": 3}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("true, false or a list"), "{e}");
    let e = diff(
        &json!(1),
        &json!(1),
        &opts(json!({"normalize": [{"pattern": "(", "replace": ""}]})),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("normalize pattern"), "{e}");
    let e = diff(&json!(1), &json!(1), &opts(json!({"ignore_paths": ["x"]})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be a JSON Pointer"), "{e}");
    let e = diff(&json!(1), &json!(1), &opts(json!({"float_abs_tol": -1.0})))
        .unwrap_err()
        .to_string();
    assert!(e.contains("float_abs_tol"), "{e}");
}

#[test]
fn run_spec_shape_and_errors() {
    let run = |spec: &str| -> serde_json::Value {
        serde_json::from_str(run_spec(spec).unwrap().get()).unwrap()
    };
    let out = run(&json!({"baseline": {"a": 1}, "candidate": {"a": 2, "b": true}}).to_string());
    assert_eq!(
        out,
        json!({"equal": false, "changes": [
            {"op": "changed", "path": "/a", "before": 1, "after": 2},
            {"op": "added", "path": "/b", "after": true}
        ]})
    );
    let out =
        run(&json!({"baseline": [1], "candidate": [1], "options": {"mode": "json"}}).to_string());
    assert_eq!(out, json!({"equal": true, "changes": []}));
    let e = run_spec(&json!({"baseline": 1, "candidate": 1, "extra": 1}).to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `extra`"), "{e}");
    let e = run_spec(&json!({"baseline": 1}).to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("candidate"), "{e}");
    let e =
        run_spec(&json!({"baseline": 1, "candidate": 1, "options": {"mode": "xml"}}).to_string())
            .unwrap_err()
            .to_string();
    assert!(e.contains("invalid options"), "{e}");
    let e = run_spec(&json!([1]).to_string()).unwrap_err().to_string();
    assert!(e.contains("an object"), "{e}");
    let e = run_spec("{\"baseline\": {\"a\": ").unwrap_err().to_string();
    assert!(
        e.contains("line 1"),
        "a truncated spec is named with its position: {e}"
    );
}

#[test]
fn max_changes_truncates() {
    let a: Vec<i32> = (0..100).collect();
    let b: Vec<i32> = (0..100).map(|x| x + 1000).collect();
    let o = opts(json!({"max_changes": 10}));
    let r = diff(&json!(a), &json!(b), &o).unwrap();
    assert!(r.truncated);
    assert!(!r.equal);
    assert_eq!(r.changes.len(), 10);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["truncated"], json!(true));
}

#[test]
fn max_pairwise_degrades_instead_of_quadratic_work() {
    let a: Vec<Value> = (0..300).map(|i| json!({"k": i, "v": 0})).collect();
    let b: Vec<Value> = (0..300).map(|i| json!({"k": i, "v": 1})).collect();
    let o = opts(json!({"unordered_arrays": true, "max_pairwise": 1000}));
    let r = diff(&json!(a), &json!(b), &o).unwrap();
    assert!(
        r.degraded.as_deref().unwrap().contains("max_pairwise"),
        "{:?}",
        r.degraded
    );
    assert!(!r.equal);
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["degraded"].is_string());
}

#[test]
fn max_nodes_degrades_to_coarse_comparison() {
    let a = json!({"a": {"b": {"c": 1}}, "z": {"y": {"x": 1}}});
    let b = json!({"a": {"b": {"c": 2}}, "z": {"y": {"x": 2}}});
    let o = opts(json!({"max_nodes": 3}));
    let r = diff(&a, &b, &o).unwrap();
    assert!(r.degraded.is_some());
    assert!(!r.equal);
    assert!(r.changes.iter().any(|c| c.path == "/z"), "{:?}", r.changes);
}

#[test]
fn root_changes() {
    let r = diff(&json!(1), &json!(2), &Options::default()).unwrap();
    assert_eq!(r.changes[0].path, "");
    let o = opts(json!({"ignore_paths": ["/**"]}));
    assert!(diff(&json!(1), &json!([2]), &o).unwrap().equal);
}
