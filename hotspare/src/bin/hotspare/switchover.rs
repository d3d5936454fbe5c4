//! `hotspare switchover --spare ADDR --key-file KEY`: moves the primary role to the spare on
//! purpose, nothing lost. The spare asks its primary to hand over; the primary stops serving
//! at once, hands over once a checkpoint taken after that is acknowledged, and the spare takes
//! over without waiting for silence (`docs/replication.md`, "Planned switchover"). This command
//! only starts it (`SERVICE --fleet FILE` finds the spare from a fleet file); it then watches the spare's status until it has taken over (or a deadline).

use anyhow::{bail, Context, Result};
use hotspare::replica::wire::{self, Msg};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `hotspare switchover SERVICE --fleet FILE`: finds the service's spare from this host's
/// fleet file and its fleet status, then as [`run`].
pub fn run_in_fleet(file: &Path, service: &str, wait: bool) -> Result<()> {
    let fleet = hotspare::replica::spare::fleet_file::load(file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let s = fleet
        .services
        .iter()
        .find(|s| s.name == service)
        .with_context(|| format!("{}: no service {service}", file.display()))?;
    let status = fleet
        .status
        .as_ref()
        .with_context(|| format!("{}: no status file configured", file.display()))?;
    let text = std::fs::read_to_string(status)
        .with_context(|| format!("{}: is the fleet daemon running?", status.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let state = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == service))
        .and_then(|e| e["state"].as_str().map(str::to_string))
        .with_context(|| format!("{}: no entry for {service}", status.display()))?;
    let addr = match state.as_str() {
        // This host keeps its image: ask our own spare (a wildcard address on loopback).
        "spare" => {
            let mut a: std::net::SocketAddr = s
                .spare
                .listen
                .parse()
                .with_context(|| format!("listen address {}", s.spare.listen))?;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a.to_string()
        }
        // The program runs here: its spare is where it streams to.
        "primary" => s
            .spare
            .program_env
            .iter()
            .find(|(k, _)| k == "HOTSPARE_SPARE")
            .map(|(_, v)| v.clone())
            .with_context(|| format!("{service} runs here, but its env names no HOTSPARE_SPARE"))?,
        other => bail!("{service} is {other} on this host: no switchover now"),
    };
    println!("{service}: asking its spare at {addr}");
    start(&addr, &s.spare.key, wait)
}

/// Starts a switchover at the spare at `addr`; with `wait`, waits (≤ 10 s) until the spare no
/// longer answers as a spare (it became the program) and says how long that took.
pub fn run(addr: &str, key_file: Option<PathBuf>, wait: bool) -> Result<()> {
    let key = wire::load_key(&key_file.context("--spare needs --key-file")?)?;
    start(addr, &key, wait)
}

fn start(addr: &str, key: &wire::Key, wait: bool) -> Result<()> {
    let t = Instant::now();
    let (_, answer) =
        wire::request_switchover(addr, key).map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
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
        match wire::request_status(addr, key) {
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
