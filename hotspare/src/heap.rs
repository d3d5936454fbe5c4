//! The checkpoint heap: memory reserved at a fixed virtual address, with an allocator whose
//! every byte of bookkeeping lives inside it, so that after resume (the heap mapped back at the
//! same address) every pointer between objects in it is still valid.
//!
//! ```text
//! base                                   base + HEADER_BYTES                     base + size
//! | Header: magic, lock, talc, root,       | arena managed by talc: your objects, the root, |
//! | size-class lists of the GlobalHeap     | the GlobalHeap's slot table and chunks         |
//! ```
//!
//! Two allocators share it: [`HeapAlloc`] (talc under the heap-wide lock, for containers given
//! an allocator) and, when the program makes it its global allocator, [`crate::GlobalHeap`]
//! (thread slots and size classes over talc; `global.rs`).
//!
//! **What may live here** without [`crate::GlobalHeap`]: plain data and pointers into the heap.
//! Not: pointers into the ordinary heap (`Box`, `String`, `Vec` with the system allocator),
//! `&'static str`, trait objects (vtables), function pointers, file descriptors, or hashers
//! seeded per process (hashbrown's default): use [`HeapAlloc`] for every container and
//! [`StableHasher`] for maps. With `GlobalHeap` as the global allocator, std's types allocate
//! here and code stays at its addresses (`docs/library.md`, "Ordinary Rust in the heap").

use crate::error::Error;
use crate::sync::RawLock;
use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use talc::{OomHandler, Span, Talc};

const MAGIC: u64 = u64::from_le_bytes(*b"HSHEAP03");
/// The arena talc starts with; it grows (at least doubling) as allocations need it.
const FIRST_ARENA_BYTES: usize = 4 << 20;
/// Bytes reserved at the start of the heap for its header.
pub const HEADER_BYTES: usize = 4096;

/// A hasher with a fixed seed, for maps in checkpoint memory: the default hashers are seeded
/// per process, so a map's buckets would be wrong after resume.
pub type StableHasher = foldhash::fast::FixedState;

/// The heap's first page.
#[repr(C)]
pub(crate) struct Header {
    magic: u64,
    size: usize,
    /// The heap-wide lock: talc, and the GlobalHeap's shared state.
    pub(crate) lock: RawLock,
    pub(crate) talc: UnsafeCell<Talc<GrowArena>>,
    root: AtomicUsize,
    root_tag: AtomicU64,
    /// The end of talc's arena ([`Heap::written_end`]), kept by [`GrowArena`]; readable
    /// without the heap-wide lock.
    arena_end: AtomicUsize,
    /// The GlobalHeap's size-class lists and slot table.
    pub(crate) global: crate::global::Shared,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);

/// Talc's arena grows inside the reserved heap instead of spanning it from the start, so that
/// everything the allocator (and so the program) ever wrote lies below the arena's end: the
/// checkpoint's dirty-page walk stops there ([`Heap::written_end`]). Talc writes a free gap's
/// size at the gap's top, so one arena over the whole reservation would write its last page and
/// make every walk cover all of it — 1.2 ms per checkpoint for the default 1 GiB, measured.
pub(crate) struct GrowArena {
    /// The arena talc manages now (an empty span until the first claim).
    arena: Span,
    /// The end of the reservation: the arena never grows past it.
    limit: usize,
    /// The header's `arena_end` (the heap is at the same address in every process using it).
    end: *const AtomicUsize,
}

impl OomHandler for GrowArena {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        let GrowArena { arena, limit, end } = talc.oom_handler;
        let (base, acme) = arena.get_base_acme().ok_or(())?;
        let (base, acme) = (base as usize, acme as usize);
        if acme >= limit {
            return Err(());
        }
        // At least double, and enough for this block with its tags and alignment.
        let need = layout
            .size()
            .saturating_add(layout.align())
            .saturating_add(64);
        let grow = (acme - base).max(need.next_multiple_of(1 << 20));
        let new_acme = acme.saturating_add(grow).min(limit);
        let wanted = Span::new(base as *mut u8, new_acme as *mut u8);
        // SAFETY: `arena` is what talc returned for this heap last; `wanted` contains it and
        // stays inside the reservation, which is mapped read-write and used by nothing else.
        let got = unsafe { talc.extend(arena, wanted) };
        if got == arena {
            return Err(());
        }
        talc.oom_handler.arena = got;
        // SAFETY: `end` points at the header of this heap, which lives as long as the process.
        // Release: whoever reads the new end also sees the talc state that made it.
        unsafe {
            (*end).store(
                got.get_base_acme().map_or(acme, |(_, a)| a as usize),
                Ordering::Release,
            )
        };
        Ok(())
    }
}

/// The checkpoint heap. It is never unmapped (objects in it are `'static`).
#[derive(Debug, Clone, Copy)]
pub struct Heap {
    base: usize,
    size: usize,
}

/// The allocator of a [`Heap`]; a copyable handle that may itself be stored in the heap (it is
/// just the heap's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapAlloc {
    header: NonNull<Header>,
}

// SAFETY: the header is shared memory guarded by its RawLock.
unsafe impl Send for HeapAlloc {}
// SAFETY: as above.
unsafe impl Sync for HeapAlloc {}

impl Heap {
    /// Reserves `size` bytes at `base` (`MAP_FIXED_NOREPLACE`: never over an existing mapping)
    /// and sets up an empty heap there.
    pub fn reserve(base: usize, size: usize) -> Result<Heap, Error> {
        Heap::reserve_with(base, size, |_| Ok(()))
    }

    /// [`Heap::reserve`], calling `before_init` with the heap's range after the memory is mapped
    /// but before a byte of it is written (the library starts dirty tracking there, so that every
    /// page the heap ever holds is known to have been written).
    pub fn reserve_with(
        base: usize,
        size: usize,
        before_init: impl FnOnce(kmod_shim::Range) -> Result<(), Error>,
    ) -> Result<Heap, Error> {
        let page = kmod_shim::page_size();
        if !base.is_multiple_of(page) || !size.is_multiple_of(page) || size <= HEADER_BYTES {
            return Err(Error::Config(format!(
                "heap base {base:#x} and size {size:#x} must be page-aligned and larger than {HEADER_BYTES}"
            )));
        }
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                base as *mut _,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_NORESERVE
                    | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED || p as usize != base {
            let e = std::io::Error::last_os_error();
            if p != libc::MAP_FAILED {
                // SAFETY: an old kernel ignored NOREPLACE and mapped elsewhere: undo that.
                unsafe { libc::munmap(p, size) };
            }
            return Err(Error::HeapAddressTaken {
                base,
                size,
                why: e.to_string(),
            });
        }
        let unmap = || {
            // SAFETY: undoing the mapping made just above; nothing uses it yet.
            unsafe { libc::munmap(base as *mut _, size) };
        };
        let range = kmod_shim::Range::new(base, size).map_err(|e| Error::Config(e.to_string()))?;
        if let Err(e) = before_init(range) {
            unmap();
            return Err(e);
        }
        let header = base as *mut Header;
        // SAFETY: the mapping is fresh, writable, page-aligned and larger than the header; the
        // arena span lies inside it and is not used by anything else.
        unsafe {
            header.write(Header {
                magic: MAGIC,
                size,
                lock: RawLock::new(),
                talc: UnsafeCell::new(Talc::new(GrowArena {
                    arena: Span::empty(),
                    limit: base + size,
                    end: std::ptr::addr_of!((*header).arena_end),
                })),
                root: AtomicUsize::new(0),
                root_tag: AtomicU64::new(0),
                arena_end: AtomicUsize::new(base + HEADER_BYTES),
                global: crate::global::Shared::new(),
            });
            let first = (size - HEADER_BYTES).min(FIRST_ARENA_BYTES);
            let arena = Span::from_base_size((base + HEADER_BYTES) as *mut u8, first);
            let talc = &mut *(*header).talc.get();
            talc.oom_handler.arena = talc
                .claim(arena)
                .map_err(|()| Error::Config("heap too small".into()))?;
            let acme = talc
                .oom_handler
                .arena
                .get_base_acme()
                .map_or(0, |(_, a)| a as usize);
            (*header).arena_end.store(acme, Ordering::Release);
        }
        Ok(Heap { base, size })
    }

    /// Adopts a heap that was mapped back at `base` by resume, checking its header.
    pub fn attach(base: usize, size: usize) -> Result<Heap, Error> {
        let header = base as *const Header;
        // SAFETY: resume mapped `size` (> HEADER_BYTES) readable bytes at `base`.
        let (magic, hsize) = unsafe { ((*header).magic, (*header).size) };
        if magic != MAGIC || hsize != size {
            return Err(Error::Config(format!(
                "no checkpoint heap at {base:#x} in the image"
            )));
        }
        Ok(Heap { base, size })
    }

    /// First byte of the heap.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    fn header(&self) -> &Header {
        // SAFETY: `base` holds an initialised Header for the life of the process.
        unsafe { &*(self.base as *const Header) }
    }

    /// The allocator, for `hashbrown::HashMap::with_hasher_in`, `allocator_api2::vec::Vec::new_in`…
    pub fn alloc(&self) -> HeapAlloc {
        HeapAlloc {
            header: NonNull::from(self.header()),
        }
    }

    /// Runs `f` with the allocators stopped — the heap-wide lock and every GlobalHeap slot's
    /// lock held — so that their bookkeeping is consistent (used while a checkpoint captures the
    /// heap). Meanwhile this thread allocates outside the heap and its heap frees wait for the
    /// end (`global.rs`, "While capturing").
    pub(crate) fn with_allocator_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let stopped = crate::global::Capture::begin(self.header());
        let r = f();
        drop(stopped);
        r
    }

    /// The end of what the allocator has ever managed: no byte of the heap at or above it was
    /// ever written. It only grows; read under [`Heap::with_allocator_locked`] it covers every
    /// block handed out so far.
    pub(crate) fn written_end(&self) -> usize {
        self.header().arena_end.load(Ordering::Acquire)
    }

    /// Bytes currently allocated in the heap (the size of the program's state, without the
    /// allocator's own overhead).
    pub fn allocated_bytes(&self) -> usize {
        self.with_allocator_locked(|| {
            // SAFETY: talc is only touched under the heap lock, which we hold.
            unsafe { (*self.header().talc.get()).get_counters().allocated_bytes }
        })
    }

    /// Moves `value` into the heap and makes it the root object, handed back on resume by
    /// [`Heap::root`]. Returns the object.
    pub fn set_root<T: Send + Sync + 'static>(&self, value: T) -> Result<&'static T, Error> {
        let layout = Layout::new::<T>();
        let p = self.alloc().allocate(layout).map_err(|_| Error::HeapFull {
            bytes: layout.size(),
        })?;
        let p = p.cast::<T>().as_ptr();
        // SAFETY: `p` is a fresh allocation of T's layout; the heap is never unmapped.
        unsafe { p.write(value) };
        let h = self.header();
        h.root.store(p as usize, Ordering::Release);
        h.root_tag.store(type_tag::<T>(), Ordering::Release);
        // SAFETY: initialised above and never freed (the root lives as long as the heap).
        Ok(unsafe { &*p })
    }

    /// The C ABI's root: an untyped pointer into the heap (`hs_set_root`).
    pub fn set_root_ptr(&self, p: *mut u8) {
        let h = self.header();
        h.root.store(p as usize, Ordering::Release);
        h.root_tag.store(type_tag::<CRoot>(), Ordering::Release);
    }

    /// The C ABI's root (`hs_root`), or null.
    pub fn root_ptr(&self) -> *mut u8 {
        let h = self.header();
        if h.root_tag.load(Ordering::Acquire) != type_tag::<CRoot>() {
            return std::ptr::null_mut();
        }
        h.root.load(Ordering::Acquire) as *mut u8
    }

    /// The root object, if one of type `T` was set.
    pub fn root<T: Send + Sync + 'static>(&self) -> Option<&'static T> {
        let h = self.header();
        let p = h.root.load(Ordering::Acquire);
        if p == 0 || h.root_tag.load(Ordering::Acquire) != type_tag::<T>() {
            return None;
        }
        // SAFETY: `set_root::<T>` stored a live T here (the tag says so).
        Some(unsafe { &*(p as *const T) })
    }
}

/// The type tag of roots set through the C ABI.
struct CRoot;

/// Identifies T across processes of the same executable (type name, size, alignment).
fn type_tag<T>() -> u64 {
    let name = std::any::type_name::<T>();
    let mut tag = crc32c::crc32c(name.as_bytes()) as u64;
    tag = (tag << 32) ^ ((std::mem::size_of::<T>() as u64) << 8) ^ std::mem::align_of::<T>() as u64;
    tag | 1
}

// SAFETY: allocations come from talc over memory owned by the heap, under the heap lock; blocks
// stay valid until deallocated; talc returns blocks fitting the requested layout.
unsafe impl Allocator for HeapAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            let dangling = NonNull::new(layout.align() as *mut u8).ok_or(AllocError)?;
            return Ok(NonNull::slice_from_raw_parts(dangling, 0));
        }
        // SAFETY: the header is initialised and lives as long as the process.
        let h = unsafe { self.header.as_ref() };
        h.lock.lock();
        // SAFETY: exclusive access to talc under the lock; layout has non-zero size.
        let r = unsafe { (*h.talc.get()).malloc(layout) };
        h.lock.unlock();
        r.map(|p| NonNull::slice_from_raw_parts(p, layout.size()))
            .map_err(|()| AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        // SAFETY: as in allocate.
        let h = unsafe { self.header.as_ref() };
        h.lock.lock();
        // SAFETY: the caller promises `ptr` was allocated by us with `layout`.
        unsafe { (*h.talc.get()).free(ptr, layout) };
        h.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena starts small and grows as blocks need it, up to the reservation and no
    /// further; every block lies below [`Heap::written_end`], so a dirty-page walk that stops
    /// there misses nothing.
    #[test]
    fn the_arena_grows_on_demand_and_every_block_lies_below_the_written_end() {
        let size = 64 << 20;
        let heap = Heap::reserve(0x5a00_0000_0000, size).expect("reserve a 64 MiB heap");
        let a = heap.alloc();
        assert!(heap.written_end() <= heap.base() + HEADER_BYTES + FIRST_ARENA_BYTES);
        let mut blocks = Vec::new();
        for len in [1 << 10, 3 << 20, 5 << 20, 100, 20 << 20] {
            let layout = Layout::from_size_align(len, 64).unwrap();
            let p = a.allocate(layout).expect("fits the reservation");
            let end = p.as_ptr().cast::<u8>() as usize + len;
            assert!(
                end <= heap.written_end(),
                "a block of {len} B ends at {end:#x}, above the written end {:#x}",
                heap.written_end()
            );
            blocks.push((p, layout));
        }
        // More than is left cannot be had; what is left can.
        let too_big = Layout::from_size_align(size, 64).unwrap();
        assert!(a.allocate(too_big).is_err());
        let rest = Layout::from_size_align(24 << 20, 64).unwrap();
        let p = a.allocate(rest).expect("the rest of the reservation");
        assert!(p.as_ptr().cast::<u8>() as usize + rest.size() <= heap.base() + size);
        assert!(heap.written_end() <= heap.base() + size);
        for (p, l) in blocks {
            // SAFETY: allocated above with this layout.
            unsafe { a.deallocate(p.cast(), l) };
        }
    }
}
