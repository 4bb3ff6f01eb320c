//! `shoal-agent semdiff BASELINE CANDIDATE [--options FILE] [--format json|text]`: reads the
//! files, diffs them and exits like diff(1): 0 equal, 1 different, 2 on error.

use std::path::Path;

use serde_json::Value;

use crate::{DiffResult, Options, SemdiffError, diff};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The result JSON, pretty-printed.
    Json,
    /// One human-readable line per change.
    Text,
}

/// Reads a JSON file; a file of JSON lines (e.g. an OTLP file exporter's output) is read as
/// an array of its lines.
fn read_json(path: &Path) -> Result<Value, SemdiffError> {
    let text = std::fs::read_to_string(path).map_err(|source| SemdiffError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match serde_json::from_str(&text) {
        Ok(v) => Ok(v),
        Err(first) => {
            let lines: Result<Vec<Value>, _> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect();
            match lines {
                Ok(vs) if vs.len() > 1 => Ok(Value::Array(vs)),
                _ => Err(SemdiffError::Json {
                    path: path.to_path_buf(),
                    source: first,
                }),
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// Renders a result as text: one line per change, then notes on limits.
pub fn render_text(result: &DiffResult) -> String {
    let mut out = String::new();
    for c in &result.changes {
        let path = if c.path.is_empty() { "/" } else { &c.path };
        let line = match (c.op, &c.from, &c.before, &c.after) {
            (crate::Op::Moved, Some(from), _, _) => format!("moved        {from} -> {path}"),
            (crate::Op::Moved, None, Some(b), Some(a)) => {
                format!("moved        {path} (position {b} -> {a})")
            }
            (op, _, Some(b), Some(a)) => {
                format!("{:<12} {path}: {} -> {}", op.as_str(), short(b), short(a))
            }
            (op, _, Some(b), None) => format!("{:<12} {path}: {}", op.as_str(), short(b)),
            (op, _, None, Some(a)) => format!("{:<12} {path}: {}", op.as_str(), short(a)),
            (op, _, None, None) => format!("{:<12} {path}", op.as_str()),
        };
        out.push_str(&line);
        out.push('\n');
    }
    if result.truncated {
        out.push_str("(truncated: more changes were found than max_changes)\n");
    }
    if let Some(d) = &result.degraded {
        out.push_str(&format!("(degraded: {d})\n"));
    }
    if result.equal {
        out.push_str("equal\n");
    }
    out
}

fn run_inner(
    baseline: &Path,
    candidate: &Path,
    options: Option<&Path>,
) -> Result<DiffResult, SemdiffError> {
    let opts = match options {
        Some(p) => Options::from_value(&read_json(p)?)?,
        None => Options::default(),
    };
    let a = read_json(baseline)?;
    let b = read_json(candidate)?;
    diff(&a, &b, &opts)
}

/// Runs the command: prints the result to stdout (errors to stderr) and returns the exit code.
pub fn run(baseline: &Path, candidate: &Path, options: Option<&Path>, format: Format) -> i32 {
    match run_inner(baseline, candidate, options) {
        Ok(result) => {
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&result).expect("a diff result always serialises")
                ),
                Format::Text => print!("{}", render_text(&result)),
            }
            if result.equal { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("semdiff: {e}");
            2
        }
    }
}
