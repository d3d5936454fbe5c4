//! The deterministic simulator: the *real* [`Link`] and [`Spare`] state machines, a simulated
//! network (delays, stalls, resets, one-way and two-way partitions), simulated processes
//! (pauses, crashes, restarts of either side or both, a fresh primary against an old image), a
//! simulated disk (unsynced work lost on crash; a persist cut by a crash lost, torn — recovery
//! sets it aside — or durable with its answer lost; `ENOSPC`, `EIO`, slow `fsync`) and clocks
//! that drift. Every fault is drawn from one seed, so a failure replays exactly:
//! `cargo run --release -p hotspare-proto --bin hotspare-sim -- --seed N`.
//!
//! After every step it checks:
//! * **one server at a time** — never does a running primary hold `may_serve` on its own
//!   clock while the spare has taken over;
//! * **nothing acknowledged is lost** — every checkpoint acknowledged to the primary's
//!   application is in (or superseded within its lineage by) the image a takeover resumes; a
//!   lineage is only replaced where the spare was told to allow it;
//! * **only real images** — the resumed image is one the primary produced (lineage, sequence
//!   and contents), never a mix of two runs;
//! * **liveness** — with the faults healed, a live primary is not taken over, and a dead one is
//!   taken over within the configured bound.
//!
//! Modelled rather than run: the byte codec (tested on its own in `codec`), and the image
//! directory, whose validation rules the simulated disk applies as `hotspare::image` does
//! (the real one is tested, and fuzzed, in its crate).

use crate::msg::{Lineage, Msg, StreamHeader};
use crate::primary::{Event, Link, LinkConfig};
use crate::spare::{ConnId, DiskDone, DiskOp, Output, Recovered, Spare, SpareConfig, Tip};
use crate::time::Time;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

const MS: u64 = 1_000_000;

/// What one scenario found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// Simulated time.
    pub sim_nanos: u64,
    /// Checkpoints acknowledged to the primary's application.
    pub acked: u64,
    /// Takeovers (0 or 1).
    pub takeovers: u32,
    /// Faults injected.
    pub faults: u32,
    /// Broken guarantees (empty: passed).
    pub violations: Vec<String>,
    /// The last lines of the trace (for a failing seed).
    pub trace: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    P,
    S,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        conn: u64,
        to: Side,
        term: u64,
        msg: Msg,
    },
    Closed {
        conn: u64,
        to: Side,
    },
    Connected {
        conn: u64,
    },
    ConnectFailed {
        inc: u64,
    },
    Timer {
        side: Side,
        inc: u64,
    },
    DiskDone {
        inc: u64,
        done: DiskDone,
    },
    AppTick {
        inc: u64,
    },
    Unpause {
        side: Side,
        inc: u64,
    },
    Restart {
        side: Side,
    },
    Fault,
    PartitionCheck {
        conn: u64,
        epoch: u64,
    },
    Heal {
        epoch: u64,
    },
    Liveness,
    KillForLiveness,
}

struct Queued {
    at: u64,
    n: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.n) == (o.at, o.n)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.n).cmp(&(self.at, self.n))
    }
}

/// A node's clock: `offset + t · (1 + ppm/10⁶)`.
#[derive(Clone, Copy)]
struct Clock {
    offset: u64,
    ppm: i64,
}
impl Clock {
    fn local(&self, t: u64) -> Time {
        let skew = (t as i128 * self.ppm as i128 / 1_000_000) as i64;
        Time::from_nanos(self.offset + (t as i64 + skew) as u64)
    }
    fn real(&self, local: Time) -> u64 {
        let l = local.as_nanos().saturating_sub(self.offset) as i128;
        (l * 1_000_000 / (1_000_000 + self.ppm as i128)) as u64 + 1
    }
}

/// An image as the simulated disk holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Img {
    lineage: Lineage,
    seq: u64,
    base: u64,
    term: u64,
    value: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DiskMode {
    Healthy,
    Full,
    Eio,
    Slow,
}

/// The spare's disk: what survives a crash, and the volatile spool.
#[derive(Default)]
struct Disk {
    term: u64,
    image: Option<Img>,
    wal: Vec<Img>,
    spool: Option<(StreamHeader, Lineage, u64, Option<Img>, bool)>,
    queue: VecDeque<DiskOp>,
    busy: bool,
    /// Torn WAL files left by crashes (recovery finds them damaged and sets them aside).
    torn: u32,
}

impl Disk {
    fn tip(&self) -> Option<Img> {
        self.wal.last().copied().or(self.image)
    }
    fn as_tip(i: Img, exe: [u8; 32]) -> Tip {
        Tip {
            lineage: i.lineage,
            seq: i.seq,
            term: i.term,
            exe_id: exe,
        }
    }
    /// Applies the WAL; an incremental that does not chain is a broken promise (it was
    /// acknowledged), reported by returning it.
    fn apply(&mut self) -> Result<u64, Img> {
        for w in std::mem::take(&mut self.wal) {
            let chains = w.base == 0
                || self
                    .image
                    .is_some_and(|i| i.lineage == w.lineage && i.seq == w.base);
            if !chains {
                return Err(w);
            }
            self.image = Some(w);
        }
        Ok(self.image.map_or(0, |i| i.seq))
    }
}

struct PNode {
    link: Link,
    clock: Clock,
    inc: u64,
    lineage: Lineage,
    conn: Option<u64>,
    paused_until: Option<u64>,
    deferred: VecDeque<Ev>,
    value: u64,
    last_seq: u64,
    in_flight: Option<u64>,
    last_failed: bool,
    exited: bool,
}

struct SNode {
    core: Spare,
    clock: Clock,
    inc: u64,
    paused_until: Option<u64>,
    deferred: VecDeque<Ev>,
}

struct SimConn {
    p_inc: u64,
    s_inc: u64,
    open: bool,
    fifo: [u64; 2],
    held: [VecDeque<Ev>; 2],
}

/// One simulated pair and its faults.
struct World {
    rng: fastrand::Rng,
    now: u64,
    n: u64,
    q: BinaryHeap<Queued>,
    p: Option<PNode>,
    s: Option<SNode>,
    p_inc: u64,
    s_inc: u64,
    disk: Disk,
    disk_mode: DiskMode,
    conns: HashMap<u64, SimConn>,
    next_conn: u64,
    /// Directions blocked: [primary→spare, spare→primary].
    blocked: [bool; 2],
    partition_epoch: u64,
    exe: [u8; 32],
    link_cfg: LinkConfig,
    spare_cfg: SpareConfig,
    exit_on_lease_loss: bool,
    p_clock: Clock,
    s_clock: Clock,
    /// (lineage, seq) → value, for every checkpoint any primary produced.
    produced: HashMap<(Lineage, u64), u64>,
    /// Lineages in creation order.
    lineages: Vec<Lineage>,
    acked: BTreeMap<Lineage, u64>,
    acked_count: u64,
    taken_over_at: Option<u64>,
    decided_at: Option<u64>,
    /// The time each side's timer is armed for (stale timer events are ignored).
    armed: [Option<u64>; 2],
    faults_on: bool,
    quiet_from: Option<u64>,
    killed_for_liveness: Option<u64>,
    end: u64,
    report: Report,
    trace: VecDeque<String>,
}

impl World {
    fn at(&mut self, t: u64, ev: Ev) {
        self.n += 1;
        self.q.push(Queued {
            at: t,
            n: self.n,
            ev,
        });
    }

    /// Arms a side's timer, unless it is already armed for that moment.
    fn arm(&mut self, side: Side, real: u64, inc: u64) {
        let i = Self::dir(side);
        if self.armed[i] != Some(real) {
            self.armed[i] = Some(real);
            self.at(real, Ev::Timer { side, inc });
        }
    }

    fn after(&mut self, d: u64, ev: Ev) {
        let t = self.now + d;
        self.at(t, ev);
    }

    fn trace(&mut self, s: String) {
        if self.trace.len() >= 200 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("{:>9.3} ms {s}", self.now as f64 / 1e6));
    }

    fn violation(&mut self, s: String) {
        if !self.report.violations.contains(&s) {
            self.trace(format!("VIOLATION {s}"));
            self.report.violations.push(s);
        }
    }

    fn delay(&mut self) -> u64 {
        // Mostly LAN-like; sometimes a stall of the path.
        if self.faults_on && self.rng.u32(0..200) == 0 {
            self.rng.u64(20 * MS..150 * MS)
        } else {
            self.rng.u64(30_000..1_500_000)
        }
    }

    fn new_lineage(&mut self) -> Lineage {
        let mut l = [0u8; 16];
        for b in &mut l {
            *b = self.rng.u8(..);
        }
        self.lineages.push(l);
        l
    }

    fn start_primary(&mut self) {
        self.p_inc += 1;
        let lineage = self.new_lineage();
        let mut cfg = self.link_cfg.clone();
        cfg.lineage = lineage;
        let clock = self.p_clock;
        let link = Link::new(cfg, clock.local(self.now));
        self.trace(format!(
            "primary #{} starts, fresh lineage {:02x}{:02x}",
            self.p_inc, lineage[0], lineage[1]
        ));
        self.p = Some(PNode {
            link,
            clock,
            inc: self.p_inc,
            lineage,
            conn: None,
            paused_until: None,
            deferred: VecDeque::new(),
            value: 0,
            last_seq: 0,
            in_flight: None,
            last_failed: false,
            exited: false,
        });
        let inc = self.p_inc;
        self.after(0, Ev::Timer { side: Side::P, inc });
        let d = self.rng.u64(MS..10 * MS);
        self.after(d, Ev::AppTick { inc });
    }

    fn start_spare(&mut self) {
        self.s_inc += 1;
        // What ImageDir::open does: complete WAL files are applied, torn ones set aside (their
        // CRCs fail), the spool is gone.
        if self.disk.torn > 0 {
            self.trace(format!(
                "recovery sets aside {} torn WAL file(s)",
                self.disk.torn
            ));
            self.disk.torn = 0;
        }
        self.disk.spool = None;
        self.disk.queue.clear();
        self.disk.busy = false;
        if let Err(w) = self.disk.apply() {
            self.violation(format!(
                "a durable checkpoint does not apply at recovery: {w:?}"
            ));
        }
        let exe = self.exe;
        let rec = Recovered {
            term: self.disk.term,
            tip: self.disk.image.map(|i| Disk::as_tip(i, exe)),
            applied: self.disk.image.map_or(0, |i| i.seq),
        };
        let clock = self.s_clock;
        let core = Spare::new(self.spare_cfg.clone(), rec, clock.local(self.now));
        self.trace(format!(
            "spare #{} starts: term {}, image {:?}",
            self.s_inc,
            rec.term,
            rec.tip.map(|t| t.seq)
        ));
        self.s = Some(SNode {
            core,
            clock,
            inc: self.s_inc,
            paused_until: None,
            deferred: VecDeque::new(),
        });
        let inc = self.s_inc;
        self.after(0, Ev::Timer { side: Side::S, inc });
    }

    fn crash(&mut self, side: Side) {
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.open
                    && match side {
                        Side::P => c.p_inc == self.p_inc,
                        Side::S => c.s_inc == self.s_inc,
                    }
            })
            .map(|(k, _)| *k)
            .collect();
        match side {
            Side::P => {
                self.trace("primary crashes".into());
                self.p = None;
                self.p_inc += 1;
            }
            Side::S => {
                self.trace("spare crashes (unsynced disk work lost)".into());
                self.s = None;
                self.s_inc += 1;
                // A persist that was running when the process died either never became
                // durable, became durable without anyone hearing of it (fsync and rename done,
                // the answer lost), or left a torn WAL file that recovery finds damaged.
                if self.disk.busy {
                    if let Some(DiskOp::Persist {
                        seq,
                        replace_lineage,
                    }) = self.disk.queue.front().cloned()
                    {
                        match self.rng.u32(0..3) {
                            0 if self.sim_persist(seq, replace_lineage).is_ok() => {
                                self.trace(format!("checkpoint {seq} became durable unannounced"));
                            }
                            1 => self.disk.torn += 1,
                            _ => {}
                        }
                    }
                }
                self.disk.queue.clear();
                self.disk.busy = false;
                self.disk.spool = None;
            }
        }
        for c in conns {
            self.close_conn(c, side);
        }
    }

    fn dir(from: Side) -> usize {
        match from {
            Side::P => 0,
            Side::S => 1,
        }
    }

    /// Sends on a connection, in order, or holds it while the direction is partitioned.
    fn net_send(&mut self, conn: u64, from: Side, ev: Ev) {
        let d = Self::dir(from);
        let delay = self.delay();
        let blocked = self.blocked[d];
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if blocked {
            c.held[d].push_back(ev);
            return;
        }
        let t = (self.now + delay).max(c.fifo[d] + 1);
        c.fifo[d] = t;
        self.at(t, ev);
    }

    fn close_conn(&mut self, conn: u64, from: Side) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        c.open = false;
        let to = match from {
            Side::P => Side::S,
            Side::S => Side::P,
        };
        self.net_send(conn, from, Ev::Closed { conn, to });
    }

    fn heal(&mut self) {
        self.blocked = [false, false];
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            for d in 0..2 {
                let held: Vec<Ev> = self
                    .conns
                    .get_mut(&id)
                    .map(|c| c.held[d].drain(..).collect())
                    .unwrap_or_default();
                let from = if d == 0 { Side::P } else { Side::S };
                for ev in held {
                    self.net_send(id, from, ev);
                }
            }
        }
    }

    // ---- the primary's driver ----

    fn p_pump(&mut self) {
        let Some(p) = self.p.as_mut() else { return };
        let mut sends = Vec::new();
        while let Some(m) = p.link.poll_transmit() {
            sends.push(m);
        }
        let mut events = Vec::new();
        while let Some(e) = p.link.poll_event() {
            events.push(e);
        }
        let (conn, term) = (p.conn, p.link.term());
        for m in sends {
            if let Some(c) = conn {
                self.net_send(
                    c,
                    Side::P,
                    Ev::Deliver {
                        conn: c,
                        to: Side::S,
                        term,
                        msg: m,
                    },
                );
            }
        }
        for e in events {
            self.p_event(e);
        }
        let inc = self.p_inc;
        if let Some(p) = self.p.as_ref() {
            if let Some(t) = p.link.poll_timeout() {
                let real = p.clock.real(t).max(self.now);
                self.arm(Side::P, real, inc);
            }
        }
    }

    fn p_event(&mut self, e: Event) {
        let now = self.now;
        let Some(p) = self.p.as_mut() else { return };
        let local = p.clock.local(now);
        match e {
            Event::Connect => {
                if let Some(old) = p.conn.take() {
                    self.close_conn(old, Side::P);
                }
                let spare_listening = self.s.as_ref().is_some_and(|s| !s.core.taken_over());
                let reachable = !self.blocked[0] && !self.blocked[1];
                let inc = self.p_inc;
                if spare_listening && reachable {
                    self.next_conn += 1;
                    let id = self.next_conn;
                    self.conns.insert(
                        id,
                        SimConn {
                            p_inc: self.p_inc,
                            s_inc: self.s_inc,
                            open: true,
                            fifo: [0, 0],
                            held: [VecDeque::new(), VecDeque::new()],
                        },
                    );
                    if let Some(p) = self.p.as_mut() {
                        p.conn = Some(id);
                    }
                    let d = self.delay();
                    self.after(d, Ev::Connected { conn: id });
                } else {
                    let d = self.rng.u64(MS..200 * MS);
                    self.after(d, Ev::ConnectFailed { inc });
                }
            }
            Event::Close(why) => {
                if let Some(c) = p.conn.take() {
                    p.link.handle_disconnected(local, &why);
                    self.trace(format!("primary closes: {why}"));
                    self.close_conn(c, Side::P);
                }
            }
            Event::Ready { .. } => {}
            Event::Done { seq, result } => {
                if p.in_flight == Some(seq) {
                    p.in_flight = None;
                }
                match result {
                    Ok(()) => {
                        let l = p.lineage;
                        let e = self.acked.entry(l).or_insert(0);
                        *e = (*e).max(seq);
                        self.acked_count += 1;
                    }
                    Err(why) => {
                        p.last_failed = true;
                        self.trace(format!("primary: checkpoint {seq} failed: {why}"));
                    }
                }
            }
            Event::Fenced(why) => {
                p.exited = true;
                self.trace(format!("primary fenced: {why}; it exits"));
                self.crash(Side::P);
            }
            Event::LeaseLost => {
                if self.exit_on_lease_loss {
                    self.trace("primary lost its lease; on_fence=exit".into());
                    self.crash(Side::P);
                }
            }
        }
    }

    fn app_tick(&mut self) {
        let now = self.now;
        let Some(p) = self.p.as_mut() else { return };
        p.value += 1 + p.value % 3;
        let local = p.clock.local(now);
        if p.link.is_up() && p.in_flight.is_none() {
            let full = p.link.take_needs_full() || p.last_failed || p.last_seq == 0;
            p.last_failed = false;
            let seq = p.last_seq + 1;
            let base = if full { 0 } else { p.last_seq };
            let h = StreamHeader {
                seq,
                base_seq: base,
            };
            if p.link.start_checkpoint(local, h).is_ok() {
                p.last_seq = seq;
                p.in_flight = Some(seq);
                self.produced.insert((p.lineage, seq), p.value);
                let img = Img {
                    lineage: p.lineage,
                    seq,
                    base,
                    term: p.link.term(),
                    value: p.value,
                };
                p.link.send_chunk(
                    seq,
                    postcard::to_allocvec(&(img.lineage, img.seq, img.base, img.value))
                        .expect("encode"),
                );
                for _ in 0..self.rng.u32(0..3) {
                    p.link.send_chunk(seq, vec![0; 16]);
                }
                p.link.end_checkpoint(local, seq);
            } else {
                p.last_failed = true;
            }
        }
        self.p_pump();
        let inc = self.p_inc;
        let d = self.rng.u64(MS..12 * MS);
        self.after(d, Ev::AppTick { inc });
    }

    // ---- the spare's driver ----

    fn s_pump(&mut self) {
        loop {
            let Some(s) = self.s.as_mut() else { return };
            let Some(o) = s.core.poll_output() else { break };
            match o {
                Output::Send(c, term, msg) => {
                    let open = self.conns.get(&c.0).is_some_and(|k| k.open);
                    if open {
                        self.net_send(
                            c.0,
                            Side::S,
                            Ev::Deliver {
                                conn: c.0,
                                to: Side::P,
                                term,
                                msg,
                            },
                        );
                    }
                }
                Output::Close(c, why) => {
                    let now = s.clock.local(self.now);
                    s.core.handle_closed(now, c, &why);
                    self.trace(format!("spare closes conn {}: {why}", c.0));
                    self.close_conn(c.0, Side::S);
                }
                Output::Disk(op) => {
                    self.disk.queue.push_back(op);
                    self.disk_kick();
                }
                Output::TakeOver { term, seq, silent } => {
                    self.trace(format!(
                        "TAKEOVER term {term} at checkpoint {seq} after {} ms of silence",
                        silent.as_millis()
                    ));
                    self.takeover_check(seq);
                }
                Output::Log(l) => self.trace(format!("spare: {l}")),
            }
        }
        let inc = self.s_inc;
        if let Some(s) = self.s.as_ref() {
            if let Some(t) = s.core.poll_timeout() {
                let real = s.clock.real(t).max(self.now);
                self.arm(Side::S, real, inc);
            }
        }
    }

    fn disk_kick(&mut self) {
        if self.disk.busy || self.disk.queue.is_empty() {
            return;
        }
        self.disk.busy = true;
        let lat = match self.disk_mode {
            DiskMode::Slow => self.rng.u64(100 * MS..900 * MS),
            _ => self.rng.u64(20_000..3 * MS),
        };
        let op = self.disk.queue.front().cloned().expect("not empty");
        let done = self.disk_exec(op);
        let inc = self.s_inc;
        self.after(lat, Ev::DiskDone { inc, done });
    }

    /// Decides the outcome of the disk operation now; it becomes durable when it completes
    /// (`finish_disk`), so a crash in between loses it.
    fn disk_exec(&mut self, op: DiskOp) -> DiskDone {
        let fail = match self.disk_mode {
            DiskMode::Full => Some("No space left on device (os error 28)"),
            DiskMode::Eio if self.rng.bool() => Some("Input/output error (os error 5)"),
            _ => None,
        };
        match op {
            DiskOp::SaveTerm(term) => DiskDone::TermSaved {
                term,
                result: fail.map_or(Ok(()), |f| Err(f.into())),
            },
            DiskOp::SpoolStart { header, .. } => match fail {
                Some(f) => DiskDone::SpoolFailed {
                    seq: header.seq,
                    why: f.into(),
                },
                None => DiskDone::Discarded,
            },
            DiskOp::Spool { seq, .. } => match fail {
                Some(f) => DiskDone::SpoolFailed { seq, why: f.into() },
                None => DiskDone::Discarded,
            },
            DiskOp::Persist { seq, .. } => match fail {
                Some(f) => DiskDone::Persisted {
                    seq,
                    result: Err(f.into()),
                },
                None => DiskDone::Persisted {
                    seq,
                    result: Err(String::new()),
                }, // decided at finish
            },
            DiskOp::Discard { .. } => DiskDone::Discarded,
            DiskOp::Apply => match fail {
                Some(f) => DiskDone::Applied(Err(f.into())),
                None => DiskDone::Applied(Ok(0)),
            },
        }
    }

    fn finish_disk(&mut self, mut done: DiskDone) -> DiskDone {
        let Some(op) = self.disk.queue.pop_front() else {
            self.violation(format!(
                "simulator bug: disk completion with nothing running: {done:?}"
            ));
            return done;
        };
        self.disk.busy = false;
        let exe = self.exe;
        match (&op, &mut done) {
            (DiskOp::SaveTerm(t), DiskDone::TermSaved { result: Ok(()), .. }) => {
                self.disk.term = self.disk.term.max(*t);
            }
            (
                DiskOp::SpoolStart {
                    header,
                    lineage,
                    term,
                },
                DiskDone::Discarded,
            ) => {
                self.disk.spool = Some((*header, *lineage, *term, None, true));
            }
            (DiskOp::SpoolStart { header, .. }, DiskDone::SpoolFailed { .. }) => {
                self.disk.spool = Some((*header, [0; 16], 0, None, false));
            }
            (DiskOp::Spool { seq, bytes }, d) => {
                let ok = matches!(d, DiskDone::Discarded);
                if let Some(sp) = self.disk.spool.as_mut().filter(|sp| sp.0.seq == *seq) {
                    if !ok {
                        sp.4 = false;
                    } else if sp.3.is_none() {
                        let decoded: Option<(Lineage, u64, u64, u64)> =
                            postcard::from_bytes(bytes).ok();
                        if let Some((l, s, b, v)) = decoded {
                            sp.3 = Some(Img {
                                lineage: l,
                                seq: s,
                                base: b,
                                term: sp.2,
                                value: v,
                            });
                        }
                    }
                }
            }
            (
                DiskOp::Persist {
                    seq,
                    replace_lineage,
                },
                DiskDone::Persisted { result, .. },
            ) if result.as_ref().is_err_and(|e| e.is_empty()) => {
                *result = self
                    .sim_persist(*seq, *replace_lineage)
                    .map(|i| Disk::as_tip(i, exe));
            }
            (DiskOp::Apply, DiskDone::Applied(r)) if r.is_ok() => match self.disk.apply() {
                Ok(s) => *r = Ok(s),
                Err(w) => {
                    self.violation(format!("an acknowledged checkpoint does not apply: {w:?}"));
                    *r = Err("does not chain".into());
                }
            },
            _ => {}
        }
        if matches!(op, DiskOp::Persist { .. } | DiskOp::Discard { .. }) {
            self.disk.spool = None;
        }
        done
    }

    /// The validation `ImageDir::persist_wal` does, against the durable tip.
    fn sim_persist(&mut self, seq: u64, replace: bool) -> Result<Img, String> {
        let Some((h, lineage, _term, Some(img), true)) = self.disk.spool else {
            return Err("stream torn or incomplete".into());
        };
        if h.seq != seq || img.seq != seq || img.base != h.base_seq || img.lineage != lineage {
            return Err("stream does not match its declared header".into());
        }
        if let Some(t) = self.disk.tip() {
            if img.term < t.term {
                return Err("stale term".into());
            }
            if t.lineage == img.lineage {
                if img.seq <= t.seq {
                    return Err("not newer".into());
                }
                if img.base != 0 && img.base != t.seq {
                    return Err("does not chain".into());
                }
            } else if img.base != 0 || !replace {
                return Err("other lineage".into());
            }
        } else if img.base != 0 {
            return Err("incremental on an empty image".into());
        }
        self.disk.wal.push(img);
        Ok(img)
    }

    // ---- checks ----

    fn takeover_check(&mut self, seq: u64) {
        self.taken_over_at = Some(self.now);
        self.report.takeovers += 1;
        let Some(img) = self.disk.image else {
            self.violation("took over with no image".into());
            return;
        };
        if img.seq != seq {
            self.violation(format!(
                "took over at {seq} but the image is at {}",
                img.seq
            ));
        }
        match self.produced.get(&(img.lineage, img.seq)) {
            Some(v) if *v == img.value => {}
            other => self.violation(format!(
                "resumed an image no primary produced: {img:?} (produced: {other:?})"
            )),
        }
        let pos = |l: &Lineage, w: &World| w.lineages.iter().position(|x| x == l);
        for (l, n) in self.acked.clone() {
            if l == img.lineage {
                if img.seq < n {
                    self.violation(format!(
                        "acknowledged checkpoint {n} lost: resumed {}",
                        img.seq
                    ));
                }
            } else {
                let replaced_deliberately =
                    self.spare_cfg.accept_new_lineage && pos(&l, self) < pos(&img.lineage, self);
                if !replaced_deliberately {
                    self.violation(format!("acknowledged checkpoint {n} of another lineage lost: resumed lineage {:02x}{:02x} at {}", img.lineage[0], img.lineage[1], img.seq));
                }
            }
        }
        if let Some(k) = self.killed_for_liveness {
            let bound = self.spare_cfg.detection.as_nanos() as u64 * 12 / 10 + 100 * MS;
            if self.now - k > bound.max(self.spare_cfg.startup_grace.as_nanos() as u64 + 50 * MS) {
                self.violation(format!(
                    "takeover {} ms after the primary died (bound {} ms)",
                    (self.now - k) / MS,
                    bound / MS
                ));
            }
        } else if self
            .quiet_from
            .is_some_and(|q| self.decided_at.is_some_and(|d| d >= q))
        {
            let alive = self
                .p
                .as_ref()
                .is_some_and(|p| !p.exited && p.paused_until.is_none());
            if alive {
                self.violation("a live primary was taken over with no fault in force".into());
            }
        }
    }

    fn check_one_server(&mut self) {
        if self.decided_at.is_none() && self.s.as_ref().is_some_and(|s| s.core.taking_over()) {
            self.decided_at = Some(self.now);
        }
        if self.taken_over_at.is_none() {
            return;
        }
        let now = self.now;
        if let Some(p) = self.p.as_ref() {
            if p.paused_until.is_none() && p.link.may_serve(p.clock.local(now)) {
                let inc = p.inc;
                self.violation(format!(
                    "primary #{inc} may serve while the spare has taken over"
                ));
            }
        }
    }

    // ---- faults ----

    fn fault(&mut self) {
        if !self.faults_on || self.taken_over_at.is_some() {
            return;
        }
        self.report.faults += 1;
        let r = self.rng.u32(0..100);
        match r {
            0..=14 => {
                let which = self.rng.u32(0..3);
                let len = self.rng.u64(5 * MS..1200 * MS);
                self.partition_epoch += 1;
                let epoch = self.partition_epoch;
                match which {
                    0 => self.blocked[0] = true,
                    1 => self.blocked[1] = true,
                    _ => self.blocked = [true, true],
                }
                self.trace(format!("partition {:?} for {} ms", self.blocked, len / MS));
                self.after(len, Ev::Heal { epoch });
                let ids: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.open)
                    .map(|(k, _)| *k)
                    .collect();
                for id in ids {
                    let t = self.rng.u64(300 * MS..2000 * MS);
                    self.after(t, Ev::PartitionCheck { conn: id, epoch });
                }
            }
            15..=22 => {
                let ids: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.open)
                    .map(|(k, _)| *k)
                    .collect();
                for id in ids {
                    self.trace(format!("connection {id} reset"));
                    self.close_conn(id, Side::P);
                    self.close_conn_both(id);
                }
            }
            23..=37 => self.pause(Side::P),
            38..=50 => self.pause(Side::S),
            51..=60 => {
                if self.p.is_some() {
                    self.crash(Side::P);
                    let d = self.rng.u64(MS..400 * MS);
                    self.after(d, Ev::Restart { side: Side::P });
                }
            }
            61..=70 => {
                if self.s.is_some() {
                    self.crash(Side::S);
                    let d = self.rng.u64(MS..400 * MS);
                    self.after(d, Ev::Restart { side: Side::S });
                }
            }
            71..=76 => {
                // The whole pair, restarted in either order.
                let had_p = self.p.is_some();
                if self.s.is_some() {
                    self.crash(Side::S);
                }
                if had_p {
                    self.crash(Side::P);
                }
                let (a, b) = (self.rng.u64(MS..300 * MS), self.rng.u64(MS..300 * MS));
                self.after(a, Ev::Restart { side: Side::S });
                self.after(b, Ev::Restart { side: Side::P });
            }
            77..=86 => {
                self.disk_mode = match self.rng.u32(0..3) {
                    0 => DiskMode::Full,
                    1 => DiskMode::Eio,
                    _ => DiskMode::Slow,
                };
                self.trace("disk fault".into());
            }
            87..=93 => {
                self.disk_mode = DiskMode::Healthy;
            }
            _ => {
                self.heal();
            }
        }
    }

    fn close_conn_both(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.open = true;
        }
        self.close_conn(id, Side::S);
    }

    fn pause(&mut self, side: Side) {
        let len = self.rng.u64(MS..900 * MS);
        let until = self.now + len;
        let (inc, paused) = match side {
            Side::P => match self.p.as_mut() {
                Some(p) if p.paused_until.is_none() => {
                    p.paused_until = Some(until);
                    (p.inc, true)
                }
                _ => (0, false),
            },
            Side::S => match self.s.as_mut() {
                Some(s) if s.paused_until.is_none() => {
                    s.paused_until = Some(until);
                    (s.inc, true)
                }
                _ => (0, false),
            },
        };
        if paused {
            self.trace(format!("{side:?} paused for {} ms", len / MS));
            self.at(until, Ev::Unpause { side, inc });
        }
    }

    // ---- the loop ----

    fn deliver(&mut self, ev: Ev) {
        // A stopped process handles nothing; the kernel keeps its input until it runs.
        let side = match &ev {
            Ev::Deliver { to, .. } | Ev::Closed { to, .. } => *to,
            Ev::Connected { .. } | Ev::ConnectFailed { .. } | Ev::AppTick { .. } => Side::P,
            Ev::DiskDone { .. } => Side::S,
            Ev::Timer { side, .. } => *side,
            _ => unreachable!(),
        };
        let paused = match side {
            Side::P => self.p.as_ref().is_some_and(|p| p.paused_until.is_some()),
            Side::S => self.s.as_ref().is_some_and(|s| s.paused_until.is_some()),
        };
        if paused {
            // Disk work completes while the process is stopped; its result waits.
            if let Ev::DiskDone { inc, done } = ev {
                if inc == self.s_inc {
                    let d = self.finish_disk(done);
                    self.disk_kick();
                    if let Some(s) = self.s.as_mut() {
                        s.deferred.push_back(Ev::DiskDone { inc, done: d });
                    }
                }
                return;
            }
            match side {
                Side::P => self.p.as_mut().expect("paused").deferred.push_back(ev),
                Side::S => self.s.as_mut().expect("paused").deferred.push_back(ev),
            }
            return;
        }
        self.handle(ev, false);
    }

    fn handle(&mut self, ev: Ev, already_finished: bool) {
        let now = self.now;
        match ev {
            Ev::Deliver {
                conn,
                to,
                term,
                msg,
            } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                match to {
                    Side::P => {
                        if c.p_inc != self.p_inc {
                            return;
                        }
                        if let Some(p) = self.p.as_mut().filter(|p| p.conn == Some(conn)) {
                            let l = p.clock.local(now);
                            p.link.handle_msg(l, term, msg);
                        }
                        self.p_pump();
                    }
                    Side::S => {
                        if c.s_inc != self.s_inc {
                            return;
                        }
                        if let Some(s) = self.s.as_mut() {
                            let l = s.clock.local(now);
                            s.core.handle_msg(l, ConnId(conn), term, msg);
                        }
                        self.s_pump();
                    }
                }
            }
            Ev::Closed { conn, to } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let (pi, si) = (c.p_inc, c.s_inc);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.open = false;
                }
                match to {
                    Side::P if pi == self.p_inc => {
                        if let Some(p) = self.p.as_mut().filter(|p| p.conn == Some(conn)) {
                            p.conn = None;
                            let l = p.clock.local(now);
                            p.link.handle_disconnected(l, "closed by the spare");
                        }
                        self.p_pump();
                    }
                    Side::S if si == self.s_inc => {
                        if let Some(s) = self.s.as_mut() {
                            let l = s.clock.local(now);
                            s.core
                                .handle_closed(l, ConnId(conn), "closed by the primary");
                        }
                        self.s_pump();
                    }
                    _ => {}
                }
            }
            Ev::Connected { conn } => {
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                if !c.open || c.p_inc != self.p_inc {
                    return;
                }
                let s_ok = c.s_inc == self.s_inc && self.s.is_some();
                if !s_ok {
                    if let Some(p) = self.p.as_mut() {
                        p.conn = None;
                        let l = p.clock.local(now);
                        p.link.handle_disconnected(l, "connection refused");
                    }
                    self.p_pump();
                    return;
                }
                // The spare's side sees the connection when it next runs.
                let s_paused = self.s.as_ref().is_some_and(|s| s.paused_until.is_some());
                if s_paused {
                    self.s
                        .as_mut()
                        .expect("checked")
                        .deferred
                        .push_back(Ev::Connected { conn });
                } else if let Some(s) = self.s.as_mut() {
                    let l = s.clock.local(now);
                    s.core.handle_open(l, ConnId(conn));
                    self.s_pump();
                }
                if let Some(p) = self.p.as_mut().filter(|p| p.conn == Some(conn)) {
                    let l = p.clock.local(now);
                    p.link.handle_connected(l);
                }
                self.p_pump();
            }
            Ev::ConnectFailed { inc } => {
                if inc != self.p_inc {
                    return;
                }
                if let Some(p) = self.p.as_mut() {
                    let l = p.clock.local(now);
                    p.link.handle_disconnected(l, "connect failed");
                }
                self.p_pump();
            }
            Ev::Timer { side, inc } => match side {
                _ if self.armed[Self::dir(side)] != Some(now) && !already_finished => {}
                Side::P if inc == self.p_inc => {
                    if let Some(p) = self.p.as_mut() {
                        let l = p.clock.local(now);
                        if p.link.poll_timeout().is_some_and(|t| t <= l) {
                            p.link.handle_timeout(l);
                        }
                    }
                    self.p_pump();
                }
                Side::S if inc == self.s_inc => {
                    if let Some(s) = self.s.as_mut() {
                        let l = s.clock.local(now);
                        if s.core.poll_timeout().is_some_and(|t| t <= l) {
                            s.core.handle_timeout(l);
                        }
                    }
                    self.s_pump();
                }
                _ => {}
            },
            Ev::DiskDone { inc, done } => {
                if inc != self.s_inc {
                    return;
                }
                let d = if already_finished {
                    done
                } else {
                    let d = self.finish_disk(done);
                    self.disk_kick();
                    d
                };
                if let Some(s) = self.s.as_mut() {
                    let l = s.clock.local(now);
                    s.core.handle_disk(l, d);
                }
                self.s_pump();
            }
            Ev::AppTick { inc } => {
                if inc == self.p_inc {
                    self.app_tick();
                }
            }
            _ => unreachable!(),
        }
    }

    fn unpause(&mut self, side: Side, inc: u64) {
        let deferred: Vec<Ev> = match side {
            Side::P => match self.p.as_mut().filter(|p| p.inc == inc) {
                Some(p) => {
                    p.paused_until = None;
                    p.deferred.drain(..).collect()
                }
                None => return,
            },
            Side::S => match self.s.as_mut().filter(|s| s.inc == inc) {
                Some(s) => {
                    s.paused_until = None;
                    s.deferred.drain(..).collect()
                }
                None => return,
            },
        };
        self.trace(format!(
            "{side:?} continues ({} inputs waiting)",
            deferred.len()
        ));
        // Input that waited is read before timers fire (as the mio drivers do).
        let mut timers = Vec::new();
        for ev in deferred {
            match ev {
                Ev::Timer { .. } | Ev::AppTick { .. } => timers.push(ev),
                Ev::DiskDone { inc, done } => self.handle(Ev::DiskDone { inc, done }, true),
                other => self.handle(other, false),
            }
        }
        for t in timers {
            self.handle(t, false);
        }
        match side {
            Side::P => self.p_pump(),
            Side::S => self.s_pump(),
        }
    }

    fn step(&mut self, q: Queued) {
        self.now = q.at;
        self.report.events += 1;
        match q.ev {
            Ev::Fault => {
                self.fault();
                if self.faults_on {
                    let d = self.rng.u64(5 * MS..200 * MS);
                    self.after(d, Ev::Fault);
                }
            }
            Ev::Heal { epoch } => {
                if epoch == self.partition_epoch {
                    self.trace("partition healed".into());
                    self.heal();
                }
            }
            Ev::PartitionCheck { conn, epoch } => {
                if epoch == self.partition_epoch && (self.blocked[0] || self.blocked[1]) {
                    // TCP gives up on a path that stays cut (TCP_USER_TIMEOUT): both ends see it
                    // when they next hear anything, modelled as now.
                    if self.conns.get(&conn).is_some_and(|c| c.open) {
                        self.trace(format!("connection {conn} times out in the partition"));
                        let (pi, si) = {
                            let c = self.conns.get_mut(&conn).expect("checked");
                            c.open = false;
                            (c.p_inc, c.s_inc)
                        };
                        let _ = (pi, si);
                        self.after(1, Ev::Closed { conn, to: Side::P });
                        self.after(1, Ev::Closed { conn, to: Side::S });
                    }
                }
            }
            Ev::Restart { side } => match side {
                Side::P if self.p.is_none() && self.taken_over_at.is_none() => self.start_primary(),
                Side::S if self.s.is_none() => self.start_spare(),
                _ => {}
            },
            Ev::Unpause { side, inc } => self.unpause(side, inc),
            Ev::Liveness => {
                self.faults_on = false;
                self.disk_mode = DiskMode::Healthy;
                self.heal();
                for side in [Side::P, Side::S] {
                    let inc = match side {
                        Side::P => self.p.as_ref().map(|p| p.inc),
                        Side::S => self.s.as_ref().map(|s| s.inc),
                    };
                    if let Some(inc) = inc {
                        self.unpause(side, inc);
                    }
                }
                if self.s.is_none() {
                    self.start_spare();
                }
                if self.p.is_none() && self.taken_over_at.is_none() {
                    self.start_primary();
                }
                self.trace("faults end: liveness phase".into());
                self.quiet_from =
                    Some(self.now + 400 * MS + self.spare_cfg.startup_grace.as_nanos() as u64);
                let t = self.quiet_from.expect("set") + 600 * MS;
                self.at(t, Ev::KillForLiveness);
            }
            Ev::KillForLiveness => {
                if self.decided_at.is_none() && self.p.is_some() {
                    let has_image = self.disk.tip().is_some() || self.disk.image.is_some();
                    self.crash(Side::P);
                    if has_image {
                        self.killed_for_liveness = Some(self.now);
                        let t = self.now + 2000 * MS;
                        self.end = self.end.max(t);
                    }
                }
            }
            ev => self.deliver(ev),
        }
        self.check_one_server();
    }
}

/// Runs one scenario.
pub fn run(seed: u64) -> Report {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ppm = |r: &mut fastrand::Rng| r.i64(-4_000..=4_000);
    let (pc, sc) = (
        Clock {
            offset: rng.u64(0..1 << 40),
            ppm: ppm(&mut rng),
        },
        Clock {
            offset: rng.u64(0..1 << 40),
            ppm: ppm(&mut rng),
        },
    );
    let heartbeat = Duration::from_millis(rng.u64(5..=20));
    let missed = rng.u32(3..=8);
    let link_cfg = LinkConfig {
        heartbeat,
        lease: heartbeat * missed.saturating_sub(1).max(1) + Duration::from_millis(rng.u64(0..30)),
        ack_timeout: Duration::from_millis(rng.u64(200..2000)),
        reconnect: heartbeat * 10,
        drift_ppm: crate::lease::DEFAULT_DRIFT_PPM,
        serve_margin: Duration::from_millis(1),
        term: 1,
        lineage: [0; 16],
        exe_id: [7; 32],
        pid: 1,
    };
    let spare_cfg = SpareConfig {
        detection: heartbeat * missed,
        startup_grace: Duration::from_millis(rng.u64(100..500)),
        accept_new_lineage: rng.bool(),
        apply_retry: Duration::from_millis(50),
    };
    let faults_for = rng.u64(500 * MS..3000 * MS);
    let mut w = World {
        exit_on_lease_loss: rng.bool(),
        rng,
        now: 0,
        n: 0,
        q: BinaryHeap::new(),
        p: None,
        s: None,
        p_inc: 0,
        s_inc: 0,
        disk: Disk::default(),
        disk_mode: DiskMode::Healthy,
        conns: HashMap::new(),
        next_conn: 0,
        blocked: [false, false],
        partition_epoch: 0,
        exe: [7; 32],
        link_cfg,
        spare_cfg,
        p_clock: pc,
        s_clock: sc,
        produced: HashMap::new(),
        lineages: Vec::new(),
        acked: BTreeMap::new(),
        acked_count: 0,
        taken_over_at: None,
        decided_at: None,
        armed: [None, None],
        faults_on: true,
        quiet_from: None,
        killed_for_liveness: None,
        end: 0,
        report: Report {
            seed,
            ..Report::default()
        },
        trace: VecDeque::new(),
    };
    w.start_spare();
    w.start_primary();
    w.after(20 * MS, Ev::Fault);
    w.after(faults_for, Ev::Liveness);
    w.end = faults_for + 4000 * MS;
    while let Some(q) = w.q.pop() {
        if q.at > w.end || w.report.events > 2_000_000 {
            break;
        }
        w.step(q);
        if !w.report.violations.is_empty() {
            break;
        }
    }
    if w.killed_for_liveness.is_some() && w.taken_over_at.is_none() {
        w.violation("the primary died and no takeover followed".into());
    }
    w.report.sim_nanos = w.now;
    w.report.acked = w.acked_count;
    w.report.trace = w.trace.into_iter().collect();
    w.report
}
