//! A test program for metadata across a resume: a log file (offset), a TCP and a Unix listener,
//! a connected socket, a SIGUSR1 handler registered by name, a blob. See `tests/fds_signals.rs`.
//!
//! `FDMODEL_DIR=<dir> fdmodel` prints `READY <port>` once its first checkpoint is durable. On
//! resume it prints `RESUMED`, the lost connections and the blob, appends to the log at the
//! restored offset, accepts one TCP and one Unix connection, waits for SIGUSR1, and exits.

use hotspare::HotSpare;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static GOT_USR1: AtomicBool = AtomicBool::new(false);

/// An extra range registered with `register_range`, outside the checkpoint heap.
const EXTRA: usize = 0x6200_0000_0000;

extern "C" fn on_usr1(_: libc::c_int) {
    GOT_USR1.store(true, Ordering::SeqCst);
}

fn say(s: &str) {
    let mut o = std::io::stdout();
    writeln!(o, "{s}").unwrap();
    o.flush().unwrap();
}

fn worker(hs: &HotSpare) {
    if hs.resumed().is_none() {
        let st = hs.cpt().expect("cpt");
        hs.wait_durable(st.seq).expect("durable");
        let port = hs.tcp_listener("tcp").unwrap().local_addr().unwrap().port();
        say(&format!("READY {port}"));
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    say("RESUMED");
    for (name, local, peer) in hs.lost_connections() {
        say(&format!("LOST {name} {local} {peer}"));
    }
    say(&format!(
        "BLOB {}",
        String::from_utf8_lossy(&hs.blob("greeting").unwrap_or_default())
    ));
    // SAFETY: resume mapped the registered range back at EXTRA; it holds a 14-byte marker.
    let extra = unsafe { std::slice::from_raw_parts(EXTRA as *const u8, 14) };
    say(&format!("EXTRA {}", String::from_utf8_lossy(extra)));
    let mut log = hs.file("log").expect("log file restored");
    log.write_all(b"world\n").unwrap();
    say("LOGGED");
    let (mut c, _) = hs
        .tcp_listener("tcp")
        .expect("tcp listener restored")
        .accept()
        .unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    say(&format!("TCP {}", String::from_utf8_lossy(&b)));
    let (mut u, _) = hs
        .unix_listener("unix")
        .expect("unix listener restored")
        .accept()
        .unwrap();
    u.read_exact(&mut b).unwrap();
    say(&format!("UNIX {}", String::from_utf8_lossy(&b)));
    while !GOT_USR1.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    say("SIGNAL usr1");
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("fdmodel: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::var("FDMODEL_DIR")?);
    let Some(hs) = HotSpare::builder()?
        .worker("main", worker)
        .signal_handler("usr1", on_usr1)
        .start()?
        .fresh_or_run()
    else {
        return Ok(());
    };
    let log_path = dir.join("log");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&log_path)?;
    log.write_all(b"hello\n")?;
    hs.add_file("log", log, log_path.to_str().unwrap(), true)?;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let conn = std::net::TcpStream::connect(tcp.local_addr()?)?;
    hs.add_tcp_listener("tcp", tcp)?;
    hs.add_connection("conn", conn)?;
    hs.add_unix_listener(
        "unix",
        std::os::unix::net::UnixListener::bind(dir.join("sock"))?,
    )?;
    hs.sigreg(libc::SIGUSR1, "usr1")?;
    hs.set_blob("greeting", b"hi");
    // SAFETY: a fresh anonymous mapping at a fixed address that must be free.
    let p = unsafe {
        libc::mmap(
            EXTRA as *mut _,
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    anyhow::ensure!(p as usize == EXTRA, "cannot map the extra range");
    // SAFETY: writing into the page just mapped.
    unsafe { std::ptr::copy_nonoverlapping(b"extra-range-ok".as_ptr(), p.cast::<u8>(), 14) };
    hs.register_range(EXTRA, 8192)?;
    hs.run();
    Ok(())
}
