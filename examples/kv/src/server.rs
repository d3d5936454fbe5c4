//! The event loop: one `mio` poll per serving thread (each polls a clone of the listening socket),
//! connections read and parsed incrementally, replies buffered and written as the socket allows.
//!
//! With `--cpt-every-write` replies leave only once durable, through the library's output
//! commit: at the end of each poll round the replies it produced are tagged with a ticket
//! (the checkpoint taken for them, or an earlier one that already holds everything they could
//! reveal — Remus's rule, `hotspare::OutputGate`), and the loop goes on serving while that
//! checkpoint is in flight. The library's commit notifier wakes the loop when checkpoints
//! end; tagged bytes are then written in order. If a checkpoint fails, the connections whose
//! replies waited for it are closed unanswered: a client is never told OK for a write that is
//! not durable.

use crate::commands::{disconnect, execute, Client, Ctx, Durability, Effect, RoundTicket};
use crate::resp;
use hotspare::{Ticket, TicketState};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

const LISTENER: Token = Token(usize::MAX);
const COMMITS: Token = Token(usize::MAX - 1);
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);
/// Initial size of a connection's read and write buffers.
const BUF: usize = 16 * 1024;

/// Runs `f` with its allocations outside the checkpoint heap (ordinary memory with `--plain`).
fn scratch<R>(f: impl FnOnce() -> R) -> R {
    hotspare::GlobalHeap::outside(f)
}

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Bytes at the front of `wbuf` that may be written now.
    released: usize,
    /// Replies waiting for durability: (end offset in `wbuf`, ticket — `None`: the next
    /// checkpoint, deferred while the pipeline is full), in order.
    pending: VecDeque<(usize, Option<Ticket>)>,
    /// Replies were added in this round and are not tagged yet.
    untagged: bool,
    /// Interested in WRITABLE (the last flush was incomplete).
    want_write: bool,
    client: Client,
    closing: bool,
}

impl Conn {
    /// Everything is sent and nothing waits.
    fn drained(&self) -> bool {
        self.wbuf.is_empty() && self.pending.is_empty()
    }

    /// Releases the replies whose tickets are durable; `false` if one failed (the connection
    /// must then be closed unanswered).
    fn release(&mut self, dur: &dyn Durability) -> bool {
        while let Some(&(end, Some(t))) = self.pending.front() {
            match dur.ticket_state(t) {
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

    /// Tags the replies of this round with what they wait for.
    fn tag(&mut self, wait: RoundTicket) {
        self.untagged = false;
        let end = self.wbuf.len();
        let last = self.pending.back().map(|p| p.1);
        match (wait, last) {
            (RoundTicket::Wait(t) | RoundTicket::Committed(t), _) => {
                self.pending.push_back((end, Some(t)))
            }
            (RoundTicket::NextCommit, _) => self.pending.push_back((end, None)),
            // Free to go once the replies before them are.
            (RoundTicket::Release, Some(t)) => self.pending.push_back((end, t)),
            (RoundTicket::Release, None) => self.released = end,
        }
    }

    /// Gives the deferred commit's ticket to the replies that waited for it.
    fn assign(&mut self, t: Ticket) {
        for p in self.pending.iter_mut().filter(|p| p.1.is_none()) {
            p.1 = Some(t);
        }
    }

    fn owes_commit(&self) -> bool {
        self.pending.iter().any(|p| p.1.is_none())
    }
}

/// Serves connections from `listener` until the process ends.
pub fn serve(ctx: &Ctx<'_>, listener: std::net::TcpListener) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let every_write = ctx.dur.every_write();
    let notifier = ctx.dur.notifier();
    if let Some(n) = &notifier {
        poll.registry()
            .register(&mut SourceFd(&n.as_raw_fd()), COMMITS, Interest::READABLE)?;
    }
    // The loop's own memory — events, connections and their buffers, parsed requests — is not
    // state: allocated outside the checkpoint heap (`GlobalHeap::outside`; it stays outside as
    // it grows), it is never captured and writes no heap page per request.
    let (mut events, mut conns, mut touched, mut waiting) = scratch(|| {
        (
            Events::with_capacity(256),
            HashMap::<usize, Conn>::with_capacity(64),
            Vec::<usize>::with_capacity(64),
            Vec::<usize>::with_capacity(64),
        )
    });
    let mut next_token = 0usize;
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        touched.clear();
        let mut commits_ended = false;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(ctx, &poll, &mut listener, &mut conns, &mut next_token);
                continue;
            }
            if ev.token() == COMMITS {
                commits_ended = true;
                continue;
            }
            let t = ev.token().0;
            let Some(c) = conns.get_mut(&t) else { continue };
            if ev.is_readable() && !c.closing {
                read_and_execute(ctx, c);
                if every_write && c.untagged {
                    touched.push(t);
                    continue;
                }
            }
            if !every_write {
                c.released = c.wbuf.len();
            }
            flush(ctx.dur, &poll, t, c);
            if c.closing && c.drained() {
                close(ctx, &poll, &mut conns, t);
            }
        }
        if !touched.is_empty() {
            let ticket = ctx.dur.round_ticket();
            if let Err(e) = &ticket {
                eprintln!(
                    "hotspare-kv: checkpoint failed, closing {} unanswered clients: {e}",
                    touched.len()
                );
            }
            if let Ok(RoundTicket::Committed(t)) = ticket {
                // Taken after every reply that waits for a deferred commit: it is that commit
                // (else the next wake would take another checkpoint for them).
                for c in waiting.iter().chain(&touched) {
                    if let Some(c) = conns.get_mut(c) {
                        c.assign(t);
                    }
                }
            }
            for t in touched.drain(..) {
                let Some(c) = conns.get_mut(&t) else { continue };
                match &ticket {
                    Ok(tk) => c.tag(*tk),
                    Err(_) => {
                        close(ctx, &poll, &mut conns, t);
                        continue;
                    }
                }
                if c.pending.is_empty() {
                    // Nothing to wait for: out now.
                    flush(ctx.dur, &poll, t, c);
                    if c.closing && c.drained() {
                        close(ctx, &poll, &mut conns, t);
                    }
                } else {
                    waiting.push(t);
                    // A checkpoint may have ended meanwhile: look now, not at the next wake.
                    commits_ended = true;
                }
            }
        }
        if commits_ended {
            if let Some(n) = &notifier {
                n.clear();
            }
            waiting.sort_unstable();
            waiting.dedup();
            // A commit deferred because the pipeline was full: take it once there is room; it
            // carries everything executed meanwhile.
            if waiting
                .iter()
                .any(|t| conns.get(t).is_some_and(Conn::owes_commit))
            {
                match ctx.dur.deferred_commit() {
                    Ok(Some(ticket)) => {
                        for t in &waiting {
                            if let Some(c) = conns.get_mut(t) {
                                c.assign(ticket);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!(
                            "hotspare-kv: checkpoint failed, closing unanswered clients: {e}"
                        );
                        waiting.retain(|&t| {
                            if conns.get(&t).is_some_and(Conn::owes_commit) {
                                close(ctx, &poll, &mut conns, t);
                                return false;
                            }
                            true
                        });
                    }
                }
            }
            waiting.retain(|&t| {
                let Some(c) = conns.get_mut(&t) else {
                    return false;
                };
                if !c.release(ctx.dur) {
                    close(ctx, &poll, &mut conns, t);
                    return false;
                }
                flush(ctx.dur, &poll, t, c);
                if c.closing && c.drained() {
                    close(ctx, &poll, &mut conns, t);
                    return false;
                }
                !c.pending.is_empty()
            });
        }
    }
}

fn accept(
    ctx: &Ctx<'_>,
    poll: &Poll,
    listener: &mut TcpListener,
    conns: &mut HashMap<usize, Conn>,
    next_token: &mut usize,
) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nodelay(true);
                let t = *next_token;
                *next_token = next_token.wrapping_add(1) % (usize::MAX - 1);
                if poll
                    .registry()
                    .register(&mut stream, Token(t), Interest::READABLE)
                    .is_err()
                {
                    continue;
                }
                ctx.counters.clients.fetch_add(1, Ordering::Relaxed);
                ctx.counters.connections.fetch_add(1, Ordering::Relaxed);
                let (rbuf, wbuf, pending) = scratch(|| {
                    let v = || Vec::with_capacity(BUF);
                    (v(), v(), VecDeque::with_capacity(16))
                });
                scratch(|| conns.reserve(1));
                conns.insert(
                    t,
                    Conn {
                        stream,
                        rbuf,
                        wbuf,
                        released: 0,
                        pending,
                        untagged: false,
                        want_write: false,
                        client: Client {
                            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
                            ..Client::default()
                        },
                        closing: false,
                    },
                );
            }
            // Another serving thread took it, or the backlog is empty.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and the like: report, and retry on the next readiness event.
                eprintln!("hotspare-kv: accept: {e}");
                return;
            }
        }
    }
}

/// Reads everything available and runs every complete request.
fn read_and_execute(ctx: &Ctx<'_>, c: &mut Conn) {
    let mut chunk = [0u8; BUF];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                // The client may have only shut down its sending side: still answer what it sent.
                c.closing = true;
                break;
            }
            Ok(n) => scratch(|| c.rbuf.extend_from_slice(&chunk[..n])),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                c.closing = true;
                c.wbuf.clear();
                c.pending.clear();
                c.released = 0;
                return;
            }
        }
    }
    let mut used = 0;
    while !c.client.quit {
        match scratch(|| resp::parse(&c.rbuf[used..])) {
            Ok(Some((args, n))) => {
                used += n;
                let op = ctx.dur.begin_op();
                let effect = execute(ctx, &mut c.client, &args, &mut c.wbuf);
                if let Some(op) = op {
                    op.end(effect == Effect::Write);
                }
                c.untagged = true;
            }
            Ok(None) => break,
            Err(resp::ProtocolError(why)) => {
                resp::reply::error(&mut c.wbuf, &format!("ERR Protocol error: {why}"));
                c.closing = true;
                used = c.rbuf.len();
                break;
            }
        }
    }
    c.rbuf.drain(..used);
    if c.client.quit {
        c.closing = true;
    }
}

/// Writes what the socket takes. Replies to data commands leave only while this server may
/// serve: a primary stopped between running a command and writing its reply (or cut off from
/// its spare meanwhile) closes the connection unanswered instead — the client retries against
/// whoever serves now.
fn flush(dur: &dyn Durability, poll: &Poll, t: usize, c: &mut Conn) {
    let ready = c.released.min(c.wbuf.len());
    if c.client.answered_data && ready > 0 && !dur.may_serve() {
        c.wbuf.clear();
        c.pending.clear();
        c.released = 0;
        c.closing = true;
        return;
    }
    let mut done = 0;
    while done < ready {
        match c.stream.write(&c.wbuf[done..ready]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                c.closing = true;
                c.wbuf.clear();
                c.pending.clear();
                c.released = 0;
                return;
            }
        }
    }
    c.wbuf.drain(..done);
    c.released -= done;
    for p in &mut c.pending {
        p.0 -= done;
    }
    if c.wbuf.is_empty() {
        c.client.answered_data = false;
    }
    let want_write = c.released > 0;
    if want_write != c.want_write {
        let interest = if want_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = poll
            .registry()
            .reregister(&mut c.stream, Token(t), interest);
        c.want_write = want_write;
    }
}

fn close(ctx: &Ctx<'_>, poll: &Poll, conns: &mut HashMap<usize, Conn>, t: usize) {
    if let Some(mut c) = conns.remove(&t) {
        let _ = poll.registry().deregister(&mut c.stream);
        disconnect(ctx, &mut c.client);
        ctx.counters.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{Counters, CptMode};
    use crate::store::Store;
    use hotspare::Ticket;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Every-write persistence whose answers the test scripts: what each round needs, whether
    /// a deferred commit finds room, which tickets are durable.
    #[derive(Default)]
    struct Scripted {
        rounds: Mutex<VecDeque<RoundTicket>>,
        rounds_done: AtomicU64,
        room: AtomicBool,
        deferred_asked: AtomicU64,
        /// Checkpoints taken by `deferred_commit` (tickets 101, 102, …).
        deferred_taken: AtomicU64,
        durable: AtomicU64,
    }

    impl Durability for Scripted {
        fn every_write(&self) -> bool {
            true
        }
        fn round_ticket(&self) -> Result<RoundTicket, String> {
            let r = self
                .rounds
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted round");
            self.rounds_done.fetch_add(1, Ordering::SeqCst);
            Ok(r)
        }
        fn deferred_commit(&self) -> Result<Option<Ticket>, String> {
            self.deferred_asked.fetch_add(1, Ordering::SeqCst);
            if !self.room.load(Ordering::SeqCst) {
                return Ok(None);
            }
            let n = self.deferred_taken.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Some(Ticket::from_seq(100 + n)))
        }
        fn ticket_state(&self, t: Ticket) -> TicketState {
            if t.seq() <= self.durable.load(Ordering::SeqCst) {
                TicketState::Durable
            } else {
                TicketState::Pending
            }
        }
        fn cpt_now(&self, _mode: CptMode) -> Result<String, String> {
            Err("scripted".into())
        }
        fn reset_stats(&self) {}
        fn info(&self, _out: &mut String) {}
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "never happened: {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn reply(s: &mut std::net::TcpStream) -> String {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => format!("no reply: {e}"),
        }
    }

    /// A connection whose replies wait for a deferred commit (the pipeline was full) gets the
    /// commit that a later round takes: no second checkpoint is taken for it.
    #[test]
    fn a_commit_taken_in_a_round_serves_the_replies_owed_a_deferred_commit() {
        let dur: &'static Scripted = Box::leak(Box::default());
        dur.rounds.lock().unwrap().extend([
            RoundTicket::NextCommit,
            RoundTicket::Committed(Ticket::from_seq(7)),
        ]);
        let store: &'static Store = Box::leak(Box::new(Store::new(0)));
        let counters: &'static Counters = Box::leak(Box::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let ctx = Ctx {
                store,
                dur,
                counters,
                started: Instant::now(),
                port: addr.port(),
            };
            let _ = serve(&ctx, listener);
        });
        let timeout = Some(Duration::from_secs(5));
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        a.set_read_timeout(timeout).unwrap();
        let mut b = std::net::TcpStream::connect(addr).unwrap();
        b.set_read_timeout(timeout).unwrap();
        // Round 1: A's write needs a commit and the pipeline is full: A owes one.
        a.write_all(b"SET a 1\r\n").unwrap();
        wait_for("round 1 and its deferred commit", || {
            dur.rounds_done.load(Ordering::SeqCst) == 1
                && dur.deferred_asked.load(Ordering::SeqCst) == 1
        });
        // Room again; round 2 takes checkpoint 7 for B's write, which also holds A's.
        dur.room.store(true, Ordering::SeqCst);
        dur.durable.store(7, Ordering::SeqCst);
        b.write_all(b"SET b 1\r\n").unwrap();
        assert_eq!(reply(&mut b), "+OK\r\n");
        assert_eq!(
            reply(&mut a),
            "+OK\r\n",
            "A's reply waits for another commit"
        );
        assert_eq!(
            dur.deferred_taken.load(Ordering::SeqCst),
            0,
            "a second checkpoint was taken for A"
        );
    }
}
