//! The image directory of a primary without a spare: small checkpoints made durable in its own
//! log by the writer thread, applied to the data files in batches by an applier thread.
//!
//! ```text
//! writer thread ── validate, append, fdatasync ──▶ wal/<gen>.log   (the checkpoint is durable)
//!               └─ nudge ──▶ applier thread: every APPLY_EVERY, apply_pending() under the lock
//! first (full) checkpoint, a stream over RECORD_MAX, a forked capture:
//!   writer thread, under the lock: apply what the log holds, then commit_wal (file, apply)
//! ```
//!
//! Why a thread: applying writes every page the batch touched and `fsync`s the data files
//! (milliseconds with 50 clients); in the writer thread that stalled every checkpoint queued
//! behind it. Why the lock is the applier's handle: everything that applies or commits to the
//! image goes through one handle, so its manifest is never stale; the writer's own handle only
//! validates, spools and holds the directory's lock.

use crate::identity::ExeId;
use crate::image::log::RECORD_MAX;
use crate::image::{ImageDir, OwnLog};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long small streams wait in the log before they are applied together (as a spare's
/// applier does): one round of page writes and `fsync`s per batch instead of per checkpoint.
const APPLY_EVERY: Duration = Duration::from_millis(25);

/// The image directory of a primary without a spare.
pub(crate) struct LocalImage {
    /// The directory's locked handle: validation, spool files, the lock.
    dir: ImageDir,
    /// The handle that applies and commits (shares `dir`'s log bound), behind the lock the
    /// applier thread takes for each batch.
    image: Arc<Mutex<ImageDir>>,
    /// The log small streams are appended to, once started.
    log: Option<OwnLog>,
    /// Tells the applier thread there is something to apply; dropped, it applies and ends.
    nudge: Option<Sender<()>>,
}

impl LocalImage {
    pub(crate) fn new(dir: ImageDir) -> crate::Result<LocalImage> {
        let image = Arc::new(Mutex::new(dir.attach_shared()?));
        Ok(LocalImage {
            dir,
            image,
            log: None,
            nudge: None,
        })
    }

    /// The directory's locked handle.
    pub(crate) fn dir(&self) -> &ImageDir {
        &self.dir
    }

    /// Makes checkpoint `seq` durable: `bytes` (a small stream on top of an existing image) by
    /// one append and flush of the log, applied later; anything else (`bytes` `None`: the
    /// stream is already spooled to `wal/<seq>.tmp`) as a WAL file applied at once.
    pub(crate) fn commit(
        &mut self,
        seq: u64,
        bytes: Option<Vec<u8>>,
        exe: &ExeId,
    ) -> Result<(), String> {
        if let Some(b) = bytes.as_deref().filter(|b| b.len() <= RECORD_MAX) {
            if let Some(log) = self.log.as_mut() {
                log.commit(&self.dir, seq, b).map_err(|e| e.to_string())?;
                if let Some(n) = &self.nudge {
                    let _ = n.send(());
                }
                return Ok(());
            }
        }
        let mut image = lock(&self.image);
        // A stream that failed before it was delivered is never completed, nor left to hold
        // its disk space (a forked capture's spool, a write cut short by a full disk).
        let failed = |dir: &ImageDir, e: String| {
            let _ = dir.remove_spool(seq);
            e
        };
        if self.log.is_some() {
            // `commit_wal` supersedes whatever is pending, the log with it: what the log holds
            // is applied first, and its writer let go (started again after this stream). If
            // it cannot be applied the log stays as it is (it holds durable streams).
            image
                .apply_pending()
                .map_err(|e| failed(&self.dir, e.to_string()))?;
            self.log = None;
        }
        let r = (|| {
            if let Some(b) = &bytes {
                let (path, mut file) = self.dir.create_wal(seq).map_err(|e| e.to_string())?;
                std::io::Write::write_all(&mut file, b)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            image
                .commit_wal(seq, Some(exe))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })()
        .map_err(|e| failed(&self.dir, e));
        // The next small stream goes to the log, on top of this image (not before it has a
        // manifest: an image is found by it).
        if image.lineage().is_some() {
            self.log = image.start_own_log().map_err(|e| e.to_string())?;
            if self.log.is_some() && self.nudge.is_none() {
                self.nudge = Some(spawn_applier(self.image.clone()).map_err(|e| e.to_string())?);
            }
        }
        r
    }
}

fn lock(m: &Mutex<ImageDir>) -> MutexGuard<'_, ImageDir> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The applier thread: applies what the log holds at most every [`APPLY_EVERY`] after a nudge,
/// and once more when the writer is gone. A failure (no disk space for the pages, an I/O
/// error) is reported and tried at the next batch: the records stay durable in the log, and an
/// open of the directory applies them too.
fn spawn_applier(image: Arc<Mutex<ImageDir>>) -> std::io::Result<Sender<()>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("hotspare-apply".into())
        .spawn(move || {
            crate::global::library_thread();
            run_applier(&image, &rx);
        })?;
    Ok(tx)
}

fn run_applier(image: &Mutex<ImageDir>, rx: &Receiver<()>) {
    let mut last = Instant::now();
    let mut failing = None;
    while rx.recv().is_ok() {
        let due = last + APPLY_EVERY;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        while rx.try_recv().is_ok() {}
        last = Instant::now();
        apply(image, &mut failing);
    }
    apply(image, &mut failing);
}

/// One batch. A failure is reported when it starts or changes (it is tried again every batch,
/// 40 times a second under load: a full disk must not flood the program's stderr), and its
/// end once a batch applies again.
fn apply(image: &Mutex<ImageDir>, failing: &mut Option<String>) {
    // The lock is not held while reporting (stderr may block).
    let r = lock(image).apply_pending();
    match r {
        Err(e) => {
            let e = e.to_string();
            if failing.as_ref() != Some(&e) {
                eprintln!("hotspare: applying the image's log to its data files: {e} (tried again at every batch; the checkpoints stay durable in the log)");
                *failing = Some(e);
            }
        }
        Ok(seq) => {
            if failing.take().is_some() {
                eprintln!("hotspare: the image's log applies again (image at checkpoint {seq})");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ADDR: u64 = 0x7000_0000_0000;
    const PAGE: usize = 4096;
    /// 1 MiB: a full stream is over RECORD_MAX, a one-page delta is not.
    const PAGES: usize = super::model::PAGES;

    /// Checkpoint `seq`: every page filled with `seq` when full (`base` 0), else page `seq`.
    fn stream(exe: &ExeId, seq: u64, base: u64) -> Vec<u8> {
        let pages: Vec<usize> = if base == 0 {
            (0..PAGES).collect()
        } else {
            vec![seq as usize % PAGES]
        };
        super::model::stream_of(exe, [0x11; 16], ADDR, seq, base, &pages)
    }

    fn spools(root: &Path) -> Vec<String> {
        std::fs::read_dir(root.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    /// Guards against a stream that goes as a file (a forked capture, a stream over
    /// RECORD_MAX) and fails because the log cannot be applied first: its spool must not stay
    /// behind holding its disk space (a full disk is the usual cause), and the log's durable
    /// records must stay (not be superseded by the log started again), to be applied once the
    /// image can take them, or by the next open.
    #[test]
    fn a_file_stream_that_cannot_apply_the_log_first_leaves_no_spool_and_keeps_the_log() {
        let t = tempfile::tempdir().unwrap();
        let exe = ExeId::current().unwrap();
        let mut local = LocalImage::new(ImageDir::open(t.path()).unwrap()).unwrap();
        let image = local.image.clone();
        local.commit(1, Some(stream(&exe, 1, 0)), &exe).unwrap();
        assert!(local.log.is_some(), "small streams go to the log now");
        // The data file cannot be written (a directory in its way): nothing applies.
        let data = t
            .path()
            .join("data")
            .join(format!("{ADDR:016x}-{:x}.pages", PAGES * PAGE));
        let aside = t.path().join("aside");
        std::fs::rename(&data, &aside).unwrap();
        std::fs::create_dir(&data).unwrap();
        for seq in 2..=3 {
            local
                .commit(seq, Some(stream(&exe, seq, seq - 1)), &exe)
                .unwrap();
        }
        // A forked capture's stream, spooled by its child.
        let (p, mut f) = local.dir.create_wal(4).unwrap();
        std::io::Write::write_all(&mut f, &stream(&exe, 4, 3)).unwrap();
        drop((p, f));
        local.commit(4, None, &exe).unwrap_err();
        assert_eq!(spools(t.path()), Vec::<String>::new(), "the failed spool");
        let tip = ImageDir::open_read_only(t.path()).unwrap().tip().unwrap();
        assert_eq!(tip.seq, 3, "the log's records are still durable");
        // The disk is writable again: the next (full) stream commits on top of them.
        std::fs::remove_dir(&data).unwrap();
        std::fs::rename(&aside, &data).unwrap();
        local.commit(5, Some(stream(&exe, 5, 0)), &exe).unwrap();
        assert_eq!(lock(&image).seq(), 5);
        local.commit(6, Some(stream(&exe, 6, 5)), &exe).unwrap();
        drop(local);
        // The applier thread ends (its last apply done) once it lets go of the image.
        while Arc::strong_count(&image) > 1 {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(image);
        let dir = ImageDir::open(t.path()).unwrap();
        assert_eq!(dir.seq(), 6);
        dir.verify_data().unwrap();
    }
}

#[cfg(test)]
mod model {
    use super::*;
    use crate::image::{write_stream, Begin, RangeEntry, Run, FORMAT_VERSION};

    const ADDR: u64 = 0x7100_0000_0000;
    const PAGE: usize = 4096;
    /// 1 MiB: a full stream, or a delta of most pages, is over RECORD_MAX.
    pub(super) const PAGES: usize = 256;

    /// Checkpoint `seq` on top of `base` (0: full, every page not in `pages` zeros) writing
    /// `pages` with `seq`'s byte.
    fn stream(exe: &ExeId, seq: u64, base: u64, pages: &[usize]) -> Vec<u8> {
        stream_of(exe, [0x22; 16], ADDR, seq, base, pages)
    }

    /// [`stream`] of a lineage, for a range of [`PAGES`] pages at `addr`.
    pub(super) fn stream_of(
        exe: &ExeId,
        lineage: [u8; 16],
        addr: u64,
        seq: u64,
        base: u64,
        pages: &[usize],
    ) -> Vec<u8> {
        let begin = Begin {
            format_version: FORMAT_VERSION,
            lineage,
            term: 1,
            seq,
            base_seq: base,
            exe_id: exe.0,
            page_size: PAGE as u32,
            ranges: vec![RangeEntry {
                addr,
                len: (PAGES * PAGE) as u64,
                complete: base == 0,
            }],
            meta: Vec::new(),
        };
        let pg = vec![seq as u8; PAGE];
        let at = |p: usize| addr + (p * PAGE) as u64;
        let runs = (0..PAGES).filter_map(|p| {
            if pages.contains(&p) {
                Some(Run::Data(at(p), &pg))
            } else {
                (base == 0).then_some(Run::Zero(at(p), PAGE as u64))
            }
        });
        let mut out = Vec::new();
        write_stream(&mut out, &begin, runs).unwrap();
        out
    }

    /// Drops `local` as a crash would leave the directory, once its applier thread is gone.
    fn crash(local: LocalImage) {
        let image = local.image.clone();
        drop(local);
        while Arc::strong_count(&image) > 1 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Guards against any interleaving of the local image's paths losing or misapplying a
    /// checkpoint it reported durable: a random run of small deltas (the log), deltas and full
    /// streams over RECORD_MAX (a file, after the log is applied), file commits that fail
    /// before their stream is durable (the log deleted and started again) and crashes (the
    /// directory opened again) must leave, at every open, exactly the model's pages as of the
    /// last checkpoint that succeeded, and no spool behind.
    #[test]
    fn every_checkpoint_reported_durable_is_in_the_image_at_the_next_open() {
        let exe = ExeId::current().unwrap();
        for seed in 0..12u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let t = tempfile::tempdir().unwrap();
            let data = t
                .path()
                .join("data")
                .join(format!("{ADDR:016x}-{:x}.pages", PAGES * PAGE));
            let mut local = LocalImage::new(ImageDir::open(t.path()).unwrap()).unwrap();
            // The model: pages as of the last checkpoint reported durable, and its seq.
            let mut mem = vec![0u8; PAGES * PAGE];
            let (mut acked, mut seq, mut full_next) = (0u64, 0u64, true);
            let mut steps = Vec::new();
            for _ in 0..80 {
                let op = rng.u8(..20);
                steps.push(op);
                if op == 0 {
                    crash(local);
                    let dir = ImageDir::open(t.path()).unwrap();
                    assert_eq!(dir.seq(), acked, "seed {seed}: after {steps:?}");
                    if acked > 0 {
                        assert!(std::fs::read(&data).unwrap() == mem, "seed {seed}: pages");
                    }
                    local = LocalImage::new(dir).unwrap();
                    // A resumed program goes on from the image.
                    seq = acked;
                    continue;
                }
                seq += 1;
                let base = if full_next { 0 } else { seq - 1 };
                let pages: Vec<usize> = if base == 0 && rng.bool() {
                    // A full stream over RECORD_MAX (a file) ...
                    (0..PAGES).collect()
                } else if base == 0 {
                    // ... or a small one (the log), the other pages zeros.
                    (0..rng.usize(1..5)).map(|_| rng.usize(..PAGES)).collect()
                } else if op < 3 {
                    // A delta over RECORD_MAX.
                    (0..PAGES).filter(|_| rng.bool()).collect()
                } else {
                    vec![rng.usize(..PAGES)]
                };
                let r = if op == 3 && acked > 0 {
                    // A forked capture whose spool is gone: commit_wal fails before the stream
                    // is durable.
                    local.commit(seq, None, &exe)
                } else {
                    local.commit(seq, Some(stream(&exe, seq, base, &pages)), &exe)
                };
                if r.is_ok() {
                    if base == 0 {
                        mem.fill(0);
                    }
                    for &p in &pages {
                        mem[p * PAGE..(p + 1) * PAGE].fill(seq as u8);
                    }
                    acked = seq;
                    full_next = false;
                } else {
                    // The engine's next checkpoint is full.
                    assert_eq!(op, 3, "seed {seed}: {r:?} after {steps:?}");
                    full_next = true;
                }
                let spools = std::fs::read_dir(t.path().join("wal"))
                    .unwrap()
                    .filter(|e| e.as_ref().unwrap().path().extension() == Some("tmp".as_ref()))
                    .count();
                assert_eq!(spools, 0, "seed {seed}");
            }
            crash(local);
            let dir = ImageDir::open(t.path()).unwrap();
            assert_eq!(dir.seq(), acked, "seed {seed}: at the end of {steps:?}");
            assert!(std::fs::read(&data).unwrap() == mem, "seed {seed}: pages");
            dir.verify_data().unwrap();
        }
    }
}
