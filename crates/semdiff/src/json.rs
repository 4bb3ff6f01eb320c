//! The structural JSON differ: walks both documents together and reports changes at the
//! deepest differing path, honouring the compiled options and the work limits.
//!
//! Arrays are aligned in O(n log n): common prefix and suffix are trimmed, the middle is
//! matched by a canonical hash (confirmed by a real comparison), the longest increasing run
//! of matches is kept in place and the other matches are reported as `moved`; what is left
//! is paired up gap by gap and compared recursively. Only multiset matching of unordered
//! arrays needs O(n·m) work and that is capped by `max_pairwise`.

use std::collections::{HashMap, VecDeque};

use crate::bound::{bound_value, json_len};
use crate::options::Compiled;
use crate::pointer::{Path, Seg, render};
use crate::tree::{Kind, Num, Tree, exact_num_eq};
use crate::{Change, Op};

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

/// The most edits [`myers`] looks for before giving up (its memory grows with the square).
const MAX_EDIT_DISTANCE: usize = 2048;

/// Work [`myers`] may spend on one array, in diagonal steps.
const MAX_EDIT_WORK: usize = 50_000_000;

/// A longest common subsequence of `a` and `b` by Myers' O((N+M)·D) shortest edit script, as
/// matched positions in increasing order; `None` when more than [`MAX_EDIT_DISTANCE`] edits
/// (or [`MAX_EDIT_WORK`] steps) would be needed.
pub(crate) fn myers(a: &[u64], b: &[u64]) -> Option<Vec<(usize, usize)>> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let total = (a.len() + b.len()).max(1);
    let dmax = (a.len() + b.len())
        .min(MAX_EDIT_DISTANCE)
        .min((MAX_EDIT_WORK / total).max(64)) as isize;
    let off = dmax + 1;
    let mut v = vec![0isize; (2 * dmax + 3) as usize];
    // The furthest x on each diagonal before round d, for diagonals -d-1..=d+1.
    let mut trace: Vec<Vec<isize>> = Vec::new();
    let mut end = None;
    'rounds: for d in 0..=dmax {
        trace.push(v[(off - d - 1) as usize..=(off + d + 1) as usize].to_vec());
        let mut k = -d;
        while k <= d {
            let mut xx =
                if k == -d || (k != d && v[(off + k - 1) as usize] < v[(off + k + 1) as usize]) {
                    v[(off + k + 1) as usize]
                } else {
                    v[(off + k - 1) as usize] + 1
                };
            let mut yy = xx - k;
            while xx < n && yy < m && a[xx as usize] == b[yy as usize] {
                xx += 1;
                yy += 1;
            }
            v[(off + k) as usize] = xx;
            if xx >= n && yy >= m {
                end = Some(d);
                break 'rounds;
            }
            k += 2;
        }
    }
    let dend = end?;
    let mut out = Vec::new();
    let (mut xx, mut yy) = (n, m);
    for d in (0..=dend).rev() {
        let snap = &trace[d as usize];
        let at = |k: isize| snap[(k + d + 1) as usize];
        let k = xx - yy;
        let prev_k = if k == -d || (k != d && at(k - 1) < at(k + 1)) {
            k + 1
        } else {
            k - 1
        };
        let prev_x = if d == 0 { 0 } else { at(prev_k) };
        let prev_y = if d == 0 { 0 } else { prev_x - prev_k };
        while xx > prev_x && yy > prev_y {
            xx -= 1;
            yy -= 1;
            out.push((xx as usize, yy as usize));
        }
        xx = prev_x;
        yy = prev_y;
    }
    out.reverse();
    Some(out)
}

/// How many changes an alignment (increasing matched positions of sequences of lengths `n`
/// and `m`) reports before moves are looked for: each gap between matches reports its longer
/// side.
fn reported(matches: &[(usize, usize)], n: usize, m: usize) -> usize {
    let (mut p0, mut q0, mut total) = (0, 0, 0);
    for &(p, q) in matches.iter().chain(std::iter::once(&(n, m))) {
        total += (p - p0).max(q - q0);
        p0 = p + 1;
        q0 = q + 1;
    }
    total
}

/// Of matched pairs `(i, j)` (baseline index, candidate index; sorted by `i`, each `j` once):
/// which stay in place, the others being reported as moved. The pairs that stay are a longest
/// chain with `j` increasing (a longest increasing subsequence), and among the longest chains
/// the one keeping the most elements at their own index: in `[a, b, c] -> [c, b, a]` it is `a`
/// and `c` that moved, not `b`, which is where it was.
///
/// A Fenwick tree over `j` holds the best chain ending below each `j`, so this is
/// `O(n log n)` like the plain patience method; no crate offers the tie-break.
pub(crate) fn stay_flags(pairs: &[(usize, usize)]) -> Vec<bool> {
    // A chain's score: (length, pairs kept at their own index); then the index of its last pair.
    type Best = Option<((usize, usize), usize)>;
    let size = pairs.iter().map(|&(_, j)| j + 1).max().unwrap_or(0);
    let mut tree: Vec<Best> = vec![None; size + 1];
    let mut prev: Vec<Option<usize>> = vec![None; pairs.len()];
    let mut best: Best = None;
    for (k, &(i, j)) in pairs.iter().enumerate() {
        // The best chain whose last `j` is below this one: Fenwick positions 1..=j.
        let mut below: Best = None;
        let mut x = j;
        while x > 0 {
            below = below.max(tree[x]);
            x &= x - 1;
        }
        let (len, kept) = below.map_or((0, 0), |(score, _)| score);
        prev[k] = below.map(|(_, last)| last);
        let here = Some(((len + 1, kept + usize::from(i == j)), k));
        best = best.max(here);
        let mut x = j + 1;
        while x <= size {
            tree[x] = tree[x].max(here);
            x += x & x.wrapping_neg();
        }
    }
    let mut flags = vec![false; pairs.len()];
    let mut cur = best.map(|(_, last)| last);
    while let Some(k) = cur {
        flags[k] = true;
        cur = prev[k];
    }
    flags
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
        let bounded = |v: Option<T>| match v.map(|v| bound_value(v.to_value(), limit)) {
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

    /// Matches elements of `x[xs]` to `y[ys]` by canonical hash, confirming each match.
    /// Returns the matches (sorted by baseline index) and the unmatched indices.
    fn match_by_hash<'a, T: Tree<'a>>(
        &mut self,
        x: T,
        y: T,
        xs: &[usize],
        ys: &[usize],
        path: &mut Path<'a>,
    ) -> (Vec<(usize, usize)>, Vec<usize>, Vec<usize>) {
        let mut buckets: HashMap<u64, VecDeque<usize>> = HashMap::with_capacity(ys.len());
        for &j in ys {
            path.push(Seg::Idx(j));
            let h = self.hash_value(y.item(j), path);
            path.pop();
            buckets.entry(h).or_default().push_back(j);
        }
        let mut matched = Vec::new();
        let mut ux = Vec::new();
        let mut used = vec![false; y.len()];
        for &i in xs {
            if self.stopped() {
                break;
            }
            path.push(Seg::Idx(i));
            let h = self.hash_value(x.item(i), path);
            path.pop();
            let mut hit = None;
            if let Some(q) = buckets.get_mut(&h) {
                // A few tries: equal hashes almost always mean equal values, except with
                // float tolerances, where every number hashes alike.
                for k in 0..q.len().min(8) {
                    let j = q[k];
                    if self.probe_at(x.item(i), y.item(j), path, i) {
                        q.remove(k);
                        hit = Some(j);
                        break;
                    }
                }
            }
            match hit {
                Some(j) => {
                    used[j] = true;
                    matched.push((i, j));
                }
                None => ux.push(i),
            }
        }
        let uy = ys.iter().copied().filter(|&j| !used[j]).collect();
        (matched, ux, uy)
    }

    /// Aligns the middle of two ordered arrays: a shortest edit script over the elements'
    /// hashes (Myers) keeps equal elements in order, so a value replaced in place is a change
    /// even when the same value occurs elsewhere; what is left of a gap after pairing in order
    /// (and two gaps side by side whose elements swapped) is matched by hash, and those matches
    /// are the candidates for `moved`. Past [`MAX_EDIT_DISTANCE`] it falls back to matching by
    /// hash alone. Returns the matches (sorted by baseline index) and the unmatched indices.
    fn align_ordered<'a, T: Tree<'a>>(
        &mut self,
        x: T,
        y: T,
        xs: &[usize],
        ys: &[usize],
        path: &mut Path<'a>,
    ) -> (Vec<(usize, usize)>, Vec<usize>, Vec<usize>) {
        let mut hx = Vec::with_capacity(xs.len());
        for &i in xs {
            path.push(Seg::Idx(i));
            hx.push(self.hash_value(x.item(i), path));
            path.pop();
        }
        let mut hy = Vec::with_capacity(ys.len());
        for &j in ys {
            path.push(Seg::Idx(j));
            hy.push(self.hash_value(y.item(j), path));
            path.pop();
        }
        // Equal lengths: the elements side by side are the alignment when that reports no
        // more than the edit script would (Myers cannot tell a change in place from a removal
        // and an addition of equal cost, and with repeated values it often picks the latter).
        let in_place: Option<Vec<(usize, usize)>> = (hx.len() == hy.len()).then(|| {
            (0..hx.len())
                .filter(|&p| hx[p] == hy[p])
                .map(|p| (p, p))
                .collect()
        });
        let lcs = match (myers(&hx, &hy), in_place) {
            (Some(l), Some(s))
                if reported(&l, hx.len(), hy.len()) < reported(&s, hx.len(), hy.len()) =>
            {
                l
            }
            (Some(_), Some(s)) => s,
            (Some(l), None) => l,
            (None, Some(s)) => s,
            (None, None) => return self.match_by_hash(x, y, xs, ys, path),
        };
        // Confirm the hash matches (a collision, or a tolerance, can make equal hashes of
        // different values: those are left to be paired in place).
        let mut anchors = Vec::with_capacity(lcs.len());
        for (p, q) in lcs {
            if self.probe_at(x.item(xs[p]), y.item(ys[q]), path, xs[p]) {
                anchors.push((p, q));
            }
        }
        // The gaps between anchors, as (x range, y range) in positions of xs / ys.
        let mut gaps = Vec::with_capacity(anchors.len() + 1);
        let (mut p0, mut q0) = (0, 0);
        for &(p, q) in anchors.iter().chain(std::iter::once(&(xs.len(), ys.len()))) {
            gaps.push((p0..p, q0..q));
            p0 = p + 1;
            q0 = q + 1;
        }
        let mut extra: Vec<(usize, usize)> = Vec::new();
        // Two neighbouring gaps whose elements paired in order swapped places: moves.
        let mut taken_x = vec![false; xs.len()];
        let mut taken_y = vec![false; ys.len()];
        for g in 0..gaps.len().saturating_sub(1) {
            let (ax, ay) = (&gaps[g].0, &gaps[g].1);
            let (bx, by) = (&gaps[g + 1].0, &gaps[g + 1].1);
            let pa = ax.len().min(ay.len());
            let pb = bx.len().min(by.len());
            if pa == 0 || pb == 0 || pa > 16 || pb > 16 {
                continue;
            }
            for u in 0..pa {
                for v in 0..pb {
                    let (i1, j1) = (ax.start + u, ay.start + u);
                    let (i2, j2) = (bx.start + v, by.start + v);
                    if taken_x[i1] || taken_x[i2] || taken_y[j1] || taken_y[j2] {
                        continue;
                    }
                    if hx[i1] == hy[j2]
                        && hx[i2] == hy[j1]
                        && self.probe_at(x.item(xs[i1]), y.item(ys[j2]), path, xs[i1])
                        && self.probe_at(x.item(xs[i2]), y.item(ys[j1]), path, xs[i2])
                    {
                        taken_x[i1] = true;
                        taken_x[i2] = true;
                        taken_y[j1] = true;
                        taken_y[j2] = true;
                        extra.push((i1, j2));
                        extra.push((i2, j1));
                    }
                }
            }
        }
        // What a gap has beyond pairing in order: removed or added, unless it moved.
        let mut left_x = Vec::new();
        let mut left_y = Vec::new();
        for (gx, gy) in &gaps {
            let k = gx.len().min(gy.len());
            left_x.extend(
                (gx.start + k..gx.end)
                    .filter(|&p| !taken_x[p])
                    .map(|p| xs[p]),
            );
            left_y.extend(
                (gy.start + k..gy.end)
                    .filter(|&q| !taken_y[q])
                    .map(|q| ys[q]),
            );
        }
        let (moved, _, _) = self.match_by_hash(x, y, &left_x, &left_y, path);
        let mut matched: Vec<(usize, usize)> = anchors
            .iter()
            .chain(&extra)
            .map(|&(p, q)| (xs[p], ys[q]))
            .chain(moved)
            .collect();
        matched.sort_unstable();
        let mut used_x = vec![false; x.len()];
        let mut used_y = vec![false; y.len()];
        for &(i, j) in &matched {
            used_x[i] = true;
            used_y[j] = true;
        }
        let ux = xs.iter().copied().filter(|&i| !used_x[i]).collect();
        let uy = ys.iter().copied().filter(|&j| !used_y[j]).collect();
        (matched, ux, uy)
    }

    fn diff_ordered<'a, T: Tree<'a>>(&mut self, x: T, y: T, path: &mut Path<'a>) {
        let (n, m) = (x.len(), y.len());
        let mut pre = 0;
        while pre < n && pre < m && self.probe_at(x.item(pre), y.item(pre), path, pre) {
            pre += 1;
        }
        let mut suf = 0;
        while suf < n - pre
            && suf < m - pre
            && self.probe_at(x.item(n - 1 - suf), y.item(m - 1 - suf), path, n - 1 - suf)
        {
            suf += 1;
        }
        let xs: Vec<usize> = (pre..n - suf).collect();
        let ys: Vec<usize> = (pre..m - suf).collect();
        if xs.is_empty() && ys.is_empty() {
            return;
        }
        if xs.len() == 1 && ys.len() == 1 {
            // One element replaced in place: compare it directly.
            self.diff_at(x.item(xs[0]), y.item(ys[0]), path, xs[0]);
            return;
        }
        let (matched, ux, uy) = self.align_ordered(x, y, &xs, &ys, path);
        let stay = stay_flags(&matched);
        let mut anchors_x = Vec::new();
        let mut anchors_y = Vec::new();
        for (k, &(i, j)) in matched.iter().enumerate() {
            if stay[k] {
                anchors_x.push(i);
                anchors_y.push(j);
            } else {
                self.emit_moved::<T>(path, i, j);
            }
        }
        // Pair what is left gap by gap (between consecutive anchors), in order.
        let gap_x = |i: usize| anchors_x.partition_point(|&a| a < i);
        let gap_y = |j: usize| anchors_y.partition_point(|&a| a < j);
        let (mut p, mut q) = (0, 0);
        while p < ux.len() || q < uy.len() {
            if self.stopped() {
                return;
            }
            let gx = ux.get(p).map(|&i| gap_x(i));
            let gy = uy.get(q).map(|&j| gap_y(j));
            match (gx, gy) {
                (Some(a), Some(b)) if a == b => {
                    self.diff_at(x.item(ux[p]), y.item(uy[q]), path, ux[p]);
                    p += 1;
                    q += 1;
                }
                (Some(a), Some(b)) if a < b => {
                    self.emit_at(Op::Removed, path, ux[p], Some(x.item(ux[p])), None);
                    p += 1;
                }
                (Some(_), None) => {
                    self.emit_at(Op::Removed, path, ux[p], Some(x.item(ux[p])), None);
                    p += 1;
                }
                _ => {
                    self.emit_at(Op::Added, path, uy[q], None, Some(y.item(uy[q])));
                    q += 1;
                }
            }
        }
    }

    /// Reports that the element at baseline index `i` moved to candidate index `j`.
    fn emit_moved<'a, T: Tree<'a>>(&mut self, path: &mut Path<'_>, i: usize, j: usize) {
        path.push(Seg::Idx(i));
        let from = render(path);
        path.pop();
        path.push(Seg::Idx(j));
        self.emit::<T>(Op::Moved, path, Some(from), None, None);
        path.pop();
    }

    /// Similarity used to pair leftover elements of unordered arrays (0 = do not pair).
    fn similarity<'a, T: Tree<'a>>(&mut self, a: T, b: T, path: &mut Path<'a>, i: usize) -> f64 {
        match (a.kind(), b.kind()) {
            (Kind::Object, Kind::Object) => {
                let union = a.len() + b.entries().filter(|(k, _)| a.get(k).is_none()).count();
                if union == 0 {
                    return 1.0;
                }
                path.push(Seg::Idx(i));
                let mut same = 0usize;
                for (k, va) in a.entries() {
                    if let Some(vb) = b.get(k) {
                        path.push(Seg::Key(k));
                        if self.probe_equal(va, vb, path) {
                            same += 1;
                        }
                        path.pop();
                    }
                }
                path.pop();
                0.05 + same as f64 / union as f64
            }
            (ka, kb) if ka == kb => 0.05,
            _ => 0.0,
        }
    }

    fn diff_unordered<'a, T: Tree<'a>>(
        &mut self,
        x: T,
        y: T,
        xs: Vec<usize>,
        ys: Vec<usize>,
        path: &mut Path<'a>,
    ) {
        let (_, mut ux, mut uy) = self.match_by_hash(x, y, &xs, &ys, path);
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        if !ux.is_empty() && !uy.is_empty() {
            if ux.len().saturating_mul(uy.len()) <= self.opts.max_pairwise {
                // Exact matches the hash could not see (float tolerances).
                let mut used_y = vec![false; uy.len()];
                let mut rest_x = Vec::new();
                for &i in &ux {
                    let hit = (0..uy.len())
                        .find(|&k| !used_y[k] && self.probe_at(x.item(i), y.item(uy[k]), path, i));
                    match hit {
                        Some(k) => used_y[k] = true,
                        None => rest_x.push(i),
                    }
                }
                let rest_y: Vec<usize> = uy
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| !used_y[*k])
                    .map(|(_, &j)| j)
                    .collect();
                // Pair the rest greedily by similarity so changes land deep inside.
                let mut scored = Vec::new();
                for &i in &rest_x {
                    for &j in &rest_y {
                        let s = self.similarity(x.item(i), y.item(j), path, i);
                        if s > 0.0 {
                            scored.push((s, i, j));
                        }
                    }
                }
                scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
                let mut px = vec![false; x.len()];
                let mut py = vec![false; y.len()];
                for (_, i, j) in scored {
                    if !px[i] && !py[j] {
                        px[i] = true;
                        py[j] = true;
                        pairs.push((i, j));
                    }
                }
                ux = rest_x.into_iter().filter(|&i| !px[i]).collect();
                uy = rest_y.into_iter().filter(|&j| !py[j]).collect();
            } else {
                self.degrade(format!(
                    "array at {} has {}x{} unmatched elements, over max_pairwise ({}): paired in order",
                    render(path),
                    ux.len(),
                    uy.len(),
                    self.opts.max_pairwise
                ));
                let k = ux.len().min(uy.len());
                pairs.extend(ux.drain(..k).zip(uy.drain(..k)));
            }
        }
        pairs.sort_unstable();
        for (i, j) in pairs {
            self.diff_at(x.item(i), y.item(j), path, i);
        }
        for i in ux {
            self.emit_at(Op::Removed, path, i, Some(x.item(i)), None);
        }
        for j in uy {
            self.emit_at(Op::Added, path, j, None, Some(y.item(j)));
        }
    }

    fn key_of<'a, T: Tree<'a>>(&self, v: T, field: &str) -> Option<String> {
        let k = v.get(field)?;
        match k.as_str() {
            Some(s) => Some(format!("s:{}", self.norm(s))),
            None => Some(format!("v:{}", k.to_value())),
        }
    }

    fn diff_keyed<'a, T: Tree<'a>>(
        &mut self,
        x: T,
        y: T,
        path: &mut Path<'a>,
        field: &str,
        unordered: bool,
    ) {
        let mut by_key: HashMap<String, VecDeque<usize>> = HashMap::new();
        let mut unkeyed_y = Vec::new();
        for j in 0..y.len() {
            match self.key_of(y.item(j), field) {
                Some(k) => by_key.entry(k).or_default().push_back(j),
                None => unkeyed_y.push(j),
            }
        }
        let mut matched = Vec::new();
        let mut removed = Vec::new();
        let mut unkeyed_x = Vec::new();
        for i in 0..x.len() {
            match self.key_of(x.item(i), field) {
                Some(k) => match by_key.get_mut(&k).and_then(|q| q.pop_front()) {
                    Some(j) => matched.push((i, j)),
                    None => removed.push(i),
                },
                None => unkeyed_x.push(i),
            }
        }
        if !unordered {
            let stay = stay_flags(&matched);
            for (k, &(i, j)) in matched.iter().enumerate() {
                if !stay[k] {
                    self.emit_moved::<T>(path, i, j);
                }
            }
        }
        for &(i, j) in &matched {
            self.diff_at(x.item(i), y.item(j), path, i);
        }
        for i in removed {
            self.emit_at(Op::Removed, path, i, Some(x.item(i)), None);
        }
        let mut added: Vec<usize> = by_key.into_values().flatten().collect();
        added.sort_unstable();
        for j in added {
            self.emit_at(Op::Added, path, j, None, Some(y.item(j)));
        }
        // Elements without the key field fall back to multiset matching.
        if !unkeyed_x.is_empty() || !unkeyed_y.is_empty() {
            self.diff_unordered(x, y, unkeyed_x, unkeyed_y, path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stay_flags;
    use proptest::prelude::*;

    /// The longest increasing subsequence's length, and the most elements at their own index
    /// among such subsequences, by the quadratic textbook recurrence.
    fn reference(pairs: &[(usize, usize)]) -> (usize, usize) {
        let mut best: Vec<(usize, usize)> = Vec::with_capacity(pairs.len());
        for (k, &(i, j)) in pairs.iter().enumerate() {
            let mut b = (0, 0);
            for l in 0..k {
                if pairs[l].1 < j {
                    b = b.max(best[l]);
                }
            }
            best.push((b.0 + 1, b.1 + usize::from(i == j)));
        }
        best.into_iter().max().unwrap_or((0, 0))
    }

    #[test]
    fn reversed_keeps_the_middle() {
        assert_eq!(
            stay_flags(&[(0, 2), (1, 1), (2, 0)]),
            vec![false, true, false]
        );
        assert!(stay_flags(&[]).is_empty());
    }

    proptest! {
        #[test]
        fn stays_are_a_longest_chain_keeping_most_in_place(
            perm in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
            keep in proptest::collection::vec(any::<bool>(), 12),
        ) {
            // Matched pairs: a random subset of a random permutation, sorted by baseline index.
            let pairs: Vec<(usize, usize)> = perm
                .iter()
                .enumerate()
                .filter(|(i, _)| keep[*i])
                .map(|(i, &j)| (i, j))
                .collect();
            let flags = stay_flags(&pairs);
            let stay: Vec<(usize, usize)> =
                pairs.iter().zip(&flags).filter(|(_, f)| **f).map(|(p, _)| *p).collect();
            prop_assert!(stay.windows(2).all(|w| w[0].1 < w[1].1), "{:?}", stay);
            let kept = stay.iter().filter(|(i, j)| i == j).count();
            prop_assert_eq!((stay.len(), kept), reference(&pairs));
        }
    }
}
