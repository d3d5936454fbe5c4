//! The primary's driver: one thread with a `mio` event loop around the sans-IO
//! [`hotspare_proto::primary::Link`]. The checkpoint writer hands it a spooled stream and waits
//! for the outcome; the loop interleaves heartbeats between stream chunks (never more than one
//! chunk ahead of a heartbeat), and publishes the lease as a point in time, so the right to
//! serve is computed from the clock whenever it is asked ([`Remote::may_serve`]) and no blocked
//! write can leave it standing.
//!
//! ```text
//! writer thread ── send_file(seq) ──▶ commands ─┐
//!                                               ▼
//!             ┌─────────── link thread (mio) ─────────────────────────────┐
//!             │ Link::poll_transmit → Sealer → socket (non-blocking)       │
//!             │ socket → Opener → Link::handle_msg → Event::Done → writer  │
//!             │ timers → Link::handle_timeout (heartbeats, ack deadlines)  │
//!             └── serving_until (an atomic instant) ◀── Link::serving_until ┘
//! ```

use super::arbiter::ArbiterClient;
use super::io::{start_status_writer, write_status_file, OutBuf};
use super::wire::{self, Key};
use crate::checkpoint::Completion;
use crate::metrics::PrimaryMetrics;
use hotspare_proto::arbiter::PrimaryArbiter;
use hotspare_proto::codec::{ClientHandshake, Opener, Sealer};
use hotspare_proto::primary::{Event, Link, LinkConfig};
use hotspare_proto::{StreamHeader, Time};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How the primary reaches its spare.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The spare's address.
    pub addr: String,
    /// Shared secret.
    pub key: Key,
    /// Heartbeat interval H.
    pub heartbeat: Duration,
    /// The lease asked for (capped below the spare's detection time, with a drift margin).
    pub lease: Duration,
    /// A checkpoint not acknowledged this long after its last byte fails; so does one being
    /// sent whose next chunk the socket did not take for this long.
    pub ack_timeout: Duration,
    /// How long [`Remote::start`] waits for the spare's connection and the right to serve.
    pub spare_wait: Duration,
    /// Exit the process when the lease is lost or the spare says we are fenced (else: report).
    pub exit_when_fenced: bool,
    /// Our term.
    pub term: u64,
    /// Our lineage.
    pub lineage: [u8; 16],
    /// Our executable.
    pub exe_id: [u8; 32],
    /// Where to keep a status file for `hotspare status` (rewritten every ~100 ms).
    pub status_file: Option<PathBuf>,
    /// When the spare acknowledges a checkpoint: on receipt (validated, not yet `fsync`ed) or
    /// after its `fsync` (`docs/replication.md`, "Durability levels").
    pub ack: hotspare_proto::AckLevel,
    /// The arbiter, if one is configured (leases renewed there keep this primary serving
    /// while its spare cannot answer).
    pub arbiter: Option<super::ArbiterConfig>,
}

/// With an arbiter and `on_fence = exit`, a primary that has held no lease this long exits:
/// long enough for etcd to ride out a leader election or a stall, short enough that a primary
/// cut off from both its spare and etcd makes way (its ports, its supervisor's restart as a
/// spare) soon after a spare has taken over.
pub const LEASE_LAPSE_EXIT: Duration = Duration::from_secs(2);

fn log(msg: impl std::fmt::Display) {
    super::log::line("hotspare", msg);
}

/// Why a primary ends itself with exit status 75 (`on_fence = exit`), as its last status file
/// says (`"exit"`): a fleet daemon tells a first start that was fenced — the service exists
/// elsewhere — from one whose lease merely ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// A newer term, another holder at the arbiter, or a spare that refuses us.
    Fenced,
    /// A switchover handed the service over.
    HandedOver,
    /// No lease (nobody renewed it): nothing says another primary exists.
    LeaseLapsed,
}

impl Exit {
    fn as_str(self) -> &'static str {
        match self {
            Exit::Fenced => "fenced",
            Exit::HandedOver => "handed over",
            Exit::LeaseLapsed => "lease lapsed",
        }
    }
}

/// The clock both threads read: nanoseconds since the first use.
fn now() -> Time {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    Time::from_nanos(ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64)
}

struct Shared {
    /// End of the lease as `Time` nanoseconds (0: none).
    serving_until: AtomicU64,
    /// The sequence of the newest capture that has begun (set before its first page is read).
    capture_started: AtomicU64,
    /// A switchover waits for a checkpoint captured from now on.
    handover_pending: AtomicBool,
    /// The link to the spare is up (checkpoints can be sent).
    connected: AtomicBool,
    fenced: AtomicBool,
    needs_full: AtomicBool,
    wire_bytes: AtomicU64,
    /// Published in the status file (`"metrics"`).
    metrics: PrimaryMetrics,
}

/// A checkpoint stream to send.
pub(crate) enum Source {
    /// A spooled file (removed once sent or failed).
    File(PathBuf),
    /// Encoded in memory.
    Memory(Vec<u8>),
}

enum Cmd {
    Send {
        header: StreamHeader,
        source: Source,
        done: Completion,
    },
}

/// The link to the spare (cheap to clone: all clones share it).
#[derive(Clone)]
pub(crate) struct Remote {
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
    waker: Arc<Waker>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remote(..)")
    }
}

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Stream bytes per chunk: a heartbeat waits behind at most one (2 ms at 1 Gbit/s).
const CHUNK: usize = 256 << 10;

impl Remote {
    /// Starts the link thread; waits up to a second for the first lease, so a primary whose
    /// spare is there may serve from its first request.
    pub fn start(cfg: RemoteConfig) -> std::io::Result<Remote> {
        let r_wait = cfg.spare_wait;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let shared = Arc::new(Shared {
            serving_until: AtomicU64::new(0),
            capture_started: AtomicU64::new(0),
            handover_pending: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            needs_full: AtomicBool::new(true),
            wire_bytes: AtomicU64::new(0),
            metrics: PrimaryMetrics::new(),
        });
        let (cmds, rx) = mpsc::channel();
        let s = shared.clone();
        // Resolved once, here: a name lookup must not stall the link thread at a reconnect.
        let addr = resolve(&cfg.addr)?;
        let status = Arc::new(Mutex::new(String::new()));
        if let Some(path) = &cfg.status_file {
            start_status_writer(path.clone(), status.clone());
        }
        let arbiter = match &cfg.arbiter {
            Some(a) => {
                log(format!(
                    "arbiter: etcd {} (key {}), node {}",
                    a.endpoints.join(","),
                    a.term_key(),
                    a.node
                ));
                Some(ArbiterClient::start(a.clone(), waker.clone())?)
            }
            None => {
                log("NO ARBITER (two-machine mode): if this primary and its spare cannot hear each other, this primary stops serving and the spare takes over, even if clients can reach only this side; set HOTSPARE_ARBITER and HOTSPARE_SERVICE for takeovers decided by etcd (docs/replication.md)");
                None
            }
        };
        std::thread::Builder::new()
            .name("hotspare-link".into())
            .spawn(move || {
                crate::global::library_thread();
                LinkLoop::new(cfg, addr, status, poll, s, rx, arbiter).run()
            })?;
        let r = Remote {
            shared,
            cmds,
            waker,
        };
        // Connected, not merely allowed to serve: with an arbiter the lease can come from it
        // before the spare has answered, and a first checkpoint then has nowhere to go.
        let t = Instant::now();
        let settled = |r: &Remote| {
            r.shared.fenced.load(Ordering::SeqCst)
                || (r.may_serve() && r.shared.connected.load(Ordering::SeqCst))
        };
        while !settled(&r) && t.elapsed() < r_wait {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(r)
    }

    /// Capture `seq` begins now (before its first page is read): a switchover that began
    /// earlier may end with it.
    pub fn capture_starting(&self, seq: u64) {
        self.shared.capture_started.store(seq, Ordering::SeqCst);
    }

    /// Whether a switchover waits for a checkpoint (a program that takes none while idle must
    /// take one: `HotSpare::handover_pending`).
    pub fn handover_pending(&self) -> bool {
        self.shared.handover_pending.load(Ordering::SeqCst)
    }

    /// Whether a connection was made since the last call (the next checkpoint must be full).
    pub fn take_new_connection(&self) -> bool {
        self.shared.needs_full.swap(false, Ordering::SeqCst)
    }

    /// Whether this primary may serve now: not fenced, and holding a lease (an answered
    /// heartbeat sent less than the lease ago). Computed from the clock at each call.
    pub fn may_serve(&self) -> bool {
        let until = self.shared.serving_until.load(Ordering::SeqCst);
        !self.shared.fenced.load(Ordering::SeqCst) && until != 0 && now().as_nanos() < until
    }

    /// Hands checkpoint `header.seq` to the link and returns at once; `done` is told when the
    /// spare acknowledged it at the configured durability level, or when it failed (refused,
    /// lost with the connection, not acknowledged in time, fenced).
    pub fn send(&self, header: StreamHeader, source: Source, done: Completion) {
        if self.shared.fenced.load(Ordering::SeqCst) {
            PrimaryMetrics::inc(&self.shared.metrics.failed);
            source.discard();
            return done.finish(Err(
                "fenced by the spare (a newer term exists, or it refuses us)".into(),
            ));
        }
        if let Err(mpsc::SendError(Cmd::Send { source, done, .. })) = self.cmds.send(Cmd::Send {
            header,
            source,
            done,
        }) {
            PrimaryMetrics::inc(&self.shared.metrics.failed);
            source.discard();
            return done.finish(Err("the link thread is gone".into()));
        }
        let _ = self.waker.wake();
    }

    /// A checkpoint was captured, stopping the program this long: recorded for the status
    /// file's histogram with two relaxed atomic adds, so the capture's own thread can afford it.
    pub fn record_stop(&self, stopped: Duration) {
        self.shared.metrics.stop.observe_duration(stopped);
    }

    /// Bytes of checkpoint streams sent to the spare so far, on the wire.
    pub fn wire_bytes(&self) -> u64 {
        self.shared.wire_bytes.load(Ordering::SeqCst)
    }
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address"))
}

enum Phase {
    Connecting(Instant),
    Handshake(ClientHandshake, Instant),
    Session(Opener, Sealer),
}

struct Sock {
    stream: TcpStream,
    phase: Phase,
    out: OutBuf,
}

impl Sock {
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush(&mut self.stream)
    }
}

impl Source {
    /// Removes what is left of it (a spooled file).
    fn discard(self) {
        if let Source::File(p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Where the bytes of the checkpoint being sent come from.
enum Reader {
    File(std::fs::File, PathBuf),
    Memory(Vec<u8>, usize),
}

impl Reader {
    /// The next chunk (empty at the end).
    fn next_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Reader::File(f, _) => {
                let mut chunk = vec![0u8; CHUNK];
                let n = read_full(f, &mut chunk)?;
                chunk.truncate(n);
                Ok(chunk)
            }
            Reader::Memory(b, 0) if b.len() <= CHUNK => {
                // A small checkpoint goes as one chunk, without a copy (what is left is empty:
                // the next call ends the stream).
                Ok(std::mem::take(b))
            }
            Reader::Memory(b, at) => {
                let n = (b.len() - *at).min(CHUNK);
                let chunk = b[*at..*at + n].to_vec();
                *at += n;
                Ok(chunk)
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Reader::File(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct Sending {
    seq: u64,
    reader: Reader,
    done: Completion,
}

struct LinkLoop {
    cfg: RemoteConfig,
    poll: Poll,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Cmd>,
    link: Link,
    sock: Option<Sock>,
    /// Checkpoints handed over and not started yet (one is sent at a time).
    queued: VecDeque<(StreamHeader, Source, Completion)>,
    sending: Option<Sending>,
    /// Checkpoints sent whole, waiting for their acknowledgement.
    waiting: HashMap<u64, Completion>,
    last_status: Instant,
    lease_logged: bool,
    /// Why the last connection attempt failed (reported with checkpoints that cannot go).
    last_error: Option<String>,
    /// A switchover in progress: captures numbered above this began after serving stopped.
    handover_floor: Option<u64>,
    /// Handed over: exit (`on_fence = exit`) once the hand-over message is on the wire.
    exit_when_flushed: bool,
    /// With an arbiter and `on_fence = exit`: since when no lease has been held (see
    /// [`LEASE_LAPSE_EXIT`]).
    lease_lost_since: Option<Instant>,
    /// The image directory this program was resumed from, until a checkpoint of it has been
    /// acknowledged by the spare (see [`LinkLoop::retire_resumed_image`]).
    resumed_image: Option<PathBuf>,
    /// The status file has said `registered` (written at once when registration succeeds).
    registration_written: bool,
    /// The spare's address, resolved at start.
    addr: SocketAddr,
    /// What the status thread writes.
    status: Arc<Mutex<String>>,
    arbiter: Option<ArbiterClient>,
    /// Wire bytes of the checkpoint being sent so far (observed once its end is sealed).
    cpt_wire: u64,
}

impl LinkLoop {
    fn new(
        cfg: RemoteConfig,
        addr: SocketAddr,
        status: Arc<Mutex<String>>,
        poll: Poll,
        shared: Arc<Shared>,
        cmds: mpsc::Receiver<Cmd>,
        arbiter: Option<ArbiterClient>,
    ) -> LinkLoop {
        let link = Link::new(
            LinkConfig {
                heartbeat: cfg.heartbeat,
                lease: cfg.lease,
                ack_timeout: cfg.ack_timeout,
                reconnect: cfg.heartbeat * 10,
                drift_ppm: hotspare_proto::lease::DEFAULT_DRIFT_PPM,
                serve_margin: Duration::from_millis(1),
                term: cfg.term,
                lineage: cfg.lineage,
                exe_id: cfg.exe_id,
                pid: std::process::id(),
                ack: cfg.ack,
                arbiter: cfg.arbiter.as_ref().map(|a| PrimaryArbiter {
                    // A primary's record names its pid: a spare of the same node name never
                    // mistakes it for a term it claimed itself.
                    node: format!("{} pid {}", a.node, std::process::id()),
                    lease: a.lease,
                    wait: a.wait,
                    // A quarter of the lease (10 ms at the default 40): three renewals may be
                    // lost or late before it runs out, and a longer lease, chosen to spare
                    // etcd the writes of many services, also means fewer of them.
                    renew_every: (a.lease / 4).max(hotspare_proto::arbiter::DEFAULT_RENEW_EVERY),
                    adopt: a.adopt.clone(),
                }),
            },
            now(),
        );
        // A fresh start's directory holds no image (the library refuses one); a resumed
        // program's holds the one it was resumed from. Its status file is in it.
        let resumed_image = cfg
            .status_file
            .as_ref()
            .and_then(|f| f.parent())
            .filter(|d| d.join("manifest").exists())
            .map(PathBuf::from);
        LinkLoop {
            cfg,
            addr,
            status,
            poll,
            shared,
            cmds,
            link,
            sock: None,
            queued: VecDeque::new(),
            sending: None,
            waiting: HashMap::new(),
            last_status: Instant::now() - Duration::from_secs(1),
            lease_logged: false,
            last_error: None,
            handover_floor: None,
            exit_when_flushed: false,
            lease_lost_since: None,
            resumed_image,
            registration_written: false,
            arbiter,
            cpt_wire: 0,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            self.pump();
            let t = now();
            let mut timeout = self
                .link
                .poll_timeout()
                .map_or(Duration::from_millis(100), |x| x.since(t))
                .min(Duration::from_millis(100));
            if let Some(s) = &self.sock {
                if let Phase::Connecting(d) | Phase::Handshake(_, d) = &s.phase {
                    timeout = timeout.min(d.saturating_duration_since(Instant::now()));
                }
            }
            if self.poll.poll(&mut events, Some(timeout)).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut broken: Option<String> = None;
            for ev in events.iter() {
                if ev.token() != SOCKET {
                    continue;
                }
                if let Err(why) = self.socket_ready(ev.is_writable(), &mut buf) {
                    broken = Some(why);
                }
            }
            if self.sock.is_some() && broken.is_none() {
                // Reads may have stopped at the budget; and a connect may have completed.
                if let Err(why) = self.socket_ready(true, &mut buf) {
                    broken = Some(why);
                }
            }
            if let Some(s) = &self.sock {
                if let Phase::Connecting(d) | Phase::Handshake(_, d) = &s.phase {
                    if Instant::now() >= *d {
                        broken = Some("no connection within the deadline".into());
                    }
                }
            }
            if let Some(why) = broken {
                self.disconnect(&why);
            }
            while let Ok(cmd) = self.cmds.try_recv() {
                self.command(cmd);
            }
            while let Some((id, outcome)) = self.arbiter.as_ref().and_then(|a| a.try_recv()) {
                self.link.handle_arbiter(now(), id, outcome);
            }
            self.link.handle_timeout(now());
            self.check_lease_lapse();
        }
    }

    /// A lease lapsed with an arbiter configured: serving again once the arbiter renews it,
    /// or exit (`on_fence = exit`) if it has not for [`LEASE_LAPSE_EXIT`].
    fn check_lease_lapse(&mut self) {
        let Some(since) = self.lease_lost_since else {
            return;
        };
        if self.link.may_serve(now()) {
            log(format!(
                "lease held again after {} ms: serving",
                since.elapsed().as_millis()
            ));
            self.lease_lost_since = None;
            self.lease_logged = false;
        } else if since.elapsed() >= LEASE_LAPSE_EXIT {
            log(format!(
                "FENCED: no lease for {} ms (neither the spare nor the arbiter renewed it); exiting",
                since.elapsed().as_millis()
            ));
            self.exit_fenced(Exit::LeaseLapsed);
        }
    }

    /// Ends the process (75) once the reason is in the log and the status file says why
    /// (written here, with the status writer held off, so that it is the last one).
    fn exit_fenced(&self, why: Exit) -> ! {
        let mut held = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if self.cfg.status_file.is_some() {
            *held = self.status_text(Some(why));
        }
        super::log::flush(Duration::from_millis(200));
        if let Some(path) = &self.cfg.status_file {
            write_status_file(path, &held);
        }
        std::process::exit(75);
    }

    fn disconnect(&mut self, why: &str) {
        if let Some(mut s) = self.sock.take() {
            let _ = self.poll.registry().deregister(&mut s.stream);
            if matches!(s.phase, Phase::Session(..)) {
                log(format!("connection to spare {} lost: {why}", self.cfg.addr));
            } else {
                log(format!("spare {} unreachable: {why}", self.cfg.addr));
            }
        }
        self.last_error = Some(why.to_string());
        self.link.handle_disconnected(now(), why);
    }

    fn command(&mut self, cmd: Cmd) {
        let Cmd::Send {
            header,
            source,
            done,
        } = cmd;
        self.queued.push_back((header, source, done));
    }

    /// Starts the next queued checkpoint when none is being sent.
    fn start_next(&mut self) {
        while self.sending.is_none() {
            let Some((header, source, done)) = self.queued.pop_front() else {
                return;
            };
            // A stream that fits one chunk goes whole, in one message, when a chunk could be
            // fed now: once what the link holds is out (this same pump), and while the socket
            // has room (heartbeats stay in front of at most one chunk). Otherwise it is
            // streamed (start now, its chunk when there is room, end), as a large one is.
            if let Source::Memory(b) = &source {
                if b.len() <= CHUNK && self.link.is_up() && self.link.data_queued() > 0 {
                    self.queued.push_front((header, source, done));
                    return;
                }
            }
            let room = self.sock.as_ref().is_some_and(|s| s.out.unsent() < CHUNK);
            let source = match source {
                Source::Memory(b) if b.len() <= CHUNK && room => {
                    match self.link.send_checkpoint(now(), header, b) {
                        Ok(()) => {
                            crate::probe::mark(header.seq, crate::probe::Stage::Sent);
                            PrimaryMetrics::inc(&self.shared.metrics.sent);
                            if self.handover_floor.is_some_and(|f| header.seq > f) {
                                self.link.mark_final(header.seq);
                            }
                            self.waiting.insert(header.seq, done);
                        }
                        Err(why) => self.start_failed(why, done),
                    }
                    continue;
                }
                other => other,
            };
            let reader = match source {
                Source::Memory(b) => Reader::Memory(b, 0),
                Source::File(path) => match std::fs::File::open(&path) {
                    Ok(f) => Reader::File(f, path),
                    Err(e) => {
                        let why = format!("{}: {e}", path.display());
                        let _ = std::fs::remove_file(&path);
                        PrimaryMetrics::inc(&self.shared.metrics.failed);
                        done.finish(Err(why));
                        continue;
                    }
                },
            };
            match self.link.start_checkpoint(now(), header) {
                Ok(()) => {
                    PrimaryMetrics::inc(&self.shared.metrics.sent);
                    if self.handover_floor.is_some_and(|f| header.seq > f) {
                        self.link.mark_final(header.seq);
                    }
                    self.sending = Some(Sending {
                        seq: header.seq,
                        reader,
                        done,
                    })
                }
                Err(why) => self.start_failed(why, done),
            }
        }
    }

    /// A checkpoint the link would not start (no connection, fenced) fails at once.
    fn start_failed(&mut self, why: String, done: Completion) {
        let last = self
            .last_error
            .as_ref()
            .map_or(String::new(), |e| format!(" (last attempt: {e})"));
        PrimaryMetrics::inc(&self.shared.metrics.failed);
        done.finish(Err(format!("spare {}: {why}{last}", self.cfg.addr)));
    }

    /// Reads and writes the socket as far as it goes; `Err` when the connection is broken.
    fn socket_ready(&mut self, writable: bool, buf: &mut [u8]) -> Result<(), String> {
        let Some(s) = self.sock.as_mut() else {
            return Ok(());
        };
        if let Phase::Connecting(_) = s.phase {
            if !writable {
                return Ok(());
            }
            if let Some(e) = s.stream.take_error().map_err(|e| e.to_string())? {
                return Err(e.to_string());
            }
            match s.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
            let nonce = wire::nonce().map_err(|e| e.to_string())?;
            let (hs, hello) = ClientHandshake::new(&self.cfg.key, nonce);
            s.out.vec().extend_from_slice(&hello);
            s.phase = Phase::Handshake(hs, Instant::now() + Duration::from_secs(2));
        }
        s.flush().map_err(|e| e.to_string())?;
        for _ in 0..64 {
            let n = match s.stream.read(buf) {
                Ok(0) => {
                    // Closed at our hello: another protocol version, or a refusal, in one line.
                    if let Phase::Handshake(hs, _) = &s.phase {
                        if let Some(e) = hs.closed() {
                            return Err(e.to_string());
                        }
                    }
                    return Err("closed by the spare".into());
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            };
            let mut bytes = &buf[..n];
            let rest;
            if let Phase::Handshake(hs, _) = &mut s.phase {
                match hs.feed(bytes).map_err(|e| e.to_string())? {
                    None => continue,
                    Some((proof, session, r)) => {
                        s.out.vec().extend_from_slice(&proof);
                        s.phase = Phase::Session(session.opener, session.sealer);
                        rest = r;
                        bytes = &rest;
                        self.link.handle_connected(now());
                    }
                }
            }
            if let Phase::Session(opener, _) = &mut s.phase {
                opener.push(bytes);
                while let Some((term, msg)) = opener.next_msg().map_err(|e| e.to_string())? {
                    self.link.handle_msg(now(), term, msg);
                }
            }
        }
        Ok(())
    }

    fn connect(&mut self) {
        let addr = self.addr;
        let r = (|| {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_nodelay(true)?;
            let sock = socket2::SockRef::from(&stream);
            sock.set_keepalive(true)?;
            // Data unacknowledged this long: the path is gone; liveness at the heartbeat's pace
            // is the lease's job, so this only has to be well above TCP's retransmission timer.
            sock.set_tcp_user_timeout(Some(Duration::from_secs(10)))?;
            // A heartbeat also waits behind the kernel's send buffer: keep it to ~8 ms of a
            // 1 Gbit/s link instead of the megabytes autotuning would grow it to.
            sock.set_send_buffer_size(1 << 20)?;
            self.poll.registry().register(
                &mut stream,
                SOCKET,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok::<_, std::io::Error>(stream)
        })();
        match r {
            Ok(stream) => {
                let deadline =
                    Instant::now() + (self.cfg.heartbeat * 20).max(Duration::from_millis(200));
                self.sock = Some(Sock {
                    stream,
                    phase: Phase::Connecting(deadline),
                    out: OutBuf::default(),
                });
            }
            Err(e) => {
                log(format!("spare {} unreachable: {e}", self.cfg.addr));
                self.link.handle_disconnected(now(), &e.to_string());
            }
        }
    }

    /// Drains the core: events, stream chunks, messages; publishes the lease.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some((id, req)) = self.link.poll_arbiter() {
                if let Some(a) = &self.arbiter {
                    a.submit(id, req);
                }
            }
            while let Some(ev) = self.link.poll_event() {
                progressed = true;
                self.event(ev);
            }
            while let Some(rtt) = self.link.poll_heartbeat_rtt() {
                self.shared.metrics.heartbeat_rtt.observe_duration(rtt);
            }
            // Started (or failed, with no connection) at once, whatever the socket's state:
            // a checkpoint must never wait for a connection that may not come.
            self.start_next();
            // Feed the next chunk only when nothing is queued, so heartbeats stay in front.
            if self.link.data_queued() == 0
                && self.sock.as_ref().is_some_and(|s| s.out.unsent() < CHUNK)
            {
                if let Some(snd) = self.sending.as_mut() {
                    match snd.reader.next_chunk() {
                        Ok(chunk) if chunk.is_empty() => {
                            let s = self.sending.take().expect("checked");
                            self.link.end_checkpoint(now(), s.seq);
                            self.waiting.insert(s.seq, s.done);
                        }
                        Ok(chunk) => self.link.send_chunk(now(), snd.seq, chunk),
                        Err(e) => {
                            let s = self.sending.take().expect("checked");
                            PrimaryMetrics::inc(&self.shared.metrics.failed);
                            s.done.finish(Err(format!("reading the spool: {e}")));
                        }
                    }
                    progressed = true;
                }
            }
            if let Some(s) = self.sock.as_mut() {
                if let Phase::Session(_, sealer) = &mut s.phase {
                    while let Some(m) = self.link.poll_transmit() {
                        let n = sealer.seal(self.link.term(), &m, s.out.vec()) as u64;
                        // A stream's bytes start again at its start (one cut short by a lost
                        // connection is never observed) and are observed at its end.
                        let stream = match m {
                            hotspare_proto::Msg::StreamStart(_) => {
                                self.cpt_wire = n;
                                true
                            }
                            hotspare_proto::Msg::Chunk { .. } => {
                                self.cpt_wire += n;
                                true
                            }
                            hotspare_proto::Msg::Stream { .. } => {
                                self.shared.metrics.wire_bytes.observe(n);
                                true
                            }
                            hotspare_proto::Msg::EndStream { .. } => {
                                self.shared.metrics.wire_bytes.observe(self.cpt_wire + n);
                                self.cpt_wire = 0;
                                true
                            }
                            _ => false,
                        };
                        if stream {
                            self.shared.wire_bytes.fetch_add(n, Ordering::SeqCst);
                        }
                        progressed = true;
                    }
                }
                if s.flush().is_err() {
                    self.disconnect("write failed");
                    continue;
                }
                if self.exit_when_flushed && s.out.unsent() == 0 {
                    log("handed over: exiting (on_fence = exit)");
                    self.exit_fenced(Exit::HandedOver);
                }
            }
            if !progressed {
                break;
            }
        }
        if self.link.take_needs_full() {
            self.shared.needs_full.store(true, Ordering::SeqCst);
        }
        let until = self.link.serving_until().map_or(0, |t| t.as_nanos());
        self.shared.serving_until.store(until, Ordering::SeqCst);
        self.shared
            .connected
            .store(self.link.is_up(), Ordering::SeqCst);
        if self.last_status.elapsed() >= Duration::from_millis(100) {
            self.last_status = Instant::now();
            self.write_status();
        }
        if !self.registration_written && self.link.arbiter_registered() {
            // Said at once, not within 100 ms: a fleet daemon's next first start takes this
            // registration over only if the status file names it (`registered`).
            self.registration_written = true;
            self.write_status();
            if let Some(path) = &self.cfg.status_file {
                let text = self
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                write_status_file(path, &text);
            }
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Connect => self.connect(),
            Event::Close(why) => {
                if self.sock.is_some() {
                    self.disconnect(&why);
                }
            }
            Event::Ready { spare_seq } => {
                self.last_error = None;
                log(format!(
                    "connected to spare {} (its image: checkpoint {spare_seq}); lease {} ms",
                    self.cfg.addr,
                    self.link.lease().as_millis()
                ))
            }
            Event::Done { seq, result } => {
                crate::probe::mark(seq, crate::probe::Stage::Acked);
                let result = match result {
                    Ok(()) => self.retire_resumed_image(seq),
                    e => e,
                };
                let m = &self.shared.metrics;
                PrimaryMetrics::inc(if result.is_ok() { &m.acked } else { &m.failed });
                if let Some(done) = self.waiting.remove(&seq) {
                    done.finish(result);
                } else if self.sending.as_ref().is_some_and(|s| s.seq == seq) {
                    let s = self.sending.take().expect("checked");
                    s.done.finish(result);
                }
            }
            Event::Fenced(why) => {
                self.shared.fenced.store(true, Ordering::SeqCst);
                self.shared.serving_until.store(0, Ordering::SeqCst);
                log(format!("FENCED: {why}; this primary must stop serving"));
                if self.cfg.exit_when_fenced {
                    self.exit_fenced(Exit::Fenced);
                }
            }
            Event::Arbiter(line) => log(line),
            Event::HandOverRequested => {
                // Serving stops first; captures begun after that are numbered above the floor.
                self.shared.serving_until.store(0, Ordering::SeqCst);
                let floor = self.shared.capture_started.load(Ordering::SeqCst);
                self.handover_floor = Some(floor);
                self.shared.handover_pending.store(true, Ordering::SeqCst);
                log(format!(
                    "switchover: serving stopped; handing over once a checkpoint after {floor} is acknowledged"
                ));
            }
            Event::HandOverAborted(why) => {
                self.handover_floor = None;
                self.shared.handover_pending.store(false, Ordering::SeqCst);
                log(format!(
                    "switchover given up: {why}; serving again as the leases allow"
                ));
            }
            Event::HandedOver { seq } => {
                self.handover_floor = None;
                self.shared.handover_pending.store(false, Ordering::SeqCst);
                self.shared.fenced.store(true, Ordering::SeqCst);
                self.shared.serving_until.store(0, Ordering::SeqCst);
                log(format!(
                    "handed over to spare {} at checkpoint {seq}: this primary serves no more",
                    self.cfg.addr
                ));
                self.exit_when_flushed = self.cfg.exit_when_fenced;
            }
            Event::LeaseLost => {
                self.shared.serving_until.store(
                    self.link.serving_until().map_or(0, |t| t.as_nanos()),
                    Ordering::SeqCst,
                );
                if !self.lease_logged {
                    let arbiter = if self.arbiter.is_some() {
                        " nor a renewal from the arbiter"
                    } else {
                        ""
                    };
                    log(format!(
                        "no answer from spare {} within the lease ({} ms){arbiter}: not serving until one comes",
                        self.cfg.addr,
                        self.link.lease().as_millis()
                    ));
                }
                self.lease_logged = true;
                if self.cfg.exit_when_fenced && self.arbiter.is_some() {
                    // Not serving already; the arbiter may renew the lease after a hiccup of
                    // etcd's (its renewal is refused if the term key moved, so a spare that
                    // took over fences us instead), and an exit would cost a failover.
                    self.lease_lost_since.get_or_insert_with(Instant::now);
                } else if self.cfg.exit_when_fenced {
                    log("FENCED: lease lost; exiting so that two primaries never both serve");
                    self.exit_fenced(Exit::LeaseLapsed);
                }
            }
        }
    }

    /// Before the first acknowledgement of a resumed program is passed on: the image it was
    /// resumed from (in its own directory, on this host) no longer holds everything
    /// acknowledged — the spare's does — so it must never be resumed again. Its manifest is
    /// renamed `manifest.superseded` (and the directory `fsync`ed): the spare started again on
    /// this directory once this program ends (a fleet daemon's re-protection, or the systemd
    /// unit's restart) holds no image, so it cannot take over from the old one — which would
    /// lose every write acknowledged since — and is given a full checkpoint by whoever is the
    /// primary then. Fails closed: if the rename cannot be made durable, the checkpoint is
    /// reported failed (and this is tried again at the next one).
    fn retire_resumed_image(&mut self, seq: u64) -> Result<(), String> {
        let Some(dir) = self.resumed_image.clone() else {
            return Ok(());
        };
        let from = dir.join("manifest");
        let to = dir.join("manifest.superseded");
        let r = match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => std::fs::File::open(&dir).and_then(|d| d.sync_all()),
        };
        match r {
            Ok(()) => {
                self.resumed_image = None;
                log(format!(
                    "checkpoint {seq} acknowledged by the spare: the image this program was resumed from ({}) is superseded (manifest renamed manifest.superseded); this directory is an empty spare's from now on",
                    dir.display()
                ));
                Ok(())
            }
            Err(e) => Err(format!(
                "acknowledged by the spare, but the image this program was resumed from cannot be retired ({}: {e}): failed, so that it is never resumed without this checkpoint",
                from.display()
            )),
        }
    }

    fn write_status(&self) {
        if self.cfg.status_file.is_none() {
            return;
        }
        let text = self.status_text(None);
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }

    /// The status file's text; `exit`: the process is ending (`"exit":"fenced"`, …).
    fn status_text(&self, exit: Option<Exit>) -> String {
        let (sent, acked) = self.link.seqs();
        let connected = self.link.is_up();
        let until = self.link.serving_until();
        format!(
            "{{\"role\":\"primary\",\"pid\":{},\"term\":{},\"spare\":\"{}\",\"connected\":{connected},\"sent_seq\":{sent},\"acked_seq\":{acked},\"durability\":\"{}\",\"lag\":{},\"lease_left_ms\":{},\"fenced\":{},\"arbiter\":{},\"metrics\":{}{}}}\n",
            std::process::id(),
            self.cfg.term,
            self.cfg.addr,
            self.cfg.ack,
            sent.saturating_sub(acked),
            until.map_or(-1, |u| u.as_nanos().saturating_sub(now().as_nanos()) as i64 / 1_000_000),
            !self.link.may_serve(now()),
            match (&self.cfg.arbiter, self.link.arbiter_registered()) {
                (None, _) => "null".to_string(),
                (Some(a), registered) => format!(
                    "{{\"service\":\"{}\",\"node\":\"{}\",\"registered\":{registered}}}",
                    a.service, a.node
                ),
            },
            self.shared.metrics.json(),
            exit.map_or(String::new(), |e| format!(",\"exit\":\"{}\"", e.as_str())),
        )
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
