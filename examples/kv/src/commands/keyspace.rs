//! Commands on keys of any type: DEL, UNLINK, EXISTS, TYPE, the expiry family, RENAME,
//! RENAMENX, COPY, and the key space as a whole: DBSIZE, FLUSHALL, FLUSHDB, KEYS, SCAN.

use super::{cmd, fail, int_arg, ok, parse_i64, upper, Call, Cmd, Fail, Res};
use super::{ALL_KEYS, FAST, K1, K12, KALL, READONLY, WRITE};
use crate::glob;
use crate::resp::reply;
use crate::store::SHARDS;

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("del", -2, WRITE, KALL, del),
    cmd!("unlink", -2, WRITE | FAST, KALL, del),
    cmd!("exists", -2, READONLY | FAST, KALL, exists),
    cmd!("type", 2, READONLY | FAST, K1, type_),
    cmd!("expire", -3, WRITE | FAST, K1, expire),
    cmd!("pexpire", -3, WRITE | FAST, K1, expire),
    cmd!("expireat", -3, WRITE | FAST, K1, expire),
    cmd!("pexpireat", -3, WRITE | FAST, K1, expire),
    cmd!("ttl", 2, READONLY | FAST, K1, ttl),
    cmd!("pttl", 2, READONLY | FAST, K1, ttl),
    cmd!("expiretime", 2, READONLY | FAST, K1, ttl),
    cmd!("pexpiretime", 2, READONLY | FAST, K1, ttl),
    cmd!("persist", 2, WRITE | FAST, K1, persist),
    cmd!("rename", 3, WRITE, K12, rename),
    cmd!("renamenx", 3, WRITE | FAST, K12, rename),
    cmd!("copy", -3, WRITE, K12, copy),
    cmd!("dbsize", 1, READONLY | FAST | ALL_KEYS, (0, 0, 0), dbsize),
    cmd!("flushall", -1, WRITE | ALL_KEYS, (0, 0, 0), flushall),
    cmd!("flushdb", -1, WRITE | ALL_KEYS, (0, 0, 0), flushall),
    cmd!("keys", 2, READONLY | ALL_KEYS, (0, 0, 0), keys),
    cmd!("scan", -2, READONLY | ALL_KEYS, (0, 0, 0), scan),
];

fn del(c: &mut Call<'_, '_>) -> Res {
    let mut n = 0;
    for k in c.a {
        n += i64::from(c.db.remove(k).is_some());
    }
    reply::int(c.out, n);
    Ok(())
}

fn exists(c: &mut Call<'_, '_>) -> Res {
    let mut n = 0;
    for k in c.a {
        n += i64::from(c.db.get(k).is_some());
    }
    reply::int(c.out, n);
    Ok(())
}

fn type_(c: &mut Call<'_, '_>) -> Res {
    let t = c.db.get(&c.a[0]).map_or("none", |v| v.type_name());
    reply::simple(c.out, t);
    Ok(())
}

/// `EXPIRE key seconds [NX|XX|GT|LT]…`, `PEXPIRE` in ms, `EXPIREAT` / `PEXPIREAT` absolute.
fn expire(c: &mut Call<'_, '_>) -> Res {
    let name = c.cmd.name;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for f in &c.a[2..] {
        match upper(f).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            o => return fail(format!("ERR Unsupported option {o}")),
        }
    }
    if nx && (xx || gt || lt) {
        return fail("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return fail("ERR GT and LT options at the same time are not compatible");
    }
    let n = int_arg(&c.a[1])?;
    let now = c.db.now as i64;
    let invalid = || Fail::Msg(format!("ERR invalid expire time in '{name}' command"));
    let ms = if name == "expire" || name == "expireat" {
        n.checked_mul(1000).ok_or_else(invalid)?
    } else {
        n
    };
    let at = if name.ends_with("at") {
        ms
    } else {
        ms.checked_add(now).ok_or_else(invalid)?
    };
    let key = &c.a[0];
    let Some(v) = c.db.get(key) else {
        reply::int(c.out, 0);
        return Ok(());
    };
    let cur = v.expire_at_ms();
    let allowed = if nx {
        cur == 0
    } else if xx && cur == 0 {
        false
    } else if gt {
        // No TTL counts as an infinite one.
        cur != 0 && at > cur as i64
    } else if lt {
        cur == 0 || at < cur as i64
    } else {
        true
    };
    if !allowed {
        reply::int(c.out, 0);
        return Ok(());
    }
    if at <= now {
        c.db.remove(key);
    } else {
        v.set_expire_at_ms(at as u64);
        c.db.store().note_ttl();
        c.db.touch(key);
    }
    reply::int(c.out, 1);
    Ok(())
}

fn ttl(c: &mut Call<'_, '_>) -> Res {
    let now = c.db.now;
    let r = match c.db.get(&c.a[0]) {
        None => -2,
        Some(v) if v.expire_at_ms() == 0 => -1,
        Some(v) => {
            let at = v.expire_at_ms();
            match c.cmd.name {
                "ttl" => ((at - now) as i64 + 500) / 1000,
                "pttl" => (at - now) as i64,
                "expiretime" => (at / 1000) as i64,
                _ => at as i64,
            }
        }
    };
    reply::int(c.out, r);
    Ok(())
}

fn persist(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    match c.db.get(key) {
        Some(v) if v.expire_at_ms() != 0 => {
            v.set_expire_at_ms(0);
            c.db.touch(key);
            reply::int(c.out, 1);
        }
        _ => reply::int(c.out, 0),
    }
    Ok(())
}

/// `RENAME src dst`, `RENAMENX src dst`: the value moves with its expiry.
fn rename(c: &mut Call<'_, '_>) -> Res {
    let nx = c.cmd.name == "renamenx";
    let (src, dst) = (&c.a[0], &c.a[1]);
    if c.db.get(src).is_none() {
        return Err(Fail::NoKey);
    }
    if src == dst {
        if nx {
            reply::int(c.out, 0);
            return Ok(());
        }
        return ok(c.out);
    }
    if nx && c.db.get(dst).is_some() {
        reply::int(c.out, 0);
        return Ok(());
    }
    let v = c.db.remove(src).expect("looked up");
    c.db.insert(dst, v);
    if nx {
        reply::int(c.out, 1);
        Ok(())
    } else {
        ok(c.out)
    }
}

/// `COPY src dst [DB 0] [REPLACE]`.
fn copy(c: &mut Call<'_, '_>) -> Res {
    let mut replace = false;
    let mut i = 2;
    while i < c.a.len() {
        match upper(&c.a[i]).as_str() {
            "REPLACE" => replace = true,
            "DB" if i + 1 < c.a.len() => {
                i += 1;
                match parse_i64(&c.a[i]) {
                    Some(0) => {}
                    Some(_) => return fail("ERR DB index is out of range"),
                    None => return Err(Fail::Int),
                }
            }
            _ => return Err(Fail::Syntax),
        }
        i += 1;
    }
    let (src, dst) = (&c.a[0], &c.a[1]);
    if src == dst {
        return fail("ERR source and destination objects are the same");
    }
    let Some(v) = c.db.get(src).cloned() else {
        reply::int(c.out, 0);
        return Ok(());
    };
    if !replace && c.db.get(dst).is_some() {
        reply::int(c.out, 0);
        return Ok(());
    }
    c.db.insert(dst, v);
    reply::int(c.out, 1);
    Ok(())
}

fn dbsize(c: &mut Call<'_, '_>) -> Res {
    // Expired keys not yet deleted count, as in Redis.
    let n: usize = c.db.shards().map(|(_, s)| s.map.len()).sum();
    reply::int(c.out, n as i64);
    Ok(())
}

fn flushall(c: &mut Call<'_, '_>) -> Res {
    if let Some(mode) = c.a.first() {
        if !matches!(upper(mode).as_str(), "SYNC" | "ASYNC") || c.a.len() > 1 {
            return Err(Fail::Syntax);
        }
    }
    for (_, s) in c.db.shards() {
        s.flush();
    }
    c.db.wrote = true;
    ok(c.out)
}

fn keys(c: &mut Call<'_, '_>) -> Res {
    let now = c.db.now;
    let pattern = &c.a[0];
    let mut keys = Vec::new();
    for (_, s) in c.db.shards() {
        keys.extend(
            s.map
                .iter()
                .filter(|(k, v)| v.alive(now) && glob::matches(pattern, k))
                .map(|(k, _)| k.clone()),
        );
    }
    reply::array(c.out, keys.len());
    for k in keys {
        reply::bulk(c.out, &k);
    }
    Ok(())
}

/// `SCAN`'s and `HSCAN`'s … options.
pub struct ScanOpts {
    /// The cursor.
    pub cursor: u64,
    /// `MATCH`.
    pub pattern: Option<Vec<u8>>,
    /// `COUNT` (default 10).
    pub count: usize,
    /// `TYPE` (SCAN only).
    pub type_: Option<String>,
}

impl ScanOpts {
    /// Parses `cursor [MATCH p] [COUNT n] [TYPE t]` (`TYPE` only if `with_type`).
    pub fn parse(a: &[Vec<u8>], with_type: bool) -> Result<ScanOpts, Fail> {
        let cursor = std::str::from_utf8(&a[0])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Fail::Msg("ERR invalid cursor".into()))?;
        let mut o = ScanOpts {
            cursor,
            pattern: None,
            count: 10,
            type_: None,
        };
        let mut i = 1;
        while i < a.len() {
            let (opt, val) = (upper(&a[i]), a.get(i + 1));
            match (opt.as_str(), val) {
                ("MATCH", Some(p)) => o.pattern = Some(p.clone()),
                ("COUNT", Some(n)) => match parse_i64(n) {
                    Some(n) if n >= 1 => o.count = n as usize,
                    Some(_) => return Err(Fail::Syntax),
                    None => return Err(Fail::Int),
                },
                ("TYPE", Some(t)) if with_type => {
                    o.type_ = Some(String::from_utf8_lossy(t).to_ascii_lowercase())
                }
                _ => return Err(Fail::Syntax),
            }
            i += 2;
        }
        Ok(o)
    }

    /// Whether `s` matches the pattern.
    pub fn matches(&self, s: &[u8]) -> bool {
        self.pattern.as_ref().is_none_or(|p| glob::matches(p, s))
    }
}

/// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`: the cursor is a shard number; a call returns
/// whole shards from there until COUNT keys are gathered (Redis allows more than COUNT). So
/// every key present for the whole scan is returned, as Redis guarantees, at most once unless
/// it moved (it never does: a key's shard is fixed).
fn scan(c: &mut Call<'_, '_>) -> Res {
    let o = ScanOpts::parse(c.a, true)?;
    let now = c.db.now;
    let mut keys = Vec::new();
    let mut next = 0;
    let from = o.cursor.min(SHARDS as u64) as usize;
    for (i, s) in c.db.shards().skip(from) {
        keys.extend(
            s.map
                .iter()
                .filter(|(k, v)| {
                    v.alive(now)
                        && o.matches(k)
                        && o.type_.as_deref().is_none_or(|t| t == v.type_name())
                })
                .map(|(k, _)| k.clone()),
        );
        if keys.len() >= o.count && i + 1 < SHARDS {
            next = i + 1;
            break;
        }
    }
    reply::array(c.out, 2);
    reply::bulk(c.out, next.to_string().as_bytes());
    reply::array(c.out, keys.len());
    for k in keys {
        reply::bulk(c.out, &k);
    }
    Ok(())
}

/// The elements `scan` gave: `[cursor "0", [elements…]]` — a collection is returned whole in
/// one call (Redis does that too for its small encodings), so no element is ever missed.
pub fn reply_scan(out: &mut Vec<u8>, items: &[&[u8]]) {
    reply::array(out, 2);
    reply::bulk(out, b"0");
    reply::array(out, items.len());
    for i in items {
        reply::bulk(out, i);
    }
}
