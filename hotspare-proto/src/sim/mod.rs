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
//!   lineage is only replaced where the spare was told to allow it. Each scenario's primary
//!   asks for one durability level (drawn from the seed): with `fsynced` there is no
//!   exception, and an `Ack` for a checkpoint not durable on the simulated disk is itself a
//!   violation; with `received` an `Ack` must follow the disk's validation of that stream, and
//!   the only checkpoints allowed to be lost are those acknowledged on receipt and still not
//!   durable at the moment the spare crashed (the second failure that level does not cover);
//!   a live spare must still take over with all of them;
//! * **only real images** — the resumed image is one the primary produced (lineage, sequence
//!   and contents), never a mix of two runs;
//! * **liveness** — with the faults healed, a live primary is not taken over, and a dead one is
//!   taken over within the configured bound.
//!
//! Modelled rather than run: the byte codec (tested on its own in `codec`), and the image
//! directory, whose validation rules the simulated disk applies as `hotspare_image` does
//! (the real one is tested, and fuzzed, in its crate).

use crate::msg::{AckLevel, Lineage, Msg, StreamHeader};
use crate::primary::{Event, Link, LinkConfig};
use crate::spare::{ConnId, DiskDone, DiskOp, Output, Recovered, Spare, SpareConfig, Tip};
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

mod arbiter;
mod checks;
mod disk;
mod faults;
mod net;
mod nodes;

use disk::{Disk, DiskMode, Img};

/// The simulated arbiter's store, for tests that drive the cores by hand.
pub use arbiter::Store as ArbiterStore;

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
    /// The durability level the scenario's primaries asked for.
    pub ack: AckLevel,
    /// Acknowledged checkpoints a takeover resumed without because the level allows it
    /// (acknowledged on receipt, the spare crashed before they were durable).
    pub exempted: u64,
    /// Takeovers (0 or 1).
    pub takeovers: u32,
    /// Switchovers asked of the spare.
    pub switchovers: u32,
    /// Hand-overs completed by the primary (switchovers that reached their end).
    pub handovers: u32,
    /// Takeovers whose term was saved before the last Apply was done (so the Applied answer
    /// is what let the takeover happen): the order a hand-over allows.
    pub term_before_apply: u32,
    /// Faults injected.
    pub faults: u32,
    /// Renewals the primary sent while another of its requests was unanswered.
    pub renewals_overlapping: u64,
    /// Answers to the primary's requests that reached it after an answer to a newer one.
    pub answers_reordered: u64,
    /// Streams the spare validated (and reported Verified) while an earlier one was still
    /// being made durable.
    pub validated_ahead: u64,
    /// Streams the syncer refused because one before them could not be made durable.
    pub refused_after_sync_failure: u64,
    /// Streams made durable together with at least one other (one flush of the log).
    pub grouped_persists: u64,
    /// Groups of streams that failed together.
    pub groups_failed: u64,
    /// How the scenario used an arbiter: `None` (two-machine mode), or its ending
    /// (`kill-primary`, `kill-spare`, `cut-pair`).
    pub arbiter: Option<&'static str>,
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
    /// A Persist's validation is over (the disk runs whether or not the process does).
    DiskStep {
        inc: u64,
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
    /// A request reaches the arbiter's store.
    ArbiterApply {
        side: Side,
        inc: u64,
        id: u64,
        req: crate::arbiter::Request,
    },
    /// The arbiter's answer reaches a node.
    ArbiterAnswer {
        side: Side,
        inc: u64,
        id: u64,
        outcome: crate::arbiter::Outcome,
    },
    /// A node's client gives up on a request.
    ArbiterTimeout {
        side: Side,
        inc: u64,
        id: u64,
    },
    ArbiterHeal {
        epoch: u64,
    },
    /// The spare is killed for good (liveness phase, [`arbiter::Ending::KillSpare`]).
    KillSpare,
    /// An operator asks the spare for a switchover.
    Switchover,
    /// Is the primary still allowed to serve? (liveness phase with an arbiter)
    ServeProbe,
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
    /// The lineage of the primary that opened it.
    lineage: Lineage,
    p_inc: u64,
    s_inc: u64,
    open: bool,
    fifo: [u64; 2],
    held: [VecDeque<Ev>; 2],
}

/// One simulated pair and its faults.
struct World {
    rng: fastrand::Rng,
    /// Draws added with the durability levels, apart from `rng`, so that the draws of `rng`
    /// (and so an `fsynced` scenario) are what they were before.
    rng2: fastrand::Rng,
    /// The level the primaries ask for.
    ack: AckLevel,
    /// Acknowledged by the spare on receipt and not (yet) durable on its disk.
    receipt_unsynced: BTreeSet<(Lineage, u64)>,
    /// Acknowledged on receipt, and not durable when the spare crashed: allowed to be lost.
    exempt: HashSet<(Lineage, u64)>,
    now: u64,
    n: u64,
    q: BinaryHeap<Queued>,
    p: Option<PNode>,
    s: Option<SNode>,
    p_inc: u64,
    s_inc: u64,
    disk: Disk,
    disk_mode: DiskMode,
    /// Ordered, so iterating it (and drawing from the seed in that order) replays exactly.
    conns: BTreeMap<u64, SimConn>,
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
    /// Every checkpoint acknowledged to a primary's application, by lineage.
    acked: BTreeMap<Lineage, BTreeSet<u64>>,
    acked_count: u64,
    taken_over_at: Option<u64>,
    decided_at: Option<u64>,
    /// The time each side's timer is armed for (stale timer events are ignored).
    armed: [Option<u64>; 2],
    faults_on: bool,
    quiet_from: Option<u64>,
    killed_for_liveness: Option<u64>,
    end: u64,
    /// The arbiter, in the scenarios that have one.
    arb: Option<arbiter::ArbiterWorld>,
    /// The spare was killed for good: no restarts.
    spare_gone: bool,
    /// Draws for switchovers, apart from the others (so that older seeds' faults stay).
    rng3: fastrand::Rng,
    /// Connections of operators (`hotspare switchover`), numbered apart from the pair's.
    next_op_conn: u64,
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

    fn deliver(&mut self, ev: Ev) {
        // A stopped process handles nothing; the kernel keeps its input until it runs.
        let side = match &ev {
            Ev::Deliver { to, .. } | Ev::Closed { to, .. } => *to,
            Ev::Connected { .. } | Ev::ConnectFailed { .. } | Ev::AppTick { .. } => Side::P,
            Ev::ArbiterAnswer { side, .. } | Ev::ArbiterTimeout { side, .. } => *side,
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
                    let d = if matches!(done, DiskDone::Verified { .. }) {
                        done // a report on the way, not the end of the operation
                    } else {
                        let d = self.finish_disk(done);
                        self.disk_kick();
                        d
                    };
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
                let d = if already_finished || matches!(done, DiskDone::Verified { .. }) {
                    done
                } else {
                    let d = self.finish_disk(done);
                    self.disk_kick();
                    d
                };
                if let Some(s) = self.s.as_mut() {
                    let l = s.clock.local(now);
                    let waiting = matches!(d, DiskDone::Applied(_))
                        && s.core.taking_over()
                        && !s.core.taken_over();
                    s.core.handle_disk(l, d);
                    if waiting && s.core.taken_over() {
                        self.report.term_before_apply += 1;
                    }
                }
                self.s_pump();
            }
            Ev::AppTick { inc } => {
                if inc == self.p_inc {
                    self.app_tick();
                }
            }
            Ev::ArbiterAnswer {
                side,
                inc,
                id,
                outcome,
            } => self.arbiter_outcome(side, inc, id, outcome),
            Ev::ArbiterTimeout { side, inc, id } => {
                let outcome = self.arbiter_timeout_outcome();
                self.arbiter_outcome(side, inc, id, outcome);
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
                if self.faults_on && self.taken_over_at.is_none() {
                    self.arbiter_fault();
                    if self.rng3.u32(0..40) == 0 {
                        let d = self.rng3.u64(0..20 * MS);
                        self.after(d, Ev::Switchover);
                    }
                }
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
                Side::S if self.s.is_none() && !self.spare_gone => self.start_spare(),
                _ => {}
            },
            Ev::ArbiterApply { side, inc, id, req } => self.arbiter_apply(side, inc, id, req),
            Ev::ArbiterHeal { epoch } => self.arbiter_heal(Some(epoch)),
            Ev::KillSpare => {
                if self.taken_over_at.is_none() && self.s.is_some() {
                    self.trace("the spare is killed for good".into());
                    self.crash(Side::S);
                    self.spare_gone = true;
                    self.after(100 * MS, Ev::ServeProbe);
                }
            }
            Ev::ServeProbe => self.serve_probe(),
            Ev::Switchover => {
                let paused = self.s.as_ref().is_some_and(|s| s.paused_until.is_some());
                if self.faults_on && !paused {
                    self.next_op_conn += 1;
                    let c = ConnId(self.next_op_conn);
                    let now = self.now;
                    if let Some(s) = self.s.as_mut() {
                        self.report.switchovers += 1;
                        let l = s.clock.local(now);
                        s.core.handle_open(l, c);
                        s.core.handle_msg(l, c, 0, Msg::SwitchoverRequest);
                    }
                    self.trace("an operator asks the spare for a switchover".into());
                    self.s_pump();
                }
            }
            Ev::Unpause { side, inc } => self.unpause(side, inc),
            Ev::DiskStep { inc } => self.disk_step(inc),
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
                self.arbiter_heal(None);
                self.trace("faults end: liveness phase".into());
                let quiet = self.now + 400 * MS + self.spare_cfg.startup_grace.as_nanos() as u64;
                self.quiet_from = Some(quiet);
                match self.arb.as_ref().map(|a| a.ending) {
                    None | Some(arbiter::Ending::KillPrimary) => {
                        self.at(quiet + 600 * MS, Ev::KillForLiveness)
                    }
                    Some(arbiter::Ending::KillSpare) => self.at(quiet, Ev::KillSpare),
                    Some(arbiter::Ending::CutPair) => {
                        self.trace("the pair is cut from each other for good".into());
                        self.blocked = [true, true];
                        self.partition_epoch += 1;
                        let epoch = self.partition_epoch;
                        for id in self.open_conns() {
                            self.after(300 * MS, Ev::PartitionCheck { conn: id, epoch });
                        }
                        self.at(quiet, Ev::ServeProbe);
                    }
                }
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

/// The durability level scenario `seed` runs with (half of the seeds each, drawn apart from
/// the scenario's other draws).
pub fn level_of(seed: u64) -> AckLevel {
    if fastrand::Rng::with_seed(seed ^ 0xac4e_1e7e_1000_0000).bool() {
        AckLevel::Received
    } else {
        AckLevel::Fsynced
    }
}

/// Runs one scenario, at the durability level drawn from its seed.
pub fn run(seed: u64) -> Report {
    run_with(seed, level_of(seed))
}

/// Runs one scenario with its primaries asking for `ack`.
pub fn run_with(seed: u64, ack: AckLevel) -> Report {
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
        ack,
        arbiter: None,
    };
    let spare_cfg = SpareConfig {
        detection: heartbeat * missed,
        startup_grace: Duration::from_millis(rng.u64(100..500)),
        accept_new_lineage: rng.bool(),
        apply_retry: Duration::from_millis(50),
        arbiter: None,
    };
    // Half of the scenarios have an arbiter; its draws come from a generator of its own.
    let mut arng = fastrand::Rng::with_seed(seed ^ 0x0a7b_17e7_0000_0000);
    let arb = arng.bool().then(|| {
        let ending = match arng.u32(0..3) {
            0 => arbiter::Ending::KillPrimary,
            1 => arbiter::Ending::KillSpare,
            _ => arbiter::Ending::CutPair,
        };
        arbiter::ArbiterWorld {
            timeout: arng.u64(20 * MS..150 * MS),
            store: arbiter::Store::default(),
            cut: [[false; 2]; 2],
            cut_epoch: 0,
            slow: false,
            laggy: false,
            p_outstanding: BTreeSet::new(),
            p_newest_answer: (0, 0),
            answered: HashSet::new(),
            ending,
            rng: arng,
        }
    });
    let mut link_cfg = link_cfg;
    let mut spare_cfg = spare_cfg;
    if let Some(a) = arb.as_ref() {
        let mut r = fastrand::Rng::with_seed(seed ^ 0x0a7b_17e7_1111_0000);
        let _ = a;
        link_cfg.arbiter = Some(crate::arbiter::PrimaryArbiter {
            node: "primary pid 1".into(),
            lease: Duration::from_millis(r.u64(15..80)),
            wait: Duration::from_millis(r.u64(20..80)),
            renew_every: Duration::from_millis(r.u64(1..15)),
            adopt: None,
        });
        spare_cfg.arbiter = Some(arbiter::SPARE_NODE.into());
    }
    let faults_for = rng.u64(500 * MS..3000 * MS);
    let mut w = World {
        exit_on_lease_loss: rng.bool(),
        rng,
        rng2: fastrand::Rng::with_seed(seed ^ 0x2d15_c5a1_7e00_0000),
        ack,
        receipt_unsynced: BTreeSet::new(),
        exempt: HashSet::new(),
        now: 0,
        n: 0,
        q: BinaryHeap::new(),
        p: None,
        s: None,
        p_inc: 0,
        s_inc: 0,
        // From the seed alone, not drawn: every other draw of a seed stays as it was.
        disk: Disk {
            separate_applier: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1,
            ..Disk::default()
        },
        disk_mode: DiskMode::Healthy,
        conns: BTreeMap::new(),
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
        arb,
        spare_gone: false,
        rng3: fastrand::Rng::with_seed(seed ^ 0x5717_c400_0000_0000),
        next_op_conn: 1 << 40,
        report: Report {
            seed,
            ack,
            ..Report::default()
        },
        trace: VecDeque::new(),
    };
    w.trace(format!(
        "durability level: {ack}; heartbeat {} ms, detection {} ms, lease asked {} ms, startup grace {} ms",
        w.link_cfg.heartbeat.as_millis(),
        w.spare_cfg.detection.as_millis(),
        w.link_cfg.lease.as_millis(),
        w.spare_cfg.startup_grace.as_millis()
    ));
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
    w.report.arbiter = w.arb.as_ref().map(|a| match a.ending {
        arbiter::Ending::KillPrimary => "kill-primary",
        arbiter::Ending::KillSpare => "kill-spare",
        arbiter::Ending::CutPair => "cut-pair",
    });
    w.report.sim_nanos = w.now;
    w.report.acked = w.acked_count;
    w.report.trace = w.trace.into_iter().collect();
    w.report
}
