//! What happens once the protocol says "take over": the hook (bounded in time, and a failure
//! stops the takeover — a fencing hook that fails must not let a second primary start), then
//! `exec` of the program in resume mode.

use super::{log, SpareConfig, SpareError};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// Runs the takeover hook, then becomes the program. Returns only on failure.
pub(super) fn become_program(cfg: &SpareConfig, term: u64) -> SpareError {
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
                return SpareError::Hook(why);
            }
        }
    }
    super::super::log::flush(Duration::from_millis(200));
    let program = cfg.exec[0].clone();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&cfg.exec[1..])
        .env("HOTSPARE_RESUME", dir)
        .env("HOTSPARE_IMAGE_DIR", dir)
        .env("HOTSPARE_TERM", term.to_string());
    if let Some(a) = &cfg.arbiter {
        // The resumed program registers at the arbiter with the term this spare won there.
        cmd.env("HOTSPARE_ARBITER", a.endpoints.join(","))
            .env("HOTSPARE_SERVICE", &a.service)
            .env("HOTSPARE_NODE", &a.node)
            .env(
                "HOTSPARE_ARBITER_ADOPT",
                hotspare_proto::arbiter::claim_holder(&a.node, term),
            );
    }
    let e = cmd.exec();
    SpareError::Exec { program, source: e }
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
