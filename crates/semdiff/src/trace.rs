//! Trace mode: turns recorded runs (OpenTelemetry-style span exports) into span trees and
//! diffs them by what each span is — its name, its parent chain and optional key attributes —
//! never by span ids or timestamps.
//!
//! Pointer scheme: `/spans/<root>/<child>/.../<field>`, where each span segment is its
//! identity (the name, then `{attr=value}` for each key attribute it has) followed by `[k]`
//! (0-based occurrence among siblings of the same identity) when either side has more than
//! one such sibling or the name collides with a field name. Fields are `attributes/<key>`,
//! `events/<event name>[k]/attributes/<key>`, `kind`, `status/code`, `status/message` and
//! `duration_ms`.

use std::collections::HashMap;

use serde_json::{Map, Number, Value, json};

use crate::json::{Differ, stay_flags};
use crate::pointer::{Path, Seg};
use crate::{Op, SemdiffError};

/// Field names that a span segment must not be confused with.
const RESERVED: [&str; 5] = ["attributes", "events", "kind", "status", "duration_ms"];

/// One span, normalised.
#[derive(Debug)]
pub(crate) struct Span {
    name: String,
    identity: String,
    /// `{"attributes": {...}, "events": {...}, "kind"?, "status"?}`: compared as JSON.
    body: Value,
    duration_ms: Option<f64>,
    children: Vec<usize>,
}

/// A span forest.
#[derive(Debug)]
pub(crate) struct Trace {
    spans: Vec<Span>,
    roots: Vec<usize>,
}

impl Trace {
    pub fn len(&self) -> usize {
        self.spans.len()
    }
}

fn collect<'a>(v: &'a Value, out: &mut Vec<&'a Map<String, Value>>) -> bool {
    match v {
        Value::Array(items) => {
            let mut any = items.is_empty();
            for it in items {
                any |= collect(it, out);
            }
            any
        }
        Value::Object(m) => {
            for key in [
                "resourceSpans",
                "resource_spans",
                "batches",
                "scopeSpans",
                "scope_spans",
                "instrumentationLibrarySpans",
                "data",
            ] {
                if let Some(Value::Array(xs)) = m.get(key) {
                    for x in xs {
                        collect(x, out);
                    }
                    return true;
                }
            }
            if let Some(Value::Array(xs)) = m.get("spans") {
                out.extend(xs.iter().filter_map(Value::as_object));
                return true;
            }
            if is_span(m) {
                out.push(m);
                return true;
            }
            false
        }
        _ => false,
    }
}

fn is_span(m: &Map<String, Value>) -> bool {
    (m.contains_key("name") || m.contains_key("operationName"))
        && ["span_id", "spanId", "spanID", "id", "context"]
            .iter()
            .any(|k| m.contains_key(*k))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn first<'a>(m: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| m.get(*k).filter(|v| !v.is_null()))
}

fn span_id(m: &Map<String, Value>) -> Option<String> {
    first(m, &["span_id", "spanId", "spanID", "id"])
        .and_then(scalar_text)
        .or_else(|| {
            let ctx = m.get("context")?.as_object()?;
            first(ctx, &["span_id", "spanId", "spanID"]).and_then(scalar_text)
        })
}

fn parent_id(m: &Map<String, Value>) -> Option<String> {
    if let Some(p) = first(
        m,
        &[
            "parent_span_id",
            "parentSpanId",
            "parentSpanID",
            "parent_id",
            "parentId",
        ],
    ) {
        return scalar_text(p);
    }
    // Jaeger: references [{"refType": "CHILD_OF", "spanID": ...}].
    m.get("references")?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find_map(|r| {
            r.get("spanID")
                .or_else(|| r.get("spanId"))
                .and_then(scalar_text)
        })
}

/// Converts an OTLP `AnyValue` (`{"stringValue": ...}` etc.) to plain JSON.
fn any_value(v: &Value) -> Value {
    let Some(m) = v.as_object() else {
        return v.clone();
    };
    if let Some(s) = m.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = m.get("intValue") {
        return match i {
            Value::String(s) => s
                .parse::<i64>()
                .map(|n| Value::Number(n.into()))
                .unwrap_or_else(|_| i.clone()),
            other => other.clone(),
        };
    }
    if let Some(d) = m.get("doubleValue") {
        return match d {
            Value::String(s) => s
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .unwrap_or_else(|| d.clone()),
            other => other.clone(),
        };
    }
    if let Some(b) = m.get("boolValue") {
        return b.clone();
    }
    if let Some(b) = m.get("bytesValue") {
        return b.clone();
    }
    if let Some(a) = m.get("arrayValue") {
        let items = a.get("values").and_then(Value::as_array);
        return Value::Array(
            items
                .map(|xs| xs.iter().map(any_value).collect())
                .unwrap_or_default(),
        );
    }
    if let Some(kv) = m.get("kvlistValue") {
        return Value::Object(attributes(kv.get("values").unwrap_or(&Value::Null)));
    }
    v.clone()
}

/// Attributes as an object: either already one, or a list of `{key, value}`.
fn attributes(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_object)
            .filter_map(|kv| {
                let key = kv.get("key")?.as_str()?.to_string();
                Some((key, kv.get("value").map(any_value).unwrap_or(Value::Null)))
            })
            .collect(),
        _ => Map::new(),
    }
}

fn norm_enum(v: &Value, numeric: &[&str]) -> Value {
    match v {
        Value::String(s) => {
            let mut t = s.as_str();
            for p in ["SPAN_KIND_", "SpanKind.", "STATUS_CODE_", "StatusCode."] {
                t = t.strip_prefix(p).unwrap_or(t);
            }
            Value::String(t.to_ascii_lowercase())
        }
        Value::Number(n) => n
            .as_u64()
            .and_then(|i| numeric.get(i as usize))
            .map(|s| Value::String((*s).to_string()))
            .unwrap_or_else(|| v.clone()),
        other => other.clone(),
    }
}

/// Parses RFC 3339 text (`2024-05-01T12:00:00.123456Z`, offsets allowed) to Unix nanoseconds.
pub(crate) fn parse_rfc3339_ns(s: &str) -> Option<f64> {
    let b = s.trim().as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b' ' || b[10] == b't')
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut frac = 0.0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = std::str::from_utf8(&b[start..i]).ok()?;
        frac = format!("0.{digits}").parse::<f64>().ok()?;
    }
    let offset_s = match b.get(i) {
        None | Some(b'Z') | Some(b'z') => 0,
        Some(b'+') | Some(b'-') => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some((secs as f64 + frac) * 1e9)
}

/// A timestamp in nanoseconds; bare numbers are scaled by magnitude unless `unit_ns` is given.
fn time_ns(v: &Value, unit_ns: Option<f64>) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => match s.parse::<f64>() {
            Ok(n) => n,
            Err(_) => return parse_rfc3339_ns(s),
        },
        _ => return None,
    };
    let unit = unit_ns.unwrap_or(if n >= 1e17 {
        1.0
    } else if n >= 1e14 {
        1e3
    } else if n >= 1e11 {
        1e6
    } else {
        1e9
    });
    Some(n * unit)
}

struct Raw {
    id: Option<String>,
    parent: Option<String>,
    span: Span,
    start: Option<f64>,
}

fn parse_span(m: &Map<String, Value>, key_attrs: &[String]) -> Raw {
    let name = first(m, &["name", "operationName"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let attrs = attributes(first(m, &["attributes", "tags"]).unwrap_or(&Value::Null));
    let mut events = Map::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let raw_events: Vec<(String, Map<String, Value>)> = first(m, &["events", "logs"])
        .and_then(Value::as_array)
        .map(|evs| {
            evs.iter()
                .filter_map(Value::as_object)
                .map(|e| {
                    let mut ea =
                        attributes(first(e, &["attributes", "fields"]).unwrap_or(&Value::Null));
                    let name = e
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| ea.get("event").and_then(Value::as_str).map(str::to_string))
                        .unwrap_or_default();
                    ea.remove("event");
                    (name, ea)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut totals: HashMap<&str, usize> = HashMap::new();
    for (n, _) in &raw_events {
        *totals.entry(n.as_str()).or_default() += 1;
    }
    for (n, ea) in &raw_events {
        let k = seen.entry(n.clone()).or_default();
        let key = if totals[n.as_str()] > 1 {
            format!("{n}[{k}]")
        } else {
            n.clone()
        };
        *k += 1;
        events.insert(key, json!({ "attributes": ea }));
    }
    let mut body = Map::new();
    body.insert("attributes".into(), Value::Object(attrs.clone()));
    body.insert("events".into(), Value::Object(events));
    if let Some(k) = m.get("kind").filter(|v| !v.is_null()) {
        body.insert(
            "kind".into(),
            norm_enum(
                k,
                &[
                    "unspecified",
                    "internal",
                    "server",
                    "client",
                    "producer",
                    "consumer",
                ],
            ),
        );
    }
    if let Some(Value::Object(st)) = m.get("status") {
        let mut s = Map::new();
        if let Some(c) = first(st, &["code", "status_code", "statusCode"]) {
            s.insert("code".into(), norm_enum(c, &["unset", "ok", "error"]));
        }
        if let Some(msg) = first(st, &["message", "description"]).filter(|v| v.as_str() != Some(""))
        {
            s.insert("message".into(), msg.clone());
        }
        if !s.is_empty() {
            body.insert("status".into(), Value::Object(s));
        }
    }
    let start = first(m, &["startTimeUnixNano", "start_time_unix_nano"])
        .and_then(|v| time_ns(v, Some(1.0)))
        .or_else(|| {
            first(m, &["start_time", "startTime", "timestamp", "start"])
                .and_then(|v| time_ns(v, None))
        });
    let end = first(m, &["endTimeUnixNano", "end_time_unix_nano"])
        .and_then(|v| time_ns(v, Some(1.0)))
        .or_else(|| first(m, &["end_time", "endTime", "end"]).and_then(|v| time_ns(v, None)));
    let duration_ms = if let Some(d) = m.get("duration_ms").and_then(Value::as_f64) {
        Some(d)
    } else if let Some(d) = m.get("duration_ns").and_then(Value::as_f64) {
        Some(d / 1e6)
    } else if let Some(d) = m.get("duration").and_then(Value::as_f64) {
        Some(d / 1e3) // Jaeger and Zipkin: microseconds
    } else {
        match (start, end) {
            (Some(s), Some(e)) => Some((e - s) / 1e6),
            _ => None,
        }
    };
    let mut identity = name.clone();
    for k in key_attrs {
        if let Some(v) = attrs.get(k) {
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            identity.push_str(&format!("{{{k}={text}}}"));
        }
    }
    Raw {
        id: span_id(m),
        parent: parent_id(m),
        span: Span {
            name,
            identity,
            body: Value::Object(body),
            duration_ms,
            children: Vec::new(),
        },
        start,
    }
}

/// Builds the span forest of one side of the comparison.
pub(crate) fn parse_trace(
    doc: &Value,
    side: &'static str,
    key_attrs: &[String],
) -> Result<Trace, SemdiffError> {
    let mut objs = Vec::new();
    if !collect(doc, &mut objs) {
        return Err(SemdiffError::Trace {
            side,
            message: "no spans found: expected an OTLP export ({\"resourceSpans\": ...}), a list of spans, \
                      {\"spans\": [...]} or a Jaeger export ({\"data\": [{\"spans\": ...}]})"
                .into(),
        });
    }
    let raws: Vec<Raw> = objs.into_iter().map(|m| parse_span(m, key_attrs)).collect();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raws.iter().enumerate() {
        if let Some(id) = &r.id {
            by_id.entry(id.as_str()).or_insert(i);
        }
    }
    let n = raws.len();
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut has_parent = vec![false; n];
    for (i, r) in raws.iter().enumerate() {
        if let Some(p) = r.parent.as_deref().and_then(|p| by_id.get(p)).copied()
            && p != i
        {
            kids[p].push(i);
            has_parent[i] = true;
        }
    }
    // Keep tree edges only (a malformed export may have cycles): walk from the roots, then
    // promote any span not reached to a root.
    let mut visited = vec![false; n];
    let mut tree_kids: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut roots = Vec::new();
    let starts: Vec<Option<f64>> = raws.iter().map(|r| r.start).collect();
    let candidates: Vec<usize> = (0..n).filter(|&i| !has_parent[i]).chain(0..n).collect();
    for r in candidates {
        if visited[r] {
            continue;
        }
        visited[r] = true;
        roots.push(r);
        let mut stack = vec![r];
        while let Some(p) = stack.pop() {
            for &c in &kids[p] {
                if !visited[c] {
                    visited[c] = true;
                    tree_kids[p].push(c);
                    stack.push(c);
                }
            }
        }
    }
    let order = |list: &mut Vec<usize>| {
        if list.iter().all(|&i| starts[i].is_some()) {
            list.sort_by(|&a, &b| {
                starts[a]
                    .unwrap_or(0.0)
                    .total_cmp(&starts[b].unwrap_or(0.0))
                    .then(a.cmp(&b))
            });
        } else {
            list.sort_unstable();
        }
    };
    order(&mut roots);
    let mut spans: Vec<Span> = raws.into_iter().map(|r| r.span).collect();
    for (i, mut k) in tree_kids.into_iter().enumerate() {
        order(&mut k);
        spans[i].children = k;
    }
    Ok(Trace { spans, roots })
}

fn descendants(t: &Trace, i: usize) -> usize {
    let mut count = 0;
    let mut stack: Vec<usize> = t.spans[i].children.clone();
    while let Some(c) = stack.pop() {
        count += 1;
        stack.extend(&t.spans[c].children);
    }
    count
}

fn summary(t: &Trace, i: usize) -> Value {
    let s = &t.spans[i];
    json!({
        "name": s.name,
        "attributes": s.body.get("attributes").cloned().unwrap_or(Value::Null),
        "descendants": descendants(t, i),
    })
}

/// The pointer segment of the `k`-th sibling with this identity.
fn segment(identity: &str, k: usize, indexed: bool) -> String {
    if indexed || RESERVED.contains(&identity) {
        format!("{identity}[{k}]")
    } else {
        identity.to_string()
    }
}

/// Diffs two span forests into `d`.
pub(crate) fn diff_traces(d: &mut Differ<'_>, a: &Trace, b: &Trace) {
    let mut path: Path<'_> = vec![Seg::Key("spans")];
    diff_siblings(d, a, &a.roots, b, &b.roots, &mut path);
}

/// Span trees deeper than this are not descended further (the recursion stays bounded).
const MAX_SPAN_DEPTH: usize = 256;

/// True when two span forests are identical (same spans in the same order, same bodies and
/// durations), checked without recursion however deep they are.
fn same_forest(ta: &Trace, xs: &[usize], tb: &Trace, ys: &[usize]) -> bool {
    let mut stack = vec![(xs, ys)];
    while let Some((xs, ys)) = stack.pop() {
        if xs.len() != ys.len() {
            return false;
        }
        for (&i, &j) in xs.iter().zip(ys) {
            let (a, b) = (&ta.spans[i], &tb.spans[j]);
            if a.identity != b.identity || a.body != b.body || a.duration_ms != b.duration_ms {
                return false;
            }
            stack.push((&a.children, &b.children));
        }
    }
    true
}

fn occurrences(t: &Trace, list: &[usize]) -> Vec<(usize, usize)> {
    // (index into list, occurrence number of its identity)
    let mut seen: HashMap<&str, usize> = HashMap::new();
    list.iter()
        .enumerate()
        .map(|(pos, &i)| {
            let k = seen.entry(t.spans[i].identity.as_str()).or_default();
            let occ = *k;
            *k += 1;
            (pos, occ)
        })
        .collect()
}

fn diff_siblings<'a>(
    d: &mut Differ<'_>,
    ta: &'a Trace,
    xs: &[usize],
    tb: &'a Trace,
    ys: &[usize],
    path: &mut Path<'a>,
) {
    if d.stopped() {
        return;
    }
    if path.len() > MAX_SPAN_DEPTH && (!xs.is_empty() || !ys.is_empty()) {
        d.degrade(format!(
            "span tree deeper than {MAX_SPAN_DEPTH} levels: deeper spans were not compared"
        ));
        // Below the limit only "identical or not" is known (without recursion); a difference
        // there is not located, but the answer must not be `equal`.
        if !same_forest(ta, xs, tb, ys) {
            d.incomplete = true;
        }
        return;
    }
    let mut count: HashMap<&str, (usize, usize)> = HashMap::new();
    for &i in xs {
        count.entry(ta.spans[i].identity.as_str()).or_default().0 += 1;
    }
    for &j in ys {
        count.entry(tb.spans[j].identity.as_str()).or_default().1 += 1;
    }
    let indexed = |id: &str| count.get(id).is_some_and(|&(p, q)| p.max(q) > 1);
    let mut in_y: HashMap<(&str, usize), usize> = HashMap::new();
    for (pos, occ) in occurrences(tb, ys) {
        in_y.insert((tb.spans[ys[pos]].identity.as_str(), occ), pos);
    }
    let mut matched: Vec<(usize, usize, String)> = Vec::new(); // (pos in xs, pos in ys, segment)
    let mut removed = Vec::new();
    for (pos, occ) in occurrences(ta, xs) {
        let id = ta.spans[xs[pos]].identity.as_str();
        let seg = segment(id, occ, indexed(id));
        match in_y.remove(&(id, occ)) {
            Some(q) => matched.push((pos, q, seg)),
            None => removed.push((pos, seg)),
        }
    }
    let mut added: Vec<(usize, String)> = in_y
        .into_iter()
        .map(|((id, occ), q)| (q, segment(id, occ, indexed(id))))
        .collect();
    added.sort();
    let stay = stay_flags(&matched.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>());
    for (k, (p, q, seg)) in matched.iter().enumerate() {
        if !stay[k] {
            path.push(Seg::Name(seg.clone()));
            d.emit(Op::Moved, path, None, Some(&json!(p)), Some(&json!(q)));
            path.pop();
        }
    }
    for (p, q, seg) in matched {
        if d.stopped() {
            return;
        }
        path.push(Seg::Name(seg));
        if !d.opts.is_ignored(path) {
            compare_span(d, ta, xs[p], tb, ys[q], path);
        }
        path.pop();
    }
    for (p, seg) in removed {
        path.push(Seg::Name(seg));
        d.emit(Op::Removed, path, None, Some(&summary(ta, xs[p])), None);
        path.pop();
    }
    for (q, seg) in added {
        path.push(Seg::Name(seg));
        d.emit(Op::Added, path, None, None, Some(&summary(tb, ys[q])));
        path.pop();
    }
}

fn compare_span<'a>(
    d: &mut Differ<'_>,
    ta: &'a Trace,
    i: usize,
    tb: &'a Trace,
    j: usize,
    path: &mut Path<'a>,
) {
    let (sa, sb) = (&ta.spans[i], &tb.spans[j]);
    d.diff(&sa.body, &sb.body, path);
    if let (Some(x), Some(y)) = (sa.duration_ms, sb.duration_ms)
        && !d.opts.ignore_keys.contains("duration_ms")
    {
        let tol = d
            .opts
            .duration_abs_tol_ms
            .max(d.opts.duration_rel_tol * x.abs().max(y.abs()));
        if (x - y).abs() > tol {
            let round = |v: f64| Number::from_f64((v * 1000.0).round() / 1000.0).map(Value::Number);
            path.push(Seg::Key("duration_ms"));
            d.emit(
                Op::Changed,
                path,
                None,
                round(x).as_ref(),
                round(y).as_ref(),
            );
            path.pop();
        }
    }
    diff_siblings(d, ta, &sa.children, tb, &sb.children, path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339_ns("1970-01-02T00:00:01.5Z"), Some(86_401.5e9));
        assert_eq!(parse_rfc3339_ns("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(
            parse_rfc3339_ns("2000-03-01T00:00:00Z"),
            Some(951_868_800e9)
        );
        assert_eq!(parse_rfc3339_ns("nope"), None);
    }

    #[test]
    fn any_values() {
        assert_eq!(any_value(&json!({"intValue": "200"})), json!(200));
        assert_eq!(any_value(&json!({"stringValue": "x"})), json!("x"));
        assert_eq!(
            any_value(&json!({"arrayValue": {"values": [{"boolValue": true}]}})),
            json!([true])
        );
        assert_eq!(
            any_value(
                &json!({"kvlistValue": {"values": [{"key": "a", "value": {"doubleValue": 1.5}}]}})
            ),
            json!({"a": 1.5})
        );
    }
}
