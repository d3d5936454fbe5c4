//! Red-team checks of the glue between the spare's driver (`hotspare/src/replica/spare/`) and
//! the protocol core (`hotspare_proto::spare::Spare`): the core is driven by hand, answering
//! each disk operation *exactly as the driver's persister and applier threads do*
//! (`spare/disk.rs`), so that a mismatch between what the core counts and what the driver
//! answers shows up without timing luck.
//!
//! What `disk.rs` does with `DiskOp::Apply`: the persister forwards it to the applier and, like
//! every operation that "succeeds silently", answers it `DiskDone::Discarded`
//! (`answer.unwrap_or(DiskDone::Discarded)`); the applier later answers the same operation
//! `DiskDone::Applied(..)`. One operation, two answers — the simulator (`sim.rs`) and the core
//! tests answer it once.

use hotspare_proto::spare::{ConnId, DiskDone, DiskOp, Output, Recovered, Spare, SpareConfig, Tip};
use hotspare_proto::{Lineage, Msg, StreamHeader, Time};
use std::time::Duration;

const EXE: [u8; 32] = [7; 32];
const LIN: Lineage = [0xaa; 16];

fn at(ms: u64) -> Time {
    Time::from_nanos(ms * 1_000_000)
}

fn tip(seq: u64) -> Tip {
    Tip {
        lineage: LIN,
        seq,
        term: 1,
        exe_id: EXE,
    }
}

fn drain(s: &mut Spare) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn disk_ops(out: &[Output]) -> Vec<DiskOp> {
    out.iter()
        .filter_map(|o| match o {
            Output::Disk(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

/// How the driver's threads answer one operation (`disk.rs`, `Persister::run` and the applier
/// thread), `Apply` included; `apply_answered_twice: false` answers it once, as the simulator
/// does.
fn answers(op: &DiskOp, apply_answered_twice: bool) -> Vec<DiskDone> {
    match op {
        DiskOp::SaveTerm(t) => vec![DiskDone::TermSaved {
            term: *t,
            result: Ok(()),
        }],
        DiskOp::SpoolStart { .. } | DiskOp::Spool { .. } | DiskOp::Discard { .. } => {
            vec![DiskDone::Discarded]
        }
        DiskOp::Persist { seq, .. } => vec![DiskDone::Persisted {
            seq: *seq,
            result: Ok(tip(*seq)),
        }],
        DiskOp::Apply if apply_answered_twice => {
            // The persister's answer first (it forwards, then answers at once), then the
            // applier's when the data files are written.
            vec![DiskDone::Discarded, DiskDone::Applied(Ok(0))]
        }
        DiskOp::Apply => vec![DiskDone::Applied(Ok(0))],
    }
}

/// Checkpoint 2 is made durable and acknowledged; the primary at once sends checkpoint 3 (its
/// start, a chunk, its end), then dies. The persister has answered everything up to the
/// Persist of 3, which is still running (a slow `fsync`). Returns the spare and the disk
/// operations it still has outstanding in reality.
fn scenario(apply_answered_twice: bool) -> (Spare, Vec<DiskOp>) {
    let cfg = SpareConfig {
        detection: Duration::from_millis(50),
        startup_grace: Duration::from_millis(100),
        accept_new_lineage: false,
        apply_retry: Duration::from_millis(10),
        arbiter: None,
    };
    let mut s = Spare::new(
        cfg,
        Recovered {
            term: 1,
            tip: Some(tip(1)),
            applied: 1,
        },
        at(0),
    );
    let c = ConnId(7);
    s.handle_open(at(1), c);
    s.handle_msg(
        at(1),
        c,
        1,
        Msg::Hello {
            exe_id: EXE,
            pid: 1,
            lineage: LIN,
            ack: hotspare_proto::AckLevel::Fsynced,
        },
    );
    drain(&mut s);
    // Checkpoint 2, answered in full.
    for m in [
        Msg::StreamStart(StreamHeader {
            seq: 2,
            base_seq: 1,
        }),
        Msg::Chunk {
            seq: 2,
            bytes: vec![1; 16],
        },
        Msg::EndStream { seq: 2 },
    ] {
        s.handle_msg(at(2), c, 1, m);
    }
    for op in disk_ops(&drain(&mut s)) {
        for d in answers(&op, apply_answered_twice) {
            s.handle_disk(at(3), d);
        }
    }
    let out = drain(&mut s);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send(_, _, Msg::Ack { seq: 2 }))),
        "checkpoint 2 acknowledged: {out:?}"
    );
    let apply = disk_ops(&out);
    assert_eq!(
        apply,
        vec![DiskOp::Apply],
        "an Apply of checkpoint 2 is asked"
    );
    // The primary goes on with checkpoint 3 at once (and heartbeats), then dies.
    s.handle_msg(at(150), c, 1, Msg::Heartbeat { id: 1, seq: 3 });
    for m in [
        Msg::StreamStart(StreamHeader {
            seq: 3,
            base_seq: 2,
        }),
        Msg::Chunk {
            seq: 3,
            bytes: vec![2; 16],
        },
        Msg::EndStream { seq: 3 },
    ] {
        s.handle_msg(at(150), c, 1, m);
    }
    let ops3 = disk_ops(&drain(&mut s));
    assert_eq!(ops3.len(), 3, "spool start, spool, persist of 3: {ops3:?}");
    // The persister works in order: the Apply (answered at once), the spool start and the
    // chunk; the applier finishes checkpoint 2 meanwhile. The Persist of 3 is still running.
    for d in answers(&apply[0], apply_answered_twice) {
        s.handle_disk(at(151), d);
    }
    for op in &ops3[..2] {
        for d in answers(op, apply_answered_twice) {
            s.handle_disk(at(152), d);
        }
    }
    drain(&mut s);
    (s, vec![ops3[2].clone()])
}

/// Control: with `Apply` answered once (as the simulator answers it) the core counts the
/// Persist still running and does not decide a takeover until it is done.
#[test]
fn apply_answered_once_keeps_the_takeover_behind_the_running_persist() {
    let (mut s, outstanding) = scenario(false);
    assert_eq!(outstanding.len(), 1);
    assert_eq!(s.disk_outstanding(), 1, "the Persist of 3 is counted");
    s.handle_timeout(at(400));
    let out = drain(&mut s);
    assert!(
        !disk_ops(&out).contains(&DiskOp::SaveTerm(2)),
        "no takeover while the Persist runs: {out:?}"
    );
    // Once it is done (and applied), the silent primary is taken over.
    for d in answers(&outstanding[0], false) {
        s.handle_disk(at(401), d);
    }
    for op in disk_ops(&drain(&mut s)) {
        for d in answers(&op, false) {
            s.handle_disk(at(402), d);
        }
    }
    s.handle_timeout(at(403));
    assert!(disk_ops(&drain(&mut s)).contains(&DiskOp::SaveTerm(2)));
}
