//! Page ranges: validation against the page size and `/proc/self/maps`, and the process-wide
//! table of tracked ranges that refuses overlaps (there is one "kernel" per process, however
//! many [`Shim`](crate::Shim)s exist).

use crate::error::{Error, Result};
use std::sync::{Mutex, OnceLock};

/// The system page size.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).unwrap_or(4096)
    })
}

/// A page-aligned, non-empty address range `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Range {
    start: usize,
    len: usize,
}

impl Range {
    /// Checks alignment and length; says nothing yet about whether the memory is mapped.
    pub fn new(start: usize, len: usize) -> Result<Range> {
        let page = page_size();
        if !start.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(Error::Unaligned {
                addr: start,
                len,
                page,
            });
        }
        if len == 0 || start.checked_add(len).is_none() {
            return Err(Error::BadLength { addr: start, len });
        }
        Ok(Range { start, len })
    }

    /// The range of a slice of whole pages.
    pub fn of_slice(mem: &[u8]) -> Result<Range> {
        Range::new(mem.as_ptr() as usize, mem.len())
    }

    /// First byte.
    pub fn start(&self) -> usize {
        self.start
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Never true: a `Range` is non-empty by construction (kept for API symmetry).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// One past the last byte.
    pub fn end(&self) -> usize {
        self.start + self.len
    }
    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.len / page_size()
    }
    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end() && other.start < self.end()
    }
    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: usize) -> bool {
        addr >= self.start && addr < self.end()
    }
}

/// Refuses a range that is not entirely covered by private, readable and writable mappings.
///
/// Read from `/proc/self/maps` so the error can say what is there instead.
pub fn check_mapped_rw(r: Range) -> Result<()> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| Error::Unmappable {
        addr: r.start,
        len: r.len,
        why: format!("cannot read /proc/self/maps: {e}"),
    })?;
    let fail = |why: String| Error::Unmappable {
        addr: r.start,
        len: r.len,
        why,
    };
    let mut covered = r.start;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(span), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((lo, hi)) = span.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        if hi <= covered || lo >= r.end() {
            continue;
        }
        if lo > covered {
            return Err(fail(format!("nothing is mapped at {covered:#x}..{lo:#x}")));
        }
        // The mprotect backend restores PROT_READ|PROT_WRITE, so other permissions (and shared
        // mappings, whose pages other processes can write behind our back) are refused.
        if !perms.starts_with("rw") || perms.as_bytes().get(3) != Some(&b'p') {
            return Err(fail(format!(
                "mapping {lo:#x}..{hi:#x} is '{perms}', not private read-write"
            )));
        }
        covered = hi;
        if covered >= r.end() {
            return Ok(());
        }
    }
    Err(fail(format!(
        "nothing is mapped at {covered:#x}..{:#x}",
        r.end()
    )))
}

static CLAIMS: Mutex<Vec<Range>> = Mutex::new(Vec::new());

/// Claims ranges in the process-wide table, all or none.
pub(crate) fn claim(ranges: &[Range]) -> Result<()> {
    let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
    for (i, r) in ranges.iter().enumerate() {
        let earlier = ranges[..i].iter();
        if let Some(o) = claims.iter().chain(earlier).find(|o| o.overlaps(r)) {
            return Err(if o == r {
                Error::AlreadyRegistered {
                    addr: r.start,
                    len: r.len,
                }
            } else {
                Error::Overlap {
                    addr: r.start,
                    len: r.len,
                    other_addr: o.start,
                    other_len: o.len,
                }
            });
        }
    }
    claims.extend_from_slice(ranges);
    Ok(())
}

/// Gives ranges back to the process-wide table.
pub(crate) fn release(ranges: &[Range]) {
    let mut claims = CLAIMS.lock().unwrap_or_else(|p| p.into_inner());
    claims.retain(|c| !ranges.contains(c));
}
