//! Counters and histograms kept inside the processes, for what the status files alone cannot
//! show (a checkpoint's stop time, its bytes, a heartbeat's round trip, refusals). They are
//! published as a `"metrics"` object in the status file each process already rewrites every
//! 100 ms, so `hotspare metrics` exports them with the gauges: one exporter per host, no HTTP
//! server in the library, nothing for a program to wire up.
//!
//! Recording is on the hot path (the checkpoint stop is ~1 ms): a histogram observation is a
//! binary search over a dozen bounds and two relaxed atomic adds, with no lock and no
//! allocation. The JSON holds cumulative bucket counts, the sum and the count, so a reader of the
//! file (or a human) needs no knowledge of the bounds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency bounds in nanoseconds, 50 µs to 1 s: a loopback heartbeat answers in tens of µs, a
/// checkpoint stop is ~1 ms, and anything near a second has already cost a lease.
pub(crate) const LATENCY_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Byte bounds, 1 KiB to 1 GiB by fours: from an incremental checkpoint of a few pages to a
/// full image of a large heap.
pub(crate) const BYTES: &[u64] = &[
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
    1 << 30,
];

/// Buckets a histogram can have, `+Inf` included (fixed, so that it needs no allocation).
const MAX_BUCKETS: usize = 16;

/// A histogram of integer observations (nanoseconds or bytes) against fixed bounds, shared
/// between the thread that records and the one that writes the status.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [u64],
    /// Observations per bucket (not cumulative: one add per observation); the last is `+Inf`.
    buckets: [AtomicU64; MAX_BUCKETS],
    sum: AtomicU64,
}

impl Histogram {
    pub(crate) const fn new(bounds: &'static [u64]) -> Histogram {
        assert!(bounds.len() < MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, v: u64) {
        // The first bound ≥ v (`le` semantics); past every bound: the `+Inf` bucket.
        let i = self.bounds.partition_point(|b| *b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    pub(crate) fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// `{"le":[…],"buckets":[…],"sum":S,"count":N}`, bounds and sum divided by `scale` (1e9
    /// for seconds), buckets cumulative and without `+Inf` (whose count is `count`). The count
    /// is the sum of the buckets read, so the buckets never exceed it even while another thread
    /// records; the sum may be one observation ahead or behind.
    pub(crate) fn json(&self, scale: f64) -> String {
        let mut out = String::from("{\"le\":[");
        for (i, b) in self.bounds.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}{}", *b as f64 / scale);
        }
        out.push_str("],\"buckets\":[");
        let mut total = 0u64;
        for (i, b) in self.buckets[..=self.bounds.len()].iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            if i < self.bounds.len() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(out, "{sep}{total}");
            }
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 / scale;
        let _ = write!(out, "],\"sum\":{sum},\"count\":{total}}}");
        out
    }
}

/// What a primary counts: the checkpoint stop on the caller's thread, the rest on the link
/// thread.
#[derive(Debug)]
pub(crate) struct PrimaryMetrics {
    /// How long each checkpoint stopped the program (capture under the allocator's lock).
    pub(crate) stop: Histogram,
    /// Bytes each checkpoint took on the wire (sealed stream messages), counted once its end
    /// is out.
    pub(crate) wire_bytes: Histogram,
    /// From a heartbeat's send to its answer.
    pub(crate) heartbeat_rtt: Histogram,
    /// Checkpoints the link started sending (its `sent_seq` advances with each).
    pub(crate) sent: AtomicU64,
    /// Checkpoints acknowledged by the spare.
    pub(crate) acked: AtomicU64,
    /// Checkpoints that failed (refused, lost with the connection, not acknowledged in time,
    /// fenced, or with no spare to go to).
    pub(crate) failed: AtomicU64,
}

impl PrimaryMetrics {
    pub(crate) const fn new() -> PrimaryMetrics {
        PrimaryMetrics {
            stop: Histogram::new(LATENCY_NS),
            wire_bytes: Histogram::new(BYTES),
            heartbeat_rtt: Histogram::new(LATENCY_NS),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The status file's `"metrics"` value.
    pub(crate) fn json(&self) -> String {
        format!(
            "{{\"checkpoints_sent\":{},\"checkpoints_acked\":{},\"checkpoints_failed\":{},\"checkpoint_stop_seconds\":{},\"checkpoint_wire_bytes\":{},\"heartbeat_rtt_seconds\":{}}}",
            self.sent.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.stop.json(1e9),
            self.wire_bytes.json(1.0),
            self.heartbeat_rtt.json(1e9),
        )
    }
}

/// What a spare counts, all on its event loop's thread (plain fields). A fleet daemon keeps
/// one per service across the spare's restarts, so its counts (takeovers above all) are the
/// host's for that service, not one spare run's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SpareCounters {
    /// Checkpoint streams begun by an admitted primary.
    pub(crate) checkpoints_received: u64,
    /// Checkpoints acknowledged to the primary.
    pub(crate) checkpoints_acked: u64,
    /// Checkpoints refused after they began (invalid, not durable, the disk behind).
    pub(crate) checkpoints_nacked: u64,
    /// Stream bytes received (as opened, before spooling).
    pub(crate) stream_bytes: u64,
    /// Heartbeats answered with a lease.
    pub(crate) heartbeats_answered: u64,
    /// Connections dropped before their handshake completed (wrong key, too slow, too many).
    pub(crate) refused_handshake: u64,
    /// Primaries refused as fenced (their term is older than the spare's).
    pub(crate) refused_fenced: u64,
    /// Primaries or requests refused for another reason (another executable or lineage, the
    /// term not saved, a switchover with no primary).
    pub(crate) refused_other: u64,
    /// Takeovers decided.
    pub(crate) takeovers: u64,
}

impl SpareCounters {
    /// The status file's `"metrics"` value.
    pub(crate) fn json(&self) -> String {
        format!(
            "{{\"checkpoints_received\":{},\"checkpoints_acked\":{},\"checkpoints_nacked\":{},\"stream_bytes\":{},\"heartbeats_answered\":{},\"takeovers\":{},\"connections_refused\":{{\"handshake\":{},\"fenced\":{},\"refused\":{}}}}}",
            self.checkpoints_received,
            self.checkpoints_acked,
            self.checkpoints_nacked,
            self.stream_bytes,
            self.heartbeats_answered,
            self.takeovers,
            self.refused_handshake,
            self.refused_fenced,
            self.refused_other,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(h: &Histogram, scale: f64) -> serde_json::Value {
        serde_json::from_str(&h.json(scale)).expect("valid JSON")
    }

    /// Guards against off-by-one bucketing (a value equal to a bound belongs to it: `le`) and
    /// buckets that are not cumulative.
    #[test]
    fn buckets_are_le_and_cumulative() {
        let h = Histogram::new(LATENCY_NS);
        h.observe(50_000); // exactly the first bound
        h.observe(50_001); // the second
        h.observe(2_000_000_000); // past every bound: +Inf only
        let v = parse(&h, 1e9);
        let b: Vec<u64> = v["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(b.len(), LATENCY_NS.len());
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 2);
        assert_eq!(*b.last().unwrap(), 2);
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(v["count"], 3);
        assert_eq!(v["le"][0].as_f64(), Some(0.00005));
        assert_eq!(v["le"][13].as_f64(), Some(1.0));
        let sum = v["sum"].as_f64().unwrap();
        assert!((sum - 2.000100001).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn primary_and_spare_json_parse() {
        let p = PrimaryMetrics::new();
        p.stop.observe_duration(Duration::from_micros(900));
        PrimaryMetrics::inc(&p.sent);
        let v: serde_json::Value = serde_json::from_str(&p.json()).unwrap();
        assert_eq!(v["checkpoints_sent"], 1);
        assert_eq!(v["checkpoint_stop_seconds"]["count"], 1);
        assert_eq!(v["checkpoint_wire_bytes"]["count"], 0);
        let s = SpareCounters {
            refused_fenced: 2,
            ..SpareCounters::default()
        };
        let v: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(v["connections_refused"]["fenced"], 2);
    }
}
