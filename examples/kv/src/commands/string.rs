//! Strings: GET, SET (EX / PX / EXAT / PXAT / NX / XX / KEEPTTL / GET), SETNX, SETEX, PSETEX,
//! GETSET, GETDEL, GETEX, MGET, MSET, MSETNX, APPEND, STRLEN, INCR / DECR / INCRBY / DECRBY,
//! INCRBYFLOAT, SETRANGE, GETRANGE.

use super::{cmd, fail, fmt_human, int_arg, ok, parse_f64, parse_i64, upper, Call, Cmd, Fail, Res};
use super::{FAST, K1, KALL, READONLY, WRITE};
use crate::resp::reply;
use crate::store::{Locked, Value};

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("get", 2, READONLY | FAST, K1, get),
    cmd!("set", -3, WRITE, K1, set),
    cmd!("setnx", 3, WRITE | FAST, K1, setnx),
    cmd!("setex", 4, WRITE, K1, setex),
    cmd!("psetex", 4, WRITE, K1, setex),
    cmd!("getset", 3, WRITE | FAST, K1, getset),
    cmd!("getdel", 2, WRITE | FAST, K1, getdel),
    cmd!("getex", -2, WRITE | FAST, K1, getex),
    cmd!("mget", -2, READONLY | FAST, KALL, mget),
    cmd!("mset", -3, WRITE, (1, -1, 2), mset),
    cmd!("msetnx", -3, WRITE, (1, -1, 2), mset),
    cmd!("append", 3, WRITE | FAST, K1, append),
    cmd!("strlen", 2, READONLY | FAST, K1, strlen),
    cmd!("incr", 2, WRITE | FAST, K1, incr),
    cmd!("decr", 2, WRITE | FAST, K1, incr),
    cmd!("incrby", 3, WRITE | FAST, K1, incr),
    cmd!("decrby", 3, WRITE | FAST, K1, incr),
    cmd!("incrbyfloat", 3, WRITE | FAST, K1, incrbyfloat),
    cmd!("setrange", 4, WRITE, K1, setrange),
    cmd!("getrange", 4, READONLY, K1, getrange),
    cmd!("substr", 4, READONLY, K1, getrange),
];

/// Redis's string size limit (`proto-max-bulk-len`).
const MAX_STRING: i64 = 512 * 1024 * 1024;

/// `key`'s string value (`None`: no key), `WRONGTYPE` for another type.
fn string<'d>(db: &'d mut Locked<'_>, key: &[u8]) -> Result<Option<&'d mut Value>, Fail> {
    match db.get(key) {
        Some(v) if v.as_str().is_none() => Err(Fail::WrongType),
        v => Ok(v),
    }
}

/// Stores `data` at `key` with expiry `exp` (0: none; `None`: keep the current one). A
/// string of the same length is overwritten in place (one allocation written).
fn put(db: &mut Locked<'_>, key: &[u8], data: &[u8], exp: Option<u64>) {
    match db.get(key) {
        Some(v) if v.as_str().is_some() => {
            v.set_data(data);
            if let Some(e) = exp {
                v.set_expire_at_ms(e);
            }
        }
        Some(v) => *v = Value::str(data, exp.unwrap_or(v.expire_at_ms())),
        None => {
            db.shard(key)
                .map
                .insert(key.into(), Value::str(data, exp.unwrap_or(0)));
        }
    }
    if exp.is_some_and(|e| e != 0) {
        db.store().note_ttl();
    }
    db.touch(key);
}

fn bulk_or_nil(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(b) => reply::bulk(out, b),
        None => reply::nil(out),
    }
}

fn get(c: &mut Call<'_, '_>) -> Res {
    let v = string(c.db, &c.a[0])?;
    bulk_or_nil(c.out, v.and_then(|v| v.as_str()));
    Ok(())
}

/// An expiry option's absolute time: `EX s`, `PX ms`, `EXAT s`, `PXAT ms`.
fn expiry(opt: &str, arg: &[u8], now: u64, name: &str) -> Result<u64, Fail> {
    let n = int_arg(arg)?;
    let invalid = || Fail::Msg(format!("ERR invalid expire time in '{name}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let ms = match opt {
        "EX" | "EXAT" => n.checked_mul(1000).ok_or_else(invalid)?,
        _ => n,
    };
    match opt {
        "EX" | "PX" => (now as i64)
            .checked_add(ms)
            .map(|v| v as u64)
            .ok_or_else(invalid),
        _ => Ok(ms as u64),
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn set(c: &mut Call<'_, '_>) -> Res {
    let a = c.a;
    let (mut nx, mut xx, mut get, mut keepttl) = (false, false, false, false);
    let mut expire: Option<u64> = None;
    let mut i = 2;
    while i < a.len() {
        let opt = upper(&a[i]);
        match opt.as_str() {
            "NX" if !xx => nx = true,
            "XX" if !nx => xx = true,
            "GET" => get = true,
            "KEEPTTL" if expire.is_none() => keepttl = true,
            "EX" | "PX" | "EXAT" | "PXAT" if expire.is_none() && !keepttl && i + 1 < a.len() => {
                i += 1;
                expire = Some(expiry(&opt, &a[i], c.db.now, "set")?);
            }
            _ => return Err(Fail::Syntax),
        }
        i += 1;
    }
    let old = if get {
        string(c.db, &a[0])?
    } else {
        c.db.get(&a[0])
    };
    let exists = old.is_some();
    if get {
        bulk_or_nil(c.out, old.and_then(|v| v.as_str()));
    }
    if (nx && exists) || (xx && !exists) {
        if !get {
            reply::nil(c.out);
        }
        return Ok(());
    }
    let exp = if keepttl {
        None
    } else {
        Some(expire.unwrap_or(0))
    };
    put(c.db, &a[0], &a[1], exp);
    if !get {
        return ok(c.out);
    }
    Ok(())
}

fn setnx(c: &mut Call<'_, '_>) -> Res {
    if c.db.get(&c.a[0]).is_some() {
        reply::int(c.out, 0);
        return Ok(());
    }
    put(c.db, &c.a[0], &c.a[1], Some(0));
    reply::int(c.out, 1);
    Ok(())
}

/// `SETEX key seconds value`, `PSETEX key ms value`.
fn setex(c: &mut Call<'_, '_>) -> Res {
    let (opt, name) = if c.cmd.name == "setex" {
        ("EX", "setex")
    } else {
        ("PX", "psetex")
    };
    let at = expiry(opt, &c.a[1], c.db.now, name)?;
    put(c.db, &c.a[0], &c.a[2], Some(at));
    ok(c.out)
}

fn getset(c: &mut Call<'_, '_>) -> Res {
    let old = string(c.db, &c.a[0])?.and_then(|v| v.as_str().map(<[u8]>::to_vec));
    put(c.db, &c.a[0], &c.a[1], Some(0));
    bulk_or_nil(c.out, old.as_deref());
    Ok(())
}

fn getdel(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    if string(c.db, key)?.is_none() {
        reply::nil(c.out);
        return Ok(());
    }
    let v = c.db.remove(key).expect("looked up");
    bulk_or_nil(c.out, v.as_str());
    Ok(())
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
fn getex(c: &mut Call<'_, '_>) -> Res {
    let a = c.a;
    let mut change: Option<u64> = None; // Some(0): PERSIST
    let mut i = 1;
    while i < a.len() {
        let opt = upper(&a[i]);
        match opt.as_str() {
            "PERSIST" if change.is_none() => change = Some(0),
            "EX" | "PX" | "EXAT" | "PXAT" if change.is_none() && i + 1 < a.len() => {
                i += 1;
                change = Some(expiry(&opt, &a[i], c.db.now, "getex")?);
            }
            _ => return Err(Fail::Syntax),
        }
        i += 1;
    }
    let key = &a[0];
    let now = c.db.now;
    let Some(v) = string(c.db, key)? else {
        reply::nil(c.out);
        return Ok(());
    };
    reply::bulk(c.out, v.as_str().expect("a string"));
    match change {
        None => {}
        Some(at) if at != 0 && at <= now => {
            c.db.remove(key);
        }
        Some(at) if v.expire_at_ms() != at => {
            v.set_expire_at_ms(at);
            if at != 0 {
                c.db.store().note_ttl();
            }
            c.db.touch(key);
        }
        Some(_) => {}
    }
    Ok(())
}

fn mget(c: &mut Call<'_, '_>) -> Res {
    reply::array(c.out, c.a.len());
    for k in c.a {
        let v = c.db.get(k);
        bulk_or_nil(c.out, v.and_then(|v| v.as_str()));
    }
    Ok(())
}

/// `MSET k v [k v …]`, `MSETNX` (nothing if any key exists).
fn mset(c: &mut Call<'_, '_>) -> Res {
    let name = c.cmd.name;
    if !c.a.len().is_multiple_of(2) {
        return fail(format!(
            "ERR wrong number of arguments for '{name}' command"
        ));
    }
    if name == "msetnx" {
        let any = c.a.iter().step_by(2).any(|k| c.db.get(k).is_some());
        if any {
            reply::int(c.out, 0);
            return Ok(());
        }
    }
    for kv in c.a.chunks(2) {
        put(c.db, &kv[0], &kv[1], Some(0));
    }
    if name == "msetnx" {
        reply::int(c.out, 1);
        Ok(())
    } else {
        ok(c.out)
    }
}

fn append(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let len = match string(c.db, key)? {
        Some(v) => {
            let mut s = v.str_mut().expect("a string");
            s.append(&c.a[1]);
            s.bytes().len()
        }
        None => {
            c.db.shard(key)
                .map
                .insert(key.as_slice().into(), Value::str(&c.a[1], 0));
            c.a[1].len()
        }
    };
    c.db.touch(key);
    reply::int(c.out, len as i64);
    Ok(())
}

fn strlen(c: &mut Call<'_, '_>) -> Res {
    let n = string(c.db, &c.a[0])?.map_or(0, |v| v.as_str().expect("a string").len());
    reply::int(c.out, n as i64);
    Ok(())
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`.
fn incr(c: &mut Call<'_, '_>) -> Res {
    let by = match c.cmd.name {
        "incr" => Some(1),
        "decr" => Some(-1),
        "incrby" => parse_i64(&c.a[1]),
        _ => parse_i64(&c.a[1]).and_then(i64::checked_neg),
    }
    .ok_or(Fail::Int)?;
    let key = &c.a[0];
    let cur = match string(c.db, key)? {
        Some(v) => parse_i64(v.as_str().expect("a string")).ok_or(Fail::Int)?,
        None => 0,
    };
    let new = cur
        .checked_add(by)
        .ok_or_else(|| Fail::Msg("ERR increment or decrement would overflow".into()))?;
    put(c.db, key, new.to_string().as_bytes(), None);
    reply::int(c.out, new);
    Ok(())
}

fn incrbyfloat(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let cur = match string(c.db, key)? {
        Some(v) => parse_f64(v.as_str().expect("a string")).ok_or(Fail::Float)?,
        None => 0.0,
    };
    let by = parse_f64(&c.a[1]).ok_or(Fail::Float)?;
    let new = cur + by;
    if !new.is_finite() {
        return fail("ERR increment would produce NaN or Infinity");
    }
    let text = fmt_human(new);
    put(c.db, key, text.as_bytes(), None);
    reply::bulk(c.out, text.as_bytes());
    Ok(())
}

fn setrange(c: &mut Call<'_, '_>) -> Res {
    let (key, value) = (&c.a[0], &c.a[2]);
    let offset = int_arg(&c.a[1])?;
    if offset < 0 {
        return fail("ERR offset is out of range");
    }
    let too_big =
        || Fail::Msg("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into());
    let len = match string(c.db, key)? {
        None if value.is_empty() => 0,
        None => {
            if offset + value.len() as i64 > MAX_STRING {
                return Err(too_big());
            }
            let mut data = vec![0u8; offset as usize];
            data.extend_from_slice(value);
            c.db.shard(key)
                .map
                .insert(key.as_slice().into(), Value::str(&data, 0));
            c.db.touch(key);
            data.len()
        }
        Some(v) => {
            let mut s = v.str_mut().expect("a string");
            if value.is_empty() {
                s.bytes().len()
            } else {
                if offset + value.len() as i64 > MAX_STRING {
                    return Err(too_big());
                }
                let (off, end) = (offset as usize, offset as usize + value.len());
                s.grow(end);
                s.bytes()[off..end].copy_from_slice(value);
                let n = s.bytes().len();
                c.db.touch(key);
                n
            }
        }
    };
    reply::int(c.out, len as i64);
    Ok(())
}

fn getrange(c: &mut Call<'_, '_>) -> Res {
    let (mut start, mut end) = (int_arg(&c.a[1])?, int_arg(&c.a[2])?);
    let Some(v) = string(c.db, &c.a[0])? else {
        reply::bulk(c.out, b"");
        return Ok(());
    };
    let s = v.as_str().expect("a string");
    let len = s.len() as i64;
    if start < 0 && end < 0 && start > end {
        reply::bulk(c.out, b"");
        return Ok(());
    }
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        reply::bulk(c.out, b"");
    } else {
        reply::bulk(c.out, &s[start as usize..=end as usize]);
    }
    Ok(())
}
