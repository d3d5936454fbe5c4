//! `hotspare status --etcd ENDPOINTS`: the fleet across hosts in one view. Every fleet daemon
//! writes, each second, what its host knows of each of its services under
//! `/hotspare/<service>/hosts/<node>`; the arbiter keeps each service's term and holder under
//! `/hotspare/<service>/term`. This reads them all and prints one block per service: its term
//! and holder, then a line per host (its role there, pid, term, checkpoint, lag, durability, and
//! how old the record is — a host that stopped publishing shows its age).

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A record older than this is marked stale (its host's daemon is not writing).
const STALE_MS: u64 = 3_000;

/// How to reach etcd: its endpoints and, for TLS, the CA and client certificate files (as the
/// arbiter's settings, `HOTSPARE_ARBITER_CA` …).
#[derive(Debug)]
pub struct EtcdAccess {
    /// Comma-separated endpoints.
    pub endpoints: String,
    /// `--arbiter-ca`.
    pub ca: Option<PathBuf>,
    /// `--arbiter-cert`.
    pub cert: Option<PathBuf>,
    /// `--arbiter-key`.
    pub key: Option<PathBuf>,
}

/// Prints the view; `Ok(false)` when some service has no host publishing fresh records.
pub fn show(access: EtcdAccess) -> Result<bool> {
    let endpoints = access.endpoints.as_str();
    // The library's arbiter settings: the same parser and checks, the same connection options
    // (the service name only satisfies them; this reads every service).
    let cfg = hotspare::Config {
        arbiter: Some(access.endpoints.clone()),
        service: Some("status".into()),
        arbiter_ca: access.ca,
        arbiter_cert: access.cert,
        arbiter_key: access.key,
        ..hotspare::Config::default()
    }
    .arbiter()?
    .context("no etcd endpoint")?;
    let urls = cfg.urls();
    let describe = |e: etcd_client::Error| anyhow::anyhow!(cfg.explain(&e));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let kvs: Vec<(String, Vec<u8>)> = rt.block_on(async {
        let options = cfg.connect_options(std::time::Duration::from_secs(2));
        let mut c = etcd_client::Client::connect(&urls, Some(options))
            .await
            .map_err(describe)
            .with_context(|| format!("connecting to etcd at {endpoints}"))?;
        let r = c
            .get(
                "/hotspare/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .map_err(describe)
            .context("reading /hotspare/ from etcd")?;
        Ok::<_, anyhow::Error>(
            r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect(),
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // service → (term record, node → host record)
    let mut services: BTreeMap<String, (Option<Value>, BTreeMap<String, Value>)> = BTreeMap::new();
    for (key, value) in &kvs {
        let parts: Vec<&str> = key.trim_start_matches("/hotspare/").split('/').collect();
        let parsed = serde_json::from_slice::<Value>(value).unwrap_or(Value::Null);
        match parts[..] {
            [service, "term"] => services.entry(service.into()).or_default().0 = Some(parsed),
            [service, "hosts", node] => {
                services
                    .entry(service.into())
                    .or_default()
                    .1
                    .insert(node.into(), parsed);
            }
            _ => {}
        }
    }
    if services.is_empty() {
        println!("no Hot Spare service in etcd at {endpoints}");
        return Ok(false);
    }
    let mut all_seen = true;
    println!(
        "{:<12} {:<14} {:<9} {:>7} {:>5} {:>8} {:>6} {:<9} {:>8}",
        "SERVICE", "HOST", "ROLE", "PID", "TERM", "SEQ", "LAG", "DURABLE", "AGE"
    );
    for (name, (term, hosts)) in &services {
        let (t, holder) = term.as_ref().map_or(("-".into(), "no term key"), |r| {
            (
                r["term"].as_u64().map_or("-".into(), |t| t.to_string()),
                r["holder"].as_str().unwrap_or("?"),
            )
        });
        println!("{name:<12} term {t}, held by {holder}");
        let mut fresh = 0;
        for (node, rec) in hosts {
            let (here, own) = (&rec["here"], &rec["own"]);
            let age = now.saturating_sub(rec["at_ms"].as_u64().unwrap_or(0));
            fresh += usize::from(age < STALE_MS);
            let num = |v: &Value| v.as_i64().map_or("-".to_string(), |n| n.to_string());
            let seq = match own["role"].as_str() {
                Some("primary") => num(&own["acked_seq"]),
                _ => num(&own["seq"]),
            };
            println!(
                "{:<12} {:<14} {:<9} {:>7} {:>5} {:>8} {:>6} {:<9} {:>6} s{}",
                "",
                node,
                here["state"].as_str().unwrap_or("?"),
                num(&here["pid"]),
                num(&own["term"]),
                seq,
                num(&own["lag"]),
                own["durability"].as_str().unwrap_or("-"),
                age / 1000,
                if age < STALE_MS { "" } else { " (stale)" }
            );
        }
        all_seen &= fresh > 0;
    }
    Ok(all_seen)
}
