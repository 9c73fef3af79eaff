//! A set of `u128` indexes stored as sorted, disjoint, non-adjacent runs. The allocator keeps
//! the free per-node blocks of each ClusterCIDR range in one of these, so memory grows with the
//! number of allocations that split the range, never with the size of the range, and the lowest
//! free block is the first run's start (`O(log n)`).

use std::collections::BTreeMap;

/// Sorted set of inclusive index runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSet {
    /// last -> start (inclusive); runs are disjoint and never adjacent. Keyed by the last index
    /// so that taking the lowest index of a run (what allocation does) updates the run in place
    /// instead of re-keying it.
    runs: BTreeMap<u128, u128>,
    /// Number of indexes in the set (at most 2^124 in practice: see `FamilyRange`).
    len: u128,
}

impl IndexSet {
    /// The set `0..=last`.
    pub fn full(last: u128) -> Self {
        let mut set = IndexSet::default();
        set.insert(0, last);
        set
    }

    /// Number of indexes.
    pub fn len(&self) -> u128 {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of runs (the memory footprint).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Smallest index.
    pub fn first(&self) -> Option<u128> {
        self.runs.values().next().copied()
    }

    /// True when `i` is in the set.
    pub fn contains(&self, i: u128) -> bool {
        self.runs
            .range(i..)
            .next()
            .is_some_and(|(_, &start)| start <= i)
    }

    /// Iterates the runs `(start, last)` in order.
    pub fn iter_runs(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.runs.iter().map(|(&e, &s)| (s, e))
    }

    /// Removes `lo..=hi`.
    pub fn remove(&mut self, lo: u128, hi: u128) {
        if lo > hi {
            return;
        }
        // Each step handles the first run that ends at or after `lo`, until runs start after `hi`.
        while let Some((&last, &start)) = self.runs.range(lo..).next() {
            if start > hi {
                break;
            }
            let cut_lo = start.max(lo);
            let cut_hi = last.min(hi);
            self.len -= run_len(cut_lo, cut_hi);
            if last > hi {
                // The run continues after `hi`: keep it under the same key, starting later.
                if let Some(s) = self.runs.get_mut(&last) {
                    *s = hi + 1;
                }
                if start < lo {
                    self.runs.insert(lo - 1, start);
                }
                break;
            }
            self.runs.remove(&last);
            if start < lo {
                // Key `lo - 1` is below `lo`, so the next step looks at the following run.
                self.runs.insert(lo - 1, start);
            }
        }
    }

    /// Adds `lo..=hi`, merging with overlapping and adjacent runs.
    pub fn insert(&mut self, lo: u128, hi: u128) {
        if lo > hi {
            return;
        }
        let (mut new_lo, mut new_hi) = (lo, hi);
        // Runs that end at or after `lo - 1` and start at or before `hi + 1` touch the new one.
        while let Some((&last, &start)) = self.runs.range(lo.saturating_sub(1)..).next() {
            if start > hi.saturating_add(1) {
                break;
            }
            self.runs.remove(&last);
            self.len -= run_len(start, last);
            new_lo = new_lo.min(start);
            new_hi = new_hi.max(last);
        }
        self.runs.insert(new_hi, new_lo);
        self.len = self.len.saturating_add(run_len(new_lo, new_hi));
    }
}

fn run_len(start: u128, last: u128) -> u128 {
    (last - start).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn remove_splits_and_insert_merges() {
        let mut s = IndexSet::full(9);
        s.remove(3, 5);
        assert_eq!(s.iter_runs().collect::<Vec<_>>(), vec![(0, 2), (6, 9)]);
        assert_eq!(s.len(), 7);
        s.insert(4, 4);
        assert_eq!(s.runs(), 3);
        s.insert(3, 5);
        assert_eq!(s.iter_runs().collect::<Vec<_>>(), vec![(0, 9)]);
        assert_eq!(s.len(), 10);
        s.remove(0, 9);
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn huge_ranges_cost_one_run() {
        let mut s = IndexSet::full((1u128 << 124) - 1);
        assert_eq!(s.len(), 1u128 << 124);
        s.remove(0, 0);
        assert_eq!(s.first(), Some(1));
        assert_eq!(s.runs(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u128..64, 0u128..8), 0..40)) {
            let mut s = IndexSet::full(63);
            let mut model: BTreeSet<u128> = (0..64).collect();
            for (add, lo, width) in ops {
                let hi = (lo + width).min(63);
                if add {
                    s.insert(lo, hi);
                    model.extend(lo..=hi);
                } else {
                    s.remove(lo, hi);
                    for i in lo..=hi { model.remove(&i); }
                }
                prop_assert_eq!(s.len(), model.len() as u128);
                prop_assert_eq!(s.first(), model.iter().next().copied());
                for i in 0..64 { prop_assert_eq!(s.contains(i), model.contains(&i)); }
                let runs: Vec<_> = s.iter_runs().collect();
                for w in runs.windows(2) { prop_assert!(w[0].1 + 1 < w[1].0, "runs are disjoint and not adjacent"); }
            }
        }
    }
}
