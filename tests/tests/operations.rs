//! Operating it (docs/operations.md): `hotspare metrics` scraped over HTTP while a real spare and
//! primary run on loopback, before and after a takeover; and `hotspare-resume`'s systemd
//! notifications (`READY=1`, `WATCHDOG=1`, `WATCHDOG_USEC=0` at takeover) on a Unix datagram
//! socket the test binds as `NOTIFY_SOCKET`.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::{free_port, Killed, RespConn};

/// A scrape's samples: metric name → (labels, value) of each series.
type Scrape = HashMap<String, Vec<(HashMap<String, String>, f64)>>;

const KEY: &str = "operations test shared secret, 0600";

fn workdir() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (t, key)
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .unwrap(),
    )
}

fn logs(dir: &Path) -> String {
    let mut s = String::new();
    for f in ["spare_a.log", "spare_b.log", "primary.log", "metrics.log"] {
        let t = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let tail: Vec<&str> = t.lines().rev().take(30).collect();
        s.push_str(&format!("\n--- {f} ---\n"));
        for l in tail.iter().rev() {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// A `hotspare-resume` on `port` keeping `image`, resuming `hotspare-kv` on `kv_port`.
fn spare(dir: &Path, name: &str, port: u16, kv_port: u16, env: &[(&str, String)]) -> Command {
    let mut c = Command::new(util::lib("hotspare-resume"));
    c.args(["--listen", &format!("127.0.0.1:{port}"), "--missed", "10"])
        .arg("--key-file")
        .arg(dir.join("key"))
        .arg("--image-dir")
        .arg(dir.join(name))
        .arg("--exec")
        .arg(util::lib("hotspare-kv"))
        .args(["--bind", "127.0.0.1", "--port", &kv_port.to_string()])
        .arg("--cpt-every-write")
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env_remove("HOTSPARE_SPARE")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(log_file(dir, &format!("{name}.log")));
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn wait_listening(port: u16, dir: &Path) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `GET /metrics`: the body.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "bad answer: {head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    Some(body.to_string())
}

/// The samples of a scrape: metric name → list of (labels, value).
fn samples(body: &str) -> Scrape {
    let mut m: HashMap<String, Vec<_>> = HashMap::new();
    for l in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = l.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("label");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        m.entry(name.to_string())
            .or_default()
            .push((labels, value.parse().expect("value")));
    }
    m
}

/// The value of `name` for directory `dir` (and its role label, returned too).
fn get(m: &Scrape, name: &str, dir: &Path) -> Option<(String, f64)> {
    let d = dir.display().to_string();
    m.get(name)?
        .iter()
        .find(|(l, _)| l.get("dir") == Some(&d))
        .map(|(l, v)| (l.get("role").cloned().unwrap_or_default(), *v))
}

/// Scrapes until `ok` holds for a scrape (bounded); that scrape's samples.
fn scrape_until(port: u16, dir: &Path, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(30) {
        if let Some(body) = scrape(port) {
            let m = samples(&body);
            if ok(&m) {
                return m;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what}: not seen within 30 s; last scrape:\n{last}{}",
        logs(dir)
    );
}

/// A bound Unix datagram socket standing in for systemd's notification socket.
fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let p = dir.join("notify.sock");
    let s = UnixDatagram::bind(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (s, p)
}

/// Receives notifications until one holds `line` as a whole line (bounded); every datagram
/// received meanwhile.
fn wait_notify(s: &UnixDatagram, line: &str, within: Duration) -> Result<Vec<String>, Vec<String>> {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < within {
        if let Ok(n) = s.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == line);
            got.push(msg);
            if hit {
                return Ok(got);
            }
        }
    }
    Err(got)
}

/// `READY=1` once the spare answers on its port, then `WATCHDOG=1` pings; a spare started
/// without `NOTIFY_SOCKET` runs the same (no notifier).
#[test]
fn resume_sends_ready_and_watchdog() {
    let (t, _key) = workdir();
    let dir = t.path();
    let (sock, path) = notify_socket(dir);
    let port = free_port();
    let mut c = spare(
        dir,
        "spare_a",
        port,
        free_port(),
        &[
            ("NOTIFY_SOCKET", path.display().to_string()),
            // 300 ms: a ping every 100 ms.
            ("WATCHDOG_USEC", "300000".into()),
        ],
    );
    let _spare = Killed(c.spawn().unwrap());
    let got = wait_notify(&sock, "READY=1", Duration::from_secs(20))
        .unwrap_or_else(|g| panic!("no READY=1 within 20 s; got {g:?}{}", logs(dir)));
    // Ready means listening: the port answers now.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 before the spare listens"
    );
    assert!(
        got.last().unwrap().contains("STATUS=spare on 127.0.0.1:"),
        "{got:?}"
    );
    for i in 0..3 {
        wait_notify(&sock, "WATCHDOG=1", Duration::from_secs(10))
            .unwrap_or_else(|g| panic!("watchdog ping {i} missing; got {g:?}{}", logs(dir)));
    }
}

/// Metrics of a running pair, then of the takeover: the spare's directory turns into a term-2
/// primary's (the resumed program streams to a second spare), the dead primary's goes stale;
/// the spare's watchdog is switched off (`WATCHDOG_USEC=0`) before it becomes the program.
#[test]
fn metrics_follow_a_takeover() {
    let (t, key) = workdir();
    let dir = t.path();
    let (spool, image_a, image_b) = (dir.join("spool"), dir.join("spare_a"), dir.join("spare_b"));
    let (port_a, port_b, kv_port, metrics_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (sock, sock_path) = notify_socket(dir);

    // Spare B: the spare of the program spare A resumes (re-protection).
    let _spare_b = Killed(spare(dir, "spare_b", port_b, kv_port, &[]).spawn().unwrap());
    wait_listening(port_b, dir);
    // Spare A, under a fake systemd; the program it resumes streams to spare B.
    let mut c = spare(
        dir,
        "spare_a",
        port_a,
        kv_port,
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "600000".into()),
            ("HOTSPARE_SPARE", format!("127.0.0.1:{port_b}")),
            ("HOTSPARE_KEY_FILE", key.display().to_string()),
            ("HOTSPARE_LEASE_MS", "80".into()),
        ],
    );
    let spare_a = Killed(c.spawn().unwrap());
    wait_notify(&sock, "READY=1", Duration::from_secs(20))
        .unwrap_or_else(|g| panic!("spare A: no READY=1; got {g:?}{}", logs(dir)));

    let mut p = Command::new(util::lib("hotspare-kv"));
    p.args(["--bind", "127.0.0.1", "--port", &kv_port.to_string()])
        .arg("--cpt-every-write")
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("HOTSPARE_IMAGE_DIR", &spool)
        .env("HOTSPARE_SPARE", format!("127.0.0.1:{port_a}"))
        .env("HOTSPARE_KEY_FILE", &key)
        .env("HOTSPARE_LEASE_MS", "80")
        .env_remove("HOTSPARE_RESUME")
        .env_remove("HOTSPARE_TERM")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(log_file(dir, "primary.log"));
    let primary = Killed(p.spawn().unwrap());
    wait_listening(kv_port, dir);

    let mut m = Command::new(util::lib("hotspare"));
    m.args(["metrics", "--listen", &format!("127.0.0.1:{metrics_port}")])
        .args([&spool, &image_a, &image_b])
        .stdout(Stdio::null())
        .stderr(log_file(dir, "metrics.log"));
    let _metrics = Killed(m.spawn().unwrap());
    wait_listening(metrics_port, dir);

    let kv: SocketAddr = ([127, 0, 0, 1], kv_port).into();
    let mut conn = RespConn::connect(kv, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
    let mut write = |n: usize, from: usize| {
        for i in from..from + n {
            conn.cmd(&["SET", &format!("k{i}"), "v"])
                .unwrap_or_else(|e| panic!("SET k{i}: {e}{}", logs(dir)));
        }
    };
    write(20, 0);

    // The pair as it runs: both term 1, connected, fresh; the spare applies no more than it
    // holds durable.
    let before = scrape_until(metrics_port, dir, "a connected term-1 pair", |m| {
        get(m, "hotspare_term", &spool) == Some(("primary".into(), 1.0))
            && get(m, "hotspare_connected", &spool).map(|v| v.1) == Some(1.0)
            && get(m, "hotspare_fenced", &spool).map(|v| v.1) == Some(0.0)
            && get(m, "hotspare_sent_seq", &spool).is_some_and(|v| v.1 >= 20.0)
            && get(m, "hotspare_term", &image_a) == Some(("spare".into(), 1.0))
            && get(m, "hotspare_connected", &image_a).map(|v| v.1) == Some(1.0)
            && get(m, "hotspare_durable_seq", &image_a).is_some_and(|v| v.1 >= 20.0)
    });
    for d in [&spool, &image_a] {
        let age = get(&before, "hotspare_status_age_seconds", d).unwrap().1;
        assert!(age < 2.0, "{} status {age} s old", d.display());
        assert_eq!(get(&before, "hotspare_status_readable", d).unwrap().1, 1.0);
    }
    let applied = get(&before, "hotspare_applied_seq", &image_a).unwrap().1;
    let durable = get(&before, "hotspare_durable_seq", &image_a).unwrap().1;
    assert!(applied <= durable, "applied {applied} > durable {durable}");
    assert!(
        get(&before, "hotspare_last_heartbeat_seconds", &image_a).is_some_and(|v| v.1 < 1.0),
        "the spare answered no recent heartbeat"
    );
    // Spare B has no primary yet: no status file, or a spare's without a connection.
    assert!(get(&before, "hotspare_connected", &image_b).is_none_or(|v| v.1 == 0.0));

    // The sequence advances with the writes.
    let sent = get(&before, "hotspare_sent_seq", &spool).unwrap().1;
    let acked_durable = get(&before, "hotspare_durable_seq", &image_a).unwrap().1;
    write(20, 20);
    scrape_until(metrics_port, dir, "sequences advancing", |m| {
        get(m, "hotspare_sent_seq", &spool).is_some_and(|v| v.1 >= sent + 20.0)
            && get(m, "hotspare_acked_seq", &spool).is_some_and(|v| v.1 >= sent + 20.0)
            && get(m, "hotspare_durable_seq", &image_a).is_some_and(|v| v.1 >= acked_durable + 20.0)
            && match (
                get(m, "hotspare_applied_seq", &image_a),
                get(m, "hotspare_durable_seq", &image_a),
            ) {
                (Some(a), Some(d)) => a.1 <= d.1,
                _ => false,
            }
    });
    drop(conn);

    // The primary dies; spare A takes over and becomes a term-2 primary streaming to spare B.
    let primary_pid = primary.pid() as f64;
    drop(primary);
    let after = scrape_until(metrics_port, dir, "the takeover", |m| {
        get(m, "hotspare_term", &image_a) == Some(("primary".into(), 2.0))
            && get(m, "hotspare_connected", &image_a).map(|v| v.1) == Some(1.0)
            && get(m, "hotspare_term", &image_b) == Some(("spare".into(), 2.0))
            && get(m, "hotspare_connected", &image_b).map(|v| v.1) == Some(1.0)
            // The dead primary's status: still there, growing old.
            && get(m, "hotspare_status_age_seconds", &spool).is_some_and(|v| v.1 > 1.0)
    });
    assert_eq!(
        get(&after, "hotspare_term", &spool),
        Some(("primary".into(), 1.0))
    );
    assert_eq!(get(&after, "hotspare_pid", &spool).unwrap().1, primary_pid);
    // The resumed program is spare A's process (exec).
    assert_eq!(
        get(&after, "hotspare_pid", &image_a).unwrap().1,
        spare_a.pid() as f64
    );
    assert!(
        get(&after, "hotspare_status_age_seconds", &image_a)
            .unwrap()
            .1
            < 2.0
    );
    // The daemon turned its watchdog off before becoming the program (which does not ping).
    wait_notify(&sock, "WATCHDOG_USEC=0", Duration::from_secs(10))
        .unwrap_or_else(|g| panic!("no WATCHDOG_USEC=0 at takeover; got {g:?}{}", logs(dir)));
    // The new primary serves the keys written before the kill.
    let mut conn = RespConn::connect(kv, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
    let r = conn.cmd(&["GET", "k39"]).unwrap();
    assert!(
        matches!(&r, util::Reply::Bulk(Some(b)) if b == b"v"),
        "k39 after takeover: {r:?}"
    );
}
