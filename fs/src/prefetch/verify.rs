//! Front-to-back verification of files read in ranges.
//!
//! A ranged GET proves nothing about its bytes, and only a read of a whole object can be checked
//! against the store's checksum as it arrives. A file read front to back through the mount is
//! read in blocks, each from its own ranged GET (or the disk cache), so each block's CRC is
//! computed where its bytes are assembled, and a [`Chain`] per open handle combines them in
//! order (`crc(a ++ b)` from `crc(a)`, `crc(b)` and `len(b)`, no rehashing). When the read
//! reaches the last block, the combined CRC is compared with the one the store states (one HEAD,
//! started as soon as the handle reads past its first block) before the last block's bytes are
//! returned. A mismatch fails that read, and every later read of the handle, with `EIO`: the
//! reader never sees a clean end of file after wrong bytes.
//!
//! Blocks may be read slightly out of order (the kernel's async readahead); the CRCs of blocks
//! ahead of the chain wait in a bounded map. A handle that jumps around never completes its
//! chain; its reads are as unverified as any ranged read.

use std::collections::BTreeMap;

use crate::cache::BLOCK_SIZE;
use crate::object::checksum::FullChecksum;

use super::block_range;

/// CRCs of blocks ahead of the chain kept at most (16 bytes each).
const MAX_AHEAD: usize = 1024;

/// Where a handle's verification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not every block has been combined yet.
    Open,
    /// The blocks' CRCs combined to the store's checksum.
    Verified,
    /// Every block was read, but there was nothing to compare with (the store states no
    /// checksum, or one of another kind, or asking for it failed).
    Unverified,
    /// The blocks did not combine to the store's checksum: `(stated, computed)`.
    Failed(FullChecksum, FullChecksum),
}

/// The running CRC of blocks `0..next` of one object.
#[derive(Debug)]
pub struct Chain {
    /// The kind of CRC the blocks carry (its value is unused).
    kind: FullChecksum,
    size: u64,
    blocks: u64,
    next: u64,
    crc: u64,
    /// CRCs of blocks after `next`, waiting for the blocks before them.
    ahead: BTreeMap<u64, u64>,
    verdict: Verdict,
}

impl Chain {
    /// A chain for an object of `size` bytes whose blocks carry CRCs of `kind`.
    pub fn new(kind: FullChecksum, size: u64) -> Self {
        Self {
            kind,
            size,
            blocks: size.div_ceil(BLOCK_SIZE),
            next: 0,
            crc: 0,
            ahead: BTreeMap::new(),
            verdict: Verdict::Open,
        }
    }

    pub fn kind(&self) -> FullChecksum {
        self.kind
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The index of the object's last block.
    pub fn last(&self) -> u64 {
        self.blocks.saturating_sub(1)
    }

    /// Whether the chain still needs the CRC of block `b`.
    pub fn wants(&self, b: u64) -> bool {
        self.verdict == Verdict::Open && b >= self.next && !self.ahead.contains_key(&b)
    }

    /// The first block whose CRC the chain is waiting for.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Adds the CRC of block `b` (the same kind as the chain's). Returns whether the chain
    /// advanced.
    pub fn add(&mut self, b: u64, crc: u64) -> bool {
        if !self.wants(b) || b >= self.blocks {
            return false;
        }
        if b > self.next {
            if self.ahead.len() < MAX_AHEAD {
                self.ahead.insert(b, crc);
            }
            return false;
        }
        self.push(crc);
        while let Some(crc) = self.ahead.remove(&self.next) {
            self.push(crc);
        }
        true
    }

    fn push(&mut self, crc: u64) {
        let r = block_range(self.next, self.size);
        self.crc = if self.next == 0 {
            crc
        } else {
            self.kind.combine(self.crc, crc, r.end - r.start)
        };
        self.next += 1;
    }

    /// Whether every block has been combined.
    pub fn complete(&self) -> bool {
        self.next == self.blocks
    }

    /// Decides, once the chain is complete, against the checksum the store states.
    pub fn finish(&mut self, stated: Option<FullChecksum>) -> Verdict {
        if self.verdict != Verdict::Open || !self.complete() {
            return self.verdict;
        }
        self.verdict = match stated {
            Some(s) if s.same_kind(self.kind) => {
                let computed = self.kind.with_value(self.crc);
                if computed == s {
                    Verdict::Verified
                } else {
                    Verdict::Failed(s, computed)
                }
            }
            _ => Verdict::Unverified,
        };
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn crcs(kind: FullChecksum, data: &[u8]) -> Vec<u64> {
        data.chunks(BLOCK_SIZE as usize)
            .map(|c| kind.of(c).value())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Blocks added in any order that the bounded look-ahead can hold combine to the CRC of
        /// the whole object; a flipped bit anywhere makes it fail.
        #[test]
        fn blocks_combine_to_the_whole_objects_crc(
            size in 1u64..(5 * BLOCK_SIZE + 3),
            seed in any::<u64>(),
            flip in any::<prop::sample::Index>(),
            nvme in any::<bool>(),
        ) {
            let kind = if nvme { FullChecksum::Crc64Nvme(0) } else { FullChecksum::Crc64Xz(0) };
            let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(seed | 1) >> 3) as u8).collect();
            let stated = kind.of(&data);
            let mut order: Vec<u64> = (0..size.div_ceil(BLOCK_SIZE)).collect();
            // A local shuffle, as async readahead makes: swap neighbours.
            for i in (1..order.len()).step_by(2) {
                if (seed >> (i % 64)) & 1 == 1 {
                    order.swap(i - 1, i);
                }
            }
            let good = crcs(kind, &data);
            let mut chain = Chain::new(kind, size);
            for &b in &order {
                prop_assert_eq!(chain.verdict(), Verdict::Open);
                chain.add(b, good[b as usize]);
            }
            prop_assert!(chain.complete());
            prop_assert_eq!(chain.finish(Some(stated)), Verdict::Verified);

            let mut bad = data.clone();
            bad[flip.index(data.len())] ^= 0x10;
            let mut chain = Chain::new(kind, size);
            for (b, crc) in crcs(kind, &bad).into_iter().enumerate() {
                chain.add(b as u64, crc);
            }
            prop_assert!(matches!(chain.finish(Some(stated)), Verdict::Failed(s, _) if s == stated));
        }
    }

    #[test]
    fn a_checksum_of_another_kind_or_none_leaves_it_unverified() {
        let data = vec![7u8; 2 * BLOCK_SIZE as usize + 5];
        let kind = FullChecksum::Crc64Nvme(0);
        for stated in [None, Some(FullChecksum::Crc64Xz(0).of(&data))] {
            let mut chain = Chain::new(kind, data.len() as u64);
            for (b, crc) in crcs(kind, &data).into_iter().enumerate() {
                chain.add(b as u64, crc);
            }
            assert_eq!(chain.finish(stated), Verdict::Unverified);
        }
    }

    #[test]
    fn a_gap_keeps_it_open_and_repeats_change_nothing() {
        let data = vec![1u8; 3 * BLOCK_SIZE as usize];
        let kind = FullChecksum::Crc64Xz(0);
        let good = crcs(kind, &data);
        let mut chain = Chain::new(kind, data.len() as u64);
        assert!(chain.add(0, good[0]));
        assert!(!chain.add(0, 12345), "a block already combined is ignored");
        assert!(!chain.add(2, good[2]));
        assert!(!chain.wants(2));
        assert_eq!(chain.finish(Some(kind.of(&data))), Verdict::Open);
        assert!(chain.add(1, good[1]));
        assert!(chain.complete());
        assert_eq!(chain.finish(Some(kind.of(&data))), Verdict::Verified);
    }
}
