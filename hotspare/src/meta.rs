//! Checkpoint metadata: what the image needs besides memory, carried in BEGIN (postcard).
//!
//! **Untrusted input.** The metadata of an image may have been written by a buggy or hostile
//! peer (a spare receives it over the network; an image directory can be edited). Resume uses
//! its fields as addresses, lengths, signal numbers, paths and socket addresses, so every one is
//! checked before it is used ([`Metadata::check`], [`FdRecord::check`]); what can only be
//! checked against the live system (does the file still exist, is that path a socket) is
//! checked where the descriptor is restored (`fds::restore`).

use crate::heap::HEADER_BYTES;
use crate::image::format::MAX_PAYLOAD;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The most the metadata, each blob and all blobs together may hold: the metadata travels in
/// one BEGIN frame, whose payload the format bounds by this.
pub(crate) const MAX_META_BYTES: usize = MAX_PAYLOAD as usize;

/// Highest signal number Linux knows (`_NSIG`).
const MAX_SIGNAL: i32 = 64;

/// Open flags that resume keeps when it reopens a regular file: the access mode and the status
/// flags that change how the open file behaves. Everything else — above all `O_CREAT`,
/// `O_TRUNC`, `O_EXCL`, `O_TMPFILE`, `O_PATH`, `O_DIRECTORY` — is dropped, so resume can never
/// create, truncate or replace a file.
pub(crate) const KEPT_OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DSYNC
    | libc::O_SYNC
    | libc::O_CLOEXEC;

/// A file descriptor the program registered, as the image records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdRecord {
    /// A regular file: reopened at `path` with `flags` and positioned at `offset`.
    File {
        /// Absolute path.
        path: String,
        /// `fcntl(F_GETFL)` flags; resume keeps only [`KEPT_OPEN_FLAGS`].
        flags: i32,
        /// Offset, refreshed at every checkpoint when `refresh` is set.
        offset: u64,
        /// Whether the offset is re-read at each checkpoint.
        refresh: bool,
    },
    /// A listening TCP socket, bound again on resume.
    TcpListener {
        /// Its local address (an IP address and port, never a host name).
        addr: String,
    },
    /// A listening Unix socket, bound again on resume (a stale socket file is removed; anything
    /// else at the path is left alone and resume refuses).
    UnixListener {
        /// Its path.
        path: String,
    },
    /// A connected socket: cannot survive the process; resume reports it as gone.
    Connected {
        /// Local name.
        local: String,
        /// Peer name.
        peer: String,
    },
}

/// Metadata that resume will not act on: it is impossible, or acting on it would create,
/// truncate, remove or read something it must not.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The metadata is larger than a BEGIN frame can carry.
    #[error("checkpoint metadata is {len} bytes, more than the {max} a checkpoint can carry")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Bytes follow the encoded metadata.
    #[error("checkpoint metadata has {extra} bytes of trailing garbage")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// The heap is not page-aligned or too small to hold its header.
    #[error("checkpoint metadata: heap {base:#x}+{size:#x} is not page-aligned or not larger than its {HEADER_BYTES}-byte header")]
    HeapMisshapen {
        /// Recorded base.
        base: u64,
        /// Recorded size.
        size: u64,
    },
    /// The heap does not lie within one range of the image, so it would not be mapped.
    #[error("checkpoint metadata: heap {base:#x}+{size:#x} is not inside any range of the image; refusing to use it")]
    HeapOutsideRanges {
        /// Recorded base.
        base: u64,
        /// Recorded size.
        size: u64,
    },
    /// A signal number that cannot have a handler.
    #[error("checkpoint metadata: signal {signal} (handler '{name}') cannot have a handler (1..=64, not SIGKILL or SIGSTOP)")]
    BadSignal {
        /// Recorded number.
        signal: i32,
        /// Handler name.
        name: String,
    },
    /// A signal handler the program did not register.
    #[error(
        "signal handler '{0}' is in the image but was not registered with Builder::signal_handler"
    )]
    UnknownSignalHandler(String),
    /// A blob, or all blobs together, larger than a checkpoint can carry.
    #[error("checkpoint metadata: blob '{name}' makes {len} bytes of blobs, more than {max}")]
    BlobTooLarge {
        /// The blob.
        name: String,
        /// Blob bytes up to and including it.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Two blobs, two descriptors or two handlers of one signal.
    #[error("checkpoint metadata: {what} '{name}' appears twice")]
    Duplicate {
        /// "blob", "descriptor" or "handler for signal".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// An empty path, a path with a NUL byte, or a relative file path.
    #[error("checkpoint metadata: {what} '{name}' has path {path:?}, which is not a usable absolute path")]
    BadPath {
        /// "file" or "Unix listener".
        what: &'static str,
        /// The descriptor's name.
        name: String,
        /// The recorded path.
        path: String,
    },
    /// Open flags whose access mode is neither read, write nor both.
    #[error("checkpoint metadata: file '{name}' has open flags {flags:#o}, which give no valid access mode")]
    BadAccessMode {
        /// The descriptor's name.
        name: String,
        /// The recorded flags.
        flags: i32,
    },
    /// An offset no file can have.
    #[error("checkpoint metadata: file '{name}' has offset {offset}, beyond any file size")]
    BadOffset {
        /// The descriptor's name.
        name: String,
        /// The recorded offset.
        offset: u64,
    },
    /// A TCP listener address that is not an IP address and port (a host name would be looked
    /// up, and could name anything).
    #[error("checkpoint metadata: TCP listener '{name}' has address '{addr}', which is not an IP address and port")]
    BadSocketAddr {
        /// The descriptor's name.
        name: String,
        /// The recorded address.
        addr: String,
    },
    /// The recorded file is gone; resume reopens files but never creates them.
    #[error(
        "file '{name}' at {path} no longer exists; resume reopens files, it never creates them"
    )]
    FileGone {
        /// The descriptor's name.
        name: String,
        /// The path.
        path: String,
    },
    /// The recorded path is not a regular file (a directory, device, FIFO, socket).
    #[error("file '{name}' at {path} is a {kind}, not a regular file; refusing to open it")]
    NotRegularFile {
        /// The descriptor's name.
        name: String,
        /// The path.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// A writable file shorter than the recorded offset: a write there would leave a hole.
    #[error("file '{name}' at {path} holds {size} bytes, fewer than its recorded offset {offset}; refusing to write past its end")]
    OffsetPastEnd {
        /// The descriptor's name.
        name: String,
        /// The path.
        path: String,
        /// The recorded offset.
        offset: u64,
        /// The file's size now.
        size: u64,
    },
    /// Something other than a stale socket is at a Unix listener's path: it is not removed.
    #[error("Unix listener '{name}': {path} is a {kind}, not a socket; refusing to remove it to bind there")]
    UnixPathTaken {
        /// The descriptor's name.
        name: String,
        /// The path.
        path: String,
        /// What is there.
        kind: &'static str,
    },
}

impl FdRecord {
    /// Checks what can be checked without the file system: paths, access mode, offset, address.
    pub(crate) fn check(&self, name: &str) -> Result<(), MetaError> {
        let bad_path = |what, path: &str| MetaError::BadPath {
            what,
            name: name.to_owned(),
            path: path.to_owned(),
        };
        match self {
            FdRecord::File {
                path,
                flags,
                offset,
                ..
            } => {
                if !path.starts_with('/') || path.contains('\0') {
                    return Err(bad_path("file", path));
                }
                let acc = flags & libc::O_ACCMODE;
                if acc != libc::O_RDONLY && acc != libc::O_WRONLY && acc != libc::O_RDWR {
                    return Err(MetaError::BadAccessMode {
                        name: name.to_owned(),
                        flags: *flags,
                    });
                }
                if i64::try_from(*offset).is_err() {
                    return Err(MetaError::BadOffset {
                        name: name.to_owned(),
                        offset: *offset,
                    });
                }
            }
            FdRecord::TcpListener { addr } => {
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(MetaError::BadSocketAddr {
                        name: name.to_owned(),
                        addr: addr.clone(),
                    });
                }
            }
            FdRecord::UnixListener { path } => {
                if path.is_empty() || path.contains('\0') {
                    return Err(bad_path("Unix listener", path));
                }
            }
            FdRecord::Connected { .. } => {}
        }
        Ok(())
    }
}

/// Everything resume needs to know that is not in the page data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Metadata {
    /// The checkpoint heap (base, size).
    pub heap: (u64, u64),
    /// Registered worker loops, by name, in registration order.
    pub workers: Vec<String>,
    /// Application blobs, by name.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// Registered file descriptors, by name.
    pub fds: Vec<(String, FdRecord)>,
    /// Installed signal handlers: (signal number, handler name).
    pub signals: Vec<(i32, String)>,
    /// Where the executable and its libraries were loaded, when the state may point into them
    /// (a `GlobalHeap` program, or `fixed_addresses = "on"`): resume refuses other addresses.
    pub code: Option<Vec<crate::identity::LoadedObject>>,
}

impl Metadata {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard serialises plain data")
    }

    /// Decodes metadata, refusing more than a checkpoint can carry and trailing bytes.
    pub(crate) fn decode(b: &[u8]) -> Result<Metadata, crate::Error> {
        if b.len() > MAX_META_BYTES {
            return Err(MetaError::TooLarge {
                len: b.len(),
                max: MAX_META_BYTES,
            }
            .into());
        }
        let (m, rest) =
            postcard::take_from_bytes(b).map_err(|e| crate::Error::Metadata(e.to_string()))?;
        if !rest.is_empty() {
            return Err(MetaError::Trailing { extra: rest.len() }.into());
        }
        Ok(m)
    }

    /// Checks every field resume uses as an address, length, number or path, against the
    /// image's range table `ranges` (address, length): the heap must lie within one range, the
    /// signals must be catchable, blobs bounded, names unique, descriptor records sane.
    pub(crate) fn check(
        &self,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<(), MetaError> {
        heap_within(self.heap, ranges)?;
        // The writer never records a signal twice (`sigreg` replaces); sets, not pairwise scans:
        // a 16 MiB frame can list millions of entries.
        let mut seen_signals = [false; MAX_SIGNAL as usize + 1];
        for (signal, name) in &self.signals {
            if !(1..=MAX_SIGNAL).contains(signal)
                || *signal == libc::SIGKILL
                || *signal == libc::SIGSTOP
            {
                return Err(MetaError::BadSignal {
                    signal: *signal,
                    name: name.clone(),
                });
            }
            if std::mem::replace(&mut seen_signals[*signal as usize], true) {
                return Err(MetaError::Duplicate {
                    what: "handler for signal",
                    name: signal.to_string(),
                });
            }
        }
        let mut total = 0usize;
        let mut names = HashSet::new();
        for (name, bytes) in &self.blobs {
            total = total.saturating_add(bytes.len());
            if total > MAX_META_BYTES {
                return Err(MetaError::BlobTooLarge {
                    name: name.clone(),
                    len: total,
                    max: MAX_META_BYTES,
                });
            }
            if !names.insert(name.as_str()) {
                return Err(MetaError::Duplicate {
                    what: "blob",
                    name: name.clone(),
                });
            }
        }
        names.clear();
        for (name, record) in &self.fds {
            if !names.insert(name.as_str()) {
                return Err(MetaError::Duplicate {
                    what: "descriptor",
                    name: name.clone(),
                });
            }
            record.check(name)?;
        }
        Ok(())
    }
}

/// The heap `(base, size)` as `(usize, usize)` if it is page-aligned, larger than its header and
/// lies entirely within one of `ranges` (address, length); arithmetic that would overflow is a
/// refusal, not a wrap.
pub(crate) fn heap_within(
    (base, size): (u64, u64),
    ranges: impl IntoIterator<Item = (u64, u64)>,
) -> Result<(usize, usize), MetaError> {
    let page = kmod_shim::page_size() as u64;
    let (Ok(b), Ok(s)) = (usize::try_from(base), usize::try_from(size)) else {
        return Err(MetaError::HeapOutsideRanges { base, size });
    };
    if !base.is_multiple_of(page) || !size.is_multiple_of(page) || s <= HEADER_BYTES {
        return Err(MetaError::HeapMisshapen { base, size });
    }
    let Some(end) = base.checked_add(size) else {
        return Err(MetaError::HeapOutsideRanges { base, size });
    };
    let inside = ranges.into_iter().any(|(addr, len)| {
        addr.checked_add(len)
            .is_some_and(|rend| addr <= base && end <= rend)
    });
    if !inside {
        return Err(MetaError::HeapOutsideRanges { base, size });
    }
    Ok((b, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;
    const R: u64 = 0x6000_0000_0000;

    fn meta() -> Metadata {
        Metadata {
            heap: (R, 16 * P),
            workers: vec!["main".into()],
            ..Metadata::default()
        }
    }

    #[test]
    fn heap_must_lie_within_one_range() {
        let one = [(R, 16 * P)];
        assert!(meta().check(one).is_ok());
        // Inside a larger range is fine, like the heap's own range with more around it.
        assert_eq!(
            heap_within((R + P, 8 * P), [(R, 16 * P)]).unwrap(),
            ((R + P) as usize, (8 * P) as usize)
        );
        for (heap, ranges) in [
            ((R + (1 << 30), 16 * P), vec![(R, 16 * P)]),
            ((R, 16 * P), vec![]),
            ((R - P, 16 * P), vec![(R, 16 * P)]),
            ((R + P, 16 * P), vec![(R, 16 * P)]),
            // Two adjacent ranges are two mappings, not one heap.
            ((R + 8 * P, 16 * P), vec![(R, 16 * P), (R + 16 * P, 16 * P)]),
            // Wrapping arithmetic must not make it look inside.
            ((u64::MAX - 3 * P + 1, 16 * P), vec![(R, 16 * P)]),
            ((R, 16 * P), vec![(u64::MAX - 3 * P + 1, 16 * P)]),
        ] {
            let m = Metadata { heap, ..meta() };
            let e = m.check(ranges.clone()).unwrap_err();
            assert!(
                matches!(e, MetaError::HeapOutsideRanges { .. }),
                "{heap:x?} {ranges:x?}: {e}"
            );
            assert!(e.to_string().contains("not inside any range"), "{e}");
        }
        for heap in [(R + 1, 16 * P), (R, 16 * P + 1), (R, P), (R, 0)] {
            let m = Metadata { heap, ..meta() };
            assert!(
                matches!(m.check(one), Err(MetaError::HeapMisshapen { .. })),
                "{heap:x?}"
            );
        }
    }

    #[test]
    fn signals_must_be_catchable() {
        for sig in [0, -1, libc::SIGKILL, libc::SIGSTOP, 65, i32::MAX, i32::MIN] {
            let m = Metadata {
                signals: vec![(sig, "h".into())],
                ..meta()
            };
            let e = m.check([(R, 16 * P)]).unwrap_err();
            assert!(matches!(e, MetaError::BadSignal { .. }), "{sig}: {e}");
            assert!(e.to_string().contains(&format!("signal {sig} ")), "{e}");
        }
        let twice = Metadata {
            signals: vec![(libc::SIGUSR1, "a".into()), (libc::SIGUSR1, "b".into())],
            ..meta()
        };
        let e = twice.check([(R, 16 * P)]).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
        for sig in [libc::SIGUSR1, libc::SIGTERM, 64] {
            let m = Metadata {
                signals: vec![(sig, "h".into())],
                ..meta()
            };
            assert!(m.check([(R, 16 * P)]).is_ok(), "{sig}");
        }
    }

    #[test]
    fn blobs_are_bounded_and_names_unique() {
        let big = Metadata {
            blobs: vec![
                ("a".into(), vec![0; MAX_META_BYTES / 2]),
                ("b".into(), vec![0; MAX_META_BYTES / 2 + 1]),
            ],
            ..meta()
        };
        let e = big.check([(R, 16 * P)]).unwrap_err();
        assert!(
            matches!(&e, MetaError::BlobTooLarge { name, .. } if name == "b"),
            "{e}"
        );
        let twice = Metadata {
            blobs: vec![("a".into(), vec![1]), ("a".into(), vec![2])],
            ..meta()
        };
        assert!(matches!(
            twice.check([(R, 16 * P)]),
            Err(MetaError::Duplicate { what: "blob", .. })
        ));
        let tcp = FdRecord::TcpListener {
            addr: "127.0.0.1:1".into(),
        };
        let fds_twice = Metadata {
            fds: vec![("l".into(), tcp.clone()), ("l".into(), tcp)],
            ..meta()
        };
        assert!(matches!(
            fds_twice.check([(R, 16 * P)]),
            Err(MetaError::Duplicate {
                what: "descriptor",
                ..
            })
        ));
    }

    #[test]
    fn fd_records_are_checked() {
        let file = |path: &str, flags, offset| FdRecord::File {
            path: path.into(),
            flags,
            offset,
            refresh: false,
        };
        assert!(file("/tmp/x", libc::O_RDWR | libc::O_TRUNC, 0)
            .check("f")
            .is_ok());
        for (r, want) in [
            (
                file("relative/x", libc::O_RDONLY, 0),
                "not a usable absolute",
            ),
            (file("", libc::O_RDONLY, 0), "not a usable absolute"),
            (file("/a\0b", libc::O_RDONLY, 0), "not a usable absolute"),
            (file("/tmp/x", libc::O_ACCMODE, 0), "no valid access mode"),
            (
                file("/tmp/x", libc::O_RDONLY, u64::MAX),
                "beyond any file size",
            ),
            (
                FdRecord::TcpListener {
                    addr: "localhost:80".into(),
                },
                "not an IP address and port",
            ),
            (
                FdRecord::TcpListener {
                    addr: "127.0.0.1".into(),
                },
                "not an IP address and port",
            ),
            (
                FdRecord::UnixListener { path: "".into() },
                "not a usable absolute",
            ),
        ] {
            let e = r.check("f").unwrap_err().to_string();
            assert!(e.contains(want), "{r:?}: {e}");
        }
        for addr in ["127.0.0.1:0", "[::1]:8080", "0.0.0.0:6379"] {
            assert!(FdRecord::TcpListener { addr: addr.into() }
                .check("l")
                .is_ok());
        }
    }

    #[test]
    fn decode_refuses_trailing_bytes_and_oversize() {
        let m = Metadata {
            blobs: vec![("b".into(), b"x".to_vec())],
            ..meta()
        };
        let mut bytes = m.encode();
        assert_eq!(Metadata::decode(&bytes).unwrap(), m);
        bytes.push(0);
        let e = Metadata::decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("1 bytes of trailing garbage"), "{e}");
        let e = Metadata::decode(&vec![0; MAX_META_BYTES + 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than"), "{e}");
    }
}
