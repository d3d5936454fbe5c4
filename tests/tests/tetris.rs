//! Tetris failover end to end under tmux: the primary game in one window, `hotspare-resume
//! --exec tetris` in another; a few moves (each a checkpoint), pause, SIGKILL the primary; the
//! spare's window must show the same board and score, resumed. tmux is installed by `.ci/run`;
//! without it the test fails with that reason (it is not skipped).

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is required (.ci/run installs it)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The board and the score/lines/level column, as the pane shows them.
fn board(pane: &str) -> Vec<String> {
    pane.lines()
        .take(22)
        .map(|l| l.trim_end().to_owned())
        .collect()
}

struct Server(String);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[test]
fn the_game_goes_on_on_the_spare_with_the_same_board_and_score() {
    let (tetris, spare) = (util::lib("tetris"), util::lib("hotspare-resume"));
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = dir.join("key");
    std::fs::write(&key, "correct horse battery staple").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sock = format!("hs-tetris-{}", std::process::id());
    let _server = Server(sock.clone());
    let tm = |args: &[&str]| {
        let mut v = vec!["-L", sock.as_str()];
        v.extend_from_slice(args);
        tmux(&v)
    };
    let spare_cmd = format!(
        "HOTSPARE_HEAP_SIZE=16M {} --listen 127.0.0.1:{port} --image-dir {} --key-file {} --exec {} 2>{}",
        spare.display(),
        dir.join("spare").display(),
        key.display(),
        tetris.display(),
        dir.join("spare.log").display()
    );
    tm(&[
        "new-session",
        "-d",
        "-s",
        "g",
        "-x",
        "80",
        "-y",
        "30",
        &spare_cmd,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let primary_cmd = format!(
        "HOTSPARE_HEAP_SIZE=16M HOTSPARE_IMAGE_DIR={} HOTSPARE_SPARE=127.0.0.1:{port} HOTSPARE_KEY_FILE={} exec {} --seed 42 2>{}",
        dir.join("spool").display(),
        key.display(),
        tetris.display(),
        dir.join("primary.log").display()
    );
    tm(&["new-window", "-t", "g", &primary_cmd]);
    let capture = |w: &str| tm(&["capture-pane", "-p", "-t", &format!("g:{w}")]);
    let t0 = Instant::now();
    while !capture("1").contains("every move is a checkpoint") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the primary game did not start:\n{}",
            capture("1")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Play: hard drops and moves (each a checkpoint), then pause so the board stands still.
    for keys in [
        &["Space"][..],
        &["Left", "Left", "Space"],
        &["Up", "Right", "Right", "Space"],
        &["Space"],
        &["p"],
    ] {
        for k in keys {
            tm(&["send-keys", "-t", "g:1", k]);
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = capture("1");
    assert!(before.contains("PAUSED"), "{before}");
    let pid = tm(&["display-message", "-p", "-t", "g:1", "#{pane_pid}"]);
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: killing the game process we started in the tmux pane.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let after = (|| {
        let t0 = Instant::now();
        loop {
            let p = capture("0");
            if p.contains("resumed from checkpoint") {
                return p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no takeover:\n{p}\nspare log:\n{}",
                std::fs::read_to_string(dir.join("spare.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    assert_eq!(
        board(&after),
        board(&before),
        "the spare's board differs\nbefore:\n{before}\nafter:\n{after}"
    );
    assert!(after.contains("PAUSED"));
}
