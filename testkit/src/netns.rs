//! Test hosts in network namespaces of our own, on one bridge.

use crate::process::run_ok;
use std::process::Command;

/// Test hosts in network namespaces of our own: `A` at `NET.1`, `B` at `NET.2`, and `C` at
/// `NET.3` holding the bridge they are all on (the client's host). Deleted when dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    /// The /24 network's first three octets, e.g. `10.79.0`.
    pub net: String,
    files: std::collections::HashMap<&'static str, std::fs::File>,
}

impl Lab {
    /// The namespace name of host `h`.
    pub fn ns(&self, h: &str) -> String {
        format!("{}{h}", self.prefix)
    }

    /// Host `h`'s interface (unique per run: a leftover of a crashed run cannot collide).
    fn dev(&self, h: &str) -> String {
        format!("v{h}{}", &self.prefix[1..])
    }

    /// Host `h`'s address: A .1, B .2, C .3, and hosts added later (D, E, F, …) .4 on.
    pub fn ip(&self, h: &str) -> String {
        let n = match h {
            "A" => 1,
            "B" => 2,
            "C" => 3,
            other => 4 + other.bytes().next().map_or(0, |b| b.saturating_sub(b'D')),
        };
        format!("{}.{n}", self.net)
    }

    /// Adds host `h` (a one-letter name from `D`) on the bridge in C.
    pub fn add_host(&mut self, h: &'static str) -> Result<(), String> {
        run_ok(&["ip", "netns", "add", &self.ns(h)])?;
        self.wire(h)?;
        let p = format!("/run/netns/{}", self.ns(h));
        let f = std::fs::File::open(&p).map_err(|e| format!("{p}: {e}"))?;
        self.files.insert(h, f);
        Ok(())
    }

    /// Host `h`'s veth into C's bridge, its address, its links up.
    fn wire(&self, n: &str) -> Result<(), String> {
        let (dev, peer) = (self.dev(n), format!("{}b", self.dev(n)));
        run_ok(&[
            "ip", "link", "add", &dev, "type", "veth", "peer", "name", &peer,
        ])?;
        run_ok(&["ip", "link", "set", &dev, "netns", &self.ns(n)])?;
        run_ok(&["ip", "link", "set", &peer, "netns", &self.ns("C")])?;
        self.exec("C", &["ip", "link", "set", &peer, "master", "br0", "up"])?;
        self.exec(
            n,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.ip(n)),
                "dev",
                &dev,
            ],
        )?;
        self.exec(n, &["ip", "link", "set", &dev, "up"])?;
        self.exec(n, &["ip", "link", "set", "lo", "up"])
    }

    /// Runs a command inside host `h` (`ip netns exec`).
    pub fn exec(&self, h: &str, cmd: &[&str]) -> Result<(), String> {
        let ns = self.ns(h);
        let mut v = vec!["ip", "netns", "exec", ns.as_str()];
        v.extend_from_slice(cmd);
        run_ok(&v)
    }

    /// Creates the three hosts. `Err` says why namespaces cannot be used here.
    pub fn setup(tag: &str, net: &str) -> Result<Lab, String> {
        let mut lab = Lab {
            prefix: format!("h{tag}{}", std::process::id() % 10_000),
            net: net.into(),
            files: Default::default(),
        };
        run_ok(&["ip", "netns", "add", &lab.ns("A")]).map_err(|e| {
            format!("NETWORK NAMESPACES UNAVAILABLE (needs root and iproute2): {e}")
        })?;
        for n in ["B", "C"] {
            run_ok(&["ip", "netns", "add", &lab.ns(n)])?;
        }
        lab.exec("C", &["ip", "link", "add", "br0", "type", "bridge"])?;
        for n in ["A", "B"] {
            lab.wire(n)?;
        }
        lab.exec(
            "C",
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", lab.ip("C")),
                "dev",
                "br0",
            ],
        )?;
        lab.exec("C", &["ip", "link", "set", "br0", "up"])?;
        lab.exec("C", &["ip", "link", "set", "lo", "up"])?;
        for h in ["A", "B", "C"] {
            let p = format!("/run/netns/{}", lab.ns(h));
            let f = std::fs::File::open(&p).map_err(|e| format!("{p}: {e}"))?;
            lab.files.insert(h, f);
        }
        Ok(lab)
    }

    /// A descriptor of host `h`'s network namespace, valid while the lab lives (for
    /// [`enter_netns`] on another thread).
    pub fn fd(&self, h: &str) -> i32 {
        use std::os::fd::AsRawFd;
        self.files[h].as_raw_fd()
    }

    /// Makes `cmd` start inside host `h` (its pid is the program's: no wrapper process).
    pub fn place(&self, h: &str, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.fd(h);
        // SAFETY: between fork and exec only setns(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Moves the calling thread into the network namespace `fd` refers to (its later sockets are
/// there; other threads are not affected).
pub fn enter_netns(fd: i32) -> std::io::Result<()> {
    // SAFETY: setns(2) on a descriptor the caller holds open; affects only this thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        let hosts: Vec<&'static str> = self.files.keys().copied().collect();
        self.files.clear();
        for n in hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .output();
        }
    }
}
