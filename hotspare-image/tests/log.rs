//! The spare's log (`wal/<gen>.log`) under bad input: a torn or corrupt last record, a record
//! of another lineage, a new chain. Recovery must yield exactly the last complete checkpoint
//! and never harm the image.

use hotspare_image::format::{Begin, RangeEntry};
use hotspare_image::log::{self, REC_HEADER};
use hotspare_image::{write_stream, ImageDir, Run, FORMAT_VERSION};
use std::os::unix::fs::FileExt;
use std::path::Path;

const ADDR: u64 = 0x7000_0000_0000;
const PAGE: usize = 4096;
const PAGES: usize = 4;

fn begin(lineage: u8, seq: u64, base_seq: u64) -> Begin {
    Begin {
        format_version: FORMAT_VERSION,
        lineage: [lineage; 16],
        term: 1,
        seq,
        base_seq,
        exe_id: [7; 32],
        page_size: PAGE as u32,
        ranges: vec![RangeEntry {
            addr: ADDR,
            len: (PAGES * PAGE) as u64,
            complete: base_seq == 0,
        }],
        meta: Vec::new(),
    }
}

/// Checkpoint `seq` of the image: page `seq % PAGES` filled with `seq` (all pages when full).
fn stream(lineage: u8, seq: u64, base_seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if base_seq == 0 {
        let mem = vec![seq as u8; PAGES * PAGE];
        write_stream(&mut out, &begin(lineage, seq, 0), [Run::Data(ADDR, &mem)]).unwrap();
    } else {
        let pg = vec![seq as u8; PAGE];
        let at = ADDR + (seq as usize % PAGES * PAGE) as u64;
        write_stream(
            &mut out,
            &begin(lineage, seq, base_seq),
            [Run::Data(at, &pg)],
        )
        .unwrap();
    }
    out
}

/// The image's memory after checkpoints 1 (full) ..= n (deltas).
fn expected(n: u64) -> Vec<u8> {
    let mut mem = vec![1u8; PAGES * PAGE];
    for seq in 2..=n {
        let at = seq as usize % PAGES * PAGE;
        mem[at..at + PAGE].fill(seq as u8);
    }
    mem
}

/// A directory whose manifest is at checkpoint 1 and whose log holds 2..=n, not applied.
fn logged(t: &Path, n: u64) {
    let mut dir = ImageDir::open(t).unwrap();
    let (p, mut f) = dir.create_wal(1).unwrap();
    std::io::Write::write_all(&mut f, &stream(0x11, 1, 0)).unwrap();
    drop((p, f));
    dir.commit_wal(1, None).unwrap();
    let mut w = dir.log_writer().unwrap();
    for seq in 2..=n {
        w.append(seq, [0x11; 16], &stream(0x11, seq, seq - 1))
            .unwrap();
    }
    w.flush().unwrap();
}

fn data(t: &Path) -> Vec<u8> {
    std::fs::read(
        t.join("data")
            .join(format!("{ADDR:016x}-{:x}.pages", PAGES * PAGE)),
    )
    .unwrap()
}

/// The newest live segment and its last record.
fn last_record(t: &Path) -> log::Record {
    let segs = log::scan(&t.join("wal"), None).unwrap();
    let seg = segs.iter().rev().find(|s| s.live).unwrap();
    seg.records.last().unwrap().clone()
}

/// Opens the directory and checks it is at exactly checkpoint `n`, page for page.
fn assert_at(t: &Path, n: u64, what: &str) {
    let dir = ImageDir::open(t).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    assert_eq!(dir.seq(), n, "{what}");
    dir.verify_data().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(data(t), expected(n), "{what}: the pages of checkpoint {n}");
}

/// Guards against recovery that applies a torn record, or loses the complete ones before it:
/// the last record is cut at every byte (a write that stopped there, the rest still zeros),
/// and recovery must yield exactly the checkpoint before it.
#[test]
fn a_record_torn_at_any_byte_leaves_exactly_the_last_complete_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    logged(t.path(), 4);
    let rec = last_record(t.path());
    assert_eq!(rec.seq, 4);
    let total = REC_HEADER + u64::from(rec.len);
    let whole = std::fs::read(&rec.segment).unwrap();
    // Every byte of the header and of both ends of the payload, and a sample in between.
    let cuts: Vec<u64> = (0..total)
        .filter(|&c| c < REC_HEADER + 64 || c + 64 >= total || c % 13 == 0)
        .collect();
    for cut in cuts {
        // A tear leaves what was there before (zeros): a cut whose rest already reads as
        // zeros is no tear, and the record is complete.
        let from = (rec.offset + cut) as usize;
        let end = (rec.offset + total) as usize;
        if whole[from..end].iter().all(|&b| b == 0) {
            continue;
        }
        let c = tempfile::tempdir().unwrap();
        copy_dir(t.path(), c.path());
        let seg = c.path().join("wal").join(rec.segment.file_name().unwrap());
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        let zeros = vec![0u8; (total - cut) as usize];
        f.write_all_at(&zeros, rec.offset + cut).unwrap();
        drop(f);
        assert_at(c.path(), 3, &format!("torn at byte {cut} of {total}"));
        // The rest was recovered and trimmed only as far as applied: nothing re-applies.
        assert_at(c.path(), 3, &format!("reopened after a tear at byte {cut}"));
    }
    // The untouched log gives checkpoint 4.
    assert_eq!(std::fs::read(&rec.segment).unwrap(), whole);
    assert_at(t.path(), 4, "untouched");
}

/// Guards against a record accepted despite a damaged byte: one byte of the last record is
/// flipped, at every position (sampled through the payload), and recovery stops before it.
#[test]
fn a_record_with_any_damaged_byte_is_not_applied() {
    let t = tempfile::tempdir().unwrap();
    logged(t.path(), 3);
    let rec = last_record(t.path());
    let total = REC_HEADER + u64::from(rec.len);
    let at: Vec<u64> = (0..REC_HEADER)
        .chain((REC_HEADER..total).step_by(97))
        .chain([total - 1])
        .collect();
    for pos in at {
        let c = tempfile::tempdir().unwrap();
        copy_dir(t.path(), c.path());
        let seg = c.path().join("wal").join(rec.segment.file_name().unwrap());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, rec.offset + pos).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], rec.offset + pos).unwrap();
        drop(f);
        assert_at(c.path(), 2, &format!("byte {pos} of {total} flipped"));
    }
}

/// Guards against a record of another lineage being applied on the image: a delta of
/// lineage 0x22 appended after the good records is refused at recovery (the image stays at
/// its last good checkpoint, reported, and not retried forever), while a full stream of a new
/// lineage after `start_new_chain` replaces the image and the old lineage's records stop
/// counting.
#[test]
fn a_record_of_another_lineage_is_refused_and_a_new_chain_replaces_the_old() {
    let t = tempfile::tempdir().unwrap();
    logged(t.path(), 3);
    {
        let dir = ImageDir::open(t.path()).unwrap();
        let mut w = dir.log_writer().unwrap();
        w.append(4, [0x22; 16], &stream(0x22, 4, 3)).unwrap();
        w.flush().unwrap();
    }
    assert_at(t.path(), 3, "a delta of another lineage");
    {
        let dir = ImageDir::open(t.path()).unwrap();
        let mut w = dir.log_writer().unwrap();
        w.append(4, [0x11; 16], &stream(0x11, 4, 3)).unwrap();
        w.flush().unwrap();
        // Not applied yet: a new chain starts, with a full stream of lineage 0x33.
        w.start_new_chain().unwrap();
        w.append(9, [0x33; 16], &stream(0x33, 9, 0)).unwrap();
        w.flush().unwrap();
    }
    let dir = ImageDir::open(t.path()).unwrap();
    assert_eq!(dir.lineage(), Some([0x33; 16]));
    assert_eq!(dir.seq(), 9);
    assert_eq!(data(t.path()), vec![9u8; PAGES * PAGE]);
    dir.verify_data().unwrap();
    drop(dir);
    // The old chain's segments, and the applied new one, were trimmed at recovery.
    let left = log::scan(&t.path().join("wal"), None).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// Guards against segments piling up: once every record of the log is applied, recovery
/// deletes its segments; the directory reopens to the same image.
#[test]
fn applied_segments_before_the_newest_are_trimmed() {
    let t = tempfile::tempdir().unwrap();
    logged(t.path(), 2);
    for seq in 3..=5u64 {
        let dir = ImageDir::open(t.path()).unwrap();
        // Each writer starts a segment of its own.
        let mut w = dir.log_writer().unwrap();
        w.append(seq, [0x11; 16], &stream(0x11, seq, seq - 1))
            .unwrap();
        w.flush().unwrap();
    }
    assert_at(t.path(), 5, "five checkpoints");
    let segs = log::scan(&t.path().join("wal"), None).unwrap();
    assert!(segs.is_empty(), "{segs:?}");
    assert_at(t.path(), 5, "reopened");
}

/// Guards against a retired image coming back from the log (found by the fault suite's s13r:
/// a program resumed from a spare's directory retires its manifest once another spare holds
/// more, and the directory must then hold no image; the log's applied records, replayed on an
/// empty directory, gave back the old checkpoint and lost every write acknowledged since).
#[test]
fn a_retired_manifest_leaves_no_image_behind_in_the_log() {
    let t = tempfile::tempdir().unwrap();
    // A spare's directory: every checkpoint, the first full one too, in the log.
    {
        let dir = ImageDir::open(t.path()).unwrap();
        let mut w = dir.log_writer().unwrap();
        w.append(1, [0x11; 16], &stream(0x11, 1, 0)).unwrap();
        for seq in 2..=4 {
            w.append(seq, [0x11; 16], &stream(0x11, seq, seq - 1))
                .unwrap();
        }
        w.flush().unwrap();
    }
    assert_at(t.path(), 4, "resumed from");
    std::fs::rename(
        t.path().join("manifest"),
        t.path().join("manifest.superseded"),
    )
    .unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    assert!(
        dir.manifest().is_none(),
        "an image came back: {}",
        dir.seq()
    );
    assert!(dir.tip().is_none());
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&p).unwrap();
            copy_dir(&e.path(), &p);
        } else if e.file_name() != "lock" {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}

/// A primary without a spare keeps its own log (`start_own_log`, `OwnLog::commit`): guards
/// against acknowledged records that are not recovered after a crash before any apply, and
/// against a stream that does not apply being appended. Every stream committed is there at the
/// next open, applied or not, also when a second handle (the applier's) applied some meanwhile;
/// one that does not apply on the newest is refused and the log goes on as it was.
#[test]
fn a_primarys_own_log_recovers_every_committed_stream_and_refuses_one_that_does_not_apply() {
    let t = tempfile::tempdir().unwrap();
    // Checkpoint 1 applied; an earlier incarnation's records 2..=3 left in the log.
    logged(t.path(), 3);
    {
        let mut dir = ImageDir::open(t.path()).unwrap();
        // Recovery applied them: this incarnation goes on from 3.
        assert_eq!(dir.seq(), 3);
        let mut applier = dir.attach_shared().unwrap();
        let mut log = dir.start_own_log().unwrap().expect("not ahead");
        for seq in 4..=9 {
            log.commit(&dir, seq, &stream(0x11, seq, seq - 1)).unwrap();
            if seq == 6 {
                assert_eq!(applier.apply_pending().unwrap(), 6, "applied meanwhile");
            }
        }
        assert_eq!(log.tip().unwrap().seq, 9, "the newest durable");
        // Not on top of 9, or of another lineage: refused, nothing appended.
        let e = log.commit(&dir, 11, &stream(0x11, 11, 10)).unwrap_err();
        assert!(e.to_string().contains("11"), "{e}");
        log.commit(&dir, 10, &stream(0x22, 10, 9)).unwrap_err();
        assert_eq!(log.tip().unwrap().seq, 9);
        // The process dies here: 7..=9 not applied.
    }
    assert_at(t.path(), 9, "after a crash with records not applied");
    let mut dir = ImageDir::open(t.path()).unwrap();
    let mut log = dir.start_own_log().unwrap().expect("not ahead");
    log.commit(&dir, 10, &stream(0x11, 10, 9)).unwrap();
    assert_eq!(dir.apply_pending().unwrap(), 10);
    drop((log, dir));
    assert_at(t.path(), 10, "applied");
}

/// Writes `bytes` as the spool `wal/<seq>.tmp` of `dir`.
fn spool(dir: &ImageDir, seq: u64, bytes: &[u8]) {
    let (p, mut f) = dir.create_wal(seq).unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    drop((p, f));
}

/// Guards against an acknowledged record that the applier never sees, and that the next
/// `commit_wal` then deletes with the log: the primary's path (checkpoint/local.rs) applies the
/// log, lets its writer go and commits a stream as a file; when that `commit_wal` fails before
/// the stream is durable (an `fsync` or `rename` that fails; here its spool is missing) the log
/// it deleted is started again. Its first segment must not be taken, by the applier's scans,
/// for the one of the same generation and header it read before the delete.
#[test]
fn a_log_started_again_after_a_failed_commit_is_applied_and_never_lost() {
    let t = tempfile::tempdir().unwrap();
    let dir = ImageDir::open(t.path()).unwrap();
    // As LocalImage: `dir` validates and holds the lock, `image` applies and commits.
    let mut image = dir.attach_shared().unwrap();
    spool(&dir, 1, &stream(0x11, 1, 0));
    image.commit_wal(1, None).unwrap();
    let mut log = image.start_own_log().unwrap().expect("not ahead");
    for seq in 2..=3 {
        log.commit(&dir, seq, &stream(0x11, seq, seq - 1)).unwrap();
    }
    assert_eq!(image.apply_pending().unwrap(), 3);
    // A stream that goes as a file: the log applied, its writer let go; the commit fails.
    assert_eq!(image.apply_pending().unwrap(), 3);
    drop(log);
    image.commit_wal(4, None).unwrap_err();
    let mut log = image.start_own_log().unwrap().expect("not ahead");
    // Checkpoint 4 made durable in the log (acknowledged to the program's clients).
    log.commit(&dir, 4, &stream(0x11, 4, 3)).unwrap();
    assert_eq!(
        image.apply_pending().unwrap(),
        4,
        "the applier applies the record of the log started again"
    );
    // The next stream that goes as a file: what the log holds is applied first.
    assert_eq!(image.apply_pending().unwrap(), 4);
    drop(log);
    spool(&dir, 5, &stream(0x11, 5, 4));
    image.commit_wal(5, None).unwrap();
    drop((image, dir));
    assert_at(t.path(), 5, "checkpoints 4 (logged) and 5 (a file)");
}
