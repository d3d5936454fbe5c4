//! Regressions found by review, one test each.

mod util;

use kmod_shim::BackendKind;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use util::*;

fn segv_disposition() -> usize {
    // SAFETY: querying the current disposition into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

/// A write that faults while a REMOVE of its range is in progress used to find no slot, be
/// passed to the previous handler (which uninstalled ours), and leave every other tracked range
/// untracked — the next first write anywhere then killed the process.
#[test]
fn mprotect_write_racing_remove_keeps_the_handler() {
    let keep = Mapping::new(4);
    let mut other = shim(BackendKind::Mprotect);
    other.add(&[keep.range()]).unwrap();
    other.query().unwrap();
    let ours = segv_disposition();
    let mut s = shim(BackendKind::Mprotect);
    for _ in 0..3000 {
        let m = Mapping::new(2);
        s.add(&[m.range()]).unwrap();
        let go = AtomicBool::new(false);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                go.store(true, SeqCst);
                m.write(0, 0, 1);
                m.write(1, 0, 1);
            });
            while !go.load(SeqCst) {
                std::hint::spin_loop();
            }
            s.remove(&[m.range()]).unwrap();
        });
    }
    assert_eq!(segv_disposition(), ours, "the SIGSEGV handler was replaced");
    keep.write(2, 0, 7);
    let set = other.query().unwrap();
    assert_eq!(
        dirty_pages_of(&set, &keep),
        vec![2],
        "a range stayed tracked after the races"
    );
}

/// The PAGEMAP_SCAN walk is resumed at `walk_end` when the output vector (4096 runs) fills:
/// 10 000 isolated dirty pages need three rounds.
#[test]
fn uffd_wp_scan_resumes_when_the_output_vector_fills() {
    let m = Mapping::new(20_000);
    let mut s = shim(BackendKind::UffdWp);
    s.add(&[m.range()]).unwrap();
    for p in (0..20_000).step_by(2) {
        m.write(p, 0, 1);
    }
    let got = dirty_pages_of(&s.query().unwrap(), &m);
    assert_eq!(got.len(), 10_000);
    assert!(got.iter().all(|p| p % 2 == 0));
}

/// REMOVE of the same range twice in one call is refused up front, and nothing is removed.
#[test]
fn remove_with_a_duplicate_is_refused_whole() {
    let m = Mapping::new(2);
    let mut s = shim(working_backends()[0]);
    s.add(&[m.range()]).unwrap();
    let e = s.remove(&[m.range(), m.range()]).unwrap_err();
    assert!(e.to_string().contains("listed twice"), "{e}");
    assert_eq!(s.ranges().count(), 1);
    s.remove(&[m.range()]).unwrap();
}
