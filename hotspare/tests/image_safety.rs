//! The image directory under contention and a full disk: one process at a time (a lock),
//! no spool left behind by a failure, and an apply that finds no space fails before it
//! touches the data files, so the directory still opens at its last good image.

mod util;

use hotspare_image::format::RangeEntry;
use hotspare_image::{ImageDir, ImageError, LineagePolicy};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use util::*;

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_lock() {
    let t = tempfile::tempdir().unwrap();
    let first = ImageDir::open(t.path()).unwrap();
    let err = ImageDir::open(t.path()).unwrap_err();
    let line = err.to_string();
    assert!(
        matches!(err, ImageError::Locked { holder: Some(p), .. } if p == std::process::id()),
        "{line}"
    );
    assert_eq!(
        line,
        format!(
            "image directory {} is in use by pid {}",
            t.path().display(),
            std::process::id()
        )
    );
    // Inspection and a second handle of the same process do not lock.
    ImageDir::attach(t.path()).unwrap();
    drop(first);
    let (t2, dir) = good_image();
    ImageDir::open_read_only(t2.path()).unwrap();
    assert!(matches!(
        ImageDir::open_existing(t2.path()),
        Err(ImageError::Locked { .. })
    ));
    let mode = std::fs::metadata(t2.path().join("lock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(dir);
    // Released with the handle.
    let again = ImageDir::open(t2.path()).unwrap();
    assert_eq!(again.seq(), 2);
}

#[test]
fn failed_and_abandoned_spools_are_removed() {
    let (t, mut dir) = good_image();
    // A stream the persister refuses.
    spool(&dir, 3, b"garbage");
    assert!(dir
        .persist_wal(3, dir.tip().as_ref(), LineagePolicy::RefuseNew, 0)
        .is_err());
    assert!(!dir.wal_path(3, "tmp").exists());
    // make_durable fails (here: the rename, onto a directory that is in the way).
    let blocker = dir.wal_path(3, "cpt");
    std::fs::create_dir(&blocker).unwrap();
    std::fs::write(blocker.join("x"), b"x").unwrap();
    let good = stream(&begin(3, 2), &[(ADDR, page_of(3))]);
    spool(&dir, 3, &good);
    let err = dir
        .persist_wal(3, dir.tip().as_ref(), LineagePolicy::RefuseNew, 0)
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Io { what: "rename", .. }),
        "{err}"
    );
    assert!(!dir.wal_path(3, "tmp").exists(), "spool left after {err}");
    let err = commit(&mut dir, 3, &good).unwrap_err();
    assert!(
        matches!(err, ImageError::Io { what: "rename", .. }),
        "{err}"
    );
    assert!(!dir.wal_path(3, "tmp").exists(), "spool left after {err}");
    assert_eq!(dir.seq(), 2);
    std::fs::remove_dir_all(&blocker).unwrap();
    // A driver drops the spool of a stream whose connection died.
    spool(&dir, 3, &good[..100]);
    dir.remove_spool(3).unwrap();
    assert!(!dir.wal_path(3, "tmp").exists());
    dir.remove_spool(3).unwrap();
    // Left by a crash: removed by the next open.
    spool(&dir, 4, &good[..100]);
    std::fs::write(t.path().join("manifest.tmp"), b"half a manifest").unwrap();
    drop(dir);
    let dir = ImageDir::open(t.path()).unwrap();
    assert!(dir.wal_files().unwrap().is_empty(), "{:?}", dir.wal_files());
    assert!(!t.path().join("manifest.tmp").exists());
    assert_eq!(dir.seq(), 2);
}

/// A tmpfs of `size` bytes mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    _parent: tempfile::TempDir,
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(size: u64) -> Tmpfs {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("fs");
        std::fs::create_dir(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}")])
            .arg("tmpfs")
            .arg(&dir)
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (as root) to fill a disk: mount failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            _parent: parent,
            dir,
        }
    }

    /// Fills the filesystem, then frees `free` bytes again.
    fn fill_leaving(&self, free: u64) -> PathBuf {
        use std::io::Write;
        let p = self.dir.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0xEEu8; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(k) if k > 0 => n += k as u64,
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        f.set_len(n.saturating_sub(free)).unwrap();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

fn is_enospc(e: &ImageError) -> bool {
    let mut s: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = s {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC)
                || io.kind() == std::io::ErrorKind::StorageFull
            {
                return true;
            }
        }
        s = err.source();
    }
    false
}

/// An image at 2 on the tmpfs, as `good_image` builds it.
fn image_on(root: &Path) -> ImageDir {
    let mut dir = ImageDir::open(root).unwrap();
    let full: Vec<u8> = (0..16).flat_map(|i| page_of(i as u8)).collect();
    commit(&mut dir, 1, &stream(&begin(1, 0), &[(ADDR, full)])).unwrap();
    let inc = stream(&begin(2, 1), &[(ADDR + 3 * PAGE as u64, page_of(0xAA))]);
    commit(&mut dir, 2, &inc).unwrap();
    dir
}

/// Checkpoint 3: page 0 rewritten, and a new range of 128 pages (512 KiB) carried whole.
fn big_third() -> Vec<u8> {
    let mut b = begin(3, 2);
    b.ranges.push(RangeEntry {
        addr: ADDR + (1 << 30),
        len: 128 * PAGE as u64,
        complete: true,
    });
    let new: Vec<u8> = (0..128).flat_map(|i| page_of(0x80 | i as u8)).collect();
    stream(&b, &[(ADDR, page_of(0x33)), (ADDR + (1 << 30), new)])
}

fn assert_good_at_2(root: &Path, before: &[u8]) {
    let dir = ImageDir::attach(root).unwrap();
    assert_eq!(dir.seq(), 2);
    assert_eq!(dir.verify_data().unwrap(), 16);
    let now = data(root);
    let first = now.iter().zip(before).position(|(a, b)| a != b);
    assert!(
        now.len() == before.len() && first.is_none(),
        "data file changed at byte {first:?}"
    );
}

#[test]
fn a_full_disk_fails_a_local_commit_before_the_image_changes() {
    let fs = Tmpfs::mount(4 << 20);
    let root = fs.dir.join("img");
    let mut dir = image_on(&root);
    let before = data(&root);
    let s3 = big_third();
    spool(&dir, 3, &s3);
    let filler = fs.fill_leaving(64 << 10);
    let err = dir.commit_wal(3, Some(&EXE)).unwrap_err();
    assert!(is_enospc(&err), "{err}");
    assert_eq!(dir.seq(), 2);
    assert_good_at_2(&root, &before);
    // Reported failed and dropped (the writer's next checkpoint is full).
    assert!(dir.wal_files().unwrap().is_empty(), "{:?}", dir.wal_files());
    drop(dir);
    let dir = ImageDir::open(&root).unwrap();
    assert_eq!((dir.seq(), dir.verify_data().unwrap()), (2, 16));
    // With room again the same checkpoint applies.
    std::fs::remove_file(filler).unwrap();
    let mut dir = dir;
    assert_eq!(commit(&mut dir, 3, &s3).unwrap(), 3);
    assert_eq!(dir.verify_data().unwrap(), 16 + 128);
}

#[test]
fn a_full_disk_leaves_a_spare_image_usable_and_the_stream_pending() {
    let fs = Tmpfs::mount(4 << 20);
    let root = fs.dir.join("img");
    let mut dir = image_on(&root);
    let before = data(&root);
    spool(&dir, 3, &big_third());
    dir.persist_wal(3, dir.tip().as_ref(), LineagePolicy::RefuseNew, 0)
        .unwrap();
    let filler = fs.fill_leaving(64 << 10);
    let err = dir.apply_pending().unwrap_err();
    assert!(is_enospc(&err), "{err}");
    assert!(!err.is_bad_stream());
    assert_eq!(dir.seq(), 2);
    assert_good_at_2(&root, &before);
    assert!(
        dir.wal_path(3, "cpt").exists(),
        "the durable stream is kept to be retried"
    );
    // The spare restarts, or the program resumes, on the still full disk: it opens at 2.
    drop(dir);
    let dir = ImageDir::open(&root).unwrap();
    assert_eq!((dir.seq(), dir.verify_data().unwrap()), (2, 16));
    assert_eq!(
        dir.tip().unwrap().seq,
        3,
        "the tip is the durable, unapplied stream"
    );
    drop(dir);
    // Once there is room, the stream is applied.
    std::fs::remove_file(filler).unwrap();
    let dir = ImageDir::open(&root).unwrap();
    assert_eq!(dir.seq(), 3);
    assert_eq!(dir.verify_data().unwrap(), 16 + 128);
    assert_eq!(data(&root)[0], 0x33);
}

/// The pages fit but the new manifest (large metadata) does not: that too is found before the
/// pages are written (the manifest's space is reserved with theirs).
#[test]
fn a_manifest_that_does_not_fit_fails_before_the_pages_are_written() {
    let fs = Tmpfs::mount(8 << 20);
    let root = fs.dir.join("img");
    let mut dir = image_on(&root);
    let before = data(&root);
    let mut b = begin(3, 2);
    b.meta = vec![0x5A; 2 << 20];
    spool(&dir, 3, &stream(&b, &[(ADDR, page_of(0x33))]));
    dir.persist_wal(3, dir.tip().as_ref(), LineagePolicy::RefuseNew, 0)
        .unwrap();
    let filler = fs.fill_leaving(1 << 20);
    let err = dir.apply_pending().unwrap_err();
    assert!(is_enospc(&err), "{err}");
    assert_good_at_2(&root, &before);
    assert!(!root.join("manifest.tmp").exists());
    drop(dir);
    let dir = ImageDir::open(&root).unwrap();
    assert_eq!((dir.seq(), dir.verify_data().unwrap()), (2, 16));
    drop(dir);
    std::fs::remove_file(filler).unwrap();
    let dir = ImageDir::open(&root).unwrap();
    assert_eq!(
        (dir.seq(), dir.manifest().unwrap().meta.len()),
        (3, 2 << 20)
    );
}

/// A crash while pages were being written (the mark `wal/applying` is there) followed by a
/// full disk: the image may hold part of the stream, so it is not offered as good.
#[test]
fn a_half_applied_stream_that_cannot_be_finished_is_reported() {
    let fs = Tmpfs::mount(4 << 20);
    let root = fs.dir.join("img");
    let dir = image_on(&root);
    spool(&dir, 3, &big_third());
    dir.persist_wal(3, dir.tip().as_ref(), LineagePolicy::RefuseNew, 0)
        .unwrap();
    drop(dir);
    std::fs::write(root.join("wal").join("applying"), b"").unwrap();
    let filler = fs.fill_leaving(64 << 10);
    let err = ImageDir::open(&root).unwrap_err();
    assert!(matches!(err, ImageError::Unfinished { .. }), "{err}");
    assert!(err.to_string().contains("partly written"), "{err}");
    std::fs::remove_file(filler).unwrap();
    let dir = ImageDir::open(&root).unwrap();
    assert_eq!((dir.seq(), dir.verify_data().unwrap()), (3, 16 + 128));
    assert!(!root.join("wal").join("applying").exists());
}
