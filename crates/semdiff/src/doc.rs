//! A compact, read-only JSON document for large inputs.
//!
//! `serde_json::Value` spends about 14 bytes of memory per byte of a number-dense document (a
//! 32-byte enum per value, a B-tree node per object, a heap allocation per key and string).
//! [`Doc`] keeps the same tree in a few flat arrays: a 16-byte node per value, a 4-byte slot per
//! array element, an 8-byte (key, value) pair per object entry, all string values in one text
//! arena and every distinct key once. Object entries are sorted by key and deduplicated (the
//! last one wins) at build time, exactly as `serde_json::Map` would hold them, so the differ
//! reports the same changes in the same order from either form.
//!
//! The tree is built by serde_json's own parser through a `DeserializeSeed`, so the grammar,
//! the error messages (with line and column) and the nesting limit are serde_json's. Key
//! interning uses `hashbrown::HashTable` because the standard `HashMap` cannot look up a key
//! stored in an arena without owning a copy of it.

use std::fmt;
use std::hash::{BuildHasher, RandomState};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::tree::{Kind, Num, Tree};

/// One value. Strings, arrays and objects point into the document's arenas as (start, length).
#[derive(Debug, Clone, Copy)]
enum Node {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    Str(u32, u32),
    /// A number as written in the source text (kept in the text arena), compared exactly.
    Num(u32, u32),
    Arr(u32, u32),
    Obj(u32, u32),
}

/// One object entry: an interned key and the value's node.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u32,
    node: u32,
}

/// A UTF-8 byte order mark, skipped at the start of a document.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// The text of a (start, length) span of an arena.
fn span(text: &str, (start, len): (u32, u32)) -> &str {
    &text[start as usize..(start + len) as usize]
}

/// A parsed JSON document in compact form. Build it with [`Doc::parse`], [`Doc::from_value`]
/// or through `serde::Deserialize`; diff two with [`crate::diff_docs`].
#[derive(Debug, Clone, Default)]
pub struct Doc {
    nodes: Vec<Node>,
    kids: Vec<u32>,
    entries: Vec<Entry>,
    strs: String,
    keys: Vec<(u32, u32)>,
    key_text: String,
    root: u32,
    /// Read from JSON lines: the root array holds the lines.
    lines: bool,
}

impl Doc {
    /// Parses JSON text (one document; trailing whitespace only).
    pub fn parse(text: &[u8]) -> Result<Doc, serde_json::Error> {
        let text = text.strip_prefix(BOM).unwrap_or(text);
        let mut b = Builder {
            src: text,
            ..Builder::default()
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let root = Seed::value(&mut b).deserialize(&mut de)?;
        de.end()?;
        Ok(b.finish(root))
    }

    /// Parses JSON lines (one document per non-empty line) into one array of them.
    pub fn parse_lines(text: &str) -> Result<Doc, serde_json::Error> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut b = Builder::default();
        let mut ids = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            b.src = line.as_bytes();
            b.scan = 0;
            let mut de = serde_json::Deserializer::from_str(line);
            ids.push(Seed::value(&mut b).deserialize(&mut de)?);
            de.end()?;
        }
        b.src = &[];
        b.kid_stack.extend(ids);
        let root = b.finish_array(0).map_err(de::Error::custom)?;
        let mut doc = b.finish(root);
        doc.lines = true;
        Ok(doc)
    }

    /// The compact form of a `Value`.
    pub fn from_value(value: &Value) -> Doc {
        let mut b = Builder::default();
        let root = Seed::value(&mut b)
            .deserialize(value)
            .expect("a Value always converts");
        b.finish(root)
    }

    /// The document as a `Value`.
    pub fn to_value(&self) -> Value {
        self.root().to_value()
    }

    /// For a document read by [`Doc::parse_lines`]: how many lines it held (else 1).
    pub fn line_count(&self) -> usize {
        match self.nodes[self.root as usize] {
            Node::Arr(_, len) if self.lines => len as usize,
            _ => 1,
        }
    }

    /// How many values the document holds.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The heap memory the document holds, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + self.kids.capacity() * size_of::<u32>()
            + self.entries.capacity() * size_of::<Entry>()
            + self.strs.capacity()
            + self.keys.capacity() * size_of::<(u32, u32)>()
            + self.key_text.capacity()
    }

    pub(crate) fn root(&self) -> DocRef<'_> {
        DocRef {
            doc: self,
            id: self.root,
        }
    }

    fn key(&self, k: u32) -> &str {
        span(&self.key_text, self.keys[k as usize])
    }
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut b = Builder::default();
        let root = Seed::value(&mut b).deserialize(deserializer)?;
        Ok(b.finish(root))
    }
}

/// A node of a [`Doc`].
#[derive(Clone, Copy)]
pub(crate) struct DocRef<'a> {
    doc: &'a Doc,
    id: u32,
}

impl<'a> DocRef<'a> {
    fn node(&self) -> Node {
        self.doc.nodes[self.id as usize]
    }

    fn at(&self, id: u32) -> Self {
        DocRef { doc: self.doc, id }
    }

    fn entry_slice(self) -> &'a [Entry] {
        match self.node() {
            Node::Obj(start, len) => &self.doc.entries[start as usize..(start + len) as usize],
            _ => &[],
        }
    }
}

impl<'a> Tree<'a> for DocRef<'a> {
    fn ident(self) -> usize {
        std::ptr::from_ref(&self.doc.nodes[self.id as usize]) as usize
    }

    fn dense(self) -> Option<(usize, usize, usize)> {
        let doc = std::ptr::from_ref(self.doc) as usize;
        Some((doc, self.id as usize, self.doc.nodes.len()))
    }

    fn kind(self) -> Kind {
        match self.node() {
            Node::Null => Kind::Null,
            Node::Bool(_) => Kind::Bool,
            Node::U(_) | Node::I(_) | Node::F(_) | Node::Num(..) => Kind::Number,
            Node::Str(..) => Kind::String,
            Node::Arr(..) => Kind::Array,
            Node::Obj(..) => Kind::Object,
        }
    }

    fn as_bool(self) -> Option<bool> {
        match self.node() {
            Node::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn as_num(self) -> Option<Num> {
        match self.node() {
            Node::U(u) => Some(Num::U(u)),
            Node::I(i) => Some(Num::I(i)),
            Node::F(f) => Some(Num::F(f)),
            Node::Num(start, len) => Some(Num::parse(span(&self.doc.strs, (start, len)))),
            _ => None,
        }
    }

    fn num_text(self) -> Option<&'a str> {
        match self.node() {
            Node::Num(start, len) => Some(span(&self.doc.strs, (start, len))),
            _ => None,
        }
    }

    fn as_str(self) -> Option<&'a str> {
        match self.node() {
            Node::Str(start, len) => Some(span(&self.doc.strs, (start, len))),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self.node() {
            Node::Arr(_, len) | Node::Obj(_, len) => len as usize,
            _ => 0,
        }
    }

    fn item(self, i: usize) -> Self {
        match self.node() {
            Node::Arr(start, len) if i < len as usize => self.at(self.doc.kids[start as usize + i]),
            _ => panic!("item {i} of a node that is not an array that long"),
        }
    }

    fn entries(self) -> impl Iterator<Item = (&'a str, Self)> + 'a {
        let doc = self.doc;
        self.entry_slice()
            .iter()
            .map(move |e| (doc.key(e.key), DocRef { doc, id: e.node }))
    }

    fn get(self, key: &str) -> Option<Self> {
        let slice = self.entry_slice();
        let i = slice
            .binary_search_by(|e| self.doc.key(e.key).cmp(key))
            .ok()?;
        Some(self.at(slice[i].node))
    }

    fn write_json(self, out: &mut String) {
        match self.node() {
            Node::Num(start, len) => out.push_str(span(&self.doc.strs, (start, len))),
            Node::Null | Node::Bool(_) | Node::U(_) | Node::I(_) | Node::F(_) | Node::Str(..) => {
                out.push_str(&self.to_value().to_string());
            }
            Node::Arr(..) => {
                out.push('[');
                for i in 0..self.len() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.item(i).write_json(out);
                }
                out.push(']');
            }
            Node::Obj(..) => {
                out.push('{');
                for (i, (k, v)) in self.entries().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(k).to_string());
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    fn to_value(self) -> Value {
        match self.node() {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::U(_) | Node::I(_) | Node::F(_) | Node::Num(..) => {
                self.as_num().map_or(Value::Null, Num::to_value)
            }
            Node::Str(..) => Value::String(self.as_str().unwrap_or_default().to_string()),
            Node::Arr(..) => {
                Value::Array((0..self.len()).map(|i| self.item(i).to_value()).collect())
            }
            Node::Obj(..) => Value::Object(
                self.entries()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
}

/// Builds a [`Doc`] bottom-up: children are pushed before their parent, and an array's or
/// object's children wait on a stack until it closes, then move to the arena in one piece.
#[derive(Default)]
struct Builder<'t> {
    /// The arenas being filled (`root` and `lines` are set at the end).
    doc: Doc,
    /// The text being parsed, when there is one: numbers are kept as written in it. serde_json
    /// hands numbers over as u64/i64/f64 only, but it visits them in text order, so the next
    /// number token after `scan` is the one being visited.
    src: &'t [u8],
    scan: usize,
    /// A buffer for printing floats.
    fmt: Vec<u8>,
    key_index: hashbrown::HashTable<u32>,
    hasher: RandomState,
    kid_stack: Vec<u32>,
    entry_stack: Vec<Entry>,
}

const TOO_LARGE: &str =
    "the document is too large for the compact form (over 4 Gi values or bytes)";

fn idx(n: usize) -> Result<u32, &'static str> {
    u32::try_from(n).map_err(|_| TOO_LARGE)
}

impl Builder<'_> {
    fn push(&mut self, node: Node) -> Result<u32, &'static str> {
        let id = idx(self.doc.nodes.len())?;
        self.doc.nodes.push(node);
        Ok(id)
    }

    fn string(&mut self, s: &str) -> Result<u32, &'static str> {
        let start = idx(self.doc.strs.len())?;
        let len = idx(s.len())?;
        idx(self.doc.strs.len() + s.len())?;
        self.doc.strs.push_str(s);
        self.push(Node::Str(start, len))
    }

    fn key(&mut self, s: &str) -> Result<u32, &'static str> {
        let hash = self.hasher.hash_one(s);
        let doc = &self.doc;
        let same = |&k: &u32| doc.key(k) == s;
        if let Some(&k) = self.key_index.find(hash, same) {
            return Ok(k);
        }
        let k = idx(self.doc.keys.len())?;
        let start = idx(self.doc.key_text.len())?;
        idx(self.doc.key_text.len() + s.len())?;
        self.doc.key_text.push_str(s);
        self.doc.keys.push((start, s.len() as u32));
        let (doc, hasher) = (&self.doc, &self.hasher);
        self.key_index
            .insert_unique(hash, k, |&k| hasher.hash_one(doc.key(k)));
        Ok(k)
    }

    /// The next number token of the source text, if the builder has one.
    fn next_number(&mut self) -> Option<(usize, usize)> {
        let src = self.src;
        let mut i = self.scan;
        while i < src.len() {
            match src[i] {
                b'"' => {
                    i += 1;
                    while i < src.len() && src[i] != b'"' {
                        i += if src[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < src.len()
                        && matches!(src[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                    {
                        i += 1;
                    }
                    self.scan = i;
                    return Some((start, i));
                }
                _ => i += 1,
            }
        }
        self.scan = src.len();
        None
    }

    /// A number node. With the source text known: an integer that fits, or a float whose text
    /// is exactly what serde_json prints for the double (so the double holds the written value
    /// and prints back as written), is held as such (the float read correctly rounded, which
    /// serde_json's default parser is not); any other number (more digits than a double holds,
    /// or another spelling such as `1.50` or `1e2`) is kept as written, compared by its exact
    /// decimal value and printed as written.
    fn number(&mut self, node: Node) -> Result<u32, &'static str> {
        if let Some((a, b)) = self.next_number() {
            // The token is ASCII (digits, signs, '.', 'e') by construction.
            let text = std::str::from_utf8(&self.src[a..b]).unwrap_or_default();
            let plain_int = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
            match node {
                Node::U(_) if plain_int(text) => return self.push(node),
                Node::I(_) if text.strip_prefix('-').is_some_and(plain_int) => {
                    return self.push(node);
                }
                Node::F(_) => {
                    if let Ok(f) = text.parse::<f64>()
                        && f.is_finite()
                    {
                        self.fmt.clear();
                        // A finite double always serialises.
                        serde_json::to_writer(&mut self.fmt, &f).ok();
                        if self.fmt == text.as_bytes() {
                            return self.push(Node::F(f));
                        }
                    }
                }
                _ => {}
            }
            let start = idx(self.doc.strs.len())?;
            let len = idx(text.len())?;
            idx(self.doc.strs.len() + text.len())?;
            self.doc.strs.push_str(text);
            return self.push(Node::Num(start, len));
        }
        self.push(node)
    }

    fn finish_array(&mut self, base: usize) -> Result<u32, &'static str> {
        let start = idx(self.doc.kids.len())?;
        let len = idx(self.kid_stack.len() - base)?;
        idx(self.doc.kids.len() + len as usize)?;
        self.doc.kids.extend(self.kid_stack.drain(base..));
        self.push(Node::Arr(start, len))
    }

    fn finish_object(&mut self, base: usize) -> Result<u32, &'static str> {
        let doc = &self.doc;
        let run = &mut self.entry_stack[base..];
        // A stable sort keeps repeated keys in document order; the last of each wins.
        run.sort_by(|a, b| doc.key(a.key).cmp(doc.key(b.key)));
        let start = idx(self.doc.entries.len())?;
        for (i, e) in run.iter().enumerate() {
            if run.get(i + 1).is_none_or(|next| next.key != e.key) {
                self.doc.entries.push(*e);
            }
        }
        let len = idx(self.doc.entries.len())? - start;
        self.entry_stack.truncate(base);
        self.push(Node::Obj(start, len))
    }

    fn finish(self, root: u32) -> Doc {
        let mut doc = self.doc;
        doc.nodes.shrink_to_fit();
        doc.kids.shrink_to_fit();
        doc.entries.shrink_to_fit();
        doc.strs.shrink_to_fit();
        doc.keys.shrink_to_fit();
        doc.key_text.shrink_to_fit();
        doc.root = root;
        doc
    }
}

/// Deserializes one value into the builder and answers its node id; with `key`, an object
/// key into the interned keys, answering the key's id.
struct Seed<'b, 't> {
    b: &'b mut Builder<'t>,
    key: bool,
}

impl<'b, 't> Seed<'b, 't> {
    fn value(b: &'b mut Builder<'t>) -> Self {
        Seed { b, key: false }
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = u32;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<u32, D::Error> {
        if self.key {
            deserializer.deserialize_str(self)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.key {
            "an object key"
        } else {
            "any JSON value"
        })
    }

    fn visit_unit<E: de::Error>(self) -> Result<u32, E> {
        self.b.push(Node::Null).map_err(E::custom)
    }

    fn visit_none<E: de::Error>(self) -> Result<u32, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<u32, E> {
        self.b.push(Node::Bool(v)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        let node = match Num::from_i64(v) {
            Num::U(u) => Node::U(u),
            _ => Node::I(v),
        };
        self.b.number(node).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        self.b.number(Node::U(v)).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u32, E> {
        // serde_json's Value turns a non-finite float into null; so does this.
        let node = if v.is_finite() {
            Node::F(v)
        } else {
            Node::Null
        };
        self.b.number(node).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        if self.key {
            self.b.key(v).map_err(E::custom)
        } else {
            self.b.string(v).map_err(E::custom)
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let b = self.b;
        let base = b.kid_stack.len();
        while let Some(id) = seq.next_element_seed(Seed::value(&mut *b))? {
            b.kid_stack.push(id);
        }
        b.finish_array(base).map_err(de::Error::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u32, A::Error> {
        let b = self.b;
        let base = b.entry_stack.len();
        while let Some(key) = map.next_key_seed(Seed {
            b: &mut *b,
            key: true,
        })? {
            let node = map.next_value_seed(Seed::value(&mut *b))?;
            b.entry_stack.push(Entry { key, node });
        }
        b.finish_object(base).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_value() {
        let v = json!({"b": [1, -2, 2.5, "x", null, true, {"z": {}, "a": []}], "a": "y", "": 0});
        let d = Doc::from_value(&v);
        assert_eq!(d.to_value(), v);
        let parsed = Doc::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.to_value(), v);
        assert!(parsed.root().same(d.root()));
    }

    #[test]
    fn keeps_keys_sorted_and_the_last_of_a_repeated_key() {
        let d = Doc::parse(br#"{"b": 1, "a": 2, "b": 3, "c": {"k": 1, "k": 2}}"#).unwrap();
        let keys: Vec<&str> = d.root().entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(
            d.to_value(),
            serde_json::from_str::<Value>(r#"{"a":2,"b":3,"c":{"k":2}}"#).unwrap()
        );
        assert_eq!(d.root().get("b").and_then(Tree::as_num), Some(Num::U(3)));
        assert!(d.root().get("z").is_none());
    }

    #[test]
    fn reports_bad_json_with_its_position() {
        let e = Doc::parse(b"{\n  \"a\": [1, 2,\n}").unwrap_err();
        assert_eq!(e.line(), 3, "{e}");
        assert!(Doc::parse(b"[1] [2]").is_err());
    }

    #[test]
    fn json_lines_become_one_array() {
        let d = Doc::parse_lines("{\"a\": 1}\n\n[2]\n").unwrap();
        assert_eq!(d.to_value(), json!([{"a": 1}, [2]]));
    }

    #[test]
    fn holds_a_record_log_in_a_few_bytes_per_byte_of_text() {
        let rows: Vec<Value> = (0..2000)
            .map(
                |i| json!({"id": format!("r{i}"), "n": i, "x": i as f64 / 3.0, "tags": ["a", "b"]}),
            )
            .collect();
        let text = Value::Array(rows).to_string();
        let d = Doc::parse(text.as_bytes()).unwrap();
        assert!(
            d.heap_bytes() < 3 * text.len(),
            "{} bytes held for {} bytes of text",
            d.heap_bytes(),
            text.len()
        );
    }
}
