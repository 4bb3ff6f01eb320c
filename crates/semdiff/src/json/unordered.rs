//! Unordered and keyed arrays: elements matched by canonical hash, then the rest paired by
//! similarity (capped by `max_pairwise`), or by the value of a key field.

use super::*;

impl<'o> Differ<'o> {
    /// Similarity used to pair leftover elements of unordered arrays (0 = do not pair).
    pub(super) fn similarity<'a, T: Tree<'a>>(
        &mut self,
        a: T,
        b: T,
        path: &mut Path<'a>,
        i: usize,
    ) -> f64 {
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

    pub(super) fn diff_unordered<'a, T: Tree<'a>>(
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

    pub(super) fn key_of<'a, T: Tree<'a>>(&self, v: T, field: &str) -> Option<String> {
        let k = v.get(field)?;
        match k.as_str() {
            Some(s) => Some(format!("s:{}", self.norm(s))),
            None => Some(format!("v:{}", k.to_value())),
        }
    }

    pub(super) fn diff_keyed<'a, T: Tree<'a>>(
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
