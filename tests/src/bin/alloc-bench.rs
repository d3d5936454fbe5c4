//! Allocation throughput of `GlobalHeap` against the system allocator, in the same run.
//!
//! `alloc-bench [--ops N] [--runs R] [--threads 1,2,8]` — each thread keeps a ring of 512 live
//! blocks and, per operation, frees the oldest and allocates a new one (70 % of 16–128 bytes,
//! 25 % of 129–1024, 5 % of 1–8 KiB, touching its first and last byte); every 16th operation
//! grows a block by half (`realloc`). Both allocators run the same code through `GlobalAlloc`,
//! alternately, `R` times per thread count; the best run of each counts. Prints one JSON line
//! per run and one summary line per thread count with the ratio.

use hotspare::{Config, FixedAddresses, GlobalHeap};
use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Instant;

#[global_allocator]
static A: GlobalHeap = GlobalHeap::new();

const RING: usize = 512;

fn size(r: &mut u64) -> usize {
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    let x = (*r >> 16) as usize;
    match x % 100 {
        0..=69 => 16 + x / 100 % 113,
        70..=94 => 129 + x / 100 % 896,
        _ => 1024 + x / 100 % 7169,
    }
}

fn workload<G: GlobalAlloc>(a: &G, ops: usize, seed: u64) -> u64 {
    let mut ring: Vec<(*mut u8, Layout)> = Vec::with_capacity(RING);
    let mut r = seed | 1;
    let mut sum = 0u64;
    for i in 0..ops {
        let slot = i % RING;
        if ring.len() == RING {
            let (p, l) = ring[slot];
            // SAFETY: allocated below by `a` with layout `l`, freed once.
            unsafe {
                sum = sum.wrapping_add(*p as u64);
                a.dealloc(p, l);
            }
        }
        let l = Layout::from_size_align(size(&mut r), 8).unwrap();
        // SAFETY: non-zero size.
        let mut p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        let mut l2 = l;
        if i % 16 == 0 {
            let n = l.size() + l.size() / 2;
            // SAFETY: `p` is live with layout `l`; the new size is non-zero.
            p = unsafe { a.realloc(p, l, n) };
            assert!(!p.is_null());
            l2 = Layout::from_size_align(n, 8).unwrap();
        }
        // SAFETY: `p` holds l2.size() bytes.
        unsafe {
            *p = i as u8;
            *p.add(l2.size() - 1) = 1;
        }
        if ring.len() == RING {
            ring[slot] = (p, l2);
        } else {
            ring.push((p, l2));
        }
    }
    for (p, l) in ring {
        // SAFETY: live blocks of `a`.
        unsafe { a.dealloc(p, l) };
    }
    sum
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Operations per wall-clock second, and per second of the threads' own CPU time (which a
/// loaded machine disturbs less: time spent preempted is not counted).
fn run<G: GlobalAlloc + Sync>(a: &G, threads: usize, ops: usize) -> (f64, f64) {
    let t0 = Instant::now();
    let cpu: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let c0 = thread_cpu();
                    std::hint::black_box(workload(a, ops, 0x9e37_79b9 + t as u64));
                    thread_cpu() - c0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let n = (threads * ops) as f64;
    (n / t0.elapsed().as_secs_f64(), n / cpu)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut ops = 2_000_000usize;
    let mut runs = 3usize;
    let mut counts = vec![1usize, 2, 8];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or("missing value")?;
        match a.as_str() {
            "--ops" => ops = v.parse()?,
            "--runs" => runs = v.parse()?,
            "--threads" => counts = v.split(',').map(|t| t.parse()).collect::<Result<_, _>>()?,
            _ => return Err(format!("unknown option {a}").into()),
        }
    }
    let dir = std::env::temp_dir().join(format!("alloc-bench-{}", std::process::id()));
    let mut config = Config::load()?;
    config.image_dir = dir.clone();
    config.fixed_addresses = FixedAddresses::Off;
    let hs = hotspare::Builder::new(config).start()?.into_handle();
    for &threads in &counts {
        let (mut best_sys, mut best_heap) = ((0f64, 0f64), (0f64, 0f64));
        for i in 0..runs {
            let sys = run(&System, threads, ops);
            let heap = run(&A, threads, ops);
            best_sys = (best_sys.0.max(sys.0), best_sys.1.max(sys.1));
            best_heap = (best_heap.0.max(heap.0), best_heap.1.max(heap.1));
            for (name, (wall, cpu)) in [("system", sys), ("global-heap", heap)] {
                println!(
                    "{{\"bench\":\"alloc\",\"allocator\":\"{name}\",\"threads\":{threads},\"run\":{i},\"ops_per_thread\":{ops},\"mops_per_s\":{:.2},\"mops_per_cpu_s\":{:.2}}}",
                    wall / 1e6,
                    cpu / 1e6
                );
            }
        }
        println!(
            "{{\"bench\":\"alloc-summary\",\"threads\":{threads},\"system_mops_per_s\":{:.2},\"global_heap_mops_per_s\":{:.2},\"ratio\":{:.3},\"system_mops_per_cpu_s\":{:.2},\"global_heap_mops_per_cpu_s\":{:.2},\"cpu_ratio\":{:.3}}}",
            best_sys.0 / 1e6,
            best_heap.0 / 1e6,
            best_heap.0 / best_sys.0,
            best_sys.1 / 1e6,
            best_heap.1 / 1e6,
            best_heap.1 / best_sys.1
        );
    }
    let st = GlobalHeap::check()?;
    println!(
        "{{\"bench\":\"alloc-heap\",\"slots_used\":{},\"free_blocks\":{},\"talc_allocated\":{}}}",
        st.slots_used, st.free_blocks, st.talc_allocated
    );
    drop(hs);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
