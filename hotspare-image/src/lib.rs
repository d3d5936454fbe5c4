//! Checkpoint images: the stream format ([`format`]), the crash-safe image directory that
//! applies streams all or nothing ([`dir`]), sub-page deltas for the wire ([`delta`]), lineage
//! ([`lineage`]), and what an image records of the executable it belongs to ([`identity`]).
//!
//! Its own crate, not a public module of the library: a program uses `hotspare`; the library,
//! the spare daemon, `hotspare inspect`, the fuzz targets and the tests use this.

pub mod delta;
pub mod dir;
pub mod format;
pub mod identity;
pub mod lineage;
pub mod log;
mod writer;

pub use dir::{ImageDir, OwnLog};
pub use format::{validate_begin, Begin, End, RangeEntry, Run, Summary, FORMAT_VERSION};
pub use lineage::{check_applies, lineage_hex, new_lineage, LineagePolicy, Tip};
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
    #[error(
        "format version {found} is not supported (this build reads versions {} to {supported})",
        format::MIN_READ_VERSION
    )]
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
    /// A well-formed BEGIN that describes something no applier may act on (bad page size,
    /// ranges misaligned, overlapping, outside user space, too many or too large, ...).
    #[error("at byte {offset}: BEGIN refused: {what}")]
    InvalidBegin {
        /// Offset of the BEGIN frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// A wire stream's check (in its END) differs from what this side computes over its body
    /// and the pages its DELTA frames produce applied on the base pages held here: a base page
    /// is not the page the primary diffed against (or the stream was damaged).
    #[error("at byte {offset}: a delta of this stream does not reproduce the primary's page, or the stream was damaged (the stream's check differs; {pages} delta pages): applied on another base than the primary's; stream refused")]
    DeltaCheck {
        /// Offset of the END frame that carries the check.
        offset: u64,
        /// Pages that came as deltas.
        pages: u64,
    },
    /// A wire stream names a base that is not available here (or its pages cannot be read).
    #[error("at byte {offset}: no base for the delta: {what}")]
    Base {
        /// Offset of the frame.
        offset: u64,
        /// What is missing.
        what: String,
    },
    /// Writing the resolved stream failed.
    #[error("writing the resolved stream failed: {source}")]
    Output {
        /// The I/O error.
        #[source]
        source: std::io::Error,
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
            ImageError::Format { source, .. } => {
                !matches!(source, FormatError::Io { .. } | FormatError::Output { .. })
            }
            ImageError::OtherExecutable { .. }
            | ImageError::Chain { .. }
            | ImageError::IncompleteRange { .. }
            | ImageError::StaleTerm { .. }
            | ImageError::OtherLineage { .. }
            | ImageError::NotNewer { .. }
            | ImageError::PageSize { .. } => true,
            _ => false,
        }
    }

    /// The same error naming `path` as the stream it is about (errors of
    /// [`check_applies`] name no file until their caller does this).
    pub fn at(self, path: impl Into<PathBuf>) -> ImageError {
        let path = path.into();
        match self {
            ImageError::OtherExecutable { image, this, .. } => {
                ImageError::OtherExecutable { path, image, this }
            }
            ImageError::Chain {
                seq, base, have, ..
            } => ImageError::Chain {
                path,
                seq,
                base,
                have,
            },
            ImageError::IncompleteRange { addr, len, .. } => {
                ImageError::IncompleteRange { path, addr, len }
            }
            ImageError::StaleTerm { term, current, .. } => ImageError::StaleTerm {
                path,
                term,
                current,
            },
            ImageError::OtherLineage { image, stream, .. } => ImageError::OtherLineage {
                path,
                image,
                stream,
            },
            ImageError::NotNewer { seq, have, .. } => ImageError::NotNewer { path, seq, have },
            ImageError::PageSize { stream, image, .. } => ImageError::PageSize {
                path,
                stream,
                image,
            },
            other => other,
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
    /// The stream belongs to another run of the program than the image (another lineage), and
    /// replacing the image was not asked for.
    #[error("{}: checkpoint is of lineage {stream} but the image here is of lineage {image} (another run of the program); to replace the image with it deliberately, start hotspare-resume with --accept-new-lineage, or resume the primary from this image", path.display())]
    OtherLineage {
        /// The stream.
        path: PathBuf,
        /// Lineage of the image (hex).
        image: String,
        /// Lineage of the stream (hex).
        stream: String,
    },
    /// A checkpoint of the image's lineage that is not newer than what is already durable.
    #[error("{}: checkpoint {seq} is not newer than checkpoint {have}, already durable here", path.display())]
    NotNewer {
        /// The stream.
        path: PathBuf,
        /// Its sequence.
        seq: u64,
        /// The newest durable sequence.
        have: u64,
    },
    /// An incremental checkpoint written with another page size than the image's.
    #[error("{}: incremental checkpoint has page size {stream} but the image has {image}", path.display())]
    PageSize {
        /// The stream.
        path: PathBuf,
        /// Its page size.
        stream: u32,
        /// The image's.
        image: u32,
    },
    /// Another process (or another open in this one) holds the directory's lock.
    #[error("image directory {} is in use by {}", path.display(), holder.map_or("another process (no pid recorded)".to_owned(), |p| format!("pid {p}")))]
    Locked {
        /// The image directory.
        path: PathBuf,
        /// The pid recorded in its lock file.
        holder: Option<u32>,
    },
    /// The data files hold part of a checkpoint that could not be finished: the image is not
    /// usable until it is (the stream is kept as `wal/<seq>.cpt`).
    #[error("{}: a checkpoint is partly written into the data files and could not be finished ({source}); free space or repair the disk, then open the directory again", path.display())]
    Unfinished {
        /// The image directory.
        path: PathBuf,
        /// Why it could not be finished.
        #[source]
        source: Box<ImageError>,
    },
    /// A checkpoint newer than the image is durable (a client may have been told so) but could
    /// not be applied when the directory was opened (the reason was reported then; usually a
    /// full disk): resuming from the image would lose it.
    #[error("{}: checkpoint {seq} is durable but could not be applied to the image (the reason is reported above; a full disk?): not resuming from checkpoint {have}, which would lose it; free space or repair the disk, then resume again", path.display())]
    Unapplied {
        /// The image directory.
        path: PathBuf,
        /// The newest durable checkpoint.
        seq: u64,
        /// The image's.
        have: u64,
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
