//! JUnit XML parsing as real tools write it: plain JUnit (Ant), Maven Surefire (with
//! `rerunFailure`/`rerunError`/`flakyFailure`/`flakyError`), pytest `--junitxml`,
//! go-junit-report and jest-junit. Only what the analysis needs is kept: per test case its
//! id and how many attempts failed or passed in this report.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// The final outcome of a test case in one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed (possibly after failed attempts: see [`Case::failed_attempts`]).
    Passed,
    /// Failed (`failure` or `error`), possibly on every rerun too.
    Failed,
    /// Skipped or disabled; not counted as a run.
    Skipped,
}

/// One test case of a report (several `testcase` elements with the same id are merged).
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `classname::name`, or `name` when there is no class name (see `docs/flaky.md`).
    pub id: String,
    /// The final outcome.
    pub outcome: Outcome,
    /// Attempts that failed in this report (first runs and reruns).
    pub failed_attempts: u32,
    /// Attempts that passed in this report.
    pub passed_attempts: u32,
    /// The first failure message, if any (shortened).
    pub message: Option<String>,
}

/// A report that could not be read, with the 1-based line of the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlError {
    /// 1-based line.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

/// Builds a test id from its class name and name.
pub fn test_id(classname: &str, name: &str) -> String {
    if classname.is_empty() {
        name.to_string()
    } else {
        format!("{classname}::{name}")
    }
}

fn line_at(xml: &str, pos: u64) -> usize {
    let end = (pos as usize).min(xml.len());
    xml.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[derive(Default)]
struct Pending {
    id: String,
    failed: bool,
    skipped: bool,
    flaky_fails: u32,
    rerun_fails: u32,
    message: Option<String>,
}

fn attr(e: &BytesStart<'_>, key: &[u8]) -> Result<Option<String>, String> {
    for a in e.attributes() {
        let a = a.map_err(|err| err.to_string())?;
        if a.key.as_ref() == key {
            return a
                .unescape_value()
                .map(|v| Some(v.into_owned()))
                .map_err(|err| err.to_string());
        }
    }
    Ok(None)
}

fn shorten(s: &str) -> String {
    let first = s.trim().lines().next().unwrap_or("").trim();
    if first.chars().count() > 200 {
        first.chars().take(197).collect::<String>() + "..."
    } else {
        first.to_string()
    }
}

/// Parses one report into its cases, merged by id in first-seen order; the first bad test
/// case is an error (see [`parse_report`] to keep the others).
pub fn parse(xml: &str) -> Result<Vec<Case>, XmlError> {
    let (cases, mut bad) = parse_report(xml)?;
    if bad.is_empty() {
        Ok(cases)
    } else {
        Err(bad.swap_remove(0))
    }
}

/// Parses one report into its cases, merged by id in first-seen order, and the test cases
/// that could not be used (e.g. without a name), each with its line. An error means the
/// whole report is unreadable.
pub fn parse_report(xml: &str) -> Result<(Vec<Case>, Vec<XmlError>), XmlError> {
    let mut bad: Vec<XmlError> = Vec::new();
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut suites: Vec<String> = Vec::new();
    let mut pending: Option<Pending> = None;
    let mut want_text = false;
    let mut seen_root = false;
    let mut cases: Vec<Case> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let err_at = |pos: u64, message: String| XmlError {
        line: line_at(xml, pos),
        message,
    };
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| err_at(reader.error_position(), e.to_string()))?;
        let pos = reader.buffer_position();
        let (start, empty) = match &ev {
            Event::Start(e) => (Some(e.clone()), false),
            Event::Empty(e) => (Some(e.clone()), true),
            _ => (None, false),
        };
        if let Some(e) = start {
            let name = e.local_name().as_ref().to_vec();
            let parent_is_case = stack.last().is_some_and(|p| p == b"testcase");
            let a = |k: &[u8]| attr(&e, k).map_err(|m| err_at(pos, m));
            match name.as_slice() {
                b"testsuites" => seen_root = true,
                b"testsuite" => {
                    seen_root = true;
                    suites.push(a(b"name")?.unwrap_or_default());
                }
                b"testcase" => {
                    seen_root = true;
                    // An empty attribute (jest-junit writes `classname=""`) counts as missing.
                    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
                    match nonempty(a(b"name")?) {
                        None => {
                            // One bad case does not discard the report: it is reported and
                            // its elements are ignored.
                            bad.push(err_at(pos, "<testcase> without a name attribute".into()));
                            pending = None;
                        }
                        Some(n) => {
                            let class = match nonempty(a(b"classname")?) {
                                Some(c) => c,
                                None => suites.last().cloned().unwrap_or_default(),
                            };
                            let status = a(b"status")?.unwrap_or_default();
                            pending = Some(Pending {
                                id: test_id(&class, &n),
                                // `status="disabled"` (and skipped / ignored / notrun) is no run.
                                skipped: matches!(
                                    status.trim().to_ascii_lowercase().as_str(),
                                    "disabled" | "skipped" | "skip" | "ignored" | "notrun"
                                ),
                                ..Pending::default()
                            });
                        }
                    }
                }
                b"failure" | b"error" if parent_is_case => {
                    if let Some(p) = pending.as_mut() {
                        p.failed = true;
                        if p.message.is_none() {
                            p.message = a(b"message")?
                                .map(|m| shorten(&m))
                                .filter(|m| !m.is_empty());
                        }
                        want_text = p.message.is_none() && !empty;
                    }
                }
                b"skipped" | b"disabled" if parent_is_case => {
                    if let Some(p) = pending.as_mut() {
                        p.skipped = true;
                    }
                }
                b"flakyFailure" | b"flakyError" if parent_is_case => {
                    if let Some(p) = pending.as_mut() {
                        p.flaky_fails += 1;
                        if p.message.is_none() {
                            p.message = a(b"message")?
                                .map(|m| shorten(&m))
                                .filter(|m| !m.is_empty());
                        }
                    }
                }
                b"rerunFailure" | b"rerunError" if parent_is_case => {
                    if let Some(p) = pending.as_mut() {
                        p.rerun_fails += 1;
                    }
                }
                _ => {}
            }
            if empty {
                close(&name, &mut pending, &mut suites, &mut cases, &mut index);
            } else {
                stack.push(name);
            }
            continue;
        }
        match ev {
            Event::End(e) => {
                let name = e.local_name().as_ref().to_vec();
                stack.pop();
                want_text = false;
                close(&name, &mut pending, &mut suites, &mut cases, &mut index);
            }
            Event::Text(t) if want_text => {
                if let (Some(p), Ok(text)) = (pending.as_mut(), t.decode()) {
                    let m = shorten(&text);
                    if !m.is_empty() {
                        p.message = Some(m);
                        want_text = false;
                    }
                }
            }
            Event::CData(t) if want_text => {
                if let Some(p) = pending.as_mut() {
                    let m = shorten(&String::from_utf8_lossy(&t));
                    if !m.is_empty() {
                        p.message = Some(m);
                        want_text = false;
                    }
                }
            }
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return Err(err_at(
                        xml.len() as u64,
                        format!(
                            "unexpected end of file: <{}> is not closed",
                            String::from_utf8_lossy(open)
                        ),
                    ));
                }
                if !seen_root {
                    return Err(XmlError {
                        line: 1,
                        message:
                            "not a JUnit report: no <testsuites>, <testsuite> or <testcase> element"
                                .into(),
                    });
                }
                return Ok((cases, bad));
            }
            _ => {}
        }
    }
}

fn close(
    name: &[u8],
    pending: &mut Option<Pending>,
    suites: &mut Vec<String>,
    cases: &mut Vec<Case>,
    index: &mut std::collections::HashMap<String, usize>,
) {
    match name {
        b"testsuite" => {
            suites.pop();
        }
        b"testcase" => {
            let Some(p) = pending.take() else { return };
            let (outcome, failed, passed) = if p.failed {
                (Outcome::Failed, 1 + p.rerun_fails, 0)
            } else if p.skipped {
                (Outcome::Skipped, 0, 0)
            } else {
                (Outcome::Passed, p.flaky_fails, 1)
            };
            match index.get(&p.id) {
                Some(&i) => {
                    // The same test again in one report (go test -count, retries): more attempts.
                    let c = &mut cases[i];
                    c.failed_attempts += failed;
                    c.passed_attempts += passed;
                    if c.message.is_none() {
                        c.message = p.message;
                    }
                    c.outcome = match (c.outcome, outcome) {
                        (Outcome::Skipped, o) | (o, Outcome::Skipped) => o,
                        (_, o) => o,
                    };
                }
                None => {
                    index.insert(p.id.clone(), cases.len());
                    cases.push(Case {
                        id: p.id,
                        outcome,
                        failed_attempts: failed,
                        passed_attempts: passed,
                        message: p.message,
                    });
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal() {
        let cases = parse(
            r#"<testsuite name="s"><testcase classname="a.B" name="t1"/>
            <testcase name="t2"><failure message="boom &amp; bust">trace</failure></testcase>
            <testcase name="t3"><skipped/></testcase></testsuite>"#,
        )
        .unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].id, "a.B::t1");
        assert_eq!(cases[1].id, "s::t2");
        assert_eq!(cases[1].outcome, Outcome::Failed);
        assert_eq!(cases[1].message.as_deref(), Some("boom & bust"));
        assert_eq!(cases[2].outcome, Outcome::Skipped);
    }

    #[test]
    fn errors_have_lines() {
        let e = parse("<testsuite>\n<testcase name=\"x\">\n</testsuite>").unwrap_err();
        assert_eq!(e.line, 3, "{e:?}");
        let e = parse("<testsuite>\n<testcase name=\"x\">").unwrap_err();
        assert!(e.message.contains("not closed"), "{e:?}");
        let e = parse("<html></html>").unwrap_err();
        assert!(e.message.contains("not a JUnit report"));
        let e = parse("<testsuite>\n\n<testcase classname=\"x\"/></testsuite>").unwrap_err();
        assert_eq!(e.line, 3);
    }
}
