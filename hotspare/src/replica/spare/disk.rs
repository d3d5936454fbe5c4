//! The spare's disk work, off the event loop: a **persister** thread runs the protocol's disk
//! operations in the order asked (term, spool, validate — reported as `DiskDone::Verified`, so
//! a primary that asked for it is acknowledged on receipt — then make durable, discard) and an
//! **applier** thread writes durable checkpoints into the data files, so an acknowledgement
//! never waits for a large apply. The queue to the persister is bounded in bytes: when it is
//! full the event loop stops reading the primary's connection (back-pressure reaches the
//! primary through TCP) instead of growing without limit.

use crate::image::{ImageDir, LineagePolicy, Tip as ImageTip};
use hotspare_proto::spare::{DiskDone, DiskOp, Tip};
use hotspare_proto::StreamHeader;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of stream data queued for the persister before the event loop stops reading.
pub(super) const QUEUE_LIMIT: u64 = 64 << 20;

/// Durable checkpoints are applied to the data files at most this often while the primary is
/// healthy ([`Disk::urgent`] lifts it).
const APPLY_EVERY: Duration = Duration::from_millis(25);

/// The handle the event loop holds.
pub(super) struct Disk {
    ops: mpsc::Sender<DiskOp>,
    /// Stream bytes queued and not yet written.
    pub(super) queued: Arc<AtomicU64>,
    /// Set by the event loop while a takeover may be near (no primary, or one silent for
    /// half the detection time): applies then run at once, since a takeover waits for them.
    pub(super) urgent: Arc<AtomicBool>,
}

impl Disk {
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
    file: Result<File, String>,
    /// A copy of what was written, while it is at most [`COPY_LIMIT`]: validated from memory
    /// instead of reading the file back (`None`: too large, read the file).
    copy: Option<Vec<u8>>,
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
    let root: PathBuf = image.path().to_path_buf();
    let tip = image.tip();
    // The applier owns the directory handle that applies; a persister that must replace a
    // lineage first finishes every apply under the same lock.
    let applier_dir = Arc::new(Mutex::new(image));
    let (ops, rx) = mpsc::channel::<DiskOp>();
    let (apply_tx, apply_rx) = mpsc::channel::<()>();
    let queued = Arc::new(AtomicU64::new(0));
    let urgent = Arc::new(AtomicBool::new(false));
    {
        let (dir, done, wake) = (applier_dir.clone(), done.clone(), wake.clone());
        let urgent = urgent.clone();
        std::thread::Builder::new()
            .name("hotspare-applier".into())
            .spawn(move || {
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
                    let r = dir
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply_pending()
                        .map_err(|e| e.to_string());
                    if done.send(DiskDone::Applied(r)).is_err() {
                        return;
                    }
                    wake();
                }
            })?;
    }
    let q = queued.clone();
    std::thread::Builder::new()
        .name("hotspare-persister".into())
        .spawn(move || {
            let persister = Persister {
                root,
                tip,
                spool: None,
                applier_dir,
            };
            persister.run(rx, apply_tx, done, wake, q)
        })?;
    Ok(Disk {
        ops,
        queued,
        urgent,
    })
}

struct Persister {
    root: PathBuf,
    tip: Option<ImageTip>,
    spool: Option<Spool>,
    applier_dir: Arc<Mutex<ImageDir>>,
}

impl Persister {
    fn run(
        mut self,
        rx: mpsc::Receiver<DiskOp>,
        apply: mpsc::Sender<()>,
        done: mpsc::Sender<DiskDone>,
        wake: Arc<dyn Fn() + Send + Sync>,
        queued: Arc<AtomicU64>,
    ) {
        for op in rx {
            let answer = match op {
                DiskOp::SaveTerm(term) => Some(DiskDone::TermSaved {
                    term,
                    result: write_term(&self.root, term).map_err(|e| e.to_string()),
                }),
                DiskOp::SpoolStart {
                    header,
                    lineage,
                    term,
                } => {
                    self.drop_spool();
                    let file = ImageDir::create_wal_at(&self.root, header.seq)
                        .map(|(_, f)| f)
                        .map_err(|e| e.to_string());
                    let failed = file.as_ref().err().cloned();
                    self.spool = Some(Spool {
                        header,
                        lineage,
                        term,
                        file,
                        copy: Some(Vec::new()),
                    });
                    failed.map(|why| DiskDone::SpoolFailed {
                        seq: header.seq,
                        why,
                    })
                }
                DiskOp::Spool { seq, bytes } => {
                    queued.fetch_sub(bytes.len() as u64, Ordering::SeqCst);
                    self.spool_bytes(seq, &bytes)
                }
                DiskOp::Persist {
                    seq,
                    replace_lineage,
                } => {
                    // The intermediate report, between validation and durability; the core
                    // does not count it as the end of the operation.
                    let verified = || {
                        if done.send(DiskDone::Verified { seq }).is_ok() {
                            wake();
                        }
                    };
                    Some(DiskDone::Persisted {
                        seq,
                        result: self.persist(seq, replace_lineage, verified),
                    })
                }
                DiskOp::Discard { seq } => {
                    if self.spool.as_ref().is_some_and(|s| s.header.seq == seq) {
                        self.drop_spool();
                    }
                    Some(DiskDone::Discarded)
                }
                DiskOp::Apply => {
                    // The applier answers it.
                    let _ = apply.send(());
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

    fn drop_spool(&mut self) {
        if let Some(s) = self.spool.take() {
            drop(s.file);
            let _ = std::fs::remove_file(
                self.root
                    .join("wal")
                    .join(format!("{:020}.tmp", s.header.seq)),
            );
        }
    }

    fn spool_bytes(&mut self, seq: u64, bytes: &[u8]) -> Option<DiskDone> {
        let s = self.spool.as_mut().filter(|s| s.header.seq == seq)?;
        let Ok(f) = s.file.as_mut() else { return None };
        if let Some(c) = &mut s.copy {
            if c.len() + bytes.len() <= COPY_LIMIT {
                c.extend_from_slice(bytes);
            } else {
                s.copy = None;
            }
        }
        match f.write_all(bytes) {
            Ok(()) => None,
            Err(e) => {
                let why = format!("spooling checkpoint {seq}: {e}");
                s.file = Err(why.clone());
                Some(DiskDone::SpoolFailed { seq, why })
            }
        }
    }

    /// Validates the whole spooled stream against the durable tip, calls `verified` (only if it
    /// passed), and makes it durable. What the stream's BEGIN says must be what the primary
    /// declared (sequence, base, lineage, term) — checked before anything is made durable, so
    /// a refused stream never is, and before `verified`, so it is never acknowledged either.
    fn persist(
        &mut self,
        seq: u64,
        replace_lineage: bool,
        verified: impl FnOnce(),
    ) -> Result<Tip, String> {
        let Some(s) = self.spool.take().filter(|s| s.header.seq == seq) else {
            return Err(format!("checkpoint {seq} was not spooled"));
        };
        let (header, lineage, term) = (s.header, s.lineage, s.term);
        let tmp = self.root.join("wal").join(format!("{seq:020}.tmp"));
        let refuse = |why: String| {
            let _ = std::fs::remove_file(&tmp);
            Err(why)
        };
        if let Err(why) = s.file {
            return refuse(why);
        }
        drop(s.file);
        let copy = s.copy;
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
        let _guard = if other_lineage {
            let mut g = self.applier_dir.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = g.apply_pending() {
                return refuse(e.to_string());
            }
            Some(g)
        } else {
            None
        };
        let dir = ImageDir::attach(&self.root).map_err(|e| e.to_string())?;
        let summary = match dir.persist_wal_from(
            seq,
            copy.as_deref(),
            self.tip.as_ref(),
            policy,
            term,
            |_| verified(),
        ) {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string()),
        };
        let tip = ImageTip::from(&summary.begin);
        let out = proto_tip(&tip);
        self.tip = Some(tip);
        Ok(out)
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
    use crate::image::{write_stream, Begin, RangeEntry, Run, FORMAT_VERSION};
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
        let image = ImageDir::open(t.path()).expect("image");
        let (tx, rx) = mpsc::channel();
        let disk = start(image, tx, Arc::new(|| {})).expect("threads");
        let mut expect = 0;
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
            expect += 3;
        }
        let mut got = Vec::new();
        let mut finals = 0;
        while finals < expect {
            let d = rx.recv_timeout(Duration::from_secs(10)).expect("an answer");
            if !matches!(d, DiskDone::Verified { .. }) {
                finals += 1;
            }
            got.push(d);
        }
        got
    }

    /// Guards against the persister acknowledging-on-receipt what it then refuses, or not
    /// reporting validation at all: `Verified` comes between the spool answers and
    /// `Persisted { Ok }` for a good stream, never for a refused one, and every operation
    /// still gets exactly one final answer.
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
        assert_eq!(
            shape,
            [
                "answered",
                "answered",
                "verified 1",
                "persisted 1 ok",
                "answered",
                "answered",
                "persisted 2 err",
                "answered",
                "answered",
                "verified 3",
                "persisted 3 ok",
            ],
            "{got:?}"
        );
    }
}
