//! Output commit: which checkpoints are durable, and how a program learns it without a thread
//! per waiter.
//!
//! A [`Ticket`] is the sequence number of a checkpoint. Once checkpoint `n` is durable (applied
//! to the local image, or acknowledged by the spare at the configured durability level) every
//! ticket `≤ n` is too: a spare accepts an incremental checkpoint only on top of its base, and a
//! full one holds the whole state, so an acknowledged `n` implies everything before it. That is
//! why completions need no per-ticket bookkeeping: one number, the highest durable sequence.
//!
//! Every checkpoint handed to the writer ends exactly once, durable or failed, through a
//! [`Completion`] (which reports a failure if it is dropped unreported, so a lost message can
//! never leave a ticket pending forever). Completions wake blocked waiters (a condition
//! variable) and event loops (one `eventfd` per [`CommitNotifier`]).

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, Weak};

/// "Everything the program did before asking": released once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub(crate) u64);

impl Ticket {
    /// The checkpoint sequence number behind this ticket.
    pub fn seq(self) -> u64 {
        self.0
    }

    /// The ticket of checkpoint `seq` (for tickets that crossed a boundary as a number, such
    /// as the C ABI's).
    pub fn from_seq(seq: u64) -> Ticket {
        Ticket(seq)
    }
}

/// Where a ticket stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketState {
    /// Its checkpoint (or a later one) is not durable yet.
    Pending,
    /// Durable: replies that waited for it may be released.
    Durable,
    /// Its checkpoint failed and nothing later made it durable: the replies that waited for
    /// it must not be released as successes (the next checkpoint is full, so the state itself
    /// is not lost while this process lives).
    Failed(String),
}

/// Durability state shared with the writer and link threads.
#[derive(Debug, Default)]
pub(crate) struct Durable {
    /// Highest sequence that is durable.
    pub seq: u64,
    /// The highest failed sequence at or below which every checkpoint has ended, and why: a
    /// ticket up to it that `seq` does not cover has failed.
    pub failed: Option<(u64, String)>,
    /// Failures above a checkpoint still in flight, and why: not reported yet, since that
    /// checkpoint (or a later one) may still make their tickets durable. Few: checkpoints end
    /// in order but for an Ack that covers older ones, and every one ends in bounded time.
    unsettled: Vec<(u64, String)>,
    /// Sequences handed to the writer and not ended yet.
    open: BTreeSet<u64>,
    /// The sequence of the newest one handed over (the durable one at start).
    pub issued_seq: u64,
}

impl Durable {
    /// The state of ticket `seq`.
    ///
    /// Failed only once every checkpoint up to the failed one has ended: while an earlier
    /// checkpoint (the ticket's own, with a pipeline) is in flight, its success would still make
    /// the ticket durable, and reporting Failed would close connections whose replies were about
    /// to be released.
    pub fn state(&self, seq: u64) -> TicketState {
        if self.seq >= seq {
            return TicketState::Durable;
        }
        match &self.failed {
            Some((f, why)) if *f >= seq => TicketState::Failed(why.clone()),
            _ => TicketState::Pending,
        }
    }

    /// Checkpoints handed over and not ended.
    pub fn in_flight(&self) -> u64 {
        self.open.len() as u64
    }

    /// Checkpoint `seq` is handed to the writer (sequences only grow).
    pub fn issue(&mut self, seq: u64) {
        self.open.insert(seq);
        self.issued_seq = seq;
    }

    /// Checkpoint `seq` ended with `result`.
    fn end(&mut self, seq: u64, result: std::result::Result<(), String>) {
        self.open.remove(&seq);
        match result {
            Ok(()) => self.seq = self.seq.max(seq),
            Err(why) => self.unsettled.push((seq, why)),
        }
        // Failures below every checkpoint still in flight are settled: report them.
        let low = self.open.first().copied().unwrap_or(u64::MAX);
        let mut i = 0;
        while i < self.unsettled.len() {
            if self.unsettled[i].0 < low {
                let (f, why) = self.unsettled.swap_remove(i);
                if self.failed.as_ref().is_none_or(|(g, _)| *g <= f) {
                    self.failed = Some((f, why));
                }
            } else {
                i += 1;
            }
        }
    }
}

pub(crate) struct Shared {
    pub durable: Mutex<Durable>,
    pub changed: Condvar,
    /// Set when a checkpoint failed: the next one must be full.
    pub force_full: AtomicBool,
    notifiers: Mutex<Vec<Weak<OwnedFd>>>,
}

impl Shared {
    pub fn new(durable_seq: u64) -> Arc<Shared> {
        Arc::new(Shared {
            durable: Mutex::new(Durable {
                seq: durable_seq,
                issued_seq: durable_seq,
                ..Durable::default()
            }),
            changed: Condvar::new(),
            force_full: AtomicBool::new(false),
            notifiers: Mutex::new(Vec::new()),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Durable> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checkpoint `seq` ended with `result`.
    fn end(&self, seq: u64, result: std::result::Result<(), String>) {
        if result.is_err() {
            self.force_full
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.lock().end(seq, result);
        self.changed.notify_all();
        self.notify();
    }

    /// Wakes every live notifier (and forgets the dropped ones).
    fn notify(&self) {
        let mut n = self.notifiers.lock().unwrap_or_else(|p| p.into_inner());
        n.retain(|w| match w.upgrade() {
            Some(fd) => {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writing 8 bytes from a live buffer to an eventfd we own; EAGAIN (the
                // counter is saturated) only means it is readable already.
                unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
                true
            }
            None => false,
        });
    }

    /// A new eventfd that becomes readable at every completion.
    pub fn notifier(&self) -> std::io::Result<CommitNotifier> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        self.notifiers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&fd));
        Ok(CommitNotifier { fd })
    }

    /// Blocks until ticket `seq` is durable or failed; [`Error::NotTaken`] at once for a
    /// sequence beyond the newest checkpoint taken (no completion would ever end the wait).
    pub fn wait(&self, seq: u64) -> Result<()> {
        let mut d = self.lock();
        if seq > d.issued_seq {
            return Err(Error::NotTaken {
                seq,
                newest: d.issued_seq,
            });
        }
        loop {
            match d.state(seq) {
                TicketState::Durable => return Ok(()),
                TicketState::Failed(why) => {
                    let fseq = d.failed.as_ref().map_or(seq, |f| f.0);
                    return Err(Error::CheckpointFailed { seq: fseq, why });
                }
                TicketState::Pending => {
                    d = self.changed.wait(d).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}

/// The one report of how checkpoint `seq` ended. Dropped unreported, it reports a failure.
pub(crate) struct Completion {
    shared: Arc<Shared>,
    seq: u64,
    done: bool,
}

impl Completion {
    pub fn new(shared: Arc<Shared>, seq: u64) -> Completion {
        Completion {
            shared,
            seq,
            done: false,
        }
    }

    pub fn finish(mut self, result: std::result::Result<(), String>) {
        self.done = true;
        self.shared.end(self.seq, result);
        crate::probe::mark(self.seq, crate::probe::Stage::Completed);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.done {
            self.shared.end(
                self.seq,
                Err("the checkpoint was dropped unfinished".into()),
            );
        }
    }
}

/// Readable whenever a checkpoint ended: register it with an event loop (`mio::unix::SourceFd`,
/// epoll, `poll`), and on readiness call [`CommitNotifier::clear`] and then ask
/// [`crate::HotSpare::ticket_state`] about the tickets you hold.
#[derive(Debug)]
pub struct CommitNotifier {
    fd: Arc<OwnedFd>,
}

impl CommitNotifier {
    /// Consumes the pending wake-ups (non-blocking).
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a live buffer from our eventfd; EAGAIN means nothing was
        // pending.
        unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    }
}

impl AsRawFd for CommitNotifier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for CommitNotifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints `seqs` handed over, with their completions.
    fn issue(shared: &Arc<Shared>, seqs: &[u64]) -> Vec<Completion> {
        seqs.iter()
            .map(|&s| {
                shared.lock().issue(s);
                Completion::new(shared.clone(), s)
            })
            .collect()
    }

    fn state(shared: &Shared, seq: u64) -> TicketState {
        shared.lock().state(seq)
    }

    fn failed(s: TicketState) -> bool {
        matches!(s, TicketState::Failed(_))
    }

    #[test]
    fn a_later_failure_leaves_an_earlier_ticket_pending_until_its_checkpoint_ends() {
        let shared = Shared::new(0);
        let mut c = issue(&shared, &[1, 2]);
        let two = c.pop().unwrap();
        let one = c.pop().unwrap();
        two.finish(Err("refused".into()));
        // Ticket 1's own checkpoint is still in flight and may succeed.
        assert_eq!(state(&shared, 1), TicketState::Pending);
        assert_eq!(state(&shared, 2), TicketState::Pending);
        assert_eq!(shared.lock().in_flight(), 1);
        one.finish(Ok(()));
        assert_eq!(state(&shared, 1), TicketState::Durable);
        assert!(failed(state(&shared, 2)));
        assert!(shared.force_full.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_failure_is_reported_once_everything_up_to_it_ended() {
        let shared = Shared::new(0);
        let mut c = issue(&shared, &[1, 2, 3]).into_iter();
        let (one, two, three) = (c.next().unwrap(), c.next().unwrap(), c.next().unwrap());
        one.finish(Err("lost".into()));
        assert!(failed(state(&shared, 1)));
        assert_eq!(state(&shared, 2), TicketState::Pending);
        three.finish(Err("lost too".into()));
        // 2 is still in flight: tickets 2 and 3 wait for it.
        assert_eq!(state(&shared, 2), TicketState::Pending);
        assert_eq!(state(&shared, 3), TicketState::Pending);
        drop(two); // dropped unreported: a failure
        assert!(failed(state(&shared, 2)));
        assert_eq!(state(&shared, 3), TicketState::Failed("lost too".into()));
        assert_eq!(shared.lock().in_flight(), 0);
        // A later durable checkpoint covers them all.
        let four = issue(&shared, &[4]).pop().unwrap();
        four.finish(Ok(()));
        for t in 1..=4 {
            assert_eq!(state(&shared, t), TicketState::Durable);
        }
    }

    #[test]
    fn a_later_durable_checkpoint_covers_a_failed_earlier_one() {
        let shared = Shared::new(0);
        let mut c = issue(&shared, &[1, 2]);
        let two = c.pop().unwrap();
        let one = c.pop().unwrap();
        two.finish(Ok(()));
        one.finish(Err("timed out".into()));
        assert_eq!(state(&shared, 1), TicketState::Durable);
        assert_eq!(state(&shared, 2), TicketState::Durable);
        assert!(shared.wait(1).is_ok());
    }
}
