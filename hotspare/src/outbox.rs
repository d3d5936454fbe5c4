//! Output commit for an event loop: each connection's replies held in an [`Outbox`] with the
//! tickets they wait for, released in order once durable — and, without Hot Spare or without
//! every-write durability, a plain output buffer that lets everything through.
//!
//! A server that acknowledges a write only once a failover cannot lose it must hold every reply
//! until the checkpoint that contains what the reply may reveal is durable (Remus's rule: a
//! reply to a *read* of another connection's write too), without waiting in its loop: it goes
//! on serving while checkpoints are in flight, and one checkpoint per round carries every write
//! of the round (group commit). [`OutputCommit`] is that, once per event loop:
//!
//! * [`OutputCommit::begin`] brackets each request (the gate of Remus's rule), replies go into
//!   the connection's [`Outbox::replies`] (one [`Outbox`] per connection);
//! * every connection an event touched is reported with [`OutputCommit::touched`], and at the
//!   end of the round [`OutputCommit::end_round`] tags the new replies (taking the checkpoint
//!   they need, or deferring it while the pipeline is full), and says which connections may be
//!   flushed and which must be closed unanswered (their checkpoint failed);
//! * the commit notifier (an `eventfd`, [`OutputCommit::register`] with `mio`) wakes the loop
//!   when a checkpoint ends; [`OutputCommit::is_wake`] recognises its event, and the next
//!   `end_round` releases what became durable — polling ticket states, never blocking;
//! * [`OutputCommit::flush`] writes what is released, and closes instead if a reply that reveals
//!   data would leave while this process may not serve (no lease, or fenced).
//!
//! Built with no checkpointer (`OutputCommit::new(None)`: the program runs without Hot Spare) or
//! one that does not hold replies, the same calls pass every reply straight through, so the
//! program has one event loop and no "plain" variant of its persistence.

use crate::checkpointer::{CheckpointerError, Commits, Round};
use crate::{Checkpointer, CommitNotifier, Error, GlobalHeap, Op, Ticket, TicketState};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;

/// One connection's replies: bytes, how much of them may be written, and the tickets the rest
/// wait for.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` that may be written now (when held).
    released: usize,
    /// End of the bytes tagged with what they wait for (released or pending).
    tagged: usize,
    /// Replies waiting: (end offset in `buf`, ticket — `None`: the next checkpoint, deferred
    /// while the pipeline is full), in order.
    pending: VecDeque<(usize, Option<Ticket>)>,
    /// A reply that reveals data is not written yet: it leaves only with the right to serve.
    lease: bool,
}

impl AsMut<Outbox> for Outbox {
    fn as_mut(&mut self) -> &mut Outbox {
        self
    }
}

impl Outbox {
    /// An empty outbox of `capacity` bytes for a new connection (outside the checkpoint heap:
    /// it is not state).
    pub fn with_capacity(capacity: usize) -> Outbox {
        GlobalHeap::outside(|| Outbox {
            buf: Vec::with_capacity(capacity),
            pending: VecDeque::with_capacity(16),
            ..Outbox::default()
        })
    }

    /// Where the program appends its replies.
    pub fn replies(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The replies appended since the last flush include data (not only connection or server
    /// answers that reveal no state): they leave only while this process may serve.
    pub fn needs_lease(&mut self) {
        self.lease = true;
    }

    /// Everything is written and nothing waits.
    pub fn drained(&self) -> bool {
        self.buf.is_empty() && self.pending.is_empty()
    }

    /// Drops every reply, written or not (the connection is going away).
    pub fn discard(&mut self) {
        self.buf.clear();
        self.pending.clear();
        self.released = 0;
        self.tagged = 0;
        self.lease = false;
    }

    /// Replies wait for a checkpoint.
    pub fn is_waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes that may be written now (`hold`: replies wait for durability).
    fn ready(&self, hold: bool) -> usize {
        if hold {
            self.released.min(self.buf.len())
        } else {
            self.buf.len()
        }
    }

    /// Replies were added since the last tag (only asked when replies are held).
    fn untagged(&self) -> bool {
        self.buf.len() > self.tagged
    }

    /// Tags the replies added since the last tag with what they wait for.
    fn tag(&mut self, r: Round) {
        let end = self.buf.len();
        self.tagged = end;
        let last = self.pending.back().map(|p| p.1);
        match (r, last) {
            (Round::Wait(t) | Round::Committed(t), _) => self.pending.push_back((end, Some(t))),
            (Round::NextCommit, _) => self.pending.push_back((end, None)),
            // Free to go once the replies before them are.
            (Round::Release, Some(t)) => self.pending.push_back((end, t)),
            (Round::Release, None) => self.released = end,
        }
    }

    /// Gives a deferred commit's ticket to the replies that waited for it.
    fn assign(&mut self, t: Ticket) {
        for p in self.pending.iter_mut().filter(|p| p.1.is_none()) {
            p.1 = Some(t);
        }
    }

    fn owes_commit(&self) -> bool {
        self.pending.iter().any(|p| p.1.is_none())
    }

    /// Releases the replies whose tickets are durable; `false` if one failed.
    fn release(&mut self, src: &dyn Commits) -> bool {
        while let Some(&(end, Some(t))) = self.pending.front() {
            match src.ticket_state(t) {
                TicketState::Durable => {
                    self.released = self.released.max(end);
                    self.pending.pop_front();
                }
                TicketState::Pending => break,
                TicketState::Failed(_) => return false,
            }
        }
        true
    }

    /// `n` bytes from the front were written.
    fn sent(&mut self, n: usize) {
        self.buf.drain(..n);
        self.released = self.released.saturating_sub(n);
        self.tagged = self.tagged.saturating_sub(n);
        for p in &mut self.pending {
            p.0 -= n;
        }
        if self.buf.is_empty() {
            self.lease = false;
        }
    }
}

/// The connections of an event loop, by the id the loop reports them with.
pub trait Outboxes {
    /// The outbox of connection `id`, if it is still open.
    fn outbox(&mut self, id: usize) -> Option<&mut Outbox>;
}

impl<C: AsMut<Outbox>, S: BuildHasher> Outboxes for HashMap<usize, C, S> {
    fn outbox(&mut self, id: usize) -> Option<&mut Outbox> {
        self.get_mut(&id).map(AsMut::as_mut)
    }
}

/// What [`OutputCommit::end_round`] says about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Released replies may be written: [`OutputCommit::flush`] it.
    Flush,
    /// A checkpoint its replies waited for failed: close it unanswered (a client is never told
    /// OK for a write that is not durable).
    Close,
}

/// What [`OutputCommit::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything released is written (replies may still wait for a checkpoint).
    Done,
    /// The socket took only part: wait for it to be writable.
    Blocked,
    /// The connection failed, or data would leave without the right to serve: close it (its
    /// replies are discarded).
    Close,
}

/// Output commit for one event loop; see the module documentation.
pub struct OutputCommit<'a> {
    src: Option<&'a dyn Commits>,
    /// Replies wait for durability.
    hold: bool,
    notifier: Option<CommitNotifier>,
    token: Option<mio::Token>,
    touched: Vec<usize>,
    waiting: Vec<usize>,
    /// A checkpoint may have ended since the waiting replies were last looked at.
    woken: bool,
}

impl std::fmt::Debug for OutputCommit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputCommit")
            .field("hold", &self.hold)
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl<'a> OutputCommit<'a> {
    /// Output commit through `cp` (`None`: no Hot Spare, everything passes through). Holding
    /// replies (every-write) takes a commit notifier: one per event loop.
    pub fn new(cp: Option<&'a Checkpointer>) -> Result<OutputCommit<'a>, Error> {
        Self::with(cp.map(|c| c as &dyn Commits))
    }

    fn with(src: Option<&'a dyn Commits>) -> Result<OutputCommit<'a>, Error> {
        let hold = src.is_some_and(|s| s.holds());
        let notifier = match src.filter(|_| hold) {
            Some(s) => s.notifier()?,
            None => None,
        };
        // The loop's bookkeeping is not state: outside the heap, it writes no heap page.
        Ok(GlobalHeap::outside(|| OutputCommit {
            src,
            hold,
            notifier,
            token: None,
            touched: Vec::with_capacity(64),
            waiting: Vec::with_capacity(64),
            woken: false,
        }))
    }

    /// Registers the commit notifier with the loop's `mio` registry under `token` (nothing to
    /// register when replies pass through).
    pub fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> std::io::Result<()> {
        if let Some(n) = &self.notifier {
            let fd = n.as_raw_fd();
            registry.register(
                &mut mio::unix::SourceFd(&fd),
                token,
                mio::Interest::READABLE,
            )?;
            self.token = Some(token);
        }
        Ok(())
    }

    /// Whether an event with `token` is the notifier's (then nothing else is to be done with
    /// it: the next [`OutputCommit::end_round`] looks at the waiting replies).
    pub fn is_wake(&mut self, token: mio::Token) -> bool {
        let wake = self.token == Some(token);
        self.woken |= wake;
        wake
    }

    /// Brackets one request: call before it takes any lock on the state, and
    /// [`Op::end`] it with whether it wrote (`None` when replies pass through).
    pub fn begin(&self) -> Option<Op<'a>> {
        self.src.filter(|_| self.hold).map(|s| s.begin())
    }

    /// An event touched connection `id` (it read requests, or became writable).
    pub fn touched(&mut self, id: usize) {
        GlobalHeap::outside(|| self.touched.push(id));
    }

    /// The end of a poll round: tags the replies the round produced (taking the checkpoint
    /// they need), releases what became durable, and appends to `out` which connections to
    /// flush and which to close. An error is the checkpoint that failed (the connections it
    /// leaves unanswered are in `out` as [`Verdict::Close`]).
    pub fn end_round(
        &mut self,
        boxes: &mut impl Outboxes,
        out: &mut Vec<(usize, Verdict)>,
    ) -> Result<(), CheckpointerError> {
        GlobalHeap::outside(|| self.end_round_outside(boxes, out))
    }

    fn end_round_outside(
        &mut self,
        boxes: &mut impl Outboxes,
        out: &mut Vec<(usize, Verdict)>,
    ) -> Result<(), CheckpointerError> {
        let mut failed = None;
        self.touched.sort_unstable();
        self.touched.dedup();
        let src = match self.src.filter(|_| self.hold) {
            Some(s) => s,
            None => {
                out.extend(self.touched.drain(..).map(|id| (id, Verdict::Flush)));
                return Ok(());
            }
        };
        let new_replies = self
            .touched
            .iter()
            .any(|&id| boxes.outbox(id).is_some_and(|o| o.untagged()));
        let round = new_replies.then(|| src.round());
        if let Some(Ok(Round::Committed(t))) = round {
            // Taken after every reply that waits for a deferred commit: it is that commit
            // (else the next wake would take another checkpoint for them).
            for &id in self.waiting.iter().chain(&self.touched) {
                if let Some(o) = boxes.outbox(id) {
                    o.assign(t);
                }
            }
        }
        for id in self.touched.drain(..) {
            let Some(o) = boxes.outbox(id) else { continue };
            if o.untagged() {
                match &round {
                    Some(Ok(r)) => o.tag(*r),
                    _ => {
                        out.push((id, Verdict::Close));
                        continue;
                    }
                }
            }
            if o.is_waiting() {
                self.waiting.push(id);
                // A checkpoint may have ended meanwhile: look now, not at the next wake.
                self.woken = true;
            } else {
                out.push((id, Verdict::Flush));
            }
        }
        if let Some(Err(e)) = round {
            failed = Some(e);
        }
        if std::mem::take(&mut self.woken) {
            if let Some(n) = &self.notifier {
                n.clear();
            }
            self.waiting.sort_unstable();
            self.waiting.dedup();
            // A commit deferred because the pipeline was full: take it once there is room; it
            // carries everything executed meanwhile.
            if self
                .waiting
                .iter()
                .any(|&id| boxes.outbox(id).is_some_and(|o| o.owes_commit()))
            {
                match src.deferred_commit() {
                    Ok(Some(t)) => {
                        for &id in &self.waiting {
                            if let Some(o) = boxes.outbox(id) {
                                o.assign(t);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.waiting.retain(|&id| {
                            if boxes.outbox(id).is_some_and(|o| o.owes_commit()) {
                                out.push((id, Verdict::Close));
                                return false;
                            }
                            true
                        });
                        failed = Some(e);
                    }
                }
            }
            self.waiting.retain(|&id| {
                let Some(o) = boxes.outbox(id) else {
                    return false;
                };
                if !o.release(src) {
                    out.push((id, Verdict::Close));
                    return false;
                }
                out.push((id, Verdict::Flush));
                o.is_waiting()
            });
        }
        failed.map_or(Ok(()), Err)
    }

    /// Whether this process may serve now (always, without Hot Spare).
    pub fn may_serve(&self) -> bool {
        self.src.is_none_or(|s| s.may_serve())
    }

    /// Writes the released replies to `w` as far as it takes them.
    pub fn flush(&self, o: &mut Outbox, w: &mut impl Write) -> Flushed {
        let ready = o.ready(self.hold);
        // A primary stopped between running a command and writing its reply (or cut off from
        // its spare meanwhile) closes the connection unanswered: the client retries against
        // whoever serves now.
        if o.lease && ready > 0 && !self.may_serve() {
            o.discard();
            return Flushed::Close;
        }
        let mut done = 0;
        while done < ready {
            match w.write(&o.buf[done..ready]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    o.discard();
                    return Flushed::Close;
                }
            }
        }
        o.sent(done);
        if o.ready(self.hold) > 0 {
            Flushed::Blocked
        } else {
            Flushed::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OutputGate;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    /// Every-write answers the test scripts: what each round needs, whether a deferred commit
    /// finds room, which tickets are durable or failed, the right to serve.
    #[derive(Default)]
    struct Scripted {
        gate: OutputGate,
        rounds: Mutex<VecDeque<Result<Round, ()>>>,
        room: AtomicBool,
        deferred_asked: AtomicU64,
        /// Checkpoints taken by `deferred_commit` (tickets 101, 102, …).
        deferred_taken: AtomicU64,
        durable: AtomicU64,
        failed_from: AtomicU64,
        no_lease: AtomicBool,
    }

    impl Commits for Scripted {
        fn holds(&self) -> bool {
            true
        }
        fn begin(&self) -> Op<'_> {
            self.gate.begin()
        }
        fn round(&self) -> Result<Round, CheckpointerError> {
            let r = self.rounds.lock().unwrap().pop_front();
            r.expect("a scripted round")
                .map_err(|()| CheckpointerError::Fenced)
        }
        fn deferred_commit(&self) -> Result<Option<Ticket>, CheckpointerError> {
            self.deferred_asked.fetch_add(1, Ordering::SeqCst);
            if !self.room.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let n = self.deferred_taken.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Some(Ticket::from_seq(100 + n)))
        }
        fn ticket_state(&self, t: Ticket) -> TicketState {
            let f = self.failed_from.load(Ordering::SeqCst);
            if t.seq() <= self.durable.load(Ordering::SeqCst) {
                TicketState::Durable
            } else if f != 0 && t.seq() >= f {
                TicketState::Failed("scripted".into())
            } else {
                TicketState::Pending
            }
        }
        fn notifier(&self) -> Result<Option<CommitNotifier>, Error> {
            Ok(None)
        }
        fn may_serve(&self) -> bool {
            !self.no_lease.load(Ordering::SeqCst)
        }
    }

    fn script(rounds: impl IntoIterator<Item = Result<Round, ()>>) -> &'static Scripted {
        let s: &'static Scripted = Box::leak(Box::default());
        s.rounds.lock().unwrap().extend(rounds);
        s
    }

    /// A loop over `src` with connections 1 and 2.
    fn lp(src: Option<&'static Scripted>) -> (OutputCommit<'static>, HashMap<usize, Outbox>) {
        let oc = OutputCommit::with(src.map(|s| s as &dyn Commits)).unwrap();
        let boxes = [
            (1, Outbox::with_capacity(64)),
            (2, Outbox::with_capacity(64)),
        ]
        .into();
        (oc, boxes)
    }

    /// Connection `id` answers `reply`, as a request that `wrote` or not.
    fn request(
        oc: &mut OutputCommit<'_>,
        b: &mut HashMap<usize, Outbox>,
        id: usize,
        reply: &str,
        wrote: bool,
    ) {
        let op = oc.begin();
        b.get_mut(&id)
            .unwrap()
            .replies()
            .extend_from_slice(reply.as_bytes());
        if let Some(op) = op {
            op.end(wrote);
        }
        oc.touched(id);
    }

    /// One round's verdicts, and what flushing the connections told to flush wrote.
    fn round(
        oc: &mut OutputCommit<'_>,
        b: &mut HashMap<usize, Outbox>,
    ) -> (Vec<(usize, Verdict)>, HashMap<usize, String>) {
        let mut out = Vec::new();
        let _ = oc.end_round(b, &mut out);
        let mut written = HashMap::new();
        for &(id, v) in &out {
            if v == Verdict::Flush {
                let mut w = Vec::new();
                assert_ne!(oc.flush(b.get_mut(&id).unwrap(), &mut w), Flushed::Close);
                written
                    .entry(id)
                    .or_insert_with(String::new)
                    .push_str(std::str::from_utf8(&w).unwrap());
            }
        }
        (out, written)
    }

    #[test]
    fn without_hot_spare_replies_pass_straight_through() {
        let (mut oc, mut b) = lp(None);
        assert!(oc.begin().is_none());
        request(&mut oc, &mut b, 1, "+OK\r\n", true);
        let (_, w) = round(&mut oc, &mut b);
        assert_eq!(w[&1], "+OK\r\n");
        assert!(b[&1].drained());
    }

    #[test]
    fn a_reply_leaves_only_once_its_ticket_is_durable_and_in_order() {
        let s = script([
            Ok(Round::Committed(Ticket::from_seq(5))),
            Ok(Round::Release),
        ]);
        let (mut oc, mut b) = lp(Some(s));
        request(&mut oc, &mut b, 1, "+OK\r\n", true);
        let (_, w) = round(&mut oc, &mut b);
        assert!(
            w.values().all(String::is_empty),
            "written before durable: {w:?}"
        );
        // A read whose round needs nothing still waits behind the write before it.
        request(&mut oc, &mut b, 1, "$1\r\n1\r\n", false);
        let (_, w) = round(&mut oc, &mut b);
        assert!(
            w.values().all(String::is_empty),
            "overtook the write: {w:?}"
        );
        s.durable.store(5, Ordering::SeqCst);
        assert!(
            !oc.is_wake(mio::Token(7)),
            "not registered: no token is the notifier's"
        );
        oc.woken = true;
        let (_, w) = round(&mut oc, &mut b);
        assert_eq!(w[&1], "+OK\r\n$1\r\n1\r\n");
        assert!(b[&1].drained());
    }

    /// A connection whose replies wait for a deferred commit (the pipeline was full) gets the
    /// commit that a later round takes: no second checkpoint is taken for it.
    #[test]
    fn a_commit_taken_in_a_round_serves_the_replies_owed_a_deferred_commit() {
        let s = script([
            Ok(Round::NextCommit),
            Ok(Round::Committed(Ticket::from_seq(7))),
        ]);
        let (mut oc, mut b) = lp(Some(s));
        request(&mut oc, &mut b, 1, "+OK\r\n", true);
        let (_, w) = round(&mut oc, &mut b);
        assert!(w.values().all(String::is_empty));
        assert_eq!(
            s.deferred_asked.load(Ordering::SeqCst),
            1,
            "no room asked for"
        );
        s.room.store(true, Ordering::SeqCst);
        s.durable.store(7, Ordering::SeqCst);
        request(&mut oc, &mut b, 2, "+OK\r\n", true);
        let (_, w) = round(&mut oc, &mut b);
        assert_eq!(w.get(&2).map(String::as_str), Some("+OK\r\n"));
        assert_eq!(
            w.get(&1).map(String::as_str),
            Some("+OK\r\n"),
            "1 waits for another commit"
        );
        assert_eq!(
            s.deferred_taken.load(Ordering::SeqCst),
            0,
            "a second checkpoint for 1"
        );
    }

    #[test]
    fn a_deferred_commit_is_taken_once_there_is_room() {
        let s = script([Ok(Round::NextCommit)]);
        let (mut oc, mut b) = lp(Some(s));
        request(&mut oc, &mut b, 1, "+OK\r\n", true);
        round(&mut oc, &mut b);
        s.room.store(true, Ordering::SeqCst);
        oc.woken = true;
        let (_, w) = round(&mut oc, &mut b);
        assert!(w.values().all(String::is_empty), "released before durable");
        assert_eq!(s.deferred_taken.load(Ordering::SeqCst), 1);
        s.durable.store(101, Ordering::SeqCst);
        oc.woken = true;
        let (_, w) = round(&mut oc, &mut b);
        assert_eq!(w[&1], "+OK\r\n");
    }

    #[test]
    fn a_failed_checkpoint_closes_the_connections_that_waited_unanswered() {
        let s = script([Ok(Round::Committed(Ticket::from_seq(3))), Err(())]);
        let (mut oc, mut b) = lp(Some(s));
        request(&mut oc, &mut b, 1, "+OK\r\n", true);
        round(&mut oc, &mut b);
        s.failed_from.store(3, Ordering::SeqCst);
        oc.woken = true;
        let (v, w) = round(&mut oc, &mut b);
        assert_eq!(v, [(1, Verdict::Close)]);
        assert!(w.is_empty());
        // A round whose checkpoint cannot be taken closes its connections too.
        request(&mut oc, &mut b, 2, "+OK\r\n", true);
        let mut out = Vec::new();
        assert!(oc.end_round(&mut b, &mut out).is_err());
        assert_eq!(out, [(2, Verdict::Close)]);
    }

    #[test]
    fn data_leaves_only_with_the_right_to_serve() {
        let s = script([Ok(Round::Release), Ok(Round::Release)]);
        let (mut oc, mut b) = lp(Some(s));
        s.no_lease.store(true, Ordering::SeqCst);
        // A reply that reveals no data (PING) still leaves.
        request(&mut oc, &mut b, 1, "+PONG\r\n", false);
        let (_, w) = round(&mut oc, &mut b);
        assert_eq!(w[&1], "+PONG\r\n");
        request(&mut oc, &mut b, 1, "$1\r\n1\r\n", false);
        b.get_mut(&1).unwrap().needs_lease();
        let mut out = Vec::new();
        oc.end_round(&mut b, &mut out).unwrap();
        assert_eq!(out, [(1, Verdict::Flush)]);
        let mut w = Vec::new();
        assert_eq!(oc.flush(b.get_mut(&1).unwrap(), &mut w), Flushed::Close);
        assert!(w.is_empty() && b[&1].drained());
    }

    #[test]
    fn a_socket_that_takes_part_is_blocked_and_the_rest_follows() {
        struct Two(Vec<u8>);
        impl Write for Two {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.0.len() >= 2 {
                    return Err(ErrorKind::WouldBlock.into());
                }
                let n = b.len().min(2);
                self.0.extend_from_slice(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (oc, _) = lp(None);
        let mut o = Outbox::with_capacity(8);
        o.replies().extend_from_slice(b"+OK\r\n");
        let mut w = Two(Vec::new());
        assert_eq!(oc.flush(&mut o, &mut w), Flushed::Blocked);
        w.0.clear();
        assert_eq!(oc.flush(&mut o, &mut w), Flushed::Blocked);
        w.0.clear();
        assert_eq!(oc.flush(&mut o, &mut w), Flushed::Done);
        assert!(o.drained());
    }

    /// A model of the library behind the output commit: tickets issued in order, durable up
    /// to one number, some failed, a pipeline with or without room, the right to serve; each
    /// round's answer drawn at random.
    #[derive(Default)]
    struct Model {
        gate: OutputGate,
        issued: AtomicU64,
        durable: AtomicU64,
        failed: Mutex<std::collections::BTreeSet<u64>>,
        room: AtomicBool,
        serve: AtomicBool,
        /// What the next `round` answers: 0 Release, 1 Wait(newest), 2 commit, 3 error.
        next: AtomicU64,
        /// The next `deferred_commit` fails.
        deferred_err: AtomicBool,
        /// What the last `round` answered.
        last: Mutex<Option<Round>>,
    }

    impl Commits for Model {
        fn holds(&self) -> bool {
            true
        }
        fn begin(&self) -> Op<'_> {
            self.gate.begin()
        }
        fn round(&self) -> Result<Round, CheckpointerError> {
            let r = match self.next.load(Ordering::SeqCst) {
                0 => Round::Release,
                1 => match self.issued.load(Ordering::SeqCst) {
                    0 => Round::Release,
                    t => Round::Wait(Ticket::from_seq(t)),
                },
                2 => match self.deferred_commit()? {
                    Some(t) => Round::Committed(t),
                    None => Round::NextCommit,
                },
                _ => return Err(CheckpointerError::Fenced),
            };
            *self.last.lock().unwrap() = Some(r);
            Ok(r)
        }
        fn deferred_commit(&self) -> Result<Option<Ticket>, CheckpointerError> {
            if self.deferred_err.swap(false, Ordering::SeqCst) {
                return Err(CheckpointerError::Fenced);
            }
            if !self.room.load(Ordering::SeqCst) {
                return Ok(None);
            }
            Ok(Some(Ticket::from_seq(
                self.issued.fetch_add(1, Ordering::SeqCst) + 1,
            )))
        }
        fn ticket_state(&self, t: Ticket) -> TicketState {
            if t.seq() <= self.durable.load(Ordering::SeqCst) {
                TicketState::Durable
            } else if self.failed.lock().unwrap().contains(&t.seq()) {
                TicketState::Failed("model".into())
            } else {
                TicketState::Pending
            }
        }
        fn notifier(&self) -> Result<Option<CommitNotifier>, Error> {
            Ok(None)
        }
        fn may_serve(&self) -> bool {
            self.serve.load(Ordering::SeqCst)
        }
    }

    /// What a reply waits for, as the round that tagged it said.
    #[derive(Debug, Clone, Copy)]
    enum Need {
        Nothing,
        Ticket(u64),
        /// A ticket issued after this one.
        After(u64),
    }

    /// One connection as the model sees it: every reply appended (its end, what it needs,
    /// whether it reveals data), what reached the client.
    #[derive(Default)]
    struct Client {
        replies: Vec<(usize, Option<Need>, bool)>,
        all: Vec<u8>,
        got: Vec<u8>,
        closed: bool,
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A socket that takes at most `cap` bytes, then says EAGAIN.
    struct Sock<'a>(&'a mut Vec<u8>, usize);
    impl Write for Sock<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.1 == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.1).min(3);
            self.1 -= n;
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// One random run of three connections: requests (pipelined behind held replies), rounds
    /// answered at random, tickets becoming durable or failing, partial writes and EAGAIN, the
    /// right to serve lost and regained. Checks at every write that each byte reaching a client
    /// is the next of its replies, that a reply leaves only once what it needs is durable, and
    /// that data leaves only while the process may serve; at the end (no faults any more, room
    /// in the pipeline, everything durable) that every connection left open got every reply,
    /// and that a run without faults closed none.
    fn model_run(seed: u64, faults: bool) {
        let m: &'static Model = Box::leak(Box::default());
        m.serve.store(true, Ordering::SeqCst);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut oc = OutputCommit::with(Some(m as &dyn Commits)).unwrap();
        let mut boxes: HashMap<usize, Outbox> =
            (0..3).map(|i| (i, Outbox::with_capacity(16))).collect();
        let mut cl: Vec<Client> = (0..3).map(|_| Client::default()).collect();
        let mut n = 0u64;
        let mut out = Vec::new();
        let mut closes = 0;
        let end_round = |oc: &mut OutputCommit<'_>,
                         boxes: &mut HashMap<usize, Outbox>,
                         cl: &mut Vec<Client>,
                         rng: &mut Rng,
                         out: &mut Vec<(usize, Verdict)>,
                         closes: &mut i32| {
            *m.last.lock().unwrap() = None;
            let issued = m.issued.load(Ordering::SeqCst);
            let _ = oc.end_round(boxes, out);
            let last = *m.last.lock().unwrap();
            for c in cl.iter_mut() {
                for r in c.replies.iter_mut().filter(|r| r.1.is_none()) {
                    r.1 = Some(match last {
                        Some(Round::Release) => Need::Nothing,
                        Some(Round::Wait(t) | Round::Committed(t)) => Need::Ticket(t.seq()),
                        Some(Round::NextCommit) => Need::After(issued),
                        // The round failed: the connection must be closed, nothing written.
                        None => Need::Ticket(u64::MAX),
                    });
                }
            }
            for (id, v) in out.drain(..) {
                let c = &mut cl[id];
                if c.closed {
                    // As the server does: a verdict after a Close of the same round.
                    continue;
                }
                if v == Verdict::Close {
                    c.closed = true;
                    *closes += 1;
                    boxes.remove(&id);
                    continue;
                }
                let Some(o) = boxes.get_mut(&id) else {
                    continue;
                };
                let before = c.got.len();
                let cap = rng.below(12) as usize;
                let f = oc.flush(o, &mut Sock(&mut c.got, cap));
                let durable = m.durable.load(Ordering::SeqCst);
                let serve = m.serve.load(Ordering::SeqCst);
                assert_eq!(
                    c.got[..],
                    c.all[..c.got.len()],
                    "seed {seed}: out of order or foreign bytes"
                );
                for &(end, need, data) in &c.replies {
                    let start = c.replies.iter().map(|r| r.0).filter(|&e| e < end).max();
                    let start = start.unwrap_or(0);
                    if start >= c.got.len() || end <= before || before == c.got.len() {
                        continue;
                    }
                    let ok = match need.expect("tagged before written") {
                        Need::Nothing => true,
                        Need::Ticket(t) => t <= durable,
                        Need::After(k) => durable > k,
                    };
                    assert!(
                        ok,
                        "seed {seed}: a reply needing {need:?} left at durable {durable}"
                    );
                    assert!(
                        serve || !data,
                        "seed {seed}: data left without the right to serve"
                    );
                }
                if f == Flushed::Close {
                    c.closed = true;
                    *closes += 1;
                    boxes.remove(&id);
                }
            }
        };
        for _ in 0..400 {
            match rng.below(10) {
                0..=3 => {
                    let id = rng.below(3) as usize;
                    if cl[id].closed {
                        continue;
                    }
                    let o = boxes.get_mut(&id).unwrap();
                    let op = oc.begin().expect("held");
                    n += 1;
                    let reply = format!("<{n}>");
                    o.replies().extend_from_slice(reply.as_bytes());
                    let data = rng.below(2) == 0;
                    if data {
                        o.needs_lease();
                    }
                    op.end(rng.below(2) == 0);
                    let c = &mut cl[id];
                    c.all.extend_from_slice(reply.as_bytes());
                    c.replies.push((c.all.len(), None, data));
                    oc.touched(id);
                    if rng.below(3) == 0 {
                        // More requests of the same round.
                        continue;
                    }
                    m.next.store(
                        match rng.below(20) {
                            0 if faults => 3,
                            x => x % 3,
                        },
                        Ordering::SeqCst,
                    );
                    end_round(
                        &mut oc,
                        &mut boxes,
                        &mut cl,
                        &mut rng,
                        &mut out,
                        &mut closes,
                    );
                }
                4 => {
                    // Writable, or a wake with nothing read.
                    let id = rng.below(3) as usize;
                    if !cl[id].closed {
                        oc.touched(id);
                    }
                    end_round(
                        &mut oc,
                        &mut boxes,
                        &mut cl,
                        &mut rng,
                        &mut out,
                        &mut closes,
                    );
                }
                5 | 6 => {
                    let (d, i) = (
                        m.durable.load(Ordering::SeqCst),
                        m.issued.load(Ordering::SeqCst),
                    );
                    if d < i {
                        m.durable.store(d + 1 + rng.below(i - d), Ordering::SeqCst);
                    }
                    oc.woken = true;
                    end_round(
                        &mut oc,
                        &mut boxes,
                        &mut cl,
                        &mut rng,
                        &mut out,
                        &mut closes,
                    );
                }
                7 => m.room.store(rng.below(2) == 0, Ordering::SeqCst),
                8 if faults => {
                    let (d, i) = (
                        m.durable.load(Ordering::SeqCst),
                        m.issued.load(Ordering::SeqCst),
                    );
                    match rng.below(3) {
                        0 if d < i => {
                            m.failed.lock().unwrap().insert(d + 1 + rng.below(i - d));
                        }
                        1 => m.serve.store(rng.below(2) == 0, Ordering::SeqCst),
                        _ => m.deferred_err.store(true, Ordering::SeqCst),
                    }
                    oc.woken = true;
                    end_round(
                        &mut oc,
                        &mut boxes,
                        &mut cl,
                        &mut rng,
                        &mut out,
                        &mut closes,
                    );
                }
                _ => {}
            }
        }
        // No faults from here on: everything still open must arrive.
        m.serve.store(true, Ordering::SeqCst);
        m.room.store(true, Ordering::SeqCst);
        m.deferred_err.store(false, Ordering::SeqCst);
        m.next.store(0, Ordering::SeqCst);
        for _ in 0..200 {
            m.durable
                .store(m.issued.load(Ordering::SeqCst), Ordering::SeqCst);
            oc.woken = true;
            for (id, c) in cl.iter().enumerate() {
                if !c.closed {
                    oc.touched(id);
                }
            }
            end_round(
                &mut oc,
                &mut boxes,
                &mut cl,
                &mut rng,
                &mut out,
                &mut closes,
            );
        }
        for (id, c) in cl.iter().enumerate() {
            if !c.closed {
                assert_eq!(
                    c.got, c.all,
                    "seed {seed}: connection {id} never got everything"
                );
                assert!(boxes[&id].drained(), "seed {seed}: {id} not drained");
            }
        }
        if !faults {
            assert_eq!(
                closes, 0,
                "seed {seed}: a connection closed without a fault"
            );
        }
    }

    #[test]
    fn a_model_of_rounds_tickets_failures_and_partial_writes_never_releases_early() {
        for seed in 0..1000 {
            model_run(seed, false);
            model_run(seed, true);
        }
    }
}
