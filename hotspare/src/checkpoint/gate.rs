//! Remus's rule for programs with several threads: a reply that may reveal a write is released
//! no earlier than that write is durable — also when the reply is to a *read* on another thread.
//!
//! The gate counts operations in progress and writes finished. A program brackets each
//! request with [`OutputGate::begin`] / [`Op::end`], records the write count at each capture
//! ([`OutputGate::captured`], called while it holds whatever makes its state consistent, the
//! same place it calls [`crate::HotSpare::commit`]), and at the end of each event-loop round
//! asks [`OutputGate::round`] what its replies must wait for.
//!
//! Why it is enough: if a reply on thread R reveals write W, W's critical section ended before
//! R's read began. When R asks, either W's operation is still in progress (then a new capture
//! is needed, and it will follow W), or W's write count was raised before R asked. If the count
//! recorded at the last capture equals the current one, that capture was taken after W's
//! count was raised, so after W: the reply waits for its ticket. Otherwise a new capture is
//! needed. Counts are read and written with sequentially consistent atomics.

use super::Ticket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What the replies of a round must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundNeed {
    /// Everything they could reveal is durable already: release them.
    Nothing,
    /// Already captured: release them once this ticket is durable.
    Wait(Ticket),
    /// Writes not captured yet may be revealed: take a checkpoint (`commit`), and release
    /// them once its ticket is durable.
    Commit,
}

/// Counts of operations and writes; see the module documentation.
#[derive(Debug, Default)]
pub struct OutputGate {
    in_progress: AtomicU64,
    writes: AtomicU64,
    /// (write count when the newest capture was taken, its ticket).
    captured: Mutex<(u64, Option<Ticket>)>,
}

/// One request being executed; [`Op::end`] it (dropping it ends it as a read).
#[derive(Debug)]
pub struct Op<'a> {
    gate: &'a OutputGate,
    ended: bool,
}

impl Op<'_> {
    /// The request is done; `wrote` says whether it changed the state.
    pub fn end(mut self, wrote: bool) {
        self.finish(wrote);
    }

    fn finish(&mut self, wrote: bool) {
        if !self.ended {
            self.ended = true;
            if wrote {
                self.gate.writes.fetch_add(1, Ordering::SeqCst);
            }
            self.gate.in_progress.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Op<'_> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl OutputGate {
    /// A gate with no operation seen yet.
    pub fn new() -> OutputGate {
        OutputGate::default()
    }

    /// A request starts (before it takes any lock on the state).
    pub fn begin(&self) -> Op<'_> {
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        Op {
            gate: self,
            ended: false,
        }
    }

    /// The write count to pass to [`OutputGate::captured`]: read it *after* the state is
    /// stopped for a capture (its locks held), before capturing.
    pub fn writes_now(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// A capture taken with the write count `writes` (from [`OutputGate::writes_now`]) has
    /// ticket `ticket`. Call it before the state's locks are released.
    pub fn captured(&self, writes: u64, ticket: Ticket) {
        let mut c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
        if c.1.is_none_or(|t| t < ticket) {
            *c = (writes, Some(ticket));
        }
    }

    /// What the replies produced by a round (all its operations ended) must wait for;
    /// `durable` is the highest durable sequence ([`crate::HotSpare::durable_seq`]).
    pub fn round(&self, durable: u64) -> RoundNeed {
        if self.in_progress.load(Ordering::SeqCst) > 0 {
            return RoundNeed::Commit;
        }
        let writes = self.writes.load(Ordering::SeqCst);
        let (at, ticket) = *self.captured.lock().unwrap_or_else(|p| p.into_inner());
        match ticket {
            _ if at != writes => RoundNeed::Commit,
            Some(t) if t.seq() > durable => RoundNeed::Wait(t),
            // Nothing written since a durable capture (or ever).
            _ => RoundNeed::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_needs_a_commit_then_waits_for_it() {
        let g = OutputGate::new();
        assert_eq!(g.round(0), RoundNeed::Nothing);
        g.begin().end(true);
        assert_eq!(g.round(0), RoundNeed::Commit);
        let w = g.writes_now();
        g.captured(w, Ticket(3));
        assert_eq!(g.round(2), RoundNeed::Wait(Ticket(3)));
        assert_eq!(g.round(3), RoundNeed::Nothing);
        // A read changes nothing.
        g.begin().end(false);
        assert_eq!(g.round(3), RoundNeed::Nothing);
    }

    #[test]
    fn an_operation_in_progress_elsewhere_needs_a_commit() {
        let g = OutputGate::new();
        let other = g.begin();
        assert_eq!(g.round(0), RoundNeed::Commit);
        drop(other);
        assert_eq!(g.round(0), RoundNeed::Nothing);
    }

    #[test]
    fn a_write_counted_after_the_capture_needs_another() {
        let g = OutputGate::new();
        let w = g.writes_now();
        let op = g.begin();
        g.captured(w, Ticket(1));
        op.end(true);
        assert_eq!(g.round(1), RoundNeed::Commit);
        // An older capture never replaces a newer one.
        g.captured(g.writes_now(), Ticket(2));
        g.captured(0, Ticket(1));
        assert_eq!(g.round(1), RoundNeed::Wait(Ticket(2)));
    }
}
