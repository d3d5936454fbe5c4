//! The two protocol cores driven directly, one test per defect the protocol was written to fix.
//! No simulator: every message, disk completion and clock reading is given by hand, so each
//! test states exactly the sequence of events it is about. Every test also checks the "good"
//! side of its rule (the thing that *should* happen does), so that it cannot pass vacuously.

use hotspare_proto::codec::{
    ClientHandshake, Key, ServerHandshake, ServerStep, Session, WireError, HELLO_LEN, MAC_LEN,
    MAX_MESSAGE, MIN_BODY, VERSION, VERSION_NOTICE,
};
use hotspare_proto::primary::{Event, Link, LinkConfig};
use hotspare_proto::spare::{ConnId, DiskDone, DiskOp, Output, Recovered, Spare, SpareConfig, Tip};
use hotspare_proto::{AckLevel, Lineage, Msg, StreamHeader, Time};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const EXE: [u8; 32] = [7; 32];
const OLD: Lineage = [0xaa; 16];
const NEW: Lineage = [0xbb; 16];
const DETECTION_MS: u64 = 50;
const GRACE_MS: u64 = 200;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(n_ms: u64) -> Time {
    Time::from_nanos(n_ms * 1_000_000)
}

fn at_us(n_us: u64) -> Time {
    Time::from_nanos(n_us * 1_000)
}

fn link_cfg(term: u64, lineage: Lineage) -> LinkConfig {
    LinkConfig {
        heartbeat: ms(10),
        lease: ms(40),
        ack_timeout: ms(100),
        reconnect: ms(100),
        drift_ppm: hotspare_proto::lease::DEFAULT_DRIFT_PPM,
        serve_margin: ms(1),
        term,
        lineage,
        exe_id: EXE,
        pid: 4242,
        ack: AckLevel::Fsynced,
        arbiter: None,
    }
}

fn spare_cfg(accept_new_lineage: bool) -> SpareConfig {
    SpareConfig {
        detection: ms(DETECTION_MS),
        startup_grace: ms(GRACE_MS),
        accept_new_lineage,
        apply_retry: ms(10),
        arbiter: None,
    }
}

fn tip(lineage: Lineage, seq: u64, term: u64) -> Tip {
    Tip {
        lineage,
        seq,
        term,
        exe_id: EXE,
    }
}

/// A spare restarted on an image of `lineage` at `seq` (applied), term `term`.
fn spare_with_image(cfg: SpareConfig, lineage: Lineage, seq: u64, term: u64, now: Time) -> Spare {
    let rec = Recovered {
        term,
        tip: Some(tip(lineage, seq, term)),
        applied: seq,
    };
    Spare::new(cfg, rec, now)
}

fn drain(s: &mut Spare) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn events(l: &mut Link) -> Vec<Event> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

fn transmit(l: &mut Link) -> Vec<Msg> {
    std::iter::from_fn(|| l.poll_transmit()).collect()
}

/// The messages the spare sent on `c`, with their term stamps.
fn sent(out: &[Output], c: ConnId) -> Vec<(u64, Msg)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(to, term, m) if *to == c => Some((*term, m.clone())),
            _ => None,
        })
        .collect()
}

fn disk_ops(out: &[Output]) -> Vec<DiskOp> {
    out.iter()
        .filter_map(|o| match o {
            Output::Disk(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn closed(out: &[Output], c: ConnId) -> bool {
    out.iter()
        .any(|o| matches!(o, Output::Close(to, _) if *to == c))
}

fn takeover(out: &[Output]) -> Option<(u64, u64)> {
    out.iter().find_map(|o| match o {
        Output::TakeOver { term, seq, .. } => Some((*term, *seq)),
        _ => None,
    })
}

fn hello(lineage: Lineage) -> Msg {
    hello_at(lineage, AckLevel::Fsynced)
}

fn hello_at(lineage: Lineage, ack: AckLevel) -> Msg {
    Msg::Hello {
        exe_id: EXE,
        pid: 4242,
        lineage,
        ack,
    }
}

fn header(seq: u64, base_seq: u64) -> StreamHeader {
    StreamHeader { seq, base_seq }
}

/// Opens connection `c` on the spare and sends the hello of a primary of `term` and `lineage`.
fn connect(s: &mut Spare, now: Time, c: ConnId, term: u64, lineage: Lineage) -> Vec<Output> {
    s.handle_open(now, c);
    s.handle_msg(now, c, term, hello(lineage));
    drain(s)
}

/// Brings a link up against a spare that answers with `detection`: Connect → Hello → Status.
fn link_up(cfg: LinkConfig, now: Time, spare_term: u64, detection: Duration) -> Link {
    let mut l = Link::new(cfg, now);
    l.handle_timeout(now);
    assert_eq!(events(&mut l), vec![Event::Connect]);
    l.handle_connected(now);
    assert!(matches!(transmit(&mut l)[..], [Msg::Hello { .. }]));
    l.handle_msg(
        now,
        spare_term,
        Msg::Status {
            term: spare_term,
            seq: 0,
            applied: 0,
            since_grant_ms: u64::MAX,
            detection_us: detection.as_micros() as u64,
        },
    );
    assert_eq!(events(&mut l), vec![Event::Ready { spare_seq: 0 }]);
    assert!(l.is_up());
    l
}

/// Sends one heartbeat from the link at `now` and returns its id.
fn heartbeat(l: &mut Link, now: Time) -> u64 {
    l.handle_timeout(now);
    let ids: Vec<u64> = transmit(l)
        .into_iter()
        .filter_map(|m| match m {
            Msg::Heartbeat { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "one heartbeat due at {now:?}");
    ids[0]
}

/// Feeds everything the spare sent on `c` to the link.
fn deliver(l: &mut Link, now: Time, out: &[Output], c: ConnId) {
    for (term, m) in sent(out, c) {
        l.handle_msg(now, term, m);
    }
}

/// Streams checkpoint `h` (one chunk) from the admitted primary on `c` and returns the outputs.
fn stream(s: &mut Spare, now: Time, c: ConnId, term: u64, h: StreamHeader) -> Vec<Output> {
    s.handle_msg(now, c, term, Msg::StreamStart(h));
    s.handle_msg(
        now,
        c,
        term,
        Msg::Chunk {
            seq: h.seq,
            bytes: vec![1, 2, 3],
        },
    );
    s.handle_msg(now, c, term, Msg::EndStream { seq: h.seq });
    drain(s)
}

/// Completes every disk operation in `ops` successfully (as a driver would), the Persists with
/// tips of `lineage`/`term`; returns everything the spare did in answer (and completes the
/// operations it asks for in turn, up to a bound).
fn complete_all(
    s: &mut Spare,
    now: Time,
    mut ops: Vec<DiskOp>,
    lineage: Lineage,
    term: u64,
) -> Vec<Output> {
    let mut all = Vec::new();
    let mut applied = s.applied();
    let mut rounds = 0;
    while !ops.is_empty() {
        rounds += 1;
        assert!(rounds < 100, "disk operations keep coming");
        for op in std::mem::take(&mut ops) {
            let done = match op {
                DiskOp::SaveTerm(t) => DiskDone::TermSaved {
                    term: t,
                    result: Ok(()),
                },
                DiskOp::SpoolStart { .. } | DiskOp::Spool { .. } | DiskOp::Discard { .. } => {
                    DiskDone::Discarded
                }
                DiskOp::Persist { seq, .. } => {
                    applied = applied.max(seq);
                    // As a driver does: validated first, then durable.
                    s.handle_disk(now, DiskDone::Verified { seq });
                    let out = drain(s);
                    ops.extend(disk_ops(&out));
                    all.extend(out);
                    DiskDone::Persisted {
                        seq,
                        result: Ok(tip(lineage, seq, term)),
                    }
                }
                DiskOp::Apply => DiskDone::Applied(Ok(s.tip().map_or(applied, |t| t.seq))),
            };
            s.handle_disk(now, done);
            let out = drain(s);
            ops.extend(disk_ops(&out));
            all.extend(out);
        }
    }
    all
}

// ---------------------------------------------------------------------------------------------
// a. Lineage
// ---------------------------------------------------------------------------------------------

/// Guards against a spare that protected (and would have taken over) an image of one program
/// run for a primary of another run: the spare must refuse it, and the refused primary must be
/// fenced for good — it never gets a lease from this spare, whatever it receives later.
#[test]
fn a_another_lineage_is_refused_and_the_link_is_fenced_forever() {
    let c = ConnId(1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, 1, at(0));
    let mut l = Link::new(link_cfg(1, NEW), at(0));
    l.handle_timeout(at(0));
    assert_eq!(events(&mut l), vec![Event::Connect]);
    l.handle_connected(at(0));
    s.handle_open(at(0), c);
    for m in transmit(&mut l) {
        s.handle_msg(at(0), c, l.term(), m);
    }
    let out = drain(&mut s);
    let answers = sent(&out, c);
    assert!(
        matches!(&answers[..], [(_, Msg::Refused { .. })]),
        "a primary of another lineage is answered Refused and nothing else: {out:?}"
    );
    assert!(closed(&out, c));
    assert!(!s.has_primary());
    deliver(&mut l, at(1), &out, c);
    assert!(l.fenced().is_some(), "Refused fences the link");
    assert!(events(&mut l).iter().any(|e| matches!(e, Event::Fenced(_))));

    // Forever: whatever arrives afterwards (a Status, an answer to a heartbeat), across
    // reconnects, the link never serves and never even tries to connect again.
    l.handle_msg(
        at(2),
        1,
        Msg::Status {
            term: 1,
            seq: 5,
            applied: 5,
            since_grant_ms: 0,
            detection_us: 50_000,
        },
    );
    l.handle_timeout(at(3));
    let hb: Vec<u64> = transmit(&mut l)
        .into_iter()
        .filter_map(|m| match m {
            Msg::Heartbeat { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    for id in hb {
        l.handle_msg(at(4), 1, Msg::HeartbeatAck { id, seq: 5 });
    }
    for t in [4, 5, 10, 1000] {
        assert!(!l.may_serve(at(t)), "fenced link serves at {t} ms");
    }
    assert!(l.serving_until().is_none());
    assert!(l.start_checkpoint(at(5), header(1, 0)).is_err());
    l.handle_disconnected(at(6), "closed by the spare");
    events(&mut l);
    for t in [6, 200, 10_000] {
        l.handle_timeout(at(t));
        assert!(
            !events(&mut l).contains(&Event::Connect),
            "a fenced link reconnects at {t} ms"
        );
        assert!(!l.may_serve(at(t)));
    }
}

/// With `accept_new_lineage` the new primary is admitted — and until its first full checkpoint
/// is durable the spare must not take over the OLD image (guards against a spare that, the new
/// primary having died before its first checkpoint, "resumed" the previous run's state as if it
/// were the new program's).
#[test]
fn a_accepted_new_lineage_does_not_make_the_old_image_taken_over() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_image(spare_cfg(true), OLD, 5, term, at(0));
    let out = connect(&mut s, at(0), c, term, NEW);
    assert!(
        matches!(&sent(&out, c)[..], [(_, Msg::Status { .. })]),
        "admitted: {out:?}"
    );
    assert!(s.has_primary());
    // It heartbeats for a while, then goes silent and disconnects without a checkpoint.
    s.handle_msg(at(10), c, term, Msg::Heartbeat { id: 1, seq: 0 });
    drain(&mut s);
    // An incremental stream cannot replace another lineage's image.
    let out = stream(&mut s, at(20), c, term, header(6, 5));
    assert!(disk_ops(&out).is_empty(), "{out:?}");
    assert!(matches!(
        &sent(&out, c)[..],
        [(_, Msg::Nack { seq: 6, .. })]
    ));
    s.handle_closed(at(30), c, "primary died");
    drain(&mut s);
    for t in [100, GRACE_MS, 1_000, 60_000] {
        s.handle_timeout(at(t));
        let out = drain(&mut s);
        assert!(
            takeover(&out).is_none() && !disk_ops(&out).contains(&DiskOp::SaveTerm(term + 1)),
            "the old image is taken over at {t} ms for a new lineage that never made a checkpoint durable: {out:?}"
        );
        assert!(!s.taking_over());
    }

    // The new primary comes back; its first full checkpoint fails on disk: still nothing.
    let c2 = ConnId(2);
    connect(&mut s, at(61_000), c2, term, NEW);
    let out = stream(&mut s, at(61_001), c2, term, header(1, 0));
    assert!(disk_ops(&out).contains(&DiskOp::Persist {
        seq: 1,
        replace_lineage: true
    }));
    for op in disk_ops(&out) {
        let done = match op {
            DiskOp::Persist { seq, .. } => DiskDone::Persisted {
                seq,
                result: Err("ENOSPC".into()),
            },
            _ => DiskDone::Discarded,
        };
        s.handle_disk(at(61_002), done);
    }
    let out = drain(&mut s);
    assert!(sent(&out, c2)
        .iter()
        .all(|(_, m)| !matches!(m, Msg::Ack { .. })));
    s.handle_closed(at(61_003), c2, "primary died");
    drain(&mut s);
    s.handle_timeout(at(120_000));
    let out = drain(&mut s);
    assert!(
        takeover(&out).is_none() && disk_ops(&out).is_empty(),
        "the old image is taken over after the new lineage's first checkpoint failed: {out:?}"
    );

    // Positive control: once a full checkpoint of the new lineage is durable (and applied),
    // a silent new primary is taken over — at that checkpoint, not the old image.
    let c3 = ConnId(3);
    connect(&mut s, at(121_000), c3, term, NEW);
    let out = stream(&mut s, at(121_001), c3, term, header(1, 0));
    let out = complete_all(&mut s, at(121_002), disk_ops(&out), NEW, term);
    assert!(
        sent(&out, c3).contains(&(term, Msg::Ack { seq: 1 })),
        "{out:?}"
    );
    assert_eq!(s.tip().map(|t| t.lineage), Some(NEW));
    s.handle_closed(at(121_003), c3, "primary died");
    drain(&mut s);
    s.handle_timeout(at(122_000));
    let out = drain(&mut s);
    let ops = disk_ops(&out);
    assert_eq!(ops, vec![DiskOp::SaveTerm(term + 1)], "{out:?}");
    let out = complete_all(&mut s, at(122_001), ops, NEW, term);
    assert_eq!(takeover(&out), Some((term + 1, 1)));
}

// ---------------------------------------------------------------------------------------------
// b. Chaining and acknowledgement
// ---------------------------------------------------------------------------------------------

/// Guards against a spare that spooled (and acknowledged) streams that could never be applied
/// on top of its image — an incremental checkpoint on another base, or a full one that is not
/// newer than what it has of the same lineage — so that an acknowledged checkpoint was lost.
#[test]
fn b_a_stream_that_cannot_chain_is_nacked_without_touching_the_disk() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    connect(&mut s, at(0), c, term, OLD);
    assert!(s.has_primary());
    for (h, why) in [
        (header(7, 6), "incremental on base 6, tip is 5"),
        (header(7, 4), "incremental on base 4, tip is 5"),
        (header(5, 0), "full at seq 5 = tip"),
        (header(3, 0), "full at seq 3 < tip"),
        (header(0, 0), "seq 0"),
        (header(6, 6), "base = seq"),
    ] {
        let out = stream(&mut s, at(1), c, term, h);
        let ops = disk_ops(&out);
        assert!(
            !ops.iter().any(|o| matches!(
                o,
                DiskOp::SpoolStart { .. } | DiskOp::Spool { .. } | DiskOp::Persist { .. }
            )),
            "{why}: the disk is asked for {ops:?}"
        );
        let msgs = sent(&out, c);
        assert!(
            matches!(&msgs[..], [(_, Msg::Nack { seq, .. })] if *seq == h.seq),
            "{why}: answered {msgs:?}"
        );
        assert!(
            !closed(&out, c),
            "{why}: a refused stream keeps the connection"
        );
    }
    assert_eq!(s.disk_outstanding(), 0);

    // Positive controls: an incremental on the tip and a newer full one are spooled.
    let out = stream(&mut s, at(2), c, term, header(6, 5));
    let ops = disk_ops(&out);
    assert!(matches!(ops[0], DiskOp::SpoolStart { header: h, .. } if h == header(6, 5)));
    assert!(ops.contains(&DiskOp::Persist {
        seq: 6,
        replace_lineage: false
    }));
    assert!(
        sent(&out, c).is_empty(),
        "no answer before the disk has spoken"
    );
}

/// Guards against acknowledging a checkpoint before it is durable (or when making it durable
/// failed): the primary would then let its application believe state is safe that a takeover
/// does not have.
#[test]
fn b_ack_only_after_persisted_ok_and_nack_on_persist_error() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    connect(&mut s, at(0), c, term, OLD);
    let out = stream(&mut s, at(1), c, term, header(6, 5));
    assert!(sent(&out, c).is_empty());
    // The spool operations complete: still no Ack.
    for op in disk_ops(&out) {
        if !matches!(op, DiskOp::Persist { .. }) {
            s.handle_disk(at(2), DiskDone::Discarded);
        }
    }
    assert!(sent(&drain(&mut s), c).is_empty(), "acked before Persisted");
    // Heartbeats and status requests in between do not acknowledge it either.
    s.handle_msg(at(3), c, term, Msg::Heartbeat { id: 1, seq: 6 });
    s.handle_msg(at(3), c, term, Msg::StatusRequest);
    let out = drain(&mut s);
    assert!(
        !sent(&out, c)
            .iter()
            .any(|(_, m)| matches!(m, Msg::Ack { .. })),
        "{out:?}"
    );
    // Persisted Ok → exactly one Ack.
    s.handle_disk(
        at(4),
        DiskDone::Persisted {
            seq: 6,
            result: Ok(tip(OLD, 6, term)),
        },
    );
    let out = drain(&mut s);
    assert_eq!(sent(&out, c), vec![(term, Msg::Ack { seq: 6 })]);
    complete_all(&mut s, at(5), disk_ops(&out), OLD, term);

    // The next one fails to persist: Nack, never Ack, and the chain is back at 6.
    let out = stream(&mut s, at(6), c, term, header(7, 6));
    for op in disk_ops(&out) {
        let done = match op {
            DiskOp::Persist { seq, .. } => DiskDone::Persisted {
                seq,
                result: Err("Input/output error (os error 5)".into()),
            },
            _ => DiskDone::Discarded,
        };
        s.handle_disk(at(7), done);
    }
    let out = drain(&mut s);
    let msgs = sent(&out, c);
    assert!(
        matches!(&msgs[..], [(_, Msg::Nack { seq: 7, .. })]),
        "{msgs:?}"
    );
    s.handle_timeout(at(8));
    assert!(!sent(&drain(&mut s), c)
        .iter()
        .any(|(_, m)| matches!(m, Msg::Ack { .. })));
    let out = stream(&mut s, at(9), c, term, header(8, 7));
    assert!(
        matches!(&sent(&out, c)[..], [(_, Msg::Nack { seq: 8, .. })]),
        "the failed checkpoint 7 does not count as a base"
    );
    let out = stream(&mut s, at(10), c, term, header(7, 6));
    assert!(disk_ops(&out).contains(&DiskOp::Persist {
        seq: 7,
        replace_lineage: false
    }));

    // On the primary's side: a Nack fails the checkpoint and forces a full one.
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    assert!(l.take_needs_full());
    l.start_checkpoint(at(1), header(9, 8)).expect("up");
    l.end_checkpoint(at(1), 9);
    transmit(&mut l);
    l.handle_msg(
        at(2),
        term,
        Msg::Nack {
            seq: 9,
            reason: "no".into(),
        },
    );
    let ev = events(&mut l);
    assert!(
        matches!(
            &ev[..],
            [Event::Done {
                seq: 9,
                result: Err(_)
            }]
        ),
        "{ev:?}"
    );
    assert!(l.take_needs_full());
}

// ---------------------------------------------------------------------------------------------
// c. The lease
// ---------------------------------------------------------------------------------------------

/// Guards against a lease anchored to when an answer *arrived*: a primary that was paused (or
/// whose answers sat in a queue) would then serve past the moment the spare may take over.
#[test]
fn c_a_late_heartbeat_answer_does_not_renew_the_lease() {
    let term = 1;
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    assert!(!l.may_serve(at(0)), "no lease before an answered heartbeat");
    let lease = l.lease();
    assert_eq!(lease, ms(40));
    let id = heartbeat(&mut l, at(1));
    // The primary was paused: the answer is handled 45 ms after the heartbeat went out.
    let late = at(1) + lease + ms(5);
    l.handle_msg(late, term, Msg::HeartbeatAck { id, seq: 0 });
    assert!(
        !l.may_serve(late),
        "an answer to a heartbeat sent more than a lease ago renewed the lease"
    );
    // A fresh heartbeat answered promptly does renew it, from its send time.
    let now = late;
    let id2 = heartbeat(&mut l, now);
    assert!(id2 > id);
    l.handle_msg(now + ms(1), term, Msg::HeartbeatAck { id: id2, seq: 0 });
    assert!(l.may_serve(now + ms(1)));
    assert_eq!(l.serving_until(), Some(now + lease));
    // And it runs out by itself, no event needed.
    assert!(l.may_serve(now + lease - Duration::from_nanos(1)));
    assert!(!l.may_serve(now + lease));
    assert!(!l.may_serve(now + lease + ms(1000)));
    // A stale answer to the first heartbeat arriving now does not extend it either.
    l.handle_msg(now + ms(2), term, Msg::HeartbeatAck { id, seq: 0 });
    assert_eq!(l.serving_until(), Some(now + lease));
    // The driver is told when it ran out.
    l.handle_timeout(now + lease);
    assert!(events(&mut l).contains(&Event::LeaseLost));
}

/// Guards against a heartbeat round trip measured from the wrong heartbeat (the newest instead
/// of the one answered) or reported for a stale answer: the metrics would understate how close
/// a slow spare brings the primary to losing its lease.
#[test]
fn c_heartbeat_round_trips_are_reported_for_answered_heartbeats_only() {
    let term = 1;
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    assert_eq!(l.poll_heartbeat_rtt(), None);
    let first = heartbeat(&mut l, at(1));
    let second = heartbeat(&mut l, at(11));
    assert!(second > first);
    // The first is answered 12 ms after it was sent, once the second has gone out.
    l.handle_msg(at(13), term, Msg::HeartbeatAck { id: first, seq: 0 });
    assert_eq!(l.poll_heartbeat_rtt(), Some(ms(12)));
    assert_eq!(l.poll_heartbeat_rtt(), None);
    // A repeated answer to the first is no round trip; the second's is measured from its own
    // send time.
    l.handle_msg(at(14), term, Msg::HeartbeatAck { id: first, seq: 0 });
    assert_eq!(l.poll_heartbeat_rtt(), None);
    l.handle_msg(at(16), term, Msg::HeartbeatAck { id: second, seq: 0 });
    assert_eq!(l.poll_heartbeat_rtt(), Some(ms(5)));
}

/// Guards against a primary configured with a lease longer than the spare's detection time:
/// it would still serve after the spare took over.
#[test]
fn c_the_lease_is_capped_by_the_spares_detection_time() {
    let term = 1;
    let mut cfg = link_cfg(term, OLD);
    cfg.lease = ms(100);
    let mut l = link_up(cfg, at(0), term, ms(50));
    assert!(
        l.lease() < ms(50),
        "lease {:?} not below the spare's 50 ms detection",
        l.lease()
    );
    // With 1 % drift and a 1 ms margin: at most 50·0.99/1.01 − 1 ≈ 48.0 ms.
    assert!(l.lease() <= ms(49) && l.lease() > ms(45), "{:?}", l.lease());
    let id = heartbeat(&mut l, at(10));
    l.handle_msg(at(11), term, Msg::HeartbeatAck { id, seq: 0 });
    assert!(l.may_serve(at(11)));
    assert!(
        !l.may_serve(at(10) + ms(50)),
        "still serving when the spare may take over"
    );

    // The cap comes from the spare that answered: a spare whose detection is taken from its
    // config reports it in its Status, and the link caps against that.
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    let out = connect(&mut s, at(0), ConnId(1), term, OLD);
    let detection_us = sent(&out, ConnId(1))
        .iter()
        .find_map(|(_, m)| match m {
            Msg::Status { detection_us, .. } => Some(*detection_us),
            _ => None,
        })
        .expect("Status");
    assert_eq!(detection_us, DETECTION_MS * 1000);
}

// ---------------------------------------------------------------------------------------------
// d. Terms
// ---------------------------------------------------------------------------------------------

/// Guards against a deposed primary (older term) being protected again: it must be fenced,
/// and must stay fenced once a newer term has been admitted, even if it connects later.
#[test]
fn d_older_terms_are_fenced_newer_ones_admitted_once_saved() {
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, 5, at(0));
    assert_eq!(s.term(), 5);

    // Older than the spare's term: Fenced, and the link fences itself on it.
    let c = ConnId(1);
    let out = connect(&mut s, at(1), c, 4, OLD);
    assert!(
        matches!(&sent(&out, c)[..], [(5, Msg::Fenced { term: 5 })]),
        "{out:?}"
    );
    assert!(closed(&out, c) && !s.has_primary());
    let mut l = Link::new(link_cfg(4, OLD), at(0));
    l.handle_timeout(at(0));
    l.handle_connected(at(0));
    deliver(&mut l, at(1), &out, c);
    assert!(l.fenced().is_some() && !l.may_serve(at(1)));

    // Equal term: admitted at once (positive control).
    let c5 = ConnId(5);
    let out = connect(&mut s, at(2), c5, 5, OLD);
    assert!(matches!(&sent(&out, c5)[..], [(5, Msg::Status { .. })]));
    assert!(disk_ops(&out).is_empty());

    // Newer: SaveTerm first; its heartbeats earn nothing until the term is on disk.
    let c6 = ConnId(6);
    let out = connect(&mut s, at(3), c6, 6, OLD);
    assert_eq!(disk_ops(&out), vec![DiskOp::SaveTerm(6)]);
    assert!(
        sent(&out, c6).is_empty(),
        "answered before its term is saved: {out:?}"
    );
    s.handle_msg(at(4), c6, 6, Msg::Heartbeat { id: 1, seq: 5 });
    let out = drain(&mut s);
    assert!(
        sent(&out, c6).is_empty(),
        "lease granted before the term is saved: {out:?}"
    );
    assert_eq!(s.last_grant(), None);
    s.handle_disk(
        at(5),
        DiskDone::TermSaved {
            term: 6,
            result: Ok(()),
        },
    );
    let out = drain(&mut s);
    assert!(
        matches!(&sent(&out, c6)[..], [(6, Msg::Status { term: 6, .. })]),
        "{out:?}"
    );
    // The term-5 primary admitted before is replaced and fenced on its next message.
    assert!(closed(&out, c5));
    s.handle_msg(at(6), c6, 6, Msg::Heartbeat { id: 2, seq: 5 });
    assert_eq!(
        sent(&drain(&mut s), c6),
        vec![(6, Msg::HeartbeatAck { id: 2, seq: 5 })]
    );

    // An older-term primary connecting later is fenced, whether its term was current once
    // (5) or never (4).
    for (c, t) in [(ConnId(7), 5), (ConnId(8), 4)] {
        let out = connect(&mut s, at(7), c, t, OLD);
        assert!(
            matches!(&sent(&out, c)[..], [(6, Msg::Fenced { term: 6 })]),
            "term {t} after term 6 was admitted: {out:?}"
        );
        assert!(closed(&out, c));
    }
    // A message stamped with an older term on the admitted connection is fenced too.
    s.handle_msg(at(8), c6, 5, Msg::Heartbeat { id: 3, seq: 5 });
    let out = drain(&mut s);
    assert!(matches!(
        &sent(&out, c6)[..],
        [(6, Msg::Fenced { term: 6 })]
    ));
}

/// Guards against a term that counts without being on disk: a spare that cannot save a newer
/// primary's term must refuse it (after a restart it would not know that term).
#[test]
fn d_a_failed_term_save_refuses_the_newer_primary() {
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, 5, at(0));
    let c = ConnId(1);
    let out = connect(&mut s, at(1), c, 7, OLD);
    assert_eq!(disk_ops(&out), vec![DiskOp::SaveTerm(7)]);
    s.handle_disk(
        at(2),
        DiskDone::TermSaved {
            term: 7,
            result: Err("ENOSPC".into()),
        },
    );
    let out = drain(&mut s);
    assert!(
        matches!(&sent(&out, c)[..], [(_, Msg::Refused { .. })]),
        "{out:?}"
    );
    assert!(closed(&out, c) && !s.has_primary());
    s.handle_msg(at(3), c, 7, Msg::Heartbeat { id: 1, seq: 5 });
    let out = drain(&mut s);
    assert!(sent(&out, c).is_empty() && s.last_grant().is_none());
}

/// Guards against the same defect by the back door: after a failed save of term 7 the spare
/// keeps 7 as its term in memory, so a primary of term 7 that simply reconnects is admitted
/// with no `SaveTerm` at all, and gets leases on a term that is on no disk.
#[test]
fn d_a_term_whose_save_failed_is_not_admitted_on_reconnect() {
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, 5, at(0));
    let c = ConnId(1);
    connect(&mut s, at(1), c, 7, OLD);
    s.handle_disk(
        at(2),
        DiskDone::TermSaved {
            term: 7,
            result: Err("ENOSPC".into()),
        },
    );
    drain(&mut s);
    s.handle_closed(at(2), c, "refused");
    let c2 = ConnId(2);
    let out = connect(&mut s, at(3), c2, 7, OLD);
    assert!(
        !matches!(&sent(&out, c2)[..], [(_, Msg::Status { .. })]),
        "term 7 admitted without being saved: {out:?}"
    );
    s.handle_msg(at(4), c2, 7, Msg::Heartbeat { id: 1, seq: 5 });
    let out = drain(&mut s);
    assert!(
        !sent(&out, c2)
            .iter()
            .any(|(_, m)| matches!(m, Msg::HeartbeatAck { .. })),
        "a lease granted on term 7, which is on no disk: {out:?}"
    );
}

/// Guards against a second door to the same defect: while a newer primary's term is being
/// saved, another connection with that same term must not be admitted at once (its term is
/// equal to the one in memory, but not yet on disk).
#[test]
fn d_a_second_hello_of_a_term_being_saved_waits_for_the_save() {
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, 5, at(0));
    let (c1, c2) = (ConnId(1), ConnId(2));
    let out = connect(&mut s, at(1), c1, 6, OLD);
    assert_eq!(disk_ops(&out), vec![DiskOp::SaveTerm(6)]);
    let out = connect(&mut s, at(2), c2, 6, OLD);
    assert!(
        !matches!(&sent(&out, c2)[..], [(_, Msg::Status { .. })]),
        "admitted on term 6 while its save is outstanding: {out:?}"
    );
    s.handle_msg(at(3), c2, 6, Msg::Heartbeat { id: 1, seq: 5 });
    let out = drain(&mut s);
    assert!(
        sent(&out, c2).is_empty() && s.last_grant().is_none(),
        "a lease granted on term 6 before it is on disk: {out:?}"
    );
    // Once a save of term 6 succeeds, the connection waiting for it is admitted.
    let mut ops = disk_ops(&out);
    ops.insert(0, DiskOp::SaveTerm(6));
    let out = complete_all(&mut s, at(4), ops, OLD, 6);
    assert!(
        sent(&out, c2)
            .iter()
            .any(|(t, m)| *t == 6 && matches!(m, Msg::Status { .. })),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// e. Takeover
// ---------------------------------------------------------------------------------------------

/// Guards against a takeover while the primary may still serve: never within `detection` of
/// the last heartbeat answered.
#[test]
fn e_no_takeover_within_detection_of_the_last_answer() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    connect(&mut s, at(0), c, term, OLD);
    let last = at(GRACE_MS + 100);
    s.handle_msg(last, c, term, Msg::Heartbeat { id: 1, seq: 5 });
    let out = drain(&mut s);
    assert!(sent(&out, c).contains(&(term, Msg::HeartbeatAck { id: 1, seq: 5 })));
    assert_eq!(s.last_grant(), Some(last));
    // The primary goes silent; the timer is asked for no earlier than last + detection.
    assert!(s
        .poll_timeout()
        .is_some_and(|t| t >= last + ms(DETECTION_MS)));
    for us in [0, 1_000, 25_000, 49_000, 49_999] {
        s.handle_timeout(last + Duration::from_micros(us));
        let out = drain(&mut s);
        assert!(
            disk_ops(&out).is_empty() && takeover(&out).is_none() && !s.taking_over(),
            "takeover {us} µs after the last answer (detection {DETECTION_MS} ms): {out:?}"
        );
    }
    // Also when the connection has dropped in between.
    s.handle_closed(last + ms(10), c, "reset");
    drain(&mut s);
    s.handle_timeout(last + ms(DETECTION_MS) - Duration::from_nanos(1));
    assert!(disk_ops(&drain(&mut s)).is_empty());
    // Positive control: at last + detection it decides.
    s.handle_timeout(last + ms(DETECTION_MS));
    assert_eq!(disk_ops(&drain(&mut s)), vec![DiskOp::SaveTerm(term + 1)]);
}

/// Guards against a restarted spare taking over at once — it may have granted a lease just
/// before it died — and against one that never takes over a dead primary after a restart.
#[test]
fn e_startup_grace_then_a_restarted_spare_takes_over() {
    let term = 3;
    let start = at(1_000);
    let mut s = spare_with_image(spare_cfg(false), OLD, 9, term, start);
    assert_eq!(s.poll_timeout(), Some(start + ms(GRACE_MS)));
    for t in [0, 1, 50, 100, GRACE_MS - 1] {
        s.handle_timeout(start + ms(t));
        let out = drain(&mut s);
        assert!(
            disk_ops(&out).is_empty() && takeover(&out).is_none(),
            "takeover {t} ms after start, grace {GRACE_MS} ms: {out:?}"
        );
    }
    // A primary that heartbeated once right after the start and vanished: its detection
    // expires inside the grace, and the grace still holds.
    let c = ConnId(1);
    connect(&mut s, start + ms(1), c, term, OLD);
    s.handle_msg(start + ms(2), c, term, Msg::Heartbeat { id: 1, seq: 9 });
    s.handle_closed(start + ms(3), c, "gone");
    drain(&mut s);
    s.handle_timeout(start + ms(2 + DETECTION_MS + 10));
    assert!(
        disk_ops(&drain(&mut s)).is_empty(),
        "takeover inside the grace"
    );
    // After the grace: the term is saved first, then the takeover, at the image.
    s.handle_timeout(start + ms(GRACE_MS));
    let out = drain(&mut s);
    assert_eq!(disk_ops(&out), vec![DiskOp::SaveTerm(term + 1)]);
    assert!(
        takeover(&out).is_none(),
        "takeover before its term is saved"
    );
    assert!(s.taking_over() && !s.taken_over());
    // While the term is being saved, a primary that shows up gets no lease.
    let c2 = ConnId(2);
    s.handle_open(start + ms(GRACE_MS + 1), c2);
    s.handle_msg(start + ms(GRACE_MS + 1), c2, term, hello(OLD));
    s.handle_msg(
        start + ms(GRACE_MS + 1),
        c2,
        term,
        Msg::Heartbeat { id: 1, seq: 9 },
    );
    let out = drain(&mut s);
    assert!(sent(&out, c2).is_empty(), "{out:?}");
    s.handle_disk(
        start + ms(GRACE_MS + 2),
        DiskDone::TermSaved {
            term: term + 1,
            result: Ok(()),
        },
    );
    let out = drain(&mut s);
    assert_eq!(takeover(&out), Some((term + 1, 9)));
    assert!(s.taken_over());
    assert_eq!(s.poll_timeout(), None);
    // Exactly once.
    s.handle_timeout(start + ms(100_000));
    assert!(takeover(&drain(&mut s)).is_none());
}

/// Guards against a takeover on a term that is not on disk (after a restart the spare would
/// not know it had deposed anyone): a failed save means no takeover, and a later retry.
#[test]
fn e_a_failed_takeover_term_save_means_no_takeover() {
    let term = 3;
    let mut s = spare_with_image(spare_cfg(false), OLD, 9, term, at(0));
    s.handle_timeout(at(GRACE_MS));
    assert_eq!(disk_ops(&drain(&mut s)), vec![DiskOp::SaveTerm(4)]);
    s.handle_disk(
        at(GRACE_MS + 1),
        DiskDone::TermSaved {
            term: 4,
            result: Err("EIO".into()),
        },
    );
    let out = drain(&mut s);
    assert!(
        takeover(&out).is_none(),
        "took over on an unsaved term: {out:?}"
    );
    assert!(!s.taken_over() && !s.taking_over());
    // It tries again later, with a new term, and only succeeds once that one is saved.
    s.handle_timeout(at(GRACE_MS + 2));
    assert!(disk_ops(&drain(&mut s)).is_empty(), "retried at once");
    s.handle_timeout(at(GRACE_MS + 1 + DETECTION_MS));
    let ops = disk_ops(&drain(&mut s));
    assert_eq!(ops.len(), 1);
    let DiskOp::SaveTerm(t2) = ops[0] else {
        panic!("{ops:?}")
    };
    assert!(t2 > 4, "retried with term {t2}");
    s.handle_disk(
        at(GRACE_MS + 2 + DETECTION_MS),
        DiskDone::TermSaved {
            term: t2,
            result: Ok(()),
        },
    );
    assert_eq!(takeover(&drain(&mut s)), Some((t2, 9)));
}

/// Guards against a takeover of an image that is not what was acknowledged: none while a
/// disk operation is outstanding (a persist that may succeed, an apply) or while the data
/// files are behind the durable tip.
#[test]
fn e_no_takeover_with_disk_work_outstanding_or_apply_behind() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    connect(&mut s, at(0), c, term, OLD);
    let out = stream(&mut s, at(1), c, term, header(6, 5));
    let mut ops = disk_ops(&out);
    assert!(ops.len() >= 3, "{ops:?}");
    s.handle_closed(at(2), c, "primary died mid-persist");
    ops.extend(disk_ops(&drain(&mut s)));
    // Nothing completes: no takeover, however long.
    for t in [GRACE_MS, 1_000, 10_000] {
        s.handle_timeout(at(t));
        assert!(
            disk_ops(&drain(&mut s)).is_empty(),
            "takeover at {t} ms with {} disk operations outstanding",
            s.disk_outstanding()
        );
    }
    // Everything but the Persist completes: still none.
    for op in &ops {
        if !matches!(op, DiskOp::Persist { .. }) {
            s.handle_disk(at(10_001), DiskDone::Discarded);
        }
    }
    s.handle_timeout(at(20_000));
    assert!(disk_ops(&drain(&mut s)).is_empty());
    // The Persist succeeds (checkpoint 6 is durable, not applied): an Apply is asked, and
    // until it is done there is no takeover.
    s.handle_disk(
        at(20_001),
        DiskDone::Persisted {
            seq: 6,
            result: Ok(tip(OLD, 6, term)),
        },
    );
    assert_eq!(disk_ops(&drain(&mut s)), vec![DiskOp::Apply]);
    s.handle_timeout(at(30_000));
    assert!(
        disk_ops(&drain(&mut s)).is_empty(),
        "takeover with the apply outstanding"
    );
    // The apply fails: still behind, no takeover; it is retried.
    s.handle_disk(at(30_001), DiskDone::Applied(Err("EIO".into())));
    drain(&mut s);
    s.handle_timeout(at(30_001) + ms(10));
    let out = drain(&mut s);
    assert_eq!(
        disk_ops(&out),
        vec![DiskOp::Apply],
        "apply retried: {out:?}"
    );
    s.handle_timeout(at(40_000));
    assert!(disk_ops(&drain(&mut s)).is_empty());
    // Applied: now the takeover comes, at checkpoint 6.
    s.handle_disk(at(40_001), DiskDone::Applied(Ok(6)));
    drain(&mut s);
    s.handle_timeout(at(40_002));
    let ops = disk_ops(&drain(&mut s));
    assert_eq!(ops, vec![DiskOp::SaveTerm(term + 1)]);
    let out = complete_all(&mut s, at(40_003), ops, OLD, term);
    assert_eq!(takeover(&out), Some((term + 1, 6)));
}

/// Guards against a driver that follows the documented contract of `DiskDone::SpoolFailed`
/// ("success need not be reported") for `SpoolStart`/`Spool`: the spare counts every disk
/// operation as outstanding until a `DiskDone` arrives, so after one spooled stream it never
/// takes over a dead primary.
#[test]
fn e_answered_spool_operations_do_not_block_the_takeover() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    connect(&mut s, at(0), c, term, OLD);
    let out = stream(&mut s, at(1), c, term, header(6, 5));
    // The driver answers every operation, as the contract says: spool successes with
    // `Discarded`, the Persist, then the Apply.
    for op in disk_ops(&out) {
        if matches!(op, DiskOp::SpoolStart { .. } | DiskOp::Spool { .. }) {
            s.handle_disk(at(2), DiskDone::Discarded);
        }
        if let DiskOp::Persist { seq, .. } = op {
            s.handle_disk(
                at(2),
                DiskDone::Persisted {
                    seq,
                    result: Ok(tip(OLD, seq, term)),
                },
            );
        }
    }
    let out = drain(&mut s);
    assert!(sent(&out, c).contains(&(term, Msg::Ack { seq: 6 })));
    assert_eq!(disk_ops(&out), vec![DiskOp::Apply]);
    s.handle_disk(at(3), DiskDone::Applied(Ok(6)));
    s.handle_closed(at(4), c, "primary died");
    drain(&mut s);
    s.handle_timeout(at(60_000));
    assert_eq!(
        disk_ops(&drain(&mut s)),
        vec![DiskOp::SaveTerm(term + 1)],
        "no takeover a minute after the primary died ({} disk operations believed outstanding)",
        s.disk_outstanding()
    );
}

/// Guards against a restarted spare that never takes over because it compares sequence
/// numbers across lineages: its durable tip is the first full checkpoint of a new lineage
/// (seq 1), not yet applied over the old lineage's data files (applied at 10).
#[test]
fn e_restart_with_an_unapplied_tip_of_a_new_lineage_takes_over() {
    let rec = Recovered {
        term: 2,
        tip: Some(tip(NEW, 1, 2)),
        applied: 10,
    };
    let mut s = Spare::new(spare_cfg(true), rec, at(0));
    let mut out = Vec::new();
    for t in (0..=10).map(|i| GRACE_MS * i) {
        s.handle_timeout(at(t));
        let o = drain(&mut s);
        out.extend(complete_all(&mut s, at(t), disk_ops(&o), NEW, 2));
        out.extend(o);
    }
    assert_eq!(
        takeover(&out),
        Some((3, 1)),
        "a dead primary never taken over after a restart: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// f. Acknowledgement deadline
// ---------------------------------------------------------------------------------------------

/// Guards against a spare whose disk hangs blocking the primary's checkpoint forever, and
/// against the fix for it (dropping the connection) leaving a live primary silent long enough
/// to be taken over: the checkpoint fails, the connection stays, the next one is full.
#[test]
fn f_a_missed_ack_deadline_fails_the_checkpoint_and_keeps_the_connection() {
    let term = 1;
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    assert!(
        l.take_needs_full(),
        "a new connection starts with a full checkpoint"
    );
    assert!(!l.take_needs_full());

    // Positive control: acknowledged in time → Ok, no full checkpoint needed.
    l.start_checkpoint(at(1), header(1, 0)).expect("up");
    l.send_chunk(at(1), 1, vec![0; 16]);
    l.end_checkpoint(at(2), 1);
    transmit(&mut l);
    l.handle_msg(at(50), term, Msg::Ack { seq: 1 });
    assert_eq!(
        events(&mut l),
        vec![Event::Done {
            seq: 1,
            result: Ok(())
        }]
    );
    assert!(!l.take_needs_full());

    // Checkpoint 2's Ack never comes.
    l.start_checkpoint(at(60), header(2, 1)).expect("up");
    l.end_checkpoint(at(61), 2);
    transmit(&mut l);
    assert!(l.poll_timeout().is_some_and(|t| t <= at(161)));
    l.handle_timeout(at(160));
    assert!(
        !events(&mut l)
            .iter()
            .any(|e| matches!(e, Event::Done { .. })),
        "failed before its deadline"
    );
    l.handle_timeout(at(161));
    let ev = events(&mut l);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::Done {
                seq: 2,
                result: Err(_)
            }
        )),
        "{ev:?}"
    );
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Close(_))),
        "the connection is dropped: {ev:?}"
    );
    assert!(l.is_up());
    assert!(
        l.take_needs_full(),
        "the checkpoint after a missed Ack must be full"
    );
    transmit(&mut l); // the heartbeats that fell due meanwhile
                      // The connection keeps working: heartbeats go out and renew the lease.
    let id = heartbeat(&mut l, at(170));
    l.handle_msg(at(171), term, Msg::HeartbeatAck { id, seq: 1 });
    assert!(l.may_serve(at(171)));
    // A late Ack of checkpoint 2 is harmless: no second Done, no close.
    l.handle_msg(at(172), term, Msg::Ack { seq: 2 });
    assert!(events(&mut l).is_empty());
    assert_eq!(l.seqs(), (2, 1));
}

// ---------------------------------------------------------------------------------------------
// g. Codec
// ---------------------------------------------------------------------------------------------

fn key() -> Key {
    Key::from_bytes(b"a shared secret of the pair")
}

/// The full handshake with every byte delivered alone, in both directions.
fn handshake_bytewise() -> (Session, Session) {
    let (mut client, hello) = ClientHandshake::new(&key(), [1; 32]);
    assert_eq!(hello.len(), HELLO_LEN);
    let mut server = ServerHandshake::new(&key(), [2; 32]);
    let mut reply = None;
    for (i, b) in hello.iter().enumerate() {
        match server.feed(&[*b]).expect("valid hello") {
            ServerStep::More => assert!(i + 1 < HELLO_LEN, "no reply after the whole hello"),
            ServerStep::Reply(r) => {
                assert_eq!(i + 1, HELLO_LEN, "reply before the whole hello");
                reply = Some(r);
            }
            ServerStep::Done(..) => panic!("done before the proof"),
        }
    }
    let reply = reply.expect("the spare replies to a complete hello");
    let mut done = None;
    for (i, b) in reply.iter().enumerate() {
        match client.feed(&[*b]).expect("valid reply") {
            None => assert!(i + 1 < reply.len()),
            Some(d) => done = Some(d),
        }
    }
    let (proof, client_session, rest) = done.expect("client done");
    assert!(rest.is_empty());
    let mut server_session = None;
    for (i, b) in proof.iter().enumerate() {
        match server.feed(&[*b]).expect("valid proof") {
            ServerStep::More => assert!(i + 1 < proof.len()),
            ServerStep::Done(s, rest) => {
                assert!(rest.is_empty());
                server_session = Some(s);
            }
            ServerStep::Reply(_) => panic!("second reply"),
        }
    }
    (client_session, server_session.expect("server done"))
}

/// Guards against a handshake that assumed whole reads (a slow peer, a split TCP segment).
#[test]
fn g_a_hello_sent_one_byte_at_a_time_completes() {
    let (mut c, mut s) = handshake_bytewise();
    let mut out = Vec::new();
    c.sealer
        .seal(3, &Msg::Heartbeat { id: 9, seq: 4 }, &mut out);
    for b in &out {
        assert_eq!(s.opener.next_msg(), Ok(None));
        s.opener.push(&[*b]);
    }
    assert_eq!(
        s.opener.next_msg(),
        Ok(Some((3, Msg::Heartbeat { id: 9, seq: 4 })))
    );
    let mut back = Vec::new();
    s.sealer
        .seal(3, &Msg::HeartbeatAck { id: 9, seq: 4 }, &mut back);
    c.opener.push(&back);
    assert_eq!(
        c.opener.next_msg(),
        Ok(Some((3, Msg::HeartbeatAck { id: 9, seq: 4 })))
    );
}

/// Guards against a spare that buffered (or waited for a whole hello from) anything that
/// connects: garbage is refused as soon as the magic can be judged (4 bytes), another version
/// of the protocol as soon as its version byte is in, with an error naming both versions.
#[test]
fn g_garbage_magic_is_refused_after_four_bytes_and_another_version_after_five() {
    for garbage in [&b"GET / HTTP/1.1\r\n"[..], &b"HSRQ\x02"[..], &[0u8; 8][..]] {
        let mut s = ServerHandshake::new(&key(), [2; 32]);
        for (i, b) in garbage.iter().enumerate().take(4) {
            let r = s.feed(&[*b]);
            if i < 3 {
                assert!(
                    matches!(r, Ok(ServerStep::More)),
                    "{garbage:?} byte {i}: {r:?}"
                );
            } else {
                assert!(
                    matches!(r, Err(WireError::BadHello)),
                    "{garbage:?}: 4 bytes in, {r:?}"
                );
            }
        }
        // All at once: the same.
        let mut s = ServerHandshake::new(&key(), [2; 32]);
        assert!(matches!(s.feed(garbage), Err(WireError::BadHello)));
    }
    // Version 1, the previous versions (3: 32-byte MACs, no one-message streams) and the next.
    for v in [1, VERSION - 2, VERSION - 1, VERSION + 1] {
        let hello = [b'H', b'S', b'R', b'P', v];
        let mut s = ServerHandshake::new(&key(), [2; 32]);
        for b in &hello[..4] {
            assert!(matches!(s.feed(&[*b]), Ok(ServerStep::More)));
        }
        let e = s.feed(&hello[4..]).expect_err("another version");
        assert_eq!(
            e,
            WireError::Version {
                peer: v,
                ours: VERSION
            }
        );
        let line = e.to_string();
        assert!(
            line.contains(&format!("version {v}")) && line.contains(&format!("speaks {VERSION}")),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
        let mut s = ServerHandshake::new(&key(), [2; 32]);
        assert!(matches!(
            s.feed(&[&hello[..], &[0; 32]].concat()),
            Err(WireError::Version { peer, ours: VERSION }) if peer == v
        ));
    }
    // Positive control: our own hello gets the reply.
    let (_, hello) = ClientHandshake::new(&key(), [1; 32]);
    let mut s = ServerHandshake::new(&key(), [2; 32]);
    assert!(matches!(s.feed(&hello), Ok(ServerStep::Reply(_))));
}

/// Guards against a primary that cannot say why a spare of another version hung up on it: the
/// spare's notice (its magic and version) gives the version mismatch, silence at the hello (a
/// spare too old to send a notice) says so, and a close after a partial real reply is left to
/// the driver's own reason.
#[test]
fn g_a_primary_names_the_version_of_a_spare_that_refused_its_hello() {
    let (c, _) = ClientHandshake::new(&key(), [1; 32]);
    assert_eq!(c.closed(), Some(WireError::HelloRefused));
    let mut c = ClientHandshake::new(&key(), [1; 32]).0;
    let mut other = VERSION_NOTICE;
    other[4] = VERSION + 1;
    assert!(matches!(c.feed(&other), Ok(None)));
    assert_eq!(
        c.closed(),
        Some(WireError::Version {
            peer: VERSION + 1,
            ours: VERSION
        })
    );
    // Our own version in a 5-byte answer, or 20 bytes of a real reply: not a version problem.
    let mut c = ClientHandshake::new(&key(), [1; 32]).0;
    assert!(matches!(c.feed(&VERSION_NOTICE), Ok(None)));
    assert_eq!(c.closed(), None);
    let mut c = ClientHandshake::new(&key(), [1; 32]).0;
    assert!(matches!(c.feed(&[7; 20]), Ok(None)));
    assert_eq!(c.closed(), None);
}

/// Guards against accepting a forged or damaged message: any flipped MAC byte fails it.
#[test]
fn g_a_flipped_mac_byte_is_bad_mac() {
    let (mut c, _) = handshake_bytewise();
    let mut out = Vec::new();
    c.sealer.seal(1, &Msg::EndStream { seq: 5 }, &mut out);
    let n = out.len();
    // A MAC of MAC_LEN bytes (HMAC-SHA256 truncated), after a body of the term varint and the
    // message: every MAC byte, the term, the message and its last byte.
    assert_eq!(MAC_LEN, 16);
    assert_eq!(
        n,
        4 + 1 + 2 + MAC_LEN,
        "len, term, EndStream {{ seq: 5 }}, mac"
    );
    for pos in (n - MAC_LEN..n).chain([4, 5, n - MAC_LEN - 1]) {
        for bit in [0x01, 0x80] {
            let (_, mut s) = handshake_bytewise();
            let mut bad = out.clone();
            bad[pos] ^= bit;
            s.opener.push(&bad);
            assert_eq!(
                s.opener.next_msg(),
                Err(WireError::BadMac { counter: 0 }),
                "byte {pos} ^ {bit:#x}"
            );
        }
    }
    // Unchanged (positive control), and replayed (second copy: stale counter).
    let (_, mut s) = handshake_bytewise();
    s.opener.push(&out);
    s.opener.push(&out);
    assert_eq!(
        s.opener.next_msg(),
        Ok(Some((1, Msg::EndStream { seq: 5 })))
    );
    assert_eq!(s.opener.next_msg(), Err(WireError::BadMac { counter: 1 }));
}

/// Guards against a peer making the opener buffer up to 4 GiB: an impossible length is an
/// error as soon as its 4 bytes are in.
#[test]
fn g_an_oversized_length_is_too_large_without_buffering() {
    for n in [MAX_MESSAGE + 1, u32::MAX, MIN_BODY - 1, 0] {
        let (_, mut s) = handshake_bytewise();
        s.opener.push(&n.to_le_bytes());
        assert_eq!(s.opener.buffered(), 4);
        assert_eq!(
            s.opener.next_msg(),
            Err(WireError::TooLarge(n)),
            "length {n}"
        );
    }
    // The largest allowed length waits for its body (positive control).
    let (_, mut s) = handshake_bytewise();
    s.opener.push(&MAX_MESSAGE.to_le_bytes());
    assert_eq!(s.opener.next_msg(), Ok(None));
}

/// The spare's timer tracks the takeover deadline in microseconds, not only milliseconds.
#[test]
fn e_poll_timeout_is_the_takeover_deadline() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    connect(&mut s, at(0), c, term, OLD);
    s.handle_msg(at_us(300_123), c, term, Msg::Heartbeat { id: 1, seq: 5 });
    drain(&mut s);
    assert_eq!(s.poll_timeout(), Some(at_us(300_123) + ms(DETECTION_MS)));
}

/// Guards against a second takeover (or anything acted on after one) when the disk reports a
/// completion twice: the first `TermSaved` of the takeover term is the last thing that counts.
#[test]
fn e_a_duplicated_term_saved_does_not_take_over_twice() {
    let term = 3;
    let mut s = spare_with_image(spare_cfg(false), OLD, 9, term, at(0));
    s.handle_timeout(at(GRACE_MS));
    assert_eq!(disk_ops(&drain(&mut s)), vec![DiskOp::SaveTerm(term + 1)]);
    let saved = DiskDone::TermSaved {
        term: term + 1,
        result: Ok(()),
    };
    s.handle_disk(at(GRACE_MS + 1), saved.clone());
    assert_eq!(takeover(&drain(&mut s)), Some((term + 1, 9)));
    s.handle_disk(at(GRACE_MS + 2), saved);
    s.handle_disk(at(GRACE_MS + 2), DiskDone::Applied(Ok(9)));
    let out = drain(&mut s);
    assert!(out.is_empty(), "acted after the takeover: {out:?}");
}

/// Guards against leases granted on a term the primary was not admitted with (a primary's term
/// never changes on a connection; one that does is not the primary that was admitted).
#[test]
fn d_a_term_that_changes_on_a_connection_closes_it() {
    let (c, term) = (ConnId(1), 3);
    let mut s = spare_with_image(spare_cfg(false), OLD, 9, term, at(0));
    let out = connect(&mut s, at(1), c, term, OLD);
    assert!(!closed(&out, c), "{out:?}");
    s.handle_msg(at(2), c, term + 5, Msg::Heartbeat { id: 1, seq: 9 });
    let out = drain(&mut s);
    assert!(closed(&out, c), "{out:?}");
    assert!(
        !sent(&out, c)
            .iter()
            .any(|(_, m)| matches!(m, Msg::HeartbeatAck { .. })),
        "a lease was granted on the changed term: {out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// h. Durability levels
// ---------------------------------------------------------------------------------------------

/// A spare with an image of OLD at 5 (term 1), a primary of `ack` admitted on `c`, and
/// checkpoint 6 on 5 streamed with its spool operations answered: only the Persist is left.
fn spare_with_persist_running(ack: AckLevel, c: ConnId) -> Spare {
    let term = 1;
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    s.handle_open(at(0), c);
    s.handle_msg(at(0), c, term, hello_at(OLD, ack));
    drain(&mut s);
    assert_eq!(s.primary_ack(), Some(ack));
    let out = stream(&mut s, at(1), c, term, header(6, 5));
    assert!(sent(&out, c).is_empty(), "answered before the disk spoke");
    for op in disk_ops(&out) {
        if !matches!(op, DiskOp::Persist { .. }) {
            s.handle_disk(at(2), DiskDone::Discarded);
        }
    }
    assert!(sent(&drain(&mut s), c).is_empty());
    assert_eq!(s.disk_outstanding(), 1, "the Persist is running");
    s
}

fn acks(out: &[Output], c: ConnId) -> Vec<u64> {
    sent(out, c)
        .into_iter()
        .filter_map(|(_, m)| match m {
            Msg::Ack { seq } => Some(seq),
            _ => None,
        })
        .collect()
}

/// The primary states its level in its hello.
#[test]
fn h_the_hello_carries_the_durability_level() {
    for ack in [AckLevel::Received, AckLevel::Fsynced] {
        let mut cfg = link_cfg(1, OLD);
        cfg.ack = ack;
        let mut l = Link::new(cfg, at(0));
        l.handle_timeout(at(0));
        assert_eq!(events(&mut l), vec![Event::Connect]);
        l.handle_connected(at(0));
        assert_eq!(transmit(&mut l), vec![hello_at(OLD, ack)]);
    }
    assert_eq!("received".parse(), Ok(AckLevel::Received));
    assert_eq!("fsynced".parse(), Ok(AckLevel::Fsynced));
    assert!("fsync".parse::<AckLevel>().is_err());
    assert_eq!(AckLevel::default(), AckLevel::Fsynced);
}

/// Guards against an acknowledgement on receipt that waits for the fsync anyway (or that does
/// not come at all): with `Received` the Ack comes on `Verified`, before `Persisted`, exactly
/// once; `Verified` does not end the operation, so no takeover is judged until `Persisted`.
#[test]
fn h_received_is_acknowledged_on_verified_before_persisted() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_persist_running(AckLevel::Received, c);
    s.handle_disk(at(3), DiskDone::Verified { seq: 6 });
    let out = drain(&mut s);
    assert_eq!(acks(&out, c), vec![6], "{out:?}");
    assert_eq!(s.disk_outstanding(), 1, "Verified ended the Persist");
    assert_eq!(s.tip(), Some(tip(OLD, 5, term)), "not durable yet");
    // A duplicated report acknowledges nothing more.
    s.handle_disk(at(3), DiskDone::Verified { seq: 6 });
    assert!(acks(&drain(&mut s), c).is_empty());
    // The primary dies between Verified and Persisted: no takeover while the Persist runs,
    // however long it takes (the acknowledged checkpoint would not be in the image).
    s.handle_closed(at(4), c, "primary died");
    drain(&mut s);
    for t in [GRACE_MS, 1_000, 10_000] {
        s.handle_timeout(at(t));
        assert!(disk_ops(&drain(&mut s)).is_empty(), "takeover at {t} ms");
    }
    // Durable: the tip moves, no second Ack, then the apply and the takeover at 6.
    s.handle_disk(
        at(10_001),
        DiskDone::Persisted {
            seq: 6,
            result: Ok(tip(OLD, 6, term)),
        },
    );
    let out = drain(&mut s);
    assert!(acks(&out, c).is_empty(), "acknowledged twice: {out:?}");
    assert_eq!(s.tip(), Some(tip(OLD, 6, term)));
    assert_eq!(disk_ops(&out), vec![DiskOp::Apply]);
    s.handle_disk(at(10_002), DiskDone::Applied(Ok(6)));
    drain(&mut s);
    s.handle_timeout(at(10_003));
    let ops = disk_ops(&drain(&mut s));
    assert_eq!(ops, vec![DiskOp::SaveTerm(term + 1)]);
    let out = complete_all(&mut s, at(10_004), ops, OLD, term);
    assert_eq!(takeover(&out), Some((term + 1, 6)));

    // And the primary counts the Ack as its checkpoint done.
    let mut cfg = link_cfg(term, OLD);
    cfg.ack = AckLevel::Received;
    let mut l = link_up(cfg, at(0), term, ms(DETECTION_MS));
    l.start_checkpoint(at(1), header(1, 0)).expect("up");
    l.end_checkpoint(at(1), 1);
    transmit(&mut l);
    l.handle_msg(at(2), term, Msg::Ack { seq: 1 });
    assert_eq!(
        events(&mut l),
        vec![Event::Done {
            seq: 1,
            result: Ok(())
        }]
    );
}

/// Guards against `Fsynced` (the default) degrading to acknowledgement on receipt: `Verified`
/// acknowledges nothing; the Ack comes with `Persisted { Ok }`.
#[test]
fn h_fsynced_is_acknowledged_only_after_persisted() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_persist_running(AckLevel::Fsynced, c);
    s.handle_disk(at(3), DiskDone::Verified { seq: 6 });
    let out = drain(&mut s);
    assert!(acks(&out, c).is_empty(), "acked before the fsync: {out:?}");
    assert_eq!(s.disk_outstanding(), 1);
    s.handle_disk(
        at(4),
        DiskDone::Persisted {
            seq: 6,
            result: Ok(tip(OLD, 6, term)),
        },
    );
    assert_eq!(acks(&drain(&mut s), c), vec![6]);
    assert_eq!(s.disk_outstanding(), 1, "the Apply asked for");
}

/// Guards against a receipt Ack whose stream then fails to become durable being forgotten:
/// the spare must close the primary's connection (so the primary fails what is in flight and
/// sends a full checkpoint when it reconnects), must not Nack what it acknowledged, and must
/// not take over an image lacking it while it is alive — until a later checkpoint of that
/// lineage is durable.
#[test]
fn h_a_failed_fsync_after_a_receipt_ack_closes_the_connection_and_holds_the_takeover() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_persist_running(AckLevel::Received, c);
    s.handle_disk(at(3), DiskDone::Verified { seq: 6 });
    assert_eq!(acks(&drain(&mut s), c), vec![6]);
    s.handle_disk(
        at(4),
        DiskDone::Persisted {
            seq: 6,
            result: Err("Input/output error (os error 5)".into()),
        },
    );
    let out = drain(&mut s);
    assert!(closed(&out, c), "connection kept: {out:?}");
    assert!(!s.has_primary());
    assert!(
        sent(&out, c).is_empty(),
        "a Nack or Ack after a receipt Ack: {out:?}"
    );
    // One clear line: the reason the driver logs with the close (no second line saying the
    // same thing).
    let lines: Vec<&String> = out
        .iter()
        .filter_map(|o| match o {
            Output::Log(l) | Output::Close(_, l) => Some(l),
            _ => None,
        })
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("checkpoint 6 was acknowledged on receipt but could not be made durable")
            && lines[0].contains("Input/output error"),
        "{lines:?}"
    );
    assert_eq!(s.acked_not_durable(), Some(6));
    assert_eq!(s.disk_outstanding(), 0);
    // The primary's side: the Ack counted; the close fails the next checkpoint in flight and
    // the checkpoint after the reconnect is full.
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    assert!(l.take_needs_full());
    l.start_checkpoint(at(1), header(6, 5)).expect("up");
    l.end_checkpoint(at(1), 6);
    l.start_checkpoint(at(1), header(7, 6)).expect("up");
    transmit(&mut l);
    l.handle_msg(at(2), term, Msg::Ack { seq: 6 });
    l.handle_disconnected(at(3), "closed by the spare");
    let ev = events(&mut l);
    assert!(
        ev.contains(&Event::Done {
            seq: 6,
            result: Ok(())
        }) && ev.iter().any(|e| matches!(
            e,
            Event::Done {
                seq: 7,
                result: Err(_)
            }
        )),
        "{ev:?}"
    );
    assert!(l.take_needs_full());

    // No takeover however long the primary is silent (its checkpoint 6 is not here), and no
    // timer left that would make the driver spin on it.
    for t in [GRACE_MS, 1_000, 10_000] {
        s.handle_timeout(at(t));
        let out = drain(&mut s);
        assert!(disk_ops(&out).is_empty(), "took over without 6: {out:?}");
        assert!(s.poll_timeout().is_none_or(|x| x > at(t)));
    }
    // On the still empty-of-6 image, a primary of another lineage is refused as usual.
    let other = ConnId(2);
    let out = connect(&mut s, at(10_001), other, term, NEW);
    assert!(closed(&out, other) && !s.has_primary());
    // The primary reconnects and sends a full checkpoint 7: durable, the hold is released,
    // and a takeover of the dead primary follows.
    let c2 = ConnId(3);
    s.handle_open(at(10_002), c2);
    s.handle_msg(at(10_002), c2, term, hello_at(OLD, AckLevel::Received));
    drain(&mut s);
    let out = stream(&mut s, at(10_003), c2, term, header(7, 0));
    let done = complete_all(&mut s, at(10_004), disk_ops(&out), OLD, term);
    assert_eq!(acks(&done, c2), vec![7]);
    assert_eq!(s.acked_not_durable(), None);
    s.handle_closed(at(10_005), c2, "primary died");
    drain(&mut s);
    s.handle_timeout(at(20_000));
    let ops = disk_ops(&drain(&mut s));
    assert_eq!(ops, vec![DiskOp::SaveTerm(term + 1)]);
    let out = complete_all(&mut s, at(20_001), ops, OLD, term);
    assert_eq!(takeover(&out), Some((term + 1, 7)));
}

/// Guards against acknowledging on receipt what will not be applied: a stream that fails
/// validation gets no `Verified`, so no Ack — a Nack — and the connection stays; a stream that
/// cannot chain is refused before the disk is asked, whatever the level.
#[test]
fn h_no_receipt_ack_for_a_stream_that_fails_validation() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_persist_running(AckLevel::Received, c);
    s.handle_disk(
        at(3),
        DiskDone::Persisted {
            seq: 6,
            result: Err("wal/6.tmp: CRC mismatch at offset 4096".into()),
        },
    );
    let out = drain(&mut s);
    assert!(acks(&out, c).is_empty(), "{out:?}");
    assert!(matches!(
        &sent(&out, c)[..],
        [(_, Msg::Nack { seq: 6, .. })]
    ));
    assert!(!closed(&out, c) && s.has_primary());
    assert_eq!(s.acked_not_durable(), None, "nothing was acknowledged");
    // Refused at its start (base 6 was never durable): no disk work, a Nack, no Ack.
    let out = stream(&mut s, at(4), c, term, header(7, 6));
    assert!(!disk_ops(&out)
        .iter()
        .any(|o| matches!(o, DiskOp::Persist { .. })));
    assert!(matches!(
        &sent(&out, c)[..],
        [(_, Msg::Nack { seq: 7, .. })]
    ));
    // A Verified nobody asked for (no such Persist) acknowledges nothing either.
    s.handle_disk(at(5), DiskDone::Verified { seq: 7 });
    assert!(acks(&drain(&mut s), c).is_empty());
    // Positive control: the next stream that validates is acknowledged on Verified.
    let out = stream(&mut s, at(6), c, term, header(7, 5));
    for op in disk_ops(&out) {
        if !matches!(op, DiskOp::Persist { .. }) {
            s.handle_disk(at(7), DiskDone::Discarded);
        }
    }
    s.handle_disk(at(8), DiskDone::Verified { seq: 7 });
    assert_eq!(acks(&drain(&mut s), c), vec![7]);
}

/// Guards against a receipt Ack reaching a connection that is no longer the primary's (a
/// reconnect replaced it): the new session starts with a full checkpoint anyway.
#[test]
fn h_no_receipt_ack_on_a_replaced_connection() {
    let (c, term) = (ConnId(1), 1);
    let mut s = spare_with_persist_running(AckLevel::Received, c);
    let c2 = ConnId(2);
    s.handle_open(at(3), c2);
    s.handle_msg(at(3), c2, term, hello_at(OLD, AckLevel::Received));
    drain(&mut s);
    s.handle_disk(at(4), DiskDone::Verified { seq: 6 });
    let out = drain(&mut s);
    assert!(
        acks(&out, c).is_empty() && acks(&out, c2).is_empty(),
        "{out:?}"
    );
    // It fails to become durable: nothing was acknowledged, so nothing is owed or closed.
    s.handle_disk(
        at(5),
        DiskDone::Persisted {
            seq: 6,
            result: Err("No space left on device (os error 28)".into()),
        },
    );
    let out = drain(&mut s);
    assert!(!closed(&out, c2) && s.has_primary(), "{out:?}");
    assert_eq!(s.acked_not_durable(), None);
}

/// Guards against forgetting a receipt Ack of a new lineage when the old lineage's primary
/// comes back (found by the `spare_core` fuzzer): the replacement is abandoned and the image
/// moves on in its old lineage, but the new lineage's primary was told its checkpoint is safe.
/// A live spare must not take over without it; only a deliberate replacement of the lineage it
/// is owed to (or a checkpoint of that lineage) releases the hold.
#[test]
fn h_a_receipt_ack_of_a_new_lineage_is_not_forgotten_when_the_old_lineage_returns() {
    let term = 1;
    let mut s = spare_with_image(spare_cfg(true), OLD, 5, term, at(0));
    // The new lineage's primary: full checkpoint 1 (a replacement), acknowledged on receipt,
    // then its fsync fails.
    let (n, o) = (ConnId(1), ConnId(2));
    s.handle_open(at(0), n);
    s.handle_msg(at(0), n, term, hello_at(NEW, AckLevel::Received));
    drain(&mut s);
    let out = stream(&mut s, at(1), n, term, header(1, 0));
    assert!(disk_ops(&out).contains(&DiskOp::Persist {
        seq: 1,
        replace_lineage: true
    }));
    for op in disk_ops(&out) {
        if !matches!(op, DiskOp::Persist { .. }) {
            s.handle_disk(at(2), DiskDone::Discarded);
        }
    }
    s.handle_disk(at(3), DiskDone::Verified { seq: 1 });
    assert_eq!(acks(&drain(&mut s), n), vec![1]);
    s.handle_disk(
        at(4),
        DiskDone::Persisted {
            seq: 1,
            result: Err("Input/output error (os error 5)".into()),
        },
    );
    drain(&mut s);
    assert_eq!(s.acked_not_durable(), Some(1));
    // The old lineage's primary returns and checkpoints 6 on 5: durable, but it does not cover
    // the new lineage's checkpoint.
    s.handle_open(at(5), o);
    s.handle_msg(at(5), o, term, hello_at(OLD, AckLevel::Fsynced));
    drain(&mut s);
    let out = stream(&mut s, at(6), o, term, header(6, 5));
    let done = complete_all(&mut s, at(7), disk_ops(&out), OLD, term);
    assert_eq!(acks(&done, o), vec![6]);
    assert_eq!(s.tip(), Some(tip(OLD, 6, term)));
    assert_eq!(s.acked_not_durable(), Some(1), "forgotten");
    s.handle_closed(at(8), o, "both primaries died");
    drain(&mut s);
    for t in [GRACE_MS, 1_000, 10_000] {
        s.handle_timeout(at(t));
        let out = drain(&mut s);
        assert!(disk_ops(&out).is_empty(), "took over without it: {out:?}");
    }
    // The new lineage's primary reconnects and its full checkpoint 2 replaces the image: the
    // hold is released and the takeover follows, at that checkpoint.
    let n2 = ConnId(3);
    s.handle_open(at(10_001), n2);
    s.handle_msg(at(10_001), n2, term, hello_at(NEW, AckLevel::Received));
    drain(&mut s);
    let out = stream(&mut s, at(10_002), n2, term, header(2, 0));
    let done = complete_all(&mut s, at(10_003), disk_ops(&out), NEW, term);
    assert_eq!(acks(&done, n2), vec![2]);
    assert_eq!(s.acked_not_durable(), None);
    s.handle_closed(at(10_004), n2, "primary died");
    drain(&mut s);
    s.handle_timeout(at(20_000));
    let ops = disk_ops(&drain(&mut s));
    assert_eq!(ops, vec![DiskOp::SaveTerm(term + 1)]);
    let out = complete_all(&mut s, at(20_001), ops, NEW, term);
    assert_eq!(takeover(&out), Some((term + 1, 2)));
}

/// Guards against one owed checkpoint overwriting another (found by the `spare_core` fuzzer):
/// a new lineage's receipt-acked checkpoint fails to become durable, then so does one of the old
/// lineage's; the old lineage's next checkpoint covers its own loss, not the new lineage's.
#[test]
fn h_owed_checkpoints_of_two_lineages_are_both_kept() {
    let term = 1;
    let mut s = spare_with_image(spare_cfg(true), OLD, 5, term, at(0));
    // Streams `h` from a Received primary of `lineage` on `c` and fails its fsync after the
    // receipt Ack.
    let fail_after_ack = |s: &mut Spare, c: ConnId, lineage: Lineage, h: StreamHeader, t: u64| {
        s.handle_open(at(t), c);
        s.handle_msg(at(t), c, term, hello_at(lineage, AckLevel::Received));
        drain(s);
        let out = stream(s, at(t), c, term, h);
        for op in disk_ops(&out) {
            if !matches!(op, DiskOp::Persist { .. }) {
                s.handle_disk(at(t), DiskDone::Discarded);
            }
        }
        s.handle_disk(at(t), DiskDone::Verified { seq: h.seq });
        assert_eq!(acks(&drain(s), c), vec![h.seq]);
        s.handle_disk(
            at(t),
            DiskDone::Persisted {
                seq: h.seq,
                result: Err("No space left on device (os error 28)".into()),
            },
        );
        assert!(closed(&drain(s), c));
    };
    fail_after_ack(&mut s, ConnId(1), NEW, header(9, 0), 1);
    fail_after_ack(&mut s, ConnId(2), OLD, header(6, 5), 2);
    assert_eq!(s.acked_not_durable(), Some(9));
    // The old lineage's full checkpoint 7 is durable: its own loss is covered, not NEW's 9.
    let c = ConnId(3);
    s.handle_open(at(3), c);
    s.handle_msg(at(3), c, term, hello_at(OLD, AckLevel::Received));
    drain(&mut s);
    let out = stream(&mut s, at(3), c, term, header(7, 0));
    complete_all(&mut s, at(3), disk_ops(&out), OLD, term);
    assert_eq!(s.tip(), Some(tip(OLD, 7, term)));
    assert_eq!(s.acked_not_durable(), Some(9));
    s.handle_closed(at(4), c, "primary died");
    drain(&mut s);
    s.handle_timeout(at(10_000));
    let out = drain(&mut s);
    assert!(
        disk_ops(&out).is_empty(),
        "took over without NEW's 9: {out:?}"
    );
}

/// A spare started on an empty image (term 0).
fn spare_empty(cfg: SpareConfig) -> Spare {
    let rec = Recovered {
        term: 0,
        tip: None,
        applied: 0,
    };
    Spare::new(cfg, rec, at(0))
}

/// Opens `c`, says the hello of a `Received` primary of `lineage` in `term` and completes the
/// term save it may need; returns what the spare did.
fn admit_received(s: &mut Spare, now: Time, c: ConnId, term: u64, lineage: Lineage) -> Vec<Output> {
    s.handle_open(now, c);
    s.handle_msg(now, c, term, hello_at(lineage, AckLevel::Received));
    let out = drain(s);
    let mut all = out.clone();
    all.extend(complete_all(s, now, disk_ops(&out), lineage, term));
    all
}

/// Streams `h` from the admitted `Received` primary on `c`, acknowledges it on receipt, then
/// fails its fsync (the connection is closed, the checkpoint is owed).
fn receipt_ack_then_eio(s: &mut Spare, now: Time, c: ConnId, term: u64, h: StreamHeader) {
    let out = stream(s, now, c, term, h);
    for op in disk_ops(&out) {
        if !matches!(op, DiskOp::Persist { .. }) {
            s.handle_disk(now, DiskDone::Discarded);
        }
    }
    s.handle_disk(now, DiskDone::Verified { seq: h.seq });
    assert_eq!(acks(&drain(s), c), vec![h.seq]);
    s.handle_disk(
        now,
        DiskDone::Persisted {
            seq: h.seq,
            result: Err("Input/output error (os error 5)".into()),
        },
    );
    assert!(closed(&drain(s), c));
}

/// Takes the silent spare over at `t` and returns the (term, checkpoint) it resumed.
fn take_over_at(s: &mut Spare, t: Time, lineage: Lineage, term: u64) -> Option<(u64, u64)> {
    s.handle_timeout(t);
    let ops = disk_ops(&drain(s));
    let out = complete_all(s, t, ops, lineage, term);
    takeover(&out)
}

/// Guards against the old lineage's debt outliving a deliberate replacement of an empty image
/// (found by the simulator, seed 7662859): OLD's checkpoint 1, acknowledged on receipt, is lost
/// to an EIO; NEW (accepted as a new lineage) then loses one of its own the same way, and its
/// reconnection — its own debt being the newest — was taken for a primary of the image's
/// lineage, which abandoned the replacement. Its full checkpoint then became durable without
/// replacing anything, OLD's debt could never be paid, and the dead NEW was never taken over.
#[test]
fn h_an_owed_checkpoint_of_a_replaced_lineage_does_not_block_forever() {
    let term = 1;
    let mut s = spare_empty(spare_cfg(true));
    admit_received(&mut s, at(0), ConnId(1), term, OLD);
    receipt_ack_then_eio(&mut s, at(1), ConnId(1), term, header(1, 0));
    assert_eq!(s.acked_not_durable(), Some(1));
    // OLD dies; NEW replaces it (allowed) and loses its first checkpoint too.
    let out = admit_received(&mut s, at(10), ConnId(2), term, NEW);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Log(l) if l.contains("REPLACING"))),
        "{out:?}"
    );
    receipt_ack_then_eio(&mut s, at(11), ConnId(2), term, header(1, 0));
    // NEW reconnects: still the replacement (OLD's debt is what the image protects).
    admit_received(&mut s, at(20), ConnId(3), term, NEW);
    let out = stream(&mut s, at(21), ConnId(3), term, header(2, 0));
    assert!(
        disk_ops(&out).contains(&DiskOp::Persist {
            seq: 2,
            replace_lineage: true
        }),
        "{out:?}"
    );
    let done = complete_all(&mut s, at(22), disk_ops(&out), NEW, term);
    assert_eq!(acks(&done, ConnId(3)), vec![2]);
    assert_eq!(s.tip(), Some(tip(NEW, 2, term)));
    // NEW's full image is durable: OLD's 1 can never be paid, NEW's 1 is covered by 2.
    assert_eq!(s.acked_not_durable(), None);
    s.handle_closed(at(23), ConnId(3), "primary died");
    drain(&mut s);
    assert_eq!(
        take_over_at(&mut s, at(10_000), NEW, term),
        Some((term + 1, 2))
    );
}

/// Guards against a primary of another lineage being admitted as if the image were
/// unprotected while a checkpoint acknowledged on receipt is still being made durable: if that
/// fsync then failed, the newcomer's full checkpoint became durable without replacing anything
/// and the debt blocked every takeover (with `accept_new_lineage`); without it the newcomer
/// must be refused, as it would be once the checkpoint is durable.
#[test]
fn h_a_checkpoint_acknowledged_on_receipt_and_in_flight_protects_its_lineage() {
    let term = 1;
    for accept in [true, false] {
        let mut s = spare_empty(spare_cfg(accept));
        let (o, n) = (ConnId(1), ConnId(2));
        admit_received(&mut s, at(0), o, term, OLD);
        let out = stream(&mut s, at(1), o, term, header(1, 0));
        for op in disk_ops(&out) {
            if !matches!(op, DiskOp::Persist { .. }) {
                s.handle_disk(at(1), DiskDone::Discarded);
            }
        }
        s.handle_disk(at(2), DiskDone::Verified { seq: 1 });
        assert_eq!(acks(&drain(&mut s), o), vec![1]);
        // OLD dies before the fsync; NEW says hello meanwhile.
        s.handle_closed(at(3), o, "primary died");
        drain(&mut s);
        let out = admit_received(&mut s, at(4), n, term, NEW);
        if !accept {
            assert!(closed(&out, n) && !s.has_primary(), "{out:?}");
            continue;
        }
        assert!(s.has_primary(), "{out:?}");
        s.handle_disk(
            at(5),
            DiskDone::Persisted {
                seq: 1,
                result: Err("Input/output error (os error 5)".into()),
            },
        );
        drain(&mut s);
        assert_eq!(s.acked_not_durable(), Some(1));
        let out = stream(&mut s, at(6), n, term, header(1, 0));
        complete_all(&mut s, at(7), disk_ops(&out), NEW, term);
        assert_eq!(s.tip(), Some(tip(NEW, 1, term)));
        assert_eq!(
            s.acked_not_durable(),
            None,
            "OLD's debt outlived NEW's replacement"
        );
        s.handle_closed(at(8), n, "primary died");
        drain(&mut s);
        assert_eq!(
            take_over_at(&mut s, at(10_000), NEW, term),
            Some((term + 1, 1))
        );
    }
}

/// Guards against a startup grace configured below the detection time (found by the
/// simulator, seed 5015251: grace 121 ms, detection 160 ms): the spare that crashed may have
/// granted a lease just before, which runs for up to the detection time, so a restarted spare
/// that took over after the grace alone could do so while the primary may still serve.
#[test]
fn e_a_startup_grace_below_the_detection_time_holds_for_the_detection_time() {
    let term = 3;
    let cfg = SpareConfig {
        startup_grace: ms(DETECTION_MS / 5),
        ..spare_cfg(false)
    };
    let start = at(1_000);
    let mut s = spare_with_image(cfg, OLD, 9, term, start);
    assert_eq!(s.poll_timeout(), Some(start + ms(DETECTION_MS)));
    for t in [DETECTION_MS / 5, DETECTION_MS / 2, DETECTION_MS - 1] {
        s.handle_timeout(start + ms(t));
        let out = drain(&mut s);
        assert!(
            disk_ops(&out).is_empty(),
            "takeover {t} ms after a restart: {out:?}"
        );
    }
    s.handle_timeout(start + ms(DETECTION_MS));
    assert_eq!(disk_ops(&drain(&mut s)), vec![DiskOp::SaveTerm(term + 1)]);
}

// ---------------------------------------------------------------------------------------------
// h. The arbiter: takeovers only through its compare-and-swap, leases renewed there.
// ---------------------------------------------------------------------------------------------

use hotspare_proto::arbiter::{Answer, ArbiterError, PrimaryArbiter, Request, TermRecord};

fn arbiter_requests(out: &[Output]) -> Vec<(u64, Request)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Arbiter(id, r) => Some((*id, r.clone())),
            _ => None,
        })
        .collect()
}

fn record(term: u64, holder: &str, wait_ms: u64) -> TermRecord {
    TermRecord {
        term,
        holder: holder.into(),
        wait_us: wait_ms * 1000,
    }
}

/// A spare with an arbiter, an admitted primary whose last heartbeat was answered at the
/// returned time, and the claim started at `last + detection`: returns the Observe's id.
fn spare_claiming(term: u64) -> (Spare, ConnId, Time, u64) {
    let c = ConnId(1);
    let cfg = SpareConfig {
        arbiter: Some("spare-b".into()),
        ..spare_cfg(false)
    };
    let mut s = spare_with_image(cfg, OLD, 5, term, at(0));
    connect(&mut s, at(0), c, term, OLD);
    let last = at(GRACE_MS + 100);
    s.handle_msg(last, c, term, Msg::Heartbeat { id: 1, seq: 5 });
    drain(&mut s);
    s.handle_timeout(last + ms(DETECTION_MS));
    let out = drain(&mut s);
    assert!(
        disk_ops(&out).is_empty(),
        "no term saved before the arbiter: {out:?}"
    );
    assert!(closed(&out, c), "the silent primary's connection is closed");
    let reqs = arbiter_requests(&out);
    assert!(matches!(reqs[..], [(_, Request::Observe)]), "{out:?}");
    assert!(s.claiming() && !s.taking_over());
    (s, c, last + ms(DETECTION_MS), reqs[0].0)
}

/// Guards against a takeover the arbiter did not allow, and against one that skips the wait
/// `W` during which a primary alive at the arbiter renews.
#[test]
fn h_the_spare_observes_waits_w_claims_and_only_then_saves_its_term() {
    let term = 1;
    let (mut s, _, t0, id) = spare_claiming(term);
    s.handle_arbiter(
        t0 + ms(1),
        id,
        Ok(Answer::Observed {
            term: Some((5, record(term, "a pid 9", 45))),
            alive_rev: 7,
        }),
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(t0 + ms(46)));
    s.handle_timeout(t0 + ms(46) - Duration::from_nanos(1));
    assert!(drain(&mut s).is_empty(), "claimed before W was over");
    s.handle_timeout(t0 + ms(46));
    let out = drain(&mut s);
    let reqs = arbiter_requests(&out);
    let want = Request::Claim {
        term_rev: 5,
        alive_rev: 7,
        record: record(term + 1, "spare-b#2", 45),
    };
    assert_eq!(reqs.iter().map(|r| &r.1).collect::<Vec<_>>(), vec![&want]);
    // A primary that reconnects meanwhile is granted nothing.
    let c2 = ConnId(2);
    s.handle_open(t0 + ms(47), c2);
    s.handle_msg(t0 + ms(47), c2, term, hello(OLD));
    s.handle_msg(t0 + ms(47), c2, term, Msg::Heartbeat { id: 9, seq: 5 });
    let out = drain(&mut s);
    assert!(closed(&out, c2) && sent(&out, c2).is_empty(), "{out:?}");
    // Won: the term is saved, then the takeover.
    s.handle_arbiter(t0 + ms(48), reqs[0].0, Ok(Answer::Claimed));
    assert_eq!(disk_ops(&drain(&mut s)), vec![DiskOp::SaveTerm(term + 1)]);
    s.handle_disk(
        t0 + ms(49),
        DiskDone::TermSaved {
            term: term + 1,
            result: Ok(()),
        },
    );
    assert_eq!(takeover(&drain(&mut s)), Some((term + 1, 5)));
}

/// Guards against a takeover of a primary that is cut off from its spare but alive at the
/// arbiter (it renewed, so the swap fails): the spare goes back to granting.
#[test]
fn h_a_lost_claim_is_no_takeover_and_the_spare_grants_again() {
    let term = 2;
    let (mut s, _, t0, id) = spare_claiming(term);
    s.handle_arbiter(
        t0,
        id,
        Ok(Answer::Observed {
            term: Some((3, record(term, "a pid 9", 20))),
            alive_rev: 4,
        }),
    );
    s.handle_timeout(t0 + ms(20));
    let claim = arbiter_requests(&drain(&mut s))[0].0;
    s.handle_arbiter(t0 + ms(21), claim, Ok(Answer::NotClaimed));
    let out = drain(&mut s);
    assert!(
        disk_ops(&out).is_empty() && takeover(&out).is_none(),
        "{out:?}"
    );
    assert!(!s.claiming() && !s.taking_over());
    // No new attempt within the start-up grace (the primary may reconnect meanwhile) ...
    s.handle_timeout(t0 + ms(21 + GRACE_MS) - Duration::from_nanos(1));
    assert!(arbiter_requests(&drain(&mut s)).is_empty());
    // ... and a primary that does is admitted and granted leases again.
    let c2 = ConnId(2);
    connect(&mut s, t0 + ms(30), c2, term, OLD);
    s.handle_msg(t0 + ms(31), c2, term, Msg::Heartbeat { id: 3, seq: 5 });
    let out = drain(&mut s);
    assert!(sent(&out, c2).contains(&(term, Msg::HeartbeatAck { id: 3, seq: 5 })));
}

/// Guards against the outcome of an unanswered claim being guessed: the spare reads the term
/// key again, grants nothing meanwhile, and takes over only if its own record is there.
#[test]
fn h_an_unanswered_claim_is_resolved_by_reading_the_term_key() {
    for applied in [true, false] {
        let term = 1;
        let (mut s, _, t0, id) = spare_claiming(term);
        s.handle_arbiter(
            t0,
            id,
            Ok(Answer::Observed {
                term: Some((5, record(term, "a pid 9", 10))),
                alive_rev: 0,
            }),
        );
        s.handle_timeout(t0 + ms(10));
        let claim = arbiter_requests(&drain(&mut s))[0].0;
        s.handle_arbiter(t0 + ms(200), claim, Err(ArbiterError::Timeout(190)));
        let out = drain(&mut s);
        let reqs = arbiter_requests(&out);
        assert!(matches!(reqs[..], [(_, Request::Observe)]), "{out:?}");
        assert!(s.claiming() && disk_ops(&out).is_empty());
        // Still nothing granted.
        let c2 = ConnId(2);
        s.handle_open(t0 + ms(201), c2);
        s.handle_msg(t0 + ms(201), c2, term, hello(OLD));
        assert!(closed(&drain(&mut s), c2));
        let held = if applied {
            record(term + 1, "spare-b#2", 10)
        } else {
            record(term, "a pid 9", 10)
        };
        s.handle_arbiter(
            t0 + ms(202),
            reqs[0].0,
            Ok(Answer::Observed {
                term: Some((if applied { 6 } else { 5 }, held)),
                alive_rev: 0,
            }),
        );
        let ops = disk_ops(&drain(&mut s));
        if applied {
            assert_eq!(ops, vec![DiskOp::SaveTerm(term + 1)]);
        } else {
            assert!(ops.is_empty() && !s.claiming() && !s.taking_over());
        }
    }
}

/// Guards against a spare that, having learnt of a newer term at the arbiter (held by
/// another node), takes the image over anyway.
#[test]
fn h_a_newer_term_held_by_another_node_is_learnt_not_taken() {
    let term = 1;
    let (mut s, _, t0, id) = spare_claiming(term);
    s.handle_arbiter(
        t0,
        id,
        Ok(Answer::Observed {
            term: Some((9, record(4, "c", 45))),
            alive_rev: 0,
        }),
    );
    let out = drain(&mut s);
    assert_eq!(disk_ops(&out), vec![DiskOp::SaveTerm(4)], "{out:?}");
    assert!(!s.claiming() && !s.taking_over() && s.term() == 4);
    s.handle_disk(
        t0 + ms(1),
        DiskDone::TermSaved {
            term: 4,
            result: Ok(()),
        },
    );
    assert!(takeover(&drain(&mut s)).is_none());
}

fn arbiter_link(term: u64) -> LinkConfig {
    LinkConfig {
        arbiter: Some(PrimaryArbiter {
            node: "a pid 4242".into(),
            lease: ms(40),
            wait: ms(45),
            renew_every: ms(10),
            adopt: None,
        }),
        ..link_cfg(term, OLD)
    }
}

fn link_arbiter_requests(l: &mut Link) -> Vec<(u64, Request)> {
    std::iter::from_fn(|| l.poll_arbiter()).collect()
}

/// Guards against a primary that stops serving when only its spare is gone (the arbiter
/// renews it), against renewals while the spare answers (they would load etcd for nothing),
/// and against a primary that goes on serving once its term key has changed.
#[test]
fn h_the_primary_serves_on_renewals_while_its_spare_is_silent_and_stops_when_the_key_moves() {
    let term = 3;
    let mut l = link_up(arbiter_link(term), at(0), term, ms(DETECTION_MS));
    let reqs = link_arbiter_requests(&mut l);
    assert!(
        matches!(&reqs[..], [(_, Request::Register { record: r, adopt: None })] if r.term == term),
        "{reqs:?}"
    );
    l.handle_arbiter(
        at(1),
        reqs[0].0,
        Ok(Answer::Registered {
            term_rev: 11,
            record: record(term, "a pid 4242", 45),
        }),
    );
    assert!(l.arbiter_registered());
    // The spare answers every heartbeat: no renewal is asked for.
    for t in (0..100).step_by(10) {
        let id = heartbeat(&mut l, at(t));
        l.handle_msg(at(t), term, Msg::HeartbeatAck { id, seq: 0 });
        assert!(
            link_arbiter_requests(&mut l).is_empty(),
            "renewal at {t} ms"
        );
    }
    // Silence: the heartbeat lease (from the beat sent at 90 ms) ends at 130 ms; a renewal is
    // asked for once less than L − 2H = 20 ms of it is left.
    l.handle_timeout(at(105));
    transmit(&mut l);
    assert!(link_arbiter_requests(&mut l).is_empty());
    l.handle_timeout(at(111));
    transmit(&mut l);
    let reqs = link_arbiter_requests(&mut l);
    assert_eq!(
        reqs.iter().map(|r| &r.1).collect::<Vec<_>>(),
        vec![&Request::Renew { term_rev: 11 }]
    );
    l.handle_arbiter(at(112), reqs[0].0, Ok(Answer::Renewed));
    // Serving past the heartbeat lease, until 111 + 40 ms.
    assert!(l.may_serve(at(150)));
    assert!(!l.may_serve(at(151)));
    // The term key changed (a takeover): fenced at once, for good.
    l.handle_timeout(at(121));
    transmit(&mut l);
    let reqs = link_arbiter_requests(&mut l);
    assert_eq!(reqs.len(), 1);
    l.handle_arbiter(
        at(122),
        reqs[0].0,
        Ok(Answer::NotRenewed {
            record: Some(record(term + 1, "spare-b", 45)),
        }),
    );
    assert!(events(&mut l).iter().any(|e| matches!(e, Event::Fenced(_))));
    assert!(!l.may_serve(at(123)));
}

/// Guards against a primary serving in a term the arbiter does not hold (a takeover it missed
/// while it was down, or a key of another history).
#[test]
fn h_registration_against_another_term_fences_the_primary() {
    let term = 1;
    let mut l = link_up(arbiter_link(term), at(0), term, ms(DETECTION_MS));
    let reqs = link_arbiter_requests(&mut l);
    l.handle_arbiter(
        at(1),
        reqs[0].0,
        Ok(Answer::Registered {
            term_rev: 20,
            record: record(2, "spare-b", 45),
        }),
    );
    assert!(events(&mut l).iter().any(|e| matches!(e, Event::Fenced(_))));
    assert!(!l.may_serve(at(1)) && !l.arbiter_registered());
}

/// A link registered at 0 ms whose spare never answers a heartbeat: renewals are needed from
/// the start, one every 10 ms (`La` = 40 ms).
fn registered_silent_link(term: u64) -> Link {
    let mut l = link_up(arbiter_link(term), at(0), term, ms(DETECTION_MS));
    let reqs = link_arbiter_requests(&mut l);
    l.handle_arbiter(
        at(0),
        reqs[0].0,
        Ok(Answer::Registered {
            term_rev: 11,
            record: record(term, "a pid 4242", 45),
        }),
    );
    assert!(l.arbiter_registered());
    events(&mut l);
    l
}

/// The renewals asked for at `now` (timers run, messages to the spare dropped).
fn renewals_at(l: &mut Link, now: Time) -> Vec<u64> {
    l.handle_timeout(now);
    transmit(l);
    link_arbiter_requests(l)
        .into_iter()
        .map(|(id, r)| {
            assert_eq!(r, Request::Renew { term_rev: 11 });
            id
        })
        .collect()
}

fn arbiter_lines(l: &mut Link) -> Vec<String> {
    events(l)
        .into_iter()
        .filter_map(|e| match e {
            Event::Arbiter(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// Guards against a primary that loses its lease to one slow renewal (a starved etcd took
/// 170 ms over one) while the renewals sent after it are answered: with one request in flight
/// nothing else went out meanwhile, and the lease lapsed. Good side: the late answer, when it
/// comes, changes nothing, and once nothing is answered the lease does lapse.
#[test]
fn h_one_slow_renewal_does_not_cost_the_lease_while_later_ones_are_answered() {
    let term = 3;
    let mut l = registered_silent_link(term);
    let mut stuck = None;
    let mut sent = Vec::new();
    for t in 0..=120 {
        for id in renewals_at(&mut l, at(t)) {
            sent.push((id, t));
            // The second renewal (sent at 10 ms) is not answered for 100 ms.
            if sent.len() == 2 {
                stuck = Some(id);
            } else {
                l.handle_arbiter(at(t), id, Ok(Answer::Renewed));
            }
        }
        assert!(l.may_serve(at(t)), "lease lost at {t} ms (sent {sent:?})");
    }
    assert_eq!(sent.len(), 13, "one renewal every 10 ms: {sent:?}");
    assert!(!events(&mut l).contains(&Event::LeaseLost));
    // Its answer now: anchored at 10 ms, it extends nothing.
    l.handle_arbiter(at(121), stuck.expect("sent"), Ok(Answer::Renewed));
    assert!(l.may_serve(at(159)) && !l.may_serve(at(160)));
    // Nothing answered from now on: the lease (last renewal sent at 120 ms) lapses at 160.
    for t in 121..=170 {
        renewals_at(&mut l, at(t));
        assert_eq!(l.may_serve(at(t)), t < 160, "at {t} ms");
    }
}

/// Guards against a lease anchored at the answer rather than at the send time, and against an
/// older renewal's answer, coming after a newer one's, shortening the lease: each answer
/// extends the lease to its own send time + `La` at most, and never shortens it.
#[test]
fn h_a_late_answer_extends_the_lease_only_to_its_own_send_time_plus_la() {
    let term = 3;
    let mut l = registered_silent_link(term);
    let mut sent = Vec::new();
    for t in 0..=35 {
        sent.extend(renewals_at(&mut l, at(t)).into_iter().map(|id| (id, t)));
    }
    // Four renewals out at once (0, 10, 20 and 30 ms), none answered yet.
    assert_eq!(
        sent.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![0, 10, 20, 30]
    );
    // The one sent at 0 ms, answered 35 ms late: the lease ends at 40 ms, not 75.
    l.handle_arbiter(at(35), sent[0].0, Ok(Answer::Renewed));
    assert!(l.may_serve(at(39)) && !l.may_serve(at(40)));
    // The one sent at 20 ms, then the one sent at 10 ms: 60 ms, not 50.
    l.handle_arbiter(at(36), sent[2].0, Ok(Answer::Renewed));
    l.handle_arbiter(at(37), sent[1].0, Ok(Answer::Renewed));
    assert!(l.may_serve(at(59)) && !l.may_serve(at(60)));
    // Each id counts once: a second answer to one is ignored.
    l.handle_arbiter(at(38), sent[3].0, Ok(Answer::Renewed));
    l.handle_arbiter(at(38), sent[3].0, Ok(Answer::Renewed));
    assert!(l.may_serve(at(69)) && !l.may_serve(at(70)));
}

/// Guards against an error of one renewal ending a lease the others renew, against an outage
/// reported more than once (or for an error older than an answer), and against an arbiter that
/// stalls being sent renewals without bound: at most four are out, and the oldest is given up
/// (reported as an outage) only once it can extend nothing; its late answer is ignored.
#[test]
fn h_errors_and_stalls_with_several_renewals_in_flight() {
    let term = 3;
    let mut l = registered_silent_link(term);
    let r0 = renewals_at(&mut l, at(0));
    let r10 = renewals_at(&mut l, at(10));
    l.handle_arbiter(at(11), r10[0], Ok(Answer::Renewed));
    // An error older than an answer: the arbiter answered since, nothing to report.
    l.handle_arbiter(at(12), r0[0], Err(ArbiterError::Timeout(12)));
    assert!(arbiter_lines(&mut l).is_empty());
    assert!(l.may_serve(at(49)));
    let r20 = renewals_at(&mut l, at(20));
    let r30 = renewals_at(&mut l, at(30));
    l.handle_arbiter(at(31), r20[0], Err(ArbiterError::Failed("reset".into())));
    l.handle_arbiter(at(32), r30[0], Err(ArbiterError::Failed("reset".into())));
    let lines = arbiter_lines(&mut l);
    assert!(
        matches!(&lines[..], [one] if one.contains("reset")),
        "{lines:?}"
    );
    assert!(l.may_serve(at(49)), "errors ended the lease");
    let r40 = renewals_at(&mut l, at(40));
    l.handle_arbiter(at(41), r40[0], Ok(Answer::Renewed));
    assert_eq!(arbiter_lines(&mut l), vec!["the arbiter answers again"]);
    assert!(l.may_serve(at(79)) && !l.may_serve(at(80)));

    // A stall: renewals at 50, 60, 70, 80 fill the slots; none at 90 (the one of 50 can still
    // renew until 90); at 90 it is given up and the next goes.
    let mut out = Vec::new();
    for t in 41..90 {
        out.extend(renewals_at(&mut l, at(t)).into_iter().map(|id| (id, t)));
    }
    assert_eq!(
        out.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![50, 60, 70, 80]
    );
    assert!(arbiter_lines(&mut l).is_empty());
    let r90 = renewals_at(&mut l, at(90));
    assert_eq!(r90.len(), 1);
    let lines = arbiter_lines(&mut l);
    assert!(
        matches!(&lines[..], [one] if one.contains("did not answer")),
        "{lines:?}"
    );
    // The given-up one's late answer is ignored; the newer ones still count.
    l.handle_arbiter(at(91), out[0].0, Ok(Answer::Renewed));
    assert!(
        arbiter_lines(&mut l).is_empty(),
        "a given-up answer ended the outage"
    );
    l.handle_arbiter(at(92), out[3].0, Ok(Answer::Renewed));
    assert_eq!(arbiter_lines(&mut l), vec!["the arbiter answers again"]);
    assert!(l.may_serve(at(119)) && !l.may_serve(at(120)));
}

/// Guards against renewals (or a second registration) sent before the registration is
/// answered: nothing is known to renew yet.
#[test]
fn h_the_registration_goes_alone() {
    let term = 3;
    let mut l = link_up(arbiter_link(term), at(0), term, ms(DETECTION_MS));
    let reqs = link_arbiter_requests(&mut l);
    assert!(matches!(&reqs[..], [(_, Request::Register { .. })]));
    for t in 1..300 {
        l.handle_timeout(at(t));
        transmit(&mut l);
        assert!(link_arbiter_requests(&mut l).is_empty(), "at {t} ms");
    }
    l.handle_arbiter(at(300), reqs[0].0, Err(ArbiterError::Timeout(200)));
    l.handle_timeout(at(300));
    let again = link_arbiter_requests(&mut l);
    assert!(
        matches!(&again[..], [(id, Request::Register { .. })] if *id != reqs[0].0),
        "{again:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// i. Planned switchover: stop serving, hand over after a later checkpoint, take over at once.
// ---------------------------------------------------------------------------------------------

/// Guards against a primary that goes on serving once asked to hand over, one that hands over
/// before a checkpoint taken after it stopped is acknowledged (interval-mode writes acknowledged
/// since the previous checkpoint would be lost), and one that stays stopped when the
/// switchover cannot finish.
#[test]
fn i_the_primary_stops_at_once_and_hands_over_after_its_final_checkpoint() {
    let term = 1;
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    let id = heartbeat(&mut l, at(0));
    l.handle_msg(at(0), term, Msg::HeartbeatAck { id, seq: 0 });
    assert!(l.may_serve(at(1)));
    // Checkpoint 1 was captured before the request.
    l.start_checkpoint(at(1), header(1, 0)).unwrap();
    l.end_checkpoint(at(1), 1);
    l.handle_msg(at(2), term, Msg::HandOver);
    assert!(events(&mut l).contains(&Event::HandOverRequested));
    assert!(!l.may_serve(at(2)), "serving must stop at once");
    // Checkpoint 1's ack completes nothing.
    transmit(&mut l);
    l.handle_msg(at(3), term, Msg::Ack { seq: 1 });
    assert!(!transmit(&mut l).contains(&Msg::HandedOver { seq: 1 }));
    // Checkpoint 2, captured after: final.
    l.start_checkpoint(at(4), header(2, 1)).unwrap();
    l.mark_final(2);
    l.end_checkpoint(at(4), 2);
    transmit(&mut l);
    l.handle_msg(at(5), term, Msg::Ack { seq: 2 });
    let sent = transmit(&mut l);
    assert!(sent.contains(&Msg::HandedOver { seq: 2 }), "{sent:?}");
    assert!(events(&mut l).contains(&Event::HandedOver { seq: 2 }));
    assert!(!l.may_serve(at(6)) && l.fenced().is_some());
    // A lost connection before the end gives it up: serving again as the leases allow.
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    l.handle_msg(at(1), term, Msg::HandOver);
    events(&mut l);
    l.handle_disconnected(at(2), "reset");
    assert!(events(&mut l)
        .iter()
        .any(|e| matches!(e, Event::HandOverAborted(_))));
    assert!(!l.retiring() && l.fenced().is_none());
}

/// Guards against a spare that takes over on the request alone (the primary may still be
/// serving), and against one that waits for the primary's silence after it handed over.
#[test]
fn i_the_spare_takes_over_when_the_primary_hands_over_not_before() {
    let (c, op, term) = (ConnId(1), ConnId(9), 1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
    // No primary: refused.
    s.handle_open(at(1), op);
    s.handle_msg(at(1), op, 0, Msg::SwitchoverRequest);
    let out = drain(&mut s);
    assert!(
        matches!(sent(&out, op)[..], [(_, Msg::Refused { .. })]),
        "{out:?}"
    );
    connect(&mut s, at(2), c, term, OLD);
    let last = at(GRACE_MS + 100);
    s.handle_msg(last, c, term, Msg::Heartbeat { id: 1, seq: 5 });
    drain(&mut s);
    let op2 = ConnId(10);
    s.handle_open(last, op2);
    s.handle_msg(last, op2, 0, Msg::SwitchoverRequest);
    let out = drain(&mut s);
    assert!(
        sent(&out, c).iter().any(|(_, m)| *m == Msg::HandOver),
        "{out:?}"
    );
    assert!(matches!(
        sent(&out, op2)[..],
        [(_, Msg::SwitchoverStarted { pid: 4242 })]
    ));
    // The request alone: no takeover, even past the detection time while heartbeats go on.
    s.handle_msg(last + ms(10), c, term, Msg::Heartbeat { id: 2, seq: 5 });
    s.handle_timeout(last + ms(20));
    assert!(disk_ops(&drain(&mut s)).is_empty() && !s.taking_over());
    // Handed over (its final checkpoint is the durable tip): the term at once.
    s.handle_msg(last + ms(21), c, term, Msg::HandedOver { seq: 5 });
    let out = drain(&mut s);
    assert_eq!(disk_ops(&out), vec![DiskOp::SaveTerm(term + 1)], "{out:?}");
    s.handle_disk(
        last + ms(22),
        DiskDone::TermSaved {
            term: term + 1,
            result: Ok(()),
        },
    );
    assert_eq!(takeover(&drain(&mut s)), Some((term + 1, 5)));
}

// ---------------------------------------------------------------------------------------------
// j. Output commit
// ---------------------------------------------------------------------------------------------

/// Sends checkpoint `h` whole (one chunk) on an up link.
fn send_whole(l: &mut Link, now: Time, h: StreamHeader) {
    l.start_checkpoint(now, h).expect("up");
    l.send_chunk(now, h.seq, vec![0; 16]);
    l.end_checkpoint(now, h.seq);
    transmit(l);
}

/// An acknowledged incremental checkpoint was validated on its base, so the spare holds the
/// base: an older checkpoint whose own Ack did not come is acknowledged with it, after it (its
/// ticket never reads as failed in between), and the next checkpoint need not be full. One the
/// acknowledged checkpoint does not build on (it is full) was lost.
#[test]
fn j_an_acked_incremental_acknowledges_its_base_after_itself() {
    let term = 1;
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    assert!(l.take_needs_full());
    send_whole(&mut l, at(1), header(1, 0));
    send_whole(&mut l, at(2), header(2, 1));
    send_whole(&mut l, at(3), header(3, 2));
    // The spare's Ack of 1 and 2 never came; 3 builds on 2, which builds on 1.
    l.handle_msg(at(10), term, Msg::Ack { seq: 3 });
    assert_eq!(
        events(&mut l),
        vec![
            Event::Done {
                seq: 3,
                result: Ok(())
            },
            Event::Done {
                seq: 1,
                result: Ok(())
            },
            Event::Done {
                seq: 2,
                result: Ok(())
            },
        ]
    );
    assert!(!l.take_needs_full(), "nothing was lost: no full checkpoint");
    assert_eq!(l.seqs(), (3, 3));

    // Good side of the rule: 5 is full, so it says nothing of 4, which was lost (reported
    // after 5, whose Ok covers its ticket anyway).
    send_whole(&mut l, at(20), header(4, 3));
    send_whole(&mut l, at(21), header(5, 0));
    l.handle_msg(at(30), term, Msg::Ack { seq: 5 });
    let ev = events(&mut l);
    assert_eq!(
        ev[0],
        Event::Done {
            seq: 5,
            result: Ok(())
        }
    );
    assert!(
        matches!(&ev[1..], [Event::Done { seq: 4, result: Err(why) }] if why.contains("skipped")),
        "{ev:?}"
    );
}

/// A checkpoint being sent has a deadline too: the driver hands over its next chunk only once
/// the transport took the previous one, so a spare that stops reading in the middle of a
/// stream stops the chunks; the ack timeout after the last one, the checkpoint fails and the
/// connection (useless: heartbeats wait behind the stream) is closed. Chunks that keep coming,
/// however long the whole stream takes, keep it alive.
#[test]
fn j_a_stream_the_spare_stops_reading_fails_within_the_ack_timeout() {
    let term = 1;
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    // Good side: a stream of 250 ms (ack timeout 100 ms), a chunk every 50 ms.
    l.start_checkpoint(at(0), header(1, 0)).expect("up");
    for i in 1..=5 {
        l.handle_timeout(at(i * 50 - 1));
        l.send_chunk(at(i * 50), 1, vec![0; 16]);
        transmit(&mut l);
    }
    l.handle_timeout(at(251));
    assert!(events(&mut l).is_empty(), "a stream still moving failed");
    l.end_checkpoint(at(260), 1);
    l.handle_msg(at(270), term, Msg::Ack { seq: 1 });
    assert_eq!(
        events(&mut l),
        vec![Event::Done {
            seq: 1,
            result: Ok(())
        }]
    );
    // Checkpoint 2: one chunk at 300, then the spare reads nothing more.
    l.start_checkpoint(at(300), header(2, 1)).expect("up");
    l.send_chunk(at(300), 2, vec![0; 16]);
    transmit(&mut l);
    assert!(l.poll_timeout().is_some_and(|t| t <= at(400)));
    l.handle_timeout(at(399));
    assert!(
        !events(&mut l)
            .iter()
            .any(|e| matches!(e, Event::Done { .. } | Event::Close(_))),
        "failed before its deadline"
    );
    l.handle_timeout(at(400));
    let ev = events(&mut l);
    assert!(
        matches!(&ev[..], [Event::Done { seq: 2, result: Err(why) }, Event::Close(_)] if why.contains("stopped reading")),
        "{ev:?}"
    );
    l.handle_disconnected(at(400), "closed");
    assert!(
        events(&mut l)
            .iter()
            .all(|e| !matches!(e, Event::Done { .. })),
        "checkpoint 2 ended twice"
    );
    assert!(l.take_needs_full());
}

/// Guards against the one-message stream meaning anything else than its three messages: the
/// spare does exactly what `StreamStart`, one `Chunk` and `EndStream` make it do — the same
/// disk operations and answers for an accepted stream, the same Nack for a refused one — and
/// the link hands it out as one message whose acknowledgement completes it, or whose deadline
/// fails it (the connection kept), as for a streamed one.
#[test]
fn k_a_stream_in_one_message_is_its_start_chunk_and_end() {
    let term = 1;
    let run = |whole: bool, h: StreamHeader| {
        let c = ConnId(1);
        let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
        let out = connect(&mut s, at(0), c, term, OLD);
        assert!(matches!(&sent(&out, c)[..], [(_, Msg::Status { .. })]));
        let bytes = vec![9, 8, 7];
        if whole {
            s.handle_msg(at(1), c, term, Msg::Stream { header: h, bytes });
        } else {
            s.handle_msg(at(1), c, term, Msg::StreamStart(h));
            s.handle_msg(at(1), c, term, Msg::Chunk { seq: h.seq, bytes });
            s.handle_msg(at(1), c, term, Msg::EndStream { seq: h.seq });
        }
        let out = drain(&mut s);
        let ops = disk_ops(&out);
        let answers = sent(&out, c);
        // And the disk's answers give the same acknowledgement.
        let after = complete_all(&mut s, at(2), ops.clone(), OLD, term);
        (ops, answers, sent(&after, c))
    };
    // Accepted: spooled, persisted, acknowledged.
    let one = run(true, header(6, 5));
    assert_eq!(one, run(false, header(6, 5)));
    assert!(
        matches!(
            &one.0[..],
            [
                DiskOp::SpoolStart { .. },
                DiskOp::Spool { seq: 6, .. },
                DiskOp::Persist { seq: 6, .. }
            ]
        ),
        "{one:?}"
    );
    assert!(
        one.2.iter().any(|(_, m)| *m == Msg::Ack { seq: 6 }),
        "{one:?}"
    );
    // Refused at its start (not on the image's tip): nothing spooled, Nacked.
    let one = run(true, header(8, 7));
    assert_eq!(one, run(false, header(8, 7)));
    assert!(one.0.is_empty(), "{one:?}");
    assert!(
        matches!(&one.1[..], [(_, Msg::Nack { seq: 8, .. })]),
        "{one:?}"
    );

    // The link: one message, acknowledged.
    let mut l = link_up(link_cfg(term, OLD), at(0), term, ms(DETECTION_MS));
    assert!(l.take_needs_full());
    l.send_checkpoint(at(1), header(1, 0), vec![1, 2, 3])
        .expect("up");
    assert_eq!(
        transmit(&mut l),
        vec![Msg::Stream {
            header: header(1, 0),
            bytes: vec![1, 2, 3]
        }]
    );
    assert_eq!(l.seqs(), (1, 0));
    l.handle_msg(at(5), term, Msg::Ack { seq: 1 });
    assert_eq!(
        events(&mut l),
        vec![Event::Done {
            seq: 1,
            result: Ok(())
        }]
    );
    // Not acknowledged within the ack timeout (100 ms): failed, the connection stays, the
    // next checkpoint is full.
    l.send_checkpoint(at(10), header(2, 1), vec![4])
        .expect("up");
    transmit(&mut l);
    l.handle_timeout(at(109));
    assert!(!events(&mut l)
        .iter()
        .any(|e| matches!(e, Event::Done { .. })));
    l.handle_timeout(at(110));
    let ev = events(&mut l);
    assert!(
        matches!(
            &ev[..],
            [Event::Done {
                seq: 2,
                result: Err(_)
            }]
        ),
        "{ev:?}"
    );
    assert!(l.is_up() && l.take_needs_full());
    // A stream being streamed is abandoned by a whole one that starts after it.
    l.start_checkpoint(at(120), header(3, 0)).expect("up");
    l.send_checkpoint(at(121), header(4, 0), vec![5])
        .expect("up");
    let ev = events(&mut l);
    assert!(
        matches!(
            &ev[..],
            [Event::Done {
                seq: 3,
                result: Err(_)
            }]
        ),
        "{ev:?}"
    );
    let data: Vec<Msg> = transmit(&mut l)
        .into_iter()
        .filter(|m| !matches!(m, Msg::Heartbeat { .. }))
        .collect();
    assert_eq!(
        data,
        vec![
            Msg::StreamStart(header(3, 0)),
            Msg::Stream {
                header: header(4, 0),
                bytes: vec![5]
            }
        ]
    );
    // Refused without a connection, as a streamed one is.
    l.handle_disconnected(at(130), "gone");
    events(&mut l);
    assert!(l.send_checkpoint(at(131), header(5, 4), vec![6]).is_err());
}

/// Guards against a term that wraps. Terms only go up, and a takeover's term is one above the
/// highest seen; a hello stamped with `u64::MAX` (the envelope's term is any varint a key
/// holder writes, and a resumed primary takes the larger of its image's and its configured
/// term) must not lead the spare to take over with a term that wrapped to 0 — below the term
/// of the primary it declared dead, which would then never be fenced.
#[test]
fn k_a_term_at_the_top_of_the_range_never_wraps_a_takeover() {
    let c = ConnId(1);
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, 1, at(0));
    let mut all = connect(&mut s, at(0), c, u64::MAX, OLD);
    all.extend(complete_all(&mut s, at(1), disk_ops(&all), OLD, 1));
    s.handle_closed(at(2), c, "primary died");
    for t in [1_000, 2_000, 3_000] {
        s.handle_timeout(at(t));
        let out = drain(&mut s);
        all.extend(complete_all(&mut s, at(t + 1), disk_ops(&out), OLD, 1));
        all.extend(out);
    }
    let saved: Vec<u64> = disk_ops(&all)
        .into_iter()
        .filter_map(|d| match d {
            DiskOp::SaveTerm(t) => Some(t),
            _ => None,
        })
        .collect();
    assert!(
        saved.windows(2).all(|w| w[1] > w[0]),
        "terms saved out of order: {saved:?}"
    );
    if let Some((term, _)) = takeover(&all) {
        assert!(term > 1 && term != 0, "took over with term {term}");
        assert!(
            saved.iter().all(|t| *t <= term),
            "took over with term {term} below a term it saved ({saved:?})"
        );
    }
}

/// Drives a spare with no primary the way a driver does, from `from` to `to`: every output
/// drained, every `SaveTerm` answered `Ok`, every `Observe` answered `observed`, every claim
/// `Claimed`, and `handle_timeout` called at each `poll_timeout`. Returns the outputs and the
/// number of timer wake-ups (a past deadline returned again and again would spin: bounded).
fn drive_alone(
    s: &mut Spare,
    from: Time,
    to: Time,
    observed: &dyn Fn() -> Answer,
) -> (Vec<Output>, usize) {
    let mut all = Vec::new();
    let mut now = from;
    let mut wakeups = 0;
    loop {
        let out = drain(s);
        let answered = !out.is_empty();
        for o in &out {
            match o {
                Output::Disk(DiskOp::SaveTerm(t)) => s.handle_disk(
                    now,
                    DiskDone::TermSaved {
                        term: *t,
                        result: Ok(()),
                    },
                ),
                Output::Disk(op) => panic!("unexpected disk operation {op:?}"),
                Output::Arbiter(id, Request::Observe) => s.handle_arbiter(now, *id, Ok(observed())),
                Output::Arbiter(id, Request::Claim { .. }) => {
                    s.handle_arbiter(now, *id, Ok(Answer::Claimed))
                }
                _ => {}
            }
        }
        all.extend(out);
        if answered {
            continue;
        }
        match s.poll_timeout() {
            Some(t) if t <= to => {
                wakeups += 1;
                assert!(wakeups < 100, "spinning on the timer: {t:?} (now {now:?})");
                now = now.max(t);
                s.handle_timeout(now);
            }
            _ => break,
        }
    }
    (all, wakeups)
}

fn logs(out: &[Output]) -> Vec<&str> {
    out.iter()
        .filter_map(|o| match o {
            Output::Log(l) => Some(l.as_str()),
            _ => None,
        })
        .collect()
}

fn saved_terms(out: &[Output]) -> Vec<u64> {
    disk_ops(out)
        .into_iter()
        .filter_map(|d| match d {
            DiskOp::SaveTerm(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// Guards against a takeover with a term that wrapped to 0 when the spare's own term is the
/// last one (a tampered term file, or a tip written in term `u64::MAX`): `self.term + 1`
/// wrapped in release builds, so the spare saved term 0 and took over below every term. The
/// spare must refuse (stay a spare), say so once, and not leave a past deadline behind.
#[test]
fn l_a_saved_term_at_u64_max_refuses_the_takeover_once_and_does_not_spin() {
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, u64::MAX, at(0));
    let (out, wakeups) = drive_alone(&mut s, at(0), at(10_000), &|| unreachable!());
    assert!(saved_terms(&out).is_empty(), "saved a term: {out:?}");
    assert_eq!(takeover(&out), None, "{out:?}");
    let refused: Vec<_> = logs(&out)
        .into_iter()
        .filter(|l| l.contains("NOT taking over"))
        .collect();
    assert_eq!(refused.len(), 1, "{out:?}");
    assert!(refused[0].contains(&u64::MAX.to_string()), "{refused:?}");
    assert!(wakeups <= 1, "{wakeups} wake-ups");
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(at(20_000));
    assert!(drain(&mut s).is_empty(), "logged again");
    assert!(!s.taking_over());
    // The good side: one below the top still takes over, with the top term.
    let mut s = spare_with_image(spare_cfg(false), OLD, 5, u64::MAX - 1, at(0));
    let (out, _) = drive_alone(&mut s, at(0), at(10_000), &|| unreachable!());
    assert_eq!(takeover(&out), Some((u64::MAX, 5)), "{out:?}");
}

/// The same through the arbiter: a term record at `u64::MAX` (held by another node) is learnt
/// and saved, after which the next attempt computed `max(term, record) + 1` = 0 and claimed —
/// and took over with — term 0; a spare whose own term is `u64::MAX` observing no record
/// claimed `term + 1` = 0. Neither may claim anything.
#[test]
fn l_an_arbiter_record_at_u64_max_is_never_claimed_past() {
    let top = || Answer::Observed {
        term: Some((9, record(u64::MAX, "c", 45))),
        alive_rev: 3,
    };
    let none = || Answer::Observed {
        term: None,
        alive_rev: 0,
    };
    let cfg = || SpareConfig {
        arbiter: Some("spare-b".into()),
        ..spare_cfg(false)
    };
    let claims = |out: &[Output]| {
        arbiter_requests(out)
            .into_iter()
            .filter(|(_, r)| matches!(r, Request::Claim { .. }))
            .count()
    };
    // Learnt from the arbiter.
    let mut s = spare_with_image(cfg(), OLD, 5, 5, at(0));
    let (out, _) = drive_alone(&mut s, at(0), at(10_000), &top);
    assert_eq!(saved_terms(&out), vec![u64::MAX], "{out:?}");
    assert_eq!(claims(&out), 0, "{out:?}");
    assert_eq!(takeover(&out), None, "{out:?}");
    assert_eq!(
        logs(&out)
            .iter()
            .filter(|l| l.contains("the highest there is"))
            .count(),
        1,
        "{out:?}"
    );
    assert_eq!(s.poll_timeout(), None);
    // Read from the term file, no record at the arbiter.
    let mut s = spare_with_image(cfg(), OLD, 5, u64::MAX, at(0));
    let (out, _) = drive_alone(&mut s, at(0), at(10_000), &none);
    assert_eq!(claims(&out), 0, "{out:?}");
    assert!(
        saved_terms(&out).is_empty() && takeover(&out).is_none(),
        "{out:?}"
    );
    assert_eq!(s.poll_timeout(), None);
    // The good side: below the top, no record: claimed and taken over with the next term.
    let mut s = spare_with_image(cfg(), OLD, 5, 5, at(0));
    let (out, _) = drive_alone(&mut s, at(0), at(20_000), &none);
    assert_eq!(takeover(&out), Some((6, 5)), "{out:?}");
}

/// HMAC-SHA256 from the specification in `codec`'s documentation, not from the codec.
fn spec_mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("any key size");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Guards against a latent downgrade: the handshake proofs covered the nonces only, so a
/// version byte rewritten on the way (with a spare that accepted it) went unnoticed by the
/// primary — nothing authenticated the version the session runs at. Both proofs must cover
/// the magic and version each side saw; one over the nonces only, or over another version or
/// magic, fails authentication on both sides.
#[test]
fn g_both_handshake_proofs_cover_the_magic_and_version() {
    let k = b"a shared secret of the pair";
    let (np, ns) = ([1u8; 32], [2u8; 32]);
    let ours: &[u8] = &VERSION_NOTICE;
    let mut older = VERSION_NOTICE;
    older[4] = VERSION - 1;
    let mut magic = VERSION_NOTICE;
    magic[0] ^= 0x20;
    let candidates: [(&str, Vec<&[u8]>); 4] = [
        ("the nonces only", vec![]),
        ("the magic and version", vec![ours]),
        ("another version", vec![&older]),
        ("another magic", vec![&magic]),
    ];
    for (what, head) in candidates {
        let good = what == "the magic and version";
        // The primary checks the spare's proof.
        let (mut client, _) = ClientHandshake::new(&key(), np);
        let mut reply = ns.to_vec();
        let mut parts: Vec<&[u8]> = vec![b"spare"];
        parts.extend(&head);
        parts.extend([&np[..], &ns[..]]);
        reply.extend_from_slice(&spec_mac(k, &parts));
        match client.feed(&reply) {
            Ok(Some((proof, _, _))) => {
                assert!(good, "the primary accepted a spare proof over {what}");
                // The proof it answers with covers the version too.
                let want = spec_mac(k, &[b"primary", ours, &np, &ns]);
                assert_eq!(proof, want.to_vec(), "the primary's proof");
            }
            Ok(None) => panic!("a whole reply needs nothing more"),
            Err(e) => {
                assert!(
                    !good,
                    "the primary refused the spare's proof over {what}: {e}"
                );
                assert_eq!(e, WireError::AuthFailed);
            }
        }
        // The spare checks the primary's proof.
        let (_, hello) = ClientHandshake::new(&key(), np);
        let mut server = ServerHandshake::new(&key(), ns);
        let ServerStep::Reply(r) = server.feed(&hello).expect("valid hello") else {
            panic!("no reply")
        };
        assert_eq!(
            r[32..],
            spec_mac(k, &[b"spare", ours, &np, &ns]),
            "the spare's proof"
        );
        let mut parts: Vec<&[u8]> = vec![b"primary"];
        parts.extend(&head);
        parts.extend([&np[..], &ns[..]]);
        match server.feed(&spec_mac(k, &parts)) {
            Ok(ServerStep::Done(..)) => {
                assert!(good, "the spare accepted a primary proof over {what}")
            }
            Ok(_) => panic!("a whole proof needs nothing more"),
            Err(e) => {
                assert!(
                    !good,
                    "the spare refused the primary's proof over {what}: {e}"
                );
                assert_eq!(e, WireError::AuthFailed);
            }
        }
    }
}

/// Guards against a misleading Nack when the driver refuses a spool (its disk queue is over
/// its limit) after the stream's end has already queued the persist — always so for a stream
/// in one message: the persist then ran on a spool holding no byte of the stream, and the
/// primary was told what validation said of that ("does not start with BEGIN") instead of
/// why the spare refused it. Either way the stream must be Nacked with the spool's reason.
#[test]
fn k_a_spool_refused_after_the_end_is_nacked_with_the_spools_reason() {
    let term = 1;
    let behind = "the spare's disk is behind (64 MiB queued): checkpoint refused";
    for whole in [true, false] {
        let c = ConnId(1);
        let mut s = spare_with_image(spare_cfg(false), OLD, 5, term, at(0));
        connect(&mut s, at(0), c, term, OLD);
        let h = header(6, 5);
        let bytes = vec![9, 8, 7];
        if whole {
            s.handle_msg(at(1), c, term, Msg::Stream { header: h, bytes });
        } else {
            s.handle_msg(at(1), c, term, Msg::StreamStart(h));
            s.handle_msg(at(1), c, term, Msg::Chunk { seq: 6, bytes });
            s.handle_msg(at(1), c, term, Msg::EndStream { seq: 6 });
        }
        let ops = disk_ops(&drain(&mut s));
        assert!(
            matches!(
                &ops[..],
                [
                    DiskOp::SpoolStart { .. },
                    DiskOp::Spool { seq: 6, .. },
                    DiskOp::Persist { seq: 6, .. }
                ]
            ),
            "{ops:?}"
        );
        // As the driver answers: the start spooled, the chunk refused at once, then the
        // persist's validation of an empty spool.
        s.handle_disk(at(2), DiskDone::Discarded);
        s.handle_disk(
            at(2),
            DiskDone::SpoolFailed {
                seq: 6,
                why: behind.into(),
            },
        );
        s.handle_disk(
            at(3),
            DiskDone::Persisted {
                seq: 6,
                result: Err("stream does not start with BEGIN".into()),
            },
        );
        let out = drain(&mut s);
        assert_eq!(
            sent(&out, c),
            vec![(
                term,
                Msg::Nack {
                    seq: 6,
                    reason: behind.into()
                }
            )],
            "whole: {whole}: {out:?}"
        );
        assert_eq!(s.disk_outstanding(), 0);
        // The good side: the next stream, spooled, is persisted and acknowledged.
        let out = stream(&mut s, at(4), c, term, header(7, 5));
        let after = complete_all(&mut s, at(5), disk_ops(&out), OLD, term);
        assert!(
            sent(&after, c).contains(&(term, Msg::Ack { seq: 7 })),
            "{after:?}"
        );
    }
}
