//! The spare's disk work, off the event loop, on three threads:
//!
//! ```text
//! event loop ─ DiskOp ─▶ persister ── SyncJob (in order) ─▶ syncer ── Apply ──▶ applier
//!     ▲   spool in memory, resolve deltas,     write, fsync, rename,      data files
//!     │   validate → DiskDone::Verified        directory fsync →          (batched)
//!     │                                        Persisted, TermSaved
//!     └──────────────────────────── DiskDone + wake ◀───────────────────────┘
//! ```
//!
//! The **persister** validates each stream from memory as soon as it is complete and reports
//! `Verified` (a primary that asked for it is acknowledged on receipt), then hands it to the
//! **syncer**, which makes streams durable one after the other. So an acknowledgement on
//! receipt never waits behind the `fsync` of the checkpoint before it (it did, when one thread
//! did both: 0.5 ms of a 0.6 ms round trip, serially). Everything whose order matters against
//! durability (Persisted answers, refusals, the term file, applies) goes through the syncer's
//! queue. A stream made durable only after the next one was validated on top of it: if that
//! fails, the syncer refuses every later stream until the persister has started again from
//! what is durable. The **applier** writes durable checkpoints into the data files, so an
//! acknowledgement never waits for a large apply. Stream bytes held for the persister and the
//! syncer are bounded: past the limit the event loop refuses the stream being sent (the
//! primary sees a Nack and tries again) instead of growing without limit.

use crate::image::delta::{self, BasePages};
use crate::image::{Begin, ImageDir, LineagePolicy, RangeEntry, Run, Tip as ImageTip};
use hotspare_proto::spare::{DiskDone, DiskOp, Tip};
use hotspare_proto::StreamHeader;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of stream data held (queued for the persister, or validated and waiting for the
/// syncer) before the event loop refuses new streams.
pub(super) const QUEUE_LIMIT: u64 = 64 << 20;

/// Above this many bytes held (a quarter of [`QUEUE_LIMIT`]) a validated stream is not reported
/// `Verified`: a primary that asked to be acknowledged on receipt is acknowledged once the
/// stream is durable instead. Acknowledged on receipt, a primary can send faster than the
/// syncer makes streams durable (measured: a syncer paying five file-system operations per
/// checkpoint reached [`QUEUE_LIMIT`] in ~1,000 checkpoints, and the refusals closed the
/// program's clients); waiting for durability while the backlog is high slows the primary to
/// the disk's pace instead, and the receipt acknowledgements resume once the syncer catches up.
pub(super) const RECEIPT_ACK_LIMIT: u64 = QUEUE_LIMIT / 4;

/// Durable checkpoints are applied to the data files at most this often while the primary is
/// healthy ([`Disk::urgent`] lifts it).
const APPLY_EVERY: Duration = Duration::from_millis(25);

/// The handle the event loop holds.
pub(super) struct Disk {
    ops: mpsc::Sender<DiskOp>,
    /// Stream bytes queued and not yet written, or held in memory and not yet durable.
    pub(super) queued: Arc<AtomicU64>,
    /// Set by the event loop while a takeover may be near (no primary, or one silent for
    /// half the detection time): applies then run at once, since a takeover waits for them.
    pub(super) urgent: Arc<AtomicBool>,
    /// Flushes of the log the syncer made (one per group of streams), for the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) flushes: Arc<AtomicU64>,
    /// The persister, the syncer and the applier, joined by [`Disk::close`].
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Disk {
    /// Ends the three threads once they have done what was queued, and waits for them: the image
    /// directory (and its lock) is closed when this returns, so another process may open it.
    pub(super) fn close(self) {
        drop(self.ops);
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Queues an operation; its result arrives on the `done` channel given to [`start`].
    pub(super) fn submit(&self, op: DiskOp) {
        if let DiskOp::Spool { bytes, .. } = &op {
            self.queued.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        // The workers live as long as the loop; a send can only fail while shutting down.
        let _ = self.ops.send(op);
    }
}

/// Converts the image directory's tip to the protocol's.
pub(super) fn proto_tip(t: &ImageTip) -> Tip {
    Tip {
        lineage: t.lineage,
        seq: t.seq,
        term: t.term,
        exe_id: t.exe_id,
    }
}

/// Writes the term file: `0600`, written whole, `fsync`ed, renamed, directory `fsync`ed.
pub(super) fn write_term(dir: &Path, term: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join("term.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{term}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("term"))?;
    File::open(dir)?.sync_all()
}

/// Reads the term file. Missing: 0 (a new directory). Present but unreadable or not a number:
/// an error — reading it as 0 would let an old primary back in.
pub(super) fn read_term(dir: &Path) -> Result<u64, String> {
    let p = dir.join("term");
    match std::fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{}: not a term number: {:?}", p.display(), s.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

struct Spool {
    header: StreamHeader,
    lineage: [u8; 16],
    term: u64,
    /// `wal/<seq>.tmp`, created only once the stream outgrows [`COPY_LIMIT`] (`None`: all of
    /// it is in `copy`).
    file: Option<Result<File, String>>,
    /// The stream while it is at most [`COPY_LIMIT`]: validated from memory, written by the
    /// syncer (`None`: too large, in the file).
    copy: Option<Vec<u8>>,
    /// The bytes of `copy`, counted in [`Disk::queued`] until the stream is durable or given up.
    held: Held,
}

/// Stream bytes held in memory and not yet durable, counted in [`Disk::queued`] (the event
/// loop's back-pressure) for as long as this lives: a stream validated in memory waits in the
/// syncer's queue, which a slow disk would otherwise let grow without bound while the primary
/// is acknowledged on receipt.
struct Held {
    bytes: u64,
    queued: Arc<AtomicU64>,
}

impl Held {
    fn release(&mut self) {
        self.queued
            .fetch_sub(std::mem::take(&mut self.bytes), Ordering::SeqCst);
    }

    /// Counts `bytes` instead (a delta's resolved copy is larger than its wire stream).
    fn set(&mut self, bytes: u64) {
        self.queued.fetch_add(bytes, Ordering::SeqCst);
        self.release();
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// The persister's instructions to the syncer, carried out in order.
enum SyncJob {
    /// Make the validated checkpoint `seq` durable; `bytes`: the stream, unless the spool file
    /// already holds it; `keep_lineage`: drop WAL files of other lineages first.
    Persist {
        seq: u64,
        bytes: Option<Vec<u8>>,
        keep_lineage: Option<[u8; 16]>,
        tip: ImageTip,
        begin: Box<Begin>,
        /// Released once the stream is durable or refused.
        held: Held,
    },
    /// An answer that must not overtake what is queued before it (a refused Persist).
    Answer(DiskDone),
    SaveTerm(u64),
    Apply,
    /// Answered once everything queued before it is done.
    Barrier(mpsc::Sender<()>),
    /// The persister has started again from what is durable: make streams durable again.
    Resume,
}

/// What the syncer has made durable, for the persister to start again from after a failure.
struct Durable {
    tip: Option<ImageTip>,
    base: Option<Begin>,
    /// A stream could not be made durable: later ones were validated on a tip that is not.
    failed: bool,
}

/// Streams up to this size are validated from a copy in memory (the small checkpoints of
/// output commit, where re-reading the file twice cost more than the rest of the persist).
const COPY_LIMIT: usize = 8 << 20;

/// Starts the persister and the applier over `image`; results are sent on `done`, and `wake`
/// is called after each so the event loop notices.
pub(super) fn start(
    image: ImageDir,
    done: mpsc::Sender<DiskDone>,
    wake: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<Disk> {
    start_with(image, done, wake, RECEIPT_ACK_LIMIT)
}

/// [`start`], with the backlog above which `Verified` is withheld.
fn start_with(
    image: ImageDir,
    done: mpsc::Sender<DiskDone>,
    wake: Arc<dyn Fn() + Send + Sync>,
    receipt_ack_limit: u64,
) -> std::io::Result<Disk> {
    let root: PathBuf = image.path().to_path_buf();
    let tip = image.tip();
    let applied: Applied = Arc::new(Mutex::new(applied_of(&image)));
    // The applier owns the directory handle that applies; a persister that must replace a
    // lineage first finishes every apply under the same lock.
    let applier_dir = Arc::new(Mutex::new(image));
    let (ops, rx) = mpsc::channel::<DiskOp>();
    let (apply_tx, apply_rx) = mpsc::channel::<()>();
    let queued = Arc::new(AtomicU64::new(0));
    let urgent = Arc::new(AtomicBool::new(false));
    let service = super::super::log::service();
    let applier = {
        let (dir, done, wake) = (applier_dir.clone(), done.clone(), wake.clone());
        let urgent = urgent.clone();
        let applied = applied.clone();
        let service = service.clone();
        std::thread::Builder::new()
            .name("hotspare-applier".into())
            .spawn(move || {
                super::super::log::set_service(service);
                let mut last: Option<Instant> = None;
                // One answer per Apply asked for: the core counts them (it asks for one at a
                // time, so nothing is coalesced here).
                while apply_rx.recv().is_ok() {
                    // Applies come at most every APPLY_EVERY while the primary is healthy, so
                    // that a stream of small checkpoints costs one apply (and its fsyncs) per
                    // batch instead of one each; at once when a takeover may be near.
                    if let Some(at) = last {
                        let due = at + APPLY_EVERY;
                        while !urgent.load(Ordering::SeqCst) {
                            let now = Instant::now();
                            if now >= due {
                                break;
                            }
                            std::thread::sleep((due - now).min(Duration::from_millis(1)));
                        }
                    }
                    last = Some(Instant::now());
                    let r = {
                        let mut d = dir.lock().unwrap_or_else(|p| p.into_inner());
                        let r = d.apply_pending().map_err(|e| e.to_string());
                        *applied.lock().unwrap_or_else(|p| p.into_inner()) = applied_of(&d);
                        r
                    };
                    if done.send(DiskDone::Applied(r)).is_err() {
                        return;
                    }
                    wake();
                }
            })?
    };
    let durable = Arc::new(Mutex::new(Durable {
        tip: tip.clone(),
        base: None,
        failed: false,
    }));
    let (sync_tx, sync_rx) = mpsc::channel::<SyncJob>();
    let flushes = Arc::new(AtomicU64::new(0));
    let syncer = {
        let (durable, done, wake) = (durable.clone(), done.clone(), wake.clone());
        // Shares with the applier's handle how far the log is durable.
        let syncer_dir = applier_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attach_shared()
            .map_err(std::io::Error::other)?;
        let service = service.clone();
        let flushes = flushes.clone();
        std::thread::Builder::new()
            .name("hotspare-syncer".into())
            .spawn(move || {
                super::super::log::set_service(service);
                run_syncer(syncer_dir, sync_rx, apply_tx, &durable, done, wake, flushes)
            })?
    };
    let q = queued.clone();
    let persister = std::thread::Builder::new()
        .name("hotspare-persister".into())
        .spawn(move || {
            super::super::log::set_service(service);
            // Pages of streams durable before this persister started are known only to the
            // data files once those streams are applied.
            let cache = PageCache {
                lineage: tip.as_ref().map(|t| t.lineage),
                uncached_upto: tip.as_ref().map_or(0, |t| t.seq),
                ..PageCache::default()
            };
            let persister = Persister {
                root,
                tip,
                spool: None,
                applier_dir,
                base: None,
                cache,
                applied,
                sync: sync_tx,
                durable,
                checker: None,
                receipt_ack_limit,
                receipt_acks_withheld: false,
            };
            persister.run(rx, done, wake, q)
        })?;
    Ok(Disk {
        ops,
        queued,
        urgent,
        flushes,
        threads: vec![persister, syncer, applier],
    })
}

/// Waits until the syncer has done everything queued so far.
fn drain(sync: &mpsc::Sender<SyncJob>) {
    let (tx, rx) = mpsc::channel();
    if sync.send(SyncJob::Barrier(tx)).is_ok() {
        let _ = rx.recv();
    }
}

/// Why the syncer could not make a stream durable or save the term.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    /// A stream validated on top of one whose durability failed.
    #[error("checkpoint {0}: an earlier checkpoint could not be made durable")]
    EarlierFailed(u64),
    /// The image directory (the log, a WAL file) failed.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The term file could not be written.
    #[error("saving term {term}: {source}")]
    Term {
        /// The term.
        term: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A stream appended to the log, waiting for the group's flush.
struct Appended {
    seq: u64,
    tip: ImageTip,
    begin: Box<Begin>,
    _held: Held,
}

/// The syncer's state: the directory handle shared with the applier, the log's writer, and
/// the streams appended since the last flush.
struct Syncer<'a> {
    root: &'a Path,
    dir: ImageDir,
    log: Option<crate::image::log::Writer>,
    /// A stream could not be made durable: refuse every later one until `Resume`.
    broken: bool,
    group: Vec<Appended>,
    durable: &'a Mutex<Durable>,
    done: mpsc::Sender<DiskDone>,
    wake: Arc<dyn Fn() + Send + Sync>,
    /// Flushes made (one per group), for the tests.
    flushes: Arc<AtomicU64>,
}

/// Most small streams made durable by one flush: bounds how long the first of a group waits
/// for its answer while more keep arriving.
const GROUP_MAX: usize = 128;

/// The syncer: carries out the persister's [`SyncJob`] instructions in order. **Group fsync:**
/// it takes jobs as long as the queue has any; consecutive Persists of small streams are appended
/// to the log and made durable by one `fdatasync`, then each is answered in order. Any other
/// job (an answer, the term, an apply, a large stream's WAL file) first flushes what was
/// appended before it, so nothing overtakes a Persist queued before it.
fn run_syncer(
    syncer_dir: ImageDir,
    rx: mpsc::Receiver<SyncJob>,
    apply: mpsc::Sender<()>,
    durable: &Mutex<Durable>,
    done: mpsc::Sender<DiskDone>,
    wake: Arc<dyn Fn() + Send + Sync>,
    flushes: Arc<AtomicU64>,
) {
    let root = syncer_dir.path().to_path_buf();
    let mut s = Syncer {
        root: &root,
        dir: syncer_dir,
        log: None,
        broken: false,
        group: Vec::new(),
        durable,
        done,
        wake,
        flushes,
    };
    while let Ok(first) = rx.recv() {
        // Jobs that arrive while earlier ones are carried out join the group, up to
        // GROUP_MAX appended streams: the flush waits only for an empty queue or a full group.
        let mut next = Some(first);
        while let Some(job) = next {
            if !s.job(job, &apply) {
                return;
            }
            next = if s.group.len() < GROUP_MAX {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !s.flush_group() {
            return;
        }
    }
    s.flush_group();
}

impl Syncer<'_> {
    /// Sends an answer; `false` once the event loop is gone.
    fn send(&self, d: DiskDone) -> bool {
        if self.done.send(d).is_err() {
            return false;
        }
        (self.wake)();
        true
    }

    /// One job; `false` once the event loop is gone.
    fn job(&mut self, job: SyncJob, apply: &mpsc::Sender<()>) -> bool {
        let SyncJob::Persist {
            seq,
            bytes,
            keep_lineage,
            tip,
            begin,
            held,
        } = job
        else {
            if !self.flush_group() {
                return false;
            }
            let answer = match job {
                SyncJob::Persist { .. } => unreachable!("matched above"),
                SyncJob::Answer(d) => d,
                SyncJob::SaveTerm(term) => DiskDone::TermSaved {
                    term,
                    result: write_term(self.root, term)
                        .map_err(|source| SyncError::Term { term, source }.to_string()),
                },
                SyncJob::Apply => {
                    // The applier answers it.
                    let _ = apply.send(());
                    return true;
                }
                SyncJob::Barrier(tx) => {
                    let _ = tx.send(());
                    return true;
                }
                SyncJob::Resume => {
                    self.broken = false;
                    return true;
                }
            };
            return self.send(answer);
        };
        if self.broken {
            let _ = std::fs::remove_file(self.root.join("wal").join(format!("{seq:020}.tmp")));
            drop(held);
            return self.flush_group()
                && self.send(DiskDone::Persisted {
                    seq,
                    result: Err(SyncError::EarlierFailed(seq).to_string()),
                });
        }
        let small = bytes
            .as_ref()
            .is_some_and(|b| b.len() <= crate::image::log::RECORD_MAX);
        let lineage = begin.lineage;
        let r = (|| -> Result<(), SyncError> {
            if keep_lineage.is_some() || !small {
                // Before a new chain or a WAL file of its own, what was appended is durable
                // (or refused). An event loop that is gone is noticed at the next answer.
                self.flush_group();
            }
            if self.log.is_none() {
                self.log = Some(self.dir.log_writer()?);
            }
            let log = self.log.as_mut().expect("made above");
            if let Some(keep) = keep_lineage {
                // A new lineage replaces the image: no record of the old one may count once a
                // stream of the new one is durable.
                log.start_new_chain()?;
                self.dir.supersede_lineages(keep, seq)?;
            }
            if small {
                log.append(seq, lineage, bytes.as_deref().expect("small"))?;
            } else {
                self.dir.commit_checked_wal(seq, bytes.as_deref(), None)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) if small => {
                self.group.push(Appended {
                    seq,
                    tip,
                    begin,
                    _held: held,
                });
                true
            }
            Ok(()) => {
                drop(held);
                let out = proto_tip(&tip);
                self.durable_done(tip, *begin);
                self.send(DiskDone::Persisted {
                    seq,
                    result: Ok(out),
                })
            }
            Err(e) => {
                // Whatever was appended with it is abandoned by the log too.
                let group = std::mem::take(&mut self.group);
                self.fail();
                drop(held);
                let why = e.to_string();
                group.into_iter().all(|a| {
                    self.send(DiskDone::Persisted {
                        seq: a.seq,
                        result: Err(why.clone()),
                    })
                }) && self.send(DiskDone::Persisted {
                    seq,
                    result: Err(why),
                })
            }
        }
    }

    /// A stream is durable: the persister would start again from it after a failure.
    fn durable_done(&self, tip: ImageTip, begin: Begin) {
        let mut g = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        g.tip = Some(tip);
        g.base = Some(begin);
    }

    /// A stream could not be made durable: every later one is refused until the persister
    /// has started again from what is durable.
    fn fail(&mut self) {
        self.broken = true;
        self.durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed = true;
    }

    /// Makes every appended stream durable with one `fdatasync` and answers each, in order
    /// (all refused if the flush fails). `false` once the event loop is gone.
    fn flush_group(&mut self) -> bool {
        if self.group.is_empty() {
            return true;
        }
        let group = std::mem::take(&mut self.group);
        let r = self.log.as_mut().map_or(Ok(()), |l| l.flush());
        self.flushes.fetch_add(1, Ordering::SeqCst);
        match r {
            Ok(()) => group.into_iter().all(|a| {
                let out = proto_tip(&a.tip);
                self.durable_done(a.tip, *a.begin);
                self.send(DiskDone::Persisted {
                    seq: a.seq,
                    result: Ok(out),
                })
            }),
            Err(e) => {
                self.fail();
                let why = SyncError::from(e).to_string();
                group.into_iter().all(|a| {
                    self.send(DiskDone::Persisted {
                        seq: a.seq,
                        result: Err(why.clone()),
                    })
                })
            }
        }
    }
}
struct Persister {
    root: PathBuf,
    tip: Option<ImageTip>,
    spool: Option<Spool>,
    applier_dir: Arc<Mutex<ImageDir>>,
    /// The whole BEGIN of the last stream this persister made durable (the tip): what a BASED
    /// header is resolved against. `None` until one is: a wire stream is then refused.
    base: Option<Begin>,
    /// Pages of recent streams, for resolving deltas without waiting for the applier.
    cache: PageCache,
    /// Lineage and sequence of the image's manifest, as the applier last left it.
    applied: Applied,
    /// The syncer's queue.
    sync: mpsc::Sender<SyncJob>,
    /// What the syncer has made durable.
    durable: Arc<Mutex<Durable>>,
    /// A handle on the image directory for validating streams (attached at the first).
    checker: Option<ImageDir>,
    /// Held bytes above which `Verified` is withheld ([`RECEIPT_ACK_LIMIT`]).
    receipt_ack_limit: u64,
    /// `Verified` is being withheld: the syncer is more than `receipt_ack_limit` behind.
    receipt_acks_withheld: bool,
}

/// The manifest's lineage and sequence (what the data files hold), shared by the applier and
/// the persister.
type Applied = Arc<Mutex<Option<([u8; 16], u64)>>>;

fn applied_of(d: &ImageDir) -> Option<([u8; 16], u64)> {
    d.lineage().map(|l| (l, d.seq()))
}

/// Page bytes the cache holds before it drops pages the data files already have.
const CACHE_BUDGET: usize = 64 << 20;
/// A ZERO run longer than this many pages is not noted page by page (its pages are read from
/// the data files once the stream is applied).
const CACHE_ZERO_RUN: u64 = 256;

/// The newest version of pages of streams that this persister made durable and that the
/// applier may not have written into the data files yet, each with the sequence of its
/// stream (`None`: a zero page). A page that is not here is read from its data file, once
/// the manifest is at or beyond `uncached_upto` (the newest stream whose pages were not all
/// noted here); resolving a delta then first applies what is pending.
#[derive(Default)]
struct PageCache {
    lineage: Option<[u8; 16]>,
    pages: HashMap<u64, (u64, CachedPage)>,
    bytes: usize,
    uncached_upto: u64,
}

/// A page's bytes (`None`: zeros).
type CachedPage = Option<Box<[u8]>>;

/// Pages a resolved stream gives, noted while it is resolved and taken into the cache only
/// once the stream is durable.
#[derive(Default)]
struct CacheUpdate {
    pages: Vec<(u64, CachedPage)>,
    bytes: usize,
    /// Some pages could not be noted (too many bytes, a long ZERO run): their addresses
    /// leave the cache and the stream counts as uncached.
    overflow: Vec<(u64, u64)>,
}

impl CacheUpdate {
    fn note(&mut self, run: Run<'_>, page: usize) {
        match run {
            Run::Data(addr, bytes) if self.bytes + bytes.len() <= CACHE_BUDGET => {
                for (i, p) in bytes.chunks(page).enumerate() {
                    self.pages.push((addr + (i * page) as u64, Some(p.into())));
                }
                self.bytes += bytes.len();
            }
            Run::Zero(addr, len) if len / page as u64 <= CACHE_ZERO_RUN => {
                let mut a = addr;
                while a < addr + len {
                    self.pages.push((a, None));
                    a += page as u64;
                }
            }
            Run::Data(addr, bytes) => self.overflow.push((addr, bytes.len() as u64)),
            Run::Zero(addr, len) => self.overflow.push((addr, len)),
        }
    }
}

impl PageCache {
    /// Takes in the pages of stream `b`, now durable; drops what the data files already hold
    /// if over budget.
    fn commit(&mut self, b: &Begin, u: CacheUpdate, applied: Option<([u8; 16], u64)>) {
        if self.lineage != Some(b.lineage) || b.is_full() {
            // Every page of a full stream is in it: nothing older is needed.
            self.pages.clear();
            self.bytes = 0;
            self.uncached_upto = 0;
            self.lineage = Some(b.lineage);
        }
        for (addr, len) in u.overflow {
            let end = addr.saturating_add(len);
            let bytes = &mut self.bytes;
            self.pages.retain(|a, (_, p)| {
                let gone = *a >= addr && *a < end;
                if gone {
                    *bytes -= p.as_ref().map_or(0, |p| p.len());
                }
                !gone
            });
            self.uncached_upto = self.uncached_upto.max(b.seq);
        }
        for (addr, p) in u.pages {
            self.bytes += p.as_ref().map_or(0, |p| p.len());
            if let Some((_, old)) = self.pages.insert(addr, (b.seq, p)) {
                self.bytes -= old.map_or(0, |p| p.len());
            }
        }
        if self.bytes > CACHE_BUDGET {
            if let Some((_, seq)) = applied.filter(|(l, _)| Some(*l) == self.lineage) {
                let bytes = &mut self.bytes;
                self.pages.retain(|_, (s, p)| {
                    let keep = *s > seq;
                    if !keep {
                        *bytes -= p.as_ref().map_or(0, |p| p.len());
                    }
                    keep
                });
            }
        }
    }
}

/// The spare's base pages: the cache, else the data files (brought up to date first if a
/// stream they do not hold yet may have the page).
struct SpareBase<'a> {
    cache: &'a PageCache,
    applied: &'a Applied,
    applier_dir: &'a Mutex<ImageDir>,
    root: &'a Path,
    ranges: &'a [RangeEntry],
    lineage: [u8; 16],
    caught_up: bool,
    /// The syncer: what it has queued must be durable before the data files can catch up.
    sync: &'a mpsc::Sender<SyncJob>,
}

impl BasePages for SpareBase<'_> {
    fn base_page(&mut self, addr: u64, out: &mut [u8]) -> Result<(), String> {
        if self.cache.lineage == Some(self.lineage) {
            if let Some((_, p)) = self.cache.pages.get(&addr) {
                match p {
                    Some(p) if p.len() == out.len() => out.copy_from_slice(p),
                    Some(_) => return Err("cached page of another size".into()),
                    None => out.fill(0),
                }
                return Ok(());
            }
        }
        let need = if self.cache.lineage == Some(self.lineage) {
            self.cache.uncached_upto
        } else {
            u64::MAX
        };
        let ok = |a: &Applied| {
            a.lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|(l, s)| l == self.lineage && s >= need)
        };
        if !self.caught_up && !ok(self.applied) {
            drain(self.sync);
            let mut d = self.applier_dir.lock().unwrap_or_else(|p| p.into_inner());
            let r = d.apply_pending();
            *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = applied_of(&d);
            r.map_err(|e| format!("bringing the data files up to the base: {e}"))?;
        }
        if !ok(self.applied) {
            return Err(format!(
                "the data files are not at the base (checkpoint {need} of this lineage)"
            ));
        }
        self.caught_up = true;
        let r = self
            .ranges
            .iter()
            .find(|r| addr >= r.addr && addr - r.addr < r.len)
            .ok_or_else(|| format!("page {addr:#x} is in no range of the base"))?;
        crate::image::dir::read_data_page(self.root, r, addr, out).map_err(|e| {
            format!(
                "reading the data file of range {:#x}+{:#x}: {e}",
                r.addr, r.len
            )
        })
    }
}

/// Where a resolved stream goes: memory while it is small, else a file beside the spool.
enum Spill {
    Memory(Vec<u8>),
    File(PathBuf, std::io::BufWriter<File>),
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Spill::Memory(v) = self {
            if v.len() + buf.len() <= COPY_LIMIT {
                v.extend_from_slice(buf);
                return Ok(buf.len());
            }
        }
        match self {
            Spill::File(_, f) => f.write(buf),
            Spill::Memory(_) => Err(std::io::Error::other("spill not set up")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Spill::File(_, f) => f.flush(),
            Spill::Memory(_) => Ok(()),
        }
    }
}

impl Persister {
    fn run(
        mut self,
        rx: mpsc::Receiver<DiskOp>,
        done: mpsc::Sender<DiskDone>,
        wake: Arc<dyn Fn() + Send + Sync>,
        queued: Arc<AtomicU64>,
    ) {
        for op in rx {
            let answer = match op {
                DiskOp::SaveTerm(term) => {
                    // After whatever is being made durable: the syncer answers it.
                    let _ = self.sync.send(SyncJob::SaveTerm(term));
                    continue;
                }
                DiskOp::SpoolStart {
                    header,
                    lineage,
                    term,
                } => {
                    self.drop_spool();
                    self.spool = Some(Spool {
                        header,
                        lineage,
                        term,
                        file: None,
                        copy: Some(Vec::new()),
                        held: Held {
                            bytes: 0,
                            queued: queued.clone(),
                        },
                    });
                    None
                }
                DiskOp::Spool { seq, bytes } => {
                    // Counted in `queued` until written to the spool file, or (kept in memory)
                    // until the stream is durable or given up.
                    let mut h = Held {
                        bytes: bytes.len() as u64,
                        queued: queued.clone(),
                    };
                    self.spool_bytes(seq, &bytes, &mut h)
                }
                DiskOp::Persist {
                    seq,
                    replace_lineage,
                } => {
                    self.restart_if_sync_failed();
                    // The intermediate report, between validation and durability; the core
                    // does not count it as the end of the operation. Withheld while the
                    // syncer is far behind (the acknowledgement then follows `Persisted`).
                    let backlog = queued.load(Ordering::SeqCst);
                    let on_receipt = backlog <= self.receipt_ack_limit;
                    if on_receipt == self.receipt_acks_withheld {
                        self.receipt_acks_withheld = !on_receipt;
                        super::log(if on_receipt {
                            "the disk caught up: acknowledging on receipt again".to_string()
                        } else {
                            format!(
                                "the disk is {} MiB behind: acknowledging after fsync until it catches up",
                                backlog >> 20
                            )
                        });
                    }
                    let verified = || {
                        if on_receipt && done.send(DiskDone::Verified { seq }).is_ok() {
                            wake();
                        }
                    };
                    if let Err(why) = self.persist(seq, replace_lineage, verified) {
                        let refused = DiskDone::Persisted {
                            seq,
                            result: Err(why),
                        };
                        let _ = self.sync.send(SyncJob::Answer(refused));
                    }
                    // The syncer answers it.
                    continue;
                }
                DiskOp::Discard { seq } => {
                    if self.spool.as_ref().is_some_and(|s| s.header.seq == seq) {
                        self.drop_spool();
                    }
                    Some(DiskDone::Discarded)
                }
                DiskOp::Apply => {
                    // After what is being made durable; the applier answers it.
                    let _ = self.sync.send(SyncJob::Apply);
                    continue;
                }
            };
            // Operations that succeed silently still end: the core counts them.
            let answer = answer.unwrap_or(DiskDone::Discarded);
            if done.send(answer).is_err() {
                return;
            }
            wake();
        }
    }

    fn drain_sync(&self) {
        drain(&self.sync);
    }

    /// After the syncer failed to make a stream durable, every stream validated on top of it
    /// is refused: start again from what is durable (its tip and base; no cached page, as the
    /// cache may hold pages of streams that never became durable) and let the syncer go on.
    fn restart_if_sync_failed(&mut self) {
        if !self
            .durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
        {
            return;
        }
        self.drain_sync();
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        self.tip = d.tip.clone();
        self.base = d.base.clone();
        self.cache = PageCache {
            lineage: self.tip.as_ref().map(|t| t.lineage),
            uncached_upto: self.tip.as_ref().map_or(0, |t| t.seq),
            ..PageCache::default()
        };
        d.failed = false;
        drop(d);
        let _ = self.sync.send(SyncJob::Resume);
    }

    fn spool_path(&self, seq: u64) -> PathBuf {
        self.root.join("wal").join(format!("{seq:020}.tmp"))
    }

    fn drop_spool(&mut self) {
        if let Some(s) = self.spool.take() {
            if s.file.is_some() {
                drop(s.file);
                let _ = std::fs::remove_file(self.spool_path(s.header.seq));
            }
        }
    }

    /// Keeps a stream's bytes in memory while it is small; a larger one goes to its spool file.
    fn spool_bytes(&mut self, seq: u64, bytes: &[u8], h: &mut Held) -> Option<DiskDone> {
        let root = self.root.clone();
        let s = self.spool.as_mut().filter(|s| s.header.seq == seq)?;
        if let Some(c) = &mut s.copy {
            if c.len() + bytes.len() <= COPY_LIMIT {
                c.extend_from_slice(bytes);
                s.held.bytes += std::mem::take(&mut h.bytes);
                return None;
            }
        }
        // Not kept in memory from here on.
        s.held.release();
        if s.file.is_none() {
            match ImageDir::create_wal_at(&root, seq) {
                Ok((_, f)) => s.file = Some(Ok(f)),
                Err(e) => {
                    let why = format!("spooling checkpoint {seq}: {e}");
                    s.file = Some(Err(why.clone()));
                    s.copy = None;
                    return Some(DiskDone::SpoolFailed { seq, why });
                }
            }
        }
        // A spool that failed before has been reported.
        let Some(Ok(f)) = s.file.as_mut() else {
            return None;
        };
        let written = match s.copy.take() {
            Some(c) => f.write_all(&c).and_then(|()| f.write_all(bytes)),
            None => f.write_all(bytes),
        };
        match written {
            Ok(()) => None,
            Err(e) => {
                let why = format!("spooling checkpoint {seq}: {e}");
                s.file = Some(Err(why.clone()));
                Some(DiskDone::SpoolFailed { seq, why })
            }
        }
    }

    /// Validates the whole spooled stream against the tip, calls `verified` (only if it
    /// passed) and hands it to the syncer to be made durable. What the stream's BEGIN says must
    /// be what the primary declared (sequence, base, lineage, term) — checked before `verified`,
    /// so a refused stream is never acknowledged, nor made durable. The tip it is checked on is
    /// the last stream validated, which the syncer makes durable first (or, failing, refuses
    /// this one: [`Persister::restart_if_sync_failed`]).
    fn persist(
        &mut self,
        seq: u64,
        replace_lineage: bool,
        verified: impl FnOnce(),
    ) -> Result<(), String> {
        let Some(s) = self.spool.take().filter(|s| s.header.seq == seq) else {
            return Err(format!("checkpoint {seq} was not spooled"));
        };
        let (header, lineage, term) = (s.header, s.lineage, s.term);
        // Released when this returns with a refusal, else by the syncer.
        let mut held = s.held;
        let tmp = self.spool_path(seq);
        let refuse = |why: String| {
            let _ = std::fs::remove_file(&tmp);
            Err(why)
        };
        if let Some(Err(why)) = s.file {
            return refuse(why);
        }
        drop(s.file);
        let mut copy = s.copy;
        let mut update = None;
        let wire = match &copy {
            Some(bytes) => delta::is_wire_stream(bytes),
            None => {
                let mut head = [0u8; 8];
                File::open(&tmp)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                    .is_ok_and(|()| delta::is_wire_stream(&head))
            }
        };
        if wire {
            match self.resolve(seq, copy.take(), &tmp) {
                Ok((c, u)) => {
                    copy = c;
                    update = Some(u);
                }
                Err(why) => return refuse(why),
            }
        }
        let declared = match &copy {
            Some(bytes) => begin_of(std::io::Cursor::new(bytes.as_slice()), &tmp),
            None => File::open(&tmp)
                .map_err(|e| format!("{}: {e}", tmp.display()))
                .and_then(|f| begin_of(std::io::BufReader::with_capacity(64 << 10, f), &tmp)),
        };
        match declared {
            Ok(b) if b.seq == header.seq
                && b.base_seq == header.base_seq
                && b.lineage == lineage
                && b.term == term => {}
            Ok(b) => {
                return refuse(format!(
                    "checkpoint {seq}: the stream's BEGIN (seq {}, base {}, term {}) differs from what the primary declared (seq {}, base {}, term {term}, its lineage)",
                    b.seq, b.base_seq, b.term, header.seq, header.base_seq
                ))
            }
            Err(why) => return refuse(why),
        }
        let policy = if replace_lineage {
            LineagePolicy::ReplaceOld
        } else {
            LineagePolicy::RefuseNew
        };
        // A new lineage replaces the image: everything durable before it is applied first, so
        // the WAL never holds two lineages (their sequence numbers do not order them). The
        // applier's lock is held until the new stream is durable.
        let other_lineage = self.tip.as_ref().is_some_and(|t| t.lineage != lineage);
        let guard = if other_lineage {
            self.drain_sync();
            let mut g = self.applier_dir.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = g.apply_pending() {
                return refuse(e.to_string());
            }
            Some(g)
        } else {
            None
        };
        if self.checker.is_none() {
            match ImageDir::attach(&self.root) {
                Ok(d) => self.checker = Some(d),
                Err(e) => return refuse(e.to_string()),
            }
        }
        let checker = self.checker.as_ref().expect("attached above");
        let summary = checker
            .check_wal(seq, copy.as_deref(), self.tip.as_ref(), policy, term)
            .map_err(|e| e.to_string())?;
        verified();
        let tip = ImageTip::from(&summary.begin);
        self.tip = Some(tip.clone());
        let applied = *self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let page = summary.begin.page_size as usize;
        let update = match update {
            Some(u) => u,
            None => {
                // A stored-format stream: note its pages too (read back from the copy, or
                // counted as uncached when there is none).
                let mut u = CacheUpdate::default();
                match &copy {
                    Some(bytes) => {
                        let r = crate::image::format::scan_stream(bytes.as_slice(), |run| {
                            u.note(run, page);
                            Ok(())
                        });
                        if r.is_err() {
                            u.overflow.push((0, u64::MAX));
                        }
                    }
                    None => u.overflow.push((0, u64::MAX)),
                }
                u
            }
        };
        self.cache.commit(&summary.begin, update, applied);
        self.base = Some(summary.begin.clone());
        // What the syncer holds in memory: the (resolved) copy.
        held.set(copy.as_ref().map_or(0, |c| c.len() as u64));
        let _ = self.sync.send(SyncJob::Persist {
            seq,
            bytes: copy,
            keep_lineage: other_lineage.then_some(lineage),
            tip,
            begin: Box::new(summary.begin),
            held,
        });
        if let Some(g) = guard {
            // Durable (or refused) before the applier may run again.
            self.drain_sync();
            drop(g);
        }
        Ok(())
    }

    /// Resolves the wire stream spooled for `seq` (in `copy`, or in the file `tmp`) into a
    /// stored stream of whole pages, which replaces it in `tmp`; returns the new copy (if it
    /// stayed small) and the pages it gives. Fails (the stream is then refused) if it is not a
    /// delta on this persister's tip or a delta does not reproduce the primary's page.
    fn resolve(
        &mut self,
        seq: u64,
        copy: Option<Vec<u8>>,
        tmp: &Path,
    ) -> Result<(Option<Vec<u8>>, CacheUpdate), String> {
        let at = |e: crate::image::FormatError| format!("{}: {e}", tmp.display());
        let Some(base) = self.base.as_ref() else {
            return Err(format!(
                "{}: checkpoint {seq} is a delta, but this spare has made no checkpoint of this connection durable to apply it on",
                tmp.display()
            ));
        };
        let spill_path = self
            .root
            .join("wal")
            .join(format!("{seq:020}.resolved.tmp"));
        let mut out = Spill::Memory(Vec::new());
        let mut update = CacheUpdate::default();
        let page = base.page_size as usize;
        let mut pages = SpareBase {
            cache: &self.cache,
            applied: &self.applied,
            applier_dir: &self.applier_dir,
            root: &self.root,
            ranges: &base.ranges,
            lineage: base.lineage,
            caught_up: false,
            sync: &self.sync,
        };
        let mut sink = SpillTo {
            spill: &mut out,
            path: &spill_path,
        };
        let r = match &copy {
            Some(bytes) => {
                delta::resolve_stream(bytes.as_slice(), Some(base), &mut pages, &mut sink, |run| {
                    update.note(run, page)
                })
            }
            None => {
                let f = File::open(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
                delta::resolve_stream(
                    std::io::BufReader::with_capacity(64 << 10, f),
                    Some(base),
                    &mut pages,
                    &mut sink,
                    |run| update.note(run, page),
                )
            }
        };
        if let Err(e) = r {
            let _ = std::fs::remove_file(&spill_path);
            return Err(at(e));
        }
        // In memory, the syncer writes it (after the acknowledgement on receipt).
        let written = match out {
            Spill::Memory(v) => Ok(Some(v)),
            Spill::File(p, f) => f
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|_| std::fs::rename(&p, tmp))
                .map(|()| None),
        };
        match written {
            Ok(c) => Ok((c, update)),
            Err(e) => {
                let _ = std::fs::remove_file(&spill_path);
                Err(format!(
                    "{}: writing the resolved stream: {e}",
                    tmp.display()
                ))
            }
        }
    }
}

/// A [`Spill`] that moves to a file at `path` when it outgrows memory.
struct SpillTo<'a> {
    spill: &'a mut Spill,
    path: &'a Path,
}

impl Write for SpillTo<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Spill::Memory(v) = &*self.spill {
            if v.len() + buf.len() > COPY_LIMIT {
                let f = ImageDir::create_wal_file(self.path)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                w.write_all(v)?;
                *self.spill = Spill::File(self.path.to_path_buf(), w);
            }
        }
        self.spill.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.spill.flush()
    }
}

/// The BEGIN of a spooled stream at `path`, read from `r` (only its first frame; the whole
/// stream is validated by `persist_wal_from`).
fn begin_of(r: impl std::io::Read, path: &Path) -> Result<crate::image::Begin, String> {
    use crate::image::format::{self, FrameKind, FrameReader};
    let mut fr = FrameReader::new(r);
    match fr.next_frame() {
        Ok(Some(frame)) if frame.kind == FrameKind::Begin => {
            format::decode_begin(&frame.payload, 0).map_err(|e| format!("{}: {e}", path.display()))
        }
        Ok(_) => Err(format!(
            "{}: the stream does not start with BEGIN",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{write_stream, FORMAT_VERSION};
    use std::time::Duration;

    const ADDR: u64 = 0x7000_0000_0000;
    const PAGE: usize = 4096;

    fn stream(seq: u64, base_seq: u64, fill: u8) -> Vec<u8> {
        let b = Begin {
            format_version: FORMAT_VERSION,
            lineage: [0x11; 16],
            term: 1,
            seq,
            base_seq,
            exe_id: [7; 32],
            page_size: PAGE as u32,
            ranges: vec![RangeEntry {
                addr: ADDR,
                len: PAGE as u64,
                complete: base_seq == 0,
            }],
            meta: Vec::new(),
        };
        let page = vec![fill; PAGE];
        let mut out = Vec::new();
        write_stream(&mut out, &b, [Run::Data(ADDR, &page)]).expect("to memory");
        out
    }

    /// Runs the persister on a fresh directory over the spool operations and the Persist of
    /// each stream; returns every report, in order.
    fn run(streams: &[(u64, u64, Vec<u8>)]) -> Vec<DiskDone> {
        let t = tempfile::tempdir().expect("tempdir");
        run_in(t.path(), streams)
    }

    /// [`run`] in the image directory `dir`.
    fn run_in(dir: &Path, streams: &[(u64, u64, Vec<u8>)]) -> Vec<DiskDone> {
        run_with(dir, streams, |_| {})
    }

    /// [`run_in`], calling `before` once the directory is open and before the first stream.
    fn run_with(
        dir: &Path,
        streams: &[(u64, u64, Vec<u8>)],
        before: impl FnOnce(&Path),
    ) -> Vec<DiskDone> {
        let image = ImageDir::open(dir).expect("image");
        let (tx, rx) = mpsc::channel();
        let disk = start(image, tx, Arc::new(|| {})).expect("threads");
        before(dir);
        submit_all(&disk, streams);
        answers(&rx, 3 * streams.len())
    }

    /// The disk threads on a fresh image directory, and where their reports arrive.
    fn started() -> (tempfile::TempDir, Disk, mpsc::Receiver<DiskDone>) {
        started_with(RECEIPT_ACK_LIMIT)
    }

    fn started_with(receipt_ack_limit: u64) -> (tempfile::TempDir, Disk, mpsc::Receiver<DiskDone>) {
        let t = tempfile::tempdir().expect("tempdir");
        let image = ImageDir::open(t.path()).expect("image");
        let (tx, rx) = mpsc::channel();
        let disk = start_with(image, tx, Arc::new(|| {}), receipt_ack_limit).expect("threads");
        (t, disk, rx)
    }

    /// The spool operations and the Persist of each stream.
    fn submit_all(disk: &Disk, streams: &[(u64, u64, Vec<u8>)]) {
        for (seq, base_seq, bytes) in streams {
            let header = StreamHeader {
                seq: *seq,
                base_seq: *base_seq,
            };
            disk.submit(DiskOp::SpoolStart {
                header,
                lineage: [0x11; 16],
                term: 1,
            });
            disk.submit(DiskOp::Spool {
                seq: *seq,
                bytes: bytes.clone(),
            });
            disk.submit(DiskOp::Persist {
                seq: *seq,
                replace_lineage: false,
            });
        }
    }

    /// Every report until `finals` operations have ended.
    fn answers(rx: &mpsc::Receiver<DiskDone>, finals: usize) -> Vec<DiskDone> {
        let mut got = Vec::new();
        let mut ended = 0;
        while ended < finals {
            let d = rx.recv_timeout(Duration::from_secs(10)).expect("an answer");
            if !matches!(d, DiskDone::Verified { .. }) {
                ended += 1;
            }
            got.push(d);
        }
        got
    }

    fn begin(seq: u64, base_seq: u64, npages: usize) -> Begin {
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
                len: (npages * PAGE) as u64,
                complete: base_seq == 0,
            }],
            meta: b"meta".to_vec(),
        }
    }

    fn persisted(d: &[DiskDone]) -> Vec<Result<u64, String>> {
        d.iter()
            .filter_map(|d| match d {
                DiskDone::Persisted { seq, result } => {
                    Some(result.as_ref().map(|_| *seq).map_err(Clone::clone))
                }
                _ => None,
            })
            .collect()
    }

    /// Guards against the spare applying a delta that does not reproduce the primary's page
    /// (a primary whose idea of the spare's pages is wrong): through the real persister, a
    /// good delta is resolved and made durable, one diffed against another base is refused
    /// (never acknowledged, never durable), and the image holds the last good pages; a
    /// second good delta on the first then still chains (the refused one left no trace).
    #[test]
    fn a_delta_on_a_wrong_base_is_refused_and_the_image_keeps_the_last_good_pages() {
        let t = tempfile::tempdir().expect("tempdir");
        let mut mem = vec![1u8; 3 * PAGE];
        let mut good = delta::Shadow::new(64);
        let mut s1 = Vec::new();
        good.encode(&mut s1, &begin(1, 0, 3), [Run::Data(ADDR, &mem)]);
        mem[PAGE + 5] = 2;
        mem[2 * PAGE + 4095] = 3;
        let mut s2 = Vec::new();
        good.encode(&mut s2, &begin(2, 1, 3), [Run::Data(ADDR, &mem)]);
        assert!(delta::is_wire_stream(&s2));
        assert_eq!(good.stats.delta_pages, 2);
        let after2 = mem.clone();
        // A primary that believes byte 2000 of page 0 is 9 (the spare has 1) and keeps it so:
        // its delta for page 0 does not carry that byte, and is on another base.
        let mut wrong = delta::Shadow::new(64);
        let mut junk = Vec::new();
        let mut believed = mem.clone();
        believed[2000] = 9;
        wrong.encode(&mut junk, &begin(1, 0, 3), [Run::Data(ADDR, &believed)]);
        let mut junk2 = Vec::new();
        wrong.encode(&mut junk2, &begin(2, 1, 3), [Run::Data(ADDR, &believed)]);
        let mut m3 = believed.clone();
        m3[7] = 4;
        let mut s3 = Vec::new();
        wrong.encode(&mut s3, &begin(3, 2, 3), [Run::Data(ADDR, &m3[..PAGE])]);
        assert!(delta::is_wire_stream(&s3));
        // The good primary's own next delta (seq 3 on 2) must still apply after the refusal.
        mem[2 * PAGE] = 5;
        let mut s3b = Vec::new();
        good.encode(
            &mut s3b,
            &begin(3, 2, 3),
            [Run::Data(ADDR + 2 * PAGE as u64, &mem[2 * PAGE..])],
        );
        mem[PAGE] = 6;
        let mut s4 = Vec::new();
        good.encode(
            &mut s4,
            &begin(4, 3, 3),
            [Run::Data(ADDR, &mem[..2 * PAGE])],
        );
        let got = run_in(t.path(), &[(1, 0, s1), (2, 1, s2), (3, 2, s3), (3, 2, s3b)]);
        let p = persisted(&got);
        assert_eq!(p[..2], [Ok(1), Ok(2)], "{got:?}");
        let err = p[2].clone().expect_err("refused");
        assert!(err.contains("does not reproduce"), "{err}");
        assert_eq!(p[3], Ok(3), "the good delta still chains on 2: {got:?}");
        assert_eq!(
            got.iter()
                .filter(|d| matches!(d, DiskDone::Verified { seq: 3 }))
                .count(),
            1,
            "a refused delta is never acknowledged: {got:?}"
        );
        let mut image = ImageDir::open(t.path()).expect("reopen");
        image.apply_pending().expect("apply");
        assert_eq!(image.seq(), 3);
        let data = std::fs::read(image.data_path(ADDR, 3 * PAGE as u64)).expect("data");
        let mut after3 = after2.clone();
        after3[2 * PAGE] = 5;
        assert_eq!(
            data, after3,
            "the image is the good chain, nothing of the refused delta"
        );
        image.verify_data().expect("CRCs");
        drop(image);
        // A fresh persister (a new spare process) has no base yet: a delta is refused until a
        // stream is durable (the primary's reconnect is always full).
        let got = run_in(t.path(), &[(4, 3, s4)]);
        let err = persisted(&got)[0].clone().expect_err("no base yet");
        assert!(err.contains("no checkpoint of this connection"), "{err}");
    }

    /// Guards against a spare that cannot resolve deltas once its page cache no longer holds
    /// the base page (evicted, or a stream too large to note): the page then comes from the
    /// data files, brought up to date first.
    #[test]
    fn deltas_resolve_from_the_data_files_when_the_cache_lacks_the_page() {
        let t = tempfile::tempdir().expect("tempdir");
        // A full stream with a long ZERO run is not noted page by page.
        let n = CACHE_ZERO_RUN as usize + 8;
        let mut mem = vec![0u8; n * PAGE];
        mem[..PAGE].fill(6);
        let mut sh = delta::Shadow::new(1 << 12);
        let mut s1 = Vec::new();
        sh.encode(
            &mut s1,
            &begin(1, 0, n),
            [
                Run::Data(ADDR, &mem[..PAGE]),
                Run::Zero(ADDR + PAGE as u64, ((n - 1) * PAGE) as u64),
            ],
        );
        let mut streams = vec![(1, 0, s1)];
        for seq in 2..5u64 {
            mem[seq as usize] = seq as u8;
            let at = (seq as usize) * 3 * PAGE;
            mem[at + 1] = 1;
            let mut s = Vec::new();
            sh.encode(
                &mut s,
                &begin(seq, seq - 1, n),
                [
                    Run::Data(ADDR, &mem[..PAGE]),
                    Run::Data(ADDR + at as u64, &mem[at..at + PAGE]),
                ],
            );
            streams.push((seq, seq - 1, s));
        }
        let got = run_in(t.path(), &streams);
        assert_eq!(persisted(&got), [Ok(1), Ok(2), Ok(3), Ok(4)], "{got:?}");
        let mut image = ImageDir::open(t.path()).expect("reopen");
        image.apply_pending().expect("apply");
        let data = std::fs::read(image.data_path(ADDR, (n * PAGE) as u64)).expect("data");
        assert_eq!(data, mem);
    }

    /// Guards against the persister acknowledging-on-receipt what it then refuses, or not
    /// reporting validation at all: `Verified` comes between the spool answers and
    /// `Persisted { Ok }` for a good stream, never for a refused one, and every operation
    /// still gets exactly one final answer.
    /// Guards the flow control of acknowledgements on receipt: while the syncer is more than
    /// [`RECEIPT_ACK_LIMIT`] behind, a valid stream is not reported `Verified` (the primary is
    /// acknowledged after `Persisted` instead), and once the backlog is back under it, the next
    /// stream is `Verified` again. Nothing is refused either way.
    #[test]
    fn a_far_behind_syncer_withholds_receipt_reports_instead_of_refusing() {
        let (_t, disk, rx) = started();
        let backlog = RECEIPT_ACK_LIMIT + 1;
        disk.queued.fetch_add(backlog, Ordering::SeqCst);
        submit_all(&disk, &[(1, 0, stream(1, 0, 1))]);
        let got = answers(&rx, 3);
        assert!(
            !got.iter().any(|d| matches!(d, DiskDone::Verified { .. })),
            "verified while the syncer is {backlog} bytes behind: {got:?}"
        );
        assert_eq!(persisted(&got), vec![Ok(1)], "{got:?}");
        disk.queued.fetch_sub(backlog, Ordering::SeqCst);
        submit_all(&disk, &[(2, 1, stream(2, 1, 2))]);
        let got = answers(&rx, 3);
        assert!(
            got.iter()
                .any(|d| matches!(d, DiskDone::Verified { seq: 2 })),
            "not verified once caught up: {got:?}"
        );
        assert_eq!(persisted(&got), vec![Ok(2)], "{got:?}");
        disk.close();
    }

    #[test]
    fn verified_comes_between_validation_and_persisted_and_only_for_valid_streams() {
        let mut bad = stream(2, 1, 2);
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let got = run(&[
            (1, 0, stream(1, 0, 1)),
            (2, 1, bad),
            (3, 1, stream(3, 1, 3)),
        ]);
        let shape: Vec<String> = got
            .iter()
            .map(|d| match d {
                DiskDone::Verified { seq } => format!("verified {seq}"),
                DiskDone::Persisted { seq, result } => {
                    format!(
                        "persisted {seq} {}",
                        if result.is_ok() { "ok" } else { "err" }
                    )
                }
                DiskDone::Discarded => "answered".into(),
                other => format!("{other:?}"),
            })
            .collect();
        // The syncer answers Persisted while the persister goes on: only the order of each
        // stream's own reports, and of the Persisted answers, is fixed.
        let at = |s: &str| shape.iter().position(|x| x == s);
        let final_answers: Vec<&String> = shape
            .iter()
            .filter(|s| s.starts_with("persisted"))
            .collect();
        assert_eq!(
            final_answers,
            ["persisted 1 ok", "persisted 2 err", "persisted 3 ok"],
            "{got:?}"
        );
        assert!(at("verified 1") < at("persisted 1 ok"), "{shape:?}");
        assert!(at("verified 3") < at("persisted 3 ok"), "{shape:?}");
        assert_eq!(
            at("verified 2"),
            None,
            "a refused stream was verified: {shape:?}"
        );
        assert_eq!(
            shape.iter().filter(|s| *s == "answered").count(),
            6,
            "every spool operation answered once: {shape:?}"
        );
        assert_eq!(shape.len(), 11, "{shape:?}");
    }

    /// A full stream of `npages` pages of `fill` (about `npages * 4 KiB`).
    fn big_stream(seq: u64, npages: usize, fill: u8) -> Vec<u8> {
        let mem = vec![fill; npages * PAGE];
        let mut out = Vec::new();
        write_stream(&mut out, &begin(seq, 0, npages), [Run::Data(ADDR, &mem)]).expect("memory");
        out
    }

    /// Guards against the spare's memory growing without bound while its disk is slow: a
    /// stream validated in memory and not yet durable is held by the syncer, and must count in
    /// `queued` (what the event loop's back-pressure looks at) until it is durable. Here the
    /// syncer is stuck making checkpoint 2 durable (its spool name is a FIFO nobody reads);
    /// 80 MiB of streams validated behind it must show in `queued`.
    #[test]
    fn streams_held_in_memory_for_the_syncer_count_in_the_back_pressure() {
        // Every stream reported `Verified` (how the test sees it validated), however far behind.
        let (t, disk, rx) = started_with(u64::MAX);
        let fifo = t.path().join("wal").join(format!("{:020}.tmp", 2));
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        submit_all(&disk, &[(1, 0, stream(1, 0, 1))]);
        let got = answers(&rx, 3);
        assert_eq!(persisted(&got), [Ok(1)], "{got:?}");
        let n = 256; // 1 MiB a stream
        let streams: Vec<(u64, u64, Vec<u8>)> = (2..=81u64)
            .map(|seq| (seq, 0, big_stream(seq, n, seq as u8)))
            .collect();
        let first_len = streams[0].2.len();
        let total: u64 = streams.iter().map(|s| s.2.len() as u64).sum();
        submit_all(&disk, &streams);
        // Every stream is validated (the persister does not wait for the syncer).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut reports = Vec::new();
        while !reports.contains(&DiskDone::Verified { seq: 81 }) {
            let d = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("every stream validated");
            reports.push(d);
        }
        let queued = disk.queued.load(Ordering::SeqCst);
        // Unblock the syncer before asserting, so that the threads can end.
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .expect("open the fifo");
            let mut buf = vec![0u8; first_len];
            f.read_exact(&mut buf).expect("read what the syncer writes");
            std::thread::sleep(Duration::from_millis(500));
        });
        let finals = 3 * streams.len()
            - reports
                .iter()
                .filter(|d| !matches!(d, DiskDone::Verified { .. }))
                .count();
        let _ = answers(&rx, finals);
        reader.join().expect("reader");
        let left = disk.queued.clone();
        disk.close();
        assert!(
            queued > QUEUE_LIMIT,
            "{} MiB validated and not durable, but only {queued} B count as queued: the event \
             loop goes on reading without bound",
            total >> 20
        );
        assert_eq!(
            left.load(Ordering::SeqCst),
            0,
            "everything ended: nothing queued"
        );
    }

    /// A stream of `npages` pages of `fill` on `base_seq` (full when 0), over a range of
    /// [`WIDE`] pages.
    fn wide_stream(seq: u64, base_seq: u64, npages: usize, fill: u8) -> Vec<u8> {
        let mem = vec![fill; npages * PAGE];
        let mut out = Vec::new();
        let mut b = begin(seq, base_seq, WIDE);
        b.meta = Vec::new();
        write_stream(&mut out, &b, [Run::Data(ADDR, &mem)]).expect("memory");
        out
    }

    /// Pages of the range of [`wide_stream`]: more than the log takes in one record.
    const WIDE: usize = crate::image::log::RECORD_MAX / PAGE + 16;

    /// Guards against the split of validation from durability: a stream validated on top of
    /// one that then could not be made durable must never become durable itself (the image
    /// would hold a checkpoint on a base it lacks), and the persister must go on from what is
    /// durable. The durability of checkpoint 2 is made to fail: it is larger than a log record,
    /// so it goes to a WAL file of its own, whose spool name is taken by a directory; 3 is a
    /// (small, logged) delta on 2, validated before 2's failure is known; then a delta on 1 and
    /// a full checkpoint, as a primary sends after the connection closes.
    #[test]
    fn a_stream_validated_on_one_that_failed_to_become_durable_is_refused() {
        let (t, disk, rx) = started();
        let blocked = t.path().join("wal").join(format!("{:020}.tmp", 2));
        std::fs::create_dir(&blocked).expect("block the spool of checkpoint 2");
        submit_all(
            &disk,
            &[
                (1, 0, wide_stream(1, 0, WIDE, 1)),
                (2, 1, wide_stream(2, 1, WIDE, 2)),
                (3, 2, wide_stream(3, 2, 1, 3)),
            ],
        );
        let got = answers(&rx, 9);
        let p = persisted(&got);
        assert_eq!(p[0], Ok(1), "{got:?}");
        assert!(
            p[1].is_err(),
            "checkpoint 2 could not be made durable: {got:?}"
        );
        assert!(
            p[2].is_err(),
            "checkpoint 3 is on a base that is not durable: {got:?}"
        );
        // A delta on 1 (what is durable) and a full checkpoint, once the failure is known.
        submit_all(
            &disk,
            &[
                (4, 1, wide_stream(4, 1, 1, 4)),
                (5, 0, wide_stream(5, 0, WIDE, 5)),
            ],
        );
        let got = answers(&rx, 6);
        let p = persisted(&got);
        assert_eq!(
            p,
            [Ok(4), Ok(5)],
            "the persister goes on from what is durable: {got:?}"
        );
        disk.close();
        std::fs::remove_dir(&blocked).expect("rmdir");
        assert!(
            !t.path().join("wal").join(format!("{:020}.cpt", 3)).exists(),
            "checkpoint 3 was made durable"
        );
        let mut image = ImageDir::open(t.path()).expect("reopen");
        image.apply_pending().expect("apply");
        assert_eq!(image.seq(), 5);
        let data = std::fs::read(image.data_path(ADDR, (WIDE * PAGE) as u64)).expect("data");
        assert_eq!(data, vec![5u8; WIDE * PAGE]);
    }

    /// The same guarantee when the log itself fails: the first segment cannot be created (its
    /// name is taken by a directory), so checkpoint 1 is not durable and 2, a delta validated
    /// on it, is refused too; the syncer then starts a segment under the next name, and a
    /// full checkpoint and a delta on it become durable and survive a reopen.
    #[test]
    fn a_log_that_fails_refuses_what_was_validated_on_top_and_recovers() {
        let (t, disk, rx) = started();
        let blocked = crate::image::log::segment_path(&t.path().join("wal"), 1);
        std::fs::create_dir(&blocked).expect("block the first segment");
        submit_all(&disk, &[(1, 0, stream(1, 0, 1)), (2, 1, stream(2, 1, 2))]);
        let got = answers(&rx, 6);
        let p = persisted(&got);
        assert!(p[0].is_err(), "the log could not be written: {got:?}");
        assert!(p[1].is_err(), "2 is on a base that is not durable: {got:?}");
        submit_all(&disk, &[(3, 0, stream(3, 0, 3)), (4, 3, stream(4, 3, 4))]);
        let got = answers(&rx, 6);
        assert_eq!(persisted(&got), [Ok(3), Ok(4)], "{got:?}");
        disk.close();
        std::fs::remove_dir(&blocked).expect("rmdir");
        let image = ImageDir::open(t.path()).expect("reopen");
        assert_eq!(image.seq(), 4);
        let data = std::fs::read(image.data_path(ADDR, PAGE as u64)).expect("data");
        assert_eq!(data, vec![4u8; PAGE]);
    }

    /// Guards against a syncer that flushes once per checkpoint (the cost issue 12 is about):
    /// streams queued while the syncer is busy become durable together, with one flush of the
    /// log, and are still answered one by one, in order. The syncer is held saving the term
    /// (`term.tmp` is a FIFO nobody reads) until 20 small checkpoints are validated behind it.
    #[test]
    fn streams_queued_behind_a_busy_syncer_become_durable_with_one_flush() {
        let (t, disk, rx) = started();
        let fifo = t.path().join("term.tmp");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        submit_all(&disk, &[(1, 0, stream(1, 0, 1))]);
        assert_eq!(persisted(&answers(&rx, 3)), [Ok(1)]);
        let before = disk.flushes.load(Ordering::SeqCst);
        disk.submit(DiskOp::SaveTerm(2));
        let streams: Vec<(u64, u64, Vec<u8>)> = (2..=21u64)
            .map(|seq| (seq, seq - 1, stream(seq, seq - 1, seq as u8)))
            .collect();
        submit_all(&disk, &streams);
        // The persister answers each stream's two spool operations and then a discard itself,
        // the discard after it has handed stream 21 to the syncer: once all are answered, all
        // 20 streams are queued behind the held syncer.
        disk.submit(DiskOp::Discard { seq: 0 });
        let mut reports = Vec::new();
        let by_persister = 2 * streams.len() + 1;
        while reports
            .iter()
            .filter(|d| **d == DiskDone::Discarded)
            .count()
            < by_persister
        {
            reports.push(rx.recv_timeout(Duration::from_secs(10)).expect("validated"));
        }
        assert!(
            reports.contains(&DiskDone::Verified { seq: 21 }),
            "{reports:?}"
        );
        assert!(
            !reports
                .iter()
                .any(|d| matches!(d, DiskDone::Persisted { .. })),
            "the syncer was held: {reports:?}"
        );
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut f = File::open(&fifo).expect("open the fifo");
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
        });
        let finals = 1 + 3 * streams.len() + 1
            - reports
                .iter()
                .filter(|d| !matches!(d, DiskDone::Verified { .. }))
                .count();
        reports.extend(answers(&rx, finals));
        reader.join().expect("reader");
        let flushes = disk.flushes.load(Ordering::SeqCst) - before;
        disk.close();
        assert_eq!(
            persisted(&reports),
            (2..=21).map(Ok).collect::<Vec<_>>(),
            "each answered, in order: {reports:?}"
        );
        assert_eq!(flushes, 1, "20 queued checkpoints, one flush of the log");
        let image = ImageDir::open(t.path()).expect("reopen");
        assert_eq!(image.seq(), 21);
        let data = std::fs::read(image.data_path(ADDR, PAGE as u64)).expect("data");
        assert_eq!(data, vec![21u8; PAGE]);
    }
}
