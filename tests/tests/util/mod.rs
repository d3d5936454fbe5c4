//! Helpers shared by the integration tests: paths to the built libraries, compiling C test
//! programs, and child processes that are always killed by pid.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>`: the test binary lives in `target/<profile>/deps/`.
pub fn profile_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A library built by `cargo build --workspace` (which `scripts/test.sh` runs first).
pub fn lib(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// Compiles `tests/c/<source>` with `-Wall -Wextra -Werror` against the headers in `include`.
pub fn compile_c(source: &str, include: &str, out: &Path, link: &[&str]) {
    let status = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o"])
        .arg(out)
        .arg("-I")
        .arg(repo().join(include))
        .arg(repo().join("tests/c").join(source))
        .args(link)
        .status()
        .expect("gcc must be installed (.ci/run installs it)");
    assert!(status.success(), "gcc failed for {}", out.display());
}

/// Link arguments for a shared library in the profile directory, with an rpath to it.
pub fn link_shared(libname: &str) -> Vec<String> {
    let so = lib(&format!("lib{libname}.so"));
    let dir = so.parent().unwrap().to_str().unwrap().to_owned();
    vec![
        "-L".into(),
        dir.clone(),
        format!("-l{libname}"),
        format!("-Wl,-rpath,{dir}"),
    ]
}

/// A child process that is SIGKILLed (by pid) and reaped when dropped.
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
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 20 s) until something listens on a loopback port.
pub fn wait_port(port: u16) {
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

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
