//! A checkpointer for a server whose state is made consistent by stopping everything — taking
//! every lock that guards it — rather than by one thread that owns it.
//!
//! Every such server needs the same machinery around [`HotSpare::cpt`]: a timer that checkpoints
//! on an interval (never waiting for a slow spare: it coalesces), a commit per event-loop round
//! when writes must be durable before they are acknowledged (through the [`OutputGate`], so a
//! reply to a *read* of another thread's write waits too), a watch that takes the checkpoint a
//! planned switchover waits for when no write comes to cause one, and statistics of the stop.
//! [`Checkpointer`] is that machinery over one closure the program gives: "stop everything, call
//! the capture, let go". Event loops release their replies through
//! [`crate::OutputCommit`], which asks the checkpointer what each round must wait for.
//!
//! ```ignore
//! let cp = Checkpointer::new(&hs, move |capture| {
//!     let _all = store.lock_all(); // nothing runs half done while the pages are captured
//!     capture()
//! })
//! .interval_ms(1000)
//! .every_write(true)
//! .start(|| {}); // the interval timer and the switchover watch, on threads of their own
//! ```
//!
//! The checkpointer's own memory (its gate is written by every request) and everything it
//! allocates while capturing (the program's table of lock guards, the statistics) are kept out
//! of the checkpoint heap: they are not state, and would otherwise write heap pages that every
//! checkpoint captures.

use crate::{CommitNotifier, TicketState};
use crate::{CptStats, Error, GlobalHeap, HotSpare, Op, OutputGate, RoundNeed, Ticket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The blob under which the interval is kept in the image, so a `set_interval_ms` survives a
/// failover as the state does.
const INTERVAL_BLOB: &str = "hotspare.checkpointer.interval_ms";

/// Which checkpoint [`Checkpointer::checkpoint`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CptKind {
    /// As the interval timer takes them: never waits for the previous checkpoint (coalesces
    /// into the next instead, [`HotSpare::cpt_or_coalesce`]).
    Interval,
    /// An incremental checkpoint that waits for room in the pipeline ([`HotSpare::cpt`]).
    Commit,
    /// Only if the pipeline has room ([`HotSpare::try_cpt`]): never waits for the spare while
    /// everything is stopped; takes nothing otherwise.
    TryCommit,
    /// Every page ([`HotSpare::cpt_full`]).
    Full,
}

/// Why [`Checkpointer::checkpoint`] took no checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointerError {
    /// A newer primary exists or the lease ran out (and no switchover waits for a checkpoint):
    /// a capture now could only be refused.
    #[error("fenced: a newer primary exists or the lease ran out")]
    Fenced,
    /// The stop closure returned without calling the capture it was given.
    #[error("the stop closure did not call the capture")]
    NotCaptured,
    /// The library's checkpoint failed.
    #[error(transparent)]
    Cpt(#[from] Error),
}

/// One checkpoint taken by [`Checkpointer::checkpoint`].
#[derive(Debug, Clone)]
pub struct Capture {
    /// The library's statistics (its `stopped` is the capture alone).
    pub stats: CptStats,
    /// What the program's threads saw: from asking to stop everything to letting it go.
    pub stopped: Duration,
}

/// Median, 99th percentile and maximum of a series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// The median.
    pub median: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Summary {
    fn of(mut v: Vec<f64>) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        Summary {
            median: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Statistics since the start or the last [`Checkpointer::reset_stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointerStats {
    /// Incremental checkpoints taken (not coalesced, not full).
    pub checkpoints: usize,
    /// Interval checkpoints merged into the next because the previous one was still in flight.
    pub coalesced: u64,
    /// Checkpoints that failed (not counting those refused while fenced).
    pub failed: u64,
    /// Stop per incremental checkpoint, as the program's threads saw it, in ms.
    pub stop_ms: Summary,
    /// The library's capture per incremental checkpoint, in ms.
    pub capture_ms: Summary,
    /// Median bytes per incremental checkpoint.
    pub bytes_median: u64,
    /// Largest full checkpoint seen (kept across resets).
    pub full_bytes: u64,
    /// From asking to durable, per [`Checkpointer::commit_durable`], in ms.
    pub durable_ms: Summary,
}

#[derive(Debug, Default)]
struct Stats {
    /// (stop ms, bytes, capture ms) of each incremental checkpoint.
    taken: Vec<(f64, u64, f64)>,
    coalesced: u64,
    full_bytes: u64,
    failed: u64,
    /// ms from asking to durable of each `commit_durable`.
    waited: Vec<f64>,
}

/// What the replies of an event-loop round wait for (`Commits::round`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    /// Nothing: release them.
    Release,
    /// This ticket's durability.
    Wait(Ticket),
    /// This checkpoint, taken now for them. It holds everything executed before it, so the
    /// replies that were waiting for a deferred commit wait for it too.
    Committed(Ticket),
    /// The next checkpoint, not taken yet: the pipeline is full
    /// (`Commits::deferred_commit` once a checkpoint ends).
    NextCommit,
}

type StopFn = dyn Fn(&mut dyn FnMut()) + Send + Sync;

/// Checkpoints a program over its "stop everything" closure; see the module documentation.
pub struct Checkpointer {
    hs: HotSpare,
    stop: Box<StopFn>,
    every_write: bool,
    gate: OutputGate,
    interval_ms: AtomicU64,
    stats: Mutex<Stats>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("every_write", &self.every_write)
            .field("interval_ms", &self.interval_ms)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// A checkpointer for `hs`. `stop` makes the state consistent and calls the capture it is
    /// given while it is: typically it takes every lock that guards the state, calls it, and
    /// releases the locks. Its allocations are kept out of the checkpoint heap. No interval
    /// (until [`Checkpointer::interval_ms`]), replies not held.
    pub fn new(hs: &HotSpare, stop: impl Fn(&mut dyn FnMut()) + Send + Sync + 'static) -> Self {
        GlobalHeap::outside(|| Checkpointer {
            hs: hs.clone(),
            stop: Box::new(stop),
            every_write: false,
            gate: OutputGate::new(),
            interval_ms: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
        })
    }

    /// Checkpoint every `ms` milliseconds (0: only when asked) — on a fresh start. A resumed
    /// program keeps the interval its image was taken with (the last
    /// [`Checkpointer::set_interval_ms`]), as it keeps its state.
    pub fn interval_ms(self, ms: u64) -> Self {
        let kept = self
            .hs
            .resumed()
            .and_then(|_| self.hs.blob(INTERVAL_BLOB))
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        self.set_interval_ms(kept.unwrap_or(ms));
        self
    }

    /// Whether a write must be durable before its reply leaves (group commit per event-loop
    /// round through [`crate::OutputCommit`]); otherwise replies pass straight through and an
    /// acknowledged write may be lost with the checkpoints since the last durable one.
    pub fn every_write(mut self, on: bool) -> Self {
        self.every_write = on;
        self
    }

    /// Starts the interval timer and the switchover watch, each on a thread of its own, for
    /// the rest of the process (so the checkpointer is leaked, outside the heap). `on_timer`
    /// runs first on the timer's thread: to pin it, say — on the CPU that serves, since while
    /// everything is stopped nothing else can serve there anyway, and on another CPU the
    /// library's writer thread would preempt the stop.
    pub fn start(self, on_timer: impl FnOnce() + Send + 'static) -> &'static Checkpointer {
        let cp: &'static Checkpointer = GlobalHeap::outside(|| Box::leak(Box::new(self)));
        GlobalHeap::outside(|| {
            std::thread::spawn(move || {
                on_timer();
                cp.run_interval()
            });
            std::thread::spawn(move || cp.run_switchover_watch());
        });
        cp
    }

    /// The Hot Spare handle.
    pub fn hotspare(&self) -> &HotSpare {
        &self.hs
    }

    /// Whether writes must be durable before their replies leave.
    pub fn is_every_write(&self) -> bool {
        self.every_write
    }

    /// The interval in milliseconds (0: none).
    pub fn current_interval_ms(&self) -> u64 {
        self.interval_ms.load(Ordering::Relaxed)
    }

    /// Changes the interval from the next tick on (0: none). Kept in the image with the next
    /// checkpoint, so a resumed program keeps it.
    pub fn set_interval_ms(&self, ms: u64) {
        self.interval_ms.store(ms, Ordering::Relaxed);
        GlobalHeap::outside(|| self.hs.set_blob(INTERVAL_BLOB, &ms.to_le_bytes()));
    }

    /// Whether this process may serve now ([`HotSpare::may_serve`]): ask it before a reply
    /// that reveals data leaves.
    pub fn may_serve(&self) -> bool {
        self.hs.may_serve()
    }

    /// Stops everything (the program's closure), checkpoints, lets it go; records the stop.
    /// `Ok(None)`: a [`CptKind::TryCommit`] found the pipeline full and took nothing. The
    /// capture's ticket is given to the output gate while everything is stopped.
    pub fn checkpoint(&self, kind: CptKind) -> Result<Option<Capture>, CheckpointerError> {
        GlobalHeap::outside(|| self.stop_and_capture(kind))
    }

    fn stop_and_capture(&self, kind: CptKind) -> Result<Option<Capture>, CheckpointerError> {
        // A switchover has stopped serving and waits for one more checkpoint: take it.
        if self.hs.is_fenced() && !self.hs.handover_pending() {
            return Err(CheckpointerError::Fenced);
        }
        let t = Instant::now();
        let mut r = None;
        (self.stop)(&mut || {
            let writes = self.gate.writes_now();
            let res = match kind {
                CptKind::Interval => self.hs.cpt_or_coalesce().map(Some),
                CptKind::Commit => self.hs.cpt().map(Some),
                CptKind::TryCommit => self.hs.try_cpt(),
                CptKind::Full => self.hs.cpt_full().map(Some),
            };
            if let Ok(Some(st)) = &res {
                if !st.coalesced {
                    self.gate.captured(writes, Ticket::from_seq(st.seq));
                }
            }
            r = Some(res);
        });
        let stopped = t.elapsed();
        let mut s = self.stats();
        match r {
            None => {
                s.failed += 1;
                Err(CheckpointerError::NotCaptured)
            }
            Some(Ok(None)) => Ok(None),
            Some(Ok(Some(st))) => {
                if st.coalesced {
                    s.coalesced += 1;
                } else if st.full {
                    s.full_bytes = s.full_bytes.max(st.bytes);
                } else {
                    let ms = |d: Duration| d.as_secs_f64() * 1e3;
                    s.taken.push((ms(stopped), st.bytes, ms(st.stopped)));
                }
                Ok(Some(Capture { stats: st, stopped }))
            }
            Some(Err(e)) => {
                s.failed += 1;
                Err(e.into())
            }
        }
    }

    /// A checkpoint, and the wait until it is durable: for a server that answers one request
    /// at a time and replies only once the change it made is kept. Call it where the state is
    /// consistent (the stop closure is called as for every checkpoint).
    pub fn commit_durable(&self) -> Result<Capture, CheckpointerError> {
        let t = Instant::now();
        let c = self
            .checkpoint(CptKind::Commit)?
            .ok_or(CheckpointerError::NotCaptured)?;
        self.hs.wait_durable(c.stats.seq)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        GlobalHeap::outside(|| self.stats().waited.push(ms));
        Ok(c)
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The statistics so far.
    pub fn statistics(&self) -> CheckpointerStats {
        GlobalHeap::outside(|| {
            let s = self.stats();
            let of = |f: fn(&(f64, u64, f64)) -> f64| Summary::of(s.taken.iter().map(f).collect());
            CheckpointerStats {
                checkpoints: s.taken.len(),
                coalesced: s.coalesced,
                failed: s.failed,
                stop_ms: of(|x| x.0),
                capture_ms: of(|x| x.2),
                bytes_median: of(|x| x.1 as f64).median as u64,
                full_bytes: s.full_bytes,
                durable_ms: Summary::of(s.waited.clone()),
            }
        })
    }

    /// Forgets the statistics (the largest full checkpoint excepted).
    pub fn reset_stats(&self) {
        let mut s = self.stats();
        let full = s.full_bytes;
        *s = Stats {
            full_bytes: full,
            ..Stats::default()
        };
    }

    /// The interval timer: runs forever on the calling thread ([`Checkpointer::start`] runs
    /// it), checkpointing every [`Checkpointer::current_interval_ms`] (re-read each tick);
    /// after a slow checkpoint it goes on from now rather than bursting to catch up.
    pub fn run_interval(&self) {
        let mut next = Instant::now();
        loop {
            let ms = self.current_interval_ms();
            if ms == 0 {
                std::thread::sleep(Duration::from_millis(10));
                next = Instant::now();
                continue;
            }
            next += Duration::from_millis(ms);
            let now = Instant::now();
            if next > now {
                std::thread::sleep((next - now).min(Duration::from_millis(ms)));
            } else {
                next = now;
            }
            if let Err(e) = self.checkpoint(CptKind::Interval) {
                eprintln!("hotspare: interval checkpoint failed: {e}");
            }
        }
    }

    /// A planned switchover stops serving and waits for one checkpoint captured from then on
    /// ([`HotSpare::handover_pending`]); in every-write mode no write comes to cause it. This
    /// takes it: runs forever on the calling thread, looking every 2 ms.
    pub fn run_switchover_watch(&self) {
        loop {
            std::thread::sleep(Duration::from_millis(2));
            if self.hs.handover_pending() {
                if let Err(e) = self.checkpoint(CptKind::Commit) {
                    eprintln!("hotspare: the switchover's checkpoint failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// What [`crate::OutputCommit`] needs from a checkpointer; a trait so that its tests can script
/// the answers.
pub(crate) trait Commits: Send + Sync {
    /// Writes must be durable before their replies leave.
    fn holds(&self) -> bool;
    /// Brackets one request for Remus's rule.
    fn begin(&self) -> Op<'_>;
    /// What the replies of a round (all its requests ended) wait for, taking the commit if
    /// they need one and the pipeline has room.
    fn round(&self) -> Result<Round, CheckpointerError>;
    /// The commit a [`Round::NextCommit`] deferred, if there is room now.
    fn deferred_commit(&self) -> Result<Option<Ticket>, CheckpointerError>;
    /// Where a ticket stands (never blocks).
    fn ticket_state(&self, t: Ticket) -> TicketState;
    /// Readable when a checkpoint ended (one per event loop).
    fn notifier(&self) -> Result<Option<CommitNotifier>, Error>;
    /// The right to serve.
    fn may_serve(&self) -> bool;
}

impl Commits for Checkpointer {
    fn holds(&self) -> bool {
        self.every_write
    }

    fn begin(&self) -> Op<'_> {
        self.gate.begin()
    }

    fn round(&self) -> Result<Round, CheckpointerError> {
        let need = match self.gate.round(self.hs.durable_seq()) {
            // The capture that holds everything failed: what the replies may reveal is in no
            // durable checkpoint, so take a new one (it is full) instead of failing them.
            RoundNeed::Wait(t) if matches!(self.hs.ticket_state(t), TicketState::Failed(_)) => {
                RoundNeed::Commit
            }
            need => need,
        };
        Ok(match need {
            RoundNeed::Nothing => Round::Release,
            RoundNeed::Wait(t) => Round::Wait(t),
            RoundNeed::Commit => match self.deferred_commit()? {
                Some(t) => Round::Committed(t),
                None => Round::NextCommit,
            },
        })
    }

    fn deferred_commit(&self) -> Result<Option<Ticket>, CheckpointerError> {
        // A cheap look first (nothing stopped for nothing); `try_cpt` decides, atomically.
        if !self.hs.can_commit() {
            return Ok(None);
        }
        Ok(self
            .checkpoint(CptKind::TryCommit)?
            .map(|c| Ticket::from_seq(c.stats.seq)))
    }

    fn ticket_state(&self, t: Ticket) -> TicketState {
        self.hs.ticket_state(t)
    }

    fn notifier(&self) -> Result<Option<CommitNotifier>, Error> {
        self.hs.commit_notifier().map(Some)
    }

    fn may_serve(&self) -> bool {
        self.hs.may_serve()
    }
}
