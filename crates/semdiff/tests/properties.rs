//! Property tests: self-equality, ignore options and multiset arrays.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use shoal_semdiff::{Options, diff};

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

proptest! {
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
