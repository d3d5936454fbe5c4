//! One error type for the shim. Each variant's message names the range and, for system calls,
//! which call failed, so that a user sees one clear line.

use crate::backend::BackendKind;
use std::io;

/// What went wrong in a `cptctl`/`cptfork` operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Address or length not a multiple of the page size.
    #[error("range {addr:#x}+{len:#x} is not page-aligned (page size {page:#x})")]
    Unaligned {
        /// Start of the refused range.
        addr: usize,
        /// Its length.
        len: usize,
        /// The system page size.
        page: usize,
    },
    /// Zero length, or `addr + len` wraps around.
    #[error("range {addr:#x}+{len:#x} is empty or wraps the address space")]
    BadLength {
        /// Start of the refused range.
        addr: usize,
        /// Its length.
        len: usize,
    },
    /// Exactly this range is tracked already.
    #[error("range {addr:#x}+{len:#x} is already registered")]
    AlreadyRegistered {
        /// Start of the refused range.
        addr: usize,
        /// Its length.
        len: usize,
    },
    /// The range overlaps another tracked range (or another range of the same call).
    #[error("range {addr:#x}+{len:#x} overlaps registered range {other_addr:#x}+{other_len:#x}")]
    Overlap {
        /// Start of the refused range.
        addr: usize,
        /// Its length.
        len: usize,
        /// Start of the range it overlaps.
        other_addr: usize,
        /// Length of the range it overlaps.
        other_len: usize,
    },
    /// Part of the range is not mapped, or not mapped private and read-write.
    #[error("range {addr:#x}+{len:#x} cannot be tracked: {why}")]
    Unmappable {
        /// Start of the refused range.
        addr: usize,
        /// Its length.
        len: usize,
        /// What `/proc/self/maps` shows there.
        why: String,
    },
    /// REMOVE of a range that is not exactly a registered one.
    #[error("range {addr:#x}+{len:#x} is not registered")]
    NotRegistered {
        /// Start of the range.
        addr: usize,
        /// Its length.
        len: usize,
    },
    /// A system call failed.
    #[error("{backend}: {call} on {addr:#x}+{len:#x} failed: {source}")]
    Syscall {
        /// The backend that made the call.
        backend: BackendKind,
        /// The call, e.g. `"UFFDIO_REGISTER"`.
        call: &'static str,
        /// Start of the range concerned (0 if none).
        addr: usize,
        /// Its length.
        len: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The backend cannot work on this kernel or in this process.
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// The backend asked for.
        backend: BackendKind,
        /// Why it is unavailable, from a probe.
        reason: String,
    },
    /// The mprotect backend's fixed, signal-safe range table is full.
    #[error("mprotect backend: at most {max} ranges can be tracked at once")]
    TooManyRanges {
        /// Capacity of the table.
        max: usize,
    },
    /// An operation other than QUERY was made in a `cptfork` child.
    #[error("cptctl in a cptfork child: only QUERY of the fork-time dirty set is allowed")]
    InChild,
    /// `fork()` failed.
    #[error("cptfork: fork failed: {0}")]
    Fork(#[source] io::Error),
    /// An unknown backend name or `cptctl` op.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// The errno a C caller of `cptctl`/`cptfork` sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Unaligned { .. } | Error::BadLength { .. } | Error::Invalid(_) => libc::EINVAL,
            Error::AlreadyRegistered { .. } | Error::Overlap { .. } => libc::EBUSY,
            Error::Unmappable { .. } => libc::EFAULT,
            Error::NotRegistered { .. } => libc::ENOENT,
            Error::Syscall { source, .. } | Error::Fork(source) => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::Unavailable { .. } => libc::ENOSYS,
            Error::TooManyRanges { .. } => libc::ENOSPC,
            Error::InChild => libc::EPERM,
        }
    }
}

/// Result alias for the shim.
pub type Result<T, E = Error> = std::result::Result<T, E>;
