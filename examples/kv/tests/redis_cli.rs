//! `redis-cli` against `hotspare-kv` and against Redis itself: the same scripted session must
//! get the same answers from both. Then the server under `hotspare-resume`: writes acknowledged
//! with `--cpt-every-write` survive a SIGKILL of the primary, and `redis-benchmark` runs.

#[path = "../../../tests/tests/util/mod.rs"]
mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::{free_port, wait_port, Killed};

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
    let spare = Command::new(util::lib("hotspare-resume"))
        .args(["--listen", &format!("127.0.0.1:{sport}"), "--key-file"])
        .arg(&key)
        .arg("--image-dir")
        .arg(dir.join("spare"))
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
    let primary = Command::new(KV)
        .args(kv_args)
        .env("HOTSPARE_HEAP_SIZE", "64M")
        .env("HOTSPARE_IMAGE_DIR", dir.join("spool"))
        .env("HOTSPARE_SPARE", format!("127.0.0.1:{sport}"))
        .env("HOTSPARE_KEY_FILE", &key)
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
    assert_eq!(cli(kport, &["DBSIZE"]).trim(), "1301");
    assert!(cli(kport, &["INFO", "hotspare"]).contains("hotspare_resumed:1"));
    drop(spare); // the spare became the server: kill it by pid
}
