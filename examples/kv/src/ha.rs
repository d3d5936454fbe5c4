//! Everything the server does because of Hot Spare: the store in the checkpoint heap, the
//! listening socket registered so a resumed server (on the spare) keeps its address, checkpoints
//! on an interval or per write, and their statistics for `INFO hotspare`. The rest of the server
//! is the same code that `--plain` runs.

use crate::commands::{CptMode, Durability, RoundTicket};
use crate::store::Store;
use hotspare::{
    CommitNotifier, CptStats, HotSpare, Op, OutputGate, RoundNeed, Ticket, TicketState,
};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The store as it lives in the checkpoint heap (the heap's root object).
pub type HaStore = Store;

/// Checkpoint statistics of this incarnation (ordinary memory: not part of the state).
#[derive(Debug, Default)]
struct Stats {
    /// (stop time in ms, bytes, capture time in ms) of each incremental checkpoint: the stop
    /// is what clients see (taking every shard lock, then the capture); the capture is the
    /// library's part.
    taken: Vec<(f64, u64, f64)>,
    /// Checkpoints merged into the next because the previous one was still being written.
    coalesced: u64,
    /// Largest full checkpoint seen.
    full_bytes: u64,
    failed: u64,
}

/// Hot Spare persistence for the server.
pub struct HotSpareDurability {
    hs: HotSpare,
    store: &'static HaStore,
    every_write: bool,
    /// Remus's rule across the serving threads (which replies wait for which checkpoint).
    gate: OutputGate,
    stats: Mutex<Stats>,
}

/// Which kind of checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// On the interval: never waits for the previous checkpoint (coalesces instead).
    Interval,
    /// For a write that must become durable.
    Commit,
    /// For a write that must become durable, only if the pipeline has room: never waits for
    /// the spare while every shard lock is held.
    TryCommit,
    /// Every page (`HOTSPARE.CPT FULL`).
    Full,
}

impl HotSpareDurability {
    /// Persistence for `store`, which lives in `hs`'s heap.
    pub fn new(hs: HotSpare, store: &'static HaStore, every_write: bool) -> HotSpareDurability {
        HotSpareDurability {
            hs,
            store,
            every_write,
            gate: OutputGate::new(),
            stats: Mutex::new(Stats::default()),
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the store (every shard lock), checkpoints, lets it go. The stop time recorded is
    /// what clients see: from asking for the first lock to releasing the last. The capture's
    /// ticket is given to the output gate while the locks are held. `None`: a
    /// [`Kind::TryCommit`] found the pipeline full and took nothing.
    fn checkpoint(&self, kind: Kind) -> Result<Option<(CptStats, Duration)>, String> {
        // Its own allocations (the table of guards, the statistics) are not state: keep them
        // out of the heap, or every checkpoint would capture pages they wrote.
        hotspare::GlobalHeap::outside(|| self.stop_and_capture(kind))
    }

    fn stop_and_capture(&self, kind: Kind) -> Result<Option<(CptStats, Duration)>, String> {
        // A switchover has stopped serving and waits for one more checkpoint: take it.
        if self.hs.is_fenced() && !self.hs.handover_pending() {
            return Err("fenced: a newer primary exists or the lease ran out".into());
        }
        let t = Instant::now();
        let guards = self.store.lock_all();
        let writes = self.gate.writes_now();
        let r = match kind {
            Kind::Interval => self.hs.cpt_or_coalesce().map(Some),
            Kind::Commit => self.hs.cpt().map(Some),
            Kind::TryCommit => self.hs.try_cpt(),
            Kind::Full => self.hs.cpt_full().map(Some),
        };
        if let Some(st) = r
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .filter(|st| !st.coalesced)
        {
            self.gate.captured(writes, Ticket::from_seq(st.seq));
        }
        drop(guards);
        let stopped = t.elapsed();
        let mut s = self.stats();
        match r {
            Ok(None) => Ok(None),
            Ok(Some(st)) => {
                if st.coalesced {
                    s.coalesced += 1;
                } else if st.full {
                    s.full_bytes = s.full_bytes.max(st.bytes);
                } else {
                    s.taken.push((
                        stopped.as_secs_f64() * 1e3,
                        st.bytes,
                        st.stopped.as_secs_f64() * 1e3,
                    ));
                }
                Ok(Some((st, stopped)))
            }
            Err(e) => {
                s.failed += 1;
                Err(e.to_string())
            }
        }
    }

    /// In every-write mode checkpoints follow writes, and a switchover stops the writes: this
    /// takes the checkpoint a switchover waits for (`HotSpare::handover_pending`). Runs
    /// forever on the calling thread, looking every 2 ms.
    pub fn run_handover_watch(&self) {
        loop {
            std::thread::sleep(Duration::from_millis(2));
            if self.hs.handover_pending() {
                if let Err(e) = self.checkpoint(Kind::Commit) {
                    eprintln!("hotspare-kv: the switchover's checkpoint failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The interval checkpointer: runs forever on the calling thread, checkpointing every
    /// `store.cpt_ms` milliseconds (re-read each round: `CONFIG SET hotspare-cpt-ms`).
    pub fn run_interval(&self) {
        let mut next = Instant::now();
        loop {
            let ms = self.store.cpt_ms.load(Ordering::Relaxed);
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
                next = now; // fell behind (a slow checkpoint): do not burst to catch up
            }
            if let Err(e) = self.checkpoint(Kind::Interval) {
                eprintln!("hotspare-kv: checkpoint failed: {e}");
            }
        }
    }
}

fn median_p99(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.5), at(0.99), v[v.len() - 1])
}

impl Durability for HotSpareDurability {
    fn every_write(&self) -> bool {
        self.every_write
    }

    fn may_serve(&self) -> bool {
        self.hs.may_serve()
    }

    fn begin_op(&self) -> Option<Op<'_>> {
        self.every_write.then(|| self.gate.begin())
    }

    fn round_ticket(&self) -> Result<RoundTicket, String> {
        let need = match self.gate.round(self.hs.durable_seq()) {
            // The capture that holds everything failed: what the replies may reveal is in no
            // durable checkpoint, so take a new one (it is full) instead of failing them.
            RoundNeed::Wait(t) if matches!(self.hs.ticket_state(t), TicketState::Failed(_)) => {
                RoundNeed::Commit
            }
            need => need,
        };
        match need {
            RoundNeed::Nothing => Ok(RoundTicket::Release),
            RoundNeed::Wait(t) => Ok(RoundTicket::Wait(t)),
            RoundNeed::Commit => Ok(match self.deferred_commit()? {
                Some(t) => RoundTicket::Committed(t),
                None => RoundTicket::NextCommit,
            }),
        }
    }

    fn deferred_commit(&self) -> Result<Option<Ticket>, String> {
        // Cheap look first (no shard lock taken for nothing); `try_cpt` decides, atomically.
        if !self.hs.can_commit() {
            return Ok(None);
        }
        Ok(self
            .checkpoint(Kind::TryCommit)?
            .map(|(st, _)| Ticket::from_seq(st.seq)))
    }

    fn ticket_state(&self, t: Ticket) -> TicketState {
        self.hs.ticket_state(t)
    }

    fn notifier(&self) -> Option<CommitNotifier> {
        if !self.every_write {
            return None;
        }
        match self.hs.commit_notifier() {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!("hotspare-kv: {e}");
                std::process::exit(1);
            }
        }
    }

    fn cpt_now(&self, mode: CptMode) -> Result<String, String> {
        let kind = match mode {
            CptMode::Durable => Kind::Commit,
            CptMode::Full => Kind::Full,
            CptMode::NoWait => Kind::Interval,
        };
        let (st, stopped) = self
            .checkpoint(kind)?
            .ok_or_else(|| "no checkpoint was taken".to_string())?;
        if mode != CptMode::NoWait {
            self.hs.wait_durable(st.seq).map_err(|e| e.to_string())?;
        }
        Ok(format!(
            "{{\"seq\":{},\"stopped_ms\":{:.3},\"query_ms\":{:.3},\"bytes\":{},\"pages\":{},\"full\":{},\"coalesced\":{}}}",
            st.seq,
            stopped.as_secs_f64() * 1e3,
            st.query.as_secs_f64() * 1e3,
            st.bytes,
            st.pages,
            st.full,
            st.coalesced
        ))
    }

    fn reset_stats(&self) {
        let mut s = self.stats();
        let full = s.full_bytes;
        *s = Stats::default();
        s.full_bytes = full;
    }

    fn info(&self, out: &mut String) {
        let s = self.stats();
        let (med, p99, max) = median_p99(s.taken.iter().map(|x| x.0).collect());
        let (bytes_med, _, _) = median_p99(s.taken.iter().map(|x| x.1 as f64).collect());
        let (cap_med, cap_p99, cap_max) = median_p99(s.taken.iter().map(|x| x.2).collect());
        let (backend, _) = self.hs.backend();
        let resumed = self.hs.resumed();
        out.push_str(&format!(
            "# Hotspare\r\nhotspare_backend:{backend:?}\r\nhotspare_durability:{}\r\nhotspare_pipeline_depth:{}\r\nhotspare_cpt_ms:{}\r\nhotspare_every_write:{}\r\nhotspare_checkpoints:{}\r\nhotspare_coalesced:{}\r\nhotspare_failed:{}\r\nhotspare_stop_ms_median:{med:.3}\r\nhotspare_stop_ms_p99:{p99:.3}\r\nhotspare_stop_ms_max:{max:.3}\r\nhotspare_capture_ms_median:{cap_med:.3}\r\nhotspare_capture_ms_p99:{cap_p99:.3}\r\nhotspare_capture_ms_max:{cap_max:.3}\r\nhotspare_bytes_median:{}\r\nhotspare_full_image_bytes:{}\r\nhotspare_heap_used_bytes:{}\r\nhotspare_heap_in_use_bytes:{}\r\nhotspare_wire_bytes:{}\r\nhotspare_resumed:{}\r\nhotspare_resumed_seq:{}\r\nhotspare_restore_ms:{:.3}\r\n\r\n",
            self.hs.config().durability_level(),
            self.hs.config().depth(),
            self.store.cpt_ms.load(Ordering::Relaxed),
            u8::from(self.every_write),
            s.taken.len(),
            s.coalesced,
            s.failed,
            bytes_med as u64,
            s.full_bytes,
            self.hs.heap().allocated_bytes(),
            // Allocated and not freed, the allocator's free lists walked (all its locks held
            // for the walk): after a FLUSHALL what a resumed server inherited, docs/library.md.
            hotspare::GlobalHeap::check().map_or(0, |st| st.in_use_bytes),
            self.hs.wire_bytes().unwrap_or(0),
            u8::from(resumed.is_some()),
            resumed.map_or(0, |r| r.seq),
            resumed.map_or(0.0, |r| r.restore_time.as_secs_f64() * 1e3),
        ));
    }
}
