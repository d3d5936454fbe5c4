//! The image directory under bad input and crashes: every damaged, truncated, foreign or
//! out-of-order stream is refused with one clear error and the last good image is untouched;
//! complete-but-unapplied checkpoints are replayed after a crash, torn ones dropped.

use hotspare_image::format::{Begin, RangeEntry};
use hotspare_image::identity::ExeId;
use hotspare_image::{write_stream, FormatError, ImageDir, ImageError, Run, FORMAT_VERSION};
use std::path::Path;

const PAGE: usize = 4096;
const ADDR: u64 = 0x7000_0000_0000;
const LEN: u64 = 16 * PAGE as u64;
const EXE: ExeId = ExeId([7; 32]);
const LINEAGE: [u8; 16] = [0x11; 16];

fn begin(seq: u64, base: u64) -> Begin {
    Begin {
        format_version: FORMAT_VERSION,
        lineage: LINEAGE,
        term: 1,
        seq,
        base_seq: base,
        exe_id: EXE.0,
        page_size: PAGE as u32,
        ranges: vec![RangeEntry {
            addr: ADDR,
            len: LEN,
            complete: base == 0,
        }],
        meta: b"meta".to_vec(),
    }
}

fn stream(b: &Begin, runs: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_stream(&mut out, b, runs.iter().map(|(a, d)| Run::Data(*a, &d[..]))).unwrap();
    out
}

fn page_of(v: u8) -> Vec<u8> {
    vec![v; PAGE]
}

/// Writes `bytes` as WAL `seq` and commits it.
fn commit(dir: &mut ImageDir, seq: u64, bytes: &[u8]) -> Result<u64, ImageError> {
    let (path, _) = dir.create_wal(seq).unwrap();
    std::fs::write(&path, bytes).unwrap();
    dir.commit_wal(seq, Some(&EXE)).map(|s| s.begin.seq)
}

fn data(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("data").join(format!("{ADDR:016x}-{LEN:x}.pages"))).unwrap()
}

/// An image at seq 1 (full: page i = i) and seq 2 (page 3 = 0xAA).
fn good_image() -> (tempfile::TempDir, ImageDir) {
    let t = tempfile::tempdir().unwrap();
    let mut dir = ImageDir::open(t.path()).unwrap();
    let full: Vec<u8> = (0..16).flat_map(|i| page_of(i as u8)).collect();
    assert_eq!(
        commit(&mut dir, 1, &stream(&begin(1, 0), &[(ADDR, full)])).unwrap(),
        1
    );
    let inc = stream(&begin(2, 1), &[(ADDR + 3 * PAGE as u64, page_of(0xAA))]);
    assert_eq!(commit(&mut dir, 2, &inc).unwrap(), 2);
    (t, dir)
}

/// The image is still at 2, whole, and no stream of the refused one is left behind (the
/// directory is open and locked by the caller, so this looks through a second, unlocked handle).
fn assert_untouched(t: &Path, before: &[u8]) {
    assert_eq!(data(t), before, "data file changed");
    let reopened = ImageDir::attach(t).unwrap();
    assert_eq!(reopened.seq(), 2);
    assert_eq!(reopened.verify_data().unwrap(), 16);
    assert!(
        reopened.wal_files().unwrap().is_empty(),
        "{:?}",
        reopened.wal_files()
    );
}

#[test]
fn good_checkpoints_apply() {
    let (t, dir) = good_image();
    let d = data(t.path());
    assert_eq!(d[3 * PAGE], 0xAA);
    assert_eq!(d[5 * PAGE], 5);
    assert_eq!(dir.manifest().unwrap().meta, b"meta");
    assert_eq!(dir.verify_data().unwrap(), 16);
    assert!(dir.wal_files().unwrap().is_empty());
}

#[test]
fn every_bad_stream_is_refused_and_the_image_survives() {
    let (t, mut dir) = good_image();
    let before = data(t.path());
    let good = stream(
        &begin(3, 2),
        &[(ADDR, page_of(1)), (ADDR + 5 * PAGE as u64, page_of(2))],
    );
    type Expect = Box<dyn Fn(&ImageError) -> bool>;
    let mut cases: Vec<(&str, Vec<u8>, Expect)> = Vec::new();
    let mut flipped = good.clone();
    flipped[200] ^= 0x40;
    cases.push((
        "flipped byte",
        flipped,
        Box::new(|e| {
            matches!(
                e,
                ImageError::Format {
                    source: FormatError::Checksum { .. },
                    ..
                }
            )
        }),
    ));
    cases.push((
        "truncated",
        good[..good.len() - 10].to_vec(),
        Box::new(|e| {
            matches!(
                e,
                ImageError::Format {
                    source: FormatError::Truncated { .. },
                    ..
                }
            )
        }),
    ));
    cases.push((
        "garbage",
        vec![0x42; 4096],
        Box::new(|e| {
            matches!(
                e,
                ImageError::Format {
                    source: FormatError::BadMagic { .. },
                    ..
                }
            )
        }),
    ));
    cases.push((
        "empty",
        vec![],
        Box::new(|e| {
            matches!(
                e,
                ImageError::Format {
                    source: FormatError::Truncated { .. },
                    ..
                }
            )
        }),
    ));
    let mut other = begin(3, 2);
    other.exe_id = [9; 32];
    cases.push((
        "other executable",
        stream(&other, &[]),
        Box::new(|e| matches!(e, ImageError::OtherExecutable { .. })),
    ));
    let mut v1 = begin(3, 2);
    v1.format_version = 1;
    cases.push((
        "other version",
        stream(&v1, &[]),
        Box::new(|e| {
            matches!(
                e,
                ImageError::Format {
                    source: FormatError::Version { found: 1, .. },
                    ..
                }
            )
        }),
    ));
    cases.push((
        "wrong base",
        stream(&begin(3, 1), &[]),
        Box::new(|e| {
            matches!(
                e,
                ImageError::Chain {
                    base: 1,
                    have: 2,
                    ..
                }
            )
        }),
    ));
    cases.push((
        "page outside the ranges",
        stream(&begin(3, 2), &[(ADDR + LEN, page_of(1))]),
        Box::new(|e| {
            matches!(
                e,
                ImageError::Format {
                    source: FormatError::Malformed { .. },
                    ..
                }
            )
        }),
    ));
    let mut extra = good.clone();
    extra.extend_from_slice(&good[..64]);
    cases.push((
        "data after END",
        extra,
        Box::new(|e| {
            matches!(
                e,
                ImageError::Format {
                    source: FormatError::Malformed { .. } | FormatError::Truncated { .. },
                    ..
                }
            )
        }),
    ));
    let mut new_range = begin(3, 2);
    new_range.ranges.push(RangeEntry {
        addr: ADDR + (1 << 30),
        len: LEN,
        complete: false,
    });
    cases.push((
        "new range without its pages",
        stream(&new_range, &[]),
        Box::new(|e| matches!(e, ImageError::IncompleteRange { .. })),
    ));
    for (what, bytes, expected) in cases {
        let err = commit(&mut dir, 3, &bytes).unwrap_err();
        let line = err.to_string();
        assert!(expected(&err), "{what}: unexpected error {line}");
        assert!(
            !line.contains('\n'),
            "{what}: error is not one line: {line}"
        );
        eprintln!("{what:28} -> {line}");
        assert_eq!(dir.seq(), 2, "{what}");
        assert_untouched(t.path(), &before);
    }
    // And the good one still applies afterwards.
    assert_eq!(commit(&mut dir, 3, &good).unwrap(), 3);
    assert_eq!(data(t.path())[5 * PAGE], 2);
}

#[test]
fn zero_runs_read_as_zeros_and_verify() {
    let (t, mut dir) = good_image();
    let mut full = begin(3, 0);
    full.ranges[0].complete = true;
    let mut s = Vec::new();
    let runs = [
        Run::Data(ADDR, &[9u8; PAGE][..]),
        Run::Zero(ADDR + PAGE as u64, LEN - PAGE as u64),
    ];
    write_stream(&mut s, &full, runs).unwrap();
    assert_eq!(commit(&mut dir, 3, &s).unwrap(), 3);
    let d = data(t.path());
    assert!(d[..PAGE].iter().all(|&b| b == 9) && d[PAGE..].iter().all(|&b| b == 0));
    assert_eq!(dir.verify_data().unwrap(), 16);
    // A ZERO run outside the ranges is refused like any other.
    let mut bad = Vec::new();
    write_stream(&mut bad, &begin(4, 3), [Run::Zero(ADDR + LEN, PAGE as u64)]).unwrap();
    assert!(matches!(
        commit(&mut dir, 4, &bad),
        Err(ImageError::Format {
            source: FormatError::Malformed { .. },
            ..
        })
    ));
}

#[test]
fn crash_recovery_replays_complete_and_drops_torn_streams() {
    let (t, dir) = good_image();
    drop(dir);
    // A crash after the rename to .cpt but before the apply: replayed on open.
    let s3 = stream(&begin(3, 2), &[(ADDR + 7 * PAGE as u64, page_of(0x77))]);
    std::fs::write(t.path().join("wal").join(format!("{:020}.cpt", 3)), &s3).unwrap();
    // A crash while writing the next one: dropped.
    let s4 = stream(&begin(4, 3), &[(ADDR, page_of(0x44))]);
    std::fs::write(
        t.path().join("wal").join(format!("{:020}.tmp", 4)),
        &s4[..s4.len() / 2],
    )
    .unwrap();
    // A crash after applying but before deleting the WAL file: applied twice is harmless.
    let s2 = stream(&begin(2, 1), &[(ADDR + 3 * PAGE as u64, page_of(0xAA))]);
    std::fs::write(t.path().join("wal").join(format!("{:020}.cpt", 2)), &s2).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    assert_eq!(dir.seq(), 3);
    let d = data(t.path());
    assert_eq!((d[7 * PAGE], d[0], d[3 * PAGE]), (0x77, 0, 0xAA));
    assert!(dir.wal_files().unwrap().is_empty(), "{:?}", dir.wal_files());
    assert_eq!(dir.verify_data().unwrap(), 16);
}

#[test]
fn a_damaged_stream_found_at_recovery_is_set_aside() {
    let (t, dir) = good_image();
    let before = data(t.path());
    drop(dir);
    let mut s3 = stream(&begin(3, 2), &[(ADDR, page_of(3))]);
    let n = s3.len();
    s3[n - 40] ^= 1;
    std::fs::write(t.path().join("wal").join(format!("{:020}.cpt", 3)), &s3).unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    assert_eq!(dir.seq(), 2);
    assert_eq!(data(t.path()), before);
    let wal = dir.wal_files().unwrap();
    assert!(
        wal.len() == 1 && wal[0].extension().unwrap() == "bad",
        "{wal:?}"
    );
}

#[test]
fn inspect_reports_damage_with_a_failing_exit_status() {
    let (t, _dir) = good_image();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hotspare"))
            .arg("inspect")
            .arg(t.path())
            .output()
            .unwrap()
    };
    let ok = run();
    let text = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{text}");
    assert!(
        text.contains("sequence     2") && text.contains("verdict      OK"),
        "{text}"
    );
    let p = t
        .path()
        .join("data")
        .join(format!("{ADDR:016x}-{LEN:x}.pages"));
    let mut d = std::fs::read(&p).unwrap();
    d[9 * PAGE + 17] ^= 0xFF;
    std::fs::write(&p, d).unwrap();
    let bad = run();
    let text = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert!(!bad.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "page {:#x} fails its CRC32C",
            ADDR + 9 * PAGE as u64
        )),
        "{text}"
    );
    let none = std::process::Command::new(env!("CARGO_BIN_EXE_hotspare"))
        .args(["inspect", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no checkpoint image"));
}
