//! Semantic diff of JSON documents and recorded run traces.
//!
//! [`diff`] compares a baseline with a candidate and reports each difference at the deepest
//! JSON Pointer (RFC 6901) where the two sides differ, as one of the ops `added`, `removed`,
//! `changed`, `type_changed` or `moved`. [`Options`] tunes what counts as a difference
//! (ignored paths and keys, unordered and keyed arrays, float tolerances, string
//! normalisation) and switches to trace mode, where two span trees are matched by what the
//! spans are rather than by their ids. Work is bounded: past the configured limits the result
//! says so (`degraded`, `truncated`) and the comparison gets coarser instead of slower.
//!
//! Large documents read from text are best parsed into the compact [`Doc`] (a few bytes per
//! byte of JSON instead of serde_json's ~14) and compared with [`diff_docs`]; both entry points
//! run the same differ.
//!
//! [`run_spec`] is the `semantic_diff` job kind of the Shoal contract and [`cli`] is
//! `shoal-agent semdiff`. See `docs/semdiff.md`.
#![warn(missing_docs)]

pub mod bound;
pub mod cli;
mod doc;
mod json;
mod options;
pub mod pointer;
mod trace;
mod tree;

use serde::Serialize;
use serde_json::Value;

pub use doc::Doc;
pub use options::{
    DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_VALUE_BYTES, MAX_RESULT_BYTES, Mode, NormalizeRule,
    Options, UnorderedArrays,
};

use tree::Tree;

/// What happened at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Present in the candidate only.
    Added,
    /// Present in the baseline only.
    Removed,
    /// A value of the same JSON type with a different value.
    Changed,
    /// A value whose JSON type changed (e.g. number to string, object to array).
    TypeChanged,
    /// An array element (or span) that only changed place.
    Moved,
}

impl Op {
    /// The op's name as it appears in the result.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Added => "added",
            Op::Removed => "removed",
            Op::Changed => "changed",
            Op::TypeChanged => "type_changed",
            Op::Moved => "moved",
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The kind of difference.
    pub op: Op,
    /// Where: a JSON Pointer (for moved array elements, the candidate position).
    pub path: String,
    /// For a moved array element: its baseline position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The baseline value, absent for `added`, as JSON text (numbers as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<bound::Shown>,
    /// The candidate value, absent for `removed`, as JSON text (numbers as written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<bound::Shown>,
    /// Set when `before` was too large to show as itself: `before` is then a string (the start of
    /// the string, or of the value's JSON text) and this its full size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_truncated: Option<bound::Cut>,
    /// The same for `after`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_truncated: Option<bound::Cut>,
}

/// The result of a comparison, serialised as the contract's `semantic_diff` result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiffResult {
    /// No change was found.
    pub equal: bool,
    /// The changes, at most `max_changes` of them and `max_result_bytes` of JSON in all.
    pub changes: Vec<Change>,
    /// More changes existed than `max_changes` or `max_result_bytes` let through; the list stops
    /// there.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why part of the comparison was coarser than asked (a limit was reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

/// Everything that can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum SemdiffError {
    /// The options are invalid (unknown field, bad regex, bad pattern...).
    #[error("invalid options: {0}")]
    Options(String),
    /// The job spec is not `{"baseline", "candidate", "options"?}`.
    #[error("invalid semantic_diff spec: {0}")]
    Spec(String),
    /// Trace mode could not read one side as a trace.
    #[error("invalid trace ({side}): {message}")]
    Trace {
        /// `baseline` or `candidate`.
        side: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The cause (with line and column).
        source: serde_json::Error,
    },
}

/// Compares `baseline` with `candidate` under `options`.
pub fn diff(
    baseline: &Value,
    candidate: &Value,
    options: &Options,
) -> Result<DiffResult, SemdiffError> {
    diff_trees(baseline, candidate, options, std::borrow::Cow::Borrowed)
}

/// Compares two compact documents under `options`: the same result as [`diff`] on their
/// `Value`s, in a fraction of the memory. Trace mode reads spans from the documents' `Value`
/// form (a trace's spans are rebuilt into their own structure anyway).
pub fn diff_docs(
    baseline: &Doc,
    candidate: &Doc,
    options: &Options,
) -> Result<DiffResult, SemdiffError> {
    diff_trees(baseline.root(), candidate.root(), options, |d| {
        std::borrow::Cow::Owned(d.to_value())
    })
}

fn diff_trees<'a, T: Tree<'a>>(
    baseline: T,
    candidate: T,
    options: &Options,
    as_value: impl Fn(T) -> std::borrow::Cow<'a, Value>,
) -> Result<DiffResult, SemdiffError> {
    let compiled = options::Compiled::new(options)?;
    let mut d = json::Differ::new(&compiled);
    match compiled.mode {
        Mode::Json => {
            let mut path = Vec::new();
            if !compiled.is_ignored(&path) {
                d.prime(baseline);
                d.prime(candidate);
                d.diff(baseline, candidate, &mut path);
            }
        }
        Mode::Trace => {
            let (va, vb) = (as_value(baseline), as_value(candidate));
            let a = trace::parse_trace(&va, "baseline", &compiled.trace_key_attributes)?;
            let b = trace::parse_trace(&vb, "candidate", &compiled.trace_key_attributes)?;
            if a.len() + b.len() > compiled.max_nodes {
                d.degrade(format!(
                    "{} spans exceed max_nodes ({}): attributes of late spans compared coarsely",
                    a.len() + b.len(),
                    compiled.max_nodes
                ));
            }
            trace::diff_traces(&mut d, &a, &b);
        }
    }
    Ok(DiffResult {
        // Something not compared (`incomplete`) is not known to be equal.
        equal: d.changes.is_empty() && !d.truncated && !d.incomplete,
        changes: d.changes,
        truncated: d.truncated,
        degraded: d.degraded,
    })
}

/// A `semantic_diff` job's spec; its two documents are kept as text and parsed into [`Doc`]s.
#[derive(serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"baseline\", \"candidate\", \"options\"?}"
)]
struct JobSpec<'s> {
    #[serde(borrow)]
    baseline: &'s serde_json::value::RawValue,
    #[serde(borrow)]
    candidate: &'s serde_json::value::RawValue,
    #[serde(default)]
    options: Option<Value>,
}

/// Runs a `semantic_diff` job from its spec's JSON text:
/// `{"baseline": JSON, "candidate": JSON, "options": {...}?}`. Each document is cut out of the
/// spec as text and parsed into a [`Doc`], numbers as written, so a job costs what
/// `shoal-agent semdiff` costs on files, not a `serde_json::Value` tree per document. The
/// result is JSON text, so that `before`/`after` keep their numbers exactly as written (a
/// `serde_json::Value` would round any number beyond a double or a 64-bit integer).
pub fn run_spec(spec: &str) -> Result<Box<serde_json::value::RawValue>, SemdiffError> {
    let spec: JobSpec =
        serde_json::from_str(spec).map_err(|e| SemdiffError::Spec(e.to_string()))?;
    let options = match &spec.options {
        None | Some(Value::Null) => Options::default(),
        Some(v) => Options::from_value(v)?,
    };
    // Each document is parsed from its own text, so numbers are kept exactly as written.
    let parse = |raw: &serde_json::value::RawValue| {
        Doc::parse(raw.get().as_bytes()).map_err(|e| SemdiffError::Spec(e.to_string()))
    };
    let (baseline, candidate) = (parse(spec.baseline)?, parse(spec.candidate)?);
    let result = diff_docs(&baseline, &candidate, &options)?;
    Ok(serde_json::value::to_raw_value(&result).expect("a diff result always serialises"))
}
