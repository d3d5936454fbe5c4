//! Small helpers over raw system calls: `-1` → `io::Error`, and a scratch mapping for probes.

use std::io;

/// Turns a C-style return value into `io::Result`, keeping it signed until decoded.
pub(crate) fn cvt<T: Copy + PartialOrd + Default>(rc: T) -> io::Result<T> {
    if rc < T::default() {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A private anonymous read-write mapping owned by this value (used by probes).
pub(crate) struct ScratchMap {
    pub ptr: *mut u8,
    pub len: usize,
}

impl ScratchMap {
    pub(crate) fn new(len: usize) -> io::Result<ScratchMap> {
        // SAFETY: a fresh anonymous mapping chosen by the kernel; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ScratchMap { ptr: p.cast(), len })
    }

    /// Writes one byte at `offset` (volatile, so the write really happens).
    pub(crate) fn touch(&self, offset: usize) {
        assert!(offset < self.len);
        // SAFETY: offset is inside the mapping, which is writable and owned by self.
        unsafe { self.ptr.add(offset).write_volatile(1) };
    }
}

impl Drop for ScratchMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        let rc = unsafe { libc::munmap(self.ptr.cast(), self.len) };
        debug_assert_eq!(rc, 0, "munmap of a probe mapping failed");
    }
}
