//! Tests of the alignment's longest increasing run against a textbook reference.

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
