//! Child processes that never outlive the harness, and CPU pinning.
//!
//! Every server and `redis-benchmark` the harness starts is held by a [`ChildGuard`] that kills
//! it by PID on drop (so also when a measurement fails with `?`). Drop does not run when the
//! harness itself is signalled, so [`install_signal_reaper`] blocks SIGINT/SIGTERM/SIGHUP and
//! a thread waits for them and kills every registered PID; and each child gets
//! `PR_SET_PDEATHSIG(SIGKILL)` in case the harness is SIGKILLed. Network namespaces the
//! harness creates (`kv-bench commit --link tbf`) are registered too and deleted by the reaper.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// PIDs of live children, for the signal reaper.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// The signal that stopped the harness, if any (0: none).
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// The signal the reaper is handling, if any: errors after it are consequences of the kills.
pub fn signalled() -> Option<i32> {
    Some(SIGNALLED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// Scratch directories in use, removed by the signal reaper after the kills.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers a scratch directory for removal if the harness is signalled.
pub fn register_dir(dir: &Path) {
    if let Ok(mut d) = DIRS.lock() {
        d.push(dir.to_path_buf());
    }
}

/// Removes a scratch directory (after its process is gone) and unregisters it.
pub fn remove_dir(dir: &Path) {
    if let Ok(mut d) = DIRS.lock() {
        d.retain(|p| p != dir);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Network namespaces this harness created (each with a veth `{name}a` in the root namespace),
/// deleted by the signal reaper after the kills.
static NETNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Registers a network namespace named `name` (and the veth `{name}a`) for deletion if the
/// harness is signalled.
pub fn register_netns(name: &str) {
    if let Ok(mut n) = NETNS.lock() {
        n.push(name.to_owned());
    }
}

/// Deletes the network namespace `name` and the veth `{name}a` (errors ignored: either may
/// not exist) and unregisters it. Only names this harness registered get here.
pub fn delete_netns(name: &str) {
    if let Ok(mut n) = NETNS.lock() {
        n.retain(|p| p != name);
    }
    let bounded = |args: &[&str]| {
        let Ok(mut c) = Command::new("ip")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = c.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.wait();
    };
    // Deleting the namespace deletes the veth pair; the link delete covers a veth created
    // but not yet moved into it.
    bounded(&["netns", "del", name]);
    bounded(&["link", "del", &format!("{name}a")]);
}

fn kill_pid(pid: i32) {
    // SAFETY: kill(2) with a PID this process spawned and has not reaped yet (the guard
    // removes it from LIVE before waiting), so the PID cannot have been reused.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this (main) thread — and so in every thread spawned
/// later — and starts a thread that, on any of them, kills all live children and exits.
/// Must be called before any other thread is started. Children get an empty signal mask from
/// `std::process::Command`, so they are unaffected.
pub fn install_signal_reaper() -> Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: error {rc}");
        }
        set
    };
    std::thread::Builder::new()
        .name("signal-reaper".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised sigset_t; sigwait writes one int.
            unsafe { libc::sigwait(&set, &mut sig) };
            SIGNALLED.store(sig, Ordering::SeqCst);
            let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            eprintln!(
                "kv-bench: signal {sig}, killing {} child process(es)",
                pids.len()
            );
            for pid in pids {
                kill_pid(pid);
            }
            // The children must be gone before their directories can be removed.
            std::thread::sleep(std::time::Duration::from_millis(200));
            for d in DIRS.lock().map(|d| d.clone()).unwrap_or_default() {
                let _ = std::fs::remove_dir_all(d);
            }
            for n in NETNS.lock().map(|n| n.clone()).unwrap_or_default() {
                delete_netns(&n);
            }
            std::process::exit(128 + sig);
        })?;
    Ok(())
}

/// A started child process, killed by PID (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Starts `cmd` with a parent-death signal, registered for the signal reaper.
    pub fn spawn(mut cmd: Command, name: &str) -> Result<ChildGuard> {
        // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
        // async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        if let Ok(mut l) = LIVE.lock() {
            l.push(child.id() as i32);
        }
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// `Some(status)` if the child has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the child to exit by itself; kills it and fails after `timeout`.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                self.forget();
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) still running after {:?}; killed",
                    self.name,
                    self.pid(),
                    timeout
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child has been reaped: drop it from the registry and from this guard.
    fn forget(&mut self) {
        if let Some(c) = self.child.take() {
            let pid = c.id() as i32;
            if let Ok(mut l) = LIVE.lock() {
                l.retain(|p| *p != pid);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            if let Ok(mut l) = LIVE.lock() {
                l.retain(|p| *p != pid);
            }
            if c.try_wait().ok().flatten().is_none() {
                kill_pid(pid);
            }
            let _ = c.wait();
        }
    }
}

/// Pins the calling thread to one CPU. The serial client must share CPU 0 with the server's
/// serving thread (see ../shared/BENCHMARKING.md: unpinned loopback round trips on these
/// 2-vCPU VMs get faster when anything else is busy, which would make checkpoints look free).
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data, zero-initialised, CPU_SET writes inside it, and
    // sched_setaffinity(0, ..) only reads it and applies to the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity(cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
