//! The spare daemon's driver: one `mio` event loop around the sans-IO protocol core
//! ([`hotspare_proto::spare::Spare`]), disk work on two worker threads ([`disk`]), and the
//! takeover ([`takeover`]).
//!
//! ```text
//!            ┌──────────── event loop (this thread, never blocks on the disk) ───────────┐
//! listener ─▶│ accept → handshake (non-blocking, 1 s deadline, ≤ 16 at once) → session    │
//! sockets  ─▶│ bytes → Opener → Msg → Spare::handle_msg ─▶ Output::Send → Sealer → socket │
//!            │ timers ─▶ Spare::handle_timeout             Output::Disk ─▶ persister ─┐    │
//!   waker  ─▶│ DiskDone ─▶ Spare::handle_disk ◀───────────────────────────────────────┘    │
//!            └──────────────── Output::TakeOver → hook → exec(program) ──────────────────┘
//! ```
//! A peer that sends one byte a second costs one slot and one small buffer until its
//! deadline; it can never delay a heartbeat answer.

mod conn;
mod disk;
pub mod fleet;
pub mod fleet_file;
mod takeover;

use super::arbiter::ArbiterClient;
use super::wire::{self, Key};
use crate::image::ImageDir;
use crate::metrics::SpareCounters;
use conn::{Conn, Phase};
use hotspare_proto::spare::{
    ConnId, DiskDone, DiskOp, Output, Recovered, Spare, SpareConfig as Rules,
};
use hotspare_proto::Msg;
use hotspare_proto::Time;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How the spare runs.
#[derive(Debug, Clone)]
pub struct SpareConfig {
    /// Address to listen on.
    pub listen: String,
    /// The image directory kept up to date.
    pub image_dir: PathBuf,
    /// Shared secret.
    pub key: Key,
    /// The primary's heartbeat interval H.
    pub heartbeat: Duration,
    /// Missed heartbeats (N) after which the primary is declared dead.
    pub missed: u32,
    /// After starting, wait this long for a primary before taking over the image.
    pub startup_grace: Duration,
    /// Let a primary of another lineage replace the image.
    pub accept_new_lineage: bool,
    /// Shell command run at takeover, before the program starts (e.g. move a virtual IP).
    pub on_takeover: Option<String>,
    /// The hook's time limit (past it the hook is killed and the takeover abandoned).
    pub hook_timeout: Duration,
    /// The program (and arguments) to start in resume mode.
    pub exec: Vec<String>,
    /// Environment variables set for the program besides the daemon's own (e.g. the
    /// `HOTSPARE_SPARE` it streams to once it is the primary).
    pub program_env: Vec<(String, String)>,
    /// The arbiter, if one is configured: a takeover needs its compare-and-swap.
    pub arbiter: Option<super::ArbiterConfig>,
}

/// Why the spare stopped without taking over.
#[derive(Debug, thiserror::Error)]
pub enum SpareError {
    /// The image directory cannot be used.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// Listening, polling or starting a thread failed.
    #[error("{what}: {source}")]
    Setup {
        /// What failed.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The term file cannot be read.
    #[error("term file: {0}")]
    Term(String),
    /// The takeover hook failed or timed out; the program was not started.
    #[error("takeover hook: {0}")]
    Hook(String),
    /// `exec` of the program failed.
    #[error("starting {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn log(msg: impl std::fmt::Display) {
    super::log::line("hotspare-resume", msg);
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connections still proving they know the key, at most.
const MAX_HANDSHAKES: usize = 16;
/// Time a connection has to complete the handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(1);
/// Reads per connection per round, so that no peer starves another.
const READS_PER_ROUND: usize = 64;
/// Bytes a peer may leave unread on its socket before it is dropped (a peer that stops reading
/// our answers must not make us buffer without bound).
const MAX_UNSENT: usize = 4 << 20;

/// Runs the spare until it takes over (then the process becomes the program, so this returns
/// only on error).
pub fn run(cfg: SpareConfig) -> SpareError {
    let e = match Daemon::start(&cfg).and_then(|mut d| d.run()) {
        Ok(term) => takeover::become_program(&cfg, term),
        Err(e) => e,
    };
    super::log::flush(Duration::from_millis(200));
    e
}

/// Runs the spare until it takes over, like [`run`], but returns the term won instead of
/// starting the program, once the image directory is closed (its lock released, so that the
/// program can open it): what a daemon that serves several services uses ([`fleet`]).
pub fn serve(cfg: &SpareConfig) -> Result<u64, SpareError> {
    serve_counted(cfg, &mut SpareCounters::default())
}

/// [`serve`], counting into `counters` (and publishing them) from where they are: a fleet
/// daemon's counts for a service then span every spare run of it on this host.
pub(crate) fn serve_counted(
    cfg: &SpareConfig,
    counters: &mut SpareCounters,
) -> Result<u64, SpareError> {
    let mut d = Daemon::start(cfg)?;
    d.counters = *counters;
    let term = d.run();
    *counters = d.counters;
    d.close();
    term
}

fn setup(what: &str) -> impl FnOnce(std::io::Error) -> SpareError + '_ {
    move |source| SpareError::Setup {
        what: what.to_string(),
        source,
    }
}

/// The event loop's state: the protocol core, the connections, the disk workers.
struct Daemon<'a> {
    cfg: &'a SpareConfig,
    core: Spare,
    origin: Instant,
    poll: Poll,
    listener: TcpListener,
    disk: disk::Disk,
    disk_done: mpsc::Receiver<DiskDone>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    status: Arc<Mutex<String>>,
    last_status: Instant,
    /// Set when the core said take over while input was being read.
    taking_over: Option<u64>,
    arbiter: Option<ArbiterClient>,
    /// Published in the status file (`"metrics"`).
    counters: SpareCounters,
}

impl<'a> Daemon<'a> {
    /// Opens (and locks) the image, reads the term, listens, starts the disk workers.
    fn start(cfg: &'a SpareConfig) -> Result<Daemon<'a>, SpareError> {
        let image = ImageDir::open(&cfg.image_dir)?;
        let saved_term = disk::read_term(&cfg.image_dir).map_err(SpareError::Term)?;
        let recovered = Recovered {
            term: saved_term,
            tip: image.tip().as_ref().map(disk::proto_tip),
            applied: image.seq(),
        };
        let origin = Instant::now();
        let core = Spare::new(
            Rules {
                detection: cfg.heartbeat * cfg.missed,
                startup_grace: cfg.startup_grace,
                accept_new_lineage: cfg.accept_new_lineage,
                apply_retry: Duration::from_millis(100),
                arbiter: cfg.arbiter.as_ref().map(|a| a.node.clone()),
            },
            recovered,
            Time::ZERO,
        );
        let listen = format!("listen on {}", cfg.listen);
        let addr = cfg
            .listen
            .to_socket_addrs()
            .map_err(setup(&listen))?
            .next()
            .ok_or_else(|| setup(&listen)(ErrorKind::NotFound.into()))?;
        let mut listener = TcpListener::bind(addr).map_err(setup(&listen))?;
        let poll = Poll::new().map_err(setup("epoll"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(setup("epoll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(setup("waker"))?);
        let arbiter = match &cfg.arbiter {
            Some(a) => Some(
                ArbiterClient::start(a.clone(), waker.clone())
                    .map_err(setup("starting the arbiter thread"))?,
            ),
            None => None,
        };
        let (done_tx, disk_done) = mpsc::channel::<DiskDone>();
        let wake = Arc::new(move || {
            let _ = waker.wake();
        });
        let disk = disk::start(image, done_tx, wake).map_err(setup("starting the disk threads"))?;
        log(format!(
            "listening on {}, image {} at checkpoint {}, term {}; primary declared dead after {} x {} ms (after a restart: {} ms){}",
            cfg.listen,
            cfg.image_dir.display(),
            recovered.tip.map_or(0, |t| t.seq),
            core.term(),
            cfg.missed,
            cfg.heartbeat.as_millis(),
            cfg.startup_grace.as_millis(),
            if cfg.accept_new_lineage {
                "; a new lineage may replace the image"
            } else {
                ""
            }
        ));
        match &cfg.arbiter {
            Some(a) => log(format!(
                "arbiter: etcd {} (key {}), node {}: a takeover needs the arbiter's term",
                a.endpoints.join(","),
                a.term_key(),
                a.node
            )),
            None => log("NO ARBITER (two-machine mode): the spare decides alone. No two primaries serve at once (the primary's lease runs out first), but a cut between the two stops the primary and lets this spare take over even if clients can reach only the primary; use --arbiter for takeovers decided by etcd (docs/replication.md)"),
        }
        takeover::hash_program_ahead(cfg);
        let status = Arc::new(Mutex::new(String::new()));
        super::io::start_status_writer(cfg.image_dir.join("status"), status.clone());
        Ok(Daemon {
            cfg,
            core,
            origin,
            poll,
            listener,
            disk,
            disk_done,
            conns: HashMap::new(),
            next_token: 2,
            status,
            last_status: Instant::now() - Duration::from_secs(1),
            taking_over: None,
            arbiter,
            counters: SpareCounters::default(),
        })
    }

    fn now(&self) -> Time {
        Time::from_nanos(self.origin.elapsed().as_nanos() as u64)
    }

    /// Stops listening, drops every connection, and waits for the disk threads to end (they
    /// hold the image directory).
    fn close(self) {
        let Daemon {
            listener,
            conns,
            disk,
            arbiter,
            status,
            ..
        } = self;
        drop((listener, conns, arbiter, status));
        disk.close();
    }

    /// One round after another until the core says take over; returns the takeover term.
    fn run(&mut self) -> Result<u64, SpareError> {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match self.poll.poll(&mut events, Some(self.sleep_time())) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(setup("epoll")(e)),
            }
            let mut readable = Vec::new();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => readable.extend(self.accept_all()),
                    WAKER => {}
                    tok => {
                        readable.push(tok);
                        if ev.is_writable() {
                            if let Some(c) = self.conns.get_mut(&tok) {
                                if c.flush().is_err() {
                                    c.broken();
                                }
                            }
                        }
                    }
                }
            }
            // Disk results first, then input, then timers: input that waited while we were
            // stopped is read before the primary's silence is judged.
            while let Ok(d) = self.disk_done.try_recv() {
                let now = self.now();
                self.core.handle_disk(now, d);
            }
            while let Some((id, outcome)) = self.arbiter.as_ref().and_then(|a| a.try_recv()) {
                let now = self.now();
                self.core.handle_arbiter(now, id, outcome);
            }
            self.read(readable, &mut buf);
            if let Some(term) = self.taking_over {
                return Ok(term);
            }
            self.expire_handshakes();
            let now = self.now();
            self.core.handle_timeout(now);
            // Applies wait for a batch only while the primary is plainly alive.
            let silent = self
                .core
                .last_grant()
                .is_none_or(|g| now.since(g) > self.cfg.heartbeat * self.cfg.missed / 2);
            self.disk
                .urgent
                .store(!self.core.has_primary() || silent, Ordering::SeqCst);
            if let Some(term) = self.drain_outputs() {
                return Ok(term);
            }
            self.close_finished();
            self.publish_status();
        }
    }

    /// Until the core's next timer or the nearest handshake deadline (at most 100 ms).
    fn sleep_time(&self) -> Duration {
        let now = self.now();
        let mut t = self
            .core
            .poll_timeout()
            .map_or(Duration::from_millis(100), |t| t.since(now))
            .min(Duration::from_millis(100));
        for c in self.conns.values() {
            if let Phase::Handshake(_, deadline) = &c.phase {
                t = t.min(deadline.saturating_duration_since(Instant::now()));
            }
        }
        t
    }

    /// Accepts every waiting connection (refusing past the handshake cap); their tokens.
    fn accept_all(&mut self) -> Vec<Token> {
        let mut new = Vec::new();
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return new,
                Err(e) => {
                    log(format!("accept: {e}"));
                    return new;
                }
            };
            let handshakes = self.conns.values().filter(|c| c.in_handshake()).count();
            if handshakes >= MAX_HANDSHAKES {
                // Full: make room by dropping the handshake that has shown least — one that has
                // not even sent a valid hello, the oldest first — so idle or dribbling peers
                // cannot lock the real primary (whose hello comes with its connect) out.
                let victim = self
                    .conns
                    .iter()
                    .filter_map(|(t, c)| match &c.phase {
                        Phase::Handshake(hs, deadline) => Some((hs.replied(), *deadline, *t)),
                        Phase::Session(..) => None,
                    })
                    .min();
                if let Some((_, _, t)) = victim {
                    self.drop_conn(t, format!("{MAX_HANDSHAKES} handshakes in progress: the one that had shown least is dropped"));
                }
            }
            let nonce = match wire::nonce() {
                Ok(n) => n,
                Err(e) => {
                    self.counters.refused_handshake += 1;
                    log(format!("refused connection from {peer}: no nonce: {e}"));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let tok = Token(self.next_token);
            self.next_token += 1;
            let registered = self.poll.registry().register(
                &mut stream,
                tok,
                Interest::READABLE | Interest::WRITABLE,
            );
            if registered.is_ok() {
                let deadline = Instant::now() + HANDSHAKE_DEADLINE;
                let c = Conn::new(stream, peer.to_string(), &self.cfg.key, nonce, deadline);
                self.conns.insert(tok, c);
                new.push(tok);
            }
        }
    }

    /// Reads every connection that has input — always, so heartbeats are answered however far
    /// behind the disk is (a stream that would overfill the disk queue is refused instead, see
    /// [`Daemon::drain_outputs`]).
    fn read(&mut self, mut tokens: Vec<Token>, buf: &mut [u8]) {
        // A session may hold more input than one round read (edge-triggered events).
        for (t, c) in &self.conns {
            if !c.in_handshake() && !tokens.contains(t) {
                tokens.push(*t);
            }
        }
        let mut dropped = Vec::new();
        for tok in tokens {
            for _ in 0..READS_PER_ROUND {
                let now = self.now();
                let Some(c) = self.conns.get_mut(&tok) else {
                    break;
                };
                let n = match c.stream.read(buf) {
                    Ok(0) => {
                        dropped.push((tok, "closed by the peer".to_string()));
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        dropped.push((tok, e.to_string()));
                        break;
                    }
                };
                if let Err(why) = c.feed(&mut self.core, now, ConnId(tok.0 as u64), &buf[..n]) {
                    dropped.push((tok, why));
                    break;
                }
                // Carry out what this input asked for before reading more (the disk queue's
                // size decides whether the next chunk may be spooled).
                if let Some(term) = self.drain_outputs() {
                    self.taking_over = Some(term);
                    return;
                }
            }
            if let Some(c) = self.conns.get(&tok) {
                if c.unsent() > MAX_UNSENT {
                    let why = format!("the peer left {} bytes of answers unread", c.unsent());
                    dropped.push((tok, why));
                }
            }
        }
        for (tok, why) in dropped {
            self.drop_conn(tok, why);
        }
    }

    fn expire_handshakes(&mut self) {
        let late: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.phase, Phase::Handshake(_, d) if Instant::now() >= *d))
            .map(|(t, _)| *t)
            .collect();
        for tok in late {
            let why = format!("no handshake within {} ms", HANDSHAKE_DEADLINE.as_millis());
            self.drop_conn(tok, why);
        }
    }

    /// Drops a connection now, telling the core if it had a session.
    fn drop_conn(&mut self, tok: Token, why: String) {
        if let Some(mut c) = self.conns.remove(&tok) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            if c.in_handshake() {
                self.counters.refused_handshake += 1;
                log(format!(
                    "refused connection from {}: {}",
                    c.peer,
                    c.refusal(why)
                ));
            } else {
                let now = self.now();
                self.core.handle_closed(now, ConnId(tok.0 as u64), &why);
            }
        }
    }

    /// Carries out what the core asked for; `Some(term)` when it says take over.
    fn drain_outputs(&mut self) -> Option<u64> {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Send(id, term, msg) => {
                    let n = &mut self.counters;
                    match &msg {
                        Msg::HeartbeatAck { .. } => n.heartbeats_answered += 1,
                        Msg::Ack { .. } => n.checkpoints_acked += 1,
                        Msg::Nack { .. } => n.checkpoints_nacked += 1,
                        Msg::Fenced { .. } => n.refused_fenced += 1,
                        Msg::Refused { .. } => n.refused_other += 1,
                        _ => {}
                    }
                    if let Some(c) = self.conns.get_mut(&Token(id.0 as usize)) {
                        c.send(term, &msg);
                    }
                }
                Output::Close(id, why) => {
                    if let Some(c) = self.conns.get_mut(&Token(id.0 as usize)) {
                        if why != "status answered" {
                            log(format!("closing connection from {}: {why}", c.peer));
                        }
                        c.closing = true;
                    }
                }
                Output::Disk(DiskOp::Spool { seq, .. })
                    if self.disk.queued.load(Ordering::SeqCst) > disk::QUEUE_LIMIT =>
                {
                    // The disk is too far behind: refuse this stream rather than stop reading
                    // (which would leave heartbeats unanswered). Answered at once, as the core
                    // counts every operation; its end is Nacked and the primary tries again.
                    let why = format!(
                        "the spare's disk is behind ({} MiB queued): checkpoint refused",
                        disk::QUEUE_LIMIT >> 20
                    );
                    let now = self.now();
                    self.core
                        .handle_disk(now, DiskDone::SpoolFailed { seq, why });
                }
                Output::Disk(op) => {
                    match &op {
                        DiskOp::SpoolStart { .. } => self.counters.checkpoints_received += 1,
                        DiskOp::Spool { bytes, .. } => {
                            self.counters.stream_bytes += bytes.len() as u64
                        }
                        _ => {}
                    }
                    self.disk.submit(op)
                }
                Output::TakeOver { term, seq, silent } => {
                    self.counters.takeovers += 1;
                    log(format!(
                        "primary silent for {} ms: took over at checkpoint {seq} with term {term}",
                        silent.as_millis()
                    ));
                    return Some(term);
                }
                Output::Log(l) => log(l),
                Output::Arbiter(id, req) => match &self.arbiter {
                    Some(a) => a.submit(id, req),
                    None => {
                        let now = self.now();
                        let e = hotspare_proto::arbiter::ArbiterError::Failed(
                            "no arbiter configured".into(),
                        );
                        self.core.handle_arbiter(now, id, Err(e));
                    }
                },
            }
        }
        None
    }

    /// Connections closing: dropped once their last bytes are out (or they broke).
    fn close_finished(&mut self) {
        let finished: Vec<Token> = self
            .conns
            .iter_mut()
            .filter(|(_, c)| c.closing)
            .filter_map(|(t, c)| (c.flush().is_err() || c.unsent() == 0).then_some(*t))
            .collect();
        for t in finished {
            if let Some(mut c) = self.conns.remove(&t) {
                let _ = self.poll.registry().deregister(&mut c.stream);
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                let now = self.now();
                self.core.handle_closed(now, ConnId(t.0 as u64), "closed");
            }
        }
    }

    fn publish_status(&mut self) {
        if self.last_status.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_status = Instant::now();
        let now = self.now();
        let grant = self
            .core
            .last_grant()
            .map_or(-1, |g| now.since(g).as_millis() as i64);
        // The admitted primary's durability level (null: none admitted), and a checkpoint
        // acknowledged on receipt that this spare failed to make durable (0: none; while set it
        // will not take over).
        let durability = self
            .core
            .primary_ack()
            .map_or("null".to_string(), |a| format!("\"{a}\""));
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = format!(
            "{{\"role\":\"spare\",\"pid\":{},\"term\":{},\"seq\":{},\"applied\":{},\"last_heartbeat_ms\":{grant},\"primary_connected\":{},\"durability\":{durability},\"acked_not_durable\":{},\"listen\":\"{}\",\"arbiter\":{},\"claiming\":{},\"metrics\":{}}}\n",
            std::process::id(),
            self.core.term(),
            self.core.tip().map_or(0, |t| t.seq),
            self.core.applied(),
            self.core.has_primary(),
            self.core.acked_not_durable().unwrap_or(0),
            self.cfg.listen,
            self.cfg.arbiter.as_ref().map_or("null".to_string(), |a| format!(
                "{{\"service\":\"{}\",\"node\":\"{}\"}}",
                a.service, a.node
            )),
            self.core.claiming(),
            self.counters.json(),
        );
    }
}
