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
    /// The highest failed sequence, and why.
    pub failed: Option<(u64, String)>,
    /// Checkpoints handed to the writer.
    pub issued: u64,
    /// The sequence of the newest one handed over (the durable one at start).
    pub issued_seq: u64,
    /// Checkpoints that ended (durable or failed).
    pub ended: u64,
}

impl Durable {
    /// The state of ticket `seq`.
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
        self.issued.saturating_sub(self.ended)
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
        {
            let mut d = self.lock();
            d.ended += 1;
            match result {
                Ok(()) => d.seq = d.seq.max(seq),
                Err(why) => {
                    self.force_full
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    if d.failed.as_ref().is_none_or(|(f, _)| *f <= seq) {
                        d.failed = Some((seq, why));
                    }
                }
            }
        }
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

    /// Blocks until ticket `seq` is durable or failed.
    pub fn wait(&self, seq: u64) -> Result<()> {
        let mut d = self.lock();
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
