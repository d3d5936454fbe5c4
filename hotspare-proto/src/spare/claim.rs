//! Taking over through the arbiter: observe both keys, wait `W`, claim the next term with a
//! compare-and-swap; grant nothing meanwhile. The argument is in [`crate::arbiter`].
//!
//! ```text
//!  decided ──▶ Observing ──Observed──▶ Waiting (W) ──▶ Claiming ──Claimed──▶ save term, take over
//!                 │                                       │ NotClaimed: the primary renewed
//!                 │ unreachable / a newer term             │ no answer
//!                 ▼                                       ▼
//!            back to spare ◀──── not ours ──── Resolving (read the term key again)
//! ```

use super::*;
use crate::arbiter::{self, Answer, Outcome, Request, Rev, TermRecord};

/// Where a takeover through the arbiter stands.
#[derive(Debug)]
pub(super) enum Claim {
    /// Reading both keys.
    Observing { id: u64 },
    /// Waiting `W` after the observation: a primary alive at the arbiter renews within it.
    Waiting {
        until: Time,
        term_rev: Rev,
        alive_rev: Rev,
        record: TermRecord,
    },
    /// The compare-and-swap is out.
    Claiming { id: u64, record: TermRecord },
    /// The claim was not answered: it may have been applied. Read the term key until we know.
    Resolving {
        id: Option<u64>,
        record: TermRecord,
        retry_at: Time,
    },
}

impl Spare {
    /// Whether a takeover through the arbiter is being attempted (nothing is granted then).
    pub fn claiming(&self) -> bool {
        self.claim.is_some()
    }

    fn ask(&mut self, req: Request) -> u64 {
        self.arbiter_id += 1;
        let id = self.arbiter_id;
        self.out.push_back(Output::Arbiter(id, req));
        id
    }

    /// Starts a claim (the takeover conditions hold, and an arbiter is configured).
    pub(super) fn start_claim(&mut self, now: Time) {
        let silent = self.last_grant.map_or(Duration::ZERO, |g| now.since(g));
        self.log(format!(
            "primary silent for {} ms: asking the arbiter before taking over",
            silent.as_millis()
        ));
        if let Some(p) = self.primary.take() {
            self.out
                .push_back(Output::Close(p.conn, "declared dead: taking over".into()));
        }
        let id = self.ask(Request::Observe);
        self.claim = Some(Claim::Observing { id });
        self.claim_started = Some(now);
    }

    /// Gives up this attempt: back to being a spare, the next one no sooner than `hold` from
    /// now.
    fn abandon_claim(&mut self, now: Time, hold: Duration, why: String) {
        self.claim = None;
        self.claim_hold_until = now + hold.max(self.cfg.detection);
        if self.claim_note.as_deref() != Some(why.as_str()) {
            self.log(format!("not taking over: {why}"));
            self.claim_note = Some(why);
        }
    }

    fn won(&mut self, now: Time, term: u64) {
        self.claim = None;
        self.claim_note = None;
        let took = self.claim_started.map_or(Duration::ZERO, |t| now.since(t));
        self.log(format!(
            "the arbiter gave us term {term} ({} ms after asking it): taking over",
            took.as_millis()
        ));
        self.term = self.term.max(term);
        self.taking_over = Some(term);
        self.disk(DiskOp::SaveTerm(term));
    }

    /// A term record we wrote, or one this node claimed in an earlier attempt or incarnation
    /// (a claim applied after we stopped waiting for it; a crash between the claim and saving
    /// its term). A primary's record never matches: it names a pid.
    fn claimed_by_us(&self, rec: &TermRecord) -> bool {
        self.cfg
            .arbiter
            .as_deref()
            .is_some_and(|node| rec.holder == arbiter::claim_holder(node, rec.term))
            && rec.term > self.saved_term
    }

    /// The arbiter answered request `id` (or did not: `Err`).
    pub fn handle_arbiter(&mut self, now: Time, id: u64, outcome: Outcome) {
        if self.taken_over || self.taking_over.is_some() {
            return;
        }
        let pending = match &self.claim {
            Some(Claim::Observing { id: x })
            | Some(Claim::Claiming { id: x, .. })
            | Some(Claim::Resolving { id: Some(x), .. }) => *x,
            _ => return,
        };
        if pending != id {
            return;
        }
        let Some(node) = self.cfg.arbiter.clone() else {
            return;
        };
        match (self.claim.take().expect("checked"), outcome) {
            (Claim::Observing { .. }, Ok(Answer::Observed { term, alive_rev })) => match term {
                Some((_, rec)) if self.claimed_by_us(&rec) => self.won(now, rec.term),
                Some((_, rec)) if rec.term > self.term => {
                    let why = format!(
                        "the arbiter holds term {}, held by {} (ours {}): a newer primary exists",
                        rec.term, rec.holder, self.term
                    );
                    self.term = rec.term;
                    self.disk(DiskOp::SaveTerm(rec.term));
                    self.abandon_claim(now, self.cfg.startup_grace, why);
                }
                Some((term_rev, rec)) => {
                    let Some(term) = self.term.max(rec.term).checked_add(1) else {
                        return self.terms_exhausted();
                    };
                    let record = TermRecord {
                        term,
                        holder: arbiter::claim_holder(&node, term),
                        wait_us: rec.wait_us,
                    };
                    // After a hand-over the primary renews nothing and serves no more: no W.
                    let wait = if self.handed_over.is_some() {
                        Duration::ZERO
                    } else {
                        rec.wait()
                    };
                    self.claim = Some(Claim::Waiting {
                        until: now + wait,
                        term_rev,
                        alive_rev,
                        record,
                    });
                }
                None => {
                    // No record: no primary registered, or the key was deleted under one that
                    // did — whose lease was capped by a W we cannot know. Wait the longest W
                    // any record may ask for.
                    let Some(term) = self.term.checked_add(1) else {
                        return self.terms_exhausted();
                    };
                    let record = TermRecord {
                        term,
                        holder: arbiter::claim_holder(&node, term),
                        wait_us: arbiter::DEFAULT_WAIT.as_micros() as u64,
                    };
                    self.claim = Some(Claim::Waiting {
                        until: now + arbiter::MAX_WAIT,
                        term_rev: 0,
                        alive_rev,
                        record,
                    });
                }
            },
            (Claim::Claiming { record, .. }, Ok(Answer::Claimed)) => self.won(now, record.term),
            // The primary is alive: give it the start-up grace to reconnect (connections are
            // closed while a claim runs) before the next attempt.
            (Claim::Claiming { .. }, Ok(Answer::NotClaimed)) => self.abandon_claim(
                now,
                self.cfg.startup_grace,
                "the primary renewed its lease at the arbiter: it is alive, cut off from this spare only".into(),
            ),
            (Claim::Claiming { record, .. }, Err(e)) => {
                self.log(format!(
                    "no answer to the claim of term {} ({e}): finding out whether it was applied",
                    record.term
                ));
                let id = self.ask(Request::Observe);
                self.claim = Some(Claim::Resolving {
                    id: Some(id),
                    record,
                    retry_at: now,
                });
            }
            (Claim::Resolving { record, .. }, Ok(Answer::Observed { term, .. })) => match term {
                Some((_, rec)) if rec == record || self.claimed_by_us(&rec) => self.won(now, rec.term),
                _ => self.abandon_claim(now, Duration::ZERO, "the claim was not applied".into()),
            },
            (Claim::Resolving { record, .. }, Err(_)) => {
                self.claim = Some(Claim::Resolving {
                    id: None,
                    record,
                    retry_at: now + self.cfg.detection,
                });
            }
            (_, Err(e)) => self.abandon_claim(now, Duration::ZERO, format!("{e}")),
            (_, Ok(other)) => self.abandon_claim(
                now,
                Duration::ZERO,
                format!("unexpected answer from the arbiter: {other:?}"),
            ),
        }
    }

    /// The claim's timers: the end of `W`, a retry of the resolution.
    pub(super) fn claim_timeout(&mut self, now: Time) {
        match self.claim.take() {
            Some(Claim::Waiting {
                until,
                term_rev,
                alive_rev,
                record,
            }) if now >= until => {
                let id = self.ask(Request::Claim {
                    term_rev,
                    alive_rev,
                    record: record.clone(),
                });
                self.claim = Some(Claim::Claiming { id, record });
            }
            Some(Claim::Resolving {
                id: None,
                record,
                retry_at,
            }) if now >= retry_at => {
                let id = self.ask(Request::Observe);
                self.claim = Some(Claim::Resolving {
                    id: Some(id),
                    record,
                    retry_at,
                });
            }
            other => self.claim = other,
        }
    }

    /// The claim's next timer, if it has one.
    pub(super) fn claim_due(&self) -> Option<Time> {
        match &self.claim {
            Some(Claim::Waiting { until, .. }) => Some(*until),
            Some(Claim::Resolving {
                id: None, retry_at, ..
            }) => Some(*retry_at),
            _ => None,
        }
    }
}
