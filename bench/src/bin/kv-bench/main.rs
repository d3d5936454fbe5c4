//! `kv-bench`: the CheckSync thesis comparison, hotspare-kv against Redis on loopback.
//!
//! Prints one JSON object per measurement on stdout (progress on stderr) and can write the
//! Figure 5-3 SVG. Subcommands run one table each; `all` (the default) runs them in turn on
//! shared preloaded servers. Pinning follows ../shared/BENCHMARKING.md: serial client and
//! serving thread on CPU 0, background work (checkpoint threads, BGSAVE child) on CPU 1.

mod commit;
mod failover;
mod load;
mod multi;
mod plot;
mod probe;
mod procs;
mod resp;
mod serial;
mod serial_cmp;
mod server;
mod state;
mod stats;
mod ticker;
mod timeline;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::server::{Binaries, Kind, Server, Spec};
use crate::ticker::HsTrigger;

#[derive(Debug, Parser)]
#[command(about = "Throughput and checkpoint-cost comparison of hotspare-kv and Redis (RESP2)")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,

    /// A ~2-minute smoke run: fewer/smaller sizes, shorter runs.
    #[arg(long, global = true)]
    quick: bool,

    /// Which servers to measure.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "redis,hotspare-kv"
    )]
    servers: Vec<Target>,

    /// Also measure hotspare-kv --plain (no Hot Spare) as a no-checkpoint reference (serial).
    #[arg(long, global = true)]
    with_plain: bool,

    /// Keys preloaded for the serial, multi-client and timeline runs [default: 1M; quick 100k].
    #[arg(long, global = true)]
    keys: Option<u64>,

    /// Data-set sizes for the state table [default: 1k,10k,100k,1M,10M; quick: 1k,100k].
    #[arg(long, global = true, value_delimiter = ',')]
    sizes: Option<Vec<u64>>,

    /// Seconds per serial configuration [default: 10; quick: 3].
    #[arg(long, global = true)]
    secs: Option<f64>,

    /// Repetitions of every interleaved configuration.
    #[arg(long, global = true, default_value_t = 3)]
    reps: usize,

    /// Checkpoint / BGSAVE intervals (ms) for the serial table; "none" is always added.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "50,500,1000,2000"
    )]
    intervals: Vec<u64>,

    /// Seconds per redis-benchmark test [default: 5; quick: 1.5].
    #[arg(long, global = true)]
    multi_secs: Option<f64>,

    /// Checkpoint / BGSAVE interval (ms) during redis-benchmark.
    #[arg(long, global = true, default_value_t = 100)]
    multi_interval: u64,

    /// Seconds of the Figure 5-3 time series.
    #[arg(long, global = true, default_value_t = 5.0)]
    timeline_secs: f64,

    /// Checkpoint / BGSAVE interval (ms) in the time series.
    #[arg(long, global = true, default_value_t = 500)]
    timeline_interval: u64,

    /// How hotspare-kv checkpoints in the time series: `command` (HOTSPARE.CPT NOWAIT from a
    /// side connection of the harness, so the moments are known and marked; the server takes
    /// it exactly as its own timer does) or `timer` (its own timer, unmarked).
    #[arg(long, global = true, value_enum, default_value = "command")]
    timeline_trigger: HsTrigger,

    /// Write the Figure 5-3 plot here.
    #[arg(long, global = true)]
    svg: Option<PathBuf>,

    /// Where to write the failover requests-over-time SVG (Figure 5-4).
    #[arg(long, global = true)]
    failover_svg: Option<PathBuf>,

    /// CPU of the serial client (the servers' serving threads are on CPU 0).
    #[arg(long, global = true, default_value_t = 0)]
    client_cpu: usize,

    #[arg(long, global = true, default_value = "redis-server")]
    redis_server: PathBuf,
    #[arg(long, global = true, default_value = "redis-benchmark")]
    redis_benchmark: PathBuf,
    /// [default: hotspare-kv next to this program]
    #[arg(long, global = true)]
    hotspare_kv: Option<PathBuf>,
    /// Parent of the servers' scratch directories [default: the system temp dir].
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Redis,
    HotspareKv,
}

#[derive(Debug, Clone, Subcommand)]
enum Cmd {
    /// Everything below, in turn (the default).
    All,
    /// Tables 5.2/5.3: state size, stop time, checkpoint and image sizes, fork time, RDB size.
    State,
    /// Table 5.4: serial client throughput with checkpoints / BGSAVE at several intervals.
    Serial,
    /// redis-benchmark -c 50 GET/SET without and with checkpoints / BGSAVE.
    Multi,
    /// Figure 5-3: requests per 10 ms over time, with checkpoint / BGSAVE moments.
    Timeline,
    /// Run redis-benchmark once through a recording proxy against each server and show every
    /// command it sent with the reply (to find what a server answers wrongly).
    Probe,
    /// Tables 5.6/5.7 and Figure 5-4: failover of hotspare-kv to its spare.
    Failover,
    /// Every-write throughput: hotspare-kv --cpt-every-write (spare fsynced / received / no
    /// spare) against Redis appendfsync always, redis-benchmark SET -c 50 and -c 1, interleaved.
    Commit(commit::CommitArgs),
}

impl Cli {
    fn kinds(&self) -> Vec<Kind> {
        self.servers
            .iter()
            .map(|t| match t {
                Target::Redis => Kind::Redis,
                Target::HotspareKv => Kind::Hotspare,
            })
            .collect()
    }

    fn keys(&self) -> u64 {
        self.keys
            .unwrap_or(if self.quick { 100_000 } else { 1_000_000 })
    }

    fn binaries(&self) -> Result<Binaries> {
        let hotspare_kv = match &self.hotspare_kv {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("program has no directory")?
                .join("hotspare-kv"),
        };
        Ok(Binaries {
            redis_server: self.redis_server.clone(),
            redis_benchmark: self.redis_benchmark.clone(),
            hotspare_kv,
            work_dir: self.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        })
    }
}

fn main() -> Result<()> {
    procs::install_signal_reaper()?;
    let cli = Cli::parse();
    let r = run(&cli);
    if let (Err(_), Some(sig)) = (&r, procs::signalled()) {
        // The reaper is killing the servers; the error is only a consequence of that.
        eprintln!("kv-bench: stopped by signal {sig}");
        std::thread::sleep(std::time::Duration::from_secs(2));
        std::process::exit(128 + sig);
    }
    r
}

fn run(cli: &Cli) -> Result<()> {
    let cmd = cli.cmd.clone().unwrap_or(Cmd::All);
    let bins = cli.binaries()?;
    emit_meta(cli, &bins);
    if let Cmd::Commit(a) = &cmd {
        return commit::run(
            a,
            cli.reps,
            &bins.redis_server,
            &bins.redis_benchmark,
            &bins.hotspare_kv,
            &bins.work_dir,
            cli.client_cpu,
        );
    }
    if matches!(cmd, Cmd::Failover) {
        return run_failover(cli, &bins);
    }
    if matches!(cmd, Cmd::All | Cmd::State) {
        let sizes = cli.sizes.clone().unwrap_or_else(|| {
            if cli.quick {
                vec![1_000, 100_000]
            } else {
                vec![1_000, 10_000, 100_000, 1_000_000, 10_000_000]
            }
        });
        state::run(
            &state::StateOpts {
                sizes,
                kinds: cli.kinds(),
                load_secs: 3.0,
                interval_ms: 50,
                forks: 3,
                client_cpu: Some(cli.client_cpu),
            },
            &bins,
        )?;
    }
    if matches!(cmd, Cmd::State) {
        return Ok(());
    }
    if matches!(cmd, Cmd::Probe) {
        for kind in cli.kinds() {
            let server = Server::start(&Spec::for_keys(kind, 1000), &bins)?;
            stats::emit(json!({
                "kind": "probe",
                "server": server.label(),
                "probe": probe::diagnose(&bins, &server)?,
            }));
        }
        return Ok(());
    }
    let mut servers = start_preloaded(cli, &bins, matches!(cmd, Cmd::All | Cmd::Serial))?;
    if matches!(cmd, Cmd::All | Cmd::Serial) {
        serial_cmp::run(
            &serial_cmp::SerialOpts {
                keys: cli.keys(),
                secs: cli.secs.unwrap_or(if cli.quick { 3.0 } else { 10.0 }),
                reps: cli.reps,
                intervals: cli.intervals.clone(),
                client_cpu: Some(cli.client_cpu),
            },
            &mut servers,
        )?;
    }
    // The plain reference server is only part of the serial table.
    servers.retain(|s| !s.spec.plain);
    if matches!(cmd, Cmd::All | Cmd::Timeline) {
        timeline::run(
            &timeline::TimelineOpts {
                keys: cli.keys(),
                secs: cli.timeline_secs,
                interval_ms: cli.timeline_interval,
                bucket_ms: 10,
                trigger: cli.timeline_trigger,
                client_cpu: Some(cli.client_cpu),
            },
            &mut servers,
            cli.svg.as_deref(),
        )?;
    }
    if matches!(cmd, Cmd::All | Cmd::Multi) {
        multi::check_available(&bins.redis_benchmark)?;
        multi::run(
            &multi::MultiOpts {
                keys: cli.keys(),
                secs: cli.multi_secs.unwrap_or(if cli.quick { 1.5 } else { 5.0 }),
                reps: cli.reps,
                interval_ms: cli.multi_interval,
                clients: 50,
            },
            &bins,
            &mut servers,
        )?;
    }
    if matches!(cmd, Cmd::All) {
        drop(servers);
        run_failover(cli, &bins)?;
    }
    Ok(())
}

/// Tables 5.6/5.7: failover downtime per size (its own primary/spare pairs, one at a time).
fn run_failover(cli: &Cli, bins: &Binaries) -> Result<()> {
    let sizes = cli.sizes.clone().unwrap_or_else(|| {
        if cli.quick {
            vec![1_000, 100_000]
        } else {
            vec![1_000, 10_000, 100_000, 1_000_000, 10_000_000]
        }
    });
    failover::run(
        &failover::FailoverOpts {
            sizes,
            reps: cli.reps,
            load_secs: if cli.quick { 1.0 } else { 2.0 },
            bucket_ms: 10,
            client_cpu: Some(cli.client_cpu),
        },
        bins,
        cli.failover_svg.as_deref(),
    )
}

/// Starts every selected server (and hotspare-kv --plain if asked and `with_plain`) and loads
/// `--keys` keys into each.
fn start_preloaded(cli: &Cli, bins: &Binaries, with_plain: bool) -> Result<Vec<Server>> {
    let keys = cli.keys();
    let mut specs: Vec<Spec> = cli
        .kinds()
        .into_iter()
        .map(|k| Spec::for_keys(k, keys))
        .collect();
    if with_plain && cli.with_plain {
        let mut plain = Spec::for_keys(Kind::Hotspare, keys);
        plain.plain = true;
        specs.push(plain);
    }
    let mut servers = Vec::new();
    for spec in &specs {
        let server = Server::start(spec, bins)?;
        let t = load::preload(&mut server.connect()?, keys)?;
        eprintln!(
            "kv-bench: preloaded {keys} keys into {} in {:.2} s",
            server.label(),
            t.as_secs_f64()
        );
        servers.push(server);
    }
    Ok(servers)
}

/// The first line: what was run, where, with which Redis — so a results file explains itself.
fn emit_meta(cli: &Cli, bins: &Binaries) {
    let redis_version = std::process::Command::new(&bins.redis_server)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    stats::emit(json!({
        "kind": "meta",
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "quick": cli.quick,
        "servers": cli.kinds().iter().map(|k| k.name()).collect::<Vec<_>>(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "redis_version": redis_version,
        "pinning": "serial client and serving thread on CPU 0; checkpoint threads / BGSAVE child / bio on CPU 1",
        "pair": "key:{i:012} (16 B) + 56 B value",
        "args": std::env::args().skip(1).collect::<Vec<_>>(),
    }));
}
