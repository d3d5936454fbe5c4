//! The replication protocol of Hot Spare, with no I/O inside.
//!
//! "Contains no networking code and does not get any relevant timestamps from the operating
//! system" (as `quinn-proto` says of itself): the primary's [`primary::Link`] and the
//! [`spare::Spare`] are state machines that take events — bytes received, a timer, a disk
//! operation finished, the time now — and return actions — bytes to send, a disk operation to
//! start, the next timer, "serving allowed until T", "take over". The production drivers
//! (`hotspare::replica`) run them on `mio`; the deterministic simulator ([`sim`]) runs the same
//! code against simulated networks, disks, clocks and crashes, and checks the guarantees after
//! every step.
//!
//! * [`arbiter`] — takeover decided by a compare-and-swap on etcd, and leases renewed there;
//! * [`codec`] — the authenticated handshake and message envelope, bytes in, bytes out;
//! * [`msg`] — the messages;
//! * [`lease`] — why the right to serve is safe, and the bound it needs;
//! * [`primary`], [`spare`] — the two sides;
//! * [`time`] — a node's clock, as the machines see it.

pub mod arbiter;
pub mod codec;
pub mod lease;
pub mod msg;
pub mod primary;
pub mod sim;
pub mod spare;
pub mod time;

pub use msg::{AckLevel, Lineage, Msg, StreamHeader, UnknownAckLevel};
pub use time::Time;
