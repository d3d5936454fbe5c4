//! `libhotspare_malloc.so`: a C program keeps its state in a third-party C library's data
//! structures (Debian's GLib: a `GHashTable` of `g_strdup`ed strings with `g_str_hash` and
//! `g_free` as its functions, a `GArray` grown by `realloc`) allocated with plain `malloc`; it is
//! SIGKILLed between checkpoints, resumed, checks every entry, killed and resumed again, and
//! finally frees everything in the resumed process.
//!
//! Needs gcc, pkg-config and libglib2.0-dev (`.ci/run` installs them): without them the test
//! fails and says so.

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use util::{lib, next_line, profile_dir, spawn_lines, Killed};

fn glib_flags() -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "glib-2.0"])
        .output()
        .expect("pkg-config must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "pkg-config glib-2.0 failed (install libglib2.0-dev; .ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn spawn(exe: &Path, dir: &Path, env: &[(&str, &str)]) -> (Killed, Receiver<String>) {
    let mut c = Command::new(exe);
    c.env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "64M")
        // GLib 2.74 (Debian 12) has g_slice's own allocator, whose bookkeeping is in static
        // variables; from 2.76 on g_slice is malloc.
        .env("G_SLICE", "always-malloc")
        .env_remove("HOTSPARE_RESUME")
        .envs(env.iter().copied())
        .stderr(Stdio::inherit());
    spawn_lines(&mut c)
}

/// The first line starting with `what`, skipping checkpoints.
fn line(rx: &Receiver<String>, what: &str) -> String {
    loop {
        let l = next_line(rx, what);
        if l.starts_with(what) {
            return l;
        }
        assert!(
            l.starts_with("CPT "),
            "unexpected line {l:?} waiting for {what}"
        );
    }
}

/// Runs until the checkpoint at `hang_at`, which it reports, then kills it (17 operations later,
/// which the next run must not see).
fn run_to(exe: &Path, dir: &Path, hang_at: u64, resume: bool) -> Option<String> {
    let d = dir.to_str().unwrap().to_owned();
    let hang = hang_at.to_string();
    let mut env = vec![("HS_GLIB_HANG_AT", hang.as_str())];
    if resume {
        env.push(("HOTSPARE_RESUME", d.as_str()));
    }
    let (child, rx) = spawn(exe, dir, &env);
    let resumed = resume.then(|| line(&rx, "RESUMED"));
    let want = format!(" {hang_at}");
    loop {
        let l = line(&rx, "CPT");
        if l.ends_with(&want) {
            break;
        }
    }
    // The 17 operations after the checkpoint happen (or not) before the kill: either way the
    // next run must resume at the checkpoint.
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(child);
    resumed
}

#[test]
fn glib_hash_table_in_malloced_memory_is_killed_and_resumed() {
    let exe = profile_dir().join("glib_table");
    let so = lib("libhotspare_malloc.so");
    let libdir = so.parent().unwrap().to_str().unwrap().to_owned();
    let mut link = vec![
        "-L".to_string(),
        libdir.clone(),
        "-lhotspare_malloc".into(),
        format!("-Wl,-rpath,{libdir}"),
    ];
    link.extend(glib_flags());
    let link: Vec<&str> = link.iter().map(String::as_str).collect();
    util::compile_c("glib_table.c", "hotspare/include", &exe, &link);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run_to(&exe, dir.path(), 1000, false), None);
    // 1000 operations: 1000 keys minus the 200 removed (k2, k7, …, k997).
    let r = run_to(&exe, dir.path(), 2000, true).unwrap();
    assert_eq!(r, "RESUMED 1000 800 ok");
    let (child, rx) = spawn(
        &exe,
        dir.path(),
        &[("HOTSPARE_RESUME", dir.path().to_str().unwrap())],
    );
    assert_eq!(line(&rx, "RESUMED"), "RESUMED 2000 1600 ok");
    assert_eq!(line(&rx, "DONE"), "DONE 3000");
    drop(child);
}

// ---- Red-team attacks on libhotspare_malloc.so (tests/c/malloc_*.c) ----

/// Compiles `tests/c/<source>` against `libhotspare_malloc.so` into the profile directory.
fn build_malloc_program(source: &str, name: &str) -> std::path::PathBuf {
    let exe = profile_dir().join(name);
    let link = util::link_shared("hotspare_malloc");
    let mut link: Vec<&str> = link.iter().map(String::as_str).collect();
    link.push("-lpthread");
    util::compile_c(source, "hotspare/include", &exe, &link);
    exe
}

/// Starts `exe` on image directory `dir` (resuming from it with `resume`), stderr inherited.
fn start(exe: &Path, dir: &Path, resume: bool, env: &[(&str, &str)]) -> (Killed, Receiver<String>) {
    let mut c = Command::new(exe);
    c.env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "256M")
        .env_remove("HOTSPARE_RESUME")
        .envs(env.iter().copied())
        .stderr(Stdio::inherit());
    if resume {
        c.env("HOTSPARE_RESUME", dir);
    }
    spawn_lines(&mut c)
}

/// A small deterministic generator for kill points (the seed is printed, to replay a failure).
struct Rng(u64);

impl Rng {
    fn from_clock() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let seed = std::env::var("HS_RT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(t | 1);
        eprintln!("kill-point seed {seed} (HS_RT_SEED={seed} replays it)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The fields of a `CPT k ops live sum` or `RESUMED k ops live sum ok` line.
fn cpt_fields(l: &str) -> [u64; 4] {
    let f: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .take(4)
        .map(|x| x.parse().unwrap_or_else(|_| panic!("bad line {l:?}")))
        .collect();
    [f[0], f[1], f[2], f[3]]
}

/// Reads `CPT` lines until `kill_after` more have come, waits `delay_ms` (the workers go on, a
/// checkpoint may be under way) and SIGKILLs; returns every checkpoint it reported.
fn run_and_kill(
    child: Killed,
    rx: &Receiver<String>,
    kill_after: u64,
    delay_ms: u64,
) -> Vec<[u64; 4]> {
    let mut seen = Vec::new();
    while (seen.len() as u64) < kill_after {
        let l = next_line(rx, "CPT");
        assert!(l.starts_with("CPT "), "unexpected line {l:?}");
        seen.push(cpt_fields(&l));
    }
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    drop(child);
    // Lines printed before the kill landed still count as reported.
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
        assert!(l.starts_with("CPT "), "unexpected line {l:?}");
        seen.push(cpt_fields(&l));
    }
    seen
}

/// The resumed state is a checkpoint at least as new as the last one reported, and exactly it
/// (operations, live blocks, their seeds and sizes) when it is one that was reported.
fn assert_resumed_at(resumed: &str, reported: &[[u64; 4]]) {
    assert!(resumed.ends_with(" ok"), "resumed check failed: {resumed}");
    let r = cpt_fields(resumed);
    let last = reported.last().expect("no checkpoint reported");
    assert!(
        r[0] >= last[0],
        "resumed at checkpoint {} older than {last:?}",
        r[0]
    );
    if let Some(c) = reported.iter().find(|c| c[0] == r[0]) {
        assert_eq!(&r, c, "resumed state differs from checkpoint {}", r[0]);
    }
}

/// Worker pthreads allocate, resize and free each other's blocks (malloc, calloc,
/// posix_memalign 32–65536, aligned_alloc, realloc up to 1 MiB) while the main thread
/// checkpoints, replaces finished workers and runs fork()+exec and popen; SIGKILLed at a random
/// point, resumed (every block's bytes, alignment and usable size checked, no two overlapping),
/// left to allocate and free on the dead threads' inherited slots, killed and resumed again,
/// then everything is checked and freed.
#[test]
fn threads_malloc_and_free_across_checkpoints_kills_and_resumes() {
    let exe = build_malloc_program("malloc_threads.c", "malloc_threads");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_clock();
    let (child, rx) = start(&exe, dir.path(), false, &[]);
    let mut reported = run_and_kill(child, &rx, 3 + rng.below(5), rng.below(30));
    for _ in 0..2 {
        let (child, rx) = start(&exe, dir.path(), true, &[]);
        let resumed = next_line(&rx, "RESUMED");
        eprintln!("{resumed} after {:?}", reported.last());
        assert_resumed_at(&resumed, &reported);
        reported = run_and_kill(child, &rx, 3 + rng.below(5), rng.below(30));
    }
    let (child, rx) = start(&exe, dir.path(), true, &[("HS_MT_MORE", "3")]);
    let resumed = next_line(&rx, "RESUMED");
    assert_resumed_at(&resumed, &reported);
    // Three more checkpoints, then everything is checked and freed.
    for _ in 0..3 {
        let l = next_line(&rx, "CPT");
        assert!(l.starts_with("CPT "), "{l}");
    }
    let done = next_line(&rx, "DONE");
    assert!(done.starts_with("DONE ") && done.ends_with(" ok"), "{done}");
    drop(child);
}

/// The corners of the malloc API (malloc(0), realloc(p, 0), sizes and alignments no heap can
/// serve, a realloc chain 1 B → 8 MiB → 1 B, over-aligned blocks resized, calloc of dirty freed
/// blocks, pre-hs_init blocks freed and resized after it) and glibc functions that allocate for
/// the program (strdup, asprintf, getline, open_memstream, reallocarray, scandir, qsort, wide
/// printf, setlocale, regcomp, getpwuid, fopen): their results survive SIGKILL + resume, are
/// freed in the resumed process, and it all goes round twice more.
#[test]
fn malloc_edges_and_glibc_allocations_survive_kill_and_resume() {
    let exe = build_malloc_program("malloc_edges.c", "malloc_edges");
    let dir = tempfile::tempdir().unwrap();
    let heap = [("HOTSPARE_HEAP_SIZE", "64M")];
    let (child, rx) = start(&exe, dir.path(), false, &heap);
    assert_eq!(next_line(&rx, "READY"), "READY 1");
    drop(child);
    for gen in 1..=2 {
        let (child, rx) = start(&exe, dir.path(), true, &heap);
        assert_eq!(next_line(&rx, "RESUMED"), format!("RESUMED {gen} ok"));
        assert_eq!(next_line(&rx, "READY"), format!("READY {}", gen + 1));
        drop(child);
    }
    let (child, rx) = start(&exe, dir.path(), true, &[heap[0], ("HS_EDGE_FINISH", "1")]);
    assert_eq!(next_line(&rx, "RESUMED"), "RESUMED 3 ok");
    assert_eq!(next_line(&rx, "DONE"), "DONE 3 ok");
    drop(child);
}

/// An 8 MiB heap filled until malloc returns NULL (every size class and large blocks): every
/// allocation function then fails with NULL/ENOMEM (a failed realloc keeps its block), nothing
/// allocated is damaged, the one-line message comes once per process, and the full heap is
/// checkpointed, killed, resumed (every block checked), emptied and filled again in the resumed
/// process, and checkpointed and resumed once more.
#[test]
fn a_full_heap_fails_cleanly_and_still_checkpoints_and_resumes() {
    let exe = build_malloc_program("malloc_full.c", "malloc_full");
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let run = |resume: bool, n: usize| {
        let log = logs.path().join(format!("stderr{n}"));
        let mut c = Command::new(&exe);
        c.env("HOTSPARE_IMAGE_DIR", dir.path())
            .env("HOTSPARE_HEAP_SIZE", "8M")
            .env_remove("HOTSPARE_RESUME")
            .stderr(std::fs::File::create(&log).unwrap());
        if resume {
            c.env("HOTSPARE_RESUME", dir.path());
        }
        let (child, rx) = spawn_lines(&mut c);
        (child, rx, log)
    };
    let full_once = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap();
        let n = text.matches("the checkpoint heap is full").count();
        assert_eq!(n, 1, "stderr of a run that filled the heap:\n{text}");
        assert!(
            text.lines().all(|l| l.starts_with("hotspare: ")),
            "unexpected stderr:\n{text}"
        );
    };
    let (child, rx, log) = run(false, 0);
    assert_eq!(next_line(&rx, "START"), "START");
    let full = next_line(&rx, "FULL");
    assert!(full.starts_with("FULL "), "{full}");
    assert_eq!(next_line(&rx, "CPT"), "CPT");
    drop(child);
    full_once(&log);
    let count = full.split_whitespace().nth(1).unwrap().to_owned();
    for n in 1..=2 {
        let (child, rx, log) = run(true, n);
        let resumed = next_line(&rx, "RESUMED");
        if n == 1 {
            assert_eq!(resumed, format!("RESUMED {count} ok"));
        } else {
            assert!(resumed.ends_with(" ok"), "{resumed}");
        }
        let refill = next_line(&rx, "REFILL");
        assert!(refill.ends_with(" ok"), "{refill}");
        assert_eq!(next_line(&rx, "CPT"), "CPT");
        drop(child);
        full_once(&log);
    }
}

/// Fork-strategy checkpoints while other threads allocate inside glibc's own locks (getline
/// under a FILE's lock, fflush(NULL) over the FILE list): 300 captures that fork must all
/// complete. A capture holds the heap's allocator locks; forking through glibc's `fork()`,
/// which takes the FILE list lock first, could deadlock against those threads (the library forks
/// with `_Fork`). A deadlock shows as no `DONE` line within the bound.
#[test]
fn fork_checkpoints_while_threads_allocate_inside_glibc_locks() {
    let exe = build_malloc_program("malloc_fork.c", "malloc_fork");
    let dir = tempfile::tempdir().unwrap();
    let (child, rx) = start(&exe, dir.path(), false, &[("HOTSPARE_STRATEGY", "fork")]);
    let l = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!("no DONE within 60 s: the fork-strategy checkpoints deadlocked or failed")
        });
    assert_eq!(l, "DONE 300");
    drop(child);
}
