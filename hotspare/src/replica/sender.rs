//! The primary's side: one authenticated connection to the spare, heartbeats every H ms, the
//! lease, and sending checkpoint streams (acknowledged only once durable on the spare).
//!
//! Three threads share the connection: the checkpoint writer (sends streams, waits for their
//! acknowledgement), a heartbeat thread (connects when there is no connection, sends
//! heartbeats, watches the lease), and a reader per connection (acknowledgements, heartbeat
//! answers, fencing). A new connection makes the next checkpoint full, so a new or restarted
//! spare always gets a complete image; a checkpoint whose acknowledgement does not come makes
//! the next one full too, so a broken connection loses nothing.

use super::wire::{self, Key, Msg, SendHalf, WireError};
use std::collections::VecDeque;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
    /// The lease: with no word from the spare for this long, the primary considers itself
    /// possibly fenced (must be shorter than the spare's detection time N × H).
    pub lease: Duration,
    /// Exit the process when the lease is lost or the spare says we are fenced (else: report).
    pub exit_when_fenced: bool,
    /// Our term.
    pub term: u64,
    /// Our executable.
    pub exe_id: [u8; 32],
    /// Where to keep a status file for `hotspare status` (rewritten every ~100 ms).
    pub status_file: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct State {
    /// Acks and Nacks, in arrival order: (seq, Ok or reason).
    acks: Mutex<VecDeque<(u64, Result<(), String>)>>,
    acks_changed: Condvar,
    /// Bumped at every new connection and every loss.
    generation: AtomicU64,
    last_reply: Mutex<Option<Instant>>,
    fenced: AtomicBool,
    lease_lost: AtomicBool,
    /// Set on every new connection: the next checkpoint must be full.
    new_connection: AtomicBool,
    latest_seq: AtomicU64,
    acked_seq: AtomicU64,
    /// Bytes of checkpoint messages put on the wire (framing, MACs and all).
    wire_bytes: AtomicU64,
    /// Held while connecting, so the writer and the heartbeat thread never make two
    /// connections at once (the spare keeps only the newest).
    connecting: Mutex<()>,
}

/// The link to the spare (cheap to clone: all clones share it).
#[derive(Clone)]
pub(crate) struct Remote {
    cfg: RemoteConfig,
    tx: Arc<Tx>,
    state: Arc<State>,
}

/// The sending half of the current connection and the generation it belongs to.
type Tx = Mutex<Option<(u64, SendHalf)>>;

/// Drops the connection of `generation` (if it is still the current one) and wakes waiters.
fn drop_connection(tx: &Tx, state: &State, generation: u64) {
    let mut g = tx.lock().unwrap_or_else(|p| p.into_inner());
    if g.as_ref().is_some_and(|(gen, _)| *gen == generation) {
        if let Some((_, t)) = g.take() {
            t.shutdown();
        }
        state.generation.fetch_add(1, Ordering::SeqCst);
    }
    drop(g);
    state.acks_changed.notify_all();
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("hotspare: {msg}");
}

impl Remote {
    /// Starts the heartbeat thread (which also makes the connection).
    pub fn start(cfg: RemoteConfig) -> Remote {
        let r = Remote {
            cfg,
            tx: Arc::new(Mutex::new(None)),
            state: Arc::new(State::default()),
        };
        let (cfg, tx, state) = (r.cfg.clone(), r.tx.clone(), r.state.clone());
        std::thread::Builder::new()
            .name("hotspare-heartbeat".into())
            .spawn(move || heartbeat_loop(cfg, tx, state))
            .expect("spawn heartbeat thread");
        r
    }

    /// Whether a connection was made since the last call (the next checkpoint must be full).
    pub fn take_new_connection(&self) -> bool {
        self.state.new_connection.swap(false, Ordering::SeqCst)
    }

    /// Whether the spare fenced us or the lease ran out.
    pub fn fenced(&self) -> bool {
        self.state.fenced.load(Ordering::SeqCst) || self.state.lease_lost.load(Ordering::SeqCst)
    }

    /// Sends the stream in `path` as checkpoint `seq` and waits until the spare has it durably.
    pub fn send_file(&self, path: &Path, seq: u64) -> Result<(), String> {
        if self.state.fenced.load(Ordering::SeqCst) {
            return Err("fenced by the spare (a newer term exists)".into());
        }
        if self.tx.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            connect(&self.cfg, &self.tx, &self.state)
                .map_err(|e| format!("spare {}: {e}", self.cfg.addr))?;
        }
        let generation = match self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some((g, _)) => *g,
            None => return Err("no connection to the spare".into()),
        };
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            self.send(&Msg::Chunk {
                seq,
                bytes: buf[..n].to_vec(),
            })?;
        }
        self.send(&Msg::EndStream { seq })?;
        self.state.latest_seq.store(seq, Ordering::SeqCst);
        let mut acks = self.state.acks.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some((s, r)) = acks.pop_front() {
                if s == seq {
                    return r.map_err(|why| format!("spare refused checkpoint {seq}: {why}"));
                }
            }
            if self.state.generation.load(Ordering::SeqCst) != generation {
                return Err(format!(
                    "connection to the spare lost before checkpoint {seq} was acknowledged"
                ));
            }
            acks = self
                .state
                .acks_changed
                .wait_timeout(acks, self.cfg.heartbeat)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Bytes of checkpoint streams sent to the spare so far, on the wire.
    pub fn wire_bytes(&self) -> u64 {
        self.state.wire_bytes.load(Ordering::SeqCst)
    }

    fn send(&self, m: &Msg) -> Result<(), String> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some((generation, t)) = tx.as_mut() else {
            return Err("no connection to the spare".into());
        };
        let sent = t.send(self.cfg.term, m);
        if let Ok(n) = sent {
            self.state.wire_bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Err(e) = sent {
            let generation = *generation;
            drop(tx);
            drop_connection(&self.tx, &self.state, generation);
            return Err(format!("sending to the spare: {e}"));
        }
        Ok(())
    }
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Connects, authenticates, says hello, reads the spare's status, starts the reader.
fn connect(cfg: &RemoteConfig, tx: &Arc<Tx>, state: &Arc<State>) -> Result<(), WireError> {
    let _one_at_a_time = state.connecting.lock().unwrap_or_else(|p| p.into_inner());
    if tx.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
        return Ok(()); // another thread connected while we waited
    }
    let addr = resolve(&cfg.addr)?;
    let timeout = (cfg.heartbeat * 20).max(Duration::from_millis(200));
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_tcp_nodelay(true)?;
    sock.set_keepalive(true)?;
    // Data unacknowledged for this long means the spare (or the path to it) is gone: give up the
    // connection instead of retransmitting for minutes. It must stay well above TCP's minimum
    // retransmission timeout (200 ms): one lost segment must not kill the connection. Liveness
    // at the heartbeat's pace is the lease's job, not this one's.
    // A spare whose disk is saturated (a large image being applied) can stop reading for
    // seconds: that is slowness, not death, so this is generous.
    sock.set_tcp_user_timeout(Some((cfg.lease * 100).max(Duration::from_secs(10))))?;
    sock.connect_timeout(&addr.into(), timeout)?;
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(timeout))?;
    let (mut t, mut r) = wire::connect(stream, &cfg.key)?;
    t.send(
        cfg.term,
        &Msg::Hello {
            exe_id: cfg.exe_id,
            pid: std::process::id(),
        },
    )?;
    let (spare_term, status) = r.recv()?;
    match status {
        Msg::Status { seq, .. } if spare_term <= cfg.term => {
            log(format!(
                "connected to spare {} (its image: checkpoint {seq}, term {spare_term})",
                cfg.addr
            ));
        }
        Msg::Fenced { term } | Msg::Status { term, .. } => {
            fence(
                cfg,
                state,
                format!(
                    "the spare {} has term {term}, newer than ours ({})",
                    cfg.addr, cfg.term
                ),
            );
            return Err(WireError::AuthFailed);
        }
        other => return Err(WireError::Decode(format!("unexpected reply {other:?}"))),
    }
    r.socket().set_read_timeout(None)?;
    *state.last_reply.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    let generation = state.generation.fetch_add(1, Ordering::SeqCst) + 1;
    state.new_connection.store(true, Ordering::SeqCst);
    *tx.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, t));
    let (cfg2, state2, tx2) = (cfg.clone(), state.clone(), tx.clone());
    std::thread::spawn(move || loop {
        match r.recv() {
            Ok((term, m)) => {
                *state2.last_reply.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                state2.lease_lost.store(false, Ordering::SeqCst);
                match m {
                    Msg::Ack { seq } => {
                        state2.acked_seq.fetch_max(seq, Ordering::SeqCst);
                        push_ack(&state2, seq, Ok(()));
                    }
                    Msg::Nack { seq, reason } => push_ack(&state2, seq, Err(reason)),
                    Msg::Fenced { term: t } => {
                        fence(
                            &cfg2,
                            &state2,
                            format!("the spare says term {t} exists (ours {})", cfg2.term),
                        );
                    }
                    Msg::HeartbeatAck { .. } | Msg::Status { .. } if term > cfg2.term => {
                        fence(
                            &cfg2,
                            &state2,
                            format!("the spare has term {term} (ours {})", cfg2.term),
                        );
                    }
                    _ => {}
                }
            }
            Err(e) => {
                if state2.generation.load(Ordering::SeqCst) == generation {
                    log(format!("connection to spare {} lost: {e}", cfg2.addr));
                }
                drop_connection(&tx2, &state2, generation);
                return;
            }
        }
    });
    Ok(())
}

fn push_ack(state: &State, seq: u64, r: Result<(), String>) {
    state
        .acks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push_back((seq, r));
    state.acks_changed.notify_all();
}

fn fence(cfg: &RemoteConfig, state: &State, why: String) {
    if !state.fenced.swap(true, Ordering::SeqCst) {
        log(format!("FENCED: {why}; this primary must stop serving"));
        if cfg.exit_when_fenced {
            std::process::exit(75);
        }
    }
}

/// Writes the primary's status file (tmp + rename, so readers never see half of it).
fn write_status(cfg: &RemoteConfig, state: &State, connected: bool) {
    let Some(path) = &cfg.status_file else { return };
    let last = *state.last_reply.lock().unwrap_or_else(|p| p.into_inner());
    let text = format!(
        "{{\"role\":\"primary\",\"pid\":{},\"term\":{},\"spare\":\"{}\",\"connected\":{connected},\"sent_seq\":{},\"acked_seq\":{},\"lag\":{},\"last_reply_ms\":{},\"fenced\":{}}}\n",
        std::process::id(),
        cfg.term,
        cfg.addr,
        state.latest_seq.load(Ordering::SeqCst),
        state.acked_seq.load(Ordering::SeqCst),
        state.latest_seq.load(Ordering::SeqCst).saturating_sub(state.acked_seq.load(Ordering::SeqCst)),
        last.map_or(-1, |t| t.elapsed().as_millis() as i64),
        state.fenced.load(Ordering::SeqCst) || state.lease_lost.load(Ordering::SeqCst),
    );
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn heartbeat_loop(cfg: RemoteConfig, tx: Arc<Tx>, state: Arc<State>) {
    let mut last_attempt: Option<Instant> = None;
    let mut last_status = Instant::now() - Duration::from_secs(1);
    loop {
        std::thread::sleep(cfg.heartbeat);
        if last_status.elapsed() >= Duration::from_millis(100) {
            last_status = Instant::now();
            let connected = tx.lock().unwrap_or_else(|p| p.into_inner()).is_some();
            write_status(&cfg, &state, connected);
        }
        let mut guard = tx.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some((generation, t)) => {
                let seq = state.latest_seq.load(Ordering::SeqCst);
                if let Err(e) = t.send(cfg.term, &Msg::Heartbeat { seq }) {
                    log(format!("heartbeat to spare {} failed: {e}", cfg.addr));
                    let generation = *generation;
                    drop(guard);
                    drop_connection(&tx, &state, generation);
                }
            }
            None => {
                drop(guard);
                let retry = last_attempt.is_none_or(|t| t.elapsed() >= cfg.heartbeat * 10);
                if retry && !state.fenced.load(Ordering::SeqCst) {
                    last_attempt = Some(Instant::now());
                    if let Err(e) = connect(&cfg, &tx, &state) {
                        log(format!("spare {} unreachable: {e}", cfg.addr));
                    }
                }
            }
        }
        let last = *state.last_reply.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = last {
            if t.elapsed() > cfg.lease && !state.lease_lost.swap(true, Ordering::SeqCst) {
                log(format!(
                    "no word from spare {} for {} ms (lease {} ms): it may have taken over",
                    cfg.addr,
                    t.elapsed().as_millis(),
                    cfg.lease.as_millis()
                ));
                if cfg.exit_when_fenced {
                    log("FENCED: lease lost; exiting so that two primaries never both serve");
                    std::process::exit(75);
                }
            }
        }
    }
}
