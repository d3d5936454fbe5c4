//! A mutex that may live in checkpoint memory.
//!
//! A checkpoint can capture a lock in the held state (the thread that called `cpt()` may hold
//! it). After resume no thread of the old process exists, so such a lock must count as free. The
//! lock word therefore holds the *incarnation* of the process that took it: a lock held by
//! another incarnation is stale and is taken over. Within one process it is an ordinary
//! (spin-then-yield) mutex.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A number unique to this process incarnation (never 0).
pub(crate) fn incarnation() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish() | 1
    })
}

/// The raw lock word, usable on its own (the checkpoint heap's allocator uses it).
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct RawLock(AtomicU64);

impl RawLock {
    /// An unlocked lock.
    pub const fn new() -> RawLock {
        RawLock(AtomicU64::new(0))
    }

    /// Takes the lock, taking over one left held by a previous incarnation.
    #[inline]
    pub fn lock(&self) {
        let me = incarnation();
        let mut spins = 0u32;
        loop {
            let cur = self.0.load(Ordering::Relaxed);
            if (cur == 0 || cur != me)
                && self
                    .0
                    .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Releases the lock.
    #[inline]
    pub fn unlock(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// A mutex for state in checkpoint memory (see the module documentation).
#[derive(Debug, Default)]
pub struct Mutex<T> {
    lock: RawLock,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `lock`, like std's Mutex.
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: moving the mutex moves the value.
unsafe impl<T: Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// A new unlocked mutex.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            lock: RawLock::new(),
            value: UnsafeCell::new(value),
        }
    }

    /// Locks it.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.lock.lock();
        MutexGuard { m: self }
    }
}

/// Access to a locked [`Mutex`]; unlocks when dropped.
#[derive(Debug)]
pub struct MutexGuard<'a, T> {
    m: &'a Mutex<T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.m.value.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, exclusively.
        unsafe { &mut *self.m.value.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        self.m.lock.unlock();
    }
}
