//! Transactions: MULTI / EXEC / DISCARD, and WATCH / UNWATCH (optimistic locking, per key as
//! Redis does it: a watched key modified by anyone before EXEC aborts the EXEC).
//!
//! EXEC locks, in ascending order, the shards of every queued command's keys and of every
//! watched key (all shards if a queued command needs the whole key space), checks the watched
//! versions, then runs the queue under those locks: no other client and no checkpoint sees the
//! transaction half done, and with `--cpt-every-write` the whole EXEC is one write round.

use super::{cmd, fail, ok, run, want_shards, Call, Client, Cmd, Res};
use super::{FAST, KALL, NONE, NO_MULTI, STALE};
use crate::resp::reply;
use crate::store::{Store, SHARDS};

/// The commands of this module.
pub const COMMANDS: &[Cmd] = &[
    cmd!("multi", 1, FAST | NO_MULTI, NONE, multi),
    cmd!("exec", 1, NO_MULTI, NONE, exec),
    cmd!("discard", 1, FAST | NO_MULTI, NONE, discard),
    cmd!("watch", -2, FAST | NO_MULTI, KALL, watch),
    cmd!("unwatch", 1, FAST | STALE, NONE, unwatch),
];

/// A transaction being queued.
#[derive(Debug, Default)]
pub struct Queue {
    cmds: Vec<(&'static Cmd, Vec<Vec<u8>>)>,
    /// A command was refused while queueing: EXEC aborts.
    failed: bool,
}

/// Inside MULTI a refused command (unknown, wrong arity) makes EXEC abort.
pub fn flag_error(client: &mut Client) {
    if let Some(q) = &mut client.multi {
        q.failed = true;
    }
}

/// Inside MULTI: queues `cmd` (replies `QUEUED`), and says so. MULTI, EXEC, DISCARD, WATCH and
/// QUIT run at once, as in Redis.
pub fn queue(cmd: &'static Cmd, client: &mut Client, args: &[Vec<u8>], out: &mut Vec<u8>) -> bool {
    let Some(q) = &mut client.multi else {
        return false;
    };
    if matches!(cmd.name, "multi" | "exec" | "discard" | "watch" | "quit") {
        return false;
    }
    if cmd.flags & NO_MULTI != 0 {
        reply::error(out, "ERR Command not allowed inside a transaction");
        q.failed = true;
        return true;
    }
    q.cmds.push((cmd, args.to_vec()));
    reply::simple(out, "QUEUED");
    true
}

fn multi(c: &mut Call<'_, '_>) -> Res {
    if c.client.multi.is_some() {
        return fail("ERR MULTI calls can not be nested");
    }
    c.client.multi = Some(Queue::default());
    ok(c.out)
}

fn discard(c: &mut Call<'_, '_>) -> Res {
    if c.client.multi.take().is_none() {
        return fail("ERR DISCARD without MULTI");
    }
    unwatch_all(c.ctx.store, c.client);
    ok(c.out)
}

fn exec(c: &mut Call<'_, '_>) -> Res {
    let Some(q) = c.client.multi.take() else {
        return fail("ERR EXEC without MULTI");
    };
    if q.failed {
        unwatch_all(c.ctx.store, c.client);
        return fail("EXECABORT Transaction discarded because of previous errors.");
    }
    let store = c.ctx.store;
    let mut want = [false; SHARDS];
    for (k, _) in &c.client.watched {
        want[store.shard_of(k)] = true;
    }
    let mut all = false;
    for (cmd, args) in &q.cmds {
        all |= want_shards(store, cmd, args, &mut want);
    }
    let mut db = store.lock(if all { &[true; SHARDS] } else { &want });
    let watched = std::mem::take(&mut c.client.watched);
    let dirty = watched
        .iter()
        .any(|(k, v)| db.shard(k).version(k) != Some(*v));
    for (k, _) in &watched {
        db.shard(k).unwatch(k);
    }
    if dirty {
        reply::nil_array(c.out);
        return Ok(());
    }
    reply::array(c.out, q.cmds.len());
    for (cmd, args) in &q.cmds {
        run(c.ctx, c.client, &mut db, cmd, args, c.out);
    }
    c.db.wrote |= db.wrote;
    Ok(())
}

fn watch(c: &mut Call<'_, '_>) -> Res {
    if c.client.multi.is_some() {
        return fail("ERR WATCH inside MULTI is not allowed");
    }
    for k in c.a {
        if c.client.watched.iter().any(|(w, _)| w == k) {
            continue;
        }
        let v = c.db.shard(k).watch(k);
        c.client.watched.push((k.clone(), v));
    }
    ok(c.out)
}

fn unwatch(c: &mut Call<'_, '_>) -> Res {
    unwatch_all(c.ctx.store, c.client);
    ok(c.out)
}

/// Drops every watch of `client` (UNWATCH, EXEC, DISCARD, a closed connection).
pub fn unwatch_all(store: &Store, client: &mut Client) {
    if client.watched.is_empty() {
        return;
    }
    let mut want = [false; SHARDS];
    for (k, _) in &client.watched {
        want[store.shard_of(k)] = true;
    }
    let mut db = store.lock(&want);
    for (k, _) in client.watched.drain(..) {
        db.shard(&k).unwatch(&k);
    }
}
