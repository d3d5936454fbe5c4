//! Checkpoint metadata: what the image needs besides memory, carried in BEGIN (postcard).

use serde::{Deserialize, Serialize};

/// A file descriptor the program registered, as the image records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdRecord {
    /// A regular file: reopened at `path` with `flags` and positioned at `offset`.
    File {
        /// Absolute path.
        path: String,
        /// `fcntl(F_GETFL)` flags (without creation flags).
        flags: i32,
        /// Offset, refreshed at every checkpoint when `refresh` is set.
        offset: u64,
        /// Whether the offset is re-read at each checkpoint.
        refresh: bool,
    },
    /// A listening TCP socket, bound again on resume.
    TcpListener {
        /// Its local address.
        addr: String,
    },
    /// A listening Unix socket, bound again on resume (a stale socket file is removed).
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
}

impl Metadata {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard serialises plain data")
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Metadata, crate::Error> {
        postcard::from_bytes(b).map_err(|e| crate::Error::Metadata(e.to_string()))
    }
}
