//! Periodic checkpoints during a measurement, driven the same way for every run.
//!
//! * Redis: a side connection of the harness issues BGSAVE every interval; "Background save
//!   already in progress" counts as skipped, and how many actually ran is reported (with
//!   1M keys most BGSAVEs at 50 ms are skipped — the thesis's comparison is per *requested*
//!   interval, so the count matters for reading it).
//! * hotspare-kv, `Timer`: `CONFIG SET hotspare-cpt-ms N` (its own timer), `CONFIG RESETSTAT`
//!   before and `INFO hotspare` after. Checkpoint moments are not visible to the harness.
//! * hotspare-kv, `Command`: a side connection issues `HOTSPARE.CPT` every interval, so the
//!   moments are known — but the command also waits until the checkpoint is durable before the
//!   serving thread goes on, which a timer checkpoint does not: a much longer stall.
//!
//! Interval 0 means "no checkpoints", and still collects the statistics so a run that was
//! meant to be checkpoint-free can be seen to be.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::resp::{info_f64, Conn, Reply};
use crate::server::{Kind, Server};

/// How hotspare-kv checkpoints are triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HsTrigger {
    /// The server's own timer (`CONFIG SET hotspare-cpt-ms`).
    Timer,
    /// `HOTSPARE.CPT` from a side connection of the harness.
    Command,
}

/// What the side thread saw.
#[derive(Debug, Default)]
struct SideLog {
    ran: u64,
    skipped: u64,
    errors: Vec<String>,
    /// Milliseconds after the run's t0 at which a checkpoint/BGSAVE was started.
    marks_ms: Vec<f64>,
    /// `stopped_ms` of each HOTSPARE.CPT reply.
    stopped_ms: Vec<f64>,
}

/// A running checkpoint driver; [`Ticker::finish`] stops it and returns its report.
#[derive(Debug)]
pub struct Ticker {
    kind: Kind,
    interval_ms: u64,
    trigger: HsTrigger,
    ctl: Conn,
    stop: Arc<AtomicBool>,
    side: Option<JoinHandle<Result<SideLog>>>,
    forks_before: f64,
    /// When the run started: the serial client counts its time buckets from here.
    pub t0: Instant,
}

/// The result of one ticker run, as JSON fields.
#[derive(Debug)]
pub struct TickReport {
    pub marks_ms: Vec<f64>,
    pub fields: Value,
}

impl Ticker {
    /// Starts checkpoints every `interval_ms` on `server`. The run starts at [`Ticker::t0`]
    /// (taken after the set-up below); marks are relative to it.
    ///
    /// On hotspare-kv a checkpoint is taken first when the run has checkpoints: otherwise the
    /// run's first checkpoint would carry every page dirtied since the previous checkpointed
    /// run (e.g. during a whole "none" run), inflating its stop time and size — a backlog the
    /// requested interval does not produce.
    pub fn start(server: &Server, interval_ms: u64, trigger: HsTrigger) -> Result<Ticker> {
        let mut ctl = server.connect()?;
        let mut forks_before = 0.0;
        match server.kind() {
            Kind::Redis => {
                wait_bgsave_done(&mut ctl)?;
                forks_before = info_f64(&ctl.info("stats")?, "total_forks").unwrap_or(0.0);
            }
            Kind::Hotspare if !server.spec.plain => {
                if interval_ms > 0 {
                    ctl.set_timeout(Duration::from_secs(600))?;
                    ctl.cmd(&["HOTSPARE.CPT"])?
                        .ok()
                        .context("flush checkpoint")?;
                    ctl.set_timeout(crate::resp::DEFAULT_TIMEOUT)?;
                }
                let timer_ms = if trigger == HsTrigger::Timer {
                    interval_ms
                } else {
                    0
                };
                ctl.cmd(&["CONFIG", "SET", "hotspare-cpt-ms", &timer_ms.to_string()])?
                    .ok()?;
                ctl.cmd(&["CONFIG", "RESETSTAT"])?.ok()?;
            }
            Kind::Hotspare => {}
        }
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let side_needed = interval_ms > 0
            && (server.kind() == Kind::Redis
                || (trigger == HsTrigger::Command && !server.spec.plain));
        let side = if side_needed {
            let conn = server.connect()?;
            let stop = stop.clone();
            let kind = server.kind();
            Some(
                std::thread::Builder::new()
                    .name("ticker".into())
                    .spawn(move || side_loop(conn, kind, interval_ms, t0, &stop))?,
            )
        } else {
            None
        };
        Ok(Ticker {
            kind: server.kind(),
            interval_ms,
            trigger,
            ctl,
            stop,
            side,
            forks_before,
            t0,
        })
    }

    /// Stops the checkpoints, waits for a running BGSAVE to end (so it cannot disturb the next
    /// run), and collects statistics.
    pub fn finish(mut self) -> Result<TickReport> {
        self.stop.store(true, Ordering::Relaxed);
        let log = match self.side.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("ticker thread panicked"))??,
            None => SideLog::default(),
        };
        let mut fields = json!({ "interval_ms": self.interval_ms });
        match self.kind {
            Kind::Redis => {
                wait_bgsave_done(&mut self.ctl)?;
                let stats = self.ctl.info("stats")?;
                let forks = info_f64(&stats, "total_forks").unwrap_or(0.0) - self.forks_before;
                fields["bgsave_requested"] = json!(log.ran + log.skipped);
                fields["bgsave_ran"] = json!(log.ran);
                fields["bgsave_skipped"] = json!(log.skipped);
                fields["forks"] = json!(forks);
                fields["latest_fork_usec"] = json!(info_f64(&stats, "latest_fork_usec"));
            }
            Kind::Hotspare => {
                // Stop the timer first so INFO describes exactly the measured run.
                if self.trigger == HsTrigger::Timer {
                    // Plain mode has no checkpoint config; ignore its error.
                    let _ = self.ctl.cmd(&["CONFIG", "SET", "hotspare-cpt-ms", "0"]);
                } else {
                    fields["cpt_requested"] = json!(log.ran);
                    fields["cpt_stopped_ms"] = json!(log.stopped_ms);
                }
                fields["trigger"] = json!(format!("{:?}", self.trigger).to_lowercase());
                if let Ok(info) = self.ctl.info("hotspare") {
                    for name in [
                        "hotspare_checkpoints",
                        "hotspare_coalesced",
                        "hotspare_failed",
                        "hotspare_stop_ms_median",
                        "hotspare_stop_ms_p99",
                        "hotspare_stop_ms_max",
                        "hotspare_capture_ms_median",
                        "hotspare_capture_ms_p99",
                        "hotspare_bytes_median",
                    ] {
                        fields[name.trim_start_matches("hotspare_")] = json!(info_f64(&info, name));
                    }
                }
            }
        }
        if !log.errors.is_empty() {
            fields["side_errors"] = json!(log.errors);
        }
        Ok(TickReport {
            marks_ms: log.marks_ms,
            fields,
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // On an error path: stop the side thread; its connection closes with it.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.side.take() {
            let _ = h.join();
        }
    }
}

/// Issues a checkpoint every `interval_ms` on a fixed schedule (no drift) until `stop`.
fn side_loop(
    mut conn: Conn,
    kind: Kind,
    interval_ms: u64,
    t0: Instant,
    stop: &AtomicBool,
) -> Result<SideLog> {
    let mut log = SideLog::default();
    let interval = Duration::from_millis(interval_ms);
    let mut next = t0 + interval;
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return Ok(log);
            }
            let left = next.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(5)));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(log);
        }
        let at = crate::serial::round(t0.elapsed().as_secs_f64() * 1e3, 2);
        match kind {
            Kind::Redis => match conn.cmd(&["BGSAVE"])? {
                Reply::Error(e) if e.contains("already in progress") => log.skipped += 1,
                Reply::Error(e) => log.errors.push(e),
                _ => {
                    log.ran += 1;
                    log.marks_ms.push(at);
                }
            },
            Kind::Hotspare => match conn.cmd(&["HOTSPARE.CPT", "NOWAIT"])? {
                Reply::Error(e) => log.errors.push(e),
                r => {
                    log.ran += 1;
                    log.marks_ms.push(at);
                    let text = r.text()?;
                    let v: Value = serde_json::from_str(&text)
                        .with_context(|| format!("HOTSPARE.CPT reply {text:?}"))?;
                    if let Some(ms) = v["stopped_ms"].as_f64() {
                        log.stopped_ms.push(ms);
                    }
                }
            },
        }
        // If a checkpoint took longer than the interval, skip the missed ticks rather than
        // firing a burst to catch up.
        let now = Instant::now();
        next += interval;
        while next <= now {
            next += interval;
        }
    }
}

/// Waits (at most 10 minutes: a 10M-key RDB on a slow disk) until Redis has no BGSAVE running.
pub fn wait_bgsave_done(conn: &mut Conn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let p = conn.info("persistence")?;
        if info_f64(&p, "rdb_bgsave_in_progress") == Some(0.0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("BGSAVE still in progress after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
