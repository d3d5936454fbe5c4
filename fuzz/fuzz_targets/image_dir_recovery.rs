//! Recovery of an image directory from whatever a crash, a bad disk or a hostile peer left in
//! it: a manifest and 0–3 WAL files built from the input (`hotspare_fuzz::ImageInput`), then
//! `hotspare_image::ImageDir::open`. It must either fail with an error, or open an image whose
//! every page passes `verify_data()` — provided the directory it started from was a real image
//! (a valid manifest with its data files, or none) — and open again to the same image. It must
//! never panic.
//!
//! For a valid manifest the harness writes the data files of an image whose pages were never
//! written (zero-filled files and all-zero CRC tables: a real, if empty, image), unless the
//! input asks for none (`flags::NO_DATA`: then only "no panic" is checked). Streams declaring
//! more than 16 MiB of ranges or pages above 64 KiB are rejected from the corpus: the
//! directory reserves whole CRC tables and `verify_data` reads whole ranges, so they would only
//! measure the disk (see docs/fuzzing.md).
//!
//! The directory lives under `$HOTSPARE_FUZZ_TMP` (default `/dev/shm`, else the temp dir), one
//! per process, emptied before every input and removed after it.

#![no_main]

use hotspare_image::format::{decode_begin, FrameKind, FrameReader};
use hotspare_image::{Begin, ImageDir};
use hotspare_fuzz::{fix_stream, flags, ImageInput, WAL_EXTS};
use libfuzzer_sys::{fuzz_target, Corpus};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const MAX_RANGES_LEN: u64 = 16 << 20;
const MAX_PAGE: u32 = 64 << 10;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("HOTSPARE_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_path_buf()
                } else {
                    std::env::temp_dir()
                }
            });
        base.join(format!("hotspare-fuzz-image-{}", std::process::id()))
    })
}

/// The BEGIN of a stream or manifest, if its first frame is a valid one.
fn first_begin(bytes: &[u8]) -> Option<Begin> {
    let f = FrameReader::new(bytes).next_frame().ok()??;
    (f.kind == FrameKind::Begin)
        .then(|| decode_begin(&f.payload, 0).ok())
        .flatten()
}

/// A manifest as `ImageDir` reads it: exactly one valid BEGIN frame.
fn valid_manifest(bytes: &[u8]) -> Option<Begin> {
    let mut fr = FrameReader::new(bytes);
    let f = fr.next_frame().ok()??;
    if f.kind != FrameKind::Begin || !matches!(fr.next_frame(), Ok(None)) {
        return None;
    }
    decode_begin(&f.payload, 0).ok()
}

fn too_big(b: &Begin) -> bool {
    b.page_size > MAX_PAGE || b.ranges.iter().map(|r| r.len).sum::<u64>() > MAX_RANGES_LEN
}

fn write(p: &Path, bytes: &[u8]) {
    fs::write(p, bytes).unwrap_or_else(|e| panic!("harness: writing {}: {e}", p.display()));
}

fn wal_names(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("wal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| -> Corpus {
    let mut input = ImageInput::parse(data);
    let fix = input.flags & (flags::FIX_CRC | flags::FIX_END) != 0;
    let fix_end = input.flags & flags::FIX_END != 0;
    if fix {
        if let Some(m) = input.manifest.as_mut() {
            fix_stream(m, fix_end);
        }
        for (_, _, w) in &mut input.wals {
            fix_stream(w, fix_end);
        }
    }
    let streams = input.manifest.iter().chain(input.wals.iter().map(|w| &w.2));
    if streams.filter_map(|s| first_begin(s)).any(|b| too_big(&b)) {
        return Corpus::Reject;
    }

    let root = scratch();
    let _ = fs::remove_dir_all(root);
    // Removed again when this input is done (a crash aborts without unwinding, so the
    // directory of a crashing input stays for inspection).
    struct Cleanup(&'static Path);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(root);
    fs::create_dir_all(root.join("wal")).expect("harness: scratch directory");
    fs::create_dir_all(root.join("data")).expect("harness: scratch directory");

    // The starting image.
    let mut real_image = true;
    if let Some(m) = &input.manifest {
        write(&root.join("manifest"), m);
        match valid_manifest(m) {
            Some(b) if input.flags & flags::NO_DATA == 0 => {
                let page = u64::from(b.page_size);
                for r in &b.ranges {
                    let name = format!("{:016x}-{:x}", r.addr, r.len);
                    let data = fs::File::create(root.join("data").join(format!("{name}.pages")))
                        .expect("harness: data file");
                    data.set_len(r.len).expect("harness: data file size");
                    let crc = fs::File::create(root.join("data").join(format!("{name}.crc")))
                        .expect("harness: crc file");
                    crc.set_len(r.len / page * 4)
                        .expect("harness: crc file size");
                }
            }
            _ => real_image = false,
        }
    }
    for (seq, ext, bytes) in &input.wals {
        let ext = WAL_EXTS[usize::from(*ext) % WAL_EXTS.len()];
        write(&root.join("wal").join(format!("{seq:020}.{ext}")), bytes);
    }
    if input.flags & flags::APPLYING != 0 {
        write(&root.join("wal").join("applying"), b"");
    }

    let trace = std::env::var_os("HOTSPARE_FUZZ_TRACE").is_some_and(|v| v == "1");
    let dir = match ImageDir::open(root) {
        Ok(d) => d,
        Err(e) => {
            if trace {
                eprintln!("open: {e}");
            }
            return Corpus::Keep;
        }
    };
    let verified = dir.verify_data();
    if trace {
        eprintln!(
            "opened at {} (lineage {:?}), verify {verified:?}, wal {:?}",
            dir.seq(),
            dir.manifest().map(|m| m.lineage[0]),
            wal_names(root)
        );
    }
    if real_image {
        if let Err(e) = &verified {
            panic!(
                "recovery opened an image that fails verification: {e}\nwal before: {:?}\nwal after: {:?}\nmanifest: {:?}",
                input.wals.iter().map(|(s, e, b)| (s, e, b.len())).collect::<Vec<_>>(),
                wal_names(root),
                dir.manifest()
            );
        }
    }
    // Torn streams are gone after a successful recovery.
    let left = wal_names(root);
    assert!(
        !left.iter().any(|n| n.ends_with(".tmp")),
        "torn WAL files left after recovery: {left:?}"
    );
    let (seq, manifest) = (dir.seq(), dir.manifest().cloned());
    if input.flags & flags::REOPEN != 0 {
        drop(dir);
        let again = ImageDir::open(root)
            .unwrap_or_else(|e| panic!("an image that opened once does not open again: {e}"));
        assert_eq!(again.seq(), seq, "a second recovery moved the image");
        assert_eq!(again.manifest(), manifest.as_ref());
        if verified.is_ok() {
            again
                .verify_data()
                .unwrap_or_else(|e| panic!("verified once, fails after reopening: {e}"));
        }
    }
    Corpus::Keep
});
