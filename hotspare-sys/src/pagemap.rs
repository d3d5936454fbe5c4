//! `/proc/PID/pagemap` entry bits, `/proc/PID/clear_refs` values and the `PAGEMAP_SCAN` ioctl
//! (`Documentation/admin-guide/mm/pagemap.rst`, `include/uapi/linux/fs.h`, Linux 6.18).

use crate::ioctl::iowr;

/// Bits 0–54 of a pagemap entry: page frame number (zero without CAP_SYS_ADMIN).
pub const PM_PFRAME_MASK: u64 = (1 << 55) - 1;
/// Bit 55: the pte is soft-dirty (only with `CONFIG_MEM_SOFT_DIRTY`).
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// Bit 56: the page is exclusively mapped.
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// Bit 57: the pte is uffd-wp write-protected.
pub const PM_UFFD_WP: u64 = 1 << 57;
/// Bit 58: the pte is a guard region.
pub const PM_GUARD_REGION: u64 = 1 << 58;
/// Bit 61: the page is file-backed or shared anonymous.
pub const PM_FILE: u64 = 1 << 61;
/// Bit 62: the page is swapped.
pub const PM_SWAP: u64 = 1 << 62;
/// Bit 63: the page is present.
pub const PM_PRESENT: u64 = 1 << 63;

/// `clear_refs` value: clear referenced/accessed bits of all pages.
pub const CLEAR_REFS_ALL: u8 = b'1';
/// `clear_refs` value: anonymous pages only.
pub const CLEAR_REFS_ANON: u8 = b'2';
/// `clear_refs` value: file-mapped pages only.
pub const CLEAR_REFS_MAPPED: u8 = b'3';
/// `clear_refs` value: clear the soft-dirty bits of every pte of the process.
pub const CLEAR_REFS_SOFT_DIRTY: u8 = b'4';
/// `clear_refs` value: reset the peak resident set size.
pub const CLEAR_REFS_MM_HIWATER_RSS: u8 = b'5';

/// `PAGEMAP_SCAN` flag: write-protect the pages that match (atomically with reporting them).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PAGEMAP_SCAN` flag: fail with `EPERM` if a VMA in the range is not async-WP registered.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// Category: the page may be write-protected (VMA registered with async uffd-wp).
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// Category: the page was written since it was last write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Category: file-backed.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// Category: present in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Category: swapped out.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Category: maps the zero page.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// Category: part of a transparent or hugetlb huge page.
pub const PAGE_IS_HUGE: u64 = 1 << 6;
/// Category: soft-dirty.
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
/// Category: guard region (Linux 6.14+; probe before use).
pub const PAGE_IS_GUARD: u64 = 1 << 8;

/// One output record of `PAGEMAP_SCAN`: pages `[start, end)` share `categories`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct page_region {
    /// First byte of the run.
    pub start: u64,
    /// One past the last byte of the run.
    pub end: u64,
    /// The categories of these pages, masked by `return_mask`.
    pub categories: u64,
}

/// Argument of `PAGEMAP_SCAN`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct pm_scan_arg {
    /// `size_of::<pm_scan_arg>()`, for extensibility.
    pub size: u64,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Start of the range to walk (page aligned).
    pub start: u64,
    /// End of the range to walk.
    pub end: u64,
    /// Out: where the walk stopped; equals `end` when it finished.
    pub walk_end: u64,
    /// Address of the output `page_region` array.
    pub vec: u64,
    /// Capacity of the output array, in records.
    pub vec_len: u64,
    /// Stop after this many matching pages (0: no limit).
    pub max_pages: u64,
    /// Categories whose meaning is inverted before matching.
    pub category_inverted: u64,
    /// A page matches only if it has all of these.
    pub category_mask: u64,
    /// A page matches only if it has at least one of these (0: no condition).
    pub category_anyof_mask: u64,
    /// Categories reported in `page_region::categories`.
    pub return_mask: u64,
}

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)`, issued on an open `/proc/PID/pagemap`.
pub const PAGEMAP_SCAN: u32 = iowr(b'f' as u32, 16, core::mem::size_of::<pm_scan_arg>());
