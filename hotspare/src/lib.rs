//! The Hot Spare Library: make a program's in-memory state survive the death of its process.
//!
//! A program keeps its important state in the **checkpoint heap** (a region at a fixed virtual
//! address with its own allocator), registers its **worker loops** by name, and calls
//! [`HotSpare::cpt`] wherever its state is consistent. Each checkpoint stops the caller for about
//! a millisecond (only the pages written since the previous one are captured, via
//! [`kmod_shim`]) and becomes durable in an image directory in the background. Killed, the
//! program is started again with `HOTSPARE_RESUME=<image dir>`: the state is mapped back at the
//! same addresses and the worker loops are called directly.
//!
//! ```no_run
//! use hotspare::{HeapAlloc, HotSpare, Mutex, StableHasher};
//! type Map = hashbrown::HashMap<u64, u64, StableHasher, HeapAlloc>;
//!
//! fn worker(hs: &HotSpare) {
//!     let map = hs.heap().root::<Mutex<Map>>().expect("root set at first start");
//!     for i in 0.. {
//!         map.lock().insert(i, i * i);
//!         let stats = hs.cpt().unwrap();
//!         hs.wait_durable(stats.seq).unwrap();
//!     }
//! }
//!
//! fn main() -> Result<(), hotspare::Error> {
//!     // On resume, start() maps the image back; fresh_or_run() then calls `worker` and, once
//!     // it returns, gives None: the state below is initialised on a fresh start only.
//!     let Some(hs) = HotSpare::builder()?.worker("main", worker).start()?.fresh_or_run() else {
//!         return Ok(());
//!     };
//!     let map = Map::with_capacity_and_hasher_in(1, StableHasher::default(), hs.heap().alloc());
//!     hs.heap().set_root(Mutex::new(map))?;
//!     hs.run();
//!     Ok(())
//! }
//! ```
//!
//! With [`GlobalHeap`] as the program's global allocator, ordinary Rust (`String`, `Vec`,
//! `Box<dyn Trait>`, std's collections) lives in the heap too:
//!
//! ```ignore
//! #[global_allocator]
//! static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();
//! ```
//!
//! See `docs/library.md` for the rules (what may live in the heap), and `docs/format.md` for the
//! image format.
#![deny(missing_docs)]

mod checkpoint;
mod checkpointer;
pub mod config;
mod error;
mod fds;
mod ffi;
mod fixed;
mod global;
pub mod heap;
mod meta;
mod metrics;
mod outbox;
mod probe;
pub mod replica;
mod resume;
mod runtime;
pub mod sync;

// The image format is its own crate; inside the library it keeps its old paths.
use hotspare_image as image;
use hotspare_image::identity;

pub use checkpoint::{
    CommitNotifier, CptStats, Op, OutputGate, RoundNeed, Ticket, TicketState, MAX_IN_FLIGHT,
};
pub use checkpointer::{
    Capture, Checkpointer, CheckpointerError, CheckpointerStats, CptKind, Summary,
};
pub use config::{Config, FixedAddresses, OnFence, Strategy};
pub use error::{Error, Result};
pub use global::{GlobalHeap, GlobalHeapStats};
pub use heap::{Heap, HeapAlloc, StableHasher};
pub use kmod_shim;
pub use meta::MetaError;
pub use outbox::{Flushed, Outbox, Outboxes, OutputCommit, Verdict};
pub use runtime::{Builder, HotSpare, ResumeInfo, SignalFn, Start, WorkerFn};
pub use sync::{Mutex, MutexGuard};
