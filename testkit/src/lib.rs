//! What Hot Spare's tests and benchmarks share: paths to the built programs and compiling the C
//! test programs ([`paths`]), child processes that are always killed by pid ([`process`]),
//! loopback ports ([`net`]), a RESP2 client ([`resp`]), disks of a test's own ([`disk`]), hosts
//! in network namespaces ([`netns`]) and a real etcd member ([`etcd`]).
//!
//! A test crate uses it as `mod util;` with `tests/tests/util/mod.rs` re-exporting it, so a test
//! file reads `util::Killed`, `util::free_port()`, as it always did.

pub mod disk;
pub mod etcd;
pub mod net;
pub mod netns;
pub mod paths;
pub mod process;
pub mod resp;

pub use disk::{LoopExt4, Tmpfs};
pub use etcd::Etcd;
pub use net::{free_port, now_ns, wait_port};
pub use netns::{enter_netns, Lab};
pub use paths::{compile_c, lib, link_shared, profile_dir, repo};
pub use process::{next_line, primary_command, spare_command, spawn_lines, Killed};
pub use resp::{Reply, RespConn};
