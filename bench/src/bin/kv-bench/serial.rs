//! The serial client: one request at a time, 90 % GET / 10 % SET, on a thread pinned to the
//! server's serving CPU (Table 5.4, Figure 5-3, and the load during the stop-time runs).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::load::Mix;
use crate::procs::pin_current_thread;
use crate::resp::{Conn, Reply};

/// One serial run's parameters.
#[derive(Debug, Clone)]
pub struct SerialSpec {
    pub port: u16,
    /// Keys `0..keys` are preloaded; requests pick among them.
    pub keys: u64,
    pub duration: Duration,
    /// CPU to pin the client thread to (None: unpinned).
    pub cpu: Option<usize>,
    /// If set, count completed requests per bucket of this many ms after `t0`.
    pub bucket_ms: Option<u64>,
    pub seed: u64,
}

/// What one serial run measured.
#[derive(Debug, Clone)]
pub struct SerialResult {
    pub requests: u64,
    pub sets: u64,
    /// GETs that found no value (must be 0: every key was preloaded).
    pub misses: u64,
    pub secs: f64,
    pub latencies_us: Vec<f64>,
    /// Requests completed per bucket (see [`SerialSpec::bucket_ms`]).
    pub buckets: Vec<u32>,
}

impl SerialResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    /// The JSON fields of this run (without the time series).
    pub fn fields(&self) -> Value {
        let mut l = self.latencies_us.clone();
        l.sort_by(f64::total_cmp);
        json!({
            "requests": self.requests,
            "sets": self.sets,
            "misses": self.misses,
            "secs": round(self.secs, 3),
            "rps": round(self.rps(), 1),
            "lat_p50_us": round(crate::stats::quantile_sorted(&l, 0.5), 1),
            "lat_p99_us": round(crate::stats::quantile_sorted(&l, 0.99), 1),
            "lat_max_us": round(l.last().copied().unwrap_or(0.0), 1),
        })
    }
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Runs the serial client on its own (pinned) thread; buckets are counted from `t0`.
pub fn run(spec: &SerialSpec, t0: Instant) -> Result<SerialResult> {
    let spec = spec.clone();
    std::thread::Builder::new()
        .name("serial-client".into())
        .spawn(move || run_here(&spec, t0))?
        .join()
        .map_err(|_| anyhow::anyhow!("serial client thread panicked"))?
}

fn run_here(spec: &SerialSpec, t0: Instant) -> Result<SerialResult> {
    if let Some(cpu) = spec.cpu {
        pin_current_thread(cpu)?;
    }
    let mut conn = Conn::local(spec.port)?;
    let mut mix = Mix::new(spec.keys, spec.seed);
    let mut buf = Vec::with_capacity(128);
    let mut r = SerialResult {
        requests: 0,
        sets: 0,
        misses: 0,
        secs: 0.0,
        latencies_us: Vec::with_capacity(1 << 20),
        buckets: Vec::new(),
    };
    let start = Instant::now();
    let end = start + spec.duration;
    loop {
        let is_set = mix.next(&mut buf);
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        conn.send_raw(&buf)?;
        let reply = conn.read()?;
        let done = Instant::now();
        match (is_set, reply) {
            (_, Reply::Error(e)) => bail!("server error during the serial run: {e}"),
            (false, Reply::Bulk(None)) => r.misses += 1,
            _ => {}
        }
        r.requests += 1;
        r.sets += is_set as u64;
        r.latencies_us.push((done - sent).as_nanos() as f64 / 1e3);
        if let Some(b) = spec.bucket_ms {
            let i = (done.saturating_duration_since(t0).as_micros() / (b as u128 * 1000)) as usize;
            if r.buckets.len() <= i {
                r.buckets.resize(i + 1, 0);
            }
            r.buckets[i] += 1;
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    // Drop the last, partial bucket: it would look like a dip that is not there.
    if let Some(b) = spec.bucket_ms {
        let full = (end.saturating_duration_since(t0).as_micros() / (b as u128 * 1000)) as usize;
        r.buckets.truncate(full);
    }
    Ok(r)
}
