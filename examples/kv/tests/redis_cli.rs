//! `redis-cli` against `hotspare-kv` and against Redis itself: the same scripted session must
//! get the same answers from both — a `redis-cli` session of string commands, then one RESP
//! connection running every command of every type (errors and WRONGTYPE included), WATCH
//! across two connections, and SCAN. Then the server under `hotspare-resume`: writes
//! acknowledged with `--cpt-every-write` survive a SIGKILL of the primary (keys of every type,
//! with and without expiry, compared in full on the survivor), and `redis-benchmark` runs.

#[path = "../../../tests/tests/util/mod.rs"]
mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::{free_port, wait_port, Killed, Reply, RespConn};

const KV: &str = env!("CARGO_BIN_EXE_hotspare-kv");

fn need(tool: &str) {
    assert!(
        Command::new(tool).arg("--version").output().is_ok(),
        "{tool} is missing: this test compares against Redis (.ci/run installs redis-server)"
    );
}

fn redis_server(dir: &Path, port: u16) -> Killed {
    let c = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let k = Killed(c);
    wait_port(port);
    k
}

fn kv_server(dir: &Path, port: u16, extra: &[&str]) -> Killed {
    let c = Command::new(KV)
        .args(["--port", &port.to_string()])
        .args(extra)
        .env("HOTSPARE_IMAGE_DIR", dir.join("image"))
        .env("HOTSPARE_HEAP_SIZE", "64M")
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("kv.log")).unwrap(),
        ))
        .spawn()
        .expect("start hotspare-kv");
    let k = Killed(c);
    wait_port(port);
    k
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The session: every reply kind, every error form, expiry. `SLEEP n` pauses the script.
const SCRIPT: &[&[&str]] = &[
    &["FLUSHALL"],
    &["PING"],
    &["PING", "hi there"],
    &["ECHO", "hello world"],
    &["SET", "k1", "hello"],
    &["GET", "k1"],
    &["SET", "k1", "world", "XX", "GET"],
    &["SET", "k1", "x", "NX"],
    &["SET", "k2", "v", "NX"],
    &["GET", "nosuch"],
    &["APPEND", "k1", "!!"],
    &["APPEND", "new", "abc"],
    &["STRLEN", "k1"],
    &["STRLEN", "nosuch"],
    &["GETSET", "k2", "w"],
    &["SETNX", "k2", "z"],
    &["INCR", "counter"],
    &["INCRBY", "counter", "10"],
    &["DECR", "counter"],
    &["DECRBY", "counter", "3"],
    &["INCR", "k1"],
    &["INCRBY", "counter", "x1"],
    &["SET", "big", "9223372036854775807"],
    &["INCR", "big"],
    &["SET", "lead", "007"],
    &["INCR", "lead"],
    &["MSET", "a", "1", "b", "2", "c", "3"],
    &["MSET", "a", "1", "b"],
    &["MGET", "a", "b", "nosuch", "c"],
    &["EXISTS", "a", "b", "nosuch", "a"],
    &["DEL", "a", "b", "nosuch"],
    &["EXISTS", "a"],
    &["TYPE", "c"],
    &["TYPE", "nosuch"],
    &["KEYS", "co*"],
    &["KEYS", "nomatch*"],
    &["DBSIZE"],
    &["SET", "t", "v", "EX", "100"],
    &["TTL", "t"],
    &["SET", "t", "v2", "KEEPTTL"],
    &["TTL", "t"],
    &["SET", "t", "v3"],
    &["TTL", "t"],
    &["EXPIRE", "t", "50"],
    &["TTL", "t"],
    &["EXPIRE", "t", "10", "GT"],
    &["EXPIRE", "t", "10", "LT"],
    &["EXPIRE", "t", "1", "NX"],
    &["PERSIST", "t"],
    &["PERSIST", "t"],
    &["TTL", "t"],
    &["TTL", "nosuch"],
    &["EXPIRE", "nosuch", "10"],
    &["EXPIRE", "t", "abc"],
    &["EXPIRE", "t", "0"],
    &["GET", "t"],
    &["SET", "p", "v", "PX", "150"],
    &["SET", "q", "v"],
    &["PEXPIRE", "q", "150"],
    // Never touched again: only an active expiry removes it before the DBSIZE below.
    &["SET", "ghost", "v", "PX", "100"],
    &["SLEEP", "1600"],
    &["GET", "p"],
    &["EXISTS", "q"],
    &["TTL", "p"],
    &["SET", "s", "v", "EX", "0"],
    &["SET", "s", "v", "EX", "abc"],
    &["SET", "s", "v", "NX", "XX"],
    &["SET", "s", "v", "EX", "10", "PX", "100"],
    &["SET", "s", "v", "BOGUS"],
    &["GET"],
    &["GET", "a", "b"],
    &["FOOBAR", "x", "y"],
    &["foobar"],
    &["SELECT", "0"],
    &["DBSIZE"],
    &["FLUSHALL"],
    &["DBSIZE"],
    &["MGET", "k1"],
];

fn run_script(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for cmd in SCRIPT {
        if cmd[0] == "SLEEP" {
            std::thread::sleep(Duration::from_millis(cmd[1].parse().unwrap()));
            continue;
        }
        out.push(format!(
            "{} -> {}",
            cmd.join(" "),
            cli(port, cmd).trim_end()
        ));
    }
    out
}

#[test]
fn redis_cli_session_answers_as_redis_does() {
    need("redis-server");
    need("redis-cli");
    let t = tempfile::tempdir().unwrap();
    let (rp, kp) = (free_port(), free_port());
    let _redis = redis_server(t.path(), rp);
    let _kv = kv_server(t.path(), kp, &[]);
    let want = run_script(rp);
    let got = run_script(kp);
    let mut diffs = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            diffs.push(format!("redis:       {w}\nhotspare-kv: {g}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} answers differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // Spot checks that the comparison itself is meaningful.
    assert!(got.iter().any(|l| l == "GET k1 -> hello"), "{got:?}");
    assert!(got.iter().any(|l| l == "GET p -> "), "{got:?}");
}

#[test]
fn redis_benchmark_runs_against_it() {
    need("redis-benchmark");
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let _kv = kv_server(t.path(), port, &["--cpt-ms", "100"]);
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-n",
            "20000",
            "-c",
            "20",
            "-r",
            "1000",
        ])
        .args(["-t", "set,get,incr,mset", "--csv"])
        .output()
        .expect("redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in ["\"SET\"", "\"GET\"", "\"INCR\"", "\"MSET (10 keys)\""] {
        assert!(text.contains(t), "no {t} result:\n{text}");
    }
    // The server saw the keys and took checkpoints while serving.
    let info = cli(port, &["INFO", "hotspare"]);
    let cpts: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("hotspare_checkpoints:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(cpts > 0, "no checkpoint was taken:\n{info}");
    assert!(cli(port, &["DBSIZE"]).trim().parse::<u64>().unwrap() > 500);
}

/// The keys [`fill_every_type`] makes: (key, type, expires).
const TYPED_KEYS: &[(&str, &str, bool)] = &[
    ("str", "string", false),
    ("str-ttl", "string", true),
    ("hash", "hash", false),
    ("hash-ttl", "hash", true),
    ("list", "list", false),
    ("list-ttl", "list", true),
    ("set", "set", false),
    ("set-ttl", "set", true),
    ("zset", "zset", false),
    ("zset-ttl", "zset", true),
    ("tx-a", "string", false),
    ("tx-b", "hash", false),
];

/// Writes [`TYPED_KEYS`], every reply checked (so every write is acknowledged).
fn fill_every_type(c: &mut RespConn) {
    let mut ok = |cmd: &[&str]| {
        let r = c.cmd(cmd).expect("reply");
        assert!(!matches!(r, Reply::Error(_)), "{cmd:?}: {r:?}");
    };
    for (suffix, ttl) in [("", false), ("-ttl", true)] {
        let k = |base: &str| format!("{base}{suffix}");
        ok(&["SET", &k("str"), "a string value"]);
        ok(&["HSET", &k("hash"), "f1", "v1", "f2", "v2", "f3", ""]);
        ok(&["HINCRBY", &k("hash"), "n", "41"]);
        ok(&["RPUSH", &k("list"), "a", "b", "c"]);
        ok(&["LSET", &k("list"), "1", "B"]);
        ok(&["SADD", &k("set"), "x", "y", "z", "w"]);
        ok(&["SREM", &k("set"), "w"]);
        ok(&["ZADD", &k("zset"), "1.5", "m1", "-2", "m2", "1e3", "m3"]);
        ok(&["ZINCRBY", &k("zset"), "0.25", "m2"]);
        if ttl {
            for base in ["str", "hash", "list", "set", "zset"] {
                ok(&["EXPIRE", &k(base), "1000"]);
            }
        }
    }
    ok(&["MULTI"]);
    ok(&["SET", "tx-a", "1"]);
    ok(&["INCRBY", "tx-a", "9"]);
    ok(&["HSET", "tx-b", "f", "v"]);
    let r = c.cmd(&["EXEC"]).unwrap();
    assert_eq!(
        r,
        Reply::Array(Some(vec![
            Reply::Simple("OK".into()),
            Reply::Int(10),
            Reply::Int(1)
        ]))
    );
}

/// Every key of [`TYPED_KEYS`]: its type, whether it expires (TTL within (0, 1000] s), and its
/// full contents.
fn dump_every_type(c: &mut RespConn) -> Vec<String> {
    let mut out = Vec::new();
    for (k, t, ttl) in TYPED_KEYS {
        let typ = c.cmd(&["TYPE", k]).unwrap();
        assert_eq!(typ, Reply::Simple(t.to_string()), "{k}");
        let Reply::Int(left) = c.cmd(&["TTL", k]).unwrap() else {
            panic!("TTL {k}")
        };
        if *ttl {
            assert!((1..=1000).contains(&left), "{k}: TTL {left}");
        } else {
            assert_eq!(left, -1, "{k}");
        }
        let (cmd, how): (Vec<&str>, &str) = match *t {
            "string" => (vec!["GET", k], ""),
            "hash" => (vec!["HGETALL", k], "PAIRS"),
            "list" => (vec!["LRANGE", k, "0", "-1"], ""),
            "set" => (vec!["SMEMBERS", k], "SORT"),
            _ => (vec!["ZRANGE", k, "0", "-1", "WITHSCORES"], ""),
        };
        let r = c.cmd(&cmd).unwrap();
        out.push(format!("{k} {t} ttl={ttl}: {}", show(&r, how)));
    }
    out
}

#[test]
fn acknowledged_writes_survive_failover_to_the_spare() {
    use std::os::unix::fs::PermissionsExt;
    need("redis-cli");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = dir.join("key");
    std::fs::write(&key, "kv failover test key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (sport, kport) = (free_port(), free_port());
    let port_arg = kport.to_string();
    let kv_args = [
        "--port",
        port_arg.as_str(),
        "--cpt-every-write",
        "--preload",
        "1000",
    ];
    let spare = util::spare_command(sport, &key, &dir.join("spare"))
        .args(["--missed", "10", "--exec", KV])
        .args(kv_args)
        .env("HOTSPARE_HEAP_SIZE", "64M")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("spare.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let spare = Killed(spare);
    wait_port(sport);
    let primary = util::primary_command(KV, sport, &key, &dir.join("spool"), "64M")
        .args(kv_args)
        .env("HOTSPARE_LEASE_MS", "80")
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("primary.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let primary = Killed(primary);
    wait_port(kport);
    // Acknowledged writes, over one connection (redis-cli reading commands from stdin).
    let mut script = String::new();
    for i in 0..300 {
        script.push_str(&format!("SET acked:{i} v{i}\nINCR acked-counter\n"));
    }
    let mut c = Command::new("redis-cli")
        .args(["-p", &port_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut c.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    let replies = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        replies.lines().filter(|l| *l == "OK").count(),
        300,
        "{replies}"
    );
    assert!(replies.lines().any(|l| l == "300"), "{replies}");
    // Keys of every type, with and without expiry, and a transaction: each acknowledged.
    let mut c = conn(kport);
    fill_every_type(&mut c);
    let before = dump_every_type(&mut c);
    assert!(before[0].ends_with("\"a string value\""), "{before:?}");
    assert!(before[8].contains("\"m3\", \"1000\""), "{before:?}");
    drop(c);
    let pid = primary.pid();
    drop(primary); // SIGKILL
                   // The spare takes over on the same address; wait for an answer.
    let t0 = Instant::now();
    let n = loop {
        let r = cli(kport, &["GET", "acked-counter"]);
        if r.trim() == "300" {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no takeover (primary {pid} killed): {r}\nspare log:\n{}",
            std::fs::read_to_string(dir.join("spare.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(n.trim(), "300");
    for i in [0, 1, 150, 298, 299] {
        assert_eq!(
            cli(kport, &["GET", &format!("acked:{i}")]).trim(),
            format!("v{i}")
        );
    }
    assert_eq!(
        cli(kport, &["DBSIZE"]).trim(),
        (1301 + TYPED_KEYS.len()).to_string()
    );
    assert!(cli(kport, &["INFO", "hotspare"]).contains("hotspare_resumed:1"));
    let after = dump_every_type(&mut conn(kport));
    assert_eq!(
        before, after,
        "the survivor's keys differ from the primary's"
    );
    // And the survivor keeps serving every type.
    let mut c = conn(kport);
    assert_eq!(c.cmd(&["LPUSH", "list", "new"]).unwrap(), Reply::Int(4));
    assert_eq!(
        c.cmd(&["ZINCRBY", "zset", "1", "m1"]).unwrap(),
        Reply::Bulk(Some(b"2.5".to_vec()))
    );
    drop(spare); // the spare became the server: kill it by pid
}

/// A RESP connection to `port` on loopback.
fn conn(port: u16) -> RespConn {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    RespConn::connect(addr, Duration::from_secs(5), Duration::from_secs(10)).expect("connect")
}

/// A reply as text; `how` normalises replies whose order Redis does not define: `SORT` sorts
/// an array's elements, `PAIRS` its (field, value) pairs, `LEN` keeps only the length and the
/// element kind, `SCAN` sorts the elements of a `[cursor, [elements]]` reply (of a collection
/// small enough for one call: both servers answer cursor 0), `SCANPAIRS` its pairs.
fn show(r: &Reply, how: &str) -> String {
    fn text(r: &Reply) -> String {
        match r {
            Reply::Simple(s) => format!("+{s}"),
            Reply::Error(e) => format!("-{e}"),
            Reply::Int(i) => format!(":{i}"),
            Reply::Bulk(None) => "(nil)".into(),
            Reply::Bulk(Some(b)) => format!("{:?}", String::from_utf8_lossy(b)),
            Reply::Array(None) => "(nil array)".into(),
            Reply::Array(Some(v)) => {
                format!("[{}]", v.iter().map(text).collect::<Vec<_>>().join(", "))
            }
        }
    }
    let items = |r: &Reply| match r {
        Reply::Array(Some(v)) => v.iter().map(text).collect::<Vec<_>>(),
        other => vec![text(other)],
    };
    match (how, r) {
        ("SORT", Reply::Array(Some(_))) => {
            let mut v = items(r);
            v.sort();
            format!("sorted [{}]", v.join(", "))
        }
        ("PAIRS", Reply::Array(Some(_))) => {
            let v = items(r);
            let mut p: Vec<String> = v.chunks(2).map(|c| c.join(" => ")).collect();
            p.sort();
            format!("pairs [{}]", p.join(", "))
        }
        ("LEN", Reply::Array(Some(v))) => format!("{} elements", v.len()),
        ("LEN", Reply::Bulk(Some(_))) => "a bulk string".into(),
        ("SCAN", Reply::Array(Some(v))) if v.len() == 2 => {
            let mut e = items(&v[1]);
            e.sort();
            format!("cursor {} sorted [{}]", text(&v[0]), e.join(", "))
        }
        ("SCANPAIRS", Reply::Array(Some(v))) if v.len() == 2 => {
            let e = items(&v[1]);
            let mut p: Vec<String> = e.chunks(2).map(|c| c.join(" => ")).collect();
            p.sort();
            format!("cursor {} pairs [{}]", text(&v[0]), p.join(", "))
        }
        _ => text(r),
    }
}

/// Runs `script` on one connection; `SLEEP ms` pauses, a first word `SORT`/`PAIRS`/`LEN`/`SCAN`
/// normalises the reply (see [`show`]); `SCANPAIRS` too.
fn run_session(port: u16, script: &[&[&str]]) -> Vec<String> {
    let mut c = conn(port);
    let mut out = Vec::new();
    for line in script {
        if line[0] == "SLEEP" {
            std::thread::sleep(Duration::from_millis(line[1].parse().unwrap()));
            continue;
        }
        let (how, cmd) = match line[0] {
            "SORT" | "PAIRS" | "LEN" | "SCAN" | "SCANPAIRS" => (line[0], &line[1..]),
            _ => ("", &line[..]),
        };
        let r = c.cmd(cmd).expect("reply");
        out.push(format!("{} -> {}", cmd.join(" "), show(&r, how)));
    }
    out
}

/// Both servers, fresh: (Redis, hotspare-kv, their ports).
fn both(dir: &Path) -> (Killed, Killed, u16, u16) {
    need("redis-server");
    let (rp, kp) = (free_port(), free_port());
    let redis = redis_server(dir, rp);
    let kv = kv_server(dir, kp, &[]);
    (redis, kv, rp, kp)
}

fn assert_same(want: &[String], got: &[String]) {
    assert_eq!(want.len(), got.len());
    let diffs: Vec<String> = want
        .iter()
        .zip(got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("redis:       {w}\nhotspare-kv: {g}"))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} of {} answers differ:\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
}

/// Every command of every type, with its error cases: the answers must be Redis's.
const TYPES: &[&[&str]] = &[
    &["FLUSHALL"],
    // Strings.
    &["SET", "s", "hello"],
    &["TYPE", "s"],
    &["SETEX", "se", "100", "v"],
    &["TTL", "se"],
    &["SETEX", "se", "0", "v"],
    &["SETEX", "se", "-5", "v"],
    &["SETEX", "se", "x", "v"],
    &["SETEX", "se", "10"],
    &["PSETEX", "pse", "100000", "v"],
    &["PTTL", "nosuch"],
    &["PSETEX", "pse", "0", "v"],
    &["GET", "pse"],
    &["GETEX", "s"],
    &["GETEX", "s", "EX", "100"],
    &["TTL", "s"],
    &["GETEX", "s", "PERSIST"],
    &["TTL", "s"],
    &["GETEX", "s", "PX", "0"],
    &["GETEX", "s", "EX", "10", "PX", "10"],
    &["GETEX", "s", "BOGUS"],
    &["GETEX", "nosuch"],
    &["GETEX", "s", "EXAT", "1"],
    &["EXISTS", "s"],
    &["SET", "s", "hello"],
    &["GETDEL", "s"],
    &["GETDEL", "s"],
    &["SET", "f", "10.5"],
    &["INCRBYFLOAT", "f", "0.1"],
    &["INCRBYFLOAT", "f", "-5"],
    &["INCRBYFLOAT", "f", "abc"],
    &["INCRBYFLOAT", "newf", "3"],
    &["INCRBYFLOAT", "newf", "1.5e3"],
    &["SET", "nf", "abc"],
    &["INCRBYFLOAT", "nf", "1"],
    &["INCRBYFLOAT", "f", "inf"],
    &["SET", "r", "Hello World"],
    &["SETRANGE", "r", "6", "Redis"],
    &["GET", "r"],
    &["SETRANGE", "r", "20", "!"],
    &["GET", "r"],
    &["SETRANGE", "r", "-1", "x"],
    &["SETRANGE", "r", "x", "x"],
    &["SETRANGE", "empty", "0", ""],
    &["EXISTS", "empty"],
    &["SETRANGE", "pad", "3", "ab"],
    &["GET", "pad"],
    &["GETRANGE", "r", "0", "4"],
    &["GETRANGE", "r", "-5", "-1"],
    &["GETRANGE", "r", "-1", "-5"],
    &["GETRANGE", "r", "5", "1000"],
    &["GETRANGE", "r", "100", "200"],
    &["GETRANGE", "nosuch", "0", "10"],
    &["GETRANGE", "r", "a", "1"],
    &["SUBSTR", "r", "0", "2"],
    &["MSETNX", "m1", "a", "m2", "b"],
    &["MSETNX", "m2", "c", "m3", "d"],
    &["MGET", "m1", "m2", "m3"],
    &["MSETNX", "m1"],
    &["MSETNX", "m1", "a", "m2"],
    &["RENAME", "m1", "m9"],
    &["GET", "m9"],
    &["RENAME", "nosuch", "x"],
    &["RENAME", "m9", "m9"],
    &["RENAMENX", "m9", "m2"],
    &["RENAMENX", "m9", "m8"],
    &["RENAMENX", "m8", "m8"],
    &["SET", "t1", "v", "EX", "100"],
    &["RENAME", "t1", "t2"],
    &["TTL", "t2"],
    &["COPY", "t2", "t3"],
    &["TTL", "t3"],
    &["GET", "t3"],
    &["COPY", "t2", "t3"],
    &["COPY", "t2", "t3", "REPLACE"],
    &["COPY", "t2", "t2"],
    &["COPY", "nosuch", "t4"],
    &["COPY", "t2", "t4", "DB", "0"],
    &["COPY", "t2", "t5", "BOGUS"],
    &["SET", "k", "v", "GET"],
    // Hashes.
    &["HSET", "h", "f1", "v1", "f2", "v2"],
    &["HSET", "h", "f1", "v1b", "f3", "v3"],
    &["HSET", "h", "f1"],
    &["HSET", "h", "f1", "v", "f2"],
    &["TYPE", "h"],
    &["HGET", "h", "f1"],
    &["HGET", "h", "nosuch"],
    &["HGET", "nosuch", "f"],
    &["HMGET", "h", "f1", "nosuch", "f3"],
    &["HMGET", "nosuch", "a", "b"],
    &["HLEN", "h"],
    &["HLEN", "nosuch"],
    &["HEXISTS", "h", "f2"],
    &["HEXISTS", "h", "f9"],
    &["PAIRS", "HGETALL", "h"],
    &["SORT", "HKEYS", "h"],
    &["SORT", "HVALS", "h"],
    &["HGETALL", "nosuch"],
    &["HSETNX", "h", "f1", "x"],
    &["HSETNX", "h", "f4", "x"],
    &["HSTRLEN", "h", "f1"],
    &["HSTRLEN", "h", "nosuch"],
    &["HINCRBY", "h", "n", "5"],
    &["HINCRBY", "h", "n", "-7"],
    &["HINCRBY", "h", "f1", "1"],
    &["HINCRBY", "h", "n", "x"],
    &["HSET", "h", "big", "9223372036854775807"],
    &["HINCRBY", "h", "big", "1"],
    &["HINCRBYFLOAT", "h", "fl", "1.5"],
    &["HINCRBYFLOAT", "h", "fl", "0.25"],
    &["HINCRBYFLOAT", "h", "f1", "1"],
    &["HINCRBYFLOAT", "h", "fl", "x"],
    &["HMSET", "h", "a", "1", "b", "2"],
    &["HDEL", "h", "a", "b", "nosuch"],
    &["HDEL", "h", "a"],
    &["HDEL", "nosuch", "a"],
    &["HSET", "h1", "only", "x"],
    &["HDEL", "h1", "only"],
    &["EXISTS", "h1"],
    &["SCANPAIRS", "HSCAN", "h", "0"],
    &["SCANPAIRS", "HSCAN", "h", "0", "MATCH", "f*"],
    &["SCANPAIRS", "HSCAN", "nosuch", "0"],
    &["HSCAN", "h", "x"],
    &["HSCAN", "h", "0", "COUNT", "0"],
    // Lists.
    &["RPUSH", "l", "a", "b", "c"],
    &["LPUSH", "l", "z", "y"],
    &["TYPE", "l"],
    &["LRANGE", "l", "0", "-1"],
    &["LRANGE", "l", "1", "2"],
    &["LRANGE", "l", "-2", "100"],
    &["LRANGE", "l", "5", "10"],
    &["LRANGE", "l", "3", "1"],
    &["LRANGE", "nosuch", "0", "-1"],
    &["LRANGE", "l", "x", "1"],
    &["LLEN", "l"],
    &["LLEN", "nosuch"],
    &["LINDEX", "l", "0"],
    &["LINDEX", "l", "-1"],
    &["LINDEX", "l", "99"],
    &["LINDEX", "l", "x"],
    &["LSET", "l", "0", "Z"],
    &["LSET", "l", "99", "Z"],
    &["LSET", "nosuch", "0", "Z"],
    &["LSET", "l", "x", "Z"],
    &["LPUSHX", "l", "w"],
    &["LPUSHX", "nosuch", "w"],
    &["RPUSHX", "l", "d"],
    &["RPUSHX", "nosuch", "d"],
    &["EXISTS", "nosuch"],
    &["LPOP", "l"],
    &["RPOP", "l"],
    &["LPOP", "l", "2"],
    &["RPOP", "l", "1"],
    &["LPOP", "l", "0"],
    &["LPOP", "l", "-1"],
    &["LPOP", "l", "x"],
    &["LPOP", "nosuch"],
    &["LPOP", "nosuch", "2"],
    &["RPUSH", "r2", "a", "b", "a", "c", "a"],
    &["LREM", "r2", "1", "a"],
    &["LRANGE", "r2", "0", "-1"],
    &["LREM", "r2", "-1", "a"],
    &["LRANGE", "r2", "0", "-1"],
    &["RPUSH", "r2", "a", "a"],
    &["LREM", "r2", "0", "a"],
    &["LREM", "r2", "0", "nosuch"],
    &["LREM", "nosuch", "0", "a"],
    &["LREM", "r2", "x", "a"],
    &["RPUSH", "t", "1", "2", "3", "4", "5"],
    &["LTRIM", "t", "1", "-2"],
    &["LRANGE", "t", "0", "-1"],
    &["LTRIM", "t", "5", "10"],
    &["EXISTS", "t"],
    &["LTRIM", "nosuch", "0", "1"],
    &["RPUSH", "ins", "a", "c"],
    &["LINSERT", "ins", "BEFORE", "c", "b"],
    &["LINSERT", "ins", "AFTER", "c", "d"],
    &["LINSERT", "ins", "AFTER", "nosuch", "x"],
    &["LINSERT", "ins", "MIDDLE", "c", "x"],
    &["LINSERT", "nosuch", "BEFORE", "a", "x"],
    &["LRANGE", "ins", "0", "-1"],
    &["LMOVE", "ins", "dst", "LEFT", "RIGHT"],
    &["LMOVE", "ins", "dst", "RIGHT", "LEFT"],
    &["LRANGE", "dst", "0", "-1"],
    &["LMOVE", "ins", "ins", "LEFT", "RIGHT"],
    &["LRANGE", "ins", "0", "-1"],
    &["LMOVE", "nosuch", "dst", "LEFT", "LEFT"],
    &["LMOVE", "ins", "dst", "UP", "LEFT"],
    &["RPUSH", "one", "x"],
    &["LMOVE", "one", "dst", "LEFT", "LEFT"],
    &["EXISTS", "one"],
    &["RPOPLPUSH", "dst", "dst2"],
    &["LRANGE", "dst2", "0", "-1"],
    // Sets.
    &["SADD", "s1", "a", "b", "c", "a"],
    &["SADD", "s1", "a", "d"],
    &["TYPE", "s1"],
    &["SADD", "s2", "c", "d", "e"],
    &["SORT", "SMEMBERS", "s1"],
    &["SMEMBERS", "nosuch"],
    &["SISMEMBER", "s1", "a"],
    &["SISMEMBER", "s1", "z"],
    &["SISMEMBER", "nosuch", "a"],
    &["SMISMEMBER", "s1", "a", "z", "d"],
    &["SMISMEMBER", "nosuch", "a"],
    &["SCARD", "s1"],
    &["SCARD", "nosuch"],
    &["SREM", "s1", "a", "z"],
    &["SREM", "nosuch", "a"],
    &["SORT", "SINTER", "s1", "s2"],
    &["SINTER", "s1", "nosuch"],
    &["SORT", "SUNION", "s1", "s2", "nosuch"],
    &["SORT", "SDIFF", "s1", "s2"],
    &["SORT", "SDIFF", "s1", "nosuch"],
    &["SDIFF", "nosuch", "s1"],
    &["SINTERSTORE", "si", "s1", "s2"],
    &["SORT", "SMEMBERS", "si"],
    &["SUNIONSTORE", "su", "s1", "s2"],
    &["SCARD", "su"],
    &["SDIFFSTORE", "sd", "s1", "s2"],
    &["SORT", "SMEMBERS", "sd"],
    &["SINTERSTORE", "si", "s1", "nosuch"],
    &["EXISTS", "si"],
    &["SET", "str", "x"],
    &["SUNIONSTORE", "str", "s1", "s2"],
    &["TYPE", "str"],
    &["SMOVE", "s1", "s3", "b"],
    &["SMOVE", "s1", "s3", "zz"],
    &["SMOVE", "nosuch", "s3", "b"],
    &["SMOVE", "s1", "s1", "c"],
    &["SORT", "SMEMBERS", "s3"],
    &["SADD", "p", "only"],
    &["SPOP", "p"],
    &["SPOP", "p"],
    &["EXISTS", "p"],
    &["SADD", "p", "x", "y", "z"],
    &["LEN", "SPOP", "p", "2"],
    &["SCARD", "p"],
    &["SPOP", "p", "0"],
    &["SPOP", "p", "-1"],
    &["SPOP", "nosuch", "2"],
    &["SADD", "rm", "a", "b", "c"],
    &["LEN", "SRANDMEMBER", "rm"],
    &["SORT", "SRANDMEMBER", "rm", "10"],
    &["LEN", "SRANDMEMBER", "rm", "2"],
    &["LEN", "SRANDMEMBER", "rm", "-5"],
    &["SRANDMEMBER", "nosuch"],
    &["SRANDMEMBER", "nosuch", "3"],
    &["SRANDMEMBER", "rm", "x"],
    &["SCAN", "SSCAN", "rm", "0"],
    &["SCAN", "SSCAN", "rm", "0", "MATCH", "a"],
    // Sorted sets.
    &["ZADD", "z", "1", "a", "2", "b", "3", "c"],
    &["ZADD", "z", "1.5", "a", "4", "d"],
    &["TYPE", "z"],
    &["ZADD", "z", "NX", "10", "a", "5", "e"],
    &["ZADD", "z", "XX", "10", "a", "5", "f"],
    &["ZADD", "z", "XX", "CH", "11", "a", "5", "f"],
    &["ZADD", "z", "GT", "CH", "1", "a", "12", "b"],
    &["ZADD", "z", "LT", "CH", "20", "a", "0.5", "c"],
    &["ZADD", "z", "INCR", "1", "a"],
    &["ZADD", "z", "INCR", "NX", "1", "a"],
    &["ZADD", "z", "INCR", "1", "a", "2", "b"],
    &["ZADD", "z", "NX", "XX", "1", "a"],
    &["ZADD", "z", "GT", "LT", "1", "a"],
    &["ZADD", "z", "GT", "NX", "1", "a"],
    &["ZADD", "z", "1", "a", "2"],
    &["ZADD", "z", "x", "a"],
    &["ZADD", "z", "NX"],
    &["ZADD", "zxx", "XX", "1", "a"],
    &["EXISTS", "zxx"],
    &["ZSCORE", "z", "a"],
    &["ZSCORE", "z", "nosuch"],
    &["ZSCORE", "nosuch", "a"],
    &["ZMSCORE", "z", "a", "nosuch", "c"],
    &["ZMSCORE", "nosuch", "a"],
    &["ZINCRBY", "z", "0.1", "c"],
    &["ZINCRBY", "z", "x", "c"],
    &["ZINCRBY", "znew", "2.5", "m"],
    &["ZCARD", "z"],
    &["ZCARD", "nosuch"],
    &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
    &["ZRANGE", "z", "0", "-1"],
    &["ZRANGE", "z", "1", "2"],
    &["ZRANGE", "z", "-2", "-1", "WITHSCORES"],
    &["ZRANGE", "z", "5", "1"],
    &["ZRANGE", "z", "0", "-1", "REV"],
    &["ZRANGE", "z", "(1", "5", "BYSCORE"],
    &[
        "ZRANGE",
        "z",
        "-inf",
        "+inf",
        "BYSCORE",
        "LIMIT",
        "1",
        "2",
        "WITHSCORES",
    ],
    &[
        "ZRANGE",
        "z",
        "+inf",
        "-inf",
        "BYSCORE",
        "REV",
        "WITHSCORES",
    ],
    &["ZRANGE", "z", "0", "-1", "LIMIT", "0", "1"],
    &["ZRANGE", "z", "x", "1"],
    &["ZRANGE", "z", "0", "1", "BOGUS"],
    &["ZRANGE", "nosuch", "0", "-1"],
    &["ZREVRANGE", "z", "0", "1", "WITHSCORES"],
    &["ZREVRANGE", "z", "0", "-1"],
    &["ZRANGEBYSCORE", "z", "1", "5"],
    &["ZRANGEBYSCORE", "z", "(0.6", "(5", "WITHSCORES"],
    &["ZRANGEBYSCORE", "z", "-inf", "+inf", "LIMIT", "1", "1"],
    &["ZRANGEBYSCORE", "z", "a", "5"],
    &["ZREVRANGEBYSCORE", "z", "+inf", "2"],
    &["ZCOUNT", "z", "-inf", "+inf"],
    &["ZCOUNT", "z", "(1", "5"],
    &["ZCOUNT", "z", "x", "5"],
    &["ZCOUNT", "nosuch", "0", "1"],
    &["ZRANK", "z", "c"],
    &["ZRANK", "z", "a"],
    &["ZRANK", "z", "nosuch"],
    &["ZREVRANK", "z", "c"],
    &["ZREVRANK", "nosuch", "c"],
    &["ZREM", "z", "d", "nosuch"],
    &["ZREM", "nosuch", "d"],
    &[
        "ZADD", "zr", "1", "a", "2", "b", "3", "c", "4", "d", "5", "e",
    ],
    &["ZREMRANGEBYRANK", "zr", "0", "1"],
    &["ZRANGE", "zr", "0", "-1"],
    &["ZREMRANGEBYRANK", "zr", "x", "1"],
    &["ZREMRANGEBYSCORE", "zr", "(3", "4"],
    &["ZREMRANGEBYSCORE", "zr", "x", "4"],
    &["ZRANGE", "zr", "0", "-1", "WITHSCORES"],
    &["ZREMRANGEBYRANK", "zr", "0", "-1"],
    &["EXISTS", "zr"],
    &["ZADD", "zp", "1", "a", "2", "b", "3", "c", "4", "d"],
    &["ZPOPMIN", "zp"],
    &["ZPOPMAX", "zp"],
    &["ZPOPMIN", "zp", "5"],
    &["EXISTS", "zp"],
    &["ZPOPMIN", "nosuch"],
    &["ZPOPMAX", "nosuch", "2"],
    &["ZPOPMIN", "z", "-1"],
    &["ZPOPMIN", "z", "0"],
    &[
        "ZADD", "zf", "0.1", "a", "1e21", "b", "-0", "c", "1.5e-7", "d", "inf", "e", "-inf", "f",
    ],
    &["ZRANGE", "zf", "0", "-1", "WITHSCORES"],
    &["ZINCRBY", "zf", "0.2", "a"],
    &["ZINCRBY", "zf", "-inf", "e"],
    &["SCANPAIRS", "ZSCAN", "zr", "0"],
    &["SCANPAIRS", "ZSCAN", "z", "0", "MATCH", "[ab]"],
    // WRONGTYPE: every family against a key of another type.
    &["GET", "h"],
    &["APPEND", "h", "x"],
    &["STRLEN", "l"],
    &["INCR", "s1"],
    &["INCRBYFLOAT", "z", "1"],
    &["GETSET", "h", "x"],
    &["GETDEL", "l"],
    &["GETEX", "z"],
    &["SETRANGE", "h", "0", "x"],
    &["GETRANGE", "l", "0", "1"],
    &["SET", "l", "x", "GET"],
    &["MGET", "h", "l", "s1"],
    &["HGET", "l", "f"],
    &["HSET", "s1", "f", "v"],
    &["HGETALL", "z"],
    &["HLEN", "r"],
    &["HINCRBY", "l", "f", "1"],
    &["HSCAN", "l", "0"],
    &["LPUSH", "h", "x"],
    &["LRANGE", "h", "0", "-1"],
    &["LPOP", "s1"],
    &["LLEN", "z"],
    &["LMOVE", "ins", "h", "LEFT", "LEFT"],
    &["LMOVE", "h", "ins", "LEFT", "LEFT"],
    &["SADD", "h", "x"],
    &["SMEMBERS", "l"],
    &["SINTER", "s2", "h"],
    &["SINTER", "nosuch", "h"],
    &["SUNION", "s2", "l"],
    &["SMOVE", "s2", "h", "c"],
    &["SMOVE", "h", "s2", "c"],
    &["SSCAN", "h", "0"],
    &["ZADD", "h", "1", "x"],
    &["ZSCORE", "l", "x"],
    &["ZRANGE", "s1", "0", "-1"],
    &["ZCARD", "h"],
    &["ZPOPMIN", "l"],
    &["ZSCAN", "h", "0"],
    // TYPE, DEL, EXISTS, expiry on every type.
    &["TYPE", "nosuch"],
    &["SORT", "KEYS", "*"],
    &["DBSIZE"],
    &["EXISTS", "h", "l", "s1", "z", "nosuch"],
    &["EXPIRE", "h", "100"],
    &["TTL", "h"],
    &["PEXPIRE", "l", "100"],
    &["PEXPIRE", "s1", "100"],
    &["EXPIRE", "z", "100", "NX"],
    &["EXPIRE", "z", "200", "NX"],
    &["EXPIRE", "z", "50", "GT"],
    &["EXPIRE", "z", "300", "GT"],
    &["TTL", "z"],
    &["EXPIRE", "z", "10", "NX", "XX"],
    &["EXPIRE", "z", "10", "GT", "LT"],
    &["EXPIRE", "z", "10", "XX", "GT"],
    &["EXPIRE", "z", "10", "FOO"],
    &["EXPIREAT", "s2", "99999999999"],
    &["TTL", "nosuch"],
    &["PERSIST", "h"],
    &["TTL", "h"],
    &["PEXPIREAT", "h", "1"],
    &["EXISTS", "h"],
    &["SLEEP", "300"],
    &["EXISTS", "l", "s1"],
    &["LPUSH", "l", "fresh"],
    &["LRANGE", "l", "0", "-1"],
    &["TTL", "l"],
    &["DEL", "z", "s2", "nosuch"],
    &["TYPE", "z"],
    &["UNLINK", "ins", "dst"],
    // Arity, Redis's convention.
    &["HGET", "h"],
    &["LPUSH", "l"],
    &["SADD", "s"],
    &["ZADD", "z", "1"],
    &["ZSCORE", "z"],
    &["LRANGE", "l", "0"],
    &["SMOVE", "a", "b"],
    &["RENAME", "a"],
    &["GETEX"],
    &["SETEX", "a", "1"],
    &["LINSERT", "l", "BEFORE", "a"],
    &["COPY", "a"],
    // Absolute expiry times, FLUSHDB, connection names.
    &["SET", "abs", "v"],
    &["EXPIRETIME", "abs"],
    &["EXPIREAT", "abs", "99999999999"],
    &["EXPIRETIME", "abs"],
    &["PEXPIRETIME", "abs"],
    &["PEXPIREAT", "abs", "99999999999123"],
    &["PEXPIRETIME", "abs"],
    &["EXPIRETIME", "nosuch"],
    &["PEXPIRETIME", "nosuch"],
    &["HSET", "habs", "f", "v"],
    &["EXPIREAT", "habs", "99999999999"],
    &["EXPIRETIME", "habs"],
    &["CLIENT", "SETNAME", "tester"],
    &["CLIENT", "GETNAME"],
    &["FLUSHDB"],
    &["FLUSHDB", "BOGUS"],
    &["DBSIZE"],
    &["FLUSHALL"],
    &["DBSIZE"],
];

#[test]
fn every_command_of_every_type_answers_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let (_redis, _kv, rp, kp) = both(t.path());
    let want = run_session(rp, TYPES);
    let got = run_session(kp, TYPES);
    assert_same(&want, &got);
    // The comparison means something: values of every type came back.
    for line in [
        "HGET h f1 -> \"v1b\"",
        "ZRANGE z 0 -1 WITHSCORES -> [\"c\", \"0.59999999999999998\", \"d\", \"4\", \"e\", \"5\", \"a\", \"12\", \"b\", \"12\"]",
        "LRANGE ins 0 -1 -> [\"a\", \"b\", \"c\", \"d\"]",
        "GET h -> -WRONGTYPE Operation against a key holding the wrong kind of value",
    ] {
        assert!(got.iter().any(|l| l == line), "no {line:?} in {got:#?}");
    }
}

/// MULTI / EXEC / DISCARD on one connection, queueing errors included.
const TX: &[&[&str]] = &[
    &["FLUSHALL"],
    &["MULTI"],
    &["SET", "a", "1"],
    &["INCR", "a"],
    &["LPUSH", "a", "x"],
    &["HSET", "h", "f", "v"],
    &["GET", "a"],
    &["EXEC"],
    &["EXEC"],
    &["DISCARD"],
    &["MULTI"],
    &["MULTI"],
    &["WATCH", "a"],
    &["SET", "b", "1"],
    &["DISCARD"],
    &["GET", "b"],
    &["MULTI"],
    &["SET", "b"],
    &["SET", "b", "2"],
    &["EXEC"],
    &["GET", "b"],
    &["MULTI"],
    &["NOSUCHCMD"],
    &["EXEC"],
    &["MULTI"],
    &["EXEC"],
    &["MULTI"],
    &["MSET", "k1", "1", "k2", "2", "k3", "3"],
    &["EXISTS", "k1", "k2", "k3", "k4"],
    &["DBSIZE"],
    &["FLUSHALL"],
    &["SET", "after", "x"],
    &["EXEC"],
    &["DBSIZE"],
    &["MULTI"],
    &["CLIENT", "GETNAME"],
    &["CONFIG", "GET", "maxmemory"],
    &["ECHO", "in a transaction"],
    &["EXEC"],
    &["WATCH", "w"],
    &["UNWATCH"],
    &["WATCH"],
];

#[test]
fn transactions_answer_as_redis_does() {
    let t = tempfile::tempdir().unwrap();
    let (_redis, _kv, rp, kp) = both(t.path());
    assert_same(&run_session(rp, TX), &run_session(kp, TX));
}

/// WATCH with two connections: a watched key modified by the other client aborts the EXEC; a
/// different key (some in the same shard) does not; every kind of modification counts.
fn watch_session(port: u16) -> Vec<String> {
    let (mut a, mut b) = (conn(port), conn(port));
    let mut log = Vec::new();
    let mut on = |who: &str, c: &mut RespConn, cmd: &[&str]| {
        let r = c.cmd(cmd).expect("reply");
        log.push(format!("{who}: {} -> {}", cmd.join(" "), show(&r, "")));
    };
    on("a", &mut a, &["FLUSHALL"]);
    // Modified by B: aborted.
    on("a", &mut a, &["SET", "w", "1"]);
    on("a", &mut a, &["WATCH", "w"]);
    on("b", &mut b, &["SET", "w", "2"]);
    on("a", &mut a, &["MULTI"]);
    on("a", &mut a, &["INCR", "w"]);
    on("a", &mut a, &["EXEC"]);
    on("a", &mut a, &["GET", "w"]);
    // Other keys modified by B (64 of them: some share w's shard): EXEC runs.
    on("a", &mut a, &["WATCH", "w"]);
    for i in 0..64 {
        let k = format!("other{i}");
        let r = b.cmd(&["SET", &k, "x"]).expect("reply");
        assert_eq!(r, Reply::Simple("OK".into()));
    }
    on("a", &mut a, &["MULTI"]);
    on("a", &mut a, &["INCR", "w"]);
    on("a", &mut a, &["EXEC"]);
    // A write that changes nothing (SADD of a member already there) does not abort.
    on("a", &mut a, &["SADD", "set", "m"]);
    on("a", &mut a, &["WATCH", "set"]);
    on("b", &mut b, &["SADD", "set", "m"]);
    on("a", &mut a, &["MULTI"]);
    on("a", &mut a, &["SCARD", "set"]);
    on("a", &mut a, &["EXEC"]);
    // Deleting, expiring, hash / list / zset writes by B all abort.
    for (setup, change) in [
        (&["SET", "d", "1"][..], &["DEL", "d"][..]),
        (&["HSET", "hh", "f", "1"], &["HINCRBY", "hh", "f", "1"]),
        (&["RPUSH", "ll", "a"], &["LPOP", "ll"]),
        (&["ZADD", "zz", "1", "m"], &["ZINCRBY", "zz", "1", "m"]),
        (&["SET", "e", "1"], &["EXPIRE", "e", "100"]),
        (&["SET", "r1", "1"], &["RENAME", "r1", "r2"]),
    ] {
        on("a", &mut a, setup);
        on("a", &mut a, &["WATCH", setup[1]]);
        on("b", &mut b, change);
        on("a", &mut a, &["MULTI"]);
        on("a", &mut a, &["PING"]);
        on("a", &mut a, &["EXEC"]);
    }
    // A's own write before MULTI also aborts; UNWATCH forgets.
    on("a", &mut a, &["WATCH", "w"]);
    on("a", &mut a, &["SET", "w", "9"]);
    on("a", &mut a, &["MULTI"]);
    on("a", &mut a, &["GET", "w"]);
    on("a", &mut a, &["EXEC"]);
    on("a", &mut a, &["WATCH", "w"]);
    on("b", &mut b, &["SET", "w", "10"]);
    on("a", &mut a, &["UNWATCH"]);
    on("a", &mut a, &["MULTI"]);
    on("a", &mut a, &["GET", "w"]);
    on("a", &mut a, &["EXEC"]);
    // FLUSHALL touches every watched key that existed.
    on("a", &mut a, &["WATCH", "w"]);
    on("b", &mut b, &["FLUSHALL"]);
    on("a", &mut a, &["MULTI"]);
    on("a", &mut a, &["GET", "w"]);
    on("a", &mut a, &["EXEC"]);
    log
}

#[test]
fn watch_aborts_exec_exactly_when_a_watched_key_changed() {
    let t = tempfile::tempdir().unwrap();
    let (_redis, _kv, rp, kp) = both(t.path());
    let want = watch_session(rp);
    let got = watch_session(kp);
    assert_same(&want, &got);
    assert_eq!(
        got.iter()
            .filter(|l| l.ends_with("EXEC -> (nil array)"))
            .count(),
        9,
        "{got:#?}"
    );
}

/// SCAN visits every key present for the whole iteration, whatever MATCH / COUNT / TYPE.
#[test]
fn scan_returns_every_key_that_stays() {
    let t = tempfile::tempdir().unwrap();
    let port = free_port();
    let _kv = kv_server(t.path(), port, &[]);
    let mut c = conn(port);
    let mut b = conn(port);
    for i in 0..500 {
        c.cmd(&["SET", &format!("s:{i}"), "v"]).unwrap();
    }
    for i in 0..50 {
        c.cmd(&["HSET", &format!("h:{i}"), "f", "v"]).unwrap();
    }
    let scan = |c: &mut RespConn, extra: &[&str], b: Option<&mut RespConn>| {
        let mut b = b;
        let mut seen = std::collections::HashSet::new();
        let mut cursor = "0".to_string();
        let mut calls = 0;
        loop {
            let mut cmd = vec!["SCAN", &cursor];
            cmd.extend_from_slice(extra);
            let Reply::Array(Some(v)) = c.cmd(&cmd).unwrap() else {
                panic!("not an array")
            };
            let Reply::Bulk(Some(next)) = &v[0] else {
                panic!("no cursor")
            };
            let Reply::Array(Some(keys)) = &v[1] else {
                panic!("no keys")
            };
            for k in keys {
                let Reply::Bulk(Some(k)) = k else {
                    panic!("not a key")
                };
                seen.insert(String::from_utf8(k.clone()).unwrap());
            }
            // Churn between calls: keys that come and go may or may not be returned.
            if let Some(b) = b.as_deref_mut() {
                b.cmd(&["SET", &format!("tmp:{calls}"), "v"]).unwrap();
                b.cmd(&["DEL", &format!("tmp:{}", calls.max(1) - 1)])
                    .unwrap();
            }
            calls += 1;
            assert!(calls < 1000, "SCAN never ends");
            cursor = String::from_utf8(next.clone()).unwrap();
            if cursor == "0" {
                return (seen, calls);
            }
        }
    };
    let (all, calls) = scan(&mut c, &[], Some(&mut b));
    for i in 0..500 {
        assert!(all.contains(&format!("s:{i}")), "s:{i} missed");
    }
    for i in 0..50 {
        assert!(all.contains(&format!("h:{i}")), "h:{i} missed");
    }
    assert!(calls > 1, "one call for 550 keys with COUNT 10");
    let (m, _) = scan(&mut c, &["MATCH", "s:1*", "COUNT", "100"], None);
    assert_eq!(
        m.len(),
        (0..500).filter(|i| i.to_string().starts_with('1')).count()
    );
    let (h, _) = scan(&mut c, &["TYPE", "hash"], None);
    assert_eq!(h.len(), 50);
    assert!(h.iter().all(|k| k.starts_with("h:")));
}
