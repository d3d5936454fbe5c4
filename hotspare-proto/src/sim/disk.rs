//! The simulated disk of the spare: the protocol's disk operations executed one at a time,
//! with latencies and faults; what survives a crash; the validation `ImageDir::check_wal` does.
//! A Persist runs in two steps, as the persister does: validation (then
//! [`DiskDone::Verified`]), then making it durable (then [`DiskDone::Persisted`]); a failure of
//! the disk hits one or the other.

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
        if self.disk.busy || self.disk.queue.is_empty() {
            return;
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
        if !at_validation {
            if let Ok(img) = self.sim_check(seq, replace_lineage) {
                self.disk.verified.insert((img.lineage, img.seq));
                self.deliver(Ev::DiskDone {
                    inc,
                    done: DiskDone::Verified { seq },
                });
            }
        }
        self.after(rest, Ev::DiskDone { inc, done });
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
        let Some(op) = self.disk.queue.pop_front() else {
            self.violation(format!(
                "simulator bug: disk completion with nothing running: {done:?}"
            ));
            return done;
        };
        self.disk.busy = false;
        let exe = self.exe;
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
            (
                DiskOp::Persist {
                    seq,
                    replace_lineage,
                },
                DiskDone::Persisted { result, .. },
            ) if result.as_ref().is_err_and(|e| e.is_empty()) => {
                *result = self
                    .sim_persist(*seq, *replace_lineage)
                    .map(|i| Disk::as_tip(i, exe));
            }
            (DiskOp::Apply, DiskDone::Applied(r)) if r.is_ok() => match self.disk.apply() {
                Ok(s) => *r = Ok(s),
                Err(w) => {
                    self.violation(format!("an acknowledged checkpoint does not apply: {w:?}"));
                    *r = Err("does not chain".into());
                }
            },
            _ => {}
        }
        if matches!(op, DiskOp::Persist { .. } | DiskOp::Discard { .. }) {
            self.disk.spool = None;
        }
        done
    }

    /// Validates the spool and makes it durable (`ImageDir::check_wal`, then
    /// `make_wal_durable`).
    pub(super) fn sim_persist(&mut self, seq: u64, replace: bool) -> Result<Img, String> {
        let img = self.sim_check(seq, replace)?;
        self.disk.wal.push(img);
        self.disk.durable.insert((img.lineage, img.seq));
        self.receipt_unsynced.remove(&(img.lineage, img.seq));
        Ok(img)
    }

    /// The validation `ImageDir::check_wal` does, against the durable tip.
    pub(super) fn sim_check(&self, seq: u64, replace: bool) -> Result<Img, String> {
        let Some((h, lineage, _term, Some(img), true)) = self.disk.spool else {
            return Err("stream torn or incomplete".into());
        };
        if h.seq != seq || img.seq != seq || img.base != h.base_seq || img.lineage != lineage {
            return Err("stream does not match its declared header".into());
        }
        if let Some(t) = self.disk.tip() {
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
