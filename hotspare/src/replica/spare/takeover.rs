//! What happens once the protocol says "take over": the hook (bounded in time, and a failure
//! stops the takeover — a fencing hook that fails must not let a second primary start), then
//! `exec` of the program in resume mode.

use super::{log, SpareConfig, SpareError};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

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
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("exited with {s}")),
            Ok(None) if t.elapsed() >= limit => {
                // SAFETY: kill(2) on the hook's own process group (it was made its leader).
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "still running after {} ms; killed",
                    limit.as_millis()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e.to_string()),
        }
    }
}
