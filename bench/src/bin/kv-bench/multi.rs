//! Multi-client load: `redis-benchmark -c 50 -t get,set -r N -d 56` against both servers,
//! without checkpoints and with checkpoints (BGSAVE) every 100 ms, interleaved and repeated.
//!
//! `-r N` makes redis-benchmark use keys `key:{0..N:012}`, exactly the preloaded ones, and
//! `-d 56` the same value size. `-n` is calibrated per server (a short GET run) so each test
//! lasts about the requested time whichever server is faster.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::procs::ChildGuard;
use crate::serial_cmp::config_label;
use crate::server::{Binaries, Server};
use crate::state::merge;
use crate::stats::{emit, lost_pct, median, min_med_max};
use crate::ticker::{HsTrigger, Ticker};

#[derive(Debug, Clone)]
pub struct MultiOpts {
    pub keys: u64,
    /// Target length of each redis-benchmark test (GET, then SET).
    pub secs: f64,
    pub reps: usize,
    pub interval_ms: u64,
    pub clients: u32,
}

/// One redis-benchmark result row: test name -> (rps, p99 ms).
type Rows = BTreeMap<String, (f64, Option<f64>)>;

pub fn run(opts: &MultiOpts, bins: &Binaries, servers: &mut [Server]) -> Result<()> {
    // Calibrate -n per server so a test takes ~opts.secs.
    let mut n_of = Vec::new();
    for server in servers.iter() {
        let rows = match bench(bins, server, opts, 50_000, "get") {
            Ok(r) => r,
            Err(e) => {
                let probe = crate::probe::diagnose(bins, server)
                    .unwrap_or_else(|pe| json!({"probe_error": format!("{pe:#}")}));
                emit(json!({
                    "kind": "multi_error",
                    "server": server.label(),
                    "error": format!("{e:#}"),
                    "probe": probe,
                }));
                n_of.push(None);
                continue;
            }
        };
        let rps = rows.get("GET").map_or(0.0, |r| r.0);
        let n = ((rps * opts.secs) as u64).clamp(10_000, 20_000_000);
        eprintln!(
            "kv-bench: redis-benchmark calibration {}: {rps:.0} GET/s -> -n {n}",
            server.label()
        );
        n_of.push(Some(n));
    }
    let configs = [0, opts.interval_ms];
    let mut res: BTreeMap<(String, u64, String), Vec<f64>> = BTreeMap::new();
    for rep in 0..opts.reps {
        for &interval in &configs {
            for (server, n) in servers.iter_mut().zip(&n_of) {
                let Some(n) = *n else { continue };
                server.check_alive()?;
                let ticker = Ticker::start(server, interval, HsTrigger::Timer)?;
                let rows = bench(bins, server, opts, n, "get,set")?;
                let tick = ticker.finish()?;
                let mut line = json!({
                    "kind": "multi",
                    "server": server.label(),
                    "config": config_label(server, interval),
                    "keys": opts.keys,
                    "clients": opts.clients,
                    "n": n,
                    "rep": rep,
                });
                for (test, (rps, p99)) in &rows {
                    let t = test.to_lowercase();
                    line[format!("{t}_rps")] = json!(rps);
                    line[format!("{t}_p99_ms")] = json!(p99);
                    res.entry((server.label().into(), interval, t))
                        .or_default()
                        .push(*rps);
                }
                merge(&mut line, tick.fields);
                emit(line);
            }
        }
    }
    for server in servers.iter() {
        for &interval in &configs {
            let mut line = json!({
                "kind": "multi_summary",
                "server": server.label(),
                "config": config_label(server, interval),
                "interval_ms": interval,
                "keys": opts.keys,
                "clients": opts.clients,
            });
            let mut any = false;
            for t in ["get", "set"] {
                let Some(v) = res.get(&(server.label().into(), interval, t.into())) else {
                    continue;
                };
                any = true;
                let base = res
                    .get(&(server.label().into(), 0, t.into()))
                    .map_or(0.0, |b| median(b));
                line[format!("{t}_rps")] = min_med_max(v, 0);
                line[format!("{t}_lost_pct")] = json!(lost_pct(median(v), base));
            }
            if any {
                emit(line);
            }
        }
    }
    Ok(())
}

/// Runs redis-benchmark once and parses its CSV.
fn bench(bins: &Binaries, server: &Server, opts: &MultiOpts, n: u64, tests: &str) -> Result<Rows> {
    let out = server.dir.join("redis-benchmark.csv");
    let err = server.dir.join("redis-benchmark.err");
    let mut cmd = Command::new(&bins.redis_benchmark);
    cmd.args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-c", &opts.clients.to_string(), "-n", &n.to_string()])
        .args([
            "-t",
            tests,
            "-r",
            &opts.keys.to_string(),
            "-d",
            "56",
            "--csv",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    let child = ChildGuard::spawn(cmd, "redis-benchmark")?;
    // Generous: the calibrated runs take ~secs per test; a hung handshake must not hang us.
    let limit = Duration::from_secs_f64(opts.secs * 8.0 + 60.0);
    let status = child.wait_timeout(limit)?;
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let rows = parse_csv(&text);
    if !status.success() || rows.is_empty() {
        bail!(
            "redis-benchmark against {} failed ({status}); stdout: {:?}; stderr: {:?}",
            server.label(),
            tail(&text),
            tail(&std::fs::read_to_string(&err).unwrap_or_default())
        );
    }
    Ok(rows)
}

fn tail(s: &str) -> String {
    let cut = s.len().saturating_sub(2000);
    let mut i = cut;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_string()
}

/// Parses `redis-benchmark --csv` output: a header row, then one row per test.
fn parse_csv(text: &str) -> Rows {
    let split = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut lines = text.lines().filter(|l| l.starts_with('"'));
    let Some(header) = lines.next().map(split) else {
        return Rows::new();
    };
    let col = |name: &str| header.iter().position(|h| h == name);
    let (Some(ti), Some(ri)) = (col("test"), col("rps")) else {
        return Rows::new();
    };
    let p99 = col("p99_latency_ms");
    lines
        .map(split)
        .filter_map(|f| {
            let rps: f64 = f.get(ri)?.parse().ok()?;
            let p = p99.and_then(|i| f.get(i)?.parse().ok());
            Some((f.get(ti)?.clone(), (rps, p)))
        })
        .collect()
}

/// Whether `path` looks like a runnable redis-benchmark (used to fail early with a clear text).
pub fn check_available(path: &Path) -> Result<()> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", path.display()))?;
    if !out.status.success() {
        bail!("{} --version failed", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis7_csv() {
        let t = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                 \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                 \"SET\",\"98039.22\",\"0.271\",\"0.088\",\"0.263\",\"0.359\",\"0.455\",\"1.2\"\n\
                 \"GET\",\"100000.00\",\"0.26\",\"0.08\",\"0.25\",\"0.35\",\"0.43\",\"0.9\"\n";
        let r = parse_csv(t);
        assert_eq!(r["SET"].0, 98039.22);
        assert_eq!(r["GET"].1, Some(0.43));
    }
}
