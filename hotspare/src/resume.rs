//! Mapping an image back: every range `mmap`ed from its data file at its own address
//! (`MAP_PRIVATE | MAP_FIXED_NOREPLACE`), so resume costs a system call per range, not a copy
//! per byte, and never lands on top of memory that is already in use.

use crate::error::Result;
use crate::image::{ImageDir, ImageError, RangeEntry};
use kmod_shim::Range;
use std::fs::File;
use std::os::fd::AsRawFd;

/// Maps every range; on any failure unmaps those already mapped and says which range failed.
pub(crate) fn map_ranges(image: &ImageDir, entries: &[RangeEntry]) -> Result<Vec<Range>> {
    let mut done: Vec<Range> = Vec::new();
    for r in entries {
        match map_one(image, r) {
            Ok(range) => done.push(range),
            Err(e) => {
                for d in &done {
                    // SAFETY: unmapping exactly what this function mapped; nothing uses it yet.
                    unsafe { libc::munmap(d.start() as *mut _, d.len()) };
                }
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
