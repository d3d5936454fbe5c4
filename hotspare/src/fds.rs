//! File descriptors carried across a resume: regular files are reopened at their offset,
//! listening sockets are bound again, connected sockets are reported as gone.
//!
//! The program hands each descriptor to the library under a name and gets it back by name, in
//! the first incarnation and after every resume alike, so the worker loop has one code path.

use crate::error::{Error, Result};
use crate::meta::FdRecord;
use std::fs::{File, OpenOptions};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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
    let path = std::fs::canonicalize(path).map_err(os(format!("canonicalize {path}")))?;
    Ok(FdRecord::File {
        path: path.to_string_lossy().into_owned(),
        flags: flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL),
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
pub(crate) fn restore(name: &str, r: &FdRecord) -> Result<Option<OwnedFd>> {
    Ok(match r {
        FdRecord::File {
            path,
            flags,
            offset,
            ..
        } => {
            let acc = flags & libc::O_ACCMODE;
            let f = OpenOptions::new()
                .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
                .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
                .custom_flags(flags & !libc::O_ACCMODE)
                .open(path)
                .map_err(os(format!("reopening file '{name}' at {path}")))?;
            // SAFETY: lseek on the descriptor just opened.
            if unsafe { libc::lseek(f.as_raw_fd(), *offset as i64, libc::SEEK_SET) } < 0 {
                return Err(Error::Os {
                    what: format!("seeking '{name}' to {offset}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            Some(f.into())
        }
        FdRecord::TcpListener { addr } => {
            let l = bind_again(addr)
                .map_err(os(format!("binding listener '{name}' to {addr} again")))?;
            Some(l.into())
        }
        FdRecord::UnixListener { path } => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).map_err(os(format!(
                "binding Unix listener '{name}' to {path} again"
            )))?;
            Some(l.into())
        }
        FdRecord::Connected { .. } => None,
    })
}

/// How long a resumed program waits for its address to become free.
const REBIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds a listener to the address it had before. On one host the previous incarnation may
/// still hold it: a SIGKILLed process closes its descriptors only after its memory is torn
/// down, which for gigabytes takes longer than a takeover (measured: a 2 GB key/value server
/// still held its port when the spare resumed it 60 ms after the kill). So `EADDRINUSE` is
/// retried, briefly, for a bounded time; any other error is final.
fn bind_again(addr: &str) -> std::io::Result<TcpListener> {
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
