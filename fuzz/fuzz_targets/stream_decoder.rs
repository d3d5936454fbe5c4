//! The checkpoint stream decoder against hostile bytes: `hotspare_image::format::scan_stream`
//! (what a spare's persister and every applier run on a received stream) and `decode_begin`
//! (what reads a manifest). Neither may panic; a stream `scan_stream` accepts must be
//! self-consistent, read the same when delivered a byte at a time, and survive a round trip
//! through `write_stream`.
//!
//! Input: `flags | stream`. `flags & 1`: repair every frame's CRC32C first; `flags & 2`: repair
//! the END frame too (sequence, counts, digest), so that mutations reach the checks behind the
//! checksums. The BEGIN payload (if the stream has one) and the whole input also go to
//! `decode_begin` raw. The same bytes also go to `delta::resolve_stream` (what a spare runs on
//! a wire stream with BASED and DELTA frames) on a base of one 16-page range whose sequence
//! is the one a BASED header names: no panic, and what it accepts is a valid stored stream
//! with the header it reported.

#![no_main]

use hotspare_image::delta::{self, BasePages, Based};
use hotspare_image::format::{decode_begin, encode_begin, scan_stream, HEADER_LEN};
use hotspare_image::{write_stream, Run};
use hotspare_image::{Begin, RangeEntry};
use hotspare_fuzz::{fix_stream, wire_base_page, WIRE_BASE_ADDR, WIRE_BASE_PAGE, WIRE_BASE_PAGES};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

/// A reader that returns at most `n` bytes per call (a slow socket, a short read).
struct Trickle<'a> {
    data: &'a [u8],
    n: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.n.min(buf.len()).min(self.data.len());
        buf[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum OwnedRun {
    Data(u64, Vec<u8>),
    Zero(u64, u64),
}

fn scan(r: impl Read) -> Result<(hotspare_image::Summary, Vec<OwnedRun>), String> {
    let mut runs = Vec::new();
    scan_stream(r, |run| {
        runs.push(match run {
            Run::Data(a, d) => OwnedRun::Data(a, d.to_vec()),
            Run::Zero(a, l) => OwnedRun::Zero(a, l),
        });
        Ok(())
    })
    .map(|s| (s, runs))
    .map_err(|e| e.to_string())
}

struct Base;

impl BasePages for Base {
    fn base_page(&mut self, addr: u64, out: &mut [u8]) -> Result<(), String> {
        let end = WIRE_BASE_ADDR + WIRE_BASE_PAGES * WIRE_BASE_PAGE;
        if !(WIRE_BASE_ADDR..end).contains(&addr) || out.len() as u64 != WIRE_BASE_PAGE {
            return Err("outside the base".into());
        }
        wire_base_page(addr, out);
        Ok(())
    }
}

/// `resolve_stream` on `stream`, on a base with the sequence its BASED header names.
fn resolve(stream: &[u8]) {
    let based = stream
        .get(HEADER_LEN..)
        .and_then(|p| postcard::take_from_bytes::<Based>(p).ok());
    let base = Begin {
        format_version: hotspare_image::FORMAT_VERSION,
        lineage: [0x11; 16],
        term: 1,
        seq: based.map_or(1, |(b, _)| b.base_seq),
        base_seq: 0,
        exe_id: [7; 32],
        page_size: WIRE_BASE_PAGE as u32,
        ranges: vec![RangeEntry {
            addr: WIRE_BASE_ADDR,
            len: WIRE_BASE_PAGES * WIRE_BASE_PAGE,
            complete: true,
        }],
        meta: b"m".to_vec(),
    };
    let mut out = Vec::new();
    let mut runs = 0u64;
    let Ok(r) = delta::resolve_stream(stream, Some(&base), &mut Base, &mut out, |_| runs += 1)
    else {
        return;
    };
    let s = scan(&out[..]).expect("a resolved stream is a valid stored stream");
    assert_eq!(s.0.begin, r.begin);
    assert_eq!(s.1.len() as u64, runs);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut stream = rest.to_vec();
    if flags & 3 != 0 {
        fix_stream(&mut stream, flags & 2 != 0);
    }
    // The raw bytes and the first frame's payload as a BEGIN: any result, no panic; what
    // decodes re-encodes to something that decodes the same.
    for payload in [&stream[..], stream.get(HEADER_LEN..).unwrap_or(&[])] {
        if let Ok(b) = decode_begin(payload, 0) {
            let frame = encode_begin(&b);
            assert_eq!(
                decode_begin(&frame[HEADER_LEN..], 0).ok().as_ref(),
                Some(&b)
            );
        }
    }

    resolve(&stream);
    let whole = scan(&stream[..]);
    let trickled = scan(Trickle {
        data: &stream,
        n: usize::from(flags >> 2) % 7 + 1,
    });
    match (&whole, &trickled) {
        (Ok((a, ra)), Ok((b, rb))) => {
            assert_eq!((&a.begin, &a.end, a.bytes), (&b.begin, &b.end, b.bytes));
            assert_eq!(ra, rb);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "short reads change the verdict"),
        _ => panic!("short reads change the verdict: {whole:?} vs {trickled:?}"),
    }
    let Ok((summary, runs)) = whole else { return };

    // Self-consistency of an accepted stream.
    let b = &summary.begin;
    assert_eq!(
        summary.bytes,
        stream.len() as u64,
        "accepted with bytes left over"
    );
    assert_eq!(summary.end.seq, b.seq);
    assert_eq!(summary.end.page_frames, runs.len() as u64);
    let page = u64::from(b.page_size);
    let mut pages = 0u64;
    for r in &runs {
        let (addr, len) = match r {
            OwnedRun::Data(a, d) => (*a, d.len() as u64),
            OwnedRun::Zero(a, l) => (*a, *l),
        };
        assert!(len > 0 && len % page == 0 && addr % page == 0);
        assert!(
            b.ranges
                .iter()
                .any(|r| addr >= r.addr && addr + len <= r.addr + r.len),
            "run {addr:#x}+{len:#x} outside every range"
        );
        pages += len / page;
    }
    assert_eq!(summary.end.pages, pages);

    // Round trip: the same header and runs, written by the library's writer, scan the same.
    let borrowed: Vec<Run<'_>> = runs
        .iter()
        .map(|r| match r {
            OwnedRun::Data(a, d) => Run::Data(*a, d),
            OwnedRun::Zero(a, l) => Run::Zero(*a, *l),
        })
        .collect();
    let mut again = Vec::new();
    let end = write_stream(&mut again, b, borrowed).expect("writing to memory");
    assert_eq!(end.pages, summary.end.pages);
    let (s2, runs2) = scan(&again[..]).expect("a re-encoded valid stream scans");
    assert_eq!(&s2.begin, b);
    assert_eq!(s2.end.pages, summary.end.pages);
    // The writer may split a data run into frames of at most PAGES_PER_FRAME pages: compare
    // the bytes the runs carry.
    let flat = |rs: &[OwnedRun]| -> Vec<(u64, u64, Option<Vec<u8>>)> {
        rs.iter()
            .map(|r| match r {
                OwnedRun::Data(a, d) => (*a, d.len() as u64, Some(d.clone())),
                OwnedRun::Zero(a, l) => (*a, *l, None),
            })
            .collect()
    };
    if runs.len() == runs2.len() {
        assert_eq!(flat(&runs), flat(&runs2));
        assert_eq!(end.digest, summary.end.digest);
        assert_eq!(again, stream, "a valid stream re-encodes to other bytes");
    } else {
        let bytes = |rs: &[OwnedRun]| -> Vec<u8> {
            rs.iter()
                .flat_map(|r| match r {
                    OwnedRun::Data(_, d) => d.clone(),
                    OwnedRun::Zero(..) => Vec::new(),
                })
                .collect()
        };
        assert_eq!(bytes(&runs), bytes(&runs2));
    }
});
