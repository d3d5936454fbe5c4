//! The image directory: the last complete image, kept crash-safe, in a form that resume can
//! `mmap` directly.
//!
//! ```text
//! DIR/lock                          flock(LOCK_EX) of the one process using the directory; its pid
//! DIR/manifest                      one BEGIN frame: the image's lineage, sequence, ranges, metadata
//! DIR/data/<addr>-<len>.pages       one file per range, byte i = byte i of the range
//! DIR/data/<addr>-<len>.crc         CRC32C per page of it
//! DIR/wal/<seq>.tmp                 a checkpoint stream being written (ignored by readers)
//! DIR/wal/<seq>.cpt                 a complete stream, durable, maybe not applied yet
//! DIR/wal/<seq>.bad                 a complete stream that recovery refused
//! DIR/wal/applying                  the data files may hold pages of a .cpt not yet in the manifest
//! ```
//!
//! **Why a write-ahead log.** Resume maps the data files (`MAP_PRIVATE`), so they must hold the
//! image in place, page for page; an incremental checkpoint therefore has to overwrite pages of
//! them, which cannot be made atomic by rename. So a checkpoint is first written whole to
//! `wal/<seq>.tmp`, `fsync`ed and renamed to `.cpt` (the directory `fsync`ed too): from then on it
//! is durable and will be applied, even after a crash. Applying = validate the whole stream
//! (every CRC, the END counts and digest, [`check_applies`] against the image), reserve the disk
//! space every write will need (`fallocate`), mark the data files as possibly ahead of the
//! manifest (`wal/applying`, made durable), then `pwrite` its pages into the data files, `fsync`
//! them, write the new manifest by `fsync` + rename, and only then delete the WAL file and the
//! mark. A crash at any point leaves either the old manifest and a complete WAL file (replayed on
//! the next open: page writes are idempotent) or the new manifest. A torn or damaged stream is
//! never applied and never touches the data files; a stream that finds no disk space fails
//! before it touches them, so the image stays usable at its last checkpoint.

use super::format::{self, Begin, FrameReader, Run, Summary};
use super::lineage::{check_applies, LineagePolicy, Tip};
use super::log;
use super::{FormatError, ImageError};
use crate::identity::ExeId;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A durable stream waiting to be applied: a WAL file of its own, or a record of the log.
#[derive(Clone, Debug)]
enum Source {
    File(PathBuf),
    Record(log::Record),
}

impl Source {
    /// The name messages give it.
    fn name(&self) -> PathBuf {
        match self {
            Source::File(p) => p.clone(),
            Source::Record(r) => r.name(),
        }
    }

    /// The stream's bytes in memory (a record), or `None` for a file (read from its path).
    fn bytes(&self) -> Result<Option<Vec<u8>>, ImageError> {
        match self {
            Source::File(_) => Ok(None),
            Source::Record(r) => r.read().map(Some),
        }
    }

    /// The stream's BEGIN.
    fn begin(&self) -> Result<Begin, ImageError> {
        match self {
            Source::File(p) => read_begin_file(p),
            Source::Record(r) => {
                let bytes = r.read()?;
                read_begin(std::io::Cursor::new(bytes), &r.name())
            }
        }
    }
}

/// A stream that could not be applied: which, why, and whether some of its pages had already
/// been written into the data files when it failed.
struct Failure {
    source: Source,
    error: ImageError,
    wrote: bool,
}

/// What [`ImageDir::apply_batch`] did: the streams applied, and the first one that could not be.
type Batch = (Vec<Summary>, Option<Failure>);

/// An image directory, recovered and ready.
#[derive(Debug)]
pub struct ImageDir {
    root: PathBuf,
    manifest: Option<Begin>,
    /// `DIR/lock`, flocked, for the life of a handle made by [`ImageDir::open`].
    lock: Option<File>,
    /// The data files may hold pages of a pending WAL stream that the manifest does not cover
    /// (`wal/applying` exists): the image is usable only once that stream is applied.
    ahead: bool,
    /// `wal/applying` exists and is durable, so pages may be written.
    marker_durable: bool,
    /// The newest durable stream not yet applied, when one is pending.
    pending: Option<Tip>,
    /// How far the log's records are durable, as this process's writer made them (shared by
    /// [`ImageDir::attach_shared`] handles).
    log: Arc<log::Durable>,
    /// Log records that recovery refused (a record cannot be renamed `.bad`): (gen, offset).
    refused: Vec<(u64, u64)>,
    /// What this handle's scans of the log have read and checked already.
    log_scanned: log::ScanCache,
}

/// Maps an I/O error to [`ImageError::Io`] naming the file and what was being done to it.
pub(crate) fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Creates a file readable and writable by its owner only (images hold process memory).
fn create_private(path: &Path) -> Result<File, ImageError> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path, "create"))
}

/// Reads the page at `addr` of range `r` from its data file in the image directory `root`
/// (a hole, or a file shorter than the range, reads as zeros). What the spare resolves a
/// delta against once the data files hold its base.
pub fn read_data_page(
    root: &Path,
    r: &format::RangeEntry,
    addr: u64,
    out: &mut [u8],
) -> std::io::Result<()> {
    let path = root
        .join("data")
        .join(format!("{:016x}-{:x}.pages", r.addr, r.len));
    let f = File::open(path)?;
    let off = addr - r.addr;
    let mut got = 0;
    while got < out.len() {
        match f.read_at(&mut out[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out[got..].fill(0);
    Ok(())
}

/// Opens (creating, `0600`) a file that keeps its contents.
fn open_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Makes `len` bytes at `offset` read as zeros without storing them (a ZERO run). Only ranges
/// that were anonymous memory get ZERO runs, so no live process maps these data files.
fn punch_hole(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    // A filesystem without hole punching: write the zeros.
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], offset + at)?;
        at += n as u64;
    }
    Ok(())
}

/// Allocates disk space for `len` bytes at `offset` (the file's size is not changed), so that
/// writing them later cannot fail for lack of space. A filesystem that cannot allocate ahead
/// (`EOPNOTSUPP`) is let through: there a write may still find the disk full.
fn reserve(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(e)
}

/// Opens (creating, `0600`) a file that is updated in place, and gives it its size. Says
/// whether it was created.
fn open_sized(path: &Path, len: u64) -> Result<(File, bool), ImageError> {
    let created = !path.exists();
    let f = open_private(path).map_err(io_err(path, "open"))?;
    f.set_len(len).map_err(io_err(path, "set size"))?;
    Ok((f, created))
}

fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

/// Takes `DIR/lock` (`flock(LOCK_EX | LOCK_NB)`; the lock belongs to this open file
/// description, so even a second open in the same process conflicts) and records our pid in it.
/// A conflict is retried for up to 100 ms: a child being forked holds a copy of the holder's
/// descriptor until its `exec` closes it (`O_CLOEXEC`), which must not count as a holder.
fn take_lock(root: &Path) -> Result<File, ImageError> {
    let p = root.join("lock");
    let f = open_private(&p).map_err(io_err(&p, "open"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(ImageError::Io {
                path: p,
                what: "lock",
                source: e,
            });
        }
        if std::time::Instant::now() >= deadline {
            let holder = fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(ImageError::Locked {
                path: root.to_path_buf(),
                holder,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // Written over the old pid, then cut to length: a reader never sees an empty file.
    let pid = format!("{}\n", std::process::id());
    f.write_all_at(pid.as_bytes(), 0)
        .and_then(|()| f.set_len(pid.len() as u64))
        .map_err(io_err(&p, "write"))?;
    Ok(f)
}

/// The first frame of a WAL file, decoded and validated.
fn read_begin_file(path: &Path) -> Result<Begin, ImageError> {
    let f = File::open(path).map_err(io_err(path, "open"))?;
    read_begin(BufReader::new(f), path)
}

/// The first frame of a stream read from `r` (named `path` in errors), decoded and validated.
fn read_begin(r: impl std::io::Read, path: &Path) -> Result<Begin, ImageError> {
    let fmt = |source| ImageError::Format {
        path: path.to_path_buf(),
        source,
    };
    let frame = FrameReader::new(r)
        .next_frame()
        .map_err(fmt)?
        .ok_or(FormatError::Truncated { offset: 0 })
        .map_err(fmt)?;
    if frame.kind != format::FrameKind::Begin {
        return Err(fmt(FormatError::Malformed {
            offset: 0,
            what: "stream does not start with BEGIN".into(),
        }));
    }
    format::decode_begin(&frame.payload, 0).map_err(fmt)
}

/// Where in `files` (sorted by address) the byte at `addr` lies.
fn range_of(files: &[RangeFiles], addr: u64) -> Option<&RangeFiles> {
    let i = files.partition_point(|r| r.addr + r.len <= addr);
    files.get(i).filter(|r| r.addr <= addr)
}

/// The two files of one range while a stream is applied.
struct RangeFiles {
    addr: u64,
    len: u64,
    data_path: PathBuf,
    data: File,
    crc_path: PathBuf,
    crc: File,
}

/// The log of a primary without a spare ([`ImageDir::start_own_log`]). It tracks the newest
/// durable stream itself, as the handle that applies changes the image meanwhile.
#[derive(Debug)]
pub struct OwnLog {
    writer: log::Writer,
    tip: Option<Tip>,
}

impl OwnLog {
    /// Validates a stream the primary encoded ([`check_applies`] on the newest durable stream,
    /// another lineage refused; `checker` is any handle of the directory) and makes it durable:
    /// one append, one `fdatasync`. Applied later by [`ImageDir::apply_pending`], or by recovery
    /// at the next open. On failure nothing of it counts and the newest durable stream is what
    /// it was.
    pub fn commit(&mut self, checker: &ImageDir, seq: u64, bytes: &[u8]) -> Result<(), ImageError> {
        // For messages: the record has no file of its own.
        let name = checker.wal_path(seq, "record");
        let summary = checker.check_stream(
            &name,
            Some(bytes),
            seq,
            self.tip.as_ref(),
            LineagePolicy::RefuseNew,
            0,
        )?;
        self.writer.append(seq, summary.begin.lineage, bytes)?;
        self.writer.flush()?;
        self.tip = Some(Tip::from(&summary.begin));
        Ok(())
    }

    /// The newest durable stream.
    pub fn tip(&self) -> Option<&Tip> {
        self.tip.as_ref()
    }
}

impl ImageDir {
    /// Opens `root`, creating it if needed, takes its lock (held until the `ImageDir` is
    /// dropped; [`ImageError::Locked`] if another process, or another `open` in this one, holds
    /// it) and brings it to its last complete checkpoint: torn WAL files are removed, complete
    /// ones newer than the manifest applied. A complete one that cannot be applied now (no disk
    /// space) stays pending and the image stays at its manifest, unless the data files already
    /// hold part of it ([`ImageError::Unfinished`]).
    pub fn open(root: impl AsRef<Path>) -> Result<ImageDir, ImageError> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            fs::create_dir_all(&root).map_err(io_err(&root, "create directory"))?;
            let parent = root
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            fsync_dir(parent)?;
        }
        let lock = take_lock(&root)?;
        let mut created = false;
        for d in [root.join("data"), root.join("wal")] {
            if !d.is_dir() {
                fs::create_dir_all(&d).map_err(io_err(&d, "create directory"))?;
                created = true;
            }
        }
        if created {
            fsync_dir(&root)?;
        }
        let mut dir = ImageDir::unlocked(root)?;
        dir.lock = Some(lock);
        dir.recover()?;
        Ok(dir)
    }

    /// A handle that holds no lock and runs no recovery.
    fn unlocked(root: PathBuf) -> Result<ImageDir, ImageError> {
        let manifest = read_manifest(&root)?;
        let ahead = root.join("wal").join("applying").exists();
        let mut dir = ImageDir {
            root,
            manifest,
            lock: None,
            ahead,
            marker_durable: false,
            pending: None,
            log: Arc::default(),
            refused: Vec::new(),
            log_scanned: log::ScanCache::default(),
        };
        dir.pending = dir.pending_tip();
        Ok(dir)
    }

    /// Another handle on this directory, in this process, that shares its knowledge of how far
    /// the log is durable: the handle of the log's writer ([`ImageDir::log_writer`]) and the
    /// one that applies must be such a pair, so that the applier never applies a record whose
    /// flush has not returned.
    pub fn attach_shared(&self) -> Result<ImageDir, ImageError> {
        let mut d = ImageDir::unlocked(self.root.clone())?;
        d.log = self.log.clone();
        d.pending = d.pending_tip();
        Ok(d)
    }

    /// The writer of the directory's log (`wal/<gen>.log`): one per directory, in the process
    /// that holds its lock. Its first append starts a new segment.
    pub fn log_writer(&self) -> Result<log::Writer, ImageError> {
        log::Writer::new(&self.root.join("wal"), self.log.clone())
    }

    /// The log's segments as recovery reads them (for `hotspare inspect`).
    pub fn log_segments(&self) -> Result<Vec<log::Segment>, ImageError> {
        log::scan_cached(&self.root.join("wal"), self.log.get(), &self.log_scanned)
    }

    /// Opens an existing image, refusing a directory that holds none.
    pub fn open_existing(root: impl AsRef<Path>) -> Result<ImageDir, ImageError> {
        let root = root.as_ref();
        if !root.join("manifest").exists() {
            return Err(ImageError::NoImage {
                path: root.to_path_buf(),
            });
        }
        ImageDir::open(root)
    }

    /// Another handle on a directory already opened (and recovered) by [`ImageDir::open`]: reads
    /// the manifest, runs no recovery and takes no lock (a spare's applier thread uses it while
    /// the receiving thread writes new streams).
    pub fn attach(root: impl AsRef<Path>) -> Result<ImageDir, ImageError> {
        ImageDir::unlocked(root.as_ref().to_path_buf())
    }

    /// Opens an image for reading only: no recovery, no lock, nothing created or changed (for
    /// `hotspare inspect`).
    pub fn open_read_only(root: impl AsRef<Path>) -> Result<ImageDir, ImageError> {
        let dir = ImageDir::unlocked(root.as_ref().to_path_buf())?;
        match dir.manifest {
            Some(_) => Ok(dir),
            None => Err(ImageError::NoImage { path: dir.root }),
        }
    }

    /// The descriptor of the directory's lock, for a forked child to close (so that the lock
    /// does not outlive this process in it).
    pub fn lock_fd(&self) -> Option<RawFd> {
        self.lock.as_ref().map(|f| f.as_raw_fd())
    }

    /// WAL files present, sorted (`.tmp` torn, `.cpt` complete but not applied, `.bad` refused).
    pub fn wal_files(&self) -> Result<Vec<PathBuf>, ImageError> {
        let wal = self.root.join("wal");
        let mut v: Vec<PathBuf> = fs::read_dir(&wal)
            .map_err(io_err(&wal, "read directory"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "tmp" || e == "cpt" || e == "bad")
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// The complete, durable WAL files (`.cpt`), in sequence order.
    fn pending_files(&self) -> Result<Vec<PathBuf>, ImageError> {
        Ok(self
            .wal_files()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cpt"))
            .collect())
    }

    /// Every durable stream not known to be applied: the `.cpt` files and the log's records
    /// that count (not refused, and not of the manifest's lineage at or below its `seq`), in
    /// sequence order (within a lineage, the order they became durable).
    fn pending_sources(&self) -> Result<Vec<Source>, ImageError> {
        let mut v: Vec<(u64, Source)> = self
            .pending_files()?
            .into_iter()
            .map(|p| {
                let seq = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                (seq, Source::File(p))
            })
            .collect();
        let applied = self.manifest.as_ref().map(|m| (m.lineage, m.seq));
        for seg in log::scan_cached(&self.root.join("wal"), self.log.get(), &self.log_scanned)? {
            for r in seg.records {
                let done = applied.is_some_and(|(l, s)| r.lineage == l && r.seq <= s);
                if !done && !self.refused.contains(&(r.gen, r.offset)) {
                    v.push((r.seq, Source::Record(r)));
                }
            }
        }
        v.sort_by_key(|(seq, _)| *seq);
        Ok(v.into_iter().map(|(_, s)| s).collect())
    }

    /// Deletes log segments that no longer count, and those before the newest whose records
    /// are all applied (the newest is the writer's; with `newest_too`, at open, when no
    /// writer can exist, it goes as well). Best effort: a segment left behind is read again,
    /// and its records recognised as applied.
    fn trim_log(&self, newest_too: bool) {
        let Ok(segs) = log::scan_cached(&self.root.join("wal"), self.log.get(), &self.log_scanned)
        else {
            return;
        };
        let applied = self.manifest.as_ref().map(|m| (m.lineage, m.seq));
        let newest_live = segs.iter().rposition(|s| s.live);
        let mut trimming = true;
        for (i, seg) in segs.iter().enumerate() {
            if seg.creating {
                continue;
            }
            let done = seg.records.iter().all(|r| {
                applied.is_some_and(|(l, s)| r.lineage == l && r.seq <= s)
                    && !self.refused.contains(&(r.gen, r.offset))
            });
            // Only a prefix of the chain: a record of a later segment is never applied before
            // one of an earlier one.
            trimming &= done;
            let dead = !seg.live && newest_live.is_some_and(|n| i < n);
            if dead || (seg.live && trimming && (newest_too || Some(i) != newest_live)) {
                let _ = fs::remove_file(&seg.path);
            }
        }
    }

    /// A full stream `seq` of lineage `keep` is about to become durable and replaces the
    /// image: the `.cpt` files of other lineages are deleted (the log's records stop counting
    /// with [`log::Writer::start_new_chain`], which the caller runs first).
    pub fn supersede_lineages(&self, keep: [u8; 16], seq: u64) -> Result<(), ImageError> {
        self.drop_other_lineage_files(keep, &self.wal_path(seq, "cpt"))
    }

    /// Deletes every `.cpt` file of a lineage other than `keep`, except `except`.
    fn drop_other_lineage_files(&self, keep: [u8; 16], except: &Path) -> Result<(), ImageError> {
        for p in self.pending_files()? {
            let other = read_begin_file(&p).is_ok_and(|b| b.lineage != keep);
            if other && p != except {
                let _ = fs::remove_file(p);
            }
        }
        Ok(())
    }

    /// The newest pending stream's header, if it is newer than the manifest.
    fn pending_tip(&self) -> Option<Tip> {
        let newest = self
            .pending_sources()
            .ok()?
            .into_iter()
            .rev()
            .find_map(|p| p.begin().ok())?;
        match &self.manifest {
            Some(m) if m.lineage == newest.lineage && newest.seq <= m.seq => None,
            _ => Some(Tip::from(&newest)),
        }
    }

    /// Checks every page of every data file against its CRC32C; returns the pages checked.
    pub fn verify_data(&self) -> Result<u64, ImageError> {
        let Some(m) = &self.manifest else {
            return Ok(0);
        };
        let page = m.page_size as usize;
        let zero = vec![0u8; page];
        let mut checked = 0;
        for r in &m.ranges {
            let (dp, cp) = (self.data_path(r.addr, r.len), self.crc_path(r.addr, r.len));
            let data = File::open(&dp).map_err(io_err(&dp, "open"))?;
            let crc = fs::read(&cp).map_err(io_err(&cp, "read"))?;
            if data.metadata().map_err(io_err(&dp, "stat"))?.len() != r.len
                || crc.len() as u64 != r.len / page as u64 * 4
            {
                return Err(ImageError::Damaged {
                    path: dp,
                    what: "data file or CRC table has the wrong size".into(),
                });
            }
            let mut buf = vec![0u8; page * 256];
            for (chunk_no, want) in crc.chunks(4 * 256).enumerate() {
                let off = (chunk_no * 256 * page) as u64;
                let bytes = want.len() / 4 * page;
                data.read_exact_at(&mut buf[..bytes], off)
                    .map_err(io_err(&dp, "read"))?;
                for (i, pg) in buf[..bytes].chunks(page).enumerate() {
                    let w = u32::from_le_bytes(want[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
                    let ok = if w == 0 {
                        pg == &zero[..]
                    } else {
                        page_crc(pg) == w
                    };
                    if !ok {
                        let at = r.addr + off + (i * page) as u64;
                        return Err(ImageError::Damaged {
                            path: dp,
                            what: format!("page {at:#x} fails its CRC32C"),
                        });
                    }
                    checked += 1;
                }
            }
        }
        Ok(checked)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The last complete checkpoint's header (its `seq` is the image's), if any.
    pub fn manifest(&self) -> Option<&Begin> {
        self.manifest.as_ref()
    }

    /// The sequence number of the image (0 when empty).
    pub fn seq(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.seq)
    }

    /// The lineage of the image (`None` when empty).
    pub fn lineage(&self) -> Option<[u8; 16]> {
        self.manifest.as_ref().map(|m| m.lineage)
    }

    /// The newest checkpoint durable here, applied or not: the manifest's, or that of a pending
    /// `.cpt` newer than it (one that could not be applied yet), as of this handle's open or
    /// last apply. A persister that makes streams durable tracks the tip itself from then on
    /// (`Tip::from(&summary.begin)` after each [`ImageDir::persist_wal`]).
    pub fn tip(&self) -> Option<Tip> {
        self.pending
            .clone()
            .or_else(|| self.manifest.as_ref().map(Tip::from))
    }

    /// Path of the data file of a range.
    pub fn data_path(&self, addr: u64, len: u64) -> PathBuf {
        self.root
            .join("data")
            .join(format!("{addr:016x}-{len:x}.pages"))
    }

    /// Path of the per-page CRC32C table of a range's data file (4 bytes LE per page; 0 means
    /// the page was never written and must read as zeros).
    pub fn crc_path(&self, addr: u64, len: u64) -> PathBuf {
        self.root
            .join("data")
            .join(format!("{addr:016x}-{len:x}.crc"))
    }

    /// Path of a WAL file.
    pub fn wal_path(&self, seq: u64, ext: &str) -> PathBuf {
        self.root.join("wal").join(format!("{seq:020}.{ext}"))
    }

    fn marker_path(&self) -> PathBuf {
        self.root.join("wal").join("applying")
    }

    /// Creates `wal/<seq>.tmp` for a new checkpoint stream.
    pub fn create_wal(&self, seq: u64) -> Result<(PathBuf, File), ImageError> {
        ImageDir::create_wal_at(&self.root, seq)
    }

    /// [`ImageDir::create_wal`] for the image directory at `root` (used by a `cptfork` capture,
    /// which runs while the writer thread owns the `ImageDir`).
    pub fn create_wal_at(root: &Path, seq: u64) -> Result<(PathBuf, File), ImageError> {
        let p = root.join("wal").join(format!("{seq:020}.tmp"));
        let f = create_private(&p)?;
        Ok((p, f))
    }

    /// Creates (`0600`, truncated) a file in `wal/` under a name of the caller's, which must
    /// end in `.tmp` so that recovery removes it if it is left behind.
    pub fn create_wal_file(path: &Path) -> Result<File, ImageError> {
        create_private(path)
    }

    /// Removes the spool `wal/<seq>.tmp` of a stream that will not be completed (its
    /// connection died, its writer failed). Nothing to remove is not an error.
    pub fn remove_spool(&self, seq: u64) -> Result<(), ImageError> {
        let p = self.wal_path(seq, "tmp");
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::Io {
                path: p,
                what: "remove",
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Starts the log of a primary that keeps its image here itself (no spare): small streams
    /// are then made durable by [`OwnLog::commit`] (one append and one flush) and applied in
    /// batches ([`ImageDir::apply_pending`], by any handle that shares this one's log bound,
    /// [`ImageDir::attach_shared`]) instead of one `fsync`ed file, rename and apply each.
    /// Streams left pending by an earlier incarnation that could not apply them are superseded
    /// first, as by the first [`ImageDir::commit_wal`]. `None` while the data files may be
    /// ahead of the manifest: that stream must be applied first, and the caller commits each
    /// stream as a file (the old path) until it has been.
    pub fn start_own_log(&mut self) -> Result<Option<OwnLog>, ImageError> {
        if self.ahead {
            return Ok(None);
        }
        for p in self.pending_files()? {
            let _ = fs::remove_file(p);
        }
        for seg in log::scan(&self.root.join("wal"), None)? {
            let _ = fs::remove_file(seg.path);
        }
        self.pending = None;
        Ok(Some(OwnLog {
            writer: self.log_writer()?,
            tip: self.tip(),
        }))
    }

    /// Makes a fully written `wal/<seq>.tmp` durable and applies it (the primary's local
    /// path); on success the image is at `seq`. The stream is validated before anything is
    /// applied ([`check_applies`] against the image, another lineage refused). A stream that
    /// fails before any of its pages is written (bad, or no disk space) is deleted and the
    /// image is unchanged; the checkpoint is reported failed and the writer's next one is full.
    /// One that fails while its pages are written (an I/O error) stays `.cpt` and is finished
    /// by the next apply or open.
    pub fn commit_wal(
        &mut self,
        seq: u64,
        this_exe: Option<&ExeId>,
    ) -> Result<Summary, ImageError> {
        if !self.ahead {
            // Streams left pending by an earlier incarnation that could not apply them (they
            // never touched the data files): this writer continues from the manifest, so they
            // are superseded and must not be applied after its own.
            for p in self.pending_files()? {
                if p != self.wal_path(seq, "cpt") {
                    let _ = fs::remove_file(p);
                }
            }
            // And the log of the spare this directory was (every record is applied, or
            // superseded in the same way).
            for seg in log::scan(&self.root.join("wal"), None)? {
                let _ = fs::remove_file(seg.path);
            }
        }
        // The mark that pages may be written, made durable by make_durable's fsync of wal/.
        let fresh_marker = !self.marker_durable && open_private(&self.marker_path()).is_ok();
        let done = match self.make_durable(seq) {
            Ok(d) => d,
            Err(e) => {
                if fresh_marker && !self.ahead {
                    let _ = fs::remove_file(self.marker_path());
                }
                return Err(e);
            }
        };
        self.marker_durable |= fresh_marker;
        let pending = self.pending_sources()?;
        let (done_list, failure) =
            self.apply_batch(&pending, this_exe, LineagePolicy::RefuseNew, true)?;
        if let Some(f) = failure {
            if matches!(&f.source, Source::File(p) if *p == done) {
                if f.error.is_bad_stream() || !f.wrote {
                    let _ = fs::remove_file(&done);
                }
            } else if f.error.is_bad_stream() {
                self.set_aside(&f.source);
            }
            self.pending = self.pending_tip();
            return Err(f.error);
        }
        done_list
            .into_iter()
            .find(|s| s.begin.seq == seq)
            .ok_or_else(|| ImageError::NotNewer {
                path: done,
                seq,
                have: self.seq(),
            })
    }

    /// Validates the stream in `path` and applies it all or nothing (another lineage refused).
    /// The file is deleted once the new manifest is durable.
    pub fn apply_file(
        &mut self,
        path: &Path,
        this_exe: Option<&ExeId>,
    ) -> Result<Summary, ImageError> {
        let (mut done, failure) = self.apply_batch(
            &[Source::File(path.to_path_buf())],
            this_exe,
            LineagePolicy::RefuseNew,
            false,
        )?;
        match failure {
            Some(f) => Err(f.error),
            None => done.pop().ok_or_else(|| ImageError::Io {
                path: path.to_path_buf(),
                what: "apply",
                source: std::io::Error::other("nothing applied"),
            }),
        }
    }

    /// Applies streams in order with one round of `fsync`s and one manifest write at the end
    /// (a spare that fell behind catches up in one step). Stops at the first stream that
    /// cannot be applied and returns it with its error; everything before it is applied and
    /// durable. WAL files are deleted only once the manifest that covers them is durable.
    /// `all_pending`: `paths` are every pending stream, so once they are applied no stream
    /// can have pages in the data files beyond the manifest.
    fn apply_batch(
        &mut self,
        paths: &[Source],
        this_exe: Option<&ExeId>,
        policy: LineagePolicy,
        all_pending: bool,
    ) -> Result<Batch, ImageError> {
        let before = self.manifest.clone();
        let ahead_before = self.ahead;
        let mut touched: Vec<(PathBuf, File)> = Vec::new();
        let mut created = false;
        let (mut done, mut finished, mut failure) = (Vec::new(), Vec::new(), None);
        for p in paths {
            let mut wrote = false;
            match self.stage(p, this_exe, policy, &mut touched, &mut created, &mut wrote) {
                Ok(Some(summary)) => {
                    done.push(summary);
                    finished.push(p.clone());
                }
                Ok(None) => finished.push(p.clone()),
                Err(error) => {
                    failure = Some(Failure {
                        source: p.clone(),
                        error,
                        wrote,
                    });
                    break;
                }
            }
        }
        if !done.is_empty() {
            let durable = (|| {
                for (p, f) in &touched {
                    f.sync_all().map_err(io_err(p, "fsync"))?;
                }
                if created {
                    fsync_dir(&self.root.join("data"))?;
                }
                write_manifest(&self.root, self.manifest.as_ref().expect("set by stage"))
            })();
            if let Err(e) = durable {
                // The manifest on disk is still the old one (or not known to be the new one);
                // the data files may be ahead of it: the mark stays, the streams stay.
                self.manifest = before;
                self.pending = self.pending_tip();
                return Err(e);
            }
            // Ranges that are gone: their files are no longer referenced.
            let now = self.manifest.as_ref().expect("set by stage");
            for r in before.iter().flat_map(|m| &m.ranges) {
                if !now
                    .ranges
                    .iter()
                    .any(|n| n.addr == r.addr && n.len == r.len)
                {
                    let _ = fs::remove_file(self.data_path(r.addr, r.len));
                    let _ = fs::remove_file(self.crc_path(r.addr, r.len));
                }
            }
        }
        // A log record is trimmed with its segment (`trim_log`).
        for p in finished {
            if let Source::File(p) = p {
                let _ = fs::remove_file(p);
            }
        }
        // The data files match the manifest again when every stream that may have pages in
        // them is applied, or when the one that failed wrote none and none did before.
        let clean = match &failure {
            None => all_pending || !ahead_before,
            Some(f) => !f.wrote && !ahead_before,
        };
        if clean {
            let _ = fs::remove_file(self.marker_path());
            self.ahead = false;
            self.marker_durable = false;
        }
        self.pending = self.pending_tip();
        Ok((done, failure))
    }

    /// Marks, durably, that the data files are about to receive pages the manifest does not
    /// cover yet.
    fn begin_writing(&mut self) -> Result<(), ImageError> {
        if !self.marker_durable {
            let m = self.marker_path();
            open_private(&m).map_err(io_err(&m, "create"))?;
            fsync_dir(&self.root.join("wal"))?;
            self.marker_durable = true;
        }
        self.ahead = true;
        Ok(())
    }

    /// Validates one stream against the image as staged so far, reserves the disk space its
    /// writes need and writes its pages (no `fsync`); updates the in-memory manifest.
    /// `Ok(None)`: already applied before a crash. `wrote` is set once pages may have been
    /// written; every failure before that leaves the data files as they were.
    fn stage(
        &mut self,
        source: &Source,
        this_exe: Option<&ExeId>,
        policy: LineagePolicy,
        touched: &mut Vec<(PathBuf, File)>,
        created: &mut bool,
        wrote: &mut bool,
    ) -> Result<Option<Summary>, ImageError> {
        let name = source.name();
        let path = name.as_path();
        let fmt = |source: FormatError| ImageError::Format {
            path: path.to_path_buf(),
            source,
        };
        // A log record is read (and its CRC checked) once; a file is read twice.
        let bytes = source.bytes()?;
        let open = || -> Result<Box<dyn std::io::Read + '_>, ImageError> {
            match &bytes {
                Some(b) => Ok(Box::new(b.as_slice())),
                None => File::open(path)
                    .map(|f| Box::new(BufReader::new(f)) as Box<dyn std::io::Read>)
                    .map_err(io_err(path, "open")),
            }
        };
        // Pass 1: everything checked, nothing written; the page runs noted (contiguous ones
        // merged) to reserve their space.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let summary = format::scan_stream(open()?, |run| {
            if let Run::Data(a, d) = run {
                match runs.last_mut() {
                    Some((ra, rl)) if *ra + *rl == a => *rl += d.len() as u64,
                    _ => runs.push((a, d.len() as u64)),
                }
            }
            Ok(())
        })
        .map_err(fmt)?;
        let b = &summary.begin;
        if let Some(id) = this_exe {
            if b.exe_id != id.0 {
                return Err(ImageError::OtherExecutable {
                    path: path.to_path_buf(),
                    image: ExeId(b.exe_id).to_string(),
                    this: id.to_string(),
                });
            }
        }
        if let Some(m) = &self.manifest {
            if m.lineage == b.lineage && b.seq <= m.seq {
                return Ok(None);
            }
        }
        let tip = self.manifest.as_ref().map(Tip::from);
        check_applies(b, tip.as_ref(), policy).map_err(|e| e.at(path))?;
        let mut manifest = summary.begin.clone();
        for r in &mut manifest.ranges {
            r.complete = true;
        }
        let page = u64::from(b.page_size);
        let mut files: Vec<RangeFiles> = Vec::with_capacity(b.ranges.len());
        let mut new_files: Vec<PathBuf> = Vec::new();
        let prepared = (|| {
            for r in &b.ranges {
                let data_path = self.data_path(r.addr, r.len);
                let (data, new_data) = open_sized(&data_path, r.len)?;
                let crc_path = self.crc_path(r.addr, r.len);
                let (crc, new_crc) = open_sized(&crc_path, r.len / page * 4)?;
                if new_data {
                    new_files.push(data_path.clone());
                }
                if new_crc {
                    new_files.push(crc_path.clone());
                }
                files.push(RangeFiles {
                    addr: r.addr,
                    len: r.len,
                    data_path,
                    data,
                    crc_path,
                    crc,
                });
            }
            files.sort_by_key(|f| f.addr);
            // Every write below lands in space allocated here: a full disk fails now, before
            // the data files change.
            for f in &files {
                reserve(&f.crc, 0, f.len / page * 4)
                    .map_err(io_err(&f.crc_path, "reserve space"))?;
            }
            for &(mut a, mut l) in &runs {
                while l > 0 {
                    let f = range_of(&files, a).expect("validated: every run lies in a range");
                    let n = l.min(f.addr + f.len - a);
                    reserve(&f.data, a - f.addr, n)
                        .map_err(io_err(&f.data_path, "reserve space"))?;
                    (a, l) = (a + n, l - n);
                }
            }
            reserve_manifest(&self.root, format::encode_begin(&manifest).len() as u64)?;
            self.begin_writing()
        })();
        if let Err(e) = prepared {
            // Files made for ranges new in this stream are referenced by nothing.
            for p in new_files {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        *created |= !new_files.is_empty();
        *wrote = true;
        // Pass 2: write the pages (the stream was fully validated above).
        let page = page as usize;
        let mut crcs = Vec::new();
        format::scan_stream(open()?, |run| {
            let addr = match run {
                Run::Data(a, _) | Run::Zero(a, _) => a,
            };
            let f = range_of(&files, addr).expect("validated: every run lies in a listed range");
            let io = |e: std::io::Error| FormatError::Io {
                offset: 0,
                source: std::io::Error::new(e.kind(), format!("{}: {e}", f.data_path.display())),
            };
            crcs.clear();
            match run {
                Run::Data(_, data) => {
                    f.data.write_all_at(data, addr - f.addr).map_err(io)?;
                    for pg in data.chunks(page) {
                        crcs.extend_from_slice(&page_crc(pg).to_le_bytes());
                    }
                }
                Run::Zero(_, len) => {
                    punch_hole(&f.data, addr - f.addr, len).map_err(io)?;
                    crcs.resize((len / page as u64 * 4) as usize, 0);
                }
            }
            f.crc
                .write_all_at(&crcs, (addr - f.addr) / page as u64 * 4)
                .map_err(io)
        })
        .map_err(|e| match e {
            FormatError::Io { .. } => fmt(e),
            // Validated a moment ago: the file changed under us. Not the stream's fault.
            other => ImageError::Damaged {
                path: path.to_path_buf(),
                what: format!("changed while being applied: {other}"),
            },
        })?;
        for f in files {
            if !touched.iter().any(|(t, _)| *t == f.data_path) {
                touched.push((f.data_path, f.data));
                touched.push((f.crc_path, f.crc));
            }
        }
        self.manifest = Some(manifest);
        Ok(Some(summary))
    }

    fn recover(&mut self) -> Result<(), ImageError> {
        // Torn streams and half-written manifests are never used: they only take space.
        for p in self.wal_files()? {
            if p.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&p);
            }
        }
        let _ = fs::remove_file(self.root.join("manifest.tmp"));
        match self.apply_pending() {
            Ok(_) => {
                // Nothing applied stays in the log: a directory opened once holds its image in
                // the manifest and data files only, so that retiring the manifest (a resumed
                // program's `manifest.superseded`) leaves no image behind to be replayed.
                self.trim_log(true);
                Ok(())
            }
            Err(e) if self.ahead => Err(ImageError::Unfinished {
                path: self.root.clone(),
                source: Box::new(e),
            }),
            Err(e) => {
                // Nothing of it reached the data files: the image is good at its manifest,
                // and the stream stays pending, to be applied once it can be.
                eprintln!(
                    "hotspare: {}: image stays at checkpoint {}; a newer one is durable but cannot be applied yet: {e}",
                    self.root.display(),
                    self.seq()
                );
                Ok(())
            }
        }
    }

    /// Applies every complete (`.cpt`) WAL file, in sequence order; returns the image's
    /// sequence. A stream that is damaged or does not apply ([`check_applies`]; a full stream
    /// of another lineage replaces the image) is renamed `.bad` (never retried) for
    /// `hotspare inspect`, and the ones after it are tried. Streams being written (`.tmp`) are
    /// left alone, so this may run while another thread receives. On an I/O error (a full
    /// disk) the stream stays `.cpt` to be retried and the error is returned.
    pub fn apply_pending(&mut self) -> Result<u64, ImageError> {
        loop {
            let pending = self.pending_sources()?;
            let applied_any = !pending.is_empty();
            let (_, failure) = self.apply_batch(&pending, None, LineagePolicy::ReplaceOld, true)?;
            match failure {
                None => {
                    if applied_any {
                        self.trim_log(false);
                    }
                    return Ok(self.seq());
                }
                Some(f) if f.error.is_bad_stream() => {
                    self.set_aside(&f.source);
                    eprintln!(
                        "hotspare: not applying {}: {}",
                        f.source.name().display(),
                        f.error
                    );
                }
                Some(f) => return Err(f.error),
            }
        }
    }

    /// A stream that will never be applied: a file is renamed `.bad`; a log record is noted
    /// (it stays in its segment, and is refused again at the next open).
    fn set_aside(&mut self, s: &Source) {
        match s {
            Source::File(p) => {
                let _ = fs::rename(p, p.with_extension("bad"));
            }
            Source::Record(r) => self.refused.push((r.gen, r.offset)),
        }
    }

    /// Makes a fully received `wal/<seq>.tmp` durable *without applying it*, after validating
    /// it whole: every CRC and count, that it is checkpoint `seq`, that it applies on top of
    /// `tip` (the newest checkpoint durable here, applied or not: [`check_applies`] with
    /// `policy`, the same rule the applier uses, so a stream acknowledged here is never refused
    /// there) and that its term is not below `min_term`. Once this returns the checkpoint
    /// survives any crash and is applied by [`ImageDir::apply_pending`] (or the next open). A
    /// full stream of another lineage (accepted by `policy`) supersedes the pending streams of
    /// the old one, which are deleted. On any failure the spool is deleted.
    pub fn persist_wal(
        &self,
        seq: u64,
        tip: Option<&Tip>,
        policy: LineagePolicy,
        min_term: u64,
    ) -> Result<Summary, ImageError> {
        self.persist_wal_notify(seq, tip, policy, min_term, |_| {})
    }

    /// [`ImageDir::persist_wal`], calling `verified` between its two halves: once the whole
    /// stream has passed validation (so it will be applied if it becomes durable) and before
    /// anything is made durable (`fsync`, rename, directory `fsync`). The spare acknowledges a
    /// primary that asked for acknowledgement on receipt from there. `verified` is not called
    /// for a stream that fails validation; making it durable can still fail after it.
    pub fn persist_wal_notify(
        &self,
        seq: u64,
        tip: Option<&Tip>,
        policy: LineagePolicy,
        min_term: u64,
        verified: impl FnOnce(&Summary),
    ) -> Result<Summary, ImageError> {
        self.persist_wal_from(seq, None, tip, policy, min_term, verified)
    }

    /// [`ImageDir::persist_wal_notify`], validating `copy` — the bytes just written to
    /// `wal/<seq>.tmp`, kept by the writer — instead of reading the file back (`None`: read it).
    pub fn persist_wal_from(
        &self,
        seq: u64,
        copy: Option<&[u8]>,
        tip: Option<&Tip>,
        policy: LineagePolicy,
        min_term: u64,
        verified: impl FnOnce(&Summary),
    ) -> Result<Summary, ImageError> {
        let summary = self.check_wal(seq, copy, tip, policy, min_term)?;
        verified(&summary);
        let lineage = summary.begin.lineage;
        let keep = tip.is_some_and(|t| t.lineage != lineage).then_some(lineage);
        self.commit_checked_wal(seq, None, keep)?;
        Ok(summary)
    }

    /// The validation of [`ImageDir::persist_wal_from`] alone: `bytes` (in memory), or
    /// `wal/<seq>.tmp` when `None`, checked as checkpoint `seq` on `tip`. Nothing is written; a
    /// spare that acknowledges on receipt validates here and makes durable afterwards with
    /// [`ImageDir::commit_checked_wal`], off the path of the acknowledgement. On failure the
    /// spool file (if any) is removed.
    pub fn check_wal(
        &self,
        seq: u64,
        bytes: Option<&[u8]>,
        tip: Option<&Tip>,
        policy: LineagePolicy,
        min_term: u64,
    ) -> Result<Summary, ImageError> {
        let tmp = self.wal_path(seq, "tmp");
        self.check_stream(&tmp, bytes, seq, tip, policy, min_term)
            .inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
    }

    /// Makes a stream that [`ImageDir::check_wal`] passed durable: `bytes`, if given, become
    /// `wal/<seq>.tmp` first (else that file already holds the stream); with `keep_lineage`, WAL
    /// files of any other lineage are dropped (a new lineage replaces the image); then the file
    /// and the directory are `fsync`ed around the rename to `wal/<seq>.cpt`.
    pub fn commit_checked_wal(
        &self,
        seq: u64,
        bytes: Option<&[u8]>,
        keep_lineage: Option<[u8; 16]>,
    ) -> Result<PathBuf, ImageError> {
        let tmp = self.wal_path(seq, "tmp");
        if let Some(bytes) = bytes {
            let written = create_private(&tmp)
                .and_then(|mut f| f.write_all(bytes).map_err(io_err(&tmp, "write")));
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        if let Some(lineage) = keep_lineage {
            self.drop_other_lineage_files(lineage, &self.wal_path(seq, "cpt"))?;
        }
        self.make_durable(seq)
    }

    /// `wal/<seq>.tmp` → `wal/<seq>.cpt`, with the file and the directory `fsync`ed: from here
    /// on the stream survives a crash and will be applied. Returns the new path. On failure
    /// the stream is removed (under either name) and the error returned.
    fn make_durable(&self, seq: u64) -> Result<PathBuf, ImageError> {
        let (tmp, done) = (self.wal_path(seq, "tmp"), self.wal_path(seq, "cpt"));
        let mut renamed = false;
        let res = (|| {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&tmp, "fsync"))?;
            fs::rename(&tmp, &done).map_err(io_err(&tmp, "rename"))?;
            renamed = true;
            fsync_dir(&self.root.join("wal"))
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(if renamed { &done } else { &tmp });
            return Err(e);
        }
        Ok(done)
    }

    fn check_stream(
        &self,
        path: &Path,
        copy: Option<&[u8]>,
        seq: u64,
        tip: Option<&Tip>,
        policy: LineagePolicy,
        min_term: u64,
    ) -> Result<Summary, ImageError> {
        let fmt = |source: FormatError| ImageError::Format {
            path: path.to_path_buf(),
            source,
        };
        let summary = match copy {
            Some(bytes) => format::scan_stream(bytes, |_| Ok(())),
            None => {
                let f = File::open(path)
                    .map(BufReader::new)
                    .map_err(io_err(path, "open"))?;
                format::scan_stream(f, |_| Ok(()))
            }
        }
        .map_err(fmt)?;
        let b = &summary.begin;
        if b.seq != seq {
            return Err(fmt(FormatError::Malformed {
                offset: 0,
                what: format!("stream is checkpoint {} but was received as {seq}", b.seq),
            }));
        }
        check_applies(b, tip, policy).map_err(|e| e.at(path))?;
        if b.term < min_term {
            return Err(ImageError::StaleTerm {
                path: path.to_path_buf(),
                term: b.term,
                current: min_term,
            });
        }
        Ok(summary)
    }
}

fn read_manifest(root: &Path) -> Result<Option<Begin>, ImageError> {
    let path = root.join("manifest");
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ImageError::Io {
                path,
                what: "open",
                source: e,
            })
        }
    };
    let fmt = |source| ImageError::Format {
        path: path.clone(),
        source,
    };
    let mut fr = FrameReader::new(BufReader::new(f));
    let frame = fr
        .next_frame()
        .map_err(fmt)?
        .ok_or(FormatError::Truncated { offset: 0 })
        .map_err(fmt)?;
    if frame.kind != format::FrameKind::Begin || fr.next_frame().map_err(fmt)?.is_some() {
        return Err(fmt(FormatError::Malformed {
            offset: 0,
            what: "manifest is not one BEGIN frame".into(),
        }));
    }
    // decode_begin validates it (validate_begin): a manifest is untrusted input too.
    format::decode_begin(&frame.payload, 0)
        .map(Some)
        .map_err(fmt)
}

/// Allocates `manifest.tmp` at `len` bytes ahead of the page writes, so that writing the new
/// manifest after them cannot fail for lack of space.
fn reserve_manifest(root: &Path, len: u64) -> Result<(), ImageError> {
    let tmp = root.join("manifest.tmp");
    let f = open_private(&tmp).map_err(io_err(&tmp, "create"))?;
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            let _ = fs::remove_file(&tmp);
            return Err(ImageError::Io {
                path: tmp,
                what: "reserve space",
                source: e,
            });
        }
    }
    Ok(())
}

/// Writes the manifest by `fsync` + rename over the old one, into the space that
/// `reserve_manifest` allocated (never truncated first). On failure `manifest.tmp` is removed
/// and the old manifest stays.
fn write_manifest(root: &Path, m: &Begin) -> Result<(), ImageError> {
    let tmp = root.join("manifest.tmp");
    let bytes = format::encode_begin(m);
    let res = (|| {
        let f = open_private(&tmp).map_err(io_err(&tmp, "create"))?;
        f.write_all_at(&bytes, 0).map_err(io_err(&tmp, "write"))?;
        f.set_len(bytes.len() as u64)
            .map_err(io_err(&tmp, "set size"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        fs::rename(&tmp, root.join("manifest")).map_err(io_err(&tmp, "rename"))
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(root)
}

/// CRC32C of a page as stored in the CRC table; never 0 (0 marks a page never written).
fn page_crc(page: &[u8]) -> u32 {
    crc32c::crc32c(page).max(1)
}
