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
