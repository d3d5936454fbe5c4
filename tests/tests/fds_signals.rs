//! Resume restores a regular file at the same offset, listening TCP and Unix sockets on the same
//! addresses, reports the connected socket as lost, carries the blob, maps a range registered
//! with `register_range` back, and re-installs the signal handler registered by name.

mod util;

use std::io::Write;
use std::process::Command;
use std::sync::mpsc;
use util::{next_line, spawn_lines, Killed};

fn spawn(dir: &std::path::Path, resume: bool) -> (Killed, mpsc::Receiver<String>) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fdmodel"));
    c.env("FDMODEL_DIR", dir)
        .env("HOTSPARE_IMAGE_DIR", dir.join("image"))
        .env("HOTSPARE_HEAP_SIZE", "8M")
        .env("HOTSPARE_HEAP_BASE", "0x610000000000");
    if resume {
        c.env("HOTSPARE_RESUME", dir.join("image"));
    }
    spawn_lines(&mut c)
}

fn expect(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let l = next_line(rx, prefix);
    assert!(l.starts_with(prefix), "expected '{prefix}', got '{l}'");
    l
}

#[test]
fn files_sockets_signals_and_blobs_survive_a_kill() {
    let t = tempfile::tempdir().unwrap();
    let (first, rx) = spawn(t.path(), false);
    let port: u16 = expect(&rx, "READY ")[6..].parse().unwrap();
    drop(first); // SIGKILL
    let (second, rx) = spawn(t.path(), true);
    expect(&rx, "RESUMED");
    let lost = expect(&rx, "LOST conn ");
    assert!(lost.contains(&format!("127.0.0.1:{port}")), "{lost}");
    assert_eq!(expect(&rx, "BLOB "), "BLOB hi");
    assert_eq!(expect(&rx, "EXTRA "), "EXTRA extra-range-ok");
    expect(&rx, "LOGGED");
    assert_eq!(
        std::fs::read_to_string(t.path().join("log")).unwrap(),
        "hello\nworld\n"
    );
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))
        .expect("listener bound again on the same port");
    c.write_all(b"ping").unwrap();
    assert_eq!(expect(&rx, "TCP "), "TCP ping");
    let mut u = std::os::unix::net::UnixStream::connect(t.path().join("sock")).unwrap();
    u.write_all(b"unix").unwrap();
    assert_eq!(expect(&rx, "UNIX "), "UNIX unix");
    second.signal(libc::SIGUSR1);
    expect(&rx, "SIGNAL usr1");
}

/// The previous incarnation may still hold the port for a while after SIGKILL (a big process is
/// torn down before its sockets close): the resumed program waits for the address instead of
/// failing, and gets it as soon as it is free.
#[test]
fn a_listener_whose_port_is_still_held_is_bound_once_freed() {
    let t = tempfile::tempdir().unwrap();
    let (first, rx) = spawn(t.path(), false);
    let port: u16 = expect(&rx, "READY ")[6..].parse().unwrap();
    drop(first); // SIGKILL
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("port free after kill");
    let (_second, rx) = spawn(t.path(), true);
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(squatter);
    expect(&rx, "RESUMED");
    expect(&rx, "LOST conn ");
    expect(&rx, "BLOB ");
    expect(&rx, "EXTRA ");
    expect(&rx, "LOGGED");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))
        .expect("listener bound again once the port was free");
    c.write_all(b"ping").unwrap();
    assert_eq!(expect(&rx, "TCP "), "TCP ping");
}
