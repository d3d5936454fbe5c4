//! The two simulated processes and their drivers: the primary (its `Link` and an application
//! that checkpoints and counts what was acknowledged) and the spare (its `Spare` core).

use super::*;

impl World {
    pub(super) fn start_primary(&mut self) {
        self.p_inc += 1;
        let lineage = self.new_lineage();
        let mut cfg = self.link_cfg.clone();
        cfg.lineage = lineage;
        // Every incarnation is another process: its record names it.
        if let Some(a) = cfg.arbiter.as_mut() {
            a.node = format!("primary #{}", self.p_inc);
        }
        let clock = self.p_clock;
        let link = Link::new(cfg, clock.local(self.now));
        self.trace(format!(
            "primary #{} starts, fresh lineage {:02x}{:02x}",
            self.p_inc, lineage[0], lineage[1]
        ));
        self.p = Some(PNode {
            link,
            clock,
            inc: self.p_inc,
            lineage,
            conn: None,
            paused_until: None,
            deferred: VecDeque::new(),
            value: 0,
            last_seq: 0,
            in_flight: None,
            last_failed: false,
            exited: false,
        });
        let inc = self.p_inc;
        self.after(0, Ev::Timer { side: Side::P, inc });
        let d = self.rng.u64(MS..10 * MS);
        self.after(d, Ev::AppTick { inc });
    }

    pub(super) fn start_spare(&mut self) {
        self.s_inc += 1;
        // What ImageDir::open does: complete WAL files are applied, torn ones set aside (their
        // CRCs fail), the spool is gone.
        if self.disk.torn > 0 {
            self.trace(format!(
                "recovery sets aside {} torn WAL file(s)",
                self.disk.torn
            ));
            self.disk.torn = 0;
        }
        self.disk.forget_volatile();
        if let Err(w) = self.disk.apply() {
            self.violation(format!(
                "a durable checkpoint does not apply at recovery: {w:?}"
            ));
        }
        let exe = self.exe;
        let rec = Recovered {
            term: self.disk.term,
            tip: self.disk.image.map(|i| Disk::as_tip(i, exe)),
            applied: self.disk.image.map_or(0, |i| i.seq),
        };
        let clock = self.s_clock;
        let core = Spare::new(self.spare_cfg.clone(), rec, clock.local(self.now));
        self.trace(format!(
            "spare #{} starts: term {}, image {:?}",
            self.s_inc,
            rec.term,
            rec.tip.map(|t| t.seq)
        ));
        self.s = Some(SNode {
            core,
            clock,
            inc: self.s_inc,
            paused_until: None,
            deferred: VecDeque::new(),
        });
        let inc = self.s_inc;
        self.after(0, Ev::Timer { side: Side::S, inc });
    }

    pub(super) fn crash(&mut self, side: Side) {
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.open
                    && match side {
                        Side::P => c.p_inc == self.p_inc,
                        Side::S => c.s_inc == self.s_inc,
                    }
            })
            .map(|(k, _)| *k)
            .collect();
        match side {
            Side::P => {
                self.trace("primary crashes".into());
                self.p = None;
                self.p_inc += 1;
            }
            Side::S => {
                self.trace("spare crashes (unsynced disk work lost)".into());
                self.s = None;
                self.s_inc += 1;
                // The group of persists the syncer was flushing when the process died: none
                // became durable, or a prefix of it did without anyone hearing of it (the
                // log's records are in order and a torn one ends it), or a torn record is
                // left that recovery ignores. One that was being validated never reached the
                // disk.
                if self.disk.sync_busy && !self.disk.broken {
                    let k = self.disk.sync_inflight.min(self.disk.sync.len());
                    let group: Vec<(u64, super::disk::Img)> = self
                        .disk
                        .sync
                        .iter()
                        .take(k)
                        .filter_map(|i| match (&i.op, &i.done, i.img) {
                            (
                                DiskOp::Persist { seq, .. },
                                DiskDone::Persisted { result: Err(e), .. },
                                Some(img),
                            ) if e.is_empty() => Some((*seq, img)),
                            _ => None,
                        })
                        .collect();
                    if !group.is_empty() && group.len() == k {
                        match self.rng.u32(0..3) {
                            0 => {
                                let j = self.rng.usize(1..=group.len());
                                for &(seq, img) in &group[..j] {
                                    self.sim_make_durable(img);
                                    self.trace(format!(
                                        "checkpoint {seq} became durable unannounced"
                                    ));
                                }
                            }
                            1 => self.disk.torn += 1,
                            _ => {}
                        }
                    }
                }
                self.disk.forget_volatile();
                // What was acknowledged on receipt and is not durable now is lost with this
                // process: the second failure `received` does not cover. Nothing else is.
                let lost = std::mem::take(&mut self.receipt_unsynced);
                if !lost.is_empty() {
                    self.trace(format!(
                        "acknowledged on receipt, not durable, lost with the spare: {lost:?}"
                    ));
                }
                self.exempt.extend(lost);
            }
        }
        for c in conns {
            self.close_conn(c, side);
        }
    }

    pub(super) fn p_pump(&mut self) {
        let Some(p) = self.p.as_mut() else { return };
        let mut sends = Vec::new();
        while let Some(m) = p.link.poll_transmit() {
            sends.push(m);
        }
        let mut events = Vec::new();
        while let Some(e) = p.link.poll_event() {
            events.push(e);
        }
        let mut asks = Vec::new();
        while let Some(a) = p.link.poll_arbiter() {
            asks.push(a);
        }
        let (conn, term) = (p.conn, p.link.term());
        let inc = p.inc;
        for (id, req) in asks {
            self.arbiter_send(Side::P, inc, id, req);
        }
        for m in sends {
            if let Some(c) = conn {
                self.net_send(
                    c,
                    Side::P,
                    Ev::Deliver {
                        conn: c,
                        to: Side::S,
                        term,
                        msg: m,
                    },
                );
            }
        }
        for e in events {
            self.p_event(e);
        }
        let inc = self.p_inc;
        if let Some(p) = self.p.as_ref() {
            if let Some(t) = p.link.poll_timeout() {
                let real = p.clock.real(t).max(self.now);
                self.arm(Side::P, real, inc);
            }
        }
    }

    pub(super) fn p_event(&mut self, e: Event) {
        let now = self.now;
        let Some(p) = self.p.as_mut() else { return };
        let local = p.clock.local(now);
        match e {
            Event::Connect => {
                if let Some(old) = p.conn.take() {
                    self.close_conn(old, Side::P);
                }
                let spare_listening = self.s.as_ref().is_some_and(|s| !s.core.taken_over());
                let reachable = !self.blocked[0] && !self.blocked[1];
                let inc = self.p_inc;
                if spare_listening && reachable {
                    self.next_conn += 1;
                    let id = self.next_conn;
                    let lineage = self.p.as_ref().map_or([0; 16], |p| p.lineage);
                    self.conns.insert(
                        id,
                        SimConn {
                            lineage,
                            p_inc: self.p_inc,
                            s_inc: self.s_inc,
                            open: true,
                            fifo: [0, 0],
                            held: [VecDeque::new(), VecDeque::new()],
                        },
                    );
                    if let Some(p) = self.p.as_mut() {
                        p.conn = Some(id);
                    }
                    let d = self.delay();
                    self.after(d, Ev::Connected { conn: id });
                } else {
                    let d = self.rng.u64(MS..200 * MS);
                    self.after(d, Ev::ConnectFailed { inc });
                }
            }
            Event::Close(why) => {
                if let Some(c) = p.conn.take() {
                    p.link.handle_disconnected(local, &why);
                    self.trace(format!("primary closes: {why}"));
                    self.close_conn(c, Side::P);
                }
            }
            Event::Ready { .. } => {}
            Event::Done { seq, result } => {
                if p.in_flight == Some(seq) {
                    p.in_flight = None;
                }
                match result {
                    Ok(()) => {
                        let l = p.lineage;
                        self.acked.entry(l).or_default().insert(seq);
                        self.acked_count += 1;
                    }
                    Err(why) => {
                        p.last_failed = true;
                        self.trace(format!("primary: checkpoint {seq} failed: {why}"));
                    }
                }
            }
            Event::Fenced(why) => {
                p.exited = true;
                self.trace(format!("primary fenced: {why}; it exits"));
                self.crash(Side::P);
            }
            Event::Arbiter(line) => self.trace(format!("primary: {line}")),
            Event::HandOverRequested => {
                self.trace("primary: asked to hand over; serving no more".into())
            }
            Event::HandOverAborted(why) => {
                self.trace(format!("primary: switchover given up: {why}"))
            }
            Event::HandedOver { seq } => {
                // Its last message is on the wire (sent before events are handled): it exits.
                p.exited = true;
                self.report.handovers += 1;
                self.trace(format!("primary handed over at checkpoint {seq}; it exits"));
                self.crash(Side::P);
            }
            Event::LeaseLost => {
                if self.exit_on_lease_loss {
                    self.trace("primary lost its lease; on_fence=exit".into());
                    self.crash(Side::P);
                }
            }
        }
    }

    pub(super) fn app_tick(&mut self) {
        let now = self.now;
        let Some(p) = self.p.as_mut() else { return };
        p.value += 1 + p.value % 3;
        let local = p.clock.local(now);
        if p.link.is_up() && p.in_flight.is_none() {
            let full = p.link.take_needs_full() || p.last_failed || p.last_seq == 0;
            p.last_failed = false;
            let seq = p.last_seq + 1;
            let base = if full { 0 } else { p.last_seq };
            let h = StreamHeader {
                seq,
                base_seq: base,
            };
            // Half the checkpoints go whole in one message (as a stream that fits one chunk
            // does), half as start, chunks and end (as a large one is): the image, then 0 to
            // 2 chunks of padding.
            let whole = self.rng.bool();
            let padding = if whole { 0 } else { self.rng.u32(0..3) };
            let img = Img {
                lineage: p.lineage,
                seq,
                base,
                term: p.link.term(),
                value: p.value,
            };
            let first = postcard::to_allocvec(&(img.lineage, img.seq, img.base, img.value))
                .expect("encode");
            let started = if whole {
                p.link.send_checkpoint(local, h, first.clone())
            } else {
                p.link.start_checkpoint(local, h)
            };
            if started.is_ok() {
                // Captured now: after a switchover began, if one did.
                p.link.mark_final(seq);
                p.last_seq = seq;
                p.in_flight = Some(seq);
                self.produced.insert((p.lineage, seq), p.value);
                if !whole {
                    p.link.send_chunk(local, seq, first);
                    for _ in 0..padding {
                        p.link.send_chunk(local, seq, vec![0; 16]);
                    }
                    p.link.end_checkpoint(local, seq);
                }
            } else {
                p.last_failed = true;
            }
        }
        self.p_pump();
        let inc = self.p_inc;
        let d = self.rng.u64(MS..12 * MS);
        self.after(d, Ev::AppTick { inc });
    }

    pub(super) fn s_pump(&mut self) {
        loop {
            let Some(s) = self.s.as_mut() else { return };
            let Some(o) = s.core.poll_output() else { break };
            match o {
                Output::Send(c, term, msg) => {
                    if let Msg::Ack { seq } = msg {
                        self.check_ack(c.0, seq);
                    }
                    let open = self.conns.get(&c.0).is_some_and(|k| k.open);
                    if open {
                        self.net_send(
                            c.0,
                            Side::S,
                            Ev::Deliver {
                                conn: c.0,
                                to: Side::P,
                                term,
                                msg,
                            },
                        );
                    }
                }
                Output::Close(c, why) => {
                    let now = s.clock.local(self.now);
                    s.core.handle_closed(now, c, &why);
                    self.trace(format!("spare closes conn {}: {why}", c.0));
                    self.close_conn(c.0, Side::S);
                }
                Output::Disk(op) => {
                    self.disk.queue.push_back(op);
                    self.disk_kick();
                }
                Output::TakeOver { term, seq, silent } => {
                    self.trace(format!(
                        "TAKEOVER term {term} at checkpoint {seq} after {} ms of silence",
                        silent.as_millis()
                    ));
                    self.takeover_check(seq);
                    self.arbiter_takeover_check(term);
                }
                Output::Log(l) => self.trace(format!("spare: {l}")),
                Output::Arbiter(id, req) => {
                    let inc = s.inc;
                    self.arbiter_send(Side::S, inc, id, req);
                }
            }
        }
        let inc = self.s_inc;
        if let Some(s) = self.s.as_ref() {
            if let Some(t) = s.core.poll_timeout() {
                let real = s.clock.real(t).max(self.now);
                self.arm(Side::S, real, inc);
            }
        }
    }
}
