//! Replication to a spare machine: the authenticated wire protocol ([`wire`]), the primary's
//! sender ([`sender`]), the etcd client of both ([`arbiter`]) and the spare daemon ([`spare`], run by the `hotspare-resume` binary).

pub mod arbiter;
mod io;
pub(crate) mod log;
pub(crate) mod sender;
pub mod spare;
pub mod wire;

pub use arbiter::ArbiterConfig;
pub use sender::RemoteConfig;
