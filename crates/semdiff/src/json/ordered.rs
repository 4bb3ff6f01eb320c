//! Ordered arrays: common prefix and suffix trimmed, the middle aligned by Myers' edit script
//! over canonical hashes (or matched by hash when that is too costly), the longest increasing
//! run of matches kept in place and the other matches reported as moved.

use super::*;

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
    /// Matches elements of `x[xs]` to `y[ys]` by canonical hash, confirming each match.
    /// Returns the matches (sorted by baseline index) and the unmatched indices.
    pub(super) fn match_by_hash<'a, T: Tree<'a>>(
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
    pub(super) fn align_ordered<'a, T: Tree<'a>>(
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

    pub(super) fn diff_ordered<'a, T: Tree<'a>>(&mut self, x: T, y: T, path: &mut Path<'a>) {
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
    pub(super) fn emit_moved<'a, T: Tree<'a>>(&mut self, path: &mut Path<'_>, i: usize, j: usize) {
        path.push(Seg::Idx(i));
        let from = render(path);
        path.pop();
        path.push(Seg::Idx(j));
        self.emit::<T>(Op::Moved, path, Some(from), None, None);
        path.pop();
    }
}
