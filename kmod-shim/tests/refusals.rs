//! Bad ranges are refused with one clear error naming the range, and a refused ADD changes
//! nothing (all or none).

mod util;

use kmod_shim::{page_size, BackendChoice, Error, Range, Shim};
use util::*;

fn auto() -> Shim {
    Shim::new(BackendChoice::Auto).unwrap()
}

#[test]
fn unaligned_and_empty_ranges() {
    let m = Mapping::new(4);
    let e = Range::new(m.addr(0) + 8, page_size()).unwrap_err();
    assert!(matches!(e, Error::Unaligned { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("{:#x}", m.addr(0) + 8)),
        "{e}"
    );
    let e = Range::new(m.addr(0), 100).unwrap_err();
    assert!(matches!(e, Error::Unaligned { .. }), "{e}");
    let e = Range::new(m.addr(0), 0).unwrap_err();
    assert!(matches!(e, Error::BadLength { .. }), "{e}");
    let e = Range::new(usize::MAX - page_size() + 1, 2 * page_size()).unwrap_err();
    assert!(matches!(e, Error::BadLength { .. }), "{e}");
}

#[test]
fn overlapping_and_already_registered() {
    let m = Mapping::new(16);
    let mut shim = auto();
    shim.add(&[m.sub(0, 8)]).unwrap();
    let e = shim.add(&[m.sub(0, 8)]).unwrap_err();
    assert!(matches!(e, Error::AlreadyRegistered { .. }), "{e}");
    let e = shim.add(&[m.sub(4, 8)]).unwrap_err();
    assert!(matches!(e, Error::Overlap { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{:#x}", m.addr(4))), "{e}");
    // Overlap inside one call.
    let e = shim.add(&[m.sub(8, 4), m.sub(10, 4)]).unwrap_err();
    assert!(matches!(e, Error::Overlap { .. }), "{e}");
    // Another shim in the same process sees the same table.
    let e = auto().add(&[m.sub(2, 1)]).unwrap_err();
    assert!(matches!(e, Error::Overlap { .. }), "{e}");
    // Nothing of the refused calls stuck: 8..16 is still free.
    shim.add(&[m.sub(8, 8)]).unwrap();
}

#[test]
fn unmapped_read_only_and_shared_memory() {
    let m = Mapping::new(3);
    // SAFETY: punching a hole in our own mapping; the test touches only pages 0 and 2.
    assert_eq!(unsafe { libc::munmap(m.addr(1) as *mut _, page_size()) }, 0);
    let mut shim = auto();
    let e = shim.add(&[m.range()]).unwrap_err();
    assert!(matches!(e, Error::Unmappable { .. }), "{e}");
    assert!(e.to_string().contains("nothing is mapped"), "{e}");
    shim.add(&[m.sub(0, 1), m.sub(2, 1)]).unwrap();

    let ro = Mapping::with(2, libc::PROT_READ, libc::MAP_PRIVATE);
    let e = shim.add(&[ro.range()]).unwrap_err();
    assert!(e.to_string().contains("not private read-write"), "{e}");

    let shared = Mapping::with(2, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED);
    let e = shim.add(&[shared.range()]).unwrap_err();
    assert!(matches!(e, Error::Unmappable { .. }), "{e}");
}

#[test]
fn add_is_all_or_none() {
    let good = Mapping::new(4);
    let ro = Mapping::with(1, libc::PROT_READ, libc::MAP_PRIVATE);
    let mut shim = auto();
    assert!(shim.add(&[good.range(), ro.range()]).is_err());
    assert_eq!(shim.ranges().count(), 0);
    good.write(0, 0, 1); // still writable, not tracked
    shim.add(&[good.range()]).unwrap();
}

#[test]
fn remove_of_unknown_range() {
    let m = Mapping::new(4);
    let mut shim = auto();
    shim.add(&[m.range()]).unwrap();
    let e = shim.remove(&[m.sub(0, 2)]).unwrap_err();
    assert!(matches!(e, Error::NotRegistered { .. }), "{e}");
    shim.remove(&[m.range()]).unwrap();
}

#[test]
fn auto_says_what_it_chose_and_why() {
    let shim = auto();
    let why = shim.why();
    assert!(why.contains(shim.backend().name()), "{why}");
    // Auto takes the first backend in order of preference whose probe passes.
    let first = kmod_shim::BackendKind::ALL
        .into_iter()
        .find(|k| k.probe().is_ok())
        .unwrap();
    assert_eq!(shim.backend(), first, "{why}");
    eprintln!("auto: {why}");
    let e = "nonsense".parse::<BackendChoice>().unwrap_err();
    assert!(e.to_string().contains("unknown backend"), "{e}");
}

/// A backend that should work here but fails its probe must fail the suite, not be skipped:
/// `mprotect` and `full` work everywhere, `uffd-wp` on every kernel since 6.7.
#[test]
fn expected_backends_work_here() {
    use kmod_shim::BackendKind::*;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    let mut expected = vec![Mprotect, Full];
    if version >= (6, 7) {
        expected.push(UffdWp);
    }
    for kind in expected {
        if let Err(why) = kind.probe() {
            panic!(
                "{kind} must work on Linux {}.{} but its probe failed: {why}",
                version.0, version.1
            );
        }
    }
}
