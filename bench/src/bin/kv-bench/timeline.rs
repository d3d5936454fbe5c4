//! Figure 5-3: requests completed per 10 ms over ~5 s by the serial client, against hotspare-kv
//! checkpointing every 500 ms and Redis BGSAVE-ing every 500 ms, with the moments marked.
//!
//! Each series is also printed as a JSON line (`"kind":"timeline"`) so other series — e.g. the
//! gap a failover leaves (see `failover.rs`) — can be plotted alongside later from the JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use crate::plot::{self, Series};
use crate::serial::{self, SerialSpec};
use crate::serial_cmp::config_label;
use crate::server::{Kind, Server};
use crate::state::merge;
use crate::stats::emit;
use crate::ticker::{HsTrigger, Ticker};

#[derive(Debug, Clone)]
pub struct TimelineOpts {
    pub keys: u64,
    pub secs: f64,
    pub interval_ms: u64,
    pub bucket_ms: u64,
    /// hotspare-kv checkpoints by its timer (moments unknown) or by HOTSPARE.CPT (marked).
    pub trigger: HsTrigger,
    pub client_cpu: Option<usize>,
}

/// Records one series per server and, if `svg` is given, writes the plot there.
pub fn run(opts: &TimelineOpts, servers: &mut [Server], svg: Option<&Path>) -> Result<()> {
    let mut series = Vec::new();
    for server in servers.iter_mut().filter(|s| !s.spec.plain) {
        server.check_alive()?;
        let ticker = Ticker::start(server, opts.interval_ms, opts.trigger)?;
        let r = serial::run(
            &SerialSpec {
                port: server.port,
                keys: opts.keys,
                duration: Duration::from_secs_f64(opts.secs),
                cpu: opts.client_cpu,
                bucket_ms: Some(opts.bucket_ms),
                seed: 7,
            },
            ticker.t0,
        )?;
        let tick = ticker.finish()?;
        let what = match server.kind() {
            Kind::Redis => "BGSAVE",
            Kind::Hotspare if opts.trigger == HsTrigger::Command => "HOTSPARE.CPT",
            Kind::Hotspare => "checkpoint (server timer; moments not known)",
        };
        let mut line = json!({
            "kind": "timeline",
            "figure": "5-3",
            "server": server.label(),
            "config": config_label(server, opts.interval_ms),
            "keys": opts.keys,
            "bucket_ms": opts.bucket_ms,
            "counts": r.buckets,
            "marks_ms": tick.marks_ms,
            "marks_are": what,
        });
        merge(&mut line, r.fields());
        merge(&mut line, tick.fields);
        emit(line);
        series.push(Series {
            label: format!(
                "{} — {} every {} ms ({} marked)",
                server.label(),
                what,
                opts.interval_ms,
                tick.marks_ms.len()
            ),
            bucket_ms: opts.bucket_ms,
            counts: r.buckets,
            marks_ms: tick.marks_ms,
        });
    }
    if let Some(path) = svg {
        let title = format!(
            "Serial 90/10 client, requests completed per {} ms ({} keys, client and serving thread on CPU 0)",
            opts.bucket_ms, opts.keys
        );
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, plot::svg(&title, &series))
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("kv-bench: wrote {}", path.display());
    }
    Ok(())
}
