//! The image directory: the last complete image, kept crash-safe, in a form that resume can
//! `mmap` directly.
//!
//! ```text
//! DIR/manifest                      one BEGIN frame: the image's sequence, ranges, metadata
//! DIR/data/<addr>-<len>.pages       one file per range, byte i = byte i of the range
//! DIR/wal/<seq>.tmp                 a checkpoint stream being written (ignored by readers)
//! DIR/wal/<seq>.cpt                 a complete stream, durable, maybe not applied yet
//! ```
//!
//! **Why a write-ahead log.** Resume maps the data files (`MAP_PRIVATE`), so they must hold the
//! image in place, page for page; an incremental checkpoint therefore has to overwrite pages of
//! them, which cannot be made atomic by rename. So a checkpoint is first written whole to
//! `wal/<seq>.tmp`, `fsync`ed and renamed to `.cpt` (the directory `fsync`ed too): from then on it
//! is durable and will be applied, even after a crash. Applying = validate the whole stream
//! (every CRC, the END counts and digest), then `pwrite` its pages into the data files, `fsync`
//! them, write the new manifest by `fsync` + rename, and only then delete the WAL file. A crash at
//! any point leaves either the old manifest and a complete WAL file (replayed on the next open:
//! page writes are idempotent) or the new manifest. A torn or damaged stream is never applied and
//! never touches the data files.

use super::format::{self, Begin, FrameReader, Run, Summary};
use super::{FormatError, ImageError};
use crate::identity::ExeId;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What [`ImageDir::apply_batch`] did: the streams applied, and the first one that could not be
/// (with why).
type Batch = (Vec<Summary>, Option<(PathBuf, ImageError)>);

/// An image directory, recovered and ready.
#[derive(Debug)]
pub struct ImageDir {
    root: PathBuf,
    manifest: Option<Begin>,
}

fn io_err<'a>(
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

/// Makes `len` bytes at `offset` read as zeros without storing them (a ZERO run). Only ranges
/// that were anonymous memory get ZERO runs, so no live process maps these data files.
fn punch_hole(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
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

/// Opens (creating, `0600`) a file that is updated in place, and gives it its size.
fn open_sized(path: &Path, len: u64) -> Result<File, ImageError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path, "open"))?;
    f.set_len(len).map_err(io_err(path, "set size"))?;
    Ok(f)
}

fn fsync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

impl ImageDir {
    /// Opens `root`, creating it if needed, and brings it to its last complete checkpoint:
    /// complete WAL files newer than the manifest are applied, torn ones removed.
    pub fn open(root: impl AsRef<Path>) -> Result<ImageDir, ImageError> {
        let root = root.as_ref().to_path_buf();
        for d in [root.clone(), root.join("data"), root.join("wal")] {
            fs::create_dir_all(&d).map_err(io_err(&d, "create directory"))?;
        }
        let manifest = read_manifest(&root)?;
        let mut dir = ImageDir { root, manifest };
        dir.recover()?;
        Ok(dir)
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
    /// the manifest, runs no recovery (a spare's applier thread uses it while the receiving
    /// thread writes new streams).
    pub fn attach(root: impl AsRef<Path>) -> Result<ImageDir, ImageError> {
        let root = root.as_ref().to_path_buf();
        let manifest = read_manifest(&root)?;
        Ok(ImageDir { root, manifest })
    }

    /// Opens an image for reading only: no recovery, nothing created or changed (for
    /// `hotspare inspect`).
    pub fn open_read_only(root: impl AsRef<Path>) -> Result<ImageDir, ImageError> {
        let root = root.as_ref().to_path_buf();
        match read_manifest(&root)? {
            Some(m) => Ok(ImageDir {
                root,
                manifest: Some(m),
            }),
            None => Err(ImageError::NoImage { path: root }),
        }
    }

    /// WAL files present, sorted (`.tmp` torn, `.cpt` complete but not applied, `.bad` refused).
    pub fn wal_files(&self) -> Result<Vec<PathBuf>, ImageError> {
        let wal = self.root.join("wal");
        let mut v: Vec<PathBuf> = fs::read_dir(&wal)
            .map_err(io_err(&wal, "read directory"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
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

    /// Makes a fully written `wal/<seq>.tmp` durable and applies it; on success the image is at
    /// `seq`. The stream is validated before anything is applied; a bad stream is deleted and the
    /// image is unchanged.
    pub fn commit_wal(
        &mut self,
        seq: u64,
        this_exe: Option<&ExeId>,
    ) -> Result<Summary, ImageError> {
        let done = self.make_durable(seq)?;
        let res = self.apply_file(&done, this_exe);
        if let Err(e) = &res {
            // A bad stream is dropped; after an I/O error the durable stream stays and is
            // replayed by the next open (the data files may hold part of it until then).
            if e.is_bad_stream() {
                let _ = fs::remove_file(&done);
            }
        }
        res
    }

    /// Validates the stream in `path` and applies it all or nothing. The file is deleted once
    /// the new manifest is durable.
    pub fn apply_file(
        &mut self,
        path: &Path,
        this_exe: Option<&ExeId>,
    ) -> Result<Summary, ImageError> {
        let (mut done, failure) = self.apply_batch(&[path.to_path_buf()], this_exe)?;
        match failure {
            Some((_, e)) => Err(e),
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
    fn apply_batch(
        &mut self,
        paths: &[PathBuf],
        this_exe: Option<&ExeId>,
    ) -> Result<Batch, ImageError> {
        let before = self.manifest.clone();
        let mut touched: Vec<(PathBuf, File)> = Vec::new();
        let (mut done, mut finished, mut failure) = (Vec::new(), Vec::new(), None);
        for p in paths {
            match self.stage(p, this_exe, &mut touched) {
                Ok(Some(summary)) => {
                    done.push(summary);
                    finished.push(p.clone());
                }
                Ok(None) => finished.push(p.clone()),
                Err(e) => {
                    failure = Some((p.clone(), e));
                    break;
                }
            }
        }
        if !done.is_empty() {
            for (p, f) in &touched {
                f.sync_all().map_err(io_err(p, "fsync"))?;
            }
            write_manifest(&self.root, self.manifest.as_ref().expect("set by stage"))?;
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
        for p in finished {
            let _ = fs::remove_file(p);
        }
        Ok((done, failure))
    }

    /// Validates one stream against the image as staged so far and writes its pages (no
    /// `fsync`); updates the in-memory manifest. `Ok(None)`: already applied before a crash.
    fn stage(
        &mut self,
        path: &Path,
        this_exe: Option<&ExeId>,
        touched: &mut Vec<(PathBuf, File)>,
    ) -> Result<Option<Summary>, ImageError> {
        let fmt = |source: FormatError| ImageError::Format {
            path: path.to_path_buf(),
            source,
        };
        let open = || {
            File::open(path)
                .map(BufReader::new)
                .map_err(io_err(path, "open"))
        };
        // Pass 1: everything checked, nothing written.
        let summary = format::scan_stream(open()?, |_| Ok(())).map_err(fmt)?;
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
            if b.seq <= m.seq {
                return Ok(None);
            }
            if b.exe_id != m.exe_id {
                return Err(ImageError::OtherExecutable {
                    path: path.to_path_buf(),
                    image: ExeId(m.exe_id).to_string(),
                    this: ExeId(b.exe_id).to_string(),
                });
            }
        }
        let have = self.seq();
        if !b.is_full() && b.base_seq != have {
            return Err(ImageError::Chain {
                path: self.root.clone(),
                seq: b.seq,
                base: b.base_seq,
                have,
            });
        }
        let known = |addr, len| {
            self.manifest.as_ref().is_some_and(|m| {
                !b.is_full() && m.ranges.iter().any(|r| r.addr == addr && r.len == len)
            })
        };
        let mut files = Vec::with_capacity(b.ranges.len());
        for r in &b.ranges {
            if !known(r.addr, r.len) && !r.complete {
                return Err(ImageError::IncompleteRange {
                    path: self.root.clone(),
                    addr: r.addr,
                    len: r.len,
                });
            }
            let p = self.data_path(r.addr, r.len);
            let f = open_sized(&p, r.len)?;
            let cp = self.crc_path(r.addr, r.len);
            let c = open_sized(&cp, r.len / u64::from(b.page_size) * 4)?;
            files.push((r.addr, r.len, p, f, cp, c));
        }
        // Pass 2: write the pages (the stream was fully validated above).
        let page = b.page_size as usize;
        let mut crcs = Vec::new();
        format::scan_stream(open()?, |run| {
            let addr = match run {
                Run::Data(a, _) | Run::Zero(a, _) => a,
            };
            let (base, _, p, f, _, c) = files
                .iter()
                .find(|(a, l, ..)| addr >= *a && addr < a + l)
                .expect("validated: every run lies in a listed range");
            let io = |e: std::io::Error| FormatError::Io {
                offset: 0,
                source: std::io::Error::new(e.kind(), format!("{}: {e}", p.display())),
            };
            crcs.clear();
            match run {
                Run::Data(_, data) => {
                    f.write_all_at(data, addr - base).map_err(io)?;
                    for pg in data.chunks(page) {
                        crcs.extend_from_slice(&page_crc(pg).to_le_bytes());
                    }
                }
                Run::Zero(_, len) => {
                    punch_hole(f, addr - base, len).map_err(io)?;
                    crcs.resize((len / page as u64 * 4) as usize, 0);
                }
            }
            c.write_all_at(&crcs, (addr - base) / page as u64 * 4)
                .map_err(io)
        })
        .map_err(fmt)?;
        for (_, _, p, f, cp, c) in files {
            if !touched.iter().any(|(t, _)| *t == p) {
                touched.push((p, f));
                touched.push((cp, c));
            }
        }
        let mut manifest = summary.begin.clone();
        for r in &mut manifest.ranges {
            r.complete = true;
        }
        self.manifest = Some(manifest);
        Ok(Some(summary))
    }

    fn recover(&mut self) -> Result<(), ImageError> {
        self.apply_pending()?;
        for p in self.wal_files()? {
            if p.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(&p);
            }
        }
        Ok(())
    }

    /// Applies every complete (`.cpt`) WAL file, in sequence order; returns the image's
    /// sequence. A stream that is damaged or does not chain cannot be applied: the image stays
    /// as it is and the file is renamed `.bad` (never retried) for `hotspare inspect`. Streams
    /// being written (`.tmp`) are left alone, so this may run while another thread receives.
    pub fn apply_pending(&mut self) -> Result<u64, ImageError> {
        let pending: Vec<PathBuf> = self
            .wal_files()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "cpt"))
            .collect();
        let (_, failure) = self.apply_batch(&pending, None)?;
        if let Some((p, e)) = failure {
            if e.is_bad_stream() {
                let _ = fs::rename(&p, p.with_extension("bad"));
                eprintln!("hotspare: not applying {}: {e}", p.display());
            } else {
                return Err(e);
            }
        }
        Ok(self.seq())
    }

    /// Makes a fully received `wal/<seq>.tmp` durable *without applying it*, after validating
    /// it whole: every CRC and count, the executable (if given), the term (not below
    /// `min_term`), and that it applies on top of `durable_seq` (the latest checkpoint already
    /// durable here, applied or not). Once this returns the checkpoint survives any crash and
    /// is applied by [`ImageDir::apply_pending`] (or the next open). A bad stream is deleted.
    pub fn persist_wal(
        &self,
        seq: u64,
        this_exe: Option<&ExeId>,
        durable_seq: u64,
        min_term: u64,
    ) -> Result<Summary, ImageError> {
        let tmp = self.wal_path(seq, "tmp");
        let res = self.check_stream(&tmp, this_exe, durable_seq, min_term);
        let summary = match res {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        self.make_durable(seq)?;
        Ok(summary)
    }

    /// `wal/<seq>.tmp` → `wal/<seq>.cpt`, with the file and the directory `fsync`ed: from here
    /// on the stream survives a crash and will be applied. Returns the new path.
    fn make_durable(&self, seq: u64) -> Result<PathBuf, ImageError> {
        let (tmp, done) = (self.wal_path(seq, "tmp"), self.wal_path(seq, "cpt"));
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp, "fsync"))?;
        fs::rename(&tmp, &done).map_err(io_err(&tmp, "rename"))?;
        fsync_dir(&self.root.join("wal"))?;
        Ok(done)
    }

    fn check_stream(
        &self,
        path: &Path,
        this_exe: Option<&ExeId>,
        durable_seq: u64,
        min_term: u64,
    ) -> Result<Summary, ImageError> {
        let fmt = |source: FormatError| ImageError::Format {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path)
            .map(BufReader::new)
            .map_err(io_err(path, "open"))?;
        let summary = format::scan_stream(f, |_| Ok(())).map_err(fmt)?;
        let b = &summary.begin;
        let expected = this_exe
            .map(|e| e.0)
            .or(self.manifest.as_ref().map(|m| m.exe_id));
        if let Some(id) = expected {
            if b.exe_id != id {
                return Err(ImageError::OtherExecutable {
                    path: path.to_path_buf(),
                    image: ExeId(b.exe_id).to_string(),
                    this: ExeId(id).to_string(),
                });
            }
        }
        if b.term < min_term {
            return Err(ImageError::StaleTerm {
                path: path.to_path_buf(),
                term: b.term,
                current: min_term,
            });
        }
        if !b.is_full() && b.base_seq != durable_seq {
            return Err(ImageError::Chain {
                path: self.root.clone(),
                seq: b.seq,
                base: b.base_seq,
                have: durable_seq,
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
    format::decode_begin(&frame.payload, 0)
        .map(Some)
        .map_err(fmt)
}

fn write_manifest(root: &Path, m: &Begin) -> Result<(), ImageError> {
    let tmp = root.join("manifest.tmp");
    let mut f = create_private(&tmp)?;
    f.write_all(&format::encode_begin(m))
        .map_err(io_err(&tmp, "write"))?;
    f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    let dst = root.join("manifest");
    fs::rename(&tmp, &dst).map_err(io_err(&tmp, "rename"))?;
    fsync_dir(root)
}

/// CRC32C of a page as stored in the CRC table; never 0 (0 marks a page never written).
fn page_crc(page: &[u8]) -> u32 {
    crc32c::crc32c(page).max(1)
}
