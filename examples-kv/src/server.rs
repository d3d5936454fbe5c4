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

use crate::commands::{execute, Client, Ctx, Durability, Effect, RoundTicket};
use crate::resp;
use allocator_api2::alloc::Allocator;
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
            (RoundTicket::Wait(t), _) => self.pending.push_back((end, Some(t))),
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
pub fn serve<A: Allocator + Clone>(
    ctx: &Ctx<'_, A>,
    listener: std::net::TcpListener,
) -> std::io::Result<()> {
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
    let mut events = Events::with_capacity(256);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_token = 0usize;
    // Connections with replies waiting for a ticket.
    let mut waiting: Vec<usize> = Vec::new();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut touched = Vec::new();
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
            for t in touched {
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

fn accept<A: Allocator + Clone>(
    ctx: &Ctx<'_, A>,
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
                conns.insert(
                    t,
                    Conn {
                        stream,
                        rbuf: Vec::new(),
                        wbuf: Vec::new(),
                        released: 0,
                        pending: VecDeque::new(),
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
fn read_and_execute<A: Allocator + Clone>(ctx: &Ctx<'_, A>, c: &mut Conn) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                // The client may have only shut down its sending side: still answer what it sent.
                c.closing = true;
                break;
            }
            Ok(n) => c.rbuf.extend_from_slice(&chunk[..n]),
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
        match resp::parse(&c.rbuf[used..]) {
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

fn close<A: Allocator + Clone>(
    ctx: &Ctx<'_, A>,
    poll: &Poll,
    conns: &mut HashMap<usize, Conn>,
    t: usize,
) {
    if let Some(mut c) = conns.remove(&t) {
        let _ = poll.registry().deregister(&mut c.stream);
        ctx.counters.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
