//! [`Shim`]: the safe face of `cptctl()` — ADD, REMOVE and QUERY over one backend.

use crate::backend::{self, BackendChoice, BackendKind, Tracker};
use crate::dirty::{DirtySet, RangeDirty};
use crate::error::{Error, Result};
use crate::range::{self, check_mapped_rw, Range};
use hotspare_sys::cpt_range;

/// Tracks writes to a set of ranges and answers "which pages changed since the last QUERY".
///
/// A QUERY's answer and the start of the next epoch are one step: every write lands in exactly
/// the answer of the QUERY that follows it (the `soft-dirty` and `full` backends may also report
/// pages that were not written; none ever misses one). Ranges must be private read-write
/// mappings; they may be registered before their pages are first touched.
///
/// ```
/// # fn main() -> Result<(), kmod_shim::Error> {
/// use kmod_shim::{BackendChoice, Range, Shim};
/// let mut mem = vec![0u8; 8 * 4096 + 4096];
/// let off = mem.as_ptr().align_offset(4096);
/// let state = &mut mem[off..off + 8 * 4096];
/// let mut shim = Shim::new(BackendChoice::Auto)?;
/// shim.add(&[Range::of_slice(state)?])?;
/// state[3 * 4096] = 1;
/// let dirty = shim.query()?;
/// assert!(dirty.is_dirty(state.as_ptr() as usize + 3 * 4096));
/// # Ok(()) }
/// ```
pub struct Shim {
    tracker: Box<dyn Tracker>,
    why: String,
    /// Per range, pages harvested from the backend but not yet handed out.
    pending: Vec<RangeDirty>,
    /// Per range (as `pending`), the end of what may have been written: see
    /// [`Shim::set_written_end`].
    written_end: Vec<Option<usize>>,
    owner: libc::pid_t,
}

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim")
            .field("backend", &self.backend())
            .field("ranges", &self.pending.len())
            .finish()
    }
}

impl Shim {
    /// Opens a backend. With [`BackendChoice::Auto`], the first of [`BackendKind::ALL`] whose
    /// probe passes; [`Shim::why`] says which and why the better ones were not taken.
    pub fn new(choice: BackendChoice) -> Result<Shim> {
        let backend::Selected { tracker, why } = backend::select(choice)?;
        // SAFETY: getpid has no preconditions.
        let owner = unsafe { libc::getpid() };
        Ok(Shim {
            tracker,
            why,
            pending: Vec::new(),
            written_end: Vec::new(),
            owner,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.tracker.kind()
    }

    /// Why this backend was chosen (and, with `Auto`, why each better one was not).
    pub fn why(&self) -> &str {
        &self.why
    }

    /// The tracked ranges, in the order they were added.
    pub fn ranges(&self) -> impl Iterator<Item = Range> + '_ {
        self.pending.iter().map(|p| p.range)
    }

    /// Whether we run in a `cptfork` child of the process that opened this shim.
    pub(crate) fn is_child_of_owner(&self) -> bool {
        // SAFETY: getpid has no preconditions.
        unsafe { libc::getpid() != self.owner }
    }

    pub(crate) fn not_in_child(&self) -> Result<()> {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } != self.owner {
            return Err(Error::InChild);
        }
        Ok(())
    }

    /// ADD: starts tracking `ranges`, all or none. Refuses ranges that overlap each other or
    /// anything already tracked in this process, and ranges that are not entirely private
    /// read-write memory. Pages written from now on appear in the next QUERY.
    pub fn add(&mut self, ranges: &[Range]) -> Result<()> {
        self.not_in_child()?;
        range::claim(ranges)?;
        if let Err(e) = ranges.iter().try_for_each(|r| check_mapped_rw(*r)) {
            range::release(ranges);
            return Err(e);
        }
        for (i, r) in ranges.iter().enumerate() {
            if let Err(e) = self.tracker.add(*r) {
                for done in &ranges[..i] {
                    let _ = self.tracker.remove(*done);
                }
                range::release(ranges);
                return Err(e);
            }
        }
        self.pending
            .extend(ranges.iter().map(|r| RangeDirty::clean(*r)));
        self.written_end.extend(ranges.iter().map(|_| None));
        Ok(())
    }

    /// Promises that no page of the tracked range `r` at or above `end` has been written since
    /// it was added, until a later call raises `end`: harvests look below it only, which for
    /// `uffd-wp` is most of the cost of a QUERY over a large, mostly unused range (a heap
    /// reserved at 1 GiB whose allocator has handed out 8 MiB). A promise broken loses writes.
    /// `end` never moves down; a range that is not tracked is ignored.
    pub fn set_written_end(&mut self, r: Range, end: usize) {
        if let Some(i) = self.pending.iter().position(|p| p.range == r) {
            let end = end.clamp(r.start(), r.end());
            let e = &mut self.written_end[i];
            *e = Some(e.map_or(end, |was| was.max(end)));
        }
    }

    /// REMOVE: stops tracking `ranges`; each must be exactly a range given to [`Shim::add`].
    /// Writes to them since the last QUERY are forgotten.
    pub fn remove(&mut self, ranges: &[Range]) -> Result<()> {
        self.not_in_child()?;
        if let Some((_, r)) = ranges
            .iter()
            .enumerate()
            .find(|(i, r)| ranges[..*i].contains(r))
        {
            return Err(Error::Invalid(format!(
                "range {:#x}+{:#x} is listed twice",
                r.start(),
                r.len()
            )));
        }
        if let Some(r) = ranges
            .iter()
            .find(|r| !self.pending.iter().any(|p| p.range == **r))
        {
            return Err(Error::NotRegistered {
                addr: r.start(),
                len: r.len(),
            });
        }
        let mut first_err = None;
        for r in ranges {
            if let Err(e) = self.tracker.remove(*r) {
                first_err.get_or_insert(e);
            }
        }
        let mut keep = self.pending.iter().map(|p| !ranges.contains(&p.range));
        self.written_end.retain(|_| keep.next().unwrap_or(true));
        self.pending.retain(|p| !ranges.contains(&p.range));
        range::release(ranges);
        first_err.map_or(Ok(()), Err)
    }

    /// QUERY: the pages written since the previous QUERY; the next epoch starts with it.
    pub fn query(&mut self) -> Result<DirtySet> {
        self.harvest()?;
        Ok(self.take_pending())
    }

    pub(crate) fn harvest(&mut self) -> Result<()> {
        self.not_in_child()?;
        self.tracker
            .harvest_below(&mut self.pending, &self.written_end)
    }

    pub(crate) fn take_pending(&mut self) -> DirtySet {
        let ranges = self
            .pending
            .iter_mut()
            .map(|p| std::mem::replace(p, RangeDirty::clean(p.range)))
            .collect();
        DirtySet { ranges }
    }

    pub(crate) fn clear_pending(&mut self) {
        for p in &mut self.pending {
            p.pages.fill(false);
        }
    }

    /// Moves up to `out.len()` pending runs into `out` (clearing them) and returns how many runs
    /// were pending in all. Allocation-free, so a `cptfork` child may call it.
    pub(crate) fn drain_runs(&mut self, out: &mut [cpt_range]) -> usize {
        let page = range::page_size();
        let mut total = 0;
        for p in &mut self.pending {
            let mut next = 0;
            while let Some(first) = p.pages[next..].first_one().map(|i| i + next) {
                let len = p.pages[first..]
                    .first_zero()
                    .unwrap_or(p.pages.len() - first);
                if let Some(slot) = out.get_mut(total) {
                    *slot = cpt_range {
                        addr: (p.range.start() + first * page) as *mut _,
                        len: len * page,
                    };
                    p.pages[first..first + len].fill(false);
                }
                total += 1;
                next = first + len;
            }
        }
        total
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if self.not_in_child().is_err() {
            return;
        }
        let ranges: Vec<Range> = self.ranges().collect();
        for r in &ranges {
            let _ = self.tracker.remove(*r);
        }
        range::release(&ranges);
    }
}
