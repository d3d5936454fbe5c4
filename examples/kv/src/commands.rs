//! The commands: Redis's string subset, answered byte for byte as Redis 7 answers them
//! (replies and error texts), plus what `redis-cli` and `redis-benchmark` ask at start-up.

use crate::glob;
use crate::resp::reply;
use crate::store::{alive, live, now_ms, shard_of, Store, SHARDS};
use allocator_api2::alloc::Allocator;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What persistence the server runs with: Hot Spare checkpoints, or none (`--plain`).
pub trait Durability: Send + Sync {
    /// Whether a write must be durable before it is answered (`--cpt-every-write`).
    fn every_write(&self) -> bool;
    /// Brackets one request for Remus's rule (`None`: nothing to track).
    fn begin_op(&self) -> Option<hotspare::Op<'_>> {
        None
    }
    /// With `--cpt-every-write`, at the end of an event-loop round: what the replies it
    /// produced must wait for — taking the checkpoint first if they may reveal writes not
    /// captured yet and the pipeline has room.
    fn round_ticket(&self) -> Result<RoundTicket, String> {
        Ok(RoundTicket::Release)
    }
    /// A commit that [`RoundTicket::NextCommit`] deferred: taken now if the pipeline has room
    /// (its ticket), else `None` (ask again when a checkpoint ends).
    fn deferred_commit(&self) -> Result<Option<hotspare::Ticket>, String> {
        Ok(None)
    }
    /// Where a ticket from [`Durability::round_ticket`] stands.
    fn ticket_state(&self, _t: hotspare::Ticket) -> hotspare::TicketState {
        hotspare::TicketState::Durable
    }
    /// A descriptor readable when tickets may have changed state (one per event loop).
    fn notifier(&self) -> Option<hotspare::CommitNotifier> {
        None
    }
    /// `HOTSPARE.CPT [FULL|NOWAIT]`: a checkpoint now; its statistics as JSON. Durable before
    /// the reply, except with NOWAIT (then it is taken as the interval timer takes them: the
    /// caller is stopped only for the capture).
    fn cpt_now(&self, mode: CptMode) -> Result<String, String>;
    /// `CONFIG RESETSTAT`.
    fn reset_stats(&self);
    /// Whether this server may answer data commands now (Hot Spare: it holds its lease and is
    /// not fenced). Asked before every data command, so a primary that was paused or cut off
    /// from its spare answers nothing a spare that took over could contradict.
    fn may_serve(&self) -> bool {
        true
    }
    /// The `# Hotspare` section of `INFO`, and `rdb_*` style persistence lines.
    fn info(&self, out: &mut String);
}

/// What the replies of a round wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundTicket {
    /// Nothing: release them.
    Release,
    /// This ticket's durability.
    Wait(hotspare::Ticket),
    /// The durability of this checkpoint, taken now for these replies. It holds everything
    /// executed before it, so replies waiting for a deferred commit
    /// ([`RoundTicket::NextCommit`]) wait for it too.
    Committed(hotspare::Ticket),
    /// The next checkpoint, not taken yet (the pipeline is full): see
    /// [`Durability::deferred_commit`].
    NextCommit,
}

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

/// Per-connection state the commands see.
#[derive(Debug, Default)]
pub struct Client {
    /// Connection id (`CLIENT ID`).
    pub id: u64,
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// Set by `QUIT`: close once the reply is written.
    pub quit: bool,
    /// A data command was answered since the last complete write of replies: releasing them
    /// needs the right to serve at that moment, not only when the command ran.
    pub answered_data: bool,
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

/// Everything a command may touch.
pub struct Ctx<'a, A: Allocator + Clone> {
    /// The key space.
    pub store: &'a Store<A>,
    /// Persistence.
    pub dur: &'a dyn Durability,
    /// Counters.
    pub counters: &'a Counters,
    /// The server's start time (for `uptime_in_seconds`).
    pub started: std::time::Instant,
    /// Listening port (for `INFO`).
    pub port: u16,
}

/// What a command did, for the caller's group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changed.
    Read,
    /// The key space changed: with `--cpt-every-write`, the reply waits for a commit.
    Write,
}

const OK: &str = "OK";
const E_INT: &str = "ERR value is not an integer or out of range";
const E_SYNTAX: &str = "ERR syntax error";

fn arity_error(out: &mut Vec<u8>, name: &str) -> Effect {
    reply::error(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
    Effect::Read
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    // Redis's string2ll: no blanks, no '+', no leading zeros.
    if s.is_empty() || s.starts_with('+') || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    if s.starts_with("-0") {
        return None;
    }
    s.parse().ok()
}

/// Runs one command, appending its reply to `out`.
pub fn execute<A: Allocator + Clone>(
    ctx: &Ctx<'_, A>,
    client: &mut Client,
    args: &[Vec<u8>],
    out: &mut Vec<u8>,
) -> Effect {
    ctx.counters.commands.fetch_add(1, Ordering::Relaxed);
    let Some(first) = args.first() else {
        return Effect::Read; // an empty inline line: Redis ignores it
    };
    let name = String::from_utf8_lossy(first).to_ascii_lowercase();
    let a = &args[1..];
    let admin = matches!(
        name.as_str(),
        "ping" | "info" | "quit" | "hello" | "command" | "client" | "config" | "time"
    );
    if !admin {
        client.answered_data = true;
    }
    if !admin && !ctx.dur.may_serve() {
        reply::error(
            out,
            "TRYAGAIN this server may not serve now: no lease from its spare, or fenced by a newer primary",
        );
        return Effect::Read;
    }
    // (min args, max args or usize::MAX) after the name.
    let arity = |min: usize, max: usize| a.len() >= min && a.len() <= max;
    let ok_arity = match name.as_str() {
        "ping" => arity(0, 1),
        "echo" | "get" | "strlen" | "incr" | "decr" | "ttl" | "pttl" | "persist" | "type"
        | "keys" | "select" => arity(1, 1),
        "set" => arity(2, usize::MAX),
        "setnx" | "append" | "incrby" | "decrby" | "getset" => arity(2, 2),
        "expire" | "pexpire" => arity(2, 3),
        "del" | "exists" | "mget" | "unlink" => arity(1, usize::MAX),
        "mset" => a.len() >= 2 && a.len().is_multiple_of(2),
        "dbsize" | "lastsave" | "time" => arity(0, 0),
        "flushall" | "flushdb" => arity(0, 1),
        "scan" => arity(1, usize::MAX),
        "info" => arity(0, usize::MAX),
        "config" | "client" | "hotspare.cpt" | "hello" | "command" => true,
        "quit" => true,
        _ => {
            let mut msg = format!(
                "ERR unknown command '{}', with args beginning with: ",
                String::from_utf8_lossy(&first[..first.len().min(128)])
            );
            for x in a {
                msg.push_str(&format!("'{}' ", String::from_utf8_lossy(x)));
                if msg.len() > 256 {
                    break;
                }
            }
            reply::error(out, &msg);
            return Effect::Read;
        }
    };
    if !ok_arity {
        return arity_error(out, &name);
    }
    let store = ctx.store;
    let now = now_ms();
    match name.as_str() {
        "ping" => match a.first() {
            Some(m) => reply::bulk(out, m),
            None => reply::simple(out, "PONG"),
        },
        "echo" => reply::bulk(out, &a[0]),
        "quit" => {
            client.quit = true;
            reply::simple(out, OK);
        }
        "select" => match parse_i64(&a[0]) {
            Some(0) => reply::simple(out, OK),
            Some(_) => reply::error(out, "ERR DB index is out of range"),
            None => reply::error(out, E_INT),
        },
        "get" => {
            let mut m = store.shard(&a[0]);
            match live(&mut m, &a[0], now) {
                Some(v) => reply::bulk(out, v.data()),
                None => reply::nil(out),
            }
        }
        "getset" => {
            let mut m = store.shard(&a[0]);
            let old = live(&mut m, &a[0], now).map(|v| v.data().to_vec());
            let v = store.value(&a[1], 0);
            m.insert(store.key(&a[0]), v);
            match old {
                Some(o) => reply::bulk(out, &o),
                None => reply::nil(out),
            }
            return Effect::Write;
        }
        "set" => return set(store, a, now, out),
        "setnx" => {
            let mut m = store.shard(&a[0]);
            if live(&mut m, &a[0], now).is_some() {
                reply::int(out, 0);
                return Effect::Read;
            }
            let v = store.value(&a[1], 0);
            m.insert(store.key(&a[0]), v);
            reply::int(out, 1);
            return Effect::Write;
        }
        "mset" => {
            let mut g = store.lock_keys(a.iter().step_by(2).map(|k| k.as_slice()));
            for kv in a.chunks(2) {
                let m = g[shard_of(&kv[0])].as_mut().expect("locked");
                match m.get_mut(kv[0].as_slice()) {
                    Some(v) => {
                        v.set_data(&kv[1]);
                        v.set_expire_at_ms(0);
                    }
                    None => {
                        let v = store.value(&kv[1], 0);
                        m.insert(store.key(&kv[0]), v);
                    }
                }
            }
            reply::simple(out, OK);
            return Effect::Write;
        }
        "mget" => {
            let mut g = store.lock_keys(a.iter().map(|k| k.as_slice()));
            reply::array(out, a.len());
            for k in a {
                let m = g[shard_of(k)].as_mut().expect("locked");
                match live(m, k, now) {
                    Some(v) => reply::bulk(out, v.data()),
                    None => reply::nil(out),
                }
            }
        }
        "del" | "unlink" | "exists" => {
            let mut g = store.lock_keys(a.iter().map(|k| k.as_slice()));
            let mut n = 0;
            for k in a {
                let m = g[shard_of(k)].as_mut().expect("locked");
                if live(m, k, now).is_some() {
                    n += 1;
                    if name != "exists" {
                        m.remove(k.as_slice());
                    }
                }
            }
            reply::int(out, n);
            if name != "exists" && n > 0 {
                return Effect::Write;
            }
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let by = match name.as_str() {
                "incr" => Some(1),
                "decr" => Some(-1),
                "incrby" => parse_i64(&a[1]),
                _ => parse_i64(&a[1]).and_then(|v| v.checked_neg()),
            };
            let Some(by) = by else {
                reply::error(out, E_INT);
                return Effect::Read;
            };
            let mut m = store.shard(&a[0]);
            let cur = match live(&mut m, &a[0], now) {
                Some(v) => match parse_i64(v.data()) {
                    Some(n) => n,
                    None => {
                        reply::error(out, E_INT);
                        return Effect::Read;
                    }
                },
                None => 0,
            };
            let Some(new) = cur.checked_add(by) else {
                reply::error(out, "ERR increment or decrement would overflow");
                return Effect::Read;
            };
            let text = new.to_string();
            match m.get_mut(a[0].as_slice()) {
                Some(v) => {
                    v.set_data(text.as_bytes());
                }
                None => {
                    let v = store.value(text.as_bytes(), 0);
                    m.insert(store.key(&a[0]), v);
                }
            }
            reply::int(out, new);
            return Effect::Write;
        }
        "append" => {
            let mut m = store.shard(&a[0]);
            let len = match live(&mut m, &a[0], now) {
                Some(v) => {
                    v.append(&a[1]);
                    v.data().len()
                }
                None => {
                    let v = store.value(&a[1], 0);
                    m.insert(store.key(&a[0]), v);
                    a[1].len()
                }
            };
            reply::int(out, len as i64);
            return Effect::Write;
        }
        "strlen" => {
            let mut m = store.shard(&a[0]);
            let n = live(&mut m, &a[0], now).map_or(0, |v| v.data().len());
            reply::int(out, n as i64);
        }
        "type" => {
            let mut m = store.shard(&a[0]);
            let t = if live(&mut m, &a[0], now).is_some() {
                "string"
            } else {
                "none"
            };
            reply::simple(out, t);
        }
        "expire" | "pexpire" => return expire(store, &name, a, now, out),
        "ttl" | "pttl" => {
            let mut m = store.shard(&a[0]);
            let r = match live(&mut m, &a[0], now) {
                None => -2,
                Some(v) if v.expire_at_ms() == 0 => -1,
                Some(v) => {
                    let ms = (v.expire_at_ms() - now) as i64;
                    if name == "ttl" {
                        (ms + 500) / 1000
                    } else {
                        ms
                    }
                }
            };
            reply::int(out, r);
        }
        "persist" => {
            let mut m = store.shard(&a[0]);
            match live(&mut m, &a[0], now) {
                Some(v) if v.expire_at_ms() != 0 => {
                    v.set_expire_at_ms(0);
                    reply::int(out, 1);
                    return Effect::Write;
                }
                _ => reply::int(out, 0),
            }
        }
        "dbsize" => reply::int(out, store.key_count() as i64),
        "flushall" | "flushdb" => {
            if let Some(mode) = a.first() {
                let m = String::from_utf8_lossy(mode).to_ascii_lowercase();
                if m != "sync" && m != "async" {
                    reply::error(out, E_SYNTAX);
                    return Effect::Read;
                }
            }
            let mut g = store.lock_all();
            for m in g.iter_mut() {
                **m = store.empty_map();
            }
            reply::simple(out, OK);
            return Effect::Write;
        }
        "keys" => {
            let mut keys = Vec::new();
            for i in 0..SHARDS {
                let m = store.lock_shard(i);
                keys.extend(
                    m.iter()
                        .filter(|(k, v)| alive(v, now) && glob::matches(&a[0], &k.0))
                        .map(|(k, _)| k.0.to_vec()),
                );
            }
            reply::array(out, keys.len());
            for k in keys {
                reply::bulk(out, &k);
            }
        }
        "scan" => scan(store, a, now, out),
        "lastsave" => reply::int(out, (now / 1000) as i64),
        "time" => {
            let us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            reply::array(out, 2);
            reply::bulk(out, (us / 1_000_000).to_string().as_bytes());
            reply::bulk(out, (us % 1_000_000).to_string().as_bytes());
        }
        "info" => info(ctx, a, now, out),
        "config" => config(ctx, a, out),
        "client" => client_cmd(client, a, out),
        "command" => command(a, out),
        "hello" => hello(client, a, out),
        "hotspare.cpt" => {
            let mode = match a.first().map(|x| x.to_ascii_uppercase()).as_deref() {
                None => CptMode::Durable,
                Some(b"FULL") => CptMode::Full,
                Some(b"NOWAIT") => CptMode::NoWait,
                Some(_) => {
                    reply::error(out, E_SYNTAX);
                    return Effect::Read;
                }
            };
            match ctx.dur.cpt_now(mode) {
                Ok(json) => reply::bulk(out, json.as_bytes()),
                Err(e) => reply::error(out, &format!("ERR {e}")),
            }
        }
        _ => unreachable!("arity table and dispatch disagree on {name}"),
    }
    Effect::Read
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn set<A: Allocator + Clone>(
    store: &Store<A>,
    a: &[Vec<u8>],
    now: u64,
    out: &mut Vec<u8>,
) -> Effect {
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expire: Option<u64> = None;
    let mut i = 2;
    while i < a.len() {
        let opt = String::from_utf8_lossy(&a[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" if !xx => nx = true,
            "XX" if !nx => xx = true,
            "GET" => get = true,
            "KEEPTTL" if expire.is_none() => keepttl = true,
            "EX" | "PX" | "EXAT" | "PXAT" if expire.is_none() && !keepttl && i + 1 < a.len() => {
                i += 1;
                let Some(n) = parse_i64(&a[i]) else {
                    reply::error(out, E_INT);
                    return Effect::Read;
                };
                let ms = match opt.as_str() {
                    "EX" | "EXAT" => n.checked_mul(1000),
                    _ => Some(n),
                };
                let at = match (ms, opt.as_str()) {
                    (Some(ms), _) if ms <= 0 || n <= 0 => None,
                    (Some(ms), "EX" | "PX") => (now as i64).checked_add(ms),
                    (Some(ms), _) => Some(ms),
                    (None, _) => None,
                };
                let Some(at) = at else {
                    reply::error(out, "ERR invalid expire time in 'set' command");
                    return Effect::Read;
                };
                expire = Some(at as u64);
            }
            _ => {
                reply::error(out, E_SYNTAX);
                return Effect::Read;
            }
        }
        i += 1;
    }
    if expire.is_some() {
        store.note_ttl();
    }
    let mut m = store.shard(&a[0]);
    let old = live(&mut m, &a[0], now);
    let exists = old.is_some();
    if get {
        match &old {
            Some(v) => reply::bulk(out, v.data()),
            None => reply::nil(out),
        }
    }
    if (nx && exists) || (xx && !exists) {
        if !get {
            reply::nil(out);
        }
        return Effect::Read;
    }
    match old {
        Some(v) => {
            v.set_data(&a[1]);
            if !keepttl {
                v.set_expire_at_ms(expire.unwrap_or(0));
            }
        }
        None => {
            let v = store.value(&a[1], expire.unwrap_or(0));
            m.insert(store.key(&a[0]), v);
        }
    }
    if !get {
        reply::simple(out, OK);
    }
    Effect::Write
}

/// `EXPIRE key seconds [NX|XX|GT|LT]`, `PEXPIRE` in ms.
fn expire<A: Allocator + Clone>(
    store: &Store<A>,
    name: &str,
    a: &[Vec<u8>],
    now: u64,
    out: &mut Vec<u8>,
) -> Effect {
    let Some(n) = parse_i64(&a[1]) else {
        reply::error(out, E_INT);
        return Effect::Read;
    };
    let ms = if name == "expire" {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    let Some(at) = ms.and_then(|ms| (now as i64).checked_add(ms)) else {
        reply::error(out, &format!("ERR invalid expire time in '{name}' command"));
        return Effect::Read;
    };
    let flag = a
        .get(2)
        .map(|f| String::from_utf8_lossy(f).to_ascii_uppercase());
    if flag
        .as_deref()
        .is_some_and(|f| !matches!(f, "NX" | "XX" | "GT" | "LT"))
    {
        reply::error(
            out,
            &format!("ERR Unsupported option {}", flag.unwrap_or_default()),
        );
        return Effect::Read;
    }
    let mut m = store.shard(&a[0]);
    let Some(v) = live(&mut m, &a[0], now) else {
        reply::int(out, 0);
        return Effect::Read;
    };
    let cur = v.expire_at_ms();
    let allowed = match flag.as_deref() {
        Some("NX") => cur == 0,
        Some("XX") => cur != 0,
        // No TTL counts as an infinite one.
        Some("GT") => cur != 0 && at as u64 > cur,
        Some("LT") => cur == 0 || (at as u64) < cur,
        _ => true,
    };
    if !allowed {
        reply::int(out, 0);
        return Effect::Read;
    }
    if at <= now as i64 {
        m.remove(a[0].as_slice());
    } else {
        v.set_expire_at_ms(at as u64);
        store.note_ttl();
    }
    reply::int(out, 1);
    Effect::Write
}

/// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`: the cursor is a shard number; each call returns
/// one whole shard (Redis allows more than COUNT). Every key present for the whole scan is
/// returned, as Redis guarantees.
fn scan<A: Allocator + Clone>(store: &Store<A>, a: &[Vec<u8>], now: u64, out: &mut Vec<u8>) {
    let Some(cursor) = std::str::from_utf8(&a[0])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        reply::error(out, "ERR invalid cursor");
        return;
    };
    let (mut pattern, mut type_ok) = (None, true);
    let mut i = 1;
    while i < a.len() {
        let opt = String::from_utf8_lossy(&a[i]).to_ascii_uppercase();
        match (opt.as_str(), a.get(i + 1)) {
            ("MATCH", Some(p)) => pattern = Some(p.clone()),
            ("COUNT", Some(c)) => match parse_i64(c) {
                Some(n) if n >= 1 => {}
                Some(_) => {
                    reply::error(out, E_SYNTAX);
                    return;
                }
                None => {
                    reply::error(out, E_INT);
                    return;
                }
            },
            ("TYPE", Some(t)) => type_ok = t.eq_ignore_ascii_case(b"string"),
            _ => {
                reply::error(out, E_SYNTAX);
                return;
            }
        }
        i += 2;
    }
    let mut keys = Vec::new();
    let shard = cursor as usize;
    if shard < SHARDS && type_ok {
        let m = store.lock_shard(shard);
        keys.extend(
            m.iter()
                .filter(|(k, v)| {
                    alive(v, now) && pattern.as_ref().is_none_or(|p| glob::matches(p, &k.0))
                })
                .map(|(k, _)| k.0.to_vec()),
        );
    }
    let next = if shard + 1 < SHARDS { shard + 1 } else { 0 };
    reply::array(out, 2);
    reply::bulk(out, next.to_string().as_bytes());
    reply::array(out, keys.len());
    for k in keys {
        reply::bulk(out, &k);
    }
}

fn info<A: Allocator + Clone>(ctx: &Ctx<'_, A>, a: &[Vec<u8>], now: u64, out: &mut Vec<u8>) {
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
        ctx.dur.info(&mut s);
    }
    if on("keyspace") {
        s.push_str("# Keyspace\r\n");
        let (mut keys, mut expires) = (0, 0);
        for i in 0..SHARDS {
            let m = ctx.store.lock_shard(i);
            for v in m.values().filter(|v| alive(v, now)) {
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
}

/// `CONFIG GET pattern…`, `CONFIG SET hotspare-cpt-ms N`, `CONFIG RESETSTAT`.
fn config<A: Allocator + Clone>(ctx: &Ctx<'_, A>, a: &[Vec<u8>], out: &mut Vec<u8>) {
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
                    ctx.store.cpt_ms.load(Ordering::Relaxed).to_string(),
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
                    ctx.store.cpt_ms.store(v as u64, Ordering::Relaxed);
                    reply::simple(out, OK);
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
            ctx.dur.reset_stats();
            reply::simple(out, OK);
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
    }
}

fn client_cmd(client: &mut Client, a: &[Vec<u8>], out: &mut Vec<u8>) {
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
                reply::simple(out, OK);
            }
        }
        ("getname", 1) => match &client.name {
            Some(n) => reply::bulk(out, n),
            None => reply::nil(out),
        },
        ("id", 1) => reply::int(out, client.id as i64),
        ("setinfo", 3) => reply::simple(out, OK),
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
    }
}

/// `COMMAND`, `COMMAND COUNT|DOCS|INFO`: redis-cli asks for DOCS at start-up (for hints) and
/// copes with an empty answer.
fn command(a: &[Vec<u8>], out: &mut Vec<u8>) {
    let sub = a
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
    match sub.as_deref() {
        None | Some("docs") => reply::array(out, 0),
        Some("count") => reply::int(out, 41),
        Some("info") => {
            reply::array(out, a.len() - 1);
            for _ in 1..a.len() {
                reply::nil(out);
            }
        }
        Some(s) => reply::error(
            out,
            &format!("ERR unknown subcommand '{s}'. Try COMMAND HELP."),
        ),
    }
}

/// `HELLO [2]`: RESP2 only; RESP3 is refused with Redis's NOPROTO error, which clients handle by
/// staying on RESP2.
fn hello(client: &mut Client, a: &[Vec<u8>], out: &mut Vec<u8>) {
    if let Some(v) = a.first() {
        match parse_i64(v) {
            Some(2) => {}
            Some(_) => {
                reply::error(
                    out,
                    "NOPROTO sorry, this protocol version is not supported.",
                );
                return;
            }
            None => {
                reply::error(
                    out,
                    "ERR Protocol version is not an integer or out of range",
                );
                return;
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
}
