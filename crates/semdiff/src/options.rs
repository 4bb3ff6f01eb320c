//! The diff options (the contract's option table plus limits and trace settings) and their
//! validated, compiled form.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use regex::Regex;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::SemdiffError;
use crate::pointer::{Pattern, Seg};

/// What kind of documents are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Plain JSON documents.
    #[default]
    Json,
    /// Recorded run traces: span trees (see `docs/semdiff.md` for the accepted shapes).
    Trace,
}

/// Which arrays are compared as multisets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnorderedArrays {
    /// Every array (`true`).
    All,
    /// The arrays at these path patterns (`false` is the empty list).
    Paths(Vec<String>),
}

impl Default for UnorderedArrays {
    fn default() -> Self {
        UnorderedArrays::Paths(Vec::new())
    }
}

impl<'de> Deserialize<'de> for UnorderedArrays {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UnorderedArrays;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a list of JSON Pointer patterns")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v {
                    UnorderedArrays::All
                } else {
                    UnorderedArrays::Paths(Vec::new())
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut paths = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    paths.push(p);
                }
                Ok(UnorderedArrays::Paths(paths))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// One string rewrite: every match of `pattern` is replaced by `replace` (`$1` etc. allowed).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NormalizeRule {
    /// A regular expression (Rust `regex` syntax).
    pub pattern: String,
    /// The replacement text.
    pub replace: String,
}

/// Diff options. Every field is optional in JSON; unknown fields are rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// JSON Pointer patterns whose subtrees are ignored (`*` one segment, `**` any depth).
    pub ignore_paths: Vec<String>,
    /// Object keys ignored at any depth.
    pub ignore_keys: Vec<String>,
    /// Arrays compared as multisets: all of them, or those at these patterns.
    pub unordered_arrays: UnorderedArrays,
    /// Arrays (by pattern) whose elements are matched by the value of a field.
    pub array_keys: BTreeMap<String, String>,
    /// Numbers are equal when `|a - b| <= float_abs_tol`.
    pub float_abs_tol: Option<f64>,
    /// Numbers are equal when `|a - b| <= float_rel_tol * max(|a|, |b|)`.
    pub float_rel_tol: Option<f64>,
    /// Regex rewrites applied, in order, to every string before comparing.
    pub normalize: Vec<NormalizeRule>,
    /// `json` (default) or `trace`.
    pub mode: Mode,
    /// Trace mode: span durations are equal within this relative tolerance of the longer one.
    pub duration_rel_tol: f64,
    /// Trace mode: span durations are equal within this many milliseconds.
    pub duration_abs_tol_ms: f64,
    /// Trace mode: attributes whose values are part of a span's identity (with its name).
    pub trace_key_attributes: Vec<String>,
    /// Limit: nodes visited before the comparison turns coarse (whole-subtree equality).
    pub max_nodes: usize,
    /// Limit: element pairs compared in O(n·m) matching of one array before falling back to
    /// positional pairing.
    pub max_pairwise: usize,
    /// Limit: changes reported; past it the result says `"truncated": true`.
    pub max_changes: usize,
    /// Limit: bytes of JSON a change's `before` or `after` may take; a larger (or deeper) value is
    /// cut to a string of this size and marked (`before_truncated`, `after_truncated`).
    pub max_value_bytes: usize,
    /// Limit: bytes of JSON the whole result may take; the list of changes stops before it would
    /// pass this and the result says `"truncated": true`.
    pub max_result_bytes: usize,
}

/// `max_value_bytes` by default: 4 KiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 4 * 1024;
/// `max_result_bytes` by default: 1 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1024 * 1024;
/// The most `max_result_bytes` may be set to: 8 MiB.
pub const MAX_RESULT_BYTES: usize = 8 * 1024 * 1024;

impl Default for Options {
    fn default() -> Self {
        Options {
            ignore_paths: Vec::new(),
            ignore_keys: Vec::new(),
            unordered_arrays: UnorderedArrays::default(),
            array_keys: BTreeMap::new(),
            float_abs_tol: None,
            float_rel_tol: None,
            normalize: Vec::new(),
            mode: Mode::Json,
            duration_rel_tol: 0.5,
            duration_abs_tol_ms: 5.0,
            trace_key_attributes: Vec::new(),
            max_nodes: 20_000_000,
            max_pairwise: 1_000_000,
            max_changes: 10_000,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

impl Options {
    /// Parses options from JSON, rejecting unknown fields with a clear message.
    pub fn from_value(value: &serde_json::Value) -> Result<Self, SemdiffError> {
        Options::deserialize(value).map_err(|e| SemdiffError::Options(e.to_string()))
    }

    /// Checks what reading alone cannot: every pattern and regular expression compiles, every
    /// tolerance and limit is in its range. A job whose options pass this does not fail on them.
    pub fn check(&self) -> Result<(), SemdiffError> {
        Compiled::new(self).map(|_| ())
    }
}

/// Options checked and compiled for the differ.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub ignore_paths: Vec<Pattern>,
    pub ignore_keys: HashSet<String>,
    pub unordered_all: bool,
    pub unordered: Vec<Pattern>,
    pub array_keys: Vec<(Pattern, String)>,
    pub abs_tol: Option<f64>,
    pub rel_tol: Option<f64>,
    pub normalize: Vec<(Regex, String)>,
    pub mode: Mode,
    pub duration_rel_tol: f64,
    pub duration_abs_tol_ms: f64,
    pub trace_key_attributes: Vec<String>,
    pub max_nodes: usize,
    pub max_pairwise: usize,
    pub max_changes: usize,
    pub max_value_bytes: usize,
    pub max_result_bytes: usize,
}

fn tol(name: &str, v: Option<f64>) -> Result<Option<f64>, SemdiffError> {
    match v {
        Some(t) if !(t.is_finite() && t >= 0.0) => Err(SemdiffError::Options(format!(
            "{name} must be a finite number >= 0, got {t}"
        ))),
        other => Ok(other),
    }
}

impl Compiled {
    pub fn new(o: &Options) -> Result<Self, SemdiffError> {
        let ignore_paths = o
            .ignore_paths
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<_, _>>()?;
        let (unordered_all, unordered) = match &o.unordered_arrays {
            UnorderedArrays::All => (true, Vec::new()),
            UnorderedArrays::Paths(ps) => (
                false,
                ps.iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let array_keys = o
            .array_keys
            .iter()
            .map(|(p, f)| Ok((Pattern::parse(p)?, f.clone())))
            .collect::<Result<_, SemdiffError>>()?;
        let normalize = o
            .normalize
            .iter()
            .map(|r| {
                Regex::new(&r.pattern)
                    .map(|re| (re, r.replace.clone()))
                    .map_err(|e| {
                        SemdiffError::Options(format!("normalize pattern {:?}: {e}", r.pattern))
                    })
            })
            .collect::<Result<_, _>>()?;
        tol("duration_rel_tol", Some(o.duration_rel_tol))?;
        tol("duration_abs_tol_ms", Some(o.duration_abs_tol_ms))?;
        if o.max_changes == 0 {
            return Err(SemdiffError::Options(
                "max_changes must be at least 1".into(),
            ));
        }
        if !(16..=MAX_RESULT_BYTES).contains(&o.max_value_bytes) {
            return Err(SemdiffError::Options(format!(
                "max_value_bytes must be between 16 and {MAX_RESULT_BYTES}, got {}",
                o.max_value_bytes
            )));
        }
        if !(1024..=MAX_RESULT_BYTES).contains(&o.max_result_bytes) {
            return Err(SemdiffError::Options(format!(
                "max_result_bytes must be between 1024 and {MAX_RESULT_BYTES}, got {}",
                o.max_result_bytes
            )));
        }
        Ok(Compiled {
            ignore_paths,
            ignore_keys: o.ignore_keys.iter().cloned().collect(),
            unordered_all,
            unordered,
            array_keys,
            abs_tol: tol("float_abs_tol", o.float_abs_tol)?,
            rel_tol: tol("float_rel_tol", o.float_rel_tol)?,
            normalize,
            mode: o.mode,
            duration_rel_tol: o.duration_rel_tol,
            duration_abs_tol_ms: o.duration_abs_tol_ms,
            trace_key_attributes: o.trace_key_attributes.clone(),
            max_nodes: o.max_nodes,
            max_pairwise: o.max_pairwise,
            max_changes: o.max_changes,
            max_value_bytes: o.max_value_bytes,
            max_result_bytes: o.max_result_bytes,
        })
    }

    pub fn is_ignored(&self, path: &[Seg<'_>]) -> bool {
        !self.ignore_paths.is_empty() && self.ignore_paths.iter().any(|p| p.matches(path))
    }

    pub fn is_unordered(&self, path: &[Seg<'_>]) -> bool {
        self.unordered_all || self.unordered.iter().any(|p| p.matches(path))
    }

    pub fn array_key(&self, path: &[Seg<'_>]) -> Option<&str> {
        self.array_keys
            .iter()
            .find(|(p, _)| p.matches(path))
            .map(|(_, f)| f.as_str())
    }

    pub fn has_tolerance(&self) -> bool {
        self.abs_tol.is_some() || self.rel_tol.is_some()
    }
}
