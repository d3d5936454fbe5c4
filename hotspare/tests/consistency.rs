//! Every write is in the image: a thread keeps writing the heap while checkpoints are taken
//! (each strategy); after it stops and one more checkpoint is durable, the image's data file
//! equals memory byte for byte. A write lost between QUERY and capture would show here.

use hotspare::{Builder, Config, HotSpare, Strategy};
use std::sync::atomic::{AtomicBool, Ordering};

const WORDS: usize = 1 << 20; // 8 MiB of u64

/// Takes a last checkpoint, waits for it, and checks the image as a resume would find it
/// against memory byte for byte: a copy of the directory, opened (so that recovery applies what
/// the log holds: a durable checkpoint may not be in the data files yet). Bytes 16..24 are the
/// allocator's lock word, which every capture holds (and resume treats as stale): the image has
/// it taken, memory has it free. The copy's directory is kept with the returned handle.
fn final_image_matches_memory(
    hs: &HotSpare,
    img: &std::path::Path,
    base: usize,
    what: &str,
) -> (hotspare_image::ImageDir, tempfile::TempDir) {
    let st = hs.cpt().unwrap();
    hs.wait_durable(st.seq).unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(img, copy.path());
    let image = hotspare_image::ImageDir::open(copy.path()).unwrap();
    assert_eq!(image.seq(), st.seq, "{what}: the last durable checkpoint");
    let data = std::fs::read(image.data_path(base as u64, 16 << 20)).unwrap();
    // SAFETY: the heap is mapped for its whole size and nothing writes it any more.
    let mem = unsafe { std::slice::from_raw_parts(base as *const u8, 16 << 20) };
    let first_diff = data
        .iter()
        .zip(mem)
        .enumerate()
        .position(|(i, (a, b))| a != b && !(16..24).contains(&i));
    assert_eq!(
        first_diff, None,
        "{what}: image differs from memory at heap offset {first_diff:?}"
    );
    (image, copy)
}

/// Copies a directory tree (the image directory of a live process: its lock file too).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn run(strategy: Strategy, base: usize) {
    let t = tempfile::tempdir().unwrap();
    let config = Config {
        image_dir: t.path().join("img"),
        heap_base: base,
        heap_size: 16 << 20,
        strategy,
        ..Config::default()
    };
    let hs: HotSpare = Builder::new(config).open().unwrap();
    let v = allocator_api2::vec::from_elem_in(0u64, WORDS, hs.heap().alloc());
    let ptr = v.as_ptr() as usize;
    std::mem::forget(v);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Each page is written exactly once, at a random moment while checkpoints run: a write
        // that a checkpoint dropped is never written again, so the final image would miss it.
        s.spawn(|| {
            let mut rng = fastrand::Rng::with_seed(strategy as u64);
            let mut pages: Vec<usize> = (0..WORDS / 512).collect();
            rng.shuffle(&mut pages);
            for (n, p) in pages.into_iter().enumerate() {
                let i = p * 512 + rng.usize(..512);
                // SAFETY: `i` < WORDS, inside the vector leaked above; only this thread writes.
                unsafe { (ptr as *mut u64).add(i).write_volatile(n as u64 + 1) };
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_micros(250) {
                    std::hint::spin_loop();
                }
            }
            done.store(true, Ordering::SeqCst);
        });
        let mut n = 0;
        while !done.load(Ordering::SeqCst) {
            let st = hs.cpt().unwrap();
            assert!(
                strategy == Strategy::Auto || st.strategy == strategy || st.full,
                "{st:?}"
            );
            hs.wait_durable(st.seq).unwrap();
            n += 1;
        }
        assert!(n >= 2, "only {n} checkpoints ran during the writes");
    });
    let (image, _copy) =
        final_image_matches_memory(&hs, &t.path().join("img"), base, &format!("{strategy:?}"));
    assert_eq!(image.verify_data().unwrap(), 4096);
}

#[test]
fn copy_strategy_captures_every_concurrent_write() {
    run(Strategy::Copy, 0x5a00_0000_0000);
}

#[test]
fn fork_strategy_captures_every_concurrent_write() {
    run(Strategy::Fork, 0x5b00_0000_0000);
}

#[test]
fn auto_strategy_captures_every_concurrent_write() {
    run(Strategy::Auto, 0x5c00_0000_0000);
}

/// With `cpt_or_coalesce` in a tight loop, most calls find the previous checkpoint still being
/// written and only note their pages; the final image must still equal memory.
#[test]
fn coalesced_checkpoints_lose_no_write() {
    let base = 0x5d00_0000_0000;
    let t = tempfile::tempdir().unwrap();
    let config = Config {
        image_dir: t.path().join("img"),
        heap_base: base,
        heap_size: 16 << 20,
        ..Config::default()
    };
    let hs: HotSpare = Builder::new(config).open().unwrap();
    let v = allocator_api2::vec::from_elem_in(0u64, WORDS, hs.heap().alloc());
    let ptr = v.as_ptr() as usize;
    std::mem::forget(v);
    let (mut coalesced, mut taken) = (0, 0);
    let mut rng = fastrand::Rng::with_seed(99);
    for n in 0..3000u64 {
        let i = rng.usize(..WORDS);
        // SAFETY: `i` < WORDS, inside the vector leaked above; only this thread writes.
        unsafe { (ptr as *mut u64).add(i).write_volatile(n + 1) };
        let st = hs.cpt_or_coalesce().unwrap();
        if st.coalesced {
            assert_eq!(st.seq, 0);
            coalesced += 1;
        } else {
            taken += 1;
        }
    }
    assert!(
        coalesced > 0 && taken > 1,
        "coalesced {coalesced}, taken {taken}"
    );
    final_image_matches_memory(
        &hs,
        &t.path().join("img"),
        base,
        &format!("coalesced {coalesced}, taken {taken}"),
    );
    eprintln!("coalesced {coalesced} of {} calls", coalesced + taken);
}
