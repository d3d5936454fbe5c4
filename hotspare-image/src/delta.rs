//! Sub-page deltas: what goes on the wire instead of whole pages when the spare already holds
//! an older version of a page (format version 3, `docs/format.md` "Wire streams").
//!
//! A **wire stream** is what a primary sends a spare. It may begin with a compact **BASED**
//! header (only what differs from the base checkpoint's BEGIN) and carry **DELTA** frames: for
//! each page, the byte runs that differ from the page as of the base checkpoint. Its body is
//! compact frames and its END a short one carrying a 128-bit check of the stream: BLAKE3 over
//! the body's bytes and over every page the deltas produce, with its address, in stream order. The spare **resolves** a wire stream into
//! an ordinary stored stream (BEGIN, whole PAGES, ZERO, END) before it validates and persists
//! it, so the image directory, the applier, recovery and resume only ever see whole pages; a
//! delta that does not reproduce the primary's page fails the check and the stream is
//! refused, never applied (wire format 5; format 3 had an 8-byte check per page).
//!
//! The primary keeps a [`Shadow`]: a copy of every page as last sent (what the spare will
//! hold once it has the stream). A copy rather than per-cache-line hashes because a 72-byte
//! SET changes a few dozen bytes in each of ~7 pages: a copy sends those bytes (≈ 0.3 KB per
//! SET), line hashes would send whole 64-byte lines (≈ 0.6 KB, measured in
//! `docs/benchmarks.md`) for an eighth of the memory. The copy costs one page per page ever
//! sent, bounded by [`SHADOW_LIMIT`]; pages beyond it are sent whole.

use super::format::{
    decode_begin, frame_header, validate_begin, Begin, CompactHeader, End, FrameKind, FrameReader,
    RangeEntry, Run, FORMAT_VERSION, PAGES_PER_FRAME,
};
use super::FormatError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};

/// Version of the wire frames (BASED, DELTA, the wire END): 4 since the check moved from each
/// DELTA entry (8 bytes per page) to the END (16 bytes per stream); 5 since the check takes
/// each delta page's own hash instead of the page ([`StreamCheck::page`]). Stored streams stay at
/// [`FORMAT_VERSION`]; a wire stream is never stored, and only travels between peers of one
/// protocol version (`hotspare_proto::codec::VERSION`), so a BASED header of another version is
/// a bug, refused with one line.
pub const WIRE_FORMAT_VERSION: u32 = 5;

/// Bytes of the check a wire stream's END carries ([`StreamCheck`]; 128 bits: a stream resolved
/// on a wrong base, or damaged, passes with probability 2^-128, whatever the number of wrong
/// pages or damaged frames).
pub const CHECK_LEN: usize = 16;

/// Most pages the primary keeps a copy of (4 GiB with 4 KiB pages): beyond it, pages that
/// were never copied are sent whole.
pub const SHADOW_LIMIT: usize = 1 << 20;

/// Equal bytes inside a changed run that are sent anyway rather than starting a new run (a
/// run costs at least two bytes of header).
const MERGE_GAP: usize = 2;

/// Most entries in one DELTA frame (the same bound as pages in a PAGES frame).
pub const DELTAS_PER_FRAME: usize = PAGES_PER_FRAME;

/// The check of a wire stream: the first [`CHECK_LEN`] bytes of
/// `BLAKE3(BLAKE3(body) ‖ BLAKE3(pages))`, where `body` is every byte of the body before the
/// END (compact headers and payloads) and `pages` is, for each DELTA entry in stream order, its
/// page's address (u64 LE) followed by the BLAKE3 hash (32 bytes) of the whole page it produces
/// (wire format 5; format 4 hashed the page itself there). The first stands in for the
/// per-frame CRCs a body does not have (damage anywhere in it), the second for the per-page
/// checks of format 3 (a delta applied on another base than the primary's).
#[derive(Debug, Default, Clone)]
pub struct StreamCheck {
    body: blake3::Hasher,
    pages: blake3::Hasher,
}

impl StreamCheck {
    /// The next bytes of the body.
    pub fn body(&mut self, bytes: &[u8]) {
        self.body.update(bytes);
    }

    /// The next page a delta produces: its address and its own BLAKE3 hash go into the pages'
    /// hash (hashed alone, the page's chunks are compressed side by side, ~2.5× faster than
    /// streaming it after an 8-byte address that puts every chunk off its boundary: the
    /// BLAKE3 of the delta pages was half the primary's writer thread, wire format 4).
    pub fn page(&mut self, addr: u64, page: &[u8]) {
        self.pages.update(&addr.to_le_bytes());
        self.pages.update(blake3::hash(page).as_bytes());
    }

    /// The check.
    pub fn finish(&self) -> [u8; CHECK_LEN] {
        let mut h = blake3::Hasher::new();
        h.update(self.body.finalize().as_bytes());
        h.update(self.pages.finalize().as_bytes());
        let mut c = [0u8; CHECK_LEN];
        c.copy_from_slice(&h.finalize().as_bytes()[..CHECK_LEN]);
        c
    }
}

/// The END of a wire stream (a compact frame, like every frame of its body): the counts of
/// a stored END (`page_frames`, `pages`: the body's frames and their pages, a DELTA frame
/// counting its entries) as varints and the [`StreamCheck`], which covers what a stored END's
/// CRC32C digest and the frames' CRCs covered. 19 to 46 bytes of payload, instead of a stored
/// END's 16-byte header and 32-byte payload and 8 bytes of check per delta page (format 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireEnd {
    /// Must equal the BASED header's.
    pub seq: u64,
    /// PAGES, ZERO and DELTA frames.
    pub page_frames: u64,
    /// Pages in them.
    pub pages: u64,
    /// The [`StreamCheck`].
    pub check: [u8; CHECK_LEN],
}

impl WireEnd {
    /// The payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(40);
        put_varint(&mut b, self.seq);
        put_varint(&mut b, self.page_frames);
        put_varint(&mut b, self.pages);
        b.extend_from_slice(&self.check);
        b
    }

    fn decode(p: &[u8], offset: u64) -> Result<WireEnd, FormatError> {
        let bad = || FormatError::Malformed {
            offset,
            what: "wire END payload".into(),
        };
        let mut at = 0;
        let seq = get_varint(p, &mut at).ok_or_else(bad)?;
        let page_frames = get_varint(p, &mut at).ok_or_else(bad)?;
        let pages = get_varint(p, &mut at).ok_or_else(bad)?;
        if p.len() != at + CHECK_LEN {
            return Err(bad());
        }
        Ok(WireEnd {
            seq,
            page_frames,
            pages,
            check: p[at..].try_into().expect("CHECK_LEN bytes"),
        })
    }
}

/// The BASED frame's payload: a BEGIN that states only what differs from its base's. Lineage,
/// executable and page size are the base's; `ranges` and `meta` are the base's when `None`
/// (ranges then with `complete` false).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Based {
    /// [`WIRE_FORMAT_VERSION`] (read first, alone, like BEGIN's).
    pub format_version: u32,
    /// Fencing term.
    pub term: u64,
    /// This checkpoint's sequence number.
    pub seq: u64,
    /// The base: must be the sequence of the BEGIN it is resolved against (never 0).
    pub base_seq: u64,
    /// The ranges, when they differ from the base's.
    pub ranges: Option<Vec<RangeEntry>>,
    /// The metadata, when it differs from the base's.
    pub meta: Option<Vec<u8>>,
}

impl Based {
    /// The whole BEGIN this stands for on top of `base`, validated.
    pub fn resolve(self, base: &Begin, offset: u64) -> Result<Begin, FormatError> {
        if self.base_seq != base.seq {
            return Err(FormatError::Base {
                offset,
                what: format!(
                    "checkpoint {} is a delta on {}, but the base here is {}",
                    self.seq, self.base_seq, base.seq
                ),
            });
        }
        let ranges = self.ranges.unwrap_or_else(|| {
            base.ranges
                .iter()
                .map(|r| RangeEntry {
                    complete: false,
                    ..*r
                })
                .collect()
        });
        let b = Begin {
            format_version: FORMAT_VERSION,
            lineage: base.lineage,
            term: self.term,
            seq: self.seq,
            base_seq: self.base_seq,
            exe_id: base.exe_id,
            page_size: base.page_size,
            ranges,
            meta: self.meta.unwrap_or_else(|| base.meta.clone()),
        };
        validate_begin(&b).map_err(|e| match e {
            FormatError::InvalidBegin { what, .. } => FormatError::InvalidBegin { offset, what },
            other => other,
        })?;
        Ok(b)
    }
}

fn decode_based(payload: &[u8], offset: u64) -> Result<Based, FormatError> {
    let malformed = |e: postcard::Error| FormatError::Malformed {
        offset,
        what: format!("BASED: {e}"),
    };
    let (version, _) = postcard::take_from_bytes::<u32>(payload).map_err(malformed)?;
    if version != WIRE_FORMAT_VERSION {
        return Err(FormatError::Version {
            found: version,
            supported: WIRE_FORMAT_VERSION,
        });
    }
    let b: Based = postcard::from_bytes(payload).map_err(malformed)?;
    if b.base_seq == 0 {
        return Err(FormatError::Malformed {
            offset,
            what: "BASED header of a full checkpoint (base 0)".into(),
        });
    }
    Ok(b)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A LEB128 varint at `*at`, at most 10 bytes and fitting u64; `None` if truncated or too long.
fn get_varint(p: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *p.get(*at)?;
        *at += 1;
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Lengths of runs that fit the run header's token with their skip (1 ..= 7).
const SHORT_RUN: u64 = 7;

/// A run's header: one varint `token = skip << 3 | l` with `l = len - 1` for a run of 1 to 7
/// bytes, else `l = 7` and a second varint `len - 8`. The common run — a few bytes a few bytes
/// after the previous one, a counter or a pointer in the next word — costs one byte instead of
/// the two of `skip, len` (wire format 3).
fn put_run_header(out: &mut Vec<u8>, skip: u64, len: u64) {
    debug_assert!(len >= 1);
    if len <= SHORT_RUN {
        put_varint(out, skip << 3 | (len - 1));
    } else {
        put_varint(out, skip << 3 | SHORT_RUN);
        put_varint(out, len - (SHORT_RUN + 1));
    }
}

/// A run header at `*at`: `(skip, len)`, `None` if truncated, too long or overflowing.
fn get_run_header(p: &[u8], at: &mut usize) -> Option<(u64, u64)> {
    let token = get_varint(p, at)?;
    let (skip, l) = (token >> 3, token & 7);
    let len = if l < SHORT_RUN {
        l + 1
    } else {
        get_varint(p, at)?.checked_add(SHORT_RUN + 1)?
    };
    Some((skip, len))
}

/// Appends to `out` the changed runs of `new` against `old` (equal length): a run header
/// ([`put_run_header`]: `skip` counted from the end of the previous run, and the length) and
/// the bytes, per run. Returns the number of runs (0: the pages are equal).
fn diff_runs(old: &[u8], new: &[u8], out: &mut Vec<u8>) -> usize {
    let n = new.len();
    let (mut i, mut prev_end, mut runs) = (0usize, 0usize, 0usize);
    while i < n {
        if i % 8 == 0 && i + 8 <= n && old[i..i + 8] == new[i..i + 8] {
            i += 8;
            continue;
        }
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        let start = i;
        let mut last = i;
        let mut j = i + 1;
        while j < n && j <= last + MERGE_GAP + 1 {
            if old[j] != new[j] {
                last = j;
            }
            j += 1;
        }
        let end = last + 1;
        put_run_header(out, (start - prev_end) as u64, (end - start) as u64);
        out.extend_from_slice(&new[start..end]);
        runs += 1;
        prev_end = end;
        i = end;
    }
    runs
}

/// What the primary's delta encoding did, for figures (`HOTSPARE_DELTA_STATS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Streams encoded.
    pub streams: u64,
    /// Streams that started with a BASED header.
    pub based: u64,
    /// Pages sent whole (no copy of them, a full checkpoint, or a fresh range).
    pub whole_pages: u64,
    /// Pages sent as deltas.
    pub delta_pages: u64,
    /// Dirty pages equal to what the spare holds: not sent at all.
    pub unchanged_pages: u64,
    /// Payload bytes of the delta entries.
    pub delta_bytes: u64,
    /// 64-byte lines that differ in the delta pages (what per-line hashes would have sent).
    pub changed_lines: u64,
    /// Bytes of the encoded streams.
    pub stream_bytes: u64,
}

/// The primary's copy of every page as last sent to the spare, and the BEGIN of the last
/// stream encoded: what an incremental stream is a delta against. Valid only along one chain
/// of streams; [`Shadow::reset`] when a stream was sent that it did not see (a Fork capture),
/// and every full stream starts it afresh.
#[derive(Debug)]
pub struct Shadow {
    pages: HashMap<u64, Box<[u8]>>,
    /// Pages the spare holds as zeros (sent as ZERO runs, never written since) that are not
    /// in `pages`: `start → end`, disjoint. A page of a fresh heap written for the first time
    /// is then a delta against zeros, not a whole page.
    zeros: BTreeMap<u64, u64>,
    last: Option<Begin>,
    limit: usize,
    /// Counters since the start.
    pub stats: WireStats,
}

impl Default for Shadow {
    fn default() -> Self {
        Shadow::new(SHADOW_LIMIT)
    }
}

/// A DELTA frame being built.
struct DeltaFrame {
    payload: Vec<u8>,
    first: bool,
    prev_page: u64,
    entries: usize,
}

/// Frames written and the END's tally.
struct Out<'a> {
    w: &'a mut Vec<u8>,
    end: End,
    check: StreamCheck,
    /// A wire stream's body: compact frame headers, and the check over every byte of it.
    compact: bool,
}

impl Out<'_> {
    fn frame(&mut self, kind: FrameKind, parts: &[&[u8]], pages: u64) {
        if self.compact {
            let len = parts.iter().map(|p| p.len()).sum();
            let h = CompactHeader::new(kind, len);
            self.w.extend_from_slice(h.as_bytes());
            self.check.body(h.as_bytes());
            for p in parts {
                self.w.extend_from_slice(p);
                self.check.body(p);
            }
        } else {
            self.w.extend_from_slice(&frame_header(kind, parts));
            for p in parts {
                self.w.extend_from_slice(p);
                self.end.digest = crc32c::crc32c_append(self.end.digest, p);
            }
        }
        self.end.page_frames += 1;
        self.end.pages += pages;
    }
}

impl Shadow {
    /// A shadow holding at most `limit` pages.
    pub fn new(limit: usize) -> Shadow {
        Shadow {
            pages: HashMap::new(),
            zeros: BTreeMap::new(),
            last: None,
            limit,
            stats: WireStats::default(),
        }
    }

    /// Forgets everything: the next stream's pages go whole until they are copied again.
    pub fn reset(&mut self) {
        self.pages.clear();
        self.zeros.clear();
        self.last = None;
    }

    /// Whether the spare holds the page at `addr` as zeros.
    fn is_zero(&self, addr: u64) -> bool {
        self.zeros
            .range(..=addr)
            .next_back()
            .is_some_and(|(_, &end)| addr < end)
    }

    /// `addr..addr + len` is no longer known to be zeros.
    fn unzero(&mut self, addr: u64, len: u64) {
        let end = addr + len;
        let hit: Vec<(u64, u64)> = self
            .zeros
            .range(..end)
            .rev()
            .take_while(|(_, &e)| e > addr)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.zeros.remove(&s);
            if s < addr {
                self.zeros.insert(s, addr);
            }
            if e > end {
                self.zeros.insert(end, e);
            }
        }
    }

    /// Notes `new` as what the spare holds at `addr` (a copy if there is room, else the page
    /// is forgotten: sent whole next time).
    fn remember(&mut self, addr: u64, new: &[u8], page: usize) {
        if let Some(old) = self.pages.get_mut(&addr) {
            old.copy_from_slice(new);
        } else if self.pages.len() < self.limit {
            self.pages.insert(addr, new.into());
        } else {
            self.unzero(addr, page as u64);
        }
    }

    /// Pages held.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Bytes of memory the copies take (page bytes plus the map's entries, approximately).
    pub fn memory_bytes(&self) -> usize {
        let page = self.last.as_ref().map_or(4096, |b| b.page_size as usize);
        self.pages.capacity() * (8 + 16 + 1) + self.pages.len() * page
    }

    /// Encodes a wire stream for `begin` and `runs` into `out` (appended), as deltas against
    /// what the spare holds where possible, and remembers what it sent. Returns the END.
    pub fn encode<'a>(
        &mut self,
        out: &mut Vec<u8>,
        begin: &Begin,
        runs: impl IntoIterator<Item = Run<'a>>,
    ) -> End {
        let start = out.len();
        let page = begin.page_size as usize;
        let full = begin.is_full();
        if full {
            self.pages.clear();
            self.zeros.clear();
        }
        let based = !full
            && self.last.as_ref().is_some_and(|l| {
                l.seq == begin.base_seq
                    && l.lineage == begin.lineage
                    && l.exe_id == begin.exe_id
                    && l.page_size == begin.page_size
            });
        if !based {
            // No chain this shadow knows of: no page of it may be a delta.
            self.pages.clear();
            self.zeros.clear();
        }
        let mut o = Out {
            w: out,
            end: End {
                seq: begin.seq,
                ..End::default()
            },
            check: StreamCheck::default(),
            compact: based,
        };
        if based {
            let last = self.last.as_ref().expect("checked");
            let same_ranges = begin.ranges.len() == last.ranges.len()
                && begin
                    .ranges
                    .iter()
                    .zip(&last.ranges)
                    .all(|(a, b)| !a.complete && a.addr == b.addr && a.len == b.len);
            let h = Based {
                format_version: WIRE_FORMAT_VERSION,
                term: begin.term,
                seq: begin.seq,
                base_seq: begin.base_seq,
                ranges: (!same_ranges).then(|| begin.ranges.clone()),
                meta: (begin.meta != last.meta).then(|| begin.meta.clone()),
            };
            let payload = postcard::to_allocvec(&h).expect("postcard serialises plain data");
            o.w.extend_from_slice(&frame_header(FrameKind::Based, &[&payload]));
            o.w.extend_from_slice(&payload);
            self.stats.based += 1;
        } else {
            o.w.extend_from_slice(&super::format::encode_begin(begin));
        }
        // Pages of a range carried whole (full, or new) are never deltas.
        let whole_range = |addr: u64| {
            full || begin
                .ranges
                .iter()
                .any(|r| r.complete && addr >= r.addr && addr - r.addr < r.len)
        };
        let mut delta = DeltaFrame {
            payload: Vec::new(),
            first: true,
            prev_page: 0,
            entries: 0,
        };
        // A run of whole pages being gathered: (address, bytes).
        let mut whole: Option<(u64, Vec<u8>)> = None;
        let mut scratch = Vec::with_capacity(page);
        let zero_page = vec![0u8; page];
        for run in runs {
            match run {
                Run::Zero(addr, len) => {
                    flush_whole(&mut o, &mut whole, page);
                    if len / page as u64 > self.pages.len() as u64 {
                        self.pages.retain(|a, _| *a < addr || *a >= addr + len);
                    } else {
                        let mut a = addr;
                        while a < addr + len {
                            self.pages.remove(&a);
                            a += page as u64;
                        }
                    }
                    self.unzero(addr, len);
                    self.zeros.insert(addr, addr + len);
                    let (a, l) = (addr.to_le_bytes(), len.to_le_bytes());
                    o.frame(FrameKind::Zero, &[&a, &l], len / page as u64);
                }
                Run::Data(addr, bytes) => {
                    for (i, new) in bytes.chunks(page).enumerate() {
                        let a = addr + (i * page) as u64;
                        let known = based && !whole_range(a);
                        let old: &[u8] = match self.pages.get(&a) {
                            Some(o) if known => o,
                            _ if known && self.is_zero(a) => &zero_page,
                            _ => {
                                self.stats.whole_pages += 1;
                                match &mut whole {
                                    Some((wa, wb))
                                        if *wa + wb.len() as u64 == a
                                            && wb.len() < PAGES_PER_FRAME * page => {}
                                    _ => {
                                        flush_whole(&mut o, &mut whole, page);
                                        whole = Some((a, Vec::with_capacity(page)));
                                    }
                                }
                                whole.as_mut().expect("set").1.extend_from_slice(new);
                                self.remember(a, new, page);
                                continue;
                            }
                        };
                        scratch.clear();
                        let runs = diff_runs(old, new, &mut scratch);
                        if runs == 0 {
                            self.stats.unchanged_pages += 1;
                            continue;
                        }
                        self.stats.changed_lines += old
                            .chunks(64)
                            .zip(new.chunks(64))
                            .filter(|(x, y)| x != y)
                            .count() as u64;
                        self.remember(a, new, page);
                        let p = a / page as u64;
                        // A frame's pages increase: a page at or below the previous one (runs
                        // come range by range in registration order, not address order)
                        // starts a new frame, whose first entry carries its address whole.
                        if delta.entries == DELTAS_PER_FRAME
                            || (!delta.first && p <= delta.prev_page)
                        {
                            flush_delta(&mut o, &mut delta);
                        }
                        let before = delta.payload.len();
                        if delta.first {
                            delta.payload.extend_from_slice(&a.to_le_bytes());
                            delta.first = false;
                            put_varint(&mut delta.payload, 0);
                        } else {
                            put_varint(&mut delta.payload, p - delta.prev_page);
                        }
                        delta.prev_page = p;
                        o.check.page(a, new);
                        put_varint(&mut delta.payload, runs as u64);
                        delta.payload.extend_from_slice(&scratch);
                        delta.entries += 1;
                        self.stats.delta_pages += 1;
                        self.stats.delta_bytes += (delta.payload.len() - before) as u64;
                    }
                }
            }
        }
        flush_whole(&mut o, &mut whole, page);
        flush_delta(&mut o, &mut delta);
        if based {
            let e = WireEnd {
                seq: o.end.seq,
                page_frames: o.end.page_frames,
                pages: o.end.pages,
                check: o.check.finish(),
            }
            .encode();
            o.w.extend_from_slice(CompactHeader::new(FrameKind::End, e.len()).as_bytes());
            o.w.extend_from_slice(&e);
        } else {
            let e = o.end.encode();
            o.w.extend_from_slice(&frame_header(FrameKind::End, &[&e]));
            o.w.extend_from_slice(&e);
        }
        let end = o.end;
        self.stats.streams += 1;
        self.stats.stream_bytes += (out.len() - start) as u64;
        self.last = Some(begin.clone());
        end
    }
}

fn flush_whole(o: &mut Out<'_>, whole: &mut Option<(u64, Vec<u8>)>, page: usize) {
    if let Some((a, b)) = whole.take() {
        o.frame(
            FrameKind::Pages,
            &[&a.to_le_bytes(), &b],
            (b.len() / page) as u64,
        );
    }
}

fn flush_delta(o: &mut Out<'_>, d: &mut DeltaFrame) {
    if d.entries > 0 {
        o.frame(FrameKind::Delta, &[&d.payload], d.entries as u64);
    }
    d.payload.clear();
    d.first = true;
    d.entries = 0;
}

/// Where a spare finds the base version of a page: the page as of the checkpoint the stream
/// is a delta on (its durable tip).
pub trait BasePages {
    /// Fills `out` (one page) with the page at `addr` as of the base; an error refuses the
    /// stream.
    fn base_page(&mut self, addr: u64, out: &mut [u8]) -> Result<(), String>;
}

/// What resolving a wire stream found.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The whole BEGIN (the BASED header resolved).
    pub begin: Begin,
    /// Pages that came as deltas.
    pub delta_pages: u64,
    /// Bytes of the wire stream.
    pub wire_bytes: u64,
}

/// Whether `stream` starts with a BASED frame, i.e. must be [`resolve_stream`]ed before it is
/// stored (a stream starting with BEGIN is stored as it is, and may not hold DELTA frames).
pub fn is_wire_stream(first_bytes: &[u8]) -> bool {
    first_bytes.len() > 4 && first_bytes[..4] == super::format::MAGIC && {
        first_bytes[4] == FrameKind::Based as u8
    }
}

/// Turns a wire stream read from `r` into a stored stream written to `out`: BEGIN (the BASED
/// header resolved on `base`, the BEGIN of the checkpoint it names as its base), whole PAGES
/// (each DELTA applied to the page `pages` gives for its address, and checked against the
/// primary's hash of the page), ZERO and END. Everything the stored-stream reader checks is
/// checked here too for the wire frames (CRCs, bounds, END counts and digest over the wire
/// payloads); `each` sees every resolved run. Nothing written to `out` may be used unless
/// this returns `Ok`.
pub fn resolve_stream<R: Read, W: Write>(
    r: R,
    base: Option<&Begin>,
    pages: &mut impl BasePages,
    out: &mut W,
    mut each: impl FnMut(Run<'_>),
) -> Result<Resolved, FormatError> {
    let mut fr = FrameReader::new(r);
    let first = fr
        .next_frame()?
        .ok_or(FormatError::Truncated { offset: 0 })?;
    let begin = match first.kind {
        FrameKind::Begin => decode_begin(&first.payload, 0)?,
        FrameKind::Based => {
            let based = decode_based(&first.payload, 0)?;
            let base = base.ok_or_else(|| FormatError::Base {
                offset: 0,
                what: format!(
                    "checkpoint {} is a delta on {}, but no base checkpoint is known here",
                    based.seq, based.base_seq
                ),
            })?;
            based.resolve(base, 0)?
        }
        _ => {
            return Err(FormatError::Malformed {
                offset: 0,
                what: "stream does not start with BEGIN or BASED".into(),
            })
        }
    };
    let delta_ok = first.kind == FrameKind::Based;
    let page = begin.page_size as usize;
    let pagew = page as u64;
    let wrt = |e: std::io::Error| FormatError::Output { source: e };
    let mut stored = End {
        seq: begin.seq,
        ..End::default()
    };
    let mut put = |out: &mut W, kind: FrameKind, parts: &[&[u8]], n: u64| {
        out.write_all(&frame_header(kind, parts)).map_err(wrt)?;
        for p in parts {
            out.write_all(p).map_err(wrt)?;
            stored.digest = crc32c::crc32c_append(stored.digest, p);
        }
        stored.page_frames += 1;
        stored.pages += n;
        Ok::<(), FormatError>(())
    };
    let begin_frame = super::format::encode_begin(&begin);
    out.write_all(&begin_frame).map_err(wrt)?;
    let inside = |addr: u64, len: u64, incremental_only: bool| {
        begin.ranges.iter().any(|r| {
            addr >= r.addr
                && addr.checked_add(len).is_some_and(|e| e <= r.addr + r.len)
                && !(incremental_only && r.complete)
        })
    };
    let (mut frames, mut npages, mut digest) = (0u64, 0u64, 0u32);
    let mut check = StreamCheck::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut delta_pages = 0u64;
    let mut basebuf = vec![0u8; page];
    // The body of a wire stream is compact frames, covered by the check of its END (headers
    // included); a stored stream's frames each carry their CRC, its digest their payloads.
    let compact = delta_ok;
    loop {
        let next = if compact {
            fr.next_compact_frame()?.map(|(f, h)| {
                if f.kind != FrameKind::End {
                    check.body(h.as_bytes());
                    check.body(&f.payload);
                }
                f
            })
        } else {
            fr.next_frame()?
        };
        let f = next.ok_or(FormatError::Truncated {
            offset: fr_offset(&fr),
        })?;
        let bad = |what: String| FormatError::Malformed {
            offset: f.offset,
            what,
        };
        match f.kind {
            FrameKind::Begin | FrameKind::Based => return Err(bad("second BEGIN".into())),
            FrameKind::Pages | FrameKind::Zero => {
                if f.payload.len() < 8 || (f.kind == FrameKind::Zero && f.payload.len() != 16) {
                    return Err(bad(format!("short {:?} frame", f.kind)));
                }
                let addr = u64::from_le_bytes(f.payload[..8].try_into().expect("8 bytes"));
                let len = if f.kind == FrameKind::Zero {
                    u64::from_le_bytes(f.payload[8..16].try_into().expect("8 bytes"))
                } else {
                    (f.payload.len() - 8) as u64
                };
                if len == 0
                    || !len.is_multiple_of(pagew)
                    || !addr.is_multiple_of(pagew)
                    || !inside(addr, len, false)
                {
                    return Err(bad(format!(
                        "page run {addr:#x}+{len:#x} is not whole pages inside a listed range"
                    )));
                }
                // The digest of the frames read: a stored END's; a wire stream's END has
                // the check instead (covering the body), so it is not computed for one.
                if !compact {
                    digest = crc32c::crc32c_append(digest, &f.payload);
                }
                frames += 1;
                npages += len / pagew;
                put(out, f.kind, &[&f.payload], len / pagew)?;
                each(if f.kind == FrameKind::Zero {
                    Run::Zero(addr, len)
                } else {
                    Run::Data(addr, &f.payload[8..])
                });
            }
            FrameKind::Delta => {
                if !delta_ok {
                    return Err(bad("DELTA frame in a stream that starts with BEGIN".into()));
                }
                let p = &f.payload;
                if p.len() < 8 {
                    return Err(bad("short DELTA frame".into()));
                }
                let mut addr = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
                if !addr.is_multiple_of(pagew) {
                    return Err(bad(format!("DELTA at {addr:#x} is not page-aligned")));
                }
                let mut at = 8usize;
                let mut entries = 0u64;
                // Contiguous resolved pages, written as one PAGES frame.
                let mut run_addr = 0u64;
                let mut run: Vec<u8> = Vec::new();
                while at < p.len() {
                    let gap = get_varint(p, &mut at)
                        .ok_or_else(|| bad(format!("DELTA entry {entries}: bad page gap")))?;
                    if (entries == 0) != (gap == 0) {
                        return Err(bad(format!(
                            "DELTA entry {entries}: page gap {gap} (pages must increase)"
                        )));
                    }
                    addr = gap
                        .checked_mul(pagew)
                        .and_then(|g| addr.checked_add(g))
                        .ok_or_else(|| bad(format!("DELTA entry {entries}: address overflows")))?;
                    if !inside(addr, pagew, true) {
                        return Err(bad(format!(
                            "DELTA page {addr:#x} is not inside a listed range carried incrementally"
                        )));
                    }
                    if !seen.insert(addr) {
                        return Err(bad(format!("DELTA page {addr:#x} appears twice")));
                    }
                    let nruns = get_varint(p, &mut at)
                        .ok_or_else(|| bad(format!("DELTA entry {entries}: bad run count")))?;
                    if nruns == 0 || nruns > pagew {
                        return Err(bad(format!("DELTA entry {entries}: {nruns} runs")));
                    }
                    pages
                        .base_page(addr, &mut basebuf)
                        .map_err(|what| FormatError::Base {
                            offset: f.offset,
                            what: format!("base of page {addr:#x}: {what}"),
                        })?;
                    let mut cursor = 0u64;
                    for _ in 0..nruns {
                        let Some((skip, len)) = get_run_header(p, &mut at) else {
                            return Err(bad(format!("DELTA entry {entries}: bad run header")));
                        };
                        let s = cursor.checked_add(skip).filter(|s| *s < pagew);
                        let e = s.and_then(|s| s.checked_add(len)).filter(|e| *e <= pagew);
                        let (Some(s), Some(e)) = (s, e) else {
                            return Err(bad(format!(
                                "DELTA entry {entries}: run {skip}+{len} after byte {cursor} leaves the page"
                            )));
                        };
                        if len == 0 {
                            return Err(bad(format!("DELTA entry {entries}: empty run")));
                        }
                        let bytes = p
                            .get(at..at + len as usize)
                            .ok_or_else(|| bad(format!("DELTA entry {entries}: truncated run")))?;
                        basebuf[s as usize..e as usize].copy_from_slice(bytes);
                        at += len as usize;
                        cursor = e;
                    }
                    check.page(addr, &basebuf);
                    entries += 1;
                    if !run.is_empty()
                        && (run_addr + run.len() as u64 != addr
                            || run.len() >= PAGES_PER_FRAME * page)
                    {
                        put(
                            out,
                            FrameKind::Pages,
                            &[&run_addr.to_le_bytes(), &run],
                            (run.len() / page) as u64,
                        )?;
                        each(Run::Data(run_addr, &run));
                        run.clear();
                    }
                    if run.is_empty() {
                        run_addr = addr;
                    }
                    run.extend_from_slice(&basebuf);
                }
                if entries == 0 {
                    return Err(bad("empty DELTA frame".into()));
                }
                if !run.is_empty() {
                    put(
                        out,
                        FrameKind::Pages,
                        &[&run_addr.to_le_bytes(), &run],
                        (run.len() / page) as u64,
                    )?;
                    each(Run::Data(run_addr, &run));
                }
                if !compact {
                    digest = crc32c::crc32c_append(digest, p);
                }
                frames += 1;
                npages += entries;
                delta_pages += entries;
            }
            FrameKind::End => {
                let counts = End {
                    seq: begin.seq,
                    page_frames: frames,
                    pages: npages,
                    digest,
                };
                let (end, ours) = if compact {
                    let e = WireEnd::decode(&f.payload, f.offset)?;
                    let said = End {
                        seq: e.seq,
                        page_frames: e.page_frames,
                        pages: e.pages,
                        digest: 0,
                    };
                    let counts = End {
                        digest: 0,
                        ..counts
                    };
                    // Counts first: a stream cut short or padded is malformed, whatever its
                    // deltas gave.
                    if said == counts && e.check != check.finish() {
                        return Err(FormatError::DeltaCheck {
                            offset: f.offset,
                            pages: delta_pages,
                        });
                    }
                    (said, counts)
                } else {
                    (End::decode(&f.payload, f.offset)?, counts)
                };
                if end != ours {
                    return Err(FormatError::Malformed {
                        offset: f.offset,
                        what: format!("END says {end:?}, stream has {ours:?}"),
                    });
                }
                let wire_bytes = fr_offset(&fr);
                let more = if compact {
                    fr.next_compact_frame()?.is_some()
                } else {
                    fr.next_frame()?.is_some()
                };
                if more {
                    return Err(FormatError::Malformed {
                        offset: wire_bytes,
                        what: "data after END".into(),
                    });
                }
                let e = stored.encode();
                out.write_all(&frame_header(FrameKind::End, &[&e]))
                    .map_err(wrt)?;
                out.write_all(&e).map_err(wrt)?;
                return Ok(Resolved {
                    begin,
                    delta_pages,
                    wire_bytes,
                });
            }
        }
    }
}

fn fr_offset<R: Read>(fr: &FrameReader<R>) -> u64 {
    fr.offset()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::scan_stream;

    const PAGE: usize = 4096;
    const ADDR: u64 = 0x7000_0000_0000;
    const NPAGES: usize = 8;

    fn begin(seq: u64, base_seq: u64, meta: &[u8]) -> Begin {
        Begin {
            format_version: FORMAT_VERSION,
            lineage: [0x11; 16],
            term: 1,
            seq,
            base_seq,
            exe_id: [7; 32],
            page_size: PAGE as u32,
            ranges: vec![RangeEntry {
                addr: ADDR,
                len: (NPAGES * PAGE) as u64,
                complete: base_seq == 0,
            }],
            meta: meta.to_vec(),
        }
    }

    /// The spare's pages, as a plain copy of memory.
    struct Mem(Vec<u8>);

    impl BasePages for Mem {
        fn base_page(&mut self, addr: u64, out: &mut [u8]) -> Result<(), String> {
            let off = addr
                .checked_sub(ADDR)
                .filter(|o| (*o as usize) < self.0.len())
                .ok_or("outside")? as usize;
            out.copy_from_slice(&self.0[off..off + PAGE]);
            Ok(())
        }
    }

    /// Resolves `wire` on `base` and applies the stored stream to a copy of `spare`.
    fn resolve_on(wire: &[u8], base: &Begin, spare: &[u8]) -> Result<(Vec<u8>, Begin), String> {
        let mut out = Vec::new();
        let r = resolve_stream(wire, Some(base), &mut Mem(spare.to_vec()), &mut out, |_| {})
            .map_err(|e| e.to_string())?;
        let mut mem = spare.to_vec();
        let s = scan_stream(out.as_slice(), |run| {
            if let Run::Data(a, d) = run {
                let o = (a - ADDR) as usize;
                mem[o..o + d.len()].copy_from_slice(d);
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        assert_eq!(s.begin, r.begin);
        Ok((mem, r.begin))
    }

    fn full(sh: &mut Shadow, mem: &[u8]) -> (Vec<u8>, Begin) {
        let b = begin(1, 0, b"meta");
        let mut wire = Vec::new();
        sh.encode(&mut wire, &b, [Run::Data(ADDR, mem)]);
        assert!(!is_wire_stream(&wire), "a full stream is a stored stream");
        (wire, b)
    }

    /// Guards against deltas that lose or misplace bytes: a few bytes changed in some pages
    /// (at page edges too) travel as deltas far smaller than the pages, and the spare's
    /// resolved pages equal the primary's.
    #[test]
    fn deltas_reproduce_the_pages_and_are_small() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut mem: Vec<u8> = (0..NPAGES * PAGE).map(|_| rng.u8(..)).collect();
        let mut sh = Shadow::new(1 << 10);
        let (_, b1) = full(&mut sh, &mem);
        let spare = mem.clone();
        // Dirty pages 0, 3, 7: a few bytes each, first and last bytes of a page included;
        // page 5 "dirty" but rewritten with the same bytes.
        mem[0] ^= 1;
        mem[3 * PAGE + 100..3 * PAGE + 172].fill(b'x');
        mem[3 * PAGE + 175] ^= 0xff;
        mem[8 * PAGE - 1] ^= 0x80;
        let b2 = begin(2, 1, b"meta");
        let mut wire = Vec::new();
        let runs = [
            Run::Data(ADDR, &mem[..PAGE]),
            Run::Data(ADDR + 3 * PAGE as u64, &mem[3 * PAGE..4 * PAGE]),
            Run::Data(ADDR + 5 * PAGE as u64, &mem[5 * PAGE..6 * PAGE]),
            Run::Data(ADDR + 7 * PAGE as u64, &mem[7 * PAGE..]),
        ];
        sh.encode(&mut wire, &b2, runs);
        assert!(is_wire_stream(&wire));
        assert!(wire.len() < 300, "{} bytes on the wire", wire.len());
        assert_eq!(sh.stats.delta_pages, 3);
        assert_eq!(sh.stats.unchanged_pages, 1);
        let (got, rb) = resolve_on(&wire, &b1, &spare).expect("resolves");
        assert_eq!(got, mem);
        assert_eq!(rb.meta, b"meta", "unchanged metadata comes from the base");
        assert!(rb.ranges.iter().all(|r| !r.complete));
        // Changed metadata travels; a second delta chains on the first.
        mem[2 * PAGE + 9] = mem[2 * PAGE + 9].wrapping_add(1);
        let b3 = begin(3, 2, b"other meta");
        let mut wire3 = Vec::new();
        sh.encode(
            &mut wire3,
            &b3,
            [Run::Data(ADDR + 2 * PAGE as u64, &mem[2 * PAGE..3 * PAGE])],
        );
        let (got3, rb3) = resolve_on(&wire3, &rb, &got).expect("resolves");
        assert_eq!(got3, mem);
        assert_eq!(rb3.meta, b"other meta");
    }

    /// Guards against pages of a fresh (pristine) heap going whole when first written: the
    /// spare holds them as zeros (a ZERO run), so they travel as deltas against zeros; a page
    /// the shadow has no room for is forgotten, never taken for zeros.
    #[test]
    fn first_writes_to_zero_pages_are_deltas_against_zeros() {
        let mut mem = vec![0u8; NPAGES * PAGE];
        mem[..PAGE].fill(4);
        let mut sh = Shadow::new(2);
        let b1 = begin(1, 0, b"meta");
        let mut wire = Vec::new();
        let zeros = ((NPAGES - 1) * PAGE) as u64;
        sh.encode(
            &mut wire,
            &b1,
            [
                Run::Data(ADDR, &mem[..PAGE]),
                Run::Zero(ADDR + PAGE as u64, zeros),
            ],
        );
        let spare = mem.clone();
        mem[2 * PAGE + 50..2 * PAGE + 122].fill(b'k');
        mem[5 * PAGE + 1] = 1;
        let mut wire = Vec::new();
        let runs = [
            Run::Data(ADDR + 2 * PAGE as u64, &mem[2 * PAGE..3 * PAGE]),
            Run::Data(ADDR + 5 * PAGE as u64, &mem[5 * PAGE..6 * PAGE]),
        ];
        sh.encode(&mut wire, &begin(2, 1, b"meta"), runs);
        assert_eq!((sh.stats.delta_pages, sh.stats.whole_pages), (2, 1));
        assert!(wire.len() < 250, "{}", wire.len());
        let (got, b2) = resolve_on(&wire, &b1, &spare).expect("resolves");
        assert_eq!(got, mem);
        // The shadow is full (2 pages: 0 and 2): page 5 was forgotten, so its next change
        // goes whole, not as a delta against zeros.
        mem[5 * PAGE + 2] = 2;
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &begin(3, 2, b"meta"),
            [Run::Data(ADDR + 5 * PAGE as u64, &mem[5 * PAGE..6 * PAGE])],
        );
        assert_eq!(sh.stats.whole_pages, 2);
        let (got, _) = resolve_on(&wire, &b2, &got).expect("resolves");
        assert_eq!(got, mem);
    }

    /// Guards against a delta applied on a page the primary did not diff against being
    /// accepted: the check over the whole resulting page fails and nothing is resolved.
    #[test]
    fn a_delta_on_another_base_is_refused() {
        let mut mem = vec![5u8; NPAGES * PAGE];
        let mut sh = Shadow::new(1 << 10);
        let (_, b1) = full(&mut sh, &mem);
        let mut spare = mem.clone();
        mem[PAGE + 10] = 9;
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &begin(2, 1, b"meta"),
            [Run::Data(ADDR + PAGE as u64, &mem[PAGE..2 * PAGE])],
        );
        // The spare's page differs in a byte the delta does not cover.
        spare[PAGE + 2000] = 1;
        let err = resolve_on(&wire, &b1, &spare).expect_err("wrong base");
        assert!(err.contains("does not reproduce"), "{err}");
        // A BASED header on a base of another sequence is refused before any page.
        let other = begin(5, 0, b"meta");
        let err = resolve_on(&wire, &other, &spare).expect_err("other base");
        assert!(err.contains("delta on 1"), "{err}");
        // And with no base at all.
        let err = resolve_stream(&wire[..], None, &mut Mem(spare), &mut Vec::new(), |_| {})
            .expect_err("no base")
            .to_string();
        assert!(err.contains("no base"), "{err}");
    }

    /// Guards against the one check per stream (in its END) missing what a check per page
    /// caught: with five delta pages (one of them a first write to a zero page), a base that
    /// differs from the primary's by one byte under any one of them, a byte the delta does not
    /// carry, refuses the whole stream, and so does an END whose check is changed or whose
    /// deltas went with another stream's check; the right bases resolve it.
    #[test]
    fn one_wrong_base_page_among_many_refuses_the_stream() {
        let mut mem = vec![0u8; NPAGES * PAGE];
        for (i, b) in mem[..6 * PAGE].iter_mut().enumerate() {
            *b = (i / 7) as u8;
        }
        let mut sh = Shadow::new(1 << 10);
        let b1 = begin(1, 0, b"meta");
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &b1,
            [
                Run::Data(ADDR, &mem[..6 * PAGE]),
                Run::Zero(ADDR + 6 * PAGE as u64, 2 * PAGE as u64),
            ],
        );
        let spare = mem.clone();
        let dirty = [0usize, 2, 3, 5, 7];
        for &p in &dirty {
            mem[p * PAGE + 100 + p] ^= 0x5a;
            mem[p * PAGE + 3000] = mem[p * PAGE + 3000].wrapping_add(1);
        }
        let runs: Vec<Run<'_>> = dirty
            .iter()
            .map(|&p| Run::Data(ADDR + (p * PAGE) as u64, &mem[p * PAGE..(p + 1) * PAGE]))
            .collect();
        let mut wire = Vec::new();
        sh.encode(&mut wire, &begin(2, 1, b"meta"), runs.clone());
        assert_eq!(sh.stats.delta_pages, dirty.len() as u64);
        let (got, _) = resolve_on(&wire, &b1, &spare).expect("the right bases");
        assert_eq!(got, mem);
        for &p in &dirty {
            let mut wrong = spare.clone();
            wrong[p * PAGE + 2000] ^= 1;
            let err = resolve_on(&wire, &b1, &wrong).expect_err("a wrong base page");
            assert!(err.contains("does not reproduce"), "page {p}: {err}");
        }
        // The END's check changed (CRC repaired): refused.
        let mut w = wire.clone();
        let last = w.len() - 1;
        w[last] ^= 1;
        fix_crcs(&mut w);
        let err = resolve_on(&w, &b1, &spare).expect_err("changed check");
        assert!(err.contains("does not reproduce"), "{err}");
        // The same deltas with the check of another stream of the same counts.
        let mut other = Shadow::new(1 << 10);
        let mut junk = Vec::new();
        other.encode(
            &mut junk,
            &b1,
            [
                Run::Data(ADDR, &spare[..6 * PAGE]),
                Run::Zero(ADDR + 6 * PAGE as u64, 2 * PAGE as u64),
            ],
        );
        let mut mem2 = mem.clone();
        mem2[PAGE * 5 + 100 + 5] ^= 0x01;
        let runs2: Vec<Run<'_>> = dirty
            .iter()
            .map(|&p| Run::Data(ADDR + (p * PAGE) as u64, &mem2[p * PAGE..(p + 1) * PAGE]))
            .collect();
        let mut wire2 = Vec::new();
        other.encode(&mut wire2, &begin(2, 1, b"meta"), runs2);
        assert_eq!(wire2.len(), wire.len());
        let mut w = wire.clone();
        let n = w.len();
        w[n - CHECK_LEN..].copy_from_slice(&wire2[n - CHECK_LEN..]);
        fix_crcs(&mut w);
        let err = resolve_on(&w, &b1, &spare).expect_err("another stream's check");
        assert!(err.contains("does not reproduce"), "{err}");
    }

    /// Guards against a shadow that outlives what the spare has: after a reset (a Fork
    /// capture) or on a stream that does not chain on the last one encoded, pages go whole.
    #[test]
    fn no_delta_without_the_chain() {
        let mut mem = vec![1u8; NPAGES * PAGE];
        let mut sh = Shadow::new(1 << 10);
        full(&mut sh, &mem);
        sh.reset();
        mem[0] = 2;
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &begin(2, 1, b"meta"),
            [Run::Data(ADDR, &mem[..PAGE])],
        );
        assert!(!is_wire_stream(&wire));
        assert_eq!(sh.stats.whole_pages, NPAGES as u64 + 1);
        // Seq 4 on base 3, but the shadow last saw 2.
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &begin(4, 3, b"meta"),
            [Run::Data(ADDR, &mem[..PAGE])],
        );
        assert!(!is_wire_stream(&wire));
        scan_stream(wire.as_slice(), |_| Ok(())).expect("a stored stream");
    }

    /// Guards against the decoder trusting lengths: every truncation and a sweep of single
    /// byte changes of a wire stream (with its CRCs repaired, so the payload checks are
    /// reached) give an error or a stream equal in shape, never a panic or a page that fails
    /// its check.
    #[test]
    fn hostile_delta_frames_are_refused_cleanly() {
        let mut mem = vec![3u8; NPAGES * PAGE];
        let mut sh = Shadow::new(1 << 10);
        let (_, b1) = full(&mut sh, &mem);
        let spare = mem.clone();
        for i in 0..40 {
            mem[i * 97 + 1] = i as u8;
        }
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &begin(2, 1, b"meta"),
            [Run::Data(ADDR, &mem[..PAGE])],
        );
        for cut in 0..wire.len() {
            assert!(resolve_on(&wire[..cut], &b1, &spare).is_err());
        }
        let mut refused = 0;
        for i in 0..wire.len() {
            for x in [1u8, 0x80, 0xff] {
                let mut w = wire.clone();
                w[i] ^= x;
                fix_crcs(&mut w);
                match resolve_on(&w, &b1, &spare) {
                    Ok((got, _)) => assert_eq!(got[..PAGE], mem[..PAGE], "byte {i} ^ {x:#x}"),
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(refused > wire.len(), "{refused}");
    }

    /// Guards against the wire format 5 change (no CRC digest over a wire stream's frames, the
    /// END's check instead): in a wire stream whose body holds a DELTA, a whole PAGES frame (a
    /// page beyond the shadow) and a ZERO run, every change of any one byte after the BASED
    /// frame — a compact header, a payload, the END — is refused, never resolved.
    #[test]
    fn every_damaged_byte_of_a_wire_body_is_refused() {
        let mut mem = vec![0u8; NPAGES * PAGE];
        for (i, b) in mem.iter_mut().enumerate() {
            *b = (i / 11) as u8;
        }
        // Two pages shadowed: the others go whole.
        let mut sh = Shadow::new(2);
        let b1 = begin(1, 0, b"meta");
        let mut wire = Vec::new();
        sh.encode(&mut wire, &b1, [Run::Data(ADDR, &mem)]);
        let spare = mem.clone();
        mem[10] ^= 0x33;
        mem[5 * PAGE + 7] ^= 0x44;
        for b in &mut mem[6 * PAGE..8 * PAGE] {
            *b = 0;
        }
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &begin(2, 1, b"meta"),
            [
                Run::Data(ADDR, &mem[..PAGE]),
                Run::Data(ADDR + 5 * PAGE as u64, &mem[5 * PAGE..6 * PAGE]),
                Run::Zero(ADDR + 6 * PAGE as u64, 2 * PAGE as u64),
            ],
        );
        assert!(is_wire_stream(&wire));
        assert_eq!(
            (sh.stats.delta_pages, sh.stats.whole_pages),
            (1, NPAGES as u64 + 1)
        );
        let (got, _) = resolve_on(&wire, &b1, &spare).expect("the undamaged stream");
        // (`resolve_on` applies data runs only: the ZERO run is not in `got`.)
        assert!(got[..6 * PAGE] == mem[..6 * PAGE], "resolved pages differ");
        let body = 16 + u32::from_le_bytes(wire[8..12].try_into().unwrap()) as usize;
        for i in body..wire.len() {
            for x in [1u8, 0x80, 0xff] {
                let mut w = wire.clone();
                w[i] ^= x;
                assert!(
                    resolve_on(&w, &b1, &spare).is_err(),
                    "byte {i} of {} ^ {x:#x} resolved",
                    wire.len()
                );
            }
        }
    }

    /// Recomputes the BASED frame's CRC of a wire stream (its body has no CRCs; what damage
    /// there gives must be caught by the END's check).
    fn fix_crcs(w: &mut [u8]) {
        if w.len() < 16 {
            return;
        }
        let len = u32::from_le_bytes(w[8..12].try_into().unwrap()) as usize;
        if 16 + len > w.len() {
            return;
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&w[..12]), &w[16..16 + len]);
        w[12..16].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn run_headers_round_trip_and_short_ones_take_a_byte() {
        for skip in [0u64, 1, 7, 15, 16, 127, 4095, u64::MAX >> 3] {
            for len in [1u64, 2, 6, 7, 8, 9, 135, 4096] {
                let mut b = Vec::new();
                put_run_header(&mut b, skip, len);
                let mut at = 0;
                assert_eq!(
                    get_run_header(&b, &mut at),
                    Some((skip, len)),
                    "{skip} {len}"
                );
                assert_eq!(at, b.len());
                if skip < 16 && len <= SHORT_RUN {
                    assert_eq!(b.len(), 1, "{skip} {len}");
                }
            }
        }
        let mut b = Vec::new();
        put_varint(&mut b, 7);
        put_varint(&mut b, u64::MAX);
        assert_eq!(get_run_header(&b, &mut 0), None);
        assert_eq!(get_run_header(&[0x87], &mut 0), None, "truncated long form");
    }

    #[test]
    fn varints_round_trip_and_refuse_overlong() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut at = 0;
            assert_eq!(get_varint(&b, &mut at), Some(v));
            assert_eq!(at, b.len());
        }
        let mut at = 0;
        assert_eq!(get_varint(&[0xff; 11], &mut at), None);
        let mut at = 0;
        assert_eq!(
            get_varint(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
                &mut at
            ),
            None
        );
    }

    /// Guards against deltas that assume the pages come in address order. The capture lists
    /// dirty runs range by range in registration order (kmod-shim keeps its ranges in the order
    /// `add` saw them; `HotSpare::register_range` appends), so a range registered below the
    /// heap comes after it: one DELTA frame then gets a page below the previous one, and the
    /// encoder's gap `p - prev_page` must not wrap (it did: a panic in debug builds, a stream
    /// the spare refuses in release builds, so every such incremental checkpoint failed).
    #[test]
    fn deltas_of_ranges_listed_high_before_low_resolve() {
        let half = (NPAGES / 2 * PAGE) as u64;
        let (lo, hi) = (ADDR, ADDR + half);
        let two = |seq, base_seq| Begin {
            ranges: vec![
                RangeEntry {
                    addr: hi,
                    len: half,
                    complete: base_seq == 0,
                },
                RangeEntry {
                    addr: lo,
                    len: half,
                    complete: base_seq == 0,
                },
            ],
            ..begin(seq, base_seq, b"meta")
        };
        let mut rng = fastrand::Rng::with_seed(11);
        let mut mem: Vec<u8> = (0..NPAGES * PAGE).map(|_| rng.u8(..)).collect();
        let h = half as usize;
        let mut sh = Shadow::new(1 << 10);
        let b1 = two(1, 0);
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &b1,
            [Run::Data(hi, &mem[h..]), Run::Data(lo, &mem[..h])],
        );
        let spare = mem.clone();
        mem[h + 10] ^= 1; // first page of the high range
        mem[PAGE + 20] ^= 1; // second page of the low range
        let mut wire = Vec::new();
        sh.encode(
            &mut wire,
            &two(2, 1),
            [
                Run::Data(hi, &mem[h..h + PAGE]),
                Run::Data(lo + PAGE as u64, &mem[PAGE..2 * PAGE]),
            ],
        );
        assert_eq!(sh.stats.delta_pages, 2);
        let (got, _) = resolve_on(&wire, &b1, &spare).expect("resolves");
        assert_eq!(got, mem);
    }
}
