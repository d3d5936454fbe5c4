//! The spare: receives checkpoints into a crash-safe image, answers heartbeats, and when the
//! primary has been silent for N heartbeat intervals takes over — raises the term, runs the
//! takeover hook, and `exec`s the program in resume mode on the image.
//!
//! Threads, so that disk latency never delays a heartbeat answer:
//! * the **main loop** accepts connections (one primary at a time; `hotspare status` queries
//!   are answered and closed), answers heartbeats, hands stream chunks to the persister, and
//!   watches for the primary's silence (a stall of its own does not count as the primary's);
//! * a **reader** per connection stamps the time of every message as it arrives (so a message
//!   waiting while the main loop is busy still counts as a sign of life);
//! * the **persister** spools each stream to `wal/<seq>.tmp`, validates it whole, makes it
//!   durable (fsync + rename) and only then acknowledges it;
//! * the **applier** writes durable streams into the data files, in order;
//! * a **status** thread rewrites `DIR/status` every 100 ms.
//!
//! Every connection must authenticate ([`wire::accept`]); one that does not, or that sends
//! anything malformed or from an older term, is dropped with a log line and never touches the
//! image.

use super::wire::{self, Key, Msg, RecvHalf, SendHalf, WireError};
use crate::image::ImageDir;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Shell command run at takeover, before the program starts (e.g. move a virtual IP).
    pub on_takeover: Option<String>,
    /// The program (and arguments) to start in resume mode.
    pub exec: Vec<String>,
}

/// Why the spare stopped without taking over.
#[derive(Debug, thiserror::Error)]
pub enum SpareError {
    /// The image directory cannot be used.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// Listening (or starting a thread) failed.
    #[error("{what}: {source}")]
    Setup {
        /// What failed.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Persisting the raised term failed.
    #[error("writing the term: {0}")]
    Term(std::io::Error),
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

/// The term persisted next to the image (`DIR/term`), raised at every takeover.
fn read_term(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("term"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_term(dir: &Path, term: u64) -> std::io::Result<()> {
    let tmp = dir.join("term.tmp");
    let mut f = File::create(&tmp)?;
    writeln!(f, "{term}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("term"))?;
    File::open(dir)?.sync_all()
}

type SharedTx = Arc<Mutex<SendHalf>>;

fn send(tx: &SharedTx, term: u64, m: &Msg) -> Result<(), WireError> {
    tx.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(term, m)
        .map(|_| ())
}

struct Link {
    tx: SharedTx,
    /// Messages read by the connection's reader thread.
    msgs: mpsc::Receiver<Result<(u64, Msg), WireError>>,
    peer: String,
    /// The stream being received.
    incoming: Option<u64>,
    /// A duplicate of the socket, to ask the kernel whether bytes are waiting (a stall of this
    /// process must not look like silence of the primary).
    probe: Option<TcpStream>,
}

impl Link {
    /// Whether the kernel heard from the primary on this connection within `limit`: the
    /// kernel receives packets whatever our threads are doing, so a starved or stopped spare
    /// does not mistake its own stall for the primary's silence (`TCP_INFO.tcpi_last_data_recv`).
    fn kernel_heard_within(&self, limit: Duration) -> bool {
        let Some(probe) = &self.probe else {
            return false;
        };
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: valid pointers to `info` and `len`; the descriptor is our own duplicate.
        let rc = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(probe),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        rc == 0 && u128::from(info.tcpi_last_data_recv) <= limit.as_millis()
    }

    /// Whether the primary's bytes or messages are waiting to be read: then it is not silent,
    /// we are just behind (e.g. this process was stopped or starved).
    fn has_pending(&self) -> bool {
        let Some(probe) = &self.probe else {
            return false;
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int; the descriptor is our own duplicate of the socket.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(probe),
                libc::FIONREAD,
                &mut n,
            )
        };
        rc == 0 && n > 0
    }

    fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    }
}

/// Work for the persister thread, which owns every file operation of a stream (the main loop
/// must never wait for the disk: file creation and even buffered writes can block for hundreds
/// of milliseconds behind other `fsync`s).
enum ToDisk {
    /// The next bytes of stream `seq` (a new `seq` starts a new spool file).
    Chunk { seq: u64, bytes: Vec<u8> },
    /// Stream `seq` is complete: validate, make durable, acknowledge on `tx`.
    End {
        seq: u64,
        tx: SharedTx,
        peer: String,
    },
}

/// Reads messages on a thread of its own until the connection fails or is shut down.
fn reader(
    mut rx: RecvHalf,
    heard: Arc<Mutex<Option<Instant>>>,
) -> mpsc::Receiver<Result<(u64, Msg), WireError>> {
    let (tx, msgs) = mpsc::channel();
    std::thread::spawn(move || loop {
        let m = rx.recv();
        if m.is_ok() {
            // Stamped on arrival, so a message waiting while the main loop is busy counts.
            *heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let failed = m.is_err();
        if tx.send(m).is_err() || failed {
            return;
        }
    });
    msgs
}

struct Spare {
    cfg: SpareConfig,
    /// Our term (raised at takeover).
    term: u64,
    /// The highest term a primary presented (the takeover term must exceed it).
    primary_term: u64,
    /// When the primary was last heard from.
    heard: Arc<Mutex<Option<Instant>>>,
    /// The latest checkpoint durable here (persisted; maybe not applied yet).
    durable_seq: Arc<AtomicU64>,
    /// The latest checkpoint applied to the data files. A takeover waits until it reaches
    /// `durable_seq`, so a backlog (a full image just received) lengthens the failover.
    applied_seq: Arc<AtomicU64>,
    persist: Option<mpsc::Sender<ToDisk>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Spare {
    fn last_heard(&self) -> Option<Instant> {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> Msg {
        Msg::Status {
            term: self.term,
            seq: self.durable_seq.load(Ordering::SeqCst),
            since_heartbeat_ms: self
                .last_heard()
                .map_or(u64::MAX, |t| t.elapsed().as_millis() as u64),
        }
    }

    /// Authenticates a new connection; returns it if it is a primary (status queries are
    /// answered and closed here).
    fn admit(&mut self, stream: TcpStream) -> Option<Link> {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let refuse =
            |why: &dyn std::fmt::Display| log(format!("refused connection from {peer}: {why}"));
        let (mut tx, mut rx) = match wire::accept(stream, &self.cfg.key) {
            Ok(h) => h,
            Err(e) => {
                refuse(&e);
                return None;
            }
        };
        let (term, first) = match rx.recv() {
            Ok(m) => m,
            Err(e) => {
                refuse(&e);
                return None;
            }
        };
        match first {
            Msg::StatusRequest => {
                let _ = tx.send(self.term, &self.status());
                None
            }
            Msg::Hello { pid, .. } => {
                if term < self.term {
                    refuse(&format!(
                        "primary pid {pid} has term {term}, older than ours ({}): fenced",
                        self.term
                    ));
                    let _ = tx.send(self.term, &Msg::Fenced { term: self.term });
                    return None;
                }
                if tx.send(self.term, &self.status()).is_err() {
                    return None;
                }
                let _ = rx.socket().set_read_timeout(None);
                let probe = rx.socket().try_clone().ok();
                self.primary_term = self.primary_term.max(term);
                log(format!(
                    "primary pid {pid} (term {term}) connected from {peer}"
                ));
                *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                let tx = Arc::new(Mutex::new(tx));
                Some(Link {
                    tx,
                    msgs: reader(rx, self.heard.clone()),
                    peer,
                    incoming: None,
                    probe,
                })
            }
            other => {
                refuse(&format!("unexpected first message {other:?}"));
                None
            }
        }
    }

    /// Handles one message; `Err` drops the connection.
    fn handle(&mut self, link: &mut Link, term: u64, msg: Msg) -> Result<(), String> {
        if term < self.term {
            let _ = send(&link.tx, self.term, &Msg::Fenced { term: self.term });
            return Err(format!(
                "message with stale term {term} (ours {}): fenced",
                self.term
            ));
        }
        let reply = match msg {
            Msg::Heartbeat { .. } => Some(Msg::HeartbeatAck {
                seq: self.durable_seq.load(Ordering::SeqCst),
            }),
            Msg::StatusRequest => Some(self.status()),
            Msg::Chunk { seq, bytes } => {
                link.incoming = Some(seq);
                if let Some(p) = &self.persist {
                    let _ = p.send(ToDisk::Chunk { seq, bytes });
                }
                None
            }
            Msg::EndStream { seq } => {
                if link.incoming.take() != Some(seq) {
                    return Err(format!("end of checkpoint {seq} without its data"));
                }
                let r = ToDisk::End {
                    seq,
                    tx: link.tx.clone(),
                    peer: link.peer.clone(),
                };
                if let Some(p) = &self.persist {
                    let _ = p.send(r);
                }
                None
            }
            other => return Err(format!("unexpected message {other:?}")),
        };
        if let Some(r) = reply {
            send(&link.tx, self.term, &r).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Whether the primary's silence may be judged now. A takeover must wait for the applier to
    /// catch up anyway, so while it is behind (a full image just arrived) deciding later costs
    /// no downtime — and this is when the machine is busiest with our own I/O and a live
    /// primary's heartbeats are most likely to be late (a false takeover at 10 M keys of
    /// `hotspare-kv` happened exactly then). A stuck applier must not block a takeover forever:
    /// past 20 × the silence limit the silence is judged regardless.
    fn settled_enough_to_judge(&self, limit: Duration) -> bool {
        let behind =
            self.applied_seq.load(Ordering::SeqCst) < self.durable_seq.load(Ordering::SeqCst);
        !behind || self.last_heard().is_some_and(|t| t.elapsed() > limit * 20)
    }

    fn dead(&self) -> bool {
        let limit = self.cfg.heartbeat * self.cfg.missed;
        self.durable_seq.load(Ordering::SeqCst) > 0
            && self.last_heard().is_some_and(|t| t.elapsed() > limit)
    }

    fn takeover(mut self) -> SpareError {
        let detected = Instant::now();
        let silent = self.last_heard().map_or(0, |t| t.elapsed().as_millis());
        log(format!(
            "primary silent for {silent} ms: declared dead; finishing what is durable ({} checkpoints not yet applied)",
            self.durable_seq
                .load(Ordering::SeqCst)
                .saturating_sub(self.applied_seq.load(Ordering::SeqCst))
        ));
        // Let the persister and applier finish what arrived (resume would replay it otherwise).
        drop(self.persist.take());
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.term = self.term.max(self.primary_term) + 1;
        let dir = self.cfg.image_dir.clone();
        if let Err(e) = write_term(&dir, self.term) {
            return SpareError::Term(e);
        }
        log(format!(
            "primary silent for {silent} ms: taking over at checkpoint {} with term {} ({} ms to settle)",
            self.durable_seq.load(Ordering::SeqCst),
            self.term,
            detected.elapsed().as_millis()
        ));
        if let Some(cmd) = &self.cfg.on_takeover {
            let t = Instant::now();
            let st = std::process::Command::new("sh")
                .args(["-c", cmd])
                .env("HOTSPARE_TERM", self.term.to_string())
                .env("HOTSPARE_IMAGE_DIR", &dir)
                .status();
            match st {
                Ok(s) if s.success() => log(format!(
                    "takeover hook done in {} ms",
                    t.elapsed().as_millis()
                )),
                Ok(s) => log(format!(
                    "takeover hook failed ({s}); starting the program anyway"
                )),
                Err(e) => log(format!(
                    "takeover hook could not run ({e}); starting the program anyway"
                )),
            }
        }
        let program = self.cfg.exec[0].clone();
        let e = std::process::Command::new(&program)
            .args(&self.cfg.exec[1..])
            .env("HOTSPARE_RESUME", &dir)
            .env("HOTSPARE_IMAGE_DIR", &dir)
            .env("HOTSPARE_TERM", self.term.to_string())
            .exec();
        SpareError::Exec { program, source: e }
    }
}

/// Rewrites the spare's status file for `hotspare status` every 100 ms, on a thread of its own
/// (file creation and rename can block behind `fsync`s).
fn start_status_writer(spare: &Spare) {
    let (dir, listen, term) = (
        spare.cfg.image_dir.clone(),
        spare.cfg.listen.clone(),
        spare.term,
    );
    let (durable, applied, heard) = (
        spare.durable_seq.clone(),
        spare.applied_seq.clone(),
        spare.heard.clone(),
    );
    std::thread::spawn(move || loop {
        let last = *heard.lock().unwrap_or_else(|p| p.into_inner());
        let text = format!(
            "{{\"role\":\"spare\",\"pid\":{},\"term\":{term},\"seq\":{},\"applied\":{},\"last_heartbeat_ms\":{},\"listen\":\"{listen}\"}}\n",
            std::process::id(),
            durable.load(Ordering::SeqCst),
            applied.load(Ordering::SeqCst),
            last.map_or(-1, |t| t.elapsed().as_millis() as i64),
        );
        let path = dir.join("status");
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
        std::thread::sleep(Duration::from_millis(100));
    });
}

/// The persister and applier threads.
fn start_workers(
    dir: &Path,
    durable_seq: Arc<AtomicU64>,
    applied_seq: Arc<AtomicU64>,
    term: u64,
) -> Result<(mpsc::Sender<ToDisk>, Vec<std::thread::JoinHandle<()>>), SpareError> {
    let setup = |what: &str| {
        let what = what.to_owned();
        move |source| SpareError::Setup { what, source }
    };
    let (wake_tx, wake) = mpsc::channel::<()>();
    let mut applier_dir = ImageDir::attach(dir)?;
    let applier = std::thread::Builder::new()
        .name("hotspare-applier".into())
        .spawn(move || {
            while wake.recv().is_ok() {
                while wake.try_recv().is_ok() {}
                match applier_dir.apply_pending() {
                    Ok(seq) => applied_seq.store(seq, Ordering::SeqCst),
                    Err(e) => log(format!("applying checkpoints: {e}")),
                }
            }
            let _ = applier_dir.apply_pending();
        })
        .map_err(setup("starting the applier thread"))?;
    let (persist_tx, received) = mpsc::channel::<ToDisk>();
    let persister_dir = ImageDir::attach(dir)?;
    let persister = std::thread::Builder::new()
        .name("hotspare-persister".into())
        .spawn(move || {
            // The spool file of the stream being received; a write error poisons that stream.
            let mut spool: Option<(u64, Result<File, String>)> = None;
            for m in received {
                match m {
                    ToDisk::Chunk { seq, bytes } => {
                        if spool.as_ref().map(|(s, _)| *s) != Some(seq) {
                            let f = persister_dir
                                .create_wal(seq)
                                .map(|(_, f)| f)
                                .map_err(|e| e.to_string());
                            spool = Some((seq, f));
                        }
                        if let Some((_, Ok(f))) = spool.as_mut() {
                            if let Err(e) = f.write_all(&bytes) {
                                spool = Some((seq, Err(format!("spooling checkpoint {seq}: {e}"))));
                            }
                        }
                    }
                    ToDisk::End { seq, tx, peer } => {
                        let spooled = match spool.take() {
                            Some((s, r)) if s == seq => r.map(drop),
                            _ => Err(format!("checkpoint {seq} ended without its data")),
                        };
                        let have = durable_seq.load(Ordering::SeqCst);
                        let persisted = spooled.and_then(|()| {
                            persister_dir
                                .persist_wal(seq, None, have, term)
                                .map_err(|e| e.to_string())
                        });
                        let reply = match persisted {
                            Ok(_) => {
                                durable_seq.store(seq, Ordering::SeqCst);
                                let _ = wake_tx.send(());
                                Msg::Ack { seq }
                            }
                            Err(reason) => {
                                log(format!("checkpoint {seq} from {peer} refused: {reason}"));
                                Msg::Nack { seq, reason }
                            }
                        };
                        let _ = send(&tx, term, &reply);
                    }
                }
            }
        })
        .map_err(setup("starting the persister thread"))?;
    Ok((persist_tx, vec![persister, applier]))
}

/// Runs the spare until it takes over (then the process becomes the program, so this returns
/// only on error).
pub fn run(cfg: SpareConfig) -> SpareError {
    match run_inner(cfg) {
        Ok(spare) => spare.takeover(),
        Err(e) => e,
    }
}

fn run_inner(cfg: SpareConfig) -> Result<Spare, SpareError> {
    let image = ImageDir::open(&cfg.image_dir)?;
    let term = read_term(&cfg.image_dir).max(image.manifest().map_or(0, |m| m.term));
    let setup = |what: String| move |source| SpareError::Setup { what, source };
    let listener =
        TcpListener::bind(&cfg.listen).map_err(setup(format!("listen on {}", cfg.listen)))?;
    listener
        .set_nonblocking(true)
        .map_err(setup(format!("listen on {}", cfg.listen)))?;
    log(format!(
        "listening on {}, image {} at checkpoint {}, term {term}; primary declared dead after {} x {} ms",
        cfg.listen,
        cfg.image_dir.display(),
        image.seq(),
        cfg.missed,
        cfg.heartbeat.as_millis()
    ));
    let durable_seq = Arc::new(AtomicU64::new(image.seq()));
    let applied_seq = Arc::new(AtomicU64::new(image.seq()));
    let (persist, workers) = start_workers(
        &cfg.image_dir,
        durable_seq.clone(),
        applied_seq.clone(),
        term,
    )?;
    let mut spare = Spare {
        cfg,
        term,
        primary_term: 0,
        heard: Arc::new(Mutex::new(None)),
        durable_seq,
        applied_seq,
        persist: Some(persist),
        workers,
    };
    let mut link: Option<Link> = None;
    start_status_writer(&spare);
    let mut last_tick = Instant::now();
    loop {
        // If this loop itself did not run for a while (the process was stopped, starved, or
        // stuck behind the disk), that time is our silence, not the primary's: move the
        // "last heard" mark forward by it.
        let gap = last_tick.elapsed();
        last_tick = Instant::now();
        if gap > spare.cfg.heartbeat * 2 {
            let mut h = spare.heard.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = h.as_mut() {
                *t = (*t + gap).min(Instant::now());
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if let Some(new) = spare.admit(stream) {
                    if let Some(old) = link.replace(new) {
                        log(format!(
                            "primary reconnected; dropping the old connection from {}",
                            old.peer
                        ));
                        old.close();
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => log(format!("accept: {e}")),
        }
        match link.as_mut() {
            Some(l) => match l
                .msgs
                .recv_timeout(Duration::from_millis(1).min(spare.cfg.heartbeat))
            {
                Ok(Ok((term, msg))) => {
                    if let Err(why) = spare.handle(l, term, msg) {
                        log(format!(
                            "dropping primary connection from {}: {why}",
                            l.peer
                        ));
                        l.close();
                        link = None;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Err(e)) => {
                    log(format!("primary connection from {} lost: {e}", l.peer));
                    link = None;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => link = None,
            },
            None => std::thread::sleep(Duration::from_millis(1)),
        }
        let limit = spare.cfg.heartbeat * spare.cfg.missed;
        let alive = link
            .as_ref()
            .is_some_and(|l| l.has_pending() || l.kernel_heard_within(limit));
        if spare.dead() && !alive && spare.settled_enough_to_judge(limit) {
            if let Some(l) = link.take() {
                l.close();
            }
            return Ok(spare);
        }
    }
}
