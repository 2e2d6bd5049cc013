//! Which bytes of a file changed since the object it was staged from (its base).
//!
//! An upload sends the changed ranges and copies the rest from the base on the server
//! ([`crate::object::patch`]). The set is exact for writes through the daemon and truncates;
//! anything the daemon cannot see (passthrough writes) or a new file marks everything.

use std::ops::Range;

/// More ranges than this collapse to "everything" (uploads then send the file whole).
const MAX_RANGES: usize = 64;

/// Changed ranges of a file relative to its base: sorted, disjoint, non-adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    ranges: Vec<Range<u64>>,
    all: bool,
}

impl Dirty {
    /// Everything changed (no base, or changes the daemon did not see).
    pub fn everything() -> Self {
        Self {
            ranges: Vec::new(),
            all: true,
        }
    }

    pub fn mark_all(&mut self) {
        self.ranges.clear();
        self.all = true;
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
        self.all = false;
    }

    /// Adds `r`, merging with overlapping or adjacent ranges.
    pub fn add(&mut self, r: Range<u64>) {
        if self.all || r.start >= r.end {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        // Ranges that overlap or touch `r`.
        let first = self.ranges.partition_point(|x| x.end < start);
        let last = self.ranges.partition_point(|x| x.start <= end);
        if first < last {
            start = start.min(self.ranges[first].start);
            end = end.max(self.ranges[last - 1].end);
        }
        self.ranges.splice(first..last, std::iter::once(start..end));
        if self.ranges.len() > MAX_RANGES {
            self.mark_all();
        }
    }

    /// The changed ranges, or `None` for everything.
    pub fn ranges(&self) -> Option<&[Range<u64>]> {
        (!self.all).then_some(&self.ranges[..])
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // expected range lists
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_merge_and_overflow_to_everything() {
        let mut d = Dirty::default();
        d.add(10..20);
        d.add(30..40);
        d.add(20..25);
        assert_eq!(d.ranges().unwrap(), [10..25, 30..40]);
        d.add(5..35);
        assert_eq!(d.ranges().unwrap(), [5..40]);
        d.add(3..3);
        assert_eq!(d.ranges().unwrap(), [5..40]);
        for i in 0..100 {
            d.add(1000 + i * 10..1000 + i * 10 + 1);
        }
        assert_eq!(d.ranges(), None);
        d.clear();
        assert_eq!(d.ranges().unwrap(), []);
    }

    proptest! {
        #[test]
        fn every_added_byte_is_covered_and_ranges_stay_sorted(
            adds in proptest::collection::vec((0u64..500, 0u64..50), 0..40)
        ) {
            let mut d = Dirty::default();
            let mut bytes = std::collections::BTreeSet::new();
            for (s, l) in &adds {
                d.add(*s..s + l);
                bytes.extend(*s..s + l);
            }
            let ranges = d.ranges().unwrap().to_vec();
            prop_assert!(ranges.windows(2).all(|w| w[0].end < w[1].start));
            let covered: std::collections::BTreeSet<u64> =
                ranges.iter().flat_map(|r| r.clone()).collect();
            prop_assert_eq!(covered, bytes);
        }
    }
}
