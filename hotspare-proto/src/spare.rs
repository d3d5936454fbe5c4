//! The spare's side of the protocol: admission of primaries (term, lineage, executable),
//! the checkpoint pipeline (spool → persist → acknowledge → apply) driven through disk
//! operations it asks for, heartbeat answers (each one a lease granted), and the decision to
//! take over. Sans-IO, in the shape of `str0m`: the driver feeds `handle_*` with what happened
//! and the time, and drains [`Spare::poll_output`] and [`Spare::poll_timeout`].
//!
//! Rules this machine keeps (the simulator checks the properties they give):
//! * **Never acknowledge what will not be applied.** A checkpoint is acknowledged only after
//!   the disk worker validated the whole stream against the durable tip and made it durable
//!   ([`DiskOp::Persist`]); a stream that cannot chain is refused before a byte is spooled.
//! * **Terms only go up, and are on disk before they count.** A primary with an older term than
//!   any this spare has seen is fenced; a newer one is admitted only once its term is saved; the
//!   takeover term is saved before the takeover happens.
//! * **No takeover within `detection` of a lease granted**, and none within `startup_grace` of
//!   starting (a restarted spare may have granted one just before it died). See
//!   [`crate::lease`] for why this, with the primary's lease anchored to heartbeat send times,
//!   means the two never both serve.
//! * **A new lineage replaces an image only when allowed, and only by a full checkpoint**;
//!   until that checkpoint is durable the old image is not taken over for it.

use crate::msg::{Lineage, Msg, StreamHeader};
use crate::time::Time;
use std::collections::VecDeque;
use std::time::Duration;

/// A connection, as numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// How the spare decides.
#[derive(Debug, Clone)]
pub struct SpareConfig {
    /// Silence after the last lease granted before the primary is declared dead (N × H).
    pub detection: Duration,
    /// After starting, no takeover before this (a primary that is alive reconnects well
    /// within it; one that is dead is taken over after it).
    pub startup_grace: Duration,
    /// Let a primary of another lineage replace the image (its first full checkpoint does).
    pub accept_new_lineage: bool,
    /// Wait before retrying a failed apply.
    pub apply_retry: Duration,
}

/// The newest checkpoint durable in the image directory (applied or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    /// Its lineage.
    pub lineage: Lineage,
    /// Its sequence.
    pub seq: u64,
    /// The term it was written in.
    pub term: u64,
    /// The executable it belongs to.
    pub exe_id: [u8; 32],
}

/// What the spare found on disk when it started.
#[derive(Debug, Clone, Copy)]
pub struct Recovered {
    /// The saved term (the highest this spare has known).
    pub term: u64,
    /// The durable tip.
    pub tip: Option<Tip>,
    /// The sequence applied to the data files.
    pub applied: u64,
}

/// Disk work, executed by the driver one at a time in the order asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// Save `term` durably (before anything relies on it).
    SaveTerm(u64),
    /// Start spooling checkpoint `header.seq` (from a primary of `lineage` in `term`).
    SpoolStart {
        /// What the stream declared.
        header: StreamHeader,
        /// The primary's lineage.
        lineage: Lineage,
        /// The primary's term.
        term: u64,
    },
    /// Append bytes to the spool of `seq`.
    Spool {
        /// The checkpoint.
        seq: u64,
        /// Its next bytes.
        bytes: Vec<u8>,
    },
    /// Validate the whole spooled stream against the durable tip (every CRC, counts, chain,
    /// executable, lineage, term, declared header) and make it durable, or delete it. Answer
    /// with [`DiskDone::Persisted`].
    Persist {
        /// The checkpoint.
        seq: u64,
        /// A full checkpoint of another lineage may replace the tip.
        replace_lineage: bool,
    },
    /// Delete the spool of an abandoned stream.
    Discard {
        /// The checkpoint.
        seq: u64,
    },
    /// Apply every durable, unapplied checkpoint to the data files. Answer
    /// [`DiskDone::Applied`].
    Apply,
}

/// What a disk operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskDone {
    /// [`DiskOp::SaveTerm`].
    TermSaved {
        /// The term.
        term: u64,
        /// Whether it is on disk.
        result: Result<(), String>,
    },
    /// [`DiskOp::SpoolStart`] or [`DiskOp::Spool`] failed (the stream is poisoned). Every
    /// operation is answered exactly once (the core counts them: a takeover waits for the disk
    /// to be idle); a spool operation that succeeded is answered [`DiskDone::Discarded`].
    SpoolFailed {
        /// The checkpoint.
        seq: u64,
        /// Why.
        why: String,
    },
    /// [`DiskOp::Persist`].
    Persisted {
        /// The checkpoint.
        seq: u64,
        /// The new tip, or why the stream was refused.
        result: Result<Tip, String>,
    },
    /// [`DiskOp::Apply`]: the sequence now applied, or why not.
    Applied(Result<u64, String>),
    /// [`DiskOp::Discard`], or a spool operation that succeeded: nothing to report, but it ends
    /// the operation.
    Discarded,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `msg`, sealed with `term`, on a connection.
    Send(ConnId, u64, Msg),
    /// Close a connection (after sending what was queued for it), logging why.
    Close(ConnId, String),
    /// Start a disk operation.
    Disk(DiskOp),
    /// Take over: the term is saved, the image is applied at `seq`. Run the hook, become the
    /// program. Nothing else will be asked of the driver.
    TakeOver {
        /// The new term (the fencing token).
        term: u64,
        /// The checkpoint resumed.
        seq: u64,
        /// Silence of the primary before it was declared dead.
        silent: Duration,
    },
    /// A line for the log.
    Log(String),
}

#[derive(Debug)]
struct Incoming {
    seq: u64,
    refused: Option<String>,
}

#[derive(Debug)]
struct Primary {
    conn: ConnId,
    lineage: Lineage,
    pid: u32,
    incoming: Option<Incoming>,
}

#[derive(Debug)]
struct Admission {
    conn: ConnId,
    term: u64,
    lineage: Lineage,
    pid: u32,
}

/// The spare.
#[derive(Debug)]
pub struct Spare {
    cfg: SpareConfig,
    /// The highest term known (saved, or being saved before anything relies on it).
    term: u64,
    /// The highest term known to be on disk.
    saved_term: u64,
    tip: Option<Tip>,
    /// (lineage, seq) the tip will have once the queued persists succeed.
    queued_tip: Option<(Lineage, u64)>,
    applied: u64,
    /// Checkpoints made durable, and how many of them an Apply has covered: a takeover waits
    /// until they are equal (sequence numbers alone cannot tell two lineages apart).
    persisted: u64,
    applied_upto: u64,
    apply_covers: u64,
    apply_queued: bool,
    apply_retry_at: Option<Time>,
    primary: Option<Primary>,
    admitting: Option<Admission>,
    /// Connections that have not sent their first message.
    opened: Vec<ConnId>,
    /// Where to send the answer of each queued persist.
    persist_waiters: VecDeque<(u64, ConnId)>,
    last_grant: Option<Time>,
    hold_until: Time,
    disk_outstanding: usize,
    adopting: Option<Lineage>,
    taking_over: Option<u64>,
    taken_over: bool,
    out: VecDeque<Output>,
}

fn hex(l: &Lineage) -> String {
    l.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl Spare {
    /// A spare starting at `now` on what it recovered from disk.
    pub fn new(cfg: SpareConfig, recovered: Recovered, now: Time) -> Spare {
        let term = recovered.term.max(recovered.tip.map_or(0, |t| t.term));
        Spare {
            hold_until: now + cfg.startup_grace,
            cfg,
            term,
            saved_term: recovered.term,
            tip: recovered.tip,
            queued_tip: recovered.tip.map(|t| (t.lineage, t.seq)),
            applied: recovered.applied,
            persisted: u64::from(recovered.tip.is_some_and(|t| t.seq != recovered.applied)),
            applied_upto: 0,
            apply_covers: 0,
            apply_queued: false,
            apply_retry_at: recovered
                .tip
                .filter(|t| t.seq != recovered.applied)
                .map(|_| now),
            primary: None,
            admitting: None,
            opened: Vec::new(),
            persist_waiters: VecDeque::new(),
            last_grant: None,
            disk_outstanding: 0,
            adopting: None,
            taking_over: None,
            taken_over: false,
            out: VecDeque::new(),
        }
    }

    /// The highest term known.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The durable tip.
    pub fn tip(&self) -> Option<Tip> {
        self.tip
    }

    /// The sequence applied to the data files.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// When the last lease was granted.
    pub fn last_grant(&self) -> Option<Time> {
        self.last_grant
    }

    /// Whether a primary is connected and admitted.
    pub fn has_primary(&self) -> bool {
        self.primary.is_some()
    }

    /// Disk operations asked for and not finished.
    pub fn disk_outstanding(&self) -> usize {
        self.disk_outstanding
    }

    /// Whether the spare has decided to take over (its term is being saved) or has.
    pub fn taking_over(&self) -> bool {
        self.taking_over.is_some() || self.taken_over
    }

    /// Whether the spare has taken over (it is the program now).
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    fn send(&mut self, c: ConnId, m: Msg) {
        self.out.push_back(Output::Send(c, self.term, m));
    }

    fn disk(&mut self, op: DiskOp) {
        self.disk_outstanding += 1;
        self.out.push_back(Output::Disk(op));
    }

    fn log(&mut self, s: String) {
        self.out.push_back(Output::Log(s));
    }

    fn status(&self, now: Time) -> Msg {
        Msg::Status {
            term: self.term,
            seq: self.tip.map_or(0, |t| t.seq),
            applied: self.applied,
            since_grant_ms: self
                .last_grant
                .map_or(u64::MAX, |g| now.since(g).as_millis() as u64),
            detection_us: self.cfg.detection.as_micros() as u64,
        }
    }

    /// An authenticated connection opened.
    pub fn handle_open(&mut self, _now: Time, c: ConnId) {
        if self.taken_over {
            self.out.push_back(Output::Close(c, "taken over".into()));
            return;
        }
        self.opened.push(c);
    }

    /// A connection closed or failed.
    pub fn handle_closed(&mut self, _now: Time, c: ConnId, why: &str) {
        self.opened.retain(|x| *x != c);
        if self.admitting.as_ref().is_some_and(|a| a.conn == c) {
            self.admitting = None;
        }
        if self.primary.as_ref().is_some_and(|p| p.conn == c) {
            let p = self.primary.take().expect("checked");
            self.log(format!("primary pid {} disconnected: {why}", p.pid));
            if let Some(inc) = p.incoming {
                if inc.refused.is_none() {
                    self.disk(DiskOp::Discard { seq: inc.seq });
                }
            }
        }
    }

    fn refuse(&mut self, c: ConnId, m: Msg, why: String) {
        self.send(c, m);
        self.out.push_back(Output::Close(c, why));
    }

    /// A message on connection `c`, stamped with the sender's term.
    pub fn handle_msg(&mut self, now: Time, c: ConnId, term: u64, msg: Msg) {
        if self.taken_over || self.taking_over.is_some() {
            self.out
                .push_back(Output::Close(c, "this spare is taking over".into()));
            return;
        }
        if let Some(i) = self.opened.iter().position(|x| *x == c) {
            self.opened.remove(i);
            return self.first_msg(now, c, term, msg);
        }
        if self.primary.as_ref().is_none_or(|p| p.conn != c) {
            if self.admitting.as_ref().is_some_and(|a| a.conn == c) {
                return; // waiting for its term to be saved; heartbeats earn nothing yet
            }
            self.out.push_back(Output::Close(
                c,
                "message on a connection that is not the primary's".into(),
            ));
            return;
        }
        if term < self.term {
            let why = format!(
                "message with term {term}, older than ours ({}): fenced",
                self.term
            );
            return self.refuse(c, Msg::Fenced { term: self.term }, why);
        }
        match msg {
            Msg::Heartbeat { id, .. } => {
                self.last_grant = Some(now);
                let seq = self.tip.map_or(0, |t| t.seq);
                self.send(c, Msg::HeartbeatAck { id, seq });
            }
            Msg::StatusRequest => {
                let s = self.status(now);
                self.send(c, s);
            }
            Msg::StreamStart(h) => self.stream_start(c, term, h),
            Msg::Chunk { seq, bytes } => {
                let p = self.primary.as_mut().expect("checked");
                match &p.incoming {
                    Some(inc) if inc.seq == seq => {
                        if inc.refused.is_none() {
                            self.disk(DiskOp::Spool { seq, bytes });
                        }
                    }
                    _ => {
                        let why = format!("data of checkpoint {seq} without its start");
                        self.protocol_error(c, why);
                    }
                }
            }
            Msg::EndStream { seq } => {
                let p = self.primary.as_mut().expect("checked");
                let (lineage, replace) = (p.lineage, self.adopting == Some(p.lineage));
                match p.incoming.take() {
                    Some(inc) if inc.seq == seq => match inc.refused {
                        Some(reason) => self.send(c, Msg::Nack { seq, reason }),
                        None => {
                            self.disk(DiskOp::Persist {
                                seq,
                                replace_lineage: replace,
                            });
                            self.persist_waiters.push_back((seq, c));
                            self.queued_tip = Some((lineage, seq));
                        }
                    },
                    _ => {
                        let why = format!("end of checkpoint {seq} without its start");
                        self.protocol_error(c, why);
                    }
                }
            }
            other => {
                let why = format!("unexpected message {other:?}");
                self.protocol_error(c, why);
            }
        }
    }

    fn protocol_error(&mut self, c: ConnId, why: String) {
        self.out.push_back(Output::Close(c, why.clone()));
        self.handle_closed(Time::ZERO, c, &why);
    }

    fn first_msg(&mut self, now: Time, c: ConnId, term: u64, msg: Msg) {
        match msg {
            Msg::StatusRequest => {
                let s = self.status(now);
                self.send(c, s);
                self.out
                    .push_back(Output::Close(c, "status answered".into()));
            }
            Msg::Hello {
                exe_id,
                pid,
                lineage,
            } => self.hello(now, c, term, exe_id, pid, lineage),
            other => {
                let why = format!("unexpected first message {other:?}");
                self.out.push_back(Output::Close(c, why));
            }
        }
    }

    fn hello(
        &mut self,
        now: Time,
        c: ConnId,
        term: u64,
        exe_id: [u8; 32],
        pid: u32,
        lineage: Lineage,
    ) {
        if term < self.term {
            let why = format!(
                "primary pid {pid} has term {term}, older than ours ({}): fenced",
                self.term
            );
            return self.refuse(c, Msg::Fenced { term: self.term }, why);
        }
        if let Some(tip) = self.tip {
            if tip.exe_id != exe_id {
                let reason = "the image belongs to another executable".to_string();
                return self.refuse(
                    c,
                    Msg::Refused {
                        reason: reason.clone(),
                    },
                    format!("primary pid {pid}: {reason}"),
                );
            }
            if tip.lineage != lineage {
                if !self.cfg.accept_new_lineage {
                    let reason = format!(
                        "the image holds lineage {} at checkpoint {}, the primary is lineage {} (resume the primary from this image, or start hotspare-resume with --accept-new-lineage to replace it)",
                        hex(&tip.lineage),
                        tip.seq,
                        hex(&lineage)
                    );
                    return self.refuse(
                        c,
                        Msg::Refused {
                            reason: reason.clone(),
                        },
                        format!("primary pid {pid}: {reason}"),
                    );
                }
                if self.adopting != Some(lineage) {
                    self.log(format!(
                        "REPLACING the image of lineage {} (checkpoint {}) with lineage {} of primary pid {pid} (--accept-new-lineage): the old image is taken over no more",
                        hex(&tip.lineage),
                        tip.seq,
                        hex(&lineage)
                    ));
                    self.adopting = Some(lineage);
                }
            }
        }
        if let Some(a) = self.admitting.take() {
            self.out
                .push_back(Output::Close(a.conn, "another primary connected".into()));
        }
        let a = Admission {
            conn: c,
            term,
            lineage,
            pid,
        };
        if term > self.saved_term {
            // Saved before it counts (again, if an earlier save of it failed).
            self.term = self.term.max(term);
            self.disk(DiskOp::SaveTerm(term));
            self.admitting = Some(a);
        } else {
            self.admit(now, a);
        }
    }

    fn admit(&mut self, now: Time, a: Admission) {
        if let Some(old) = self.primary.take() {
            self.out.push_back(Output::Close(
                old.conn,
                format!("primary pid {} replaced by a new connection", old.pid),
            ));
            if let Some(inc) = old.incoming {
                if inc.refused.is_none() {
                    self.disk(DiskOp::Discard { seq: inc.seq });
                }
            }
        }
        self.log(format!(
            "primary pid {} (term {}, lineage {}) admitted",
            a.pid,
            a.term,
            hex(&a.lineage)
        ));
        let s = self.status(now);
        self.send(a.conn, s);
        self.primary = Some(Primary {
            conn: a.conn,
            lineage: a.lineage,
            pid: a.pid,
            incoming: None,
        });
    }

    fn stream_start(&mut self, c: ConnId, term: u64, h: StreamHeader) {
        let p = self.primary.as_mut().expect("checked");
        if let Some(old) = p.incoming.take() {
            if old.refused.is_none() {
                self.disk(DiskOp::Discard { seq: old.seq });
            }
        }
        let p = self.primary.as_ref().expect("checked");
        let lineage = p.lineage;
        let same = self.queued_tip.filter(|(l, _)| *l == lineage);
        let refused = if h.seq == 0 || (h.base_seq != 0 && h.base_seq >= h.seq) {
            Some(format!(
                "checkpoint {} on base {} is impossible",
                h.seq, h.base_seq
            ))
        } else if h.base_seq == 0 {
            match same {
                Some((_, s)) if h.seq <= s => Some(format!(
                    "checkpoint {} is not newer than this lineage's checkpoint {s} here",
                    h.seq
                )),
                _ => None,
            }
        } else {
            match same {
                Some((_, s)) if s == h.base_seq => None,
                Some((_, s)) => Some(format!(
                    "checkpoint {} applies on top of {} but the image is at {s}",
                    h.seq, h.base_seq
                )),
                None => Some(format!(
                    "incremental checkpoint {} but the image holds no checkpoint of this lineage",
                    h.seq
                )),
            }
        };
        if refused.is_none() {
            self.disk(DiskOp::SpoolStart {
                header: h,
                lineage,
                term,
            });
        }
        let p = self.primary.as_mut().expect("checked");
        p.incoming = Some(Incoming {
            seq: h.seq,
            refused,
        });
        let _ = c;
    }

    /// A disk operation finished.
    pub fn handle_disk(&mut self, now: Time, done: DiskDone) {
        self.disk_outstanding = self.disk_outstanding.saturating_sub(1);
        match done {
            DiskDone::TermSaved { term, result } => self.term_saved(now, term, result),
            DiskDone::SpoolFailed { seq, why } => {
                if let Some(inc) = self
                    .primary
                    .as_mut()
                    .and_then(|p| p.incoming.as_mut())
                    .filter(|i| i.seq == seq)
                {
                    inc.refused = Some(why.clone());
                }
                self.log(format!("spooling checkpoint {seq}: {why}"));
            }
            DiskDone::Persisted { seq, result } => {
                let waiter = match self.persist_waiters.iter().position(|(s, _)| *s == seq) {
                    Some(i) => self.persist_waiters.remove(i).map(|(_, c)| c),
                    None => None,
                };
                let current = self.primary.as_ref().map(|p| p.conn);
                match result {
                    Ok(tip) => {
                        self.tip = Some(tip);
                        self.persisted += 1;
                        if self.adopting == Some(tip.lineage) {
                            self.adopting = None;
                            self.log(format!("the image is now lineage {}", hex(&tip.lineage)));
                        }
                        if let Some(c) = waiter.filter(|c| Some(*c) == current) {
                            self.send(c, Msg::Ack { seq });
                        }
                        self.schedule_apply();
                    }
                    Err(reason) => {
                        self.log(format!("checkpoint {seq} refused: {reason}"));
                        self.queued_tip = self.tip.map(|t| (t.lineage, t.seq));
                        if let Some(c) = waiter.filter(|c| Some(*c) == current) {
                            self.send(c, Msg::Nack { seq, reason });
                        }
                    }
                }
            }
            DiskDone::Applied(r) => {
                self.apply_queued = false;
                match r {
                    Ok(seq) => {
                        self.applied = seq;
                        self.applied_upto = self.apply_covers;
                        if self.applied_upto < self.persisted {
                            self.schedule_apply();
                        }
                    }
                    Err(why) => {
                        self.log(format!(
                            "applying checkpoints: {why} (retrying in {} ms)",
                            self.cfg.apply_retry.as_millis()
                        ));
                        self.apply_retry_at = Some(now + self.cfg.apply_retry);
                    }
                }
            }
            DiskDone::Discarded => {}
        }
    }

    fn schedule_apply(&mut self) {
        if !self.apply_queued {
            self.apply_queued = true;
            self.apply_covers = self.persisted;
            self.apply_retry_at = None;
            self.disk(DiskOp::Apply);
        }
    }

    fn term_saved(&mut self, now: Time, term: u64, result: Result<(), String>) {
        if let Err(why) = result {
            self.log(format!("saving term {term} failed: {why}"));
            if let Some(a) = self.admitting.take().filter(|a| a.term == term) {
                let reason = format!("the spare cannot save its term: {why}");
                self.refuse(
                    a.conn,
                    Msg::Refused {
                        reason: reason.clone(),
                    },
                    reason,
                );
            }
            if self.taking_over == Some(term) {
                // Fail closed: no takeover on a term that is not on disk. Try again later.
                self.taking_over = None;
                self.hold_until = now + self.cfg.detection;
            }
            return;
        }
        self.saved_term = self.saved_term.max(term);
        if let Some(a) = self.admitting.take() {
            if a.term == term {
                self.admit(now, a);
            } else {
                self.admitting = Some(a);
            }
        }
        if self.taking_over == Some(term) {
            self.taken_over = true;
            let silent = self.last_grant.map_or(Duration::ZERO, |g| now.since(g));
            self.out.push_back(Output::TakeOver {
                term,
                seq: self.applied,
                silent,
            });
        }
    }

    /// Timers: apply retries, and the takeover decision.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.taken_over {
            return;
        }
        if self.apply_retry_at.is_some_and(|t| now >= t) {
            self.apply_retry_at = None;
            self.schedule_apply();
        }
        if self.taking_over.is_some() {
            return;
        }
        let Some(tip) = self.tip else { return };
        let quiet_enough = self
            .last_grant
            .is_none_or(|g| now >= g + self.cfg.detection);
        if quiet_enough
            && now >= self.hold_until
            && self.adopting.is_none()
            && self.admitting.is_none()
            && self.disk_outstanding == 0
            && self.applied_upto == self.persisted
        {
            let term = self.term + 1;
            self.term = term;
            self.taking_over = Some(term);
            let silent = self.last_grant.map_or(Duration::ZERO, |g| now.since(g));
            self.log(format!(
                "primary silent for {} ms: taking over at checkpoint {} with term {term}",
                silent.as_millis(),
                tip.seq
            ));
            if let Some(p) = self.primary.take() {
                self.out
                    .push_back(Output::Close(p.conn, "declared dead: taking over".into()));
            }
            self.disk(DiskOp::SaveTerm(term));
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Spare::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.taken_over {
            return None;
        }
        let mut t = self.apply_retry_at;
        if self.tip.is_some() && self.taking_over.is_none() {
            let due = self.last_grant.map_or(self.hold_until, |g| {
                (g + self.cfg.detection).max(self.hold_until)
            });
            t = Some(t.map_or(due, |x| x.min(due)));
        }
        t
    }
}
