//! A BEGIN is untrusted input: every header that an applier could not act on safely (bad page
//! size, misaligned, empty, overflowing, overlapping or too many ranges, absurd sizes) is
//! refused by `scan_stream` — and so by every reader of streams and manifests — with an error
//! that names the problem.

mod util;

use hotspare_image::format::{self, Begin, RangeEntry, USER_SPACE_END};
use hotspare_image::{validate_begin, FormatError, ImageDir, ImageError};
use util::*;

fn range(addr: u64, len: u64) -> RangeEntry {
    RangeEntry {
        addr,
        len,
        complete: true,
    }
}

/// A full checkpoint with these ranges (and one page of data in the first, so that a reader
/// that let the header through would also check a page run against it).
fn with_ranges(ranges: Vec<RangeEntry>) -> Begin {
    let mut b = begin(1, 0);
    b.ranges = ranges;
    b
}

fn refused(b: &Begin, needle: &str) {
    let runs: Vec<(u64, Vec<u8>)> = match b.ranges.first() {
        Some(r) if b.page_size as usize == PAGE && r.len >= PAGE as u64 => {
            vec![(r.addr, page_of(1))]
        }
        _ => vec![],
    };
    let bytes = stream(b, &runs);
    let err = format::scan_stream(&bytes[..], |_| Ok(())).unwrap_err();
    let line = err.to_string();
    assert!(
        matches!(err, FormatError::InvalidBegin { offset: 0, .. }),
        "{needle}: {line}"
    );
    assert!(line.contains(needle), "expected '{needle}' in: {line}");
    assert!(validate_begin(b).is_err());
    eprintln!("{line}");
}

#[test]
fn page_sizes_outside_4k_to_1m_or_not_a_power_of_two_are_refused() {
    for p in [0, 1, 3, 2048, 4095, 6144, 2 << 20, u32::MAX] {
        let mut b = begin(1, 0);
        b.page_size = p;
        refused(&b, &format!("page size {p} is not a power of two"));
    }
    for p in [4096, 1 << 16, 1 << 20] {
        let mut b = with_ranges(vec![range(ADDR, 1 << 20)]);
        b.page_size = p;
        validate_begin(&b).unwrap();
    }
}

#[test]
fn misaligned_and_empty_ranges_are_refused() {
    refused(
        &with_ranges(vec![range(ADDR + 100, LEN)]),
        "is not page-aligned",
    );
    refused(
        &with_ranges(vec![range(ADDR, LEN + 100)]),
        "is not page-aligned",
    );
    refused(&with_ranges(vec![range(ADDR, 0)]), "is empty");
}

#[test]
fn ranges_that_overflow_or_leave_user_space_are_refused() {
    // addr + len wraps around: before validation, scan_stream's range check overflowed here.
    refused(
        &with_ranges(vec![range(u64::MAX - 8191, 16384)]),
        "overflows the address space",
    );
    refused(
        &with_ranges(vec![range(USER_SPACE_END - 4096, 8192)]),
        "ends beyond user space",
    );
    refused(
        &with_ranges(vec![range(USER_SPACE_END, 4096)]),
        "ends beyond user space",
    );
    // Ending exactly at the top of user space is fine.
    validate_begin(&with_ranges(vec![range(USER_SPACE_END - 4096, 4096)])).unwrap();
}

#[test]
fn overlapping_ranges_are_refused_in_any_order() {
    refused(
        &with_ranges(vec![range(ADDR, LEN), range(ADDR + LEN - 4096, LEN)]),
        "overlaps",
    );
    refused(
        &with_ranges(vec![range(ADDR + 8192, LEN), range(ADDR, LEN)]),
        "overlaps",
    );
    refused(
        &with_ranges(vec![range(ADDR, LEN), range(ADDR, LEN)]),
        "overlaps",
    );
    // Adjacent is not overlapping.
    validate_begin(&with_ranges(vec![range(ADDR + LEN, LEN), range(ADDR, LEN)])).unwrap();
}

#[test]
fn too_many_ranges_or_too_much_memory_is_refused() {
    let many: Vec<RangeEntry> = (0..1025).map(|i| range(ADDR + i * 8192, 4096)).collect();
    refused(
        &with_ranges(many),
        "1025 ranges, more than the 1024 allowed",
    );
    let ok: Vec<RangeEntry> = (0..1024).map(|i| range(ADDR + i * 8192, 4096)).collect();
    validate_begin(&with_ranges(ok)).unwrap();
    // 2 TiB in two ranges: each fits user space, together they pass the cap.
    refused(
        &with_ranges(vec![
            range(0x1000_0000_0000, 1 << 40),
            range(0x3000_0000_0000, 1 << 40),
        ]),
        "more than the 0x10000000000 (1 TiB) allowed",
    );
}

#[test]
fn impossible_sequences_and_a_zero_lineage_are_refused() {
    refused(&begin(0, 0), "sequence number 0");
    refused(
        &begin(3, 3),
        "checkpoint 3 names base 3, which is not older",
    );
    refused(&begin(3, 7), "checkpoint 3 names base 7");
    let mut b = begin(1, 0);
    b.lineage = [0; 16];
    refused(&b, "lineage is all zeros");
}

#[test]
fn a_manifest_with_an_invalid_header_is_refused_too() {
    let (t, dir) = good_image();
    drop(dir);
    let mut b = begin(2, 0);
    b.page_size = 3;
    std::fs::write(t.path().join("manifest"), format::encode_begin(&b)).unwrap();
    let err = ImageDir::open_read_only(t.path()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Format {
                source: FormatError::InvalidBegin { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("page size 3"), "{err}");
    assert!(ImageDir::open(t.path()).is_err());
}
