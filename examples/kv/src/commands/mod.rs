//! The commands, answered byte for byte as Redis 7 answers them (replies and error texts), behind
//! a command table as Redis's own: name, arity in Redis's convention (`n`: exactly n arguments
//! counting the name; `-n`: at least n), flags, the positions of the keys (first, last, step),
//! and the handler. One module per data type; this one holds the table, the dispatch (arity,
//! the right to serve, MULTI's queue, the shard locks of a command's keys) and what every
//! handler shares.

mod hash;
mod keyspace;
mod list;
mod server;
mod set;
mod string;
mod tx;
mod zset;

pub use server::{Counters, CptMode};

use crate::resp::reply;
use crate::store::{Locked, Store, WrongType, SHARDS};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// A command changes the key space.
pub const WRITE: u16 = 1;
/// A command only reads.
pub const READONLY: u16 = 2;
/// Constant or logarithmic time.
pub const FAST: u16 = 4;
/// Answered even while this server may not serve data (Redis: allowed on a stale replica):
/// connection and server commands that reveal no key.
pub const STALE: u16 = 8;
/// Refused inside MULTI.
pub const NO_MULTI: u16 = 16;
/// Works on the whole key space: every shard is locked.
pub const ALL_KEYS: u16 = 32;
/// An administrative command.
pub const ADMIN: u16 = 64;

/// A handler: reads its arguments, writes its reply, or fails with an error reply.
pub type Handler = fn(&mut Call<'_, '_>) -> Res;
/// What a handler returns.
pub type Res = Result<(), Fail>;

/// One command of the table.
#[derive(Debug)]
pub struct Cmd {
    /// Lower-case name.
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments with the name, `-n` at least n.
    pub arity: i32,
    /// [`WRITE`], [`READONLY`], …
    pub flags: u16,
    /// First key, last key (negative: from the end, -1 the last argument), step; 0,0,0: none.
    pub keys: (i32, i32, i32),
    /// The handler.
    pub handler: Handler,
}

/// A table entry (`cmd!("get", 2, READONLY | FAST, (1, 1, 1), string::get)`).
macro_rules! cmd {
    ($name:literal, $arity:expr, $flags:expr, $keys:expr, $handler:path) => {
        $crate::commands::Cmd {
            name: $name,
            arity: $arity,
            flags: $flags,
            keys: $keys,
            handler: $handler,
        }
    };
}
use cmd;

/// No keys.
const NONE: (i32, i32, i32) = (0, 0, 0);
/// One key, the first argument.
const K1: (i32, i32, i32) = (1, 1, 1);
/// Every argument is a key.
const KALL: (i32, i32, i32) = (1, -1, 1);
/// The first two arguments are keys.
const K12: (i32, i32, i32) = (1, 2, 1);

/// The whole table, every module's part.
fn tables() -> [&'static [Cmd]; 8] {
    [
        keyspace::COMMANDS,
        string::COMMANDS,
        hash::COMMANDS,
        list::COMMANDS,
        set::COMMANDS,
        zset::COMMANDS,
        tx::COMMANDS,
        server::COMMANDS,
    ]
}

/// The commands sorted by name (looked up by binary search: a few short comparisons).
fn table() -> &'static [&'static Cmd] {
    static T: OnceLock<Vec<&'static Cmd>> = OnceLock::new();
    T.get_or_init(|| {
        let mut v: Vec<&'static Cmd> = tables().into_iter().flatten().collect();
        v.sort_by_key(|c| c.name);
        v
    })
}

/// Every command, in table order (`COMMAND`).
pub fn all_commands() -> impl Iterator<Item = &'static Cmd> {
    tables().into_iter().flatten()
}

/// The command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Cmd> {
    let mut buf = [0u8; 32];
    let n = buf.get_mut(..name.len())?;
    n.copy_from_slice(name);
    n.make_ascii_lowercase();
    let t = table();
    t.binary_search_by(|c| c.name.as_bytes().cmp(n))
        .ok()
        .map(|i| t[i])
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
    /// A data command was answered (the event loop hands it to the connection's outbox:
    /// releasing the reply needs the right to serve at that moment, not only when it ran).
    pub answered_data: bool,
    /// Inside MULTI: the queued commands.
    pub multi: Option<tx::Queue>,
    /// WATCHed keys and the version each had.
    pub watched: Vec<(Vec<u8>, u64)>,
}

/// Everything a command may touch.
pub struct Ctx<'a> {
    /// The key space.
    pub store: &'a Store,
    /// The checkpointer (`None` with `--plain`).
    pub hs: Option<&'a hotspare::Checkpointer>,
    /// Counters.
    pub counters: &'a Counters,
    /// The server's start time (for `uptime_in_seconds`).
    pub started: std::time::Instant,
    /// Listening port (for `INFO`).
    pub port: u16,
}

/// One command being run.
pub struct Call<'c, 'a> {
    /// The server.
    pub ctx: &'c Ctx<'a>,
    /// The connection.
    pub client: &'c mut Client,
    /// The shards of the command's keys, locked.
    pub db: &'c mut Locked<'a>,
    /// The command.
    pub cmd: &'static Cmd,
    /// The arguments after the name.
    pub a: &'c [Vec<u8>],
    /// Where the reply goes.
    pub out: &'c mut Vec<u8>,
}

/// What a command did, for the caller's group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changed.
    Read,
    /// The key space changed: with `--cpt-every-write`, the reply waits for a commit.
    Write,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    /// `WRONGTYPE …`.
    WrongType,
    /// `ERR value is not an integer or out of range`.
    Int,
    /// `ERR value is not a valid float`.
    Float,
    /// `ERR syntax error`.
    Syntax,
    /// `ERR no such key`.
    NoKey,
    /// Any other text (without the leading `-`).
    Msg(String),
}

impl From<WrongType> for Fail {
    fn from(_: WrongType) -> Fail {
        Fail::WrongType
    }
}

impl Fail {
    /// The error text.
    pub fn text(&self) -> &str {
        match self {
            Fail::WrongType => "WRONGTYPE Operation against a key holding the wrong kind of value",
            Fail::Int => "ERR value is not an integer or out of range",
            Fail::Float => "ERR value is not a valid float",
            Fail::Syntax => "ERR syntax error",
            Fail::NoKey => "ERR no such key",
            Fail::Msg(m) => m,
        }
    }
}

/// `Err(Fail::Msg(..))`.
pub fn fail<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Msg(msg.into()))
}

/// `+OK`.
pub fn ok(out: &mut Vec<u8>) -> Res {
    reply::simple(out, "OK");
    Ok(())
}

/// Redis's `string2ll`: no blanks, no '+', no leading zeros.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with('+') || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    if s.starts_with("-0") {
        return None;
    }
    s.parse().ok()
}

/// An integer argument (`ERR value is not an integer or out of range` otherwise).
/// Redis's index range normalisation (LRANGE, LTRIM, ZRANGE by rank): negative indices count
/// from the end; `None` when the range is empty, else inclusive indices.
pub fn index_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let end = if end < 0 { len + end } else { end };
    if start > end || start >= len {
        return None;
    }
    Some((start as usize, end.min(len - 1) as usize))
}

pub fn int_arg(b: &[u8]) -> Result<i64, Fail> {
    parse_i64(b).ok_or(Fail::Int)
}

/// Redis's `string2d` / `strtold` as its float arguments take them: no blanks, `inf`,
/// `-inf`, `+inf` allowed, NaN refused.
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    if s.ends_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        t if t.contains("nan") || t.contains("inf") => return None,
        _ => s.parse().ok()?,
    };
    Some(v)
}

/// A double as Redis 7.0 replies with one (`%.17g`; `inf`, `-inf`).
pub fn fmt_score(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d == 0.0 {
        return "0".into();
    }
    let e = format!("{d:.16e}");
    let (mant, exp) = e.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent");
    if !(-4..17).contains(&exp) {
        let mant = trim_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    } else {
        let prec = (16 - exp).max(0) as usize;
        trim_zeros(&format!("{d:.prec$}")).to_string()
    }
}

/// A float result of INCRBYFLOAT / HINCRBYFLOAT, as Redis writes them (`%.17Lf` with the
/// trailing zeros cut, in a long double). Computed in an f64 here: printed to 15 significant
/// digits, which gives the same text for the sums of short decimals that long double gives.
pub fn fmt_human(d: f64) -> String {
    if d == 0.0 {
        return "0".into();
    }
    let e = format!("{:.14e}", d.abs());
    let (mant, exp) = e.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent");
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let mut s = String::from(if d < 0.0 { "-" } else { "" });
    if exp >= 0 {
        let int = exp as usize + 1;
        s.push_str(&digits[..int.min(digits.len())]);
        s.extend(std::iter::repeat_n('0', int.saturating_sub(digits.len())));
        if digits.len() > int {
            s.push('.');
            s.push_str(&digits[int..]);
        }
    } else {
        let zeros = (-exp - 1) as usize;
        if zeros + 1 > 17 {
            return "0".into();
        }
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', zeros));
        s.push_str(&digits[..digits.len().min(17 - zeros)]);
    }
    s
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// The key positions of `cmd` called with `argc` arguments (counting the name).
fn key_positions(keys: (i32, i32, i32), argc: usize) -> impl Iterator<Item = usize> {
    let (first, last, step) = keys;
    let last = if last < 0 { argc as i32 + last } else { last };
    let range = if first == 0 || step == 0 {
        0..0
    } else {
        first as usize..(last.max(first - 1) + 1) as usize
    };
    range
        .step_by(step.max(1) as usize)
        .filter(move |i| *i < argc)
}

/// Marks in `want` the shards of `cmd`'s keys in `args` (the name first); `true` if it needs
/// every shard.
fn want_shards(store: &Store, cmd: &Cmd, args: &[Vec<u8>], want: &mut [bool; SHARDS]) -> bool {
    if cmd.flags & ALL_KEYS != 0 {
        return true;
    }
    for i in key_positions(cmd.keys, args.len()) {
        want[store.shard_of(&args[i])] = true;
    }
    false
}

/// Locks what `cmd` called with `args` needs: nothing, its key's shard, its keys' shards, or
/// everything.
fn lock_for<'a>(store: &'a Store, cmd: &Cmd, args: &[Vec<u8>]) -> Locked<'a> {
    if cmd.keys == K1 && cmd.flags & ALL_KEYS == 0 {
        return store.lock_key(&args[1]);
    }
    let mut want = [false; SHARDS];
    if want_shards(store, cmd, args, &mut want) {
        return store.lock(&[true; SHARDS]);
    }
    if !want.contains(&true) {
        return store.lock_none();
    }
    store.lock(&want)
}

fn arity_ok(cmd: &Cmd, argc: usize) -> bool {
    if cmd.arity >= 0 {
        argc == cmd.arity as usize
    } else {
        argc >= cmd.arity.unsigned_abs() as usize
    }
}

fn unknown(first: &[u8], a: &[Vec<u8>]) -> String {
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
    msg
}

/// Runs one request, appending its reply to `out`.
pub fn execute(ctx: &Ctx<'_>, client: &mut Client, args: &[Vec<u8>], out: &mut Vec<u8>) -> Effect {
    ctx.counters.commands.fetch_add(1, Ordering::Relaxed);
    let Some(first) = args.first() else {
        return Effect::Read; // an empty inline line: Redis ignores it
    };
    let Some(cmd) = lookup(first) else {
        reply::error(out, &unknown(first, &args[1..]));
        tx::flag_error(client);
        return Effect::Read;
    };
    if !arity_ok(cmd, args.len()) {
        reply::error(
            out,
            &format!("ERR wrong number of arguments for '{}' command", cmd.name),
        );
        tx::flag_error(client);
        return Effect::Read;
    }
    if cmd.flags & STALE == 0 {
        client.answered_data = true;
        if !ctx.hs.is_none_or(|h| h.may_serve()) {
            reply::error(
                out,
                "TRYAGAIN this server may not serve now: no lease from its spare, or fenced by a newer primary",
            );
            return Effect::Read;
        }
    }
    if tx::queue(cmd, client, args, out) {
        return Effect::Read;
    }
    let mut db = lock_for(ctx.store, cmd, args);
    run(ctx, client, &mut db, cmd, args, out);
    if db.wrote {
        Effect::Write
    } else {
        Effect::Read
    }
}

/// Runs `cmd` on shards already locked.
fn run<'a>(
    ctx: &Ctx<'a>,
    client: &mut Client,
    db: &mut Locked<'a>,
    cmd: &'static Cmd,
    args: &[Vec<u8>],
    out: &mut Vec<u8>,
) {
    let mut call = Call {
        ctx,
        client,
        db,
        cmd,
        a: &args[1..],
        out,
    };
    if let Err(f) = (cmd.handler)(&mut call) {
        reply::error(call.out, f.text());
    }
}

/// A connection ends: its watches go.
pub fn disconnect(ctx: &Ctx<'_>, client: &mut Client) {
    tx::unwatch_all(ctx.store, client);
}

/// Options that come as `NAME` or `NAME value`, in any case.
pub fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_in_the_table_once_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for c in all_commands() {
            assert!(seen.insert(c.name), "{} twice", c.name);
            assert_eq!(c.name, c.name.to_ascii_lowercase());
            assert!(c.arity != 0, "{}", c.name);
            assert!(
                (c.flags & WRITE == 0) || (c.flags & READONLY == 0),
                "{} both write and readonly",
                c.name
            );
        }
        assert!(lookup(b"GeT").is_some() && lookup(b"nosuch").is_none());
    }

    #[test]
    fn key_positions_follow_redis_convention() {
        let p = |k, n| key_positions(k, n).collect::<Vec<_>>();
        assert_eq!(p(K1, 2), [1]);
        assert_eq!(p(KALL, 4), [1, 2, 3]);
        assert_eq!(p((1, -1, 2), 5), [1, 3]);
        assert_eq!(p(K12, 3), [1, 2]);
        assert_eq!(p(NONE, 3), Vec::<usize>::new());
        assert_eq!(p((2, -2, 1), 5), [2, 3]);
    }

    #[test]
    fn scores_print_as_redis_prints_them() {
        for (d, s) in [
            (0.1, "0.10000000000000001"),
            (1e21, "1e+21"),
            (3.0, "3"),
            (-0.0, "0"),
            (1.5e-7, "1.4999999999999999e-07"),
            (f64::INFINITY, "inf"),
            (0.30000000000000004, "0.30000000000000004"),
            (-2.5, "-2.5"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (0.0001, "0.0001"),
        ] {
            assert_eq!(fmt_score(d), s);
        }
        for (d, s) in [
            (10.6, "10.6"),
            (0.1 + 0.2, "0.3"),
            (15.0, "15"),
            (1e25, "10000000000000000000000000"),
            (-0.25, "-0.25"),
            (0.00003, "0.00003"),
        ] {
            assert_eq!(fmt_human(d), s);
        }
    }
}
