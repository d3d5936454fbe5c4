//! The primary's side of the protocol: connection state, heartbeats, the lease, and the
//! checkpoints in flight with their deadlines. Sans-IO, in the shape of `quinn-proto`: the
//! driver calls `handle_*` with what happened and the time, then drains
//! [`Link::poll_transmit`], [`Link::poll_event`] and [`Link::poll_timeout`].
//!
//! ```text
//!   Down ──(retry due)──▶ Connecting ──handle_connected──▶ Hello ──Status──▶ Up
//!    ▲                                                                   │
//!    └──────── handle_disconnected / ack deadline missed / Nack ◀────────┘
//! ```
//! The right to serve is [`Link::may_serve`]`(now)`: computed from the clock when asked, from
//! the send time of the newest heartbeat the spare answered ([`crate::lease`]). Nothing has to
//! clear it, so a thread that is blocked (or a process that is stopped) cannot leave it set.

use crate::arbiter::{self, Answer, Outcome, PrimaryArbiter, Request, Rev};
use crate::lease;
use crate::msg::{AckLevel, Lineage, Msg, StreamHeader};
use crate::time::Time;
use std::collections::VecDeque;
use std::time::Duration;

/// How the primary talks to its spare.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Heartbeat interval H.
    pub heartbeat: Duration,
    /// The lease asked for; capped by what the spare's detection time allows.
    pub lease: Duration,
    /// How long a checkpoint may wait for its acknowledgement after its last byte was handed
    /// over (a spare whose disk hangs must not block `cpt()` forever), and, while it is being
    /// sent, for the driver to hand over its next chunk (a spare that stopped reading must not
    /// either).
    pub ack_timeout: Duration,
    /// How often to retry a lost connection.
    pub reconnect: Duration,
    /// Clock-rate difference assumed between the two machines.
    pub drift_ppm: u32,
    /// Time between asking [`Link::may_serve`] and the reply leaving the process.
    pub serve_margin: Duration,
    /// Our term.
    pub term: u64,
    /// Our lineage.
    pub lineage: Lineage,
    /// Our executable.
    pub exe_id: [u8; 32],
    /// Our pid.
    pub pid: u32,
    /// When the spare is to acknowledge our checkpoints (stated in every hello).
    pub ack: AckLevel,
    /// The arbiter, if one is configured: leases renewed there keep us serving while the
    /// spare cannot answer ([`crate::arbiter`]).
    pub arbiter: Option<PrimaryArbiter>,
}

/// What the driver or the application must learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Open a connection to the spare (TCP, then the handshake), then call
    /// [`Link::handle_connected`] or [`Link::handle_disconnected`].
    Connect,
    /// Close the connection (a deadline was missed or the spare misbehaved); then call
    /// [`Link::handle_disconnected`].
    Close(String),
    /// The spare answered our hello: checkpoints may be sent (the next one must be full).
    Ready {
        /// The spare's durable sequence.
        spare_seq: u64,
    },
    /// A checkpoint is acknowledged by the spare (at the configured [`AckLevel`]), or failed.
    Done {
        /// The checkpoint.
        seq: u64,
        /// `Err(why)` if it was refused, timed out or lost with the connection.
        result: Result<(), String>,
    },
    /// A newer term exists or the spare refuses us: we must stop serving, for good.
    Fenced(String),
    /// No answered heartbeat and no arbiter renewal within their leases: we may not serve
    /// until one of them is renewed.
    LeaseLost,
    /// Something for the log about the arbiter (registered, unreachable, reachable again).
    Arbiter(String),
    /// The spare asked for a switchover: we serve no more from now ([`Link::may_serve`] is
    /// false). The driver marks the first checkpoint captured from now on with
    /// [`Link::mark_final`]; once it is acknowledged we hand over.
    HandOverRequested,
    /// We handed over at checkpoint `seq` (the message is queued): fenced for good. A driver
    /// that exits when fenced does so once the message is out.
    HandedOver {
        /// The final checkpoint.
        seq: u64,
    },
    /// The switchover was given up (the connection was lost, or no final checkpoint came in
    /// time): serving is allowed again, as the leases say.
    HandOverAborted(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Down { retry_at: Time },
    Connecting,
    Hello,
    Up,
}

/// The arbiter's side of the right to serve.
#[derive(Debug)]
struct ArbiterLease {
    cfg: PrimaryArbiter,
    /// The term key's version we registered with, and the lease we may take (`La`, capped by
    /// the record's `W`).
    registered: Option<(Rev, Duration)>,
    /// The requests out, oldest first: (id, send time). A registration goes alone (nothing
    /// else is asked before it is answered); renewals go up to [`RENEWALS_IN_FLIGHT`] at once,
    /// so that one slow answer does not hold back the next renewal, which may be answered in
    /// time. Each is anchored at its own send time.
    in_flight: VecDeque<(u64, Time)>,
    next_id: u64,
    /// No request before this (one renewal per `every` at most).
    next_at: Time,
    /// End of the lease renewed at the arbiter.
    until: Option<Time>,
    /// Requests for the driver.
    out: VecDeque<(u64, Request)>,
    /// The newest request answered (with an answer, not an error): an error of an older one
    /// says nothing of the arbiter now.
    newest_answered: u64,
    /// The outage being reported (once), as the id of the request whose failure began it: only
    /// an answer to a newer one ends it.
    unreachable: Option<u64>,
}

impl ArbiterLease {
    /// How often renewals go while they are needed: at least four per lease, whatever is
    /// configured.
    fn every(&self) -> Duration {
        self.registered.map_or(self.cfg.renew_every, |(_, la)| {
            self.cfg.renew_every.min(la / 4)
        })
    }
}

/// At most this many renewals in flight: a lease's worth of them at the usual pace (one per
/// `La/4`), so that answers up to `La` late cost nothing while the newer ones come back, yet
/// an arbiter that stalls is not flooded. A renewal sent `La` ago or more can extend nothing,
/// so when all the slots are taken the oldest is given up for the next once it is that old;
/// its answer, if it ever comes, is then ignored.
const RENEWALS_IN_FLIGHT: usize = 4;

/// The primary's link to its spare.
#[derive(Debug)]
pub struct Link {
    cfg: LinkConfig,
    conn: Conn,
    fenced: Option<String>,
    lease: Duration,
    lease_until: Option<Time>,
    lease_lost_reported: bool,
    next_heartbeat_id: u64,
    /// Heartbeats sent and not yet answered: (id, send time). Bounded.
    unanswered: VecDeque<(u64, Time)>,
    next_heartbeat_at: Time,
    /// Checkpoints whose last byte went out: (header, deadline for the acknowledgement).
    awaiting_ack: VecDeque<(StreamHeader, Time)>,
    /// The checkpoint being sent, if its end is not out yet, and when it fails unless the
    /// driver hands over more of it before.
    sending: Option<(StreamHeader, Time)>,
    needs_full: bool,
    control: VecDeque<Msg>,
    data: VecDeque<Msg>,
    events: VecDeque<Event>,
    latest_seq: u64,
    acked_seq: u64,
    arbiter: Option<ArbiterLease>,
    /// A switchover in progress: when it began (we serve no more meanwhile).
    retiring: Option<Time>,
    /// The checkpoint whose acknowledgement completes the switchover.
    final_seq: Option<u64>,
    /// Round trips of answered heartbeats, for the driver's metrics; bounded, so a driver
    /// that never asks costs nothing but this.
    rtts: VecDeque<Duration>,
}

/// Heartbeats remembered while unanswered (older ones could only renew an expired lease).
const UNANSWERED_KEPT: usize = 64;
/// Round trips kept for [`Link::poll_heartbeat_rtt`] (the oldest are dropped).
const RTTS_KEPT: usize = 64;

impl Link {
    /// A link that will connect at its first timeout.
    pub fn new(cfg: LinkConfig, now: Time) -> Link {
        let arbiter = cfg.arbiter.clone().map(|a| ArbiterLease {
            cfg: a,
            registered: None,
            in_flight: VecDeque::new(),
            next_id: 1,
            next_at: now,
            until: None,
            out: VecDeque::new(),
            newest_answered: 0,
            unreachable: None,
        });
        Link {
            arbiter,
            retiring: None,
            final_seq: None,
            rtts: VecDeque::new(),
            lease: cfg.lease,
            cfg,
            conn: Conn::Down { retry_at: now },
            fenced: None,
            lease_until: None,
            lease_lost_reported: true,
            next_heartbeat_id: 1,
            unanswered: VecDeque::new(),
            next_heartbeat_at: now,
            awaiting_ack: VecDeque::new(),
            sending: None,
            needs_full: true,
            control: VecDeque::new(),
            data: VecDeque::new(),
            events: VecDeque::new(),
            latest_seq: 0,
            acked_seq: 0,
        }
    }

    /// Whether this primary may serve at `now` (its own clock): not fenced, and a heartbeat
    /// sent less than the lease ago has been answered.
    pub fn may_serve(&self, now: Time) -> bool {
        self.serving_until().is_some_and(|t| now < t)
    }

    /// The end of the current lease: the later of the heartbeat lease and the arbiter's
    /// (`None`: never had one, or fenced).
    pub fn serving_until(&self) -> Option<Time> {
        if self.fenced.is_some() || self.retiring.is_some() {
            return None;
        }
        let arbiter = self.arbiter.as_ref().and_then(|a| a.until);
        match (self.lease_until, arbiter) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a switchover is in progress (we serve no more meanwhile).
    pub fn retiring(&self) -> bool {
        self.retiring.is_some()
    }

    /// Checkpoint `seq` was captured after the switchover began (see
    /// [`Event::HandOverRequested`]): its acknowledgement completes it. Only the first such
    /// checkpoint counts.
    pub fn mark_final(&mut self, seq: u64) {
        if self.retiring.is_some() && self.final_seq.is_none() {
            self.final_seq = Some(seq);
        }
    }

    fn abort_handover(&mut self, why: String) {
        if self.retiring.take().is_some() {
            self.final_seq = None;
            self.events.push_back(Event::HandOverAborted(why));
        }
    }

    /// Whether the arbiter knows us (our term is the one its term key holds).
    pub fn arbiter_registered(&self) -> bool {
        self.arbiter
            .as_ref()
            .is_some_and(|a| a.registered.is_some())
    }

    /// The next request for the arbiter; answer it with [`Link::handle_arbiter`], exactly once.
    pub fn poll_arbiter(&mut self) -> Option<(u64, Request)> {
        self.arbiter.as_mut()?.out.pop_front()
    }

    /// The arbiter answered request `id` (or did not: `Err`). An id not in flight (answered
    /// already, given up, or never sent) is ignored.
    pub fn handle_arbiter(&mut self, now: Time, id: u64, outcome: Outcome) {
        let term = self.cfg.term;
        let (drift, margin) = (self.cfg.drift_ppm, self.cfg.serve_margin);
        let Some(a) = self.arbiter.as_mut() else {
            return;
        };
        let Some(i) = a.in_flight.iter().position(|&(want, _)| want == id) else {
            return;
        };
        let (_, sent) = a.in_flight.remove(i).expect("found");
        if a.registered.is_none() {
            // The registration (alone in flight): the next try not before `every` after it.
            a.next_at = (sent + a.every()).max(now);
        }
        match &outcome {
            Ok(_) => {
                a.newest_answered = a.newest_answered.max(id);
                if a.unreachable.is_some_and(|first| id > first) {
                    a.unreachable = None;
                    self.events
                        .push_back(Event::Arbiter("the arbiter answers again".into()));
                }
            }
            // Reported once per outage, and not at all if a newer request was answered: the
            // arbiter was reachable after this one was sent.
            Err(e) => {
                if a.unreachable.is_none() && id > a.newest_answered {
                    a.unreachable = Some(id);
                    self.events.push_back(Event::Arbiter(format!(
                        "{e}; serving only on the spare's leases until it answers"
                    )));
                }
            }
        }
        let a = self.arbiter.as_mut().expect("checked");
        let node = a.cfg.node.clone();
        match outcome {
            Ok(Answer::Registered { term_rev, record })
                if record.term == term && record.holder == a.cfg.node =>
            {
                let la = arbiter::arbiter_lease(a.cfg.lease, record.wait(), drift, margin);
                a.registered = Some((term_rev, la));
                a.next_at = now;
                self.events.push_back(Event::Arbiter(format!(
                    "registered at the arbiter with term {term} (held by {}); arbiter lease {} ms, spare's wait {} ms",
                    record.holder,
                    la.as_millis(),
                    record.wait().as_millis()
                )));
            }
            Ok(Answer::Registered { record, .. }) => self.fence(format!(
                "the arbiter holds term {} held by {}, not ours (term {term}, {}): this service was taken over, another process serves it, or the key belongs to another history; start this host as a spare, or delete the key to start the service afresh",
                record.term, record.holder, node
            )),
            Ok(Answer::Renewed) => {
                if let Some((_, la)) = a.registered {
                    let until = sent + la;
                    if a.until.is_none_or(|t| until > t) {
                        a.until = Some(until);
                    }
                    if now < until {
                        self.lease_lost_reported = false;
                    }
                }
            }
            Ok(Answer::NotRenewed { record }) => self.fence(match record {
                Some(r) => format!(
                    "the arbiter's term key changed: term {} held by {} (ours {term})",
                    r.term, r.holder
                ),
                None => "the arbiter's term key was deleted".into(),
            }),
            Ok(other) => self.events.push_back(Event::Arbiter(format!(
                "unexpected answer from the arbiter: {other:?}"
            ))),
            // Reported above; the renewals still in flight may yet renew the lease.
            Err(_) => {}
        }
    }

    /// The heartbeat lease left after which the arbiter is asked to renew: while the spare
    /// answers every heartbeat it stays above `L − 2H`, so a healthy pair never writes to it.
    fn renew_below(&self) -> Duration {
        self.lease.saturating_sub(self.cfg.heartbeat * 2)
    }

    /// When the arbiter must next be asked something (`None`: nothing to ask).
    fn arbiter_due(&self) -> Option<Time> {
        let a = self.arbiter.as_ref()?;
        // A primary handing over serves no more: a renewal would only make the spare's claim
        // fail.
        if self.fenced.is_some() || self.retiring.is_some() {
            return None;
        }
        let Some((_, la)) = a.registered else {
            return a.in_flight.is_empty().then_some(a.next_at);
        };
        let needed = self.lease_until.map_or(a.next_at, |t| {
            t - self.renew_below() + Duration::from_nanos(1)
        });
        let due = needed.max(a.next_at);
        match a.in_flight.front() {
            // All slots taken: the next once the oldest can extend nothing.
            Some(&(_, oldest)) if a.in_flight.len() >= RENEWALS_IN_FLIGHT => {
                Some(due.max(oldest + la))
            }
            _ => Some(due),
        }
    }

    fn arbiter_timeout(&mut self, now: Time) {
        if self.arbiter_due().is_none_or(|t| now < t) {
            return;
        }
        let term = self.cfg.term;
        let a = self.arbiter.as_mut().expect("due");
        if let Some((_, la)) = a.registered {
            while a.in_flight.len() >= RENEWALS_IN_FLIGHT {
                let (id, sent) = a.in_flight.pop_front().expect("full");
                debug_assert!(now >= sent + la, "gave up a renewal that could still renew");
                // Unanswered for the whole lease: as good as failed.
                if a.unreachable.is_none() && id > a.newest_answered {
                    a.unreachable = Some(id);
                    self.events.push_back(Event::Arbiter(format!(
                        "the arbiter did not answer a renewal within the arbiter lease ({} ms); serving only on the spare's leases until it answers",
                        la.as_millis()
                    )));
                }
            }
        }
        let id = a.next_id;
        a.next_id += 1;
        a.in_flight.push_back((id, now));
        a.next_at = now + a.every();
        let req = match a.registered {
            None => Request::Register {
                record: arbiter::TermRecord {
                    term,
                    holder: a.cfg.node.clone(),
                    wait_us: a.cfg.wait.as_micros() as u64,
                },
                adopt: a.cfg.adopt.clone(),
            },
            Some((term_rev, _)) => Request::Renew { term_rev },
        };
        a.out.push_back((id, req));
    }

    /// Why we are fenced, if we are.
    pub fn fenced(&self) -> Option<&str> {
        self.fenced.as_deref()
    }

    /// Whether the connection is up and checkpoints may be sent.
    pub fn is_up(&self) -> bool {
        self.conn == Conn::Up
    }

    /// The lease in use (the configured one, capped by the spare's detection time).
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The round trip of a heartbeat the spare answered (send to answer, on our clock), oldest
    /// first: what the lease's margin is spent on, for the driver to record; the link does no
    /// IO and keeps only the last few.
    pub fn poll_heartbeat_rtt(&mut self) -> Option<Duration> {
        self.rtts.pop_front()
    }

    /// Latest checkpoint handed to the link, and latest acknowledged.
    pub fn seqs(&self) -> (u64, u64) {
        (self.latest_seq, self.acked_seq)
    }

    /// Whether the next checkpoint must be full (a new connection: the spare may hold
    /// anything), and clears it.
    pub fn take_needs_full(&mut self) -> bool {
        std::mem::take(&mut self.needs_full)
    }

    /// The transport is connected and authenticated.
    pub fn handle_connected(&mut self, _now: Time) {
        if self.conn != Conn::Connecting {
            return;
        }
        self.conn = Conn::Hello;
        self.control.push_back(Msg::Hello {
            exe_id: self.cfg.exe_id,
            pid: self.cfg.pid,
            lineage: self.cfg.lineage,
            ack: self.cfg.ack,
        });
    }

    /// The connection failed or closed (or could not be made).
    pub fn handle_disconnected(&mut self, now: Time, why: &str) {
        if matches!(self.conn, Conn::Down { .. }) {
            return;
        }
        // The first retry is at once (a live primary must not stay silent for long enough to
        // be taken over); later ones back off.
        let retry_at = if self.conn == Conn::Up {
            now
        } else {
            now + self.cfg.reconnect
        };
        self.conn = Conn::Down { retry_at };
        if self.fenced.is_none() {
            self.abort_handover(format!("the connection to the spare was lost ({why})"));
        }
        self.control.clear();
        self.data.clear();
        self.unanswered.clear();
        self.needs_full = true;
        let lost = format!("connection to the spare lost before acknowledgement ({why})");
        if let Some((h, _)) = self.sending.take() {
            self.events.push_back(Event::Done {
                seq: h.seq,
                result: Err(lost.clone()),
            });
        }
        for (h, _) in self.awaiting_ack.drain(..) {
            self.events.push_back(Event::Done {
                seq: h.seq,
                result: Err(lost.clone()),
            });
        }
    }

    fn fence(&mut self, why: String) {
        if self.fenced.is_none() {
            self.fenced = Some(why.clone());
            self.lease_until = None;
            self.events.push_back(Event::Fenced(why.clone()));
            self.events.push_back(Event::Close(why));
        }
    }

    fn close(&mut self, why: String) {
        self.events.push_back(Event::Close(why));
    }

    /// A message from the spare, stamped with the spare's term.
    pub fn handle_msg(&mut self, now: Time, term: u64, msg: Msg) {
        if term > self.cfg.term {
            self.fence(format!(
                "the spare has term {term}, newer than ours ({})",
                self.cfg.term
            ));
            return;
        }
        match msg {
            Msg::Status {
                seq, detection_us, ..
            } if self.conn == Conn::Hello => {
                let detection = Duration::from_micros(detection_us);
                self.lease = lease::safe_lease(
                    self.cfg.lease,
                    detection,
                    self.cfg.drift_ppm,
                    self.cfg.serve_margin,
                );
                self.conn = Conn::Up;
                self.needs_full = true;
                self.next_heartbeat_at = now;
                self.events.push_back(Event::Ready { spare_seq: seq });
            }
            Msg::Fenced { term } => self.fence(format!(
                "the spare says term {term} exists (ours {})",
                self.cfg.term
            )),
            Msg::Refused { reason } => self.fence(format!("the spare refuses us: {reason}")),
            Msg::HandOver if self.conn == Conn::Up => {
                if self.retiring.is_none() && self.fenced.is_none() {
                    self.retiring = Some(now);
                    self.events.push_back(Event::HandOverRequested);
                }
            }
            Msg::HeartbeatAck { id, .. } if self.conn == Conn::Up => {
                // Anchored to when the answered heartbeat was sent.
                if let Some(&(_, sent)) = self.unanswered.iter().find(|(i, _)| *i == id) {
                    if self.rtts.len() == RTTS_KEPT {
                        self.rtts.pop_front();
                    }
                    self.rtts.push_back(now.since(sent));
                    let until = sent + self.lease;
                    if self.lease_until.is_none_or(|t| until > t) {
                        self.lease_until = Some(until);
                    }
                    if self.may_serve(now) {
                        self.lease_lost_reported = false;
                    }
                }
                self.unanswered.retain(|(i, _)| *i > id);
            }
            Msg::Ack { seq } if self.conn == Conn::Up => {
                if let Some(i) = self.awaiting_ack.iter().position(|(h, _)| h.seq == seq) {
                    let older: Vec<StreamHeader> =
                        self.awaiting_ack.drain(..i).map(|(h, _)| h).collect();
                    let (acked, _) = self.awaiting_ack.pop_front().expect("found above");
                    self.acked_seq = self.acked_seq.max(seq);
                    // Reported first: a ticket it covers never reads as failed meanwhile.
                    self.events.push_back(Event::Done {
                        seq,
                        result: Ok(()),
                    });
                    // Acknowledgements come in order, so the older ones were not acknowledged
                    // on their own. But the spare validated an incremental checkpoint on top of
                    // its base, so it holds the base (and the base's base, …): those are
                    // acknowledged with it. Only the others were lost.
                    let mut base = acked.base_seq;
                    let mut covered = vec![false; older.len()];
                    for (h, c) in older.iter().zip(covered.iter_mut()).rev() {
                        if base != 0 && h.seq == base {
                            *c = true;
                            base = h.base_seq;
                        }
                    }
                    for (h, c) in older.iter().zip(covered) {
                        self.events.push_back(Event::Done {
                            seq: h.seq,
                            result: if c {
                                Ok(())
                            } else {
                                Err(format!(
                                    "the spare skipped it (it acknowledged checkpoint {seq}, which does not build on it)"
                                ))
                            },
                        });
                    }
                    if self.final_seq == Some(seq) && self.fenced.is_none() {
                        // Everything we acknowledged is in `seq`, and we serve no more: the
                        // spare may take over at once. Fenced for good (no reconnect).
                        self.control.push_back(Msg::HandedOver { seq });
                        self.fenced = Some(format!("handed over to the spare at checkpoint {seq}"));
                        self.lease_until = None;
                        self.events.push_back(Event::HandedOver { seq });
                    }
                }
            }
            Msg::Nack { seq, reason } if self.conn == Conn::Up => {
                if let Some(i) = self.awaiting_ack.iter().position(|(h, _)| h.seq == seq) {
                    self.awaiting_ack.remove(i);
                    self.needs_full = true;
                    self.events.push_back(Event::Done {
                        seq,
                        result: Err(format!("the spare refused checkpoint {seq}: {reason}")),
                    });
                }
            }
            other => self.close(format!("unexpected message from the spare: {other:?}")),
        }
    }

    /// Starts sending checkpoint `seq` (its chunks follow through [`Link::send_chunk`]).
    pub fn start_checkpoint(&mut self, now: Time, header: StreamHeader) -> Result<(), String> {
        self.begin_checkpoint(now, header)?;
        self.sending = Some((header, now + self.cfg.ack_timeout));
        self.data.push_back(Msg::StreamStart(header));
        Ok(())
    }

    /// Sends checkpoint `seq` whole, in one message ([`Msg::Stream`]): for a stream that fits
    /// one chunk, what [`Link::start_checkpoint`], one [`Link::send_chunk`] and
    /// [`Link::end_checkpoint`] do, in one envelope instead of three. Its acknowledgement is
    /// due within the ack timeout from now.
    pub fn send_checkpoint(
        &mut self,
        now: Time,
        header: StreamHeader,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        self.begin_checkpoint(now, header)?;
        self.data.push_back(Msg::Stream { header, bytes });
        self.awaiting_ack
            .push_back((header, now + self.cfg.ack_timeout));
        Ok(())
    }

    /// What every checkpoint's start checks and does: refused when fenced or not connected; a
    /// stream still being sent is abandoned (its end never went out).
    fn begin_checkpoint(&mut self, _now: Time, header: StreamHeader) -> Result<(), String> {
        if let Some(why) = &self.fenced {
            return Err(format!("fenced: {why}"));
        }
        if self.conn != Conn::Up {
            return Err("no connection to the spare".into());
        }
        if let Some((prev, _)) = self.sending.take() {
            self.events.push_back(Event::Done {
                seq: prev.seq,
                result: Err("abandoned: a newer checkpoint started".into()),
            });
        }
        self.latest_seq = header.seq;
        Ok(())
    }

    /// The next bytes of the checkpoint being sent. The driver should only add a chunk when
    /// [`Link::data_queued`] is 0 and the transport took (almost) all it was given, so that
    /// heartbeats never wait behind more than one. A checkpoint whose next chunk does not come
    /// within the ack timeout (of its start or of the previous chunk) fails, and the
    /// connection is closed: the spare stopped reading.
    pub fn send_chunk(&mut self, now: Time, seq: u64, bytes: Vec<u8>) {
        if self.conn != Conn::Up {
            return;
        }
        if let Some((h, deadline)) = self.sending.as_mut() {
            if h.seq == seq {
                *deadline = now + self.cfg.ack_timeout;
                self.data.push_back(Msg::Chunk { seq, bytes });
            }
        }
    }

    /// Chunks queued and not yet taken by the driver.
    pub fn data_queued(&self) -> usize {
        self.data.len()
    }

    /// All bytes of `seq` are out: its acknowledgement is due within the ack timeout.
    pub fn end_checkpoint(&mut self, now: Time, seq: u64) {
        let Some((h, _)) = self
            .sending
            .filter(|(h, _)| h.seq == seq && self.conn == Conn::Up)
        else {
            return;
        };
        self.sending = None;
        self.data.push_back(Msg::EndStream { seq });
        self.awaiting_ack.push_back((h, now + self.cfg.ack_timeout));
    }

    /// Timers: reconnect, heartbeats, acknowledgement deadlines, the lease.
    pub fn handle_timeout(&mut self, now: Time) {
        if let Conn::Down { retry_at } = self.conn {
            if now >= retry_at && self.fenced.is_none() {
                self.conn = Conn::Connecting;
                self.events.push_back(Event::Connect);
            }
        }
        if self.conn == Conn::Up && now >= self.next_heartbeat_at {
            let id = self.next_heartbeat_id;
            self.next_heartbeat_id += 1;
            self.control.push_back(Msg::Heartbeat {
                id,
                seq: self.latest_seq,
            });
            self.unanswered.push_back((id, now));
            if self.unanswered.len() > UNANSWERED_KEPT {
                self.unanswered.pop_front();
            }
            self.next_heartbeat_at = now + self.cfg.heartbeat;
        }
        // A stream the driver could hand over no more of for the ack timeout: the spare stopped
        // reading (the driver's TCP user timeout would end it too, but only much later).
        // Heartbeats wait behind the stream, so the connection is no use any more: fail the
        // checkpoint and close it (the reconnect sends a full one).
        if let Some((h, deadline)) = self.sending {
            if self.conn == Conn::Up && now >= deadline {
                self.sending = None;
                self.needs_full = true;
                let why = format!(
                    "checkpoint {} could not be sent: the spare took no more of it for {} ms (it stopped reading)",
                    h.seq,
                    self.cfg.ack_timeout.as_millis()
                );
                self.events.push_back(Event::Done {
                    seq: h.seq,
                    result: Err(why.clone()),
                });
                self.close(why);
            }
        }
        // An overdue acknowledgement fails its checkpoint (and the ones after it), but keeps
        // the connection: the spare still answers heartbeats, and dropping it would leave a
        // live primary silent. The next checkpoint is full, so a late Ack changes nothing.
        while let Some(&(h, deadline)) = self.awaiting_ack.front() {
            if now < deadline {
                break;
            }
            self.awaiting_ack.pop_front();
            self.needs_full = true;
            self.events.push_back(Event::Done {
                seq: h.seq,
                result: Err(format!(
                    "not acknowledged within {} ms: the spare is stuck (its disk?)",
                    self.cfg.ack_timeout.as_millis()
                )),
            });
        }
        self.arbiter_timeout(now);
        if let Some(t) = self.retiring {
            if now >= t + self.cfg.ack_timeout && self.fenced.is_none() {
                self.abort_handover(format!(
                    "no checkpoint taken after stopping was acknowledged within {} ms",
                    self.cfg.ack_timeout.as_millis()
                ));
            }
        }
        if let Some(until) = self.serving_until() {
            if now >= until && !self.lease_lost_reported {
                self.lease_lost_reported = true;
                self.events.push_back(Event::LeaseLost);
            }
        }
    }

    /// The next message to send: control messages (hello, heartbeats) before stream data.
    pub fn poll_transmit(&mut self) -> Option<Msg> {
        self.control.pop_front().or_else(|| self.data.pop_front())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Link::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut at = |x: Time| t = Some(t.map_or(x, |y| y.min(x)));
        match self.conn {
            Conn::Down { retry_at } if self.fenced.is_none() => at(retry_at),
            Conn::Up => at(self.next_heartbeat_at),
            _ => {}
        }
        if let Some(&(_, d)) = self.awaiting_ack.front() {
            at(d);
        }
        if let Some((_, d)) = self.sending.filter(|_| self.conn == Conn::Up) {
            at(d);
        }
        if let Some(u) = self.serving_until() {
            if !self.lease_lost_reported {
                at(u);
            }
        }
        if let Some(d) = self.arbiter_due() {
            at(d);
        }
        if let Some(r) = self.retiring.filter(|_| self.fenced.is_none()) {
            at(r + self.cfg.ack_timeout);
        }
        t
    }

    /// Our term.
    pub fn term(&self) -> u64 {
        self.cfg.term
    }

    /// The durability level our hello asks for.
    pub fn ack_level(&self) -> AckLevel {
        self.cfg.ack
    }
}
