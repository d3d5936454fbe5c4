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
        if self.log.is_some() {
            // `commit_wal` supersedes whatever is pending, the log with it: what the log holds
            // is applied first, and its writer let go (started again after this stream).
            image.apply_pending().map_err(|e| e.to_string())?;
            self.log = None;
        }
        if let Some(b) = &bytes {
            let (path, mut file) = self.dir.create_wal(seq).map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut file, b)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let r = image.commit_wal(seq, Some(exe)).map(|_| ());
        if r.is_err() {
            // A stream that failed before it was delivered is never completed.
            let _ = self.dir.remove_spool(seq);
        }
        // The next small stream goes to the log, on top of this image (not before it has a
        // manifest: an image is found by it).
        if image.lineage().is_some() {
            self.log = image.start_own_log().map_err(|e| e.to_string())?;
            if self.log.is_some() && self.nudge.is_none() {
                self.nudge = Some(spawn_applier(self.image.clone()).map_err(|e| e.to_string())?);
            }
        }
        r.map_err(|e| e.to_string())
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
    while rx.recv().is_ok() {
        let due = last + APPLY_EVERY;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        while rx.try_recv().is_ok() {}
        last = Instant::now();
        apply(image);
    }
    apply(image);
}

fn apply(image: &Mutex<ImageDir>) {
    if let Err(e) = lock(image).apply_pending() {
        eprintln!("hotspare: applying the image's log to its data files: {e} (tried again)");
    }
}
