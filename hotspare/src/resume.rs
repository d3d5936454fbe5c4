//! Mapping an image back: every range `mmap`ed from its data file at its own address
//! (`MAP_PRIVATE | MAP_FIXED_NOREPLACE`), so resume costs a system call per range, not a copy
//! per byte, and never lands on top of memory that is already in use.
//!
//! The image's metadata is untrusted input ([`crate::meta`]): [`check_metadata`] runs before
//! anything is mapped, opened, bound or installed, and the heap is adopted only where a range
//! was really mapped ([`adopt_heap`]).

use crate::error::{Error, Result};
use crate::heap::Heap;
use crate::image::{ImageDir, ImageError, RangeEntry};
use crate::meta::{heap_within, MetaError, Metadata};
use kmod_shim::Range;
use std::fs::File;
use std::os::fd::AsRawFd;

/// Checks everything in `meta` that resume will use, before it uses any of it: every worker and
/// signal handler it names is registered (`is_worker`, `is_handler`), the heap lies within one
/// range of the image's range table `ranges`, and the rest is sane ([`Metadata::check`]).
pub(crate) fn check_metadata(
    meta: &Metadata,
    ranges: &[RangeEntry],
    is_worker: impl Fn(&str) -> bool,
    is_handler: impl Fn(&str) -> bool,
) -> Result<()> {
    if let Some(name) = meta.workers.iter().find(|n| !is_worker(n)) {
        return Err(Error::UnknownWorker(name.clone()));
    }
    if let Some((_, name)) = meta.signals.iter().find(|(_, n)| !is_handler(n)) {
        return Err(MetaError::UnknownSignalHandler(name.clone()).into());
    }
    meta.check(ranges.iter().map(|r| (r.addr, r.len)))?;
    Ok(())
}

/// Adopts the recorded heap `(base, size)` — reads its header — only if it lies within one of
/// the ranges that were actually `mapped`; never touches memory that is not. On failure the
/// ranges are unmapped again (nothing refers to them yet), so a refused resume leaves nothing
/// behind.
pub(crate) fn adopt_heap(heap: (u64, u64), mapped: &[Range]) -> Result<Heap> {
    let adopted = heap_within(
        heap,
        mapped.iter().map(|r| (r.start() as u64, r.len() as u64)),
    )
    .map_err(Error::from)
    .and_then(|(base, size)| Heap::attach(base, size));
    if adopted.is_err() {
        unmap(mapped);
    }
    adopted
}

/// Unmaps ranges this module mapped and nothing uses yet.
fn unmap(ranges: &[Range]) {
    for d in ranges {
        // SAFETY: unmapping exactly what `map_ranges` mapped; nothing refers to it yet.
        unsafe { libc::munmap(d.start() as *mut _, d.len()) };
    }
}

/// Maps every range; on any failure unmaps those already mapped and says which range failed.
pub(crate) fn map_ranges(image: &ImageDir, entries: &[RangeEntry]) -> Result<Vec<Range>> {
    // The range table is untrusted too: two ranges that overlap would make the second mapping
    // fail as "already in use", which is true but misleading; say what is wrong instead. (Sorted,
    // not pairwise: a table can list hundreds of thousands of ranges.)
    let mut sorted: Vec<&RangeEntry> = entries.iter().collect();
    sorted.sort_by_key(|r| r.addr);
    for w in sorted.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.addr < a.addr.saturating_add(a.len) {
            return Err(ImageError::RangeUnmappable {
                addr: b.addr,
                len: b.len,
                why: format!(
                    "the image lists it overlapping range {:#x}+{:#x}",
                    a.addr, a.len
                ),
            }
            .into());
        }
    }
    let mut done: Vec<Range> = Vec::new();
    for r in entries {
        match map_one(image, r) {
            Ok(range) => done.push(range),
            Err(e) => {
                unmap(&done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

fn map_one(image: &ImageDir, r: &RangeEntry) -> Result<Range> {
    let fail = |why: String| ImageError::RangeUnmappable {
        addr: r.addr,
        len: r.len,
        why,
    };
    let range = Range::new(r.addr as usize, r.len as usize).map_err(|e| fail(e.to_string()))?;
    let path = image.data_path(r.addr, r.len);
    let file = File::open(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let size = file
        .metadata()
        .map_err(|e| fail(format!("{}: {e}", path.display())))?
        .len();
    if size != r.len {
        return Err(fail(format!(
            "{} holds {size} bytes, not {}",
            path.display(),
            r.len
        ))
        .into());
    }
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            range.start() as *mut _,
            range.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = std::io::Error::last_os_error();
        let why = if e.raw_os_error() == Some(libc::EEXIST) {
            "the address range is already in use in this process".to_owned()
        } else {
            e.to_string()
        };
        return Err(fail(why).into());
    }
    if p as usize != range.start() {
        // SAFETY: an old kernel placed it elsewhere; undo.
        unsafe { libc::munmap(p, range.len()) };
        return Err(fail("the kernel would not map it at its address".into()).into());
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn entry(addr: u64, len: u64) -> RangeEntry {
        RangeEntry {
            addr,
            len,
            complete: true,
        }
    }

    /// Anonymous memory at exactly `addr`, as `map_ranges` would leave it.
    fn map_at(addr: u64, len: u64) -> Range {
        // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                addr as *mut _,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, addr, "test address taken");
        Range::new(addr as usize, len as usize).unwrap()
    }

    fn mapped(addr: u64) -> bool {
        // SAFETY: msync only inspects the address; ENOMEM means nothing is mapped there.
        unsafe { libc::msync(addr as *mut _, PAGE as usize, libc::MS_ASYNC) == 0 }
    }

    #[test]
    fn metadata_is_checked_against_the_range_table_and_the_names() {
        let base = 0x6b00_0000_0000;
        let meta = Metadata {
            heap: (base, 16 * PAGE),
            workers: vec!["main".into()],
            signals: vec![(libc::SIGUSR1, "usr1".into())],
            ..Metadata::default()
        };
        let table = [entry(base, 16 * PAGE)];
        let yes = |_: &str| true;
        check_metadata(&meta, &table, yes, yes).unwrap();
        let e = check_metadata(&meta, &table, |n| n != "main", yes).unwrap_err();
        assert!(
            matches!(e, Error::UnknownWorker(ref n) if n == "main"),
            "{e}"
        );
        let e = check_metadata(&meta, &table, yes, |n| n != "usr1").unwrap_err();
        assert!(
            matches!(e, Error::BadMetadata(MetaError::UnknownSignalHandler(_))),
            "{e}"
        );
        let e = check_metadata(&meta, &[entry(base + (1 << 30), 16 * PAGE)], yes, yes).unwrap_err();
        assert!(
            matches!(e, Error::BadMetadata(MetaError::HeapOutsideRanges { .. })),
            "{e}"
        );
    }

    /// The heap's header is read only where a range was really mapped; a refusal unmaps the
    /// ranges.
    #[test]
    fn heap_is_adopted_only_inside_a_mapped_range() {
        let a = 0x6b10_0000_0000;
        let r = map_at(a, 16 * PAGE);
        // Outside the mapped range: refused without touching the address.
        let e = adopt_heap((a + (1 << 30), 16 * PAGE), &[r]).unwrap_err();
        assert!(
            matches!(e, Error::BadMetadata(MetaError::HeapOutsideRanges { .. })),
            "{e}"
        );
        assert!(!mapped(a), "a refused resume leaves its ranges unmapped");
        // Inside, but no heap there (zeros): the header check refuses, and unmaps too.
        let r = map_at(a, 16 * PAGE);
        let e = adopt_heap((a, 16 * PAGE), &[r]).unwrap_err();
        assert!(e.to_string().contains("no checkpoint heap"), "{e}");
        assert!(!mapped(a));
    }

    #[test]
    fn overlapping_ranges_are_refused_before_mapping() {
        let t = tempfile::tempdir().unwrap();
        let image = ImageDir::open(t.path()).unwrap();
        let a = 0x6b20_0000_0000;
        let e = map_ranges(
            &image,
            &[entry(a + 16 * PAGE, 16 * PAGE), entry(a, 32 * PAGE)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("overlapping range"), "{e}");
        assert!(!mapped(a) && !mapped(a + 16 * PAGE));
    }
}
