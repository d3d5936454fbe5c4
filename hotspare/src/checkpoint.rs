//! `cpt()`: capture the dirty pages (Copy or Fork), hand them to the writer thread, which makes
//! them a durable checkpoint in the image directory.
//!
//! One checkpoint is in flight at a time: the staging buffer goes to the writer with the
//! checkpoint and comes back once that checkpoint is durable (or failed), so a program that
//! checkpoints faster than the disk waits in `cpt()` instead of queueing memory without bound.
//! A failed checkpoint makes the next one full, so no page of it is lost.

use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::heap::Heap;
use crate::identity::ExeId;
use crate::image::format::{
    encode_begin, frame_header, Begin, End, FrameKind, RangeEntry, PAGES_PER_FRAME,
};
use crate::image::{write_stream, ImageDir, Run, FORMAT_VERSION};
use crate::replica::sender::Remote;
use kmod_shim::{page_size, ChildJob, DirtySet, PageBits, Range, Shim, Snapshot};
use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What one `cpt()` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CptStats {
    /// Sequence number of the checkpoint.
    pub seq: u64,
    /// How long the caller was stopped.
    pub stopped: Duration,
    /// The part of `stopped` spent asking the kernel for the dirty pages (QUERY).
    pub query: Duration,
    /// Pages captured.
    pub pages: u64,
    /// Bytes captured.
    pub bytes: u64,
    /// Whether it was a full checkpoint.
    pub full: bool,
    /// The strategy used.
    pub strategy: Strategy,
    /// Not a checkpoint: the previous one was still being written, so the pages written since
    /// were only noted and go into the next checkpoint ([`crate::HotSpare::cpt_or_coalesce`]).
    /// `seq` is then 0.
    pub coalesced: bool,
}

/// Durability state shared with the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Durable {
    /// Highest sequence that is durable in the image directory.
    pub seq: u64,
    /// The last failure, if any.
    pub failed: Option<(u64, String)>,
}

pub(crate) struct Shared {
    pub durable: Mutex<Durable>,
    pub changed: Condvar,
    /// Set by the writer when a checkpoint failed: the next one must be full.
    pub force_full: AtomicBool,
}

/// A run to capture: bytes, or (anonymous memory never touched) known zeros.
#[derive(Debug, Clone, Copy)]
struct Piece {
    addr: usize,
    len: usize,
    zero: bool,
}

/// A captured run: where its bytes are in the staging buffer (none for zeros).
struct Captured {
    addr: u64,
    offset: usize,
    len: usize,
    zero: bool,
}

/// Every page of `r`: bytes, except that in a *pristine* range (untouched anonymous memory when
/// tracking began, like a fresh checkpoint heap) the pages never reported written read as zeros
/// and become ZERO runs — so a fresh 1 GiB heap does not cost 1 GiB of disk and copy. This relies
/// on the backend never missing a write, which every backend guarantees.
fn whole_range(r: Range, ever_written: Option<&PageBits>, out: &mut Vec<Piece>) {
    let Some(ever) = ever_written else {
        out.push(Piece {
            addr: r.start(),
            len: r.len(),
            zero: false,
        });
        return;
    };
    let page = page_size();
    let mut i = 0;
    while i < ever.len() {
        let bit = ever[i];
        let n = if bit {
            ever[i..].first_zero()
        } else {
            ever[i..].first_one()
        }
        .unwrap_or(ever.len() - i);
        out.push(Piece {
            addr: r.start() + i * page,
            len: n * page,
            zero: !bit,
        });
        i += n;
    }
}

enum Job {
    Copied {
        begin: Box<Begin>,
        runs: Vec<Captured>,
        staging: Vec<u8>,
    },
    Forked {
        seq: u64,
        snapshot: Snapshot<WriteStream>,
    },
}

/// What an engine is set up with besides its memory and image.
pub(crate) struct Settings {
    pub exe: ExeId,
    pub term: u64,
    /// The lineage of every checkpoint this engine writes (new at a fresh start, the image's
    /// on resume).
    pub lineage: [u8; 16],
    pub strategy: Strategy,
    pub shared: Arc<Shared>,
}

/// The capture side, owned by `HotSpare` under a mutex.
pub(crate) struct Engine {
    pub shim: Shim,
    pub heap: Heap,
    /// Every tracked range, heap first.
    pub ranges: Vec<Range>,
    /// Ranges added since the last checkpoint (sent whole).
    pub fresh: Vec<Range>,
    /// Pristine ranges and every page ever reported written in them (see `whole_range`).
    pub pristine: Vec<(Range, PageBits)>,
    /// Pages harvested by coalesced calls, per range, waiting for the next checkpoint.
    carry: Vec<kmod_shim::RangeDirty>,
    pub last_seq: u64,
    pub term: u64,
    pub lineage: [u8; 16],
    pub exe: ExeId,
    pub strategy: Strategy,
    staging: Option<Vec<u8>>,
    staging_back: Receiver<Vec<u8>>,
    jobs: Sender<Job>,
    shared: Arc<Shared>,
    image_path: std::path::PathBuf,
    /// The image directory's lock descriptor, which a `cptfork` child closes (-1: none).
    lock_fd: i32,
    /// The link to the spare, when checkpoints go there.
    pub remote: Option<Remote>,
}

impl Engine {
    /// Starts the writer thread over `image`.
    pub fn new(shim: Shim, heap: Heap, ranges: Vec<Range>, sink: Sink, s: Settings) -> Engine {
        let Settings {
            exe,
            term,
            lineage,
            strategy,
            shared,
        } = s;
        let (jobs, job_rx) = channel();
        let (back_tx, staging_back) = channel();
        // Sequence numbers count within a lineage: a new one starts again from 1 (full).
        let last_seq = if sink.dir().lineage() == Some(lineage) {
            sink.dir().seq()
        } else {
            0
        };
        let image_path = sink.dir().path().to_path_buf();
        let lock_fd = sink.dir().lock_fd().unwrap_or(-1);
        let remote = match &sink {
            Sink::Remote { remote, .. } => Some(remote.clone()),
            Sink::Local(_) => None,
        };
        let w_shared = shared.clone();
        std::thread::Builder::new()
            .name("hotspare-writer".into())
            .spawn(move || writer(sink, exe, job_rx, back_tx, w_shared))
            .expect("spawn writer thread");
        Engine {
            shim,
            heap,
            ranges,
            fresh: Vec::new(),
            pristine: Vec::new(),
            carry: Vec::new(),
            last_seq,
            term,
            lineage,
            exe,
            strategy,
            staging: Some(Vec::new()),
            staging_back,
            jobs,
            shared,
            image_path,
            lock_fd,
            remote,
        }
    }

    fn range_table(&self, full: bool) -> Vec<RangeEntry> {
        self.ranges
            .iter()
            .map(|r| RangeEntry {
                addr: r.start() as u64,
                len: r.len() as u64,
                complete: full || self.fresh.contains(r),
            })
            .collect()
    }

    /// Takes a checkpoint. `meta` is the encoded metadata; `full` forces every page.
    pub fn cpt(&mut self, meta: Vec<u8>, full: bool, coalesce: bool) -> Result<CptStats> {
        let mut staging = match self.staging.take() {
            Some(s) => s,
            None if coalesce => match self.staging_back.try_recv() {
                Ok(s) => s,
                Err(std::sync::mpsc::TryRecvError::Empty) => return self.coalesce(),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Err(writer_gone()),
            },
            None => self.staging_back.recv().map_err(|_| writer_gone())?,
        };
        // A new or reconnected spare gets a full image.
        let new_spare = self
            .remote
            .as_ref()
            .is_some_and(Remote::take_new_connection);
        let full = full
            || new_spare
            || self.last_seq == 0
            || self.shared.force_full.swap(false, Ordering::SeqCst);
        let seq = self.last_seq + 1;
        let base = if full { 0 } else { self.last_seq };
        let page = page_size();
        let t0 = Instant::now();
        let heap = self.heap;
        let mut query = Duration::ZERO;
        let captured = heap.with_allocator_locked(|| -> Result<_> {
            let mut dirty = self.shim.query()?;
            query = t0.elapsed();
            // Pages noted by coalesced calls since the last checkpoint belong in this one.
            for c in self.carry.drain(..) {
                if let Some(d) = dirty.ranges.iter_mut().find(|d| d.range == c.range) {
                    d.pages |= &c.pages;
                }
            }
            for (r, ever) in &mut self.pristine {
                if let Some(d) = dirty.ranges.iter().find(|d| d.range == *r) {
                    *ever |= &d.pages;
                }
            }
            let runs = self.runs_to_capture(&dirty, full);
            let bytes: usize = runs.iter().filter(|p| !p.zero).map(|p| p.len).sum();
            let strategy = self.choose(bytes);
            if strategy == Strategy::Fork {
                let begin = self.begin(seq, base, full, meta.clone());
                let (path, file) = ImageDir::create_wal_at(&self.image_path, seq)?;
                let _ = path;
                let fd: OwnedFd = file.into();
                let job = WriteStream::new(fd, encode_begin(&begin), &runs, seq, self.lock_fd);
                // The QUERY above is this checkpoint's: fork without a second one.
                let snapshot = self.shim.fork_with(dirty, job)?;
                return Ok((strategy, bytes, Some(snapshot), Vec::new()));
            }
            staging.clear();
            staging.reserve(bytes);
            let mut at = Vec::with_capacity(runs.len());
            for p in &runs {
                at.push(Captured {
                    addr: p.addr as u64,
                    offset: staging.len(),
                    len: p.len,
                    zero: p.zero,
                });
                if !p.zero {
                    // SAFETY: every run lies in a tracked range, which is mapped and readable.
                    staging.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(p.addr as *const u8, p.len)
                    });
                }
            }
            Ok((strategy, bytes, None, at))
        });
        let stopped = t0.elapsed();
        let (strategy, bytes, snapshot, at) = match captured {
            Ok(c) => c,
            Err(e) => {
                self.staging = Some(staging);
                // Whatever QUERY harvested is lost to this failed attempt: send everything next.
                self.shared.force_full.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        let job = match snapshot {
            Some(snapshot) => {
                self.staging = Some(staging);
                Job::Forked { seq, snapshot }
            }
            None => Job::Copied {
                begin: Box::new(self.begin(seq, base, full, meta)),
                runs: at,
                staging,
            },
        };
        self.jobs.send(job).map_err(|_| writer_gone())?;
        self.last_seq = seq;
        self.fresh.clear();
        Ok(CptStats {
            seq,
            stopped,
            query,
            pages: (bytes / page) as u64,
            bytes: bytes as u64,
            full,
            strategy,
            coalesced: false,
        })
    }

    /// The previous checkpoint is still in flight: start a new epoch and keep its pages for the
    /// next checkpoint. Memory stays bounded (one bit per page), nothing queues.
    fn coalesce(&mut self) -> Result<CptStats> {
        let t0 = Instant::now();
        let dirty = self.shim.query()?;
        let query = t0.elapsed();
        for (r, ever) in &mut self.pristine {
            if let Some(d) = dirty.ranges.iter().find(|d| d.range == *r) {
                *ever |= &d.pages;
            }
        }
        let pages = dirty.dirty_pages() as u64;
        for d in dirty.ranges {
            match self.carry.iter_mut().find(|c| c.range == d.range) {
                Some(c) => c.pages |= &d.pages,
                None => self.carry.push(d),
            }
        }
        Ok(CptStats {
            seq: 0,
            stopped: t0.elapsed(),
            query,
            pages,
            bytes: 0,
            full: false,
            strategy: self.strategy,
            coalesced: true,
        })
    }

    fn begin(&self, seq: u64, base: u64, full: bool, meta: Vec<u8>) -> Begin {
        Begin {
            format_version: FORMAT_VERSION,
            lineage: self.lineage,
            term: self.term,
            seq,
            base_seq: base,
            exe_id: self.exe.0,
            page_size: page_size() as u32,
            ranges: self.range_table(full),
            meta,
        }
    }

    /// The runs to capture: every page for a full checkpoint or a fresh range, else the dirty set.
    fn runs_to_capture(&self, dirty: &DirtySet, full: bool) -> Vec<Piece> {
        let whole: Vec<Range> = if full {
            self.ranges.clone()
        } else {
            self.fresh.clone()
        };
        let mut runs: Vec<Piece> = Vec::new();
        if !full {
            runs.extend(
                dirty
                    .ranges
                    .iter()
                    .filter(|rd| !self.fresh.contains(&rd.range))
                    .flat_map(|rd| rd.runs())
                    .map(|(addr, len)| Piece {
                        addr,
                        len,
                        zero: false,
                    }),
            );
        }
        for r in whole {
            let ever = self.pristine.iter().find(|(p, _)| *p == r).map(|(_, e)| e);
            whole_range(r, ever, &mut runs);
        }
        runs
    }

    /// Auto: copying costs ~0.12 ms per MiB here (scattered 4 KiB pages, docs/performance.md);
    /// a fork costs ~27 ms per GiB of the *whole* process's resident memory. Take the cheaper.
    fn choose(&self, bytes: usize) -> Strategy {
        match self.strategy {
            Strategy::Auto => {
                let copy_ms = bytes as f64 / (1 << 20) as f64 * 0.12;
                // No fork is cheaper than ~0.5 ms: skip reading /proc for small checkpoints.
                if copy_ms < 0.5 {
                    return Strategy::Copy;
                }
                let fork_ms = resident_bytes() as f64 / (1u64 << 30) as f64 * 27.0 + 0.2;
                if copy_ms <= fork_ms {
                    Strategy::Copy
                } else {
                    Strategy::Fork
                }
            }
            s => s,
        }
    }
}

fn writer_gone() -> Error {
    Error::CheckpointFailed {
        seq: 0,
        why: "the checkpoint writer thread is gone".into(),
    }
}

/// Resident set size of this process, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page_size() as u64)
}

/// Where checkpoints go: the local image directory, or a spare (the directory then only spools
/// each stream until the spare has acknowledged it).
pub(crate) enum Sink {
    /// Applied to the image directory.
    Local(ImageDir),
    /// Sent to a spare.
    Remote {
        /// Spool for streams in flight (`wal/<seq>.tmp`, never applied locally).
        spool: ImageDir,
        /// The link.
        remote: Remote,
    },
}

impl Sink {
    /// Where `config` sends checkpoints: the spare when one is configured (starting the link to
    /// it), else the image directory.
    pub(crate) fn for_config(
        config: &crate::Config,
        image: ImageDir,
        exe: &ExeId,
        lineage: [u8; 16],
    ) -> Result<Sink> {
        let Some(addr) = &config.spare else {
            return Ok(Sink::Local(image));
        };
        let key_file = config
            .key_file
            .as_ref()
            .ok_or_else(|| Error::Config("a spare needs key_file (HOTSPARE_KEY_FILE)".into()))?;
        let key =
            crate::replica::wire::load_key(key_file).map_err(|e| Error::Config(e.to_string()))?;
        let on_fence_exit = match config.on_fence.as_str() {
            "exit" => true,
            "report" => false,
            other => {
                return Err(Error::Config(format!(
                    "on_fence must be 'report' or 'exit', not '{other}'"
                )))
            }
        };
        let remote = crate::replica::sender::Remote::start(crate::replica::RemoteConfig {
            addr: addr.clone(),
            key,
            heartbeat: std::time::Duration::from_millis(config.heartbeat_ms.max(1)),
            lease: std::time::Duration::from_millis(config.lease_ms.max(1)),
            ack_timeout: std::time::Duration::from_millis(config.ack_timeout_ms.max(1)),
            exit_when_fenced: on_fence_exit,
            lineage,
            term: config.term,
            exe_id: exe.0,
            status_file: Some(image.path().join("status")),
            ack: config.durability,
        })
        .map_err(|e| Error::Config(format!("starting the link to the spare: {e}")))?;
        Ok(Sink::Remote {
            spool: image,
            remote,
        })
    }

    fn dir(&self) -> &ImageDir {
        match self {
            Sink::Local(d) | Sink::Remote { spool: d, .. } => d,
        }
    }

    /// Makes the fully written `wal/<seq>.tmp` durable: applied locally, or acknowledged by
    /// the spare.
    fn deliver(&mut self, seq: u64, exe: &ExeId) -> Result<(), String> {
        match self {
            Sink::Local(image) => image
                .commit_wal(seq, Some(exe))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Sink::Remote { spool, remote } => {
                let path = spool.wal_path(seq, "tmp");
                let r = remote.send_file(&path, seq);
                let _ = std::fs::remove_file(&path);
                r
            }
        }
    }
}

fn writer(
    mut sink: Sink,
    exe: ExeId,
    jobs: Receiver<Job>,
    back: Sender<Vec<u8>>,
    shared: Arc<Shared>,
) {
    for job in jobs {
        let (seq, result, staging) = match job {
            Job::Copied {
                begin,
                runs,
                staging,
            } => {
                let seq = begin.seq;
                let r = spool_copied(sink.dir(), &begin, &runs, &staging)
                    .and_then(|()| sink.deliver(seq, &exe));
                (seq, r, Some(staging))
            }
            Job::Forked { seq, snapshot } => {
                let r = match snapshot.wait() {
                    Ok(o) if o.is_success() => sink.deliver(seq, &exe),
                    Ok(o) => Err(format!("the cptfork child ended with {o:?}")),
                    Err(e) => Err(e.to_string()),
                };
                (seq, r, None)
            }
        };
        if result.is_err() {
            // A stream that failed before it was delivered is never completed: drop its spool.
            let _ = sink.dir().remove_spool(seq);
        }
        {
            let mut d = shared.durable.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(()) => d.seq = seq,
                Err(why) => {
                    shared.force_full.store(true, Ordering::SeqCst);
                    d.failed = Some((seq, why));
                }
            }
        }
        shared.changed.notify_all();
        if let Some(s) = staging {
            if back.send(s).is_err() {
                return;
            }
        }
    }
}

/// Writes a Copy capture as a stream to `wal/<seq>.tmp`.
fn spool_copied(
    dir: &ImageDir,
    begin: &Begin,
    runs: &[Captured],
    staging: &[u8],
) -> Result<(), String> {
    let (path, file) = dir.create_wal(begin.seq).map_err(|e| e.to_string())?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write_stream(
        &mut w,
        begin,
        runs.iter().map(|c| {
            if c.zero {
                Run::Zero(c.addr, c.len as u64)
            } else {
                Run::Data(c.addr, &staging[c.offset..c.offset + c.len])
            }
        }),
    )
    .and_then(|_| w.flush())
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// The Fork strategy's child job: writes the whole checkpoint stream (BEGIN prepared by the
/// parent; PAGES and END encoded in the child, allocation-free) to the WAL file and `fsync`s it.
pub(crate) struct WriteStream {
    fd: Option<OwnedFd>,
    raw: i32,
    begin: Vec<u8>,
    runs: Vec<Piece>,
    seq: u64,
    /// The image directory's lock, inherited by the child: closed there first, so that a
    /// child that outlives a killed parent does not keep the directory locked (-1: none).
    lock_fd: i32,
}

impl WriteStream {
    fn new(fd: OwnedFd, begin: Vec<u8>, runs: &[Piece], seq: u64, lock_fd: i32) -> WriteStream {
        WriteStream {
            raw: fd.as_raw_fd(),
            fd: Some(fd),
            begin,
            runs: runs.to_vec(),
            seq,
            lock_fd,
        }
    }
}

/// `write(2)` all of `parts` (a few iovecs), resuming after partial writes; async-signal-safe.
fn write_all_v(fd: i32, parts: &[&[u8]]) -> Result<(), i32> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 3];
        let mut n = 0;
        for (k, p) in parts[idx..].iter().enumerate().take(3) {
            let skip = if k == 0 { off } else { 0 };
            iov[k] = libc::iovec {
                iov_base: p[skip..].as_ptr() as *mut _,
                iov_len: p.len() - skip,
            };
            n += 1;
        }
        // SAFETY: the iovecs describe live, readable slices.
        let w = unsafe { libc::writev(fd, iov.as_ptr(), n) };
        if w < 0 {
            // SAFETY: reading this thread's errno.
            let e = unsafe { *libc::__errno_location() };
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        let mut w = w as usize;
        while idx < parts.len() && w >= parts[idx].len() - off {
            w -= parts[idx].len() - off;
            idx += 1;
            off = 0;
        }
        off += w;
    }
    Ok(())
}

// SAFETY: `run` reads memory, computes CRCs on the stack, and calls writev/fsync: all
// async-signal-safe; everything it needs was allocated by the parent before the fork.
unsafe impl ChildJob for WriteStream {
    fn run(&self) -> i32 {
        if self.lock_fd >= 0 {
            // SAFETY: close is async-signal-safe; the descriptor is this child's copy.
            unsafe { libc::close(self.lock_fd) };
        }
        let page = page_size();
        if let Err(e) = write_all_v(self.raw, &[&self.begin]) {
            return e.clamp(1, 255);
        }
        let mut end = End {
            seq: self.seq,
            ..End::default()
        };
        for &Piece { addr, len, zero } in &self.runs {
            if zero {
                let (a, l) = ((addr as u64).to_le_bytes(), (len as u64).to_le_bytes());
                let h = frame_header(FrameKind::Zero, &[&a, &l]);
                if let Err(e) = write_all_v(self.raw, &[&h, &a, &l]) {
                    return e.clamp(1, 255);
                }
                end.digest = crc32c::crc32c_append(crc32c::crc32c_append(end.digest, &a), &l);
                end.page_frames += 1;
                end.pages += (len / page) as u64;
                continue;
            }
            let mut at = 0;
            while at < len {
                let n = (len - at).min(PAGES_PER_FRAME * page);
                let a = ((addr + at) as u64).to_le_bytes();
                // SAFETY: the run lies in tracked memory, frozen in this child.
                let data = unsafe { std::slice::from_raw_parts((addr + at) as *const u8, n) };
                let h = frame_header(FrameKind::Pages, &[&a, data]);
                if let Err(e) = write_all_v(self.raw, &[&h, &a, data]) {
                    return e.clamp(1, 255);
                }
                end.digest = crc32c::crc32c_append(crc32c::crc32c_append(end.digest, &a), data);
                end.page_frames += 1;
                end.pages += (n / page) as u64;
                at += n;
            }
        }
        let e = end.encode();
        let h = frame_header(FrameKind::End, &[&e]);
        if let Err(err) = write_all_v(self.raw, &[&h, &e]) {
            return err.clamp(1, 255);
        }
        // SAFETY: fsync is async-signal-safe.
        if unsafe { libc::fsync(self.raw) } != 0 {
            // SAFETY: errno of this thread.
            return unsafe { *libc::__errno_location() }.clamp(1, 255);
        }
        0
    }

    fn after_fork_in_parent(&mut self) {
        self.fd = None;
    }
}
