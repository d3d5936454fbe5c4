//! File descriptors carried across a resume: regular files are reopened at their offset,
//! listening sockets are bound again, connected sockets are reported as gone.
//!
//! The program hands each descriptor to the library under a name and gets it back by name, in
//! the first incarnation and after every resume alike, so the worker loop has one code path.

use crate::error::{Error, Result};
use crate::meta::{FdRecord, MetaError, KEPT_OPEN_FLAGS};
use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;

/// A registered descriptor: its record and the live fd.
#[derive(Debug)]
pub(crate) struct Entry {
    pub name: String,
    pub record: FdRecord,
    pub fd: Option<OwnedFd>,
}

fn os(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Os { what, source }
}

pub(crate) fn file_record(file: &File, path: &str, refresh: bool) -> Result<FdRecord> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl/lseek on a descriptor we borrow; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let offset = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
    if flags < 0 || offset < 0 {
        return Err(Error::Os {
            what: format!("reading flags/offset of {path}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // Only what resume can restore is accepted: a regular file (resume refuses anything else)
    // whose canonical path is UTF-8 (a lossy path would name another file).
    let kind = file
        .metadata()
        .map_err(os(format!("fstat of {path}")))?
        .file_type();
    if !kind.is_file() {
        return Err(Error::Config(format!(
            "{path} is a {}: only regular files can be registered as files",
            kind_of(kind)
        )));
    }
    let canon = std::fs::canonicalize(path).map_err(os(format!("canonicalize {path}")))?;
    let canon = canon.to_str().ok_or_else(|| {
        Error::Config(format!(
            "{path}: only files whose path is valid UTF-8 can be registered"
        ))
    })?;
    Ok(FdRecord::File {
        path: canon.to_owned(),
        flags: flags & KEPT_OPEN_FLAGS,
        offset: offset as u64,
        refresh,
    })
}

pub(crate) fn tcp_listener_record(l: &TcpListener) -> Result<FdRecord> {
    let addr = l
        .local_addr()
        .map_err(os("local_addr of TCP listener".into()))?;
    Ok(FdRecord::TcpListener {
        addr: addr.to_string(),
    })
}

pub(crate) fn unix_listener_record(l: &UnixListener) -> Result<FdRecord> {
    let addr = l
        .local_addr()
        .map_err(os("local_addr of Unix listener".into()))?;
    let path = addr.as_pathname().ok_or_else(|| {
        Error::Config("only Unix listeners bound to a path can be registered".into())
    })?;
    Ok(FdRecord::UnixListener {
        path: path.to_string_lossy().into_owned(),
    })
}

pub(crate) fn connected_record(s: &TcpStream) -> Result<FdRecord> {
    let local = s
        .local_addr()
        .map_err(os("local_addr of connection".into()))?;
    let peer = s
        .peer_addr()
        .map_err(os("peer_addr of connection".into()))?;
    Ok(FdRecord::Connected {
        local: local.to_string(),
        peer: peer.to_string(),
    })
}

/// At checkpoint time: re-reads the offsets of files registered with `refresh`.
pub(crate) fn refresh(entries: &mut [Entry]) {
    for e in entries {
        if let (
            FdRecord::File {
                offset,
                refresh: true,
                ..
            },
            Some(fd),
        ) = (&mut e.record, &e.fd)
        {
            // SAFETY: lseek on a descriptor we own.
            let o = unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) };
            if o >= 0 {
                *offset = o as u64;
            }
        }
    }
}

/// On resume: recreates the descriptor a record describes. Connected sockets yield `None`.
///
/// The record comes from an image and is untrusted: it is checked first ([`FdRecord::check`]),
/// a file is only ever reopened (never created or truncated, and only if it is a regular file),
/// a Unix listener's path is removed only if it is a socket, a TCP address is never looked up.
pub(crate) fn restore(name: &str, r: &FdRecord) -> Result<Option<OwnedFd>> {
    r.check(name)?;
    Ok(match r {
        FdRecord::File {
            path,
            flags,
            offset,
            ..
        } => Some(reopen_file(name, path, *flags, *offset)?),
        FdRecord::TcpListener { addr } => {
            let a: SocketAddr = addr.parse().map_err(|_| MetaError::BadSocketAddr {
                name: name.to_owned(),
                addr: addr.clone(),
            })?;
            let l =
                bind_again(a).map_err(os(format!("binding listener '{name}' to {addr} again")))?;
            Some(l.into())
        }
        FdRecord::UnixListener { path } => Some(rebind_unix(name, path)?.into()),
        FdRecord::Connected { .. } => None,
    })
}

/// What a file-system object is, for error messages.
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_socket() {
        "socket"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Reopens a regular file with the recorded access mode and status flags only
/// ([`KEPT_OPEN_FLAGS`]: never `O_CREAT`, `O_TRUNC`, `O_EXCL`), refusing anything that is not a
/// regular file (opening a FIFO or a device could block or have effects), and positions it at
/// `offset` — unless a write there would land past the end of the file.
fn reopen_file(name: &str, path: &str, flags: i32, offset: u64) -> Result<OwnedFd> {
    let gone = || MetaError::FileGone {
        name: name.to_owned(),
        path: path.to_owned(),
    };
    let not_regular = |t| MetaError::NotRegularFile {
        name: name.to_owned(),
        path: path.to_owned(),
        kind: kind_of(t),
    };
    // Look before opening, so that a device or FIFO is never opened at all.
    match std::fs::metadata(path) {
        Ok(m) if !m.file_type().is_file() => return Err(not_regular(m.file_type()).into()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone().into()),
        Err(e) => return Err(os(format!("reopening file '{name}' at {path}"))(e)),
    }
    let kept = flags & KEPT_OPEN_FLAGS;
    let acc = kept & libc::O_ACCMODE;
    // O_NONBLOCK | O_NOCTTY while opening: if the path was swapped for a FIFO or a terminal
    // since the look above, the open neither blocks nor acquires a controlling terminal, and
    // the fstat below refuses it.
    let f = OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags((kept & !libc::O_ACCMODE) | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                gone().into()
            } else {
                os(format!("reopening file '{name}' at {path}"))(e)
            }
        })?;
    let m = f
        .metadata()
        .map_err(os(format!("fstat of file '{name}' at {path}")))?;
    if !m.file_type().is_file() {
        return Err(not_regular(m.file_type()).into());
    }
    let fd = f.as_raw_fd();
    if kept & libc::O_NONBLOCK == 0 {
        // SAFETY: fcntl on the descriptor just opened; no memory is passed.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) } < 0 {
            return Err(Error::Os {
                what: format!("restoring the flags of file '{name}' at {path}"),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    // A read past the end reads nothing and an O_APPEND write goes to the end anyway; any other
    // write past the end would leave a hole the program never wrote.
    let writes_at_offset = acc != libc::O_RDONLY && kept & libc::O_APPEND == 0;
    if writes_at_offset && offset > m.len() {
        return Err(MetaError::OffsetPastEnd {
            name: name.to_owned(),
            path: path.to_owned(),
            offset,
            size: m.len(),
        }
        .into());
    }
    let off = i64::try_from(offset).map_err(|_| MetaError::BadOffset {
        name: name.to_owned(),
        offset,
    })?;
    // SAFETY: lseek on the descriptor just opened.
    if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } < 0 {
        return Err(Error::Os {
            what: format!("seeking '{name}' to {offset}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(f.into())
}

/// Binds a Unix listener at `path` again. A socket file left there (by the previous
/// incarnation) is removed first; anything else — a regular file, a directory, a symbolic link
/// (never followed) — is left alone and is an error.
fn rebind_unix(name: &str, path: &str) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(os(format!(
                    "removing the stale socket of Unix listener '{name}' at {path}"
                ))(e))
            }
            _ => {}
        },
        Ok(m) => {
            return Err(MetaError::UnixPathTaken {
                name: name.to_owned(),
                path: path.to_owned(),
                kind: kind_of(m.file_type()),
            }
            .into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(os(format!("lstat of Unix listener '{name}' at {path}"))(e)),
    }
    UnixListener::bind(path).map_err(os(format!(
        "binding Unix listener '{name}' to {path} again"
    )))
}

/// How long a resumed program waits for its address to become free.
const REBIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds a listener to the address it had before. On one host the previous incarnation may
/// still hold it: a SIGKILLed process closes its descriptors only after its memory is torn
/// down, which for gigabytes takes longer than a takeover (measured: a 2 GB key/value server
/// still held its port when the spare resumed it 60 ms after the kill). So `EADDRINUSE` is
/// retried, briefly, for a bounded time; any other error is final.
fn bind_again(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let start = std::time::Instant::now();
    loop {
        match TcpListener::bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && start.elapsed() < REBIND_PATIENCE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            r => {
                if r.is_ok() && start.elapsed().as_millis() > 0 {
                    eprintln!(
                        "hotspare: {addr} was still in use (the previous incarnation being torn down?); bound after waiting {:.3} ms",
                        start.elapsed().as_secs_f64() * 1e3
                    );
                }
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::path::Path;

    fn file(path: &Path, flags: i32, offset: u64) -> FdRecord {
        FdRecord::File {
            path: path.to_str().unwrap().to_owned(),
            flags,
            offset,
            refresh: false,
        }
    }

    fn reopen(path: &Path, flags: i32, offset: u64) -> Result<File> {
        restore("f", &file(path, flags, offset)).map(|fd| File::from(fd.expect("a file")))
    }

    fn getfl(f: &File) -> i32 {
        // SAFETY: fcntl on a descriptor we own; no memory is passed.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) }
    }

    /// A record with creation flags (a buggy or hostile writer; `file_record` never writes
    /// them) reopens the file as it is: its content intact, at the recorded offset.
    #[test]
    fn reopening_never_truncates_or_creates() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("data");
        std::fs::write(&p, b"precious content").unwrap();
        for flags in [
            libc::O_RDWR | libc::O_TRUNC,
            libc::O_WRONLY | libc::O_TRUNC | libc::O_CREAT,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_RDONLY | libc::O_DIRECTORY,
            libc::O_RDWR | libc::O_TMPFILE,
        ] {
            let mut f = reopen(&p, flags, 3).unwrap_or_else(|e| panic!("{flags:#o}: {e}"));
            assert_eq!(
                std::fs::read(&p).unwrap(),
                b"precious content",
                "{flags:#o}"
            );
            assert_eq!(f.stream_position().unwrap(), 3, "{flags:#o}");
            assert_eq!(
                getfl(&f) & (libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL),
                0
            );
        }
        let mut s = String::new();
        reopen(&p, libc::O_RDONLY, 9)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "content");
        // A file that is gone stays gone, and the error names it.
        let gone = t.path().join("gone");
        for flags in [
            libc::O_RDWR | libc::O_CREAT,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        ] {
            let e = reopen(&gone, flags, 0).unwrap_err();
            assert!(
                matches!(e, Error::BadMetadata(MetaError::FileGone { .. })),
                "{e}"
            );
            let e = e.to_string();
            assert!(
                e.contains(gone.to_str().unwrap()) && e.contains("no longer exists"),
                "{e}"
            );
            assert!(!gone.exists(), "resume created {}", gone.display());
        }
    }

    #[test]
    fn recorded_status_flags_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("log");
        std::fs::write(&p, b"abc").unwrap();
        let f = reopen(&p, libc::O_WRONLY | libc::O_APPEND | libc::O_TRUNC, 3).unwrap();
        assert_eq!(getfl(&f) & libc::O_ACCMODE, libc::O_WRONLY);
        assert_ne!(getfl(&f) & libc::O_APPEND, 0);
        assert_eq!(
            getfl(&f) & libc::O_NONBLOCK,
            0,
            "O_NONBLOCK of the open is undone"
        );
        let f = reopen(&p, libc::O_RDONLY | libc::O_NONBLOCK, 0).unwrap();
        assert_ne!(
            getfl(&f) & libc::O_NONBLOCK,
            0,
            "a recorded O_NONBLOCK stays"
        );
    }

    #[test]
    fn only_regular_files_are_reopened() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, flags, kind) in [
            (t.path(), libc::O_RDONLY, "directory"),
            (Path::new("/dev/null"), libc::O_RDWR, "character device"),
            (&fifo, libc::O_RDWR, "FIFO"),
        ] {
            let e = reopen(path, flags, 0).unwrap_err();
            assert!(
                matches!(&e, Error::BadMetadata(MetaError::NotRegularFile { kind: k, .. }) if *k == kind),
                "{}: {e}",
                path.display()
            );
        }
        // Registration refuses what resume would refuse.
        let e = file_record(
            &File::open(t.path()).unwrap(),
            t.path().to_str().unwrap(),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only regular files"), "{e}");
    }

    /// A write at an offset past the end would leave a hole the program never wrote: refused
    /// for files written at their offset; reads and O_APPEND writes are harmless there.
    #[test]
    fn offset_past_the_end_of_a_written_file_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("data");
        std::fs::write(&p, b"abc").unwrap();
        for flags in [libc::O_RDWR, libc::O_WRONLY] {
            let e = reopen(&p, flags, 1 << 40).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::BadMetadata(MetaError::OffsetPastEnd { size: 3, .. })
                ),
                "{e}"
            );
        }
        assert!(reopen(&p, libc::O_RDWR, 3).is_ok(), "at the end is fine");
        assert!(reopen(&p, libc::O_RDONLY, 1 << 40).is_ok());
        let mut f = reopen(&p, libc::O_WRONLY | libc::O_APPEND, 1 << 40).unwrap();
        f.write_all(b"d").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"abcd");
        let e = reopen(&p, libc::O_RDONLY, u64::MAX).unwrap_err();
        assert!(
            matches!(e, Error::BadMetadata(MetaError::BadOffset { .. })),
            "{e}"
        );
        let e = reopen(Path::new("data"), libc::O_RDONLY, 0).unwrap_err();
        assert!(
            matches!(e, Error::BadMetadata(MetaError::BadPath { .. })),
            "{e}"
        );
    }

    fn unix(path: &Path) -> Result<Option<OwnedFd>> {
        restore(
            "u",
            &FdRecord::UnixListener {
                path: path.to_str().unwrap().to_owned(),
            },
        )
    }

    /// Only a socket is removed to bind again; a regular file, a symbolic link (to a file, to a
    /// socket, or dangling) or a directory at the path survives and the restore fails.
    #[test]
    fn unix_listener_removes_only_a_stale_socket() {
        let t = tempfile::tempdir().unwrap();
        let regular = t.path().join("regular");
        std::fs::write(&regular, b"not a socket").unwrap();
        let stale = t.path().join("stale");
        drop(UnixListener::bind(&stale).unwrap());
        let to_file = t.path().join("to-file");
        std::os::unix::fs::symlink(&regular, &to_file).unwrap();
        let to_socket = t.path().join("to-socket");
        std::os::unix::fs::symlink(&stale, &to_socket).unwrap();
        let dangling = t.path().join("dangling");
        std::os::unix::fs::symlink(t.path().join("nowhere"), &dangling).unwrap();
        let dir = t.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        for (p, kind) in [
            (&regular, "regular file"),
            (&to_file, "symbolic link"),
            (&to_socket, "symbolic link"),
            (&dangling, "symbolic link"),
            (&dir, "directory"),
        ] {
            let e = unix(p).unwrap_err();
            assert!(
                matches!(&e, Error::BadMetadata(MetaError::UnixPathTaken { kind: k, .. }) if *k == kind),
                "{}: {e}",
                p.display()
            );
            assert!(e.to_string().contains(p.to_str().unwrap()), "{e}");
            assert!(
                std::fs::symlink_metadata(p).is_ok(),
                "{} removed",
                p.display()
            );
        }
        assert_eq!(std::fs::read(&regular).unwrap(), b"not a socket");
        assert!(dir.is_dir());
        // The stale socket the previous incarnation left is replaced; a free path is bound.
        let l = UnixListener::from(unix(&stale).unwrap().unwrap());
        std::os::unix::net::UnixStream::connect(&stale).unwrap();
        drop(l);
        let fresh = t.path().join("fresh");
        let _l = UnixListener::from(unix(&fresh).unwrap().unwrap());
        std::os::unix::net::UnixStream::connect(&fresh).unwrap();
    }

    /// A recorded TCP address is an IP address and port; a host name would be resolved (a DNS
    /// query chosen by the image's writer) and is refused.
    #[test]
    fn tcp_listener_address_is_never_looked_up() {
        for addr in ["localhost:0", "example.invalid:80", "127.0.0.1"] {
            let e = restore(
                "t",
                &FdRecord::TcpListener {
                    addr: addr.to_owned(),
                },
            )
            .unwrap_err();
            assert!(
                matches!(e, Error::BadMetadata(MetaError::BadSocketAddr { .. })),
                "{addr}: {e}"
            );
        }
        let fd = restore(
            "t",
            &FdRecord::TcpListener {
                addr: "127.0.0.1:0".to_owned(),
            },
        )
        .unwrap()
        .unwrap();
        assert!(TcpListener::from(fd).local_addr().unwrap().port() > 0);
    }
}
