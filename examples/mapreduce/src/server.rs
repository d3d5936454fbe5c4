//! The coordinator's accept loop, shared by the Hot Spare and the plain build: one request per
//! connection, answered only after the change it made is durable (`hotspare::Checkpointer`'s
//! `commit_durable`; nothing to wait for without Hot Spare).

use crate::job::{now_ms, Event, Job, Phase, Reply, Request};
use crate::{io, Error};
use hotspare::Checkpointer;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Settings of the loop that are not job state.
#[derive(Debug, Clone)]
pub struct Options {
    /// After the job is done, keep answering `EXIT` this long before returning.
    pub linger: Duration,
    /// Read/write timeout of a worker connection.
    pub io_timeout: Duration,
}

/// Serves workers until the job is done (and `linger` has passed). Prints `ASSIGN <kind> <i>`
/// (`… again` after a timeout), `FINISHED <kind> <i>` and `DONE` to `out`, each only once the
/// change is durable.
pub fn serve(
    listener: &TcpListener,
    job: &mut Job,
    cp: Option<&Checkpointer>,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<(), Error> {
    listener
        .set_nonblocking(true)
        .map_err(io("set listener non-blocking"))?;
    let mut done_at = None;
    if job.phase == Phase::Done {
        let _ = writeln!(out, "DONE");
        done_at = Some(Instant::now());
    }
    // True while a change may not be durable (a commit failed): the next reply commits first.
    let mut unsynced = false;
    loop {
        if done_at.is_some_and(|t: Instant| t.elapsed() >= opts.linger) {
            return Ok(());
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("mr-coordinator: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        match one(stream, job, cp, opts, &mut unsynced, out) {
            Ok(true) => done_at = done_at.or(Some(Instant::now())),
            Ok(false) => {}
            Err(e) => eprintln!("mr-coordinator: {e}"),
        }
    }
}

/// Answers one connection; true when this request finished the job.
fn one(
    stream: TcpStream,
    job: &mut Job,
    cp: Option<&Checkpointer>,
    opts: &Options,
    unsynced: &mut bool,
    out: &mut dyn Write,
) -> Result<bool, Error> {
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(opts.io_timeout)))
        .and_then(|()| stream.set_write_timeout(Some(opts.io_timeout)))
        .map_err(io("set up connection"))?;
    let mut line = Vec::new();
    BufReader::new(&stream)
        .take(4096)
        .read_until(b'\n', &mut line)
        .map_err(io("read request"))?;
    let text = String::from_utf8_lossy(&line);
    let (reply, event) = match Request::parse(text.trim_end()) {
        Ok(req) => job.handle(req, now_ms()),
        Err(e) => (Reply::Err(e.to_string()), Event::None),
    };
    if let Some(cp) = cp.filter(|_| event != Event::None || *unsynced) {
        if let Err(e) = cp.commit_durable() {
            *unsynced = true;
            let _ = (&stream).write_all(&Reply::Err("not durable, retry".into()).line());
            return Err(Error::NotDurable(e.into()));
        }
        *unsynced = false;
    }
    let mut all = false;
    match event {
        Event::None => {}
        Event::Assigned(k, i, again) => {
            let again = if again { " again" } else { "" };
            let _ = writeln!(out, "ASSIGN {} {i}{again}", k.name());
        }
        Event::Finished(k, i, last) => {
            let _ = writeln!(out, "FINISHED {} {i}", k.name());
            if last {
                let _ = writeln!(out, "DONE");
                all = true;
            }
        }
    }
    // Progress lines are informational: a closed stdout does not stop the coordinator.
    let _ = out.flush();
    (&stream)
        .write_all(&reply.line())
        .map_err(io("write reply"))?;
    Ok(all)
}
