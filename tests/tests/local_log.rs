//! A primary without a spare makes small checkpoints durable in its image directory's own log
//! and applies them to the data files later (checkpoint/local.rs). A checkpoint reported
//! durable must survive whatever happens to the apply: here the disk is full when it is due.

use hotspare_image::{write_stream, Begin, ImageDir, RangeEntry, Run};
use hotspare_tests::model;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
mod util;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use util::{free_port, spawn_lines, Killed, Reply, RespConn, Tmpfs};

const TOTAL: u64 = 100_000_000;

fn kvmodel(dir: &Path, log: &Path, seed: u64, k: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmodel"));
    c.args([seed.to_string(), TOTAL.to_string(), k.to_string()])
        .env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "64M")
        .env("HOTSPARE_STRATEGY", "copy")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

/// Fills the file system of `path` (appending to it) until `ENOSPC`.
fn fill(path: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let chunk = vec![0xA5u8; size];
        while let Ok(1..) = std::io::Write::write(&mut f, &chunk) {}
    }
}

/// The ops of the `RESUMED` line of a resumed run (checked against the model), or `None` if
/// the resume was refused.
fn resume(dir: &Path, log: &Path, seed: u64, k: u64) -> Option<u64> {
    let mut c = kvmodel(dir, log, seed, k);
    c.env("HOTSPARE_RESUME", dir)
        .env("KVMODEL_EXIT_ON_RESUME", "1");
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return None;
    }
    let (ops, digest) = util::resumed_line(&stdout, "");
    assert_eq!(digest, model::digest_after(seed, ops), "state after {ops}");
    Some(ops)
}

/// Guards against a resume that silently goes back to the last *applied* checkpoint when a
/// newer one is durable but cannot be applied (the disk is full): a primary without a spare
/// reports a checkpoint durable once it is in the log and applies it later, so a crash leaves
/// such checkpoints behind as a matter of course, and resuming from the manifest then loses
/// them (and its first checkpoint supersedes them for good). The resume must refuse instead,
/// keep them, and have them once space is freed.
#[test]
fn a_resume_that_cannot_apply_a_durable_checkpoint_refuses_and_keeps_it() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("disk");
    let _fs = Tmpfs::mount(&mnt, "48m").expect("mount a tmpfs");
    let dir = mnt.join("image");
    let (seed, k) = (7, 10);
    let log = t.path().join("stderr");
    let (child, rx) = spawn_lines(&mut kvmodel(&dir, &log, seed, k));
    let mut last_durable = 0;
    let mut seen = 0;
    while seen < 20 {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kvmodel goes on");
        if let Some(rest) = l.strip_prefix("CPT ") {
            last_durable = rest.split(' ').nth(1).unwrap().parse().unwrap();
            seen += 1;
        }
    }
    drop(child); // SIGKILL by pid, reaped
    for l in rx.try_iter() {
        if let Some(rest) = l.strip_prefix("CPT ") {
            last_durable = rest.split(' ').nth(1).unwrap().parse().unwrap();
        }
    }
    // As the killed incarnation could have left it: one more checkpoint durable in the log and
    // not applied, whose page lies in a hole of the heap's data file (the heap grew into it),
    // so that applying it needs disk space. Its page is zeros: the state is that of the last
    // checkpoint the program reported.
    let image = ImageDir::open(&dir).unwrap();
    let m = image.manifest().unwrap().clone();
    let heap = m.ranges.iter().max_by_key(|r| r.len).unwrap();
    let data = std::fs::File::open(image.data_path(heap.addr, heap.len)).unwrap();
    // SAFETY: lseek on a descriptor we own.
    let hole = unsafe { libc::lseek(data.as_raw_fd(), 0, libc::SEEK_HOLE) };
    assert!(
        hole >= 0 && (hole as u64) < heap.len,
        "the heap's data file has a hole"
    );
    let begin = Begin {
        seq: m.seq + 1,
        base_seq: m.seq,
        ranges: m
            .ranges
            .iter()
            .map(|r| RangeEntry {
                complete: false,
                ..*r
            })
            .collect(),
        ..m.clone()
    };
    let page = vec![0u8; m.page_size as usize];
    let mut bytes = Vec::new();
    write_stream(
        &mut bytes,
        &begin,
        [Run::Data(heap.addr + hole as u64, &page)],
    )
    .unwrap();
    let mut w = image.log_writer().unwrap();
    w.append(begin.seq, begin.lineage, &bytes).unwrap();
    w.flush().unwrap();
    drop((w, data, image));
    let tip = |what: &str| {
        let i = ImageDir::open_read_only(&dir).unwrap();
        assert_eq!(i.tip().unwrap().seq, m.seq + 1, "{what}: still durable");
    };
    tip("before the resume");

    fill(&mnt.join("filler"));
    if let Some(ops) = resume(&dir, &log, seed, k) {
        panic!(
            "resumed on the full disk at {ops} ops (checkpoint {}) though checkpoint {} is durable and could not be applied",
            m.seq,
            m.seq + 1
        );
    }
    let why = std::fs::read_to_string(&log).unwrap();
    assert!(
        why.contains(&format!("checkpoint {}", m.seq + 1)),
        "the refusal names the checkpoint it keeps: {why}"
    );
    tip("after the refused resume");

    std::fs::remove_file(mnt.join("filler")).unwrap();
    let ops = resume(&dir, &log, seed, k).unwrap_or_else(|| {
        panic!(
            "resume with space: {}",
            std::fs::read_to_string(&log).unwrap()
        )
    });
    assert!(
        ops >= last_durable,
        "resumed at {ops} ops but {last_durable} was reported durable"
    );
    assert_eq!(ImageDir::open_read_only(&dir).unwrap().seq(), m.seq + 1);
}

/// `hotspare-kv --cpt-every-write` without a spare, keeping its image in `image`.
fn kv(image: &Path, port: u16, resume: bool, log: &Path) -> Killed {
    let mut c = Command::new(util::lib("hotspare-kv"));
    c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--cpt-every-write")
        .env("HOTSPARE_HEAP_SIZE", "64M")
        .env("HOTSPARE_IMAGE_DIR", image)
        .env_remove("HOTSPARE_SPARE")
        .env_remove("HOTSPARE_TERM")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        );
    if resume {
        c.env("HOTSPARE_RESUME", image);
    } else {
        c.env_remove("HOTSPARE_RESUME");
    }
    Killed(c.spawn().expect("start hotspare-kv"))
}

fn conn(addr: SocketAddr) -> std::io::Result<RespConn> {
    RespConn::connect(addr, Duration::from_millis(500), Duration::from_secs(10))
}

/// Waits until the server at `addr` answers a PING.
fn wait_up(addr: SocketAddr, kv: &mut Killed, log: &Path) -> RespConn {
    let t = Instant::now();
    loop {
        let last = match conn(addr).and_then(|mut c| c.cmd(&["PING"]).map(|r| (c, r))) {
            Ok((c, Reply::Simple(_))) => return c,
            Ok((_, r)) => format!("{r:?}"),
            Err(e) => e.to_string(),
        };
        if let Some(st) = kv.0.try_wait().unwrap() {
            panic!(
                "hotspare-kv ended ({st}): {}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "hotspare-kv does not answer ({last}): {}",
            std::fs::read_to_string(log).unwrap()
        );
    }
}

/// The value of write `i` of client `c` in round `r`: now and then over RECORD_MAX (512 KiB),
/// so that its checkpoint is committed as a file after logged ones.
fn value(r: u64, c: u64, i: u64) -> String {
    let tag = format!("{r}.{c}.{i}.");
    if c == 0 && i % 40 == 39 {
        tag.repeat((600 << 10) / tag.len())
    } else {
        tag
    }
}

/// Guards against an acknowledged write that a resume does not have (Jepsen's "lost write"),
/// with the local log of a primary without a spare doing the work: every write is
/// checkpointed before it is acknowledged (`--cpt-every-write`), small checkpoints go to the
/// log and are applied later, a big value now and then makes one go as a file after logged
/// ones. The server is SIGKILLed at a random moment under a load of concurrent writers and
/// resumed, again and again (each incarnation starts over the log its predecessor left); every
/// write acknowledged in any round must be there, with its value, and none is refused.
#[test]
fn sigkill_under_every_write_load_loses_no_acknowledged_write() {
    let t = tempfile::tempdir().unwrap();
    let image = t.path().join("image");
    let log = t.path().join("kv.log");
    let mut rng = fastrand::Rng::with_seed(0x10c41);
    // Every write acknowledged so far: key, value.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    // Writes refused (a checkpoint that failed: on a healthy disk, a defect).
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    // A resumed server listens where the first one did (its socket is in the image).
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for round in 0..8u64 {
        let mut server = kv(&image, port, round > 0, &log);
        let mut check = wait_up(addr, &mut server, &log);
        for (k, v) in acked.lock().unwrap().iter() {
            match check.cmd(&["GET", k]).unwrap() {
                Reply::Bulk(Some(got)) if got == v.as_bytes() => {}
                other => panic!(
                    "round {round}: acknowledged {k} = {} bytes is {}",
                    v.len(),
                    match other {
                        Reply::Bulk(Some(b)) => format!("{} other bytes", b.len()),
                        r => format!("{r:?}"),
                    }
                ),
            }
        }
        drop(check);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4u64)
            .map(|c| {
                let (acked, stop, refused) = (acked.clone(), stop.clone(), refused.clone());
                std::thread::spawn(move || {
                    let Ok(mut conn) = conn(addr) else { return };
                    for i in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let (k, v) = (format!("k{round}.{c}.{i}"), value(round, c, i));
                        match conn.cmd(&["SET", &k, &v]) {
                            Ok(Reply::Simple(s)) if s == "OK" => {
                                acked.lock().unwrap().push((k, v));
                            }
                            // The kill (`stop` is set before it); before it, a connection
                            // closed unanswered: its checkpoint failed.
                            Err(_) if stop.load(Ordering::SeqCst) => return,
                            other => {
                                let why = match other {
                                    Err(e) => e.kind().to_string(),
                                    Ok(r) => format!("{r:?}").chars().take(200).collect(),
                                };
                                refused.lock().unwrap().push(format!("SET {k}: {why}"));
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.u64(50..700)));
        stop.store(true, Ordering::SeqCst);
        drop(server); // SIGKILL by pid, reaped
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(
            *refused.lock().unwrap(),
            Vec::<String>::new(),
            "round {round}: writes refused on a healthy disk"
        );
    }
    let n = acked.lock().unwrap().len();
    eprintln!("{n} writes acknowledged over 8 incarnations");
    assert!(n > 100, "the load got writes acknowledged: {n}");
    // A last incarnation checks them all (the loop checks at the start of each round).
    let mut server = kv(&image, port, true, &log);
    let mut check = wait_up(addr, &mut server, &log);
    for (k, v) in acked.lock().unwrap().iter() {
        assert!(
            matches!(check.cmd(&["GET", k]).unwrap(), Reply::Bulk(Some(got)) if got == v.as_bytes()),
            "after the last kill: {k}"
        );
    }
}
