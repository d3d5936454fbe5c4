//! The Hot Spare Library: the application-facing layer (checkpoint heap, worker loops, metadata,
//! image format, sender, spare daemon, C ABI).
//!
//! **Not built yet.** This crate exists so that the workspace has the shape of the design
//! (`../shared/DESIGN.md`); its work is the project's issue 3. Until then the only working layer
//! is [`kmod_shim`], re-exported here, which provides dirty-page tracking (`cptctl`) and
//! copy-on-write snapshots (`cptfork`).
#![deny(missing_docs)]

pub use kmod_shim;
