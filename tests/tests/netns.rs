//! Two hosts in network namespaces: the primary in `A`, the spare in `B`, a client in `C`, all
//! on one bridge. The service listens on a virtual IP held by `A`. The primary is SIGKILLed and
//! `A`'s link cut (the machine is "axed"); the spare's takeover hook moves the virtual IP to `B`
//! (`ip addr add` + gratuitous ARP); the client reconnects to the same address and finds every
//! acknowledged key. Needs root and iproute2/arping (`.ci/run` installs them); if namespaces
//! cannot be created the test FAILS with the reason — it is never skipped.

mod util;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use util::Killed;

const VIP: &str = "10.77.0.100";

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The three namespaces, removed (with everything in them) when dropped.
struct Hosts(String);

impl Hosts {
    fn ns(&self, h: &str) -> String {
        format!("{}{h}", self.0)
    }

    /// The host's interface name, unique per run (a leftover of a crashed run cannot collide).
    fn dev(&self, h: &str) -> String {
        format!("v{h}{}", &self.0[2..])
    }

    fn exec(&self, h: &str, cmd: &[&str]) {
        let ns = self.ns(h);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(cmd);
        must(&v);
    }

    fn setup() -> Hosts {
        let h = Hosts(format!("hs{}", std::process::id() % 100_000));
        let add = sh(&["ip", "netns", "add", &h.ns("A")]);
        assert!(
            add.status.success(),
            "NETWORK NAMESPACES UNAVAILABLE, test cannot run: `ip netns add` failed: {} (needs root and iproute2)",
            String::from_utf8_lossy(&add.stderr)
        );
        for n in ["B", "C"] {
            must(&["ip", "netns", "add", &h.ns(n)]);
        }
        h.exec("C", &["ip", "link", "add", "br0", "type", "bridge"]);
        for (n, ip) in [("A", "10.77.0.1/24"), ("B", "10.77.0.2/24")] {
            let (dev, peer) = (h.dev(n), format!("{}b", h.dev(n)));
            must(&[
                "ip", "link", "add", &dev, "type", "veth", "peer", "name", &peer,
            ]);
            must(&["ip", "link", "set", &dev, "netns", &h.ns(n)]);
            must(&["ip", "link", "set", &peer, "netns", &h.ns("C")]);
            h.exec("C", &["ip", "link", "set", &peer, "master", "br0", "up"]);
            h.exec(n, &["ip", "addr", "add", ip, "dev", &dev]);
            h.exec(n, &["ip", "link", "set", &dev, "up"]);
            h.exec(n, &["ip", "link", "set", "lo", "up"]);
        }
        h.exec("C", &["ip", "addr", "add", "10.77.0.3/24", "dev", "br0"]);
        h.exec("C", &["ip", "link", "set", "br0", "up"]);
        h.exec("C", &["ip", "link", "set", "lo", "up"]);
        // Let a gratuitous ARP replace a fresh entry at once (the default lock is 1 s).
        h.exec("C", &["sysctl", "-qw", "net.ipv4.neigh.br0.locktime=0"]);
        h.exec(
            "A",
            &[
                "ip",
                "addr",
                "add",
                &format!("{VIP}/24"),
                "dev",
                &h.dev("A"),
            ],
        );
        h
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in ["A", "B", "C"] {
            let _ = sh(&["ip", "netns", "del", &self.ns(n)]);
        }
    }
}

fn in_ns(h: &Hosts, host: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &h.ns(host)]).arg(program);
    c
}

#[test]
fn takeover_moves_the_virtual_ip_and_the_client_finds_its_data() {
    let arping = sh(&["sh", "-c", "command -v arping"]);
    assert!(
        arping.status.success(),
        "arping is missing: install iputils-arping (.ci/run does)"
    );
    let hosts = Hosts::setup();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let key = dir.join("key");
    std::fs::write(&key, "correct horse battery staple").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (hs, spare_bin) = (util::lib("hotspare-bench"), util::lib("hotspare-resume"));
    let vb = hosts.dev("B");
    let hook = format!("ip addr add {VIP}/24 dev {vb} && arping -q -U -c 1 -I {vb} {VIP}; true");
    let spare = Killed(
        in_ns(&hosts, "B", &spare_bin)
            .args(["--listen", "10.77.0.2:7070", "--key-file"])
            .arg(&key)
            .arg("--image-dir")
            .arg(dir.join("spare"))
            // Generous detection (20 × 10 ms): this test is about moving the address, and a
            // noisy CI machine must not cause a takeover while the primary is alive.
            .args(["--missed", "20", "--on-takeover", &hook, "--exec"])
            .arg(&hs)
            .args(["demo-server", "--bind", VIP, "--port", "9000"])
            .env("HOTSPARE_HEAP_SIZE", "32M")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("spare.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let primary = Killed(
        in_ns(&hosts, "A", &hs)
            .args(["demo-server", "--bind", VIP, "--port", "9000"])
            .env("HOTSPARE_HEAP_SIZE", "32M")
            .env("HOTSPARE_IMAGE_DIR", dir.join("spool"))
            .env("HOTSPARE_SPARE", "10.77.0.2:7070")
            .env("HOTSPARE_KEY_FILE", &key)
            .env("HOTSPARE_LEASE_MS", "150")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("primary.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let client = |args: &[&str]| {
        let o = in_ns(&hosts, "C", &hs)
            .arg("demo-client")
            .arg(format!("{VIP}:9000"))
            .args(args)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let logs = format!(
            "{}\nspare log:\n{}\nprimary log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(dir.join("spare.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("primary.log")).unwrap_or_default()
        );
        assert!(o.status.success(), "client {args:?} failed: {out}{logs}");
        out
    };
    // Wait for the service on the virtual IP, then write 300 acknowledged keys.
    let t0 = Instant::now();
    loop {
        let o = in_ns(&hosts, "C", &hs)
            .arg("demo-client")
            .arg(format!("{VIP}:9000"))
            .args(["--check", "0"])
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the primary never answered on {VIP}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client(&["--set", "300"]).trim(), "ACKED 300");
    // The primary's machine dies: process killed, link cut.
    drop(primary);
    hosts.exec("A", &["ip", "link", "set", &hosts.dev("A"), "down"]);
    let out = client(&["--check", "300"]);
    assert!(out.contains("LOST 0 of 300"), "{out}");
    let slog = std::fs::read_to_string(dir.join("spare.log")).unwrap();
    assert!(slog.contains("takeover hook done"), "{slog}");
    eprintln!("netns failover: {}", out.trim());
    drop(spare);
}
