//! The simulated arbiter: one linearizable store (what a healthy etcd cluster is to its
//! clients) reached over paths of its own, which faults cut, one way or both, or slow past the
//! clients' deadlines — so a request can time out at the client and still be applied later,
//! which is the case a real etcd client cannot rule out either — or make laggy: each request
//! delayed on its own, mostly within the deadline, so the primary's renewals overlap and are
//! applied and answered out of order (a starved etcd, a slow member).
//!
//! Its draws come from their own generator, so a seed without an arbiter replays exactly as
//! it did before the arbiter existed.

use super::*;
use crate::arbiter::{Answer, ArbiterError, Request, Rev, TermRecord};

/// The store's state: etcd's revision counter and the two keys, as the driver's transactions
/// use them (`hotspare::replica::arbiter`). Public for tests that drive the cores by hand.
#[derive(Debug, Default)]
pub struct Store {
    rev: Rev,
    /// The term key: its version and record (`None`: absent).
    pub term: Option<(Rev, TermRecord)>,
    alive_rev: Rev,
}

impl Store {
    /// An operator's `etcdctl del` of the term key.
    pub fn delete_term(&mut self) {
        self.rev += 1;
        self.term = None;
    }

    /// Applies one request at its linearization point.
    pub fn apply(&mut self, req: &Request) -> Answer {
        match req.clone() {
            Request::Register { record, adopt } => {
                match &self.term {
                    None => {
                        self.rev += 1;
                        self.term = Some((self.rev, record));
                    }
                    Some((_, held))
                        if adopt.as_ref() == Some(&held.holder) && held.term == record.term =>
                    {
                        let wait_us = held.wait_us;
                        self.rev += 1;
                        self.term = Some((self.rev, TermRecord { wait_us, ..record }));
                    }
                    Some(_) => {}
                }
                let (term_rev, record) = self.term.clone().expect("set");
                Answer::Registered { term_rev, record }
            }
            Request::Renew { term_rev } => {
                if self.term.as_ref().is_some_and(|(r, _)| *r == term_rev) {
                    self.rev += 1;
                    self.alive_rev = self.rev;
                    Answer::Renewed
                } else {
                    Answer::NotRenewed {
                        record: self.term.clone().map(|(_, r)| r),
                    }
                }
            }
            Request::Observe => Answer::Observed {
                term: self.term.clone(),
                alive_rev: self.alive_rev,
            },
            Request::Claim {
                term_rev,
                alive_rev,
                record,
            } => {
                let now_rev = self.term.as_ref().map_or(0, |(r, _)| *r);
                if now_rev == term_rev && self.alive_rev == alive_rev {
                    self.rev += 1;
                    self.term = Some((self.rev, record));
                    Answer::Claimed
                } else {
                    Answer::NotClaimed
                }
            }
        }
    }
}

/// What the arbiter half of a scenario is.
pub(super) struct ArbiterWorld {
    pub(super) rng: fastrand::Rng,
    pub(super) store: Store,
    /// Paths cut: [to the arbiter, from the arbiter] for [primary, spare].
    pub(super) cut: [[bool; 2]; 2],
    pub(super) cut_epoch: u64,
    /// Requests are slowed past the clients' deadline.
    pub(super) slow: bool,
    /// Each request is delayed by its own draw, mostly within the clients' deadline.
    pub(super) laggy: bool,
    /// The primary's requests sent and not yet answered (by the arbiter or the deadline):
    /// (incarnation, id).
    pub(super) p_outstanding: BTreeSet<(u64, u64)>,
    /// The newest of the primary's requests answered by the arbiter: (incarnation, id).
    pub(super) p_newest_answer: (u64, u64),
    /// The client's deadline.
    pub(super) timeout: u64,
    /// Requests answered to the node (by the arbiter or by the deadline): (side, inc, id).
    pub(super) answered: HashSet<(usize, u64, u64)>,
    /// How the liveness phase ends.
    pub(super) ending: Ending,
}

/// The liveness phase of an arbiter scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The primary is killed: the spare must take over in time.
    KillPrimary,
    /// The spare is killed: the primary must go on serving on the arbiter's leases.
    KillSpare,
    /// The pair is cut from each other for good, both still reach the arbiter: the spare must
    /// not take over and the primary must go on serving.
    CutPair,
}

impl World {
    pub(super) fn side_index(side: Side) -> usize {
        Self::dir(side)
    }

    /// One leg's delay (to the store, or back).
    fn arbiter_delay(&mut self) -> u64 {
        let a = self.arb.as_mut().expect("arbiter");
        if a.slow && a.rng.u32(0..3) == 0 {
            a.rng.u64(a.timeout..a.timeout * 3)
        } else if a.laggy && a.rng.bool() {
            // Two legs of up to 0.6 of the deadline: most are answered, a few time out.
            a.rng.u64(200_000..a.timeout * 3 / 5)
        } else {
            a.rng.u64(200_000..3 * MS)
        }
    }

    /// A node sends a request: it reaches the store (unless its path is cut) after a delay,
    /// and the client gives up on it at its deadline.
    pub(super) fn arbiter_send(&mut self, side: Side, inc: u64, id: u64, req: Request) {
        let Some(timeout) = self.arb.as_ref().map(|a| a.timeout) else {
            return;
        };
        self.trace(format!("{side:?} asks the arbiter #{id}: {req:?}"));
        if side == Side::P {
            let a = self.arb.as_mut().expect("arbiter");
            if matches!(req, Request::Renew { .. })
                && a.p_outstanding
                    .range((inc, 0)..(inc + 1, 0))
                    .next()
                    .is_some()
            {
                self.report.renewals_overlapping += 1;
            }
            a.p_outstanding.insert((inc, id));
        }
        self.after(timeout, Ev::ArbiterTimeout { side, inc, id });
        let i = Self::side_index(side);
        if self.arb.as_ref().is_some_and(|a| a.cut[i][0]) {
            return; // lost on the way
        }
        let d = self.arbiter_delay();
        self.after(d, Ev::ArbiterApply { side, inc, id, req });
    }

    /// A request reaches the store: applied now, answered after a delay (unless that path is
    /// cut by then).
    pub(super) fn arbiter_apply(&mut self, side: Side, inc: u64, id: u64, req: Request) {
        let a = self.arb.as_mut().expect("arbiter");
        let answer = a.store.apply(&req);
        self.trace(format!("arbiter applies {side:?} #{id}: {answer:?}"));
        if self
            .arb
            .as_ref()
            .is_some_and(|a| a.cut[Self::side_index(side)][1])
        {
            return;
        }
        let d = self.arbiter_delay();
        self.after(
            d,
            Ev::ArbiterAnswer {
                side,
                inc,
                id,
                outcome: Ok(answer),
            },
        );
    }

    /// An answer (or the deadline) reaches a running node: the first of the two counts.
    pub(super) fn arbiter_outcome(
        &mut self,
        side: Side,
        inc: u64,
        id: u64,
        outcome: crate::arbiter::Outcome,
    ) {
        let Some(a) = self.arb.as_mut() else { return };
        if !a.answered.insert((Self::side_index(side), inc, id)) {
            return;
        }
        if side == Side::P {
            a.p_outstanding.remove(&(inc, id));
            if outcome.is_ok() {
                if inc == a.p_newest_answer.0 && id < a.p_newest_answer.1 {
                    self.report.answers_reordered += 1;
                } else {
                    a.p_newest_answer = (inc, id);
                }
            }
        }
        let now = self.now;
        match side {
            Side::P => {
                if let Some(p) = self.p.as_mut().filter(|p| p.inc == inc) {
                    let l = p.clock.local(now);
                    p.link.handle_arbiter(l, id, outcome);
                }
                self.p_pump();
            }
            Side::S => {
                if let Some(s) = self.s.as_mut().filter(|s| s.inc == inc) {
                    let l = s.clock.local(now);
                    s.core.handle_arbiter(l, id, outcome);
                }
                self.s_pump();
            }
        }
    }

    pub(super) fn arbiter_timeout_outcome(&self) -> crate::arbiter::Outcome {
        let ms = self.arb.as_ref().map_or(0, |a| a.timeout / MS);
        Err(ArbiterError::Timeout(ms))
    }

    /// One more fault on the arbiter's paths, drawn apart from the pair's faults.
    pub(super) fn arbiter_fault(&mut self) {
        let Some(a) = self.arb.as_mut() else { return };
        let r = a.rng.u32(0..100);
        let len = a.rng.u64(5 * MS..1500 * MS);
        match r {
            0..=9 => {
                let who = a.rng.usize(0..3);
                let dirs = match a.rng.u32(0..3) {
                    0 => [true, false],
                    1 => [false, true],
                    _ => [true, true],
                };
                for i in 0..2 {
                    if who == i || who == 2 {
                        a.cut[i] = dirs;
                    }
                }
                a.cut_epoch += 1;
                let epoch = a.cut_epoch;
                let cut = a.cut;
                self.trace(format!("arbiter paths cut {cut:?} for {} ms", len / MS));
                self.after(len, Ev::ArbiterHeal { epoch });
            }
            10..=15 => {
                a.slow = true;
                a.cut_epoch += 1;
                let epoch = a.cut_epoch;
                self.trace(format!("arbiter slow for {} ms", len / MS));
                self.after(len, Ev::ArbiterHeal { epoch });
            }
            16..=25 => {
                a.laggy = true;
                a.cut_epoch += 1;
                let epoch = a.cut_epoch;
                self.trace(format!("arbiter laggy for {} ms", len / MS));
                self.after(len, Ev::ArbiterHeal { epoch });
            }
            _ => {}
        }
    }

    pub(super) fn arbiter_heal(&mut self, epoch: Option<u64>) {
        let Some(a) = self.arb.as_mut() else { return };
        if epoch.is_some_and(|e| e != a.cut_epoch) {
            return;
        }
        a.cut = [[false; 2]; 2];
        a.slow = false;
        a.laggy = false;
        self.trace("arbiter paths healed".into());
    }

    /// At a takeover with an arbiter: the spare must hold the term it takes over with there.
    pub(super) fn arbiter_takeover_check(&mut self, term: u64) {
        let Some(a) = self.arb.as_ref() else { return };
        let ending = a.ending;
        let held = a.store.term.clone();
        match held {
            Some((_, rec))
                if rec.term == term
                    && rec.holder == crate::arbiter::claim_holder(SPARE_NODE, term) => {}
            other => self.violation(format!(
                "took over with term {term} that the arbiter did not give it (it holds {other:?})"
            )),
        }
        let live_registered = self
            .p
            .as_ref()
            .is_some_and(|p| !p.exited && p.link.arbiter_registered() && p.link.fenced().is_none());
        if ending == Ending::CutPair
            && self.quiet_from.is_some_and(|q| self.now >= q)
            && live_registered
        {
            self.violation(
                "took over from a primary cut off from its spare only (it still reached the arbiter)"
                    .into(),
            );
        }
    }

    /// In the liveness phase of [`Ending::KillSpare`] and [`Ending::CutPair`]: the primary,
    /// alive and holding the arbiter's term, must be allowed to serve.
    pub(super) fn serve_probe(&mut self) {
        let now = self.now;
        let Some(a) = self.arb.as_ref() else { return };
        let etcd_term = a.store.term.as_ref().map(|(_, r)| r.term);
        if let Some(p) = self.p.as_ref() {
            let holds = etcd_term == Some(p.link.term());
            if holds && p.paused_until.is_none() && !p.link.may_serve(p.clock.local(now)) {
                let why = match a.ending {
                    Ending::KillSpare => "its spare is dead",
                    _ => "it is cut off from its spare",
                };
                self.violation(format!(
                    "the primary stopped serving although the arbiter is reachable ({why})"
                ));
            }
        }
        self.after(7 * MS, Ev::ServeProbe);
    }
}

/// The spare's node name at the simulated arbiter.
pub(super) const SPARE_NODE: &str = "spare";
