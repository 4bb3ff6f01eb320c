//! Property tests: self-equality, ignore options and multiset arrays, and the compact `Doc`
//! giving exactly the result the `Value` form gives.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use shoal_semdiff::{Doc, Options, diff, diff_docs};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z~/]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z~/]{1,4}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn opts(v: Value) -> Options {
    Options::from_value(&v).unwrap()
}

/// A candidate made from `doc` by a few seeded edits, so the pair has changes at every depth.
fn mutate(doc: &Value, seed: u64) -> Value {
    fn walk(v: &Value, s: &mut u64) -> Value {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        let roll = *s % 16;
        match v {
            Value::Array(items) => {
                let mut out: Vec<Value> = items.iter().map(|x| walk(x, s)).collect();
                if roll == 0 && out.len() > 1 {
                    out.swap(0, 1);
                } else if roll == 1 {
                    out.push(json!("new"));
                } else if roll == 2 && !out.is_empty() {
                    out.remove(0);
                }
                Value::Array(out)
            }
            Value::Object(m) => {
                let mut out: Map<String, Value> =
                    m.iter().map(|(k, x)| (k.clone(), walk(x, s))).collect();
                if roll == 3 {
                    out.insert("added".into(), json!(1));
                } else if roll == 4
                    && let Some(k) = out.keys().next().cloned()
                {
                    out.remove(&k);
                }
                Value::Object(out)
            }
            Value::Number(n) if roll < 3 => json!(n.as_f64().unwrap_or(0.0) * 1.001 + 0.5),
            Value::String(t) if roll < 3 => json!(format!("{t}x")),
            other if roll == 5 => json!([other.clone()]),
            other => other.clone(),
        }
    }
    let mut s = seed | 1;
    walk(doc, &mut s)
}

proptest! {
    #[test]
    fn compact_doc_diffs_exactly_like_value(doc in arb_json(), seed in any::<u64>()) {
        let other = mutate(&doc, seed);
        let (da, db) = (Doc::from_value(&doc), Doc::from_value(&other));
        prop_assert_eq!(da.to_value(), doc.clone());
        // Parsed from text too: numbers are kept as written and read back exactly (serde_json's
        // own parser, without `float_roundtrip`, may read a float a last digit off).
        let text = other.to_string();
        let reparsed = other.clone();
        let parsed = Doc::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(parsed.to_value(), reparsed.clone());
        for o in [
            Options::default(),
            opts(json!({"unordered_arrays": true})),
            opts(json!({"array_keys": {"": "a"}, "ignore_keys": ["b"]})),
            opts(json!({"float_abs_tol": 0.6, "normalize": [{"pattern": "x+$", "replace": ""}]})),
            opts(json!({"ignore_paths": ["/*/a", "/**/c"], "max_nodes": 20})),
        ] {
            prop_assert_eq!(diff_docs(&da, &db, &o).unwrap(), diff(&doc, &other, &o).unwrap());
            prop_assert_eq!(diff_docs(&da, &parsed, &o).unwrap(), diff(&doc, &reparsed, &o).unwrap());
        }
    }

    #[test]
    fn self_diff_is_equal(doc in arb_json()) {
        for o in [
            Options::default(),
            opts(json!({"unordered_arrays": true})),
            opts(json!({"float_rel_tol": 0.01, "normalize": [{"pattern": "[0-9]", "replace": "#"}]})),
        ] {
            let r = diff(&doc, &doc, &o).unwrap();
            prop_assert!(r.equal, "{:?}", r.changes);
        }
    }

    #[test]
    fn changes_confined_to_ignored_parts_are_equal(doc in arb_json(), noise in arb_json(), noise2 in arb_json()) {
        let mut a = json!({"data": doc.clone(), "meta": noise, "items": [{"id": 1, "v": 1}]});
        let mut b = json!({"data": doc, "meta": noise2.clone(), "items": [{"id": 2, "v": 1}]});
        a["items"][0]["stamp"] = noise2.clone();
        b["items"][0]["stamp"] = json!("other");
        let o = opts(json!({"ignore_paths": ["/meta/**", "/items/*/id"], "ignore_keys": ["stamp"]}));
        let r = diff(&a, &b, &o).unwrap();
        prop_assert!(r.equal, "{:?}", r.changes);
    }

    #[test]
    fn reordered_multiset_is_equal(items in prop::collection::vec(arb_json(), 0..12), seed in any::<u64>()) {
        let mut shuffled = items.clone();
        // a deterministic Fisher-Yates shuffle from the seed
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let o = opts(json!({"unordered_arrays": ["/xs"]}));
        let r = diff(&json!({"xs": items}), &json!({"xs": shuffled}), &o).unwrap();
        prop_assert!(r.equal, "{:?}", r.changes);
    }

    #[test]
    fn a_real_change_is_found(doc in arb_json(), v in any::<i32>()) {
        let a = json!({"d": doc.clone(), "v": v});
        let b = json!({"d": doc, "v": i64::from(v) + 1});
        let r = diff(&a, &b, &Options::default()).unwrap();
        prop_assert_eq!(r.changes.len(), 1);
        prop_assert_eq!(r.changes[0].path.as_str(), "/v");
    }
}
