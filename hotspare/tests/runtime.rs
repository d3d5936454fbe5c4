//! In-process behaviour of the library: configuration sources, the heap and its allocator,
//! typed roots, several worker loops, blobs, ranges.

use hotspare::{Builder, Config, HeapAlloc, HotSpare, Strategy};
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn configuration_from_toml_then_environment() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("hs.toml");
    std::fs::write(&p, "image_dir = \"/x\"\nheap_base = 0x500000000000\nheap_size = 67108864\nstrategy = \"fork\"\n").unwrap();
    let c = Config::from_toml_file(&p).unwrap();
    assert_eq!(
        (c.heap_base, c.heap_size, c.strategy),
        (0x5000_0000_0000, 64 << 20, Strategy::Fork)
    );
    assert_eq!(c.image_dir, std::path::PathBuf::from("/x"));
    std::fs::write(&p, "heap_sise = 1\n").unwrap();
    let e = Config::from_toml_file(&p).unwrap_err().to_string();
    assert!(e.contains("heap_sise"), "{e}");
    assert_eq!(hotspare::config::parse_size("2G").unwrap(), 2 << 30);
    assert_eq!(hotspare::config::parse_size("0x1000").unwrap(), 4096);
    assert!(hotspare::config::parse_size("12Q").is_err());
}

static RAN: AtomicUsize = AtomicUsize::new(0);

#[test]
fn heap_workers_blobs_and_ranges() {
    let t = tempfile::tempdir().unwrap();
    let config = Config {
        image_dir: t.path().join("img"),
        heap_base: 0x5800_0000_0000,
        heap_size: 16 << 20,
        ..Config::default()
    };
    let hs = Builder::new(config.clone())
        .worker("a", |_: &HotSpare| {
            RAN.fetch_add(1, Ordering::SeqCst);
        })
        .worker("b", |_: &HotSpare| {
            assert_eq!(
                std::thread::current().name(),
                Some("b"),
                "each extra worker has its own thread"
            );
            RAN.fetch_add(10, Ordering::SeqCst);
        })
        .open()
        .unwrap();
    assert!(hs.resumed().is_none());
    // The allocator serves allocator_api2 vectors and hashbrown maps from the heap.
    let mut v: allocator_api2::vec::Vec<u64, HeapAlloc> =
        allocator_api2::vec::Vec::new_in(hs.heap().alloc());
    v.extend(0..10_000);
    let base = hs.heap().base();
    assert!((v.as_ptr() as usize) > base && (v.as_ptr() as usize) < base + hs.heap().size());
    // Typed root: the wrong type is refused.
    hs.heap().set_root(hotspare::Mutex::new(42u64)).unwrap();
    assert_eq!(
        *hs.heap().root::<hotspare::Mutex<u64>>().unwrap().lock(),
        42
    );
    assert!(hs.heap().root::<hotspare::Mutex<u32>>().is_none());
    // A second heap at the same address is a clear error.
    let e = hotspare::Heap::reserve(base, 16 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be reserved") && e.contains("in use"),
        "{e}"
    );
    // Blobs, checkpoints, ranges.
    hs.set_blob("k", b"v1");
    hs.set_blob("k", b"v2");
    assert_eq!(hs.blob("k").unwrap(), b"v2");
    let first = hs.cpt().unwrap();
    // Only the pages ever written go to disk; the rest of the fresh heap is sent as ZERO runs.
    assert!(
        first.full && first.pages > 0 && first.pages < 200,
        "{first:?}"
    );
    v[5000] = 7;
    let second = hs.cpt().unwrap();
    assert!(
        !second.full && second.pages >= 1 && second.pages < 64,
        "{second:?}"
    );
    hs.wait_durable(second.seq).unwrap();
    let e = hs
        .register_range(base + 4096, 4096)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlaps"), "{e}");
    let e = hs.unregister_range(base, 16 << 20).unwrap_err().to_string();
    assert!(e.contains("cannot be unregistered"), "{e}");
    hs.run();
    assert_eq!(RAN.load(Ordering::SeqCst), 11);
    // The newest durable checkpoint (without a spare, small ones may still be in the log).
    let image = hotspare_image::ImageDir::open_read_only(t.path().join("img")).unwrap();
    assert_eq!(image.tip().map(|t| t.seq), Some(2));
    // A fresh start over an existing image is refused.
    let e = Builder::new(Config {
        heap_base: 0x5900_0000_0000,
        ..config
    })
    .open()
    .unwrap_err()
    .to_string();
    assert!(e.contains("holds a checkpoint image (sequence 2)"), "{e}");
}
