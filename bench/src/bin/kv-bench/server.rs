//! Starting and stopping the two servers under test, pinned as ../shared/BENCHMARKING.md requires.
//!
//! Both get a fresh scratch directory (Redis's `--dir`, hotspare-kv's image directory) that is
//! removed when the [`Server`] is dropped, after the process has been killed by PID.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::ChildGuard;
use crate::resp::Conn;

/// Which server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Hotspare,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Hotspare => "hotspare-kv",
        }
    }
}

/// Where the programs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub redis_server: PathBuf,
    pub redis_benchmark: PathBuf,
    pub hotspare_kv: PathBuf,
    /// Parent of every scratch directory.
    pub work_dir: PathBuf,
}

/// How to start one server.
#[derive(Debug, Clone)]
pub struct Spec {
    pub kind: Kind,
    /// `HOTSPARE_HEAP_SIZE` for hotspare-kv (ignored for Redis).
    pub heap: String,
    /// hotspare-kv `--plain`: the same server without Hot Spare at all.
    pub plain: bool,
}

impl Spec {
    /// A server sized for `keys` preloaded keys: hotspare-kv's heap is 512M up to 1M keys and
    /// 4G above (a bigger heap than needed could cost scan time per checkpoint, so small runs
    /// do not get the big one).
    pub fn for_keys(kind: Kind, keys: u64) -> Spec {
        Spec {
            kind,
            heap: if keys <= 1_000_000 { "512M" } else { "4G" }.into(),
            plain: false,
        }
    }

    /// The label used in JSON output.
    pub fn label(&self) -> &'static str {
        if self.plain {
            "hotspare-kv-plain"
        } else {
            self.kind.name()
        }
    }
}

/// A running server; killed and its scratch directory removed on drop.
#[derive(Debug)]
pub struct Server {
    pub spec: Spec,
    pub port: u16,
    pub dir: PathBuf,
    log: PathBuf,
    guard: Option<ChildGuard>,
}

pub use hotspare_testkit::free_port;

fn scratch_dir(work: &Path, what: &str) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = work.join(format!(
        "kv-bench-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    crate::procs::register_dir(&d);
    Ok(d)
}

impl Server {
    /// Starts the server and waits (at most 30 s) until it answers PING.
    pub fn start(spec: &Spec, bins: &Binaries) -> Result<Server> {
        let port = free_port();
        let dir = scratch_dir(&bins.work_dir, spec.label())?;
        let log = dir.join("server.log");
        let logf = std::fs::File::create(&log)?;
        let cmd = match spec.kind {
            Kind::Redis => redis_command(&bins.redis_server, port, &dir),
            Kind::Hotspare => hotspare_command(&bins.hotspare_kv, port, &dir, spec)?,
        };
        let mut cmd = cmd;
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let guard = ChildGuard::spawn(cmd, spec.label())?;
        let mut s = Server {
            spec: spec.clone(),
            port,
            dir,
            log,
            guard: Some(guard),
        };
        s.wait_ready(Duration::from_secs(30))
            .with_context(|| format!("{} did not come up; log:\n{}", spec.label(), s.log_tail()))?;
        eprintln!(
            "kv-bench: started {} pid {} on port {port}",
            spec.label(),
            s.pid()
        );
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.guard.as_ref().map_or(0, |g| g.pid())
    }

    pub fn label(&self) -> &'static str {
        self.spec.label()
    }

    pub fn kind(&self) -> Kind {
        self.spec.kind
    }

    pub fn connect(&self) -> Result<Conn> {
        Ok(Conn::local(self.port)?)
    }

    /// Fails if the server process has died (e.g. out of heap) — checked between runs so a
    /// crash is reported as such rather than as a connection error.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.guard.as_mut().and_then(|g| g.exited()) {
            bail!("{} exited ({st}); log:\n{}", self.label(), self.log_tail());
        }
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Ok(mut c) = self.connect() {
                c.set_timeout(Duration::from_secs(2))?;
                if let Ok(r) = c.cmd(&["PING"]) {
                    r.ok()?;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("no PONG within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's stdout/stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.guard.take());
        crate::procs::remove_dir(&self.dir);
    }
}

/// Redis with persistence off (BGSAVE only when the harness asks), the whole process on CPU 0
/// and its background work (BGSAVE child, bio threads, AOF rewrite) on CPU 1.
fn redis_command(bin: &Path, port: u16, dir: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0"]).arg(bin);
    c.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    c.args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
    c.arg("--dir").arg(dir);
    c.args(["--server_cpulist", "0", "--bgsave_cpulist", "1"]);
    c.args(["--bio_cpulist", "1", "--aof_rewrite_cpulist", "1"]);
    c
}

/// hotspare-kv with its serving thread on CPU 0 and checkpoint/writer threads on CPU 1, no
/// periodic checkpoints until the harness sets an interval (`CONFIG SET hotspare-cpt-ms`).
fn hotspare_command(bin: &Path, port: u16, dir: &Path, spec: &Spec) -> Result<Command> {
    if !bin.exists() {
        bail!(
            "{} not found (build it: cargo build --release -p examples-kv)",
            bin.display()
        );
    }
    let mut c = Command::new(bin);
    c.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    c.args(["--serve-cpu", "0", "--background-cpu", "1"]);
    if spec.plain {
        c.arg("--plain");
    } else {
        c.args(["--cpt-ms", "0"]);
    }
    let image = dir.join("image");
    std::fs::create_dir_all(&image)?;
    c.env("HOTSPARE_IMAGE_DIR", &image);
    c.env("HOTSPARE_HEAP_SIZE", &spec.heap);
    Ok(c)
}
