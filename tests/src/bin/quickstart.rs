//! The first example of docs/library.md ("A Rust program"), kept here so that it compiles:
//! keep the two identical.

use hotspare::{HotSpare, Mutex};
use std::collections::HashMap;

#[global_allocator]
static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();

fn worker(hs: &HotSpare, scores: &Mutex<HashMap<String, u64>>) {
    if let Some(r) = hs.resumed() {
        eprintln!("resumed checkpoint {} in {:?}", r.seq, r.restore_time);
    }
    for i in 0u64.. {
        *scores
            .lock()
            .entry(format!("player-{}", i % 100))
            .or_default() += i;
        let ticket = hs.commit().unwrap(); // a checkpoint: stops us for ~a millisecond
        hs.wait(ticket).unwrap(); // only if we must know it is kept
    }
}

fn main() -> Result<(), hotspare::Error> {
    // Fresh start: builds the state (after the heap exists, so it is checkpoint memory) and
    // calls `worker`. Resume (HOTSPARE_RESUME=<image dir>, or the spare taking over): calls
    // `worker` on the restored state; the closure is not called.
    HotSpare::serve("main", || Mutex::new(HashMap::new()), worker)
}
