//! Table 5.4: serial-client throughput with checkpoints (hotspare-kv) or BGSAVE (Redis) every
//! 50/500/1000/2000 ms and without, and the % lost against the same server's no-checkpoint
//! runs.
//!
//! Configurations run interleaved — for each repetition, every interval on every server in
//! turn (A B A B …) — so drift of the machine (other builds, thermal) spreads over all of them
//! instead of biasing one; min/median/max over the repetitions are reported.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::serial::{self, SerialSpec};
use crate::server::Server;
use crate::state::merge;
use crate::stats::{emit, lost_pct, median, min_med_max};
use crate::ticker::{HsTrigger, Ticker};

#[derive(Debug, Clone)]
pub struct SerialOpts {
    pub keys: u64,
    pub secs: f64,
    pub reps: usize,
    /// Checkpoint intervals in ms; 0 (no checkpoints) is always run too, as the baseline.
    pub intervals: Vec<u64>,
    pub client_cpu: Option<usize>,
}

/// A label for one configuration, as the thesis's table names it.
pub fn config_label(server: &Server, interval_ms: u64) -> String {
    match (interval_ms, server.kind()) {
        (0, _) => "none".into(),
        (ms, crate::server::Kind::Redis) => format!("bgsave-{ms}ms"),
        (ms, crate::server::Kind::Hotspare) => format!("cpt-{ms}ms"),
    }
}

/// Runs the table on already started and preloaded servers.
pub fn run(opts: &SerialOpts, servers: &mut [Server]) -> Result<()> {
    let mut configs = vec![0u64];
    configs.extend(opts.intervals.iter().copied().filter(|&i| i > 0));
    // (server label, interval) -> rps per repetition, and checkpoint counts.
    let mut rps: BTreeMap<(String, u64), Vec<f64>> = BTreeMap::new();
    let mut ran: BTreeMap<(String, u64), f64> = BTreeMap::new();
    for rep in 0..opts.reps {
        for &interval in &configs {
            for (si, server) in servers.iter_mut().enumerate() {
                // The plain (no Hot Spare) server only has the no-checkpoint configuration.
                if server.spec.plain && interval > 0 {
                    continue;
                }
                server.check_alive()?;
                let ticker = Ticker::start(server, interval, HsTrigger::Timer)?;
                let r = serial::run(
                    &SerialSpec {
                        port: server.port,
                        keys: opts.keys,
                        duration: Duration::from_secs_f64(opts.secs),
                        cpu: opts.client_cpu,
                        bucket_ms: None,
                        seed: (rep * 1000 + si) as u64 + interval,
                    },
                    ticker.t0,
                )?;
                let tick = ticker.finish()?;
                let done = tick.fields["bgsave_ran"]
                    .as_f64()
                    .or(tick.fields["checkpoints"].as_f64())
                    .unwrap_or(0.0);
                let key = (server.label().to_string(), interval);
                rps.entry(key.clone()).or_default().push(r.rps());
                *ran.entry(key).or_default() += done;
                let mut line = json!({
                    "kind": "serial",
                    "table": "5.4",
                    "server": server.label(),
                    "config": config_label(server, interval),
                    "keys": opts.keys,
                    "rep": rep,
                    "client_cpu": opts.client_cpu,
                });
                merge(&mut line, r.fields());
                merge(&mut line, tick.fields);
                emit(line);
            }
        }
    }
    for server in servers.iter() {
        let base = median(
            rps.get(&(server.label().to_string(), 0))
                .map_or(&[][..], |v| v),
        );
        for &interval in &configs {
            let key = (server.label().to_string(), interval);
            let Some(v) = rps.get(&key) else { continue };
            let med = median(v);
            let mut line = json!({
                "kind": "serial_summary",
                "table": "5.4",
                "server": server.label(),
                "config": config_label(server, interval),
                "interval_ms": interval,
                "keys": opts.keys,
                "secs": opts.secs,
                "reps": v.len(),
                "rps": min_med_max(v, 1),
                "lost_pct": lost_pct(med, base),
                // Each repetition against the median baseline, to show the spread.
                "lost_pct_range": min_med_max(
                    &v.iter().map(|&x| lost_pct(x, base)).collect::<Vec<_>>(), 2),
            });
            let total = ran.get(&key).copied().unwrap_or(0.0);
            if server.kind() == crate::server::Kind::Redis {
                line["bgsave_ran_total"] = json!(total);
            } else {
                line["checkpoints_total"] = json!(total);
            }
            emit(line);
        }
    }
    // Hot Spare's standing cost without checkpoints: hotspare-kv (cpt 0) vs --plain.
    let hs = rps.iter().find(|((l, i), _)| l == "hotspare-kv" && *i == 0);
    let plain = rps.iter().find(|((l, _), _)| l == "hotspare-kv-plain");
    if let (Some((_, hs)), Some((_, plain))) = (hs, plain) {
        emit(json!({
            "kind": "serial_summary",
            "table": "5.4",
            "server": "hotspare-kv",
            "config": "none-vs-plain",
            "lost_pct": lost_pct(median(hs), median(plain)),
        }));
    }
    Ok(())
}
