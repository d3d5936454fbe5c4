//! The checkpointer and the output commit over a real library handle (local image, no spare):
//! the stop closure runs around every capture, the interval timer checkpoints and keeps its
//! interval in the image, and an event loop's reply leaves only once its checkpoint is durable.

use hotspare::{
    Builder, Checkpointer, CheckpointerError, Config, CptKind, Flushed, HotSpare, Outbox,
    OutputCommit, Verdict,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn open(dir: &std::path::Path, base: usize) -> HotSpare {
    let config = Config {
        image_dir: dir.join("img"),
        heap_base: base,
        heap_size: 16 << 20,
        ..Config::default()
    };
    let hs = Builder::new(config).open().unwrap();
    hs.heap().set_root(hotspare::Mutex::new(0u64)).unwrap();
    hs
}

/// A checkpointer whose stop closure holds the root's lock around the capture and counts the
/// captures (and whether the lock was held during each).
fn counting(hs: &HotSpare) -> (Checkpointer, Arc<AtomicU64>) {
    let n = Arc::new(AtomicU64::new(0));
    let root = hs.heap().root::<hotspare::Mutex<u64>>().unwrap();
    let c = n.clone();
    let cp = Checkpointer::new(hs, move |capture| {
        let _g = root.lock();
        capture();
        c.fetch_add(1, Ordering::SeqCst);
    });
    (cp, n)
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_interval_timer_checkpoints_through_the_stop_and_keeps_its_interval_in_the_image() {
    let t = tempfile::tempdir().unwrap();
    let hs = open(t.path(), 0x5a10_0000_0000);
    let (cp, stops) = counting(&hs);
    let cp = cp.interval_ms(5).start(|| {});
    wait_until("three interval checkpoints", || {
        cp.statistics().checkpoints + cp.statistics().coalesced as usize >= 3
    });
    assert!(
        stops.load(Ordering::SeqCst) >= 3,
        "a capture outside the stop"
    );
    let s = cp.statistics();
    assert!(s.stop_ms.median >= s.capture_ms.median, "{s:?}");
    assert_eq!(s.failed, 0);
    cp.set_interval_ms(0);
    assert_eq!(
        hs.blob("hotspare.checkpointer.interval_ms"),
        Some(0u64.to_le_bytes().to_vec()),
        "the interval is not kept for a resume"
    );
    cp.reset_stats();
    assert_eq!(cp.statistics().checkpoints, 0);
}

#[test]
fn a_stop_closure_that_never_captures_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let hs = open(t.path(), 0x5a20_0000_0000);
    let cp = Checkpointer::new(&hs, |_capture| {});
    assert!(matches!(
        cp.checkpoint(CptKind::Commit),
        Err(CheckpointerError::NotCaptured)
    ));
    assert_eq!(cp.statistics().failed, 1);
}

/// One event loop, one connection, every-write: the write's reply is held until the
/// checkpoint its round took is durable, and the notifier wakes the loop for it.
#[test]
fn an_every_write_reply_leaves_once_its_round_checkpoint_is_durable() {
    let t = tempfile::tempdir().unwrap();
    let hs = open(t.path(), 0x5a30_0000_0000);
    let (cp, stops) = counting(&hs);
    let cp = cp.every_write(true);
    let mut oc = OutputCommit::new(Some(&cp)).unwrap();
    let mut poll = mio::Poll::new().unwrap();
    oc.register(poll.registry(), mio::Token(9)).unwrap();
    let mut boxes: HashMap<usize, Outbox> = [(1, Outbox::with_capacity(64))].into();
    let before = stops.load(Ordering::SeqCst);
    let op = oc.begin().expect("every-write brackets requests");
    boxes
        .get_mut(&1)
        .unwrap()
        .replies()
        .extend_from_slice(b"+OK\r\n");
    op.end(true);
    oc.touched(1);
    let mut out = Vec::new();
    let mut written = Vec::new();
    let mut events = mio::Events::with_capacity(8);
    let mut rounds = 0;
    while written.is_empty() {
        rounds += 1;
        assert!(rounds < 10_000, "the reply never left");
        oc.end_round(&mut boxes, &mut out).unwrap();
        for (id, v) in out.drain(..) {
            assert_eq!(v, Verdict::Flush);
            let durable = hs.durable_seq();
            assert_ne!(
                oc.flush(boxes.get_mut(&id).unwrap(), &mut written),
                Flushed::Close
            );
            if !written.is_empty() {
                assert!(
                    durable >= hs.latest_ticket().seq(),
                    "released before its checkpoint was durable"
                );
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in events.iter() {
            assert!(oc.is_wake(ev.token()));
        }
    }
    assert_eq!(written, b"+OK\r\n");
    assert_eq!(
        stops.load(Ordering::SeqCst),
        before + 1,
        "one checkpoint for the round"
    );
    // A read after it needs nothing new: no checkpoint, out at once.
    let op = oc.begin().unwrap();
    boxes
        .get_mut(&1)
        .unwrap()
        .replies()
        .extend_from_slice(b":1\r\n");
    op.end(false);
    oc.touched(1);
    oc.end_round(&mut boxes, &mut out).unwrap();
    assert_eq!(out, [(1, Verdict::Flush)]);
    written.clear();
    oc.flush(boxes.get_mut(&1).unwrap(), &mut written);
    assert_eq!(written, b":1\r\n");
    assert_eq!(stops.load(Ordering::SeqCst), before + 1);
}

/// Drives one event loop until connection `id` got something; asserts at every write that
/// the checkpoint `ticket` is durable already.
fn drive(
    hs: &HotSpare,
    oc: &mut OutputCommit<'_>,
    poll: &mut mio::Poll,
    boxes: &mut HashMap<usize, Outbox>,
    ticket: u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut written = Vec::new();
    let mut events = mio::Events::with_capacity(8);
    for _ in 0..10_000 {
        oc.end_round(boxes, &mut out).unwrap();
        for (id, v) in out.drain(..) {
            assert_eq!(v, Verdict::Flush);
            let durable = hs.durable_seq();
            assert_ne!(
                oc.flush(boxes.get_mut(&id).unwrap(), &mut written),
                Flushed::Close
            );
            if !written.is_empty() {
                assert!(durable >= ticket, "released at {durable}, before {ticket}");
                return written;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in events.iter() {
            assert!(oc.is_wake(ev.token()));
        }
    }
    panic!("the reply never left");
}

fn request(oc: &OutputCommit<'_>, o: &mut Outbox, reply: &[u8], wrote: bool) {
    let op = oc.begin().expect("every-write brackets requests");
    o.replies().extend_from_slice(reply);
    op.end(wrote);
}

/// Remus's rule across event loops: a read on one loop of a write whose own loop has not yet
/// ended its round (so no checkpoint holds it) takes a checkpoint and waits for it; the
/// writer's loop then waits for that checkpoint without taking another; and a read while a
/// request is still running on the other loop takes a checkpoint too.
#[test]
fn a_read_on_another_loop_of_an_uncommitted_write_waits_for_a_checkpoint_of_it() {
    let t = tempfile::tempdir().unwrap();
    let hs = open(t.path(), 0x5a40_0000_0000);
    let (cp, stops) = counting(&hs);
    let cp = cp.every_write(true);
    let (mut oc1, mut oc2) = (
        OutputCommit::new(Some(&cp)).unwrap(),
        OutputCommit::new(Some(&cp)).unwrap(),
    );
    let (mut p1, mut p2) = (mio::Poll::new().unwrap(), mio::Poll::new().unwrap());
    oc1.register(p1.registry(), mio::Token(9)).unwrap();
    oc2.register(p2.registry(), mio::Token(9)).unwrap();
    let mut b1: HashMap<usize, Outbox> = [(1, Outbox::with_capacity(64))].into();
    let mut b2: HashMap<usize, Outbox> = [(2, Outbox::with_capacity(64))].into();
    // Settle what opening wrote.
    cp.checkpoint(CptKind::Commit).unwrap();
    hs.wait_durable(hs.latest_ticket().seq()).unwrap();
    let before = stops.load(Ordering::SeqCst);
    let durable_before = hs.durable_seq();

    request(&oc1, b1.get_mut(&1).unwrap(), b"+OK\r\n", true);
    oc1.touched(1);
    request(&oc2, b2.get_mut(&2).unwrap(), b":1\r\n", false);
    oc2.touched(2);
    let mut out = Vec::new();
    oc2.end_round(&mut b2, &mut out).unwrap();
    assert_eq!(
        stops.load(Ordering::SeqCst),
        before + 1,
        "the read's round took no checkpoint for the other loop's write"
    );
    let t2 = hs.latest_ticket().seq();
    assert!(t2 > durable_before);
    for (id, _) in out.drain(..) {
        let mut w = Vec::new();
        oc2.flush(b2.get_mut(&id).unwrap(), &mut w);
        assert!(
            w.is_empty() || hs.durable_seq() >= t2,
            "the read left before the write it may reveal was durable"
        );
        if !w.is_empty() {
            b2.get_mut(&id).unwrap().discard();
        }
    }
    if !b2[&2].drained() {
        assert_eq!(drive(&hs, &mut oc2, &mut p2, &mut b2, t2), b":1\r\n");
    }
    // The writer's loop: its write is in t2 already.
    oc1.touched(1);
    assert_eq!(drive(&hs, &mut oc1, &mut p1, &mut b1, t2), b"+OK\r\n");
    assert_eq!(
        stops.load(Ordering::SeqCst),
        before + 1,
        "a second checkpoint"
    );

    // A request still running on loop 1 while loop 2 answers a read.
    let running = oc1.begin().unwrap();
    request(&oc2, b2.get_mut(&2).unwrap(), b":2\r\n", false);
    oc2.touched(2);
    oc2.end_round(&mut b2, &mut out).unwrap();
    assert_eq!(
        stops.load(Ordering::SeqCst),
        before + 2,
        "a read beside a running request took no checkpoint"
    );
    let t3 = hs.latest_ticket().seq();
    out.clear();
    oc2.touched(2);
    assert_eq!(drive(&hs, &mut oc2, &mut p2, &mut b2, t3), b":2\r\n");
    running.end(false);
}
