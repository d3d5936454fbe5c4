//! The spare daemon's driver: one `mio` event loop around the sans-IO protocol core
//! ([`hotspare_proto::spare::Spare`]), disk work on two worker threads ([`disk`]), and the
//! takeover ([`takeover`]).
//!
//! ```text
//!            ┌──────────── event loop (this thread, never blocks on the disk) ───────────┐
//! listener ─▶│ accept → handshake (non-blocking, 2 s deadline, ≤ 16 at once) → session    │
//! sockets  ─▶│ bytes → Opener → Msg → Spare::handle_msg ─▶ Output::Send → Sealer → socket │
//!            │ timers ─▶ Spare::handle_timeout             Output::Disk ─▶ persister ─┐    │
//!   waker  ─▶│ DiskDone ─▶ Spare::handle_disk ◀───────────────────────────────────────┘    │
//!            └──────────────── Output::TakeOver → hook → exec(program) ──────────────────┘
//! ```
//! A peer that sends one byte a second costs one slot and one small buffer until its
//! deadline; it can never delay a heartbeat answer.

mod disk;
mod takeover;

use super::wire::{self, Key};
use crate::image::ImageDir;
use hotspare_proto::codec::{Opener, Sealer, ServerHandshake, ServerStep};
use hotspare_proto::spare::{ConnId, DiskDone, Output, Recovered, Spare, SpareConfig as Rules};
use hotspare_proto::Time;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
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
    eprintln!("hotspare-resume: {msg}");
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connections still proving they know the key, at most.
const MAX_HANDSHAKES: usize = 16;
/// Time a connection has to complete the handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);

enum Phase {
    Handshake(ServerHandshake, Instant),
    Session(Opener, Sealer),
}

struct Conn {
    stream: TcpStream,
    peer: String,
    phase: Phase,
    out: Vec<u8>,
    sent: usize,
    closing: bool,
}

impl Conn {
    /// Writes what is buffered; `Err` if the connection is broken.
    fn flush(&mut self) -> std::io::Result<()> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        Ok(())
    }
}

/// The status file, for `hotspare status DIR`, rewritten by a thread of its own (file creation
/// can block behind `fsync`s).
fn start_status_writer(dir: PathBuf, snapshot: Arc<Mutex<String>>) {
    std::thread::spawn(move || loop {
        let text = snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let path = dir.join("status");
        let tmp = path.with_extension("tmp");
        use std::os::unix::fs::OpenOptionsExt;
        let w = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if w.is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
        std::thread::sleep(Duration::from_millis(100));
    });
}

/// Runs the spare until it takes over (then the process becomes the program, so this returns
/// only on error).
pub fn run(cfg: SpareConfig) -> SpareError {
    match serve(&cfg) {
        Ok(term) => takeover::become_program(&cfg, term),
        Err(e) => e,
    }
}

/// The event loop; returns the takeover term.
fn serve(cfg: &SpareConfig) -> Result<u64, SpareError> {
    let setup = |what: String| move |source| SpareError::Setup { what, source };
    let image = ImageDir::open(&cfg.image_dir)?;
    let saved_term = disk::read_term(&cfg.image_dir).map_err(SpareError::Term)?;
    let tip = image.tip();
    let recovered = Recovered {
        term: saved_term,
        tip: tip.as_ref().map(disk::proto_tip),
        applied: image.seq(),
    };
    let origin = Instant::now();
    let now = || Time::from_nanos(origin.elapsed().as_nanos() as u64);
    let detection = cfg.heartbeat * cfg.missed;
    let mut core = Spare::new(
        Rules {
            detection,
            startup_grace: cfg.startup_grace,
            accept_new_lineage: cfg.accept_new_lineage,
            apply_retry: Duration::from_millis(100),
        },
        recovered,
        now(),
    );
    let addr = cfg.listen.parse().map_err(|e| SpareError::Setup {
        what: format!("listen address {}", cfg.listen),
        source: std::io::Error::new(ErrorKind::InvalidInput, e),
    })?;
    let mut listener =
        TcpListener::bind(addr).map_err(setup(format!("listen on {}", cfg.listen)))?;
    let mut poll = Poll::new().map_err(setup("epoll".into()))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(setup("epoll".into()))?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(setup("waker".into()))?);
    let (done_tx, done_rx) = mpsc::channel::<DiskDone>();
    let w = waker.clone();
    let disk = disk::start(
        image,
        done_tx,
        Arc::new(move || {
            let _ = w.wake();
        }),
    )
    .map_err(setup("starting the disk threads".into()))?;
    log(format!(
        "listening on {}, image {} at checkpoint {}, term {}; primary declared dead after {} x {} ms (after a restart: {} ms){}",
        cfg.listen,
        cfg.image_dir.display(),
        recovered.tip.map_or(0, |t| t.seq),
        core.term(),
        cfg.missed,
        cfg.heartbeat.as_millis(),
        cfg.startup_grace.as_millis(),
        if cfg.accept_new_lineage { "; a new lineage may replace the image" } else { "" }
    ));
    log("two-machine mode: the spare decides alone, which is safe only because the primary's lease runs out first (docs/replication.md)");
    let snapshot = Arc::new(Mutex::new(String::new()));
    start_status_writer(cfg.image_dir.clone(), snapshot.clone());
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next_token = 2usize;
    let mut events = Events::with_capacity(256);
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        // Sleep until the core's next timer or the nearest handshake deadline.
        let t_now = now();
        let mut timeout = core
            .poll_timeout()
            .map_or(Duration::from_millis(100), |t| t.since(t_now))
            .min(Duration::from_millis(100));
        for c in conns.values() {
            if let Phase::Handshake(_, deadline) = &c.phase {
                timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(SpareError::Setup {
                    what: "epoll".into(),
                    source: e,
                });
            }
        }
        let backpressure = disk.queued.load(Ordering::SeqCst) > disk::QUEUE_LIMIT;
        let mut readable: Vec<Token> = Vec::new();
        for ev in events.iter() {
            match ev.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            let handshakes = conns
                                .values()
                                .filter(|c| matches!(c.phase, Phase::Handshake(..)))
                                .count();
                            if handshakes >= MAX_HANDSHAKES {
                                log(format!("refused connection from {peer}: {MAX_HANDSHAKES} handshakes already in progress"));
                                continue;
                            }
                            let nonce = match wire::nonce() {
                                Ok(n) => n,
                                Err(e) => {
                                    log(format!("refused connection from {peer}: no nonce: {e}"));
                                    continue;
                                }
                            };
                            let _ = stream.set_nodelay(true);
                            let tok = Token(next_token);
                            next_token += 1;
                            if poll
                                .registry()
                                .register(&mut stream, tok, Interest::READABLE | Interest::WRITABLE)
                                .is_ok()
                            {
                                conns.insert(
                                    tok,
                                    Conn {
                                        stream,
                                        peer: peer.to_string(),
                                        phase: Phase::Handshake(
                                            ServerHandshake::new(&cfg.key, nonce),
                                            Instant::now() + HANDSHAKE_DEADLINE,
                                        ),
                                        out: Vec::new(),
                                        sent: 0,
                                        closing: false,
                                    },
                                );
                                readable.push(tok);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => {
                            log(format!("accept: {e}"));
                            break;
                        }
                    }
                },
                WAKER => {}
                tok => {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        readable.push(tok);
                    }
                    if ev.is_writable() {
                        if let Some(c) = conns.get_mut(&tok) {
                            if c.flush().is_err() {
                                c.closing = true;
                                c.out.clear();
                            }
                        }
                    }
                }
            }
        }
        // Disk results first: an acknowledgement must not wait behind new input.
        while let Ok(d) = done_rx.try_recv() {
            core.handle_disk(now(), d);
        }
        // Input, then timers (input that waited while we were stopped is read before the
        // silence is judged). Under back-pressure the primary's stream is left in the socket,
        // except that a connection still handshaking is always served.
        let mut closed: Vec<(Token, String)> = Vec::new();
        let primary_tokens: Vec<Token> = conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Session(..)))
            .map(|(t, _)| *t)
            .collect();
        let mut to_read = readable;
        if !backpressure {
            // Sessions may hold more input than one read took: always try them.
            for t in primary_tokens {
                if !to_read.contains(&t) {
                    to_read.push(t);
                }
            }
        }
        for tok in to_read {
            let Some(c) = conns.get_mut(&tok) else {
                continue;
            };
            if backpressure && matches!(c.phase, Phase::Session(..)) {
                continue;
            }
            let mut budget = 64usize; // reads per connection per round, so no peer starves another
            loop {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let n = match c.stream.read(&mut buf) {
                    Ok(0) => {
                        closed.push((tok, "closed by the peer".into()));
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        closed.push((tok, e.to_string()));
                        break;
                    }
                };
                if let Err(why) = feed(&mut core, &now, tok, c, &buf[..n], &cfg.key) {
                    closed.push((tok, why));
                    break;
                }
                if disk.queued.load(Ordering::SeqCst) > disk::QUEUE_LIMIT {
                    break;
                }
            }
        }
        // Handshake deadlines.
        for (tok, c) in &conns {
            if let Phase::Handshake(_, deadline) = &c.phase {
                if Instant::now() >= *deadline {
                    closed.push((
                        *tok,
                        format!("no handshake within {} s", HANDSHAKE_DEADLINE.as_secs()),
                    ));
                }
            }
        }
        for (tok, why) in closed {
            if let Some(mut c) = conns.remove(&tok) {
                let _ = poll.registry().deregister(&mut c.stream);
                if let Phase::Handshake(hs, _) = &c.phase {
                    let why = if hs.replied() && why == "closed by the peer" {
                        "authentication failed: the peer hung up on our proof (it does not know the shared key)".to_string()
                    } else {
                        why
                    };
                    log(format!("refused connection from {}: {why}", c.peer));
                } else {
                    core.handle_closed(now(), ConnId(tok.0 as u64), &why);
                }
            }
        }
        core.handle_timeout(now());
        while let Some(o) = core.poll_output() {
            match o {
                Output::Send(id, term, msg) => {
                    if let Some(c) = conns.get_mut(&Token(id.0 as usize)) {
                        if let Phase::Session(_, sealer) = &mut c.phase {
                            sealer.seal(term, &msg, &mut c.out);
                            if c.flush().is_err() {
                                c.closing = true;
                                c.out.clear();
                            }
                        }
                    }
                }
                Output::Close(id, why) => {
                    if let Some(c) = conns.get_mut(&Token(id.0 as usize)) {
                        if !why.starts_with("status answered") {
                            log(format!("closing connection from {}: {why}", c.peer));
                        }
                        c.closing = true;
                    }
                }
                Output::Disk(op) => disk.submit(op),
                Output::TakeOver { term, seq, silent } => {
                    log(format!(
                        "primary silent for {} ms: took over at checkpoint {seq} with term {term}",
                        silent.as_millis()
                    ));
                    return Ok(term);
                }
                Output::Log(l) => log(l),
            }
        }
        // Connections closing: once their last bytes are out (or they broke).
        let finished: Vec<Token> = conns
            .iter_mut()
            .filter_map(|(t, c)| {
                if c.closing {
                    let _ = c.flush();
                    (c.out.is_empty() || c.flush().is_err()).then_some(*t)
                } else {
                    None
                }
            })
            .collect();
        for t in finished {
            if let Some(mut c) = conns.remove(&t) {
                let _ = poll.registry().deregister(&mut c.stream);
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                core.handle_closed(now(), ConnId(t.0 as u64), "closed");
            }
        }
        if last_status.elapsed() >= Duration::from_millis(100) {
            last_status = Instant::now();
            let tip = core.tip();
            let grant = core
                .last_grant()
                .map_or(-1, |g| now().since(g).as_millis() as i64);
            *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = format!(
                "{{\"role\":\"spare\",\"pid\":{},\"term\":{},\"seq\":{},\"applied\":{},\"last_heartbeat_ms\":{grant},\"primary_connected\":{},\"listen\":\"{}\"}}\n",
                std::process::id(),
                core.term(),
                tip.map_or(0, |t| t.seq),
                core.applied(),
                core.has_primary(),
                cfg.listen
            );
        }
    }
}

/// Feeds bytes from a connection: through the handshake, then as messages into the core.
fn feed(
    core: &mut Spare,
    now: &dyn Fn() -> Time,
    tok: Token,
    c: &mut Conn,
    bytes: &[u8],
    _key: &Key,
) -> Result<(), String> {
    if c.closing {
        return Ok(());
    }
    let id = ConnId(tok.0 as u64);
    let rest = match &mut c.phase {
        Phase::Handshake(hs, _) => match hs.feed(bytes).map_err(|e| e.to_string())? {
            ServerStep::More => return Ok(()),
            ServerStep::Reply(r) => {
                c.out.extend_from_slice(&r);
                c.flush().map_err(|e| e.to_string())?;
                return Ok(());
            }
            ServerStep::Done(session, rest) => {
                c.phase = Phase::Session(session.opener, session.sealer);
                core.handle_open(now(), id);
                rest
            }
        },
        Phase::Session(..) => bytes.to_vec(),
    };
    let Phase::Session(opener, _) = &mut c.phase else {
        unreachable!("set above")
    };
    opener.push(&rest);
    loop {
        match opener.next_msg() {
            Ok(Some((term, msg))) => core.handle_msg(now(), id, term, msg),
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}
