//! Primary and spare as separate processes on loopback. The primary (`kvmodel`) streams every
//! checkpoint to `hotspare-resume`; it is SIGKILLed at random moments under load; the spare
//! detects it, takes over, and the resumed program must hold a complete checkpoint's state with
//! every write acknowledged before it. Plus: wrong key, garbage, stale term, spare restart.

mod util;

use hotspare_tests::model;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use util::{free_port, spawn_lines, Killed};

const KVMODEL: &str = env!("CARGO_BIN_EXE_kvmodel");
/// `hotspare-resume`, built by `cargo build --workspace` (scripts/test.sh runs it first).
fn spare_bin() -> PathBuf {
    util::lib("hotspare-resume")
}

fn key(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The spare daemon; its stdout is the resumed program's after takeover.
fn spare(dir: &Path, port: u16, key: &Path, seed: u64, k: u64) -> (Killed, Receiver<String>) {
    let mut c = Command::new(spare_bin());
    c.args(["--listen", &format!("127.0.0.1:{port}"), "--key-file"])
        .arg(key)
        .arg("--image-dir")
        .arg(dir.join("spare"))
        // 10 missed heartbeats (100 ms) rather than the default 5: a noisy CI machine must not
        // trigger a takeover while the primary is alive (the demo test runs the defaults).
        .args(["--missed", "10"])
        .args([
            "--exec",
            KVMODEL,
            &seed.to_string(),
            "1000000",
            &k.to_string(),
        ])
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("KVMODEL_EXIT_ON_RESUME", "1")
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("spare.log")).unwrap(),
        ));
    let s = spawn_lines(&mut c);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "spare did not start listening"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    s
}

fn primary(
    dir: &Path,
    port: u16,
    key: &Path,
    seed: u64,
    k: u64,
    term: Option<&str>,
) -> (Killed, Receiver<String>) {
    let mut c = Command::new(KVMODEL);
    c.args([seed.to_string(), "1000000".into(), k.to_string()])
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("HOTSPARE_IMAGE_DIR", dir.join("spool"))
        .env("HOTSPARE_SPARE", format!("127.0.0.1:{port}"))
        .env("HOTSPARE_KEY_FILE", key)
        .env("HOTSPARE_LEASE_MS", "80")
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("primary.log")).unwrap(),
        ));
    if let Some(t) = term {
        c.env("HOTSPARE_TERM", t);
    }
    spawn_lines(&mut c)
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// Waits (up to 10 s) until a log holds `needle`: log lines of another process may lag behind
/// what this test already observed.
fn wait_log(dir: &Path, name: &str, needle: &str) -> String {
    let t = Instant::now();
    loop {
        let text = log(dir, name);
        if text.contains(needle) || t.elapsed() > Duration::from_secs(10) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the primary's lines until `count` more checkpoints were acknowledged and the last one
/// covers at least `min_ops` operations; returns that operation count and whether any
/// checkpoint failed meanwhile.
fn acked(rx: &Receiver<String>, count: usize, min_ops: u64) -> (u64, bool) {
    let (mut last, mut seen, mut failed) = (0, 0, false);
    while seen < count || last < min_ops {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the primary stalled");
        failed |= l.starts_with("CPTFAIL");
        if let Some(o) = cpt_ops(&l) {
            last = o;
            seen += 1;
        }
    }
    (last, failed)
}

fn cpt_ops(line: &str) -> Option<u64> {
    line.strip_prefix("CPT ")
        .and_then(|r| r.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
}

/// Waits for the resumed program's RESUMED line and checks it against the model.
fn check_resumed(rx: &Receiver<String>, seed: u64, k: u64, last_acked: u64, dir: &Path) -> u64 {
    let line = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "no takeover within 20 s\nspare log:\n{}",
                    log(dir, "spare.log")
                )
            });
        if l.starts_with("RESUMED ") {
            break l;
        }
    };
    let f: Vec<&str> = line.split(' ').collect();
    let ops: u64 = f[1].parse().unwrap();
    assert!(
        ops.is_multiple_of(k),
        "resumed at {ops} ops, not a checkpoint boundary"
    );
    assert!(
        ops >= last_acked,
        "resumed {ops} ops but {last_acked} were acknowledged\n{}",
        log(dir, "spare.log")
    );
    assert_eq!(
        f[2].parse::<u32>().unwrap(),
        model::digest_after(seed, ops),
        "state differs from the model"
    );
    ops
}

#[test]
fn kill_the_primary_at_random_moments_the_spare_takes_over() {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut resumed = Vec::new();
    for _ in 0..50 {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let key = key(dir, "key", "correct horse battery staple");
        let port = free_port();
        let (seed, k) = (rng.u64(..), rng.u64(1..30));
        let (_spare, spare_out) = spare(dir, port, &key, seed, k);
        let (p, rx) = primary(dir, port, &key, seed, k, None);
        let mut last = 0;
        // Wait for the first acknowledged checkpoint, then kill at a random moment.
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no first checkpoint");
        last = cpt_ops(&first).unwrap_or(last);
        let until = Instant::now() + Duration::from_micros(rng.u64(0..40_000));
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) => last = cpt_ops(&l).unwrap_or(last),
                Err(_) => break,
            }
        }
        drop(p); // SIGKILL
        for l in rx.try_iter() {
            last = cpt_ops(&l).unwrap_or(last);
        }
        resumed.push(check_resumed(&spare_out, seed, k, last, dir));
    }
    eprintln!("50 failovers, resumed ops: {resumed:?}");
}

#[test]
fn wrong_key_and_garbage_are_refused_and_the_image_is_untouched() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let good = key(dir, "key", "correct horse battery staple");
    let bad = key(dir, "bad", "incorrect horse battery staple");
    let port = free_port();
    let (_spare, spare_out) = spare(dir, port, &good, 3, 5);
    // Garbage bytes, then a connection that goes silent half-way.
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    drop(g);
    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(b"HSRP\x01").unwrap();
    drop(g);
    // A primary with the wrong key.
    let (p, rx) = primary(dir, port, &bad, 3, 5, None);
    let l = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        l.starts_with("CPTFAIL"),
        "a primary with the wrong key got: {l}"
    );
    drop(p);
    let slog = wait_log(dir, "spare.log", "authentication failed");
    assert!(slog.contains("not a Hot Spare peer"), "{slog}");
    assert!(slog.contains("authentication failed"), "{slog}");
    assert!(l.contains("authentication failed"), "{l}");
    assert!(
        !dir.join("spare/manifest").exists(),
        "the image was touched"
    );
    // The spare still works for the right primary.
    let (p, rx) = primary(dir, port, &good, 3, 5, None);
    let (last, _) = acked(&rx, 1, 50);
    drop(p);
    check_resumed(&spare_out, 3, 5, last, dir);
}

#[test]
fn a_primary_with_a_stale_term_is_fenced() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = key(dir, "key", "correct horse battery staple");
    std::fs::create_dir_all(dir.join("spare")).unwrap();
    std::fs::write(dir.join("spare/term"), "5\n").unwrap();
    let port = free_port();
    let (_spare, _out) = spare(dir, port, &key, 4, 5);
    let (p, rx) = primary(dir, port, &key, 4, 5, Some("3"));
    let l = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(l.starts_with("CPTFAIL"), "a stale primary got: {l}");
    // The fence is logged by the link's thread, not in order with the failed checkpoint's
    // line: killed at once, the primary may not have written it yet.
    let plog = wait_log(dir, "primary.log", "FENCED");
    drop(p);
    assert!(plog.contains("FENCED"), "{plog}");
    let slog = wait_log(dir, "spare.log", "older than ours (5): fenced");
    assert!(slog.contains("older than ours (5): fenced"), "{slog}");
    assert!(
        !dir.join("spare/manifest").exists(),
        "the image was touched"
    );
}

#[test]
fn spare_restart_while_the_primary_runs() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = key(dir, "key", "correct horse battery staple");
    let port = free_port();
    let (spare1, _out1) = spare(dir, port, &key, 6, 7);
    let (p, rx) = primary(dir, port, &key, 6, 7, None);
    let _ = acked(&rx, 1, 70);
    drop(spare1); // SIGKILL the spare while the primary keeps working
    let (_spare2, out2) = spare(dir, port, &key, 6, 7);
    // The primary notices, reconnects, sends a full image, and goes on.
    let (mut last, failed) = acked(&rx, 5, 0);
    drop(p);
    for l in rx.try_iter() {
        last = cpt_ops(&l).unwrap_or(last);
    }
    let ops = check_resumed(&out2, 6, 7, last, dir);
    eprintln!("spare restart: checkpoints failed while it was down: {failed}; resumed at {ops}");
    assert!(
        log(dir, "primary.log")
            .matches("connected to spare")
            .count()
            >= 2,
        "{}",
        log(dir, "primary.log")
    );
}

/// The README's main job runs, loses nothing, and cleans up after itself.
#[test]
fn hotspare_demo_reports_no_lost_keys() {
    let out = Command::new(util::lib("hotspare-bench"))
        .args(["demo", "--seconds", "0.5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("keys lost             0 of"), "{text}");
    assert!(text.contains("hotspare-bench demo: OK"), "{text}");
}

/// `hotspare status` shows a running primary's and spare's role, term, sequence and heartbeat.
#[test]
fn status_of_primary_and_spare() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = key(dir, "key", "correct horse battery staple");
    let port = free_port();
    let (_spare, _out) = spare(dir, port, &key, 8, 5);
    let (_p, rx) = primary(dir, port, &key, 8, 5, None);
    let _ = acked(&rx, 1, 100);
    std::thread::sleep(Duration::from_millis(250)); // status files are rewritten every 100 ms
    let hs = util::lib("hotspare");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(&hs).arg("status").args(args).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let p = run(&[dir.join("spool").as_os_str()]);
    assert!(
        p.contains("\"role\":\"primary\"")
            && p.contains("\"connected\":true")
            && p.contains("\"fenced\":false"),
        "{p}"
    );
    let s = run(&[dir.join("spare").as_os_str()]);
    assert!(
        // The spare has saved the term of the primary it admitted.
        s.contains("\"role\":\"spare\"") && s.contains("\"term\":1"),
        "{s}"
    );
    let addr = format!("127.0.0.1:{port}");
    let q = run(&[
        "--spare".as_ref(),
        addr.as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]);
    assert!(
        q.starts_with(&format!("spare {addr}: term 1, image at checkpoint ")),
        "{q}"
    );
}

/// A spare that is stopped for a while (a VM freeze, a swap storm) must not wake up and take
/// over from a primary that is alive: the primary's messages waiting in the socket count. After
/// it continues, replication goes on, and a real failure is still handled.
#[test]
fn a_stalled_spare_does_not_take_over_from_a_live_primary() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = key(dir, "key", "correct horse battery staple");
    let port = free_port();
    let (spare, spare_out) = spare(dir, port, &key, 9, 5);
    let (p, rx) = primary(dir, port, &key, 9, 5, None);
    let _ = acked(&rx, 1, 50);
    spare.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(400)); // far beyond N × H
    spare.signal(libc::SIGCONT);
    // The primary keeps getting acknowledgements, and the spare did not take over.
    let (mut last, _) = acked(&rx, 20, 0);
    assert!(
        spare_out.try_recv().is_err(),
        "the spare took over from a live primary:\n{}",
        log(dir, "spare.log")
    );
    assert!(
        !log(dir, "spare.log").contains("taking over"),
        "{}",
        log(dir, "spare.log")
    );
    drop(p);
    for l in rx.try_iter() {
        last = cpt_ops(&l).unwrap_or(last);
    }
    check_resumed(&spare_out, 9, 5, last, dir);
}
