//! Checkpoint metadata: what the image needs besides memory, carried in BEGIN (postcard).

use serde::{Deserialize, Serialize};

/// Everything resume needs to know that is not in the page data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Metadata {
    /// The checkpoint heap (base, size).
    pub heap: (u64, u64),
    /// Registered worker loops, by name, in registration order.
    pub workers: Vec<String>,
    /// Application blobs, by name.
    pub blobs: Vec<(String, Vec<u8>)>,
}

impl Metadata {
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("postcard serialises plain data")
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Metadata, crate::Error> {
        postcard::from_bytes(b).map_err(|e| crate::Error::Metadata(e.to_string()))
    }
}
