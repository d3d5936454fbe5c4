//! Replication to a spare machine: the authenticated wire protocol ([`wire`]), the primary's
//! sender ([`sender`]) and the spare daemon ([`spare`], run by the `hotspare-resume` binary).

mod io;
mod log;
pub(crate) mod sender;
pub mod spare;
pub mod wire;

pub use sender::RemoteConfig;
