//! The C ABI: `cptctl()` and `cptfork()` shaped like the seed paper's system calls
//! (`include/cpt.h`). One process-wide [`Shim`] stands in for the kernel; it is opened on first
//! use with the backend named by `CPT_BACKEND` (`auto` when unset).
//!
//! Errors follow system-call convention: `-1` and `errno`; `cpt_last_error()` gives the full
//! one-line message. No panic crosses the boundary.

use crate::backend::BackendChoice;
use crate::error::{Error, Result};
use crate::range::Range;
use crate::Shim;
use hotspare_sys::{cpt_range, CPT_ADD, CPT_QUERY, CPT_REMOVE};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};

static SHIM: Mutex<Option<Shim>> = Mutex::new(None);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn shim() -> Result<MutexGuard<'static, Option<Shim>>> {
    let mut guard = SHIM.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        let choice = match std::env::var("CPT_BACKEND") {
            Ok(name) => name.parse()?,
            Err(_) => BackendChoice::Auto,
        };
        *guard = Some(Shim::new(choice)?);
    }
    Ok(guard)
}

fn fail(e: &Error) -> isize {
    let msg = CString::new(e.to_string()).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = msg);
    // SAFETY: writing this thread's errno.
    unsafe { *libc::__errno_location() = e.errno() };
    -1
}

fn guarded(f: impl FnOnce() -> Result<isize>) -> isize {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => fail(&e),
        Err(_) => fail(&Error::Invalid("internal panic in kmod-shim".into())),
    }
}

fn to_ranges(ranges: &[cpt_range]) -> Result<Vec<Range>> {
    ranges
        .iter()
        .map(|r| Range::new(r.addr as usize, r.len))
        .collect()
}

/// `ssize_t cptctl(struct cpt_range *ranges, size_t nranges, int op)`.
///
/// * `CPT_ADD`, `CPT_REMOVE`: the ranges are read; returns 0.
/// * `CPT_QUERY`: harvests the pages written since the last QUERY and fills `ranges` with up
///   to `nranges` runs of dirty pages; returns how many runs there were in all. Runs that did
///   not fit stay pending and are returned by the next QUERY (nothing is lost). In a `cptfork`
///   child it returns the dirty set learned at the fork, without harvesting.
///
/// # Safety
/// `ranges` must point to `nranges` valid `struct cpt_range` (it may be NULL if `nranges` is 0).
#[no_mangle]
pub unsafe extern "C" fn cptctl(ranges: *mut cpt_range, nranges: usize, op: c_int) -> isize {
    guarded(|| {
        if ranges.is_null() && nranges != 0 {
            return Err(Error::Invalid("ranges is NULL but nranges is not 0".into()));
        }
        let slice: &mut [cpt_range] = if nranges == 0 {
            &mut []
        } else {
            // SAFETY: the caller promises `nranges` valid elements at `ranges` (checked non-null).
            unsafe { std::slice::from_raw_parts_mut(ranges, nranges) }
        };
        let mut guard = shim()?;
        let shim = guard.as_mut().expect("opened by shim()");
        match op {
            CPT_ADD | CPT_REMOVE if shim.is_child_of_owner() => {
                // In a cptfork child: refuse without allocating (no message, errno only).
                // SAFETY: writing this thread's errno.
                unsafe { *libc::__errno_location() = libc::EPERM };
                Ok(-1)
            }
            CPT_ADD => shim.add(&to_ranges(slice)?).map(|()| 0),
            CPT_REMOVE => shim.remove(&to_ranges(slice)?).map(|()| 0),
            CPT_QUERY => {
                let in_child = shim.is_child_of_owner();
                if !in_child {
                    shim.harvest()?;
                }
                Ok(shim.drain_runs(slice) as isize)
            }
            other => Err(Error::Invalid(format!("unknown cptctl op {other}"))),
        }
    })
}

/// `pid_t cptfork(void)`: harvests the dirty set, then forks. Returns the child's pid in the
/// parent, 0 in the child (whose `cptctl(CPT_QUERY)` then returns the fork-time set), -1 on
/// error.
#[no_mangle]
pub extern "C" fn cptfork() -> libc::pid_t {
    guarded(|| {
        let mut guard = shim()?;
        let shim = guard.as_mut().expect("opened by shim()");
        // The lock is held across the fork so the child's copy of the shim is consistent; the
        // child releases its copy when `guard` drops (an atomic store, async-signal-safe).
        shim.fork_raw().map(|pid| pid as isize)
    }) as libc::pid_t
}

/// `const char *cpt_backend(void)`: the name of the backend in use (opening it if needed), or
/// NULL if none could be opened.
#[no_mangle]
pub extern "C" fn cpt_backend() -> *const c_char {
    let name = catch_unwind(|| shim().ok().and_then(|g| g.as_ref().map(|s| s.backend())));
    match name {
        Ok(Some(kind)) => match kind {
            crate::BackendKind::UffdWp => c"uffd-wp".as_ptr(),
            crate::BackendKind::Mprotect => c"mprotect".as_ptr(),
            crate::BackendKind::SoftDirty => c"soft-dirty".as_ptr(),
            crate::BackendKind::Full => c"full".as_ptr(),
        },
        _ => std::ptr::null(),
    }
}

/// `const char *cpt_last_error(void)`: the message of this thread's last failed call; valid
/// until the next failing call on the same thread.
#[no_mangle]
pub extern "C" fn cpt_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}
