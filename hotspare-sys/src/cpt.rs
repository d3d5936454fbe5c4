//! The seed paper's checkpointing "system call" interface (Hot Spare paper §2.2):
//!
//! ```c
//! struct cpt_range { void *addr; size_t len; };
//! pid_t   cptfork(void);
//! ssize_t cptctl(struct cpt_range *ranges, size_t nranges, int op);
//! ```
//!
//! The struct is shared with C (`kmod-shim/include/cpt.h`), so its layout is ABI.

use core::ffi::c_void;

/// One memory range handed to `cptctl`: `addr` and `len` in bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct cpt_range {
    /// First byte of the range.
    pub addr: *mut c_void,
    /// Length in bytes.
    pub len: usize,
}

/// `cptctl` op: start tracking the given ranges.
pub const CPT_ADD: i32 = 1;
/// `cptctl` op: stop tracking the given ranges (each must equal a registered range).
pub const CPT_REMOVE: i32 = 2;
/// `cptctl` op: fill the array with the runs of pages written since the previous QUERY.
pub const CPT_QUERY: i32 = 3;
