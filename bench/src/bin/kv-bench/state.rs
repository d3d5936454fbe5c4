//! Tables 5.2/5.3: state size and checkpoint cost per data-set size.
//!
//! A fresh server per size (not one grown step by step) so each size is measured as it would
//! be deployed, with hotspare-kv's heap sized for it ([`Spec::for_keys`]).
//! * hotspare-kv: heap used, stop time per checkpoint (median, p99) and bytes per incremental
//!   checkpoint under the serial 90/10 load with checkpoints every 50 ms, and the full image
//!   size (`HOTSPARE.CPT FULL`).
//! * Redis: `used_memory`, fork time of BGSAVE (`latest_fork_usec`), RDB size.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::load::preload;
use crate::resp::{info_f64, Conn};
use crate::serial::{self, round, SerialSpec};
use crate::server::{Binaries, Kind, Server, Spec};
use crate::stats::{emit, min_med_max};
use crate::ticker::{wait_bgsave_done, HsTrigger, Ticker};

#[derive(Debug, Clone)]
pub struct StateOpts {
    pub sizes: Vec<u64>,
    pub kinds: Vec<Kind>,
    /// Length of the loaded checkpoint run on hotspare-kv.
    pub load_secs: f64,
    /// Checkpoint interval during it.
    pub interval_ms: u64,
    /// BGSAVEs per size on Redis (fork time is their median).
    pub forks: usize,
    pub client_cpu: Option<usize>,
}

pub fn run(opts: &StateOpts, bins: &Binaries) -> Result<()> {
    for &n in &opts.sizes {
        for &kind in &opts.kinds {
            eprintln!("kv-bench: state, {} with {n} keys", kind.name());
            let server = Server::start(&Spec::for_keys(kind, n), bins)?;
            let mut conn = server.connect()?;
            let preload_s = preload(&mut conn, n)?.as_secs_f64();
            let mut line = json!({
                "kind": "state",
                "server": server.label(),
                "keys": n,
                "pair_bytes": 72,
                "preload_s": round(preload_s, 3),
            });
            let mem = conn.info("memory")?;
            line["used_memory"] = json!(info_f64(&mem, "used_memory"));
            line["used_memory_rss"] = json!(info_f64(&mem, "used_memory_rss"));
            let more = match kind {
                Kind::Redis => redis_state(&server, &mut conn, opts.forks)?,
                Kind::Hotspare => hotspare_state(&server, &mut conn, n, opts)?,
            };
            merge(&mut line, more);
            emit(line);
        }
    }
    Ok(())
}

/// Adds the fields of `more` (an object) to `line`.
pub fn merge(line: &mut Value, more: Value) {
    if let (Some(l), Value::Object(m)) = (line.as_object_mut(), more) {
        l.extend(m);
    }
}

fn redis_state(server: &Server, conn: &mut Conn, forks: usize) -> Result<Value> {
    let mut fork_ms = Vec::new();
    let mut save_s = Vec::new();
    for _ in 0..forks.max(1) {
        wait_bgsave_done(conn)?;
        let t = Instant::now();
        conn.cmd(&["BGSAVE"])?.ok()?;
        // BGSAVE returns once the fork is done; wait for the child to finish writing.
        wait_bgsave_done(conn)?;
        save_s.push(t.elapsed().as_secs_f64());
        let stats = conn.info("stats")?;
        fork_ms.push(info_f64(&stats, "latest_fork_usec").context("latest_fork_usec")? / 1e3);
    }
    let rdb = std::fs::metadata(server.dir.join("dump.rdb"))
        .map(|m| m.len())
        .ok();
    Ok(json!({
        "fork_ms": min_med_max(&fork_ms, 3),
        "fork_ms_all": fork_ms,
        "bgsave_s": min_med_max(&save_s, 3),
        "rdb_bytes": rdb,
    }))
}

fn hotspare_state(server: &Server, conn: &mut Conn, n: u64, opts: &StateOpts) -> Result<Value> {
    let info = conn.info("hotspare")?;
    let heap_used = info_f64(&info, "hotspare_heap_used_bytes");
    // Checkpoints every 50 ms under the serial load: stop time and incremental size.
    let ticker = Ticker::start(server, opts.interval_ms, HsTrigger::Timer)?;
    let load = serial::run(
        &SerialSpec {
            port: server.port,
            keys: n,
            duration: Duration::from_secs_f64(opts.load_secs),
            cpu: opts.client_cpu,
            bucket_ms: None,
            seed: 42,
        },
        ticker.t0,
    )?;
    let tick = ticker.finish()?;
    // Then one full checkpoint: the image size a new spare would have to receive.
    conn.set_timeout(Duration::from_secs(600))?;
    let full_text = conn.cmd(&["HOTSPARE.CPT", "FULL"])?.text()?;
    let full: Value = serde_json::from_str(&full_text)
        .with_context(|| format!("HOTSPARE.CPT FULL reply {full_text:?}"))?;
    conn.set_timeout(crate::resp::DEFAULT_TIMEOUT)?;
    let info = conn.info("hotspare")?;
    Ok(json!({
        "heap_used_bytes": heap_used,
        "load_rps": round(load.rps(), 1),
        "checkpoints": tick.fields,
        "full_cpt": full,
        "full_image_bytes": info_f64(&info, "hotspare_full_image_bytes"),
    }))
}
