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
