//! The answer to a QUERY: for each tracked range, a bitmap with one bit per page.

use crate::range::{page_size, Range};
use bitvec::prelude::*;

/// One bit per page of one range; bit `i` is the page at `range.start() + i * page_size()`.
pub type PageBits = BitVec<u64, Lsb0>;

/// The pages of one tracked range that were written in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeDirty {
    /// The tracked range.
    pub range: Range,
    /// Its dirty pages.
    pub pages: PageBits,
}

impl RangeDirty {
    /// An all-clean bitmap for `range`.
    pub fn clean(range: Range) -> RangeDirty {
        RangeDirty {
            range,
            pages: bitvec![u64, Lsb0; 0; range.pages()],
        }
    }

    /// Maximal runs of consecutive dirty pages as `(address, length in bytes)`.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            bits: &self.pages,
            next: 0,
            start: self.range.start(),
        }
    }
}

/// Iterator over the dirty runs of a [`RangeDirty`].
#[derive(Debug)]
pub struct Runs<'a> {
    bits: &'a BitSlice<u64, Lsb0>,
    next: usize,
    start: usize,
}

impl Iterator for Runs<'_> {
    type Item = (usize, usize);
    fn next(&mut self) -> Option<(usize, usize)> {
        let rest = &self.bits[self.next..];
        let first = self.next + rest.first_one()?;
        let len = self.bits[first..]
            .first_zero()
            .unwrap_or(self.bits.len() - first);
        self.next = first + len;
        let page = page_size();
        Some((self.start + first * page, len * page))
    }
}

/// The pages written in one epoch, range by range, in the order the ranges were added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtySet {
    /// One entry per tracked range, including clean ones.
    pub ranges: Vec<RangeDirty>,
}

impl DirtySet {
    /// Number of dirty pages.
    pub fn dirty_pages(&self) -> usize {
        self.ranges.iter().map(|r| r.pages.count_ones()).sum()
    }

    /// Dirty bytes.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty_pages() * page_size()
    }

    /// Number of tracked pages, dirty or not.
    pub fn tracked_pages(&self) -> usize {
        self.ranges.iter().map(|r| r.range.pages()).sum()
    }

    /// Whether the page containing `addr` is dirty.
    pub fn is_dirty(&self, addr: usize) -> bool {
        self.ranges
            .iter()
            .any(|r| r.range.contains(addr) && r.pages[(addr - r.range.start()) / page_size()])
    }

    /// Every maximal run of dirty pages, over all ranges, as `(address, length in bytes)`.
    pub fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.ranges.iter().flat_map(RangeDirty::runs)
    }

    /// Addresses of all dirty pages (convenient in tests and for small sets).
    pub fn dirty_addrs(&self) -> Vec<usize> {
        let page = page_size();
        self.ranges
            .iter()
            .flat_map(|r| r.pages.iter_ones().map(move |i| r.range.start() + i * page))
            .collect()
    }
}
