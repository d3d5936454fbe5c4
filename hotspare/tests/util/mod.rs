//! Streams and images for the image-directory tests.
#![allow(dead_code)]

use hotspare_image::format::{Begin, RangeEntry};
use hotspare_image::identity::ExeId;
use hotspare_image::{write_stream, ImageDir, ImageError, Run, FORMAT_VERSION};
use std::path::Path;

pub const PAGE: usize = 4096;
pub const ADDR: u64 = 0x7000_0000_0000;
pub const LEN: u64 = 16 * PAGE as u64;
pub const EXE: ExeId = ExeId([7; 32]);
pub const LINEAGE: [u8; 16] = [0x11; 16];

/// Checkpoint `seq` on top of `base` (0: full) of one 16-page range, lineage [`LINEAGE`].
pub fn begin(seq: u64, base: u64) -> Begin {
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

pub fn stream(b: &Begin, runs: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_stream(&mut out, b, runs.iter().map(|(a, d)| Run::Data(*a, &d[..]))).unwrap();
    out
}

pub fn page_of(v: u8) -> Vec<u8> {
    vec![v; PAGE]
}

/// Every page of every range of `b`, page i of a range filled with `fill + i`.
pub fn full_stream(b: &Begin, fill: u8) -> Vec<u8> {
    let runs: Vec<(u64, Vec<u8>)> = b
        .ranges
        .iter()
        .map(|r| {
            let pages = r.len as usize / PAGE;
            let bytes = (0..pages)
                .flat_map(|i| page_of(fill.wrapping_add(i as u8)))
                .collect();
            (r.addr, bytes)
        })
        .collect();
    stream(b, &runs)
}

/// Writes `bytes` as WAL `seq` and commits it.
pub fn commit(dir: &mut ImageDir, seq: u64, bytes: &[u8]) -> Result<u64, ImageError> {
    let (path, _) = dir.create_wal(seq).unwrap();
    std::fs::write(&path, bytes).unwrap();
    dir.commit_wal(seq, Some(&EXE)).map(|s| s.begin.seq)
}

/// Writes `bytes` as the spool `wal/<seq>.tmp` of `dir`.
pub fn spool(dir: &ImageDir, seq: u64, bytes: &[u8]) {
    let (path, _) = dir.create_wal(seq).unwrap();
    std::fs::write(path, bytes).unwrap();
}

pub fn data(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("data").join(format!("{ADDR:016x}-{LEN:x}.pages"))).unwrap()
}

/// An image at seq 1 (full: page i = i) and seq 2 (page 3 = 0xAA).
pub fn good_image() -> (tempfile::TempDir, ImageDir) {
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
