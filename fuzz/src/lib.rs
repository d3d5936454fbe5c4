//! Helpers shared by the fuzz targets and the seed-corpus generator (`examples/gen_corpus.rs`):
//! a byte reader that never fails (missing bytes read as zero), checksum repair for checkpoint
//! streams (so that mutations get past the CRC32C checks and reach the code behind them), and
//! the layout of an `image_dir_recovery` input.

use hotspare_image::delta::{StreamCheck, WireEnd};
use hotspare_image::format::{FrameKind, HEADER_LEN, MAGIC};
use hotspare_image::Begin;

/// Reads fields from fuzz input; past the end every read yields zeros / empty slices.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes not read yet.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.take(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.take(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.take(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }

    /// A length-prefixed (u32 LE) slice.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = self.u32() as usize;
        self.take(n)
    }
}

/// Appends a length-prefixed (u32 LE) slice.
pub fn put_chunk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Rewrites the CRC32C of every frame of `stream` whose header is complete and whose payload
/// fits (stopping at the first that does not); with `fix_end`, also rewrites each END payload
/// to the sequence of the preceding BEGIN and the counts and digest of the PAGES/ZERO frames
/// since it, so that a mutated stream can be *valid* and reach the appliers. After a BASED
/// header the rest is a wire stream's body ([`fix_wire_body`]).
pub fn fix_stream(stream: &mut [u8], fix_end: bool) {
    let mut off = 0usize;
    let (mut seq, mut page) = (0u64, 0u64);
    let (mut frames, mut pages, mut digest) = (0u64, 0u64, 0u32);
    while stream.len() - off >= HEADER_LEN {
        let h = off;
        let len = u32::from_le_bytes(stream[h + 8..h + 12].try_into().expect("4")) as usize;
        let p = h + HEADER_LEN;
        if len > stream.len() - p || stream[h..h + 4] != MAGIC {
            break;
        }
        let kind = stream[h + 4];
        let mut wire = None;
        if kind == FrameKind::Begin as u8 {
            if let Ok(b) = postcard::from_bytes::<Begin>(&stream[p..p + len]) {
                seq = b.seq;
                page = u64::from(b.page_size);
            }
            (frames, pages, digest) = (0, 0, 0);
        } else if kind == FrameKind::Based as u8 {
            let seq = postcard::from_bytes::<hotspare_image::delta::Based>(&stream[p..p + len])
                .map_or(0, |b| b.seq);
            wire = Some(seq);
        } else if kind == FrameKind::Pages as u8 || kind == FrameKind::Zero as u8 {
            let payload = &stream[p..p + len];
            let n = if kind == FrameKind::Zero as u8 && len >= 16 {
                u64::from_le_bytes(payload[8..16].try_into().expect("8"))
            } else {
                len.saturating_sub(8) as u64
            };
            digest = crc32c::crc32c_append(digest, payload);
            frames += 1;
            pages = pages.wrapping_add(n.checked_div(page).unwrap_or(0));
        } else if kind == FrameKind::End as u8 && fix_end && len == 32 {
            let e = &mut stream[p..p + 32];
            e[0..8].copy_from_slice(&seq.to_le_bytes());
            e[8..16].copy_from_slice(&frames.to_le_bytes());
            e[16..24].copy_from_slice(&pages.to_le_bytes());
            e[24..28].copy_from_slice(&digest.to_le_bytes());
            e[28..32].copy_from_slice(&[0; 4]);
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&stream[h..h + 12]), &stream[p..p + len]);
        stream[h + 12..h + 16].copy_from_slice(&crc.to_le_bytes());
        off = p + len;
        if let Some(seq) = wire {
            fix_wire_body(&mut stream[off..], seq, fix_end);
            return;
        }
    }
}

/// The body of a wire stream (compact frames, after its BASED header of sequence `seq`): with
/// `fix_end`, its END rewritten to the counts of the frames before it and the check of the
/// body and of its DELTA entries applied to the `stream_decoder` target's base pages
/// ([`wire_base_page`]), as far as the frames can be walked; an END whose new encoding would
/// change its length is left as it is.
pub fn fix_wire_body(body: &mut [u8], seq: u64, fix_end: bool) {
    fn varint(p: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..4 {
            let b = *p.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let (mut frames, mut pages) = (0u64, 0u64);
    let mut check = StreamCheck::default();
    let mut at = 0usize;
    while at < body.len() {
        let start = at;
        let kind = body[at];
        at += 1;
        let Some(len) = varint(body, &mut at) else {
            return;
        };
        let Some(end) = at.checked_add(len as usize).filter(|e| *e <= body.len()) else {
            return;
        };
        let payload = &body[at..end];
        if kind == FrameKind::End as u8 {
            if fix_end {
                let e = WireEnd {
                    seq,
                    page_frames: frames,
                    pages,
                    check: check.finish(),
                }
                .encode();
                if e.len() == payload.len() {
                    body[at..end].copy_from_slice(&e);
                }
            }
            return;
        }
        check.body(&body[start..end]);
        if kind == FrameKind::Delta as u8 {
            let n = delta_entries(payload, |addr, pg| check.page(addr, pg));
            pages = pages.wrapping_add(n);
        } else if kind == FrameKind::Pages as u8 {
            pages = pages.wrapping_add((len.saturating_sub(8)) / WIRE_BASE_PAGE);
        } else if kind == FrameKind::Zero as u8 && payload.len() >= 16 {
            let n = u64::from_le_bytes(payload[8..16].try_into().expect("8"));
            pages = pages.wrapping_add(n / WIRE_BASE_PAGE);
        }
        frames += 1;
        at = end;
    }
}

/// Page size of the base the `stream_decoder` target resolves wire streams on.
pub const WIRE_BASE_PAGE: u64 = 4096;
/// Address of the base's one range (16 pages).
pub const WIRE_BASE_ADDR: u64 = 0x7000_0000_0000;
/// Pages in it.
pub const WIRE_BASE_PAGES: u64 = 16;

/// The entries of a DELTA payload, walked leniently (stops at the first that does not parse);
/// `each` sees the page each entry gives applied on the `stream_decoder` target's base page
/// ([`wire_base_page`]), with its address.
pub fn delta_entries(p: &[u8], mut each: impl FnMut(u64, &[u8])) -> u64 {
    fn varint(p: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *p.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f).checked_shl(7 * i)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let Some(first) = p.get(..8) else { return 0 };
    let mut addr = u64::from_le_bytes(first.try_into().expect("8"));
    let (mut at, mut n) = (8usize, 0u64);
    let mut buf = vec![0u8; WIRE_BASE_PAGE as usize];
    while at < p.len() {
        let ok = (|| {
            let gap = varint(p, &mut at)?;
            addr = addr.checked_add(gap.checked_mul(WIRE_BASE_PAGE)?)?;
            wire_base_page(addr, &mut buf);
            let mut cursor = 0usize;
            for _ in 0..varint(p, &mut at)?.min(4096) {
                // The run header: `skip << 3 | l`, l = len - 1 (1 ..= 7) or 7 and `len - 8`.
                let token = varint(p, &mut at)?;
                let skip = usize::try_from(token >> 3).ok()?;
                let len = match token & 7 {
                    7 => usize::try_from(varint(p, &mut at)?.checked_add(8)?).ok()?,
                    l => l as usize + 1,
                };
                let s = cursor.checked_add(skip)?;
                let e = s.checked_add(len)?;
                let bytes = p.get(at..at.checked_add(len)?)?;
                if let Some(dst) = buf.get_mut(s..e) {
                    dst.copy_from_slice(bytes);
                }
                at += len;
                cursor = e;
            }
            (at <= p.len()).then_some(())
        })();
        if ok.is_none() {
            break;
        }
        each(addr, &buf);
        n += 1;
    }
    n
}

/// The base page at `addr` of the `stream_decoder` target's base: byte `i` is `addr/page + i`.
pub fn wire_base_page(addr: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (addr / WIRE_BASE_PAGE).wrapping_add(i as u64) as u8;
    }
}

/// `image_dir_recovery` input flags.
pub mod flags {
    /// Repair the CRCs of the manifest and every WAL file ([`super::fix_stream`]).
    pub const FIX_CRC: u8 = 1;
    /// Repair the END frames too.
    pub const FIX_END: u8 = 2;
    /// Create `wal/applying` (the data files may be ahead of the manifest).
    pub const APPLYING: u8 = 4;
    /// Write no data files for the manifest (a directory that lost them): the image then need
    /// not verify, only never panic.
    pub const NO_DATA: u8 = 8;
    /// Open the directory a second time after the first open succeeded.
    pub const REOPEN: u8 = 16;
}

/// Extensions a WAL file of the input may have.
pub const WAL_EXTS: [&str; 3] = ["cpt", "tmp", "bad"];

/// An `image_dir_recovery` input: flags, the raw manifest (`None`: none), and 0–3 WAL files
/// (sequence, index into [`WAL_EXTS`], bytes).
#[derive(Debug, Default, Clone)]
pub struct ImageInput {
    /// [`flags`].
    pub flags: u8,
    /// `DIR/manifest`.
    pub manifest: Option<Vec<u8>>,
    /// `DIR/wal/<seq>.<ext>`.
    pub wals: Vec<(u64, u8, Vec<u8>)>,
}

impl ImageInput {
    /// Parses fuzz bytes (never fails).
    pub fn parse(data: &[u8]) -> ImageInput {
        let mut b = Bytes::new(data);
        let flags = b.u8();
        let head = b.u8();
        let manifest = (head & 1 == 1).then(|| b.chunk().to_vec());
        let n = usize::from(head >> 1) % 4;
        let wals = (0..n)
            .map(|_| {
                let seq = u64::from(b.u8());
                let ext = b.u8() % 3;
                (seq, ext, b.chunk().to_vec())
            })
            .collect();
        ImageInput {
            flags,
            manifest,
            wals,
        }
    }

    /// The bytes [`ImageInput::parse`] reads back as `self`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        let n = self.wals.len().min(3) as u8;
        out.push(u8::from(self.manifest.is_some()) | (n << 1));
        if let Some(m) = &self.manifest {
            put_chunk(&mut out, m);
        }
        for (seq, ext, bytes) in self.wals.iter().take(3) {
            out.push(*seq as u8);
            out.push(*ext);
            put_chunk(&mut out, bytes);
        }
        out
    }
}
