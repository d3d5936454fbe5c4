//! `cpt()`: capture the dirty pages (Copy or Fork) and hand them to the writer thread
//! ([`sink`]), which makes them a durable checkpoint — applied to the local image, or sent to
//! the spare and acknowledged there.
//!
//! Checkpoints are pipelined: the next capture does not wait for the previous checkpoint to
//! be durable, only for a free staging buffer (the writer returns it as soon as it has encoded
//! the stream) and for fewer than `pipeline_depth` checkpoints in flight, so a program that
//! checkpoints faster than the spare acknowledges waits in `cpt()` instead of queueing memory
//! without bound. Completions arrive in [`commit`] (tickets). A failed checkpoint makes the
//! next one full, so no page of it is lost.

mod commit;
mod fork_job;
mod gate;
mod local;
mod sink;

pub use commit::{CommitNotifier, Ticket, TicketState};
pub(crate) use commit::{Completion, Shared};
pub(crate) use fork_job::WriteStream;
pub use gate::{Op, OutputGate, RoundNeed};
pub(crate) use sink::Sink;

use crate::config::Strategy;
use crate::error::{Error, Result};
use crate::heap::Heap;
use crate::identity::ExeId;
use crate::image::format::{encode_begin, Begin, RangeEntry};
use crate::image::{ImageDir, FORMAT_VERSION};
use crate::replica::sender::Remote;
use kmod_shim::{page_size, DirtySet, PageBits, Range, Shim, Snapshot};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The deepest pipeline `pipeline_depth` may ask for.
pub const MAX_IN_FLIGHT: u64 = 64;
/// Staging buffers (one per capture being encoded), at most.
const MAX_STAGING: usize = 2;

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

/// Tells the tracker that nothing of the heap above its allocator's arena was ever written, so
/// that the walk stops there (`Heap::written_end`). Named by the heap's own range: a resumed
/// image whose heap lies inside a larger tracked range gets no promise (a whole walk), never
/// one about another range.
fn promise_heap_end(shim: &mut Shim, heap: Heap) {
    if let Ok(r) = Range::new(heap.base(), heap.size()) {
        shim.set_written_end(r, heap.written_end());
    }
}

/// Marks the pages of `dirty` in `ever`. Bit by bit, not a bitwise OR of the two maps: a
/// checkpoint's dirty pages are few and the maps span the whole reservation (32 KiB each for
/// 1 GiB), whose OR was ~8 % of the serving thread's time under serial every-write load.
fn note_written(ever: &mut PageBits, dirty: &PageBits) {
    for i in dirty.iter_ones() {
        ever.set(i, true);
    }
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

/// A captured checkpoint on its way to the writer, with the one report of how it ends.
enum Job {
    Copied {
        begin: Box<Begin>,
        runs: Vec<Captured>,
        staging: Vec<u8>,
        done: Completion,
    },
    Forked {
        seq: u64,
        base_seq: u64,
        snapshot: Snapshot<WriteStream>,
        done: Completion,
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
    /// Checkpoints in flight at most.
    pub depth: u64,
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
    /// Checkpoints in flight at most (`Config::pipeline_depth`).
    depth: u64,
    /// Free staging buffers; buffers in use come back on `staging_back`.
    staging: Vec<Vec<u8>>,
    /// Staging buffers that exist (free or in use).
    staging_made: usize,
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
            depth,
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
            .spawn(move || {
                crate::global::library_thread();
                sink::writer(sink, exe, job_rx, back_tx, w_shared)
            })
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
            depth: depth.clamp(1, MAX_IN_FLIGHT),
            staging: Vec::new(),
            staging_made: 0,
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
        // At most MAX_IN_FLIGHT checkpoints between capture and durability: wait for the
        // oldest (or, coalescing, note the pages for later).
        {
            let mut d = self.shared.lock();
            while d.in_flight() >= self.depth {
                if coalesce {
                    drop(d);
                    return self.coalesce();
                }
                d = self
                    .shared
                    .changed
                    .wait(d)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        let mut staging = match self.take_staging(coalesce)? {
            Some(s) => s,
            None => return self.coalesce(),
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
        if let Some(r) = &self.remote {
            // Before the first page is read: a switchover that stopped serving before this
            // may end with this checkpoint.
            r.capture_starting(seq);
        }
        let page = page_size();
        crate::probe::mark(seq, crate::probe::Stage::Enter);
        let t0 = Instant::now();
        let heap = self.heap;
        let mut query = Duration::ZERO;
        let captured = heap.with_allocator_locked(|| -> Result<_> {
            // Nothing above the allocator's arena was ever written: the walk stops there.
            promise_heap_end(&mut self.shim, heap);
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
                    note_written(ever, &d.pages);
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
        crate::probe::mark(seq, crate::probe::Stage::Stopped);
        let (strategy, bytes, snapshot, at) = match captured {
            Ok(c) => c,
            Err(e) => {
                self.staging.push(staging);
                // Whatever QUERY harvested is lost to this failed attempt: send everything next.
                self.shared.force_full.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        if let Some(r) = &self.remote {
            r.record_stop(stopped);
        }
        self.shared.lock().issue(seq);
        let done = Completion::new(self.shared.clone(), seq);
        let job = match snapshot {
            Some(snapshot) => {
                self.staging.push(staging);
                Job::Forked {
                    seq,
                    base_seq: base,
                    snapshot,
                    done,
                }
            }
            None => Job::Copied {
                begin: Box::new(self.begin(seq, base, full, meta)),
                runs: at,
                staging,
                done,
            },
        };
        // A writer that is gone drops the job, and with it the completion: the ticket fails.
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

    /// Takes an incremental checkpoint only if that needs no waiting: fewer than `depth`
    /// checkpoints in flight and a staging buffer free; else `None` (nothing is captured, and a
    /// checkpoint in flight will end and wake the commit notifiers). Checked under the engine's
    /// lock, which every capture holds, so no other caller can fill the pipeline in between.
    pub fn try_cpt(&mut self, meta: Vec<u8>) -> Result<Option<CptStats>> {
        if self.shared.lock().in_flight() >= self.depth {
            return Ok(None);
        }
        while let Ok(s) = self.staging_back.try_recv() {
            self.staging.push(s);
        }
        if self.staging.is_empty() && self.staging_made >= MAX_STAGING {
            return Ok(None);
        }
        self.cpt(meta, false, false).map(Some)
    }

    /// A free staging buffer: a returned one, a new one while fewer than [`MAX_STAGING`]
    /// exist, else (coalescing) `None` or (not coalescing) the next one the writer returns.
    fn take_staging(&mut self, coalesce: bool) -> Result<Option<Vec<u8>>> {
        while let Ok(s) = self.staging_back.try_recv() {
            self.staging.push(s);
        }
        if let Some(s) = self.staging.pop() {
            return Ok(Some(s));
        }
        if self.staging_made < MAX_STAGING {
            self.staging_made += 1;
            return Ok(Some(Vec::new()));
        }
        if coalesce {
            return Ok(None);
        }
        self.staging_back
            .recv()
            .map(Some)
            .map_err(|_| writer_gone())
    }

    /// The previous checkpoint is still in flight: start a new epoch and keep its pages for the
    /// next checkpoint. Memory stays bounded (one bit per page), nothing queues.
    fn coalesce(&mut self) -> Result<CptStats> {
        let t0 = Instant::now();
        // A block allocated after this read is written after it too: its page stays written
        // in the page tables and is reported by the next harvest.
        promise_heap_end(&mut self.shim, self.heap);
        let dirty = self.shim.query()?;
        let query = t0.elapsed();
        for (r, ever) in &mut self.pristine {
            if let Some(d) = dirty.ranges.iter().find(|d| d.range == *r) {
                note_written(ever, &d.pages);
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
