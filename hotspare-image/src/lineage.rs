//! Lineages, and the one rule that decides whether a checkpoint stream applies on top of what
//! an image directory already holds ([`check_applies`]). A spare's persister (before it
//! acknowledges), its applier and the primary's local commit all use it, so a stream that one
//! of them accepts is never refused by another.
//!
//! A **lineage** is 16 random bytes chosen when a program starts fresh and carried by every
//! checkpoint of that run and of every resume of it. Sequence numbers count within a lineage:
//! checkpoint 7 of one run and checkpoint 7 of another have nothing to do with each other, and
//! a directory never chains one onto the other.

use super::format::{Begin, RangeEntry};
use super::ImageError;
use crate::identity::ExeId;
use std::io::Read;
use std::path::PathBuf;

/// A new lineage: 16 bytes from `getrandom(2)` (or `/dev/urandom` where that is missing),
/// never all zeros.
pub fn new_lineage() -> std::io::Result<[u8; 16]> {
    let mut b = [0u8; 16];
    while b == [0; 16] {
        // SAFETY: getrandom writes at most `b.len()` bytes into `b`, which we own.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n == b.len() as isize {
            continue;
        }
        let e = std::io::Error::last_os_error();
        if n < 0 && e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    }
    Ok(b)
}

/// A lineage as 32 hex digits.
pub fn lineage_hex(l: &[u8; 16]) -> String {
    l.iter().map(|b| format!("{b:02x}")).collect()
}

/// The newest checkpoint durable in an image directory, applied or not: what the next stream
/// must apply on top of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    /// Its lineage.
    pub lineage: [u8; 16],
    /// Its sequence number.
    pub seq: u64,
    /// The executable its memory belongs to.
    pub exe_id: [u8; 32],
    /// Its fencing term.
    pub term: u64,
    /// Its page size (an incremental stream must have the same: the CRC tables count pages).
    pub page_size: u32,
    /// Its ranges.
    pub ranges: Vec<RangeEntry>,
}

impl From<&Begin> for Tip {
    fn from(b: &Begin) -> Tip {
        Tip {
            lineage: b.lineage,
            seq: b.seq,
            exe_id: b.exe_id,
            term: b.term,
            page_size: b.page_size,
            ranges: b.ranges.clone(),
        }
    }
}

/// What to do with a stream of another lineage than the directory's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineagePolicy {
    /// Refuse it ([`ImageError::OtherLineage`]): the image belongs to another run of the
    /// program, and replacing it must be asked for.
    RefuseNew,
    /// A full stream of another lineage replaces the image (asked for with
    /// `--accept-new-lineage`, or a stream that an accepting persister already made durable).
    ReplaceOld,
}

/// The path that errors of [`check_applies`] carry until a caller names the file
/// ([`ImageError::at`]).
fn stream_path() -> PathBuf {
    PathBuf::from("checkpoint stream")
}

/// Whether the stream that starts with `begin` (already validated by `scan_stream`) applies on
/// top of `tip` (`None`: an empty directory). Pure.
///
/// * A full stream (base 0) must have every range complete.
/// * No tip: only a full stream.
/// * Another lineage: refused under [`LineagePolicy::RefuseNew`]; under `ReplaceOld`, only a
///   full stream (it replaces the image).
/// * A term below the tip's: [`ImageError::StaleTerm`].
/// * Same lineage: `seq` above the tip's, an incremental stream based exactly on the tip, the
///   same executable and page size, and every range it does not carry whole known to the tip
///   with the same address and length.
pub fn check_applies(
    begin: &Begin,
    tip: Option<&Tip>,
    policy: LineagePolicy,
) -> Result<(), ImageError> {
    let b = begin;
    if b.is_full() {
        if let Some(r) = b.ranges.iter().find(|r| !r.complete) {
            return Err(ImageError::IncompleteRange {
                path: stream_path(),
                addr: r.addr,
                len: r.len,
            });
        }
    }
    let chain = |have| ImageError::Chain {
        path: stream_path(),
        seq: b.seq,
        base: b.base_seq,
        have,
    };
    let Some(tip) = tip else {
        return if b.is_full() { Ok(()) } else { Err(chain(0)) };
    };
    if b.lineage != tip.lineage && policy == LineagePolicy::RefuseNew {
        return Err(ImageError::OtherLineage {
            path: stream_path(),
            image: lineage_hex(&tip.lineage),
            stream: lineage_hex(&b.lineage),
        });
    }
    if b.term < tip.term {
        return Err(ImageError::StaleTerm {
            path: stream_path(),
            term: b.term,
            current: tip.term,
        });
    }
    if b.lineage != tip.lineage {
        return if b.is_full() {
            Ok(())
        } else {
            Err(chain(tip.seq))
        };
    }
    if b.seq <= tip.seq {
        return Err(ImageError::NotNewer {
            path: stream_path(),
            seq: b.seq,
            have: tip.seq,
        });
    }
    if !b.is_full() && b.base_seq != tip.seq {
        return Err(chain(tip.seq));
    }
    if b.exe_id != tip.exe_id {
        return Err(ImageError::OtherExecutable {
            path: stream_path(),
            image: ExeId(tip.exe_id).to_string(),
            this: ExeId(b.exe_id).to_string(),
        });
    }
    if !b.is_full() && b.page_size != tip.page_size {
        return Err(ImageError::PageSize {
            path: stream_path(),
            stream: b.page_size,
            image: tip.page_size,
        });
    }
    for r in b.ranges.iter().filter(|r| !r.complete) {
        if !tip
            .ranges
            .iter()
            .any(|t| t.addr == r.addr && t.len == r.len)
        {
            return Err(ImageError::IncompleteRange {
                path: stream_path(),
                addr: r.addr,
                len: r.len,
            });
        }
    }
    Ok(())
}
