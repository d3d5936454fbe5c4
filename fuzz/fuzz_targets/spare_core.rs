//! The spare's protocol core (`hotspare_proto::spare::Spare`) driven by a sequence of
//! operations decoded from the input: connections opened and closed, messages of any kind with
//! any term stamp (also arbitrary postcard bytes decoded as `Msg`), disk operations completed
//! or failed, time advanced, timers fired. After every step the harness checks:
//!
//! * `Ack { seq }` is sent only for a `seq` whose `DiskDone::Persisted { Ok }` or
//!   `DiskDone::Verified` was fed, never more often than they were fed, and only on a
//!   connection that sent that checkpoint's end;
//! * `TakeOver` comes at most once, only for a term whose `TermSaved { Ok }` was fed;
//! * the spare's term, and the term stamped on what it sends, never decrease.
//!
//! In the well-behaved mode (input flag bit 1 clear) the harness is a faithful driver: it
//! completes disk operations one at a time in the order asked, with a model disk that
//! validates chains as `hotspare_image` does, and closes connections when told to (a Persist
//! whose stream validates is reported `Verified` first, as an intermediate report that leaves
//! it at the head of the queue; a failure injected on its completion after that is a failure
//! to make it durable). Then it also checks what a correct spare guarantees a correct driver:
//!
//! * an `Ack` is for a checkpoint durable on the model disk (of the connection's lineage), or
//!   — only for a connection whose hello asked for `AckLevel::Received` — the one the running
//!   Persist reported `Verified`;
//! * the takeover is decided no sooner than `detection` after the last `HeartbeatAck` sent and
//!   `startup_grace` after the start, with no disk operation outstanding and the data files at
//!   the durable tip; it resumes that tip, and every checkpoint acknowledged since the image's
//!   lineage last changed is in it (also those acknowledged on receipt whose persist then
//!   failed: the spare must wait for a later checkpoint to cover them); a lineage changes only
//!   with `accept_new_lineage`;
//! * nothing is asked of the driver after `TakeOver` but closes;
//! * every `HeartbeatAck` (a lease) is stamped with a term that is on disk;
//! * liveness: once everything is healed, a spare with an image and no primary takes over
//!   (unless it waits for a new lineage's first checkpoint, or owes a checkpoint acknowledged
//!   on receipt that failed to become durable, as it must) — also one recovered
//!   with data files of another lineage than its tip.
//!
//! In the chaos mode (bit 1 set) the harness also feeds completions nobody asked for and keeps
//! connections the spare closed: only the first three rules (and "no panic") must hold — with
//! one allowance: a `TermSaved { Ok }` for the takeover term fed twice yields a second
//! `TakeOver` (the contract is that every operation is answered exactly once; see
//! docs/fuzzing.md), so there `TakeOver` may come as often as its save was reported.
//!
//! Input: `flags | rec_term | tip_lineage | tip_seq | tip_term | applied | op*`, each op an
//! opcode byte and its operands (missing bytes read as 0).

#![no_main]

use hotspare_fuzz::Bytes;
use hotspare_proto::spare::{ConnId, DiskDone, DiskOp, Output, Recovered, Spare, SpareConfig, Tip};
use hotspare_proto::{AckLevel, Lineage, Msg, StreamHeader, Time};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

const EXE: [u8; 32] = [7; 32];
const LINEAGES: [Lineage; 4] = [[1; 16], [2; 16], [3; 16], [4; 16]];
const DETECTION: Duration = Duration::from_millis(50);
const GRACE: Duration = Duration::from_millis(200);
const APPLY_RETRY: Duration = Duration::from_millis(10);

/// `HOTSPARE_FUZZ_TRACE=1`: print every step (to read a crashing input).
fn tracing() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("HOTSPARE_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

#[derive(Debug, Default)]
struct ModelDisk {
    term: u64,
    tip: Option<Tip>,
    applied: Option<(Lineage, u64)>,
    /// (header, lineage, term, still good)
    spool: Option<(StreamHeader, Lineage, u64, bool)>,
    /// The Persist at the head of the queue was reported `Verified`: (seq, lineage).
    verified: Option<(u64, Lineage)>,
}

impl ModelDisk {
    /// Whether a stream applies on top of the tip (the rule of `hotspare_image::check_applies`,
    /// as far as the core's view of a stream goes).
    fn chains(&self, h: StreamHeader, lineage: Lineage, term: u64, replace: bool) -> bool {
        if h.seq == 0 || (h.base_seq != 0 && h.base_seq >= h.seq) {
            return false;
        }
        match self.tip {
            None => h.base_seq == 0,
            Some(t) if t.lineage != lineage => replace && h.base_seq == 0,
            Some(t) if term < t.term => false,
            Some(t) if h.base_seq == 0 => h.seq > t.seq,
            Some(t) => h.base_seq == t.seq,
        }
    }
}

struct World {
    spare: Spare,
    chaos: bool,
    accept: bool,
    now: Time,
    start: Time,
    next_conn: u64,
    conns: Vec<ConnId>,
    queue: VecDeque<DiskOp>,
    disk: ModelDisk,
    persisted_ok: HashMap<u64, u32>,
    /// How many times `Verified` was fed, per seq.
    verified_fed: HashMap<u64, u32>,
    /// The durability level each connection's hello asked for.
    conn_ack: HashMap<ConnId, AckLevel>,
    /// The running Persist was acknowledged on receipt: (lineage, seq).
    receipt_acked: Option<(Lineage, u64)>,
    /// Mirrors the spare's rule: acknowledged on receipt, then not made durable (per lineage,
    /// the newest, oldest lineage first); no takeover until durable checkpoints cover them all.
    owed: Vec<(Lineage, u64)>,
    acks: HashMap<u64, u32>,
    ends_sent: HashMap<(ConnId, u64), u32>,
    acks_on: HashMap<(ConnId, u64), u32>,
    /// How many times `TermSaved { Ok }` was fed, per term.
    saved_ok: HashMap<u64, u32>,
    last_term: u64,
    last_stamp: u64,
    takeovers: u32,
    takeover_term: Option<u64>,
    /// The takeover decided and not failed yet: (when, its term).
    decided: Option<(Time, u64)>,
    last_hb_ack: Option<Time>,
    conn_lineage: HashMap<ConnId, Lineage>,
    /// The term of each connection's first message.
    conn_term: HashMap<ConnId, u64>,
    /// Connections opened that have sent nothing yet.
    fresh: HashSet<ConnId>,
    /// Checkpoints acknowledged since the image's lineage last changed: (lineage, seq).
    acked: Vec<(Lineage, u64)>,
    /// The lineage the spare waits to adopt (mirrors its rule).
    adopting: Option<Lineage>,
}

impl World {
    fn fail(&self, what: String) -> ! {
        panic!("{what} (at {:?}, chaos {})", self.now, self.chaos)
    }

    fn conn(&self, idx: u8) -> ConnId {
        if self.conns.is_empty() || idx == 0xff {
            ConnId(1_000_000 + u64::from(idx))
        } else {
            self.conns[usize::from(idx) % self.conns.len()]
        }
    }

    /// Drains and checks the spare's outputs (and, well-behaved, acts on its closes).
    fn settle(&mut self) {
        loop {
            let was_taking_over = self.decided.is_some();
            let mut closes = Vec::new();
            let mut n = 0;
            while let Some(o) = self.spare.poll_output() {
                n += 1;
                if n > 10_000 {
                    self.fail("more than 10000 outputs from one step".into());
                }
                if tracing() {
                    eprintln!("    {:>10} us  -> {o:?}", self.now.as_nanos() / 1000);
                }
                self.check(o, was_taking_over, &mut closes);
            }
            let t = self.spare.term();
            if t < self.last_term {
                self.fail(format!("term went down from {} to {t}", self.last_term));
            }
            self.last_term = t;
            if self.chaos || closes.is_empty() {
                return;
            }
            for c in closes {
                if let Some(i) = self.conns.iter().position(|x| *x == c) {
                    self.conns.remove(i);
                    self.fresh.remove(&c);
                    self.spare.handle_closed(self.now, c, "closed as asked");
                }
            }
        }
    }

    fn check(&mut self, o: Output, was_taking_over: bool, closes: &mut Vec<ConnId>) {
        let taken = self.takeovers > 0;
        match o {
            Output::Send(c, term, msg) => {
                if term < self.last_stamp {
                    self.fail(format!(
                        "sent {msg:?} stamped {term} after {}",
                        self.last_stamp
                    ));
                }
                self.last_stamp = term;
                if taken && !self.chaos {
                    self.fail(format!("sent {msg:?} on {c:?} after the takeover"));
                }
                match msg {
                    Msg::Ack { seq } => {
                        let a = {
                            let a = self.acks.entry(seq).or_default();
                            *a += 1;
                            *a
                        };
                        let ok = self.persisted_ok.get(&seq).copied().unwrap_or(0)
                            + self.verified_fed.get(&seq).copied().unwrap_or(0);
                        if a > ok {
                            self.fail(format!(
                                "Ack {{ seq: {seq} }} #{a} but Persisted Ok or Verified fed {ok} times"
                            ));
                        }
                        let on = {
                            let on = self.acks_on.entry((c, seq)).or_default();
                            *on += 1;
                            *on
                        };
                        let ends = self.ends_sent.get(&(c, seq)).copied().unwrap_or(0);
                        if on > ends {
                            self.fail(format!(
                                "Ack {{ seq: {seq} }} on {c:?}, which sent its end {ends} times"
                            ));
                        }
                        if !self.chaos {
                            let Some(&l) = self.conn_lineage.get(&c) else {
                                self.fail(format!("Ack on {c:?}, which sent no hello"));
                            };
                            let durable = self
                                .disk
                                .tip
                                .is_some_and(|t| t.lineage == l && t.seq >= seq);
                            if !durable {
                                let level = self.conn_ack.get(&c).copied();
                                if self.disk.verified != Some((seq, l)) {
                                    self.fail(format!(
                                        "Ack {{ seq: {seq} }} of lineage {l:?}, neither durable (the disk holds {:?}) nor verified ({:?})",
                                        self.disk.tip, self.disk.verified
                                    ));
                                }
                                if level != Some(AckLevel::Received) {
                                    self.fail(format!(
                                        "Ack {{ seq: {seq} }} before it was durable, on {c:?} which asked for {level:?}"
                                    ));
                                }
                                self.receipt_acked = Some((l, seq));
                            }
                            self.acked.push((l, seq));
                        }
                    }
                    Msg::HeartbeatAck { .. } => {
                        self.last_hb_ack = Some(self.now);
                        if !self.chaos {
                            if was_taking_over || self.decided.is_some() {
                                self.fail("a lease granted while taking over".into());
                            }
                            if term > self.disk.term {
                                self.fail(format!(
                                    "a lease granted on term {term}, the disk holds term {}",
                                    self.disk.term
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Output::Close(c, _) => closes.push(c),
            Output::Disk(op) => {
                if taken && !self.chaos {
                    self.fail(format!("disk operation {op:?} after the takeover"));
                }
                if let DiskOp::Persist {
                    replace_lineage: true,
                    ..
                } = op
                {
                    if !self.accept {
                        self.fail("a lineage replacement without accept_new_lineage".into());
                    }
                }
                if let DiskOp::SaveTerm(t) = op {
                    if self.spare.taking_over() && self.decided.is_none() {
                        self.decided = Some((self.now, t));
                        self.check_decision();
                    }
                }
                self.queue.push_back(op);
            }
            Output::TakeOver { term, seq, .. } => {
                self.takeovers += 1;
                let saved = self.saved_ok.get(&term).copied().unwrap_or(0);
                if saved == 0 {
                    self.fail(format!("TakeOver on term {term}, never saved"));
                }
                if self.takeover_term.is_some_and(|t| t != term) {
                    self.fail(format!(
                        "TakeOver on term {term} after one on {:?}",
                        self.takeover_term
                    ));
                }
                self.takeover_term = Some(term);
                // Once; in chaos mode, a duplicated TermSaved for the takeover term makes a
                // second TakeOver (outside the driver contract: see docs/fuzzing.md), so there
                // no more than were fed.
                let limit = if self.chaos { saved } else { 1 };
                if self.takeovers > limit {
                    self.fail(format!(
                        "TakeOver #{} (TermSaved Ok fed {saved} times)",
                        self.takeovers
                    ));
                }
                if !self.chaos {
                    let tip = self.disk.tip.expect("took over an image");
                    if seq != tip.seq {
                        self.fail(format!("TakeOver at {seq}, the durable tip is {tip:?}"));
                    }
                    for &(l, s) in &self.acked {
                        if l != tip.lineage || s > tip.seq {
                            self.fail(format!(
                                "acknowledged ({l:?}, {s}) lost: the takeover resumes {tip:?}"
                            ));
                        }
                    }
                }
            }
            Output::Log(_) => {}
            // No arbiter is configured here (the simulator covers the claim).
            Output::Arbiter(..) => panic!("an arbiter request without an arbiter"),
        }
    }

    fn check_decision(&self) {
        if self.chaos {
            return;
        }
        let now = self.now;
        if let Some(g) = self.last_hb_ack {
            if now < g + DETECTION {
                self.fail(format!("takeover decided {:?} after a lease", now.since(g)));
            }
        }
        if now < self.start + GRACE {
            self.fail("takeover decided inside the startup grace".into());
        }
        if !self.queue.is_empty() {
            self.fail(format!(
                "takeover decided with disk work outstanding: {:?}",
                self.queue
            ));
        }
        let tip = self.disk.tip.expect("a takeover needs an image");
        if self.disk.applied != Some((tip.lineage, tip.seq)) {
            self.fail(format!(
                "takeover decided with the data files at {:?}, the tip at {tip:?}",
                self.disk.applied
            ));
        }
    }

    /// Completes the oldest disk operation as a faithful driver on the model disk would.
    fn complete(&mut self, fail: bool) {
        // A Persist whose stream validates is reported `Verified` first (it stays at the head
        // of the queue: the report does not end it); unless the injected failure hits the
        // validation itself.
        if let Some(DiskOp::Persist {
            seq,
            replace_lineage,
        }) = self.queue.front().cloned()
        {
            let valid = self
                .disk
                .spool
                .filter(|s| s.0.seq == seq)
                .filter(|&(h, l, t, good)| good && self.disk.chains(h, l, t, replace_lineage));
            if let Some((_, lineage, _, _)) =
                valid.filter(|_| !fail && self.disk.verified.is_none())
            {
                self.disk.verified = Some((seq, lineage));
                *self.verified_fed.entry(seq).or_default() += 1;
                return self.feed_disk(DiskDone::Verified { seq });
            }
        }
        let Some(op) = self.queue.pop_front() else {
            return;
        };
        let why = || "injected failure".to_string();
        let done = match op {
            DiskOp::SaveTerm(t) => {
                if fail {
                    if self.decided.is_some_and(|(_, d)| d == t) {
                        self.decided = None; // fail closed: the spare will decide again
                    }
                    DiskDone::TermSaved {
                        term: t,
                        result: Err(why()),
                    }
                } else {
                    self.disk.term = self.disk.term.max(t);
                    DiskDone::TermSaved {
                        term: t,
                        result: Ok(()),
                    }
                }
            }
            DiskOp::SpoolStart {
                header,
                lineage,
                term,
            } => {
                self.disk.spool = Some((header, lineage, term, !fail));
                if fail {
                    DiskDone::SpoolFailed {
                        seq: header.seq,
                        why: why(),
                    }
                } else {
                    DiskDone::Discarded
                }
            }
            DiskOp::Spool { seq, .. } => match self.disk.spool.as_mut() {
                Some(sp) if sp.0.seq == seq && fail => {
                    sp.3 = false;
                    DiskDone::SpoolFailed { seq, why: why() }
                }
                _ if fail => DiskDone::SpoolFailed { seq, why: why() },
                _ => DiskDone::Discarded,
            },
            DiskOp::Persist {
                seq,
                replace_lineage,
            } => {
                let sp = self.disk.spool.take().filter(|s| s.0.seq == seq);
                self.disk.verified = None;
                let receipt = self.receipt_acked.take();
                let ok = !fail
                    && sp.is_some_and(|(h, l, t, good)| {
                        good && self.disk.chains(h, l, t, replace_lineage)
                    });
                match sp.filter(|_| ok) {
                    Some((_, lineage, term, _)) => {
                        let tip = Tip {
                            lineage,
                            seq,
                            term,
                            exe_id: EXE,
                        };
                        // The lineage the spare protects (its tip's, or on an empty image the
                        // first one it owes a checkpoint: later debts are those of lineages
                        // admitted to replace it) is replaced: deliberately (the harness checks
                        // `replace_lineage` is only asked with `accept_new_lineage`).
                        let protected = self
                            .disk
                            .tip
                            .map(|t| t.lineage)
                            .or(self.owed.first().map(|o| o.0));
                        if protected.is_some_and(|l| l != lineage) {
                            self.acked.clear();
                        }
                        self.disk.tip = Some(tip);
                        // Covered by a checkpoint of its lineage, or deliberately replaced.
                        self.owed.retain(|&(l, s)| {
                            if l == lineage {
                                seq < s
                            } else {
                                !replace_lineage
                            }
                        });
                        DiskDone::Persisted {
                            seq,
                            result: Ok(tip),
                        }
                    }
                    None => {
                        if let Some((l, s)) = receipt.filter(|r| r.1 == seq) {
                            match self.owed.iter_mut().find(|o| o.0 == l) {
                                Some(o) => o.1 = o.1.max(s),
                                None => self.owed.push((l, s)),
                            }
                        }
                        DiskDone::Persisted {
                            seq,
                            result: Err("refused by the disk".into()),
                        }
                    }
                }
            }
            DiskOp::Discard { seq } => {
                if self.disk.spool.is_some_and(|s| s.0.seq == seq) {
                    self.disk.spool = None;
                }
                DiskDone::Discarded
            }
            DiskOp::Apply => {
                if fail {
                    DiskDone::Applied(Err(why()))
                } else {
                    self.disk.applied = self.disk.tip.map(|t| (t.lineage, t.seq));
                    DiskDone::Applied(Ok(self.disk.tip.map_or(0, |t| t.seq)))
                }
            }
        };
        self.feed_disk(done);
    }

    fn feed_disk(&mut self, done: DiskDone) {
        match &done {
            DiskDone::TermSaved {
                term,
                result: Ok(()),
            } => {
                *self.saved_ok.entry(*term).or_default() += 1;
            }
            DiskDone::Persisted {
                seq,
                result: Ok(tip),
            } => {
                *self.persisted_ok.entry(*seq).or_default() += 1;
                if self.adopting == Some(tip.lineage) {
                    self.adopting = None;
                }
            }
            _ => {}
        }
        if tracing() {
            eprintln!("{:>10} us disk {done:?}", self.now.as_nanos() / 1000);
        }
        self.spare.handle_disk(self.now, done);
        self.settle();
    }

    fn msg(&mut self, c: ConnId, term: u64, m: Msg) {
        // An honest primary stamps every message with the term of its hello (the link's
        // term is fixed); only chaos mode lets a connection change its term.
        let term = match self.conn_term.get(&c) {
            Some(&t) if !self.chaos => t,
            _ => term,
        };
        // The spare treats the first message of a connection apart (a hello or a status
        // request); mirror which one that is.
        let first = !self.spare.taking_over() && self.fresh.remove(&c);
        if first {
            self.conn_term.insert(c, term);
        }
        match &m {
            Msg::EndStream { seq }
            | Msg::Stream {
                header: StreamHeader { seq, .. },
                ..
            } => *self.ends_sent.entry((c, *seq)).or_default() += 1,
            Msg::Hello {
                lineage,
                exe_id,
                ack,
                ..
            } if first => {
                self.conn_lineage.insert(c, *lineage);
                self.conn_ack.insert(c, *ack);
                // The spare's rule for the lineage it waits for: set by a hello it neither
                // fences (older term) nor refuses (another executable than its tip's; with no
                // tip any executable is admitted), of another lineage than the one it protects
                // (its tip's, or the one it owes a checkpoint).
                let same_exe = self.spare.tip().is_none_or(|t| t.exe_id == *exe_id);
                if self.accept && term >= self.spare.term() && same_exe {
                    let protected = self
                        .spare
                        .tip()
                        .map(|t| t.lineage)
                        .or(self.owed.last().map(|o| o.0));
                    if protected.is_some_and(|p| p != *lineage) {
                        self.adopting = Some(*lineage);
                    }
                }
            }
            _ => {}
        }
        if tracing() {
            eprintln!(
                "{:>10} us msg {c:?} term {term}: {m:?}",
                self.now.as_nanos() / 1000
            );
        }
        self.spare.handle_msg(self.now, c, term, m);
        self.settle();
    }

    fn timeout(&mut self) {
        if tracing() {
            eprintln!("{:>10} us timeout", self.now.as_nanos() / 1000);
        }
        self.spare.handle_timeout(self.now);
        self.settle();
    }
}

fn lineage(b: u8) -> Lineage {
    LINEAGES[usize::from(b) % LINEAGES.len()]
}

/// A message the spare should not receive, or any message, decoded from operands.
fn any_msg(b: &mut Bytes<'_>) -> Msg {
    match b.u8() % 7 {
        0 => Msg::Status {
            term: u64::from(b.u8()),
            seq: u64::from(b.u8()),
            applied: u64::from(b.u8()),
            since_grant_ms: u64::from(b.u8()),
            detection_us: u64::from(b.u16()),
        },
        1 => Msg::Ack {
            seq: u64::from(b.u8()),
        },
        2 => Msg::Nack {
            seq: u64::from(b.u8()),
            reason: String::new(),
        },
        3 => Msg::HeartbeatAck {
            id: u64::from(b.u8()),
            seq: u64::from(b.u8()),
        },
        4 => Msg::Fenced {
            term: u64::from(b.u8()),
        },
        5 => Msg::Refused { reason: "x".into() },
        _ => Msg::StatusRequest,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let accept = flags & 1 != 0;
    let chaos = flags & 2 != 0;
    let has_tip = flags & 4 != 0;
    let rec_term = u64::from(b.u8() % 8);
    let tip_lineage = lineage(b.u8());
    let tip_seq = u64::from(b.u8()).max(1);
    let tip_term = u64::from(b.u8() % 8);
    let mut applied = u64::from(b.u8());
    // The data files: at the tip, behind it, or (above it) of another lineage than the tip.
    let applied_lineage = if applied > tip_seq {
        lineage(tip_lineage[0].wrapping_add(1))
    } else {
        tip_lineage
    };
    let tip = has_tip.then_some(Tip {
        lineage: tip_lineage,
        seq: tip_seq,
        term: tip_term,
        exe_id: EXE,
    });
    if !has_tip {
        applied = 0;
    }
    let start = Time::from_nanos(1_000_000_000);
    let cfg = SpareConfig {
        detection: DETECTION,
        startup_grace: GRACE,
        accept_new_lineage: accept,
        apply_retry: APPLY_RETRY,
        arbiter: None,
    };
    let rec = Recovered {
        term: rec_term,
        tip,
        applied,
    };
    let spare = Spare::new(cfg, rec, start);
    let term0 = spare.term();
    let mut w = World {
        spare,
        chaos,
        accept,
        now: start,
        start,
        next_conn: 1,
        conns: Vec::new(),
        queue: VecDeque::new(),
        disk: ModelDisk {
            term: rec_term.max(tip.map_or(0, |t| t.term)),
            tip,
            applied: tip.map(|_| (applied_lineage, applied)),
            spool: None,
            verified: None,
        },
        persisted_ok: HashMap::new(),
        verified_fed: HashMap::new(),
        conn_ack: HashMap::new(),
        receipt_acked: None,
        owed: Vec::new(),
        acks: HashMap::new(),
        ends_sent: HashMap::new(),
        acks_on: HashMap::new(),
        saved_ok: HashMap::new(),
        last_term: term0,
        last_stamp: 0,
        takeovers: 0,
        takeover_term: None,
        decided: None,
        last_hb_ack: None,
        conn_lineage: HashMap::new(),
        fresh: HashSet::new(),
        conn_term: HashMap::new(),
        acked: Vec::new(),
        adopting: None,
    };
    w.settle();

    let mut steps = 0;
    while !b.is_empty() && steps < 4096 {
        steps += 1;
        let op = b.u8();
        match op % 16 {
            0 => {
                let c = ConnId(w.next_conn);
                w.next_conn += 1;
                w.conns.push(c);
                w.fresh.insert(c);
                w.spare.handle_open(w.now, c);
                w.settle();
            }
            1 => {
                let c = w.conn(b.u8());
                w.conns.retain(|x| *x != c);
                w.fresh.remove(&c);
                w.spare.handle_closed(w.now, c, "fuzz");
                w.settle();
            }
            2 => {
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                let x = b.u8();
                let m = Msg::Hello {
                    exe_id: if x & 0x80 == 0 { EXE } else { [8; 32] },
                    pid: 1,
                    lineage: lineage(x),
                    ack: if x & 0x40 == 0 {
                        AckLevel::Fsynced
                    } else {
                        AckLevel::Received
                    },
                };
                w.msg(c, term, m);
            }
            3 => {
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                let h = StreamHeader {
                    seq: u64::from(b.u8()),
                    base_seq: u64::from(b.u8()),
                };
                w.msg(c, term, Msg::StreamStart(h));
            }
            4 => {
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                let seq = u64::from(b.u8());
                let n = usize::from(b.u8() % 16);
                w.msg(
                    c,
                    term,
                    Msg::Chunk {
                        seq,
                        bytes: vec![0xab; n],
                    },
                );
            }
            5 => {
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                w.msg(
                    c,
                    term,
                    Msg::EndStream {
                        seq: u64::from(b.u8()),
                    },
                );
            }
            6 => {
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                let (id, seq) = (u64::from(b.u8()), u64::from(b.u8()));
                w.msg(c, term, Msg::Heartbeat { id, seq });
            }
            7 => {
                // A whole checkpoint in one message (what a primary sends for a stream that
                // fits one chunk; start, chunk and end one by one are opcodes 3, 4, 5).
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                let h = StreamHeader {
                    seq: u64::from(b.u8()),
                    base_seq: u64::from(b.u8()),
                };
                w.msg(
                    c,
                    term,
                    Msg::Stream {
                        header: h,
                        bytes: vec![1; 8],
                    },
                );
            }
            8 => {
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                let m = any_msg(&mut b);
                w.msg(c, term, m);
            }
            9 => {
                let (c, term) = (w.conn(b.u8()), u64::from(b.u8() % 8));
                let n = usize::from(b.u8() % 64);
                if let Ok(m) = postcard::from_bytes::<Msg>(b.take(n)) {
                    w.msg(c, term, m);
                }
            }
            10 | 11 => w.complete(op % 16 == 11 && b.u8().is_multiple_of(2)),
            12 => {
                w.now = w.now + Duration::from_micros(u64::from(b.u16()) * 100);
            }
            13 => {
                if let Some(t) = w.spare.poll_timeout() {
                    w.now = w.now.max(t);
                }
                w.timeout();
            }
            14 => {
                if w.chaos {
                    let seq = u64::from(b.u8());
                    let done = match b.u8() % 9 {
                        0 => DiskDone::TermSaved {
                            term: u64::from(b.u8() % 10),
                            result: Ok(()),
                        },
                        1 => DiskDone::TermSaved {
                            term: u64::from(b.u8() % 10),
                            result: Err("x".into()),
                        },
                        2 => DiskDone::SpoolFailed {
                            seq,
                            why: "x".into(),
                        },
                        3 => DiskDone::Persisted {
                            seq,
                            result: Ok(Tip {
                                lineage: lineage(b.u8()),
                                seq: u64::from(b.u8()),
                                term: u64::from(b.u8() % 10),
                                exe_id: EXE,
                            }),
                        },
                        4 => DiskDone::Persisted {
                            seq,
                            result: Err("x".into()),
                        },
                        5 => DiskDone::Applied(Ok(seq)),
                        6 => DiskDone::Applied(Err("x".into())),
                        7 => {
                            *w.verified_fed.entry(seq).or_default() += 1;
                            DiskDone::Verified { seq }
                        }
                        _ => DiskDone::Discarded,
                    };
                    w.feed_disk(done);
                } else {
                    // Drain the disk.
                    while !w.queue.is_empty() {
                        w.complete(false);
                    }
                }
            }
            _ => w.timeout(),
        }
    }

    if w.chaos || w.takeovers > 0 {
        return;
    }
    // Liveness: heal everything, let the primary be dead, and the spare must take over.
    for c in std::mem::take(&mut w.conns) {
        w.spare.handle_closed(w.now, c, "primary dead");
        w.settle();
    }
    for _ in 0..64 {
        while !w.queue.is_empty() {
            w.complete(false);
        }
        w.now = w.now + Duration::from_millis(100);
        w.timeout();
        if w.takeovers > 0 {
            break;
        }
    }
    while !w.queue.is_empty() {
        w.complete(false);
    }
    let expect = w.disk.tip.is_some() && w.adopting.is_none() && w.owed.is_empty();
    if expect && w.takeovers == 0 {
        w.fail(format!(
            "no takeover of a dead primary: tip {:?}, applied {:?}, spare outstanding {}, adopting {:?}, owed {:?}",
            w.disk.tip,
            w.disk.applied,
            w.spare.disk_outstanding(),
            w.adopting,
            w.owed
        ));
    }
});
