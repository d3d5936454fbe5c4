//! What a resumed `hotspare-kv` inherits from the process it replaced (docs/library.md, "What a
//! resumed process inherits"): heap memory that only the dead process's threads referred to,
//! allocated in the image and never freed. Measured with `INFO hotspare`'s
//! `hotspare_heap_in_use_bytes` (`GlobalHeap::check()`'s `in_use_bytes`) after a `FLUSHALL`,
//! which frees every key: what is left above a freshly started server's figure is inherited.
//!
//! A fresh server (no spare) gives the baseline, and shows that loading N keys and flushing them
//! again leaves nothing behind without a failover. Then a primary streams to `hotspare-resume`;
//! N keys are loaded through MSET, and the primary is SIGKILLed while a client keeps writing;
//! the spare takes over, holds every key, flushes them, and is measured (1 failover). N keys
//! again, the survivor SIGKILLed while a client writes, resumed from its own image
//! (`HOTSPARE_RESUME`), flushed and measured again (2 failovers: it accumulates). Every figure
//! must be below 16 MiB — less than the N keys occupy (asserted), so a leak that grows with the
//! key count fails the test. Run with `--nocapture` for the figures (`INHERITED …` lines).

#[path = "../../../tests/tests/util/mod.rs"]
mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::{free_port, wait_port, Killed, Reply, RespConn};

const KV: &str = env!("CARGO_BIN_EXE_hotspare-kv");
/// Keys loaded before each kill.
const N: usize = 200_000;
/// Keys per MSET.
const BATCH: usize = 1000;
/// What a resumed server may inherit, failovers accumulated.
const BOUND: u64 = 16 << 20;
const HEAP: &str = "512M";

fn conn(port: u16) -> RespConn {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    RespConn::connect(addr, Duration::from_secs(5), Duration::from_secs(30)).expect("connect")
}

/// A numeric field of `INFO hotspare`.
fn info(c: &mut RespConn, field: &str) -> u64 {
    let text = c.cmd(&["INFO", "hotspare"]).unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in INFO hotspare:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn value(i: usize) -> String {
    format!("{:056}", i.wrapping_mul(2_654_435_761) % 1_000_000_007)
}

/// Loads keys `load:<i>` for i in 0..N, BATCH per MSET, each acknowledged.
fn load(c: &mut RespConn) {
    let (keys, values): (Vec<String>, Vec<String>) =
        (0..N).map(|i| (format!("load:{i:08}"), value(i))).unzip();
    for b in (0..N).step_by(BATCH) {
        let mut args = vec!["MSET"];
        for i in b..(b + BATCH).min(N) {
            args.push(&keys[i]);
            args.push(&values[i]);
        }
        assert_eq!(
            c.cmd(&args).unwrap(),
            Reply::Simple("OK".into()),
            "MSET at {b}"
        );
    }
}

/// A client writing batches of 100 keys until its server dies (or `stop`), counting the
/// batches acknowledged in `done`.
fn writer(port: u16, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut c = conn(port);
        let vals: Vec<String> = (0..100).map(value).collect();
        while !stop.load(Ordering::Relaxed) {
            let n = done.load(Ordering::Relaxed);
            let keys: Vec<String> = (0..100).map(|k| format!("live:{n}:{k}")).collect();
            let mut args = vec!["MSET"];
            for (k, v) in keys.iter().zip(&vals) {
                args.push(k);
                args.push(v);
            }
            match c.cmd(&args) {
                Ok(Reply::Simple(_)) => done.fetch_add(1, Ordering::Relaxed),
                _ => break,
            };
        }
    })
}

/// Kills `victim` while a client writes, once 20 of its batches were acknowledged; the batches
/// acknowledged before the kill.
fn kill_while_writing(port: u16, victim: Killed) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let w = writer(port, stop.clone(), done.clone());
    let t0 = Instant::now();
    while done.load(Ordering::Relaxed) < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the writer got only {} batches acknowledged in 30 s",
            done.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(victim); // SIGKILL, reaped
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    done.load(Ordering::Relaxed)
}

/// Waits until the server on `port` answers with the keys loaded; a connection to it.
fn wait_takeover(port: u16, log: &Path) -> RespConn {
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = RespConn::connect(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
            Duration::from_secs(30),
        ) {
            let want = Reply::Bulk(Some(value(N - 1).into_bytes()));
            if c.cmd(&["GET", &format!("load:{:08}", N - 1)]).ok() == Some(want) {
                return c;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no takeover on port {port}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// FLUSHALL, then the heap in use.
fn flushed(c: &mut RespConn) -> u64 {
    assert_eq!(c.cmd(&["FLUSHALL"]).unwrap(), Reply::Simple("OK".into()));
    assert_eq!(c.cmd(&["DBSIZE"]).unwrap(), Reply::Int(0));
    info(c, "hotspare_heap_in_use_bytes")
}

fn log(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(name)).unwrap())
}

#[test]
fn a_resumed_server_inherits_a_bounded_amount_of_memory() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let kport = free_port();
    let port_arg = kport.to_string();
    let kv_args = ["--port", port_arg.as_str(), "--cpt-every-write"];

    // A fresh server: empty, then N keys, then flushed.
    let fresh = Command::new(KV)
        .args(kv_args)
        .env("HOTSPARE_HEAP_SIZE", HEAP)
        .env("HOTSPARE_IMAGE_DIR", dir.join("fresh"))
        .stderr(log(dir, "fresh.log"))
        .spawn()
        .unwrap();
    let fresh = Killed(fresh);
    wait_port(kport);
    let mut c = conn(kport);
    let empty = flushed(&mut c);
    load(&mut c);
    let loaded = info(&mut c, "hotspare_heap_in_use_bytes");
    let fresh_flushed = flushed(&mut c);
    drop(c);
    drop(fresh);

    // A primary streaming to a spare; N keys; killed while a client writes.
    let key = dir.join("key");
    std::fs::write(&key, "kv inherited-memory test key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sport = free_port();
    let spare = util::spare_command(sport, &key, &dir.join("spare"))
        .args(["--missed", "10", "--exec", KV])
        .args(kv_args)
        .env("HOTSPARE_HEAP_SIZE", HEAP)
        .stdout(Stdio::null())
        .stderr(log(dir, "spare.log"))
        .spawn()
        .unwrap();
    let spare = Killed(spare);
    wait_port(sport);
    let primary = util::primary_command(KV, sport, &key, &dir.join("spool"), HEAP)
        .args(kv_args)
        .env("HOTSPARE_LEASE_MS", "80")
        .stderr(log(dir, "primary.log"))
        .spawn()
        .unwrap();
    let primary = Killed(primary);
    wait_port(kport);
    load(&mut conn(kport));
    let batches1 = kill_while_writing(kport, primary);
    // Failover 1: the spare takes over on the same port, with every key.
    let mut c = wait_takeover(kport, &dir.join("spare.log"));
    assert_eq!(info(&mut c, "hotspare_resumed"), 1);
    let after1 = flushed(&mut c);

    // N keys again; the survivor (the spare's process, which became the server) killed while a
    // client writes, and resumed from its own image.
    load(&mut c);
    drop(c);
    let batches2 = kill_while_writing(kport, spare);
    let resumed = Command::new(KV)
        .args(kv_args)
        .env("HOTSPARE_HEAP_SIZE", HEAP)
        .env("HOTSPARE_RESUME", dir.join("spare"))
        .env("HOTSPARE_IMAGE_DIR", dir.join("spare"))
        .stderr(log(dir, "resumed.log"))
        .spawn()
        .unwrap();
    let resumed = Killed(resumed);
    let mut c = wait_takeover(kport, &dir.join("resumed.log"));
    assert_eq!(info(&mut c, "hotspare_resumed"), 1);
    let after2 = flushed(&mut c);
    drop(c);
    drop(resumed);

    let inherited1 = after1.saturating_sub(empty);
    let inherited2 = after2.saturating_sub(empty);
    println!(
        "INHERITED N={N} empty={empty} loaded={loaded} fresh_flushed={fresh_flushed} \
         after1={after1} after2={after2} inherited1={inherited1} inherited2={inherited2} \
         batches_at_kill={batches1},{batches2}"
    );
    assert!(
        inherited1 < BOUND,
        "after 1 failover the server inherited {inherited1} bytes (bound {BOUND})"
    );
    assert!(
        inherited2 < BOUND,
        "after 2 failovers the server inherited {inherited2} bytes (bound {BOUND})"
    );
    // The bound means something: the N keys took more than it, so inheriting them (or any
    // share that grows with N) would fail above; and without a failover a flush leaves
    // nothing behind, so the figures above are the failovers' alone.
    assert!(
        loaded - empty > BOUND,
        "{N} keys took only {} bytes: raise N",
        loaded - empty
    );
    assert!(
        fresh_flushed.abs_diff(empty) < 1 << 20,
        "a fresh server kept {} bytes after FLUSHALL ({empty} before loading)",
        fresh_flushed.abs_diff(empty)
    );
}
