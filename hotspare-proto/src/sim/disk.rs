//! The simulated disk of the spare: the protocol's disk operations, with latencies and faults;
//! what survives a crash; the validation `ImageDir::check_wal` does. As in the driver
//! (`hotspare/src/replica/spare/disk.rs`), two workers: the persister runs the operations one
//! at a time and validates each Persist (then [`DiskDone::Verified`]) on the last stream *it
//! validated*; a syncer then makes them durable in order (then [`DiskDone::Persisted`]) while
//! the persister goes on, so a later stream's reports may come before an earlier one's
//! Persisted. The term file, applies and refusals go through the syncer too; in half the
//! scenarios an Apply that reaches the syncer's head goes on to an applier of its own (as the
//! driver's applier thread), so later syncer work (a term saved) may finish before it. A failure of the
//! disk hits validation or durability; after a durability failure the syncer refuses what was
//! validated on top of it, until the persister starts again from what is durable. **Group
//! fsync:** the Persists at the head of the syncer's queue when it starts are made durable
//! together (one flush of the log) and answered in order, all at once; a failure fails the
//! whole group, and a crash during the flush leaves a prefix of it durable (the log's records
//! are in order; a torn one ends it), unannounced.

use super::*;

/// An image as the simulated disk holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Img {
    pub(super) lineage: Lineage,
    pub(super) seq: u64,
    pub(super) base: u64,
    pub(super) term: u64,
    pub(super) value: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum DiskMode {
    Healthy,
    Full,
    Eio,
    Slow,
}

/// The spare's disk: what survives a crash, and the volatile spool.
#[derive(Default)]
pub(super) struct Disk {
    pub(super) term: u64,
    pub(super) image: Option<Img>,
    pub(super) wal: Vec<Img>,
    pub(super) spool: Option<(StreamHeader, Lineage, u64, Option<Img>, bool)>,
    pub(super) queue: VecDeque<DiskOp>,
    pub(super) busy: bool,
    /// Torn WAL files left by crashes (recovery finds them damaged and sets them aside).
    pub(super) torn: u32,
    /// Every checkpoint ever made durable here (lineage, seq).
    pub(super) durable: HashSet<(Lineage, u64)>,
    /// Streams this spare process has validated (reported `Verified`): the only ones it may
    /// acknowledge before they are durable.
    pub(super) verified: HashSet<(Lineage, u64)>,
    /// The running Persist between its two steps: its final answer (as `disk_exec` decided
    /// it), whether a failure hits validation, and the latency left after validation.
    pub(super) step: Option<(DiskDone, bool, u64)>,
    /// The syncer's queue, in order; its head runs while `sync_busy`.
    pub(super) sync: VecDeque<SyncItem>,
    pub(super) sync_busy: bool,
    /// Items at the head of `sync` in flight together (a group of Persists, or one item).
    pub(super) sync_inflight: usize,
    /// The last stream the persister validated (`None`: start from the durable tip).
    pub(super) validated: Option<Img>,
    /// The syncer failed to make a stream durable: it refuses later ones (`broken`) until the
    /// persister, at its next Persist, has waited for it and started again from the durable
    /// tip (`failed` cleared).
    pub(super) broken: bool,
    pub(super) failed: bool,
    /// The applier's queue: Applies the syncer forwarded (their answers as decided when queued),
    /// run one at a time beside the syncer, as the driver's applier thread does — so a term
    /// queued after an Apply may be saved before the Apply is done.
    pub(super) applies: VecDeque<DiskDone>,
    pub(super) apply_busy: bool,
    /// Whether this scenario's Applies go to the applier (half the seeds) or stay in the
    /// syncer's order (the other half: an Apply then holds the syncer, so Persists queue up
    /// behind it and are made durable in groups more often).
    pub(super) separate_applier: bool,
}

/// Work for the simulated syncer: the operation, its answer as decided when it was queued
/// (a Persist's `Err("")`: decided when it completes), and the validated image of a Persist.
#[derive(Clone)]
pub(super) struct SyncItem {
    pub(super) op: DiskOp,
    pub(super) done: DiskDone,
    pub(super) img: Option<Img>,
}

impl Disk {
    pub(super) fn tip(&self) -> Option<Img> {
        self.wal.last().copied().or(self.image)
    }
    pub(super) fn as_tip(i: Img, exe: [u8; 32]) -> Tip {
        Tip {
            lineage: i.lineage,
            seq: i.seq,
            term: i.term,
            exe_id: exe,
        }
    }
    /// What a spare process holds in memory of its disk work, gone with it.
    pub(super) fn forget_volatile(&mut self) {
        self.queue.clear();
        self.busy = false;
        self.spool = None;
        self.step = None;
        self.verified.clear();
        self.sync.clear();
        self.sync_busy = false;
        self.sync_inflight = 0;
        self.validated = None;
        self.broken = false;
        self.failed = false;
        self.applies.clear();
        self.apply_busy = false;
    }

    /// Applies the WAL; an incremental that does not chain is a broken promise (it was
    /// acknowledged), reported by returning it.
    pub(super) fn apply(&mut self) -> Result<u64, Img> {
        for w in std::mem::take(&mut self.wal) {
            let chains = w.base == 0
                || self
                    .image
                    .is_some_and(|i| i.lineage == w.lineage && i.seq == w.base);
            if !chains {
                return Err(w);
            }
            self.image = Some(w);
        }
        Ok(self.image.map_or(0, |i| i.seq))
    }
}

impl World {
    pub(super) fn disk_kick(&mut self) {
        loop {
            if self.disk.busy {
                return;
            }
            match self.disk.queue.front() {
                None => return,
                // Forwarded to the syncer: after whatever is being made durable.
                Some(DiskOp::SaveTerm(_) | DiskOp::Apply) => {
                    let op = self.disk.queue.pop_front().expect("front");
                    let done = self.disk_exec(op.clone());
                    self.disk.sync.push_back(SyncItem {
                        op,
                        done,
                        img: None,
                    });
                    self.sync_kick();
                    continue;
                }
                Some(DiskOp::Persist { .. }) if self.disk.failed => {
                    if self.disk.sync_busy || !self.disk.sync.is_empty() {
                        return; // waits for the syncer; its completion kicks again
                    }
                    self.trace("the persister starts again from the durable tip".into());
                    self.disk.validated = None;
                    self.disk.failed = false;
                    self.disk.broken = false;
                }
                Some(_) => {}
            }
            break;
        }
        self.disk.busy = true;
        let lat = match self.disk_mode {
            DiskMode::Slow => self.rng.u64(100 * MS..900 * MS),
            _ => self.rng.u64(20_000..3 * MS),
        };
        let op = self.disk.queue.front().cloned().expect("not empty");
        let persist = matches!(op, DiskOp::Persist { .. });
        let done = self.disk_exec(op);
        let inc = self.s_inc;
        if persist {
            // A full disk fails the rename/fsync (validation only reads); EIO can hit either.
            let failed =
                matches!(&done, DiskDone::Persisted { result: Err(e), .. } if !e.is_empty());
            let at_validation = failed && self.disk_mode != DiskMode::Full && self.rng2.bool();
            let first = lat / 2;
            self.disk.step = Some((done, at_validation, lat - first));
            self.after(first, Ev::DiskStep { inc });
        } else {
            self.after(lat, Ev::DiskDone { inc, done });
        }
    }

    /// The validation step of the running Persist: reports `Verified` if the stream passes
    /// (and no disk failure hits the validation), then lets the durability step run.
    pub(super) fn disk_step(&mut self, inc: u64) {
        if inc != self.s_inc || !self.disk.busy {
            return;
        }
        let Some((done, at_validation, rest)) = self.disk.step.take() else {
            self.violation("simulator bug: a Persist step with no Persist running".into());
            return;
        };
        let Some(DiskOp::Persist {
            seq,
            replace_lineage,
        }) = self.disk.queue.front().cloned()
        else {
            self.violation("simulator bug: a Persist step for another operation".into());
            return;
        };
        let _ = rest;
        let checked = if at_validation {
            match &done {
                DiskDone::Persisted { result: Err(e), .. } => Err(e.clone()),
                _ => Err("validation failed".into()),
            }
        } else {
            self.sim_check(seq, replace_lineage)
        };
        let op = self.disk.queue.pop_front().expect("the Persist");
        let item = match checked {
            Ok(img) => {
                self.disk.verified.insert((img.lineage, img.seq));
                self.disk.validated = Some(img);
                if self.disk.sync.iter().any(|i| i.img.is_some()) {
                    self.report.validated_ahead += 1;
                }
                self.deliver(Ev::DiskDone {
                    inc,
                    done: DiskDone::Verified { seq },
                });
                SyncItem {
                    op,
                    done,
                    img: Some(img),
                }
            }
            Err(why) => SyncItem {
                op,
                done: DiskDone::Persisted {
                    seq,
                    result: Err(why),
                },
                img: None,
            },
        };
        // The persister is free for the next operation; the syncer has this one.
        self.disk.busy = false;
        self.disk.spool = None;
        self.disk.sync.push_back(item);
        self.sync_kick();
        self.disk_kick();
    }

    /// Starts the syncer's next item, if it is idle.
    pub(super) fn sync_kick(&mut self) {
        if self.disk.sync_busy {
            return;
        }
        // An Apply reaching the head (everything durable before it is) goes to the applier,
        // and the syncer goes on.
        while self.disk.separate_applier
            && self
                .disk
                .sync
                .front()
                .is_some_and(|i| matches!(i.op, DiskOp::Apply))
        {
            let item = self.disk.sync.pop_front().expect("front");
            self.disk.applies.push_back(item.done);
            self.apply_kick();
        }
        if self.disk.sync.is_empty() {
            return;
        }
        self.disk.sync_busy = true;
        // Every Persist queued at the head goes in one flush (a syncer that has failed
        // refuses them one by one).
        let k = if self.disk.broken {
            1
        } else {
            self.disk
                .sync
                .iter()
                .take_while(|i| matches!(i.op, DiskOp::Persist { .. }))
                .count()
                .max(1)
        };
        // One of them failing (the append, or the flush) fails them all.
        let fail = self.disk.sync.iter().take(k).find_map(|i| match &i.done {
            DiskDone::Persisted { result: Err(e), .. } if !e.is_empty() => Some(e.clone()),
            _ => None,
        });
        if let Some(f) = &fail {
            for i in self.disk.sync.iter_mut().take(k) {
                if let DiskDone::Persisted { result, .. } = &mut i.done {
                    *result = Err(f.clone());
                }
            }
        }
        if k > 1 {
            if fail.is_some() {
                self.report.groups_failed += 1;
            } else {
                self.report.grouped_persists += k as u64;
            }
        }
        self.disk.sync_inflight = k;
        // The flush: the slow part, so that later streams are often validated while earlier
        // ones are still being made durable.
        let lat = match self.disk_mode {
            DiskMode::Slow => self.rng.u64(100 * MS..900 * MS),
            _ => self.rng.u64(200_000..8 * MS),
        };
        let inc = self.s_inc;
        for i in 0..k {
            let done = self.disk.sync[i].done.clone();
            self.after(lat, Ev::DiskDone { inc, done });
        }
    }

    /// The applier starts its next Apply, if it is idle.
    fn apply_kick(&mut self) {
        if self.disk.apply_busy {
            return;
        }
        let Some(done) = self.disk.applies.front().cloned() else {
            return;
        };
        self.disk.apply_busy = true;
        let lat = match self.disk_mode {
            DiskMode::Slow => self.rng.u64(100 * MS..900 * MS),
            _ => self.rng.u64(200_000..15 * MS),
        };
        let inc = self.s_inc;
        self.after(lat, Ev::DiskDone { inc, done });
    }

    /// The applier's Apply is done: every durable checkpoint applied (what is durable by now,
    /// as the driver's `apply_pending` does), or the failure decided when it was queued.
    fn finish_apply(&mut self, mut done: DiskDone) -> DiskDone {
        if self.disk.applies.pop_front().is_none() {
            self.violation(format!(
                "simulator bug: an apply completion with nothing queued: {done:?}"
            ));
            return done;
        }
        self.disk.apply_busy = false;
        if let DiskDone::Applied(r) = &mut done {
            self.apply_effect(r);
        }
        self.apply_kick();
        done
    }

    /// An Apply that was to succeed: the WAL applied to the image.
    fn apply_effect(&mut self, r: &mut Result<u64, String>) {
        if r.is_err() {
            return;
        }
        match self.disk.apply() {
            Ok(s) => *r = Ok(s),
            Err(w) => {
                self.violation(format!("an acknowledged checkpoint does not apply: {w:?}"));
                *r = Err("does not chain".into());
            }
        }
    }

    /// The syncer's head is done: its effect on what survives, and its final answer.
    fn finish_sync(&mut self, mut done: DiskDone) -> DiskDone {
        let Some(item) = self.disk.sync.pop_front() else {
            self.violation(format!(
                "simulator bug: a sync completion with nothing queued: {done:?}"
            ));
            return done;
        };
        self.disk.sync_inflight = self.disk.sync_inflight.saturating_sub(1);
        if self.disk.sync_inflight == 0 {
            self.disk.sync_busy = false;
        }
        match (&item.op, &mut done, item.img) {
            (DiskOp::SaveTerm(t), DiskDone::TermSaved { result: Ok(()), .. }, _) => {
                self.disk.term = self.disk.term.max(*t);
            }
            (DiskOp::Persist { seq, .. }, DiskDone::Persisted { result, .. }, Some(img)) => {
                if self.disk.broken {
                    self.report.refused_after_sync_failure += 1;
                    *result = Err(format!(
                        "checkpoint {seq}: an earlier checkpoint could not be made durable"
                    ));
                } else if result.as_ref().is_err_and(|e| e.is_empty()) {
                    self.sim_make_durable(img);
                    *result = Ok(Disk::as_tip(img, self.exe));
                } else {
                    self.disk.broken = true;
                    self.disk.failed = true;
                }
            }
            (DiskOp::Apply, DiskDone::Applied(r), _) => self.apply_effect(r),
            _ => {}
        }
        self.sync_kick();
        done
    }

    /// Decides the outcome of the disk operation now; it becomes durable when it completes
    /// (`finish_disk`), so a crash in between loses it.
    pub(super) fn disk_exec(&mut self, op: DiskOp) -> DiskDone {
        let fail = match self.disk_mode {
            DiskMode::Full => Some("No space left on device (os error 28)"),
            DiskMode::Eio if self.rng.bool() => Some("Input/output error (os error 5)"),
            _ => None,
        };
        match op {
            DiskOp::SaveTerm(term) => DiskDone::TermSaved {
                term,
                result: fail.map_or(Ok(()), |f| Err(f.into())),
            },
            DiskOp::SpoolStart { header, .. } => match fail {
                Some(f) => DiskDone::SpoolFailed {
                    seq: header.seq,
                    why: f.into(),
                },
                None => DiskDone::Discarded,
            },
            DiskOp::Spool { seq, .. } => match fail {
                Some(f) => DiskDone::SpoolFailed { seq, why: f.into() },
                None => DiskDone::Discarded,
            },
            DiskOp::Persist { seq, .. } => match fail {
                Some(f) => DiskDone::Persisted {
                    seq,
                    result: Err(f.into()),
                },
                None => DiskDone::Persisted {
                    seq,
                    result: Err(String::new()),
                }, // decided at finish
            },
            DiskOp::Discard { .. } => DiskDone::Discarded,
            DiskOp::Apply => match fail {
                Some(f) => DiskDone::Applied(Err(f.into())),
                None => DiskDone::Applied(Ok(0)),
            },
        }
    }

    pub(super) fn finish_disk(&mut self, mut done: DiskDone) -> DiskDone {
        // Persisted and TermSaved come from the syncer, Applied from the applier (or the
        // syncer); the rest from the persister.
        if matches!(done, DiskDone::Applied(_)) && self.disk.separate_applier {
            return self.finish_apply(done);
        }
        if matches!(
            done,
            DiskDone::Persisted { .. } | DiskDone::TermSaved { .. } | DiskDone::Applied(_)
        ) {
            return self.finish_sync(done);
        }
        let Some(op) = self.disk.queue.pop_front() else {
            self.violation(format!(
                "simulator bug: disk completion with nothing running: {done:?}"
            ));
            return done;
        };
        self.disk.busy = false;
        match (&op, &mut done) {
            (DiskOp::SaveTerm(t), DiskDone::TermSaved { result: Ok(()), .. }) => {
                self.disk.term = self.disk.term.max(*t);
            }
            (
                DiskOp::SpoolStart {
                    header,
                    lineage,
                    term,
                },
                DiskDone::Discarded,
            ) => {
                self.disk.spool = Some((*header, *lineage, *term, None, true));
            }
            (DiskOp::SpoolStart { header, .. }, DiskDone::SpoolFailed { .. }) => {
                self.disk.spool = Some((*header, [0; 16], 0, None, false));
            }
            (DiskOp::Spool { seq, bytes }, d) => {
                let ok = matches!(d, DiskDone::Discarded);
                if let Some(sp) = self.disk.spool.as_mut().filter(|sp| sp.0.seq == *seq) {
                    if !ok {
                        sp.4 = false;
                    } else if sp.3.is_none() {
                        let decoded: Option<(Lineage, u64, u64, u64)> =
                            postcard::from_bytes(bytes).ok();
                        if let Some((l, s, b, v)) = decoded {
                            sp.3 = Some(Img {
                                lineage: l,
                                seq: s,
                                base: b,
                                term: sp.2,
                                value: v,
                            });
                        }
                    }
                }
            }
            _ => {}
        }
        if matches!(op, DiskOp::Persist { .. } | DiskOp::Discard { .. }) {
            self.disk.spool = None;
        }
        done
    }

    /// A validated stream made durable (`ImageDir::commit_checked_wal`).
    pub(super) fn sim_make_durable(&mut self, img: Img) {
        self.disk.wal.push(img);
        self.disk.durable.insert((img.lineage, img.seq));
        self.receipt_unsynced.remove(&(img.lineage, img.seq));
    }

    /// The validation `ImageDir::check_wal` does, against the last stream validated (the
    /// durable tip when there is none).
    pub(super) fn sim_check(&self, seq: u64, replace: bool) -> Result<Img, String> {
        let Some((h, lineage, _term, Some(img), true)) = self.disk.spool else {
            return Err("stream torn or incomplete".into());
        };
        if h.seq != seq || img.seq != seq || img.base != h.base_seq || img.lineage != lineage {
            return Err("stream does not match its declared header".into());
        }
        if let Some(t) = self.disk.validated.or_else(|| self.disk.tip()) {
            if img.term < t.term {
                return Err("stale term".into());
            }
            if t.lineage == img.lineage {
                if img.seq <= t.seq {
                    return Err("not newer".into());
                }
                if img.base != 0 && img.base != t.seq {
                    return Err("does not chain".into());
                }
            } else if img.base != 0 || !replace {
                return Err("other lineage".into());
            }
        } else if img.base != 0 {
            return Err("incremental on an empty image".into());
        }
        Ok(img)
    }
}
