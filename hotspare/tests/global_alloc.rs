//! `GlobalHeap` as this test binary's global allocator: routing by address across the start of
//! the library, alignment, and many threads (in waves, so slots are released and reused)
//! allocating, growing and freeing blocks whose contents they check, while the main thread
//! stops the allocator again and again — `GlobalHeap::check` (which walks every free list the
//! way a capture sees them) and real checkpoints.

use hotspare::{Builder, Config, FixedAddresses, GlobalHeap};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};

#[global_allocator]
static A: GlobalHeap = GlobalHeap::new();

fn worker(seed: u64, rounds: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut live: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut boxes: Vec<Box<[u64; 9]>> = Vec::new();
    for _ in 0..rounds {
        match rng.u8(..10) {
            0..=5 => {
                let n = match rng.u8(..20) {
                    0 => rng.usize(32_000..200_000),
                    1..=3 => rng.usize(1000..33_000),
                    _ => rng.usize(1..300),
                };
                let tag = rng.u8(..);
                let v = vec![tag; n];
                assert!(GlobalHeap::contains(v.as_ptr()));
                live.push((tag, v));
            }
            6 => {
                if let Some(i) = (!live.is_empty()).then(|| rng.usize(..live.len())) {
                    let (tag, v) = &mut live[i];
                    assert!(v.iter().all(|b| b == tag), "block changed under us");
                    let more = rng.usize(1..5000);
                    v.resize(v.len() + more, *tag);
                }
            }
            7 => boxes.push(Box::new([seed; 9])),
            _ => {
                if !live.is_empty() {
                    let (tag, v) = live.swap_remove(rng.usize(..live.len()));
                    assert!(v.iter().all(|&b| b == tag), "block changed under us");
                }
                if boxes.len() > 50 {
                    assert!(boxes.drain(..25).all(|b| *b == [seed; 9]));
                }
            }
        }
        if live.len() > 200 {
            for (tag, v) in live.drain(..100) {
                assert!(v.iter().all(|&b| b == tag), "block changed under us");
            }
        }
    }
}

#[test]
fn routing_alignment_threads_and_captures() {
    assert!(GlobalHeap::in_use());
    let before = vec![1u8; 1000];
    let mut grown_before = vec![2u8; 100];
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        image_dir: tmp.path().join("image"),
        heap_size: 512 << 20,
        fixed_addresses: FixedAddresses::Off,
        ..Config::default()
    };
    let hs = Builder::new(config)
        .worker("main", |_| {})
        .start()
        .unwrap()
        .into_handle();
    // Before the library started: ordinary memory, freed and grown there.
    assert!(!GlobalHeap::contains(before.as_ptr()));
    grown_before.resize(100_000, 3);
    assert!(!GlobalHeap::contains(grown_before.as_ptr()));
    drop(before);
    // From now on: the checkpoint heap.
    let after = String::from("in the heap");
    assert!(GlobalHeap::contains(after.as_ptr()));
    for align in [16, 64, 256, 4096, 8192] {
        for size in [8, 100, 5000, 40_000] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size; freed below with the same layout.
            unsafe {
                let p = A.alloc(l);
                assert!(!p.is_null() && GlobalHeap::contains(p));
                assert_eq!(p as usize % align, 0, "{l:?}");
                p.write_bytes(7, size);
                A.dealloc(p, l);
            }
        }
    }
    let first = GlobalHeap::check().unwrap();
    let stop = AtomicBool::new(false);
    let done_checks = std::sync::atomic::AtomicUsize::new(0);
    let mut checks = 0;
    std::thread::scope(|s| {
        let (stop, done_checks) = (&stop, &done_checks);
        // Six waves at least, and more (up to 60) until a dozen checks and their captures
        // have run during the churn, however fast the machine runs the waves.
        let churn = s.spawn(move || {
            let mut wave = 0u64;
            while wave < 6 || (done_checks.load(Ordering::SeqCst) < 12 && wave < 60) {
                std::thread::scope(|w| {
                    for t in 0..6u64 {
                        w.spawn(move || worker(wave * 100 + t, 4000));
                    }
                });
                wave += 1;
            }
            stop.store(true, Ordering::SeqCst);
        });
        while !stop.load(Ordering::SeqCst) {
            let st = GlobalHeap::check().unwrap_or_else(|e| panic!("allocator inconsistent: {e}"));
            assert!(st.slots_owned >= 1);
            checks += 1;
            done_checks.store(checks, Ordering::SeqCst);
            if checks % 4 == 0 {
                let c = hs.cpt().unwrap();
                hs.wait_durable(c.seq).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        churn.join().unwrap();
    });
    let last = GlobalHeap::check().unwrap();
    assert!(checks > 10, "only {checks} checks ran during the churn");
    // Waves of six threads: slots were released at thread exit and reused, not one per
    // thread ever started (the main thread, the churn thread, six workers, and a few spare).
    assert!(
        last.slots_used <= first.slots_used + 10,
        "slots: {first:?} -> {last:?}"
    );
    assert!(last.free_blocks > 0);
    assert_eq!(last.leaked, 0);
    drop(after);
}
