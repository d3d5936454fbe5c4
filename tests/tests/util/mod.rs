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

// ---- Helpers of the real-process fault suite (tests/tests/faults/) ----

/// Nanoseconds of the realtime clock (what `date +%s%N` prints, so a takeover hook's time stamp
/// and the test's own can be compared).
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+…`
    Simple(String),
    /// `-…`
    Error(String),
    /// `:…`
    Int(i64),
    /// `$…` (`None`: the null bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*…`
    Array(Option<Vec<Reply>>),
}

/// Parses one reply from the start of `b`: `Ok(Some((reply, bytes used)))`, `Ok(None)` if
/// incomplete.
fn parse_reply(b: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if eol == 0 {
        return Err("empty reply line".into());
    }
    let line = String::from_utf8_lossy(&b[1..eol]).into_owned();
    let used = eol + 2;
    let num = || {
        line.parse::<i64>()
            .map_err(|_| format!("bad number {line:?}"))
    };
    match b[0] {
        b'+' => Ok(Some((Reply::Simple(line), used))),
        b'-' => Ok(Some((Reply::Error(line), used))),
        b':' => Ok(Some((Reply::Int(num()?), used))),
        b'$' => {
            let n = num()?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), used)));
            }
            let end = used + n as usize;
            if b.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(b[used..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = num()?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), used)));
            }
            let mut at = used;
            let mut items = Vec::new();
            for _ in 0..n {
                match parse_reply(&b[at..])? {
                    Some((r, k)) => {
                        items.push(r);
                        at += k;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        c => Err(format!("unknown reply type {:?}", c as char)),
    }
}

/// A blocking RESP2 client on one TCP connection (every read bounded by a timeout).
pub struct RespConn {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl RespConn {
    /// Connects (within `timeout`); replies must come within `read_timeout`.
    pub fn connect(
        addr: std::net::SocketAddr,
        timeout: Duration,
        read_timeout: Duration,
    ) -> std::io::Result<RespConn> {
        let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(read_timeout))?;
        stream.set_write_timeout(Some(read_timeout))?;
        Ok(RespConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// The socket.
    pub fn stream(&self) -> &std::net::TcpStream {
        &self.stream
    }

    /// Sends one command (as an array of bulk strings) without waiting for its reply.
    pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)
    }

    /// The next reply (`UnexpectedEof` if the server closed the connection).
    pub fn read(&mut self) -> std::io::Result<Reply> {
        use std::io::Read;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send(&a)?;
        self.read()
    }

    /// The pid of the server process answering this connection (`INFO server`'s `process_id`).
    pub fn server_pid(&mut self) -> std::io::Result<i32> {
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        match self.cmd(&["INFO", "server"])? {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b)
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad("INFO server has no process_id".into())),
            other => Err(bad(format!("INFO server answered {other:?}"))),
        }
    }
}

/// A tmpfs mounted for a test, unmounted (lazily if it is still busy) when dropped.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`) on `path` (created if missing).
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mount -t tmpfs on {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// An ext4 file system on a loop device over a sparse file, mounted on `mnt`: a disk of our own
/// that [`LoopExt4::freeze`] can make hang (`fsfreeze`: every write and `fsync` on it blocks
/// until [`LoopExt4::thaw`], reads go on). Thawed, unmounted and detached when dropped.
pub struct LoopExt4 {
    pub mnt: PathBuf,
    dev: String,
}

impl LoopExt4 {
    /// A `size_mib` MiB file system backed by `backing` (created), mounted on `mnt` (created).
    pub fn mount(backing: &Path, mnt: &Path, size_mib: u64) -> Result<LoopExt4, String> {
        let f =
            std::fs::File::create(backing).map_err(|e| format!("{}: {e}", backing.display()))?;
        f.set_len(size_mib << 20)
            .map_err(|e| format!("{}: {e}", backing.display()))?;
        drop(f);
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .map_err(|e| format!("cannot run losetup: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let disk = LoopExt4 {
            mnt: mnt.to_path_buf(),
            dev,
        };
        std::fs::create_dir_all(mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        run_ok(&["mkfs.ext4", "-q", "-F", &disk.dev])?;
        run_ok(&["mount", &disk.dev, &mnt.to_string_lossy()])?;
        Ok(disk)
    }

    /// Makes every write to the file system block (`fsfreeze -f`).
    pub fn freeze(&self) -> Result<(), String> {
        run_ok(&["fsfreeze", "-f", &self.mnt.to_string_lossy()])
    }

    /// Lets blocked writes go on (`fsfreeze -u`).
    pub fn thaw(&self) -> Result<(), String> {
        run_ok(&["fsfreeze", "-u", &self.mnt.to_string_lossy()])
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = self.thaw();
        let m = self.mnt.to_string_lossy().into_owned();
        if run_ok(&["umount", &m]).is_err() {
            let _ = run_ok(&["umount", "-l", &m]);
        }
        let _ = run_ok(&["losetup", "-d", &self.dev]);
    }
}

/// Test hosts in network namespaces of our own: `A` at `NET.1`, `B` at `NET.2`, and `C` at
/// `NET.3` holding the bridge they are all on (the client's host). Deleted when dropped.
pub struct Lab {
    prefix: String,
    /// The /24 network's first three octets, e.g. `10.79.0`.
    pub net: String,
    files: std::collections::HashMap<&'static str, std::fs::File>,
}

fn run_ok(args: &[&str]) -> Result<(), String> {
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

/// A one-member etcd (Debian's `etcd-server`, 3.4) inside host `h` of a [`Lab`], its data on a
/// tmpfs of its own (an `fsync` on a shared, noisy disk must not decide the test's timing):
/// killed by pid and unmounted when dropped.
pub struct Etcd {
    child: Option<Killed>,
    data: Option<Tmpfs>,
    /// Its client URL.
    pub endpoint: String,
    /// How it was started, for [`Etcd::restart`]: its host, name, address, cluster and log.
    how: (String, String, String, String, PathBuf),
}

impl Etcd {
    /// Starts it listening on `ip:2379` in host `h`; waits (bounded) until it answers.
    pub fn start(lab: &Lab, h: &str, ip: &str, dir: &Path, log: &Path) -> Result<Etcd, String> {
        let e = Etcd::member(
            lab,
            h,
            "arbiter",
            ip,
            &format!("arbiter=http://{ip}:2380"),
            dir,
            log,
        )?;
        e.wait_healthy(lab, h, Duration::from_secs(15))?;
        Ok(e)
    }

    /// Starts members of one cluster, one per host of `hosts` (named after them), with fast
    /// elections (10 ms heartbeats, 100 ms election timeout: a test must not wait a second for
    /// a new leader) and pre-vote; waits (bounded) until every one answers.
    pub fn cluster(lab: &Lab, hosts: &[&str], dir: &Path) -> Result<Vec<Etcd>, String> {
        let initial: Vec<String> = hosts
            .iter()
            .map(|h| format!("m{h}=http://{}:2380", lab.ip(h)))
            .collect();
        let initial = initial.join(",");
        let mut v = Vec::new();
        for h in hosts {
            let log = dir.join(format!("etcd-{h}.log"));
            v.push(Etcd::member(
                lab,
                h,
                &format!("m{h}"),
                &lab.ip(h),
                &initial,
                dir,
                &log,
            )?);
        }
        for (h, e) in hosts.iter().zip(&v) {
            e.wait_healthy(lab, h, Duration::from_secs(20))?;
        }
        Ok(v)
    }

    fn member(
        lab: &Lab,
        h: &str,
        name: &str,
        ip: &str,
        initial_cluster: &str,
        dir: &Path,
        log: &Path,
    ) -> Result<Etcd, String> {
        let etcd = Command::new("etcd").arg("--version").output();
        if !etcd.is_ok_and(|o| o.status.success()) {
            return Err(
                "ETCD UNAVAILABLE: install etcd-server (Debian's, 3.4; .ci/run does)".into(),
            );
        }
        let data = Tmpfs::mount(&dir.join(format!("etcd-data-{name}")), "128m")?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Etcd::spawn(lab, h, name, ip, initial_cluster, &data.0, log_file)?;
        Ok(Etcd {
            child: Some(child),
            data: Some(data),
            endpoint: format!("http://{ip}:2379"),
            how: (
                h.into(),
                name.into(),
                ip.into(),
                initial_cluster.into(),
                log.to_path_buf(),
            ),
        })
    }

    /// The etcd process of a member whose data directory is under `data`.
    fn spawn(
        lab: &Lab,
        h: &str,
        name: &str,
        ip: &str,
        initial_cluster: &str,
        data: &Path,
        log: std::fs::File,
    ) -> Result<Killed, String> {
        let endpoint = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let mut c = Command::new("etcd");
        c.args(["--name", name, "--data-dir"])
            .arg(data.join("member"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            // As docs/operations.md asks (etcd 3.5's default): without it a member cut off from
            // the leader keeps raising its term, and forces an election when the cut heals.
            .arg("--pre-vote")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        lab.place(h, &mut c);
        Ok(Killed(
            c.spawn().map_err(|e| format!("starting etcd: {e}"))?,
        ))
    }

    /// Starts a member killed by [`Etcd::kill`] again, on the data it kept (it rejoins its
    /// cluster: etcd ignores the initial-cluster flags when its data directory exists); waits
    /// (bounded) until it answers. Its log goes on in the same file.
    pub fn restart(&mut self, lab: &Lab) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd member restarted while running");
        let (h, name, ip, initial, log) = self.how.clone();
        let data = self
            .data
            .as_ref()
            .expect("the data outlive the process")
            .0
            .clone();
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        self.child = Some(Etcd::spawn(lab, &h, &name, &ip, &initial, &data, log_file)?);
        self.wait_healthy(lab, &h, Duration::from_secs(20))
    }

    /// Waits (bounded) until `etcdctl endpoint health` passes for this member, run in host `h`.
    pub fn wait_healthy(&self, lab: &Lab, h: &str, within: Duration) -> Result<(), String> {
        let e = self;
        let t = std::time::Instant::now();
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &lab.ns(h), "etcdctl", "--endpoints"])
                .arg(&e.endpoint)
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            if t.elapsed() > within {
                return Err(format!(
                    "etcd at {} did not become healthy within {} s",
                    e.endpoint,
                    within.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether this member is its cluster's leader (`etcdctl endpoint status`, run in `h`).
    pub fn is_leader(&self, lab: &Lab, h: &str) -> bool {
        let o = Command::new("ip")
            .args(["netns", "exec", &lab.ns(h), "etcdctl", "--endpoints"])
            .arg(&self.endpoint)
            .args(["endpoint", "status", "-w", "fields"])
            .env("ETCDCTL_API", "3")
            .output();
        let Ok(o) = o else { return false };
        let text = String::from_utf8_lossy(&o.stdout);
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("\"{name}\"")))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        };
        field("MemberID").is_some() && field("MemberID") == field("Leader")
    }

    /// Kills the member (by pid), keeping its data.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// `etcdctl get KEY --print-value-only`, run in host `h`.
    pub fn get(&self, lab: &Lab, h: &str, key: &str) -> Result<String, String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &lab.ns(h), "etcdctl", "--endpoints"])
            .arg(&self.endpoint)
            .args(["get", key, "--print-value-only"])
            .env("ETCDCTL_API", "3")
            .output()
            .map_err(|e| format!("etcdctl: {e}"))?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // The process first (by pid), then its tmpfs.
        drop(self.child.take());
        drop(self.data.take());
    }
}
