//! The identity of the executable a checkpoint belongs to: BLAKE3 of `/proc/self/exe`.
//!
//! Pointers in checkpoint memory (to functions, vtables, statics) are only meaningful to the
//! same binary, so an image records whose it is and resume refuses any other. A content hash,
//! not a path or inode, because the spare runs its own copy of the file.

use std::fmt;
use std::sync::OnceLock;

/// 32-byte BLAKE3 digest of an executable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExeId(pub [u8; 32]);

impl ExeId {
    /// This process's executable, hashed once per process.
    pub fn current() -> std::io::Result<ExeId> {
        static ID: OnceLock<Result<ExeId, String>> = OnceLock::new();
        ID.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            h.update_mmap("/proc/self/exe").map_err(|e| e.to_string())?;
            Ok(ExeId(*h.finalize().as_bytes()))
        })
        .clone()
        .map_err(|e| std::io::Error::other(format!("hashing /proc/self/exe: {e}")))
    }
}

impl fmt::Display for ExeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..12] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ExeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExeId({self})")
    }
}
