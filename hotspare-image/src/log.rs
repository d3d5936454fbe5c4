//! The spare's write-ahead log: checkpoint streams appended to preallocated segments, made
//! durable many at a time by one `fdatasync`.
//!
//! ```text
//! DIR/wal/<gen>.log     a segment: SEGMENT_SIZE bytes, written with zeros when created
//!   0    segment header (40 B): "HSWALSEG", version u32, prev_end u32, gen u64, prev_gen u64,
//!        CRC32C u32 of the 36 bytes before it, 0 u32
//!   40   record: magic "HSWR" u32, len u32, seq u64, lineage [16], CRC32C u32, 0 u32 (40 B),
//!        then `len` bytes of a stored checkpoint stream (what a `.cpt` file holds)
//!   …    records back to back; zeros after the last one
//! ```
//!
//! A record's CRC32C covers the segment's `gen`, the record's offset, its header fields and
//! its payload, so a record is accepted only where it was written, in the segment it was
//! written to. Recovery reads records from the start of a segment until the first one that
//! is not complete (zeros, a torn write, a CRC that fails): that is the end of the log there.
//!
//! **Why segments are zero-filled.** A file whose blocks are already written is overwritten in
//! place by an append, so `fdatasync` flushes data only — no size change, no extent conversion
//! (`fallocate` alone leaves "unwritten" extents, and converting them is a metadata commit on
//! every flush). That is what makes one flush per batch cost what Redis's `appendfsync always`
//! pays. Creating a segment (create, `fallocate`, zeros, `fsync`, `fsync` of `wal/`) happens once
//! per [`SEGMENT_SIZE`] bytes of records.
//!
//! **Which records count.** Segments form a chain from the newest back: the newest counts up to
//! the end of its records; the one before it only up to `prev_end` of the newest, and only if
//! the newest's `prev_gen` names it; and so on. A writer starts a new segment when it opens
//! (so it never appends behind records it did not write), when a segment is full, after a
//! failed flush (the new header's `prev_end` is the end of what was durable, so records whose
//! flush failed never count, even if they reached the disk), and for a stream of another
//! lineage (`prev_gen` 0: nothing before it counts).

use super::ImageError;
use crate::dir::io_err;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of one segment (records of a larger stream go to a `.cpt` file of their own).
pub const SEGMENT_SIZE: u64 = 2 << 20;
/// The largest stream appended to the log; larger ones are written as `wal/<seq>.cpt`.
pub const RECORD_MAX: usize = 512 << 10;

const SEG_MAGIC: &[u8; 8] = b"HSWALSEG";
const SEG_VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEG_HEADER: u64 = 40;
const REC_MAGIC: u32 = u32::from_le_bytes(*b"HSWR");
/// Bytes of a record header.
pub const REC_HEADER: u64 = 40;

/// One record found in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The segment file.
    pub segment: PathBuf,
    /// Its generation.
    pub gen: u64,
    /// Offset of the record's header.
    pub offset: u64,
    /// Bytes of the payload.
    pub len: u32,
    /// The checkpoint's sequence.
    pub seq: u64,
    /// The checkpoint's lineage.
    pub lineage: [u8; 16],
}

impl Record {
    /// A name for messages: `wal/<gen>.log@<offset>`.
    pub fn name(&self) -> PathBuf {
        PathBuf::from(format!("{}@{}", self.segment.display(), self.offset))
    }

    /// Reads the payload (the stream), checking its CRC again.
    pub fn read(&self) -> Result<Vec<u8>, ImageError> {
        let f = File::open(&self.segment).map_err(io_err(&self.segment, "open"))?;
        let mut buf = vec![0u8; REC_HEADER as usize + self.len as usize];
        f.read_exact_at(&mut buf, self.offset)
            .map_err(io_err(&self.segment, "read"))?;
        match parse_record(&buf, self.gen, self.offset) {
            Some((_, _, _, _)) => Ok(buf.split_off(REC_HEADER as usize)),
            None => Err(ImageError::Damaged {
                path: self.name(),
                what: "log record changed or fails its CRC32C".into(),
            }),
        }
    }
}

/// How far records count, as the writer of this process last made them durable: records of a
/// segment newer than `.0`, or at or beyond `.1` in segment `.0`, are not (yet) durable and
/// must not be applied. Shared by the handles of one process ([`crate::ImageDir::attach_shared`]);
/// `None`: no writer in this process, everything found on disk counts.
///
/// It also remembers the newest generation any writer sharing it has made, so that a writer
/// started again after the log was deleted (a primary's `commit_wal`, `start_own_log`) never
/// makes a segment of a generation these handles have scanned before: a [`ScanCache`] trusts
/// what it read of a generation.
#[derive(Debug, Default)]
pub struct Durable(Mutex<(Option<(u64, u64)>, u64)>);

impl Durable {
    /// The bound.
    pub fn get(&self) -> Option<(u64, u64)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn set(&self, gen: u64, end: u64) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = Some((gen, end));
        g.1 = g.1.max(gen);
    }

    /// The newest generation a writer sharing this has made or started from.
    fn max_gen(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

/// The path of segment `gen` in `wal`.
pub fn segment_path(wal: &Path, gen: u64) -> PathBuf {
    wal.join(format!("{gen:020}.log"))
}

fn rec_crc(gen: u64, offset: u64, head: &[u8], payload: &[u8]) -> u32 {
    let mut c = crc32c::crc32c(&gen.to_le_bytes());
    c = crc32c::crc32c_append(c, &offset.to_le_bytes());
    c = crc32c::crc32c_append(c, head);
    crc32c::crc32c_append(c, payload)
}

/// A record's 40-byte header followed by its payload, as written at `offset` of segment `gen`.
pub fn encode_record(
    gen: u64,
    offset: u64,
    seq: u64,
    lineage: [u8; 16],
    payload: &[u8],
) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("records are at most RECORD_MAX");
    let mut out = Vec::with_capacity(REC_HEADER as usize + payload.len());
    out.extend_from_slice(&REC_MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&lineage);
    let crc = rec_crc(gen, offset, &out, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a record at the start of `buf` (header and whole payload): its length, sequence,
/// lineage and total bytes; `None` if it is not a complete, intact record.
fn parse_record(buf: &[u8], gen: u64, offset: u64) -> Option<(u32, u64, [u8; 16], u64)> {
    let head = buf.get(..REC_HEADER as usize)?;
    let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
    if u32_at(0) != REC_MAGIC || u32_at(36) != 0 {
        return None;
    }
    let len = u32_at(4);
    let seq = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let lineage: [u8; 16] = head[16..32].try_into().expect("16 bytes");
    let total = REC_HEADER + u64::from(len);
    let payload = buf.get(REC_HEADER as usize..usize::try_from(total).ok()?)?;
    (rec_crc(gen, offset, &head[..32], payload) == u32_at(32)).then_some((len, seq, lineage, total))
}

fn encode_seg_header(h: SegHeader) -> [u8; SEG_HEADER as usize] {
    let mut out = [0u8; SEG_HEADER as usize];
    out[..8].copy_from_slice(SEG_MAGIC);
    out[8..12].copy_from_slice(&SEG_VERSION.to_le_bytes());
    let end = u32::try_from(h.prev_end).expect("segments are at most SEGMENT_SIZE");
    out[12..16].copy_from_slice(&end.to_le_bytes());
    out[16..24].copy_from_slice(&h.gen.to_le_bytes());
    out[24..32].copy_from_slice(&h.prev_gen.to_le_bytes());
    let crc = crc32c::crc32c(&out[..32]);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A segment header: its `gen`, the segment it follows (0: none, nothing before it counts) and
/// how many bytes of that one count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SegHeader {
    gen: u64,
    prev_gen: u64,
    prev_end: u64,
}

fn parse_seg_header(h: &[u8]) -> Option<SegHeader> {
    let h = h.get(..SEG_HEADER as usize)?;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if &h[..8] != SEG_MAGIC
        || u32_at(8) != SEG_VERSION
        || u32_at(32) != crc32c::crc32c(&h[..32])
        || u32_at(36) != 0
    {
        return None;
    }
    Some(SegHeader {
        gen: u64_at(16),
        prev_gen: u64_at(24),
        prev_end: u64::from(u32_at(12)),
    })
}

/// The segments in `wal`, by generation (the number in the name).
fn segment_files(wal: &Path) -> Result<Vec<(u64, PathBuf)>, ImageError> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(wal)
        .map_err(io_err(wal, "read directory"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| {
            let gen = p.file_stem()?.to_str()?.parse().ok()?;
            Some((gen, p))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// One segment as recovery reads it.
#[derive(Debug)]
pub struct Segment {
    /// Its file.
    pub path: PathBuf,
    /// Its generation.
    pub gen: u64,
    /// Its complete records, in order, up to the first one that is not.
    pub records: Vec<Record>,
    /// Where the records end.
    pub end: u64,
    /// Whether this segment counts (is in the chain from the newest); segments that do not
    /// are leftovers, to be deleted.
    pub live: bool,
    /// Being created by this process's writer (newer than its durable bound): neither read
    /// nor deleted.
    pub creating: bool,
    header: Option<SegHeader>,
}

/// What earlier scans of this handle found in each segment, so that a scan reads and checks
/// only what was appended since. A spare's applier scans the log several times per pass (every
/// 25 ms); re-reading each 2 MiB segment and re-checking the CRC32C of every record in it was
/// the largest cost of its thread (a third of a CPU at 50 clients). Safe to trust: records are
/// never changed once written (a writer only appends, after the last record it made durable,
/// and a generation is never reused by the writers of the handles sharing a [`Durable`]), and
/// applying a record reads and checks it again
/// ([`Record::read`]).
#[derive(Debug, Default)]
pub struct ScanCache(Mutex<std::collections::HashMap<u64, Scanned>>);

/// The checked prefix of one segment.
#[derive(Debug, Clone)]
struct Scanned {
    header: SegHeader,
    /// Where the checked records end.
    end: u64,
    records: Vec<Record>,
}

impl ScanCache {
    fn get(&self, gen: u64) -> Option<Scanned> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&gen)
            .cloned()
    }

    fn put(&self, gen: u64, s: Scanned) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(gen, s);
    }

    /// Forgets segments that are no longer there.
    fn keep_only(&self, gens: &[u64]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|g, _| gens.contains(g));
    }
}

/// Reads the records of one segment, up to `limit` bytes of it: from where `cache` says the
/// checked records end when it knows the segment, else from its start.
fn read_segment(
    path: &Path,
    gen: u64,
    limit: u64,
    cache: &ScanCache,
) -> Result<Segment, ImageError> {
    let f = File::open(path).map_err(io_err(path, "open"))?;
    let mut head = [0u8; SEG_HEADER as usize];
    let header = match f.read_exact_at(&mut head, 0) {
        Ok(()) => parse_seg_header(&head).filter(|h| h.gen == gen),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
        Err(e) => return Err(io_err(path, "read")(e)),
    };
    let mut seg = Segment {
        path: path.to_path_buf(),
        gen,
        records: Vec::new(),
        end: SEG_HEADER,
        live: false,
        creating: false,
        header,
    };
    let Some(header) = header else {
        return Ok(seg);
    };
    let limit = limit.min(SEGMENT_SIZE);
    let known = cache.get(gen).filter(|k| k.header == header);
    if let Some(k) = &known {
        if k.end >= limit {
            // A shorter limit than what was checked (a segment that counts less now).
            seg.records = k
                .records
                .iter()
                .filter(|r| r.offset + REC_HEADER + u64::from(r.len) <= limit)
                .cloned()
                .collect();
            seg.end = seg
                .records
                .last()
                .map_or(SEG_HEADER, |r| r.offset + REC_HEADER + u64::from(r.len));
            return Ok(seg);
        }
    }
    let (mut records, from) = known.map_or((Vec::new(), SEG_HEADER), |k| (k.records, k.end));
    let size = f.metadata().map_err(io_err(path, "stat"))?.len();
    let mut bytes = vec![0u8; limit.min(size).saturating_sub(from) as usize];
    f.read_exact_at(&mut bytes, from)
        .map_err(io_err(path, "read"))?;
    let mut at = 0usize;
    while at < bytes.len() {
        let offset = from + at as u64;
        let Some((len, seq, lineage, total)) = parse_record(&bytes[at..], gen, offset) else {
            break;
        };
        records.push(Record {
            segment: path.to_path_buf(),
            gen,
            offset,
            len,
            seq,
            lineage,
        });
        at += total as usize;
    }
    seg.end = from + at as u64;
    seg.records = records;
    cache.put(
        gen,
        Scanned {
            header,
            end: seg.end,
            records: seg.records.clone(),
        },
    );
    Ok(seg)
}

/// Every segment in `wal`, oldest first, each with the records that count (`durable`: the
/// bound of this process's writer, see [`Durable`]).
pub fn scan(wal: &Path, durable: Option<(u64, u64)>) -> Result<Vec<Segment>, ImageError> {
    scan_cached(wal, durable, &ScanCache::default())
}

/// [`scan`], reading only what was appended since the scans that filled `cache`. Only under a
/// writer's durable bound: what a scan without one reads may be records whose flush has not
/// returned yet, which a failed flush then zeros (they never count), so such a scan reads
/// everything again.
pub fn scan_cached(
    wal: &Path,
    durable: Option<(u64, u64)>,
    cache: &ScanCache,
) -> Result<Vec<Segment>, ImageError> {
    let unbounded;
    let cache = match durable {
        Some(_) => cache,
        None => {
            unbounded = ScanCache::default();
            &unbounded
        }
    };
    let files = segment_files(wal)?;
    cache.keep_only(&files.iter().map(|(g, _)| *g).collect::<Vec<_>>());
    let mut out: Vec<Segment> = Vec::with_capacity(files.len());
    // From the newest back: each segment's limit is set by the one after it.
    let mut limit: Option<(u64, u64)> = None; // (gen that counts, bytes of it)
    let mut chain_open = true;
    for (gen, path) in files.into_iter().rev() {
        if let Some((bg, _)) = durable {
            if gen > bg {
                // Being created by this process's writer: nothing in it is durable yet.
                let mut seg = read_segment(&path, gen, 0, cache)?;
                seg.creating = true;
                out.push(seg);
                continue;
            }
        }
        let mut lim = SEGMENT_SIZE;
        if let Some((_, be)) = durable.filter(|(bg, _)| *bg == gen) {
            lim = be;
        }
        let live = chain_open
            && match limit {
                None => true,
                Some((g, l)) if g == gen => {
                    lim = lim.min(l);
                    true
                }
                Some(_) => false,
            };
        let mut seg = read_segment(&path, gen, if live { lim } else { 0 }, cache)?;
        seg.live = live && seg.header.is_some();
        if seg.live {
            let h = seg.header.expect("checked");
            if h.prev_gen == 0 {
                chain_open = false;
            } else {
                limit = Some((h.prev_gen, h.prev_end));
            }
        } else {
            seg.records.clear();
            if live && limit.is_none() {
                // The newest segment, with a torn header: it was never used; the chain goes on
                // from the one before it as if it were not there.
                out.push(seg);
                continue;
            }
            chain_open = false;
        }
        out.push(seg);
    }
    out.reverse();
    Ok(out)
}

/// Appends records to the log: one writer per directory (the spare's syncer). Records
/// appended are durable once [`Writer::flush`] returns `Ok`.
#[derive(Debug)]
pub struct Writer {
    wal: PathBuf,
    shared: Arc<Durable>,
    cur: Option<Current>,
    /// What the next segment follows: (gen, bytes of it that count); (0, 0) for none.
    prev: (u64, u64),
    /// The highest generation of any segment file seen or made.
    max_gen: u64,
    /// The next append starts a new segment (at open, after a failure, for a new chain).
    need_new: bool,
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    file: File,
    gen: u64,
    /// Where the next record goes.
    pos: u64,
    /// The end of what is durable in it.
    durable_end: u64,
}

impl Writer {
    /// A writer for the log in `wal`; its first append starts a new segment that follows what
    /// counts there. `shared` is told what is durable.
    pub fn new(wal: &Path, shared: Arc<Durable>) -> Result<Writer, ImageError> {
        let segs = scan(wal, None)?;
        let prev = segs
            .iter()
            .rev()
            .find(|s| s.live)
            .map_or((0, 0), |s| (s.gen, s.end));
        // Never a generation an earlier writer of these handles made (and their scans may
        // have cached), even if its segment is gone.
        let max_gen = segs.last().map_or(0, |s| s.gen).max(shared.max_gen());
        shared.set(prev.0, prev.1);
        Ok(Writer {
            wal: wal.to_path_buf(),
            shared,
            cur: None,
            prev,
            max_gen,
            need_new: true,
        })
    }

    /// The next segment starts a new chain: nothing in the log before it counts (a stream of
    /// another lineage replaces the image). Made durable at once: returns once no earlier
    /// record counts any more.
    pub fn start_new_chain(&mut self) -> Result<(), ImageError> {
        self.flush()?;
        // The current segment is left behind whole: the new one follows nothing.
        self.cur = None;
        self.prev = (0, 0);
        self.need_new = true;
        self.new_segment()
    }

    /// Appends one checkpoint stream (at most [`RECORD_MAX`] bytes); durable at the next
    /// successful [`Writer::flush`]. On failure every record appended since the last flush
    /// is abandoned (it will never count) and the error returned.
    pub fn append(&mut self, seq: u64, lineage: [u8; 16], stream: &[u8]) -> Result<(), ImageError> {
        let total = REC_HEADER + stream.len() as u64;
        assert!(stream.len() <= RECORD_MAX, "records are at most RECORD_MAX");
        let full = self
            .cur
            .as_ref()
            .is_some_and(|c| c.pos + total > SEGMENT_SIZE);
        if full {
            self.flush()?;
            self.need_new = true;
        }
        if self.need_new || self.cur.is_none() {
            self.new_segment()?;
        }
        let c = self.cur.as_mut().expect("made above");
        let rec = encode_record(c.gen, c.pos, seq, lineage, stream);
        let path = segment_path(&self.wal, c.gen);
        if let Err(e) = c.file.write_all_at(&rec, c.pos) {
            self.abandon();
            return Err(io_err(&path, "write")(e));
        }
        c.pos += total;
        Ok(())
    }

    /// Makes every record appended so far durable with one `fdatasync`. On failure they are
    /// abandoned (they will never count, even if they reached the disk: the next segment's
    /// header says where the durable ones end) and the error returned.
    pub fn flush(&mut self) -> Result<(), ImageError> {
        let Some(c) = self.cur.as_mut() else {
            return Ok(());
        };
        if c.pos == c.durable_end {
            return Ok(());
        }
        if let Err(e) = c.file.sync_data() {
            let path = segment_path(&self.wal, c.gen);
            self.abandon();
            return Err(io_err(&path, "fdatasync")(e));
        }
        c.durable_end = c.pos;
        self.shared.set(c.gen, c.pos);
        Ok(())
    }

    /// Forgets the records appended since the last flush: zeros over them (best effort) and a
    /// new segment for the next append, whose header excludes them.
    fn abandon(&mut self) {
        if let Some(c) = self.cur.take() {
            let zeros = vec![0u8; (c.pos - c.durable_end) as usize];
            let _ = c.file.write_all_at(&zeros, c.durable_end);
            self.prev = (c.gen, c.durable_end);
        }
        self.need_new = true;
    }

    /// Creates, zero-fills and makes durable the next segment, following `prev`.
    fn new_segment(&mut self) -> Result<(), ImageError> {
        if let Some(c) = self.cur.take() {
            debug_assert_eq!(c.pos, c.durable_end, "flushed before a new segment");
            self.prev = (c.gen, c.durable_end);
        }
        // A name that could not be made is not tried again (a directory in the way).
        let gen = self.max_gen + 1;
        self.max_gen = gen;
        let path = segment_path(&self.wal, gen);
        let header = encode_seg_header(SegHeader {
            gen,
            prev_gen: self.prev.0,
            prev_end: self.prev.1,
        });
        let made = (|| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(io_err(&path, "create"))?;
            allocate(&f, SEGMENT_SIZE).map_err(io_err(&path, "reserve space"))?;
            // Zeros everywhere (the blocks become written, so a later overwrite flushes data
            // only), then the header.
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < SEGMENT_SIZE {
                let n = (SEGMENT_SIZE - at).min(zeros.len() as u64);
                f.write_all_at(&zeros[..n as usize], at)
                    .map_err(io_err(&path, "write"))?;
                at += n;
            }
            f.write_all_at(&header, 0).map_err(io_err(&path, "write"))?;
            f.sync_all().map_err(io_err(&path, "fsync"))?;
            File::open(&self.wal)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.wal, "fsync directory"))?;
            Ok(f)
        })();
        match made {
            Ok(file) => {
                self.cur = Some(Current {
                    file,
                    gen,
                    pos: SEG_HEADER,
                    durable_end: SEG_HEADER,
                });
                self.shared.set(gen, SEG_HEADER);
                self.need_new = false;
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&path);
                self.need_new = true;
                Err(e)
            }
        }
    }
}

/// `fallocate` of `len` bytes (the file's size becomes `len`); a filesystem without it gets
/// `set_len` (the zeros written next allocate the blocks).
fn allocate(f: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return f.set_len(len);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guards against a scan that trusts what it read before and misses or keeps what it
    /// should not: after every step of a random run of appends (small and segment-filling),
    /// flushes, failed flushes and new chains, a scan through one long-lived cache (as the
    /// spare's applier makes them) finds exactly what a fresh scan finds, under the writer's
    /// durable bound and without one.
    #[test]
    fn a_cached_scan_finds_what_a_fresh_scan_finds() {
        /// A segment as compared: gen, live, end, (seq, offset) of each record.
        type Seen = (u64, bool, u64, Vec<(u64, u64)>);
        let summary = |segs: Vec<Segment>| -> Vec<Seen> {
            segs.into_iter()
                .map(|s| {
                    let recs = s.records.iter().map(|r| (r.seq, r.offset)).collect();
                    (s.gen, s.live, s.end, recs)
                })
                .collect()
        };
        for seed in 0..20u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let t = tempfile::tempdir().unwrap();
            let shared = Arc::new(Durable::default());
            let mut w = Writer::new(t.path(), shared.clone()).unwrap();
            let (bounded, unbounded) = (ScanCache::default(), ScanCache::default());
            let mut seq = 0;
            for _ in 0..60 {
                match rng.u8(..10) {
                    0..=5 => {
                        seq += 1;
                        let len = if rng.u8(..8) == 0 {
                            rng.usize(200_000..RECORD_MAX)
                        } else {
                            rng.usize(1..3000)
                        };
                        w.append(seq, [1; 16], &vec![seq as u8; len]).unwrap();
                    }
                    6..=7 => w.flush().unwrap(),
                    8 => w.abandon(),
                    _ => w.start_new_chain().unwrap(),
                }
                let d = shared.get();
                assert_eq!(
                    summary(scan_cached(t.path(), d, &bounded).unwrap()),
                    summary(scan(t.path(), d).unwrap()),
                    "seed {seed}, bound {d:?}"
                );
                if rng.bool() {
                    w.flush().unwrap();
                    assert_eq!(
                        summary(scan_cached(t.path(), None, &unbounded).unwrap()),
                        summary(scan(t.path(), None).unwrap()),
                        "seed {seed}, no bound"
                    );
                }
            }
        }
    }

    /// Guards against a scan without a durable bound (a handle that does not share the
    /// writer's, e.g. one made by `ImageDir::attach`) that trusts what it read before: a record
    /// appended but not flushed, read by such a scan, is then zeroed by a failed flush and must
    /// not be found by the next scan, as a fresh one does not find it.
    #[test]
    fn an_unbounded_scan_does_not_keep_a_record_whose_flush_failed() {
        let t = tempfile::tempdir().unwrap();
        let mut w = Writer::new(t.path(), Arc::default()).unwrap();
        let cache = ScanCache::default();
        let n = |segs: Vec<Segment>| segs.iter().map(|s| s.records.len()).sum::<usize>();
        w.append(1, [1; 16], b"one").unwrap();
        w.flush().unwrap();
        w.append(2, [1; 16], b"two").unwrap();
        assert_eq!(n(scan_cached(t.path(), None, &cache).unwrap()), 2);
        // As a failed flush does.
        w.abandon();
        assert_eq!(n(scan(t.path(), None).unwrap()), 1);
        assert_eq!(n(scan_cached(t.path(), None, &cache).unwrap()), 1);
    }

    /// Guards against records whose flush failed counting after all: they reached the disk
    /// (written back here after the writer zeroed them, as a flush that failed halfway may
    /// leave them), yet the next segment's header says the durable ones end before them.
    #[test]
    fn records_whose_flush_failed_never_count_even_if_they_reached_the_disk() {
        let t = tempfile::tempdir().unwrap();
        let shared = Arc::new(Durable::default());
        let mut w = Writer::new(t.path(), shared.clone()).unwrap();
        w.append(1, [1; 16], b"one").unwrap();
        w.flush().unwrap();
        w.append(2, [1; 16], b"two").unwrap();
        let (gen, at) = {
            let c = w.cur.as_ref().unwrap();
            (c.gen, c.durable_end)
        };
        // The flush of 2 fails.
        w.abandon();
        let rec = encode_record(gen, at, 2, [1; 16], b"two");
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(t.path(), gen))
            .unwrap();
        f.write_all_at(&rec, at).unwrap();
        w.append(3, [1; 16], b"three").unwrap();
        w.flush().unwrap();
        let seqs: Vec<u64> = scan(t.path(), None)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.records)
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [1, 3], "2 was reported failed");
        // A writer of this process bounds what the applier may read to what it flushed.
        assert_eq!(shared.get().map(|(g, _)| g), Some(gen + 1));
        w.append(4, [1; 16], b"four").unwrap();
        let seqs: Vec<u64> = scan(t.path(), shared.get())
            .unwrap()
            .into_iter()
            .flat_map(|s| s.records)
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [1, 3], "4 is not flushed yet");
    }

    /// Guards against a record read back from another place than it was written (a
    /// misdirected write, a recycled segment): the CRC covers the segment and the offset.
    #[test]
    fn a_record_counts_only_where_it_was_written() {
        let rec = encode_record(5, 40, 9, [3; 16], b"payload");
        assert!(parse_record(&rec, 5, 40).is_some());
        assert!(parse_record(&rec, 6, 40).is_none());
        assert!(parse_record(&rec, 5, 80).is_none());
        assert!(parse_record(&rec[..rec.len() - 1], 5, 40).is_none());
    }
}
