//! Lineages, and one rule for "does this stream apply here" shared by the spare's persister
//! (before it acknowledges), its applier and the primary's local commit: a stream that one of
//! them accepts is never refused by another, and checkpoints of two runs are never chained.

mod util;

use hotspare::{Builder, Config};
use hotspare_image::format::RangeEntry;
use hotspare_image::{check_applies, lineage_hex, ImageDir, ImageError, LineagePolicy, Tip};
use std::path::Path;
use std::process::Command;
use util::*;

const OTHER: [u8; 16] = [0x22; 16];

/// Role of this test binary when it is re-run as a child by
/// `fresh_start_chooses_a_lineage_and_resume_keeps_it`.
#[test]
fn child_program() {
    let Some(role) = std::env::var_os("HS_TEST_ROLE") else {
        return;
    };
    let config = Config {
        image_dir: std::env::var_os("HS_TEST_DIR").unwrap().into(),
        heap_base: 0x5a00_0000_0000,
        heap_size: 16 << 20,
        ..Config::default()
    };
    let hs = Builder::new(config).worker("main", |_| {}).open().unwrap();
    assert_eq!(hs.resumed().is_some(), role == "resume");
    if role == "fresh" {
        hs.heap().set_root(hotspare::Mutex::new(1u64)).unwrap();
    }
    let st = hs.cpt().unwrap();
    hs.wait_durable(st.seq).unwrap();
    std::process::exit(0);
}

fn run_child(role: &str, dir: &Path, resume: bool) {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "child_program",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("HS_TEST_ROLE", role)
    .env("HS_TEST_DIR", dir)
    .env_remove("HOTSPARE_RESUME");
    if resume {
        c.env("HOTSPARE_RESUME", dir);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{role}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image_lineage(dir: &Path) -> ([u8; 16], u64) {
    let i = ImageDir::open_read_only(dir).unwrap();
    (i.lineage().unwrap(), i.seq())
}

#[test]
fn fresh_start_chooses_a_lineage_and_resume_keeps_it() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run_child("fresh", a.path(), false);
    run_child("fresh", b.path(), false);
    let (la, sa) = image_lineage(a.path());
    let (lb, _) = image_lineage(b.path());
    assert_ne!(la, [0; 16]);
    assert_ne!(la, lb, "two fresh starts must not share a lineage");
    run_child("resume", a.path(), true);
    let (la2, sa2) = image_lineage(a.path());
    assert_eq!(la2, la, "a resumed program keeps its image's lineage");
    assert!(sa2 > sa, "{sa2} > {sa}");
}

#[test]
fn the_directory_reports_its_lineage_and_tip() {
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    assert_eq!((dir.lineage(), dir.tip()), (None, None));
    drop(dir);
    let (_t, dir) = good_image();
    assert_eq!(dir.lineage(), Some(LINEAGE));
    let tip = dir.tip().unwrap();
    assert_eq!(
        (tip.lineage, tip.seq, tip.exe_id, tip.term),
        (LINEAGE, 2, EXE.0, 1)
    );
    assert_eq!(tip.ranges.len(), 1);
    assert_eq!(lineage_hex(&LINEAGE), "11".repeat(16));
}

/// A stream persisted on a fresh directory, then a second one from another executable: the
/// persister used to compare executables with the manifest as it was at start-up (none), so it
/// acknowledged a stream that the applier then refused.
#[test]
fn the_persister_checks_the_executable_against_the_durable_tip() {
    let t = tempfile::tempdir().unwrap();
    let mut dir = ImageDir::open(t.path()).unwrap();
    spool(&dir, 1, &full_stream(&begin(1, 0), 0));
    let s1 = dir
        .persist_wal(1, dir.tip().as_ref(), LineagePolicy::RefuseNew, 0)
        .unwrap();
    let tip = Tip::from(&s1.begin);
    let mut other = begin(2, 1);
    other.exe_id = [9; 32];
    spool(&dir, 2, &stream(&other, &[(ADDR, page_of(5))]));
    let err = dir
        .persist_wal(2, Some(&tip), LineagePolicy::RefuseNew, 0)
        .unwrap_err();
    assert!(matches!(err, ImageError::OtherExecutable { .. }), "{err}");
    assert!(!dir.wal_path(2, "tmp").exists(), "refused spool removed");
    assert!(!dir.wal_path(2, "cpt").exists());
    assert_eq!(dir.apply_pending().unwrap(), 1);
}

/// An incremental stream that names a range the tip does not have, without carrying it whole:
/// the persister had no range checks.
#[test]
fn the_persister_checks_ranges_against_the_durable_tip() {
    let (_t, dir) = good_image();
    let mut b = begin(3, 2);
    b.ranges.push(RangeEntry {
        addr: ADDR + (1 << 30),
        len: LEN,
        complete: false,
    });
    spool(&dir, 3, &stream(&b, &[]));
    let err = dir
        .persist_wal(3, dir.tip().as_ref(), LineagePolicy::ReplaceOld, 0)
        .unwrap_err();
    assert!(matches!(err, ImageError::IncompleteRange { .. }), "{err}");
}

#[test]
fn another_lineage_is_refused_unless_replacing_is_asked_for() {
    let (t, mut dir) = good_image();
    let mut b = begin(1, 0);
    b.lineage = OTHER;
    b.ranges[0].addr = ADDR + (1 << 30);
    let bytes = full_stream(&b, 0x40);
    spool(&dir, 1, &bytes);
    let err = dir
        .persist_wal(1, dir.tip().as_ref(), LineagePolicy::RefuseNew, 0)
        .unwrap_err();
    let line = err.to_string();
    assert!(matches!(err, ImageError::OtherLineage { .. }), "{line}");
    assert!(
        line.contains(&lineage_hex(&LINEAGE))
            && line.contains(&lineage_hex(&OTHER))
            && line.contains("start hotspare-resume with --accept-new-lineage")
            && line.contains("or resume the primary from this image")
            && !line.contains('\n'),
        "{line}"
    );
    assert!(err.is_bad_stream());
    // The primary's local commit refuses it too.
    let err = commit(&mut dir, 1, &bytes).unwrap_err();
    assert!(matches!(err, ImageError::OtherLineage { .. }), "{err}");
    assert_eq!((dir.seq(), dir.lineage()), (2, Some(LINEAGE)));
    // An incremental stream of another lineage never applies, even when replacing is allowed.
    let mut inc = begin(5, 4);
    inc.lineage = OTHER;
    spool(&dir, 5, &stream(&inc, &[(ADDR, page_of(1))]));
    let err = dir
        .persist_wal(5, dir.tip().as_ref(), LineagePolicy::ReplaceOld, 0)
        .unwrap_err();
    assert!(matches!(err, ImageError::Chain { .. }), "{err}");
    // Allowed: its full stream replaces the image, though its sequence is lower.
    spool(&dir, 1, &bytes);
    dir.persist_wal(1, dir.tip().as_ref(), LineagePolicy::ReplaceOld, 0)
        .unwrap();
    assert_eq!(dir.apply_pending().unwrap(), 1);
    assert_eq!(dir.lineage(), Some(OTHER));
    assert_eq!(dir.verify_data().unwrap(), 16);
    let old = t
        .path()
        .join("data")
        .join(format!("{ADDR:016x}-{LEN:x}.pages"));
    assert!(!old.exists(), "the old image's range files are removed");
    drop(dir);
    let reopened = ImageDir::open(t.path()).unwrap();
    assert_eq!((reopened.seq(), reopened.lineage()), (1, Some(OTHER)));
}

/// The applier skipped every stream whose sequence was not above the image's as "already
/// applied", whatever its lineage: a new lineage's first checkpoints were silently dropped.
#[test]
fn the_applier_does_not_take_another_lineage_for_already_applied() {
    let (t, dir) = good_image();
    drop(dir);
    let mut b = begin(1, 0);
    b.lineage = OTHER;
    std::fs::write(
        t.path().join("wal").join(format!("{:020}.cpt", 1)),
        full_stream(&b, 0x60),
    )
    .unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    assert_eq!((dir.seq(), dir.lineage()), (1, Some(OTHER)));
    assert_eq!(data(t.path())[5 * PAGE], 0x65);
    assert_eq!(dir.verify_data().unwrap(), 16);
}

/// Once a new lineage is accepted, the old lineage's durable streams that were not applied yet
/// are superseded: applied after it (they sort by sequence) they would bring the old image back.
#[test]
fn replacing_a_lineage_drops_its_pending_streams() {
    let (t, dir) = good_image();
    drop(dir);
    // Checkpoint 3 of the old lineage is durable but not applied.
    let wal = t.path().join("wal");
    let s3 = stream(&begin(3, 2), &[(ADDR, page_of(3))]);
    let dir = ImageDir::attach(t.path()).unwrap();
    std::fs::write(wal.join(format!("{:020}.cpt", 3)), &s3).unwrap();
    let tip = Tip::from(
        &hotspare_image::format::scan_stream(&s3[..], |_| Ok(()))
            .unwrap()
            .begin,
    );
    let mut b = begin(1, 0);
    b.lineage = OTHER;
    spool(&dir, 1, &full_stream(&b, 0x70));
    dir.persist_wal(1, Some(&tip), LineagePolicy::ReplaceOld, 0)
        .unwrap();
    assert!(!wal.join(format!("{:020}.cpt", 3)).exists());
    drop(dir);
    let dir = ImageDir::open(t.path()).unwrap();
    assert_eq!((dir.seq(), dir.lineage()), (1, Some(OTHER)));
    assert_eq!(data(t.path())[0], 0x70);
}

#[test]
fn a_stream_not_newer_than_the_tip_or_of_an_older_term_is_refused() {
    let (_t, dir) = good_image();
    let tip = dir.tip().unwrap();
    for (seq, what) in [(2, "same"), (1, "older")] {
        let err = check_applies(&begin(seq, 0), Some(&tip), LineagePolicy::RefuseNew).unwrap_err();
        assert!(
            matches!(err, ImageError::NotNewer { have: 2, .. }),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("is not newer than checkpoint 2"));
    }
    let mut old_term = begin(3, 2);
    old_term.term = 0;
    let err = check_applies(&old_term, Some(&tip), LineagePolicy::ReplaceOld).unwrap_err();
    assert!(matches!(err, ImageError::StaleTerm { .. }), "{err}");
    // The persister's own floor (the spare's current term) applies on top.
    spool(&dir, 3, &stream(&begin(3, 2), &[]));
    let err = dir
        .persist_wal(3, Some(&tip), LineagePolicy::RefuseNew, 5)
        .unwrap_err();
    assert!(
        matches!(err, ImageError::StaleTerm { current: 5, .. }),
        "{err}"
    );
    // A stream spooled under another number than its own.
    spool(&dir, 4, &stream(&begin(3, 2), &[]));
    let err = dir
        .persist_wal(4, Some(&tip), LineagePolicy::RefuseNew, 0)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("stream is checkpoint 3 but was received as 4"),
        "{err}"
    );
    assert!(dir.wal_files().unwrap().is_empty());
}

/// Property: for random headers against a random image, the persister accepts exactly the
/// streams that the applier then applies.
#[test]
fn the_persister_accepts_exactly_what_the_applier_applies() {
    let mut rng = fastrand::Rng::with_seed(42);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..150 {
        let (t, mut dir) = good_image();
        let tip = dir.tip().unwrap();
        let seq = rng.u64(1..5);
        let base = if rng.bool() { 0 } else { rng.u64(0..seq) };
        let mut b = begin(seq, base);
        if rng.u8(..4) == 0 {
            b.lineage = OTHER;
        }
        if rng.u8(..5) == 0 {
            b.exe_id = [9; 32];
        }
        b.term = rng.u64(0..3);
        if rng.u8(..3) == 0 {
            b.ranges.push(RangeEntry {
                addr: ADDR + (1 << 30),
                len: LEN,
                complete: rng.bool(),
            });
        }
        if rng.u8(..4) == 0 {
            b.ranges[0].complete = !b.ranges[0].complete;
        }
        let bytes = full_stream(&b, 0x30);
        spool(&dir, seq, &bytes);
        let persisted = dir.persist_wal(seq, Some(&tip), LineagePolicy::ReplaceOld, 0);
        let applied = dir.apply_pending();
        match &persisted {
            Ok(_) => {
                assert_eq!(applied.unwrap(), seq, "{b:?}");
                assert_eq!(dir.lineage(), Some(b.lineage));
                let bad = dir
                    .wal_files()
                    .unwrap()
                    .into_iter()
                    .filter(|p| p.extension().unwrap() == "bad")
                    .count();
                assert_eq!(bad, 0, "persisted but refused by the applier: {b:?}");
                accepted += 1;
            }
            Err(e) => {
                assert!(e.is_bad_stream(), "{e}");
                // The same stream put in the WAL directly is refused by the applier too.
                std::fs::write(dir.wal_path(seq, "cpt"), &bytes).unwrap();
                dir.apply_pending().unwrap();
                assert_eq!(
                    (dir.seq(), dir.lineage()),
                    (2, Some(LINEAGE)),
                    "applier took what the persister refused ({e}): {b:?}"
                );
                // Set aside, or (same lineage, not newer) recognised as already applied.
                assert!(!dir.wal_path(seq, "cpt").exists(), "{e}: {b:?}");
                refused += 1;
            }
        }
        drop(t);
    }
    assert!(
        accepted > 10 && refused > 10,
        "{accepted} accepted, {refused} refused"
    );
}

/// Guards against an acknowledgement on receipt of a stream that will not be applied, or one
/// that only comes once the stream is durable: `persist_wal_notify` calls back after the whole
/// stream is validated and before anything is made durable (the spool is still `.tmp`), and
/// never for a stream it refuses.
#[test]
fn persist_wal_notify_reports_between_validation_and_durability() {
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    spool(&dir, 1, &full_stream(&begin(1, 0), 0));
    let mut seen = None;
    let s1 = dir
        .persist_wal_notify(1, None, LineagePolicy::RefuseNew, 0, |s| {
            seen = Some((
                s.begin.seq,
                dir.wal_path(1, "tmp").exists(),
                dir.wal_path(1, "cpt").exists(),
            ))
        })
        .unwrap();
    assert_eq!(seen, Some((1, true, false)), "called before durability");
    assert!(dir.wal_path(1, "cpt").exists(), "durable after it");
    let tip = Tip::from(&s1.begin);
    // Refused by validation (does not chain on 1): no call, spool deleted.
    spool(&dir, 3, &stream(&begin(3, 2), &[(ADDR, page_of(3))]));
    let mut called = false;
    let r = dir.persist_wal_notify(3, Some(&tip), LineagePolicy::RefuseNew, 0, |_| {
        called = true
    });
    assert!(r.is_err());
    assert!(!called, "a refused stream was reported verified");
    assert!(!dir.wal_path(3, "tmp").exists());
    // A damaged stream (one byte of its pages flipped): no call either.
    let mut bytes = stream(&begin(2, 1), &[(ADDR, page_of(2))]);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    spool(&dir, 2, &bytes);
    let r = dir.persist_wal_notify(2, Some(&tip), LineagePolicy::RefuseNew, 0, |_| {
        called = true
    });
    assert!(r.is_err() && !called);
    // Positive control: the same stream undamaged is reported and made durable.
    spool(&dir, 2, &stream(&begin(2, 1), &[(ADDR, page_of(2))]));
    dir.persist_wal_notify(2, Some(&tip), LineagePolicy::RefuseNew, 0, |_| {
        called = true
    })
    .unwrap();
    assert!(called);
}
