//! The decision to take over: no lease granted for the detection time, none within the
//! start-up grace, the disk idle, every durable checkpoint applied and nothing acknowledged on
//! receipt that failed to become durable; with an arbiter, its compare-and-swap won
//! ([`super::claim`]); the new term saved first. After a hand-over the term is claimed and
//! saved without waiting for the disk, and the takeover waits for both.

use super::*;

impl Spare {
    pub(super) fn term_saved(&mut self, now: Time, term: u64, result: Result<(), String>) {
        if self.taken_over {
            return;
        }
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
        if self.claim.is_some() {
            return self.claim_timeout(now);
        }
        let Some(tip) = self.tip else { return };
        // A primary that handed over serves no more: its leases do not have to run out.
        let handed_over = self.handed_over.is_some_and(|s| s <= tip.seq);
        let quiet_enough = handed_over
            || self
                .last_grant
                .is_none_or(|g| now >= g + self.cfg.detection);
        let ready = quiet_enough
            && now >= self.hold_until
            && (handed_over || now >= self.claim_hold_until)
            && self.adopting.is_none()
            && self.admitting.is_none()
            && self.disk_outstanding == 0
            && self.applied_upto == self.persisted;
        if !ready {
            return;
        }
        if let Some(owed) = self.acked_not_durable() {
            // Taking over now would resume an image without a checkpoint the primary was
            // told is safe. Fail closed; restarting the spare (which forgets this) is the
            // operator's way of accepting the loss.
            if !self.owed_logged {
                self.owed_logged = true;
                self.log(format!(
                    "primary silent, but NOT taking over: checkpoint {owed} was acknowledged on receipt and could not be made durable here, so the image at {} lacks it (restart this spare to take over without it)",
                    tip.seq
                ));
            }
            return;
        }
        // Checked: a term read from a tampered term file or arbiter record may be the last
        // one, and a wrapped term would take over below the primary it declares dead.
        let Some(term) = self.term.checked_add(1) else {
            return self.terms_exhausted();
        };
        if self.cfg.arbiter.is_some() {
            return self.start_claim(now);
        }
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

    /// No term above `self.term` exists: refuse to take over, for good (the spare stays a
    /// spare). Logged once; afterwards no timer leads to a takeover, so none is asked for.
    pub(super) fn terms_exhausted(&mut self) {
        if !self.exhausted_logged {
            self.exhausted_logged = true;
            self.log(format!(
                "primary silent, but NOT taking over: the term is {} (the highest there is), so no takeover term above it exists; the term file or the arbiter's term record was probably tampered with. Staying a spare",
                self.term
            ));
        }
    }

    /// When [`Spare::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        if self.taken_over {
            return None;
        }
        let mut t = self.apply_retry_at;
        if self.claim.is_some() {
            // Only the claim's own timers; the takeover conditions are not judged meanwhile.
            return match (t, self.claim_due()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        // While a checkpoint acknowledged on receipt is owed, no timer can lead to a takeover
        // (a past deadline here would have the driver spin); only a disk answer can clear it.
        // Nor once the terms are exhausted (logged): no takeover is possible any more.
        let exhausted = self.exhausted_logged && self.term == u64::MAX;
        if self.tip.is_some() && self.taking_over.is_none() && self.owed.is_empty() && !exhausted {
            let hold = self.hold_until.max(self.claim_hold_until);
            let due = self
                .last_grant
                .map_or(hold, |g| (g + self.cfg.detection).max(hold));
            t = Some(t.map_or(due, |x| x.min(due)));
        }
        t
    }
}
