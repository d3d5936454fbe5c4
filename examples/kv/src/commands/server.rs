//! Connection and server commands: PING, ECHO, QUIT, SELECT, INFO, CONFIG, CLIENT, COMMAND,
//! HELLO, TIME, LASTSAVE, and HOTSPARE.CPT.

use super::{all_commands, cmd, fail, lookup, ok, parse_i64, Call, Cmd, Fail, Res};
use super::{ADMIN, ALL_KEYS, FAST, NONE, NO_MULTI, READONLY, STALE, WRITE};
use crate::glob;
use crate::resp::reply;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("ping", -1, FAST | STALE, NONE, ping),
    cmd!("echo", 2, FAST, NONE, echo),
    cmd!("quit", -1, FAST | STALE, NONE, quit),
    cmd!("select", 2, FAST | STALE, NONE, select),
    cmd!("info", -1, STALE | ALL_KEYS, NONE, info),
    cmd!("config", -2, ADMIN | STALE, NONE, config),
    cmd!("client", -2, ADMIN | STALE, NONE, client),
    cmd!("command", -1, STALE, NONE, command),
    cmd!("hello", -1, FAST | STALE, NONE, hello),
    cmd!("time", 1, FAST | STALE, NONE, time),
    cmd!("lastsave", 1, FAST | STALE, NONE, lastsave),
    cmd!("hotspare.cpt", -1, ADMIN | NO_MULTI, NONE, hotspare_cpt),
];

/// What `HOTSPARE.CPT` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CptMode {
    /// Incremental, durable before the reply.
    Durable,
    /// Every page, durable before the reply.
    Full,
    /// Incremental, replied to once captured (as the interval timer takes them).
    NoWait,
}

/// Server-wide counters for `INFO`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connected clients.
    pub clients: AtomicUsize,
    /// Commands processed.
    pub commands: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

fn ping(c: &mut Call<'_, '_>) -> Res {
    match c.a {
        [] => reply::simple(c.out, "PONG"),
        [m] => reply::bulk(c.out, m),
        _ => return fail("ERR wrong number of arguments for 'ping' command"),
    }
    Ok(())
}

fn echo(c: &mut Call<'_, '_>) -> Res {
    reply::bulk(c.out, &c.a[0]);
    Ok(())
}

fn quit(c: &mut Call<'_, '_>) -> Res {
    c.client.quit = true;
    ok(c.out)
}

fn select(c: &mut Call<'_, '_>) -> Res {
    match parse_i64(&c.a[0]) {
        Some(0) => ok(c.out),
        Some(_) => fail("ERR DB index is out of range"),
        None => Err(Fail::Int),
    }
}

fn time(c: &mut Call<'_, '_>) -> Res {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    reply::array(c.out, 2);
    reply::bulk(c.out, (us / 1_000_000).to_string().as_bytes());
    reply::bulk(c.out, (us % 1_000_000).to_string().as_bytes());
    Ok(())
}

fn lastsave(c: &mut Call<'_, '_>) -> Res {
    reply::int(c.out, (c.db.now / 1000) as i64);
    Ok(())
}

fn hotspare_cpt(c: &mut Call<'_, '_>) -> Res {
    let mode = match c.a.first().map(|x| x.to_ascii_uppercase()).as_deref() {
        None => CptMode::Durable,
        Some(b"FULL") => CptMode::Full,
        Some(b"NOWAIT") => CptMode::NoWait,
        Some(_) => return Err(Fail::Syntax),
    };
    match crate::ha::cpt_now(c.ctx.hs, mode) {
        Ok(json) => reply::bulk(c.out, json.as_bytes()),
        Err(e) => return fail(format!("ERR {e}")),
    }
    Ok(())
}

/// `COMMAND`, `COMMAND COUNT|DOCS|INFO`, from the table. redis-cli asks for DOCS at start-up
/// (for hints) and copes with an empty answer.
fn command(c: &mut Call<'_, '_>) -> Res {
    let sub =
        c.a.first()
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    match sub.as_deref() {
        Some("docs") => reply::array(c.out, 0),
        Some("count") => reply::int(c.out, all_commands().count() as i64),
        None => {
            let all: Vec<&Cmd> = all_commands().collect();
            reply::array(c.out, all.len());
            for cmd in all {
                command_info(c.out, cmd);
            }
        }
        Some("info") => {
            reply::array(c.out, c.a.len() - 1);
            for name in &c.a[1..] {
                match lookup(name) {
                    Some(cmd) => command_info(c.out, cmd),
                    None => reply::nil_array(c.out),
                }
            }
        }
        Some(s) => return fail(format!("ERR unknown subcommand '{s}'. Try COMMAND HELP.")),
    }
    Ok(())
}

/// One command as `COMMAND INFO` gives it: name, arity, flags, first key, last key, step, and
/// (empty here) ACL categories, tips, key specifications, subcommands.
fn command_info(out: &mut Vec<u8>, cmd: &Cmd) {
    reply::array(out, 10);
    reply::bulk(out, cmd.name.as_bytes());
    reply::int(out, cmd.arity.into());
    let names = [
        (WRITE, "write"),
        (READONLY, "readonly"),
        (FAST, "fast"),
        (STALE, "stale"),
        (NO_MULTI, "no_multi"),
        (ADMIN, "admin"),
    ];
    let flags: Vec<&str> = names
        .iter()
        .filter(|(f, _)| cmd.flags & f != 0)
        .map(|(_, n)| *n)
        .collect();
    reply::array(out, flags.len());
    for f in flags {
        reply::simple(out, f);
    }
    for k in [cmd.keys.0, cmd.keys.1, cmd.keys.2] {
        reply::int(out, k.into());
    }
    for _ in 0..4 {
        reply::array(out, 0);
    }
}

fn info(c: &mut Call<'_, '_>) -> Res {
    let (ctx, a, out) = (c.ctx, c.a, &mut *c.out);
    let want: Vec<String> = a
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = want.is_empty()
        || want
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let on = |s: &str| all || want.iter().any(|w| w == s);
    let mut s = String::new();
    if on("server") {
        s.push_str(&format!(
            "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nexecutable:hotspare-kv\r\n\r\n",
            std::process::id(),
            ctx.port,
            ctx.started.elapsed().as_secs()
        ));
    }
    if on("clients") {
        s.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\n\r\n",
            ctx.counters.clients.load(Ordering::Relaxed)
        ));
    }
    if on("memory") {
        let rss = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |p| p * 4096);
        s.push_str(&format!("# Memory\r\nused_memory_rss:{rss}\r\n\r\n"));
    }
    if on("stats") {
        s.push_str(&format!(
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n",
            ctx.counters.connections.load(Ordering::Relaxed),
            ctx.counters.commands.load(Ordering::Relaxed)
        ));
    }
    if on("persistence") || on("hotspare") {
        crate::ha::info(ctx.hs, &mut s);
    }
    if on("keyspace") {
        s.push_str("# Keyspace\r\n");
        let (mut keys, mut expires) = (0, 0);
        let now = c.db.now;
        for (_, shard) in c.db.shards() {
            for v in shard.map.values().filter(|v| v.alive(now)) {
                keys += 1;
                expires += usize::from(v.expire_at_ms() != 0);
            }
        }
        if keys > 0 {
            s.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
        }
        s.push_str("\r\n");
    }
    reply::bulk(out, s.as_bytes());
    Ok(())
}

/// `CONFIG GET pattern…`, `CONFIG SET hotspare-cpt-ms N`, `CONFIG RESETSTAT`.
fn config(c: &mut Call<'_, '_>) -> Res {
    let (ctx, a, out) = (c.ctx, c.a, &mut *c.out);
    let sub = a
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .unwrap_or_default();
    match (sub.as_str(), a.len()) {
        ("get", n) if n >= 2 => {
            let params: [(&str, String); 6] = [
                ("save", String::new()),
                ("appendonly", "no".into()),
                ("databases", "1".into()),
                ("maxmemory", "0".into()),
                ("port", ctx.port.to_string()),
                (
                    "hotspare-cpt-ms",
                    ctx.hs.map_or(0, |h| h.current_interval_ms()).to_string(),
                ),
            ];
            let mut hits: Vec<&(&str, String)> = Vec::new();
            for p in &a[1..] {
                for param in &params {
                    if glob::matches(&p.to_ascii_lowercase(), param.0.as_bytes())
                        && !hits.iter().any(|h| h.0 == param.0)
                    {
                        hits.push(param);
                    }
                }
            }
            reply::array(out, hits.len() * 2);
            for (k, v) in hits {
                reply::bulk(out, k.as_bytes());
                reply::bulk(out, v.as_bytes());
            }
        }
        ("set", 3) if a[1].eq_ignore_ascii_case(b"hotspare-cpt-ms") => {
            match parse_i64(&a[2]).filter(|v| *v >= 0) {
                Some(v) => {
                    ctx.hs.inspect(|h| h.set_interval_ms(v as u64));
                    reply::simple(out, "OK");
                }
                None => reply::error(
                    out,
                    "ERR CONFIG SET failed (possibly related to argument 'hotspare-cpt-ms') - argument must be a non-negative number of milliseconds",
                ),
            }
        }
        ("set", n) if n >= 3 && n % 2 == 1 => reply::error(
            out,
            &format!(
                "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                String::from_utf8_lossy(&a[1])
            ),
        ),
        ("resetstat", 1) => {
            ctx.hs.inspect(|h| h.reset_stats());
            reply::simple(out, "OK");
        }
        ("get" | "set" | "resetstat", _) => reply::error(
            out,
            &format!("ERR wrong number of arguments for 'config|{sub}' command"),
        ),
        _ => reply::error(
            out,
            &format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                String::from_utf8_lossy(a.first().map_or(&b""[..], |v| v))
            ),
        ),
    };
    Ok(())
}

fn client(c: &mut Call<'_, '_>) -> Res {
    let (client, a, out) = (&mut *c.client, c.a, &mut *c.out);
    let sub = a
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .unwrap_or_default();
    match (sub.as_str(), a.len()) {
        ("setname", 2) => {
            if a[1].iter().any(|b| *b <= b' ' || *b > b'~') {
                reply::error(
                    out,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            } else {
                client.name = (!a[1].is_empty()).then(|| a[1].clone());
                reply::simple(out, "OK");
            }
        }
        ("getname", 1) => match &client.name {
            Some(n) => reply::bulk(out, n),
            None => reply::nil(out),
        },
        ("id", 1) => reply::int(out, client.id as i64),
        ("setinfo", 3) => reply::simple(out, "OK"),
        ("info", 1) => {
            let name = client
                .name
                .as_ref()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            reply::bulk(
                out,
                format!("id={} name={name} db=0\n", client.id).as_bytes(),
            );
        }
        ("setname" | "getname" | "id" | "setinfo" | "info", _) => reply::error(
            out,
            &format!("ERR wrong number of arguments for 'client|{sub}' command"),
        ),
        _ => reply::error(
            out,
            &format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(a.first().map_or(&b""[..], |v| v))
            ),
        ),
    };
    Ok(())
}

/// `HELLO [2]`: RESP2 only; RESP3 is refused with Redis's NOPROTO error, which clients handle by
/// staying on RESP2.
fn hello(c: &mut Call<'_, '_>) -> Res {
    let (client, a, out) = (&mut *c.client, c.a, &mut *c.out);
    if let Some(v) = a.first() {
        match parse_i64(v) {
            Some(2) => {}
            Some(_) => {
                reply::error(
                    out,
                    "NOPROTO sorry, this protocol version is not supported.",
                );
                return Ok(());
            }
            None => {
                reply::error(
                    out,
                    "ERR Protocol version is not an integer or out of range",
                );
                return Ok(());
            }
        }
    }
    reply::array(out, 14);
    for (k, v) in [("server", "redis"), ("version", "7.0.15")] {
        reply::bulk(out, k.as_bytes());
        reply::bulk(out, v.as_bytes());
    }
    reply::bulk(out, b"proto");
    reply::int(out, 2);
    reply::bulk(out, b"id");
    reply::int(out, client.id as i64);
    for (k, v) in [("mode", "standalone"), ("role", "master")] {
        reply::bulk(out, k.as_bytes());
        reply::bulk(out, v.as_bytes());
    }
    reply::bulk(out, b"modules");
    reply::array(out, 0);
    Ok(())
}
