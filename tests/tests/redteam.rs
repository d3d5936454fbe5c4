//! Red-team scenarios against the real drivers (the `mio` event loops the simulator does not
//! run): `hotspare-resume` and a primary `hotspare-kv` on loopback, every process killed by pid
//! when its test ends, every wait bounded. A test that pins a defect is `#[ignore = "BUG: …"]`
//! and checks the good side of its setup first, so it cannot fail for a broken setup.
//!
//!     cargo build --release --workspace
//!     cargo test --release -p hotspare-tests --test redteam -- --include-ignored --test-threads=1

mod util;

use hotspare_proto::codec::{ClientHandshake, Key, Sealer};
use hotspare_proto::Msg;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use util::{free_port, Killed, Reply, RespConn};

const KEY: &str = "red team shared secret, mode 0600";

/// One scenario at a time (they measure timing on a small machine).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

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

fn workdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    t
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

/// `hotspare-resume` on `127.0.0.1:port`, image in `DIR/image`; its hook writes
/// `DIR/takeover` (so a takeover is seen whatever happens to the logs).
/// `REDTEAM_HOTSPARE_RESUME` may name another build of the daemon (e.g. of an older commit).
fn spare_cmd(dir: &Path, port: u16, kv_port: u16) -> Command {
    let bin = std::env::var_os("REDTEAM_HOTSPARE_RESUME")
        .map_or_else(|| util::lib("hotspare-resume"), PathBuf::from);
    let mut c = Command::new(bin);
    c.args(["--listen", &format!("127.0.0.1:{port}"), "--key-file"])
        .arg(dir.join("key"))
        .arg("--image-dir")
        .arg(dir.join("image"))
        .args([
            "--missed",
            "10",
            "--on-takeover",
            &format!("touch {}/takeover", dir.display()),
        ])
        .arg("--exec")
        .arg(util::lib("hotspare-kv"))
        .args(kv_args(kv_port))
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env_remove("HOTSPARE_SPARE")
        .stdout(Stdio::null());
    c
}

fn kv_args(port: u16) -> Vec<String> {
    vec![
        "--bind".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--cpt-every-write".into(),
    ]
}

/// A primary `hotspare-kv` (every write checkpointed) streaming to the spare on `spare_port`,
/// spool in `DIR/spool`, log in `DIR/primary.log`.
fn start_primary(dir: &Path, spare_port: u16, kv_port: u16) -> Killed {
    start_primary_in(dir, "spool", spare_port, kv_port)
}

/// [`start_primary`] with its spool in `DIR/<spool>`.
fn start_primary_in(dir: &Path, spool: &str, spare_port: u16, kv_port: u16) -> Killed {
    let mut c = Command::new(util::lib("hotspare-kv"));
    c.args(kv_args(kv_port))
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("HOTSPARE_IMAGE_DIR", dir.join(spool))
        .env("HOTSPARE_SPARE", format!("127.0.0.1:{spare_port}"))
        .env("HOTSPARE_KEY_FILE", dir.join("key"))
        .env("HOTSPARE_LEASE_MS", "80")
        .env_remove("HOTSPARE_RESUME")
        .env_remove("HOTSPARE_TERM")
        .env_remove("HOTSPARE_ON_FENCE")
        .stdout(Stdio::null())
        .stderr(log_file(dir, "primary.log"));
    Killed(c.spawn().expect("start hotspare-kv"))
}

/// One SET on the primary: its reply (or the error reaching it).
fn set(kv_port: u16, k: &str) -> Result<Reply, String> {
    RespConn::connect(
        lo(kv_port),
        Duration::from_millis(500),
        Duration::from_secs(3),
    )
    .and_then(|mut c| c.cmd(&["SET", k, "v"]))
    .map_err(|e| e.to_string())
}

/// Waits (bounded) until a SET on the primary is acknowledged.
fn wait_set_ok(kv_port: u16, within: Duration) -> Result<(), String> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < within {
        match set(kv_port, "probe") {
            Ok(Reply::Simple(s)) if s == "OK" => return Ok(()),
            Ok(r) => last = format!("{r:?}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(last)
}

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// 1. Sixteen silent, unauthenticated connections hold every handshake slot.

/// A peer that connects and sends nothing, reconnecting as soon as the spare drops it.
fn squatter(port: u16, stop: Arc<AtomicBool>) {
    let t = Instant::now();
    while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
        let Ok(mut s) = TcpStream::connect(lo(port)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut b = [0u8; 64];
        while !stop.load(Ordering::SeqCst) {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }
}

/// An attacker without the key opens 16 connections that send nothing and reopens each one
/// the moment the spare drops it. Before the fix the `MAX_HANDSHAKES` (16) slots were then
/// always taken and every other connection was refused at `accept` — the real primary's
/// included: it never got a lease and served nothing. Now a full table makes room by dropping
/// the handshake that has shown least (no valid hello yet, oldest first), and the primary,
/// whose hello comes with its connect, gets through.
#[test]
fn r1_handshake_slots_held_by_unauthenticated_peers_lock_out_the_primary() {
    let _serial = serial();
    let t = workdir();
    let dir = t.path();
    let (sp, kp) = (free_port(), free_port());
    let _spare = Killed(
        spare_cmd(dir, sp, free_port())
            .stderr(log_file(dir, "spare.log"))
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_log(dir, "spare.log", "listening on", Duration::from_secs(10)),
        "spare did not start: {}",
        log(dir, "spare.log")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || squatter(sp, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut primary = start_primary(dir, sp, kp);
    // Under the attack: 6 s (three handshake deadlines) for the primary to get a lease.
    let under_attack = wait_set_ok(kp, Duration::from_secs(6));
    let exited = primary.0.try_wait().unwrap().map(|s| s.to_string());
    drop(primary);
    let refused = log(dir, "spare.log")
        .matches("handshakes already in progress")
        .count();
    stop.store(true, Ordering::SeqCst);
    for th in threads {
        th.join().unwrap();
    }
    // (The `refused` count says how hard the slots were contended; the fix makes room by
    // dropping the handshake that has shown least, so the primary's completes.)
    assert!(
        under_attack.is_ok(),
        "while 16 unauthenticated peers sat in the handshake slots the primary never got a lease \
         (last SET answer: {under_attack:?}; the primary exited: {exited:?}); the spare refused \
         {refused} connections as 'handshakes already in progress', the primary's among them"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The spare's event loop writes its log lines itself: a stderr that does not drain stops it.

/// The spare's stderr is a pipe whose reader stopped reading (a stuck log shipper, a paused
/// `| tee`, journald under pressure). Every unauthenticated connection costs the spare one
/// log line written with `eprintln!` *on the event loop* ("refused connection from …"), so a
/// few hundred junk connections fill the 64 KiB pipe and the next line blocks the loop in
/// `write(2)`: no heartbeat is answered, the real primary loses its lease and serves nothing,
/// and the spare (blocked too) never takes over — the service is down until the pipe drains,
/// caused by peers that know no key.
#[test]
fn r2_log_lines_on_the_event_loop_let_junk_connections_stall_the_spare() {
    let _serial = serial();
    let t = workdir();
    let dir = t.path();
    let (sp, kp) = (free_port(), free_port());
    let mut child = spare_cmd(dir, sp, free_port())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let _spare = Killed(child);
    // Read the spare's log until the primary is admitted, then stop reading (keep the pipe).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(err);
        let mut line = String::new();
        let mut seen = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            if line.contains("admitted") {
                break;
            }
            line.clear();
        }
        let _ = tx.send((r, seen));
    });
    util::wait_port(sp);
    let _primary = start_primary(dir, sp, kp);
    let (_held_pipe, seen) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the spare admitted the primary");
    // Good side: the primary serves.
    wait_set_ok(kp, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("setup: no lease: {e}\n{seen}\n{}", log(dir, "primary.log")));
    // Junk connections, one log line each, until the spare stops accepting (bounded).
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < 4000 && t0.elapsed() < Duration::from_secs(20) {
        match TcpStream::connect_timeout(&lo(sp), Duration::from_millis(200)) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
                sent += 1;
            }
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(1000));
    let after = set(kp, "after-junk");
    let lost_lease = log(dir, "primary.log").contains("no answer from spare");
    assert!(
        matches!(&after, Ok(Reply::Simple(s)) if s == "OK"),
        "after {sent} junk connections the primary no longer serves: {after:?} (lease lost: \
         {lost_lease}; takeover: {}); primary log:\n{}",
        dir.join("takeover").exists(),
        log(dir, "primary.log")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The spare's per-connection output buffer has no bound.

/// An authenticated peer (admitted as primary on an empty image) sends heartbeats and never
/// reads. Each one is answered into `Conn.out` (`spare/mod.rs`: `sealer.seal(…, &mut c.out)`;
/// `flush` stops at `WouldBlock` and keeps the rest), which grows without limit once the
/// socket buffers are full: the spare's memory is the peer's to fill (about 50 bytes per
/// 50-byte heartbeat; here a million of them).
#[test]
fn r3_a_peer_that_never_reads_grows_the_spares_memory_without_bound() {
    let _serial = serial();
    let t = workdir();
    let dir = t.path();
    let sp = free_port();
    let mut spare = Killed(
        spare_cmd(dir, sp, free_port())
            .stderr(log_file(dir, "spare.log"))
            .spawn()
            .unwrap(),
    );
    util::wait_port(sp);
    let mut s = TcpStream::connect(lo(sp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let (mut hs, hello) = ClientHandshake::new(&Key::from_bytes(KEY.as_bytes()), [9; 32]);
    s.write_all(&hello).unwrap();
    let mut buf = [0u8; 4096];
    let (proof, session, _rest) = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed during the handshake");
        if let Some(done) = hs.feed(&buf[..n]).unwrap() {
            break done;
        }
    };
    s.write_all(&proof).unwrap();
    let mut sealer: Sealer = session.sealer;
    let mut out = Vec::new();
    sealer.seal(
        1,
        &Msg::Hello {
            exe_id: [1; 32],
            pid: 1,
            lineage: [1; 16],
            ack: hotspare_proto::AckLevel::Fsynced,
        },
        &mut out,
    );
    s.write_all(&out).unwrap();
    assert!(
        wait_log(dir, "spare.log", "admitted", Duration::from_secs(5)),
        "setup: the peer was not admitted: {}",
        log(dir, "spare.log")
    );
    std::thread::sleep(Duration::from_millis(200));
    let before = vm_rss_kib(spare.pid());
    let mut id = 0u64;
    let mut dropped = None;
    for _ in 0..100 {
        out.clear();
        for _ in 0..10_000 {
            id += 1;
            sealer.seal(1, &Msg::Heartbeat { id, seq: 0 }, &mut out);
        }
        if let Err(e) = s.write_all(&out) {
            // The spare dropped us: it bounded what it buffers for a peer that does not read.
            dropped = Some(e.to_string());
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_rss_kib(spare.pid());
    let grown = after.saturating_sub(before);
    assert!(
        spare.0.try_wait().unwrap().is_none(),
        "the spare died: {}",
        log(dir, "spare.log")
    );
    assert!(
        dropped.is_some() || grown < 16 << 10,
        "the spare's RSS grew by {grown} KiB ({before} → {after}) for {id} heartbeats whose \
         answers the peer never read, and it kept the connection"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The primary's link thread does file I/O between heartbeats.

/// The primary's link thread rewrites its status file itself (`sender.rs`, `write_status`,
/// from `pump`, every 100 ms: `open(O_CREAT|O_TRUNC)`, `write`, `rename` in the spool
/// directory — the directory the writer thread `fsync`s), unlike the spare, which moved the
/// same work to a thread of its own because "file creation can block behind fsyncs". An
/// `open` that blocks — stood in for here, deterministically, by a FIFO at `status.tmp` —
/// stops the heartbeats of a live, healthy primary: the spare takes it over.
#[test]
fn r4_a_blocking_status_file_write_on_the_link_thread_gets_a_live_primary_taken_over() {
    let _serial = serial();
    let t = workdir();
    let dir = t.path();
    let (sp, kp) = (free_port(), free_port());
    let _spare = Killed(
        spare_cmd(dir, sp, free_port())
            .stderr(log_file(dir, "spare.log"))
            .spawn()
            .unwrap(),
    );
    util::wait_port(sp);
    let _primary = start_primary(dir, sp, kp);
    wait_set_ok(kp, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("setup: no lease: {e}\n{}", log(dir, "primary.log")));
    // A few acknowledged writes: the spare holds an image it could take over.
    for i in 0..5 {
        assert!(matches!(set(kp, &format!("k{i}")), Ok(Reply::Simple(_))));
    }
    // Good side: a live primary is not taken over while nothing blocks it (1 s).
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !dir.join("takeover").exists(),
        "setup: takeover of an undisturbed primary: {}",
        log(dir, "spare.log")
    );
    // Make the link thread's next status-file open block: a FIFO at status.tmp, placed right
    // after one of its renames (bounded).
    let tmp: PathBuf = dir.join("spool").join("status.tmp");
    let c = std::ffi::CString::new(tmp.to_str().unwrap()).unwrap();
    let t0 = Instant::now();
    let mut placed = false;
    while t0.elapsed() < Duration::from_secs(5) {
        // SAFETY: mkfifo on a path we own.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
            placed = true;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(placed, "could not place the FIFO");
    let taken_over = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        dir.join("takeover").exists()
    });
    // Unblock the primary's link thread (a reader opens the FIFO) before the processes die.
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&tmp);
    assert!(
        !taken_over,
        "the primary's link thread blocked in its status file's open(): heartbeats stopped and \
         the live primary was taken over; spare log:\n{}",
        log(dir, "spare.log")
    );
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}
