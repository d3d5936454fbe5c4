//! The Hot Spare C ABI: `hotspare.h` matches the library's exports and error codes, and a C
//! program (`tests/c/hs_counter.c`) built with `-Werror` against `libhotspare.so` and `.a`
//! checkpoints, is SIGKILLed, and resumes with its state and its signal handler.
//!
//! The libraries come from `cargo build --workspace` (which `scripts/test.sh` runs first).

mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use util::{lib, next_line, profile_dir, repo, spawn_lines, Killed};

fn spawn(
    exe: &Path,
    dir: &Path,
    env: &[(&str, &str)],
) -> (Killed, std::sync::mpsc::Receiver<String>) {
    let mut c = Command::new(exe);
    c.env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "4M")
        .envs(env.iter().copied())
        .stderr(Stdio::piped());
    spawn_lines(&mut c)
}

fn header() -> String {
    std::fs::read_to_string(repo().join("hotspare/include/hotspare.h")).unwrap()
}

#[test]
fn header_declares_exactly_the_exported_functions() {
    let declared: BTreeSet<String> = header()
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with('*') && !l.starts_with("typedef") && !l.starts_with('#')
        })
        .filter_map(|l| {
            let i = l.find("hs_")?;
            let name: String = l[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            l[i + name.len()..].starts_with('(').then_some(name)
        })
        .collect();
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib("libhotspare.so"))
        .output()
        .expect("nm (binutils)");
    let exported: BTreeSet<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("hs_"))
        .map(str::to_owned)
        .collect();
    assert!(!declared.is_empty());
    assert_eq!(declared, exported, "hotspare.h and libhotspare.so disagree");
}

fn kill_and_resume(exe: &Path) {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (first, rx) = spawn(exe, dir.path(), &[]);
        let mut last = 0;
        for _ in 0..(3 + round * 7) {
            let l = next_line(&rx, "CPT or RESUMED");
            last = l.split(' ').nth(2).unwrap().parse::<i64>().unwrap();
        }
        drop(first);
        for l in rx.try_iter() {
            if let Some(v) = l.split(' ').nth(2) {
                last = v.parse().unwrap();
            }
        }
        let d = dir.path().to_str().unwrap();
        let (second, rx) = spawn(
            exe,
            dir.path(),
            &[
                ("HOTSPARE_RESUME", d),
                ("HS_COUNTER_WAIT_SIGNAL", "1"),
                ("HS_COUNTER_EXIT_ON_RESUME", "1"),
            ],
        );
        let l = next_line(&rx, "CPT or RESUMED");
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f[0], "RESUMED", "{l}");
        let counter: i64 = f[1].parse().unwrap();
        assert_eq!(f[2], "ok", "history ring inconsistent after resume: {l}");
        assert!(
            counter % 10 == 0 && counter >= last,
            "resumed at {counter}, last durable {last}"
        );
        second.signal(libc::SIGUSR1);
        assert_eq!(next_line(&rx, "SIGNAL"), "SIGNAL");
    }
}

#[test]
fn c_program_checkpoints_is_killed_and_resumes_shared() {
    let exe = profile_dir().join("hs_counter_shared");
    let link = util::link_shared("hotspare");
    let link: Vec<&str> = link.iter().map(String::as_str).collect();
    util::compile_c("hs_counter.c", "hotspare/include", &exe, &link);
    kill_and_resume(&exe);
}

#[test]
fn c_program_checkpoints_is_killed_and_resumes_static() {
    let a = lib("libhotspare.a");
    let exe = profile_dir().join("hs_counter_static");
    util::compile_c(
        "hs_counter.c",
        "hotspare/include",
        &exe,
        &[a.to_str().unwrap(), "-lpthread", "-ldl", "-lm"],
    );
    kill_and_resume(&exe);
}

/// The output-commit ABI from C (`tests/c/hs_commit.c`): a ticket released through
/// `hs_commit_fd` + `hs_ticket_state`, then a burst of `hs_try_commit` (taken or "full", never
/// an error), every ticket durable at the end.
#[test]
fn c_program_commits_and_tries_to_commit() {
    let exe = profile_dir().join("hs_commit");
    let link = util::link_shared("hotspare");
    let link: Vec<&str> = link.iter().map(String::as_str).collect();
    util::compile_c("hs_commit.c", "hotspare/include", &exe, &link);
    let dir = tempfile::tempdir().unwrap();
    let (_p, rx) = spawn(&exe, dir.path(), &[]);
    let l = next_line(&rx, "COMMIT");
    let f: Vec<&str> = l.split(' ').collect();
    assert_eq!(&f[..2], ["COMMIT", "ok"], "{l}");
    let taken: u64 = f[2].parse().unwrap();
    assert!(taken >= 5, "{l}");
}

#[test]
fn pkg_config_file_describes_the_library() {
    let pc = std::fs::read_to_string(repo().join("hotspare/hotspare.pc.in")).unwrap();
    assert!(
        pc.contains("Libs: -L${libdir} -lhotspare") && pc.contains("Cflags: -I${includedir}"),
        "{pc}"
    );
}
