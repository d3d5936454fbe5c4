//! The library's error type: one variant per way things fail, each message one clear line.

use crate::image::ImageError;
use std::path::PathBuf;

/// What went wrong in the Hot Spare Library.
///
/// `Debug` is the message too (see the impl below): a `main` that returns
/// `Result<(), hotspare::Error>`, as the adoption of docs/library.md does, prints it.
#[derive(thiserror::Error)]
pub enum Error {
    /// Bad configuration (code, environment or TOML).
    #[error("configuration: {0}")]
    Config(String),
    /// The checkpoint heap's fixed address is not free.
    #[error("checkpoint heap {base:#x}+{size:#x} cannot be reserved: address range in use ({why}); choose another base (HOTSPARE_HEAP_BASE)")]
    HeapAddressTaken {
        /// Requested base.
        base: usize,
        /// Requested size.
        size: usize,
        /// The kernel's answer.
        why: String,
    },
    /// The checkpoint heap has no room.
    #[error("checkpoint heap is full: cannot allocate {bytes} bytes")]
    HeapFull {
        /// The failed request.
        bytes: usize,
    },
    /// Dirty tracking or snapshotting failed.
    #[error(transparent)]
    Shim(#[from] kmod_shim::Error),
    /// The image directory or a checkpoint stream.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A fresh start found an image where it would write one.
    #[error("{}: holds a checkpoint image (sequence {seq}); resume it with HOTSPARE_RESUME={} or remove it", path.display(), path.display())]
    ImageExists {
        /// The image directory.
        path: PathBuf,
        /// Its sequence.
        seq: u64,
    },
    /// A resumed image has no root object of the type the program asked for.
    #[error("resume refused: the image has no root object of type {0} (an image of another program, or of a version whose state type differs)")]
    NoRoot(&'static str),
    /// A worker named in the image is not registered by this program.
    #[error("worker '{0}' is in the image but was not registered with HotSpare::worker")]
    UnknownWorker(String),
    /// Metadata of an image that resume will not act on (untrusted input, refused).
    #[error(transparent)]
    BadMetadata(#[from] crate::meta::MetaError),
    /// Metadata could not be encoded or decoded.
    #[error("checkpoint metadata: {0}")]
    Metadata(String),
    /// A checkpoint failed in the background (writing or applying it).
    #[error("checkpoint {seq} failed: {why}")]
    CheckpointFailed {
        /// Its sequence.
        seq: u64,
        /// Why.
        why: String,
    },
    /// A wait for a checkpoint that was never taken: it would never end.
    #[error(
        "checkpoint {seq} was never taken (the newest is {newest}): nothing would end the wait"
    )]
    NotTaken {
        /// The sequence waited for.
        seq: u64,
        /// The newest checkpoint taken.
        newest: u64,
    },
    /// The image's state points into code and static data that are not at the same addresses
    /// (or not the same build) in this process.
    #[error("resume refused: {0} (the state's function pointers, vtables and static strings would dangle)")]
    CodeMoved(String),
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The message, as `Display` gives it. Rust prints an error returned from `main` with `Debug`:
/// derived, a refused resume read `Error: NoRoot("hotspare::sync::Mutex<app::State>")`, naming
/// a variant and a type but not what was refused or why. Each message is one line and names the
/// values that matter, so nothing is lost.
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
