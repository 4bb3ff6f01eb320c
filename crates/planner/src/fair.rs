//! Weighted max-min fair division of a fleet-wide sandbox cap among pools.
//!
//! Progressive filling: every unsatisfied pool's share grows in proportion to its weight until it
//! has what it wants; what a satisfied pool leaves is shared among the rest. Integer sandboxes are
//! handed out one at a time to the pool with the lowest share-per-weight, which is the discrete form
//! of the same rule and deterministic (ties go to the earlier pool).

/// One pool's claim on the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Sandboxes the pool would like.
    pub want: u32,
    /// The pool's weight (its plan's fair-share weight).
    pub weight: u32,
    /// Sandboxes it keeps whatever the cap (busy ones, which are never stopped).
    pub floor: u32,
}

/// Each claim's share of `capacity`: at least its floor, at most `max(want, floor)`.
pub fn weighted_max_min(claims: &[Claim], capacity: u32) -> Vec<u32> {
    let mut share: Vec<u32> = claims.iter().map(|c| c.floor).collect();
    let used: u64 = share.iter().map(|&s| s as u64).sum();
    let mut left = (capacity as u64).saturating_sub(used);
    // A heap would make this O(n log n) per sandbox; pools per plan are few, so a scan is clearer.
    while left > 0 {
        let mut best: Option<usize> = None;
        for (i, c) in claims.iter().enumerate() {
            if share[i] >= c.want {
                continue;
            }
            let better = match best {
                None => true,
                // share[i]/w[i] < share[b]/w[b], compared without division.
                Some(b) => {
                    (share[i] as u64) * (claims[b].weight as u64)
                        < (share[b] as u64) * (c.weight as u64)
                }
            };
            if better {
                best = Some(i);
            }
        }
        let Some(i) = best else { break };
        share[i] += 1;
        left -= 1;
    }
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(want: u32, weight: u32) -> Claim {
        Claim {
            want,
            weight,
            floor: 0,
        }
    }

    #[test]
    fn everyone_gets_what_they_want_when_there_is_room() {
        assert_eq!(weighted_max_min(&[c(3, 1), c(2, 4)], 10), vec![3, 2]);
    }

    #[test]
    fn shortage_is_split_by_weight_and_leftovers_flow_on() {
        // Weights 1:3 over 8: 2 and 6.
        assert_eq!(weighted_max_min(&[c(10, 1), c(10, 3)], 8), vec![2, 6]);
        // A small claim is met in full and the rest goes to the others.
        assert_eq!(
            weighted_max_min(&[c(1, 1), c(10, 1), c(10, 1)], 9),
            vec![1, 4, 4]
        );
    }

    #[test]
    fn floors_are_kept_even_past_capacity() {
        let claims = [
            Claim {
                want: 5,
                weight: 1,
                floor: 4,
            },
            c(5, 1),
        ];
        assert_eq!(weighted_max_min(&claims, 3), vec![4, 0]);
    }
}
