//! The structural JSON differ: walks both documents together and reports changes at the
//! deepest differing path, honouring the compiled options and the work limits.
//!
//! Arrays are aligned in O(n log n): common prefix and suffix are trimmed, the middle is
//! matched by a canonical hash (confirmed by a real comparison), the longest increasing run
//! of matches is kept in place and the other matches are reported as `moved`; what is left
//! is paired up gap by gap and compared recursively. Only multiset matching of unordered
//! arrays needs O(n·m) work and that is capped by `max_pairwise`.
//!
//! This module walks the documents (values, objects, strings, hashes); [`ordered`] aligns
//! ordered arrays, [`unordered`] matches unordered and keyed ones.

use std::collections::{HashMap, VecDeque};

use crate::bound::{bound_tree, json_len};
use crate::options::Compiled;
use crate::pointer::{Path, Seg, render};
use crate::tree::{Kind, Num, Tree, exact_num_eq};
use crate::{Change, Op};

mod ordered;
mod unordered;

pub(crate) use ordered::stay_flags;

/// Walks two documents and collects changes.
pub(crate) struct Differ<'o> {
    pub opts: &'o Compiled,
    pub changes: Vec<Change>,
    /// Probe mode: stop at the first difference and record nothing.
    probe: bool,
    found: bool,
    pub truncated: bool,
    pub degraded: Option<String>,
    /// Part of the input was not compared at all (not just coarsely), so `equal` cannot be
    /// answered `true`.
    pub incomplete: bool,
    pub nodes: usize,
    /// Bytes of JSON the changes recorded so far take in the result.
    bytes: u64,
    /// Each subtree's canonical hash, computed once (keyed by [`Tree::ident`]).
    hashes: HashMap<usize, u64, IdentHash>,
    /// The same for the nodes of indexed documents ([`Tree::dense`]): per document, a hash per
    /// node index (0 = not computed yet).
    dense: Vec<(usize, Vec<u64>)>,
    /// Each pair of subtrees already probed for equality, and the answer.
    memo: HashMap<(usize, usize), bool, IdentHash>,
}

/// Hashes node identities (addresses) with one multiply-xorshift round instead of SipHash: the
/// keys are not chosen by the input, and the maps hold a few entries per value of both
/// documents, so their hashing is most of their cost.
#[derive(Clone, Copy, Default)]
struct IdentHash;

impl std::hash::BuildHasher for IdentHash {
    type Hasher = IdentHasher;
    fn build_hasher(&self) -> IdentHasher {
        IdentHasher(0)
    }
}

struct IdentHasher(u64);

impl std::hash::Hasher for IdentHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = self.0.rotate_left(29) ^ (n as u64);
    }
}

/// Bytes of a result's JSON kept for what is not a change: `equal`, `truncated`, `degraded`.
const RESULT_FRAME_BYTES: u64 = 512;

const IGNORED_HASH: u64 = 0x5bd1_e995_1234_5678;

fn mix(mut z: u64) -> u64 {
    // The SplitMix64 finaliser.
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_str(s: &str) -> u64 {
    // FNV-1a.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

impl<'o> Differ<'o> {
    pub fn new(opts: &'o Compiled) -> Self {
        Differ {
            opts,
            changes: Vec::new(),
            probe: false,
            found: false,
            truncated: false,
            degraded: None,
            incomplete: false,
            nodes: 0,
            bytes: 0,
            hashes: HashMap::default(),
            dense: Vec::new(),
            memo: HashMap::default(),
        }
    }

    pub fn stopped(&self) -> bool {
        (self.probe && self.found) || self.truncated
    }

    pub fn degrade(&mut self, reason: String) {
        if self.degraded.is_none() {
            self.degraded = Some(reason);
        }
    }

    /// Records a change unless its path is ignored.
    pub fn emit<'t, T: Tree<'t>>(
        &mut self,
        op: Op,
        path: &[Seg<'_>],
        from: Option<String>,
        before: Option<T>,
        after: Option<T>,
    ) {
        if self.opts.is_ignored(path) {
            return;
        }
        if self.probe {
            self.found = true;
            return;
        }
        if self.changes.len() >= self.opts.max_changes {
            self.truncated = true;
            return;
        }
        let limit = self.opts.max_value_bytes;
        let bounded = |v: Option<T>| match v.map(|v| bound_tree(v, limit)) {
            Some((v, cut)) => (Some(v), cut),
            None => (None, None),
        };
        let (before, before_truncated) = bounded(before);
        let (after, after_truncated) = bounded(after);
        let change = Change {
            op,
            path: render(path),
            from,
            before,
            after,
            before_truncated,
            after_truncated,
        };
        // The change and the comma before it.
        let size = json_len(&change) + 1;
        let budget = (self.opts.max_result_bytes as u64).saturating_sub(RESULT_FRAME_BYTES);
        if self.bytes + size > budget {
            self.truncated = true;
            return;
        }
        self.bytes += size;
        self.changes.push(change);
    }

    /// True when `a` and `b` are equal under the options (no change would be reported).
    ///
    /// Values equal under the options hash equal, so different hashes answer at once; equal
    /// hashes are confirmed by a real comparison, and every answer is kept, so a pair of
    /// subtrees is compared at most once however often the alignment asks about it. This is
    /// what keeps deep nesting linear instead of exponential.
    pub fn probe_equal<'a, T: Tree<'a>>(&mut self, a: T, b: T, path: &mut Path<'a>) -> bool {
        let compound = matches!(a.kind(), Kind::Array | Kind::Object) && a.kind() == b.kind();
        if compound && self.hash_value(a, path) != self.hash_value(b, path) {
            return false;
        }
        // Scalars are compared directly; only arrays and objects are worth remembering.
        let key = (a.ident(), b.ident());
        if compound && let Some(&eq) = self.memo.get(&key) {
            return eq;
        }
        let (probe, found) = (self.probe, self.found);
        self.probe = true;
        self.found = false;
        self.diff_inner(a, b, path);
        let eq = !self.found;
        self.probe = probe;
        self.found = found;
        if compound {
            self.memo.insert(key, eq);
        }
        eq
    }

    fn probe_at<'a, T: Tree<'a>>(&mut self, a: T, b: T, path: &mut Path<'a>, i: usize) -> bool {
        path.push(Seg::Idx(i));
        let eq = self.probe_equal(a, b, path);
        path.pop();
        eq
    }

    fn diff_at<'a, T: Tree<'a>>(&mut self, a: T, b: T, path: &mut Path<'a>, i: usize) {
        path.push(Seg::Idx(i));
        self.diff(a, b, path);
        path.pop();
    }

    fn emit_at<'t, T: Tree<'t>>(
        &mut self,
        op: Op,
        path: &mut Path<'_>,
        i: usize,
        before: Option<T>,
        after: Option<T>,
    ) {
        path.push(Seg::Idx(i));
        self.emit(op, path, None, before, after);
        path.pop();
    }

    fn norm<'s>(&self, s: &'s str) -> std::borrow::Cow<'s, str> {
        let mut cur = std::borrow::Cow::Borrowed(s);
        for (re, rep) in &self.opts.normalize {
            if let std::borrow::Cow::Owned(o) = re.replace_all(&cur, rep.as_str()) {
                cur = std::borrow::Cow::Owned(o);
            }
        }
        cur
    }

    fn str_eq(&self, a: &str, b: &str) -> bool {
        if self.opts.normalize.is_empty() {
            a == b
        } else {
            a == b || self.norm(a) == self.norm(b)
        }
    }

    pub fn num_eq(&self, a: Num, b: Num) -> bool {
        let exact = |n: Num| {
            n.as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
        };
        if let (Some(x), Some(y)) = (exact(a), exact(b))
            && x == y
        {
            return true;
        }
        let (x, y) = (a.as_f64(), b.as_f64());
        if x == y && (exact(a).is_none() || exact(b).is_none()) {
            return true;
        }
        let d = (x - y).abs();
        if let Some(t) = self.opts.abs_tol
            && d <= t
        {
            return true;
        }
        if let Some(t) = self.opts.rel_tol
            && d <= t * x.abs().max(y.abs())
        {
            return true;
        }
        false
    }

    /// Canonical hash of a value under the options: equal values hash equal. Computed once per
    /// subtree (children first) and kept.
    fn hash_value<'a, T: Tree<'a>>(&mut self, v: T, path: &mut Path<'a>) -> u64 {
        if self.opts.is_ignored(path) {
            return IGNORED_HASH;
        }
        // Scalars are hashed on the spot; arrays and objects once, then looked up.
        if !matches!(v.kind(), Kind::Array | Kind::Object) {
            return self.hash_uncached(v, path);
        }
        if let Some((doc, id, count)) = v.dense() {
            let slot = match self.dense.iter().position(|(d, _)| *d == doc) {
                Some(k) => k,
                None => {
                    self.dense.push((doc, vec![0; count]));
                    self.dense.len() - 1
                }
            };
            let h = self.dense[slot].1[id];
            if h != 0 {
                return h;
            }
            // 0 marks "not computed": a real 0 is stored as 1 (a hash is only compared).
            let h = self.hash_uncached(v, path).max(1);
            self.dense[slot].1[id] = h;
            return h;
        }
        if let Some(&h) = self.hashes.get(&v.ident()) {
            return h;
        }
        let h = self.hash_uncached(v, path);
        self.hashes.insert(v.ident(), h);
        h
    }

    /// Not counted against `max_nodes`: each subtree is hashed once, so this is linear.
    fn hash_uncached<'a, T: Tree<'a>>(&mut self, v: T, path: &mut Path<'a>) -> u64 {
        match v.kind() {
            Kind::Null => mix(1),
            Kind::Bool => mix(2 + u64::from(v.as_bool() == Some(true))),
            Kind::Number => {
                if self.opts.has_tolerance() {
                    mix(4)
                } else {
                    // Numbers of equal decimal value round to the same double, so this hash
                    // agrees with exact comparison of the text too.
                    let f = v.as_num().map_or(0.0, Num::as_f64);
                    let f = if f == 0.0 { 0.0 } else { f };
                    mix(5 ^ f.to_bits())
                }
            }
            Kind::String => hash_str(&self.norm(v.as_str().unwrap_or_default())) ^ 6,
            Kind::Array => {
                let opts = self.opts;
                let unordered = opts.is_unordered(path) || opts.array_key(path).is_some();
                let mut h = mix(7 + u64::from(unordered));
                for i in 0..v.len() {
                    path.push(Seg::Idx(i));
                    let eh = self.hash_value(v.item(i), path);
                    path.pop();
                    if eh == IGNORED_HASH {
                        continue;
                    }
                    h = if unordered {
                        h.wrapping_add(mix(eh))
                    } else {
                        mix(h ^ eh)
                    };
                }
                h
            }
            Kind::Object => {
                let mut h = mix(9);
                for (k, val) in v.entries() {
                    if self.opts.ignore_keys.contains(k) {
                        continue;
                    }
                    path.push(Seg::Key(k));
                    let vh = if self.opts.is_ignored(path) {
                        None
                    } else {
                        Some(self.hash_value(val, path))
                    };
                    path.pop();
                    if let Some(vh) = vh {
                        h = h.wrapping_add(mix(hash_str(k) ^ vh.rotate_left(17)));
                    }
                }
                h
            }
        }
    }

    /// Hashes every subtree of a document once, each at its own path, before any comparison.
    pub fn prime<'a, T: Tree<'a>>(&mut self, root: T) {
        let mut path = Vec::new();
        self.hash_value(root, &mut path);
    }

    /// Compares `a` (baseline) with `b` (candidate) at `path`.
    pub fn diff<'a, T: Tree<'a>>(&mut self, a: T, b: T, path: &mut Path<'a>) {
        if self.stopped() {
            return;
        }
        if self.probe {
            // Probing: the answer for this pair may be known already.
            if !self.probe_equal(a, b, path) {
                self.found = true;
            }
            return;
        }
        self.diff_inner(a, b, path);
    }

    fn diff_inner<'a, T: Tree<'a>>(&mut self, a: T, b: T, path: &mut Path<'a>) {
        if self.stopped() {
            return;
        }
        self.nodes += 1;
        if self.nodes > self.opts.max_nodes {
            self.degrade(format!(
                "max_nodes ({}) exceeded: the rest was compared as whole subtrees",
                self.opts.max_nodes
            ));
            if !a.same(b) {
                let op = if a.kind() == b.kind() {
                    Op::Changed
                } else {
                    Op::TypeChanged
                };
                self.emit(op, path, None, Some(a), Some(b));
            }
            return;
        }
        let equal = match (a.kind(), b.kind()) {
            (Kind::Null, Kind::Null) => true,
            (Kind::Bool, Kind::Bool) => a.as_bool() == b.as_bool(),
            (Kind::Number, Kind::Number) => {
                // Without a tolerance, a number kept as written is compared exactly.
                match exact_num_eq(a, b).filter(|_| !self.opts.has_tolerance()) {
                    Some(eq) => eq,
                    None => match (a.as_num(), b.as_num()) {
                        (Some(x), Some(y)) => self.num_eq(x, y),
                        _ => false,
                    },
                }
            }
            (Kind::String, Kind::String) => self.str_eq(
                a.as_str().unwrap_or_default(),
                b.as_str().unwrap_or_default(),
            ),
            (Kind::Array, Kind::Array) => return self.diff_array(a, b, path),
            (Kind::Object, Kind::Object) => return self.diff_object(a, b, path),
            _ => return self.emit(Op::TypeChanged, path, None, Some(a), Some(b)),
        };
        if !equal {
            self.emit(Op::Changed, path, None, Some(a), Some(b));
        }
    }

    fn diff_object<'a, T: Tree<'a>>(&mut self, x: T, y: T, path: &mut Path<'a>) {
        for (k, va) in x.entries() {
            if self.stopped() {
                return;
            }
            if self.opts.ignore_keys.contains(k) {
                continue;
            }
            path.push(Seg::Key(k));
            if !self.opts.is_ignored(path) {
                match y.get(k) {
                    Some(vb) => self.diff(va, vb, path),
                    None => self.emit(Op::Removed, path, None, Some(va), None),
                }
            }
            path.pop();
        }
        for (k, vb) in y.entries() {
            if self.stopped() {
                return;
            }
            if x.get(k).is_some() || self.opts.ignore_keys.contains(k) {
                continue;
            }
            path.push(Seg::Key(k));
            self.emit(Op::Added, path, None, None, Some(vb));
            path.pop();
        }
    }

    fn diff_array<'a, T: Tree<'a>>(&mut self, x: T, y: T, path: &mut Path<'a>) {
        let opts = self.opts;
        if let Some(field) = opts.array_key(path) {
            let unordered = opts.is_unordered(path);
            self.diff_keyed(x, y, path, field, unordered);
        } else if opts.is_unordered(path) {
            let xs: Vec<usize> = (0..x.len()).collect();
            let ys: Vec<usize> = (0..y.len()).collect();
            self.diff_unordered(x, y, xs, ys, path);
        } else {
            self.diff_ordered(x, y, path);
        }
    }
}

#[cfg(test)]
mod tests;
