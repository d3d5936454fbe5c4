//! The `soft-dirty` backend: pte soft-dirty bits, read from `/proc/self/pagemap` (bit 55) and
//! reset by writing `4` to `/proc/self/clear_refs`.
//!
//! Availability is decided by probing, never by kernel version: a kernel built without
//! `CONFIG_MEM_SOFT_DIRTY` (like the one on our machines) accepts the `clear_refs` write but
//! never sets bit 55, so the probe writes a page and looks.
//!
//! Two limits that the other backends do not have, and why `Auto` ranks it below `mprotect`:
//! the reset is process-wide (so a harvest always reads every range before one reset), and
//! the read and the reset are two steps, so a write that lands between them is lost. Callers
//! must keep writers to tracked memory quiescent during a QUERY. This backend cannot be tested
//! on our machines; its code follows the kernel's pagemap documentation.

use super::{BackendKind, Tracker};
use crate::dirty::RangeDirty;
use crate::error::{Error, Result};
use crate::range::{page_size, Range};
use crate::sys::ScratchMap;
use hotspare_sys::pagemap::{CLEAR_REFS_SOFT_DIRTY, PM_SOFT_DIRTY};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

pub(crate) struct SoftDirty {
    pagemap: File,
    clear_refs: File,
    entries: Vec<u8>,
}

fn syscall_err(call: &'static str, r: Option<Range>, source: io::Error) -> Error {
    Error::Syscall {
        backend: BackendKind::SoftDirty,
        call,
        addr: r.map_or(0, |r| r.start()),
        len: r.map_or(0, |r| r.len()),
        source,
    }
}

impl SoftDirty {
    pub(crate) fn open() -> Result<SoftDirty, String> {
        let pagemap = File::open("/proc/self/pagemap")
            .map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
        let clear_refs = OpenOptions::new()
            .write(true)
            .open("/proc/self/clear_refs")
            .map_err(|e| format!("cannot open /proc/self/clear_refs: {e}"))?;
        Ok(SoftDirty {
            pagemap,
            clear_refs,
            entries: Vec::new(),
        })
    }

    fn reset(&mut self) -> io::Result<()> {
        self.clear_refs.write_all(&[CLEAR_REFS_SOFT_DIRTY])
    }

    fn read_entries(&mut self, r: Range) -> io::Result<()> {
        self.entries.resize(r.pages() * 8, 0);
        let offset = (r.start() / page_size()) as u64 * 8;
        self.pagemap.read_exact_at(&mut self.entries, offset)
    }

    fn entry(&self, i: usize) -> u64 {
        let mut e = [0u8; 8];
        e.copy_from_slice(&self.entries[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(e)
    }
}

impl Tracker for SoftDirty {
    fn kind(&self) -> BackendKind {
        BackendKind::SoftDirty
    }
    fn add(&mut self, _: Range) -> Result<()> {
        // Bits set before now are harmless: they only make the first answer a superset.
        Ok(())
    }
    fn remove(&mut self, _: Range) -> Result<()> {
        Ok(())
    }
    fn harvest(&mut self, targets: &mut [RangeDirty]) -> Result<()> {
        for t in targets.iter_mut() {
            self.read_entries(t.range)
                .map_err(|e| syscall_err("pread(pagemap)", Some(t.range), e))?;
            for i in 0..t.range.pages() {
                if self.entry(i) & PM_SOFT_DIRTY != 0 {
                    t.pages.set(i, true);
                }
            }
        }
        self.reset()
            .map_err(|e| syscall_err("write(clear_refs)", None, e))
    }
}

/// Writes a scratch page, resets soft-dirty, checks bit 55 is clear, writes again, checks set.
pub(crate) fn probe() -> Result<(), String> {
    let mut sd = SoftDirty::open()?;
    let map = ScratchMap::new(page_size()).map_err(|e| format!("probe mmap failed: {e}"))?;
    let r = Range::new(map.ptr as usize, map.len).map_err(|e| e.to_string())?;
    map.touch(0);
    sd.reset()
        .map_err(|e| format!("writing 4 to /proc/self/clear_refs failed: {e}"))?;
    sd.read_entries(r)
        .map_err(|e| format!("reading /proc/self/pagemap failed: {e}"))?;
    if sd.entry(0) & PM_SOFT_DIRTY != 0 {
        return Err("pagemap bit 55 stays set after clear_refs=4".into());
    }
    map.touch(0);
    sd.read_entries(r)
        .map_err(|e| format!("reading /proc/self/pagemap failed: {e}"))?;
    if sd.entry(0) & PM_SOFT_DIRTY == 0 {
        return Err(
            "pagemap bit 55 stays clear after a write: the kernel is built without \
                    CONFIG_MEM_SOFT_DIRTY"
                .into(),
        );
    }
    Ok(())
}
