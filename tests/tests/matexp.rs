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

/// The reference run prints its steps too: its result is the last line.
fn last_line(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn killed_and_resumed_gives_the_uninterrupted_result() {
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = cmd(plain_dir.path()).arg("--plain").output().unwrap();
    let want = last_line(&plain.stdout);
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

/// The same computation with a spare: the primary streams each step's checkpoint to
/// `hotspare-resume`, is SIGKILLed mid-computation, and the spare resumes it to the same result.
#[test]
fn killed_primary_is_finished_by_the_spare_with_the_same_result() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = cmd(plain_dir.path()).arg("--plain").output().unwrap();
    let want = last_line(&plain.stdout);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = dir.join("key");
    std::fs::write(&key, "matexp failover key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut spare = Command::new(util::lib("hotspare-resume"));
    spare
        .args(["--listen", &format!("127.0.0.1:{port}"), "--key-file"])
        .arg(&key)
        .arg("--image-dir")
        .arg(dir.join("spare"))
        .args(["--missed", "10", "--exec", BIN, "48", "1000003"])
        .env("HOTSPARE_HEAP_SIZE", "8M")
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("spare.log")).unwrap(),
        ));
    let (_spare, spare_out) = spawn_lines(&mut spare);
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "spare not listening"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut primary = cmd(&dir.join("spool"));
    primary
        .env("HOTSPARE_SPARE", format!("127.0.0.1:{port}"))
        .env("HOTSPARE_KEY_FILE", &key)
        .env("HOTSPARE_LEASE_MS", "80");
    let (p, rx) = spawn_lines(&mut primary);
    let mut last = 0;
    for _ in 0..5 {
        let l = rx.recv_timeout(Duration::from_secs(60)).expect("no step");
        last = l.strip_prefix("STEP ").unwrap().parse::<u32>().unwrap();
    }
    drop(p); // SIGKILL: step `last` was durable on the spare
    let mut lines = Vec::new();
    loop {
        let l = spare_out
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "the spare did not finish: {lines:?}\n{}",
                    std::fs::read_to_string(dir.join("spare.log")).unwrap_or_default()
                )
            });
        let done = l.starts_with("DONE ");
        lines.push(l);
        if done {
            break;
        }
    }
    if let Some(s) = lines.iter().find_map(|l| l.strip_prefix("STEP ")) {
        let s: u32 = s.parse().unwrap();
        assert!(
            s > last,
            "the spare resumed at step {s}, but step {last} was acknowledged"
        );
    }
    assert_eq!(lines.last().unwrap(), &want);
}
