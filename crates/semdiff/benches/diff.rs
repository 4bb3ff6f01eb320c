//! Criterion benchmark: diffing two ~10 MB JSON documents, parsed and from text, as
//! `serde_json::Value`s and as compact `Doc`s (the form `shoal-agent semdiff` reads files into);
//! and one leaf changed at depth 50 of a 100,000-node tree (`semdiff_deep`).

use criterion::{Criterion, criterion_group, criterion_main};
use shoal_semdiff::{Doc, Options, diff, diff_docs};

#[path = "support/generator.rs"]
mod generator;

fn bench(c: &mut Criterion) {
    let a = generator::baseline(10 << 20);
    let b = generator::candidate(&a, 300);
    let (ta, tb) = (a.to_string(), b.to_string());
    let opts = Options::default();
    let mut g = c.benchmark_group("semdiff_10mb");
    g.sample_size(10);
    g.bench_function("diff_parsed", |bench| {
        bench.iter(|| diff(&a, &b, &opts).unwrap())
    });
    g.bench_function("parse_and_diff", |bench| {
        bench.iter(|| {
            let a: serde_json::Value = serde_json::from_str(&ta).unwrap();
            let b: serde_json::Value = serde_json::from_str(&tb).unwrap();
            diff(&a, &b, &opts).unwrap()
        })
    });
    let (da, db) = (Doc::from_value(&a), Doc::from_value(&b));
    g.bench_function("doc_diff_parsed", |bench| {
        bench.iter(|| diff_docs(&da, &db, &opts).unwrap())
    });
    g.bench_function("doc_parse_and_diff", |bench| {
        bench.iter(|| {
            let a = Doc::parse(ta.as_bytes()).unwrap();
            let b = Doc::parse(tb.as_bytes()).unwrap();
            diff_docs(&a, &b, &opts).unwrap()
        })
    });
    let unordered = Options::from_value(&serde_json::json!({
        "unordered_arrays": true,
        "ignore_keys": ["started_at"],
        "float_rel_tol": 1e-9,
    }))
    .unwrap();
    g.bench_function("diff_parsed_unordered_tolerant", |bench| {
        bench.iter(|| diff(&a, &b, &unordered).unwrap())
    });
    g.finish();
}

/// A tree of about `nodes` values whose spine `{"name","children":[...]}` is `depth` levels
/// deep, with siblings at every level, ending in `{"name":"leaf","v":leaf}`.
fn deep_tree(depth: usize, nodes: usize, leaf: u32) -> String {
    let siblings = nodes / depth / 3;
    let mut s = String::new();
    for level in 0..depth {
        s.push_str(r#"{"name":"n","children":["#);
        for i in 0..siblings / 2 {
            s.push_str(&format!(r#"{{"name":"s{level}-{i}","v":{i}}},"#));
        }
    }
    s.push_str(&format!(r#"{{"name":"leaf","v":{leaf}}}"#));
    for level in (0..depth).rev() {
        for i in siblings / 2..siblings {
            s.push_str(&format!(r#",{{"name":"s{level}-{i}","v":{i}}}"#));
        }
        s.push_str("]}");
    }
    s
}

fn bench_deep(c: &mut Criterion) {
    let (ta, tb) = (deep_tree(50, 100_000, 1), deep_tree(50, 100_000, 2));
    let (da, db) = (
        Doc::parse(ta.as_bytes()).unwrap(),
        Doc::parse(tb.as_bytes()).unwrap(),
    );
    assert!(da.node_count() >= 100_000, "{}", da.node_count());
    let opts = Options::default();
    let r = diff_docs(&da, &db, &opts).unwrap();
    assert_eq!(r.changes.len(), 1);
    assert!(r.degraded.is_none());
    let mut g = c.benchmark_group("semdiff_deep");
    g.sample_size(20);
    g.bench_function("depth50_100k_nodes_doc_diff", |bench| {
        bench.iter(|| diff_docs(&da, &db, &opts).unwrap())
    });
    g.bench_function("depth50_100k_nodes_parse_and_diff", |bench| {
        bench.iter(|| {
            let a = Doc::parse(ta.as_bytes()).unwrap();
            let b = Doc::parse(tb.as_bytes()).unwrap();
            diff_docs(&a, &b, &opts).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_deep);
criterion_main!(benches);
