//! Trace mode on recorded OpenTelemetry (OTLP JSON) and Jaeger exports, and the CLI.

use std::path::PathBuf;

use serde_json::{Value, json};
use shoal_semdiff::{Options, cli, diff};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn trace_opts(extra: Value) -> Options {
    let mut o = json!({"mode": "trace"});
    o.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    Options::from_value(&o).unwrap()
}

#[test]
fn rerun_with_new_ids_and_times_is_equal() {
    let r = diff(
        &load("otlp_checkout_baseline.json"),
        &load("otlp_checkout_rerun.json"),
        &trace_opts(json!({})),
    )
    .unwrap();
    assert!(r.equal, "{:#?}", r.changes);
}

#[test]
fn otlp_regression_is_reported_by_span_identity() {
    let r = diff(
        &load("otlp_checkout_baseline.json"),
        &load("otlp_checkout_candidate.json"),
        &trace_opts(json!({"duration_rel_tol": 0.2})),
    )
    .unwrap();
    let got: Vec<(String, String)> = r
        .changes
        .iter()
        .map(|c| (c.op.as_str().to_string(), c.path.clone()))
        .collect();
    let has = |op: &str, path: &str| got.iter().any(|(o, p)| o == op && p == path);
    let root = "/spans/POST ~1checkout";
    assert!(
        has(
            "changed",
            &format!("{root}/attributes/http.response.status_code")
        ),
        "{got:#?}"
    );
    assert!(has("changed", &format!("{root}/status/code")), "{got:#?}");
    assert!(has("added", &format!("{root}/status/message")), "{got:#?}");
    assert!(
        has(
            "changed",
            &format!("{root}/GET ~1inventory~1reserve/attributes/http.response.status_code")
        ),
        "{got:#?}"
    );
    assert!(
        has(
            "added",
            &format!("{root}/GET ~1inventory~1reserve/events/exception")
        ),
        "{got:#?}"
    );
    assert!(
        has(
            "changed",
            &format!("{root}/GET ~1inventory~1reserve/duration_ms")
        ),
        "{got:#?}"
    );
    assert!(has("added", &format!("{root}/cache.get")), "{got:#?}");
    assert!(
        has("removed", &format!("{root}/payment.charge")),
        "{got:#?}"
    );
    assert!(
        has("moved", &format!("{root}/auth.verify_token")),
        "{got:#?}"
    );
    // repeated names get an occurrence index; their attributes did not change
    assert!(
        !got.iter().any(|(_, p)| p.contains("SELECT shop.orders")),
        "{got:#?}"
    );
    // the nested span under inventory is unchanged (duration within tolerance)
    assert!(
        !got.iter().any(|(_, p)| p.contains("inventory.reserve")),
        "{got:#?}"
    );
}

#[test]
fn ignore_options_apply_to_trace_paths() {
    let o = trace_opts(json!({
        "ignore_paths": ["/spans/**/duration_ms", "/spans/**/events/**", "/spans/**/status/**"],
        "ignore_keys": ["http.response.status_code"],
    }));
    let r = diff(
        &load("otlp_checkout_baseline.json"),
        &load("otlp_checkout_candidate.json"),
        &o,
    )
    .unwrap();
    let ops: Vec<&str> = r.changes.iter().map(|c| c.op.as_str()).collect();
    assert!(
        ops.iter()
            .all(|o| ["added", "removed", "moved"].contains(o)),
        "{:#?}",
        r.changes
    );
}

#[test]
fn jaeger_export() {
    let r = diff(
        &load("jaeger_dispatch_baseline.json"),
        &load("jaeger_dispatch_candidate.json"),
        &trace_opts(json!({})),
    )
    .unwrap();
    let paths: Vec<&str> = r.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "/spans/HTTP GET ~1dispatch/HTTP GET: ~1customer/SQL SELECT/attributes/request",
            "/spans/HTTP GET ~1dispatch/Driver::findNearest/attributes/param.location",
        ]
    );
    let o = trace_opts(
        json!({"normalize": [{"pattern": "^\\d+-\\d+$", "replace": "<req>"}], "ignore_keys": ["param.location"]}),
    );
    assert!(
        diff(
            &load("jaeger_dispatch_baseline.json"),
            &load("jaeger_dispatch_candidate.json"),
            &o
        )
        .unwrap()
        .equal
    );
}

#[test]
fn key_attributes_and_repeated_names() {
    let span = |id: &str, parent: Option<&str>, name: &str, attrs: Value| json!({"span_id": id, "parent_span_id": parent, "name": name, "attributes": attrs});
    let a = json!([
        span("1", None, "root", json!({})),
        span(
            "2",
            Some("1"),
            "query",
            json!({"db.statement": "A", "rows": 1})
        ),
        span(
            "3",
            Some("1"),
            "query",
            json!({"db.statement": "B", "rows": 2})
        ),
    ]);
    let b = json!({"spans": [
        span("x", None, "root", json!({})),
        span("y", Some("x"), "query", json!({"db.statement": "A", "rows": 1})),
        span("z", Some("x"), "query", json!({"db.statement": "B", "rows": 3})),
    ]});
    let r = diff(&a, &b, &trace_opts(json!({}))).unwrap();
    assert_eq!(r.changes.len(), 1);
    assert_eq!(r.changes[0].path, "/spans/root/query[1]/attributes/rows");
    let r = diff(
        &a,
        &b,
        &trace_opts(json!({"trace_key_attributes": ["db.statement"]})),
    )
    .unwrap();
    assert_eq!(
        r.changes[0].path,
        "/spans/root/query{db.statement=B}/attributes/rows"
    );
    // a span literally named like a field keeps an index
    let c = json!([span("1", None, "attributes", json!({"a": 1}))]);
    let d = json!([span("9", None, "attributes", json!({"a": 2}))]);
    let r = diff(&c, &d, &trace_opts(json!({}))).unwrap();
    assert_eq!(r.changes[0].path, "/spans/attributes[0]/attributes/a");
}

#[test]
fn python_console_exporter_shape_and_cycles() {
    // opentelemetry-python ConsoleSpanExporter: context.span_id, parent_id, ISO times.
    let a = json!([
        {"name": "child", "context": {"trace_id": "0x1", "span_id": "0xb"}, "kind": "SpanKind.INTERNAL",
         "parent_id": "0xa", "start_time": "2024-05-01T12:00:00.100000Z", "end_time": "2024-05-01T12:00:00.200000Z",
         "status": {"status_code": "UNSET"}, "attributes": {"k": "v"}, "events": [], "links": []},
        {"name": "root", "context": {"trace_id": "0x1", "span_id": "0xa"}, "kind": "SpanKind.SERVER",
         "parent_id": null, "start_time": "2024-05-01T12:00:00.000000Z", "end_time": "2024-05-01T12:00:01.000000Z",
         "status": {"status_code": "OK"}, "attributes": {}, "events": [], "links": []}
    ]);
    let mut b = a.clone();
    b[0]["end_time"] = json!("2024-05-01T12:00:00.900000Z");
    let r = diff(&a, &b, &trace_opts(json!({}))).unwrap();
    assert_eq!(r.changes.len(), 1, "{:#?}", r.changes);
    assert_eq!(r.changes[0].path, "/spans/root/child/duration_ms");
    assert_eq!(
        r.changes[0].before.as_ref().map(|v| v.to_value()),
        Some(json!(100.0))
    );
    // a parent cycle must not hang
    let cyc = json!([{"span_id": "a", "parent_span_id": "b", "name": "x"}, {"span_id": "b", "parent_span_id": "a", "name": "y"}]);
    assert!(diff(&cyc, &cyc, &trace_opts(json!({}))).unwrap().equal);
}

#[test]
fn not_a_trace_is_a_clear_error() {
    let e = diff(&json!({"hello": 1}), &json!([]), &trace_opts(json!({})))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("baseline") && e.contains("no spans found"),
        "{e}"
    );
}

#[test]
fn cli_exit_codes() {
    let dir = std::env::temp_dir().join(format!("semdiff-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.json");
    let b = dir.join("b.json");
    let o = dir.join("o.json");
    std::fs::write(&a, r#"{"x": 1, "t": "2024"}"#).unwrap();
    std::fs::write(&b, r#"{"x": 2, "t": "2025"}"#).unwrap();
    std::fs::write(&o, r#"{"ignore_keys": ["t"]}"#).unwrap();
    assert_eq!(cli::run(&a, &a, None, cli::Format::Json), 0);
    assert_eq!(cli::run(&a, &b, Some(&o), cli::Format::Text), 1);
    assert_eq!(
        cli::run(&a, &dir.join("missing.json"), None, cli::Format::Json),
        2
    );
    std::fs::write(&o, r#"{"bogus": 1}"#).unwrap();
    assert_eq!(cli::run(&a, &b, Some(&o), cli::Format::Json), 2);
    let r = diff(
        &serde_json::from_str(r#"{"x": 1}"#).unwrap(),
        &serde_json::from_str(r#"{"x": 2, "y": [1]}"#).unwrap(),
        &Options::default(),
    )
    .unwrap();
    let text = cli::render_text(&r);
    assert_eq!(text, "changed      /x: 1 -> 2\nadded        /y: [1]\n");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn very_deep_span_chain_is_bounded() {
    let spans: Vec<Value> = (0..5000)
        .map(|i| json!({"span_id": i.to_string(), "parent_span_id": if i == 0 { Value::Null } else { json!((i - 1).to_string()) }, "name": "step"}))
        .collect();
    let r = diff(&json!(spans), &json!(spans), &trace_opts(json!({}))).unwrap();
    assert!(r.equal);
    assert!(r.degraded.unwrap().contains("deeper"));
}

#[test]
fn a_difference_below_the_span_depth_limit_is_not_equal() {
    let chain = |last: &str| -> Value {
        let spans: Vec<Value> = (0..300)
            .map(|i| {
                let name = if i == 299 { last } else { "step" };
                json!({"span_id": i.to_string(), "parent_span_id": if i == 0 { Value::Null } else { json!((i - 1).to_string()) }, "name": name})
            })
            .collect();
        json!(spans)
    };
    let r = diff(&chain("step"), &chain("other"), &trace_opts(json!({}))).unwrap();
    assert!(!r.equal, "{r:?}");
    assert!(r.degraded.unwrap().contains("deeper"));
}
