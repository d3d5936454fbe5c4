//! Sorted sets: ZADD (NX / XX / GT / LT / CH / INCR), ZREM, ZSCORE, ZMSCORE, ZINCRBY, ZCARD,
//! ZCOUNT, ZRANK, ZREVRANK, ZRANGE (BYSCORE / REV / LIMIT / WITHSCORES), ZREVRANGE,
//! ZRANGEBYSCORE, ZREVRANGEBYSCORE, ZREMRANGEBYRANK, ZREMRANGEBYSCORE, ZPOPMIN, ZPOPMAX, ZSCAN.
//! A sorted set is a `BTreeSet` of (score, member) plus a `HashMap` member → score
//! ([`crate::store::ZSet`]); ranks are counted by walking the tree.

use super::keyspace::{reply_scan, ScanOpts};
use super::{
    cmd, fail, fmt_score, index_range, int_arg, parse_f64, parse_i64, upper, Call, Cmd, Fail, Res,
};
use super::{FAST, K1, READONLY, WRITE};
use crate::resp::reply;
use crate::store::{Bytes, Score, Value, ZSet};

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("zadd", -4, WRITE | FAST, K1, zadd),
    cmd!("zrem", -3, WRITE | FAST, K1, zrem),
    cmd!("zscore", 3, READONLY | FAST, K1, zscore),
    cmd!("zmscore", -3, READONLY | FAST, K1, zmscore),
    cmd!("zincrby", 4, WRITE | FAST, K1, zincrby),
    cmd!("zcard", 2, READONLY | FAST, K1, zcard),
    cmd!("zcount", 4, READONLY | FAST, K1, zcount),
    cmd!("zrank", 3, READONLY | FAST, K1, zrank),
    cmd!("zrevrank", 3, READONLY | FAST, K1, zrank),
    cmd!("zrange", -4, READONLY, K1, zrange),
    cmd!("zrevrange", -4, READONLY, K1, zrange),
    cmd!("zrangebyscore", -4, READONLY, K1, zrange),
    cmd!("zrevrangebyscore", -4, READONLY, K1, zrange),
    cmd!("zremrangebyrank", 4, WRITE, K1, zremrange),
    cmd!("zremrangebyscore", 4, WRITE, K1, zremrange),
    cmd!("zpopmin", -2, WRITE | FAST, K1, zpop),
    cmd!("zpopmax", -2, WRITE | FAST, K1, zpop),
    cmd!("zscan", -3, READONLY, K1, zscan),
];

fn as_zset(v: &mut Value) -> Option<&mut ZSet> {
    match v {
        Value::ZSet(o) => Some(&mut o.v),
        _ => None,
    }
}

fn score_arg(b: &[u8]) -> Result<f64, Fail> {
    parse_f64(b).ok_or(Fail::Float)
}

fn bulk_score(out: &mut Vec<u8>, s: f64) {
    reply::bulk(out, fmt_score(s).as_bytes());
}

/// `ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member …]`.
fn zadd(c: &mut Call<'_, '_>) -> Res {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 1;
    while i < c.a.len() {
        match upper(&c.a[i]).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            "CH" => ch = true,
            "INCR" => incr = true,
            _ => break,
        }
        i += 1;
    }
    let pairs = &c.a[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(Fail::Syntax);
    }
    if nx && xx {
        return fail("ERR XX and NX options at the same time are not compatible");
    }
    if ((gt || lt) && nx) || (gt && lt) {
        return fail("ERR GT, LT, and/or NX options at the same time are not compatible");
    }
    if incr && pairs.len() > 2 {
        return fail("ERR INCR option supports a single increment-element pair");
    }
    let scores = pairs
        .chunks(2)
        .map(|p| score_arg(&p[0]))
        .collect::<Result<Vec<f64>, Fail>>()?;
    let key = &c.a[0];
    let exists = c.db.get_as(key, as_zset)?.is_some();
    let (mut added, mut updated, mut result) = (0, 0, None);
    if exists || !xx {
        let z = c.db.get_or_make(key, Value::zset, as_zset)?;
        for (p, &s) in pairs.chunks(2).zip(&scores) {
            let m = p[1].as_slice();
            match z.scores.get(m).copied() {
                Some(cur) => {
                    if nx {
                        continue;
                    }
                    let new = if incr { cur + s } else { s };
                    if new.is_nan() {
                        c.db.drop_if_empty(key);
                        return fail("ERR resulting score is not a number (NaN)");
                    }
                    if (gt && new <= cur) || (lt && new >= cur) {
                        continue;
                    }
                    if new != cur {
                        z.insert(m, new);
                        updated += 1;
                    }
                    result = Some(new);
                }
                None => {
                    if xx {
                        continue;
                    }
                    z.insert(m, s);
                    added += 1;
                    result = Some(s);
                }
            }
        }
        if added + updated > 0 {
            c.db.touch(key);
        }
        c.db.drop_if_empty(key);
    }
    if incr {
        match result {
            Some(s) => bulk_score(c.out, s),
            None => reply::nil(c.out),
        }
    } else {
        reply::int(c.out, if ch { added + updated } else { added });
    }
    Ok(())
}

fn zrem(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let mut n = 0;
    if let Some(z) = c.db.get_as(key, as_zset)? {
        for m in &c.a[1..] {
            n += i64::from(z.remove(m));
        }
    }
    if n > 0 {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    reply::int(c.out, n);
    Ok(())
}

fn zscore(c: &mut Call<'_, '_>) -> Res {
    let z = c.db.get_as(&c.a[0], as_zset)?;
    match z.and_then(|z| z.scores.get(c.a[1].as_slice()).copied()) {
        Some(s) => bulk_score(c.out, s),
        None => reply::nil(c.out),
    }
    Ok(())
}

fn zmscore(c: &mut Call<'_, '_>) -> Res {
    let z = c.db.get_as(&c.a[0], as_zset)?;
    reply::array(c.out, c.a.len() - 1);
    for m in &c.a[1..] {
        match z.as_ref().and_then(|z| z.scores.get(m.as_slice()).copied()) {
            Some(s) => bulk_score(c.out, s),
            None => reply::nil(c.out),
        }
    }
    Ok(())
}

fn zincrby(c: &mut Call<'_, '_>) -> Res {
    let by = score_arg(&c.a[1])?;
    let (key, m) = (&c.a[0], c.a[2].as_slice());
    let z = c.db.get_or_make(key, Value::zset, as_zset)?;
    let new = z.scores.get(m).copied().unwrap_or(0.0) + by;
    if new.is_nan() {
        c.db.drop_if_empty(key);
        return fail("ERR resulting score is not a number (NaN)");
    }
    z.insert(m, new);
    c.db.touch(key);
    bulk_score(c.out, new);
    Ok(())
}

fn zcard(c: &mut Call<'_, '_>) -> Res {
    let n = c.db.get_as(&c.a[0], as_zset)?.map_or(0, |z| z.len());
    reply::int(c.out, n as i64);
    Ok(())
}

/// A score interval: `(` excludes, `-inf` / `+inf`.
#[derive(Debug, Clone, Copy)]
struct Interval {
    min: f64,
    min_ex: bool,
    max: f64,
    max_ex: bool,
}

impl Interval {
    fn parse(min: &[u8], max: &[u8]) -> Result<Interval, Fail> {
        let bound = |b: &[u8]| -> Option<(f64, bool)> {
            match b.strip_prefix(b"(") {
                Some(rest) => parse_f64(rest).map(|v| (v, true)),
                None => parse_f64(b).map(|v| (v, false)),
            }
        };
        let err = || Fail::Msg("ERR min or max is not a float".into());
        let (min, min_ex) = bound(min).ok_or_else(err)?;
        let (max, max_ex) = bound(max).ok_or_else(err)?;
        Ok(Interval {
            min,
            min_ex,
            max,
            max_ex,
        })
    }

    fn above_min(&self, s: f64) -> bool {
        if self.min_ex {
            s > self.min
        } else {
            s >= self.min
        }
    }

    fn below_max(&self, s: f64) -> bool {
        if self.max_ex {
            s < self.max
        } else {
            s <= self.max
        }
    }

    /// The members in the interval, ascending.
    fn members<'z>(&self, z: &'z ZSet) -> impl Iterator<Item = &'z (Score, Bytes)> + 'z {
        let me = *self;
        let start = (Score(self.min), Bytes::default());
        z.by_score
            .range(start..)
            .skip_while(move |(s, _)| !me.above_min(s.0))
            .take_while(move |(s, _)| me.below_max(s.0))
    }
}

fn zcount(c: &mut Call<'_, '_>) -> Res {
    let r = Interval::parse(&c.a[1], &c.a[2])?;
    let n =
        c.db.get_as(&c.a[0], as_zset)?
            .map_or(0, |z| r.members(z).count());
    reply::int(c.out, n as i64);
    Ok(())
}

fn zrank(c: &mut Call<'_, '_>) -> Res {
    let z = c.db.get_as(&c.a[0], as_zset)?;
    let rank = z.and_then(|z| {
        let r = z.rank(&c.a[1])?;
        Some(if c.cmd.name == "zrevrank" {
            z.len() - 1 - r
        } else {
            r
        })
    });
    match rank {
        Some(r) => reply::int(c.out, r as i64),
        None => reply::nil(c.out),
    }
    Ok(())
}

/// `ZRANGE key start stop [BYSCORE] [REV] [LIMIT offset count] [WITHSCORES]` and the older
/// ZREVRANGE, ZRANGEBYSCORE, ZREVRANGEBYSCORE.
fn zrange(c: &mut Call<'_, '_>) -> Res {
    let name = c.cmd.name;
    let (mut byscore, mut rev) = match name {
        "zrange" => (false, false),
        "zrevrange" => (false, true),
        "zrangebyscore" => (true, false),
        _ => (true, true),
    };
    let (mut withscores, mut limit) = (false, None);
    let mut i = 3;
    while i < c.a.len() {
        match upper(&c.a[i]).as_str() {
            "WITHSCORES" => withscores = true,
            "LIMIT" if i + 2 < c.a.len() && name != "zrevrange" => {
                let off = int_arg(&c.a[i + 1])?;
                let cnt = int_arg(&c.a[i + 2])?;
                limit = Some((off, cnt));
                i += 2;
            }
            "BYSCORE" if name == "zrange" => byscore = true,
            "REV" if name == "zrange" => rev = true,
            "BYLEX" if name == "zrange" => {
                return fail("ERR syntax error, BYLEX is not supported by this server")
            }
            _ => return Err(Fail::Syntax),
        }
        i += 1;
    }
    if limit.is_some() && !byscore {
        return fail(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        );
    }
    let picked: Vec<(f64, Bytes)> = if byscore {
        let (lo, hi) = if rev {
            (&c.a[2], &c.a[1])
        } else {
            (&c.a[1], &c.a[2])
        };
        let r = Interval::parse(lo, hi)?;
        let Some(z) = c.db.get_as(&c.a[0], as_zset)? else {
            reply::array(c.out, 0);
            return Ok(());
        };
        let (off, cnt) = limit.unwrap_or((0, -1));
        if off < 0 {
            reply::array(c.out, 0);
            return Ok(());
        }
        let cnt = if cnt < 0 { usize::MAX } else { cnt as usize };
        let all = r.members(z).map(|(s, m)| (s.0, m.clone()));
        if rev {
            let v: Vec<_> = all.collect();
            v.into_iter().rev().skip(off as usize).take(cnt).collect()
        } else {
            all.skip(off as usize).take(cnt).collect()
        }
    } else {
        let (start, end) = (int_arg(&c.a[1])?, int_arg(&c.a[2])?);
        let Some(z) = c.db.get_as(&c.a[0], as_zset)? else {
            reply::array(c.out, 0);
            return Ok(());
        };
        match index_range(start, end, z.len()) {
            None => Vec::new(),
            Some((s, e)) => {
                let n = e - s + 1;
                let it = z.by_score.iter().map(|(s, m)| (s.0, m.clone()));
                if rev {
                    it.rev().skip(s).take(n).collect()
                } else {
                    it.skip(s).take(n).collect()
                }
            }
        }
    };
    reply_members(c.out, &picked, withscores);
    Ok(())
}

fn reply_members(out: &mut Vec<u8>, picked: &[(f64, Bytes)], withscores: bool) {
    reply::array(out, picked.len() * if withscores { 2 } else { 1 });
    for (s, m) in picked {
        reply::bulk(out, m);
        if withscores {
            bulk_score(out, *s);
        }
    }
}

/// `ZREMRANGEBYRANK key start stop`, `ZREMRANGEBYSCORE key min max`.
fn zremrange(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let doomed: Vec<Bytes> = if c.cmd.name == "zremrangebyrank" {
        let (start, end) = (int_arg(&c.a[1])?, int_arg(&c.a[2])?);
        let Some(z) = c.db.get_as(key, as_zset)? else {
            reply::int(c.out, 0);
            return Ok(());
        };
        match index_range(start, end, z.len()) {
            None => Vec::new(),
            Some((s, e)) => z
                .by_score
                .iter()
                .skip(s)
                .take(e - s + 1)
                .map(|(_, m)| m.clone())
                .collect(),
        }
    } else {
        let r = Interval::parse(&c.a[1], &c.a[2])?;
        let Some(z) = c.db.get_as(key, as_zset)? else {
            reply::int(c.out, 0);
            return Ok(());
        };
        r.members(z).map(|(_, m)| m.clone()).collect()
    };
    if !doomed.is_empty() {
        let z = c.db.get_as(key, as_zset)?.expect("looked up");
        for m in &doomed {
            z.remove(m);
        }
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    reply::int(c.out, doomed.len() as i64);
    Ok(())
}

/// `ZPOPMIN key [count]`, `ZPOPMAX`.
fn zpop(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let count = match c.a.len() {
        1 => 1,
        2 => match parse_i64(&c.a[1]) {
            Some(n) if n >= 0 => n as usize,
            _ => return fail("ERR value is out of range, must be positive"),
        },
        _ => return Err(Fail::Syntax),
    };
    let Some(z) = c.db.get_as(key, as_zset)? else {
        reply::array(c.out, 0);
        return Ok(());
    };
    let picked: Vec<(f64, Bytes)> = if c.cmd.name == "zpopmin" {
        z.by_score
            .iter()
            .take(count)
            .map(|(s, m)| (s.0, m.clone()))
            .collect()
    } else {
        z.by_score
            .iter()
            .rev()
            .take(count)
            .map(|(s, m)| (s.0, m.clone()))
            .collect()
    };
    for (_, m) in &picked {
        z.remove(m);
    }
    if !picked.is_empty() {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    reply_members(c.out, &picked, true);
    Ok(())
}

/// `ZSCAN key cursor [MATCH p] [COUNT n]`: the whole sorted set in one call (cursor 0).
fn zscan(c: &mut Call<'_, '_>) -> Res {
    let o = ScanOpts::parse(&c.a[1..], false)?;
    let mut texts: Vec<(Bytes, String)> = Vec::new();
    if let Some(z) = c.db.get_as(&c.a[0], as_zset)? {
        for (m, s) in z.scores.iter().filter(|(m, _)| o.matches(m)) {
            texts.push((m.clone(), fmt_score(*s)));
        }
    }
    let mut items: Vec<&[u8]> = Vec::with_capacity(texts.len() * 2);
    for (m, s) in &texts {
        items.push(m);
        items.push(s.as_bytes());
    }
    reply_scan(c.out, &items);
    Ok(())
}
