//! Bounds on what a result carries: a change's `before`/`after` value is shown as itself only when
//! its JSON text fits `max_value_bytes`; otherwise it becomes a string (the start of the string, or
//! of the value's compact JSON text) and the change says so in `before_truncated` /
//! `after_truncated`. The whole result is kept under `max_result_bytes` of JSON by stopping the
//! list of changes (`"truncated": true`). Depth is not cut here: a result too deep to record is
//! refused as a whole where it is recorded (`result_too_large`).
//!
//! A shown value is kept as JSON text ([`Shown`]), not as a `serde_json::Value`, so that a number
//! read from text prints exactly as it was written, whatever its digits: a `Value` holds at most
//! a double or a 64-bit integer.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::tree::{Kind, Tree};

/// A `before` or `after` value as the JSON text it is reported as: numbers exactly as written in
/// the document they were read from (`12345678901234567890123`, `1.4405737774410001`,
/// `-59.879722999999956` stay so; a `serde_json::Value` would round them to a double).
/// It serialises as that text, unchanged.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Shown(Box<RawValue>);

impl Shown {
    /// The value's compact JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value as a `serde_json::Value` (numbers beyond a double or a 64-bit integer are
    /// rounded to the nearest double there; [`Shown::get`] has them exactly).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }

    /// A value shown as it is.
    pub fn from_value(v: &Value) -> Shown {
        Shown(serde_json::value::to_raw_value(v).expect("a Value always serialises"))
    }

    /// From JSON text already known to be valid.
    fn from_text(text: String) -> Shown {
        match RawValue::from_string(text) {
            Ok(raw) => Shown(raw),
            // Not reached: the text was written by the differ from a parsed document.
            Err(e) => Shown::from_value(&Value::String(format!("(unprintable value: {e})"))),
        }
    }

    fn from_str_value(s: &str) -> Shown {
        Shown(serde_json::value::to_raw_value(s).expect("a string always serialises"))
    }
}

impl PartialEq for Shown {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

/// How a value was cut to fit: its full size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cut {
    /// Bytes of the value's compact JSON text.
    pub bytes: u64,
}

/// Counts bytes written, keeping none.
#[derive(Default)]
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of `v`'s compact JSON text, without building it.
pub fn json_len<T: Serialize + ?Sized>(v: &T) -> u64 {
    let mut c = Counter::default();
    // Serialising into a counter cannot fail for JSON values and the result types here.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Bytes `c` takes inside a JSON string (escapes included).
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest start of `s` whose JSON string encoding (without the quotes) fits in `limit` bytes,
/// cut at a character boundary.
pub fn cut_str(s: &str, limit: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += escaped_len(c);
        if used > limit {
            return &s[..i];
        }
    }
    s
}

/// `v` as a result may carry it: itself when it fits, else a string of at most `limit` bytes of
/// JSON (the start of the string, or of its compact JSON text) and how it was cut.
pub fn bound_value(v: Value, limit: usize) -> (Value, Option<Cut>) {
    let bytes = json_len(&v);
    if bytes <= limit as u64 {
        return (v, None);
    }
    let cut = Cut { bytes };
    // The two quotes of the string count against the limit too.
    let room = limit.saturating_sub(2);
    let shown = match &v {
        Value::String(s) => cut_str(s, room).to_string(),
        other => {
            let text = serde_json::to_string(other).unwrap_or_default();
            cut_str(&text, room).to_string()
        }
    };
    (Value::String(shown), Some(cut))
}

/// `v` as a result may carry it, as JSON text with its numbers as written: itself when it fits,
/// else a string of at most `limit` bytes of JSON (the start of the string, or of its compact
/// JSON text) and how it was cut.
pub(crate) fn bound_tree<'a, T: Tree<'a>>(v: T, limit: usize) -> (Shown, Option<Cut>) {
    let room = limit.saturating_sub(2);
    if v.kind() == Kind::String {
        let s = v.as_str().unwrap_or_default();
        let bytes = s.chars().map(escaped_len).sum::<usize>() as u64 + 2;
        if bytes <= limit as u64 {
            return (Shown::from_str_value(s), None);
        }
        return (Shown::from_str_value(cut_str(s, room)), Some(Cut { bytes }));
    }
    let mut text = String::new();
    v.write_json(&mut text);
    let bytes = text.len() as u64;
    if bytes <= limit as u64 {
        return (Shown::from_text(text), None);
    }
    (
        Shown::from_str_value(cut_str(&text, room)),
        Some(Cut { bytes }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_values_are_kept_as_they_are() {
        let v = json!({"a": [1, "two", null]});
        assert_eq!(bound_value(v.clone(), 4096), (v, None));
    }

    #[test]
    fn a_long_string_is_cut_to_the_limit_with_its_size() {
        let s = "é".repeat(10_000);
        let (v, cut) = bound_value(Value::String(s), 101);
        let shown = v.as_str().unwrap();
        assert!(json_len(&v) <= 101, "{}", json_len(&v));
        assert!(shown.chars().all(|c| c == 'é'));
        assert_eq!(cut, Some(Cut { bytes: 20_002 }));
    }

    #[test]
    fn escapes_count_against_the_limit() {
        let s = "\u{1}\"".repeat(1000);
        let (v, _) = bound_value(Value::String(s), 64);
        assert!(json_len(&v) <= 64, "{v}");
    }

    #[test]
    fn a_large_array_becomes_the_start_of_its_text() {
        let v = json!((0..1000).collect::<Vec<_>>());
        let (shown, cut) = bound_value(v, 40);
        assert!(shown.as_str().unwrap().starts_with("[0,1,2,3"));
        assert!(json_len(&shown) <= 40);
        assert_eq!(cut.unwrap().bytes, 3891);
    }
}
