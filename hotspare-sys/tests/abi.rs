//! The hand-written ABI, checked three ways: layout (`memoffset`), values (`linux-raw-sys`,
//! generated from the kernel's own headers), and acceptance by the running kernel.

use hotspare_sys::pagemap::*;
use hotspare_sys::uffd::*;
use hotspare_sys::*;
use linux_raw_sys::general as lrs;
use linux_raw_sys::ioctl as lrs_ioctl;
use memoffset::offset_of;
use std::mem::size_of;

#[test]
fn cpt_range_layout_matches_c() {
    assert_eq!(size_of::<cpt_range>(), 16);
    assert_eq!(offset_of!(cpt_range, addr), 0);
    assert_eq!(offset_of!(cpt_range, len), 8);
}

#[test]
fn uffd_struct_layouts() {
    assert_eq!(size_of::<uffdio_api>(), 24);
    assert_eq!(offset_of!(uffdio_api, api), 0);
    assert_eq!(offset_of!(uffdio_api, features), 8);
    assert_eq!(offset_of!(uffdio_api, ioctls), 16);
    assert_eq!(size_of::<uffdio_range>(), 16);
    assert_eq!(offset_of!(uffdio_range, len), 8);
    assert_eq!(size_of::<uffdio_register>(), 32);
    assert_eq!(offset_of!(uffdio_register, mode), 16);
    assert_eq!(offset_of!(uffdio_register, ioctls), 24);
    assert_eq!(size_of::<uffdio_writeprotect>(), 24);
    assert_eq!(offset_of!(uffdio_writeprotect, mode), 16);
    assert_eq!(size_of::<uffdio_api>(), size_of::<lrs::uffdio_api>());
    assert_eq!(
        size_of::<uffdio_register>(),
        size_of::<lrs::uffdio_register>()
    );
    assert_eq!(
        size_of::<uffdio_writeprotect>(),
        size_of::<lrs::uffdio_writeprotect>()
    );
}

#[test]
fn pagemap_scan_struct_layouts() {
    assert_eq!(size_of::<page_region>(), 24);
    assert_eq!(offset_of!(page_region, end), 8);
    assert_eq!(offset_of!(page_region, categories), 16);
    assert_eq!(size_of::<pm_scan_arg>(), 96);
    assert_eq!(offset_of!(pm_scan_arg, walk_end), 32);
    assert_eq!(offset_of!(pm_scan_arg, vec), 40);
    assert_eq!(offset_of!(pm_scan_arg, max_pages), 56);
    assert_eq!(offset_of!(pm_scan_arg, category_mask), 72);
    assert_eq!(offset_of!(pm_scan_arg, return_mask), 88);
    assert_eq!(size_of::<pm_scan_arg>(), size_of::<lrs::pm_scan_arg>());
    assert_eq!(size_of::<page_region>(), size_of::<lrs::page_region>());
}

#[test]
fn constants_match_kernel_headers() {
    assert_eq!(UFFD_API, u64::from(lrs::UFFD_API));
    assert_eq!(UFFD_FEATURE_WP_ASYNC, u64::from(lrs::UFFD_FEATURE_WP_ASYNC));
    assert_eq!(
        UFFD_FEATURE_WP_UNPOPULATED,
        u64::from(lrs::UFFD_FEATURE_WP_UNPOPULATED)
    );
    assert_eq!(
        UFFD_FEATURE_PAGEFAULT_FLAG_WP,
        u64::from(lrs::UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    );
    assert_eq!(UFFD_FEATURE_MOVE, u64::from(lrs::UFFD_FEATURE_MOVE));
    assert_eq!(
        UFFDIO_REGISTER_MODE_WP,
        u64::from(lrs::UFFDIO_REGISTER_MODE_WP)
    );
    assert_eq!(UFFD_USER_MODE_ONLY as u32, lrs::UFFD_USER_MODE_ONLY);
    assert_eq!(UFFDIO_API, lrs_ioctl::UFFDIO_API);
    assert_eq!(UFFDIO_REGISTER, lrs_ioctl::UFFDIO_REGISTER);
    assert_eq!(UFFDIO_UNREGISTER, lrs_ioctl::UFFDIO_UNREGISTER);
    assert_eq!(UFFDIO_WRITEPROTECT, lrs_ioctl::UFFDIO_WRITEPROTECT);
    assert_eq!(PM_SCAN_WP_MATCHING, u64::from(lrs::PM_SCAN_WP_MATCHING));
    assert_eq!(PM_SCAN_CHECK_WPASYNC, u64::from(lrs::PM_SCAN_CHECK_WPASYNC));
    assert_eq!(PAGE_IS_WRITTEN, u64::from(lrs::PAGE_IS_WRITTEN));
    assert_eq!(PAGE_IS_SOFT_DIRTY, u64::from(lrs::PAGE_IS_SOFT_DIRTY));
    assert_eq!(PAGE_IS_GUARD, u64::from(lrs::PAGE_IS_GUARD));
    assert_eq!(PAGE_IS_HUGE, u64::from(lrs::PAGE_IS_HUGE));
    // include/uapi/linux/fs.h: #define PAGEMAP_SCAN _IOWR(PAGEMAP_SCAN_IOCTL, 16, struct pm_scan_arg)
    assert_eq!(PAGEMAP_SCAN, 0xC060_6610);
}

// ---- the running kernel accepts the ABI -------------------------------------------------

const PAGE: usize = 4096;

struct Map(*mut u8, usize);
impl Map {
    fn anon(len: usize) -> Map {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
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
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Map(p.cast(), len)
    }
}
impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping this value created.
        unsafe { libc::munmap(self.0.cast(), self.1) };
    }
}

fn check(rc: libc::c_int, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

#[test]
fn kernel_accepts_uffd_wp_async_and_pagemap_scan() {
    let map = Map::anon(8 * PAGE);
    // SAFETY: plain syscall with flags only.
    let uffd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
        )
    } as libc::c_int;
    check(uffd, "userfaultfd");
    let mut api = uffdio_api {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        ioctls: 0,
    };
    // SAFETY: `api` is a valid uffdio_api the kernel reads and writes.
    check(
        unsafe { libc::ioctl(uffd, UFFDIO_API as _, &mut api) },
        "UFFDIO_API",
    );
    assert_ne!(api.features & UFFD_FEATURE_WP_ASYNC, 0);
    let range = uffdio_range {
        start: map.0 as u64,
        len: map.1 as u64,
    };
    let mut reg = uffdio_register {
        range,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: valid argument struct; the range is our own mapping.
    check(
        unsafe { libc::ioctl(uffd, UFFDIO_REGISTER as _, &mut reg) },
        "UFFDIO_REGISTER",
    );
    let mut wp = uffdio_writeprotect {
        range,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: valid argument struct; the range is registered above.
    check(
        unsafe { libc::ioctl(uffd, UFFDIO_WRITEPROTECT as _, &mut wp) },
        "UFFDIO_WRITEPROTECT",
    );
    // Write pages 1 and 5 (never touched before: WP_UNPOPULATED must still catch them).
    // SAFETY: both offsets are inside the mapping.
    unsafe {
        map.0.add(PAGE).write_volatile(1);
        map.0.add(5 * PAGE).write_volatile(1);
    }
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut out = [page_region::default(); 8];
    let mut arg = pm_scan_arg {
        size: size_of::<pm_scan_arg>() as u64,
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start: map.0 as u64,
        end: map.0 as u64 + map.1 as u64,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..Default::default()
    };
    use std::os::fd::AsRawFd;
    // SAFETY: `arg` points at `out`, which has `vec_len` records.
    let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    check(n, "PAGEMAP_SCAN");
    assert_eq!(arg.walk_end, arg.end);
    let got: Vec<(u64, u64)> = out[..n as usize]
        .iter()
        .map(|r| {
            (
                (r.start - map.0 as u64) / PAGE as u64,
                (r.end - map.0 as u64) / PAGE as u64,
            )
        })
        .collect();
    assert_eq!(got, vec![(1, 2), (5, 6)]);
    // The scan re-protected them: a second scan reports nothing.
    arg.walk_end = 0;
    // SAFETY: as above.
    let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    assert_eq!(n, 0);
    // SAFETY: valid range struct for our registration.
    check(
        unsafe { libc::ioctl(uffd, UFFDIO_UNREGISTER as _, &mut { range }) },
        "UFFDIO_UNREGISTER",
    );
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(uffd) };
}

#[test]
fn pagemap_entry_of_a_written_page_is_present() {
    use std::os::unix::fs::FileExt;
    let map = Map::anon(PAGE);
    // SAFETY: inside the mapping.
    unsafe { map.0.write_volatile(7) };
    let f = std::fs::File::open("/proc/self/pagemap").unwrap();
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, (map.0 as u64 / PAGE as u64) * 8)
        .unwrap();
    let e = u64::from_le_bytes(e);
    assert_ne!(e & PM_PRESENT, 0);
    assert_eq!(e & PM_SWAP, 0);
}
