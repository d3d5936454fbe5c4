//! Hashes: HSET, HMSET, HSETNX, HGET, HMGET, HDEL, HEXISTS, HLEN, HGETALL, HKEYS, HVALS,
//! HINCRBY, HINCRBYFLOAT, HSTRLEN, HSCAN. A hash is a std `HashMap` of field → value.

use super::keyspace::{reply_scan, ScanOpts};
use super::{cmd, fail, fmt_human, int_arg, ok, parse_f64, parse_i64, Call, Cmd, Fail, Res};
use super::{FAST, K1, READONLY, WRITE};
use crate::resp::reply;
use crate::store::{Hash, Value};

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("hset", -4, WRITE | FAST, K1, hset),
    cmd!("hmset", -4, WRITE | FAST, K1, hset),
    cmd!("hsetnx", 4, WRITE | FAST, K1, hsetnx),
    cmd!("hget", 3, READONLY | FAST, K1, hget),
    cmd!("hmget", -3, READONLY | FAST, K1, hmget),
    cmd!("hdel", -3, WRITE | FAST, K1, hdel),
    cmd!("hexists", 3, READONLY | FAST, K1, hexists),
    cmd!("hlen", 2, READONLY | FAST, K1, hlen),
    cmd!("hgetall", 2, READONLY, K1, hgetall),
    cmd!("hkeys", 2, READONLY, K1, hgetall),
    cmd!("hvals", 2, READONLY, K1, hgetall),
    cmd!("hincrby", 4, WRITE | FAST, K1, hincrby),
    cmd!("hincrbyfloat", 4, WRITE | FAST, K1, hincrbyfloat),
    cmd!("hstrlen", 3, READONLY | FAST, K1, hstrlen),
    cmd!("hscan", -3, READONLY, K1, hscan),
];

fn as_hash(v: &mut Value) -> Option<&mut Hash> {
    match v {
        Value::Hash(o) => Some(&mut o.v),
        _ => None,
    }
}

/// `HSET key f v [f v …]` (the new fields), `HMSET` (OK).
fn hset(c: &mut Call<'_, '_>) -> Res {
    let name = c.cmd.name;
    if !(c.a.len() - 1).is_multiple_of(2) {
        return fail(format!(
            "ERR wrong number of arguments for '{name}' command"
        ));
    }
    let key = &c.a[0];
    let h = c.db.get_or_make(key, Value::hash, as_hash)?;
    let mut added = 0;
    for fv in c.a[1..].chunks(2) {
        match h.get_mut(fv[0].as_slice()) {
            Some(v) => fv[1].clone_into(v),
            None => {
                h.insert(fv[0].as_slice().into(), fv[1].clone());
                added += 1;
            }
        }
    }
    c.db.touch(key);
    if name == "hmset" {
        return ok(c.out);
    }
    reply::int(c.out, added);
    Ok(())
}

fn hsetnx(c: &mut Call<'_, '_>) -> Res {
    let (key, f) = (&c.a[0], &c.a[1]);
    let h = c.db.get_or_make(key, Value::hash, as_hash)?;
    if h.contains_key(f.as_slice()) {
        reply::int(c.out, 0);
        return Ok(());
    }
    h.insert(f.as_slice().into(), c.a[2].clone());
    c.db.touch(key);
    reply::int(c.out, 1);
    Ok(())
}

fn hget(c: &mut Call<'_, '_>) -> Res {
    match c
        .db
        .get_as(&c.a[0], as_hash)?
        .and_then(|h| h.get(c.a[1].as_slice()))
    {
        Some(v) => reply::bulk(c.out, v),
        None => reply::nil(c.out),
    }
    Ok(())
}

fn hmget(c: &mut Call<'_, '_>) -> Res {
    let h = c.db.get_as(&c.a[0], as_hash)?;
    reply::array(c.out, c.a.len() - 1);
    for f in &c.a[1..] {
        match h.as_ref().and_then(|h| h.get(f.as_slice())) {
            Some(v) => reply::bulk(c.out, v),
            None => reply::nil(c.out),
        }
    }
    Ok(())
}

fn hdel(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let mut n = 0;
    if let Some(h) = c.db.get_as(key, as_hash)? {
        for f in &c.a[1..] {
            n += i64::from(h.remove(f.as_slice()).is_some());
        }
    }
    if n > 0 {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    reply::int(c.out, n);
    Ok(())
}

fn hexists(c: &mut Call<'_, '_>) -> Res {
    let h = c.db.get_as(&c.a[0], as_hash)?;
    let n = h.is_some_and(|h| h.contains_key(c.a[1].as_slice()));
    reply::int(c.out, n.into());
    Ok(())
}

fn hlen(c: &mut Call<'_, '_>) -> Res {
    let n = c.db.get_as(&c.a[0], as_hash)?.map_or(0, |h| h.len());
    reply::int(c.out, n as i64);
    Ok(())
}

/// `HGETALL` (field, value, …), `HKEYS`, `HVALS`.
fn hgetall(c: &mut Call<'_, '_>) -> Res {
    let (keys, vals) = match c.cmd.name {
        "hgetall" => (true, true),
        "hkeys" => (true, false),
        _ => (false, true),
    };
    let Some(h) = c.db.get_as(&c.a[0], as_hash)? else {
        reply::array(c.out, 0);
        return Ok(());
    };
    reply::array(c.out, h.len() * (usize::from(keys) + usize::from(vals)));
    for (f, v) in h.iter() {
        if keys {
            reply::bulk(c.out, f);
        }
        if vals {
            reply::bulk(c.out, v);
        }
    }
    Ok(())
}

fn hincrby(c: &mut Call<'_, '_>) -> Res {
    let by = int_arg(&c.a[2])?;
    let (key, f) = (&c.a[0], &c.a[1]);
    let h = c.db.get_or_make(key, Value::hash, as_hash)?;
    let cur = match h.get(f.as_slice()) {
        Some(v) => {
            parse_i64(v).ok_or_else(|| Fail::Msg("ERR hash value is not an integer".into()))?
        }
        None => 0,
    };
    let Some(new) = cur.checked_add(by) else {
        c.db.drop_if_empty(key);
        return fail("ERR increment or decrement would overflow");
    };
    h.insert(f.as_slice().into(), new.to_string().into_bytes());
    c.db.touch(key);
    reply::int(c.out, new);
    Ok(())
}

fn hincrbyfloat(c: &mut Call<'_, '_>) -> Res {
    let by = parse_f64(&c.a[2]).ok_or(Fail::Float)?;
    let (key, f) = (&c.a[0], &c.a[1]);
    let h = c.db.get_or_make(key, Value::hash, as_hash)?;
    let cur = match h.get(f.as_slice()) {
        Some(v) => parse_f64(v).ok_or_else(|| Fail::Msg("ERR hash value is not a float".into()))?,
        None => 0.0,
    };
    let new = cur + by;
    if !new.is_finite() {
        c.db.drop_if_empty(key);
        return fail("ERR increment would produce NaN or Infinity");
    }
    let text = fmt_human(new);
    h.insert(f.as_slice().into(), text.clone().into_bytes());
    c.db.touch(key);
    reply::bulk(c.out, text.as_bytes());
    Ok(())
}

fn hstrlen(c: &mut Call<'_, '_>) -> Res {
    let h = c.db.get_as(&c.a[0], as_hash)?;
    let n = h.and_then(|h| h.get(c.a[1].as_slice())).map_or(0, Vec::len);
    reply::int(c.out, n as i64);
    Ok(())
}

/// `HSCAN key cursor [MATCH p] [COUNT n]`: the whole hash in one call (cursor 0).
fn hscan(c: &mut Call<'_, '_>) -> Res {
    let o = ScanOpts::parse(&c.a[1..], false)?;
    let mut items: Vec<&[u8]> = Vec::new();
    if let Some(h) = c.db.get_as(&c.a[0], as_hash)? {
        for (f, v) in h.iter().filter(|(f, _)| o.matches(f)) {
            items.push(f);
            items.push(v);
        }
    }
    reply_scan(c.out, &items);
    Ok(())
}
