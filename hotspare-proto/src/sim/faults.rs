//! The fault schedule: partitions, resets, pauses, crashes and restarts, disk faults.

use super::*;

impl World {
    pub(super) fn fault(&mut self) {
        if !self.faults_on || self.taken_over_at.is_some() {
            return;
        }
        self.report.faults += 1;
        let r = self.rng.u32(0..100);
        match r {
            0..=14 => {
                let which = self.rng.u32(0..3);
                let len = self.rng.u64(5 * MS..1200 * MS);
                self.partition_epoch += 1;
                let epoch = self.partition_epoch;
                match which {
                    0 => self.blocked[0] = true,
                    1 => self.blocked[1] = true,
                    _ => self.blocked = [true, true],
                }
                self.trace(format!("partition {:?} for {} ms", self.blocked, len / MS));
                self.after(len, Ev::Heal { epoch });
                let ids = self.open_conns();
                for id in ids {
                    let t = self.rng.u64(300 * MS..2000 * MS);
                    self.after(t, Ev::PartitionCheck { conn: id, epoch });
                }
            }
            15..=22 => {
                let ids = self.open_conns();
                for id in ids {
                    self.trace(format!("connection {id} reset"));
                    self.close_conn(id, Side::P);
                    self.close_conn_both(id);
                }
            }
            23..=37 => self.pause(Side::P),
            38..=50 => self.pause(Side::S),
            51..=60 => {
                if self.p.is_some() {
                    self.crash(Side::P);
                    let d = self.rng.u64(MS..400 * MS);
                    self.after(d, Ev::Restart { side: Side::P });
                }
            }
            61..=70 => {
                if self.s.is_some() {
                    self.crash(Side::S);
                    let d = self.rng.u64(MS..400 * MS);
                    self.after(d, Ev::Restart { side: Side::S });
                }
            }
            71..=76 => {
                // The whole pair, restarted in either order.
                let had_p = self.p.is_some();
                if self.s.is_some() {
                    self.crash(Side::S);
                }
                if had_p {
                    self.crash(Side::P);
                }
                let (a, b) = (self.rng.u64(MS..300 * MS), self.rng.u64(MS..300 * MS));
                self.after(a, Ev::Restart { side: Side::S });
                self.after(b, Ev::Restart { side: Side::P });
            }
            77..=86 => {
                self.disk_mode = match self.rng.u32(0..3) {
                    0 => DiskMode::Full,
                    1 => DiskMode::Eio,
                    _ => DiskMode::Slow,
                };
                self.trace("disk fault".into());
            }
            87..=93 => {
                self.disk_mode = DiskMode::Healthy;
            }
            _ => {
                self.heal();
            }
        }
    }

    pub(super) fn pause(&mut self, side: Side) {
        let len = self.rng.u64(MS..900 * MS);
        let until = self.now + len;
        let (inc, paused) = match side {
            Side::P => match self.p.as_mut() {
                Some(p) if p.paused_until.is_none() => {
                    p.paused_until = Some(until);
                    (p.inc, true)
                }
                _ => (0, false),
            },
            Side::S => match self.s.as_mut() {
                Some(s) if s.paused_until.is_none() => {
                    s.paused_until = Some(until);
                    (s.inc, true)
                }
                _ => (0, false),
            },
        };
        if paused {
            self.trace(format!("{side:?} paused for {} ms", len / MS));
            self.at(until, Ev::Unpause { side, inc });
        }
    }
}
