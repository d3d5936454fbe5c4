//! The `mprotect` backend: tracked pages are `PROT_READ`; the first write to one raises
//! SIGSEGV, whose handler sets the page's bit in an atomic bitmap and makes the page writable
//! again. It works on any POSIX kernel and with any number of threads, at the price of a signal
//! per first write (see `docs/performance.md` for the figure next to `uffd-wp`'s).
//!
//! # Signal-safety and atomicity
//! The handler may run on any thread at any moment, so everything it touches is a fixed table of
//! atomics ([`SLOTS`]) and it calls only `mprotect`, `sigaction`, `raise` and `sched_yield`.
//! Changing the table and harvesting it happen in an *exclusive section*: a Dekker-style pair of
//! atomics (`EXCLUSIVE`, `IN_HANDLER`, both `SeqCst`) guarantees that no handler is between
//! "set the bit" and "make the page writable" while a harvest reads bits and re-protects pages.
//! So a page is either (bit set, writable) → reported and re-protected now, or (bit clear,
//! read-only) → its write faults after the harvest and is reported next time. Nothing is lost.
//!
//! # Faults that are not ours
//! A fault outside every tracked range goes to the handler that was installed before ours
//! (Rust's own stack-overflow reporter, usually); if that was the default action, the default is
//! restored and the fault re-executes, so the process dies exactly as it would have.
//!
//! # Mapping count
//! Every page made writable inside a read-only range splits a VMA. When the kernel refuses
//! (`vm.max_map_count`), the handler makes the whole range writable and flags it *saturated*:
//! the next harvest reports every page of that range (a superset, never a miss).

use super::{BackendKind, Tracker};
use crate::dirty::{PageBits, RangeDirty};
use crate::error::{Error, Result};
use crate::range::{page_size, Range};
use crate::sys::ScratchMap;
use bitvec::prelude::*;
use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, Once};

/// Capacity of the signal-safe range table (across all `Mprotect` trackers of the process).
pub(crate) const MAX_RANGES: usize = 256;

struct Slot {
    start: AtomicUsize,
    /// Number of pages; 0 marks a free slot.
    pages: AtomicUsize,
    /// `pages.div_ceil(64)` words, owned by the slot while it is published.
    bits: AtomicPtr<AtomicU64>,
    saturated: AtomicBool,
}

impl Slot {
    #[allow(clippy::declare_interior_mutable_const)] // only used to initialise SLOTS
    const FREE: Slot = Slot {
        start: AtomicUsize::new(0),
        pages: AtomicUsize::new(0),
        bits: AtomicPtr::new(std::ptr::null_mut()),
        saturated: AtomicBool::new(false),
    };
}

static SLOTS: [Slot; MAX_RANGES] = [Slot::FREE; MAX_RANGES];
static EXCLUSIVE: AtomicBool = AtomicBool::new(false);
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
static TABLE_LOCK: Mutex<()> = Mutex::new(());
static PAGE: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// The SIGSEGV disposition found before ours; written once, before our handler is installed.
struct PrevAction(UnsafeCell<MaybeUninit<libc::sigaction>>);
// SAFETY: written exactly once inside `INSTALL.call_once`, before the handler that reads it is
// installed; read-only afterwards.
unsafe impl Sync for PrevAction {}
static PREV: PrevAction = PrevAction(UnsafeCell::new(MaybeUninit::uninit()));

fn syscall_err(call: &'static str, r: Range, source: std::io::Error) -> Error {
    Error::Syscall {
        backend: BackendKind::Mprotect,
        call,
        addr: r.start(),
        len: r.len(),
        source,
    }
}

fn protect(addr: usize, len: usize, prot: libc::c_int) -> bool {
    // SAFETY: only changes protection of pages inside a tracked range, which the caller
    // registered as private read-write memory; no Rust reference is invalidated by it.
    unsafe { libc::mprotect(addr as *mut c_void, len, prot) == 0 }
}

/// Holds the table lock and keeps signal handlers out while alive. Asynchronous signals are
/// blocked on this thread meanwhile: a handler that interrupted us and wrote tracked memory
/// would wait in `handler_enter` for us forever.
struct Exclusive<'a> {
    _guard: MutexGuard<'a, ()>,
    old_mask: libc::sigset_t,
}

fn exclusive() -> Exclusive<'static> {
    // SAFETY: sigset_t is plain data; pthread_sigmask reads `all` and writes `old_mask`.
    let old_mask = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        // SIGSEGV stays deliverable: a real fault in the exclusive section must still crash.
        libc::sigdelset(&mut all, libc::SIGSEGV);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    };
    let guard = TABLE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    EXCLUSIVE.store(true, SeqCst);
    while IN_HANDLER.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    Exclusive {
        _guard: guard,
        old_mask,
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        EXCLUSIVE.store(false, SeqCst);
        // SAFETY: restoring the mask saved in `exclusive`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

/// Handler side of the exclusion: wait while a harvest or table change is in progress.
fn handler_enter() {
    loop {
        while EXCLUSIVE.load(SeqCst) {
            // SAFETY: sched_yield is async-signal-safe and has no preconditions.
            unsafe { libc::sched_yield() };
        }
        IN_HANDLER.fetch_add(1, SeqCst);
        if !EXCLUSIVE.load(SeqCst) {
            return;
        }
        IN_HANDLER.fetch_sub(1, SeqCst);
    }
}

/// Records a write fault at `addr` if it is ours. Async-signal-safe: atomics and mprotect only.
fn record_write(addr: usize) -> bool {
    let page = PAGE.load(SeqCst);
    for slot in &SLOTS {
        let pages = slot.pages.load(SeqCst);
        let start = slot.start.load(SeqCst);
        if pages == 0 || addr < start || addr - start >= pages * page {
            continue;
        }
        let i = (addr - start) / page;
        let bits = slot.bits.load(SeqCst);
        // SAFETY: a published slot's `bits` holds pages.div_ceil(64) words and is freed only in
        // an exclusive section, which cannot run while this handler is inside (handler_enter).
        unsafe { (*bits.add(i / 64)).fetch_or(1 << (i % 64), SeqCst) };
        if protect(start + i * page, page, libc::PROT_READ | libc::PROT_WRITE) {
            return true;
        }
        // Most likely vm.max_map_count: give up page granularity for this range until the next
        // harvest, which then reports all of it.
        slot.saturated.store(true, SeqCst);
        return protect(start, pages * page, libc::PROT_READ | libc::PROT_WRITE);
    }
    false
}

thread_local! {
    /// The last fault address on this thread that was in no tracked range (0: none). A fault at
    /// an address that *was* tracked until a REMOVE ran while we waited in `handler_enter` finds
    /// no slot; it is retried once (the page is writable by now) before being treated as a real
    /// fault. Const-initialised and without a destructor, so touching it is signal-safe.
    static LAST_UNKNOWN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

extern "C" fn on_sigsegv(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: reading this thread's errno, to give it back unchanged to the interrupted code.
    let saved_errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel hands a valid siginfo_t to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    handler_enter();
    let ours = code > 0 && record_write(addr);
    IN_HANDLER.fetch_sub(1, SeqCst);
    let retry = code > 0 && !ours && LAST_UNKNOWN.with(|l| l.replace(addr)) != addr;
    if ours {
        LAST_UNKNOWN.with(|l| l.set(0));
    } else if !retry {
        LAST_UNKNOWN.with(|l| l.set(0));
        chain(sig, info, ctx);
    }
    // SAFETY: restoring this thread's errno.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Passes a fault that is not ours to the previous disposition.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: PREV was initialised before this handler was installed (see PrevAction).
    let prev = unsafe { (*PREV.0.get()).assume_init_ref() };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: sigaction and raise are async-signal-safe; restoring the default makes the
        // faulting instruction (or the re-raised signal) end the process as it would have.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
            // SAFETY: `info` is the valid siginfo of this signal.
            if (*info).si_code <= 0 {
                libc::raise(sig);
            }
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: with SA_SIGINFO, sa_sigaction holds a three-argument handler.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO, sa_sigaction holds a one-argument handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

fn install_handler() -> Result<(), String> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        PAGE.store(page_size(), SeqCst);
        // SAFETY: reads the current disposition into PREV before anything can read PREV, then
        // installs ours; both structs are valid for sigaction.
        unsafe {
            let prev = (*PREV.0.get()).as_mut_ptr();
            if libc::sigaction(libc::SIGSEGV, std::ptr::null(), prev) != 0 {
                result = Err(format!(
                    "sigaction(SIGSEGV) query failed: {}",
                    std::io::Error::last_os_error()
                ));
                return;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigsegv as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
            // Nothing else runs inside our handler: a handler of another signal that wrote
            // tracked memory would fault with SIGSEGV blocked, which the kernel makes fatal.
            libc::sigfillset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) != 0 {
                result = Err(format!(
                    "sigaction(SIGSEGV) failed: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    });
    result
}

pub(crate) struct Mprotect {
    /// Our ranges and the slot each occupies.
    slots: Vec<(Range, usize)>,
}

impl Mprotect {
    pub(crate) fn open() -> Result<Mprotect, String> {
        install_handler()?;
        Ok(Mprotect { slots: Vec::new() })
    }

    fn slot_of(&self, r: Range) -> Option<usize> {
        self.slots.iter().find(|(s, _)| *s == r).map(|&(_, i)| i)
    }
}

impl Tracker for Mprotect {
    fn kind(&self) -> BackendKind {
        BackendKind::Mprotect
    }

    fn add(&mut self, r: Range) -> Result<()> {
        let words: Box<[AtomicU64]> = (0..r.pages().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let bits = Box::into_raw(words).cast::<AtomicU64>();
        let _x = exclusive();
        let Some(i) = SLOTS.iter().position(|s| s.pages.load(SeqCst) == 0) else {
            // SAFETY: `bits` came from Box::into_raw just above and was never published.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    bits,
                    r.pages().div_ceil(64),
                ))
            });
            return Err(Error::TooManyRanges { max: MAX_RANGES });
        };
        let slot = &SLOTS[i];
        slot.start.store(r.start(), SeqCst);
        slot.bits.store(bits, SeqCst);
        slot.saturated.store(false, SeqCst);
        slot.pages.store(r.pages(), SeqCst);
        if !protect(r.start(), r.len(), libc::PROT_READ) {
            let e = std::io::Error::last_os_error();
            free_slot(i);
            return Err(syscall_err("mprotect(PROT_READ)", r, e));
        }
        self.slots.push((r, i));
        Ok(())
    }

    fn remove(&mut self, r: Range) -> Result<()> {
        let i = self.slot_of(r).ok_or(Error::NotRegistered {
            addr: r.start(),
            len: r.len(),
        })?;
        let _x = exclusive();
        let ok = protect(r.start(), r.len(), libc::PROT_READ | libc::PROT_WRITE);
        let e = std::io::Error::last_os_error();
        free_slot(i);
        self.slots.retain(|&(_, s)| s != i);
        if !ok {
            return Err(syscall_err("mprotect(PROT_READ|PROT_WRITE)", r, e));
        }
        Ok(())
    }

    fn harvest(&mut self, targets: &mut [RangeDirty]) -> Result<()> {
        let _x = exclusive();
        for t in targets.iter_mut() {
            let r = t.range;
            let i = self.slot_of(r).ok_or(Error::NotRegistered {
                addr: r.start(),
                len: r.len(),
            })?;
            let slot = &SLOTS[i];
            let saturated = slot.saturated.swap(false, SeqCst);
            let mut fresh: PageBits = bitvec![u64, Lsb0; 0; r.pages()];
            let bits = slot.bits.load(SeqCst);
            for (w, out) in fresh.as_raw_mut_slice().iter_mut().enumerate() {
                // SAFETY: the slot is published and ours; `w` < pages.div_ceil(64), the length
                // of its bitmap; handlers are kept out by the exclusive section.
                *out = unsafe { (*bits.add(w)).swap(0, SeqCst) };
            }
            if saturated {
                fresh.fill(true);
            }
            t.pages |= &fresh;
            if let Err(e) = reprotect(r, &fresh, saturated) {
                // Some of these pages may be writable with their bits clear: report the whole
                // range next time (and re-protect it then) rather than miss a write.
                slot.saturated.store(true, SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Makes the pages just harvested read-only again: run by run when they are few (which also
/// merges the VMAs the handler split), the whole range in one call when they are many.
fn reprotect(r: Range, fresh: &PageBits, saturated: bool) -> Result<()> {
    let many = saturated || fresh.count_ones() > r.pages() / 16;
    let fail = |e| syscall_err("mprotect(PROT_READ)", r, e);
    if many {
        if !protect(r.start(), r.len(), libc::PROT_READ) {
            return Err(fail(std::io::Error::last_os_error()));
        }
        return Ok(());
    }
    let dirty = RangeDirty {
        range: r,
        pages: fresh.clone(),
    };
    for (addr, len) in dirty.runs() {
        if !protect(addr, len, libc::PROT_READ) {
            return Err(fail(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Unpublishes slot `i` and frees its bitmap. Call only inside an exclusive section.
fn free_slot(i: usize) {
    let slot = &SLOTS[i];
    let pages = slot.pages.swap(0, SeqCst);
    let bits = slot.bits.swap(std::ptr::null_mut(), SeqCst);
    if !bits.is_null() {
        // SAFETY: `bits` came from Box::into_raw of a slice of pages.div_ceil(64) words in `add`;
        // the slot is unpublished and no handler is inside (exclusive section).
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(bits, pages.div_ceil(64)))
        });
    }
}

/// Installs the handler and checks on a scratch page that a write is caught and reported.
pub(crate) fn probe() -> Result<(), String> {
    let mut m = Mprotect::open()?;
    let page = page_size();
    let map = ScratchMap::new(2 * page).map_err(|e| format!("probe mmap failed: {e}"))?;
    let r = Range::new(map.ptr as usize, map.len).map_err(|e| e.to_string())?;
    m.add(r).map_err(|e| e.to_string())?;
    map.touch(page);
    let mut t = [RangeDirty::clean(r)];
    let res = m.harvest(&mut t);
    let _ = m.remove(r);
    res.map_err(|e| e.to_string())?;
    if t[0].pages.iter_ones().collect::<Vec<_>>() != [1] {
        return Err(format!(
            "a write to page 1 was reported as {:?}",
            t[0].pages
        ));
    }
    Ok(())
}
