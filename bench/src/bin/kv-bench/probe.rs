//! When redis-benchmark fails against a server, find out exactly what it sent that failed.
//!
//! redis-benchmark sends a few commands of its own before the load (e.g. `CONFIG GET save`),
//! and a server that answers one of them badly makes it quit with a vague message. This runs
//! it once more (`-c 1 -n 1`) through a recording loopback proxy and pairs each command it sent
//! with the reply it got.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::procs::ChildGuard;
use crate::resp::{read_reply, Reply};
use crate::server::{Binaries, Server};

type Log = Arc<Mutex<Vec<u8>>>;

/// Runs redis-benchmark through the proxy and returns what was exchanged.
pub fn diagnose(bins: &Binaries, server: &Server) -> Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let upstream = server.port;
    let stop = Arc::new(AtomicBool::new(false));
    let conns: Arc<Mutex<Vec<(Log, Log)>>> = Arc::default();
    let acceptor = {
        let (stop, conns) = (stop.clone(), conns.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        if let Ok(pair) = relay(c, upstream) {
                            if let Ok(mut l) = conns.lock() {
                                l.push(pair);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    };
    let err = server.dir.join("probe.err");
    let mut cmd = Command::new(&bins.redis_benchmark);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "1", "-n", "1", "-t", "get", "--csv"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err)?);
    let status = ChildGuard::spawn(cmd, "redis-benchmark (probe)")?
        .wait_timeout(Duration::from_secs(20))
        .map(|s| s.to_string())
        .unwrap_or_else(|e| format!("{e:#}"));
    // Let the relays see the connections close.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    let mut exchanges = Vec::new();
    let mut failed = Vec::new();
    for (sent, got) in conns.lock().map(|l| l.clone()).unwrap_or_default() {
        let sent = parse_all(&sent.lock().map(|b| b.clone()).unwrap_or_default());
        let got = parse_all(&got.lock().map(|b| b.clone()).unwrap_or_default());
        for (i, c) in sent.iter().enumerate() {
            let reply = got.get(i);
            let e = json!({
                "sent": show(c),
                "reply": reply.map_or("(no reply)".to_string(), show),
            });
            if matches!(reply, None | Some(Reply::Error(_))) {
                failed.push(e.clone());
            }
            exchanges.push(e);
        }
    }
    Ok(json!({
        "exit": status,
        "stderr": std::fs::read_to_string(&err).unwrap_or_default(),
        "exchanges": exchanges,
        "failed": failed,
    }))
}

/// Connects `client` to the upstream server and copies both ways, recording each direction.
fn relay(client: TcpStream, upstream: u16) -> Result<(Log, Log)> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let (sent, got): (Log, Log) = Default::default();
    for (from, to, log) in [
        (client.try_clone()?, server.try_clone()?, sent.clone()),
        (server, client, got.clone()),
    ] {
        from.set_read_timeout(Some(Duration::from_secs(10)))?;
        std::thread::spawn(move || copy(from, to, &log));
    }
    Ok((sent, got))
}

fn copy(mut from: TcpStream, mut to: TcpStream, log: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut l) = log.lock() {
            l.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// All complete RESP values in `bytes`.
fn parse_all(mut bytes: &[u8]) -> Vec<Reply> {
    let mut line = Vec::new();
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match read_reply(&mut bytes, &mut line) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
    }
    out
}

/// A RESP value as one readable line (commands as space-separated words).
fn show(r: &Reply) -> String {
    let s = match r {
        Reply::Simple(s) => format!("+{s}"),
        Reply::Error(e) => format!("-{e}"),
        Reply::Int(i) => format!(":{i}"),
        Reply::Bulk(None) => "(nil)".into(),
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Reply::Array(None) => "(nil array)".into(),
        Reply::Array(Some(items)) => items.iter().map(show).collect::<Vec<_>>().join(" "),
    };
    s.chars().take(300).collect()
}
