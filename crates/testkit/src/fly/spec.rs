//! Checking requests against the Fly Machines OpenAPI spec: the method and path must name an
//! operation, query parameters must be declared with values of their type, required headers must
//! be there, and a JSON body must match the operation's request schema (types, enums, required
//! and unknown fields, through `$ref` and `allOf`).

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The spec could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The spec file is not the OpenAPI document expected.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What does not parse or is missing.
        message: String,
    },
}

/// Where the spec lives: `SHOAL_FLY_SPEC` if set, else `shared/specs/fly-machines-openapi.yaml`
/// in the first ancestor of this crate's directory (or of the current directory) that has it.
pub fn spec_path() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_FLY_SPEC") {
        return PathBuf::from(p);
    }
    let rel = Path::new("shared/specs/fly-machines-openapi.yaml");
    let starts = [
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
        std::env::current_dir().ok(),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let p = dir.join(rel);
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../")
        .join(rel)
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone)]
struct Param {
    schema: Value,
    required: bool,
}

/// One operation of the spec.
#[derive(Debug, Clone)]
pub struct Operation {
    /// The spec's `operationId`.
    pub id: String,
    /// The HTTP method, upper case.
    pub method: String,
    /// The path template (`/apps/{app_name}/machines/{machine_id}`).
    pub template: String,
    segments: Vec<Segment>,
    query: HashMap<String, Param>,
    headers: HashMap<String, Param>,
    body: Option<(Value, bool)>,
}

/// A request matched to its operation.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    /// The operation matched.
    pub op: &'a Operation,
    /// The path's parameters, by name.
    pub path_params: HashMap<String, String>,
    /// The query's pairs, in order.
    pub query: Vec<(String, String)>,
}

/// The loaded spec.
#[derive(Debug, Clone)]
pub struct Spec {
    base_path: String,
    ops: Vec<Operation>,
    schemas: Value,
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

impl Spec {
    /// Reads the OpenAPI document at `path`.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.into(),
            source,
        })?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| SpecError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        Spec::from_doc(&doc).map_err(|message| SpecError::Parse {
            path: path.into(),
            message,
        })
    }

    fn from_doc(doc: &Value) -> Result<Spec, String> {
        let server = doc
            .pointer("/servers/0/url")
            .and_then(Value::as_str)
            .unwrap_or("/v1");
        let base_path = match server.find("://") {
            Some(i) => server[i + 3..]
                .find('/')
                .map(|j| server[i + 3 + j..].to_string())
                .unwrap_or_default(),
            None => server.to_string(),
        };
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or("no paths")?;
        let mut ops = Vec::new();
        for (template, item) in paths {
            let shared_params = item
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                let mut query = HashMap::new();
                let mut headers = HashMap::new();
                let params = shared_params.iter().chain(
                    op.get("parameters")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten(),
                );
                for p in params {
                    let name = p
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let param = Param {
                        schema: p.get("schema").cloned().unwrap_or(Value::Null),
                        required: p.get("required").and_then(Value::as_bool).unwrap_or(false),
                    };
                    match p.get("in").and_then(Value::as_str) {
                        Some("query") => {
                            query.insert(name, param);
                        }
                        Some("header") => {
                            headers.insert(name.to_ascii_lowercase(), param);
                        }
                        _ => {}
                    }
                }
                let body = op.get("requestBody").map(|rb| {
                    let schema = rb
                        .pointer("/content/application~1json/schema")
                        .cloned()
                        .unwrap_or(Value::Null);
                    (
                        schema,
                        rb.get("required").and_then(Value::as_bool).unwrap_or(false),
                    )
                });
                let segments = template
                    .trim_matches('/')
                    .split('/')
                    .map(
                        |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => Segment::Param(name.to_string()),
                            None => Segment::Literal(s.to_string()),
                        },
                    )
                    .collect();
                ops.push(Operation {
                    id: op
                        .get("operationId")
                        .and_then(Value::as_str)
                        .unwrap_or(template)
                        .to_string(),
                    method: m.to_ascii_uppercase(),
                    template: template.clone(),
                    segments,
                    query,
                    headers,
                    body,
                });
            }
        }
        let schemas = doc
            .pointer("/components/schemas")
            .cloned()
            .unwrap_or(Value::Null);
        Ok(Spec {
            base_path,
            ops,
            schemas,
        })
    }

    /// How many operations the spec has.
    pub fn operations(&self) -> usize {
        self.ops.len()
    }

    /// Checks one request; answers the operation it is, or every way it breaks the spec.
    pub fn check<'a>(
        &'a self,
        method: &str,
        path: &str,
        query: Option<&str>,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
    ) -> Result<Matched<'a>, String> {
        let rest = path
            .strip_prefix(self.base_path.as_str())
            .ok_or_else(|| format!("{path} is not under {}", self.base_path))?;
        let parts: Vec<String> = rest
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let mut best: Option<(usize, &Operation, HashMap<String, String>)> = None;
        let mut path_known = false;
        for op in &self.ops {
            if op.segments.len() != parts.len() {
                continue;
            }
            let mut params = HashMap::new();
            let mut literals = 0;
            let fits = op.segments.iter().zip(&parts).all(|(seg, part)| match seg {
                Segment::Literal(l) => {
                    literals += 1;
                    l == part
                }
                Segment::Param(name) => {
                    params.insert(name.clone(), part.clone());
                    !part.is_empty()
                }
            });
            if !fits {
                continue;
            }
            path_known = true;
            if op.method != method {
                continue;
            }
            if best.as_ref().is_none_or(|(l, _, _)| literals > *l) {
                best = Some((literals, op, params));
            }
        }
        let Some((_, op, path_params)) = best else {
            return Err(if path_known {
                format!("{method} is not an operation of {path}")
            } else {
                format!("no operation at {path}")
            });
        };
        let mut problems = Vec::new();
        let pairs: Vec<(String, String)> = query
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &pairs {
            match op.query.get(k) {
                None => problems.push(format!(
                    "query parameter `{k}` is not in the spec for {}",
                    op.id
                )),
                Some(p) => {
                    for v in split_values(&p.schema, v) {
                        if let Err(e) = check_scalar(&p.schema, v) {
                            problems.push(format!("query parameter `{k}`: {e}"));
                        }
                    }
                }
            }
        }
        for (name, p) in &op.query {
            if p.required && !pairs.iter().any(|(k, _)| k == name) {
                problems.push(format!("missing required query parameter `{name}`"));
            }
        }
        for (name, p) in &op.headers {
            if p.required && header(name).is_none() {
                problems.push(format!("missing required header `{name}`"));
            }
        }
        match (&op.body, body.is_empty()) {
            (None, false) => problems.push(format!("{} takes no request body", op.id)),
            (Some((_, true)), true) => problems.push(format!("{} requires a JSON body", op.id)),
            (Some((schema, _)), false) => {
                let ct = header("content-type").unwrap_or_default();
                if !ct.starts_with("application/json") {
                    problems.push(format!("body sent as `{ct}`, not application/json"));
                }
                match serde_json::from_slice::<Value>(body) {
                    Ok(v) => self.validate(schema, &v, "body", &mut problems, 0),
                    Err(e) => problems.push(format!("body is not JSON: {e}")),
                }
            }
            _ => {}
        }
        if problems.is_empty() {
            Ok(Matched {
                op,
                path_params,
                query: pairs,
            })
        } else {
            Err(problems.join("; "))
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut s = schema;
        for _ in 0..16 {
            match s
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                Some(name) => s = self.schemas.get(name).unwrap_or(&Value::Null),
                None => break,
            }
        }
        s
    }

    fn validate(
        &self,
        schema: &Value,
        v: &Value,
        at: &str,
        problems: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 32 {
            return;
        }
        let schema = self.resolve(schema);
        if schema.is_null() {
            return;
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate(s, v, at, problems, depth + 1);
            }
        }
        if v.is_null() {
            if !schema
                .get("nullable")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                problems.push(format!("{at} is null"));
            }
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let props = schema.get("properties").and_then(Value::as_object);
        match ty {
            Some("object") | None if props.is_some() || ty == Some("object") => {
                let Some(obj) = v.as_object() else {
                    problems.push(format!("{at} should be an object"));
                    return;
                };
                for req in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(r) = req.as_str()
                        && !obj.contains_key(r)
                    {
                        problems.push(format!("{at}.{r} is required"));
                    }
                }
                let extra = schema.get("additionalProperties");
                for (k, val) in obj {
                    match props.and_then(|p| p.get(k)) {
                        Some(ps) => {
                            self.validate(ps, val, &format!("{at}.{k}"), problems, depth + 1)
                        }
                        None => match extra {
                            Some(Value::Bool(false)) => {
                                problems.push(format!("{at}.{k} is not allowed"))
                            }
                            Some(s @ Value::Object(_)) => {
                                self.validate(s, val, &format!("{at}.{k}"), problems, depth + 1)
                            }
                            // A schema with declared properties (directly, not only through
                            // allOf) gets no fields it does not declare: a misspelt field would be
                            // silently ignored by Fly.
                            _ if props.is_some() => {
                                problems.push(format!("{at}.{k} is not a field of this schema"))
                            }
                            _ => {}
                        },
                    }
                }
            }
            Some("array") => {
                let Some(items) = v.as_array() else {
                    problems.push(format!("{at} should be an array"));
                    return;
                };
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.validate(
                            item_schema,
                            item,
                            &format!("{at}[{i}]"),
                            problems,
                            depth + 1,
                        );
                    }
                }
            }
            Some(_) => {
                if let Err(e) = check_json_scalar(schema, v) {
                    problems.push(format!("{at}: {e}"));
                }
            }
            None => {}
        }
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn split_values<'a>(schema: &Value, v: &'a str) -> Vec<&'a str> {
    // `state` of wait takes comma-separated values of its enum.
    if schema.get("enum").is_some() {
        v.split(',').collect()
    } else {
        vec![v]
    }
}

fn enum_allows(schema: &Value, s: &str) -> bool {
    match schema.get("enum").and_then(Value::as_array) {
        None => true,
        Some(values) => values.iter().any(|e| match e {
            Value::String(x) => x == s,
            Value::Bool(b) => s == if *b { "true" } else { "false" },
            Value::Number(n) => s.parse::<f64>().ok() == n.as_f64(),
            _ => false,
        }),
    }
}

fn check_scalar(schema: &Value, v: &str) -> Result<(), String> {
    match schema.get("type").and_then(Value::as_str) {
        Some("boolean") if v != "true" && v != "false" => Err(format!("`{v}` is not a boolean")),
        Some("integer") if v.parse::<i64>().is_err() => Err(format!("`{v}` is not an integer")),
        Some("number") if v.parse::<f64>().is_err() => Err(format!("`{v}` is not a number")),
        _ if !enum_allows(schema, v) => Err(format!("`{v}` is not one of the allowed values")),
        _ => Ok(()),
    }
}

fn check_json_scalar(schema: &Value, v: &Value) -> Result<(), String> {
    let ok = match schema.get("type").and_then(Value::as_str) {
        Some("string") => v.as_str().is_some_and(|s| enum_allows(schema, s)),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v} does not fit {}",
            schema.get("type").unwrap_or(&Value::Null)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::load(&spec_path()).expect("the spec loads")
    }

    fn no_headers(_: &str) -> Option<String> {
        None
    }

    fn json_header(h: &str) -> Option<String> {
        (h == "content-type").then(|| "application/json".to_string())
    }

    #[test]
    fn matches_operations_and_path_params() {
        let s = spec();
        assert!(s.operations() > 50);
        let m = s
            .check(
                "POST",
                "/v1/apps/a/machines/m1/start",
                None,
                &no_headers,
                b"",
            )
            .unwrap();
        assert_eq!(m.op.id, "Machines_start");
        assert_eq!(m.path_params["machine_id"], "m1");
        let m = s
            .check(
                "GET",
                "/v1/apps/a/machines/m1/wait",
                Some("state=started&timeout=5"),
                &no_headers,
                b"",
            )
            .unwrap();
        assert_eq!(m.op.id, "Machines_wait");
        assert!(
            s.check(
                "GET",
                "/v1/apps/a/machines/m1/lease",
                None,
                &no_headers,
                b""
            )
            .is_ok()
        );
    }

    #[test]
    fn refuses_what_the_spec_does_not_have() {
        let s = spec();
        assert!(
            s.check(
                "POST",
                "/v1/apps/a/machines/m1/explode",
                None,
                &no_headers,
                b""
            )
            .is_err()
        );
        assert!(
            s.check(
                "PUT",
                "/v1/apps/a/machines/m1/start",
                None,
                &no_headers,
                b""
            )
            .is_err()
        );
        assert!(
            s.check(
                "GET",
                "/v1/apps/a/machines/m1/wait",
                Some("state=running"),
                &no_headers,
                b""
            )
            .is_err()
        );
        assert!(
            s.check(
                "GET",
                "/v1/apps/a/machines/m1/wait",
                Some("timeout=soon"),
                &no_headers,
                b""
            )
            .is_err()
        );
        assert!(
            s.check(
                "GET",
                "/v1/apps/a/machines",
                Some("color=red"),
                &no_headers,
                b""
            )
            .is_err()
        );
        // Release needs the nonce header.
        assert!(
            s.check(
                "DELETE",
                "/v1/apps/a/machines/m1/lease",
                None,
                &no_headers,
                b""
            )
            .is_err()
        );
    }

    #[test]
    fn checks_bodies_against_their_schema() {
        let s = spec();
        let good = br#"{"region":"ams","lease_ttl":30,"config":{"image":"i","guest":{"cpus":1,"memory_mb":256,"cpu_kind":"shared"},"metadata":{"a":"b"},"env":{"K":"V"},"restart":{"policy":"no"}}}"#;
        s.check("POST", "/v1/apps/a/machines", None, &json_header, good)
            .unwrap();
        let bad_type = br#"{"config":{"guest":{"cpus":"one"}}}"#;
        assert!(
            s.check("POST", "/v1/apps/a/machines", None, &json_header, bad_type)
                .unwrap_err()
                .contains("cpus")
        );
        let unknown = br#"{"config":{"imagee":"i"}}"#;
        assert!(
            s.check("POST", "/v1/apps/a/machines", None, &json_header, unknown)
                .unwrap_err()
                .contains("imagee")
        );
        let bad_enum = br#"{"signal":"SIGNOPE"}"#;
        assert!(
            s.check(
                "POST",
                "/v1/apps/a/machines/m/stop",
                None,
                &json_header,
                bad_enum
            )
            .is_err()
        );
        assert!(
            s.check("POST", "/v1/apps/a/machines", None, &json_header, b"")
                .is_err(),
            "create requires a body"
        );
        assert!(
            s.check("POST", "/v1/apps/a/machines/m/stop", None, &no_headers, b"")
                .is_ok(),
            "stop's body is optional"
        );
    }
}
