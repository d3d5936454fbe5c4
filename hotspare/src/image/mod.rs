//! Checkpoint images: the stream format ([`format`]) and the crash-safe image directory that
//! applies streams all or nothing ([`dir`]).

pub mod dir;
pub mod format;
mod writer;

pub use dir::ImageDir;
pub use format::{Begin, End, RangeEntry, Run, Summary, FORMAT_VERSION};
pub use writer::write_stream;

use std::path::PathBuf;

/// A damaged, truncated or foreign checkpoint stream.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The bytes are not a Hot Spare stream at all.
    #[error("at byte {offset}: bad magic, not a Hot Spare checkpoint stream")]
    BadMagic {
        /// Offset of the frame header.
        offset: u64,
    },
    /// The stream ends inside a frame or before END.
    #[error("at byte {offset}: stream is truncated")]
    Truncated {
        /// Offset of the incomplete frame.
        offset: u64,
    },
    /// A frame's CRC32C does not match: the bytes were damaged.
    #[error("at byte {offset}: {kind:?} frame fails its CRC32C check (damaged)")]
    Checksum {
        /// Offset of the frame header.
        offset: u64,
        /// The frame's kind.
        kind: format::FrameKind,
    },
    /// Written by another version of the format.
    #[error("format version {found} is not supported (this build reads version {supported})")]
    Version {
        /// Version in the stream.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// Well-checksummed but impossible content.
    #[error("at byte {offset}: malformed stream: {what}")]
    Malformed {
        /// Offset of the offending frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The underlying read failed.
    #[error("at byte {offset}: read failed: {source}")]
    Io {
        /// Offset reached.
        offset: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// Whether the error is in the stream itself (damaged, foreign, out of order): such a
    /// stream can never be applied. Other errors (I/O) may succeed on a retry.
    pub fn is_bad_stream(&self) -> bool {
        match self {
            ImageError::Format { source, .. } => !matches!(source, FormatError::Io { .. }),
            ImageError::OtherExecutable { .. }
            | ImageError::Chain { .. }
            | ImageError::IncompleteRange { .. }
            | ImageError::StaleTerm { .. } => true,
            _ => false,
        }
    }
}

/// An image directory could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A stream or the manifest is damaged.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// A file operation failed.
    #[error("{}: {what} failed: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The image belongs to another executable.
    #[error("{}: image is for executable {image} but this is {this}", path.display())]
    OtherExecutable {
        /// The image directory.
        path: PathBuf,
        /// Identity recorded in the image.
        image: String,
        /// Identity of this executable.
        this: String,
    },
    /// An incremental checkpoint does not apply on top of the image.
    #[error("{}: checkpoint {seq} applies on top of {base} but the image is at {have}", path.display())]
    Chain {
        /// The image directory.
        path: PathBuf,
        /// The checkpoint.
        seq: u64,
        /// Its base.
        base: u64,
        /// The image's sequence.
        have: u64,
    },
    /// A range appears for the first time without all its pages.
    #[error("{}: range {addr:#x}+{len:#x} is new but the checkpoint lacks some of its pages", path.display())]
    IncompleteRange {
        /// The image directory.
        path: PathBuf,
        /// Range start.
        addr: u64,
        /// Range length.
        len: u64,
    },
    /// A checkpoint from a primary whose term is older than the image's: that primary is fenced.
    #[error("{}: checkpoint has term {term}, older than the current term {current}: its primary is fenced", path.display())]
    StaleTerm {
        /// The stream.
        path: PathBuf,
        /// Its term.
        term: u64,
        /// The current term.
        current: u64,
    },
    /// A data file does not match its checksums.
    #[error("{}: damaged: {what}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The directory holds no image.
    #[error("{}: no checkpoint image here (no manifest)", path.display())]
    NoImage {
        /// The directory.
        path: PathBuf,
    },
    /// A range cannot be mapped back at its address.
    #[error("range {addr:#x}+{len:#x} cannot be mapped back at its address: {why}")]
    RangeUnmappable {
        /// Range start.
        addr: u64,
        /// Range length.
        len: u64,
        /// Why.
        why: String,
    },
}
