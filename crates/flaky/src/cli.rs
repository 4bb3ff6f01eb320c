//! `shoal-agent flaky [--runs RUNS.json] [REPORT...] [--format json|text]`: analyses JUnit
//! reports from files. With a runs file it reads `{"runs": [...], "options"?}` like the job
//! spec; each plain report file is one run of an unknown commit (run id = file name, or the path
//! when two files share a name).

use std::path::{Path, PathBuf};

use crate::{FlakyError, Report, Run, analyze, parse_spec};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The report JSON, pretty-printed.
    Json,
    /// A table of tests and a list of failures.
    Text,
}

fn read(path: &Path) -> Result<String, FlakyError> {
    std::fs::read_to_string(path).map_err(|source| FlakyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Renders a report as text.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<18} {:>6} {:>6} {:>8}  test\n",
        "verdict", "score", "runs", "failures"
    ));
    for t in &report.tests {
        out.push_str(&format!(
            "{:<18} {:>6.3} {:>6} {:>8}  {}\n",
            serde_json::to_value(t.verdict)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            t.flaky_score,
            t.runs,
            t.failures,
            t.id
        ));
    }
    if !report.failures.is_empty() {
        out.push_str("\nfailures:\n");
        for f in &report.failures {
            let v = serde_json::to_value(f.verdict)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let r = serde_json::to_value(f.reason)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            out.push_str(&format!("  {v:<18} {} in {} ({r})\n", f.test, f.run_id));
        }
    }
    for e in &report.errors {
        out.push_str(&format!("error: {}:{}: {}\n", e.file, e.line, e.message));
    }
    out
}

/// Reads the runs: those of the runs file, then one per report file, each with a run id of
/// its own (the base name, or the path when two files share a base name).
pub fn load(
    files: &[PathBuf],
    runs_json: Option<&Path>,
) -> Result<(Vec<Run>, crate::Options), FlakyError> {
    let (mut runs, options) = match runs_json {
        Some(p) => {
            let v: serde_json::Value = serde_json::from_str(&read(p)?)
                .map_err(|e| FlakyError::Spec(format!("{}: invalid JSON: {e}", p.display())))?;
            parse_spec(&v)?
        }
        None => (Vec::new(), crate::Options::default()),
    };
    let base = |f: &PathBuf| {
        f.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.display().to_string())
    };
    let mut taken: std::collections::HashSet<String> =
        runs.iter().map(|r| r.run_id.clone()).collect();
    for f in files {
        // The base name when it is unique among the inputs, else the path as given, else the
        // path with `#2`, `#3`...: two reports never share a run id.
        let b = base(f);
        let mut id = if files.iter().filter(|g| base(g) == b).count() > 1 || taken.contains(&b) {
            f.display().to_string()
        } else {
            b
        };
        if taken.contains(&id) {
            let stem = id.clone();
            let mut n = 2u64;
            while taken.contains(&id) {
                id = format!("{stem}#{n}");
                n += 1;
            }
        }
        taken.insert(id.clone());
        runs.push(Run {
            run_id: id,
            commit: String::new(),
            started_at: None,
            junit_xml: read(f)?,
        });
    }
    if runs.is_empty() {
        return Err(FlakyError::Spec(
            "no reports given: pass JUnit files or --runs RUNS.json".into(),
        ));
    }
    Ok((runs, options))
}

/// Runs the command: prints the report (errors to stderr too) and returns the exit code:
/// 0 on success (flaky tests found or not), 1 when no report could be parsed, 2 on a usage
/// or I/O error.
pub fn run(files: &[PathBuf], runs_json: Option<&Path>, format: Format) -> i32 {
    let (runs, options) = match load(files, runs_json) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("flaky: {e}");
            return 2;
        }
    };
    let report = analyze(&runs, &options);
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report always serialises")
        ),
        Format::Text => print!("{}", render_text(&report)),
    }
    for e in &report.errors {
        eprintln!("flaky: {}:{}: {}", e.file, e.line, e.message);
    }
    if runs
        .iter()
        .all(|r| crate::junit::parse_report(&r.junit_xml).is_err())
    {
        1
    } else {
        0
    }
}
