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

/// `hotspare-kv --cpt-every-write` on `kv_port`, streaming to the spare on `spare_port`, its
/// spool in `spool`, its log in `primary.log`, with `extra` arguments and environment.
fn kv_primary(
    dir: &Path,
    key: &Path,
    spool: &Path,
    kv_port: u16,
    spare_port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Killed {
    let mut p = Command::new(util::lib("hotspare-kv"));
    p.args(["--bind", "127.0.0.1", "--port", &kv_port.to_string()])
        .arg("--cpt-every-write")
        .args(extra)
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("HOTSPARE_IMAGE_DIR", spool)
        .env("HOTSPARE_SPARE", format!("127.0.0.1:{spare_port}"))
        .env("HOTSPARE_KEY_FILE", key)
        .env("HOTSPARE_LEASE_MS", "80")
        .env_remove("HOTSPARE_RESUME")
        .env_remove("HOTSPARE_TERM")
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log_file(dir, "primary.log"));
    Killed(p.spawn().unwrap())
}

/// `hotspare metrics` on `port` over `dirs`, listening when this returns.
fn metrics_exporter(dir: &Path, port: u16, dirs: &[&PathBuf]) -> Killed {
    let mut m = Command::new(util::lib("hotspare"));
    m.args(["metrics", "--listen", &format!("127.0.0.1:{port}")])
        .args(dirs)
        .stdout(Stdio::null())
        .stderr(log_file(dir, "metrics.log"));
    let k = Killed(m.spawn().unwrap());
    wait_listening(port, dir);
    k
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

/// A fleet daemon under systemd: `READY=1`, then `WATCHDOG=1` pings whose status says how many
/// of its services' spares answered the probe (both of its two here).
#[test]
fn fleet_daemon_sends_ready_and_watchdog() {
    let (t, key) = workdir();
    let dir = t.path();
    let (sock, path) = notify_socket(dir);
    let mut fleet = format!(
        "node = \"h\"\nkey_file = \"{}\"\nmissed = 10\n",
        key.display()
    );
    for i in 0..2 {
        fleet.push_str(&format!(
            "\n[[service]]\nname = \"svc{i}\"\nlisten = \"127.0.0.1:{}\"\nimage_dir = \"{}\"\nexec = [\"/bin/true\"]\n",
            free_port(),
            dir.join(format!("svc{i}")).display()
        ));
    }
    std::fs::write(dir.join("fleet.toml"), fleet).unwrap();
    let mut c = Command::new(util::lib("hotspare-resume"));
    c.arg("--fleet")
        .arg(dir.join("fleet.toml"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "300000")
        .env_remove("HOTSPARE_SPARE")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(log_file(dir, "spare_a.log"));
    let _daemon = Killed(c.spawn().unwrap());
    wait_notify(&sock, "READY=1", Duration::from_secs(20))
        .unwrap_or_else(|g| panic!("no READY=1 within 20 s; got {g:?}{}", logs(dir)));
    let mut both = false;
    for i in 0..20 {
        let got = wait_notify(&sock, "WATCHDOG=1", Duration::from_secs(10))
            .unwrap_or_else(|g| panic!("watchdog ping {i} missing; got {g:?}{}", logs(dir)));
        if got
            .last()
            .unwrap()
            .contains("STATUS=fleet: 2 spares answer, 0 programs run here")
        {
            both = true;
            break;
        }
    }
    assert!(both, "no ping with both spares answering{}", logs(dir));
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

    let primary = kv_primary(dir, &key, &spool, kv_port, port_a, &[], &[]);
    wait_listening(kv_port, dir);

    let _metrics = metrics_exporter(dir, metrics_port, &[&spool, &image_a, &image_b]);

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

/// A scraped histogram: buckets as (upper bound, cumulative count) in order of the bound,
/// `+Inf` last; sum; count.
type Hist = (Vec<(f64, f64)>, f64, f64);

/// The histogram `name` of `dir`.
fn histogram(m: &Scrape, name: &str, dir: &Path) -> Option<Hist> {
    let d = dir.display().to_string();
    let mut buckets: Vec<(f64, f64)> = m
        .get(&format!("{name}_bucket"))?
        .iter()
        .filter(|(l, _)| l.get("dir") == Some(&d))
        .map(|(l, v)| {
            let le = l.get("le").expect("le label");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le")
            };
            (le, *v)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sum = get(m, &format!("{name}_sum"), dir)?.1;
    let count = get(m, &format!("{name}_count"), dir)?.1;
    Some((buckets, sum, count))
}

/// Checks what makes a histogram one: buckets cumulative, ending in `+Inf` with the count.
fn check_histogram(m: &Scrape, name: &str, dir: &Path) -> Hist {
    let (b, sum, count) = histogram(m, name, dir).unwrap_or_else(|| panic!("no {name}"));
    assert!(b.len() >= 2, "{name}: buckets {b:?}");
    assert!(
        b.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}: buckets not cumulative: {b:?}"
    );
    assert_eq!(b.last().unwrap().0, f64::INFINITY, "{name}: {b:?}");
    assert_eq!(
        b.last().unwrap().1,
        count,
        "{name}: +Inf bucket is not the count"
    );
    assert!(sum >= 0.0, "{name}: sum {sum}");
    (b, sum, count)
}

/// `INFO hotspare` of the program: field → value.
fn kv_info(conn: &mut RespConn) -> HashMap<String, String> {
    match conn.cmd(&["INFO", "hotspare"]).unwrap() {
        util::Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect(),
        r => panic!("INFO hotspare: {r:?}"),
    }
}

/// The counters and histograms the processes keep themselves (published in their status
/// files) come out of `hotspare metrics` as OpenMetrics histograms and counters, and agree with
/// what else is known: one stop time and one wire size per checkpoint the status reports as
/// sent, the wire sizes adding up to the bytes the program itself counts, heartbeat round
/// trips accruing while idle, and a refused connection counted once.
#[test]
fn metrics_histograms_count_the_checkpoints() {
    let (t, key) = workdir();
    let dir = t.path();
    let (spool, image_a) = (dir.join("spool"), dir.join("spare_a"));
    let (port_a, kv_port, metrics_port) = (free_port(), free_port(), free_port());
    let _spare = Killed(spare(dir, "spare_a", port_a, kv_port, &[]).spawn().unwrap());
    wait_listening(port_a, dir);

    // Checkpoints for the writes only: none taken behind the test's back.
    let _primary = kv_primary(dir, &key, &spool, kv_port, port_a, &["--cpt-ms", "0"], &[]);
    wait_listening(kv_port, dir);
    let _metrics = metrics_exporter(dir, metrics_port, &[&spool, &image_a]);

    let kv: SocketAddr = ([127, 0, 0, 1], kv_port).into();
    let mut conn = RespConn::connect(kv, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
    let write = |conn: &mut RespConn, n: usize, from: usize| {
        for i in from..from + n {
            // Values of growing size: checkpoints of different sizes on the wire.
            let v = "x".repeat(64 * (i % 50));
            conn.cmd(&["SET", &format!("k{i}"), &v])
                .unwrap_or_else(|e| panic!("SET k{i}: {e}{}", logs(dir)));
        }
    };
    // Everything sent is acknowledged, and the primary's status says so with its counters.
    // The two status files are rewritten every 100 ms each, independently: one scrape can read
    // the spare's older than the primary's, so both must have caught up (the counts are
    // monotonic; one that never reaches the other fails the wait).
    let settled = |m: &Scrape, at_least: f64| {
        let sent = get(m, "hotspare_sent_seq", &spool).map(|v| v.1);
        sent.is_some_and(|s| s >= at_least)
            && get(m, "hotspare_acked_seq", &spool).map(|v| v.1) == sent
            && get(m, "hotspare_spare_checkpoints_acked_total", &image_a).is_some()
            && get(m, "hotspare_spare_checkpoints_received_total", &image_a).map(|v| v.1) == sent
    };

    write(&mut conn, 30, 0);
    let first = scrape_until(metrics_port, dir, "30 writes acknowledged", |m| {
        settled(m, 30.0)
    });
    let sent = get(&first, "hotspare_sent_seq", &spool).unwrap().1;
    let info = kv_info(&mut conn);
    let (stop_b, stop_sum, stop_count) =
        check_histogram(&first, "hotspare_checkpoint_stop_seconds", &spool);
    // One stop time per checkpoint: a fresh primary's sequence numbers count them.
    assert_eq!(stop_count, sent, "stop times {stop_b:?}");
    assert!(
        stop_sum > 0.0 && stop_sum < sent,
        "stop time sum {stop_sum} s"
    );
    // The bounds run from sub-millisecond to a second.
    assert!(
        stop_b[0].0 <= 0.0001 && stop_b.iter().any(|b| b.0 == 1.0),
        "{stop_b:?}"
    );
    let (wire_b, wire_sum, wire_count) =
        check_histogram(&first, "hotspare_checkpoint_wire_bytes", &spool);
    assert_eq!(wire_count, sent, "wire sizes {wire_b:?}");
    // The first checkpoint is a full image: its size is in a higher bucket than the smallest.
    assert!(
        wire_b.iter().any(|b| b.1 > 0.0 && b.1 < wire_count),
        "{wire_b:?}"
    );
    // The same bytes the program counts (`HotSpare::wire_bytes`), every stream being whole.
    assert_eq!(
        wire_sum,
        info["hotspare_wire_bytes"].parse::<f64>().unwrap(),
        "wire bytes: histogram sum vs INFO hotspare"
    );
    for (name, want) in [
        ("hotspare_checkpoints_sent_total", sent),
        ("hotspare_checkpoints_acked_total", sent),
        ("hotspare_checkpoints_failed_total", 0.0),
    ] {
        assert_eq!(
            get(&first, name, &spool),
            Some(("primary".into(), want)),
            "{name}"
        );
    }
    // The spare began one stream per checkpoint and acknowledged each at most once.
    let spare_received = get(
        &first,
        "hotspare_spare_checkpoints_received_total",
        &image_a,
    );
    assert_eq!(spare_received, Some(("spare".into(), sent)));
    let spare_acked = get(&first, "hotspare_spare_checkpoints_acked_total", &image_a)
        .unwrap()
        .1;
    assert!(
        spare_acked >= 1.0 && spare_acked <= sent,
        "spare acked {spare_acked}"
    );
    let stream_bytes = get(&first, "hotspare_spare_stream_bytes_total", &image_a)
        .unwrap()
        .1;
    assert!(
        stream_bytes > 0.0 && stream_bytes < wire_sum,
        "spare stream bytes {stream_bytes}, wire {wire_sum}"
    );
    let (_, rtt_sum, rtt_count) = check_histogram(&first, "hotspare_heartbeat_rtt_seconds", &spool);
    assert!(rtt_count >= 1.0, "no heartbeat round trip");
    assert!(
        rtt_sum / rtt_count < 0.08,
        "mean heartbeat RTT {} s",
        rtt_sum / rtt_count
    );

    // More writes: the counts grow by exactly the checkpoints sent meanwhile; idle time
    // brings round trips, not stop times.
    write(&mut conn, 20, 30);
    let answered = |m: &Scrape| {
        get(m, "hotspare_spare_heartbeats_answered_total", &image_a).map_or(0.0, |v| v.1)
    };
    let second = scrape_until(metrics_port, dir, "20 more writes acknowledged", |m| {
        settled(m, sent + 20.0)
            && histogram(m, "hotspare_heartbeat_rtt_seconds", &spool)
                .is_some_and(|h| h.2 >= rtt_count + 5.0)
            && answered(m) > answered(&first)
    });
    let sent2 = get(&second, "hotspare_sent_seq", &spool).unwrap().1;
    let (_, _, stop_count2) = check_histogram(&second, "hotspare_checkpoint_stop_seconds", &spool);
    assert_eq!(stop_count2 - stop_count, sent2 - sent);
    let (_, _, wire_count2) = check_histogram(&second, "hotspare_checkpoint_wire_bytes", &spool);
    assert_eq!(wire_count2, sent2);

    // A connection that never completes the handshake is refused, and counted once.
    let refused = |m: &Scrape| {
        let d = image_a.display().to_string();
        m.get("hotspare_spare_connections_refused_total")
            .and_then(|s| {
                s.iter().find(|(l, _)| {
                    l.get("dir") == Some(&d)
                        && l.get("reason").map(String::as_str) == Some("handshake")
                })
            })
            .map(|(_, v)| *v)
    };
    let before = refused(&second).expect("refused connections by reason");
    drop(TcpStream::connect(("127.0.0.1", port_a)).unwrap());
    scrape_until(metrics_port, dir, "the refused connection counted", |m| {
        refused(m) == Some(before + 1.0)
    });
}

/// `HOTSPARE_LOG_FORMAT=json`: every line the library writes, the spare's and the primary's,
/// is one JSON object with the time, the pid, the component and the message; the spare's
/// admission of the primary is among them, naming the primary's pid.
#[test]
fn json_logs_are_one_object_per_line() {
    let (t, key) = workdir();
    let dir = t.path();
    let (port_a, kv_port) = (free_port(), free_port());
    let json = [("HOTSPARE_LOG_FORMAT", "json".to_string())];
    let _spare = Killed(
        spare(dir, "spare_a", port_a, kv_port, &json)
            .spawn()
            .unwrap(),
    );
    wait_listening(port_a, dir);
    let spool = dir.join("spool");
    let primary = kv_primary(
        dir,
        &key,
        &spool,
        kv_port,
        port_a,
        &[],
        &[("HOTSPARE_LOG_FORMAT", "json")],
    );
    wait_listening(kv_port, dir);
    let kv: SocketAddr = ([127, 0, 0, 1], kv_port).into();
    let mut conn = RespConn::connect(kv, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
    conn.cmd(&["SET", "k", "v"])
        .unwrap_or_else(|e| panic!("SET: {e}{}", logs(dir)));
    let admitted = format!("primary pid {} ", primary.pid());
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("spare_a.log")).unwrap_or_default();
        if text.contains(&admitted) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no admission line{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen_admission = false;
    for f in ["spare_a.log", "primary.log"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        // The library's lines (the example prints its own, as text, with its own prefix).
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("hotspare-kv:"))
            .collect();
        assert!(!lines.is_empty(), "{f}: no library lines{}", logs(dir));
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{f}: not a JSON object ({e}): {l}"));
            assert!(
                v["ts_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000)
                    && v["pid"].as_u64().is_some()
                    && v["component"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("hotspare"))
                    && v["msg"].as_str().is_some_and(|m| !m.is_empty()),
                "{f}: {l}"
            );
            if v["msg"].as_str().unwrap().contains(&admitted) {
                assert_eq!(v["component"], "hotspare-resume", "{l}");
                seen_admission = true;
            }
        }
    }
    assert!(seen_admission, "{}", logs(dir));
}
