//! Output commit against a spare that misbehaves: a fake spare on loopback that completes the
//! handshake and the hello and answers heartbeats, but never acknowledges a checkpoint, or
//! stops reading in the middle of one. Every wait is bounded.

use hotspare::{Builder, Config, HotSpare};
use hotspare_proto::codec::{Key, ServerHandshake, ServerStep};
use hotspare_proto::Msg;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const KEY: &[u8] = b"commit test shared secret, 0600";

/// What the fake spare does with checkpoint streams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Streams {
    /// Reads them and never acknowledges one.
    NeverAck,
    /// Stops reading the connection at the first chunk of a stream (and keeps it open).
    StopReading,
}

struct FakeSpare {
    addr: String,
    /// Stream chunks received.
    chunks: Arc<AtomicU64>,
}

fn fake_spare(streams: Streams) -> FakeSpare {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let chunks = Arc::new(AtomicU64::new(0));
    let c = chunks.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || serve_one(s, streams, &c));
        }
    });
    FakeSpare { addr, chunks }
}

/// One connection of the fake spare; returns when it breaks.
fn serve_one(mut s: TcpStream, streams: Streams, chunks: &AtomicU64) {
    let mut hs = ServerHandshake::new(&Key::from_bytes(KEY), [5; 32]);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut bytes = buf[..n].to_vec();
        loop {
            match hs.feed(&bytes) {
                Ok(ServerStep::More) => break,
                Ok(ServerStep::Reply(r)) => {
                    if s.write_all(&r).is_err() {
                        return;
                    }
                    bytes.clear();
                }
                Ok(ServerStep::Done(session, rest)) => {
                    return serve_session(s, session, rest, streams, chunks)
                }
                Err(_) => return,
            }
        }
    }
}

fn serve_session(
    mut s: TcpStream,
    session: hotspare_proto::codec::Session,
    rest: Vec<u8>,
    streams: Streams,
    chunks: &AtomicU64,
) {
    let (mut opener, mut sealer) = (session.opener, session.sealer);
    opener.push(&rest);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut out = Vec::new();
        while let Ok(Some((term, msg))) = opener.next_msg() {
            match msg {
                Msg::Hello { .. } => sealer.seal(
                    term,
                    &Msg::Status {
                        term,
                        seq: 0,
                        applied: 0,
                        since_grant_ms: u64::MAX,
                        detection_us: 10_000_000,
                    },
                    &mut out,
                ),
                Msg::Heartbeat { id, .. } => {
                    sealer.seal(term, &Msg::HeartbeatAck { id, seq: 0 }, &mut out)
                }
                // A stream's bytes: a chunk of a long one, or a short one whole.
                Msg::Chunk { .. } | Msg::Stream { .. } => {
                    chunks.fetch_add(1, Ordering::SeqCst);
                    if streams == Streams::StopReading {
                        let _ = s.write_all(&out);
                        // The connection stays open; nothing more of it is read.
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                    0
                }
                _ => 0,
            };
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => opener.push(&buf[..n]),
        }
    }
}

fn key_file(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join("key");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap()
        .write_all(KEY)
        .unwrap();
    p
}

/// A primary streaming to `spare`.
fn primary(
    dir: &Path,
    spare: &FakeSpare,
    base: usize,
    heap: usize,
    ack_timeout_ms: u64,
) -> HotSpare {
    let config = Config {
        image_dir: dir.join("spool"),
        heap_base: base,
        heap_size: heap,
        spare: Some(spare.addr.clone()),
        key_file: Some(key_file(dir)),
        heartbeat_ms: 10,
        lease_ms: 40,
        ack_timeout_ms,
        pipeline_depth: 2,
        ..Config::default()
    };
    Builder::new(config).open().unwrap()
}

/// `f` on another thread: its result, or `None` if it did not return within `within`.
fn bounded<T: Send + 'static>(
    within: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(within).ok()
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until the primary holds a lease from the fake spare: connected, hello
/// answered.
fn wait_connected(hs: &HotSpare) {
    wait_until("a lease from the fake spare", || hs.may_serve());
}

/// With `pipeline_depth` checkpoints in flight, `try_commit` returns at once without taking
/// one (where `commit` would wait for the oldest), and takes one when there is room.
#[test]
fn try_commit_takes_nothing_and_never_waits_when_the_pipeline_is_full() {
    let t = tempfile::tempdir().unwrap();
    let spare = fake_spare(Streams::NeverAck);
    let hs = primary(t.path(), &spare, 0x5e00_0000_0000, 16 << 20, 60_000);
    wait_connected(&hs);
    // Good side: room in the pipeline, so a checkpoint.
    let first = hs
        .try_commit()
        .unwrap()
        .expect("an empty pipeline has room");
    let second = hs.commit().unwrap();
    assert!(second > first);
    assert!(
        !hs.can_commit(),
        "two checkpoints in flight fill a pipeline of 2"
    );
    let h = hs.clone();
    let r = bounded(Duration::from_secs(30), move || {
        h.try_commit().map_err(|e| e.to_string())
    });
    assert_eq!(r, Some(Ok(None)), "try_commit on a full pipeline");
    assert_eq!(hs.latest_ticket(), second, "try_commit took a checkpoint");
    assert_eq!(hs.ticket_state(first), hotspare::TicketState::Pending);
    wait_until("the spare gets the streams", || {
        spare.chunks.load(Ordering::SeqCst) > 0
    });
}

/// A spare that accepts the connection and the hello, then stops reading in the middle of a
/// checkpoint stream: the checkpoint fails the ack timeout after the last chunk the socket
/// took (the link's own deadline, named in the error), so `wait` returns and the ticket reads
/// Failed. Before, only the connection's TCP user timeout (10 s) ended it.
#[test]
fn a_spare_that_stops_reading_mid_stream_fails_the_ticket() {
    let t = tempfile::tempdir().unwrap();
    let spare = fake_spare(Streams::StopReading);
    let hs = primary(t.path(), &spare, 0x5f00_0000_0000, 128 << 20, 300);
    wait_connected(&hs);
    // 48 MiB that do not compress: far more than the socket buffers on the way hold.
    let mut v = allocator_api2::vec::from_elem_in(0u8, 48 << 20, hs.heap().alloc());
    fastrand::Rng::with_seed(7).fill(&mut v[..]);
    let ticket = hs.commit().unwrap();
    let h = hs.clone();
    let r = bounded(Duration::from_secs(30), move || {
        h.wait(ticket).map_err(|e| e.to_string())
    });
    match r {
        Some(Err(why)) => assert!(why.contains("stopped reading"), "{why}"),
        other => panic!("the checkpoint sent to a spare that stopped reading: {other:?}"),
    }
    assert!(matches!(
        hs.ticket_state(ticket),
        hotspare::TicketState::Failed(_)
    ));
    assert!(
        spare.chunks.load(Ordering::SeqCst) > 0,
        "the stream never started"
    );
    drop(v);
}

/// `wait_durable` / `wait` on a checkpoint never taken fail at once instead of blocking forever
/// (nothing would ever complete it); the C ABI's `hs_wait_durable` returns `HS_EINVAL` for it
/// (`tests/c/hs_counter.c`).
#[test]
fn waiting_for_a_checkpoint_never_taken_is_an_error_at_once() {
    let t = tempfile::tempdir().unwrap();
    let config = Config {
        image_dir: t.path().join("img"),
        heap_base: 0x6100_0000_0000,
        heap_size: 16 << 20,
        ..Config::default()
    };
    let hs = Builder::new(config).open().unwrap();
    let st = hs.cpt().unwrap();
    // Good side: one that was taken is waited for.
    hs.wait_durable(st.seq).unwrap();
    let h = hs.clone();
    let next = st.seq + 1;
    let r = bounded(Duration::from_secs(30), move || {
        (
            h.wait_durable(next).map_err(|e| e.to_string()),
            matches!(
                h.wait(hotspare::Ticket::from_seq(next)),
                Err(hotspare::Error::NotTaken { .. })
            ),
        )
    });
    match r {
        Some((Err(why), true)) => assert!(why.contains("never taken"), "{why}"),
        other => panic!("waiting for checkpoint {next}, never taken: {other:?}"),
    }
}
