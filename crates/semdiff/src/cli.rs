//! `shoal-agent semdiff BASELINE CANDIDATE [--options FILE] [--format json|text]`: reads the
//! files, diffs them and exits like diff(1): 0 equal, 1 different, 2 on error.

use std::path::Path;

use serde_json::Value;

use crate::{DiffResult, Doc, Options, SemdiffError, diff_docs};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The result JSON, pretty-printed.
    Json,
    /// One human-readable line per change.
    Text,
}

fn read_text(path: &Path) -> Result<String, SemdiffError> {
    let mut text = std::fs::read_to_string(path).map_err(|source| SemdiffError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // A UTF-8 byte order mark (some Windows tools write one) is not part of the JSON.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// True for a file named as JSON Lines (`.jsonl`, `.ndjson`, `.jsonlines`): read as an array of
/// its lines even when it holds one line.
fn is_json_lines(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["jsonl", "ndjson", "jsonlines"].contains(&e.to_ascii_lowercase().as_str())
    })
}

/// Reads a JSON file into the compact [`Doc`] (the text is dropped once parsed, so two large
/// files never sit in memory as text and tree at once); a file of JSON lines (e.g. an OTLP
/// file exporter's output) is read as an array of its lines: always when its name says JSON
/// Lines, else when it is not one JSON document but several lines of them.
pub fn read_doc(path: &Path) -> Result<Doc, SemdiffError> {
    let text = read_text(path)?;
    if is_json_lines(path) {
        return Doc::parse_lines(&text).map_err(|source| SemdiffError::Json {
            path: path.to_path_buf(),
            source,
        });
    }
    match Doc::parse(text.as_bytes()) {
        Ok(d) => Ok(d),
        Err(first) => match Doc::parse_lines(&text) {
            Ok(d) if d.line_count() > 1 => Ok(d),
            _ => Err(SemdiffError::Json {
                path: path.to_path_buf(),
                source: first,
            }),
        },
    }
}

fn short(v: &crate::bound::Shown) -> String {
    // The JSON text as reported: numbers exactly as written.
    let s = v.get();
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}

/// Renders a result as text: one line per change, then notes on limits.
pub fn render_text(result: &DiffResult) -> String {
    let mut out = String::new();
    for c in &result.changes {
        // The root is `(root)`: `/` is the pointer to the key "" (every other path starts
        // with `/`, so the two cannot be confused).
        let path = if c.path.is_empty() { "(root)" } else { &c.path };
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
        Some(p) => {
            let text = read_text(p)?;
            let v: Value = serde_json::from_str(&text).map_err(|source| SemdiffError::Json {
                path: p.to_path_buf(),
                source,
            })?;
            Options::from_value(&v)?
        }
        None => Options::default(),
    };
    let a = read_doc(baseline)?;
    let b = read_doc(candidate)?;
    diff_docs(&a, &b, &opts)
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
