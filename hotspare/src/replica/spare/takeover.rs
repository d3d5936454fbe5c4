//! What happens once the protocol says "take over": the hook (bounded in time, and a failure
//! stops the takeover — a fencing hook that fails must not let a second primary start), then
//! `exec` of the program in resume mode.

use super::{log, SpareConfig, SpareError};
use crate::image::identity::{ExeId, EXE_ID_ENV};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The identities of the programs this daemon may start ([`ExeId::of_file`]), by path: whether
/// a hashing thread is at work on it, and the last identity got.
type ExeIds = Mutex<HashMap<PathBuf, (bool, Option<String>)>>;

fn exe_ids() -> &'static ExeIds {
    static IDS: OnceLock<ExeIds> = OnceLock::new();
    IDS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Hashes the program (`exec[0]`, if it is a path) on a thread of its own, so that the
/// program started at the takeover need not hash itself before it can check the image is its
/// own ([`EXE_ID_ENV`]): that was a third of a planned switchover's pause. Hashed again when
/// the file changed since (a fleet daemon outlives upgrades of its programs). A program not
/// hashed yet, or changed since, hashes itself as before.
pub(super) fn hash_program_ahead(cfg: &SpareConfig) {
    let Some(p) = cfg.exec.first().filter(|p| p.contains('/')) else {
        return;
    };
    let p = PathBuf::from(p);
    {
        let mut ids = exe_ids().lock().unwrap_or_else(|e| e.into_inner());
        let e = ids.entry(p.clone()).or_insert((false, None));
        let current = e.1.as_deref().is_some_and(|id| ExeId::names_file(id, &p));
        if e.0 || current {
            return;
        }
        e.0 = true;
    }
    let _ = std::thread::Builder::new()
        .name("hotspare-exe-id".into())
        .spawn(move || {
            let id = ExeId::of_file(&p);
            exe_ids()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p, (false, id));
        });
}

/// Hands the program its identity if it was hashed ahead (the program checks that it names
/// the file it runs).
fn pass_exe_id(cmd: &mut std::process::Command, program: &str) {
    let id = exe_ids()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(Path::new(program))
        .and_then(|(_, id)| id.clone());
    match id {
        Some(v) => cmd.env(EXE_ID_ENV, v),
        None => cmd.env_remove(EXE_ID_ENV),
    };
}

/// Runs the takeover hook, then becomes the program. Returns only on failure.
pub(super) fn become_program(cfg: &SpareConfig, term: u64) -> SpareError {
    match program(cfg, term) {
        Ok(mut cmd) => {
            let e = cmd.exec();
            SpareError::Exec {
                program: cfg.exec[0].clone(),
                source: e,
            }
        }
        Err(e) => e,
    }
}

/// Runs the takeover hook, then starts the program as a child in a session of its own (it
/// outlives this daemon: a daemon restarted under it finds the image in use and waits).
pub(super) fn start_program(
    cfg: &SpareConfig,
    term: u64,
) -> Result<std::process::Child, SpareError> {
    spawn(cfg, program(cfg, term)?)
}

/// Starts the program fresh (no image to resume: the service's first start), its image
/// directory the spare's, registering at the arbiter if one is configured; a child in a
/// session of its own, as [`start_program`]. `previous`: the pid of an earlier first start of
/// this daemon's that has ended (it may have registered at the arbiter before failing: the
/// new start may take over that record, and only that one — see `primary.rs`'s holder).
pub(super) fn start_fresh(
    cfg: &SpareConfig,
    previous: Option<u32>,
) -> Result<std::process::Child, SpareError> {
    let mut cmd = std::process::Command::new(&cfg.exec[0]);
    // The hosts of a fleet start together: its spare's daemon may be a while coming up, and
    // a first checkpoint without a spare fails the start (and a start that registered at the
    // arbiter and failed leaves the service's term held by a dead process).
    if std::env::var_os("HOTSPARE_SPARE_WAIT_MS").is_none() {
        cmd.env("HOTSPARE_SPARE_WAIT_MS", "30000");
    }
    cmd.args(&cfg.exec[1..])
        .envs(cfg.program_env.iter().map(|(k, v)| (k, v)))
        .env_remove("HOTSPARE_RESUME")
        .env_remove("HOTSPARE_TERM")
        .env_remove("HOTSPARE_ARBITER_ADOPT")
        .env("HOTSPARE_IMAGE_DIR", &cfg.image_dir);
    pass_exe_id(&mut cmd, &cfg.exec[0]);
    if let Some(a) = &cfg.arbiter {
        arbiter_env(&mut cmd, a);
        if let Some(pid) = previous {
            cmd.env("HOTSPARE_ARBITER_ADOPT", format!("{} pid {pid}", a.node));
        }
    }
    std::fs::create_dir_all(&cfg.image_dir).map_err(|source| SpareError::Setup {
        what: format!("creating {}", cfg.image_dir.display()),
        source,
    })?;
    spawn(cfg, cmd)
}

/// The arbiter's settings, TLS files included, for the program (over whatever its own
/// environment says).
fn arbiter_env(cmd: &mut std::process::Command, a: &crate::replica::ArbiterConfig) {
    for (k, v) in a.program_env() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
}

fn spawn(
    cfg: &SpareConfig,
    mut cmd: std::process::Command,
) -> Result<std::process::Child, SpareError> {
    // SAFETY: setsid(2) is async-signal-safe, and the closure touches nothing else between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd.spawn().map_err(|source| SpareError::Exec {
        program: cfg.exec[0].clone(),
        source,
    })
}

/// The hook, run; then the program's command with its resume environment.
fn program(cfg: &SpareConfig, term: u64) -> Result<std::process::Command, SpareError> {
    let dir = &cfg.image_dir;
    if let Some(cmd) = &cfg.on_takeover {
        let t = Instant::now();
        match run_hook(cmd, term, dir, cfg.hook_timeout) {
            Ok(()) => log(format!(
                "takeover hook done in {} ms",
                t.elapsed().as_millis()
            )),
            Err(why) => {
                log(format!(
                    "takeover hook failed: {why}; NOT starting the program (fail closed)"
                ));
                return Err(SpareError::Hook(why));
            }
        }
    }
    super::super::log::flush(Duration::from_millis(200));
    let mut cmd = std::process::Command::new(&cfg.exec[0]);
    cmd.args(&cfg.exec[1..])
        .envs(cfg.program_env.iter().map(|(k, v)| (k, v)))
        .env("HOTSPARE_RESUME", dir)
        .env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_TERM", term.to_string());
    pass_exe_id(&mut cmd, &cfg.exec[0]);
    if let Some(a) = &cfg.arbiter {
        // The resumed program registers at the arbiter with the term this spare won there.
        arbiter_env(&mut cmd, a);
        cmd.env(
            "HOTSPARE_ARBITER_ADOPT",
            hotspare_proto::arbiter::claim_holder(&a.node, term),
        );
    }
    Ok(cmd)
}

fn run_hook(cmd: &str, term: u64, dir: &std::path::Path, limit: Duration) -> Result<(), String> {
    let mut child = std::process::Command::new("sh")
        .args(["-c", cmd])
        .env("HOTSPARE_TERM", term.to_string())
        .env("HOTSPARE_IMAGE_DIR", dir)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not run: {e}"))?;
    let t = Instant::now();
    let exited = ExitWatch::open(child.id());
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("exited with {s}")),
            Ok(None) if t.elapsed() >= limit => {
                // SAFETY: kill(2) on the hook's own process group (it was made its leader, and
                // is not reaped yet: `try_wait` just found it running).
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "still running after {} ms; killed",
                    limit.as_millis()
                ));
            }
            Ok(None) => exited.wait(limit.saturating_sub(t.elapsed())),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Wakes up as soon as a child exits, without reaping it (a `pidfd`), so that the takeover
/// goes on the moment its hook is done: a 2 ms polling sleep was up to 2 ms of every takeover.
/// Where `pidfd_open` is missing (Linux before 5.3) it sleeps 1 ms instead.
struct ExitWatch(Option<std::os::fd::OwnedFd>);

impl ExitWatch {
    fn open(pid: u32) -> ExitWatch {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; it
        // touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        ExitWatch(
            i32::try_from(fd)
                .ok()
                .filter(|fd| *fd >= 0)
                // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
                .map(|fd| unsafe {
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                }),
        )
    }

    /// Until the child exits, or at most `limit`.
    fn wait(&self, limit: Duration) {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.0 else {
            std::thread::sleep(limit.min(Duration::from_millis(1)));
            return;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}
