//! [`GlobalHeap`]: the checkpoint heap as the program's global allocator, so that `Box`,
//! `String`, `Vec` and std's collections live in checkpoint memory.
//!
//! ```ignore
//! #[global_allocator]
//! static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();
//! ```
//!
//! **Routing.** Until the library has its heap (a fresh start's reservation, or a resume's
//! mapping of the image — the end of [`crate::Builder::open`]) every allocation goes to the
//! system allocator; from then on every allocation of the program's threads goes to the heap.
//! `dealloc` and `realloc` go by address: a block inside the heap's range is the heap's, any other
//! is the system's, whenever it was allocated. The library's own threads (checkpoint writer,
//! link to the spare, status and log writers) and the library's own calls (`Builder::open`,
//! `cpt()`, descriptor and blob registration) allocate in ordinary memory: their buffers are not
//! state, and a staging buffer in the heap would be captured by the next checkpoint, which would
//! fill it again ([`Outside`]).
//!
//! **Layout, all inside the heap.** Requests up to 32 KiB with an alignment their size class
//! satisfies go to one of [`NCLASSES`] size classes (16-byte steps to 128, then four classes per
//! power of two); larger ones to talc, the heap's general allocator. Each thread owns a *slot*
//! of a table in the heap: per class a free list threaded through the free blocks and a bump
//! region carved from a 64 KiB+ chunk. A thread allocates and frees in its own slot under the
//! slot's lock, which only the capture ever contends for, so threads do not serialize on one
//! lock per allocation; it goes to the heap-wide lock only to refill a class (a batch from the
//! class's shared list, or a new chunk from talc), to give back a surplus, for a large block, or
//! to claim a slot. Blocks of a class stay in the class: small memory is not returned to talc.
//!
//! **The capture sees the allocator consistent.** `cpt()` copies (or forks) the heap while
//! holding the heap-wide lock and then the lock of every slot ever claimed
//! ([`Capture`]). Every change to the allocator's bookkeeping is made under one of those: the
//! owner's slot lock for its fast paths (free-list push/pop, bump), the heap-wide lock for
//! everything else — including the owner's writes to its own slot during a refill or a give-back,
//! which is why those need no slot lock: a capture holds the heap-wide lock all along, so it
//! cannot run in between. Claims of new slots happen under the heap-wide lock too, so the set of
//! slots the capture locks cannot grow under it. A thread never waits for the heap-wide lock
//! while it holds its slot's lock (it releases the slot first), so the capture's order
//! (heap-wide, then slots) cannot deadlock. The program's *objects* are the program's business,
//! as before: `cpt()` is called where the program's state is consistent (its own locks held).
//! A block a thread was allocating or freeing when the capture came is, in the image, either
//! allocated or free, never half of each; one a thread of the dead process had allocated and
//! no state object reaches is leaked after resume, never corrupt.
//!
//! **While capturing**, the capturing thread holds every allocator lock: its allocations go to
//! the system allocator, and its frees of heap blocks are deferred until the locks are released
//! (a fixed thread-local buffer; if it ever overflows, the block is leaked and counted).
//!
//! **After resume** the slots of the old process are free for the new process's threads to
//! claim, lists and all (a slot's owner is the process incarnation that claimed it, as
//! [`crate::Mutex`] does; the locks the capture held are taken over the same way), so nothing
//! the dead threads had cached is lost.
//!
//! **Recursion.** Nothing here allocates through the global allocator. A thread's first heap
//! allocation registers a thread-local destructor (which releases its slot when the thread
//! ends); if registering allocates, that nested allocation finds the thread in the middle of
//! claiming and takes the shared path (with `libhotspare_malloc.so` it goes to the fallback
//! instead: that library keeps glibc's registration of thread-local destructors outside the
//! heap, [`GlobalHeap::outside`]). After the destructor ran the thread uses the shared path.

use crate::heap::Header;
use crate::sync::{incarnation, RawLock};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, UnsafeCell};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Size classes of small blocks.
pub(crate) const NCLASSES: usize = 40;
/// The largest small block.
const MAX_SMALL: usize = 32 << 10;
/// Thread slots in the table; threads beyond this use the shared path (correct, slower).
pub(crate) const NSLOTS: usize = 256;
/// Frees a capturing thread may defer.
const DEFER: usize = 64;

/// Size in bytes of class `c` (from the table).
#[inline(always)]
pub(crate) fn class_size(c: usize) -> usize {
    SIZES[c]
}

const SIZES: [usize; NCLASSES] = {
    let mut t = [0; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = compute_class_size(c);
        c += 1;
    }
    t
};

/// `limit` of each class, precomputed (a division per free otherwise).
const LIMITS: [usize; NCLASSES] = {
    let mut t = [0; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        let b = 16384 / compute_class_size(c);
        t[c] = 2 * if b < 4 {
            4
        } else if b > 64 {
            64
        } else {
            b
        };
        c += 1;
    }
    t
};

/// Size in bytes of class `c`.
const fn compute_class_size(c: usize) -> usize {
    if c < 8 {
        (c + 1) * 16
    } else {
        let k = 7 + (c - 8) / 4;
        let sub = (c - 8) % 4;
        (1 << k) + (sub + 1) * (1 << (k - 2))
    }
}

/// The class of a request of `size` bytes (non-zero, at most [`MAX_SMALL`]).
#[inline(always)]
const fn class_of_size(size: usize) -> usize {
    if size <= 128 {
        size.div_ceil(16) - 1
    } else {
        let k = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
        let sub = ((size - 1) >> (k - 2)) & 3;
        8 + (k - 7) * 4 + sub
    }
}

/// The class serving `layout`, if it is small: its size fits and its blocks (at multiples of the
/// class size from a 4 KiB-aligned chunk) are aligned enough.
#[inline(always)]
pub(crate) fn class_of(layout: Layout) -> Option<usize> {
    let (size, align) = (layout.size(), layout.align());
    if size == 0 || size > MAX_SMALL || align > 4096 {
        return None;
    }
    // Alignments are powers of two: masks, not divisions (this runs on every allocation).
    let need = (size + align - 1) & !(align - 1);
    if need > MAX_SMALL {
        return None;
    }
    let c = class_of_size(need);
    (class_size(c) & (align - 1) == 0).then_some(c)
}

/// The alignment every block of class `c` has.
#[inline(always)]
fn class_align(c: usize) -> usize {
    1 << class_size(c).trailing_zeros().min(12)
}

/// Blocks moved between a slot and the shared list at once.
fn batch(c: usize) -> usize {
    (16384 / class_size(c)).clamp(4, 64)
}

/// A slot gives a batch back once it caches more than this.
#[inline(always)]
fn limit(c: usize) -> usize {
    LIMITS[c]
}

/// Bytes of a chunk carved into blocks of class `c`.
fn chunk_bytes(c: usize) -> usize {
    (4 * class_size(c)).max(64 << 10)
}

/// A free list threaded through the blocks (each free block's first word is the next).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct List {
    head: usize,
    count: usize,
}

/// A slot's cache of one class: free blocks, and a bump region of a chunk.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Local {
    list: List,
    bump: usize,
    end: usize,
}

/// A thread's slot in the heap.
#[repr(C)]
struct Slot {
    /// Held by the owner for each fast-path operation, and by the capture.
    lock: RawLock,
    /// The incarnation of the process whose thread owns it; 0: free. Another process's value
    /// means free too (that process is gone).
    owner: AtomicU64,
    local: UnsafeCell<[Local; NCLASSES]>,
}

/// The allocator's part of the heap header (under the heap-wide lock).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Shared {
    lists: UnsafeCell<[List; NCLASSES]>,
    /// The slot table (allocated from talc at the first claim), 0 before, 1 if it did not fit.
    slots: AtomicUsize,
    /// Slots initialised so far (0..slots_used may be owned).
    slots_used: AtomicUsize,
}

impl Shared {
    pub(crate) const fn new() -> Shared {
        Shared {
            lists: UnsafeCell::new([List { head: 0, count: 0 }; NCLASSES]),
            slots: AtomicUsize::new(0),
            slots_used: AtomicUsize::new(0),
        }
    }
}

/// The heap's header address once the library has its heap (0 before).
static HEADER: AtomicUsize = AtomicUsize::new(0);
/// One past the heap's last byte.
static HEAP_END: AtomicUsize = AtomicUsize::new(0);
/// Set by any call of [`GlobalHeap`]'s `alloc`: it is the program's global allocator.
static SEEN: AtomicBool = AtomicBool::new(false);
/// Heap blocks a capturing thread could not defer (buffer full) and so leaked.
static LEAKED: AtomicU64 = AtomicU64::new(0);
/// The heap-full message was printed.
static FULL_REPORTED: AtomicBool = AtomicBool::new(false);

const NONE: u8 = 0;
const CLAIMING: u8 = 1;
const ACTIVE: u8 = 2;
/// No slot: the table is full or did not fit, or the thread is ending.
const SHARED: u8 = 3;

/// Per-thread state; no destructor (so using it never registers one, nor allocates).
struct Tls {
    slot: Cell<usize>,
    state: Cell<u8>,
    /// > 0: this thread's allocations go to the system allocator.
    outside: Cell<u32>,
    /// This thread holds every allocator lock (a capture).
    capturing: Cell<bool>,
    deferred_len: Cell<usize>,
    deferred: UnsafeCell<[(usize, usize, usize); DEFER]>,
}

thread_local! {
    static TLS: Tls = const {
        Tls {
            slot: Cell::new(0),
            state: Cell::new(NONE),
            outside: Cell::new(0),
            capturing: Cell::new(false),
            deferred_len: Cell::new(0),
            deferred: UnsafeCell::new([(0, 0, 0); DEFER]),
        }
    };
    /// Its destructor releases the thread's slot.
    static EXIT: ExitHook = const { ExitHook };
}

struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        let _ = TLS.try_with(|t| {
            if t.state.get() == ACTIVE {
                // SAFETY: ACTIVE means `slot` points at this thread's slot in the heap, which is
                // never unmapped.
                let s = unsafe { &*(t.slot.get() as *const Slot) };
                s.lock.lock();
                s.owner.store(0, Ordering::Release);
                s.lock.unlock();
            }
            t.state.set(SHARED);
        });
    }
}

/// The checkpoint heap as the global allocator (see the module documentation):
///
/// ```ignore
/// #[global_allocator]
/// static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();
/// ```
///
/// `F` is where allocations outside the heap go (before the library has its heap, on the
/// library's own threads, during a capture): the system allocator for a Rust program. A
/// `malloc` replacement (`libhotspare_malloc.so`) cannot use it — `System` calls `malloc`, which is
/// itself — and gives glibc's `__libc_malloc` family instead ([`GlobalHeap::with_fallback`]).
#[derive(Debug, Default)]
pub struct GlobalHeap<F = System> {
    fallback: F,
}

/// What [`GlobalHeap::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalHeapStats {
    /// Slots owned by threads of this process.
    pub slots_owned: usize,
    /// Slots ever initialised (owned, free, or left by a previous incarnation).
    pub slots_used: usize,
    /// Free small blocks, in slots and shared lists.
    pub free_blocks: usize,
    /// Bytes in those free blocks.
    pub free_bytes: usize,
    /// Bytes talc has handed out (chunks of small blocks, large blocks, the slot table, roots
    /// and `HeapAlloc` allocations).
    pub talc_allocated: usize,
    /// Bytes of chunks not carved into blocks yet (slots' bump regions).
    pub unbumped_bytes: usize,
    /// Bytes allocated and not freed: `talc_allocated` less the free blocks and the bump
    /// regions (small blocks count at their class's size). After a resume this includes what
    /// only the dead process's threads referred to (docs/library.md, "What a resumed process
    /// inherits").
    pub in_use_bytes: usize,
    /// Heap blocks a capturing thread leaked because its deferral buffer was full.
    pub leaked: u64,
}

impl GlobalHeap {
    /// The allocator (a `const fn`, for a `static`).
    pub const fn new() -> GlobalHeap {
        GlobalHeap { fallback: System }
    }

    /// Whether `p` lies in the checkpoint heap (the library has started and the address is
    /// inside its range) — for a program's own debug assertions that its state lives there.
    pub fn contains(p: *const u8) -> bool {
        header_for(p as usize).is_some()
    }

    /// Whether this program's global allocator is `GlobalHeap` (it has been called).
    pub fn in_use() -> bool {
        SEEN.load(Ordering::Relaxed)
    }

    /// Runs `f` with this thread's new allocations going to the fallback allocator, as on the
    /// library's own threads: for the C library's bookkeeping that a `malloc` replacement
    /// (`libhotspare_malloc.so`) must keep out of the heap, such as glibc's list of
    /// thread-local destructors.
    pub fn outside<R>(f: impl FnOnce() -> R) -> R {
        let _outside = Outside::enter();
        f()
    }

    /// Walks every free list of the allocator — with the allocator stopped, as a capture stops
    /// it — and checks that each block lies in the heap, at its class's alignment, and that the
    /// counts agree. For tests and debugging; `Err` names the first inconsistency.
    pub fn check() -> Result<GlobalHeapStats, String> {
        let base = HEADER.load(Ordering::Acquire);
        if base == 0 {
            return Err("the library has no heap yet".into());
        }
        // SAFETY: HEADER is only set to the base of the installed heap, which is never unmapped.
        let h = unsafe { &*(base as *const Header) };
        let end = HEAP_END.load(Ordering::Relaxed);
        let _outside = Outside::enter();
        let cap = Capture::begin(h);
        let mut st = GlobalHeapStats {
            leaked: LEAKED.load(Ordering::Relaxed),
            ..GlobalHeapStats::default()
        };
        let walk = |what: &str, c: usize, l: &List, st: &mut GlobalHeapStats| {
            let (mut p, mut n) = (l.head, 0usize);
            while p != 0 {
                if p < base || p + class_size(c) > end || p % class_align(c) != 0 {
                    return Err(format!(
                        "{what}, class {c} ({} B): block {p:#x} after {n} is outside the heap or misaligned",
                        class_size(c)
                    ));
                }
                n += 1;
                if n > l.count {
                    return Err(format!(
                        "{what}, class {c}: more than the {} blocks counted",
                        l.count
                    ));
                }
                // SAFETY: a free block of the heap (just checked to lie inside it) starts with
                // the address of the next one; we hold every lock, so nothing changes it.
                p = unsafe { *(p as *const usize) };
            }
            if n != l.count {
                return Err(format!(
                    "{what}, class {c}: {n} blocks, {} counted",
                    l.count
                ));
            }
            st.free_blocks += n;
            st.free_bytes += n * class_size(c);
            Ok(())
        };
        let r = (|| {
            // SAFETY: under the heap-wide lock (held by `cap`).
            let lists = unsafe { &*h.global.lists.get() };
            for (c, l) in lists.iter().enumerate() {
                walk("shared list", c, l, &mut st)?;
            }
            let me = incarnation();
            for i in 0..cap.used {
                let s = slot(h, i);
                if s.owner.load(Ordering::Acquire) == me {
                    st.slots_owned += 1;
                }
                // SAFETY: the capture holds this slot's lock.
                let locals = unsafe { &*s.local.get() };
                for (c, l) in locals.iter().enumerate() {
                    walk(&format!("slot {i}"), c, &l.list, &mut st)?;
                    if l.bump > l.end || (l.bump != 0 && (l.bump < base || l.end > end)) {
                        return Err(format!("slot {i}, class {c}: bump region out of the heap"));
                    }
                    st.unbumped_bytes += l.end - l.bump;
                }
            }
            st.slots_used = cap.used;
            // SAFETY: talc under the heap-wide lock.
            st.talc_allocated = unsafe { (*h.talc.get()).get_counters().allocated_bytes };
            st.in_use_bytes = st
                .talc_allocated
                .saturating_sub(st.free_bytes + st.unbumped_bytes);
            Ok(st)
        })();
        drop(cap);
        r
    }
}

impl<F> GlobalHeap<F> {
    /// The allocator with `fallback` for what does not go to the heap (see the type's
    /// documentation; a `const fn`, for a `static`).
    pub const fn with_fallback(fallback: F) -> GlobalHeap<F> {
        GlobalHeap { fallback }
    }
}

/// The library has its heap from now on: allocations of the program's threads go there.
pub(crate) fn install(base: usize, size: usize) {
    HEAP_END.store(base + size, Ordering::Relaxed);
    HEADER.store(base, Ordering::Release);
}

/// Whether the program's global allocator is [`GlobalHeap`]: allocates once and looks.
pub(crate) fn is_global_allocator() -> bool {
    let b = std::hint::black_box(Box::new(0u8));
    drop(b);
    SEEN.load(Ordering::Relaxed)
}

/// While alive, this thread's allocations go to the system allocator.
#[derive(Debug)]
pub(crate) struct Outside(());

impl Outside {
    pub(crate) fn enter() -> Outside {
        TLS.with(|t| t.outside.set(t.outside.get() + 1));
        Outside(())
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        TLS.with(|t| t.outside.set(t.outside.get() - 1));
    }
}

/// For the library's own threads: every allocation of this thread goes to the system allocator.
pub(crate) fn library_thread() {
    TLS.with(|t| t.outside.set(t.outside.get() + 1));
}

/// The allocator stopped: the heap-wide lock and every slot's lock held by this thread, its
/// allocations outside the heap and its heap frees deferred (see the module documentation).
pub(crate) struct Capture<'h> {
    h: &'h Header,
    used: usize,
}

impl<'h> Capture<'h> {
    pub(crate) fn begin(h: &'h Header) -> Capture<'h> {
        TLS.with(|t| {
            t.outside.set(t.outside.get() + 1);
            t.capturing.set(true);
        });
        h.lock.lock();
        // Stable while the heap-wide lock is held: slots are claimed under it.
        let used = h.global.slots_used.load(Ordering::Acquire);
        for i in 0..used {
            slot(h, i).lock.lock();
        }
        Capture { h, used }
    }
}

impl Drop for Capture<'_> {
    fn drop(&mut self) {
        for i in 0..self.used {
            slot(self.h, i).lock.unlock();
        }
        self.h.lock.unlock();
        let deferred = TLS.with(|t| {
            t.capturing.set(false);
            t.outside.set(t.outside.get() - 1);
            let n = t.deferred_len.replace(0);
            // SAFETY: only this thread touches its deferral buffer; copied out before use.
            let all = unsafe { *t.deferred.get() };
            (all, n)
        });
        let (all, n) = deferred;
        for &(p, size, align) in &all[..n] {
            // SAFETY: each entry is a heap block some code freed with this layout while we
            // captured; it has not been freed since.
            unsafe { heap_free(self.h, p, Layout::from_size_align_unchecked(size, align)) };
        }
    }
}

fn slot(h: &Header, i: usize) -> &Slot {
    let table = h.global.slots.load(Ordering::Acquire);
    debug_assert!(table > 1 && i < NSLOTS);
    // SAFETY: the table holds NSLOTS slots; slots below `slots_used` are initialised.
    unsafe { &*(table as *const Slot).add(i) }
}

/// The heap's header if `p` is inside the heap.
#[inline(always)]
fn header_for(p: usize) -> Option<&'static Header> {
    let base = HEADER.load(Ordering::Acquire);
    if base != 0 && p >= base && p < HEAP_END.load(Ordering::Relaxed) {
        // SAFETY: the installed heap's header, never unmapped.
        Some(unsafe { &*(base as *const Header) })
    } else {
        None
    }
}

/// Claims a slot for this thread (under the heap-wide lock): a free one, one left by a
/// previous incarnation, or a new one.
fn claim(h: &Header) -> Option<usize> {
    let me = incarnation();
    h.lock.lock();
    let r = (|| {
        let mut table = h.global.slots.load(Ordering::Acquire);
        if table == 0 {
            let layout = Layout::from_size_align(NSLOTS * size_of::<Slot>(), 4096).ok()?;
            // SAFETY: talc under the heap-wide lock; the layout is non-zero.
            table = match unsafe { (*h.talc.get()).malloc(layout) } {
                Ok(p) => p.as_ptr() as usize,
                Err(()) => 1,
            };
            h.global.slots.store(table, Ordering::Release);
        }
        if table == 1 {
            return None;
        }
        let used = h.global.slots_used.load(Ordering::Acquire);
        for i in 0..used {
            let s = slot(h, i);
            if s.owner.load(Ordering::Acquire) != me {
                s.owner.store(me, Ordering::Release);
                return Some(s as *const Slot as usize);
            }
        }
        if used == NSLOTS {
            return None;
        }
        // SAFETY: slot `used` lies in the table and is not initialised yet; nothing else can
        // see it before `slots_used` grows (under the lock we hold).
        let p = unsafe { (table as *mut Slot).add(used) };
        // SAFETY: as above.
        unsafe {
            p.write(Slot {
                lock: RawLock::new(),
                owner: AtomicU64::new(me),
                local: UnsafeCell::new([Local::default(); NCLASSES]),
            })
        };
        h.global.slots_used.store(used + 1, Ordering::Release);
        Some(p as usize)
    })();
    h.lock.unlock();
    r
}

/// This thread's slot, claiming one at its first call; `None`: use the shared path. A thread
/// allocating outside the heap (a library thread) that frees or grows a heap block uses the
/// shared path rather than claim a slot for a stray operation.
#[inline(always)]
fn my_slot(t: &Tls, h: &Header) -> Option<&'static Slot> {
    if t.outside.get() > 0 && t.state.get() != ACTIVE {
        return None;
    }
    match t.state.get() {
        // SAFETY: ACTIVE: `slot` is this thread's slot in the heap, never unmapped.
        ACTIVE => Some(unsafe { &*(t.slot.get() as *const Slot) }),
        NONE => {
            t.state.set(CLAIMING);
            // Registers the destructor that releases the slot; may allocate (then the nested
            // call sees CLAIMING and takes the shared path).
            if EXIT.try_with(|_| ()).is_err() {
                t.state.set(SHARED);
                return None;
            }
            match claim(h) {
                Some(p) => {
                    t.slot.set(p);
                    t.state.set(ACTIVE);
                    // SAFETY: just claimed.
                    Some(unsafe { &*(p as *const Slot) })
                }
                None => {
                    t.state.set(SHARED);
                    None
                }
            }
        }
        _ => None,
    }
}

/// Pops a block from a slot's cache of class `c` (free list, then bump region); 0 if empty.
///
/// # Safety
/// The caller holds the slot's lock or the heap-wide lock (and is the slot's owner).
#[inline(always)]
unsafe fn take_local(l: &mut Local, c: usize) -> usize {
    if l.list.head != 0 {
        let p = l.list.head;
        // SAFETY: a free block's first word is the next block (caller's locks).
        l.list.head = unsafe { *(p as *const usize) };
        l.list.count -= 1;
        return p;
    }
    let size = class_size(c);
    if l.bump != 0 && l.bump + size <= l.end {
        let p = l.bump;
        l.bump += size;
        return p;
    }
    0
}

/// Refills a slot's empty cache of class `c` from the shared list or a new chunk and returns
/// one block (0: heap full).
///
/// # Safety
/// The caller holds the heap-wide lock and owns the slot.
unsafe fn refill(h: &Header, l: &mut Local, c: usize) -> usize {
    // SAFETY: under the heap-wide lock.
    let shared = unsafe { &mut (*h.global.lists.get())[c] };
    if shared.count > 0 {
        let n = batch(c).min(shared.count);
        let first = shared.head;
        let mut last = first;
        for _ in 1..n {
            // SAFETY: free blocks of the shared list, under the heap-wide lock.
            last = unsafe { *(last as *const usize) };
        }
        // SAFETY: as above.
        shared.head = unsafe { *(last as *const usize) };
        shared.count -= n;
        // SAFETY: as above; `last` ends the batch.
        unsafe { *(last as *mut usize) = l.list.head };
        l.list = List {
            head: first,
            count: n + l.list.count,
        };
    } else {
        let bytes = chunk_bytes(c);
        let Ok(layout) = Layout::from_size_align(bytes, 4096) else {
            return 0;
        };
        // SAFETY: talc under the heap-wide lock.
        match unsafe { (*h.talc.get()).malloc(layout) } {
            Ok(p) => {
                l.bump = p.as_ptr() as usize;
                l.end = l.bump + bytes;
            }
            Err(()) => return 0,
        }
    }
    // SAFETY: the caller's locks.
    unsafe { take_local(l, c) }
}

/// Moves a batch of a slot's cache of class `c` to the shared list.
///
/// # Safety
/// The caller holds the heap-wide lock and owns the slot.
unsafe fn give_back(h: &Header, l: &mut Local, c: usize) {
    let n = batch(c);
    if l.list.count <= n {
        return;
    }
    let first = l.list.head;
    let mut last = first;
    for _ in 1..n {
        // SAFETY: free blocks of the slot's list; the owner holds the heap-wide lock.
        last = unsafe { *(last as *const usize) };
    }
    // SAFETY: under the heap-wide lock.
    let shared = unsafe { &mut (*h.global.lists.get())[c] };
    // SAFETY: as above.
    l.list.head = unsafe { *(last as *const usize) };
    l.list.count -= n;
    // SAFETY: as above.
    unsafe { *(last as *mut usize) = shared.head };
    shared.head = first;
    shared.count += n;
}

/// A block of class `c` on the shared path (no slot): shared list, else talc.
///
/// # Safety
/// The caller holds the heap-wide lock.
unsafe fn shared_alloc(h: &Header, c: usize) -> usize {
    // SAFETY: under the heap-wide lock.
    let shared = unsafe { &mut (*h.global.lists.get())[c] };
    if shared.head != 0 {
        let p = shared.head;
        // SAFETY: a free block of the shared list.
        shared.head = unsafe { *(p as *const usize) };
        shared.count -= 1;
        return p;
    }
    // Its blocks must have the class's alignment: any request of the class may get it later.
    // SAFETY: class sizes and alignments are valid (powers of two, non-zero sizes).
    let layout = unsafe { Layout::from_size_align_unchecked(class_size(c), class_align(c)) };
    // SAFETY: talc under the heap-wide lock.
    unsafe { (*h.talc.get()).malloc(layout) }.map_or(0, |p| p.as_ptr() as usize)
}

/// Allocates in the heap.
///
/// # Safety
/// `layout` has a non-zero size; the caller is not capturing.
unsafe fn heap_alloc(h: &Header, layout: Layout) -> *mut u8 {
    let p = match class_of(layout) {
        Some(c) => TLS.with(|t| match my_slot(t, h) {
            Some(s) => {
                s.lock.lock();
                // SAFETY: our slot, under its lock.
                let l = unsafe { &mut (*s.local.get())[c] };
                // SAFETY: under the slot's lock.
                let p = unsafe { take_local(l, c) };
                s.lock.unlock();
                if p != 0 {
                    return p;
                }
                h.lock.lock();
                // SAFETY: our slot, under the heap-wide lock (see the module documentation).
                let p = unsafe { refill(h, &mut (*s.local.get())[c], c) };
                h.lock.unlock();
                p
            }
            None => {
                h.lock.lock();
                // SAFETY: under the heap-wide lock.
                let p = unsafe { shared_alloc(h, c) };
                h.lock.unlock();
                p
            }
        }),
        None => {
            h.lock.lock();
            // SAFETY: talc under the heap-wide lock; non-zero size.
            let r = unsafe { (*h.talc.get()).malloc(layout) };
            h.lock.unlock();
            r.map_or(0, |p| p.as_ptr() as usize)
        }
    };
    if p == 0 {
        report_full(layout.size());
    }
    p as *mut u8
}

/// Frees a heap block (deferred while this thread captures).
///
/// # Safety
/// `p` is a live heap block allocated with `layout`.
unsafe fn heap_free(h: &Header, p: usize, layout: Layout) {
    let class = class_of(layout);
    let done = TLS.with(|t| {
        if t.capturing.get() {
            let n = t.deferred_len.get();
            if n < DEFER {
                // SAFETY: only this thread touches its deferral buffer.
                unsafe { (*t.deferred.get())[n] = (p, layout.size(), layout.align()) };
                t.deferred_len.set(n + 1);
            } else {
                LEAKED.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        }
        let (Some(c), Some(s)) = (class, my_slot(t, h)) else {
            return false;
        };
        s.lock.lock();
        // SAFETY: our slot, under its lock.
        let l = unsafe { &mut (*s.local.get())[c] };
        // SAFETY: the block is ours to reuse; its first word becomes the link.
        unsafe { *(p as *mut usize) = l.list.head };
        l.list.head = p;
        l.list.count += 1;
        let over = l.list.count > limit(c);
        s.lock.unlock();
        if over {
            h.lock.lock();
            // SAFETY: our slot, under the heap-wide lock.
            unsafe { give_back(h, &mut (*s.local.get())[c], c) };
            h.lock.unlock();
        }
        true
    });
    if done {
        return;
    }
    h.lock.lock();
    match class {
        // SAFETY: under the heap-wide lock; the block is ours to reuse.
        Some(c) => unsafe {
            let shared = &mut (*h.global.lists.get())[c];
            *(p as *mut usize) = shared.head;
            shared.head = p;
            shared.count += 1;
        },
        // SAFETY: the caller promises `p` was allocated by talc (a large block) with
        // `layout`; under the heap-wide lock.
        None => unsafe { (*h.talc.get()).free(NonNull::new_unchecked(p as *mut u8), layout) },
    }
    h.lock.unlock();
}

/// One line on stderr, once, when the heap is full (the allocation then fails and Rust aborts
/// with its own message). Allocation-free.
fn report_full(size: usize) {
    if FULL_REPORTED.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut buf = [0u8; 160];
    let mut w = Writer {
        buf: &mut buf,
        len: 0,
    };
    let _ = std::fmt::Write::write_fmt(
        &mut w,
        format_args!(
            "hotspare: the checkpoint heap is full ({size}-byte request); raise HOTSPARE_HEAP_SIZE\n"
        ),
    );
    // SAFETY: writing our own stack buffer to stderr.
    unsafe { libc::write(2, w.buf.as_ptr().cast(), w.len) };
}

struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Where a new allocation of this thread goes: the heap, or (`None`) the system allocator.
#[inline(always)]
fn heap_for_alloc() -> Option<&'static Header> {
    let base = HEADER.load(Ordering::Acquire);
    if base == 0 || TLS.with(|t| t.outside.get() > 0) {
        return None;
    }
    // SAFETY: the installed heap's header, never unmapped.
    Some(unsafe { &*(base as *const Header) })
}

// SAFETY: every block comes from the system allocator or from the heap (size classes or talc),
// fits its layout (class sizes are at least the request rounded to its alignment, and class
// blocks are aligned as `class_of` checked), and stays valid until freed; frees and reallocs go
// back to whichever allocator owns the address.
unsafe impl<F: GlobalAlloc> GlobalAlloc for GlobalHeap<F> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !SEEN.load(Ordering::Relaxed) {
            SEEN.store(true, Ordering::Relaxed);
        }
        match heap_for_alloc() {
            // SAFETY: GlobalAlloc callers pass a non-zero size; not capturing (outside is 0).
            Some(h) => unsafe { heap_alloc(h, layout) },
            // SAFETY: forwarding the caller's request.
            None => unsafe { self.fallback.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match header_for(ptr as usize) {
            // SAFETY: the caller frees a live block of ours with its layout; it is in the heap.
            Some(h) => unsafe { heap_free(h, ptr as usize, layout) },
            // SAFETY: not in the heap, so the system allocator's.
            None => unsafe { self.fallback.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(h) = header_for(ptr as usize) else {
            // SAFETY: a system block, handed back to the system allocator.
            return unsafe { self.fallback.realloc(ptr, layout, new_size) };
        };
        // SAFETY: GlobalAlloc's contract: new_size rounded to align does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let capturing = TLS.with(|t| t.capturing.get());
        if !capturing {
            match (class_of(layout), class_of(new_layout)) {
                (Some(a), Some(b)) if a == b => return ptr,
                (None, None) => {
                    // SAFETY: a large block of ours, resized by talc under the heap-wide lock.
                    unsafe {
                        let nn = NonNull::new_unchecked(ptr);
                        h.lock.lock();
                        let talc = &mut *h.talc.get();
                        if new_size <= layout.size() {
                            talc.shrink(nn, layout, new_size);
                            h.lock.unlock();
                            return ptr;
                        }
                        if talc.grow_in_place(nn, layout, new_size).is_ok() {
                            h.lock.unlock();
                            return ptr;
                        }
                        h.lock.unlock();
                    }
                }
                _ => {}
            }
        }
        let new = if capturing {
            // SAFETY: non-zero size (GlobalAlloc's contract).
            unsafe { self.fallback.alloc(new_layout) }
        } else {
            // SAFETY: non-zero size; not capturing.
            unsafe { heap_alloc(h, new_layout) }
        };
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; the smaller size fits both.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                heap_free(h, ptr as usize, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_the_formulas() {
        for c in 0..NCLASSES {
            assert_eq!(class_size(c), compute_class_size(c));
            assert_eq!(limit(c), 2 * batch(c));
        }
    }

    #[test]
    fn classes_cover_every_small_size_in_order() {
        assert_eq!(class_size(NCLASSES - 1), MAX_SMALL);
        for c in 1..NCLASSES {
            assert!(class_size(c) > class_size(c - 1));
            assert_eq!(class_size(c) % 16, 0);
        }
        for size in 1..=MAX_SMALL {
            let c = class_of_size(size);
            assert!(class_size(c) >= size, "size {size} class {c}");
            assert!(
                c == 0 || class_size(c - 1) < size,
                "size {size}: class {c} not the least"
            );
        }
    }

    #[test]
    fn alignment_is_met_or_the_request_is_large() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096, 8192] {
            for size in [1, 8, 16, 24, 100, 129, 160, 1000, 4096, 5000, MAX_SMALL] {
                let layout = Layout::from_size_align(size, align).unwrap();
                match class_of(layout) {
                    Some(c) => {
                        assert!(class_size(c) >= size);
                        assert_eq!(class_size(c) % align, 0, "{layout:?}");
                        assert!(class_align(c) >= align, "{layout:?}");
                    }
                    None => assert!(align > 16 || size > MAX_SMALL, "{layout:?}"),
                }
            }
        }
        assert_eq!(
            class_of(Layout::from_size_align(MAX_SMALL + 1, 8).unwrap()),
            None
        );
    }
}
