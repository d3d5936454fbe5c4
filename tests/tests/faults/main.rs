//! The real-process fault suite: `hotspare-kv` as the service, `hotspare-resume` as the spare,
//! faults injected from outside (signals, a full disk, hostile peers, network partitions in
//! namespaces of our own), and what a client saw checked afterwards. Every acknowledged write
//! is recorded with the pid of the process that answered it and when (sent, answered); at the
//! end the surviving service must hold every acknowledged key at its acknowledged value or a
//! later one, and after a takeover began no two processes may have acknowledged writes in
//! overlapping time ranges (a "double-serving window").
//!
//! Each scenario prints one JSON line (`--nocapture` shows them):
//! `{"scenario","trials","acked","lost","double_serving_windows","outage_ms",…}` where
//! `outage_ms` is the longest time, over the trials, the clients went without an
//! acknowledgement (the longest gap between two; for a stop, a partition or a kill of a
//! primary that the clients kept using: from the fault to the survivor's first answer).
//! `HOTSPARE_FAULT_TRIALS=N` multiplies every scenario's trials (default 1: the short CI
//! version, about a minute); `HOTSPARE_FAULT_RETRY_MS=N` sets how long the writers wait before
//! connecting again after a refusal (default 20). Run alone, the binaries built first:
//!
//! ```text
//! cargo build --release --workspace
//! cargo test --release -p hotspare-tests --test faults -- --test-threads=1 --nocapture
//! ```
//! Needs root (tmpfs, a loop device, namespaces, iptables; `.ci/run` installs iptables). A scenario whose
//! fault cannot be injected FAILS with the reason; none passes without having run. The
//! scenarios (s1…s10 here, s11* with an etcd arbiter in `arbiter.rs`, the Jepsen-style s12* in
//! `jepsen.rs`) and their figures are described in `docs/reliability.md`. A defect found by a scenario is pinned by marking it `#[ignore = "BUG: …"]` until fixed
//! (none are today).

#[path = "../util/mod.rs"]
mod util;

// Scenarios with an etcd arbiter (section 11).
mod arbiter;
mod fleet;
mod fleet_redteam;

// Jepsen-style faults: a three-member etcd on the hosts, partitions, pauses, restarts (12).
mod jepsen;

use hotspare_proto::codec::{ClientHandshake, Key, Opener, Sealer};
use hotspare_proto::{Msg, StreamHeader};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use util::{enter_netns, free_port, now_ns, Killed, Lab, LoopExt4, Reply, RespConn, Tmpfs};

const MS: u128 = 1_000_000;
const KEY: &str = "fault suite shared secret, 0600";

/// One scenario at a time, whatever `--test-threads` says: they measure timing on a small
/// machine and would disturb each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    repeat_failure_line();
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Failure messages end with pages of logs, and CI shows the head and the tail of the output
/// only: the hook prints a failed assertion's first line again after the message, so that the
/// tail of a run says what went wrong in each failing scenario.
fn repeat_failure_line() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let p = info.payload();
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if let Some(first) = msg.lines().next() {
                eprintln!("=> failed: {first}");
            }
        }));
    });
}

/// How many services a fleet scenario runs: `HOTSPARE_FLEET_SERVICES`, else `release` in an
/// optimised build and a third of it (at least 6) in a debug one. The debug build is CI's short
/// version: its programs are ~10× slower to capture and resume, and twenty of them with their
/// daemons and etcd on two cores measure the machine, not the protocol. The figures in
/// docs/reliability.md come from release runs.
fn fleet_services(release: usize) -> usize {
    std::env::var("HOTSPARE_FLEET_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            (release / 3).max(6)
        } else {
            release
        })
}

/// How long a writer waits before it tries again after a refused or failed connection:
/// `HOTSPARE_FAULT_RETRY_MS` (default 20). Part of every pause the clients see (up to all of
/// it once the new primary listens): client libraries retry at once or after a few ms (go-redis
/// from 8 ms), so the switchover scenario is measured with both.
fn retry_wait() -> Duration {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    Duration::from_millis(*MS.get_or_init(|| {
        std::env::var("HOTSPARE_FAULT_RETRY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20)
    }))
}

/// Trials of a scenario: `base` times `HOTSPARE_FAULT_TRIALS` (default 1).
fn trials(base: usize) -> usize {
    let m = std::env::var("HOTSPARE_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    base * m
}

fn kv_bin() -> PathBuf {
    util::lib("hotspare-kv")
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Both logs, for assertion messages.
fn logs(dir: &Path) -> String {
    let mut s = String::new();
    let mut names: Vec<String> = ["spare.log", "primary.log", "primary2.log"]
        .map(String::from)
        .to_vec();
    // Any other log of the scenario (the daemons of both hosts, etcd).
    let mut others: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log") && !names.contains(n))
        .collect();
    others.sort();
    names.extend(others);
    for f in &names {
        let mut t = log(dir, f);
        if f.starts_with("etcd") {
            // Its start-up chatter says nothing; its warnings (slow requests) and errors do.
            t = t
                .lines()
                .filter(|l| {
                    [" W | ", " E | ", " C | ", "error"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        if !t.is_empty() {
            let tail: Vec<&str> = t.lines().rev().take(40).collect();
            s.push_str(&format!("\n--- {f} (last lines) ---\n"));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
    }
    s
}

/// Waits (bounded) until a log holds `needle`.
fn wait_log(dir: &Path, name: &str, needle: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if log(dir, name).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A test directory with the shared key.
fn workdir() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (t, key)
}

/// Where a process runs: loopback, or a host of a [`Lab`].
#[derive(Clone, Copy)]
enum At<'a> {
    Loopback,
    Host(&'a Lab, &'static str),
}

/// The spare daemon. Its takeover hook writes the realtime clock (ns) to `DIR/takeover_ns`:
/// the moment the takeover began, as far as the clients' clocks are concerned.
fn start_spare(
    dir: &Path,
    image: &Path,
    listen: &str,
    kv_args: &[String],
    extra: &[&str],
    at: At<'_>,
) -> Killed {
    let _ = std::fs::remove_file(dir.join("takeover_ns"));
    let hook = format!(
        "date +%s%N > {0}/takeover_ns.tmp && mv {0}/takeover_ns.tmp {0}/takeover_ns",
        dir.display()
    );
    let mut c = Command::new(util::lib("hotspare-resume"));
    if !extra.contains(&"--missed") {
        // 10 × 10 ms: a noisy 2-core machine must not cause a takeover of a live primary.
        c.args(["--missed", "10"]);
    }
    c.args(["--listen", listen, "--key-file"])
        .arg(dir.join("key"))
        .arg("--image-dir")
        .arg(image)
        .args(["--on-takeover", &hook])
        .args(extra)
        .arg("--exec")
        .arg(kv_bin())
        .args(kv_args)
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env_remove("HOTSPARE_SPARE")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("spare.log"))
                .unwrap(),
        ));
    if let At::Host(lab, h) = at {
        lab.place(h, &mut c);
    }
    let before = log(dir, "spare.log").matches("listening on").count();
    let k = Killed(c.spawn().expect("start hotspare-resume"));
    let t = Instant::now();
    while log(dir, "spare.log").matches("listening on").count() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the spare did not start listening{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    k
}

/// A primary `hotspare-kv` streaming to the spare at `spare`.
fn start_primary(
    dir: &Path,
    spool: &str,
    spare: &str,
    kv_args: &[String],
    env: &[(&str, &str)],
    log_name: &str,
    at: At<'_>,
) -> Killed {
    let mut c = Command::new(kv_bin());
    c.args(kv_args)
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("HOTSPARE_IMAGE_DIR", dir.join(spool))
        .env("HOTSPARE_SPARE", spare)
        .env("HOTSPARE_KEY_FILE", dir.join("key"))
        .env("HOTSPARE_LEASE_MS", "80")
        .env_remove("HOTSPARE_RESUME")
        .env_remove("HOTSPARE_TERM")
        .env_remove("HOTSPARE_ON_FENCE")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(log_name))
                .unwrap(),
        ));
    for (k, v) in env {
        c.env(k, v);
    }
    if let At::Host(lab, h) = at {
        lab.place(h, &mut c);
    }
    Killed(c.spawn().expect("start hotspare-kv"))
}

/// A spare (image in `image`) and an every-write primary (`env` added to its environment) on
/// loopback, the primary serving: (spare, primary, the service's port).
fn loopback_pair(dir: &Path, image: &Path, env: &[(&str, &str)]) -> (Killed, Killed, u16) {
    let (sp, kp) = (free_port(), free_port());
    let args = kv_args(kp, true, "127.0.0.1");
    let spare = start_spare(
        dir,
        image,
        &format!("127.0.0.1:{sp}"),
        &args,
        &[],
        At::Loopback,
    );
    let primary = start_primary(
        dir,
        "spool",
        &format!("127.0.0.1:{sp}"),
        &args,
        env,
        "primary.log",
        At::Loopback,
    );
    wait_serving(lo(kp), None, primary.pid(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
    (spare, primary, kp)
}

fn kv_args(port: u16, every_write: bool, bind: &str) -> Vec<String> {
    let mut v = vec![
        "--bind".to_string(),
        bind.into(),
        "--port".into(),
        port.to_string(),
    ];
    if every_write {
        v.push("--cpt-every-write".into());
    } else {
        v.extend(["--cpt-ms".into(), "50".into()]);
    }
    v
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs `f` on a thread inside the network namespace `ns` (or here, if `None`).
fn in_ns<T: Send>(ns: Option<i32>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(fd) = ns {
                enter_netns(fd).expect("setns into the client's namespace");
            }
            f()
        })
        .join()
        .expect("client thread panicked")
    })
}

/// Waits until `pid` answers on `addr`; the moment it first did.
fn wait_serving(
    addr: SocketAddr,
    ns: Option<i32>,
    pid: i32,
    within: Duration,
) -> Result<u128, String> {
    in_ns(ns, || {
        let t = Instant::now();
        let mut last = String::new();
        while t.elapsed() < within {
            match RespConn::connect(addr, Duration::from_millis(300), Duration::from_secs(3))
                .and_then(|mut c| c.server_pid())
            {
                Ok(p) if p == pid => return Ok(now_ns()),
                Ok(p) => last = format!("answered by pid {p}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "pid {pid} did not answer on {addr} within {} ms (last: {last}; the process: {})",
            within.as_millis(),
            proc_state(pid)
        ))
    })
}

/// A process's state as `/proc` says it (`R`, `S`, `Z`…), and its listening sockets' count.
fn proc_state(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("gone");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("state {state}, exe {exe}")
}

/// The takeover hook's time stamp, once it ran (bounded wait).
fn wait_takeover(dir: &Path, within: Duration) -> Option<u128> {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(dir.join("takeover_ns")) {
            if let Ok(v) = s.trim().parse() {
                return Some(v);
            }
        }
        if t.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------------------
// The clients: writers that record every acknowledgement.

/// One acknowledged SET.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    val: u64,
    /// The process that answered (`INFO server` on the connection).
    pid: i32,
    /// Realtime ns when the command was sent and when its `+OK` was read.
    sent: u128,
    got: u128,
}

#[derive(Debug, Default)]
struct Tally {
    acks: Vec<Ack>,
    /// Error replies.
    errors: u64,
    /// Connections that broke or timed out with a command outstanding.
    broken: u64,
    /// Connection attempts that failed.
    refused: u64,
    fatal: Option<String>,
}

/// Writers running until stopped (each bounded by a deadline too).
struct Load {
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// One writer per target: `(name, address)`; keys `name:0..64`, values increasing.
    fn start(targets: &[(&str, SocketAddr)], ns: Option<i32>, pause: Duration) -> Load {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = targets
            .iter()
            .map(|(name, addr)| {
                let (name, addr) = (name.to_string(), *addr);
                let (tally, stop) = (tally.clone(), stop.clone());
                std::thread::spawn(move || writer(&name, addr, ns, pause, &stop, &tally))
            })
            .collect();
        Load {
            tally,
            stop,
            threads,
        }
    }

    fn acks(&self) -> Vec<Ack> {
        self.tally.lock().unwrap().acks.clone()
    }

    fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let t = std::mem::take(&mut *self.tally.lock().unwrap());
        if let Some(f) = &t.fatal {
            panic!("a writer could not run: {f}");
        }
        t
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The longest a writer runs, whatever happens.
const WRITER_LIMIT: Duration = Duration::from_secs(120);

fn writer(
    name: &str,
    addr: SocketAddr,
    ns: Option<i32>,
    pause: Duration,
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    if let Some(fd) = ns {
        if let Err(e) = enter_netns(fd) {
            tally.lock().unwrap().fatal = Some(format!("setns: {e}"));
            return;
        }
    }
    let start = Instant::now();
    let mut val = 0u64;
    let mut conn: Option<(RespConn, i32)> = None;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < WRITER_LIMIT {
        if conn.is_none() {
            match RespConn::connect(addr, Duration::from_millis(300), Duration::from_secs(2))
                .and_then(|mut c| c.server_pid().map(|p| (c, p)))
            {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    tally.lock().unwrap().refused += 1;
                    std::thread::sleep(retry_wait());
                    continue;
                }
            }
        }
        let (c, pid) = conn.as_mut().expect("connected above");
        val += 1;
        let key = format!("{name}:{}", val % 64);
        let sent = now_ns();
        match c.cmd(&["SET", &key, &val.to_string()]) {
            Ok(Reply::Simple(s)) if s == "OK" => tally.lock().unwrap().acks.push(Ack {
                key,
                val,
                pid: *pid,
                sent,
                got: now_ns(),
            }),
            Ok(_) => tally.lock().unwrap().errors += 1,
            Err(_) => {
                tally.lock().unwrap().broken += 1;
                conn = None;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// Sends `n` SETs one by one on fresh connections as needed (the issue's "5 SETs"), within
/// `within`; the acknowledged ones.
fn set_each(
    addr: SocketAddr,
    ns: Option<i32>,
    prefix: &str,
    n: u64,
    within: Duration,
) -> (Vec<Ack>, u64) {
    in_ns(ns, || {
        let t = Instant::now();
        let (mut acks, mut failed) = (Vec::new(), 0u64);
        let mut i = 0;
        while i < n && t.elapsed() < within {
            let r = RespConn::connect(addr, Duration::from_millis(300), Duration::from_secs(2))
                .and_then(|mut c| {
                    let pid = c.server_pid()?;
                    let key = format!("{prefix}:{i}");
                    let sent = now_ns();
                    let r = c.cmd(&["SET", &key, &(1000 + i).to_string()])?;
                    Ok((r, pid, key, sent))
                });
            match r {
                Ok((Reply::Simple(s), pid, key, sent)) if s == "OK" => {
                    acks.push(Ack {
                        key,
                        val: 1000 + i,
                        pid,
                        sent,
                        got: now_ns(),
                    });
                    i += 1;
                }
                _ => {
                    failed += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        (acks, failed)
    })
}

/// Acknowledged keys whose value on the service at `addr` (answered by `pid`) is missing or
/// older than acknowledged: `(lost, keys checked, examples)`.
fn lost(addr: SocketAddr, ns: Option<i32>, pid: i32, acks: &[Ack]) -> (usize, usize, Vec<String>) {
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for a in acks {
        let e = want.entry(a.key.as_str()).or_insert(0);
        *e = (*e).max(a.val);
    }
    in_ns(ns, || {
        // A survivor just taken over may still be binding its port: refused is retried for
        // 10 s; the panic says whether the process is still there.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            match RespConn::connect(addr, Duration::from_secs(1), Duration::from_secs(5)) {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!(
                    "connect to the surviving service {addr} (pid {pid}, {}): {e}",
                    if fleet::alive(pid) { "alive" } else { "gone" }
                ),
            }
        };
        assert_eq!(
            c.server_pid().expect("INFO server"),
            pid,
            "the service at {addr} is not the expected process"
        );
        let (mut lost, mut examples) = (0, Vec::new());
        for (k, v) in &want {
            let got = match c.cmd(&["GET", k]).expect("GET") {
                Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).parse::<u64>().ok(),
                _ => None,
            };
            if got.is_none_or(|g| g < *v) {
                lost += 1;
                if examples.len() < 5 {
                    examples.push(format!("{k}: acknowledged {v}, found {got:?}"));
                }
            }
        }
        (lost, want.len(), examples)
    })
}

/// Pairs of processes that both answered (commands sent at or after `after`) in overlapping
/// time, as far as a client can prove it: each answered a command sent after the other had
/// answered one. That is Jepsen's real-time order (one operation precedes another iff it
/// completed before the other was invoked): one process serving after the other began, and the
/// other after the first began, means that at some moment both held the right to serve —
/// whichever is the older answered after the newer one had taken over. A reply that sat unread in a
/// starved client only widens its own interval; it cannot make a window, which a check of
/// "`[first sent, last answered]` intersect" did (a client thread scheduled late after the
/// takeover). Not seen here: an overlap shorter than the gap between two commands, and a reply
/// a paused or starved *server* sends late to a command sent before the newer process first
/// answered — scenarios that pause a primary count its acknowledgements of commands sent after
/// the pause instead (s2, s13r_primary_stopped_past_the_lapse_rule). The simulator checks the
/// right to serve exactly.
fn windows(acks: &[Ack], after: u128) -> usize {
    // Per process: (first answer received, last command sent).
    let mut r: HashMap<i32, (u128, u128)> = HashMap::new();
    for a in acks.iter().filter(|a| a.sent >= after) {
        let e = r.entry(a.pid).or_insert((a.got, a.sent));
        e.0 = e.0.min(a.got);
        e.1 = e.1.max(a.sent);
    }
    let v: Vec<(u128, u128)> = r.into_values().collect();
    let mut n = 0;
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            if v[i].1 > v[j].0 && v[j].1 > v[i].0 {
                n += 1;
            }
        }
    }
    n
}

/// The longest time between two consecutive acknowledgements, in ms.
fn longest_gap(acks: &[Ack]) -> f64 {
    let mut t: Vec<u128> = acks.iter().map(|a| a.got).collect();
    t.sort_unstable();
    t.windows(2)
        .map(|w| (w[1] - w[0]) as f64 / MS as f64)
        .fold(0.0, f64::max)
}

/// Waits until at least `n` acknowledgements are in (bounded).
fn wait_acks(load: &Load, n: usize, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if load.tally.lock().unwrap().acks.len() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// One scenario's figures, summed over its trials.
#[derive(Debug, Default)]
struct Figures {
    trials: usize,
    acked: usize,
    lost: usize,
    windows: usize,
    outage_ms: f64,
    extra: Vec<(String, String)>,
}

impl Figures {
    /// Sets an extra figure (a later value of the same name replaces it).
    fn add(&mut self, k: &str, v: impl std::fmt::Display) {
        self.extra.retain(|(x, _)| x != k);
        self.extra.push((k.into(), v.to_string()));
    }

    /// Sets an extra figure to the largest value given over the trials.
    fn add_max(&mut self, k: &str, v: f64) {
        let old = self
            .extra
            .iter()
            .find(|(x, _)| x == k)
            .and_then(|(_, v)| v.parse::<f64>().ok());
        self.add(k, format!("{:.0}", old.map_or(v, |o| o.max(v))));
    }

    fn print(&self, scenario: &str) {
        let mut s = format!(
            "{{\"scenario\":\"{scenario}\",\"trials\":{},\"acked\":{},\"lost\":{},\"double_serving_windows\":{},\"outage_ms\":{:.0}",
            self.trials, self.acked, self.lost, self.windows, self.outage_ms
        );
        for (k, v) in &self.extra {
            let quoted = v.parse::<f64>().is_err() && v != "true" && v != "false";
            if quoted {
                s.push_str(&format!(",\"{k}\":\"{}\"", v.replace('"', "'")));
            } else {
                s.push_str(&format!(",\"{k}\":{v}"));
            }
        }
        s.push('}');
        println!("{s}");
    }
}

/// Kills the primary, waits for the takeover, checks every acknowledged write on the resumed
/// program; adds to `f`. Returns the takeover's time stamp.
#[allow(clippy::too_many_arguments)]
fn fail_over_and_check(
    dir: &Path,
    primary: Killed,
    spare_pid: i32,
    addr: SocketAddr,
    ns: Option<i32>,
    load: Load,
    f: &mut Figures,
    what: &str,
) -> u128 {
    let killed = now_ns();
    drop(primary);
    let took = wait_takeover(dir, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "{what}: no takeover after the primary was killed{}",
            logs(dir)
        )
    });
    wait_serving(addr, ns, spare_pid, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{what}: {e}{}", logs(dir)));
    // Some writes answered by the resumed program too.
    let n = load.tally.lock().unwrap().acks.len();
    wait_acks(&load, n + 20, Duration::from_secs(5));
    let tally = load.stop();
    let (lost_n, _, ex) = lost(addr, ns, spare_pid, &tally.acks);
    let w = windows(&tally.acks, took.min(killed));
    f.acked += tally.acks.len();
    f.lost += lost_n;
    f.windows += w;
    f.outage_ms = f.outage_ms.max(longest_gap(&tally.acks));
    assert_eq!(
        lost_n,
        0,
        "{what}: acknowledged writes lost: {ex:?}{}",
        logs(dir)
    );
    assert_eq!(w, 0, "{what}: double-serving windows{}", logs(dir));
    took
}

// ---------------------------------------------------------------------------------------------
// 1. Slowloris on the spare's port.

/// A peer that sends one byte of a hello every 1.5 s, reconnecting when the spare drops it;
/// how many times it was dropped.
fn slow_sender(port: u16, stop: &AtomicBool) -> u64 {
    let hello: Vec<u8> = b"HSRP\x02"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(7u8, 32))
        .collect();
    let (mut dropped, t) = (0, Instant::now());
    while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
        let Ok(mut s) = TcpStream::connect(lo(port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut i = 0;
        loop {
            if stop.load(Ordering::SeqCst) {
                return dropped;
            }
            if s.write_all(&hello[i % hello.len()..i % hello.len() + 1])
                .is_err()
            {
                dropped += 1;
                break;
            }
            i += 1;
            // Wait 1.5 s for the next byte, watching for the spare to drop us.
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => {
                    dropped += 1;
                    break;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    dropped += 1;
                    break;
                }
            }
        }
    }
    dropped
}

/// A peer that connects and sends nothing; how many times the spare dropped it.
fn silent_peer(port: u16, stop: &AtomicBool) -> u64 {
    let (mut dropped, t) = (0, Instant::now());
    while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
        let Ok(mut s) = TcpStream::connect(lo(port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        loop {
            if stop.load(Ordering::SeqCst) {
                return dropped;
            }
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => {
                    dropped += 1;
                    break;
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    dropped += 1;
                    break;
                }
            }
        }
    }
    dropped
}

#[test]
fn s1_slowloris_on_the_spare_port_does_not_stop_the_primary() {
    let _serial = serial();
    let mut f = Figures::default();
    let (mut slow_dropped, mut silent_dropped) = (0, 0);
    let (mut under, mut under_gap) = (0usize, 0f64);
    for trial in 0..trials(1) {
        let (t, _key) = workdir();
        let dir = t.path();
        let (sp, kp) = (free_port(), free_port());
        let args = kv_args(kp, true, "127.0.0.1");
        let spare = start_spare(
            dir,
            &dir.join("spare"),
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            At::Loopback,
        );
        let mut primary = start_primary(
            dir,
            "spool",
            &format!("127.0.0.1:{sp}"),
            &args,
            &[("HOTSPARE_ON_FENCE", "exit")],
            "primary.log",
            At::Loopback,
        );
        wait_serving(lo(kp), None, primary.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (stop.clone(), stop.clone());
        let slow = std::thread::spawn(move || slow_sender(sp, &s1));
        let silent = std::thread::spawn(move || silent_peer(sp, &s2));
        let load = Load::start(&[("a", lo(kp)), ("b", lo(kp))], None, Duration::ZERO);
        let t0 = Instant::now();
        let mut exited = None;
        while t0.elapsed() < Duration::from_secs(6) {
            if let Some(st) = primary.0.try_wait().unwrap() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let acks_during = load.acks();
        stop.store(true, Ordering::SeqCst);
        slow_dropped += slow.join().unwrap();
        silent_dropped += silent.join().unwrap();
        assert!(
            exited.is_none(),
            "trial {trial}: the primary exited ({exited:?}) under a slowloris on the spare's port{}",
            logs(dir)
        );
        let gap = longest_gap(&acks_during);
        assert!(
            acks_during.len() > 100 && gap < 1000.0,
            "trial {trial}: writes stalled under the slowloris: {} acknowledged in 6 s, longest gap {gap:.0} ms{}",
            acks_during.len(),
            logs(dir)
        );
        assert!(
            log(dir, "spare.log").contains("no handshake within"),
            "the spare never dropped the slow peers{}",
            logs(dir)
        );
        under += acks_during.len();
        under_gap = under_gap.max(gap);
        f.trials += 1;
        fail_over_and_check(
            dir,
            primary,
            spare.pid(),
            lo(kp),
            None,
            load,
            &mut f,
            "slowloris",
        );
        drop(spare);
    }
    f.add("acked_under_slowloris", under);
    f.add("longest_gap_under_slowloris_ms", format!("{under_gap:.0}"));
    f.add("slow_peers_dropped", slow_dropped);
    f.add("silent_peers_dropped", silent_dropped);
    f.print("slowloris");
}

// ---------------------------------------------------------------------------------------------
// 2. SIGSTOP of the primary, writes queued on its connection.

/// The primary is stopped for 500 ms (the spare takes over meanwhile) while a client has 50
/// SETs queued on its connection; then continued. Its replies to them must not be `+OK`.
fn sigstop_primary(scenario: &str, every_write: bool) {
    let mut f = Figures::default();
    let (mut late_ok, mut queued_err, mut queued_closed, mut exit_codes) = (0, 0, 0, Vec::new());
    let mut failures = Vec::new();
    for trial in 0..trials(3) {
        let (t, _key) = workdir();
        let dir = t.path();
        let (sp, kp) = (free_port(), free_port());
        let args = kv_args(kp, every_write, "127.0.0.1");
        let spare = start_spare(
            dir,
            &dir.join("spare"),
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            At::Loopback,
        );
        let spare_started = Instant::now();
        let mut primary = start_primary(
            dir,
            "spool",
            &format!("127.0.0.1:{sp}"),
            &args,
            &[("HOTSPARE_ON_FENCE", "exit")],
            "primary.log",
            At::Loopback,
        );
        let old = primary.pid();
        wait_serving(lo(kp), None, old, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
        let load = Load::start(&[("a", lo(kp))], None, Duration::from_millis(1));
        assert!(
            wait_acks(&load, 50, Duration::from_secs(10)),
            "no load{}",
            logs(dir)
        );
        // Past the spare's start-up grace (1 s), so that it detects a silent primary in N × H.
        std::thread::sleep(Duration::from_millis(1300).saturating_sub(spare_started.elapsed()));
        let mut q =
            RespConn::connect(lo(kp), Duration::from_secs(1), Duration::from_secs(3)).unwrap();
        assert_eq!(q.server_pid().unwrap(), old);
        let stopped = now_ns();
        primary.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(20));
        const QUEUED: u64 = 50;
        let mut queued = Vec::new();
        for i in 0..QUEUED {
            let (k, v) = (format!("q:{i}"), 1000 + i);
            q.send(&[b"SET", k.as_bytes(), v.to_string().as_bytes()])
                .unwrap();
            queued.push((k, v, now_ns()));
        }
        let took = wait_takeover(dir, Duration::from_secs(5));
        let since = Duration::from_nanos((now_ns() - stopped) as u64);
        std::thread::sleep(Duration::from_millis(500).saturating_sub(since));
        primary.signal(libc::SIGCONT);
        let Some(took) = took else {
            panic!(
                "trial {trial}: no takeover while the primary was stopped{}",
                logs(dir)
            );
        };
        // The replies to the queued writes, on the old connection.
        let (mut ok, mut err, mut closed) = (Vec::new(), 0, false);
        for (k, v, sent) in queued {
            match q.read() {
                Ok(Reply::Simple(s)) if s == "OK" => ok.push(Ack {
                    key: k,
                    val: v,
                    pid: old,
                    sent,
                    got: now_ns(),
                }),
                Ok(_) => err += 1,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let code = primary.wait_exit(Duration::from_secs(10));
        exit_codes.push(code.map_or("signal".to_string(), |c| c.to_string()));
        let first_new = wait_serving(lo(kp), None, spare.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("trial {trial}: {e}{}", logs(dir)));
        let n = load.tally.lock().unwrap().acks.len();
        wait_acks(&load, n + 20, Duration::from_secs(5));
        let mut acks = load.stop().acks;
        // Acknowledgements by the old primary of commands sent after it was stopped: it can only
        // have processed them after SIGCONT, that is after the takeover began.
        let late_load = acks
            .iter()
            .filter(|a| a.pid == old && a.sent > stopped)
            .count();
        let late = ok.len() + late_load;
        acks.extend(ok.iter().cloned());
        let (lost_n, _, ex) = lost(lo(kp), None, spare.pid(), &acks);
        f.trials += 1;
        f.acked += acks.len();
        f.lost += lost_n;
        f.outage_ms = f.outage_ms.max((first_new - stopped) as f64 / MS as f64);
        if late > 0 {
            f.windows += 1;
            failures.push(format!(
                "trial {trial}: the takeover began {} ms after SIGSTOP; after SIGCONT the old primary (pid {old}, exit code {code:?}) answered +OK to {} of {QUEUED} writes queued on its connection and to {late_load} load writes sent after the stop; lost: {ex:?}",
                (took - stopped) / MS,
                ok.len()
            ));
        }
        if every_write && lost_n > 0 {
            failures.push(format!(
                "trial {trial}: every-write mode lost acknowledged writes: {ex:?}"
            ));
        }
        late_ok += late;
        queued_err += err;
        queued_closed += u64::from(closed);
        drop(spare);
    }
    f.add("old_primary_acks_after_takeover", late_ok);
    f.add("queued_error_replies", queued_err);
    f.add("old_connections_closed", queued_closed);
    f.add("old_primary_exit_codes", exit_codes.join(" "));
    if !every_write {
        f.add(
            "note",
            "interval mode (--cpt-ms 50): lost includes writes acknowledged before they were durable (by design) and the old primary's late +OKs",
        );
    }
    f.print(scenario);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// As the issue reproduced it: 50 ms interval checkpoints, `HOTSPARE_ON_FENCE=exit`.
#[test]
fn s2_stopped_primary_acknowledges_nothing_after_the_takeover() {
    let _serial = serial();
    sigstop_primary("sigstop_primary", false);
}

/// The same with `--cpt-every-write`: a reply waits for a checkpoint, which a primary whose
/// lease ran out cannot take.
#[test]
fn s2b_stopped_primary_every_write_acknowledges_nothing_after_the_takeover() {
    let _serial = serial();
    sigstop_primary("sigstop_primary_every_write", true);
}

// ---------------------------------------------------------------------------------------------
// 3. SIGSTOP of the spare.

#[test]
fn s3_stopped_spare_does_not_take_over_a_live_primary() {
    let _serial = serial();
    let mut f = Figures::default();
    let mut resume_ms: f64 = 0.0;
    for trial in 0..trials(2) {
        let (t, _key) = workdir();
        let dir = t.path();
        let (sp, kp) = (free_port(), free_port());
        let args = kv_args(kp, true, "127.0.0.1");
        let spare = start_spare(
            dir,
            &dir.join("spare"),
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            At::Loopback,
        );
        let spare_started = Instant::now();
        let mut primary = start_primary(
            dir,
            "spool",
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            "primary.log",
            At::Loopback,
        );
        wait_serving(lo(kp), None, primary.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
        let load = Load::start(&[("a", lo(kp)), ("b", lo(kp))], None, Duration::ZERO);
        assert!(
            wait_acks(&load, 50, Duration::from_secs(10)),
            "no load{}",
            logs(dir)
        );
        // Past the spare's start-up grace (1 s): only its stall-awareness may keep it quiet.
        std::thread::sleep(Duration::from_millis(1300).saturating_sub(spare_started.elapsed()));
        spare.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(400));
        let cont = now_ns();
        spare.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(1500));
        let acks = load.acks();
        let first_after = acks.iter().filter(|a| a.sent >= cont).map(|a| a.got).min();
        assert!(
            wait_takeover(dir, Duration::ZERO).is_none()
                && !log(dir, "spare.log").contains("taking over"),
            "trial {trial}: the spare took over from a live primary{}",
            logs(dir)
        );
        assert!(
            primary.0.try_wait().unwrap().is_none(),
            "trial {trial}: the primary exited{}",
            logs(dir)
        );
        let Some(first_after) = first_after else {
            panic!(
                "trial {trial}: no write acknowledged within 1.5 s of SIGCONT{}",
                logs(dir)
            );
        };
        resume_ms = resume_ms.max((first_after - cont) as f64 / MS as f64);
        f.trials += 1;
        fail_over_and_check(
            dir,
            primary,
            spare.pid(),
            lo(kp),
            None,
            load,
            &mut f,
            "stopped spare",
        );
        drop(spare);
    }
    f.add("writes_resumed_after_sigcont_ms", format!("{resume_ms:.0}"));
    f.print("sigstop_spare");
}

// ---------------------------------------------------------------------------------------------
// 4. Both killed; the spare restarted on its image; a fresh primary against it.

/// Phase 1 of scenarios 4 and 7: a spare and a primary, acknowledged writes, both killed.
fn image_with_acked_writes(dir: &Path, sp: u16, kp: u16) -> Vec<Ack> {
    let args = kv_args(kp, true, "127.0.0.1");
    let spare = start_spare(
        dir,
        &dir.join("spare"),
        &format!("127.0.0.1:{sp}"),
        &args,
        &[],
        At::Loopback,
    );
    let primary = start_primary(
        dir,
        "spool1",
        &format!("127.0.0.1:{sp}"),
        &args,
        &[],
        "primary.log",
        At::Loopback,
    );
    wait_serving(lo(kp), None, primary.pid(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
    let (acks, _) = set_each(lo(kp), None, "first", 5, Duration::from_secs(10));
    assert_eq!(
        acks.len(),
        5,
        "phase 1: 5 SETs not acknowledged{}",
        logs(dir)
    );
    let load = Load::start(&[("first-load", lo(kp))], None, Duration::ZERO);
    wait_acks(&load, 30, Duration::from_secs(10));
    let mut all = load.stop().acks;
    all.extend(acks);
    // Both die: the spare first (so it cannot take over), then the primary.
    drop(spare);
    drop(primary);
    all
}

#[test]
fn s4_fresh_primary_against_a_restarted_spare() {
    let _serial = serial();
    let mut f = Figures::default();
    let (mut refused_acks, mut old_keys_after_replace) = (0usize, 0usize);
    let mut refused_exit = String::new();
    for trial in 0..trials(1) {
        for accept in [false, true] {
            let (t, _key) = workdir();
            let dir = t.path();
            let (sp, kp) = (free_port(), free_port());
            let args = kv_args(kp, true, "127.0.0.1");
            let first = image_with_acked_writes(dir, sp, kp);
            let extra: &[&str] = if accept {
                &["--accept-new-lineage"]
            } else {
                &[]
            };
            let mut spare = start_spare(
                dir,
                &dir.join("spare"),
                &format!("127.0.0.1:{sp}"),
                &args,
                extra,
                At::Loopback,
            );
            // A FRESH primary: new spool, no resume.
            let mut fresh = start_primary(
                dir,
                "spool2",
                &format!("127.0.0.1:{sp}"),
                &args,
                &[],
                "primary2.log",
                At::Loopback,
            );
            let fresh_pid = fresh.pid();
            f.trials += 1;
            if !accept {
                // Its SETs must fail: nothing acknowledged by it (the resumed old image may answer
                // once the spare's startup grace is over: those answers are not the fresh one's).
                // (Keys the old image holds: the resumed old image may answer them, and a key new
                // to a resumed server can crash it — see s9.)
                let (acks, _) = set_each(lo(kp), None, "first", 5, Duration::from_secs(3));
                let by_fresh: Vec<&Ack> = acks.iter().filter(|a| a.pid == fresh_pid).collect();
                refused_acks += by_fresh.len();
                assert!(
                    by_fresh.is_empty(),
                    "trial {trial}: a fresh primary of another lineage had {} SETs acknowledged by a spare that must refuse it{}",
                    by_fresh.len(),
                    logs(dir)
                );
                assert!(
                    wait_log(dir, "primary2.log", "refuses us", Duration::from_secs(5)),
                    "the fresh primary was not told it is refused{}",
                    logs(dir)
                );
                std::thread::sleep(Duration::from_millis(200));
                refused_exit = match fresh.0.try_wait().unwrap() {
                    None => "still running".into(),
                    Some(st) => format!("exited {st}"),
                };
                drop(fresh);
                let took = wait_takeover(dir, Duration::from_secs(20))
                    .unwrap_or_else(|| panic!("no takeover of the old image{}", logs(dir)));
                if let Err(e) = wait_serving(lo(kp), None, spare.pid(), Duration::from_secs(20)) {
                    panic!(
                        "{e}; the resumed program: {:?}{}",
                        spare.0.try_wait(),
                        logs(dir)
                    );
                }
                let (lost_n, _, ex) = lost(lo(kp), None, spare.pid(), &first);
                f.acked += first.len();
                f.lost += lost_n;
                f.windows += windows(&first, took);
                assert_eq!(
                    lost_n,
                    0,
                    "refuse: writes acknowledged before both died were lost: {ex:?}{}",
                    logs(dir)
                );
            } else {
                wait_serving(lo(kp), None, fresh_pid, Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
                // The issue's reproduction: 5 SETs acknowledged by the fresh primary…
                let (acks, _) = set_each(lo(kp), None, "fresh", 5, Duration::from_secs(10));
                assert_eq!(
                    acks.len(),
                    5,
                    "the accepted fresh primary did not acknowledge 5 SETs{}",
                    logs(dir)
                );
                assert!(acks.iter().all(|a| a.pid == fresh_pid));
                assert!(
                    fresh.0.try_wait().unwrap().is_none(),
                    "the fresh primary exited{}",
                    logs(dir)
                );
                // …then it is killed: the takeover must resume them (not the older image).
                let killed = now_ns();
                drop(fresh);
                let took = wait_takeover(dir, Duration::from_secs(20)).unwrap_or_else(|| {
                    panic!("no takeover after the fresh primary died{}", logs(dir))
                });
                let first_new = wait_serving(lo(kp), None, spare.pid(), Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
                let (lost_n, _, ex) = lost(lo(kp), None, spare.pid(), &acks);
                let (old_left, _, _) = lost(lo(kp), None, spare.pid(), &first);
                old_keys_after_replace += first
                    .iter()
                    .map(|a| &a.key)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    - old_left;
                f.acked += acks.len();
                f.lost += lost_n;
                f.windows += windows(&acks, took);
                f.outage_ms = f.outage_ms.max((first_new - killed) as f64 / MS as f64);
                assert_eq!(
                    lost_n,
                    0,
                    "accept-new-lineage: SETs acknowledged by the new primary were lost by the takeover: {ex:?}{}",
                    logs(dir)
                );
            }
            drop(spare);
        }
    }
    f.add("fresh_primary_acks_when_refused", refused_acks);
    f.add("refused_fresh_primary", refused_exit);
    f.add(
        "old_lineage_keys_kept_after_replace",
        old_keys_after_replace,
    );
    f.print("fresh_primary_after_restart");
}

/// The other order: both killed, the FRESH primary restarted first — with no spare to give it
/// a lease it must acknowledge nothing — and the spare only then, on its old image: the fresh
/// primary (another lineage) is refused, the spare takes the old image over after its
/// start-up grace, and every write acknowledged before both died is there.
#[test]
fn s4c_fresh_primary_first_then_the_spare() {
    let _serial = serial();
    let mut f = Figures::default();
    let mut early_acks = 0usize;
    for _trial in 0..trials(1) {
        let (t, _key) = workdir();
        let dir = t.path();
        let (sp, kp) = (free_port(), free_port());
        let args = kv_args(kp, true, "127.0.0.1");
        let first = image_with_acked_writes(dir, sp, kp);
        let mut fresh = start_primary(
            dir,
            "spool2",
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            "primary2.log",
            At::Loopback,
        );
        let fresh_pid = fresh.pid();
        // No spare yet: nothing the fresh primary answers may be +OK.
        let (acks, _) = set_each(lo(kp), None, "early", 5, Duration::from_secs(2));
        let by_fresh = acks.iter().filter(|a| a.pid == fresh_pid).count();
        early_acks += by_fresh;
        assert_eq!(
            by_fresh,
            0,
            "a fresh primary with no spare acknowledged writes{}",
            logs(dir)
        );
        let mut spare = start_spare(
            dir,
            &dir.join("spare"),
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            At::Loopback,
        );
        f.trials += 1;
        // Whatever the fresh primary does now (it is refused, or has already given up), the
        // spare must take over the old image with everything acknowledged.
        std::thread::sleep(Duration::from_millis(300));
        let still = fresh.0.try_wait().unwrap().is_none();
        drop(fresh);
        let took = wait_takeover(dir, Duration::from_secs(20)).unwrap_or_else(|| {
            panic!(
                "no takeover of the old image (fresh primary alive: {still}){}",
                logs(dir)
            )
        });
        wait_serving(lo(kp), None, spare.pid(), Duration::from_secs(20)).unwrap_or_else(|e| {
            panic!(
                "{e}; the resumed program: {:?}{}",
                spare.0.try_wait(),
                logs(dir)
            )
        });
        let (lost_n, _, ex) = lost(lo(kp), None, spare.pid(), &first);
        f.acked += first.len();
        f.lost += lost_n;
        f.windows += windows(&first, took);
        assert_eq!(
            lost_n,
            0,
            "writes acknowledged before both died were lost: {ex:?}{}",
            logs(dir)
        );
        drop(spare);
    }
    f.add("fresh_primary_acks_without_a_spare", early_acks);
    f.print("fresh_primary_first_then_spare");
}

// ---------------------------------------------------------------------------------------------
// 5. An older term after a newer one was admitted.

#[test]
fn s5_an_older_term_is_fenced_and_the_newer_primary_goes_on() {
    let _serial = serial();
    let mut f = Figures::default();
    let mut stale_acks = 0;
    for trial in 0..trials(1) {
        let (t, _key) = workdir();
        let dir = t.path();
        let (sp, kp, kp1) = (free_port(), free_port(), free_port());
        let args = kv_args(kp, true, "127.0.0.1");
        let spare = start_spare(
            dir,
            &dir.join("spare"),
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            At::Loopback,
        );
        let newer = start_primary(
            dir,
            "spool2",
            &format!("127.0.0.1:{sp}"),
            &args,
            &[("HOTSPARE_TERM", "2")],
            "primary.log",
            At::Loopback,
        );
        wait_serving(lo(kp), None, newer.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
        let load = Load::start(&[("new", lo(kp))], None, Duration::ZERO);
        assert!(
            wait_acks(&load, 50, Duration::from_secs(10)),
            "no load{}",
            logs(dir)
        );
        let before = load.acks().len();
        let older = start_primary(
            dir,
            "spool1",
            &format!("127.0.0.1:{sp}"),
            &kv_args(kp1, true, "127.0.0.1"),
            &[("HOTSPARE_TERM", "1")],
            "primary2.log",
            At::Loopback,
        );
        let older_pid = older.pid();
        let (acks, _) = set_each(lo(kp1), None, "old", 5, Duration::from_secs(3));
        stale_acks += acks.iter().filter(|a| a.pid == older_pid).count();
        assert!(
            acks.is_empty(),
            "trial {trial}: the stale-term primary acknowledged {} SETs{}",
            acks.len(),
            logs(dir)
        );
        assert!(
            wait_log(dir, "primary2.log", "FENCED", Duration::from_secs(5)),
            "the stale primary was not fenced{}",
            logs(dir)
        );
        assert!(
            wait_log(
                dir,
                "spare.log",
                "older than ours (2): fenced",
                Duration::from_secs(5)
            ),
            "{}",
            logs(dir)
        );
        drop(older);
        std::thread::sleep(Duration::from_millis(500));
        let after = load.acks();
        assert!(
            after.len() > before + 50,
            "the newer primary stopped: {before} → {}{}",
            after.len(),
            logs(dir)
        );
        assert!(
            !log(dir, "primary.log").contains("FENCED"),
            "the newer primary was fenced{}",
            logs(dir)
        );
        f.add_max("longest_gap_while_stale_connected_ms", longest_gap(&after));
        f.trials += 1;
        fail_over_and_check(
            dir,
            newer,
            spare.pid(),
            lo(kp),
            None,
            load,
            &mut f,
            "stale term",
        );
        drop(spare);
    }
    f.add("stale_primary_acks", stale_acks);
    f.print("stale_term");
}

// ---------------------------------------------------------------------------------------------
// 6. Full disk on the spare.

/// Fills the file system of `path` (appending to it) until ENOSPC; bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut n = 0u64;
    for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let chunk = vec![0xA5u8; size];
        for _ in 0..100_000 {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
    }
    let _ = f.sync_all();
    n
}

/// With the spare's disk hung, a SET on one connection cannot become durable; a GET of its key
/// on another must not show its value (Remus's rule: the read would reveal a write that a
/// failover can lose). 1 if it did while the SET went unacknowledged, else 0.
fn reveal_probe(addr: SocketAddr, trial: usize, variant: bool) -> usize {
    let key = format!("probe:{trial}:{variant}");
    let mut w = RespConn::connect(addr, Duration::from_secs(1), Duration::from_secs(3))
        .expect("connect the probe writer");
    w.send(&[b"SET", key.as_bytes(), b"revealed"])
        .expect("send the probe SET");
    std::thread::sleep(Duration::from_millis(50));
    let shown = RespConn::connect(addr, Duration::from_secs(1), Duration::from_secs(3))
        .ok()
        .and_then(|mut r| r.cmd(&["GET", &key]).ok())
        .is_some_and(|rep| matches!(rep, Reply::Bulk(Some(b)) if b == b"revealed"));
    let acked = matches!(w.read(), Ok(Reply::Simple(s)) if s == "OK");
    usize::from(shown && !acked)
}

/// What goes wrong with the spare's disk in [`disk_fault`].
#[derive(Clone, Copy, PartialEq)]
enum DiskFault {
    /// A small tmpfs filled until `ENOSPC`, and kept full.
    Full,
    /// An ext4 on a loop device, frozen: every write and `fsync` on it blocks (a disk that stops
    /// answering), reads go on.
    Hung,
}

/// The spare's file system, with the fault of [`DiskFault`] it can suffer.
enum SpareDisk {
    Full { _mount: Tmpfs, filler: PathBuf },
    Hung(LoopExt4),
}

impl SpareDisk {
    fn mount(fault: DiskFault, dir: &Path) -> SpareDisk {
        let fs = dir.join("fs");
        match fault {
            DiskFault::Full => SpareDisk::Full {
                _mount: Tmpfs::mount(&fs, "8m")
                    .unwrap_or_else(|e| panic!("FULL DISK SCENARIO CANNOT RUN: {e} (needs root)")),
                filler: fs.join("filler"),
            },
            DiskFault::Hung => SpareDisk::Hung(
                LoopExt4::mount(&dir.join("disk.img"), &fs, 64).unwrap_or_else(|e| {
                    panic!("HUNG DISK SCENARIO CANNOT RUN: {e} (needs root, losetup, mkfs.ext4)")
                }),
            ),
        }
    }

    /// Starts the fault; what it did.
    fn inject(&self) -> String {
        match self {
            SpareDisk::Full { filler, .. } => format!("{} bytes filled", fill(filler)),
            SpareDisk::Hung(d) => {
                d.freeze()
                    .unwrap_or_else(|e| panic!("HUNG DISK SCENARIO CANNOT RUN: {e}"));
                "frozen".into()
            }
        }
    }

    /// Keeps the fault up (whatever the spare freed is taken again).
    fn sustain(&self) {
        if let SpareDisk::Full { filler, .. } = self {
            fill(filler);
        }
    }

    /// Ends the fault.
    fn clear(&self) {
        match self {
            SpareDisk::Full { filler, .. } => std::fs::remove_file(filler).unwrap(),
            SpareDisk::Hung(d) => d.thaw().unwrap(),
        }
    }
}

/// Ends a disk fault when dropped. Declared after the spare, it is dropped before it: a process
/// blocked on a frozen file system cannot be reaped until the file system is thawed.
struct ClearOnDrop<'a>(&'a SpareDisk);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        if let SpareDisk::Hung(d) = self.0 {
            let _ = d.thaw();
        }
    }
}

/// The spare's disk fails (full, or hung) under an every-write load, for 1.5 s (2 s hung):
/// writes must fail rather than be acknowledged undurable; the primary must keep its lease (a
/// hung disk must not stop the spare's event loop from answering heartbeats: checked in the
/// primary's status file, sampled every 20 ms during the fault); replication must resume once the fault ends; and a primary killed
/// during the fault must be taken over, with every acknowledged write, only after it ends.
fn disk_fault(scenario: &str, fault: DiskFault) {
    let _serial = serial();
    let mut f = Figures::default();
    let (mut acked_during, mut failed_during, mut resume_ms) = (0usize, 0u64, 0f64);
    let (mut leased, mut unleased) = (0u64, 0u64);
    let mut unleased_logs = String::new();
    let mut revealed = 0usize;
    let mut killed_during = String::new();
    let hold = match fault {
        DiskFault::Full => Duration::from_millis(1500),
        DiskFault::Hung => Duration::from_millis(2000),
    };
    // A hung disk answers nothing: only the acknowledgement deadline fails the writes.
    let env: &[(&str, &str)] = match fault {
        DiskFault::Full => &[],
        DiskFault::Hung => &[("HOTSPARE_ACK_TIMEOUT_MS", "500")],
    };
    for trial in 0..trials(1) {
        // Second variant: the primary dies while the fault is still on.
        for kill_during in [false, true] {
            let (t, _key) = workdir();
            let dir = t.path();
            let disk = SpareDisk::mount(fault, dir);
            let fs = dir.join("fs");
            let (spare, primary, kp) = loopback_pair(dir, &fs.join("image"), env);
            let _clear = ClearOnDrop(&disk);
            let load = Load::start(&[("a", lo(kp))], None, Duration::from_millis(1));
            assert!(
                wait_acks(&load, 50, Duration::from_secs(10)),
                "no load{}",
                logs(dir)
            );
            let (errs0, fault_at) = {
                let t = load.tally.lock().unwrap();
                (t.errors + t.broken, now_ns())
            };
            let what = disk.inject();
            if fault == DiskFault::Hung {
                revealed += reveal_probe(lo(kp), trial, kill_during);
            }
            let t0 = Instant::now();
            while t0.elapsed() < hold {
                disk.sustain();
                // The primary's status file (rewritten every 100 ms) says whether it may serve:
                // it holds a lease only while the spare answers its heartbeats.
                // (The file from before the first connection may still be there: skip it.)
                let status = std::fs::read_to_string(dir.join("spool/status")).unwrap_or_default();
                if status.contains("\"sent_seq\":0,") {
                    // not rewritten since start-up yet
                } else if status.contains("\"fenced\":false") {
                    leased += 1;
                } else if status.contains("\"fenced\":true") {
                    unleased += 1;
                    if std::env::var_os("HOTSPARE_DEBUG_STATUS").is_some() {
                        eprintln!(
                            "{} ms into the fault: {}",
                            t0.elapsed().as_millis(),
                            status.trim()
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if unleased > 0 && unleased_logs.is_empty() {
                unleased_logs = logs(dir);
            }
            let (errs1, cleared_at) = {
                let t = load.tally.lock().unwrap();
                (t.errors + t.broken, now_ns())
            };
            let acks = load.acks();
            acked_during += acks
                .iter()
                .filter(|a| a.got > fault_at && a.sent < cleared_at)
                .count();
            failed_during += errs1 - errs0;
            assert!(
                errs1 > errs0,
                "trial {trial}: no write failed during the fault ({what}){}",
                logs(dir)
            );
            f.trials += 1;
            if kill_during {
                // The takeover may not happen before its term is on disk; once the disk is
                // back it must, with every acknowledged write.
                drop(primary);
                std::thread::sleep(Duration::from_millis(1000));
                disk.sustain();
                let early = wait_takeover(dir, Duration::ZERO).is_some();
                disk.clear();
                let freed = now_ns();
                let took = wait_takeover(dir, Duration::from_secs(20)).unwrap_or_else(|| {
                    panic!("no takeover after the disk fault ended{}", logs(dir))
                });
                let served = wait_serving(lo(kp), None, spare.pid(), Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
                let n = load.tally.lock().unwrap().acks.len();
                wait_acks(&load, n + 20, Duration::from_secs(5));
                let tally = load.stop();
                let (lost_n, _, ex) = lost(lo(kp), None, spare.pid(), &tally.acks);
                f.acked += tally.acks.len();
                f.lost += lost_n;
                f.windows += windows(&tally.acks, took);
                killed_during = format!(
                    "takeover during the fault: {early}; resumed {} ms after it ended",
                    (served.max(freed) - freed) / MS
                );
                if fault == DiskFault::Hung {
                    assert!(!early, "took over with its disk hung{}", logs(dir));
                }
                assert_eq!(
                    lost_n,
                    0,
                    "killed during the fault: acknowledged writes lost: {ex:?}{}",
                    logs(dir)
                );
            } else {
                disk.clear();
                // Replication resumes.
                let t1 = Instant::now();
                let resumed = loop {
                    if let Some(a) = load.acks().iter().find(|a| a.sent > cleared_at) {
                        break a.got;
                    }
                    assert!(
                        t1.elapsed() < Duration::from_secs(10),
                        "trial {trial}: no write acknowledged within 10 s of the fault's end{}",
                        logs(dir)
                    );
                    std::thread::sleep(Duration::from_millis(10));
                };
                resume_ms = resume_ms.max((resumed - cleared_at) as f64 / MS as f64);
                std::thread::sleep(Duration::from_millis(500));
                fail_over_and_check(
                    dir,
                    primary,
                    spare.pid(),
                    lo(kp),
                    None,
                    load,
                    &mut f,
                    scenario,
                );
            }
            f.add("fault", &what);
            drop(_clear);
            drop(spare);
            drop(disk);
        }
    }
    // Remus's rule: nothing a write did may be shown before the write is durable.
    assert_eq!(
        revealed, 0,
        "{scenario}: a GET showed a value whose SET was never acknowledged"
    );
    // The spare's event loop must go on answering heartbeats whatever its disk does.
    assert!(
        leased > 0 && unleased == 0,
        "{scenario}: the primary lost its lease during the fault ({leased} samples leased, {unleased} not){unleased_logs}"
    );
    f.add("acked_during_fault", acked_during);
    f.add("failed_during_fault", failed_during);
    f.add("lease_samples_held_during_fault", leased);
    if fault == DiskFault::Hung {
        f.add("unacknowledged_values_shown", revealed);
    }
    f.add("resumed_after_fault_ms", format!("{resume_ms:.0}"));
    f.add("primary_killed_during_fault", killed_during);
    f.print(scenario);
}

#[test]
fn s6_full_disk_on_the_spare_fails_writes_instead_of_losing_them() {
    disk_fault("full_disk", DiskFault::Full);
}

#[test]
fn s6b_hung_disk_on_the_spare_fails_writes_and_keeps_the_lease() {
    disk_fault("hung_disk", DiskFault::Hung);
}

// ---------------------------------------------------------------------------------------------
// 7. An authenticated peer sending malformed streams.

/// A peer that knows the key and speaks the protocol by hand.
struct Peer {
    s: TcpStream,
    sealer: Sealer,
    opener: Opener,
}

impl Peer {
    fn connect(port: u16) -> Peer {
        let mut s = TcpStream::connect(lo(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut nonce = [0u8; 32];
        nonce.iter_mut().for_each(|b| *b = fastrand::u8(..));
        let (mut hs, hello) = ClientHandshake::new(&Key::from_bytes(KEY.as_bytes()), nonce);
        s.write_all(&hello).unwrap();
        let mut buf = [0u8; 4096];
        let (proof, session, rest) = loop {
            let n = s.read(&mut buf).expect("handshake reply");
            assert!(n > 0, "the spare closed during the handshake");
            if let Some(done) = hs.feed(&buf[..n]).expect("the spare's proof") {
                break done;
            }
        };
        s.write_all(&proof).unwrap();
        let mut p = Peer {
            s,
            sealer: session.sealer,
            opener: session.opener,
        };
        p.opener.push(&rest);
        p
    }

    fn send(&mut self, term: u64, m: &Msg) -> bool {
        let mut out = Vec::new();
        self.sealer.seal(term, m, &mut out);
        self.s.write_all(&out).is_ok()
    }

    /// The next message; `None` when the spare closed the connection (or 3 s passed: `Err`).
    fn recv(&mut self) -> Result<Option<Msg>, String> {
        let mut buf = [0u8; 65536];
        loop {
            match self.opener.next_msg() {
                Ok(Some((_, m))) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(format!("bad message from the spare: {e}")),
            }
            match self.s.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => self.opener.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("no answer within 3 s".into());
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Messages until `want` matches one or the connection closes: what ended it.
    fn until(&mut self, want: impl Fn(&Msg) -> bool) -> Result<String, String> {
        loop {
            match self.recv()? {
                None => return Ok("closed".into()),
                Some(m) if want(&m) => return Ok(format!("{m:?}")),
                Some(_) => {}
            }
        }
    }
}

fn garbage(n: usize) -> Vec<u8> {
    (0..n).map(|_| fastrand::u8(..)).collect()
}

/// Every file of the image directory but the status file, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if rel.starts_with("status") {
                continue;
            }
            if p.is_dir() {
                out.insert(rel + "/", Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

fn inspect(image: &Path) -> String {
    let o = Command::new(util::lib("hotspare"))
        .arg("inspect")
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The spare's status file says its image is applied up to its durable tip.
fn wait_applied(image: &Path) {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(image.join("status")).unwrap_or_default();
        let num = |k: &str| {
            s.split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(a), Some(b)) = (num("seq"), num("applied")) {
            if a == b && a > 0 {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the restarted spare did not settle: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn s7_authenticated_peer_with_malformed_streams_is_refused_and_changes_nothing() {
    let _serial = serial();
    let mut f = Figures::default();
    let mut outcomes: Vec<String> = Vec::new();
    for trial in 0..trials(1) {
        let (t, _key) = workdir();
        let dir = t.path();
        let (sp, kp) = (free_port(), free_port());
        let args = kv_args(kp, true, "127.0.0.1");
        let image = dir.join("spare");
        let _first = image_with_acked_writes(dir, sp, kp);
        // The spare again, on the image, waiting 5 s for a primary before it may take over.
        let mut spare = start_spare(
            dir,
            &image,
            &format!("127.0.0.1:{sp}"),
            &args,
            &["--accept-new-lineage", "--startup-grace-ms", "5000"],
            At::Loopback,
        );
        let started = Instant::now();
        wait_applied(&image);
        let m = hotspare_image::ImageDir::open_read_only(&image)
            .expect("the image")
            .manifest()
            .expect("a manifest")
            .clone();
        let (lineage, exe_id, tip, term) = (m.lineage, m.exe_id, m.seq, m.term);
        let before = snapshot(&image);
        let before_inspect = inspect(&image);
        let hello = |l: [u8; 16]| Msg::Hello {
            exe_id,
            pid: 4242,
            lineage: l,
            ack: hotspare_proto::AckLevel::Fsynced,
        };
        let start = |seq, base_seq| Msg::StreamStart(StreamHeader { seq, base_seq });
        let chunk = |seq, n| Msg::Chunk {
            seq,
            bytes: garbage(n),
        };
        let end = |seq| Msg::EndStream { seq };
        let other_lineage: [u8; 16] = std::array::from_fn(|i| i as u8 + 1);
        // A well-formed stream that chains on the tip (one page of 0x5A), then damaged: one byte
        // of the page flipped (its CRC fails), or cut before its END.
        let mut b = m.clone();
        b.seq = tip + 1;
        b.base_seq = tip;
        b.ranges.iter_mut().for_each(|r| r.complete = false);
        let page = vec![0x5Au8; m.page_size as usize];
        let mut good = Vec::new();
        hotspare_image::write_stream(
            &mut good,
            &b,
            [hotspare_image::Run::Data(b.ranges[0].addr, &page)],
        )
        .unwrap();
        let at = good
            .windows(64)
            .position(|w| w.iter().all(|x| *x == 0x5A))
            .expect("the page in the stream");
        let mut flipped = good.clone();
        flipped[at + 100] ^= 0x01;
        let cut = good[..at + page.len()].to_vec();
        let bytes = |seq, v: Vec<u8>| Msg::Chunk { seq, bytes: v };
        let cases: Vec<(&str, [u8; 16], Vec<Msg>, bool)> = vec![
            (
                "chunk without start",
                lineage,
                vec![chunk(tip + 1, 4096)],
                false,
            ),
            ("end without start", lineage, vec![end(tip + 1)], false),
            (
                "chunk of another stream",
                lineage,
                vec![start(tip + 1, tip), chunk(tip + 2, 4096)],
                false,
            ),
            (
                "garbage incremental stream",
                lineage,
                vec![
                    start(tip + 1, tip),
                    chunk(tip + 1, 65536),
                    chunk(tip + 1, 65536),
                    end(tip + 1),
                ],
                true,
            ),
            (
                "garbage full stream",
                lineage,
                vec![start(tip + 1, 0), chunk(tip + 1, 100_000), end(tip + 1)],
                true,
            ),
            (
                "well-formed stream with a damaged page",
                lineage,
                vec![start(tip + 1, tip), bytes(tip + 1, flipped), end(tip + 1)],
                true,
            ),
            (
                "well-formed stream cut before its END",
                lineage,
                vec![start(tip + 1, tip), bytes(tip + 1, cut), end(tip + 1)],
                true,
            ),
            (
                "impossible header",
                lineage,
                vec![start(0, 0), chunk(0, 100), end(0)],
                true,
            ),
            (
                "stale sequence",
                lineage,
                vec![start(tip, 0), chunk(tip, 100), end(tip)],
                true,
            ),
            (
                "garbage full stream of another lineage",
                other_lineage,
                vec![start(1, 0), chunk(1, 100_000), end(1)],
                true,
            ),
            (
                "stream abandoned half-way",
                lineage,
                vec![start(tip + 1, tip), chunk(tip + 1, 65536)],
                false,
            ),
        ];
        for (name, l, msgs, expect_nack) in cases {
            let mut p = Peer::connect(sp);
            assert!(p.send(term, &hello(l)));
            let first = p.recv();
            assert!(
                matches!(first, Ok(Some(Msg::Status { .. }))),
                "{name}: the spare did not admit an authenticated peer: {first:?}{}",
                logs(dir)
            );
            for m in &msgs {
                if !p.send(term, m) {
                    break;
                }
            }
            let outcome = if name == "stream abandoned half-way" {
                drop(p);
                "disconnected by the peer".to_string()
            } else {
                let r = p.until(|m| {
                    matches!(
                        m,
                        Msg::Nack { .. }
                            | Msg::Ack { .. }
                            | Msg::Fenced { .. }
                            | Msg::Refused { .. }
                    )
                });
                let r = r.unwrap_or_else(|e| panic!("{name}: no refusal: {e}{}", logs(dir)));
                assert!(
                    !r.starts_with("Ack"),
                    "{name}: the spare ACKNOWLEDGED garbage: {r}{}",
                    logs(dir)
                );
                if expect_nack {
                    assert!(
                        r.starts_with("Nack"),
                        "{name}: expected a Nack, got {r}{}",
                        logs(dir)
                    );
                } else {
                    assert_eq!(
                        r,
                        "closed",
                        "{name}: expected the connection closed{}",
                        logs(dir)
                    );
                }
                r
            };
            std::thread::sleep(Duration::from_millis(150));
            assert!(
                spare.0.try_wait().unwrap().is_none()
                    && wait_takeover(dir, Duration::ZERO).is_none(),
                "{name}: the spare died or took over{}",
                logs(dir)
            );
            let now = snapshot(&image);
            let diff: Vec<&String> = before
                .keys()
                .chain(now.keys())
                .filter(|k| before.get(*k) != now.get(*k))
                .collect();
            assert!(
                diff.is_empty(),
                "{name}: the image directory changed: {diff:?}{}",
                logs(dir)
            );
            // The reason without the spool's path.
            let short: String = match outcome.split_once(".tmp: ") {
                Some((_, r)) => format!("Nack: {r}"),
                None => outcome.clone(),
            }
            .chars()
            .take(90)
            .collect();
            if trial == 0 {
                outcomes.push(format!("{name}: {short}"));
            }
        }
        assert_eq!(
            inspect(&image),
            before_inspect,
            "`hotspare inspect` differs"
        );
        // The real primary, afterwards: a fresh one (the spare accepts a new lineage), working…
        let primary = start_primary(
            dir,
            "spool2",
            &format!("127.0.0.1:{sp}"),
            &args,
            &[],
            "primary2.log",
            At::Loopback,
        );
        wait_serving(lo(kp), None, primary.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
        let load = Load::start(&[("real", lo(kp))], None, Duration::ZERO);
        assert!(
            wait_acks(&load, 50, Duration::from_secs(10)),
            "the real primary does not work{}",
            logs(dir)
        );
        // …and failing over correctly (after the spare's start-up grace).
        std::thread::sleep(Duration::from_millis(5200).saturating_sub(started.elapsed()));
        f.trials += 1;
        fail_over_and_check(
            dir,
            primary,
            spare.pid(),
            lo(kp),
            None,
            load,
            &mut f,
            "after malformed peers",
        );
        drop(spare);
    }
    f.add("refusals", outcomes.join("; "));
    f.print("malformed_authenticated_peer");
}

// ---------------------------------------------------------------------------------------------
// 8. Partitions between primary and spare, in network namespaces.

/// Partitions A (primary) from B (spare) with iptables in A while the client in C reaches both.
fn partition(scenario: &str, tag: &str, variants: &[(&str, &str)], every_write: bool) {
    let ipt = Command::new("iptables").arg("--version").output();
    assert!(
        ipt.is_ok_and(|o| o.status.success()),
        "IPTABLES UNAVAILABLE, the partition scenario cannot run: install iptables (.ci/run does)"
    );
    let mut f = Figures::default();
    let (mut per, mut failures): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for _trial in 0..trials(1) {
        for (i, (dirn, on_fence)) in variants.iter().enumerate() {
            let what = format!("partition {dirn} ({on_fence})");
            let lab = Lab::setup(&format!("{tag}{i}"), "10.79.0").unwrap_or_else(|e| panic!("{e}"));
            let c = Some(lab.fd("C"));
            let (t, _key) = workdir();
            let dir = t.path();
            let (a, b) = (lab.ip("A"), lab.ip("B"));
            let args = kv_args(9000, every_write, "0.0.0.0");
            let spare_addr = format!("{b}:7070");
            let spare = start_spare(
                dir,
                &dir.join("spare"),
                &spare_addr,
                &args,
                &[],
                At::Host(&lab, "B"),
            );
            let mut primary = start_primary(
                dir,
                "spool",
                &spare_addr,
                &args,
                &[("HOTSPARE_ON_FENCE", on_fence)],
                "primary.log",
                At::Host(&lab, "A"),
            );
            let (pa, pb): (SocketAddr, SocketAddr) = (
                format!("{a}:9000").parse().unwrap(),
                format!("{b}:9000").parse().unwrap(),
            );
            wait_serving(pa, c, primary.pid(), Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{what}: {e}{}", logs(dir)));
            // One writer to each host: the old primary's address and the spare's.
            // The keys the writer to B will use exist before the takeover (a key new to a
            // resumed server can crash it — see s9).
            let (pre, _) = set_each(pa, c, "to-b", 64, Duration::from_secs(20));
            assert_eq!(pre.len(), 64, "{what}: prefill{}", logs(dir));
            let load = Load::start(&[("to-a", pa), ("to-b", pb)], c, Duration::from_millis(1));
            assert!(
                wait_acks(&load, 50, Duration::from_secs(10)),
                "{what}: no load{}",
                logs(dir)
            );
            std::thread::sleep(Duration::from_millis(500));
            let cut = now_ns();
            let rules: Vec<Vec<&str>> = match *dirn {
                "in" => vec![vec!["iptables", "-A", "INPUT", "-s", &b, "-j", "DROP"]],
                "out" => vec![vec!["iptables", "-A", "OUTPUT", "-d", &b, "-j", "DROP"]],
                _ => vec![
                    vec!["iptables", "-A", "INPUT", "-s", &b, "-j", "DROP"],
                    vec!["iptables", "-A", "OUTPUT", "-d", &b, "-j", "DROP"],
                ],
            };
            for r in &rules {
                lab.exec("A", r).unwrap_or_else(|e| {
                    panic!("IPTABLES IN A NAMESPACE FAILED, the scenario cannot run: {e}")
                });
            }
            let took = wait_takeover(dir, Duration::from_secs(20)).unwrap_or_else(|| {
                panic!(
                    "{what}: no takeover within 20 s of the partition{}",
                    logs(dir)
                )
            });
            let first_new = wait_serving(pb, c, spare.pid(), Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{what}: {e}{}", logs(dir)));
            // Both addresses stay under load for a while, then the partition heals.
            std::thread::sleep(Duration::from_millis(1500));
            lab.exec("A", &["iptables", "-F"]).unwrap();
            std::thread::sleep(Duration::from_millis(700));
            let tally = load.stop();
            let code = primary.0.try_wait().unwrap().map(|s| s.code());
            let old_after = tally
                .acks
                .iter()
                .filter(|x| x.pid == primary.pid() && x.sent >= took)
                .count();
            let w = windows(&tally.acks, took);
            let (lost_n, _, ex) = lost(pb, c, spare.pid(), &tally.acks);
            let old_acks = tally.acks.iter().filter(|x| x.pid == primary.pid()).count();
            let new_acks = tally.acks.len() - old_acks;
            f.trials += 1;
            f.acked += tally.acks.len();
            f.lost += lost_n;
            f.windows += w;
            let outage = (first_new - cut) as f64 / MS as f64;
            f.outage_ms = f.outage_ms.max(outage);
            per.push(format!(
                "{dirn}/{on_fence}: takeover {} ms after the cut, outage {outage:.0} ms, acks old/new {old_acks}/{new_acks} ({old_after} by the old after the takeover), lost {lost_n}, old primary {}",
                (took - cut) / MS,
                match code {
                    None => "alive".to_string(),
                    Some(Some(c)) => format!("exited {c}"),
                    Some(None) => "killed".into(),
                }
            ));
            if every_write {
                assert_eq!(
                    lost_n,
                    0,
                    "{what}: acknowledged writes lost: {ex:?}{}",
                    logs(dir)
                );
            }
            failures.extend(
                (w > 0 || old_after > 0)
                    .then(|| format!("{what}: {w} double-serving windows; the old primary acknowledged {old_after} writes sent after the takeover began")),
            );
            drop(primary);
            drop(spare);
            drop(lab);
        }
    }
    f.add("variants", per.join("; "));
    f.print(scenario);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn s8_partition_between_primary_and_spare_in_namespaces() {
    let _serial = serial();
    // The direction cut in A (INPUT: A no longer hears B; OUTPUT: B no longer hears A), and
    // what the old primary does when it loses its lease (exit, or stay up and refuse).
    let variants = [
        ("in", "exit"),
        ("out", "exit"),
        ("both", "exit"),
        ("in", "report"),
        ("out", "report"),
        ("both", "report"),
    ];
    partition("partition_netns", "p", &variants, true);
}

/// The same partition with interval checkpoints and the default `on_fence = report`: the old
/// primary stays reachable by its clients after the spare took over.
#[test]
fn s8b_partition_interval_mode_old_primary_stops_acknowledging() {
    let _serial = serial();
    partition("partition_netns_interval", "q", &[("out", "report")], false);
}

// ---------------------------------------------------------------------------------------------
// 9. Found by this suite: a resumed server and keys it has never seen.

/// After a takeover, SETs of keys the image does not hold (into every one of the 64 shards,
/// most of them empty at the checkpoint) must be acknowledged by a live resumed program.
#[test]
fn s9_resumed_service_takes_keys_it_has_never_seen() {
    let _serial = serial();
    let mut f = Figures::default();
    let (mut new_acked, mut failed_attempts, mut outcome) = (0, 0, String::new());
    let mut failures = Vec::new();
    for trial in 0..trials(1) {
        let (t, _key) = workdir();
        let dir = t.path();
        let (mut spare, primary, kp) = loopback_pair(dir, &dir.join("spare"), &[]);
        let (before, _) = set_each(lo(kp), None, "old", 5, Duration::from_secs(10));
        assert_eq!(before.len(), 5, "{}", logs(dir));
        let killed = now_ns();
        drop(primary);
        wait_takeover(dir, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no takeover{}", logs(dir)));
        let first_new = wait_serving(lo(kp), None, spare.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}{}", logs(dir)));
        let (after, failed) = set_each(lo(kp), None, "new", 256, Duration::from_secs(10));
        let died = spare.0.try_wait().unwrap();
        f.trials += 1;
        f.acked += before.len() + after.len();
        f.outage_ms = f.outage_ms.max((first_new - killed) as f64 / MS as f64);
        new_acked += after.len();
        failed_attempts += failed;
        outcome = died.map_or("alive".to_string(), |s| format!("died: {s}"));
        if died.is_none() {
            let mut all = before.clone();
            all.extend(after.iter().cloned());
            let (lost_n, _, ex) = lost(lo(kp), None, spare.pid(), &all);
            f.lost += lost_n;
            if lost_n > 0 {
                failures.push(format!("trial {trial}: lost {ex:?}"));
            }
        }
        if died.is_some() || after.len() != 256 {
            failures.push(format!(
                "trial {trial}: after the takeover, {} of 256 SETs of new keys were acknowledged; the resumed program: {died:?}{}",
                after.len(),
                logs(dir)
            ));
        }
    }
    f.add("new_keys_acknowledged", new_acked);
    f.add("failed_attempts", failed_attempts);
    f.add("resumed_program", outcome);
    f.print("resumed_new_keys");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// 10. Pipelined output commit, killed at any moment.

/// Reads keys `name:0..64` of the writers `names` until stopped; every value seen (with the
/// moment it was read), from the process `pid` only.
fn reader(
    names: &[String],
    addr: SocketAddr,
    pid: i32,
    stop: &AtomicBool,
) -> Vec<(String, u64, u128)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    let Ok(mut c) = RespConn::connect(addr, Duration::from_millis(300), Duration::from_secs(2))
    else {
        return seen;
    };
    if c.server_pid().ok() != Some(pid) {
        return seen;
    }
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < WRITER_LIMIT {
        i += 1;
        let key = format!("{}:{}", names[i % names.len()], i % 64);
        match c.cmd(&["GET", &key]) {
            Ok(Reply::Bulk(Some(b))) => {
                if let Ok(v) = String::from_utf8_lossy(&b).parse::<u64>() {
                    seen.push((key, v, now_ns()));
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    seen
}

/// `hotspare-kv --cpt-every-write` with the library's pipelined output commit, at both
/// durability levels: 8 writers and 2 readers on one primary, which is killed at a moment drawn
/// at random (printed); the survivor must hold every acknowledged write and every value a
/// reader was shown (Remus's rule: a read reply that revealed a write must not outlive it).
#[test]
fn s10_pipelined_commit_killed_at_any_moment_loses_nothing() {
    let _serial = serial();
    let mut f = Figures::default();
    let (mut reads, mut stale_reads, mut kills) = (0usize, 0usize, Vec::new());
    for level in ["fsynced", "received"] {
        for trial in 0..trials(3) {
            let (t, _key) = workdir();
            let dir = t.path();
            let (spare, primary, kp) =
                loopback_pair(dir, &dir.join("spare"), &[("HOTSPARE_DURABILITY", level)]);
            let names: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
            let targets: Vec<(&str, SocketAddr)> =
                names.iter().map(|n| (n.as_str(), lo(kp))).collect();
            let load = Load::start(&targets, None, Duration::ZERO);
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..2)
                .map(|_| {
                    let (names, stop, pid) = (names.clone(), stop.clone(), primary.pid());
                    std::thread::spawn(move || reader(&names, lo(kp), pid, &stop))
                })
                .collect();
            assert!(
                wait_acks(&load, 100, Duration::from_secs(10)),
                "no load{}",
                logs(dir)
            );
            // A moment drawn at random: 0–499 ms into the load.
            let delay = (now_ns() / 1_000 % 500) as u64;
            kills.push(format!("{level}/{trial}: {delay} ms"));
            std::thread::sleep(Duration::from_millis(delay));
            fail_over_and_check(
                dir,
                primary,
                spare.pid(),
                lo(kp),
                None,
                load,
                &mut f,
                &format!("pipelined commit ({level}, killed after {delay} ms)"),
            );
            stop.store(true, Ordering::SeqCst);
            let seen: Vec<_> = readers
                .into_iter()
                .flat_map(|r| r.join().expect("reader"))
                .collect();
            reads += seen.len();
            // What the readers saw, as acknowledgements: the survivor must hold each value or
            // a later one.
            let as_acks: Vec<Ack> = seen
                .iter()
                .map(|(key, val, at)| Ack {
                    key: key.clone(),
                    val: *val,
                    pid: 0,
                    sent: *at,
                    got: *at,
                })
                .collect();
            let (stale, _, ex) = lost(lo(kp), None, spare.pid(), &as_acks);
            stale_reads += stale;
            assert_eq!(
                stale,
                0,
                "{level}: values shown to readers are gone after the failover: {ex:?}{}",
                logs(dir)
            );
            f.trials += 1;
            drop(spare);
        }
    }
    f.add("values_read", reads);
    f.add("read_values_lost", stale_reads);
    f.add("kill_moments", kills.join(", "));
    f.print("pipelined_commit_kill");
}
