//! Lists: LPUSH, RPUSH, LPUSHX, RPUSHX, LPOP, RPOP, LLEN, LRANGE, LINDEX, LSET, LREM, LTRIM,
//! LINSERT, LMOVE, RPOPLPUSH. A list is a std `VecDeque`.

use super::{cmd, fail, index_range, int_arg, ok, upper, Call, Cmd, Fail, Res};
use super::{FAST, K1, READONLY, WRITE};
use crate::resp::reply;
use crate::store::{List, Value};

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("lpush", -3, WRITE | FAST, K1, push),
    cmd!("rpush", -3, WRITE | FAST, K1, push),
    cmd!("lpushx", -3, WRITE | FAST, K1, push),
    cmd!("rpushx", -3, WRITE | FAST, K1, push),
    cmd!("lpop", -2, WRITE | FAST, K1, pop),
    cmd!("rpop", -2, WRITE | FAST, K1, pop),
    cmd!("llen", 2, READONLY | FAST, K1, llen),
    cmd!("lrange", 4, READONLY, K1, lrange),
    cmd!("lindex", 3, READONLY, K1, lindex),
    cmd!("lset", 4, WRITE, K1, lset),
    cmd!("lrem", 4, WRITE, K1, lrem),
    cmd!("ltrim", 4, WRITE, K1, ltrim),
    cmd!("linsert", 5, WRITE, K1, linsert),
    cmd!("lmove", 5, WRITE, (1, 2, 1), lmove),
    cmd!("rpoplpush", 3, WRITE, (1, 2, 1), lmove),
];

fn as_list(v: &mut Value) -> Option<&mut List> {
    match v {
        Value::List(o) => Some(&mut o.v),
        _ => None,
    }
}

/// `LPUSH key e…` and the others: the new length.
fn push(c: &mut Call<'_, '_>) -> Res {
    let name = c.cmd.name;
    let key = &c.a[0];
    let list = if name.ends_with('x') {
        match c.db.get_as(key, as_list)? {
            Some(l) => l,
            None => {
                reply::int(c.out, 0);
                return Ok(());
            }
        }
    } else {
        c.db.get_or_make(key, Value::list, as_list)?
    };
    for e in &c.a[1..] {
        if name.starts_with('l') {
            list.push_front(e.clone());
        } else {
            list.push_back(e.clone());
        }
    }
    let n = list.len();
    c.db.touch(key);
    reply::int(c.out, n as i64);
    Ok(())
}

/// `LPOP key [count]`, `RPOP`.
fn pop(c: &mut Call<'_, '_>) -> Res {
    let left = c.cmd.name == "lpop";
    let key = &c.a[0];
    let count = match c.a.len() {
        1 => None,
        2 => match int_arg(&c.a[1]) {
            Ok(n) if n >= 0 => Some(n as usize),
            _ => return fail("ERR value is out of range, must be positive"),
        },
        _ => return Err(Fail::Syntax),
    };
    let Some(list) = c.db.get_as(key, as_list)? else {
        match count {
            None => reply::nil(c.out),
            Some(_) => reply::nil_array(c.out),
        }
        return Ok(());
    };
    let n = count.unwrap_or(1).min(list.len());
    let popped: Vec<Vec<u8>> = (0..n)
        .filter_map(|_| {
            if left {
                list.pop_front()
            } else {
                list.pop_back()
            }
        })
        .collect();
    if n > 0 {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    match count {
        None => reply::bulk(c.out, &popped[0]),
        Some(_) => {
            reply::array(c.out, popped.len());
            for e in &popped {
                reply::bulk(c.out, e);
            }
        }
    }
    Ok(())
}

fn llen(c: &mut Call<'_, '_>) -> Res {
    let n = c.db.get_as(&c.a[0], as_list)?.map_or(0, |l| l.len());
    reply::int(c.out, n as i64);
    Ok(())
}

fn lrange(c: &mut Call<'_, '_>) -> Res {
    let (start, end) = (int_arg(&c.a[1])?, int_arg(&c.a[2])?);
    let Some(list) = c.db.get_as(&c.a[0], as_list)? else {
        reply::array(c.out, 0);
        return Ok(());
    };
    match index_range(start, end, list.len()) {
        None => reply::array(c.out, 0),
        Some((s, e)) => {
            reply::array(c.out, e - s + 1);
            for x in list.range(s..=e) {
                reply::bulk(c.out, x);
            }
        }
    }
    Ok(())
}

/// A list index (negative from the tail) inside `len`.
fn index(i: i64, len: usize) -> Option<usize> {
    let i = if i < 0 { len as i64 + i } else { i };
    (0..len as i64).contains(&i).then_some(i as usize)
}

fn lindex(c: &mut Call<'_, '_>) -> Res {
    let i = int_arg(&c.a[1])?;
    let list = c.db.get_as(&c.a[0], as_list)?;
    match list.and_then(|l| index(i, l.len()).map(|i| &l[i])) {
        Some(e) => reply::bulk(c.out, e),
        None => reply::nil(c.out),
    }
    Ok(())
}

fn lset(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let list = c.db.get_as(key, as_list)?.ok_or(Fail::NoKey)?;
    let i = int_arg(&c.a[1])?;
    let i = index(i, list.len()).ok_or_else(|| Fail::Msg("ERR index out of range".into()))?;
    list[i] = c.a[2].clone();
    c.db.touch(key);
    ok(c.out)
}

fn lrem(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let count = int_arg(&c.a[1])?;
    let e = c.a[2].as_slice();
    let Some(list) = c.db.get_as(key, as_list)? else {
        reply::int(c.out, 0);
        return Ok(());
    };
    let limit = if count == 0 {
        usize::MAX
    } else {
        count.unsigned_abs() as usize
    };
    let mut removed = 0;
    if count >= 0 {
        let mut i = 0;
        while i < list.len() && removed < limit {
            if list[i] == e {
                list.remove(i);
                removed += 1;
            } else {
                i += 1;
            }
        }
    } else {
        let mut i = list.len();
        while i > 0 && removed < limit {
            i -= 1;
            if list[i] == e {
                list.remove(i);
                removed += 1;
            }
        }
    }
    if removed > 0 {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    reply::int(c.out, removed as i64);
    Ok(())
}

fn ltrim(c: &mut Call<'_, '_>) -> Res {
    let key = &c.a[0];
    let (start, end) = (int_arg(&c.a[1])?, int_arg(&c.a[2])?);
    let Some(list) = c.db.get_as(key, as_list)? else {
        return ok(c.out);
    };
    let before = list.len();
    match index_range(start, end, list.len()) {
        None => list.clear(),
        Some((s, e)) => {
            list.truncate(e + 1);
            list.drain(..s);
        }
    }
    if list.len() != before {
        c.db.touch(key);
        c.db.drop_if_empty(key);
    }
    ok(c.out)
}

fn linsert(c: &mut Call<'_, '_>) -> Res {
    let after = match upper(&c.a[1]).as_str() {
        "BEFORE" => false,
        "AFTER" => true,
        _ => return Err(Fail::Syntax),
    };
    let key = &c.a[0];
    let Some(list) = c.db.get_as(key, as_list)? else {
        reply::int(c.out, 0);
        return Ok(());
    };
    let Some(at) = list.iter().position(|x| *x == c.a[2]) else {
        reply::int(c.out, -1);
        return Ok(());
    };
    list.insert(at + usize::from(after), c.a[3].clone());
    let n = list.len();
    c.db.touch(key);
    reply::int(c.out, n as i64);
    Ok(())
}

/// `LMOVE src dst LEFT|RIGHT LEFT|RIGHT`, `RPOPLPUSH src dst`.
fn lmove(c: &mut Call<'_, '_>) -> Res {
    let side = |b: &[u8]| match upper(b).as_str() {
        "LEFT" => Ok(true),
        "RIGHT" => Ok(false),
        _ => Err(Fail::Syntax),
    };
    let (from_left, to_left) = if c.cmd.name == "lmove" {
        (side(&c.a[2])?, side(&c.a[3])?)
    } else {
        (false, true)
    };
    let (src, dst) = (&c.a[0], &c.a[1]);
    if c.db.get_as(src, as_list)?.is_none() {
        reply::nil(c.out);
        return Ok(());
    }
    c.db.get_as(dst, as_list)?;
    let list = c.db.get_as(src, as_list)?.expect("looked up");
    let e = if from_left {
        list.pop_front()
    } else {
        list.pop_back()
    }
    .expect("never empty");
    c.db.touch(src);
    c.db.drop_if_empty(src);
    let to = c.db.get_or_make(dst, Value::list, as_list)?;
    if to_left {
        to.push_front(e.clone());
    } else {
        to.push_back(e.clone());
    }
    c.db.touch(dst);
    reply::bulk(c.out, &e);
    Ok(())
}
