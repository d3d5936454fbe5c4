//! `hotspare metrics --listen ADDR DIR...`: a Prometheus exporter built from the status files a
//! primary (in its spool or image directory) and a spare (in its image directory) rewrite every
//! 100 ms. Each scrape reads every directory's `status` afresh and encodes it with
//! `prometheus-client` (OpenMetrics text, which Prometheus scrapes natively). The HTTP side is a
//! std `TcpListener`, one short-lived thread per connection.
//!
//! Besides the current state, each status file holds a `"metrics"` object: counters and
//! histograms (cumulative bucket counts, sum, count) the process keeps itself — checkpoint stop
//! times, bytes on the wire, heartbeat round trips, refused connections, takeovers. They are
//! passed on as OpenMetrics counters (`_total`) and histograms (`_bucket{le}`, `_sum`,
//! `_count`), so the processes need no HTTP server of their own. A counter starts again from 0
//! when its process does (Prometheus' `rate` and `increase` expect that).

use anyhow::{Context, Result};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

type Labels = Vec<(String, String)>;
type G = Family<Labels, Gauge<f64, AtomicU64>>;

/// The OpenMetrics content type `prometheus-client` encodes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every gauge the exporter knows, by name.
struct Gauges {
    reg: Registry,
    fams: Vec<(&'static str, G)>,
}

/// (name, help). Names without `hotspare_`; all are gauges.
const GAUGES: &[(&str, &str)] = &[
    ("status_readable", "1 if DIR/status could be read and parsed, else 0"),
    ("status_age_seconds", "Seconds since DIR/status was last rewritten (a live process rewrites it every 0.1 s; above ~2 s the process is stopped or dead)"),
    ("pid", "Process id that wrote the status"),
    ("term", "Term (fencing token) of this primary or spare"),
    ("sent_seq", "Primary: last checkpoint sequence sent to the spare"),
    ("acked_seq", "Primary: last checkpoint sequence acknowledged by the spare"),
    ("lag_checkpoints", "Primary: checkpoints sent and not yet acknowledged"),
    ("lease_left_seconds", "Primary: time left on its right to serve (0: none)"),
    ("fenced", "Primary: 1 if it may not serve now"),
    ("arbiter_registered", "Primary with an arbiter: 1 once registered at etcd"),
    ("durable_seq", "Spare: last checkpoint sequence durable in its image"),
    ("applied_seq", "Spare: last checkpoint written into its data files"),
    ("acked_not_durable_seq", "Spare: a checkpoint acknowledged on receipt that it failed to make durable (0: none; while set it will not take over)"),
    ("connected", "1 if the primary is connected to its spare (for a spare: a primary is admitted)"),
    ("last_heartbeat_seconds", "Spare: seconds since it last answered (granted) a heartbeat; absent if never"),
    ("claiming", "Spare with an arbiter: 1 while it is claiming the term at etcd"),
    ("durability_level", "1 for the durability level in force (label level)"),
];

/// The counters and histograms of the status files' `"metrics"` objects: (JSON key, role,
/// name without `hotspare_`, help). A histogram's name ends in its unit; a counter's gets
/// `_total` from the encoder.
const IN_PROCESS: &[(&str, &str, &str, &str)] = &[
    ("checkpoint_stop_seconds", "primary", "checkpoint_stop_seconds", "Primary: how long each checkpoint stopped the program (capture under the allocator's lock)."),
    ("checkpoint_wire_bytes", "primary", "checkpoint_wire_bytes", "Primary: bytes each checkpoint took on the wire to the spare (sealed stream messages)."),
    ("heartbeat_rtt_seconds", "primary", "heartbeat_rtt_seconds", "Primary: from sending a heartbeat to the spare's answer (the lease's margin is what is left of it)."),
    ("checkpoints_sent", "primary", "checkpoints_sent", "Primary: checkpoints started towards the spare."),
    ("checkpoints_acked", "primary", "checkpoints_acked", "Primary: checkpoints acknowledged by the spare."),
    ("checkpoints_failed", "primary", "checkpoints_failed", "Primary: checkpoints that failed (refused, lost with the connection, not acknowledged in time, fenced, no spare)."),
    ("checkpoints_received", "spare", "spare_checkpoints_received", "Spare: checkpoint streams begun by the admitted primary."),
    ("checkpoints_acked", "spare", "spare_checkpoints_acked", "Spare: checkpoints acknowledged to the primary."),
    ("checkpoints_nacked", "spare", "spare_checkpoints_nacked", "Spare: checkpoints refused after they began (invalid, not made durable, the disk behind)."),
    ("stream_bytes", "spare", "spare_stream_bytes", "Spare: checkpoint stream bytes received."),
    ("heartbeats_answered", "spare", "spare_heartbeats_answered", "Spare: heartbeats answered with a lease."),
    ("takeovers", "spare", "spare_takeovers", "Spare: takeovers decided (a fleet daemon's spare counts every takeover of the service on this host; a lone spare becomes the program)."),
    ("connections_refused", "spare", "spare_connections_refused", "Spare: connections refused, by reason (handshake: wrong key, too slow or too many; fenced: older term; refused: another executable or lineage, or the like)."),
];

/// One series of an in-process metric, as read from a status file.
#[derive(Debug)]
enum Sample {
    Counter(u64),
    /// Sum, count, and per-bucket (not cumulative) counts by upper bound, `+Inf` last.
    Histogram(f64, u64, Vec<(f64, u64)>),
}

/// One exported metric: name without `hotspare_`, help, and its series.
type FamilyOf = (&'static str, &'static str, Vec<(Labels, Sample)>);

/// The in-process metrics of every directory, by exported name, encoded at scrape time.
#[derive(Debug, Default)]
struct InProcess {
    families: Vec<FamilyOf>,
}

impl InProcess {
    fn add(&mut self, name: &'static str, help: &'static str, labels: Labels, s: Sample) {
        let f = &mut self.families;
        match f.iter_mut().find(|(n, ..)| *n == name) {
            Some((.., series)) => series.push((labels, s)),
            None => f.push((name, help, vec![(labels, s)])),
        }
    }

    /// Reads a status file's `"metrics"` object for `role`.
    fn add_status(&mut self, role: &str, metrics: &Value, labels: &Labels) {
        for (key, r, name, help) in IN_PROCESS {
            if *r != role {
                continue;
            }
            let Some(v) = metrics.get(*key) else { continue };
            if let Some(n) = v.as_u64() {
                self.add(name, help, labels.clone(), Sample::Counter(n));
            } else if let Some(h) = histogram(v) {
                self.add(name, help, labels.clone(), h);
            } else if let Some(by) = v.as_object() {
                // A counter by reason.
                for (reason, n) in by {
                    if let Some(n) = n.as_u64() {
                        let mut l = labels.clone();
                        l.push(("reason".into(), reason.clone()));
                        self.add(name, help, l, Sample::Counter(n));
                    }
                }
            }
        }
    }
}

/// `{"le":[…],"buckets":[cumulative…],"sum":S,"count":N}` as per-bucket counts with `+Inf`;
/// `None` if it is not one, or its buckets are not cumulative or exceed the count (a torn or
/// foreign file: better no histogram than a wrong one).
fn histogram(v: &Value) -> Option<Sample> {
    let le: Vec<f64> = v
        .get("le")?
        .as_array()?
        .iter()
        .map(Value::as_f64)
        .collect::<Option<_>>()?;
    let cum: Vec<u64> = v
        .get("buckets")?
        .as_array()?
        .iter()
        .map(Value::as_u64)
        .collect::<Option<_>>()?;
    let (sum, count) = (v.get("sum")?.as_f64()?, v.get("count")?.as_u64()?);
    if le.len() != cum.len()
        || cum.windows(2).any(|w| w[0] > w[1])
        || cum.last().is_some_and(|l| *l > count)
    {
        return None;
    }
    let mut buckets = Vec::with_capacity(le.len() + 1);
    let mut below = 0;
    for (b, c) in le.iter().zip(&cum) {
        buckets.push((*b, c - below));
        below = *c;
    }
    buckets.push((f64::INFINITY, count - below));
    Some(Sample::Histogram(sum, count, buckets))
}

impl Collector for InProcess {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, series) in &self.families {
            let kind = match series.first() {
                Some((_, Sample::Histogram(..))) => MetricType::Histogram,
                _ => MetricType::Counter,
            };
            let full = format!("hotspare_{name}");
            let mut m = encoder.encode_descriptor(&full, help, None, kind)?;
            for (labels, s) in series {
                let e = m.encode_family(labels)?;
                match s {
                    Sample::Counter(n) => ConstCounter::new(*n).encode(e)?,
                    Sample::Histogram(sum, count, buckets) => {
                        let mut e = e;
                        e.encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

impl Gauges {
    fn new() -> Gauges {
        let mut reg = Registry::default();
        let fams = GAUGES
            .iter()
            .map(|(name, help)| {
                let f = G::default();
                reg.register(format!("hotspare_{name}"), *help, f.clone());
                (*name, f)
            })
            .collect();
        Gauges { reg, fams }
    }

    fn set(&self, name: &str, labels: &Labels, v: f64) {
        if let Some((_, f)) = self.fams.iter().find(|(n, _)| *n == name) {
            f.get_or_create(labels).set(v);
        }
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn flag(v: &Value, key: &str) -> Option<f64> {
    v.get(key)
        .and_then(Value::as_bool)
        .map(|b| f64::from(u8::from(b)))
}

/// Adds one directory's gauges and in-process metrics.
fn add_dir(g: &Gauges, inp: &mut InProcess, dir: &Path) {
    let path = dir.join("status");
    let dir_label = dir.display().to_string();
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .map(|t| t.elapsed().unwrap_or_default().as_secs_f64());
    let parsed: Option<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(t.trim()).ok());
    let Some(s) = parsed else {
        let labels = vec![("role".into(), "unknown".into()), ("dir".into(), dir_label)];
        g.set("status_readable", &labels, 0.0);
        if let Some(a) = age {
            g.set("status_age_seconds", &labels, a);
        }
        return;
    };
    let role = s
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let mut labels: Labels = vec![("role".into(), role.clone()), ("dir".into(), dir_label)];
    if let Some(a) = s.get("arbiter").filter(|a| a.is_object()) {
        for k in ["service", "node"] {
            if let Some(v) = a.get(k).and_then(Value::as_str) {
                labels.push((k.into(), v.into()));
            }
        }
    }
    g.set("status_readable", &labels, 1.0);
    if let Some(a) = age {
        g.set("status_age_seconds", &labels, a);
    }
    let put = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            g.set(name, &labels, v);
        }
    };
    put("pid", num(&s, "pid"));
    put("term", num(&s, "term"));
    if role == "primary" {
        put("sent_seq", num(&s, "sent_seq"));
        put("acked_seq", num(&s, "acked_seq"));
        put("lag_checkpoints", num(&s, "lag"));
        put(
            "lease_left_seconds",
            num(&s, "lease_left_ms").map(|ms| ms.max(0.0) / 1000.0),
        );
        put("fenced", flag(&s, "fenced"));
        put("connected", flag(&s, "connected"));
        put(
            "arbiter_registered",
            s.get("arbiter")
                .and_then(|a| a.get("registered"))
                .and_then(Value::as_bool)
                .map(|b| f64::from(u8::from(b))),
        );
    } else {
        put("durable_seq", num(&s, "seq"));
        put("applied_seq", num(&s, "applied"));
        put("acked_not_durable_seq", num(&s, "acked_not_durable"));
        put("connected", flag(&s, "primary_connected"));
        put(
            "last_heartbeat_seconds",
            num(&s, "last_heartbeat_ms")
                .filter(|ms| *ms >= 0.0)
                .map(|ms| ms / 1000.0),
        );
        put("claiming", flag(&s, "claiming"));
    }
    if let Some(level) = s.get("durability").and_then(Value::as_str) {
        let mut l = labels.clone();
        l.push(("level".into(), level.into()));
        g.set("durability_level", &l, 1.0);
    }
    if let Some(m) = s.get("metrics").filter(|m| m.is_object()) {
        inp.add_status(&role, m, &labels);
    }
}

/// The exposition text for `dirs`, read now.
pub fn render(dirs: &[PathBuf]) -> Result<String> {
    let mut g = Gauges::new();
    let mut inp = InProcess::default();
    for d in dirs {
        add_dir(&g, &mut inp, d);
    }
    g.reg.register_collector(Box::new(inp));
    let mut out = String::new();
    encode(&mut out, &g.reg).context("encoding metrics")?;
    Ok(out)
}

fn answer(mut s: TcpStream, dirs: &[PathBuf]) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut request = String::new();
    if r.read_line(&mut request)? == 0 {
        return Ok(()); // connected and closed (a port probe)
    }
    // Headers, bounded: up to 100 lines or an empty one.
    for _ in 0..100 {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => match render(dirs) {
            Ok(b) => ("200 OK", CONTENT_TYPE, b),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("{e:#}\n"),
            ),
        },
        ("GET", "/") => (
            "200 OK",
            "text/plain",
            "hotspare metrics exporter: GET /metrics\n".to_string(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    write!(
        s,
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()?;
    Ok(())
}

/// Serves `GET /metrics` on `listen` until killed.
pub fn serve(listen: &str, dirs: Vec<PathBuf>) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("listen on {listen}"))?;
    eprintln!(
        "hotspare metrics: serving /metrics on {} for {} director{}",
        l.local_addr()?,
        dirs.len(),
        if dirs.len() == 1 { "y" } else { "ies" }
    );
    let dirs = Arc::new(dirs);
    for conn in l.incoming() {
        let Ok(s) = conn else { continue };
        let dirs = dirs.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(s, &dirs) {
                let gone = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    io.kind() == std::io::ErrorKind::BrokenPipe
                        || io.kind() == std::io::ErrorKind::ConnectionReset
                });
                if !gone {
                    eprintln!("hotspare metrics: {e:#}");
                }
            }
        });
    }
    Ok(())
}
