//! Who may be the primary: connections opened and closed, the first message, and the
//! admission of a primary by term (saved before it counts), lineage and executable.

use super::*;

impl Spare {
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

    pub(super) fn refuse(&mut self, c: ConnId, m: Msg, why: String) {
        self.send(c, m);
        self.out.push_back(Output::Close(c, why));
    }

    pub(super) fn first_msg(&mut self, now: Time, c: ConnId, term: u64, msg: Msg) {
        match msg {
            Msg::SwitchoverRequest => {
                let Some(p) = self.primary.as_ref() else {
                    let reason = "no primary is connected to this spare".to_string();
                    return self.refuse(
                        c,
                        Msg::Refused {
                            reason: reason.clone(),
                        },
                        reason,
                    );
                };
                let (pc, pid) = (p.conn, p.pid);
                self.log(format!(
                    "switchover requested: asking primary pid {pid} to hand over"
                ));
                self.send(pc, Msg::HandOver);
                self.send(c, Msg::SwitchoverStarted { pid });
                self.out
                    .push_back(Output::Close(c, "switchover answered".into()));
            }
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
                ack,
            } => {
                let a = Admission {
                    conn: c,
                    term,
                    lineage,
                    pid,
                    ack,
                };
                self.hello(now, a, exe_id)
            }
            other => {
                let why = format!("unexpected first message {other:?}");
                self.out.push_back(Output::Close(c, why));
            }
        }
    }

    pub(super) fn hello(&mut self, now: Time, a: Admission, exe_id: [u8; 32]) {
        let (c, term, pid, lineage) = (a.conn, a.term, a.pid, a.lineage);
        if term < self.term {
            let why = format!(
                "primary pid {pid} has term {term}, older than ours ({}): fenced",
                self.term
            );
            return self.refuse(c, Msg::Fenced { term: self.term }, why);
        }
        if term == u64::MAX {
            // No takeover could have a newer term than it (`term + 1` would wrap to 0).
            let reason = format!("term {term} is out of range (no takeover could fence it)");
            return self.refuse(
                c,
                Msg::Refused {
                    reason: reason.clone(),
                },
                format!("primary pid {pid}: {reason}"),
            );
        }
        if self.tip.is_some_and(|t| t.exe_id != exe_id) {
            let reason = "the image belongs to another executable".to_string();
            return self.refuse(
                c,
                Msg::Refused {
                    reason: reason.clone(),
                },
                format!("primary pid {pid}: {reason}"),
            );
        }
        if let Some((image_lineage, image_seq)) = self.protected() {
            if image_lineage != lineage {
                if !self.cfg.accept_new_lineage {
                    let reason = format!(
                        "the image holds lineage {} at checkpoint {image_seq}, the primary is lineage {} (resume the primary from this image, or start hotspare-resume with --accept-new-lineage to replace it)",
                        hex(&image_lineage),
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
                        "REPLACING the image of lineage {} (checkpoint {image_seq}) with lineage {} of primary pid {pid} (--accept-new-lineage): the old image is taken over no more",
                        hex(&image_lineage),
                        hex(&lineage)
                    ));
                    self.adopting = Some(lineage);
                }
            } else {
                // A primary of the image's own lineage: any replacement asked for earlier (by a
                // primary that has since gone, or a late hello of a dead one) is abandoned.
                self.adopting = None;
            }
        }
        if let Some(old) = self.admitting.take() {
            self.out
                .push_back(Output::Close(old.conn, "another primary connected".into()));
        }
        if term > self.saved_term {
            // Saved before it counts (again, if an earlier save of it failed).
            self.term = self.term.max(term);
            self.disk(DiskOp::SaveTerm(term));
            self.admitting = Some(a);
        } else {
            self.admit(now, a);
        }
    }

    /// The lineage this spare protects, and its checkpoint: that of the durable tip; on an image
    /// still empty, that of the oldest checkpoint it acknowledged on receipt and could not make
    /// durable, or else of the oldest one acknowledged on receipt whose fsync is still running
    /// (each is owed to its lineage as much as a durable one would be). A hello of another
    /// lineage is a replacement (refused without `accept_new_lineage`); one of this lineage is
    /// the image's own primary and abandons a pending replacement.
    ///
    /// Why the *oldest*: a lineage other than the first one owed can only have been admitted
    /// as a replacement of it (this very rule), so a debt it incurred since is that of the
    /// replacing lineage, not the image's. Taking the newest (as this once did) made the
    /// replacing primary's reconnection, after one of its own receipt acknowledgements was lost
    /// to the disk, look like the image's own primary: the replacement was abandoned, its full
    /// checkpoint then became durable without replacing anything, and the first lineage's debt
    /// — unpayable, its primary being gone — held back every takeover (simulator seed 7662859).
    /// Why the fsyncs still running: they were acknowledged on a connection that was the
    /// primary's, so before any hello that comes now; a primary admitted meanwhile as if the
    /// image were unprotected would, if that fsync failed, fill the empty image without
    /// replacing the debt's lineage, the same dead end.
    pub(super) fn protected(&self) -> Option<(Lineage, u64)> {
        if let Some(t) = self.tip {
            return Some((t.lineage, t.seq));
        }
        self.owed.first().copied().or_else(|| {
            self.persist_waiters
                .iter()
                .find(|w| w.acked_on_receipt)
                .map(|w| (w.lineage, w.seq))
        })
    }

    pub(super) fn admit(&mut self, now: Time, a: Admission) {
        // Back in touch: silence is judged afresh, from now (a primary just admitted has sent
        // no heartbeat yet; without this a spare past its start-up grace would declare it
        // dead at once).
        self.claim_hold_until = now + self.cfg.detection;
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
            "primary pid {} (term {}, lineage {}, durability {}) admitted",
            a.pid,
            a.term,
            hex(&a.lineage),
            a.ack
        ));
        let s = self.status(now);
        self.send(a.conn, s);
        self.primary = Some(Primary {
            conn: a.conn,
            term: a.term,
            lineage: a.lineage,
            pid: a.pid,
            ack: a.ack,
            incoming: None,
        });
    }
}
