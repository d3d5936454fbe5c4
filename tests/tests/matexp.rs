//! Matrix exponentiation killed mid-computation and resumed ends with the same result (hash) as
//! an uninterrupted run, losing at most one checkpoint interval of work.

mod util;

use std::process::Command;
use std::time::Duration;
use util::spawn_lines;

const BIN: &str = env!("CARGO_BIN_EXE_matexp");

fn cmd(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["48", "1000003"])
        .env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_HEAP_SIZE", "8M");
    c
}

#[test]
fn killed_and_resumed_gives_the_uninterrupted_result() {
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = cmd(plain_dir.path()).arg("--plain").output().unwrap();
    let want = String::from_utf8_lossy(&plain.stdout).trim().to_owned();
    assert!(want.starts_with("DONE "), "{want}");
    for kill_after in [1, 3, 7, 12] {
        let t = tempfile::tempdir().unwrap();
        let (child, rx) = spawn_lines(&mut cmd(t.path()));
        let mut last = 0;
        for _ in 0..kill_after {
            let l = rx.recv_timeout(Duration::from_secs(60)).expect("no step");
            last = l.strip_prefix("STEP ").unwrap().parse::<u32>().unwrap();
        }
        drop(child); // SIGKILL
        let out = cmd(t.path())
            .env("HOTSPARE_RESUME", t.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first_step: Option<u32> = text
            .lines()
            .find_map(|l| l.strip_prefix("STEP "))
            .map(|v| v.parse().unwrap());
        if let Some(s) = first_step {
            assert!(s > last, "resumed at step {s}, but step {last} was durable");
        }
        assert_eq!(
            text.lines().last().unwrap_or_default(),
            want,
            "killed after step {last}"
        );
    }
}
