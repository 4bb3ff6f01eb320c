//! Criterion benchmark: diffing two ~10 MB JSON documents, parsed and from text, as
//! `serde_json::Value`s and as compact `Doc`s (the form `shoal-agent semdiff` reads files into).

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

criterion_group!(benches, bench);
criterion_main!(benches);
