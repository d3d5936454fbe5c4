//! The spare's side of the protocol: admission of primaries (term, lineage, executable),
//! the checkpoint pipeline (spool → persist → acknowledge → apply) driven through disk
//! operations it asks for, heartbeat answers (each one a lease granted), and the decision to
//! take over. Sans-IO, in the shape of `str0m`: the driver feeds `handle_*` with what happened
//! and the time, and drains [`Spare::poll_output`] and [`Spare::poll_timeout`].
//!
//! Rules this machine keeps (the simulator checks the properties they give):
//! * **Never acknowledge what will not be applied.** A checkpoint is acknowledged only after
//!   the disk worker validated the whole stream against the durable tip
//!   ([`DiskDone::Verified`]) and — at the primary's default [`AckLevel::Fsynced`] — made it
//!   durable ([`DiskDone::Persisted`]); a stream that cannot chain is refused before a byte is
//!   spooled.
//! * **A live spare does not take over without what it acknowledged.** With
//!   [`AckLevel::Received`] the acknowledgement precedes the `fsync`; if making the stream
//!   durable then fails, the primary's connection is closed (its next checkpoint is full) and
//!   no takeover happens until a checkpoint at or after the lost one is durable. Only a crash
//!   of the spare (which forgets this) loses such a checkpoint — the failure that level does
//!   not cover.
//! * **Terms only go up, and are on disk before they count.** A primary with an older term than
//!   any this spare has seen is fenced; a newer one is admitted only once its term is saved; the
//!   takeover term is saved before the takeover happens.
//! * **No takeover within `detection` of a lease granted**, and none within `startup_grace` of
//!   starting (a restarted spare may have granted one just before it died). See
//!   [`crate::lease`] for why this, with the primary's lease anchored to heartbeat send times,
//!   means the two never both serve.
//! * **A new lineage replaces an image only when allowed, and only by a full checkpoint**;
//!   until that checkpoint is durable the old image is not taken over for it.

mod admission;
mod claim;
mod stream;
mod takeover;

use crate::msg::{AckLevel, Lineage, Msg, StreamHeader};
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
    /// within it; one that is dead is taken over after it). Never less than `detection`
    /// whatever is configured: a lease granted just before a crash runs that long.
    pub startup_grace: Duration,
    /// Let a primary of another lineage replace the image (its first full checkpoint does).
    pub accept_new_lineage: bool,
    /// Wait before retrying a failed apply.
    pub apply_retry: Duration,
    /// This node's name at the arbiter, if one is configured: a takeover then needs the
    /// arbiter's compare-and-swap of the term ([`crate::arbiter`]).
    pub arbiter: Option<String>,
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
///
/// **Counting.** Every operation is answered by exactly one *final* [`DiskDone`] (the core
/// counts outstanding operations, and a takeover waits until there are none). A
/// [`DiskOp::Persist`] may in addition get one *intermediate* [`DiskDone::Verified`] before its
/// final [`DiskDone::Persisted`]; `Verified` does not end the operation. So a driver sends, per
/// operation: `SaveTerm` → `TermSaved`; `SpoolStart`/`Spool` → `SpoolFailed` or `Discarded`;
/// `Persist` → (`Verified` if the stream passed validation) then `Persisted`; `Discard` →
/// `Discarded`; `Apply` → `Applied`.
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
    /// executable, lineage, term, declared header) and make it durable, or delete it. Report
    /// [`DiskDone::Verified`] once validation has passed and before anything is made durable
    /// (always, whatever the primary's [`AckLevel`]: it is how an acknowledgement on receipt
    /// can come at all), then answer with [`DiskDone::Persisted`]. A stream refused by
    /// validation gets no `Verified`, only `Persisted` with the error.
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
    /// Intermediate report of a [`DiskOp::Persist`]: the whole spooled stream `seq` passed
    /// validation (what `Persisted { Ok }` would have checked) and is about to be made durable
    /// (`fsync`, rename, directory `fsync`). It does **not** end the operation — its
    /// `Persisted` follows — and is sent at most once, before that `Persisted`. A primary that
    /// asked for [`AckLevel::Received`] is acknowledged here.
    Verified {
        /// The checkpoint.
        seq: u64,
    },
    /// [`DiskOp::Persist`] finished: durable, or refused (by validation, or by a failure to
    /// make it durable after `Verified`).
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
    /// Ask the arbiter; answer with [`Spare::handle_arbiter`], exactly once.
    Arbiter(u64, crate::arbiter::Request),
}

#[derive(Debug)]
struct Incoming {
    seq: u64,
    refused: Option<String>,
}

#[derive(Debug)]
struct Primary {
    conn: ConnId,
    /// The term it was admitted with (a primary's term never changes).
    term: u64,
    lineage: Lineage,
    pid: u32,
    /// When it wants its checkpoints acknowledged.
    ack: AckLevel,
    incoming: Option<Incoming>,
}

#[derive(Debug)]
struct Admission {
    conn: ConnId,
    term: u64,
    lineage: Lineage,
    pid: u32,
    ack: AckLevel,
}

/// A queued persist, and who is waiting for its answer.
#[derive(Debug)]
struct Waiter {
    seq: u64,
    conn: ConnId,
    lineage: Lineage,
    /// The level of the primary that sent it (fixed for its connection).
    ack: AckLevel,
    /// It was asked to replace the image's lineage (a deliberate replacement, allowed by
    /// `accept_new_lineage`).
    replace: bool,
    /// Acknowledged already, on receipt ([`DiskDone::Verified`]), before it was durable.
    acked_on_receipt: bool,
    /// Why a spool operation of this stream failed after its end had already queued the
    /// persist (a stream in one message, or its chunk and end in one read): the persist then
    /// runs on an incomplete spool, and this, not what validation says of it, is the reason
    /// the primary is told.
    spool_failed: Option<String>,
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
    persist_waiters: VecDeque<Waiter>,
    /// Checkpoints acknowledged on receipt that could not then be made durable here: (lineage,
    /// newest such sequence), one entry per lineage (a lineage being adopted and the image's own
    /// can both be owed), oldest first. No takeover while any is (the image lacks something a
    /// primary was told is safe). An entry is cleared once a checkpoint of its lineage at or
    /// after it is durable (the primary's next full one), or another lineage deliberately
    /// replaces the image (a persist asked to replace it, with `accept_new_lineage`) — not when
    /// the image merely moves on in another lineage. On an empty image the first entry is the
    /// lineage the image protects (`Spare::protected`); later ones are replacing lineages'.
    owed: Vec<(Lineage, u64)>,
    /// Whether the takeover held back by `owed` has been logged.
    owed_logged: bool,
    /// Whether the refusal to take over for want of a term above `u64::MAX` has been logged.
    exhausted_logged: bool,
    last_grant: Option<Time>,
    hold_until: Time,
    /// No takeover decision before this: after an abandoned claim (it spares the arbiter, and
    /// gives the primary time to reconnect), and for `detection` after a primary is admitted.
    /// Not a safety rule (those are `last_grant` and `hold_until`): it only delays.
    claim_hold_until: Time,
    disk_outstanding: usize,
    adopting: Option<Lineage>,
    taking_over: Option<u64>,
    taken_over: bool,
    /// The primary handed over at this checkpoint (a switchover): take over without waiting
    /// for its silence, and without the arbiter's wait (it renews nothing any more).
    handed_over: Option<u64>,
    /// A takeover being decided at the arbiter.
    claim: Option<claim::Claim>,
    /// When the current (or last) claim began.
    claim_started: Option<Time>,
    arbiter_id: u64,
    /// Why the last claim was abandoned (logged once while it stays the reason).
    claim_note: Option<String>,
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
            // Never shorter than the detection time: the previous incarnation may have granted a
            // lease just before it died, and leases are bounded by `detection`, not by the grace.
            hold_until: now + cfg.startup_grace.max(cfg.detection),
            claim_hold_until: Time::ZERO,
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
            owed: Vec::new(),
            owed_logged: false,
            exhausted_logged: false,
            last_grant: None,
            disk_outstanding: 0,
            adopting: None,
            taking_over: None,
            taken_over: false,
            handed_over: None,
            claim: None,
            claim_started: None,
            arbiter_id: 0,
            claim_note: None,
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

    /// The durability level of the admitted primary, if one is.
    pub fn primary_ack(&self) -> Option<AckLevel> {
        self.primary.as_ref().map(|p| p.ack)
    }

    /// A checkpoint acknowledged on receipt that this spare then failed to make durable (it
    /// holds back the takeover until a later checkpoint of its lineage is durable); the newest,
    /// if several lineages are owed one.
    pub fn acked_not_durable(&self) -> Option<u64> {
        self.owed.iter().map(|(_, seq)| *seq).max()
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

    pub(super) fn send(&mut self, c: ConnId, m: Msg) {
        self.out.push_back(Output::Send(c, self.term, m));
    }

    pub(super) fn disk(&mut self, op: DiskOp) {
        self.disk_outstanding += 1;
        self.out.push_back(Output::Disk(op));
    }

    pub(super) fn log(&mut self, s: String) {
        self.out.push_back(Output::Log(s));
    }

    pub(super) fn status(&self, now: Time) -> Msg {
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

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
}
