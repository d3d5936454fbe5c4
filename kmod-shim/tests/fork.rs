//! cptfork: the child reads the memory exactly as it was at the call while the parent (and its
//! other threads) keep writing.

mod util;

use kmod_shim::{page_size, ChildOutcome, DirtySet, WriteDirtyPages};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use util::*;

fn pipe() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Parses the WriteDirtyPages stream: (addr, bytes) records up to the end marker.
fn parse_dump(mut buf: &[u8]) -> BTreeMap<usize, Vec<u8>> {
    let mut out = BTreeMap::new();
    loop {
        assert!(buf.len() >= 16, "dump cut short");
        let addr = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(buf[8..16].try_into().unwrap()) as usize;
        buf = &buf[16..];
        if len == 0 {
            assert!(buf.is_empty(), "bytes after the end marker");
            return out;
        }
        for (i, page) in buf[..len].chunks(page_size()).enumerate() {
            out.insert(addr + i * page_size(), page.to_vec());
        }
        buf = &buf[len..];
    }
}

#[test]
fn child_sees_the_frozen_image_while_parent_writes() {
    for kind in working_backends() {
        let state = Mapping::new(256);
        let busy = Mapping::new(64);
        for p in 0..state.pages() {
            state.write(p, 0, (p % 251) as u8);
        }
        let mut shim = shim(kind);
        shim.add(&[state.range(), busy.range()]).unwrap();
        shim.query().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut expected = BTreeMap::new();
        for _ in 0..40 {
            let p = rng.usize(..state.pages());
            let v = rng.u8(1..);
            state.write(p, 0, v);
            state.write(p, page_size() - 1, v);
            expected.insert(state.addr(p), v);
        }
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Another thread keeps writing tracked memory and allocating (so the allocator's
            // lock is often held at the fork) during the whole test.
            s.spawn(|| {
                let mut rng = fastrand::Rng::with_seed(9);
                let mut junk = Vec::new();
                while !stop.load(SeqCst) {
                    busy.write(rng.usize(..busy.pages()), 0, rng.u8(..));
                    junk.push(vec![0u8; rng.usize(1..4096)]);
                    if junk.len() > 64 {
                        junk.clear();
                    }
                }
            });
            let (mut rx, tx) = pipe();
            let snap = shim
                .cptfork(|dirty: &DirtySet| WriteDirtyPages::new(tx, dirty))
                .unwrap();
            // The parent overwrites all of its state at once, before reading the dump.
            for p in 0..state.pages() {
                state.write(p, 0, 0xFF);
                state.write(p, page_size() - 1, 0xFF);
            }
            let mut dump = Vec::new();
            rx.read_to_end(&mut dump).unwrap();
            let outcome = snap.dirty().clone();
            assert_eq!(snap.wait().unwrap(), ChildOutcome::Exited(0), "{kind}");
            stop.store(true, SeqCst);
            let pages = parse_dump(&dump);
            for (addr, v) in &expected {
                let page = pages
                    .get(addr)
                    .unwrap_or_else(|| panic!("{kind}: page {addr:#x} missing"));
                assert_eq!(
                    (page[0], page[page_size() - 1]),
                    (*v, *v),
                    "{kind}: page {addr:#x}"
                );
            }
            for (addr, page) in &pages {
                assert!(
                    outcome.is_dirty(*addr),
                    "{kind}: dumped a clean page {addr:#x}"
                );
                if state.range().contains(*addr) && !expected.contains_key(addr) {
                    let p = (addr - state.addr(0)) / page_size();
                    assert_eq!(page[0], (p % 251) as u8, "{kind}: clean page content");
                }
            }
            if kind.is_exact() {
                let in_state = pages.keys().filter(|a| state.range().contains(**a)).count();
                assert_eq!(
                    in_state,
                    expected.len(),
                    "{kind}: exact backends dump exactly the writes"
                );
            }
            eprintln!(
                "{kind}: child dumped {} pages ({} bytes)",
                pages.len(),
                dump.len()
            );
        });
        // The parent's writes after the fork are in the next epoch.
        let next = shim.query().unwrap();
        assert_eq!(dirty_pages_of(&next, &state).len(), state.pages(), "{kind}");
    }
}

#[test]
fn child_reports_a_failed_write() {
    let m = Mapping::new(4);
    let mut shim = shim(working_backends()[0]);
    shim.add(&[m.range()]).unwrap();
    m.write(0, 0, 1);
    let ro: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let snap = shim
        .cptfork(|d: &DirtySet| WriteDirtyPages::new(ro, d))
        .unwrap();
    assert_eq!(snap.wait().unwrap(), ChildOutcome::Exited(libc::EBADF));
}
