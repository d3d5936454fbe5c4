//! MapReduce word count on Hot Spare (the CheckSync thesis's MapReduce evaluation).
//!
//! * [`job`]: the coordinator's job tables and request handling, in plain Rust (`Vec`s: in the
//!   checkpoint heap with Hot Spare, whose `GlobalHeap` the coordinator makes its allocator);
//! * [`server`]: the coordinator's accept loop, shared by both modes, which makes every state
//!   change durable (through `hotspare::Checkpointer::commit_durable`) before it answers;
//! * [`wordcount`]: what a worker does for a map or reduce task.
//!
//! The binaries are `mr-coordinator` and `mr-worker`; `docs/mapreduce.md` describes them.

pub mod job;
pub mod server;
pub mod wordcount;

/// Errors of the library modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A malformed request or reply line.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The job tables could not be made durable (Hot Spare: checkpoint failed or not
    /// acknowledged by the spare).
    #[error("not durable: {0}")]
    NotDurable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `map_err` helper: an I/O error with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
