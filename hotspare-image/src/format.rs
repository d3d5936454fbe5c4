//! The checkpoint stream: framed, little-endian, every frame CRC32C-checked. A file in an image
//! directory and (issue 4) a socket to a spare carry exactly these bytes. `docs/format.md` is the
//! specification; this module is its only implementation.
//!
//! ```text
//! frame   = header(16) payload(len)
//! header  = magic "HSPF" | kind u8 | flags u8 (0) | reserved u16 (0) | len u32 | crc u32
//! crc     = CRC32C(header[0..12] ++ payload)
//! stream  = BEGIN (PAGES | ZERO)* END
//! BEGIN   = postcard(Begin)                        (format version, lineage, term, seq, base, exe, ranges, metadata)
//! PAGES   = addr u64 | bytes (a whole number of pages, at most PAGES_PER_FRAME)
//! ZERO    = addr u64 | len u64 (whole pages that read as zeros: never-touched memory)
//! END     = seq u64 | page_frames u64 | pages u64 | digest u32 | zero u32
//! digest  = CRC32C over the PAGES and ZERO payloads in stream order
//! ```
//!
//! Version 3 adds *wire streams* (`BASED (PAGES | ZERO | DELTA)* END`), which only travel to a
//! spare and are resolved into stored streams there ([`super::delta`]); a stored stream never
//! holds BASED or DELTA frames, and this module's reader refuses them.
//!
//! PAGES and END have fixed layouts so that a `cptfork` child can encode them without
//! allocating (see [`frame_header`]).

use super::FormatError;
use serde::{Deserialize, Serialize};
use std::io::Read;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HSPF";
/// The format version this code writes (3: wire streams may carry BASED and DELTA frames).
pub const FORMAT_VERSION: u32 = 3;
/// The oldest version this code reads: a stored version-2 stream is laid out exactly as a
/// version-3 one (version 3 only added frames that are never stored), so images written
/// before the change still open and resume.
pub const MIN_READ_VERSION: u32 = 2;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 16;
/// Largest page run in one PAGES frame (bounds a reader's buffer to 1 MiB with 4 KiB pages).
pub const PAGES_PER_FRAME: usize = 256;
/// Largest payload a reader accepts (BEGIN carries metadata; PAGES at most 1 MiB + 8).
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// Bytes in an END payload.
pub const END_LEN: usize = 32;
/// Smallest page size a BEGIN may declare.
pub const MIN_PAGE_SIZE: u32 = 4096;
/// Largest page size a BEGIN may declare.
pub const MAX_PAGE_SIZE: u32 = 1 << 20;
/// Most ranges one checkpoint may list (applying a range keeps two files open).
pub const MAX_RANGES: usize = 1024;
/// First address above x86-64 user space: every range must end at or below it.
pub const USER_SPACE_END: u64 = 0x0000_8000_0000_0000;
/// Largest total length of the ranges of one checkpoint (1 TiB).
pub const MAX_TOTAL_LEN: u64 = 1 << 40;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Checkpoint header.
    Begin = 1,
    /// A run of pages.
    Pages = 2,
    /// Checkpoint trailer.
    End = 3,
    /// A run of pages that are all zeros (not sent).
    Zero = 4,
    /// Sub-page deltas against the base checkpoint's pages (wire streams only, `delta.rs`).
    Delta = 5,
    /// A BEGIN stating only what differs from the base's (wire streams only, `delta.rs`).
    Based = 6,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Begin),
            2 => Some(FrameKind::Pages),
            3 => Some(FrameKind::End),
            4 => Some(FrameKind::Zero),
            5 => Some(FrameKind::Delta),
            6 => Some(FrameKind::Based),
            _ => None,
        }
    }
}

/// One registered range as the image knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeEntry {
    /// Address in the program (and on resume).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// All of its pages are in this checkpoint (a new range, or a full checkpoint).
    pub complete: bool,
}

/// The checkpoint header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The program run this checkpoint belongs to: 16 random bytes chosen at a fresh start
    /// and kept by every resume, so that checkpoints of two unrelated runs are never chained.
    pub lineage: [u8; 16],
    /// Fencing term (raised by a spare that takes over; issue 4).
    pub term: u64,
    /// Sequence number of this checkpoint, from 1.
    pub seq: u64,
    /// The checkpoint this one applies on top of (0 for a full checkpoint).
    pub base_seq: u64,
    /// Identity of the executable the memory belongs to (see `identity.rs`).
    pub exe_id: [u8; 32],
    /// Page size of the writer.
    pub page_size: u32,
    /// Every range registered at the checkpoint.
    pub ranges: Vec<RangeEntry>,
    /// Application metadata (workers, fds, signals, blobs), opaque to the format.
    pub meta: Vec<u8>,
}

impl Begin {
    /// A full checkpoint carries every page of every range.
    pub fn is_full(&self) -> bool {
        self.base_seq == 0
    }
}

/// The checkpoint trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct End {
    /// Must equal BEGIN's.
    pub seq: u64,
    /// Number of PAGES and ZERO frames.
    pub page_frames: u64,
    /// Number of pages in them.
    pub pages: u64,
    /// CRC32C over all PAGES and ZERO payloads.
    pub digest: u32,
}

impl End {
    /// The fixed-size payload.
    pub fn encode(&self) -> [u8; END_LEN] {
        let mut b = [0u8; END_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.page_frames.to_le_bytes());
        b[16..24].copy_from_slice(&self.pages.to_le_bytes());
        b[24..28].copy_from_slice(&self.digest.to_le_bytes());
        b
    }

    pub(crate) fn decode(p: &[u8], offset: u64) -> Result<End, FormatError> {
        if p.len() != END_LEN || p[28..32] != [0; 4] {
            return Err(FormatError::Malformed {
                offset,
                what: "END payload".into(),
            });
        }
        let u = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        Ok(End {
            seq: u(0),
            page_frames: u(8),
            pages: u(16),
            digest: u32::from_le_bytes(p[24..28].try_into().expect("4 bytes")),
        })
    }
}

/// The header of a frame whose payload is the concatenation of `parts`. Allocation-free, so a
/// `cptfork` child may call it.
pub fn frame_header(kind: FrameKind, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&h[0..12]);
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Encodes BEGIN as a whole frame.
pub fn encode_begin(b: &Begin) -> Vec<u8> {
    let payload = postcard::to_allocvec(b).expect("postcard serialises plain data");
    let mut out = frame_header(FrameKind::Begin, &[&payload]).to_vec();
    out.extend_from_slice(&payload);
    out
}

/// A frame read back and checked.
#[derive(Debug)]
pub struct Frame {
    /// Its kind.
    pub kind: FrameKind,
    /// Offset of its header in the stream.
    pub offset: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Reads frames one by one, checking magic, kind, size and CRC; counts the offset so that
/// errors say where the damage is.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> FrameReader<R> {
    /// Reads from `inner`, starting at offset 0.
    pub fn new(inner: R) -> Self {
        FrameReader { inner, offset: 0 }
    }

    /// Offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame, `Ok(None)` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FormatError> {
        let offset = self.offset;
        let mut h = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut h)
            .map_err(|e| FormatError::Io { offset, source: e })?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FormatError::Truncated { offset });
        }
        if h[0..4] != MAGIC {
            return Err(FormatError::BadMagic { offset });
        }
        let kind = FrameKind::from_u8(h[4]).ok_or(FormatError::Malformed {
            offset,
            what: format!("unknown frame kind {}", h[4]),
        })?;
        if h[5..8] != [0; 3] {
            return Err(FormatError::Malformed {
                offset,
                what: "non-zero reserved header bytes".into(),
            });
        }
        let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Err(FormatError::Malformed {
                offset,
                what: format!("frame of {len} bytes is too large"),
            });
        }
        let mut payload = vec![0u8; len as usize];
        let got = read_full(&mut self.inner, &mut payload)
            .map_err(|e| FormatError::Io { offset, source: e })?;
        if got < payload.len() {
            return Err(FormatError::Truncated { offset });
        }
        let want = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[0..12]), &payload);
        if crc != want {
            return Err(FormatError::Checksum { offset, kind });
        }
        self.offset += (HEADER_LEN + payload.len()) as u64;
        Ok(Some(Frame {
            kind,
            offset,
            payload,
        }))
    }
}

impl<R: Read> FrameReader<R> {
    /// The next frame of a wire stream's body (wire format 4: every frame after its BASED
    /// header): `kind: u8 | len: varint | payload`, with no magic and no CRC of its own, and
    /// only PAGES, ZERO, DELTA and END. What covers it is the wire END's digest over every byte
    /// of the body before the END; the frame's header bytes are returned for it. `Ok(None)` at
    /// a clean end of stream.
    pub fn next_compact_frame(&mut self) -> Result<Option<(Frame, CompactHeader)>, FormatError> {
        let offset = self.offset;
        let mut h = CompactHeader::default();
        let mut b = [0u8; 1];
        let got = read_full(&mut self.inner, &mut b)
            .map_err(|e| FormatError::Io { offset, source: e })?;
        if got == 0 {
            return Ok(None);
        }
        let kind = FrameKind::from_u8(b[0])
            .filter(|k| {
                matches!(
                    k,
                    FrameKind::Pages | FrameKind::Zero | FrameKind::Delta | FrameKind::End
                )
            })
            .ok_or(FormatError::Malformed {
                offset,
                what: format!("frame kind {} in the body of a wire stream", b[0]),
            })?;
        h.push(b[0]);
        // The length: a LEB128 varint of at most 4 bytes (28 bits: MAX_PAYLOAD fits).
        let mut len: u32 = 0;
        for i in 0..4 {
            let got = read_full(&mut self.inner, &mut b)
                .map_err(|e| FormatError::Io { offset, source: e })?;
            if got == 0 {
                return Err(FormatError::Truncated { offset });
            }
            h.push(b[0]);
            len |= u32::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
            if i == 3 {
                return Err(FormatError::Malformed {
                    offset,
                    what: "frame length varint longer than 4 bytes".into(),
                });
            }
        }
        if len > MAX_PAYLOAD {
            return Err(FormatError::Malformed {
                offset,
                what: format!("frame of {len} bytes is too large"),
            });
        }
        let mut payload = vec![0u8; len as usize];
        let got = read_full(&mut self.inner, &mut payload)
            .map_err(|e| FormatError::Io { offset, source: e })?;
        if got < payload.len() {
            return Err(FormatError::Truncated { offset });
        }
        self.offset += (h.len + payload.len()) as u64;
        Ok(Some((
            Frame {
                kind,
                offset,
                payload,
            },
            h,
        )))
    }
}

/// The header bytes of a compact frame (1 to 5).
#[derive(Debug, Default, Clone, Copy)]
pub struct CompactHeader {
    bytes: [u8; 5],
    len: usize,
}

impl CompactHeader {
    /// The header of a frame of `kind` with a payload of `len` bytes (at most [`MAX_PAYLOAD`]).
    pub fn new(kind: FrameKind, len: usize) -> CompactHeader {
        let mut h = CompactHeader::default();
        h.push(kind as u8);
        let mut v = len;
        while v >= 0x80 {
            h.push((v as u8) | 0x80);
            v >>= 7;
        }
        h.push(v as u8);
        h
    }

    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A run of pages in a stream: bytes, or pages known to be zero.
#[derive(Debug, Clone, Copy)]
pub enum Run<'a> {
    /// `PAGES`: the bytes of whole pages at an address.
    Data(u64, &'a [u8]),
    /// `ZERO`: this many bytes of zero pages at an address.
    Zero(u64, u64),
}

/// What a validated stream contains, without the page bytes.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Its header.
    pub begin: Begin,
    /// Its trailer.
    pub end: End,
    /// Total stream bytes.
    pub bytes: u64,
}

/// Checks a whole checkpoint stream: BEGIN first and in our format version, every PAGES frame
/// page-aligned and inside a listed range, END matching the counts and digest, nothing after it.
/// `each_page_run` sees every run as it is read, after its frame's CRC passed
/// but before the END is known: callers that apply must validate first and apply on a second
/// pass (see `dir.rs`).
pub fn scan_stream<R: Read>(
    r: R,
    mut each_page_run: impl FnMut(Run<'_>) -> Result<(), FormatError>,
) -> Result<Summary, FormatError> {
    let mut fr = FrameReader::new(r);
    let first = fr
        .next_frame()?
        .ok_or(FormatError::Truncated { offset: 0 })?;
    if first.kind != FrameKind::Begin {
        return Err(FormatError::Malformed {
            offset: 0,
            what: "stream does not start with BEGIN".into(),
        });
    }
    // decode_begin validates it: page size, ranges aligned, inside user space, disjoint.
    let begin = decode_begin(&first.payload, 0)?;
    let page = u64::from(begin.page_size);
    let (mut frames, mut pages, mut digest) = (0u64, 0u64, 0u32);
    loop {
        let f = fr
            .next_frame()?
            .ok_or(FormatError::Truncated { offset: fr.offset })?;
        match f.kind {
            FrameKind::Begin | FrameKind::Based => {
                return Err(FormatError::Malformed {
                    offset: f.offset,
                    what: "second BEGIN".into(),
                })
            }
            FrameKind::Delta => {
                return Err(FormatError::Malformed {
                    offset: f.offset,
                    what: "DELTA frame in a stored stream (only a wire stream carries them, and the spare resolves it into whole pages)".into(),
                })
            }
            FrameKind::Pages | FrameKind::Zero => {
                let short =
                    f.payload.len() < 8 || (f.kind == FrameKind::Zero && f.payload.len() != 16);
                if short {
                    return Err(FormatError::Malformed {
                        offset: f.offset,
                        what: format!("short {:?} frame", f.kind),
                    });
                }
                let addr = u64::from_le_bytes(f.payload[..8].try_into().expect("8 bytes"));
                let run = match f.kind {
                    FrameKind::Zero => Run::Zero(
                        addr,
                        u64::from_le_bytes(f.payload[8..16].try_into().expect("8 bytes")),
                    ),
                    _ => Run::Data(addr, &f.payload[8..]),
                };
                let len = match run {
                    Run::Data(_, d) => d.len() as u64,
                    Run::Zero(_, l) => l,
                };
                let inside = begin.ranges.iter().any(|r| {
                    let (end, r_end) = (addr.checked_add(len), r.addr.checked_add(r.len));
                    addr >= r.addr && end.zip(r_end).is_some_and(|(e, re)| e <= re)
                });
                if len == 0 || !len.is_multiple_of(page) || !addr.is_multiple_of(page) || !inside {
                    return Err(FormatError::Malformed {
                        offset: f.offset,
                        what: format!(
                            "page run {addr:#x}+{len:#x} is not whole pages inside a listed range"
                        ),
                    });
                }
                digest = crc32c::crc32c_append(digest, &f.payload);
                frames += 1;
                pages += len / page;
                each_page_run(run)?;
            }
            FrameKind::End => {
                let end = End::decode(&f.payload, f.offset)?;
                let ours = End {
                    seq: begin.seq,
                    page_frames: frames,
                    pages,
                    digest,
                };
                if end != ours {
                    return Err(FormatError::Malformed {
                        offset: f.offset,
                        what: format!("END says {end:?}, stream has {ours:?}"),
                    });
                }
                if fr.next_frame()?.is_some() {
                    return Err(FormatError::Malformed {
                        offset: fr.offset,
                        what: "data after END".into(),
                    });
                }
                return Ok(Summary {
                    begin,
                    end,
                    bytes: fr.offset,
                });
            }
        }
    }
}

/// Checks that a BEGIN describes something an applier can act on without harm: a page size
/// that is a power of two in [`MIN_PAGE_SIZE`]..=[`MAX_PAGE_SIZE`]; at most [`MAX_RANGES`]
/// ranges, each non-empty, page-aligned, ending at or below [`USER_SPACE_END`] without
/// overflow, no two overlapping, together at most [`MAX_TOTAL_LEN`] bytes; a sequence number
/// from 1 on, above its base; a lineage that is not all zeros. (`meta` is bounded by
/// [`MAX_PAYLOAD`] already.) Pure: it looks at nothing but `b`.
pub fn validate_begin(b: &Begin) -> Result<(), FormatError> {
    let bad = |what: String| Err(FormatError::InvalidBegin { offset: 0, what });
    if b.lineage == [0; 16] {
        return bad("lineage is all zeros".into());
    }
    if b.seq == 0 {
        return bad("sequence number 0 (checkpoints count from 1)".into());
    }
    if b.base_seq >= b.seq {
        return bad(format!(
            "checkpoint {} names base {}, which is not older",
            b.seq, b.base_seq
        ));
    }
    let page = b.page_size;
    if !page.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page) {
        return bad(format!(
            "page size {page} is not a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}"
        ));
    }
    if b.ranges.len() > MAX_RANGES {
        return bad(format!(
            "{} ranges, more than the {MAX_RANGES} allowed",
            b.ranges.len()
        ));
    }
    let page = u64::from(page);
    let mut total: u64 = 0;
    for r in &b.ranges {
        let name = format!("range {:#x}+{:#x}", r.addr, r.len);
        if r.len == 0 {
            return bad(format!("{name} is empty"));
        }
        if !r.addr.is_multiple_of(page) || !r.len.is_multiple_of(page) {
            return bad(format!("{name} is not page-aligned (page size {page})"));
        }
        match r.addr.checked_add(r.len) {
            None => return bad(format!("{name} overflows the address space")),
            Some(end) if end > USER_SPACE_END => {
                return bad(format!(
                    "{name} ends beyond user space ({USER_SPACE_END:#x})"
                ))
            }
            Some(_) => {}
        }
        // Each length is below 2^47 and there are at most 1024: no overflow.
        total += r.len;
    }
    if total > MAX_TOTAL_LEN {
        return bad(format!(
            "ranges total {total:#x} bytes, more than the {MAX_TOTAL_LEN:#x} (1 TiB) allowed"
        ));
    }
    let mut sorted: Vec<&RangeEntry> = b.ranges.iter().collect();
    sorted.sort_by_key(|r| r.addr);
    for w in sorted.windows(2) {
        // Both end below USER_SPACE_END (checked above): no overflow.
        if w[0].addr + w[0].len > w[1].addr {
            return bad(format!(
                "range {:#x}+{:#x} overlaps range {:#x}+{:#x}",
                w[0].addr, w[0].len, w[1].addr, w[1].len
            ));
        }
    }
    Ok(())
}

/// Decodes a BEGIN payload, refusing other format versions with a clear error, and validates
/// it ([`validate_begin`]): no caller ever sees a BEGIN that has not passed.
pub fn decode_begin(payload: &[u8], offset: u64) -> Result<Begin, FormatError> {
    // The version is the first field; read it alone first so a future layout still gets a clear
    // "version" error rather than a decode error.
    let (version, _) =
        postcard::take_from_bytes::<u32>(payload).map_err(|e| FormatError::Malformed {
            offset,
            what: format!("BEGIN: {e}"),
        })?;
    if !(MIN_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::Version {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let begin: Begin = postcard::from_bytes(payload).map_err(|e| FormatError::Malformed {
        offset,
        what: format!("BEGIN: {e}"),
    })?;
    validate_begin(&begin).map_err(|e| match e {
        FormatError::InvalidBegin { what, .. } => FormatError::InvalidBegin { offset, what },
        other => other,
    })?;
    Ok(begin)
}
