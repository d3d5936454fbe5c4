//! Raw Linux ABI for Hot Spare, and nothing else.
//!
//! Debian's kernel headers on our machines are older than the kernel we run on (6.18), so the
//! userfaultfd write-protect-async bits and the `PAGEMAP_SCAN` ioctl are not in `libc`. They are
//! written down here once, by hand, from the kernel's UAPI headers
//! (`include/uapi/linux/userfaultfd.h`, `include/uapi/linux/fs.h`). This crate holds only
//! constants and `#[repr(C)]` structs; every rule about *how* to use them lives in `kmod-shim`.
//!
//! The tests in `tests/abi.rs` check every size and field offset with `memoffset`, cross-check
//! the values against `linux-raw-sys`, and ask the running kernel to accept each ioctl.
#![deny(missing_docs)]

pub mod cpt;
pub mod ioctl;
pub mod pagemap;
pub mod uffd;

pub use cpt::*;
