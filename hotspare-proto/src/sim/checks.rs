//! The guarantees, checked after every step and at every takeover.

use super::*;

impl World {
    pub(super) fn takeover_check(&mut self, seq: u64) {
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
        for (l, seqs) in self.acked.clone() {
            let replaced_deliberately = l != img.lineage
                && self.spare_cfg.accept_new_lineage
                && pos(&l, self) < pos(&img.lineage, self);
            // What the image must hold of this lineage: the newest acknowledgement the level
            // covers. The exempt ones it lacks are counted (in the report), not passed silently.
            let lacks = |s: u64| l != img.lineage || s > img.seq;
            if !replaced_deliberately {
                self.report.exempted += seqs
                    .iter()
                    .filter(|s| lacks(**s) && self.exempt.contains(&(l, **s)))
                    .count() as u64;
            }
            let covered = seqs
                .iter()
                .copied()
                .filter(|s| !self.exempt.contains(&(l, *s)))
                .max();
            let Some(n) = covered else { continue };
            if l == img.lineage {
                if img.seq < n {
                    self.violation(format!(
                        "acknowledged checkpoint {n} lost: resumed {}",
                        img.seq
                    ));
                }
            } else if !replaced_deliberately {
                self.violation(format!("acknowledged checkpoint {n} of another lineage lost: resumed lineage {:02x}{:02x} at {}", img.lineage[0], img.lineage[1], img.seq));
            }
        }
        if let Some(k) = self.killed_for_liveness {
            // With an arbiter: observe, wait W, claim (its round trips are short once healed).
            let claim = self.link_cfg.arbiter.as_ref().map_or(0, |a| {
                a.wait.max(crate::arbiter::DEFAULT_WAIT).as_nanos() as u64 + 20 * MS
            });
            let bound = self.spare_cfg.detection.as_nanos() as u64 * 12 / 10 + 100 * MS + claim;
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

    /// An `Ack` the spare sends for checkpoint `seq` on connection `conn`: at `fsynced` it
    /// must be durable on the disk; at `received` at least validated by this spare process
    /// (then it is remembered as not yet durable until it is).
    pub(super) fn check_ack(&mut self, conn: u64, seq: u64) {
        let Some(l) = self.conns.get(&conn).map(|c| c.lineage) else {
            return self.violation(format!("Ack {seq} on unknown connection {conn}"));
        };
        if self.disk.durable.contains(&(l, seq)) {
            return;
        }
        if !self.disk.verified.contains(&(l, seq)) {
            return self.violation(format!(
                "checkpoint {seq} acknowledged that the disk neither validated nor made durable"
            ));
        }
        match self.ack {
            AckLevel::Fsynced => self.violation(format!(
                "checkpoint {seq} acknowledged before it was durable (level fsynced)"
            )),
            AckLevel::Received => {
                self.receipt_unsynced.insert((l, seq));
            }
        }
    }

    pub(super) fn check_one_server(&mut self) {
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
}
