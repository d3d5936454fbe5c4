//! `hotspare`: the command-line tool. `hotspare inspect DIR` prints an image and verifies every
//! checksum (exit status 1 on any damage); `status`, `metrics` and `switchover` operate a pair
//! or a fleet. The benchmarks and the demo live in the `hotspare-bench` crate (`bench/`).

mod fleet_view;
mod metrics;
mod switchover;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hotspare_image::identity::ExeId;
use hotspare_image::{format, ImageDir};
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "hotspare", about = "Hot Spare: checkpoint images and tools")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print an image directory's header, ranges, sizes and executable identity, and verify
    /// every checksum (manifest, data pages, pending checkpoint streams).
    Inspect {
        /// The image directory.
        dir: PathBuf,
        /// Skip reading the data files (headers and streams only).
        #[arg(long)]
        no_data: bool,
    },
    /// Role, term, sequence, lag and last heartbeat of a running primary or spare: from the
    /// status file in its image (or spool) directory, or by asking a spare over the network.
    Status {
        /// The image directory of a spare, or the spool directory of a primary.
        dir: Option<PathBuf>,
        /// Ask the spare at this address instead (needs --key-file).
        #[arg(long)]
        spare: Option<String>,
        /// The shared secret, for --spare.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Every service of a fleet daemon (`hotspare-resume --fleet`): the `status` file its
        /// configuration names; one line per service.
        #[arg(long, conflicts_with_all = ["dir", "spare"])]
        fleet: Option<PathBuf>,
        /// Every service of every fleet daemon that uses this etcd (comma-separated client
        /// URLs): each service's term and holder, and what each of its hosts last published.
        #[arg(long, conflicts_with_all = ["dir", "spare", "fleet"])]
        etcd: Option<String>,
        /// With --etcd, TLS: the CA (PEM) of etcd's server certificate (the arbiter's
        /// HOTSPARE_ARBITER_CA; a bare host:port endpoint then gets https://).
        #[arg(long, requires = "etcd")]
        arbiter_ca: Option<PathBuf>,
        /// With --etcd, a client certificate (PEM) for etcd's --client-cert-auth.
        #[arg(long, requires = "etcd")]
        arbiter_cert: Option<PathBuf>,
        /// With --etcd, the private key (PEM) of --arbiter-cert.
        #[arg(long, requires = "etcd")]
        arbiter_key: Option<PathBuf>,
    },
    /// Serve `GET /metrics` (Prometheus / OpenMetrics text) built from the status files of
    /// these directories (a primary's spool or image directory, a spare's image directory),
    /// read afresh at every scrape.
    Metrics {
        /// Address to serve on, e.g. 0.0.0.0:9477.
        #[arg(long)]
        listen: String,
        /// The directories whose `status` files to export.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Move the primary role to the spare on purpose, nothing lost: the primary stops serving,
    /// hands over after one more acknowledged checkpoint, and the spare takes over at once.
    Switchover {
        /// The service to move, found in the fleet file given with --fleet (its spare's
        /// address and key: this host's own listening address if this host is its spare, the
        /// program's HOTSPARE_SPARE if it runs here).
        #[arg(requires = "fleet", conflicts_with = "spare")]
        service: Option<String>,
        /// This host's fleet file (`hotspare-resume --fleet`), with SERVICE.
        #[arg(long, requires = "service")]
        fleet: Option<PathBuf>,
        /// The spare to become the primary.
        #[arg(long, required_unless_present = "fleet")]
        spare: Option<String>,
        /// The shared secret.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Wait until the spare has taken over (≤ 10 s) and say how long it took.
        #[arg(long)]
        wait: bool,
    },
}

/// How `inspect` shows a durable stream not yet applied (a WAL file or a log record).
fn pending_stream(s: &hotspare_image::format::Summary) -> String {
    format!(
        "complete, not yet applied: seq {} base {} pages {} ({})",
        s.begin.seq,
        s.begin.base_seq,
        s.end.pages,
        human(s.bytes)
    )
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn allocated(path: &PathBuf) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn inspect(dir: PathBuf, no_data: bool) -> Result<bool> {
    let image = ImageDir::open_read_only(&dir)?;
    let m = image.manifest().context("no manifest")?;
    println!("image        {}", dir.display());
    println!("format       version {}", m.format_version);
    println!("sequence     {} (term {})", m.seq, m.term);
    println!("executable   {}", ExeId(m.exe_id));
    match ExeId::current() {
        Ok(me) if me.0 == m.exe_id => {
            println!("             (this is the same executable as `hotspare` itself)")
        }
        _ => {}
    }
    println!("page size    {}", m.page_size);
    println!("metadata     {} bytes", m.meta.len());
    let mut total = 0;
    println!("ranges       {}", m.ranges.len());
    for r in &m.ranges {
        let p = image.data_path(r.addr, r.len);
        total += r.len;
        println!(
            "  {:#014x} +{:<10} {:>10} on disk  {}",
            r.addr,
            human(r.len),
            human(allocated(&p)),
            p.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    println!("state size   {}", human(total));
    let mut ok = true;
    if no_data {
        println!("data         not checked (--no-data)");
    } else {
        match image.verify_data() {
            Ok(pages) => println!("data         {pages} pages, every CRC32C correct"),
            Err(e) => {
                println!("data         DAMAGED: {e}");
                ok = false;
            }
        }
    }
    for w in image.wal_files()? {
        let name = w
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let state = match w.extension().and_then(|e| e.to_str()) {
            Some("tmp") => "torn (being written or interrupted; never applied)".to_owned(),
            Some("bad") => {
                ok = false;
                "refused at recovery".to_owned()
            }
            _ => {
                let f = File::open(&w).with_context(|| w.display().to_string())?;
                match format::scan_stream(BufReader::new(f), |_| Ok(())) {
                    Ok(s) => pending_stream(&s),
                    Err(e) => {
                        ok = false;
                        format!("DAMAGED: {e}")
                    }
                }
            }
        };
        println!("wal          {name}: {state}");
    }
    for seg in image.log_segments()? {
        let name = seg
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !seg.live {
            println!("log          {name}: not counted (superseded or never used)");
            continue;
        }
        let applied = image.manifest().map(|m| (m.lineage, m.seq));
        let mut pending = 0;
        for r in &seg.records {
            if applied.is_some_and(|(l, s)| r.lineage == l && r.seq <= s) {
                continue;
            }
            pending += 1;
            let checked = r.read().map_err(|e| e.to_string()).and_then(|b| {
                format::scan_stream(b.as_slice(), |_| Ok(())).map_err(|e| e.to_string())
            });
            match checked {
                Ok(s) => println!("log          {name}@{}: {}", r.offset, pending_stream(&s)),
                Err(e) => {
                    ok = false;
                    println!("log          {name}@{}: DAMAGED: {e}", r.offset);
                }
            }
        }
        println!(
            "log          {name}: {} records ({pending} not yet applied), {} bytes used",
            seg.records.len(),
            seg.end
        );
    }
    println!("verdict      {}", if ok { "OK" } else { "DAMAGED" });
    Ok(ok)
}

fn status(dir: Option<PathBuf>, spare: Option<String>, key_file: Option<PathBuf>) -> Result<bool> {
    use hotspare::replica::wire::{self, Msg};
    if let Some(addr) = spare {
        let key = wire::load_key(&key_file.context("--spare needs --key-file")?)?;
        let answer =
            wire::request_status(&addr, &key).map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        match answer.1 {
            Msg::Status {
                term,
                seq,
                applied,
                since_grant_ms,
                ..
            } => {
                let hb = if since_grant_ms == u64::MAX {
                    "never".into()
                } else {
                    format!("{since_grant_ms} ms ago")
                };
                println!(
                    "spare {addr}: term {term}, image at checkpoint {seq} (applied {applied}), last heartbeat answered {hb}"
                );
                return Ok(true);
            }
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }
    let dir = dir.context("give a directory, or --spare ADDR --key-file KEY")?;
    let path = dir.join("status");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no status (is a primary or spare running here?)",
            path.display()
        )
    })?;
    let age = std::fs::metadata(&path)?
        .modified()?
        .elapsed()
        .unwrap_or_default();
    print!("{text}");
    if age > std::time::Duration::from_secs(2) {
        println!(
            "(written {} ms ago: the process may not be running)",
            age.as_millis()
        );
        return Ok(false);
    }
    Ok(true)
}

/// `hotspare status --fleet FILE`: the fleet daemon's table, each service joined with its own
/// status file (a spare's, or the program's once this host took the service over).
fn fleet_status(path: &std::path::Path) -> Result<bool> {
    use serde_json::Value;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{}: no fleet status (is hotspare-resume --fleet running?)",
            path.display()
        )
    })?;
    let age = std::fs::metadata(path)?
        .modified()?
        .elapsed()
        .unwrap_or_default();
    let fleet: Value = serde_json::from_str(&text).with_context(|| path.display().to_string())?;
    let fresh = age < std::time::Duration::from_secs(2);
    println!(
        "fleet daemon pid {}{}",
        fleet["pid"],
        if fresh {
            String::new()
        } else {
            format!(
                " (written {} ms ago: it may not be running)",
                age.as_millis()
            )
        }
    );
    println!(
        "{:<12} {:<13} {:>7} {:>5} {:>8} {:>8} {:>9} {:<9} detail",
        "SERVICE", "HERE", "PID", "TERM", "SEQ", "LAG", "HEARTBEAT", "DURABLE"
    );
    let empty = Vec::new();
    for s in fleet["services"].as_array().unwrap_or(&empty) {
        let dir = std::path::PathBuf::from(s["image_dir"].as_str().unwrap_or_default());
        let own: Value = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let state = s["state"].as_str().unwrap_or("?");
        let num = |v: &Value| v.as_i64().map_or("-".to_string(), |n| n.to_string());
        let (term, seq, lag, hb, detail) = match (state, own["role"].as_str()) {
            ("spare", Some("spare")) => (
                num(&own["term"]),
                num(&own["seq"]),
                "-".to_string(),
                match own["last_heartbeat_ms"].as_i64() {
                    Some(ms) if ms >= 0 => format!("{ms} ms"),
                    _ => "never".to_string(),
                },
                if own["primary_connected"] == Value::Bool(true) {
                    format!(
                        "spare of a connected primary (listening on {})",
                        s["listen"].as_str().unwrap_or("?")
                    )
                } else {
                    format!(
                        "spare, no primary connected (listening on {})",
                        s["listen"].as_str().unwrap_or("?")
                    )
                },
            ),
            ("primary", Some("primary")) => (
                num(&own["term"]),
                num(&own["acked_seq"]),
                num(&own["lag"]),
                "-".to_string(),
                format!(
                    "primary ({}); its spare {} {}",
                    if s["term"].as_u64() == Some(0) {
                        "first start"
                    } else {
                        "took over"
                    },
                    own["spare"].as_str().unwrap_or("?"),
                    if own["connected"] == Value::Bool(true) {
                        "connected"
                    } else {
                        "NOT connected"
                    }
                ),
            ),
            _ => (
                num(&s["term"]),
                "-".to_string(),
                "-".to_string(),
                "-".to_string(),
                s["why"].as_str().unwrap_or_default().to_string(),
            ),
        };
        println!(
            "{:<12} {:<13} {:>7} {:>5} {:>8} {:>8} {:>9} {:<9} {}",
            s["name"].as_str().unwrap_or("?"),
            state,
            num(&s["pid"]),
            term,
            seq,
            lag,
            hb,
            own["durability"].as_str().unwrap_or("-"),
            detail
        );
    }
    Ok(fresh)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Inspect { dir, no_data } => inspect(dir, no_data),
        Cmd::Status { fleet: Some(f), .. } => fleet_status(&f),
        Cmd::Status {
            etcd: Some(endpoints),
            arbiter_ca,
            arbiter_cert,
            arbiter_key,
            ..
        } => fleet_view::show(fleet_view::EtcdAccess {
            endpoints,
            ca: arbiter_ca,
            cert: arbiter_cert,
            key: arbiter_key,
        }),
        Cmd::Status {
            dir,
            spare,
            key_file,
            fleet: None,
            etcd: None,
            ..
        } => status(dir, spare, key_file),
        Cmd::Metrics { listen, dirs } => metrics::serve(&listen, dirs).map(|()| true),
        Cmd::Switchover {
            service: Some(service),
            fleet: Some(fleet),
            wait,
            ..
        } => switchover::run_in_fleet(&fleet, &service, wait).map(|()| true),
        Cmd::Switchover {
            spare: Some(spare),
            key_file,
            wait,
            ..
        } => switchover::run(&spare, key_file, wait).map(|()| true),
        Cmd::Switchover { .. } => Err(anyhow::anyhow!(
            "give --spare ADDR --key-file KEY, or SERVICE --fleet FILE"
        )),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hotspare: {e:#}");
            ExitCode::FAILURE
        }
    }
}
