//! Child processes that are always killed by pid, and reading their output line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A child process that is SIGKILLed (by pid) and reaped when dropped.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Killed {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends it a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid(), sig) };
    }
}

impl Killed {
    /// Waits (at most `within`) for it to exit on its own; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let t = std::time::Instant::now();
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st.code();
            }
            assert!(t.elapsed() < within, "process {} did not exit", self.0.id());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A loopback port nobody listens on right now (the kernel's choice, then released).
impl Drop for Killed {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stdout piped; its lines arrive on the receiver as they are printed.
pub fn spawn_lines(cmd: &mut Command) -> (Killed, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (Killed(child), rx)
}

/// The next line, or a panic naming what was expected after 20 s.
pub fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no '{what}' line within 20 s"))
}

/// Runs a command to completion; its stderr as the error when it fails.
pub fn run_ok(args: &[&str]) -> Result<(), String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {args:?}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// `hotspare-resume` listening on `127.0.0.1:port` with the shared key in `key` and its image in
/// `image_dir`; the caller adds the rest (`--exec PROGRAM ARGS…`, environment, output).
pub fn spare_command(port: u16, key: &std::path::Path, image_dir: &std::path::Path) -> Command {
    let mut c = Command::new(crate::paths::lib("hotspare-resume"));
    c.args(["--listen", &format!("127.0.0.1:{port}"), "--key-file"])
        .arg(key)
        .arg("--image-dir")
        .arg(image_dir);
    c
}

/// `program` as the primary of the spare `spare_command(port, key, …)` started: streaming to
/// it with the same key, its local image in `image_dir`, the heap `heap` (`HOTSPARE_HEAP_SIZE`).
pub fn primary_command(
    program: &str,
    port: u16,
    key: &std::path::Path,
    image_dir: &std::path::Path,
    heap: &str,
) -> Command {
    let mut c = Command::new(program);
    c.env("HOTSPARE_HEAP_SIZE", heap)
        .env("HOTSPARE_IMAGE_DIR", image_dir)
        .env("HOTSPARE_SPARE", format!("127.0.0.1:{port}"))
        .env("HOTSPARE_KEY_FILE", key);
    c
}
