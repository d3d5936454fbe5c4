//! The simulated network: connections with in-order delivery per direction, partitions that
//! hold traffic until healed (or until TCP gives up), resets.

use super::*;

impl World {
    /// The connections still open, in order.
    pub(super) fn open_conns(&self) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.open)
            .map(|(k, _)| *k)
            .collect()
    }

    pub(super) fn dir(from: Side) -> usize {
        match from {
            Side::P => 0,
            Side::S => 1,
        }
    }

    /// Sends on a connection, in order, or holds it while the direction is partitioned.
    pub(super) fn net_send(&mut self, conn: u64, from: Side, ev: Ev) {
        let d = Self::dir(from);
        let delay = self.delay();
        let blocked = self.blocked[d];
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if blocked {
            c.held[d].push_back(ev);
            return;
        }
        let t = (self.now + delay).max(c.fifo[d] + 1);
        c.fifo[d] = t;
        self.at(t, ev);
    }

    pub(super) fn close_conn(&mut self, conn: u64, from: Side) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        c.open = false;
        let to = match from {
            Side::P => Side::S,
            Side::S => Side::P,
        };
        self.net_send(conn, from, Ev::Closed { conn, to });
    }

    pub(super) fn heal(&mut self) {
        self.blocked = [false, false];
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            for d in 0..2 {
                let held: Vec<Ev> = self
                    .conns
                    .get_mut(&id)
                    .map(|c| c.held[d].drain(..).collect())
                    .unwrap_or_default();
                let from = if d == 0 { Side::P } else { Side::S };
                for ev in held {
                    self.net_send(id, from, ev);
                }
            }
        }
    }

    pub(super) fn close_conn_both(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.open = true;
        }
        self.close_conn(id, Side::S);
    }
}
