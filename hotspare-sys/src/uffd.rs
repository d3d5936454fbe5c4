//! userfaultfd ABI (`include/uapi/linux/userfaultfd.h`, Linux 6.18).
//!
//! Only what Hot Spare uses: the API handshake, registration, write-protection, and the feature
//! bits for asynchronous write-protect tracking (`WP_ASYNC`, since 6.7) and protection of pages
//! that are not yet populated (`WP_UNPOPULATED`, since 6.4).

use crate::ioctl::{ior, iowr};

/// The API version passed in [`uffdio_api::api`].
pub const UFFD_API: u64 = 0xAA;
/// ioctl type byte of every userfaultfd request.
pub const UFFDIO: u32 = 0xAA;
/// `userfaultfd(2)` flag: only handle faults raised in user mode (needs no privilege).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

/// Fault messages carry the WP flag.
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// Deliver fork events.
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// Deliver mremap events.
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// Deliver MADV_DONTNEED/REMOVE events.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// Missing-mode faults on hugetlbfs.
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
/// Missing-mode faults on shmem.
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Deliver munmap events.
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Raise SIGBUS instead of queueing a message.
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// Fault messages carry the thread id.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// Minor faults on hugetlbfs.
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
/// Minor faults on shmem.
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// Fault addresses are not masked to the page.
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
/// Write-protect on hugetlbfs and shmem.
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// Write-protect also applies to pages that are not populated yet (pte markers).
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// UFFDIO_POISON.
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
/// Write-protect faults are resolved by the kernel itself, with no message: the page just
/// becomes writable and is remembered as written (`PAGE_IS_WRITTEN` in `PAGEMAP_SCAN`).
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// UFFDIO_MOVE.
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// Register for missing-page faults.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// Register for write-protect faults.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// Register for minor faults.
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;

/// `UFFDIO_WRITEPROTECT` mode: set protection (clear it when absent).
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT` mode: do not wake blocked faulting threads.
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

/// `_UFFDIO_REGISTER` ioctl nr.
pub const _UFFDIO_REGISTER: u32 = 0x00;
/// `_UFFDIO_UNREGISTER` ioctl nr.
pub const _UFFDIO_UNREGISTER: u32 = 0x01;
/// `_UFFDIO_WRITEPROTECT` ioctl nr.
pub const _UFFDIO_WRITEPROTECT: u32 = 0x06;
/// `_UFFDIO_API` ioctl nr.
pub const _UFFDIO_API: u32 = 0x3F;

/// Argument of `UFFDIO_API`: the handshake that enables features.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct uffdio_api {
    /// Must be [`UFFD_API`].
    pub api: u64,
    /// In: requested features. Out: features the kernel supports.
    pub features: u64,
    /// Out: bitmask of ioctls available on the fd.
    pub ioctls: u64,
}

/// An address range for userfaultfd ioctls.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct uffdio_range {
    /// Page-aligned start address.
    pub start: u64,
    /// Length in bytes, a multiple of the page size.
    pub len: u64,
}

/// Argument of `UFFDIO_REGISTER`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct uffdio_register {
    /// The range to register.
    pub range: uffdio_range,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Out: ioctls available on the range.
    pub ioctls: u64,
}

/// Argument of `UFFDIO_WRITEPROTECT`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct uffdio_writeprotect {
    /// The range to (un)protect.
    pub range: uffdio_range,
    /// `UFFDIO_WRITEPROTECT_MODE_*`.
    pub mode: u64,
}

/// `UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)`.
pub const UFFDIO_API: u32 = iowr(UFFDIO, _UFFDIO_API, core::mem::size_of::<uffdio_api>());
/// `UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u32 = iowr(
    UFFDIO,
    _UFFDIO_REGISTER,
    core::mem::size_of::<uffdio_register>(),
);
/// `UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO_UNREGISTER, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: u32 = ior(
    UFFDIO,
    _UFFDIO_UNREGISTER,
    core::mem::size_of::<uffdio_range>(),
);
/// `UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: u32 = iowr(
    UFFDIO,
    _UFFDIO_WRITEPROTECT,
    core::mem::size_of::<uffdio_writeprotect>(),
);
