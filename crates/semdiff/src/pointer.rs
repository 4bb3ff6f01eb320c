//! JSON Pointer (RFC 6901) paths and the wildcard patterns used by the options.
//!
//! Paths are kept as a stack of unescaped segments while diffing and only turned into
//! pointer text (with `~0` / `~1` escaping) when a change is reported.

use std::borrow::Cow;

use crate::SemdiffError;

/// One segment of a path being walked.
#[derive(Debug, Clone)]
pub(crate) enum Seg<'a> {
    /// An object key borrowed from the document.
    Key(&'a str),
    /// An array index.
    Idx(usize),
    /// An owned segment (used for span identities in trace mode).
    Name(String),
}

impl Seg<'_> {
    fn text(&self) -> Cow<'_, str> {
        match self {
            Seg::Key(k) => Cow::Borrowed(k),
            Seg::Idx(i) => Cow::Owned(i.to_string()),
            Seg::Name(n) => Cow::Borrowed(n),
        }
    }
}

/// A path under construction: the segments from the root.
pub(crate) type Path<'a> = Vec<Seg<'a>>;

/// Escapes one segment as RFC 6901 requires (`~` → `~0`, `/` → `~1`).
pub fn escape(segment: &str) -> Cow<'_, str> {
    if segment.contains(['~', '/']) {
        Cow::Owned(segment.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(segment)
    }
}

/// Reverses [`escape`].
pub fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Renders a path as JSON Pointer text; the root is the empty string.
pub(crate) fn render(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        out.push('/');
        out.push_str(&escape(&seg.text()));
    }
    out
}

#[derive(Debug, Clone)]
enum PatSeg {
    /// A literal segment, with its value as an index when it is one.
    Lit(String, Option<usize>),
    /// `*`: exactly one segment.
    Any,
    /// `**`: zero or more segments.
    Deep,
}

/// A JSON Pointer with wildcards: `*` matches one segment, `**` any number (including none).
#[derive(Debug, Clone)]
pub struct Pattern {
    segs: Vec<PatSeg>,
}

impl Pattern {
    /// Parses a pattern; it must be empty (the root) or start with `/`.
    pub fn parse(text: &str) -> Result<Self, SemdiffError> {
        if text.is_empty() {
            return Ok(Pattern { segs: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(SemdiffError::Options(format!(
                "path pattern {text:?} must be a JSON Pointer starting with '/' (or \"\" for the root)"
            )));
        };
        let segs = rest
            .split('/')
            .map(|s| match s {
                "*" => PatSeg::Any,
                "**" => PatSeg::Deep,
                lit => {
                    let lit = unescape(lit);
                    let idx = lit.parse::<usize>().ok();
                    PatSeg::Lit(lit, idx)
                }
            })
            .collect();
        Ok(Pattern { segs })
    }

    /// True when the whole path matches the pattern.
    pub(crate) fn matches(&self, path: &[Seg<'_>]) -> bool {
        match_segs(&self.segs, path)
    }

    /// Matches a path given as unescaped string segments (used by tests and callers).
    pub fn matches_segments(&self, path: &[&str]) -> bool {
        let segs: Vec<Seg<'_>> = path.iter().map(|s| Seg::Key(s)).collect();
        self.matches(&segs)
    }
}

fn seg_eq(lit: &str, idx: Option<usize>, seg: &Seg<'_>) -> bool {
    match seg {
        Seg::Key(k) => *k == lit,
        Seg::Name(n) => n == lit,
        Seg::Idx(i) => idx == Some(*i),
    }
}

fn match_segs(pat: &[PatSeg], path: &[Seg<'_>]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(PatSeg::Deep) => (0..=path.len()).any(|k| match_segs(&pat[1..], &path[k..])),
        Some(PatSeg::Any) => !path.is_empty() && match_segs(&pat[1..], &path[1..]),
        Some(PatSeg::Lit(lit, idx)) => {
            !path.is_empty() && seg_eq(lit, *idx, &path[0]) && match_segs(&pat[1..], &path[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
        assert_eq!(unescape("a~1b~0c"), "a/b~c");
        assert_eq!(unescape("~01"), "~1");
        let path = vec![Seg::Key("a/b"), Seg::Idx(3), Seg::Name("x~".into())];
        assert_eq!(render(&path), "/a~1b/3/x~0");
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn wildcards() {
        let p = Pattern::parse("/runs/*/id").unwrap();
        assert!(p.matches(&[Seg::Key("runs"), Seg::Idx(4), Seg::Key("id")]));
        assert!(!p.matches(&[Seg::Key("runs"), Seg::Key("id")]));
        let deep = Pattern::parse("/meta/**").unwrap();
        assert!(deep.matches_segments(&["meta"]));
        assert!(deep.matches_segments(&["meta", "a", "b"]));
        assert!(!deep.matches_segments(&["other"]));
        let mid = Pattern::parse("/**/id").unwrap();
        assert!(mid.matches_segments(&["id"]));
        assert!(mid.matches_segments(&["a", "b", "id"]));
        assert!(!mid.matches_segments(&["a", "id", "b"]));
        let esc = Pattern::parse("/a~1b").unwrap();
        assert!(esc.matches_segments(&["a/b"]));
        assert!(Pattern::parse("nope").is_err());
        assert!(Pattern::parse("").unwrap().matches(&[]));
    }
}
