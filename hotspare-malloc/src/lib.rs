//! `libhotspare_malloc.so`: the Hot Spare C library (every `hs_*` function of `hotspare.h`) with
//! `malloc`, `free`, `calloc`, `realloc`, `posix_memalign`, `aligned_alloc`, `memalign`,
//! `valloc`, `pvalloc` and `malloc_usable_size` served from the checkpoint heap. A C program
//! links it instead of `libhotspare.so` (`-lhotspare_malloc`, or `LD_PRELOAD` for a program
//! already linked against it) and keeps its existing `malloc`ed data structures — its own or a
//! library's, such as GLib's `GHashTable` — in checkpoint memory: it still registers its worker
//! loop, calls `hs_init`, sets a root and calls `hs_cpt()` where its state is consistent.
//!
//! **Routing** is [`hotspare::GlobalHeap`]'s: until `hs_init` has the heap, and on the library's
//! own threads, blocks come from glibc; from then on every block the program's threads allocate
//! comes from the heap; `free` and `realloc` go by address. A block allocated before `hs_init`
//! stays in ordinary memory (a `realloc` keeps it there, except one of an over-aligned block,
//! which moves it into the heap): state must be allocated after `hs_init`.
//!
//! **The fallback is glibc's `__libc_malloc` family**, not `malloc`: inside this library
//! `malloc` is this file, so the Rust code of the library itself (its global allocator) and the
//! heap's fallback call glibc by those internal names, which a replacement does not replace.
//!
//! **Every block carries a 16-byte prefix** (its underlying allocation's size and alignment):
//! C's `free` gives no size, and the heap's size classes need one. A request aligned to `A > 16`
//! gets `A` bytes in front instead, the prefix in their last 16. So `free`, `realloc` and
//! `malloc_usable_size` must only see pointers from this allocator — which, as the program's
//! `malloc`, is every pointer glibc and the program hand them.
//!
//! **glibc's thread-local destructor list stays outside the heap**: this library wraps
//! `__cxa_thread_atexit_impl` so that the list node glibc `calloc`s goes to glibc — glibc
//! aborts the process when that `calloc` fails, which on a full heap would kill a thread at its
//! first thread-local with a destructor (the library's own threads at their start, so a full
//! image could not be resumed).
//!
//! **Function pointers in state** (GLib's hash and equality functions, a table of callbacks)
//! must point at the same code after a resume: with this library the program is re-executed
//! once at `hs_init` with address-space randomisation off, and resume checks the executable's and
//! every library's load address and build ID, as for a Rust program on `GlobalHeap`
//! (docs/library.md, "Keeping `malloc`ed data structures" and "Code at the same addresses").
//!
//! **What a library keeps outside the heap** is not in the image: an allocator of its own with
//! global bookkeeping (GLib before 2.76: `g_slice`'s magazines — run with
//! `G_SLICE=always-malloc`), caches in static variables, thread-locals. Such state is reset on
//! resume while blocks in the heap still refer to it.

use hotspare::GlobalHeap;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

/// glibc's allocator by its internal names (what `malloc` is when nobody replaces it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Libc;

/// glibc's `malloc` alignment on 64-bit targets.
const LIBC_ALIGN: usize = 16;

// SAFETY: glibc's allocator returns blocks of at least the requested size, aligned to 16 (or to
// the requested alignment through `__libc_memalign`), valid until freed with `__libc_free`.
unsafe impl GlobalAlloc for Libc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain calls into glibc's allocator.
        unsafe {
            if layout.align() <= LIBC_ALIGN {
                __libc_malloc(layout.size()).cast()
            } else {
                __libc_memalign(layout.align(), layout.size()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from `alloc` or `realloc` above, i.e. from glibc.
        unsafe { __libc_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= LIBC_ALIGN {
            // SAFETY: a glibc block; glibc keeps 16-byte alignment.
            return unsafe { __libc_realloc(ptr.cast(), new_size).cast() };
        }
        // SAFETY: GlobalAlloc's contract (new_size rounded to align does not overflow).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: over-aligned: a new block, the smaller size copied, the old one freed.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// The library's own Rust allocations: never the heap, never this file's `malloc`.
#[global_allocator]
static RUST: Libc = Libc;

/// The program's `malloc`.
static HEAP: GlobalHeap<Libc> = GlobalHeap::with_fallback(Libc);

/// The prefix in front of every block: `[allocation size, allocation alignment]`.
const PREFIX: usize = 16;

/// The program's allocator is the heap: the library's `hs_init` sees [`GlobalHeap`] in use (and
/// so fixes the code's addresses) even if the program allocated nothing before it.
extern "C" fn announce() {
    let l = Layout::new::<u64>();
    // SAFETY: a non-zero layout; the block is freed at once with the same layout.
    unsafe {
        let p = HEAP.alloc(l);
        if !p.is_null() {
            HEAP.dealloc(p, l);
        }
    }
}

#[used]
#[link_section = ".init_array"]
static ANNOUNCE: extern "C" fn() = announce;

fn set_errno(e: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// A block of at least `size` bytes aligned to `align` (a power of two), prefix written.
fn alloc_block(size: usize, align: usize) -> *mut c_void {
    let align = align.max(PREFIX);
    let layout = size
        .checked_add(align)
        .and_then(|total| Layout::from_size_align(total, align).ok());
    let Some(layout) = layout else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    // SAFETY: a non-zero layout (at least PREFIX bytes).
    let base = unsafe { HEAP.alloc(layout) };
    if base.is_null() {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    }
    // SAFETY: `align` ≥ 16 bytes lie in front of the caller's part, inside the block; the prefix
    // is the last 16 of them, aligned to 8.
    unsafe {
        let p = base.add(align);
        let prefix = p.cast::<usize>().sub(2);
        prefix.write(layout.size());
        prefix.add(1).write(align);
        p.cast()
    }
}

/// The allocation behind `p` (from [`alloc_block`]): its base, layout and the caller's size.
///
/// # Safety
/// `p` is a live pointer [`alloc_block`] returned.
unsafe fn block_of(p: *mut c_void) -> (*mut u8, Layout, usize) {
    // SAFETY: the caller's contract: the prefix sits in the 16 bytes in front of `p`.
    unsafe {
        let prefix = p.cast::<usize>().sub(2);
        let (size, align) = (prefix.read(), prefix.add(1).read());
        let layout = Layout::from_size_align_unchecked(size, align);
        (p.cast::<u8>().sub(align), layout, size - align)
    }
}

/// `malloc(3)`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    alloc_block(size, PREFIX)
}

/// `free(3)`.
///
/// # Safety
/// `p` is NULL or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: the caller's contract; the block goes back with the layout it was allocated with.
    unsafe {
        let (base, layout, _) = block_of(p);
        HEAP.dealloc(base, layout);
    }
}

/// `calloc(3)`: zeroed (a heap block may have been used before).
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(bytes) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return std::ptr::null_mut();
    };
    let p = alloc_block(bytes, PREFIX);
    if !p.is_null() {
        // SAFETY: the block holds at least `bytes` bytes.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, bytes) };
    }
    p
}

/// `realloc(3)`: glibc's behaviour for NULL (a `malloc`) and for size 0 (a `free`, NULL back).
///
/// # Safety
/// `p` is NULL or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: the caller's contract.
        unsafe { free(p) };
        return std::ptr::null_mut();
    }
    // SAFETY: the caller's contract.
    let (base, layout, usable) = unsafe { block_of(p) };
    if layout.align() == PREFIX {
        // GlobalAlloc::realloc requires the new size rounded up to the alignment to fit isize.
        let total = match size.checked_add(PREFIX) {
            Some(t) if t <= isize::MAX as usize - PREFIX => t,
            _ => {
                set_errno(libc::ENOMEM);
                return std::ptr::null_mut();
            }
        };
        // SAFETY: a block of HEAP with the layout it was allocated with; `total` is non-zero
        // and fits isize when rounded up to 16 (checked above).
        let new = unsafe { HEAP.realloc(base, layout, total) };
        if new.is_null() {
            set_errno(libc::ENOMEM);
            return std::ptr::null_mut();
        }
        // SAFETY: the new block holds the prefix in its first 16 bytes.
        unsafe {
            new.cast::<usize>().write(total);
            new.cast::<usize>().add(1).write(PREFIX);
            return new.add(PREFIX).cast();
        }
    }
    // Over-aligned: a new block of the same alignment.
    let q = alloc_block(size, layout.align());
    if !q.is_null() {
        // SAFETY: both blocks live, distinct; the smaller size fits both.
        unsafe {
            std::ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), usable.min(size));
            free(p);
        }
    }
    q
}

/// Whether `align` is one C's aligned allocators accept.
fn valid_align(align: usize) -> bool {
    align.is_power_of_two() && align.is_multiple_of(size_of::<*mut c_void>())
}

/// `posix_memalign(3)`.
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !valid_align(align) {
        return libc::EINVAL;
    }
    let p = alloc_block(size, align);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller's contract.
    unsafe { out.write(p) };
    0
}

/// `aligned_alloc(3)` (C11).
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    alloc_block(size, align)
}

/// `memalign(3)`.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    aligned_alloc(align, size)
}

/// glibc's `__cxa_thread_atexit_impl` (found once with `dlsym(RTLD_NEXT)`; 0: not yet).
static REAL_THREAD_ATEXIT: AtomicUsize = AtomicUsize::new(0);

type ThreadAtexit = unsafe extern "C" fn(
    dtor: unsafe extern "C" fn(*mut c_void),
    obj: *mut c_void,
    dso: *mut c_void,
) -> c_int;

/// glibc's registration of a thread-local destructor (what Rust's `thread_local!` and C++'s
/// `thread_local` call), with its list node allocated outside the heap. The node is glibc's
/// bookkeeping, not state; and glibc aborts the process ("failed to register TLS destructor:
/// out of memory") when the node's `calloc` fails, which on a full heap would kill any thread
/// at its first thread-local with a destructor — the library's own threads at their start, the
/// program's at their first heap allocation, the resumed process of a full image at once.
///
/// # Safety
/// As glibc's: `dtor` is called with `obj` when the thread ends; `dso` names the calling object.
#[no_mangle]
pub unsafe extern "C" fn __cxa_thread_atexit_impl(
    dtor: unsafe extern "C" fn(*mut c_void),
    obj: *mut c_void,
    dso: *mut c_void,
) -> c_int {
    let mut f = REAL_THREAD_ATEXIT.load(Ordering::Acquire);
    if f == 0 {
        // SAFETY: a lookup of a glibc symbol in the objects loaded after this one.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"__cxa_thread_atexit_impl".as_ptr()) } as usize;
        if f == 0 {
            return -1;
        }
        REAL_THREAD_ATEXIT.store(f, Ordering::Release);
    }
    // SAFETY: `f` is glibc's function of this signature (looked up by name above).
    let real: ThreadAtexit = unsafe { std::mem::transmute::<usize, ThreadAtexit>(f) };
    // SAFETY: forwarding the caller's arguments.
    GlobalHeap::outside(|| unsafe { real(dtor, obj, dso) })
}

/// The page size (4 KiB on the machines this targets; asked once).
fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096)
}

/// `valloc(3)`.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_block(size, page())
}

/// `pvalloc(3)`: the size rounded up to whole pages.
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let pg = page();
    match size.checked_add(pg - 1) {
        Some(s) => alloc_block(s & !(pg - 1), pg),
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `malloc_usable_size(3)`.
///
/// # Safety
/// `p` is NULL or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract.
    unsafe { block_of(p).2 }
}
