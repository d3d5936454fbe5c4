//! The event loop: one `mio` poll per serving thread (each polls a clone of the listening socket),
//! connections read and parsed incrementally, replies buffered and written as the socket allows.
//!
//! With `--cpt-every-write` the loop is a group commit: the replies to every write read in one
//! poll round are held, one checkpoint makes all of them durable, and only then are they sent.
//! If that checkpoint fails, the held connections are closed unanswered: a client is never told
//! OK for a write that is not durable.

use crate::commands::{execute, Client, Ctx, Durability, Effect};
use crate::resp;
use allocator_api2::alloc::Allocator;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

const LISTENER: Token = Token(usize::MAX);
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Replies to writes are in `wbuf`, waiting for the group commit.
    held: bool,
    /// Interested in WRITABLE (the last flush was incomplete).
    want_write: bool,
    client: Client,
    closing: bool,
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
    let mut events = Events::with_capacity(256);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_token = 0usize;
    let every_write = ctx.dur.every_write();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut held = Vec::new();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(ctx, &poll, &mut listener, &mut conns, &mut next_token);
                continue;
            }
            let t = ev.token().0;
            let Some(c) = conns.get_mut(&t) else { continue };
            if ev.is_readable() && !c.closing {
                let wrote = read_and_execute(ctx, c);
                if wrote && every_write && !c.held {
                    c.held = true;
                    held.push(t);
                }
            }
            if !c.held {
                flush(ctx.dur, &poll, t, c);
            }
            if c.closing && c.wbuf.is_empty() && !c.held {
                close(ctx, &poll, &mut conns, t);
            }
        }
        if held.is_empty() {
            continue;
        }
        let committed = ctx.dur.commit();
        if let Err(e) = &committed {
            eprintln!(
                "hotspare-kv: checkpoint failed, closing {} unanswered clients: {e}",
                held.len()
            );
        }
        for t in held {
            let Some(c) = conns.get_mut(&t) else { continue };
            c.held = false;
            if committed.is_err() {
                close(ctx, &poll, &mut conns, t);
                continue;
            }
            flush(ctx.dur, &poll, t, c);
            if c.closing && c.wbuf.is_empty() {
                close(ctx, &poll, &mut conns, t);
            }
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
                        held: false,
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

/// Reads everything available and runs every complete request; whether any of them wrote.
fn read_and_execute<A: Allocator + Clone>(ctx: &Ctx<'_, A>, c: &mut Conn) -> bool {
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
                return false;
            }
        }
    }
    let mut wrote = false;
    let mut used = 0;
    while !c.client.quit {
        match resp::parse(&c.rbuf[used..]) {
            Ok(Some((args, n))) => {
                used += n;
                wrote |= execute(ctx, &mut c.client, &args, &mut c.wbuf) == Effect::Write;
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
    wrote
}

/// Writes what the socket takes. Replies to data commands leave only while this server may
/// serve: a primary stopped between running a command and writing its reply (or cut off from
/// its spare meanwhile) closes the connection unanswered instead — the client retries against
/// whoever serves now.
fn flush(dur: &dyn Durability, poll: &Poll, t: usize, c: &mut Conn) {
    if c.client.answered_data && !c.wbuf.is_empty() && !dur.may_serve() {
        c.wbuf.clear();
        c.closing = true;
        return;
    }
    let mut done = 0;
    while done < c.wbuf.len() {
        match c.stream.write(&c.wbuf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                c.closing = true;
                c.wbuf.clear();
                return;
            }
        }
    }
    c.wbuf.drain(..done);
    if c.wbuf.is_empty() {
        c.client.answered_data = false;
    }
    let want_write = !c.wbuf.is_empty();
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
