//! Sets: SADD, SREM, SMEMBERS, SISMEMBER, SMISMEMBER, SCARD, SPOP, SRANDMEMBER, SINTER,
//! SUNION, SDIFF, SINTERSTORE, SUNIONSTORE, SDIFFSTORE, SMOVE, SSCAN. A set is a std
//! `HashSet`.

use super::keyspace::{reply_scan, ScanOpts};
use super::{cmd, fail, int_arg, Call, Cmd, Fail, Res};
use super::{FAST, K1, KALL, READONLY, WRITE};
use crate::resp::reply;
use crate::store::{Bytes, Locked, Set, Value};
use std::hash::BuildHasher;

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("sadd", -3, WRITE | FAST, K1, sadd),
    cmd!("srem", -3, WRITE | FAST, K1, srem),
    cmd!("smembers", 2, READONLY, K1, smembers),
    cmd!("sismember", 3, READONLY | FAST, K1, sismember),
    cmd!("smismember", -3, READONLY | FAST, K1, smismember),
    cmd!("scard", 2, READONLY | FAST, K1, scard),
    cmd!("spop", -2, WRITE | FAST, K1, spop),
    cmd!("srandmember", -2, READONLY, K1, srandmember),
    cmd!("sinter", -2, READONLY, KALL, combine),
    cmd!("sunion", -2, READONLY, KALL, combine),
    cmd!("sdiff", -2, READONLY, KALL, combine),
    cmd!("sinterstore", -3, WRITE, KALL, combine),
    cmd!("sunionstore", -3, WRITE, KALL, combine),
    cmd!("sdiffstore", -3, WRITE, KALL, combine),
    cmd!("smove", 4, WRITE | FAST, (1, 2, 1), smove),
    cmd!("sscan", -3, READONLY, K1, sscan),
];

fn as_set(v: &mut Value) -> Option<&mut Set> {
    match v {
        Value::Set(o) => Some(&mut o.v),
        _ => None,
    }
}

/// A random number (for SPOP / SRANDMEMBER): std's per-process random keys, hashed.
fn random(n: usize) -> usize {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let r = std::collections::hash_map::RandomState::new()
        .hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    (r % n.max(1) as u64) as usize
}

fn sadd(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let s = c.db.get_or_make(key, Value::set, as_set)?;
    let mut n = 0;
    for m in &c.a[1..] {
        if !s.contains(m.as_slice()) {
            s.insert(m.as_slice().into());
            n += 1;
        }
    }
    if n > 0 {
        c.db.touch(key);
    }
    c.db.drop_if_empty(key);
    reply::int(c.out, n);
    Ok(())
}

fn srem(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let mut n = 0;
    if let Some(s) = c.db.get_as(key, as_set)? {
        for m in &c.a[1..] {
            n += i64::from(s.remove(m.as_slice()));
        }
    }
    if n > 0 {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    reply::int(c.out, n);
    Ok(())
}

fn reply_members<'m>(out: &mut Vec<u8>, n: usize, members: impl Iterator<Item = &'m Bytes>) {
    reply::array(out, n);
    for m in members {
        reply::bulk(out, m);
    }
}

fn smembers(c: &mut Call<'_, '_>) -> Res {
    match c.db.get_as(&c.a[0], as_set)? {
        Some(s) => reply_members(c.out, s.len(), s.iter()),
        None => reply::array(c.out, 0),
    }
    Ok(())
}

fn sismember(c: &mut Call<'_, '_>) -> Res {
    let s = c.db.get_as(&c.a[0], as_set)?;
    reply::int(
        c.out,
        s.is_some_and(|s| s.contains(c.a[1].as_slice())).into(),
    );
    Ok(())
}

fn smismember(c: &mut Call<'_, '_>) -> Res {
    let s = c.db.get_as(&c.a[0], as_set)?;
    reply::array(c.out, c.a.len() - 1);
    for m in &c.a[1..] {
        let hit = s.as_ref().is_some_and(|s| s.contains(m.as_slice()));
        reply::int(c.out, hit.into());
    }
    Ok(())
}

fn scard(c: &mut Call<'_, '_>) -> Res {
    let n = c.db.get_as(&c.a[0], as_set)?.map_or(0, |s| s.len());
    reply::int(c.out, n as i64);
    Ok(())
}

/// The optional count of SPOP / SRANDMEMBER.
fn count_arg(c: &Call<'_, '_>) -> Result<Option<i64>, Fail> {
    match c.a.len() {
        1 => Ok(None),
        2 => int_arg(&c.a[1]).map(Some),
        _ => Err(Fail::Syntax),
    }
}

fn spop(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let count = count_arg(c)?;
    if count.is_some_and(|n| n < 0) {
        return fail("ERR value is out of range, must be positive");
    }
    let Some(s) = c.db.get_as(key, as_set)? else {
        match count {
            None => reply::nil(c.out),
            Some(_) => reply::array(c.out, 0),
        }
        return Ok(());
    };
    let n = count.map_or(1, |n| (n as usize).min(s.len()));
    let mut popped = Vec::with_capacity(n);
    for _ in 0..n {
        let m = s.iter().nth(random(s.len())).expect("in range").clone();
        s.remove(&m);
        popped.push(m);
    }
    if n > 0 {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    match count {
        None => reply::bulk(c.out, &popped[0]),
        Some(_) => reply_members(c.out, popped.len(), popped.iter()),
    }
    Ok(())
}

fn srandmember(c: &mut Call<'_, '_>) -> Res {
    let count = count_arg(c)?;
    let Some(s) = c.db.get_as(&c.a[0], as_set)? else {
        match count {
            None => reply::nil(c.out),
            Some(_) => reply::array(c.out, 0),
        }
        return Ok(());
    };
    let all: Vec<&Bytes> = s.iter().collect();
    match count {
        None => reply::bulk(c.out, all[random(all.len())]),
        Some(n) if n >= 0 => {
            let mut pick = all;
            let n = (n as usize).min(pick.len());
            for i in 0..n {
                let j = i + random(pick.len() - i);
                pick.swap(i, j);
            }
            reply_members(c.out, n, pick.into_iter().take(n));
        }
        Some(n) => {
            let n = n.unsigned_abs() as usize;
            reply::array(c.out, n);
            for _ in 0..n {
                reply::bulk(c.out, all[random(all.len())]);
            }
        }
    }
    Ok(())
}

/// The sets at `keys` (`None`: missing), `WRONGTYPE` if any holds another type.
fn sets(db: &mut Locked<'_>, keys: &[Vec<u8>]) -> Result<Vec<Option<Set>>, Fail> {
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        out.push(db.get_as(k, as_set)?.map(|s| s.clone()));
    }
    Ok(out)
}

/// SINTER / SUNION / SDIFF and their *STORE forms.
fn combine(c: &mut Call<'_, '_>) -> Res {
    let name = c.cmd.name;
    let store = name.ends_with("store");
    let keys = if store { &c.a[1..] } else { c.a };
    let inter = name.starts_with("sinter");
    let sets = sets(c.db, keys)?;
    let result: Set = if inter {
        if sets.iter().any(Option::is_none) {
            Set::new()
        } else {
            let mut it = sets.into_iter().flatten();
            let first = it.next().unwrap_or_default();
            let rest: Vec<Set> = it.collect();
            first
                .into_iter()
                .filter(|m| rest.iter().all(|s| s.contains(m)))
                .collect()
        }
    } else if name.starts_with("sunion") {
        sets.into_iter().flatten().flatten().collect()
    } else {
        let mut it = sets.into_iter();
        let first = it.next().flatten().unwrap_or_default();
        let rest: Vec<Set> = it.flatten().collect();
        first
            .into_iter()
            .filter(|m| !rest.iter().any(|s| s.contains(m)))
            .collect()
    };
    if !store {
        reply_members(c.out, result.len(), result.iter());
        return Ok(());
    }
    let dst = &c.a[0];
    let n = result.len();
    if n == 0 {
        c.db.remove(dst);
    } else {
        let mut v = Value::set();
        *as_set(&mut v).expect("a set") = result;
        c.db.insert(dst, v);
    }
    reply::int(c.out, n as i64);
    Ok(())
}

fn smove(c: &mut Call<'_, '_>) -> Res {
    let (src, dst, m) = (&c.a[0], &c.a[1], c.a[2].as_slice());
    let Some(v) = c.db.get(src) else {
        reply::int(c.out, 0);
        return Ok(());
    };
    if as_set(v).is_none() || c.db.get_as(dst, as_set).is_err() {
        return Err(Fail::WrongType);
    }
    if src == dst {
        let hit = c.db.get_as(src, as_set)?.is_some_and(|s| s.contains(m));
        reply::int(c.out, hit.into());
        return Ok(());
    }
    let s = c.db.get_as(src, as_set)?.expect("looked up");
    if !s.remove(m) {
        reply::int(c.out, 0);
        return Ok(());
    }
    c.db.touch(src);
    c.db.drop_if_empty(src);
    c.db.get_or_make(dst, Value::set, as_set)?.insert(m.into());
    c.db.touch(dst);
    reply::int(c.out, 1);
    Ok(())
}

/// `SSCAN key cursor [MATCH p] [COUNT n]`: the whole set in one call (cursor 0).
fn sscan(c: &mut Call<'_, '_>) -> Res {
    let o = ScanOpts::parse(&c.a[1..], false)?;
    let mut items: Vec<&[u8]> = Vec::new();
    if let Some(s) = c.db.get_as(&c.a[0], as_set)? {
        items.extend(s.iter().filter(|m| o.matches(m)).map(|m| &m[..]));
    }
    reply_scan(c.out, &items);
    Ok(())
}
