//! SIGKILL `kvmodel` at random points — between checkpoints, during the checkpoint write, during
//! the apply — and resume it: the state must be exactly the model's as of a completed checkpoint,
//! at least as recent as the last one the program reported durable. Never a torn one.

use hotspare_tests::model;
use std::path::Path;
mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::spawn_lines;

const TOTAL: u64 = 1_000_000;

fn kvmodel(dir: &Path, env: &[(&str, &str)], seed: u64, k: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmodel"));
    c.args([seed.to_string(), TOTAL.to_string(), k.to_string()])
        .env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// One trial: run, kill after a random delay, resume, compare. Returns the ops resumed.
fn trial(rng: &mut fastrand::Rng, env: &[(&str, &str)]) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let (seed, k) = (rng.u64(..), rng.u64(1..40));
    let (child, rx) = spawn_lines(&mut kvmodel(dir.path(), env, seed, k));
    let mut last_durable = 0;
    let note = |l: &str, last: &mut u64| {
        if let Some(rest) = l.strip_prefix("CPT ") {
            *last = rest.split(' ').nth(1).unwrap().parse().unwrap();
        }
    };
    // One trial in ten is killed at a random moment of start-up (before or during the first,
    // full checkpoint); the others at a random moment after the first checkpoint is durable.
    let early = rng.u8(..10) == 0;
    if !early {
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no first checkpoint within 20 s");
        note(&first, &mut last_durable);
    }
    let deadline =
        Instant::now() + Duration::from_micros(rng.u64(0..if early { 80_000 } else { 30_000 }));
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => note(&l, &mut last_durable),
            Err(_) => break,
        }
    }
    drop(child); // SIGKILL by pid, reaped
                 // Lines printed before the kill may still be in the pipe.
    for l in rx.try_iter() {
        note(&l, &mut last_durable);
    }
    let mut resumed = kvmodel(dir.path(), env, seed, k);
    resumed
        .env("HOTSPARE_RESUME", dir.path())
        .env("KVMODEL_EXIT_ON_RESUME", "1");
    let out = resumed.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if last_durable == 0 && stdout.is_empty() {
        // Killed before the first checkpoint was durable: there may be no image at all.
        assert!(
            stderr.contains("no checkpoint image") || out.status.success(),
            "resume without any durable checkpoint: {stderr}"
        );
        if !out.status.success() {
            return 0;
        }
    }
    assert!(
        out.status.success(),
        "resume failed: {}\n{stderr}",
        out.status
    );
    let (ops, digest) = util::resumed_line(&stdout, &stderr);
    assert_eq!(
        ops % k,
        0,
        "resumed at {ops} ops, not a checkpoint boundary (K={k})"
    );
    assert!(
        ops >= last_durable,
        "resumed {ops} ops but checkpoint at {last_durable} was reported durable"
    );
    assert_eq!(
        digest,
        model::digest_after(seed, ops),
        "state after {ops} ops differs from the model (seed {seed})"
    );
    ops
}

fn many(trials: usize, seed: u64, env: &[(&str, &str)]) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut resumed = Vec::new();
    for _ in 0..trials {
        resumed.push(trial(&mut rng, env));
    }
    let nonzero = resumed.iter().filter(|&&o| o > 0).count();
    eprintln!("{env:?}: {trials} kills, {nonzero} resumed a checkpoint, ops {resumed:?}");
    assert!(
        nonzero * 2 > trials,
        "too few trials got as far as a checkpoint: {resumed:?}"
    );
}

#[test]
fn kill_and_resume_copy_strategy_uffd_wp() {
    many(
        70,
        1,
        &[
            ("HOTSPARE_STRATEGY", "copy"),
            ("HOTSPARE_BACKEND", "uffd-wp"),
        ],
    );
}

#[test]
fn kill_and_resume_fork_strategy() {
    many(
        60,
        2,
        &[
            ("HOTSPARE_STRATEGY", "fork"),
            ("HOTSPARE_BACKEND", "uffd-wp"),
        ],
    );
}

#[test]
fn kill_and_resume_auto_mprotect() {
    many(
        40,
        3,
        &[
            ("HOTSPARE_STRATEGY", "auto"),
            ("HOTSPARE_BACKEND", "mprotect"),
        ],
    );
}

#[test]
fn kill_and_resume_auto_default_backend() {
    many(40, 4, &[]);
}

/// A resumed program keeps checkpointing into the same image, and can be killed and resumed
/// again: a chain of incarnations.
#[test]
fn resume_again_and_again() {
    let dir = tempfile::tempdir().unwrap();
    let (seed, k) = (99, 7);
    let mut last = 0;
    for round in 0..6 {
        let mut c = kvmodel(dir.path(), &[], seed, k);
        if round > 0 {
            c.env("HOTSPARE_RESUME", dir.path());
        }
        let (child, rx) = spawn_lines(&mut c);
        let mut seen = 0;
        for l in rx.iter() {
            if let Some(rest) = l.strip_prefix("RESUMED ") {
                let ops: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                assert!(ops >= last, "round {round}: resumed {ops} < {last}");
                assert_eq!(
                    rest.split(' ').nth(1).unwrap().parse::<u32>().unwrap(),
                    model::digest_after(seed, ops)
                );
            }
            if let Some(rest) = l.strip_prefix("CPT ") {
                last = rest.split(' ').nth(1).unwrap().parse().unwrap();
                seen += 1;
                if seen == 20 {
                    break;
                }
            }
        }
        drop(child); // SIGKILL by pid, reaped
    }
    assert!(last > 0);
}
