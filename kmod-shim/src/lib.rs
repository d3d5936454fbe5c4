//! `kmod-shim`: the Hot Spare paper's kernel side (§2.2, `cptctl()` and `cptfork()`), emulated
//! in user space on Linux.
//!
//! * [`Shim`] is `cptctl()`: ADD and REMOVE ranges, QUERY the pages written since the previous
//!   QUERY (the next epoch starts atomically with the answer), as per-range bitmaps
//!   ([`DirtySet`]).
//! * [`Shim::cptfork`] is `cptfork()`: the dirty set, then a copy-on-write child that runs an
//!   async-signal-safe [`ChildJob`] (e.g. [`WriteDirtyPages`]) on the frozen image.
//! * The [backends](BackendKind) are chosen at run time: `uffd-wp`, `mprotect`, `soft-dirty`,
//!   `full`; [`BackendChoice::Auto`] takes the best that works and says why ([`Shim::why`]).
//! * `include/cpt.h` is the same interface for C (`cptctl`, `cptfork`), from `libkmod_shim`.
//!
//! `docs/kmod-shim.md` explains the mechanisms and their limits; `docs/performance.md` has the
//! measured costs.
#![deny(missing_docs)]

mod backend;
mod dirty;
mod error;
pub mod ffi;
mod fork;
mod range;
mod shim;
mod sys;

pub use backend::{BackendChoice, BackendKind};
pub use dirty::{DirtySet, PageBits, RangeDirty, Runs};
pub use error::{Error, Result};
pub use fork::{ChildJob, ChildOutcome, ExitAtOnce, Snapshot, WriteDirtyPages};
pub use range::{check_mapped_rw, page_size, Range};
pub use shim::Shim;
