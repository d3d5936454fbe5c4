//! `HOTSPARE_COMMIT_PROBE=N`: where a checkpoint's time goes between `cpt()` and its ticket
//! completing, for figures. Each stage stamps the checkpoint's slot; every N completed
//! checkpoints one JSON line on stderr gives the median and 90th percentile of each step (µs)
//! over the last N. Off (one relaxed load per stage) unless the variable is set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The stages a checkpoint passes, in order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    /// `cpt()` entered.
    Enter = 0,
    /// The capture ended: the program runs again.
    Stopped,
    /// The writer thread took the job.
    Writer,
    /// Encoded and handed to the sink (link thread or local image).
    Delivered,
    /// The link thread put it on the link (sealed into the socket's buffer).
    Sent,
    /// The spare's answer arrived (or the local image was committed).
    Acked,
    /// The ticket completed and the program's notifiers were woken.
    Completed,
}

const STAGES: usize = 7;
const NAMES: [&str; STAGES - 1] = [
    "stop",
    "to_writer",
    "encode",
    "to_link",
    "spare_rtt",
    "complete",
];
const SLOTS: usize = 4096;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ROW: [AtomicU64; STAGES] = [ZERO; STAGES];
static STAMPS: [[AtomicU64; STAGES]; SLOTS] = [ROW; SLOTS];

fn every() -> u64 {
    static EVERY: OnceLock<u64> = OnceLock::new();
    *EVERY.get_or_init(|| {
        std::env::var("HOTSPARE_COMMIT_PROBE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |n| n.min(SLOTS as u64))
    })
}

fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// Stamps checkpoint `seq` at `stage`.
pub(crate) fn mark(seq: u64, stage: Stage) {
    let n = every();
    if n == 0 {
        return;
    }
    STAMPS[seq as usize % SLOTS][stage as usize].store(now_ns(), Ordering::Relaxed);
    if matches!(stage, Stage::Completed) && seq.is_multiple_of(n) && seq >= n {
        report(seq, n);
    }
}

fn report(last: u64, n: u64) {
    let mut steps: Vec<Vec<u64>> = vec![Vec::new(); STAGES - 1];
    let mut total = Vec::new();
    for seq in last + 1 - n..=last {
        let row = &STAMPS[seq as usize % SLOTS];
        let t: Vec<u64> = row.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        // A checkpoint with a stage unstamped (a Fork capture, a streamed one) is left out.
        let mut prev = t[0];
        if prev == 0 {
            continue;
        }
        let mut ok = true;
        for (i, &s) in t.iter().enumerate().skip(1) {
            if s == 0 || s < prev {
                ok = false;
                break;
            }
            steps[i - 1].push(s - prev);
            prev = s;
        }
        if ok {
            total.push(prev - t[0]);
        }
        for a in row {
            a.store(0, Ordering::Relaxed);
        }
    }
    let pct = |v: &mut Vec<u64>, p: usize| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        v[(v.len() - 1) * p / 100] as f64 / 1000.0
    };
    let mut line = format!(
        "{{\"kind\":\"commit_probe\",\"upto_seq\":{last},\"n\":{}",
        total.len()
    );
    for (name, v) in NAMES.iter().zip(steps.iter_mut()) {
        line += &format!(
            ",\"{name}_p50_us\":{:.1},\"{name}_p90_us\":{:.1}",
            pct(v, 50),
            pct(v, 90)
        );
    }
    line += &format!(
        ",\"total_p50_us\":{:.1},\"total_p90_us\":{:.1}}}",
        pct(&mut total, 50),
        pct(&mut total, 90)
    );
    eprintln!("{line}");
}
