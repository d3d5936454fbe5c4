//! Dirty-page tracking backends, best first, and the run-time choice between them.
//!
//! Every backend answers the same question — which pages of the tracked ranges were written
//! since the last harvest — and starts the next epoch as it answers. A backend must never miss a
//! written page; `uffd-wp` and `mprotect` report exactly the written pages, `soft-dirty` and
//! `full` may report more. `tests/conformance.rs` runs every backend through the same suite.

mod full;
mod mprotect;
mod soft_dirty;
mod uffd_wp;

use crate::dirty::RangeDirty;
use crate::error::{Error, Result};
use crate::range::Range;
use std::fmt;
use std::str::FromStr;

/// The backends, in the order `Auto` prefers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// userfaultfd async write-protect + `PAGEMAP_SCAN` (Linux ≥ 6.7): the kernel marks, one
    /// ioctl harvests and re-protects; exact; first write ≈ 1 µs.
    UffdWp,
    /// `PROT_READ` + a SIGSEGV handler that records the page and re-enables writes: exact, works
    /// on any POSIX kernel, but the first write to a page costs a signal.
    Mprotect,
    /// Soft-dirty pte bits (`clear_refs` ← 4, pagemap bit 55) where the kernel has them. Its
    /// reset is process-wide and not atomic with the read, so writers must be quiescent during a
    /// QUERY; that is why `Auto` ranks it below `mprotect` (see `docs/kmod-shim.md`).
    SoftDirty,
    /// No tracking: every page is dirty every time. The baseline and the last resort.
    Full,
}

impl BackendKind {
    /// All backends, in `Auto`'s order of preference.
    pub const ALL: [BackendKind; 4] = [
        BackendKind::UffdWp,
        BackendKind::Mprotect,
        BackendKind::SoftDirty,
        BackendKind::Full,
    ];

    /// The name used on command lines, in `CPT_BACKEND` and in benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::UffdWp => "uffd-wp",
            BackendKind::Mprotect => "mprotect",
            BackendKind::SoftDirty => "soft-dirty",
            BackendKind::Full => "full",
        }
    }

    /// Whether QUERY reports exactly the written pages (else: a superset).
    pub fn is_exact(self) -> bool {
        matches!(self, BackendKind::UffdWp | BackendKind::Mprotect)
    }

    /// Checks that this backend works here; `Err` carries the reason it does not.
    pub fn probe(self) -> Result<(), String> {
        match self {
            BackendKind::UffdWp => uffd_wp::probe(),
            BackendKind::Mprotect => mprotect::probe(),
            BackendKind::SoftDirty => soft_dirty::probe(),
            BackendKind::Full => Ok(()),
        }
    }

    pub(crate) fn open(self) -> Result<Box<dyn Tracker>> {
        let unavailable = |reason| Error::Unavailable {
            backend: self,
            reason,
        };
        self.probe().map_err(unavailable)?;
        Ok(match self {
            BackendKind::UffdWp => Box::new(uffd_wp::UffdWp::open().map_err(unavailable)?),
            BackendKind::Mprotect => Box::new(mprotect::Mprotect::open().map_err(unavailable)?),
            BackendKind::SoftDirty => Box::new(soft_dirty::SoftDirty::open().map_err(unavailable)?),
            BackendKind::Full => Box::new(full::Full),
        })
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the caller asks for: one backend, or the best that works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Probe in order of preference and take the first that works.
    #[default]
    Auto,
    /// This backend or an error.
    Only(BackendKind),
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(BackendChoice::Auto);
        }
        BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .map(BackendChoice::Only)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown backend '{s}' (auto, uffd-wp, mprotect, soft-dirty, full)"
                ))
            })
    }
}

/// The result of opening a backend: which one, and why it was chosen.
pub(crate) struct Selected {
    pub tracker: Box<dyn Tracker>,
    pub why: String,
}

pub(crate) fn select(choice: BackendChoice) -> Result<Selected> {
    match choice {
        BackendChoice::Only(kind) => Ok(Selected {
            tracker: kind.open()?,
            why: format!("{kind} was asked for"),
        }),
        BackendChoice::Auto => {
            let mut rejected = Vec::new();
            for kind in BackendKind::ALL {
                match kind.open() {
                    Ok(tracker) => {
                        let why = if rejected.is_empty() {
                            format!("{kind} is the best backend and works here")
                        } else {
                            format!("{kind} chosen; {}", rejected.join("; "))
                        };
                        return Ok(Selected { tracker, why });
                    }
                    Err(e) => rejected.push(e.to_string()),
                }
            }
            unreachable!("the full backend always opens")
        }
    }
}

/// A dirty-tracking mechanism. Implementations keep whatever per-range state they need.
pub(crate) trait Tracker: Send {
    fn kind(&self) -> BackendKind;
    /// Starts tracking `r` (validated, claimed and mapped read-write): pages written from now on
    /// are reported by the next harvest.
    fn add(&mut self, r: Range) -> Result<()>;
    /// Stops tracking `r` and leaves it writable.
    fn remove(&mut self, r: Range) -> Result<()>;
    /// ORs into each target the pages written since the previous harvest and starts a new epoch
    /// for them. Each write lands in this harvest or the next one, never in neither.
    fn harvest(&mut self, targets: &mut [RangeDirty]) -> Result<()>;
    /// [`Tracker::harvest`], told that no page of `targets[i]` at or above `written_end[i]` was
    /// ever written: a backend whose cost grows with the tracked size may look below it only.
    /// `None` is no promise. Allocation-free where `harvest` is.
    fn harvest_below(
        &mut self,
        targets: &mut [RangeDirty],
        written_end: &[Option<usize>],
    ) -> Result<()> {
        let _ = written_end;
        self.harvest(targets)
    }
}
