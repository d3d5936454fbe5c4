//! Resume treats the image's metadata as untrusted input: a peer that is hostile or buggy can
//! write any heap base, signal number, file flags or socket path it likes. Each case builds an
//! image directory with the library's public API (a full checkpoint stream committed to an
//! `ImageDir`, its header taken from one the library wrote), points `HOTSPARE_RESUME` at it and checks that `Builder::open` refuses with one
//! clear line *before* it maps anything or touches a file, or, for the good image, that it
//! resumes without truncating the recorded file.

use hotspare::{Builder, Config, Heap, HotSpare};
use hotspare_image::format::{Begin, RangeEntry};
use hotspare_image::identity::ExeId;
use hotspare_image::{write_stream, ImageDir, Run};
use serde::Serialize;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

const PAGE: usize = 4096;
/// Every case uses its own addresses (a resumed heap is never unmapped), far from the
/// defaults other tests use.
const A: u64 = 0x6a10_0000_0000;
const B: u64 = 0x6a20_0000_0000;
const C: u64 = 0x6a30_0000_0000;
const D: u64 = 0x6a40_0000_0000;
const E: u64 = 0x6a50_0000_0000;
const F: u64 = 0x6a60_0000_0000;
const TEMPLATE: u64 = 0x6a70_0000_0000;
const LEN: usize = 16 * PAGE;

/// The library's metadata as postcard encodes it (`hotspare/src/meta.rs`, field for field); the
/// good-image case checks the mirror is right by reading a blob back.
#[derive(Serialize, Default)]
struct Meta {
    heap: (u64, u64),
    workers: Vec<String>,
    blobs: Vec<(String, Vec<u8>)>,
    fds: Vec<(String, Fd)>,
    signals: Vec<(i32, String)>,
    /// Loaded objects (path, base, build ID), recorded only for GlobalHeap programs.
    code: Option<Vec<(String, u64, Vec<u8>)>>,
}

#[derive(Serialize)]
#[allow(dead_code)]
enum Fd {
    File {
        path: String,
        flags: i32,
        offset: u64,
        refresh: bool,
    },
    TcpListener {
        addr: String,
    },
    UnixListener {
        path: String,
    },
    Connected {
        local: String,
        peer: String,
    },
}

/// A BEGIN the library itself wrote (a fresh start and one full checkpoint, once per process):
/// each case replaces only the ranges and the metadata, so every other header field is the
/// library's own, whatever the format adds to it.
fn template() -> Begin {
    static T: OnceLock<Begin> = OnceLock::new();
    T.get_or_init(|| {
        let _g = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let t = tempfile::tempdir().unwrap();
        let config = Config {
            image_dir: t.path().join("template"),
            heap_base: TEMPLATE as usize,
            heap_size: LEN,
            ..Config::default()
        };
        let hs = Builder::new(config.clone())
            .worker("main", |_: &HotSpare| {})
            .open()
            .unwrap();
        assert!(hs.resumed().is_none());
        let seq = hs.cpt_full().unwrap().seq;
        hs.wait_durable(seq).unwrap();
        let d = ImageDir::open_read_only(&config.image_dir).unwrap();
        let b = d.manifest().unwrap().clone();
        assert_eq!((b.seq, b.base_seq), (1, 0));
        b
    })
    .clone()
}

/// Writes a full checkpoint (seq 1) of `ranges` with `meta` into a new image at `dir`.
fn image(dir: &Path, ranges: &[(u64, Vec<u8>)], meta: &Meta) {
    let exe = ExeId::current().unwrap();
    let begin = Begin {
        seq: 1,
        base_seq: 0,
        exe_id: exe.0,
        ranges: ranges
            .iter()
            .map(|(addr, data)| RangeEntry {
                addr: *addr,
                len: data.len() as u64,
                complete: true,
            })
            .collect(),
        meta: postcard::to_allocvec(meta).unwrap(),
        ..template()
    };
    assert_eq!(begin.page_size as usize, PAGE);
    let mut d = ImageDir::open(dir).unwrap();
    let mut bytes = Vec::new();
    write_stream(
        &mut bytes,
        &begin,
        ranges.iter().map(|(a, data)| Run::Data(*a, &data[..])),
    )
    .unwrap();
    let (p, _) = d.create_wal(1).unwrap();
    std::fs::write(&p, bytes).unwrap();
    d.commit_wal(1, Some(&exe)).unwrap();
}

/// `HOTSPARE_RESUME` is process-wide: one resume at a time.
static ENV: Mutex<()> = Mutex::new(());

fn resume(dir: &Path) -> hotspare::Result<HotSpare> {
    let _g = ENV.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("HOTSPARE_RESUME", dir);
    let config = Config {
        image_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let r = Builder::new(config)
        .worker("main", |_: &HotSpare| {})
        .signal_handler("usr1", on_signal)
        .open();
    std::env::remove_var("HOTSPARE_RESUME");
    r
}

extern "C" fn on_signal(_: libc::c_int) {}

/// Whether anything is mapped at `addr` in this process.
fn mapped(addr: u64) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        let (range, _) = l.split_once(' ').unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        lo <= addr && addr < hi
    })
}

fn err(r: hotspare::Result<HotSpare>) -> String {
    match r {
        Ok(_) => panic!("resume accepted a hostile image"),
        Err(e) => e.to_string(),
    }
}

/// A heap base outside every range of the image would be read (its header) and used as the
/// allocator: refused before any range is mapped or any descriptor restored.
#[test]
fn heap_outside_the_ranges_is_refused_before_anything_happens() {
    let t = tempfile::tempdir().unwrap();
    let precious = t.path().join("precious");
    std::fs::write(&precious, b"keep me").unwrap();
    let sock = t.path().join("sock");
    let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(stale); // leaves a stale socket file behind, as a killed program does
    let meta = Meta {
        heap: (A + (1 << 30), LEN as u64),
        workers: vec!["main".into()],
        fds: vec![
            (
                "log".into(),
                Fd::File {
                    path: precious.to_str().unwrap().into(),
                    flags: libc::O_RDWR | libc::O_TRUNC,
                    offset: 0,
                    refresh: false,
                },
            ),
            (
                "unix".into(),
                Fd::UnixListener {
                    path: sock.to_str().unwrap().into(),
                },
            ),
        ],
        ..Meta::default()
    };
    let dir = t.path().join("image");
    image(&dir, &[(A, vec![0; LEN])], &meta);
    let e = err(resume(&dir));
    assert!(e.contains("heap") && e.contains("not inside"), "{e}");
    assert!(!mapped(A), "a range was mapped before the heap was checked");
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
    assert!(
        sock.exists(),
        "the stale socket was removed before the heap was checked"
    );
}

/// A heap that straddles two adjacent ranges is not "inside one range" either.
#[test]
fn heap_straddling_two_ranges_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let meta = Meta {
        heap: (B + LEN as u64 / 2, LEN as u64),
        workers: vec!["main".into()],
        ..Meta::default()
    };
    let dir = t.path().join("image");
    image(
        &dir,
        &[(B, vec![0; LEN]), (B + LEN as u64, vec![0; LEN])],
        &meta,
    );
    let e = err(resume(&dir));
    assert!(e.contains("not inside"), "{e}");
    assert!(!mapped(B) && !mapped(B + LEN as u64), "ranges left mapped");
}

/// SIGKILL cannot be caught, 0 and 99 are not signals: refused with the signal named, before
/// anything is mapped.
#[test]
fn impossible_signal_numbers_are_refused() {
    for (i, sig) in [libc::SIGKILL, libc::SIGSTOP, 0, -3, 65, 99]
        .into_iter()
        .enumerate()
    {
        let t = tempfile::tempdir().unwrap();
        let base = C + (i as u64) * (1 << 24);
        let meta = Meta {
            heap: (base, LEN as u64),
            workers: vec!["main".into()],
            signals: vec![(sig, "usr1".into())],
            ..Meta::default()
        };
        let dir = t.path().join("image");
        image(&dir, &[(base, vec![0; LEN])], &meta);
        let e = err(resume(&dir));
        assert!(e.contains(&format!("signal {sig} ")), "{sig}: {e}");
        assert!(
            !mapped(base),
            "{sig}: range mapped before the signals were checked"
        );
    }
}

/// A worker or handler name the program did not register: refused before anything is mapped.
#[test]
fn unregistered_names_are_refused_before_mapping() {
    for (i, (workers, signals)) in [
        (vec!["main", "ghost"], vec![]),
        (vec!["main"], vec![(libc::SIGUSR2, "ghost")]),
    ]
    .into_iter()
    .enumerate()
    {
        let t = tempfile::tempdir().unwrap();
        let base = D + (i as u64) * (1 << 24);
        let meta = Meta {
            heap: (base, LEN as u64),
            workers: workers.into_iter().map(String::from).collect(),
            signals: signals.into_iter().map(|(s, n)| (s, n.into())).collect(),
            ..Meta::default()
        };
        let dir = t.path().join("image");
        image(&dir, &[(base, vec![0; LEN])], &meta);
        let e = err(resume(&dir));
        assert!(e.contains("'ghost'") && e.contains("not registered"), "{e}");
        assert!(!mapped(base), "range mapped before the names were checked");
    }
}

/// A Unix listener recorded at a path that now holds a regular file, or a symbolic link to one:
/// resume must not remove it to bind there. Both survive and resume refuses, before mapping.
#[test]
fn unix_listener_path_holding_a_file_is_refused_and_the_file_survives() {
    let t = tempfile::tempdir().unwrap();
    let regular = t.path().join("regular");
    std::fs::write(&regular, b"someone's data").unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&regular, &link).unwrap();
    for (i, path) in [&regular, &link].into_iter().enumerate() {
        let base = F + (i as u64) * (1 << 24);
        let meta = Meta {
            heap: (base, LEN as u64),
            workers: vec!["main".into()],
            fds: vec![(
                "unix".into(),
                Fd::UnixListener {
                    path: path.to_str().unwrap().into(),
                },
            )],
            ..Meta::default()
        };
        let dir = t.path().join(format!("image{i}"));
        image(&dir, &[(base, vec![0; LEN])], &meta);
        let e = err(resume(&dir));
        assert!(
            e.contains("not a socket") && e.contains(path.to_str().unwrap()),
            "{e}"
        );
        assert!(
            std::fs::symlink_metadata(path).is_ok(),
            "{} removed",
            path.display()
        );
        assert_eq!(std::fs::read(&regular).unwrap(), b"someone's data");
        assert!(!mapped(base));
    }
}

/// The good image: a real heap (made here with `Heap::reserve`, copied out and unmapped again)
/// and a file recorded with creation flags. Resume succeeds, the file keeps its content and is
/// at the recorded offset. This also shows the crafted images are right, so the refusals above
/// are refusals of what they say.
#[test]
fn a_good_image_resumes_and_never_truncates_the_recorded_file() {
    let t = tempfile::tempdir().unwrap();
    let heap = Heap::reserve(E as usize, LEN).unwrap();
    // SAFETY: the heap is LEN readable bytes at E, mapped just above.
    let bytes = unsafe { std::slice::from_raw_parts(heap.base() as *const u8, LEN) }.to_vec();
    // SAFETY: nothing refers to this heap any more; resume maps it back at the same address.
    assert_eq!(unsafe { libc::munmap(E as *mut libc::c_void, LEN) }, 0);
    let log = t.path().join("log");
    std::fs::write(&log, b"hello world").unwrap();
    let meta = Meta {
        heap: (E, LEN as u64),
        workers: vec!["main".into()],
        blobs: vec![("b".into(), b"blob".to_vec())],
        fds: vec![(
            "log".into(),
            Fd::File {
                path: log.to_str().unwrap().into(),
                flags: libc::O_RDWR | libc::O_TRUNC | libc::O_CREAT,
                offset: 6,
                refresh: true,
            },
        )],
        signals: vec![(libc::SIGUSR1, "usr1".into())],
        code: None,
    };
    let dir = t.path().join("image");
    image(&dir, &[(E, bytes)], &meta);
    let hs = resume(&dir).unwrap();
    assert_eq!(hs.resumed().unwrap().seq, 1);
    assert_eq!(hs.blob("b").as_deref(), Some(&b"blob"[..]));
    assert_eq!(std::fs::read(&log).unwrap(), b"hello world");
    let mut f = hs.file("log").unwrap();
    assert_eq!(f.stream_position().unwrap(), 6);
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "world");
    f.seek(SeekFrom::Start(0)).unwrap();
}
