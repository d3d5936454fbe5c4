//! `hotspare switchover --spare ADDR --key-file KEY`: moves the primary role to the spare on
//! purpose, nothing lost. The spare asks its primary to hand over; the primary stops serving
//! at once, hands over once a checkpoint taken after that is acknowledged, and the spare takes
//! over without waiting for silence (`docs/replication.md`, "Planned switchover"). This command
//! only starts it; it then watches the spare's status until it has taken over (or a deadline).

use anyhow::{bail, Context, Result};
use hotspare::replica::wire::{self, Msg};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Starts a switchover at the spare at `addr`; with `wait`, waits (≤ 10 s) until the spare no
/// longer answers as a spare (it became the program) and says how long that took.
pub fn run(addr: &str, key_file: Option<PathBuf>, wait: bool) -> Result<()> {
    let key = wire::load_key(&key_file.context("--spare needs --key-file")?)?;
    let t = Instant::now();
    let (_, answer) =
        wire::request_switchover(addr, &key).map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
    match answer {
        Msg::SwitchoverStarted { pid } => {
            println!("switchover started: primary pid {pid} asked to hand over to {addr}")
        }
        Msg::Refused { reason } => bail!("the spare at {addr} refused the switchover: {reason}"),
        other => bail!("unexpected answer from {addr}: {other:?}"),
    }
    if !wait {
        return Ok(());
    }
    // The spare becomes the program: its port stops answering as a spare.
    while t.elapsed() < Duration::from_secs(10) {
        match wire::request_status(addr, &key) {
            Ok((_, Msg::Status { .. })) => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                println!(
                    "the spare took over {} ms after the request",
                    t.elapsed().as_millis()
                );
                return Ok(());
            }
        }
    }
    bail!("the spare at {addr} still answers as a spare after 10 s: the switchover did not complete (see the primary's log)")
}
