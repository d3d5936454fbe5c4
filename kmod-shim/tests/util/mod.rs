//! Helpers shared by the kmod-shim integration tests.
#![allow(dead_code)]

use kmod_shim::{page_size, BackendChoice, BackendKind, Range, Shim};

/// An anonymous private mapping owned by the test.
pub struct Mapping {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: the mapping is plain memory; tests synchronise access themselves (volatile byte
// writes to distinct or racing pages are what they exercise).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(pages: usize) -> Mapping {
        Mapping::with(pages, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE)
    }

    pub fn with(pages: usize, prot: libc::c_int, flags: libc::c_int) -> Mapping {
        let len = pages * page_size();
        // SAFETY: a fresh anonymous mapping; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping { ptr: p.cast(), len }
    }

    pub fn pages(&self) -> usize {
        self.len / page_size()
    }

    pub fn addr(&self, page: usize) -> usize {
        self.ptr as usize + page * page_size()
    }

    pub fn range(&self) -> Range {
        Range::new(self.ptr as usize, self.len).unwrap()
    }

    pub fn sub(&self, first: usize, pages: usize) -> Range {
        Range::new(self.addr(first), pages * page_size()).unwrap()
    }

    pub fn write(&self, page: usize, offset: usize, v: u8) {
        assert!(page < self.pages() && offset < page_size());
        // SAFETY: inside the mapping, which is writable (or tracked: the fault is handled).
        unsafe { self.ptr.add(page * page_size() + offset).write_volatile(v) }
    }

    pub fn read(&self, page: usize, offset: usize) -> u8 {
        assert!(page < self.pages() && offset < page_size());
        // SAFETY: inside the mapping.
        unsafe { self.ptr.add(page * page_size() + offset).read_volatile() }
    }

    /// The mapping's bytes (the test must not write them through other paths meanwhile).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The backends that work on this machine; the others are printed loudly with the reason.
pub fn working_backends() -> Vec<BackendKind> {
    BackendKind::ALL
        .into_iter()
        .filter(|k| match k.probe() {
            Ok(()) => true,
            Err(why) => {
                eprintln!("!!! backend {k} NOT TESTED here: {why}");
                false
            }
        })
        .collect()
}

pub fn shim(kind: BackendKind) -> Shim {
    let s = Shim::new(BackendChoice::Only(kind)).unwrap();
    assert_eq!(s.backend(), kind);
    s
}

/// Page indexes (within `m`) that the dirty set reports for mapping `m`.
pub fn dirty_pages_of(set: &kmod_shim::DirtySet, m: &Mapping) -> Vec<usize> {
    let mut v: Vec<usize> = set
        .dirty_addrs()
        .into_iter()
        .filter(|a| *a >= m.ptr as usize && *a < m.ptr as usize + m.len)
        .map(|a| (a - m.ptr as usize) / page_size())
        .collect();
    v.sort_unstable();
    v
}

/// `AnonHugePages` of the mapping that contains `addr`, in kB, from `/proc/self/smaps`.
pub fn anon_huge_kb(addr: usize) -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((span, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = span.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = addr >= lo && addr < hi;
                    continue;
                }
            }
        }
        if inside {
            if let Some(v) = line.strip_prefix("AnonHugePages:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            }
        }
    }
    0
}
