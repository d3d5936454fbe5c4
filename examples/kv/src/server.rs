//! The event loop: one `mio` poll per serving thread (each polls a clone of the listening socket),
//! connections read and parsed incrementally, replies buffered and written as the socket allows.
//!
//! Replies go through the library's output commit (`hotspare::OutputCommit`): with
//! `--cpt-every-write` they leave only once durable — at the end of each poll round the replies
//! it produced are tagged with a ticket (the checkpoint taken for them, or an earlier one that
//! already holds everything they could reveal — Remus's rule), the loop goes on serving while
//! that checkpoint is in flight, and the commit notifier wakes it when checkpoints end. If a
//! checkpoint fails, the connections whose replies waited for it are closed unanswered: a client
//! is never told OK for a write that is not durable. Otherwise (and with `--plain`) replies pass
//! straight through the same calls.

use crate::commands::{disconnect, execute, Client, Ctx, Effect};
use crate::resp;
use hotspare::{Flushed, Outbox, OutputCommit, Verdict};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read};
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
    /// Replies, held until durable with `--cpt-every-write`.
    out: Outbox,
    /// Interested in WRITABLE (the last flush was incomplete).
    want_write: bool,
    client: Client,
    closing: bool,
}

impl AsMut<Outbox> for Conn {
    fn as_mut(&mut self) -> &mut Outbox {
        &mut self.out
    }
}

/// Serves connections from `listener` until the process ends.
pub fn serve(ctx: &Ctx<'_>, listener: std::net::TcpListener) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut commits = OutputCommit::new(ctx.hs).map_err(std::io::Error::other)?;
    commits.register(poll.registry(), COMMITS)?;
    // The loop's own memory — events, connections and their buffers, parsed requests — is not
    // state: allocated outside the checkpoint heap (`GlobalHeap::outside`; it stays outside as
    // it grows), it is never captured and writes no heap page per request.
    let (mut events, mut conns, mut ready) = scratch(|| {
        (
            Events::with_capacity(256),
            HashMap::<usize, Conn>::with_capacity(64),
            Vec::with_capacity(64),
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
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(ctx, &poll, &mut listener, &mut conns, &mut next_token);
                continue;
            }
            if commits.is_wake(ev.token()) {
                continue;
            }
            let t = ev.token().0;
            let Some(c) = conns.get_mut(&t) else { continue };
            if ev.is_readable() && !c.closing {
                read_and_execute(ctx, &commits, c);
            }
            commits.touched(t);
        }
        if let Err(e) = commits.end_round(&mut conns, &mut ready) {
            eprintln!("hotspare-kv: checkpoint failed, closing unanswered clients: {e}");
        }
        for (t, verdict) in ready.drain(..) {
            let Some(c) = conns.get_mut(&t) else { continue };
            if verdict == Verdict::Flush {
                flush(&commits, &poll, t, c);
            }
            if verdict == Verdict::Close || c.closing && c.out.drained() {
                close(ctx, &poll, &mut conns, t);
            }
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
                let rbuf = scratch(|| Vec::with_capacity(BUF));
                scratch(|| conns.reserve(1));
                conns.insert(
                    t,
                    Conn {
                        stream,
                        rbuf,
                        out: Outbox::with_capacity(BUF),
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
fn read_and_execute(ctx: &Ctx<'_>, commits: &OutputCommit<'_>, c: &mut Conn) {
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
                c.out.discard();
                return;
            }
        }
    }
    let mut used = 0;
    while !c.client.quit {
        match scratch(|| resp::parse(&c.rbuf[used..])) {
            Ok(Some((args, n))) => {
                used += n;
                let op = commits.begin();
                let effect = execute(ctx, &mut c.client, &args, c.out.replies());
                if let Some(op) = op {
                    op.end(effect == Effect::Write);
                }
                if std::mem::take(&mut c.client.answered_data) {
                    c.out.needs_lease();
                }
            }
            Ok(None) => break,
            Err(resp::ProtocolError(why)) => {
                resp::reply::error(c.out.replies(), &format!("ERR Protocol error: {why}"));
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

/// Writes what the socket takes of the released replies. A reply to a data command leaves only
/// while this server may serve: otherwise the connection is closed unanswered
/// (`hotspare::OutputCommit::flush`) — the client retries against whoever serves now.
fn flush(commits: &OutputCommit<'_>, poll: &Poll, t: usize, c: &mut Conn) {
    let want_write = match commits.flush(&mut c.out, &mut c.stream) {
        Flushed::Close => {
            c.closing = true;
            return;
        }
        Flushed::Blocked => true,
        Flushed::Done => false,
    };
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
