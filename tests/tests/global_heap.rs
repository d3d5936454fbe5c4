//! Ordinary Rust in checkpoint memory: `stdmodel` (GlobalHeap as its global allocator, state in
//! std collections, `Box<dyn Trait>`, `Arc`, `&'static str`, function pointers; four threads
//! mutating while the main thread checkpoints) is SIGKILLed at a random point, resumed, checked
//! against the same operations replayed afresh, left to allocate and free on top of the image,
//! killed again, and resumed again — each resumed state as of a checkpoint at least as recent
//! as the last one reported durable, the allocator's lists intact, code at the same address.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};
use util::{spawn_lines, Killed};

const THREADS: usize = 4;

struct Run {
    child: Killed,
    rx: Receiver<String>,
    stderr: PathBuf,
    lines: Vec<String>,
    /// Its incarnation: 1 fresh, 2 resumed once, …
    n: u32,
}

impl Run {
    fn start(dir: &Path, env: &[(&str, &str)], resume: bool, after: Option<u64>, n: u32) -> Run {
        let stderr = dir.with_extension(format!("stderr{n}"));
        let mut c = Command::new(env!("CARGO_BIN_EXE_stdmodel"));
        c.args(["7", "100000000"])
            .env("HOTSPARE_IMAGE_DIR", dir)
            .env("HOTSPARE_HEAP_SIZE", "256M")
            .env("STDMODEL_THREADS", THREADS.to_string())
            .envs(env.iter().copied())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()));
        if resume {
            c.env("HOTSPARE_RESUME", dir);
        }
        if let Some(a) = after {
            c.env("STDMODEL_AFTER", a.to_string());
        }
        let (child, rx) = spawn_lines(&mut c);
        Run {
            child,
            rx,
            stderr,
            lines: Vec::new(),
            n,
        }
    }

    fn why(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.lines.join("\n"),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Reads lines until `done` says so (true) or `within` passes (false).
    fn read_until(&mut self, within: Duration, done: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !done(&self.lines) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.rx.recv_timeout(left) {
                Ok(l) => self.lines.push(l),
                Err(_) => return done(&self.lines),
            }
        }
        true
    }

    /// SIGKILL (by pid), then the lines already in the pipe.
    fn kill(&mut self) {
        self.child.signal(libc::SIGKILL);
        let _ = self.child.0.wait();
        while let Ok(l) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.lines.push(l);
        }
    }

    /// Checkpoints reported durable: seq → ops per shard.
    fn durable(&self) -> BTreeMap<u64, Vec<u64>> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("CPT "))
            .map(|r| {
                let (seq, ops) = r.split_once(' ').unwrap();
                let ops = ops.split(',').map(|o| o.parse().unwrap()).collect();
                (seq.parse().unwrap(), ops)
            })
            .collect()
    }

    fn code(&self) -> &str {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix("CODE "))
            .unwrap_or_else(|| panic!("no CODE line\n{}", self.why()))
    }

    fn count(&self, prefix: &str) -> usize {
        self.lines.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// The resumed run's report against what the previous incarnation reported durable.
fn check_resumed(prev: &Run, run: &Run) {
    let why = || {
        format!(
            "{}\n--- previous incarnation ---\n{}",
            run.why(),
            prev.why()
        )
    };
    let seq: u64 = run
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("RESUMED "))
        .unwrap_or_else(|| panic!("no RESUMED line\n{}", why()))
        .parse()
        .unwrap();
    let durable = prev.durable();
    if let Some((&last, _)) = durable.last_key_value() {
        assert!(
            seq >= last,
            "resumed checkpoint {seq}, but {last} was reported durable\n{}",
            why()
        );
    }
    let verify: Vec<Vec<&str>> = run
        .lines
        .iter()
        .filter(|l| l.starts_with("VERIFY "))
        .map(|l| l.split(' ').collect())
        .collect();
    assert_eq!(verify.len(), THREADS, "{}", why());
    for v in &verify {
        assert_eq!(v[3], "ok", "shard {} resumed wrong: {v:?}\n{}", v[1], why());
    }
    if let Some(ops) = durable.get(&seq) {
        for v in &verify {
            let shard: usize = v[1].parse().unwrap();
            assert_eq!(
                v[2].parse::<u64>().unwrap(),
                ops[shard],
                "shard {shard}: resumed ops differ from checkpoint {seq}'s\n{}",
                why()
            );
        }
    }
    let heap = run
        .lines
        .iter()
        .find(|l| l.starts_with("HEAPCHECK"))
        .unwrap_or_else(|| panic!("no HEAPCHECK\n{}", why()));
    assert!(heap.starts_with("HEAPCHECK ok"), "{heap}\n{}", why());
    assert_eq!(run.code(), prev.code(), "code moved between incarnations");
    // What the dead incarnations' threads had allocated and nothing refers to any more: at most
    // their scratch at the capture — the mutators' ≤ 64 strings each and the churn thread's ≤ 256
    // blocks of ≤ 64 KiB — per incarnation, cumulated (nothing frees it). Far more means the
    // allocator leaks on its own; far below zero means the measurement is wrong.
    let inherited = inherited(run);
    let per_failover = 256 * (64 << 10) + THREADS * 64 * 256;
    assert!(
        inherited > -(64 << 10) && inherited < (run.n as i64 - 1) * per_failover as i64,
        "inherited {inherited} B after {} failovers\n{}",
        run.n - 1,
        why()
    );
}

/// The `INHERITED <bytes>` a resumed stdmodel printed.
fn inherited(run: &Run) -> i64 {
    run.lines
        .iter()
        .find_map(|l| l.strip_prefix("INHERITED "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no INHERITED line\n{}", run.why()))
}

fn resumed_and_verified(lines: &[String]) -> bool {
    lines.iter().filter(|l| l.starts_with("VERIFY ")).count() == THREADS
        && lines.iter().any(|l| l.starts_with("HEAPCHECK"))
}

fn trial(rng: &mut fastrand::Rng, env: &[(&str, &str)], n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("image");
    // 1: a fresh run, killed at a random point after its first durable checkpoint.
    let mut first = Run::start(&dir, env, false, None, 1);
    let cpt = |l: &[String]| l.iter().any(|l| l.starts_with("CPT "));
    assert!(
        first.read_until(Duration::from_secs(60), cpt),
        "no checkpoint\n{}",
        first.why()
    );
    first.read_until(Duration::from_millis(rng.u64(0..800)), |_| false);
    first.kill();
    assert_eq!(first.count("CPTFAIL"), 0, "{}", first.why());
    // 2: resumed, checked, then going on (allocating and freeing on top of the image) until it
    // is killed again at a random point after at least one checkpoint of its own.
    let mut second = Run::start(&dir, env, true, Some(100_000_000), 2);
    assert!(
        second.read_until(Duration::from_secs(120), |l| resumed_and_verified(l)
            && l.iter().any(|l| l.starts_with("CPT "))),
        "resume did not verify and checkpoint\n{}",
        second.why()
    );
    second.read_until(Duration::from_millis(rng.u64(0..800)), |_| false);
    second.kill();
    check_resumed(&first, &second);
    // 3: resumed again; 2,000 more operations per shard, checked again, and a clean exit.
    let mut third = Run::start(&dir, env, true, Some(2000), 3);
    assert!(
        third.read_until(Duration::from_secs(180), |l| l.iter().any(|l| l == "DONE")),
        "third incarnation did not finish\n{}",
        third.why()
    );
    assert_eq!(
        third.child.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        third.why()
    );
    check_resumed(&second, &third);
    let after: Vec<&String> = third
        .lines
        .iter()
        .filter(|l| l.starts_with("AFTER "))
        .collect();
    assert_eq!(after.len(), THREADS, "{}", third.why());
    assert!(after.iter().all(|l| l.ends_with(" ok")), "{}", third.why());
    assert_eq!(third.count("HEAPCHECK ok"), 2, "{}", third.why());
    eprintln!(
        "{env:?} trial {n}: durable {:?} / {:?}, inherited {} B / {} B, resumed {}",
        first.durable().keys().last(),
        second.durable().keys().last(),
        inherited(&second),
        inherited(&third),
        third
            .lines
            .iter()
            .find(|l| l.starts_with("RESUMED"))
            .unwrap()
    );
}

fn many(trials: usize, seed: u64, env: &[(&str, &str)]) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for n in 0..trials {
        trial(&mut rng, env, n);
    }
}

#[test]
fn std_state_survives_kill_and_resume_copy_uffd_wp() {
    many(
        3,
        11,
        &[
            ("HOTSPARE_STRATEGY", "copy"),
            ("HOTSPARE_BACKEND", "uffd-wp"),
        ],
    );
}

#[test]
fn std_state_survives_kill_and_resume_fork() {
    many(2, 12, &[("HOTSPARE_STRATEGY", "fork")]);
}

#[test]
fn std_state_survives_kill_and_resume_mprotect() {
    many(2, 13, &[("HOTSPARE_BACKEND", "mprotect")]);
}

/// Without fixed addresses the executable lands elsewhere: resume refuses, in one line naming
/// the difference, rather than run a state whose vtables and function pointers would dangle.
#[test]
fn resume_refuses_code_at_other_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("image");
    let mut first = Run::start(&dir, &[], false, None, 1);
    let cpt = |l: &[String]| l.iter().any(|l| l.starts_with("CPT "));
    assert!(
        first.read_until(Duration::from_secs(60), cpt),
        "{}",
        first.why()
    );
    first.kill();
    let out = Command::new(env!("CARGO_BIN_EXE_stdmodel"))
        .args(["7", "100000000"])
        .env("HOTSPARE_RESUME", &dir)
        .env("HOTSPARE_HEAP_SIZE", "256M")
        .env("HOTSPARE_FIXED_ADDRESSES", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("resume refused"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains("the executable is loaded at 0x") && line.contains("here but was at 0x"),
        "{line}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("RESUMED"));
    // Fixed addresses, but one more library loaded first: the libraries after it moved.
    let z = Path::new("/lib/x86_64-linux-gnu/libz.so.1");
    if z.exists() {
        let out = Command::new(env!("CARGO_BIN_EXE_stdmodel"))
            .args(["7", "100000000"])
            .env("HOTSPARE_RESUME", &dir)
            .env("HOTSPARE_HEAP_SIZE", "256M")
            .env("LD_PRELOAD", z)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("resume refused"))
            .unwrap_or_else(|| panic!("{stderr}"));
        assert!(
            line.contains(".so")
                && line.contains("is loaded at 0x")
                && line.contains("here but was at 0x"),
            "{line}"
        );
    }
}
