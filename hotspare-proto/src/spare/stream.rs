//! The admitted primary's messages: heartbeats answered (each a lease granted), checkpoint
//! streams checked before a byte is spooled, validated and made durable by the disk,
//! acknowledged (on validation or on durability, as the primary asked) and applied; and the
//! answers of the disk.

use super::*;

impl Spare {
    /// A message on connection `c`, stamped with the sender's term.
    pub fn handle_msg(&mut self, now: Time, c: ConnId, term: u64, msg: Msg) {
        if self.taken_over || self.taking_over.is_some() || self.claim.is_some() {
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
        let admitted = self.primary.as_ref().map_or(term, |p| p.term);
        if term != admitted {
            let why = format!("its term changed from {admitted} to {term} on one connection");
            return self.protocol_error(c, why);
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
            Msg::HandedOver { seq } => {
                // It serves no more, for good: no need to wait for its silence.
                self.log(format!(
                    "the primary handed over at checkpoint {seq}: taking over without waiting for silence"
                ));
                self.handed_over = Some(seq);
                self.out.push_back(Output::Close(c, "handed over".into()));
                if let Some(p) = self.primary.take() {
                    if let Some(inc) = p.incoming {
                        if inc.refused.is_none() {
                            self.disk(DiskOp::Discard { seq: inc.seq });
                        }
                    }
                }
                self.handle_timeout(now);
            }
            Msg::StreamStart(h) => self.stream_start(c, term, h),
            Msg::Chunk { seq, bytes } => self.stream_chunk(c, seq, bytes),
            Msg::EndStream { seq } => self.stream_end(c, seq),
            // A whole stream in one message: exactly its start, one chunk and its end.
            Msg::Stream { header, bytes } => {
                self.stream_start(c, term, header);
                self.stream_chunk(c, header.seq, bytes);
                self.stream_end(c, header.seq);
            }
            other => {
                let why = format!("unexpected message {other:?}");
                self.protocol_error(c, why);
            }
        }
    }

    /// The next bytes of the stream being received: spooled, unless it is refused already.
    fn stream_chunk(&mut self, c: ConnId, seq: u64, bytes: Vec<u8>) {
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

    /// The stream is complete: persisted (and acknowledged when the disk says), or Nacked if
    /// it was refused on the way.
    fn stream_end(&mut self, c: ConnId, seq: u64) {
        let p = self.primary.as_mut().expect("checked");
        let (lineage, ack) = (p.lineage, p.ack);
        let replace = self.adopting == Some(lineage);
        match p.incoming.take() {
            Some(inc) if inc.seq == seq => match inc.refused {
                Some(reason) => self.send(c, Msg::Nack { seq, reason }),
                None => {
                    self.disk(DiskOp::Persist {
                        seq,
                        replace_lineage: replace,
                    });
                    self.persist_waiters.push_back(Waiter {
                        seq,
                        conn: c,
                        lineage,
                        ack,
                        replace,
                        acked_on_receipt: false,
                        spool_failed: None,
                    });
                    self.queued_tip = Some((lineage, seq));
                }
            },
            _ => {
                let why = format!("end of checkpoint {seq} without its start");
                self.protocol_error(c, why);
            }
        }
    }

    pub(super) fn protocol_error(&mut self, c: ConnId, why: String) {
        self.out.push_back(Output::Close(c, why.clone()));
        self.handle_closed(Time::ZERO, c, &why);
    }

    pub(super) fn stream_start(&mut self, c: ConnId, term: u64, h: StreamHeader) {
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
        if self.taken_over {
            return; // the program is taking over; nothing here matters any more
        }
        // `Verified` is an intermediate report: its Persist is still running.
        if !matches!(done, DiskDone::Verified { .. }) {
            self.disk_outstanding = self.disk_outstanding.saturating_sub(1);
        }
        match done {
            DiskDone::Verified { seq } => self.verified(seq),
            DiskDone::TermSaved { term, result } => self.term_saved(now, term, result),
            DiskDone::SpoolFailed { seq, why } => {
                if let Some(inc) = self
                    .primary
                    .as_mut()
                    .and_then(|p| p.incoming.as_mut())
                    .filter(|i| i.seq == seq)
                {
                    inc.refused = Some(why.clone());
                } else if let Some(w) = self.persist_waiters.iter_mut().rev().find(|w| w.seq == seq)
                {
                    // Its end came first: the persist is queued on what was spooled. Keep the
                    // reason for its answer.
                    w.spool_failed.get_or_insert_with(|| why.clone());
                }
                self.log(format!("spooling checkpoint {seq}: {why}"));
            }
            DiskDone::Persisted { seq, result } => self.persisted(seq, result),
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

    /// The stream of `seq` is validated (not yet durable): a primary that asked for
    /// [`AckLevel::Received`] is acknowledged now, on the connection that sent it if that is
    /// still the primary's.
    fn verified(&mut self, seq: u64) {
        let current = self.primary.as_ref().map(|p| p.conn);
        let Some(w) = self.persist_waiters.iter_mut().find(|w| w.seq == seq) else {
            return;
        };
        if w.ack != AckLevel::Received || w.acked_on_receipt || Some(w.conn) != current {
            return;
        }
        w.acked_on_receipt = true;
        let c = w.conn;
        self.send(c, Msg::Ack { seq });
    }

    /// The persist of `seq` finished: durable (acknowledged now unless it was on receipt), or
    /// refused. A refusal after an acknowledgement on receipt means something the primary was
    /// told is safe is not here: its connection is closed (it fails what is in flight and sends
    /// a full checkpoint when it reconnects) and the takeover waits for that checkpoint.
    fn persisted(&mut self, seq: u64, result: Result<Tip, String>) {
        let waiter = match self.persist_waiters.iter().position(|w| w.seq == seq) {
            Some(i) => self.persist_waiters.remove(i),
            None => None,
        };
        let current = self.primary.as_ref().map(|p| p.conn);
        match result {
            Ok(tip) => {
                let replaced = waiter
                    .as_ref()
                    .map_or(self.adopting == Some(tip.lineage), |w| w.replace);
                self.tip = Some(tip);
                self.persisted += 1;
                if self.adopting == Some(tip.lineage) {
                    self.adopting = None;
                    self.log(format!("the image is now lineage {}", hex(&tip.lineage)));
                }
                // What this checkpoint settles of what was owed: a checkpoint of its own lineage
                // at or before it is covered (the image holds it, or what superseded it); one of
                // another lineage is given up if this checkpoint deliberately replaces the image,
                // and kept otherwise (an image merely moving on in another lineage, as when the
                // old lineage's primary returns, pays nothing).
                //
                // Why giving up cannot lose an acknowledged checkpoint that must survive: a
                // replacement is asked only of a primary whose hello found another lineage's
                // data protected here (`protected`: its tip, a debt, or a receipt
                // acknowledgement still being made durable) and was let in by
                // `accept_new_lineage`; any other primary admitted after that hello clears or
                // retargets `adopting`, so the flag comes from the replacing primary's latest
                // hello. Everything owed was acknowledged before that hello was answered: a
                // receipt acknowledgement goes only to the current primary's connection, and
                // admitting the replacing one ends the previous one's. The replacing primary was
                // alive after that answer (it streams only once its hello is answered), so
                // wherever one primary runs at a time — each start a fresh lineage, as in the
                // simulator — it is a later run than every lineage it gives up. Acknowledgements
                // of an earlier run, with `accept_new_lineage`, are exactly what a deliberate
                // replacement discards (the simulator's `replaced_deliberately`: another lineage
                // than the image's, created before it); keeping them owed would only hold back
                // every takeover for good, their primary being gone. The image's own lineage is
                // never given up: its debt is paid only by a checkpoint of its own at or after it.
                let (settled, still): (Vec<_>, Vec<_>) =
                    self.owed.iter().partition(|&&(l, owed)| {
                        if l == tip.lineage {
                            tip.seq >= owed
                        } else {
                            replaced
                        }
                    });
                self.owed = still;
                for (l, owed) in settled {
                    self.owed_logged = false;
                    let line = if l == tip.lineage {
                        format!(
                            "checkpoint {} is durable: checkpoint {owed}, acknowledged on receipt and lost to the disk, is covered",
                            tip.seq
                        )
                    } else {
                        format!(
                            "checkpoint {} is durable and replaces the image: checkpoint {owed} of lineage {}, acknowledged on receipt and lost to the disk, is given up with its lineage",
                            tip.seq,
                            hex(&l)
                        )
                    };
                    self.log(line);
                }
                if let Some(w) = waiter.filter(|w| !w.acked_on_receipt && Some(w.conn) == current) {
                    self.send(w.conn, Msg::Ack { seq });
                }
                self.schedule_apply();
            }
            Err(reason) => {
                self.queued_tip = self.tip.map(|t| (t.lineage, t.seq));
                match waiter {
                    Some(w) if w.acked_on_receipt => {
                        let live = Some(w.conn) == current;
                        let why = format!(
                            "checkpoint {seq} was acknowledged on receipt but could not be made durable ({reason}): {}; no takeover until one is durable",
                            if live {
                                "closing the primary's connection so that it resends a full checkpoint"
                            } else {
                                "its connection is gone already, the primary resends a full checkpoint on its next one"
                            }
                        );
                        match self.owed.iter_mut().find(|(l, _)| *l == w.lineage) {
                            Some(e) => e.1 = e.1.max(seq),
                            None => self.owed.push((w.lineage, seq)),
                        }
                        self.owed_logged = false;
                        if live {
                            // One line: the driver logs the reason of the close.
                            let p = self.primary.take().expect("current");
                            if let Some(inc) = p.incoming.filter(|i| i.refused.is_none()) {
                                self.disk(DiskOp::Discard { seq: inc.seq });
                            }
                            self.out.push_back(Output::Close(w.conn, why));
                        } else {
                            self.log(why);
                        }
                    }
                    w => {
                        let reason = match w.as_ref().and_then(|w| w.spool_failed.clone()) {
                            Some(first) => {
                                self.log(format!(
                                    "checkpoint {seq} refused: {first} (its persist then said: {reason})"
                                ));
                                first
                            }
                            None => {
                                self.log(format!("checkpoint {seq} refused: {reason}"));
                                reason
                            }
                        };
                        if let Some(w) = w.filter(|w| Some(w.conn) == current) {
                            self.send(w.conn, Msg::Nack { seq, reason });
                        }
                    }
                }
            }
        }
    }

    pub(super) fn schedule_apply(&mut self) {
        if !self.apply_queued {
            self.apply_queued = true;
            self.apply_covers = self.persisted;
            self.apply_retry_at = None;
            self.disk(DiskOp::Apply);
        }
    }
}
