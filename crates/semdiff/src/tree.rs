//! What the differ needs of a JSON document, as a small trait, so one differ walks both
//! `serde_json::Value` (the API's documents) and the compact [`crate::Doc`] (large documents read
//! from text, at a fraction of `Value`'s memory).

use serde_json::{Number, Value};

/// The JSON type of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// A JSON number as serde_json holds it without `arbitrary_precision`: a non-negative integer,
/// a negative integer or a float. Equality is serde_json's (`1` and `1.0` differ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Num::U(u) => i64::try_from(u).ok(),
            Num::I(i) => Some(i),
            Num::F(_) => None,
        }
    }

    pub fn as_u64(self) -> Option<u64> {
        match self {
            Num::U(u) => Some(u),
            Num::I(_) | Num::F(_) => None,
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Num::U(u) => u as f64,
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    /// From a signed integer, kept as `U` when non-negative, as serde_json does.
    pub fn from_i64(i: i64) -> Num {
        if i >= 0 { Num::U(i as u64) } else { Num::I(i) }
    }

    pub fn from_number(n: &Number) -> Num {
        if let Some(u) = n.as_u64() {
            Num::U(u)
        } else if let Some(i) = n.as_i64() {
            Num::I(i)
        } else {
            Num::F(n.as_f64().unwrap_or(0.0))
        }
    }

    /// A number from its JSON text (a valid JSON number), correctly rounded when it is a float.
    pub fn parse(text: &str) -> Num {
        if let Ok(u) = text.parse::<u64>() {
            Num::U(u)
        } else if let Ok(i) = text.parse::<i64>() {
            Num::I(i)
        } else {
            Num::F(text.parse::<f64>().unwrap_or(0.0))
        }
    }

    /// The shortest decimal text that reads back as this number.
    pub fn canonical(self) -> String {
        match self {
            Num::U(u) => u.to_string(),
            Num::I(i) => i.to_string(),
            Num::F(f) => f.to_string(),
        }
    }

    pub fn to_value(self) -> Value {
        match self {
            Num::U(u) => Value::Number(u.into()),
            Num::I(i) => Value::Number(i.into()),
            Num::F(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        }
    }
}

/// A read-only view of one node of a JSON document. Object entries come in key order (byte
/// order, as `serde_json::Map` keeps them), one entry per key.
pub(crate) trait Tree<'a>: Copy + 'a {
    fn kind(self) -> Kind;
    fn as_bool(self) -> Option<bool>;
    fn as_num(self) -> Option<Num>;
    fn as_str(self) -> Option<&'a str>;
    /// A number's text as written in the source, when known.
    fn num_text(self) -> Option<&'a str> {
        None
    }
    /// The number of array elements or object entries (0 for scalars).
    fn len(self) -> usize;
    /// Array element `i` (`i < len()`).
    fn item(self, i: usize) -> Self;
    /// Object entries in key order (empty for non-objects).
    fn entries(self) -> impl Iterator<Item = (&'a str, Self)> + 'a;
    /// The value of an object's key.
    fn get(self, key: &str) -> Option<Self>;
    /// The node as an owned `Value`.
    fn to_value(self) -> Value;
    /// Appends the node's compact JSON text to `out` (for reported changes): as `Value` prints
    /// it, except that a number kept as written prints as written.
    fn write_json(self, out: &mut String) {
        out.push_str(&self.to_value().to_string());
    }
    /// An identity of this node, distinct from every other node alive at the same time (its
    /// address): the differ caches subtree hashes and comparisons under it.
    fn ident(self) -> usize;
    /// For a node of an indexed document: (the document's identity, this node's index, the
    /// document's node count), so per-node data can live in a plain vector.
    fn dense(self) -> Option<(usize, usize, usize)> {
        None
    }

    /// Exact structural equality, as `Value`'s `==`.
    fn same(self, other: Self) -> bool {
        if self.kind() != other.kind() {
            return false;
        }
        match self.kind() {
            Kind::Null => true,
            Kind::Bool => self.as_bool() == other.as_bool(),
            Kind::Number => {
                exact_num_eq(self, other).unwrap_or_else(|| self.as_num() == other.as_num())
            }
            Kind::String => self.as_str() == other.as_str(),
            Kind::Array => {
                self.len() == other.len()
                    && (0..self.len()).all(|i| self.item(i).same(other.item(i)))
            }
            Kind::Object => {
                self.len() == other.len()
                    && self
                        .entries()
                        .zip(other.entries())
                        .all(|((ka, va), (kb, vb))| ka == kb && va.same(vb))
            }
        }
    }
}

impl<'a> Tree<'a> for &'a Value {
    fn kind(self) -> Kind {
        match self {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(_) => Kind::Number,
            Value::String(_) => Kind::String,
            Value::Array(_) => Kind::Array,
            Value::Object(_) => Kind::Object,
        }
    }

    fn as_bool(self) -> Option<bool> {
        Value::as_bool(self)
    }

    fn as_num(self) -> Option<Num> {
        match self {
            Value::Number(n) => Some(Num::from_number(n)),
            _ => None,
        }
    }

    fn as_str(self) -> Option<&'a str> {
        Value::as_str(self)
    }

    fn len(self) -> usize {
        match self {
            Value::Array(a) => a.len(),
            Value::Object(m) => m.len(),
            _ => 0,
        }
    }

    fn item(self, i: usize) -> Self {
        &self.as_array().expect("item of an array")[i]
    }

    fn entries(self) -> impl Iterator<Item = (&'a str, Self)> + 'a {
        self.as_object()
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }

    fn get(self, key: &str) -> Option<Self> {
        self.as_object()?.get(key)
    }

    fn to_value(self) -> Value {
        self.clone()
    }

    fn ident(self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    fn same(self, other: Self) -> bool {
        self == other
    }
}

/// The exact value of a JSON number's text as (negative, significant digits, exponent of the
/// last digit), so that two texts of the same decimal value (`1.50`, `15e-1`) give the same key
/// and any two different values different keys, however many digits they carry.
pub(crate) fn decimal_key(text: &str) -> (bool, String, i64) {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(p) => (&rest[..p], rest[p + 1..].parse::<i64>().unwrap_or(0)),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = int.chars().chain(frac.chars()).collect();
    let mut exp = exp.saturating_sub(frac.len() as i64);
    let trailing = digits.len() - digits.trim_end_matches('0').len();
    digits.truncate(digits.len() - trailing);
    exp = exp.saturating_add(trailing as i64);
    let digits = digits.trim_start_matches('0').to_string();
    if digits.is_empty() {
        // Zero, whatever its sign or exponent.
        return (false, digits, 0);
    }
    (neg, digits, exp)
}

/// When either number was kept as written (its text is not what its double or integer prints
/// as): whether the two are the same decimal value. `None` when neither was, and the parsed
/// values say it exactly.
pub(crate) fn exact_num_eq<'a, T: Tree<'a>>(a: T, b: T) -> Option<bool> {
    if a.num_text().is_none() && b.num_text().is_none() {
        return None;
    }
    let key = |v: T| match v.num_text() {
        Some(t) => decimal_key(t),
        None => decimal_key(&v.as_num().map_or_else(String::new, Num::canonical)),
    };
    Some(key(a) == key(b))
}
